#!/usr/bin/env bash
# Install, start a local three-DC cluster (4 shards), run the demo workload, stop the cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
DIR=${TIDEBANK_DEMO_DIR:-$(mktemp -d /tmp/tidebank-demo.XXXXXX)}
trap '.venv/bin/tidebank cluster down --dir "$DIR" >/dev/null 2>&1 || true' EXIT
.venv/bin/tidebank cluster up --dir "$DIR" --dcs 3 --shards 4
.venv/bin/tidebank status --dir "$DIR"
.venv/bin/tidebank demo --dir "$DIR"

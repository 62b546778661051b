#!/usr/bin/env bash
# Install, lint, and run the whole default test suite (unit + integration on real local clusters).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/ruff check .
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"

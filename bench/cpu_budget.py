"""Where the CPU goes, per transfer: µs by layer and by process, from py-spy and /proc (not part of the tests).

    .venv/bin/python bench/cpu_budget.py                      # batched same-shard transfers (1,000 per call)
    .venv/bin/python bench/cpu_budget.py --workload single    # 64 callers, one transfer per call
    .venv/bin/python bench/cpu_budget.py --duration-s 15 --out bench/results

Starts its own 3-DC, 4-shard cluster, runs the workload, and for --duration-s measures each node's CPU time
(utime + stime from /proc) and the load generator's, while py-spy samples every node (non-blocking). Each busy
sample is charged to the layer of its innermost frame that belongs to one (by file: node/ledger -> state
machine, node/raft/journal.py -> journal, pysyncobj -> Raft core, ...); a node's CPU time is split by those
shares and divided by the transfers acknowledged meanwhile. Idle samples (threads blocked in waits, selects,
queue gets) are left out, so blocking I/O is not counted as CPU. Writes --out/cpu_budget_<workload>.json.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import bench_transfers  # noqa: E402

from tidebank.client import Client  # noqa: E402
from tidebank.cluster.launcher import LocalCluster  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# (layer, pattern on a frame's "function (file:line)") from the most specific; the innermost matching frame wins.
LAYERS = (
    ("LMDB write txn + commit", re.compile(r"ShardReplica\._apply_in_txn")),
    ("state machine (ledger rules)", re.compile(r"node/ledger/(state_machine|escrow|clearing|trades|txn_records)")),
    ("entry codec", re.compile(r"node/ledger/entry\.py|common/records\.py|node/ledger/records\.py")),
    ("journal (its fdatasync wait excluded)", re.compile(r"node/raft/journal\.py")),
    ("Raft transport and wire", re.compile(r"node/raft/(transport|wire)\.py|node/links\.py")),
    ("Raft core (pysyncobj) and loop", re.compile(r"pysyncobj/|node/raft/(loop|replica|pysyncobj_patches|snapshots)")),
    ("batcher", re.compile(r"node/batcher\.py")),
    ("2PC coordinator", re.compile(r"node/txn/")),
    ("request decode, routing, conversion", re.compile(r"node/api/|node/executor\.py|node/shard\.py")),
    ("gRPC runtime", re.compile(r"grpc/|google/protobuf")),
    ("metrics", re.compile(r"node/metrics\.py|prometheus_client/")),
)
# Leaves that wait rather than compute (DurableJournal.sync is the fdatasync: the disk, not the CPU).
IDLE = re.compile(r"\b(wait|select|poll|sleep|acquire|_worker|get|accept|epoll|recv|channel_spin|"
                  r"_wait_for_tstate_lock|next_event|serve_forever|_serve|sync)\b")


def cpu_seconds(pid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def node_pids(cluster: LocalCluster) -> dict[str, int]:
    """Node name -> PID of the cluster's running nodes."""
    pids = {name: cluster.pid(name) for name in cluster.topology.node_names}
    return {name: pid for name, pid in pids.items() if pid is not None}


def classify(path: pathlib.Path) -> tuple[collections.Counter, int]:
    """Busy samples per layer (and their total) from a py-spy raw profile."""
    layers: collections.Counter = collections.Counter()
    busy = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        leaf = frames[-1].split(" (")[0]
        if IDLE.search(leaf.split(".")[-1]):
            continue
        n = int(count)
        busy += n
        layer = "other (Python runtime, threads, logging)"
        for frame in reversed(frames):
            hit = next((name for name, pattern in LAYERS if pattern.search(frame)), None)
            if hit is not None:
                layer = hit
                break
        layers[layer] += n
    return layers, busy


def run_load(client: Client, by_shard, workload: str, stop: threading.Event, counter: list[int]) -> list:
    ids = bench_transfers.Ids()
    threads = []

    def batched(k: int) -> None:
        import random
        rng = random.Random(k)
        while not stop.is_set():
            results = client.create_transfers(bench_transfers.make_transfers(rng, by_shard, ids, 1_000))
            counter[0] += sum(1 for r in results if r.ok)

    def single(k: int) -> None:
        import random
        rng = random.Random(100 + k)
        while not stop.is_set():
            (r,) = client.create_transfers(bench_transfers.make_transfers(rng, by_shard, ids, 1))
            counter[0] += r.ok

    target, count = (batched, 4) if workload == "batched" else (single, 64)
    for k in range(count):
        t = threading.Thread(target=target, args=(k,), daemon=True)
        t.start()
        threads.append(t)
    return threads


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=("batched", "single"), default="batched")
    parser.add_argument("--duration-s", type=float, default=15.0)
    parser.add_argument("--warmup-s", type=float, default=5.0)
    parser.add_argument("--accounts", type=int, default=20_000)
    parser.add_argument("--rate-hz", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    spy = shutil.which("py-spy") or str(pathlib.Path(sys.executable).with_name("py-spy"))
    out_dir = pathlib.Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tidebank-budget-") as directory:
        cluster = LocalCluster.create(directory, dcs=3, nodes_per_dc=1, shards=4)
        try:
            cluster.start()
            cluster.wait_ready(timeout_s=120)
            pids = node_pids(cluster)
            assert len(pids) == 3, pids
            with Client(cluster.endpoints, tls=cluster.client_tls(), timeout_s=60) as client:
                by_shard = bench_transfers.create_accounts(client, args.accounts, bench_transfers.shard_table(client))
                stop, counter = threading.Event(), [0]
                threads = run_load(client, by_shard, args.workload, stop, counter)
                time.sleep(args.warmup_s)
                profiles = {name: pathlib.Path(directory) / f"{name}.txt" for name in pids}
                spies = [subprocess.Popen([spy, "record", "--nonblocking", "-r", str(args.rate_hz), "-d",
                                           str(int(args.duration_s)), "-p", str(pid), "-f", "raw", "-o",
                                           str(profiles[name])], stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL) for name, pid in pids.items()]
                cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
                client_before = cpu_seconds(os.getpid())
                done_before, started = counter[0], time.monotonic()
                time.sleep(args.duration_s)
                cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
                client_cpu = cpu_seconds(os.getpid()) - client_before
                transfers, elapsed = counter[0] - done_before, time.monotonic() - started
                stop.set()
                for t in threads:
                    t.join(30)
                for s in spies:
                    s.wait(60)
        finally:
            cluster.stop()
        budget: dict[str, dict[str, float]] = {}
        for name, path in profiles.items():
            layers, busy = classify(path) if path.exists() else (collections.Counter(), 0)
            for layer, n in layers.items():
                budget.setdefault(layer, {})[name] = cpu[name] * n / busy / transfers * 1e6 if busy else 0.0
    nodes = sorted(pids)
    report = {
        "workload": args.workload, "transfers": transfers, "transfers_per_s": round(transfers / elapsed, 1),
        "node_cpu_s": {n: round(cpu[n], 2) for n in nodes}, "client_cpu_s": round(client_cpu, 2),
        "us_per_transfer": {layer: {n: round(v.get(n, 0.0), 2) for n in nodes} for layer, v in budget.items()},
        "client_us_per_transfer": round(client_cpu / transfers * 1e6, 2),
        "nodes_us_per_transfer": round(sum(cpu.values()) / transfers * 1e6, 2),
    }
    print(f"{args.workload}: {transfers:,} transfers in {elapsed:.1f} s ({report['transfers_per_s']:,.0f}/s); "
          f"CPU µs per transfer by layer and node:")
    print(f"{'layer':40}" + "".join(f"{n:>10}" for n in nodes) + f"{'all nodes':>11}")
    for layer, per in sorted(report["us_per_transfer"].items(), key=lambda kv: -sum(kv[1].values())):
        print(f"{layer:40}" + "".join(f"{per[n]:10.1f}" for n in nodes) + f"{sum(per.values()):11.1f}")
    print(f"{'all (nodes, from /proc)':40}" + "".join(f"{cpu[n] / transfers * 1e6:10.1f}" for n in nodes)
          + f"{report['nodes_us_per_transfer']:11.1f}")
    print(f"load generator and client library: {report['client_us_per_transfer']:.1f} µs per transfer")
    (out_dir / f"cpu_budget_{args.workload}.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

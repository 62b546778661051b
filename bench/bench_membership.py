"""Replica moves under load, and growing a cluster from 3 to 6 nodes (not part of the tests).

    .venv/bin/python bench/bench_membership.py --out-dir bench/results
    .venv/bin/python bench/bench_membership.py --phase-s 20 --big-transfers 200000   # shorter

One fresh cluster (3 DCs, 4 shards, one node per DC, TLS), three spare nodes added (one per DC), then:

1. **before**: batched same-shard transfers for --phase-s, with one probe writer per shard sending one
   transfer at a time (its latencies give the longest write pause a client sees);
2. **moving**: the same load while `tidebank shard balance`'s plan runs: half of the replicas (6 of 12)
   move to the spare nodes, one after the other, which leaves every node with two (3 -> 6 nodes);
3. **after**: the same load on the grown cluster;
4. **big replica**: a shard filled with --big-accounts accounts and --big-transfers transfers, then one of
   its replicas moved with no load. The new replicas catch up by replaying the leader's log: pysyncobj
   compacts only after 5,000 entries or 300 s, longer than these phases. To make every new replica catch up
   from a dump instead, run with TIDEBANK_RAFT_LOG_COMPACTION_MIN_ENTRIES=100 in the environment.

Prints and writes membership.json (throughput per phase, moving / mean(before, after), the longest probe
write in each phase, move durations, the big move's time and LMDB size) and membership.png (throughput per
second through the three phases, with each move's span).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import pathlib
import random
import sys
import tempfile
import threading
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from bench_transfers import Ids, create_accounts, make_transfers, shard_table  # noqa: E402

from tidebank.client import Account, Client, Transfer  # noqa: E402
from tidebank.cluster.launcher import LocalCluster  # noqa: E402
from tidebank.common.keys import id_near  # noqa: E402

LEDGER = 1
BATCH = 1000
SENDERS = 4
ACCOUNTS = 20_000
BIG_BATCH = 5000


class Load:
    """Batched senders plus one probe writer per shard; counts transfers per second and probe latencies."""

    def __init__(self, client: Client, by_shard: dict[int, list[int]], ids: Ids) -> None:
        self.client, self.by_shard, self.ids = client, by_shard, ids
        self.stop = threading.Event()
        self.done: list[tuple[float, int]] = []  # (monotonic time, transfers created)
        self.probes: list[tuple[float, float]] = []  # (monotonic time at start, latency s)
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for k in range(SENDERS):
            self._threads.append(threading.Thread(target=self._sender, args=(k,), daemon=True))
        for shard in self.by_shard:
            self._threads.append(threading.Thread(target=self._probe, args=(shard,), daemon=True))
        for t in self._threads:
            t.start()

    def close(self) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(60)

    def _sender(self, k: int) -> None:
        rng = random.Random(k)
        while not self.stop.is_set():
            results = self.client.create_transfers(make_transfers(rng, self.by_shard, self.ids, BATCH))
            ok = sum(1 for r in results if r.ok)
            with self._lock:
                self.done.append((time.monotonic(), ok))

    def _probe(self, shard: int) -> None:
        rng = random.Random(100 + shard)
        accounts = self.by_shard[shard]
        while not self.stop.is_set():
            debit, credit = rng.sample(accounts, 2)
            t = Transfer(id=id_near(self.ids.take(1) << 32, debit), debit_account_id=debit,
                         credit_account_id=credit, amount=1, ledger=LEDGER, code=1)
            began = time.monotonic()
            (result,) = self.client.create_transfers([t])
            assert result.ok, result
            with self._lock:
                self.probes.append((began, time.monotonic() - began))
            self.stop.wait(0.02)

    def rate(self, start: float, end: float) -> float:
        with self._lock:
            return sum(n for at, n in self.done if start <= at < end) / (end - start)

    def longest_probe_ms(self, start: float, end: float) -> float:
        with self._lock:
            return 1000 * max((lat for at, lat in self.probes if start <= at < end), default=0.0)


def big_replica_move(cluster: LocalCluster, client: Client, accounts: int, transfers: int) -> dict:
    """Fill one shard, then time moving one of its replicas (no load)."""
    shard_of = shard_table(client)
    shard = 0
    rng = random.Random(7)
    base = rng.getrandbits(60) << 40
    ids = []
    candidate = base
    while len(ids) < accounts:
        candidate += 1
        if shard_of(candidate) == shard:
            ids.append(candidate)
    for start in range(0, accounts, 8000):
        results = client.create_accounts([Account(id=i, ledger=LEDGER, code=1) for i in ids[start:start + 8000]])
        assert all(r.ok for r in results)
    made = 0
    next_id = rng.getrandbits(70) << 40
    load_started = time.monotonic()
    while made < transfers:
        batch = []
        for _ in range(min(BIG_BATCH, transfers - made)):
            debit, credit = rng.sample(ids, 2)
            next_id += 1
            batch.append(Transfer(id=id_near(next_id << 32, debit), debit_account_id=debit,
                                  credit_account_id=credit, amount=1, ledger=LEDGER, code=1))
        results = client.create_transfers(batch)
        made += sum(1 for r in results if r.ok)
    load_s = time.monotonic() - load_started
    topology = cluster.reload()
    spec = topology.shard(shard)
    source = next(r for r in spec.replicas if r.startswith("dc3"))
    target = "dc3-n2" if source == "dc3-n1" else "dc3-n1"
    lmdb = topology.node_data_dir(source) / f"shard-{shard}" / "lmdb" / "data.mdb"
    lmdb_bytes = lmdb.stat().st_size if lmdb.exists() else 0
    began = time.monotonic()
    report = cluster.membership().move_replica(shard, source, target, timeout_s=1800)
    move_s = time.monotonic() - began
    assert report.finished
    return {"accounts": accounts, "transfers": transfers, "load_s": round(load_s, 1),
            "lmdb_mb": round(lmdb_bytes / 1e6, 1), "move_s": round(move_s, 2), "from": source, "to": target}


def draw(path: pathlib.Path, load: Load, t0: float, phases: dict, moves: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    end = phases["after"][1]
    seconds = list(range(int(end - t0)))
    per_s = [0] * len(seconds)
    for at, n in load.done:
        i = int(at - t0)
        if 0 <= i < len(per_s):
            per_s[i] += n
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.plot(seconds, per_s, color="#1f77b4", lw=1.2, label="transfers/s (batched, 4 senders)")
    for m in moves:
        ax.axvspan(m["start"] - t0, m["end"] - t0, color="#ff7f0e", alpha=0.25, lw=0)
    for name, (a, b) in phases.items():
        ax.text((a + b) / 2 - t0, max(per_s or [1]) * 1.02, name, ha="center")
    ax.set_xlabel("seconds (shaded: a replica moving)")
    ax.set_ylabel("transfers per second")
    ax.set_title("3 -> 6 nodes under load: 6 replica moves")
    ax.set_ylim(0, max(per_s or [1]) * 1.12)
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase-s", type=float, default=30.0)
    parser.add_argument("--big-accounts", type=int, default=100_000)
    parser.add_argument("--big-transfers", type=int, default=1_000_000)
    parser.add_argument("--out-dir", type=pathlib.Path, default=None)
    parser.add_argument("--keep-dir", type=pathlib.Path, default=None,
                        help="make the cluster here and keep it (logs) instead of in a temporary folder")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        directory = args.keep_dir or stack.enter_context(tempfile.TemporaryDirectory(prefix="tidebank-bench-mm-"))
        cluster = LocalCluster.create(directory, dcs=3, nodes_per_dc=1, shards=4)
        try:
            cluster.start()
            cluster.wait_ready(timeout_s=120)
            membership = cluster.membership()
            for dc in cluster.topology.dcs:
                membership.add_node(cluster.new_node_spec(f"{dc}-n2", dc))
                cluster.start([f"{dc}-n2"])
                cluster.wait_answering(f"{dc}-n2")
            with Client(cluster.endpoints, tls=cluster.client_tls(), timeout_s=60.0) as client:
                by_shard = create_accounts(client, ACCOUNTS, shard_table(client))
                load = Load(client, by_shard, Ids())
                t0 = time.monotonic()
                load.start()
                time.sleep(args.phase_s)
                t1 = time.monotonic()
                moves = []
                for shard, source, target in membership.balance_plan():  # 6 moves: two replicas per node
                    began = time.monotonic()
                    report = membership.move_replica(shard, source, target, timeout_s=300)
                    assert report.finished
                    moves.append({"shard": shard, "from": source, "to": target, "start": began,
                                  "end": time.monotonic()})
                t2 = max(time.monotonic(), t1 + args.phase_s)
                time.sleep(max(0.0, t2 - time.monotonic()))
                time.sleep(args.phase_s)
                t3 = time.monotonic()
                load.close()
                phases = {"before": (t0 + 2, t1), "moving": (t1, t2), "after": (t2, t3)}
                rates = {name: load.rate(a, b) for name, (a, b) in phases.items()}
                longest = {name: load.longest_probe_ms(a, b) for name, (a, b) in phases.items()}
                moves_span = (moves[0]["start"], moves[-1]["end"]) if moves else (t1, t1)
                during_moves = load.rate(*moves_span) if moves_span[1] > moves_span[0] else 0.0
                topology = cluster.reload()
                counts = {n: len(topology.shards_on(n)) for n in topology.node_names}
                big = big_replica_move(cluster, client, args.big_accounts, args.big_transfers) \
                    if args.big_transfers else None
            result = {
                "transfers_per_s": {k: round(v) for k, v in rates.items()},
                "transfers_per_s_while_moving": round(during_moves),
                "ratio_moving_vs_not": round(during_moves / ((rates["before"] + rates["after"]) / 2), 2),
                "longest_probe_write_ms": {k: round(v, 1) for k, v in longest.items()},
                "moves": [{"shard": m["shard"], "from": m["from"], "to": m["to"],
                           "seconds": round(m["end"] - m["start"], 2)} for m in moves],
                "moves_total_s": round(moves_span[1] - moves_span[0], 1),
                "replicas_per_node_after": counts,
                "big_replica_move": big,
            }
            print(json.dumps(result, indent=2))
            if args.out_dir is not None:
                args.out_dir.mkdir(parents=True, exist_ok=True)
                (args.out_dir / "membership.json").write_text(json.dumps(result, indent=2) + "\n")
                draw(args.out_dir / "membership.png", load, t0, phases, moves)
        finally:
            cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

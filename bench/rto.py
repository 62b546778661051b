"""Recovery time and point objectives, and cross-shard latency with inter-DC delay.

    .venv/bin/python bench/rto.py

On a fresh local 3-DC cluster with 4 shards, one writer per shard sends single
same-shard transfers continuously (and a few cross-shard ones). It measures:
- RTO after killing the node that leads the most shards (SIGKILL), and after
  partitioning the DC of a shard leader: the longest gap between two acknowledged
  writes on any shard around the fault;
- RPO: acknowledged transfers missing afterwards (must be 0);
- cross-shard p50/p99 latency with 20 ms one-way delay between every pair of DCs.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import random
import sys
import tempfile
import threading
import time
from collections import Counter

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from tests.integration.bank import set_link_faults  # noqa: E402
from tests.integration.conftest import running_cluster  # noqa: E402
from tidebank.client import Account, Client, Transfer  # noqa: E402
from tidebank.common.auth import signed  # noqa: E402
from tidebank.common.keys import id_near, slot_of  # noqa: E402
from tidebank.v1 import admin_pb2, admin_pb2_grpc  # noqa: E402

LEDGER = 3


class Writers:
    def __init__(self, client: Client, by_shard: dict[int, list[int]]):
        self.client = client
        self.by_shard = by_shard
        self.acks: dict[int, list[float]] = {shard: [] for shard in by_shard}
        self.acked_ids: list[int] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self._next = random.getrandbits(64) << 48

    def _id(self) -> int:
        with self.lock:
            self._next += 1
            return self._next

    def run_shard(self, shard: int) -> None:
        rng = random.Random(shard)
        while not self.stop.is_set():
            debit, credit = rng.sample(self.by_shard[shard], 2)
            t = Transfer(id=id_near(self._id() << 32, debit), debit_account_id=debit, credit_account_id=credit,
                         amount=1, ledger=LEDGER, code=1)
            try:
                (result,) = self.client.create_transfers([t], timeout_s=30.0)
            except Exception:
                continue  # unknown outcome: not counted as acknowledged
            if result.ok:
                now = time.monotonic()
                with self.lock:
                    self.acks[shard].append(now)
                    self.acked_ids.append(t.id)

    def start(self) -> list[threading.Thread]:
        threads = [threading.Thread(target=self.run_shard, args=(s,), daemon=True) for s in self.by_shard
                   for _ in range(2)]
        for t in threads:
            t.start()
        return threads

    def longest_gap_s(self, start: float, end: float) -> float:
        worst = 0.0
        for times in self.acks.values():
            window = [t for t in times if start <= t <= end]
            points = [start, *window, end]
            worst = max(worst, max(b - a for a, b in zip(points, points[1:], strict=False)))
        return worst


def accounts_by_shard(client: Client, per_shard: int) -> dict[int, list[int]]:
    shard_map = client.shard_map()
    owner = {slot: s.shard_id for s in shard_map.shards for a, b in s.slots for slot in range(a, b)}
    by_shard: dict[int, list[int]] = {s.shard_id: [] for s in shard_map.shards}
    candidate = random.getrandbits(64) << 32
    while any(len(v) < per_shard for v in by_shard.values()):
        candidate += 1
        shard = owner[slot_of(candidate, shard_map.slot_count)]
        if len(by_shard[shard]) < per_shard:
            by_shard[shard].append(candidate)
    accounts = [Account(id=a, ledger=LEDGER, code=1) for v in by_shard.values() for a in v]
    assert all(r.ok for r in client.create_accounts(accounts))
    return by_shard


def leaders(cluster) -> Counter:
    return Counter(r.node for r in cluster.cluster_status() if r.role == "leader")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase-s", type=float, default=10.0, help="seconds of writing around each fault")
    parser.add_argument("--latency-ms", type=int, default=20)
    args = parser.parse_args()
    report: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="tidebank-rto-") as directory, \
            running_cluster(pathlib.Path(directory)) as cluster, \
            Client(cluster.endpoints, tls=cluster.client_tls(), timeout_s=30.0) as client:
        by_shard = accounts_by_shard(client, 10)
        writers = Writers(client, by_shard)
        threads = writers.start()
        time.sleep(args.phase_s / 2)

        victim, led = leaders(cluster).most_common(1)[0]
        began = time.monotonic()
        cluster.kill(victim)
        time.sleep(args.phase_s)
        report["node_kill"] = {"node": victim, "shards_led": led,
                               "rto_s": round(writers.longest_gap_s(began - 1, time.monotonic()), 2)}
        cluster.start([victim])
        cluster.wait_ready(timeout_s=60)
        time.sleep(args.phase_s / 2)

        victim_node, _ = leaders(cluster).most_common(1)[0]
        dc = cluster.topology.node(victim_node).dc
        began = time.monotonic()
        set_link_faults(cluster, isolated_dcs=[dc])
        time.sleep(args.phase_s)
        report["dc_partition"] = {"dc": dc, "rto_s": round(writers.longest_gap_s(began - 1, time.monotonic()), 2)}
        set_link_faults(cluster, isolated_dcs=[])
        time.sleep(args.phase_s / 2)
        writers.stop.set()
        for t in threads:
            t.join(60)
        cluster.wait_ready(timeout_s=60)
        found = set()
        ids = list(writers.acked_ids)
        for start in range(0, len(ids), 4000):
            found.update(t.id for t in client.lookup_transfers(ids[start:start + 4000]))
        report["acknowledged"] = len(ids)
        report["rpo_lost_acknowledged"] = len(ids) - len(found)

        # Cross-shard latency with inter-DC delay on every DC pair.
        dcs = list(cluster.topology.dcs)
        delays = [admin_pb2.LinkDelay(from_dc=a, to_dc=b, delay_ms=args.latency_ms) for a in dcs for b in dcs
                  if a != b]
        for spec in cluster.topology.nodes:
            with cluster.channel(spec.grpc_address) as channel:
                faults = admin_pb2.LinkFaults(delays=delays)
                admin_pb2_grpc.AdminStub(channel).SetLinkFaults(
                    faults, timeout=5, metadata=signed(cluster.topology.secret, "SetLinkFaults", faults))
        everyone = [a for v in by_shard.values() for a in v]
        shard_of = {a: s for s, v in by_shard.items() for a in v}
        latencies: list[float] = []
        lock = threading.Lock()
        stop_at = time.monotonic() + args.phase_s

        def cross_caller(k: int) -> None:
            rng = random.Random(100 + k)
            while time.monotonic() < stop_at:
                debit, credit = rng.sample(everyone, 2)
                if shard_of[debit] == shard_of[credit]:
                    continue
                t = Transfer(id=id_near(writers._id() << 32, debit), debit_account_id=debit,
                             credit_account_id=credit, amount=1, ledger=LEDGER, code=1)
                began_call = time.perf_counter()
                (result,) = client.create_transfers([t])
                if result.ok:
                    with lock:
                        latencies.append(time.perf_counter() - began_call)

        callers = [threading.Thread(target=cross_caller, args=(k,)) for k in range(8)]
        for t in callers:
            t.start()
        for t in callers:
            t.join()
        set_link_faults(cluster, isolated_dcs=[])
        latencies.sort()
        report["cross_shard_with_dc_latency"] = {
            "one_way_delay_ms": args.latency_ms, "transfers": len(latencies),
            "latency_ms_p50": round(1000 * latencies[len(latencies) // 2], 1),
            "latency_ms_p99": round(1000 * latencies[int(len(latencies) * 0.99)], 1)}
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

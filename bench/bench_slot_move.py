"""Slot moves under load, and one big slot moved (not part of the tests).

    .venv/bin/python bench/bench_slot_move.py --out-dir bench/results
    .venv/bin/python bench/bench_slot_move.py --phase-s 10 --big-accounts 2000 --big-transfers 10000   # shorter

One fresh cluster (3 DCs, one node per DC, 4 shards, TLS), a fifth shard added, then:

1. **before**: batched same-shard transfers (4 senders x 1,000) for --phase-s, with one probe writer per shard;
2. **moving**: the same load while a quarter of all slots (256 from each old shard) move to the new shard,
   --slots-per-move at a time, one move after another; a probe writer sends one transfer at a time between
   two accounts of the slots moving right now (its longest call is the longest write pause a client sees);
3. **after**: the same load on five shards (the senders' pairs were chosen by the old map, so a pair split by
   a move is now cross-shard: that is what moving slots costs a workload with locality);
4. **big slot**: one slot filled with --big-accounts accounts and --big-transfers transfers among them,
   then moved with no load.

Prints and writes slot_move.json: throughput per phase, moving / before, the longest probe write while
moving, per-move time and records, the big slot's move time.
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

from bench_membership import Load  # noqa: E402
from bench_transfers import Ids, create_accounts, shard_table  # noqa: E402

from tidebank.client import Account, Client, CreateTransferResult, Transfer  # noqa: E402
from tidebank.cluster.launcher import LocalCluster  # noqa: E402
from tidebank.cluster.slot_moves import SlotMover  # noqa: E402
from tidebank.common.keys import id_near, slot_of  # noqa: E402
from tidebank.common.topology import slots_of  # noqa: E402

LEDGER = 1
ACCOUNTS = 20_000
BIG_BATCH = 5000


class MovingProbe:
    """One transfer at a time between two accounts of the slots being moved now; latency per call."""

    def __init__(self, client: Client, ids: Ids) -> None:
        self.client, self.ids = client, ids
        self.pair: tuple[int, int] | None = None
        self.latencies: list[float] = []
        self.refused = 0  # calls answered slot_moving / slot_moved (retried)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            pair = self.pair
            if pair is None:
                self.stop.wait(0.01)
                continue
            t = Transfer(id=id_near(self.ids.take(1) << 32, pair[0]), debit_account_id=pair[0],
                         credit_account_id=pair[1], amount=1, ledger=LEDGER, code=1)
            began = time.monotonic()
            while True:  # a call that outlasts the node's resending still says slot_moving: the caller retries
                (result,) = self.client.create_transfers([t])
                if result.ok:
                    break
                assert result.status in (CreateTransferResult.slot_moving, CreateTransferResult.slot_moved), result
                self.refused += 1
            self.latencies.append(time.monotonic() - began)
            self.stop.wait(0.01)


def move_quarter(cluster: LocalCluster, accounts: list[int], probe: MovingProbe, slots_per_move: int,
                 target: int) -> list[dict]:
    topology = cluster.reload()
    slot_count = topology.slot_count
    by_slot: dict[int, list[int]] = {}
    for a in accounts:
        by_slot.setdefault(slot_of(a, slot_count), []).append(a)
    plan = []
    for spec in topology.shards:
        if spec.shard_id == target:
            continue
        mine = slots_of(spec.slots)[: slot_count // 4 // (len(topology.shards) - 1)]
        plan += [(spec.shard_id, mine[i:i + slots_per_move]) for i in range(0, len(mine), slots_per_move)]
    mover = SlotMover(cluster.membership())
    moves = []
    for source, slots in plan:
        in_slots = [a for s in slots for a in by_slot.get(s, [])]
        probe.pair = (in_slots[0], in_slots[1]) if len(in_slots) >= 2 else None
        began = time.monotonic()
        report = mover.move(slots, source, target, timeout_s=600)
        moves.append({"from": source, "slots": len(slots), "records": report.records, "pages": report.pages,
                      "start": began, "end": time.monotonic(), "s": round(time.monotonic() - began, 3),
                      "write_pause_s": round(report.pause_s, 3), "step_s": report.step_s})
    probe.pair = None
    return moves


def big_slot_move(cluster: LocalCluster, client: Client, accounts: int, transfers: int, target: int) -> dict:
    topology = cluster.reload()
    source = next(s for s in topology.shards if s.shard_id != target and s.slots)
    slot = slots_of(source.slots)[-1]
    rng = random.Random(11)
    ids, candidate = [], rng.getrandbits(60) << 40
    while len(ids) < accounts:
        candidate += 1
        if slot_of(candidate, topology.slot_count) == slot:
            ids.append(candidate)
    for start in range(0, accounts, 8000):
        assert all(r.ok for r in client.create_accounts([Account(id=i, ledger=LEDGER, code=1)
                                                         for i in ids[start:start + 8000]]))
    made, next_id = 0, rng.getrandbits(70) << 40
    while made < transfers:
        batch = []
        for _ in range(min(BIG_BATCH, transfers - made)):
            debit, credit = rng.sample(ids, 2)
            next_id += 1
            batch.append(Transfer(id=id_near(next_id << 32, debit), debit_account_id=debit, credit_account_id=credit,
                                  amount=1, ledger=LEDGER, code=1))
        made += sum(1 for r in client.create_transfers(batch) if r.ok)
    began = time.monotonic()
    report = SlotMover(cluster.membership()).move([slot], source.shard_id, target, timeout_s=1800)
    return {"accounts": accounts, "transfers": transfers, "records": report.records, "pages": report.pages,
            "move_s": round(time.monotonic() - began, 2), "write_pause_s": round(report.pause_s, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase-s", type=float, default=20.0)
    parser.add_argument("--slots-per-move", type=int, default=8)
    parser.add_argument("--big-accounts", type=int, default=5_000)
    parser.add_argument("--big-transfers", type=int, default=25_000)
    parser.add_argument("--out-dir", type=pathlib.Path, default=None)
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        directory = stack.enter_context(tempfile.TemporaryDirectory(prefix="tidebank-bench-sm-"))
        cluster = LocalCluster.create(directory, dcs=3, nodes_per_dc=1, shards=4)
        try:
            cluster.start()
            cluster.wait_ready(timeout_s=120)
            target = cluster.membership().add_shard(timeout_s=120).shard_id
            cluster.reload()
            with Client(cluster.endpoints, tls=cluster.client_tls(), timeout_s=60.0) as client:
                by_shard = create_accounts(client, ACCOUNTS, shard_table(client))
                by_shard = {s: a for s, a in by_shard.items() if s != target}
                ids = Ids()
                load = Load(client, by_shard, ids)
                probe = MovingProbe(client, ids)
                t0 = time.monotonic()
                load.start()
                probe.thread.start()
                time.sleep(args.phase_s)
                t1 = time.monotonic()
                moves = move_quarter(cluster, [a for v in by_shard.values() for a in v], probe,
                                     args.slots_per_move, target)
                t2 = time.monotonic()
                time.sleep(args.phase_s)
                t3 = time.monotonic()
                load.close()
                probe.stop.set()
                probe.thread.join(60)
                big = big_slot_move(cluster, client, args.big_accounts, args.big_transfers, target)
        finally:
            cluster.stop()
    before, moving, after = load.rate(t0, t1), load.rate(t1, t2), load.rate(t2, t3)
    lat = sorted(probe.latencies)
    out = {
        "transfers_per_s": {"before": round(before), "moving": round(moving), "after": round(after)},
        "moving_over_before": round(moving / before, 2) if before else None,
        "slots_moved": sum(m["slots"] for m in moves), "moves": len(moves),
        "move_s_mean": round(sum(m["s"] for m in moves) / len(moves), 3),
        "move_s_max": max(m["s"] for m in moves),
        "records_per_move_mean": round(sum(m["records"] for m in moves) / len(moves)),
        "step_s_mean": {step: round(sum(m["step_s"].get(step, 0) for m in moves) / len(moves), 3)
                        for step in moves[0]["step_s"]},
        "probe_on_moving_slots_ms": {"calls": len(lat), "p50": round(1000 * lat[len(lat) // 2], 1) if lat else None,
                                     "max": round(1000 * lat[-1], 1) if lat else None,
                                     "answered_slot_moving": probe.refused},
        "slots_per_move": args.slots_per_move,
        "longest_probe_other_shards_ms": round(load.longest_probe_ms(t1, t2), 1),
        "big_slot": big,
    }
    print(json.dumps(out, indent=2))
    if args.out_dir:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        (args.out_dir / "slot_move.json").write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

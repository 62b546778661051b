"""Transfer throughput and latency on a local three-DC cluster (not part of the tests).

    .venv/bin/python bench/bench_transfers.py                 # starts its own cluster
    .venv/bin/python bench/bench_transfers.py --dir DIR       # uses a running one
    .venv/bin/python bench/bench_transfers.py --no-fsync      # journal without fdatasync, to price it

Measures, as issue 2 asks: transfers/s with batches of 1,000 (same-shard pairs);
transfers/s with 64 concurrent callers sending one transfer at a time through the
client (coalesced); p50/p99 latency of single transfers at half that load.
Prints one JSON object at the end; bench/RESULTS.md records the numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time

from tidebank.client import Account, Client, Transfer
from tidebank.cluster.launcher import LocalCluster
from tidebank.common.keys import id_near, slot_of

LEDGER = 1
ACCOUNT_BATCH = 8000


def shard_table(client: Client):
    shard_map = client.shard_map()
    owner = {}
    for shard in shard_map.shards:
        for start, end in shard.slots:
            for slot in range(start, end):
                owner[slot] = shard.shard_id
    return lambda key: owner[slot_of(key, shard_map.slot_count)]


def create_accounts(client: Client, count: int, shard_of) -> dict[int, list[int]]:
    base = random.getrandbits(64) << 32
    ids = [base + n for n in range(1, count + 1)]
    for start in range(0, count, ACCOUNT_BATCH):
        chunk = [Account(id=i, ledger=LEDGER, code=1) for i in ids[start:start + ACCOUNT_BATCH]]
        results = client.create_accounts(chunk)
        bad = [r for r in results if not r.ok]
        assert not bad, f"account creation failed: {bad[:3]}"
    by_shard: dict[int, list[int]] = {}
    for i in ids:
        by_shard.setdefault(shard_of(i), []).append(i)
    return by_shard


class Ids:
    def __init__(self):
        self._next = random.getrandbits(80) << 40
        self._lock = threading.Lock()

    def take(self, n: int) -> int:
        with self._lock:
            first = self._next
            self._next += n
            return first


def make_transfers(rng: random.Random, by_shard: dict[int, list[int]], ids: Ids, count: int,
                   uniform: bool = False) -> list[Transfer]:
    """Same-shard pairs, or (uniform) pairs drawn from all accounts: mostly cross-shard."""
    shards = list(by_shard)
    first = ids.take(count)
    out = []
    everyone = [a for accounts in by_shard.values() for a in accounts] if uniform else None
    for n in range(count):
        accounts = everyone or by_shard[rng.choice(shards)]
        debit, credit = rng.sample(accounts, 2)
        # the id in its debit account's slot: a same-shard transfer involves no other shard (its id's home)
        out.append(Transfer(id=id_near(first + n << 32, debit), debit_account_id=debit, credit_account_id=credit,
                            amount=1, ledger=LEDGER, code=1))
    return out


def batched(client: Client, by_shard, ids: Ids, duration_s: float, batch: int, senders: int,
            uniform: bool = False) -> float:
    """Several senders each submitting batches of `batch` transfers spread over all shards."""
    done = [0] * senders
    stop = time.monotonic() + duration_s

    def sender(k: int) -> None:
        rng = random.Random(k)
        while time.monotonic() < stop:
            transfers = make_transfers(rng, by_shard, ids, batch, uniform)
            results = client.create_transfers(transfers)
            done[k] += sum(1 for r in results if r.ok)

    started = time.monotonic()
    threads = [threading.Thread(target=sender, args=(k,)) for k in range(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.monotonic() - started)


def single_callers(client: Client, by_shard, ids: Ids, duration_s: float, callers: int,
                   rate_per_s: float | None = None) -> tuple[float, list[float]]:
    """`callers` threads, one transfer per call; optionally paced to a total rate (open loop per caller)."""
    latencies: list[list[float]] = [[] for _ in range(callers)]
    stop = time.monotonic() + duration_s
    interval = callers / rate_per_s if rate_per_s else 0.0

    def caller(k: int) -> None:
        rng = random.Random(1000 + k)
        next_at = time.monotonic() + rng.random() * interval
        while True:
            now = time.monotonic()
            if now >= stop:
                return
            if interval:
                if now < next_at:
                    time.sleep(next_at - now)
                next_at += interval
            (t,) = make_transfers(rng, by_shard, ids, 1)
            began = time.perf_counter()
            (result,) = client.create_transfers([t])
            latencies[k].append(time.perf_counter() - began)
            assert result.ok, result

    started = time.monotonic()
    threads = [threading.Thread(target=caller, args=(k,)) for k in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    flat = [x for per in latencies for x in per]
    return len(flat) / (time.monotonic() - started), flat


def percentile_ms(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


@contextlib.contextmanager
def cluster_for(args):
    if args.dir:
        yield LocalCluster.open(args.dir)
        return
    if getattr(args, "no_fsync", False):
        os.environ["TIDEBANK_RAFT_FSYNC"] = "0"
    with tempfile.TemporaryDirectory(prefix="tidebank-bench-") as directory:
        cluster = LocalCluster.create(directory, dcs=3, nodes_per_dc=1, shards=args.shards,
                                      plaintext=getattr(args, "plaintext", False))
        try:
            cluster.start()
            cluster.wait_ready(timeout_s=120)
            yield cluster
        finally:
            cluster.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", help="use the running cluster in DIR")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--duration-s", type=float, default=15.0)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--senders", type=int, default=4, help="concurrent batch senders")
    parser.add_argument("--callers", type=int, default=64)
    parser.add_argument("--no-fsync", action="store_true", help="journal without fdatasync (own cluster only)")
    parser.add_argument("--plaintext", action="store_true",
                        help="own cluster without TLS or principals (to measure what they cost)")
    parser.add_argument("--skip", default="", help="comma list of: batched,cross,single,latency")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    report: dict[str, object] = {"shards": args.shards, "accounts": args.accounts, "fsync": not args.no_fsync,
                                 "cpus": os.cpu_count()}
    with cluster_for(args) as cluster, Client(cluster.endpoints, tls=cluster.client_tls(), timeout_s=60.0) as client:
        shard_of = shard_table(client)
        began = time.monotonic()
        by_shard = create_accounts(client, args.accounts, shard_of)
        report["accounts_per_s"] = round(args.accounts / (time.monotonic() - began))
        ids = Ids()
        if "batched" not in skip:
            report["batched_transfers_per_s"] = round(
                batched(client, by_shard, ids, args.duration_s, args.batch, args.senders))
            print(f"batched ({args.batch}/call, {args.senders} senders): {report['batched_transfers_per_s']}/s",
                  file=sys.stderr)
        if "cross" not in skip:
            report["batched_uniform_transfers_per_s"] = round(
                batched(client, by_shard, ids, args.duration_s, args.batch, args.senders, uniform=True))
            print(f"batched uniform over all accounts (~{100 - 100 // args.shards}% cross-shard): "
                  f"{report['batched_uniform_transfers_per_s']}/s", file=sys.stderr)
        if "single" not in skip:
            rate, _ = single_callers(client, by_shard, ids, args.duration_s, args.callers)
            report["single_callers"] = args.callers
            report["single_transfers_per_s"] = round(rate)
            print(f"single ({args.callers} callers): {round(rate)}/s", file=sys.stderr)
            if "latency" not in skip:
                half = rate / 2
                achieved, latencies = single_callers(client, by_shard, ids, args.duration_s, args.callers, half)
                report["half_load_target_per_s"] = round(half)
                report["half_load_achieved_per_s"] = round(achieved)
                report["latency_ms_p50"] = round(percentile_ms(latencies, 50), 2)
                report["latency_ms_p99"] = round(percentile_ms(latencies, 99), 2)
                report["latency_ms_mean"] = round(1000 * statistics.fmean(latencies), 2)
                print(f"latency at {round(achieved)}/s: p50 {report['latency_ms_p50']} ms, "
                      f"p99 {report['latency_ms_p99']} ms", file=sys.stderr)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Escrow trades through the full create -> ship -> confirm path on a local three-DC cluster.

    .venv/bin/python bench/bench_escrow.py                   # starts its own cluster (4 shards)
    .venv/bin/python bench/bench_escrow.py --dir DIR         # uses a running one
    .venv/bin/python bench/bench_escrow.py --batch 1 --senders 64   # one trade per call, coalesced by the client

Buyers and sellers are spread over every shard (so are the trades, by id); each
sender runs its own batches of trades through create, ship and confirm, one step
after the other. A trade counts when its confirm is answered ok. Prints one JSON
object at the end; bench/RESULTS.md records the numbers. Not part of the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
import time

from bench_transfers import cluster_for, percentile_ms  # bench/ is this script's folder

from tidebank.client import Account, AccountFlags, Client, NewTrade, TradeResultCode, Transfer
from tidebank.common.keys import id_near

LEDGER = 2
FUNDS = 10**15
OK = TradeResultCode.ok


def open_parties(client: Client, buyers: int, sellers: int) -> tuple[list[int], list[int]]:
    base = random.getrandbits(64) << 32
    mint = base
    buyer_ids = [base + 1 + n for n in range(buyers)]
    seller_ids = [base + 1 + buyers + n for n in range(sellers)]
    accounts = [Account(id=mint, ledger=LEDGER, code=1)]
    accounts += [Account(id=b, ledger=LEDGER, code=1, flags=AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)
                 for b in buyer_ids]
    accounts += [Account(id=s, ledger=LEDGER, code=1) for s in seller_ids]
    for start in range(0, len(accounts), 8000):
        assert all(r.ok for r in client.create_accounts(accounts[start:start + 8000]))
    funding = [Transfer(id=base + 10**6 + n, debit_account_id=mint, credit_account_id=b, amount=FUNDS // buyers,
                        ledger=LEDGER, code=1) for n, b in enumerate(buyer_ids)]
    for start in range(0, len(funding), 1000):
        assert all(r.ok for r in client.create_transfers(funding[start:start + 1000]))
    return buyer_ids, seller_ids


def run(client: Client, buyers: list[int], sellers: list[int], duration_s: float, batch: int,
        senders: int) -> dict:
    done = [0] * senders
    failed = [0] * senders
    step_latency: dict[str, list[float]] = {"create": [], "ship": [], "confirm": []}
    lock = threading.Lock()
    stop = time.monotonic() + duration_s

    def timed(name: str, call, items) -> list:
        began = time.perf_counter()
        results = call(items)
        with lock:
            step_latency[name].append(time.perf_counter() - began)
        return results

    def sender(k: int) -> None:
        rng = random.Random(k)
        next_id = random.getrandbits(80) << 40
        while time.monotonic() < stop:
            trades = []
            for _ in range(batch):
                next_id += 1
                buyer = rng.choice(buyers)
                # the trade lives with its buyer: create (buyer -> escrow) is then one shard's commit
                trades.append(NewTrade(id_near(next_id << 32, buyer), buyer, rng.choice(sellers),
                                       rng.randint(100, 10_000), LEDGER, fee_bps=250, ship_by_timeout_s=3600,
                                       auto_confirm_timeout_s=3600))
            created = [t.id for t, r in zip(trades, timed("create", client.create_trades, trades), strict=True)
                       if r.status == OK]
            shipped = [i for i, r in zip(created, timed("ship", client.ship_trades, created), strict=True)
                       if r.status == OK] if created else []
            confirmed = [i for i, r in zip(shipped, timed("confirm", client.confirm_trades, shipped), strict=True)
                         if r.status == OK] if shipped else []
            done[k] += len(confirmed)
            failed[k] += batch - len(confirmed)

    started = time.monotonic()
    threads = [threading.Thread(target=sender, args=(k,)) for k in range(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    report = {"batch": batch, "senders": senders, "trades_completed": sum(done), "trades_failed": sum(failed),
              "trades_per_s": round(sum(done) / elapsed, 1), "steps_per_s": round(3 * sum(done) / elapsed, 1)}
    for name, values in step_latency.items():
        if not values:
            continue
        report[f"{name}_latency_ms_p50"] = round(percentile_ms(values, 50), 1)
        report[f"{name}_latency_ms_p99"] = round(percentile_ms(values, 99), 1)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", help="use the running cluster in DIR")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--buyers", type=int, default=2_000)
    parser.add_argument("--sellers", type=int, default=500)
    parser.add_argument("--duration-s", type=float, default=20.0)
    parser.add_argument("--batch", type=int, default=500, help="trades per call and step")
    parser.add_argument("--senders", type=int, default=4, help="concurrent senders")
    parser.add_argument("--no-fsync", action="store_true", help="journal without fdatasync (own cluster only)")
    args = parser.parse_args()
    with cluster_for(args) as cluster, Client(cluster.endpoints, tls=cluster.client_tls(), timeout_s=60.0) as client:
        buyers, sellers = open_parties(client, args.buyers, args.sellers)
        report = {"shards": args.shards, "buyers": args.buyers, "sellers": args.sellers, "cpus": os.cpu_count()}
        report.update(run(client, buyers, sellers, args.duration_s, args.batch, args.senders))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

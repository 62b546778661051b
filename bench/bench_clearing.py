"""Clearing throughput, window close/net/settle times, statement export (not part of the tests).

    .venv/bin/python bench/bench_clearing.py                          # its own 3-DC cluster, 4 shards
    .venv/bin/python bench/bench_clearing.py --cycle-sizes 10000,100000,1000000 --duration-s 15

In one run, on one cluster:
1. batched same-shard transfers/s (bench_transfers.py's workload), the reference;
2. clearing items/s, batched (1,000 per call, 4 senders) among 160 participants whose shares of the volume
   follow a Zipf-like law (the biggest pays about a third of the items);
3. for each window size N: submit N items, then time CloseWindow (the cut, netting from running sums) and
   SettleWindow (one atomic chain of settlement transfers through the hub): both should stay nearly flat in N;
4. ExportStatement of the biggest participant of the largest window, in a separate process that writes the
   CSV to /dev/null: items/s and that process's peak RSS.
Prints one JSON object and writes --out/clearing.json and --out/clearing.png.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import random
import subprocess
import sys
import threading
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import bench_transfers  # noqa: E402

from tidebank.client import Account, AccountFlags, Client, Plaintext, Transfer  # noqa: E402
from tidebank.v1 import clearing_pb2, clearing_pb2_grpc, types_pb2  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
LEDGER = 978
PARTICIPANTS = 160
ZIPF_S = 1.25  # with 160 participants the first one pays about a third of the items
ITEMS_PER_CALL = 1_000
ACCEPTED = (clearing_pb2.CLEARING_ITEM_RESULT_OK, clearing_pb2.CLEARING_ITEM_RESULT_EXISTS)
R = clearing_pb2


def u128(value: int) -> types_pb2.U128:
    return types_pb2.U128(hi=value >> 64, lo=value & ((1 << 64) - 1))


def zipf_weights(n: int, s: float) -> list[float]:
    raw = [1 / (rank ** s) for rank in range(1, n + 1)]
    total = sum(raw)
    return [w / total for w in raw]


class Participants:
    """160 participants, each with a settlement account funded far beyond what it will owe."""

    def __init__(self, client: Client, stub: clearing_pb2_grpc.ClearingStub) -> None:
        base = random.getrandbits(64) << 40
        self.ids = [base + 2 * n + 1 for n in range(PARTICIPANTS)]
        accounts = [base + 2 * n + 2 for n in range(PARTICIPANTS)]
        mint = base + 10 ** 6
        results = client.create_accounts([Account(id=mint, ledger=LEDGER, code=1)] + [
            Account(id=a, ledger=LEDGER, code=2, flags=AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS) for a in accounts])
        assert all(r.ok for r in results), results[:3]
        results = client.create_transfers([Transfer(id=base + 10 ** 7 + n, debit_account_id=mint, credit_account_id=a,
                                                    amount=10 ** 15, ledger=LEDGER, code=1)
                                           for n, a in enumerate(accounts)])
        assert all(r.ok for r in results), results[:3]
        response = stub.RegisterParticipants(R.RegisterParticipantsRequest(participants=[
            R.Participant(id=u128(p), ledger=LEDGER, code=1, name=f"bank-{n:03d}", settlement_account_id=u128(a),
                          net_debit_cap=10 ** 14)
            for n, (p, a) in enumerate(zip(self.ids, accounts, strict=True))]), timeout=60)
        assert set(response.results) == {R.PARTICIPANT_RESULT_OK}, response.results
        self.weights = zipf_weights(PARTICIPANTS, ZIPF_S)

    def items(self, rng: random.Random, count: int) -> list[clearing_pb2.ClearingItem]:
        payers = rng.choices(self.ids, weights=self.weights, k=count)
        payees = rng.choices(self.ids, weights=self.weights, k=count)
        out = []
        for payer, payee in zip(payers, payees, strict=True):
            if payer == payee:
                payee = self.ids[(self.ids.index(payee) + 1) % PARTICIPANTS]
            out.append(R.ClearingItem(id=u128(rng.getrandbits(126) | 1), payer_id=u128(payer), payee_id=u128(payee),
                                      amount=rng.randint(1, 10_000), ledger=LEDGER))
        return out


def submit_items(stubs, participants: Participants, *, duration_s: float | None = None, total: int | None = None,
                 senders: int = 4) -> tuple[float, int]:
    """(ok items/s, ok items): senders submit batches until the time is up or `total` items were sent."""
    done = [0] * senders
    refused = [0] * senders
    codes: collections.Counter = collections.Counter()
    stop = time.monotonic() + (duration_s or 1e9)
    per_sender = None if total is None else (total + senders - 1) // senders

    def sender(k: int) -> None:
        rng = random.Random(7919 * k + int(time.time()))
        sent = 0
        stub = stubs[k % len(stubs)]
        while time.monotonic() < stop and (per_sender is None or sent < per_sender):
            n = ITEMS_PER_CALL if per_sender is None else min(ITEMS_PER_CALL, per_sender - sent)
            results = stub.SubmitItems(R.SubmitItemsRequest(items=participants.items(rng, n)), timeout=60).results
            sent += n
            # `exists` is accepted too: each item is sent once, so it means the node applied it on an attempt whose
            # answer it lost (a leader change) and learnt that on its own retry (node/executor.py: run).
            ok = sum(1 for r in results if r in ACCEPTED)
            done[k] += ok
            refused[k] += n - ok
            codes.update(R.ClearingItemResult.Name(r) for r in results if r != R.CLEARING_ITEM_RESULT_OK)

    started = time.monotonic()
    threads = [threading.Thread(target=sender, args=(k,)) for k in range(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(refused) == 0, f"{sum(refused)} items refused: {dict(codes)}"
    if codes:
        print(f"accepted on a retry inside the node (answered exists): {dict(codes)}", flush=True)
    return sum(done) / (time.monotonic() - started), sum(done)


def close_and_settle(stub) -> tuple[float, float, int]:
    """(close s, settle s, window number) of the ledger's open window."""
    started = time.monotonic()
    step = stub.CloseWindow(R.WindowRequest(ledger=LEDGER), timeout=120)
    close_s = time.monotonic() - started
    assert step.result == R.WINDOW_RESULT_OK, step
    number = step.window.number
    started = time.monotonic()
    step = stub.SettleWindow(R.WindowRequest(ledger=LEDGER, number=number), timeout=120)
    settle_s = time.monotonic() - started
    assert step.result == R.WINDOW_RESULT_OK, step
    return close_s, settle_s, number


EXPORT_SCRIPT = r"""
import resource, sys, time, grpc
from tidebank.v1 import clearing_pb2, clearing_pb2_grpc, types_pb2
address, ledger, number, pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
from tidebank.common.tls import client_tls_from_env, open_channel
stub = clearing_pb2_grpc.ClearingStub(open_channel(address, client_tls_from_env()))
request = clearing_pb2.ExportStatementRequest(ledger=ledger, number=number,
                                              participant_id=types_pb2.U128(hi=pid >> 64, lo=pid & (2**64 - 1)))
items = 0
started = time.monotonic()
with open("/dev/null", "w") as out:
    for chunk in stub.ExportStatement(request, timeout=600):
        for i in chunk.items:
            out.write(f"{i.id.hi << 64 | i.id.lo},{i.payer_id.lo},{i.payee_id.lo},{i.amount}\n")
            items += 1
elapsed = time.monotonic() - started
print(items, elapsed, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024, chunk.statement.sha256)
"""


def export_statement(cluster, number: int, participant: int) -> dict:
    tls = cluster.client_tls()
    named = ({"TIDEBANK_PLAINTEXT": "1"} if isinstance(tls, Plaintext) else
             {"TIDEBANK_CA": str(tls.ca), "TIDEBANK_CERT": str(tls.cert), "TIDEBANK_KEY": str(tls.key)})
    env = dict(os.environ, **named)
    output = subprocess.run([sys.executable, "-c", EXPORT_SCRIPT, cluster.endpoints[0], str(LEDGER), str(number),
                             str(participant)], check=True, capture_output=True, text=True, timeout=900,
                            env=env).stdout
    items, elapsed, rss_mb, digest = output.split()
    return {"items": int(items), "seconds": round(float(elapsed), 2),
            "items_per_s": round(int(items) / float(elapsed), 1), "peak_rss_mb": int(rss_mb), "sha256": digest}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", help="use the running cluster in DIR")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--accounts", type=int, default=20_000)
    parser.add_argument("--duration-s", type=float, default=15.0)
    parser.add_argument("--cycle-sizes", default="10000,100000,1000000")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    args.no_fsync = False
    sizes = [int(s) for s in args.cycle_sizes.split(",") if s]
    out_dir = pathlib.Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict = {"participants": PARTICIPANTS, "zipf_s": ZIPF_S}
    with bench_transfers.cluster_for(args) as cluster, Client(cluster.endpoints, tls=cluster.client_tls(),
                                                              timeout_s=60) as client:
        channels = [cluster.channel(a) for a in cluster.endpoints]
        stubs = [clearing_pb2_grpc.ClearingStub(c) for c in channels]
        shard_of = bench_transfers.shard_table(client)
        by_shard = bench_transfers.create_accounts(client, args.accounts, shard_of)
        participants = Participants(client, stubs[0])
        report["biggest_payer_share"] = round(participants.weights[0], 3)
        print(f"transfers (batched, same shard) for {args.duration_s:.0f} s ...", flush=True)
        transfers_per_s = bench_transfers.batched(client, by_shard, bench_transfers.Ids(), args.duration_s,
                                                  1_000, 4)
        print(f"clearing items (batched) for {args.duration_s:.0f} s ...", flush=True)
        items_per_s, _ = submit_items(stubs, participants, duration_s=args.duration_s)
        report["transfers_per_s"] = round(transfers_per_s, 1)
        report["items_per_s"] = round(items_per_s, 1)
        report["items_vs_transfers"] = round(items_per_s / transfers_per_s, 2)
        print(json.dumps(report), flush=True)
        close_and_settle(stubs[0])  # the window of the throughput run
        cycles = []
        for size in sizes:
            print(f"window of {size:,} items ...", flush=True)
            submitted_per_s, _ = submit_items(stubs, participants, total=size)
            close_s, settle_s, number = close_and_settle(stubs[0])
            cycles.append({"items": size, "close_s": round(close_s, 3), "settle_s": round(settle_s, 3),
                           "submit_items_per_s": round(submitted_per_s, 1), "window": number})
            print(json.dumps(cycles[-1]), flush=True)
        report["cycles"] = cycles
        print("statement export of the biggest participant ...", flush=True)
        report["statement"] = export_statement(cluster, cycles[-1]["window"], participants.ids[0])
        for c in channels:
            c.close()
    print(json.dumps(report))
    (out_dir / "clearing.json").write_text(json.dumps(report, indent=2) + "\n")
    _plot(report, out_dir / "clearing.png")
    return 0


def _plot(report: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cycles = report["cycles"]
    xs = [c["items"] for c in cycles]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(xs, [c["close_s"] for c in cycles], marker="o", label="close (cut + netting)")
    ax.plot(xs, [c["settle_s"] for c in cycles], marker="o", label="settle (one chain through the hub)")
    ax.plot(xs, [c["close_s"] + c["settle_s"] for c in cycles], marker="o", label="close + net + settle")
    ax.set_xscale("log")
    ax.set_xlabel("items in the window")
    ax.set_ylabel("seconds")
    ax.set_ylim(bottom=0)
    ax.set_title(f"clearing window of {report['participants']} participants, 3 DCs, 4 shards")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())

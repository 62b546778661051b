"""What applying a batch of transfers costs one replica: µs per transfer in the state machine alone.

    .venv/bin/python bench/apply_cost.py [--accounts N] [--batches N] [--batch N]

No Raft, no gRPC: one LMDB env, batches of same-ledger transfers between random accounts, each
batch one write txn (as one Raft entry is). Prints one JSON object. Not a test.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time

import lmdb

from tidebank.node.ledger import state_machine as sm_module
from tidebank.node.ledger.entry import decode_entry, encode_entry
from tidebank.node.ledger.operations import OP_CREATE_ACCOUNTS, OP_CREATE_TRANSFERS, Operation
from tidebank.node.ledger.records import Account, Transfer
from tidebank.node.ledger.state_machine import LedgerStateMachine


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", type=int, default=20_000)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tidebank-apply-") as directory:
        env = lmdb.open(directory, max_dbs=32, map_size=8 << 30, sync=False, metasync=False)
        with env.begin(write=True) as txn:
            ledger = LedgerStateMachine(env, txn=txn)
        with env.begin(write=True) as txn:
            for start in range(0, args.accounts, 8000):
                chunk = [Account(id=i + 1, ledger=1, code=1) for i in range(start, min(args.accounts, start + 8000))]
                ledger.apply(txn, [Operation(OP_CREATE_ACCOUNTS, chunk)], 1)
        rng = random.Random(1)
        next_id = 1 << 64
        payloads = []
        for _ in range(args.batches):
            items = []
            for _ in range(args.batch):
                next_id += 1
                debit, credit = rng.sample(range(1, args.accounts + 1), 2)
                items.append(Transfer(id=next_id, debit_account_id=debit, credit_account_id=credit, amount=1,
                                      ledger=1, code=1))
            payloads.append(encode_entry(0, [Operation(OP_CREATE_TRANSFERS, items)]))
        started = time.perf_counter()
        ts = 10
        for payload in payloads:
            _, operations = decode_entry(payload)
            with env.begin(write=True) as txn:
                ledger.apply(txn, operations, ts)
            ts += 1_000_000_000
        elapsed = time.perf_counter() - started
        env.close()
    n = args.batches * args.batch
    print(json.dumps({"transfers": n, "apply_us_per_transfer": round(elapsed / n * 1e6, 2),
                      "transfers_per_s": round(n / elapsed), "compiled": not sm_module.__file__.endswith(".py")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Locust load for tidebank: a gRPC user running a transfer mix through the client library.

    tidebank cluster up --dir /tmp/tb
    TIDEBANK_DIR=/tmp/tb .venv/bin/locust -f bench/locustfile.py --headless -u 64 -r 16 -t 60s

or --host HOST:PORT,HOST:PORT with the client endpoints instead of TIDEBANK_DIR. Accounts are created once at
test start. The mix: single transfers (most), batches of 100, pending transfers
that are posted or voided, balance lookups, escrow trades taken through create,
ship and confirm (three requests, buyer and seller on any shards), and clearing items
between 16 participants (a bank's payment to another, checked against its cap).
"""

from __future__ import annotations

import os
import random
import threading
import time

import grpc.experimental.gevent as grpc_gevent
from locust import User, between, events, task

from tidebank.client import Account, ClearingItem, Client, NewTrade, Participant, Transfer, TransferFlags, new_id
from tidebank.cluster.launcher import LocalCluster
from tidebank.common.keys import slot_of
from tidebank.common.tls import client_tls_from_env

grpc_gevent.init_gevent()  # gRPC's blocking calls must yield to locust's gevent loop

LEDGER = 1
ACCOUNTS = 10_000
CLEARING_LEDGER = 2
CLEARING_PARTICIPANTS = 16
_state: dict[str, object] = {}
_state_lock = threading.Lock()


def _accounts_by_shard(client: Client) -> dict[int, list[int]]:
    shard_map = client.shard_map()
    owner = {slot: s.shard_id for s in shard_map.shards for start, end in s.slots for slot in range(start, end)}
    base = random.getrandbits(64) << 32
    ids = [base + n for n in range(1, ACCOUNTS + 1)]
    for start in range(0, len(ids), 5_000):
        results = client.create_accounts([Account(id=i, ledger=LEDGER, code=1) for i in ids[start:start + 5_000]])
        assert all(r.ok for r in results), "could not create the load test's accounts"
    by_shard: dict[int, list[int]] = {}
    for i in ids:
        by_shard.setdefault(owner[slot_of(i, shard_map.slot_count)], []).append(i)
    return by_shard


@events.test_start.add_listener
def _setup(environment, **_kwargs):
    if environment.host:
        endpoints = environment.host.split(",")
    elif os.environ.get("TIDEBANK_DIR"):
        endpoints = LocalCluster.open(os.environ["TIDEBANK_DIR"]).endpoints
    else:
        raise SystemExit("give --host HOST:PORT,... or TIDEBANK_DIR=<cluster dir>")
    # Credentials: TIDEBANK_CA/CERT/KEY, else the `admin` principal of the TIDEBANK_DIR cluster.
    tls = client_tls_from_env()
    if tls is None and os.environ.get("TIDEBANK_DIR"):
        tls = LocalCluster.open(os.environ["TIDEBANK_DIR"]).client_tls(os.environ.get("TIDEBANK_PRINCIPAL", "admin"))
    client = Client(endpoints, timeout_s=30.0, tls=tls)
    _state["client"] = client
    _state["by_shard"] = _accounts_by_shard(client)
    _state["participants"] = _participants(client)


def _participants(client: Client) -> list[int]:
    """Clearing participants with settlement accounts and caps far beyond what the load test clears."""
    ids = [new_id() for _ in range(CLEARING_PARTICIPANTS)]
    accounts = [new_id() for _ in range(CLEARING_PARTICIPANTS)]
    assert all(r.ok for r in client.create_accounts([Account(id=a, ledger=CLEARING_LEDGER, code=2) for a in accounts]))
    results = client.register_participants([
        Participant(p, ledger=CLEARING_LEDGER, code=1, name=f"bank-{n:02d}", settlement_account_id=a,
                    net_debit_cap=10**15) for n, (p, a) in enumerate(zip(ids, accounts, strict=True))])
    assert all(r.ok for r in results), "could not register the load test's participants"
    return ids


@events.test_stop.add_listener
def _teardown(environment, **_kwargs):
    client = _state.pop("client", None)
    if client is not None:
        client.close()


class LedgerUser(User):
    wait_time = between(0.0, 0.01)

    def on_start(self):
        self.rng = random.Random()

    def _pair(self) -> tuple[int, int]:
        by_shard = _state["by_shard"]
        accounts = by_shard[self.rng.choice(list(by_shard))]
        debit, credit = self.rng.sample(accounts, 2)
        return debit, credit

    def _transfer(self, amount: int = 1, **fields) -> Transfer:
        debit, credit = fields.pop("pair", None) or self._pair()
        return Transfer(id=new_id(near=debit), debit_account_id=debit,
                        credit_account_id=credit, amount=amount, ledger=LEDGER, code=1, **fields)

    def _call(self, name: str, fn, items: int = 1):
        began = time.perf_counter()
        exception = None
        try:
            results = fn()
            bad = [r for r in results if hasattr(r, "ok") and not r.ok]
            if bad:
                exception = RuntimeError(f"{len(bad)} items failed, first: {bad[0].status.name}")
        except Exception as exc:  # reported to locust as a failure
            exception = exc
        self.environment.events.request.fire(request_type="grpc", name=name,
                                             response_time=1000 * (time.perf_counter() - began),
                                             response_length=items, exception=exception, context={})

    @task(70)
    def single_transfer(self):
        client = _state["client"]
        self._call("create_transfers[1]", lambda: client.create_transfers([self._transfer()]))

    @task(10)
    def batch_of_100(self):
        client = _state["client"]
        batch = [self._transfer() for _ in range(100)]
        self._call("create_transfers[100]", lambda: client.create_transfers(batch), items=100)

    @task(10)
    def pending_then_post_or_void(self):
        client = _state["client"]
        pair = self._pair()
        pending = self._transfer(5, pair=pair, flags=TransferFlags.PENDING, timeout=60)
        self._call("create_transfers[pending]", lambda: client.create_transfers([pending]))
        flag = self.rng.choice([TransferFlags.POST_PENDING_TRANSFER, TransferFlags.VOID_PENDING_TRANSFER])
        close = self._transfer(0, pair=pair, flags=flag, pending_id=pending.id)
        self._call(f"create_transfers[{flag.name.lower()}]", lambda: client.create_transfers([close]))

    @task(10)
    def lookup_balances(self):
        client = _state["client"]
        self._call("lookup_accounts[2]", lambda: client.lookup_accounts(list(self._pair())), items=2)

    @task(10)
    def trade_create_ship_confirm(self):
        client = _state["client"]
        everyone = [a for accounts in _state["by_shard"].values() for a in accounts]
        buyer, seller = self.rng.sample(everyone, 2)
        trade_id = (time.time_ns() << 24) | self.rng.getrandbits(24)
        trade = NewTrade(trade_id, buyer, seller, self.rng.randint(100, 10_000), LEDGER, fee_bps=250,
                         ship_by_timeout_s=3600, auto_confirm_timeout_s=3600)
        self._call("create_trade", lambda: [client.create_trade(trade)])
        self._call("ship_trade", lambda: [client.ship_trade(trade_id)])
        self._call("confirm_trade", lambda: [client.confirm_trade(trade_id)])

    @task(10)
    def clearing_item(self):
        client = _state["client"]
        payer, payee = self.rng.sample(_state["participants"], 2)
        item = ClearingItem(new_id(), payer_id=payer, payee_id=payee, amount=self.rng.randint(1, 10_000),
                            ledger=CLEARING_LEDGER)
        self._call("submit_items[1]", lambda: client.submit_items([item]))

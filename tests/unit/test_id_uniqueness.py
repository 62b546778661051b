"""A transfer id names one transfer in the whole ledger, whatever shards its accounts live on.

Every id has a home: the shard of its own hash slot. Every use of an id goes through its home (a cross-shard
group takes the home in as a participant when no account of it lives there), so a second, different transfer
with the same id is refused there, in every shape: plain, pending, post/void, linked, cross-shard, failed.

The servicer, router, coordinator and state machines are the real ones; shards apply straight into their own
LMDB, with no Raft in between (the real thing runs in tests/integration).
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor

import lmdb
import pytest

from tidebank.node.api.ledger_service import LedgerService
from tidebank.node.api.routing import ShardMap
from tidebank.node.executor import NodeView, ShardExecutor
from tidebank.node.ledger.operations import OP_CREATE_ACCOUNTS, Operation
from tidebank.node.ledger.records import Account, AccountFlags, TransferFlags
from tidebank.node.ledger.results import CreateTransferResult as R
from tidebank.node.ledger.state_machine import LedgerStateMachine
from tidebank.node.txn.coordinator import Coordinator
from tidebank.v1 import ledger_pb2

SLOTS = 12
SHARD_MAP = ShardMap(1, SLOTS, {0: [(0, 4)], 1: [(4, 8)], 2: [(8, 12)]})
PENDING = TransferFlags.PENDING
POST = TransferFlags.POST_PENDING_TRANSFER
VOID = TransferFlags.VOID_PENDING_TRANSFER
LINKED = TransferFlags.LINKED


class LocalShard:
    def __init__(self, path, shard_id: int):
        self.shard_id = shard_id
        self.env = lmdb.open(str(path / f"shard-{shard_id}"), max_dbs=64, map_size=1 << 28, sync=False)
        self.ledger = LedgerStateMachine(self.env, slot_count=SLOTS)

    def is_leader(self) -> bool:
        return True

    def submit(self, operation: Operation) -> Future:
        with self.env.begin(write=True) as txn:
            (results,) = self.ledger.apply(txn, [operation], time.time_ns())
        future: Future = Future()
        future.set_result(results)
        return future

    def read_barrier(self) -> Future:
        future: Future = Future()
        future.set_result(None)
        return future

    def txn_decision(self, key: int):
        with self.env.begin() as txn:
            return self.ledger.txn_decision(txn, key)

    def txn_decision_record(self, key: int):
        with self.env.begin() as txn:
            return self.ledger.txn_decision_record(txn, key)

    def lookup_transfers(self, ids):
        with self.env.begin() as txn:
            return self.ledger.lookup_transfers(txn, ids)

    def lookup_accounts(self, ids):
        with self.env.begin() as txn:
            return self.ledger.lookup_accounts(txn, ids)


class LocalNode(NodeView):
    address = "local:1"

    def __init__(self, path):
        self.shard_map = SHARD_MAP
        self.shards = {s: LocalShard(path, s) for s in SHARD_MAP.shard_ids}

    def local_shard(self, shard_id):
        return self.shards.get(shard_id)

    def leader_address(self, shard_id):
        return None

    def replica_addresses(self, shard_id):
        return []

    def reachable(self, address):
        return True

    def ledger_stub(self, address):
        raise AssertionError("every shard is local here: nothing is forwarded")


class _Context:
    def invocation_metadata(self):
        return ()

    def time_remaining(self):
        return 10.0


@pytest.fixture
def ledger(tmp_path):
    node = LocalNode(tmp_path)
    executor = ShardExecutor(node, "secret")
    pool = ThreadPoolExecutor(8)
    yield Ledger(node, LedgerService(node, executor, Coordinator(node, executor), pool))
    pool.shutdown()
    executor.close()
    for shard in node.shards.values():
        shard.env.close()


def id_on(shard: int, n: int) -> int:
    """The n-th id (from 1000 * (n + 1)) whose home is `shard`."""
    candidate = 1000 * (n + 1)
    while SHARD_MAP.shard_of(candidate) != shard:
        candidate += 1
    return candidate


class Ledger:
    def __init__(self, node: LocalNode, service: LedgerService):
        self.node = node
        self.service = service
        self.accounts: dict[int, list[int]] = {s: [] for s in SHARD_MAP.shard_ids}
        for shard in SHARD_MAP.shard_ids:
            for n in range(3):
                account_id = id_on(shard, 50 + n)
                funded = n == 2  # the third account of each shard limits its debits to its credits
                flags = AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS if funded else 0
                node.shards[shard].submit(Operation(OP_CREATE_ACCOUNTS, [Account(account_id, ledger=1, code=1,
                                                                                 flags=flags)]))
                self.accounts[shard].append(account_id)

    def create(self, *transfers: dict) -> list[int]:
        request = ledger_pb2.CreateTransfersRequest()
        for t in transfers:
            m = request.transfers.add(amount=t.get("amount", 0), ledger=t.get("ledger", 1), code=t.get("code", 1),
                                      flags=int(t.get("flags", 0)), timeout=t.get("timeout", 0))
            m.id.lo, m.id.hi = t["id"] & (2**64 - 1), t["id"] >> 64
            m.debit_account_id.lo = t.get("debit", 0)
            m.credit_account_id.lo = t.get("credit", 0)
            m.pending_id.lo = t.get("pending_id", 0)
        return list(self.service.CreateTransfers(request, _Context()).results)

    def lookup(self, tid: int):
        request = ledger_pb2.LookupTransfersRequest()
        request.ids.add().lo = tid
        found = list(self.service.LookupTransfers(request, _Context()).transfers)
        return found

    def balances(self, account_id: int) -> tuple[int, int, int, int]:
        shard = self.node.shards[SHARD_MAP.shard_of(account_id)]
        (a,) = shard.lookup_accounts([account_id])
        return a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted

    def plain(self, tid: int, shard: int, amount: int, debit: int = 0, credit: int = 1, **extra) -> dict:
        return dict(id=tid, debit=self.accounts[shard][debit], credit=self.accounts[shard][credit], amount=amount,
                    **extra)


# ids whose home is shard 2, used by transfers among accounts of shards 0 and 1
X = id_on(2, 1)
Y = id_on(2, 2)


def test_the_same_id_for_another_transfer_on_another_shard_is_refused_and_moves_nothing(ledger):
    assert ledger.create(ledger.plain(X, 0, 5)) == [R.created]
    assert ledger.create(ledger.plain(X, 1, 7)) == [R.exists_with_different_debit_account_id]
    assert ledger.balances(ledger.accounts[1][0]) == (0, 0, 0, 0)
    (found,) = ledger.lookup(X)
    assert found.amount == 5 and found.debit_account_id.lo == ledger.accounts[0][0]


def test_a_retry_of_the_same_transfer_answers_exists_wherever_its_id_lives(ledger):
    co_located = id_on(0, 3)
    for tid in (X, co_located):
        assert ledger.create(ledger.plain(tid, 0, 5)) == [R.created]
        assert ledger.create(ledger.plain(tid, 0, 5)) == [R.exists]
    assert ledger.balances(ledger.accounts[0][0]) == (0, 10, 0, 0)


def test_a_co_located_id_reused_on_another_shard_is_refused_at_its_home(ledger):
    on_shard_0 = id_on(0, 4)
    assert ledger.create(ledger.plain(on_shard_0, 0, 5)) == [R.created]
    assert ledger.create(ledger.plain(on_shard_0, 1, 5)) == [R.exists_with_different_debit_account_id]
    assert ledger.balances(ledger.accounts[1][0]) == (0, 0, 0, 0)


def test_a_pending_transfers_id_cannot_name_a_transfer_elsewhere(ledger):
    assert ledger.create(ledger.plain(X, 0, 5, flags=PENDING, timeout=3600)) == [R.created]
    assert ledger.create(ledger.plain(X, 1, 5, flags=PENDING, timeout=3600)) == [
        R.exists_with_different_debit_account_id]
    assert ledger.create(ledger.plain(X, 1, 5)) == [R.exists_with_different_flags]
    assert ledger.balances(ledger.accounts[1][0]) == (0, 0, 0, 0)


def test_a_posts_id_cannot_name_a_transfer_elsewhere(ledger):
    pending = id_on(0, 5)
    assert ledger.create(ledger.plain(pending, 0, 5, flags=PENDING, timeout=3600)) == [R.created]
    post = dict(id=X, debit=ledger.accounts[0][0], pending_id=pending, flags=POST)
    assert ledger.create(post) == [R.created]
    assert ledger.create(ledger.plain(X, 1, 5)) == [R.exists_with_different_flags]
    assert ledger.create(post) == [R.exists]
    assert ledger.balances(ledger.accounts[0][0]) == (0, 5, 0, 0)
    assert ledger.balances(ledger.accounts[1][0]) == (0, 0, 0, 0)


def test_a_voids_id_cannot_be_reused_for_a_post(ledger):
    pending = id_on(1, 5)
    assert ledger.create(ledger.plain(pending, 1, 5, flags=PENDING, timeout=3600)) == [R.created]
    assert ledger.create(dict(id=X, debit=ledger.accounts[1][0], pending_id=pending, flags=VOID)) == [R.created]
    other = id_on(0, 6)
    assert ledger.create(ledger.plain(other, 0, 5, flags=PENDING, timeout=3600)) == [R.created]
    assert ledger.create(dict(id=X, debit=ledger.accounts[0][0], pending_id=other, flags=POST)) == [
        R.exists_with_different_flags]
    assert ledger.balances(ledger.accounts[0][0]) == (5, 0, 0, 0)  # the second pending transfer still holds


def test_a_linked_chain_reusing_an_id_fails_whole(ledger):
    assert ledger.create(ledger.plain(X, 0, 5)) == [R.created]
    first = ledger.plain(id_on(1, 7), 1, 3, flags=LINKED)
    assert ledger.create(first, ledger.plain(X, 1, 7)) == [R.linked_event_failed,
                                                          R.exists_with_different_debit_account_id]
    assert ledger.balances(ledger.accounts[1][0]) == (0, 0, 0, 0)


def test_a_cross_shard_transfers_id_cannot_name_a_transfer_elsewhere(ledger):
    across = dict(id=X, debit=ledger.accounts[0][0], credit=ledger.accounts[1][1], amount=5)
    assert ledger.create(across) == [R.created]
    assert ledger.create(ledger.plain(X, 2, 5)) == [R.exists_with_different_debit_account_id]
    assert ledger.create(across) == [R.exists]
    assert ledger.balances(ledger.accounts[2][0]) == (0, 0, 0, 0)


def test_an_id_that_failed_cannot_be_used_for_another_transfer(ledger):
    funded = ledger.accounts[0][2]  # debits may not exceed credits: it has none
    failing = dict(id=Y, debit=funded, credit=ledger.accounts[1][0], amount=5)
    assert ledger.create(failing) == [R.exceeds_credits]
    assert ledger.create(ledger.plain(Y, 1, 5)) == [R.id_already_failed]
    assert ledger.create(failing) == [R.exceeds_credits]  # a retry of the same group replays its outcome
    assert ledger.balances(ledger.accounts[1][0]) == (0, 0, 0, 0)


def test_an_id_that_failed_at_its_own_home_stays_failed(ledger):
    home_shard_id = id_on(0, 8)
    funded = ledger.accounts[0][2]
    assert ledger.create(dict(id=home_shard_id, debit=funded, credit=ledger.accounts[0][0], amount=5)) == [
        R.exceeds_credits]
    assert ledger.create(ledger.plain(home_shard_id, 1, 5)) == [R.id_already_failed]


def test_two_different_transfers_with_one_id_in_one_request_get_one_outcome_each(ledger):
    results = ledger.create(ledger.plain(X, 0, 5), ledger.plain(X, 1, 7))
    assert sorted(results) == sorted([R.created, R.exists_with_different_debit_account_id])
    moved = [ledger.balances(ledger.accounts[s][0])[1] for s in (0, 1)]
    assert sorted(moved) == [0, 5] or sorted(moved) == [0, 7]

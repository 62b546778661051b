"""Two-phase commit protocol: outcomes, retries and recovery from each crash point.

Shards here apply operations straight into their own real LMDB state machine,
with no Raft in between, to isolate the coordinator and sweeper; the real thing
runs in tests/integration (test_cross_shard.py, test_bank.py).
"""

from __future__ import annotations

import time
from concurrent.futures import Future

import lmdb
import pytest

from tidebank.common.keys import slot_of
from tidebank.node.api.routing import ShardMap
from tidebank.node.executor import NodeView, ShardExecutor
from tidebank.node.ledger import escrow, slot_moves
from tidebank.node.ledger.operations import OP_CREATE_ACCOUNTS, OP_DECIDE, OP_PREPARE, OP_SLOT_MOVES, Operation
from tidebank.node.ledger.records import Account, AccountFlags, Transfer
from tidebank.node.ledger.results import CreateTransferResult
from tidebank.node.ledger.slot_moves import SlotMoveCommand
from tidebank.node.ledger.state_machine import LedgerStateMachine
from tidebank.node.ledger.trades import CMD_CREATE, TradeCommand, TradeStep
from tidebank.node.ledger.txn_records import Decide, Prepare
from tidebank.node.outcomes import NotAppliedError, ParticipantUnavailableError
from tidebank.node.txn import coordinator as coordinator_module
from tidebank.node.txn import sweeper as sweeper_module
from tidebank.node.txn.coordinator import Coordinator, Group, attempt_key, legs_by_shard
from tidebank.node.txn.sweeper import Sweeper

SLOTS = 8
SHARD_MAP = ShardMap(1, SLOTS, {0: [(0, 4)], 1: [(4, 8)]})


class LocalShard:
    """A shard without Raft: every submit is one write txn on its own LMDB."""

    def __init__(self, path, shard_id: int):
        self.shard_id = shard_id
        self.env = lmdb.open(str(path / f"shard-{shard_id}"), max_dbs=64, map_size=1 << 28, sync=False)
        self.ledger = LedgerStateMachine(self.env, slot_count=SLOTS)
        self.reachable = True

    def is_leader(self) -> bool:
        return True

    def submit(self, operation: Operation) -> Future:
        if not self.reachable:
            raise NotAppliedError("shard unreachable (test)")
        with self.env.begin(write=True) as txn:
            (results,) = self.ledger.apply(txn, [operation], time.time_ns())
        future: Future = Future()
        future.set_result(results)
        return future

    def txn_decision(self, key: int):
        with self.env.begin() as txn:
            return self.ledger.txn_decision(txn, key)

    def txn_decision_record(self, key: int):
        with self.env.begin() as txn:
            return self.ledger.txn_decision_record(txn, key)

    def prepared_txns(self, limit: int = 100):
        with self.env.begin() as txn:
            return self.ledger.prepared_txns(txn, limit=limit)

    def account(self, account_id: int) -> Account:
        with self.env.begin() as txn:
            (account,) = self.ledger.lookup_accounts(txn, [account_id])
        return account


class LocalNode(NodeView):
    address = "local"

    def __init__(self, path):
        self.shard_map = SHARD_MAP
        self.shards = {0: LocalShard(path, 0), 1: LocalShard(path, 1)}

    def local_shard(self, shard_id: int):
        return self.shards.get(shard_id)

    def leader_address(self, shard_id: int):
        return None


@pytest.fixture
def node(tmp_path, monkeypatch):
    monkeypatch.setattr(coordinator_module, "STEP_TIMEOUT_S", 0.3)
    n = LocalNode(tmp_path)
    yield n
    for shard in n.shards.values():
        shard.env.close()


@pytest.fixture
def steps(node):
    s = ShardExecutor(node, "secret")
    yield s
    s.close()


def id_on(shard: int, start: int) -> int:
    candidate = start
    while SHARD_MAP.shard_of(candidate) != shard:
        candidate += 1
    return candidate


def open_accounts(node, *flags_by_shard) -> list[int]:
    ids = []
    for n, (shard, flags) in enumerate(flags_by_shard):
        account_id = id_on(shard, 1000 * (n + 1))
        node.shards[shard].submit(Operation(OP_CREATE_ACCOUNTS, [Account(id=account_id, ledger=1, code=1,
                                                                         flags=flags)]))
        ids.append(account_id)
    return ids


def balances(node, account_id: int) -> tuple[int, int, int, int]:
    a = node.shards[SHARD_MAP.shard_of(account_id)].account(account_id)
    return a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted


def group_of(*transfers: Transfer) -> Group:
    return Group(list(transfers), SHARD_MAP.shard_of(transfers[0].debit_account_id))


def transfer(tid: int, debit: int, credit: int, amount: int) -> Transfer:
    return Transfer(id=tid, debit_account_id=debit, credit_account_id=credit, amount=amount, ledger=1, code=1)


def test_cross_shard_group_commits_on_both_shards(node, steps):
    a, b = open_accounts(node, (0, 0), (1, 0))
    assert Coordinator(node, steps).run(group_of(transfer(1, a, b, 10)), 2.0) == [CreateTransferResult.created]
    assert balances(node, a) == (0, 10, 0, 0) and balances(node, b) == (0, 0, 0, 10)


def test_a_committed_group_retried_answers_exists_and_moves_nothing_more(node, steps):
    a, b = open_accounts(node, (0, 0), (1, 0))
    coordinator = Coordinator(node, steps)
    coordinator.run(group_of(transfer(1, a, b, 10)), 2.0)
    assert coordinator.run(group_of(transfer(1, a, b, 10)), 2.0) == [CreateTransferResult.exists]
    assert balances(node, b) == (0, 0, 0, 10)


def test_a_business_failure_is_final_and_replayed_on_retry(node, steps):
    a, b = open_accounts(node, (0, AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS), (1, 0))
    coordinator = Coordinator(node, steps)
    for _ in range(2):
        assert coordinator.run(group_of(transfer(1, a, b, 10)), 2.0) == [CreateTransferResult.exceeds_credits]
    assert balances(node, a) == (0, 0, 0, 0) and balances(node, b) == (0, 0, 0, 0)
    assert node.shards[1].prepared_txns() == []


def test_unreachable_participant_aborts_the_attempt_and_releases_every_hold(node, steps):
    a, b = open_accounts(node, (0, 0), (1, 0))
    node.shards[1].reachable = False
    with pytest.raises(ParticipantUnavailableError):
        Coordinator(node, steps).run(group_of(transfer(1, a, b, 10)), 2.0)
    assert balances(node, a) == (0, 0, 0, 0)
    assert node.shards[0].prepared_txns() == []


def test_retry_after_an_aborted_attempt_runs_a_fresh_attempt_and_commits(node, steps):
    a, b = open_accounts(node, (0, 0), (1, 0))
    coordinator = Coordinator(node, steps)
    node.shards[1].reachable = False
    with pytest.raises(ParticipantUnavailableError):
        coordinator.run(group_of(transfer(1, a, b, 10)), 2.0)
    node.shards[1].reachable = True
    group = group_of(transfer(1, a, b, 10))
    assert coordinator.run(group, 2.0) == [CreateTransferResult.created]
    assert node.shards[0].txn_decision(attempt_key(group.txid, 1)).committed
    assert balances(node, a) == (0, 10, 0, 0) and balances(node, b) == (0, 0, 0, 10)


def test_a_group_retried_through_a_long_busy_spell_still_commits_when_it_ends(node, steps):
    # A slot move fences the credit account's slot for a while; every request meanwhile aborts a few attempts
    # (busy). However often the client retries, the group must not run out of attempts and fail for good.
    a, b = open_accounts(node, (0, 0), (1, 0))
    fence = SlotMoveCommand(slot_moves.LEAVING, (1, [slot_of(b, SLOTS)], 0))
    assert node.shards[1].submit(Operation(OP_SLOT_MOVES, [fence])).result() == [slot_moves.SlotMoveResult.ok]
    coordinator = Coordinator(node, steps)
    for _ in range(40):
        with pytest.raises(ParticipantUnavailableError):
            coordinator.run(group_of(transfer(1, a, b, 10)), 2.0)
    abort = SlotMoveCommand(slot_moves.ABORT, (1,))
    assert node.shards[1].submit(Operation(OP_SLOT_MOVES, [abort])).result() == [slot_moves.SlotMoveResult.ok]
    assert coordinator.run(group_of(transfer(1, a, b, 10)), 2.0) == [CreateTransferResult.created]
    assert balances(node, a) == (0, 10, 0, 0) and balances(node, b) == (0, 0, 0, 10)


def prepare_everywhere(node, steps, group: Group, key: int) -> list[int]:
    """The first step of an attempt, as a coordinator that then crashes would leave it."""
    legs = legs_by_shard(group, SHARD_MAP)
    for shard, shard_legs in legs.items():
        (vote,) = steps.run(shard, Operation(OP_PREPARE, [Prepare(key, group.coordinator_shard, len(group.transfers),
                                                                  shard_legs)]), time.monotonic() + 1)
        assert vote.prepared
    return sorted(legs)


def sweep_all(node, steps, after_s: float = 0.0) -> None:
    sweeper = Sweeper(node, Coordinator(node, steps), clock_ns=lambda: time.time_ns() + int(after_s * 1e9),
                      start=False)
    try:
        for shard_id, host in node.shards.items():
            sweeper.sweep(shard_id, host)
    finally:
        sweeper.close()


def test_coordinator_crash_after_prepare_is_aborted_by_the_sweeper(node, steps):
    a, b = open_accounts(node, (0, 0), (1, 0))
    group = group_of(transfer(1, a, b, 10))
    prepare_everywhere(node, steps, group, attempt_key(group.txid, 0))
    assert balances(node, a) == (10, 0, 0, 0)  # held
    sweep_all(node, steps, after_s=sweeper_module.SWEEP_AFTER_S + 1)
    decision = node.shards[0].txn_decision(attempt_key(group.txid, 0))
    assert not decision.committed and decision.code == 0  # presume-abort, recorded on the coordinator
    assert balances(node, a) == (0, 0, 0, 0) and balances(node, b) == (0, 0, 0, 0)
    assert node.shards[0].prepared_txns() == [] and node.shards[1].prepared_txns() == []


def test_sweeper_leaves_a_recently_prepared_transaction_to_its_coordinator(node, steps):
    a, b = open_accounts(node, (0, 0), (1, 0))
    group = group_of(transfer(1, a, b, 10))
    prepare_everywhere(node, steps, group, attempt_key(group.txid, 0))
    sweep_all(node, steps, after_s=0.0)
    assert node.shards[0].txn_decision(attempt_key(group.txid, 0)) is None
    assert len(node.shards[1].prepared_txns()) == 1


def test_coordinator_crash_after_deciding_commit_is_finished_by_the_sweeper(node, steps):
    a, b = open_accounts(node, (0, 0), (1, 0))
    group = group_of(transfer(1, a, b, 10))
    key = attempt_key(group.txid, 0)
    participants = prepare_everywhere(node, steps, group, key)
    steps.run(0, Operation(OP_DECIDE, [Decide(key, True, 0, 0, participants, [1])]), time.monotonic() + 1)
    sweep_all(node, steps, after_s=sweeper_module.SWEEP_AFTER_S + 1)
    assert balances(node, a) == (0, 10, 0, 0) and balances(node, b) == (0, 0, 0, 10)
    assert Coordinator(node, steps).run(group, 2.0) == [CreateTransferResult.exists]


def test_sweeper_abort_recorded_first_wins_over_the_coordinators_commit(node, steps):
    a, b = open_accounts(node, (0, 0), (1, 0))
    group = group_of(transfer(1, a, b, 10))
    key = attempt_key(group.txid, 0)
    participants = prepare_everywhere(node, steps, group, key)
    sweep_all(node, steps, after_s=sweeper_module.SWEEP_AFTER_S + 1)  # the coordinator was too slow
    (late,) = steps.run(0, Operation(OP_DECIDE, [Decide(key, True, 0, 0, participants, [1])]), time.monotonic() + 1)
    assert not late.committed  # first writer wins
    assert balances(node, b) == (0, 0, 0, 0)
    # The client's retry runs attempt 1 and commits exactly once.
    assert Coordinator(node, steps).run(group, 2.0) == [CreateTransferResult.created]
    assert balances(node, b) == (0, 0, 0, 10)


def test_a_different_group_reusing_a_prepared_groups_transfer_id_is_never_taken_for_it(node, steps):
    a, b, c = open_accounts(node, (0, 0), (1, 0), (1, 0))
    first = group_of(transfer(1, a, b, 10))
    prepare_everywhere(node, steps, first, attempt_key(first.txid, 0))  # then its coordinator crashed
    other = group_of(transfer(1, a, c, 10))  # same transfer id, other credit account
    with pytest.raises(ParticipantUnavailableError):  # id 1 is reserved by the prepared group: busy
        Coordinator(node, steps).run(other, 2.0)
    assert balances(node, c) == (0, 0, 0, 0)
    sweep_all(node, steps, after_s=sweeper_module.SWEEP_AFTER_S + 1)  # presume-abort of the first
    assert Coordinator(node, steps).run(other, 2.0) == [CreateTransferResult.created]
    assert balances(node, b) == (0, 0, 0, 0) and balances(node, c) == (0, 0, 0, 10)
    assert balances(node, a) == (0, 10, 0, 0)


def trade_group(trade_shard: int, buyer: int, seller: int, amount: int) -> Group:
    """The 2PC group of creating a trade on `trade_shard`, as the escrow coordinator plans it."""
    cmd = TradeCommand(CMD_CREATE, id_on(trade_shard, 50_000), amount=amount, buyer_account_id=buyer,
                       seller_account_id=seller, ledger=1, ship_by_timeout_s=60, auto_confirm_timeout_s=60)
    legs = escrow.legs(None, cmd, escrow.evaluate(None, cmd, None), SLOTS)
    return Group(legs, trade_shard, key=escrow.step_key(cmd, 0), trade=TradeStep(0, cmd))


def test_an_escrow_step_within_one_shard_commits_in_one_entry_without_a_decision(node, steps):
    buyer, seller = open_accounts(node, (0, 0), (0, 0))
    group = trade_group(0, buyer, seller, 10)
    ((decision, replay),) = Coordinator(node, steps).run_decisions([group], 2.0)
    assert decision.committed and not replay
    assert node.shards[0].txn_decision(attempt_key(group.txid, 0)) is None  # no DECIDE was needed
    assert balances(node, buyer) == (0, 10, 0, 0) and node.shards[0].prepared_txns() == []


def test_an_escrow_step_with_a_buyer_on_another_shard_runs_two_phase_commit(node, steps):
    buyer, seller = open_accounts(node, (1, 0), (0, 0))
    group = trade_group(0, buyer, seller, 10)
    ((decision, _),) = Coordinator(node, steps).run_decisions([group], 2.0)
    assert decision.committed and node.shards[0].txn_decision(attempt_key(group.txid, 0)).committed
    assert balances(node, buyer) == (0, 10, 0, 0)


def test_the_home_of_a_transfers_id_takes_part_even_when_none_of_its_accounts_lives_there():
    from tidebank.node.ledger.txn_records import SIDE_BOTH, SIDE_HOME
    big = ShardMap(1, 12, {0: [(0, 4)], 1: [(4, 8)], 2: [(8, 12)]})
    def on(shard: int, start: int) -> int:
        while big.shard_of(start) != shard:
            start += 1
        return start
    a, b = on(0, 100), on(0, 200)
    legs = legs_by_shard(Group([transfer(on(2, 300), a, b, 5)], 0), big)
    assert {shard: [leg.sides for leg in shard_legs] for shard, shard_legs in legs.items()} == {
        0: [SIDE_BOTH], 2: [SIDE_HOME]}
    legs = legs_by_shard(Group([transfer(on(0, 300), a, b, 5)], 0), big)
    assert {shard: [leg.sides for leg in shard_legs] for shard, shard_legs in legs.items()} == {
        0: [SIDE_BOTH | SIDE_HOME]}

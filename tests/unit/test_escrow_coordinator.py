"""The escrow coordinator over in-process shards (real state machines, no Raft): planning, waves, races."""

from __future__ import annotations

from concurrent.futures import Future

import pytest

from tests.unit.test_coordinator import SHARD_MAP, SLOTS, LocalNode, LocalShard, balances, id_on, open_accounts
from tidebank.node.executor import ShardExecutor
from tidebank.node.ledger.records import AccountFlags
from tidebank.node.ledger.results import CreateTransferResult, TradeResult
from tidebank.node.ledger.trades import (
    CMD_CONFIRM,
    CMD_CREATE,
    CMD_REFUND,
    CMD_SHIP,
    SETTLED,
    TRADE_STEP_INDEX,
    TradeCommand,
)
from tidebank.node.ledger.txn_records import Decision
from tidebank.node.txn import coordinator as coordinator_module
from tidebank.node.txn.coordinator import Coordinator
from tidebank.node.txn.escrow_coordinator import EscrowCoordinator, StepOutcome, _step_outcome, _waves

OK = StepOutcome(int(TradeResult.ok))
EXISTS = StepOutcome(int(TradeResult.exists))


class EscrowShard(LocalShard):
    """A LocalShard with the reads the escrow coordinator needs."""

    def read_barrier(self) -> Future:
        done: Future = Future()
        done.set_result(None)
        return done

    def lookup_trades(self, ids):
        with self.env.begin() as txn:
            return self.ledger.lookup_trades(txn, ids)

    def lookup_accounts(self, ids):
        with self.env.begin() as txn:
            return self.ledger.lookup_accounts(txn, ids)


class EscrowNode(LocalNode):
    def __init__(self, path):
        self.shard_map = SHARD_MAP
        self.shards = {0: EscrowShard(path, 0), 1: EscrowShard(path, 1)}

    def replica_addresses(self, shard_id: int):
        return []

    def reachable(self, address: str) -> bool:
        return True


@pytest.fixture
def node(tmp_path, monkeypatch):
    monkeypatch.setattr(coordinator_module, "STEP_TIMEOUT_S", 0.3)
    n = EscrowNode(tmp_path)
    yield n
    for shard in n.shards.values():
        shard.env.close()


@pytest.fixture
def coordinator(node):
    steps = ShardExecutor(node, "secret")
    yield EscrowCoordinator(node, Coordinator(node, steps), SLOTS)
    steps.close()


def create(trade_id: int, buyer: int, seller: int, amount: int) -> TradeCommand:
    return TradeCommand(CMD_CREATE, trade_id, amount=amount, buyer_account_id=buyer, seller_account_id=seller,
                        ledger=1, fee_bps=100, ship_by_timeout_s=60, auto_confirm_timeout_s=60)


def test_waves_run_a_trades_commands_in_request_order_one_per_wave():
    commands = [TradeCommand(CMD_SHIP, 1), TradeCommand(CMD_SHIP, 2), TradeCommand(CMD_CONFIRM, 1),
                TradeCommand(CMD_REFUND, 1, arg_id=1, amount=1)]
    assert _waves(commands) == [[0, 1], [2], [3]]


def test_decisions_become_trade_results():
    assert _step_outcome(Decision(True, 0, 0, 1), False) == OK
    assert _step_outcome(Decision(True, 0, 0, 1), True) == EXISTS
    refused = Decision(False, TRADE_STEP_INDEX, int(TradeResult.deadline_passed), 1)
    assert _step_outcome(refused, False) == StepOutcome(int(TradeResult.deadline_passed))
    leg = Decision(False, 0, int(CreateTransferResult.exceeds_credits), 1)
    assert _step_outcome(leg, False) == StepOutcome(int(TradeResult.transfer_failed),
                                                    int(CreateTransferResult.exceeds_credits))


def test_a_trade_across_two_shards_runs_create_ship_confirm_in_one_batch(node, coordinator):
    buyer, seller = open_accounts(node, (1, 0), (0, 0))
    trade_id = id_on(0, 70_000)
    commands = [create(trade_id, buyer, seller, 1_000), TradeCommand(CMD_SHIP, trade_id),
                TradeCommand(CMD_CONFIRM, trade_id)]
    assert coordinator.execute(0, commands, 5.0) == [OK, OK, OK]
    assert balances(node, buyer) == (0, 1_000, 0, 0) and balances(node, seller) == (0, 0, 0, 990)
    (t,) = node.shards[0].lookup_trades([trade_id])
    assert t.state == SETTLED


def test_retried_commands_answer_exists_and_move_nothing(node, coordinator):
    buyer, seller = open_accounts(node, (1, 0), (0, 0))
    trade_id = id_on(0, 70_000)
    commands = [create(trade_id, buyer, seller, 1_000), TradeCommand(CMD_CONFIRM, trade_id)]
    coordinator.execute(0, commands, 5.0)
    assert coordinator.execute(0, commands, 5.0) == [EXISTS, EXISTS]
    assert balances(node, seller) == (0, 0, 0, 990)


def test_a_buyer_short_of_money_gets_transfer_failed_again_on_retry(node, coordinator):
    buyer, seller = open_accounts(node, (1, AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS), (0, 0))
    trade_id = id_on(0, 70_000)
    failed = StepOutcome(int(TradeResult.transfer_failed), int(CreateTransferResult.exceeds_credits))
    for _ in range(2):
        assert coordinator.execute(0, [create(trade_id, buyer, seller, 5)], 5.0) == [failed]
    assert node.shards[0].lookup_trades([trade_id]) == []


def test_a_missing_seller_is_refused_before_anything_moves(node, coordinator):
    (buyer,) = open_accounts(node, (1, 0))
    result = coordinator.execute(0, [create(id_on(0, 70_000), buyer, id_on(0, 90_000), 5)], 5.0)
    assert result == [StepOutcome(int(TradeResult.seller_account_not_found))]
    assert balances(node, buyer) == (0, 0, 0, 0)


def test_a_step_planned_on_a_version_that_moved_on_is_planned_again(node, coordinator, monkeypatch):
    buyer, seller = open_accounts(node, (1, 0), (0, 0))
    trade_id = id_on(0, 70_000)
    coordinator.execute(0, [create(trade_id, buyer, seller, 1_000)], 5.0)
    # The first read the coordinator makes is stale: it still sees the trade as created, but a refund
    # of 900 has been applied since. Its plan (confirm releasing 1,000) must not go through.
    host = node.shards[0]
    stale = host.lookup_trades([trade_id])
    coordinator.execute(0, [TradeCommand(CMD_REFUND, trade_id, arg_id=7, amount=900)], 5.0)
    reads = iter([stale])
    real = host.lookup_trades
    monkeypatch.setattr(host, "lookup_trades", lambda ids: next(reads, None) or real(ids))
    assert coordinator.execute(0, [TradeCommand(CMD_CONFIRM, trade_id)], 5.0) == [OK]
    (t,) = real([trade_id])
    assert (t.refunded, t.released, t.fee, t.held) == (900, 99, 1, 0)
    assert balances(node, seller) == (0, 0, 0, 99)


def test_steps_of_a_shard_this_node_does_not_lead_are_not_applied(node, coordinator, monkeypatch):
    monkeypatch.setattr(node.shards[0], "is_leader", lambda: False)
    (outcome,) = coordinator.execute(0, [TradeCommand(CMD_SHIP, id_on(0, 70_000))], 0.5)
    assert isinstance(outcome, coordinator_module.NotAppliedError)

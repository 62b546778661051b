"""Escrow steps applied by the state machine: every transition with the money positions after it.

Positions checked after each step: buyer, seller, the slot's escrow and fee accounts,
the trade's own book (held = amount - refunded - released - fee), the shard's escrow
totals, and that debits equal credits.
"""

from __future__ import annotations

import pytest

from tests.unit.escrow_harness import LEDGER, MINT, EscrowHarness, S, create
from tidebank.common.keys import escrow_account_id
from tidebank.node.ledger import escrow
from tidebank.node.ledger.operations import OP_CREATE_ACCOUNTS, OP_CREATE_TRANSFERS
from tidebank.node.ledger.records import Account, AccountFlags, Transfer
from tidebank.node.ledger.results import CreateAccountResult, CreateTransferResult, TradeResult
from tidebank.node.ledger.trades import (
    CLOSED,
    CMD_AUTO_CONFIRM,
    CMD_AUTO_REFUND,
    CMD_CONFIRM,
    CMD_EXTEND,
    CMD_OPEN_DISPUTE,
    CMD_REFUND,
    CMD_RESOLVE_DISPUTE,
    CMD_SHIP,
    CMD_WITHDRAW_DISPUTE,
    DISPUTED,
    PAID,
    REFUNDED,
    SETTLED,
    SHIPPED,
    TRADE_STEP_INDEX,
    TradeCommand,
)
from tidebank.node.ledger.txn_records import FINISH_ALREADY, SIDE_BOTH, Leg, Prepare

BUYER, SELLER, TRADE = 101, 202, 7_000
OK = (escrow.OK, 0)


@pytest.fixture
def h(tmp_path):
    harness = EscrowHarness(tmp_path / "db")
    harness.open(BUYER, balance=10_000)
    harness.open(SELLER, flags=0)
    yield harness
    harness.close()


def act(kind: int, trade_id: int = TRADE, **kw) -> TradeCommand:
    return TradeCommand(kind, trade_id, **kw)


def positions(h: EscrowHarness, trade_id: int = TRADE) -> tuple[int, int, int, int]:
    """(buyer, seller, escrow, fee) posted balances, credits minus debits."""
    escrow_id, fee_id = h.system_accounts(trade_id)
    return h.net(BUYER) - 10_000, h.net(SELLER), h.net(escrow_id), h.net(fee_id)


def check_books(h: EscrowHarness) -> None:
    """The invariants every step keeps: conservation, and the escrow book matches the escrow accounts."""
    assert h.conserved()
    for totals in h.escrow_totals().values():
        assert totals["held"] == totals["escrow_balance"]
        assert totals["fees"] == totals["fee_balance"]


# ---- the happy path


def test_create_moves_the_amount_from_the_buyer_into_the_slot_escrow(h):
    assert h.step(create(TRADE, BUYER, SELLER, 1_000, fee_bps=250)) == OK
    assert positions(h) == (-1_000, 0, 1_000, 0)
    t = h.trade(TRADE)
    assert (t.state, t.held, t.version) == (PAID, 1_000, 1)
    check_books(h)


def test_escrow_and_fee_accounts_are_opened_on_first_use_and_cannot_go_negative(h):
    h.step(create(TRADE, BUYER, SELLER, 1_000))
    escrow_id, _ = h.system_accounts(TRADE)
    a = h.account(escrow_id)
    assert a.code == escrow.ESCROW_ACCOUNT_CODE and a.flags & AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS


def test_ship_then_confirm_pays_the_seller_less_the_fee_and_the_platform_its_fee(h):
    h.step(create(TRADE, BUYER, SELLER, 1_000, fee_bps=250))
    assert h.step(act(CMD_SHIP)) == OK
    assert h.trade(TRADE).state == SHIPPED
    assert h.step(act(CMD_CONFIRM)) == OK
    assert positions(h) == (-1_000, 975, 0, 25)
    t = h.trade(TRADE)
    assert (t.state, t.held, t.released, t.fee) == (SETTLED, 0, 975, 25)
    check_books(h)


def test_fee_rounding_never_creates_or_loses_a_minor_unit(h):
    h.step(create(TRADE, BUYER, SELLER, 999, fee_bps=333))  # 332.667 -> 33 fee on 999
    h.step(act(CMD_CONFIRM))
    buyer, seller, escrow_balance, fee = positions(h)
    assert (seller, fee) == (999 - 33, 33) and buyer + seller + escrow_balance + fee == 0
    check_books(h)


# ---- refunds and disputes


def test_partial_refunds_then_confirm_release_only_what_is_left(h):
    h.step(create(TRADE, BUYER, SELLER, 1_000, fee_bps=100))
    assert h.step(act(CMD_REFUND, arg_id=1, amount=300)) == OK
    assert positions(h) == (-700, 0, 700, 0)
    assert h.step(act(CMD_REFUND, arg_id=1, amount=300)) == (TradeResult.exists, 0)
    assert positions(h) == (-700, 0, 700, 0)  # a retried refund moves nothing
    h.step(act(CMD_CONFIRM))
    assert positions(h) == (-700, 693, 0, 7)
    check_books(h)


def test_refunding_everything_ends_the_trade_refunded(h):
    h.step(create(TRADE, BUYER, SELLER, 1_000))
    h.step(act(CMD_REFUND, arg_id=1, amount=400))
    h.step(act(CMD_REFUND, arg_id=2, amount=600))
    assert positions(h) == (0, 0, 0, 0)
    assert h.trade(TRADE).state == REFUNDED
    assert h.step(act(CMD_CONFIRM)) == (TradeResult.trade_is_refunded, 0)
    check_books(h)


def test_a_dispute_resolved_by_a_split_closes_the_trade(h):
    h.step(create(TRADE, BUYER, SELLER, 1_000, fee_bps=1_000))
    h.step(act(CMD_SHIP))
    assert h.step(act(CMD_OPEN_DISPUTE)) == OK
    assert h.trade(TRADE).state == DISPUTED
    assert h.step(act(CMD_RESOLVE_DISPUTE, amount=400)) == OK
    assert positions(h) == (-600, 540, 0, 60)
    assert h.trade(TRADE).state == CLOSED
    check_books(h)


def test_an_invalid_transition_gets_its_code_and_changes_nothing(h):
    h.step(create(TRADE, BUYER, SELLER, 1_000))
    before = (positions(h), h.trade(TRADE))
    assert h.step(act(CMD_RESOLVE_DISPUTE, amount=1)) == (TradeResult.trade_is_not_disputed, 0)
    assert h.step(act(CMD_REFUND, arg_id=1, amount=1_001)) == (TradeResult.refund_exceeds_held, 0)
    assert (positions(h), h.trade(TRADE)) == before


# ---- money the buyer does not have


def test_a_buyer_without_enough_money_fails_the_create_and_nothing_is_held(h):
    assert h.step(create(TRADE, BUYER, SELLER, 10_001)) == (TradeResult.transfer_failed,
                                                           CreateTransferResult.exceeds_credits)
    assert h.trade(TRADE) is None
    assert positions(h) == (0, 0, 0, 0)
    check_books(h)


# ---- timers on cluster time


def test_the_ship_by_timer_refunds_the_buyer_only_once_due_in_cluster_time(h):
    h.step(create(TRADE, BUYER, SELLER, 1_000, ship_by_s=10))
    deadline = h.trade(TRADE).deadline
    _, early = h.plan(act(CMD_AUTO_REFUND))
    vote = h.prepare(early, at_ns=deadline - 1)
    assert not vote.prepared and (vote.failed_index, vote.code) == (TRADE_STEP_INDEX, 0)  # busy: not due
    h.abort(early, at_ns=deadline - 1)
    assert h.step(act(CMD_AUTO_REFUND), at_ns=deadline) == OK
    assert positions(h) == (0, 0, 0, 0) and h.trade(TRADE).state == REFUNDED
    check_books(h)


def test_a_timer_fires_exactly_once(h):
    h.step(create(TRADE, BUYER, SELLER, 1_000))
    h.step(act(CMD_SHIP))
    deadline = h.trade(TRADE).deadline
    _, first = h.plan(act(CMD_AUTO_CONFIRM))
    _, second = h.plan(act(CMD_AUTO_CONFIRM))  # a second leader planned it too, on the same version
    assert first.txid == second.txid  # same step, same key: one prepared record serves both
    assert h.prepare(first, at_ns=deadline).prepared
    assert h.finish(first.txid, True, at_ns=deadline) == 0
    assert h.prepare(second, at_ns=deadline).prepared  # answered from the record: nothing new
    assert h.finish(second.txid, True, at_ns=deadline) == FINISH_ALREADY
    assert positions(h) == (-1_000, 1_000, 0, 0)
    assert h.step(act(CMD_AUTO_CONFIRM), at_ns=deadline) == (TradeResult.exists, 0)
    check_books(h)


def test_a_dispute_pauses_the_timer_and_withdrawing_resumes_the_remaining_time(h):
    h.step(create(TRADE, BUYER, SELLER, 1_000, ship_by_s=100), at_ns=h.now)
    h.step(act(CMD_OPEN_DISPUTE), at_ns=h.now + 40 * S)
    t = h.trade(TRADE)
    assert (t.deadline, t.timer_remaining_ns) == (0, 60 * S)
    h.step(act(CMD_WITHDRAW_DISPUTE), at_ns=h.now + 500 * S)
    assert h.trade(TRADE).deadline == h.now + 560 * S


def test_extending_a_shipped_trade_moves_its_auto_confirm_deadline(h):
    h.step(create(TRADE, BUYER, SELLER, 1_000))
    h.step(act(CMD_SHIP))
    before = h.trade(TRADE).deadline
    assert h.step(act(CMD_EXTEND, arg_id=1, seconds=86_400)) == OK
    assert h.trade(TRADE).deadline == before + 86_400 * S


def test_a_dispute_opened_after_the_deadline_is_refused_by_cluster_time(h):
    h.step(create(TRADE, BUYER, SELLER, 1_000, ship_by_s=10))
    deadline = h.trade(TRADE).deadline
    assert h.step(act(CMD_OPEN_DISPUTE), at_ns=deadline) == (TradeResult.deadline_passed, 0)
    assert h.trade(TRADE).state == PAID


def test_due_trades_lists_due_timers_and_skips_a_trade_whose_step_is_prepared(h):
    h.step(create(TRADE, BUYER, SELLER, 1_000, ship_by_s=10))
    h.step(create(TRADE + 1, BUYER, SELLER, 1_000, ship_by_s=20))
    deadline = h.trade(TRADE).deadline
    with h.env.begin() as txn:
        assert [t.id for t in h.sm.due_trades(txn, deadline)] == [TRADE]
        assert [t.id for t in h.sm.due_trades(txn, deadline + 10 * S)] == [TRADE, TRADE + 1]
    _, prepare = h.plan(act(CMD_REFUND, arg_id=1, amount=5))
    assert h.prepare(prepare).prepared
    with h.env.begin() as txn:
        assert [t.id for t in h.sm.due_trades(txn, deadline + 10 * S)] == [TRADE + 1]


# ---- concurrency: versions and locks


def test_a_step_planned_on_an_old_version_votes_busy_and_changes_nothing(h):
    h.step(create(TRADE, BUYER, SELLER, 1_000))
    _, stale = h.plan(act(CMD_REFUND, arg_id=1, amount=100))
    h.step(act(CMD_REFUND, arg_id=2, amount=900))  # the trade moves on to version 3
    vote = h.prepare(stale)
    assert not vote.prepared and (vote.failed_index, vote.code) == (TRADE_STEP_INDEX, 0)
    assert positions(h) == (-100, 0, 100, 0) and h.trade(TRADE).refunds == [(2, 900)]


def test_a_prepared_step_locks_its_trade_until_it_finishes(h):
    h.step(create(TRADE, BUYER, SELLER, 1_000))
    _, refund = h.plan(act(CMD_REFUND, arg_id=1, amount=100))
    _, ship = h.plan(act(CMD_SHIP))
    assert h.prepare(refund).prepared
    assert not h.prepare(ship).prepared  # busy
    h.abort(ship)
    h.finish(refund.txid, True)
    assert h.step(act(CMD_SHIP)) == OK
    assert positions(h) == (-900, 0, 900, 0)


def test_an_aborted_step_releases_its_holds_and_its_lock(h):
    h.step(create(TRADE, BUYER, SELLER, 1_000))
    _, refund = h.plan(act(CMD_REFUND, arg_id=1, amount=100))
    assert h.prepare(refund).prepared
    escrow_id, _ = h.system_accounts(TRADE)
    assert h.account(escrow_id).debits_pending == 100
    h.abort(refund)
    assert h.account(escrow_id).debits_pending == 0 and h.trade(TRADE).refunded == 0
    assert h.step(act(CMD_REFUND, arg_id=1, amount=100)) == OK


def test_legs_that_are_not_the_rules_legs_are_refused(h):
    """A coordinator bug (or a forged PREPARE) cannot move escrow money anywhere else."""
    h.step(create(TRADE, BUYER, SELLER, 1_000))
    _, refund = h.plan(act(CMD_REFUND, arg_id=1, amount=100))
    thief = 303
    h.open(thief, flags=0)
    leg = refund.legs[0]
    forged = Transfer(**{**{f: getattr(leg.transfer, f) for f in Transfer.__slots__}, "credit_account_id": thief})
    vote = h.prepare(Prepare(refund.txid, 0, 1, [Leg(0, SIDE_BOTH, forged)], refund.trade))
    assert not vote.prepared and vote.code == TradeResult.internal_error
    assert h.net(thief) == 0


# ---- escrow accounts are reserved


def test_plain_transfers_cannot_touch_escrow_accounts(h):
    h.step(create(TRADE, BUYER, SELLER, 1_000))
    escrow_id, _ = h.system_accounts(TRADE)
    (code,) = h.apply(OP_CREATE_TRANSFERS, [Transfer(id=9, debit_account_id=escrow_id, credit_account_id=BUYER,
                                                     amount=1, ledger=LEDGER, code=1)])
    assert code == CreateTransferResult.account_reserved_for_escrow
    assert h.net(escrow_id) == 1_000


def test_accounts_cannot_be_created_with_escrow_ids(h):
    (code,) = h.apply(OP_CREATE_ACCOUNTS, [Account(id=escrow_account_id(LEDGER, 5, 64), ledger=LEDGER, code=1)])
    assert code == CreateAccountResult.id_reserved_for_escrow


def test_a_prepare_without_a_trade_step_cannot_touch_escrow_accounts(h):
    escrow_id = escrow_account_id(LEDGER, 3, 64)
    t = Transfer(id=77, debit_account_id=MINT, credit_account_id=escrow_id, amount=5, ledger=LEDGER, code=1)
    vote = h.prepare(Prepare(77, 0, 1, [Leg(0, SIDE_BOTH, t)]))
    assert not vote.prepared and vote.code == CreateTransferResult.account_reserved_for_escrow


# ---- books and listings


def test_escrow_totals_count_trades_by_state_and_money_by_kind(h):
    h.step(create(TRADE, BUYER, SELLER, 1_000, fee_bps=500))
    h.step(create(TRADE + 1, BUYER, SELLER, 300))
    h.step(act(CMD_CONFIRM))
    (totals,) = h.escrow_totals().values()
    assert (totals["held"], totals["fees"], totals["released"], totals["refunded"]) == (300, 50, 950, 0)
    assert (totals["trades_paid"], totals["trades_settled"]) == (1, 1)
    assert totals["escrow_balance"] == 300 and totals["fee_balance"] == 50


def test_list_trades_pages_a_buyers_trades_by_creation(h):
    for n in range(5):
        h.step(create(TRADE + n, BUYER, SELLER, 10), at_ns=h.now + n)
    with h.env.begin() as txn:
        first = h.sm.list_trades(txn, BUYER, limit=2)
        rest = h.sm.list_trades(txn, BUYER, after=(first[-1].created_at, first[-1].id), limit=10)
        as_seller = h.sm.list_trades(txn, SELLER, seller=True, limit=10)
        nothing = h.sm.list_trades(txn, SELLER, limit=10)
    assert [t.id for t in first + rest] == [TRADE + n for n in range(5)]
    assert len(as_seller) == 5 and nothing == []


# ---- one-participant steps: PREPARE and commit in one entry


def test_a_local_step_commits_the_trade_and_its_legs_in_one_entry(h):
    _, prepare = h.plan(create(TRADE, BUYER, SELLER, 1_000))
    vote = h.commit_local(prepare)
    assert vote.prepared
    assert positions(h) == (-1_000, 0, 1_000, 0) and h.trade(TRADE).state == PAID
    with h.env.begin() as txn:
        assert h.sm.prepared_txns(txn) == [] and not h.sm.trade_locked(txn, TRADE)
    check_books(h)


def test_a_local_step_run_again_changes_nothing(h):
    _, prepare = h.plan(create(TRADE, BUYER, SELLER, 1_000))
    h.commit_local(prepare)
    assert h.commit_local(prepare).prepared
    assert positions(h) == (-1_000, 0, 1_000, 0) and h.trade(TRADE).version == 1


def test_a_refused_local_step_keeps_its_refusal_for_the_same_key(h):
    _, prepare = h.plan(create(TRADE, BUYER, SELLER, 10_001))
    first = h.commit_local(prepare)
    assert not first.prepared and first.code == CreateTransferResult.exceeds_credits
    h.open(BUYER + 1, balance=0)  # whatever changes meanwhile, the same key answers the same
    assert h.commit_local(prepare) == first
    assert h.trade(TRADE) is None and positions(h) == (0, 0, 0, 0)


def test_a_busy_local_step_records_nothing_and_runs_once_the_trade_is_free(h):
    h.step(create(TRADE, BUYER, SELLER, 1_000))
    _, refund = h.plan(act(CMD_REFUND, arg_id=1, amount=100))
    _, ship = h.plan(act(CMD_SHIP))
    assert h.prepare(refund).prepared  # holds the trade's lock
    busy = h.commit_local(ship)
    assert not busy.prepared and (busy.failed_index, busy.code) == (TRADE_STEP_INDEX, 0)
    h.finish(refund.txid, False)
    assert h.commit_local(ship).prepared  # the same key: nothing was recorded for it
    assert h.trade(TRADE).state == SHIPPED

"""The escrow rules as pure functions: which step is valid in which state, what money it moves, timers."""

from __future__ import annotations

import pytest

from tidebank.common.keys import U128_MAX, escrow_account_id, fee_account_id, is_system_account, slot_of
from tidebank.node.ledger import escrow
from tidebank.node.ledger.escrow import (
    MOVE_FEE,
    MOVE_HOLD,
    MOVE_REFUND,
    MOVE_RELEASE,
    NOT_DUE,
    commit,
    evaluate,
    fee_of,
    legs,
    step_key,
)
from tidebank.node.ledger.records import Account, AccountFlags
from tidebank.node.ledger.results import TradeResult as R
from tidebank.node.ledger.trades import (
    CLOSED,
    CLOSED_BY_AUTO_CONFIRMED,
    CLOSED_BY_BUYER_CONFIRMED,
    CLOSED_BY_DISPUTE_RESOLVED,
    CLOSED_BY_REFUNDED,
    CLOSED_BY_SHIP_BY_EXPIRED,
    CMD_AUTO_CONFIRM,
    CMD_AUTO_REFUND,
    CMD_CONFIRM,
    CMD_CREATE,
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
    TIMER_AUTO_CONFIRM,
    TIMER_SHIP_BY,
    Trade,
    TradeCommand,
    TradeStep,
    pack_command,
    pack_trade,
    pack_trade_step,
    unpack_command,
    unpack_trade,
    unpack_trade_step,
)

S = 1_000_000_000
T0 = 1_000 * S
BUYER, SELLER = 11, 22


def new(trade_id: int = 7, amount: int = 1_000, fee_bps: int = 250, ship_by_s: int = 60,
        auto_confirm_s: int = 120) -> TradeCommand:
    return TradeCommand(CMD_CREATE, trade_id, amount=amount, buyer_account_id=BUYER, seller_account_id=SELLER,
                        ledger=1, fee_bps=fee_bps, ship_by_timeout_s=ship_by_s, auto_confirm_timeout_s=auto_confirm_s)


def paid(**kw) -> Trade:
    return commit(None, new(**kw), T0)


def act(kind: int, trade_id: int = 7, **kw) -> TradeCommand:
    return TradeCommand(kind, trade_id, **kw)


def shipped(**kw) -> Trade:
    return commit(paid(**kw), act(CMD_SHIP), T0 + S)


def code(trade: Trade | None, cmd: TradeCommand, now: int | None = None) -> int:
    return evaluate(trade, cmd, now).code


# ---- create


def test_create_holds_the_whole_amount():
    assert evaluate(None, new(), None).moves == ((MOVE_HOLD, 1_000),)


@pytest.mark.parametrize(("change", "expected"), [
    ({"trade_id": 0}, R.id_must_not_be_zero),
    ({"trade_id": U128_MAX}, R.id_must_not_be_int_max),
    ({"buyer_account_id": 0}, R.buyer_account_id_must_not_be_zero),
    ({"seller_account_id": 0}, R.seller_account_id_must_not_be_zero),
    ({"seller_account_id": U128_MAX}, R.account_id_must_not_be_int_max),
    ({"seller_account_id": BUYER}, R.accounts_must_be_different),
    ({"seller_account_id": escrow_account_id(1, 3)}, R.account_reserved),
    ({"amount": 0}, R.amount_must_not_be_zero),
    ({"ledger": 0}, R.ledger_must_not_be_zero),
    ({"fee_bps": 10_001}, R.fee_bps_above_10000),
    ({"ship_by_timeout_s": 0}, R.timeout_out_of_range),
    ({"auto_confirm_timeout_s": escrow.TIMEOUT_MAX_S + 1}, R.timeout_out_of_range),
])
def test_create_refuses_a_malformed_trade(change, expected):
    cmd = new()
    for name, value in change.items():
        setattr(cmd, name, value)
    assert code(None, cmd) == expected


def test_create_of_an_existing_trade_answers_exists():
    assert code(paid(), new()) == R.exists


@pytest.mark.parametrize(("change", "expected"), [
    ({"buyer_account_id": 99}, R.exists_with_different_buyer_account_id),
    ({"seller_account_id": 99}, R.exists_with_different_seller_account_id),
    ({"amount": 5}, R.exists_with_different_amount),
    ({"ledger": 2}, R.exists_with_different_ledger),
    ({"fee_bps": 1}, R.exists_with_different_fee_bps),
    ({"ship_by_timeout_s": 61}, R.exists_with_different_timeouts),
    ({"user_data_64": 1}, R.exists_with_different_user_data),
])
def test_create_of_an_existing_trade_with_other_fields_says_which(change, expected):
    cmd = new()
    for name, value in change.items():
        setattr(cmd, name, value)
    assert code(paid(), cmd) == expected


def test_a_created_trade_is_paid_with_the_ship_by_timer_running():
    t = paid()
    assert (t.state, t.version, t.held, t.created_at) == (PAID, 1, 1_000, T0)
    assert (t.timer, t.deadline) == (TIMER_SHIP_BY, T0 + 60 * S)


@pytest.mark.parametrize("kind", [CMD_SHIP, CMD_CONFIRM, CMD_OPEN_DISPUTE, CMD_WITHDRAW_DISPUTE,
                                  CMD_RESOLVE_DISPUTE])
def test_a_step_on_a_missing_trade_answers_trade_not_found(kind):
    assert code(None, act(kind)) == R.trade_not_found


# ---- parties


def test_parties_must_exist_share_the_ledger_be_open_and_accept_credits():
    ok = Account(BUYER, ledger=1, code=1)
    cmd = new()
    assert escrow.check_parties(cmd, None, ok) == R.buyer_account_not_found
    assert escrow.check_parties(cmd, ok, None) == R.seller_account_not_found
    assert escrow.check_parties(cmd, ok, Account(SELLER, ledger=2, code=1)) == R.account_has_different_ledger
    assert escrow.check_parties(cmd, ok, Account(SELLER, ledger=1, code=1, flags=AccountFlags.CLOSED)) \
        == R.account_closed
    limited = Account(SELLER, ledger=1, code=1, flags=AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS)
    assert escrow.check_parties(cmd, ok, limited) == R.account_flags_not_supported
    assert escrow.check_parties(cmd, ok, Account(SELLER, ledger=1, code=1)) == R.ok


# ---- ship and confirm


def test_ship_starts_the_auto_confirm_timer_with_extensions():
    t = commit(paid(), act(CMD_EXTEND, arg_id=1, seconds=30), T0)
    s = commit(t, act(CMD_SHIP), T0 + 5 * S)
    assert (s.state, s.shipped_at, s.timer, s.deadline) == (SHIPPED, T0 + 5 * S, TIMER_AUTO_CONFIRM,
                                                            T0 + 5 * S + 150 * S)


def test_ship_again_answers_exists():
    assert code(shipped(), act(CMD_SHIP)) == R.exists


def test_ship_after_the_ship_by_deadline_is_refused():
    assert code(paid(), act(CMD_SHIP), T0 + 60 * S) == R.deadline_passed
    assert code(paid(), act(CMD_SHIP), T0 + 60 * S - 1) == R.ok


def test_confirm_releases_the_held_amount_less_the_fee():
    assert evaluate(shipped(), act(CMD_CONFIRM), None).moves == ((MOVE_RELEASE, 975), (MOVE_FEE, 25))
    t = commit(shipped(), act(CMD_CONFIRM), T0 + 2 * S)
    assert (t.state, t.closed_by, t.released, t.fee, t.held, t.deadline) == (
        SETTLED, CLOSED_BY_BUYER_CONFIRMED, 975, 25, 0, 0)


def test_confirm_of_a_paid_trade_is_allowed_the_buyer_has_the_goods():
    assert code(paid(), act(CMD_CONFIRM)) == R.ok


def test_confirm_again_answers_exists_but_not_after_an_auto_confirm():
    confirmed = commit(shipped(), act(CMD_CONFIRM), T0)
    assert code(confirmed, act(CMD_CONFIRM)) == R.exists
    auto = commit(shipped(), act(CMD_AUTO_CONFIRM), T0)
    assert code(auto, act(CMD_CONFIRM)) == R.trade_is_settled


# ---- fees


@pytest.mark.parametrize(("gross", "bps", "fee"), [(1_000, 250, 25), (999, 250, 24), (1, 9_999, 0),
                                                   (7, 10_000, 7), (123_456_789, 0, 0), (3, 3_333, 0)])
def test_fee_rounds_down_on_what_the_seller_receives(gross, bps, fee):
    assert fee_of(gross, bps) == fee
    assert fee_of(gross, bps) * 10_000 <= gross * bps < (fee_of(gross, bps) + 1) * 10_000


def test_a_whole_fee_moves_no_zero_release():
    t = shipped(fee_bps=10_000)
    assert evaluate(t, act(CMD_CONFIRM), None).moves == ((MOVE_FEE, 1_000),)


# ---- refunds


def test_partial_refunds_until_nothing_is_held_end_refunded():
    t = commit(paid(), act(CMD_REFUND, arg_id=1, amount=400), T0)
    assert (t.state, t.held, t.refunded, t.refunds) == (PAID, 600, 400, [(1, 400)])
    assert code(t, act(CMD_REFUND, arg_id=2, amount=601)) == R.refund_exceeds_held
    t = commit(t, act(CMD_REFUND, arg_id=2, amount=600), T0)
    assert (t.state, t.closed_by, t.held, t.timer, t.deadline) == (REFUNDED, CLOSED_BY_REFUNDED, 0, 0, 0)


def test_a_refund_id_again_answers_exists_or_names_the_different_amount():
    t = commit(paid(), act(CMD_REFUND, arg_id=1, amount=400), T0)
    assert code(t, act(CMD_REFUND, arg_id=1, amount=400)) == R.exists
    assert code(t, act(CMD_REFUND, arg_id=1, amount=300)) == R.exists_with_different_amount


def test_refund_needs_an_id_and_an_amount():
    assert code(paid(), act(CMD_REFUND, arg_id=0, amount=1)) == R.refund_id_must_not_be_zero
    assert code(paid(), act(CMD_REFUND, arg_id=1, amount=0)) == R.amount_must_not_be_zero


def test_refunds_are_bounded_per_trade():
    t = paid(amount=100)
    for i in range(escrow.REFUNDS_MAX):
        t = commit(t, act(CMD_REFUND, arg_id=i + 1, amount=1), T0)
    assert code(t, act(CMD_REFUND, arg_id=99, amount=1)) == R.too_many_refunds


def test_no_refund_once_the_auto_confirm_deadline_passed():
    t = shipped()
    assert code(t, act(CMD_REFUND, arg_id=1, amount=1), t.deadline) == R.deadline_passed
    assert code(t, act(CMD_REFUND, arg_id=1, amount=1), t.deadline - 1) == R.ok


def test_refund_of_a_settled_trade_is_refused():
    assert code(commit(shipped(), act(CMD_CONFIRM), T0), act(CMD_REFUND, arg_id=1, amount=1)) == R.trade_is_settled


# ---- disputes


def test_a_dispute_pauses_the_timer_and_withdrawing_resumes_what_was_left():
    t = shipped()  # deadline T0 + 1 s + 120 s
    d = commit(t, act(CMD_OPEN_DISPUTE), T0 + 21 * S)
    assert (d.state, d.state_before_dispute, d.deadline, d.timer_remaining_ns) == (DISPUTED, SHIPPED, 0, 100 * S)
    w = commit(d, act(CMD_WITHDRAW_DISPUTE), T0 + 1_000 * S)
    assert (w.state, w.deadline, w.timer_remaining_ns, w.timer) == (SHIPPED, T0 + 1_100 * S, 0, TIMER_AUTO_CONFIRM)


def test_a_trade_has_at_most_one_dispute():
    d = commit(paid(), act(CMD_OPEN_DISPUTE), T0)
    assert code(d, act(CMD_OPEN_DISPUTE)) == R.exists
    w = commit(d, act(CMD_WITHDRAW_DISPUTE), T0)
    assert code(w, act(CMD_OPEN_DISPUTE)) == R.dispute_already_opened
    assert code(w, act(CMD_WITHDRAW_DISPUTE)) == R.exists


def test_a_dispute_freezes_shipping_confirming_and_extending():
    d = commit(paid(), act(CMD_OPEN_DISPUTE), T0)
    assert code(d, act(CMD_SHIP)) == R.trade_is_disputed
    assert code(d, act(CMD_CONFIRM)) == R.trade_is_disputed
    assert code(d, act(CMD_EXTEND, arg_id=1, seconds=5)) == R.trade_is_disputed
    assert code(d, act(CMD_AUTO_REFUND)) == R.timer_not_running


def test_no_dispute_once_the_deadline_passed():
    assert code(paid(), act(CMD_OPEN_DISPUTE), T0 + 60 * S) == R.deadline_passed


def test_resolving_splits_the_held_amount_fee_on_the_sellers_part():
    d = commit(commit(paid(), act(CMD_REFUND, arg_id=1, amount=200), T0), act(CMD_OPEN_DISPUTE), T0)
    assert evaluate(d, act(CMD_RESOLVE_DISPUTE, amount=300), None).moves == (
        (MOVE_REFUND, 300), (MOVE_RELEASE, 488), (MOVE_FEE, 12))
    c = commit(d, act(CMD_RESOLVE_DISPUTE, amount=300), T0)
    assert (c.state, c.closed_by, c.refunded, c.released, c.fee, c.held) == (
        CLOSED, CLOSED_BY_DISPUTE_RESOLVED, 500, 488, 12, 0)
    assert code(c, act(CMD_RESOLVE_DISPUTE, amount=300)) == R.exists
    assert code(c, act(CMD_RESOLVE_DISPUTE, amount=1)) == R.exists_with_different_amount


def test_resolving_needs_a_dispute_and_a_split_within_the_held_amount():
    assert code(paid(), act(CMD_RESOLVE_DISPUTE, amount=1)) == R.trade_is_not_disputed
    d = commit(paid(), act(CMD_OPEN_DISPUTE), T0)
    assert code(d, act(CMD_RESOLVE_DISPUTE, amount=1_001)) == R.split_exceeds_held


def test_withdrawing_without_a_dispute_is_refused():
    assert code(paid(), act(CMD_WITHDRAW_DISPUTE)) == R.trade_is_not_disputed


def test_a_full_refund_during_a_dispute_ends_it_refunded():
    d = commit(paid(), act(CMD_OPEN_DISPUTE), T0)
    r = commit(d, act(CMD_REFUND, arg_id=1, amount=1_000), T0)
    assert (r.state, r.state_before_dispute, r.timer_remaining_ns) == (REFUNDED, 0, 0)


# ---- extensions


def test_extending_a_shipped_trade_moves_its_deadline():
    t = shipped()
    e = commit(t, act(CMD_EXTEND, arg_id=5, seconds=30), T0)
    assert (e.deadline, e.extended_s, e.extensions) == (t.deadline + 30 * S, 30, [(5, 30)])
    assert code(e, act(CMD_EXTEND, arg_id=5, seconds=30)) == R.exists
    assert code(e, act(CMD_EXTEND, arg_id=5, seconds=31)) == R.exists_with_different_amount


def test_extensions_are_bounded():
    assert code(paid(), act(CMD_EXTEND, arg_id=1, seconds=0)) == R.extension_out_of_range
    assert code(paid(), act(CMD_EXTEND, arg_id=1, seconds=escrow.EXTENSION_MAX_S + 1)) == R.extension_out_of_range
    assert code(paid(), act(CMD_EXTEND, arg_id=0, seconds=1)) == R.extension_id_must_not_be_zero
    t = paid()
    for i in range(escrow.EXTENSIONS_MAX):
        t = commit(t, act(CMD_EXTEND, arg_id=i + 1, seconds=1), T0)
    assert code(t, act(CMD_EXTEND, arg_id=99, seconds=1)) == R.too_many_extensions
    t = paid()
    for i in range(3):
        t = commit(t, act(CMD_EXTEND, arg_id=i + 1, seconds=escrow.EXTENSION_MAX_S), T0)
    assert code(t, act(CMD_EXTEND, arg_id=9, seconds=1)) == R.too_many_extensions


# ---- timers


def test_ship_by_timer_refunds_everything_held_only_once_due():
    t = commit(paid(), act(CMD_REFUND, arg_id=1, amount=100), T0)
    assert code(t, act(CMD_AUTO_REFUND), t.deadline - 1) == NOT_DUE
    assert evaluate(t, act(CMD_AUTO_REFUND), t.deadline).moves == ((MOVE_REFUND, 900),)
    r = commit(t, act(CMD_AUTO_REFUND), t.deadline)
    assert (r.state, r.closed_by, r.refunded, r.held) == (REFUNDED, CLOSED_BY_SHIP_BY_EXPIRED, 1_000, 0)
    assert code(r, act(CMD_AUTO_REFUND), r.closed_at) == R.exists


def test_auto_confirm_releases_only_once_due():
    t = shipped()
    assert code(t, act(CMD_AUTO_CONFIRM), t.deadline - 1) == NOT_DUE
    s = commit(t, act(CMD_AUTO_CONFIRM), t.deadline)
    assert (s.state, s.closed_by, s.released, s.fee) == (SETTLED, CLOSED_BY_AUTO_CONFIRMED, 975, 25)


def test_a_timer_of_the_other_kind_does_not_fire():
    assert code(shipped(), act(CMD_AUTO_REFUND), T0 + 10_000 * S) == R.timer_not_running
    assert code(paid(), act(CMD_AUTO_CONFIRM), T0 + 10_000 * S) == R.timer_not_running


def test_without_cluster_time_a_planner_treats_timers_as_due_and_deadlines_as_open():
    assert code(paid(), act(CMD_AUTO_REFUND), None) == R.ok
    assert code(paid(), act(CMD_SHIP), None) == R.ok


# ---- transfers and keys


def test_legs_move_money_between_the_trades_slot_accounts_and_the_parties():
    t = shipped()
    cmd = act(CMD_CONFIRM)
    release, fee = legs(t, cmd, evaluate(t, cmd, None), 64)
    slot = slot_of(7, 64)
    assert (release.debit_account_id, release.credit_account_id, release.amount) == (
        escrow_account_id(1, slot, 64), SELLER, 975)
    assert (fee.debit_account_id, fee.credit_account_id, fee.amount) == (
        escrow_account_id(1, slot, 64), fee_account_id(1, slot, 64), 25)
    assert release.flags == 1 and fee.flags == 0  # one linked chain
    assert release.user_data_128 == 7 and release.id != fee.id


def test_the_same_step_always_has_the_same_key_and_transfer_ids():
    t = paid()
    cmd = act(CMD_REFUND, arg_id=3, amount=10)
    first = legs(t, cmd, evaluate(t, cmd, None), 64)
    again = legs(t, cmd, evaluate(t, cmd, None), 64)
    assert first == again and step_key(cmd, 1) == step_key(cmd, 1)


def test_a_key_binds_every_field_of_the_step_and_its_version():
    cmd = act(CMD_REFUND, arg_id=3, amount=10)
    others = [act(CMD_REFUND, arg_id=3, amount=11), act(CMD_REFUND, arg_id=4, amount=10),
              act(CMD_REFUND, trade_id=8, arg_id=3, amount=10)]
    keys = {step_key(cmd, 1), step_key(cmd, 2), *(step_key(o, 1) for o in others)}
    assert len(keys) == 5
    assert step_key(new(), 0) != step_key(TradeCommand(**{**_fields(new()), "buyer_account_id": 12}), 0)


def _fields(c: TradeCommand) -> dict:
    return {name: getattr(c, name) for name in TradeCommand.__slots__}


@pytest.mark.parametrize("slot_count", [4096, 64, 1000, 1])
def test_system_accounts_hash_to_the_slot_they_serve(slot_count):
    for slot in range(0, slot_count, max(1, slot_count // 50)):
        for account_id in (escrow_account_id(9, slot, slot_count), fee_account_id(9, slot, slot_count)):
            assert slot_of(account_id, slot_count) == slot and is_system_account(account_id)
    assert escrow_account_id(9, 0, slot_count) != fee_account_id(9, 0, slot_count)


def test_ordinary_ids_are_not_system_accounts():
    assert not any(is_system_account(i) for i in (1, 2**96, U128_MAX, (0x54425358 << 96) | 5))


# ---- binary forms


def test_trade_round_trips_with_refunds_and_extensions():
    t = commit(commit(shipped(), act(CMD_REFUND, arg_id=2**100, amount=3), T0), act(CMD_EXTEND, arg_id=9,
                                                                                    seconds=4), T0)
    t.user_data_128 = 2**127 + 5
    t.dispute_opened = True
    assert unpack_trade(pack_trade(t)) == t


def test_command_and_trade_step_round_trip():
    c = TradeCommand(CMD_CREATE, 2**127, 2**90, 5, 6, 7, 8, 9, 10, 11, 12, 2**128 - 2, 13, 14)
    assert unpack_command(pack_command(c)) == c
    step = TradeStep(41, c)
    assert unpack_trade_step(pack_trade_step(step)) == step
    with pytest.raises(ValueError):
        unpack_trade_step(pack_trade_step(step)[:-1])


def test_a_truncated_trade_record_is_refused():
    raw = pack_trade(commit(paid(), act(CMD_REFUND, arg_id=1, amount=1), T0))
    with pytest.raises(ValueError):
        unpack_trade(raw[:-1])

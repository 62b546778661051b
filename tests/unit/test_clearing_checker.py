"""The bank test's clearing checker finds each kind of violation it promises to (it must be able to fail).

A consistent view built from a small history (two settled windows and an open one) passes; each test corrupts
one thing and expects the sentence that names it.
"""

from __future__ import annotations

import pytest

from tests.integration.bank_clearing import (
    ClearingHistory,
    ClearingView,
    ItemOp,
    R,
    check_clearing,
    u128,
)
from tidebank.client import Transfer
from tidebank.v1 import types_pb2

A, B, C = 11, 12, 13
ACCOUNTS = {A: 21, B: 22, C: 23}
FUNDS = 1_000
OK, EXCEEDS = R.CLEARING_ITEM_RESULT_OK, R.CLEARING_ITEM_RESULT_EXCEEDS_NET_DEBIT_CAP


def history() -> ClearingHistory:
    h = ClearingHistory(participants=dict(ACCOUNTS), initial_balances=dict.fromkeys(ACCOUNTS.values(), FUNDS))
    h.item_ops = [
        ItemOp([(1, A, B, 100), (2, B, C, 30)], "ok", [OK, OK]),  # window 1: A +100, B -70, C -30
        ItemOp([(3, C, A, 50), (4, A, C, 999)], "ok", [OK, EXCEEDS]),  # window 2: C +50, A -50; item 4 refused
    ]
    return h


def stored(item_id: int, payer: int, payee: int, amount: int, window: int) -> R.ClearingItem:
    return R.ClearingItem(id=u128(item_id), payer_id=u128(payer), payee_id=u128(payee), amount=amount, ledger=8,
                          window=window)


def i128(value: int) -> types_pb2.I128:
    raw = value & ((1 << 128) - 1)
    return types_pb2.I128(hi=raw >> 64, lo=raw & ((1 << 64) - 1))


def net(pid: int, sent: int, received: int, n_sent: int, n_received: int) -> R.NetPosition:
    return R.NetPosition(participant_id=u128(pid), sent=u128(sent), received=u128(received), count_sent=n_sent,
                         count_received=n_received, net=i128(sent - received))


def view() -> ClearingView:
    windows = [
        R.Window(number=1, state=R.WINDOW_STATE_SETTLED, nets=[net(A, 100, 0, 1, 0), net(B, 30, 100, 1, 1),
                                                               net(C, 0, 30, 0, 1)],
                 settlement_transfer_ids=[u128(901), u128(902), u128(903)]),
        R.Window(number=2, state=R.WINDOW_STATE_SETTLED, nets=[net(A, 0, 50, 0, 1), net(C, 50, 0, 1, 0)],
                 settlement_transfer_ids=[u128(904), u128(905)]),
        R.Window(number=3, state=R.WINDOW_STATE_OPEN),
    ]
    moved = {A: 100 - 50, B: -70, C: -30 + 50}
    legs = {ACCOUNTS[A]: [Transfer(id=901, code=9201), Transfer(id=904, code=9202)],
            ACCOUNTS[B]: [Transfer(id=902, code=9202)],
            ACCOUNTS[C]: [Transfer(id=903, code=9202), Transfer(id=905, code=9201)]}
    return ClearingView(
        items={1: stored(1, A, B, 100, 1), 2: stored(2, B, C, 30, 1), 3: stored(3, C, A, 50, 2)},
        windows=windows,
        balances={ACCOUNTS[p]: FUNDS - m for p, m in moved.items()},
        settlement_legs=legs,
        positions=dict.fromkeys(ACCOUNTS, 0),
        book={"net": 0, "allowance": 700, "pool": 300, "cap": 1_000},
    )


def test_consistent_history_and_view_pass():
    assert check_clearing(history(), view()) == []


def test_a_missing_acknowledged_item_is_reported():
    v = view()
    del v.items[3]
    assert any("acknowledged item 3 is missing" in p for p in check_clearing(history(), v))


def test_a_stored_refused_item_is_reported():
    v = view()
    v.items[4] = stored(4, A, C, 999, 2)
    assert any("refused items are stored" in p for p in check_clearing(history(), v))


def test_an_item_counted_in_no_window_netting_is_reported():
    v = view()
    del v.windows[1].nets[:]
    assert any("window 2: nets" in p for p in check_clearing(history(), v))


def test_an_item_counted_twice_is_reported():
    v = view()
    v.windows[0].nets[0].sent.lo = 200
    v.windows[0].nets[0].count_sent = 2
    assert any("window 1: nets" in p for p in check_clearing(history(), v))


def test_nets_that_do_not_sum_to_zero_are_reported():
    v = view()
    v.windows[0].nets[0].net.lo = 101
    assert any("nets sum to 1" in p for p in check_clearing(history(), v))


def test_a_stuck_window_is_reported():
    v = view()
    v.windows[1].state = R.WINDOW_STATE_SETTLING
    assert any("window 2 is stuck" in p for p in check_clearing(history(), v))


def test_a_settlement_account_moved_by_other_than_its_nets_is_reported():
    v = view()
    v.balances[ACCOUNTS[B]] += 1
    assert any(f"participant {B}: settlement account moved" in p for p in check_clearing(history(), v))


def test_a_window_settled_twice_is_reported():
    v = view()
    v.settlement_legs[ACCOUNTS[B]].append(Transfer(id=906, code=9202))
    assert any(f"participant {B}: 2 settlement transfers" in p for p in check_clearing(history(), v))


def test_a_settlement_id_reused_across_windows_is_reported():
    v = view()
    v.windows[1].settlement_transfer_ids[0].lo = 901
    assert any("serves two windows" in p for p in check_clearing(history(), v))


def test_a_position_left_after_settlement_is_reported():
    v = view()
    v.positions[A] = 5
    assert any(f"participant {A}: position 5" in p for p in check_clearing(history(), v))


@pytest.mark.parametrize(("field", "value", "words"), [("net", 3, "positions sum to 3"),
                                                      ("pool", 299, "!= caps 1000")])
def test_a_clearing_book_out_of_balance_is_reported(field, value, words):
    v = view()
    v.book[field] = value
    assert any(words in p for p in check_clearing(history(), v))


def aborted_view() -> ClearingView:
    """The same history with window 2 aborted: its item excluded, nothing settled, its nets zero."""
    v = view()
    v.windows[1] = R.Window(number=2, state=R.WINDOW_STATE_ABORTED, nets=[net(A, 0, 0, 0, 0), net(C, 0, 0, 0, 0)])
    v.items[3].status = R.CLEARING_ITEM_STATUS_ABORTED
    v.balances = {ACCOUNTS[A]: FUNDS - 100, ACCOUNTS[B]: FUNDS + 70, ACCOUNTS[C]: FUNDS + 30}
    v.settlement_legs = {ACCOUNTS[A]: [Transfer(id=901, code=9201)], ACCOUNTS[B]: [Transfer(id=902, code=9202)],
                         ACCOUNTS[C]: [Transfer(id=903, code=9202)]}
    return v


def test_an_aborted_window_with_its_items_excluded_passes():
    assert check_clearing(history(), aborted_view()) == []


def test_an_item_left_accepted_in_an_aborted_window_is_reported():
    v = aborted_view()
    v.items[3].status = R.CLEARING_ITEM_STATUS_ACCEPTED
    assert any("window 2" in p for p in check_clearing(history(), v))


def test_an_item_aborted_in_a_window_not_aborted_is_reported():
    v = view()
    v.items[1].status = R.CLEARING_ITEM_STATUS_ABORTED
    assert any("CLEARING_ITEM_STATUS_ABORTED in window 1, which is not aborted" in p
               for p in check_clearing(history(), v))


def test_an_aborted_window_that_settled_is_reported():
    v = aborted_view()
    v.windows[1].settlement_transfer_ids.append(u128(904))
    assert any("window 2 is aborted but names settlement transfers" in p for p in check_clearing(history(), v))

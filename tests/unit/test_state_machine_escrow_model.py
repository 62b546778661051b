"""Property test: random escrow histories on one shard keep every book, whatever the order of steps.

Each step runs either by 2PC (PREPARE, FINISH) or in one OP_COMMIT_LOCAL entry, as the
coordinator does for steps that touch no other shard.

After every step: debits equal credits; each trade's held money is amount - refunded -
released - fee, never negative, and zero exactly in the terminal states; the escrow and
fee accounts hold exactly what the trades say; the buyer paid what was held and not
refunded, the seller got what was released; no step ever ends in internal_error.
"""

from __future__ import annotations

import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.escrow_harness import EscrowHarness, S, create
from tidebank.node.ledger.results import TradeResult
from tidebank.node.ledger.trades import (
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
    TERMINAL,
    TradeCommand,
)

BUYER, SELLER = 101, 202
BALANCE = 5_000
TRADES = [7_000, 7_001, 7_002]
KINDS = [CMD_CREATE, CMD_SHIP, CMD_CONFIRM, CMD_REFUND, CMD_OPEN_DISPUTE, CMD_WITHDRAW_DISPUTE,
         CMD_RESOLVE_DISPUTE, CMD_EXTEND, CMD_AUTO_REFUND, CMD_AUTO_CONFIRM]

step = st.tuples(st.sampled_from(KINDS), st.sampled_from(TRADES), st.integers(0, 1_200), st.integers(0, 3),
                 st.integers(0, 40), st.booleans())
# Every trade is created first (so most later steps find a trade), then anything goes.
steps = st.builds(lambda amounts, rest: [(CMD_CREATE, t, a, 0, 0, False)
                                         for t, a in zip(TRADES, amounts, strict=True)]
                  + rest,
                  st.lists(st.integers(1, 1_200), min_size=len(TRADES), max_size=len(TRADES)),
                  st.lists(step, max_size=40))


def command(kind: int, trade_id: int, amount: int, small_id: int) -> TradeCommand:
    if kind == CMD_CREATE:
        return create(trade_id, BUYER, SELLER, max(1, amount), fee_bps=275, ship_by_s=60, auto_confirm_s=90)
    if kind == CMD_REFUND:
        return TradeCommand(kind, trade_id, arg_id=small_id + 1, amount=max(1, amount // 4))
    if kind == CMD_RESOLVE_DISPUTE:
        return TradeCommand(kind, trade_id, amount=amount // 3)
    if kind == CMD_EXTEND:
        return TradeCommand(kind, trade_id, arg_id=small_id + 1, seconds=30)
    return TradeCommand(kind, trade_id)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=steps)
def test_random_escrow_histories_keep_every_book(history):
    with tempfile.TemporaryDirectory() as tmp:
        h = EscrowHarness(f"{tmp}/db")
        try:
            h.open(BUYER, balance=BALANCE)
            h.open(SELLER, flags=0)
            for kind, trade_id, amount, small_id, advance_s, local in history:
                h.now += advance_s * S
                code, _ = h.step(command(kind, trade_id, amount, small_id), local=local)
                assert code not in (TradeResult.internal_error,), (kind, trade_id)
                if code == -1:  # busy: only a timer that is not due yet may say so here
                    assert kind in (CMD_AUTO_REFUND, CMD_AUTO_CONFIRM)
                check(h)
        finally:
            h.close()


def check(h: EscrowHarness) -> None:
    assert h.conserved()
    trades = [t for t in (h.trade(i) for i in TRADES) if t is not None]
    for t in trades:
        assert t.held == t.amount - t.refunded - t.released - t.fee >= 0
        assert (t.state in TERMINAL) == (t.held == 0)
    for totals in h.escrow_totals().values():
        assert totals["held"] == totals["escrow_balance"] == sum(t.held for t in trades)
        assert totals["fees"] == totals["fee_balance"] == sum(t.fee for t in trades)
    assert h.net(BUYER) - BALANCE == -sum(t.amount - t.refunded for t in trades)
    assert h.net(SELLER) == sum(t.released for t in trades)

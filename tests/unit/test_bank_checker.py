"""The bank test's checker finds each kind of violation it promises to (it must be able to fail).

An in-memory ledger built from a history stands in for the cluster here, to feed
the checker consistent and deliberately corrupted states.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from tests.integration.bank import (
    CODE_FEE,
    CODE_HOLD,
    CODE_REFUND,
    CODE_RELEASE,
    LEDGER,
    Bank,
    History,
    Op,
    TradeOp,
    check,
)
from tidebank.client import (
    Account,
    CreateTransferResult,
    NewTrade,
    Page,
    Refund,
    Trade,
    TradeClosedBy,
    TradeState,
    Transfer,
    TransferFlags,
)


@dataclass
class LedgerView:
    accounts: dict[int, Account]
    transfers: dict[int, Transfer]
    history: dict[int, list[Transfer]] = field(default_factory=dict)

    def lookup_accounts(self, ids, **_):
        return [self.accounts[i] for i in ids if i in self.accounts]

    def lookup_transfers(self, ids, **_):
        return [self.transfers[i] for i in ids if i in self.transfers]

    def get_account_transfers(self, account_id, **_):
        return Page(items=list(self.history.get(account_id, [])), next_page_token="")


def applied_ledger(mint: int, accounts: list[int], ops: list[Op]) -> LedgerView:
    view = LedgerView({a: Account(id=a, ledger=LEDGER, code=1) for a in [mint, *accounts]}, {})
    pending: dict[int, Transfer] = {}
    for op in ops:
        if op.outcome != "ok":
            continue
        for t in op.transfers:
            view.transfers[t.id] = t
            view.history.setdefault(t.debit_account_id, []).append(t)
            view.history.setdefault(t.credit_account_id, []).append(t)
            debit, credit = view.accounts[t.debit_account_id], view.accounts[t.credit_account_id]
            if t.flags & TransferFlags.PENDING:
                pending[t.id] = t
                debit.debits_pending += t.amount
                credit.credits_pending += t.amount
            elif t.flags & (TransferFlags.POST_PENDING_TRANSFER | TransferFlags.VOID_PENDING_TRANSFER):
                held = pending.pop(t.pending_id)
                debit.debits_pending -= held.amount
                credit.credits_pending -= held.amount
                if t.flags & TransferFlags.POST_PENDING_TRANSFER:
                    debit.debits_posted += t.amount
                    credit.credits_posted += t.amount
            else:
                debit.debits_posted += t.amount
                credit.credits_posted += t.amount
    return view


def make_bank() -> tuple[Bank, LedgerView]:
    bank = Bank.__new__(Bank)
    bank.mint, bank.accounts, bank.history, bank.seed = 1, [10, 11, 12], History(), 0
    ops = [Op("single", [Transfer(id=100 + a, debit_account_id=1, credit_account_id=a, amount=1000,
                                  ledger=LEDGER, code=1)], "ok", [0]) for a in (10, 11, 12)]
    ops += [Op("single", [Transfer(id=200, debit_account_id=10, credit_account_id=11, amount=30, ledger=LEDGER,
                                   code=1)], "ok", [0]),
            Op("chain", [Transfer(id=201, debit_account_id=11, credit_account_id=12, amount=5, ledger=LEDGER, code=1,
                                  flags=TransferFlags.LINKED),
                         Transfer(id=202, debit_account_id=12, credit_account_id=10, amount=9, ledger=LEDGER,
                                  code=1)], "failed", [1, int(CreateTransferResult.exceeds_credits)]),
            Op("pending", [Transfer(id=203, debit_account_id=12, credit_account_id=10, amount=50, ledger=LEDGER,
                                    code=1, flags=TransferFlags.PENDING)], "ok", [0]),
            Op("post", [Transfer(id=204, debit_account_id=12, credit_account_id=10, amount=20, pending_id=203,
                                 ledger=LEDGER, code=1, flags=TransferFlags.POST_PENDING_TRANSFER)], "ok", [0]),
            Op("pending", [Transfer(id=205, debit_account_id=11, credit_account_id=12, amount=7, ledger=LEDGER,
                                    code=1, flags=TransferFlags.PENDING)], "ok", [0])]
    bank.history.ops = ops
    view = applied_ledger(bank.mint, bank.accounts, ops)
    bank.client = view
    return bank, view


def test_a_consistent_ledger_passes():
    bank, _ = make_bank()
    assert check(bank) == []


def test_a_lost_acknowledged_transfer_is_reported():
    bank, view = make_bank()
    del view.transfers[200]
    assert any("acknowledged transfers missing" in p for p in check(bank))


def test_a_transfer_applied_twice_on_one_leg_is_reported():
    bank, view = make_bank()
    view.history[11].append(view.transfers[200])
    assert any("appears twice" in p for p in check(bank))


def test_a_refused_transfer_that_was_applied_is_reported():
    bank, view = make_bank()
    view.transfers[202] = bank.history.ops[4].transfers[1]
    assert any("refused transfers were applied" in p for p in check(bank))


def test_balances_that_differ_from_the_replay_are_reported():
    bank, view = make_bank()
    view.accounts[12] = replace(view.accounts[12], credits_posted=view.accounts[12].credits_posted + 1)
    problems = check(bank)
    assert any("!= replay" in p for p in problems)
    assert any("money not conserved" in p for p in problems)


def test_a_hold_left_behind_is_reported():
    bank, view = make_bank()
    view.accounts[12] = replace(view.accounts[12], debits_pending=view.accounts[12].debits_pending + 50)
    assert any("!= replay" in p for p in check(bank))


def test_a_limit_violation_seen_by_a_reader_is_reported():
    bank, _ = make_bank()
    bank.history.limit_violations.append("account 10: debits 0+2000 > credits 1000")
    assert check(bank) == ["account 10: debits 0+2000 > credits 1000"]


# ---- escrow trades


ESCROW, FEE = 900, 901


def make_bank_with_trade() -> tuple[Bank, LedgerView]:
    """make_bank plus one trade from 10 to 11: 100 held, 20 refunded, 80 released less a 2 fee."""
    bank, view = make_bank()
    view.trades = {}
    view.lookup_trades = lambda ids, **_: [view.trades[i] for i in ids if i in view.trades]
    view.accounts[ESCROW] = Account(id=ESCROW, ledger=LEDGER, code=9001)
    view.accounts[FEE] = Account(id=FEE, ledger=LEDGER, code=9002)
    legs = [Transfer(id=300, debit_account_id=10, credit_account_id=ESCROW, amount=100, code=CODE_HOLD),
            Transfer(id=301, debit_account_id=ESCROW, credit_account_id=10, amount=20, code=CODE_REFUND),
            Transfer(id=302, debit_account_id=ESCROW, credit_account_id=11, amount=78, code=CODE_RELEASE),
            Transfer(id=303, debit_account_id=ESCROW, credit_account_id=FEE, amount=2, code=CODE_FEE)]
    for t in legs:
        t.user_data_128, t.ledger = 77, LEDGER
        view.history.setdefault(t.debit_account_id, []).append(t)
        view.history.setdefault(t.credit_account_id, []).append(t)
        debit, credit = view.accounts[t.debit_account_id], view.accounts[t.credit_account_id]
        debit.debits_posted += t.amount
        credit.credits_posted += t.amount
    view.trades[77] = Trade(id=77, buyer_account_id=10, seller_account_id=11, amount=100, ledger=LEDGER, fee_bps=250,
                            state=TradeState.SETTLED, closed_by=TradeClosedBy.BUYER_CONFIRMED, held=0, refunded=20,
                            released=78, fee=2, refunds=[(5, 20)], shipped_at=1, escrow_account_id=ESCROW,
                            fee_account_id=FEE)
    spec = NewTrade(77, 10, 11, 100, LEDGER, fee_bps=250, ship_by_timeout_s=5, auto_confirm_timeout_s=5)
    bank.history.trade_ops = [TradeOp("create", 77, spec, "ok", 0), TradeOp("refund", 77, Refund(77, 5, 20), "ok", 0),
                              TradeOp("confirm", 77, 77, "ok", 0)]
    return bank, view


def test_a_consistent_ledger_with_a_trade_passes():
    bank, _ = make_bank_with_trade()
    assert check(bank) == []


def test_a_lost_acknowledged_trade_is_reported():
    bank, view = make_bank_with_trade()
    del view.trades[77]
    assert any("acknowledged trades missing" in p for p in check(bank))


def test_a_refused_trade_that_exists_is_reported():
    bank, view = make_bank_with_trade()
    bank.history.trade_ops[0] = replace(bank.history.trade_ops[0], outcome="failed", code=41)
    assert any("refused trades exist" in p for p in check(bank))


def test_a_trade_whose_book_differs_from_its_legs_is_reported():
    bank, view = make_bank_with_trade()
    view.trades[77] = replace(view.trades[77], refunded=21, released=77)
    problems = check(bank)
    assert any("legs in the parties' histories" in p for p in problems)


def test_a_terminal_trade_still_holding_money_is_reported():
    bank, view = make_bank_with_trade()
    view.trades[77] = replace(view.trades[77], held=5, released=73)
    assert any("SETTLED with 5 held" in p for p in check(bank))


def test_escrow_accounts_that_do_not_hold_what_the_trades_say_are_reported():
    bank, view = make_bank_with_trade()
    view.accounts[ESCROW] = replace(view.accounts[ESCROW], credits_posted=view.accounts[ESCROW].credits_posted + 3)
    assert any("escrow accounts hold 3" in p for p in check(bank))


def test_an_acknowledged_refund_missing_from_its_trade_is_reported():
    bank, view = make_bank_with_trade()
    view.trades[77] = replace(view.trades[77], refunds=[])
    assert any("acknowledged refund 5" in p for p in check(bank))

"""Drive escrow steps through a real LedgerStateMachine on LMDB, as the escrow coordinator would.

Every account lives in the one LMDB here, so every leg is SIDE_BOTH; the 2PC steps
(PREPARE with the trade step, DECIDE, FINISH) are applied exactly as on a trade's
shard. Cluster time is explicit: each step takes `at_ns`.
"""

from __future__ import annotations

import lmdb

from tidebank.node.ledger import escrow
from tidebank.node.ledger.operations import (
    OP_COMMIT_LOCAL,
    OP_CREATE_ACCOUNTS,
    OP_CREATE_TRANSFERS,
    OP_FINISH,
    OP_PREPARE,
    Operation,
)
from tidebank.node.ledger.records import Account, AccountFlags, Transfer
from tidebank.node.ledger.results import TradeResult
from tidebank.node.ledger.state_machine import LedgerStateMachine
from tidebank.node.ledger.trades import TRADE_STEP_INDEX, Trade, TradeCommand, TradeStep
from tidebank.node.ledger.txn_records import SIDE_BOTH, Finish, Leg, Prepare, Vote
from tidebank.node.txn.coordinator import attempt_key

SLOTS = 64
LEDGER = 1
MINT = 1_000
S = 1_000_000_000  # ns per second


class EscrowHarness:
    def __init__(self, path, slot_count: int = SLOTS):
        self.env = lmdb.open(str(path), max_dbs=64, map_size=1 << 28, sync=False)
        self.sm = LedgerStateMachine(self.env, slot_count=slot_count)
        self.slot_count = slot_count
        self.now = 1_000 * S
        self.next_transfer_id = 1 << 64
        self.aborted_attempts: dict[int, int] = {}  # step key -> attempts aborted so far (as the coordinator counts)
        self.apply(OP_CREATE_ACCOUNTS, [Account(id=MINT, ledger=LEDGER, code=1)])

    def close(self) -> None:
        self.env.close()

    def apply(self, kind: int, items: list, at_ns: int | None = None) -> list:
        with self.env.begin(write=True) as txn:
            (results,) = self.sm.apply(txn, [Operation(kind, items)], self.now if at_ns is None else at_ns)
        return results

    # --- accounts and money
    def open(self, account_id: int, *, balance: int = 0, flags: int = AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS,
             ledger: int = LEDGER) -> int:
        assert self.apply(OP_CREATE_ACCOUNTS, [Account(id=account_id, ledger=ledger, code=1, flags=flags)]) == [0]
        if balance:
            self.next_transfer_id += 1
            assert self.apply(OP_CREATE_TRANSFERS, [Transfer(
                id=self.next_transfer_id, debit_account_id=MINT, credit_account_id=account_id, amount=balance,
                ledger=ledger, code=1)]) == [0]
        return account_id

    def account(self, account_id: int) -> Account | None:
        with self.env.begin() as txn:
            found = self.sm.lookup_accounts(txn, [account_id])
        return found[0] if found else None

    def net(self, account_id: int) -> int:
        """credits_posted - debits_posted (0 for an account that does not exist)."""
        a = self.account(account_id)
        return 0 if a is None else a.credits_posted - a.debits_posted

    def system_accounts(self, trade_id: int, ledger: int = LEDGER) -> tuple[int, int]:
        return escrow.system_accounts(trade_id, ledger, self.slot_count)

    def trade(self, trade_id: int) -> Trade | None:
        with self.env.begin() as txn:
            found = self.sm.lookup_trades(txn, [trade_id])
        return found[0] if found else None

    def escrow_totals(self) -> dict:
        with self.env.begin() as txn:
            return self.sm.escrow_totals(txn)

    def ledger_totals(self) -> dict:
        with self.env.begin() as txn:
            return self.sm.ledger_totals(txn)

    # --- escrow steps
    def plan(self, cmd: TradeCommand) -> tuple[int, Prepare | None]:
        """(code, PREPARE) as the coordinator plans it: code is the rules' verdict without cluster time."""
        trade = self.trade(cmd.trade_id)
        verdict = escrow.evaluate(trade, cmd, None)
        if verdict.code != escrow.OK:
            return verdict.code, None
        version = 0 if trade is None else trade.version
        legs = escrow.legs(trade, cmd, verdict, self.slot_count)
        step = escrow.step_key(cmd, version)
        key = attempt_key(step, self.aborted_attempts.get(step, 0))  # an aborted attempt's key is never reused
        return escrow.OK, Prepare(key, 0, len(legs), [Leg(i, SIDE_BOTH, t) for i, t in enumerate(legs)],
                                  TradeStep(version, cmd))

    def abort(self, prepare: Prepare, at_ns: int | None = None) -> int:
        """FINISH(abort) of a PREPARE, counting the attempt as the coordinator does."""
        step = escrow.step_key(prepare.trade.command, prepare.trade.expected_version)
        self.aborted_attempts[step] = self.aborted_attempts.get(step, 0) + 1
        return self.finish(prepare.txid, False, at_ns)

    def prepare(self, prepare: Prepare, at_ns: int | None = None) -> Vote:
        (vote,) = self.apply(OP_PREPARE, [prepare], at_ns)
        return vote

    def commit_local(self, prepare: Prepare, at_ns: int | None = None) -> Vote:
        """The one-entry path of a step that touches no other shard (OP_COMMIT_LOCAL)."""
        (vote,) = self.apply(OP_COMMIT_LOCAL, [prepare], at_ns)
        return vote

    def finish(self, key: int, commit: bool, at_ns: int | None = None) -> int:
        at = self.now if at_ns is None else at_ns
        (status,) = self.apply(OP_FINISH, [Finish(key, commit, at)], at)
        return status

    def step(self, cmd: TradeCommand, at_ns: int | None = None, *, local: bool = False) -> tuple[int, int]:
        """Run one step end to end, by 2PC (PREPARE, FINISH) or in one OP_COMMIT_LOCAL entry: (TradeResult
        code, CreateTransferResult code of a failed leg or 0); code -1 when the trade's shard voted busy."""
        code, prepare = self.plan(cmd)
        if prepare is None:
            return code, 0
        vote = self.commit_local(prepare, at_ns) if local else self.prepare(prepare, at_ns)
        if not vote.prepared:
            if not local:
                self.abort(prepare, at_ns)
            if vote.failed_index == TRADE_STEP_INDEX:
                return (vote.code if vote.code else -1), 0  # -1: busy (re-plan)
            return int(TradeResult.transfer_failed), vote.code
        if not local:
            self.finish(prepare.txid, True, at_ns)
        return escrow.OK, 0

    def conserved(self) -> bool:
        totals = self.ledger_totals()
        return all(t["debits_posted"] == t["credits_posted"] and t["debits_pending"] == t["credits_pending"]
                   for t in totals.values())


def create(trade_id: int, buyer: int, seller: int, amount: int, *, fee_bps: int = 0, ship_by_s: int = 60,
           auto_confirm_s: int = 120, ledger: int = LEDGER, **extra) -> TradeCommand:
    from tidebank.node.ledger.trades import CMD_CREATE

    return TradeCommand(CMD_CREATE, trade_id, amount=amount, buyer_account_id=buyer, seller_account_id=seller,
                        ledger=ledger, fee_bps=fee_bps, ship_by_timeout_s=ship_by_s,
                        auto_confirm_timeout_s=auto_confirm_s, **extra)

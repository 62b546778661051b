"""The ledger state machine: every ledger rule, as a pure function of an LMDB write txn.

Every replica runs `LedgerStateMachine.apply` on the same Raft entries and must end
in the same state, so nothing here reads a clock, draws randomness or does I/O other
than through the txn it is given; time comes in as `timestamp_ns` (the leader's
cluster timestamp stamped on the entry). `apply` never raises: a bug or a broken
invariant rolls back the operation it happened in and becomes `internal_error`
results, because an exception on the Raft thread would stop the replica.

Semantics follow TigerBeetle (double entry, client-chosen ids as idempotency keys,
linked chains, pending/post/void, balancing transfers) with u64 amounts and balances.

LMDB layout (all keys big-endian so LMDB order is numeric order):

=========================  ==========================================  ==================================
db                         key                                         value
=========================  ==========================================  ==================================
ledger_accounts            id (16)                                     packed Account
ledger_transfers           id (16)                                     packed Transfer
ledger_account_transfers   account id (16) + timestamp (8)             side (1: 0 debit, 1 credit) + transfer id (16)
ledger_pending             pending transfer id (16)                    status (1) + amount (8, LE)
ledger_expiry              expires_at ns (8) + pending transfer id (16)  empty
ledger_failed              transfer id (16)                            result code (1)
ledger_meta                b"last_timestamp"                           u64 LE
ledger_totals              ledger (4)                                  4 x u128 LE (dp, dpost, cp, cpost)
=========================  ==========================================  ==================================
"""

from __future__ import annotations

import functools
import logging
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import lmdb

from tidebank.node.records import (
    BATCH_ITEMS_MAX,
    PAGE_SIZE_MAX,
    U64_MAX,
    U128_MAX,
    Account,
    AccountFlags,
    Transfer,
    TransferFlags,
    pack_account,
    pack_transfer,
    unpack_account,
    unpack_transfer,
)
from tidebank.node.results import CreateAccountResult, CreateTransferResult

__all__ = [
    "EXPIRE_PER_APPLY_MAX",
    "OP_CREATE_ACCOUNTS",
    "OP_CREATE_TRANSFERS",
    "LedgerStateMachine",
    "Operation",
]

log = logging.getLogger(__name__)

OP_CREATE_ACCOUNTS = 1
OP_CREATE_TRANSFERS = 2
EXPIRE_PER_APPLY_MAX = 512
NS_PER_SECOND = 1_000_000_000


@dataclass(frozen=True, slots=True)
class Operation:
    """One client batch inside a Raft entry: all accounts or all transfers."""

    kind: int  # OP_CREATE_ACCOUNTS | OP_CREATE_TRANSFERS
    items: Sequence[Account] | Sequence[Transfer]


# Pending-transfer status (ledger_pending).
STATUS_PENDING = 1
STATUS_POSTED = 2
STATUS_VOIDED = 3
STATUS_EXPIRED = 4

_STATUS = struct.Struct("<BQ")
_U64 = struct.Struct("<Q")
_TOTALS = struct.Struct("<8Q")
_SIDE_DEBIT = b"\x00"
_SIDE_CREDIT = b"\x01"
_META_LAST_TIMESTAMP = b"last_timestamp"
_ZERO_TOTALS = _TOTALS.pack(0, 0, 0, 0, 0, 0, 0, 0)

# Flags as plain ints: enum attribute access is measurably slow on the hot path.
_A_LINKED = int(AccountFlags.LINKED)
_A_DMNEC = int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)
_A_CMNED = int(AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS)
_A_CLOSED = int(AccountFlags.CLOSED)
_A_KNOWN = int(
    AccountFlags.LINKED
    | AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
    | AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS
    | AccountFlags.HISTORY
    | AccountFlags.CLOSED
)
_T_LINKED = int(TransferFlags.LINKED)
_T_PENDING = int(TransferFlags.PENDING)
_T_POST = int(TransferFlags.POST_PENDING_TRANSFER)
_T_VOID = int(TransferFlags.VOID_PENDING_TRANSFER)
_T_BAL_D = int(TransferFlags.BALANCING_DEBIT)
_T_BAL_C = int(TransferFlags.BALANCING_CREDIT)
_T_POST_VOID = _T_POST | _T_VOID
_T_BALANCING = _T_BAL_D | _T_BAL_C
_T_KNOWN = _T_LINKED | _T_PENDING | _T_POST | _T_VOID | _T_BAL_D | _T_BAL_C

_AR = CreateAccountResult
_TR = CreateTransferResult
A_OK = int(_AR.created)
T_OK = int(_TR.created)

# Transfer failures that depend on ledger state (not on the request alone): recorded in
# ledger_failed so that retrying the id can never change the outcome.
_TRANSFER_STATE_FAILURES = frozenset(
    int(c)
    for c in (
        _TR.debit_account_not_found,
        _TR.credit_account_not_found,
        _TR.accounts_must_have_the_same_ledger,
        _TR.transfer_must_have_the_same_ledger_as_accounts,
        _TR.pending_transfer_not_found,
        _TR.pending_transfer_not_pending,
        _TR.pending_transfer_has_different_debit_account_id,
        _TR.pending_transfer_has_different_credit_account_id,
        _TR.pending_transfer_has_different_ledger,
        _TR.pending_transfer_has_different_code,
        _TR.exceeds_pending_transfer_amount,
        _TR.pending_transfer_has_different_amount,
        _TR.pending_transfer_already_posted,
        _TR.pending_transfer_already_voided,
        _TR.pending_transfer_expired,
        _TR.overflows_debits_pending,
        _TR.overflows_credits_pending,
        _TR.overflows_debits_posted,
        _TR.overflows_credits_posted,
        _TR.overflows_debits,
        _TR.overflows_credits,
        _TR.overflows_timeout,
        _TR.exceeds_credits,
        _TR.exceeds_debits,
        _TR.debit_account_already_closed,
        _TR.credit_account_already_closed,
    )
)


def _key(value: int) -> bytes:
    return value.to_bytes(16, "big")


class InvariantViolation(AssertionError):
    """A ledger invariant does not hold after an operation: a bug, never user error."""


class _Context:
    """Per-operation scratch state: cached accounts and the timestamp counter.

    Accounts touched by an operation are unpacked once, mutated in place and written
    back once at the end (`_flush`). Within a linked chain, `undo` remembers the
    balances each account had when the chain started so a failed chain can restore
    them (the chain's LMDB writes are undone by aborting its nested txn).
    """

    __slots__ = ("accounts", "original", "dirty", "undo", "next_ts", "base")

    def __init__(self, base: int, next_ts: int) -> None:
        self.accounts: dict[int, Account] = {}
        self.original: dict[int, tuple[int, int, int, int]] = {}
        self.dirty: set[int] = set()
        self.undo: dict[int, tuple[int, int, int, int]] | None = None
        self.next_ts = next_ts
        self.base = base


class LedgerStateMachine:
    """Deterministic ledger rules over the "ledger_*" named dbs of one shard's LMDB env."""

    DB_NAMES: tuple[str, ...] = (
        "ledger_accounts",
        "ledger_transfers",
        "ledger_account_transfers",
        "ledger_pending",
        "ledger_expiry",
        "ledger_failed",
        "ledger_meta",
        "ledger_totals",
    )

    def __init__(self, env: lmdb.Environment, *, txn: lmdb.Transaction | None = None) -> None:
        """Open (creating if needed) the named dbs; pass `txn` if a write txn is already open."""
        if env.flags().get("writemap"):
            # Linked chains and per-operation rollback use nested txns, which LMDB
            # does not support with MDB_WRITEMAP; fail at startup, not on every apply.
            raise ValueError("LedgerStateMachine needs an LMDB env opened without writemap")
        self._env = env
        dbs = {name: env.open_db(name.encode(), txn=txn, create=True) for name in self.DB_NAMES}
        self._accounts = dbs["ledger_accounts"]
        self._transfers = dbs["ledger_transfers"]
        self._account_transfers = dbs["ledger_account_transfers"]
        self._pending = dbs["ledger_pending"]
        self._expiry = dbs["ledger_expiry"]
        self._failed = dbs["ledger_failed"]
        self._meta = dbs["ledger_meta"]
        self._totals = dbs["ledger_totals"]

    # ------------------------------------------------------------------ apply

    def apply(self, txn: lmdb.Transaction, operations: Sequence[Operation], timestamp_ns: int) -> list[list[int]]:
        """One Raft entry: the operations in order, each list of per-item result codes in order.

        Never raises. A failure inside one operation rolls that operation back and
        reports internal_error for each of its items; the others still apply.
        """
        try:
            child = self._env.begin(write=True, parent=txn)
        except Exception:
            log.critical("cannot begin a nested txn: whole entry rejected", exc_info=True)
            return _all_internal_error(operations)
        try:
            results = self._apply(child, operations, timestamp_ns)
        except Exception:
            child.abort()
            log.critical("ledger apply failed outside any operation: whole entry rolled back", exc_info=True)
            return _all_internal_error(operations)
        child.commit()
        return results

    def _apply(self, txn: lmdb.Transaction, operations: Sequence[Operation], timestamp_ns: int) -> list[list[int]]:
        last = self._last_timestamp(txn)
        base = max(timestamp_ns, last + 1)
        if base > U64_MAX:
            raise InvariantViolation(f"cluster time overflows u64: {base}")
        self._run_guarded(txn, "expiry sweep", functools.partial(self._expire, ctx=_Context(base, base)))
        next_ts = base
        results: list[list[int]] = []
        for op in operations:
            ctx = _Context(base, next_ts)
            if op.kind == OP_CREATE_TRANSFERS:
                fn = functools.partial(self._create_transfers, items=op.items, ctx=ctx)
                error = int(_TR.internal_error)
            elif op.kind == OP_CREATE_ACCOUNTS:
                fn = functools.partial(self._create_accounts, items=op.items, ctx=ctx)
                error = int(_AR.internal_error)
            else:
                log.critical("unknown operation kind %r: its %d items rejected", op.kind, len(op.items))
                results.append([int(_TR.internal_error)] * len(op.items))
                continue
            codes = self._run_guarded(txn, "operation", fn)
            if codes is None:
                codes = [error] * len(op.items)
            else:
                next_ts = ctx.next_ts
            results.append(codes)
        # Cluster time never goes backwards, even when this entry created nothing.
        txn.put(_META_LAST_TIMESTAMP, _U64.pack(max(base, next_ts - 1)), db=self._meta)
        return results

    def _run_guarded(self, txn: lmdb.Transaction, what: str, fn: Callable[[lmdb.Transaction], Any]) -> Any:
        """Run fn in a nested txn; on any exception roll it back, log, and return None."""
        child = self._env.begin(write=True, parent=txn)
        try:
            out = fn(child)
        except Exception:
            child.abort()
            log.critical("ledger %s failed and was rolled back", what, exc_info=True)
            return None
        child.commit()
        return out

    def _run_chains(
        self,
        txn: lmdb.Transaction,
        items: Sequence,
        ctx: _Context,
        create: Callable[[lmdb.Transaction, object, _Context], int],
        linked_failed: int,
        chain_open: int,
        record_failure: Callable[[lmdb.Transaction, object, int], None] | None,
    ) -> list[int]:
        """Apply items one by one; consecutive LINKED items succeed or fail as one."""
        n = len(items)
        if n > BATCH_ITEMS_MAX:
            raise InvariantViolation(f"operation of {n} items exceeds BATCH_ITEMS_MAX")
        results = [0] * n
        i = 0
        while i < n:
            item = items[i]
            if not item.flags & 1:  # LINKED is bit 0 for both accounts and transfers
                code = create(txn, item, ctx)
                if code:
                    results[i] = code
                    if record_failure is not None:
                        record_failure(txn, item, code)
                i += 1
                continue
            j = i
            while j < n and items[j].flags & 1:
                j += 1
            if j == n:  # the batch ends inside the chain: nothing of it runs
                for k in range(i, n - 1):
                    results[k] = linked_failed
                results[n - 1] = chain_open
                break
            # Chain is items[i..j] inclusive.
            child = self._env.begin(write=True, parent=txn)
            ctx.undo = {}
            saved_ts = ctx.next_ts
            failed_at = -1
            code = 0
            try:
                for k in range(i, j + 1):
                    code = create(child, items[k], ctx)
                    if code:
                        failed_at = k
                        break
            except BaseException:
                child.abort()
                raise
            if failed_at < 0:
                child.commit()
            else:
                child.abort()
                for acct_id, (dp, dpo, cp, cpo) in ctx.undo.items():
                    a = ctx.accounts[acct_id]
                    a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted = dp, dpo, cp, cpo
                ctx.next_ts = saved_ts
                for k in range(i, j + 1):
                    results[k] = linked_failed
                results[failed_at] = code
                if record_failure is not None:
                    record_failure(txn, items[failed_at], code)
            ctx.undo = None
            i = j + 1
        return results

    # --------------------------------------------------------------- accounts

    def _create_accounts(self, txn: lmdb.Transaction, items: Sequence[Account], ctx: _Context) -> list[int]:
        return self._run_chains(
            txn,
            items,
            ctx,
            self._create_account,
            int(_AR.linked_event_failed),
            int(_AR.linked_event_chain_open),
            None,
        )

    def _create_account(self, txn: lmdb.Transaction, a: Account, ctx: _Context) -> int:
        if a.timestamp:
            return _AR.timestamp_must_be_zero
        flags = a.flags
        if flags & ~_A_KNOWN:
            return _AR.reserved_flag
        aid = a.id
        if aid == 0:
            return _AR.id_must_not_be_zero
        if aid == U128_MAX:
            return _AR.id_must_not_be_int_max
        if flags & _A_DMNEC and flags & _A_CMNED:
            return _AR.flags_are_mutually_exclusive
        if a.debits_pending:
            return _AR.debits_pending_must_be_zero
        if a.debits_posted:
            return _AR.debits_posted_must_be_zero
        if a.credits_pending:
            return _AR.credits_pending_must_be_zero
        if a.credits_posted:
            return _AR.credits_posted_must_be_zero
        if a.ledger == 0:
            return _AR.ledger_must_not_be_zero
        if a.code == 0:
            return _AR.code_must_not_be_zero
        key = _key(aid)
        raw = txn.get(key, db=self._accounts)
        if raw is not None:
            e = unpack_account(raw)
            if (e.flags ^ flags) & ~_A_LINKED:
                return _AR.exists_with_different_flags
            if e.user_data_128 != a.user_data_128:
                return _AR.exists_with_different_user_data_128
            if e.user_data_64 != a.user_data_64:
                return _AR.exists_with_different_user_data_64
            if e.user_data_32 != a.user_data_32:
                return _AR.exists_with_different_user_data_32
            if e.ledger != a.ledger:
                return _AR.exists_with_different_ledger
            if e.code != a.code:
                return _AR.exists_with_different_code
            return _AR.exists
        ts = ctx.next_ts
        record = Account(
            aid,
            user_data_128=a.user_data_128,
            user_data_64=a.user_data_64,
            user_data_32=a.user_data_32,
            ledger=a.ledger,
            code=a.code,
            flags=flags,
            timestamp=ts,
        )
        txn.put(key, pack_account(record), db=self._accounts)
        # Every ledger with an account shows up in ledger_totals, even before money moves.
        txn.put(a.ledger.to_bytes(4, "big"), _ZERO_TOTALS, db=self._totals, overwrite=False)
        ctx.next_ts = ts + 1
        return A_OK

    # -------------------------------------------------------------- transfers

    def _create_transfers(self, txn: lmdb.Transaction, items: Sequence[Transfer], ctx: _Context) -> list[int]:
        results = self._run_chains(
            txn,
            items,
            ctx,
            self._create_transfer,
            int(_TR.linked_event_failed),
            int(_TR.linked_event_chain_open),
            self._record_failure,
        )
        self._flush(txn, ctx)
        return results

    def _record_failure(self, txn: lmdb.Transaction, t: Transfer, code: int) -> None:
        if code in _TRANSFER_STATE_FAILURES:
            txn.put(_key(t.id), bytes((code,)), db=self._failed)

    def _account(self, txn: lmdb.Transaction, account_id: int, ctx: _Context) -> Account | None:
        """The account from the operation's cache, loading it on first use."""
        a = ctx.accounts.get(account_id)
        if a is None:
            raw = txn.get(_key(account_id), db=self._accounts)
            if raw is None:
                return None
            a = unpack_account(raw)
            ctx.accounts[account_id] = a
            ctx.original[account_id] = (a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted)
        return a

    def _touch(self, a: Account, ctx: _Context) -> None:
        """Mark an account about to change: written back at flush, restorable within a chain."""
        undo = ctx.undo
        if undo is not None and a.id not in undo:
            undo[a.id] = (a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted)
        ctx.dirty.add(a.id)

    def _create_transfer(self, txn: lmdb.Transaction, t: Transfer, ctx: _Context) -> int:
        # ---- checks on the request alone (not recorded as failed ids)
        if t.timestamp:
            return _TR.timestamp_must_be_zero
        flags = t.flags
        if flags & ~_T_KNOWN:
            return _TR.reserved_flag
        tid = t.id
        if tid == 0:
            return _TR.id_must_not_be_zero
        if tid == U128_MAX:
            return _TR.id_must_not_be_int_max
        post_void = flags & _T_POST_VOID
        if post_void:
            if flags & _T_PENDING or post_void == _T_POST_VOID or flags & _T_BALANCING:
                return _TR.flags_are_mutually_exclusive
            pid = t.pending_id
            if pid == 0:
                return _TR.pending_id_must_not_be_zero
            if pid == U128_MAX:
                return _TR.pending_id_must_not_be_int_max
            if pid == tid:
                return _TR.pending_id_must_be_different
            if t.timeout:
                return _TR.timeout_reserved_for_pending_transfer
        else:
            d = t.debit_account_id
            c = t.credit_account_id
            if d == 0:
                return _TR.debit_account_id_must_not_be_zero
            if d == U128_MAX:
                return _TR.debit_account_id_must_not_be_int_max
            if c == 0:
                return _TR.credit_account_id_must_not_be_zero
            if c == U128_MAX:
                return _TR.credit_account_id_must_not_be_int_max
            if d == c:
                return _TR.accounts_must_be_different
            if t.pending_id:
                return _TR.pending_id_must_be_zero
            if t.timeout and not flags & _T_PENDING:
                return _TR.timeout_reserved_for_pending_transfer
            if t.amount == 0 and not flags & _T_BALANCING:
                return _TR.amount_must_not_be_zero
            if t.ledger == 0:
                return _TR.ledger_must_not_be_zero
            if t.code == 0:
                return _TR.code_must_not_be_zero

        # ---- idempotency
        key = _key(tid)
        raw = txn.get(key, db=self._transfers)
        if raw is not None:
            return _transfer_exists(t, unpack_transfer(raw))
        if txn.get(key, db=self._failed) is not None:
            return _TR.id_already_failed
        if post_void:
            return self._post_or_void(txn, t, key, ctx)

        # ---- checks against ledger state (recorded as failed ids)
        dr = self._account(txn, d, ctx)
        if dr is None:
            return _TR.debit_account_not_found
        cr = self._account(txn, c, ctx)
        if cr is None:
            return _TR.credit_account_not_found
        if dr.ledger != cr.ledger:
            return _TR.accounts_must_have_the_same_ledger
        if t.ledger != dr.ledger:
            return _TR.transfer_must_have_the_same_ledger_as_accounts
        if dr.flags & _A_CLOSED:
            return _TR.debit_account_already_closed
        if cr.flags & _A_CLOSED:
            return _TR.credit_account_already_closed
        amount = t.amount
        dr_pending = dr.debits_pending
        dr_posted = dr.debits_posted
        cr_pending = cr.credits_pending
        cr_posted = cr.credits_posted
        if flags & _T_BALANCING:
            if amount == 0:
                amount = U64_MAX
            if flags & _T_BAL_D:
                available = dr.credits_posted - dr_pending - dr_posted
                if available < amount:
                    amount = available if available > 0 else 0
                if amount == 0:
                    return _TR.exceeds_credits
            if flags & _T_BAL_C:
                available = cr.debits_posted - cr_pending - cr_posted
                if available < amount:
                    amount = available if available > 0 else 0
                if amount == 0:
                    return _TR.exceeds_debits
        pending = flags & _T_PENDING
        if pending:
            if dr_pending + amount > U64_MAX:
                return _TR.overflows_debits_pending
            if cr_pending + amount > U64_MAX:
                return _TR.overflows_credits_pending
        if dr_posted + amount > U64_MAX:
            return _TR.overflows_debits_posted
        if cr_posted + amount > U64_MAX:
            return _TR.overflows_credits_posted
        if dr_pending + dr_posted + amount > U64_MAX:
            return _TR.overflows_debits
        if cr_pending + cr_posted + amount > U64_MAX:
            return _TR.overflows_credits
        ts = ctx.next_ts
        timeout = t.timeout
        if timeout:  # only pending transfers get here with a timeout
            expires_at = ts + timeout * NS_PER_SECOND
            if expires_at > U64_MAX:
                return _TR.overflows_timeout
        if dr.flags & _A_DMNEC and dr_pending + dr_posted + amount > dr.credits_posted:
            return _TR.exceeds_credits
        if cr.flags & _A_CMNED and cr_pending + cr_posted + amount > cr.debits_posted:
            return _TR.exceeds_debits

        # ---- create
        self._touch(dr, ctx)
        self._touch(cr, ctx)
        if pending:
            dr.debits_pending = dr_pending + amount
            cr.credits_pending = cr_pending + amount
        else:
            dr.debits_posted = dr_posted + amount
            cr.credits_posted = cr_posted + amount
        ctx.next_ts = ts + 1
        record = Transfer(
            tid, d, c, amount, 0, t.user_data_128, t.user_data_64, t.user_data_32,
            timeout, t.ledger, t.code, flags, ts,
        )  # fmt: skip
        self._store(txn, key, record, _key(d), _key(c))
        if pending:
            txn.put(key, _STATUS.pack(STATUS_PENDING, amount), db=self._pending)
            if timeout:
                txn.put(expires_at.to_bytes(8, "big") + key, b"", db=self._expiry)
        return T_OK

    def _store(self, txn: lmdb.Transaction, key: bytes, t: Transfer, dr_key: bytes, cr_key: bytes) -> None:
        txn.put(key, pack_transfer(t), db=self._transfers)
        ts_key = t.timestamp.to_bytes(8, "big")
        txn.put(dr_key + ts_key, _SIDE_DEBIT + key, db=self._account_transfers)
        txn.put(cr_key + ts_key, _SIDE_CREDIT + key, db=self._account_transfers)

    def _post_or_void(self, txn: lmdb.Transaction, t: Transfer, key: bytes, ctx: _Context) -> int:
        pid = t.pending_id
        pkey = _key(pid)
        raw = txn.get(pkey, db=self._transfers)
        if raw is None:
            return _TR.pending_transfer_not_found
        p = unpack_transfer(raw)
        if not p.flags & _T_PENDING:
            return _TR.pending_transfer_not_pending
        if t.debit_account_id and t.debit_account_id != p.debit_account_id:
            return _TR.pending_transfer_has_different_debit_account_id
        if t.credit_account_id and t.credit_account_id != p.credit_account_id:
            return _TR.pending_transfer_has_different_credit_account_id
        if t.ledger and t.ledger != p.ledger:
            return _TR.pending_transfer_has_different_ledger
        if t.code and t.code != p.code:
            return _TR.pending_transfer_has_different_code
        post = t.flags & _T_POST
        if post:
            amount = t.amount or p.amount
            if amount > p.amount:
                return _TR.exceeds_pending_transfer_amount
        else:
            if t.amount and t.amount != p.amount:
                return _TR.pending_transfer_has_different_amount
            amount = p.amount
        status_raw = txn.get(pkey, db=self._pending)
        if status_raw is None:
            raise InvariantViolation(f"pending transfer {pid} has no status")
        status = status_raw[0]
        if status == STATUS_POSTED:
            return _TR.pending_transfer_already_posted
        if status == STATUS_VOIDED:
            return _TR.pending_transfer_already_voided
        if status == STATUS_EXPIRED:
            return _TR.pending_transfer_expired
        expires_at = p.timestamp + p.timeout * NS_PER_SECOND if p.timeout else 0
        if p.timeout and expires_at <= ctx.base:
            return _TR.pending_transfer_expired
        dr = self._account(txn, p.debit_account_id, ctx)
        cr = self._account(txn, p.credit_account_id, ctx)
        if dr is None or cr is None:
            raise InvariantViolation(f"accounts of pending transfer {pid} are missing")
        if dr.flags & _A_CLOSED and post:
            return _TR.debit_account_already_closed
        if cr.flags & _A_CLOSED and post:
            return _TR.credit_account_already_closed

        self._touch(dr, ctx)
        self._touch(cr, ctx)
        dr.debits_pending -= p.amount
        cr.credits_pending -= p.amount
        if post:
            dr.debits_posted += amount
            cr.credits_posted += amount
        ts = ctx.next_ts
        ctx.next_ts = ts + 1
        record = Transfer(
            t.id, p.debit_account_id, p.credit_account_id, amount, pid,
            t.user_data_128, t.user_data_64, t.user_data_32, 0, p.ledger, p.code, t.flags, ts,
        )  # fmt: skip
        self._store(txn, key, record, _key(p.debit_account_id), _key(p.credit_account_id))
        txn.put(pkey, _STATUS.pack(STATUS_POSTED if post else STATUS_VOIDED, amount), db=self._pending)
        if p.timeout:
            txn.delete(expires_at.to_bytes(8, "big") + pkey, db=self._expiry)
        return T_OK

    # ----------------------------------------------------------------- expiry

    def _expire(self, txn: lmdb.Transaction, ctx: _Context) -> int:
        """Release pending transfers whose timeout passed, earliest first, at most EXPIRE_PER_APPLY_MAX."""
        due: list[bytes] = []
        cursor = txn.cursor(db=self._expiry)
        if cursor.first():
            for k in cursor.iternext(keys=True, values=False):
                if int.from_bytes(k[:8], "big") > ctx.base or len(due) >= EXPIRE_PER_APPLY_MAX:
                    break
                due.append(k)
        cursor.close()
        for k in due:
            pkey = k[8:]
            raw = txn.get(pkey, db=self._transfers)
            status_raw = txn.get(pkey, db=self._pending)
            if raw is None or status_raw is None or status_raw[0] != STATUS_PENDING:
                raise InvariantViolation(f"expiry index names a transfer that is not pending: {pkey.hex()}")
            p = unpack_transfer(raw)
            dr = self._account(txn, p.debit_account_id, ctx)
            cr = self._account(txn, p.credit_account_id, ctx)
            if dr is None or cr is None:
                raise InvariantViolation(f"accounts of pending transfer {pkey.hex()} are missing")
            self._touch(dr, ctx)
            self._touch(cr, ctx)
            dr.debits_pending -= p.amount
            cr.credits_pending -= p.amount
            txn.put(pkey, _STATUS.pack(STATUS_EXPIRED, p.amount), db=self._pending)
            txn.delete(k, db=self._expiry)
        self._flush(txn, ctx)
        return len(due)

    # ------------------------------------------------------ write back + checks

    def _flush(self, txn: lmdb.Transaction, ctx: _Context) -> None:
        """Write changed accounts back once, fold their deltas into ledger totals, check invariants."""
        if not ctx.dirty:
            return
        deltas: dict[int, list[int]] = {}
        accounts_db = self._accounts
        for acct_id in ctx.dirty:
            a = ctx.accounts[acct_id]
            dp, dpo, cp, cpo = a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted
            if not (
                0 <= dp <= U64_MAX
                and 0 <= dpo <= U64_MAX
                and 0 <= cp <= U64_MAX
                and 0 <= cpo <= U64_MAX
                and dp + dpo <= U64_MAX
                and cp + cpo <= U64_MAX
            ):
                raise InvariantViolation(f"account {acct_id} balances out of u64 range: {a}")
            if a.flags & _A_DMNEC and dp + dpo > cpo:
                raise InvariantViolation(f"account {acct_id} debits exceed credits: {a}")
            if a.flags & _A_CMNED and cp + cpo > dpo:
                raise InvariantViolation(f"account {acct_id} credits exceed debits: {a}")
            o = ctx.original[acct_id]
            if (dp, dpo, cp, cpo) == o:
                continue
            txn.put(_key(acct_id), pack_account(a), db=accounts_db)
            d = deltas.get(a.ledger)
            if d is None:
                d = deltas[a.ledger] = [0, 0, 0, 0]
            d[0] += dp - o[0]
            d[1] += dpo - o[1]
            d[2] += cp - o[2]
            d[3] += cpo - o[3]
        for ledger, d in deltas.items():
            lkey = ledger.to_bytes(4, "big")
            totals = _unpack_totals(txn.get(lkey, db=self._totals))
            totals = [x + y for x, y in zip(totals, d, strict=True)]
            if totals[0] != totals[2] or totals[1] != totals[3] or min(totals) < 0:
                raise InvariantViolation(f"ledger {ledger} does not balance: {totals}")
            txn.put(lkey, _pack_totals(totals), db=self._totals)
        ctx.dirty.clear()

    def _last_timestamp(self, txn: lmdb.Transaction) -> int:
        raw = txn.get(_META_LAST_TIMESTAMP, db=self._meta)
        return 0 if raw is None else _U64.unpack(raw)[0]

    # ------------------------------------------------------------------ reads

    def lookup_accounts(self, txn: lmdb.Transaction, ids: Sequence[int]) -> list[Account]:
        """The accounts that exist, in request order (missing ids are left out)."""
        out = []
        db = self._accounts
        for i in ids:
            if 0 < i < U128_MAX:
                raw = txn.get(_key(i), db=db)
                if raw is not None:
                    out.append(unpack_account(raw))
        return out

    def lookup_transfers(self, txn: lmdb.Transaction, ids: Sequence[int]) -> list[Transfer]:
        """The transfers that exist, in request order (missing ids are left out)."""
        out = []
        db = self._transfers
        for i in ids:
            if 0 < i < U128_MAX:
                raw = txn.get(_key(i), db=db)
                if raw is not None:
                    out.append(unpack_transfer(raw))
        return out

    def get_account_transfers(
        self,
        txn: lmdb.Transaction,
        account_id: int,
        *,
        timestamp_min: int = 0,
        timestamp_max: int = 0,
        limit: int = 100,
        debits: bool = True,
        credits: bool = True,
        reversed: bool = False,
    ) -> list[Transfer]:
        """Transfers touching an account, by timestamp; bounds inclusive, 0 = unbounded.

        An impossible filter (limit <= 0, neither side, min > max, invalid id) yields
        an empty page, as in TigerBeetle; limit is capped at PAGE_SIZE_MAX.
        """
        if (
            limit <= 0
            or not (debits or credits)
            or not 0 < account_id < U128_MAX
            or not 0 <= timestamp_min <= U64_MAX
            or not 0 <= timestamp_max <= U64_MAX
            or (timestamp_max and timestamp_min > timestamp_max)
        ):
            return []
        limit = min(limit, PAGE_SIZE_MAX)
        prefix = _key(account_id)
        lo = prefix + timestamp_min.to_bytes(8, "big")
        hi = prefix + (timestamp_max or U64_MAX).to_bytes(8, "big")
        want_side = None if (debits and credits) else (0 if debits else 1)
        ids: list[bytes] = []
        cursor = txn.cursor(db=self._account_transfers)
        try:
            if not reversed:
                if not cursor.set_range(lo):
                    return []
                it = cursor.iternext()
                in_range = hi.__ge__
            else:
                if cursor.set_range(hi):
                    if cursor.key() > hi and not cursor.prev():
                        return []
                elif not cursor.last():
                    return []
                it = cursor.iterprev()
                in_range = lo.__le__
            for k, v in it:
                if not in_range(k):
                    break
                if want_side is None or v[0] == want_side:
                    ids.append(v[1:])
                    if len(ids) >= limit:
                        break
        finally:
            cursor.close()
        db = self._transfers
        out = []
        for tkey in ids:
            raw = txn.get(tkey, db=db)
            if raw is None:
                raise InvariantViolation(f"account index names a missing transfer {tkey.hex()}")
            out.append(unpack_transfer(raw))
        return out

    def next_expiry_ns(self, txn: lmdb.Transaction) -> int | None:
        """When the earliest still-pending transfer expires: the leader proposes an entry then."""
        cursor = txn.cursor(db=self._expiry)
        try:
            if not cursor.first():
                return None
            return int.from_bytes(cursor.key()[:8], "big")
        finally:
            cursor.close()

    def cluster_time_ns(self, txn: lmdb.Transaction) -> int:
        """The latest cluster time this shard has applied (0 before the first entry)."""
        return self._last_timestamp(txn)

    def ledger_totals(self, txn: lmdb.Transaction) -> dict[int, dict[str, int]]:
        """Per-ledger sums of the four balances over this shard's accounts (for audits)."""
        out: dict[int, dict[str, int]] = {}
        cursor = txn.cursor(db=self._totals)
        try:
            for k, v in cursor.iternext():
                dp, dpo, cp, cpo = _unpack_totals(v)
                out[int.from_bytes(k, "big")] = {
                    "debits_pending": dp,
                    "debits_posted": dpo,
                    "credits_pending": cp,
                    "credits_posted": cpo,
                }
        finally:
            cursor.close()
        return out


def _transfer_exists(t: Transfer, e: Transfer) -> int:
    """Idempotency: the same id again is `exists` only if every given field matches."""
    if (t.flags ^ e.flags) & ~_T_LINKED:
        return _TR.exists_with_different_flags
    if t.flags & _T_POST_VOID:
        # Zero means "as the pending transfer", which is what e holds.
        if t.debit_account_id and t.debit_account_id != e.debit_account_id:
            return _TR.exists_with_different_debit_account_id
        if t.credit_account_id and t.credit_account_id != e.credit_account_id:
            return _TR.exists_with_different_credit_account_id
        if t.amount and t.amount != e.amount:
            return _TR.exists_with_different_amount
    else:
        if t.debit_account_id != e.debit_account_id:
            return _TR.exists_with_different_debit_account_id
        if t.credit_account_id != e.credit_account_id:
            return _TR.exists_with_different_credit_account_id
        if not t.flags & _T_BALANCING and t.amount != e.amount:
            return _TR.exists_with_different_amount
    if t.pending_id != e.pending_id:
        return _TR.exists_with_different_pending_id
    if t.user_data_128 != e.user_data_128:
        return _TR.exists_with_different_user_data_128
    if t.user_data_64 != e.user_data_64:
        return _TR.exists_with_different_user_data_64
    if t.user_data_32 != e.user_data_32:
        return _TR.exists_with_different_user_data_32
    if t.timeout != e.timeout:
        return _TR.exists_with_different_timeout
    post_void = t.flags & _T_POST_VOID
    if (t.ledger or not post_void) and t.ledger != e.ledger:
        return _TR.exists_with_different_ledger
    if (t.code or not post_void) and t.code != e.code:
        return _TR.exists_with_different_code
    return _TR.exists


def _unpack_totals(raw: bytes | None) -> list[int]:
    if raw is None:
        return [0, 0, 0, 0]
    v = _TOTALS.unpack(raw)
    return [v[0] | v[1] << 64, v[2] | v[3] << 64, v[4] | v[5] << 64, v[6] | v[7] << 64]


def _pack_totals(totals: Sequence[int]) -> bytes:
    m = U64_MAX
    return _TOTALS.pack(*(part for x in totals for part in (x & m, x >> 64)))


def _all_internal_error(operations: Sequence[Operation]) -> list[list[int]]:
    """internal_error for every item, without trusting the operations to be well formed."""
    out: list[list[int]] = []
    try:
        for op in operations:
            code = _AR.internal_error if getattr(op, "kind", None) == OP_CREATE_ACCOUNTS else _TR.internal_error
            try:
                n = len(op.items)
            except Exception:
                n = 0
            out.append([int(code)] * n)
    except Exception:
        pass
    return out

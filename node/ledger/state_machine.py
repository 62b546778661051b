"""The ledger state machine: every ledger rule, as a pure function of an LMDB write txn.

Every replica runs `LedgerStateMachine.apply` on the same Raft entries and must end
in the same state, so nothing here reads a clock, draws randomness or does I/O other
than through the txn it is given; time comes in as `timestamp_ns` (the leader's
cluster timestamp stamped on the entry). A bug or a broken invariant rolls back the
operation it happened in and becomes `internal_error` results on every replica alike;
a storage or resource error (LMDB, disk, memory: `node/storage.py`) may hit one
replica only, so it escapes `apply` and stops that replica instead.

Semantics follow TigerBeetle (double entry, client-chosen ids as idempotency keys,
linked chains, pending/post/void, balancing transfers) with u64 amounts and balances.

LMDB layout (all keys big-endian so LMDB order is numeric order):

=========================  ==========================================  ==================================
db                         key                                         value
=========================  ==========================================  ==================================
ledger_accounts            id (16)                                     packed Account
ledger_transfers           id (16)                                     packed Transfer, or by a tag: H+request
                                                                       (home record), F+code (failed), R+txid
                                                                       (reserved by a PREPARED txn)
ledger_account_transfers   account id (16) + timestamp (8)             side (1: 0 debit, 1 credit) + transfer id (16)
ledger_pending             pending transfer id (16)                    status (1) + amount (8, LE)
ledger_expiry              expires_at ns (8) + pending transfer id (16)  empty
ledger_meta                b"last_timestamp"                           u64 LE
ledger_totals              ledger (4)                                  10 x u128 LE (see _TOTAL_KEYS)
ledger_txns                txid (16)                                   participant state of a 2PC txn
ledger_txn_prepared        prepared_at ns (8) + txid (16)              coordinator shard (u32 LE)
ledger_locks               pending transfer id (16)                    txid (16) + leg kind (1)
ledger_xpending            pending transfer id (16)                    sides (1) + expires_at ns (8, LE)
ledger_decisions           txid (16)                                   timestamp (8, LE) + packed Decide
ledger_xfund               account id (16)                             credit fund (8) + debit fund (8), LE
escrow_trades              trade id (16)                               packed Trade (`trades`)
escrow_locks               trade id (16)                               txid (16) of the PREPARED escrow step
escrow_timers              deadline ns (8) + trade id (16)             timer (1)
escrow_by_buyer            buyer id (16) + created_at (8) + trade (16)  empty
escrow_by_seller           seller id (16) + created_at (8) + trade (16) empty
escrow_slots               ledger (4) + slot (2)                       held (8) + fees (8), LE
escrow_totals              ledger (4)                                  released, refunded, trades per state
=========================  ==========================================  ==================================

Escrow (trades; rules in `escrow`, records in `trades`)
--------------------------------------------------------

A trade lives on the shard of its id, beside the escrow and fee accounts of its
(ledger, hash slot) (`tidebank.common.keys`), which only escrow steps may touch: a plain
transfer or a PREPARE without a trade step naming one is refused with
account_reserved_for_escrow, an account create with such an id with
id_reserved_for_escrow. Every escrow step is a 2PC group coordinated by the
trade's shard; the PREPARE it sends there carries the `TradeStep` (command and the
trade version it was planned on). That PREPARE locks the trade, re-evaluates the
command on cluster time and checks that its legs are exactly the transfers the
rules give (else internal_error); a version that moved on, a lock held by another
step or a timer not yet due vote busy (code 0) at TRADE_STEP_INDEX, a refused step
votes its TradeResult there. FINISH(commit) applies the legs and the new trade
record in one txn and checks that each escrow (fee) account's posted balance equals
the held money (fees) its slot's trades account for.

Cross-shard transactions (two-phase commit; records in `txn_records`)
---------------------------------------------------------------------

A participant shard sees only the legs (transfers of the group) that touch its
accounts, each with the side(s) that live here. PREPARE checks them in index order
with the single-shard rules of the local side(s), reserves their amounts as pending
(post/void legs instead lock their pending transfer) and records the txn PREPARED;
any failure votes NO and changes nothing but the recorded vote. FINISH applies or
releases. DECIDE records the coordinator's outcome, first writer wins.

* Idempotent by txid: a PREPARE of a prepared/committed txid votes yes again; of a
  txid that voted NO, was aborted, or has an abort tombstone (FINISH(abort) before any
  PREPARE) it votes NO again, so a late PREPARE never prepares after an abort. A
  PREPARE that names a known txid is answered from the record without reading its
  legs. ledger_txns keeps one small record per txid for good (like transfers); the
  legs are dropped at FINISH. ledger_decisions likewise keeps every decision (with
  participants and transfer ids) for good: it grows with the cross-shard groups.
* A transfer id named by a PREPARED txn is reserved (R+txid in ledger_transfers) until FINISH.
  Another PREPARE naming it (typically a retry attempt of the same group while the
  earlier attempt is still prepared somewhere) votes NO with code 0, "busy": no rule
  failed, the coordinator should abort that attempt and retry. A single-shard create
  of that id is refused with internal_error (not recorded as a failed id, so a retry
  after the txn finished gets the real answer: exists, or created).
* A pending transfer locked by a PREPARED post/void leg cannot be posted or voided by
  anything else: refused with pending_transfer_already_posted (lock is a post) or
  _already_voided (lock is a void), recorded as failed like any such refusal on the
  single-shard path. The expiry sweep skips it; it expires after the unlock if due.
* A pending transfer created by a txn expires at commit_timestamp + timeout on every
  shard (ledger_xpending). One whose accounts live on different shards can only be
  posted or voided through a txn: the single-shard path answers
  accounts_on_different_shards (not recorded).
* Within a group, as in a single-shard linked chain, the posting credits an earlier
  leg reserves on an account count for the limit checks of the group's later legs
  (debits_must_not_exceed_credits; posting debits likewise for
  credits_must_not_exceed_debits), because the group commits or aborts as one.
  Everyone else still sees them as pending only. While the txn is PREPARED the
  account's stored balances may then exceed its limit by at most what the same txn
  both credits and debits; ledger_xfund keeps that allowance per account for the
  invariant check, and FINISH removes it. Credits from post legs, and holds released
  by void legs, of the same group are not counted (stricter than single-shard).
* Balancing legs vote NO with accounts_on_different_shards (the amount needs both
  balances). A PREPARE that cannot be evaluated (no legs, legs out of index order or
  beyond group_size, bad sides, more than BATCH_ITEMS_MAX legs), and a post/void leg
  whose sides differ from where the pending transfer's accounts live here, are
  coordinator bugs: Vote(False, ., internal_error), logged critical; the former is
  not recorded. A participant takes exactly one Prepare per txid: every leg that
  touches it, in one item.
* FINISH: FINISH_APPLIED the first time; FINISH_ALREADY for the outcome already
  applied (an abort after a NO vote or tombstone included); FINISH_CONFLICT (nothing
  changed, logged critical) for the opposite one; FINISH_UNKNOWN_TXID when nothing
  was prepared here (an abort then leaves a tombstone, a commit changes nothing and
  is logged critical).
* Per ledger, one-sided legs (SIDE_DEBIT / SIDE_CREDIT) are counted as remote_* so
  that debits_posted - remote_debits_posted == credits_posted - remote_credits_posted
  (same for pending) holds on every shard; summed over a quiescent cluster the remote
  debits equal the remote credits.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import struct
from collections.abc import Callable, Sequence
from typing import Any

import lmdb

from tidebank.common.keys import DEFAULT_SLOT_COUNT, SYSTEM_ACCOUNT_PREFIX, SYSTEM_ESCROW, is_system_account, slot_of
from tidebank.node.ledger import escrow
from tidebank.node.ledger.clearing import ClearingRules
from tidebank.node.ledger.clearing_records import ClearingCommand
from tidebank.node.ledger.operations import (
    OP_CLEARING,
    OP_CLEARING_ITEMS,
    OP_COMMIT_LOCAL,
    OP_CREATE_ACCOUNTS,
    OP_CREATE_OWNED_ACCOUNTS,
    OP_CREATE_TRANSFERS,
    OP_DECIDE,
    OP_FINISH,
    OP_PREPARE,
    OP_SLOT_MOVES,
    Operation,
)
from tidebank.node.ledger.records import (
    BATCH_ITEMS_MAX,
    PAGE_SIZE_MAX,
    TRANSFER_SIZE,
    U32_MAX,
    U64_MAX,
    U128_MAX,
    Account,
    AccountFlags,
    OwnedAccount,
    Transfer,
    TransferFlags,
    pack_account,
    pack_transfer,
    unpack_account,
    unpack_transfer,
)
from tidebank.node.ledger.results import ClearingItemResult, CreateAccountResult, CreateTransferResult, TradeResult
from tidebank.node.ledger.slot_moves import (
    K_ACCOUNT,
    K_DECISION,
    K_INDEX,
    K_TRANSFER,
    MOVED,
    SlotMoveCommand,
    SlotMoves,
)
from tidebank.node.ledger.trades import (
    CLOSED,
    DISPUTED,
    PAID,
    REFUNDED,
    SETTLED,
    SHIPPED,
    TERMINAL,
    TRADE_STEP_INDEX,
    TRADE_STEP_SIZE,
    Trade,
    TradeStep,
    pack_trade,
    pack_trade_step,
    unpack_trade,
    unpack_trade_step,
)
from tidebank.node.ledger.txn_records import (
    FINISH_ALREADY,
    FINISH_APPLIED,
    FINISH_CONFLICT,
    FINISH_INTERNAL_ERROR,
    FINISH_UNKNOWN_TXID,
    PARTICIPANTS_MAX,
    SIDE_BOTH,
    SIDE_CREDIT,
    SIDE_DEBIT,
    SIDE_HOME,
    SIDES_ALL,
    Decide,
    Decision,
    Finish,
    Leg,
    Prepare,
    Vote,
    pack_decide,
    unpack_decide,
)
from tidebank.node.storage import STORAGE_ERRORS

__all__ = [
    "EXPIRE_PER_APPLY_MAX",
    "EXPIRE_SCAN_MAX",
    "PREPARED_TXNS_LIMIT_MAX",
    "InvariantViolation",
    "LedgerStateMachine",
]

log = logging.getLogger(__name__)

EXPIRE_PER_APPLY_MAX = 512
# The sweep looks at most this many due expiry keys per apply (locked ones are skipped).
EXPIRE_SCAN_MAX = 4 * EXPIRE_PER_APPLY_MAX
PREPARED_TXNS_LIMIT_MAX = 1000
NS_PER_SECOND = 1_000_000_000


# Pending-transfer status (ledger_pending).
STATUS_PENDING = 1
STATUS_POSTED = 2
STATUS_VOIDED = 3
STATUS_EXPIRED = 4

_STATUS = struct.Struct("<BQ")
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_TOTALS_V1 = struct.Struct("<8Q")  # the four balances only (records written before 2PC)
_TOTALS = struct.Struct("<20Q")
_SIDE_DEBIT = b"\x00"
_SIDE_CREDIT = b"\x01"
_META_LAST_TIMESTAMP = b"last_timestamp"
_ZERO_TOTALS = _TOTALS.pack(*[0] * 20)

# ledger_totals record: the four balance sums, then the 2PC counters. The six 2PC
# counters are kept in _Context.x deltas under the same positions minus 4.
_TOTAL_KEYS = (
    "debits_pending",
    "debits_posted",
    "credits_pending",
    "credits_posted",
    "reserved_debits",  # held by PREPARED txns (already included in debits_pending)
    "reserved_credits",
    "remote_debits_posted",  # one-sided legs committed on this shard
    "remote_credits_posted",
    "remote_debits_pending",  # one-sided legs held here (prepared, or committed pending transfers)
    "remote_credits_pending",
)
_X_RES_D, _X_RES_C, _X_REM_DPO, _X_REM_CPO, _X_REM_DP, _X_REM_CP = range(6)

# Participant state of a txn (ledger_txns, first byte).
TXN_PREPARED = 1
TXN_COMMITTED = 2
TXN_ABORTED = 3  # prepared, then aborted
TXN_VOTED_NO = 4
TXN_TOMBSTONE = 5  # aborted before any PREPARE reached this shard
_TXN_STATE_NAMES = {
    TXN_PREPARED: "prepared",
    TXN_COMMITTED: "committed",
    TXN_ABORTED: "aborted",
    TXN_VOTED_NO: "aborted",
    TXN_TOMBSTONE: "aborted",
}
# state, coordinator_shard, prepared_at, group_size, leg count; then per leg _LEG_REC + packed Transfer
_PREPARED_HEAD = struct.Struct("<BIQII")
_LEG_REC = struct.Struct("<IBBQ")  # index, sides, kind, amount
_COMMITTED = struct.Struct("<BQ")  # state, commit_timestamp
_VOTED_NO = struct.Struct("<BII")  # state, failed_index, code
_XPENDING = struct.Struct("<BQ")  # sides, expires_at (0: never)
_FUND_REC = struct.Struct("<QQQQ")  # account id lo, hi, credit fund, debit fund (in a PREPARED record)
_FUND = struct.Struct("<QQ")  # ledger_xfund value: credit fund, debit fund
_SLOT_BOOK = struct.Struct("<QQ")  # escrow_slots value: held, fees
# escrow_totals value: released, refunded (u128 each), then trades per state (u64 each). What trades hold
# and took as fees is in the slot books (escrow_slots), summed per ledger when read.
_ESCROW_TOTAL_KEYS = ("released", "refunded")
_ESCROW_COUNTERS = ("trades_paid", "trades_shipped", "trades_settled", "trades_refunded", "trades_disputed",
                    "trades_closed")
_STATE_COUNTER = {PAID: "trades_paid", SHIPPED: "trades_shipped", SETTLED: "trades_settled",
                  REFUNDED: "trades_refunded", DISPUTED: "trades_disputed", CLOSED: "trades_closed"}
_ESCROW_TOTALS = struct.Struct("<4Q6Q")
_ESCROW_READ_ZEROS = {"held": 0, "fees": 0, "escrow_balance": 0, "fee_balance": 0}  # filled in by escrow_totals

# A leg whose transfer id another PREPARED txn holds: the NO vote carries code 0 ("busy",
# no business rule failed), so the coordinator aborts the attempt without a failing item
# and retries later instead of recording a final outcome.
_LEG_BUSY = -1

# Leg kinds.
LEG_PLAIN = 0
LEG_PENDING = 1
LEG_POST = 2
LEG_VOID = 3
LEG_ID = 4  # the transfer's accounts live elsewhere; this shard is its id's home

# What a key of ledger_transfers holds besides a stored transfer (TRANSFER_SIZE bytes), by a 1-byte tag:
_ID_HOME_TAG = b"H"  # + packed request: the home record of a transfer stored on its accounts' shards
_ID_FAILED_TAG = b"F"  # + result code (1 byte): the id failed a business rule; id_already_failed from then on
_ID_RESERVED_TAG = b"R"  # + txid (16): reserved by a PREPARED txn until it finishes

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

    __slots__ = ("accounts", "original", "dirty", "undo", "next_ts", "base", "x", "group", "escrow")

    def __init__(self, base: int, next_ts: int) -> None:
        self.accounts: dict[int, Account] = {}
        self.original: dict[int, tuple[int, int, int, int]] = {}
        self.dirty: set[int] = set()
        self.undo: dict[int, tuple[int, int, int, int]] | None = None
        self.next_ts = next_ts
        self.base = base
        # ledger -> deltas of the six 2PC counters (reserved_*, remote_*), folded in at flush.
        self.x: dict[int, list[int]] = {}
        # During a PREPARE, what its earlier legs reserved per account: posting credits, posting
        # debits, all credits, all debits (posting = not PENDING).
        self.group: tuple[dict[int, int], dict[int, int], dict[int, int], dict[int, int]] | None = None
        # During a PREPARE that carries a trade step: its legs may touch escrow and fee accounts.
        self.escrow = False

    def xd(self, ledger: int) -> list[int]:
        d = self.x.get(ledger)
        if d is None:
            d = self.x[ledger] = [0, 0, 0, 0, 0, 0]
        return d


class _Plan:
    """One prepared leg: what FINISH needs to apply or release it."""

    __slots__ = ("index", "sides", "kind", "amount", "record", "group_status")

    def __init__(self, index: int, sides: int, kind: int, amount: int, record: Transfer) -> None:
        self.index = index
        self.sides = sides
        self.kind = kind
        self.amount = amount  # reserved (plain, pending) or to post (post; void: the pending amount)
        self.record = record  # the transfer as it will be stored, timestamp 0 until FINISH
        self.group_status = 0  # a pending leg posted/voided by a later leg of the same group


class LedgerStateMachine:
    """Deterministic ledger and escrow rules over the "ledger_*" and "escrow_*" named dbs of one shard's LMDB env."""

    DB_NAMES: tuple[str, ...] = (
        "ledger_accounts",
        "ledger_transfers",
        "ledger_account_transfers",
        "ledger_pending",
        "ledger_expiry",
        "ledger_meta",
        "ledger_totals",
        "ledger_txns",
        "ledger_txn_prepared",
        "ledger_locks",
        "ledger_xpending",
        "ledger_decisions",
        "ledger_xfund",
        "ledger_owners",
        "escrow_trades",
        "escrow_locks",
        "escrow_timers",
        "escrow_by_buyer",
        "escrow_by_seller",
        "escrow_slots",
        "escrow_totals",
        *SlotMoves.DB_NAMES,
    )

    def __init__(
        self, env: lmdb.Environment, *, txn: lmdb.Transaction | None = None, slot_count: int = DEFAULT_SLOT_COUNT
    ) -> None:
        """Open (creating if needed) the named dbs; pass `txn` if a write txn is already open.

        slot_count is the cluster's number of hash slots (fixed for its life): it places
        each trade's escrow and fee accounts in the trade's own slot."""
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
        self._meta = dbs["ledger_meta"]
        self._totals = dbs["ledger_totals"]
        self._txns = dbs["ledger_txns"]
        self._txn_prepared = dbs["ledger_txn_prepared"]
        self._locks = dbs["ledger_locks"]
        self._xpending = dbs["ledger_xpending"]
        self._decisions = dbs["ledger_decisions"]
        self._xfund = dbs["ledger_xfund"]
        self._owners = dbs["ledger_owners"]  # account id -> its owner's principal name (accounts made for one)
        self._trades = dbs["escrow_trades"]
        self._trade_locks = dbs["escrow_locks"]
        self._timers = dbs["escrow_timers"]
        self._by_buyer = dbs["escrow_by_buyer"]
        self._by_seller = dbs["escrow_by_seller"]
        self._escrow_slots = dbs["escrow_slots"]
        self._escrow_totals = dbs["escrow_totals"]
        self._slot_count = slot_count
        self.clearing = ClearingRules(env, txn=txn)
        clearing_dbs = [env.open_db(name.encode(), txn=txn, create=True) for name in ClearingRules.DB_NAMES]
        self.slot_moves = SlotMoves(dbs, slot_count, clearing_dbs, self._prepared_touching)
        # The slot fence of the operation being applied (one state byte per slot), None when no slot of this
        # shard ever moved: read once per operation, so items pay for it only while slots move.
        self._fence: bytes | None = None
        # The slots of a move in its precopy (one byte per slot), None when there is none; read like the fence.
        # While it is set, every write of a record of those slots notes its key in `_written`, and the entry
        # hands them to slot_moves.note_writes: the move's catch-up copies them again under the fence.
        self._tracking: bytes | None = None
        self._written: set[bytes] = set()

    # ------------------------------------------------------------------ apply

    def apply(self, txn: lmdb.Transaction, operations: Sequence[Operation], timestamp_ns: int) -> list[list[Any]]:
        """One Raft entry: the operations in order, each list of per-item results in order.

        Results are int codes for OP_CREATE_*, `Vote` for OP_PREPARE and OP_COMMIT_LOCAL,
        FINISH_* ints for OP_FINISH and `Decision` for OP_DECIDE.

        A deterministic failure inside one operation (a bug, a broken invariant) rolls
        that operation back and reports internal_error for each of its items; the
        others still apply. 2PC operations roll back per item: Vote(False, 0,
        internal_error), FINISH_INTERNAL_ERROR, or Decision(False, 0, internal_error,
        timestamp=0) (nothing recorded; the step may be retried).

        Raises only `STORAGE_ERRORS` (LMDB, memory, I/O): they may hit one replica
        only, so they must never become results (node/storage.py); the caller
        aborts `txn` and stops applying.
        """
        child = self._env.begin(write=True, parent=txn)
        try:
            results = self._apply(child, operations, timestamp_ns)
        except STORAGE_ERRORS:
            child.abort()
            raise
        except Exception:
            child.abort()
            log.critical("ledger apply failed outside any operation: whole entry rolled back", exc_info=True)
            return _all_internal_error(operations)
        child.commit()
        return results

    def _apply(self, txn: lmdb.Transaction, operations: Sequence[Operation], timestamp_ns: int) -> list[list[Any]]:
        last = self._last_timestamp(txn)
        base = max(timestamp_ns, last + 1)
        if base > U64_MAX:
            raise InvariantViolation(f"cluster time overflows u64: {base}")
        self._fence = self.slot_moves.fence(txn)
        self._tracking = self.slot_moves.tracking(txn)
        self._written = set()
        if self._expiry_due(txn, base):  # most entries have nothing to expire: no nested txn for them
            self._run_guarded(txn, "expiry sweep", functools.partial(self._expire, ctx=_Context(base, base)))
        next_ts = base
        results: list[list[Any]] = []
        for op in operations:
            ctx = _Context(base, next_ts)
            kind = op.kind
            self._fence = self.slot_moves.fence(txn)
            self._tracking = self.slot_moves.tracking(txn)
            if kind == OP_CREATE_TRANSFERS:
                fn = functools.partial(self._create_transfers, items=op.items, ctx=ctx)
                error: Any = int(_TR.internal_error)
            elif kind == OP_CREATE_ACCOUNTS:
                fn = functools.partial(self._create_accounts, items=op.items, ctx=ctx)
                error = int(_AR.internal_error)
            elif kind == OP_CREATE_OWNED_ACCOUNTS:
                fn = functools.partial(self._create_owned_accounts, items=op.items, ctx=ctx)
                error = int(_AR.internal_error)
            elif kind in (OP_CLEARING_ITEMS, OP_CLEARING) and self.slot_moves.moving(txn):
                # Slot moves do not carry clearing state yet: none may appear on a shard while it moves slots.
                busy = int(ClearingItemResult.slot_moving) if kind == OP_CLEARING_ITEMS else None
                results.append([busy] * len(op.items))
                continue
            elif kind == OP_CLEARING_ITEMS:
                fn = functools.partial(self.clearing.submit_items, items=op.items, timestamp_ns=ctx.base)
                error = int(ClearingItemResult.internal_error)
            elif kind == OP_CLEARING:
                results.append(self._clearing_commands(txn, op.items, ctx.base))
                continue
            elif kind == OP_SLOT_MOVES:
                results.append(self._slot_move_commands(txn, op.items, ctx))
                next_ts = ctx.next_ts
                continue
            elif kind in _TXN_STEPS:
                step_name, error = _TXN_STEPS[kind]
                fn = functools.partial(
                    self._txn_items, items=op.items, ctx=ctx, step=getattr(self, step_name), error=error
                )
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
        if self._written:
            self.slot_moves.note_writes(txn, self._written)
            self._written = set()
        # Cluster time never goes backwards, even when this entry created nothing.
        txn.put(_META_LAST_TIMESTAMP, _U64.pack(max(base, next_ts - 1)), db=self._meta)
        return results

    def _clearing_commands(self, txn: lmdb.Transaction, items: Sequence[ClearingCommand], ts: int) -> list[Any]:
        """Each clearing command in its own nested txn: one that fails (a bug) is rolled back and answers None."""
        return [self._run_guarded(txn, "clearing command", functools.partial(self.clearing.command, c=c,
                                                                             timestamp_ns=ts))
                for c in items]

    def _slot_move_commands(self, txn: lmdb.Transaction, items: Sequence[SlotMoveCommand], ctx: _Context) -> list[Any]:
        """Each slot-move command in its own nested txn: one that fails (a bug, a malformed command) is rolled
        back and answers None. Imported records keep their timestamps, so cluster time moves past them."""
        def raise_clock(timestamp_ns: int) -> None:
            ctx.next_ts = max(ctx.next_ts, timestamp_ns + 1)

        out = []
        for c in items:
            saved = ctx.next_ts
            result = self._run_guarded(txn, "slot-move command", functools.partial(
                self.slot_moves.command, c=c, add_totals=self._add_totals, raise_clock=raise_clock,
                now_ns=ctx.next_ts))
            if result is None:
                ctx.next_ts = saved
            out.append(None if result is None else int(result))
        return out

    def _prepared_touching(self, txn: lmdb.Transaction, slots: set[int]) -> bool:
        """Whether a PREPARED txn here names an id of these slots (a slot move waits for it to finish)."""
        n = self._slot_count
        for key in txn.cursor(db=self._txn_prepared).iternext(keys=True, values=False):
            raw = txn.get(key[8:], db=self._txns)
            if raw is None or raw[0] != TXN_PREPARED:
                continue
            _, _, plans, _, trade = _unpack_prepared(raw)
            ids = [i for plan in plans for i in (plan.record.id, plan.record.debit_account_id,
                                                 plan.record.credit_account_id, plan.record.pending_id) if i]
            if trade is not None:
                ids.append(trade.trade_id)
            if any(slot_of(i, n) in slots for i in ids):
                return True
        return False

    def _note(self, kind: int, key: bytes, ids: tuple[int, ...] = ()) -> None:
        """Note a written record's key if it belongs to the slots in precopy (by `ids`; no ids: always).
        A key noted by a rolled-back chain costs the catch-up one lookup, nothing more."""
        tracking = self._tracking
        n = self._slot_count
        if not ids or any(tracking[slot_of(i, n)] for i in ids if 0 < i < U128_MAX):
            self._written.add(bytes((kind,)) + key)

    def _fence_state(self, ids: Sequence[int], fence: bytes | None = None) -> int:
        """MOVED if an id's slot has left this shard, else MOVING if one is moving, else 0 (by `fence`, or by
        the fence of the operation being applied)."""
        if fence is None:
            fence = self._fence
        n = self._slot_count
        state = 0
        for i in ids:
            if 0 < i < U128_MAX:
                s = fence[slot_of(i, n)]
                if s > state:
                    state = s
        return state

    def _run_guarded(self, txn: lmdb.Transaction, what: str, fn: Callable[[lmdb.Transaction], Any]) -> Any:
        """Run fn in a nested txn; on a deterministic exception roll it back, log, and return None."""
        child = self._env.begin(write=True, parent=txn)
        try:
            out = fn(child)
        except STORAGE_ERRORS:
            child.abort()
            raise
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

    def _create_owned_accounts(self, txn: lmdb.Transaction, items: Sequence[OwnedAccount],
                               ctx: _Context) -> list[int]:
        return self._run_chains(txn, items, ctx, self._create_owned_account, int(_AR.linked_event_failed),
                                int(_AR.linked_event_chain_open), None)

    def _create_owned_account(self, txn: lmdb.Transaction, item: OwnedAccount, ctx: _Context) -> int:
        """An account and its owner, written together (a linked chain's rollback takes both back). Creating it
        again is `exists` only for the same owner: nobody learns to rely on an account someone else owns."""
        owner = item.owner.encode("utf-8")
        code = self._create_account(txn, item.account, ctx)
        key = _key(item.account.id)
        if code == A_OK:
            txn.put(key, owner, db=self._owners)
        elif code == _AR.exists and txn.get(key, db=self._owners) != owner:
            return _AR.exists_with_different_owner
        return code

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
        if is_system_account(aid):
            return _AR.id_reserved_for_escrow
        if self._fence is not None:
            fenced = self._fence_state((aid,))
            if fenced:
                return _AR.slot_moved if fenced == MOVED else _AR.slot_moving
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
        if self._tracking is not None:
            self._note(K_ACCOUNT, key, (aid,))
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
            txn.put(_key(t.id), _ID_FAILED_TAG + bytes((code,)), db=self._transfers)
            if self._tracking is not None:
                self._note(K_TRANSFER, _key(t.id), (t.id,))

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

    # -- transfer ids: what an id is on this shard, in one LMDB read

    def _id_taken(self, txn: lmdb.Transaction, t: Transfer, key: bytes, busy: int) -> int:
        """0 when the id is free here, else the code a transfer with it gets: exists / exists_with_different_*
        (stored here, or its home record), id_already_failed, or `busy` (reserved by a PREPARED txn)."""
        raw = txn.get(key, db=self._transfers)
        if raw is None:
            return 0
        if len(raw) == TRANSFER_SIZE:
            return _transfer_exists(t, unpack_transfer(raw))
        tag = raw[:1]
        if tag == _ID_HOME_TAG:
            return _transfer_exists(t, unpack_transfer(raw[1:]))
        if tag == _ID_FAILED_TAG:
            return _TR.id_already_failed
        if tag == _ID_RESERVED_TAG:
            return busy
        raise InvariantViolation(f"transfer id {key.hex()} has a record of {len(raw)} bytes")

    def _stored_transfer(self, txn: lmdb.Transaction, key: bytes) -> Transfer | None:
        """The transfer stored on this shard under `key` (not a home record, failed or reserved id)."""
        raw = txn.get(key, db=self._transfers)
        return unpack_transfer(raw) if raw is not None and len(raw) == TRANSFER_SIZE else None

    # -- the single-shard path

    def _create_transfer(self, txn: lmdb.Transaction, t: Transfer, ctx: _Context) -> int:
        # ---- checks on the request alone (not recorded as failed ids)
        code = _static_check(t)
        if code:
            return code
        flags = t.flags
        tid = t.id
        d = t.debit_account_id
        c = t.credit_account_id
        if d >> 96 == SYSTEM_ACCOUNT_PREFIX or c >> 96 == SYSTEM_ACCOUNT_PREFIX:  # is_system_account, inlined
            return _TR.account_reserved_for_escrow  # only escrow steps move escrow and fee money
        if self._fence is not None:
            fenced = self._fence_state((tid, d, c))  # a post or void: its pending transfer's accounts, below
            if fenced:
                return _TR.slot_moved if fenced == MOVED else _TR.slot_moving

        # ---- idempotency (a reserved id: outcome unknown until its txn finishes; not recorded)
        key = _key(tid)
        code = self._id_taken(txn, t, key, _TR.internal_error)
        if code:
            return code
        if flags & _T_POST_VOID:
            return self._post_or_void(txn, t, key, ctx)

        # ---- checks against ledger state (recorded as failed ids)
        dr = self._account(txn, d, ctx)
        if dr is None:
            return _TR.debit_account_not_found
        cr = self._account(txn, c, ctx)
        if cr is None:
            return _TR.credit_account_not_found
        code = _check_accounts(t, dr, cr)
        if code:
            return code
        amount = t.amount
        if flags & _T_BALANCING:
            amount, code = _balancing_amount(t, dr, cr)
            if code:
                return code
        pending = flags & _T_PENDING
        ts = ctx.next_ts
        code = _check_amount(dr, cr, amount, pending, t.timeout, ts) or _check_limits(dr, cr, amount, 0, 0)
        if code:
            return code

        # ---- create
        self._touch(dr, ctx)
        self._touch(cr, ctx)
        if pending:
            dr.debits_pending += amount
            cr.credits_pending += amount
        else:
            dr.debits_posted += amount
            cr.credits_posted += amount
        ctx.next_ts = ts + 1
        timeout = t.timeout
        record = Transfer(
            tid, d, c, amount, 0, t.user_data_128, t.user_data_64, t.user_data_32,
            timeout, t.ledger, t.code, flags, ts,
        )  # fmt: skip
        self._store(txn, key, record, _key(d), _key(c))
        if pending:
            txn.put(key, _STATUS.pack(STATUS_PENDING, amount), db=self._pending)
            if timeout:
                txn.put((ts + timeout * NS_PER_SECOND).to_bytes(8, "big") + key, b"", db=self._expiry)
        return T_OK

    def _store(self, txn: lmdb.Transaction, key: bytes, t: Transfer, dr_key: bytes, cr_key: bytes) -> None:
        txn.put(key, pack_transfer(t), db=self._transfers)
        ts_key = t.timestamp.to_bytes(8, "big")
        txn.put(dr_key + ts_key, _SIDE_DEBIT + key, db=self._account_transfers)
        txn.put(cr_key + ts_key, _SIDE_CREDIT + key, db=self._account_transfers)
        if self._tracking is not None:
            self._note(K_TRANSFER, key, (t.id,))
            self._note(K_INDEX, dr_key + ts_key, (t.debit_account_id,))
            self._note(K_INDEX, cr_key + ts_key, (t.credit_account_id,))

    def _post_or_void(self, txn: lmdb.Transaction, t: Transfer, key: bytes, ctx: _Context) -> int:
        pid = t.pending_id
        pkey = _key(pid)
        p = self._stored_transfer(txn, pkey)
        if p is None:
            return _TR.pending_transfer_not_found
        if self._fence is not None:  # the request may name no account: the pending transfer's decide
            fenced = self._fence_state((p.debit_account_id, p.credit_account_id))
            if fenced:
                return _TR.slot_moved if fenced == MOVED else _TR.slot_moving
        if not p.flags & _T_PENDING:
            return _TR.pending_transfer_not_pending
        xp = txn.get(pkey, db=self._xpending)
        if xp is None:
            expires_at = p.timestamp + p.timeout * NS_PER_SECOND if p.timeout else 0
        else:  # created by a cross-shard txn
            sides, expires_at = _XPENDING.unpack(xp)
            if sides != SIDE_BOTH:
                return _TR.accounts_on_different_shards
        code, amount = _check_post_void(t, p)
        if code:
            return code
        code = self._pending_state(txn, pkey)
        if code:
            return code
        if expires_at and expires_at <= ctx.base:
            return _TR.pending_transfer_expired
        post = t.flags & _T_POST
        dr = self._account(txn, p.debit_account_id, ctx)
        cr = self._account(txn, p.credit_account_id, ctx)
        if dr is None or cr is None:
            raise InvariantViolation(f"accounts of pending transfer {pid} are missing")
        if post:
            code = _check_closed(dr, cr)
            if code:
                return code

        self._touch(dr, ctx)
        self._touch(cr, ctx)
        dr.debits_pending -= p.amount
        cr.credits_pending -= p.amount
        if post:
            dr.debits_posted += amount
            cr.credits_posted += amount
        ts = ctx.next_ts
        ctx.next_ts = ts + 1
        record = _posting_record(t, p, amount, ts)
        self._store(txn, key, record, _key(p.debit_account_id), _key(p.credit_account_id))
        txn.put(pkey, _STATUS.pack(STATUS_POSTED if post else STATUS_VOIDED, amount), db=self._pending)
        if expires_at:
            txn.delete(expires_at.to_bytes(8, "big") + pkey, db=self._expiry)
        return T_OK

    def _pending_state(self, txn: lmdb.Transaction, pkey: bytes) -> int:
        """Why a stored pending transfer can no longer be posted or voided (0: it can): its status, or the lock
        of a PREPARED txn posting or voiding it."""
        status_raw = txn.get(pkey, db=self._pending)
        if status_raw is None:
            raise InvariantViolation(f"pending transfer {pkey.hex()} has no status")
        status = status_raw[0]
        if status == STATUS_POSTED:
            return _TR.pending_transfer_already_posted
        if status == STATUS_VOIDED:
            return _TR.pending_transfer_already_voided
        if status == STATUS_EXPIRED:
            return _TR.pending_transfer_expired
        lock = txn.get(pkey, db=self._locks)
        if lock is not None:
            return _lock_refusal(lock)
        return 0

    # ------------------------------------------------- cross-shard transactions

    def _txn_items(
        self,
        txn: lmdb.Transaction,
        items: Sequence,
        ctx: _Context,
        step: Callable[..., Any],
        error: Any,
    ) -> list[Any]:
        """Run a 2PC step per item, each in its own nested txn: a bug fails only its item."""
        n = len(items)
        if n > BATCH_ITEMS_MAX:
            raise InvariantViolation(f"operation of {n} items exceeds BATCH_ITEMS_MAX")
        out: list[Any] = []
        for item in items:
            sub = _Context(ctx.base, ctx.next_ts)
            result = self._run_guarded(txn, "2pc step", functools.partial(step, item=item, ctx=sub))
            if result is None:
                result = error
            else:
                ctx.next_ts = sub.next_ts
            out.append(result)
        return out

    # -- PREPARE

    def _prepare(self, txn: lmdb.Transaction, item: Prepare, ctx: _Context) -> Vote:
        txid = item.txid
        if not 0 < txid < U128_MAX:
            log.critical("PREPARE with invalid txid %r refused", txid)
            return _VOTE_ERROR
        tkey = _key(txid)
        raw = txn.get(tkey, db=self._txns)
        if raw is not None:
            state = raw[0]
            if state == TXN_PREPARED or state == TXN_COMMITTED:
                return _VOTE_YES
            if state == TXN_VOTED_NO:
                _, index, code = _VOTED_NO.unpack(raw)
                return Vote(False, index, code)
            return _VOTE_ABORTED  # aborted after preparing, or an abort tombstone
        problem = _malformed_prepare(item)
        if problem:
            log.critical("PREPARE of txid %d refused: %s", txid, problem)
            return _VOTE_ERROR
        if self._fence is not None:
            # A slot it names is moving (or has left): busy, recorded nowhere, so the coordinator aborts this
            # attempt and tries again, by then with the slot's new shard.
            if item.trade is not None and self._fence_state((item.trade.trade_id,)):
                return Vote(False, TRADE_STEP_INDEX, 0)
            for leg in item.legs:  # only what lives here: a side's account, the id if this is its home
                t, sides = leg.transfer, leg.sides
                if self._fence_state((t.debit_account_id if sides & SIDE_DEBIT else 0,
                                      t.credit_account_id if sides & SIDE_CREDIT else 0,
                                      t.id if sides & SIDE_HOME else 0)):
                    return Vote(False, leg.index, 0)
        child = self._env.begin(write=True, parent=txn)
        try:
            failed = self._prepare_legs(child, item, tkey, ctx)
        except BaseException:
            child.abort()
            raise
        if failed is None:
            child.commit()
            return _VOTE_YES
        child.abort()
        index, code = failed
        txn.put(tkey, _VOTED_NO.pack(TXN_VOTED_NO, index, code), db=self._txns)
        if code in _TRANSFER_STATE_FAILURES:  # the home of the failing leg's id keeps it failed
            for leg in item.legs:
                if leg.index == index and leg.sides & SIDE_HOME:
                    txn.put(_key(leg.transfer.id), _ID_FAILED_TAG + bytes((code,)), db=self._transfers)
                    if self._tracking is not None:
                        self._note(K_TRANSFER, _key(leg.transfer.id), (leg.transfer.id,))
        return Vote(False, index, code)

    def _prepare_legs(self, txn: lmdb.Transaction, item: Prepare, tkey: bytes, ctx: _Context) -> tuple[int, int] | None:
        """Check and reserve every leg; (failed_index, code) at the first failure (caller rolls back)."""
        earlier: dict[int, _Plan] = {}  # transfer id -> plan of an earlier leg of this group
        plans: list[_Plan] = []
        if item.trade is not None:
            failed = self._prepare_trade(txn, item, tkey, ctx)
            if failed is not None:
                return failed
            ctx.escrow = True
        ctx.group = posting_credits, posting_debits, credits, debits = {}, {}, {}, {}
        for leg in item.legs:
            code, plan = self._prepare_leg(txn, tkey, leg, ctx, earlier)
            if code:
                return leg.index, 0 if code == _LEG_BUSY else int(code)
            assert plan is not None
            earlier[plan.record.id] = plan
            plans.append(plan)
        ctx.group = None
        # The allowance: what this txn both credits (posting) and debits on a limited account.
        funds: list[tuple[int, int, int]] = []
        for account_id in sorted(credits.keys() & debits.keys()):
            flags = ctx.accounts[account_id].flags
            fund = (
                min(posting_credits.get(account_id, 0), debits[account_id]) if flags & _A_DMNEC else 0,
                min(posting_debits.get(account_id, 0), credits[account_id]) if flags & _A_CMNED else 0,
            )
            if any(fund):
                funds.append((account_id, *fund))
                self._add_fund(txn, account_id, *fund)
        self._flush(txn, ctx)
        parts = [_PREPARED_HEAD.pack(TXN_PREPARED, item.coordinator_shard, ctx.base, item.group_size, len(plans))]
        for plan in plans:
            parts.append(_LEG_REC.pack(plan.index, plan.sides, plan.kind, plan.amount))
            parts.append(pack_transfer(plan.record))
        parts.append(_U32.pack(len(funds)))
        parts.extend(_FUND_REC.pack(a & U64_MAX, a >> 64, cf, df) for a, cf, df in funds)
        if item.trade is not None:
            parts.append(pack_trade_step(item.trade))
        txn.put(tkey, b"".join(parts), db=self._txns)
        txn.put(ctx.base.to_bytes(8, "big") + tkey, _U32.pack(item.coordinator_shard), db=self._txn_prepared)
        for plan in plans:
            txn.put(_key(plan.record.id), _ID_RESERVED_TAG + tkey, db=self._transfers)
            if self._tracking is not None:
                self._note(K_TRANSFER, _key(plan.record.id), (plan.record.id,))
        return None

    def _prepare_leg(
        self, txn: lmdb.Transaction, tkey: bytes, leg: Leg, ctx: _Context, earlier: dict[int, _Plan]
    ) -> tuple[int, _Plan | None]:
        """Check and reserve one leg with the single-shard rules of the side(s) that live here."""
        t = leg.transfer
        code = _static_check(t)
        if code:
            return code, None
        flags = t.flags
        if flags & _T_BALANCING:
            return _TR.accounts_on_different_shards, None  # a balancing amount needs both balances
        sides = leg.sides & SIDE_BOTH
        if not ctx.escrow and (
            (sides & SIDE_DEBIT and is_system_account(t.debit_account_id))
            or (sides & SIDE_CREDIT and is_system_account(t.credit_account_id))
        ):
            return _TR.account_reserved_for_escrow, None
        tid = t.id
        key = _key(tid)
        same = earlier.get(tid)
        if same is not None:
            return _transfer_exists(t, same.record), None
        # Named by another PREPARED txn (maybe an earlier attempt): outcome unknown, busy.
        code = self._id_taken(txn, t, key, _LEG_BUSY)
        if code:
            return code, None
        if not sides:  # an id-only leg: this shard is the id's home, the accounts live elsewhere
            return 0, _Plan(leg.index, leg.sides, LEG_ID, 0, _with(t, timestamp=0))
        if flags & _T_POST_VOID:
            return self._prepare_post_void(txn, tkey, leg, ctx, earlier)

        d = t.debit_account_id
        c = t.credit_account_id
        dr = cr = None
        if sides & SIDE_DEBIT:
            dr = self._account(txn, d, ctx)
            if dr is None:
                return _TR.debit_account_not_found, None
        if sides & SIDE_CREDIT:
            cr = self._account(txn, c, ctx)
            if cr is None:
                return _TR.credit_account_not_found, None
        amount = t.amount
        pending = flags & _T_PENDING
        # Reservations count as pending: concurrent txns can never overdraw together. The
        # posting credits (debits) this group's earlier legs reserved count as posted.
        group = ctx.group if ctx.group is not None else ({}, {}, {}, {})
        group_credits, group_debits, all_credits, all_debits = group
        code = (_check_accounts(t, dr, cr) or _check_amount(dr, cr, amount, pending, t.timeout, ctx.base)
                or _check_limits(dr, cr, amount, group_credits.get(d, 0), group_debits.get(c, 0)))
        if code:
            return code, None

        x = ctx.xd(t.ledger)
        if dr is not None:
            self._touch(dr, ctx)
            dr.debits_pending += amount
            x[_X_RES_D] += amount
            if cr is None:
                x[_X_REM_DP] += amount
            all_debits[d] = all_debits.get(d, 0) + amount
            if not pending:
                group_debits[d] = group_debits.get(d, 0) + amount
        if cr is not None:
            self._touch(cr, ctx)
            cr.credits_pending += amount
            x[_X_RES_C] += amount
            if dr is None:
                x[_X_REM_CP] += amount
            all_credits[c] = all_credits.get(c, 0) + amount
            if not pending:
                group_credits[c] = group_credits.get(c, 0) + amount
        record = Transfer(
            tid, d, c, amount, 0, t.user_data_128, t.user_data_64, t.user_data_32,
            t.timeout, t.ledger, t.code, flags, 0,
        )  # fmt: skip
        return 0, _Plan(leg.index, leg.sides, LEG_PENDING if pending else LEG_PLAIN, amount, record)

    def _prepare_post_void(
        self, txn: lmdb.Transaction, tkey: bytes, leg: Leg, ctx: _Context, earlier: dict[int, _Plan]
    ) -> tuple[int, _Plan | None]:
        """A post/void leg: the single-shard checks, then lock the pending transfer for this txn."""
        t = leg.transfer
        pid = t.pending_id
        pkey = _key(pid)
        in_group = earlier.get(pid)  # a pending transfer created by an earlier leg of this group
        if in_group is not None:
            p = in_group.record
            p_sides = in_group.sides & SIDE_BOTH
            expires_at = 0  # created at commit: cannot have expired yet
        else:
            p = self._stored_transfer(txn, pkey)
            if p is None:
                return _TR.pending_transfer_not_found, None
            if self._fence is not None and self._fence_state((
                    p.debit_account_id if leg.sides & SIDE_DEBIT else 0,
                    p.credit_account_id if leg.sides & SIDE_CREDIT else 0)):
                return _LEG_BUSY, None  # the side of it that lives here is moving
            xp = txn.get(pkey, db=self._xpending)
            if xp is None:
                p_sides = SIDE_BOTH
                expires_at = p.timestamp + p.timeout * NS_PER_SECOND if p.timeout else 0
            else:
                p_sides, expires_at = _XPENDING.unpack(xp)
        code, amount = _check_post_void(t, p)
        if code:
            return code, None
        if in_group is not None:
            if in_group.group_status == STATUS_POSTED:
                return _TR.pending_transfer_already_posted, None
            if in_group.group_status == STATUS_VOIDED:
                return _TR.pending_transfer_already_voided, None
        else:
            code = self._pending_state(txn, pkey)
            if code:
                return code, None
        sides = leg.sides & SIDE_BOTH
        if p_sides != sides:
            log.critical(
                "PREPARE leg %d posts/voids pending transfer %d with sides %d, but its sides here are %d",
                leg.index, pid, sides, p_sides,
            )  # fmt: skip
            return _TR.internal_error, None
        if expires_at and expires_at <= ctx.base:
            return _TR.pending_transfer_expired, None
        post = t.flags & _T_POST
        if post:
            dr = cr = None
            if p_sides & SIDE_DEBIT:
                dr = self._account(txn, p.debit_account_id, ctx)
                if dr is None:
                    raise InvariantViolation(f"debit account of pending transfer {pid} is missing")
            if p_sides & SIDE_CREDIT:
                cr = self._account(txn, p.credit_account_id, ctx)
                if cr is None:
                    raise InvariantViolation(f"credit account of pending transfer {pid} is missing")
            code = _check_closed(dr, cr)
            if code:
                return code, None
        kind = LEG_POST if post else LEG_VOID
        if in_group is not None:
            in_group.group_status = STATUS_POSTED if post else STATUS_VOIDED
        else:
            txn.put(pkey, tkey + bytes((kind,)), db=self._locks)
        return 0, _Plan(leg.index, leg.sides, kind, amount, _posting_record(t, p, amount, 0))

    # -- FINISH

    def _finish(self, txn: lmdb.Transaction, item: Finish, ctx: _Context) -> int:
        txid = item.txid
        commit = bool(item.commit)
        if not 0 < txid < U128_MAX:
            log.critical("FINISH with invalid txid %r refused", txid)
            return FINISH_INTERNAL_ERROR
        if commit and not 0 < item.commit_timestamp <= U64_MAX:
            log.critical("FINISH(commit) of txid %d with invalid commit_timestamp %r", txid, item.commit_timestamp)
            return FINISH_INTERNAL_ERROR
        tkey = _key(txid)
        raw = txn.get(tkey, db=self._txns)
        if raw is None:
            if commit:
                log.critical("FINISH(commit) of txid %d that was never prepared here: nothing changed", txid)
            else:
                txn.put(tkey, bytes((TXN_TOMBSTONE,)), db=self._txns)
            return FINISH_UNKNOWN_TXID
        state = raw[0]
        if state != TXN_PREPARED:
            if (state == TXN_COMMITTED) == commit:
                return FINISH_ALREADY
            log.critical(
                "FINISH(%s) of txid %d that is already %s here: nothing changed",
                "commit" if commit else "abort", txid, _TXN_STATE_NAMES.get(state, state),
            )  # fmt: skip
            return FINISH_CONFLICT
        _, prepared_at, plans, funds, trade_step = _unpack_prepared(raw)
        committed_trade: Trade | None = None
        for account_id, credit_fund, debit_fund in funds:
            self._add_fund(txn, account_id, -credit_fund, -debit_fund)
        if commit:
            self._commit_legs(txn, plans, item.commit_timestamp, ctx)
            if trade_step is not None:
                committed_trade = self._commit_trade(txn, trade_step, tkey, item.commit_timestamp)
            txn.put(tkey, _COMMITTED.pack(TXN_COMMITTED, item.commit_timestamp), db=self._txns)
        else:
            self._release_legs(txn, plans, ctx)
            if trade_step is not None:
                self._unlock_trade(txn, trade_step.command.trade_id, tkey)
            txn.put(tkey, bytes((TXN_ABORTED,)), db=self._txns)
        for plan in plans:
            if plan.kind == LEG_POST or plan.kind == LEG_VOID:
                pkey = _key(plan.record.pending_id)
                lock = txn.get(pkey, db=self._locks)
                if lock is not None and lock[:16] == tkey:
                    txn.delete(pkey, db=self._locks)
            if not commit:  # a commit stored the transfer (or its home record) over the reservation
                key = _key(plan.record.id)
                if txn.get(key, db=self._transfers) != _ID_RESERVED_TAG + tkey:
                    raise InvariantViolation(f"transfer id {plan.record.id} is not reserved by txn {txid}")
                if plan.sides & SIDE_HOME and plan.index == item.failed_index and item.failed_code in \
                        _TRANSFER_STATE_FAILURES:
                    txn.put(key, _ID_FAILED_TAG + bytes((item.failed_code,)), db=self._transfers)
                else:
                    txn.delete(key, db=self._transfers)
                if self._tracking is not None:
                    self._note(K_TRANSFER, key, (plan.record.id,))
        if not txn.delete(prepared_at.to_bytes(8, "big") + tkey, db=self._txn_prepared):
            raise InvariantViolation(f"prepared txn {txid} is missing from the prepared index")
        self._flush(txn, ctx)
        if committed_trade is not None:
            self._check_escrow_slot(txn, committed_trade)
        return FINISH_APPLIED

    def _commit_legs(self, txn: lmdb.Transaction, plans: list[_Plan], commit_ts: int, ctx: _Context) -> None:
        for plan in plans:
            rec = plan.record
            sides = plan.sides
            kind = plan.kind
            amount = plan.amount
            if kind == LEG_ID:  # this shard is the id's home only: it keeps the request, for idempotency
                txn.put(_key(rec.id), _ID_HOME_TAG + pack_transfer(rec), db=self._transfers)
                if self._tracking is not None:
                    self._note(K_TRANSFER, _key(rec.id), (rec.id,))
                continue
            sides &= SIDE_BOTH
            one_sided = sides != SIDE_BOTH
            x = ctx.xd(rec.ledger)
            if kind == LEG_PLAIN:
                if sides & SIDE_DEBIT:
                    dr = self._leg_account(txn, rec.debit_account_id, ctx)
                    dr.debits_pending -= amount
                    dr.debits_posted += amount
                    x[_X_RES_D] -= amount
                    if one_sided:
                        x[_X_REM_DP] -= amount
                        x[_X_REM_DPO] += amount
                if sides & SIDE_CREDIT:
                    cr = self._leg_account(txn, rec.credit_account_id, ctx)
                    cr.credits_pending -= amount
                    cr.credits_posted += amount
                    x[_X_RES_C] -= amount
                    if one_sided:
                        x[_X_REM_CP] -= amount
                        x[_X_REM_CPO] += amount
            elif kind == LEG_PENDING:
                # The hold stays; it is no longer a reservation but a pending transfer.
                if sides & SIDE_DEBIT:
                    x[_X_RES_D] -= amount
                if sides & SIDE_CREDIT:
                    x[_X_RES_C] -= amount
                pkey = _key(rec.id)
                expires_at = min(commit_ts + rec.timeout * NS_PER_SECOND, U64_MAX) if rec.timeout else 0
                txn.put(pkey, _STATUS.pack(STATUS_PENDING, amount), db=self._pending)
                txn.put(pkey, _XPENDING.pack(sides, expires_at), db=self._xpending)
                if expires_at:
                    txn.put(expires_at.to_bytes(8, "big") + pkey, b"", db=self._expiry)
            else:
                post = kind == LEG_POST
                pkey = _key(rec.pending_id)
                p = self._stored_transfer(txn, pkey)
                status_raw = txn.get(pkey, db=self._pending)
                if p is None or status_raw is None or status_raw[0] != STATUS_PENDING:
                    raise InvariantViolation(f"locked pending transfer {rec.pending_id} is not pending at commit")
                xp = txn.get(pkey, db=self._xpending)
                if xp is None:
                    p_sides = SIDE_BOTH
                    expires_at = p.timestamp + p.timeout * NS_PER_SECOND if p.timeout else 0
                else:
                    p_sides, expires_at = _XPENDING.unpack(xp)
                if p_sides != sides:
                    raise InvariantViolation(f"pending transfer {p.id} changed sides while locked")
                self._release_pending(txn, p, sides, amount if post else 0, ctx)
                txn.put(pkey, _STATUS.pack(STATUS_POSTED if post else STATUS_VOIDED, amount), db=self._pending)
                if expires_at:
                    txn.delete(expires_at.to_bytes(8, "big") + pkey, db=self._expiry)
            ts = ctx.next_ts
            ctx.next_ts = ts + 1
            rec.timestamp = ts
            key = _key(rec.id)
            txn.put(key, pack_transfer(rec), db=self._transfers)
            ts_key = ts.to_bytes(8, "big")
            if sides & SIDE_DEBIT:
                txn.put(_key(rec.debit_account_id) + ts_key, _SIDE_DEBIT + key, db=self._account_transfers)
            if sides & SIDE_CREDIT:
                txn.put(_key(rec.credit_account_id) + ts_key, _SIDE_CREDIT + key, db=self._account_transfers)
            if self._tracking is not None:
                self._note(K_TRANSFER, key, (rec.id,))
                if sides & SIDE_DEBIT:
                    self._note(K_INDEX, _key(rec.debit_account_id) + ts_key, (rec.debit_account_id,))
                if sides & SIDE_CREDIT:
                    self._note(K_INDEX, _key(rec.credit_account_id) + ts_key, (rec.credit_account_id,))

    def _release_legs(self, txn: lmdb.Transaction, plans: list[_Plan], ctx: _Context) -> None:
        for plan in plans:
            if plan.kind != LEG_PLAIN and plan.kind != LEG_PENDING:
                continue  # post/void legs only hold a lock, id-only legs a reservation
            rec = plan.record
            sides = plan.sides & SIDE_BOTH
            amount = plan.amount
            x = ctx.xd(rec.ledger)
            if sides & SIDE_DEBIT:
                dr = self._leg_account(txn, rec.debit_account_id, ctx)
                dr.debits_pending -= amount
                x[_X_RES_D] -= amount
                if sides == SIDE_DEBIT:
                    x[_X_REM_DP] -= amount
            if sides & SIDE_CREDIT:
                cr = self._leg_account(txn, rec.credit_account_id, ctx)
                cr.credits_pending -= amount
                x[_X_RES_C] -= amount
                if sides == SIDE_CREDIT:
                    x[_X_REM_CP] -= amount

    def _add_fund(self, txn: lmdb.Transaction, account_id: int, credit_fund: int, debit_fund: int) -> None:
        key = _key(account_id)
        raw = txn.get(key, db=self._xfund)
        cf, df = (0, 0) if raw is None else _FUND.unpack(raw)
        cf += credit_fund
        df += debit_fund
        if cf < 0 or df < 0:
            raise InvariantViolation(f"account {account_id} limit allowance below zero: {cf}, {df}")
        if cf or df:
            txn.put(key, _FUND.pack(cf, df), db=self._xfund)
        else:
            txn.delete(key, db=self._xfund)

    def _fund(self, txn: lmdb.Transaction, account_id: int) -> tuple[int, int]:
        """How far PREPARED txns that both credit and debit the account may hold it past its limit."""
        raw = txn.get(_key(account_id), db=self._xfund)
        return (0, 0) if raw is None else _FUND.unpack(raw)

    def _leg_account(self, txn: lmdb.Transaction, account_id: int, ctx: _Context) -> Account:
        a = self._account(txn, account_id, ctx)
        if a is None:
            raise InvariantViolation(f"account {account_id} of a prepared leg is missing")
        self._touch(a, ctx)
        return a

    # -- one-participant groups

    def _commit_local(self, txn: lmdb.Transaction, item: Prepare, ctx: _Context) -> Vote | None:
        """PREPARE then, if it votes yes, FINISH(commit) at this entry's cluster time; one txn for both."""
        child = self._env.begin(write=True, parent=txn)
        try:
            vote = self._prepare(child, item, ctx)
            if vote.prepared:
                # A fresh context: the PREPARE's has already flushed its accounts.
                finish_ctx = _Context(ctx.base, ctx.next_ts)
                status = self._finish(child, Finish(item.txid, True, ctx.base), finish_ctx)
                if status not in (FINISH_APPLIED, FINISH_ALREADY):
                    raise InvariantViolation(f"local commit of txid {item.txid} finished with status {status}")
                ctx.next_ts = finish_ctx.next_ts
        except BaseException:
            child.abort()
            raise
        if not vote.prepared and vote.code == 0:
            child.abort()  # busy: nothing recorded, so the same step can run again
        else:
            child.commit()
        return vote

    # -- escrow steps (the trade part of a PREPARE / FINISH on the trade's shard)

    def _prepare_trade(
        self, txn: lmdb.Transaction, item: Prepare, tkey: bytes, ctx: _Context
    ) -> tuple[int, int] | None:
        """Check the trade step and lock the trade; (TRADE_STEP_INDEX, code) if it cannot prepare (code 0: busy)."""
        step = item.trade
        assert step is not None
        cmd = step.command
        trade_key = _key(cmd.trade_id)
        if txn.get(trade_key, db=self._trade_locks) is not None:
            return TRADE_STEP_INDEX, 0  # another step of this trade is prepared: retry after it finished
        raw = txn.get(trade_key, db=self._trades)
        trade = None if raw is None else unpack_trade(raw)
        if (0 if trade is None else trade.version) != step.expected_version:
            return TRADE_STEP_INDEX, 0  # planned on another version: re-plan
        verdict = escrow.evaluate(trade, cmd, ctx.base)
        if verdict.code == escrow.NOT_DUE:
            return TRADE_STEP_INDEX, 0
        if verdict.code != escrow.OK:
            return TRADE_STEP_INDEX, verdict.code
        planned = escrow.legs(trade, cmd, verdict, self._slot_count)
        given = [leg.transfer for leg in item.legs]
        if (
            given != planned
            or item.group_size != len(planned)
            or [leg.index for leg in item.legs] != list(range(len(planned)))
            or any(not _system_sides_here(leg) for leg in item.legs)
        ):
            log.critical("PREPARE of txid %d: legs of trade %d step %d are not the rules' legs", item.txid,
                         cmd.trade_id, cmd.kind)
            return TRADE_STEP_INDEX, int(TradeResult.internal_error)
        ledger = cmd.ledger if trade is None else trade.ledger
        escrow_id, fee_id = escrow.system_accounts(cmd.trade_id, ledger, self._slot_count)
        touched = {a for t in planned for a in (t.debit_account_id, t.credit_account_id)}
        for account_id, code in ((escrow_id, escrow.ESCROW_ACCOUNT_CODE), (fee_id, escrow.FEE_ACCOUNT_CODE)):
            if account_id in touched:
                self._ensure_system_account(txn, account_id, ledger, code, ctx)
        txn.put(trade_key, tkey, db=self._trade_locks)
        return None

    def _ensure_system_account(self, txn: lmdb.Transaction, account_id: int, ledger: int, code: int,
                               ctx: _Context) -> None:
        """Escrow and fee accounts are opened on first use; they can never hold less than nothing."""
        key = _key(account_id)
        if txn.get(key, db=self._accounts) is not None:
            return
        ts = ctx.next_ts
        ctx.next_ts = ts + 1
        record = Account(account_id, ledger=ledger, code=code, flags=_A_DMNEC, timestamp=ts)
        txn.put(key, pack_account(record), db=self._accounts)
        if self._tracking is not None:
            self._note(K_ACCOUNT, key, (account_id,))
        txn.put(ledger.to_bytes(4, "big"), _ZERO_TOTALS, db=self._totals, overwrite=False)

    def _unlock_trade(self, txn: lmdb.Transaction, trade_id: int, tkey: bytes) -> None:
        key = _key(trade_id)
        if txn.get(key, db=self._trade_locks) != tkey:
            raise InvariantViolation(f"trade {trade_id} is not locked by the txn finishing it")
        txn.delete(key, db=self._trade_locks)

    def _commit_trade(self, txn: lmdb.Transaction, step: TradeStep, tkey: bytes, commit_ts: int) -> Trade:
        """Apply a prepared escrow step: the new trade record, its timer, indexes and books; returns the trade."""
        cmd = step.command
        key = _key(cmd.trade_id)
        self._unlock_trade(txn, cmd.trade_id, tkey)
        raw = txn.get(key, db=self._trades)
        old = None if raw is None else unpack_trade(raw)
        if (0 if old is None else old.version) != step.expected_version:
            raise InvariantViolation(f"trade {cmd.trade_id} changed while locked")
        new = escrow.commit(old, cmd, commit_ts)
        held = new.held
        if not 0 <= held <= new.amount or min(new.refunded, new.released, new.fee) < 0:
            raise InvariantViolation(f"trade {new.id} money out of range: {new}")
        if (new.state in TERMINAL) != (held == 0):
            raise InvariantViolation(f"trade {new.id} is {new.state} holding {held}")
        txn.put(key, pack_trade(new), db=self._trades)
        if old is not None and old.deadline:
            txn.delete(old.deadline.to_bytes(8, "big") + key, db=self._timers)
        if new.deadline:
            txn.put(new.deadline.to_bytes(8, "big") + key, bytes((new.timer,)), db=self._timers)
        if old is None:
            created = new.created_at.to_bytes(8, "big")
            txn.put(_key(new.buyer_account_id) + created + key, b"", db=self._by_buyer)
            txn.put(_key(new.seller_account_id) + created + key, b"", db=self._by_seller)
        self._book_trade(txn, old, new)
        return new

    def _book_trade(self, txn: lmdb.Transaction, old: Trade | None, new: Trade) -> None:
        """Fold a trade's change into its slot's book (checked against the accounts) and its ledger's totals."""
        held_delta = new.held - (0 if old is None else old.held)
        fee_delta = new.fee - (0 if old is None else old.fee)
        slot_key = new.ledger.to_bytes(4, "big") + slot_of(new.id, self._slot_count).to_bytes(2, "big")
        raw = txn.get(slot_key, db=self._escrow_slots)
        held, fees = (0, 0) if raw is None else _SLOT_BOOK.unpack(raw)
        held += held_delta
        fees += fee_delta
        if not (0 <= held <= U64_MAX and 0 <= fees <= U64_MAX):
            raise InvariantViolation(f"escrow slot book out of range: held {held}, fees {fees}")
        txn.put(slot_key, _SLOT_BOOK.pack(held, fees), db=self._escrow_slots)
        lkey = new.ledger.to_bytes(4, "big")
        totals = _unpack_escrow_totals(txn.get(lkey, db=self._escrow_totals))
        totals["released"] += new.released - (0 if old is None else old.released)
        totals["refunded"] += new.refunded - (0 if old is None else old.refunded)
        if old is not None:
            totals[_STATE_COUNTER[old.state]] -= 1
        totals[_STATE_COUNTER[new.state]] += 1
        if min(totals.values()) < 0:
            raise InvariantViolation(f"escrow totals of ledger {new.ledger} below zero: {totals}")
        txn.put(lkey, _pack_escrow_totals(totals), db=self._escrow_totals)

    def _check_escrow_slot(self, txn: lmdb.Transaction, trade: Trade) -> None:
        """The escrow (fee) account of a trade's slot holds exactly what that slot's trades hold (took as fees)."""
        trade_id, ledger = trade.id, trade.ledger
        slot = slot_of(trade_id, self._slot_count)
        book = txn.get(ledger.to_bytes(4, "big") + slot.to_bytes(2, "big"), db=self._escrow_slots)
        held, fees = (0, 0) if book is None else _SLOT_BOOK.unpack(book)
        escrow_id, fee_id = escrow.system_accounts(trade_id, ledger, self._slot_count)
        for account_id, expected, what in ((escrow_id, held, "held"), (fee_id, fees, "fees")):
            raw_account = txn.get(_key(account_id), db=self._accounts)
            a = None if raw_account is None else unpack_account(raw_account)
            balance = 0 if a is None else a.credits_posted - a.debits_posted
            if balance != expected:
                raise InvariantViolation(f"ledger {ledger} slot {slot}: account {account_id} has {balance}, "
                                         f"its trades' {what} are {expected}")

    # -- DECIDE

    def _decide(self, txn: lmdb.Transaction, item: Decide, ctx: _Context) -> Decision:
        txid = item.txid
        if not 0 < txid < U128_MAX:
            log.critical("DECIDE with invalid txid %r refused", txid)
            return _DECISION_ERROR
        tkey = _key(txid)
        raw = txn.get(tkey, db=self._decisions)
        if raw is not None:
            return _unpack_decision(raw)[0]
        if len(item.participants) > PARTICIPANTS_MAX or len(item.transfer_ids) > BATCH_ITEMS_MAX:
            log.critical(
                "DECIDE of txid %d names %d participants and %d transfers: refused",
                txid, len(item.participants), len(item.transfer_ids),
            )  # fmt: skip
            return _DECISION_ERROR
        ts = ctx.base
        txn.put(tkey, _U64.pack(ts) + pack_decide(item), db=self._decisions)
        if self._tracking is not None:
            self._note(K_DECISION, tkey)
        return Decision(bool(item.commit), item.failed_index, item.failed_code, ts)

    # ----------------------------------------------------------------- expiry

    def _expiry_due(self, txn: lmdb.Transaction, now_ns: int) -> bool:
        """Whether the earliest pending timeout has passed (the sweep then runs; it skips what is locked)."""
        with txn.cursor(db=self._expiry) as cursor:
            return cursor.first() and int.from_bytes(cursor.key()[:8], "big") <= now_ns

    def _expire(self, txn: lmdb.Transaction, ctx: _Context) -> int:
        """Release pending transfers whose timeout passed, earliest first, at most EXPIRE_PER_APPLY_MAX.

        Pending transfers locked by a PREPARED txn are skipped (they are posted or
        voided by its FINISH, or expire after the unlock).
        """
        due: list[bytes] = []
        cursor = txn.cursor(db=self._expiry)
        locks = self._locks
        if cursor.first():
            scanned = 0
            for k in cursor.iternext(keys=True, values=False):
                if (
                    int.from_bytes(k[:8], "big") > ctx.base
                    or len(due) >= EXPIRE_PER_APPLY_MAX
                    or scanned >= EXPIRE_SCAN_MAX
                ):
                    break
                scanned += 1
                if txn.get(k[8:], db=locks) is None and not self._pending_fenced(txn, k[8:], self._fence):
                    due.append(k)
        cursor.close()
        for k in due:
            pkey = k[8:]
            raw = txn.get(pkey, db=self._transfers)
            status_raw = txn.get(pkey, db=self._pending)
            if raw is None or status_raw is None or status_raw[0] != STATUS_PENDING:
                raise InvariantViolation(f"expiry index names a transfer that is not pending: {pkey.hex()}")
            p = unpack_transfer(raw)
            xp = txn.get(pkey, db=self._xpending)
            sides = SIDE_BOTH if xp is None else xp[0]
            self._release_pending(txn, p, sides, 0, ctx)
            txn.put(pkey, _STATUS.pack(STATUS_EXPIRED, p.amount), db=self._pending)
            txn.delete(k, db=self._expiry)
        self._flush(txn, ctx)
        return len(due)

    def _pending_fenced(self, txn: lmdb.Transaction, pkey: bytes, fence: bytes | None) -> bool:
        """Whether a pending transfer's accounts are in a slot moving off (or gone from) this shard: it does not
        expire here then (the move copies it as it is; the shard that takes it expires it)."""
        if fence is None:
            return False
        raw = txn.get(pkey, db=self._transfers)
        if raw is None or len(raw) != TRANSFER_SIZE:
            return False
        p = unpack_transfer(raw)
        xp = txn.get(pkey, db=self._xpending)
        sides = SIDE_BOTH if xp is None else xp[0]  # only the sides that live here
        return bool(self._fence_state((p.debit_account_id if sides & SIDE_DEBIT else 0,
                                       p.credit_account_id if sides & SIDE_CREDIT else 0), fence))

    def _release_pending(self, txn: lmdb.Transaction, p: Transfer, sides: int, posted: int, ctx: _Context) -> None:
        """Drop pending transfer p's hold on the local side(s), posting `posted` of it (0 for void/expiry)."""
        amount = p.amount
        one_sided = sides != SIDE_BOTH
        x = ctx.xd(p.ledger) if one_sided else None
        if sides & SIDE_DEBIT:
            dr = self._account(txn, p.debit_account_id, ctx)
            if dr is None:
                raise InvariantViolation(f"debit account of pending transfer {p.id} is missing")
            self._touch(dr, ctx)
            dr.debits_pending -= amount
            dr.debits_posted += posted
            if x is not None:
                x[_X_REM_DP] -= amount
                x[_X_REM_DPO] += posted
        if sides & SIDE_CREDIT:
            cr = self._account(txn, p.credit_account_id, ctx)
            if cr is None:
                raise InvariantViolation(f"credit account of pending transfer {p.id} is missing")
            self._touch(cr, ctx)
            cr.credits_pending -= amount
            cr.credits_posted += posted
            if x is not None:
                x[_X_REM_CP] -= amount
                x[_X_REM_CPO] += posted

    # ------------------------------------------------------ write back + checks

    def _flush(self, txn: lmdb.Transaction, ctx: _Context) -> None:
        """Write changed accounts back once, fold their deltas into ledger totals, check invariants."""
        if not ctx.dirty and not ctx.x:
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
            if a.flags & _A_DMNEC and dp + dpo > cpo and dp + dpo > cpo + self._fund(txn, acct_id)[0]:
                raise InvariantViolation(f"account {acct_id} debits exceed credits: {a}")
            if a.flags & _A_CMNED and cp + cpo > dpo and cp + cpo > dpo + self._fund(txn, acct_id)[1]:
                raise InvariantViolation(f"account {acct_id} credits exceed debits: {a}")
            o = ctx.original[acct_id]
            if (dp, dpo, cp, cpo) == o:
                continue
            txn.put(_key(acct_id), pack_account(a), db=accounts_db)
            if self._tracking is not None:
                self._note(K_ACCOUNT, _key(acct_id), (acct_id,))
            d = deltas.get(a.ledger)
            if d is None:
                d = deltas[a.ledger] = [0] * 10
            d[0] += dp - o[0]
            d[1] += dpo - o[1]
            d[2] += cp - o[2]
            d[3] += cpo - o[3]
        for ledger, xd in ctx.x.items():
            d = deltas.get(ledger)
            if d is None:
                d = deltas[ledger] = [0] * 10
            for i in range(6):
                d[4 + i] += xd[i]
        self._add_totals(txn, deltas)
        ctx.dirty.clear()
        ctx.x.clear()

    def _add_totals(self, txn: lmdb.Transaction, deltas: dict[int, list[int]]) -> None:
        """Fold per-ledger deltas of the ten totals (_TOTAL_KEYS order) into ledger_totals; they must balance."""
        for ledger, d in deltas.items():
            if not any(d):
                continue
            lkey = ledger.to_bytes(4, "big")
            totals = _unpack_totals(txn.get(lkey, db=self._totals))
            totals = [x + y for x, y in zip(totals, d, strict=True)]
            dp, dpo, cp, cpo, res_d, res_c, rem_dpo, rem_cpo, rem_dp, rem_cp = totals
            if (
                dp - rem_dp != cp - rem_cp
                or dpo - rem_dpo != cpo - rem_cpo
                or min(totals) < 0
                or res_d > dp
                or res_c > cp
                or rem_dp > dp
                or rem_cp > cp
                or rem_dpo > dpo
                or rem_cpo > cpo
            ):
                shown = dict(zip(_TOTAL_KEYS, totals, strict=True))
                raise InvariantViolation(f"ledger {ledger} does not balance: {shown}")
            txn.put(lkey, _pack_totals(totals), db=self._totals)

    def _last_timestamp(self, txn: lmdb.Transaction) -> int:
        raw = txn.get(_META_LAST_TIMESTAMP, db=self._meta)
        return 0 if raw is None else _U64.unpack(raw)[0]

    # ------------------------------------------------------------------ reads

    def lookup_accounts(self, txn: lmdb.Transaction, ids: Sequence[int]) -> list[Account]:
        """The accounts that exist, in request order (missing ids are left out).

        A PREPARED group that credits an account and then debits it against that same credit holds both
        amounts as pending, which can take the stored balances past the account's limit until the group
        finishes (ledger_xfund). That matched pair nets to zero on the account, so reads leave it out: a
        reader never sees an account beyond its limit, and net balances and conservation are unchanged."""
        self.slot_moves.check_reads(txn, ids)
        out = []
        db = self._accounts
        for i in ids:
            if 0 < i < U128_MAX:
                raw = txn.get(_key(i), db=db)
                if raw is not None:
                    account = unpack_account(raw)
                    credit_fund, debit_fund = self._fund(txn, i)
                    if credit_fund or debit_fund:
                        netted = min(credit_fund + debit_fund, account.debits_pending, account.credits_pending)
                        account.debits_pending -= netted
                        account.credits_pending -= netted
                    out.append(account)
        return out

    def account_owners(self, txn: lmdb.Transaction, ids: Sequence[int]) -> list[str | None]:
        """Each account's owner (a principal's name), None for an account without one or no such account."""
        if len(ids) > BATCH_ITEMS_MAX:
            raise ValueError(f"at most {BATCH_ITEMS_MAX} ids")
        self.slot_moves.check_reads(txn, ids)
        out = []
        for aid in ids:
            raw = txn.get(_key(aid), db=self._owners)
            out.append(None if raw is None else bytes(raw).decode("utf-8"))
        return out

    def lookup_transfers(self, txn: lmdb.Transaction, ids: Sequence[int]) -> list[Transfer]:
        """The transfers stored here (on the shards of their accounts), in request order; missing ids, and ids
        this shard is only the home of, are left out."""
        out = []
        db = self._transfers
        for i in ids:
            if 0 < i < U128_MAX:
                raw = txn.get(_key(i), db=db)
                if raw is not None and len(raw) == TRANSFER_SIZE:
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
        self.slot_moves.check_reads(txn, (account_id,))
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
        """When the earliest still-pending transfer expires: the leader proposes an entry then.

        Pending transfers locked by a PREPARED txn are skipped (the sweep skips them too,
        so naming them would wake the leader for nothing). Past EXPIRE_SCAN_MAX locked
        ones the answer is the next key's time, as the sweep scans no further either.
        """
        cursor = txn.cursor(db=self._expiry)
        locks = self._locks
        # A read on another thread than apply's: it must not touch the operation's fence (self._fence).
        fence = self.slot_moves.fence(txn)  # the sweep skips pending transfers of moving slots
        try:
            scanned = 0
            for k in cursor.iternext(keys=True, values=False):
                if scanned >= EXPIRE_SCAN_MAX or (txn.get(k[8:], db=locks) is None
                                                  and not self._pending_fenced(txn, k[8:], fence)):
                    return int.from_bytes(k[:8], "big")
                scanned += 1
            return None
        finally:
            cursor.close()

    def record_counts(self, txn: lmdb.Transaction) -> dict[str, int]:
        """How many accounts and transfer records this replica holds (LMDB keeps the counts: no scan)."""
        return {"accounts": txn.stat(self._accounts)["entries"], "transfers": txn.stat(self._transfers)["entries"]}

    def cluster_time_ns(self, txn: lmdb.Transaction) -> int:
        """The latest cluster time this shard has applied (0 before the first entry)."""
        return self._last_timestamp(txn)

    def ledger_totals(self, txn: lmdb.Transaction) -> dict[int, dict[str, int]]:
        """Per-ledger sums over this shard's accounts (for audits).

        Keys: the four balance sums; reserved_debits / reserved_credits (held by
        PREPARED txns, included in *_pending); remote_{debits,credits}_{posted,pending}
        (one-sided cross-shard legs, included in the balance sums). On every shard
        debits_X - remote_debits_X == credits_X - remote_credits_X; summed over a
        quiescent cluster remote debits equal remote credits.
        """
        out: dict[int, dict[str, int]] = {}
        cursor = txn.cursor(db=self._totals)
        try:
            for k, v in cursor.iternext():
                out[int.from_bytes(k, "big")] = dict(zip(_TOTAL_KEYS, _unpack_totals(v), strict=True))
        finally:
            cursor.close()
        return out

    # ------------------------------------------------------ 2PC reads

    def txn_decision(self, txn: lmdb.Transaction, txid: int) -> Decision | None:
        """The decision recorded for txid on this (coordinator) shard, if any."""
        if not 0 < txid < U128_MAX:
            return None
        raw = txn.get(_key(txid), db=self._decisions)
        return None if raw is None else _unpack_decision(raw)[0]

    def txn_decision_record(self, txn: lmdb.Transaction, txid: int) -> tuple[Decision, Decide] | None:
        """The decision and the DECIDE that recorded it (participants, transfer ids): for recovery."""
        if not 0 < txid < U128_MAX:
            return None
        raw = txn.get(_key(txid), db=self._decisions)
        return None if raw is None else _unpack_decision(raw)

    def prepared_txns(self, txn: lmdb.Transaction, *, limit: int = 100) -> list[tuple[int, int, int]]:
        """(txid, coordinator_shard, prepared_at_ns) of PREPARED txns, oldest first; limit capped at 1,000."""
        limit = min(limit, PREPARED_TXNS_LIMIT_MAX)
        out: list[tuple[int, int, int]] = []
        if limit <= 0:
            return out
        cursor = txn.cursor(db=self._txn_prepared)
        try:
            for k, v in cursor.iternext():
                out.append((int.from_bytes(k[8:], "big"), _U32.unpack(v)[0], int.from_bytes(k[:8], "big")))
                if len(out) >= limit:
                    break
        finally:
            cursor.close()
        return out

    def prepared_txn_count(self, txn: lmdb.Transaction) -> int:
        """How many txns are PREPARED here and not yet finished."""
        return txn.stat(self._txn_prepared)["entries"]

    def txn_state(self, txn: lmdb.Transaction, txid: int) -> str | None:
        """This participant's view of txid: "prepared", "committed", "aborted" (incl. voted NO) or None."""
        if not 0 < txid < U128_MAX:
            return None
        raw = txn.get(_key(txid), db=self._txns)
        return None if raw is None else _TXN_STATE_NAMES.get(raw[0])

    # ------------------------------------------------------ escrow reads

    def lookup_trades(self, txn: lmdb.Transaction, ids: Sequence[int]) -> list[Trade]:
        """The trades that exist, in request order (missing ids are left out)."""
        out = []
        for i in ids:
            if 0 < i < U128_MAX:
                raw = txn.get(_key(i), db=self._trades)
                if raw is not None:
                    out.append(unpack_trade(raw))
        return out

    def trade_locked(self, txn: lmdb.Transaction, trade_id: int) -> bool:
        """Whether an escrow step of the trade is prepared and not finished."""
        return 0 < trade_id < U128_MAX and txn.get(_key(trade_id), db=self._trade_locks) is not None

    def list_trades(self, txn: lmdb.Transaction, account_id: int, *, seller: bool = False,
                    after: tuple[int, int] | None = None, limit: int = 100) -> list[Trade]:
        """Trades of a buyer (or seller) account on this shard, by (created_at, id), strictly after `after`;
        limit capped at PAGE_SIZE_MAX."""
        limit = min(limit, PAGE_SIZE_MAX)
        if limit <= 0 or not 0 < account_id < U128_MAX:
            return []
        prefix = _key(account_id)
        start = prefix if after is None else prefix + after[0].to_bytes(8, "big") + _key(after[1])
        out: list[Trade] = []
        cursor = txn.cursor(db=self._by_seller if seller else self._by_buyer)
        try:
            if not cursor.set_range(start):
                return out
            for k in cursor.iternext(keys=True, values=False):
                if not k.startswith(prefix):
                    break
                if after is not None and k == start:
                    continue
                raw = txn.get(k[24:], db=self._trades)
                if raw is None:
                    raise InvariantViolation(f"trade index names a missing trade {k[24:].hex()}")
                out.append(unpack_trade(raw))
                if len(out) >= limit:
                    break
        finally:
            cursor.close()
        return out

    def due_trades(self, txn: lmdb.Transaction, now_ns: int, *, limit: int = 100) -> list[Trade]:
        """Trades whose timer is due at `now_ns`, earliest first, skipping those with a step in flight."""
        out: list[Trade] = []
        cursor = txn.cursor(db=self._timers)
        try:
            scanned = 0
            for k in cursor.iternext(keys=True, values=False):
                if int.from_bytes(k[:8], "big") > now_ns or len(out) >= limit or scanned >= EXPIRE_SCAN_MAX:
                    break
                scanned += 1
                key = k[8:]
                if txn.get(key, db=self._trade_locks) is not None:
                    continue
                raw = txn.get(key, db=self._trades)
                if raw is None:
                    raise InvariantViolation(f"timer names a missing trade {key.hex()}")
                out.append(unpack_trade(raw))
        finally:
            cursor.close()
        return out

    def escrow_totals(self, txn: lmdb.Transaction) -> dict[int, dict[str, int]]:
        """Per ledger: what this shard's trades hold, paid and took (held, fees, released, refunded, trades
        per state), and escrow_balance / fee_balance, the posted balances of this shard's escrow and fee
        accounts (read from the accounts, for audits: held == escrow_balance and fees == fee_balance)."""
        out: dict[int, dict[str, int]] = {}
        cursor = txn.cursor(db=self._escrow_totals)
        try:
            for k, v in cursor.iternext():
                out[int.from_bytes(k, "big")] = {**_unpack_escrow_totals(v), **_ESCROW_READ_ZEROS}
        finally:
            cursor.close()
        cursor = txn.cursor(db=self._escrow_slots)
        try:
            for k, v in cursor.iternext():
                totals = out.setdefault(int.from_bytes(k[:4], "big"),
                                        {**_unpack_escrow_totals(None), **_ESCROW_READ_ZEROS})
                held, fees = _SLOT_BOOK.unpack(v)
                totals["held"] += held
                totals["fees"] += fees
        finally:
            cursor.close()
        prefix = SYSTEM_ACCOUNT_PREFIX.to_bytes(4, "big")
        cursor = txn.cursor(db=self._accounts)
        try:
            if cursor.set_range(prefix):
                for k, v in cursor.iternext():
                    if not k.startswith(prefix):
                        break
                    a = unpack_account(v)
                    totals = out.setdefault(a.ledger, {**_unpack_escrow_totals(None), **_ESCROW_READ_ZEROS})
                    field = "escrow_balance" if k[4] == SYSTEM_ESCROW else "fee_balance"
                    totals[field] += a.credits_posted - a.debits_posted
        finally:
            cursor.close()
        return out


# ------------------------------------------------------------ 2PC helpers

_VOTE_YES = Vote(True, 0, 0)
# A PREPARE of an attempt already aborted here (or whose abort came first: a tombstone) prepares nothing and
# answers like a busy participant: nothing applied, try the next attempt. Not a rule's failure: a coordinator
# that never saw the abort (the group's coordinator shard changed with a slot move) would record one, and the
# transfer would fail for good having broken no rule.
_VOTE_ABORTED = Vote(False, 0, 0)
_VOTE_ERROR = Vote(False, 0, int(_TR.internal_error))
_DECISION_ERROR = Decision(False, 0, int(_TR.internal_error), 0)
# kind -> (method name, the result of an item that failed internally)
_TXN_STEPS: dict[int, tuple[str, Any]] = {
    OP_PREPARE: ("_prepare", _VOTE_ERROR),
    OP_FINISH: ("_finish", FINISH_INTERNAL_ERROR),
    OP_DECIDE: ("_decide", _DECISION_ERROR),
    OP_COMMIT_LOCAL: ("_commit_local", _VOTE_ERROR),
}


def _lock_refusal(lock: bytes) -> int:
    """Posting or voiding a pending transfer that a PREPARED txn has locked."""
    return _TR.pending_transfer_already_posted if lock[16] == LEG_POST else _TR.pending_transfer_already_voided


def _malformed_prepare(p: Prepare) -> str:
    """Why a PREPARE cannot be evaluated (a coordinator bug), or ""."""
    legs = p.legs
    if not legs and p.trade is None:
        return "no legs"
    if len(legs) > BATCH_ITEMS_MAX:
        return f"{len(legs)} legs exceed BATCH_ITEMS_MAX"
    if not (0 < p.group_size or p.trade is not None) or p.group_size > BATCH_ITEMS_MAX:
        return f"group_size {p.group_size}"
    if not 0 <= p.coordinator_shard <= U32_MAX:
        return f"coordinator_shard {p.coordinator_shard}"
    previous = -1
    for leg in legs:
        if not previous < leg.index < p.group_size:
            return f"leg index {leg.index} out of order or beyond group_size {p.group_size}"
        if leg.sides & ~SIDES_ALL or not leg.sides & SIDE_BOTH and not leg.sides & SIDE_HOME:
            return f"leg {leg.index} has sides {leg.sides}"
        previous = leg.index
    return ""


def _unpack_prepared(
    raw: bytes,
) -> tuple[int, int, list[_Plan], list[tuple[int, int, int]], TradeStep | None]:
    """(coordinator_shard, prepared_at, plans, funds, trade step) of a PREPARED record."""
    _, coordinator, prepared_at, _, n = _PREPARED_HEAD.unpack_from(raw, 0)
    plans = []
    pos = _PREPARED_HEAD.size
    for _ in range(n):
        index, sides, kind, amount = _LEG_REC.unpack_from(raw, pos)
        pos += _LEG_REC.size
        plans.append(_Plan(index, sides, kind, amount, unpack_transfer(raw[pos : pos + TRANSFER_SIZE])))
        pos += TRANSFER_SIZE
    (n_funds,) = _U32.unpack_from(raw, pos)
    pos += _U32.size
    funds = []
    for _ in range(n_funds):
        lo, hi, credit_fund, debit_fund = _FUND_REC.unpack_from(raw, pos)
        funds.append((lo | hi << 64, credit_fund, debit_fund))
        pos += _FUND_REC.size
    trade = None
    if pos + TRADE_STEP_SIZE == len(raw):
        trade = unpack_trade_step(raw[pos:])
        pos += TRADE_STEP_SIZE
    if pos != len(raw):
        raise InvariantViolation("PREPARED record has trailing bytes")
    return coordinator, prepared_at, plans, funds, trade


def _unpack_decision(raw: bytes) -> tuple[Decision, Decide]:
    ts = _U64.unpack_from(raw, 0)[0]
    d = unpack_decide(raw[_U64.size :])
    return Decision(d.commit, d.failed_index, d.failed_code, ts), d


# --- the ledger rules, each written once: the single-shard path passes both accounts, a PREPARE the
# --- side(s) that live on its shard (None for a side that lives elsewhere)


def _check_closed(dr: Account | None, cr: Account | None) -> int:
    if dr is not None and dr.flags & _A_CLOSED:
        return _TR.debit_account_already_closed
    if cr is not None and cr.flags & _A_CLOSED:
        return _TR.credit_account_already_closed
    return 0


def _check_accounts(t: Transfer, dr: Account | None, cr: Account | None) -> int:
    """The accounts' ledgers and state, in the single-shard order."""
    ledger = t.ledger
    if dr is not None and cr is not None and dr.ledger != cr.ledger:
        return _TR.accounts_must_have_the_same_ledger
    if (dr is not None and dr.ledger != ledger) or (cr is not None and cr.ledger != ledger):
        return _TR.transfer_must_have_the_same_ledger_as_accounts
    return _check_closed(dr, cr)


def _balancing_amount(t: Transfer, dr: Account, cr: Account) -> tuple[int, int]:
    """(amount, code) of a balancing transfer: at most what keeps the balanced side(s) within their limit."""
    amount = t.amount or U64_MAX
    if t.flags & _T_BAL_D:
        available = dr.credits_posted - dr.debits_pending - dr.debits_posted
        if available < amount:
            amount = available if available > 0 else 0
        if amount == 0:
            return 0, _TR.exceeds_credits
    if t.flags & _T_BAL_C:
        available = cr.debits_posted - cr.credits_pending - cr.credits_posted
        if available < amount:
            amount = available if available > 0 else 0
        if amount == 0:
            return 0, _TR.exceeds_debits
    return amount, 0


def _check_amount(dr: Account | None, cr: Account | None, amount: int, pending: int, timeout: int,
                  now_ns: int) -> int:
    """Balances and the expiry time must stay within u64."""
    if pending:
        if dr is not None and dr.debits_pending + amount > U64_MAX:
            return _TR.overflows_debits_pending
        if cr is not None and cr.credits_pending + amount > U64_MAX:
            return _TR.overflows_credits_pending
    if dr is not None and dr.debits_posted + amount > U64_MAX:
        return _TR.overflows_debits_posted
    if cr is not None and cr.credits_posted + amount > U64_MAX:
        return _TR.overflows_credits_posted
    if dr is not None and dr.debits_pending + dr.debits_posted + amount > U64_MAX:
        return _TR.overflows_debits
    if cr is not None and cr.credits_pending + cr.credits_posted + amount > U64_MAX:
        return _TR.overflows_credits
    if timeout and now_ns + timeout * NS_PER_SECOND > U64_MAX:
        return _TR.overflows_timeout
    return 0


def _check_limits(dr: Account | None, cr: Account | None, amount: int, credit_allowance: int,
                  debit_allowance: int) -> int:
    """debits_must_not_exceed_credits / credits_must_not_exceed_debits, pending counted as posted.

    The allowances are what earlier legs of the same cross-shard group credit (debit) the account with: the
    group commits or aborts as one, as a linked chain does."""
    if (dr is not None and dr.flags & _A_DMNEC
            and dr.debits_pending + dr.debits_posted + amount > dr.credits_posted + credit_allowance):
        return _TR.exceeds_credits
    if (cr is not None and cr.flags & _A_CMNED
            and cr.credits_pending + cr.credits_posted + amount > cr.debits_posted + debit_allowance):
        return _TR.exceeds_debits
    return 0


def _check_post_void(t: Transfer, p: Transfer) -> tuple[int, int]:
    """(code, amount to post or void) of a post/void of pending transfer p, on the request and p alone."""
    if not p.flags & _T_PENDING:
        return _TR.pending_transfer_not_pending, 0
    if t.debit_account_id and t.debit_account_id != p.debit_account_id:
        return _TR.pending_transfer_has_different_debit_account_id, 0
    if t.credit_account_id and t.credit_account_id != p.credit_account_id:
        return _TR.pending_transfer_has_different_credit_account_id, 0
    if t.ledger and t.ledger != p.ledger:
        return _TR.pending_transfer_has_different_ledger, 0
    if t.code and t.code != p.code:
        return _TR.pending_transfer_has_different_code, 0
    if t.flags & _T_POST:
        amount = t.amount or p.amount
        if amount > p.amount:
            return _TR.exceeds_pending_transfer_amount, 0
        return 0, amount
    if t.amount and t.amount != p.amount:
        return _TR.pending_transfer_has_different_amount, 0
    return 0, p.amount


def _posting_record(t: Transfer, p: Transfer, amount: int, timestamp: int) -> Transfer:
    """The stored form of a post/void of p: p's accounts, ledger and code, the posted (voided) amount."""
    return Transfer(
        t.id, p.debit_account_id, p.credit_account_id, amount, p.id,
        t.user_data_128, t.user_data_64, t.user_data_32, 0, p.ledger, p.code, t.flags, timestamp,
    )  # fmt: skip


def _with(t: Transfer, **changes) -> Transfer:
    return dataclasses.replace(t, **changes)


def _static_check(t: Transfer) -> int:
    """The checks on the request alone, in the single-shard order: 0 if it passes them."""
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
    return 0


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


def _system_sides_here(leg: Leg) -> bool:
    """An escrow leg's escrow/fee side must be on the trade's shard, which is where this PREPARE is."""
    t = leg.transfer
    need = (SIDE_DEBIT if is_system_account(t.debit_account_id) else 0) | (
        SIDE_CREDIT if is_system_account(t.credit_account_id) else 0)
    return leg.sides & need == need


def _unpack_escrow_totals(raw: bytes | None) -> dict[str, int]:
    if raw is None:
        return dict.fromkeys(_ESCROW_TOTAL_KEYS + _ESCROW_COUNTERS, 0)
    v = _ESCROW_TOTALS.unpack(raw)
    out = {name: v[2 * i] | v[2 * i + 1] << 64 for i, name in enumerate(_ESCROW_TOTAL_KEYS)}
    out.update(zip(_ESCROW_COUNTERS, v[2 * len(_ESCROW_TOTAL_KEYS):], strict=True))
    return out


def _pack_escrow_totals(totals: dict[str, int]) -> bytes:
    m = U64_MAX
    money = [part for name in _ESCROW_TOTAL_KEYS for part in (totals[name] & m, totals[name] >> 64)]
    return _ESCROW_TOTALS.pack(*money, *(totals[name] for name in _ESCROW_COUNTERS))


def _unpack_totals(raw: bytes | None) -> list[int]:
    if raw is None:
        return [0] * 10
    if len(raw) == _TOTALS_V1.size:
        v = _TOTALS_V1.unpack(raw)
        return [v[0] | v[1] << 64, v[2] | v[3] << 64, v[4] | v[5] << 64, v[6] | v[7] << 64] + [0] * 6
    v = _TOTALS.unpack(raw)
    return [v[i] | v[i + 1] << 64 for i in range(0, 20, 2)]


def _pack_totals(totals: Sequence[int]) -> bytes:
    m = U64_MAX
    return _TOTALS.pack(*(part for x in totals for part in (x & m, x >> 64)))


def _all_internal_error(operations: Sequence[Operation]) -> list[list[Any]]:
    """internal_error for every item, without trusting the operations to be well formed."""
    out: list[list[Any]] = []
    try:
        for op in operations:
            kind = getattr(op, "kind", None)
            if kind in _TXN_STEPS:
                code: Any = _TXN_STEPS[kind][1]
            else:
                code = int(_AR.internal_error if kind in (OP_CREATE_ACCOUNTS, OP_CREATE_OWNED_ACCOUNTS)
                           else _TR.internal_error)
            try:
                n = len(op.items)
            except Exception:
                n = 0
            out.append([code] * n)
    except Exception:
        pass
    return out

"""Cross-shard two-phase commit: the records a coordinator sends to shards, and their answers.

A *group* is one transfer or one linked chain whose accounts span shards, or one
escrow step (a trade's state change with the transfers it implies); its txid is a
hash of its whole content (`group_key`), so a retry of the same group has the same
key and two different groups never share one. Each step is one item of an `Operation` in the Raft
log of the shard concerned (see `state_machine`):

* `Prepare` (OP_PREPARE) on every participant: check and reserve the legs that touch
  this shard's accounts -> `Vote`.
* `Decide` (OP_DECIDE) on the coordinator shard: record COMMIT or ABORT, first writer
  wins -> `Decision` (the recorded one, maybe an earlier writer's).
* `Finish` (OP_FINISH) on every participant: apply or release -> FINISH_* code.

Packing is little-endian ``struct``; an item is one bytes object (not self-delimiting:
the codec frames it). Unpacking refuses bytes of the wrong length with ValueError;
packing out-of-range fields raises ``struct.error`` as `records` does.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

from tidebank.node.ledger.records import TRANSFER_SIZE, Transfer, pack_transfer, unpack_transfer
from tidebank.node.ledger.results import CreateTransferResult
from tidebank.node.ledger.trades import TRADE_STEP_INDEX, TRADE_STEP_SIZE, TradeStep, pack_trade_step, unpack_trade_step

__all__ = [
    "FINISH_ALREADY",
    "FINISH_APPLIED",
    "FINISH_CONFLICT",
    "FINISH_INTERNAL_ERROR",
    "FINISH_UNKNOWN_TXID",
    "PARTICIPANTS_MAX",
    "SIDE_BOTH",
    "SIDE_CREDIT",
    "SIDE_DEBIT",
    "SIDE_HOME",
    "Decide",
    "Decision",
    "Finish",
    "Leg",
    "Prepare",
    "Vote",
    "failure_precedence",
    "merge_votes",
    "pack_decide",
    "pack_finish",
    "pack_prepare",
    "unpack_decide",
    "unpack_finish",
    "unpack_prepare",
]

SIDE_DEBIT = 1
SIDE_CREDIT = 2
SIDE_BOTH = 3
# Set on the leg held by the shard that is the home of the transfer's id (the shard of slot_of(id)): that
# shard answers for the id (idempotency, failed ids, lookups). A leg with no account side is an id-only leg.
SIDE_HOME = 4
SIDES_ALL = SIDE_BOTH | SIDE_HOME

FINISH_APPLIED = 0
FINISH_ALREADY = 1
FINISH_UNKNOWN_TXID = 2
FINISH_CONFLICT = 3
# Not in the original contract: a bug (exception, broken invariant, malformed item)
# while finishing; nothing was changed, the step may be retried.
FINISH_INTERNAL_ERROR = 4

# A Decide names at most this many participant shards (the shard map's shard count is
# far smaller); transfer_ids are bounded by BATCH_ITEMS_MAX like any batch.
PARTICIPANTS_MAX = 4096


@dataclass(slots=True)
class Leg:
    """One transfer of the group, as seen by one participant."""

    index: int  # position in the group (0-based)
    # SIDE_DEBIT | SIDE_CREDIT | SIDE_BOTH: which of its accounts live on this participant (0: none, an id-only
    # leg), | SIDE_HOME when this participant is the home of the transfer's id
    sides: int
    transfer: Transfer


@dataclass(slots=True)
class Prepare:
    txid: int
    coordinator_shard: int
    group_size: int
    legs: list[Leg]  # in index order
    # An escrow step, only in the PREPARE sent to the trade's own shard (the coordinator): checked
    # against the trade there, applied with the legs at FINISH. Its failure is voted with
    # failed_index TRADE_STEP_INDEX and a TradeResult code.
    trade: TradeStep | None = None


@dataclass(slots=True)
class Finish:
    txid: int
    commit: bool
    commit_timestamp: int  # the DECIDE's cluster time (ns): pending legs expire at it + timeout
    # An abort for a business reason: the leg that failed and its code, so the home of that leg's id records
    # it as failed (the id then keeps answering id_already_failed). 0, 0: no failing leg.
    failed_index: int = 0
    failed_code: int = 0


@dataclass(slots=True)
class Decide:
    txid: int
    commit: bool
    failed_index: int
    failed_code: int
    participants: list[int]
    transfer_ids: list[int]


@dataclass(frozen=True, slots=True)
class Vote:
    prepared: bool
    failed_index: int
    # CreateTransferResult of the failing leg; 0 when prepared. A NO with code 0 is
    # "busy": leg failed_index names a transfer id that another PREPARED txn holds
    # (e.g. an earlier attempt of the same group not finished here yet). No rule
    # failed: abort the attempt without a failing item and retry.
    code: int


@dataclass(frozen=True, slots=True)
class Decision:
    committed: bool
    failed_index: int
    code: int
    # cluster time when it was recorded; 0 for an internal_error answer (nothing recorded) and for a group
    # committed in one OP_COMMIT_LOCAL entry (no DECIDE)
    timestamp: int


# ------------------------------------------------------------------ packing

_M64 = (1 << 64) - 1
# txid lo, txid hi, coordinator_shard, group_size, leg count
_PREPARE_HEAD = struct.Struct("<QQIII")
# index, sides (+ a 128-byte packed Transfer)
_LEG_HEAD = struct.Struct("<IB")
_LEG_SIZE = _LEG_HEAD.size + TRANSFER_SIZE
# txid lo, txid hi, commit, commit_timestamp, failed_index, failed_code
_FINISH = struct.Struct("<QQBQII")
# txid lo, txid hi, commit, failed_index, failed_code, participant count, transfer id count
_DECIDE_HEAD = struct.Struct("<QQBIIII")
_U32 = struct.Struct("<I")
_U128 = struct.Struct("<QQ")


def pack_prepare(p: Prepare) -> bytes:
    parts = [_PREPARE_HEAD.pack(p.txid & _M64, p.txid >> 64, p.coordinator_shard, p.group_size, len(p.legs))]
    for leg in p.legs:
        parts.append(_LEG_HEAD.pack(leg.index, leg.sides))
        parts.append(pack_transfer(leg.transfer))
    if p.trade is not None:  # appended, so a PREPARE without one has the same bytes as before escrow
        parts.append(pack_trade_step(p.trade))
    return b"".join(parts)


def unpack_prepare(b: bytes) -> Prepare:
    if len(b) < _PREPARE_HEAD.size:
        raise ValueError("prepare shorter than its header")
    lo, hi, coordinator, group_size, n = _PREPARE_HEAD.unpack_from(b, 0)
    legs_end = _PREPARE_HEAD.size + n * _LEG_SIZE
    if len(b) not in (legs_end, legs_end + TRADE_STEP_SIZE):
        raise ValueError(f"prepare of {n} legs has {len(b)} bytes")
    legs = []
    pos = _PREPARE_HEAD.size
    for _ in range(n):
        index, sides = _LEG_HEAD.unpack_from(b, pos)
        start = pos + _LEG_HEAD.size
        legs.append(Leg(index, sides, unpack_transfer(b[start : start + TRANSFER_SIZE])))
        pos = start + TRANSFER_SIZE
    trade = unpack_trade_step(b[legs_end:]) if len(b) > legs_end else None
    return Prepare(lo | hi << 64, coordinator, group_size, legs, trade)


def pack_finish(f: Finish) -> bytes:
    return _FINISH.pack(f.txid & _M64, f.txid >> 64, 1 if f.commit else 0, f.commit_timestamp, f.failed_index,
                        f.failed_code)


def unpack_finish(b: bytes) -> Finish:
    if len(b) != _FINISH.size:
        raise ValueError(f"finish has {len(b)} bytes, expected {_FINISH.size}")
    lo, hi, commit, ts, failed_index, failed_code = _FINISH.unpack(b)
    if commit > 1:
        raise ValueError(f"finish commit flag {commit}")
    return Finish(lo | hi << 64, bool(commit), ts, failed_index, failed_code)


def pack_decide(d: Decide) -> bytes:
    parts = [
        _DECIDE_HEAD.pack(
            d.txid & _M64,
            d.txid >> 64,
            1 if d.commit else 0,
            d.failed_index,
            d.failed_code,
            len(d.participants),
            len(d.transfer_ids),
        )  # fmt: skip
    ]
    parts.extend(_U32.pack(s) for s in d.participants)
    parts.extend(_U128.pack(i & _M64, i >> 64) for i in d.transfer_ids)
    return b"".join(parts)


def unpack_decide(b: bytes) -> Decide:
    if len(b) < _DECIDE_HEAD.size:
        raise ValueError("decide shorter than its header")
    lo, hi, commit, failed_index, failed_code, n_parts, n_ids = _DECIDE_HEAD.unpack_from(b, 0)
    if commit > 1:
        raise ValueError(f"decide commit flag {commit}")
    if len(b) != _DECIDE_HEAD.size + n_parts * _U32.size + n_ids * _U128.size:
        raise ValueError(f"decide of {n_parts} participants and {n_ids} ids has {len(b)} bytes")
    pos = _DECIDE_HEAD.size
    participants = [v[0] for v in _U32.iter_unpack(b[pos : pos + n_parts * _U32.size])]
    pos += n_parts * _U32.size
    ids = [v[0] | v[1] << 64 for v in _U128.iter_unpack(b[pos:])]
    return Decide(lo | hi << 64, bool(commit), failed_index, failed_code, participants, ids)


# ------------------------------------------------------------ vote merging

_TR = CreateTransferResult
# The order in which the single-shard rules check a transfer's state. Participants
# each see one side, so two may fail the same leg with different codes; the
# coordinator reports the one the single-shard rules would have found first. Codes
# not listed (static checks, existence, ...) are the same on every participant.
_STATE_CHECK_ORDER = (
    _TR.debit_account_not_found,
    _TR.credit_account_not_found,
    _TR.accounts_must_have_the_same_ledger,
    _TR.transfer_must_have_the_same_ledger_as_accounts,
    _TR.debit_account_already_closed,
    _TR.credit_account_already_closed,
    _TR.overflows_debits_pending,
    _TR.overflows_credits_pending,
    _TR.overflows_debits_posted,
    _TR.overflows_credits_posted,
    _TR.overflows_debits,
    _TR.overflows_credits,
    _TR.overflows_timeout,
    _TR.exceeds_credits,
    _TR.exceeds_debits,
)
_PRECEDENCE = {int(c): i for i, c in enumerate(_STATE_CHECK_ORDER)}


def failure_precedence(code: int) -> int:
    """Lower is checked earlier by the single-shard rules (ties between participants' codes).

    A busy NO (code 0) comes first: at that leg the outcome is not known yet.
    """
    if code == 0:
        return -2
    return _PRECEDENCE.get(code, -1)


def merge_votes(votes: Iterable[Vote]) -> Vote:
    """The group's vote: prepared if every participant prepared, else its earliest failure.

    Earliest means the trade step (TRADE_STEP_INDEX) first, as it is checked before
    its legs, then the lowest failed_index, then the code the single-shard rules
    check first (a busy NO, code 0, before any rule). internal_error from any
    participant wins over everything (it is a bug).
    """
    worst: Vote | None = None
    for v in votes:
        if v.prepared:
            continue
        if v.code == _TR.internal_error and v.failed_index != TRADE_STEP_INDEX:
            return v
        if worst is None or _vote_order(v) < _vote_order(worst):
            worst = v
    return worst if worst is not None else Vote(True, 0, 0)


def _vote_order(v: Vote) -> tuple[int, int]:
    return (-1 if v.failed_index == TRADE_STEP_INDEX else v.failed_index, failure_precedence(v.code))

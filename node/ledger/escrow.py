"""The escrow rules: which step is valid in which trade state, and which money it moves.

Pure functions of (trade, command, cluster time): no LMDB, no Raft, no clock. The
state machine runs them inside apply (PREPARE checks a step, FINISH commits it) and
the escrow coordinator runs the same functions to plan the transfers of a step, so
both always agree on the money.

Money of a trade: the buyer's amount moves into the escrow account of the trade's
(ledger, hash slot) when it is created; from there refunds go back to the buyer,
and the release goes to the seller less the platform fee, which goes to the fee
account of the same (ledger, slot). So a trade's `held` = amount - refunded -
released - fee is exactly its share of the escrow account, and a trade in a
terminal state holds nothing.

Fee rounding: fee = floor(released_gross * fee_bps / 10_000), computed on what is
released to the seller (never on refunded money); the seller gets the rest. The
platform never takes more than its rate, and the two parts always add up to the
gross, so nothing is created or lost.

Timers run on cluster time: CREATE starts the ship-by timer, SHIP the auto-confirm
timer (plus extensions). A dispute pauses the running timer, keeping what it had
left; withdrawing the dispute resumes it. A timer fires by the AUTO_REFUND /
AUTO_CONFIRM command, valid only once its deadline has passed in cluster time. While
a timer is due, only steps that move the money its own way may run: the buyer may
still confirm and anyone may still refund while ship-by is due; nothing else.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

from tidebank.common.keys import (
    U64_MAX,
    U128_MAX,
    escrow_account_id,
    fee_account_id,
    id_in_slot,
    is_system_account,
    slot_of,
)
from tidebank.node.ledger.records import Account, AccountFlags, Transfer, TransferFlags
from tidebank.node.ledger.results import TradeResult
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
    TIMER_NONE,
    TIMER_SHIP_BY,
    Trade,
    TradeCommand,
    pack_command,
)

__all__ = [
    "ESCROW_ACCOUNT_CODE",
    "EXTENSIONS_MAX",
    "EXTENSIONS_TOTAL_MAX_S",
    "EXTENSION_MAX_S",
    "FEE_ACCOUNT_CODE",
    "FEE_BPS_MAX",
    "NOT_DUE",
    "REFUNDS_MAX",
    "TIMEOUT_MAX_S",
    "Evaluation",
    "check_parties",
    "commit",
    "evaluate",
    "fee_of",
    "legs",
    "step_key",
    "system_accounts",
]

_R = TradeResult
OK = int(_R.ok)
NOT_DUE = -1  # a timer command whose deadline has not passed in cluster time: not an outcome, try later

FEE_BPS_MAX = 10_000
TIMEOUT_MAX_S = 366 * 86_400
EXTENSION_MAX_S = 30 * 86_400
EXTENSIONS_TOTAL_MAX_S = 90 * 86_400
REFUNDS_MAX = 16
EXTENSIONS_MAX = 4
NS_PER_SECOND = 1_000_000_000

# Account codes of the system accounts, transfer codes of the escrow legs.
ESCROW_ACCOUNT_CODE = 9001
FEE_ACCOUNT_CODE = 9002
CODE_HOLD = 9101  # buyer -> escrow
CODE_RELEASE = 9102  # escrow -> seller
CODE_FEE = 9103  # escrow -> platform fee
CODE_REFUND = 9104  # escrow -> buyer

MOVE_HOLD, MOVE_RELEASE, MOVE_FEE, MOVE_REFUND = range(4)
_MOVE_CODES = (CODE_HOLD, CODE_RELEASE, CODE_FEE, CODE_REFUND)

_REFUSAL = {
    SHIPPED: int(_R.trade_is_shipped),
    SETTLED: int(_R.trade_is_settled),
    REFUNDED: int(_R.trade_is_refunded),
    DISPUTED: int(_R.trade_is_disputed),
    CLOSED: int(_R.trade_is_closed),
}


@dataclass(frozen=True, slots=True)
class Evaluation:
    """A step's verdict: OK with its money moves (kind, amount), or the code refusing it (or NOT_DUE)."""

    code: int
    moves: tuple[tuple[int, int], ...] = field(default=())


_REFUSED_BY_ID = {0: Evaluation(int(_R.id_must_not_be_zero)), U128_MAX: Evaluation(int(_R.id_must_not_be_int_max))}


def fee_of(gross: int, fee_bps: int) -> int:
    """The platform's fee on `gross` released to a seller: rounded down."""
    return gross * fee_bps // FEE_BPS_MAX


def _release(gross: int, fee_bps: int) -> list[tuple[int, int]]:
    fee = fee_of(gross, fee_bps)
    moves = []
    if gross - fee:
        moves.append((MOVE_RELEASE, gross - fee))
    if fee:
        moves.append((MOVE_FEE, fee))
    return moves


def _due(t: Trade, now_ns: int | None) -> bool:
    """Whether the trade's running timer has passed its deadline (never when no time is given)."""
    return now_ns is not None and t.deadline != 0 and t.deadline <= now_ns and t.state in (PAID, SHIPPED)


def _check_create(c: TradeCommand) -> int:
    """The checks on a CREATE alone, in order; OK if it passes them."""
    if c.buyer_account_id == 0:
        return _R.buyer_account_id_must_not_be_zero
    if c.seller_account_id == 0:
        return _R.seller_account_id_must_not_be_zero
    if c.buyer_account_id == U128_MAX or c.seller_account_id == U128_MAX:
        return _R.account_id_must_not_be_int_max
    if c.buyer_account_id == c.seller_account_id:
        return _R.accounts_must_be_different
    if is_system_account(c.buyer_account_id) or is_system_account(c.seller_account_id):
        return _R.account_reserved
    if c.amount == 0:
        return _R.amount_must_not_be_zero
    if c.ledger == 0:
        return _R.ledger_must_not_be_zero
    if c.fee_bps > FEE_BPS_MAX:
        return _R.fee_bps_above_10000
    if not (1 <= c.ship_by_timeout_s <= TIMEOUT_MAX_S and 1 <= c.auto_confirm_timeout_s <= TIMEOUT_MAX_S):
        return _R.timeout_out_of_range
    return OK


def _create_exists(t: Trade, c: TradeCommand) -> int:
    """Idempotency of CREATE: the same trade id again is `exists` only if every field matches."""
    if t.buyer_account_id != c.buyer_account_id:
        return _R.exists_with_different_buyer_account_id
    if t.seller_account_id != c.seller_account_id:
        return _R.exists_with_different_seller_account_id
    if t.amount != c.amount:
        return _R.exists_with_different_amount
    if t.ledger != c.ledger:
        return _R.exists_with_different_ledger
    if t.fee_bps != c.fee_bps:
        return _R.exists_with_different_fee_bps
    if (t.ship_by_timeout_s, t.auto_confirm_timeout_s) != (c.ship_by_timeout_s, c.auto_confirm_timeout_s):
        return _R.exists_with_different_timeouts
    if (t.user_data_128, t.user_data_64, t.user_data_32) != (c.user_data_128, c.user_data_64, c.user_data_32):
        return _R.exists_with_different_user_data
    return _R.exists


def evaluate(t: Trade | None, c: TradeCommand, now_ns: int | None) -> Evaluation:
    """Whether command `c` may run on trade `t` (None: no such trade) at cluster time `now_ns`.

    With now_ns None (a planner without cluster time) every deadline counts as not
    passed, except for the AUTO_* commands, which count as due: the state machine
    decides the time-dependent part when it applies the step.
    """
    refused = _REFUSED_BY_ID.get(c.trade_id)
    if refused is not None:
        return refused
    kind = c.kind
    if kind == CMD_CREATE:
        code = _check_create(c)
        if code != OK:
            return Evaluation(int(code))
        if t is not None:
            return Evaluation(int(_create_exists(t, c)))
        return Evaluation(OK, ((MOVE_HOLD, c.amount),))
    if kind == CMD_REFUND:
        if c.arg_id == 0:
            return Evaluation(int(_R.refund_id_must_not_be_zero))
        if c.amount == 0:
            return Evaluation(int(_R.amount_must_not_be_zero))
    elif kind == CMD_EXTEND:
        if c.arg_id == 0:
            return Evaluation(int(_R.extension_id_must_not_be_zero))
        if not 1 <= c.seconds <= EXTENSION_MAX_S:
            return Evaluation(int(_R.extension_out_of_range))
    elif kind not in _STEPS:
        return Evaluation(int(_R.internal_error))
    if t is None:
        return Evaluation(int(_R.trade_not_found))
    return _STEPS[kind](t, c, now_ns)


def _ship(t: Trade, c: TradeCommand, now_ns: int | None) -> Evaluation:
    if t.state == SHIPPED:
        return Evaluation(int(_R.exists))
    if t.state != PAID:
        return Evaluation(_REFUSAL[t.state])
    if _due(t, now_ns):
        return Evaluation(int(_R.deadline_passed))
    return Evaluation(OK)


def _confirm(t: Trade, c: TradeCommand, now_ns: int | None) -> Evaluation:
    if t.state == SETTLED and t.closed_by == CLOSED_BY_BUYER_CONFIRMED:
        return Evaluation(int(_R.exists))
    if t.state not in (PAID, SHIPPED):
        return Evaluation(_REFUSAL[t.state])
    return Evaluation(OK, tuple(_release(t.held, t.fee_bps)))


def _refund(t: Trade, c: TradeCommand, now_ns: int | None) -> Evaluation:
    for refund_id, amount in t.refunds:
        if refund_id == c.arg_id:
            return Evaluation(int(_R.exists if amount == c.amount else _R.exists_with_different_amount))
    if t.state not in (PAID, SHIPPED, DISPUTED):
        return Evaluation(_REFUSAL[t.state])
    if t.state == SHIPPED and _due(t, now_ns):
        return Evaluation(int(_R.deadline_passed))  # the money is the seller's now
    if c.amount > t.held:
        return Evaluation(int(_R.refund_exceeds_held))
    if len(t.refunds) >= REFUNDS_MAX:
        return Evaluation(int(_R.too_many_refunds))
    return Evaluation(OK, ((MOVE_REFUND, c.amount),))


def _open_dispute(t: Trade, c: TradeCommand, now_ns: int | None) -> Evaluation:
    if t.state == DISPUTED:
        return Evaluation(int(_R.exists))
    if t.state not in (PAID, SHIPPED):
        return Evaluation(_REFUSAL[t.state])
    if t.dispute_opened:
        return Evaluation(int(_R.dispute_already_opened))
    if _due(t, now_ns):
        return Evaluation(int(_R.deadline_passed))
    return Evaluation(OK)


def _withdraw_dispute(t: Trade, c: TradeCommand, now_ns: int | None) -> Evaluation:
    if t.state == DISPUTED:
        return Evaluation(OK)
    if t.state in (PAID, SHIPPED):
        return Evaluation(int(_R.exists if t.dispute_opened else _R.trade_is_not_disputed))
    return Evaluation(_REFUSAL[t.state])


def _resolve_dispute(t: Trade, c: TradeCommand, now_ns: int | None) -> Evaluation:
    if t.state == CLOSED:
        return Evaluation(int(_R.exists if t.dispute_buyer_amount == c.amount else _R.exists_with_different_amount))
    if t.state in (PAID, SHIPPED):
        return Evaluation(int(_R.trade_is_not_disputed))
    if t.state != DISPUTED:
        return Evaluation(_REFUSAL[t.state])
    held = t.held
    if c.amount > held:
        return Evaluation(int(_R.split_exceeds_held))
    moves = [(MOVE_REFUND, c.amount)] if c.amount else []
    moves.extend(_release(held - c.amount, t.fee_bps))
    return Evaluation(OK, tuple(moves))


def _extend(t: Trade, c: TradeCommand, now_ns: int | None) -> Evaluation:
    for extension_id, seconds in t.extensions:
        if extension_id == c.arg_id:
            return Evaluation(int(_R.exists if seconds == c.seconds else _R.exists_with_different_amount))
    if t.state not in (PAID, SHIPPED):
        return Evaluation(_REFUSAL[t.state])
    if len(t.extensions) >= EXTENSIONS_MAX or t.extended_s + c.seconds > EXTENSIONS_TOTAL_MAX_S:
        return Evaluation(int(_R.too_many_extensions))
    if t.state == SHIPPED and _due(t, now_ns):
        return Evaluation(int(_R.deadline_passed))
    return Evaluation(OK)


def _timer(state: int, timer: int, closed_by: int):
    def fire(t: Trade, c: TradeCommand, now_ns: int | None) -> Evaluation:
        if t.state != state or t.timer != timer:
            if t.closed_by == closed_by:
                return Evaluation(int(_R.exists))
            return Evaluation(int(_R.timer_not_running))
        if now_ns is not None and not _due(t, now_ns):
            return Evaluation(NOT_DUE)
        if timer == TIMER_SHIP_BY:
            return Evaluation(OK, ((MOVE_REFUND, t.held),))
        return Evaluation(OK, tuple(_release(t.held, t.fee_bps)))

    return fire


_STEPS = {
    CMD_SHIP: _ship,
    CMD_CONFIRM: _confirm,
    CMD_REFUND: _refund,
    CMD_OPEN_DISPUTE: _open_dispute,
    CMD_WITHDRAW_DISPUTE: _withdraw_dispute,
    CMD_RESOLVE_DISPUTE: _resolve_dispute,
    CMD_EXTEND: _extend,
    CMD_AUTO_REFUND: _timer(PAID, TIMER_SHIP_BY, CLOSED_BY_SHIP_BY_EXPIRED),
    CMD_AUTO_CONFIRM: _timer(SHIPPED, TIMER_AUTO_CONFIRM, CLOSED_BY_AUTO_CONFIRMED),
}


def check_parties(c: TradeCommand, buyer: Account | None, seller: Account | None) -> int:
    """The checks of a CREATE against the buyer's and seller's accounts (which never change but for balances)."""
    if buyer is None:
        return _R.buyer_account_not_found
    if seller is None:
        return _R.seller_account_not_found
    for a in (buyer, seller):
        if a.ledger != c.ledger:
            return _R.account_has_different_ledger
    for a in (buyer, seller):
        if a.flags & AccountFlags.CLOSED:
            return _R.account_closed
    for a in (buyer, seller):
        if a.flags & AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS:
            return _R.account_flags_not_supported
    return OK


# ------------------------------------------------------------------ commit


def _end(t: Trade, state: int, closed_by: int, commit_ns: int) -> None:
    t.state = state
    t.closed_by = closed_by
    t.closed_at = commit_ns
    t.state_before_dispute = 0
    t.timer = TIMER_NONE
    t.deadline = 0
    t.timer_remaining_ns = 0


def _deadline(start_ns: int, seconds: int) -> int:
    return min(start_ns + seconds * NS_PER_SECOND, U64_MAX)


def commit(t: Trade | None, c: TradeCommand, commit_ns: int) -> Trade:
    """The trade after command `c` committed at cluster time `commit_ns`; `c` must have evaluated OK on `t`.

    Returns a new record (version + 1); `t` is not changed.
    """
    if c.kind == CMD_CREATE:
        return Trade(
            c.trade_id, c.buyer_account_id, c.seller_account_id, c.amount, c.ledger, c.fee_bps,
            c.ship_by_timeout_s, c.auto_confirm_timeout_s, c.user_data_128, c.user_data_64, c.user_data_32,
            state=PAID, version=1, created_at=commit_ns, timer=TIMER_SHIP_BY,
            deadline=_deadline(commit_ns, c.ship_by_timeout_s),
        )  # fmt: skip
    assert t is not None
    n = replace(t, refunds=list(t.refunds), extensions=list(t.extensions), version=t.version + 1)
    kind = c.kind
    if kind == CMD_SHIP:
        n.state = SHIPPED
        n.shipped_at = commit_ns
        n.timer = TIMER_AUTO_CONFIRM
        n.deadline = _deadline(commit_ns, t.auto_confirm_timeout_s + t.extended_s)
    elif kind in (CMD_CONFIRM, CMD_AUTO_CONFIRM):
        fee = fee_of(t.held, t.fee_bps)
        n.released += t.held - fee
        n.fee += fee
        _end(n, SETTLED, CLOSED_BY_BUYER_CONFIRMED if kind == CMD_CONFIRM else CLOSED_BY_AUTO_CONFIRMED, commit_ns)
    elif kind == CMD_REFUND:
        n.refunded += c.amount
        n.refunds.append((c.arg_id, c.amount))
        if n.held == 0:
            _end(n, REFUNDED, CLOSED_BY_REFUNDED, commit_ns)
    elif kind == CMD_AUTO_REFUND:
        n.refunded += t.held
        _end(n, REFUNDED, CLOSED_BY_SHIP_BY_EXPIRED, commit_ns)
    elif kind == CMD_OPEN_DISPUTE:
        n.state_before_dispute = t.state
        n.state = DISPUTED
        n.dispute_opened = True
        n.timer_remaining_ns = max(0, t.deadline - commit_ns) if t.deadline else 0
        n.deadline = 0
    elif kind == CMD_WITHDRAW_DISPUTE:
        n.state = t.state_before_dispute
        n.state_before_dispute = 0
        n.deadline = min(commit_ns + t.timer_remaining_ns, U64_MAX) if t.timer != TIMER_NONE else 0
        n.timer_remaining_ns = 0
    elif kind == CMD_RESOLVE_DISPUTE:
        seller_gross = t.held - c.amount
        fee = fee_of(seller_gross, t.fee_bps)
        n.refunded += c.amount
        n.released += seller_gross - fee
        n.fee += fee
        n.dispute_buyer_amount = c.amount
        _end(n, CLOSED, CLOSED_BY_DISPUTE_RESOLVED, commit_ns)
    elif kind == CMD_EXTEND:
        n.extensions.append((c.arg_id, c.seconds))
        n.extended_s += c.seconds
        if t.state == SHIPPED:
            n.deadline = min(t.deadline + c.seconds * NS_PER_SECOND, U64_MAX)
    else:
        raise ValueError(f"unknown trade command kind {kind}")
    return n


# ------------------------------------------------------------------ transfers of a step


def step_key(c: TradeCommand, version: int) -> int:
    """The 2PC key of command `c` run on version `version` of its trade. It binds every field of the command:
    a retry of the same step has the same key, any other step (or the same one on another version) another,
    so two different steps can never share a participant's prepared record."""
    return _u128_id(b"tidebank-escrow-step" + version.to_bytes(4, "big") + pack_command(c))


def _u128_id(raw: bytes) -> int:
    value = int.from_bytes(hashlib.blake2b(raw, digest_size=16).digest(), "big")
    return value if 0 < value < U128_MAX and not is_system_account(value) else 1


def system_accounts(trade_id: int, ledger: int, slot_count: int) -> tuple[int, int]:
    """(escrow account id, fee account id) of a trade: those of its ledger and hash slot."""
    slot = slot_of(trade_id, slot_count)
    return escrow_account_id(ledger, slot, slot_count), fee_account_id(ledger, slot, slot_count)


def legs(t: Trade | None, c: TradeCommand, evaluation: Evaluation, slot_count: int) -> list[Transfer]:
    """The transfers of a step that evaluated OK, as one linked chain, with ids derived from the step's key."""
    if t is None:
        buyer, seller, ledger, version = c.buyer_account_id, c.seller_account_id, c.ledger, 0
    else:
        buyer, seller, ledger, version = t.buyer_account_id, t.seller_account_id, t.ledger, t.version
    escrow, fee = system_accounts(c.trade_id, ledger, slot_count)
    slot = slot_of(c.trade_id, slot_count)
    key = step_key(c, version)
    ends = {
        MOVE_HOLD: (buyer, escrow),
        MOVE_RELEASE: (escrow, seller),
        MOVE_FEE: (escrow, fee),
        MOVE_REFUND: (escrow, buyer),
    }
    out = []
    last = len(evaluation.moves) - 1
    for index, (move, amount) in enumerate(evaluation.moves):
        debit, credit = ends[move]
        out.append(Transfer(
            # in the trade's slot: the trade's shard is the home of every leg's id, so no other shard joins
            id=id_in_slot(_u128_id(key.to_bytes(16, "big") + index.to_bytes(4, "big")), slot, slot_count),
            debit_account_id=debit, credit_account_id=credit, amount=amount,
            user_data_128=c.trade_id, user_data_64=version, user_data_32=c.kind,
            ledger=ledger, code=_MOVE_CODES[move], flags=int(TransferFlags.LINKED) if index < last else 0,
        ))  # fmt: skip
    return out

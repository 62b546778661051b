"""Escrow trades: the trade record, the commands that change it, and their binary form.

The same bytes are LMDB values (trades), parts of Raft entries (a command inside a
2PC PREPARE) and parts of the PREPARED record, so the layout is fixed little-endian
``struct`` packing like `records`. The rules that use them live in `escrow`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

__all__ = [
    "CMD_AUTO_CONFIRM",
    "CMD_AUTO_REFUND",
    "CMD_CONFIRM",
    "CMD_CREATE",
    "CMD_EXTEND",
    "CMD_OPEN_DISPUTE",
    "CMD_REFUND",
    "CMD_RESOLVE_DISPUTE",
    "CMD_SHIP",
    "CMD_WITHDRAW_DISPUTE",
    "TRADE_STEP_INDEX",
    "Trade",
    "TradeCommand",
    "TradeStep",
    "pack_command",
    "pack_trade",
    "pack_trade_step",
    "unpack_command",
    "unpack_trade",
    "unpack_trade_step",
]

# Trade states (proto TradeState).
PAID = 1
SHIPPED = 2
SETTLED = 3
REFUNDED = 4
DISPUTED = 5
CLOSED = 6
TERMINAL = frozenset((SETTLED, REFUNDED, CLOSED))

# Timers (proto TradeTimer).
TIMER_NONE = 0
TIMER_SHIP_BY = 1
TIMER_AUTO_CONFIRM = 2

# How a trade ended (proto TradeClosedBy).
CLOSED_BY_NONE = 0
CLOSED_BY_BUYER_CONFIRMED = 1
CLOSED_BY_AUTO_CONFIRMED = 2
CLOSED_BY_REFUNDED = 3
CLOSED_BY_SHIP_BY_EXPIRED = 4
CLOSED_BY_DISPUTE_RESOLVED = 5

# Commands. The two AUTO_* commands are the timers firing: only nodes issue them.
CMD_CREATE = 1
CMD_SHIP = 2
CMD_CONFIRM = 3
CMD_REFUND = 4
CMD_OPEN_DISPUTE = 5
CMD_WITHDRAW_DISPUTE = 6
CMD_RESOLVE_DISPUTE = 7
CMD_EXTEND = 8
CMD_AUTO_REFUND = 9
CMD_AUTO_CONFIRM = 10
COMMAND_NAMES = {CMD_CREATE: "create", CMD_SHIP: "ship", CMD_CONFIRM: "confirm", CMD_REFUND: "refund",
                 CMD_OPEN_DISPUTE: "open_dispute", CMD_WITHDRAW_DISPUTE: "withdraw_dispute",
                 CMD_RESOLVE_DISPUTE: "resolve_dispute", CMD_EXTEND: "extend", CMD_AUTO_REFUND: "auto_refund",
                 CMD_AUTO_CONFIRM: "auto_confirm"}

# In a 2PC Vote or Decision, failed_index TRADE_STEP_INDEX means "the trade step failed"
# and the code is a TradeResult, not a CreateTransferResult.
TRADE_STEP_INDEX = 0xFFFF_FFFF


@dataclass(slots=True)
class TradeCommand:
    """One escrow step asked of a trade. Fields that a kind does not use stay 0.

    arg_id is the refund id (REFUND) or extension id (EXTEND); amount is the trade
    amount (CREATE), the refund (REFUND) or the buyer's part (RESOLVE_DISPUTE);
    seconds is extend_by_s (EXTEND).
    """

    kind: int
    trade_id: int
    arg_id: int = 0
    amount: int = 0
    seconds: int = 0
    buyer_account_id: int = 0
    seller_account_id: int = 0
    ledger: int = 0
    fee_bps: int = 0
    ship_by_timeout_s: int = 0
    auto_confirm_timeout_s: int = 0
    user_data_128: int = 0
    user_data_64: int = 0
    user_data_32: int = 0


@dataclass(slots=True)
class Trade:
    """A trade as stored on its shard. Times are cluster time in ns; money in minor units."""

    id: int
    buyer_account_id: int
    seller_account_id: int
    amount: int
    ledger: int
    fee_bps: int = 0
    ship_by_timeout_s: int = 0
    auto_confirm_timeout_s: int = 0
    user_data_128: int = 0
    user_data_64: int = 0
    user_data_32: int = 0
    state: int = PAID
    state_before_dispute: int = 0
    closed_by: int = CLOSED_BY_NONE
    version: int = 0  # steps applied so far
    refunded: int = 0  # back to the buyer (refunds, expiry, the buyer's part of a dispute split)
    released: int = 0  # to the seller
    fee: int = 0  # to the platform
    created_at: int = 0
    shipped_at: int = 0
    closed_at: int = 0
    timer: int = TIMER_NONE
    deadline: int = 0  # when the running timer fires; 0 while paused (disputed) or none
    timer_remaining_ns: int = 0  # while disputed
    extended_s: int = 0
    dispute_opened: bool = False
    dispute_buyer_amount: int = 0  # the buyer's part of the dispute split (CLOSED)
    refunds: list[tuple[int, int]] = field(default_factory=list)  # (refund id, amount)
    extensions: list[tuple[int, int]] = field(default_factory=list)  # (extension id, seconds)

    @property
    def held(self) -> int:
        """What is still in escrow for this trade."""
        return self.amount - self.refunded - self.released - self.fee


@dataclass(slots=True)
class TradeStep:
    """The escrow part of a 2PC PREPARE on the trade's shard: the command and the version it was planned at."""

    expected_version: int
    command: TradeCommand


# ------------------------------------------------------------------ packing

_M64 = (1 << 64) - 1
# kind, trade_id, arg_id, amount, seconds, buyer, seller, ledger, fee_bps, ship_by, auto_confirm,
# user_data_128, user_data_64, user_data_32
_COMMAND = struct.Struct("<B QQ QQ Q I QQ QQ I I I I QQ Q I")
# id, buyer, seller, amount, ledger, fee_bps, ship_by, auto_confirm, ud128, ud64, ud32, state,
# state_before_dispute, closed_by, version, refunded, released, fee, created_at, shipped_at, closed_at,
# timer, deadline, timer_remaining_ns, extended_s, dispute_opened, dispute_buyer_amount, n refunds, n extensions
_TRADE = struct.Struct("<QQ QQ QQ Q I I I I QQ Q I B B B I Q Q Q Q Q Q B Q Q I B Q B B")
_REFUND = struct.Struct("<QQQ")  # id lo, id hi, amount
_EXTENSION = struct.Struct("<QQI")  # id lo, id hi, seconds
_STEP_HEAD = struct.Struct("<I")  # expected_version


def pack_command(c: TradeCommand) -> bytes:
    """The fixed-size form of a command; raises struct.error on out-of-range fields."""
    return _COMMAND.pack(
        c.kind, c.trade_id & _M64, c.trade_id >> 64, c.arg_id & _M64, c.arg_id >> 64, c.amount, c.seconds,
        c.buyer_account_id & _M64, c.buyer_account_id >> 64, c.seller_account_id & _M64, c.seller_account_id >> 64,
        c.ledger, c.fee_bps, c.ship_by_timeout_s, c.auto_confirm_timeout_s,
        c.user_data_128 & _M64, c.user_data_128 >> 64, c.user_data_64, c.user_data_32,
    )  # fmt: skip


def unpack_command(b: bytes) -> TradeCommand:
    v = _COMMAND.unpack(b)
    return TradeCommand(
        v[0], v[1] | v[2] << 64, v[3] | v[4] << 64, v[5], v[6], v[7] | v[8] << 64, v[9] | v[10] << 64,
        v[11], v[12], v[13], v[14], v[15] | v[16] << 64, v[17], v[18],
    )  # fmt: skip


COMMAND_SIZE = _COMMAND.size
TRADE_STEP_SIZE = _STEP_HEAD.size + COMMAND_SIZE


def pack_trade_step(s: TradeStep) -> bytes:
    return _STEP_HEAD.pack(s.expected_version) + pack_command(s.command)


def unpack_trade_step(b: bytes) -> TradeStep:
    if len(b) != TRADE_STEP_SIZE:
        raise ValueError(f"trade step has {len(b)} bytes, expected {TRADE_STEP_SIZE}")
    (version,) = _STEP_HEAD.unpack_from(b, 0)
    return TradeStep(version, unpack_command(b[_STEP_HEAD.size :]))


def pack_trade(t: Trade) -> bytes:
    """The stored form of a trade: a fixed head, then its refunds and extensions."""
    parts = [_TRADE.pack(
        t.id & _M64, t.id >> 64, t.buyer_account_id & _M64, t.buyer_account_id >> 64,
        t.seller_account_id & _M64, t.seller_account_id >> 64, t.amount, t.ledger, t.fee_bps,
        t.ship_by_timeout_s, t.auto_confirm_timeout_s, t.user_data_128 & _M64, t.user_data_128 >> 64,
        t.user_data_64, t.user_data_32, t.state, t.state_before_dispute, t.closed_by, t.version,
        t.refunded, t.released, t.fee, t.created_at, t.shipped_at, t.closed_at, t.timer, t.deadline,
        t.timer_remaining_ns, t.extended_s, 1 if t.dispute_opened else 0, t.dispute_buyer_amount,
        len(t.refunds), len(t.extensions),
    )]  # fmt: skip
    parts.extend(_REFUND.pack(i & _M64, i >> 64, amount) for i, amount in t.refunds)
    parts.extend(_EXTENSION.pack(i & _M64, i >> 64, seconds) for i, seconds in t.extensions)
    return b"".join(parts)


def unpack_trade(b: bytes) -> Trade:
    v = _TRADE.unpack_from(b, 0)
    n_refunds, n_extensions = v[-2], v[-1]
    if len(b) != _TRADE.size + n_refunds * _REFUND.size + n_extensions * _EXTENSION.size:
        raise ValueError(f"trade record of {len(b)} bytes does not match its {n_refunds} refunds, "
                         f"{n_extensions} extensions")
    pos = _TRADE.size
    refunds = []
    for _ in range(n_refunds):
        lo, hi, amount = _REFUND.unpack_from(b, pos)
        refunds.append((lo | hi << 64, amount))
        pos += _REFUND.size
    extensions = []
    for _ in range(n_extensions):
        lo, hi, seconds = _EXTENSION.unpack_from(b, pos)
        extensions.append((lo | hi << 64, seconds))
        pos += _EXTENSION.size
    return Trade(
        v[0] | v[1] << 64, v[2] | v[3] << 64, v[4] | v[5] << 64, v[6], v[7], v[8], v[9], v[10],
        v[11] | v[12] << 64, v[13], v[14], v[15], v[16], v[17], v[18], v[19], v[20], v[21], v[22], v[23],
        v[24], v[25], v[26], v[27], v[28], bool(v[29]), v[30], refunds, extensions,
    )  # fmt: skip

"""Clearing: participants, clearing items, clearing commands, and their binary forms.

A *participant* is a bank or payment institution that clears on one ledger
(currency). A *clearing item* is one obligation between two participants: the payer
owes the payee `amount`. Items are fixed-size records (like transfers) so a batch is
cheap to replicate and to apply on every replica; the commands that manage
participants, allowances and windows are rare and variable-sized (msgpack, with
128-bit integers as an extension type).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import msgpack

from tidebank.common.keys import U64_MAX

PARTICIPANT_NAME_BYTES_MAX = 32
_M64 = U64_MAX

ITEM_ACCEPTED = 0
ITEM_UNWOUND = 1  # excluded from its window by an unwind: moves nothing, counts for nothing
ITEM_ABORTED = 2  # excluded with its whole window (an abort): moves nothing, counts for nothing

# id, payer, payee (u128 as lo, hi), amount, ledger, user_data_128, user_data_64, window, timestamp, status
_ITEM = struct.Struct("<QQQQQQQIQQQQQB")
ITEM_SIZE = _ITEM.size

# id, ledger, code, name, settlement account, net debit cap, suspended, version
_PARTICIPANT = struct.Struct("<QQII32sQQQBI")


@dataclass(slots=True)
class ClearingItem:
    """One obligation: `payer_id` owes `payee_id` `amount` minor units of `ledger`.

    `window`, `timestamp` and `status` are set when the item is accepted."""

    id: int
    payer_id: int = 0
    payee_id: int = 0
    amount: int = 0
    ledger: int = 0
    user_data_128: int = 0
    user_data_64: int = 0
    window: int = 0
    timestamp: int = 0
    status: int = ITEM_ACCEPTED


def pack_item(i: ClearingItem) -> bytes:
    return _ITEM.pack(
        i.id & _M64, i.id >> 64, i.payer_id & _M64, i.payer_id >> 64, i.payee_id & _M64, i.payee_id >> 64,
        i.amount, i.ledger, i.user_data_128 & _M64, i.user_data_128 >> 64, i.user_data_64, i.window, i.timestamp,
        i.status,
    )


def unpack_item(raw: bytes) -> ClearingItem:
    (a, b, c, d, e, f, amount, ledger, g, h, ud64, window, ts, status) = _ITEM.unpack(raw)
    return ClearingItem(a | b << 64, c | d << 64, e | f << 64, amount, ledger, g | h << 64, ud64, window, ts, status)


@dataclass(slots=True)
class Participant:
    """A clearing participant of one ledger. `version` counts its changes: every shard keeps a copy, and a
    copy only ever moves forward."""

    id: int
    ledger: int = 0
    code: int = 0
    name: str = ""
    settlement_account_id: int = 0
    net_debit_cap: int = 0
    suspended: bool = False
    version: int = 0


def pack_participant(p: Participant) -> bytes:
    name = p.name.encode()
    if len(name) > PARTICIPANT_NAME_BYTES_MAX:
        raise ValueError(f"participant name longer than {PARTICIPANT_NAME_BYTES_MAX} bytes")
    return _PARTICIPANT.pack(p.id & _M64, p.id >> 64, p.ledger, p.code, name,
                             p.settlement_account_id & _M64, p.settlement_account_id >> 64,
                             p.net_debit_cap, int(p.suspended), p.version)


def unpack_participant(raw: bytes) -> Participant:
    a, b, ledger, code, name, c, d, cap, suspended, version = _PARTICIPANT.unpack(raw)
    return Participant(a | b << 64, ledger, code, name.rstrip(b"\0").decode(), c | d << 64, cap, bool(suspended),
                       version)


# --- commands: everything but the items themselves -----------------------------------------------------

CMD_REGISTER = 1  # participant's home: register (idempotent by id and fields)
CMD_UPDATE = 2  # participant's home: new cap and/or suspended flag
CMD_COPY = 3  # every shard: the participant's record at a version; on the ledger's home it opens window 1
CMD_PROPAGATED = 4  # participant's home: every shard holds this version
CMD_TAKE = 5  # allowance source: take up to an amount of a participant's headroom (or pool), remember the move
CMD_GIVE = 6  # allowance destination: add a move's amount (once per move id)
CMD_ACK = 7  # allowance source: the destination has the move
CMD_BEGIN_CLOSE = 8  # ledger's home: the open window starts closing, the next one opens
CMD_CLOSE_HERE = 9  # every shard: items from now on go to the next window
CMD_CLOSED = 10  # ledger's home: the window's netting, summed over every shard
CMD_BEGIN_SETTLE = 11  # ledger's home: closed -> settling
CMD_SETTLE_FAILED = 12  # ledger's home: settling -> closed, with why
CMD_SETTLE_HERE = 13  # every shard: the window's settled amounts give the cap back
CMD_SETTLED = 14  # ledger's home: settling -> settled
CMD_UNWIND_HERE = 15  # every shard: exclude a participant's items of a closed window (a bounded number per entry)
CMD_UNWOUND = 16  # ledger's home: the window re-netted without that participant
CMD_BEGIN_UNWIND = 17  # ledger's home: a closed window is being unwound (it cannot start settling meanwhile)
CMD_BEGIN_ABORT = 18  # ledger's home: a closed window is being aborted (it can neither settle nor unwind now)
CMD_ABORT_HERE = 19  # every shard: exclude the window's items (a bounded number per entry), give their positions back
CMD_ABORTED = 20  # ledger's home: aborting -> aborted (terminal)
CMD_ABORT_CANCELLED = 21  # ledger's home: aborting -> closed (its settlement turned out to have committed)
CMD_ADMIT = 22  # ledger's home: count a participant toward the ledger's limit before it is registered
CMD_RELEASE = 23  # ledger's home: uncount it (its registration was refused: it belongs to another ledger)

COMMAND_TAGS = frozenset(range(CMD_REGISTER, CMD_RELEASE + 1))


@dataclass(frozen=True, slots=True)
class ClearingCommand:
    """One clearing command: its tag and its arguments (ints, bools, strings, lists of them)."""

    tag: int
    args: tuple = field(default=())


def _default(value: Any) -> Any:
    if isinstance(value, int):  # beyond msgpack's 64 bits: a 128-bit id or sum
        return msgpack.ExtType(1, value.to_bytes(17, "big", signed=True))
    raise TypeError(f"cannot pack {type(value).__name__}")


def _ext_hook(code: int, data: bytes) -> Any:
    if code == 1:
        return int.from_bytes(data, "big", signed=True)
    raise ValueError(f"unknown msgpack extension {code}")


def pack_value(value: Any) -> bytes:
    return msgpack.packb(value, default=_default, use_bin_type=True)


def unpack_value(raw: bytes) -> Any:
    return msgpack.unpackb(raw, ext_hook=_ext_hook, raw=False, strict_map_key=False)


def pack_command(c: ClearingCommand) -> bytes:
    return pack_value([c.tag, *c.args])


def unpack_command(raw: bytes) -> ClearingCommand:
    try:
        value = unpack_value(raw)
    except Exception as exc:  # msgpack raises several kinds for garbage
        raise ValueError(f"not a clearing command: {exc}") from exc
    if not isinstance(value, list) or not value or value[0] not in COMMAND_TAGS:
        raise ValueError("not a clearing command")
    return ClearingCommand(value[0], tuple(_tuples(a) for a in value[1:]))


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def plain(value: Any) -> Any:
    """A read's answer as msgpack-able values (records become lists of their fields, in field order), the same
    whether it was read here or on another node."""
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if hasattr(value, "__dataclass_fields__"):
        return [getattr(value, f) for f in value.__dataclass_fields__]
    return value

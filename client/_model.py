"""Plain-Python values of the ledger API and their protobuf conversions.

Nothing here does I/O. The result enums are built from the proto descriptors at
import time, so they cannot drift from the contract; the flag and consistency
enums are written out (for editors and type checkers) and checked against the
descriptors at import time.
"""

from __future__ import annotations

import enum
import os
import threading
import time
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

from tidebank.common.keys import DEFAULT_SLOT_COUNT, U64_MAX, U128_MAX, id_near, slot_of
from tidebank.common.records import ACCOUNT_STRUCT, M64, TRANSFER_STRUCT
from tidebank.v1 import admin_pb2, clearing_pb2, escrow_pb2, ledger_pb2, types_pb2

__all__ = [
    "Account",
    "AccountFlags",
    "AccountResult",
    "BilateralPosition",
    "ClearingItem",
    "ClearingItemResult",
    "ClearingItemResultCode",
    "ClearingItemStatus",
    "CreateAccountResult",
    "CreateTransferResult",
    "DisputeResolution",
    "Extension",
    "NetPosition",
    "NewTrade",
    "Page",
    "Participant",
    "ParticipantResult",
    "ParticipantResultCode",
    "ParticipantUpdate",
    "ReadConsistency",
    "Refund",
    "Replica",
    "Shard",
    "ShardMap",
    "Shortfall",
    "Statement",
    "Trade",
    "TradeClosedBy",
    "TradePage",
    "TradeResult",
    "TradeResultCode",
    "TradeRole",
    "TradeState",
    "TradeTimer",
    "Transfer",
    "TransferFlags",
    "TransferResult",
    "Window",
    "WindowResultCode",
    "WindowState",
    "WindowStep",
    "new_id",
]


# --------------------------------------------------------------------------- enums


class AccountFlags(enum.IntFlag):
    """Bits of Account.flags (proto enum AccountFlag)."""

    NONE = 0
    LINKED = 1
    DEBITS_MUST_NOT_EXCEED_CREDITS = 2
    CREDITS_MUST_NOT_EXCEED_DEBITS = 4
    HISTORY = 8
    CLOSED = 16


class TransferFlags(enum.IntFlag):
    """Bits of Transfer.flags (proto enum TransferFlag)."""

    NONE = 0
    LINKED = 1
    PENDING = 2
    POST_PENDING_TRANSFER = 4
    VOID_PENDING_TRANSFER = 8
    BALANCING_DEBIT = 16
    BALANCING_CREDIT = 32


class ReadConsistency(enum.IntEnum):
    """How fresh a read must be (proto enum ReadConsistency)."""

    LINEARIZABLE = 0  # confirmed through the shard leader's log
    STALE = 1  # any replica's local state: fast, possibly behind


class TradeState(enum.IntEnum):
    """Where a trade is in its life (proto enum TradeState)."""

    UNSPECIFIED = 0
    PAID = 1  # the buyer's money is held; waiting for the seller to ship
    SHIPPED = 2  # waiting for the buyer to confirm (or the auto-confirm timer)
    SETTLED = 3  # released to the seller (terminal)
    REFUNDED = 4  # everything held went back to the buyer (terminal)
    DISPUTED = 5  # timers frozen until the dispute is withdrawn or resolved
    CLOSED = 6  # a dispute was resolved by a split (terminal)


class TradeTimer(enum.IntEnum):
    """Which timer of a trade runs, or is paused while disputed (proto enum TradeTimer)."""

    NONE = 0
    SHIP_BY = 1  # fires: the held money is refunded to the buyer
    AUTO_CONFIRM = 2  # fires: the held money is released to the seller


class TradeClosedBy(enum.IntEnum):
    """How a trade reached its terminal state (proto enum TradeClosedBy)."""

    NONE = 0
    BUYER_CONFIRMED = 1
    AUTO_CONFIRMED = 2
    REFUNDED = 3
    SHIP_BY_EXPIRED = 4
    DISPUTE_RESOLVED = 5


class TradeRole(enum.IntEnum):
    """Which side of its trades list_trades lists an account on (proto enum TradeRole)."""

    BUYER = 0
    SELLER = 1


class ClearingItemStatus(enum.IntEnum):
    """Whether an item still counts in its window (proto enum ClearingItemStatus)."""

    ACCEPTED = 0
    UNWOUND = 1  # excluded from its window by an unwind of its payer or payee
    ABORTED = 2  # excluded with its whole window (abort_window)


class WindowState(enum.IntEnum):
    """Where a clearing window is in its life (proto enum WindowState)."""

    OPEN = 0  # takes new items
    CLOSING = 1  # cut across the shards; the next window is already open
    CLOSED = 2  # netted; may be settled (or unwound and re-netted)
    SETTLING = 3
    SETTLED = 4  # the net positions moved by ledger transfers (terminal)
    ABORTED = 5  # aborted after closing: nothing settled, its items excluded (terminal)


def _proto_members(descriptor: Any, prefix: str) -> dict[str, int]:
    members = {}
    for value in descriptor.values:
        if not value.name.startswith(prefix):
            raise RuntimeError(f"{descriptor.full_name}.{value.name} lacks the prefix {prefix}")
        members[value.name[len(prefix) :]] = value.number
    return members


def _check_static_enum(cls: type[enum.Enum], descriptor: Any, prefix: str) -> None:
    """Fail at import if a hand-written enum disagrees with the proto."""
    want = _proto_members(descriptor, prefix)
    have = {name: int(m.value) for name, m in cls.__members__.items()}
    if want != have:
        raise RuntimeError(f"{cls.__name__} drifted from {descriptor.full_name}: {have} != {want}")


_check_static_enum(AccountFlags, types_pb2.AccountFlag.DESCRIPTOR, "ACCOUNT_FLAG_")
_check_static_enum(TransferFlags, types_pb2.TransferFlag.DESCRIPTOR, "TRANSFER_FLAG_")
_check_static_enum(ReadConsistency, ledger_pb2.ReadConsistency.DESCRIPTOR, "READ_CONSISTENCY_")
_check_static_enum(TradeState, escrow_pb2.TradeState.DESCRIPTOR, "TRADE_STATE_")
_check_static_enum(TradeTimer, escrow_pb2.TradeTimer.DESCRIPTOR, "TRADE_TIMER_")
_check_static_enum(TradeClosedBy, escrow_pb2.TradeClosedBy.DESCRIPTOR, "TRADE_CLOSED_BY_")
_check_static_enum(TradeRole, escrow_pb2.TradeRole.DESCRIPTOR, "TRADE_ROLE_")
_check_static_enum(ClearingItemStatus, clearing_pb2.ClearingItemStatus.DESCRIPTOR, "CLEARING_ITEM_STATUS_")
_check_static_enum(WindowState, clearing_pb2.WindowState.DESCRIPTOR, "WINDOW_STATE_")


def _result_enum(name: str, descriptor: Any, prefix: str) -> Any:
    members = {k.lower(): v for k, v in _proto_members(descriptor, prefix).items()}
    cls = enum.IntEnum(name, members, module=__name__, qualname=name)
    cls.__doc__ = f"Per-item result codes of {descriptor.full_name} (built from the proto)."
    return cls


#: Per-item result of CreateAccounts: ``CreateAccountResult.created``, ``.exists``, ...
CreateAccountResult = _result_enum(
    "CreateAccountResult", types_pb2.CreateAccountResult.DESCRIPTOR, "CREATE_ACCOUNT_RESULT_"
)
#: Per-item result of CreateTransfers: ``CreateTransferResult.exceeds_credits``, ...
CreateTransferResult = _result_enum(
    "CreateTransferResult", types_pb2.CreateTransferResult.DESCRIPTOR, "CREATE_TRANSFER_RESULT_"
)

#: Per-item result of every Escrow write: ``TradeResultCode.ok``, ``.exists``, ``.transfer_failed``, ...
TradeResultCode = _result_enum("TradeResultCode", escrow_pb2.TradeResultCode.DESCRIPTOR, "TRADE_RESULT_")

#: Per-item result of RegisterParticipants and UpdateParticipants: ``ParticipantResultCode.ok``, ``.exists``, ...
ParticipantResultCode = _result_enum(
    "ParticipantResultCode", clearing_pb2.ParticipantResult.DESCRIPTOR, "PARTICIPANT_RESULT_"
)
#: Per-item result of SubmitItems: ``ClearingItemResultCode.ok``, ``.exceeds_net_debit_cap``, ...
ClearingItemResultCode = _result_enum(
    "ClearingItemResultCode", clearing_pb2.ClearingItemResult.DESCRIPTOR, "CLEARING_ITEM_RESULT_"
)
#: Result of a window step (close, settle, unwind): ``WindowResultCode.ok``, ``.insufficient_funds``, ...
WindowResultCode = _result_enum("WindowResultCode", clearing_pb2.WindowResult.DESCRIPTOR, "WINDOW_RESULT_")

_ACCOUNT_OK = frozenset((CreateAccountResult.created, CreateAccountResult.exists))
_TRANSFER_OK = frozenset((CreateTransferResult.created, CreateTransferResult.exists))
_TRADE_OK = frozenset((TradeResultCode.ok, TradeResultCode.exists))
_PARTICIPANT_OK = frozenset((ParticipantResultCode.ok, ParticipantResultCode.exists))
_ITEM_OK = frozenset((ClearingItemResultCode.ok, ClearingItemResultCode.exists))


def _account_status(code: int) -> Any:
    try:
        return CreateAccountResult(code)
    except ValueError:  # a code newer than this client: keep the number
        return code


def _transfer_status(code: int) -> Any:
    try:
        return CreateTransferResult(code)
    except ValueError:
        return code


def _known(cls: type[enum.IntEnum], value: int) -> Any:
    """``cls(value)``, or the bare int for a value newer than this client."""
    try:
        return cls(value)
    except ValueError:
        return value


# --------------------------------------------------------------------------- values


@dataclass(slots=True)
class Account:
    """An account (proto tidebank.v1.Account). Balances and timestamp are set by the server."""

    id: int = 0
    _: KW_ONLY
    debits_pending: int = 0
    debits_posted: int = 0
    credits_pending: int = 0
    credits_posted: int = 0
    user_data_128: int = 0
    user_data_64: int = 0
    user_data_32: int = 0
    ledger: int = 0
    code: int = 0
    flags: int = AccountFlags.NONE
    timestamp: int = 0


@dataclass(slots=True)
class Transfer:
    """A transfer (proto tidebank.v1.Transfer). The timestamp is set by the server."""

    id: int = 0
    _: KW_ONLY
    debit_account_id: int = 0
    credit_account_id: int = 0
    amount: int = 0
    pending_id: int = 0
    user_data_128: int = 0
    user_data_64: int = 0
    user_data_32: int = 0
    timeout: int = 0
    ledger: int = 0
    code: int = 0
    flags: int = TransferFlags.NONE
    timestamp: int = 0


@dataclass(frozen=True, slots=True)
class AccountResult:
    """The outcome of one item of create_accounts: its index in the request, its id, its code."""

    index: int
    id: int
    status: Any  # CreateAccountResult

    @property
    def ok(self) -> bool:
        """True when the account exists as requested (created now or by an earlier request)."""
        return self.status in _ACCOUNT_OK


@dataclass(frozen=True, slots=True)
class TransferResult:
    """The outcome of one item of create_transfers: its index in the request, its id, its code."""

    index: int
    id: int
    status: Any  # CreateTransferResult

    @property
    def ok(self) -> bool:
        """True when the transfer exists as requested (created now or by an earlier request)."""
        return self.status in _TRANSFER_OK


@dataclass(slots=True)
class Page:
    """One page of get_account_transfers (Transfer items) or list_trades (Trade items).
    ``next_page_token`` is empty on the last page."""

    items: list[Any]
    next_page_token: str = ""


# --------------------------------------------------------------------------- escrow values


@dataclass(slots=True)
class NewTrade:
    """A trade to open (proto CreateTrade): ``amount`` moves from the buyer into escrow.

    The two timeouts are required: no default fits every business, and a wrong one
    refunds or releases money on its own.
    """

    id: int
    buyer_account_id: int
    seller_account_id: int
    amount: int
    ledger: int
    _: KW_ONLY
    fee_bps: int = 0
    ship_by_timeout_s: int
    auto_confirm_timeout_s: int
    user_data_128: int = 0
    user_data_64: int = 0
    user_data_32: int = 0


@dataclass(slots=True)
class Refund:
    """A partial or full refund of a trade, idempotent by ``refund_id`` within the trade."""

    trade_id: int
    refund_id: int
    amount: int


@dataclass(slots=True)
class DisputeResolution:
    """Ends a dispute by a split: ``buyer_amount`` to the buyer, the rest (less the fee) to the seller."""

    trade_id: int
    buyer_amount: int


@dataclass(slots=True)
class Extension:
    """Extends a trade's auto-confirm timer, idempotent by ``extension_id`` within the trade."""

    trade_id: int
    extension_id: int
    extend_by_s: int


@dataclass(frozen=True, slots=True)
class TradeRef:
    """One trade id as an item of ship/confirm/open/withdraw (proto TradeId)."""

    trade_id: int


@dataclass(slots=True)
class Trade:
    """A trade as the server keeps it (proto tidebank.v1.Trade); every field is set by the server.

    ``refunds`` are (refund_id, amount) pairs and ``extensions`` (extension_id,
    extend_by_s) pairs, in the order they were applied. Times are cluster time in ns.
    """

    id: int = 0
    _: KW_ONLY
    buyer_account_id: int = 0
    seller_account_id: int = 0
    amount: int = 0
    ledger: int = 0
    fee_bps: int = 0
    ship_by_timeout_s: int = 0
    auto_confirm_timeout_s: int = 0
    user_data_128: int = 0
    user_data_64: int = 0
    user_data_32: int = 0
    state: int = TradeState.UNSPECIFIED
    state_before_dispute: int = TradeState.UNSPECIFIED
    closed_by: int = TradeClosedBy.NONE
    version: int = 0
    held: int = 0
    refunded: int = 0
    released: int = 0
    fee: int = 0
    created_at: int = 0
    shipped_at: int = 0
    closed_at: int = 0
    timer: int = TradeTimer.NONE
    deadline: int = 0
    timer_remaining_ns: int = 0
    extended_s: int = 0
    dispute_opened: bool = False
    refunds: list[tuple[int, int]] = field(default_factory=list)
    extensions: list[tuple[int, int]] = field(default_factory=list)
    escrow_account_id: int = 0
    fee_account_id: int = 0


@dataclass(frozen=True, slots=True)
class TradeResult:
    """The outcome of one item of an escrow write: its index in the request, its trade id, its code.

    ``transfer_status`` says why the money movement was refused; it is set only when
    ``status`` is ``TradeResultCode.transfer_failed``.
    """

    index: int
    trade_id: int
    status: Any  # TradeResultCode (an int if newer than this client)
    transfer_status: Any = None  # CreateTransferResult | None

    @property
    def ok(self) -> bool:
        """True when the step is applied (now or by an earlier request with the same ids)."""
        return self.status in _TRADE_OK


#: One page of list_trades: the same value as get_account_transfers' pages, with Trade items.
TradePage = Page


# --------------------------------------------------------------------------- clearing values


@dataclass(slots=True)
class Participant:
    """A clearing participant (proto tidebank.v1.Participant).

    ``suspended``, ``version`` and ``position`` are the server's (register ignores
    them); ``position`` is what it owes minus what it is owed over unsettled windows,
    summed over every shard, and never exceeds ``net_debit_cap``.
    """

    id: int = 0
    _: KW_ONLY
    ledger: int = 0
    code: int = 0
    name: str = ""
    settlement_account_id: int = 0
    net_debit_cap: int = 0
    suspended: bool = False
    version: int = 0
    position: int = 0


@dataclass(slots=True)
class ParticipantUpdate:
    """A change to a participant: each field left None stays as it is."""

    id: int
    net_debit_cap: int | None = None
    suspended: bool | None = None


@dataclass(frozen=True, slots=True)
class ParticipantResult:
    """The outcome of one item of register_participants / update_participants: index, participant id, code."""

    index: int
    id: int
    status: Any  # ParticipantResultCode (an int if newer than this client)

    @property
    def ok(self) -> bool:
        """True when the participant is as requested (changed now, or registered by an earlier request)."""
        return self.status in _PARTICIPANT_OK


@dataclass(slots=True)
class ClearingItem:
    """One obligation: the payer owes the payee ``amount`` on ``ledger`` (proto tidebank.v1.ClearingItem).

    ``window``, ``timestamp`` and ``status`` are set by the server when it accepts the item.
    """

    id: int = 0
    _: KW_ONLY
    payer_id: int = 0
    payee_id: int = 0
    amount: int = 0
    ledger: int = 0
    user_data_128: int = 0
    user_data_64: int = 0
    window: int = 0
    timestamp: int = 0
    status: int = ClearingItemStatus.ACCEPTED


@dataclass(frozen=True, slots=True)
class ClearingItemResult:
    """The outcome of one item of submit_items: its index in the request, its id, its code."""

    index: int
    id: int
    status: Any  # ClearingItemResultCode (an int if newer than this client)

    @property
    def ok(self) -> bool:
        """True when the item is accepted (now or by an earlier request with the same id)."""
        return self.status in _ITEM_OK


@dataclass(slots=True)
class NetPosition:
    """A participant's gross and net over one window: ``net = sent - received``; > 0 pays in at settlement."""

    participant_id: int
    sent: int = 0
    received: int = 0
    count_sent: int = 0
    count_received: int = 0
    net: int = 0


@dataclass(slots=True)
class BilateralPosition:
    """What one payer owes one payee over a window, gross (one cell of the bilateral matrix)."""

    payer_id: int
    payee_id: int
    amount: int = 0
    count: int = 0


@dataclass(slots=True)
class Window:
    """A clearing window of a ledger (proto tidebank.v1.Window); times are cluster time in ns.

    ``nets`` are filled for closed windows (not by list_windows), ``bilateral`` only by
    get_window(bilateral=True), ``settlement_transfer_ids`` once settled.
    """

    ledger: int = 0
    number: int = 0
    _: KW_ONLY
    state: int = WindowState.OPEN
    opened_at: int = 0
    closed_at: int = 0
    settled_at: int = 0
    round: int = 0
    unwound: list[int] = field(default_factory=list)
    failure: str = ""
    nets: list[NetPosition] = field(default_factory=list)
    bilateral: list[BilateralPosition] = field(default_factory=list)
    settlement_transfer_ids: list[int] = field(default_factory=list)
    hub_account_id: int = 0
    aborted_at: int = 0


@dataclass(slots=True)
class Shortfall:
    """A debtor that cannot pay in at settlement: it must pay ``net_debit`` and its account holds ``available``."""

    participant_id: int
    net_debit: int = 0
    available: int = 0
    shortfall: int = 0


@dataclass(slots=True)
class WindowStep:
    """The answer of close_window, settle_window and unwind_participant: the code, the window as it is now,
    and (for ``insufficient_funds``) every debtor that cannot pay."""

    result: Any  # WindowResultCode (an int if newer than this client)
    window: Window
    shortfalls: list[Shortfall] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.result == WindowResultCode.ok


@dataclass(slots=True)
class Statement:
    """A participant's statement of one window, sent after its items by export_statement.

    ``sha256`` (hex) is over ``"id,payer_id,payee_id,amount\\n"`` of each accepted item, by id;
    ``items`` counts them. Both, and the sums, cover the whole window even when the export was resumed.
    """

    participant_id: int = 0
    _: KW_ONLY
    ledger: int = 0
    window: int = 0
    sent: int = 0
    received: int = 0
    count_sent: int = 0
    count_received: int = 0
    net: int = 0
    settlement_transfer_id: int = 0
    settlement_amount: int = 0
    sha256: str = ""
    items: int = 0


# --------------------------------------------------------------------------- shard map


@dataclass(frozen=True, slots=True)
class Replica:
    node: str
    dc: str
    address: str


@dataclass(frozen=True, slots=True)
class Shard:
    shard_id: int
    slots: tuple[tuple[int, int], ...]  # [start, end) ranges
    replicas: tuple[Replica, ...]
    leader_node: str = ""  # as the answering node last saw it; "" if unknown
    leader_address: str = ""  # the leader replica's address; "" if unknown

    @property
    def leader(self) -> Replica | None:
        for r in self.replicas:
            if r.node == self.leader_node:
                return r
        return None


@dataclass(frozen=True)
class ShardMap:
    """A versioned assignment of hash slots to shards (Admin.GetShardMap)."""

    version: int
    slot_count: int
    shards: tuple[Shard, ...]
    _by_slot: tuple[int, ...] = field(default=(), init=False, repr=False, compare=False)
    _by_id: dict[int, Shard] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_slot = [-1] * self.slot_count
        for shard in self.shards:
            for start, end in shard.slots:
                for s in range(max(start, 0), min(end, self.slot_count)):
                    by_slot[s] = shard.shard_id
        object.__setattr__(self, "_by_slot", tuple(by_slot))
        object.__setattr__(self, "_by_id", {s.shard_id: s for s in self.shards})

    def slot_of(self, key_id: int) -> int:
        return slot_of(key_id, self.slot_count)

    def shard_id_for_slot(self, slot: int) -> int | None:
        """The shard that owns a slot, or None if no shard lists it."""
        sid = self._by_slot[slot] if 0 <= slot < self.slot_count else -1
        return None if sid < 0 else sid

    def shard_id_for(self, key_id: int) -> int | None:
        """The shard that owns an account id (or debit account id of a transfer)."""
        if self.slot_count <= 0:
            return None
        return self.shard_id_for_slot(slot_of(key_id, self.slot_count))

    def shard(self, shard_id: int) -> Shard | None:
        return self._by_id.get(shard_id)

    def shard_for(self, key_id: int) -> Shard | None:
        sid = self.shard_id_for(key_id)
        return None if sid is None else self._by_id.get(sid)

    def addresses(self) -> list[str]:
        """Every replica address, each once, in map order."""
        seen: dict[str, None] = {}
        for shard in self.shards:
            for r in shard.replicas:
                if r.address:
                    seen.setdefault(r.address, None)
        return list(seen)

    @classmethod
    def from_proto(cls, m: admin_pb2.ShardMap) -> ShardMap:
        shards = []
        for s in m.shards:
            replicas = tuple(Replica(r.node, r.dc, r.address) for r in s.replicas)
            leader_address = ""
            if s.leader_node:
                for r in replicas:
                    if r.node == s.leader_node:
                        leader_address = r.address
                        break
            shards.append(
                Shard(
                    shard_id=s.shard_id,
                    slots=tuple((r.start, r.end) for r in s.slots),
                    replicas=replicas,
                    leader_node=s.leader_node,
                    leader_address=leader_address,
                )
            )
        return cls(version=m.version, slot_count=m.slot_count, shards=tuple(shards))


# --------------------------------------------------------------------------- conversions


def _set_u128(sub: Any, value: int) -> None:
    sub.hi = value >> 64
    sub.lo = value & U64_MAX


def _u128(m: Any) -> int:
    return (m.hi << 64) | m.lo


def _i128(m: Any) -> int:
    """A tidebank.v1.I128 (two's complement) as an int."""
    raw = (m.hi << 64) | m.lo
    return raw - (1 << 128) if m.hi >> 63 else raw


def _put_i128(sub: Any, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"expected an int, got {type(value).__name__}")
    if not -(1 << 127) <= value < 1 << 127:
        raise ValueError(f"{value} is not a signed 128-bit integer")
    raw = value & U128_MAX
    sub.hi = raw >> 64
    sub.lo = raw & U64_MAX


def u128_to_proto(value: int) -> types_pb2.U128:
    """A Python int (0..2^128-1) as a U128 message. ValueError when out of range."""
    if not 0 <= value <= U128_MAX:
        raise ValueError(f"{value} is not an unsigned 128-bit integer")
    return types_pb2.U128(hi=value >> 64, lo=value & U64_MAX)


def u128_from_proto(m: types_pb2.U128) -> int:
    return (m.hi << 64) | m.lo


_ACCOUNT_FIELDS = (
    "id", "debits_pending", "debits_posted", "credits_pending", "credits_posted", "user_data_128",
    "user_data_64", "user_data_32", "ledger", "code", "flags", "timestamp",
)  # fmt: skip
_TRANSFER_FIELDS = (
    "id", "debit_account_id", "credit_account_id", "amount", "pending_id", "user_data_128",
    "user_data_64", "user_data_32", "timeout", "ledger", "code", "flags", "timestamp",
)  # fmt: skip
_U128_FIELDS = frozenset(("id", "debit_account_id", "credit_account_id", "pending_id", "user_data_128"))


def account_to_record(a: Account) -> bytes:
    """The account's fixed binary form (tidebank.common.records), as `accounts_packed` carries it."""
    i, u = a.id, a.user_data_128
    return ACCOUNT_STRUCT.pack(
        i & M64, i >> 64, a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted,
        u & M64, u >> 64, a.user_data_64, a.user_data_32, a.ledger, a.code, a.flags, a.timestamp,
    )  # fmt: skip


def transfer_to_record(t: Transfer) -> bytes:
    """The transfer's fixed binary form (tidebank.common.records), as `transfers_packed` carries it: the node
    routes it and hands it to Raft without decoding it."""
    i, d, c, p, u = t.id, t.debit_account_id, t.credit_account_id, t.pending_id, t.user_data_128
    return TRANSFER_STRUCT.pack(
        i & M64, i >> 64, d & M64, d >> 64, c & M64, c >> 64, t.amount, p & M64, p >> 64, u & M64, u >> 64,
        t.user_data_64, t.user_data_32, t.timeout, t.ledger, t.code, t.flags, t.timestamp,
    )  # fmt: skip


def transfers_from_records(raw: bytes) -> list[Transfer]:
    """Inverse of transfer_to_record for a whole `transfers_packed` field."""
    return [
        Transfer(v[0] | v[1] << 64, debit_account_id=v[2] | v[3] << 64, credit_account_id=v[4] | v[5] << 64,
                 amount=v[6], pending_id=v[7] | v[8] << 64, user_data_128=v[9] | v[10] << 64, user_data_64=v[11],
                 user_data_32=v[12], timeout=v[13], ledger=v[14], code=v[15], flags=v[16], timestamp=v[17])
        for v in TRANSFER_STRUCT.iter_unpack(raw)
    ]


def account_to_proto(a: Account) -> types_pb2.Account:
    m = types_pb2.Account()
    _set_u128(m.id, a.id)
    if a.debits_pending:
        m.debits_pending = a.debits_pending
    if a.debits_posted:
        m.debits_posted = a.debits_posted
    if a.credits_pending:
        m.credits_pending = a.credits_pending
    if a.credits_posted:
        m.credits_posted = a.credits_posted
    if a.user_data_128:
        _set_u128(m.user_data_128, a.user_data_128)
    if a.user_data_64:
        m.user_data_64 = a.user_data_64
    if a.user_data_32:
        m.user_data_32 = a.user_data_32
    if a.ledger:
        m.ledger = a.ledger
    if a.code:
        m.code = a.code
    if a.flags:
        m.flags = a.flags
    if a.timestamp:
        m.timestamp = a.timestamp
    return m


def transfer_to_proto(t: Transfer) -> types_pb2.Transfer:
    m = types_pb2.Transfer()
    _set_u128(m.id, t.id)
    _set_u128(m.debit_account_id, t.debit_account_id)
    _set_u128(m.credit_account_id, t.credit_account_id)
    if t.amount:
        m.amount = t.amount
    if t.pending_id:
        _set_u128(m.pending_id, t.pending_id)
    if t.user_data_128:
        _set_u128(m.user_data_128, t.user_data_128)
    if t.user_data_64:
        m.user_data_64 = t.user_data_64
    if t.user_data_32:
        m.user_data_32 = t.user_data_32
    if t.timeout:
        m.timeout = t.timeout
    if t.ledger:
        m.ledger = t.ledger
    if t.code:
        m.code = t.code
    if t.flags:
        m.flags = t.flags
    if t.timestamp:
        m.timestamp = t.timestamp
    return m


def account_from_proto(m: types_pb2.Account) -> Account:
    return Account(
        _u128(m.id),
        debits_pending=m.debits_pending,
        debits_posted=m.debits_posted,
        credits_pending=m.credits_pending,
        credits_posted=m.credits_posted,
        user_data_128=_u128(m.user_data_128),
        user_data_64=m.user_data_64,
        user_data_32=m.user_data_32,
        ledger=m.ledger,
        code=m.code,
        flags=AccountFlags(m.flags),
        timestamp=m.timestamp,
    )


def transfer_from_proto(m: types_pb2.Transfer) -> Transfer:
    return Transfer(
        _u128(m.id),
        debit_account_id=_u128(m.debit_account_id),
        credit_account_id=_u128(m.credit_account_id),
        amount=m.amount,
        pending_id=_u128(m.pending_id),
        user_data_128=_u128(m.user_data_128),
        user_data_64=m.user_data_64,
        user_data_32=m.user_data_32,
        timeout=m.timeout,
        ledger=m.ledger,
        code=m.code,
        flags=TransferFlags(m.flags),
        timestamp=m.timestamp,
    )


def _u128_names(proto_cls: Any) -> frozenset[str]:
    """The fields of a message that are U128s (ids, user_data_128)."""
    return frozenset(
        f.name
        for f in proto_cls.DESCRIPTOR.fields
        if f.message_type is not None and f.message_type.full_name == types_pb2.U128.DESCRIPTOR.full_name
    )


# --------------------------------------------------------------------------- escrow conversions

_NEW_TRADE_FIELDS = (
    "id", "buyer_account_id", "seller_account_id", "amount", "ledger", "fee_bps", "ship_by_timeout_s",
    "auto_confirm_timeout_s", "user_data_128", "user_data_64", "user_data_32",
)  # fmt: skip
_TRADE_REF_FIELDS = ("trade_id",)
_REFUND_FIELDS = ("trade_id", "refund_id", "amount")
_RESOLUTION_FIELDS = ("trade_id", "buyer_amount")
_EXTENSION_FIELDS = ("trade_id", "extension_id", "extend_by_s")
_TRADE_SCALARS = (
    "amount", "ledger", "fee_bps", "ship_by_timeout_s", "auto_confirm_timeout_s", "user_data_64", "user_data_32",
    "state", "state_before_dispute", "closed_by", "version", "held", "refunded", "released", "fee", "created_at",
    "shipped_at", "closed_at", "timer", "deadline", "timer_remaining_ns", "extended_s", "dispute_opened",
)  # fmt: skip
_TRADE_IDS = ("buyer_account_id", "seller_account_id", "user_data_128", "escrow_account_id", "fee_account_id")


def _put_u128(sub: Any, value: int) -> None:
    """Set a U128 field, refusing what is not an unsigned 128-bit int (bools included)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"expected an int, got {type(value).__name__}")
    if not 0 <= value <= U128_MAX:
        raise ValueError(f"{value} is not an unsigned 128-bit integer")
    sub.hi = value >> 64
    sub.lo = value & U64_MAX


def new_trade_to_proto(t: NewTrade) -> escrow_pb2.CreateTrade:
    m = escrow_pb2.CreateTrade()
    _put_u128(m.id, t.id)
    _put_u128(m.buyer_account_id, t.buyer_account_id)
    _put_u128(m.seller_account_id, t.seller_account_id)
    m.amount = t.amount
    m.ledger = t.ledger
    m.fee_bps = t.fee_bps
    m.ship_by_timeout_s = t.ship_by_timeout_s
    m.auto_confirm_timeout_s = t.auto_confirm_timeout_s
    if t.user_data_128 != 0:
        _put_u128(m.user_data_128, t.user_data_128)
    m.user_data_64 = t.user_data_64
    m.user_data_32 = t.user_data_32
    return m


def trade_ref_to_proto(r: TradeRef) -> escrow_pb2.TradeId:
    m = escrow_pb2.TradeId()
    _put_u128(m.trade_id, r.trade_id)
    return m


def refund_to_proto(r: Refund) -> escrow_pb2.Refund:
    m = escrow_pb2.Refund()
    _put_u128(m.trade_id, r.trade_id)
    _put_u128(m.refund_id, r.refund_id)
    m.amount = r.amount
    return m


def resolution_to_proto(r: DisputeResolution) -> escrow_pb2.DisputeResolution:
    m = escrow_pb2.DisputeResolution()
    _put_u128(m.trade_id, r.trade_id)
    m.buyer_amount = r.buyer_amount
    return m


def extension_to_proto(e: Extension) -> escrow_pb2.Extension:
    m = escrow_pb2.Extension()
    _put_u128(m.trade_id, e.trade_id)
    _put_u128(m.extension_id, e.extension_id)
    m.extend_by_s = e.extend_by_s
    return m


def trade_from_proto(m: escrow_pb2.Trade) -> Trade:
    t = Trade(_u128(m.id))
    for name in _TRADE_IDS:
        setattr(t, name, _u128(getattr(m, name)))
    for name in _TRADE_SCALARS:
        setattr(t, name, getattr(m, name))
    t.state = _known(TradeState, m.state)
    t.state_before_dispute = _known(TradeState, m.state_before_dispute)
    t.closed_by = _known(TradeClosedBy, m.closed_by)
    t.timer = _known(TradeTimer, m.timer)
    t.refunds = [(_u128(r.refund_id), r.amount) for r in m.refunds]
    t.extensions = [(_u128(e.extension_id), e.extend_by_s) for e in m.extensions]
    return t


def trade_to_proto(t: Trade) -> escrow_pb2.Trade:
    """The wire form of a Trade: what a server (or the fake cluster) answers with."""
    m = escrow_pb2.Trade()
    _put_u128(m.id, t.id)
    for name in _TRADE_IDS:
        _put_u128(getattr(m, name), getattr(t, name))
    for name in _TRADE_SCALARS:
        setattr(m, name, getattr(t, name))
    for refund_id, amount in t.refunds:
        _put_u128(m.refunds.add(amount=amount).refund_id, refund_id)
    for extension_id, extend_by_s in t.extensions:
        _put_u128(m.extensions.add(extend_by_s=extend_by_s).extension_id, extension_id)
    return m


def trade_result(index: int, trade_id: int, m: escrow_pb2.TradeResult) -> TradeResult:
    """The caller's TradeResult of one wire result (transfer_status only for transfer_failed)."""
    status = _known(TradeResultCode, m.code)
    transfer = _transfer_status(m.transfer_result) if status == TradeResultCode.transfer_failed else None
    return TradeResult(index, trade_id, status, transfer)


# --------------------------------------------------------------------------- clearing conversions
#
# Register and submit send only what the client sets (the read-only fields are the server's); the
# ``*_to_proto`` of server values (windows, statements, ...) are what a server or a fake answers with.

_PARTICIPANT_FIELDS = ("id", "ledger", "code", "name", "settlement_account_id", "net_debit_cap")
_PARTICIPANT_UPDATE_FIELDS = ("id", "net_debit_cap", "suspended")
_CLEARING_ITEM_FIELDS = ("id", "payer_id", "payee_id", "amount", "ledger", "user_data_128", "user_data_64")
_WINDOW_SCALARS = ("ledger", "number", "opened_at", "closed_at", "settled_at", "round", "failure", "aborted_at")
_SHORTFALL_SCALARS = ("net_debit", "available", "shortfall")
_STATEMENT_SCALARS = ("ledger", "window", "count_sent", "count_received", "settlement_amount", "sha256", "items")


def participant_to_proto(p: Participant) -> clearing_pb2.Participant:
    """What register_participants sends: the read-only fields (suspended, version, position) stay unset."""
    m = clearing_pb2.Participant(ledger=p.ledger, code=p.code, name=p.name, net_debit_cap=p.net_debit_cap)
    _put_u128(m.id, p.id)
    _put_u128(m.settlement_account_id, p.settlement_account_id)
    return m


def participant_record_to_proto(p: Participant) -> clearing_pb2.Participant:
    """Every field, read-only ones included: what a server (or a fake) answers with."""
    m = participant_to_proto(p)
    m.suspended, m.version = p.suspended, p.version
    if p.position:
        _put_i128(m.position, p.position)
    return m


def participant_from_proto(m: clearing_pb2.Participant) -> Participant:
    return Participant(
        _u128(m.id),
        ledger=m.ledger,
        code=m.code,
        name=m.name,
        settlement_account_id=_u128(m.settlement_account_id),
        net_debit_cap=m.net_debit_cap,
        suspended=m.suspended,
        version=m.version,
        position=_i128(m.position),
    )


def participant_update_to_proto(u: ParticipantUpdate) -> clearing_pb2.ParticipantUpdate:
    """Only the fields to change are set (proto3 optional: an unset field changes nothing)."""
    m = clearing_pb2.ParticipantUpdate()
    _put_u128(m.id, u.id)
    if u.net_debit_cap is not None:
        m.net_debit_cap = u.net_debit_cap
    if u.suspended is not None:
        m.suspended = u.suspended
    return m


def participant_update_from_proto(m: clearing_pb2.ParticipantUpdate) -> ParticipantUpdate:
    return ParticipantUpdate(
        _u128(m.id),
        net_debit_cap=m.net_debit_cap if m.HasField("net_debit_cap") else None,
        suspended=m.suspended if m.HasField("suspended") else None,
    )


def clearing_item_to_proto(i: ClearingItem) -> clearing_pb2.ClearingItem:
    """What submit_items sends: the read-only fields (window, timestamp, status) stay unset."""
    m = clearing_pb2.ClearingItem(amount=i.amount, ledger=i.ledger, user_data_64=i.user_data_64)
    _put_u128(m.id, i.id)
    _put_u128(m.payer_id, i.payer_id)
    _put_u128(m.payee_id, i.payee_id)
    if i.user_data_128 != 0:
        _put_u128(m.user_data_128, i.user_data_128)
    return m


def clearing_item_record_to_proto(i: ClearingItem) -> clearing_pb2.ClearingItem:
    """Every field, read-only ones included: what a server (or a fake) answers with."""
    m = clearing_item_to_proto(i)
    m.window, m.timestamp, m.status = i.window, i.timestamp, int(i.status)
    return m


def clearing_item_from_proto(m: clearing_pb2.ClearingItem) -> ClearingItem:
    return ClearingItem(
        _u128(m.id),
        payer_id=_u128(m.payer_id),
        payee_id=_u128(m.payee_id),
        amount=m.amount,
        ledger=m.ledger,
        user_data_128=_u128(m.user_data_128),
        user_data_64=m.user_data_64,
        window=m.window,
        timestamp=m.timestamp,
        status=_known(ClearingItemStatus, m.status),
    )


def net_position_from_proto(m: clearing_pb2.NetPosition) -> NetPosition:
    """Sums beyond 64 bits come whole (U128 / I128)."""
    return NetPosition(_u128(m.participant_id), _u128(m.sent), _u128(m.received), m.count_sent, m.count_received,
                       _i128(m.net))


def net_position_to_proto(n: NetPosition) -> clearing_pb2.NetPosition:
    m = clearing_pb2.NetPosition(count_sent=n.count_sent, count_received=n.count_received)
    _put_u128(m.participant_id, n.participant_id)
    _put_u128(m.sent, n.sent)
    _put_u128(m.received, n.received)
    _put_i128(m.net, n.net)
    return m


def bilateral_from_proto(m: clearing_pb2.BilateralPosition) -> BilateralPosition:
    return BilateralPosition(_u128(m.payer_id), _u128(m.payee_id), _u128(m.amount), m.count)


def bilateral_to_proto(b: BilateralPosition) -> clearing_pb2.BilateralPosition:
    m = clearing_pb2.BilateralPosition(count=b.count)
    _put_u128(m.payer_id, b.payer_id)
    _put_u128(m.payee_id, b.payee_id)
    _put_u128(m.amount, b.amount)
    return m


def window_from_proto(m: clearing_pb2.Window) -> Window:
    w = Window(m.ledger, m.number)
    for name in _WINDOW_SCALARS:
        setattr(w, name, getattr(m, name))
    w.state = _known(WindowState, m.state)
    w.unwound = [_u128(u) for u in m.unwound]
    w.nets = [net_position_from_proto(n) for n in m.nets]
    w.bilateral = [bilateral_from_proto(b) for b in m.bilateral]
    w.settlement_transfer_ids = [_u128(t) for t in m.settlement_transfer_ids]
    w.hub_account_id = _u128(m.hub_account_id)
    return w


def window_to_proto(w: Window) -> clearing_pb2.Window:
    m = clearing_pb2.Window(state=int(w.state), **{k: getattr(w, k) for k in _WINDOW_SCALARS})
    for u in w.unwound:
        _put_u128(m.unwound.add(), u)
    m.nets.extend(net_position_to_proto(n) for n in w.nets)
    m.bilateral.extend(bilateral_to_proto(b) for b in w.bilateral)
    for t in w.settlement_transfer_ids:
        _put_u128(m.settlement_transfer_ids.add(), t)
    _put_u128(m.hub_account_id, w.hub_account_id)
    return m


def shortfall_from_proto(m: clearing_pb2.Shortfall) -> Shortfall:
    return Shortfall(_u128(m.participant_id), *(getattr(m, n) for n in _SHORTFALL_SCALARS))


def shortfall_to_proto(s: Shortfall) -> clearing_pb2.Shortfall:
    m = clearing_pb2.Shortfall(**{k: getattr(s, k) for k in _SHORTFALL_SCALARS})
    _put_u128(m.participant_id, s.participant_id)
    return m


def window_step_from_proto(m: clearing_pb2.WindowStepResponse) -> WindowStep:
    return WindowStep(
        _known(WindowResultCode, m.result),
        window_from_proto(m.window),
        [shortfall_from_proto(s) for s in m.shortfalls],
    )


def window_step_to_proto(s: WindowStep) -> clearing_pb2.WindowStepResponse:
    return clearing_pb2.WindowStepResponse(
        result=int(s.result), window=window_to_proto(s.window), shortfalls=[shortfall_to_proto(x) for x in s.shortfalls]
    )


def statement_from_proto(m: clearing_pb2.Statement) -> Statement:
    s = Statement(_u128(m.participant_id))
    for name in _STATEMENT_SCALARS:
        setattr(s, name, getattr(m, name))
    s.sent, s.received, s.net = _u128(m.sent), _u128(m.received), _i128(m.net)
    s.settlement_transfer_id = _u128(m.settlement_transfer_id)
    return s


def statement_to_proto(s: Statement) -> clearing_pb2.Statement:
    m = clearing_pb2.Statement(**{k: getattr(s, k) for k in _STATEMENT_SCALARS})
    _put_u128(m.participant_id, s.participant_id)
    _put_u128(m.settlement_transfer_id, s.settlement_transfer_id)
    _put_u128(m.sent, s.sent)
    _put_u128(m.received, s.received)
    _put_i128(m.net, s.net)
    return m


def participant_result(index: int, participant_id: int, code: int) -> ParticipantResult:
    return ParticipantResult(index, participant_id, _known(ParticipantResultCode, code))


def clearing_item_result(index: int, item_id: int, code: int) -> ClearingItemResult:
    return ClearingItemResult(index, item_id, _known(ClearingItemResultCode, code))


def field_problem(item: Any, fields: tuple[str, ...], proto_cls: Any) -> tuple[str, str]:
    """(field, description) of the first field of ``item`` that does not fit its proto type."""
    m = proto_cls()
    u128 = _U128_FIELDS | _u128_names(proto_cls)
    by_name = proto_cls.DESCRIPTOR.fields_by_name
    for name in fields:
        value = getattr(item, name, None)
        if value is None and name in by_name and by_name[name].containing_oneof is not None:
            continue  # a proto3 optional left unset (ParticipantUpdate): nothing to check
        try:
            if name in u128:
                if not isinstance(value, int) or isinstance(value, bool):
                    raise TypeError(f"expected an int, got {type(value).__name__}")
                if not 0 <= value <= U128_MAX:
                    raise ValueError(f"{value} is not an unsigned 128-bit integer")
            else:
                setattr(m, name, value)
        except (TypeError, ValueError) as exc:
            return name, str(exc)
    return "", "invalid item"


# --------------------------------------------------------------------------- ids


_LOW48 = (1 << 48) - 1


class _IdGenerator:
    """Time-ordered 128-bit ids: 48-bit unix ms, then 80 random bits incremented within a ms."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = 0
        self._last_random = 0

    def reset_after_fork(self) -> None:
        # A child must not continue the parent's sequence (both would produce last + 1).
        self._lock = threading.Lock()
        self._last_ms = 0
        self._last_random = 0

    def __call__(self) -> int:
        now_ms = time.time_ns() // 1_000_000
        with self._lock:
            if now_ms > self._last_ms:
                ms, rnd = now_ms, int.from_bytes(os.urandom(10), "big")
            else:  # same ms, or the clock went backwards: keep counting from the last id
                ms, rnd = self._last_ms, self._last_random + 1
                if rnd >> 80:
                    ms, rnd = ms + 1, int.from_bytes(os.urandom(10), "big")
            value = ((ms & 0xFFFF_FFFF_FFFF) << 80) | rnd
            if value == 0 or value >= U128_MAX:  # only reachable in the year 10889
                raise OverflowError("id space exhausted")
            self._last_ms, self._last_random = ms, rnd
            return value


_generator = _IdGenerator()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_generator.reset_after_fork)


def new_id(near: int | None = None, *, slot_count: int = DEFAULT_SLOT_COUNT) -> int:
    """A new 128-bit id: time-ordered (ms timestamp in the high 48 bits, then random),
    strictly increasing within this process (also across threads and within one
    millisecond), never 0 or 2^128-1.

    ``near``: an id (say, a transfer's debit account) whose hash slot the new id should
    share; its low 32 bits are then chosen for that (the id stays unique and, across
    milliseconds, ordered). A transfer whose id lives with its debit account is served by
    that account's shard alone when its credit account lives there too; any other id
    makes the id's own shard take part (a cross-shard commit). ``slot_count`` is the
    cluster's (``client.shard_map().slot_count``; 4096 unless chosen otherwise)."""
    value = _generator()
    if near is None:
        return value
    # The generator counts in the low bits within a millisecond; the nonce takes the low 32 bits, so move the
    # count above it first: ms (48) | random, counted (48) | nonce (32).
    spread = (value >> 80) << 80 | (value & _LOW48) << 32
    return id_near(spread, near, slot_count)

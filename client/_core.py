"""The pure logic shared by Client and AsyncClient (the httpx pattern: one core, two I/O shells).

Nothing in this module blocks, sleeps, locks or talks to the network. The shells
(_sync.py with threads and grpc futures, _async.py with asyncio and grpc.aio) own
the I/O and call in here for every decision:

- encoding items once into length-prefixed protobuf frames, so a coalesced batch
  request is the concatenation of its callers' frames (no re-serialisation);
- cutting a call into units (single items and whole linked chains), routing units
  to shards by the shard map, cutting per-shard runs at max_batch_items;
- the per-shard coalescing queue (which queued calls go into the next RPC);
- classifying gRPC errors (retry / invalid / fatal, and whether a write may have
  been applied), attributing field violations of a coalesced batch to its callers;
- the per-call retry state machine (rounds, backoff, deadline, final error).
"""

from __future__ import annotations

import bisect
import itertools
import random
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from tidebank.common.keys import U64_MAX, U128_MAX
from tidebank.common.limits import BATCH_ITEMS_MAX
from tidebank.v1 import escrow_pb2, ledger_pb2, types_pb2

from ._errors import (
    ClientClosedError,
    FieldViolation,
    InvalidRequestError,
    OutcomeUnknownError,
    TidebankError,
    UnavailableError,
)
from ._model import (
    _ACCOUNT_FIELDS,
    _EXTENSION_FIELDS,
    _NEW_TRADE_FIELDS,
    _REFUND_FIELDS,
    _RESOLUTION_FIELDS,
    _TRADE_REF_FIELDS,
    _TRANSFER_FIELDS,
    Account,
    AccountResult,
    DisputeResolution,
    Extension,
    NewTrade,
    ReadConsistency,
    Refund,
    ShardMap,
    TradeRef,
    TradeRole,
    Transfer,
    TransferResult,
    _account_status,
    _transfer_status,
    account_from_proto,
    account_to_proto,
    extension_to_proto,
    field_problem,
    new_trade_to_proto,
    refund_to_proto,
    resolution_to_proto,
    trade_from_proto,
    trade_ref_to_proto,
    trade_result,
    transfer_from_proto,
    transfer_to_proto,
)

# --------------------------------------------------------------------------- configuration

MAX_BATCH_ITEMS = BATCH_ITEMS_MAX  # the server's limit per request
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MAX_IN_FLIGHT_PER_SHARD = 2
DEFAULT_MAX_QUEUED_ITEMS_PER_SHARD = 100_000
DEFAULT_BACKOFF_BASE_S = 0.01
DEFAULT_BACKOFF_MAX_S = 0.5
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
MAP_FETCH_TIMEOUT_S = 2.0  # per node asked for the shard map
NO_LEADER_AVOID_S = 1.0  # how long to prefer other replicas after a node said it knows no leader
SUSPECT_FOR_S = 1.0  # an address that failed to answer is avoided this long
MIN_ATTEMPT_S = 0.005  # never start an attempt with less time than this left
ERROR_DOMAIN = "tidebank.v1"
USER_AGENT = "tidebank-python-client/0.1"


def channel_options(extra: Iterable[tuple[str, Any]] = ()) -> list[tuple[str, Any]]:
    opts = {
        "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
        "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
        "grpc.primary_user_agent": USER_AGENT,
    }
    opts.update(dict(extra))
    return list(opts.items())


def parse_addresses(addresses: str | Sequence[str]) -> list[str]:
    """["host:port", ...] from a list or a comma-separated string; order kept, duplicates dropped."""
    parts = addresses.split(",") if isinstance(addresses, str) else list(addresses)
    out: dict[str, None] = {}
    for p in parts:
        if not isinstance(p, str):
            raise TypeError(f"addresses must be strings, got {type(p).__name__}")
        p = p.strip()
        if p:
            out.setdefault(p, None)
    if not out:
        raise ValueError("at least one node address (host:port) is required")
    return list(out)


@dataclass(frozen=True, slots=True)
class Config:
    seeds: tuple[str, ...]
    timeout_s: float
    max_batch_items: int
    max_in_flight_per_shard: int
    max_queued_items_per_shard: int
    attempt_timeout_s: float
    backoff_base_s: float
    backoff_max_s: float
    options: tuple[tuple[str, Any], ...]

    @classmethod
    def make(
        cls,
        addresses: str | Sequence[str],
        timeout_s: float,
        max_batch_items: int,
        max_in_flight_per_shard: int,
        max_queued_items_per_shard: int,
        attempt_timeout_s: float | None,
        backoff_base_s: float,
        backoff_max_s: float,
        options: Iterable[tuple[str, Any]],
    ) -> Config:
        if not timeout_s > 0:
            raise ValueError("timeout_s must be > 0")
        if not 1 <= max_batch_items <= MAX_BATCH_ITEMS:
            raise ValueError(f"max_batch_items must be in 1..{MAX_BATCH_ITEMS}")
        if max_in_flight_per_shard < 1:
            raise ValueError("max_in_flight_per_shard must be >= 1")
        if max_queued_items_per_shard < 1:
            raise ValueError("max_queued_items_per_shard must be >= 1")
        if attempt_timeout_s is None:
            # Several attempts fit into one call, so a hung node (SIGSTOP, partition)
            # costs one attempt, not the whole deadline.
            attempt_timeout_s = min(timeout_s, max(0.5, timeout_s / 3))
        if not attempt_timeout_s > 0:
            raise ValueError("attempt_timeout_s must be > 0")
        return cls(
            seeds=tuple(parse_addresses(addresses)),
            timeout_s=float(timeout_s),
            max_batch_items=int(max_batch_items),
            max_in_flight_per_shard=int(max_in_flight_per_shard),
            max_queued_items_per_shard=int(max_queued_items_per_shard),
            attempt_timeout_s=float(attempt_timeout_s),
            backoff_base_s=float(backoff_base_s),
            backoff_max_s=float(backoff_max_s),
            options=tuple(channel_options(options)),
        )


def backoff_delay(attempt: int, base: float, cap: float, rng: Callable[[], float] = random.random) -> float:
    """Bounded exponential backoff with jitter: uniform in [d/2, d], d = min(cap, base * 2^attempt)."""
    d = min(cap, base * (2 ** min(max(attempt, 0), 30)))
    return d * (0.5 + 0.5 * rng())


# --------------------------------------------------------------------------- operations

_LINKED = 1  # the LINKED bit, same in AccountFlag and TransferFlag
# Field 1, wire type 2: every write request is `repeated <Item> <name> = 1` (accounts, transfers,
# trades, refunds, resolutions, extensions), so a batch is the concatenation of its items' frames.
_FIELD_TAG = b"\x0a"


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _item_id(item: Any) -> int:
    return item.id


def _trade_id(item: Any) -> int:
    return item.trade_id


def _flag_linked(item: Any) -> bool:
    return bool(int(item.flags) & _LINKED)


@dataclass(frozen=True, slots=True)
class WriteOp:
    """One batch write RPC: how its items are checked, encoded, routed and answered.

    The response's ``results`` holds one wire result per item, in order (an enum
    int for the ledger, a TradeResult message for escrow); ``result`` makes the
    caller's result object of one.
    """

    name: str  # the request's repeated field ("accounts", "trades", "refunds", ...), used in field paths
    method: str  # full gRPC method path; also keys the per-shard queues
    item_cls: type
    proto_cls: Any
    fields: tuple[str, ...]
    to_proto: Callable[[Any], Any]
    key: Callable[[Any], int]  # routing key
    response_cls: Any
    result: Callable[[int, int, Any], Any]  # (index in the request, item id, wire result) -> caller's result
    ident: Callable[[Any], int] = _item_id  # the item's id, as results and errors report it
    linked: Callable[[Any], bool] | None = None  # True: the item chains to the next (travels with it)
    label: str = ""  # the call's name in messages, when not ``name``

    @property
    def what(self) -> str:
        return self.label or self.name


ACCOUNTS = WriteOp(
    name="accounts",
    method="/tidebank.v1.Ledger/CreateAccounts",
    item_cls=Account,
    proto_cls=types_pb2.Account,
    fields=_ACCOUNT_FIELDS,
    to_proto=account_to_proto,
    key=lambda a: a.id,
    response_cls=ledger_pb2.CreateAccountsResponse,
    result=lambda i, id_, code: AccountResult(i, id_, _account_status(code)),
    linked=_flag_linked,
)
TRANSFERS = WriteOp(
    name="transfers",
    method="/tidebank.v1.Ledger/CreateTransfers",
    item_cls=Transfer,
    proto_cls=types_pb2.Transfer,
    fields=_TRANSFER_FIELDS,
    to_proto=transfer_to_proto,
    key=lambda t: t.debit_account_id,
    response_cls=ledger_pb2.CreateTransfersResponse,
    result=lambda i, id_, code: TransferResult(i, id_, _transfer_status(code)),
    linked=_flag_linked,
)


def _escrow_op(
    method: str,
    label: str,
    name: str,
    item_cls: type,
    proto_cls: Any,
    fields: tuple[str, ...],
    to_proto: Callable[[Any], Any],
) -> WriteOp:
    """An Escrow write: items go to the shard of their trade id, are reported by it, never chain."""
    ident = _item_id if item_cls is NewTrade else _trade_id  # a new trade's own id is its trade id
    return WriteOp(
        name=name,
        method=f"/tidebank.v1.Escrow/{method}",
        item_cls=item_cls,
        proto_cls=proto_cls,
        fields=fields,
        to_proto=to_proto,
        key=ident,
        response_cls=escrow_pb2.TradeResultsResponse,
        result=trade_result,
        ident=ident,
        label=label,
    )


def _trade_ids_op(method: str, label: str) -> WriteOp:
    return _escrow_op(method, label, "trades", TradeRef, escrow_pb2.TradeId, _TRADE_REF_FIELDS, trade_ref_to_proto)


CREATE_TRADES = _escrow_op(
    "CreateTrades", "create_trades", "trades", NewTrade, escrow_pb2.CreateTrade, _NEW_TRADE_FIELDS,
    new_trade_to_proto,
)  # fmt: skip
SHIP_TRADES = _trade_ids_op("ShipTrades", "ship_trades")
CONFIRM_TRADES = _trade_ids_op("ConfirmTrades", "confirm_trades")
OPEN_DISPUTES = _trade_ids_op("OpenDisputes", "open_disputes")
WITHDRAW_DISPUTES = _trade_ids_op("WithdrawDisputes", "withdraw_disputes")
REFUND_TRADES = _escrow_op(
    "RefundTrades", "refund_trades", "refunds", Refund, escrow_pb2.Refund, _REFUND_FIELDS, refund_to_proto
)
RESOLVE_DISPUTES = _escrow_op(
    "ResolveDisputes", "resolve_disputes", "resolutions", DisputeResolution, escrow_pb2.DisputeResolution,
    _RESOLUTION_FIELDS, resolution_to_proto,
)  # fmt: skip
EXTEND_TRADES = _escrow_op(
    "ExtendTrades", "extend_trades", "extensions", Extension, escrow_pb2.Extension, _EXTENSION_FIELDS,
    extension_to_proto,
)  # fmt: skip


def trade_refs(trade_ids: Iterable[int]) -> list[TradeRef]:
    """The items of ship/confirm/open/withdraw; their ids are checked when encoded (``trades[i].trade_id``)."""
    return [TradeRef(v) for v in trade_ids]


@dataclass(frozen=True, slots=True)
class LookupOp:
    name: str
    method: str
    request_cls: Any
    response_cls: Any
    response_field: str
    from_proto: Callable[[Any], Any]


LOOKUP_ACCOUNTS = LookupOp(
    "lookup_accounts",
    "/tidebank.v1.Ledger/LookupAccounts",
    ledger_pb2.LookupAccountsRequest,
    ledger_pb2.LookupAccountsResponse,
    "accounts",
    account_from_proto,
)
LOOKUP_TRANSFERS = LookupOp(
    "lookup_transfers",
    "/tidebank.v1.Ledger/LookupTransfers",
    ledger_pb2.LookupTransfersRequest,
    ledger_pb2.LookupTransfersResponse,
    "transfers",
    transfer_from_proto,
)
LOOKUP_TRADES = LookupOp(
    "lookup_trades",
    "/tidebank.v1.Escrow/LookupTrades",
    escrow_pb2.LookupTradesRequest,
    escrow_pb2.LookupTradesResponse,
    "trades",
    trade_from_proto,
)
GET_ACCOUNT_TRANSFERS_METHOD = "/tidebank.v1.Ledger/GetAccountTransfers"
LIST_TRADES_METHOD = "/tidebank.v1.Escrow/ListTrades"
GET_SHARD_MAP_METHOD = "/tidebank.v1.Admin/GetShardMap"


def encode_items(op: WriteOp, items: Sequence[Any]) -> tuple[list[bytes], list[int], list[int], list[tuple[int, int]]]:
    """(frames, routing keys, ids, units) of a write request.

    A frame is one item as it appears inside the request message (tag, length,
    bytes). A unit is a half-open index range that must travel in one RPC: a
    single item, or a linked chain (items flagged LINKED plus the one closing it;
    a chain left open at the end is a unit too, the server answers
    linked_event_chain_open for it). Operations without chains have one unit per item.
    """
    frames: list[bytes] = []
    keys: list[int] = []
    ids: list[int] = []
    units: list[tuple[int, int]] = []
    violations: list[FieldViolation] = []
    start = 0
    to_proto, item_cls, linked, ident = op.to_proto, op.item_cls, op.linked, op.ident
    for i, item in enumerate(items):
        if not isinstance(item, item_cls):
            raise TypeError(f"{op.name}[{i}] is a {type(item).__name__}, expected {item_cls.__name__}")
        try:
            payload = to_proto(item).SerializeToString()
            key = op.key(item)
            chained = linked is not None and linked(item)
        except (TypeError, ValueError, OverflowError):
            name, desc = field_problem(item, op.fields, op.proto_cls)
            violations.append(FieldViolation(f"{op.name}[{i}].{name}" if name else f"{op.name}[{i}]", desc))
            continue
        n = len(payload)
        frames.append(_FIELD_TAG + (bytes((n,)) if n < 0x80 else _varint(n)) + payload)
        keys.append(key)
        ids.append(ident(item))
        if not chained:
            units.append((start, i + 1))
            start = i + 1
    if violations:
        raise InvalidRequestError(f"invalid {op.name} (nothing was sent)", violations, code=None)
    if start < len(items):
        units.append((start, len(items)))
    return frames, keys, ids, units


def validate_ids(ids: Iterable[int], what: str = "ids") -> list[int]:
    out = list(ids)
    bad = [
        FieldViolation(f"{what}[{i}]", "not an unsigned 128-bit integer")
        for i, v in enumerate(out)
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= U128_MAX
    ]
    if bad:
        raise InvalidRequestError(f"invalid {what} (nothing was sent)", bad, code=None)
    return out


def validate_id(value: Any, what: str) -> int:
    """One id argument (e.g. ``account_id``), checked like the ids of a request."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= U128_MAX:
        raise InvalidRequestError(
            f"invalid {what} (nothing was sent)", [FieldViolation(what, "not an unsigned 128-bit integer")], code=None
        )
    return value


def u128_fields(msg: Any, value: int) -> None:
    msg.hi = value >> 64
    msg.lo = value & U64_MAX


def lookup_request(op: LookupOp, ids: Sequence[int], consistency: int) -> Any:
    req = op.request_cls(consistency=int(consistency))
    add = req.ids.add
    for v in ids:
        add(hi=v >> 64, lo=v & U64_MAX)
    return req


def account_transfers_request(
    account_id: int,
    *,
    limit: int,
    page_token: str,
    reversed: bool,
    debits: bool,
    credits: bool,
    timestamp_min: int,
    timestamp_max: int,
    consistency: int,
) -> ledger_pb2.GetAccountTransfersRequest:
    validate_ids([account_id], "account_id")
    try:
        req = ledger_pb2.GetAccountTransfersRequest(
            limit=limit,
            page_token=page_token,
            reversed=reversed,
            debits=debits,
            credits=credits,
            timestamp_min=timestamp_min,
            timestamp_max=timestamp_max,
            consistency=int(consistency),
        )
    except (TypeError, ValueError) as exc:
        raise InvalidRequestError(f"invalid get_account_transfers request: {exc}", code=None) from exc
    u128_fields(req.account_id, account_id)
    return req


def list_trades_request(
    account_id: int, *, role: Any, limit: int, page_token: str, consistency: int
) -> escrow_pb2.ListTradesRequest:
    """The ListTrades request, refused before sending when an argument cannot be right."""
    validate_id(account_id, "account_id")
    problems = []
    try:
        role = TradeRole(role)
    except ValueError:
        problems.append(FieldViolation("role", f"unknown trade role {role!r}"))
    if not isinstance(limit, int) or isinstance(limit, bool) or not 0 <= limit <= MAX_BATCH_ITEMS:
        problems.append(FieldViolation("limit", f"must be 1..{MAX_BATCH_ITEMS} (0 means 100), got {limit!r}"))
    if not isinstance(page_token, str):
        problems.append(FieldViolation("page_token", f"expected a str, got {type(page_token).__name__}"))
    if problems:
        raise InvalidRequestError("invalid list_trades request (nothing was sent)", problems, code=None)
    req = escrow_pb2.ListTradesRequest(role=role, limit=limit, page_token=page_token, consistency=int(consistency))
    u128_fields(req.account_id, account_id)
    return req


def check_consistency(consistency: Any) -> ReadConsistency:
    try:
        return ReadConsistency(consistency)
    except ValueError:
        raise InvalidRequestError(f"unknown read consistency {consistency!r}", code=None) from None


# --------------------------------------------------------------------------- errors


class Failure:
    """One failed attempt (an RPC of a batch, or a call-level problem)."""

    RETRY, INVALID, FATAL = "retry", "invalid", "fatal"
    __slots__ = (
        "kind", "ambiguous", "refresh", "backoff", "solo", "closed", "message", "code", "reason",
        "metadata", "violations", "retry_after", "suspect",
    )  # fmt: skip

    def __init__(
        self,
        kind: str,
        message: str,
        *,
        ambiguous: bool = False,
        refresh: bool = False,
        backoff: bool = True,
        solo: bool = False,
        closed: bool = False,
        code: grpc.StatusCode | None = None,
        reason: str = "",
        metadata: dict[str, str] | None = None,
        violations: Sequence[FieldViolation] = (),
        retry_after: float = 0.0,
        suspect: bool = False,
    ) -> None:
        self.kind = kind
        self.message = message
        self.ambiguous = ambiguous  # a write may have been applied
        self.refresh = refresh  # the shard map is probably stale
        self.backoff = backoff  # wait before retrying
        self.solo = solo  # retry each call in its own RPC
        self.closed = closed
        self.code = code
        self.reason = reason
        self.metadata = metadata or {}
        self.violations = list(violations)
        self.retry_after = retry_after
        self.suspect = suspect  # the address did not answer: avoid it for a while

    def __repr__(self) -> str:
        return f"Failure({self.kind}, {self.message!r}, ambiguous={self.ambiguous})"

    def describe(self) -> str:
        bits = [self.code.name if self.code is not None else "", self.reason, self.message]
        return ": ".join(b for b in bits if b)


def closed_failure() -> Failure:
    return Failure(Failure.FATAL, "client closed", closed=True, backoff=False)


def rich_details(exc: Any) -> tuple[error_details_pb2.ErrorInfo | None, list[FieldViolation], float]:
    """(ErrorInfo, BadRequest field violations, RetryInfo delay) from a gRPC error's status details."""
    status = None
    try:
        status = rpc_status.from_call(exc)
    except ValueError:  # code/message mismatch between status and details: still read the details
        for key, value in exc.trailing_metadata() or ():
            if key == "grpc-status-details-bin":
                status = status_pb2.Status.FromString(value)
    except Exception:  # noqa: BLE001 - a malformed trailer must not hide the status code
        status = None
    info = None
    violations: list[FieldViolation] = []
    retry_after = 0.0
    if status is None:
        return info, violations, retry_after
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            msg = error_details_pb2.ErrorInfo()
            detail.Unpack(msg)
            if info is None or msg.domain == ERROR_DOMAIN:
                info = msg
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            br = error_details_pb2.BadRequest()
            detail.Unpack(br)
            violations.extend(FieldViolation(v.field, v.description) for v in br.field_violations)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            ri = error_details_pb2.RetryInfo()
            detail.Unpack(ri)
            retry_after = ri.retry_delay.seconds + ri.retry_delay.nanos / 1e9
    return info, violations, retry_after


_RETRY_REASONS = frozenset(("NOT_LEADER", "NO_LEADER", "OVERLOADED"))
_FATAL_CODES = frozenset(
    (
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.OUT_OF_RANGE,
    )
)


def classify(exc: BaseException, *, write: bool, closed: bool = False) -> Failure:
    """What an exception from one RPC attempt means for the request."""
    code_fn = getattr(exc, "code", None)
    if not isinstance(exc, grpc.RpcError) or not callable(code_fn):
        # Cancelled future, undecodable response, ...: nothing says whether it was applied.
        if closed:
            return Failure(Failure.FATAL, "client closed", ambiguous=write, closed=True)
        return Failure(
            Failure.RETRY if write else Failure.FATAL,
            f"{type(exc).__name__}: {exc}",
            ambiguous=write,
        )
    code = code_fn()
    details = exc.details() or ""  # type: ignore[attr-defined]
    info, violations, retry_after = rich_details(exc)
    reason = info.reason if info is not None and info.domain in (ERROR_DOMAIN, "") else ""
    metadata = dict(info.metadata) if info is not None else {}
    common = {"code": code, "reason": reason, "metadata": metadata, "retry_after": retry_after}

    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return Failure(Failure.INVALID, details, violations=violations, **common)
    if reason in _RETRY_REASONS:
        # Refused before applying anything (DESIGN: request-level errors change nothing).
        hinted = reason == "NOT_LEADER" and bool(metadata.get("leader_address"))
        return Failure(Failure.RETRY, details, refresh=reason != "OVERLOADED" and not hinted, **common)
    if closed:
        return Failure(Failure.FATAL, "client closed", ambiguous=write, closed=True, **common)
    if code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE):
        # A timeout or a connection failure: it may have been applied.
        return Failure(Failure.RETRY, details, ambiguous=write, refresh=True, suspect=True, **common)
    if code in (grpc.StatusCode.CANCELLED, grpc.StatusCode.RESOURCE_EXHAUSTED):
        return Failure(Failure.RETRY, details, ambiguous=write, **common)
    if code == grpc.StatusCode.ABORTED:
        return Failure(Failure.RETRY, details, **common)
    if code in _FATAL_CODES:
        return Failure(Failure.FATAL, details, **common)
    # UNKNOWN, INTERNAL, DATA_LOSS and anything new. A write may have been applied:
    # only a retry with the same ids can tell. A read just fails.
    if write:
        return Failure(Failure.RETRY, details, ambiguous=True, **common)
    return Failure(Failure.FATAL, details, **common)


# --------------------------------------------------------------------------- topology


class Topology:
    """The client's view of the cluster: the shard map, leader hints, unresponsive addresses.

    Mutated from several threads by the sync client; every operation is a few
    dict reads/writes (atomic under the GIL) and a stale read only costs a retry.
    """

    def __init__(self, seeds: Sequence[str]) -> None:
        self.seeds = list(seeds)
        self.map: ShardMap | None = None
        self.generation = 0  # bumped by every installed map
        self._leader_hint: dict[int, str] = {}
        self._suspect_until: dict[str, float] = {}
        self._rr = itertools.count(random.randrange(1 << 16))

    def offer(self, smap: ShardMap) -> bool:
        """Install a fetched map unless it is older than the current one."""
        if self.map is not None and smap.version < self.map.version:
            return False
        self.map = smap
        self._leader_hint = {}
        self.generation += 1
        return True

    def hint_leader(self, shard_id: int, address: str) -> None:
        self._leader_hint[shard_id] = address
        self._suspect_until.pop(address, None)

    def suspect(self, address: str, now: float, for_s: float = SUSPECT_FOR_S) -> None:
        self._suspect_until[address] = now + for_s
        # A leader hint pointing at an unresponsive node is worse than none.
        for sid, addr in list(self._leader_hint.items()):
            if addr == address:
                self._leader_hint.pop(sid, None)

    def is_suspect(self, address: str, now: float) -> bool:
        until = self._suspect_until.get(address)
        return until is not None and until > now

    def note(self, shard_id: int, address: str, failure: Failure, now: float) -> None:
        """Learn from a failed attempt: leader hints and unresponsive addresses."""
        if failure.reason == "NOT_LEADER":
            leader = failure.metadata.get("leader_address", "")
            if leader and leader != address:
                self.hint_leader(shard_id, leader)
            else:  # no usable hint: only a fresh map can help
                failure.refresh = True
                if self._leader_hint.get(shard_id) == address:
                    self._leader_hint.pop(shard_id, None)
        elif failure.reason == "NO_LEADER":
            # This node knows no leader (an election, or it is cut off from the others): ask for a fresh
            # map and try other replicas for a moment, or a client keeps asking an isolated node.
            self._leader_hint.pop(shard_id, None)
            failure.refresh = True
            self.suspect(address, now, for_s=NO_LEADER_AVOID_S)
        if failure.suspect:
            self.suspect(address, now)

    def pick(self, shard_id: int, now: float, *, leader: bool = True) -> str:
        """The address to send a shard's request to: its leader when known and answering,
        else another replica (which forwards to the leader)."""
        smap = self.map
        shard = smap.shard(shard_id) if smap is not None else None
        if shard is None:
            return self.seeds[next(self._rr) % len(self.seeds)]
        replicas = [r.address for r in shard.replicas if r.address]
        if leader:
            addr = self._leader_hint.get(shard_id) or shard.leader_address
            if addr and not self.is_suspect(addr, now):
                return addr
        else:
            addr = ""
        candidates = [a for a in replicas if a != addr and not self.is_suspect(a, now)]
        if not candidates:
            candidates = replicas or self.seeds
        return candidates[next(self._rr) % len(candidates)]

    def refresh_candidates(self, now: float) -> list[str]:
        """Where to ask for the shard map: seeds and known replicas, answering ones first,
        starting at a different one each time."""
        seen: dict[str, None] = dict.fromkeys(self.seeds)
        if self.map is not None:
            for a in self.map.addresses():
                seen.setdefault(a, None)
        addrs = list(seen)
        k = next(self._rr) % len(addrs)
        addrs = addrs[k:] + addrs[:k]
        good = [a for a in addrs if not self.is_suspect(a, now)]
        return good + [a for a in addrs if a not in good]


# --------------------------------------------------------------------------- coalescing queue

NEW, QUEUED, SENT, DONE, CANCELLED = range(5)


class Entry:
    """One call's items for one shard, waiting for (or riding in) a batched RPC."""

    __slots__ = ("shard_id", "units", "indexes", "payload", "n", "solo", "deadline", "state", "outcome", "waiter")

    def __init__(
        self,
        shard_id: int,
        units: list[int],
        indexes: list[int],
        payload: bytes,
        solo: bool,
        deadline: float,
    ) -> None:
        self.shard_id = shard_id
        self.units = units  # unit numbers of the owning call
        self.indexes = indexes  # item indexes in the owning call's request, in order
        self.payload = payload
        self.n = len(indexes)
        self.solo = solo
        self.deadline = deadline
        self.state = NEW
        self.outcome: list[Any] | Failure | None = None  # the items' wire results, in order
        self.waiter: Any = None  # has .done_one()


class QueueState:
    """The pending calls of one (operation, shard) and its in-flight RPC count.

    Callers push entries; whenever fewer than max_in_flight RPCs are running,
    everything queued (up to max_items, whole entries only, so a call's items stay
    contiguous and chains stay whole) becomes the next batch.
    """

    __slots__ = ("op", "shard_id", "entries", "queued_items", "in_flight")

    def __init__(self, op: WriteOp, shard_id: int) -> None:
        self.op = op
        self.shard_id = shard_id
        self.entries: deque[Entry] = deque()
        self.queued_items = 0
        self.in_flight = 0

    def has_room(self, n: int, max_queued: int) -> bool:
        return self.queued_items == 0 or self.queued_items + n <= max_queued

    def push(self, e: Entry) -> None:
        e.state = QUEUED
        self.entries.append(e)
        self.queued_items += e.n

    def cancel(self, e: Entry, failure: Failure) -> bool:
        """Withdraw a queued entry (never sent). False if it is already on its way."""
        if e.state != QUEUED:
            return False
        e.state = CANCELLED
        e.outcome = failure
        self.queued_items -= e.n
        return True

    def take(self, max_items: int, max_in_flight: int) -> list[list[Entry]]:
        batches = []
        entries = self.entries
        while self.in_flight < max_in_flight and entries:
            batch: list[Entry] = []
            total = 0
            while entries:
                e = entries[0]
                if e.state != QUEUED:
                    entries.popleft()
                    continue
                if batch and (e.solo or total + e.n > max_items):
                    break
                entries.popleft()
                e.state = SENT
                batch.append(e)
                total += e.n
                if e.solo:
                    break
            if not batch:
                break
            self.queued_items -= total
            self.in_flight += 1
            batches.append(batch)
        return batches

    def drain(self, failure: Failure) -> list[Entry]:
        """Withdraw every queued entry (on close); their callers still need waking."""
        out = [e for e in self.entries if e.state == QUEUED]
        for e in out:
            e.state = CANCELLED
            e.outcome = failure
        self.entries.clear()
        self.queued_items = 0
        return out


def batch_body(batch: list[Entry]) -> bytes:
    return batch[0].payload if len(batch) == 1 else b"".join(e.payload for e in batch)


def batch_timeout(batch: list[Entry], attempt_timeout_s: float, now: float) -> float:
    return max(0.001, min(attempt_timeout_s, max(e.deadline for e in batch) - now))


_PATH = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\[(\d+)\](.*)$", re.S)


def _reindex(v: FieldViolation, name: str, entry: Entry, offset: int) -> FieldViolation | None:
    m = _PATH.match(v.field)
    if not m or m.group(1) != name:
        return None
    k = int(m.group(2)) - offset
    if not 0 <= k < entry.n:
        return None
    return FieldViolation(f"{name}[{entry.indexes[k]}]{m.group(3)}", v.description)


def settle_batch(batch: list[Entry], op_name: str, results: Sequence[Any] | None, failure: Failure | None) -> None:
    """Hand every entry of a finished batch its own outcome, and wake its caller."""
    total = sum(e.n for e in batch)
    if failure is None and results is not None and len(results) != total:
        failure = Failure(
            Failure.RETRY,
            f"server returned {len(results)} results for {total} items",
            ambiguous=True,
        )
    if failure is None:
        assert results is not None
        off = 0
        for e in batch:
            e.outcome = list(results[off : off + e.n])
            off += e.n
    elif failure.kind == Failure.INVALID:
        _settle_invalid(batch, op_name, failure)
    else:
        for e in batch:
            e.outcome = failure
    for e in batch:
        e.state = DONE
        e.waiter.done_one()


def _settle_invalid(batch: list[Entry], op_name: str, failure: Failure) -> None:
    """INVALID_ARGUMENT for a coalesced batch: blame the calls whose items the field
    violations name (re-indexed to each caller's request); the others were refused
    only as bystanders and are retried. Unattributable: retry each call alone."""
    offsets = list(itertools.accumulate((e.n for e in batch), initial=0))
    per: dict[int, list[FieldViolation]] = {}
    unplaced: list[FieldViolation] = []
    for v in failure.violations:
        m = _PATH.match(v.field)
        j = bisect.bisect_right(offsets, int(m.group(2))) - 1 if m else -1
        rv = _reindex(v, op_name, batch[j], offsets[j]) if 0 <= j < len(batch) else None
        if rv is None:
            unplaced.append(v)
        else:
            per.setdefault(j, []).append(rv)
    if len(batch) == 1:
        f = Failure(
            Failure.INVALID,
            failure.message,
            code=failure.code,
            reason=failure.reason,
            metadata=failure.metadata,
            violations=per.get(0, []) + unplaced,
        )
        batch[0].outcome = f
        return
    for j, e in enumerate(batch):
        if per:
            if j in per:
                e.outcome = Failure(
                    Failure.INVALID,
                    failure.message,
                    code=failure.code,
                    reason=failure.reason,
                    metadata=failure.metadata,
                    violations=per[j],
                )
            else:
                e.outcome = Failure(Failure.RETRY, "batched with an invalid request", backoff=False)
        else:
            e.outcome = Failure(Failure.RETRY, f"batch refused: {failure.message}", backoff=False, solo=True)


# --------------------------------------------------------------------------- calls


@dataclass(slots=True)
class Verdict:
    delay: float
    refresh: bool


class WriteCall:
    """The state of one batch write call (create_accounts, create_transfers, the escrow writes)
    across its attempts.

    A call advances in rounds. Each round sends, per shard, the first run of the
    call's unresolved units (at most max_batch_items), so a call's items reach
    each shard in request order; shards proceed concurrently.
    """

    def __init__(self, op: WriteOp, items: Sequence[Any], cfg: Config, timeout_s: float | None, now: float):
        self.op = op
        self.cfg = cfg
        self.frames, self.keys, self.ids, self.units = encode_items(op, items)
        for s, e in self.units:
            if e - s > cfg.max_batch_items:
                raise InvalidRequestError(
                    f"linked chain {op.name}[{s}..{e - 1}] has {e - s} items, more than one request "
                    f"may carry ({cfg.max_batch_items}); nothing was sent",
                    [FieldViolation(f"{op.name}[{s}]", "linked chain longer than max_batch_items")],
                    code=None,
                )
        self.n = len(self.ids)
        self.codes: list[Any] = [None] * self.n  # per item: its wire result once known
        self.pending: list[int] = list(range(len(self.units)))
        self.maybe_applied = bytearray(self.n)
        self.attempt = 0
        self.solo = False
        self.last: Failure | None = None
        self.deadline = now + (cfg.timeout_s if timeout_s is None else timeout_s)
        self._route_map: ShardMap | None = None
        self._route: list[int | None] = []

    @property
    def done(self) -> bool:
        return not self.pending

    def remaining(self, now: float) -> float:
        return self.deadline - now

    def plan(self, smap: ShardMap) -> list[Entry] | None:
        """This round's entries, one per shard; None if some key has no shard in this map."""
        if smap is not self._route_map:
            keys, units = self.keys, self.units
            self._route = [smap.shard_id_for(keys[s]) for s, _ in units]
            self._route_map = smap
        route = self._route
        per_shard: dict[int, tuple[list[int], int]] = {}
        full: set[int] = set()
        limit = self.cfg.max_batch_items
        for u in self.pending:
            sid = route[u]
            if sid is None:
                return None
            if sid in full:
                continue
            s, e = self.units[u]
            got = per_shard.get(sid)
            if got is None:
                per_shard[sid] = ([u], e - s)
            elif got[1] + e - s <= limit:
                got[0].append(u)
                per_shard[sid] = (got[0], got[1] + e - s)
            else:
                full.add(sid)
        entries = []
        frames = self.frames
        for sid, (us, _) in per_shard.items():
            indexes = [i for u in us for i in range(*self.units[u])]
            payload = b"".join([frames[i] for i in indexes])
            entries.append(Entry(sid, us, indexes, payload, self.solo, self.deadline))
        return entries

    def no_route(self) -> Verdict:
        self.last = Failure(Failure.RETRY, "the shard map assigns no shard to some keys", refresh=True)
        self.attempt += 1
        return Verdict(backoff_delay(self.attempt, self.cfg.backoff_base_s, self.cfg.backoff_max_s), True)

    def absorb(self, entries: list[Entry], now: float) -> Verdict | None:
        """Take in a round's outcomes. None when the call is complete; else how to go on.
        Raises the call's error when it is over."""
        invalid: list[FieldViolation] = []
        inv_failure: Failure | None = None
        fatal: Failure | None = None
        refresh = backoff = False
        retry_after = 0.0
        resolved: set[int] = set()
        for e in entries:
            o = e.outcome
            if o is None:
                # The caller stopped waiting while the entry was on the wire (entries
                # that never left were given an outcome when withdrawn).
                o = Failure(Failure.RETRY, "no answer before the deadline", ambiguous=True)
            if isinstance(o, list):
                codes = self.codes
                for i, code in zip(e.indexes, o, strict=True):
                    codes[i] = code
                resolved.update(e.units)
                continue
            if o.ambiguous:
                for i in e.indexes:
                    self.maybe_applied[i] = 1
            if o.kind == Failure.INVALID:
                invalid.extend(o.violations)
                inv_failure = o
            elif o.kind == Failure.FATAL:
                fatal = o
            else:
                self.last = o
                refresh |= o.refresh
                backoff |= o.backoff
                self.solo |= o.solo
                retry_after = max(retry_after, o.retry_after)
        if resolved:
            self.pending = [u for u in self.pending if u not in resolved]
        if inv_failure is not None:
            raise InvalidRequestError(
                inv_failure.message or "invalid request",
                invalid,
                code=inv_failure.code,
                reason=inv_failure.reason,
                metadata=inv_failure.metadata,
                ids=self.unresolved_ids(),
                results=self.partial_results(),
            )
        if fatal is not None:
            raise self.error(fatal)
        if not self.pending:
            return None
        if self.remaining(now) <= MIN_ATTEMPT_S:
            raise self.timeout_error()
        delay = 0.0
        if backoff:
            delay = max(retry_after, backoff_delay(self.attempt, self.cfg.backoff_base_s, self.cfg.backoff_max_s))
            self.attempt += 1
        return Verdict(delay, refresh)

    # ---- results and errors

    def unresolved(self) -> list[int]:
        return [i for u in self.pending for i in range(*self.units[u])]

    def unresolved_ids(self) -> list[int]:
        return [self.ids[i] for i in self.unresolved()]

    def partial_results(self) -> list[Any]:
        ids, result = self.ids, self.op.result
        return [None if c is None else result(i, ids[i], c) for i, c in enumerate(self.codes)]

    def results(self) -> list[Any]:
        ids, result = self.ids, self.op.result
        return [result(i, ids[i], c) for i, c in enumerate(self.codes)]

    def _maybe(self) -> bool:
        ma = self.maybe_applied
        return any(ma[i] for i in self.unresolved())

    def error(self, f: Failure) -> TidebankError:
        """The error ending the call with a fatal failure."""
        kw = {
            "code": f.code,
            "reason": f.reason,
            "metadata": f.metadata,
            "ids": self.unresolved_ids(),
            "results": self.partial_results(),
        }
        if self._maybe():
            return OutcomeUnknownError(
                f"{self.op.what}: outcome unknown for {len(kw['ids'])} items ({f.describe()}); "
                "re-submit them with the same ids or look them up",
                **kw,
            )
        if f.closed:
            return ClientClosedError("client closed; the unresolved items were not sent", **kw)
        return TidebankError(f"{self.op.what} failed: {f.describe()}", **kw)

    def timeout_error(self) -> TidebankError:
        last = self.last.describe() if self.last is not None else "no attempt finished"
        f = self.last
        kw = {
            "code": f.code if f else None,
            "reason": f.reason if f else "",
            "metadata": f.metadata if f else {},
            "ids": self.unresolved_ids(),
            "results": self.partial_results(),
        }
        if self._maybe():
            return OutcomeUnknownError(
                f"{self.op.what}: outcome unknown for {len(kw['ids'])} items after "
                f"{self.cfg.timeout_s:g}s (last: {last}); re-submit them with the same ids or look them up",
                **kw,
            )
        return UnavailableError(
            f"{self.op.what}: no leader answered before the deadline (last: {last}); "
            f"{len(kw['ids'])} items were not applied",
            **kw,
        )


class ReadCall:
    """Retry bookkeeping of a read (lookups, get_account_transfers, the shard map)."""

    def __init__(self, what: str, cfg: Config, timeout_s: float | None, now: float) -> None:
        self.what = what
        self.cfg = cfg
        self.deadline = now + (cfg.timeout_s if timeout_s is None else timeout_s)
        self.attempt = 0
        self.last: Failure | None = None

    def remaining(self, now: float) -> float:
        return self.deadline - now

    def failed(self, failures: list[Failure], now: float) -> Verdict:
        """Raise for a request-level error; else how long to back off."""
        refresh = False
        retry_after = 0.0
        for f in failures:
            if f.kind == Failure.INVALID:
                raise InvalidRequestError(
                    f.message or "invalid request", f.violations, code=f.code, reason=f.reason, metadata=f.metadata
                )
            if f.kind == Failure.FATAL:
                raise self.error(f)
            self.last = f
            refresh |= f.refresh
            retry_after = max(retry_after, f.retry_after)
        if self.remaining(now) <= MIN_ATTEMPT_S:
            raise self.timeout_error()
        delay = max(retry_after, backoff_delay(self.attempt, self.cfg.backoff_base_s, self.cfg.backoff_max_s))
        self.attempt += 1
        return Verdict(delay, refresh)

    def error(self, f: Failure) -> TidebankError:
        if f.closed:
            return ClientClosedError("client closed")
        return TidebankError(f"{self.what} failed: {f.describe()}", code=f.code, reason=f.reason, metadata=f.metadata)

    def timeout_error(self) -> UnavailableError:
        f = self.last
        last = f.describe() if f is not None else "no attempt finished"
        return UnavailableError(
            f"{self.what}: no answer before the deadline (last: {last})",
            code=f.code if f else None,
            reason=f.reason if f else "",
            metadata=f.metadata if f else {},
        )


def plan_lookup(
    ids: list[int], pending: list[int], smap: ShardMap, max_items: int
) -> list[tuple[int, list[int]]] | None:
    """(shard_id, positions) chunks of a lookup; None if some id has no shard."""
    per: dict[int, list[int]] = {}
    for pos in pending:
        sid = smap.shard_id_for(ids[pos])
        if sid is None:
            return None
        per.setdefault(sid, []).append(pos)
    out = []
    for sid, positions in per.items():
        for k in range(0, len(positions), max_items):
            out.append((sid, positions[k : k + max_items]))
    return out


def now_s() -> float:
    return time.monotonic()


class BaseClient:
    """Configuration and cluster view shared by Client and AsyncClient."""

    def __init__(
        self,
        addresses: str | Sequence[str],
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_batch_items: int = MAX_BATCH_ITEMS,
        *,
        max_in_flight_per_shard: int = DEFAULT_MAX_IN_FLIGHT_PER_SHARD,
        max_queued_items_per_shard: int = DEFAULT_MAX_QUEUED_ITEMS_PER_SHARD,
        attempt_timeout_s: float | None = None,
        backoff_base_s: float = DEFAULT_BACKOFF_BASE_S,
        backoff_max_s: float = DEFAULT_BACKOFF_MAX_S,
        channel_options: Iterable[tuple[str, Any]] = (),
    ) -> None:
        """
        addresses: seed nodes, a list of "host:port" or one comma-separated string; any
            node serves the shard map, which names every other replica.
        timeout_s: the deadline of each call, retries included (per call: ``timeout_s=``).
        max_batch_items: items per RPC (the server's limit is 8189); a linked chain
            longer than this is refused.
        max_in_flight_per_shard: concurrent write RPCs per shard; callers arriving
            meanwhile are coalesced into the next one.
        max_queued_items_per_shard: beyond this, callers block (async: wait) until
            the queue drains; nothing is dropped.
        attempt_timeout_s: the deadline of one RPC attempt (default timeout_s/3, at
            least 0.5 s), so a hung node costs one attempt, not the whole call.
        backoff_base_s, backoff_max_s: bounded exponential backoff with jitter.
        channel_options: extra grpc channel options.
        """
        self._cfg = Config.make(
            addresses,
            timeout_s,
            max_batch_items,
            max_in_flight_per_shard,
            max_queued_items_per_shard,
            attempt_timeout_s,
            backoff_base_s,
            backoff_max_s,
            channel_options,
        )
        self._topology = Topology(self._cfg.seeds)
        self._closed = False
        self._rpc_count = 0  # RPCs started (all kinds); for tests and metrics
        self._setup()

    def _setup(self) -> None:
        """I/O state of the concrete client (channels, queues, locks)."""

    @property
    def addresses(self) -> list[str]:
        """The seed addresses this client was given."""
        return list(self._cfg.seeds)

    @property
    def timeout_s(self) -> float:
        return self._cfg.timeout_s

    @property
    def max_batch_items(self) -> int:
        return self._cfg.max_batch_items

    @property
    def is_closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<{type(self).__name__} {','.join(self._cfg.seeds)} {state}>"

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosedError("client is closed")

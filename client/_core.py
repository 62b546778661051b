"""The logic of Client and AsyncClient, written once (sans-I/O, in the style of h11/httpx).

Nothing in this module blocks, sleeps, waits or talks to the network. Every public
call of a client is a *call program* here: a generator that yields the I/O it needs
(``Send`` RPCs, ``Sleep``, ``RefreshMap``, a coalesced ``WriteRound``; a streaming
call also ``OpenStream``, ``NextChunk`` and ``Emit`` for its consumer) and is sent
back what came of it. The shells (_sync.py with threads and grpc futures, _async.py
with asyncio and grpc.aio) run programs with a small driver and own only the I/O:
issuing RPCs, waiting (conditions and events vs futures), sleeping, closing channels.

The core decides:

- which program (operation and arguments) each public method is (``Core``);
- encoding items once into length-prefixed protobuf frames, so a coalesced batch
  request is the concatenation of its callers' frames (no re-serialisation);
- cutting a call into units (single items and whole linked chains), routing units
  to shards by the shard map, cutting per-shard runs at max_batch_items; the Clearing
  requests go to any node instead (ANY_SHARD: the node routes them itself);
- the per-shard coalescing queue (admission, which queued calls go into the next
  RPC, where it goes, how its answer is handed back to the callers);
- classifying gRPC errors (retry / invalid / fatal, and whether a write may have
  been applied), attributing field violations of a coalesced batch to its callers;
- the per-call retry loop (rounds, when to refresh the shard map, backoff, deadline,
  final error), lookup planning and merging, paging;
- where to ask for the shard map and whether a fetched one is newer.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import hashlib
import itertools
import logging
import random
import re
import struct
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from tidebank.common.keys import U64_MAX, U128_MAX
from tidebank.common.limits import BATCH_ITEMS_MAX, PAGE_SIZE_MAX, PARTICIPANTS_PER_REQUEST_MAX
from tidebank.common.tls import CA_ENV, CERT_ENV, KEY_ENV, ClientTls, Plaintext, TlsFiles, client_tls_from_env
from tidebank.v1 import admin_pb2, clearing_pb2, escrow_pb2, ledger_pb2, types_pb2

from ._errors import (
    ClientClosedError,
    FieldViolation,
    InvalidRequestError,
    OutcomeUnknownError,
    PermissionDeniedError,
    TidebankError,
    UnavailableError,
)
from ._model import (
    _ACCOUNT_FIELDS,
    _CLEARING_ITEM_FIELDS,
    _EXTENSION_FIELDS,
    _NEW_TRADE_FIELDS,
    _PARTICIPANT_FIELDS,
    _PARTICIPANT_UPDATE_FIELDS,
    _REFUND_FIELDS,
    _RESOLUTION_FIELDS,
    _TRADE_REF_FIELDS,
    _TRANSFER_FIELDS,
    Account,
    AccountResult,
    ClearingItem,
    ClearingItemResult,
    ClearingItemStatus,
    DisputeResolution,
    Extension,
    NewTrade,
    Page,
    Participant,
    ParticipantResult,
    ParticipantUpdate,
    ReadConsistency,
    Refund,
    ShardMap,
    Statement,
    TradePage,
    TradeRef,
    TradeRole,
    Transfer,
    TransferResult,
    Window,
    WindowStep,
    _account_status,
    _transfer_status,
    account_from_proto,
    account_to_proto,
    account_to_record,
    clearing_item_from_proto,
    clearing_item_result,
    clearing_item_to_proto,
    extension_to_proto,
    field_problem,
    new_trade_to_proto,
    participant_from_proto,
    participant_result,
    participant_to_proto,
    participant_update_to_proto,
    refund_to_proto,
    resolution_to_proto,
    statement_from_proto,
    trade_from_proto,
    trade_ref_to_proto,
    trade_result,
    transfer_from_proto,
    transfer_to_proto,
    transfer_to_record,
    window_from_proto,
    window_step_from_proto,
)

log = logging.getLogger("tidebank.client")

# --------------------------------------------------------------------------- configuration

MAX_BATCH_ITEMS = BATCH_ITEMS_MAX  # the server's limit per request
DEFAULT_TIMEOUT_S = 10.0
# One RPC per shard at a time: callers arriving meanwhile ride in the next one. Under 64 single callers this
# carried ~8 transfers per RPC instead of ~5 and gave 1.2-1.3x the throughput and a lower p99 than 2 in flight
# (bench/RESULTS.md, 2026-12-03); a lone caller never waits for it.
DEFAULT_MAX_IN_FLIGHT_PER_SHARD = 1
DEFAULT_MAX_QUEUED_ITEMS_PER_SHARD = 100_000
DEFAULT_BACKOFF_BASE_S = 0.01
DEFAULT_BACKOFF_MAX_S = 0.5
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
MAP_FETCH_TIMEOUT_S = 2.0  # per node asked for the shard map
NO_LEADER_AVOID_S = 1.0  # how long to prefer other replicas after a node said it knows no leader
SUSPECT_FOR_S = 1.0  # an address that failed to answer is avoided this long
MIN_ATTEMPT_S = 0.005  # never start an attempt with less time than this left
DEFAULT_EXPORT_TIMEOUT_S = 600.0  # a statement export streams a whole window: the deadline of all of it
ERROR_DOMAIN = "tidebank.v1"
#: The pseudo shard of requests any node takes (Clearing): the node routes to the shard leaders itself.
ANY_SHARD = -1
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
    tls: ClientTls = Plaintext()

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
        tls: ClientTls | None = None,
    ) -> Config:
        if tls is None:
            tls = client_tls_from_env()
        if tls is None:
            raise ValueError(f"no client certificate: pass tls=TlsFiles(ca, cert, key) (or set {CA_ENV}, {CERT_ENV} "
                             f"and {KEY_ENV}); tls=Plaintext() only for a cluster started with plaintext = true")
        if not isinstance(tls, TlsFiles | Plaintext):
            raise ValueError(f"tls must be a TlsFiles or Plaintext, not {type(tls).__name__}")
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
            tls=tls,
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
    # Items sent in their fixed binary form: `pack(item)` is the record, `packed_tag` the tag of the request's
    # bytes field (the body is that field holding every record of the batch, not one message per item).
    pack: Callable[[Any], bytes] | None = None
    packed_tag: bytes = b""
    # Sent to any node, which splits the request by shard itself (Clearing): not routed by the shard map, and
    # one queue (ANY_SHARD) coalesces every caller's items.
    any_node: bool = False
    max_items: int = 0  # the server's limit per request when below max_batch_items (0: none of its own)
    # Request fields after the items, the same for every caller of this op (CreateAccounts' owner): callers with
    # different suffixes never share a request, so each suffix has its own queues.
    body_suffix: bytes = b""

    @property
    def queue_key(self) -> str | tuple[str, bytes]:
        return (self.method, self.body_suffix) if self.body_suffix else self.method

    def batch_limit(self, max_batch_items: int) -> int:
        """Items per request: the client's max_batch_items, or this operation's own lower limit."""
        return min(max_batch_items, self.max_items) if self.max_items else max_batch_items

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
    pack=account_to_record,
    packed_tag=b"\x12",  # CreateAccountsRequest.accounts_packed (field 2, bytes)
)
@functools.lru_cache(maxsize=256)
def owned_accounts_op(owner: str) -> WriteOp:
    """CreateAccounts whose accounts belong to `owner` (CreateAccountsRequest.owner, field 3)."""
    raw = owner.encode("utf-8")
    if not 0 < len(raw) <= 64:
        raise InvalidRequestError("owner must be 1..64 bytes of utf-8 (a principal's name)", code=None)
    return dataclasses.replace(ACCOUNTS, body_suffix=b"\x1a" + _varint(len(raw)) + raw)


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
    pack=transfer_to_record,
    packed_tag=b"\x12",  # CreateTransfersRequest.transfers_packed (field 2, bytes)
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


def _clearing_op(
    method: str, label: str, name: str, item_cls: type, proto_cls: Any, fields: tuple[str, ...],
    to_proto: Callable[[Any], Any], response_cls: Any, result: Callable[[int, int, Any], Any], max_items: int = 0,
) -> WriteOp:  # fmt: skip
    """A Clearing batch write: items go to any node (it splits them by shard), are reported by their own id."""
    return WriteOp(
        name=name,
        method=f"/tidebank.v1.Clearing/{method}",
        item_cls=item_cls,
        proto_cls=proto_cls,
        fields=fields,
        to_proto=to_proto,
        key=_item_id,
        response_cls=response_cls,
        result=result,
        label=label,
        any_node=True,
        max_items=max_items,
    )


REGISTER_PARTICIPANTS = _clearing_op(
    "RegisterParticipants", "register_participants", "participants", Participant, clearing_pb2.Participant,
    _PARTICIPANT_FIELDS, participant_to_proto, clearing_pb2.ParticipantResultsResponse, participant_result,
    PARTICIPANTS_PER_REQUEST_MAX,
)  # fmt: skip
UPDATE_PARTICIPANTS = _clearing_op(
    "UpdateParticipants", "update_participants", "updates", ParticipantUpdate, clearing_pb2.ParticipantUpdate,
    _PARTICIPANT_UPDATE_FIELDS, participant_update_to_proto, clearing_pb2.ParticipantResultsResponse,
    participant_result, PARTICIPANTS_PER_REQUEST_MAX,
)  # fmt: skip
SUBMIT_ITEMS = _clearing_op(
    "SubmitItems", "submit_items", "items", ClearingItem, clearing_pb2.ClearingItem, _CLEARING_ITEM_FIELDS,
    clearing_item_to_proto, clearing_pb2.SubmitItemsResponse, clearing_item_result,
)  # fmt: skip

_CLEARING = "/tidebank.v1.Clearing/"
LOOKUP_PARTICIPANTS_METHOD = _CLEARING + "LookupParticipants"
LIST_PARTICIPANTS_METHOD = _CLEARING + "ListParticipants"
LOOKUP_ITEMS_METHOD = _CLEARING + "LookupItems"
LIST_WINDOWS_METHOD = _CLEARING + "ListWindows"
GET_WINDOW_METHOD = _CLEARING + "GetWindow"
CLOSE_WINDOW_METHOD = _CLEARING + "CloseWindow"
SETTLE_WINDOW_METHOD = _CLEARING + "SettleWindow"
UNWIND_PARTICIPANT_METHOD = _CLEARING + "UnwindParticipant"
ABORT_WINDOW_METHOD = _CLEARING + "AbortWindow"
EXPORT_STATEMENT_METHOD = _CLEARING + "ExportStatement"


def clearing_request(cls: Any, what: str, **fields: Any) -> Any:
    """A Clearing request message from a call's arguments; an argument that does not fit its field (type, range)
    is refused before sending, named by its field. U128 fields take ints."""
    req = cls()
    problems = []
    u128 = {f.name for f in cls.DESCRIPTOR.fields if f.message_type is types_pb2.U128.DESCRIPTOR}
    for name, value in fields.items():
        try:
            if name in u128:
                u128_fields(getattr(req, name), validate_id(value, name))
                continue
            is_bool = cls.DESCRIPTOR.fields_by_name[name].type == cls.DESCRIPTOR.fields_by_name[name].TYPE_BOOL
            if isinstance(value, bool) != is_bool:
                raise TypeError(f"expected {'a bool' if is_bool else 'an int'}, got {type(value).__name__}")
            setattr(req, name, value)
        except InvalidRequestError as exc:
            problems.extend(exc.field_violations)
        except (TypeError, ValueError) as exc:
            problems.append(FieldViolation(name, str(exc)))
    if problems:
        raise InvalidRequestError(f"invalid {what} request (nothing was sent)", problems, code=None)
    return req


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


@dataclass(frozen=True)
class ReadOp:
    """A lookup coalesced across callers: like a WriteOp for the queues (one per lookup, consistency and shard),
    but its answer holds only what was found, handed back to each caller by id."""

    lookup: LookupOp
    level: int
    pack: None = None

    @property
    def name(self) -> str:
        return "ids"

    @property
    def method(self) -> str:
        return self.lookup.method

    @property
    def response_cls(self) -> Any:
        return self.lookup.response_cls

    @property
    def queue_key(self) -> tuple[str, int]:
        return self.lookup.method, self.level

    @property
    def leader(self) -> bool:
        return self.level == ReadConsistency.LINEARIZABLE

    @staticmethod
    def batch_limit(max_batch_items: int) -> int:
        return max_batch_items

    @property
    def body_suffix(self) -> bytes:
        """The request's consistency field (2, varint), after the callers' id frames."""
        return b"\x10" + _varint(self.level) if self.level else b""


def id_frame(value: int) -> bytes:
    """One id as a frame of a lookup request's repeated ``ids`` (field 1, a U128 message)."""
    hi, lo = value >> 64, value & U64_MAX  # U128: fixed64 hi = 1, fixed64 lo = 2
    body = (b"\x09" + hi.to_bytes(8, "little") if hi else b"") + (b"\x11" + lo.to_bytes(8, "little") if lo else b"")
    return b"\x0a" + bytes((len(body),)) + body


def settle_reads(batch: list[Entry], op: ReadOp, resp: Any) -> None:
    """Hand every caller of a coalesced lookup the records of its own ids (records not found are left out)."""
    found = {}
    from_proto = op.lookup.from_proto
    for m in getattr(resp, op.lookup.response_field):
        record = from_proto(m)
        found[record.id] = record
    for e in batch:
        e.outcome = [found[i] for i in e.keys if i in found]
        e.state = DONE
        e.waiter.done_one()
GET_ACCOUNT_TRANSFERS_METHOD = "/tidebank.v1.Ledger/GetAccountTransfers"
LIST_TRADES_METHOD = "/tidebank.v1.Escrow/ListTrades"
GET_SHARD_MAP_METHOD = "/tidebank.v1.Admin/GetShardMap"


@dataclass(frozen=True, slots=True)
class PagedOp:
    """A read answering one page: sent to the shard of an account id, answered with items and a token."""

    name: str
    method: str
    response_cls: Any
    response_field: str
    from_proto: Callable[[Any], Any]

    def page(self, resp: Any) -> Page:
        return Page([self.from_proto(m) for m in getattr(resp, self.response_field)], resp.next_page_token)


ACCOUNT_TRANSFERS = PagedOp(
    "get_account_transfers",
    GET_ACCOUNT_TRANSFERS_METHOD,
    ledger_pb2.GetAccountTransfersResponse,
    "transfers",
    transfer_from_proto,
)
# The answering node gathers from every shard itself; the account's shard is just a good first pick.
LIST_TRADES = PagedOp("list_trades", LIST_TRADES_METHOD, escrow_pb2.ListTradesResponse, "trades", trade_from_proto)


def next_page_kwargs(kwargs: dict[str, Any], page: Page) -> dict[str, Any] | None:
    """The arguments that fetch the page after ``page`` (iter_account_transfers, iter_trades); None after the last."""
    if not page.next_page_token:
        return None
    return {**kwargs, "page_token": page.next_page_token}


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
    to_proto, item_cls, linked, ident, pack = op.to_proto, op.item_cls, op.linked, op.ident, op.pack
    for i, item in enumerate(items):
        if not isinstance(item, item_cls):
            raise TypeError(f"{op.name}[{i}] is a {type(item).__name__}, expected {item_cls.__name__}")
        try:
            payload = pack(item) if pack is not None else to_proto(item).SerializeToString()
            key = op.key(item)
            chained = linked is not None and linked(item)
        except (TypeError, ValueError, OverflowError, struct.error):
            name, desc = field_problem(item, op.fields, op.proto_cls)
            violations.append(FieldViolation(f"{op.name}[{i}].{name}" if name else f"{op.name}[{i}]", desc))
            continue
        if pack is not None:
            frames.append(payload)  # the record itself: batch_body wraps all of them in one bytes field
        else:
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


def withdrawn_failure() -> Failure:
    """The outcome of an entry withdrawn from its queue at the deadline (never sent, so certainly not applied)."""
    return Failure(Failure.RETRY, "not sent before the deadline")


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


# Refused before anything applied (NOT_APPLIED: a cross-shard attempt aborted because a participant shard did not
# answer; node/api/failures.py).
_RETRY_REASONS = frozenset(("NOT_LEADER", "NO_LEADER", "NOT_APPLIED", "OVERLOADED", "QUOTA_EXCEEDED"))
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
        return Failure(Failure.RETRY, details, refresh=reason not in ("OVERLOADED", "QUOTA_EXCEEDED") and not hinted,
                       **common)
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

    def refreshed_since(self, generation: int) -> bool:
        """Whether a map was installed after ``generation`` was read (then a caller need not fetch one)."""
        return self.generation != generation and self.map is not None

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
        if shard_id == ANY_SHARD:  # the node routes such requests itself: no leader to learn, only who answers
            if failure.reason == "NO_LEADER":
                self.suspect(address, now, for_s=NO_LEADER_AVOID_S)
            if failure.suspect:
                self.suspect(address, now)
            return
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

    def pick_any(self, now: float) -> str:
        """The address for a request any node serves (ANY_SHARD): the nodes in turn, answering ones first; every
        replica of the map once a map is known, else the seeds."""
        smap = self.map
        addrs = (smap.addresses() if smap is not None else []) or self.seeds
        candidates = [a for a in addrs if not self.is_suspect(a, now)] or addrs
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

    __slots__ = (
        "shard_id", "units", "indexes", "payload", "n", "solo", "deadline", "state", "outcome", "waiter", "queue",
        "keys",
    )  # fmt: skip

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
        self.queue: QueueState | None = None  # the queue it was pushed on
        self.keys: list[int] = []  # a coalesced lookup's ids (its outcome is the records found for them)


class QueueState:
    """The pending calls of one (operation, shard) and its in-flight RPC count.

    Callers push entries; whenever fewer than max_in_flight RPCs are running,
    everything queued (up to max_items, whole entries only, so a call's items stay
    contiguous and chains stay whole) becomes the next batch.
    """

    __slots__ = ("op", "shard_id", "entries", "queued_items", "in_flight", "io")

    def __init__(self, op: WriteOp, shard_id: int) -> None:
        self.op = op
        self.shard_id = shard_id
        self.entries: deque[Entry] = deque()
        self.queued_items = 0
        self.in_flight = 0
        self.io: Any = None  # the shell's signal for callers waiting on this queue (a Condition, an Event)

    def has_room(self, n: int, max_queued: int) -> bool:
        return self.queued_items == 0 or self.queued_items + n <= max_queued

    def push(self, e: Entry) -> None:
        e.state = QUEUED
        e.queue = self
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


def wake(entries: Iterable[Entry]) -> None:
    """Tell the callers of entries that already have their outcome."""
    for e in entries:
        e.waiter.done_one()


def fail_entries(entries: Iterable[Entry], failure: Failure) -> None:
    """Give entries that never reached a queue their outcome, and wake their callers."""
    for e in entries:
        e.outcome = failure
        e.waiter.done_one()


def batch_body(batch: list[Entry], op: WriteOp | None = None) -> bytes:
    """The request message of a coalesced batch: the callers' frames as they are, or, for an op sent packed,
    one bytes field holding every caller's records."""
    body = batch[0].payload if len(batch) == 1 else b"".join(e.payload for e in batch)
    suffix = getattr(op, "body_suffix", b"")
    if op is not None and op.pack is not None:
        return op.packed_tag + _varint(len(body)) + body + suffix
    return body + suffix if suffix else body


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

    def plan(self, smap: ShardMap | None) -> list[Entry] | None:
        """This round's entries, one per shard; None if some key has no shard in this map.
        An any-node op's units all go to ANY_SHARD (``smap`` unused, may be None)."""
        if self.op.any_node:
            if len(self._route) != len(self.units):
                self._route = [ANY_SHARD] * len(self.units)
        elif smap is not self._route_map:
            assert smap is not None
            keys, units = self.keys, self.units
            self._route = [smap.shard_id_for(keys[s]) for s, _ in units]
            self._route_map = smap
        route = self._route
        per_shard: dict[int, tuple[list[int], int]] = {}
        full: set[int] = set()
        limit = self.op.batch_limit(self.cfg.max_batch_items)
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
        if f.code == grpc.StatusCode.PERMISSION_DENIED:
            return PermissionDeniedError(f"{self.op.what} refused: {f.describe()}", **kw)
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
        kind = PermissionDeniedError if f.code == grpc.StatusCode.PERMISSION_DENIED else TidebankError
        return kind(f"{self.what} failed: {f.describe()}", code=f.code, reason=f.reason, metadata=f.metadata)

    def timeout_error(self) -> UnavailableError:
        f = self.last
        last = f.describe() if f is not None else "no attempt finished"
        return UnavailableError(
            f"{self.what}: no answer before the deadline (last: {last})",
            code=f.code if f else None,
            reason=f.reason if f else "",
            metadata=f.metadata if f else {},
        )


class UnaryCall(ReadCall):
    """Retry bookkeeping of one request that any node serves (the Clearing calls but the batch writes).

    Like a read, except that for a write an attempt without an answer may have applied: from then on the call
    ends in OutcomeUnknownError, never in "not applied" (the request is idempotent, so the retries that resolve
    it send it unchanged).
    """

    def __init__(self, what: str, cfg: Config, timeout_s: float | None, now: float, *, write: bool) -> None:
        super().__init__(what, cfg, timeout_s, now)
        self.write = write
        self.maybe_applied = False

    def error(self, f: Failure) -> TidebankError:
        if self.maybe_applied:
            return self._unknown(f)
        return super().error(f)

    def timeout_error(self) -> TidebankError:
        if self.maybe_applied:
            return self._unknown(self.last)
        return super().timeout_error()

    def _unknown(self, f: Failure | None) -> OutcomeUnknownError:
        last = f.describe() if f is not None else "no attempt finished"
        return OutcomeUnknownError(
            f"{self.what}: outcome unknown ({last}); send the same request again or read the state",
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


class LookupCall(ReadCall):
    """A lookup across shards: the ids still to ask for, and what the answers found (merged in request order)."""

    def __init__(
        self, op: LookupOp, ids: list[int], level: ReadConsistency, cfg: Config, timeout_s: float | None, now: float
    ) -> None:
        super().__init__(op.name, cfg, timeout_s, now)
        self.op = op
        self.ids = ids
        self.level = level
        self.pending = list(range(len(ids)))  # positions in ids not answered yet
        self.found: dict[int, Any] = {}

    def plan(self, smap: ShardMap) -> list[tuple[int, list[int]]] | None:
        return plan_lookup(self.ids, self.pending, smap, self.cfg.max_batch_items)

    def request(self, positions: list[int]) -> Any:
        return lookup_request(self.op, [self.ids[p] for p in positions], self.level)

    def merge(self, answered: list[tuple[list[int], Any]]) -> None:
        """Take in the responses of some chunks (positions asked, response)."""
        done: set[int] = set()
        op = self.op
        for positions, resp in answered:
            for m in getattr(resp, op.response_field):
                obj = op.from_proto(m)
                self.found[obj.id] = obj
            done.update(positions)
        if done:
            self.pending = [p for p in self.pending if p not in done]

    def merge_found(self, answered: list[tuple[list[int], list[Any]]]) -> None:
        """Take in coalesced answers: (positions asked, records found for them)."""
        done: set[int] = set()
        for positions, records in answered:
            for obj in records:
                self.found[obj.id] = obj
            done.update(positions)
        if done:
            self.pending = [p for p in self.pending if p not in done]

    def results(self) -> list[Any]:
        """What was found, in request order (ids not found are skipped)."""
        found = self.found
        return [found[i] for i in self.ids if i in found]


def now_s() -> float:
    return time.monotonic()


# --------------------------------------------------------------------------- I/O requests
#
# What a call program asks its shell to do. The shell answers each with a value
# (sent into the program): Send with one outcome per RPC, RefreshMap with a bool,
# Sleep and WriteRound with None.


@dataclass(frozen=True, slots=True)
class Rpc:
    """One unary RPC. ``request`` is a message, or bytes when ``serializer`` is None (a coalesced write body)."""

    address: str
    method: str
    request: Any
    serializer: Callable[[Any], bytes] | None
    deserializer: Callable[[bytes], Any]
    timeout: float
    stream: bool = False  # server streaming: the shell opens it (OpenStream) and reads it (NextChunk)


@dataclass(frozen=True, slots=True)
class Send:
    """Issue these RPCs concurrently and answer, in order, each one's response or the Exception it raised
    (starting it included); anything else (cancellation) propagates."""

    rpcs: tuple[Rpc, ...]


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float


@dataclass(frozen=True, slots=True)
class RefreshMap:
    """Run ``Core.fetch_map(deadline)``, one fetch at a time per client (callers arriving meanwhile wait for it),
    unless a map was installed since ``generation`` (``Topology.refreshed_since``). Answer whether a node answered."""

    deadline: float
    generation: int


@dataclass(frozen=True, slots=True)
class WriteRound:
    """Put every entry (one per shard) on its queue (``Core.queue``, ``admit``, ``push``, waiting for room), send
    the batches ``push`` and ``release`` hand out (``batch_rpc``, ``batch_done``), and wait until every entry has
    its outcome or the deadline passes; then withdraw what is still queued (``QueueState.cancel``)."""

    op: WriteOp
    entries: list[Entry]
    deadline: float


@dataclass(frozen=True, slots=True)
class OpenStream:
    """Start a server-streaming RPC (``rpc.stream``); answer ``(handle, None)`` (the shell's call object, which
    may itself be an RpcError: grpc's are), or ``(None, the Exception starting it raised)``. The shell cancels
    every stream it opened when the program ends (also when abandoned)."""

    rpc: Rpc


#: What NextChunk answers when a stream ended without an error.
END_OF_STREAM = object()


@dataclass(frozen=True, slots=True)
class NextChunk:
    """Read the next message of an opened stream; answer it, END_OF_STREAM, or the Exception reading raised."""

    stream: Any


@dataclass(frozen=True, slots=True)
class Emit:
    """Hand these values to the consumer of a streaming call (one at a time); answer None when it wants more.
    Only the shells' stream drivers (StatementExport) run programs that emit."""

    items: list[Any]


Request = Send | Sleep | RefreshMap | WriteRound | OpenStream | NextChunk | Emit
T = TypeVar("T")
#: A call program: yields Requests, is sent their answers, returns the call's value.
Program = Generator[Request, Any, T]


def _first(program: Program[list[Any]]) -> Program[Any]:
    """The single-item calls (create_trade, ...): the batch call's only result."""
    return (yield from program)[0]


# --------------------------------------------------------------------------- the client core


class NullSignal:
    """The queue signal of a single-threaded driver (e.g. a test's): nothing to lock, nobody to wake.

    A shell's signal is held (``with q.io:``) around every change of its queue, and
    ``notify_all()`` wakes the callers waiting for room; how they wait (a Condition's
    wait, an Event's) is the shell's own business.
    """

    __slots__ = ()

    def __enter__(self) -> NullSignal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def notify_all(self) -> None:
        return None


def run_program(program: Program[T], handle: Callable[[Request], Any]) -> T:
    """Run a call program to its end, answering each request with ``handle(request)`` (a blocking driver)."""
    try:
        request = next(program)
        while True:
            request = program.send(handle(request))
    except StopIteration as done:
        return done.value


class Core:
    """The state of one client and every decision it makes; its shell only does the I/O asked of it.

    The shell supplies how to open a channel, a ``guard`` held around the few
    registry updates that race with close() (a Lock for threads, a null context for
    asyncio), and a factory of the per-queue signal (see NullSignal). ``clock`` is
    for tests that drive programs with a fake one.
    """

    def __init__(
        self,
        cfg: Config,
        open_channel: Callable[[str], Any],
        guard: AbstractContextManager[Any],
        new_signal: Callable[[], Any] = NullSignal,
        clock: Callable[[], float] = now_s,
    ) -> None:
        self.cfg = cfg
        self.topology = Topology(cfg.seeds)
        self.closed = False
        self.rpc_count = 0  # RPCs started (all kinds); for tests and metrics
        self.last_map_error = ""
        self.clock = clock
        self._open_channel = open_channel
        self._guard = guard
        self._new_signal = new_signal
        self._channels: dict[str, Any] = {}
        self._stubs: dict[tuple[str, str], Any] = {}
        self._queues: dict[tuple[str, int], QueueState] = {}

    def check_open(self) -> None:
        if self.closed:
            raise ClientClosedError("client is closed")

    # ------------------------------------------------------------------ channels and lifecycle

    def stub(self, rpc: Rpc) -> Any:
        """The callable of ``rpc.method`` on a channel to ``rpc.address`` (opened on first use).
        Raises ClientClosedError once the client is closed."""
        self.check_open()
        key = (rpc.address, rpc.method)
        mc = self._stubs.get(key)
        if mc is None:
            channel = self._channel(rpc.address)
            mc = self._stubs[key] = (channel.unary_stream if rpc.stream else channel.unary_unary)(
                rpc.method,
                request_serializer=rpc.serializer,
                response_deserializer=rpc.deserializer,
                _registered_method=True,
            )
        self.rpc_count += 1
        return mc

    def _channel(self, address: str) -> Any:
        ch = self._channels.get(address)
        if ch is None:
            with self._guard:
                self.check_open()
                ch = self._channels.get(address)
                if ch is None:
                    ch = self._channels[address] = self._open_channel(address)
        return ch

    def close(self) -> list[Any] | None:
        """Mark the client closed and fail every queued call with ClientClosedError (calls on the wire fail as
        their RPCs end, with OutcomeUnknownError). The channels for the shell to close; None if it already was."""
        with self._guard:
            if self.closed:
                return None
            self.closed = True
            queues, channels = list(self._queues.values()), list(self._channels.values())
        for q in queues:
            with q.io:
                drained = q.drain(closed_failure())
                q.io.notify_all()
            wake(drained)
        return channels

    # ------------------------------------------------------------------ coalescing queues (the shell holds q.io)

    def queue(self, op: WriteOp, shard_id: int) -> QueueState | None:
        """The queue of (operation, shard), made on first use; None once the client is closed."""
        key = (getattr(op, "queue_key", op.method), shard_id)
        q = self._queues.get(key)
        if q is None:
            with self._guard:
                if self.closed:
                    return None
                q = self._queues.get(key)
                if q is None:
                    q = self._queues[key] = QueueState(op, shard_id)
                    q.io = self._new_signal()
        return q

    def admit(self, q: QueueState, e: Entry, deadline: float, now: float) -> Failure | float | None:
        """May ``e`` be pushed now? None: yes. A float: wait that long for room (or a wake-up), then ask again.
        A Failure: no (closed, or the queue stayed full until the deadline); it is the outcome of ``e`` and of
        the rest of its round."""
        if self.closed:
            return closed_failure()
        if q.has_room(e.n, self.cfg.max_queued_items_per_shard):
            return None
        rem = deadline - now
        return rem if rem > 0 else Failure(Failure.RETRY, "the shard's queue stayed full until the deadline")

    def push(self, q: QueueState, e: Entry) -> list[list[Entry]]:
        """Queue an admitted entry (holding ``q.io``, like admit); the batches that may leave now (send each,
        see batch_rpc)."""
        q.push(e)
        batches = q.take(q.op.batch_limit(self.cfg.max_batch_items), self.cfg.max_in_flight_per_shard)
        if batches:
            q.io.notify_all()
        return batches

    def release(self, q: QueueState) -> list[list[Entry]]:
        """A batch of ``q`` finished (after batch_done): the batches that may leave now (none once closed)."""
        with q.io:
            q.in_flight -= 1
            batches = [] if self.closed else q.take(
                q.op.batch_limit(self.cfg.max_batch_items), self.cfg.max_in_flight_per_shard
            )
            if batches:
                q.io.notify_all()
        return batches

    @staticmethod
    def withdraw(entries: Iterable[Entry]) -> None:
        """At the end of a round that did not complete (deadline, cancellation): take back the entries still
        queued. Those items were never sent, so they are certainly not applied."""
        f = withdrawn_failure()
        for e in entries:
            q = e.queue
            if q is not None:
                with q.io:
                    if q.cancel(e, f):
                        q.io.notify_all()

    def batch_rpc(self, q: QueueState, batch: list[Entry], now: float) -> Rpc:
        """Where and how a batch goes: the shard's leader (or a replica), the callers' frames as the body."""
        op = q.op
        if q.shard_id == ANY_SHARD:
            address = self.topology.pick_any(now)
        else:
            address = self.topology.pick(q.shard_id, now, leader=getattr(op, "leader", True))
        timeout = batch_timeout(batch, self.cfg.attempt_timeout_s, now)
        return Rpc(address, op.method, batch_body(batch, op), None, op.response_cls.FromString, timeout)

    def batch_done(
        self, q: QueueState, batch: list[Entry], rpc: Rpc, resp: Any, exc: BaseException | None, *, started: bool = True
    ) -> None:
        """Hand every caller of a batch its outcome (the response, or what ``exc`` means) and wake it.
        ``started=False``: the RPC could not even start (so nothing was applied). Then call release()."""
        name = q.op.name
        try:
            if not started:
                f = closed_failure() if self.closed else Failure(Failure.RETRY, f"could not start the RPC: {exc!r}")
                settle_batch(batch, name, None, f)
            elif exc is None:
                if isinstance(q.op, ReadOp):
                    settle_reads(batch, q.op, resp)
                else:
                    settle_batch(batch, name, resp.results, None)
            else:
                f = classify(exc, write=not isinstance(q.op, ReadOp), closed=self.closed)
                self.topology.note(q.shard_id, rpc.address, f, self.clock())
                settle_batch(batch, name, None, f)
        except Exception:  # noqa: BLE001 - never leave a caller hanging
            log.exception("tidebank client: settling a batch failed")
            for e in batch:
                if e.state != DONE:
                    e.outcome = Failure(Failure.RETRY, "client error while reading the answer", ambiguous=True)
                    e.state = DONE
                    e.waiter.done_one()

    # ------------------------------------------------------------------ shard map

    def fetch_map(self, deadline: float) -> Program[bool]:
        """Ask the refresh candidates one by one for the shard map; install the first answer unless it is older.
        True when a node answered."""
        topo = self.topology
        req = admin_pb2.GetShardMapRequest()
        for addr in topo.refresh_candidates(self.clock()):
            rem = deadline - self.clock()
            if rem <= 0 or self.closed:
                break
            rpc = Rpc(
                addr,
                GET_SHARD_MAP_METHOD,
                req,
                admin_pb2.GetShardMapRequest.SerializeToString,
                admin_pb2.ShardMap.FromString,
                min(rem, MAP_FETCH_TIMEOUT_S),
            )
            (answer,) = yield Send((rpc,))
            if isinstance(answer, grpc.RpcError):
                code = answer.code()  # type: ignore[attr-defined]
                self.last_map_error = f"{addr}: {code.name}: {answer.details()}"  # type: ignore[attr-defined]
                if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    topo.suspect(addr, self.clock())
                continue
            if isinstance(answer, (ValueError, ClientClosedError)):  # the channel was closed under us
                break
            if isinstance(answer, BaseException):
                raise answer
            topo.offer(ShardMap.from_proto(answer))
            return True
        return False

    def _map(self, call: WriteCall | ReadCall) -> Program[ShardMap]:
        """The shard map to route by: the known one, else fetched (with backoff) before the call's deadline."""
        smap = self.topology.map
        if smap is None:
            smap = yield from self._refresh_until(call, None, " with the shard map")
        return smap

    def _refresh_until(self, call: WriteCall | ReadCall, generation: int | None, what: str) -> Program[ShardMap]:
        """Refresh the shard map, backing off, until a node answers (generation None: until any map is known)."""
        topo = self.topology
        attempt = 0
        while True:
            self.check_open()
            answered = yield RefreshMap(call.deadline, topo.generation if generation is None else generation)
            smap = topo.map
            if smap is not None and (answered or generation is None):
                return smap
            rem = call.remaining(self.clock())
            if rem <= MIN_ATTEMPT_S:
                call.last = Failure(Failure.RETRY, f"no node answered{what} ({self.last_map_error})")
                raise call.timeout_error()
            yield Sleep(min(rem, backoff_delay(attempt, self.cfg.backoff_base_s, self.cfg.backoff_max_s)))
            attempt += 1

    def _pause(self, verdict: Verdict, generation: int, call: WriteCall | ReadCall) -> Program[None]:
        """Between two rounds of a call: refresh the map and back off as the verdict says, within the deadline."""
        if self.closed:
            raise call.error(closed_failure())
        if verdict.refresh:
            yield RefreshMap(call.deadline, generation)
        rem = call.remaining(self.clock())
        if verdict.delay > 0 and rem > 0:
            yield Sleep(min(verdict.delay, rem))
            rem = call.remaining(self.clock())
        if rem <= MIN_ATTEMPT_S:
            raise call.timeout_error()
        if self.closed:
            raise call.error(closed_failure())

    # ------------------------------------------------------------------ call programs

    def write(self, op: WriteOp, items: list[Any], timeout_s: float | None) -> Program[list[Any]]:
        """A batch write: rounds of per-shard entries until every item has its result."""
        self.check_open()
        call = WriteCall(op, items, self.cfg, timeout_s, self.clock())
        while not call.done:
            smap = None if op.any_node else (yield from self._map(call))
            generation = self.topology.generation
            entries = call.plan(smap)
            if entries is None:
                verdict: Verdict | None = call.no_route()
            else:
                yield WriteRound(op, entries, call.deadline)
                verdict = call.absorb(entries, self.clock())
                if verdict is None:
                    break
            yield from self._pause(verdict, generation, call)
        return call.results()

    def lookup(self, op: LookupOp, ids: Iterable[int], consistency: Any, timeout_s: float | None) -> Program[list[Any]]:
        """A lookup: its ids for each shard join the shard's queue of lookups (coalesced with other callers' into
        one RPC, as writes are), round after round until every shard answered."""
        self.check_open()
        id_list = validate_ids(ids)
        level = check_consistency(consistency)
        if not id_list:
            return []
        call = LookupCall(op, id_list, level, self.cfg, timeout_s, self.clock())
        read_op = ReadOp(op, int(level))
        while call.pending:
            smap = yield from self._map(call)
            generation = self.topology.generation
            chunks = call.plan(smap)
            failures: list[Failure] = []
            if chunks is None:
                failures.append(Failure(Failure.RETRY, "the shard map assigns no shard to some ids", refresh=True))
            else:
                entries = []
                for sid, positions in chunks:
                    keys = [id_list[p] for p in positions]
                    e = Entry(sid, [], positions, b"".join(id_frame(k) for k in keys), False, call.deadline)
                    e.keys = keys
                    entries.append(e)
                yield WriteRound(read_op, entries, call.deadline)
                answered = []
                for e in entries:
                    if isinstance(e.outcome, Failure):
                        failures.append(e.outcome)
                    elif e.outcome is not None:
                        answered.append((e.indexes, e.outcome))
                call.merge_found(answered)
            if failures and call.pending:
                yield from self._pause(call.failed(failures, self.clock()), generation, call)
        return call.results()

    def routed_read(
        self, what: str, key_id: int, method: str, req: Any, deserializer: Callable[[bytes], Any],
        level: ReadConsistency, timeout_s: float | None,
    ) -> Program[Any]:  # fmt: skip
        """One read RPC sent to the shard of ``key_id`` (its leader for linearizable reads),
        retried until ``timeout_s``."""
        call = ReadCall(what, self.cfg, timeout_s, self.clock())
        while True:
            smap = yield from self._map(call)
            generation = self.topology.generation
            sid = smap.shard_id_for(key_id)
            if sid is None:
                f = Failure(Failure.RETRY, f"the shard map assigns no shard to {key_id}", refresh=True)
            else:
                now = self.clock()
                address = self.topology.pick(sid, now, leader=level == ReadConsistency.LINEARIZABLE)
                rpc = Rpc(
                    address, method, req, type(req).SerializeToString, deserializer, self._attempt_timeout(call, now)
                )
                (answer,) = yield Send((rpc,))
                if not isinstance(answer, BaseException):
                    return answer
                f = self._read_failure(sid, rpc, answer)
            yield from self._pause(call.failed([f], self.clock()), generation, call)

    def _page(
        self, op: PagedOp, account_id: int, req: Any, level: ReadConsistency, timeout_s: float | None
    ) -> Program[Page]:
        resp = yield from self.routed_read(
            op.name, account_id, op.method, req, op.response_cls.FromString, level, timeout_s
        )
        return op.page(resp)

    def shard_map(self, timeout_s: float | None) -> Program[ShardMap]:
        """The cluster's current shard map, fetched now from any node."""
        self.check_open()
        call = ReadCall("shard_map", self.cfg, timeout_s, self.clock())
        return (yield from self._refresh_until(call, self.topology.generation, ""))

    def _attempt_timeout(self, call: ReadCall, now: float) -> float:
        return max(0.001, min(self.cfg.attempt_timeout_s, call.remaining(now)))

    def _read_failure(self, shard_id: int, rpc: Rpc, exc: BaseException) -> Failure:
        f = classify(exc, write=False, closed=self.closed)
        self.topology.note(shard_id, rpc.address, f, self.clock())
        return f

    def unary(
        self, what: str, method: str, req: Any, response_cls: Any, timeout_s: float | None, *, write: bool,
        retry_ambiguous: bool = True, whole_attempts: bool = False,
    ) -> Program[Any]:  # fmt: skip
        """One request to any node (it routes to the shard leaders itself), retried with the same message until
        ``timeout_s``. A write whose attempt may have applied ends in OutcomeUnknownError unless a retry answers;
        ``retry_ambiguous=False`` (a request that is not idempotent) ends there at once. ``whole_attempts``: an
        attempt may take all the time left, not attempt_timeout_s (a step the node runs in several stages, which
        a retry would only find still running)."""
        self.check_open()
        call = UnaryCall(what, self.cfg, timeout_s, self.clock(), write=write)
        serializer = type(req).SerializeToString
        while True:
            generation = self.topology.generation
            now = self.clock()
            attempt_s = max(0.001, call.remaining(now)) if whole_attempts else self._attempt_timeout(call, now)
            rpc = Rpc(self.topology.pick_any(now), method, req, serializer, response_cls.FromString, attempt_s)
            (answer,) = yield Send((rpc,))
            if not isinstance(answer, BaseException):
                return answer
            if isinstance(answer, ClientClosedError):  # refused before starting: nothing was sent
                raise call.error(closed_failure())
            f = classify(answer, write=write, closed=self.closed)
            self.topology.note(ANY_SHARD, rpc.address, f, self.clock())
            call.maybe_applied |= f.ambiguous
            if f.ambiguous and not retry_ambiguous:
                raise call.error(f)
            yield from self._pause(call.failed([f], self.clock()), generation, call)

    def _deadline_split(self, timeout_s: float | None) -> Callable[[], float]:
        """For a call made of several requests: the time its next request has left of the call's deadline."""
        deadline = self.clock() + (self.cfg.timeout_s if timeout_s is None else timeout_s)
        return lambda: max(MIN_ATTEMPT_S, deadline - self.clock())

    # ------------------------------------------------------------------ the public methods, as programs
    #
    # Client.x(...) is ``self._run(core.x(...))`` and AsyncClient.x(...) is ``await self._run(core.x(...))``.

    def create_accounts(self, accounts: Iterable[Account], timeout_s: float | None,
                        owner: str | None = None) -> Program[list[AccountResult]]:
        return self.write(owned_accounts_op(owner) if owner else ACCOUNTS, list(accounts), timeout_s)

    def create_transfers(self, transfers: Iterable[Transfer], timeout_s: float | None) -> Program[list[TransferResult]]:
        return self.write(TRANSFERS, list(transfers), timeout_s)

    def create_trades(self, trades: Iterable[NewTrade], timeout_s: float | None) -> Program[list[Any]]:
        return self.write(CREATE_TRADES, list(trades), timeout_s)

    def ship_trades(self, trade_ids: Iterable[int], timeout_s: float | None) -> Program[list[Any]]:
        return self.write(SHIP_TRADES, trade_refs(trade_ids), timeout_s)

    def confirm_trades(self, trade_ids: Iterable[int], timeout_s: float | None) -> Program[list[Any]]:
        return self.write(CONFIRM_TRADES, trade_refs(trade_ids), timeout_s)

    def refund_trades(self, refunds: Iterable[Refund], timeout_s: float | None) -> Program[list[Any]]:
        return self.write(REFUND_TRADES, list(refunds), timeout_s)

    def open_disputes(self, trade_ids: Iterable[int], timeout_s: float | None) -> Program[list[Any]]:
        return self.write(OPEN_DISPUTES, trade_refs(trade_ids), timeout_s)

    def withdraw_disputes(self, trade_ids: Iterable[int], timeout_s: float | None) -> Program[list[Any]]:
        return self.write(WITHDRAW_DISPUTES, trade_refs(trade_ids), timeout_s)

    def resolve_disputes(self, resolutions: Iterable[DisputeResolution], timeout_s: float | None) -> Program[list[Any]]:
        return self.write(RESOLVE_DISPUTES, list(resolutions), timeout_s)

    def extend_trades(self, extensions: Iterable[Extension], timeout_s: float | None) -> Program[list[Any]]:
        return self.write(EXTEND_TRADES, list(extensions), timeout_s)

    def create_trade(self, trade: NewTrade, timeout_s: float | None) -> Program[Any]:
        return _first(self.create_trades([trade], timeout_s))

    def ship_trade(self, trade_id: int, timeout_s: float | None) -> Program[Any]:
        return _first(self.ship_trades([trade_id], timeout_s))

    def confirm_trade(self, trade_id: int, timeout_s: float | None) -> Program[Any]:
        return _first(self.confirm_trades([trade_id], timeout_s))

    def refund_trade(self, trade_id: int, refund_id: int, amount: int, timeout_s: float | None) -> Program[Any]:
        return _first(self.refund_trades([Refund(trade_id, refund_id, amount)], timeout_s))

    def open_dispute(self, trade_id: int, timeout_s: float | None) -> Program[Any]:
        return _first(self.open_disputes([trade_id], timeout_s))

    def withdraw_dispute(self, trade_id: int, timeout_s: float | None) -> Program[Any]:
        return _first(self.withdraw_disputes([trade_id], timeout_s))

    def resolve_dispute(self, trade_id: int, buyer_amount: int, timeout_s: float | None) -> Program[Any]:
        return _first(self.resolve_disputes([DisputeResolution(trade_id, buyer_amount)], timeout_s))

    def extend_trade(self, trade_id: int, extension_id: int, extend_by_s: int, timeout_s: float | None) -> Program[Any]:
        return _first(self.extend_trades([Extension(trade_id, extension_id, extend_by_s)], timeout_s))

    def lookup_accounts(self, ids: Iterable[int], consistency: Any, timeout_s: float | None) -> Program[list[Any]]:
        return self.lookup(LOOKUP_ACCOUNTS, ids, consistency, timeout_s)

    def lookup_transfers(self, ids: Iterable[int], consistency: Any, timeout_s: float | None) -> Program[list[Any]]:
        return self.lookup(LOOKUP_TRANSFERS, ids, consistency, timeout_s)

    def lookup_trades(self, ids: Iterable[int], consistency: Any, timeout_s: float | None) -> Program[list[Any]]:
        return self.lookup(LOOKUP_TRADES, ids, consistency, timeout_s)

    def get_account_transfers(
        self, account_id: int, limit: int, page_token: str, reversed: bool, debits: bool, credits: bool,
        timestamp_min: int, timestamp_max: int, consistency: Any, timeout_s: float | None,
    ) -> Program[Page]:  # fmt: skip
        self.check_open()
        level = check_consistency(consistency)
        req = account_transfers_request(
            account_id,
            limit=limit,
            page_token=page_token,
            reversed=reversed,
            debits=debits,
            credits=credits,
            timestamp_min=timestamp_min,
            timestamp_max=timestamp_max,
            consistency=level,
        )
        return self._page(ACCOUNT_TRANSFERS, account_id, req, level, timeout_s)

    def list_trades(
        self, account_id: int, role: Any, limit: int, page_token: str, consistency: Any, timeout_s: float | None
    ) -> Program[TradePage]:
        self.check_open()
        level = check_consistency(consistency)
        req = list_trades_request(account_id, role=role, limit=limit, page_token=page_token, consistency=level)
        return self._page(LIST_TRADES, account_id, req, level, timeout_s)

    # ------------------------------------------------------------------ clearing (every request goes to any node)

    def register_participants(
        self, participants: Iterable[Participant], timeout_s: float | None
    ) -> Program[list[ParticipantResult]]:
        return self.write(REGISTER_PARTICIPANTS, list(participants), timeout_s)

    def update_participants(
        self, updates: Iterable[ParticipantUpdate], timeout_s: float | None
    ) -> Program[list[ParticipantResult]]:
        return self.write(UPDATE_PARTICIPANTS, list(updates), timeout_s)

    def set_net_debit_cap(self, participant_id: int, cap: int, timeout_s: float | None) -> Program[Any]:
        return _first(self.update_participants([ParticipantUpdate(participant_id, net_debit_cap=cap)], timeout_s))

    def suspend_participant(self, participant_id: int, timeout_s: float | None) -> Program[Any]:
        return _first(self.update_participants([ParticipantUpdate(participant_id, suspended=True)], timeout_s))

    def resume_participant(self, participant_id: int, timeout_s: float | None) -> Program[Any]:
        return _first(self.update_participants([ParticipantUpdate(participant_id, suspended=False)], timeout_s))

    def submit_items(self, items: Iterable[ClearingItem], timeout_s: float | None) -> Program[list[ClearingItemResult]]:
        return self.write(SUBMIT_ITEMS, list(items), timeout_s)

    def _lookup_any(
        self, what: str, method: str, ids: Iterable[int], request_cls: Any, fields: dict[str, Any],
        response_cls: Any, field: str, from_proto: Callable[[Any], Any], timeout_s: float | None,
    ) -> Program[list[Any]]:  # fmt: skip
        """A lookup served by any node, max_batch_items ids per request (one after the other, sharing the
        deadline); what was found, in request order."""
        self.check_open()
        id_list = validate_ids(ids)
        left = self._deadline_split(timeout_s)
        found: list[Any] = []
        step = self.cfg.max_batch_items
        for k in range(0, len(id_list), step):
            req = clearing_request(request_cls, what, **fields)
            add = req.ids.add
            for v in id_list[k : k + step]:
                add(hi=v >> 64, lo=v & U64_MAX)
            resp = yield from self.unary(what, method, req, response_cls, left(), write=False)
            found.extend(from_proto(m) for m in getattr(resp, field))
        return found

    def lookup_participants(self, ids: Iterable[int], timeout_s: float | None) -> Program[list[Participant]]:
        return self._lookup_any(
            "lookup_participants", LOOKUP_PARTICIPANTS_METHOD, ids, clearing_pb2.LookupParticipantsRequest, {},
            clearing_pb2.ParticipantsResponse, "participants", participant_from_proto, timeout_s,
        )  # fmt: skip

    def lookup_items(
        self, ids: Iterable[int], consistency: Any, timeout_s: float | None
    ) -> Program[list[ClearingItem]]:
        level = check_consistency(consistency)
        return self._lookup_any(
            "lookup_items", LOOKUP_ITEMS_METHOD, ids, clearing_pb2.LookupItemsRequest, {"consistency": int(level)},
            clearing_pb2.LookupItemsResponse, "items", clearing_item_from_proto, timeout_s,
        )  # fmt: skip

    def list_participants(
        self, ledger: int, after: int, limit: int, timeout_s: float | None
    ) -> Program[list[Participant]]:
        """One page of at most ``limit`` participants after the id ``after``; ``limit`` 0: every participant, page
        after page of the largest size (sharing the call's deadline)."""
        req = clearing_request(
            clearing_pb2.ListParticipantsRequest, "list_participants", ledger=ledger, after=after,
            limit=limit or PAGE_SIZE_MAX,
        )  # fmt: skip
        left = self._deadline_split(timeout_s)
        found: list[Participant] = []
        while True:
            resp = yield from self.unary(
                "list_participants", LIST_PARTICIPANTS_METHOD, req, clearing_pb2.ParticipantsResponse, left(),
                write=False,
            )  # fmt: skip
            found.extend(participant_from_proto(m) for m in resp.participants)
            if limit or len(resp.participants) < req.limit:
                return found
            req.after.CopyFrom(resp.participants[-1].id)

    def list_windows(self, ledger: int, after: int, limit: int, timeout_s: float | None) -> Program[list[Window]]:
        req = clearing_request(clearing_pb2.ListWindowsRequest, "list_windows", ledger=ledger, after=after,
                               limit=limit)
        resp = yield from self.unary(
            "list_windows", LIST_WINDOWS_METHOD, req, clearing_pb2.ListWindowsResponse, timeout_s, write=False
        )
        return [window_from_proto(m) for m in resp.windows]

    def get_window(self, ledger: int, number: int, bilateral: bool, timeout_s: float | None) -> Program[Window]:
        req = clearing_request(clearing_pb2.GetWindowRequest, "get_window", ledger=ledger, number=number,
                               bilateral=bilateral)
        resp = yield from self.unary("get_window", GET_WINDOW_METHOD, req, clearing_pb2.Window, timeout_s,
                                     write=False)
        return window_from_proto(resp)

    def _window_step(self, what: str, method: str, req: Any, timeout_s: float | None, **kw: Any) -> Program[Any]:
        """Close, settle and unwind: several stages on the node (a cut across the shards, ledger transfers), so
        an attempt gets all the call's time; a retry of one cut short finds it done or resumes it."""
        resp = yield from self.unary(
            what, method, req, clearing_pb2.WindowStepResponse, timeout_s, write=True, whole_attempts=True, **kw
        )
        return window_step_from_proto(resp)

    @staticmethod
    def _closed_window_number(what: str, number: Any) -> None:
        if number == 0:
            raise InvalidRequestError(
                f"invalid {what} request (nothing was sent)",
                [FieldViolation("number", "name the closed window (0 is the open one)")],
                code=None,
            )

    def close_window(self, ledger: int, number: int, timeout_s: float | None) -> Program[WindowStep]:
        """CloseWindow of ``number``; 0: the open window, by its number (learnt first). CloseWindow(0) itself
        closes whichever window is open when it applies, so its retry after a lost answer would close the next
        window too; CloseWindow(n) answers ``ok`` again, so it is retried like every other write."""
        req = clearing_request(clearing_pb2.WindowRequest, "close_window", ledger=ledger, number=number)
        left = self._deadline_split(timeout_s)
        if number == 0:
            try:
                open_window = yield from self.get_window(ledger, 0, False, left())
                req.number = open_window.number
            except TidebankError as exc:
                if exc.code != grpc.StatusCode.NOT_FOUND:
                    raise
            # No open window known (a ledger without participants): CloseWindow(0) is sent, and not retried.
        return (yield from self._window_step(
            "close_window", CLOSE_WINDOW_METHOD, req, left(), retry_ambiguous=req.number != 0
        ))

    def settle_window(self, ledger: int, number: int, timeout_s: float | None) -> Program[WindowStep]:
        req = clearing_request(clearing_pb2.WindowRequest, "settle_window", ledger=ledger, number=number)
        self._closed_window_number("settle_window", number)
        return self._window_step("settle_window", SETTLE_WINDOW_METHOD, req, timeout_s)

    def unwind_participant(
        self, ledger: int, number: int, participant_id: int, timeout_s: float | None
    ) -> Program[WindowStep]:
        req = clearing_request(clearing_pb2.UnwindParticipantRequest, "unwind_participant", ledger=ledger,
                               number=number, participant_id=participant_id)
        self._closed_window_number("unwind_participant", number)
        return self._window_step("unwind_participant", UNWIND_PARTICIPANT_METHOD, req, timeout_s)

    def abort_window(self, ledger: int, number: int, timeout_s: float | None) -> Program[WindowStep]:
        """AbortWindow of a closed window: ``ok`` or (aborted before, e.g. by this call's lost first attempt)
        ``window_already_aborted``; a window in any other state raises (FAILED_PRECONDITION, nothing changed)."""
        req = clearing_request(clearing_pb2.WindowRequest, "abort_window", ledger=ledger, number=number)
        self._closed_window_number("abort_window", number)
        return self._window_step("abort_window", ABORT_WINDOW_METHOD, req, timeout_s)

    def export_statement(
        self, ledger: int, number: int, participant_id: int, include_unwound: bool, timeout_s: float | None
    ) -> Program[Statement]:
        """The stream of a participant's items of a window (emitted chunk by chunk, ClearingItem values), then its
        Statement (the program's value). Retried like a read; a stream that breaks after items reached the consumer
        is resumed after the last of them (ExportStatementRequest.after_item_id), so nothing is handed out twice.
        The statement always covers the whole window: after a resume the client checks its digest against the
        items it handed out, and raises if they differ (the window changed in between: export again)."""
        self.check_open()
        req = clearing_request(
            clearing_pb2.ExportStatementRequest, "export_statement", ledger=ledger, number=number,
            participant_id=participant_id, include_unwound=include_unwound,
        )  # fmt: skip
        if timeout_s is None:
            timeout_s = max(self.cfg.timeout_s, DEFAULT_EXPORT_TIMEOUT_S)
        return self._export(req, timeout_s)

    def _export(self, req: clearing_pb2.ExportStatementRequest, timeout_s: float) -> Program[Statement]:
        call = ReadCall("export_statement", self.cfg, timeout_s, self.clock())
        serializer, deserializer = type(req).SerializeToString, clearing_pb2.StatementChunk.FromString
        emitted = 0
        resumed = False
        digest = hashlib.sha256()  # over the accepted items handed out, as the statement's (checked after a resume)
        while True:
            generation = self.topology.generation
            now = self.clock()
            rpc = Rpc(self.topology.pick_any(now), EXPORT_STATEMENT_METHOD, req, serializer, deserializer,
                      max(0.001, call.remaining(now)), stream=True)
            stream, problem = yield OpenStream(rpc)
            while problem is None:
                chunk = yield NextChunk(stream)
                if chunk is END_OF_STREAM:
                    problem = TidebankError("the stream ended without a statement")
                elif isinstance(chunk, BaseException):
                    problem = chunk
                else:
                    if chunk.items:
                        items = [clearing_item_from_proto(m) for m in chunk.items]
                        for i in items:
                            if i.status == ClearingItemStatus.ACCEPTED:
                                digest.update(f"{i.id},{i.payer_id},{i.payee_id},{i.amount}\n".encode())
                        emitted += len(items)
                        req.after_item_id.CopyFrom(chunk.items[-1].id)  # a retry resumes after it
                        yield Emit(items)
                    if chunk.HasField("statement"):
                        statement = statement_from_proto(chunk.statement)
                        if resumed and statement.sha256 != digest.hexdigest():
                            raise TidebankError(
                                f"export_statement: the window changed while the export was resumed after {emitted} "
                                "items (the statement's digest is not that of the items handed out): export again"
                            )  # fmt: skip
                        return statement
            if isinstance(problem, ClientClosedError):
                raise call.error(closed_failure())
            f = classify(problem, write=False, closed=self.closed)
            self.topology.note(ANY_SHARD, rpc.address, f, self.clock())
            resumed = resumed or emitted > 0
            yield from self._pause(call.failed([f], self.clock()), generation, call)


_HANDLERS = {
    Send: "_send", Sleep: "_sleep", RefreshMap: "_refresh", WriteRound: "_round", OpenStream: "_open_stream",
    NextChunk: "_next_chunk",
}  # fmt: skip


class BaseClient:
    """What Client and AsyncClient share: the constructor, the properties and the plumbing between a shell's
    I/O and its core (``self._core``). A shell defines _make_core, its drivers ``_run`` and the handlers of the
    requests (``_send``, ``_sleep``, ``_refresh``, ``_round``), and ``_launch`` (send batches)."""

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
        tls: ClientTls | None = None,
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
        tls: who the client is and how it checks the nodes: ``TlsFiles(ca, cert, key)`` (the cluster CA,
            the principal's certificate and key; ``tidebank principal add`` writes them), or
            ``Plaintext()`` for a cluster started with ``plaintext = true``. Default: the files named by
            TIDEBANK_CA, TIDEBANK_CERT and TIDEBANK_KEY (or TIDEBANK_PLAINTEXT=1).
        """
        cfg = Config.make(
            addresses,
            timeout_s,
            max_batch_items,
            max_in_flight_per_shard,
            max_queued_items_per_shard,
            attempt_timeout_s,
            backoff_base_s,
            backoff_max_s,
            channel_options,
            tls,
        )
        self._core = self._make_core(cfg)

    def _make_core(self, cfg: Config) -> Core:
        """The core, given the concrete client's I/O (channels, guard, queue signals)."""
        raise NotImplementedError

    def _launch(self, q: QueueState, batches: list[list[Entry]]) -> None:
        """Send batches of q (each: ``_core.batch_rpc``, then ``_finish`` when its RPC ended)."""
        raise NotImplementedError

    def _handle(self, request: Request) -> Any:
        """The shell's answer to a request (for AsyncClient, an awaitable of it)."""
        return getattr(self, _HANDLERS[type(request)])(request)

    def _finish(
        self, q: QueueState, batch: list[Entry], rpc: Rpc, resp: Any, exc: BaseException | None, started: bool = True
    ) -> None:
        """A batch's RPC ended (or could not start): settle it, then send what may leave now."""
        try:
            self._core.batch_done(q, batch, rpc, resp, exc, started=started)
        finally:
            self._launch(q, self._core.release(q))

    @property
    def addresses(self) -> list[str]:
        """The seed addresses this client was given."""
        return list(self._core.cfg.seeds)

    @property
    def timeout_s(self) -> float:
        return self._core.cfg.timeout_s

    @property
    def max_batch_items(self) -> int:
        return self._core.cfg.max_batch_items

    @property
    def is_closed(self) -> bool:
        return self._core.closed

    @property
    def _rpc_count(self) -> int:
        return self._core.rpc_count

    def __repr__(self) -> str:
        state = "closed" if self._core.closed else "open"
        return f"<{type(self).__name__} {','.join(self._core.cfg.seeds)} {state}>"

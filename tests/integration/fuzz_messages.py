"""Fuzz inputs for every RPC of every tidebank service, made from the protobuf descriptors, and their verdict.

Shared by tests/integration/test_fuzz.py (hypothesis draws the choices) and bench/fuzz_long.py (a seeded
`random.Random` does): both go through a `Source`, so the same generators serve a short deterministic test
and a long run.

* `all_methods()` walks the descriptors of the Ledger, Escrow, Clearing, Admin and Internal services, so a
  new RPC is fuzzed without touching this file.
* `random_message()` fills a request with valid-typed values biased to boundaries (0, 2^64-1, 2^128-1 split
  over U128 hi/lo, negative int64, unknown enum values), ids of the seeded accounts, trades and
  participants (so some calls reach the rules and move money), repeated fields beyond the batch limits of
  tidebank.common.limits, and page tokens that look real.
* `mutate()` then turns its bytes into something else: unknown fields, a known field number with the
  wrong wire type, flipped bytes, a truncation, deep group nesting, an over-long varint, garbage that is
  not protobuf at all.
* `judge()` is the verdict on one answer: a clear code (CLEAR_CODES), PERMISSION_DENIED for a principal
  lacking the method's permission and for every unsigned signed-only call (Internal, SetLinkFaults), no
  stall past the deadline, and an OK answer that parses as the method's response type.

Nothing here signs a call: Internal and SetLinkFaults are fuzzed unsigned (or with a garbage signature)
and must be refused, so no fault is ever applied and no forged 2PC step reaches a log.
"""

from __future__ import annotations

import base64
import collections
import random
import struct
import threading
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
from google.protobuf import descriptor as _d
from google.protobuf import message_factory

from tidebank.common import tls as tls_files
from tidebank.common.auth import AUTH_HEADER
from tidebank.common.limits import BATCH_ITEMS_MAX, PAGE_SIZE_MAX, PARTICIPANTS_PER_REQUEST_MAX
from tidebank.common.tls import Principal
from tidebank.v1 import (
    admin_pb2,
    clearing_pb2,
    escrow_pb2,
    internal_pb2,
    ledger_pb2,
    types_pb2,
)

PACKAGE = "tidebank.v1"
SERVICE_MODULES = (ledger_pb2, escrow_pb2, clearing_pb2, admin_pb2, internal_pb2)
PUBLIC_SERVICES = ("Ledger", "Escrow", "Clearing", "Admin")
SIGNED_METHODS = frozenset({"Admin/SetLinkFaults"})  # besides every Internal method: need the cluster's HMAC
PRINCIPAL_HEADER = "x-tidebank-principal"  # believed only from a node certificate (node/api/access.py)

CALL_TIMEOUT_S = 10.0
# Every answer must be one of these; UNAVAILABLE only while a node is known to be down.
CLEAR_CODES = frozenset({"OK", "INVALID_ARGUMENT", "FAILED_PRECONDITION", "NOT_FOUND", "ALREADY_EXISTS",
                         "PERMISSION_DENIED", "UNAUTHENTICATED", "RESOURCE_EXHAUSTED", "OUT_OF_RANGE"})
REFUSED_CODES = frozenset({"PERMISSION_DENIED", "UNAUTHENTICATED"})
# Methods that answer for this node's own replicas (admin.proto): asked explicitly about a shard the node
# does not lead, UNAVAILABLE with reason NOT_LEADER / NO_LEADER is their documented, clear answer.
NODE_LOCAL_METHODS = frozenset({"Admin/GetLedgerTotals"})
LEADER_REASONS = frozenset({"NOT_LEADER", "NO_LEADER"})
# RESOURCE_EXHAUSTED made by the client's gRPC when the answer's headers or trailers exceed its metadata limits
# (8 KiB soft, 16 KiB hard): whatever status the node sent is lost, so it is no clear answer.
LOST_STATUS_MARKERS = ("metadata size exceeds", "Stream removed")

U64_MAX = (1 << 64) - 1
U128_MAX = (1 << 128) - 1

# ---- the seeded world: what fuzzed ids point at -------------------------------------------------------

LEDGER = 1  # accounts, transfers, trades
CLEARING_LEDGER = 5  # participants, items, windows
_BASE = 0x7A5E << 48
ACCOUNT_IDS = tuple(_BASE + i for i in range(1, 13))  # ledger 1, code 1
CLEARING_ACCOUNT_IDS = tuple(_BASE + 0x100 + i for i in range(1, 5))  # ledger 5: settlement accounts
TRANSFER_IDS = tuple(_BASE + 0x200 + i for i in range(1, 12))
TRADE_IDS = tuple(_BASE + 0x300 + i for i in range(1, 6))
PARTICIPANT_IDS = tuple(_BASE + 0x400 + i for i in range(1, 4))
ITEM_IDS = tuple(_BASE + 0x500 + i for i in range(1, 5))
KNOWN_IDS = ACCOUNT_IDS + CLEARING_ACCOUNT_IDS + TRANSFER_IDS + TRADE_IDS + PARTICIPANT_IDS + ITEM_IDS

# name -> (roles, participants). "admin" is the cluster's own; the node identity is a node certificate.
PRINCIPALS: dict[str, tuple[tuple[str, ...], tuple[int, ...]]] = {
    "admin": (("admin", "operator", "auditor", "platform"), ()),
    "fz-operator": (("operator",), ()),
    "fz-auditor": (("auditor",), ()),
    "fz-platform": (("platform",), ()),
    "fz-holder": (("account_holder",), ()),
    "fz-bank": (("participant",), (PARTICIPANT_IDS[0],)),
}
NODE_IDENTITY = "node:"  # prefix: the principal is the certificate of that node ("node:dc1-n1")


def principal_of(name: str) -> Principal:
    if name.startswith(NODE_IDENTITY):
        return Principal(name[len(NODE_IDENTITY):], frozenset({"node"}))
    roles, participants = PRINCIPALS[name]
    return Principal(name, frozenset(roles), frozenset(participants))


# ---- the methods ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    service: str  # "Ledger"
    name: str  # "CreateTransfers"
    request_cls: type
    response_cls: type
    server_streaming: bool

    @property
    def key(self) -> str:
        return f"{self.service}/{self.name}"

    @property
    def path(self) -> str:
        return f"/{PACKAGE}.{self.service}/{self.name}"

    @property
    def signed(self) -> bool:
        return self.service == "Internal" or self.key in SIGNED_METHODS


def all_methods() -> list[Method]:
    """Every RPC of every service in the tidebank.v1 modules, from their descriptors."""
    out = []
    for module in SERVICE_MODULES:
        for service in module.DESCRIPTOR.services_by_name.values():
            for m in service.methods:
                out.append(Method(service.name, m.name, message_factory.GetMessageClass(m.input_type),
                                  message_factory.GetMessageClass(m.output_type), m.server_streaming))
    return out


def service_names() -> set[str]:
    return {f"{PACKAGE}.{s}" for m in SERVICE_MODULES for s in m.DESCRIPTOR.services_by_name}


# ---- sources of choices -----------------------------------------------------------------------------


class Source:
    """Where the generators' choices come from."""

    def integer(self, lo: int, hi: int) -> int:
        raise NotImplementedError

    def choice(self, options: Sequence):
        return options[self.integer(0, len(options) - 1)]

    def chance(self, percent: int) -> bool:
        return self.integer(0, 99) < percent

    def raw(self, size_max: int) -> bytes:
        size = self.integer(0, size_max)
        return bytes(self.integer(0, 255) for _ in range(size))


class RandomSource(Source):
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def raw(self, size_max: int) -> bytes:
        return self.rng.randbytes(self.rng.randint(0, size_max))


class HypothesisSource(Source):
    """Choices drawn through hypothesis' `st.data()` (so it can replay and report them)."""

    def __init__(self, data) -> None:
        from hypothesis import strategies as st

        self.data = data
        self.st = st

    def integer(self, lo: int, hi: int) -> int:
        return self.data.draw(self.st.integers(lo, hi))

    def choice(self, options: Sequence):
        return self.data.draw(self.st.sampled_from(tuple(options)))

    def chance(self, percent: int) -> bool:
        return self.data.draw(self.st.integers(0, 99)) < percent

    def raw(self, size_max: int) -> bytes:
        return self.data.draw(self.st.binary(max_size=size_max))


# ---- values -----------------------------------------------------------------------------------------

U64_EDGES = (0, 1, 2, 100, 1_000_000, (1 << 32) - 1, 1 << 32, (1 << 63) - 1, 1 << 63, U64_MAX - 1, U64_MAX)
I64_EDGES = (-(1 << 63), -(1 << 63) + 1, -1, 0, 1, (1 << 63) - 1)
U32_EDGES = (0, 1, 2, 7, 100, 10_000, 10_001, 1 << 31, (1 << 32) - 1)
I32_EDGES = (-(1 << 31), -1, 0, 1, (1 << 31) - 1)
U128_EDGES = (0, 1, U64_MAX, 1 << 64, U128_MAX - 1, U128_MAX, U64_MAX << 64, 1 << 127)

# Values a field of that name tends to need to get past validation, and its edges.
HINTS: dict[str, tuple[int, ...]] = {
    "ledger": (LEDGER, LEDGER, CLEARING_LEDGER, 0, 2, (1 << 32) - 1),
    "code": (1, 1, 0, 9200, (1 << 32) - 1),
    "flags": (0, 0, 1, 2, 4, 8, 16, 32, 3, 6, 12, 48, 63, 64, (1 << 32) - 1),
    "timeout": (0, 1, 3600, (1 << 32) - 1),
    "ship_by_timeout_s": (0, 1, 3600, 30 * 86400, 30 * 86400 + 1, (1 << 32) - 1),
    "auto_confirm_timeout_s": (0, 1, 3600, 30 * 86400, 30 * 86400 + 1, (1 << 32) - 1),
    "extend_by_s": (0, 1, 86400, 30 * 86400, 30 * 86400 + 1, (1 << 32) - 1),
    "fee_bps": (0, 250, 10_000, 10_001, (1 << 32) - 1),
    "limit": (0, 1, 2, 100, PARTICIPANTS_PER_REQUEST_MAX, PARTICIPANTS_PER_REQUEST_MAX + 1, PAGE_SIZE_MAX,
              PAGE_SIZE_MAX + 1, (1 << 32) - 1),
    "shard_id": (0, 1, 2, 3, 4, 1000, (1 << 32) - 1),
    "coordinator_shard": (0, 1, 2, 3, 4, (1 << 32) - 1),
    "kind": tuple(range(0, 10)) + ((1 << 32) - 1,),
    "amount": (0, 1, 10, 1000, 1 << 63, U64_MAX),
    "buyer_amount": (0, 1, 500, 1000, U64_MAX),
    "net_debit_cap": (0, 1, 1_000_000, U64_MAX),
    "number": (0, 1, 2, 3, 1 << 63, U64_MAX),
    "after": (0, 1, 2, U64_MAX),
    "after_seq": (0, 1, 10, U64_MAX),
    "timestamp": (0, 0, 1, U64_MAX),
    "timestamp_min": (0, 1, U64_MAX),
    "timestamp_max": (0, 1, U64_MAX),
    "delay_ms": (0, 1, 50, (1 << 32) - 1),
}
STRING_HINTS: dict[str, tuple[str, ...]] = {
    "name": ("", "bank-a", "x" * 32, "x" * 33, "é" * 16, "é" * 17, "totals", "windows", "__class__",
             "_private", "\x00", "n\u0301ame"),
    "isolated_dcs": ("dc1", "dc2", "dc9", ""),
    "from_dc": ("dc1", "dc2", "dc9", ""),
    "to_dc": ("dc1", "dc3", "dc9", ""),
}
TEXTS = ("", "a", "0", "-1", "=", "====", "%00", "\x00\x01", "é", "\U0001f4b8" * 50, "A" * 10_000,
         "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "not-a-token!", "../../etc/passwd")
SIZES = (0, 1, 1, 2, 3, 5, 16)  # ordinary lengths of a repeated field
HUGE_SIZES = (PARTICIPANTS_PER_REQUEST_MAX + 1, BATCH_ITEMS_MAX, BATCH_ITEMS_MAX + 1, 2 * BATCH_ITEMS_MAX + 3)
PACKED_RECORD_SIZES = {"accounts_packed": 96, "transfers_packed": 128}


def u128_value(src: Source) -> int:
    pick = src.integer(0, 99)
    if pick < 45:
        return src.choice(KNOWN_IDS)
    if pick < 70:
        return src.choice(U128_EDGES)
    if pick < 80:  # one half at an edge, the other anything
        hi, lo = src.choice((0, 1, U64_MAX)), src.choice((0, 1, U64_MAX, src.integer(0, U64_MAX)))
        return hi << 64 | lo
    return src.integer(1, U128_MAX - 1)


def _fill_u128(message, value: int) -> None:
    message.hi, message.lo = value >> 64, value & U64_MAX


def _scalar(src: Source, f: _d.FieldDescriptor):
    t = f.type
    T = _d.FieldDescriptor
    if t in (T.TYPE_UINT64, T.TYPE_FIXED64):
        hint = HINTS.get(f.name)
        if hint and src.chance(60):
            return src.choice(hint)
        return src.choice(U64_EDGES) if src.chance(60) else src.integer(0, U64_MAX)
    if t in (T.TYPE_UINT32, T.TYPE_FIXED32):
        hint = HINTS.get(f.name)
        if hint and src.chance(60):
            return src.choice(hint)
        return src.choice(U32_EDGES) if src.chance(60) else src.integer(0, (1 << 32) - 1)
    if t in (T.TYPE_INT64, T.TYPE_SINT64, T.TYPE_SFIXED64):
        return src.choice(I64_EDGES) if src.chance(60) else src.integer(-(1 << 63), (1 << 63) - 1)
    if t in (T.TYPE_INT32, T.TYPE_SINT32, T.TYPE_SFIXED32):
        return src.choice(I32_EDGES) if src.chance(60) else src.integer(-(1 << 31), (1 << 31) - 1)
    if t == T.TYPE_ENUM:  # proto3 enums are open: unknown numbers are legal on the wire
        known = [v.number for v in f.enum_type.values]
        return src.choice(known) if src.chance(70) else src.choice((max(known) + 1, 99, -1, (1 << 31) - 1))
    if t == T.TYPE_BOOL:
        return src.chance(50)
    if t in (T.TYPE_DOUBLE, T.TYPE_FLOAT):
        return src.choice((0.0, -1.0, 1e300, float("inf"), float("nan")))
    if t == T.TYPE_STRING:
        hint = STRING_HINTS.get(f.name)
        if hint and src.chance(60):
            return src.choice(hint)
        return src.choice(TEXTS) if src.chance(70) else src.raw(40).decode("latin-1")
    if t == T.TYPE_BYTES:
        return _bytes_value(src, f)
    raise AssertionError(f"no generator for field {f.full_name} of type {t}")


def _bytes_value(src: Source, f: _d.FieldDescriptor) -> bytes:
    record = PACKED_RECORD_SIZES.get(f.name)
    if record is None or src.chance(30):
        return src.raw(64) if src.chance(80) else src.raw(4096)
    count = src.choice((1, 1, 2, 3, BATCH_ITEMS_MAX + 1))
    one = bytearray(src.raw(record).ljust(record, b"\0"))
    if src.chance(60):  # ids of the seeded world, ledger 1, code 1: some of these get past the rules
        for offset in ((0, 16, 32) if record == 128 else (0,)):
            one[offset:offset + 16] = u128_value(src).to_bytes(16, "little")
        if record == 128:
            struct.pack_into("<QQ", one, 48, src.choice((1, 7, U64_MAX)), 0)
            struct.pack_into("<IIII4xQ", one, 100, 0, LEDGER, 1, src.choice((0, 1, 2)), 0)
        else:
            one[16:48] = bytes(32)
            struct.pack_into("<IIIQ", one, 76, LEDGER, 1, src.choice((0, 1, 8)), 0)
    out = bytes(one) * count
    if src.chance(20):  # not a whole number of records
        out = out[:-src.integer(1, record - 1)] if src.chance(50) else out + b"\x01"
    return out


def _page_token(src: Source, message) -> str:
    """A token shaped like the service's own (16-byte account, filter byte, u64, optional 16 bytes)."""
    if src.chance(40):
        return src.choice(TEXTS)
    account = 0
    if "account_id" in message.DESCRIPTOR.fields_by_name and message.HasField("account_id"):
        account = message.account_id.hi << 64 | message.account_id.lo
    if src.chance(20):
        account = u128_value(src)
    raw = account.to_bytes(16, "big") + bytes((src.integer(0, 7),)) + src.choice(U64_EDGES).to_bytes(8, "big")
    if src.chance(50):
        raw += u128_value(src).to_bytes(16, "big")
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _class(descriptor):
    return message_factory.GetMessageClass(descriptor)


def random_message(src: Source, cls, depth: int = 0):
    """A message of `cls` with each field set or not, typed right, values biased to edges and known ids."""
    message = cls()
    desc = message.DESCRIPTOR
    if depth > 0 and src.chance(5):  # an unknown field inside a nested message (kept, and sent on)
        message.MergeFromString(_field_bytes(src, src.choice((99, 1000, 4242)), src.choice((0, 1, 2, 5))))
    if desc.full_name in (types_pb2.U128.DESCRIPTOR.full_name, types_pb2.I128.DESCRIPTOR.full_name):
        _fill_u128(message, u128_value(src))
        return message
    for f in desc.fields:
        if not src.chance(70):
            continue
        repeated = f.is_repeated
        is_message = f.type == _d.FieldDescriptor.TYPE_MESSAGE
        if not repeated:
            if is_message:
                if depth < 6:
                    getattr(message, f.name).CopyFrom(random_message(src, _class(f.message_type), depth + 1))
            elif f.name == "page_token":
                setattr(message, f.name, _page_token(src, message))
            else:
                setattr(message, f.name, _scalar(src, f))
            continue
        huge = depth == 0 and src.chance(6)
        size = src.choice(HUGE_SIZES) if huge else src.choice(SIZES)
        target = getattr(message, f.name)
        if is_message:
            if depth >= 6 or size == 0:
                continue
            distinct = min(size, 4)
            items = [random_message(src, _class(f.message_type), depth + 1) for _ in range(distinct)]
            for i in range(size):
                target.add().CopyFrom(items[i % distinct])
            if size > distinct and "id" in items[0].DESCRIPTOR.fields_by_name:
                for i, item in enumerate(target):  # a huge batch of distinct ids, not one id repeated
                    item.id.lo = (item.id.lo + i) & U64_MAX
        elif size > 4 and f.cpp_type in _INTEGER_CPP_TYPES and src.chance(50):  # many distinct numbers
            start, mask = _scalar(src, f), _INTEGER_CPP_TYPES[f.cpp_type]
            target.extend(_wrap((start + i) & mask, f.cpp_type) for i in range(size))
        else:
            distinct = min(size, 4)
            values = [_scalar(src, f) for _ in range(distinct)]
            target.extend(values[i % distinct] for i in range(size))
    return message


_INTEGER_CPP_TYPES = {_d.FieldDescriptor.CPPTYPE_UINT32: (1 << 32) - 1, _d.FieldDescriptor.CPPTYPE_UINT64: U64_MAX,
                      _d.FieldDescriptor.CPPTYPE_INT32: (1 << 32) - 1, _d.FieldDescriptor.CPPTYPE_INT64: U64_MAX}


def _wrap(value: int, cpp_type: int) -> int:
    """An unsigned bit pattern as the field's type holds it (signed types: two's complement)."""
    if cpp_type == _d.FieldDescriptor.CPPTYPE_INT32 and value >= 1 << 31:
        return value - (1 << 32)
    if cpp_type == _d.FieldDescriptor.CPPTYPE_INT64 and value >= 1 << 63:
        return value - (1 << 64)
    return value


# ---- mutations --------------------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _tag(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def _field_bytes(src: Source, number: int, wire_type: int) -> bytes:
    if wire_type == 0:
        return _tag(number, 0) + _varint(src.choice((0, 1, U64_MAX, src.integer(0, U64_MAX))))
    if wire_type == 1:
        return _tag(number, 1) + src.raw(8).ljust(8, b"\0")
    if wire_type == 5:
        return _tag(number, 5) + src.raw(4).ljust(4, b"\0")
    if wire_type == 3:  # a group, properly closed
        return _tag(number, 3) + _field_bytes(src, 7, 0) + _tag(number, 4)
    payload = src.raw(48)
    return _tag(number, 2) + _varint(len(payload)) + payload


MUTATIONS = ("none", "none", "none", "unknown_fields", "wrong_wire_type", "flip", "truncate", "concat",
             "garbage", "empty", "deep_groups", "bad_varint", "huge_length")


def mutate(src: Source, raw: bytes, request_cls) -> tuple[str, bytes]:
    """(mutation name, bytes to send) made from a serialized request."""
    kind = src.choice(MUTATIONS)
    if kind == "none":
        return kind, raw
    if kind == "unknown_fields":
        extra = b"".join(_field_bytes(src, src.choice((15, 16, 99, 1000, 19_000, (1 << 29) - 1)),
                                      src.choice((0, 1, 2, 3, 5)))
                         for _ in range(src.integer(1, 4)))
        return kind, (extra + raw) if src.chance(30) else (raw + extra)
    if kind == "wrong_wire_type":  # a known field number, encoded as some other wire type
        fields = list(request_cls.DESCRIPTOR.fields) or [None]
        f = src.choice(fields)
        number = f.number if f is not None else 1
        natural = 2 if f is None or f.type in (_d.FieldDescriptor.TYPE_MESSAGE, _d.FieldDescriptor.TYPE_STRING,
                                               _d.FieldDescriptor.TYPE_BYTES) else 0
        wire = src.choice([w for w in (0, 1, 2, 5) if w != natural])
        return kind, raw + _field_bytes(src, number, wire)
    if kind == "flip":
        data = bytearray(raw or b"\0")
        for _ in range(src.integer(1, 8)):
            data[src.integer(0, len(data) - 1)] ^= 1 << src.integer(0, 7)
        return kind, bytes(data)
    if kind == "truncate":
        return kind, raw[:src.integer(0, max(0, len(raw) - 1))]
    if kind == "concat":  # a message twice is a merge: repeated fields doubled, past any limit
        return kind, raw * src.choice((2, 3))
    if kind == "garbage":
        return kind, src.raw(512) or b"\xff"
    if kind == "empty":
        return kind, b""
    if kind == "deep_groups":  # nesting past the parser's recursion limit
        depth = src.choice((50, 101, 5000))
        return kind, raw + _tag(20, 3) * depth + _tag(20, 4) * depth
    if kind == "bad_varint":  # eleven continuation bytes: no varint is that long
        return kind, raw + _tag(1, 0) + b"\xff" * 10 + b"\x01"
    if kind == "huge_length":  # a length-delimited field claiming far more than follows
        return kind, raw + _tag(1, 2) + _varint(src.choice((1 << 31, 1 << 62, 1 << 20))) + b"\x00" * 8
    raise AssertionError(kind)


# ---- one fuzz input ---------------------------------------------------------------------------------


@dataclass
class Input:
    method: Method
    principal: str
    node: int  # index into the cluster's endpoints
    mutation: str
    raw: bytes
    metadata: tuple[tuple[str, str], ...]

    def describe(self, limit: int = 160) -> str:
        shown = self.raw[:limit].hex() + ("..." if len(self.raw) > limit else "")
        return (f"{self.method.key} as {self.principal} to node {self.node}, mutation {self.mutation}, "
                f"{len(self.raw)} bytes {shown}, metadata {list(self.metadata)}")


def make_input(src: Source, method: Method, principals: Sequence[str], nodes: int) -> Input:
    principal = src.choice(principals)
    message = random_message(src, method.request_cls)
    mutation, raw = mutate(src, message.SerializeToString(), method.request_cls)
    metadata: list[tuple[str, str]] = []
    if method.signed and src.chance(30):  # a garbage signature is no signature
        metadata.append((AUTH_HEADER, src.choice(("", "00" * 32, "zz", src.raw(32).hex()))))
    if not principal.startswith(NODE_IDENTITY) and src.chance(15):  # only a node may speak for someone else
        metadata.append((PRINCIPAL_HEADER, src.choice(("mallory|admin,platform,node|",
                                                       "x|node|1,2,3", "|||", "admin|admin|"))))
    return Input(method, principal, src.integer(0, nodes - 1), mutation, raw, tuple(metadata))


# ---- calling and judging ----------------------------------------------------------------------------


@dataclass
class Answer:
    code: str
    details: str
    elapsed_s: float
    reason: str = ""  # the google.rpc ErrorInfo reason of a failure, if it has one
    responses: list[bytes] = field(default_factory=list)


def call(channel: grpc.Channel, item: Input, timeout_s: float = CALL_TIMEOUT_S) -> Answer:
    """Send the raw bytes (no serializer: bytes in, bytes out) and wait for the status."""
    began = time.monotonic()
    responses: list[bytes] = []
    try:
        if item.method.server_streaming:
            for chunk in channel.unary_stream(item.method.path)(item.raw, timeout=timeout_s,
                                                                metadata=item.metadata or None):
                responses.append(chunk)
        else:
            responses.append(channel.unary_unary(item.method.path)(item.raw, timeout=timeout_s,
                                                                   metadata=item.metadata or None))
        code, details = "OK", ""
    except grpc.RpcError as exc:
        return Answer(exc.code().name, exc.details() or "", time.monotonic() - began, reason=_reason(exc),
                      responses=responses)
    return Answer(code, details, time.monotonic() - began, responses=responses)


def _reason(exc: grpc.RpcError) -> str:
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    try:
        status = rpc_status.from_call(exc)
    except Exception:  # noqa: BLE001 - a status without parseable details has no reason
        return ""
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason
    return ""


def expected_refusal(item: Input) -> bool:
    """Whether the answer must be a refusal whatever the body says: the principal lacks the method's
    permission, or the method needs the cluster's signature (never given here)."""
    if item.method.signed:
        return True
    from tidebank.node.api.access import PERMISSION_OF, Scope, scope_of

    permission = PERMISSION_OF.get(item.method.key)
    return permission is None or scope_of(principal_of(item.principal), permission) is Scope.NONE


def judge(item: Input, answer: Answer, timeout_s: float = CALL_TIMEOUT_S) -> str | None:
    """What is wrong with this answer, or None."""
    local = item.method.key in NODE_LOCAL_METHODS and answer.code == "UNAVAILABLE" and answer.reason in LEADER_REASONS
    if answer.code not in CLEAR_CODES and not local:
        reason = f" reason {answer.reason}" if answer.reason else ""
        return f"{answer.code}{reason} ({answer.details[:300]!r}) after {answer.elapsed_s:.2f} s"
    if answer.code == "RESOURCE_EXHAUSTED" and any(m in answer.details for m in LOST_STATUS_MARKERS):
        return (f"RESOURCE_EXHAUSTED from the client's transport, the node's own status lost: its trailers were too "
                f"large ({answer.details[:200]!r})")
    if answer.elapsed_s > timeout_s + 1.0:
        return f"answered {answer.code} only after {answer.elapsed_s:.1f} s (deadline {timeout_s} s)"
    if expected_refusal(item) and answer.code not in REFUSED_CODES | {"RESOURCE_EXHAUSTED"}:  # a quota refuses too
        return f"{answer.code} where a refusal was due ({answer.details[:200]!r})"
    if answer.code == "OK":
        for raw in answer.responses:
            try:
                item.method.response_cls.FromString(raw)
            except Exception as exc:  # noqa: BLE001 - any parse failure is the finding
                return f"OK with a response that does not parse as {item.method.response_cls.__name__}: {exc}"
    return None


class Tally:
    """Inputs tried per method, codes seen, and violations (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tried: collections.Counter[str] = collections.Counter()
        self.codes: collections.Counter[str] = collections.Counter()
        self.codes_by_method: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        self.mutations: collections.Counter[str] = collections.Counter()
        self.violations: list[str] = []
        self.samples: dict[str, list[str]] = collections.defaultdict(list)  # code -> a few distinct answers

    def record(self, item: Input, answer: Answer, violation: str | None) -> None:
        with self.lock:
            self.tried[item.method.key] += 1
            self.codes[answer.code] += 1
            self.codes_by_method[item.method.key][answer.code] += 1
            self.mutations[item.mutation] += 1
            sample = f"{item.method.key}: {answer.reason + ' ' if answer.reason else ''}{answer.details[:100]}"
            samples = self.samples[answer.code]
            if answer.code != "OK" and len(samples) < 4 and sample not in samples:
                samples.append(sample)
            if violation is not None:
                self.violations.append(f"{violation}\n    input: {item.describe()}")

    @property
    def total(self) -> int:
        return sum(self.tried.values())

    def by_service(self) -> dict[str, int]:
        out: collections.Counter[str] = collections.Counter()
        for key, count in self.tried.items():
            out[key.split("/")[0]] += count
        return dict(out)


# ---- channels, principals and the seeded world ------------------------------------------------------

_CHANNEL_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 1000),
                    ("grpc.max_receive_message_length", 64 << 20)]


class Channels:
    """One channel per (principal, node); the node identity uses a node's own certificate."""

    def __init__(self, cluster) -> None:
        self.cluster = cluster
        self._channels: dict[tuple[str, int], grpc.Channel] = {}
        self._lock = threading.Lock()

    def get(self, principal: str, node: int) -> grpc.Channel:
        with self._lock:
            channel = self._channels.get((principal, node))
            if channel is None:
                address = self.cluster.endpoints[node]
                if principal.startswith(NODE_IDENTITY):
                    files = tls_files.node_files(tls_files.tls_dir(self.cluster.dir), principal[len(NODE_IDENTITY):])
                    channel = tls_files.open_channel(address, files, _CHANNEL_OPTIONS)
                else:
                    channel = tls_files.open_channel(address, self.cluster.client_tls(principal), _CHANNEL_OPTIONS)
                self._channels[(principal, node)] = channel
            return channel

    def close(self) -> None:
        with self._lock:
            channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            channel.close()


def add_principals(cluster) -> list[str]:
    """Issue the fuzz principals' certificates; the names to fuzz as (one node identity included)."""
    for name, (roles, participants) in PRINCIPALS.items():
        if name != "admin":
            cluster.add_principal(name, roles, participants)
    return [*PRINCIPALS, NODE_IDENTITY + cluster.topology.nodes[-1].name]


def _u128(value: int) -> types_pb2.U128:
    return types_pb2.U128(hi=value >> 64, lo=value & U64_MAX)


def seed_world(channel: grpc.Channel, timeout_s: float = 30.0) -> None:
    """Accounts, funded; trades (one shipped); clearing participants with items: what fuzzed ids point at.
    Idempotent: a second run answers `exists` everywhere."""
    from tidebank.v1 import clearing_pb2_grpc, escrow_pb2_grpc, ledger_pb2_grpc

    ledger = ledger_pb2_grpc.LedgerStub(channel)
    escrow = escrow_pb2_grpc.EscrowStub(channel)
    clearing = clearing_pb2_grpc.ClearingStub(channel)
    accounts = [types_pb2.Account(id=_u128(a), ledger=LEDGER, code=1) for a in ACCOUNT_IDS]
    accounts += [types_pb2.Account(id=_u128(a), ledger=CLEARING_LEDGER, code=1) for a in CLEARING_ACCOUNT_IDS]
    done = ledger.CreateAccounts(ledger_pb2.CreateAccountsRequest(accounts=accounts), timeout=timeout_s)
    _check("accounts", done.results, ok=(0, 20))
    funder, clearing_funder = ACCOUNT_IDS[0], CLEARING_ACCOUNT_IDS[0]
    transfers = [types_pb2.Transfer(id=_u128(t), debit_account_id=_u128(funder), credit_account_id=_u128(a),
                                    amount=1_000_000, ledger=LEDGER, code=1)
                 for t, a in zip(TRANSFER_IDS[:8], ACCOUNT_IDS[1:9], strict=True)]
    transfers += [types_pb2.Transfer(id=_u128(t), debit_account_id=_u128(clearing_funder),
                                     credit_account_id=_u128(a), amount=1_000_000, ledger=CLEARING_LEDGER, code=1)
                  for t, a in zip(TRANSFER_IDS[8:], CLEARING_ACCOUNT_IDS[1:], strict=True)]
    done = ledger.CreateTransfers(ledger_pb2.CreateTransfersRequest(transfers=transfers), timeout=timeout_s)
    _check("transfers", done.results, ok=(0, 46))
    trades = [escrow_pb2.CreateTrade(id=_u128(t), buyer_account_id=_u128(ACCOUNT_IDS[i + 1]),
                                     seller_account_id=_u128(ACCOUNT_IDS[i + 2]), amount=1_000, ledger=LEDGER,
                                     fee_bps=250, ship_by_timeout_s=3600, auto_confirm_timeout_s=3600)
              for i, t in enumerate(TRADE_IDS)]
    done = escrow.CreateTrades(escrow_pb2.CreateTradesRequest(trades=trades), timeout=timeout_s)
    _check("trades", [r.code for r in done.results], ok=(0, 1))
    escrow.ShipTrades(escrow_pb2.TradeIdsRequest(trades=[escrow_pb2.TradeId(trade_id=_u128(TRADE_IDS[0]))]),
                      timeout=timeout_s)
    participants = [clearing_pb2.Participant(id=_u128(p), ledger=CLEARING_LEDGER, code=1, name=f"bank-{i}",
                                             settlement_account_id=_u128(CLEARING_ACCOUNT_IDS[i + 1]),
                                             net_debit_cap=100_000)
                    for i, p in enumerate(PARTICIPANT_IDS)]
    done = clearing.RegisterParticipants(clearing_pb2.RegisterParticipantsRequest(participants=participants),
                                         timeout=timeout_s)
    _check("participants", done.results, ok=(0, 1))
    items = [clearing_pb2.ClearingItem(id=_u128(t), payer_id=_u128(PARTICIPANT_IDS[i % 3]),
                                       payee_id=_u128(PARTICIPANT_IDS[(i + 1) % 3]), amount=100 + i,
                                       ledger=CLEARING_LEDGER)
             for i, t in enumerate(ITEM_IDS)]
    done = clearing.SubmitItems(clearing_pb2.SubmitItemsRequest(items=items), timeout=timeout_s)
    _check("clearing items", done.results, ok=(0, 1))


def _check(what: str, codes, ok: tuple[int, ...]) -> None:
    bad = [(i, c) for i, c in enumerate(codes) if c not in ok]
    if bad:
        raise RuntimeError(f"seeding {what}: unexpected result codes {bad}")


# ---- the node stays well ----------------------------------------------------------------------------


def health_problems(cluster, channels: Channels) -> list[str]:
    """Nodes not running, or whose gRPC health check is not SERVING (within 5 s)."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    problems = []
    for name in cluster.topology.node_names:
        if not cluster.is_running(name):
            problems.append(f"node {name} is not running; its log ends:\n{cluster.log_tail(name)}")
    for index, address in enumerate(cluster.endpoints):
        try:
            status = health_pb2_grpc.HealthStub(channels.get("admin", index)).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=5.0).status
        except grpc.RpcError as exc:
            problems.append(f"health check of {address}: {exc.code().name} {exc.details()}")
            continue
        if status != health_pb2.HealthCheckResponse.SERVING:
            problems.append(f"health check of {address}: {health_pb2.HealthCheckResponse.ServingStatus.Name(status)}")
    return problems


def audit_verdict(cluster, wait_s: float = 30.0):
    """The audit of the whole cluster once settled (no cross-shard work or allowance move in flight)."""
    from tidebank.cluster.audit import audit, collect_totals
    from tidebank.cluster.launcher import ChannelPool

    expected = [s.shard_id for s in cluster.shard_map().shards]
    deadline = time.monotonic() + wait_s
    with ChannelPool(cluster.client_tls()) as pool:
        while True:
            report = audit(collect_totals(cluster.endpoints, 10.0, pool)[0], expected_shards=expected)
            if report.settled or time.monotonic() > deadline:
                return report
            time.sleep(0.2)


def log_findings(cluster, offsets: dict[str, int] | None = None) -> list[str]:
    """Exceptions in the node logs (after `offsets`, bytes per node): one entry per distinct exception (its
    last traceback frame and message), with how often it appeared and its first traceback."""
    seen: dict[tuple[str, str], list] = {}
    for name in cluster.topology.node_names:
        path = cluster.log_path(name)
        try:
            with path.open("rb") as f:
                f.seek((offsets or {}).get(name, 0))
                lines = f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            continue
        i = 0
        while i < len(lines):
            if not lines[i].startswith("Traceback (most recent"):
                i += 1
                continue
            end = i + 1
            while end < len(lines) and (lines[end].startswith(" ") or not lines[end].strip()):
                end += 1
            block = lines[max(0, i - 1):end + 1]
            frames = [line.strip() for line in lines[i:end] if line.strip().startswith("File ")]
            key = (frames[-1] if frames else "", lines[end] if end < len(lines) else "")
            entry = seen.setdefault(key, [0, name, block])
            entry[0] += 1
            i = end + 1
    return [f"{count} x on {name} (first):\n    " + "\n    ".join(block)
            for count, name, block in seen.values()]


def log_offsets(cluster) -> dict[str, int]:
    out = {}
    for name in cluster.topology.node_names:
        try:
            out[name] = cluster.log_path(name).stat().st_size
        except OSError:
            out[name] = 0
    return out


def method_seed(method: Method, salt: int = 0) -> int:
    return zlib.crc32(f"{method.key}:{salt}".encode())

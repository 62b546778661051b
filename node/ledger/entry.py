"""The bytes of one Raft entry: a proposer timestamp and a list of ledger operations.

Raft (pysyncobj) only ever sees these opaque bytes. Records use the fixed-size
packing of `records`, so an entry is compact to replicate and cheap to decode on
every replica.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from tidebank.node.ledger.clearing_records import (
    ClearingItem,
    pack_command,
    unpack_command,
)
from tidebank.node.ledger.clearing_records import pack_item as pack_clearing_item
from tidebank.node.ledger.clearing_records import unpack_item as unpack_clearing_item
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
    PackedRecords,
)
from tidebank.node.ledger.records import (
    Account,
    Transfer,
    pack_account,
    pack_owned_account,
    pack_transfer,
    unpack_account,
    unpack_owned_account,
    unpack_transfer,
)
from tidebank.node.ledger.slot_moves import pack_command as pack_slot_move
from tidebank.node.ledger.slot_moves import unpack_command as unpack_slot_move
from tidebank.node.ledger.txn_records import (
    pack_decide,
    pack_finish,
    pack_prepare,
    unpack_decide,
    unpack_finish,
    unpack_prepare,
)

FORMAT_VERSION = 1
ENTRY_OPERATIONS_MAX = 4096
_HEADER = struct.Struct("<BQH")  # version, proposer timestamp (ns), operation count
_OP_HEADER = struct.Struct("<BI")  # kind, item count
_ITEM_LENGTH = struct.Struct("<I")  # before each item of a variable-size kind (2PC steps)

_PACKERS = {OP_CREATE_ACCOUNTS: pack_account, OP_CREATE_TRANSFERS: pack_transfer,
            OP_CLEARING_ITEMS: pack_clearing_item}
_UNPACKERS = {OP_CREATE_ACCOUNTS: unpack_account, OP_CREATE_TRANSFERS: unpack_transfer,
              OP_CLEARING_ITEMS: unpack_clearing_item}
_VARIABLE_PACKERS = {OP_PREPARE: pack_prepare, OP_FINISH: pack_finish, OP_DECIDE: pack_decide,
                     OP_COMMIT_LOCAL: pack_prepare, OP_CLEARING: pack_command,
                     OP_CREATE_OWNED_ACCOUNTS: pack_owned_account, OP_SLOT_MOVES: pack_slot_move}
_VARIABLE_UNPACKERS = {OP_PREPARE: unpack_prepare, OP_FINISH: unpack_finish, OP_DECIDE: unpack_decide,
                       OP_COMMIT_LOCAL: unpack_prepare, OP_CLEARING: unpack_command,
                       OP_CREATE_OWNED_ACCOUNTS: unpack_owned_account, OP_SLOT_MOVES: unpack_slot_move}
_SAMPLES = {OP_CREATE_ACCOUNTS: Account(id=1), OP_CREATE_TRANSFERS: Transfer(id=1),
            OP_CLEARING_ITEMS: ClearingItem(id=1)}


def pack_item(kind: int, item) -> bytes:
    """One item of an operation in its wire form (also used between nodes by Internal.Submit)."""
    if isinstance(item, bytes) and kind in _RECORD_SIZE:
        if len(item) != _RECORD_SIZE[kind]:
            raise CommandFormatError(f"packed item of kind {kind} has {len(item)} bytes")
        return item
    pack = _PACKERS.get(kind) or _VARIABLE_PACKERS.get(kind)
    if pack is None:
        raise CommandFormatError(f"unknown operation kind {kind}")
    return pack(item)


def unpack_item(kind: int, raw: bytes):
    """Inverse of pack_item; CommandFormatError for anything that does not decode."""
    if kind in _UNPACKERS:
        if len(raw) != _RECORD_SIZE[kind]:
            raise CommandFormatError(f"item of kind {kind} has {len(raw)} bytes, expected {_RECORD_SIZE[kind]}")
        return _UNPACKERS[kind](raw)
    unpack = _VARIABLE_UNPACKERS.get(kind)
    if unpack is None:
        raise CommandFormatError(f"unknown operation kind {kind}")
    try:
        return unpack(raw)
    except CommandFormatError:
        raise
    except Exception as exc:
        raise CommandFormatError(f"item of kind {kind} does not decode: {exc}") from exc


class CommandFormatError(ValueError):
    """An entry that does not decode: a bug or a version mismatch, never user input."""


def _record_size(kind: int) -> int:
    return len(_PACKERS[kind](_SAMPLES[kind]))


_RECORD_SIZE = {kind: _record_size(kind) for kind in _PACKERS}


def encode_entry(timestamp_ns: int, operations: Sequence[Operation]) -> bytes:
    """Pack operations for one Raft entry; an empty list is a barrier or a pulse."""
    assert len(operations) <= ENTRY_OPERATIONS_MAX
    parts = [_HEADER.pack(FORMAT_VERSION, timestamp_ns, len(operations))]
    for op in operations:
        parts.append(_OP_HEADER.pack(op.kind, len(op.items)))
        if op.kind in _VARIABLE_PACKERS:
            pack = _VARIABLE_PACKERS[op.kind]
            for item in op.items:
                packed = pack(item)
                parts.append(_ITEM_LENGTH.pack(len(packed)))
                parts.append(packed)
        elif isinstance(op.items, PackedRecords):
            parts.extend(op.items)
        else:
            pack = _PACKERS[op.kind]
            parts.extend(pack(item) for item in op.items)
    return b"".join(parts)


def decode_entry(payload: bytes) -> tuple[int, list[Operation]]:
    """Inverse of encode_entry: (proposer timestamp, operations)."""
    if len(payload) < _HEADER.size:
        raise CommandFormatError("entry shorter than its header")
    version, timestamp_ns, op_count = _HEADER.unpack_from(payload, 0)
    if version != FORMAT_VERSION:
        raise CommandFormatError(f"entry format {version}, expected {FORMAT_VERSION}")
    offset = _HEADER.size
    operations = []
    for _ in range(op_count):
        if offset + _OP_HEADER.size > len(payload):
            raise CommandFormatError("entry truncated")
        kind, count = _OP_HEADER.unpack_from(payload, offset)
        offset += _OP_HEADER.size
        if kind in _VARIABLE_UNPACKERS:
            unpack_variable = _VARIABLE_UNPACKERS[kind]
            items = []
            for _ in range(count):
                if offset + _ITEM_LENGTH.size > len(payload):
                    raise CommandFormatError("entry truncated")
                (length,) = _ITEM_LENGTH.unpack_from(payload, offset)
                offset += _ITEM_LENGTH.size
                if offset + length > len(payload):
                    raise CommandFormatError("entry truncated")
                try:
                    items.append(unpack_variable(payload[offset:offset + length]))
                except (ValueError, struct.error) as exc:
                    raise CommandFormatError(f"item of kind {kind} does not decode: {exc}") from exc
                offset += length
            operations.append(Operation(kind, items))
            continue
        if kind not in _UNPACKERS:
            raise CommandFormatError(f"unknown operation kind {kind}")
        size = _RECORD_SIZE[kind]
        end = offset + size * count
        if end > len(payload):
            raise CommandFormatError("entry truncated")
        unpack = _UNPACKERS[kind]
        items = [unpack(payload[pos:pos + size]) for pos in range(offset, end, size)]
        operations.append(Operation(kind, items))
        offset = end
    if offset != len(payload):
        raise CommandFormatError("trailing bytes after the last operation")
    return timestamp_ns, operations

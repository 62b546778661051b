"""The bytes of one Raft entry: a proposer timestamp and a list of ledger operations.

Raft (pysyncobj) only ever sees these opaque bytes. Records use the fixed-size
packing of `records`, so an entry is compact to replicate and cheap to decode on
every replica.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from tidebank.node.records import (
    Account,
    Transfer,
    pack_account,
    pack_transfer,
    unpack_account,
    unpack_transfer,
)
from tidebank.node.state_machine import OP_CREATE_ACCOUNTS, OP_CREATE_TRANSFERS, Operation

FORMAT_VERSION = 1
ENTRY_OPERATIONS_MAX = 4096
_HEADER = struct.Struct("<BQH")  # version, proposer timestamp (ns), operation count
_OP_HEADER = struct.Struct("<BI")  # kind, item count

_PACKERS = {OP_CREATE_ACCOUNTS: pack_account, OP_CREATE_TRANSFERS: pack_transfer}
_UNPACKERS = {OP_CREATE_ACCOUNTS: unpack_account, OP_CREATE_TRANSFERS: unpack_transfer}


class CommandFormatError(ValueError):
    """An entry that does not decode: a bug or a version mismatch, never user input."""


def _record_size(kind: int) -> int:
    sample: Account | Transfer = Account(id=1) if kind == OP_CREATE_ACCOUNTS else Transfer(id=1)
    return len(_PACKERS[kind](sample))


_RECORD_SIZE = {kind: _record_size(kind) for kind in _PACKERS}


def encode_entry(timestamp_ns: int, operations: Sequence[Operation]) -> bytes:
    """Pack operations for one Raft entry; an empty list is a barrier or a pulse."""
    assert len(operations) <= ENTRY_OPERATIONS_MAX
    parts = [_HEADER.pack(FORMAT_VERSION, timestamp_ns, len(operations))]
    for op in operations:
        pack = _PACKERS[op.kind]
        parts.append(_OP_HEADER.pack(op.kind, len(op.items)))
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
        kind, count = _OP_HEADER.unpack_from(payload, offset)
        offset += _OP_HEADER.size
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

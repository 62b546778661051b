"""Ids and hash slots, shared by nodes and clients so that both place keys alike."""

from __future__ import annotations

import zlib

U128_MAX = (1 << 128) - 1
U64_MAX = (1 << 64) - 1
DEFAULT_SLOT_COUNT = 4096


def id_bytes(value: int) -> bytes:
    """The 16-byte big-endian form of a 128-bit id (also the LMDB key order)."""
    return value.to_bytes(16, "big")


def slot_of(key_id: int, slot_count: int = DEFAULT_SLOT_COUNT) -> int:
    """The hash slot of an account or trade id: crc32 of its 16 big-endian bytes."""
    return zlib.crc32(key_id.to_bytes(16, "big")) % slot_count


def u128_to_pair(value: int) -> tuple[int, int]:
    """(hi, lo) 64-bit halves, as in the U128 protobuf message."""
    return value >> 64, value & U64_MAX


def pair_to_u128(hi: int, lo: int) -> int:
    return (hi << 64) | lo

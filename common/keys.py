"""Ids and hash slots, shared by nodes and clients so that both place keys alike."""

from __future__ import annotations

import functools
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


# --- escrow and platform-fee accounts --------------------------------------------------------------------
#
# Trades hash to slots like accounts do. Each (ledger, slot) has one escrow account
# and one platform-fee account whose ids hash to that very slot, so a trade, its
# escrow and its fee account always live on one shard, whichever shard owns the
# slot: trades spread over every shard and no account is written by all of them.
# Layout (big-endian): 32-bit prefix "TBSY", kind (8), ledger (32), slot (16),
# 8 zero bits, then a 32-bit nonce chosen so that slot_of(id) == slot.

SYSTEM_ACCOUNT_PREFIX = 0x54425359  # b"TBSY"
SYSTEM_ESCROW = 1
SYSTEM_FEE = 2
SLOT_COUNT_MAX = 1 << 16


def is_system_account(account_id: int) -> bool:
    """Whether an id is in the range reserved for escrow and platform-fee accounts."""
    return account_id >> 96 == SYSTEM_ACCOUNT_PREFIX


def escrow_account_id(ledger: int, slot: int, slot_count: int = DEFAULT_SLOT_COUNT) -> int:
    """The account holding the escrowed money of the trades of one ledger and hash slot."""
    return _system_account_id(SYSTEM_ESCROW, ledger, slot, slot_count)


def fee_account_id(ledger: int, slot: int, slot_count: int = DEFAULT_SLOT_COUNT) -> int:
    """The account collecting the platform fees of the trades of one ledger and hash slot."""
    return _system_account_id(SYSTEM_FEE, ledger, slot, slot_count)


@functools.lru_cache(maxsize=65536)
def _system_account_id(kind: int, ledger: int, slot: int, slot_count: int) -> int:
    if not 0 < ledger <= 0xFFFFFFFF:
        raise ValueError(f"ledger {ledger} out of range")
    if not 1 <= slot_count <= SLOT_COUNT_MAX or not 0 <= slot < slot_count:
        raise ValueError(f"slot {slot} out of range for slot_count {slot_count}")
    base = SYSTEM_ACCOUNT_PREFIX << 96 | kind << 88 | ledger << 56 | slot << 40
    if slot_count & (slot_count - 1) == 0:
        nonce = _solve_nonce(zlib.crc32(base.to_bytes(16, "big")), slot, slot_count)
    else:  # no linear shortcut for a modulus that is not a power of two: search
        nonce = next(n for n in range(1 << 32) if slot_of(base | n, slot_count) == slot)
    account_id = base | nonce
    assert slot_of(account_id, slot_count) == slot
    return account_id


def _nonce_basis() -> list[tuple[int, int]]:
    """CRC-32 is affine: crc(base | n) = crc(base) ^ L(n) for a 32-bit nonce n in the last four bytes,
    with L linear over GF(2). Returns (L(n), n) pairs for n = each single bit, for solving L(n) = target."""
    zero = zlib.crc32(bytes(16))
    return [(zlib.crc32((1 << bit).to_bytes(16, "big")) ^ zero, 1 << bit) for bit in range(32)]


_NONCE_BASIS = _nonce_basis()


def _solve_nonce(base_crc: int, slot: int, slot_count: int) -> int:
    """A nonce n with (base_crc ^ L(n)) % slot_count == slot, slot_count a power of two (Gaussian elimination)."""
    want = (base_crc ^ slot) & (slot_count - 1)
    solution = 0
    for pivot, (value, nonce) in _reduced_basis(slot_count):
        if want >> pivot & 1:
            want ^= value
            solution ^= nonce
    if want:
        raise AssertionError("CRC-32 nonce system has no solution")  # L is a bijection: cannot happen
    return solution


@functools.lru_cache(maxsize=16)
def _reduced_basis(slot_count: int) -> tuple[tuple[int, tuple[int, int]], ...]:
    """The nonce basis reduced for the low bits a power-of-two slot count looks at, highest pivot first."""
    mask = slot_count - 1
    rows: dict[int, tuple[int, int]] = {}  # pivot bit -> (L(n) & mask, n), reduced
    for value, nonce in _NONCE_BASIS:
        value &= mask
        for pivot in sorted(rows, reverse=True):
            if value >> pivot & 1:
                value ^= rows[pivot][0]
                nonce ^= rows[pivot][1]
        if value:
            rows[value.bit_length() - 1] = (value, nonce)
    return tuple(sorted(rows.items(), reverse=True))


def id_in_slot(value: int, slot: int, slot_count: int = DEFAULT_SLOT_COUNT) -> int:
    """`value` with its low 32 bits replaced so that the id hashes to `slot`.

    How clients make ids that live where they want: a transfer id in its debit account's slot makes the
    transfer's id home the shard of its accounts, so a same-shard transfer needs no second shard."""
    if not 1 <= slot_count <= SLOT_COUNT_MAX or not 0 <= slot < slot_count:
        raise ValueError(f"slot {slot} out of range for slot_count {slot_count}")
    base = value & ~0xFFFFFFFF & U128_MAX
    if slot_count & (slot_count - 1) == 0:
        out = base | _solve_nonce(zlib.crc32(base.to_bytes(16, "big")), slot, slot_count)
    else:  # no linear shortcut for a modulus that is not a power of two: search
        out = next(base | n for n in range(1 << 32) if slot_of(base | n, slot_count) == slot)
    if out in (0, U128_MAX):
        raise ValueError("no valid id in that slot with these high bits")
    return out


def id_near(value: int, home_id: int, slot_count: int = DEFAULT_SLOT_COUNT) -> int:
    """`value` moved (low 32 bits) into the slot of `home_id`: an id that lives wherever `home_id` lives."""
    return id_in_slot(value, slot_of(home_id, slot_count), slot_count)


# --- the clearing hub account of a ledger ------------------------------------------------------------------
#
# Settlement moves money between participants' settlement accounts through one hub account per ledger (pay-ins
# first, then pay-outs, in one atomic chain): it is an ordinary account (it cannot go below zero) with a fixed id.

CLEARING_HUB_PREFIX = 0x434C5248  # b"CLRH"
CLEARING_HUB_CODE = 9200


def clearing_hub_account_id(ledger: int) -> int:
    """The id of the ledger's clearing hub account."""
    return CLEARING_HUB_PREFIX << 96 | ledger

"""Domain records of the ledger and their fixed-size binary form.

The same bytes are LMDB values and Raft command payloads, so the layout is fixed
(little-endian, no alignment surprises) and packing is a single precompiled
``struct`` call: it runs for every account and transfer on every replica.
Out-of-range field values (negative, or wider than the field) make packing raise
``struct.error`` rather than silently truncating.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from tidebank.common.keys import U64_MAX, U128_MAX
from tidebank.common.limits import BATCH_ITEMS_MAX, PAGE_SIZE_MAX
from tidebank.common.records import ACCOUNT_SIZE, ACCOUNT_STRUCT, TRANSFER_SIZE, TRANSFER_STRUCT

__all__ = [
    "ACCOUNT_SIZE",
    "ACCOUNT_STRUCT",
    "BATCH_ITEMS_MAX",
    "PAGE_SIZE_MAX",
    "TRANSFER_SIZE",
    "TRANSFER_STRUCT",
    "U32_MAX",
    "U64_MAX",
    "U128_MAX",
    "Account",
    "AccountFlags",
    "Transfer",
    "TransferFlags",
    "pack_account",
    "pack_transfer",
    "unpack_account",
    "unpack_transfer",
]

U32_MAX = (1 << 32) - 1

_M64 = U64_MAX


class AccountFlags(enum.IntFlag):
    LINKED = 1
    DEBITS_MUST_NOT_EXCEED_CREDITS = 2
    CREDITS_MUST_NOT_EXCEED_DEBITS = 4
    HISTORY = 8
    CLOSED = 16


class TransferFlags(enum.IntFlag):
    LINKED = 1
    PENDING = 2
    POST_PENDING_TRANSFER = 4
    VOID_PENDING_TRANSFER = 8
    BALANCING_DEBIT = 16
    BALANCING_CREDIT = 32


@dataclass(slots=True)
class Account:
    """An account: balances are u64 minor units; ids and user_data_128 are u128."""

    id: int
    debits_pending: int = 0
    debits_posted: int = 0
    credits_pending: int = 0
    credits_posted: int = 0
    user_data_128: int = 0
    user_data_64: int = 0
    user_data_32: int = 0
    ledger: int = 0
    code: int = 0
    flags: int = 0
    timestamp: int = 0


@dataclass(slots=True)
class Transfer:
    """A transfer: amount and timestamp are u64, timeout is u32 seconds."""

    id: int
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
    flags: int = 0
    timestamp: int = 0


# The layouts are shared with the API's packed fields and the client (tidebank.common.records).

_pack_a = ACCOUNT_STRUCT.pack
_unpack_a = ACCOUNT_STRUCT.unpack
_pack_t = TRANSFER_STRUCT.pack
_unpack_t = TRANSFER_STRUCT.unpack


def pack_account(a: Account) -> bytes:
    """The 96-byte form of an account; raises struct.error on out-of-range fields."""
    i = a.id
    u = a.user_data_128
    return _pack_a(
        i & _M64, i >> 64,
        a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted,
        u & _M64, u >> 64,
        a.user_data_64, a.user_data_32, a.ledger, a.code, a.flags, a.timestamp,
    )  # fmt: skip


def unpack_account(b: bytes) -> Account:
    """Inverse of pack_account."""
    v = _unpack_a(b)
    return Account(v[0] | v[1] << 64, v[2], v[3], v[4], v[5], v[6] | v[7] << 64, v[8], v[9], v[10], v[11], v[12], v[13])


OWNER_BYTES_MAX = 64  # a principal's name (tidebank.common.tls.PRINCIPAL_NAME_MAX), utf-8


@dataclass(slots=True)
class OwnedAccount:
    """An account to create for its owner: the principal (an account holder) that alone may debit and read it.
    The owner is kept beside the account, never changes, and is replicated with it."""

    owner: str
    account: Account

    @property
    def flags(self) -> int:  # linked chains look at the account's flags
        return self.account.flags


def pack_owned_account(item: OwnedAccount) -> bytes:
    owner = item.owner.encode("utf-8")
    if not 0 < len(owner) <= OWNER_BYTES_MAX:
        raise ValueError(f"owner of {len(owner)} bytes: 1..{OWNER_BYTES_MAX}")
    return bytes((len(owner),)) + owner + pack_account(item.account)


def unpack_owned_account(raw: bytes) -> OwnedAccount:
    n = raw[0]
    if not 0 < n <= OWNER_BYTES_MAX or len(raw) != 1 + n + ACCOUNT_SIZE:
        raise ValueError(f"an owned account of {len(raw)} bytes with a {n}-byte owner")
    return OwnedAccount(raw[1:1 + n].decode("utf-8"), unpack_account(raw[1 + n:]))


def pack_transfer(t: Transfer) -> bytes:
    """The 128-byte form of a transfer; raises struct.error on out-of-range fields."""
    i = t.id
    d = t.debit_account_id
    c = t.credit_account_id
    p = t.pending_id
    u = t.user_data_128
    return _pack_t(
        i & _M64, i >> 64, d & _M64, d >> 64, c & _M64, c >> 64,
        t.amount,
        p & _M64, p >> 64, u & _M64, u >> 64,
        t.user_data_64, t.user_data_32, t.timeout, t.ledger, t.code, t.flags, t.timestamp,
    )  # fmt: skip


def unpack_transfer(b: bytes) -> Transfer:
    """Inverse of pack_transfer."""
    v = _unpack_t(b)
    return Transfer(
        v[0] | v[1] << 64, v[2] | v[3] << 64, v[4] | v[5] << 64, v[6], v[7] | v[8] << 64,
        v[9] | v[10] << 64, v[11], v[12], v[13], v[14], v[15], v[16], v[17],
    )  # fmt: skip

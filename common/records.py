"""The fixed binary layout of accounts and transfers, shared by the API, Raft entries and LMDB.

One layout everywhere: a client packs a batch of transfers into `transfers_packed`
(N x 128 bytes), the node routes them by reading three ids from each record and
puts the very same bytes into the Raft entry, and every replica stores them in
LMDB. Nothing on the hot path converts between representations.

Little-endian; a u128 is its low then high u64 (so a record's 16 id bytes are the id
in little-endian order):

transfer (128 bytes)::

    0   id                u128      56  pending_id     u128     100 timeout  u32
    16  debit_account_id  u128      72  user_data_128  u128     104 ledger   u32
    32  credit_account_id u128      88  user_data_64   u64      108 code     u32
    48  amount            u64       96  user_data_32   u32      112 flags    u32
                                                                116 (zero)   4 bytes
                                                                120 timestamp u64

account (96 bytes)::

    0   id               u128       48  user_data_128  u128     76  ledger    u32
    16  debits_pending   u64        64  user_data_64   u64      80  code      u32
    24  debits_posted    u64        72  user_data_32   u32      84  flags     u32
    32  credits_pending  u64                                    88  timestamp u64
    40  credits_posted   u64
"""

from __future__ import annotations

import struct
import zlib

M64 = (1 << 64) - 1

# id, debits_pending, debits_posted, credits_pending, credits_posted, user_data_128,
# user_data_64, user_data_32, ledger, code, flags, timestamp  -> 96 bytes
ACCOUNT_STRUCT = struct.Struct("<QQQQQQQQQIIIIQ")
# id, debit_account_id, credit_account_id, amount, pending_id, user_data_128, user_data_64,
# user_data_32, timeout, ledger, code, flags, (pad), timestamp  -> 128 bytes
TRANSFER_STRUCT = struct.Struct("<QQQQQQQQQQQQIIIII4xQ")
ACCOUNT_SIZE = ACCOUNT_STRUCT.size
TRANSFER_SIZE = TRANSFER_STRUCT.size

TRANSFER_ID = slice(0, 16)
TRANSFER_DEBIT_ACCOUNT_ID = slice(16, 32)
TRANSFER_CREDIT_ACCOUNT_ID = slice(32, 48)
TRANSFER_FLAGS_OFFSET = 112
ACCOUNT_ID = slice(0, 16)
ACCOUNT_FLAGS_OFFSET = 84
_U32 = struct.Struct("<I")

assert ACCOUNT_SIZE == 96 and TRANSFER_SIZE == 128


def u128_of(raw: bytes) -> int:
    """A u128 field of a record (16 little-endian bytes)."""
    return int.from_bytes(raw, "little")


def slot_of_field(raw: bytes, slot_count: int) -> int:
    """`tidebank.common.keys.slot_of` of a u128 field taken straight from a record (no int in between)."""
    return zlib.crc32(raw[::-1]) % slot_count


def flags_of(record: bytes, offset: int) -> int:
    return _U32.unpack_from(record, offset)[0]

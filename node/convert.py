"""Translation between protobuf messages and the state machine's records.

Kept apart so that the state machine never sees protobuf and the servicers never
touch record internals. These run once per item per request: keep them flat.
"""

from __future__ import annotations

from tidebank.node.records import Account, Transfer
from tidebank.v1 import types_pb2

_U64 = (1 << 64) - 1


def u128_from_pb(value: types_pb2.U128) -> int:
    return (value.hi << 64) | value.lo


def u128_to_pb(target: types_pb2.U128, value: int) -> None:
    target.hi = value >> 64
    target.lo = value & _U64


def account_from_pb(m: types_pb2.Account) -> Account:
    return Account(
        id=(m.id.hi << 64) | m.id.lo,
        debits_pending=m.debits_pending,
        debits_posted=m.debits_posted,
        credits_pending=m.credits_pending,
        credits_posted=m.credits_posted,
        user_data_128=(m.user_data_128.hi << 64) | m.user_data_128.lo,
        user_data_64=m.user_data_64,
        user_data_32=m.user_data_32,
        ledger=m.ledger,
        code=m.code,
        flags=m.flags,
        timestamp=m.timestamp,
    )


def transfer_from_pb(m: types_pb2.Transfer) -> Transfer:
    return Transfer(
        id=(m.id.hi << 64) | m.id.lo,
        debit_account_id=(m.debit_account_id.hi << 64) | m.debit_account_id.lo,
        credit_account_id=(m.credit_account_id.hi << 64) | m.credit_account_id.lo,
        amount=m.amount,
        pending_id=(m.pending_id.hi << 64) | m.pending_id.lo,
        user_data_128=(m.user_data_128.hi << 64) | m.user_data_128.lo,
        user_data_64=m.user_data_64,
        user_data_32=m.user_data_32,
        timeout=m.timeout,
        ledger=m.ledger,
        code=m.code,
        flags=m.flags,
        timestamp=m.timestamp,
    )


def account_to_pb(a: Account, m: types_pb2.Account) -> None:
    """Fill `m` (typically `response.accounts.add()`) from a record."""
    u128_to_pb(m.id, a.id)
    m.debits_pending = a.debits_pending
    m.debits_posted = a.debits_posted
    m.credits_pending = a.credits_pending
    m.credits_posted = a.credits_posted
    if a.user_data_128:
        u128_to_pb(m.user_data_128, a.user_data_128)
    m.user_data_64 = a.user_data_64
    m.user_data_32 = a.user_data_32
    m.ledger = a.ledger
    m.code = a.code
    m.flags = a.flags
    m.timestamp = a.timestamp


def transfer_to_pb(t: Transfer, m: types_pb2.Transfer) -> None:
    u128_to_pb(m.id, t.id)
    u128_to_pb(m.debit_account_id, t.debit_account_id)
    u128_to_pb(m.credit_account_id, t.credit_account_id)
    m.amount = t.amount
    if t.pending_id:
        u128_to_pb(m.pending_id, t.pending_id)
    if t.user_data_128:
        u128_to_pb(m.user_data_128, t.user_data_128)
    m.user_data_64 = t.user_data_64
    m.user_data_32 = t.user_data_32
    m.timeout = t.timeout
    m.ledger = t.ledger
    m.code = t.code
    m.flags = t.flags
    m.timestamp = t.timestamp

"""Raft entry bytes round-trip exactly and reject what they cannot decode."""

import pytest

from tidebank.node.ledger.entry import CommandFormatError, decode_entry, encode_entry
from tidebank.node.ledger.operations import OP_CREATE_ACCOUNTS, OP_CREATE_TRANSFERS, Operation
from tidebank.node.ledger.records import Account, Transfer

U128_MAX = (1 << 128) - 1


def test_entry_round_trips_accounts_and_transfers_in_order():
    ops = [Operation(OP_CREATE_ACCOUNTS, [Account(id=U128_MAX - 1, ledger=7, code=3, user_data_128=2**100)]),
           Operation(OP_CREATE_TRANSFERS, [Transfer(id=9, debit_account_id=1, credit_account_id=2,
                                                    amount=2**64 - 1, timeout=4_000_000_000, ledger=7, code=1)]),
           Operation(OP_CREATE_TRANSFERS, [])]
    timestamp, decoded = decode_entry(encode_entry(123_456_789, ops))
    assert timestamp == 123_456_789
    assert [(op.kind, list(op.items)) for op in decoded] == [(op.kind, list(op.items)) for op in ops]


def test_empty_entry_is_a_barrier():
    assert decode_entry(encode_entry(5, [])) == (5, [])


def test_truncated_entry_is_refused():
    payload = encode_entry(1, [Operation(OP_CREATE_TRANSFERS, [Transfer(id=1)])])
    with pytest.raises(CommandFormatError):
        decode_entry(payload[:-1])


def test_trailing_bytes_are_refused():
    with pytest.raises(CommandFormatError):
        decode_entry(encode_entry(1, []) + b"x")


def test_unknown_format_version_is_refused():
    payload = bytearray(encode_entry(1, []))
    payload[0] = 99
    with pytest.raises(CommandFormatError, match="format"):
        decode_entry(bytes(payload))


def test_entry_round_trips_two_phase_commit_steps():
    from tidebank.node.ledger.state_machine import OP_DECIDE, OP_FINISH, OP_PREPARE
    from tidebank.node.ledger.txn_records import SIDE_DEBIT, Decide, Finish, Leg, Prepare

    prepare = Prepare(txid=U128_MAX - 2, coordinator_shard=3, group_size=2,
                      legs=[Leg(1, SIDE_DEBIT, Transfer(id=7, debit_account_id=1, credit_account_id=2, amount=5))])
    ops = [Operation(OP_PREPARE, [prepare, prepare]),
           Operation(OP_DECIDE, [Decide(9, True, 0, 0, [0, 3], [7, 8])]),
           Operation(OP_FINISH, [Finish(9, False, 123)])]
    _, decoded = decode_entry(encode_entry(1, ops))
    assert [(op.kind, list(op.items)) for op in decoded] == [(op.kind, list(op.items)) for op in ops]

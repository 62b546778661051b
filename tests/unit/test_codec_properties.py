"""Property tests for the byte formats every replica decodes: records, 2PC items, trade steps, Raft entries.

Whatever fits the fields round-trips exactly; whatever is cut, padded or garbled is refused (never decoded
into something else), because a replica that decoded an entry differently from another would diverge.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidebank.node.ledger.entry import CommandFormatError, decode_entry, encode_entry, pack_item, unpack_item
from tidebank.node.ledger.operations import (
    OP_COMMIT_LOCAL,
    OP_CREATE_ACCOUNTS,
    OP_CREATE_TRANSFERS,
    OP_DECIDE,
    OP_FINISH,
    OP_PREPARE,
    Operation,
)
from tidebank.node.ledger.records import Account, Transfer, pack_account, pack_transfer, unpack_account, unpack_transfer
from tidebank.node.ledger.trades import TradeCommand, TradeStep, pack_trade_step, unpack_trade_step
from tidebank.node.ledger.txn_records import SIDES_ALL, Decide, Finish, Leg, Prepare

u8 = st.integers(0, 2**8 - 1)
u16 = st.integers(0, 2**16 - 1)
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
u128 = st.integers(0, 2**128 - 1)

accounts = st.builds(Account, id=u128, debits_pending=u64, debits_posted=u64, credits_pending=u64,
                     credits_posted=u64, user_data_128=u128, user_data_64=u64, user_data_32=u32, ledger=u32,
                     code=u16, flags=u16, timestamp=u64)
transfers = st.builds(Transfer, id=u128, debit_account_id=u128, credit_account_id=u128, amount=u64, pending_id=u128,
                      user_data_128=u128, user_data_64=u64, user_data_32=u32, timeout=u32, ledger=u32, code=u16,
                      flags=u16, timestamp=u64)
commands = st.builds(TradeCommand, kind=st.integers(1, 10), trade_id=u128, arg_id=u128, amount=u64, seconds=u32,
                     buyer_account_id=u128, seller_account_id=u128, ledger=u32, fee_bps=u16, ship_by_timeout_s=u32,
                     auto_confirm_timeout_s=u32, user_data_128=u128, user_data_64=u64, user_data_32=u32)
trade_steps = st.builds(TradeStep, expected_version=u32, command=commands)
legs = st.builds(Leg, index=st.integers(0, 8188), sides=st.integers(0, SIDES_ALL), transfer=transfers)
prepares = st.builds(Prepare, txid=u128, coordinator_shard=u32, group_size=u32, legs=st.lists(legs, max_size=8),
                     trade=st.none() | trade_steps)
finishes = st.builds(Finish, txid=u128, commit=st.booleans(), commit_timestamp=u64, failed_index=u32,
                     failed_code=u32)
decides = st.builds(Decide, txid=u128, commit=st.booleans(), failed_index=u32, failed_code=u32,
                    participants=st.lists(u32, max_size=8), transfer_ids=st.lists(u128, max_size=8))
ITEMS = {OP_CREATE_ACCOUNTS: accounts, OP_CREATE_TRANSFERS: transfers, OP_PREPARE: prepares,
         OP_COMMIT_LOCAL: prepares, OP_FINISH: finishes, OP_DECIDE: decides}
operations = st.sampled_from(sorted(ITEMS)).flatmap(
    lambda kind: st.lists(ITEMS[kind], max_size=5).map(lambda items: Operation(kind, items)))


@given(accounts)
def test_accounts_round_trip(a):
    assert unpack_account(pack_account(a)) == a


@given(transfers)
def test_transfers_round_trip(t):
    assert unpack_transfer(pack_transfer(t)) == t


@given(trade_steps)
def test_trade_steps_round_trip(step):
    assert unpack_trade_step(pack_trade_step(step)) == step


@given(st.sampled_from(sorted(ITEMS)).flatmap(lambda kind: st.tuples(st.just(kind), ITEMS[kind])))
def test_every_item_kind_round_trips_between_nodes(kind_and_item):
    kind, item = kind_and_item
    assert unpack_item(kind, pack_item(kind, item)) == item


@settings(max_examples=60, deadline=None)
@given(u64, st.lists(operations, max_size=4))
def test_entries_round_trip_in_order(timestamp, ops):
    decoded_ts, decoded = decode_entry(encode_entry(timestamp, ops))
    assert decoded_ts == timestamp
    assert [(op.kind, list(op.items)) for op in decoded] == [(op.kind, list(op.items)) for op in ops]


@settings(max_examples=60, deadline=None)
@given(u64, st.lists(operations, min_size=1, max_size=3), st.data())
def test_a_cut_or_padded_entry_is_refused(timestamp, ops, data):
    payload = encode_entry(timestamp, ops)
    cut = data.draw(st.integers(0, len(payload) - 1))
    with pytest.raises(CommandFormatError):
        decode_entry(payload[:cut])
    with pytest.raises(CommandFormatError):
        decode_entry(payload + data.draw(st.binary(min_size=1, max_size=8)))


@given(st.sampled_from([OP_CREATE_ACCOUNTS, OP_CREATE_TRANSFERS]), st.binary(max_size=300))
def test_a_record_item_of_the_wrong_size_is_refused(kind, raw):
    size = len(pack_item(kind, Account(id=1) if kind == OP_CREATE_ACCOUNTS else Transfer(id=1)))
    if len(raw) == size:
        raw += b"x"
    with pytest.raises(CommandFormatError):
        unpack_item(kind, raw)


@given(st.sampled_from([OP_PREPARE, OP_FINISH, OP_DECIDE]), st.binary(max_size=64))
def test_garbled_transaction_items_are_refused_or_decode_to_what_they_say(kind, raw):
    try:
        item = unpack_item(kind, raw)
    except CommandFormatError:
        return
    assert pack_item(kind, item) == raw  # never decoded into something that packs differently

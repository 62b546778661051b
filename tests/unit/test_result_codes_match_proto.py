"""The node's result enums must be the wire enums: same names, same numbers, nothing missing."""

from __future__ import annotations

import enum

import pytest

from tidebank.node.ledger.results import (
    ITEM_ALLOWANCE_LOW,
    ClearingItemResult,
    CreateAccountResult,
    CreateTransferResult,
    ParticipantResult,
    TradeResult,
    WindowResult,
)
from tidebank.v1 import clearing_pb2, escrow_pb2, types_pb2


def _proto_members(proto_enum, prefix: str) -> dict[str, int]:
    return {name.removeprefix(prefix).lower(): value for name, value in proto_enum.items()}


def _node_members(node_enum: type[enum.IntEnum]) -> dict[str, int]:
    return {member.name: int(member.value) for member in node_enum}


@pytest.mark.parametrize(
    ("node_enum", "proto_enum", "prefix"),
    [
        (CreateAccountResult, types_pb2.CreateAccountResult, "CREATE_ACCOUNT_RESULT_"),
        (CreateTransferResult, types_pb2.CreateTransferResult, "CREATE_TRANSFER_RESULT_"),
        (TradeResult, escrow_pb2.TradeResultCode, "TRADE_RESULT_"),
        (ClearingItemResult, clearing_pb2.ClearingItemResult, "CLEARING_ITEM_RESULT_"),
        (ParticipantResult, clearing_pb2.ParticipantResult, "PARTICIPANT_RESULT_"),
        (WindowResult, clearing_pb2.WindowResult, "WINDOW_RESULT_"),
    ],
    ids=["accounts", "transfers", "trades", "clearing_items", "participants", "windows"],
)
def test_result_enum_equals_proto_enum(node_enum, proto_enum, prefix):
    assert all(name.startswith(prefix) for name in proto_enum.keys())
    assert _node_members(node_enum) == _proto_members(proto_enum, prefix)


def test_result_enums_have_no_aliases():
    # An alias (two names, one number) would make enum iteration drop a name silently.
    for node_enum in (CreateAccountResult, CreateTransferResult, TradeResult, ClearingItemResult, ParticipantResult,
                      WindowResult):
        assert len(node_enum.__members__) == len(list(node_enum))


def test_contract_codes_have_their_documented_numbers():
    assert CreateTransferResult.exceeds_credits == 55
    assert CreateTransferResult.internal_error == 61
    assert CreateTransferResult.accounts_on_different_shards == 59
    assert CreateAccountResult.internal_error == 21


def test_allowance_low_is_never_a_wire_code():
    # The node retries such items after moving allowance; the code must not collide with one a client sees.
    assert ITEM_ALLOWANCE_LOW not in set(clearing_pb2.ClearingItemResult.values())

"""The ledger API on a real three-DC cluster: one shared cluster for this module."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from tidebank.client import (
    Account,
    AccountFlags,
    CreateAccountResult,
    CreateTransferResult,
    InvalidRequestError,
    Transfer,
    TransferFlags,
)
from tidebank.v1 import admin_pb2, admin_pb2_grpc, ledger_pb2, types_pb2

from .conftest import leader_of, ledger_stub, wait_until

pytestmark = pytest.mark.integration

U64_MAX = (1 << 64) - 1
U128_MAX = (1 << 128) - 1
LEDGER = 840


def open_accounts(client, ids, shard_id: int, count: int, **fields) -> list[int]:
    accounts = [Account(id=ids.on_shard(shard_id), ledger=fields.pop("ledger", LEDGER), code=1, **fields)
                for _ in range(count)]
    results = client.create_accounts(accounts)
    assert [r.status for r in results] == [CreateAccountResult.created] * count
    return [a.id for a in accounts]


def balances(client, account_id: int) -> tuple[int, int, int, int]:
    (account,) = client.lookup_accounts([account_id])
    return account.debits_pending, account.debits_posted, account.credits_pending, account.credits_posted


def transfer(ids, debit: int, credit: int, amount: int, **fields) -> Transfer:
    return Transfer(id=fields.pop("id", None) or ids.any(), debit_account_id=debit, credit_account_id=credit,
                    amount=amount, ledger=fields.pop("ledger", LEDGER), code=fields.pop("code", 1), **fields)


def one(client, t: Transfer) -> CreateTransferResult:
    (result,) = client.create_transfers([t])
    return result.status


# --- the cluster's own interfaces ------------------------------------------------------------------------

def test_every_node_serves_the_same_shard_map_with_a_leader_per_shard(cluster):
    maps = []
    for address in cluster.endpoints:
        with cluster.channel(address) as channel:
            maps.append(admin_pb2_grpc.AdminStub(channel).GetShardMap(admin_pb2.GetShardMapRequest(), timeout=5))
    for m in maps:  # leaders may move between the calls; placement and slots may not differ
        for shard in m.shards:
            shard.leader_node = ""
    assert len({m.SerializeToString(deterministic=True) for m in maps}) == 1
    assert {m.version for m in maps} == {1}
    shard_map = maps[0]
    assert sorted(s.shard_id for s in shard_map.shards) == [0, 1, 2, 3]
    covered = sorted((r.start, r.end) for s in shard_map.shards for r in s.slots)
    assert covered[0][0] == 0 and covered[-1][1] == shard_map.slot_count
    assert all(a[1] == b[0] for a, b in zip(covered, covered[1:], strict=False))
    for shard in shard_map.shards:
        assert sorted(r.dc for r in shard.replicas) == ["dc1", "dc2", "dc3"]
        assert leader_of(cluster, shard.shard_id) in {r.node for r in shard.replicas}


def test_every_node_answers_grpc_health_checks_as_serving(cluster):
    for address in cluster.endpoints:
        with cluster.channel(address) as channel:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="tidebank.v1.Ledger"), timeout=5)
            assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_server_reflection_lists_the_ledger_and_admin_services(cluster):
    with cluster.channel() as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                              timeout=5)
        names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"tidebank.v1.Ledger", "tidebank.v1.Admin", "grpc.health.v1.Health"} <= names


# --- accounts and transfers ------------------------------------------------------------------------------

def test_transfer_moves_money_between_two_accounts_on_one_shard(client, ids):
    debit, credit = open_accounts(client, ids, 1, 2)
    assert one(client, transfer(ids, debit, credit, 1_250)) == CreateTransferResult.created
    assert balances(client, debit) == (0, 1_250, 0, 0)
    assert balances(client, credit) == (0, 0, 0, 1_250)


def test_resubmitting_a_transfer_returns_exists_and_moves_money_once(client, ids):
    debit, credit = open_accounts(client, ids, 2, 2)
    t = transfer(ids, debit, credit, 500)
    assert one(client, t) == CreateTransferResult.created
    assert one(client, t) == CreateTransferResult.exists
    assert balances(client, credit) == (0, 0, 0, 500)


def test_resubmitting_an_id_with_another_amount_is_refused(client, ids):
    debit, credit = open_accounts(client, ids, 2, 2)
    t = transfer(ids, debit, credit, 500)
    assert one(client, t) == CreateTransferResult.created
    t.amount = 501
    assert one(client, t) == CreateTransferResult.exists_with_different_amount
    assert balances(client, credit) == (0, 0, 0, 500)


def test_resubmitting_an_account_returns_exists(client, ids):
    account = Account(id=ids.on_shard(0), ledger=LEDGER, code=7)
    assert client.create_accounts([account])[0].status == CreateAccountResult.created
    assert client.create_accounts([account])[0].status == CreateAccountResult.exists


def test_transfer_that_would_overdraw_a_limited_account_fails_and_the_id_stays_failed(client, ids):
    (debit,) = open_accounts(client, ids, 3, 1, flags=AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)
    (credit,) = open_accounts(client, ids, 3, 1)
    t = transfer(ids, debit, credit, 10)
    assert one(client, t) == CreateTransferResult.exceeds_credits
    assert one(client, t) == CreateTransferResult.id_already_failed
    assert balances(client, debit) == (0, 0, 0, 0)


def test_linked_chain_fails_as_a_whole_when_one_item_fails(client, ids):
    a, b = open_accounts(client, ids, 0, 2)
    (limited,) = open_accounts(client, ids, 0, 1, flags=AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)
    chain = [transfer(ids, a, b, 5, flags=TransferFlags.LINKED), transfer(ids, limited, b, 5)]
    results = client.create_transfers(chain)
    assert [r.status for r in results] == [CreateTransferResult.linked_event_failed,
                                           CreateTransferResult.exceeds_credits]
    assert balances(client, b) == (0, 0, 0, 0)


def test_pending_transfer_holds_then_partial_post_moves_part_and_releases_the_rest(client, ids):
    debit, credit = open_accounts(client, ids, 1, 2)
    pending = transfer(ids, debit, credit, 1_000, flags=TransferFlags.PENDING)
    assert one(client, pending) == CreateTransferResult.created
    assert balances(client, debit) == (1_000, 0, 0, 0)
    post = transfer(ids, debit, credit, 600, pending_id=pending.id, flags=TransferFlags.POST_PENDING_TRANSFER)
    assert one(client, post) == CreateTransferResult.created
    assert balances(client, debit) == (0, 600, 0, 0)
    assert balances(client, credit) == (0, 0, 0, 600)


def test_voided_pending_transfer_releases_its_hold(client, ids):
    debit, credit = open_accounts(client, ids, 1, 2)
    pending = transfer(ids, debit, credit, 300, flags=TransferFlags.PENDING)
    assert one(client, pending) == CreateTransferResult.created
    void = transfer(ids, debit, credit, 0, pending_id=pending.id, flags=TransferFlags.VOID_PENDING_TRANSFER)
    assert one(client, void) == CreateTransferResult.created
    assert balances(client, debit) == (0, 0, 0, 0)


def test_pending_transfer_expires_on_cluster_time_without_other_traffic(client, ids):
    debit, credit = open_accounts(client, ids, 2, 2)
    pending = transfer(ids, debit, credit, 70, flags=TransferFlags.PENDING, timeout=1)
    assert one(client, pending) == CreateTransferResult.created
    wait_until(lambda: balances(client, debit) == (0, 0, 0, 0), 15, "the pending transfer to expire")
    post = transfer(ids, debit, credit, 0, pending_id=pending.id, flags=TransferFlags.POST_PENDING_TRANSFER)
    assert one(client, post) == CreateTransferResult.pending_transfer_expired


def test_lookup_transfers_finds_transfers_on_any_shard(client, ids):
    debit, credit = open_accounts(client, ids, 3, 2)
    t = transfer(ids, debit, credit, 42, user_data_64=99)
    assert one(client, t) == CreateTransferResult.created
    (found,) = client.lookup_transfers([t.id, ids.any()])
    assert (found.id, found.amount, found.user_data_64, found.debit_account_id) == (t.id, 42, 99, debit)
    assert found.timestamp > 0


def test_account_history_pages_in_timestamp_order(client, ids):
    debit, credit = open_accounts(client, ids, 0, 2)
    sent = [transfer(ids, debit, credit, amount) for amount in range(1, 8)]
    assert all(r.ok for r in client.create_transfers(sent))
    seen, token = [], ""
    while True:
        page = client.get_account_transfers(debit, limit=3, page_token=token)
        seen.extend(t.amount for t in page.items)
        token = page.next_page_token
        if not token:
            break
    assert seen == list(range(1, 8))
    newest = client.get_account_transfers(credit, limit=2, reversed=True)
    assert [t.amount for t in newest.items] == [7, 6]


def test_many_threads_sending_single_transfers_all_get_their_own_result(client, ids):
    debit, credit = open_accounts(client, ids, 1, 2)
    results, errors = {}, []

    def send(n: int) -> None:
        try:
            t = transfer(ids, debit, credit, 1, id=(1 << 100) + (time.time_ns() << 8) + n)
            results[n] = one(client, t)
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(n,)) for n in range(64)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert sorted(results) == list(range(64))
    assert set(results.values()) == {CreateTransferResult.created}
    assert balances(client, credit) == (0, 0, 0, 64)


# --- routing ---------------------------------------------------------------------------------------------

def test_a_follower_forwards_writes_to_the_shard_leader(cluster, client, ids):
    debit, credit = open_accounts(client, ids, 2, 2)
    leader = leader_of(cluster, 2)
    follower = next(n for n in cluster.topology.nodes if n.name != leader)
    channel, stub = ledger_stub(cluster, follower.grpc_address)
    with channel:
        request = ledger_pb2.CreateTransfersRequest()
        _fill_transfer(request.transfers.add(), ids.any(), debit, credit, 5)
        response = stub.CreateTransfers(request, timeout=10)
    assert list(response.results) == [types_pb2.CREATE_TRANSFER_RESULT_CREATED]
    assert balances(client, credit) == (0, 0, 0, 5)


def test_a_read_on_any_node_sees_the_acknowledged_write(cluster, client, ids):
    debit, credit = open_accounts(client, ids, 3, 2)
    assert one(client, transfer(ids, debit, credit, 77)) == CreateTransferResult.created
    for address in cluster.endpoints:
        channel, stub = ledger_stub(cluster, address)
        with channel:
            request = ledger_pb2.LookupAccountsRequest()
            _u128(request.ids.add(), credit)
            (account,) = stub.LookupAccounts(request, timeout=10).accounts
        assert account.credits_posted == 77


# --- bad input: clear codes, nothing changed -------------------------------------------------------------

@pytest.mark.parametrize(("field", "value", "expected"), [
    ("id", 0, CreateTransferResult.id_must_not_be_zero),
    ("id", U128_MAX, CreateTransferResult.id_must_not_be_int_max),
    ("amount", 0, CreateTransferResult.amount_must_not_be_zero),
    ("ledger", LEDGER + 1, CreateTransferResult.transfer_must_have_the_same_ledger_as_accounts),
    ("code", 0, CreateTransferResult.code_must_not_be_zero),
    ("timeout", 5, CreateTransferResult.timeout_reserved_for_pending_transfer),
    ("flags", 1 << 15, CreateTransferResult.reserved_flag),
])
def test_invalid_transfer_gets_its_code_and_changes_nothing(client, ids, field, value, expected):
    debit, credit = open_accounts(client, ids, 0, 2)
    t = transfer(ids, debit, credit, 10)
    setattr(t, field, value)
    assert one(client, t) == expected
    assert balances(client, debit) == (0, 0, 0, 0) and balances(client, credit) == (0, 0, 0, 0)


def test_transfer_to_the_same_account_is_refused(client, ids):
    (a,) = open_accounts(client, ids, 0, 1)
    assert one(client, transfer(ids, a, a, 10)) == CreateTransferResult.accounts_must_be_different


def test_transfer_from_an_unknown_account_is_refused(client, ids):
    (credit,) = open_accounts(client, ids, 1, 1)
    assert one(client, transfer(ids, ids.on_shard(1), credit, 10)) == CreateTransferResult.debit_account_not_found
    assert balances(client, credit) == (0, 0, 0, 0)


def test_transfer_between_accounts_of_different_ledgers_is_refused(client, ids):
    (a,) = open_accounts(client, ids, 2, 1)
    (b,) = open_accounts(client, ids, 2, 1, ledger=LEDGER + 1)
    assert one(client, transfer(ids, a, b, 10)) == CreateTransferResult.accounts_must_have_the_same_ledger


def test_amount_that_would_overflow_a_balance_is_refused(client, ids):
    debit, credit = open_accounts(client, ids, 3, 2)
    assert one(client, transfer(ids, debit, credit, U64_MAX - 5)) == CreateTransferResult.created
    assert one(client, transfer(ids, debit, credit, 10)) == CreateTransferResult.overflows_debits_posted
    assert balances(client, credit) == (0, 0, 0, U64_MAX - 5)


def test_account_with_zero_id_is_refused(client):
    (result,) = client.create_accounts([Account(id=0, ledger=LEDGER, code=1)])
    assert result.status == CreateAccountResult.id_must_not_be_zero


def test_oversized_batch_is_refused_whole_with_a_field_violation(cluster, client, ids):
    debit, credit = open_accounts(client, ids, 0, 2)
    request = ledger_pb2.CreateTransfersRequest()
    for _ in range(8190):
        _fill_transfer(request.transfers.add(), ids.any(), debit, credit, 1)
    channel, stub = ledger_stub(cluster, cluster.endpoints[0])
    with channel, pytest.raises(grpc.RpcError) as raised:
        stub.CreateTransfers(request, timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violation = _bad_request(raised.value).field_violations[0]
    assert violation.field == "transfers" and "8189" in violation.description
    assert balances(client, credit) == (0, 0, 0, 0)


@pytest.mark.parametrize("packed, also_repeated, field", [
    (b"\0" * 127, False, "transfers_packed"),            # not a whole number of records
    (b"\0" * 128 * 8190, False, "transfers_packed"),     # over the batch limit
    (b"\0" * 128, True, "transfers_packed"),             # both fields
])
def test_a_bad_packed_batch_is_refused_whole_with_a_field_violation(cluster, client, ids, packed, also_repeated,
                                                                    field):
    debit, credit = open_accounts(client, ids, 0, 2)
    request = ledger_pb2.CreateTransfersRequest(transfers_packed=packed)
    if also_repeated:
        _fill_transfer(request.transfers.add(), ids.any(), debit, credit, 1)
    channel, stub = ledger_stub(cluster, cluster.endpoints[0])
    with channel, pytest.raises(grpc.RpcError) as raised:
        stub.CreateTransfers(request, timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _bad_request(raised.value).field_violations[0].field == field
    assert balances(client, credit) == (0, 0, 0, 0)


def test_malformed_message_is_invalid_argument(cluster):
    with cluster.channel() as channel:
        raw = channel.unary_unary("/tidebank.v1.Ledger/CreateTransfers")
        with pytest.raises(grpc.RpcError) as raised:
            raw(b"\xff\xff\xff\xff not protobuf", timeout=5)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _bad_request(raised.value).field_violations[0].field == "request"


def test_page_token_from_another_account_is_refused(client, ids):
    debit, credit = open_accounts(client, ids, 0, 2)
    assert all(r.ok for r in client.create_transfers([transfer(ids, debit, credit, n) for n in (1, 2)]))
    token = client.get_account_transfers(debit, limit=1).next_page_token
    assert token
    with pytest.raises(InvalidRequestError):
        client.get_account_transfers(credit, limit=1, page_token=token)


# --- helpers ---------------------------------------------------------------------------------------------

def _u128(message, value: int) -> None:
    message.hi, message.lo = value >> 64, value & U64_MAX


def _fill_transfer(message, transfer_id: int, debit: int, credit: int, amount: int) -> None:
    _u128(message.id, transfer_id)
    _u128(message.debit_account_id, debit)
    _u128(message.credit_account_id, credit)
    message.amount, message.ledger, message.code = amount, LEDGER, 1


def _bad_request(error: grpc.RpcError) -> error_details_pb2.BadRequest:
    status = rpc_status.from_call(error)
    assert status is not None, "no rich status details"
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            return bad
    raise AssertionError("no google.rpc.BadRequest detail")


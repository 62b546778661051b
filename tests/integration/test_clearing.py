"""Clearing on a real 3-DC cluster of 4 shards: participants, items under the cap, windows, settlement, statements.

Through the public gRPC API (tidebank.v1.Clearing and Ledger); each test uses its own ledger, so the module's
cluster is shared. Every wait is bounded.
"""

from __future__ import annotations

import hashlib

import grpc
import pytest

from tidebank.client import Account, AccountFlags, Client, CreateAccountResult, CreateTransferResult, Transfer
from tidebank.common.keys import clearing_hub_account_id
from tidebank.v1 import clearing_pb2, clearing_pb2_grpc, types_pb2

from .conftest import IdSource, wait_until

pytestmark = pytest.mark.integration

R = clearing_pb2
OK = R.CLEARING_ITEM_RESULT_OK


def u128(value: int) -> types_pb2.U128:
    return types_pb2.U128(hi=value >> 64, lo=value & ((1 << 64) - 1))


def from_u128(m: types_pb2.U128) -> int:
    return m.hi << 64 | m.lo


def from_i128(m: types_pb2.I128) -> int:
    raw = m.hi << 64 | m.lo
    return raw - (1 << 128) if m.hi >> 63 else raw


@pytest.fixture(scope="module")
def clearing(cluster):
    channel = cluster.channel()
    yield clearing_pb2_grpc.ClearingStub(channel)
    channel.close()


class Banks:
    """Participants of one ledger, each with a funded settlement account that cannot overdraw."""

    def __init__(self, client: Client, clearing, ids: IdSource, ledger: int, caps: dict[str, int],
                 funds: int = 1_000_000) -> None:
        self.client, self.clearing, self.ids, self.ledger = client, clearing, ids, ledger
        self.id = {name: ids.any() for name in caps}
        self.account = {name: ids.any() for name in caps}
        mint = ids.any()
        results = client.create_accounts(
            [Account(id=mint, ledger=ledger, code=1)]
            + [Account(id=a, ledger=ledger, code=2, flags=AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)
               for a in self.account.values()])
        assert all(r.status == CreateAccountResult.created for r in results)
        if funds:
            client.create_transfers([Transfer(id=ids.any(), debit_account_id=mint, credit_account_id=a,
                                              amount=funds, ledger=ledger, code=1) for a in self.account.values()])
        response = clearing.RegisterParticipants(R.RegisterParticipantsRequest(participants=[
            self.participant(name, cap) for name, cap in caps.items()]), timeout=30)
        assert list(response.results) == [R.PARTICIPANT_RESULT_OK] * len(caps)

    def participant(self, name: str, cap: int) -> clearing_pb2.Participant:
        return R.Participant(id=u128(self.id[name]), ledger=self.ledger, code=1, name=name,
                             settlement_account_id=u128(self.account[name]), net_debit_cap=cap)

    def item(self, payer: str, payee: str, amount: int, item_id: int | None = None) -> clearing_pb2.ClearingItem:
        return R.ClearingItem(id=u128(item_id or self.ids.any()), payer_id=u128(self.id[payer]),
                              payee_id=u128(self.id[payee]), amount=amount, ledger=self.ledger)

    def submit(self, *items: clearing_pb2.ClearingItem) -> list[int]:
        return list(self.clearing.SubmitItems(R.SubmitItemsRequest(items=items), timeout=30).results)

    def balance(self, name: str) -> int:
        (a,) = self.client.lookup_accounts([self.account[name]])
        return a.credits_posted - a.debits_posted

    def close(self) -> clearing_pb2.WindowStepResponse:
        return self.clearing.CloseWindow(R.WindowRequest(ledger=self.ledger), timeout=30)

    def settle(self, number: int) -> clearing_pb2.WindowStepResponse:
        return self.clearing.SettleWindow(R.WindowRequest(ledger=self.ledger, number=number), timeout=60)

    def nets(self, window: clearing_pb2.Window) -> dict[str, int]:
        by_id = {v: k for k, v in self.id.items()}
        return {by_id[from_u128(n.participant_id)]: from_i128(n.net) for n in window.nets if from_i128(n.net)}


def test_registering_a_participant_again_is_exists(client, clearing, ids):
    banks = Banks(client, clearing, ids, ledger=7001, caps={"a": 100})
    response = clearing.RegisterParticipants(R.RegisterParticipantsRequest(
        participants=[banks.participant("a", 100)]), timeout=30)
    assert list(response.results) == [R.PARTICIPANT_RESULT_EXISTS]


def test_registering_with_an_unknown_settlement_account_is_refused(clearing, ids):
    p = R.Participant(id=u128(ids.any()), ledger=7002, code=1, name="x", settlement_account_id=u128(ids.any()),
                      net_debit_cap=10)
    response = clearing.RegisterParticipants(R.RegisterParticipantsRequest(participants=[p]), timeout=30)
    assert list(response.results) == [R.PARTICIPANT_RESULT_SETTLEMENT_ACCOUNT_NOT_FOUND]


def test_items_on_every_shard_are_accepted_up_to_the_cap_and_no_further(client, clearing, ids, cluster):
    banks = Banks(client, clearing, ids, ledger=7003, caps={"a": 1_000, "b": 1_000})
    shards = [s.shard_id for s in cluster.shard_map().shards]
    items = [banks.item("a", "b", 60, ids.on_shard(shards[n % len(shards)])) for n in range(20)]
    codes = banks.submit(*items)
    assert codes.count(OK) == 16  # 16 x 60 = 960 <= 1,000 < 17 x 60
    assert set(codes) == {OK, R.CLEARING_ITEM_RESULT_EXCEEDS_NET_DEBIT_CAP}
    (a,) = clearing.LookupParticipants(R.LookupParticipantsRequest(ids=[u128(banks.id["a"])]), timeout=30).participants
    assert from_i128(a.position) == 960


def test_resubmitted_items_answer_exists_and_move_nothing_twice(client, clearing, ids):
    banks = Banks(client, clearing, ids, ledger=7004, caps={"a": 1_000, "b": 1_000})
    item = banks.item("a", "b", 70)
    assert banks.submit(item) == [OK]
    assert banks.submit(item) == [R.CLEARING_ITEM_RESULT_EXISTS]
    (a,) = clearing.LookupParticipants(R.LookupParticipantsRequest(ids=[u128(banks.id["a"])]), timeout=30).participants
    assert from_i128(a.position) == 70


def test_suspended_payer_submits_nothing_new(client, clearing, ids):
    banks = Banks(client, clearing, ids, ledger=7005, caps={"a": 1_000, "b": 1_000})
    update = R.ParticipantUpdate(id=u128(banks.id["a"]), suspended=True)
    assert list(clearing.UpdateParticipants(R.UpdateParticipantsRequest(updates=[update]), timeout=30).results) == [
        R.PARTICIPANT_RESULT_OK]
    assert banks.submit(banks.item("a", "b", 5)) == [R.CLEARING_ITEM_RESULT_PAYER_SUSPENDED]
    assert banks.submit(banks.item("b", "a", 5)) == [OK]


def test_lowering_a_cap_below_the_position_is_refused(client, clearing, ids):
    banks = Banks(client, clearing, ids, ledger=7006, caps={"a": 1_000, "b": 1_000})
    banks.submit(banks.item("a", "b", 600))
    update = R.ParticipantUpdate(id=u128(banks.id["a"]), net_debit_cap=500)
    assert list(clearing.UpdateParticipants(R.UpdateParticipantsRequest(updates=[update]), timeout=30).results) == [
        R.PARTICIPANT_RESULT_CAP_BELOW_POSITION]
    update.net_debit_cap = 700
    assert list(clearing.UpdateParticipants(R.UpdateParticipantsRequest(updates=[update]), timeout=30).results) == [
        R.PARTICIPANT_RESULT_OK]
    assert banks.submit(banks.item("a", "b", 101)) == [R.CLEARING_ITEM_RESULT_EXCEEDS_NET_DEBIT_CAP]
    assert banks.submit(banks.item("a", "b", 100)) == [OK]


def test_closing_a_window_nets_it_and_opens_the_next(client, clearing, ids):
    banks = Banks(client, clearing, ids, ledger=7007, caps={"a": 10_000, "b": 10_000, "c": 10_000})
    banks.submit(banks.item("a", "b", 100), banks.item("b", "c", 30), banks.item("c", "a", 20),
                 banks.item("a", "c", 5))
    step = banks.close()
    assert step.result == R.WINDOW_RESULT_OK
    assert (step.window.number, step.window.state) == (1, R.WINDOW_STATE_CLOSED)
    assert banks.nets(step.window) == {"a": 85, "b": -70, "c": -15}
    later = banks.item("a", "b", 1)
    banks.submit(later)
    (stored,) = clearing.LookupItems(R.LookupItemsRequest(ids=[later.id]), timeout=30).items
    assert stored.window == 2


def test_closing_a_closed_window_is_refused_and_changes_nothing(client, clearing, ids):
    banks = Banks(client, clearing, ids, ledger=7008, caps={"a": 100, "b": 100})
    banks.close()
    again = clearing.CloseWindow(R.WindowRequest(ledger=7008, number=1), timeout=30)
    assert (again.result, again.window.state) == (R.WINDOW_RESULT_WINDOW_NOT_OPEN, R.WINDOW_STATE_CLOSED)
    windows = clearing.ListWindows(R.ListWindowsRequest(ledger=7008), timeout=30).windows
    assert [(w.number, w.state) for w in windows] == [(1, R.WINDOW_STATE_CLOSED), (2, R.WINDOW_STATE_OPEN)]


def test_settling_an_open_window_is_refused(client, clearing, ids):
    banks = Banks(client, clearing, ids, ledger=7009, caps={"a": 100, "b": 100})
    assert banks.settle(1).result == R.WINDOW_RESULT_WINDOW_NOT_CLOSED


def test_settlement_moves_exactly_each_net_and_leaves_the_hub_at_zero(client, clearing, ids):
    banks = Banks(client, clearing, ids, ledger=7010, caps={"a": 10_000, "b": 10_000, "c": 10_000})
    banks.submit(banks.item("a", "b", 100), banks.item("b", "c", 30), banks.item("c", "a", 20))
    before = {name: banks.balance(name) for name in banks.id}
    number = banks.close().window.number
    step = banks.settle(number)
    assert step.result == R.WINDOW_RESULT_OK
    assert step.window.state == R.WINDOW_STATE_SETTLED
    moved = {name: before[name] - banks.balance(name) for name in banks.id}
    assert moved == {"a": 80, "b": -70, "c": -10}
    (hub,) = client.lookup_accounts([clearing_hub_account_id(7010)])
    assert hub.credits_posted == hub.debits_posted == 80
    assert banks.settle(number).result == R.WINDOW_RESULT_WINDOW_ALREADY_SETTLED
    assert {name: banks.balance(name) for name in banks.id} == {n: before[n] - moved[n] for n in banks.id}


def test_settlement_gives_the_cap_back(client, clearing, ids):
    banks = Banks(client, clearing, ids, ledger=7011, caps={"a": 100, "b": 100})
    assert banks.submit(banks.item("a", "b", 100)) == [OK]
    assert banks.submit(banks.item("a", "b", 1)) == [R.CLEARING_ITEM_RESULT_EXCEEDS_NET_DEBIT_CAP]
    banks.settle(banks.close().window.number)
    assert banks.submit(banks.item("a", "b", 100)) == [OK]


def test_a_debtor_that_cannot_pay_moves_nothing_until_it_is_unwound(client, clearing, ids):
    banks = Banks(client, clearing, ids, ledger=7012, caps={"a": 10_000, "b": 10_000, "poor": 10_000}, funds=0)
    mint = ids.any()
    client.create_accounts([Account(id=mint, ledger=7012, code=1)])
    client.create_transfers([Transfer(id=ids.any(), debit_account_id=mint, credit_account_id=banks.account["a"],
                                      amount=1_000, ledger=7012, code=1)])
    banks.submit(banks.item("a", "b", 300), banks.item("poor", "b", 50))
    number = banks.close().window.number
    step = banks.settle(number)
    assert step.result == R.WINDOW_RESULT_INSUFFICIENT_FUNDS
    assert [(from_u128(s.participant_id), s.shortfall) for s in step.shortfalls] == [(banks.id["poor"], 50)]
    assert (banks.balance("a"), banks.balance("b")) == (1_000, 0)
    unwind = clearing.UnwindParticipant(R.UnwindParticipantRequest(
        ledger=7012, number=number, participant_id=u128(banks.id["poor"])), timeout=60)
    assert unwind.result == R.WINDOW_RESULT_OK
    assert banks.nets(unwind.window) == {"a": 300, "b": -300}
    assert banks.settle(number).result == R.WINDOW_RESULT_OK
    assert (banks.balance("a"), banks.balance("b"), banks.balance("poor")) == (700, 300, 0)


def test_statement_lists_the_participants_items_with_a_digest_over_them(client, clearing, ids):
    banks = Banks(client, clearing, ids, ledger=7013, caps={"a": 10_000, "b": 10_000, "c": 10_000})
    items = [banks.item("a", "b", 10 + n) for n in range(30)] + [banks.item("c", "a", 7), banks.item("b", "c", 3)]
    assert banks.submit(*items) == [OK] * len(items)
    number = banks.close().window.number
    chunks = list(clearing.ExportStatement(R.ExportStatementRequest(
        ledger=7013, number=number, participant_id=u128(banks.id["a"])), timeout=60))
    listed = [i for c in chunks for i in c.items]
    statement = chunks[-1].statement
    mine = sorted((i for i in items if banks.id["a"] in (from_u128(i.payer_id), from_u128(i.payee_id))),
                  key=lambda i: from_u128(i.id))
    assert [from_u128(i.id) for i in listed] == [from_u128(i.id) for i in mine]
    digest = hashlib.sha256(b"".join(
        f"{from_u128(i.id)},{from_u128(i.payer_id)},{from_u128(i.payee_id)},{i.amount}\n".encode()
        for i in mine)).hexdigest()
    assert statement.sha256 == digest
    assert (from_u128(statement.sent), from_u128(statement.received), statement.count_sent, statement.count_received,
            from_i128(statement.net)) == (
        sum(10 + n for n in range(30)), 7, 30, 1, sum(10 + n for n in range(30)) - 7)


def test_statement_of_an_open_window_is_refused(client, clearing, ids):
    banks = Banks(client, clearing, ids, ledger=7014, caps={"a": 100, "b": 100})
    with pytest.raises(grpc.RpcError) as raised:
        list(clearing.ExportStatement(R.ExportStatementRequest(ledger=7014, number=1,
                                                               participant_id=u128(banks.id["a"])), timeout=30))
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_items_with_cluster_fields_set_are_invalid_argument(client, clearing, ids):
    banks = Banks(client, clearing, ids, ledger=7015, caps={"a": 100, "b": 100})
    item = banks.item("a", "b", 5)
    item.window = 3
    with pytest.raises(grpc.RpcError) as raised:
        banks.submit(item)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_audit_finds_the_clearing_book_balanced_after_a_settled_cycle(client, clearing, ids, cluster):
    from tidebank.cluster.audit import audit, collect_totals
    from tidebank.cluster.launcher import ChannelPool

    banks = Banks(client, clearing, ids, ledger=7016, caps={"a": 5_000, "b": 5_000, "c": 5_000})
    banks.submit(*[banks.item("a", "b", 40) for _ in range(10)], banks.item("b", "c", 90), banks.item("c", "a", 5))
    assert banks.settle(banks.close().window.number).result == R.WINDOW_RESULT_OK
    expected = [s.shard_id for s in cluster.shard_map().shards]
    with ChannelPool(cluster.client_tls()) as pool:
        def settled_report():  # an allowance move may still be between TAKE and ACK: it counts as in flight
            report = audit(collect_totals(cluster.endpoints, 10.0, pool)[0], expected_shards=expected)
            return report if report.settled else None

        report = wait_until(settled_report, 10.0, "a quiescent audit")
    assert report.exit_code == 0, [m.describe() for m in report.mismatches]
    book = report.clearing[7016]
    assert (book["net"], book["cap"], book["hub_balance"]) == (0, 15_000, 0)


def test_a_window_refused_for_want_of_funds_settles_once_the_debtor_is_funded(client, clearing, ids):
    banks = Banks(client, clearing, ids, ledger=7017, caps={"a": 1_000, "b": 1_000}, funds=0)
    banks.submit(banks.item("a", "b", 120))
    number = banks.close().window.number
    assert banks.settle(number).result == R.WINDOW_RESULT_INSUFFICIENT_FUNDS
    mint = ids.any()
    (created,) = client.create_accounts([Account(id=mint, ledger=7017, code=1)])
    # `exists`: the client retried a call whose first attempt was applied
    assert created.status in (CreateAccountResult.created, CreateAccountResult.exists), created
    (funded,) = client.create_transfers([Transfer(id=ids.any(), debit_account_id=mint,
                                                  credit_account_id=banks.account["a"], amount=500, ledger=7017,
                                                  code=1)])
    assert funded.status in (CreateTransferResult.created, CreateTransferResult.exists), funded
    step = banks.settle(number)
    assert step.result == R.WINDOW_RESULT_OK, step  # the whole answer: state, attempt, shortfalls
    assert (banks.balance("a"), banks.balance("b")) == (380, 120)


# ---- aborted windows, resumed statements, participant pages, sums beyond 64 bits ---------------------------


def _positions(clearing, banks: Banks) -> dict[str, int]:
    found = clearing.LookupParticipants(R.LookupParticipantsRequest(ids=[u128(i) for i in banks.id.values()]),
                                        timeout=30).participants
    by_id = {v: k for k, v in banks.id.items()}
    return {by_id[from_u128(p.id)]: from_i128(p.position) for p in found}


def _abort(clearing, ledger: int, number: int) -> clearing_pb2.WindowStepResponse:
    return clearing.AbortWindow(R.WindowRequest(ledger=ledger, number=number), timeout=60)


def _precondition_failure(error: grpc.RpcError):
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    status = rpc_status.from_call(error)
    for detail in status.details:
        if detail.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
            failure = error_details_pb2.PreconditionFailure()
            detail.Unpack(failure)
            return failure
    return None


def test_an_aborted_window_gives_every_position_back_and_moves_no_money(client, clearing, ids, cluster):
    banks = Banks(client, clearing, ids, ledger=7020, caps={"a": 1_000, "b": 1_000, "c": 1_000})
    shards = [s.shard_id for s in cluster.shard_map().shards]
    items = [banks.item("a", "b", 100, ids.on_shard(shards[n % len(shards)])) for n in range(8)]
    items.append(banks.item("b", "c", 30))
    assert banks.submit(*items) == [OK] * len(items)
    before = {name: banks.balance(name) for name in banks.id}
    number = banks.close().window.number
    step = _abort(clearing, 7020, number)
    assert step.result == R.WINDOW_RESULT_OK
    assert step.window.state == R.WINDOW_STATE_ABORTED and step.window.aborted_at > 0
    assert _positions(clearing, banks) == {"a": 0, "b": 0, "c": 0}
    assert {name: banks.balance(name) for name in banks.id} == before
    stored = clearing.LookupItems(R.LookupItemsRequest(ids=[i.id for i in items]), timeout=30).items
    assert {i.status for i in stored} == {R.CLEARING_ITEM_STATUS_ABORTED}
    assert banks.submit(banks.item("a", "b", 1_000)) == [OK]  # the whole cap is back


def test_an_aborted_window_is_never_settled(client, clearing, ids):
    banks = Banks(client, clearing, ids, ledger=7021, caps={"a": 1_000, "b": 1_000})
    banks.submit(banks.item("a", "b", 100))
    number = banks.close().window.number
    _abort(clearing, 7021, number)
    assert banks.settle(number).result == R.WINDOW_RESULT_WINDOW_ALREADY_ABORTED
    (hub,) = client.lookup_accounts([clearing_hub_account_id(7021)]) or (None,)
    assert hub is None or hub.credits_posted == hub.debits_posted == 0


def test_aborting_a_window_twice_answers_already_aborted(client, clearing, ids):
    banks = Banks(client, clearing, ids, ledger=7022, caps={"a": 1_000, "b": 1_000})
    banks.submit(banks.item("a", "b", 100))
    number = banks.close().window.number
    assert _abort(clearing, 7022, number).result == R.WINDOW_RESULT_OK
    again = _abort(clearing, 7022, number)
    assert (again.result, again.window.state) == (R.WINDOW_RESULT_WINDOW_ALREADY_ABORTED, R.WINDOW_STATE_ABORTED)
    assert _positions(clearing, banks) == {"a": 0, "b": 0}


def test_aborting_the_open_window_is_failed_precondition_and_changes_nothing(client, clearing, ids):
    banks = Banks(client, clearing, ids, ledger=7023, caps={"a": 1_000, "b": 1_000})
    banks.submit(banks.item("a", "b", 100))
    with pytest.raises(grpc.RpcError) as raised:
        _abort(clearing, 7023, 1)
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    failure = _precondition_failure(raised.value)
    assert [(v.type, v.subject) for v in failure.violations] == [("WINDOW_STATE", "7023/1")]
    assert "open" in failure.violations[0].description
    assert _positions(clearing, banks) == {"a": 100, "b": -100}


def test_aborting_a_settled_window_is_failed_precondition(client, clearing, ids):
    banks = Banks(client, clearing, ids, ledger=7024, caps={"a": 1_000, "b": 1_000})
    banks.submit(banks.item("a", "b", 100))
    number = banks.close().window.number
    assert banks.settle(number).result == R.WINDOW_RESULT_OK
    with pytest.raises(grpc.RpcError) as raised:
        _abort(clearing, 7024, number)
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "settled" in _precondition_failure(raised.value).violations[0].description


def test_aborting_an_unknown_window_is_not_found(client, clearing, ids):
    Banks(client, clearing, ids, ledger=7025, caps={"a": 1_000, "b": 1_000})
    with pytest.raises(grpc.RpcError) as raised:
        _abort(clearing, 7025, 9)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


def test_audit_finds_the_clearing_book_balanced_after_an_aborted_window(client, clearing, ids, cluster):
    from tidebank.cluster.audit import audit, collect_totals
    from tidebank.cluster.launcher import ChannelPool

    banks = Banks(client, clearing, ids, ledger=7026, caps={"a": 5_000, "b": 5_000})
    banks.submit(*[banks.item("a", "b", 40) for _ in range(10)], banks.item("b", "a", 90))
    _abort(clearing, 7026, banks.close().window.number)
    expected = [s.shard_id for s in cluster.shard_map().shards]
    with ChannelPool(cluster.client_tls()) as pool:
        def settled_report():
            report = audit(collect_totals(cluster.endpoints, 10.0, pool)[0], expected_shards=expected)
            return report if report.settled else None

        report = wait_until(settled_report, 10.0, "a quiescent audit")
    assert report.exit_code == 0, [m.describe() for m in report.mismatches]
    book = report.clearing[7026]
    assert (book["net"], book["cap"], book["hub_balance"]) == (0, 10_000, 0)


def test_a_statement_resumed_after_an_item_sends_only_the_later_ones_with_the_whole_windows_digest(
        client, clearing, ids):
    banks = Banks(client, clearing, ids, ledger=7027, caps={"a": 10_000, "b": 10_000})
    items = [banks.item("a", "b", 10 + n) for n in range(40)]
    assert banks.submit(*items) == [OK] * len(items)
    number = banks.close().window.number
    request = R.ExportStatementRequest(ledger=7027, number=number, participant_id=u128(banks.id["a"]))
    whole = list(clearing.ExportStatement(request, timeout=60))
    listed = [from_u128(i.id) for c in whole for i in c.items]
    request.after_item_id.CopyFrom(u128(listed[14]))  # the stream broke after 15 items
    resumed = list(clearing.ExportStatement(request, timeout=60))
    assert [from_u128(i.id) for c in resumed for i in c.items] == listed[15:]
    assert resumed[-1].statement == whole[-1].statement  # totals, counts and digest of the whole window


def test_participants_are_listed_a_page_at_a_time(client, clearing, ids):
    banks = Banks(client, clearing, ids, ledger=7028, caps={name: 100 for name in "abcde"})
    wanted = sorted(banks.id.values())
    pages, after = [], 0
    while True:
        page = clearing.ListParticipants(R.ListParticipantsRequest(ledger=7028, after=u128(after), limit=2),
                                         timeout=30).participants
        pages.append([from_u128(p.id) for p in page])
        if len(page) < 2:
            break
        after = from_u128(page[-1].id)
    assert [pid for page in pages for pid in page] == wanted
    assert [len(p) for p in pages] == [2, 2, 1]


def test_listing_participants_beyond_the_page_cap_is_invalid_argument(clearing):
    with pytest.raises(grpc.RpcError) as raised:
        clearing.ListParticipants(R.ListParticipantsRequest(limit=8190), timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_sums_and_positions_beyond_64_bits_come_whole(client, clearing, ids):
    top = (1 << 64) - 1
    banks = Banks(client, clearing, ids, ledger=7029, caps={"a": top, "b": top}, funds=0)
    assert banks.submit(banks.item("a", "b", top)) == [OK]
    assert _positions(clearing, banks) == {"a": top, "b": -top}  # a position above 2^63
    assert banks.submit(banks.item("b", "a", top)) == [OK]
    assert banks.submit(banks.item("a", "b", top)) == [OK]
    window = clearing.GetWindow(R.GetWindowRequest(ledger=7029, number=1, bilateral=True), timeout=30)
    by_id = {v: k for k, v in banks.id.items()}
    nets = {by_id[from_u128(n.participant_id)]: (from_u128(n.sent), from_u128(n.received), from_i128(n.net))
            for n in window.nets}
    assert nets == {"a": (2 * top, top, top), "b": (top, 2 * top, -top)}
    cells = {(by_id[from_u128(b.payer_id)], by_id[from_u128(b.payee_id)]): from_u128(b.amount)
             for b in window.bilateral}
    assert cells == {("a", "b"): 2 * top, ("b", "a"): top}

"""The escrow (trades) API of the blocking Client, against the in-process fake cluster,
and the escrow values and their protobuf conversions."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from tidebank.client import (
    Client,
    CreateTransferResult,
    DisputeResolution,
    Extension,
    InvalidRequestError,
    NewTrade,
    OutcomeUnknownError,
    ReadConsistency,
    Refund,
    Trade,
    TradeClosedBy,
    TradeResult,
    TradeResultCode,
    TradeRole,
    TradeState,
    TradeTimer,
    UnavailableError,
    _core,
    _model,
    trade_from_proto,
    trade_to_proto,
)
from tidebank.client.testing import INVALID_MARK, FakeCluster
from tidebank.common.keys import U64_MAX, U128_MAX
from tidebank.v1 import escrow_pb2, types_pb2

BUYER, SELLER = 900_001, 900_002


@pytest.fixture
def fc() -> Iterator[FakeCluster]:
    with FakeCluster(nodes=3, shards=2) as cluster:
        yield cluster


def client(fc: FakeCluster, **kw: Any) -> Client:
    kw.setdefault("timeout_s", 2.0)
    kw.setdefault("attempt_timeout_s", 0.5)
    return Client(fc.addresses, tls=fc.tls, **kw)


def new_trade(tid: int, buyer: int = BUYER, seller: int = SELLER, amount: int = 100, **kw: Any) -> NewTrade:
    kw.setdefault("ship_by_timeout_s", 3600)
    kw.setdefault("auto_confirm_timeout_s", 7 * 86400)
    return NewTrade(tid, buyer, seller, amount, 1, **kw)


def interleaved(fc: FakeCluster, n: int, start: int = 1) -> list[int]:
    """n ids alternating between shard 0 and shard 1."""
    a, b = fc.ids_on_shard(0, n, start), fc.ids_on_shard(1, n, start)
    return [x for pair in zip(a, b, strict=True) for x in pair][:n]


def run_threads(n: int, fn: Callable[[int], Any]) -> list[Any]:
    out: list[Any] = [None] * n
    barrier = threading.Barrier(n)

    def run(k: int) -> None:
        barrier.wait()
        try:
            out[k] = fn(k)
        except Exception as exc:  # noqa: BLE001
            out[k] = exc

    threads = [threading.Thread(target=run, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return out


# Every batch action: (RPC, how to call it on a batch of trade ids).
ACTIONS: dict[str, Callable[[Client, list[int]], list[TradeResult]]] = {
    "ShipTrades": lambda c, ids: c.ship_trades(ids),
    "ConfirmTrades": lambda c, ids: c.confirm_trades(ids),
    "OpenDisputes": lambda c, ids: c.open_disputes(ids),
    "WithdrawDisputes": lambda c, ids: c.withdraw_disputes(ids),
    "RefundTrades": lambda c, ids: c.refund_trades([Refund(t, t + 1, 10) for t in ids]),
    "ResolveDisputes": lambda c, ids: c.resolve_disputes([DisputeResolution(t, 10) for t in ids]),
    "ExtendTrades": lambda c, ids: c.extend_trades([Extension(t, t + 1, 60) for t in ids]),
}


# --------------------------------------------------------------------------- routing


def test_create_trades_go_to_the_leader_of_the_trade_ids_shard_not_the_buyers(fc: FakeCluster) -> None:
    ids = interleaved(fc, 10)
    buyer, seller = fc.ids_on_shard(1, 2, start=10_000)  # both on shard 1: must not steer the routing
    with client(fc) as c:
        results = c.create_trades([new_trade(t, buyer, seller) for t in ids])
    assert [(r.index, r.trade_id, r.status) for r in results] == [(k, t, TradeResultCode.ok) for k, t in enumerate(ids)]
    calls = fc.ledger_calls("CreateTrades")
    assert len(calls) == 2 and all(c.outcome == "OK" for c in calls)
    for call in calls:
        (sid,) = call.shard_ids
        assert call.node == fc.leaders[sid]
        assert call.ids == [t for t in ids if fc.shard_of(t) == sid]


@pytest.mark.parametrize("method", list(ACTIONS))
def test_each_action_goes_to_the_leader_of_the_trade_ids_shard(fc: FakeCluster, method: str) -> None:
    ids = interleaved(fc, 6)
    with client(fc) as c:
        c.create_trades([new_trade(t) for t in ids])
        results = ACTIONS[method](c, ids)
    assert [(r.index, r.trade_id, r.status) for r in results] == [(k, t, TradeResultCode.ok) for k, t in enumerate(ids)]
    calls = fc.ledger_calls(method)
    assert len(calls) == 2
    for call in calls:
        (sid,) = call.shard_ids
        assert (call.node, call.outcome) == (fc.leaders[sid], "OK")
        assert call.ids == [t for t in ids if fc.shard_of(t) == sid]


def test_single_item_calls_return_one_result_of_their_trade(fc: FakeCluster) -> None:
    tid = fc.ids_on_shard(1, 1)[0]
    with client(fc) as c:
        assert c.create_trade(new_trade(tid)).status == TradeResultCode.ok
        assert c.create_trade(new_trade(tid)).status == TradeResultCode.exists
        got = [
            c.ship_trade(tid),
            c.refund_trade(tid, 5, 10),
            c.refund_trade(tid, 5, 10),  # the same refund id: a repeat, not a second refund
            c.extend_trade(tid, 6, 60),
            c.open_dispute(tid),
            c.withdraw_dispute(tid),
            c.resolve_dispute(tid, 20),
            c.confirm_trade(tid),
            c.ship_trade(tid + 0x10000),  # never created
        ]
        (trade,) = c.lookup_trades([tid])
    assert [r.status.name for r in got] == [
        "ok", "ok", "exists", "ok", "ok", "ok", "ok", "ok", "trade_not_found",
    ]  # fmt: skip
    assert [r.trade_id for r in got[:-1]] == [tid] * 8 and all(r.index == 0 for r in got)
    assert trade.refunds == [(5, 10)] and trade.extensions == [(6, 60)]


def test_a_large_batch_is_split_at_max_batch_items_in_request_order(fc: FakeCluster) -> None:
    ids = fc.ids_on_shard(0, 25)
    with client(fc, max_batch_items=10) as c:
        results = c.create_trades([new_trade(t) for t in ids])
    assert [r.trade_id for r in results] == ids
    assert [c.ids for c in fc.ledger_calls("CreateTrades")] == [ids[:10], ids[10:20], ids[20:]]


# --------------------------------------------------------------------------- coalescing


def test_concurrent_single_create_trade_calls_coalesce_into_few_rpcs(fc: FakeCluster) -> None:
    fc.delay_s = 0.02  # like a Raft round trip: callers pile up behind it
    ids = fc.ids_on_shard(0, 64)
    for k in range(0, 64, 5):
        fc.trade_results[ids[k]] = TradeResultCode.buyer_account_not_found
    with client(fc) as c:
        c.shard_map()
        out = run_threads(64, lambda k: c.create_trade(new_trade(ids[k])))
    for k, r in enumerate(out):
        assert isinstance(r, TradeResult), r
        assert (r.index, r.trade_id) == (0, ids[k])
        assert r.status == (TradeResultCode.buyer_account_not_found if k % 5 == 0 else TradeResultCode.ok)
    calls = fc.ledger_calls("CreateTrades")
    assert len(calls) <= 12, [len(c.ids) for c in calls]
    assert sorted(t for c in calls for t in c.ids) == sorted(ids)


def test_concurrent_calls_of_different_actions_never_share_an_rpc(fc: FakeCluster) -> None:
    ids = fc.ids_on_shard(1, 48)
    to_ship, to_confirm, to_dispute = ids[:16], ids[16:32], ids[32:]
    with client(fc) as c:
        c.create_trades([new_trade(t) for t in ids])
        fc.delay_s = 0.02
        calls = [c.ship_trade] * 16 + [c.confirm_trade] * 16 + [c.open_dispute] * 16
        out = run_threads(48, lambda k: calls[k](ids[k]))
    assert all(isinstance(r, TradeResult) and r.status == TradeResultCode.ok for r in out), out
    for method, want in (("ShipTrades", to_ship), ("ConfirmTrades", to_confirm), ("OpenDisputes", to_dispute)):
        rpcs = fc.ledger_calls(method)
        assert sorted(t for rpc in rpcs for t in rpc.ids) == sorted(want)
        assert len(rpcs) < 16  # still coalesced within each action


# --------------------------------------------------------------------------- leaders, retries, outcomes


def test_not_leader_is_retried_at_the_named_leader_with_the_same_items(fc: FakeCluster) -> None:
    ids = fc.ids_on_shard(0, 3)
    fc.set_leader(0, "node3", in_map=False)  # the client's map still says node1
    with client(fc) as c:
        results = c.create_trades([new_trade(t) for t in ids])
    assert [r.status for r in results] == [TradeResultCode.ok] * 3
    calls = fc.ledger_calls("CreateTrades")
    assert [(c.node, c.outcome) for c in calls] == [("node1", "UNAVAILABLE"), ("node3", "OK")]
    assert calls[0].ids == calls[1].ids == ids


def test_no_leader_is_retried_until_it_succeeds_with_the_same_items(fc: FakeCluster) -> None:
    tid = fc.ids_on_shard(1, 1)[0]
    with client(fc) as c:
        c.create_trade(new_trade(tid))
        fc.fail("RefundTrades", reason="NO_LEADER", metadata={"shard_id": "1"}, times=2)
        r = c.refund_trade(tid, 77, 30)
    assert r.status == TradeResultCode.ok
    calls = fc.ledger_calls("RefundTrades")
    assert [c.outcome for c in calls[:2]] == ["UNAVAILABLE"] * 2 and calls[-1].outcome == "OK"
    assert all(c.ids == [tid] for c in calls)
    assert fc.trades[tid].refunds[0].amount == 30 and len(fc.trades[tid].refunds) == 1


def test_ambiguous_failure_past_the_deadline_raises_outcome_unknown(fc: FakeCluster) -> None:
    a, b = fc.ids_on_shard(0, 2)
    with client(fc, timeout_s=0.7, attempt_timeout_s=0.15) as c:
        c.create_trades([new_trade(a), new_trade(b)])
        fc.fail("ConfirmTrades", code=None, delay_s=0.3, times=-1)  # slow: applies after the client gave up
        with pytest.raises(OutcomeUnknownError) as ei:
            c.confirm_trades([a, b])
    assert ei.value.ids == [a, b] and ei.value.results == [None, None]
    assert "confirm_trades" in str(ei.value)
    calls = fc.ledger_calls("ConfirmTrades")
    assert len(calls) >= 2 and all(c.ids == [a, b] for c in calls)


def test_lost_answer_is_retried_and_answers_exists(fc: FakeCluster) -> None:
    tid = fc.ids_on_shard(0, 1)[0]
    fc.fail("CreateTrades", code=grpc.StatusCode.UNAVAILABLE, apply=True)
    with client(fc) as c:
        r = c.create_trade(new_trade(tid))
    assert r.status == TradeResultCode.exists and r.ok
    assert all(call.ids == [tid] for call in fc.ledger_calls("CreateTrades"))


def test_no_leader_until_the_deadline_is_unavailable_naming_the_unapplied_items(fc: FakeCluster) -> None:
    fc.fail("ShipTrades", reason="NO_LEADER", times=-1)
    with client(fc, timeout_s=0.3) as c, pytest.raises(UnavailableError) as ei:
        c.ship_trades([5, 6])
    assert ei.value.ids == [5, 6] and ei.value.reason == "NO_LEADER"


# --------------------------------------------------------------------------- results


def test_transfer_failed_result_carries_the_transfer_status(fc: FakeCluster) -> None:
    ids = interleaved(fc, 4)
    with client(fc) as c:
        c.create_trades([new_trade(t) for t in ids])
        fc.trade_results[("ConfirmTrades", ids[1])] = (
            TradeResultCode.transfer_failed,
            CreateTransferResult.exceeds_credits,
        )
        fc.trade_results[("ConfirmTrades", ids[2])] = TradeResultCode.trade_is_disputed
        results = c.confirm_trades(ids)
    assert [(r.status, r.transfer_status) for r in results] == [
        (TradeResultCode.ok, None),
        (TradeResultCode.transfer_failed, CreateTransferResult.exceeds_credits),
        (TradeResultCode.trade_is_disputed, None),
        (TradeResultCode.ok, None),
    ]
    assert [r.ok for r in results] == [True, False, False, True]


def test_result_codes_newer_than_the_client_are_kept_as_ints(fc: FakeCluster) -> None:
    a, b = fc.ids_on_shard(0, 2)
    fc.trade_results[a] = 250
    fc.trade_results[b] = (TradeResultCode.transfer_failed, 999)
    with client(fc) as c:
        ra, rb = c.create_trades([new_trade(a), new_trade(b)])
    assert ra.status == 250 and not isinstance(ra.status, TradeResultCode) and ra.transfer_status is None
    assert rb.status == TradeResultCode.transfer_failed and rb.transfer_status == 999


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda c: c.create_trades([new_trade(1), new_trade(2, amount=-1)]), "trades[1].amount"),
        (lambda c: c.create_trade(new_trade(1, buyer="b")), "trades[0].buyer_account_id"),
        (lambda c: c.create_trade(new_trade(U128_MAX + 1)), "trades[0].id"),
        (lambda c: c.create_trade(new_trade(1, fee_bps=None)), "trades[0].fee_bps"),
        (lambda c: c.create_trade(new_trade(1, ship_by_timeout_s=1 << 32)), "trades[0].ship_by_timeout_s"),
        (lambda c: c.create_trade(new_trade(1, user_data_128=True)), "trades[0].user_data_128"),
        (lambda c: c.ship_trades([1, -1]), "trades[1].trade_id"),
        (lambda c: c.confirm_trade("7"), "trades[0].trade_id"),
        (lambda c: c.open_dispute(1.0), "trades[0].trade_id"),
        (lambda c: c.withdraw_disputes([True]), "trades[0].trade_id"),
        (lambda c: c.refund_trade(1, None, 5), "refunds[0].refund_id"),
        (lambda c: c.refund_trades([Refund(1, 2, 3), Refund(1, 3, U64_MAX + 1)]), "refunds[1].amount"),
        (lambda c: c.resolve_dispute(1, -5), "resolutions[0].buyer_amount"),
        (lambda c: c.extend_trade(1, 2, 1 << 32), "extensions[0].extend_by_s"),
        (lambda c: c.extend_trades([Extension(-1, 2, 3)]), "extensions[0].trade_id"),
        (lambda c: c.lookup_trades([1, -1]), "ids[1]"),
        (lambda c: c.list_trades("acct"), "account_id"),
        (lambda c: c.list_trades(1, limit=8190), "limit"),
        (lambda c: c.list_trades(1, role=7), "role"),
    ],
)
def test_client_side_validation_names_the_field_and_sends_nothing(
    fc: FakeCluster, call: Callable[[Client], Any], field: str
) -> None:
    with client(fc) as c, pytest.raises(InvalidRequestError) as ei:
        call(c)
    assert [v.field for v in ei.value.field_violations] == [field]
    assert fc.calls == []


def test_server_field_violations_name_the_callers_item_and_report_the_other_shard(fc: FakeCluster) -> None:
    ids = interleaved(fc, 4)
    items = [new_trade(t) for t in ids]
    items[3].user_data_32 = INVALID_MARK  # the 2nd item of its shard's sub-batch
    with client(fc) as c, pytest.raises(InvalidRequestError) as ei:
        c.create_trades(items)
    assert [v.field for v in ei.value.field_violations] == ["trades[3].user_data_32"]
    assert ei.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert ei.value.results is not None
    assert [r.status if r else None for r in ei.value.results] == [TradeResultCode.ok, None, TradeResultCode.ok, None]


def test_an_item_of_another_kind_is_a_type_error(fc: FakeCluster) -> None:
    with client(fc) as c, pytest.raises(TypeError, match="refunds"):
        c.refund_trades([Extension(1, 2, 3)])  # type: ignore[list-item]
    assert fc.calls == []


# --------------------------------------------------------------------------- reads


def test_lookup_trades_routes_by_shard_and_keeps_request_order(fc: FakeCluster) -> None:
    ids = interleaved(fc, 6)
    with client(fc) as c:
        c.create_trades([new_trade(t, amount=100 + k) for k, t in enumerate(ids)])
        want = [ids[4], 123_456_789, ids[1], ids[0]]
        got = c.lookup_trades(want)
        stale = c.lookup_trades(want, consistency=ReadConsistency.STALE)
        assert c.lookup_trades([]) == []
    assert [t.id for t in got] == [ids[4], ids[1], ids[0]] == [t.id for t in stale]
    assert [t.amount for t in got] == [104, 101, 100]
    assert all(t.state == TradeState.PAID and t.timer == TradeTimer.SHIP_BY for t in got)
    calls = fc.ledger_calls("LookupTrades")
    assert len(calls) == 4 and all(len(c.shard_ids) == 1 for c in calls)


def test_lookup_trades_is_retried_after_not_leader(fc: FakeCluster) -> None:
    ids = fc.ids_on_shard(1, 2)
    with client(fc) as c:
        c.create_trades([new_trade(t) for t in ids])
        fc.set_leader(1, "node3", in_map=False)
        assert [t.id for t in c.lookup_trades(ids)] == ids
    assert [c.outcome for c in fc.ledger_calls("LookupTrades")] == ["UNAVAILABLE", "OK"]


def test_lookup_returns_every_field_that_was_created(fc: FakeCluster) -> None:
    tid = fc.ids_on_shard(0, 1)[0]
    sent = NewTrade(
        tid, 1 << 100, (1 << 64) + 3, U64_MAX, 7, fee_bps=250, ship_by_timeout_s=11, auto_confirm_timeout_s=12,
        user_data_128=U128_MAX, user_data_64=13, user_data_32=14,
    )  # fmt: skip
    with client(fc) as c:
        c.create_trade(sent)
        (got,) = c.lookup_trades([tid])
    assert {f: getattr(got, f) for f in _model._NEW_TRADE_FIELDS} == {
        f: getattr(sent, f) for f in _model._NEW_TRADE_FIELDS
    }


def test_list_trades_pages_over_the_buyers_or_the_sellers_trades(fc: FakeCluster) -> None:
    buyer, seller, other = fc.ids_on_shard(0, 3, start=50_000)
    ids = interleaved(fc, 12)
    with client(fc) as c:
        for k, t in enumerate(ids):  # one by one: list order is creation order
            c.create_trade(new_trade(t, buyer, seller if k % 3 else other))
        first = c.list_trades(buyer, limit=5)
        second = c.list_trades(buyer, limit=5, page_token=first.next_page_token)
        last = c.list_trades(buyer, limit=5, page_token=second.next_page_token)
        as_seller = c.list_trades(seller, role=TradeRole.SELLER, limit=100)
        as_buyer_only = c.list_trades(seller, role=TradeRole.BUYER)
    assert [t.id for t in first.items] == ids[:5] and first.next_page_token
    assert [t.id for t in second.items] == ids[5:10] and second.next_page_token
    assert [t.id for t in last.items] == ids[10:] and last.next_page_token == ""
    assert [t.id for t in as_seller.items] == [t for k, t in enumerate(ids) if k % 3]
    assert as_buyer_only.items == []
    assert all(c.shard_ids == [0] for c in fc.ledger_calls("ListTrades"))  # sent near the account's shard


def test_iter_trades_walks_every_page(fc: FakeCluster) -> None:
    buyer = fc.ids_on_shard(1, 1, start=50_000)[0]
    ids = interleaved(fc, 11)
    with client(fc) as c:
        for t in ids:
            c.create_trade(new_trade(t, buyer))
        walked = [t.id for t in c.iter_trades(buyer, limit=4)]
        nothing = list(c.iter_trades(buyer, role=TradeRole.SELLER))
    assert walked == ids and nothing == []
    assert [len(c.ids) for c in fc.ledger_calls("ListTrades")] == [1, 1, 1, 1]  # 3 pages + 1 empty one


def test_list_trades_is_retried_after_no_leader(fc: FakeCluster) -> None:
    buyer = 42
    with client(fc) as c:
        c.create_trade(new_trade(fc.ids_on_shard(0, 1)[0], buyer))
        fc.fail("ListTrades", reason="NO_LEADER", times=1)
        page = c.list_trades(buyer)
    assert len(page.items) == 1
    assert [c.outcome for c in fc.ledger_calls("ListTrades")] == ["UNAVAILABLE", "OK"]


# --------------------------------------------------------------------------- values and conversions


def unset_fields(m: Any) -> list[str]:
    """The fields of a message left at their default (a sample meant to set them all must leave none)."""
    out = []
    for f in m.DESCRIPTOR.fields:
        value = getattr(m, f.name)
        if f.is_repeated:
            empty = len(value) == 0
        elif f.message_type is not None:
            empty = not m.HasField(f.name) or value == type(value)()
        else:
            empty = value == f.default_value
        if empty:
            out.append(f.name)
    return out


def full_trade_proto() -> escrow_pb2.Trade:
    def u(v: int) -> types_pb2.U128:
        return types_pb2.U128(hi=v >> 64, lo=v & U64_MAX)

    return escrow_pb2.Trade(
        id=u(U128_MAX - 1), buyer_account_id=u(1 << 64), seller_account_id=u(3), amount=U64_MAX, ledger=5,
        fee_bps=10_000, ship_by_timeout_s=6, auto_confirm_timeout_s=7, user_data_128=u((1 << 127) + 8),
        user_data_64=9, user_data_32=10, state=escrow_pb2.TRADE_STATE_DISPUTED,
        state_before_dispute=escrow_pb2.TRADE_STATE_SHIPPED, closed_by=escrow_pb2.TRADE_CLOSED_BY_REFUNDED,
        version=11, held=12, refunded=13, released=14, fee=15, created_at=16, shipped_at=17, closed_at=18,
        timer=escrow_pb2.TRADE_TIMER_AUTO_CONFIRM, deadline=19, timer_remaining_ns=20, extended_s=21,
        dispute_opened=True,
        refunds=[escrow_pb2.TradeRefund(refund_id=u(22), amount=23), escrow_pb2.TradeRefund(refund_id=u(1 << 80),
                                                                                             amount=24)],
        extensions=[escrow_pb2.TradeExtension(extension_id=u(25), extend_by_s=26)],
        escrow_account_id=u(27), fee_account_id=u(U128_MAX),
    )  # fmt: skip


def test_a_trade_with_every_field_set_converts_to_a_trade_and_back() -> None:
    m = full_trade_proto()
    assert unset_fields(m) == []  # a new proto field must be added to the sample (and to Trade)
    t = trade_from_proto(escrow_pb2.Trade.FromString(m.SerializeToString()))
    assert t == Trade(
        U128_MAX - 1, buyer_account_id=1 << 64, seller_account_id=3, amount=U64_MAX, ledger=5, fee_bps=10_000,
        ship_by_timeout_s=6, auto_confirm_timeout_s=7, user_data_128=(1 << 127) + 8, user_data_64=9,
        user_data_32=10, state=TradeState.DISPUTED, state_before_dispute=TradeState.SHIPPED,
        closed_by=TradeClosedBy.REFUNDED, version=11, held=12, refunded=13, released=14, fee=15, created_at=16,
        shipped_at=17, closed_at=18, timer=TradeTimer.AUTO_CONFIRM, deadline=19, timer_remaining_ns=20,
        extended_s=21, dispute_opened=True, refunds=[(22, 23), (1 << 80, 24)], extensions=[(25, 26)],
        escrow_account_id=27, fee_account_id=U128_MAX,
    )  # fmt: skip
    assert isinstance(t.state, TradeState) and isinstance(t.closed_by, TradeClosedBy)
    assert isinstance(t.timer, TradeTimer) and isinstance(t.state_before_dispute, TradeState)
    assert trade_to_proto(t) == m


def test_trade_enum_values_newer_than_the_client_are_kept_as_ints() -> None:
    t = trade_from_proto(escrow_pb2.Trade(state=99, timer=7, closed_by=42))
    assert (t.state, t.timer, t.closed_by) == (99, 7, 42)
    assert trade_to_proto(t).state == 99


def test_new_trade_converts_every_field() -> None:
    t = NewTrade(
        U128_MAX, 1 << 64, 2, U64_MAX, 3, fee_bps=4, ship_by_timeout_s=5, auto_confirm_timeout_s=6,
        user_data_128=(1 << 100) + 7, user_data_64=8, user_data_32=9,
    )  # fmt: skip
    m = escrow_pb2.CreateTrade.FromString(_model.new_trade_to_proto(t).SerializeToString())
    assert unset_fields(m) == []
    assert m == escrow_pb2.CreateTrade(
        id=_model.u128_to_proto(U128_MAX), buyer_account_id=_model.u128_to_proto(1 << 64),
        seller_account_id=_model.u128_to_proto(2), amount=U64_MAX, ledger=3, fee_bps=4, ship_by_timeout_s=5,
        auto_confirm_timeout_s=6, user_data_128=_model.u128_to_proto((1 << 100) + 7), user_data_64=8, user_data_32=9,
    )  # fmt: skip
    assert tuple(f.name for f in m.DESCRIPTOR.fields) == _model._NEW_TRADE_FIELDS


def test_refund_resolution_and_extension_convert_every_field() -> None:
    refund = _model.refund_to_proto(Refund(U128_MAX, 1 << 64, U64_MAX))
    resolution = _model.resolution_to_proto(DisputeResolution(1 << 70, 5))
    extension = _model.extension_to_proto(Extension(3, U128_MAX - 1, 86400))
    ref = _model.trade_ref_to_proto(_model.TradeRef(1 << 90))
    assert [unset_fields(m) for m in (refund, resolution, extension, ref)] == [[], [], [], []]
    assert (_model.u128_from_proto(refund.trade_id), _model.u128_from_proto(refund.refund_id), refund.amount) == (
        U128_MAX, 1 << 64, U64_MAX,
    )  # fmt: skip
    assert (_model.u128_from_proto(resolution.trade_id), resolution.buyer_amount) == (1 << 70, 5)
    assert (_model.u128_from_proto(extension.extension_id), extension.extend_by_s) == (U128_MAX - 1, 86400)
    assert _model.u128_from_proto(extension.trade_id) == 3
    assert _model.u128_from_proto(ref.trade_id) == 1 << 90


def test_frames_of_every_escrow_write_concatenate_into_its_request() -> None:
    cases = [
        (_core.CREATE_TRADES, [new_trade(i + 1) for i in range(3)], escrow_pb2.CreateTradesRequest, "trades"),
        (_core.SHIP_TRADES, _core.trade_refs([1, 2, U128_MAX]), escrow_pb2.TradeIdsRequest, "trades"),
        (_core.REFUND_TRADES, [Refund(1, 2, 3), Refund(4, 5, 6)], escrow_pb2.RefundTradesRequest, "refunds"),
        (_core.RESOLVE_DISPUTES, [DisputeResolution(7, 8)], escrow_pb2.ResolveDisputesRequest, "resolutions"),
        (_core.EXTEND_TRADES, [Extension(9, 10, 11)], escrow_pb2.ExtendTradesRequest, "extensions"),
    ]
    for op, items, request_cls, name in cases:
        frames, keys, ids, units = _core.encode_items(op, items)
        req = request_cls.FromString(b"".join(frames))
        assert list(getattr(req, name)) == [op.to_proto(it) for it in items]
        assert keys == ids == [op.ident(it) for it in items]
        assert units == [(k, k + 1) for k in range(len(items))]  # escrow items never chain


def test_new_trade_requires_both_timeouts_as_keywords() -> None:
    with pytest.raises(TypeError):
        NewTrade(1, 2, 3, 4, 5, ship_by_timeout_s=60)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        NewTrade(1, 2, 3, 4, 5, auto_confirm_timeout_s=60)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        NewTrade(1, 2, 3, 4, 5, 0, 60, 60)  # type: ignore[misc]
    t = NewTrade(1, 2, 3, 4, 5, ship_by_timeout_s=60, auto_confirm_timeout_s=70)
    assert (t.fee_bps, t.user_data_128, t.user_data_64, t.user_data_32) == (0, 0, 0, 0)


def test_escrow_enums_match_the_proto() -> None:
    codes = escrow_pb2.TradeResultCode.DESCRIPTOR.values
    want = {v.name.removeprefix("TRADE_RESULT_").lower(): v.number for v in codes}
    assert {m.name: m.value for m in TradeResultCode} == want
    assert TradeResultCode.transfer_failed == escrow_pb2.TRADE_RESULT_TRANSFER_FAILED
    for cls, desc, prefix in (
        (TradeState, escrow_pb2.TradeState.DESCRIPTOR, "TRADE_STATE_"),
        (TradeTimer, escrow_pb2.TradeTimer.DESCRIPTOR, "TRADE_TIMER_"),
        (TradeClosedBy, escrow_pb2.TradeClosedBy.DESCRIPTOR, "TRADE_CLOSED_BY_"),
        (TradeRole, escrow_pb2.TradeRole.DESCRIPTOR, "TRADE_ROLE_"),
    ):
        assert {k: int(v) for k, v in cls.__members__.items()} == {
            v.name.removeprefix(prefix): v.number for v in desc.values
        }
    assert (TradeRole.BUYER, TradeRole.SELLER) == (0, 1)


def test_trade_result_is_ok_when_applied_now_or_before() -> None:
    assert TradeResult(0, 1, TradeResultCode.ok).ok and TradeResult(0, 1, TradeResultCode.exists).ok
    assert not TradeResult(0, 1, TradeResultCode.transfer_failed, CreateTransferResult.exceeds_credits).ok
    with pytest.raises(AttributeError):
        TradeResult(0, 1, TradeResultCode.ok).index = 2  # type: ignore[misc]

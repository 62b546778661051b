"""The escrow (trades) API of AsyncClient against the in-process fake cluster: the key cases of the sync tests."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import grpc
import pytest

from tidebank.client import (
    AsyncClient,
    CreateTransferResult,
    DisputeResolution,
    Extension,
    InvalidRequestError,
    NewTrade,
    OutcomeUnknownError,
    Refund,
    TradeResult,
    TradeResultCode,
    TradeRole,
    TradeState,
    UnavailableError,
)
from tidebank.client.testing import INVALID_MARK, FakeCluster

T = TypeVar("T")
BUYER, SELLER = 900_001, 900_002


@pytest.fixture
def fc() -> Iterator[FakeCluster]:
    with FakeCluster(nodes=3, shards=2) as cluster:
        yield cluster


def run(fc: FakeCluster, body: Callable[[AsyncClient], Awaitable[T]], **kw: Any) -> T:
    kw.setdefault("timeout_s", 2.0)
    kw.setdefault("attempt_timeout_s", 0.5)

    async def main() -> T:
        async with AsyncClient(fc.addresses, tls=fc.tls, **kw) as c:
            return await body(c)

    return asyncio.run(main())


def new_trade(tid: int, buyer: int = BUYER, seller: int = SELLER, amount: int = 100, **kw: Any) -> NewTrade:
    kw.setdefault("ship_by_timeout_s", 3600)
    kw.setdefault("auto_confirm_timeout_s", 7 * 86400)
    return NewTrade(tid, buyer, seller, amount, 1, **kw)


def interleaved(fc: FakeCluster, n: int) -> list[int]:
    a, b = fc.ids_on_shard(0, n), fc.ids_on_shard(1, n)
    return [x for pair in zip(a, b, strict=True) for x in pair][:n]


ACTIONS: dict[str, Callable[[AsyncClient, list[int]], Awaitable[list[TradeResult]]]] = {
    "ShipTrades": lambda c, ids: c.ship_trades(ids),
    "ConfirmTrades": lambda c, ids: c.confirm_trades(ids),
    "OpenDisputes": lambda c, ids: c.open_disputes(ids),
    "WithdrawDisputes": lambda c, ids: c.withdraw_disputes(ids),
    "RefundTrades": lambda c, ids: c.refund_trades([Refund(t, t + 1, 10) for t in ids]),
    "ResolveDisputes": lambda c, ids: c.resolve_disputes([DisputeResolution(t, 10) for t in ids]),
    "ExtendTrades": lambda c, ids: c.extend_trades([Extension(t, t + 1, 60) for t in ids]),
}


# --------------------------------------------------------------------------- routing


@pytest.mark.parametrize("method", ["CreateTrades", *ACTIONS])
def test_each_write_goes_to_the_leader_of_the_trade_ids_shard(fc: FakeCluster, method: str) -> None:
    ids = interleaved(fc, 6)
    buyer, seller = fc.ids_on_shard(1, 2, start=10_000)  # not the routing key

    async def body(c: AsyncClient) -> list[TradeResult]:
        created = await c.create_trades([new_trade(t, buyer, seller) for t in ids])
        return created if method == "CreateTrades" else await ACTIONS[method](c, ids)

    results = run(fc, body)
    assert [(r.index, r.trade_id, r.status) for r in results] == [(k, t, TradeResultCode.ok) for k, t in enumerate(ids)]
    calls = fc.ledger_calls(method)
    assert len(calls) == 2
    for call in calls:
        (sid,) = call.shard_ids
        assert (call.node, call.outcome) == (fc.leaders[sid], "OK")
        assert call.ids == [t for t in ids if fc.shard_of(t) == sid]


def test_single_item_calls_return_one_result_of_their_trade(fc: FakeCluster) -> None:
    tid = fc.ids_on_shard(0, 1)[0]

    async def body(c: AsyncClient) -> list[TradeResult]:
        return [
            await c.create_trade(new_trade(tid)),
            await c.create_trade(new_trade(tid)),
            await c.ship_trade(tid),
            await c.refund_trade(tid, 5, 10),
            await c.refund_trade(tid, 5, 10),
            await c.extend_trade(tid, 6, 60),
            await c.open_dispute(tid),
            await c.withdraw_dispute(tid),
            await c.resolve_dispute(tid, 20),
            await c.confirm_trade(tid),
        ]

    got = run(fc, body)
    assert [r.status.name for r in got] == [
        "ok", "exists", "ok", "ok", "exists", "ok", "ok", "ok", "ok", "ok",
    ]  # fmt: skip
    assert all((r.index, r.trade_id) == (0, tid) for r in got)


# --------------------------------------------------------------------------- coalescing


def test_concurrent_single_create_trade_coroutines_coalesce_into_few_rpcs(fc: FakeCluster) -> None:
    fc.delay_s = 0.02
    ids = fc.ids_on_shard(0, 64)
    fc.trade_results[ids[3]] = TradeResultCode.account_closed

    async def body(c: AsyncClient) -> list[Any]:
        await c.shard_map()
        return await asyncio.gather(*(c.create_trade(new_trade(t)) for t in ids), return_exceptions=True)

    out = run(fc, body)
    for k, r in enumerate(out):
        assert isinstance(r, TradeResult), r
        assert (r.index, r.trade_id) == (0, ids[k])
        assert r.status == (TradeResultCode.account_closed if k == 3 else TradeResultCode.ok)
    calls = fc.ledger_calls("CreateTrades")
    assert len(calls) <= 8, [len(c.ids) for c in calls]
    assert sorted(t for c in calls for t in c.ids) == sorted(ids)


def test_concurrent_calls_of_different_actions_never_share_an_rpc(fc: FakeCluster) -> None:
    ids = fc.ids_on_shard(1, 30)
    to_ship, to_confirm, to_extend = ids[:10], ids[10:20], ids[20:]

    async def body(c: AsyncClient) -> list[Any]:
        await c.create_trades([new_trade(t) for t in ids])
        fc.delay_s = 0.02
        return await asyncio.gather(
            *(c.ship_trade(t) for t in to_ship),
            *(c.confirm_trade(t) for t in to_confirm),
            *(c.extend_trade(t, 1, 60) for t in to_extend),
        )

    out = run(fc, body)
    assert all(r.status == TradeResultCode.ok for r in out)
    for method, want in (("ShipTrades", to_ship), ("ConfirmTrades", to_confirm), ("ExtendTrades", to_extend)):
        rpcs = fc.ledger_calls(method)
        assert sorted(t for rpc in rpcs for t in rpc.ids) == sorted(want)
        assert len(rpcs) < 10


# --------------------------------------------------------------------------- leaders, retries, outcomes


def test_not_leader_is_retried_at_the_named_leader_with_the_same_items(fc: FakeCluster) -> None:
    ids = fc.ids_on_shard(0, 3)
    fc.set_leader(0, "node2", in_map=False)  # the client's map still says node1
    results = run(fc, lambda c: c.create_trades([new_trade(t) for t in ids]))
    assert [r.status for r in results] == [TradeResultCode.ok] * 3
    calls = fc.ledger_calls("CreateTrades")
    assert [(c.node, c.outcome) for c in calls] == [("node1", "UNAVAILABLE"), ("node2", "OK")]
    assert all(c.ids == ids for c in calls)


def test_no_leader_is_retried_until_it_succeeds_with_the_same_items(fc: FakeCluster) -> None:
    tid = fc.ids_on_shard(1, 1)[0]

    async def body(c: AsyncClient) -> TradeResult:
        await c.create_trade(new_trade(tid))
        fc.fail("ShipTrades", reason="NO_LEADER", times=2)
        return await c.ship_trade(tid)

    assert run(fc, body).status == TradeResultCode.ok
    calls = fc.ledger_calls("ShipTrades")
    assert [c.outcome for c in calls[:2]] == ["UNAVAILABLE"] * 2 and calls[-1].outcome == "OK"
    assert all(c.ids == [tid] for c in calls)


def test_ambiguous_failure_past_the_deadline_raises_outcome_unknown(fc: FakeCluster) -> None:
    tid = fc.ids_on_shard(1, 1)[0]

    async def body(c: AsyncClient) -> None:
        await c.create_trade(new_trade(tid))
        fc.fail("RefundTrades", code=None, delay_s=0.3, times=-1)
        await c.refund_trade(tid, 9, 50)

    with pytest.raises(OutcomeUnknownError) as ei:
        run(fc, body, timeout_s=0.6, attempt_timeout_s=0.15)
    assert ei.value.ids == [tid] and ei.value.results == [None]
    assert "refund_trades" in str(ei.value)
    calls = fc.ledger_calls("RefundTrades")
    assert len(calls) >= 2 and all(c.ids == [tid] for c in calls)


def test_lost_answer_is_retried_and_answers_exists(fc: FakeCluster) -> None:
    tid = fc.ids_on_shard(0, 1)[0]
    fc.fail("CreateTrades", code=grpc.StatusCode.DEADLINE_EXCEEDED, apply=True)
    r = run(fc, lambda c: c.create_trade(new_trade(tid)))
    assert r.status == TradeResultCode.exists and r.ok


def test_no_leader_until_the_deadline_is_unavailable(fc: FakeCluster) -> None:
    fc.fail("OpenDisputes", reason="NO_LEADER", times=-1)
    with pytest.raises(UnavailableError) as ei:
        run(fc, lambda c: c.open_disputes([3, 4]), timeout_s=0.3)
    assert ei.value.ids == [3, 4]


# --------------------------------------------------------------------------- results and validation


def test_transfer_failed_result_carries_the_transfer_status(fc: FakeCluster) -> None:
    a, b = fc.ids_on_shard(0, 2)
    fc.trade_results[b] = (TradeResultCode.transfer_failed, CreateTransferResult.exceeds_debits)
    ra, rb = run(fc, lambda c: c.create_trades([new_trade(a), new_trade(b)]))
    assert (ra.status, ra.transfer_status) == (TradeResultCode.ok, None)
    assert (rb.status, rb.transfer_status) == (TradeResultCode.transfer_failed, CreateTransferResult.exceeds_debits)
    assert not rb.ok


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda c: c.create_trades([new_trade(1), new_trade(2, amount=-1)]), "trades[1].amount"),
        (lambda c: c.create_trade(new_trade(1, seller=None)), "trades[0].seller_account_id"),
        (lambda c: c.ship_trades([1, -1]), "trades[1].trade_id"),
        (lambda c: c.refund_trade(1, 2, -3), "refunds[0].amount"),
        (lambda c: c.resolve_dispute("1", 5), "resolutions[0].trade_id"),
        (lambda c: c.extend_trade(1, -2, 60), "extensions[0].extension_id"),
        (lambda c: c.lookup_trades([-1]), "ids[0]"),
        (lambda c: c.list_trades(-1), "account_id"),
    ],
)
def test_client_side_validation_names_the_field_and_sends_nothing(
    fc: FakeCluster, call: Callable[[AsyncClient], Awaitable[Any]], field: str
) -> None:
    with pytest.raises(InvalidRequestError) as ei:
        run(fc, call)
    assert [v.field for v in ei.value.field_violations] == [field]
    assert fc.calls == []


def test_coalesced_invalid_item_fails_only_its_caller(fc: FakeCluster) -> None:
    fc.delay_s = 0.02
    ids = fc.ids_on_shard(0, 10)

    def item(k: int) -> NewTrade:
        return new_trade(ids[k], user_data_32=INVALID_MARK if k == 2 else 0)

    async def body(c: AsyncClient) -> list[Any]:
        await c.shard_map()
        return await asyncio.gather(*(c.create_trade(item(k)) for k in range(10)), return_exceptions=True)

    out = run(fc, body)
    assert isinstance(out[2], InvalidRequestError)
    assert [v.field for v in out[2].field_violations] == ["trades[0].user_data_32"]
    assert all(r.ok for k, r in enumerate(out) if k != 2)


# --------------------------------------------------------------------------- reads


def test_lookup_trades_keeps_request_order(fc: FakeCluster) -> None:
    ids = interleaved(fc, 4)

    async def body(c: AsyncClient) -> Any:
        await c.create_trades([new_trade(t, amount=10 + k) for k, t in enumerate(ids)])
        return await c.lookup_trades([ids[3], 777_777, ids[0]])

    got = run(fc, body)
    assert [(t.id, t.amount, t.state) for t in got] == [(ids[3], 13, TradeState.PAID), (ids[0], 10, TradeState.PAID)]


def test_list_trades_and_iter_trades_page_through_everything(fc: FakeCluster) -> None:
    buyer, seller = fc.ids_on_shard(1, 2, start=50_000)
    ids = interleaved(fc, 9)

    async def body(c: AsyncClient) -> Any:
        for t in ids:  # one by one: list order is creation order
            await c.create_trade(new_trade(t, buyer, seller))
        first = await c.list_trades(buyer, limit=4)
        walked = [t.id async for t in c.iter_trades(seller, role=TradeRole.SELLER, limit=4)]
        none = [t.id async for t in c.iter_trades(seller)]
        return first, walked, none

    first, walked, none = run(fc, body)
    assert [t.id for t in first.items] == ids[:4] and first.next_page_token
    assert walked == ids and none == []

"""AsyncClient against the in-process fake cluster: the key cases of the sync tests."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import grpc
import pytest

from tidebank.client import (
    Account,
    AsyncClient,
    ClientClosedError,
    CreateAccountResult,
    CreateTransferResult,
    InvalidRequestError,
    OutcomeUnknownError,
    Transfer,
    TransferFlags,
    UnavailableError,
)
from tidebank.client.testing import INVALID_MARK, FakeCluster

L = TransferFlags.LINKED
T = TypeVar("T")


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


def transfer(tid: int, debit: int, credit: int = 999_999, flags: int = 0) -> Transfer:
    return Transfer(tid, debit_account_id=debit, credit_account_id=credit, amount=1, ledger=1, code=1, flags=flags)


def test_routes_by_shard_and_merges_in_request_order(fc: FakeCluster) -> None:
    a, b = fc.ids_on_shard(0, 5), fc.ids_on_shard(1, 5)
    ids = [x for pair in zip(a, b, strict=True) for x in pair]
    fc.results[ids[4]] = CreateAccountResult.exists_with_different_code

    async def body(c: AsyncClient) -> Any:
        results = await c.create_accounts([Account(i, ledger=1, code=1) for i in ids])
        found = await c.lookup_accounts([ids[7], 424242, ids[2]])
        return results, found, await c.shard_map()

    results, found, smap = run(fc, body)
    assert [(r.index, r.id) for r in results] == list(enumerate(ids))
    assert results[4].status == CreateAccountResult.exists_with_different_code
    assert all(r.ok for k, r in enumerate(results) if k != 4)
    assert [x.id for x in found] == [ids[7], ids[2]]
    assert smap.version == fc.map_version and len(smap.shards) == 2
    for call in fc.ledger_calls("CreateAccounts"):
        assert call.node == fc.leaders[call.shard_ids[0]]


def test_linked_chains_travel_whole(fc: FakeCluster) -> None:
    s0, s1 = fc.ids_on_shard(0, 4), fc.ids_on_shard(1, 4)
    items = [
        transfer(1, s1[0], flags=L),
        transfer(2, s0[0], flags=L),
        transfer(3, s0[1]),
        transfer(4, s0[2]),
        transfer(5, s1[1], flags=L),
        transfer(6, s1[2]),
    ]
    results = run(fc, lambda c: c.create_transfers(items), max_batch_items=3)
    assert [r.status for r in results] == [CreateTransferResult.created] * 6
    holders = {tuple(c.ids) for c in fc.ledger_calls("CreateTransfers")}
    assert (1, 2, 3) in holders and any(h[-2:] == (5, 6) or h[:2] == (5, 6) for h in holders)


def test_not_leader_hint_and_no_leader(fc: FakeCluster) -> None:
    fc.set_leader(0, "node2", in_map=False)
    fc.fail("CreateTransfers", reason="NO_LEADER", times=1)
    debit = fc.ids_on_shard(0, 1)[0]
    (r,) = run(fc, lambda c: c.create_transfers([transfer(9, debit)]))
    assert r.status == CreateTransferResult.created
    calls = fc.ledger_calls("CreateTransfers")
    assert calls[-1].node == "node2" and calls[-1].outcome == "OK"
    assert all(c.ids == [9] for c in calls)
    assert [c.outcome for c in calls][:-1] == ["UNAVAILABLE"] * (len(calls) - 1)


def test_deadline_then_outcome_unknown(fc: FakeCluster) -> None:
    fc.fail("CreateTransfers", code=None, delay_s=0.3, times=-1)
    with pytest.raises(OutcomeUnknownError) as ei:
        run(fc, lambda c: c.create_transfers([transfer(11, 1), transfer(12, 1)]), timeout_s=0.6, attempt_timeout_s=0.15)
    assert ei.value.ids == [11, 12]
    calls = fc.ledger_calls("CreateTransfers")
    assert len(calls) >= 2 and all(c.ids == [11, 12] for c in calls)


def test_no_leader_until_deadline_is_unavailable(fc: FakeCluster) -> None:
    fc.fail("CreateAccounts", reason="NO_LEADER", times=-1)
    with pytest.raises(UnavailableError) as ei:
        run(fc, lambda c: c.create_accounts([Account(1, ledger=1, code=1)]), timeout_s=0.3)
    assert ei.value.ids == [1]


def test_lost_answer_reports_exists(fc: FakeCluster) -> None:
    fc.fail("CreateTransfers", code=grpc.StatusCode.DEADLINE_EXCEEDED, apply=True)
    (r,) = run(fc, lambda c: c.create_transfers([transfer(13, 1)]))
    assert r.status == CreateTransferResult.exists


def test_invalid_argument(fc: FakeCluster) -> None:
    debit = fc.ids_on_shard(1, 1)[0]
    items = [transfer(1, debit), transfer(2, debit)]
    items[1].user_data_32 = INVALID_MARK
    with pytest.raises(InvalidRequestError) as ei:
        run(fc, lambda c: c.create_transfers(items))
    assert [v.field for v in ei.value.field_violations] == ["transfers[1].user_data_32"]


def test_coalescing_64_coroutines(fc: FakeCluster) -> None:
    fc.delay_s = 0.02
    debit = fc.ids_on_shard(0, 1)[0]
    fc.results[5003] = CreateTransferResult.exceeds_debits

    async def body(c: AsyncClient) -> list[Any]:
        await c.shard_map()
        return await asyncio.gather(
            *(c.create_transfers([transfer(5000 + k, debit)]) for k in range(64)), return_exceptions=True
        )

    out = run(fc, body)
    for k, res in enumerate(out):
        (r,) = res
        assert (r.index, r.id) == (0, 5000 + k)
        assert r.status == (CreateTransferResult.exceeds_debits if k == 3 else CreateTransferResult.created)
    calls = fc.ledger_calls("CreateTransfers")
    assert len(calls) <= 8, [len(c.ids) for c in calls]


def test_coalesced_invalid_fails_only_its_caller(fc: FakeCluster) -> None:
    fc.delay_s = 0.02
    debit = fc.ids_on_shard(0, 1)[0]

    def items(k: int) -> list[Transfer]:
        t = transfer(6000 + k, debit)
        if k == 2:
            t.user_data_32 = INVALID_MARK
        return [t]

    async def body(c: AsyncClient) -> list[Any]:
        await c.shard_map()
        return await asyncio.gather(*(c.create_transfers(items(k)) for k in range(10)), return_exceptions=True)

    out = run(fc, body)
    assert isinstance(out[2], InvalidRequestError)
    assert out[2].field_violations[0].field == "transfers[0].user_data_32"
    assert all(res[0].ok for k, res in enumerate(out) if k != 2)


def test_queue_bound(fc: FakeCluster) -> None:
    debit = fc.ids_on_shard(1, 1)[0]

    async def body(c: AsyncClient) -> list[Any]:
        return await asyncio.gather(
            *(c.create_transfers([transfer(100 * (k + 1) + j, debit) for j in range(3)]) for k in range(20))
        )

    out = run(fc, body, max_in_flight_per_shard=1, max_queued_items_per_shard=4)
    assert all([r.ok for r in res] == [True] * 3 for res in out)
    assert max(len(c.ids) for c in fc.ledger_calls("CreateTransfers")) <= 4


def test_pagination(fc: FakeCluster) -> None:
    a, b = fc.ids_on_shard(1, 2)

    async def body(c: AsyncClient) -> Any:
        await c.create_transfers([transfer(i, a, b) for i in range(1, 13)])
        first = await c.get_account_transfers(a, limit=5)
        every = [t.id async for t in c.iter_account_transfers(a, limit=5)]
        looked = await c.lookup_transfers([3, 99, 1])
        return first, every, looked

    first, every, looked = run(fc, body)
    assert [t.id for t in first.items] == [1, 2, 3, 4, 5] and first.next_page_token
    assert every == list(range(1, 13))
    assert [t.id for t in looked] == [3, 1]


def test_close(fc: FakeCluster) -> None:
    async def main() -> None:
        c = AsyncClient(fc.addresses, tls=fc.tls, timeout_s=2.0)  # constructed outside any RPC: channels open lazily
        await c.create_accounts([Account(1, ledger=1, code=1)])
        await c.close()
        await c.close()
        with pytest.raises(ClientClosedError):
            await c.create_accounts([Account(2, ledger=1, code=1)])

    asyncio.run(main())


def test_cancelled_caller_withdraws_its_queued_items(fc: FakeCluster) -> None:
    fc.delay_s = 0.2
    debit = fc.ids_on_shard(0, 1)[0]

    async def body(c: AsyncClient) -> None:
        await c.shard_map()
        first = asyncio.ensure_future(c.create_transfers([transfer(1, debit)]))
        second = asyncio.ensure_future(c.create_transfers([transfer(2, debit)]))
        await asyncio.sleep(0.01)
        third = asyncio.ensure_future(c.create_transfers([transfer(3, debit)]))  # queued behind two RPCs
        await asyncio.sleep(0.01)
        third.cancel()
        assert [r.ok for r in await first] == [True]
        assert [r.ok for r in await second] == [True]
        with pytest.raises(asyncio.CancelledError):
            await third

    run(fc, body)
    assert sorted(i for c in fc.ledger_calls("CreateTransfers") for i in c.ids) == [1, 2]

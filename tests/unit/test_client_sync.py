"""The blocking Client against an in-process fake cluster (tidebank.client.testing)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc
import pytest

from tidebank.client import (
    Account,
    Client,
    ClientClosedError,
    CreateAccountResult,
    CreateTransferResult,
    InvalidRequestError,
    OutcomeUnknownError,
    ReadConsistency,
    Transfer,
    TransferFlags,
    UnavailableError,
)
from tidebank.client.testing import INVALID_MARK, FakeCluster

L = TransferFlags.LINKED


@pytest.fixture
def fc() -> Iterator[FakeCluster]:
    with FakeCluster(nodes=3, shards=2) as cluster:
        yield cluster


def client(fc: FakeCluster, **kw: object) -> Client:
    kw.setdefault("timeout_s", 2.0)
    kw.setdefault("attempt_timeout_s", 0.5)
    return Client(fc.addresses, tls=fc.tls, **kw)  # type: ignore[arg-type]


def transfer(tid: int, debit: int, credit: int = 999_999, flags: int = 0, **kw: int) -> Transfer:
    return Transfer(
        tid, debit_account_id=debit, credit_account_id=credit, amount=1, ledger=1, code=1, flags=flags, **kw
    )


def interleaved(fc: FakeCluster, n: int) -> list[int]:
    """n ids alternating between shard 0 and shard 1."""
    a, b = fc.ids_on_shard(0, n), fc.ids_on_shard(1, n)
    return [x for pair in zip(a, b, strict=True) for x in pair][:n]


# --------------------------------------------------------------------------- routing


def test_routes_by_shard_and_merges_in_request_order(fc: FakeCluster) -> None:
    ids = interleaved(fc, 10)
    fc.results[ids[3]] = CreateAccountResult.exists_with_different_flags
    with client(fc) as c:
        results = c.create_accounts([Account(i, ledger=1, code=1) for i in ids])
    assert [(r.index, r.id) for r in results] == list(enumerate(ids))
    assert [r.status for r in results] == [
        CreateAccountResult.exists_with_different_flags if i == 3 else CreateAccountResult.created for i in range(10)
    ]
    assert not results[3].ok and results[0].ok
    calls = fc.ledger_calls("CreateAccounts")
    assert len(calls) == 2 and all(c.outcome == "OK" for c in calls)
    for call in calls:
        (sid,) = call.shard_ids
        assert call.node == fc.leaders[sid]
        assert call.ids == [i for i in ids if fc.shard_of(i) == sid]


def test_accepts_a_comma_separated_string_and_skips_a_dead_seed(fc: FakeCluster) -> None:
    with Client("127.0.0.1:1, " + ",".join(fc.addresses), tls=fc.tls, timeout_s=2.0) as c:
        assert c.addresses[0] == "127.0.0.1:1"
        assert c.create_accounts([Account(7, ledger=1, code=1)])[0].ok
        smap = c.shard_map()
    assert smap.slot_count == fc.slot_count and len(smap.shards) == 2
    assert smap.shards[0].leader_address == fc.address_of[fc.leaders[0] or ""]
    assert {r.node for r in smap.shards[1].replicas} == set(fc.node_names)


def test_linked_chains_travel_whole(fc: FakeCluster) -> None:
    s0, s1 = fc.ids_on_shard(0, 20), fc.ids_on_shard(1, 20)
    items = [
        transfer(1, s0[0]),
        transfer(2, s1[0], flags=L),  # chain 2..4 goes with its first item to shard 1
        transfer(3, s0[1], flags=L),
        transfer(4, s0[2]),
        transfer(5, s0[3], flags=L),  # chain 5..7 on shard 0
        transfer(6, s1[1], flags=L),
        transfer(7, s1[2]),
        transfer(8, s1[3]),
        transfer(9, s0[4], flags=L),  # chain 9..10
        transfer(10, s0[5]),
        transfer(11, s0[6]),
    ]
    with client(fc, max_batch_items=4) as c:
        results = c.create_transfers(items)
    assert [r.status for r in results] == [CreateTransferResult.created] * len(items)
    chains = [[2, 3, 4], [5, 6, 7], [9, 10]]
    calls = fc.ledger_calls("CreateTransfers", ok=True)
    for chain in chains:
        holders = [c.ids for c in calls if chain[0] in c.ids]
        assert len(holders) == 1
        k = holders[0].index(chain[0])
        assert holders[0][k : k + len(chain)] == chain
    assert all(len(c.ids) <= 4 for c in calls)


def test_chain_longer_than_the_batch_limit_is_refused_before_sending(fc: FakeCluster) -> None:
    items = [transfer(i, 5, flags=L) for i in range(1, 6)] + [transfer(6, 5)]
    with client(fc, max_batch_items=5) as c, pytest.raises(InvalidRequestError, match="linked chain"):
        c.create_transfers(items)
    assert fc.ledger_calls("CreateTransfers") == []


def test_large_call_is_split_and_sent_in_order(fc: FakeCluster) -> None:
    debit = fc.ids_on_shard(0, 1)[0]
    with client(fc, max_batch_items=10) as c:
        results = c.create_transfers([transfer(i, debit) for i in range(1, 26)])
    assert [r.id for r in results] == list(range(1, 26))
    assert [c.ids for c in fc.ledger_calls("CreateTransfers")] == [
        list(range(1, 11)),
        list(range(11, 21)),
        list(range(21, 26)),
    ]


# --------------------------------------------------------------------------- leaders and retries


def test_not_leader_with_hint_goes_to_the_leader(fc: FakeCluster) -> None:
    fc.set_leader(0, "node3", in_map=False)  # the map still says node1
    debit = fc.ids_on_shard(0, 1)[0]
    with client(fc) as c:
        assert c.create_transfers([transfer(1, debit)])[0].status == CreateTransferResult.created
        assert c.create_transfers([transfer(2, debit)])[0].ok  # the hint sticks
    calls = fc.ledger_calls("CreateTransfers")
    assert [(c.node, c.outcome) for c in calls] == [("node1", "UNAVAILABLE"), ("node3", "OK"), ("node3", "OK")]
    assert calls[0].ids == calls[1].ids == [1]
    assert len(fc.ledger_calls("GetShardMap")) == 1


def test_not_leader_without_hint_refreshes_the_map(fc: FakeCluster) -> None:
    fc.hint = False
    debit = fc.ids_on_shard(0, 1)[0]
    with client(fc) as c:
        c.create_transfers([transfer(1, debit)])
        fc.set_leader(0, "node2")  # leader moves; the client's cached map is now stale
        assert c.create_transfers([transfer(2, debit)])[0].ok
    calls = fc.ledger_calls("CreateTransfers")
    assert [(c.node, c.outcome) for c in calls] == [("node1", "OK"), ("node1", "UNAVAILABLE"), ("node2", "OK")]
    assert len(fc.ledger_calls("GetShardMap")) == 2


def test_no_leader_then_success(fc: FakeCluster) -> None:
    fc.fail("CreateTransfers", reason="NO_LEADER", metadata={"shard_id": "0"}, times=2)
    with client(fc) as c:
        (r,) = c.create_transfers([transfer(42, fc.ids_on_shard(0, 1)[0])])
    assert r.status == CreateTransferResult.created
    calls = fc.ledger_calls("CreateTransfers")
    # Two NO_LEADER answers; after each the client may also try another replica (which names the
    # leader) before succeeding. Every attempt carries the same id.
    assert calls[-1].outcome == "OK"
    assert all(c.outcome == "UNAVAILABLE" for c in calls[:-1]) and 2 <= len(calls) - 1 <= 4
    assert all(c.ids == [42] for c in calls)


def test_overloaded_backs_off_and_retries(fc: FakeCluster) -> None:
    fc.fail("CreateAccounts", code=grpc.StatusCode.RESOURCE_EXHAUSTED, reason="OVERLOADED", times=2)
    with client(fc) as c:
        assert c.create_accounts([Account(3, ledger=1, code=1)])[0].ok
    assert [c.outcome for c in fc.ledger_calls("CreateAccounts")] == ["RESOURCE_EXHAUSTED"] * 2 + ["OK"]


def test_no_leader_until_the_deadline_is_unavailable(fc: FakeCluster) -> None:
    fc.fail("CreateTransfers", reason="NO_LEADER", times=-1)
    with client(fc, timeout_s=0.3) as c, pytest.raises(UnavailableError) as ei:
        c.create_transfers([transfer(5, 1), transfer(6, 1)])
    assert ei.value.ids == [5, 6] and ei.value.results == [None, None]
    assert ei.value.reason == "NO_LEADER"
    assert len(fc.ledger_calls("CreateTransfers")) >= 3


def test_deadline_retries_same_ids_then_outcome_unknown(fc: FakeCluster) -> None:
    fc.fail("CreateTransfers", code=None, delay_s=0.3, times=-1)  # slow, and applies after the client gave up
    with client(fc, timeout_s=0.7, attempt_timeout_s=0.15) as c, pytest.raises(OutcomeUnknownError) as ei:
        c.create_transfers([transfer(77, 1)])
    assert ei.value.ids == [77]
    calls = fc.ledger_calls("CreateTransfers")
    assert len(calls) >= 2 and all(c.ids == [77] for c in calls)


def test_connection_failure_until_the_deadline_is_outcome_unknown(fc: FakeCluster) -> None:
    fc.fail("CreateTransfers", code=grpc.StatusCode.UNAVAILABLE, times=-1)
    with client(fc, timeout_s=0.3) as c, pytest.raises(OutcomeUnknownError):
        c.create_transfers([transfer(78, 1)])


def test_lost_answer_is_retried_and_reports_exists(fc: FakeCluster) -> None:
    fc.fail("CreateTransfers", code=grpc.StatusCode.UNAVAILABLE, apply=True, times=1)
    with client(fc) as c:
        (r,) = c.create_transfers([transfer(79, 1)])
    assert r.status == CreateTransferResult.exists and r.ok
    calls = fc.ledger_calls("CreateTransfers")
    assert len(calls) >= 2 and all(c.ids == [79] for c in calls)  # (maybe via another replica's hint)


def test_dead_leader_is_routed_around(fc: FakeCluster) -> None:
    fc.forward = True  # followers forward to the leader, like the real nodes
    debit = fc.ids_on_shard(0, 1)[0]
    with client(fc) as c:
        c.shard_map()
        fc.stop_node("node1")  # leader of shard 0 in the client's map
        (r,) = c.create_transfers([transfer(80, debit)])
    assert r.ok
    assert {c.node for c in fc.ledger_calls("CreateTransfers", ok=True)} <= {"node2", "node3"}


def test_invalid_argument_raises_with_field_violations_in_request_indexes(fc: FakeCluster) -> None:
    debits = interleaved(fc, 4)
    items = [transfer(i + 1, d) for i, d in enumerate(debits)]
    items[3].user_data_32 = INVALID_MARK  # 2nd item of its shard's sub-batch
    with client(fc) as c, pytest.raises(InvalidRequestError) as ei:
        c.create_transfers(items)
    assert [v.field for v in ei.value.field_violations] == ["transfers[3].user_data_32"]
    assert ei.value.code == grpc.StatusCode.INVALID_ARGUMENT
    # the other shard's items went through and are reported
    assert ei.value.results is not None
    assert [r.status if r else None for r in ei.value.results] == [
        CreateTransferResult.created,
        None,
        CreateTransferResult.created,
        None,
    ]


def test_client_side_validation_sends_nothing(fc: FakeCluster) -> None:
    with client(fc) as c:
        with pytest.raises(InvalidRequestError) as ei:
            c.create_transfers([transfer(1, 2), Transfer(2, debit_account_id=1, credit_account_id=2, amount=-1)])
        assert ei.value.field_violations[0].field == "transfers[1].amount"
        with pytest.raises(InvalidRequestError):
            c.lookup_accounts([-1])
    assert fc.calls == []


# --------------------------------------------------------------------------- coalescing


def run_threads(n: int, fn: object) -> list[object]:
    out: list[object] = [None] * n
    barrier = threading.Barrier(n)

    def run(k: int) -> None:
        barrier.wait()
        try:
            out[k] = fn(k)  # type: ignore[operator]
        except Exception as exc:  # noqa: BLE001
            out[k] = exc

    threads = [threading.Thread(target=run, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return out


def test_coalescing_64_threads_into_few_rpcs(fc: FakeCluster) -> None:
    fc.delay_s = 0.02  # like a Raft round trip: callers pile up behind it
    debit = fc.ids_on_shard(0, 1)[0]
    for k in range(0, 64, 3):
        fc.results[1000 + k] = CreateTransferResult.exceeds_credits
    with client(fc) as c:
        c.shard_map()
        out = run_threads(64, lambda k: c.create_transfers([transfer(1000 + k, debit)]))
    for k, res in enumerate(out):
        assert isinstance(res, list), res
        (r,) = res
        assert (r.index, r.id) == (0, 1000 + k)
        want = CreateTransferResult.exceeds_credits if k % 3 == 0 else CreateTransferResult.created
        assert r.status == want
    calls = fc.ledger_calls("CreateTransfers")
    assert len(calls) <= 12, [len(c.ids) for c in calls]
    assert sorted(i for c in calls for i in c.ids) == [1000 + k for k in range(64)]


def test_concurrent_lookups_are_coalesced_and_each_caller_gets_its_own_records(fc: FakeCluster) -> None:
    ids = fc.ids_on_shard(0, 64)
    with client(fc) as c:
        assert all(r.ok for r in c.create_accounts([Account(i, ledger=1, code=1) for i in ids]))
        fc.delay_s = 0.02  # callers pile up behind a lookup in flight
        missing = 1 << 100
        out = run_threads(64, lambda k: c.lookup_accounts([ids[k], missing] if k % 2 else [ids[k]]))
    assert [[a.id for a in res] for res in out] == [[i] for i in ids]
    calls = fc.ledger_calls("LookupAccounts")
    assert len(calls) <= 12, [len(c.ids) for c in calls]


def test_coalesced_callers_keep_their_chains_contiguous(fc: FakeCluster) -> None:
    fc.delay_s = 0.02
    debit = fc.ids_on_shard(1, 1)[0]

    def chain(k: int) -> list[object]:
        base = 10 * (k + 1)
        return c.create_transfers(
            [transfer(base, debit, flags=L), transfer(base + 1, debit, flags=L), transfer(base + 2, debit)]
        )

    with client(fc) as c:
        c.shard_map()
        out = run_threads(24, chain)
    for k, res in enumerate(out):
        assert [(r.index, r.id, r.status) for r in res] == [  # type: ignore[union-attr]
            (j, 10 * (k + 1) + j, CreateTransferResult.created) for j in range(3)
        ]
    calls = fc.ledger_calls("CreateTransfers")
    assert len(calls) < 24
    for call in calls:
        assert len(call.ids) % 3 == 0
        for j in range(0, len(call.ids), 3):
            base = call.ids[j]
            assert call.ids[j : j + 3] == [base, base + 1, base + 2]
            assert call.flags[j : j + 3] == [L, L, 0]


def test_coalesced_invalid_item_fails_only_its_caller(fc: FakeCluster) -> None:
    fc.delay_s = 0.02
    debit = fc.ids_on_shard(0, 1)[0]

    def send(k: int) -> object:
        t = transfer(2000 + k, debit)
        if k == 5:
            t.user_data_32 = INVALID_MARK
        return c.create_transfers([transfer(3000 + k, debit), t])

    with client(fc) as c:
        c.shard_map()
        out = run_threads(16, send)
    for k, res in enumerate(out):
        if k == 5:
            assert isinstance(res, InvalidRequestError)
            assert [v.field for v in res.field_violations] == ["transfers[1].user_data_32"]
        else:
            assert [r.status for r in res] == [CreateTransferResult.created] * 2  # type: ignore[union-attr]


def test_queue_bound_blocks_callers_and_drops_nothing(fc: FakeCluster) -> None:
    fc.delay_s = 0.005
    debit = fc.ids_on_shard(0, 1)[0]
    with client(fc, max_in_flight_per_shard=1, max_queued_items_per_shard=4) as c:
        c.shard_map()
        out = run_threads(20, lambda k: c.create_transfers([transfer(100 * (k + 1) + j, debit) for j in range(3)]))
    assert all(isinstance(r, list) and [x.ok for x in r] == [True] * 3 for r in out)
    calls = fc.ledger_calls("CreateTransfers")
    assert sorted(i for c in calls for i in c.ids) == sorted(100 * (k + 1) + j for k in range(20) for j in range(3))
    assert max(len(c.ids) for c in calls) <= 4


# --------------------------------------------------------------------------- reads


def test_lookups_split_by_shard_and_keep_request_order(fc: FakeCluster) -> None:
    ids = interleaved(fc, 8)
    with client(fc) as c:
        c.create_accounts([Account(i, ledger=1, code=7) for i in ids])
        want = [ids[5], ids[0], 123456789, ids[3], ids[6]]
        got = c.lookup_accounts(want)
        assert [a.id for a in got] == [ids[5], ids[0], ids[3], ids[6]]
        assert all(a.code == 7 and a.ledger == 1 and a.timestamp > 0 for a in got)
        stale = c.lookup_accounts(want, consistency=ReadConsistency.STALE)
        assert [a.id for a in stale] == [a.id for a in got]
        c.create_transfers([transfer(9, ids[0], ids[1])])
        assert [t.id for t in c.lookup_transfers([8, 9])] == [9]
        assert c.lookup_accounts([]) == []
    for call in fc.ledger_calls("LookupAccounts"):
        assert len(call.shard_ids) == 1


def test_lookup_retries_not_leader(fc: FakeCluster) -> None:
    fc.set_leader(1, "node1", in_map=False)
    ids = fc.ids_on_shard(1, 2)
    with client(fc) as c:
        c.create_accounts([Account(i, ledger=1, code=1) for i in ids])
        assert [a.id for a in c.lookup_accounts(ids)] == ids


def test_get_account_transfers_and_pagination(fc: FakeCluster) -> None:
    a, b = fc.ids_on_shard(0, 2)
    with client(fc) as c:
        c.create_transfers([transfer(i, a, b) for i in range(1, 26)])
        c.create_transfers([transfer(100, b, a)])
        page = c.get_account_transfers(a, limit=10)
        assert [t.id for t in page.items] == list(range(1, 11)) and page.next_page_token
        page2 = c.get_account_transfers(a, limit=10, page_token=page.next_page_token)
        assert [t.id for t in page2.items] == list(range(11, 21))
        everything = [t.id for t in c.iter_account_transfers(a, limit=10)]
        assert everything == list(range(1, 26)) + [100]
        assert [t.id for t in c.iter_account_transfers(a, limit=7, credits=False)] == list(range(1, 26))
        newest = c.get_account_transfers(a, limit=3, reversed=True)
        assert [t.id for t in newest.items] == [100, 25, 24]
        assert c.get_account_transfers(12345678, limit=5).items == []


# --------------------------------------------------------------------------- lifecycle


def test_close(fc: FakeCluster) -> None:
    c = client(fc)
    c.create_accounts([Account(1, ledger=1, code=1)])
    c.close()
    c.close()
    assert c.is_closed
    with pytest.raises(ClientClosedError):
        c.create_accounts([Account(2, ledger=1, code=1)])
    with pytest.raises(ClientClosedError):
        c.lookup_accounts([1])


def test_close_while_a_write_is_in_flight_is_outcome_unknown(fc: FakeCluster) -> None:
    fc.fail("CreateTransfers", code=None, delay_s=0.5)
    c = client(fc)
    c.shard_map()
    timer = threading.Timer(0.1, c.close)
    timer.start()
    with pytest.raises(OutcomeUnknownError):
        c.create_transfers([transfer(1, 1)])
    timer.join()


def test_empty_write_sends_nothing(fc: FakeCluster) -> None:
    with client(fc) as c:
        assert c.create_transfers([]) == []
    assert fc.calls == []

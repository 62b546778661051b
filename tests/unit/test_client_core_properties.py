"""Property tests of the client core (tidebank.client._core), without any network.

Routing: WriteCall.plan against random shard maps, items and linked chains.
Coalescing: QueueState under random pushes, cancellations, takes and finished RPCs.
Merging: settle_batch, LookupCall, and whole write programs of several concurrent
callers run by a single-threaded fake shell (``Sim``) that answers the coalesced
batches in an order hypothesis picks, fails some of them, and checks each request
the way a node would.

The expectations are computed here from the items themselves (chains from the
LINKED flags, shards from slot_of), not from the core's own bookkeeping.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tidebank.client import OutcomeUnknownError, TransferFlags, _core, _model
from tidebank.client._model import Replica, Shard, ShardMap, Transfer
from tidebank.common.keys import slot_of
from tidebank.v1 import ledger_pb2

L = int(TransferFlags.LINKED)
SLOTS = 32
PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def cfg(max_batch_items: int = 8189, max_in_flight: int = 2, timeout_s: float = 5.0) -> _core.Config:
    return _core.Config.make("a:1", timeout_s, max_batch_items, max_in_flight, 100_000, None, 0.01, 0.5, ())


def shard_map(owner: list[int | None]) -> ShardMap:
    """A map giving slot s to shard owner[s] (None: to no shard)."""
    shards = []
    for sid in sorted({o for o in owner if o is not None}):
        slots = tuple((s, s + 1) for s, o in enumerate(owner) if o == sid)
        replica = Replica(f"n{sid}", "dc", f"h{sid}:1")
        shards.append(Shard(sid, slots, (replica,), replica.node, replica.address))
    return ShardMap(version=1, slot_count=len(owner), shards=tuple(shards))


def maps(unassigned: bool = False) -> st.SearchStrategy[ShardMap]:
    """Maps of 1 to 4 shards (with ``unassigned``, some slots may belong to none)."""

    def owners(n: int) -> st.SearchStrategy[list[int | None]]:
        owner: st.SearchStrategy[int | None] = st.integers(0, n - 1)
        if unassigned:
            owner = st.one_of(owner, st.none())
        return st.lists(owner, min_size=SLOTS, max_size=SLOTS)

    return st.integers(1, 4).flatmap(owners).map(shard_map)


# Transfers with unique ids; (debit account, linked) drawn; debit keys from a small range so shards repeat.
item_specs = st.lists(st.tuples(st.integers(0, 10_000), st.booleans()), max_size=40)


def transfers(specs: list[tuple[int, bool]], first_id: int = 1) -> list[Transfer]:
    return [
        Transfer(
            first_id + k, debit_account_id=key, credit_account_id=7, amount=1, ledger=1, code=1, flags=L if ln else 0
        )
        for k, (key, ln) in enumerate(specs)
    ]


def chains(items: list[Transfer]) -> list[tuple[int, int]]:
    """The units a request must keep whole: each item flagged LINKED travels with the ones after it,
    up to and including the first unflagged one (or the end)."""
    out, start = [], 0
    for i, t in enumerate(items):
        if not t.flags & L:
            out.append((start, i + 1))
            start = i + 1
    if start < len(items):
        out.append((start, len(items)))
    return out


def home(items: list[Transfer], smap: ShardMap) -> list[int | None]:
    """Per item: the shard it must be sent to, that of the first item of its chain."""
    out: list[int | None] = [None] * len(items)
    for s, e in chains(items):
        sid = smap.shard_id_for_slot(slot_of(items[s].debit_account_id, smap.slot_count))
        out[s:e] = [sid] * (e - s)
    return out


def code_of(item_id: int) -> int:
    """The fake server's (deterministic, so idempotent) result code of an item."""
    return item_id % 5


# --------------------------------------------------------------------------- routing


@PROPS
@given(data=st.data(), smap=maps(), specs=item_specs)
def test_rounds_route_every_item_to_its_shard_whole_in_order_and_within_the_limit(
    data: st.DataObject, smap: ShardMap, specs: list[tuple[int, bool]]
) -> None:
    items = transfers(specs)
    units = chains(items)
    longest = max((e - s for s, e in units), default=1)
    limit = data.draw(st.integers(longest, longest + 5), label="max_batch_items")
    call = _core.WriteCall(_core.TRANSFERS, items, cfg(limit), None, 0.0)
    assert call.units == units
    where = home(items, smap)
    frames = _core.encode_items(_core.TRANSFERS, items)[0]
    sent: dict[int, list[int]] = {}  # shard -> item indexes in the order they were sent
    placed: dict[int, tuple[int, int]] = {}  # item -> (round, shard) it went in
    for rnd in itertools.count():
        assert rnd <= len(items)  # every round resolves at least one unit
        if call.done:
            break
        entries = call.plan(smap)
        assert entries is not None
        shard_ids = [e.shard_id for e in entries]
        assert len(set(shard_ids)) == len(shard_ids)  # one entry per shard and round
        for e in entries:
            assert 0 < e.n <= limit
            assert all(where[i] == e.shard_id for i in e.indexes)
            assert e.payload == b"".join(frames[i] for i in e.indexes)  # frames encoded once, concatenated
            for i in e.indexes:
                assert i not in placed  # all answers succeed: nothing is sent twice
                placed[i] = (rnd, e.shard_id)
            sent.setdefault(e.shard_id, []).extend(e.indexes)
            # As full as request order allows: the shard's next unit would not have fitted.
            later = [u for u in units if u[0] > e.indexes[-1] and where[u[0]] == e.shard_id]
            if later:
                assert e.n + later[0][1] - later[0][0] > limit
            e.outcome = [code_of(items[i].id) for i in e.indexes]
        verdict = call.absorb(entries, 0.0)
        assert (verdict is None) == call.done
    assert sorted(placed) == list(range(len(items)))
    for s, e in units:  # a chain is never split across entries
        assert len({placed[i] for i in range(s, e)}) == 1
    for sid, indexes in sent.items():  # each shard gets its items in request order
        assert indexes == [i for i in range(len(items)) if where[i] == sid]
    assert [(r.index, r.id, int(r.status)) for r in call.results()] == [
        (i, t.id, code_of(t.id)) for i, t in enumerate(items)
    ]


@PROPS
@given(smap=maps(unassigned=True), specs=item_specs)
def test_plan_is_none_exactly_when_some_chain_has_no_shard(smap: ShardMap, specs: list[tuple[int, bool]]) -> None:
    items = transfers(specs)
    call = _core.WriteCall(_core.TRANSFERS, items, cfg(), None, 0.0)
    assert (call.plan(smap) is None) == (None in home(items, smap))


@PROPS
@given(specs=item_specs.filter(lambda s: len(s) > 1), data=st.data())
def test_a_chain_longer_than_the_batch_limit_is_refused_before_anything_is_planned(
    specs: list[tuple[int, bool]], data: st.DataObject
) -> None:
    items = transfers(specs)
    longest = max(e - s for s, e in chains(items))
    limit = data.draw(st.integers(1, longest), label="max_batch_items")
    if longest > limit:
        with pytest.raises(_core.InvalidRequestError, match="linked chain"):
            _core.WriteCall(_core.TRANSFERS, items, cfg(limit), None, 0.0)
    else:
        assert _core.WriteCall(_core.TRANSFERS, items, cfg(limit), None, 0.0).units == chains(items)


# --------------------------------------------------------------------------- coalescing


class Counter:
    """A caller's waiter: counts the entries that got their outcome."""

    def __init__(self, n: int = 1) -> None:
        self.n = n
        self.woken = 0

    def done_one(self) -> None:
        self.woken += 1


def entry(n: int, solo: bool) -> _core.Entry:
    e = _core.Entry(0, [0], list(range(n)), b"x" * n, solo, 1e9)
    e.waiter = Counter()
    return e


queue_ops = st.lists(
    st.one_of(
        st.tuples(st.just("push"), st.integers(1, 6), st.booleans()),
        st.tuples(st.just("cancel"), st.integers(0, 1000)),
        st.tuples(st.just("take")),
        st.tuples(st.just("finish")),
    ),
    max_size=60,
)


@PROPS
@given(ops=queue_ops, max_items=st.integers(1, 10), max_in_flight=st.integers(1, 3))
def test_take_keeps_the_limits_and_the_order_sends_solo_alone_and_never_sends_the_cancelled(
    ops: list[tuple[Any, ...]], max_items: int, max_in_flight: int
) -> None:
    q = _core.QueueState(_core.TRANSFERS, 0)
    pushed: list[_core.Entry] = []
    cancelled: set[int] = set()
    sent: list[_core.Entry] = []

    def check_take() -> None:
        batches = q.take(max_items, max_in_flight)
        for k, batch in enumerate(batches):
            assert batch
            assert sum(e.n for e in batch) <= max_items or len(batch) == 1
            assert len(batch) == 1 or not any(e.solo for e in batch)
            nxt = (
                batches[k + 1][0]
                if k + 1 < len(batches)
                else next((e for e in q.entries if e.state == _core.QUEUED), None)
            )
            if nxt is not None:  # the batch stopped because the next entry could not join it
                assert batch[-1].solo or nxt.solo or sum(e.n for e in batch) + nxt.n > max_items
            sent.extend(batch)
        assert q.in_flight <= max_in_flight
        if q.in_flight < max_in_flight:  # took all it could
            assert not any(e.state == _core.QUEUED for e in q.entries)
        assert all(e.state == _core.SENT for b in batches for e in b)

    for op in ops:
        if op[0] == "push":
            e = entry(op[1], op[2])
            q.push(e)
            pushed.append(e)
        elif op[0] == "cancel" and pushed:
            e = pushed[op[1] % len(pushed)]
            was_queued = e.state == _core.QUEUED
            assert q.cancel(e, _core.withdrawn_failure()) == was_queued
            if was_queued:
                cancelled.add(id(e))
                assert e.state == _core.CANCELLED
        elif op[0] == "take":
            check_take()
        elif op[0] == "finish" and q.in_flight:
            q.in_flight -= 1
        assert q.queued_items == sum(e.n for e in pushed if e.state == _core.QUEUED)
        assert q.has_room(10**6, 1) == (q.queued_items == 0)
        # Never reordered, nothing cancelled sent, nothing sent twice: what left is a prefix of what may leave.
        eligible = [e for e in pushed if id(e) not in cancelled]
        assert [id(e) for e in sent] == [id(e) for e in eligible[: len(sent)]]
    drained = q.drain(_core.closed_failure())
    assert [id(e) for e in drained] == [id(e) for e in pushed if e.state == _core.CANCELLED and id(e) not in cancelled]
    assert sent + drained == [e for e in pushed if id(e) not in cancelled]
    assert q.take(max_items, max_in_flight) == [] and q.queued_items == 0


# --------------------------------------------------------------------------- merging


sizes = st.lists(st.integers(1, 5), min_size=1, max_size=6)


@PROPS
@given(ns=sizes, data=st.data())
def test_settling_a_batch_hands_each_caller_its_own_results_in_order(ns: list[int], data: st.DataObject) -> None:
    batch = [entry(n, False) for n in ns]
    total = sum(ns)
    results = data.draw(st.lists(st.integers(0, 99), min_size=total, max_size=total), label="results")
    _core.settle_batch(batch, "transfers", results, None)
    offsets = list(itertools.accumulate(ns, initial=0))
    for k, e in enumerate(batch):
        assert e.outcome == results[offsets[k] : offsets[k + 1]]
        assert e.state == _core.DONE and e.waiter.woken == 1


@PROPS
@given(ns=sizes, data=st.data())
def test_a_wrong_result_count_is_never_accepted(ns: list[int], data: st.DataObject) -> None:
    batch = [entry(n, False) for n in ns]
    total = sum(ns)
    count = data.draw(st.integers(0, total + 5).filter(lambda c: c != total), label="count")
    _core.settle_batch(batch, "transfers", list(range(count)), None)
    for e in batch:  # may have been applied: retried with the same ids, or reported as outcome unknown
        assert isinstance(e.outcome, _core.Failure) and e.outcome.ambiguous and e.outcome.kind == _core.Failure.RETRY
        assert e.state == _core.DONE and e.waiter.woken == 1


@PROPS
@given(
    smap=maps(),
    ids=st.lists(st.integers(0, 300), max_size=30),
    stored=st.sets(st.integers(0, 300)),
    max_items=st.integers(1, 6),
    data=st.data(),
)
def test_lookups_split_by_shard_and_merge_in_request_order_whatever_answers_first(
    smap: ShardMap, ids: list[int], stored: set[int], max_items: int, data: st.DataObject
) -> None:
    call = _core.LookupCall(_core.LOOKUP_ACCOUNTS, ids, _model.ReadConsistency.LINEARIZABLE, cfg(max_items), None, 0.0)
    while call.pending:
        chunks = call.plan(smap)
        assert chunks is not None
        asked = sorted(p for _, positions in chunks for p in positions)
        assert asked == sorted(call.pending)  # each pending position asked exactly once
        for sid, positions in chunks:
            assert 0 < len(positions) <= max_items and positions == sorted(positions)
            assert all(smap.shard_id_for(ids[p]) == sid for p in positions)
            req = ledger_pb2.LookupAccountsRequest.FromString(call.request(positions).SerializeToString())
            assert [(m.hi << 64) | m.lo for m in req.ids] == [ids[p] for p in positions]
        # Some shards answer (in any order, each listing what it found in any order); the others fail.
        answered = [c for c in chunks if data.draw(st.booleans(), label="answers")] or chunks[:1]
        answered = data.draw(st.permutations(answered), label="answer order")
        replies = []
        for _, positions in answered:
            found = data.draw(st.permutations(sorted({ids[p] for p in positions} & stored)), label="found order")
            replies.append(
                (positions, SimpleNamespace(accounts=[_model.account_to_proto(_model.Account(i)) for i in found]))
            )
        call.merge(replies)
    assert [a.id for a in call.results()] == [i for i in ids if i in stored]


# --------------------------------------------------------------------------- whole write programs


class Sim:
    """A single-threaded shell for the core: runs the programs of concurrent callers, coalescing their entries
    in the core's queues, and answers each in-flight batch when ``pick`` chooses it, through ``server``.
    Sleeping advances a fake clock."""

    def __init__(self, smap: ShardMap, config: _core.Config) -> None:
        self.now = 0.0
        self.core = _core.Core(config, open_channel=_no_channel, guard=contextlib.nullcontext(), clock=lambda: self.now)
        self.core.topology.offer(smap)
        self.in_flight: list[tuple[_core.QueueState, list[_core.Entry], _core.Rpc]] = []

    def run(
        self,
        programs: list[_core.Program[Any]],
        pick: Callable[[int], int],
        server: Callable[[_core.QueueState, list[_core.Entry], _core.Rpc], tuple[Any, BaseException | None]],
    ) -> list[Any]:
        """Each program's value, or the exception it raised."""
        out: list[Any] = [None] * len(programs)
        ready: dict[int, Any] = dict.fromkeys(range(len(programs)))  # program -> its next answer
        waiting: dict[int, Any] = {}
        while ready or waiting:
            for k in list(ready):
                answer = ready.pop(k)
                try:
                    request = programs[k].send(answer)
                except StopIteration as done:
                    out[k] = done.value
                    continue
                except Exception as exc:  # noqa: BLE001 - the call's error is its outcome
                    out[k] = exc
                    continue
                if isinstance(request, _core.Sleep):
                    self.now += request.seconds
                    ready[k] = None
                elif isinstance(request, _core.RefreshMap):
                    ready[k] = True
                else:
                    assert isinstance(request, _core.WriteRound), request
                    waiting[k] = self.queue_round(request)
            if not ready and waiting:
                assert self.in_flight, "callers wait for batches that were never sent"
                q, batch, rpc = self.in_flight.pop(pick(len(self.in_flight)))
                resp, exc = server(q, batch, rpc)
                self.core.batch_done(q, batch, rpc, resp, exc)
                self.send(q, self.core.release(q))
                for k, counter in list(waiting.items()):
                    if counter.woken == counter.n:
                        del waiting[k]
                        ready[k] = None
        return out

    def queue_round(self, r: _core.WriteRound) -> Any:
        counter = Counter(len(r.entries))
        for e in r.entries:
            e.waiter = counter
        for e in r.entries:
            q = self.core.queue(r.op, e.shard_id)
            assert q is not None and self.core.admit(q, e, r.deadline, self.now) is None
            self.send(q, self.core.push(q, e))
        return counter

    def send(self, q: _core.QueueState, batches: list[list[_core.Entry]]) -> None:
        for batch in batches:
            self.in_flight.append((q, batch, self.core.batch_rpc(q, batch, self.now)))
        per_queue = sum(1 for qq, _, _ in self.in_flight if qq is q)
        assert per_queue == q.in_flight <= self.core.cfg.max_in_flight_per_shard


def _no_channel(address: str) -> Any:
    raise AssertionError("the simulation sends nothing over a network")


class Node:
    """The fake cluster behind Sim: checks each batch as a node would, answers per item by code_of, and fails
    the attempts hypothesis chooses (an error after which the items may or may not have been applied, or a
    wrong number of results)."""

    def __init__(
        self, smap: ShardMap, callers: list[list[Transfer]], max_items: int, data: st.DataObject, failures: int
    ) -> None:
        self.smap = smap
        self.max_items = max_items
        self.data = data
        self.failures_left = failures
        self.by_id = {t.id: t for items in callers for t in items}
        self.homes = {t.id: h for items in callers for t, h in zip(items, home(items, smap), strict=True)}
        self.resolved: set[int] = set()
        self.order = {t.id: (k, i) for k, items in enumerate(callers) for i, t in enumerate(items)}

    def __call__(self, q: _core.QueueState, batch: list[_core.Entry], rpc: _core.Rpc) -> tuple[Any, Exception | None]:
        req = ledger_pb2.CreateTransfersRequest.FromString(rpc.request)  # the body is the callers' records
        assert not req.transfers, "transfers go packed"
        got = _model.transfers_from_records(req.transfers_packed)
        assert got == [self.by_id[t.id] for t in got] and len(got) == sum(e.n for e in batch) <= self.max_items
        assert rpc.address == self.smap.shard(q.shard_id).leader_address
        for t in got:
            assert self.homes[t.id] == q.shard_id  # every item on the shard of its chain's first item
            caller, index = self.order[t.id]
            earlier = [
                u for u, (c, i) in self.order.items() if c == caller and i < index and self.homes[u] == q.shard_id
            ]
            # A caller's earlier items on this shard were resolved before, or ride ahead in this very batch.
            assert all(u in self.resolved or u in [x.id for x in got[: got.index(t)]] for u in earlier)
        if self.failures_left and self.data.draw(st.booleans(), label="fail this attempt"):
            self.failures_left -= 1
            if self.data.draw(st.booleans(), label="wrong count"):
                return SimpleNamespace(results=[0] * (len(got) + 1)), None
            return None, ConnectionError("lost")
        self.resolved.update(t.id for t in got)
        return SimpleNamespace(results=[code_of(t.id) for t in got]), None


# Few items per caller and roomy batches, so that callers' entries often share an RPC.
callers_specs = st.lists(
    st.lists(st.tuples(st.integers(0, 10_000), st.booleans()), max_size=10), min_size=1, max_size=5
)


@PROPS
@given(smap=maps(), specs=callers_specs, max_in_flight=st.integers(1, 3), failures=st.integers(0, 3), data=st.data())
def test_concurrent_writes_get_their_results_in_request_order_whatever_the_order_of_answers(
    smap: ShardMap, specs: list[list[tuple[int, bool]]], max_in_flight: int, failures: int, data: st.DataObject
) -> None:
    callers = []
    for s in specs:
        callers.append(transfers(s, first_id=1 + sum(len(c) for c in callers)))
    longest = max((e - s for items in callers for s, e in chains(items)), default=1)
    limit = data.draw(st.integers(longest, longest + 12), label="max_batch_items")
    sim = Sim(smap, cfg(limit, max_in_flight))
    node = Node(smap, callers, limit, data, failures)
    programs = [sim.core.create_transfers(items, None) for items in callers]
    out = sim.run(programs, lambda n: data.draw(st.integers(0, n - 1), label="answer next"), node)
    for items, results in zip(callers, out, strict=True):
        assert not isinstance(results, BaseException), results
        assert [(r.index, r.id, int(r.status)) for r in results] == [
            (i, t.id, code_of(t.id)) for i, t in enumerate(items)
        ]


@settings(PROPS, max_examples=60)
@given(smap=maps(), specs=callers_specs.filter(lambda cs: any(cs)), data=st.data())
def test_writes_answered_with_wrong_result_counts_end_outcome_unknown_never_with_results(
    smap: ShardMap, specs: list[list[tuple[int, bool]]], data: st.DataObject
) -> None:
    callers = []
    for s in specs:
        callers.append(transfers(s, first_id=1 + sum(len(c) for c in callers)))
    sim = Sim(smap, cfg(timeout_s=0.3))

    def wrong(q: _core.QueueState, batch: list[_core.Entry], rpc: _core.Rpc) -> tuple[Any, None]:
        n = sum(e.n for e in batch)
        count = data.draw(st.integers(0, n + 3).filter(lambda c: c != n), label="count")
        return SimpleNamespace(results=[0] * count), None

    out = sim.run([sim.core.create_transfers(items, None) for items in callers], lambda n: 0, wrong)
    for items, res in zip(callers, out, strict=True):
        if not items:
            assert res == []
            continue
        assert isinstance(res, OutcomeUnknownError), res
        assert res.ids == [t.id for t in items] and res.results == [None] * len(items)
    assert sim.now >= 0.3 - _core.MIN_ATTEMPT_S  # retried until the deadline

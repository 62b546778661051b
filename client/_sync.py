"""The blocking client: thread-safe, coalescing concurrent callers into batched RPCs.

Threads calling create_transfers/create_accounts put their items on a per-shard
queue and wait. Batches leave on gRPC futures; the completion callback of one RPC
(running on gRPC's own daemon threads, which channel.close() stops) hands every
caller its results and sends whatever queued up meanwhile as the next batch. No
thread of this module's own is needed; waiting, backoff and retries happen in the
calling threads.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

import grpc

from tidebank.v1 import admin_pb2, ledger_pb2

from ._core import (
    ACCOUNTS,
    DONE,
    GET_ACCOUNT_TRANSFERS_METHOD,
    GET_SHARD_MAP_METHOD,
    LOOKUP_ACCOUNTS,
    LOOKUP_TRANSFERS,
    MAP_FETCH_TIMEOUT_S,
    MIN_ATTEMPT_S,
    TRANSFERS,
    BaseClient,
    Entry,
    Failure,
    LookupOp,
    QueueState,
    ReadCall,
    Verdict,
    WriteCall,
    WriteOp,
    account_transfers_request,
    backoff_delay,
    batch_body,
    batch_timeout,
    check_consistency,
    classify,
    closed_failure,
    lookup_request,
    now_s,
    plan_lookup,
    settle_batch,
    validate_ids,
)
from ._errors import ClientClosedError
from ._model import (
    Account,
    AccountResult,
    Page,
    ReadConsistency,
    ShardMap,
    Transfer,
    TransferResult,
    transfer_from_proto,
)

log = logging.getLogger("tidebank.client")


class _Waiter:
    """Counts down a round's entries; the calling thread waits for zero."""

    __slots__ = ("_left", "_lock", "_event")

    def __init__(self, n: int) -> None:
        self._left = n
        self._lock = threading.Lock()
        self._event = threading.Event()

    def done_one(self) -> None:
        with self._lock:
            self._left -= 1
            if self._left <= 0:
                self._event.set()

    def wait(self, timeout: float) -> bool:
        return self._event.wait(max(0.0, timeout))


class _Queue:
    __slots__ = ("state", "cond")

    def __init__(self, op: WriteOp, shard_id: int) -> None:
        self.state = QueueState(op, shard_id)
        self.cond = threading.Condition(threading.Lock())


class _QueueFull(Exception):
    pass


class Client(BaseClient):
    """A blocking tidebank client. Thread-safe: share one per process.

    ``Client(["10.0.0.1:7001", "10.0.0.2:7001"])`` or ``Client("h1:7001,h2:7001")``.
    Any node works as a seed: the client fetches the shard map, sends each shard's
    items to its leader, follows leader changes, and batches the items of
    concurrent callers. Every call finishes within ``timeout_s`` (per call
    override: ``timeout_s=`` keyword).
    """

    def _setup(self) -> None:
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._channels: dict[str, grpc.Channel] = {}
        self._stubs: dict[tuple[str, str], Any] = {}
        self._queues: dict[tuple[str, int], _Queue] = {}
        self._tl = threading.local()
        self._last_map_error = ""

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the channels. Calls waiting in queues fail with ClientClosedError;
        writes already sent fail with OutcomeUnknownError. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            queues = list(self._queues.values())
            channels = list(self._channels.values())
        for q in queues:
            with q.cond:
                drained = q.state.drain(closed_failure())
                q.cond.notify_all()
            for e in drained:
                e.waiter.done_one()
        for ch in channels:
            ch.close()

    # ------------------------------------------------------------------ plumbing

    def _channel(self, address: str) -> grpc.Channel:
        ch = self._channels.get(address)
        if ch is None:
            with self._lock:
                if self._closed:
                    raise ClientClosedError("client is closed")
                ch = self._channels.get(address)
                if ch is None:
                    ch = grpc.insecure_channel(address, options=self._cfg.options)
                    self._channels[address] = ch
        return ch

    def _unary(self, address: str, method: str, serializer: Any, deserializer: Any) -> Any:
        key = (address, method)
        mc = self._stubs.get(key)
        if mc is None:
            mc = self._channel(address).unary_unary(
                method,
                request_serializer=serializer,
                response_deserializer=deserializer,
                _registered_method=True,
            )
            self._stubs[key] = mc
        return mc

    def _queue(self, op: WriteOp, shard_id: int) -> _Queue:
        key = (op.name, shard_id)
        q = self._queues.get(key)
        if q is None:
            with self._lock:
                if self._closed:
                    raise ClientClosedError("client is closed")
                q = self._queues.setdefault(key, _Queue(op, shard_id))
        return q

    def _refresh(self, deadline: float, seen_generation: int) -> bool:
        """Fetch the shard map unless someone else did since ``seen_generation``.
        True when a node answered."""
        topo = self._topology
        rem = deadline - now_s()
        if rem <= 0 or not self._refresh_lock.acquire(timeout=rem):
            return False
        try:
            if topo.generation != seen_generation and topo.map is not None:
                return True
            req = admin_pb2.GetShardMapRequest()
            for addr in topo.refresh_candidates(now_s()):
                rem = deadline - now_s()
                if rem <= 0 or self._closed:
                    break
                try:
                    mc = self._unary(
                        addr,
                        GET_SHARD_MAP_METHOD,
                        admin_pb2.GetShardMapRequest.SerializeToString,
                        admin_pb2.ShardMap.FromString,
                    )
                    self._rpc_count += 1
                    m = mc(req, timeout=min(rem, MAP_FETCH_TIMEOUT_S))
                except grpc.RpcError as exc:
                    self._last_map_error = f"{addr}: {exc.code().name}: {exc.details()}"
                    if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                        topo.suspect(addr, now_s())
                    continue
                except (ValueError, ClientClosedError):  # channel closed under us
                    break
                topo.offer(ShardMap.from_proto(m))
                return True
            return False
        finally:
            self._refresh_lock.release()

    def _map(self, call: WriteCall | ReadCall) -> ShardMap:
        smap = self._topology.map
        attempt = 0
        while smap is None:
            self._check_open()
            self._refresh(call.deadline, self._topology.generation)
            smap = self._topology.map
            if smap is not None:
                break
            rem = call.remaining(now_s())
            if rem <= MIN_ATTEMPT_S:
                call.last = Failure(Failure.RETRY, f"no node answered with the shard map ({self._last_map_error})")
                raise call.timeout_error()
            time.sleep(min(rem, backoff_delay(attempt, self._cfg.backoff_base_s, self._cfg.backoff_max_s)))
            attempt += 1
        return smap

    def _pause(self, verdict: Verdict, generation: int, call: WriteCall | ReadCall) -> None:
        if self._closed:
            raise call.error(closed_failure())
        if verdict.refresh:
            self._refresh(call.deadline, generation)
        rem = call.remaining(now_s())
        if verdict.delay > 0 and rem > 0:
            time.sleep(min(verdict.delay, rem))
            rem = call.remaining(now_s())
        if rem <= MIN_ATTEMPT_S:
            raise call.timeout_error()
        if self._closed:
            raise call.error(closed_failure())

    # ------------------------------------------------------------------ writes

    def create_accounts(self, accounts: Iterable[Account], *, timeout_s: float | None = None) -> list[AccountResult]:
        """Create accounts; one AccountResult per item, in request order.

        Idempotent by id: re-submitting an account answers ``exists`` (or
        ``exists_with_different_*``). Raises InvalidRequestError, UnavailableError
        (nothing unresolved was applied) or OutcomeUnknownError (re-submit the ids).
        """
        return self._write(ACCOUNTS, list(accounts), timeout_s)

    def create_transfers(
        self, transfers: Iterable[Transfer], *, timeout_s: float | None = None
    ) -> list[TransferResult]:
        """Create transfers; one TransferResult per item, in request order.

        Items are routed by debit_account_id; linked chains travel whole. A retried
        transfer that was applied by an earlier attempt answers ``exists``.
        """
        return self._write(TRANSFERS, list(transfers), timeout_s)

    def _write(self, op: WriteOp, items: list[Any], timeout_s: float | None) -> list[Any]:
        self._check_open()
        call = WriteCall(op, items, self._cfg, timeout_s, now_s())
        while not call.done:
            smap = self._map(call)
            generation = self._topology.generation
            entries = call.plan(smap)
            if entries is None:
                verdict: Verdict | None = call.no_route()
            else:
                self._round(op, entries, call.deadline)
                verdict = call.absorb(entries, now_s())
                if verdict is None:
                    break
            self._pause(verdict, generation, call)
        return call.results()

    def _round(self, op: WriteOp, entries: list[Entry], deadline: float) -> None:
        """Queue one entry per shard and wait for all of them (or the deadline)."""
        waiter = _Waiter(len(entries))
        for e in entries:
            e.waiter = waiter
        sent = 0
        try:
            for e in entries:
                self._enqueue(op, e, deadline)
                sent += 1
        except (_QueueFull, ClientClosedError) as exc:
            f = (
                closed_failure()
                if isinstance(exc, ClientClosedError)
                else Failure(Failure.RETRY, "the shard's queue stayed full until the deadline")
            )
            for e in entries[sent:]:
                e.outcome = f
                waiter.done_one()
        if not waiter.wait(deadline - now_s()):
            # Withdraw what has not left yet: those items were never sent.
            for e in entries:
                q = self._queues.get((op.name, e.shard_id))
                if q is not None:
                    with q.cond:
                        q.state.cancel(e, Failure(Failure.RETRY, "not sent before the deadline"))

    def _enqueue(self, op: WriteOp, e: Entry, deadline: float) -> None:
        q = self._queue(op, e.shard_id)
        cfg = self._cfg
        with q.cond:
            while not q.state.has_room(e.n, cfg.max_queued_items_per_shard):
                if self._closed:
                    raise ClientClosedError("client is closed")
                rem = deadline - now_s()
                if rem <= 0:
                    raise _QueueFull
                q.cond.wait(rem)
            if self._closed:
                raise ClientClosedError("client is closed")
            q.state.push(e)
            batches = q.state.take(cfg.max_batch_items, cfg.max_in_flight_per_shard)
            if batches:
                q.cond.notify_all()
        if batches:
            self._launch(q, batches)

    def _launch(self, q: _Queue, batches: list[list[Entry]]) -> None:
        # Trampoline: an RPC that fails at once completes in this very thread and
        # launches the next batch; queue that instead of recursing.
        tl = self._tl
        pending = getattr(tl, "pending", None)
        if pending is not None:
            pending.extend((q, b) for b in batches)
            return
        tl.pending = pending = deque((q, b) for b in batches)
        try:
            while pending:
                qq, batch = pending.popleft()
                self._send(qq, batch)
        finally:
            tl.pending = None

    def _send(self, q: _Queue, batch: list[Entry]) -> None:
        op = q.state.op
        now = now_s()
        address = self._topology.pick(q.state.shard_id, now)
        try:
            if self._closed:
                raise ClientClosedError("client is closed")
            mc = self._unary(address, op.method, None, op.response_cls.FromString)
            fut = mc.future(batch_body(batch), timeout=batch_timeout(batch, self._cfg.attempt_timeout_s, now))
            self._rpc_count += 1
        except Exception as exc:  # noqa: BLE001 - not started, so certainly not applied
            f = closed_failure() if self._closed else Failure(Failure.RETRY, f"could not start the RPC: {exc!r}")
            self._finish(q, batch, address, None, None, f)
            return
        fut.add_done_callback(functools.partial(self._on_done, q, batch, address))

    def _on_done(self, q: _Queue, batch: list[Entry], address: str, fut: Any) -> None:
        try:
            resp, exc = fut.result(), None
        except BaseException as e:  # noqa: BLE001
            resp, exc = None, e
        self._finish(q, batch, address, resp, exc)

    def _finish(
        self,
        q: _Queue,
        batch: list[Entry],
        address: str,
        resp: Any,
        exc: BaseException | None,
        failure: Failure | None = None,
    ) -> None:
        state = q.state
        try:
            if failure is not None:
                settle_batch(batch, state.op.name, None, failure)
            elif exc is None:
                settle_batch(batch, state.op.name, resp.results, None)
            else:
                f = classify(exc, write=True, closed=self._closed)
                self._topology.note(state.shard_id, address, f, now_s())
                settle_batch(batch, state.op.name, None, f)
        except Exception:  # noqa: BLE001 - never leave a caller hanging
            log.exception("tidebank client: settling a batch failed")
            for e in batch:
                if e.state != DONE:
                    e.outcome = Failure(Failure.RETRY, "client error while reading the answer", ambiguous=True)
                    e.state = DONE
                    e.waiter.done_one()
        finally:
            cfg = self._cfg
            with q.cond:
                state.in_flight -= 1
                batches = [] if self._closed else state.take(cfg.max_batch_items, cfg.max_in_flight_per_shard)
                if batches:
                    q.cond.notify_all()
            if batches:
                self._launch(q, batches)

    # ------------------------------------------------------------------ reads

    def lookup_accounts(
        self,
        ids: Iterable[int],
        *,
        consistency: ReadConsistency = ReadConsistency.LINEARIZABLE,
        timeout_s: float | None = None,
    ) -> list[Account]:
        """The accounts found among ``ids``, in request order (missing ids are skipped)."""
        return self._lookup(LOOKUP_ACCOUNTS, ids, consistency, timeout_s)

    def lookup_transfers(
        self,
        ids: Iterable[int],
        *,
        consistency: ReadConsistency = ReadConsistency.LINEARIZABLE,
        timeout_s: float | None = None,
    ) -> list[Transfer]:
        """The transfers found among ``ids``, in request order (missing ids are skipped)."""
        return self._lookup(LOOKUP_TRANSFERS, ids, consistency, timeout_s)

    def _lookup(self, op: LookupOp, ids: Iterable[int], consistency: Any, timeout_s: float | None) -> list[Any]:
        self._check_open()
        id_list = validate_ids(ids)
        level = check_consistency(consistency)
        if not id_list:
            return []
        call = ReadCall(op.name, self._cfg, timeout_s, now_s())
        found: dict[int, Any] = {}
        pending = list(range(len(id_list)))
        leader = level == ReadConsistency.LINEARIZABLE
        while pending:
            smap = self._map(call)
            generation = self._topology.generation
            chunks = plan_lookup(id_list, pending, smap, self._cfg.max_batch_items)
            failures: list[Failure] = []
            if chunks is None:
                failures.append(Failure(Failure.RETRY, "the shard map assigns no shard to some ids", refresh=True))
            else:
                now = now_s()
                timeout = max(0.001, min(self._cfg.attempt_timeout_s, call.remaining(now)))
                started = []
                for sid, positions in chunks:
                    addr = self._topology.pick(sid, now, leader=leader)
                    req = lookup_request(op, [id_list[p] for p in positions], level)
                    fut: Any = None
                    start_exc: BaseException | None = None
                    try:
                        mc = self._unary(addr, op.method, op.request_cls.SerializeToString, op.response_cls.FromString)
                        fut = mc.future(req, timeout=timeout)
                        self._rpc_count += 1
                    except Exception as exc:  # noqa: BLE001
                        start_exc = exc
                    started.append((sid, addr, positions, fut, start_exc))
                done: set[int] = set()
                for sid, addr, positions, fut, start_exc in started:
                    try:
                        if start_exc is not None:
                            raise start_exc
                        resp = fut.result()
                    except Exception as exc:  # noqa: BLE001
                        f = classify(exc, write=False, closed=self._closed)
                        self._topology.note(sid, addr, f, now_s())
                        failures.append(f)
                        continue
                    for m in getattr(resp, op.response_field):
                        obj = op.from_proto(m)
                        found[obj.id] = obj
                    done.update(positions)
                if done:
                    pending = [p for p in pending if p not in done]
            if failures and pending:
                self._pause(call.failed(failures, now_s()), generation, call)
        return [found[i] for i in id_list if i in found]

    def get_account_transfers(
        self,
        account_id: int,
        *,
        limit: int = 100,
        page_token: str = "",
        reversed: bool = False,
        debits: bool = True,
        credits: bool = True,
        timestamp_min: int = 0,
        timestamp_max: int = 0,
        consistency: ReadConsistency = ReadConsistency.LINEARIZABLE,
        timeout_s: float | None = None,
    ) -> Page:
        """One page of the transfers that debit and/or credit ``account_id``, oldest first
        (newest first with ``reversed``). Pass ``page.next_page_token`` for the next page."""
        self._check_open()
        level = check_consistency(consistency)
        req = account_transfers_request(
            account_id,
            limit=limit,
            page_token=page_token,
            reversed=reversed,
            debits=debits,
            credits=credits,
            timestamp_min=timestamp_min,
            timestamp_max=timestamp_max,
            consistency=level,
        )
        call = ReadCall("get_account_transfers", self._cfg, timeout_s, now_s())
        while True:
            smap = self._map(call)
            generation = self._topology.generation
            sid = smap.shard_id_for(account_id)
            if sid is None:
                f = Failure(Failure.RETRY, "the shard map assigns no shard to the account", refresh=True)
            else:
                now = now_s()
                addr = self._topology.pick(sid, now, leader=level == ReadConsistency.LINEARIZABLE)
                try:
                    mc = self._unary(
                        addr,
                        GET_ACCOUNT_TRANSFERS_METHOD,
                        ledger_pb2.GetAccountTransfersRequest.SerializeToString,
                        ledger_pb2.GetAccountTransfersResponse.FromString,
                    )
                    self._rpc_count += 1
                    resp = mc(req, timeout=max(0.001, min(self._cfg.attempt_timeout_s, call.remaining(now))))
                    return Page([transfer_from_proto(m) for m in resp.transfers], resp.next_page_token)
                except Exception as exc:  # noqa: BLE001
                    f = classify(exc, write=False, closed=self._closed)
                    self._topology.note(sid, addr, f, now_s())
            self._pause(call.failed([f], now_s()), generation, call)

    def iter_account_transfers(self, account_id: int, **kwargs: Any) -> Iterator[Transfer]:
        """Every transfer of get_account_transfers(account_id, **kwargs), page after page."""
        kwargs = dict(kwargs)
        while True:
            page = self.get_account_transfers(account_id, **kwargs)
            yield from page.items
            if not page.next_page_token:
                return
            kwargs["page_token"] = page.next_page_token

    def shard_map(self, *, timeout_s: float | None = None) -> ShardMap:
        """The cluster's current shard map, fetched now from any node."""
        self._check_open()
        call = ReadCall("shard_map", self._cfg, timeout_s, now_s())
        generation = self._topology.generation
        attempt = 0
        while not self._refresh(call.deadline, generation):
            rem = call.remaining(now_s())
            if rem <= MIN_ATTEMPT_S:
                call.last = Failure(Failure.RETRY, f"no node answered ({self._last_map_error})")
                raise call.timeout_error()
            time.sleep(min(rem, backoff_delay(attempt, self._cfg.backoff_base_s, self._cfg.backoff_max_s)))
            attempt += 1
            self._check_open()
        smap = self._topology.map
        assert smap is not None
        return smap

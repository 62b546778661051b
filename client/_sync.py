"""The blocking client: thread-safe, coalescing concurrent callers into batched RPCs.

Threads calling create_transfers/create_accounts (or an escrow write) put their
items on a queue per shard and RPC method, and wait. Batches leave on gRPC
futures; the completion callback of one RPC (running on gRPC's own daemon
threads, which channel.close() stops) hands every caller its results and sends
whatever queued up meanwhile as the next batch. No thread of this module's own
is needed; waiting, backoff and retries happen in the calling threads.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import grpc

from tidebank.v1 import admin_pb2, escrow_pb2, ledger_pb2

from ._core import (
    ACCOUNTS,
    CONFIRM_TRADES,
    CREATE_TRADES,
    DONE,
    EXTEND_TRADES,
    GET_ACCOUNT_TRANSFERS_METHOD,
    GET_SHARD_MAP_METHOD,
    LIST_TRADES_METHOD,
    LOOKUP_ACCOUNTS,
    LOOKUP_TRADES,
    LOOKUP_TRANSFERS,
    MAP_FETCH_TIMEOUT_S,
    MIN_ATTEMPT_S,
    OPEN_DISPUTES,
    REFUND_TRADES,
    RESOLVE_DISPUTES,
    SHIP_TRADES,
    TRANSFERS,
    WITHDRAW_DISPUTES,
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
    list_trades_request,
    lookup_request,
    now_s,
    plan_lookup,
    settle_batch,
    trade_refs,
    validate_ids,
)
from ._errors import ClientClosedError
from ._model import (
    Account,
    AccountResult,
    DisputeResolution,
    Extension,
    NewTrade,
    Page,
    ReadConsistency,
    Refund,
    ShardMap,
    Trade,
    TradePage,
    TradeResult,
    TradeRole,
    Transfer,
    TransferResult,
    trade_from_proto,
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
        key = (op.method, shard_id)
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

    # ------------------------------------------------------------------ escrow writes
    #
    # Every escrow write is a batch with one TradeResult per item, in request order;
    # items are routed by trade id and coalesced with concurrent callers like
    # create_transfers. Each step is idempotent (a retry of an applied step answers
    # ``exists``), so the same errors apply: OutcomeUnknownError means re-submit.

    def create_trades(self, trades: Iterable[NewTrade], *, timeout_s: float | None = None) -> list[TradeResult]:
        """Open trades: each buyer's amount moves into escrow at once, or nothing happens."""
        return self._write(CREATE_TRADES, list(trades), timeout_s)

    def ship_trades(self, trade_ids: Iterable[int], *, timeout_s: float | None = None) -> list[TradeResult]:
        """PAID -> SHIPPED; starts each trade's auto-confirm timer."""
        return self._write(SHIP_TRADES, trade_refs(trade_ids), timeout_s)

    def confirm_trades(self, trade_ids: Iterable[int], *, timeout_s: float | None = None) -> list[TradeResult]:
        """The buyer confirms receipt: the held amount less the fee goes to the seller."""
        return self._write(CONFIRM_TRADES, trade_refs(trade_ids), timeout_s)

    def refund_trades(self, refunds: Iterable[Refund], *, timeout_s: float | None = None) -> list[TradeResult]:
        """Partial or full refunds from the held money, each idempotent by its refund id."""
        return self._write(REFUND_TRADES, list(refunds), timeout_s)

    def open_disputes(self, trade_ids: Iterable[int], *, timeout_s: float | None = None) -> list[TradeResult]:
        """Freeze each trade's timer (one dispute per trade)."""
        return self._write(OPEN_DISPUTES, trade_refs(trade_ids), timeout_s)

    def withdraw_disputes(self, trade_ids: Iterable[int], *, timeout_s: float | None = None) -> list[TradeResult]:
        """End disputes without a ruling: the timers resume with the time they had left."""
        return self._write(WITHDRAW_DISPUTES, trade_refs(trade_ids), timeout_s)

    def resolve_disputes(
        self, resolutions: Iterable[DisputeResolution], *, timeout_s: float | None = None
    ) -> list[TradeResult]:
        """End disputes by a split; the trades are CLOSED."""
        return self._write(RESOLVE_DISPUTES, list(resolutions), timeout_s)

    def extend_trades(self, extensions: Iterable[Extension], *, timeout_s: float | None = None) -> list[TradeResult]:
        """Extend auto-confirm timers, each idempotent by its extension id."""
        return self._write(EXTEND_TRADES, list(extensions), timeout_s)

    def create_trade(self, trade: NewTrade, *, timeout_s: float | None = None) -> TradeResult:
        """create_trades for one trade (concurrent callers still share RPCs)."""
        return self.create_trades([trade], timeout_s=timeout_s)[0]

    def ship_trade(self, trade_id: int, *, timeout_s: float | None = None) -> TradeResult:
        return self.ship_trades([trade_id], timeout_s=timeout_s)[0]

    def confirm_trade(self, trade_id: int, *, timeout_s: float | None = None) -> TradeResult:
        return self.confirm_trades([trade_id], timeout_s=timeout_s)[0]

    def refund_trade(
        self, trade_id: int, refund_id: int, amount: int, *, timeout_s: float | None = None
    ) -> TradeResult:
        """One refund. ``refund_id`` is yours to choose and keep: re-using it on a retry is what
        makes the retry safe (a fresh id would be a second refund)."""
        return self.refund_trades([Refund(trade_id, refund_id, amount)], timeout_s=timeout_s)[0]

    def open_dispute(self, trade_id: int, *, timeout_s: float | None = None) -> TradeResult:
        return self.open_disputes([trade_id], timeout_s=timeout_s)[0]

    def withdraw_dispute(self, trade_id: int, *, timeout_s: float | None = None) -> TradeResult:
        return self.withdraw_disputes([trade_id], timeout_s=timeout_s)[0]

    def resolve_dispute(self, trade_id: int, buyer_amount: int, *, timeout_s: float | None = None) -> TradeResult:
        return self.resolve_disputes([DisputeResolution(trade_id, buyer_amount)], timeout_s=timeout_s)[0]

    def extend_trade(
        self, trade_id: int, extension_id: int, extend_by_s: int, *, timeout_s: float | None = None
    ) -> TradeResult:
        """One extension; like refund_trade, keep ``extension_id`` for retries."""
        return self.extend_trades([Extension(trade_id, extension_id, extend_by_s)], timeout_s=timeout_s)[0]

    # ------------------------------------------------------------------ write machinery

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
                q = self._queues.get((op.method, e.shard_id))
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

    def lookup_trades(
        self,
        ids: Iterable[int],
        *,
        consistency: ReadConsistency = ReadConsistency.LINEARIZABLE,
        timeout_s: float | None = None,
    ) -> list[Trade]:
        """The trades found among ``ids``, in request order (missing ids are skipped)."""
        return self._lookup(LOOKUP_TRADES, ids, consistency, timeout_s)

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
        resp = self._routed_read(
            "get_account_transfers",
            account_id,
            GET_ACCOUNT_TRANSFERS_METHOD,
            req,
            ledger_pb2.GetAccountTransfersResponse.FromString,
            level,
            timeout_s,
        )
        return Page([transfer_from_proto(m) for m in resp.transfers], resp.next_page_token)

    def _routed_read(
        self,
        what: str,
        key_id: int,
        method: str,
        req: Any,
        deserializer: Callable[[bytes], Any],
        level: ReadConsistency,
        timeout_s: float | None,
    ) -> Any:
        """One read RPC sent to the shard of ``key_id`` (its leader for linearizable reads),
        retried until ``timeout_s``."""
        call = ReadCall(what, self._cfg, timeout_s, now_s())
        while True:
            smap = self._map(call)
            generation = self._topology.generation
            sid = smap.shard_id_for(key_id)
            if sid is None:
                f = Failure(Failure.RETRY, f"the shard map assigns no shard to {key_id}", refresh=True)
            else:
                now = now_s()
                addr = self._topology.pick(sid, now, leader=level == ReadConsistency.LINEARIZABLE)
                try:
                    mc = self._unary(addr, method, type(req).SerializeToString, deserializer)
                    self._rpc_count += 1
                    return mc(req, timeout=max(0.001, min(self._cfg.attempt_timeout_s, call.remaining(now))))
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

    def list_trades(
        self,
        account_id: int,
        *,
        role: TradeRole = TradeRole.BUYER,
        limit: int = 100,
        page_token: str = "",
        consistency: ReadConsistency = ReadConsistency.LINEARIZABLE,
        timeout_s: float | None = None,
    ) -> TradePage:
        """One page of the trades where ``account_id`` is the buyer (or, with ``role``, the
        seller), oldest first. Pass ``page.next_page_token`` for the next page."""
        self._check_open()
        level = check_consistency(consistency)
        req = list_trades_request(account_id, role=role, limit=limit, page_token=page_token, consistency=level)
        # The answering node gathers from every shard itself; the account's shard is just a good first pick.
        resp = self._routed_read(
            "list_trades", account_id, LIST_TRADES_METHOD, req, escrow_pb2.ListTradesResponse.FromString, level,
            timeout_s,
        )  # fmt: skip
        return TradePage([trade_from_proto(m) for m in resp.trades], resp.next_page_token)

    def iter_trades(self, account_id: int, **kwargs: Any) -> Iterator[Trade]:
        """Every trade of list_trades(account_id, **kwargs), page after page."""
        kwargs = dict(kwargs)
        while True:
            page = self.list_trades(account_id, **kwargs)
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

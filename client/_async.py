"""The asyncio client (grpc.aio): the same API as Client, awaitable.

Coroutines calling create_transfers/create_accounts (or an escrow write) queue
their items per shard and RPC method; each batch is sent by its own task, whose
completion hands every caller its results and sends what queued up meanwhile.
Use one AsyncClient per event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import grpc
import grpc.aio

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
    __slots__ = ("_left", "fut")

    def __init__(self, n: int, loop: asyncio.AbstractEventLoop) -> None:
        self._left = n
        self.fut: asyncio.Future[None] = loop.create_future()

    def done_one(self) -> None:
        self._left -= 1
        if self._left <= 0 and not self.fut.done():
            self.fut.set_result(None)


class _Queue:
    __slots__ = ("state", "room")

    def __init__(self, op: WriteOp, shard_id: int) -> None:
        self.state = QueueState(op, shard_id)
        self.room = asyncio.Event()


class _QueueFull(Exception):
    pass


class AsyncClient(BaseClient):
    """An asyncio tidebank client with the same constructor and methods as Client.

    ``async with AsyncClient(["127.0.0.1:7001"]) as c: await c.create_transfers([...])``.
    Channels are opened on first use, inside the running loop.
    """

    def _setup(self) -> None:
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[tuple[str, str], Any] = {}
        self._queues: dict[tuple[str, int], _Queue] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._refreshing: asyncio.Future[bool] | None = None
        self._last_map_error = ""

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channels. Queued calls fail with ClientClosedError; writes already
        sent fail with OutcomeUnknownError. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for q in list(self._queues.values()):
            for e in q.state.drain(closed_failure()):
                e.waiter.done_one()
            q.room.set()
        channels = list(self._channels.values())
        for ch in channels:
            await ch.close()
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # ------------------------------------------------------------------ plumbing

    def _channel(self, address: str) -> grpc.aio.Channel:
        if self._closed:
            raise ClientClosedError("client is closed")
        ch = self._channels.get(address)
        if ch is None:
            ch = grpc.aio.insecure_channel(address, options=self._cfg.options)
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
            q = self._queues[key] = _Queue(op, shard_id)
        return q

    async def _refresh(self, deadline: float, seen_generation: int) -> bool:
        """Fetch the shard map unless someone else did since ``seen_generation``;
        concurrent callers share one fetch. True when a node answered."""
        topo = self._topology
        while self._refreshing is not None:
            rem = deadline - now_s()
            if rem <= 0:
                return False
            fut = self._refreshing
            await asyncio.wait({fut}, timeout=rem)
            if not fut.done():
                return False
            if topo.generation != seen_generation and topo.map is not None:
                return True
        if topo.generation != seen_generation and topo.map is not None:
            return True
        fut = self._refreshing = asyncio.get_running_loop().create_future()
        ok = False
        try:
            ok = await self._fetch_map(deadline)
        finally:
            self._refreshing = None
            fut.set_result(ok)
        return ok

    async def _fetch_map(self, deadline: float) -> bool:
        topo = self._topology
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
                m = await mc(req, timeout=min(rem, MAP_FETCH_TIMEOUT_S))
            except grpc.RpcError as exc:
                code = exc.code()  # type: ignore[attr-defined]
                self._last_map_error = f"{addr}: {code.name}: {exc.details()}"  # type: ignore[attr-defined]
                if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    topo.suspect(addr, now_s())
                continue
            except (ValueError, ClientClosedError):
                break
            topo.offer(ShardMap.from_proto(m))
            return True
        return False

    async def _map(self, call: WriteCall | ReadCall) -> ShardMap:
        smap = self._topology.map
        attempt = 0
        while smap is None:
            self._check_open()
            await self._refresh(call.deadline, self._topology.generation)
            smap = self._topology.map
            if smap is not None:
                break
            rem = call.remaining(now_s())
            if rem <= MIN_ATTEMPT_S:
                call.last = Failure(Failure.RETRY, f"no node answered with the shard map ({self._last_map_error})")
                raise call.timeout_error()
            await asyncio.sleep(min(rem, backoff_delay(attempt, self._cfg.backoff_base_s, self._cfg.backoff_max_s)))
            attempt += 1
        return smap

    async def _pause(self, verdict: Verdict, generation: int, call: WriteCall | ReadCall) -> None:
        if self._closed:
            raise call.error(closed_failure())
        if verdict.refresh:
            await self._refresh(call.deadline, generation)
        rem = call.remaining(now_s())
        if verdict.delay > 0 and rem > 0:
            await asyncio.sleep(min(verdict.delay, rem))
            rem = call.remaining(now_s())
        if rem <= MIN_ATTEMPT_S:
            raise call.timeout_error()
        if self._closed:
            raise call.error(closed_failure())

    # ------------------------------------------------------------------ writes

    async def create_accounts(
        self, accounts: Iterable[Account], *, timeout_s: float | None = None
    ) -> list[AccountResult]:
        """Create accounts; one AccountResult per item, in request order (see Client)."""
        return await self._write(ACCOUNTS, list(accounts), timeout_s)

    async def create_transfers(
        self, transfers: Iterable[Transfer], *, timeout_s: float | None = None
    ) -> list[TransferResult]:
        """Create transfers; one TransferResult per item, in request order (see Client)."""
        return await self._write(TRANSFERS, list(transfers), timeout_s)

    # ------------------------------------------------------------------ escrow writes (see Client)

    async def create_trades(self, trades: Iterable[NewTrade], *, timeout_s: float | None = None) -> list[TradeResult]:
        """Open trades: each buyer's amount moves into escrow at once, or nothing happens."""
        return await self._write(CREATE_TRADES, list(trades), timeout_s)

    async def ship_trades(self, trade_ids: Iterable[int], *, timeout_s: float | None = None) -> list[TradeResult]:
        """PAID -> SHIPPED; starts each trade's auto-confirm timer."""
        return await self._write(SHIP_TRADES, trade_refs(trade_ids), timeout_s)

    async def confirm_trades(self, trade_ids: Iterable[int], *, timeout_s: float | None = None) -> list[TradeResult]:
        """The buyer confirms receipt: the held amount less the fee goes to the seller."""
        return await self._write(CONFIRM_TRADES, trade_refs(trade_ids), timeout_s)

    async def refund_trades(self, refunds: Iterable[Refund], *, timeout_s: float | None = None) -> list[TradeResult]:
        """Partial or full refunds from the held money, each idempotent by its refund id."""
        return await self._write(REFUND_TRADES, list(refunds), timeout_s)

    async def open_disputes(self, trade_ids: Iterable[int], *, timeout_s: float | None = None) -> list[TradeResult]:
        """Freeze each trade's timer (one dispute per trade)."""
        return await self._write(OPEN_DISPUTES, trade_refs(trade_ids), timeout_s)

    async def withdraw_disputes(self, trade_ids: Iterable[int], *, timeout_s: float | None = None) -> list[TradeResult]:
        """End disputes without a ruling: the timers resume with the time they had left."""
        return await self._write(WITHDRAW_DISPUTES, trade_refs(trade_ids), timeout_s)

    async def resolve_disputes(
        self, resolutions: Iterable[DisputeResolution], *, timeout_s: float | None = None
    ) -> list[TradeResult]:
        """End disputes by a split; the trades are CLOSED."""
        return await self._write(RESOLVE_DISPUTES, list(resolutions), timeout_s)

    async def extend_trades(
        self, extensions: Iterable[Extension], *, timeout_s: float | None = None
    ) -> list[TradeResult]:
        """Extend auto-confirm timers, each idempotent by its extension id."""
        return await self._write(EXTEND_TRADES, list(extensions), timeout_s)

    async def create_trade(self, trade: NewTrade, *, timeout_s: float | None = None) -> TradeResult:
        """create_trades for one trade (concurrent callers still share RPCs)."""
        return (await self.create_trades([trade], timeout_s=timeout_s))[0]

    async def ship_trade(self, trade_id: int, *, timeout_s: float | None = None) -> TradeResult:
        return (await self.ship_trades([trade_id], timeout_s=timeout_s))[0]

    async def confirm_trade(self, trade_id: int, *, timeout_s: float | None = None) -> TradeResult:
        return (await self.confirm_trades([trade_id], timeout_s=timeout_s))[0]

    async def refund_trade(
        self, trade_id: int, refund_id: int, amount: int, *, timeout_s: float | None = None
    ) -> TradeResult:
        """One refund; keep ``refund_id`` for retries (a fresh id would be a second refund)."""
        return (await self.refund_trades([Refund(trade_id, refund_id, amount)], timeout_s=timeout_s))[0]

    async def open_dispute(self, trade_id: int, *, timeout_s: float | None = None) -> TradeResult:
        return (await self.open_disputes([trade_id], timeout_s=timeout_s))[0]

    async def withdraw_dispute(self, trade_id: int, *, timeout_s: float | None = None) -> TradeResult:
        return (await self.withdraw_disputes([trade_id], timeout_s=timeout_s))[0]

    async def resolve_dispute(self, trade_id: int, buyer_amount: int, *, timeout_s: float | None = None) -> TradeResult:
        return (await self.resolve_disputes([DisputeResolution(trade_id, buyer_amount)], timeout_s=timeout_s))[0]

    async def extend_trade(
        self, trade_id: int, extension_id: int, extend_by_s: int, *, timeout_s: float | None = None
    ) -> TradeResult:
        """One extension; like refund_trade, keep ``extension_id`` for retries."""
        return (await self.extend_trades([Extension(trade_id, extension_id, extend_by_s)], timeout_s=timeout_s))[0]

    # ------------------------------------------------------------------ write machinery

    async def _write(self, op: WriteOp, items: list[Any], timeout_s: float | None) -> list[Any]:
        self._check_open()
        call = WriteCall(op, items, self._cfg, timeout_s, now_s())
        while not call.done:
            smap = await self._map(call)
            generation = self._topology.generation
            entries = call.plan(smap)
            if entries is None:
                verdict: Verdict | None = call.no_route()
            else:
                await self._round(op, entries, call.deadline)
                verdict = call.absorb(entries, now_s())
                if verdict is None:
                    break
            await self._pause(verdict, generation, call)
        return call.results()

    async def _round(self, op: WriteOp, entries: list[Entry], deadline: float) -> None:
        waiter = _Waiter(len(entries), asyncio.get_running_loop())
        for e in entries:
            e.waiter = waiter
        sent = 0
        try:
            try:
                for e in entries:
                    await self._enqueue(op, e, deadline)
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
            rem = deadline - now_s()
            if rem > 0 and not waiter.fut.done():
                await asyncio.wait({waiter.fut}, timeout=rem)
        finally:
            if not waiter.fut.done():  # deadline, or this coroutine was cancelled
                f = Failure(Failure.RETRY, "not sent before the deadline")
                for e in entries:
                    q = self._queues.get((op.method, e.shard_id))
                    if q is not None and q.state.cancel(e, f):
                        q.room.set()

    async def _enqueue(self, op: WriteOp, e: Entry, deadline: float) -> None:
        q = self._queue(op, e.shard_id)
        cfg = self._cfg
        while not q.state.has_room(e.n, cfg.max_queued_items_per_shard):
            if self._closed:
                raise ClientClosedError("client is closed")
            rem = deadline - now_s()
            if rem <= 0:
                raise _QueueFull
            q.room.clear()
            try:
                await asyncio.wait_for(q.room.wait(), rem)
            except TimeoutError:
                pass
        if self._closed:
            raise ClientClosedError("client is closed")
        q.state.push(e)
        self._launch(q)

    def _launch(self, q: _Queue) -> None:
        cfg = self._cfg
        if self._closed:
            return
        batches = q.state.take(cfg.max_batch_items, cfg.max_in_flight_per_shard)
        if not batches:
            return
        q.room.set()
        loop = asyncio.get_running_loop()
        for batch in batches:
            task = loop.create_task(self._send(q, batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, q: _Queue, batch: list[Entry]) -> None:
        op = q.state.op
        now = now_s()
        address = self._topology.pick(q.state.shard_id, now)
        resp: Any = None
        exc: BaseException | None = None
        try:
            if self._closed:
                raise ClientClosedError("client is closed")
            mc = self._unary(address, op.method, None, op.response_cls.FromString)
            rpc = mc(batch_body(batch), timeout=batch_timeout(batch, self._cfg.attempt_timeout_s, now))
            self._rpc_count += 1
        except Exception as e:  # noqa: BLE001 - not started, so certainly not applied
            f = closed_failure() if self._closed else Failure(Failure.RETRY, f"could not start the RPC: {e!r}")
            self._finish(q, batch, address, None, None, f)
            return
        try:
            resp = await rpc
        except BaseException as e:  # noqa: BLE001 - including cancellation: the batch must settle
            exc = e
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
            state.in_flight -= 1
            self._launch(q)

    # ------------------------------------------------------------------ reads

    async def lookup_accounts(
        self,
        ids: Iterable[int],
        *,
        consistency: ReadConsistency = ReadConsistency.LINEARIZABLE,
        timeout_s: float | None = None,
    ) -> list[Account]:
        """The accounts found among ``ids``, in request order (missing ids are skipped)."""
        return await self._lookup(LOOKUP_ACCOUNTS, ids, consistency, timeout_s)

    async def lookup_transfers(
        self,
        ids: Iterable[int],
        *,
        consistency: ReadConsistency = ReadConsistency.LINEARIZABLE,
        timeout_s: float | None = None,
    ) -> list[Transfer]:
        """The transfers found among ``ids``, in request order (missing ids are skipped)."""
        return await self._lookup(LOOKUP_TRANSFERS, ids, consistency, timeout_s)

    async def lookup_trades(
        self,
        ids: Iterable[int],
        *,
        consistency: ReadConsistency = ReadConsistency.LINEARIZABLE,
        timeout_s: float | None = None,
    ) -> list[Trade]:
        """The trades found among ``ids``, in request order (missing ids are skipped)."""
        return await self._lookup(LOOKUP_TRADES, ids, consistency, timeout_s)

    async def _lookup(self, op: LookupOp, ids: Iterable[int], consistency: Any, timeout_s: float | None) -> list[Any]:
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
            smap = await self._map(call)
            generation = self._topology.generation
            chunks = plan_lookup(id_list, pending, smap, self._cfg.max_batch_items)
            failures: list[Failure] = []
            if chunks is None:
                failures.append(Failure(Failure.RETRY, "the shard map assigns no shard to some ids", refresh=True))
            else:
                now = now_s()
                timeout = max(0.001, min(self._cfg.attempt_timeout_s, call.remaining(now)))
                targets = [(sid, self._topology.pick(sid, now, leader=leader), positions) for sid, positions in chunks]

                async def one(addr: str, positions: list[int], timeout: float = timeout) -> Any:
                    mc = self._unary(addr, op.method, op.request_cls.SerializeToString, op.response_cls.FromString)
                    self._rpc_count += 1
                    return await mc(lookup_request(op, [id_list[p] for p in positions], level), timeout=timeout)

                answers = await asyncio.gather(*(one(a, p) for _, a, p in targets), return_exceptions=True)
                done: set[int] = set()
                for (sid, addr, positions), resp in zip(targets, answers, strict=True):
                    if isinstance(resp, BaseException):
                        if isinstance(resp, asyncio.CancelledError):
                            raise resp
                        f = classify(resp, write=False, closed=self._closed)
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
                await self._pause(call.failed(failures, now_s()), generation, call)
        return [found[i] for i in id_list if i in found]

    async def get_account_transfers(
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
        """One page of the transfers of ``account_id`` (see Client.get_account_transfers)."""
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
        resp = await self._routed_read(
            "get_account_transfers",
            account_id,
            GET_ACCOUNT_TRANSFERS_METHOD,
            req,
            ledger_pb2.GetAccountTransfersResponse.FromString,
            level,
            timeout_s,
        )
        return Page([transfer_from_proto(m) for m in resp.transfers], resp.next_page_token)

    async def _routed_read(
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
            smap = await self._map(call)
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
                    return await mc(req, timeout=max(0.001, min(self._cfg.attempt_timeout_s, call.remaining(now))))
                except Exception as exc:  # noqa: BLE001
                    f = classify(exc, write=False, closed=self._closed)
                    self._topology.note(sid, addr, f, now_s())
            await self._pause(call.failed([f], now_s()), generation, call)

    async def iter_account_transfers(self, account_id: int, **kwargs: Any) -> AsyncIterator[Transfer]:
        """Every transfer of get_account_transfers(account_id, **kwargs), page after page."""
        kwargs = dict(kwargs)
        while True:
            page = await self.get_account_transfers(account_id, **kwargs)
            for t in page.items:
                yield t
            if not page.next_page_token:
                return
            kwargs["page_token"] = page.next_page_token

    async def list_trades(
        self,
        account_id: int,
        *,
        role: TradeRole = TradeRole.BUYER,
        limit: int = 100,
        page_token: str = "",
        consistency: ReadConsistency = ReadConsistency.LINEARIZABLE,
        timeout_s: float | None = None,
    ) -> TradePage:
        """One page of the trades of ``account_id`` as buyer or seller (see Client.list_trades)."""
        self._check_open()
        level = check_consistency(consistency)
        req = list_trades_request(account_id, role=role, limit=limit, page_token=page_token, consistency=level)
        resp = await self._routed_read(
            "list_trades", account_id, LIST_TRADES_METHOD, req, escrow_pb2.ListTradesResponse.FromString, level,
            timeout_s,
        )  # fmt: skip
        return TradePage([trade_from_proto(m) for m in resp.trades], resp.next_page_token)

    async def iter_trades(self, account_id: int, **kwargs: Any) -> AsyncIterator[Trade]:
        """Every trade of list_trades(account_id, **kwargs), page after page."""
        kwargs = dict(kwargs)
        while True:
            page = await self.list_trades(account_id, **kwargs)
            for t in page.items:
                yield t
            if not page.next_page_token:
                return
            kwargs["page_token"] = page.next_page_token

    async def shard_map(self, *, timeout_s: float | None = None) -> ShardMap:
        """The cluster's current shard map, fetched now from any node."""
        self._check_open()
        call = ReadCall("shard_map", self._cfg, timeout_s, now_s())
        generation = self._topology.generation
        attempt = 0
        while not await self._refresh(call.deadline, generation):
            rem = call.remaining(now_s())
            if rem <= MIN_ATTEMPT_S:
                call.last = Failure(Failure.RETRY, f"no node answered ({self._last_map_error})")
                raise call.timeout_error()
            await asyncio.sleep(min(rem, backoff_delay(attempt, self._cfg.backoff_base_s, self._cfg.backoff_max_s)))
            attempt += 1
            self._check_open()
        smap = self._topology.map
        assert smap is not None
        return smap

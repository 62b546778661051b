"""The asyncio client (grpc.aio): the same API as Client, awaitable.

Every call is a program of the core (_core.py) that this module runs in the
calling coroutine, awaiting the I/O it asks for. Coroutines calling a batch write
queue their items per shard and RPC method; each batch is sent by its own task,
whose completion hands every caller its results and sends what queued up
meanwhile. Use one AsyncClient per event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc.aio

from tidebank.common.tls import open_channel

from ._core import (
    END_OF_STREAM,
    BaseClient,
    Config,
    Core,
    Emit,
    Entry,
    Failure,
    NextChunk,
    NullSignal,
    OpenStream,
    Program,
    QueueState,
    RefreshMap,
    Rpc,
    Send,
    Sleep,
    T,
    WriteOp,
    WriteRound,
    closed_failure,
    fail_entries,
    next_page_kwargs,
    now_s,
)
from ._model import (
    Account,
    AccountResult,
    ClearingItem,
    ClearingItemResult,
    DisputeResolution,
    Extension,
    NewTrade,
    Page,
    Participant,
    ParticipantResult,
    ParticipantUpdate,
    ReadConsistency,
    Refund,
    ShardMap,
    Statement,
    Trade,
    TradePage,
    TradeResult,
    TradeRole,
    Transfer,
    TransferResult,
    Window,
    WindowStep,
)


class _Room(NullSignal):
    """A queue's signal: set when the queue may have room for the coroutines waiting to push."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify_all(self) -> None:
        self._event.set()

    async def wait(self, timeout: float) -> None:
        self._event.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout)


class _Waiter:
    __slots__ = ("_left", "fut")

    def __init__(self, n: int, loop: asyncio.AbstractEventLoop) -> None:
        self._left = n
        self.fut: asyncio.Future[None] = loop.create_future()

    def done_one(self) -> None:
        self._left -= 1
        if self._left <= 0 and not self.fut.done():
            self.fut.set_result(None)


class AsyncStatementExport:
    """A statement export as it streams (the async form of StatementExport): ``async for`` over it once for the
    participant's items (ClearingItem, by id), then read ``statement``. Nothing is sent before the iteration
    starts and at most one chunk of items is held at a time. ``aclose()`` (or the ``async with`` block) cancels
    the stream when the loop is left early.

        async with client.export_statement(1, 7, participant_id) as export:
            async for item in export:
                ...
            print(export.statement.sha256)
    """

    def __init__(self, client: AsyncClient, program: Program[Statement]) -> None:
        self._client = client
        self._program = program
        self._items: AsyncIterator[ClearingItem] | None = None
        self._statement: Statement | None = None

    def __aiter__(self) -> AsyncIterator[ClearingItem]:
        if self._items is not None:
            raise RuntimeError("a statement export streams once: call export_statement again")
        self._items = self._drive()
        return self._items

    async def _drive(self) -> AsyncIterator[ClearingItem]:
        program, client = self._program, self._client
        streams: list[Any] = []
        try:
            answer: Any = None
            while True:
                try:
                    request = program.send(answer)
                except StopIteration as done:
                    self._statement = done.value
                    return
                answer = None
                if isinstance(request, Emit):
                    for item in request.items:
                        yield item
                    continue
                answer = await client._handle(request)
                if isinstance(request, OpenStream) and answer[0] is not None:
                    streams.append(answer[0])
        finally:
            for stream in streams:
                stream.cancel()  # a no-op on a stream that ended
            program.close()

    @property
    def statement(self) -> Statement:
        """The Statement (totals, settlement, SHA-256 digest), known once the last item was read."""
        if self._statement is None:
            raise RuntimeError("the statement follows the last item: iterate over the export to its end first")
        return self._statement

    async def aclose(self) -> None:
        """Stop streaming (cancels the RPC). Idempotent."""
        if self._items is None:
            self._items = self._drive()
            self._program.close()
        await self._items.aclose()  # type: ignore[attr-defined]

    async def __aenter__(self) -> AsyncStatementExport:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class AsyncClient(BaseClient):
    """An asyncio tidebank client with the same constructor and methods as Client.

    ``async with AsyncClient(["127.0.0.1:7001"]) as c: await c.create_transfers([...])``.
    Channels are opened on first use, inside the running loop.
    """

    def _make_core(self, cfg: Config) -> Core:
        self._tasks: set[asyncio.Task[None]] = set()
        self._refreshing: asyncio.Future[bool] | None = None
        return Core(
            cfg,
            open_channel=lambda address: open_channel(address, cfg.tls, cfg.options, aio=True),
            guard=contextlib.nullcontext(),  # one event loop: nothing runs between two awaits
            new_signal=_Room,
        )

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channels. Queued calls fail with ClientClosedError; writes already
        sent fail with OutcomeUnknownError. Idempotent."""
        channels = self._core.close()
        if channels is None:
            return
        for ch in channels:
            await ch.close()
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # ------------------------------------------------------------------ the driver: the I/O a program asks for

    async def _run(self, program: Program[T]) -> T:
        """Run a call program of the core to its end in this coroutine."""
        answer = None
        while True:
            try:
                request = program.send(answer)
            except StopIteration as done:
                return done.value
            answer = await self._handle(request)

    async def _send(self, s: Send) -> list[Any]:
        async def one(rpc: Rpc) -> Any:
            try:
                return await self._core.stub(rpc)(rpc.request, timeout=rpc.timeout)
            except Exception as exc:  # noqa: BLE001 - the program decides what it means
                return exc

        if len(s.rpcs) == 1:
            return [await one(s.rpcs[0])]
        return list(await asyncio.gather(*(one(rpc) for rpc in s.rpcs)))

    @staticmethod
    async def _sleep(s: Sleep) -> None:
        await asyncio.sleep(s.seconds)

    async def _open_stream(self, r: OpenStream) -> Any:
        try:
            return self._core.stub(r.rpc)(r.rpc.request, timeout=r.rpc.timeout), None
        except Exception as exc:  # noqa: BLE001 - the program decides what it means
            return None, exc

    @staticmethod
    async def _next_chunk(r: NextChunk) -> Any:
        try:
            message = await r.stream.read()
        except Exception as exc:  # noqa: BLE001
            return exc
        return END_OF_STREAM if message is grpc.aio.EOF else message

    async def _refresh(self, r: RefreshMap) -> bool:
        """Concurrent callers share one fetch."""
        topo = self._core.topology
        while self._refreshing is not None:
            rem = r.deadline - now_s()
            if rem <= 0:
                return False
            fut = self._refreshing
            await asyncio.wait({fut}, timeout=rem)
            if not fut.done():
                return False
            if topo.refreshed_since(r.generation):
                return True
        if topo.refreshed_since(r.generation):
            return True
        fut = self._refreshing = asyncio.get_running_loop().create_future()
        ok = False
        try:
            ok = await self._run(self._core.fetch_map(r.deadline))
        finally:
            self._refreshing = None
            fut.set_result(ok)
        return ok

    async def _round(self, r: WriteRound) -> None:
        waiter = _Waiter(len(r.entries), asyncio.get_running_loop())
        for e in r.entries:
            e.waiter = waiter
        try:
            for k, e in enumerate(r.entries):
                refused = await self._enqueue(r.op, e, r.deadline)
                if refused is not None:
                    fail_entries(r.entries[k:], refused)
                    break
            rem = r.deadline - now_s()
            if rem > 0 and not waiter.fut.done():
                await asyncio.wait({waiter.fut}, timeout=rem)
        finally:
            if not waiter.fut.done():  # deadline, or this coroutine was cancelled
                self._core.withdraw(r.entries)

    async def _enqueue(self, op: WriteOp, e: Entry, deadline: float) -> Failure | None:
        q = self._core.queue(op, e.shard_id)
        if q is None:
            return closed_failure()
        while isinstance(verdict := self._core.admit(q, e, deadline, now_s()), float):
            await q.io.wait(verdict)
        if verdict is None:
            self._launch(q, self._core.push(q, e))
        return verdict

    def _launch(self, q: QueueState, batches: list[list[Entry]]) -> None:
        loop = asyncio.get_running_loop()
        for batch in batches:
            task = loop.create_task(self._send_batch(q, batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send_batch(self, q: QueueState, batch: list[Entry]) -> None:
        rpc = self._core.batch_rpc(q, batch, now_s())
        try:
            call = self._core.stub(rpc)(rpc.request, timeout=rpc.timeout)
        except Exception as exc:  # noqa: BLE001 - not started, so certainly not applied
            self._finish(q, batch, rpc, None, exc, started=False)
            return
        resp: Any = None
        exc: BaseException | None = None
        try:
            resp = await call
        except BaseException as e:  # noqa: BLE001 - including cancellation: the batch must settle
            exc = e
        self._finish(q, batch, rpc, resp, exc)

    # ------------------------------------------------------------------ writes

    async def create_accounts(
        self, accounts: Iterable[Account], *, owner: str | None = None, timeout_s: float | None = None
    ) -> list[AccountResult]:
        """Create accounts; one AccountResult per item, in request order (see Client)."""
        return await self._run(self._core.create_accounts(accounts, timeout_s, owner))

    async def create_transfers(
        self, transfers: Iterable[Transfer], *, timeout_s: float | None = None
    ) -> list[TransferResult]:
        """Create transfers; one TransferResult per item, in request order (see Client)."""
        return await self._run(self._core.create_transfers(transfers, timeout_s))

    # ------------------------------------------------------------------ escrow writes (see Client)

    async def create_trades(self, trades: Iterable[NewTrade], *, timeout_s: float | None = None) -> list[TradeResult]:
        """Open trades: each buyer's amount moves into escrow at once, or nothing happens."""
        return await self._run(self._core.create_trades(trades, timeout_s))

    async def ship_trades(self, trade_ids: Iterable[int], *, timeout_s: float | None = None) -> list[TradeResult]:
        """PAID -> SHIPPED; starts each trade's auto-confirm timer."""
        return await self._run(self._core.ship_trades(trade_ids, timeout_s))

    async def confirm_trades(self, trade_ids: Iterable[int], *, timeout_s: float | None = None) -> list[TradeResult]:
        """The buyer confirms receipt: the held amount less the fee goes to the seller."""
        return await self._run(self._core.confirm_trades(trade_ids, timeout_s))

    async def refund_trades(self, refunds: Iterable[Refund], *, timeout_s: float | None = None) -> list[TradeResult]:
        """Partial or full refunds from the held money, each idempotent by its refund id."""
        return await self._run(self._core.refund_trades(refunds, timeout_s))

    async def open_disputes(self, trade_ids: Iterable[int], *, timeout_s: float | None = None) -> list[TradeResult]:
        """Freeze each trade's timer (one dispute per trade)."""
        return await self._run(self._core.open_disputes(trade_ids, timeout_s))

    async def withdraw_disputes(self, trade_ids: Iterable[int], *, timeout_s: float | None = None) -> list[TradeResult]:
        """End disputes without a ruling: the timers resume with the time they had left."""
        return await self._run(self._core.withdraw_disputes(trade_ids, timeout_s))

    async def resolve_disputes(
        self, resolutions: Iterable[DisputeResolution], *, timeout_s: float | None = None
    ) -> list[TradeResult]:
        """End disputes by a split; the trades are CLOSED."""
        return await self._run(self._core.resolve_disputes(resolutions, timeout_s))

    async def extend_trades(
        self, extensions: Iterable[Extension], *, timeout_s: float | None = None
    ) -> list[TradeResult]:
        """Extend auto-confirm timers, each idempotent by its extension id."""
        return await self._run(self._core.extend_trades(extensions, timeout_s))

    async def create_trade(self, trade: NewTrade, *, timeout_s: float | None = None) -> TradeResult:
        """create_trades for one trade (concurrent callers still share RPCs)."""
        return await self._run(self._core.create_trade(trade, timeout_s))

    async def ship_trade(self, trade_id: int, *, timeout_s: float | None = None) -> TradeResult:
        return await self._run(self._core.ship_trade(trade_id, timeout_s))

    async def confirm_trade(self, trade_id: int, *, timeout_s: float | None = None) -> TradeResult:
        return await self._run(self._core.confirm_trade(trade_id, timeout_s))

    async def refund_trade(
        self, trade_id: int, refund_id: int, amount: int, *, timeout_s: float | None = None
    ) -> TradeResult:
        """One refund; keep ``refund_id`` for retries (a fresh id would be a second refund)."""
        return await self._run(self._core.refund_trade(trade_id, refund_id, amount, timeout_s))

    async def open_dispute(self, trade_id: int, *, timeout_s: float | None = None) -> TradeResult:
        return await self._run(self._core.open_dispute(trade_id, timeout_s))

    async def withdraw_dispute(self, trade_id: int, *, timeout_s: float | None = None) -> TradeResult:
        return await self._run(self._core.withdraw_dispute(trade_id, timeout_s))

    async def resolve_dispute(self, trade_id: int, buyer_amount: int, *, timeout_s: float | None = None) -> TradeResult:
        return await self._run(self._core.resolve_dispute(trade_id, buyer_amount, timeout_s))

    async def extend_trade(
        self, trade_id: int, extension_id: int, extend_by_s: int, *, timeout_s: float | None = None
    ) -> TradeResult:
        """One extension; like refund_trade, keep ``extension_id`` for retries."""
        return await self._run(self._core.extend_trade(trade_id, extension_id, extend_by_s, timeout_s))

    # ------------------------------------------------------------------ clearing (see Client)

    async def register_participants(
        self, participants: Iterable[Participant], *, timeout_s: float | None = None
    ) -> list[ParticipantResult]:
        """Register participants; one ParticipantResult per item, in request order (a retry answers ``exists``)."""
        return await self._run(self._core.register_participants(participants, timeout_s))

    async def update_participants(
        self, updates: Iterable[ParticipantUpdate], *, timeout_s: float | None = None
    ) -> list[ParticipantResult]:
        """Change caps and suspend or resume participants; fields left None stay as they are."""
        return await self._run(self._core.update_participants(updates, timeout_s))

    async def set_net_debit_cap(
        self, participant_id: int, cap: int, *, timeout_s: float | None = None
    ) -> ParticipantResult:
        """A new net debit cap (``cap_below_position`` when the participant already owes more)."""
        return await self._run(self._core.set_net_debit_cap(participant_id, cap, timeout_s))

    async def suspend_participant(self, participant_id: int, *, timeout_s: float | None = None) -> ParticipantResult:
        """A suspended payer submits nothing new (its accepted items stay)."""
        return await self._run(self._core.suspend_participant(participant_id, timeout_s))

    async def resume_participant(self, participant_id: int, *, timeout_s: float | None = None) -> ParticipantResult:
        return await self._run(self._core.resume_participant(participant_id, timeout_s))

    async def submit_items(
        self, items: Iterable[ClearingItem], *, timeout_s: float | None = None
    ) -> list[ClearingItemResult]:
        """Clear items; one ClearingItemResult per item, in request order (see Client.submit_items)."""
        return await self._run(self._core.submit_items(items, timeout_s))

    async def lookup_participants(self, ids: Iterable[int], *, timeout_s: float | None = None) -> list[Participant]:
        """The participants found among ``ids``, in request order, with their current position."""
        return await self._run(self._core.lookup_participants(ids, timeout_s))

    async def list_participants(
        self, ledger: int = 0, *, after: int = 0, limit: int = 0, timeout_s: float | None = None
    ) -> list[Participant]:
        """The participants of ``ledger`` (0: of every ledger), by id, after the id ``after``: every one of them
        (``limit`` 0, read page by page), or one page of at most ``limit`` (the next page: ``after`` its last id)."""
        return await self._run(self._core.list_participants(ledger, after, limit, timeout_s))

    async def lookup_items(
        self,
        ids: Iterable[int],
        *,
        consistency: ReadConsistency = ReadConsistency.LINEARIZABLE,
        timeout_s: float | None = None,
    ) -> list[ClearingItem]:
        """The items found among ``ids``, in request order (missing ids are skipped)."""
        return await self._run(self._core.lookup_items(ids, consistency, timeout_s))

    async def list_windows(
        self, ledger: int, after: int = 0, limit: int = 0, *, timeout_s: float | None = None
    ) -> list[Window]:
        """One page of the ledger's windows after window number ``after`` (see Client.list_windows)."""
        return await self._run(self._core.list_windows(ledger, after, limit, timeout_s))

    async def get_window(
        self, ledger: int, number: int = 0, bilateral: bool = False, *, timeout_s: float | None = None
    ) -> Window:
        """One window with its nets (``number`` 0: the open window); ``bilateral`` adds the gross matrix."""
        return await self._run(self._core.get_window(ledger, number, bilateral, timeout_s))

    async def close_window(self, ledger: int, number: int = 0, *, timeout_s: float | None = None) -> WindowStep:
        """Close a window (0: the open one; see Client.close_window)."""
        return await self._run(self._core.close_window(ledger, number, timeout_s))

    async def settle_window(self, ledger: int, number: int, *, timeout_s: float | None = None) -> WindowStep:
        """Settle a closed window by ledger transfers, all or nothing (see Client.settle_window)."""
        return await self._run(self._core.settle_window(ledger, number, timeout_s))

    async def unwind_participant(
        self, ledger: int, number: int, participant_id: int, *, timeout_s: float | None = None
    ) -> WindowStep:
        """Exclude a participant's items from a closed window and re-net it."""
        return await self._run(self._core.unwind_participant(ledger, number, participant_id, timeout_s))

    async def abort_window(self, ledger: int, number: int, *, timeout_s: float | None = None) -> WindowStep:
        """Abort a closed window that has not settled: its items are excluded on every shard, the positions they
        raised given back, and it is never settled. ``window_already_aborted`` after a retry means it is aborted
        (maybe by this very call); a window in another state raises TidebankError (FAILED_PRECONDITION)."""
        return await self._run(self._core.abort_window(ledger, number, timeout_s))

    def export_statement(
        self,
        ledger: int,
        number: int,
        participant_id: int,
        include_unwound: bool = False,
        *,
        timeout_s: float | None = None,
    ) -> AsyncStatementExport:
        """A participant's items of a window, streamed by id, then its Statement: ``async for`` over the
        returned AsyncStatementExport, then read its ``statement`` (see Client.export_statement). Not a
        coroutine: nothing is sent before the iteration starts."""
        return AsyncStatementExport(
            self, self._core.export_statement(ledger, number, participant_id, include_unwound, timeout_s)
        )

    # ------------------------------------------------------------------ reads

    async def lookup_accounts(
        self,
        ids: Iterable[int],
        *,
        consistency: ReadConsistency = ReadConsistency.LINEARIZABLE,
        timeout_s: float | None = None,
    ) -> list[Account]:
        """The accounts found among ``ids``, in request order (missing ids are skipped)."""
        return await self._run(self._core.lookup_accounts(ids, consistency, timeout_s))

    async def lookup_transfers(
        self,
        ids: Iterable[int],
        *,
        consistency: ReadConsistency = ReadConsistency.LINEARIZABLE,
        timeout_s: float | None = None,
    ) -> list[Transfer]:
        """The transfers found among ``ids``, in request order (missing ids are skipped)."""
        return await self._run(self._core.lookup_transfers(ids, consistency, timeout_s))

    async def lookup_trades(
        self,
        ids: Iterable[int],
        *,
        consistency: ReadConsistency = ReadConsistency.LINEARIZABLE,
        timeout_s: float | None = None,
    ) -> list[Trade]:
        """The trades found among ``ids``, in request order (missing ids are skipped)."""
        return await self._run(self._core.lookup_trades(ids, consistency, timeout_s))

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
        program = self._core.get_account_transfers(
            account_id, limit, page_token, reversed, debits, credits, timestamp_min, timestamp_max, consistency,
            timeout_s,
        )  # fmt: skip
        return await self._run(program)

    async def iter_account_transfers(self, account_id: int, **kwargs: Any) -> AsyncIterator[Transfer]:
        """Every transfer of get_account_transfers(account_id, **kwargs), page after page."""
        async for t in self._pages(self.get_account_transfers, account_id, kwargs):
            yield t

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
        return await self._run(self._core.list_trades(account_id, role, limit, page_token, consistency, timeout_s))

    async def iter_trades(self, account_id: int, **kwargs: Any) -> AsyncIterator[Trade]:
        """Every trade of list_trades(account_id, **kwargs), page after page."""
        async for t in self._pages(self.list_trades, account_id, kwargs):
            yield t

    @staticmethod
    async def _pages(get_page: Any, account_id: int, kwargs: dict[str, Any]) -> AsyncIterator[Any]:
        kw: dict[str, Any] | None = dict(kwargs)
        while kw is not None:
            page = await get_page(account_id, **kw)
            for item in page.items:
                yield item
            kw = next_page_kwargs(kw, page)

    async def shard_map(self, *, timeout_s: float | None = None) -> ShardMap:
        """The cluster's current shard map, fetched now from any node."""
        return await self._run(self._core.shard_map(timeout_s))

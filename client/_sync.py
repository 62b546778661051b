"""The blocking client: thread-safe, coalescing concurrent callers into batched RPCs.

Every call is a program of the core (_core.py) that this module runs in the
calling thread, doing the I/O it asks for. Threads calling create_transfers (or
any batch write) put their items on a queue per shard and RPC method, and wait.
Batches leave on gRPC futures; the completion callback of one RPC (running on
gRPC's own daemon threads, which channel.close() stops) hands every caller its
results and sends whatever queued up meanwhile as the next batch. No thread of
this module's own is needed; waiting, backoff and retries happen in the calling
threads.
"""

from __future__ import annotations

import functools
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

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
    run_program,
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


def _result(fut: Any) -> Any:
    try:
        return fut.result()
    except Exception as exc:  # noqa: BLE001 - the program decides what it means
        return exc


class StatementExport:
    """A statement export as it streams: iterate over it once for the participant's items (ClearingItem, by id),
    then read ``statement``. Nothing is sent before the iteration starts and at most one chunk of items is held
    at a time. Leaving the loop early (or ``close()``, or the ``with`` block) cancels the stream.

        with client.export_statement(1, 7, participant_id) as export:
            for item in export:
                ...
            print(export.statement.sha256)
    """

    def __init__(self, client: Client, program: Program[Statement]) -> None:
        self._client = client
        self._program = program
        self._items: Iterator[ClearingItem] | None = None
        self._statement: Statement | None = None

    def __iter__(self) -> Iterator[ClearingItem]:
        if self._items is not None:
            raise RuntimeError("a statement export streams once: call export_statement again")
        self._items = self._drive()
        return self._items

    def _drive(self) -> Iterator[ClearingItem]:
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
                    yield from request.items
                    continue
                answer = client._handle(request)
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

    def close(self) -> None:
        """Stop streaming (cancels the RPC). Idempotent."""
        if self._items is None:
            self._items = iter(())
            self._program.close()
        else:
            self._items.close()  # type: ignore[attr-defined]

    def __enter__(self) -> StatementExport:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Client(BaseClient):
    """A blocking tidebank client. Thread-safe: share one per process.

    ``Client(["10.0.0.1:7001", "10.0.0.2:7001"])`` or ``Client("h1:7001,h2:7001")``.
    Any node works as a seed: the client fetches the shard map, sends each shard's
    items to its leader, follows leader changes, and batches the items of
    concurrent callers. Every call finishes within ``timeout_s`` (per call
    override: ``timeout_s=`` keyword).
    """

    def _make_core(self, cfg: Config) -> Core:
        self._refresh_lock = threading.Lock()
        self._tl = threading.local()
        return Core(
            cfg,
            open_channel=lambda address: open_channel(address, cfg.tls, cfg.options, aio=False),
            guard=threading.Lock(),
            new_signal=lambda: threading.Condition(threading.Lock()),
        )

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the channels. Calls waiting in queues fail with ClientClosedError;
        writes already sent fail with OutcomeUnknownError. Idempotent."""
        for ch in self._core.close() or ():
            ch.close()

    # ------------------------------------------------------------------ the driver: the I/O a program asks for

    def _run(self, program: Program[T]) -> T:
        """Run a call program of the core to its end in this thread."""
        return run_program(program, self._handle)

    def _send(self, s: Send) -> list[Any]:
        calls: list[tuple[Any, Exception | None]] = []
        for rpc in s.rpcs:  # all in flight before waiting for any
            try:
                calls.append((self._core.stub(rpc).future(rpc.request, timeout=rpc.timeout), None))
            except Exception as exc:  # noqa: BLE001
                calls.append((None, exc))
        return [exc if fut is None else _result(fut) for fut, exc in calls]

    @staticmethod
    def _sleep(s: Sleep) -> None:
        time.sleep(s.seconds)

    def _open_stream(self, r: OpenStream) -> Any:
        try:
            return self._core.stub(r.rpc)(r.rpc.request, timeout=r.rpc.timeout), None
        except Exception as exc:  # noqa: BLE001 - the program decides what it means
            return None, exc

    @staticmethod
    def _next_chunk(r: NextChunk) -> Any:
        try:
            return next(r.stream)
        except StopIteration:
            return END_OF_STREAM
        except Exception as exc:  # noqa: BLE001
            return exc

    def _refresh(self, r: RefreshMap) -> bool:
        rem = r.deadline - now_s()
        if rem <= 0 or not self._refresh_lock.acquire(timeout=rem):
            return False
        try:
            return self._core.topology.refreshed_since(r.generation) or self._run(self._core.fetch_map(r.deadline))
        finally:
            self._refresh_lock.release()

    def _round(self, r: WriteRound) -> None:
        waiter = _Waiter(len(r.entries))
        for e in r.entries:
            e.waiter = waiter
        for k, e in enumerate(r.entries):
            refused = self._enqueue(r.op, e, r.deadline)
            if refused is not None:
                fail_entries(r.entries[k:], refused)
                break
        if not waiter.wait(r.deadline - now_s()):
            self._core.withdraw(r.entries)

    def _enqueue(self, op: WriteOp, e: Entry, deadline: float) -> Failure | None:
        q = self._core.queue(op, e.shard_id)
        if q is None:
            return closed_failure()
        batches: list[list[Entry]] = []
        with q.io:
            while isinstance(verdict := self._core.admit(q, e, deadline, now_s()), float):
                q.io.wait(verdict)
            if verdict is None:
                batches = self._core.push(q, e)
        self._launch(q, batches)
        return verdict

    def _launch(self, q: QueueState, batches: list[list[Entry]]) -> None:
        # Trampoline: an RPC that fails at once completes in this very thread and
        # launches the next batch; queue that instead of recursing.
        if not batches:
            return
        tl = self._tl
        pending = getattr(tl, "pending", None)
        if pending is not None:
            pending.extend((q, b) for b in batches)
            return
        tl.pending = pending = deque((q, b) for b in batches)
        try:
            while pending:
                self._send_batch(*pending.popleft())
        finally:
            tl.pending = None

    def _send_batch(self, q: QueueState, batch: list[Entry]) -> None:
        rpc = self._core.batch_rpc(q, batch, now_s())
        try:
            fut = self._core.stub(rpc).future(rpc.request, timeout=rpc.timeout)
        except Exception as exc:  # noqa: BLE001 - not started, so certainly not applied
            self._finish(q, batch, rpc, None, exc, started=False)
            return
        fut.add_done_callback(functools.partial(self._on_done, q, batch, rpc))

    def _on_done(self, q: QueueState, batch: list[Entry], rpc: Rpc, fut: Any) -> None:
        try:
            resp, exc = fut.result(), None
        except BaseException as e:  # noqa: BLE001
            resp, exc = None, e
        self._finish(q, batch, rpc, resp, exc)

    # ------------------------------------------------------------------ writes

    def create_accounts(self, accounts: Iterable[Account], *, owner: str | None = None,
                        timeout_s: float | None = None) -> list[AccountResult]:
        """Create accounts; one AccountResult per item, in request order.

        ``owner``: the principal (an account holder) that alone may debit and read them; an account holder's
        own accounts are its own without it. Idempotent by id: re-submitting an account answers ``exists``
        (or ``exists_with_different_*``, ``exists_with_different_owner``). Raises InvalidRequestError,
        PermissionDeniedError, UnavailableError (nothing unresolved was applied) or OutcomeUnknownError
        (re-submit the ids).
        """
        return self._run(self._core.create_accounts(accounts, timeout_s, owner))

    def create_transfers(
        self, transfers: Iterable[Transfer], *, timeout_s: float | None = None
    ) -> list[TransferResult]:
        """Create transfers; one TransferResult per item, in request order.

        Items are routed by debit_account_id; linked chains travel whole. A retried
        transfer that was applied by an earlier attempt answers ``exists``.
        """
        return self._run(self._core.create_transfers(transfers, timeout_s))

    # ------------------------------------------------------------------ escrow writes
    #
    # Every escrow write is a batch with one TradeResult per item, in request order;
    # items are routed by trade id and coalesced with concurrent callers like
    # create_transfers. Each step is idempotent (a retry of an applied step answers
    # ``exists``), so the same errors apply: OutcomeUnknownError means re-submit.

    def create_trades(self, trades: Iterable[NewTrade], *, timeout_s: float | None = None) -> list[TradeResult]:
        """Open trades: each buyer's amount moves into escrow at once, or nothing happens."""
        return self._run(self._core.create_trades(trades, timeout_s))

    def ship_trades(self, trade_ids: Iterable[int], *, timeout_s: float | None = None) -> list[TradeResult]:
        """PAID -> SHIPPED; starts each trade's auto-confirm timer."""
        return self._run(self._core.ship_trades(trade_ids, timeout_s))

    def confirm_trades(self, trade_ids: Iterable[int], *, timeout_s: float | None = None) -> list[TradeResult]:
        """The buyer confirms receipt: the held amount less the fee goes to the seller."""
        return self._run(self._core.confirm_trades(trade_ids, timeout_s))

    def refund_trades(self, refunds: Iterable[Refund], *, timeout_s: float | None = None) -> list[TradeResult]:
        """Partial or full refunds from the held money, each idempotent by its refund id."""
        return self._run(self._core.refund_trades(refunds, timeout_s))

    def open_disputes(self, trade_ids: Iterable[int], *, timeout_s: float | None = None) -> list[TradeResult]:
        """Freeze each trade's timer (one dispute per trade)."""
        return self._run(self._core.open_disputes(trade_ids, timeout_s))

    def withdraw_disputes(self, trade_ids: Iterable[int], *, timeout_s: float | None = None) -> list[TradeResult]:
        """End disputes without a ruling: the timers resume with the time they had left."""
        return self._run(self._core.withdraw_disputes(trade_ids, timeout_s))

    def resolve_disputes(
        self, resolutions: Iterable[DisputeResolution], *, timeout_s: float | None = None
    ) -> list[TradeResult]:
        """End disputes by a split; the trades are CLOSED."""
        return self._run(self._core.resolve_disputes(resolutions, timeout_s))

    def extend_trades(self, extensions: Iterable[Extension], *, timeout_s: float | None = None) -> list[TradeResult]:
        """Extend auto-confirm timers, each idempotent by its extension id."""
        return self._run(self._core.extend_trades(extensions, timeout_s))

    def create_trade(self, trade: NewTrade, *, timeout_s: float | None = None) -> TradeResult:
        """create_trades for one trade (concurrent callers still share RPCs)."""
        return self._run(self._core.create_trade(trade, timeout_s))

    def ship_trade(self, trade_id: int, *, timeout_s: float | None = None) -> TradeResult:
        return self._run(self._core.ship_trade(trade_id, timeout_s))

    def confirm_trade(self, trade_id: int, *, timeout_s: float | None = None) -> TradeResult:
        return self._run(self._core.confirm_trade(trade_id, timeout_s))

    def refund_trade(
        self, trade_id: int, refund_id: int, amount: int, *, timeout_s: float | None = None
    ) -> TradeResult:
        """One refund. ``refund_id`` is yours to choose and keep: re-using it on a retry is what
        makes the retry safe (a fresh id would be a second refund)."""
        return self._run(self._core.refund_trade(trade_id, refund_id, amount, timeout_s))

    def open_dispute(self, trade_id: int, *, timeout_s: float | None = None) -> TradeResult:
        return self._run(self._core.open_dispute(trade_id, timeout_s))

    def withdraw_dispute(self, trade_id: int, *, timeout_s: float | None = None) -> TradeResult:
        return self._run(self._core.withdraw_dispute(trade_id, timeout_s))

    def resolve_dispute(self, trade_id: int, buyer_amount: int, *, timeout_s: float | None = None) -> TradeResult:
        return self._run(self._core.resolve_dispute(trade_id, buyer_amount, timeout_s))

    def extend_trade(
        self, trade_id: int, extension_id: int, extend_by_s: int, *, timeout_s: float | None = None
    ) -> TradeResult:
        """One extension; like refund_trade, keep ``extension_id`` for retries."""
        return self._run(self._core.extend_trade(trade_id, extension_id, extend_by_s, timeout_s))

    # ------------------------------------------------------------------ clearing
    #
    # Every Clearing request goes to any node, which splits it by shard; failures that certainly applied nothing
    # are retried with the same request (every write is idempotent: by participant id, item id, window number),
    # and a write whose outcome stays unknown raises OutcomeUnknownError.

    def register_participants(
        self, participants: Iterable[Participant], *, timeout_s: float | None = None
    ) -> list[ParticipantResult]:
        """Register participants; one ParticipantResult per item, in request order (a retry answers ``exists``)."""
        return self._run(self._core.register_participants(participants, timeout_s))

    def update_participants(
        self, updates: Iterable[ParticipantUpdate], *, timeout_s: float | None = None
    ) -> list[ParticipantResult]:
        """Change caps and suspend or resume participants; fields left None stay as they are."""
        return self._run(self._core.update_participants(updates, timeout_s))

    def set_net_debit_cap(self, participant_id: int, cap: int, *, timeout_s: float | None = None) -> ParticipantResult:
        """A new net debit cap (``cap_below_position`` when the participant already owes more)."""
        return self._run(self._core.set_net_debit_cap(participant_id, cap, timeout_s))

    def suspend_participant(self, participant_id: int, *, timeout_s: float | None = None) -> ParticipantResult:
        """A suspended payer submits nothing new (its accepted items stay)."""
        return self._run(self._core.suspend_participant(participant_id, timeout_s))

    def resume_participant(self, participant_id: int, *, timeout_s: float | None = None) -> ParticipantResult:
        return self._run(self._core.resume_participant(participant_id, timeout_s))

    def submit_items(
        self, items: Iterable[ClearingItem], *, timeout_s: float | None = None
    ) -> list[ClearingItemResult]:
        """Clear items; one ClearingItemResult per item, in request order. Any number: they go in requests of
        at most max_batch_items, one after the other (so the net debit caps see them in order), and
        concurrent callers share requests."""
        return self._run(self._core.submit_items(items, timeout_s))

    def lookup_participants(self, ids: Iterable[int], *, timeout_s: float | None = None) -> list[Participant]:
        """The participants found among ``ids``, in request order, with their current position."""
        return self._run(self._core.lookup_participants(ids, timeout_s))

    def list_participants(
        self, ledger: int = 0, *, after: int = 0, limit: int = 0, timeout_s: float | None = None
    ) -> list[Participant]:
        """The participants of ``ledger`` (0: of every ledger), by id, after the id ``after``: every one of them
        (``limit`` 0, read page by page), or one page of at most ``limit`` (the next page: ``after`` its last id)."""
        return self._run(self._core.list_participants(ledger, after, limit, timeout_s))

    def lookup_items(
        self,
        ids: Iterable[int],
        *,
        consistency: ReadConsistency = ReadConsistency.LINEARIZABLE,
        timeout_s: float | None = None,
    ) -> list[ClearingItem]:
        """The items found among ``ids``, in request order (missing ids are skipped)."""
        return self._run(self._core.lookup_items(ids, consistency, timeout_s))

    def list_windows(
        self, ledger: int, after: int = 0, limit: int = 0, *, timeout_s: float | None = None
    ) -> list[Window]:
        """One page of the ledger's windows after window number ``after``, oldest first, without their nets
        (``limit`` 0: the server's default page size). Pass the last number as ``after`` for the next page."""
        return self._run(self._core.list_windows(ledger, after, limit, timeout_s))

    def get_window(
        self, ledger: int, number: int = 0, bilateral: bool = False, *, timeout_s: float | None = None
    ) -> Window:
        """One window with its nets (``number`` 0: the open window); ``bilateral`` adds the gross matrix."""
        return self._run(self._core.get_window(ledger, number, bilateral, timeout_s))

    def close_window(self, ledger: int, number: int = 0, *, timeout_s: float | None = None) -> WindowStep:
        """Close a window (0: the open one, whose number is read first so that a retry cannot close the next
        one); the next window opens at once and the closed one is netted."""
        return self._run(self._core.close_window(ledger, number, timeout_s))

    def settle_window(self, ledger: int, number: int, *, timeout_s: float | None = None) -> WindowStep:
        """Settle a closed window by ledger transfers, all or nothing. ``insufficient_funds`` lists the
        shortfalls; ``window_already_settled`` after a retry means it is settled (maybe by this very call)."""
        return self._run(self._core.settle_window(ledger, number, timeout_s))

    def unwind_participant(
        self, ledger: int, number: int, participant_id: int, *, timeout_s: float | None = None
    ) -> WindowStep:
        """Exclude a participant's items from a closed window and re-net it."""
        return self._run(self._core.unwind_participant(ledger, number, participant_id, timeout_s))

    def abort_window(self, ledger: int, number: int, *, timeout_s: float | None = None) -> WindowStep:
        """Abort a closed window that has not settled: its items are excluded on every shard, the positions they
        raised given back, and it is never settled. ``window_already_aborted`` after a retry means it is aborted
        (maybe by this very call); a window in another state raises TidebankError (FAILED_PRECONDITION)."""
        return self._run(self._core.abort_window(ledger, number, timeout_s))

    def export_statement(
        self,
        ledger: int,
        number: int,
        participant_id: int,
        include_unwound: bool = False,
        *,
        timeout_s: float | None = None,
    ) -> StatementExport:
        """A participant's items of a window, streamed by id, then its Statement: iterate over the returned
        StatementExport, then read its ``statement``. ``include_unwound`` also lists the items an unwind
        excluded (not in the digest). ``timeout_s`` bounds the whole export (default: 10 minutes, or the
        client's timeout if longer). A stream that breaks after its first item raises TidebankError."""
        return StatementExport(
            self, self._core.export_statement(ledger, number, participant_id, include_unwound, timeout_s)
        )

    # ------------------------------------------------------------------ reads

    def lookup_accounts(
        self,
        ids: Iterable[int],
        *,
        consistency: ReadConsistency = ReadConsistency.LINEARIZABLE,
        timeout_s: float | None = None,
    ) -> list[Account]:
        """The accounts found among ``ids``, in request order (missing ids are skipped)."""
        return self._run(self._core.lookup_accounts(ids, consistency, timeout_s))

    def lookup_transfers(
        self,
        ids: Iterable[int],
        *,
        consistency: ReadConsistency = ReadConsistency.LINEARIZABLE,
        timeout_s: float | None = None,
    ) -> list[Transfer]:
        """The transfers found among ``ids``, in request order (missing ids are skipped)."""
        return self._run(self._core.lookup_transfers(ids, consistency, timeout_s))

    def lookup_trades(
        self,
        ids: Iterable[int],
        *,
        consistency: ReadConsistency = ReadConsistency.LINEARIZABLE,
        timeout_s: float | None = None,
    ) -> list[Trade]:
        """The trades found among ``ids``, in request order (missing ids are skipped)."""
        return self._run(self._core.lookup_trades(ids, consistency, timeout_s))

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
        program = self._core.get_account_transfers(
            account_id, limit, page_token, reversed, debits, credits, timestamp_min, timestamp_max, consistency,
            timeout_s,
        )  # fmt: skip
        return self._run(program)

    def iter_account_transfers(self, account_id: int, **kwargs: Any) -> Iterator[Transfer]:
        """Every transfer of get_account_transfers(account_id, **kwargs), page after page."""
        yield from self._pages(self.get_account_transfers, account_id, kwargs)

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
        return self._run(self._core.list_trades(account_id, role, limit, page_token, consistency, timeout_s))

    def iter_trades(self, account_id: int, **kwargs: Any) -> Iterator[Trade]:
        """Every trade of list_trades(account_id, **kwargs), page after page."""
        yield from self._pages(self.list_trades, account_id, kwargs)

    @staticmethod
    def _pages(get_page: Any, account_id: int, kwargs: dict[str, Any]) -> Iterator[Any]:
        kw: dict[str, Any] | None = dict(kwargs)
        while kw is not None:
            page = get_page(account_id, **kw)
            yield from page.items
            kw = next_page_kwargs(kw, page)

    def shard_map(self, *, timeout_s: float | None = None) -> ShardMap:
        """The cluster's current shard map, fetched now from any node."""
        return self._run(self._core.shard_map(timeout_s))

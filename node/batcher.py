"""Coalesce concurrent requests for one shard into few Raft entries.

A Raft entry costs the same fsync and round trip whether it carries one transfer
or thousands, so every request waiting for a shard rides in the next entry. At
most `in_flight_max` entries are outstanding per shard; while they are, new
requests queue (bounded) and go together in the next one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from pysyncobj import FAIL_REASON

from tidebank.node.ledger.entry import ENTRY_OPERATIONS_MAX, encode_entry
from tidebank.node.ledger.operations import Operation
from tidebank.node.outcomes import ApplyFailedError, NotAppliedError, OutcomeUnknownError, OverloadedError
from tidebank.node.raft.replica import ApplyFailed

log = logging.getLogger(__name__)

# pysyncobj outcomes that guarantee the command was not applied (FACTS.md).
NOT_APPLIED = {
    FAIL_REASON.QUEUE_FULL,
    FAIL_REASON.MISSING_LEADER,
    FAIL_REASON.NOT_LEADER,
    FAIL_REASON.DISCARDED,
    FAIL_REASON.REQUEST_DENIED,
}


@dataclass
class _Pending:
    operation: Operation | None  # None: a read barrier or an expiry pulse
    future: Future
    items: int


@dataclass
class _InFlight:
    requests: list[_Pending]
    submitted_at: float
    done: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


class ShardBatcher:
    """One per shard on a node; used while that node leads the shard."""

    def __init__(
        self,
        shard_id: int,
        submit: Callable[[bytes, Callable[[object, int], None]], None],
        *,
        entry_items_max: int = 16_384,
        in_flight_max: int = 4,
        queue_items_max: int = 100_000,
        entry_timeout_s: float = 10.0,
        clock_ns: Callable[[], int] = time.time_ns,
        is_leader: Callable[[], bool] = lambda: True,
    ):
        self.shard_id = shard_id
        self._submit = submit
        self._entry_items_max = entry_items_max
        self._in_flight_max = in_flight_max
        self._queue_items_max = queue_items_max
        self._entry_timeout_s = entry_timeout_s
        self._clock_ns = clock_ns
        self._is_leader = is_leader
        self._queue: deque[_Pending] = deque()
        self._queued_items = 0
        self._in_flight: list[_InFlight] = []
        self._cond = threading.Condition()
        self._closed = False
        self.entries_submitted = 0
        self.items_submitted = 0
        self._thread = threading.Thread(target=self._run, name=f"batcher-{shard_id}", daemon=True)
        self._thread.start()

    def submit(self, operation: Operation | None) -> Future:
        """Queue an operation (or a barrier, None) for the next entry; the future gets its codes."""
        items = len(operation.items) if operation is not None else 0
        future: Future = Future()
        with self._cond:
            if self._closed:
                raise NotAppliedError("shard batcher closed")
            if self._queued_items + items > self._queue_items_max and self._queue:
                raise OverloadedError(f"shard {self.shard_id}: {self._queued_items} items queued")
            self._queue.append(_Pending(operation, future, items))
            self._queued_items += items
            self._cond.notify()
        return future

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=5)
        for pending in list(self._queue):
            pending.future.set_exception(NotAppliedError("node shutting down"))
        self._queue.clear()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (not self._queue or len(self._in_flight) >= self._in_flight_max):
                    self._cond.wait(timeout=0.2)
                    self._expire_stuck_entries()
                if self._closed:
                    return
                taken, items = [], 0
                while self._queue and len(taken) < ENTRY_OPERATIONS_MAX:
                    head = self._queue[0]
                    if taken and items + head.items > self._entry_items_max:
                        break
                    taken.append(self._queue.popleft())
                    items += head.items
                self._queued_items -= items
                entry = _InFlight(taken, time.monotonic())
                self._in_flight.append(entry)
            try:
                payload = encode_entry(self._clock_ns(), [p.operation for p in taken if p.operation is not None])
                self.entries_submitted += 1
                self.items_submitted += items
                self._submit(payload, lambda result, error, entry=entry: self._on_applied(entry, result, error))
            except Exception as exc:  # a bug in encoding must not kill the batcher thread
                log.exception("shard %d: could not submit an entry", self.shard_id)
                self._finish(entry, NotAppliedError(f"could not submit: {exc}"))

    def _expire_stuck_entries(self) -> None:
        """An entry pysyncobj never answers for must not hold its slot forever. pysyncobj does not answer
        commands proposed by a leader that stepped down, so losing leadership ends them at once: they may
        still commit under the new leader (unknown outcome), and what was only queued was never proposed."""
        if (self._in_flight or self._queue) and not self._is_leader():
            for entry in list(self._in_flight):
                self._finish(entry, OutcomeUnknownError("leadership lost before commit"), locked=True)
            while self._queue:
                pending = self._queue.popleft()
                self._queued_items -= pending.items
                pending.future.set_exception(NotAppliedError("not leader"))
            return
        now = time.monotonic()
        for entry in list(self._in_flight):
            if now - entry.submitted_at > self._entry_timeout_s:
                self._finish(entry, OutcomeUnknownError("no answer from Raft within the entry timeout"),
                             locked=True)

    def _on_applied(self, entry: _InFlight, result: object, error: int) -> None:
        """Runs on the Raft tick thread: hand results out, never block."""
        if error != FAIL_REASON.SUCCESS:
            exc: Exception = (NotAppliedError if error in NOT_APPLIED else OutcomeUnknownError)(
                f"raft: {error}")
            self._finish(entry, exc)
            return
        if isinstance(result, ApplyFailed):
            self._finish(entry, ApplyFailedError(result.reason))
            return
        if not isinstance(result, list):
            self._finish(entry, OutcomeUnknownError(f"apply returned {result!r}"))
            return
        self._finish(entry, result)

    def _finish(self, entry: _InFlight, outcome: list | Exception, locked: bool = False) -> None:
        with entry.lock:
            if entry.done:
                return
            entry.done = True
        if isinstance(outcome, Exception):
            for pending in entry.requests:
                pending.future.set_exception(outcome)
        else:
            codes = iter(outcome)
            for pending in entry.requests:
                pending.future.set_result(next(codes) if pending.operation is not None else None)
        if locked:
            self._in_flight.remove(entry)
            self._cond.notify()
        else:
            with self._cond:
                self._in_flight.remove(entry)
                self._cond.notify()

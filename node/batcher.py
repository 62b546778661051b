"""Coalesce concurrent requests for one shard into few Raft entries.

A Raft entry costs the same fsync and round trip whether it carries one transfer
or thousands, so every request waiting for a shard rides in the next entry. At
most `in_flight_max` entries are outstanding per shard; while they are, new
requests queue (bounded) and go together in the next one.

The batcher has no thread of its own: `submit` (any thread) queues and wakes the
node's Raft loop, which calls `propose` from the shard's tick, right before
pysyncobj appends what was proposed. A request thus reaches the log within one
turn of the loop, with no hand-off to another thread on the way.
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

from tidebank.node import metrics
from tidebank.node.ledger.entry import ENTRY_OPERATIONS_MAX, encode_entry
from tidebank.node.ledger.operations import Operation
from tidebank.node.outcomes import ApplyFailedError, NotAppliedError, OutcomeUnknownError, OverloadedError
from tidebank.node.raft.replica import APPLY_STOPPED, ApplyFailed

log = logging.getLogger(__name__)

# pysyncobj outcomes that guarantee the command was not applied: each is reported before it joins the log.
NOT_APPLIED = {
    FAIL_REASON.QUEUE_FULL,
    FAIL_REASON.MISSING_LEADER,
    FAIL_REASON.NOT_LEADER,
    FAIL_REASON.DISCARDED,
    FAIL_REASON.REQUEST_DENIED,
}
ENTRY_ITEMS_MAX = 16_384
IN_FLIGHT_MAX = 4
QUEUE_ITEMS_MAX = 100_000
ENTRY_TIMEOUT_S = 10.0


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
        wake: Callable[[], None] = lambda: None,
        entry_items_max: int = ENTRY_ITEMS_MAX,
        in_flight_max: int = IN_FLIGHT_MAX,
        queue_items_max: int = QUEUE_ITEMS_MAX,
        entry_timeout_s: float = ENTRY_TIMEOUT_S,
        clock_ns: Callable[[], int] = time.time_ns,
        is_leader: Callable[[], bool] = lambda: True,
    ):
        """`submit(payload, callback)` replicates an entry (the replica's raw submit, loop thread); `wake()` asks
        the owner's loop to call `propose` soon."""
        self.shard_id = shard_id
        self._submit = submit
        self._wake = wake
        self._entry_items_max = entry_items_max
        self._in_flight_max = in_flight_max
        self._queue_items_max = queue_items_max
        self._entry_timeout_s = entry_timeout_s
        self._clock_ns = clock_ns
        self._is_leader = is_leader
        self._queue: deque[_Pending] = deque()
        self._queued_items = 0
        self._in_flight: list[_InFlight] = []
        self._lock = threading.Lock()
        self._closed = False
        self.entries_submitted = 0
        self.items_submitted = 0

    def submit(self, operation: Operation | None) -> Future:
        """Queue an operation (or a barrier, None) for the next entry; the future gets its codes (any thread)."""
        items = len(operation.items) if operation is not None else 0
        future: Future = Future()
        with self._lock:
            if self._closed:
                raise NotAppliedError("shard batcher closed")
            if self._queued_items + items > self._queue_items_max and self._queue:
                raise OverloadedError(f"shard {self.shard_id}: {self._queued_items} items queued")
            self._queue.append(_Pending(operation, future, items))
            self._queued_items += items
        self._wake()
        return future

    @property
    def has_work(self) -> bool:
        return bool(self._queue) or bool(self._in_flight)

    @property
    def queued_items(self) -> int:
        return self._queued_items

    @property
    def entries_in_flight(self) -> int:
        return len(self._in_flight)

    def propose(self) -> int:
        """Turn queued requests into entries while fewer than in_flight_max are outstanding (the owner's loop
        thread, before its tick appends them). Ends what a lost leadership or a timeout left behind. Returns
        how many entries were proposed."""
        if not self._queue and not self._in_flight:
            return 0
        self._expire_stuck_entries()
        proposed = 0
        while True:
            with self._lock:
                if self._closed or not self._queue or len(self._in_flight) >= self._in_flight_max:
                    return proposed
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
                metrics.ENTRY_ITEMS.observe(items)
                self._submit(payload, lambda result, error, entry=entry: self._on_applied(entry, result, error))
            except Exception as exc:  # a bug in encoding must not stop the loop
                log.exception("shard %d: could not submit an entry", self.shard_id)
                self._finish(entry, NotAppliedError(f"could not submit: {exc}"))
            proposed += 1

    def close(self) -> None:
        with self._lock:
            self._closed = True
            queued, self._queue = list(self._queue), deque()
            self._queued_items = 0
        for pending in queued:
            pending.future.set_exception(NotAppliedError("node shutting down"))

    def _expire_stuck_entries(self) -> None:
        """An entry pysyncobj never answers for must not hold its slot forever. pysyncobj does not answer
        commands proposed by a leader that stepped down, so losing leadership ends them at once: they may
        still commit under the new leader (unknown outcome), and what was only queued was never proposed."""
        if not self._is_leader():
            for entry in list(self._in_flight):
                self._finish(entry, OutcomeUnknownError("leadership lost before commit"))
            with self._lock:
                queued, self._queue = list(self._queue), deque()
                self._queued_items = 0
            for pending in queued:
                pending.future.set_exception(NotAppliedError("not leader"))
            return
        now = time.monotonic()
        for entry in list(self._in_flight):
            if now - entry.submitted_at > self._entry_timeout_s:
                self._finish(entry, OutcomeUnknownError("no answer from Raft within the entry timeout"))

    def _on_applied(self, entry: _InFlight, result: object, error: int) -> None:
        """Runs on the Raft loop thread: hand results out, never block."""
        if error != FAIL_REASON.SUCCESS:
            exc: Exception = (NotAppliedError if error in NOT_APPLIED else OutcomeUnknownError)(
                f"raft: {error}")
            self._finish(entry, exc)
            return
        if isinstance(result, ApplyFailed):
            self._finish(entry, ApplyFailedError(result.reason))
            return
        if result is APPLY_STOPPED:
            # committed (the other replicas apply it) but not applied here: only they can tell its results
            self._finish(entry, OutcomeUnknownError("this replica stopped applying (storage error)"))
            return
        if not isinstance(result, list):
            self._finish(entry, OutcomeUnknownError(f"apply returned {result!r}"))
            return
        self._finish(entry, result)

    def _finish(self, entry: _InFlight, outcome: list | Exception) -> None:
        with entry.lock:
            if entry.done:
                return
            entry.done = True
        metrics.COMMIT_SECONDS.observe(time.monotonic() - entry.submitted_at)
        with self._lock:
            if entry in self._in_flight:
                self._in_flight.remove(entry)
        if isinstance(outcome, Exception):
            for pending in entry.requests:
                pending.future.set_exception(outcome)
        else:
            codes = iter(outcome)
            for pending in entry.requests:
                pending.future.set_result(next(codes) if pending.operation is not None else None)
        self._wake()  # a slot is free: queued requests can go

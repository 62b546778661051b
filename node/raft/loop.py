"""The Raft side of one node: one thread ticks every shard replica, one transport carries their traffic.

pysyncobj gives each SyncObj its own thread, poller and sockets, ticking every few
milliseconds and sending appended entries only at the next heartbeat period: with
a few shards per node that was most of an idle node's CPU and most of a write's
latency. `RaftHost` runs one loop instead (TiKV/CockroachDB's multi-raft shape):

1. wait for socket events, a wakeup (a proposal), or the next timer, and hand the
   received messages to their replicas;
2. tick the replicas that received messages, were woken, or whose 10 ms tick is
   due; a leader that appended entries sends them at once;
3. fdatasync every journal written to (group commit: one per journal per turn, in parallel);
4. send what 1-3 queued, one frame per peer (transport.py).

A proposal therefore leaves within one turn of the loop, and every message that
claims something about the log leaves only after that claim is on disk.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from tidebank.node.links import LinkPolicy
from tidebank.node.raft.transport import NodeTransport

log = logging.getLogger(__name__)

TICK_PERIOD_S = 0.01  # every replica is ticked at least this often (heartbeats, elections, compaction)
POLL_MAX_S = 0.01
SYNC_WORKERS = 8  # journals fdatasync'ed at once in one turn
STALL_S = 0.2  # a poll that overran its timeout by this much held the thread up: elections are deferred


class _NoObserver:
    def observe(self, value: float) -> None:
        pass


class RaftHost:
    """See the module docstring. `add`/`remove` replicas from any thread; everything else runs on the loop."""

    def __init__(self, name: str, bind: tuple[str, int], peers: dict[str, tuple[str, int]], secret: str, *,
                 links: LinkPolicy | None = None, tick_period_s: float = TICK_PERIOD_S,
                 observer=None) -> None:
        self.name = name
        self.transport = NodeTransport(name, bind, peers, secret, links)
        self.tick_period_s = tick_period_s
        self._replicas: dict[int, object] = {}  # shard id -> ShardReplica; replaced whole, never mutated
        self._woken: set[int] = set()
        self._woken_lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._signalled = False
        self._calls: deque[tuple[Callable[[], object], Future]] = deque()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._syncer = ThreadPoolExecutor(max_workers=SYNC_WORKERS, thread_name_prefix=f"fsync-{name}")
        self.sync_seconds = observer if observer is not None else _NoObserver()  # each turn's journal syncs
        self.turns = 0
        self.ticks = 0
        self.loop_errors = 0

    # --- lifecycle --------------------------------------------------------------------------------------
    def start(self) -> None:
        self.transport.start()
        self.transport.register_wakeup(self._wake_r, self._drain_wakeup)
        self._thread = threading.Thread(target=self._run, name=f"raft-{self.name}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the loop (after closing every replica still added), then the sockets."""
        if self._thread is not None and self._thread.is_alive():
            for replica in list(self._replicas.values()):
                replica.close()
            self._stop.set()
            self._signal()
            self._thread.join(timeout=10)
        self.transport.close()
        self._syncer.shutdown(wait=True)
        self._wake_r.close()
        self._wake_w.close()

    @property
    def on_loop_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def call(self, fn: Callable[[], object], timeout_s: float = 30.0) -> object:
        """Run `fn` on the loop thread between turns and return its result (any thread but the loop's)."""
        if self.on_loop_thread:
            return fn()
        if self._thread is None or not self._thread.is_alive():
            return fn()  # not started, or stopped: nothing else touches the replicas
        future: Future = Future()
        self._calls.append((fn, future))
        self._signal()
        return future.result(timeout=timeout_s)

    def add(self, replica) -> None:
        def attach() -> None:
            self._replicas = {**self._replicas, replica.shard_id: replica}

        self.call(attach)

    def set_peers(self, peers: dict[str, tuple[str, int]]) -> None:
        """The Raft endpoints of the nodes this one talks with, after the topology changed (any thread)."""
        self.call(lambda: self.transport.set_peers(peers))

    def remove(self, replica) -> None:
        def detach() -> None:
            self._replicas = {k: v for k, v in self._replicas.items() if v is not replica}

        self.call(detach)

    # --- wakeups ----------------------------------------------------------------------------------------
    def wake(self, shard_id: int) -> None:
        """A proposal for `shard_id` is queued (any thread): tick it in the next turn, and make that turn now."""
        with self._woken_lock:
            self._woken.add(shard_id)
        self._signal()

    def _signal(self) -> None:
        if self._signalled:
            return
        self._signalled = True
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass

    def _drain_wakeup(self) -> None:
        # Drain first, then clear the flag: clearing first would let a wake's byte be drained here while its
        # flag stays set, and every later wake would be skipped until some other event woke the loop.
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass
        self._signalled = False

    # --- the loop ---------------------------------------------------------------------------------------
    def _run(self) -> None:
        next_tick = {}  # shard id -> monotonic time of its next periodic tick
        while not self._stop.is_set():
            try:
                self._turn(next_tick)
            except Exception:
                self.loop_errors += 1
                log.exception("raft loop of %s: a turn failed", self.name)
                time.sleep(0.01)
        for _, future in list(self._calls):
            future.set_exception(RuntimeError("raft loop stopped"))

    def _turn(self, next_tick: dict[int, float]) -> None:
        self.turns += 1
        now = time.monotonic()
        replicas = self._replicas
        with self._woken_lock:
            woken, self._woken = self._woken, set()
        if woken or self._calls:
            timeout = 0.0
        else:
            due = min(next_tick.values(), default=now + POLL_MAX_S)
            link_due = self.transport.next_due()
            if link_due is not None:
                due = min(due, link_due)
            timeout = min(max(0.0, due - now), POLL_MAX_S)
        polled = time.monotonic()
        self.transport.poll(timeout)
        stalled = time.monotonic() - polled - timeout > STALL_S
        while self._calls:
            fn, future = self._calls.popleft()
            try:
                future.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                future.set_exception(exc)
        replicas = self._replicas
        now = time.monotonic()
        with self._woken_lock:
            woken |= self._woken
            self._woken = set()
        for shard_id, replica in replicas.items():
            if replica.closed:
                continue
            if stalled:
                # This thread was held up (a slow disk, a paused process): the partners' heartbeats are still
                # unread, so no replica may take their silence for a dead leader.
                replica.defer_election()
            if shard_id in woken or replica.touched or now >= next_tick.get(shard_id, 0.0):
                replica.tick()
                self.ticks += 1
                next_tick[shard_id] = now + self.tick_period_s
        for shard_id in [s for s in next_tick if s not in replicas]:
            del next_tick[shard_id]
        dirty = [r for r in replicas.values() if not r.closed and r.journal_dirty]
        sync_started = time.monotonic()
        if len(dirty) > 1:
            # one fdatasync per journal, all at once: the turn waits for the slowest, not for their sum
            for future in [self._syncer.submit(r.sync_journal) for r in dirty]:
                future.result()
        elif dirty:
            dirty[0].sync_journal()
        if dirty:
            self.sync_seconds.observe(time.monotonic() - sync_started)
        self.transport.flush()

    def status(self) -> dict:
        return {"turns": self.turns, "ticks": self.ticks, "loop_errors": self.loop_errors,
                "connected_peers": self.transport.connected_peers(), **self.transport.stats()}

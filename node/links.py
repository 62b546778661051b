"""Simulated inter-DC network faults: one-way delays and cut-off data centres.

The kernel here has no netem, so the link layer lives in the node process
(docs/architecture.md, "Simulated data centres"). Every node knows its DC and the DC of every
other node; all traffic between nodes of *different* DCs passes this layer:

* Raft: :class:`DelayLine`, used by ``raft.transport.NodeTransport`` per frame. A
  frame to a node of a cut-off DC is dropped (the sender believes it sent it, as on
  a black-holed link); a delayed one waits in a per-destination FIFO queue and is
  sent by the Raft loop once due, so nothing is reordered and the loop never
  sleeps. Frames received from a node of a cut-off DC are dropped too.
* node-to-node gRPC (forwarding, 2PC): :class:`LinkInterceptor` on the channels the
  node opens to other nodes (:func:`intercepted_channel`). A cut fails the call at
  once with UNAVAILABLE; a delay is added before the request and again before the
  response.

Client traffic (client -> node) never passes the link layer.

The fault table (:class:`LinkFaults`) is in memory only: a restarted node starts with
no faults. ``tidebank dc ...`` sends the same table to every node (Admin.SetLinkFaults),
and ``tidebank dc heal`` re-sends the (empty) table to all of them.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from tidebank.v1 import admin_pb2

log = logging.getLogger(__name__)

DELAY_MS_MAX = 60_000
QUEUE_MESSAGES_MAX = 100_000  # per destination; beyond it a delayed message is dropped (and counted)


# ---------------------------------------------------------------------- the table


@dataclass(frozen=True)
class LinkTable:
    """An immutable fault table: isolated DCs and one-way delays (ms > 0, one per pair)."""

    isolated: frozenset[str] = frozenset()
    delays: tuple[tuple[str, str, int], ...] = ()  # (from_dc, to_dc, ms), sorted by (from_dc, to_dc)

    @classmethod
    def make(cls, isolated: Iterable[str] = (),
             delays: Mapping[tuple[str, str], int] | Iterable[tuple[str, str, int]] = ()) -> LinkTable:
        """Normalize: zero delays and delays within one DC are left out; a later entry for
        the same (from, to) pair wins."""
        if isinstance(delays, Mapping):
            items = delays.items()
        else:
            items = (((f, t), ms) for f, t, ms in delays)
        by_pair: dict[tuple[str, str], int] = {}
        for (from_dc, to_dc), ms in items:
            ms = int(ms)
            if ms < 0:
                raise ValueError(f"delay {from_dc}->{to_dc} is negative: {ms} ms")
            by_pair[(from_dc, to_dc)] = ms
        normalized = tuple(sorted((f, t, ms) for (f, t), ms in by_pair.items() if ms > 0 and f != t))
        return cls(frozenset(isolated), normalized)

    # -- queries -------------------------------------------------------------------------

    def is_cut(self, from_dc: str | None, to_dc: str | None) -> bool:
        """Whether traffic from one DC to another is cut (either side isolated)."""
        if from_dc is None or to_dc is None or from_dc == to_dc:
            return False
        return from_dc in self.isolated or to_dc in self.isolated

    def delay_ms(self, from_dc: str | None, to_dc: str | None) -> int:
        if from_dc is None or to_dc is None or from_dc == to_dc:
            return 0
        for f, t, ms in self.delays:
            if f == from_dc and t == to_dc:
                return ms
        return 0

    @property
    def empty(self) -> bool:
        return not self.isolated and not self.delays

    def dcs(self) -> set[str]:
        """Every DC the table names."""
        return set(self.isolated) | {f for f, _, _ in self.delays} | {t for _, t, _ in self.delays}

    # -- changes (pure: each returns a new table) ------------------------------------------

    def partition(self, dc: str) -> LinkTable:
        """``dc`` cut off from every other DC (in addition to what is already isolated)."""
        return LinkTable(self.isolated | {dc}, self.delays)

    def with_latency(self, dc_a: str, dc_b: str, ms: int) -> LinkTable:
        """One-way delay ``ms`` from A to B and from B to A (0 removes both)."""
        if dc_a == dc_b:
            raise ValueError("a delay is between two different DCs")
        pairs = {(f, t): d for f, t, d in self.delays}
        pairs[(dc_a, dc_b)] = ms
        pairs[(dc_b, dc_a)] = ms
        return LinkTable.make(self.isolated, pairs)

    @staticmethod
    def healed() -> LinkTable:
        return LinkTable()

    # -- protobuf and text -----------------------------------------------------------------

    def to_proto(self) -> admin_pb2.LinkFaults:
        message = admin_pb2.LinkFaults(isolated_dcs=sorted(self.isolated))
        for f, t, ms in self.delays:
            message.delays.add(from_dc=f, to_dc=t, delay_ms=ms)
        return message

    @classmethod
    def from_proto(cls, message: admin_pb2.LinkFaults) -> LinkTable:
        return cls.make(message.isolated_dcs, [(d.from_dc, d.to_dc, d.delay_ms) for d in message.delays])

    def to_dict(self) -> dict:
        return {"isolated_dcs": sorted(self.isolated),
                "delays": [{"from_dc": f, "to_dc": t, "delay_ms": ms} for f, t, ms in self.delays]}

    def describe(self) -> str:
        parts = [f"{dc} isolated" for dc in sorted(self.isolated)]
        parts += [f"{f}->{t} {ms} ms" for f, t, ms in self.delays]
        return ", ".join(parts) or "no faults"


def validate_link_faults(message: admin_pb2.LinkFaults, known_dcs: Sequence[str]) -> list[tuple[str, str]]:
    """Field violations (field path, description) of a SetLinkFaults request; empty if valid."""
    known = set(known_dcs)
    listed = ", ".join(known_dcs)
    violations: list[tuple[str, str]] = []
    for i, dc in enumerate(message.isolated_dcs):
        if dc not in known:
            violations.append((f"isolated_dcs[{i}]", f"unknown DC {dc!r} (DCs: {listed})"))
    seen: set[tuple[str, str]] = set()
    for i, d in enumerate(message.delays):
        for name in ("from_dc", "to_dc"):
            dc = getattr(d, name)
            if dc not in known:
                violations.append((f"delays[{i}].{name}", f"unknown DC {dc!r} (DCs: {listed})"))
        if d.from_dc == d.to_dc and d.from_dc in known:
            violations.append((f"delays[{i}]", f"a delay is between two different DCs, not {d.from_dc} and itself"))
        if d.delay_ms > DELAY_MS_MAX:
            violations.append((f"delays[{i}].delay_ms", f"at most {DELAY_MS_MAX} ms, got {d.delay_ms}"))
        pair = (d.from_dc, d.to_dc)
        if pair in seen:
            violations.append((f"delays[{i}]", f"a second delay for {d.from_dc}->{d.to_dc}"))
        seen.add(pair)
    return violations


class LinkFaults:
    """The node's current fault table. Thread-safe: readers (the Raft tick threads, gRPC
    callers) see one immutable :class:`LinkTable` at a time, swapped atomically by ``set``."""

    def __init__(self, table: LinkTable | None = None):
        self._lock = threading.Lock()
        self._table = table or LinkTable()
        self._delay_s: dict[tuple[str, str], float] = self._delay_map(self._table)
        self.version = 0  # bumped by every set

    @staticmethod
    def _delay_map(table: LinkTable) -> dict[tuple[str, str], float]:
        return {(f, t): ms / 1000.0 for f, t, ms in table.delays}

    def set(self, isolated_dcs: Iterable[str] = (),
            delays: Mapping[tuple[str, str], int] | Iterable[tuple[str, str, int]] = ()) -> LinkTable:
        """Replace the whole table; returns the new one."""
        return self.set_table(LinkTable.make(isolated_dcs, delays))

    def set_table(self, table: LinkTable) -> LinkTable:
        delay_map = self._delay_map(table)
        with self._lock:
            # Readers take (table, map) one attribute at a time; a reader between the two
            # assignments sees the old delays with the new cuts for one message, which is
            # as good as that message having been sent a moment earlier.
            self._table = table
            self._delay_s = delay_map
            self.version += 1
        return table

    def clear(self) -> None:
        self.set_table(LinkTable())

    @property
    def table(self) -> LinkTable:
        return self._table

    def is_cut(self, from_dc: str | None, to_dc: str | None) -> bool:
        return self._table.is_cut(from_dc, to_dc)

    def delay_s(self, from_dc: str | None, to_dc: str | None) -> float:
        if from_dc is None or to_dc is None or from_dc == to_dc:
            return 0.0
        return self._delay_s.get((from_dc, to_dc), 0.0)

    @property
    def empty(self) -> bool:
        return self._table.empty

    def to_proto(self) -> admin_pb2.LinkFaults:
        return self._table.to_proto()

    @classmethod
    def from_proto(cls, message: admin_pb2.LinkFaults) -> LinkFaults:
        return cls(LinkTable.from_proto(message))

    def __repr__(self) -> str:
        return f"LinkFaults({self._table.describe()})"


# ---------------------------------------------------------------------- Raft: the delay line


@dataclass(frozen=True)
class LinkPolicy:
    """What a shard replica needs to apply link faults to its Raft traffic."""

    our_dc: str
    dc_of: Callable[[str], str | None]  # peer node name -> DC, None if unknown
    faults: LinkFaults


class DelayLine:
    """Outgoing Raft messages of one replica through the link faults.

    ``send(node, message)`` drops the message if the link to the node's DC is cut,
    queues it if the link has a delay (or if earlier messages to that node still wait:
    nothing overtakes), and otherwise hands it to ``send_fn`` at once. ``flush()`` sends
    the messages that are due; the replica calls it on every tick. All methods run on the
    replica's tick thread (pysyncobj sends only from there); only the fault table is shared.
    """

    def __init__(self, policy: LinkPolicy, send_fn: Callable[[Any, Any], bool], *,
                 clock: Callable[[], float] = time.monotonic, max_queued: int = QUEUE_MESSAGES_MAX):
        self.policy = policy
        self._send_fn = send_fn
        self._clock = clock
        self._max_queued = max_queued
        self._queues: dict[Any, deque[tuple[float, Any]]] = {}
        self._dc_cache: dict[str, str | None] = {}
        self._queued = 0  # messages waiting in all queues (read from other threads for stats)
        self.dropped_cut = 0  # outgoing messages dropped on a cut link (at send or at release)
        self.dropped_incoming = 0  # incoming messages dropped on a cut link
        self.dropped_overflow = 0  # delayed messages dropped because the queue was full
        self.delayed = 0  # messages that went through a queue

    def dc_of_node(self, node) -> str | None:
        address = getattr(node, "address", None)
        if address is None:
            return None
        try:
            return self._dc_cache[address]
        except KeyError:
            dc = self._dc_cache[address] = self.policy.dc_of(address)
            return dc

    def send(self, node, message) -> bool:
        policy = self.policy
        to_dc = self.dc_of_node(node)
        faults = policy.faults
        if faults.is_cut(policy.our_dc, to_dc):
            self.dropped_cut += 1
            return True  # lost in the network: the sender cannot tell
        delay = faults.delay_s(policy.our_dc, to_dc)
        queue = self._queues.get(node)
        if delay <= 0 and not queue:
            return self._send_fn(node, message)
        if queue is None:
            queue = self._queues[node] = deque()
        if len(queue) >= self._max_queued:
            self.dropped_overflow += 1
            return True
        queue.append((self._clock() + delay, message))
        self._queued += 1
        self.delayed += 1
        return True

    def accept_from(self, node) -> bool:
        """Whether a message received from ``node`` passes (False: drop it)."""
        policy = self.policy
        if policy.faults.is_cut(self.dc_of_node(node), policy.our_dc):
            self.dropped_incoming += 1
            return False
        return True

    def flush(self) -> int:
        """Send every queued message that is due, in order per destination; returns how many."""
        if not self._queues:
            return 0
        now = self._clock()
        policy = self.policy
        sent = 0
        for node in list(self._queues):
            queue = self._queues[node]
            cut = policy.faults.is_cut(policy.our_dc, self.dc_of_node(node))
            while queue and queue[0][0] <= now:
                _, message = queue.popleft()
                self._queued -= 1
                if cut:
                    self.dropped_cut += 1  # in flight when the link was cut
                else:
                    self._send_fn(node, message)
                    sent += 1
            if not queue:
                del self._queues[node]
        return sent

    def queued(self) -> int:
        return self._queued

    def next_due(self) -> float | None:
        """When the earliest queued message is due (clock time), if any."""
        return min((queue[0][0] for queue in self._queues.values() if queue), default=None)

    def clear(self) -> None:
        self._queues.clear()
        self._queued = 0

    def stats(self) -> dict[str, int]:
        return {"link_queued": self.queued(), "link_delayed": self.delayed, "link_dropped_cut": self.dropped_cut,
                "link_dropped_incoming": self.dropped_incoming, "link_dropped_overflow": self.dropped_overflow}


# ---------------------------------------------------------------------- gRPC: the interceptor


class LinkRpcError(grpc.RpcError, grpc.Call, grpc.Future):
    """A call failed by the link layer itself (never sent): both the raised error and, for
    ``.future()`` calls, the already-failed future."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(details)
        self._code = code
        self._details = details

    # grpc.Call
    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def initial_metadata(self):
        return ()

    def trailing_metadata(self):
        return ()

    def is_active(self) -> bool:
        return False

    def time_remaining(self):
        return None

    def add_callback(self, callback) -> bool:
        return False

    def debug_error_string(self) -> str:
        return self._details

    # grpc.Future
    def cancel(self) -> bool:
        return False

    def cancelled(self) -> bool:
        return False

    def running(self) -> bool:
        return False

    def done(self) -> bool:
        return True

    def result(self, timeout=None):
        raise self

    def exception(self, timeout=None):
        return self

    def traceback(self, timeout=None):
        return None

    def add_done_callback(self, fn) -> None:
        fn(self)

    def __repr__(self) -> str:
        return f"<LinkRpcError {self._code.name}: {self._details}>"

    __str__ = __repr__


class _Scheduler:
    """One daemon thread running callbacks at given monotonic times (heap, FIFO on ties)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def call_at(self, when: float, fn: Callable[[], None]) -> None:
        with self._cond:
            heapq.heappush(self._heap, (when, next(self._seq), fn))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="link-delay", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    now = time.monotonic()
                    if self._heap and self._heap[0][0] <= now:
                        _, _, fn = heapq.heappop(self._heap)
                        break
                    self._cond.wait(None if not self._heap else self._heap[0][0] - now)
            try:
                fn()
            except Exception:  # a callback's bug must not stop every delayed response
                log.exception("delayed link callback failed")


_scheduler = _Scheduler()


class _DelayedResponse(grpc.Call, grpc.Future):
    """A ``.future()`` call whose completion reaches the caller ``delay()`` seconds after the
    response (or failure) arrived. Callbacks run on the scheduler thread."""

    def __init__(self, inner, delay: Callable[[], float], scheduler: _Scheduler = _scheduler):
        self._inner = inner
        self._delay = delay
        self._scheduler = scheduler
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._callbacks: list[Callable] = []
        inner.add_done_callback(self._inner_done)

    def _inner_done(self, _inner) -> None:
        delay = 0.0 if self._inner.cancelled() else self._delay()
        if delay <= 0:
            self._finish()
        else:
            self._scheduler.call_at(time.monotonic() + delay, self._finish)

    def _finish(self) -> None:
        with self._lock:
            if self._done.is_set():
                return
            self._done.set()
            callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            try:
                fn(self)
            except Exception:
                log.exception("done callback of a delayed call failed")

    # grpc.Future
    def cancel(self) -> bool:
        return self._inner.cancel()

    def cancelled(self) -> bool:
        return self._inner.cancelled()

    def running(self) -> bool:
        return not self._done.is_set()

    def done(self) -> bool:
        return self._done.is_set()

    def _wait(self, timeout) -> None:
        if not self._done.wait(timeout):
            raise grpc.FutureTimeoutError()

    def result(self, timeout=None):
        self._wait(timeout)
        return self._inner.result()

    def exception(self, timeout=None):
        self._wait(timeout)
        return self._inner.exception()

    def traceback(self, timeout=None):
        self._wait(timeout)
        return self._inner.traceback()

    def add_done_callback(self, fn) -> None:
        with self._lock:
            if not self._done.is_set():
                self._callbacks.append(fn)
                return
        fn(self)

    # grpc.Call
    def initial_metadata(self):
        return self._inner.initial_metadata()

    def trailing_metadata(self):
        return self._inner.trailing_metadata()

    def code(self):
        return self._inner.code()

    def details(self):
        return self._inner.details()

    def is_active(self) -> bool:
        return not self._done.is_set()

    def time_remaining(self):
        return self._inner.time_remaining()

    def add_callback(self, callback) -> bool:
        return self._inner.add_callback(callback)


class _CallDetails(
    collections.namedtuple("_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready",
                                            "compression")),
    grpc.ClientCallDetails,
):
    pass


class LinkInterceptor(grpc.UnaryUnaryClientInterceptor):
    """Applies the fault table to unary calls from a node in ``our_dc`` to one in ``target_dc``.

    grpc's interceptor API calls ``intercept_unary_unary`` for blocking calls (``__call__``,
    ``with_call``) and for ``.future()`` alike, in the calling thread:

    * cut: the call fails at once with UNAVAILABLE "link to DC cut (simulated)", never sent;
    * delay: the calling thread sleeps the one-way delay before the request is sent (the
      call's timeout shrinks by as much). A blocking call then sleeps the return delay after
      the response; a ``.future()`` call returns at once and its future completes the return
      delay after the response arrived (a timer thread holds it back).

    The caller must not be a Raft tick thread (forwarding and 2PC calls run on gRPC
    worker threads).
    """

    def __init__(self, our_dc: str, target_dc: str | None, faults: LinkFaults, *,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic):
        self.our_dc = our_dc
        self.target_dc = target_dc
        self.faults = faults
        self._sleep = sleep
        self._clock = clock

    def intercept_unary_unary(self, continuation, client_call_details, request):
        faults = self.faults
        if faults.empty:
            return continuation(client_call_details, request)
        if faults.is_cut(self.our_dc, self.target_dc):
            return LinkRpcError(grpc.StatusCode.UNAVAILABLE, f"link to {self.target_dc} cut (simulated)")
        details = client_call_details
        delay = faults.delay_s(self.our_dc, self.target_dc)
        if delay > 0:
            started = self._clock()
            self._sleep(delay)
            if faults.is_cut(self.our_dc, self.target_dc):  # cut while the request was on its way
                return LinkRpcError(grpc.StatusCode.UNAVAILABLE, f"link to {self.target_dc} cut (simulated)")
            if details.timeout is not None:
                remaining = details.timeout - (self._clock() - started)
                if remaining <= 0:
                    return LinkRpcError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                        "deadline exceeded while the request was delayed on the link (simulated)")
                details = _CallDetails(details.method, remaining, details.metadata, details.credentials,
                                       getattr(details, "wait_for_ready", None),
                                       getattr(details, "compression", None))
        outcome = continuation(details, request)
        if outcome.done():
            # A blocking call (with_call's continuation returns a finished outcome), or a
            # future that failed at once: the response travels back in this thread.
            back = faults.delay_s(self.target_dc, self.our_dc)
            if back > 0:
                self._sleep(back)
            return outcome
        return _DelayedResponse(outcome, lambda: faults.delay_s(self.target_dc, self.our_dc))


def intercepted_channel(address: str, target_dc: str | None, our_dc: str, faults: LinkFaults,
                        options: Sequence[tuple[str, Any]] | None = None,
                        credentials: grpc.ChannelCredentials | None = None) -> grpc.Channel:
    """A channel to a node in ``target_dc`` (mutual TLS with `credentials`, else plaintext) whose unary calls
    pass the link faults. A node in our own DC (or of unknown DC) gets a plain channel: no link in between."""
    if credentials is None:
        channel = grpc.insecure_channel(address, options=list(options or ()))
    else:
        channel = grpc.secure_channel(address, credentials, options=list(options or ()))
    if target_dc is None or target_dc == our_dc:
        return channel
    return grpc.intercept_channel(channel, LinkInterceptor(our_dc, target_dc, faults))

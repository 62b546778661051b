"""Per-principal quotas: a flooding principal is refused before the node's own queues fill.

Each principal (the authenticated caller) has two limits on the node that first receives its call:

* a token bucket of items per second: a call costs its number of items (transfers, accounts, ids in the
  batch; at least 1) and is refused when the bucket holds fewer tokens than that;
* a cap on its calls in flight at once (admitted and not yet released).

A refused call answers RESOURCE_EXHAUSTED with google.rpc ErrorInfo (reason QUOTA_EXCEEDED, domain
tidebank.v1, metadata principal / limit / limit_value) and a RetryInfo: for the bucket, the time until it
holds enough tokens for the same call; for the in-flight cap, a short fixed hint. Nothing was done, so the
call is safe to retry as is. Other principals are unaffected: every principal has its own bucket and count.

Exempt callers (other nodes forwarding or coordinating 2PC) are never throttled and not tracked: a node must
not refuse its peers' work on behalf of a client that was already admitted where its call first landed.

The defaults, per node:

* ``QUOTA_ITEMS_PER_S`` 10,000: about half of what one shard commits (21k transfers/s batched, bench/RESULTS.md),
  so a single principal cannot saturate a shard on its own; others keep a share of it.
* ``QUOTA_BURST_ITEMS`` 20,000: two seconds at that rate and more than two full batches (BATCH_ITEMS_MAX =
  8189), so a well-behaved bulk loader sending full batches is never refused at its start; a fifth of a
  shard's batcher queue (QUEUE_ITEMS_MAX = 100,000), so one principal's burst cannot fill it.
* ``QUOTA_CALLS_IN_FLIGHT`` 16: the node's gRPC server is synchronous with GRPC_WORKERS = 64 handler threads
  (GRPC_CONCURRENT_RPCS_MAX = 1024 calls accepted at once, the rest waiting for a thread); a call in flight
  holds a thread while it waits on Raft, so one principal may hold a quarter of them and at least four
  would have to flood together to occupy every thread. A refused call frees its thread at once.
* ``QUOTA_PRINCIPALS_MAX`` 10,000 tracked principals (a few hundred bytes each: a few MB). Beyond it the least
  recently used idle principal is forgotten; forgetting one loses nothing once its bucket has refilled
  (burst / rate = 2 s), which it has unless 10,000 other principals called within those 2 s. A principal with
  calls in flight is never forgotten: if every tracked principal has one, the table grows past the bound by
  at most the calls in flight (which the gRPC server bounds) and shrinks back as they are released.

A call larger than the burst (only possible with a burst configured below BATCH_ITEMS_MAX) is admitted when
the bucket is full and empties it, rather than refused forever: its cost is capped at the burst.

Pure and thread-safe: no gRPC server, no metrics library; the clock is injectable and ``on_refused(principal,
limit)`` lets the node count refusals (it is called outside the lock).
"""

from __future__ import annotations

import collections
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from google.rpc import code_pb2

from tidebank.node.api import errors

#: Items per second a principal may send to one node, sustained.
QUOTA_ITEMS_PER_S = 10_000
#: Items a principal may send at once after being idle (the bucket's size).
QUOTA_BURST_ITEMS = 20_000
#: Calls of one principal being handled at once on one node.
QUOTA_CALLS_IN_FLIGHT = 16
#: Principals whose buckets a node keeps; beyond it the least recently used idle one is forgotten.
QUOTA_PRINCIPALS_MAX = 10_000
#: Retry hint when the in-flight cap refuses a call (a call in flight usually ends within a Raft commit).
QUOTA_IN_FLIGHT_RETRY_S = 0.05

REASON = "QUOTA_EXCEEDED"
LIMIT_ITEMS_PER_S = "items_per_s"
LIMIT_CALLS_IN_FLIGHT = "calls_in_flight"


def quota_exceeded(principal: str, limit: str, limit_value: float, retry_after_s: float) -> errors.RequestError:
    """RESOURCE_EXHAUSTED / QUOTA_EXCEEDED with a RetryInfo of `retry_after_s` (rounded up to the millisecond)."""
    retry_ms = max(1, math.ceil(retry_after_s * 1000 - 1e-6))  # 1e-6: float noise must not add a millisecond
    message = f"principal {principal!r} is over its quota ({limit} = {limit_value:g}); retry in {retry_ms} ms"
    return errors.retryable(REASON, message, code=code_pb2.RESOURCE_EXHAUSTED, retry_after_ms=retry_ms,
                            principal=principal, limit=limit, limit_value=f"{limit_value:g}")


@dataclass(slots=True)
class _Bucket:
    tokens: float
    refilled_at: float
    in_flight: int = 0


class Ticket:
    """An admitted call's in-flight slot: give it back with `release()` (idempotent) or by leaving `with`."""

    __slots__ = ("principal", "items", "_quotas", "_bucket", "_released")

    def __init__(self, principal: str, items: int, quotas: Quotas | None, bucket: _Bucket | None):
        self.principal = principal
        self.items = items
        self._quotas = quotas
        self._bucket = bucket
        self._released = quotas is None  # an exempt call holds no slot

    def release(self) -> None:
        if self._quotas is not None:
            self._quotas._release(self)

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class Quotas:
    """Per-principal token buckets of items per second and caps on calls in flight, for one node."""

    def __init__(
        self,
        *,
        items_per_s: float = QUOTA_ITEMS_PER_S,
        burst_items: int = QUOTA_BURST_ITEMS,
        calls_in_flight: int = QUOTA_CALLS_IN_FLIGHT,
        principals_max: int = QUOTA_PRINCIPALS_MAX,
        in_flight_retry_s: float = QUOTA_IN_FLIGHT_RETRY_S,
        clock: Callable[[], float] = time.monotonic,
        on_refused: Callable[[str, str], None] | None = None,
    ):
        if not items_per_s > 0:
            raise ValueError(f"items_per_s must be > 0, not {items_per_s}")
        for name, value in (("burst_items", burst_items), ("calls_in_flight", calls_in_flight),
                            ("principals_max", principals_max)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, not {value}")
        self.items_per_s = items_per_s
        self.burst_items = burst_items
        self.calls_in_flight = calls_in_flight
        self.principals_max = principals_max
        self.in_flight_retry_s = in_flight_retry_s
        self._clock = clock
        self._on_refused = on_refused
        self._lock = threading.Lock()
        self._buckets: collections.OrderedDict[str, _Bucket] = collections.OrderedDict()  # least recent first

    def admit(self, principal: str, items: int, *, exempt: bool = False) -> Ticket:
        """Admit a call of `items` items (at least 1 is charged) or raise RESOURCE_EXHAUSTED / QUOTA_EXCEEDED.

        The caller must release the returned ticket when the call ends (``with quotas.admit(...):``)."""
        if exempt:
            return Ticket(principal, items, None, None)
        cost = min(max(1, items), self.burst_items)
        with self._lock:
            bucket = self._bucket_of(principal)
            if bucket.in_flight >= self.calls_in_flight:
                refusal = (LIMIT_CALLS_IN_FLIGHT, self.calls_in_flight, self.in_flight_retry_s)
            else:
                if bucket.tokens >= cost:
                    bucket.tokens -= cost
                    bucket.in_flight += 1
                    return Ticket(principal, items, self, bucket)
                refusal = (LIMIT_ITEMS_PER_S, self.items_per_s, (cost - bucket.tokens) / self.items_per_s)
        limit, limit_value, retry_after_s = refusal
        if self._on_refused is not None:
            self._on_refused(principal, limit)
        raise quota_exceeded(principal, limit, limit_value, retry_after_s)

    def in_flight(self, principal: str) -> int:
        """Calls of `principal` admitted and not yet released (0 if it is not tracked)."""
        with self._lock:
            bucket = self._buckets.get(principal)
            return 0 if bucket is None else bucket.in_flight

    def __len__(self) -> int:
        """Principals tracked now."""
        with self._lock:
            return len(self._buckets)

    def __contains__(self, principal: object) -> bool:
        with self._lock:
            return principal in self._buckets

    def _bucket_of(self, principal: str) -> _Bucket:
        """The principal's bucket, refilled to now and marked most recently used (lock held)."""
        now = self._clock()
        bucket = self._buckets.get(principal)
        if bucket is None:
            self._trim(self.principals_max - 1)
            bucket = self._buckets[principal] = _Bucket(tokens=float(self.burst_items), refilled_at=now)
            return bucket
        self._buckets.move_to_end(principal)
        elapsed = max(0.0, now - bucket.refilled_at)  # a clock that steps back refills nothing
        bucket.tokens = min(float(self.burst_items), bucket.tokens + elapsed * self.items_per_s)
        bucket.refilled_at = max(now, bucket.refilled_at)
        return bucket

    def _trim(self, keep: int) -> None:
        """Forget least recently used idle principals until at most `keep` remain (or only busy ones)."""
        excess = len(self._buckets) - keep
        if excess <= 0:
            return
        victims = []
        for principal, bucket in self._buckets.items():  # least recent first: usually the first one is idle
            if bucket.in_flight == 0:
                victims.append(principal)
                if len(victims) == excess:
                    break
        for principal in victims:
            del self._buckets[principal]

    def _release(self, ticket: Ticket) -> None:
        with self._lock:
            if ticket._released:
                return
            ticket._released = True
            ticket._bucket.in_flight -= 1
            if len(self._buckets) > self.principals_max:  # grew past the bound while all were busy
                self._trim(self.principals_max)

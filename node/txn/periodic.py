"""The node's background work on the shards it leads: one loop shape, one backoff policy.

The 2PC recovery sweeper and the escrow timers both do the same thing: every
period, for each shard this node leads, look for due work (stale prepared
transactions, due trade timers) and push it through the shard's log. They share
`LedShardsLoop` (each led shard's pass runs in parallel, so one slow shard never
holds up the others) and `RetryLater` (an item that failed is left alone for a
delay that doubles on each failure, from `first_s` up to `max_s`).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger(__name__)

SHARDS_AT_ONCE = 8
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 30.0
RETRY_KEYS_MAX = 10_000


class LedShardsLoop:
    """Calls `work(shard_id, host)` every `period_s` for each shard the node leads, until `close()`."""

    def __init__(self, node, name: str, period_s: float, work: Callable[[int, object], object]) -> None:
        self.node = node
        self.name = name
        self.period_s = period_s
        self.work = work
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=SHARDS_AT_ONCE, thread_name_prefix=name)
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _loop(self) -> None:
        while not self._stop.wait(self.period_s):
            led = [(shard_id, host) for shard_id, host in list(self.node.shards.items()) if host.is_leader()]
            for future in [self._pool.submit(self._one, shard_id, host) for shard_id, host in led]:
                future.result()

    def _one(self, shard_id: int, host) -> None:
        try:
            self.work(shard_id, host)
        except Exception:
            log.exception("shard %d: %s failed", shard_id, self.name)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)


class RetryLater:
    """Items to leave alone after a failure, for a delay doubling per failure (bounded: oldest forgotten)."""

    def __init__(self, first_s: float = RETRY_FIRST_S, max_s: float = RETRY_MAX_S,
                 keys_max: int = RETRY_KEYS_MAX) -> None:
        self.first_s = first_s
        self.max_s = max_s
        self.keys_max = keys_max
        self._items: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()  # key -> (not before, last delay)
        self._lock = threading.Lock()

    def due(self, key: Hashable, now: float) -> bool:
        with self._lock:
            entry = self._items.get(key)
        return entry is None or entry[0] <= now

    def failed(self, key: Hashable, now: float) -> float:
        """Record a failure; returns the delay before the item is due again."""
        with self._lock:
            entry = self._items.pop(key, None)
            delay = self.first_s if entry is None else min(entry[1] * 2, self.max_s)
            self._items[key] = (now + delay, delay)
            while len(self._items) > self.keys_max:
                self._items.popitem(last=False)
        return delay

    def succeeded(self, key: Hashable) -> None:
        with self._lock:
            self._items.pop(key, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

"""The 2PC recovery sweeper: resolves transactions prepared here whose coordinator went silent.

On every shard this node leads, a transaction prepared longer than SWEEP_AFTER_S
ago (cluster time) is resolved by asking its coordinator (which records ABORT
first if it has no decision: presume-abort), and finished here, releasing its
holds. A transaction that cannot be resolved yet is left alone for a while
(periodic.RetryLater), not retried every pass.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from tidebank.node.ledger.operations import OP_FINISH, Operation
from tidebank.node.txn.coordinator import STEP_TIMEOUT_S, Coordinator, finish_of
from tidebank.node.txn.periodic import LedShardsLoop, RetryLater

log = logging.getLogger(__name__)

SWEEP_PERIOD_S = 1.0
SWEEP_AFTER_S = 3.0  # a transaction prepared longer than this (cluster time) is resolved by the sweeper
SWEEP_BATCH_MAX = 100  # prepared transactions looked at per shard per pass


class Sweeper:
    """Resolves transactions prepared here whose coordinator went silent, and releases their holds."""

    def __init__(self, node, coordinator: Coordinator, clock_ns: Callable[[], int] = time.time_ns,
                 start: bool = True) -> None:
        self.node = node
        self.coordinator = coordinator
        self.clock_ns = clock_ns
        self.resolved = 0
        self.retry_later = RetryLater()
        self._loop = LedShardsLoop(node, "2pc-sweeper", SWEEP_PERIOD_S, self.sweep) if start else None

    def sweep(self, shard_id: int, host) -> int:
        """Resolve this shard's stale prepared transactions; how many were resolved."""
        stale_before = self.clock_ns() - int(SWEEP_AFTER_S * 1e9)
        done = 0
        for key, coordinator_shard, prepared_at in host.prepared_txns(limit=SWEEP_BATCH_MAX):
            if prepared_at > stale_before or (self._loop is not None and self._loop.stopping):
                break
            now = time.monotonic()
            if not self.retry_later.due(key, now):
                continue
            deadline = now + STEP_TIMEOUT_S
            try:
                decision = self.coordinator.resolve(coordinator_shard, key, deadline)
                self.coordinator.executor.run(
                    shard_id, Operation(OP_FINISH, [finish_of(key, decision)]), deadline)
            except Exception as exc:
                delay = self.retry_later.failed(key, time.monotonic())
                log.info("shard %d: txn %x still unresolved (next try in %.0f s): %s", shard_id, key, delay, exc)
                continue
            self.retry_later.succeeded(key)
            done += 1
            self.resolved += 1
            log.info("shard %d: recovered txn %x as %s", shard_id, key,
                     "committed" if decision.committed else "aborted")
        return done

    def close(self) -> None:
        if self._loop is not None:
            self._loop.close()

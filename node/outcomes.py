"""Why an operation on a shard has no result: the node's own vocabulary for it.

Every layer that runs operations on shards (batcher, shard executor, 2PC
coordinator, escrow steps) raises these; the servicers map them to gRPC statuses
in one place (api/failures.py). The one distinction that matters to a client is
whether the operation *may have been applied*: only then is a retry unsafe
without the idempotent ids, and only then must the answer say "outcome unknown".
"""

from __future__ import annotations


class NotAppliedError(Exception):
    """Certainly not applied (not the leader, shutting down): safe to retry, also on another node."""


class ParticipantUnavailableError(Exception):
    """A cross-shard attempt was aborted because a shard did not take part in time: nothing applied."""


class ParticipantBusyError(ParticipantUnavailableError):
    """Aborted because a participant was busy with another txn naming the same id or pending transfer."""


class OverloadedError(Exception):
    """The shard's queue is full: nothing was queued; the caller should back off."""


class OutcomeUnknownError(Exception):
    """The operation may or may not have been applied: only an idempotent retry or a lookup can tell."""


class ApplyFailedError(Exception):
    """Every replica recorded the entry as failed (a bug, logged CRITICAL): nothing was applied."""

"""What a request answers when some of its parts fail: one rule, shared by every servicer.

A request is split into parts (one per shard, one per cross-shard coordinator);
each part runs on its shard's leader, here or on another node. A servicer waits
for *every* part (or its deadline) before it answers, then:

* all parts have results: the per-item results, in request order;
* some part failed: the failure that matters most to the caller, by this order:
  1. a part that **may have applied** (OUTCOME_UNKNOWN): the caller must not be
     told "not applied" for money that may have moved; it retries the same ids
     (applied items answer `exists`) or looks them up;
  2. a failure that is not retryable (INTERNAL, INVALID_ARGUMENT from a peer);
  3. OVERLOADED (back off), then certainly-not-applied ones (NOT_LEADER,
     NO_LEADER, NOT_APPLIED): retry, after refreshing the shard map.
  Parts that succeeded are not lost: a retry with the same ids answers `exists`.
"""

from __future__ import annotations

import logging
from concurrent.futures import TimeoutError as FutureTimeout

import grpc
from google.rpc import code_pb2

from tidebank.node.api import errors
from tidebank.node.outcomes import (
    ApplyFailedError,
    NotAppliedError,
    OutcomeUnknownError,
    OverloadedError,
    ParticipantUnavailableError,
)

log = logging.getLogger(__name__)

_MAY_HAVE_APPLIED = 3
_NOT_RETRYABLE = 2
_OVERLOADED = 1
_NOT_APPLIED = 0


def part_failure(shard_id: int, exc: BaseException, leader_address: str | None, *,
                 write: bool) -> errors.RequestError:
    """The gRPC status for one part's failure. `write`: whether the part could have changed anything (a
    timed-out read changed nothing, a timed-out write may have applied)."""
    if isinstance(exc, errors.RequestError):
        return exc
    if isinstance(exc, OutcomeUnknownError):
        return errors.outcome_unknown(shard_id, str(exc)) if write else errors.retryable(
            "NO_LEADER", f"shard {shard_id}: read not confirmed by a leader ({exc})", shard_id=shard_id)
    if isinstance(exc, FutureTimeout):
        if write:
            return errors.outcome_unknown(shard_id, "no answer before the deadline")
        return errors.retryable("NO_LEADER", f"shard {shard_id}: read not confirmed by a leader in time",
                                shard_id=shard_id)
    if isinstance(exc, ParticipantUnavailableError):
        return errors.retryable("NOT_APPLIED", str(exc), shard_id=shard_id)
    if isinstance(exc, NotAppliedError):
        return errors.not_leader(shard_id, leader_address)
    if isinstance(exc, OverloadedError):
        return errors.overloaded(shard_id, str(exc))
    if isinstance(exc, ApplyFailedError):
        return errors.internal(f"shard {shard_id}: entry failed on every replica: {exc}")
    if isinstance(exc, grpc.RpcError):
        return _peer_failure(shard_id, exc, write=write)
    log.error("shard %d: part failed: %r", shard_id, exc, exc_info=exc)
    return errors.internal(f"shard {shard_id}: {type(exc).__name__}: {exc}")


def _peer_failure(shard_id: int, exc: grpc.RpcError, *, write: bool) -> errors.RequestError:
    """A call to another node that failed: passed on as it is, unless it failed without an answer."""
    code = exc.code() if hasattr(exc, "code") else None
    passed_on = errors.from_rpc_error(exc)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED or (code == grpc.StatusCode.UNAVAILABLE
                                                     and not passed_on.status.details):
        why = "the leader did not answer in time" if code == grpc.StatusCode.DEADLINE_EXCEEDED \
            else "lost the connection to the leader"
        if write:
            return errors.outcome_unknown(shard_id, why)
        return errors.retryable("NO_LEADER", f"shard {shard_id}: {why}", shard_id=shard_id)
    return passed_on


def severity(error: errors.RequestError) -> int:
    """Where a failure stands in the order of the module docstring (higher wins)."""
    code = error.status.code
    reason = errors.reason_of(error)
    if reason == "OUTCOME_UNKNOWN":
        return _MAY_HAVE_APPLIED
    if code == code_pb2.RESOURCE_EXHAUSTED:
        return _OVERLOADED
    if code == code_pb2.UNAVAILABLE:
        return _NOT_APPLIED
    return _NOT_RETRYABLE


class Failures:
    """The failures of one request's parts; `raise_if_any` once every part has been awaited."""

    def __init__(self) -> None:
        self._worst: errors.RequestError | None = None

    def add(self, error: errors.RequestError) -> None:
        if self._worst is None or severity(error) > severity(self._worst):
            self._worst = error

    def add_part(self, shard_id: int, exc: BaseException, leader_address: str | None, *, write: bool) -> None:
        self.add(part_failure(shard_id, exc, leader_address, write=write))

    @property
    def worst(self) -> errors.RequestError | None:
        return self._worst

    def raise_if_any(self) -> None:
        if self._worst is not None:
            raise self._worst

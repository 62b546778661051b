"""Request-level failures as canonical gRPC codes with google.rpc rich details.

Reasons (google.rpc.ErrorInfo, domain "tidebank.v1") a client can act on:
NOT_LEADER and NO_LEADER (retry, after refreshing the shard map), OVERLOADED
(back off), OUTCOME_UNKNOWN (the write may have applied: retry the same ids or
look them up). INVALID_ARGUMENT carries google.rpc.BadRequest field violations.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

DOMAIN = "tidebank.v1"


class RequestError(Exception):
    """Raised inside a handler; the servicer turns it into a gRPC status."""

    def __init__(self, status: status_pb2.Status):
        super().__init__(status.message)
        self.status = status


def _status(code: int, message: str, *details) -> status_pb2.Status:
    status = status_pb2.Status(code=code, message=message)
    for detail in details:
        packed = any_pb2.Any()
        packed.Pack(detail)
        status.details.append(packed)
    return status


VIOLATIONS_MAX = 10  # per error: its status rides in the trailers, which gRPC caps at 16 KiB
TEXT_CHARS_MAX = 200  # of any one field path or description (they may echo what the caller sent)


def clip(text: str, limit: int = TEXT_CHARS_MAX) -> str:
    """`text` cut to `limit` characters, marked as cut: an answer never echoes an unbounded input."""
    return text if len(text) <= limit else text[:limit] + f"... ({len(text) - limit} more characters)"


def invalid_argument(violations: Iterable[tuple[str, str]]) -> RequestError:
    violations = [(clip(f), clip(d)) for f, d in violations]
    if len(violations) > VIOLATIONS_MAX:
        more = len(violations) - VIOLATIONS_MAX
        violations = violations[:VIOLATIONS_MAX] + [("...", f"and {more} more like these")]
    bad_request = error_details_pb2.BadRequest(
        field_violations=[error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                          for f, d in violations])
    message = "; ".join(f"{f}: {d}" for f, d in violations)
    return RequestError(_status(code_pb2.INVALID_ARGUMENT, message, bad_request))


def _error_info(reason: str, metadata: dict[str, object]) -> error_details_pb2.ErrorInfo:
    return error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN,
                                       metadata={k: str(v) for k, v in metadata.items() if v is not None})


def retryable(reason: str, message: str, code: int = code_pb2.UNAVAILABLE, retry_after_ms: int = 50,
              **metadata: object) -> RequestError:
    """A refusal that changed nothing, with the ErrorInfo `reason` and a RetryInfo of `retry_after_ms`."""
    retry = error_details_pb2.RetryInfo()
    retry.retry_delay.FromMilliseconds(retry_after_ms)
    return RequestError(_status(code, message, _error_info(reason, metadata), retry))


def slot_moved(exc) -> RequestError:
    """A read reached a shard that a slot has left (node/ledger/slot_moves.SlotMovedError): the node that routed
    it had an older shard map, which the move's driver replaces everywhere before long."""
    return retryable("SLOT_MOVED", f"{exc}: retry", retry_after_ms=100, slot=exc.slot, shard_id=exc.shard,
                     shard_map_version=exc.version)


def not_leader(shard_id: int, leader_address: str | None) -> RequestError:
    if leader_address is None:
        return retryable("NO_LEADER", f"shard {shard_id} has no leader right now", shard_id=shard_id)
    return retryable("NOT_LEADER", f"shard {shard_id} is led by {leader_address}", shard_id=shard_id,
                     leader_address=leader_address)


def overloaded(shard_id: int, why: str) -> RequestError:
    return retryable("OVERLOADED", f"shard {shard_id} is overloaded: {why}",
                     code=code_pb2.RESOURCE_EXHAUSTED, shard_id=shard_id)


def outcome_unknown(shard_id: int, why: str) -> RequestError:
    return retryable("OUTCOME_UNKNOWN", f"shard {shard_id}: outcome unknown ({why}); retry the same ids "
                     "or look them up", shard_id=shard_id)


def not_found(message: str) -> RequestError:
    return RequestError(_status(code_pb2.NOT_FOUND, message))


def failed_precondition(message: str, violations: Iterable[tuple[str, str, str]] = ()) -> RequestError:
    """FAILED_PRECONDITION; each violation (type, subject, description) as a google.rpc.PreconditionFailure."""
    violations = list(violations)
    details = [error_details_pb2.PreconditionFailure(violations=[
        error_details_pb2.PreconditionFailure.Violation(type=t, subject=s, description=d) for t, s, d in violations
    ])] if violations else []
    return RequestError(_status(code_pb2.FAILED_PRECONDITION, message, *details))


def permission_denied(message: str, **metadata: object) -> RequestError:
    """PERMISSION_DENIED with an ErrorInfo (reason PERMISSION_DENIED) whose metadata names what was missing."""
    return RequestError(_status(code_pb2.PERMISSION_DENIED, message, _error_info("PERMISSION_DENIED", metadata)))


def unauthenticated(message: str, reason: str, **metadata: object) -> RequestError:
    """UNAUTHENTICATED with an ErrorInfo (`reason`: CERTIFICATE_REVOKED, ...): the caller's identity is not accepted."""
    return RequestError(_status(code_pb2.UNAUTHENTICATED, message, _error_info(reason, metadata)))


def internal(message: str) -> RequestError:
    return RequestError(_status(code_pb2.INTERNAL, message))


_CODE_NAMES = {value: name for name, value in code_pb2.Code.items()}


def code_name(code: int) -> str:
    """The canonical name of a google.rpc code (OK, INVALID_ARGUMENT, ...)."""
    return _CODE_NAMES.get(code, str(code))


def reason_of(error: RequestError) -> str:
    """The ErrorInfo reason of a request error ("" if it has none)."""
    return info_of(error)[0]


def info_of(error: RequestError) -> tuple[str, dict[str, str]]:
    """The ErrorInfo reason and metadata of a request error (("", {}) if it has none)."""
    for detail in error.status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason, dict(info.metadata)
    return "", {}


def abort(context: grpc.ServicerContext, error: RequestError) -> None:
    context.abort_with_status(rpc_status.to_status(error.status))


def from_rpc_error(error: grpc.RpcError) -> RequestError:
    """Pass a forwarded call's failure on unchanged, details included."""
    status = rpc_status.from_call(error)
    if status is None:
        code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
        status = status_pb2.Status(code=code.value[0], message=str(error.details() if hasattr(error, "details")
                                                                     else error))
    return RequestError(status)

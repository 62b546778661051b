"""Exceptions raised by the client."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc

__all__ = [
    "ClientClosedError",
    "FieldViolation",
    "InvalidRequestError",
    "OutcomeUnknownError",
    "TidebankError",
    "UnavailableError",
]


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One google.rpc.BadRequest field violation, e.g. ("transfers[3].amount", "...")."""

    field: str
    description: str


class TidebankError(Exception):
    """Base class of every error the client raises on purpose.

    ``code`` is the gRPC status code behind it (None when the client decided on
    its own), ``reason``/``metadata`` come from a google.rpc.ErrorInfo detail.
    Errors of batch writes (create_accounts, create_transfers, the escrow writes)
    carry ``results``: one slot per request item, the item's result where it is
    known, None where it is not; ``ids`` are the unresolved items' ids (for escrow
    writes their trade ids: refunds and extensions are told apart by index).
    """

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        reason: str = "",
        metadata: dict[str, str] | None = None,
        ids: Sequence[int] = (),
        results: list[Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.reason = reason
        self.metadata = dict(metadata or {})
        #: ids of the request items whose outcome this error leaves open (writes only)
        self.ids: list[int] = list(ids)
        #: per request item: its result if known, else None (writes only)
        self.results: list[Any] | None = results

    def __str__(self) -> str:
        return self.message


class InvalidRequestError(TidebankError):
    """The request is malformed (INVALID_ARGUMENT, or refused by the client before sending).

    ``field_violations`` name the offending fields by their index in *your* request,
    e.g. ``transfers[2].amount``. Nothing of the offending items was applied; with
    several shards involved, items on other shards may have been (see ``results``).
    """

    def __init__(self, message: str, field_violations: Sequence[FieldViolation] = (), **kw: Any) -> None:
        kw.setdefault("code", grpc.StatusCode.INVALID_ARGUMENT)
        super().__init__(message, **kw)
        self.field_violations: list[FieldViolation] = list(field_violations)

    def __str__(self) -> str:
        if not self.field_violations:
            return self.message
        shown = "; ".join(f"{v.field}: {v.description}" for v in self.field_violations[:5])
        more = len(self.field_violations) - 5
        return f"{self.message} ({shown}{f'; and {more} more' if more > 0 else ''})"


class UnavailableError(TidebankError):
    """No leader could be reached before the deadline. For writes, the items listed in
    ``ids`` were definitely not applied (every attempt was refused before applying)."""


class OutcomeUnknownError(TidebankError):
    """A write's outcome could not be learned before the deadline (timeouts, lost
    connections). The items in ``ids`` may or may not have been applied: re-submit
    them with the same ids (a transfer already applied answers ``exists``) or look
    them up. Never assume either outcome."""


class PermissionDeniedError(TidebankError):
    """The principal this client presents lacks the permission the call needs (PERMISSION_DENIED);
    ``metadata["permission"]`` names it. Nothing was applied."""


class ClientClosedError(TidebankError):
    """The client was closed (before or while the call ran)."""

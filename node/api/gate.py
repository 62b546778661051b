"""The door every call passes on its way to a servicer: access (node/api/access.py), the caller's quota,
and the records of what was refused or privileged (node/api/admin_log.py, a metric)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpc

from tidebank.common.records import ACCOUNT_SIZE, TRANSFER_SIZE
from tidebank.common.tls import RevocationList, peer_serial
from tidebank.node.api import access, errors
from tidebank.node.api.admin_log import PRIVILEGED_PERMISSIONS, AdminLog

log = logging.getLogger(__name__)

_PACKED_RECORD_BYTES = {"accounts_packed": ACCOUNT_SIZE, "transfers_packed": TRANSFER_SIZE}


class Gate:
    def __init__(self, admin_log: AdminLog | None = None, quotas=None,
                 on_denied: Callable[[str], None] | None = None, revocations: RevocationList | None = None) -> None:
        self.admin_log = admin_log
        self.quotas = quotas
        self.on_denied = on_denied
        self.revocations = revocations  # certificates the cluster no longer accepts (DIR/tls/revoked.txt)

    def admit(self, method: str, context: grpc.ServicerContext) -> access.Grant:
        """The call's grant; a refusal is recorded and raised."""
        try:
            if self.revocations is not None:
                serial = peer_serial(context)
                if serial is not None and self.revocations.is_revoked(serial):
                    raise errors.unauthenticated(f"certificate {serial:x} is revoked", reason="CERTIFICATE_REVOKED",
                                                 serial=f"{serial:x}")
            grant = access.decide(method, context)
        except errors.RequestError as exc:
            self.finish(None, method, exc, principal=access.caller_of(context))
            raise
        access.enter(grant)
        return grant

    def charge(self, grant: access.Grant, request):
        """The caller's quota ticket for this request (None without quotas): its cost is its items."""
        if self.quotas is None:
            return None
        return self.quotas.admit(grant.principal.name, items_of(request), exempt=grant.principal.has("node"))

    def finish(self, grant: access.Grant | None, method: str, error: errors.RequestError | None,
               principal=None) -> None:
        """Count and record a refusal; record every use of a privileged permission."""
        code = "OK" if error is None else errors.code_name(error.status.code)
        denied = code in ("PERMISSION_DENIED", "UNAUTHENTICATED")
        permission = grant.permission if grant is not None else access.PERMISSION_OF.get(method, "")
        if code == "PERMISSION_DENIED" and self.on_denied is not None:
            self.on_denied(permission or method)
        if not denied and permission not in PRIVILEGED_PERMISSIONS:
            return
        if self.admin_log is None:
            return
        who = grant.principal if grant is not None else principal
        try:
            self.admin_log.record(principal=who.name if who else "", roles=",".join(sorted(who.roles)) if who else "",
                                  method=method, permission=permission, result=code,
                                  detail=error.status.message if error is not None else "", durable=not denied)
        except OSError:
            log.exception("admin log: cannot record %s by %s", method, who.name if who else "?")


def items_of(request) -> int:
    """What a request asks for, in items: its repeated fields' lengths and its packed records, at least 1."""
    n = 0
    for field, value in request.ListFields():
        repeated = field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED
        if repeated:
            n += len(value)
        elif field.name in _PACKED_RECORD_BYTES:
            n += len(value) // _PACKED_RECORD_BYTES[field.name]
    return max(1, n)

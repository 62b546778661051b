"""Who may call what: the roles of a verified principal, checked on the node that first receives a call.

Each RPC needs one permission; each role grants a permission to everything or only
to what the principal owns (`OWN`: its accounts as an account holder, its own
participant ids as a bank). The method-level check runs in node/api/handlers.py
before a request is parsed; servicers narrow `OWN` grants to the principal's data.
A node forwarding a call for a caller names the caller in PRINCIPAL_HEADER, which
is believed only from a peer whose certificate carries the `node` role, so the
check runs again where a forwarded call lands.

A plaintext cluster (`[tls] plaintext = true`) has no identities: every caller is
PLAINTEXT_PRINCIPAL, which holds every role.
"""

from __future__ import annotations

import contextvars
import enum
from dataclasses import dataclass

import grpc

from tidebank.common.tls import PRINCIPAL_NAME_MAX, ROLES, Principal, principal_of_context
from tidebank.node.api import errors

PRINCIPAL_HEADER = "x-tidebank-principal"  # "name|role,role|participant,participant" on node-forwarded calls
PLAINTEXT_PRINCIPAL = Principal("(plaintext)", frozenset(ROLES))
PARTICIPANTS_PER_PRINCIPAL_MAX = 64


class Scope(enum.IntEnum):
    NONE = 0
    OWN = 1  # only the principal's own accounts, trades, participants
    ALL = 2


# The permission each RPC needs (service/method).
PERMISSION_OF = {
    "Ledger/CreateAccounts": "accounts.create",
    "Ledger/CreateTransfers": "transfers.create",
    "Ledger/LookupAccounts": "accounts.read",
    "Ledger/LookupTransfers": "transfers.read",
    "Ledger/GetAccountTransfers": "transfers.read",
    "Admin/GetShardMap": "cluster.shard_map",
    "Admin/GetNodeStatus": "cluster.status",
    "Admin/GetLinkFaults": "cluster.status",
    "Admin/SetLinkFaults": "cluster.faults",
    "Admin/GetLedgerTotals": "ledger.totals",
    "Admin/GetAdminLog": "admin.log",
    "Admin/ApplyTopology": "cluster.membership",
    "Admin/ChangeMembership": "cluster.membership",
    "Admin/SlotMoveStep": "cluster.membership",
    "Admin/ExportSlots": "cluster.membership",
    "Escrow/CreateTrades": "trades.create",
    "Escrow/ShipTrades": "trades.ship",
    "Escrow/ConfirmTrades": "trades.confirm",
    "Escrow/RefundTrades": "trades.refund",
    "Escrow/OpenDisputes": "trades.dispute",
    "Escrow/WithdrawDisputes": "trades.dispute",
    "Escrow/ExtendTrades": "trades.extend",
    "Escrow/ResolveDisputes": "trades.resolve",
    "Escrow/LookupTrades": "trades.read",
    "Escrow/ListTrades": "trades.read",
    "Clearing/RegisterParticipants": "participants.manage",
    "Clearing/UpdateParticipants": "participants.manage",
    "Clearing/LookupParticipants": "participants.read",
    "Clearing/ListParticipants": "participants.read",
    "Clearing/SubmitItems": "clearing.submit",
    "Clearing/LookupItems": "clearing.read",
    "Clearing/ListWindows": "clearing.read",
    "Clearing/GetWindow": "clearing.read",
    "Clearing/CloseWindow": "clearing.settle",
    "Clearing/SettleWindow": "clearing.settle",
    "Clearing/UnwindParticipant": "clearing.settle",
    "Clearing/AbortWindow": "clearing.settle",
    "Clearing/ExportStatement": "clearing.statements",
    "Internal/Submit": "node.internal",
    "Internal/Resolve": "node.internal",
    "Internal/Query": "node.internal",
}

_ALL, _OWN = Scope.ALL, Scope.OWN
_READS = ("accounts.read", "transfers.read", "trades.read", "ledger.totals", "participants.read", "clearing.read",
          "clearing.statements")
GRANTS: dict[str, dict[str, Scope]] = {
    "admin": {"cluster.shard_map": _ALL, "cluster.status": _ALL, "cluster.faults": _ALL, "admin.log": _ALL,
              "cluster.membership": _ALL},
    "operator": {"cluster.shard_map": _ALL, "cluster.status": _ALL},
    "auditor": {"cluster.shard_map": _ALL, **{p: _ALL for p in _READS}},
    "platform": {"cluster.shard_map": _ALL, **{p: _ALL for p in _READS},
                 **{p: _ALL for p in ("accounts.create", "transfers.create", "trades.create", "trades.ship",
                                      "trades.confirm", "trades.refund", "trades.dispute", "trades.extend",
                                      "trades.resolve", "participants.manage", "clearing.submit",
                                      "clearing.settle")}},
    "account_holder": {"cluster.shard_map": _ALL,
                       **{p: _OWN for p in ("accounts.create", "transfers.create", "accounts.read", "transfers.read",
                                            "trades.create", "trades.ship", "trades.confirm", "trades.refund",
                                            "trades.dispute", "trades.extend", "trades.read")}},
    "participant": {"cluster.shard_map": _ALL,
                    **{p: _OWN for p in ("clearing.submit", "participants.read", "clearing.read",
                                         "clearing.statements")}},
    "node": {p: _ALL for p in set(PERMISSION_OF.values())},
}
assert set(GRANTS) == set(ROLES), "every role has its grants"
assert all(p in set(PERMISSION_OF.values()) for g in GRANTS.values() for p in g), "grants name real permissions"


@dataclass(frozen=True)
class Grant:
    """What the current call may do: who asks, the permission its method needs, and how far it reaches."""

    principal: Principal
    permission: str
    scope: Scope

    @property
    def everything(self) -> bool:
        return self.scope is Scope.ALL


def scope_of(principal: Principal, permission: str) -> Scope:
    return max((GRANTS[r].get(permission, Scope.NONE) for r in principal.roles if r in GRANTS), default=Scope.NONE)


_current: contextvars.ContextVar[Grant | None] = contextvars.ContextVar("tidebank_grant", default=None)


def current() -> Grant:
    """The grant of the call this thread is serving (set by the handler before the servicer runs)."""
    grant = _current.get()
    if grant is None:
        raise errors.internal("no access decision for this call")  # a servicer reached without its handler
    return grant


def enter(grant: Grant | None) -> None:
    _current.set(grant)


def caller_of(context: grpc.ServicerContext) -> Principal:
    """The principal a call acts for: the peer's certificate, or the caller a node forwarded for."""
    peer = principal_of_context(context)
    if peer is None:
        return PLAINTEXT_PRINCIPAL
    if peer.has("node"):
        for key, value in context.invocation_metadata() or ():
            if key == PRINCIPAL_HEADER:
                return decode_principal(value)
    return peer


def decide(method: str, context: grpc.ServicerContext) -> Grant:
    """The grant for `method` ("Service/Method"); PERMISSION_DENIED naming the missing permission."""
    principal = caller_of(context)
    permission = PERMISSION_OF.get(method)
    if permission is None:
        raise denied(principal, f"method {method}")  # a method nobody listed: closed by default
    scope = scope_of(principal, permission)
    if scope is Scope.NONE:
        raise denied(principal, permission)
    return Grant(principal, permission, scope)


def denied(principal: Principal, permission: str, detail: str = "") -> errors.RequestError:
    roles = ",".join(sorted(principal.roles)) or "none"
    message = f"principal {principal.name!r} (roles: {roles}) lacks permission {permission}"
    return errors.permission_denied(message + (f": {errors.clip(detail)}" if detail else ""), principal=principal.name,
                                    permission=permission, roles=roles)


def require_everything(grant: Grant, what: str) -> None:
    """For an OWN grant on a call that names no owner it could be narrowed to."""
    if not grant.everything:
        raise denied(grant.principal, grant.permission, f"{what} needs it for everyone's, not only one's own")


def require_participants(grant: Grant, participant_ids, what: str) -> None:
    """An OWN grant reaches only the participants the principal's certificate names."""
    if grant.everything:
        return
    foreign = sorted({int(p) for p in participant_ids} - set(grant.principal.participants))
    if foreign:
        raise denied(grant.principal, grant.permission,
                     f"{what} of participant {foreign[0]}, which this principal does not act for")


# ---- forwarding -----------------------------------------------------------------------


def encode_principal(principal: Principal) -> str:
    return "|".join((principal.name, ",".join(sorted(principal.roles)),
                     ",".join(str(p) for p in sorted(principal.participants))))


def decode_principal(value: str) -> Principal:
    """The caller a node forwarded for; anything malformed grants nothing (never an exception)."""
    name, _, rest = value.partition("|")
    roles_text, _, participants_text = rest.partition("|")
    roles = frozenset(r for r in roles_text.split(",") if r in ROLES and r != "node")
    participants = frozenset(int(p) for p in participants_text.split(",")[:PARTICIPANTS_PER_PRINCIPAL_MAX]
                             if p.isdigit() and len(p) <= 39)
    return Principal(name[:PRINCIPAL_NAME_MAX] or "(unnamed)", roles, participants)


def forwarding_metadata() -> tuple[tuple[str, str], ...]:
    """What a node adds to a public call it forwards for the current caller."""
    grant = _current.get()
    if grant is None or grant.principal.has("node"):
        return ()  # a node acting on its own (or for a node): the next node sees a node, as it should
    return ((PRINCIPAL_HEADER, encode_principal(grant.principal)),)

"""Who may call what: the role table, forwarded callers, and the refusal a caller sees."""

import grpc
import pytest
from google.rpc import error_details_pb2

from tidebank.common.tls import Principal
from tidebank.node.api import access
from tidebank.node.api.access import Scope
from tidebank.node.api.errors import RequestError
from tidebank.v1 import admin_pb2, clearing_pb2, escrow_pb2, internal_pb2, ledger_pb2


class FakeContext:
    def __init__(self, name: str | None, roles=(), participants=(), metadata=()):
        self._auth = {} if name is None else {
            "x509_common_name": [name.encode()],
            "x509_subject_alternative_name": [f"tidebank:role:{r}".encode() for r in roles]
            + [f"tidebank:participant:{p}".encode() for p in participants],
        }
        self._metadata = tuple(metadata)

    def auth_context(self):
        return self._auth

    def invocation_metadata(self):
        return self._metadata


def _refusal(method: str, context) -> error_details_pb2.ErrorInfo:
    with pytest.raises(RequestError) as raised:
        access.decide(method, context)
    status = raised.value.status
    assert status.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
    info = error_details_pb2.ErrorInfo()
    status.details[0].Unpack(info)
    return info


def test_every_rpc_of_every_service_needs_a_listed_permission():
    for pb2 in (ledger_pb2, admin_pb2, escrow_pb2, clearing_pb2, internal_pb2):
        for service in pb2.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                assert f"{service.name}/{method.name}" in access.PERMISSION_OF, method.full_name


def test_an_unlisted_method_is_refused_even_to_a_node():
    info = _refusal("Ledger/DropEverything", FakeContext("n1", ["node"]))
    assert info.metadata["permission"] == "method Ledger/DropEverything"


def test_a_refusal_names_the_missing_permission_and_the_principal():
    info = _refusal("Admin/SetLinkFaults", FakeContext("alice", ["auditor"]))
    assert info.reason == "PERMISSION_DENIED"
    assert dict(info.metadata) == {"principal": "alice", "permission": "cluster.faults", "roles": "auditor"}


def test_a_certificate_without_roles_may_do_nothing():
    _refusal("Admin/GetShardMap", FakeContext("nobody"))


def test_every_role_may_read_the_shard_map_clients_route_by():
    for role in ("admin", "operator", "auditor", "platform", "account_holder", "participant"):
        assert access.decide("Admin/GetShardMap", FakeContext("p", [role])).everything


def test_an_auditor_reads_everything_and_writes_nothing():
    auditor = FakeContext("a", ["auditor"])
    for method in ("Ledger/LookupAccounts", "Escrow/ListTrades", "Admin/GetLedgerTotals", "Clearing/ExportStatement"):
        assert access.decide(method, auditor).everything
    for method in ("Ledger/CreateTransfers", "Escrow/ResolveDisputes", "Clearing/SettleWindow"):
        _refusal(method, auditor)


def test_an_operator_sees_status_but_no_money():
    operator = FakeContext("o", ["operator"])
    assert access.decide("Admin/GetNodeStatus", operator).everything
    _refusal("Ledger/LookupAccounts", operator)
    _refusal("Admin/SetLinkFaults", operator)


def test_an_admin_injects_faults_but_moves_no_money():
    admin = FakeContext("root", ["admin"])
    assert access.decide("Admin/SetLinkFaults", admin).everything
    _refusal("Ledger/CreateTransfers", admin)


def test_an_account_holder_is_limited_to_its_own():
    holder = FakeContext("h", ["account_holder"])
    assert access.decide("Ledger/CreateTransfers", holder).scope is Scope.OWN
    assert access.decide("Escrow/ConfirmTrades", holder).scope is Scope.OWN
    _refusal("Escrow/ResolveDisputes", holder)
    _refusal("Clearing/SubmitItems", holder)


def test_a_participant_is_limited_to_its_own_clearing():
    bank = FakeContext("b", ["participant"], [7])
    grant = access.decide("Clearing/SubmitItems", bank)
    assert grant.scope is Scope.OWN
    access.require_participants(grant, [7], "items")
    with pytest.raises(RequestError, match="participant 8"):
        access.require_participants(grant, [7, 8], "items")
    _refusal("Clearing/SettleWindow", bank)
    _refusal("Ledger/LookupAccounts", bank)


def test_several_roles_grant_the_widest_scope():
    both = FakeContext("x", ["account_holder", "platform"])
    assert access.decide("Ledger/CreateTransfers", both).everything


def test_only_a_node_may_call_the_internal_service():
    assert access.decide("Internal/Submit", FakeContext("n", ["node"])).everything
    _refusal("Internal/Submit", FakeContext("p", ["platform"]))


def test_a_node_forwarding_a_call_is_judged_as_the_caller_it_names():
    header = (access.PRINCIPAL_HEADER, access.encode_principal(Principal("h", frozenset({"account_holder"}))))
    forwarded = FakeContext("n1", ["node"], metadata=[header])
    assert access.decide("Ledger/CreateTransfers", forwarded).scope is Scope.OWN
    _refusal("Internal/Submit", forwarded)


def test_a_non_node_cannot_claim_to_forward_for_someone_else():
    header = (access.PRINCIPAL_HEADER, access.encode_principal(Principal("boss", frozenset({"platform"}))))
    liar = FakeContext("h", ["account_holder"], metadata=[header])
    assert access.decide("Ledger/CreateTransfers", liar).scope is Scope.OWN


def test_a_forwarded_caller_can_never_be_a_node():
    principal = access.decode_principal("x|node,platform|")
    assert principal.roles == {"platform"}


def test_a_malformed_forwarding_header_grants_nothing():
    for garbage in ("", "|||", "a|root|x", "\x00" * 10, "a|auditor|" + ",".join(["1"] * 1000)):
        principal = access.decode_principal(garbage)
        assert principal.roles <= {"auditor"} and len(principal.participants) <= 1


def test_a_plaintext_cluster_trusts_every_caller():
    assert access.decide("Admin/SetLinkFaults", FakeContext(None)).everything


def test_a_node_acting_on_its_own_forwards_no_caller():
    access.enter(access.decide("Ledger/LookupAccounts", FakeContext("n1", ["node"])))
    try:
        assert access.forwarding_metadata() == ()
    finally:
        access.enter(None)


def test_a_forwarded_call_names_the_caller_it_was_received_from():
    access.enter(access.decide("Ledger/LookupAccounts", FakeContext("alice", ["auditor"])))
    try:
        ((key, value),) = access.forwarding_metadata()
        assert key == access.PRINCIPAL_HEADER and access.decode_principal(value).roles == {"auditor"}
    finally:
        access.enter(None)

"""Fault injection is a privileged call: only holders of the cluster secret may cut links."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from tidebank.common.auth import signed
from tidebank.node.api.admin_service import AdminService
from tidebank.node.api.handlers import generic_handlers
from tidebank.node.api.ledger_service import LedgerService
from tidebank.node.links import LinkFaults
from tidebank.v1 import admin_pb2, admin_pb2_grpc

SECRET = "s3cret"
DCS = ["dc1", "dc2", "dc3"]


@pytest.fixture
def admin_stub():
    faults = LinkFaults()
    admin = AdminService(lambda: admin_pb2.NodeStatus(node="n", dc="dc1"), lambda: admin_pb2.ShardMap(),
                         link_faults=faults, dcs=DCS)
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    for handler in generic_handlers(LedgerService(None, None), admin, admin_secret=SECRET)[1:]:
        server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield admin_pb2_grpc.AdminStub(channel), faults
    channel.close()
    server.stop(None)


def test_unsigned_fault_injection_is_refused_and_changes_nothing(admin_stub):
    stub, faults = admin_stub
    with pytest.raises(grpc.RpcError) as raised:
        stub.SetLinkFaults(admin_pb2.LinkFaults(isolated_dcs=["dc2"]), timeout=5)
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert faults.empty


def test_fault_injection_signed_with_another_secret_is_refused(admin_stub):
    stub, faults = admin_stub
    request = admin_pb2.LinkFaults(isolated_dcs=["dc2"])
    with pytest.raises(grpc.RpcError) as raised:
        stub.SetLinkFaults(request, timeout=5, metadata=signed("wrong", "SetLinkFaults", request))
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert faults.empty


def test_fault_injection_signed_with_the_cluster_secret_applies(admin_stub):
    stub, faults = admin_stub
    request = admin_pb2.LinkFaults(isolated_dcs=["dc2"])
    reply = stub.SetLinkFaults(request, timeout=5, metadata=signed(SECRET, "SetLinkFaults", request))
    assert list(reply.isolated_dcs) == ["dc2"] and not faults.empty


def test_reading_the_fault_table_needs_no_signature(admin_stub):
    stub, _ = admin_stub
    assert list(stub.GetLinkFaults(admin_pb2.GetLinkFaultsRequest(), timeout=5).isolated_dcs) == []

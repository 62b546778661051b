"""TLS on every port: nodes refuse callers that do not prove who they are, and rotate certificates live."""

from __future__ import annotations

import socket
import ssl

import grpc
import pytest
from cryptography import x509

from tests.integration.conftest import running_cluster
from tidebank.client import Account, Client, Plaintext
from tidebank.common import tls
from tidebank.common.topology import split_address
from tidebank.v1 import admin_pb2, admin_pb2_grpc

pytestmark = pytest.mark.integration


def _shard_map(channel: grpc.Channel) -> admin_pb2.ShardMap:
    return admin_pb2_grpc.AdminStub(channel).GetShardMap(admin_pb2.GetShardMapRequest(), timeout=5)


def _refused(channel: grpc.Channel) -> grpc.StatusCode:
    with channel, pytest.raises(grpc.RpcError) as raised:
        _shard_map(channel)
    return raised.value.code()


def _served_certificate_serial(cluster, address: str) -> int:
    files = cluster.client_tls()
    context = ssl.create_default_context(cafile=str(files.ca))
    context.load_cert_chain(str(files.cert), str(files.key))
    host, port = split_address(address)
    with socket.create_connection((host, port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname=host) as conn:
        return x509.load_der_x509_certificate(conn.getpeercert(binary_form=True)).serial_number


def test_a_plaintext_caller_is_refused(cluster):
    assert _refused(grpc.insecure_channel(cluster.endpoints[0])) == grpc.StatusCode.UNAVAILABLE


def test_a_caller_without_a_client_certificate_is_refused(cluster):
    ca = cluster.client_tls().ca.read_bytes()
    channel = grpc.secure_channel(cluster.endpoints[0], grpc.ssl_channel_credentials(root_certificates=ca))
    assert _refused(channel) == grpc.StatusCode.UNAVAILABLE


def test_a_certificate_of_another_ca_is_refused(cluster, tmp_path):
    other = tmp_path / "other"
    tls.create_ca(other, "other")
    stranger = tls.issue_principal(other, "admin", ["admin"])
    ca = cluster.client_tls().ca.read_bytes()
    _, cert, key = stranger.read()
    channel = grpc.secure_channel(cluster.endpoints[0], grpc.ssl_channel_credentials(ca, key, cert))
    assert _refused(channel) == grpc.StatusCode.UNAVAILABLE


def test_the_client_refuses_a_node_its_ca_did_not_certify(cluster, tmp_path):
    other = tmp_path / "other"
    tls.create_ca(other, "other")
    own = cluster.client_tls()
    fooled = tls.TlsFiles(other / "ca.pem", own.cert, own.key)
    assert _refused(tls.open_channel(cluster.endpoints[0], fooled)) == grpc.StatusCode.UNAVAILABLE


def test_a_node_certificate_is_rotated_without_a_restart(cluster):
    node = cluster.topology.nodes[0]
    before = _served_certificate_serial(cluster, node.grpc_address)
    tls.issue_node(tls.tls_dir(cluster.dir), node.name, (node.grpc_host, node.raft_host, "localhost"))
    after = _served_certificate_serial(cluster, node.grpc_address)
    assert after != before
    with cluster.channel(node.grpc_address) as channel:
        assert _shard_map(channel).shards


def test_a_plaintext_cluster_serves_plaintext_callers_and_warns_in_its_log(tmp_path):
    with running_cluster(tmp_path, shards=1, plaintext=True) as cluster:
        assert cluster.client_tls() == Plaintext()
        with Client(cluster.endpoints, tls=Plaintext(), timeout_s=30.0) as client:
            assert client.create_accounts([Account(id=1, ledger=1, code=1)])[0].ok
        assert "serves PLAINTEXT" in cluster.log_tail(cluster.topology.nodes[0].name, lines=200)

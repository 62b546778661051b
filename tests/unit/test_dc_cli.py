"""`tidebank dc ...` against fake nodes (in-process Admin servers holding a LinkFaults table,
validated like the real AdminService), and NODE as a positional argument."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from typer.testing import CliRunner

from tidebank.cluster.cli import app
from tidebank.cluster.faults import NodeFaults, NodeTarget, current_table
from tidebank.cluster.launcher import LocalCluster
from tidebank.common.topology import SECRET_ENV
from tidebank.node.api.admin_service import AdminService
from tidebank.node.api.handlers import generic_handlers
from tidebank.node.api.ledger_service import LedgerService
from tidebank.node.links import LinkFaults, LinkTable
from tidebank.v1 import admin_pb2

DCS = ("dc1", "dc2", "dc3")


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.delenv(SECRET_ENV, raising=False)
    monkeypatch.delenv("TIDEBANK_DEBUG", raising=False)


def run(*args):
    result = CliRunner().invoke(app, list(args))
    assert "Traceback" not in result.output, result.output
    return result


class FakeNode:
    """The real AdminService (link faults only) behind a real gRPC server."""

    def __init__(self, name: str, dc: str):
        self.name, self.dc = name, dc
        self.faults = LinkFaults()
        self.shard_map = admin_pb2.ShardMap()
        self.admin = AdminService(lambda: admin_pb2.NodeStatus(node=name, dc=dc), lambda: self.shard_map,
                                  link_faults=self.faults, dcs=DCS)
        self.server = grpc.server(ThreadPoolExecutor(max_workers=4))
        for handler in generic_handlers(LedgerService(None, None), self.admin)[1:]:  # Admin only
            self.server.add_generic_rpc_handlers((handler,))
        self.address = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()


@pytest.fixture
def nodes():
    ns = [FakeNode(f"{dc}-n1", dc) for dc in DCS]
    shard_map = admin_pb2.ShardMap(version=1, slot_count=8)
    entry = shard_map.shards.add(shard_id=0)
    entry.slots.add(start=0, end=8)
    for n in ns:
        entry.replicas.add(node=n.name, dc=n.dc, address=n.address)
    for n in ns:
        n.shard_map = shard_map
    yield ns
    for n in ns:
        n.server.stop(None)


def test_partition_reaches_every_node_and_accumulates(nodes):
    r = run("dc", "partition", "dc2", "--endpoints", nodes[0].address)
    assert r.exit_code == 0, r.output
    assert "dc2 isolated" in r.output
    assert all(n.faults.table.isolated == {"dc2"} for n in nodes)
    r = run("dc", "partition", "dc3", "--endpoints", nodes[0].address, "-o", "json")
    assert r.exit_code == 0
    assert json.loads(r.stdout)["table"]["isolated_dcs"] == ["dc2", "dc3"]
    assert all(n.faults.table.isolated == {"dc2", "dc3"} for n in nodes)


def test_latency_sets_both_directions_and_heal_clears_everything(nodes):
    ep = ["--endpoints", nodes[1].address]
    assert run("dc", "latency", "dc1", "dc2", "50", *ep).exit_code == 0
    assert run("dc", "partition", "dc3", *ep).exit_code == 0
    for n in nodes:
        assert n.faults.delay_s("dc1", "dc2") == 0.05 and n.faults.delay_s("dc2", "dc1") == 0.05
        assert n.faults.delay_s("dc1", "dc3") == 0 and n.faults.is_cut("dc1", "dc3")
    r = run("dc", "status", *ep, "-o", "json")
    assert r.exit_code == 0
    data = json.loads(r.stdout)
    assert data["consistent"] and len(data["nodes"]) == 3
    assert data["nodes"][0]["faults"]["delays"][0] == {"from_dc": "dc1", "to_dc": "dc2", "delay_ms": 50}
    assert run("dc", "latency", "dc2", "dc1", "0", *ep).exit_code == 0
    assert all(n.faults.table.delays == () and n.faults.table.isolated == {"dc3"} for n in nodes)
    r = run("dc", "heal", *ep)
    assert r.exit_code == 0 and "no faults" in r.output
    assert all(n.faults.empty for n in nodes)


def test_a_restarted_node_is_outvoted_and_status_flags_the_difference(nodes):
    ep = ["--endpoints", nodes[0].address]
    assert run("dc", "partition", "dc1", *ep).exit_code == 0
    nodes[0].faults.clear()  # as after a restart: faults live in memory
    r = run("dc", "status", *ep)
    assert r.exit_code == 1 and "differ" in r.output
    assert run("dc", "latency", "dc2", "dc3", "10", *ep).exit_code == 0
    assert all(n.faults.table.isolated == {"dc1"} for n in nodes)  # the majority's table, re-sent to all


def test_unknown_dcs_are_refused_before_anything_changes(nodes):
    ep = ["--endpoints", nodes[0].address]
    r = run("dc", "partition", "dc9", *ep)
    assert r.exit_code == 2 and "unknown DC 'dc9'" in r.output
    assert run("dc", "latency", "dc1", "dc1", "5", *ep).exit_code == 2
    assert run("dc", "latency", "dc1", "dc2", "60001", *ep).exit_code == 2
    assert all(n.faults.empty for n in nodes)


def test_unreachable_nodes_are_reported_and_fail_the_command(nodes):
    nodes[2].server.stop(None)
    r = run("dc", "partition", "dc1", "--endpoints", nodes[0].address, "--timeout", "0.5")
    assert r.exit_code == 1
    assert "dc3-n1" in r.output and "unreachable" in r.output
    assert nodes[0].faults.table.isolated == {"dc1"} and nodes[1].faults.table.isolated == {"dc1"}
    r = run("dc", "heal", "--endpoints", nodes[0].address, "--timeout", "0.5", "-o", "json")
    assert r.exit_code == 1 and json.loads(r.stdout)["unreachable"] == ["dc3-n1"]
    assert nodes[0].faults.empty


def test_server_side_validation_is_invalid_argument(nodes):
    from tidebank.v1 import admin_pb2_grpc

    with grpc.insecure_channel(nodes[0].address) as channel:
        stub = admin_pb2_grpc.AdminStub(channel)
        bad = admin_pb2.LinkFaults(isolated_dcs=["dcX"])
        with pytest.raises(grpc.RpcError) as info:
            stub.SetLinkFaults(bad, timeout=5)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "isolated_dcs[0]" in info.value.details()
        good = LinkTable.make(["dc2"]).to_proto()
        assert list(stub.SetLinkFaults(good, timeout=5).isolated_dcs) == ["dc2"]
        assert list(stub.GetLinkFaults(admin_pb2.GetLinkFaultsRequest(), timeout=5).isolated_dcs) == ["dc2"]


def test_current_table_is_the_majoritys():
    t1, t2 = LinkTable.make(["dc1"]), LinkTable()
    target = NodeTarget("n", "dc1", "a")
    answers = [NodeFaults(target, t2), NodeFaults(target, t1), NodeFaults(target, t1), NodeFaults(target, None)]
    assert current_table(answers) == t1
    assert current_table([NodeFaults(target, t2), NodeFaults(target, t1)]) == t2  # tie: the first
    assert current_table([NodeFaults(target, None)]) is None


# ---------------------------------------------------------------------- NODE positional


@pytest.fixture
def stopped_cluster(tmp_path) -> LocalCluster:
    return LocalCluster.create(tmp_path / "c", dcs=3, nodes_per_dc=1, shards=2)


@pytest.mark.parametrize("verb", ["kill", "pause", "resume"])
def test_node_commands_take_node_as_argument_or_option(stopped_cluster, verb):
    d = ["--dir", str(stopped_cluster.dir)]
    for args in (["dc1-n1"], ["--node", "dc1-n1"], ["dc1-n1", "--node", "dc1-n1"]):
        r = run("node", verb, *args, *d)
        assert r.exit_code == 1 and "error: node dc1-n1 is not running" in r.output, r.output
    r = run("node", verb, *d)
    assert r.exit_code == 2 and "NODE" in r.output
    r = run("node", verb, "dc1-n1", "--node", "dc2-n1", *d)
    assert r.exit_code == 2 and "two different nodes" in r.output

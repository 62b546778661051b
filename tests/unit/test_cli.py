"""The `tidebank` CLI without a running cluster: arguments, help, unreachable nodes."""

from __future__ import annotations

import json
import socket
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from typer.testing import CliRunner

from tidebank.cluster.cli import app
from tidebank.cluster.launcher import LocalCluster
from tidebank.common.keys import slot_of
from tidebank.common.topology import SECRET_ENV
from tidebank.v1 import admin_pb2, admin_pb2_grpc

runner = CliRunner()


@pytest.fixture(autouse=True)
def _no_secret_env(monkeypatch):
    monkeypatch.delenv(SECRET_ENV, raising=False)
    monkeypatch.delenv("TIDEBANK_DEBUG", raising=False)


def invoke(*args: str):
    result = runner.invoke(app, list(args))
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


@pytest.fixture
def closed_port() -> int:
    """A loopback port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def stopped_cluster(tmp_path) -> LocalCluster:
    """A cluster folder whose nodes were never started."""
    return LocalCluster.create(tmp_path / "c", dcs=3, nodes_per_dc=1, shards=2)


# ---- help ----------------------------------------------------------------------------


def test_root_help_lists_the_commands():
    r = invoke("--help")
    assert r.exit_code == 0
    for name in ("cluster", "node", "status", "shard-map", "account", "transfer", "demo"):
        assert name in r.output


def test_no_arguments_shows_help():
    r = invoke()
    assert "Usage" in r.output
    assert "status" in r.output


@pytest.mark.parametrize(
    "command",
    [
        ["cluster", "up"],
        ["cluster", "down"],
        ["node", "start"],
        ["node", "kill"],
        ["node", "restart"],
        ["status"],
        ["shard-map"],
        ["account", "create"],
        ["account", "get"],
        ["transfer", "create"],
        ["transfer", "get"],
        ["demo"],
    ],
)
def test_every_command_has_help(command):
    r = invoke(*command, "--help")
    assert r.exit_code == 0
    assert "Usage" in r.output
    assert len(r.output.splitlines()) > 4


def test_status_help_documents_exit_codes_and_targets():
    r = invoke("status", "--help")
    assert "--dir" in r.output and "--endpoints" in r.output and "--output" in r.output
    assert "Exit code 1" in r.output


def test_version():
    r = invoke("--version")
    assert r.exit_code == 0
    assert r.output.startswith("tidebank ")


# ---- argument errors -------------------------------------------------------------------


def test_status_needs_dir_or_endpoints():
    r = invoke("status")
    assert r.exit_code == 2
    assert "--dir" in r.output and "--endpoints" in r.output


def test_status_refuses_both_dir_and_endpoints(tmp_path):
    r = invoke("status", "--dir", str(tmp_path), "--endpoints", "127.0.0.1:1")
    assert r.exit_code == 2
    assert "exactly one" in r.output


@pytest.mark.parametrize("bad", ["localhost", "host:port", "127.0.0.1:0", "127.0.0.1:70000", ","])
def test_status_rejects_malformed_endpoints(bad):
    r = invoke("status", "--endpoints", bad)
    assert r.exit_code == 2
    assert "--endpoints" in r.output


def test_unknown_output_format():
    r = invoke("status", "--endpoints", "127.0.0.1:1", "-o", "yaml")
    assert r.exit_code == 2


def test_cluster_up_rejects_four_dcs(tmp_path):
    r = invoke("cluster", "up", "--dir", str(tmp_path / "x"), "--dcs", "4")
    assert r.exit_code == 2
    assert "3 or 5" in r.output
    assert not (tmp_path / "x").exists()


def test_cluster_down_without_a_cluster_is_a_one_line_error(tmp_path):
    r = invoke("cluster", "down", "--dir", str(tmp_path))
    assert r.exit_code == 1
    assert r.output.strip().startswith("error: no cluster in")
    assert len(r.output.strip().splitlines()) == 1


def test_cluster_down_when_nothing_runs(stopped_cluster):
    r = invoke("cluster", "down", "--dir", str(stopped_cluster.dir))
    assert r.exit_code == 0
    assert "no node was running" in r.output


def test_node_start_with_missing_config(tmp_path):
    r = invoke("node", "start", "--config", str(tmp_path / "absent.toml"), "--node", "dc1-n1")
    assert r.exit_code == 2


def test_node_start_with_unknown_node(stopped_cluster):
    r = invoke("node", "start", "--config", str(stopped_cluster.config_path), "--node", "nope")
    assert r.exit_code == 1
    assert "error: no node 'nope'" in r.output


def test_node_kill_when_not_running(stopped_cluster):
    r = invoke("node", "kill", "--dir", str(stopped_cluster.dir), "--node", "dc1-n1")
    assert r.exit_code == 1
    assert "error: node dc1-n1 is not running" in r.output


def test_account_create_needs_ledger_and_code():
    r = invoke("account", "create", "--endpoints", "127.0.0.1:1")
    assert r.exit_code == 2
    assert "--ledger" in r.output


def test_account_create_rejects_zero_ledger():
    r = invoke("account", "create", "--endpoints", "127.0.0.1:1", "--ledger", "0", "--code", "1")
    assert r.exit_code == 2


@pytest.mark.parametrize("bad", ["abc", "0", str(2**128 - 1), "-5"])
def test_account_get_rejects_bad_ids(bad):
    r = invoke("account", "get", "--endpoints", "127.0.0.1:1", "--", bad)
    assert r.exit_code == 2


def test_account_get_needs_an_id():
    r = invoke("account", "get", "--endpoints", "127.0.0.1:1")
    assert r.exit_code == 2


def test_transfer_create_post_and_void_are_exclusive():
    r = invoke("transfer", "create", "--endpoints", "127.0.0.1:1", "--post", "5", "--void", "6")
    assert r.exit_code == 2
    assert "not both" in r.output


def test_transfer_create_needs_accounts_unless_resolving_a_pending_one():
    r = invoke("transfer", "create", "--endpoints", "127.0.0.1:1", "--amount", "5", "--ledger", "1", "--code", "1")
    assert r.exit_code == 2
    assert "--debit" in r.output and "--credit" in r.output


def test_transfer_timeout_only_for_pending():
    args = "--debit 1 --credit 2 --amount 5 --ledger 1 --code 1 --timeout 30".split()
    r = invoke("transfer", "create", "--endpoints", "127.0.0.1:1", *args)
    assert r.exit_code == 2
    assert "pending" in r.output


def test_demo_needs_a_few_accounts():
    r = invoke("demo", "--endpoints", "127.0.0.1:1", "--accounts", "1")
    assert r.exit_code == 2


# ---- unreachable clusters ------------------------------------------------------------


def test_status_with_unreachable_endpoints_exits_2(closed_port):
    r = invoke("status", "--endpoints", f"127.0.0.1:{closed_port}")
    assert r.exit_code == 2
    assert "error: no node answered" in r.output
    assert "unreachable" in r.output


def test_status_json_with_unreachable_endpoints(closed_port):
    result = runner.invoke(app, ["status", "-e", f"127.0.0.1:{closed_port}", "-o", "json"])
    assert result.exit_code == 2
    data = json.loads(result.stdout)
    assert data["healthy"] is False
    assert data["nodes_reachable"] == 0


def test_status_of_a_stopped_local_cluster_exits_2(stopped_cluster):
    r = invoke("status", "--dir", str(stopped_cluster.dir))
    assert r.exit_code == 2
    assert r.output.count("down") == 2 * 3  # 2 shards x 3 replicas
    assert "shard 0: no replica answers" in r.output


def test_status_json_of_a_stopped_local_cluster(stopped_cluster):
    result = runner.invoke(app, ["status", "--dir", str(stopped_cluster.dir), "-o", "json"])
    assert result.exit_code == 2
    data = json.loads(result.stdout)
    assert data["healthy"] is False
    assert len(data["replicas"]) == 6
    assert {r["role"] for r in data["replicas"]} == {"down"}
    assert {r["shard"] for r in data["replicas"]} == {0, 1}


def test_shard_map_with_unreachable_endpoints_exits_2(closed_port):
    r = invoke("shard-map", "--endpoints", f"127.0.0.1:{closed_port}")
    assert r.exit_code == 2
    assert "no node answered" in r.output


# ---- against fake nodes (in-process Admin servers) ---------------------------------


class FakeAdmin(admin_pb2_grpc.AdminServicer):
    def __init__(self, name: str, dc: str):
        self.name, self.dc, self.address = name, dc, ""
        self.shard_map = admin_pb2.ShardMap()
        self.replicas: list[admin_pb2.ReplicaStatus] = []

    def GetShardMap(self, request, context):
        return self.shard_map

    def GetNodeStatus(self, request, context):
        return admin_pb2.NodeStatus(
            node=self.name,
            dc=self.dc,
            address=self.address,
            replicas=self.replicas,
            shard_map_version=self.shard_map.version,
        )


@pytest.fixture
def fake_cluster():
    """Three fake nodes, two shards; node i leads shard i, everyone follows it."""
    servers, nodes = [], []
    for i in range(3):
        node = FakeAdmin(f"dc{i + 1}-n1", f"dc{i + 1}")
        server = grpc.server(ThreadPoolExecutor(max_workers=4))
        admin_pb2_grpc.add_AdminServicer_to_server(node, server)
        port = server.add_insecure_port("127.0.0.1:0")
        node.address = f"127.0.0.1:{port}"
        server.start()
        servers.append(server)
        nodes.append(node)
    shard_map = admin_pb2.ShardMap(version=1, slot_count=16)
    for s in range(2):
        shard = shard_map.shards.add(shard_id=s, leader_node=nodes[s].name)
        shard.slots.add(start=8 * s, end=8 * s + 8)
        for n in nodes[s:] + nodes[:s]:
            shard.replicas.add(node=n.name, dc=n.dc, address=n.address)
    for n in nodes:
        n.shard_map = shard_map
        for s in range(2):
            leader = nodes[s]
            n.replicas.append(
                admin_pb2.ReplicaStatus(
                    shard_id=s,
                    role="leader" if n is leader else "follower",
                    term=3,
                    commit_index=100,
                    applied_index=100 if n is leader else 97,
                    leader_node=leader.name,
                    has_quorum=n is leader,
                )
            )
    yield nodes, servers
    for server in servers:
        server.stop(None)


def test_status_of_a_healthy_cluster(fake_cluster):
    nodes, _ = fake_cluster
    r = invoke("status", "--endpoints", nodes[2].address)  # one endpoint finds the rest via the shard map
    assert r.exit_code == 0, r.output
    assert "healthy" in r.output and "unhealthy" not in r.output
    assert r.output.count("leader") == 2
    assert "3/3 nodes answer" in r.output


def test_status_json_rows_and_lag(fake_cluster):
    nodes, _ = fake_cluster
    result = runner.invoke(app, ["status", "-e", nodes[0].address, "-o", "json"])
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["healthy"] is True
    rows = data["replicas"]
    assert len(rows) == 6
    assert {(r["shard"], r["node"]) for r in rows if r["role"] == "leader"} == {(0, "dc1-n1"), (1, "dc2-n1")}
    assert sorted(r["lag"] for r in rows) == [0, 0, 3, 3, 3, 3]


def test_status_exits_1_when_a_shard_has_no_leader(fake_cluster):
    nodes, _ = fake_cluster
    for n in nodes:
        for rep in n.replicas:
            if rep.shard_id == 1:
                rep.role, rep.leader_node, rep.has_quorum = "candidate", "", False
    r = invoke("status", "--endpoints", nodes[0].address)
    assert r.exit_code == 1
    assert "shard 1: no leader" in r.output
    assert "shard 0" not in r.output.split("unhealthy")[1]


def test_status_exits_1_when_the_leader_has_no_quorum(fake_cluster):
    nodes, _ = fake_cluster
    nodes[0].replicas[0].has_quorum = False
    r = invoke("status", "--endpoints", nodes[0].address)
    assert r.exit_code == 1
    assert "shard 0: leader dc1-n1 has no quorum" in r.output


def test_status_exits_1_with_two_leaders(fake_cluster):
    nodes, _ = fake_cluster
    nodes[2].replicas[0].role = "leader"
    nodes[2].replicas[0].has_quorum = True
    r = invoke("status", "--endpoints", nodes[0].address)
    assert r.exit_code == 1
    assert "shard 0: 2 leaders" in r.output


def test_status_with_one_node_down_is_still_healthy(fake_cluster):
    nodes, servers = fake_cluster
    servers[2].stop(None)
    r = invoke("status", "--endpoints", f"{nodes[2].address},{nodes[0].address}")
    assert r.exit_code == 0, r.output
    assert r.output.count("down") == 2
    assert "2/3 nodes answer" in r.output


def test_status_without_quorum(fake_cluster):
    nodes, servers = fake_cluster
    servers[1].stop(None)
    servers[2].stop(None)
    r = invoke("status", "--endpoints", nodes[0].address)
    assert r.exit_code == 1
    assert "no quorum, 1 of 3 replicas answer" in r.output


APPLY_ERROR = "LMDB MapFullError: mdb_put: [Errno 28] MDB_MAP_FULL: Environment mapsize limit reached"


def _stop_applying(node: FakeAdmin, shard: int, applied: int = 84) -> None:
    """NODE's replica of SHARD reports that its apply loop stopped (as a node does after a storage error)."""
    rep = next(r for r in node.replicas if r.shard_id == shard)
    rep.apply_error, rep.applied_index = APPLY_ERROR, applied


def test_status_shows_a_replica_that_cannot_apply_as_degraded_and_exits_1(fake_cluster):
    nodes, _ = fake_cluster
    _stop_applying(nodes[1], shard=0)  # a follower: shard 0 still has its leader and quorum
    r = invoke("status", "--endpoints", nodes[0].address)
    assert r.exit_code == 1, r.output
    assert "NOTE" in r.output
    assert f"degraded: {APPLY_ERROR}" in r.output  # the reason, markup-like brackets and all
    summary = r.output.splitlines()[-1]
    assert summary.startswith("3/3 nodes answer; degraded")
    assert "dc2-n1 (shard 0)" in summary
    assert "healthy" not in r.output  # neither "healthy" nor "unhealthy"
    assert " 16 " in r.output.split("dc2-n1")[1].splitlines()[0]  # its lag: 100 - 84


def test_status_json_has_apply_error_per_replica_and_the_verdict(fake_cluster):
    nodes, _ = fake_cluster
    _stop_applying(nodes[2], shard=1)
    result = runner.invoke(app, ["status", "-e", nodes[0].address, "-o", "json"])
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["healthy"] is False and data["verdict"] == "degraded" and data["problems"] == []
    assert data["degraded"] == [{"node": "dc3-n1", "shard": 1, "apply_error": APPLY_ERROR}]
    errors = {(r["node"], r["shard"]): r["apply_error"] for r in data["replicas"]}
    assert errors.pop(("dc3-n1", 1)) == APPLY_ERROR
    assert set(errors.values()) == {""}


def test_status_without_apply_errors_stays_healthy(fake_cluster):
    nodes, _ = fake_cluster
    r = invoke("status", "--endpoints", nodes[0].address)
    assert r.exit_code == 0, r.output
    assert "NOTE" not in r.output and "degraded" not in r.output
    assert r.output.splitlines()[-1] == "3/3 nodes answer; healthy"
    result = runner.invoke(app, ["status", "-e", nodes[0].address, "-o", "json"])
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["healthy"] is True and data["verdict"] == "healthy" and data["degraded"] == []
    assert {r["apply_error"] for r in data["replicas"]} == {""}


def test_status_a_leader_that_cannot_apply_is_unhealthy(fake_cluster):
    nodes, _ = fake_cluster
    _stop_applying(nodes[0], shard=0, applied=100)  # should step down; until it does, its shard is not served
    r = invoke("status", "--endpoints", nodes[0].address)
    assert r.exit_code == 1
    assert "unhealthy" in r.output
    assert "shard 0: leader dc1-n1 cannot apply" in r.output
    assert "degraded: cannot apply, will not campaign or lead: dc1-n1 (shard 0)" in r.output
    data = json.loads(runner.invoke(app, ["status", "-e", nodes[0].address, "-o", "json"]).stdout)
    assert data["verdict"] == "unhealthy"


def test_status_json_verdict_when_no_node_answers(closed_port):
    result = runner.invoke(app, ["status", "-e", f"127.0.0.1:{closed_port}", "-o", "json"])
    assert result.exit_code == 2
    data = json.loads(result.stdout)
    assert data["verdict"] == "unhealthy" and data["degraded"] == []


def test_shard_map_table_and_json(fake_cluster):
    nodes, _ = fake_cluster
    r = invoke("shard-map", "--endpoints", nodes[1].address)
    assert r.exit_code == 0
    assert "version 1, 16 slots" in r.output
    assert "8: 8-15" in r.output  # how many slots, then their ranges
    result = runner.invoke(app, ["shard-map", "-e", nodes[1].address, "-o", "json"])
    data = json.loads(result.stdout)
    assert data["slot_count"] == 16
    assert data["shards"][1]["slots"] == [[8, 16]]
    assert data["shards"][1]["leader_node"] == "dc2-n1"
    assert [r["node"] for r in data["shards"][1]["replicas"]] == ["dc2-n1", "dc3-n1", "dc1-n1"]


# ---- against a real local cluster ----------------------------------------------------


@pytest.fixture(scope="module")
def cluster_dir(tmp_path_factory):
    """`tidebank cluster up` in a fresh folder; every node is stopped afterwards."""
    d = tmp_path_factory.mktemp("cli-cluster")
    try:
        r = runner.invoke(app, ["cluster", "up", "--dir", str(d), "--shards", "2"])
        assert r.exit_code == 0, r.output
        assert "endpoints: 127.0.0.1:" in r.output
        yield d
    finally:
        LocalCluster.open(d).stop()


def _json(*args: str):
    r = invoke(*args, "-o", "json")
    return r.exit_code, json.loads(r.stdout)


@pytest.mark.integration
def test_cli_against_a_running_cluster(cluster_dir):
    d = ["--dir", str(cluster_dir)]
    assert invoke("status", *d).exit_code == 0
    code, data = _json("status", *d)
    assert code == 0 and data["healthy"] and len(data["replicas"]) == 6

    # two accounts on the same shard (transfers are single-shard for now)
    code, smap = _json("shard-map", *d)
    assert code == 0 and [s["shard_id"] for s in smap["shards"]] == [0, 1]
    slots = smap["shards"][0]["slots"][0]
    on_shard_0 = [i for i in range(1000, 2000) if slots[0] <= slot_of(i, smap["slot_count"]) < slots[1]][:2]
    a, b = map(str, on_shard_0)
    code, res = _json("account", "create", *d, "--ledger", "7", "--code", "1", "--id", a)
    assert code == 0 and res == [{"index": 0, "id": a, "status": "created", "ok": True}]
    flags = ["--flags", "debits_must_not_exceed_credits"]
    assert invoke("account", "create", *d, "--ledger", "7", "--code", "1", "--id", b, *flags).exit_code == 0
    code, res = _json("account", "create", *d, "--ledger", "7", "--code", "2", "--id", a)
    assert code == 1 and res[0]["status"] == "exists_with_different_code"

    t = ["--ledger", "7", "--code", "1"]
    assert (
        invoke("transfer", "create", *d, "--debit", a, "--credit", b, "--amount", "100", *t, "--id", "9001").exit_code
        == 0
    )
    code, res = _json("transfer", "create", *d, "--debit", b, "--credit", a, "--amount", "101", *t)
    assert code == 1 and res[0]["status"] == "exceeds_credits"
    pending = ["--debit", b, "--credit", a, "--amount", "40", *t, "--pending", "--timeout", "600", "--id", "9002"]
    assert invoke("transfer", "create", *d, *pending).exit_code == 0
    assert invoke("transfer", "create", *d, "--post", "9002", "--debit", b, "--id", "9003").exit_code == 0

    code, accounts = _json("account", "get", *d, a, b)
    assert code == 0
    assert [(x["debits_posted"], x["credits_posted"], x["debits_pending"]) for x in accounts] == [
        (100, 40, 0),
        (40, 100, 0),
    ]
    assert accounts[1]["flags"] == ["debits_must_not_exceed_credits"]
    code, transfers = _json("transfer", "get", *d, "9001", "9003")
    assert code == 0 and [x["amount"] for x in transfers] == [100, 40]
    assert transfers[1]["flags"] == ["post_pending_transfer"] and transfers[1]["pending_id"] == "9002"
    r = invoke("transfer", "get", *d, "9001", "9999")
    assert r.exit_code == 1 and "transfer 9999 not found" in r.output

    r = invoke("demo", *d, "--accounts", "40", "--transfers", "400", "--batch-size", "100")
    assert r.exit_code == 0, r.output
    assert "demo OK" in r.output

    # a node down: still healthy (2 of 3 replicas), and back after a restart
    assert invoke("node", "kill", *d, "--node", "dc2-n1").exit_code == 0
    code, data = _json("status", *d)
    assert data["nodes_reachable"] == 2
    assert invoke("node", "restart", *d, "--node", "dc2-n1").exit_code == 0
    code, data = _json("status", *d)
    assert data["nodes_reachable"] == 3

    r = invoke("cluster", "down", *d)
    assert r.exit_code == 0 and "stopped dc1-n1, dc2-n1, dc3-n1" in r.output
    assert invoke("status", *d).exit_code == 2

"""A shard added to a running cluster: a new Raft group, one replica per DC, holding no slots yet."""

from __future__ import annotations

import json
import time

import pytest

from tidebank.client import Account, Client, CreateAccountResult, CreateTransferResult, Transfer
from tidebank.cluster.audit import audit, collect_totals
from tidebank.cluster.launcher import ChannelPool, fetch_shard_map
from tidebank.cluster.membership import MembershipError

from .conftest import IdSource, running_cluster, shard_of, wait_until
from .test_clearing import Banks

pytestmark = pytest.mark.integration

LEDGER = 5
ADD_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with running_cluster(tmp_path_factory.mktemp("shard-add"), shards=2) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def clearing(cluster):
    from tidebank.v1 import clearing_pb2_grpc

    channel = cluster.channel()
    yield clearing_pb2_grpc.ClearingStub(channel)
    channel.close()


@pytest.fixture(scope="module")
def banks_before(cluster, client, clearing):
    """Clearing participants registered before the shard is added (their allowance spread over shards 0-1)."""
    return Banks(client, clearing, IdSource(cluster.shard_map(), start=9 << 100), ledger=7101,
                 caps={"a": 1_000, "b": 1_000})


@pytest.fixture(scope="module")
def added(cluster, banks_before):
    """Shard 2, added while the cluster runs."""
    report = cluster.membership().add_shard(timeout_s=ADD_TIMEOUT_S)
    cluster.reload()
    return report


def _replica(cluster, node: str, shard_id: int):
    status = cluster.node_status(node)
    assert status is not None, f"{node} does not answer"
    return next((r for r in status.replicas if r.shard_id == shard_id), None)


def _leader(cluster, shard_id: int, timeout_s: float = 30.0) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        rows = [r for r in cluster.cluster_status() if r.shard == shard_id and r.role == "leader"]
        if rows:
            return rows[0].node
        assert time.monotonic() < deadline, f"shard {shard_id} has no leader after {timeout_s:g} s"
        time.sleep(0.1)


def test_an_added_shard_gets_the_next_id_a_replica_in_every_dc_and_a_leader(cluster, added):
    assert added.created and added.shard_id == 2
    spec = cluster.topology.shard(2)
    assert spec.slots == () and tuple(added.replicas) == spec.replicas
    assert sorted(cluster.topology.node(n).dc for n in spec.replicas) == list(cluster.topology.dcs)
    assert added.leader in spec.replicas
    for node in spec.replicas:
        replica = _replica(cluster, node, 2)
        assert replica is not None and replica.membership == "voter"


def test_every_node_serves_the_new_shard_in_its_map_with_no_slots(cluster, added):
    with ChannelPool(tls=cluster.client_tls()) as pool:
        for node in cluster.topology.nodes:
            shard_map = fetch_shard_map([node.grpc_address], 5.0, pool)
            shard = next(s for s in shard_map.shards if s.shard_id == added.shard_id)
            assert list(shard.slots) == [], node.name
            assert shard_map.version == cluster.topology.shard_map_version, node.name


def test_money_keeps_moving_on_the_old_shards_and_the_audit_counts_the_new_one(cluster, added):
    with Client(cluster.endpoints, tls=cluster.client_tls(), timeout_s=30.0) as client:
        ids = [(7 << 100) + i for i in range(6)]
        assert all(r.status == CreateAccountResult.created
                   for r in client.create_accounts([Account(id=i, ledger=LEDGER, code=1) for i in ids]))
        results = client.create_transfers([Transfer(id=(7 << 90) + n, debit_account_id=ids[n % 6],
                                                    credit_account_id=ids[(n + 1) % 6], amount=10, ledger=LEDGER,
                                                    code=1) for n in range(30)])
        assert all(r.status == CreateTransferResult.created for r in results), results
    with ChannelPool(cluster.client_tls()) as pool:
        answers, _ = collect_totals(cluster.endpoints, 10.0, pool)
        report = audit(answers, expected_shards=[s.shard_id for s in cluster.topology.shards])
    assert report.exit_code == 0, [m.describe() for m in report.mismatches]
    assert added.shard_id in {a.shard_id for a in answers}


def test_replicas_report_the_records_they_hold_and_the_items_they_applied(cluster, added):
    shard_map = cluster.shard_map()
    account_ids = [(8 << 100) + i for i in range(40)]
    on_shard0 = [i for i in account_ids if shard_of(shard_map, i) == 0][:4]
    before = {node: _replica(cluster, node, 0) for node in cluster.topology.shard(0).replicas}
    with Client(cluster.endpoints, tls=cluster.client_tls(), timeout_s=30.0) as client:
        assert all(r.status == CreateAccountResult.created
                   for r in client.create_accounts([Account(id=i, ledger=LEDGER, code=1) for i in on_shard0]))
        assert client.create_transfers([Transfer(id=(8 << 90) + 1, debit_account_id=on_shard0[0],
                                                 credit_account_id=on_shard0[1], amount=5, ledger=LEDGER,
                                                 code=1)])[0].status == CreateTransferResult.created

    def caught_up():
        now = {node: _replica(cluster, node, 0) for node in before}
        return now if all(now[n].accounts >= before[n].accounts + 4 and now[n].transfers >= before[n].transfers + 1
                          for n in now) else None

    now = wait_until(caught_up, 30.0, "every replica of shard 0 counts the new accounts and transfer")
    assert all(now[n].items_applied >= before[n].items_applied + 5 for n in now), (before, now)
    for node in added.replicas:
        replica = _replica(cluster, node, added.shard_id)
        assert (replica.accounts, replica.transfers) == (0, 0), node


def test_shard_load_measures_every_shard_and_plans_slot_moves_onto_the_empty_one(cluster, added, monkeypatch):
    from typer.testing import CliRunner

    from tidebank.cluster.cli import app

    monkeypatch.delenv("TIDEBANK_DEBUG", raising=False)
    result = CliRunner().invoke(app, ["shard", "load", "--dir", str(cluster.dir), "--sample-s", "0.5",
                                      "-o", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    by_id = {s["shard_id"]: s for s in report["shards"]}
    assert sorted(by_id) == [0, 1, added.shard_id] and report["unmeasured"] == []
    assert by_id[added.shard_id]["slots"] == 0 and by_id[added.shard_id]["accounts"] == 0
    assert by_id[0]["accounts"] > 0 and by_id[0]["transfers"] > 0
    assert report["planned_moves"], report
    assert {m["to"] for m in report["planned_moves"]} == {added.shard_id}
    assert {m["from"] for m in report["planned_moves"]} <= {0, 1}


def _clear_and_settle(banks: Banks) -> None:
    from tidebank.v1 import clearing_pb2 as R

    assert banks.submit(banks.item("a", "b", 300), banks.item("b", "a", 100)) == [R.CLEARING_ITEM_RESULT_OK] * 2
    before = (banks.balance("a"), banks.balance("b"))
    number = banks.close().window.number
    assert banks.settle(number).result == R.WINDOW_RESULT_OK
    assert (banks.balance("a"), banks.balance("b")) == (before[0] - 200, before[1] + 200)


def test_participants_registered_before_the_add_still_clear_and_settle(added, banks_before):
    _clear_and_settle(banks_before)


def test_participants_registered_after_the_add_clear_and_settle(cluster, added, client, clearing):
    _clear_and_settle(Banks(client, clearing, IdSource(cluster.shard_map(), start=11 << 100), ledger=7102,
                            caps={"a": 1_000, "b": 1_000}))


def test_adding_it_again_by_id_changes_nothing_and_finds_its_leader(cluster, added):
    version = cluster.reload().shard_map_version
    again = cluster.membership().add_shard(shard_id=added.shard_id, timeout_s=ADD_TIMEOUT_S)
    assert not again.created and again.replicas == added.replicas and again.leader
    assert cluster.reload().shard_map_version == version


def test_a_restarted_replica_node_reopens_the_added_shard(cluster, added):
    node = cluster.topology.shard(added.shard_id).replicas[1]
    cluster.restart(node)
    cluster.wait_ready(timeout_s=60)
    replica = _replica(cluster, node, added.shard_id)
    assert replica is not None and replica.membership == "voter"
    assert _leader(cluster, added.shard_id) in cluster.topology.shard(added.shard_id).replicas


def test_a_new_shard_naming_a_node_twice_or_an_unknown_node_or_a_wrong_id_is_refused_and_changes_nothing(
        cluster, added):
    version = cluster.reload().shard_map_version
    membership = cluster.membership()
    with pytest.raises(MembershipError, match=r"a node holds two replicas"):
        membership.add_shard(("dc1-n1", "dc2-n1", "dc1-n1"))
    with pytest.raises(MembershipError, match="no node 'dc9-n1'"):
        membership.add_shard(("dc1-n1", "dc2-n1", "dc9-n1"))
    with pytest.raises(MembershipError, match="next shard id is 3"):
        membership.add_shard(shard_id=7)
    with pytest.raises(MembershipError, match="holds slots"):
        membership.add_shard(shard_id=0)
    assert cluster.reload().shard_map_version == version


def test_the_cli_adds_a_shard_and_the_shard_map_shows_it_without_slots(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from tidebank.cluster.cli import app
    from tidebank.cluster.launcher import LocalCluster

    monkeypatch.delenv("TIDEBANK_DEBUG", raising=False)
    runner = CliRunner()
    directory = str(tmp_path / "cli")
    try:
        up = runner.invoke(app, ["cluster", "up", "--dir", directory, "--shards", "1"])
        assert up.exit_code == 0, up.output
        added = runner.invoke(app, ["shard", "add", "--dir", directory, "--replicas", "dc2-n1,dc3-n1,dc1-n1",
                                    "-o", "json"])
        assert added.exit_code == 0, added.output
        report = json.loads(added.output)
        assert report["shard"] == 1 and report["created"] and report["replicas"] == ["dc2-n1", "dc3-n1", "dc1-n1"]
        table = runner.invoke(app, ["shard-map", "--dir", directory])
        assert table.exit_code == 0, table.output
        row = next(line for line in table.output.splitlines() if line.strip().startswith("1 "))
        assert "none" in row and "dc2-n1@dc2" in row, table.output
        refused = runner.invoke(app, ["shard", "add", "--dir", directory, "--replicas", "dc1-n1,dc2-n1"])
        assert refused.exit_code == 1 and "needs one per DC" in refused.output, refused.output
    finally:
        LocalCluster.open(directory).stop()

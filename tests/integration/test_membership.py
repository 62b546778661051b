"""Growing and shrinking a running cluster: nodes join and leave, replicas move, nothing is lost."""

from __future__ import annotations

import time

import grpc
import pytest

from tidebank.client import Account, Client, CreateAccountResult, CreateTransferResult, Transfer
from tidebank.cluster.membership import STEPS, MembershipError, MoveInterrupted

from .conftest import running_cluster, shard_of

pytestmark = pytest.mark.integration

LEDGER = 3
MOVE_TIMEOUT_S = 60.0


def _add_nodes(cluster, names_and_dcs):
    membership = cluster.membership()
    for name, dc in names_and_dcs:
        membership.add_node(cluster.new_node_spec(name, dc))
    cluster.reload()
    cluster.start([name for name, _ in names_and_dcs])
    for name, _ in names_and_dcs:
        cluster.wait_answering(name)  # it holds no replica yet: no leader to wait for
    cluster.wait_ready(timeout_s=60)


def _replica(cluster, node: str, shard_id: int):
    status = cluster.node_status(node)
    assert status is not None, f"{node} does not answer"
    return next((r for r in status.replicas if r.shard_id == shard_id), None)


def _leader(cluster, shard_id: int, timeout_s: float = 30.0) -> str:
    """The shard's leader, waiting for one: right after a swap the leaving leader hands over, and for a moment
    (longer on a busy machine) no replica leads."""
    deadline = time.monotonic() + timeout_s
    while True:
        rows = [r for r in cluster.cluster_status() if r.shard == shard_id and r.role == "leader"]
        if rows:
            return rows[0].node
        assert time.monotonic() < deadline, f"shard {shard_id} has no leader after {timeout_s:g} s"
        time.sleep(0.1)


def _swap_within(cluster, shard_id: int, dc: str) -> tuple:
    """(the shard's spec now, its replica in `dc`, the other node of `dc`): a move back and forth between the
    two nodes of a DC, whichever holds the replica at the moment."""
    spec = cluster.reload().shard(shard_id)
    source = next(r for r in spec.replicas if cluster.topology.node(r).dc == dc)
    return spec, source, f"{dc}-n2" if source == f"{dc}-n1" else f"{dc}-n1"


@pytest.fixture(scope="module")
def grown(tmp_path_factory):
    """A 3-DC cluster with a second node in dc1 and dc2, holding nothing yet."""
    with running_cluster(tmp_path_factory.mktemp("grown"), shards=2) as cluster:
        _add_nodes(cluster, [("dc1-n2", "dc1"), ("dc2-n2", "dc2")])
        yield cluster


@pytest.fixture(scope="module")
def money(grown):
    """Two funded accounts on shard 0 and a client; the tests move shard 0's replicas under them."""
    with Client(grown.endpoints, tls=grown.client_tls(), timeout_s=30.0) as client:
        shard_map = grown.shard_map()
        ids = [i for i in range(1 << 70, (1 << 70) + 5000) if shard_of(shard_map, i) == 0][:3]
        results = client.create_accounts([Account(id=i, ledger=LEDGER, code=1) for i in ids])
        assert all(r.status == CreateAccountResult.created for r in results), results
        yield client, ids


def _pay(client, ids, first_id: int, count: int) -> list[int]:
    """`count` transfers of 1 from ids[0] to ids[1]; their ids, all created (`exists`: a retry by the client
    after a leader change found it created by its first attempt)."""
    transfer_ids = list(range(first_id, first_id + count))
    results = client.create_transfers([Transfer(id=t, debit_account_id=ids[0], credit_account_id=ids[1],
                                                amount=1, ledger=LEDGER, code=1) for t in transfer_ids])
    assert all(r.status in (CreateTransferResult.created, CreateTransferResult.exists) for r in results), results
    return transfer_ids


def _assert_all_there(client, ids, transfer_ids):
    found = client.lookup_transfers(transfer_ids)
    assert sorted(t.id for t in found) == sorted(transfer_ids)
    debit, credit = client.lookup_accounts(ids[:2])
    assert debit.debits_posted == credit.credits_posted >= len(transfer_ids)


def test_a_moved_replica_holds_the_shard_and_the_old_one_is_gone(grown, money):
    client, ids = money
    before = _pay(client, ids, 1 << 90, 50)
    report = grown.membership().move_replica(0, "dc1-n1", "dc1-n2", timeout_s=MOVE_TIMEOUT_S)
    grown.reload()
    assert report.finished and report.steps_done == list(STEPS)
    assert report.members == ["dc1-n2", "dc2-n1", "dc3-n1"]
    assert grown.topology.shard(0).replicas[0] == "dc1-n2"  # it takes the old replica's place and preference
    assert _replica(grown, "dc1-n1", 0) is None
    retired = list((grown.topology.node_data_dir("dc1-n1") / "retired").glob("shard-0.v*"))
    assert len(retired) == 1, "the old replica's files are kept aside, not deleted"
    after = _pay(client, ids, (1 << 90) + 100, 50)
    _assert_all_there(client, ids, before + after)
    moved = _replica(grown, "dc1-n2", 0)
    assert moved.membership == "voter" and moved.applied_index > 0


def test_a_move_run_again_after_it_is_done_changes_nothing(grown, money):
    _, source, target = _swap_within(grown, 0, "dc1")
    report = grown.membership().move_replica(0, source, target, timeout_s=MOVE_TIMEOUT_S)
    version = grown.reload().shard_map_version
    again = grown.membership().move_replica(0, source, target, timeout_s=MOVE_TIMEOUT_S)
    assert report.finished and again.finished and again.steps_done == []
    assert grown.reload().shard_map_version == version


@pytest.mark.parametrize("stop_after", STEPS[:-1])
def test_a_move_whose_driver_stops_after_a_step_resumes_and_finishes(grown, money, stop_after):
    client, ids = money
    spec, source, target = _swap_within(grown, 1, "dc2")
    first = grown.membership().move_replica(1, source, target, timeout_s=MOVE_TIMEOUT_S, stop_after=stop_after)
    assert not first.finished and first.steps_done[-1] == stop_after
    moving = (target, "joining") if stop_after in ("stage", "add") else (source, "leaving")
    assert [(m["shard"], m["node"], m["membership"]) for m in grown.status().moves] == [(1, *moving)]
    transfer_ids = _pay(client, ids, (2 << 90) + STEPS.index(stop_after) * 1000, 20)
    second = grown.membership().move_replica(1, source, target, timeout_s=MOVE_TIMEOUT_S)
    assert second.finished
    assert first.steps_done + second.steps_done == list(STEPS), "no step was done twice or skipped"
    assert sorted(second.members) == sorted({target, *(r for r in spec.replicas if r != source)})
    _assert_all_there(client, ids, transfer_ids)


@pytest.mark.parametrize("stop_after", STEPS[:-1])
def test_a_move_goes_on_when_the_shard_leader_is_killed_after_a_step(grown, money, stop_after):
    client, ids = money
    _, source, target = _swap_within(grown, 0, "dc1")
    grown.membership().move_replica(0, source, target, timeout_s=MOVE_TIMEOUT_S, stop_after=stop_after)
    victim = _leader(grown, 0)
    grown.kill(victim)
    report = None
    try:
        # a majority of the voters is up (three of four, or two of three): the shard still commits
        transfer_ids = _pay(client, ids, (3 << 90) + STEPS.index(stop_after) * 1000, 20)
        if victim not in (source, target):
            report = grown.membership().move_replica(0, source, target, timeout_s=MOVE_TIMEOUT_S)
    finally:
        grown.start([victim])
        grown.wait_ready(timeout_s=60)
    if report is None:  # a replica of the move itself was killed: the move needs it back (to catch up, or gone)
        report = grown.membership().move_replica(0, source, target, timeout_s=MOVE_TIMEOUT_S)
    assert report.finished and target in report.members and source not in report.members
    _assert_all_there(client, ids, transfer_ids)


def test_a_move_waits_for_a_killed_new_replica_to_come_back_and_catch_up(grown, money):
    client, ids = money
    _, source, target = _swap_within(grown, 0, "dc1")
    grown.membership().move_replica(0, source, target, timeout_s=MOVE_TIMEOUT_S, stop_after="add")
    grown.kill(target)
    try:
        transfer_ids = _pay(client, ids, 4 << 90, 20)
        with pytest.raises(MoveInterrupted, match="did not catch up"):
            grown.membership().move_replica(0, source, target, timeout_s=3.0)
    finally:
        grown.start([target])
        grown.wait_ready(timeout_s=60)
    report = grown.membership().move_replica(0, source, target, timeout_s=MOVE_TIMEOUT_S)
    assert report.finished and target in report.members
    assert _replica(grown, target, 0).applied_index >= _replica(grown, _leader(grown, 0), 0).applied_index - 5
    _assert_all_there(client, ids, transfer_ids)


def test_a_dead_nodes_replica_is_evicted_before_its_replacement_joins(grown, money):
    client, ids = money
    spec, source, target = _swap_within(grown, 0, "dc1")
    grown.kill(source)
    try:
        during = _pay(client, ids, 6 << 90, 20)  # the two live replicas commit meanwhile
        report = grown.membership().move_replica(0, source, target, timeout_s=MOVE_TIMEOUT_S)
        after = _pay(client, ids, (6 << 90) + 100, 20)
    finally:
        grown.start([source])
        grown.wait_ready(timeout_s=60)
        grown.wait_answering(source)  # it may hold no replica now: no leader of its own to wait for
    assert report.finished and report.evicted
    assert report.steps_done == ["stage", "add", "swap", "finish"]  # "remove": nothing left to do, A was evicted
    assert sorted(report.members) == sorted({target, *(r for r in spec.replicas if r != source)})
    assert _replica(grown, source, 0) is None  # back up, it opens no replica of the shard it no longer holds
    _assert_all_there(client, ids, during + after)


def test_a_replica_that_answers_its_leader_is_not_evicted(grown, money):
    from tidebank.client._core import rich_details
    from tidebank.common.auth import signed
    from tidebank.v1 import admin_pb2

    _, source, target = _swap_within(grown, 0, "dc1")
    membership = grown.membership()
    membership.move_replica(0, source, target, timeout_s=MOVE_TIMEOUT_S, stop_after="stage")
    request = admin_pb2.ChangeMembershipRequest(shard_id=0, action=admin_pb2.ChangeMembershipRequest.EVICT,
                                                node=source)
    leader = _leader(grown, 0)
    if leader == source:  # a leader cannot be evicted either, but the check under test is the silence
        request.node = next(r for r in grown.topology.shard(0).replicas if r not in (source, leader))
    stub = membership.pool.admin(grown.topology.node(leader).grpc_address)
    with pytest.raises(grpc.RpcError) as refused:
        stub.ChangeMembership(request, timeout=10, metadata=signed(grown.topology.secret, "ChangeMembership",
                                                                   request))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert rich_details(refused.value)[0].reason == "PARTNER_ANSWERING"
    assert source in _replica(grown, leader, 0).members  # nothing changed
    report = membership.move_replica(0, source, target, timeout_s=MOVE_TIMEOUT_S)
    assert report.finished and not report.evicted


def test_a_move_to_another_dc_or_to_an_unknown_node_is_refused_and_changes_nothing(grown):
    version = grown.reload().shard_map_version
    membership = grown.membership()
    with pytest.raises(MembershipError, match="within its DC"):
        membership.move_replica(1, grown.topology.shard(1).replicas[0], "dc3-n1" if not grown.topology.shard(
            1).replicas[0].startswith("dc3") else "dc1-n1")
    with pytest.raises(MembershipError, match="no node"):
        membership.move_replica(1, "dc1-n1", "dc1-n9")
    assert grown.reload().shard_map_version == version


def test_a_node_is_drained_then_removed_and_the_cluster_keeps_every_transfer(tmp_path):
    with running_cluster(tmp_path, shards=2) as cluster:
        _add_nodes(cluster, [("dc3-n2", "dc3")])
        with Client(cluster.endpoints, tls=cluster.client_tls(), timeout_s=30.0) as client:
            ids = [(5 << 100) + i for i in range(4)]
            assert all(r.status == CreateAccountResult.created for r in
                       client.create_accounts([Account(id=i, ledger=LEDGER, code=1) for i in ids]))
            transfer_ids = _pay(client, ids, 5 << 90, 30)
            reports = cluster.membership().remove_node("dc3-n1", cluster.stop, timeout_s=MOVE_TIMEOUT_S)
            cluster.reload()
            assert sorted(r.shard_id for r in reports) == [0, 1]
            assert "dc3-n1" not in cluster.topology.node_names
            assert not cluster.is_running("dc3-n1")
            assert all("dc3-n2" in s.replicas for s in cluster.topology.shards)
            cluster.wait_ready(timeout_s=60)
        with Client(cluster.endpoints, tls=cluster.client_tls(), timeout_s=30.0) as client:
            transfer_ids += _pay(client, ids, (5 << 90) + 100, 30)
            _assert_all_there(client, ids, transfer_ids)


def test_draining_the_only_node_of_a_dc_is_refused(grown):
    with pytest.raises(MembershipError, match="no other node in dc3"):
        grown.membership().drain_plan("dc3-n1")


def test_the_cli_adds_a_node_moves_a_replica_to_it_and_shows_it_balanced(tmp_path, monkeypatch):
    import json

    from typer.testing import CliRunner

    from tidebank.cluster.cli import app
    from tidebank.cluster.launcher import LocalCluster

    monkeypatch.delenv("TIDEBANK_DEBUG", raising=False)
    runner = CliRunner()
    directory = str(tmp_path / "cli")
    try:
        up = runner.invoke(app, ["cluster", "up", "--dir", directory, "--shards", "2"])
        assert up.exit_code == 0, up.output
        added = runner.invoke(app, ["node", "add", "dc2-n2", "--dc", "dc2", "--dir", directory])
        assert added.exit_code == 0 and "added dc2-n2 in dc2" in added.output, added.output
        moved = runner.invoke(app, ["shard", "move-replica", "1", "--from", "dc2-n1", "--to", "dc2-n2",
                                    "--dir", directory, "-o", "json"])
        assert moved.exit_code == 0, moved.output
        report = json.loads(moved.output)
        assert report["steps"] == list(STEPS) and "dc2-n2" in report["members"]
        shard_map = json.loads(runner.invoke(app, ["shard-map", "--dir", directory, "-o", "json"]).output)
        shard = next(s for s in shard_map["shards"] if s["shard_id"] == 1)
        assert [r["node"] for r in shard["replicas"] if r["dc"] == "dc2"] == ["dc2-n2"]
        assert all(r["membership"] == "voter" for r in shard["replicas"])
        balanced = runner.invoke(app, ["shard", "balance", "--dir", directory, "--dry-run"])
        assert balanced.exit_code == 0 and "balanced" in balanced.output, balanced.output
        refused = runner.invoke(app, ["shard", "move-replica", "1", "--from", "dc2-n2", "--to", "dc1-n1",
                                      "--dir", directory])
        assert refused.exit_code == 1 and "within its DC" in refused.output, refused.output
    finally:
        LocalCluster.open(directory).stop()

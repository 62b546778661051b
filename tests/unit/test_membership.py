"""Replica moves: how the topology records one, what a node takes, and which step a move is at."""

from __future__ import annotations

import collections
import dataclasses

import pytest

from tidebank.cluster.membership import STEPS, Membership, MembershipError
from tidebank.common.topology import SECRET_ENV, Topology, TopologyError, generate_local
from tidebank.node import membership as node_membership
from tidebank.node.raft.replica import JOINING, LEAVING, VOTER


@pytest.fixture(autouse=True)
def _no_secret_env(monkeypatch):
    monkeypatch.delenv(SECRET_ENV, raising=False)


@pytest.fixture
def topo(tmp_path) -> Topology:
    """3 DCs, 2 nodes each; every shard on the first node of each DC."""
    t = generate_local(tmp_path, dcs=3, nodes_per_dc=2, shards=1, plaintext=True)
    return t


def _moving(topo: Topology, **changes) -> Topology:
    return topo.with_shard(dataclasses.replace(topo.shard(0), **changes))


# ---- the topology of a move ------------------------------------------------------------------------


def test_a_joining_and_a_leaving_replica_round_trip_through_toml(tmp_path, topo):
    moving = _moving(topo, joining=("dc1-n2",))
    path = tmp_path / "moved.toml"
    moving.dump(path)
    loaded = Topology.load(path)
    assert loaded.shard(0).joining == ("dc1-n2",) and loaded.shard(0).leaving == ()
    assert loaded.shard(0).hosts == ("dc1-n1", "dc2-n1", "dc3-n1", "dc1-n2")
    assert loaded.shard_map_version == topo.shard_map_version + 1


def test_shards_on_includes_joining_and_leaving_replicas(topo):
    moving = _moving(topo, replicas=("dc1-n2", "dc2-n1", "dc3-n1"), leaving=("dc1-n1",))
    assert [s.shard_id for s in moving.shards_on("dc1-n1")] == [0]
    assert [s.shard_id for s in moving.shards_on("dc1-n2")] == [0]


@pytest.mark.parametrize("changes, message", [
    ({"joining": ("dc1-n2", "dc2-n2")}, "one move at a time"),
    ({"joining": ("dc9-n1",)}, "unknown joining node"),
    ({"joining": ("dc1-n1",)}, "named twice"),
    ({"leaving": ("dc2-n1",)}, "named twice"),
])
def test_a_move_the_topology_cannot_hold_is_refused(topo, changes, message):
    with pytest.raises(TopologyError, match=message):
        _moving(topo, **changes)


def test_membership_of_each_host(topo):
    spec = _moving(topo, replicas=("dc1-n2", "dc2-n1", "dc3-n1"), leaving=("dc1-n1",)).shard(0)
    assert node_membership.membership_of(spec, "dc1-n2") == VOTER
    assert node_membership.membership_of(spec, "dc1-n1") == LEAVING
    assert node_membership.membership_of(_moving(topo, joining=("dc1-n2",)).shard(0), "dc1-n2") == JOINING
    with pytest.raises(ValueError):
        node_membership.membership_of(spec, "dc3-n2")


# ---- what a node takes -----------------------------------------------------------------------------


def test_a_node_takes_a_topology_of_its_own_cluster_only(topo):
    newer = _moving(topo, joining=("dc1-n2",))
    node_membership.check_successor(topo, newer, "dc1-n1")
    with pytest.raises(TopologyError, match="secret"):
        node_membership.check_successor(topo, dataclasses.replace(newer, secret="other"), "dc1-n1")
    with pytest.raises(TopologyError, match="cluster"):
        node_membership.check_successor(topo, dataclasses.replace(newer, cluster_name="other"), "dc1-n1")
    moved = dataclasses.replace(topo.node("dc1-n1"), raft_port=topo.node("dc1-n1").raft_port + 1)
    with pytest.raises(TopologyError, match="own addresses"):
        node_membership.check_successor(
            topo, dataclasses.replace(newer, nodes=tuple(moved if n.name == "dc1-n1" else n for n in topo.nodes)),
            "dc1-n1")


def test_a_pushed_topology_carries_no_secret_and_gets_the_nodes(topo):
    text = topo.dumps(include_secret=False)
    assert node_membership.parse_pushed(text, topo.secret) == topo
    with pytest.raises(TopologyError, match="must not carry"):
        node_membership.parse_pushed(topo.dumps(include_secret=True), topo.secret)


def test_a_node_starts_from_the_newer_of_its_config_and_what_it_took_last(topo):
    assert node_membership.newest_topology(topo, "dc1-n1") is topo
    newer = _moving(topo, joining=("dc1-n2",))
    node_membership.persist(newer, "dc1-n1")
    assert node_membership.newest_topology(topo, "dc1-n1").shard(0).joining == ("dc1-n2",)
    assert node_membership.newest_topology(_moving(newer, joining=()), "dc1-n1").shard(0).joining == ()


def test_a_closed_replica_s_files_are_moved_aside_not_deleted(topo):
    shard_dir = node_membership.shard_dir(topo, "dc1-n1", 0)
    shard_dir.mkdir(parents=True)
    (shard_dir / "data.mdb").write_bytes(b"money")
    retired = node_membership.retire_shard_dir(topo, "dc1-n1", 0, 7)
    assert not shard_dir.exists() and (retired / "data.mdb").read_bytes() == b"money"
    assert retired.name == "shard-0.v7"


def test_only_the_newest_retired_replicas_are_kept(topo):
    for version in range(10, 10 + node_membership.RETIRED_KEPT_MAX + 2):
        node_membership.shard_dir(topo, "dc1-n1", version % 2).mkdir(parents=True)
        node_membership.retire_shard_dir(topo, "dc1-n1", version % 2, version)
    kept = sorted(p.name for p in (topo.node_data_dir("dc1-n1") / node_membership.RETIRED_DIR).iterdir())
    newest = range(10 + 2, 10 + node_membership.RETIRED_KEPT_MAX + 2)
    assert kept == sorted(f"shard-{v % 2}.v{v}" for v in newest)


# ---- where a move stands ---------------------------------------------------------------------------


class _Driver(Membership):
    """The driver's step logic with the Raft group's voting members given, not asked of nodes."""

    def __init__(self, path, members):
        super().__init__(path, pool=None)
        self.members = members

    def _is_member(self, shard_id, node, deadline):
        return node in self.members


def _driver(tmp_path, topo, members=("dc1-n1", "dc2-n1", "dc3-n1")):
    path = tmp_path / "cluster.toml"
    topo.dump(path)
    return _Driver(path, set(members))


def _step(driver, source="dc1-n1", target="dc1-n2"):
    return driver._next_step(driver.topology.shard(0), source, target, deadline=0.0)


def test_each_state_of_a_move_names_the_next_step(tmp_path, topo):
    assert _step(_driver(tmp_path, topo)) == "stage"
    joining = _moving(topo, joining=("dc1-n2",))
    assert _step(_driver(tmp_path, joining)) == "add"
    assert _step(_driver(tmp_path, joining, ("dc1-n1", "dc1-n2", "dc2-n1", "dc3-n1"))) == "swap"
    swapped = _moving(topo, replicas=("dc1-n2", "dc2-n1", "dc3-n1"), leaving=("dc1-n1",))
    assert _step(_driver(tmp_path, swapped, ("dc1-n1", "dc1-n2", "dc2-n1", "dc3-n1"))) == "remove"
    assert _step(_driver(tmp_path, swapped, ("dc1-n2", "dc2-n1", "dc3-n1"))) == "finish"
    done = _moving(topo, replicas=("dc1-n2", "dc2-n1", "dc3-n1"))
    assert _step(_driver(tmp_path, done, ("dc1-n2", "dc2-n1", "dc3-n1"))) is None
    assert STEPS == ("stage", "add", "swap", "remove", "finish")


@pytest.mark.parametrize("source, target, message", [
    ("dc1-n1", "dc2-n2", "within its DC"),
    ("dc1-n1", "dc1-n1", "same node"),
    ("dc1-n1", "dc1-n7", "no node"),
])
def test_a_move_that_cannot_be_made_is_refused(tmp_path, topo, source, target, message):
    with pytest.raises(MembershipError, match=message):
        _step(_driver(tmp_path, topo), source, target)


def test_a_move_from_a_node_without_the_replica_is_refused_unless_it_is_done(tmp_path):
    topo = generate_local(tmp_path, dcs=3, nodes_per_dc=3, shards=1, plaintext=True)
    with pytest.raises(MembershipError, match="holds no replica"):
        _step(_driver(tmp_path, topo), "dc1-n2", "dc1-n3")
    assert _step(_driver(tmp_path, topo), "dc1-n2", "dc1-n1") is None  # as a finished move leaves it: done


def test_a_shard_in_another_move_refuses_a_new_one(tmp_path, topo):
    driver = _driver(tmp_path, _moving(topo, joining=("dc2-n2",)))
    with pytest.raises(MembershipError, match="another move"):
        _step(driver)


def test_draining_spreads_replicas_over_the_dc_s_other_nodes(tmp_path):
    topo = generate_local(tmp_path, dcs=3, nodes_per_dc=3, shards=3, plaintext=True)
    on_n1 = [s.shard_id for s in topo.shards_on("dc1-n1")]
    plan = _driver(tmp_path, topo).drain_plan("dc1-n1")
    assert [shard for shard, _ in plan] == on_n1
    assert all(target in ("dc1-n2", "dc1-n3") for _, target in plan)
    with pytest.raises(MembershipError, match="no other node in dc1"):
        _driver(tmp_path, generate_local(tmp_path, dcs=3, nodes_per_dc=1, shards=2, plaintext=True)).drain_plan(
            "dc1-n1")


def test_balancing_evens_replicas_out_within_each_dc(tmp_path):
    topo = generate_local(tmp_path, dcs=3, nodes_per_dc=1, shards=4, plaintext=True)
    spares = [dataclasses.replace(topo.node(f"{dc}-n1"), name=f"{dc}-n2", grpc_address=f"127.0.0.1:{20000 + i}",
                                  raft_port=21000 + i, metrics_port=22000 + i) for i, dc in enumerate(topo.dcs)]
    grown = topo.changed(nodes=topo.nodes + tuple(spares))
    plan = _driver(tmp_path, grown).balance_plan()
    assert len(plan) == 6 and all(target.endswith("-n2") for _, _, target in plan)
    assert all(grown.node(source).dc == grown.node(target).dc for _, source, target in plan)
    assert collections.Counter(source for _, source, _ in plan) == {"dc1-n1": 2, "dc2-n1": 2, "dc3-n1": 2}
    assert _driver(tmp_path, topo).balance_plan() == []  # one node per DC: nothing to even out


def test_a_new_shard_goes_to_the_emptiest_node_of_each_dc_and_is_led_from_the_least_preferred_dc(tmp_path):
    topo = generate_local(tmp_path, dcs=3, nodes_per_dc=2, shards=2, plaintext=True)
    # shards 0 and 1 sit on the -n1 / -n2 nodes alternately and prefer dc1 and dc2: dc3 leads none
    replicas = _driver(tmp_path, topo).new_shard_replicas()
    assert [topo.node(n).dc for n in replicas] == ["dc3", "dc1", "dc2"]
    load = {n.name: len(topo.shards_on(n.name)) for n in topo.nodes}
    assert all(load[n] == min(load[m.name] for m in topo.nodes if m.dc == topo.node(n).dc) for n in replicas)


def test_a_topology_with_an_added_shard_that_holds_no_slots_is_valid_and_routes_nothing_to_it(tmp_path, topo):
    from tidebank.common.topology import ShardSpec

    grown = topo.changed(shards=topo.shards + (ShardSpec(1, (), ("dc2-n2", "dc3-n2", "dc1-n2")),))
    assert grown.shard(1).slots == () and grown.shard_map_version == topo.shard_map_version + 1
    assert {grown.shard_of_slot(s) for s in range(grown.slot_count)} == {0}


# ---- who campaigns -----------------------------------------------------------------------------------


def _replica_state(membership, self_member, last_index=100, leader_commit_seen=100):
    """What ShardReplica._may_campaign reads, without a Raft group around it."""
    import types

    return types.SimpleNamespace(membership=membership, _self_member=self_member,
                                 leader_commit_seen=leader_commit_seen,
                                 _SyncObj__raftLog=[(b"", last_index, 1)])


def _may_campaign(state) -> bool:
    from tidebank.node.raft.replica import ShardReplica

    return ShardReplica._may_campaign(state)


def test_a_voter_campaigns_unless_its_own_log_removed_it():
    assert _may_campaign(_replica_state(VOTER, None))
    assert _may_campaign(_replica_state(VOTER, True))
    assert not _may_campaign(_replica_state(VOTER, False))


def test_a_joining_replica_campaigns_only_once_added_and_close_to_the_leader():
    from tidebank.node.raft.replica import JOIN_CAMPAIGN_LAG_MAX

    assert not _may_campaign(_replica_state(JOINING, None))  # not added yet
    assert not _may_campaign(_replica_state(JOINING, True, leader_commit_seen=0))  # never heard a leader
    assert not _may_campaign(_replica_state(JOINING, True, last_index=10, leader_commit_seen=10 + JOIN_CAMPAIGN_LAG_MAX
                                            + 1))  # catching up
    assert _may_campaign(_replica_state(JOINING, True, last_index=10, leader_commit_seen=10 + JOIN_CAMPAIGN_LAG_MAX))


def test_a_leaving_replica_campaigns_while_it_is_still_a_member():
    """Holding it back could leave a group whose most up-to-date members are all held: no electable replica."""
    assert _may_campaign(_replica_state(LEAVING, True))
    assert _may_campaign(_replica_state(LEAVING, None))
    assert not _may_campaign(_replica_state(LEAVING, False))


def test_a_new_node_takes_the_addresses_given_or_free_ports(tmp_path):
    from tidebank.cluster.launcher import LocalCluster

    cluster = LocalCluster.create(tmp_path / "c", plaintext=True)
    try:
        given = cluster.new_node_spec("dc1-n2", "dc1", grpc_address="127.0.0.1:18001",
                                      raft_address="127.0.0.1:18002", metrics_port=0)
        assert (given.grpc_address, given.raft_endpoint, given.metrics_port) == (
            "127.0.0.1:18001", ("127.0.0.1", 18002), 0)
        chosen = cluster.new_node_spec("dc1-n3", "dc1")
        used = {p for n in cluster.topology.nodes for p in (n.grpc_port, n.raft_port, n.metrics_port)}
        assert {chosen.grpc_port, chosen.raft_port, chosen.metrics_port}.isdisjoint(used)
        with pytest.raises(TopologyError, match="HOST:PORT"):
            cluster.new_node_spec("dc1-n4", "dc1", grpc_address="no-port")
        with pytest.raises(TopologyError, match="unknown DC"):
            cluster.new_node_spec("dc9-n1", "dc9")
    finally:
        cluster.close()


def test_balancing_is_refused_while_a_shard_is_in_another_move(tmp_path, topo):
    driver = _driver(tmp_path, _moving(topo, joining=("dc1-n2",)))
    with pytest.raises(MembershipError, match="is in a move"):
        driver.balance([(0, "dc2-n1", "dc2-n2")])

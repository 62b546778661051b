"""Topology: generation, TOML round trip, placement and validation."""

from __future__ import annotations

import copy
import pathlib
import socket
import stat
import tomllib

import pytest

from tidebank.common.topology import SECRET_ENV, Topology, TopologyError, generate_local


@pytest.fixture(autouse=True)
def _no_secret_env(monkeypatch):
    monkeypatch.delenv(SECRET_ENV, raising=False)


@pytest.fixture
def topo(tmp_path) -> Topology:
    return generate_local(tmp_path, dcs=3, nodes_per_dc=2, shards=4)


def _doc(topo: Topology) -> dict:
    return tomllib.loads(topo.dumps())


def _write_raw(tmp_path: pathlib.Path, text: str) -> pathlib.Path:
    path = tmp_path / "cluster.toml"
    path.write_text(text)
    return path


# ---- round trip --------------------------------------------------------------------


def test_generate_dump_load_round_trip(tmp_path, topo):
    path = tmp_path / "cluster.toml"
    topo.dump(path)
    loaded = Topology.load(path)
    assert loaded == topo
    assert loaded.dumps() == topo.dumps()
    assert loaded.node("dc1-n2") == topo.node("dc1-n2")


def test_dump_is_private_because_it_holds_the_secret(tmp_path, topo):
    path = tmp_path / "cluster.toml"
    topo.dump(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert topo.secret in path.read_text()


def test_dump_without_secret_then_load_with_env(tmp_path, topo, monkeypatch):
    path = tmp_path / "cluster.toml"
    topo.dump(path, include_secret=False)
    assert topo.secret not in path.read_text()
    with pytest.raises(TopologyError, match=SECRET_ENV):
        Topology.load(path)
    monkeypatch.setenv(SECRET_ENV, "from-env")
    assert Topology.load(path).secret == "from-env"


def test_env_secret_overrides_file(tmp_path, topo, monkeypatch):
    path = tmp_path / "cluster.toml"
    topo.dump(path)
    monkeypatch.setenv(SECRET_ENV, "override")
    assert Topology.load(path).secret == "override"


def test_strings_with_quotes_and_backslashes_round_trip(tmp_path, topo):
    doc = _doc(topo)
    doc["cluster"]["name"] = 'pay "east" \\ prod\t1'
    doc["cluster"]["data_dir"] = str(tmp_path / 'we"ird')
    t = Topology.from_dict(doc)
    path = tmp_path / "cluster.toml"
    t.dump(path)
    assert Topology.load(path) == t


def test_cluster_folder_can_be_moved(tmp_path, topo):
    topo.dump(tmp_path / "cluster.toml")
    assert 'data_dir = "data"' in (tmp_path / "cluster.toml").read_text()
    moved = tmp_path.parent / (tmp_path.name + "-moved")
    tmp_path.rename(moved)
    assert Topology.load(moved / "cluster.toml").data_dir == moved / "data"


def test_data_dir_outside_the_folder_stays_absolute(tmp_path, topo):
    doc = _doc(topo)
    doc["cluster"]["data_dir"] = "/srv/tidebank"
    Topology.from_dict(doc).dump(tmp_path / "cluster.toml")
    assert Topology.load(tmp_path / "cluster.toml").data_dir == pathlib.Path("/srv/tidebank")


def test_relative_data_dir_is_relative_to_the_file(tmp_path, topo):
    doc = _doc(topo)
    doc["cluster"]["data_dir"] = "data"
    t = Topology.from_dict(doc, base_dir=tmp_path / "conf")
    assert t.data_dir == tmp_path / "conf" / "data"
    assert t.node_data_dir("dc1-n1") == tmp_path / "conf" / "data" / "dc1-n1"


def test_generated_data_dir_and_addresses(tmp_path, topo):
    assert topo.data_dir == tmp_path.absolute() / "data"
    n = topo.node("dc2-n1")
    assert n.dc == "dc2"
    assert n.grpc_address.startswith("127.0.0.1:")
    assert n.raft_endpoint == ("127.0.0.1", n.raft_port)
    assert len(topo.secret) == 64


def test_generated_ports_are_distinct_and_free(tmp_path):
    topo = generate_local(tmp_path, dcs=5, nodes_per_dc=2, shards=8)
    ports = []
    for n in topo.nodes:
        ports += [n.grpc_port, n.metrics_port, n.raft_port]
    assert len(ports) == len(set(ports)) == 10 * 3
    for p in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))


# ---- queries and placement ---------------------------------------------------------


def test_node_and_shard_lookup_errors_name_what_exists(topo):
    with pytest.raises(KeyError, match="dc1-n1"):
        topo.node("nope")
    with pytest.raises(KeyError, match="no shard 9"):
        topo.shard(9)


def test_shards_on(topo):
    # nodes_per_dc=2: even shards on the n1 nodes, odd shards on the n2 nodes
    assert [s.shard_id for s in topo.shards_on("dc1-n1")] == [0, 2]
    assert [s.shard_id for s in topo.shards_on("dc3-n2")] == [1, 3]


@pytest.mark.parametrize("dcs,nodes_per_dc,shards", [(3, 1, 4), (3, 2, 6), (5, 1, 10), (5, 3, 7)])
def test_placement_one_replica_per_dc_and_preferred_leaders_spread(tmp_path, dcs, nodes_per_dc, shards):
    topo = generate_local(tmp_path, dcs=dcs, nodes_per_dc=nodes_per_dc, shards=shards)
    for s in topo.shards:
        replica_dcs = [topo.node(r).dc for r in s.replicas]
        assert sorted(replica_dcs) == sorted(topo.dcs)
        assert replica_dcs[0] == topo.dcs[s.shard_id % dcs]  # preferred leader's DC rotates
        assert s.preferred_leader == s.replicas[0]
        assert all(r.endswith(f"-n{s.shard_id % nodes_per_dc + 1}") for r in s.replicas)
    preferred_dcs = [topo.node(s.replicas[0]).dc for s in topo.shards]
    counts = [preferred_dcs.count(dc) for dc in topo.dcs]
    assert max(counts) - min(counts) <= 1


@pytest.mark.parametrize("shards,slot_count", [(1, 4096), (4, 4096), (7, 4096), (5, 16), (16, 16)])
def test_slots_partition_exactly(tmp_path, shards, slot_count):
    topo = generate_local(tmp_path, shards=shards, slot_count=slot_count)
    owners = [None] * slot_count
    for s in topo.shards:
        for a, b in s.slots:
            for slot in range(a, b):
                assert owners[slot] is None
                owners[slot] = s.shard_id
    assert None not in owners
    assert [topo.shard_of_slot(i) for i in range(slot_count)] == owners
    sizes = [sum(b - a for a, b in s.slots) for s in topo.shards]
    assert max(sizes) - min(sizes) <= 1
    with pytest.raises(ValueError):
        topo.shard_of_slot(slot_count)


def test_shard_of_slot_with_several_ranges_per_shard(tmp_path, topo):
    doc = _doc(topo)
    doc["cluster"]["slot_count"] = 8
    for s, slots in zip(
        doc["shard"], ([[0, 1], [4, 5]], [[1, 2], [5, 6]], [[2, 3], [6, 7]], [[3, 4], [7, 8]]), strict=True
    ):
        s["slots"] = slots
    t = Topology.from_dict(doc)
    assert [t.shard_of_slot(i) for i in range(8)] == [0, 1, 2, 3, 0, 1, 2, 3]


def test_multi_host_nodes_may_share_port_numbers(topo):
    doc = _doc(topo)
    for i, n in enumerate(doc["node"]):
        n["grpc"] = f"10.0.0.{i + 1}:7100"
        n["raft_host"] = f"10.0.0.{i + 1}"
        n["raft_port"] = 7200
        n["metrics_port"] = 9100
    t = Topology.from_dict(doc)
    assert t.node("dc1-n1").raft_endpoint == ("10.0.0.1", 7200)


def test_generate_rejects_bad_arguments(tmp_path):
    with pytest.raises(TopologyError, match="3 or 5"):
        generate_local(tmp_path, dcs=4)
    with pytest.raises(TopologyError, match="nodes_per_dc"):
        generate_local(tmp_path, nodes_per_dc=0)
    with pytest.raises(TopologyError, match="shards"):
        generate_local(tmp_path, shards=0)


# ---- validation errors -------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(TopologyError, match="no such topology file"):
        Topology.load(tmp_path / "absent.toml")


def test_not_toml(tmp_path):
    with pytest.raises(TopologyError, match="not valid TOML"):
        Topology.load(_write_raw(tmp_path, "[cluster\nname="))


def test_missing_secret(tmp_path, topo):
    doc = _doc(topo)
    del doc["cluster"]["secret"]
    with pytest.raises(TopologyError, match=f"no cluster secret.*{SECRET_ENV}"):
        Topology.from_dict(doc)


def test_missing_cluster_table(topo):
    doc = _doc(topo)
    del doc["cluster"]
    with pytest.raises(TopologyError, match=r"missing \[cluster\]"):
        Topology.from_dict(doc)


def test_missing_node_key_names_the_node(topo):
    doc = _doc(topo)
    del doc["node"][1]["raft_port"]
    with pytest.raises(TopologyError, match="node 'dc1-n2': missing key 'raft_port'"):
        Topology.from_dict(doc)


def test_wrong_type(topo):
    doc = _doc(topo)
    doc["node"][0]["raft_port"] = "7200"
    with pytest.raises(TopologyError, match="raft_port must be an integer"):
        Topology.from_dict(doc)


def test_error_names_the_file(tmp_path, topo):
    path = tmp_path / "cluster.toml"
    topo.dump(path)
    path.write_text(path.read_text().replace('name = "dc1-n2"', 'name = "dc1-n1"'))
    with pytest.raises(TopologyError, match=f"{path}: duplicate node name 'dc1-n1'"):
        Topology.load(path)


def test_duplicate_node_name(topo):
    doc = _doc(topo)
    doc["node"][1]["name"] = doc["node"][0]["name"]
    with pytest.raises(TopologyError, match="duplicate node name"):
        Topology.from_dict(doc)


def test_duplicate_grpc_address(topo):
    doc = _doc(topo)
    doc["node"][1]["grpc"] = doc["node"][0]["grpc"]
    with pytest.raises(TopologyError, match="duplicate gRPC address"):
        Topology.from_dict(doc)


def test_raft_port_colliding_with_another_port(topo):
    doc = _doc(topo)
    grpc_port = int(doc["node"][0]["grpc"].rsplit(":", 1)[1])
    doc["node"][1]["raft_port"] = grpc_port
    with pytest.raises(TopologyError, match=f"port 127.0.0.1:{grpc_port} used twice"):
        Topology.from_dict(doc)


def test_raft_ports_colliding(topo):
    doc = _doc(topo)
    doc["node"][1]["raft_port"] = doc["node"][0]["raft_port"]
    with pytest.raises(TopologyError, match="used twice"):
        Topology.from_dict(doc)


def test_metrics_port_colliding(topo):
    doc = _doc(topo)
    doc["node"][1]["metrics_port"] = doc["node"][0]["metrics_port"]
    with pytest.raises(TopologyError, match="used twice"):
        Topology.from_dict(doc)


def test_bad_grpc_address(topo):
    doc = _doc(topo)
    doc["node"][0]["grpc"] = "localhost"
    with pytest.raises(TopologyError, match="expected HOST:PORT"):
        Topology.from_dict(doc)


def test_node_in_unknown_dc(topo):
    doc = _doc(topo)
    doc["node"][0]["dc"] = "dc9"
    with pytest.raises(TopologyError, match="unknown DC 'dc9'"):
        Topology.from_dict(doc)


@pytest.mark.parametrize("n_dcs", [1, 2, 4, 6])
def test_dc_count_must_be_3_or_5(topo, n_dcs):
    doc = _doc(topo)
    doc["dc"] = [{"name": f"dc{i + 1}"} for i in range(n_dcs)]
    with pytest.raises(TopologyError, match="needs 3 or 5 DCs"):
        Topology.from_dict(doc)


def test_duplicate_dc(topo):
    doc = _doc(topo)
    doc["dc"][2]["name"] = "dc1"
    with pytest.raises(TopologyError, match="duplicate DC name"):
        Topology.from_dict(doc)


def test_shard_with_too_few_replicas(topo):
    doc = _doc(topo)
    doc["shard"][1]["replicas"] = doc["shard"][1]["replicas"][:2]
    with pytest.raises(TopologyError, match="shard 1: 2 replicas, needs one per DC"):
        Topology.from_dict(doc)


def test_shard_with_two_replicas_in_one_dc(topo):
    doc = _doc(topo)
    doc["shard"][0]["replicas"] = ["dc1-n1", "dc1-n2", "dc3-n1"]
    with pytest.raises(TopologyError, match="shard 0: no replica in DC dc2"):
        Topology.from_dict(doc)


def test_shard_with_the_same_node_twice(topo):
    doc = _doc(topo)
    doc["shard"][0]["replicas"] = ["dc1-n1", "dc1-n1", "dc3-n1"]
    with pytest.raises(TopologyError, match="a node holds two replicas"):
        Topology.from_dict(doc)


def test_shard_with_unknown_replica(topo):
    doc = _doc(topo)
    doc["shard"][0]["replicas"][1] = "ghost"
    with pytest.raises(TopologyError, match="unknown replica node 'ghost'"):
        Topology.from_dict(doc)


def test_shard_ids_must_be_0_to_n(topo):
    doc = _doc(topo)
    doc["shard"][3]["id"] = 7
    with pytest.raises(TopologyError, match=r"shard ids must be 0..3"):
        Topology.from_dict(doc)


def test_duplicate_shard_id(topo):
    doc = _doc(topo)
    doc["shard"][3]["id"] = 0
    with pytest.raises(TopologyError, match="duplicate shard id"):
        Topology.from_dict(doc)


def test_slot_gap(topo):
    doc = _doc(topo)
    doc["shard"][1]["slots"] = [[1024, 2000]]
    with pytest.raises(TopologyError, match=r"slots \[2000, 2048\) belong to no shard"):
        Topology.from_dict(doc)


def test_slot_overlap(topo):
    doc = _doc(topo)
    doc["shard"][1]["slots"] = [[1000, 2048]]
    with pytest.raises(TopologyError, match="overlaps"):
        Topology.from_dict(doc)


def test_slots_short_of_slot_count(topo):
    doc = _doc(topo)
    doc["cluster"]["slot_count"] = 8192
    with pytest.raises(TopologyError, match=r"slots \[4096, 8192\) belong to no shard"):
        Topology.from_dict(doc)


def test_slots_past_slot_count(topo):
    doc = _doc(topo)
    doc["cluster"]["slot_count"] = 4000
    with pytest.raises(TopologyError, match="past slot_count 4000"):
        Topology.from_dict(doc)


def test_empty_slot_range(topo):
    doc = _doc(topo)
    doc["shard"][0]["slots"] = [[0, 0], [0, 1024]]
    with pytest.raises(TopologyError, match="empty or reversed"):
        Topology.from_dict(doc)


def test_malformed_slots(topo):
    doc = _doc(topo)
    doc["shard"][0]["slots"] = [[0, 512, 1024]]
    with pytest.raises(TopologyError, match=r"\[start, end\] pairs"):
        Topology.from_dict(doc)


def test_a_shard_may_hold_no_slots_while_others_cover_them_all(topo):
    doc = _doc(topo)
    doc["shard"][0]["slots"] = []
    doc["shard"][1]["slots"] = [[0, 2048]]
    loaded = Topology.from_dict(doc)
    assert loaded.shard(0).slots == ()
    assert {loaded.shard_of_slot(s) for s in range(2048)} == {1}


def test_a_shard_without_slots_survives_a_dump_and_load(tmp_path, topo):
    doc = _doc(topo)
    doc["shard"][0]["slots"] = []
    doc["shard"][1]["slots"] = [[0, 2048]]
    path = tmp_path / "copy.toml"
    Topology.from_dict(doc).dump(path)
    assert Topology.load(path).shard(0).slots == ()


def test_validation_does_not_touch_the_input(topo):
    doc = _doc(topo)
    before = copy.deepcopy(doc)
    Topology.from_dict(doc)
    assert doc == before


# ---- [tls] -------------------------------------------------------------------------


def test_a_topology_without_a_tls_table_is_refused(topo):
    doc = _doc(topo)
    del doc["tls"]
    with pytest.raises(TopologyError, match=r"no \[tls\] table"):
        Topology.from_dict(doc)


def test_plaintext_must_be_asked_for_and_means_no_node_certificates(tmp_path):
    plain = generate_local(tmp_path, plaintext=True)
    path = tmp_path / "cluster.toml"
    plain.dump(path)
    assert "plaintext = true" in path.read_text()
    assert Topology.load(path).node_tls("dc1-n1") is None


def test_plaintext_together_with_certificate_paths_is_refused(topo):
    doc = _doc(topo)
    doc["tls"]["plaintext"] = True
    with pytest.raises(TopologyError, match="choose one"):
        Topology.from_dict(doc)


def test_node_certificate_paths_are_relative_to_the_file_and_name_the_node(tmp_path, topo):
    path = tmp_path / "cluster.toml"
    topo.dump(path)
    assert 'node_cert = "tls/nodes/{node}.pem"' in path.read_text()
    files = Topology.load(path).node_tls("dc2-n1")
    assert files.cert == tmp_path.absolute() / "tls" / "nodes" / "dc2-n1.pem"
    assert files.key == tmp_path.absolute() / "tls" / "nodes" / "dc2-n1.key"
    assert files.ca == tmp_path.absolute() / "tls" / "ca.pem"


# ---- slot ranges ---------------------------------------------------------------------------------------


def test_slot_ranges_are_the_fewest_ranges_holding_exactly_the_slots():
    from tidebank.common.topology import slot_ranges, slots_of

    assert slot_ranges([5, 3, 4, 9, 10, 0]) == ((0, 1), (3, 6), (9, 11))
    assert slots_of(((0, 1), (3, 6))) == [0, 3, 4, 5]
    assert slot_ranges([]) == ()


def test_slots_parse_from_single_slots_and_inclusive_ranges():
    from tidebank.common.topology import parse_slots

    assert parse_slots("7, 100-102,7", 4096) == [7, 100, 101, 102]
    for bad, message in (("5-3", "past"), ("x", "expected N"), ("4096", "out of range"), ("", "no slots"),
                         ("1-", "expected N")):
        with pytest.raises(TopologyError, match=message):
            parse_slots(bad, 4096)


def test_moving_slots_takes_them_from_their_shards_and_bumps_the_version(topo):
    moved = topo.with_slots_moved([0, 1, 1500, 4095], to_shard=2)
    assert moved.shard_map_version == topo.shard_map_version + 1
    assert moved.shard(0).slots == ((2, 1024),)
    assert moved.shard(1).slots == ((1024, 1500), (1501, 2048))
    assert moved.shard(2).slots == ((0, 2), (1500, 1501), (2048, 3072), (4095, 4096))
    assert moved.shard(3).slots == ((3072, 4095),)
    assert [moved.shard_of_slot(s) for s in (0, 1, 2, 1500, 4095)] == [2, 2, 0, 2, 2]


def test_moving_every_slot_of_a_shard_leaves_it_empty_but_valid(topo):
    moved = topo.with_slots_moved(range(0, 1024), to_shard=1)
    assert moved.shard(0).slots == () and moved.shard(1).slots == ((0, 2048),)


def test_moving_no_slots_or_slots_out_of_range_or_to_an_unknown_shard_is_refused(topo):
    with pytest.raises(TopologyError, match="no slots"):
        topo.with_slots_moved([], to_shard=1)
    with pytest.raises(TopologyError, match="out of range"):
        topo.with_slots_moved([4096], to_shard=1)
    with pytest.raises(KeyError, match="no shard 9"):
        topo.with_slots_moved([1], to_shard=9)

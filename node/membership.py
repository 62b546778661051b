"""The node's side of membership changes: which topology is in force, and where a shard's files live.

The operator's side (cluster/membership.py) moves a replica in steps, each a new topology
version pushed to every node (Admin/ApplyTopology) plus, on the shard's leader, one Raft
membership change (Admin/ChangeMembership). A node persists every topology it takes
(``<node data dir>/topology.toml``) and starts from the newer of that and its --config, so a
node restarted in the middle of a move hosts what the move last gave it.
"""

from __future__ import annotations

import logging
import pathlib
import shutil

from tidebank.common.topology import ShardSpec, Topology, TopologyError
from tidebank.node.raft.replica import JOINING, LEAVING, VOTER

log = logging.getLogger(__name__)

PERSISTED_NAME = "topology.toml"
RETIRED_DIR = "retired"
RETIRED_KEPT_MAX = 4  # closed replicas' files kept per node, newest first


def membership_of(shard: ShardSpec, node: str) -> str:
    """VOTER, JOINING or LEAVING: this node's part in the shard (it must hold a replica of it)."""
    if node in shard.replicas:
        return VOTER
    if node in shard.joining:
        return JOINING
    if node in shard.leaving:
        return LEAVING
    raise ValueError(f"node {node} holds no replica of shard {shard.shard_id}")


def raft_peers(topology: Topology) -> dict[str, tuple[str, int]]:
    """Every node's Raft endpoint: a replica move may make any of them a partner of this one."""
    return {n.name: n.raft_endpoint for n in topology.nodes}


def shard_dir(topology: Topology, node: str, shard_id: int) -> pathlib.Path:
    return topology.node_data_dir(node) / f"shard-{shard_id}"


def persisted_path(topology: Topology, node: str) -> pathlib.Path:
    return topology.node_data_dir(node) / PERSISTED_NAME


def persist(topology: Topology, node: str) -> None:
    """Write the topology this node takes next to its data (atomic; mode 0600 as it holds the secret)."""
    topology.dump(persisted_path(topology, node))


def newest_topology(configured: Topology, node: str) -> Topology:
    """The newer of the --config topology and the one this node persisted when it last took one."""
    path = persisted_path(configured, node)
    if not path.exists():
        return configured
    try:
        persisted = Topology.load(path)
    except TopologyError as exc:
        raise SystemExit(f"node {node}: the topology it took last ({path}) is unreadable: {exc}") from None
    if persisted.shard_map_version > configured.shard_map_version:
        log.info("node %s: starting from its persisted topology v%d (--config has v%d)", node,
                 persisted.shard_map_version, configured.shard_map_version)
        return persisted
    return configured


def check_successor(current: Topology, new: Topology, node: str) -> None:
    """A topology may replace this node's only within the same cluster; raises TopologyError otherwise."""
    if new.cluster_name != current.cluster_name:
        raise TopologyError(f"topology of cluster {new.cluster_name!r}, this node is in {current.cluster_name!r}")
    if new.slot_count != current.slot_count:
        raise TopologyError(f"slot_count {new.slot_count} differs from this cluster's {current.slot_count}")
    if new.secret != current.secret:
        raise TopologyError("the cluster secret cannot change through a topology update")
    if node not in new.node_names:
        raise TopologyError(f"the new topology has no node {node}: remove a node only after it is drained and "
                            "stopped")
    old_spec, new_spec = current.node(node), new.node(node)
    if old_spec != new_spec:
        raise TopologyError(f"node {node}'s own addresses or DC cannot change while it runs")


def retire_shard_dir(topology: Topology, node: str, shard_id: int, version: int) -> pathlib.Path:
    """Move a closed replica's files aside: kept, not deleted, until RETIRED_KEPT_MAX newer ones are (each is a
    whole copy of a shard, and the shard's data lives on in the replica that replaced it)."""
    source = shard_dir(topology, node, shard_id)
    retired = topology.node_data_dir(node) / RETIRED_DIR
    target = retired / f"shard-{shard_id}.v{version}"
    if not source.exists():
        return target
    retired.mkdir(parents=True, exist_ok=True)
    source.rename(target)
    kept = sorted(retired.glob("shard-*.v*"), key=_retired_version, reverse=True)
    for old in kept[RETIRED_KEPT_MAX:]:
        shutil.rmtree(old, ignore_errors=True)
        log.info("node %s: removed the oldest retired replica files %s", node, old)
    return target


def _retired_version(path: pathlib.Path) -> int:
    suffix = path.name.rpartition(".v")[2]
    return int(suffix) if suffix.isdigit() else -1


def parse_pushed(text: str, secret: str) -> Topology:
    """A topology sent in Admin/ApplyTopology (TOML without the secret), with this node's secret."""
    import tomllib

    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TopologyError(f"not valid TOML: {exc}") from None
    cluster = doc.get("cluster")
    if not isinstance(cluster, dict):
        raise TopologyError("missing [cluster] table")
    if "secret" in cluster:
        raise TopologyError("a pushed topology must not carry the cluster secret")
    cluster["secret"] = secret
    return Topology.from_dict(doc)

"""`tidebank dc ...`: simulated data-centre network faults, driven through every node's Admin API.

Each node holds its own link fault table (node/links.py: isolated DCs, one-way delays
between DCs), in memory only. A command reads the tables of all nodes, takes the one
most of them hold (a node restarted meanwhile starts with none and is outvoted), computes
the new table and sends it to every node (Admin.SetLinkFaults). Nodes that cannot be
reached are reported: they keep their old table until the next command reaches them.

* ``dc partition DC``: DC is cut off from every other DC, both directions (its own nodes
  and the others drop the traffic). Client traffic is not affected.
* ``dc latency A B MS``: one-way delay of MS ms from A to B and from B to A (a round
  trip between them then takes 2 x MS more); 0 removes it.
* ``dc heal``: no isolation, no delays, everywhere.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc

from tidebank.cluster.launcher import ChannelPool, fetch_shard_map
from tidebank.common.auth import signed
from tidebank.common.topology import SECRET_ENV, Topology
from tidebank.node.links import LinkTable
from tidebank.v1 import admin_pb2


@dataclass(frozen=True)
class NodeTarget:
    name: str
    dc: str
    address: str


def nodes_from_topology(topology: Topology) -> list[NodeTarget]:
    return [NodeTarget(n.name, n.dc, n.grpc_address) for n in topology.nodes]


def nodes_from_shard_map(shard_map: admin_pb2.ShardMap) -> list[NodeTarget]:
    seen: dict[str, NodeTarget] = {}
    for shard in sorted(shard_map.shards, key=lambda s: s.shard_id):
        for r in shard.replicas:
            seen.setdefault(r.node, NodeTarget(r.node, r.dc, r.address))
    return sorted(seen.values(), key=lambda n: (n.dc, n.name))


def discover_nodes(endpoints: Sequence[str], timeout_s: float, pool: ChannelPool) -> list[NodeTarget]:
    """Every node named by the shard map of the first endpoint that answers."""
    return nodes_from_shard_map(fetch_shard_map(endpoints, timeout_s, pool))


@dataclass(frozen=True)
class NodeFaults:
    node: NodeTarget
    table: LinkTable | None  # None: no answer
    error: str = ""

    @property
    def reachable(self) -> bool:
        return self.table is not None


def _error_text(e: grpc.RpcError) -> str:
    code = e.code() if hasattr(e, "code") else None
    if code == grpc.StatusCode.UNAVAILABLE:
        return "unreachable"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return "no answer in time"
    details = e.details() if hasattr(e, "details") else str(e)
    return f"{code.name if code else 'error'}: {details}"


def _each(nodes: Sequence[NodeTarget], call: Callable[[NodeTarget], NodeFaults]) -> list[NodeFaults]:
    if not nodes:
        return []
    with ThreadPoolExecutor(max_workers=min(16, len(nodes))) as ex:
        return list(ex.map(call, nodes))


def fetch_tables(nodes: Sequence[NodeTarget], timeout_s: float, pool: ChannelPool) -> list[NodeFaults]:
    """Every node's current table (GetLinkFaults), in the order given."""

    def ask(node: NodeTarget) -> NodeFaults:
        try:
            reply = pool.admin(node.address).GetLinkFaults(admin_pb2.GetLinkFaultsRequest(), timeout=timeout_s)
        except grpc.RpcError as e:
            return NodeFaults(node, None, _error_text(e))
        return NodeFaults(node, LinkTable.from_proto(reply))

    return _each(nodes, ask)


def send_table(nodes: Sequence[NodeTarget], table: LinkTable, timeout_s: float,
               pool: ChannelPool, secret: str | None = None) -> list[NodeFaults]:
    """SetLinkFaults(table) on every node, signed with the cluster secret; each answer is the table the
    node now holds."""
    message = table.to_proto()
    metadata = signed(secret, "SetLinkFaults", message) if secret else ()

    def send(node: NodeTarget) -> NodeFaults:
        try:
            reply = pool.admin(node.address).SetLinkFaults(message, timeout=timeout_s, metadata=metadata)
        except grpc.RpcError as e:
            return NodeFaults(node, None, _error_text(e))
        return NodeFaults(node, LinkTable.from_proto(reply))

    return _each(nodes, send)


def current_table(answers: Sequence[NodeFaults]) -> LinkTable | None:
    """The table most reachable nodes hold (the first such node's on a tie); None if none answered."""
    tables = [a.table for a in answers if a.table is not None]
    if not tables:
        return None
    counts = Counter(tables)
    best = max(counts.values())
    return next(t for t in tables if counts[t] == best)


def consistent(answers: Sequence[NodeFaults]) -> bool:
    """Whether every reachable node holds the same table."""
    return len({a.table for a in answers if a.table is not None}) <= 1


@dataclass(frozen=True)
class ChangeResult:
    before: LinkTable | None  # None: no node answered, nothing was sent
    after: LinkTable | None
    nodes: list[NodeFaults]

    @property
    def failed(self) -> list[NodeFaults]:
        return [n for n in self.nodes if not n.reachable]

    def to_dict(self) -> dict:
        return {
            "before": self.before.to_dict() if self.before is not None else None,
            "table": self.after.to_dict() if self.after is not None else None,
            "nodes": [{"node": n.node.name, "dc": n.node.dc, "address": n.node.address, "ok": n.reachable,
                       "error": n.error} for n in self.nodes],
            "unreachable": [n.node.name for n in self.failed],
        }


def cluster_secret(topology_secret: str | None = None) -> str | None:
    """The secret that signs fault-injection calls: the topology's, else $TIDEBANK_CLUSTER_SECRET."""
    return topology_secret or os.environ.get(SECRET_ENV) or None


def change_tables(nodes: Sequence[NodeTarget], change: Callable[[LinkTable], LinkTable], timeout_s: float,
                  pool: ChannelPool, secret: str | None = None) -> ChangeResult:
    """Read the current table, apply ``change``, send the result to every node that answered
    the read (a node that did not is reported as failed without a second try)."""
    answers = fetch_tables(nodes, timeout_s, pool)
    before = current_table(answers)
    if before is None:
        return ChangeResult(None, None, answers)
    after = change(before)
    reachable = [a.node for a in answers if a.reachable]
    sent = {r.node.name: r for r in send_table(reachable, after, timeout_s, pool, secret)}
    results = [sent.get(a.node.name, a) for a in answers]
    return ChangeResult(before, after, results)

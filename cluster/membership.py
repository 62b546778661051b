"""Moving replicas between nodes, and adding and draining nodes, while the cluster runs.

A replica move (`tidebank shard move-replica SHARD --from A --to B`) is a sequence of
steps. Each step is one new topology version (written to cluster.toml, then pushed to
every node with Admin/ApplyTopology) or one Raft membership change on the shard's
leader (Admin/ChangeMembership), so that the cluster is consistent after every step and
a move whose driver dies resumes where it stopped when run again:

========  ===========================================================  ====================================
step      what changes                                                 the Raft group
========  ===========================================================  ====================================
stage     B is `joining`: B's node opens an empty replica (it does     A, others (B talks, does not vote)
          not campaign until added and caught up)
add       the leader adds B as a voting member                         A, B, others (4 voters in 3 DCs)
swap      once B has applied what the leader had committed, B takes    unchanged; a leading A hands over
          A's place in `replicas` (same preference); A is `leaving`
          (it campaigns only if no one else is elected)
remove    the leader removes A                                         B, others
finish    A is no longer named: A's node closes its replica and moves  B, others
          its files to retired/
========  ===========================================================  ====================================

B votes from `add` on, before it has caught up (pysyncobj has no learner stage): while it
catches up, the group commits with the three others, so losing one more node then stops
writes until B has caught up. When A's node is dead (it does not answer, and the leader
has heard nothing from it for a while), `add` first evicts A (Admin/ChangeMembership
EVICT): the group is then the two live replicas, and B joins them without ever being
needed for their quorum, so writes go on while B catches up. A driver that dies after the
eviction resumes at `add` (A is no longer a member, so only B is added).

A move keeps one replica per DC (B must be in A's DC), and the group never has fewer voters
than it started with, except after evicting a dead replica: then its live ones, which are
all the group could count on anyway.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc

from tidebank.client._core import rich_details
from tidebank.cluster.launcher import ChannelPool, ClusterError, fetch_node_status
from tidebank.common.auth import signed
from tidebank.common.topology import NodeSpec, ShardSpec, Topology, TopologyError
from tidebank.v1 import admin_pb2

STEPS = ("stage", "add", "swap", "remove", "finish")
POLL_S = 0.2
RPC_TIMEOUT_S = 10.0
MOVE_TIMEOUT_S = 300.0
PUSH_WORKERS = 16  # topology pushes in flight at once
# How long `add` keeps asking to evict a dead source: a leader evicts only after 5 s without an answer from it
# (node/api/admin_service.py EVICT_SILENCE_S); after this the replacement is added first, as for a live source.
EVICT_WAIT_S = 15.0


class MembershipError(ClusterError):
    """A membership change cannot be made (bad request) or did not finish in time (MoveInterrupted)."""


class MoveInterrupted(MembershipError):
    """A step did not finish in time (a node down, no leader, a replica still catching up): nothing is half
    done, and running the same move again resumes it."""


@dataclass
class MoveReport:
    shard_id: int
    source: str
    target: str
    steps_done: list[str] = dataclasses.field(default_factory=list)
    members: list[str] = dataclasses.field(default_factory=list)
    unreached: set[str] = dataclasses.field(default_factory=set)  # nodes that missed a topology push
    evicted: bool = False  # the source's node was dead: its replica left the group before the target joined
    finished: bool = False


@dataclass
class ShardAddReport:
    shard_id: int
    replicas: list[str]
    created: bool  # False: the shard was there already (a rerun of an add whose driver stopped)
    leader: str = ""
    unreached: set[str] = dataclasses.field(default_factory=set)  # nodes that missed the topology push


class Membership:
    """Drives membership changes of one cluster: its topology file, its nodes' Admin services."""

    def __init__(self, topology_path, pool: ChannelPool, *, rpc_timeout_s: float = RPC_TIMEOUT_S,
                 on_step: Callable[[str, Topology], None] | None = None,
                 on_publish: Callable[[Topology], None] | None = None) -> None:
        self.topology_path = topology_path
        self.pool = pool
        self.rpc_timeout_s = rpc_timeout_s
        self.on_step = on_step  # told after each step (CLI progress; tests stop a move there)
        self.on_publish = on_publish  # told each new version once it is in the file (LocalCluster keeps it)
        self.topology = Topology.load(topology_path)

    # ---- topology versions ------------------------------------------------------------------------------

    def publish(self, topology: Topology) -> set[str]:
        """Write the new version to the topology file, then push it to every node; the names of nodes that did
        not take it (down or unreachable: they read the file, or get the next push, when they come back)."""
        topology.dump(self.topology_path)
        self.topology = topology
        if self.on_publish is not None:
            self.on_publish(topology)
        return self.push()

    def push(self, nodes: list[str] | None = None) -> set[str]:
        """Push the file's topology to every node in it (or to `nodes`), all at once (a paused node costs one
        timeout, not one per node); the nodes that did not answer with that version or a newer one."""
        topology = self.topology
        request = admin_pb2.ApplyTopologyRequest(topology_toml=topology.dumps(include_secret=False))
        metadata = signed(topology.secret, "ApplyTopology", request)
        targets = [n for n in topology.nodes if nodes is None or n.name in nodes]

        def send(node) -> tuple[str, int | None, grpc.RpcError | None]:
            try:
                reply = self.pool.admin(node.grpc_address).ApplyTopology(request, timeout=self.rpc_timeout_s,
                                                                         metadata=metadata)
            except grpc.RpcError as exc:
                return node.name, None, exc
            return node.name, reply.shard_map_version, None

        missed = set()
        with ThreadPoolExecutor(max_workers=min(PUSH_WORKERS, max(1, len(targets)))) as pool:
            for name, version, exc in pool.map(send, targets):
                if exc is not None and exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                    raise MembershipError(f"node {name} refused topology v{topology.shard_map_version}: "
                                          f"{exc.details()}")
                if version is None or version < topology.shard_map_version:
                    missed.add(name)
        return missed

    # ---- one replica move -------------------------------------------------------------------------------

    def move_replica(self, shard_id: int, source: str, target: str, *, timeout_s: float = MOVE_TIMEOUT_S,
                     stop_after: str | None = None) -> MoveReport:
        """Move shard `shard_id`'s replica from node `source` to node `target`, resuming a move begun earlier.
        `stop_after` (a step name) stops after that step, as if the driver had died there."""
        if stop_after is not None and stop_after not in STEPS:
            raise ValueError(f"unknown step {stop_after!r} (steps: {', '.join(STEPS)})")
        deadline = time.monotonic() + timeout_s
        report = MoveReport(shard_id, source, target)
        report.unreached |= self.push()  # a driver that died after writing the file may not have pushed it
        while True:
            spec = self._shard(shard_id)
            step = self._next_step(spec, source, target, deadline)
            if step is None:
                report.finished = True
                report.members = self._members(shard_id, deadline)
                return report
            self._do(step, spec, source, target, deadline, report)
            report.steps_done.append(step)
            if self.on_step is not None:
                self.on_step(step, self.topology)
            if step == stop_after:
                return report

    def _shard(self, shard_id: int) -> ShardSpec:
        try:
            return self.topology.shard(shard_id)
        except KeyError as exc:
            raise MembershipError(str(exc.args[0])) from None

    def _next_step(self, spec: ShardSpec, source: str, target: str, deadline: float) -> str | None:
        """Where a move of spec's replica from source to target stands: the next step, None when done."""
        topology = self.topology
        for name in (source, target):
            if name not in topology.node_names:
                raise MembershipError(f"no node {name!r} (nodes: {', '.join(topology.node_names)})")
        if source == target:
            raise MembershipError("--from and --to name the same node")
        if topology.node(source).dc != topology.node(target).dc:
            raise MembershipError(f"{target} is in {topology.node(target).dc}, {source} in "
                                  f"{topology.node(source).dc}: a replica moves within its DC (one per DC)")
        if spec.joining or spec.leaving:
            if spec.joining not in ((), (target,)) or spec.leaving not in ((), (source,)):
                raise MembershipError(f"shard {spec.shard_id} is in another move (joining {list(spec.joining)}, "
                                      f"leaving {list(spec.leaving)}): finish that one first")
        if spec.joining == (target,):
            if source not in spec.replicas:  # pragma: no cover - validate() keeps hosts distinct
                raise MembershipError(f"{source} holds no replica of shard {spec.shard_id}")
            return "swap" if self._is_member(spec.shard_id, target, deadline) else "add"
        if spec.leaving == (source,):
            return "remove" if self._is_member(spec.shard_id, source, deadline) else "finish"
        if target in spec.replicas and source not in spec.hosts:
            return None
        if source not in spec.replicas:
            raise MembershipError(f"{source} holds no replica of shard {spec.shard_id} "
                                  f"(replicas: {', '.join(spec.replicas)})")
        if target in spec.hosts:
            raise MembershipError(f"{target} already holds a replica of shard {spec.shard_id}")
        return "stage"

    def _do(self, step: str, spec: ShardSpec, source: str, target: str, deadline: float,
            report: MoveReport) -> None:
        shard_id = spec.shard_id
        if step == "stage":
            report.unreached |= self.publish(self.topology.with_shard(dataclasses.replace(spec, joining=(target,))))
        elif step == "add":
            report.evicted |= self._evict_if_dead(shard_id, source, deadline)
            # its replica must be open before it votes: a voter that is not there counts against the quorum
            self._wait(lambda: not self.push([target]), deadline,
                       f"{target} did not take topology v{self.topology.shard_map_version}")
            self._change(shard_id, admin_pb2.ChangeMembershipRequest.ADD, target, deadline)
        elif step == "swap":
            self._wait_caught_up(shard_id, target, deadline)
            replicas = tuple(target if r == source else r for r in spec.replicas)
            report.unreached |= self.publish(self.topology.with_shard(
                dataclasses.replace(spec, replicas=replicas, joining=(), leaving=(source,))))
        elif step == "remove":
            self._wait_leader_not(shard_id, source, deadline)
            self._change(shard_id, admin_pb2.ChangeMembershipRequest.REMOVE, source, deadline)
        elif step == "finish":
            report.unreached |= self.publish(self.topology.with_shard(dataclasses.replace(spec, leaving=())))

    # ---- the shard's Raft group, as its nodes report it ---------------------------------------------------

    def _statuses(self, shard_id: int) -> dict[str, admin_pb2.ReplicaStatus]:
        """The shard's replica status on each node hosting it that answers."""
        spec = self._shard(shard_id)
        found = {}
        for name in spec.hosts:
            status = fetch_node_status(self.topology.node(name).grpc_address, self.rpc_timeout_s, self.pool)
            if status is None:
                continue
            for replica in status.replicas:
                if replica.shard_id == shard_id:
                    found[name] = replica
        return found

    def _leader(self, shard_id: int) -> tuple[str, admin_pb2.ReplicaStatus] | None:
        leaders = [(n, r) for n, r in self._statuses(shard_id).items() if r.role == "leader" and r.has_quorum]
        return max(leaders, key=lambda nr: nr[1].term) if leaders else None

    def _is_member(self, shard_id: int, node: str, deadline: float) -> bool:
        """Whether the shard's leader counts `node` as a voting member (waits for a leader)."""
        leader = self._wait(lambda: self._leader(shard_id), deadline, f"shard {shard_id} has no leader")
        return node in leader[1].members

    def _members(self, shard_id: int, deadline: float) -> list[str]:
        leader = self._wait(lambda: self._leader(shard_id), deadline, f"shard {shard_id} has no leader")
        return list(leader[1].members)

    def _answers(self, node: str) -> bool:
        return fetch_node_status(self.topology.node(node).grpc_address, self.rpc_timeout_s, self.pool) is not None

    def _evict_if_dead(self, shard_id: int, source: str, deadline: float) -> bool:
        """Take a dead source's replica out of the group before its replacement joins (True if it was). Only
        while its node does not answer; the leader also checks that it heard nothing from it for a while."""
        give_up = min(deadline, time.monotonic() + EVICT_WAIT_S)
        while self._is_member(shard_id, source, deadline) and not self._answers(source):
            if self._change(shard_id, admin_pb2.ChangeMembershipRequest.EVICT, source, deadline):
                return True
            if time.monotonic() >= give_up:
                return False
            time.sleep(POLL_S)
        return False

    def _change(self, shard_id: int, action: int, node: str, deadline: float) -> bool:
        """Make one membership change on the shard's leader (retrying while that is safe). False only for an
        EVICT the leader refused because `node` still answers it."""
        request = admin_pb2.ChangeMembershipRequest(shard_id=shard_id, action=action, node=node)
        metadata = signed(self.topology.secret, "ChangeMembership", request)
        last = "no leader found"
        while time.monotonic() < deadline:
            leader = self._leader(shard_id)
            if leader is None:
                time.sleep(POLL_S)
                continue
            address = self.topology.node(leader[0]).grpc_address
            if self.push([leader[0]]):  # the leader checks the change against its topology: it must have ours
                last = f"{leader[0]} did not take topology v{self.topology.shard_map_version}"
                time.sleep(POLL_S)
                continue
            try:
                self.pool.admin(address).ChangeMembership(request, timeout=self.rpc_timeout_s, metadata=metadata)
                return True
            except grpc.RpcError as exc:
                info, _, _ = rich_details(exc)
                if info is not None and info.reason == "PARTNER_ANSWERING":
                    return False
                if exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION,
                                  grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
                    raise MembershipError(f"shard {shard_id}: {exc.details()}") from None
                last = f"{leader[0]}: {exc.code().name}: {exc.details()}"
                # not the leader any more, busy with an earlier change, or not committed in time: a retry is safe
                # (the leader answers "already so" for a change that did commit)
                time.sleep(POLL_S)
        raise MoveInterrupted(f"shard {shard_id}: membership change not made in time ({last}); run again to resume")

    def _wait_caught_up(self, shard_id: int, node: str, deadline: float) -> None:
        """Until `node`'s replica has applied at least what the leader had committed when the wait began."""
        leader = self._wait(lambda: self._leader(shard_id), deadline, f"shard {shard_id} has no leader")
        goal = leader[1].commit_index

        def caught_up():
            replica = self._statuses(shard_id).get(node)
            return replica is not None and replica.applied_index >= goal and not replica.apply_error

        self._wait(caught_up, deadline, f"shard {shard_id}: {node} did not catch up to index {goal}")

    def _wait_leader_not(self, shard_id: int, node: str, deadline: float) -> None:
        def elsewhere():
            leader = self._leader(shard_id)
            return leader is not None and leader[0] != node

        self._wait(elsewhere, deadline, f"shard {shard_id}: {node} still leads (it hands over while leaving)")

    @staticmethod
    def _wait(probe: Callable[[], object], deadline: float, what: str):
        while True:
            value = probe()
            if value:
                return value
            if time.monotonic() >= deadline:
                raise MoveInterrupted(f"{what}; run again to resume")
            time.sleep(POLL_S)

    # ---- shards -----------------------------------------------------------------------------------------

    def new_shard_replicas(self) -> tuple[str, ...]:
        """One node per DC for a new shard: in each DC the node holding fewest replicas (then by name); the
        preferred leader in the DC that is preferred by fewest shards, so leaders stay spread over DCs."""
        topology = self.topology
        load = {n.name: len(topology.shards_on(n.name)) for n in topology.nodes}
        chosen = {dc: min((n.name for n in topology.nodes if n.dc == dc), key=lambda n: (load[n], n))
                  for dc in topology.dcs}
        leads = {dc: 0 for dc in topology.dcs}
        for shard in topology.shards:
            leads[topology.node(shard.preferred_leader).dc] += 1
        first = min(topology.dcs, key=lambda dc: (leads[dc], topology.dcs.index(dc)))
        order = [first] + [dc for dc in topology.dcs if dc != first]
        return tuple(chosen[dc] for dc in order)

    def add_shard(self, replicas: tuple[str, ...] | None = None, *, shard_id: int | None = None,
                  timeout_s: float = MOVE_TIMEOUT_S) -> ShardAddReport:
        """Create a new Raft group holding no slots (slots move to it later) and wait until it has a leader.

        With `shard_id` naming a shard that exists, this resumes an add whose driver stopped after publishing:
        it pushes the topology again and waits for the leader (the shard must still hold no slots, and
        `replicas`, if given, must be its replicas). Without it, the next shard id is used."""
        deadline = time.monotonic() + timeout_s
        topology = self.topology
        existing = {s.shard_id: s for s in topology.shards}
        if shard_id is not None and shard_id in existing:
            spec = existing[shard_id]
            if spec.slots:
                raise MembershipError(f"shard {shard_id} exists and holds slots: it is not a new shard")
            if replicas is not None and tuple(replicas) != spec.replicas:
                raise MembershipError(f"shard {shard_id} exists with replicas {', '.join(spec.replicas)}")
            report = ShardAddReport(shard_id, list(spec.replicas), created=False)
            report.unreached |= self.push()
        else:
            new_id = len(existing)
            if shard_id is not None and shard_id != new_id:
                raise MembershipError(f"the next shard id is {new_id}, not {shard_id} (ids go 0..n-1)")
            chosen = tuple(replicas) if replicas is not None else self.new_shard_replicas()
            for name in chosen:
                if name not in topology.node_names:
                    raise MembershipError(f"no node {name!r} (nodes: {', '.join(topology.node_names)})")
            try:
                new = topology.changed(shards=topology.shards + (ShardSpec(new_id, (), chosen),))
            except TopologyError as exc:
                raise MembershipError(str(exc)) from None
            report = ShardAddReport(new_id, list(chosen), created=True)
            report.unreached |= self.publish(new)
            if self.on_step is not None:
                self.on_step("publish", self.topology)
        leader = self._wait(lambda: self._leader(report.shard_id), deadline,
                            f"shard {report.shard_id} has no leader yet (resume with --id {report.shard_id})")
        report.leader = leader[0]
        return report

    # ---- nodes ------------------------------------------------------------------------------------------

    def add_node(self, spec: NodeSpec) -> set[str]:
        """Name a new node in the topology (it holds nothing yet) and tell every node about it."""
        if spec.name in self.topology.node_names:
            existing = self.topology.node(spec.name)
            if existing != spec:
                raise MembershipError(f"node {spec.name} already exists with other addresses or DC")
            return self.push()
        try:
            topology = self.topology.changed(nodes=self.topology.nodes + (spec,))
        except TopologyError as exc:
            raise MembershipError(str(exc)) from None
        return self.publish(topology)

    def drain_plan(self, node: str) -> list[tuple[int, str]]:
        """(shard, target) for every replica on `node`: to the node of the same DC holding fewest replicas."""
        topology = self.topology
        if node not in topology.node_names:
            raise MembershipError(f"no node {node!r}")
        dc = topology.node(node).dc
        others = [n.name for n in topology.nodes if n.dc == dc and n.name != node]
        load = {n: len(topology.shards_on(n)) for n in others}
        plan = []
        for shard in topology.shards_on(node):
            candidates = [n for n in others if n not in shard.hosts]
            if not candidates:
                raise MembershipError(f"cannot drain {node}: no other node in {dc} can take shard "
                                      f"{shard.shard_id}'s replica (add one with `tidebank node add`)")
            target = min(candidates, key=lambda n: (load[n], n))
            load[target] += 1
            plan.append((shard.shard_id, target))
        return plan

    def balance_plan(self) -> list[tuple[int, str, str]]:
        """(shard, from, to) moves that even out replicas per node within each DC (until the fullest and the
        emptiest node of a DC differ by at most one), lowest shard ids first; in order, one at a time."""
        topology = self.topology
        load = {n.name: len(topology.shards_on(n.name)) for n in topology.nodes}
        placed = {s.shard_id: list(s.replicas) for s in topology.shards}
        plan = []
        for dc in topology.dcs:
            names = sorted(n.name for n in topology.nodes if n.dc == dc)
            while len(names) > 1:
                fullest = max(names, key=lambda n: (load[n], n))
                emptiest = min(names, key=lambda n: (load[n], n))
                if load[fullest] - load[emptiest] <= 1:
                    break
                shard_id = min(s for s, replicas in placed.items() if fullest in replicas)
                placed[shard_id] = [emptiest if r == fullest else r for r in placed[shard_id]]
                load[fullest] -= 1
                load[emptiest] += 1
                plan.append((shard_id, fullest, emptiest))
        return plan

    def balance(self, plan: list[tuple[int, str, str]], *, timeout_s: float = MOVE_TIMEOUT_S,
                on_move: Callable[[int, tuple[int, str, str]], None] | None = None) -> list[MoveReport]:
        """Run a balance_plan's moves one after the other (one move at a time in the whole cluster); refused
        while any shard is in another move. `on_move(number, move)` is told before each (CLI progress)."""
        for spec in self.topology.shards:
            if spec.joining or spec.leaving:
                raise MembershipError(f"shard {spec.shard_id} is in a move (joining {list(spec.joining)}, leaving "
                                      f"{list(spec.leaving)}): finish it with `tidebank shard move-replica` first")
        reports = []
        for number, (shard_id, source, target) in enumerate(plan, 1):
            if on_move is not None:
                on_move(number, (shard_id, source, target))
            reports.append(self.move_replica(shard_id, source, target, timeout_s=timeout_s))
        return reports

    def remove_node(self, node: str, stop_node: Callable[[str], None], *,
                    timeout_s: float = MOVE_TIMEOUT_S) -> list[MoveReport]:
        """Drain `node` (move each of its replicas to another node of its DC), stop it, and take it out of the
        topology. Resumable like a move."""
        reports = [self.move_replica(shard_id, node, target, timeout_s=timeout_s)
                   for shard_id, target in self.drain_plan(node)]
        if node in self.topology.node_names:
            stop_node(node)
            self.publish(self.topology.changed(nodes=tuple(n for n in self.topology.nodes if n.name != node)))
        return reports


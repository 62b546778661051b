"""Membership changes for the bank test: spare nodes join, then replicas move back and forth between the two
nodes of a DC while the bank's workload and nemesis run. A move a fault interrupts is resumed, as an operator
re-runs `tidebank shard move-replica`; after the faults heal every move is finished, then the checker runs."""

from __future__ import annotations

import random
import threading
import time

import grpc

from tidebank.cluster.launcher import ClusterError, LocalCluster
from tidebank.cluster.membership import MembershipError, MoveInterrupted

SPARE_DCS = ("dc1", "dc2")  # each gets a second node; replicas of shards move between a DC's two nodes
ATTEMPT_TIMEOUT_S = 8.0  # one try at a move; a move that needs longer (a fault) is resumed by the next try
RPC_TIMEOUT_S = 2.0  # a paused node must not hold a try up for long
FINISH_TIMEOUT_S = 60.0


class ReplicaMover:
    def __init__(self, cluster: LocalCluster, seed: int, stop: threading.Event) -> None:
        self.cluster = cluster
        self.rng = random.Random(seed ^ 0x6D6F7665)
        self.stop = stop
        self.log: list[str] = []  # what was done, for the test's output
        self.moves_done = 0
        self.attempts = 0
        self.current: tuple[int, str, str] | None = None  # the move under way (shard, from, to)
        self.error: BaseException | None = None  # what stopped the mover's thread, if anything did
        self.membership = cluster.membership(rpc_timeout_s=RPC_TIMEOUT_S)

    def run(self, started: float) -> None:
        """Add the spare nodes, then move one replica after another until stopped."""
        try:
            self._run(started)
        except BaseException as exc:  # the test reports it: a thread's exception would go unseen
            self.error = exc

    def _run(self, started: float) -> None:
        for dc in SPARE_DCS:
            name = f"{dc}-n2"
            if name not in self.cluster.topology.node_names:
                self.membership.add_node(self.cluster.new_node_spec(name, dc))
                self.cluster.start([name])
                self.log.append(f"{time.monotonic() - started:5.1f}s node add {name}")
        while not self.stop.is_set():
            if self.current is None:
                self.current = self._next_move()
            if self._attempt(ATTEMPT_TIMEOUT_S):
                shard, source, target = self.current
                self.log.append(f"{time.monotonic() - started:5.1f}s moved shard {shard} {source} -> {target}")
                self.moves_done += 1
                self.current = None
                self.stop.wait(self.rng.uniform(0.5, 2.0))

    def finish(self) -> None:
        """After the faults healed: finish the move under way (it must not stay half done)."""
        deadline = time.monotonic() + FINISH_TIMEOUT_S
        while self.current is not None:
            if self._attempt(max(1.0, deadline - time.monotonic())):
                self.moves_done += 1
                self.current = None
            elif time.monotonic() >= deadline:
                raise AssertionError(f"move {self.current} not finished {FINISH_TIMEOUT_S} s after healing")

    def _next_move(self) -> tuple[int, str, str]:
        topology = self.membership.topology
        dc = self.rng.choice(SPARE_DCS)
        shard = self.rng.choice(topology.shards)
        source = next(r for r in shard.replicas if topology.node(r).dc == dc)
        target = f"{dc}-n2" if source == f"{dc}-n1" else f"{dc}-n1"
        return shard.shard_id, source, target

    def _attempt(self, timeout_s: float) -> bool:
        self.attempts += 1
        shard, source, target = self.current
        try:
            return self.membership.move_replica(shard, source, target, timeout_s=timeout_s).finished
        except (MoveInterrupted, grpc.RpcError, TimeoutError):
            return False  # interrupted by a fault: the next attempt resumes
        except MembershipError:
            raise  # a refusal, not an interruption: a bug in the plan or the driver
        except ClusterError:
            return False  # the launcher's view of a node in a fault (e.g. a node not answering)

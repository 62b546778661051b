"""The storage node process: one replica per shard placed here, one gRPC server.

`python -m tidebank.node --config cluster.toml --node NAME` runs it until SIGTERM.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tidebank.common.tls import (
    RevocationList,
    TlsError,
    TlsFiles,
    channel_credentials,
    revoked_path,
    server_credentials,
)
from tidebank.common.topology import NodeSpec, ShardSpec, Topology
from tidebank.node import membership, metrics
from tidebank.node.api.admin_log import AdminLog
from tidebank.node.api.admin_service import AdminService
from tidebank.node.api.clearing_service import ClearingService
from tidebank.node.api.escrow_service import EscrowService
from tidebank.node.api.gate import Gate
from tidebank.node.api.handlers import generic_handlers
from tidebank.node.api.internal_service import InternalService
from tidebank.node.api.ledger_service import LedgerService
from tidebank.node.api.ownership import Owners
from tidebank.node.api.quotas import Quotas
from tidebank.node.api.routing import ShardMap
from tidebank.node.executor import NodeView, ShardExecutor
from tidebank.node.links import LinkFaults, LinkPolicy, intercepted_channel
from tidebank.node.raft.loop import RaftHost
from tidebank.node.raft.placement import PlacementTuning
from tidebank.node.raft.replica import RaftTuning
from tidebank.node.shard import ShardHost
from tidebank.node.txn.clearing_coordinator import ClearingCoordinator, ClearingTimers
from tidebank.node.txn.coordinator import Coordinator
from tidebank.node.txn.escrow_coordinator import EscrowCoordinator, EscrowTimers
from tidebank.node.txn.sweeper import Sweeper
from tidebank.v1 import admin_pb2, escrow_pb2_grpc, internal_pb2_grpc, ledger_pb2_grpc

log = logging.getLogger("tidebank.node")

GRPC_WORKERS = 64
GRPC_CONCURRENT_RPCS_MAX = 1024
GRPC_MESSAGE_BYTES_MAX = 64 * 1024 * 1024
GRPC_OPTIONS = [
    ("grpc.so_reuseport", 0),  # a port clash must fail loudly (grpc would otherwise let two servers share it)
    ("grpc.max_receive_message_length", GRPC_MESSAGE_BYTES_MAX),
    ("grpc.max_send_message_length", GRPC_MESSAGE_BYTES_MAX),
]
PULSE_PERIOD_S = 0.5
SWITCH_INTERVAL_S = 0.0005
COORDINATOR_WORKERS = 256  # cross-shard groups coordinated at once; each waits on Raft, not CPU


def placement_from_env() -> PlacementTuning | None:
    """Leaders hand over to their shard's preferred replica only with TIDEBANK_LEADER_HANDOVER=1: on one box
    (no DC locality to gain) spreading leaders cost 0.81-0.86x single-caller throughput in alternated runs
    (bench/RESULTS.md), so it is opt-in until that is understood."""
    return PlacementTuning() if os.environ.get("TIDEBANK_LEADER_HANDOVER", "0") == "1" else None


def raft_tuning_from_env() -> tuple[RaftTuning, bool]:
    """Operator and test knobs: (Raft tuning, whether the journal fdatasyncs)."""
    env = os.environ
    tuning = RaftTuning(
        log_compaction_min_entries=int(env.get("TIDEBANK_RAFT_LOG_COMPACTION_MIN_ENTRIES", 5000)),
        log_compaction_min_time=float(env.get("TIDEBANK_RAFT_LOG_COMPACTION_MIN_TIME_S", 300.0)),
    )
    return tuning, env.get("TIDEBANK_RAFT_FSYNC", "1") != "0"


class Node(NodeView):
    """The shards hosted here plus what is needed to reach the other nodes."""

    def __init__(self, topology: Topology, node_name: str, tls: TlsFiles | None = None):
        self.topology = topology
        self.spec: NodeSpec = topology.node(node_name)
        self.admin_log: AdminLog | None = None  # set by serve()
        self.tls = tls  # this node's certificate: it serves with it and calls other nodes with it (mutual TLS)
        self.shard_map = ShardMap(topology.shard_map_version, topology.slot_count,
                                  {s.shard_id: s.slots for s in topology.shards})
        self.link_faults = LinkFaults()  # simulated inter-DC faults (links.py); in memory: none after a restart
        # Looked up by name and address; updated in place when a newer topology arrives (apply_topology).
        self._dc_by_address = {n.grpc_address: n.dc for n in topology.nodes}
        self._dc_by_name = {n.name: n.dc for n in topology.nodes}
        links = LinkPolicy(self.spec.dc, self._dc_by_name.get, self.link_faults)
        self._node_by_address = {spec.grpc_address: spec for spec in topology.nodes}
        self._node_by_name = {spec.name: spec for spec in topology.nodes}
        self._channels: dict[str, grpc.Channel] = {}
        self._stubs: dict[tuple[str, str], object] = {}
        self._channels_lock = threading.Lock()
        self._topology_lock = threading.Lock()
        self._leader_hints: dict[int, str] = {}  # shard hosted elsewhere -> its leader's address, as last told
        self._rotation = 0  # which replica of a shard hosted elsewhere forward_address names next
        self.shards: dict[int, ShardHost] = {}  # replaced, never mutated: other threads read it unlocked
        self._tuning, self._fsync = raft_tuning_from_env()
        self._placement = placement_from_env()
        if not self._fsync:
            log.warning("TIDEBANK_RAFT_FSYNC=0: acknowledged writes do not survive power loss")
        # Raft connections to every node of the cluster: a replica move may make any of them a partner.
        self.raft = RaftHost(node_name, self.spec.raft_endpoint, membership.raft_peers(topology), topology.secret,
                             links=links, observer=metrics.RAFT_SYNC_SECONDS)
        self.raft.start()
        self.apply_errors: dict[int, str] = {}
        for shard in topology.shards_on(node_name):
            self.shards = {**self.shards, shard.shard_id: self._open_shard(shard)}
        for shard_id in self.shards:  # 0 from the start, so a dashboard tells "fine" from "not reported"
            metrics.APPLY_STOPPED.labels(shard=str(shard_id)).set(1 if shard_id in self.apply_errors else 0)
        self.executor = ShardExecutor(self, topology.secret)
        self.coordinator = Coordinator(self, self.executor)
        self.coordinator_pool = ThreadPoolExecutor(max_workers=COORDINATOR_WORKERS, thread_name_prefix="coordinator")
        self.sweeper: Sweeper | None = Sweeper(self, self.coordinator)
        self.escrow = EscrowCoordinator(self, self.coordinator, topology.slot_count)
        self.escrow_timers: EscrowTimers | None = EscrowTimers(self, self.escrow)
        self.clearing = ClearingCoordinator(self, self.executor)
        self.clearing_timers: ClearingTimers | None = ClearingTimers(self, self.clearing, topology.clearing_cycle_s)
        self._stopping = threading.Event()
        self._pulse = threading.Thread(target=self._pulse_loop, name="expiry-pulse", daemon=True)
        self._pulse.start()

    def _open_shard(self, shard: ShardSpec) -> ShardHost:
        return ShardHost(
            shard_id=shard.shard_id,
            host=self.raft,
            members=list(shard.hosts),
            data_dir=membership.shard_dir(self.topology, self.spec.name, shard.shard_id),
            raft=self._tuning,
            fsync=self._fsync,
            slot_count=self.topology.slot_count,
            on_apply_stopped=self._on_apply_stopped,
            preferred_leader=shard.preferred_leader,
            placement=self._placement,
            membership=membership.membership_of(shard, self.spec.name),
        )

    # --- membership (node/membership.py) -----------------------------------------------------------------
    def apply_topology(self, topology: Topology) -> int:
        """Take a newer topology (Admin/ApplyTopology): persist it, learn new nodes, open the replicas it gives
        this node, set each one's membership, close (and retire the files of) those it no longer gives it.
        An older or equal version changes nothing. Returns the version in force."""
        with self._topology_lock:
            current = self.topology
            if topology.shard_map_version <= current.shard_map_version:
                return current.shard_map_version
            membership.check_successor(current, topology, self.spec.name)
            membership.persist(topology, self.spec.name)
            for spec in topology.nodes:
                self._dc_by_address[spec.grpc_address] = spec.dc
                self._dc_by_name[spec.name] = spec.dc
                self._node_by_address[spec.grpc_address] = spec
                self._node_by_name[spec.name] = spec
            self.raft.set_peers(membership.raft_peers(topology))
            self.topology = topology
            self.shard_map = ShardMap(topology.shard_map_version, topology.slot_count,
                                      {s.shard_id: s.slots for s in topology.shards})
            wanted = {s.shard_id: s for s in topology.shards_on(self.spec.name)}
            for shard_id, spec in wanted.items():
                host = self.shards.get(shard_id)
                if host is None:
                    log.info("shard %d: opening a %s replica here (topology v%d)", shard_id,
                             membership.membership_of(spec, self.spec.name), topology.shard_map_version)
                    self.shards = {**self.shards, shard_id: self._open_shard(spec)}
                else:
                    host.set_membership(membership.membership_of(spec, self.spec.name))
            for shard_id in [s for s in self.shards if s not in wanted]:
                host = self.shards[shard_id]
                self.shards = {k: v for k, v in self.shards.items() if k != shard_id}
                host.close()
                retired = membership.retire_shard_dir(current, self.spec.name, shard_id, topology.shard_map_version)
                log.info("shard %d: replica here closed (topology v%d); its files are in %s", shard_id,
                         topology.shard_map_version, retired)
            return topology.shard_map_version

    def _on_apply_stopped(self, shard_id: int, reason: str) -> None:
        """A replica stopped applying on a storage error (loop thread): counted, shown in status and health."""
        self.apply_errors[shard_id] = reason
        metrics.APPLY_STOPPED.labels(shard=str(shard_id)).set(1)
        health_setter = getattr(self, "set_health", None)
        if health_setter is not None:
            health_setter(False)

    # --- NodeView ---------------------------------------------------------------------------------------
    @property
    def address(self) -> str:
        return self.spec.grpc_address

    def local_shard(self, shard_id: int) -> ShardHost | None:
        return self.shards.get(shard_id)

    def leader_spec(self, shard_id: int) -> NodeSpec | None:
        """The shard's leader as this node's replica sees it or, for a shard hosted elsewhere, as a node that
        hosts it last said (note_leader)."""
        host = self.shards.get(shard_id)
        if host is None:
            address = self._leader_hints.get(shard_id)
            return self._node_by_address.get(address) if address else None
        name = host.leader_node()
        return self._node_by_name.get(name) if name else None

    def forward_address(self, shard_id: int) -> str | None:
        address = self.leader_address(shard_id)
        if address is not None or shard_id in self.shards:
            return address
        addresses = self.replica_addresses(shard_id)
        if not addresses:
            return None
        self._rotation += 1
        return addresses[self._rotation % len(addresses)]

    def note_leader(self, shard_id: int, address: str | None) -> None:
        if shard_id in self.shards:
            return
        if address is None or address not in self._node_by_address:
            self._leader_hints.pop(shard_id, None)
        else:
            self._leader_hints[shard_id] = address

    def leader_address(self, shard_id: int) -> str | None:
        spec = self.leader_spec(shard_id)
        return spec.grpc_address if spec else None

    def replica_addresses(self, shard_id: int) -> list[str]:
        topology = self.topology
        return [topology.node(name).grpc_address for name in topology.shard(shard_id).hosts]

    def _channel(self, address: str) -> grpc.Channel:
        """One channel per peer node, shared by every stub (node-to-node traffic: forwarding and 2PC)."""
        with self._channels_lock:
            channel = self._channels.get(address)
            if channel is None:
                credentials = channel_credentials(self.tls) if self.tls is not None else None
                channel = intercepted_channel(address, self._dc_by_address.get(address), self.spec.dc,
                                              self.link_faults, GRPC_OPTIONS[1:], credentials)
                self._channels[address] = channel
            return channel

    def reachable(self, address: str) -> bool:
        spec = self._node_by_address.get(address)
        return spec is None or not self.link_faults.is_cut(self.spec.dc, spec.dc)

    def ledger_stub(self, address: str) -> ledger_pb2_grpc.LedgerStub:
        stub = self._stubs.get(("ledger", address))
        if stub is None:
            stub = self._stubs[("ledger", address)] = ledger_pb2_grpc.LedgerStub(self._channel(address))
        return stub

    def escrow_stub(self, address: str) -> escrow_pb2_grpc.EscrowStub:
        stub = self._stubs.get(("escrow", address))
        if stub is None:
            stub = self._stubs[("escrow", address)] = escrow_pb2_grpc.EscrowStub(self._channel(address))
        return stub

    def internal_stub(self, address: str) -> internal_pb2_grpc.InternalStub:
        stub = self._stubs.get(("internal", address))
        if stub is None:
            stub = self._stubs[("internal", address)] = internal_pb2_grpc.InternalStub(self._channel(address))
        return stub

    # --- admin ------------------------------------------------------------------------------------------
    def node_status(self) -> admin_pb2.NodeStatus:
        status = admin_pb2.NodeStatus(node=self.spec.name, dc=self.spec.dc, address=self.spec.grpc_address,
                                      shard_map_version=self.shard_map.version)
        for shard_id, host in sorted(self.shards.items()):
            s = host.status()
            leader = self.leader_spec(shard_id)
            status.replicas.add(shard_id=shard_id, role=s["role"], term=s["term"], commit_index=s["commit_index"],
                                applied_index=s["applied_index"], leader_node=leader.name if leader else "",
                                has_quorum=bool(s.get("has_quorum")), log_size=s.get("log_size", 0),
                                apply_error=s.get("apply_error", ""), members=s.get("members", ()),
                                membership=s.get("membership", ""), items_applied=host.items_applied,
                                **_record_counts(host))
        return status

    def shard_map_message(self) -> admin_pb2.ShardMap:
        topology = self.topology
        message = admin_pb2.ShardMap(version=topology.shard_map_version, slot_count=topology.slot_count)
        for shard in topology.shards:
            leader = self.leader_spec(shard.shard_id)
            entry = message.shards.add(shard_id=shard.shard_id, leader_node=leader.name if leader else "")
            for start, end in shard.slots:
                entry.slots.add(start=start, end=end)
            for name in shard.hosts:
                spec = topology.node(name)
                entry.replicas.add(node=spec.name, dc=spec.dc, address=spec.grpc_address,
                                   membership=membership.membership_of(shard, name))
        return message

    # --- expiry pulse -----------------------------------------------------------------------------------
    def _pulse_loop(self) -> None:
        """Pending transfers expire inside apply, on cluster time; a leader with nothing to write
        proposes an empty entry when a timeout is due so expiry does not wait for traffic."""
        while not self._stopping.wait(PULSE_PERIOD_S):
            if self.admin_log is not None:
                try:
                    self.admin_log.sync()  # refusals are fsync'ed here, not one by one
                except OSError:
                    log.exception("admin log: fsync failed")
            for host in list(self.shards.values()):
                try:
                    if host.is_leader() and host.expiry_due():
                        host.barrier()
                except Exception:
                    log.exception("shard %d: expiry pulse failed", host.shard_id)

    def close(self) -> None:
        self._stopping.set()
        if self.escrow_timers is not None:
            self.escrow_timers.close()
        if self.clearing_timers is not None:
            self.clearing_timers.close()
        if self.sweeper is not None:
            self.sweeper.close()
        self.coordinator_pool.shutdown(wait=False, cancel_futures=True)
        self.executor.close()
        for host in self.shards.values():
            host.close()
        self.raft.close()
        with self._channels_lock:
            for channel in self._channels.values():
                channel.close()


def _record_counts(host: ShardHost) -> dict[str, int]:
    """A replica's record counts for its status; none while it cannot be read (installing a snapshot, closed)."""
    try:
        return host.record_counts()
    except Exception:  # noqa: BLE001 - status must answer whatever state the replica is in
        return {}


def serve(topology: Topology, node_name: str, stop: threading.Event, tls: TlsFiles | None = None) -> None:
    tls = tls or topology.node_tls(node_name)
    credentials = None
    if tls is not None:
        try:
            credentials = server_credentials(tls)  # read before anything starts: a bad file is a clear exit
        except TlsError as e:
            raise SystemExit(f"node {node_name}: {e}") from None
    else:
        log.warning("!" * 72)
        log.warning("node %s serves PLAINTEXT ([tls] plaintext = true): anyone who can reach %s can read "
                    "and move every account's money; never run a real ledger like this", node_name,
                    topology.node(node_name).grpc_address)
        log.warning("!" * 72)
    node = Node(topology, node_name, tls)
    server = grpc.server(ThreadPoolExecutor(max_workers=GRPC_WORKERS, thread_name_prefix="grpc"),
                         options=GRPC_OPTIONS, maximum_concurrent_rpcs=GRPC_CONCURRENT_RPCS_MAX)
    owners = Owners(node, node.executor)  # one cache of whose accounts are whose, for both servicers
    ledger = metrics.instrument(LedgerService(node, node.executor, node.coordinator, node.coordinator_pool, owners))
    escrow = metrics.instrument(EscrowService(node, node.executor, node.escrow, node.coordinator_pool, owners),
                                metrics.ESCROW_BATCH_FIELDS)
    admin_log = AdminLog(topology.node_data_dir(node_name), node_name)
    node.admin_log = admin_log
    admin = AdminService(node.node_status, node.shard_map_message, node=node, link_faults=node.link_faults,
                         dcs=topology.dcs, admin_log=admin_log)
    quotas = Quotas(items_per_s=topology.quotas.items_per_s, burst_items=topology.quotas.burst_items,
                    calls_in_flight=topology.quotas.calls_in_flight,
                    on_refused=lambda _principal, limit: metrics.QUOTA_REFUSED.labels(limit).inc())
    gate = Gate(admin_log, quotas, on_denied=lambda permission: metrics.PERMISSION_DENIED.labels(permission).inc(),
                revocations=RevocationList(revoked_path(tls.ca)) if tls is not None else None)
    internal = InternalService(node, node.coordinator, topology.secret)
    clearing = metrics.instrument(ClearingService(node, node.clearing), metrics.CLEARING_BATCH_FIELDS)
    for handler in generic_handlers(ledger, admin, internal, admin_secret=topology.secret, escrow=escrow,
                                    clearing=clearing, gate=gate):
        server.add_generic_rpc_handlers((handler,))
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    service_names = ("tidebank.v1.Ledger", "tidebank.v1.Escrow", "tidebank.v1.Clearing", "tidebank.v1.Admin")
    reflection.enable_server_reflection(
        (*service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server)
    bound = (server.add_secure_port(node.spec.grpc_address, credentials) if credentials is not None
             else server.add_insecure_port(node.spec.grpc_address))
    if bound == 0:
        node.close()
        raise SystemExit(f"cannot listen on {node.spec.grpc_address}")
    server.start()
    def set_health(serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *service_names):
            health_servicer.set(name, status)

    node.set_health = set_health
    set_health(not node.apply_errors)
    metrics.start(node, node.spec)
    log.info("node %s (%s) serving on %s with shards %s", node.spec.name, node.spec.dc, node.spec.grpc_address,
             sorted(node.shards))
    try:
        while not stop.wait(0.5):  # wake up so the main thread runs Python signal handlers promptly
            pass
    finally:
        log.info("node %s stopping", node.spec.name)
        health_servicer.enter_graceful_shutdown()
        server.stop(grace=2).wait(5)
        node.close()
        admin_log.close()


def main(config_path: str, node_name: str, tls: TlsFiles | None = None) -> int:
    # A thread woken by the Raft loop (a commit, a read confirmed) waits for the GIL up to the switch interval
    # (5 ms by default) while another thread runs Python: that alone was most of a single write's latency.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pysyncobj").setLevel(logging.WARNING)
    topology = membership.newest_topology(Topology.load(config_path), node_name)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    started = time.monotonic()
    serve(topology, node_name, stop, tls)
    log.info("node %s stopped after %.1f s", node_name, time.monotonic() - started)
    return 0

"""Run a multi-DC tidebank cluster on one machine, and look at any cluster's health.

`LocalCluster` owns a folder::

    DIR/cluster.toml      the topology (Topology.dump)
    DIR/data/NODE/        each node's data
    DIR/logs/NODE.log     each node's stdout and stderr (appended across restarts)
    DIR/pids/NODE.pid     the pid of each running node
    DIR/tls/              the cluster CA, each node's certificate, each principal's (tidebank.common.tls)

Nodes run detached (their own session), so a cluster outlives the command that
started it; `LocalCluster.open(DIR).stop()` ends it from anywhere. Integration
tests use it as a context manager, which stops every node on exit.

The status functions (`collect_status`, `fetch_shard_map`) only need gRPC
endpoints, so they work against remote clusters too.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import grpc

from tidebank.common import tls as tls_files
from tidebank.common.tls import ClientTls, Plaintext, TlsError, TlsFiles
from tidebank.common.topology import (
    NodeSpec,
    PortPicker,
    QuotaConfig,
    Topology,
    TopologyError,
    generate_local,
    join_address,
    split_address,
)
from tidebank.v1 import admin_pb2, admin_pb2_grpc

CONFIG_NAME = "cluster.toml"
LOG_TAIL_LINES = 25
POLL_INTERVAL_S = 0.2

_CHANNEL_OPTIONS = [
    # A restarted node must be seen again within a poll or two, not after gRPC's
    # default reconnect backoff (up to two minutes).
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


ADMIN_PRINCIPAL = "admin"  # the operator's own principal, made with the cluster
ADMIN_ROLES = ("admin", "operator", "auditor", "platform")


class ClusterError(RuntimeError):
    """A local cluster could not be started, stopped or reached as asked."""


class NodeExitedError(ClusterError):
    """A node process that should be running has exited."""

    def __init__(self, node: str, detail: str, log_tail: str):
        self.node = node
        self.log_tail = log_tail
        super().__init__(f"node {node} {detail}" + (f"; last lines of its log:\n{log_tail}" if log_tail else ""))


class NoReachableNode(ClusterError):
    """None of the given endpoints answered."""


# ---- gRPC helpers ------------------------------------------------------------------


_default_tls: ClientTls | None = None


def set_default_tls(tls: ClientTls | None) -> None:
    """The credentials a ChannelPool made without any uses (the CLI sets them from --dir once)."""
    global _default_tls
    _default_tls = tls


def default_tls() -> ClientTls:
    """The credentials to call a cluster with when none are given: set_default_tls, else the environment
    (TIDEBANK_CA/CERT/KEY or TIDEBANK_PLAINTEXT=1); an error naming both when neither says."""
    tls = _default_tls or tls_files.client_tls_from_env()
    if tls is None:
        raise TlsError(f"no client certificate: give --dir of a local cluster, or set {tls_files.CA_ENV}, "
                       f"{tls_files.CERT_ENV} and {tls_files.KEY_ENV} (or {tls_files.PLAINTEXT_ENV}=1 "
                       "for a plaintext cluster)")
    return tls


class ChannelPool:
    """One gRPC channel per address, reused across polls; thread-safe."""

    def __init__(self, tls: ClientTls | None = None) -> None:
        self._channels: dict[str, grpc.Channel] = {}
        self._lock = threading.Lock()
        self._tls = tls

    def channel(self, address: str) -> grpc.Channel:
        with self._lock:
            channel = self._channels.get(address)
            if channel is None:
                if self._tls is None:
                    self._tls = default_tls()
                channel = self._channels[address] = tls_files.open_channel(address, self._tls, _CHANNEL_OPTIONS)
        return channel

    def admin(self, address: str) -> admin_pb2_grpc.AdminStub:
        return admin_pb2_grpc.AdminStub(self.channel(address))

    def close(self) -> None:
        with self._lock:
            channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            channel.close()

    def __enter__(self) -> ChannelPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def fetch_node_status(
    address: str, timeout_s: float = 2.0, pool: ChannelPool | None = None
) -> admin_pb2.NodeStatus | None:
    """The node's GetNodeStatus answer, or None if it does not answer in time."""
    own = pool is None
    pool = pool or ChannelPool()
    try:
        return pool.admin(address).GetNodeStatus(admin_pb2.GetNodeStatusRequest(), timeout=timeout_s)
    except grpc.RpcError:
        return None
    finally:
        if own:
            pool.close()


def fetch_shard_map(
    endpoints: Sequence[str], timeout_s: float = 2.0, pool: ChannelPool | None = None
) -> admin_pb2.ShardMap:
    """The shard map from the first endpoint that answers; NoReachableNode if none does."""
    own = pool is None
    pool = pool or ChannelPool()
    errors = []
    try:
        for address in endpoints:
            try:
                return pool.admin(address).GetShardMap(admin_pb2.GetShardMapRequest(), timeout=timeout_s)
            except grpc.RpcError as e:
                errors.append(f"{address}: {_rpc_error_text(e)}")
    finally:
        if own:
            pool.close()
    raise NoReachableNode("no node answered (" + "; ".join(errors) + ")" if errors else "no endpoints given")


def _rpc_error_text(e: grpc.RpcError) -> str:
    code = e.code() if hasattr(e, "code") else None
    if code == grpc.StatusCode.UNAVAILABLE:
        return "unreachable"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return "no answer in time"
    details = e.details() if hasattr(e, "details") else str(e)
    return f"{code.name if code else 'error'}: {details}"


# ---- status ------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplicaTarget:
    """Where a shard replica should be: from a topology or a shard map."""

    shard: int
    node: str
    dc: str
    address: str


@dataclass(frozen=True)
class ReplicaRow:
    """One shard replica as its node reports it."""

    node: str
    dc: str
    address: str
    shard: int
    role: str  # leader | follower | candidate; "down" if the node did not answer,
    # "absent" if it answered without this replica
    term: int | None = None
    commit_index: int | None = None
    applied_index: int | None = None
    lag: int | None = None  # max commit_index over the shard's replicas minus applied_index
    reachable: bool = False
    leader_node: str = ""
    has_quorum: bool = False
    apply_error: str = ""  # non-empty: its apply loop stopped on this storage or resource error
    membership: str = ""  # voter | joining | leaving (a replica move in progress); "" if it did not answer

    @property
    def degraded(self) -> bool:
        """It answers but cannot apply: it neither campaigns nor leads until fixed and restarted,
        so the shard has one replica fewer to fail over to."""
        return bool(self.apply_error)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class StatusReport:
    rows: list[ReplicaRow]
    problems: list[str]  # what is wrong with a shard as a whole; empty when every shard is fine
    nodes_total: int
    nodes_reachable: int

    @property
    def degraded(self) -> list[ReplicaRow]:
        """The replicas that answer but cannot apply."""
        return [r for r in self.rows if r.degraded]

    @property
    def verdict(self) -> str:
        """The overall judgement: unhealthy when a shard has a problem, else degraded when a
        replica cannot apply (a replica that stopped applying must not pass for healthy), else healthy."""
        if self.problems:
            return "unhealthy"
        return "degraded" if self.degraded else "healthy"

    @property
    def healthy(self) -> bool:
        return self.verdict == "healthy"

    @property
    def moves(self) -> list[dict]:
        """Replica moves in progress: per moving replica, its shard, node, part and how far it has caught up
        (its applied index against the highest commit index its shard's replicas report)."""
        out = []
        for r in self.rows:
            if r.membership not in ("joining", "leaving"):
                continue
            top = max((x.commit_index or 0 for x in self.rows if x.shard == r.shard), default=0)
            applied = r.applied_index or 0
            out.append({"shard": r.shard, "node": r.node, "membership": r.membership, "applied_index": applied,
                        "commit_index": top, "caught_up": round(min(1.0, applied / top), 3) if top else 1.0})
        return out

    def to_dict(self) -> dict:
        return {
            "healthy": self.healthy,
            "verdict": self.verdict,
            "problems": self.problems,
            "degraded": [{"node": r.node, "shard": r.shard, "apply_error": r.apply_error} for r in self.degraded],
            "nodes_total": self.nodes_total,
            "nodes_reachable": self.nodes_reachable,
            "replicas": [r.to_dict() for r in self.rows],
            "moves": self.moves,
        }


def targets_from_topology(topology: Topology) -> list[ReplicaTarget]:
    out = []
    for shard in topology.shards:
        for name in shard.hosts:
            n = topology.node(name)
            out.append(ReplicaTarget(shard.shard_id, n.name, n.dc, n.grpc_address))
    return out


def targets_from_shard_map(shard_map: admin_pb2.ShardMap) -> list[ReplicaTarget]:
    return [
        ReplicaTarget(s.shard_id, r.node, r.dc, r.address)
        for s in sorted(shard_map.shards, key=lambda s: s.shard_id)
        for r in s.replicas
    ]


def poll_nodes(
    addresses: Iterable[str], timeout_s: float = 2.0, pool: ChannelPool | None = None
) -> dict[str, admin_pb2.NodeStatus | None]:
    """GetNodeStatus from every address at once."""
    addresses = list(dict.fromkeys(addresses))
    if not addresses:
        return {}
    own = pool is None
    pool = pool or ChannelPool()
    try:
        with ThreadPoolExecutor(max_workers=min(16, len(addresses))) as ex:
            answers = ex.map(lambda a: fetch_node_status(a, timeout_s, pool), addresses)
            return dict(zip(addresses, answers, strict=True))
    finally:
        if own:
            pool.close()


def collect_status(
    targets: Sequence[ReplicaTarget], timeout_s: float = 2.0, pool: ChannelPool | None = None
) -> StatusReport:
    """Ask every node that should hold a replica, and judge each shard: healthy when
    exactly one replica is leader, that leader has a quorum and can apply, and a majority
    of the shard's replicas answer. Replicas that cannot apply make the report degraded."""
    statuses = poll_nodes((t.address for t in targets), timeout_s, pool)
    rows: list[ReplicaRow] = []
    problems: list[str] = []
    by_shard: dict[int, list[ReplicaTarget]] = {}
    for t in targets:
        by_shard.setdefault(t.shard, []).append(t)
    for shard_id, replicas in sorted(by_shard.items()):
        found = {t: _replica(statuses.get(t.address), shard_id) for t in replicas}
        top = max((r.commit_index for r in found.values() if r is not None), default=0)
        shard_rows = []
        for t, r in found.items():
            if r is None:
                reachable = statuses.get(t.address) is not None
                role = "absent" if reachable else "down"
                shard_rows.append(ReplicaRow(t.node, t.dc, t.address, shard_id, role, reachable=reachable))
            else:
                shard_rows.append(
                    ReplicaRow(
                        t.node,
                        t.dc,
                        t.address,
                        shard_id,
                        r.role or "unknown",
                        r.term,
                        r.commit_index,
                        r.applied_index,
                        max(0, top - r.applied_index),
                        True,
                        r.leader_node,
                        r.has_quorum,
                        r.apply_error,
                        r.membership,
                    )
                )
        rows += shard_rows
        problems += _shard_problems(shard_id, shard_rows)
    reachable = sum(1 for st in statuses.values() if st is not None)
    return StatusReport(rows, problems, nodes_total=len(statuses), nodes_reachable=reachable)


def _replica(status: admin_pb2.NodeStatus | None, shard_id: int) -> admin_pb2.ReplicaStatus | None:
    if status is None:
        return None
    return next((r for r in status.replicas if r.shard_id == shard_id), None)


def _shard_problems(shard_id: int, rows: list[ReplicaRow]) -> list[str]:
    problems = []
    answering = [r for r in rows if r.term is not None]
    majority = len(rows) // 2 + 1
    if not answering:
        return [f"shard {shard_id}: no replica answers"]
    if len(answering) < majority:
        down = ", ".join(r.node for r in rows if r.term is None)
        problems.append(f"shard {shard_id}: no quorum, {len(answering)} of {len(rows)} replicas answer ({down} not)")
    leaders = [r for r in answering if r.role == "leader"]
    if not leaders:
        problems.append(f"shard {shard_id}: no leader")
    elif len(leaders) > 1:
        listed = ", ".join(f"{r.node} (term {r.term})" for r in leaders)
        problems.append(f"shard {shard_id}: {len(leaders)} leaders: {listed}")
    elif not leaders[0].has_quorum:
        problems.append(f"shard {shard_id}: leader {leaders[0].node} has no quorum")
    elif leaders[0].degraded:
        problems.append(f"shard {shard_id}: leader {leaders[0].node} cannot apply")
    return problems


# ---- processes ---------------------------------------------------------------------


def _proc_state(pid: int) -> str | None:
    """The process's state letter (R, S, T, Z, ...), None if there is no such
    process, "?" if /proc cannot tell."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        stat = ""
    if stat:
        return stat.rpartition(")")[2].split()[0]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return "?"


def _is_node_process(pid: int, node: str) -> bool:
    """Whether pid still runs the tidebank node `node` (pids get reused)."""
    try:
        argv = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return False
    except OSError:
        return True  # no /proc: trust the pid file
    return b"tidebank.node" in argv and node.encode() in argv


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _alive(pid: int) -> bool:
    state = _proc_state(pid)
    if state in ("Z", "X"):
        _reap(pid)
        return False
    return state is not None


def _signal(pid: int, sig: int) -> None:
    """Signal the node's whole process group (it leads its own session)."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _tail(path: pathlib.Path, lines: int = LOG_TAIL_LINES, offset: int = 0) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            start = max(offset, size - 64 * 1024)
            f.seek(start)
            data = f.read()
    except OSError:
        return ""
    text = data.decode("utf-8", "replace").splitlines()
    return "\n".join(text[-lines:])


class LocalCluster:
    """A cluster of node processes on this machine, described by DIR/cluster.toml."""

    def __init__(self, dir: str | os.PathLike[str], topology: Topology):
        self.dir = pathlib.Path(dir).absolute()
        self.topology = topology
        self.config_path = self.dir / CONFIG_NAME
        self.logs_dir = self.dir / "logs"
        self.pids_dir = self.dir / "pids"
        self._procs: dict[str, subprocess.Popen] = {}  # nodes this object started
        self._log_offsets: dict[str, int] = {}  # where each node's current run starts in its log
        self._pool = ChannelPool(self.client_tls())

    # ---- construction ----------------------------------------------------------

    @classmethod
    def create(
        cls, dir: str | os.PathLike[str], *, dcs: int = 3, nodes_per_dc: int = 1, shards: int = 4,
        plaintext: bool = False, quotas: QuotaConfig | None = None,
    ) -> LocalCluster:
        """A new cluster in DIR (created if needed): free loopback ports, a random secret, a cluster CA
        with a certificate for every node and one for the `admin` principal (unless plaintext).
        Refuses to overwrite an existing DIR/cluster.toml."""
        dir = pathlib.Path(dir).absolute()
        config = dir / CONFIG_NAME
        if config.exists():
            raise FileExistsError(f"{config} already exists: open it, or remove the folder first")
        topology = generate_local(dir, dcs=dcs, nodes_per_dc=nodes_per_dc, shards=shards, plaintext=plaintext,
                                  quotas=quotas)
        if topology.tls is not None:
            root = tls_files.tls_dir(dir)
            tls_files.create_ca(root, topology.cluster_name)
            for node in topology.nodes:
                tls_files.issue_node(root, node.name, (node.grpc_host, node.raft_host, "localhost"))
            tls_files.issue_principal(root, ADMIN_PRINCIPAL, ADMIN_ROLES)
        topology.dump(config)
        return cls(dir, topology)

    # ---- membership (cluster/membership.py) ------------------------------------

    def reload(self) -> Topology:
        """Re-read DIR/cluster.toml (a membership change wrote a newer version)."""
        self.topology = Topology.load(self.config_path)
        return self.topology

    def membership(self, **kwargs):
        """A Membership driver for this cluster (its topology file, its admin principal); every version it
        publishes becomes this object's topology too."""
        from tidebank.cluster.membership import Membership

        def keep(topology: Topology) -> None:
            self.topology = topology

        return Membership(self.config_path, self._pool, on_publish=keep, **kwargs)

    def new_node_spec(self, name: str, dc: str, grpc_address: str | None = None,
                      raft_address: str | None = None, metrics_port: int | None = None) -> NodeSpec:
        """A new node: the addresses given, else free ports on this cluster's host; and its TLS certificate
        under the cluster's CA."""
        if dc not in self.topology.dcs:
            raise TopologyError(f"unknown DC {dc!r} (DCs: {', '.join(self.topology.dcs)})")
        host = self.topology.nodes[0].raft_host
        ports = PortPicker(host)
        ports.taken.update(p for n in self.topology.nodes for p in (n.grpc_port, n.raft_port, n.metrics_port))
        raft_host, raft_port = split_address(raft_address) if raft_address else (host, ports.one())
        spec = NodeSpec(name=name, dc=dc, grpc_address=grpc_address or join_address(host, ports.one()),
                        raft_host=raft_host, raft_port=raft_port,
                        metrics_port=ports.one() if metrics_port is None else metrics_port)
        split_address(spec.grpc_address)  # a clear error for a malformed --grpc
        if self.topology.tls is not None:
            tls_files.issue_node(tls_files.tls_dir(self.dir), name, (spec.grpc_host, spec.raft_host, "localhost"))
        return spec

    # ---- principals ------------------------------------------------------------

    def client_tls(self, principal: str = "admin") -> ClientTls:
        """What a client of this cluster connects with as `principal` (its certificate, or plaintext)."""
        if self.topology.tls is None:
            return Plaintext()
        files = tls_files.principal_files(tls_files.tls_dir(self.dir), principal)
        if not files.cert.exists():
            raise TlsError(f"no principal {principal!r} in {self.dir}: add it with `tidebank principal add`")
        return files

    def add_principal(self, name: str, roles: Iterable[str], participants: Iterable[int] = ()) -> TlsFiles:
        """Issue (or re-issue) a principal's client certificate under this cluster's CA."""
        if self.topology.tls is None:
            raise TlsError("a plaintext cluster has no principals")
        return tls_files.issue_principal(tls_files.tls_dir(self.dir), name, roles, participants)

    def channel(self, address: str | None = None, principal: str = "admin") -> grpc.Channel:
        """A new channel to one node (the first by default) as `principal`; the caller closes it."""
        return tls_files.open_channel(address or self.endpoints[0], self.client_tls(principal), _CHANNEL_OPTIONS)

    @classmethod
    def open(cls, dir: str | os.PathLike[str]) -> LocalCluster:
        """The cluster in DIR, with whatever of it is running now."""
        dir = pathlib.Path(dir).absolute()
        config = dir / CONFIG_NAME
        if not config.exists():
            raise TopologyError(f"no cluster in {dir}: {config} does not exist")
        return cls(dir, Topology.load(config))

    @property
    def endpoints(self) -> list[str]:
        """The client (gRPC) endpoints of every node."""
        return self.topology.endpoints

    def log_path(self, node: str) -> pathlib.Path:
        return self.logs_dir / f"{node}.log"

    def log_tail(self, node: str, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of the node's log, from its current (or last) run."""
        return _tail(self.log_path(node), lines, self._log_offsets.get(node, 0))

    def _pid_path(self, node: str) -> pathlib.Path:
        return self.pids_dir / f"{node}.pid"

    def _names(self, nodes: str | Iterable[str] | None) -> list[str]:
        if nodes is None:
            return self.topology.node_names
        if isinstance(nodes, str):
            nodes = [nodes]
        names = list(dict.fromkeys(nodes))
        for n in names:
            self.topology.node(n)  # KeyError naming the known nodes
        return names

    # ---- process state ---------------------------------------------------------

    def pid(self, node: str) -> int | None:
        """The pid of the running node, or None. A pid file whose process is gone
        (or is now some other program) is removed."""
        proc = self._procs.get(node)
        if proc is not None and proc.poll() is not None:
            proc = None
        path = self._pid_path(node)
        try:
            pid = int(path.read_text().strip())
        except FileNotFoundError:
            return proc.pid if proc is not None else None
        except (OSError, ValueError):
            path.unlink(missing_ok=True)
            return None
        if proc is None and not (_alive(pid) and _is_node_process(pid, node)):
            path.unlink(missing_ok=True)
            return None
        return pid

    def is_running(self, node: str) -> bool:
        return self.pid(node) is not None

    def is_paused(self, node: str) -> bool:
        pid = self.pid(node)
        return pid is not None and _proc_state(pid) in ("T", "t")

    def running_nodes(self) -> list[str]:
        return [n for n in self.topology.node_names if self.is_running(n)]

    # ---- start / stop ----------------------------------------------------------

    def start(self, nodes: str | Iterable[str] | None = None) -> None:
        """Start the given nodes (default: all) that are not running yet, detached,
        each logging to DIR/logs/NODE.log. Does not wait: see wait_ready."""
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.pids_dir.mkdir(parents=True, exist_ok=True)
        for name in self._names(nodes):
            if self.is_running(name):
                continue
            log_path = self.log_path(name)
            with log_path.open("ab") as log:
                self._log_offsets[name] = log.tell()
                stamp = time.strftime("%Y-%m-%d %H:%M:%S")
                log.write(f"---- tidebank launcher: starting {name} at {stamp} ----\n".encode())
                log.flush()
                proc = subprocess.Popen(
                    [sys.executable, "-m", "tidebank.node", "--config", str(self.config_path), "--node", name],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.dir,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                    start_new_session=True,
                )
            self._procs[name] = proc
            tmp = self._pid_path(name).with_suffix(".tmp")
            tmp.write_text(f"{proc.pid}\n")
            tmp.replace(self._pid_path(name))

    def stop(self, nodes: str | Iterable[str] | None = None, timeout_s: float = 10.0) -> list[str]:
        """SIGTERM the given nodes (default: all), wait up to timeout_s for them to
        exit, SIGKILL what is left. Paused nodes are resumed so that they can see
        the SIGTERM. Returns the names of the nodes that were running."""
        pids = {name: pid for name in self._names(nodes) if (pid := self.pid(name)) is not None}
        # Resume paused nodes first and let them settle: a SIGTERM sent right after
        # SIGCONT tends to land on a thread other than the main one, and a main
        # thread blocked in a wait then never runs the handler. SIGTERM is repeated
        # while waiting for the same reason.
        paused = [pid for pid in pids.values() if _proc_state(pid) in ("T", "t")]
        for pid in paused:
            _signal(pid, signal.SIGCONT)
        if paused:
            time.sleep(0.2)
        for pid in pids.values():
            _signal(pid, signal.SIGTERM)
        left = self._wait_gone(pids, timeout_s, resend=signal.SIGTERM)
        for pid in left.values():
            _signal(pid, signal.SIGKILL)
        left = self._wait_gone(left, 5.0)
        for name in self._names(nodes):
            if name not in left:
                self._forget(name)  # also nodes that had died on their own
        if left:
            listed = ", ".join(f"{n} (pid {p})" for n, p in left.items())
            raise ClusterError(f"nodes still running after SIGKILL: {listed}")
        return list(pids)

    def kill(self, node: str) -> None:
        """SIGKILL the node (a crash: no clean shutdown)."""
        pid = self._require_pid(node)
        _signal(pid, signal.SIGKILL)
        if self._wait_gone({node: pid}, 5.0):
            raise ClusterError(f"node {node} (pid {pid}) survived SIGKILL")
        self._forget(node)

    def pause(self, node: str) -> None:
        """SIGSTOP the node: it stops answering but keeps its sockets open."""
        _signal(self._require_pid(node), signal.SIGSTOP)

    def resume(self, node: str) -> None:
        """SIGCONT a paused node."""
        _signal(self._require_pid(node), signal.SIGCONT)

    def restart(self, node: str, timeout_s: float = 10.0) -> None:
        """Stop the node if it runs (SIGTERM, then SIGKILL) and start it again on the
        same data. Does not wait for it to rejoin: see wait_ready."""
        self.stop([node], timeout_s)
        self.start([node])

    def _require_pid(self, node: str) -> int:
        self.topology.node(node)
        pid = self.pid(node)
        if pid is None:
            raise ClusterError(f"node {node} is not running")
        return pid

    def _wait_gone(self, pids: dict[str, int], timeout_s: float, resend: int | None = None) -> dict[str, int]:
        """Wait until the processes exit (sending `resend` again every second);
        returns those still alive at the deadline."""
        now = time.monotonic()
        deadline, next_resend = now + timeout_s, now + 1.0
        left = dict(pids)
        while left:
            for name, pid in list(left.items()):
                proc = self._procs.get(name)
                gone = proc.poll() is not None if proc is not None and proc.pid == pid else not _alive(pid)
                if gone:
                    del left[name]
            now = time.monotonic()
            if not left or now >= deadline:
                break
            if resend is not None and now >= next_resend:
                next_resend = now + 1.0
                for pid in left.values():
                    _signal(pid, resend)
            time.sleep(0.05)
        return left

    def _forget(self, node: str) -> None:
        proc = self._procs.pop(node, None)
        if proc is not None:
            proc.poll()
        self._pid_path(node).unlink(missing_ok=True)

    def check_processes(self, nodes: Iterable[str] | None = None) -> None:
        """Raise NodeExitedError if a node this object started (or one of `nodes`)
        is no longer running."""
        names = list(self._procs) if nodes is None else list(nodes)
        for name in names:
            proc = self._procs.get(name)
            if proc is not None and proc.poll() is not None:
                self._forget(name)
                raise NodeExitedError(name, f"exited with code {proc.returncode}", self.log_tail(name))
            if proc is None and not self.is_running(name):
                raise NodeExitedError(name, "is not running", self.log_tail(name))

    # ---- readiness and status --------------------------------------------------

    def wait_ready(self, timeout_s: float = 60.0, nodes: Iterable[str] | None = None) -> None:
        """Wait until every shard has a leader that all its replicas on the given
        nodes see (default: every running, unpaused node). Raises NodeExitedError
        as soon as one of those nodes exits, TimeoutError naming what is missing."""
        if nodes is None:
            # Nodes this object started stay in the set even if they died: that is
            # an error to report, not a node to leave out.
            names = [
                n
                for n in self.topology.node_names
                if (n in self._procs or self.is_running(n)) and not self.is_paused(n)
            ]
            if not names:
                raise ClusterError("no node is running")
        else:
            names = self._names(nodes)
        deadline = time.monotonic() + timeout_s
        while True:
            self.check_processes(names)
            missing = self._readiness_gaps(names)
            if not missing:
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(f"cluster not ready after {timeout_s:g} s: " + "; ".join(missing))
            time.sleep(POLL_INTERVAL_S)

    def wait_answering(self, node: str, timeout_s: float = 60.0) -> None:
        """Wait until a node answers its status (a node holding no replica yet has no leader to wait for)."""
        deadline = time.monotonic() + timeout_s
        while self.node_status(node) is None:
            self.check_processes([node])
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{node} does not answer after {timeout_s:g} s")
            time.sleep(POLL_INTERVAL_S)

    def _readiness_gaps(self, names: list[str]) -> list[str]:
        # Ask every node: the leader a replica names may lie outside `names`.
        statuses = poll_nodes(self.endpoints, 1.0, self._pool)
        by_node = {n.name: statuses[n.grpc_address] for n in self.topology.nodes}
        gaps = []
        for shard in self.topology.shards:
            members = [r for r in shard.replicas if r in names]
            if not members:
                gaps.append(f"shard {shard.shard_id}: none of its replicas is running")
                continue
            seen: dict[str, str] = {}
            for r in members:
                st = by_node[r]
                if st is None:
                    gaps.append(f"shard {shard.shard_id}: {r} does not answer")
                    continue
                rep = _replica(st, shard.shard_id)
                if rep is None:
                    gaps.append(f"shard {shard.shard_id}: {r} does not report it")
                elif not rep.leader_node:
                    gaps.append(f"shard {shard.shard_id}: {r} ({rep.role}, term {rep.term}) sees no leader")
                else:
                    seen[r] = rep.leader_node
            leaders = set(seen.values())
            if len(leaders) > 1:
                views = ", ".join(f"{r} -> {leader}" for r, leader in seen.items())
                gaps.append(f"shard {shard.shard_id}: replicas disagree on the leader ({views})")
            elif leaders and len(seen) == len(members):
                leader = leaders.pop()
                rep = _replica(by_node.get(leader), shard.shard_id)
                if rep is None or rep.role != "leader":
                    gaps.append(f"shard {shard.shard_id}: {leader} is named leader but is not leading yet")
        return gaps

    def node_status(self, node: str, timeout_s: float = 2.0) -> admin_pb2.NodeStatus | None:
        """The node's own report, or None if it does not answer."""
        return fetch_node_status(self.topology.node(node).grpc_address, timeout_s, self._pool)

    def status(self, timeout_s: float = 2.0) -> StatusReport:
        """Every shard replica's state, and what makes the cluster unhealthy."""
        return collect_status(targets_from_topology(self.topology), timeout_s, self._pool)

    def cluster_status(self, timeout_s: float = 2.0) -> list[ReplicaRow]:
        """One row per shard replica (see ReplicaRow)."""
        return self.status(timeout_s).rows

    def healthy(self, timeout_s: float = 2.0) -> bool:
        """Every shard has exactly one leader, holding a quorum, and a majority of
        its replicas answer; and every replica that answers can apply."""
        return self.status(timeout_s).healthy

    def shard_map(self, timeout_s: float = 2.0) -> admin_pb2.ShardMap:
        return fetch_shard_map(self.endpoints, timeout_s, self._pool)

    # ---- lifetime --------------------------------------------------------------

    def close(self) -> None:
        """Drop gRPC channels; nodes keep running."""
        self._pool.close()

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.stop()
        finally:
            self.close()

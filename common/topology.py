"""Cluster topology: data centres, nodes, shards and their placement, read from and
written to a small TOML file.

Pure data plus TOML I/O: the node process imports this module too, so it must stay
free of gRPC, processes and printing.

A topology file looks like this::

    [cluster]
    name = "local"
    secret = "..."              # or set TIDEBANK_CLUSTER_SECRET (overrides the file)
    slot_count = 4096
    shard_map_version = 1
    data_dir = "data"           # relative paths are relative to the file

    [tls]                       # mutual TLS on every gRPC port (or: plaintext = true, loudly warned)
    ca = "tls/ca.pem"
    node_cert = "tls/nodes/{node}.pem"
    node_key = "tls/nodes/{node}.key"

    [[dc]]
    name = "dc1"

    [[node]]
    name = "dc1-n1"
    dc = "dc1"
    grpc = "10.0.1.5:7100"      # client endpoint
    raft_host = "10.0.1.5"
    raft_port = 7200            # Raft traffic of every shard replica on this node
    metrics_port = 9100         # 0 = off

    [[shard]]
    id = 0
    slots = [[0, 1024]]         # [start, end) ranges; [] for a shard added to a running cluster
    replicas = ["dc1-n1", "dc2-n1", "dc3-n1"]   # one per DC, first = preferred leader
    joining = ["dc1-n2"]        # only while a replica moves (cluster/membership.py): the new one, catching up
    leaving = []                # ... and, once it has taken over, the old one, about to leave the Raft group

`shard_map_version` grows with every change of slots, replicas or nodes: a node that is
sent a topology (Admin/ApplyTopology) takes it only when it is newer than its own.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import os
import pathlib
import random
import secrets as _secrets
import socket
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass

from tidebank.common.tls import TlsFiles

SECRET_ENV = "TIDEBANK_CLUSTER_SECRET"
DEFAULT_SLOT_COUNT = 4096
ALLOWED_DC_COUNTS = (3, 5)


class TopologyError(ValueError):
    """The topology file is missing, malformed or inconsistent."""


def split_address(address: str) -> tuple[str, int]:
    """("host", port) from "host:port" (IPv6 hosts in brackets: "[::1]:7100")."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise TopologyError(f"bad address {address!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def join_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class NodeSpec:
    name: str
    dc: str
    grpc_address: str  # "host:port" client endpoint
    raft_host: str
    raft_port: int  # Raft traffic of every shard replica on this node (raft/transport.py)
    metrics_port: int = 0  # Prometheus, 0 = off

    @property
    def raft_endpoint(self) -> tuple[str, int]:
        return self.raft_host, self.raft_port

    @property
    def grpc_host(self) -> str:
        return split_address(self.grpc_address)[0]

    @property
    def grpc_port(self) -> int:
        return split_address(self.grpc_address)[1]


@dataclass(frozen=True)
class ShardSpec:
    shard_id: int
    slots: tuple[tuple[int, int], ...]  # [start, end) ranges
    replicas: tuple[str, ...]  # node names, one per DC; the first is the preferred leader
    # A replica move in progress (cluster/membership.py): the node whose new replica catches up and joins the
    # Raft group, then, once it has replaced the old one in `replicas`, the node whose replica is leaving.
    # Both host the shard meanwhile; neither is elected while the others can be. At most one of each.
    joining: tuple[str, ...] = ()
    leaving: tuple[str, ...] = ()

    @property
    def preferred_leader(self) -> str:
        return self.replicas[0]

    @property
    def hosts(self) -> tuple[str, ...]:
        """Every node holding a replica of this shard: the steady ones, then a joining and a leaving one."""
        return self.replicas + self.joining + self.leaving


@dataclass(frozen=True)
class QuotaConfig:
    """[quotas]: what one principal may ask of one node (node/api/quotas.py). The defaults let one principal
    use a whole node (about 20k transfers/s) but not fill a shard's queue (100k items) or hold more than a
    quarter of the node's 64 handler threads."""

    items_per_s: int = 40_000
    burst_items: int = 80_000
    calls_in_flight: int = 16


@dataclass(frozen=True)
class TlsConfig:
    """Where a node finds its TLS files; `{node}` in a path is the node's name."""

    ca: pathlib.Path
    node_cert: str
    node_key: str


@dataclass(frozen=True)
class Topology:
    cluster_name: str
    secret: str
    slot_count: int
    shard_map_version: int
    data_dir: pathlib.Path
    dcs: tuple[str, ...]
    nodes: tuple[NodeSpec, ...]
    shards: tuple[ShardSpec, ...]
    # [clearing] cycle_s: every ledger's open clearing window closes this often (cluster time); 0: only by command
    clearing_cycle_s: float = 0.0
    tls: TlsConfig | None = None  # None: `[tls] plaintext = true`, every caller trusted
    quotas: QuotaConfig = QuotaConfig()

    def node_tls(self, node_name: str) -> TlsFiles | None:
        """The CA, certificate and key node `node_name` serves and calls with; None under plaintext."""
        if self.tls is None:
            return None
        return TlsFiles(self.tls.ca, pathlib.Path(self.tls.node_cert.replace("{node}", node_name)),
                        pathlib.Path(self.tls.node_key.replace("{node}", node_name)))

    # ---- I/O -------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Topology:
        """Read and validate a topology file. TIDEBANK_CLUSTER_SECRET overrides the
        file's secret; one of the two must be set."""
        path = pathlib.Path(path)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise TopologyError(f"{path}: no such topology file") from None
        except OSError as e:
            raise TopologyError(f"{path}: cannot read: {e.strerror or e}") from None
        try:
            doc = tomllib.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            raise TopologyError(f"{path}: not valid TOML: {e}") from None
        try:
            return cls.from_dict(doc, base_dir=path.parent.absolute())
        except TopologyError as e:
            raise TopologyError(f"{path}: {e}") from None

    @classmethod
    def from_dict(cls, doc: dict, *, base_dir: pathlib.Path | None = None) -> Topology:
        """Build and validate a topology from parsed TOML. A relative data_dir is
        taken relative to base_dir (the file's folder)."""
        cl = _table(doc, "cluster")
        secret = os.environ.get(SECRET_ENV) or _get(cl, "cluster", "secret", str, required=False) or ""
        if not secret:
            raise TopologyError(f"no cluster secret: set [cluster] secret or the {SECRET_ENV} variable")
        data_dir = pathlib.Path(_get(cl, "cluster", "data_dir", str))
        if not data_dir.is_absolute() and base_dir is not None:
            data_dir = base_dir / data_dir
        dcs = tuple(_get(d, "dc", "name", str) for d in _array(doc, "dc"))
        nodes = tuple(
            NodeSpec(
                name=_get(n, "node", "name", str),
                dc=_get(n, "node", "dc", str),
                grpc_address=_get(n, "node", "grpc", str),
                raft_host=_get(n, "node", "raft_host", str),
                raft_port=_get(n, "node", "raft_port", int),
                metrics_port=_get(n, "node", "metrics_port", int, required=False) or 0,
            )
            for n in _array(doc, "node")
        )
        shards = []
        for s in _array(doc, "shard"):
            slots = _get(s, "shard", "slots", list)
            if not all(isinstance(r, list) and len(r) == 2 and all(_is_int(x) for x in r) for r in slots):
                raise TopologyError(f"shard {s.get('id')}: slots must be a list of [start, end] pairs")
            moving = {}
            for key in ("replicas", "joining", "leaving"):
                names = _get(s, "shard", key, list, required=key == "replicas") or []
                if not all(isinstance(r, str) for r in names):
                    raise TopologyError(f"shard {s.get('id')}: {key} must be a list of node names")
                moving[key] = tuple(names)
            shards.append(
                ShardSpec(
                    shard_id=_get(s, "shard", "id", int),
                    slots=tuple((a, b) for a, b in slots),
                    **moving,
                )
            )
        clearing = doc.get("clearing", {})
        if not isinstance(clearing, dict):
            raise TopologyError("[clearing] must be a table")
        cycle_s = clearing.get("cycle_s", 0)
        if isinstance(cycle_s, bool) or not isinstance(cycle_s, (int, float)) or not 0 <= cycle_s <= 366 * 86_400:
            raise TopologyError(f"[clearing] cycle_s must be a number of seconds in 0..{366 * 86_400}")
        tls = _tls_of(doc, base_dir)
        quotas = _quotas_of(doc)
        topo = cls(
            cluster_name=_get(cl, "cluster", "name", str),
            secret=secret,
            slot_count=_get(cl, "cluster", "slot_count", int),
            shard_map_version=_get(cl, "cluster", "shard_map_version", int),
            data_dir=data_dir,
            dcs=dcs,
            nodes=nodes,
            shards=tuple(shards),
            clearing_cycle_s=float(cycle_s),
            tls=tls,
            quotas=quotas,
        )
        topo.validate()
        return topo

    def dumps(self, *, include_secret: bool = True, base_dir: pathlib.Path | None = None) -> str:
        """The topology as TOML. A data_dir inside base_dir is written relative to it."""
        data_dir = self.data_dir
        if base_dir is not None and data_dir.is_relative_to(base_dir):
            data_dir = data_dir.relative_to(base_dir)
        out = ["# tidebank cluster topology", "", "[cluster]"]
        out.append(f"name = {_toml_str(self.cluster_name)}")
        if include_secret:
            out.append(f"secret = {_toml_str(self.secret)}")
        else:
            out.append(f"# secret: set {SECRET_ENV}")
        out.append(f"slot_count = {self.slot_count}")
        out.append(f"shard_map_version = {self.shard_map_version}")
        out.append(f"data_dir = {_toml_str(str(data_dir))}")
        if self.clearing_cycle_s:
            out += ["", "[clearing]", f"cycle_s = {self.clearing_cycle_s:g}"]
        if self.quotas != QuotaConfig():
            out += ["", "[quotas]", f"items_per_s = {self.quotas.items_per_s}",
                    f"burst_items = {self.quotas.burst_items}", f"calls_in_flight = {self.quotas.calls_in_flight}"]
        if self.tls is None:
            out += ["", "[tls]", "plaintext = true  # no TLS: anyone who reaches a port is trusted"]
        else:
            def rel(path: str) -> str:
                p = pathlib.Path(path)
                return str(p.relative_to(base_dir)) if base_dir is not None and p.is_relative_to(base_dir) else path
            out += ["", "[tls]", f"ca = {_toml_str(rel(str(self.tls.ca)))}",
                    f"node_cert = {_toml_str(rel(self.tls.node_cert))}",
                    f"node_key = {_toml_str(rel(self.tls.node_key))}"]
        for dc in self.dcs:
            out += ["", "[[dc]]", f"name = {_toml_str(dc)}"]
        for n in self.nodes:
            out += [
                "",
                "[[node]]",
                f"name = {_toml_str(n.name)}",
                f"dc = {_toml_str(n.dc)}",
                f"grpc = {_toml_str(n.grpc_address)}",
                f"raft_host = {_toml_str(n.raft_host)}",
                f"raft_port = {n.raft_port}",
                f"metrics_port = {n.metrics_port}",
            ]
        for s in self.shards:
            slots = ", ".join(f"[{a}, {b}]" for a, b in s.slots)
            replicas = ", ".join(_toml_str(r) for r in s.replicas)
            out += ["", "[[shard]]", f"id = {s.shard_id}", f"slots = [{slots}]", f"replicas = [{replicas}]"]
            for key in ("joining", "leaving"):
                if getattr(s, key):
                    out.append(f"{key} = [{', '.join(_toml_str(r) for r in getattr(s, key))}]")
        return "\n".join(out) + "\n"

    def dump(self, path: str | os.PathLike[str], *, include_secret: bool = True) -> None:
        """Write the topology as TOML (mode 0600: the file holds the Raft secret).
        The write is atomic: a reader sees the old file or the new one. A data_dir
        under the file's folder is written relative, so the folder can be moved."""
        path = pathlib.Path(path).absolute()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(self.dumps(include_secret=include_secret, base_dir=path.parent))
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    # ---- validation ------------------------------------------------------------

    def validate(self) -> None:
        """Raise TopologyError naming the first inconsistency found."""
        if not self.cluster_name:
            raise TopologyError("cluster name is empty")
        if not self.secret:
            raise TopologyError(f"no cluster secret: set [cluster] secret or the {SECRET_ENV} variable")
        if self.slot_count < 1:
            raise TopologyError(f"slot_count must be positive, not {self.slot_count}")
        if self.shard_map_version < 0:
            raise TopologyError(f"shard_map_version must not be negative, not {self.shard_map_version}")

        _unique("DC name", self.dcs)
        if len(self.dcs) not in ALLOWED_DC_COUNTS:
            raise TopologyError(f"{len(self.dcs)} DCs: a shard has one replica per DC and needs 3 or 5 DCs")

        _unique("node name", (n.name for n in self.nodes))
        _unique("gRPC address", (n.grpc_address for n in self.nodes))
        for n in self.nodes:
            if not n.name:
                raise TopologyError("a node has an empty name")
            if n.dc not in self.dcs:
                raise TopologyError(f"node {n.name}: unknown DC {n.dc!r} (DCs: {', '.join(self.dcs)})")
            split_address(n.grpc_address)
            if not n.raft_host:
                raise TopologyError(f"node {n.name}: raft_host is empty")
            if not 0 < n.raft_port <= 65535:
                raise TopologyError(f"node {n.name}: raft_port {n.raft_port} out of range")
            if not 0 <= n.metrics_port <= 65535:
                raise TopologyError(f"node {n.name}: metrics_port {n.metrics_port} out of range")
        self._check_ports()

        ids = [s.shard_id for s in self.shards]
        if not ids:
            raise TopologyError("no shards")
        _unique("shard id", ids)
        if sorted(ids) != list(range(len(ids))):
            raise TopologyError(f"shard ids must be 0..{len(ids) - 1}, got {sorted(ids)}")
        names = {n.name: n for n in self.nodes}
        for s in self.shards:
            if len(s.replicas) != len(self.dcs):
                raise TopologyError(
                    f"shard {s.shard_id}: {len(s.replicas)} replicas, needs one per DC ({len(self.dcs)})"
                )
            if len(set(s.replicas)) != len(s.replicas):
                raise TopologyError(f"shard {s.shard_id}: a node holds two replicas ({', '.join(s.replicas)})")
            for r in s.replicas:
                if r not in names:
                    raise TopologyError(f"shard {s.shard_id}: unknown replica node {r!r}")
            dcs = [names[r].dc for r in s.replicas]
            if set(dcs) != set(self.dcs):
                missing = sorted(set(self.dcs) - set(dcs))
                raise TopologyError(f"shard {s.shard_id}: no replica in DC {', '.join(missing)}")
            for key in ("joining", "leaving"):
                moving = getattr(s, key)
                if len(moving) > 1:
                    raise TopologyError(f"shard {s.shard_id}: {key} names {len(moving)} nodes; one move at a time")
                for r in moving:
                    if r not in names:
                        raise TopologyError(f"shard {s.shard_id}: unknown {key} node {r!r}")
            if len(set(s.hosts)) != len(s.hosts):
                raise TopologyError(f"shard {s.shard_id}: a node is named twice in replicas, joining and leaving")
        self._check_slots()

    def _check_ports(self) -> None:
        used: dict[tuple[str, int], str] = {}

        def claim(host: str, port: int, what: str) -> None:
            key = (host, port)
            if key in used:
                raise TopologyError(f"port {host}:{port} used twice: {used[key]} and {what}")
            used[key] = what

        for n in self.nodes:
            host, port = split_address(n.grpc_address)
            claim(host, port, f"{n.name} gRPC")
            claim(n.raft_host, n.raft_port, f"{n.name} Raft")
            if n.metrics_port:
                claim(host, n.metrics_port, f"{n.name} metrics")

    def _check_slots(self) -> None:
        # A shard may hold no slots: `tidebank shard add` creates one so, and slots move to it later.
        ranges = sorted((a, b, s.shard_id) for s in self.shards for a, b in s.slots)
        expected = 0
        for a, b, sid in ranges:
            if not a < b:
                raise TopologyError(f"shard {sid}: empty or reversed slot range [{a}, {b})")
            if a < expected:
                raise TopologyError(f"shard {sid}: slot range [{a}, {b}) overlaps another range")
            if a > expected:
                raise TopologyError(f"slots [{expected}, {a}) belong to no shard")
            expected = b
        if expected != self.slot_count:
            if expected > self.slot_count:
                raise TopologyError(f"slot ranges go up to {expected}, past slot_count {self.slot_count}")
            raise TopologyError(f"slots [{expected}, {self.slot_count}) belong to no shard")

    # ---- queries ---------------------------------------------------------------

    def node(self, name: str) -> NodeSpec:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"no node {name!r} (nodes: {', '.join(self.node_names)})")

    @property
    def node_names(self) -> list[str]:
        return [n.name for n in self.nodes]

    @property
    def endpoints(self) -> list[str]:
        """Every node's client (gRPC) endpoint."""
        return [n.grpc_address for n in self.nodes]

    def shard(self, shard_id: int) -> ShardSpec:
        for s in self.shards:
            if s.shard_id == shard_id:
                return s
        raise KeyError(f"no shard {shard_id} (shards 0..{len(self.shards) - 1})")

    def shards_on(self, node_name: str) -> list[ShardSpec]:
        """The shards a node holds a replica of, joining and leaving ones included."""
        return [s for s in self.shards if node_name in s.hosts]

    def changed(self, **changes) -> Topology:
        """A copy with some fields replaced and the next shard_map_version, validated."""
        topo = dataclasses.replace(self, shard_map_version=self.shard_map_version + 1, **changes)
        topo.validate()
        return topo

    def with_shard(self, shard: ShardSpec) -> Topology:
        """The next version, with one shard's spec replaced."""
        return self.changed(shards=tuple(shard if s.shard_id == shard.shard_id else s for s in self.shards))

    def with_slots_moved(self, slots: Iterable[int], to_shard: int) -> Topology:
        """The next version, with `slots` taken from whichever shards hold them and given to `to_shard`."""
        moving = set(slots)
        if not moving:
            raise TopologyError("no slots to move")
        outside = sorted(s for s in moving if not 0 <= s < self.slot_count)
        if outside:
            raise TopologyError(f"slot {outside[0]} out of range [0, {self.slot_count})")
        self.shard(to_shard)
        shards = []
        for spec in self.shards:
            held = set(slots_of(spec.slots)) - moving
            if spec.shard_id == to_shard:
                held |= moving
            shards.append(dataclasses.replace(spec, slots=slot_ranges(held)))
        return self.changed(shards=tuple(shards))

    def node_data_dir(self, node_name: str) -> pathlib.Path:
        self.node(node_name)
        return self.data_dir / node_name

    def shard_of_slot(self, slot: int) -> int:
        if not 0 <= slot < self.slot_count:
            raise ValueError(f"slot {slot} out of range [0, {self.slot_count})")
        starts, owners = self._slot_index
        return owners[bisect.bisect_right(starts, slot) - 1]

    @functools.cached_property
    def _slot_index(self) -> tuple[list[int], list[int]]:
        ranges = sorted((a, s.shard_id) for s in self.shards for a, _ in s.slots)
        return [a for a, _ in ranges], [sid for _, sid in ranges]


# ---- slot ranges -------------------------------------------------------------------


def slots_of(ranges: Iterable[tuple[int, int]]) -> list[int]:
    """Every slot of [start, end) ranges, in order."""
    return [slot for start, end in ranges for slot in range(start, end)]


def slot_ranges(slots: Iterable[int]) -> tuple[tuple[int, int], ...]:
    """The fewest [start, end) ranges that hold exactly `slots`, in order."""
    out: list[list[int]] = []
    for slot in sorted(set(slots)):
        if out and out[-1][1] == slot:
            out[-1][1] = slot + 1
        else:
            out.append([slot, slot + 1])
    return tuple((a, b) for a, b in out)


def parse_slots(text: str, slot_count: int) -> list[int]:
    """Slots from "7", "100-199" (both ends included) and comma-separated lists of them."""
    slots: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        first, sep, last = part.partition("-")
        if not first.strip().isdigit() or (sep and not last.strip().isdigit()):
            raise TopologyError(f"bad slot {part!r}: expected N or N-M")
        a, b = int(first), int(last) if sep else int(first)
        if a > b:
            raise TopologyError(f"bad slot range {part!r}: {a} is past {b}")
        if b >= slot_count:
            raise TopologyError(f"slot {b} out of range [0, {slot_count})")
        slots.update(range(a, b + 1))
    if not slots:
        raise TopologyError("no slots given")
    return sorted(slots)


# ---- generation ------------------------------------------------------------------


def generate_local(
    dir: str | os.PathLike[str],
    *,
    dcs: int = 3,
    nodes_per_dc: int = 1,
    shards: int = 4,
    host: str = "127.0.0.1",
    slot_count: int = DEFAULT_SLOT_COUNT,
    cluster_name: str = "local",
    plaintext: bool = False,
    quotas: QuotaConfig | None = None,
) -> Topology:
    """A topology for one machine: free ports on `host`, a random secret, data under
    dir/data, TLS files under dir/tls (made by tidebank.common.tls, not here). Shard s's
    replica in each DC lives on node (s % nodes_per_dc) of that DC, and its preferred
    leader is in DC (s % dcs), so leaders spread over DCs."""
    if dcs not in ALLOWED_DC_COUNTS:
        raise TopologyError(f"dcs must be 3 or 5, not {dcs}")
    if nodes_per_dc < 1:
        raise TopologyError(f"nodes_per_dc must be at least 1, not {nodes_per_dc}")
    if not 1 <= shards <= slot_count:
        raise TopologyError(f"shards must be between 1 and slot_count ({slot_count}), not {shards}")
    dc_names = tuple(f"dc{i + 1}" for i in range(dcs))
    ports = PortPicker(host)
    nodes = []
    for dc in dc_names:
        for i in range(nodes_per_dc):
            nodes.append(
                NodeSpec(
                    name=f"{dc}-n{i + 1}",
                    dc=dc,
                    grpc_address=join_address(host, ports.one()),
                    raft_host=host,
                    raft_port=ports.one(),
                    metrics_port=ports.one(),
                )
            )
    shard_specs = []
    for s in range(shards):
        first = s % dcs
        order = dc_names[first:] + dc_names[:first]
        replicas = tuple(f"{dc}-n{s % nodes_per_dc + 1}" for dc in order)
        slots = ((s * slot_count // shards, (s + 1) * slot_count // shards),)
        shard_specs.append(ShardSpec(shard_id=s, slots=slots, replicas=replicas))
    topo = Topology(
        cluster_name=cluster_name,
        secret=_secrets.token_hex(32),
        slot_count=slot_count,
        shard_map_version=1,
        data_dir=pathlib.Path(dir).absolute() / "data",
        dcs=dc_names,
        nodes=tuple(nodes),
        shards=tuple(shard_specs),
        quotas=quotas or QuotaConfig(),
        tls=None if plaintext else TlsConfig(
            ca=pathlib.Path(dir).absolute() / "tls" / "ca.pem",
            node_cert=str(pathlib.Path(dir).absolute() / "tls" / "nodes" / "{node}.pem"),
            node_key=str(pathlib.Path(dir).absolute() / "tls" / "nodes" / "{node}.key")),
    )
    topo.validate()
    return topo


class PortPicker:
    """Free TCP ports on one host, none handed out twice.

    Ports come from below (or above) the kernel's ephemeral range when possible: a
    node restarted after a kill must find its ports free, and an ephemeral port
    can be taken meanwhile by any outgoing connection (gRPC clients, Raft peers).
    Each port is checked by binding it; the socket is closed again at once."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.taken: set[int] = set()
        self.rng = random.Random(_secrets.randbits(64))
        lo, hi = _ephemeral_range()
        if lo - 10000 >= 2000:
            self.window = (10000, lo - 1)
        elif 65535 - hi >= 2000:
            self.window = (hi + 1, 65535)
        else:
            self.window = None

    def one(self) -> int:
        return self.block(1)

    def block(self, count: int) -> int:
        """The first of `count` consecutive free ports."""
        for _ in range(200):
            base = self._candidate(count)
            if base is None:
                continue
            span = range(base, base + count)
            if any(p in self.taken for p in span):
                continue
            if all(_bindable(self.host, p) for p in span):
                self.taken.update(span)
                return base
        raise TopologyError(f"could not find {count} consecutive free ports on {self.host}")

    def _candidate(self, count: int) -> int | None:
        if self.window is not None:
            lo, hi = self.window
            return self.rng.randint(lo, hi - count + 1)
        port = _bind_zero(self.host)
        return port if port + count - 1 <= 65535 else None


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = pathlib.Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _bindable(host: str, port: int) -> bool:
    with socket.socket(_family(host), socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _bind_zero(host: str) -> int:
    with socket.socket(_family(host), socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# ---- helpers -----------------------------------------------------------------------


def _unique(what: str, values: Iterable) -> None:
    seen = set()
    for v in values:
        if v in seen:
            raise TopologyError(f"duplicate {what} {v!r}")
        seen.add(v)


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _quotas_of(doc: dict) -> QuotaConfig:
    t = doc.get("quotas", {})
    if not isinstance(t, dict):
        raise TopologyError("[quotas] must be a table")
    unknown = set(t) - {"items_per_s", "burst_items", "calls_in_flight"}
    if unknown:
        raise TopologyError(f"[quotas]: unknown keys {sorted(unknown)}")
    default = QuotaConfig()
    values = {}
    for key in ("items_per_s", "burst_items", "calls_in_flight"):
        value = t.get(key, getattr(default, key))
        if not _is_int(value) or not 1 <= value <= 10_000_000:
            raise TopologyError(f"[quotas] {key} must be an integer in 1..10000000")
        values[key] = value
    return QuotaConfig(**values)


def _tls_of(doc: dict, base_dir: pathlib.Path | None) -> TlsConfig | None:
    """[tls]: the three paths, or `plaintext = true`; there is no silent default."""
    t = doc.get("tls")
    if not isinstance(t, dict):
        raise TopologyError("no [tls] table: give ca, node_cert and node_key, or plaintext = true")
    if t.get("plaintext") is True:
        if any(k in t for k in ("ca", "node_cert", "node_key")):
            raise TopologyError("[tls]: plaintext = true with certificate paths; choose one")
        return None
    def path(key: str) -> str:
        value = _get(t, "tls", key, str)
        p = pathlib.Path(value)
        return str(base_dir / p) if not p.is_absolute() and base_dir is not None else value
    return TlsConfig(ca=pathlib.Path(path("ca")), node_cert=path("node_cert"), node_key=path("node_key"))


def _table(doc: dict, key: str) -> dict:
    t = doc.get(key)
    if not isinstance(t, dict):
        raise TopologyError(f"missing [{key}] table")
    return t


def _array(doc: dict, key: str) -> list[dict]:
    a = doc.get(key)
    if a is None:
        raise TopologyError(f"no [[{key}]] entries")
    if not isinstance(a, list) or not all(isinstance(x, dict) for x in a):
        raise TopologyError(f"{key} must be an array of tables ([[{key}]])")
    return a


_TYPE_NAMES = {str: "a string", int: "an integer", list: "a list"}


def _get(t: dict, where: str, key: str, typ: type, *, required: bool = True):
    if key not in t:
        if required:
            name = t.get("name", t.get("id"))
            at = f"{where} {name!r}" if name is not None and key not in ("name", "id") else f"[{where}]"
            raise TopologyError(f"{at}: missing key {key!r}")
        return None
    v = t[key]
    if (typ is int and not _is_int(v)) or (typ is not int and not isinstance(v, typ)):
        raise TopologyError(f"[{where}] {key} must be {_TYPE_NAMES[typ]}, not {v!r}")
    return v


def _toml_str(s: str) -> str:
    out = ['"']
    for ch in s:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)

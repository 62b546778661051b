"""The `tidebank` admin CLI: run local clusters, look at any cluster, poke the ledger.

Every command that talks to a cluster takes `--dir DIR` (a local cluster folder,
as made by `tidebank cluster up`) or `--endpoints HOST:PORT,...`. Commands whose
output is data take `-o table|json`. Exit codes: 0 ok, 1 failed or unhealthy (for `dc`: a node not
reached; for `audit`: a mismatch), 2 bad arguments or (for `status`/`shard-map`/`dc`/
`audit`) no node reachable, 3 (`audit`) transactions still in flight.
"""

from __future__ import annotations

import enum
import functools
import json
import os
import pathlib
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import grpc
import typer
from rich.console import Console
from rich.table import Table

from tidebank import __version__
from tidebank.cluster.launcher import (
    CONFIG_NAME,
    ClusterError,
    LocalCluster,
    NodeExitedError,
    NoReachableNode,
    StatusReport,
    collect_status,
    fetch_shard_map,
    targets_from_shard_map,
    targets_from_topology,
)
from tidebank.common.keys import U128_MAX
from tidebank.common.topology import Topology, TopologyError, split_address

DEBUG_ENV = "TIDEBANK_DEBUG"  # set to show tracebacks instead of one-line errors

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

app = typer.Typer(
    name="tidebank",
    help="tidebank admin CLI: local clusters, cluster status, accounts, transfers and escrow trades.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
cluster_app = typer.Typer(help="Run a local multi-DC cluster (one process per node).", no_args_is_help=True)
node_app = typer.Typer(help="Run one storage node, or disturb one in a local cluster.", no_args_is_help=True)
account_app = typer.Typer(help="Create and look up accounts.", no_args_is_help=True)
transfer_app = typer.Typer(help="Create and look up transfers.", no_args_is_help=True)
trade_app = typer.Typer(
    help="Escrow (guaranteed) payments: open trades, ship, confirm, refund, disputes, and the escrow book.",
    no_args_is_help=True,
)
dispute_app = typer.Typer(help="Open, withdraw or resolve a trade's dispute.", no_args_is_help=True)
trade_app.add_typer(dispute_app, name="dispute")
dc_app = typer.Typer(
    help="Simulate data-centre network faults: cut a DC off, add latency between DCs, heal. "
    "Faults live in the nodes' memory: a restarted node has none until the next `dc` command.",
    no_args_is_help=True,
)
app.add_typer(cluster_app, name="cluster")
app.add_typer(node_app, name="node")
app.add_typer(account_app, name="account")
app.add_typer(transfer_app, name="transfer")
app.add_typer(trade_app, name="trade")
app.add_typer(dc_app, name="dc")


class Output(enum.StrEnum):
    table = "table"
    json = "json"


DirOpt = Annotated[
    pathlib.Path | None,
    typer.Option("--dir", "-d", help="Local cluster folder (holds cluster.toml).", file_okay=False),
]
EndpointsOpt = Annotated[
    str | None,
    typer.Option("--endpoints", "-e", help="Comma-separated node endpoints.", metavar="HOST:PORT,..."),
]
OutputOpt = Annotated[Output, typer.Option("--output", "-o", help="Output format.")]
TimeoutOpt = Annotated[float, typer.Option("--timeout", help="Per-request timeout in seconds.", min=0.1)]
NodeOpt = Annotated[str, typer.Option("--node", "-n", help="Node name (as in cluster.toml).")]
NodeArg = Annotated[
    str | None, typer.Argument(help="Node name (as in cluster.toml).", metavar="NODE", show_default=False)
]
NodeOptAlt = Annotated[
    str | None, typer.Option("--node", "-n", help="Node name (same as the NODE argument).", show_default=False)
]


# ---- plumbing ----------------------------------------------------------------------

F = TypeVar("F", bound=Callable[..., Any])


def _one_line_errors(fn: F) -> F:
    """Turn exceptions into a one-line `error: ...` and exit code 1 (set
    TIDEBANK_DEBUG=1 for the traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None
        except Exception as e:
            if os.environ.get(DEBUG_ENV):
                raise
            err.print(f"error: {_describe(e)}", markup=False)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def _describe(e: BaseException) -> str:
    if isinstance(e, grpc.RpcError) and hasattr(e, "code"):
        return f"{e.code().name}: {e.details()}"
    if isinstance(e, KeyError) and e.args:
        return str(e.args[0])
    if isinstance(e, TopologyError | ClusterError | TimeoutError | FileExistsError):
        return str(e)
    if isinstance(e, OSError) and e.strerror:
        return f"{e.filename}: {e.strerror}" if e.filename else e.strerror
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"error: {message}", markup=False)
    return typer.Exit(code)


def _parse_endpoints(text: str) -> list[str]:
    endpoints = [e.strip() for e in text.split(",") if e.strip()]
    if not endpoints:
        raise typer.BadParameter("no endpoints given", param_hint="'--endpoints'")
    for e in endpoints:
        try:
            split_address(e)
        except TopologyError as exc:
            raise typer.BadParameter(str(exc), param_hint="'--endpoints'") from None
    return endpoints


def _require_target(dir: pathlib.Path | None, endpoints: str | None) -> None:
    if (dir is None) == (endpoints is None):
        raise typer.BadParameter(
            "give exactly one of --dir DIR or --endpoints HOST:PORT,...", param_hint="'--dir' / '--endpoints'"
        )


def _resolve_endpoints(dir: pathlib.Path | None, endpoints: str | None) -> list[str]:
    _require_target(dir, endpoints)
    if endpoints is not None:
        return _parse_endpoints(endpoints)
    return LocalCluster.open(dir).endpoints


def _parse_id(text: str, what: str = "id") -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise typer.BadParameter(f"{what} {text!r} is not an integer (decimal or 0x hex)") from None
    if not 0 < value < U128_MAX:
        raise typer.BadParameter(f"{what} {text} is out of range: ids are 1 .. 2^128-2")
    return value


def _print_table(table: Table) -> None:
    if not table.row_count:
        return
    # Piped output gets the table's natural width instead of rich's default 80 columns.
    (out if out.is_terminal else Console(highlight=False, width=max(out.width, 240))).print(table)


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2))


def _flag_names(flag_enum: type, value: int) -> list[str]:
    return [m.name.lower() for m in flag_enum if m.value and value & m.value == m.value]


def _flag(flag_enum: type, name: str):
    wanted = name.strip().lower().replace("-", "_")
    for m in flag_enum:
        if m.name.lower() == wanted and m.value:
            return m
    valid = ", ".join(m.name.lower() for m in flag_enum if m.value)
    raise typer.BadParameter(f"unknown flag {name.strip()!r} (valid: {valid})", param_hint="'--flags'")


def _parse_flags(flag_enum: type, text: str | None) -> int:
    value = 0
    for part in (text or "").split(","):
        if part.strip():
            value |= int(_flag(flag_enum, part))
    return value


def _client(endpoints: list[str], timeout_s: float):
    from tidebank.client import Client  # imported late: commands without a client start faster

    return Client(endpoints, timeout_s=timeout_s)


def _status_name(status: Any) -> str:
    name = getattr(status, "name", None)
    return name.lower() if isinstance(name, str) else str(status)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"tidebank {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", help="Show the version and exit.", callback=_version_callback, is_eager=True)
    ] = False,
) -> None:
    """tidebank admin CLI: local clusters, cluster status, accounts, transfers and escrow trades."""


# ---- cluster -----------------------------------------------------------------------


@cluster_app.command("up")
@_one_line_errors
def cluster_up(
    dir: Annotated[pathlib.Path, typer.Option("--dir", "-d", help="Cluster folder.", file_okay=False)],
    dcs: Annotated[int | None, typer.Option(help="Data centres: 3 or 5 (new clusters only). [default: 3]")] = None,
    nodes_per_dc: Annotated[
        int | None, typer.Option(help="Nodes per DC (new clusters only). [default: 1]", min=1)
    ] = None,
    shards: Annotated[int | None, typer.Option(help="Shards (new clusters only). [default: 4]", min=1)] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait for leaders.", min=1)] = 60.0,
    output: OutputOpt = Output.table,
) -> None:
    """Create a local cluster in DIR (or reuse DIR/cluster.toml), start it, wait until
    every shard has a leader, and print the client endpoints."""
    if dcs is not None and dcs not in (3, 5):
        raise typer.BadParameter("a shard has one replica per DC: 3 or 5", param_hint="'--dcs'")
    config = dir / CONFIG_NAME
    if config.exists():
        cluster = LocalCluster.open(dir)
        topo = cluster.topology
        per_dc = len(topo.nodes) // len(topo.dcs)
        asked = {
            "--dcs": (dcs, len(topo.dcs)),
            "--nodes-per-dc": (nodes_per_dc, per_dc),
            "--shards": (shards, len(topo.shards)),
        }
        for opt, (want, have) in asked.items():
            if want is not None and want != have:
                err.print(f"note: reusing {config}: {opt} {want} ignored, the cluster has {have}")
    else:
        cluster = LocalCluster.create(dir, dcs=dcs or 3, nodes_per_dc=nodes_per_dc or 1, shards=shards or 4)
    topo = cluster.topology
    try:
        to_start = [n for n in topo.node_names if not cluster.is_running(n)]
        cluster.start(to_start)
        if output == Output.table:
            err.print(f"starting {len(to_start)} of {len(topo.nodes)} nodes in {cluster.dir} ...")
        try:
            cluster.wait_ready(timeout_s=timeout)
        except KeyboardInterrupt:
            cluster.stop(to_start)
            raise
        except (NodeExitedError, TimeoutError, ClusterError) as e:
            err.print(f"error: cluster did not become ready: {e}", markup=False)
            if not isinstance(e, NodeExitedError):
                for name in to_start:
                    tail = cluster.log_tail(name, lines=8)
                    if tail:
                        err.print(f"--- {cluster.log_path(name)} (last lines)", markup=False)
                        err.print(tail, markup=False)
            stopped = cluster.stop(to_start)
            if stopped:
                err.print(f"stopped the nodes it started ({', '.join(stopped)}); logs in {cluster.logs_dir}")
            raise typer.Exit(1) from None
    finally:
        cluster.close()
    endpoints = ",".join(cluster.endpoints)
    if output == Output.json:
        _print_json(
            {
                "dir": str(cluster.dir),
                "config": str(cluster.config_path),
                "endpoints": cluster.endpoints,
                "nodes": [
                    {"node": n.name, "dc": n.dc, "address": n.grpc_address, "pid": cluster.pid(n.name)}
                    for n in topo.nodes
                ],
            }
        )
        return
    out.print(
        f"cluster {topo.cluster_name} ready: {len(topo.nodes)} nodes in {len(topo.dcs)} DCs, "
        f"{len(topo.shards)} shards ({cluster.config_path})"
    )
    out.print(f"endpoints: {endpoints}")
    out.print(f"try: tidebank status --dir {dir}")


@cluster_app.command("down")
@_one_line_errors
def cluster_down(
    dir: Annotated[pathlib.Path, typer.Option("--dir", "-d", help="Cluster folder.", file_okay=False)],
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds before SIGKILL.", min=0)] = 10.0,
) -> None:
    """Stop every node of the local cluster in DIR (data and logs are kept)."""
    cluster = LocalCluster.open(dir)
    stopped = cluster.stop(timeout_s=timeout)
    out.print(f"stopped {', '.join(stopped)}" if stopped else "no node was running")


# ---- node --------------------------------------------------------------------------


@node_app.command("start")
@_one_line_errors
def node_start(
    config: Annotated[
        pathlib.Path, typer.Option("--config", "-c", help="Topology file (cluster.toml).", exists=True, dir_okay=False)
    ],
    node: NodeOpt,
) -> None:
    """Run one storage node in the foreground until SIGTERM or Ctrl-C."""
    topo = Topology.load(config)
    topo.node(node)  # a clear error before the node process starts up
    from tidebank.node.server import main as node_main

    raise typer.Exit(node_main(str(config), node) or 0)


LocalDirOpt = Annotated[pathlib.Path, typer.Option("--dir", "-d", help="Local cluster folder.", file_okay=False)]


def _node_name(argument: str | None, option: str | None) -> str:
    """NODE as the positional argument or as --node (the older spelling); one is needed."""
    if argument is None and option is None:
        raise typer.BadParameter("name the node: NODE or --node NODE", param_hint="'NODE'")
    if argument is not None and option is not None and argument != option:
        raise typer.BadParameter(f"two different nodes given: {argument} and --node {option}", param_hint="'NODE'")
    return argument if argument is not None else option  # type: ignore[return-value]


@node_app.command("stop")
@_one_line_errors
def node_stop(dir: LocalDirOpt, node_arg: NodeArg = None, node: NodeOptAlt = None) -> None:
    """Stop a node of a local cluster cleanly (SIGTERM, SIGKILL after 10 s)."""
    node = _node_name(node_arg, node)
    stopped = LocalCluster.open(dir).stop([node])
    out.print(f"stopped {node}" if stopped else f"{node} was not running")


@node_app.command("kill")
@_one_line_errors
def node_kill(dir: LocalDirOpt, node_arg: NodeArg = None, node: NodeOptAlt = None) -> None:
    """SIGKILL a node of a local cluster (a crash)."""
    node = _node_name(node_arg, node)
    LocalCluster.open(dir).kill(node)
    out.print(f"killed {node}")


@node_app.command("pause")
@_one_line_errors
def node_pause(dir: LocalDirOpt, node_arg: NodeArg = None, node: NodeOptAlt = None) -> None:
    """SIGSTOP a node of a local cluster (a hung process)."""
    node = _node_name(node_arg, node)
    LocalCluster.open(dir).pause(node)
    out.print(f"paused {node}")


@node_app.command("resume")
@_one_line_errors
def node_resume(dir: LocalDirOpt, node_arg: NodeArg = None, node: NodeOptAlt = None) -> None:
    """SIGCONT a paused node of a local cluster."""
    node = _node_name(node_arg, node)
    LocalCluster.open(dir).resume(node)
    out.print(f"resumed {node}")


@node_app.command("restart")
@_one_line_errors
def node_restart(
    dir: LocalDirOpt,
    node_arg: NodeArg = None,
    node: NodeOptAlt = None,
    wait: Annotated[bool, typer.Option(help="Wait until every shard has a leader again.")] = True,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait.", min=1)] = 60.0,
) -> None:
    """Restart a node of a local cluster on the same data (start it if it is down).

    A restarted node has no simulated link faults (they live in memory): re-send them
    with `tidebank dc ...`."""
    node = _node_name(node_arg, node)
    cluster = LocalCluster.open(dir)
    cluster.restart(node)
    if wait:
        cluster.wait_ready(timeout_s=timeout)
        out.print(f"restarted {node}; every shard has a leader")
    else:
        out.print(f"restarted {node}")


# ---- status and shard map ----------------------------------------------------------

_ROLE_STYLE = {"leader": "bold green", "follower": "", "candidate": "yellow", "down": "red", "absent": "red"}


def _status_report(dir: pathlib.Path | None, endpoints: str | None, timeout_s: float) -> StatusReport:
    _require_target(dir, endpoints)
    if dir is not None:
        return collect_status(targets_from_topology(LocalCluster.open(dir).topology), timeout_s)
    shard_map = fetch_shard_map(_parse_endpoints(endpoints), timeout_s)
    return collect_status(targets_from_shard_map(shard_map), timeout_s)


def _num(v: int | None) -> str:
    return "-" if v is None else str(v)


@app.command("status")
@_one_line_errors
def status(
    dir: DirOpt = None, endpoints: EndpointsOpt = None, output: OutputOpt = Output.table, timeout: TimeoutOpt = 2.0
) -> None:
    """One row per shard replica: role, term, commit and applied index, lag.

    Exit code 1 when a shard has no leader or no quorum, 2 when no node answers."""
    try:
        report = _status_report(dir, endpoints, timeout)
    except NoReachableNode as e:
        if output == Output.json:
            _print_json(
                {"healthy": False, "problems": [str(e)], "nodes_total": 0, "nodes_reachable": 0, "replicas": []}
            )
        raise _fail(str(e), 2) from None
    if output == Output.json:
        _print_json(report.to_dict())
    else:
        table = Table(box=None, pad_edge=False)
        for col in ("NODE", "DC", "ADDRESS", "SHARD", "ROLE", "TERM", "COMMIT", "APPLIED", "LAG"):
            table.add_column(col, justify="right" if col in ("SHARD", "TERM", "COMMIT", "APPLIED", "LAG") else "left")
        for r in report.rows:
            table.add_row(
                r.node,
                r.dc,
                r.address,
                str(r.shard),
                f"[{_ROLE_STYLE.get(r.role, '')}]{r.role}[/]" if _ROLE_STYLE.get(r.role) else r.role,
                _num(r.term),
                _num(r.commit_index),
                _num(r.applied_index),
                _num(r.lag),
            )
        _print_table(table)
        summary = f"{report.nodes_reachable}/{report.nodes_total} nodes answer"
        if report.healthy:
            out.print(f"{summary}; [green]healthy[/]")
        else:
            out.print(f"{summary}; [red]unhealthy[/]:")
            for p in report.problems:
                out.print(f"  - {p}", markup=False)
    if report.nodes_reachable == 0:
        raise typer.Exit(2)
    if not report.healthy:
        raise typer.Exit(1)


def _slots_text(slots) -> str:
    return ", ".join(f"{s.start}-{s.end - 1}" for s in slots)


@app.command("shard-map")
@_one_line_errors
def shard_map(
    dir: DirOpt = None, endpoints: EndpointsOpt = None, output: OutputOpt = Output.table, timeout: TimeoutOpt = 2.0
) -> None:
    """The shard map as the nodes serve it: slots, replicas and current leader of each
    shard (exit code 2 when no node answers)."""
    try:
        sm = fetch_shard_map(_resolve_endpoints(dir, endpoints), timeout)
    except NoReachableNode as e:
        raise _fail(str(e), 2) from None
    shards = sorted(sm.shards, key=lambda s: s.shard_id)
    if output == Output.json:
        _print_json(
            {
                "version": sm.version,
                "slot_count": sm.slot_count,
                "shards": [
                    {
                        "shard_id": s.shard_id,
                        "slots": [[r.start, r.end] for r in s.slots],
                        "leader_node": s.leader_node,
                        "replicas": [{"node": r.node, "dc": r.dc, "address": r.address} for r in s.replicas],
                    }
                    for s in shards
                ],
            }
        )
        return
    out.print(f"shard map version {sm.version}, {sm.slot_count} slots")
    table = Table(box=None, pad_edge=False)
    for col in ("SHARD", "SLOTS", "LEADER", "REPLICAS (preferred leader first)"):
        table.add_column(col, justify="right" if col == "SHARD" else "left")
    for s in shards:
        replicas = ", ".join(f"{r.node}@{r.dc}" for r in s.replicas)
        table.add_row(str(s.shard_id), _slots_text(s.slots), s.leader_node or "[red]none[/]", replicas)
    _print_table(table)


# ---- simulated data-centre faults ----------------------------------------------------


def _fault_nodes(dir: pathlib.Path | None, endpoints: str | None, timeout_s: float, pool) -> tuple[list, list[str]]:
    """(every node of the cluster, its DC names), from the topology or the shard map."""
    from tidebank.cluster.faults import discover_nodes, nodes_from_topology

    _require_target(dir, endpoints)
    if dir is not None:
        topo = LocalCluster.open(dir).topology
        return nodes_from_topology(topo), list(topo.dcs)
    try:
        nodes = discover_nodes(_parse_endpoints(endpoints), timeout_s, pool)
    except NoReachableNode as e:
        raise _fail(str(e), 2) from None
    return nodes, sorted({n.dc for n in nodes})


def _fault_secret(dir: pathlib.Path | None) -> str | None:
    """Fault injection is signed with the cluster secret: from DIR/cluster.toml, else the environment."""
    from tidebank.cluster.faults import cluster_secret

    return cluster_secret(LocalCluster.open(dir).topology.secret if dir is not None else None)


def _check_dc(dc: str, dcs: list[str], hint: str) -> None:
    if dc not in dcs:
        raise typer.BadParameter(f"unknown DC {dc!r} (DCs: {', '.join(dcs)})", param_hint=hint)


def _report_change(result, output: Output, verb: str) -> None:
    """Print what a `dc` command did; exit 1 if a node was not reached, 2 if none was."""
    if output == Output.json:
        _print_json(result.to_dict())
    else:
        table = Table(box=None, pad_edge=False)
        for col in ("NODE", "DC", "ADDRESS", "RESULT"):
            table.add_column(col)
        for n in result.nodes:
            result_text = "[green]ok[/]" if n.reachable else f"[red]{n.error}[/]"
            table.add_row(n.node.name, n.node.dc, n.node.address, result_text)
        _print_table(table)
        if result.after is not None:
            out.print(f"{verb}; link faults now: {result.after.describe()}", markup=False)
    failed = result.failed
    if failed and len(failed) == len(result.nodes):
        raise _fail("no node answered: nothing changed", 2)
    if failed:
        raise _fail(f"not reached (their link faults are unchanged): {', '.join(n.node.name for n in failed)}", 1)


def _change_faults(dir, endpoints, timeout_s: float, output: Output, verb: str, change, check=None) -> None:
    from tidebank.cluster.faults import change_tables
    from tidebank.cluster.launcher import ChannelPool

    with ChannelPool() as pool:
        nodes, dcs = _fault_nodes(dir, endpoints, timeout_s, pool)
        if check is not None:
            check(dcs)
        result = change_tables(nodes, change, timeout_s, pool, _fault_secret(dir))
    _report_change(result, output, verb)


@dc_app.command("partition")
@_one_line_errors
def dc_partition(
    dc: Annotated[str, typer.Argument(help="The data centre to cut off.", metavar="DC")],
    dir: DirOpt = None,
    endpoints: EndpointsOpt = None,
    output: OutputOpt = Output.table,
    timeout: TimeoutOpt = 2.0,
) -> None:
    """Cut DC off from every other DC, both directions (Raft and node-to-node RPC), on every node.

    Clients still reach its nodes. Other DCs already cut off stay cut off. Exit code 1 if a
    node could not be reached (it keeps its old table), 2 if none could."""
    _change_faults(dir, endpoints, timeout, output, f"partitioned {dc}", lambda t: t.partition(dc),
                   lambda dcs: _check_dc(dc, dcs, "'DC'"))


@dc_app.command("latency")
@_one_line_errors
def dc_latency(
    dc_a: Annotated[str, typer.Argument(help="One data centre.", metavar="DC_A")],
    dc_b: Annotated[str, typer.Argument(help="Another data centre.", metavar="DC_B")],
    ms: Annotated[int, typer.Argument(help="One-way delay in milliseconds (0 removes it).", metavar="MS",
                                      min=0, max=60_000)],
    dir: DirOpt = None,
    endpoints: EndpointsOpt = None,
    output: OutputOpt = Output.table,
    timeout: TimeoutOpt = 2.0,
) -> None:
    """Set the one-way delay between two DCs: MS from DC_A to DC_B and MS from DC_B to DC_A
    (a round trip between them takes 2 x MS longer). Messages are delayed, never reordered.

    Exit code 1 if a node could not be reached, 2 if none could."""
    if dc_a == dc_b:
        raise typer.BadParameter("latency is between two different DCs", param_hint="'DC_B'")

    def check(dcs: list[str]) -> None:
        _check_dc(dc_a, dcs, "'DC_A'")
        _check_dc(dc_b, dcs, "'DC_B'")

    _change_faults(dir, endpoints, timeout, output, f"set {dc_a}<->{dc_b} one-way delay to {ms} ms",
                   lambda t: t.with_latency(dc_a, dc_b, ms), check)


@dc_app.command("heal")
@_one_line_errors
def dc_heal(
    dir: DirOpt = None, endpoints: EndpointsOpt = None, output: OutputOpt = Output.table, timeout: TimeoutOpt = 2.0
) -> None:
    """Remove every simulated fault (isolation and delays) on every node.

    Exit code 1 if a node could not be reached, 2 if none could."""
    from tidebank.cluster.faults import ChangeResult, send_table
    from tidebank.cluster.launcher import ChannelPool
    from tidebank.node.links import LinkTable

    with ChannelPool() as pool:
        nodes, _ = _fault_nodes(dir, endpoints, timeout, pool)
        healed = LinkTable.healed()
        result = ChangeResult(None, healed, send_table(nodes, healed, timeout, pool, _fault_secret(dir)))
    _report_change(result, output, "healed")


@dc_app.command("status")
@_one_line_errors
def dc_status(
    dir: DirOpt = None, endpoints: EndpointsOpt = None, output: OutputOpt = Output.table, timeout: TimeoutOpt = 2.0
) -> None:
    """Each node's table of simulated link faults.

    Exit code 1 if a node could not be reached or the nodes' tables differ, 2 if no node answers."""
    from tidebank.cluster.faults import consistent, fetch_tables
    from tidebank.cluster.launcher import ChannelPool

    with ChannelPool() as pool:
        nodes, _ = _fault_nodes(dir, endpoints, timeout, pool)
        answers = fetch_tables(nodes, timeout, pool)
    same = consistent(answers)
    if output == Output.json:
        _print_json(
            {
                "consistent": same,
                "nodes": [
                    {
                        "node": a.node.name,
                        "dc": a.node.dc,
                        "address": a.node.address,
                        "reachable": a.reachable,
                        "error": a.error,
                        "faults": a.table.to_dict() if a.table is not None else None,
                    }
                    for a in answers
                ],
            }
        )
    else:
        table = Table(box=None, pad_edge=False)
        for col in ("NODE", "DC", "ADDRESS", "LINK FAULTS"):
            table.add_column(col)
        for a in answers:
            text = a.table.describe() if a.table is not None else f"[red]{a.error}[/]"
            table.add_row(a.node.name, a.node.dc, a.node.address, text)
        _print_table(table)
        if not same:
            out.print("[red]the nodes' tables differ[/] (a restarted node has none): run a `dc` command again")
    if answers and all(not a.reachable for a in answers):
        raise typer.Exit(2)
    if not same or any(not a.reachable for a in answers):
        raise typer.Exit(1)


# ---- audit -------------------------------------------------------------------------


def _totals_targets(dir: pathlib.Path | None, endpoints: str | None, timeout_s: float,
                    pool) -> tuple[list[str], list[int]]:
    """(every node address, every shard id) to ask for ledger totals: from the topology or the
    shard map (exit code 2 when no node serves one)."""
    _require_target(dir, endpoints)
    if dir is not None:
        topo = LocalCluster.open(dir).topology
        return topo.endpoints, [s.shard_id for s in topo.shards]
    try:
        sm = fetch_shard_map(_parse_endpoints(endpoints), timeout_s, pool)
    except NoReachableNode as e:
        raise _fail(str(e), 2) from None
    return list(dict.fromkeys(r.address for s in sm.shards for r in s.replicas)), [s.shard_id for s in sm.shards]


@app.command("audit")
@_one_line_errors
def audit(
    dir: DirOpt = None,
    endpoints: EndpointsOpt = None,
    output: OutputOpt = Output.table,
    wait_s: Annotated[
        float, typer.Option("--wait-s", help="Seconds to re-poll while transactions are in flight.", min=0)
    ] = 10.0,
    timeout: Annotated[float, typer.Option("--timeout", help="Per-request timeout in seconds.", min=0.1)] = 5.0,
) -> None:
    """Check that the money adds up: per ledger over all shards (each read on its leader,
    linearizable), debits posted == credits posted, debits pending == credits pending, and
    the remote (cross-shard) legs match; and the escrow book: what the trades hold == the
    escrow accounts' balance, the fees they took == the fee accounts' balance.

    While cross-shard transactions are prepared somewhere, re-polls for up to --wait-s.
    Exit codes: 0 balanced, 1 mismatch, 2 a shard has no leader that answers (or no node
    answers), 3 still not quiescent after --wait-s."""
    import time

    from tidebank.cluster.audit import audit as judge
    from tidebank.cluster.audit import collect_totals
    from tidebank.cluster.launcher import ChannelPool

    with ChannelPool() as pool:
        addresses, expected = _totals_targets(dir, endpoints, timeout, pool)
        deadline = time.monotonic() + wait_s
        polls = 0
        while True:
            answers, unreachable = collect_totals(addresses, timeout, pool)
            report = judge(answers, expected, unreachable)
            polls += 1
            if report.settled or time.monotonic() >= deadline:
                break
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
    if output == Output.json:
        _print_json({**report.to_dict(), "polls": polls})
    else:
        _print_audit(report, polls)
    if report.exit_code:
        raise typer.Exit(report.exit_code)


def _print_audit(report, polls: int) -> None:
    table = Table(box=None, pad_edge=False)
    cols = ("LEDGER", "DEBITS POSTED", "CREDITS POSTED", "DEBITS PENDING", "CREDITS PENDING", "RESERVED D/C",
            "REMOTE POSTED D/C", "REMOTE PENDING D/C", "CHECK")
    for col in cols:
        table.add_column(col, justify="left" if col in ("CHECK",) else "right")
    bad: dict[tuple[str, int], list] = {}
    for m in report.mismatches:
        bad.setdefault((m.book, m.ledger), []).append(m)

    def check(book: str, ledger: int) -> str:
        problems = bad.get((book, ledger), [])
        if not problems:
            return "[green]ok[/]"
        return "[red]" + "; ".join(f"{m.left} - {m.right} = {m.difference:+d}" for m in problems) + "[/]"

    for ledger, t in report.ledgers.items():
        table.add_row(
            str(ledger),
            str(t["debits_posted"]),
            str(t["credits_posted"]),
            str(t["debits_pending"]),
            str(t["credits_pending"]),
            f"{t['reserved_debits']}/{t['reserved_credits']}",
            f"{t['remote_debits_posted']}/{t['remote_credits_posted']}",
            f"{t['remote_debits_pending']}/{t['remote_credits_pending']}",
            check("ledger", ledger),
        )
    _print_table(table)
    if report.escrow:
        escrow = Table(box=None, pad_edge=False, title="escrow", title_justify="left")
        for col in ("LEDGER", "HELD", "ESCROW BALANCE", "FEES", "FEE BALANCE", "CHECK"):
            escrow.add_column(col, justify="left" if col == "CHECK" else "right")
        for ledger, t in report.escrow.items():
            escrow.add_row(str(ledger), str(t["held"]), str(t["escrow_balance"]), str(t["fees"]),
                           str(t["fee_balance"]), check("escrow", ledger))
        _print_table(escrow)
    shards = ", ".join(f"{s.shard_id}@{s.node}" for s in sorted(report.shards.values(), key=lambda s: s.shard_id))
    out.print(f"{len(report.shards)} shards read on their leaders ({shards}); {len(report.ledgers)} ledgers; "
              f"{polls} poll(s)", markup=False)
    if report.unreachable:
        out.print(f"not answering: {', '.join(report.unreachable)}", markup=False)
    if report.missing_shards:
        out.print(f"[red]incomplete[/]: no leader answered for shard(s) {', '.join(map(str, report.missing_shards))}")
    elif not report.quiescent:
        in_flight = ", ".join(f"shard {s}: {n}" for s, n in sorted(report.in_flight.items()))
        out.print(f"[yellow]not quiescent[/]: prepared cross-shard transactions in flight ({in_flight})")
    elif report.mismatches:
        out.print("[red]MISMATCH[/]:")
        for m in report.mismatches:
            prefix = "escrow book, " if m.book == "escrow" else ""
            out.print(f"  - {prefix}{m.describe()}", markup=False)
    else:
        escrow_text = "; held == escrow balance and fees == fee balance" if report.escrow else ""
        out.print(f"[green]balanced[/]: every ledger's debits equal its credits{escrow_text}")


# ---- accounts ----------------------------------------------------------------------

ClientTimeoutOpt = Annotated[float, typer.Option("--timeout-s", help="Client request timeout in seconds.", min=0.1)]


def _print_results(results: list, output: Output) -> None:
    """Per-item results of create_accounts/create_transfers; exit code 1 unless all ok."""
    rows = [{"index": r.index, "id": str(r.id), "status": _status_name(r.status), "ok": r.ok} for r in results]
    if output == Output.json:
        _print_json(rows)
    else:
        table = Table(box=None, pad_edge=False)
        for col in ("INDEX", "ID", "RESULT"):
            table.add_column(col, justify="right" if col == "INDEX" else "left")
        for row in rows:
            style = "green" if row["ok"] else "red"
            table.add_row(str(row["index"]), row["id"], f"[{style}]{row['status']}[/]")
        _print_table(table)
    if not rows or not all(row["ok"] for row in rows):
        raise typer.Exit(1)


@account_app.command("create")
@_one_line_errors
def account_create(
    ledger: Annotated[int, typer.Option(help="Ledger (currency), nonzero.", min=1)],
    code: Annotated[int, typer.Option(help="Account type, nonzero.", min=1)],
    id: Annotated[
        str | None, typer.Option("--id", help="Account id (default: a new time-ordered id).", metavar="ID")
    ] = None,
    flags: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated: linked, debits_must_not_exceed_credits, credits_must_not_exceed_debits, "
            "history, closed."
        ),
    ] = None,
    user_data_128: Annotated[int, typer.Option(min=0)] = 0,
    user_data_64: Annotated[int, typer.Option(min=0)] = 0,
    user_data_32: Annotated[int, typer.Option(min=0)] = 0,
    dir: DirOpt = None,
    endpoints: EndpointsOpt = None,
    output: OutputOpt = Output.table,
    timeout_s: ClientTimeoutOpt = 10.0,
) -> None:
    """Create one account and print its result (exit code 1 unless created)."""
    targets = _resolve_endpoints(dir, endpoints)
    account_id = _parse_id(id) if id is not None else None
    from tidebank.client import Account, AccountFlags, new_id

    account_id = account_id or new_id()
    account = Account(
        id=account_id,
        ledger=ledger,
        code=code,
        flags=_parse_flags(AccountFlags, flags),
        user_data_128=user_data_128,
        user_data_64=user_data_64,
        user_data_32=user_data_32,
    )
    with _client(targets, timeout_s) as c:
        results = c.create_accounts([account])
    _print_results(results, output)


def _account_dict(a: Any, flag_enum: type) -> dict:
    return {
        "id": str(a.id),
        "ledger": a.ledger,
        "code": a.code,
        "flags": _flag_names(flag_enum, int(a.flags)),
        "debits_pending": a.debits_pending,
        "debits_posted": a.debits_posted,
        "credits_pending": a.credits_pending,
        "credits_posted": a.credits_posted,
        "user_data_128": str(a.user_data_128),
        "user_data_64": a.user_data_64,
        "user_data_32": a.user_data_32,
        "timestamp": a.timestamp,
    }


def _print_missing(wanted: list[int], found: list[Any], what: str) -> bool:
    have = {int(x.id) for x in found}
    missing = [i for i in wanted if i not in have]
    for i in missing:
        err.print(f"{what} {i} not found")
    return bool(missing)


@account_app.command("get")
@_one_line_errors
def account_get(
    ids: Annotated[list[str], typer.Argument(help="Account ids (decimal or 0x hex).", metavar="ID...")],
    dir: DirOpt = None,
    endpoints: EndpointsOpt = None,
    output: OutputOpt = Output.table,
    timeout_s: ClientTimeoutOpt = 10.0,
) -> None:
    """Look up accounts and their balances (exit code 1 if any is not found)."""
    wanted = [_parse_id(i) for i in ids]
    targets = _resolve_endpoints(dir, endpoints)
    from tidebank.client import AccountFlags

    with _client(targets, timeout_s) as c:
        accounts = c.lookup_accounts(wanted)
    rows = [_account_dict(a, AccountFlags) for a in accounts]
    if output == Output.json:
        _print_json(rows)
    else:
        table = Table(box=None, pad_edge=False)
        cols = ("ID", "LEDGER", "CODE", "FLAGS", "DEBITS PENDING", "DEBITS POSTED", "CREDITS PENDING", "CREDITS POSTED")
        for col in cols:
            table.add_column(col, justify="left" if col in ("ID", "FLAGS") else "right")
        for r in rows:
            table.add_row(
                r["id"],
                str(r["ledger"]),
                str(r["code"]),
                ",".join(r["flags"]) or "-",
                str(r["debits_pending"]),
                str(r["debits_posted"]),
                str(r["credits_pending"]),
                str(r["credits_posted"]),
            )
        _print_table(table)
    if _print_missing(wanted, accounts, "account"):
        raise typer.Exit(1)


# ---- transfers ---------------------------------------------------------------------


@transfer_app.command("create")
@_one_line_errors
def transfer_create(
    debit: Annotated[str | None, typer.Option("--debit", help="Debit account id.", metavar="ID")] = None,
    credit: Annotated[str | None, typer.Option("--credit", help="Credit account id.", metavar="ID")] = None,
    amount: Annotated[int | None, typer.Option(help="Amount in minor units.", min=0)] = None,
    ledger: Annotated[int | None, typer.Option(help="Ledger, same as the accounts'.", min=0)] = None,
    code: Annotated[int | None, typer.Option(help="Transfer code, nonzero.", min=0)] = None,
    id: Annotated[
        str | None, typer.Option("--id", help="Transfer id (default: a new time-ordered id).", metavar="ID")
    ] = None,
    pending: Annotated[bool, typer.Option("--pending", help="Reserve the amount; post or void it later.")] = False,
    timeout: Annotated[
        int, typer.Option("--timeout", help="Pending only: seconds until it expires (0 = never).", min=0)
    ] = 0,
    post: Annotated[
        str | None, typer.Option("--post", help="Post this pending transfer.", metavar="PENDING_ID")
    ] = None,
    void: Annotated[
        str | None, typer.Option("--void", help="Void this pending transfer.", metavar="PENDING_ID")
    ] = None,
    user_data_128: Annotated[int, typer.Option(min=0)] = 0,
    user_data_64: Annotated[int, typer.Option(min=0)] = 0,
    user_data_32: Annotated[int, typer.Option(min=0)] = 0,
    dir: DirOpt = None,
    endpoints: EndpointsOpt = None,
    output: OutputOpt = Output.table,
    timeout_s: ClientTimeoutOpt = 10.0,
) -> None:
    """Create one transfer and print its result (exit code 1 unless created).

    With --post or --void, only --debit is needed (the transfer is routed by its debit
    account); the credit account, amount, ledger and code are taken from the pending
    transfer when left out, and --amount may post less than was reserved."""
    if post is not None and void is not None:
        raise typer.BadParameter("give --post or --void, not both", param_hint="'--post' / '--void'")
    resolving = post is not None or void is not None
    if resolving and pending:
        raise typer.BadParameter(
            "--pending creates a pending transfer; --post/--void resolve one", param_hint="'--pending'"
        )
    if timeout and not pending:
        raise typer.BadParameter("only pending transfers have a timeout", param_hint="'--timeout'")
    given = {"--debit": debit, "--credit": credit, "--amount": amount, "--ledger": ledger, "--code": code}
    # Resolving a pending transfer needs only its debit account: the transfer is routed by it.
    needed = ["--debit"] if resolving else list(given)
    missing = [opt for opt in needed if given[opt] is None]
    if missing:
        raise typer.BadParameter(f"missing {', '.join(missing)}", param_hint="transfer")
    targets = _resolve_endpoints(dir, endpoints)
    transfer_id = _parse_id(id) if id is not None else None
    debit_id = _parse_id(debit, "debit account id") if debit is not None else 0
    credit_id = _parse_id(credit, "credit account id") if credit is not None else 0
    pending_id = _parse_id(post or void, "pending id") if resolving else 0
    from tidebank.client import Transfer, TransferFlags, new_id

    flags = 0
    if pending:
        flags |= TransferFlags.PENDING
    if post is not None:
        flags |= TransferFlags.POST_PENDING_TRANSFER
    if void is not None:
        flags |= TransferFlags.VOID_PENDING_TRANSFER
    transfer_id = transfer_id or new_id()
    transfer = Transfer(
        id=transfer_id,
        debit_account_id=debit_id,
        credit_account_id=credit_id,
        amount=amount or 0,
        pending_id=pending_id,
        user_data_128=user_data_128,
        user_data_64=user_data_64,
        user_data_32=user_data_32,
        timeout=timeout,
        ledger=ledger or 0,
        code=code or 0,
        flags=flags,
    )
    with _client(targets, timeout_s) as c:
        results = c.create_transfers([transfer])
    _print_results(results, output)


@transfer_app.command("get")
@_one_line_errors
def transfer_get(
    ids: Annotated[list[str], typer.Argument(help="Transfer ids (decimal or 0x hex).", metavar="ID...")],
    dir: DirOpt = None,
    endpoints: EndpointsOpt = None,
    output: OutputOpt = Output.table,
    timeout_s: ClientTimeoutOpt = 10.0,
) -> None:
    """Look up transfers (exit code 1 if any is not found)."""
    wanted = [_parse_id(i) for i in ids]
    targets = _resolve_endpoints(dir, endpoints)
    from tidebank.client import TransferFlags

    with _client(targets, timeout_s) as c:
        transfers = c.lookup_transfers(wanted)
    rows = [
        {
            "id": str(t.id),
            "debit_account_id": str(t.debit_account_id),
            "credit_account_id": str(t.credit_account_id),
            "amount": t.amount,
            "pending_id": str(t.pending_id),
            "ledger": t.ledger,
            "code": t.code,
            "flags": _flag_names(TransferFlags, int(t.flags)),
            "timeout": t.timeout,
            "user_data_128": str(t.user_data_128),
            "user_data_64": t.user_data_64,
            "user_data_32": t.user_data_32,
            "timestamp": t.timestamp,
        }
        for t in transfers
    ]
    if output == Output.json:
        _print_json(rows)
    else:
        table = Table(box=None, pad_edge=False)
        for col in ("ID", "DEBIT", "CREDIT", "AMOUNT", "LEDGER", "CODE", "FLAGS", "PENDING ID", "TIMESTAMP"):
            table.add_column(col, justify="right" if col in ("AMOUNT", "LEDGER", "CODE", "TIMESTAMP") else "left")
        for r in rows:
            table.add_row(
                r["id"],
                r["debit_account_id"],
                r["credit_account_id"],
                str(r["amount"]),
                str(r["ledger"]),
                str(r["code"]),
                ",".join(r["flags"]) or "-",
                r["pending_id"] if r["pending_id"] != "0" else "-",
                str(r["timestamp"]),
            )
        _print_table(table)
    if _print_missing(wanted, transfers, "transfer"):
        raise typer.Exit(1)


# ---- escrow trades -----------------------------------------------------------------

U32_MAX = (1 << 32) - 1
U64_MAX = (1 << 64) - 1
TRADE_BATCH_MAX = 8189
_TRADE_ID_FIELDS = frozenset(
    ("id", "buyer_account_id", "seller_account_id", "user_data_128", "escrow_account_id", "fee_account_id")
)
_TRADE_ENUM_PREFIXES = {
    "state": "trade_state_",
    "state_before_dispute": "trade_state_",
    "closed_by": "trade_closed_by_",
    "timer": "trade_timer_",
}
_OK_TRADE_RESULTS = ("ok", "exists")

TradeIdArg = Annotated[str, typer.Argument(help="Trade id (decimal or 0x hex).", metavar="ID", show_default=False)]
TradeIdsArg = Annotated[list[str], typer.Argument(help="Trade ids (decimal or 0x hex).", metavar="ID...")]
TradeTimeoutOpt = Annotated[
    float, typer.Option("--timeout-s", "--timeout", help="Client request timeout in seconds.", min=0.1)
]


def _enum_name(value: Any, prefix: str = "") -> str:
    """`TradeState.PAID` -> "paid" (an unknown number stays a number)."""
    name = _status_name(value)
    return name[len(prefix):] if prefix and name.startswith(prefix) else name


def _new_key(what: str, option: str) -> int:
    """A new idempotency key for a step the operator gave none for. It goes to stderr before the call,
    so the very same step can be retried with it (also when the outcome is unknown)."""
    from tidebank.client import new_id

    value = new_id()
    err.print(f"new {what} {value} (to retry this same step, pass {option} {value})", markup=False)
    return value


def _trade_results(results: list, output: Output, extra: dict[str, str] | None = None) -> None:
    """Per-item results of the trade steps; exit code 1 unless every one is ok or exists.

    `extra`: more columns, the same for every row (e.g. the refund id)."""
    extra = extra or {}
    rows = []
    for r in results:
        transfer_status = getattr(r, "transfer_status", None)
        status = _status_name(r.status)
        rows.append(
            {
                "index": r.index,
                "trade_id": str(r.trade_id),
                **extra,
                "status": status,
                "transfer_status": _status_name(transfer_status) if transfer_status is not None else None,
                "ok": status in _OK_TRADE_RESULTS,
            }
        )
    if output == Output.json:
        _print_json(rows)
    else:
        table = Table(box=None, pad_edge=False)
        for col in ("INDEX", "TRADE ID", *(k.upper().replace("_", " ") for k in extra), "RESULT"):
            table.add_column(col, justify="right" if col == "INDEX" else "left")
        for row in rows:
            style = "green" if row["ok"] else "red"
            text = row["status"] + (f" ({row['transfer_status']})" if row["transfer_status"] else "")
            table.add_row(str(row["index"]), row["trade_id"], *(row[k] for k in extra), f"[{style}]{text}[/]")
        _print_table(table)
    if not rows or not all(row["ok"] for row in rows):
        raise typer.Exit(1)


def _trade_ids(ids: list[str]) -> list[int]:
    if len(ids) > TRADE_BATCH_MAX:
        raise typer.BadParameter(f"at most {TRADE_BATCH_MAX} trade ids at once", param_hint="'ID...'")
    return [_parse_id(i, "trade id") for i in ids]


def _trade_dict(t: Any) -> dict:
    """Every field of the Trade (proto order): ids as strings, enums by name, money as numbers."""
    from tidebank.v1 import escrow_pb2

    row: dict[str, Any] = {}
    for f in escrow_pb2.Trade.DESCRIPTOR.fields:
        value = getattr(t, f.name)
        if f.name in _TRADE_ID_FIELDS:
            row[f.name] = str(int(value))
        elif f.name in _TRADE_ENUM_PREFIXES:
            row[f.name] = _enum_name(value, _TRADE_ENUM_PREFIXES[f.name])
        elif f.name == "refunds":
            row[f.name] = [{"refund_id": str(int(i)), "amount": int(a)} for i, a in value]
        elif f.name == "extensions":
            row[f.name] = [{"extension_id": str(int(i)), "extend_by_s": int(s)} for i, s in value]
        elif isinstance(value, bool):
            row[f.name] = value
        else:
            row[f.name] = int(value)
    return row


def _deadline_text(deadline_ns: int, remaining_ns: int, now_ns: int) -> str:
    """When the running timer fires (UTC) and in how many seconds; a paused timer's time left."""
    import datetime

    if deadline_ns:
        when = datetime.datetime.fromtimestamp(deadline_ns / 1e9, datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        seconds = round((deadline_ns - now_ns) / 1e9)
        return f"{when} (in {seconds} s)" if seconds >= 0 else f"{when} ({-seconds} s ago)"
    if remaining_ns:
        return f"paused ({round(remaining_ns / 1e9)} s left)"
    return "-"


def _print_trades(rows: list[dict]) -> None:
    import time

    now_ns = time.time_ns()
    table = Table(box=None, pad_edge=False)
    cols = ("ID", "STATE", "BUYER", "SELLER", "AMOUNT", "HELD", "REFUNDED", "RELEASED", "FEE", "TIMER", "DEADLINE",
            "CLOSED BY")
    for col in cols:
        table.add_column(col, justify="right" if col in ("AMOUNT", "HELD", "REFUNDED", "RELEASED", "FEE") else "left")
    for r in rows:
        state = r["state"] + (f" (was {r['state_before_dispute']})" if r["state"] == "disputed" else "")
        table.add_row(
            r["id"],
            state,
            r["buyer_account_id"],
            r["seller_account_id"],
            str(r["amount"]),
            str(r["held"]),
            str(r["refunded"]),
            str(r["released"]),
            str(r["fee"]),
            r["timer"] if r["timer"] != "none" else "-",
            _deadline_text(r["deadline"], r["timer_remaining_ns"], now_ns),
            r["closed_by"] if r["closed_by"] != "none" else "-",
        )
    _print_table(table)


@trade_app.command("create")
@_one_line_errors
def trade_create(
    buyer: Annotated[str, typer.Option("--buyer", help="Buyer account id (pays into escrow).", metavar="ID")],
    seller: Annotated[str, typer.Option("--seller", help="Seller account id (paid on release).", metavar="ID")],
    amount: Annotated[int, typer.Option(help="Amount in minor units, held in escrow.", min=1, max=U64_MAX)],
    ledger: Annotated[int, typer.Option(help="Ledger, same as the accounts'.", min=1, max=U32_MAX)],
    ship_by_s: Annotated[
        int, typer.Option("--ship-by-s", help="Seconds the seller has to ship (else refunded).", min=1, max=U32_MAX)
    ],
    auto_confirm_s: Annotated[
        int,
        typer.Option(
            "--auto-confirm-s", help="Seconds after shipping until released without a confirm.", min=1, max=U32_MAX
        ),
    ],
    fee_bps: Annotated[
        int, typer.Option("--fee-bps", help="Platform fee in basis points of what the seller gets.", min=0, max=10000)
    ] = 0,
    id: Annotated[
        str | None, typer.Option("--id", help="Trade id (default: a new time-ordered id).", metavar="ID")
    ] = None,
    user_data_128: Annotated[int, typer.Option(min=0, max=U128_MAX)] = 0,
    user_data_64: Annotated[int, typer.Option(min=0, max=U64_MAX)] = 0,
    user_data_32: Annotated[int, typer.Option(min=0, max=U32_MAX)] = 0,
    dir: DirOpt = None,
    endpoints: EndpointsOpt = None,
    output: OutputOpt = Output.table,
    timeout_s: TradeTimeoutOpt = 10.0,
) -> None:
    """Open a trade: the buyer's amount moves into escrow at once (or nothing happens).

    The trade id is the idempotency key: a retry with the same --id answers `exists`.
    Exit code 1 unless ok or exists."""
    buyer_id = _parse_id(buyer, "buyer account id")
    seller_id = _parse_id(seller, "seller account id")
    trade_id = _parse_id(id, "trade id") if id is not None else None
    targets = _resolve_endpoints(dir, endpoints)
    from tidebank.client import NewTrade

    trade_id = trade_id or _new_key("trade id", "--id")
    trade = NewTrade(
        id=trade_id,
        buyer_account_id=buyer_id,
        seller_account_id=seller_id,
        amount=amount,
        ledger=ledger,
        fee_bps=fee_bps,
        ship_by_timeout_s=ship_by_s,
        auto_confirm_timeout_s=auto_confirm_s,
        user_data_128=user_data_128,
        user_data_64=user_data_64,
        user_data_32=user_data_32,
    )
    with _client(targets, timeout_s) as c:
        results = c.create_trades([trade])
    _trade_results(results, output)


def _trade_step(method: str, ids: list[str], dir, endpoints, output: Output, timeout_s: float) -> None:
    wanted = _trade_ids(ids)
    targets = _resolve_endpoints(dir, endpoints)
    with _client(targets, timeout_s) as c:
        results = getattr(c, method)(wanted)
    _trade_results(results, output)


@trade_app.command("ship")
@_one_line_errors
def trade_ship(
    ids: TradeIdsArg,
    dir: DirOpt = None,
    endpoints: EndpointsOpt = None,
    output: OutputOpt = Output.table,
    timeout_s: TradeTimeoutOpt = 10.0,
) -> None:
    """The seller shipped: PAID -> SHIPPED, starts the auto-confirm timer (exit code 1 unless every
    result is ok or exists)."""
    _trade_step("ship_trades", ids, dir, endpoints, output, timeout_s)


@trade_app.command("confirm")
@_one_line_errors
def trade_confirm(
    ids: TradeIdsArg,
    dir: DirOpt = None,
    endpoints: EndpointsOpt = None,
    output: OutputOpt = Output.table,
    timeout_s: TradeTimeoutOpt = 10.0,
) -> None:
    """The buyer confirms receipt: the held amount less the fee goes to the seller, the fee to the
    platform (exit code 1 unless every result is ok or exists)."""
    _trade_step("confirm_trades", ids, dir, endpoints, output, timeout_s)


@trade_app.command("refund")
@_one_line_errors
def trade_refund(
    trade_id: TradeIdArg,
    amount: Annotated[int, typer.Option(help="Amount to give back to the buyer, from what is held.", min=1,
                                        max=U64_MAX)],
    refund_id: Annotated[
        str | None,
        typer.Option("--refund-id", help="Refund id, the idempotency key (default: a new id, printed).", metavar="ID"),
    ] = None,
    dir: DirOpt = None,
    endpoints: EndpointsOpt = None,
    output: OutputOpt = Output.table,
    timeout_s: TradeTimeoutOpt = 10.0,
) -> None:
    """Refund part or all of what a trade holds to its buyer.

    Each refund is idempotent by its refund id: to retry a refund, pass the id it was given
    (printed on stderr when generated). Exit code 1 unless ok or exists."""
    tid = _parse_id(trade_id, "trade id")
    rid = _parse_id(refund_id, "refund id") if refund_id is not None else None
    targets = _resolve_endpoints(dir, endpoints)
    from tidebank.client import Refund

    rid = rid or _new_key("refund id", "--refund-id")
    with _client(targets, timeout_s) as c:
        results = c.refund_trades([Refund(trade_id=tid, refund_id=rid, amount=amount)])
    _trade_results(results, output, {"refund_id": str(rid)})


@dispute_app.command("open")
@_one_line_errors
def trade_dispute_open(
    ids: TradeIdsArg,
    dir: DirOpt = None,
    endpoints: EndpointsOpt = None,
    output: OutputOpt = Output.table,
    timeout_s: TradeTimeoutOpt = 10.0,
) -> None:
    """Open a dispute: the trade's timer stops until it is withdrawn or resolved (one dispute per
    trade; exit code 1 unless every result is ok or exists)."""
    _trade_step("open_disputes", ids, dir, endpoints, output, timeout_s)


@dispute_app.command("withdraw")
@_one_line_errors
def trade_dispute_withdraw(
    ids: TradeIdsArg,
    dir: DirOpt = None,
    endpoints: EndpointsOpt = None,
    output: OutputOpt = Output.table,
    timeout_s: TradeTimeoutOpt = 10.0,
) -> None:
    """End a dispute without a ruling: the timer resumes with the time it had left (exit code 1
    unless every result is ok or exists)."""
    _trade_step("withdraw_disputes", ids, dir, endpoints, output, timeout_s)


@dispute_app.command("resolve")
@_one_line_errors
def trade_dispute_resolve(
    trade_id: TradeIdArg,
    buyer_amount: Annotated[
        int,
        typer.Option("--buyer-amount", help="To the buyer; the rest of what is held, less the fee, to the seller.",
                     min=0, max=U64_MAX),
    ],
    dir: DirOpt = None,
    endpoints: EndpointsOpt = None,
    output: OutputOpt = Output.table,
    timeout_s: TradeTimeoutOpt = 10.0,
) -> None:
    """Resolve a dispute by splitting what the trade holds; the trade is closed (exit code 1
    unless ok or exists)."""
    tid = _parse_id(trade_id, "trade id")
    targets = _resolve_endpoints(dir, endpoints)
    from tidebank.client import DisputeResolution

    with _client(targets, timeout_s) as c:
        results = c.resolve_disputes([DisputeResolution(trade_id=tid, buyer_amount=buyer_amount)])
    _trade_results(results, output)


@trade_app.command("extend")
@_one_line_errors
def trade_extend(
    trade_id: TradeIdArg,
    by_s: Annotated[int, typer.Option("--by-s", help="Seconds to add to the auto-confirm timer.", min=1,
                                      max=U32_MAX)],
    extension_id: Annotated[
        str | None,
        typer.Option("--extension-id", help="Extension id, the idempotency key (default: a new id, printed).",
                     metavar="ID"),
    ] = None,
    dir: DirOpt = None,
    endpoints: EndpointsOpt = None,
    output: OutputOpt = Output.table,
    timeout_s: TradeTimeoutOpt = 10.0,
) -> None:
    """The buyer extends the auto-confirm timer of a shipped trade.

    Idempotent by the extension id: to retry, pass the id it was given (printed on stderr
    when generated). Exit code 1 unless ok or exists."""
    tid = _parse_id(trade_id, "trade id")
    eid = _parse_id(extension_id, "extension id") if extension_id is not None else None
    targets = _resolve_endpoints(dir, endpoints)
    from tidebank.client import Extension

    eid = eid or _new_key("extension id", "--extension-id")
    with _client(targets, timeout_s) as c:
        results = c.extend_trades([Extension(trade_id=tid, extension_id=eid, extend_by_s=by_s)])
    _trade_results(results, output, {"extension_id": str(eid)})


@trade_app.command("get")
@_one_line_errors
def trade_get(
    ids: TradeIdsArg,
    dir: DirOpt = None,
    endpoints: EndpointsOpt = None,
    output: OutputOpt = Output.table,
    timeout_s: TradeTimeoutOpt = 10.0,
) -> None:
    """Look up trades: state, the money held, refunded, released and taken as fee, the running
    timer and when it fires (exit code 1 if any is not found). JSON has every field."""
    wanted = _trade_ids(ids)
    targets = _resolve_endpoints(dir, endpoints)
    with _client(targets, timeout_s) as c:
        trades = c.lookup_trades(wanted)
    rows = [_trade_dict(t) for t in trades]
    if output == Output.json:
        _print_json(rows)
    else:
        _print_trades(rows)
    if _print_missing(wanted, trades, "trade"):
        raise typer.Exit(1)


@trade_app.command("list")
@_one_line_errors
def trade_list(
    buyer: Annotated[
        str | None, typer.Option("--buyer", help="List the trades this account pays for.", metavar="ID")
    ] = None,
    seller: Annotated[
        str | None, typer.Option("--seller", help="List the trades this account sells in.", metavar="ID")
    ] = None,
    limit: Annotated[int, typer.Option(help="Page size.", min=1, max=TRADE_BATCH_MAX)] = 100,
    page_token: Annotated[
        str, typer.Option("--page-token", help="Continue from a previous page's next page token.", metavar="TOKEN")
    ] = "",
    all_pages: Annotated[bool, typer.Option("--all", help="Follow the pages to the end.")] = False,
    dir: DirOpt = None,
    endpoints: EndpointsOpt = None,
    output: OutputOpt = Output.table,
    timeout_s: TradeTimeoutOpt = 10.0,
) -> None:
    """The trades of one buyer or one seller account (give exactly one), oldest first, a page at a
    time; the next page token is printed when there are more (--all fetches them all)."""
    if (buyer is None) == (seller is None):
        raise typer.BadParameter("give exactly one of --buyer ID or --seller ID", param_hint="'--buyer' / '--seller'")
    account_id = _parse_id(buyer if buyer is not None else seller, "account id")  # type: ignore[arg-type]
    targets = _resolve_endpoints(dir, endpoints)
    from tidebank.client import TradeRole

    role = TradeRole.BUYER if buyer is not None else TradeRole.SELLER
    trades: list = []
    token = page_token
    with _client(targets, timeout_s) as c:
        while True:
            page = c.list_trades(account_id, role=role, limit=limit, page_token=token)
            trades += page.items
            if not all_pages or not page.next_page_token:
                token = page.next_page_token
                break
            if page.next_page_token == token:
                raise RuntimeError(f"the cluster returned the same page token twice ({token!r})")
            token = page.next_page_token
    rows = [_trade_dict(t) for t in trades]
    if output == Output.json:
        _print_json({"trades": rows, "next_page_token": token})
        return
    _print_trades(rows)
    who = "buyer" if buyer is not None else "seller"
    out.print(f"{len(rows)} trade(s) with {who} {account_id}", markup=False)
    if token:
        out.print(f"more: --page-token {token}", markup=False)


@trade_app.command("totals")
@_one_line_errors
def trade_totals(
    dir: DirOpt = None,
    endpoints: EndpointsOpt = None,
    output: OutputOpt = Output.table,
    timeout: Annotated[float, typer.Option("--timeout", help="Per-request timeout in seconds.", min=0.1)] = 5.0,
) -> None:
    """The escrow book per ledger, summed over every shard (each read on its leader): held in
    escrow, platform fees taken, released to sellers, refunded to buyers, the balances of the
    escrow and fee accounts, and trades by state. `tidebank audit` checks held == escrow
    balance and fees == fee balance.

    Exit code 2 when a shard has no leader that answers (or no node answers): the sums would
    leave it out."""
    from tidebank.cluster.audit import TRADE_COUNT_FIELDS, collect_totals, escrow_dict
    from tidebank.cluster.audit import audit as judge
    from tidebank.cluster.launcher import ChannelPool

    with ChannelPool() as pool:
        addresses, expected = _totals_targets(dir, endpoints, timeout, pool)
        answers, unreachable = collect_totals(addresses, timeout, pool)
    report = judge(answers, expected, unreachable)
    if output == Output.json:
        _print_json(
            {
                "complete": report.complete,
                "missing_shards": report.missing_shards,
                "unreachable": report.unreachable,
                "ledgers": [{"ledger": ledger, **escrow_dict(t)} for ledger, t in report.escrow.items()],
            }
        )
    else:
        table = Table(box=None, pad_edge=False)
        states = [f.removeprefix("trades_").upper() for f in TRADE_COUNT_FIELDS]
        for col in ("LEDGER", "HELD", "FEES", "RELEASED", "REFUNDED", "ESCROW BALANCE", "FEE BALANCE", *states):
            table.add_column(col, justify="right")
        for ledger, t in report.escrow.items():
            table.add_row(
                str(ledger),
                *(str(t[f]) for f in ("held", "fees", "released", "refunded", "escrow_balance", "fee_balance")),
                *(str(t[f]) for f in TRADE_COUNT_FIELDS),
            )
        _print_table(table)
        if not report.escrow:
            out.print("no trades on any ledger", markup=False)
        out.print(f"{len(report.shards)} shards read on their leaders; {len(report.escrow)} ledgers with trades",
                  markup=False)
        if report.unreachable:
            out.print(f"not answering: {', '.join(report.unreachable)}", markup=False)
    if report.missing_shards:
        raise _fail(f"incomplete: no leader answered for shard(s) {', '.join(map(str, report.missing_shards))}", 2)


# ---- demo --------------------------------------------------------------------------


@app.command("demo")
@_one_line_errors
def demo(
    dir: DirOpt = None,
    endpoints: EndpointsOpt = None,
    accounts: Annotated[int, typer.Option(help="Accounts to create.", min=4)] = 1000,
    transfers: Annotated[int, typer.Option(help="Transfers to run in batches.", min=0)] = 20000,
    batch_size: Annotated[int, typer.Option(help="Transfers per batch.", min=1, max=8189)] = 1000,
    concurrency: Annotated[int, typer.Option(help="Batches in flight at once.", min=1, max=64)] = 4,
    seed: Annotated[int | None, typer.Option(help="Random seed for the workload.")] = None,
    timeout_s: ClientTimeoutOpt = 10.0,
) -> None:
    """A short workload that shows the ledger at work: accounts on two ledgers,
    batched transfers, pending/post/void, a rejected and a linked transfer, an
    idempotent retry; then checks that debits equal credits (exit code 1 if not)."""
    from tidebank.cluster.demo import run_demo

    targets = _resolve_endpoints(dir, endpoints)
    report = run_demo(
        targets,
        accounts=accounts,
        transfers=transfers,
        batch_size=batch_size,
        concurrency=concurrency,
        seed=seed,
        timeout_s=timeout_s,
        console=out,
    )
    if not report.ok:
        raise typer.Exit(1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()

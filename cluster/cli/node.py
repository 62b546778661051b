"""`tidebank node ...`: run one storage node, add or drain and remove one in a local cluster, or disturb
one (stop, kill, pause, resume, restart) to see how the cluster copes."""

from __future__ import annotations

import pathlib
from typing import Annotated

import typer

from tidebank.cluster.cli._common import one_line_errors, out
from tidebank.cluster.launcher import LocalCluster
from tidebank.common.topology import Topology

app = typer.Typer(help="Run one storage node, or disturb one in a local cluster.", no_args_is_help=True)

NodeOpt = Annotated[str, typer.Option("--node", "-n", help="Node name (as in cluster.toml).")]
NodeArg = Annotated[
    str | None, typer.Argument(help="Node name (as in cluster.toml).", metavar="NODE", show_default=False)
]
NodeOptAlt = Annotated[
    str | None, typer.Option("--node", "-n", help="Node name (same as the NODE argument).", show_default=False)
]
LocalDirOpt = Annotated[pathlib.Path, typer.Option("--dir", "-d", help="Local cluster folder.", file_okay=False)]


@app.command("start")
@one_line_errors
def node_start(
    config: Annotated[
        pathlib.Path, typer.Option("--config", "-c", help="Topology file (cluster.toml).", exists=True, dir_okay=False)
    ],
    node: NodeOpt,
    tls_ca: Annotated[pathlib.Path | None, typer.Option("--tls-ca", help="Cluster CA (PEM).", exists=True,
                                                        dir_okay=False)] = None,
    tls_cert: Annotated[pathlib.Path | None, typer.Option("--tls-cert", help="This node's certificate (PEM).",
                                                          exists=True, dir_okay=False)] = None,
    tls_key: Annotated[pathlib.Path | None, typer.Option("--tls-key", help="This node's key (PEM, mode 0600).",
                                                         exists=True, dir_okay=False)] = None,
) -> None:
    """Run one storage node in the foreground until SIGTERM or Ctrl-C.

    Its TLS files come from [tls] of the topology, or from --tls-ca/--tls-cert/--tls-key (all three)."""
    topo = Topology.load(config)
    topo.node(node)  # a clear error before the node process starts up
    given = [tls_ca, tls_cert, tls_key]
    if any(given) and not all(given):
        raise typer.BadParameter("give all of --tls-ca, --tls-cert and --tls-key, or none", param_hint="'--tls-*'")
    from tidebank.common.tls import TlsFiles
    from tidebank.node.server import main as node_main

    raise typer.Exit(node_main(str(config), node, TlsFiles(*given) if all(given) else None) or 0)


def _node_name(argument: str | None, option: str | None) -> str:
    """NODE as the positional argument or as --node (the older spelling); one is needed."""
    if argument is None and option is None:
        raise typer.BadParameter("name the node: NODE or --node NODE", param_hint="'NODE'")
    if argument is not None and option is not None and argument != option:
        raise typer.BadParameter(f"two different nodes given: {argument} and --node {option}", param_hint="'NODE'")
    return argument if argument is not None else option  # type: ignore[return-value]


@app.command("add")
@one_line_errors
def node_add(
    name: Annotated[str, typer.Argument(help="The new node's name.", metavar="NAME")],
    dc: Annotated[str, typer.Option("--dc", help="Its data centre (one of the topology's DCs).")],
    dir: LocalDirOpt,
    grpc: Annotated[str | None, typer.Option("--grpc", help="Its client endpoint HOST:PORT [default: a free "
                                             "port on the cluster's host].", show_default=False)] = None,
    raft: Annotated[str | None, typer.Option("--raft", help="Its Raft endpoint HOST:PORT [default: a free port "
                                             "on the cluster's host].", show_default=False)] = None,
    metrics_port: Annotated[int | None, typer.Option("--metrics-port", help="Prometheus port, 0 = off "
                                                     "[default: a free port].", min=0, max=65535,
                                                     show_default=False)] = None,
    start: Annotated[bool, typer.Option(help="Start its process here (--no-start: it runs elsewhere, from "
                                        "this cluster.toml and its certificate).")] = True,
) -> None:
    """Add a node to a running cluster: its addresses, a TLS certificate from the cluster's CA, a new topology
    version sent to every node, then its process. It holds no replica until one is moved to it
    (`tidebank shard move-replica`, `tidebank shard balance`)."""
    cluster = LocalCluster.open(dir)
    try:
        if name in cluster.topology.node_names:
            raise typer.BadParameter(f"node {name} already exists", param_hint="'NAME'")
        spec = cluster.new_node_spec(name, dc, grpc_address=grpc, raft_address=raft, metrics_port=metrics_port)
        unreached = cluster.membership().add_node(spec)
        cluster.reload()
        if start:
            cluster.start([name])
            cluster.wait_answering(name, timeout_s=60)
    finally:
        cluster.close()
    spec = cluster.topology.node(name)
    out.print(f"added {name} in {dc} (gRPC {spec.grpc_address}, Raft {spec.raft_host}:{spec.raft_port})"
              + ("; running" if start else "; start it with `tidebank node restart`"))
    if unreached - {name}:
        out.print(f"note: {', '.join(sorted(unreached - {name}))} did not answer; they read cluster.toml on start")


@app.command("remove")
@one_line_errors
def node_remove(
    name: Annotated[str, typer.Argument(help="The node to drain and remove.", metavar="NAME")],
    dir: LocalDirOpt,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds for each replica move.", min=1)] = 300.0,
) -> None:
    """Drain a node (move each of its replicas to the node of its DC holding fewest), stop it, and take it out
    of the topology. Needs another node in its DC for each of its shards. Resumes when run again."""
    cluster = LocalCluster.open(dir)
    try:
        reports = cluster.membership().remove_node(name, cluster.stop, timeout_s=timeout)
        cluster.reload()
    finally:
        cluster.close()
    for r in reports:
        out.print(f"shard {r.shard_id}: moved from {r.source} to {r.target}")
    out.print(f"removed {name}")


@app.command("stop")
@one_line_errors
def node_stop(dir: LocalDirOpt, node_arg: NodeArg = None, node: NodeOptAlt = None) -> None:
    """Stop a node of a local cluster cleanly (SIGTERM, SIGKILL after 10 s)."""
    node = _node_name(node_arg, node)
    stopped = LocalCluster.open(dir).stop([node])
    out.print(f"stopped {node}" if stopped else f"{node} was not running")


def _signal_command(name: str, done: str, doc: str) -> None:
    """Register `node NAME`: send one node the signal that LocalCluster.NAME sends, and say DONE."""

    def command(dir: LocalDirOpt, node_arg: NodeArg = None, node: NodeOptAlt = None) -> None:
        node = _node_name(node_arg, node)
        getattr(LocalCluster.open(dir), name)(node)
        out.print(f"{done} {node}")

    command.__doc__ = doc
    command.__name__ = command.__qualname__ = f"node_{name}"
    app.command(name)(one_line_errors(command))


_signal_command("kill", "killed", "SIGKILL a node of a local cluster (a crash).")
_signal_command("pause", "paused", "SIGSTOP a node of a local cluster (a hung process).")
_signal_command("resume", "resumed", "SIGCONT a paused node of a local cluster.")


@app.command("restart")
@one_line_errors
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

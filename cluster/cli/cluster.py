"""`tidebank cluster up|down`: a local multi-DC cluster, one process per node, in a folder."""

from __future__ import annotations

import pathlib
from typing import Annotated

import typer

from tidebank.cluster.cli._common import Output, OutputOpt, err, one_line_errors, out, print_json
from tidebank.cluster.launcher import CONFIG_NAME, ClusterError, LocalCluster, NodeExitedError

app = typer.Typer(help="Run a local multi-DC cluster (one process per node).", no_args_is_help=True)

ClusterDirOpt = Annotated[pathlib.Path, typer.Option("--dir", "-d", help="Cluster folder.", file_okay=False)]


@app.command("up")
@one_line_errors
def cluster_up(
    dir: ClusterDirOpt,
    dcs: Annotated[int | None, typer.Option(help="Data centres: 3 or 5 (new clusters only). [default: 3]")] = None,
    nodes_per_dc: Annotated[
        int | None, typer.Option(help="Nodes per DC (new clusters only). [default: 1]", min=1)
    ] = None,
    shards: Annotated[int | None, typer.Option(help="Shards (new clusters only). [default: 4]", min=1)] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait for leaders.", min=1)] = 60.0,
    plaintext: Annotated[bool, typer.Option(
        "--plaintext", help="No TLS and no principals (new clusters only): anyone who reaches a port is trusted.")
    ] = False,
    output: OutputOpt = Output.table,
) -> None:
    """Create a local cluster in DIR (or reuse DIR/cluster.toml), start it, wait until
    every shard has a leader, and print the client endpoints."""
    if dcs is not None and dcs not in (3, 5):
        raise typer.BadParameter("a shard has one replica per DC: 3 or 5", param_hint="'--dcs'")
    config = dir / CONFIG_NAME
    if config.exists():
        cluster = LocalCluster.open(dir)
        _note_ignored_sizes(cluster, config, dcs=dcs, nodes_per_dc=nodes_per_dc, shards=shards)
    else:
        if plaintext:
            err.print("[bold red]warning:[/] --plaintext: no TLS, no principals; anyone who can reach a port "
                      "can read and move every account's money")
        cluster = LocalCluster.create(dir, dcs=dcs or 3, nodes_per_dc=nodes_per_dc or 1, shards=shards or 4,
                                      plaintext=plaintext)
    topo = cluster.topology
    try:
        to_start = [n for n in topo.node_names if not cluster.is_running(n)]
        cluster.start(to_start)
        if output == Output.table:
            err.print(f"starting {len(to_start)} of {len(topo.nodes)} nodes in {cluster.dir} ...")
        _wait_ready_or_stop(cluster, to_start, timeout)
    finally:
        cluster.close()
    if output == Output.json:
        print_json(
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
    out.print(f"endpoints: {','.join(cluster.endpoints)}")
    out.print(f"try: tidebank status --dir {dir}")


def _note_ignored_sizes(cluster: LocalCluster, config: pathlib.Path, **asked: int | None) -> None:
    """An existing cluster keeps its shape: say which of the size options it ignores."""
    topo = cluster.topology
    have = {"dcs": len(topo.dcs), "nodes_per_dc": len(topo.nodes) // len(topo.dcs), "shards": len(topo.shards)}
    for name, want in asked.items():
        if want is not None and want != have[name]:
            opt = "--" + name.replace("_", "-")
            err.print(f"note: reusing {config}: {opt} {want} ignored, the cluster has {have[name]}")


def _wait_ready_or_stop(cluster: LocalCluster, started: list[str], timeout_s: float) -> None:
    """Wait for every shard's leader; if that fails, show why (log tails) and stop the nodes just started."""
    try:
        cluster.wait_ready(timeout_s=timeout_s)
    except KeyboardInterrupt:
        cluster.stop(started)
        raise
    except (NodeExitedError, TimeoutError, ClusterError) as e:
        err.print(f"error: cluster did not become ready: {e}", markup=False)
        if not isinstance(e, NodeExitedError):
            for name in started:
                tail = cluster.log_tail(name, lines=8)
                if tail:
                    err.print(f"--- {cluster.log_path(name)} (last lines)", markup=False)
                    err.print(tail, markup=False)
        stopped = cluster.stop(started)
        if stopped:
            err.print(f"stopped the nodes it started ({', '.join(stopped)}); logs in {cluster.logs_dir}")
        raise typer.Exit(1) from None


@app.command("down")
@one_line_errors
def cluster_down(
    dir: ClusterDirOpt,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds before SIGKILL.", min=0)] = 10.0,
) -> None:
    """Stop every node of the local cluster in DIR (data and logs are kept)."""
    cluster = LocalCluster.open(dir)
    stopped = cluster.stop(timeout_s=timeout)
    out.print(f"stopped {', '.join(stopped)}" if stopped else "no node was running")

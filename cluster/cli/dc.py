"""`tidebank dc ...`: simulated data-centre network faults (partition, latency, heal, status).

The fault tables and how they are changed live in tidebank.cluster.faults; this module finds
the nodes, checks the DC names and prints what each node answered.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from tidebank.cluster.cli._common import (
    DirOpt,
    EndpointsOpt,
    Output,
    OutputOpt,
    TimeoutOpt,
    fail,
    one_line_errors,
    out,
    parse_endpoints,
    print_json,
    print_table,
    require_target,
)
from tidebank.cluster.launcher import ChannelPool, LocalCluster, NoReachableNode

if TYPE_CHECKING:
    from tidebank.cluster.faults import ChangeResult, NodeTarget
    from tidebank.node.links import LinkTable

app = typer.Typer(
    help="Simulate data-centre network faults: cut a DC off, add latency between DCs, heal. "
    "Faults live in the nodes' memory: a restarted node has none until the next `dc` command.",
    no_args_is_help=True,
)


def _fault_nodes(
    dir: pathlib.Path | None, endpoints: str | None, timeout_s: float, pool: ChannelPool
) -> tuple[list[NodeTarget], list[str]]:
    """(every node of the cluster, its DC names), from the topology or the shard map."""
    from tidebank.cluster.faults import discover_nodes, nodes_from_topology

    require_target(dir, endpoints)
    if dir is not None:
        topo = LocalCluster.open(dir).topology
        return nodes_from_topology(topo), list(topo.dcs)
    try:
        nodes = discover_nodes(parse_endpoints(endpoints), timeout_s, pool)
    except NoReachableNode as e:
        raise fail(str(e), 2) from None
    return nodes, sorted({n.dc for n in nodes})


def _fault_secret(dir: pathlib.Path | None) -> str | None:
    """Fault injection is signed with the cluster secret: from DIR/cluster.toml, else the environment."""
    from tidebank.cluster.faults import cluster_secret

    return cluster_secret(LocalCluster.open(dir).topology.secret if dir is not None else None)


def _check_dc(dc: str, dcs: list[str], hint: str) -> None:
    if dc not in dcs:
        raise typer.BadParameter(f"unknown DC {dc!r} (DCs: {', '.join(dcs)})", param_hint=hint)


def _report_change(result: ChangeResult, output: Output, verb: str) -> None:
    """Print what a `dc` command did; exit 1 if a node was not reached, 2 if none was."""
    if output == Output.json:
        print_json(result.to_dict())
    else:
        table = Table(box=None, pad_edge=False)
        for col in ("NODE", "DC", "ADDRESS", "RESULT"):
            table.add_column(col)
        for n in result.nodes:
            result_text = "[green]ok[/]" if n.reachable else f"[red]{n.error}[/]"
            table.add_row(n.node.name, n.node.dc, n.node.address, result_text)
        print_table(table)
        if result.after is not None:
            out.print(f"{verb}; link faults now: {result.after.describe()}", markup=False)
    failed = result.failed
    if failed and len(failed) == len(result.nodes):
        raise fail("no node answered: nothing changed", 2)
    if failed:
        raise fail(f"not reached (their link faults are unchanged): {', '.join(n.node.name for n in failed)}", 1)


def _change_faults(
    dir: pathlib.Path | None,
    endpoints: str | None,
    timeout_s: float,
    output: Output,
    verb: str,
    change: Callable[[LinkTable], LinkTable],
    check: Callable[[list[str]], None] | None = None,
) -> None:
    from tidebank.cluster.faults import change_tables

    with ChannelPool() as pool:
        nodes, dcs = _fault_nodes(dir, endpoints, timeout_s, pool)
        if check is not None:
            check(dcs)
        result = change_tables(nodes, change, timeout_s, pool, _fault_secret(dir))
    _report_change(result, output, verb)


@app.command("partition")
@one_line_errors
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


@app.command("latency")
@one_line_errors
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


@app.command("heal")
@one_line_errors
def dc_heal(
    dir: DirOpt = None, endpoints: EndpointsOpt = None, output: OutputOpt = Output.table, timeout: TimeoutOpt = 2.0
) -> None:
    """Remove every simulated fault (isolation and delays) on every node.

    Exit code 1 if a node could not be reached, 2 if none could."""
    from tidebank.cluster.faults import ChangeResult, send_table
    from tidebank.node.links import LinkTable

    with ChannelPool() as pool:
        nodes, _ = _fault_nodes(dir, endpoints, timeout, pool)
        healed = LinkTable.healed()
        result = ChangeResult(None, healed, send_table(nodes, healed, timeout, pool, _fault_secret(dir)))
    _report_change(result, output, "healed")


@app.command("status")
@one_line_errors
def dc_status(
    dir: DirOpt = None, endpoints: EndpointsOpt = None, output: OutputOpt = Output.table, timeout: TimeoutOpt = 2.0
) -> None:
    """Each node's table of simulated link faults.

    Exit code 1 if a node could not be reached or the nodes' tables differ, 2 if no node answers."""
    from tidebank.cluster.faults import consistent, fetch_tables

    with ChannelPool() as pool:
        nodes, _ = _fault_nodes(dir, endpoints, timeout, pool)
        answers = fetch_tables(nodes, timeout, pool)
    same = consistent(answers)
    if output == Output.json:
        print_json(
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
        print_table(table)
        if not same:
            out.print("[red]the nodes' tables differ[/] (a restarted node has none): run a `dc` command again")
    if answers and all(not a.reachable for a in answers):
        raise typer.Exit(2)
    if not same or any(not a.reachable for a in answers):
        raise typer.Exit(1)

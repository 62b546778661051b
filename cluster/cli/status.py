"""`tidebank status` and `tidebank shard-map`: how any cluster is doing, from its nodes' answers.

The judging (which shard is unhealthy and why) lives in tidebank.cluster.launcher.collect_status;
this module only picks the targets and prints the report.
"""

from __future__ import annotations

import pathlib

import grpc
import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

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
    resolve_endpoints,
)
from tidebank.cluster.launcher import (
    ChannelPool,
    LocalCluster,
    NoReachableNode,
    StatusReport,
    collect_status,
    fetch_shard_map,
    targets_from_shard_map,
    targets_from_topology,
)
from tidebank.cluster.slot_moves import slot_move_progress
from tidebank.v1 import admin_pb2

MOVE_BAR_WIDTH = 20
_ROLE_STYLE = {"leader": "bold green", "follower": "", "candidate": "yellow", "down": "red", "absent": "red"}


def _slot_moves(dir: pathlib.Path | None) -> list[dict]:
    """The slot move in progress, from its resume file beside the topology (only where the move runs)."""
    if dir is None:
        return []
    progress = slot_move_progress(LocalCluster.open(dir).config_path)
    return [] if progress is None else [progress]


def _status_report(dir: pathlib.Path | None, endpoints: str | None, timeout_s: float) -> StatusReport:
    require_target(dir, endpoints)
    if dir is not None:
        targets = targets_from_topology(LocalCluster.open(dir).topology)
    else:
        targets = targets_from_shard_map(fetch_shard_map(parse_endpoints(endpoints), timeout_s))
    report = collect_status(targets, timeout_s)
    if targets and report.nodes_reachable == 0:
        _refuse_if_denied(targets[0].address, timeout_s)
    return report


def _refuse_if_denied(address: str, timeout_s: float) -> None:
    """No node answered: say so plainly when it is because this principal may not ask (not that all are down)."""
    with ChannelPool() as pool:
        try:
            pool.admin(address).GetNodeStatus(admin_pb2.GetNodeStatusRequest(), timeout=timeout_s)
        except grpc.RpcError as e:
            if hasattr(e, "code") and e.code() == grpc.StatusCode.PERMISSION_DENIED:
                raise fail(f"{address}: {e.details()}", 2) from None


def _num(v: int | None) -> str:
    return "-" if v is None else str(v)


@one_line_errors
def status(
    dir: DirOpt = None, endpoints: EndpointsOpt = None, output: OutputOpt = Output.table, timeout: TimeoutOpt = 2.0
) -> None:
    """One row per shard replica: role, term, commit and applied index, lag.

    A replica whose apply loop stopped (a storage or resource error) is degraded: it will not
    campaign or lead, and the NOTE column says why. Exit code 1 when a shard has no leader or
    no quorum or a replica is degraded, 2 when no node answers."""
    try:
        report = _status_report(dir, endpoints, timeout)
    except NoReachableNode as e:
        if output == Output.json:
            print_json(StatusReport(rows=[], problems=[str(e)], nodes_total=0, nodes_reachable=0).to_dict())
        raise fail(str(e), 2) from None
    slot_moves = _slot_moves(dir)
    if output == Output.json:
        print_json({**report.to_dict(), "slot_moves": slot_moves})
    else:
        _print_status(report, slot_moves)
    if report.nodes_reachable == 0:
        raise typer.Exit(2)
    if not report.healthy:
        raise typer.Exit(1)


def _print_status(report: StatusReport, slot_moves: list[dict]) -> None:
    degraded = report.degraded
    cols = ["NODE", "DC", "ADDRESS", "SHARD", "ROLE", "TERM", "COMMIT", "APPLIED", "LAG"]
    if degraded:
        cols.append("NOTE")  # only then: a cluster without notes prints the table it always did
    table = Table(box=None, pad_edge=False)
    for col in cols:
        table.add_column(col, justify="right" if col in ("SHARD", "TERM", "COMMIT", "APPLIED", "LAG") else "left")
    for r in report.rows:
        style = _ROLE_STYLE.get(r.role)
        cells: list[str | Text] = [
            r.node,
            r.dc,
            r.address,
            str(r.shard),
            f"[{style}]{r.role}[/]" if style else r.role,
            _num(r.term),
            _num(r.commit_index),
            _num(r.applied_index),
            _num(r.lag),
        ]
        if degraded:
            cells.append(Text(f"degraded: {r.apply_error}", style="yellow") if r.degraded else "")
        table.add_row(*cells)
    print_table(table)
    for move in report.moves:
        filled = int(move["caught_up"] * MOVE_BAR_WIDTH)
        bar = "#" * filled + "." * (MOVE_BAR_WIDTH - filled)
        what = ("joining, catching up" if move["membership"] == "joining"
                else "leaving (replaced; hands over, then leaves)")
        out.print(f"shard {move['shard']}: replica move: {move['node']} {what} [{bar}] "
                  f"{move['caught_up']:.0%} (applied {move['applied_index']:,} of {move['commit_index']:,})",
                  markup=False)
    for move in slot_moves:
        filled = move["steps_done"] * MOVE_BAR_WIDTH // move["steps_total"]
        bar = "#" * filled + "." * (MOVE_BAR_WIDTH - filled)
        last = f"last done: {move['step']}" if move["step"] else "starting"
        out.print(f"slots {move['slots']}: slot move shard {move['source']} -> {move['target']} [{bar}] "
                  f"{move['steps_done']}/{move['steps_total']} steps, {last} ({move['pages']} pages, "
                  f"{move['records']:,} records copied); `tidebank slot move` again resumes it", markup=False)
    summary = f"{report.nodes_reachable}/{report.nodes_total} nodes answer"
    cannot_apply = ", ".join(f"{r.node} (shard {r.shard})" for r in degraded)
    if report.verdict == "healthy":
        out.print(f"{summary}; [green]healthy[/]")
    elif report.verdict == "degraded":
        out.print(f"{summary}; [yellow]degraded[/]: cannot apply, will not campaign or lead: {escape(cannot_apply)}")
    else:
        out.print(f"{summary}; [red]unhealthy[/]:")
        for p in report.problems:
            out.print(f"  - {p}", markup=False)
        if degraded:
            out.print(f"  - degraded: cannot apply, will not campaign or lead: {cannot_apply}", markup=False)


@one_line_errors
def shard_map(
    dir: DirOpt = None, endpoints: EndpointsOpt = None, output: OutputOpt = Output.table, timeout: TimeoutOpt = 2.0
) -> None:
    """The shard map as the nodes serve it: slots, replicas and current leader of each
    shard (exit code 2 when no node answers)."""
    try:
        sm = fetch_shard_map(resolve_endpoints(dir, endpoints), timeout)
    except NoReachableNode as e:
        raise fail(str(e), 2) from None
    shards = sorted(sm.shards, key=lambda s: s.shard_id)
    if output == Output.json:
        print_json(
            {
                "version": sm.version,
                "slot_count": sm.slot_count,
                "shards": [
                    {
                        "shard_id": s.shard_id,
                        "slots": [[r.start, r.end] for r in s.slots],
                        "leader_node": s.leader_node,
                        "replicas": [{"node": r.node, "dc": r.dc, "address": r.address,
                                      "membership": r.membership or "voter"} for r in s.replicas],
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
        replicas = ", ".join(f"{r.node}@{r.dc}" + (f" ({r.membership})" if r.membership not in ("", "voter") else "")
                             for r in s.replicas)
        count = sum(r.end - r.start for r in s.slots)
        slots = f"{count}: " + ", ".join(f"{r.start}-{r.end - 1}" for r in s.slots) if count else "none"
        table.add_row(str(s.shard_id), slots, s.leader_node or "[red]none[/]", replicas)
    print_table(table)

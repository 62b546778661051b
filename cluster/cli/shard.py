"""`tidebank shard add`, `shard move-replica`, `shard balance` and `shard load`: new Raft groups, replicas
moved to other nodes of their DC, online, and what each shard holds and how busy it is.

The steps and why each is safe are in tidebank.cluster.membership; this module only
parses, drives and prints. An interrupted move resumes when the same command runs again.
"""

from __future__ import annotations

import pathlib
from typing import Annotated

import typer
from rich.table import Table

from tidebank.cluster import balancer
from tidebank.cluster.cli._common import (
    DirOpt,
    EndpointsOpt,
    Output,
    OutputOpt,
    TimeoutOpt,
    err,
    fail,
    one_line_errors,
    out,
    print_json,
    print_table,
    resolve_endpoints,
)
from tidebank.cluster.launcher import LocalCluster, NoReachableNode, fetch_shard_map
from tidebank.cluster.shard_load import SAMPLE_S_MAX, measure_shards
from tidebank.common.topology import slot_ranges

app = typer.Typer(help="Move shard replicas between nodes while the cluster runs.", no_args_is_help=True)

LocalDirOpt = Annotated[pathlib.Path, typer.Option("--dir", "-d", help="Local cluster folder.", file_okay=False)]


@app.command("add")
@one_line_errors
def add(
    dir: LocalDirOpt,
    replicas: Annotated[str | None, typer.Option("--replicas", help="Comma-separated nodes, one per DC, the "
                                                 "preferred leader first [default: the node of each DC holding "
                                                 "fewest replicas].", show_default=False)] = None,
    shard_id: Annotated[int | None, typer.Option("--id", help="Resume the add of this shard (or check that "
                                                 "the new one gets this id).", min=0, show_default=False)] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait for its leader.", min=1)] = 120.0,
    output: OutputOpt = Output.table,
) -> None:
    """Create a new shard (a Raft group with a replica in every DC) holding no slots yet, and wait until it has
    a leader. Slots move to it with `tidebank slot move`."""
    names = tuple(n.strip() for n in replicas.split(",") if n.strip()) if replicas is not None else None
    cluster = LocalCluster.open(dir)
    try:
        report = cluster.membership().add_shard(names, shard_id=shard_id, timeout_s=timeout)
        cluster.reload()
    finally:
        cluster.close()
    if output == Output.json:
        print_json({"shard": report.shard_id, "replicas": report.replicas, "created": report.created,
                    "leader": report.leader, "unreached": sorted(report.unreached)})
        return
    done = "added" if report.created else "already added"
    out.print(f"shard {report.shard_id}: {done}, no slots yet; replicas {', '.join(report.replicas)}; "
              f"leader {report.leader}")
    if report.unreached:
        err.print(f"note: {', '.join(sorted(report.unreached))} did not answer; they read cluster.toml on start")


@app.command("move-replica")
@one_line_errors
def move_replica(
    shard: Annotated[int, typer.Argument(help="Shard id.", min=0)],
    source: Annotated[str, typer.Option("--from", help="Node whose replica leaves.")],
    target: Annotated[str, typer.Option("--to", help="Node (same DC) that gets the replica.")],
    dir: LocalDirOpt,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds for the whole move.", min=1)] = 300.0,
    output: OutputOpt = Output.table,
) -> None:
    """Move SHARD's replica from --from to --to: the new replica catches up, joins the Raft group, takes the
    old one's place; the old one leaves and its files go to DATA/NODE/retired/."""
    cluster = LocalCluster.open(dir)
    try:
        def progress(step: str, topology) -> None:
            if output == Output.table:
                err.print(f"  {step:<7} done (topology v{topology.shard_map_version})")

        report = cluster.membership(on_step=progress).move_replica(shard, source, target, timeout_s=timeout)
    finally:
        cluster.close()
    if output == Output.json:
        print_json({"shard": shard, "from": source, "to": target, "steps": report.steps_done,
                    "members": report.members, "unreached": sorted(report.unreached),
                    "evicted_dead_source": report.evicted})
        return
    done = "moved" if report.steps_done else "already moved"
    out.print(f"shard {shard}: {done} from {source} to {target}; voting members: {', '.join(report.members)}")
    if report.evicted:
        err.print(f"note: {source} did not answer, so its replica left the group before {target} joined")
    if report.unreached:
        err.print(f"note: {', '.join(sorted(report.unreached))} did not answer; they read cluster.toml on start")


@app.command("balance")
@one_line_errors
def balance(
    dir: LocalDirOpt,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the moves, make none.")] = False,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds for each move.", min=1)] = 300.0,
    output: OutputOpt = Output.table,
) -> None:
    """Even out replicas per node within each DC (after `tidebank node add`), one move at a time."""
    cluster = LocalCluster.open(dir)
    try:
        membership = cluster.membership()
        plan = membership.balance_plan()
        def progress(number: int, move: tuple[int, str, str]) -> None:
            if output == Output.table:
                err.print(f"[{number}/{len(plan)}] shard {move[0]}: {move[1]} -> {move[2]}")

        if not dry_run:
            membership.balance(plan, timeout_s=timeout, on_move=progress)
    finally:
        cluster.close()
    if output == Output.json:
        print_json({"moves": [{"shard": s, "from": a, "to": b} for s, a, b in plan], "made": not dry_run})
        return
    if not plan:
        out.print("balanced: every DC's nodes hold replica counts within one of each other")
    for shard, source, target in plan:
        out.print(f"shard {shard}: {source} -> {target}" + (" (dry run)" if dry_run else ""))


@app.command("load")
@one_line_errors
def load(
    dir: DirOpt = None,
    endpoints: EndpointsOpt = None,
    sample: Annotated[float, typer.Option("--sample-s", help="Seconds between the two polls that measure load.",
                                          min=0.1, max=SAMPLE_S_MAX)] = 2.0,
    slots_per_move: Annotated[int, typer.Option("--slots-per-move", help="Most slots one planned move takes.",
                                                min=1)] = 64,
    output: OutputOpt = Output.table,
    timeout: TimeoutOpt = 2.0,
) -> None:
    """Per shard: slots, accounts and transfers held, items applied per second, and its share of the cluster's
    weight; then the slot moves the balancer would plan to even them out. The plan is advice: no command
    moves slots yet. Exit code 1 when a shard could not be measured, 2 when no node answers."""
    try:
        shard_map = fetch_shard_map(resolve_endpoints(dir, endpoints), timeout)
    except NoReachableNode as e:
        raise fail(str(e), 2) from None
    shards = measure_shards(shard_map, sample, timeout)
    loads = [s.to_load() for s in shards]
    weights = balancer.shard_weights(loads)
    plan = balancer.plan_slot_moves(loads, slots_per_move=slots_per_move)
    unmeasured = [s.shard_id for s in shards if not s.measured]
    if output == Output.json:
        print_json({"version": shard_map.version, "sample_s": sample,
                    "shards": [{**s.to_dict(), "weight": round(weights[s.shard_id], 4)} for s in shards],
                    "unmeasured": unmeasured,
                    "planned_moves": [{"slots": [list(r) for r in slot_ranges(m.slots)], "count": len(m.slots),
                                       "from": m.source, "to": m.target} for m in plan]})
    else:
        _print_load(shards, weights, plan, unmeasured)
    if unmeasured:
        raise typer.Exit(1)


def _print_load(shards, weights: dict[int, float], plan: list[balancer.PlannedMove], unmeasured: list[int]) -> None:
    table = Table(box=None, pad_edge=False)
    for col in ("SHARD", "SLOTS", "ACCOUNTS", "TRANSFERS", "ITEMS/S", "WEIGHT"):
        table.add_column(col, justify="right")
    for s in shards:
        table.add_row(str(s.shard_id), str(len(s.slots)), "-" if s.accounts is None else f"{s.accounts:,}",
                      "-" if s.transfers is None else f"{s.transfers:,}",
                      "-" if s.items_per_s is None else f"{s.items_per_s:,.1f}", f"{weights[s.shard_id]:.1%}")
    print_table(table)
    if unmeasured:
        err.print(f"not measured (no replica answered both polls): shard {', '.join(map(str, unmeasured))}")
    if not plan:
        out.print("balanced: every shard is within "
                  f"{balancer.TOLERANCE:.0%} of the mean weight, or whole slots cannot bring it closer")
        return
    out.print(f"{len(plan)} slot move(s) would balance it (run each with `tidebank slot move`):")
    for m in plan:
        ranges = ",".join(f"{a}-{b - 1}" if b > a + 1 else f"{a}" for a, b in slot_ranges(m.slots))
        out.print(f"  {len(m.slots)} slots ({ranges}): shard {m.source} -> shard {m.target}"
                  f"   tidebank slot move {ranges} --from {m.source} --to {m.target}", markup=False)

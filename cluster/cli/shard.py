"""`tidebank shard add`, `shard move-replica` and `shard balance`: new Raft groups, and replicas moved to
other nodes of their DC, online.

The steps and why each is safe are in tidebank.cluster.membership; this module only
parses, drives and prints. An interrupted move resumes when the same command runs again.
"""

from __future__ import annotations

import pathlib
from typing import Annotated

import typer

from tidebank.cluster.cli._common import Output, OutputOpt, err, one_line_errors, out, print_json
from tidebank.cluster.launcher import LocalCluster

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

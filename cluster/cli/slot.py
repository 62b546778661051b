"""`tidebank slot move`: hash slots moved to another shard with everything in them, while the cluster runs.

The steps and why each is safe are in tidebank.cluster.slot_moves; this module only parses, drives and
prints. An interrupted move resumes when the same command runs again.
"""

from __future__ import annotations

import pathlib
from typing import Annotated

import typer

from tidebank.cluster.cli._common import Output, OutputOpt, err, one_line_errors, out, print_json
from tidebank.cluster.launcher import LocalCluster
from tidebank.cluster.slot_moves import SlotMoveError, SlotMover
from tidebank.common.topology import parse_slots, slots_of

app = typer.Typer(help="Move hash slots between shards while the cluster runs.", no_args_is_help=True)

LocalDirOpt = Annotated[pathlib.Path, typer.Option("--dir", "-d", help="Local cluster folder.", file_okay=False)]


@app.command("move")
@one_line_errors
def move(
    slots: Annotated[str, typer.Argument(help="Slots: N, N-M (both ends included) or a comma-separated list.")],
    target: Annotated[int, typer.Option("--to", help="Shard that takes them.", min=0)],
    dir: LocalDirOpt,
    source: Annotated[int | None, typer.Option("--from", help="Shard that gives them [default: the shard holding "
                                               "them].", min=0, show_default=False)] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds for the whole move.", min=1)] = 300.0,
    output: OutputOpt = Output.table,
) -> None:
    """Move hash SLOTS to shard --to with their accounts, owners, transfers and history: writes naming them get
    slot_moving (retry) while they copy, then go to the new shard. Slots naming pending transfers, trades or
    clearing state cannot move yet: refused, nothing changed."""
    cluster = LocalCluster.open(dir)
    try:
        topology = cluster.topology
        wanted = parse_slots(slots, topology.slot_count)
        if source is None:
            holders = sorted({s.shard_id for s in topology.shards for slot in slots_of(s.slots) if slot in wanted})
            others = [h for h in holders if h != target]
            if len(others) > 1:
                raise SlotMoveError(f"slots {slots} are on shards {', '.join(map(str, others))}: move them with "
                                    "one command per shard (--from)")
            source = others[0] if others else target
        if source == target:
            out.print(f"slots {slots}: already on shard {target}")
            return

        def progress(step: str) -> None:
            if output == Output.table:
                err.print(f"  {step:<9} done")

        report = SlotMover(cluster.membership(), on_step=progress).move(wanted, source, target, timeout_s=timeout)
    finally:
        cluster.close()
    if output == Output.json:
        print_json({"from": source, "to": target, "slots": report.slots, "steps": report.steps_done,
                    "pages": report.pages, "records": report.records, "resumed": report.resumed,
                    "pause_s": round(report.pause_s, 3)})
        return
    if not report.steps_done:
        out.print(f"slots {slots}: already on shard {target}")
        return
    out.print(f"slots {slots}: moved from shard {source} to shard {target} ({report.records} records in "
              f"{report.pages} pages; writes to them waited {report.pause_s:.2f} s)")

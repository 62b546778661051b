"""`tidebank audit`: does the money add up across the whole cluster?

Collecting and judging the totals lives in tidebank.cluster.audit; this module re-polls while
cross-shard transactions are in flight and prints the verdict.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from tidebank.cluster.cli._common import (
    DirOpt,
    EndpointsOpt,
    Output,
    OutputOpt,
    one_line_errors,
    out,
    print_json,
    print_table,
    totals_targets,
)
from tidebank.cluster.launcher import ChannelPool

if TYPE_CHECKING:
    from tidebank.cluster.audit import AuditReport


@one_line_errors
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

    with ChannelPool() as pool:
        addresses, expected = totals_targets(dir, endpoints, timeout, pool)
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
        print_json({**report.to_dict(), "polls": polls})
    else:
        _print_audit(report, polls)
    if report.exit_code:
        raise typer.Exit(report.exit_code)


def _print_audit(report: AuditReport, polls: int) -> None:
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
    print_table(table)
    if report.escrow:
        escrow = Table(box=None, pad_edge=False, title="escrow", title_justify="left")
        for col in ("LEDGER", "HELD", "ESCROW BALANCE", "FEES", "FEE BALANCE", "CHECK"):
            escrow.add_column(col, justify="left" if col == "CHECK" else "right")
        for ledger, t in report.escrow.items():
            escrow.add_row(str(ledger), str(t["held"]), str(t["escrow_balance"]), str(t["fees"]),
                           str(t["fee_balance"]), check("escrow", ledger))
        print_table(escrow)
    if report.clearing:
        book = Table(box=None, pad_edge=False, title="clearing", title_justify="left")
        for col in ("LEDGER", "POSITIONS", "ALLOWANCES", "POOLS", "MOVING", "CAPS", "HUB", "CHECK"):
            book.add_column(col, justify="left" if col == "CHECK" else "right")
        for ledger, t in report.clearing.items():
            book.add_row(str(ledger), str(t["net"]), str(t["allowance"]), str(t["pool"]), str(t["moving"]),
                         str(t["cap"]), str(t["hub_balance"]), check("clearing", ledger))
        print_table(book)
    shards = ", ".join(f"{s.shard_id}@{s.node}" for s in sorted(report.shards.values(), key=lambda s: s.shard_id))
    out.print(f"{len(report.shards)} shards read on their leaders ({shards}); {len(report.ledgers)} ledgers; "
              f"{polls} poll(s)", markup=False)
    if report.unreachable:
        out.print(f"not answering: {', '.join(report.unreachable)}", markup=False)
    if report.missing_shards:
        out.print(f"[red]incomplete[/]: no leader answered for shard(s) {', '.join(map(str, report.missing_shards))}")
    elif not report.quiescent:
        in_flight = ", ".join(f"shard {s}: {n}" for s, n in sorted(report.in_flight.items()))
        out.print(f"[yellow]not quiescent[/]: prepared cross-shard transactions or allowance moves in flight "
                  f"({in_flight})")
    elif report.mismatches:
        out.print("[red]MISMATCH[/]:")
        for m in report.mismatches:
            prefix = f"{m.book} book, " if m.book in ("escrow", "clearing") else ""
            out.print(f"  - {prefix}{m.describe()}", markup=False)
    else:
        escrow_text = "; held == escrow balance and fees == fee balance" if report.escrow else ""
        clearing_text = "; positions sum to 0, allowances + pools == caps, hubs at 0" if report.clearing else ""
        out.print(f"[green]balanced[/]: every ledger's debits equal its credits{escrow_text}{clearing_text}")

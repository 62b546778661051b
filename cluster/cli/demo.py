"""`tidebank demo`: a short workload that shows the ledger at work (tidebank.cluster.demo runs it)."""

from __future__ import annotations

from typing import Annotated

import typer

from tidebank.cluster.cli._common import ClientTimeoutOpt, DirOpt, EndpointsOpt, one_line_errors, out, resolve_endpoints
from tidebank.cluster.launcher import default_tls


@one_line_errors
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

    targets = resolve_endpoints(dir, endpoints)
    report = run_demo(
        targets,
        accounts=accounts,
        transfers=transfers,
        batch_size=batch_size,
        concurrency=concurrency,
        seed=seed,
        timeout_s=timeout_s,
        console=out,
        tls=default_tls(),
    )
    if not report.ok:
        raise typer.Exit(1)

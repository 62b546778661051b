"""The `tidebank` admin CLI: run local clusters, look at any cluster, poke the ledger.

Every command that talks to a cluster takes `--dir DIR` (a local cluster folder,
as made by `tidebank cluster up`) or `--endpoints HOST:PORT,...`. Commands whose
output is data take `-o table|json`. Exit codes: 0 ok, 1 failed, unhealthy or degraded (for `dc`: a node not
reached; for `audit`: a mismatch), 2 bad arguments or (for `status`/`shard-map`/`dc`/
`audit`) no node reachable, 3 (`audit`) transactions still in flight.

One module per noun (`tidebank NOUN VERB`): cluster, node, shard, slot, status (also shard-map), dc,
account, transfer, trade (also trade dispute), clearing, principal, admin, audit, demo; what they share is in _common.
This module only builds the root command and hangs the nouns on it.
"""

from __future__ import annotations

from typing import Annotated

import typer

from tidebank import __version__
from tidebank.cluster.cli import (
    account,
    audit,
    clearing,
    cluster,
    dc,
    demo,
    node,
    principal,
    shard,
    slot,
    status,
    trade,
    transfer,
)

app = typer.Typer(
    name="tidebank",
    help="tidebank admin CLI: local clusters, cluster status, accounts, transfers and escrow trades.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
# Help lists the commands in this order: the top-level verbs, then the nouns.
app.command("status")(status.status)
app.command("shard-map")(status.shard_map)
app.command("audit")(audit.audit)
app.command("demo")(demo.demo)
app.add_typer(cluster.app, name="cluster")
app.add_typer(node.app, name="node")
app.add_typer(shard.app, name="shard")
app.add_typer(slot.app, name="slot")
app.add_typer(account.app, name="account")
app.add_typer(transfer.app, name="transfer")
app.add_typer(trade.app, name="trade")
app.add_typer(clearing.app, name="clearing")
app.add_typer(dc.app, name="dc")
app.add_typer(principal.app, name="principal")
app.add_typer(principal.admin_app, name="admin")


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


def main() -> None:
    """The `tidebank` console script."""
    app()

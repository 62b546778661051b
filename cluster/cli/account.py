"""`tidebank account create|get`: create one account, look accounts and their balances up."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from tidebank.cluster.cli._common import (
    ClientTimeoutOpt,
    DirOpt,
    EndpointsOpt,
    Output,
    OutputOpt,
    flag_names,
    one_line_errors,
    open_client,
    parse_flags,
    parse_id,
    print_lookup,
    print_results,
    print_table,
    resolve_endpoints,
)

app = typer.Typer(help="Create and look up accounts.", no_args_is_help=True)


@app.command("create")
@one_line_errors
def account_create(
    ledger: Annotated[int, typer.Option(help="Ledger (currency), nonzero.", min=1)],
    code: Annotated[int, typer.Option(help="Account type, nonzero.", min=1)],
    id: Annotated[
        str | None, typer.Option("--id", help="Account id (default: a new time-ordered id).", metavar="ID")
    ] = None,
    flags: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated: linked, debits_must_not_exceed_credits, credits_must_not_exceed_debits, "
            "history, closed."
        ),
    ] = None,
    user_data_128: Annotated[int, typer.Option(min=0)] = 0,
    user_data_64: Annotated[int, typer.Option(min=0)] = 0,
    user_data_32: Annotated[int, typer.Option(min=0)] = 0,
    dir: DirOpt = None,
    endpoints: EndpointsOpt = None,
    output: OutputOpt = Output.table,
    timeout_s: ClientTimeoutOpt = 10.0,
) -> None:
    """Create one account and print its result (exit code 1 unless created)."""
    targets = resolve_endpoints(dir, endpoints)
    account_id = parse_id(id) if id is not None else None
    from tidebank.client import Account, AccountFlags, new_id

    account_id = account_id or new_id()
    account = Account(
        id=account_id,
        ledger=ledger,
        code=code,
        flags=parse_flags(AccountFlags, flags),
        user_data_128=user_data_128,
        user_data_64=user_data_64,
        user_data_32=user_data_32,
    )
    with open_client(targets, timeout_s) as c:
        results = c.create_accounts([account])
    print_results(results, output)


def _account_dict(a: Any, flag_enum: type) -> dict:
    return {
        "id": str(a.id),
        "ledger": a.ledger,
        "code": a.code,
        "flags": flag_names(flag_enum, int(a.flags)),
        "debits_pending": a.debits_pending,
        "debits_posted": a.debits_posted,
        "credits_pending": a.credits_pending,
        "credits_posted": a.credits_posted,
        "user_data_128": str(a.user_data_128),
        "user_data_64": a.user_data_64,
        "user_data_32": a.user_data_32,
        "timestamp": a.timestamp,
    }


@app.command("get")
@one_line_errors
def account_get(
    ids: Annotated[list[str], typer.Argument(help="Account ids (decimal or 0x hex).", metavar="ID...")],
    dir: DirOpt = None,
    endpoints: EndpointsOpt = None,
    output: OutputOpt = Output.table,
    timeout_s: ClientTimeoutOpt = 10.0,
) -> None:
    """Look up accounts and their balances (exit code 1 if any is not found)."""
    wanted = [parse_id(i) for i in ids]
    targets = resolve_endpoints(dir, endpoints)
    from tidebank.client import AccountFlags

    with open_client(targets, timeout_s) as c:
        accounts = c.lookup_accounts(wanted)
    rows = [_account_dict(a, AccountFlags) for a in accounts]
    print_lookup(wanted, accounts, rows, output, _print_accounts, "account")


def _print_accounts(rows: list[dict]) -> None:
    table = Table(box=None, pad_edge=False)
    cols = ("ID", "LEDGER", "CODE", "FLAGS", "DEBITS PENDING", "DEBITS POSTED", "CREDITS PENDING", "CREDITS POSTED")
    for col in cols:
        table.add_column(col, justify="left" if col in ("ID", "FLAGS") else "right")
    for r in rows:
        table.add_row(
            r["id"],
            str(r["ledger"]),
            str(r["code"]),
            ",".join(r["flags"]) or "-",
            str(r["debits_pending"]),
            str(r["debits_posted"]),
            str(r["credits_pending"]),
            str(r["credits_posted"]),
        )
    print_table(table)

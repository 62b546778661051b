"""`tidebank transfer create|get`: move money between two accounts (also pending, post, void),
look transfers up."""

from __future__ import annotations

from typing import Annotated

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
    parse_id,
    print_lookup,
    print_results,
    print_table,
    resolve_endpoints,
)

app = typer.Typer(help="Create and look up transfers.", no_args_is_help=True)


@app.command("create")
@one_line_errors
def transfer_create(
    debit: Annotated[str | None, typer.Option("--debit", help="Debit account id.", metavar="ID")] = None,
    credit: Annotated[str | None, typer.Option("--credit", help="Credit account id.", metavar="ID")] = None,
    amount: Annotated[int | None, typer.Option(help="Amount in minor units.", min=0)] = None,
    ledger: Annotated[int | None, typer.Option(help="Ledger, same as the accounts'.", min=0)] = None,
    code: Annotated[int | None, typer.Option(help="Transfer code, nonzero.", min=0)] = None,
    id: Annotated[
        str | None, typer.Option("--id", help="Transfer id (default: a new time-ordered id).", metavar="ID")
    ] = None,
    pending: Annotated[bool, typer.Option("--pending", help="Reserve the amount; post or void it later.")] = False,
    timeout: Annotated[
        int, typer.Option("--timeout", help="Pending only: seconds until it expires (0 = never).", min=0)
    ] = 0,
    post: Annotated[
        str | None, typer.Option("--post", help="Post this pending transfer.", metavar="PENDING_ID")
    ] = None,
    void: Annotated[
        str | None, typer.Option("--void", help="Void this pending transfer.", metavar="PENDING_ID")
    ] = None,
    user_data_128: Annotated[int, typer.Option(min=0)] = 0,
    user_data_64: Annotated[int, typer.Option(min=0)] = 0,
    user_data_32: Annotated[int, typer.Option(min=0)] = 0,
    dir: DirOpt = None,
    endpoints: EndpointsOpt = None,
    output: OutputOpt = Output.table,
    timeout_s: ClientTimeoutOpt = 10.0,
) -> None:
    """Create one transfer and print its result (exit code 1 unless created).

    With --post or --void, only --debit is needed (the transfer is routed by its debit
    account); the credit account, amount, ledger and code are taken from the pending
    transfer when left out, and --amount may post less than was reserved."""
    if post is not None and void is not None:
        raise typer.BadParameter("give --post or --void, not both", param_hint="'--post' / '--void'")
    resolving = post is not None or void is not None
    if resolving and pending:
        raise typer.BadParameter(
            "--pending creates a pending transfer; --post/--void resolve one", param_hint="'--pending'"
        )
    if timeout and not pending:
        raise typer.BadParameter("only pending transfers have a timeout", param_hint="'--timeout'")
    given = {"--debit": debit, "--credit": credit, "--amount": amount, "--ledger": ledger, "--code": code}
    # Resolving a pending transfer needs only its debit account: the transfer is routed by it.
    needed = ["--debit"] if resolving else list(given)
    missing = [opt for opt in needed if given[opt] is None]
    if missing:
        raise typer.BadParameter(f"missing {', '.join(missing)}", param_hint="transfer")
    targets = resolve_endpoints(dir, endpoints)
    transfer_id = parse_id(id) if id is not None else None
    debit_id = parse_id(debit, "debit account id") if debit is not None else 0
    credit_id = parse_id(credit, "credit account id") if credit is not None else 0
    pending_id = parse_id(post or void, "pending id") if resolving else 0
    from tidebank.client import Transfer, TransferFlags, new_id

    flags = 0
    if pending:
        flags |= TransferFlags.PENDING
    if post is not None:
        flags |= TransferFlags.POST_PENDING_TRANSFER
    if void is not None:
        flags |= TransferFlags.VOID_PENDING_TRANSFER
    transfer_id = transfer_id or new_id(near=debit_id)  # lives with its debit account: one shard when it can
    transfer = Transfer(
        id=transfer_id,
        debit_account_id=debit_id,
        credit_account_id=credit_id,
        amount=amount or 0,
        pending_id=pending_id,
        user_data_128=user_data_128,
        user_data_64=user_data_64,
        user_data_32=user_data_32,
        timeout=timeout,
        ledger=ledger or 0,
        code=code or 0,
        flags=flags,
    )
    with open_client(targets, timeout_s) as c:
        results = c.create_transfers([transfer])
    print_results(results, output)


@app.command("get")
@one_line_errors
def transfer_get(
    ids: Annotated[list[str], typer.Argument(help="Transfer ids (decimal or 0x hex).", metavar="ID...")],
    dir: DirOpt = None,
    endpoints: EndpointsOpt = None,
    output: OutputOpt = Output.table,
    timeout_s: ClientTimeoutOpt = 10.0,
) -> None:
    """Look up transfers (exit code 1 if any is not found)."""
    wanted = [parse_id(i) for i in ids]
    targets = resolve_endpoints(dir, endpoints)
    from tidebank.client import TransferFlags

    with open_client(targets, timeout_s) as c:
        transfers = c.lookup_transfers(wanted)
    rows = [
        {
            "id": str(t.id),
            "debit_account_id": str(t.debit_account_id),
            "credit_account_id": str(t.credit_account_id),
            "amount": t.amount,
            "pending_id": str(t.pending_id),
            "ledger": t.ledger,
            "code": t.code,
            "flags": flag_names(TransferFlags, int(t.flags)),
            "timeout": t.timeout,
            "user_data_128": str(t.user_data_128),
            "user_data_64": t.user_data_64,
            "user_data_32": t.user_data_32,
            "timestamp": t.timestamp,
        }
        for t in transfers
    ]
    print_lookup(wanted, transfers, rows, output, _print_transfers, "transfer")


def _print_transfers(rows: list[dict]) -> None:
    table = Table(box=None, pad_edge=False)
    for col in ("ID", "DEBIT", "CREDIT", "AMOUNT", "LEDGER", "CODE", "FLAGS", "PENDING ID", "TIMESTAMP"):
        table.add_column(col, justify="right" if col in ("AMOUNT", "LEDGER", "CODE", "TIMESTAMP") else "left")
    for r in rows:
        table.add_row(
            r["id"],
            r["debit_account_id"],
            r["credit_account_id"],
            str(r["amount"]),
            str(r["ledger"]),
            str(r["code"]),
            ",".join(r["flags"]) or "-",
            r["pending_id"] if r["pending_id"] != "0" else "-",
            str(r["timestamp"]),
        )
    print_table(table)

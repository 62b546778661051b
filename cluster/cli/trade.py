"""`tidebank trade ...`: escrow (guaranteed) payments: open a trade, ship, confirm, refund, extend,
disputes (`trade dispute open|withdraw|resolve`), look trades up, and the escrow book.

Every write is idempotent by an id: the trade id, or the refund/extension id. When the operator
gives none, a new one is printed on stderr before the call, so the very same step can be retried.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from tidebank.cluster.cli._common import (
    DirOpt,
    EndpointsOpt,
    Output,
    OutputOpt,
    err,
    fail,
    one_line_errors,
    open_client,
    out,
    parse_id,
    print_json,
    print_lookup,
    print_table,
    resolve_endpoints,
    status_name,
    totals_targets,
)
from tidebank.cluster.launcher import ChannelPool
from tidebank.common.keys import U128_MAX

app = typer.Typer(
    help="Escrow (guaranteed) payments: open trades, ship, confirm, refund, disputes, and the escrow book.",
    no_args_is_help=True,
)
dispute_app = typer.Typer(help="Open, withdraw or resolve a trade's dispute.", no_args_is_help=True)
app.add_typer(dispute_app, name="dispute")

U32_MAX = (1 << 32) - 1
U64_MAX = (1 << 64) - 1
TRADE_BATCH_MAX = 8189
_TRADE_ID_FIELDS = frozenset(
    ("id", "buyer_account_id", "seller_account_id", "user_data_128", "escrow_account_id", "fee_account_id")
)
_TRADE_ENUM_PREFIXES = {
    "state": "trade_state_",
    "state_before_dispute": "trade_state_",
    "closed_by": "trade_closed_by_",
    "timer": "trade_timer_",
}
_OK_TRADE_RESULTS = ("ok", "exists")

TradeIdArg = Annotated[str, typer.Argument(help="Trade id (decimal or 0x hex).", metavar="ID", show_default=False)]
TradeIdsArg = Annotated[list[str], typer.Argument(help="Trade ids (decimal or 0x hex).", metavar="ID...")]
TradeTimeoutOpt = Annotated[
    float, typer.Option("--timeout-s", "--timeout", help="Client request timeout in seconds.", min=0.1)
]


# ---- helpers -----------------------------------------------------------------------


def _enum_name(value: Any, prefix: str = "") -> str:
    """`TradeState.PAID` -> "paid" (an unknown number stays a number)."""
    name = status_name(value)
    return name[len(prefix):] if prefix and name.startswith(prefix) else name


def _new_key(what: str, option: str) -> int:
    """A new idempotency key for a step the operator gave none for. It goes to stderr before the call,
    so the very same step can be retried with it (also when the outcome is unknown)."""
    from tidebank.client import new_id

    value = new_id()
    err.print(f"new {what} {value} (to retry this same step, pass {option} {value})", markup=False)
    return value


def _trade_results(results: list, output: Output, extra: dict[str, str] | None = None) -> None:
    """Per-item results of the trade steps; exit code 1 unless every one is ok or exists.

    `extra`: more columns, the same for every row (e.g. the refund id)."""
    extra = extra or {}
    rows = []
    for r in results:
        transfer_status = getattr(r, "transfer_status", None)
        status = status_name(r.status)
        rows.append(
            {
                "index": r.index,
                "trade_id": str(r.trade_id),
                **extra,
                "status": status,
                "transfer_status": status_name(transfer_status) if transfer_status is not None else None,
                "ok": status in _OK_TRADE_RESULTS,
            }
        )
    if output == Output.json:
        print_json(rows)
    else:
        table = Table(box=None, pad_edge=False)
        for col in ("INDEX", "TRADE ID", *(k.upper().replace("_", " ") for k in extra), "RESULT"):
            table.add_column(col, justify="right" if col == "INDEX" else "left")
        for row in rows:
            style = "green" if row["ok"] else "red"
            text = row["status"] + (f" ({row['transfer_status']})" if row["transfer_status"] else "")
            table.add_row(str(row["index"]), row["trade_id"], *(row[k] for k in extra), f"[{style}]{text}[/]")
        print_table(table)
    if not rows or not all(row["ok"] for row in rows):
        raise typer.Exit(1)


def _trade_ids(ids: list[str]) -> list[int]:
    if len(ids) > TRADE_BATCH_MAX:
        raise typer.BadParameter(f"at most {TRADE_BATCH_MAX} trade ids at once", param_hint="'ID...'")
    return [parse_id(i, "trade id") for i in ids]


def _trade_dict(t: Any) -> dict:
    """Every field of the Trade (proto order): ids as strings, enums by name, money as numbers."""
    from tidebank.v1 import escrow_pb2

    row: dict[str, Any] = {}
    for f in escrow_pb2.Trade.DESCRIPTOR.fields:
        value = getattr(t, f.name)
        if f.name in _TRADE_ID_FIELDS:
            row[f.name] = str(int(value))
        elif f.name in _TRADE_ENUM_PREFIXES:
            row[f.name] = _enum_name(value, _TRADE_ENUM_PREFIXES[f.name])
        elif f.name == "refunds":
            row[f.name] = [{"refund_id": str(int(i)), "amount": int(a)} for i, a in value]
        elif f.name == "extensions":
            row[f.name] = [{"extension_id": str(int(i)), "extend_by_s": int(s)} for i, s in value]
        elif isinstance(value, bool):
            row[f.name] = value
        else:
            row[f.name] = int(value)
    return row


def _deadline_text(deadline_ns: int, remaining_ns: int, now_ns: int) -> str:
    """When the running timer fires (UTC) and in how many seconds; a paused timer's time left."""
    import datetime

    if deadline_ns:
        when = datetime.datetime.fromtimestamp(deadline_ns / 1e9, datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        seconds = round((deadline_ns - now_ns) / 1e9)
        return f"{when} (in {seconds} s)" if seconds >= 0 else f"{when} ({-seconds} s ago)"
    if remaining_ns:
        return f"paused ({round(remaining_ns / 1e9)} s left)"
    return "-"


def _print_trades(rows: list[dict]) -> None:
    import time

    now_ns = time.time_ns()
    table = Table(box=None, pad_edge=False)
    cols = ("ID", "STATE", "BUYER", "SELLER", "AMOUNT", "HELD", "REFUNDED", "RELEASED", "FEE", "TIMER", "DEADLINE",
            "CLOSED BY")
    for col in cols:
        table.add_column(col, justify="right" if col in ("AMOUNT", "HELD", "REFUNDED", "RELEASED", "FEE") else "left")
    for r in rows:
        state = r["state"] + (f" (was {r['state_before_dispute']})" if r["state"] == "disputed" else "")
        table.add_row(
            r["id"],
            state,
            r["buyer_account_id"],
            r["seller_account_id"],
            str(r["amount"]),
            str(r["held"]),
            str(r["refunded"]),
            str(r["released"]),
            str(r["fee"]),
            r["timer"] if r["timer"] != "none" else "-",
            _deadline_text(r["deadline"], r["timer_remaining_ns"], now_ns),
            r["closed_by"] if r["closed_by"] != "none" else "-",
        )
    print_table(table)


# ---- writes ------------------------------------------------------------------------


@app.command("create")
@one_line_errors
def trade_create(
    buyer: Annotated[str, typer.Option("--buyer", help="Buyer account id (pays into escrow).", metavar="ID")],
    seller: Annotated[str, typer.Option("--seller", help="Seller account id (paid on release).", metavar="ID")],
    amount: Annotated[int, typer.Option(help="Amount in minor units, held in escrow.", min=1, max=U64_MAX)],
    ledger: Annotated[int, typer.Option(help="Ledger, same as the accounts'.", min=1, max=U32_MAX)],
    ship_by_s: Annotated[
        int, typer.Option("--ship-by-s", help="Seconds the seller has to ship (else refunded).", min=1, max=U32_MAX)
    ],
    auto_confirm_s: Annotated[
        int,
        typer.Option(
            "--auto-confirm-s", help="Seconds after shipping until released without a confirm.", min=1, max=U32_MAX
        ),
    ],
    fee_bps: Annotated[
        int, typer.Option("--fee-bps", help="Platform fee in basis points of what the seller gets.", min=0, max=10000)
    ] = 0,
    id: Annotated[
        str | None, typer.Option("--id", help="Trade id (default: a new time-ordered id).", metavar="ID")
    ] = None,
    user_data_128: Annotated[int, typer.Option(min=0, max=U128_MAX)] = 0,
    user_data_64: Annotated[int, typer.Option(min=0, max=U64_MAX)] = 0,
    user_data_32: Annotated[int, typer.Option(min=0, max=U32_MAX)] = 0,
    dir: DirOpt = None,
    endpoints: EndpointsOpt = None,
    output: OutputOpt = Output.table,
    timeout_s: TradeTimeoutOpt = 10.0,
) -> None:
    """Open a trade: the buyer's amount moves into escrow at once (or nothing happens).

    The trade id is the idempotency key: a retry with the same --id answers `exists`.
    Exit code 1 unless ok or exists."""
    buyer_id = parse_id(buyer, "buyer account id")
    seller_id = parse_id(seller, "seller account id")
    trade_id = parse_id(id, "trade id") if id is not None else None
    targets = resolve_endpoints(dir, endpoints)
    from tidebank.client import NewTrade

    trade_id = trade_id or _new_key("trade id", "--id")
    trade = NewTrade(
        id=trade_id,
        buyer_account_id=buyer_id,
        seller_account_id=seller_id,
        amount=amount,
        ledger=ledger,
        fee_bps=fee_bps,
        ship_by_timeout_s=ship_by_s,
        auto_confirm_timeout_s=auto_confirm_s,
        user_data_128=user_data_128,
        user_data_64=user_data_64,
        user_data_32=user_data_32,
    )
    with open_client(targets, timeout_s) as c:
        results = c.create_trades([trade])
    _trade_results(results, output)


def _step_command(group: typer.Typer, name: str, method: str, doc: str) -> None:
    """Register `NAME ID...` on GROUP: one client batch call METHOD with the trade ids, then its results."""

    def command(
        ids: TradeIdsArg,
        dir: DirOpt = None,
        endpoints: EndpointsOpt = None,
        output: OutputOpt = Output.table,
        timeout_s: TradeTimeoutOpt = 10.0,
    ) -> None:
        wanted = _trade_ids(ids)
        targets = resolve_endpoints(dir, endpoints)
        with open_client(targets, timeout_s) as c:
            results = getattr(c, method)(wanted)
        _trade_results(results, output)

    command.__doc__ = doc
    command.__name__ = command.__qualname__ = method
    group.command(name)(one_line_errors(command))


_step_command(app, "ship", "ship_trades", "The seller shipped: PAID -> SHIPPED, starts the auto-confirm timer "
              "(exit code 1 unless every result is ok or exists).")
_step_command(app, "confirm", "confirm_trades", "The buyer confirms receipt: the held amount less the fee goes to "
              "the seller, the fee to the platform (exit code 1 unless every result is ok or exists).")


@app.command("refund")
@one_line_errors
def trade_refund(
    trade_id: TradeIdArg,
    amount: Annotated[int, typer.Option(help="Amount to give back to the buyer, from what is held.", min=1,
                                        max=U64_MAX)],
    refund_id: Annotated[
        str | None,
        typer.Option("--refund-id", help="Refund id, the idempotency key (default: a new id, printed).", metavar="ID"),
    ] = None,
    dir: DirOpt = None,
    endpoints: EndpointsOpt = None,
    output: OutputOpt = Output.table,
    timeout_s: TradeTimeoutOpt = 10.0,
) -> None:
    """Refund part or all of what a trade holds to its buyer.

    Each refund is idempotent by its refund id: to retry a refund, pass the id it was given
    (printed on stderr when generated). Exit code 1 unless ok or exists."""
    tid = parse_id(trade_id, "trade id")
    rid = parse_id(refund_id, "refund id") if refund_id is not None else None
    targets = resolve_endpoints(dir, endpoints)
    from tidebank.client import Refund

    rid = rid or _new_key("refund id", "--refund-id")
    with open_client(targets, timeout_s) as c:
        results = c.refund_trades([Refund(trade_id=tid, refund_id=rid, amount=amount)])
    _trade_results(results, output, {"refund_id": str(rid)})


_step_command(dispute_app, "open", "open_disputes", "Open a dispute: the trade's timer stops until it is withdrawn "
              "or resolved (one dispute per trade; exit code 1 unless every result is ok or exists).")
_step_command(dispute_app, "withdraw", "withdraw_disputes", "End a dispute without a ruling: the timer resumes with "
              "the time it had left (exit code 1 unless every result is ok or exists).")


@dispute_app.command("resolve")
@one_line_errors
def trade_dispute_resolve(
    trade_id: TradeIdArg,
    buyer_amount: Annotated[
        int,
        typer.Option("--buyer-amount", help="To the buyer; the rest of what is held, less the fee, to the seller.",
                     min=0, max=U64_MAX),
    ],
    dir: DirOpt = None,
    endpoints: EndpointsOpt = None,
    output: OutputOpt = Output.table,
    timeout_s: TradeTimeoutOpt = 10.0,
) -> None:
    """Resolve a dispute by splitting what the trade holds; the trade is closed (exit code 1
    unless ok or exists)."""
    tid = parse_id(trade_id, "trade id")
    targets = resolve_endpoints(dir, endpoints)
    from tidebank.client import DisputeResolution

    with open_client(targets, timeout_s) as c:
        results = c.resolve_disputes([DisputeResolution(trade_id=tid, buyer_amount=buyer_amount)])
    _trade_results(results, output)


@app.command("extend")
@one_line_errors
def trade_extend(
    trade_id: TradeIdArg,
    by_s: Annotated[int, typer.Option("--by-s", help="Seconds to add to the auto-confirm timer.", min=1,
                                      max=U32_MAX)],
    extension_id: Annotated[
        str | None,
        typer.Option("--extension-id", help="Extension id, the idempotency key (default: a new id, printed).",
                     metavar="ID"),
    ] = None,
    dir: DirOpt = None,
    endpoints: EndpointsOpt = None,
    output: OutputOpt = Output.table,
    timeout_s: TradeTimeoutOpt = 10.0,
) -> None:
    """The buyer extends the auto-confirm timer of a shipped trade.

    Idempotent by the extension id: to retry, pass the id it was given (printed on stderr
    when generated). Exit code 1 unless ok or exists."""
    tid = parse_id(trade_id, "trade id")
    eid = parse_id(extension_id, "extension id") if extension_id is not None else None
    targets = resolve_endpoints(dir, endpoints)
    from tidebank.client import Extension

    eid = eid or _new_key("extension id", "--extension-id")
    with open_client(targets, timeout_s) as c:
        results = c.extend_trades([Extension(trade_id=tid, extension_id=eid, extend_by_s=by_s)])
    _trade_results(results, output, {"extension_id": str(eid)})


# ---- reads -------------------------------------------------------------------------


@app.command("get")
@one_line_errors
def trade_get(
    ids: TradeIdsArg,
    dir: DirOpt = None,
    endpoints: EndpointsOpt = None,
    output: OutputOpt = Output.table,
    timeout_s: TradeTimeoutOpt = 10.0,
) -> None:
    """Look up trades: state, the money held, refunded, released and taken as fee, the running
    timer and when it fires (exit code 1 if any is not found). JSON has every field."""
    wanted = _trade_ids(ids)
    targets = resolve_endpoints(dir, endpoints)
    with open_client(targets, timeout_s) as c:
        trades = c.lookup_trades(wanted)
    print_lookup(wanted, trades, [_trade_dict(t) for t in trades], output, _print_trades, "trade")


@app.command("list")
@one_line_errors
def trade_list(
    buyer: Annotated[
        str | None, typer.Option("--buyer", help="List the trades this account pays for.", metavar="ID")
    ] = None,
    seller: Annotated[
        str | None, typer.Option("--seller", help="List the trades this account sells in.", metavar="ID")
    ] = None,
    limit: Annotated[int, typer.Option(help="Page size.", min=1, max=TRADE_BATCH_MAX)] = 100,
    page_token: Annotated[
        str, typer.Option("--page-token", help="Continue from a previous page's next page token.", metavar="TOKEN")
    ] = "",
    all_pages: Annotated[bool, typer.Option("--all", help="Follow the pages to the end.")] = False,
    dir: DirOpt = None,
    endpoints: EndpointsOpt = None,
    output: OutputOpt = Output.table,
    timeout_s: TradeTimeoutOpt = 10.0,
) -> None:
    """The trades of one buyer or one seller account (give exactly one), oldest first, a page at a
    time; the next page token is printed when there are more (--all fetches them all)."""
    if (buyer is None) == (seller is None):
        raise typer.BadParameter("give exactly one of --buyer ID or --seller ID", param_hint="'--buyer' / '--seller'")
    account_id = parse_id(buyer if buyer is not None else seller, "account id")  # type: ignore[arg-type]
    targets = resolve_endpoints(dir, endpoints)
    from tidebank.client import TradeRole

    role = TradeRole.BUYER if buyer is not None else TradeRole.SELLER
    trades: list = []
    token = page_token
    with open_client(targets, timeout_s) as c:
        while True:
            page = c.list_trades(account_id, role=role, limit=limit, page_token=token)
            trades += page.items
            if not all_pages or not page.next_page_token:
                token = page.next_page_token
                break
            if page.next_page_token == token:
                raise RuntimeError(f"the cluster returned the same page token twice ({token!r})")
            token = page.next_page_token
    rows = [_trade_dict(t) for t in trades]
    if output == Output.json:
        print_json({"trades": rows, "next_page_token": token})
        return
    _print_trades(rows)
    who = "buyer" if buyer is not None else "seller"
    out.print(f"{len(rows)} trade(s) with {who} {account_id}", markup=False)
    if token:
        out.print(f"more: --page-token {token}", markup=False)


@app.command("totals")
@one_line_errors
def trade_totals(
    dir: DirOpt = None,
    endpoints: EndpointsOpt = None,
    output: OutputOpt = Output.table,
    timeout: Annotated[float, typer.Option("--timeout", help="Per-request timeout in seconds.", min=0.1)] = 5.0,
) -> None:
    """The escrow book per ledger, summed over every shard (each read on its leader): held in
    escrow, platform fees taken, released to sellers, refunded to buyers, the balances of the
    escrow and fee accounts, and trades by state. `tidebank audit` checks held == escrow
    balance and fees == fee balance.

    Exit code 2 when a shard has no leader that answers (or no node answers): the sums would
    leave it out."""
    from tidebank.cluster.audit import TRADE_COUNT_FIELDS, collect_totals, escrow_dict
    from tidebank.cluster.audit import audit as judge

    with ChannelPool() as pool:
        addresses, expected = totals_targets(dir, endpoints, timeout, pool)
        answers, unreachable = collect_totals(addresses, timeout, pool)
    report = judge(answers, expected, unreachable)
    if output == Output.json:
        print_json(
            {
                "complete": report.complete,
                "missing_shards": report.missing_shards,
                "unreachable": report.unreachable,
                "ledgers": [{"ledger": ledger, **escrow_dict(t)} for ledger, t in report.escrow.items()],
            }
        )
    else:
        table = Table(box=None, pad_edge=False)
        states = [f.removeprefix("trades_").upper() for f in TRADE_COUNT_FIELDS]
        for col in ("LEDGER", "HELD", "FEES", "RELEASED", "REFUNDED", "ESCROW BALANCE", "FEE BALANCE", *states):
            table.add_column(col, justify="right")
        for ledger, t in report.escrow.items():
            table.add_row(
                str(ledger),
                *(str(t[f]) for f in ("held", "fees", "released", "refunded", "escrow_balance", "fee_balance")),
                *(str(t[f]) for f in TRADE_COUNT_FIELDS),
            )
        print_table(table)
        if not report.escrow:
            out.print("no trades on any ledger", markup=False)
        out.print(f"{len(report.shards)} shards read on their leaders; {len(report.escrow)} ledgers with trades",
                  markup=False)
        if report.unreachable:
            out.print(f"not answering: {', '.join(report.unreachable)}", markup=False)
    if report.missing_shards:
        raise fail(f"incomplete: no leader answered for shard(s) {', '.join(map(str, report.missing_shards))}", 2)

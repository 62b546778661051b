"""`tidebank clearing ...`: clearing and net settlement between participants.

Participants (`clearing participant add|list|get|cap|suspend|resume`), items (`clearing submit`, one or a
CSV file), windows (`clearing window list|show|close|abort`), `clearing settle` and `clearing unwind`, a
participant's statement of a window (`clearing statement`, streamed; a broken stream is resumed after the
last item written) and `clearing reconcile`, which compares a participant's own file with the window.

Every write is idempotent: by participant id, item id or window number. When the operator gives no id for a
new participant or item, one is printed on stderr before the call, so the very same step can be retried.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import enum
import json
import os
import pathlib
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import IO, Annotated, Any

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
    print_results,
    print_table,
    resolve_endpoints,
    status_name,
)
from tidebank.cluster.reconcile import FileError, Obligation, ReconcileReport, parse_int_field
from tidebank.common.keys import U64_MAX, U128_MAX
from tidebank.common.limits import BATCH_ITEMS_MAX, PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX

app = typer.Typer(
    help="Clearing and net settlement: participants, items, windows, settlement, statements, reconciliation.",
    no_args_is_help=True,
)
participant_app = typer.Typer(help="Register participants, change their caps, suspend or resume them, look them up.",
                              no_args_is_help=True)
window_app = typer.Typer(help="List, show, close or abort clearing windows.", no_args_is_help=True)
app.add_typer(participant_app, name="participant")
app.add_typer(window_app, name="window")

U32_MAX = (1 << 32) - 1
NAME_BYTES_MAX = 32  # Participant.name: up to 32 bytes of UTF-8
SUBMIT_BATCH_ITEMS = BATCH_ITEMS_MAX  # items per submit_items call of `submit --file`
REFUSED_SHOWN_MAX = 20  # refused items `submit --file` lists (the counts cover all of them)
ITEM_FILE_COLUMNS = ("id", "payer_id", "payee_id", "amount", "ledger")
ITEM_FILE_OPTIONAL = ("user_data_128",)
STATEMENT_COLUMNS = ("id", "payer_id", "payee_id", "amount", "ledger", "user_data_128", "status")
_OK_ITEM_RESULTS = ("ok", "exists")
_SETTLED_RESULTS = ("ok", "window_already_settled")  # a settled window is what `settle` asks for
_ABORTED_RESULTS = ("ok", "window_already_aborted")  # an aborted window is what `window abort` asks for

LedgerOpt = Annotated[int, typer.Option("--ledger", help="Ledger.", min=1, max=U32_MAX)]
WindowArg = Annotated[int, typer.Argument(help="Window number.", metavar="NUMBER", min=1, max=U64_MAX)]
OpenWindowArg = Annotated[
    int, typer.Argument(help="Window number (default: the open window).", metavar="[NUMBER]", min=0, max=U64_MAX)
]
ParticipantIdArg = Annotated[str, typer.Argument(help="Participant id (decimal or 0x hex).", metavar="ID",
                                                 show_default=False)]
ParticipantOpt = Annotated[str, typer.Option("--participant", help="Participant id.", metavar="ID")]
TimeoutSOpt = Annotated[
    float, typer.Option("--timeout-s", "--timeout", help="Client request timeout in seconds.", min=0.1)
]


class StatementFormat(enum.StrEnum):
    csv = "csv"
    json = "json"


# ---- helpers -----------------------------------------------------------------------


def _new_key(what: str, option: str) -> int:
    """A new id for a step the operator gave none for, on stderr before the call (so it can be retried)."""
    from tidebank.client import new_id

    value = new_id()
    err.print(f"new {what} {value} (to retry this same step, pass {option} {value})", markup=False)
    return value


def _time_text(ns: int) -> str:
    """Cluster time (ns) as UTC, "-" when unset."""
    if not ns:
        return "-"
    return datetime.datetime.fromtimestamp(ns / 1e9, datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _participant_dict(p: Any) -> dict:
    return {
        "id": str(p.id),
        "ledger": p.ledger,
        "code": p.code,
        "name": p.name,
        "settlement_account_id": str(p.settlement_account_id),
        "net_debit_cap": p.net_debit_cap,
        "position": p.position,
        "suspended": bool(p.suspended),
        "version": p.version,
    }


def _print_participants(rows: list[dict]) -> None:
    table = Table(box=None, pad_edge=False)
    for col in ("ID", "LEDGER", "CODE", "NAME", "SETTLEMENT ACCOUNT", "CAP", "POSITION", "SUSPENDED"):
        table.add_column(col, justify="right" if col in ("LEDGER", "CODE", "CAP", "POSITION") else "left")
    for r in rows:
        table.add_row(r["id"], str(r["ledger"]), str(r["code"]), r["name"], r["settlement_account_id"],
                      str(r["net_debit_cap"]), str(r["position"]), "yes" if r["suspended"] else "no")
    print_table(table)


def _window_dict(w: Any) -> dict:
    return {
        "ledger": w.ledger,
        "number": w.number,
        "state": status_name(w.state),
        "opened_at": w.opened_at,
        "closed_at": w.closed_at,
        "settled_at": w.settled_at,
        "aborted_at": w.aborted_at,
        "round": w.round,
        "unwound": [str(u) for u in w.unwound],
        "failure": w.failure,
        "hub_account_id": str(w.hub_account_id),
        "nets": [
            {"participant_id": str(n.participant_id), "sent": n.sent, "received": n.received,
             "count_sent": n.count_sent, "count_received": n.count_received, "net": n.net}
            for n in w.nets
        ],
        "bilateral": [
            {"payer_id": str(b.payer_id), "payee_id": str(b.payee_id), "amount": b.amount, "count": b.count}
            for b in w.bilateral
        ],
        "settlement_transfer_ids": [str(t) for t in w.settlement_transfer_ids],
    }


def _print_windows(rows: list[dict]) -> None:
    table = Table(box=None, pad_edge=False)
    for col in ("NUMBER", "STATE", "OPENED", "CLOSED", "SETTLED", "ROUND", "UNWOUND", "FAILURE"):
        table.add_column(col, justify="right" if col in ("NUMBER", "ROUND", "UNWOUND") else "left")
    for r in rows:
        ended = r["settled_at"] or r.get("aborted_at", 0)  # SETTLED: when it settled, or when it was aborted
        table.add_row(str(r["number"]), r["state"], _time_text(r["opened_at"]), _time_text(r["closed_at"]),
                      _time_text(ended), str(r["round"]), str(len(r["unwound"])), r["failure"] or "-")
    print_table(table)


def _print_window_detail(row: dict) -> None:
    """One window: its line, its nets, its bilateral matrix (if asked for) and its settlement transfers."""
    _print_windows([row])
    if row["nets"]:
        out.print("", markup=False)
        table = Table(box=None, pad_edge=False)
        for col in ("PARTICIPANT", "SENT", "RECEIVED", "COUNT SENT", "COUNT RECEIVED", "NET"):
            table.add_column(col, justify="left" if col == "PARTICIPANT" else "right")
        for n in row["nets"]:
            table.add_row(n["participant_id"], str(n["sent"]), str(n["received"]), str(n["count_sent"]),
                          str(n["count_received"]), str(n["net"]))
        print_table(table)
    if row["bilateral"]:
        out.print("", markup=False)
        table = Table(box=None, pad_edge=False)
        for col in ("PAYER", "PAYEE", "AMOUNT", "COUNT"):
            table.add_column(col, justify="right" if col in ("AMOUNT", "COUNT") else "left")
        for b in row["bilateral"]:
            table.add_row(b["payer_id"], b["payee_id"], str(b["amount"]), str(b["count"]))
        print_table(table)
    if row["unwound"]:
        out.print(f"unwound: {', '.join(row['unwound'])}", markup=False)
    if row["settlement_transfer_ids"]:
        out.print(f"settlement transfers: {', '.join(row['settlement_transfer_ids'])}", markup=False)


def _step(step: Any, output: Output, done: tuple[str, ...] = ("ok",)) -> None:
    """A window step's answer: its code, the window as it is now, the shortfalls (insufficient funds).
    Exit code 1 unless the code is one of DONE."""
    result = status_name(step.result)
    shortfalls = [
        {"participant_id": str(s.participant_id), "net_debit": s.net_debit, "available": s.available,
         "shortfall": s.shortfall}
        for s in step.shortfalls
    ]
    ok = result in done
    if output == Output.json:
        print_json({"result": result, "ok": ok, "window": _window_dict(step.window), "shortfalls": shortfalls})
    else:
        out.print(f"[{'green' if ok else 'red'}]{result}[/]")
        _print_window_detail(_window_dict(step.window))
        if shortfalls:
            out.print("", markup=False)
            table = Table(box=None, pad_edge=False, title="shortfalls")
            for col in ("PARTICIPANT", "NET DEBIT", "AVAILABLE", "SHORTFALL"):
                table.add_column(col, justify="left" if col == "PARTICIPANT" else "right")
            for s in shortfalls:
                table.add_row(s["participant_id"], str(s["net_debit"]), str(s["available"]), str(s["shortfall"]))
            print_table(table)
    if not ok:
        raise typer.Exit(1)


def _item_row(item: Any) -> dict:
    return {
        "id": str(item.id),
        "payer_id": str(item.payer_id),
        "payee_id": str(item.payee_id),
        "amount": item.amount,
        "ledger": item.ledger,
        "user_data_128": str(item.user_data_128),
        "status": status_name(item.status),
    }


def _statement_dict(s: Any) -> dict:
    return {
        "participant_id": str(s.participant_id),
        "ledger": s.ledger,
        "window": s.window,
        "sent": s.sent,
        "received": s.received,
        "count_sent": s.count_sent,
        "count_received": s.count_received,
        "net": s.net,
        "settlement_transfer_id": str(s.settlement_transfer_id),
        "settlement_amount": s.settlement_amount,
        "sha256": s.sha256,
        "items": s.items,
    }


def _progress(total: int | None, what: str, enabled: bool = True) -> Any:
    """A progress bar on stderr (only on a terminal: logs and pipes stay clean). TOTAL None: a count."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = [TextColumn(what), BarColumn(), MofNCompleteColumn() if total is not None
               else TextColumn("{task.completed} items"), TimeElapsedColumn()]
    return Progress(*columns, console=err, disable=not (enabled and err.is_terminal), transient=False)


# ---- participants ----------------------------------------------------------------------


@participant_app.command("add")
@one_line_errors
def participant_add(
    ledger: LedgerOpt,
    code: Annotated[int, typer.Option(help="Participant type (yours to define).", min=0, max=U32_MAX)],
    name: Annotated[str, typer.Option(help=f"Name, up to {NAME_BYTES_MAX} bytes of UTF-8.")],
    settlement_account: Annotated[
        str, typer.Option("--settlement-account", help="The ledger account it settles through.", metavar="ID")
    ],
    cap: Annotated[int, typer.Option("--cap", help="Net debit cap: the most it may owe, in minor units.", min=0,
                                     max=U64_MAX)],
    id: Annotated[
        str | None, typer.Option("--id", help="Participant id (default: a new id, printed).", metavar="ID")
    ] = None,
    dir: DirOpt = None,
    endpoints: EndpointsOpt = None,
    output: OutputOpt = Output.table,
    timeout_s: TimeoutSOpt = 10.0,
) -> None:
    """Register a participant (exit code 1 unless ok or exists). Idempotent by its id."""
    pid = parse_id(id, "participant id") if id is not None else None
    account = parse_id(settlement_account, "settlement account id")
    if len(name.encode()) > NAME_BYTES_MAX:
        raise typer.BadParameter(f"{len(name.encode())} bytes, at most {NAME_BYTES_MAX}", param_hint="'--name'")
    targets = resolve_endpoints(dir, endpoints)
    from tidebank.client import Participant

    pid = pid or _new_key("participant id", "--id")
    participant = Participant(pid, ledger=ledger, code=code, name=name, settlement_account_id=account,
                              net_debit_cap=cap)
    with open_client(targets, timeout_s) as c:
        results = c.register_participants([participant])
    print_results(results, output)


@participant_app.command("list")
@one_line_errors
def participant_list(
    ledger: Annotated[int, typer.Option("--ledger", help="Only this ledger (default: every ledger).", min=0,
                                        max=U32_MAX)] = 0,
    after: Annotated[str, typer.Option("--after", help="Start after this participant id.", metavar="ID")] = "0",
    limit: Annotated[int, typer.Option("--limit", help="One page of at most this many (0: every participant).",
                                       min=0, max=PAGE_SIZE_MAX)] = 0,
    dir: DirOpt = None,
    endpoints: EndpointsOpt = None,
    output: OutputOpt = Output.table,
    timeout_s: TimeoutSOpt = 10.0,
) -> None:
    """The participants (of one ledger), by id, with their caps: all of them, or a page (--limit; the next page:
    --after the last id)."""
    after_id = parse_id(after, "participant id") if after != "0" else 0
    targets = resolve_endpoints(dir, endpoints)
    with open_client(targets, timeout_s) as c:
        participants = c.list_participants(ledger, after=after_id, limit=limit)
    rows = [_participant_dict(p) for p in participants]
    if output == Output.json:
        print_json(rows)
        return
    _print_participants(rows)
    out.print(f"{len(rows)} participant(s)", markup=False)
    if limit and len(rows) >= limit:  # a full page: there may be more
        out.print(f"next page: --after {rows[-1]['id']}", markup=False)


@participant_app.command("get")
@one_line_errors
def participant_get(
    ids: Annotated[list[str], typer.Argument(help="Participant ids (decimal or 0x hex).", metavar="ID...")],
    dir: DirOpt = None,
    endpoints: EndpointsOpt = None,
    output: OutputOpt = Output.table,
    timeout_s: TimeoutSOpt = 10.0,
) -> None:
    """Look up participants with their current position, summed over every shard (exit code 1 if any is not
    found)."""
    if len(ids) > BATCH_ITEMS_MAX:
        raise typer.BadParameter(f"at most {BATCH_ITEMS_MAX} ids at once", param_hint="'ID...'")
    wanted = [parse_id(i, "participant id") for i in ids]
    targets = resolve_endpoints(dir, endpoints)
    with open_client(targets, timeout_s) as c:
        found = c.lookup_participants(wanted)
    print_lookup(wanted, found, [_participant_dict(p) for p in found], output, _print_participants, "participant")


@participant_app.command("cap")
@one_line_errors
def participant_cap(
    participant_id: ParticipantIdArg,
    cap: Annotated[int, typer.Argument(help="The new net debit cap, in minor units.", metavar="N", min=0,
                                       max=U64_MAX)],
    dir: DirOpt = None,
    endpoints: EndpointsOpt = None,
    output: OutputOpt = Output.table,
    timeout_s: TimeoutSOpt = 10.0,
) -> None:
    """Set a participant's net debit cap (exit code 1 unless ok; `cap_below_position` when it already owes
    more)."""
    pid = parse_id(participant_id, "participant id")
    targets = resolve_endpoints(dir, endpoints)
    with open_client(targets, timeout_s) as c:
        result = c.set_net_debit_cap(pid, cap)
    print_results([result], output)


def _flag_command(name: str, method: str, doc: str) -> None:
    """Register `participant NAME ID`: one client call METHOD, then its result."""

    def command(
        participant_id: ParticipantIdArg,
        dir: DirOpt = None,
        endpoints: EndpointsOpt = None,
        output: OutputOpt = Output.table,
        timeout_s: TimeoutSOpt = 10.0,
    ) -> None:
        pid = parse_id(participant_id, "participant id")
        targets = resolve_endpoints(dir, endpoints)
        with open_client(targets, timeout_s) as c:
            result = getattr(c, method)(pid)
        print_results([result], output)

    command.__doc__ = doc
    command.__name__ = command.__qualname__ = f"participant_{name}"
    participant_app.command(name)(one_line_errors(command))


_flag_command("suspend", "suspend_participant", "Suspend a participant: as payer it submits nothing new (its "
              "accepted items stay). Exit code 1 unless ok.")
_flag_command("resume", "resume_participant", "Resume a suspended participant (exit code 1 unless ok).")


# ---- items -------------------------------------------------------------------------------


def _item_file_rows(lines: Iterable[str]) -> Iterator[tuple[int, Any]]:
    """(line, ClearingItem) of an items CSV (a header naming id,payer_id,payee_id,amount,ledger and optionally
    user_data_128; other columns are ignored). Raises FileError naming the line of a bad row."""
    from tidebank.client import ClearingItem

    reader = csv.reader(lines)
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        raise FileError(0, f"the file is empty (a header naming {','.join(ITEM_FILE_COLUMNS)} is required)") from None
    except csv.Error as exc:
        raise FileError(1, str(exc)) from None
    lacking = [c for c in ITEM_FILE_COLUMNS if c not in header]
    if lacking:
        raise FileError(1, f"the header must name {','.join(ITEM_FILE_COLUMNS)} (lacks {','.join(lacking)})")
    at = {c: header.index(c) for c in (*ITEM_FILE_COLUMNS, *ITEM_FILE_OPTIONAL) if c in header}
    width = max(at.values()) + 1
    limits = {"id": (1, U128_MAX - 1), "payer_id": (1, U128_MAX - 1), "payee_id": (1, U128_MAX - 1),
              "amount": (0, U64_MAX), "ledger": (0, U32_MAX), "user_data_128": (0, U128_MAX)}
    try:
        for row in reader:
            line = reader.line_num
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) < width:
                raise FileError(line, f"{len(row)} fields, the header has {len(header)}")
            try:
                v = {c: parse_int_field(row[k], c, limits[c][1], limits[c][0]) for c, k in at.items()
                     if c in ITEM_FILE_COLUMNS or row[k].strip()}
            except ValueError as exc:
                raise FileError(line, str(exc)) from None
            yield line, ClearingItem(v["id"], payer_id=v["payer_id"], payee_id=v["payee_id"], amount=v["amount"],
                                     ledger=v["ledger"], user_data_128=v.get("user_data_128", 0))
    except csv.Error as exc:
        raise FileError(reader.line_num, str(exc)) from None


def _batches(rows: Iterator[tuple[int, Any]], size: int) -> Iterator[list[tuple[int, Any]]]:
    batch: list[tuple[int, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _submit_file(path: pathlib.Path, targets: list[str], output: Output, timeout_s: float) -> None:
    """Check the whole file first (nothing is sent for a malformed one), then submit it in batches."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            total = sum(1 for _ in _item_file_rows(f))
    except FileError as exc:
        raise fail(f"{path}: {exc}", 2) from None
    counts: Counter[str] = Counter()
    refused: list[dict] = []
    requests = done = 0
    with (
        path.open(newline="", encoding="utf-8-sig") as f,
        open_client(targets, timeout_s) as c,
        _progress(total, "submitting") as progress,
    ):
        task = progress.add_task("submit", total=total)
        for batch in _batches(_item_file_rows(f), SUBMIT_BATCH_ITEMS):
            try:
                results = c.submit_items([item for _, item in batch])
            except Exception:
                err.print(f"{done} of {total} items answered before the failure ({_counts_text(counts)}); "
                          "submitting the file again is safe: item ids are idempotency keys", markup=False)
                raise
            requests += 1
            done += len(batch)
            for (line, item), r in zip(batch, results, strict=True):
                status = status_name(r.status)
                counts[status] += 1
                if status not in _OK_ITEM_RESULTS and len(refused) < REFUSED_SHOWN_MAX:
                    refused.append({"line": line, "id": str(item.id), "status": status})
            progress.advance(task, len(batch))
    _print_submitted(total, requests, counts, refused, output)


def _counts_text(counts: Counter[str]) -> str:
    return ", ".join(f"{k} {n}" for k, n in counts.most_common()) or "none"


def _print_submitted(total: int, requests: int, counts: Counter[str], refused: list[dict], output: Output) -> None:
    """Counts per result code of `submit --file`, and the first refused items; exit code 1 unless all ok."""
    all_ok = all(k in _OK_ITEM_RESULTS for k in counts)
    if output == Output.json:
        print_json({"items": total, "requests": requests, "results": dict(counts.most_common()),
                    "refused": refused, "ok": all_ok})
    else:
        table = Table(box=None, pad_edge=False)
        table.add_column("RESULT")
        table.add_column("COUNT", justify="right")
        for status, n in counts.most_common():
            table.add_row(f"[{'green' if status in _OK_ITEM_RESULTS else 'red'}]{status}[/]", str(n))
        print_table(table)
        out.print(f"{total} item(s) in {requests} request(s)", markup=False)
        if refused:
            out.print("", markup=False)
            table = Table(box=None, pad_edge=False, title=f"first {len(refused)} refused")
            for col in ("LINE", "ID", "RESULT"):
                table.add_column(col, justify="right" if col == "LINE" else "left")
            for r in refused:
                table.add_row(str(r["line"]), r["id"], r["status"])
            print_table(table)
    if not all_ok:
        raise typer.Exit(1)


@app.command("submit")
@one_line_errors
def clearing_submit(
    payer: Annotated[str | None, typer.Option("--payer", help="Payer participant id (owes).", metavar="ID")] = None,
    payee: Annotated[str | None, typer.Option("--payee", help="Payee participant id (is owed).",
                                              metavar="ID")] = None,
    amount: Annotated[int | None, typer.Option(help="Amount in minor units.", min=1, max=U64_MAX)] = None,
    ledger: Annotated[int | None, typer.Option(help="Ledger, the participants'.", min=1, max=U32_MAX)] = None,
    id: Annotated[str | None, typer.Option("--id", help="Item id (default: a new id, printed).",
                                           metavar="ID")] = None,
    user_data_128: Annotated[int, typer.Option(help="E.g. the payment's reference.", min=0, max=U128_MAX)] = 0,
    user_data_64: Annotated[int, typer.Option(min=0, max=U64_MAX)] = 0,
    file: Annotated[
        pathlib.Path | None,
        typer.Option("--file", help="CSV of items: id,payer_id,payee_id,amount,ledger[,user_data_128], with a "
                     "header; streamed in batches.", exists=True, dir_okay=False, readable=True),
    ] = None,
    dir: DirOpt = None,
    endpoints: EndpointsOpt = None,
    output: OutputOpt = Output.table,
    timeout_s: TimeoutSOpt = 10.0,
) -> None:
    """Submit one clearing item, or every item of a CSV file (--file), against the payers' net debit caps.

    One item: its result (exit code 1 unless ok or exists). A file: counts per result code and the
    first refused items (exit code 1 unless every item is ok or exists; 2 for a malformed file, of which
    nothing is sent). Idempotent by item id: a file can be submitted again."""
    single = {"--payer": payer, "--payee": payee, "--amount": amount, "--ledger": ledger}
    if file is not None:
        given = [k for k, v in {**single, "--id": id}.items() if v is not None]
        if given or user_data_128 or user_data_64:
            raise typer.BadParameter("--file takes its items from the file: give no item options with it",
                                     param_hint="'--file'")
        _submit_file(file, resolve_endpoints(dir, endpoints), output, timeout_s)
        return
    missing = [k for k, v in single.items() if v is None]
    if missing:
        raise typer.BadParameter(f"missing {', '.join(missing)} (or give --file)", param_hint="item")
    payer_id = parse_id(payer, "payer id")  # type: ignore[arg-type]
    payee_id = parse_id(payee, "payee id")  # type: ignore[arg-type]
    item_id = parse_id(id, "item id") if id is not None else None
    targets = resolve_endpoints(dir, endpoints)
    from tidebank.client import ClearingItem

    item_id = item_id or _new_key("item id", "--id")
    item = ClearingItem(item_id, payer_id=payer_id, payee_id=payee_id, amount=amount, ledger=ledger,
                        user_data_128=user_data_128, user_data_64=user_data_64)
    with open_client(targets, timeout_s) as c:
        results = c.submit_items([item])
    print_results(results, output)


# ---- windows -----------------------------------------------------------------------------


@window_app.command("list")
@one_line_errors
def window_list(
    ledger: LedgerOpt,
    after: Annotated[int, typer.Option("--after", help="Start after this window number.", min=0,
                                       max=U64_MAX)] = 0,
    limit: Annotated[int, typer.Option("--limit", help="Page size (0: the server's default).", min=0,
                                       max=PAGE_SIZE_MAX)] = 0,
    dir: DirOpt = None,
    endpoints: EndpointsOpt = None,
    output: OutputOpt = Output.table,
    timeout_s: TimeoutSOpt = 10.0,
) -> None:
    """A ledger's windows, oldest first, a page at a time (the next page: --after the last number)."""
    targets = resolve_endpoints(dir, endpoints)
    with open_client(targets, timeout_s) as c:
        windows = c.list_windows(ledger, after, limit)
    rows = [_window_dict(w) for w in windows]
    if output == Output.json:
        print_json(rows)
        return
    _print_windows(rows)
    out.print(f"{len(rows)} window(s) of ledger {ledger}", markup=False)
    if rows and len(rows) >= (limit or PAGE_SIZE_DEFAULT):  # a full page: there may be more
        out.print(f"next page: --after {rows[-1]['number']}", markup=False)


@window_app.command("show")
@one_line_errors
def window_show(
    ledger: LedgerOpt,
    number: OpenWindowArg = 0,
    bilateral: Annotated[bool, typer.Option("--bilateral", help="Also the gross payer x payee matrix.")] = False,
    dir: DirOpt = None,
    endpoints: EndpointsOpt = None,
    output: OutputOpt = Output.table,
    timeout_s: TimeoutSOpt = 10.0,
) -> None:
    """One window (default: the open one) with each participant's net position."""
    targets = resolve_endpoints(dir, endpoints)
    with open_client(targets, timeout_s) as c:
        window = c.get_window(ledger, number, bilateral)
    row = _window_dict(window)
    if output == Output.json:
        print_json(row)
    else:
        _print_window_detail(row)


@window_app.command("close")
@one_line_errors
def window_close(
    ledger: LedgerOpt,
    number: OpenWindowArg = 0,
    dir: DirOpt = None,
    endpoints: EndpointsOpt = None,
    output: OutputOpt = Output.table,
    timeout_s: TimeoutSOpt = 10.0,
) -> None:
    """Close a window (default: the open one) across every shard and net it; the next window opens at once.
    Exit code 1 unless ok (retrying a close is safe)."""
    targets = resolve_endpoints(dir, endpoints)
    with open_client(targets, timeout_s) as c:
        step = c.close_window(ledger, number)
    _step(step, output)


@window_app.command("abort")
@one_line_errors
def window_abort(
    number: WindowArg,
    ledger: LedgerOpt,
    dir: DirOpt = None,
    endpoints: EndpointsOpt = None,
    output: OutputOpt = Output.table,
    timeout_s: TimeoutSOpt = 10.0,
) -> None:
    """Abort a closed window that has not settled: its items are excluded on every shard, the positions they
    raised given back, and it is never settled. Exit code 0 when the window is aborted (now or before); a window
    that is open, settling, settled or being unwound is refused (exit code 1, nothing changed)."""
    targets = resolve_endpoints(dir, endpoints)
    with open_client(targets, timeout_s) as c:
        step = c.abort_window(ledger, number)
    _step(step, output, _ABORTED_RESULTS)


@app.command("settle")
@one_line_errors
def clearing_settle(
    number: WindowArg,
    ledger: LedgerOpt,
    dir: DirOpt = None,
    endpoints: EndpointsOpt = None,
    output: OutputOpt = Output.table,
    timeout_s: TimeoutSOpt = 10.0,
) -> None:
    """Settle a closed window by ledger transfers, all or nothing. On insufficient funds nothing moves and
    the shortfalls are listed. Exit code 0 when the window is settled (now or before), else 1."""
    targets = resolve_endpoints(dir, endpoints)
    with open_client(targets, timeout_s) as c:
        step = c.settle_window(ledger, number)
    _step(step, output, _SETTLED_RESULTS)


@app.command("unwind")
@one_line_errors
def clearing_unwind(
    number: WindowArg,
    ledger: LedgerOpt,
    participant: ParticipantOpt,
    dir: DirOpt = None,
    endpoints: EndpointsOpt = None,
    output: OutputOpt = Output.table,
    timeout_s: TimeoutSOpt = 10.0,
) -> None:
    """Exclude a participant's items (as payer and payee) from a closed window and net it again.
    Exit code 1 unless ok."""
    pid = parse_id(participant, "participant id")
    targets = resolve_endpoints(dir, endpoints)
    with open_client(targets, timeout_s) as c:
        step = c.unwind_participant(ledger, number, pid)
    _step(step, output)


# ---- statements and reconciliation ------------------------------------------------------


@contextlib.contextmanager
def _sink(path: pathlib.Path | None) -> Iterator[IO[str]]:
    """Where a statement goes: stdout, or PATH, written beside it first and renamed when complete (a broken
    export never leaves a file that looks whole)."""
    if path is None:
        yield sys.stdout
        sys.stdout.flush()
        return
    partial = path.with_name(path.name + ".partial")
    try:
        with partial.open("w", newline="", encoding="utf-8") as f:
            yield f
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _write_statement(export: Any, sink: IO[str], fmt: str, progress: Any) -> Any:
    """Stream the items into SINK as CSV or JSON, one at a time; the Statement at the end."""
    task = progress.add_task("export", total=None)
    if fmt == "csv":
        writer = csv.writer(sink, lineterminator="\n")
        writer.writerow(STATEMENT_COLUMNS)
        for item in export:
            row = _item_row(item)
            writer.writerow([row[c] for c in STATEMENT_COLUMNS])
            progress.advance(task)
        return export.statement
    sink.write('{"items": [')
    first = True
    for item in export:
        sink.write(("\n" if first else ",\n") + json.dumps(_item_row(item)))
        first = False
        progress.advance(task)
    statement = export.statement
    sink.write(f'\n],\n"statement": {json.dumps(_statement_dict(statement))}}}\n')
    return statement


@app.command("statement")
@one_line_errors
def clearing_statement(
    number: WindowArg,
    ledger: LedgerOpt,
    participant: ParticipantOpt,
    output: Annotated[StatementFormat, typer.Option("--output", "-o", help="Output format.")] = StatementFormat.csv,
    out_file: Annotated[
        pathlib.Path | None, typer.Option("--out", help="Write to this file (default: stdout).", dir_okay=False)
    ] = None,
    include_unwound: Annotated[
        bool, typer.Option("--include-unwound", help="Also the items an unwind excluded (status unwound).")
    ] = False,
    dir: DirOpt = None,
    endpoints: EndpointsOpt = None,
    timeout_s: Annotated[
        float, typer.Option("--timeout-s", "--timeout", help="Deadline of the whole export, in seconds.", min=0.1)
    ] = 600.0,
) -> None:
    """A participant's items of a window, by id, then its statement (totals, settlement, SHA-256 digest),
    streamed: CSV (id,payer_id,payee_id,amount,ledger,user_data_128,status; the statement on stderr) or one
    JSON object {"items": [...], "statement": {...}}."""
    pid = parse_id(participant, "participant id")
    targets = resolve_endpoints(dir, endpoints)
    with (
        open_client(targets, timeout_s) as c,
        c.export_statement(ledger, number, pid, include_unwound, timeout_s=timeout_s) as export,
        _progress(None, "exporting", enabled=out_file is not None) as progress,
        _sink(out_file) as sink,
    ):
        statement = _write_statement(export, sink, output, progress)
    err.print(
        f"statement of participant {statement.participant_id}, window {statement.window} (ledger {statement.ledger}):"
        f" {statement.items} item(s), sent {statement.sent}, received {statement.received}, net {statement.net}, "
        f"sha256 {statement.sha256}" + (f"; written to {out_file}" if out_file is not None else ""),
        markup=False,
    )


def _obligation_dict(o: Obligation) -> dict:
    row = {"id": str(o.id), "payer_id": str(o.payer_id), "payee_id": str(o.payee_id), "amount": o.amount}
    if o.line:
        row["line"] = o.line
    return row


def _report_dict(r: ReconcileReport) -> dict:
    return {
        "agree": r.agree,
        "file_items": r.file_items,
        "window_items": r.window_items,
        "matched": r.matched,
        "missing": r.missing,
        "extra": r.extra,
        "mismatched": r.mismatched,
        "first_missing": [_obligation_dict(o) for o in r.first_missing],
        "first_extra": [_obligation_dict(o) for o in r.first_extra],
        "first_mismatched": [
            {"fields": m.fields, "file": _obligation_dict(m.file), "window": _obligation_dict(m.window)}
            for m in r.first_mismatched
        ],
    }


def _print_report(r: ReconcileReport, file: pathlib.Path, number: int, pid: int) -> None:
    out.print(f"file {file}: {r.file_items} item(s); window {number}, participant {pid}: {r.window_items} accepted "
              "item(s)", markup=False)
    table = Table(box=None, pad_edge=False)
    table.add_column("")
    table.add_column("COUNT", justify="right")
    table.add_column("")
    table.add_row("matched", str(r.matched), "")
    table.add_row("missing", str(r.missing), "in the window, not in the file")
    table.add_row("extra", str(r.extra), "in the file, not in the window")
    table.add_row("mismatched", str(r.mismatched), "same id, another payer, payee or amount")
    print_table(table)
    if r.first_missing or r.first_extra:
        out.print("", markup=False)
        table = Table(box=None, pad_edge=False)
        for col in ("KIND", "ID", "LINE", "PAYER", "PAYEE", "AMOUNT"):
            table.add_column(col, justify="right" if col in ("LINE", "AMOUNT") else "left")
        for kind, rows in (("missing", r.first_missing), ("extra", r.first_extra)):
            for o in rows:
                table.add_row(kind, str(o.id), str(o.line) if o.line else "-", str(o.payer_id), str(o.payee_id),
                              str(o.amount))
        print_table(table)
    if r.first_mismatched:
        out.print("", markup=False)
        table = Table(box=None, pad_edge=False)
        for col in ("ID", "LINE", "FIELDS", "FILE (PAYER PAYEE AMOUNT)", "WINDOW (PAYER PAYEE AMOUNT)"):
            table.add_column(col, justify="right" if col == "LINE" else "left")
        for m in r.first_mismatched:
            table.add_row(str(m.file.id), str(m.file.line), ",".join(m.fields), " ".join(map(str, m.file.terms())),
                          " ".join(map(str, m.window.terms())))
        print_table(table)
    out.print("agree" if r.agree else "differ", markup=False)


@app.command("reconcile")
@one_line_errors
def clearing_reconcile(
    number: WindowArg,
    file: Annotated[pathlib.Path, typer.Argument(help="The participant's CSV: id,payer_id,payee_id,amount, with a "
                                                 "header.", exists=True, dir_okay=False, readable=True)],
    ledger: LedgerOpt,
    participant: ParticipantOpt,
    shown: Annotated[int, typer.Option("--show", help="Differences listed of each kind.", min=0)] = 20,
    dir: DirOpt = None,
    endpoints: EndpointsOpt = None,
    output: OutputOpt = Output.table,
    timeout_s: Annotated[
        float, typer.Option("--timeout-s", "--timeout", help="Deadline of the window's export, in seconds.", min=0.1)
    ] = 600.0,
) -> None:
    """Compare a participant's own file with the window's accepted items (streamed): missing (in the window,
    not in the file), extra (in the file, not in the window) and mismatched (same id, other terms).
    Exit code 0 when they agree, 1 when not, 2 for a malformed file (bad header, a field that is not an
    integer, a repeated id)."""
    from tidebank.cluster.reconcile import read_file_rows, reconcile

    pid = parse_id(participant, "participant id")
    targets = resolve_endpoints(dir, endpoints)
    with (
        file.open(newline="", encoding="utf-8-sig") as f,
        open_client(targets, timeout_s) as c,
        c.export_statement(ledger, number, pid, timeout_s=timeout_s) as export,
    ):
        try:
            # The file is read whole first (by id) and only then the window streamed: a malformed file sends nothing.
            report = reconcile(read_file_rows(f), export, shown)
        except FileError as exc:
            raise fail(f"{file}: {exc}", 2) from None
    if output == Output.json:
        print_json(_report_dict(report))
    else:
        _print_report(report, file, number, pid)
    if not report.agree:
        raise typer.Exit(1)

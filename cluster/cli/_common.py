"""What every `tidebank` command shares, so each command module holds only its own logic.

* where to print (`out`, `err`) and how (`print_table`, `print_json`, `print_results`, `print_lookup`);
* the options every command spells the same way (`DirOpt`, `EndpointsOpt`, `OutputOpt`, ...);
* errors as one line and an exit code (`one_line_errors`, `fail`);
* which cluster to talk to (`resolve_endpoints`, `totals_targets`) and the client (`open_client`);
* ids and flags from the command line (`parse_id`, `parse_flags`, `flag_names`).
"""

from __future__ import annotations

import enum
import functools
import json
import os
import pathlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import grpc
import typer
from rich.console import Console
from rich.table import Table

from tidebank.cluster.launcher import (
    ADMIN_PRINCIPAL,
    ChannelPool,
    ClusterError,
    LocalCluster,
    NoReachableNode,
    default_tls,
    fetch_shard_map,
    set_default_tls,
)
from tidebank.common.keys import U128_MAX
from tidebank.common.tls import TlsError, client_tls_from_env
from tidebank.common.topology import TopologyError, split_address

if TYPE_CHECKING:
    from tidebank.client import Client

DEBUG_ENV = "TIDEBANK_DEBUG"  # set to show tracebacks instead of one-line errors

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class Output(enum.StrEnum):
    table = "table"
    json = "json"


DirOpt = Annotated[
    pathlib.Path | None,
    typer.Option("--dir", "-d", help="Local cluster folder (holds cluster.toml).", file_okay=False),
]
EndpointsOpt = Annotated[
    str | None,
    typer.Option("--endpoints", "-e", help="Comma-separated node endpoints.", metavar="HOST:PORT,..."),
]
OutputOpt = Annotated[Output, typer.Option("--output", "-o", help="Output format.")]
TimeoutOpt = Annotated[float, typer.Option("--timeout", help="Per-request timeout in seconds.", min=0.1)]
ClientTimeoutOpt = Annotated[float, typer.Option("--timeout-s", help="Client request timeout in seconds.", min=0.1)]


# ---- errors ------------------------------------------------------------------------

F = TypeVar("F", bound=Callable[..., Any])


def one_line_errors(fn: F) -> F:
    """Turn exceptions into a one-line `error: ...` and exit code 1 (set
    TIDEBANK_DEBUG=1 for the traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        set_default_tls(None)  # each command chooses its credentials afresh (from --dir or the environment)
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None
        except Exception as e:
            if os.environ.get(DEBUG_ENV):
                raise
            err.print(f"error: {describe(e)}", markup=False)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def describe(e: BaseException) -> str:
    """An exception as an operator reads it: the gRPC status, the file, or the message."""
    if isinstance(e, grpc.RpcError) and hasattr(e, "code"):
        return f"{e.code().name}: {e.details()}"
    if isinstance(e, KeyError) and e.args:
        return str(e.args[0])
    if isinstance(e, TopologyError | ClusterError | TimeoutError | FileExistsError | TlsError):
        return str(e)
    if isinstance(e, OSError) and e.strerror:
        return f"{e.filename}: {e.strerror}" if e.filename else e.strerror
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print `error: MESSAGE` and return the Exit to raise (`raise fail(...)`)."""
    err.print(f"error: {message}", markup=False)
    return typer.Exit(code)


# ---- which cluster -----------------------------------------------------------------


def parse_endpoints(text: str) -> list[str]:
    """--endpoints as a list of HOST:PORT, each checked (a bad one is a usage error, exit 2)."""
    endpoints = [e.strip() for e in text.split(",") if e.strip()]
    if not endpoints:
        raise typer.BadParameter("no endpoints given", param_hint="'--endpoints'")
    for e in endpoints:
        try:
            split_address(e)
        except TopologyError as exc:
            raise typer.BadParameter(str(exc), param_hint="'--endpoints'") from None
    return endpoints


def require_target(dir: pathlib.Path | None, endpoints: str | None) -> None:
    """Exactly one of --dir and --endpoints says which cluster."""
    if (dir is None) == (endpoints is None):
        raise typer.BadParameter(
            "give exactly one of --dir DIR or --endpoints HOST:PORT,...", param_hint="'--dir' / '--endpoints'"
        )
    if dir is not None:
        use_cluster_principal(dir)


PRINCIPAL_ENV = "TIDEBANK_PRINCIPAL"  # which principal of a --dir cluster the CLI acts as (default: admin)


def use_cluster_principal(dir: pathlib.Path) -> None:
    """Call the cluster in DIR with one of its principals' certificates (unless TIDEBANK_CA/CERT/KEY say
    otherwise): every channel the command opens, the client's too, presents it."""
    if client_tls_from_env() is None:
        set_default_tls(LocalCluster.open(dir).client_tls(os.environ.get(PRINCIPAL_ENV) or ADMIN_PRINCIPAL))


def resolve_endpoints(dir: pathlib.Path | None, endpoints: str | None) -> list[str]:
    """The client endpoints of the cluster named by --dir or --endpoints."""
    require_target(dir, endpoints)
    if endpoints is not None:
        return parse_endpoints(endpoints)
    return LocalCluster.open(dir).endpoints


def totals_targets(
    dir: pathlib.Path | None, endpoints: str | None, timeout_s: float, pool: ChannelPool
) -> tuple[list[str], list[int]]:
    """(every node address, every shard id) to ask for ledger totals: from the topology or the
    shard map (exit code 2 when no node serves one)."""
    require_target(dir, endpoints)
    if dir is not None:
        topo = LocalCluster.open(dir).topology
        return topo.endpoints, [s.shard_id for s in topo.shards]
    try:
        sm = fetch_shard_map(parse_endpoints(endpoints), timeout_s, pool)
    except NoReachableNode as e:
        raise fail(str(e), 2) from None
    return list(dict.fromkeys(r.address for s in sm.shards for r in s.replicas)), [s.shard_id for s in sm.shards]


def open_client(endpoints: list[str], timeout_s: float) -> Client:
    """The ledger client (tests replace this to run commands without a cluster)."""
    from tidebank.client import Client  # imported late: commands without a client start faster

    return Client(endpoints, timeout_s=timeout_s, tls=default_tls())


# ---- ids and flags -----------------------------------------------------------------


def parse_id(text: str, what: str = "id") -> int:
    """An account, transfer or trade id, decimal or 0x hex, within 1 .. 2^128-2."""
    try:
        value = int(text, 0)
    except ValueError:
        raise typer.BadParameter(f"{what} {text!r} is not an integer (decimal or 0x hex)") from None
    if not 0 < value < U128_MAX:
        raise typer.BadParameter(f"{what} {text} is out of range: ids are 1 .. 2^128-2")
    return value


def flag_names(flag_enum: type, value: int) -> list[str]:
    """The names of the flags set in VALUE, lower case, as --flags takes them."""
    return [m.name.lower() for m in flag_enum if m.value and value & m.value == m.value]


def _flag(flag_enum: type, name: str) -> Any:
    wanted = name.strip().lower().replace("-", "_")
    for m in flag_enum:
        if m.name.lower() == wanted and m.value:
            return m
    valid = ", ".join(m.name.lower() for m in flag_enum if m.value)
    raise typer.BadParameter(f"unknown flag {name.strip()!r} (valid: {valid})", param_hint="'--flags'")


def parse_flags(flag_enum: type, text: str | None) -> int:
    """Comma-separated flag names (any case, - or _) as the flags' bits."""
    value = 0
    for part in (text or "").split(","):
        if part.strip():
            value |= int(_flag(flag_enum, part))
    return value


def status_name(status: Any) -> str:
    """A result code by its lower-case name (an unknown number stays a number)."""
    name = getattr(status, "name", None)
    return name.lower() if isinstance(name, str) else str(status)


# ---- output ------------------------------------------------------------------------


def print_table(table: Table) -> None:
    """Print TABLE unless it is empty, at its natural width when piped."""
    if not table.row_count:
        return
    # Piped output gets the table's natural width instead of rich's default 80 columns.
    (out if out.is_terminal else Console(highlight=False, width=max(out.width, 240))).print(table)


def print_json(data: Any) -> None:
    """-o json: indented, on stdout."""
    typer.echo(json.dumps(data, indent=2))


def print_results(results: list, output: Output) -> None:
    """Per-item results of create_accounts/create_transfers; exit code 1 unless all ok."""
    rows = [{"index": r.index, "id": str(r.id), "status": status_name(r.status), "ok": r.ok} for r in results]
    if output == Output.json:
        print_json(rows)
    else:
        table = Table(box=None, pad_edge=False)
        for col in ("INDEX", "ID", "RESULT"):
            table.add_column(col, justify="right" if col == "INDEX" else "left")
        for row in rows:
            style = "green" if row["ok"] else "red"
            table.add_row(str(row["index"]), row["id"], f"[{style}]{row['status']}[/]")
        print_table(table)
    if not rows or not all(row["ok"] for row in rows):
        raise typer.Exit(1)


def print_lookup(
    wanted: list[int],
    found: list[Any],
    rows: list[dict],
    output: Output,
    print_rows: Callable[[list[dict]], None],
    what: str,
) -> None:
    """What a `get` command found (ROWS, one per item FOUND), as JSON or by PRINT_ROWS; then each
    wanted id not found on stderr, with exit code 1."""
    if output == Output.json:
        print_json(rows)
    else:
        print_rows(rows)
    have = {int(x.id) for x in found}
    missing = [i for i in wanted if i not in have]
    for i in missing:
        err.print(f"{what} {i} not found")
    if missing:
        raise typer.Exit(1)

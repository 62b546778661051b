"""`tidebank principal add|revoke|list` and `tidebank admin log`: who may call a cluster, and what the privileged did.

A principal is a client certificate issued by the cluster CA (tidebank.common.tls):
its roles are written into it, so issuing one needs the CA key in DIR/tls and
nothing from the running nodes. `admin log` asks every node for its durable log of
privileged actions and refused calls and prints them merged by time.
"""

from __future__ import annotations

import datetime
import pathlib
from typing import Annotated

import grpc
import typer
from cryptography import x509
from rich.table import Table

from tidebank.cluster.cli._common import (
    DirOpt,
    EndpointsOpt,
    Output,
    OutputOpt,
    TimeoutOpt,
    fail,
    one_line_errors,
    out,
    print_json,
    print_table,
    resolve_endpoints,
)
from tidebank.cluster.launcher import ChannelPool, LocalCluster
from tidebank.common import tls
from tidebank.v1 import admin_pb2

app = typer.Typer(help="Principals of a cluster: who may call it, as what.", no_args_is_help=True)
admin_app = typer.Typer(help="What the cluster's privileged callers did.", no_args_is_help=True)

LocalDirOpt = Annotated[pathlib.Path, typer.Option("--dir", "-d", help="Local cluster folder (holds tls/).",
                                                   file_okay=False)]
_ROLES_HELP = ", ".join(r for r in tls.ROLES if r != "node")
ADMIN_LOG_PAGES_MAX = 1000  # per node: 1000 pages of 1024 records


@app.command("add")
@one_line_errors
def principal_add(
    name: Annotated[str, typer.Argument(help="Principal name (the certificate's CN).")],
    dir: LocalDirOpt,
    role: Annotated[list[str], typer.Option("--role", "-r", help=f"Role (repeatable): {_ROLES_HELP}.")],
    participant: Annotated[list[int] | None, typer.Option(
        "--participant", "-p", help="Clearing participant id it acts for (role participant; repeatable).")] = None,
    valid_days: Annotated[int, typer.Option(help="Days the certificate is valid.", min=1, max=3650)] =
        tls.CERT_VALID_DAYS,
    output: OutputOpt = Output.table,
) -> None:
    """Issue (or re-issue) a principal's client certificate under the cluster CA."""
    participants = participant or []
    if participants and "participant" not in role:
        raise typer.BadParameter("--participant needs --role participant", param_hint="'--participant'")
    if "participant" in role and not participants:
        raise typer.BadParameter("a participant principal acts for at least one --participant ID",
                                 param_hint="'--participant'")
    cluster = LocalCluster.open(dir)
    if cluster.topology.tls is None:
        raise fail("this cluster runs plaintext: it has no principals")
    files = tls.issue_principal(tls.tls_dir(dir), name, role, participants, valid_days=valid_days)
    row = {"principal": name, "roles": role, "participants": participants, "ca": str(files.ca),
           "cert": str(files.cert), "key": str(files.key)}
    if output == Output.json:
        print_json(row)
        return
    out.print(f"principal {name} ({', '.join(role)}): {files.cert}")
    out.print(f"  use it:  TIDEBANK_CA={files.ca} TIDEBANK_CERT={files.cert} TIDEBANK_KEY={files.key}")


@app.command("revoke")
@one_line_errors
def principal_revoke(
    name: Annotated[str, typer.Argument(help="Principal name.")],
    dir: LocalDirOpt,
) -> None:
    """Refuse the principal's current certificate from now on (within a second on every node that reads
    DIR/tls/revoked.txt; copy that file beside ca.pem on other hosts). `principal add` issues a new one."""
    files = tls.principal_files(tls.tls_dir(dir), name)
    if not files.cert.exists():
        raise fail(f"no principal {name!r} in {dir}")
    serial = tls.revoke(tls.tls_dir(dir), files.cert, why=name)
    out.print(f"principal {name}: certificate {serial:x} revoked ({tls.revoked_path(files.ca)})")


@app.command("list")
@one_line_errors
def principal_list(dir: LocalDirOpt, output: OutputOpt = Output.table) -> None:
    """The principals whose certificates are in DIR/tls/principals."""
    rows = []
    for cert_path in sorted((tls.tls_dir(dir) / "principals").glob("*.pem")):
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        principal = tls.principal_of_sans(cert_path.stem, sans.get_values_for_type(x509.UniformResourceIdentifier))
        rows.append({"principal": principal.name, "roles": sorted(principal.roles),
                     "participants": sorted(principal.participants),
                     "valid_until": cert.not_valid_after_utc.isoformat()})
    if output == Output.json:
        print_json(rows)
        return
    table = Table("principal", "roles", "participants", "valid until")
    for r in rows:
        table.add_row(r["principal"], ", ".join(r["roles"]), ", ".join(map(str, r["participants"])),
                      r["valid_until"][:19])
    print_table(table)


@admin_app.command("log")
@one_line_errors
def admin_log(
    dir: DirOpt = None,
    endpoints: EndpointsOpt = None,
    limit: Annotated[int, typer.Option(help="Show the newest N records.", min=1, max=100_000)] = 100,
    timeout: TimeoutOpt = 5.0,
    output: OutputOpt = Output.table,
) -> None:
    """Privileged actions and refused calls, from every node, merged by time (newest last)."""
    targets = resolve_endpoints(dir, endpoints)
    records, unreachable = [], []
    with ChannelPool() as pool:
        for address in targets:
            try:
                records += _node_log(pool, address, timeout)
            except grpc.RpcError as e:  # one node down must not hide the others' logs
                unreachable.append(f"{address}: {e.code().name if hasattr(e, 'code') else e}")
    records.sort(key=lambda r: (r.time_ns, r.node, r.seq))
    records = records[-limit:]
    if output == Output.json:
        print_json({"records": [_as_dict(r) for r in records], "unreachable": unreachable})
    else:
        table = Table("time (UTC)", "node", "principal", "roles", "method", "permission", "result", "detail")
        for r in records:
            when = datetime.datetime.fromtimestamp(r.time_ns / 1e9, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
            table.add_row(when, r.node, r.principal, r.roles, r.method, r.permission, r.result, r.detail[:80])
        print_table(table)
        for u in unreachable:
            out.print(f"[yellow]not reached:[/] {u}")
    if unreachable:
        raise typer.Exit(1)


def _node_log(pool: ChannelPool, address: str, timeout_s: float) -> list[admin_pb2.AdminLogRecord]:
    records, after = [], 0
    for _ in range(ADMIN_LOG_PAGES_MAX):
        page = pool.admin(address).GetAdminLog(admin_pb2.GetAdminLogRequest(after_seq=after, limit=1024),
                                               timeout=timeout_s)
        records += page.records
        if not page.next_seq:
            break
        after = page.next_seq
    return records


def _as_dict(r: admin_pb2.AdminLogRecord) -> dict:
    return {"seq": r.seq, "time_ns": r.time_ns, "node": r.node, "principal": r.principal, "roles": r.roles,
            "method": r.method, "permission": r.permission, "result": r.result, "detail": r.detail}

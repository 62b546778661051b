"""Who may do what, on a real cluster: each role allowed and refused on each RPC family.

A refusal is PERMISSION_DENIED naming the missing permission, changes nothing, is
counted in a metric and written to the node's admin log.
"""

from __future__ import annotations

import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from tests.integration.conftest import running_cluster
from tidebank.client import (
    Account,
    AccountFlags,
    Client,
    NewTrade,
    PermissionDeniedError,
    Transfer,
    new_id,
)
from tidebank.common.topology import QuotaConfig
from tidebank.v1 import admin_pb2, admin_pb2_grpc, ledger_pb2, ledger_pb2_grpc, types_pb2

pytestmark = pytest.mark.integration

LEDGER = 77
PRINCIPALS = {
    "plat": ["platform"], "alice": ["account_holder"], "bob": ["account_holder"], "aud": ["auditor"],
    "ops": ["operator"], "root": ["admin"],
}


@pytest.fixture(scope="module")
def clients(cluster):
    for name, roles in PRINCIPALS.items():
        cluster.add_principal(name, roles)
    out = {name: Client(cluster.endpoints, tls=cluster.client_tls(name), timeout_s=20.0) for name in PRINCIPALS}
    yield out
    for c in out.values():
        c.close()


@pytest.fixture(scope="module")
def accounts(clients):
    """alice's and bob's accounts (made by the platform for them), each funded from a platform account."""
    plat = clients["plat"]
    funding, a, b = new_id(), new_id(), new_id()
    assert plat.create_accounts([Account(funding, ledger=LEDGER, code=1)])[0].ok
    assert plat.create_accounts([Account(a, ledger=LEDGER, code=1)], owner="alice")[0].ok
    assert plat.create_accounts([Account(b, ledger=LEDGER, code=1)], owner="bob")[0].ok
    results = plat.create_transfers([_pay(funding, a, 1_000),
                                     _pay(funding, b, 1_000)])
    assert all(r.ok for r in results)
    return {"funding": funding, "alice": a, "bob": b}


def _pay(debit: int, credit: int, amount: int) -> Transfer:
    return Transfer(new_id(), debit_account_id=debit, credit_account_id=credit, amount=amount, ledger=LEDGER, code=1)


def _balance(client: Client, account_id: int) -> tuple[int, int]:
    (acct,) = client.lookup_accounts([account_id])
    return acct.debits_posted, acct.credits_posted


def _denied(call) -> PermissionDeniedError:
    with pytest.raises(PermissionDeniedError) as raised:
        call()
    return raised.value


# --- ledger -------------------------------------------------------------------------------------------


def test_an_account_holder_pays_from_its_own_account(clients, accounts):
    t = _pay(accounts["alice"], accounts["bob"], 10)
    assert clients["alice"].create_transfers([t])[0].ok


def test_an_account_holder_cannot_pay_from_anothers_account_and_nothing_moves(clients, accounts):
    before = _balance(clients["aud"], accounts["bob"])
    error = _denied(lambda: clients["alice"].create_transfers(
        [_pay(accounts["bob"], accounts["alice"], 10)]))
    assert error.metadata["permission"] == "transfers.create" and error.metadata["principal"] == "alice"
    assert _balance(clients["aud"], accounts["bob"]) == before


def test_an_account_holder_creates_accounts_that_are_its_own(clients):
    mine = new_id()
    assert clients["alice"].create_accounts([Account(mine, ledger=LEDGER, code=1)])[0].ok
    assert clients["alice"].lookup_accounts([mine])[0].id == mine
    _denied(lambda: clients["bob"].lookup_accounts([mine]))


def test_an_account_holder_cannot_create_accounts_for_someone_else(clients):
    error = _denied(lambda: clients["alice"].create_accounts([Account(new_id(), ledger=LEDGER, code=1)],
                                                             owner="bob"))
    assert error.metadata["permission"] == "accounts.create"


def test_an_account_owned_by_another_is_not_created_again(clients, accounts):
    (result,) = clients["alice"].create_accounts([Account(accounts["bob"], ledger=LEDGER, code=1)])
    assert result.status.name == "exists_with_different_owner"


def test_an_account_holder_reads_its_own_accounts_and_history_only(clients, accounts):
    assert clients["alice"].lookup_accounts([accounts["alice"]])[0].id == accounts["alice"]
    assert clients["alice"].get_account_transfers(accounts["alice"]).items
    _denied(lambda: clients["alice"].lookup_accounts([accounts["bob"]]))
    _denied(lambda: clients["alice"].get_account_transfers(accounts["funding"]))


def test_an_account_holder_reads_transfers_that_touch_its_accounts_only(clients, accounts):
    plat = clients["plat"]
    theirs = _pay(accounts["funding"], accounts["bob"], 5)
    ours = _pay(accounts["funding"], accounts["alice"], 5)
    assert all(r.ok for r in plat.create_transfers([theirs, ours]))
    assert [t.id for t in clients["alice"].lookup_transfers([ours.id])] == [ours.id]
    _denied(lambda: clients["alice"].lookup_transfers([theirs.id]))


def test_an_auditor_reads_everything_and_moves_nothing(clients, accounts):
    assert len(clients["aud"].lookup_accounts([accounts["alice"], accounts["bob"]])) == 2
    error = _denied(lambda: clients["aud"].create_transfers(
        [_pay(accounts["funding"], accounts["alice"], 1)]))
    assert error.metadata["permission"] == "transfers.create"


def test_an_operator_sees_the_cluster_but_no_account(cluster, clients, accounts):
    with cluster.channel(principal="ops") as channel:
        status = admin_pb2_grpc.AdminStub(channel).GetNodeStatus(admin_pb2.GetNodeStatusRequest(), timeout=5)
    assert status.replicas
    _denied(lambda: clients["ops"].lookup_accounts([accounts["alice"]]))


def test_an_admin_moves_no_money(clients, accounts):
    _denied(lambda: clients["root"].create_transfers(
        [_pay(accounts["funding"], accounts["alice"], 1)]))


def test_only_an_admin_injects_faults(cluster):
    from tidebank.common.auth import signed

    faults = admin_pb2.LinkFaults()
    metadata = signed(cluster.topology.secret, "SetLinkFaults", faults)
    with cluster.channel(principal="root") as channel:
        admin_pb2_grpc.AdminStub(channel).SetLinkFaults(faults, timeout=5, metadata=metadata)
    with cluster.channel(principal="plat") as channel, pytest.raises(grpc.RpcError) as raised:
        admin_pb2_grpc.AdminStub(channel).SetLinkFaults(faults, timeout=5, metadata=metadata)
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "cluster.faults" in raised.value.details()


def test_no_principal_but_a_node_calls_the_internal_service(cluster):
    with cluster.channel(principal="plat") as channel, pytest.raises(grpc.RpcError) as raised:
        channel.unary_unary("/tidebank.v1.Internal/Query")(b"", timeout=5)
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED


# --- escrow ---------------------------------------------------------------------------------------------


def test_buyer_and_seller_each_take_only_their_own_steps(clients, accounts):
    trade = NewTrade(new_id(), accounts["alice"], accounts["bob"], 50, LEDGER, ship_by_timeout_s=600,
                     auto_confirm_timeout_s=600)
    _denied(lambda: clients["bob"].create_trades([trade]))  # bob cannot buy with alice's money
    assert clients["alice"].create_trades([trade])[0].ok
    _denied(lambda: clients["alice"].ship_trades([trade.id]))  # alice is not the seller
    assert clients["bob"].ship_trades([trade.id])[0].ok
    _denied(lambda: clients["bob"].confirm_trades([trade.id]))  # bob is not the buyer
    assert clients["alice"].confirm_trades([trade.id])[0].ok
    assert clients["alice"].lookup_trades([trade.id])[0].id == trade.id
    assert clients["aud"].lookup_trades([trade.id])[0].id == trade.id


def test_a_stranger_cannot_read_a_trade(cluster, clients, accounts):
    cluster.add_principal("carol", ["account_holder"])
    trade = NewTrade(new_id(), accounts["alice"], accounts["bob"], 5, LEDGER, ship_by_timeout_s=600,
                     auto_confirm_timeout_s=600)
    assert clients["alice"].create_trades([trade])[0].ok
    with Client(cluster.endpoints, tls=cluster.client_tls("carol"), timeout_s=20.0) as carol:
        _denied(lambda: carol.lookup_trades([trade.id]))


def test_only_the_platform_resolves_disputes(clients, accounts):
    from tidebank.client import DisputeResolution

    _denied(lambda: clients["alice"].resolve_disputes([DisputeResolution(new_id(), 0)]))


# --- the records of refusals ----------------------------------------------------------------------------


def test_a_refusal_is_written_to_the_admin_log_and_counted(cluster, clients, accounts):
    _denied(lambda: clients["bob"].lookup_accounts([accounts["alice"]]))
    records = []
    for address in cluster.endpoints:
        with cluster.channel(address, principal="root") as channel:
            records += admin_pb2_grpc.AdminStub(channel).GetAdminLog(admin_pb2.GetAdminLogRequest(),
                                                                    timeout=5).records
    assert any(r.principal == "bob" and r.permission == "accounts.read" and r.result == "PERMISSION_DENIED"
               for r in records)
    counted = 0.0
    for node in cluster.topology.nodes:
        text = urllib.request.urlopen(f"http://{node.raft_host}:{node.metrics_port}/metrics", timeout=5).read()
        for line in text.decode().splitlines():
            if line.startswith('tidebank_permission_denied_total{permission="accounts.read"}'):
                counted += float(line.split()[-1])
    assert counted >= 1


def test_a_privileged_action_is_written_to_the_admin_log(cluster):
    from tidebank.common.auth import signed

    faults = admin_pb2.LinkFaults()
    address = cluster.endpoints[0]
    with cluster.channel(address, principal="root") as channel:
        stub = admin_pb2_grpc.AdminStub(channel)
        stub.SetLinkFaults(faults, timeout=5, metadata=signed(cluster.topology.secret, "SetLinkFaults", faults))
        records = stub.GetAdminLog(admin_pb2.GetAdminLogRequest(), timeout=5).records
    assert any(r.principal == "root" and r.method == "Admin/SetLinkFaults" and r.result == "OK" for r in records)


def test_only_an_admin_reads_the_admin_log(cluster):
    with cluster.channel(principal="aud") as channel, pytest.raises(grpc.RpcError) as raised:
        admin_pb2_grpc.AdminStub(channel).GetAdminLog(admin_pb2.GetAdminLogRequest(), timeout=5)
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED


# --- quotas ---------------------------------------------------------------------------------------------


def _retry_delay_s(error: grpc.RpcError) -> float | None:
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                    info = error_details_pb2.RetryInfo()
                    detail.Unpack(info)
                    return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    return None


def test_a_flooding_principal_is_refused_with_a_retry_hint_while_another_is_served(tmp_path):
    quotas = QuotaConfig(items_per_s=200, burst_items=500, calls_in_flight=4)
    with running_cluster(tmp_path, shards=1, quotas=quotas) as cluster:
        cluster.add_principal("flood", ["platform"])
        cluster.add_principal("calm", ["platform"])
        address = cluster.endpoints[0]
        batch = ledger_pb2.CreateAccountsRequest(
            accounts=[types_pb2.Account(ledger=LEDGER, code=1, id=_u128(new_id())) for _ in range(400)])
        refused: list[grpc.RpcError] = []
        served = 0
        with cluster.channel(address, principal="flood") as flood_ch, \
                cluster.channel(address, principal="calm") as calm_ch:
            flood = ledger_pb2_grpc.LedgerStub(flood_ch)
            calm = ledger_pb2_grpc.LedgerStub(calm_ch)
            started = time.monotonic()
            with ThreadPoolExecutor(8) as pool:
                floods = [pool.submit(flood.CreateAccounts, batch, timeout=20) for _ in range(10)]
                for _ in range(5):
                    one = ledger_pb2.CreateAccountsRequest(
                        accounts=[types_pb2.Account(ledger=LEDGER, code=1, id=_u128(new_id()))])
                    calm.CreateAccounts(one, timeout=20)
                    served += 1
                for f in floods:
                    try:
                        f.result()
                    except grpc.RpcError as e:
                        refused.append(e)
            elapsed_s = time.monotonic() - started
        # 10 x 400 items against 500 + 200/s: at most 500 + 200 * elapsed can have been admitted.
        assert len(refused) >= 10 - (500 + 200 * elapsed_s) // 400
        assert refused and all(e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for e in refused)
        assert all((_retry_delay_s(e) or 0) > 0 for e in refused)
        assert served == 5


def _u128(value: int):
    return types_pb2.U128(hi=value >> 64, lo=value & (2**64 - 1))


def test_accounts_of_a_holder_keep_their_flags(clients):
    """The owned path creates the very account asked for (flags and all), not a plain one."""
    mine = new_id()
    flags = AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
    assert clients["alice"].create_accounts([Account(mine, ledger=LEDGER, code=1, flags=flags)])[0].ok
    assert clients["alice"].lookup_accounts([mine])[0].flags == flags


# --- clearing -------------------------------------------------------------------------------------------

CLEARING_LEDGER = 78


@pytest.fixture(scope="module")
def banks(cluster, clients):
    """Two participants; the principal `bank1` acts for the first only."""
    from tidebank.client import Participant

    plat = clients["plat"]
    ids = {"one": new_id(), "two": new_id()}
    settlement = {name: new_id() for name in ids}
    assert all(r.ok for r in plat.create_accounts(
        [Account(a, ledger=CLEARING_LEDGER, code=1) for a in settlement.values()]))
    results = plat.register_participants([
        Participant(ids[name], ledger=CLEARING_LEDGER, code=1, name=f"bank {name}",
                    settlement_account_id=settlement[name], net_debit_cap=10_000) for name in ids])
    assert all(r.ok for r in results), results
    cluster.add_principal("bank1", ["participant"], participants=[ids["one"]])
    with Client(cluster.endpoints, tls=cluster.client_tls("bank1"), timeout_s=20.0) as bank1:
        yield ids, bank1


def _item(payer: int, payee: int, amount: int = 10):
    from tidebank.client import ClearingItem

    return ClearingItem(new_id(), payer_id=payer, payee_id=payee, amount=amount, ledger=CLEARING_LEDGER)


def test_a_bank_submits_items_as_payer_for_itself_only(banks):
    ids, bank1 = banks
    assert bank1.submit_items([_item(ids["one"], ids["two"])])[0].ok
    error = _denied(lambda: bank1.submit_items([_item(ids["two"], ids["one"])]))
    assert error.metadata["permission"] == "clearing.submit"


def test_a_bank_reads_its_own_record_and_no_other(banks):
    ids, bank1 = banks
    assert [p.id for p in bank1.lookup_participants([ids["one"]])] == [ids["one"]]
    _denied(lambda: bank1.lookup_participants([ids["two"]]))
    assert {p.id for p in bank1.list_participants(CLEARING_LEDGER)} == {ids["one"]}


def test_a_bank_sees_only_its_own_position_in_a_window(banks, clients):
    ids, bank1 = banks
    assert bank1.submit_items([_item(ids["one"], ids["two"], 25)])[0].ok
    mine = bank1.get_window(CLEARING_LEDGER)
    everyone = clients["aud"].get_window(CLEARING_LEDGER)
    assert {n.participant_id for n in mine.nets} == {ids["one"]}
    assert {n.participant_id for n in everyone.nets} == {ids["one"], ids["two"]}


def test_a_bank_neither_closes_nor_settles_windows(banks):
    _, bank1 = banks
    error = _denied(lambda: bank1.close_window(CLEARING_LEDGER))
    assert error.metadata["permission"] == "clearing.settle"


def test_an_account_holder_has_no_part_in_clearing(banks, clients):
    ids, _ = banks
    _denied(lambda: clients["alice"].submit_items([_item(ids["one"], ids["two"])]))


def test_status_says_when_the_principal_may_not_ask(cluster, clients, monkeypatch):
    from typer.testing import CliRunner

    from tidebank.cluster.cli import app

    monkeypatch.setenv("TIDEBANK_PRINCIPAL", "alice")
    result = CliRunner().invoke(app, ["status", "--dir", str(cluster.dir)])
    assert result.exit_code == 2 and "lacks permission cluster.status" in result.output


def test_a_revoked_principal_is_refused_until_it_gets_a_new_certificate(cluster, accounts):
    from tidebank.common import tls

    cluster.add_principal("dave", ["auditor"])
    with Client(cluster.endpoints, tls=cluster.client_tls("dave"), timeout_s=20.0) as dave:
        assert dave.lookup_accounts([accounts["alice"]])
        tls.revoke(tls.tls_dir(cluster.dir), cluster.client_tls("dave").cert)
        time.sleep(tls.REVOCATION_RECHECK_S + 0.2)
        with pytest.raises(Exception) as raised:
            dave.lookup_accounts([accounts["alice"]])
        assert raised.value.code == grpc.StatusCode.UNAUTHENTICATED and raised.value.reason == "CERTIFICATE_REVOKED"
    cluster.add_principal("dave", ["auditor"])  # re-issued: a new serial
    with Client(cluster.endpoints, tls=cluster.client_tls("dave"), timeout_s=20.0) as dave:
        assert dave.lookup_accounts([accounts["alice"]])

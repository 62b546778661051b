"""`tidebank trade ...`, `trade totals` and the escrow audit against a real local cluster."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tidebank.cluster.cli import app
from tidebank.cluster.launcher import LocalCluster
from tidebank.common.topology import SECRET_ENV

pytestmark = pytest.mark.integration

runner = CliRunner()
LEDGER = "9"


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv(SECRET_ENV, raising=False)
    monkeypatch.delenv("TIDEBANK_DEBUG", raising=False)


@pytest.fixture(scope="module")
def cluster_dir(tmp_path_factory):
    """`tidebank cluster up` in a fresh folder; every node is stopped afterwards."""
    d = tmp_path_factory.mktemp("cli-trade-cluster")
    try:
        r = runner.invoke(app, ["cluster", "up", "--dir", str(d), "--shards", "2"])
        assert r.exit_code == 0, r.output
        yield d
    finally:
        LocalCluster.open(d).stop()


def invoke(*args: str):
    result = runner.invoke(app, list(args))
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def _json(*args: str):
    r = invoke(*args, "-o", "json")
    return r.exit_code, json.loads(r.stdout)


def test_trade_commands_against_a_running_cluster(cluster_dir):
    d = ["--dir", str(cluster_dir)]
    funder, buyer, seller = "3001", "3002", "3003"
    acct = ["--ledger", LEDGER, "--code", "1"]
    assert invoke("account", "create", *d, *acct, "--id", funder).exit_code == 0
    assert invoke("account", "create", *d, *acct, "--id", buyer, "--flags", "debits_must_not_exceed_credits"
                  ).exit_code == 0
    assert invoke("account", "create", *d, *acct, "--id", seller).exit_code == 0
    fund = ["--debit", funder, "--credit", buyer, "--amount", "1000", "--ledger", LEDGER, "--code", "1"]
    r = invoke("transfer", "create", *d, *fund)
    assert r.exit_code == 0, r.output

    terms = ["--buyer", buyer, "--seller", seller, "--ledger", LEDGER, "--fee-bps", "250", "--ship-by-s", "3600",
             "--auto-confirm-s", "3600"]

    # paid -> shipped -> settled; the fee is floor(300 * 250 / 10000) = 7
    code, res = _json("trade", "create", *d, *terms, "--amount", "300", "--id", "7001")
    assert code == 0, res
    assert res == [{"index": 0, "trade_id": "7001", "status": "ok", "transfer_status": None, "ok": True}]
    code, res = _json("trade", "create", *d, *terms, "--amount", "300", "--id", "7001")
    assert code == 0 and res[0]["status"] == "exists"
    code, [t] = _json("trade", "get", *d, "7001")
    assert code == 0
    assert (t["state"], t["amount"], t["held"], t["buyer_account_id"], t["seller_account_id"]) == (
        "paid", 300, 300, buyer, seller)
    assert t["timer"] == "ship_by" and t["deadline"] > 0
    r = invoke("trade", "get", *d, "7001")
    assert r.exit_code == 0 and "paid" in r.stdout and "ship_by" in r.stdout

    assert invoke("trade", "ship", *d, "7001").exit_code == 0
    r = invoke("trade", "confirm", *d, "7001")
    assert r.exit_code == 0, r.output
    code, [t] = _json("trade", "get", *d, "7001")
    assert (t["state"], t["closed_by"], t["held"], t["released"], t["fee"]) == (
        "settled", "buyer_confirmed", 0, 293, 7)
    code, accounts = _json("account", "get", *d, buyer, seller)
    assert [(a["debits_posted"], a["credits_posted"]) for a in accounts] == [(300, 1000), (0, 293)]

    # a partial refund on another trade, idempotent by its refund id
    assert invoke("trade", "create", *d, *terms, "--amount", "200", "--id", "7002").exit_code == 0
    code, res = _json("trade", "refund", *d, "7002", "--amount", "50", "--refund-id", "8001")
    assert code == 0 and res[0]["status"] == "ok" and res[0]["refund_id"] == "8001"
    code, res = _json("trade", "refund", *d, "7002", "--amount", "50", "--refund-id", "8001")
    assert code == 0 and res[0]["status"] == "exists"
    code, res = _json("trade", "refund", *d, "7002", "--amount", "151")
    assert code == 1 and res[0]["status"] == "refund_exceeds_held"
    code, [t] = _json("trade", "get", *d, "7002")
    assert (t["state"], t["held"], t["refunded"]) == ("paid", 150, 50)
    assert t["refunds"] == [{"refund_id": "8001", "amount": 50}]

    # a dispute resolved by a split: 40 back to the buyer, 60 less a fee of 1 to the seller
    assert invoke("trade", "create", *d, *terms, "--amount", "100", "--id", "7003").exit_code == 0
    assert invoke("trade", "ship", *d, "7003").exit_code == 0
    assert invoke("trade", "dispute", "open", *d, "7003").exit_code == 0
    code, [t] = _json("trade", "get", *d, "7003")
    assert (t["state"], t["state_before_dispute"], t["deadline"]) == ("disputed", "shipped", 0)
    code, res = _json("trade", "dispute", "resolve", *d, "7003", "--buyer-amount", "40")
    assert code == 0, res
    code, [t] = _json("trade", "get", *d, "7003")
    assert (t["state"], t["held"], t["refunded"], t["released"], t["fee"]) == ("closed", 0, 40, 59, 1)

    # the buyer cannot pay for more than it has: nothing happens
    r = invoke("trade", "create", *d, *terms, "--amount", "10000", "--id", "7004")
    assert r.exit_code == 1 and "transfer_failed (exceeds_credits)" in r.stdout
    assert invoke("trade", "get", *d, "7004").exit_code == 1

    code, page = _json("trade", "list", *d, "--buyer", buyer)
    assert code == 0 and [t["id"] for t in page["trades"]] == ["7001", "7002", "7003"]
    code, page = _json("trade", "list", *d, "--seller", seller, "--limit", "2")
    assert code == 0 and len(page["trades"]) == 2 and page["next_page_token"]
    code, page = _json("trade", "list", *d, "--seller", seller, "--limit", "1", "--all")
    assert code == 0 and len(page["trades"]) == 3 and page["next_page_token"] == ""

    code, totals = _json("trade", "totals", *d)
    assert code == 0, totals
    [book] = [x for x in totals["ledgers"] if x["ledger"] == int(LEDGER)]
    assert (book["held"], book["fees"], book["released"], book["refunded"]) == ("150", "8", "352", "90")
    assert (book["escrow_balance"], book["fee_balance"]) == ("150", "8")
    assert (book["trades_paid"], book["trades_settled"], book["trades_closed"], book["trades_shipped"]) == (1, 1, 1, 0)
    r = invoke("trade", "totals", *d)
    assert r.exit_code == 0 and "ESCROW BALANCE" in r.stdout

    code, report = _json("audit", *d)
    assert code == 0, report
    assert report["verdict"] == "balanced"
    assert [x["held"] for x in report["escrow"] if x["ledger"] == int(LEDGER)] == ["150"]
    r = invoke("audit", *d)
    assert r.exit_code == 0 and "held == escrow balance and fees == fee balance" in r.stdout

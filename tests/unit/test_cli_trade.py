"""`tidebank trade ...` without a cluster: argument handling and help, and what the commands
send and print against a fake client (`tidebank.cluster.cli.trade.open_client` replaced)."""

from __future__ import annotations

import json
import time

import pytest
from typer.testing import CliRunner

from tidebank.cluster.cli import app
from tidebank.cluster.cli import trade as trade_cli
from tidebank.common.topology import SECRET_ENV
from tidebank.v1 import escrow_pb2

runner = CliRunner()
E = ["--endpoints", "127.0.0.1:1"]
CREATE = ["--buyer", "11", "--seller", "12", "--amount", "500", "--ledger", "1", "--ship-by-s", "3600",
          "--auto-confirm-s", "600"]
BAD_IDS = ["abc", "0", str(2**128 - 1), "-5"]


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv(SECRET_ENV, raising=False)
    monkeypatch.delenv("TIDEBANK_DEBUG", raising=False)


def invoke(*args: str):
    result = runner.invoke(app, list(args))
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


# ---- help ----------------------------------------------------------------------------


def test_root_help_lists_trade():
    r = invoke("--help")
    assert r.exit_code == 0 and "trade" in r.output


@pytest.mark.parametrize(
    "command",
    [
        ["trade"],
        ["trade", "create"],
        ["trade", "ship"],
        ["trade", "confirm"],
        ["trade", "refund"],
        ["trade", "dispute"],
        ["trade", "dispute", "open"],
        ["trade", "dispute", "withdraw"],
        ["trade", "dispute", "resolve"],
        ["trade", "extend"],
        ["trade", "get"],
        ["trade", "list"],
        ["trade", "totals"],
    ],
)
def test_every_trade_command_has_help(command):
    r = invoke(*command, "--help")
    assert r.exit_code == 0
    assert "Usage" in r.output
    assert len(r.output.splitlines()) > 4


def test_trade_without_a_subcommand_lists_the_subcommands():
    r = invoke("trade")
    for name in ("create", "ship", "confirm", "refund", "dispute", "extend", "get", "list", "totals"):
        assert name in r.output


def test_trade_commands_take_dir_endpoints_output_and_timeout():
    r = invoke("trade", "ship", "--help")
    for option in ("--dir", "--endpoints", "--output", "--timeout"):
        assert option in r.output


# ---- argument errors -------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["--buyer", "--seller", "--amount", "--ledger", "--ship-by-s", "--auto-confirm-s"])
def test_trade_create_names_a_missing_option(missing):
    args = list(CREATE)
    i = args.index(missing)
    del args[i : i + 2]
    r = invoke("trade", "create", *E, *args)
    assert r.exit_code == 2
    assert f"Missing option '{missing}'" in r.output


@pytest.mark.parametrize(
    ("option", "value"),
    [("--amount", "0"), ("--amount", str(2**64)), ("--ledger", "0"), ("--fee-bps", "10001"), ("--fee-bps", "-1"),
     ("--ship-by-s", "0"), ("--auto-confirm-s", "0"), ("--amount", "ten")],
)
def test_trade_create_rejects_an_invalid_value(option, value):
    args = list(CREATE)
    if option in args:
        args[args.index(option) + 1] = value
    else:
        args += [option, value]
    r = invoke("trade", "create", *E, *args)
    assert r.exit_code == 2
    assert option in r.output


@pytest.mark.parametrize("option", ["--buyer", "--seller", "--id"])
@pytest.mark.parametrize("bad", BAD_IDS)
def test_trade_create_rejects_bad_ids(option, bad):
    args = list(CREATE)
    if option in args:
        args[args.index(option) + 1] = bad
    else:
        args += [option, bad]
    r = invoke("trade", "create", *E, *args)
    assert r.exit_code == 2
    assert "id" in r.output


def test_trade_create_says_which_id_is_not_a_number():
    args = list(CREATE)
    args[args.index("--seller") + 1] = "bob"
    r = invoke("trade", "create", *E, *args)
    assert r.exit_code == 2 and "seller account id 'bob' is not an integer" in r.output


def test_trade_create_needs_dir_or_endpoints():
    r = invoke("trade", "create", *CREATE)
    assert r.exit_code == 2
    assert "--dir" in r.output and "--endpoints" in r.output


def test_trade_create_rejects_malformed_endpoints():
    r = invoke("trade", "create", "--endpoints", "localhost", *CREATE)
    assert r.exit_code == 2 and "--endpoints" in r.output


def test_trade_get_rejects_an_unknown_output_format():
    r = invoke("trade", "get", *E, "5", "-o", "yaml")
    assert r.exit_code == 2


@pytest.mark.parametrize(
    "command", [["ship"], ["confirm"], ["get"], ["dispute", "open"], ["dispute", "withdraw"]]
)
def test_id_list_commands_need_an_id(command):
    r = invoke("trade", *command, *E)
    assert r.exit_code == 2
    assert "Missing argument" in r.output


@pytest.mark.parametrize(
    "command", [["ship"], ["confirm"], ["get"], ["dispute", "open"], ["dispute", "withdraw"]]
)
@pytest.mark.parametrize("bad", BAD_IDS)
def test_id_list_commands_reject_bad_ids(command, bad):
    r = invoke("trade", *command, *E, "7", "--", bad)
    assert r.exit_code == 2
    assert "trade id" in r.output


def test_ship_refuses_more_ids_than_a_batch_holds():
    r = invoke("trade", "ship", *E, *map(str, range(1, 8191)))
    assert r.exit_code == 2 and "at most 8189" in r.output


def test_refund_needs_an_amount():
    r = invoke("trade", "refund", *E, "5")
    assert r.exit_code == 2 and "Missing option '--amount'" in r.output


@pytest.mark.parametrize("amount", ["0", "-3", str(2**64)])
def test_refund_rejects_an_invalid_amount(amount):
    r = invoke("trade", "refund", *E, "5", "--amount", amount)
    assert r.exit_code == 2 and "--amount" in r.output


@pytest.mark.parametrize("bad", BAD_IDS)
def test_refund_rejects_a_bad_refund_id(bad):
    r = invoke("trade", "refund", *E, "5", "--amount", "1", f"--refund-id={bad}")
    assert r.exit_code == 2 and "refund id" in r.output


@pytest.mark.parametrize("bad", BAD_IDS)
def test_refund_rejects_a_bad_trade_id(bad):
    r = invoke("trade", "refund", *E, "--amount", "1", "--", bad)
    assert r.exit_code == 2 and "trade id" in r.output


def test_resolve_needs_a_buyer_amount():
    r = invoke("trade", "dispute", "resolve", *E, "5")
    assert r.exit_code == 2 and "Missing option '--buyer-amount'" in r.output


def test_resolve_rejects_a_negative_buyer_amount():
    r = invoke("trade", "dispute", "resolve", *E, "5", "--buyer-amount", "-1")
    assert r.exit_code == 2 and "--buyer-amount" in r.output


def test_resolve_takes_one_trade():
    r = invoke("trade", "dispute", "resolve", *E, "5", "6", "--buyer-amount", "1")
    assert r.exit_code == 2


def test_extend_needs_by_s():
    r = invoke("trade", "extend", *E, "5")
    assert r.exit_code == 2 and "Missing option '--by-s'" in r.output


@pytest.mark.parametrize("by", ["0", "-1", str(2**32)])
def test_extend_rejects_an_invalid_duration(by):
    r = invoke("trade", "extend", *E, "5", "--by-s", by)
    assert r.exit_code == 2 and "--by-s" in r.output


def test_extend_rejects_a_bad_extension_id():
    r = invoke("trade", "extend", *E, "5", "--by-s", "60", "--extension-id", "x1")
    assert r.exit_code == 2 and "extension id 'x1'" in r.output


def test_list_needs_buyer_or_seller():
    r = invoke("trade", "list", *E)
    assert r.exit_code == 2 and "exactly one of --buyer ID or --seller ID" in r.output


def test_list_refuses_both_buyer_and_seller():
    r = invoke("trade", "list", *E, "--buyer", "1", "--seller", "2")
    assert r.exit_code == 2 and "exactly one of --buyer ID or --seller ID" in r.output


@pytest.mark.parametrize("limit", ["0", "8190"])
def test_list_rejects_a_limit_out_of_range(limit):
    r = invoke("trade", "list", *E, "--buyer", "1", "--limit", limit)
    assert r.exit_code == 2 and "--limit" in r.output


@pytest.mark.parametrize("bad", BAD_IDS)
def test_list_rejects_a_bad_account_id(bad):
    r = invoke("trade", "list", *E, f"--seller={bad}")
    assert r.exit_code == 2 and "account id" in r.output


def test_totals_with_an_unreachable_endpoint_exits_2():
    r = invoke("trade", "totals", "--endpoints", "127.0.0.1:1", "--timeout", "0.5")
    assert r.exit_code == 2 and "no node answered" in r.output


# ---- against a fake client -----------------------------------------------------------


class FakeClient:
    """Records every call; answers from `results` (per method) and `trades`/`pages`."""

    def __init__(self):
        self.calls: list[tuple[str, object]] = []
        self.results: dict[str, list] = {}
        self.trades: dict[int, object] = {}
        self.pages: dict[str, object] = {}
        self.error: Exception | None = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def _write(self, method, items):
        from tidebank.client import TradeResult, TradeResultCode

        self.calls.append((method, list(items)))
        if self.error is not None:
            raise self.error
        if method in self.results:
            return self.results[method]
        ids = [getattr(i, "trade_id", None) or getattr(i, "id", None) or i for i in items]
        return [TradeResult(n, int(i), TradeResultCode.ok) for n, i in enumerate(ids)]

    def __getattr__(self, method):
        if method.endswith(("_trades", "_disputes")) and method not in ("lookup_trades", "list_trades"):
            return lambda items: self._write(method, items)
        raise AttributeError(method)

    def lookup_trades(self, ids):
        self.calls.append(("lookup_trades", list(ids)))
        return [self.trades[i] for i in ids if i in self.trades]

    def list_trades(self, account_id, *, role, limit=100, page_token=""):
        self.calls.append(("list_trades", (account_id, role, limit, page_token)))
        return self.pages[page_token]


@pytest.fixture
def fake(monkeypatch):
    client = FakeClient()
    monkeypatch.setattr(trade_cli, "open_client", lambda endpoints, timeout_s: client)
    return client


def trade(trade_id: int, **fields):
    from tidebank.client import Trade, TradeState, TradeTimer

    values = dict(buyer_account_id=11, seller_account_id=12, amount=500, ledger=1, state=TradeState.PAID,
                  held=500, timer=TradeTimer.SHIP_BY, deadline=time.time_ns() + 3_600 * 10**9,
                  escrow_account_id=2**100 + 1, fee_account_id=2**100 + 2)
    return Trade(trade_id, **(values | fields))


def test_create_sends_the_trade_and_prints_its_result(fake):
    r = invoke("trade", "create", *E, *CREATE, "--fee-bps", "250", "--id", "77", "--user-data-128", str(2**127))
    assert r.exit_code == 0, r.output
    [(method, [sent])] = fake.calls
    assert method == "create_trades"
    assert (sent.id, sent.buyer_account_id, sent.seller_account_id, sent.amount, sent.ledger) == (77, 11, 12, 500, 1)
    assert (sent.fee_bps, sent.ship_by_timeout_s, sent.auto_confirm_timeout_s) == (250, 3600, 600)
    assert sent.user_data_128 == 2**127
    assert "77" in r.stdout and "ok" in r.stdout
    assert "new trade id" not in r.stderr


def test_create_without_an_id_prints_the_new_one_before_sending(fake):
    from tidebank.client import OutcomeUnknownError

    fake.error = OutcomeUnknownError("no answer")
    r = invoke("trade", "create", *E, *CREATE)
    assert r.exit_code == 1
    [(_, [sent])] = fake.calls
    assert f"new trade id {sent.id} (to retry this same step, pass --id {sent.id})" in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: ")


def test_a_result_that_is_not_ok_exits_1_with_its_code(fake):
    from tidebank.client import TradeResult, TradeResultCode

    fake.results["ship_trades"] = [TradeResult(0, 5, TradeResultCode.trade_not_found)]
    r = invoke("trade", "ship", *E, "5")
    assert r.exit_code == 1
    assert "trade_not_found" in r.stdout


def test_exists_counts_as_done(fake):
    from tidebank.client import TradeResult, TradeResultCode

    fake.results["confirm_trades"] = [TradeResult(0, 5, TradeResultCode.exists)]
    r = invoke("trade", "confirm", *E, "5")
    assert r.exit_code == 0 and "exists" in r.stdout


def test_transfer_failed_shows_the_transfer_result(fake):
    from tidebank.client import CreateTransferResult, TradeResult, TradeResultCode

    fake.results["create_trades"] = [TradeResult(0, 77, TradeResultCode.transfer_failed,
                                                 CreateTransferResult.exceeds_credits)]
    r = invoke("trade", "create", *E, *CREATE, "--id", "77")
    assert r.exit_code == 1
    assert "transfer_failed (exceeds_credits)" in r.stdout


def test_json_results_carry_the_code_and_the_transfer_result(fake):
    from tidebank.client import CreateTransferResult, TradeResult, TradeResultCode

    fake.results["create_trades"] = [TradeResult(0, 77, TradeResultCode.transfer_failed,
                                                 CreateTransferResult.exceeds_credits)]
    r = invoke("trade", "create", *E, *CREATE, "--id", "77", "-o", "json")
    assert r.exit_code == 1
    assert json.loads(r.stdout) == [{"index": 0, "trade_id": "77", "status": "transfer_failed",
                                     "transfer_status": "exceeds_credits", "ok": False}]


@pytest.mark.parametrize(
    ("command", "method"),
    [(["ship"], "ship_trades"), (["confirm"], "confirm_trades"), (["dispute", "open"], "open_disputes"),
     (["dispute", "withdraw"], "withdraw_disputes")],
)
def test_id_list_commands_send_every_id_in_order(fake, command, method):
    r = invoke("trade", *command, *E, "9", "0x10", "3", "-o", "json")
    assert r.exit_code == 0, r.output
    assert fake.calls == [(method, [9, 16, 3])]
    assert [row["trade_id"] for row in json.loads(r.stdout)] == ["9", "16", "3"]


def test_one_failed_item_of_several_exits_1(fake):
    from tidebank.client import TradeResult, TradeResultCode

    fake.results["ship_trades"] = [TradeResult(0, 1, TradeResultCode.ok),
                                   TradeResult(1, 2, TradeResultCode.trade_is_settled)]
    assert invoke("trade", "ship", *E, "1", "2").exit_code == 1


def test_refund_without_a_refund_id_makes_one_and_prints_it(fake):
    r = invoke("trade", "refund", *E, "5", "--amount", "40", "-o", "json")
    assert r.exit_code == 0, r.output
    [(method, [sent])] = fake.calls
    assert method == "refund_trades" and (sent.trade_id, sent.amount) == (5, 40) and sent.refund_id > 0
    assert json.loads(r.stdout)[0]["refund_id"] == str(sent.refund_id)
    assert f"pass --refund-id {sent.refund_id}" in r.stderr


def test_refund_with_a_refund_id_sends_it(fake):
    r = invoke("trade", "refund", *E, "5", "--amount", "40", "--refund-id", "0xff")
    assert r.exit_code == 0, r.output
    assert fake.calls[0][1][0].refund_id == 255
    assert "new refund id" not in r.stderr
    assert "255" in r.stdout


def test_resolve_sends_the_split(fake):
    r = invoke("trade", "dispute", "resolve", *E, "5", "--buyer-amount", "0")
    assert r.exit_code == 0, r.output
    [(method, [sent])] = fake.calls
    assert method == "resolve_disputes" and (sent.trade_id, sent.buyer_amount) == (5, 0)


def test_extend_sends_the_extension_and_prints_its_id(fake):
    r = invoke("trade", "extend", *E, "5", "--by-s", "86400", "-o", "json")
    assert r.exit_code == 0, r.output
    [(method, [sent])] = fake.calls
    assert method == "extend_trades" and (sent.trade_id, sent.extend_by_s) == (5, 86400)
    assert json.loads(r.stdout)[0]["extension_id"] == str(sent.extension_id)
    assert f"pass --extension-id {sent.extension_id}" in r.stderr


def test_get_json_has_every_trade_field(fake):
    from tidebank.client import TradeClosedBy, TradeState, TradeTimer

    fake.trades[5] = trade(5, state=TradeState.SETTLED, closed_by=TradeClosedBy.BUYER_CONFIRMED,
                           timer=TradeTimer.NONE, deadline=0, held=0, released=490, fee=10,
                           refunds=[(2**90, 3)], extensions=[(8, 60)], dispute_opened=True)
    r = invoke("trade", "get", *E, "5", "-o", "json")
    assert r.exit_code == 0, r.output
    [row] = json.loads(r.stdout)
    assert list(row) == [f.name for f in escrow_pb2.Trade.DESCRIPTOR.fields]
    assert (row["id"], row["state"], row["closed_by"], row["timer"]) == ("5", "settled", "buyer_confirmed", "none")
    assert (row["held"], row["released"], row["fee"], row["dispute_opened"]) == (0, 490, 10, True)
    assert row["escrow_account_id"] == str(2**100 + 1)
    assert row["refunds"] == [{"refund_id": str(2**90), "amount": 3}]
    assert row["extensions"] == [{"extension_id": "8", "extend_by_s": 60}]


def test_get_table_shows_the_money_and_when_the_timer_fires(fake):
    fake.trades[5] = trade(5, refunded=20, held=480)
    r = invoke("trade", "get", *E, "5")
    assert r.exit_code == 0, r.output
    header, row = r.stdout.splitlines()[:2]
    for col in ("STATE", "BUYER", "SELLER", "AMOUNT", "HELD", "REFUNDED", "RELEASED", "FEE", "TIMER", "DEADLINE",
                "CLOSED BY"):
        assert col in header
    assert row.split()[:10] == ["5", "paid", "11", "12", "500", "480", "20", "0", "0", "ship_by"]
    assert "(in 3599 s)" in row or "(in 3600 s)" in row


def test_get_table_shows_a_paused_timer(fake):
    from tidebank.client import TradeState, TradeTimer

    fake.trades[5] = trade(5, state=TradeState.DISPUTED, state_before_dispute=TradeState.SHIPPED,
                           timer=TradeTimer.AUTO_CONFIRM, deadline=0, timer_remaining_ns=90 * 10**9)
    r = invoke("trade", "get", *E, "5")
    assert "disputed (was shipped)" in r.stdout and "paused (90 s left)" in r.stdout


def test_get_a_missing_trade_exits_1(fake):
    fake.trades[5] = trade(5)
    r = invoke("trade", "get", *E, "5", "6")
    assert r.exit_code == 1
    assert "trade 6 not found" in r.stderr


def test_list_by_seller_asks_for_the_seller_role(fake):
    from tidebank.client import TradePage, TradeRole

    fake.pages[""] = TradePage([trade(1)], "")
    r = invoke("trade", "list", *E, "--seller", "12", "--limit", "5")
    assert r.exit_code == 0, r.output
    assert fake.calls == [("list_trades", (12, TradeRole.SELLER, 5, ""))]
    assert "1 trade(s) with seller 12" in r.stdout


def test_list_prints_the_next_page_token(fake):
    from tidebank.client import TradePage, TradeRole

    fake.pages["t1"] = TradePage([trade(2)], "t2")
    r = invoke("trade", "list", *E, "--buyer", "11", "--page-token", "t1")
    assert r.exit_code == 0, r.output
    assert fake.calls == [("list_trades", (11, TradeRole.BUYER, 100, "t1"))]
    assert "more: --page-token t2" in r.stdout


def test_list_all_follows_every_page(fake):
    from tidebank.client import TradePage

    fake.pages.update({"": TradePage([trade(1), trade(2)], "a"), "a": TradePage([trade(3)], "b"),
                       "b": TradePage([], "")})
    r = invoke("trade", "list", *E, "--buyer", "11", "--all", "-o", "json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert [t["id"] for t in data["trades"]] == ["1", "2", "3"] and data["next_page_token"] == ""
    assert [c[1][3] for c in fake.calls] == ["", "a", "b"]


def test_list_all_stops_when_the_cluster_repeats_a_page_token(fake):
    from tidebank.client import TradePage

    fake.pages.update({"": TradePage([trade(1)], "a"), "a": TradePage([trade(1)], "a")})
    r = invoke("trade", "list", *E, "--buyer", "11", "--all")
    assert r.exit_code == 1 and "same page token" in r.stderr

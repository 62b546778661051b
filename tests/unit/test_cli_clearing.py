"""`tidebank clearing ...` without a cluster: arguments, and what the commands send and print against a fake
client (`tidebank.cluster.cli.clearing.open_client` replaced)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from tidebank.cluster.cli import app
from tidebank.cluster.cli import clearing as clearing_cli
from tidebank.common.topology import SECRET_ENV

runner = CliRunner()
E = ["--endpoints", "127.0.0.1:1"]
ADD = ["--ledger", "1", "--code", "7", "--name", "Bank A", "--settlement-account", "1001", "--cap", "5000"]
ITEMS_HEADER = "id,payer_id,payee_id,amount,ledger\n"


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv(SECRET_ENV, raising=False)
    monkeypatch.delenv("TIDEBANK_DEBUG", raising=False)


def invoke(*args: str):
    result = runner.invoke(app, list(args))
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


# ---- the fake client ----------------------------------------------------------------------


class FakeExport:
    """What export_statement returns: the items, then the statement; `fail_after` items, then an error."""

    def __init__(self, items: list, statement: Any, fail_after: int | None = None) -> None:
        self._items = items
        self._statement = statement
        self.fail_after = fail_after
        self.iterated = False
        self.done = False

    def __iter__(self):
        from tidebank.client import TidebankError

        self.iterated = True
        for k, i in enumerate(self._items):
            if k == self.fail_after:
                raise TidebankError("export_statement: the stream broke after some items")
            yield i
        self.done = True

    @property
    def statement(self):
        assert self.done, "statement read before the last item"
        return self._statement

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class FakeClient:
    """Records every call; answers ok, or what `answers` holds per method."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.answers: dict[str, Any] = {}
        self.error: Exception | None = None
        self.export: FakeExport | None = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def _answer(self, method: str, args: Any, default: Any) -> Any:
        self.calls.append((method, args))
        if self.error is not None:
            raise self.error
        answer = self.answers.get(method, default)
        return answer(args) if callable(answer) else answer

    def register_participants(self, participants):
        from tidebank.client import ParticipantResult, ParticipantResultCode

        ps = list(participants)
        return self._answer("register_participants", ps,
                            [ParticipantResult(k, p.id, ParticipantResultCode.ok) for k, p in enumerate(ps)])

    def _one(self, method: str, pid: int, *rest: Any):
        from tidebank.client import ParticipantResult, ParticipantResultCode

        return self._answer(method, (pid, *rest), ParticipantResult(0, pid, ParticipantResultCode.ok))

    def set_net_debit_cap(self, pid, cap):
        return self._one("set_net_debit_cap", pid, cap)

    def suspend_participant(self, pid):
        return self._one("suspend_participant", pid)

    def resume_participant(self, pid):
        return self._one("resume_participant", pid)

    def list_participants(self, ledger=0, *, after=0, limit=0):
        return self._answer("list_participants", (ledger, after, limit), [])

    def lookup_participants(self, ids):
        return self._answer("lookup_participants", list(ids), [])

    def submit_items(self, items):
        from tidebank.client import ClearingItemResult, ClearingItemResultCode

        items = list(items)
        return self._answer("submit_items", items,
                            [ClearingItemResult(k, i.id, ClearingItemResultCode.ok) for k, i in enumerate(items)])

    def _step(self, method: str, args: tuple):
        from tidebank.client import Window, WindowResultCode, WindowStep

        return self._answer(method, args, WindowStep(WindowResultCode.ok, Window(args[0], args[1] or 3)))

    def close_window(self, ledger, number=0):
        return self._step("close_window", (ledger, number))

    def settle_window(self, ledger, number):
        return self._step("settle_window", (ledger, number))

    def unwind_participant(self, ledger, number, pid):
        return self._step("unwind_participant", (ledger, number, pid))

    def abort_window(self, ledger, number):
        return self._step("abort_window", (ledger, number))

    def get_window(self, ledger, number=0, bilateral=False):
        from tidebank.client import Window

        return self._answer("get_window", (ledger, number, bilateral), Window(ledger, number or 3))

    def list_windows(self, ledger, after=0, limit=0):
        return self._answer("list_windows", (ledger, after, limit), [])

    def export_statement(self, ledger, number, pid, include_unwound=False, *, timeout_s=None):
        self.calls.append(("export_statement", (ledger, number, pid, include_unwound)))
        assert self.export is not None
        return self.export


@pytest.fixture
def fake(monkeypatch) -> FakeClient:
    client = FakeClient()
    monkeypatch.setattr(clearing_cli, "open_client", lambda endpoints, timeout_s: client)
    return client


def items(*rows: tuple) -> list:
    from tidebank.client import ClearingItem

    return [ClearingItem(i, payer_id=payer, payee_id=payee, amount=amount, ledger=1, window=2)
            for i, payer, payee, amount in rows]


def statement(**kw: Any) -> Any:
    from tidebank.client import Statement

    return Statement(11, ledger=1, window=2, sha256="ab" * 32, **kw)


# ---- help and arguments -----------------------------------------------------------------


def test_root_help_lists_clearing():
    r = invoke("--help")
    assert r.exit_code == 0 and "clearing" in r.output


@pytest.mark.parametrize(
    "command",
    [["participant", "add"], ["participant", "list"], ["participant", "get"], ["participant", "cap"],
     ["participant", "suspend"], ["participant", "resume"], ["submit"], ["window", "list"], ["window", "show"],
     ["window", "close"], ["window", "abort"], ["settle"], ["unwind"], ["statement"], ["reconcile"]],
)
def test_every_clearing_command_has_help(command):
    r = invoke("clearing", *command, "--help")
    assert r.exit_code == 0 and "Usage" in r.output and "--endpoints" in r.output


def test_participant_add_refuses_a_name_longer_than_32_bytes(fake):
    args = list(ADD)
    args[args.index("--name") + 1] = "é" * 17  # 34 bytes
    r = invoke("clearing", "participant", "add", *E, *args)
    assert r.exit_code == 2 and "at most 32" in r.output
    assert fake.calls == []


def test_submit_needs_the_item_options_or_a_file(fake):
    r = invoke("clearing", "submit", *E, "--payer", "1", "--payee", "2")
    assert r.exit_code == 2 and "missing --amount, --ledger" in r.output


def test_submit_file_refuses_item_options_beside_it(fake, tmp_path):
    f = tmp_path / "items.csv"
    f.write_text(ITEMS_HEADER + "5,1,2,100,1\n")
    r = invoke("clearing", "submit", *E, "--file", str(f), "--payer", "1")
    assert r.exit_code == 2 and fake.calls == []


def test_statement_refuses_an_unknown_format(fake):
    r = invoke("clearing", "statement", *E, "2", "--ledger", "1", "--participant", "11", "-o", "xml")
    assert r.exit_code == 2


# ---- participants -------------------------------------------------------------------------


def test_participant_add_sends_the_participant_and_prints_its_result(fake):
    r = invoke("clearing", "participant", "add", *E, *ADD, "--id", "0x21")
    assert r.exit_code == 0, r.output
    [(method, [p])] = fake.calls
    assert method == "register_participants"
    assert (p.id, p.ledger, p.code, p.name, p.settlement_account_id, p.net_debit_cap) == (33, 1, 7, "Bank A", 1001,
                                                                                           5000)
    assert "33" in r.stdout and "ok" in r.stdout and "new participant id" not in r.stderr


def test_participant_add_without_an_id_prints_the_new_one_before_sending(fake):
    from tidebank.client import OutcomeUnknownError

    fake.error = OutcomeUnknownError("no answer")
    r = invoke("clearing", "participant", "add", *E, *ADD)
    assert r.exit_code == 1
    [(_, [p])] = fake.calls
    assert f"pass --id {p.id}" in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: ")


def test_a_refused_participant_result_exits_1_with_its_code(fake):
    from tidebank.client import ParticipantResult, ParticipantResultCode

    refused = ParticipantResult(0, 5, ParticipantResultCode.settlement_account_not_found)
    fake.answers["register_participants"] = [refused]
    r = invoke("clearing", "participant", "add", *E, *ADD, "--id", "5")
    assert r.exit_code == 1 and "settlement_account_not_found" in r.stdout


def test_participant_cap_sends_the_cap(fake):
    r = invoke("clearing", "participant", "cap", *E, "11", "0", "-o", "json")
    assert r.exit_code == 0, r.output
    assert fake.calls == [("set_net_debit_cap", (11, 0))]
    assert json.loads(r.stdout)[0]["status"] == "ok"


def test_participant_cap_below_position_exits_1(fake):
    from tidebank.client import ParticipantResult, ParticipantResultCode

    fake.answers["set_net_debit_cap"] = ParticipantResult(0, 11, ParticipantResultCode.cap_below_position)
    r = invoke("clearing", "participant", "cap", *E, "11", "10")
    assert r.exit_code == 1 and "cap_below_position" in r.stdout


def test_participant_get_of_a_missing_one_exits_1(fake):
    from tidebank.client import Participant

    fake.answers["lookup_participants"] = [Participant(11, ledger=1, name="A", position=-40)]
    r = invoke("clearing", "participant", "get", *E, "11", "12")
    assert r.exit_code == 1
    assert "-40" in r.stdout and "participant 12 not found" in r.stderr


# ---- items ----------------------------------------------------------------------------------


def test_submit_one_item_prints_its_new_id_before_sending(fake):
    from tidebank.client import OutcomeUnknownError

    fake.error = OutcomeUnknownError("no answer")
    r = invoke("clearing", "submit", *E, "--payer", "11", "--payee", "12", "--amount", "250", "--ledger", "1")
    assert r.exit_code == 1
    [(_, [sent])] = fake.calls
    assert (sent.payer_id, sent.payee_id, sent.amount, sent.ledger) == (11, 12, 250, 1)
    assert f"new item id {sent.id} (to retry this same step, pass --id {sent.id})" in r.stderr


def test_submit_file_goes_in_batches_and_counts_per_result(fake, tmp_path, monkeypatch):
    from tidebank.client import ClearingItemResult, ClearingItemResultCode

    monkeypatch.setattr(clearing_cli, "SUBMIT_BATCH_ITEMS", 2)
    fake.answers["submit_items"] = lambda batch: [
        ClearingItemResult(k, i.id, ClearingItemResultCode.exceeds_net_debit_cap if i.id == 4
                           else ClearingItemResultCode.ok) for k, i in enumerate(batch)]
    f = tmp_path / "items.csv"
    f.write_text(ITEMS_HEADER + "".join(f"{i},11,12,{i * 10},1\n" for i in range(1, 6)))
    r = invoke("clearing", "submit", *E, "--file", str(f), "-o", "json")
    assert r.exit_code == 1
    assert [[i.id for i in batch] for _, batch in fake.calls] == [[1, 2], [3, 4], [5]]
    assert fake.calls[1][1][1].amount == 40
    data = json.loads(r.stdout)
    assert data["results"] == {"ok": 4, "exceeds_net_debit_cap": 1} and data["requests"] == 3
    assert data["refused"] == [{"line": 5, "id": "4", "status": "exceeds_net_debit_cap"}]


def test_submit_file_whose_items_are_all_accepted_exits_0(fake, tmp_path):
    f = tmp_path / "items.csv"
    f.write_text("id,payer_id,payee_id,amount,ledger,user_data_128\n1,11,12,5,1,0x99\n2,12,11,5,1,\n")
    r = invoke("clearing", "submit", *E, "--file", str(f))
    assert r.exit_code == 0, r.output
    [(_, batch)] = fake.calls
    assert [i.user_data_128 for i in batch] == [0x99, 0]
    assert "2 item(s) in 1 request(s)" in r.stdout


def test_a_malformed_items_file_sends_nothing_and_exits_2(fake, tmp_path):
    f = tmp_path / "items.csv"
    f.write_text(ITEMS_HEADER + "1,11,12,5,1\n2,11,12,five,1\n")
    r = invoke("clearing", "submit", *E, "--file", str(f))
    assert r.exit_code == 2
    assert "line 3: amount 'five' is not an integer" in r.stderr
    assert fake.calls == []


# ---- windows --------------------------------------------------------------------------------


def test_window_close_without_a_number_closes_the_open_window(fake):
    r = invoke("clearing", "window", "close", *E, "--ledger", "1", "-o", "json")
    assert r.exit_code == 0, r.output
    assert fake.calls == [("close_window", (1, 0))]
    assert json.loads(r.stdout)["window"]["number"] == 3


def test_window_show_json_has_the_nets(fake):
    from tidebank.client import NetPosition, Window, WindowState

    fake.answers["get_window"] = Window(1, 2, state=WindowState.CLOSED, nets=[NetPosition(11, 50, 20, 2, 1, 30)])
    r = invoke("clearing", "window", "show", *E, "--ledger", "1", "2", "--bilateral", "-o", "json")
    assert r.exit_code == 0, r.output
    assert fake.calls == [("get_window", (1, 2, True))]
    data = json.loads(r.stdout)
    assert data["state"] == "closed"
    assert data["nets"] == [{"participant_id": "11", "sent": 50, "received": 20, "count_sent": 2,
                             "count_received": 1, "net": 30}]


def test_settle_with_insufficient_funds_prints_the_shortfalls_and_exits_1(fake):
    from tidebank.client import Shortfall, Window, WindowResultCode, WindowStep

    fake.answers["settle_window"] = WindowStep(WindowResultCode.insufficient_funds, Window(1, 2),
                                               [Shortfall(11, 500, 120, 380)])
    r = invoke("clearing", "settle", *E, "--ledger", "1", "2")
    assert r.exit_code == 1
    assert "insufficient_funds" in r.stdout
    assert "SHORTFALL" in r.stdout
    assert any(line.split() == ["11", "500", "120", "380"] for line in r.stdout.splitlines())


def test_settling_a_window_already_settled_exits_0(fake):
    from tidebank.client import Window, WindowResultCode, WindowStep

    fake.answers["settle_window"] = WindowStep(WindowResultCode.window_already_settled, Window(1, 2))
    r = invoke("clearing", "settle", *E, "--ledger", "1", "2")
    assert r.exit_code == 0 and "window_already_settled" in r.stdout


def test_window_abort_sends_the_window_and_exits_0(fake):
    from tidebank.client import Window, WindowResultCode, WindowState, WindowStep

    fake.answers["abort_window"] = WindowStep(WindowResultCode.ok, Window(1, 2, state=WindowState.ABORTED))
    r = invoke("clearing", "window", "abort", *E, "--ledger", "1", "2", "-o", "json")
    assert r.exit_code == 0, r.output
    assert fake.calls == [("abort_window", (1, 2))]
    assert json.loads(r.stdout)["window"]["state"] == "aborted"


def test_window_abort_of_a_window_aborted_before_exits_0(fake):
    from tidebank.client import Window, WindowResultCode, WindowStep

    fake.answers["abort_window"] = WindowStep(WindowResultCode.window_already_aborted, Window(1, 2))
    r = invoke("clearing", "window", "abort", *E, "--ledger", "1", "2")
    assert r.exit_code == 0 and "window_already_aborted" in r.stdout


def test_window_abort_refused_by_the_windows_state_prints_why_and_exits_1(fake):
    import grpc

    from tidebank.client import TidebankError

    fake.error = TidebankError("abort_window failed: FAILED_PRECONDITION: window 2 of ledger 1 cannot be aborted: "
                               "it is settled", code=grpc.StatusCode.FAILED_PRECONDITION)
    r = invoke("clearing", "window", "abort", *E, "--ledger", "1", "2")
    assert r.exit_code == 1
    assert "it is settled" in r.stderr


def test_window_abort_needs_a_window_number(fake):
    r = invoke("clearing", "window", "abort", *E, "--ledger", "1")
    assert r.exit_code == 2
    assert fake.calls == []


def test_participant_list_reads_every_participant_by_default(fake):
    r = invoke("clearing", "participant", "list", *E, "--ledger", "1")
    assert r.exit_code == 0, r.output
    assert fake.calls == [("list_participants", (1, 0, 0))]


def test_participant_list_with_a_limit_reads_one_page_and_names_the_next(fake):
    from tidebank.client import Participant

    fake.answers["list_participants"] = [Participant(5, ledger=1), Participant(9, ledger=1)]
    r = invoke("clearing", "participant", "list", *E, "--ledger", "1", "--after", "4", "--limit", "2")
    assert r.exit_code == 0, r.output
    assert fake.calls == [("list_participants", (1, 4, 2))]
    assert "next page: --after 9" in r.stdout


def test_window_show_prints_sums_beyond_64_bits_whole(fake):
    from tidebank.client import NetPosition, Window, WindowState

    big = 2**70
    fake.answers["get_window"] = Window(1, 2, state=WindowState.CLOSED, nets=[NetPosition(11, big, 0, 9, 0, big)])
    r = invoke("clearing", "window", "show", *E, "--ledger", "1", "2", "-o", "json")
    assert json.loads(r.stdout)["nets"][0]["sent"] == big


def test_unwind_refused_exits_1(fake):
    from tidebank.client import Window, WindowResultCode, WindowStep

    fake.answers["unwind_participant"] = WindowStep(WindowResultCode.participant_not_in_window, Window(1, 2))
    r = invoke("clearing", "unwind", *E, "--ledger", "1", "2", "--participant", "11")
    assert r.exit_code == 1
    assert fake.calls == [("unwind_participant", (1, 2, 11))]


# ---- statements -----------------------------------------------------------------------------


def test_statement_csv_streams_the_items_under_the_header(fake):
    fake.export = FakeExport(items((5, 11, 12, 100), (9, 12, 11, 40)), statement(items=2))
    r = invoke("clearing", "statement", *E, "2", "--ledger", "1", "--participant", "11")
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines() == ["id,payer_id,payee_id,amount,ledger,user_data_128,status",
                                     "5,11,12,100,1,0,accepted", "9,12,11,40,1,0,accepted"]
    assert "sha256 " + "ab" * 32 in r.stderr


def test_statement_json_to_a_file_is_one_object_with_the_items_and_the_statement(fake, tmp_path):
    fake.export = FakeExport(items((5, 11, 12, 100), (9, 12, 11, 40)), statement(items=2, net=60))
    out = tmp_path / "statement.json"
    r = invoke("clearing", "statement", *E, "2", "--ledger", "1", "--participant", "11", "-o", "json",
               "--out", str(out))
    assert r.exit_code == 0, r.output
    data = json.loads(out.read_text())
    assert [i["id"] for i in data["items"]] == ["5", "9"]
    assert data["statement"]["net"] == 60 and data["statement"]["sha256"] == "ab" * 32
    assert r.stdout == ""


def test_a_statement_that_breaks_leaves_no_file(fake, tmp_path):
    fake.export = FakeExport(items((5, 11, 12, 100), (9, 12, 11, 40)), statement(), fail_after=1)
    out = tmp_path / "statement.csv"
    r = invoke("clearing", "statement", *E, "2", "--ledger", "1", "--participant", "11", "--out", str(out))
    assert r.exit_code == 1 and "stream broke" in r.stderr
    assert list(tmp_path.iterdir()) == []


# ---- reconcile ------------------------------------------------------------------------------


def reconcile(fake, tmp_path, text: str, *extra: str):
    f = tmp_path / "mine.csv"
    f.write_text(text)
    return invoke("clearing", "reconcile", *E, "2", str(f), "--ledger", "1", "--participant", "11", *extra)


def test_reconcile_of_records_that_agree_exits_0(fake, tmp_path):
    fake.export = FakeExport(items((5, 11, 12, 100), (9, 12, 11, 40)), statement())
    r = reconcile(fake, tmp_path, "id,payer_id,payee_id,amount\n9,12,11,40\n5,11,12,100\n")
    assert r.exit_code == 0, r.output
    assert fake.calls == [("export_statement", (1, 2, 11, False))]
    assert r.stdout.strip().splitlines()[-1] == "agree"


def test_reconcile_reports_missing_extra_and_mismatched_and_exits_1(fake, tmp_path):
    fake.export = FakeExport(items((5, 11, 12, 100), (6, 11, 12, 7), (9, 12, 11, 40)), statement())
    r = reconcile(fake, tmp_path, "id,payer_id,payee_id,amount\n5,11,12,100\n9,12,11,41\n12,11,12,3\n", "-o", "json")
    assert r.exit_code == 1
    data = json.loads(r.stdout)
    assert (data["agree"], data["matched"], data["missing"], data["extra"], data["mismatched"]) == (False, 1, 1, 1, 1)
    assert data["first_missing"] == [{"id": "6", "payer_id": "11", "payee_id": "12", "amount": 7}]
    assert data["first_extra"] == [{"id": "12", "payer_id": "11", "payee_id": "12", "amount": 3, "line": 4}]
    assert data["first_mismatched"][0]["fields"] == ["amount"]


@pytest.mark.parametrize(
    ("text", "message"),
    [("id,payer_id,payee_id,amount\n5,11,12,100\n5,11,12,100\n", "line 3: id 5 repeats line 2"),
     ("id,payer,payee,amount\n5,11,12,100\n", "line 1: the header must name id,payer_id,payee_id,amount"),
     ("id,payer_id,payee_id,amount\n5,11,12,1e3\n", "line 2: amount '1e3' is not an integer")],
    ids=["duplicate-id", "bad-header", "non-integer"],
)
def test_reconcile_of_a_malformed_file_exits_2_without_reading_the_window(fake, tmp_path, text, message):
    fake.export = FakeExport(items((5, 11, 12, 100)), statement())
    r = reconcile(fake, tmp_path, text)
    assert r.exit_code == 2
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not fake.export.iterated

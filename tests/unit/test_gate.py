"""The gate: what a call costs against its quota, and which calls the admin log keeps."""

import pytest

from tests.unit.test_access import FakeContext
from tidebank.node.api.admin_log import AdminLog
from tidebank.node.api.errors import RequestError
from tidebank.node.api.gate import Gate, items_of
from tidebank.v1 import ledger_pb2, types_pb2


def test_a_packed_batch_costs_its_records():
    assert items_of(ledger_pb2.CreateTransfersRequest(transfers_packed=b"\0" * 128 * 7)) == 7
    assert items_of(ledger_pb2.CreateAccountsRequest(accounts_packed=b"\0" * 96 * 3)) == 3


def test_a_repeated_batch_costs_its_items_and_any_call_at_least_one():
    ids = [types_pb2.U128(lo=i) for i in range(1, 6)]
    assert items_of(ledger_pb2.LookupAccountsRequest(ids=ids)) == 5
    assert items_of(ledger_pb2.LookupAccountsRequest()) == 1


def test_a_refused_call_is_logged_and_counted(tmp_path):
    denied = []
    gate = Gate(AdminLog(tmp_path, "n1"), on_denied=denied.append)
    with pytest.raises(RequestError):
        gate.admit("Ledger/CreateTransfers", FakeContext("eve", ["auditor"]))
    (record,), _ = gate.admin_log.page(0, 10)
    assert (record.principal, record.permission, record.result) == ("eve", "transfers.create", "PERMISSION_DENIED")
    assert denied == ["transfers.create"]


def test_a_privileged_action_is_logged_with_its_result(tmp_path):
    gate = Gate(AdminLog(tmp_path, "n1"))
    grant = gate.admit("Clearing/SettleWindow", FakeContext("ops", ["platform"]))
    gate.finish(grant, "Clearing/SettleWindow", None)
    (record,), _ = gate.admin_log.page(0, 10)
    assert (record.principal, record.method, record.result) == ("ops", "Clearing/SettleWindow", "OK")


def test_an_ordinary_call_leaves_no_record(tmp_path):
    gate = Gate(AdminLog(tmp_path, "n1"))
    grant = gate.admit("Ledger/CreateTransfers", FakeContext("shop", ["platform"]))
    gate.finish(grant, "Ledger/CreateTransfers", None)
    assert gate.admin_log.page(0, 10) == ([], 0)

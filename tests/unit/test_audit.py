"""`tidebank audit`: summing per ledger over shards and the verdict (pure functions), and the
CLI command against fake nodes."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from typer.testing import CliRunner

from tidebank.cluster.audit import (
    ALL_ESCROW_FIELDS,
    CLEARING_FIELDS,
    EXIT_IN_FLIGHT,
    EXIT_MISMATCH,
    EXIT_NO_LEADER,
    EXIT_OK,
    FIELDS,
    ShardTotals,
    audit,
    escrow_mismatches,
    mismatches,
    pick_per_shard,
    shard_totals_from_proto,
    sum_escrow,
    sum_ledgers,
)
from tidebank.cluster.cli import app
from tidebank.v1 import admin_pb2, admin_pb2_grpc

BIG = 1 << 100  # beyond u64: sums are 128-bit


def shard(shard_id: int, ledgers: dict, prepared: int = 0, applied: int = 10, node: str = "n",
          escrow: dict | None = None) -> ShardTotals:
    return ShardTotals(shard_id, node, applied, prepared,
                       {k: {f: v.get(f, 0) for f in FIELDS} | v for k, v in ledgers.items()},
                       {k: dict.fromkeys(ALL_ESCROW_FIELDS, 0) | v for k, v in (escrow or {}).items()})


def test_sums_per_ledger_over_shards():
    a = shard(0, {1: {"debits_posted": 100, "credits_posted": 40}, 2: {"debits_pending": 5}})
    b = shard(1, {1: {"debits_posted": 20, "credits_posted": 80}, 2: {"credits_pending": 5}})
    totals = sum_ledgers([a, b])
    assert list(totals) == [1, 2]
    assert totals[1]["debits_posted"] == 120 and totals[1]["credits_posted"] == 120
    assert totals[2]["debits_pending"] == 5 and totals[2]["credits_pending"] == 5
    assert set(totals[1]) == set(FIELDS)


def test_balanced_quiescent_cluster_passes():
    report = audit([shard(0, {7: {"debits_posted": BIG, "credits_posted": 1}}),
                    shard(1, {7: {"debits_posted": 1, "credits_posted": BIG}})], expected_shards=[0, 1])
    assert report.quiescent and report.balanced and report.complete
    assert report.exit_code == EXIT_OK and report.verdict == "balanced"
    assert report.ledgers[7]["debits_posted"] == BIG + 1


def test_mismatch_is_reported_with_the_difference():
    report = audit([shard(0, {7: {"debits_posted": 100, "credits_posted": 90, "remote_debits_posted": 3}})],
                   expected_shards=[0])
    assert report.exit_code == EXIT_MISMATCH and not report.balanced
    assert [(m.left, m.right, m.difference) for m in report.mismatches] == [
        ("debits_posted", "credits_posted", 10),
        ("remote_debits_posted", "remote_credits_posted", 3),
    ]
    assert "difference +10" in report.mismatches[0].describe()


def test_pending_and_remote_pending_must_match_too():
    found = mismatches({1: dict.fromkeys(FIELDS, 0) | {"debits_pending": 4, "remote_credits_pending": 2}})
    assert [(m.left, m.difference) for m in found] == [("debits_pending", 4), ("remote_debits_pending", -2)]


def test_reserved_amounts_are_summed_but_not_judged():
    report = audit([shard(0, {1: {"reserved_debits": 9}})], expected_shards=[0])
    assert report.ledgers[1]["reserved_debits"] == 9 and report.exit_code == EXIT_OK


def test_prepared_transactions_mean_not_quiescent_even_when_sums_differ():
    report = audit([shard(0, {1: {"debits_posted": 50}}, prepared=2), shard(1, {1: {}})], expected_shards=[0, 1])
    assert not report.quiescent and report.in_flight == {0: 2}
    assert report.exit_code == EXIT_IN_FLIGHT and report.verdict == "not quiescent"
    assert not report.settled


def test_a_shard_without_an_answer_makes_the_audit_incomplete():
    report = audit([shard(0, {1: {}})], expected_shards=[0, 1], unreachable=["127.0.0.1:1"])
    assert report.missing_shards == [1] and report.exit_code == EXIT_NO_LEADER
    assert report.to_dict()["unreachable"] == ["127.0.0.1:1"]


def test_each_shard_counts_once_from_the_most_advanced_answer():
    stale = shard(0, {1: {"debits_posted": 1, "credits_posted": 1}}, applied=5, node="old")
    fresh = shard(0, {1: {"debits_posted": 2, "credits_posted": 2}}, applied=9, node="new")
    assert pick_per_shard([fresh, stale])[0].node == "new"
    assert pick_per_shard([stale, fresh])[0].node == "new"
    assert audit([stale, fresh], [0]).ledgers[1]["debits_posted"] == 2


def test_from_proto_reads_u128_fields_and_missing_ones_are_zero():
    message = admin_pb2.ShardLedgerTotals(shard_id=3, prepared_txns=1, applied_index=42)
    entry = message.ledgers.add(ledger=9)
    entry.debits_posted.hi, entry.debits_posted.lo = 1, 5
    entry.credits_posted.lo = 7
    t = shard_totals_from_proto(message, "addr")
    assert (t.shard_id, t.node, t.prepared_txns, t.applied_index) == (3, "addr", 1, 42)
    assert t.ledgers[9]["debits_posted"] == (1 << 64) + 5 and t.ledgers[9]["credits_posted"] == 7
    assert t.ledgers[9]["remote_debits_pending"] == 0


def test_json_keeps_128_bit_sums_exact():
    data = audit([shard(0, {1: {"debits_posted": BIG, "credits_posted": BIG}})], [0]).to_dict()
    assert data["ledgers"][0]["debits_posted"] == str(BIG)
    assert data["verdict"] == "balanced" and data["exit_code"] == 0


# ---------------------------------------------------------------------- the escrow book


def test_escrow_totals_are_summed_per_ledger_over_shards():
    a = shard(0, {}, escrow={1: {"held": 70, "escrow_balance": 70, "trades_paid": 2}, 2: {"fees": 3}})
    b = shard(1, {}, escrow={1: {"held": BIG, "escrow_balance": BIG, "trades_paid": 1, "trades_settled": 4}})
    totals = sum_escrow([a, b])
    assert list(totals) == [1, 2]
    assert totals[1]["held"] == BIG + 70 and totals[1]["escrow_balance"] == BIG + 70
    assert totals[1]["trades_paid"] == 3 and totals[1]["trades_settled"] == 4
    assert totals[2]["fees"] == 3
    assert set(totals[1]) == set(ALL_ESCROW_FIELDS)


def test_matching_escrow_book_passes():
    report = audit([shard(0, {}, escrow={1: {"held": 40, "escrow_balance": 15, "fees": 2, "fee_balance": 1}}),
                    shard(1, {}, escrow={1: {"held": 10, "escrow_balance": 35, "fees": 3, "fee_balance": 4}})],
                   expected_shards=[0, 1])
    assert report.exit_code == EXIT_OK and report.balanced
    assert report.escrow[1]["held"] == 50 and report.escrow[1]["escrow_balance"] == 50


def test_held_not_equal_to_escrow_balance_is_a_mismatch():
    report = audit([shard(0, {}, escrow={1: {"held": 100, "escrow_balance": 95}})], expected_shards=[0])
    assert report.exit_code == EXIT_MISMATCH and report.verdict == "MISMATCH"
    assert [(m.book, m.ledger, m.left, m.right, m.difference) for m in report.mismatches] == [
        ("escrow", 1, "held", "escrow_balance", 5)
    ]
    assert "held 100 != escrow_balance 95" in report.mismatches[0].describe()


def test_fees_not_equal_to_fee_balance_is_a_mismatch():
    found = escrow_mismatches({3: dict.fromkeys(ALL_ESCROW_FIELDS, 0) | {"fees": 7, "fee_balance": 9}})
    assert [(m.ledger, m.left, m.right, m.difference) for m in found] == [(3, "fees", "fee_balance", -2)]


def test_released_refunded_and_trade_counts_are_summed_but_not_judged():
    report = audit([shard(0, {}, escrow={1: {"released": 9, "refunded": 4, "trades_closed": 2}})],
                   expected_shards=[0])
    assert report.exit_code == EXIT_OK
    assert (report.escrow[1]["released"], report.escrow[1]["refunded"], report.escrow[1]["trades_closed"]) == (9, 4, 2)


def test_escrow_and_ledger_mismatches_are_both_reported():
    report = audit([shard(0, {1: {"debits_posted": 5}}, escrow={1: {"fees": 1}})], expected_shards=[0])
    assert [(m.book, m.left) for m in report.mismatches] == [("ledger", "debits_posted"), ("escrow", "fees")]
    assert report.exit_code == EXIT_MISMATCH


def test_escrow_mismatch_while_transactions_are_in_flight_is_not_quiescent():
    report = audit([shard(0, {}, prepared=1, escrow={1: {"held": 10}})], expected_shards=[0])
    assert report.exit_code == EXIT_IN_FLIGHT


def test_from_proto_reads_escrow_totals():
    message = admin_pb2.ShardLedgerTotals(shard_id=1, applied_index=4)
    entry = message.escrow.add(ledger=5, trades_shipped=3, trades_refunded=1)
    entry.held.hi, entry.held.lo = 2, 1
    entry.escrow_balance.hi, entry.escrow_balance.lo = 2, 1
    entry.fees.lo, entry.fee_balance.lo, entry.released.lo, entry.refunded.lo = 6, 6, 60, 8
    t = shard_totals_from_proto(message, "addr")
    assert t.escrow[5]["held"] == (2 << 64) + 1 == t.escrow[5]["escrow_balance"]
    assert (t.escrow[5]["fees"], t.escrow[5]["fee_balance"], t.escrow[5]["released"], t.escrow[5]["refunded"]) == (
        6, 6, 60, 8)
    assert (t.escrow[5]["trades_shipped"], t.escrow[5]["trades_refunded"], t.escrow[5]["trades_paid"]) == (3, 1, 0)


def test_from_proto_without_trades_has_an_empty_escrow_book():
    assert shard_totals_from_proto(admin_pb2.ShardLedgerTotals(shard_id=0), "addr").escrow == {}


def test_json_has_the_escrow_book_and_the_book_of_each_mismatch():
    data = audit([shard(0, {}, escrow={2: {"held": BIG, "escrow_balance": 1, "trades_paid": 3}})], [0]).to_dict()
    assert data["escrow"][0]["ledger"] == 2
    assert data["escrow"][0]["held"] == str(BIG) and data["escrow"][0]["trades_paid"] == 3
    assert data["mismatches"] == [{"book": "escrow", "ledger": 2, "left": "held", "right": "escrow_balance",
                                   "left_total": str(BIG), "right_total": "1", "difference": str(BIG - 1)}]


# ---------------------------------------------------------------------- the command, against fake nodes


class FakeNode(admin_pb2_grpc.AdminServicer):
    def __init__(self):
        self.totals = admin_pb2.LedgerTotals()
        self.shard_map = admin_pb2.ShardMap(version=1, slot_count=8)
        self.calls = 0

    def GetShardMap(self, request, context):
        return self.shard_map

    def GetLedgerTotals(self, request, context):
        self.calls += 1
        return self.totals


@pytest.fixture
def fake_nodes():
    nodes, servers = [], []
    for _ in range(2):
        node = FakeNode()
        server = grpc.server(ThreadPoolExecutor(max_workers=4))
        admin_pb2_grpc.add_AdminServicer_to_server(node, server)
        node.address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
        server.start()
        nodes.append(node)
        servers.append(server)
    shard_map = admin_pb2.ShardMap(version=1, slot_count=8)
    for s in range(len(nodes)):
        entry = shard_map.shards.add(shard_id=s)
        entry.slots.add(start=4 * s, end=4 * s + 4)
        for i, n in enumerate(nodes):
            entry.replicas.add(node=f"n{i}", dc=f"dc{i + 1}", address=n.address)
    for node in nodes:
        node.shard_map = shard_map
    yield nodes
    for server in servers:
        server.stop(None)


def _lead(node: FakeNode, shard_id: int, debits: int, credits: int, prepared: int = 0) -> None:
    node.totals = admin_pb2.LedgerTotals()
    s = node.totals.shards.add(shard_id=shard_id, prepared_txns=prepared, applied_index=3)
    entry = s.ledgers.add(ledger=1)
    entry.debits_posted.lo, entry.credits_posted.lo = debits, credits


def _escrow(node: FakeNode, ledger: int, **values: int) -> None:
    """Add an EscrowTotal to the (single) shard the node leads."""
    entry = node.totals.shards[0].escrow.add(ledger=ledger)
    for name, value in values.items():
        target = getattr(entry, name)
        if isinstance(target, int):
            setattr(entry, name, value)
        else:
            target.hi, target.lo = value >> 64, value & ((1 << 64) - 1)


def run(*args):
    result = CliRunner().invoke(app, list(args))
    assert "Traceback" not in result.output, result.output
    return result


def test_audit_command_balanced(fake_nodes):
    a, b = fake_nodes
    _lead(a, 0, 100, 30)
    _lead(b, 1, 30, 100)
    r = run("audit", "--endpoints", a.address, "-o", "json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["verdict"] == "balanced" and data["ledgers"][0]["debits_posted"] == "130"
    r = run("audit", "--endpoints", a.address)
    assert r.exit_code == 0 and "balanced" in r.output


def test_audit_command_mismatch_exits_1_and_shows_the_difference(fake_nodes):
    a, b = fake_nodes
    _lead(a, 0, 100, 30)
    _lead(b, 1, 30, 99)
    r = run("audit", "--endpoints", a.address)
    assert r.exit_code == 1
    assert "MISMATCH" in r.output and "difference +1" in r.output


def test_audit_command_waits_for_quiescence_then_exits_3(fake_nodes):
    a, b = fake_nodes
    _lead(a, 0, 100, 30, prepared=1)
    _lead(b, 1, 30, 100)
    r = run("audit", "--endpoints", a.address, "--wait-s", "0.6")
    assert r.exit_code == 3
    assert "not quiescent" in r.output and "shard 0: 1" in r.output
    assert a.calls >= 2  # it re-polled


def test_audit_command_without_a_leader_for_a_shard_exits_2(fake_nodes):
    a, _ = fake_nodes
    _lead(a, 0, 1, 1)
    r = run("audit", "--endpoints", a.address, "--wait-s", "0", "-o", "json")
    assert r.exit_code == 2 and json.loads(r.stdout)["missing_shards"] == [1]


def test_audit_command_escrow_mismatch_exits_1_and_shows_it_in_the_table(fake_nodes):
    a, b = fake_nodes
    _lead(a, 0, 100, 100)
    _lead(b, 1, 5, 5)
    _escrow(a, 1, held=60, escrow_balance=50, fees=2, fee_balance=2)
    _escrow(b, 1, held=0, escrow_balance=5, fees=1, fee_balance=1)
    r = run("audit", "--endpoints", a.address)
    assert r.exit_code == 1, r.output
    assert "ESCROW BALANCE" in r.output and "held - escrow_balance = +5" in r.output
    assert "escrow book, ledger 1: held 60 != escrow_balance 55 (difference +5)" in r.output


def test_audit_command_escrow_mismatch_in_json(fake_nodes):
    a, b = fake_nodes
    _lead(a, 0, 100, 100)
    _lead(b, 1, 5, 5)
    _escrow(a, 1, held=10, escrow_balance=10, fees=3, fee_balance=1)
    r = run("audit", "--endpoints", a.address, "-o", "json")
    assert r.exit_code == 1
    data = json.loads(r.stdout)
    assert data["verdict"] == "MISMATCH" and data["balanced"] is False
    assert [(m["book"], m["left"], m["difference"]) for m in data["mismatches"]] == [("escrow", "fees", "2")]
    assert data["escrow"][0]["fee_balance"] == "1"


def test_audit_command_matching_escrow_book_is_balanced(fake_nodes):
    a, b = fake_nodes
    _lead(a, 0, 100, 30)
    _lead(b, 1, 30, 100)
    _escrow(a, 1, held=40, escrow_balance=30, fees=1, fee_balance=0)
    _escrow(b, 1, held=0, escrow_balance=10, fees=0, fee_balance=1)
    r = run("audit", "--endpoints", a.address)
    assert r.exit_code == 0, r.output
    assert "held == escrow balance and fees == fee balance" in r.output


def test_audit_command_without_trades_shows_no_escrow_table(fake_nodes):
    a, b = fake_nodes
    _lead(a, 0, 100, 30)
    _lead(b, 1, 30, 100)
    r = run("audit", "--endpoints", a.address)
    assert r.exit_code == 0 and "ESCROW BALANCE" not in r.output


def test_trade_totals_sums_the_escrow_book_over_shards(fake_nodes):
    a, b = fake_nodes
    _lead(a, 0, 0, 0)
    _lead(b, 1, 0, 0)
    _escrow(a, 1, held=BIG, fees=2, released=98, refunded=5, escrow_balance=BIG, fee_balance=2, trades_paid=1,
            trades_settled=1)
    _escrow(b, 1, held=10, escrow_balance=10, trades_shipped=1, trades_refunded=2)
    _escrow(b, 2, held=7, escrow_balance=7, trades_disputed=1)
    r = run("trade", "totals", "--endpoints", a.address, "-o", "json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["complete"] is True
    one, two = data["ledgers"]
    assert (one["ledger"], one["held"], one["fees"], one["released"], one["refunded"]) == (1, str(BIG + 10), "2",
                                                                                           "98", "5")
    assert (one["escrow_balance"], one["fee_balance"]) == (str(BIG + 10), "2")
    assert [one[f"trades_{s}"] for s in ("paid", "shipped", "disputed", "settled", "refunded", "closed")] == [
        1, 1, 0, 1, 2, 0]
    assert (two["ledger"], two["held"], two["trades_disputed"]) == (2, "7", 1)


def test_trade_totals_table(fake_nodes):
    a, b = fake_nodes
    _lead(a, 0, 0, 0)
    _lead(b, 1, 0, 0)
    _escrow(a, 4, held=123, escrow_balance=123, fees=9, fee_balance=9, trades_closed=6)
    r = run("trade", "totals", "--endpoints", a.address)
    assert r.exit_code == 0, r.output
    header, row = r.output.splitlines()[:2]
    assert header.split() == ["LEDGER", "HELD", "FEES", "RELEASED", "REFUNDED", "ESCROW", "BALANCE", "FEE",
                              "BALANCE", "PAID", "SHIPPED", "DISPUTED", "SETTLED", "REFUNDED", "CLOSED"]
    assert row.split() == ["4", "123", "9", "0", "0", "123", "9", "0", "0", "0", "0", "0", "6"]


def test_trade_totals_without_a_leader_for_a_shard_exits_2(fake_nodes):
    a, _ = fake_nodes
    _lead(a, 0, 0, 0)
    _escrow(a, 1, held=5, escrow_balance=5)
    r = run("trade", "totals", "--endpoints", a.address, "-o", "json")
    assert r.exit_code == 2
    data = json.loads(r.stdout)
    assert data["missing_shards"] == [1] and data["ledgers"][0]["held"] == "5"


# ---------------------------------------------------------------------- the node side


class FakeHost:
    def __init__(self, leader: bool, totals: dict, barrier_error: Exception | None = None):
        self.leader, self.totals, self.barrier_error = leader, totals, barrier_error

    def is_leader(self):
        return self.leader

    def read_barrier(self):
        from concurrent.futures import Future

        f: Future = Future()
        if self.barrier_error is not None:
            f.set_exception(self.barrier_error)
        else:
            f.set_result(None)
        return f

    def audit_totals(self):
        return self.totals


class FakeNodeView:
    def __init__(self, hosts: dict):
        from tidebank.node.api.routing import ShardMap

        self.hosts = hosts
        self.shard_map = ShardMap(1, 8, {0: ((0, 4),), 1: ((4, 6),), 2: ((6, 8),)})

    def local_shard(self, shard_id):
        return self.hosts.get(shard_id)

    def leader_address(self, shard_id):
        return None


class Context:
    def time_remaining(self):
        return 5.0


def test_admin_service_reports_the_shards_it_leads_with_u128_totals():
    from tidebank.node.api.admin_service import AdminService
    from tidebank.node.batcher import NotAppliedError

    totals = {"ledgers": {4: {"debits_posted": BIG, "credits_posted": BIG, "reserved_debits": 3}},
              "prepared_txns": 2, "applied_index": 17}
    node = FakeNodeView({0: FakeHost(True, totals), 1: FakeHost(False, {}),
                         2: FakeHost(True, {}, barrier_error=NotAppliedError("lost it"))})
    admin = AdminService(lambda: None, lambda: None, node=node)
    response = admin.GetLedgerTotals(admin_pb2.GetLedgerTotalsRequest(), Context())
    assert [s.shard_id for s in response.shards] == [0]  # 1 is followed, 2 lost leadership meanwhile
    t = shard_totals_from_proto(response.shards[0], "here")
    assert (t.prepared_txns, t.applied_index) == (2, 17)
    assert t.ledgers[4]["debits_posted"] == BIG and t.ledgers[4]["reserved_debits"] == 3
    assert t.ledgers[4]["remote_credits_pending"] == 0

    from tidebank.node.api.errors import RequestError

    with pytest.raises(RequestError) as info:  # asked explicitly for a shard it does not lead
        admin.GetLedgerTotals(admin_pb2.GetLedgerTotalsRequest(shard_ids=[1]), Context())
    assert info.value.status.code == grpc.StatusCode.UNAVAILABLE.value[0]
    with pytest.raises(RequestError):
        admin.GetLedgerTotals(admin_pb2.GetLedgerTotalsRequest(shard_ids=[9]), Context())


# ------------------------------------------------------------ the clearing book


def clearing_shard(shard_id: int, book: dict) -> ShardTotals:
    return ShardTotals(shard_id, "n", 10, 0, {}, {},
                       {ledger: dict.fromkeys(CLEARING_FIELDS, 0) | v for ledger, v in book.items()})


def test_clearing_book_with_positions_summing_to_zero_and_caps_held_passes():
    report = audit([clearing_shard(0, {1: {"net": 70, "allowance": 100, "pool": 50, "cap": 200}}),
                    clearing_shard(1, {1: {"net": -70, "allowance": 50}})], expected_shards=[0, 1])
    assert report.exit_code == EXIT_OK
    assert report.clearing[1]["allowance"] == 150


def test_positions_not_summing_to_zero_is_a_clearing_mismatch():
    report = audit([clearing_shard(0, {1: {"net": 5, "allowance": 5, "cap": 5}})], expected_shards=[0])
    assert report.exit_code == EXIT_MISMATCH
    assert [(m.book, m.left) for m in report.mismatches] == [("clearing", "positions")]


def test_allowances_beyond_the_caps_is_a_clearing_mismatch_even_while_moving():
    report = audit([clearing_shard(0, {1: {"allowance": 150, "pool": 60, "moving": 10, "cap": 200}})],
                   expected_shards=[0])
    assert [(m.book, m.left) for m in report.mismatches] == [("clearing", "allowances+pools")]


def test_allowance_short_of_the_cap_while_a_move_is_in_flight_is_not_quiescent():
    report = audit([clearing_shard(0, {1: {"allowance": 150, "moving": 50, "cap": 200}})], expected_shards=[0])
    assert report.exit_code == EXIT_IN_FLIGHT


def test_allowance_short_of_the_cap_with_nothing_moving_is_a_mismatch():
    report = audit([clearing_shard(0, {1: {"allowance": 150, "cap": 200}})], expected_shards=[0])
    assert report.exit_code == EXIT_MISMATCH


def test_hub_account_not_back_at_zero_is_a_clearing_mismatch():
    report = audit([clearing_shard(0, {1: {"hub_balance": 3}})], expected_shards=[0])
    assert [(m.book, m.left) for m in report.mismatches] == [("clearing", "hub_balance")]


def test_from_proto_reads_the_clearing_book_as_decimal_strings():
    message = admin_pb2.ShardLedgerTotals(shard_id=2, clearing=[admin_pb2.ClearingTotal(
        ledger=4, net="-12", allowance=str(BIG), pool="3", moving="0", cap="9", hub_balance="0", hub_pending="")])
    totals = shard_totals_from_proto(message, "n")
    assert totals.clearing[4]["net"] == -12 and totals.clearing[4]["allowance"] == BIG

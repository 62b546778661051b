"""The clearing coordinator over several real shards (one LMDB state machine each, applied in-process, no Raft):
aborting a window across shards, the ledger's participant limit, paged participant lists, allowance refills under
the cap, and the schedule on cluster time."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest

from tests.unit.test_clearing_rules import Shard
from tidebank.node.api.routing import ShardMap
from tidebank.node.ledger import clearing as clearing_rules
from tidebank.node.ledger.clearing import (
    WINDOW_ABORTED,
    WINDOW_CLOSED,
    WINDOW_OPEN,
    settlement_transfer_id,
)
from tidebank.node.ledger.clearing_records import (
    CMD_BEGIN_ABORT,
    CMD_BEGIN_SETTLE,
    CMD_GIVE,
    CMD_SETTLE_FAILED,
    CMD_TAKE,
    ITEM_ABORTED,
    ClearingCommand,
    ClearingItem,
    Participant,
    plain,
)
from tidebank.node.ledger.results import ClearingItemResult, ParticipantResult, WindowResult
from tidebank.node.txn.clearing_coordinator import REFILL_SHARE, ClearingCoordinator, ClearingTimers
from tidebank.v1 import ledger_pb2, types_pb2

IR, PR, WR = ClearingItemResult, ParticipantResult, WindowResult
LEDGER = 3
S = 1_000_000_000
SHARDS = 2


class FakeExecutor:
    """Runs an operation on a shard's state machine at once (retries, leaders and Raft left out)."""

    def __init__(self, shards: dict[int, Shard]) -> None:
        self.shards = shards
        self.locks = {s: threading.Lock() for s in shards}
        self.pool = ThreadPoolExecutor(max_workers=16)

    def run(self, shard_id, operation, deadline):
        with self.locks[shard_id]:
            return self.shards[shard_id]._apply(operation)

    def run_async(self, shard_id, operation, deadline):
        return self.pool.submit(self.run, shard_id, operation, deadline)


class FakeLedger:
    """LookupTransfers of the settlement transfers that exist (the ledger itself is not part of this harness)."""

    def __init__(self) -> None:
        self.existing: set[int] = set()

    def LookupTransfers(self, request, timeout=None):  # noqa: N802
        found = [(i.hi << 64) | i.lo for i in request.ids]
        return ledger_pb2.LookupTransfersResponse(transfers=[
            types_pb2.Transfer(id=types_pb2.U128(hi=t >> 64, lo=t & (2**64 - 1))) for t in found
            if t in self.existing])


class Harness(ClearingCoordinator):
    """A coordinator whose reads go straight to the shards' state machines; `on_query` sees each read first."""

    def __init__(self, shards: dict[int, Shard]) -> None:
        per = 4096 // len(shards)
        smap = ShardMap(1, 4096, {s: [(s * per, 4096 if s == len(shards) - 1 else (s + 1) * per)] for s in shards})
        super().__init__(SimpleNamespace(shard_map=smap), FakeExecutor(shards))
        self.shards = shards
        self.ledger = FakeLedger()
        self.on_query = None

    def query(self, shard_id, name, args, deadline, *, linearizable=True):
        if self.on_query is not None:
            self.on_query(shard_id, name, args)
        with self.executor.locks[shard_id]:
            return plain(self.shards[shard_id].read(name, *args))

    def _ledger_stub(self):
        return self.ledger

    # helpers of the tests
    def deadline(self) -> float:
        return time.monotonic() + 10

    def position(self, pid: int) -> list[tuple[int, int, int]]:
        """(allowance, net, pool) of the participant on each shard."""
        return [self.shards[s].position(pid) for s in sorted(self.shards)]

    def ids_on(self, shard_id: int, count: int, start: int = 1) -> list[int]:
        out, candidate = [], start
        while len(out) < count:
            if self.home_of(candidate) == shard_id:
                out.append(candidate)
            candidate += 1
        return out


@pytest.fixture
def harness(tmp_path):
    shards = {s: Shard(tmp_path / f"s{s}") for s in range(SHARDS)}
    h = Harness(shards)
    yield h
    h.executor.pool.shutdown(wait=True)
    for shard in shards.values():
        shard.env.close()


def participant(pid: int, cap: int = 1_000) -> Participant:
    return Participant(pid, LEDGER, 1, f"bank {pid}", pid + 10**6, cap)


def register(h: Harness, *pids: int, cap: int = 1_000) -> list[int]:
    return h.register([participant(p, cap) for p in pids], h.deadline())


BANK_A, BANK_B, BANK_C = 11, 12, 13


@pytest.fixture
def banks(harness):
    assert register(harness, BANK_A, BANK_B, BANK_C) == [PR.ok] * 3
    return harness


def items_on_every_shard(h: Harness, amount: int = 100) -> list[ClearingItem]:
    """One item A -> B and one B -> C on each shard."""
    out = []
    for s in sorted(h.shards):
        a, b = h.ids_on(s, 2, start=1000 * (s + 1))
        out += [ClearingItem(a, BANK_A, BANK_B, amount, LEDGER), ClearingItem(b, BANK_B, BANK_C, amount // 2, LEDGER)]
    assert h.submit_items(out, h.deadline()) == [IR.ok] * len(out)
    return out


def closed_window(h: Harness) -> int:
    code, number = h.close(LEDGER, 0, h.deadline())
    assert code == WR.ok
    return number


# ------------------------------------------------------------ aborting across shards


def test_abort_gives_the_windows_positions_back_on_every_shard(banks):
    before = {p: banks.position(p) for p in (BANK_A, BANK_B, BANK_C)}
    items_on_every_shard(banks)
    number = closed_window(banks)
    assert banks.abort(LEDGER, number, banks.deadline()) == (WR.ok, 0)
    assert {p: banks.position(p) for p in (BANK_A, BANK_B, BANK_C)} == before


def test_abort_marks_the_windows_items_aborted_on_every_shard(banks):
    items = items_on_every_shard(banks)
    number = closed_window(banks)
    banks.abort(LEDGER, number, banks.deadline())
    found = banks.lookup_items([i.id for i in items], True, banks.deadline())
    assert [i.status for i in found] == [ITEM_ABORTED] * len(items)


def test_aborted_window_is_recorded_aborted_with_zero_nets(banks):
    items_on_every_shard(banks)
    number = closed_window(banks)
    banks.abort(LEDGER, number, banks.deadline())
    _, record = banks.window(LEDGER, number, banks.deadline())
    assert record["state"] == WINDOW_ABORTED
    assert all(n[1] == n[2] == 0 for n in banks.nets(LEDGER, number, banks.deadline()))


def test_abort_again_answers_already_aborted(banks):
    items_on_every_shard(banks)
    number = closed_window(banks)
    banks.abort(LEDGER, number, banks.deadline())
    assert banks.abort(LEDGER, number, banks.deadline()) == (WR.window_already_aborted, 0)


def test_settling_an_aborted_window_answers_already_aborted(banks):
    items_on_every_shard(banks)
    number = closed_window(banks)
    banks.abort(LEDGER, number, banks.deadline())
    assert banks.settle(LEDGER, number, banks.deadline())[0] == WR.window_already_aborted


def test_abort_of_the_open_window_is_refused(banks):
    items_on_every_shard(banks)
    assert banks.abort(LEDGER, 1, banks.deadline())[0] == WR.window_not_closed
    assert banks.window(LEDGER, 1, banks.deadline())[1]["state"] == WINDOW_OPEN


def test_abort_is_refused_when_an_earlier_settlement_chain_committed(banks):
    items_on_every_shard(banks)
    number = closed_window(banks)
    home = banks.home_of(LEDGER)
    # Attempt 1 failed on one runner while another runner of it moved the money (a lease taken over).
    banks.run_one(home, ClearingCommand(CMD_BEGIN_SETTLE, (LEDGER, number)), banks.deadline())
    banks.run_one(home, ClearingCommand(CMD_SETTLE_FAILED, (LEDGER, number, 1, "short")), banks.deadline())
    banks.ledger.existing.add(settlement_transfer_id(LEDGER, number, 1, BANK_A))
    positions = {p: banks.position(p) for p in (BANK_A, BANK_B, BANK_C)}
    assert banks.abort(LEDGER, number, banks.deadline()) == (WR.window_already_settled, 1)
    record = banks.window(LEDGER, number, banks.deadline())[1]
    assert record["state"] == WINDOW_CLOSED and "aborting" not in record
    assert {p: banks.position(p) for p in (BANK_A, BANK_B, BANK_C)} == positions


def test_abort_cut_short_is_finished_by_the_periodic_pass(banks):
    items_on_every_shard(banks)
    number = closed_window(banks)
    home = banks.home_of(LEDGER)
    banks.run_one(home, ClearingCommand(CMD_BEGIN_ABORT, (LEDGER, number)), banks.deadline())  # then a crash
    record = banks.window(LEDGER, number, banks.deadline())[1]
    banks._resume(LEDGER, number, record, 0, 0.0, banks.deadline())
    assert banks.window(LEDGER, number, banks.deadline())[1]["state"] == WINDOW_ABORTED


# ------------------------------------------------------------ the ledger's participant limit


def test_registering_beyond_the_ledgers_limit_is_refused_per_item(harness, monkeypatch):
    monkeypatch.setattr(clearing_rules, "PARTICIPANTS_PER_LEDGER_MAX", 2)
    assert register(harness, 21, 22, 23) == [PR.ok, PR.ok, PR.participants_limit_reached]


def test_a_participant_refused_for_the_limit_is_stored_nowhere(harness, monkeypatch):
    monkeypatch.setattr(clearing_rules, "PARTICIPANTS_PER_LEDGER_MAX", 2)
    register(harness, 21, 22, 23)
    assert all(s.read("lookup_participants", [23]) == [] for s in harness.shards.values())
    assert harness.position(23) == [(0, 0, 0)] * SHARDS


def test_registering_an_existing_participant_again_at_the_limit_is_exists(harness, monkeypatch):
    monkeypatch.setattr(clearing_rules, "PARTICIPANTS_PER_LEDGER_MAX", 2)
    register(harness, 21, 22)
    assert register(harness, 22) == [PR.exists]


def test_a_participant_of_another_ledger_does_not_use_up_this_ledgers_limit(harness, monkeypatch):
    monkeypatch.setattr(clearing_rules, "PARTICIPANTS_PER_LEDGER_MAX", 2)
    harness.register([Participant(21, LEDGER + 1, 1, "elsewhere", 99, 10)], harness.deadline())
    assert harness.register([Participant(21, LEDGER, 1, "elsewhere", 99, 10)], harness.deadline()) == \
        [PR.exists_with_different_ledger]
    assert register(harness, 31, 32) == [PR.ok, PR.ok]


# ------------------------------------------------------------ participant pages


def test_list_participants_pages_by_id_over_every_shard(harness):
    pids = [41, 42, 43, 44, 45]
    register(harness, *pids)
    first = harness.list_participants(LEDGER, 0, 2, harness.deadline())
    second = harness.list_participants(LEDGER, first[-1].id, 2, harness.deadline())
    third = harness.list_participants(LEDGER, second[-1].id, 2, harness.deadline())
    assert [[p.id for p in page] for page in (first, second, third)] == [[41, 42], [43, 44], [45]]


def test_list_participants_lists_each_participant_once(harness):
    register(harness, 41, 42, 43)
    assert [p.id for p in harness.list_participants(LEDGER, 0, 100, harness.deadline())] == [41, 42, 43]


# ------------------------------------------------------------ allowance refills


def test_a_refill_from_a_node_that_never_saw_the_cap_still_moves_a_spare(harness):
    register(harness, BANK_A, cap=8_000)
    fresh = Harness(harness.shards)  # another node: no cap cached
    try:
        dest = 1 - fresh.home_of(BANK_A)
        before = fresh.position(BANK_A)[dest][0]
        fresh.refill(BANK_A, dest, 10, fresh.deadline())
        assert fresh.position(BANK_A)[dest][0] - before == 10 + 8_000 // (SHARDS * REFILL_SHARE)
    finally:
        fresh.executor.pool.shutdown(wait=True)


def _all_allowance_in_flight(h: Harness, pid: int, dest: int) -> int:
    """Every bit of the participant's cap taken (TAKE) toward `dest`, not given yet: a move of another request,
    on another node, between its TAKE and its GIVE. The move's id."""
    move_id = 0xABC
    total = 0
    for s in sorted(h.shards):
        allowance, net, pool = h.shards[s].position(pid)
        if pool:
            total += h.shards[s].one(CMD_TAKE, move_id + s, pid, pool, dest, True, False)
        if allowance - net:
            total += h.shards[s].one(CMD_TAKE, move_id + 10 + s, pid, allowance - net, dest, False, False)
    return total


def test_an_item_is_not_refused_while_the_cap_it_fits_under_is_in_flight(banks):
    dest = 0
    moving = _all_allowance_in_flight(banks, BANK_A, dest)
    (item_id,) = banks.ids_on(dest, 1, start=5000)
    landed = []

    def give_it_once_the_cap_is_read(shard_id, name, args):  # the other node's GIVE lands meanwhile
        if name == "positions" and not landed:
            landed.append(banks.shards[dest].one(CMD_GIVE, 0xFFFF, BANK_A, moving, False))

    banks.on_query = give_it_once_the_cap_is_read
    assert banks.submit_items([ClearingItem(item_id, BANK_A, BANK_B, 100, LEDGER)], banks.deadline()) == [IR.ok]


def test_an_item_beyond_what_the_cap_has_left_is_refused(banks):
    items_on_every_shard(banks, amount=400)  # A's position: 800 of its 1,000
    (item_id,) = banks.ids_on(0, 1, start=7000)
    assert banks.submit_items([ClearingItem(item_id, BANK_A, BANK_B, 201, LEDGER)], banks.deadline()) == \
        [IR.exceeds_net_debit_cap]


def test_an_item_that_fits_the_cap_exactly_is_accepted_wherever_the_allowance_lies(banks):
    items_on_every_shard(banks, amount=400)
    (item_id,) = banks.ids_on(0, 1, start=7000)
    assert banks.submit_items([ClearingItem(item_id, BANK_A, BANK_B, 200, LEDGER)], banks.deadline()) == [IR.ok]


# ------------------------------------------------------------ the schedule, on cluster time


class Host:
    """What the clearing pass reads of the shard it leads: its clearing reads and its cluster time."""

    def __init__(self, shard: Shard) -> None:
        self.shard = shard

    def clearing_read(self, name, args):
        return self.shard.read(name, *args)

    def cluster_time_ns(self) -> int:
        return self.shard.ts


def test_the_schedule_closes_a_window_due_in_cluster_time_though_this_nodes_clock_is_behind(banks):
    home = banks.home_of(LEDGER)
    opened = banks.window(LEDGER, 1, banks.deadline())[1]["opened_at"]
    banks.shards[home].ts = opened + 61 * S  # the shard applied entries up to 61 s after the window opened
    timers = ClearingTimers(None, banks, cycle_s=60.0, clock_ns=lambda: opened + 5 * S, start=False)
    timers.pass_once(home, Host(banks.shards[home]))
    assert banks.window(LEDGER, 1, banks.deadline())[1]["state"] == WINDOW_CLOSED


def test_the_schedule_leaves_a_window_open_until_its_cycle_ran_out(banks):
    home = banks.home_of(LEDGER)
    opened = banks.window(LEDGER, 1, banks.deadline())[1]["opened_at"]
    timers = ClearingTimers(None, banks, cycle_s=60.0, clock_ns=lambda: opened + 59 * S, start=False)
    timers.pass_once(home, Host(banks.shards[home]))
    assert banks.window(LEDGER, 1, banks.deadline())[1]["state"] == WINDOW_OPEN


def test_a_scheduled_close_asked_for_early_is_refused_at_the_entrys_cluster_time(banks):
    # This node's clock runs ahead, but the shard stamps the close with its own cluster time: not due yet.
    opened = banks.window(LEDGER, 1, banks.deadline())[1]["opened_at"]
    banks.shards[banks.home_of(LEDGER)].ts = opened + 10 * S
    assert banks.close(LEDGER, 1, banks.deadline(), cycle_s=60.0)[0] != WR.ok
    assert banks.window(LEDGER, 1, banks.deadline())[1]["state"] == WINDOW_OPEN

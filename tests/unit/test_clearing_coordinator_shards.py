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
from tidebank.node.api import convert
from tidebank.node.api.routing import ShardMap
from tidebank.node.ledger import clearing as clearing_rules
from tidebank.node.ledger.clearing import (
    SETTLE_LEASE_S,
    WINDOW_ABORTED,
    WINDOW_CLOSED,
    WINDOW_OPEN,
    WINDOW_SETTLED,
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
from tidebank.node.ledger.operations import OP_CREATE_ACCOUNTS, OP_CREATE_TRANSFERS, Operation
from tidebank.node.ledger.records import Account, AccountFlags, Transfer
from tidebank.node.ledger.results import ClearingItemResult, ParticipantResult, WindowResult
from tidebank.node.outcomes import OutcomeUnknownError
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
    """This node's Ledger service over one real ledger state machine (all accounts and transfer ids on it: the
    ledger's own sharding is not part of this harness). `existing` adds ids LookupTransfers finds regardless."""

    def __init__(self, shard: Shard) -> None:
        self.shard = shard
        self.existing: set[int] = set()
        self.lock = threading.Lock()

    def CreateAccounts(self, request, timeout=None):  # noqa: N802
        with self.lock:
            codes = self.shard._apply(Operation(OP_CREATE_ACCOUNTS, [convert.account_from_pb(a)
                                                                     for a in request.accounts]))
        return ledger_pb2.CreateAccountsResponse(results=codes)

    def CreateTransfers(self, request, timeout=None):  # noqa: N802
        with self.lock:
            codes = self.shard._apply(Operation(OP_CREATE_TRANSFERS, [convert.transfer_from_pb(t)
                                                                      for t in request.transfers]))
        return ledger_pb2.CreateTransfersResponse(results=codes)

    def LookupAccounts(self, request, timeout=None):  # noqa: N802
        with self.lock, self.shard.env.begin() as txn:
            found = self.shard.sm.lookup_accounts(txn, [convert.u128_from_pb(i) for i in request.ids])
        response = ledger_pb2.LookupAccountsResponse()
        for a in found:
            convert.account_to_pb(a, response.accounts.add())
        return response

    def LookupTransfers(self, request, timeout=None):  # noqa: N802
        ids = [convert.u128_from_pb(i) for i in request.ids]
        with self.lock, self.shard.env.begin() as txn:
            found = {t.id for t in self.shard.sm.lookup_transfers(txn, ids)}
        return ledger_pb2.LookupTransfersResponse(transfers=[
            types_pb2.Transfer(id=types_pb2.U128(hi=t >> 64, lo=t & (2**64 - 1))) for t in ids
            if t in found or t in self.existing])

    def balance(self, account_id: int) -> int:
        """credits - debits posted."""
        with self.shard.env.begin() as txn:
            (a,) = self.shard.sm.lookup_accounts(txn, [account_id])
        return a.credits_posted - a.debits_posted


class Harness(ClearingCoordinator):
    """A coordinator whose reads go straight to the shards' state machines; `on_query` sees each read first."""

    def __init__(self, shards: dict[int, Shard], ledger_shard: Shard) -> None:
        per = 4096 // len(shards)
        smap = ShardMap(1, 4096, {s: [(s * per, 4096 if s == len(shards) - 1 else (s + 1) * per)] for s in shards})
        super().__init__(SimpleNamespace(shard_map=smap), FakeExecutor(shards))
        self.shards = shards
        self.ledger = FakeLedger(ledger_shard)
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
    ledger_shard = Shard(tmp_path / "ledger")
    h = Harness(shards, ledger_shard)
    yield h
    h.executor.pool.shutdown(wait=True)
    for shard in [*shards.values(), ledger_shard]:
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
    fresh = Harness(harness.shards, harness.ledger.shard)  # another node: no cap cached
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


# ------------------------------------------------------------ a settlement attempt taken over: never settled twice

FUNDING = 0x5EED  # an account with no balance rule: where the settlement accounts' money comes from
SINK = 0x5177  # where a debtor's money goes for a moment (a payment out that is reversed)


def _transfer(h: Harness, tid: int, debit: int, credit: int, amount: int) -> str:
    request = ledger_pb2.CreateTransfersRequest()
    convert.transfer_to_pb(Transfer(id=tid, debit_account_id=debit, credit_account_id=credit, amount=amount,
                                    ledger=LEDGER, code=1), request.transfers.add())
    return types_pb2.CreateTransferResult.Name(h.ledger.CreateTransfers(request).results[0])


@pytest.fixture
def funded(banks):
    """A closed window whose nets are A +200 (pays), B -100, C -100 (paid); A's settlement account holds 1,000."""
    request = ledger_pb2.CreateAccountsRequest()
    for account_id, flags in [(FUNDING, 0), (SINK, 0)] + [
            (p + 10**6, int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)) for p in (BANK_A, BANK_B, BANK_C)]:
        convert.account_to_pb(Account(id=account_id, ledger=LEDGER, code=1, flags=flags), request.accounts.add())
    banks.ledger.CreateAccounts(request)
    assert _transfer(banks, 1, FUNDING, BANK_A + 10**6, 1_000) == "CREATE_TRANSFER_RESULT_CREATED"
    items_on_every_shard(banks)
    banks.number = closed_window(banks)
    return banks


def _balances(h: Harness) -> dict[int, int]:
    return {p: h.ledger.balance(p + 10**6) for p in (BANK_A, BANK_B, BANK_C)}


SETTLED_ONCE = {BANK_A: 1_000 - 200, BANK_B: 100, BANK_C: 100}


def _runner_taken_over_after_another_failed_the_attempt(h: Harness):
    """Runner A begins attempt 1 and computes its chain (A's funds are there); it stalls past the lease. Runner B
    takes attempt 1 over while A's money is out for a moment, finds the shortfall and fails the attempt; the money
    comes back. -> A's lease token and chain."""
    home = h.home_of(LEDGER)
    code, attempt, token_a = h.run_one(home, ClearingCommand(CMD_BEGIN_SETTLE, (LEDGER, h.number, 0)), h.deadline())
    assert (code, attempt) == (WR.ok, 1)
    chain = h._chain(LEDGER, h.number, attempt, h.nets(LEDGER, h.number, h.deadline()), h.deadline())
    assert h._shortfalls(chain, h.deadline()) == []
    h.shards[home].ts += (SETTLE_LEASE_S + 1) * S
    _transfer(h, 2, BANK_A + 10**6, SINK, 1_000)
    assert h.settle(LEDGER, h.number, h.deadline())[0] == WR.insufficient_funds
    _transfer(h, 3, SINK, BANK_A + 10**6, 1_000)
    assert h.window(LEDGER, h.number, h.deadline())[1]["state"] == WINDOW_CLOSED
    return token_a, chain


def test_a_runner_taken_over_whose_chain_commits_after_the_attempt_failed_settles_the_window(funded):
    token_a, chain = _runner_taken_over_after_another_failed_the_attempt(funded)
    assert funded.finish_settle(LEDGER, funded.number, 1, funded.deadline(), token_a)[0] == WR.ok
    record = funded.window(LEDGER, funded.number, funded.deadline())[1]
    assert (record["state"], record["attempt"], record["transfers"]) == (WINDOW_SETTLED, 1, [t.id for t in chain])
    assert _balances(funded) == SETTLED_ONCE


def test_settling_again_after_a_late_chain_committed_moves_no_money_and_records_that_chain(funded):
    _, chain = _runner_taken_over_after_another_failed_the_attempt(funded)
    assert funded._move_money(LEDGER, chain, funded.deadline()) is None  # A's chain commits; A stops there
    assert funded.settle(LEDGER, funded.number, funded.deadline())[0] == WR.ok
    record = funded.window(LEDGER, funded.number, funded.deadline())[1]
    assert (record["state"], record["attempt"], record["transfers"]) == (WINDOW_SETTLED, 1, [t.id for t in chain])
    assert _balances(funded) == SETTLED_ONCE


def test_settling_again_after_a_late_chain_committed_gives_the_cap_back_once(funded):
    _, chain = _runner_taken_over_after_another_failed_the_attempt(funded)
    funded._move_money(LEDGER, chain, funded.deadline())
    funded.settle(LEDGER, funded.number, funded.deadline())
    assert all(net == 0 for p in (BANK_A, BANK_B, BANK_C) for _allowance, net, _pool in funded.position(p))


def test_a_new_attempt_fences_the_failed_chain_so_its_late_submission_fails(funded):
    token_a, chain = _runner_taken_over_after_another_failed_the_attempt(funded)
    assert funded.settle(LEDGER, funded.number, funded.deadline())[0] == WR.ok  # attempt 2, after the fence
    code, _, reason = funded.finish_settle(LEDGER, funded.number, 1, funded.deadline(), token_a)  # A wakes up
    assert (code, reason.split(": ")[-1]) == (WR.settlement_failed, "id_already_failed")
    record = funded.window(LEDGER, funded.number, funded.deadline())[1]
    assert (record["state"], record["attempt"]) == (WINDOW_SETTLED, 2)
    assert _balances(funded) == SETTLED_ONCE


def test_the_fence_burns_the_failed_chains_first_id_at_its_home(funded):
    _, chain = _runner_taken_over_after_another_failed_the_attempt(funded)
    assert funded.fence_ids(LEDGER, [chain[0].id], funded.deadline()) == {chain[0].id: False}
    assert _transfer(funded, chain[0].id, BANK_A + 10**6, SINK, 1) == "CREATE_TRANSFER_RESULT_ID_ALREADY_FAILED"


def test_an_unwind_after_a_late_chain_committed_settles_the_window_instead(funded):
    _, chain = _runner_taken_over_after_another_failed_the_attempt(funded)
    funded._move_money(LEDGER, chain, funded.deadline())
    assert funded.unwind(LEDGER, funded.number, BANK_A, funded.deadline()) == WR.window_already_settled
    assert funded.window(LEDGER, funded.number, funded.deadline())[1]["state"] == WINDOW_SETTLED
    assert _balances(funded) == SETTLED_ONCE


def test_a_fence_answered_busy_until_the_deadline_leaves_the_window_as_it_was(funded, monkeypatch):
    _runner_taken_over_after_another_failed_the_attempt(funded)
    busy = ledger_pb2.CreateTransfersResponse(results=[types_pb2.CreateTransferResult.Value(
        "CREATE_TRANSFER_RESULT_INTERNAL_ERROR")])
    monkeypatch.setattr(funded.ledger, "CreateTransfers", lambda request, timeout=None: busy)
    with pytest.raises(OutcomeUnknownError):
        funded.settle(LEDGER, funded.number, time.monotonic() + 0.3)
    record = funded.window(LEDGER, funded.number, funded.deadline())[1]
    assert (record["state"], record["attempt"]) == (WINDOW_CLOSED, 1)


def test_an_abort_after_a_failed_attempt_fences_its_chain_so_its_late_submission_fails(funded):
    _, chain = _runner_taken_over_after_another_failed_the_attempt(funded)
    assert funded.abort(LEDGER, funded.number, funded.deadline()) == (WR.ok, 0)
    refused = funded._move_money(LEDGER, chain, funded.deadline())  # A wakes up and submits the chain it computed
    assert refused is not None and refused.endswith("id_already_failed")
    assert funded.window(LEDGER, funded.number, funded.deadline())[1]["state"] == WINDOW_ABORTED
    assert _balances(funded) == {BANK_A: 1_000, BANK_B: 0, BANK_C: 0}

"""The clearing coordinator's periodic pass: which window step it resumes or starts (steps stubbed out)."""

from __future__ import annotations

import pytest

from tidebank.node.ledger.clearing import WINDOW_CLOSED, WINDOW_CLOSING, WINDOW_OPEN, WINDOW_SETTLED, WINDOW_SETTLING
from tidebank.node.txn.clearing_coordinator import ClearingCoordinator

S = 1_000_000_000
LEDGER, NUMBER = 9, 4


class Recording(ClearingCoordinator):
    """The decisions of `_resume`, without shards: each step only records that it was asked for."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.cycles: list[float] = []  # the cycle each close was asked with (0: by command)

    def close(self, ledger, number, deadline, cycle_s=0.0):
        self.calls.append(("close", ledger, number))
        self.cycles.append(cycle_s)
        return 0, number

    def finish_close(self, ledger, number, deadline):
        self.calls.append(("finish_close", ledger, number))

    def settle(self, ledger, number, deadline):
        self.calls.append(("settle", ledger, number))
        return 0, [], ""

    def finish_unwind(self, ledger, number, pid, deadline):
        self.calls.append(("finish_unwind", ledger, number, pid))

    def finish_abort(self, ledger, number, deadline):
        self.calls.append(("finish_abort", ledger, number))
        return 0, 0


@pytest.fixture
def coordinator():
    return Recording()


def test_open_window_past_its_cycle_is_closed(coordinator):
    coordinator._resume(LEDGER, NUMBER, {"state": WINDOW_OPEN, "opened_at": 100 * S}, 161 * S, 60.0, 0)
    assert coordinator.calls == [("close", LEDGER, NUMBER)]


def test_a_close_on_the_schedule_names_its_cycle_so_apply_checks_it_on_cluster_time(coordinator):
    coordinator._resume(LEDGER, NUMBER, {"state": WINDOW_OPEN, "opened_at": 100 * S}, 161 * S, 60.0, 0)
    assert coordinator.cycles == [60.0]


def test_an_abort_cut_short_is_resumed(coordinator):
    coordinator._resume(LEDGER, NUMBER, {"state": WINDOW_CLOSED, "aborting": True}, S, 0.0, 0)
    assert coordinator.calls == [("finish_abort", LEDGER, NUMBER)]


def test_open_window_within_its_cycle_stays_open(coordinator):
    coordinator._resume(LEDGER, NUMBER, {"state": WINDOW_OPEN, "opened_at": 100 * S}, 159 * S, 60.0, 0)
    assert coordinator.calls == []


def test_without_a_cycle_windows_close_only_by_command(coordinator):
    coordinator._resume(LEDGER, NUMBER, {"state": WINDOW_OPEN, "opened_at": 0}, 10**6 * S, 0.0, 0)
    assert coordinator.calls == []


def test_a_close_cut_short_is_finished(coordinator):
    coordinator._resume(LEDGER, NUMBER, {"state": WINDOW_CLOSING, "opened_at": 0}, S, 0.0, 0)
    assert coordinator.calls == [("finish_close", LEDGER, NUMBER)]


def test_a_settlement_cut_short_is_offered_to_settle_again(coordinator):
    # settle() begins with CMD_BEGIN_SETTLE, which lets it take the attempt over only once its lease ran out
    coordinator._resume(LEDGER, NUMBER, {"state": WINDOW_SETTLING, "attempt": 2}, S, 0.0, 0)
    assert coordinator.calls == [("settle", LEDGER, NUMBER)]


def test_an_unwind_cut_short_is_resumed(coordinator):
    coordinator._resume(LEDGER, NUMBER, {"state": WINDOW_CLOSED, "unwinding": 77}, S, 0.0, 0)
    assert coordinator.calls == [("finish_unwind", LEDGER, NUMBER, 77)]


@pytest.mark.parametrize("state", [WINDOW_CLOSED, WINDOW_SETTLED])
def test_closed_and_settled_windows_are_left_alone(coordinator, state):
    coordinator._resume(LEDGER, NUMBER, {"state": state}, S, 60.0, 0)
    assert coordinator.calls == []

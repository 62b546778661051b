"""The clearing rules of aborted windows, the ledger's participant limit, scheduled closes on cluster time and
paged participant lists (one shard's state machine, as in test_clearing_rules)."""

from __future__ import annotations

import pytest

from tests.unit.test_clearing_rules import BANK_A, BANK_B, BANK_C, IR, PR, WR, Shard, _close, item
from tidebank.common.limits import PARTICIPANTS_PER_LEDGER_MAX
from tidebank.node.ledger.clearing import (
    WINDOW_ABORTED,
    WINDOW_CLOSED,
    WINDOW_CLOSING,
    WINDOW_OPEN,
    WINDOW_SETTLED,
    WINDOW_SETTLING,
)
from tidebank.node.ledger.clearing_records import (
    CMD_ABORT_CANCELLED,
    CMD_ABORT_HERE,
    CMD_ABORTED,
    CMD_ADMIT,
    CMD_BEGIN_ABORT,
    CMD_BEGIN_CLOSE,
    CMD_BEGIN_SETTLE,
    CMD_BEGIN_UNWIND,
    CMD_RELEASE,
    CMD_SETTLE_FAILED,
    CMD_SETTLE_HERE,
    CMD_SETTLED,
    CMD_UNWIND_HERE,
    CMD_UNWOUND,
    ITEM_ABORTED,
    ITEM_ACCEPTED,
    ITEM_UNWOUND,
)
from tidebank.node.ledger.results import WINDOW_NOT_DUE

S = 1_000_000_000


@pytest.fixture
def shard(tmp_path):
    s = Shard(tmp_path / "s")
    yield s
    s.env.close()


@pytest.fixture
def banks(shard):
    """Three participants known on this shard (its ledger's home), each with an allowance of 1,000 here."""
    for n, pid in enumerate((BANK_A, BANK_B, BANK_C)):
        shard.copy(pid)
        shard.allow(pid, 1_000, move_id=900 + n)
    return shard


def _abort(shard: Shard, window: int = 1) -> int:
    """BEGIN_ABORT, ABORT_HERE until done, ABORTED: what the coordinator does on a one-shard cluster."""
    assert shard.one(CMD_BEGIN_ABORT, 1, window) == WR.ok
    while shard.one(CMD_ABORT_HERE, 1, window, 100) > 0:
        pass
    return shard.one(CMD_ABORTED, 1, window, tuple(shard.read("window_sums", 1, window)))


def _closed_with_items(banks: Shard) -> None:
    banks.items(item(1, amount=300), item(2, payer=BANK_B, payee=BANK_C, amount=40),
                item(3, payer=BANK_C, payee=BANK_A, amount=20))
    _close(banks)


# ------------------------------------------------------------ aborting a window


def test_abort_of_a_closed_window_gives_every_position_back(banks):
    _closed_with_items(banks)
    assert _abort(banks) == WR.ok
    assert [banks.position(p) for p in (BANK_A, BANK_B, BANK_C)] == [(1_000, 0, 0)] * 3


def test_abort_marks_every_item_of_the_window_aborted(banks):
    _closed_with_items(banks)
    _abort(banks)
    assert [i.status for i in banks.read("lookup_items", [1, 2, 3])] == [ITEM_ABORTED] * 3


def test_aborted_window_keeps_no_sums_and_no_bilateral_cells(banks):
    _closed_with_items(banks)
    _abort(banks)
    assert all(not (s or r or ns or nr) for _pid, s, r, ns, nr in banks.read("window_sums", 1, 1))
    assert banks.read("bilateral", 1, 1) == []
    assert all(not (s or r) for _pid, s, r, _ns, _nr in banks.read("window_nets", 1, 1))


def test_aborted_window_records_its_state_and_time(banks):
    _closed_with_items(banks)
    _abort(banks)
    record = banks.read("window", 1, 1)
    assert record["state"] == WINDOW_ABORTED
    assert record["aborted_at"] == banks.ts
    assert "aborting" not in record


def test_abort_leaves_the_items_of_other_windows_alone(banks):
    banks.items(item(1, amount=300))
    _close(banks)
    banks.items(item(2, amount=200))  # window 2, open
    _abort(banks)
    assert [i.status for i in banks.read("lookup_items", [1, 2])] == [ITEM_ABORTED, ITEM_ACCEPTED]
    assert banks.position(BANK_A) == (1_000, 200, 0)


def test_abort_after_an_unwind_keeps_the_unwound_items_unwound(banks):
    _closed_with_items(banks)
    banks.one(CMD_BEGIN_UNWIND, 1, 1, BANK_A)
    banks.one(CMD_UNWIND_HERE, 1, 1, BANK_A, 100)
    banks.one(CMD_UNWOUND, 1, 1, BANK_A, tuple(banks.read("window_sums", 1, 1)))
    _abort(banks)
    assert [i.status for i in banks.read("lookup_items", [1, 2, 3])] == [ITEM_UNWOUND, ITEM_ABORTED, ITEM_UNWOUND]
    assert [banks.position(p)[1] for p in (BANK_A, BANK_B, BANK_C)] == [0, 0, 0]


def test_abort_here_works_through_a_large_window_in_bounded_steps(banks):
    banks.items(*[item(i, amount=1) for i in range(1, 11)])  # 10 items: 20 index entries (payer and payee)
    _close(banks)
    banks.one(CMD_BEGIN_ABORT, 1, 1)
    assert [banks.one(CMD_ABORT_HERE, 1, 1, 8) for _ in range(4)] == [8, 8, 4, 0]
    assert banks.position(BANK_A)[1] == 0


def test_abort_here_again_after_it_finished_changes_nothing(banks):
    _closed_with_items(banks)
    _abort(banks)
    assert banks.one(CMD_ABORT_HERE, 1, 1, 100) == 0
    assert [banks.position(p) for p in (BANK_A, BANK_B, BANK_C)] == [(1_000, 0, 0)] * 3


def test_aborting_an_aborted_window_again_is_already_aborted(banks):
    _closed_with_items(banks)
    _abort(banks)
    assert banks.one(CMD_BEGIN_ABORT, 1, 1) == WR.window_already_aborted
    assert banks.read("window", 1, 1)["state"] == WINDOW_ABORTED


def test_begin_abort_twice_while_aborting_is_ok(banks):
    _closed_with_items(banks)
    assert banks.one(CMD_BEGIN_ABORT, 1, 1) == WR.ok
    assert banks.one(CMD_BEGIN_ABORT, 1, 1) == WR.ok


def test_aborted_window_is_never_settled(banks):
    _closed_with_items(banks)
    _abort(banks)
    assert banks.one(CMD_BEGIN_SETTLE, 1, 1)[0] == WR.window_already_aborted
    assert banks.read("window", 1, 1)["state"] == WINDOW_ABORTED


def test_aborted_window_cannot_be_unwound(banks):
    _closed_with_items(banks)
    _abort(banks)
    assert banks.one(CMD_BEGIN_UNWIND, 1, 1, BANK_A) == WR.window_already_aborted


def test_window_being_aborted_cannot_start_settling(banks):
    _closed_with_items(banks)
    banks.one(CMD_BEGIN_ABORT, 1, 1)
    assert banks.one(CMD_BEGIN_SETTLE, 1, 1)[0] == WR.window_not_closed
    assert banks.read("window", 1, 1)["state"] == WINDOW_CLOSED


def test_window_being_aborted_cannot_be_unwound(banks):
    _closed_with_items(banks)
    banks.one(CMD_BEGIN_ABORT, 1, 1)
    assert banks.one(CMD_BEGIN_UNWIND, 1, 1, BANK_A) == WR.window_not_closed


def test_abort_of_an_open_window_is_refused_and_changes_nothing(banks):
    banks.items(item(1, amount=300))
    assert banks.one(CMD_BEGIN_ABORT, 1, 1) == WR.window_not_closed
    assert banks.read("window", 1, 1) == {"state": WINDOW_OPEN, "opened_at": banks.read("window", 1, 1)["opened_at"]}
    assert banks.position(BANK_A) == (1_000, 300, 0)


def test_abort_of_a_closing_window_is_refused(banks):
    banks.one(CMD_BEGIN_CLOSE, 1, 1)
    assert banks.one(CMD_BEGIN_ABORT, 1, 1) == WR.window_not_closed
    assert banks.read("window", 1, 1)["state"] == WINDOW_CLOSING


def test_abort_of_a_settling_window_is_refused(banks):
    _closed_with_items(banks)
    banks.one(CMD_BEGIN_SETTLE, 1, 1)
    assert banks.one(CMD_BEGIN_ABORT, 1, 1) == WR.settlement_in_progress
    assert banks.read("window", 1, 1)["state"] == WINDOW_SETTLING


def test_abort_of_a_settled_window_is_refused(banks):
    _closed_with_items(banks)
    banks.one(CMD_BEGIN_SETTLE, 1, 1)
    banks.one(CMD_SETTLED, 1, 1, 1, (5, 6))
    assert banks.one(CMD_BEGIN_ABORT, 1, 1) == WR.window_already_settled
    assert banks.read("window", 1, 1)["state"] == WINDOW_SETTLED


def test_abort_of_a_window_being_unwound_is_refused(banks):
    _closed_with_items(banks)
    banks.one(CMD_BEGIN_UNWIND, 1, 1, BANK_A)
    assert banks.one(CMD_BEGIN_ABORT, 1, 1) == WR.window_not_closed


def test_abort_of_an_unknown_window_is_not_found(banks):
    assert banks.one(CMD_BEGIN_ABORT, 1, 9) == WR.window_not_found


def test_abort_of_a_window_whose_settlement_failed_is_allowed(banks):
    _closed_with_items(banks)
    banks.one(CMD_BEGIN_SETTLE, 1, 1)
    banks.one(CMD_SETTLE_FAILED, 1, 1, 1, "bank 101 short by 300")
    assert _abort(banks) == WR.ok


def test_shard_that_settled_a_window_refuses_to_abort_it(banks):
    _closed_with_items(banks)
    banks.one(CMD_SETTLE_HERE, 1, 1)
    assert banks.one(CMD_ABORT_HERE, 1, 1, 100) == -1
    assert [i.status for i in banks.read("lookup_items", [1, 2, 3])] == [ITEM_ACCEPTED] * 3


def test_shard_that_began_aborting_a_window_refuses_to_settle_it(banks):
    _closed_with_items(banks)
    banks.one(CMD_BEGIN_ABORT, 1, 1)
    banks.one(CMD_ABORT_HERE, 1, 1, 1)
    assert banks.one(CMD_SETTLE_HERE, 1, 1) == -1


def test_shard_that_began_aborting_a_window_refuses_to_unwind_it(banks):
    _closed_with_items(banks)
    banks.one(CMD_BEGIN_ABORT, 1, 1)
    banks.one(CMD_ABORT_HERE, 1, 1, 1)
    assert banks.one(CMD_UNWIND_HERE, 1, 1, BANK_A, 100) == -1


def test_aborted_with_items_left_is_a_bug(banks):
    _closed_with_items(banks)
    banks.one(CMD_BEGIN_ABORT, 1, 1)
    assert banks.one(CMD_ABORTED, 1, 1, tuple(banks.read("window_sums", 1, 1))) is None  # rolled back
    assert banks.read("window", 1, 1)["state"] == WINDOW_CLOSED


def test_aborted_without_begin_abort_is_a_bug(banks):
    _close(banks)
    assert banks.one(CMD_ABORTED, 1, 1, ()) is None
    assert banks.read("window", 1, 1)["state"] == WINDOW_CLOSED


def test_abort_cancelled_returns_the_window_to_closed(banks):
    _closed_with_items(banks)
    banks.one(CMD_BEGIN_ABORT, 1, 1)
    assert banks.one(CMD_ABORT_CANCELLED, 1, 1) == WR.ok
    assert "aborting" not in banks.read("window", 1, 1)
    assert banks.one(CMD_BEGIN_SETTLE, 1, 1)[0] == WR.ok


def test_the_aborted_state_follows_the_others():
    assert WINDOW_SETTLED < WINDOW_ABORTED


# ------------------------------------------------------------ the ledger's participant limit


def test_admit_counts_a_participant_once(shard):
    assert shard.one(CMD_ADMIT, 1, BANK_A) == PR.ok
    assert shard.one(CMD_ADMIT, 1, BANK_A) == PR.ok
    assert shard.read("admitted", 1) == 1


def test_admit_beyond_the_ledgers_limit_is_refused_and_changes_nothing(shard):
    for pid in range(1, PARTICIPANTS_PER_LEDGER_MAX + 1):
        shard.one(CMD_ADMIT, 1, pid)
    assert shard.one(CMD_ADMIT, 1, PARTICIPANTS_PER_LEDGER_MAX + 1) == PR.participants_limit_reached
    assert shard.read("admitted", 1) == PARTICIPANTS_PER_LEDGER_MAX


def test_admit_of_a_participant_admitted_before_is_ok_even_at_the_limit(shard):
    for pid in range(1, PARTICIPANTS_PER_LEDGER_MAX + 1):
        shard.one(CMD_ADMIT, 1, pid)
    assert shard.one(CMD_ADMIT, 1, 7) == PR.ok


def test_the_limit_is_per_ledger(shard):
    for pid in range(1, PARTICIPANTS_PER_LEDGER_MAX + 1):
        shard.one(CMD_ADMIT, 1, pid)
    assert shard.one(CMD_ADMIT, 2, 1) == PR.ok


def test_release_frees_the_participants_place(shard):
    for pid in range(1, PARTICIPANTS_PER_LEDGER_MAX + 1):
        shard.one(CMD_ADMIT, 1, pid)
    assert shard.one(CMD_RELEASE, 1, 5) == 1
    assert shard.one(CMD_RELEASE, 1, 5) == 0
    assert shard.one(CMD_ADMIT, 1, 10**6) == PR.ok


def test_the_participant_limit_is_4096():
    assert PARTICIPANTS_PER_LEDGER_MAX == 4096


# ------------------------------------------------------------ the schedule, on cluster time


def test_scheduled_close_before_its_cycle_in_cluster_time_is_not_due_and_changes_nothing(banks):
    opened = banks.read("window", 1, 1)["opened_at"]
    banks.ts = opened + 59 * S  # the next entry is stamped opened + 59 s + 1 ms
    assert banks.one(CMD_BEGIN_CLOSE, 1, 1, 60 * S) == WINDOW_NOT_DUE
    assert banks.read("window", 1, 1)["state"] == WINDOW_OPEN
    assert banks.read("open_window", 1) == 1


def test_scheduled_close_once_its_cycle_ran_out_in_cluster_time_closes(banks):
    opened = banks.read("window", 1, 1)["opened_at"]
    banks.ts = opened + 60 * S
    assert banks.one(CMD_BEGIN_CLOSE, 1, 1, 60 * S) == WR.ok
    assert banks.read("window", 1, 1)["state"] == WINDOW_CLOSING


def test_scheduled_close_is_decided_by_the_entrys_cluster_time_not_its_stamp(banks):
    # An entry stamped by a leader whose clock is behind still carries the shard's (later) cluster time.
    opened = banks.read("window", 1, 1)["opened_at"]
    banks.ts = opened + 61 * S
    banks.items(item(1))  # the shard has applied opened + 61 s
    banks.ts = opened  # a proposer 61 s behind
    assert banks.one(CMD_BEGIN_CLOSE, 1, 1, 60 * S) == WR.ok


def test_close_by_command_ignores_the_cycle(banks):
    assert banks.one(CMD_BEGIN_CLOSE, 1, 1) == WR.ok


def test_the_not_due_code_is_never_a_wire_code():
    assert WINDOW_NOT_DUE not in {int(c) for c in WR}


# ------------------------------------------------------------ participant pages


def test_participants_page_after_an_id(banks):
    assert [p.id for p in banks.read("participants", 1, BANK_A, 1)] == [BANK_B]
    assert [p.id for p in banks.read("participants", 1, BANK_B, 0)] == [BANK_C]


def test_participants_of_one_ledger_only(banks):
    banks.copy(BANK_C + 1, ledger=2)
    assert [p.id for p in banks.read("participants", 2)] == [BANK_C + 1]
    assert [p.id for p in banks.read("participants", 0, 0, 0)] == [BANK_A, BANK_B, BANK_C, BANK_C + 1]


def test_participants_home_only_leaves_copies_out(shard):
    shard.copy(BANK_A)
    shard.register(BANK_B, cap=10)
    assert [p.id for p in shard.read("participants", 1, 0, 0, True)] == [BANK_B]


def test_items_submitted_after_an_abort_go_to_the_open_window(banks):
    _closed_with_items(banks)
    _abort(banks)
    assert banks.items(item(9, amount=1_000)) == [IR.ok]
    assert banks.read("lookup_items", [9])[0].window == 2


def test_no_window_comes_after_the_last_window_number(banks):
    assert banks.read("windows", 1, 2**64 - 1, 10) == []


def test_no_participant_comes_after_the_last_id(banks):
    assert banks.read("participants", 1, 2**128 - 1, 10) == []

"""The clearing rules that keep a window from being settled twice when a settlement attempt is taken over: the
lease token of SETTLE_FAILED, the fence BEGIN_SETTLE and BEGIN_UNWIND ask for after a failed attempt, and SETTLED
of a failed attempt whose chain committed after all (one shard's state machine, as in test_clearing_rules)."""

from __future__ import annotations

import pytest

from tests.unit.test_clearing_rules import BANK_A, BANK_B, BANK_C, WR, Shard, _close, item
from tidebank.node.ledger.clearing import SETTLE_LEASE_S, WINDOW_CLOSED, WINDOW_SETTLED, WINDOW_SETTLING
from tidebank.node.ledger.clearing_records import (
    CMD_BEGIN_SETTLE,
    CMD_BEGIN_UNWIND,
    CMD_SETTLE_FAILED,
    CMD_SETTLED,
)

S = 1_000_000_000
FIRST_ID = 0xF1


@pytest.fixture
def banks(tmp_path):
    """A closed window 1 of ledger 1 with A -> B 300 and B -> C 40 (this shard is the ledger's home)."""
    shard = Shard(tmp_path / "s")
    for n, pid in enumerate((BANK_A, BANK_B, BANK_C)):
        shard.copy(pid)
        shard.allow(pid, 1_000, move_id=900 + n)
    shard.items(item(1, amount=300), item(2, payer=BANK_B, payee=BANK_C, amount=40))
    _close(shard)
    yield shard
    shard.env.close()


def _window(shard: Shard) -> dict:
    return shard.read("window", 1, 1)


def _taken_over(banks: Shard) -> tuple[int, int]:
    """Runner A begins attempt 1; its lease runs out; runner B takes attempt 1 over. Their lease tokens."""
    _, _, token_a = banks.one(CMD_BEGIN_SETTLE, 1, 1, 0)
    banks.ts += (SETTLE_LEASE_S + 1) * S
    code, attempt, token_b = banks.one(CMD_BEGIN_SETTLE, 1, 1, 0)
    assert (code, attempt) == (WR.ok, 1)
    return token_a, token_b


def test_begin_settle_with_a_fence_answers_the_lease_token_it_wrote(banks):
    code, attempt, token = banks.one(CMD_BEGIN_SETTLE, 1, 1, 0)
    assert (code, attempt, token) == (WR.ok, 1, _window(banks)["settling_since"])


def test_settle_failed_of_a_runner_taken_over_is_ignored(banks):
    token_a, _ = _taken_over(banks)
    assert banks.one(CMD_SETTLE_FAILED, 1, 1, 1, "short", token_a, FIRST_ID) == WR.settlement_in_progress
    assert _window(banks)["state"] == WINDOW_SETTLING


def test_settle_failed_of_the_attempts_current_holder_is_applied(banks):
    _, token_b = _taken_over(banks)
    assert banks.one(CMD_SETTLE_FAILED, 1, 1, 1, "short", token_b, FIRST_ID) == WR.ok
    record = _window(banks)
    assert (record["state"], record["failure"], record["fence"]) == (WINDOW_CLOSED, "short", FIRST_ID)


def test_settle_failed_of_the_old_form_is_applied_by_any_runner_of_the_attempt(banks):
    _taken_over(banks)
    assert banks.one(CMD_SETTLE_FAILED, 1, 1, 1, "short") == WR.ok
    assert "fence" not in _window(banks)


def test_a_new_attempt_after_a_failed_one_needs_that_attempts_chain_fenced(banks):
    _, _, token = banks.one(CMD_BEGIN_SETTLE, 1, 1, 0)
    banks.one(CMD_SETTLE_FAILED, 1, 1, 1, "short", token, FIRST_ID)
    assert banks.one(CMD_BEGIN_SETTLE, 1, 1, 0)[:2] == [WR.settlement_in_progress, 1]
    assert _window(banks)["state"] == WINDOW_CLOSED


def test_a_new_attempt_begins_once_the_failed_attempt_is_fenced(banks):
    _, _, token = banks.one(CMD_BEGIN_SETTLE, 1, 1, 0)
    banks.one(CMD_SETTLE_FAILED, 1, 1, 1, "short", token, FIRST_ID)
    assert banks.one(CMD_BEGIN_SETTLE, 1, 1, 1)[:2] == [WR.ok, 2]
    assert "fence" not in _window(banks)


def test_an_unwind_after_a_failed_attempt_needs_that_attempts_chain_fenced(banks):
    _, _, token = banks.one(CMD_BEGIN_SETTLE, 1, 1, 0)
    banks.one(CMD_SETTLE_FAILED, 1, 1, 1, "short", token, FIRST_ID)
    assert banks.one(CMD_BEGIN_UNWIND, 1, 1, BANK_A, 0) == WR.settlement_in_progress
    assert banks.one(CMD_BEGIN_UNWIND, 1, 1, BANK_A, 1) == WR.ok


def test_settled_of_a_failed_attempt_whose_chain_committed_settles_the_window(banks):
    _, token_b = _taken_over(banks)
    banks.one(CMD_SETTLE_FAILED, 1, 1, 1, "short", token_b, FIRST_ID)
    assert banks.one(CMD_SETTLED, 1, 1, 1, (FIRST_ID, 0xF2)) == WR.ok
    record = _window(banks)
    assert (record["state"], record["attempt"], record["transfers"]) == (WINDOW_SETTLED, 1, [FIRST_ID, 0xF2])
    assert "failure" not in record and "fence" not in record


def test_settled_of_an_attempt_older_than_the_last_failed_one_is_still_a_violation(banks):
    _, _, token = banks.one(CMD_BEGIN_SETTLE, 1, 1, 0)
    banks.one(CMD_SETTLE_FAILED, 1, 1, 1, "short", token, FIRST_ID)
    _, _, token = banks.one(CMD_BEGIN_SETTLE, 1, 1, 1)
    banks.one(CMD_SETTLE_FAILED, 1, 1, 2, "short", token, 0xF3)
    assert banks.one(CMD_SETTLED, 1, 1, 1, (FIRST_ID,)) is None  # ClearingInvariantViolation: rolled back
    assert _window(banks)["state"] == WINDOW_CLOSED

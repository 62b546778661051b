"""The clearing rules on a real LMDB env: participants, allowances under the cap, windows, netting, unwinding."""

from __future__ import annotations

import lmdb
import pytest

from tidebank.node.ledger.clearing import (
    SETTLE_LEASE_S,
    SETTLEMENT_PAY_IN_CODE,
    SETTLEMENT_PAY_OUT_CODE,
    WINDOW_CLOSED,
    WINDOW_CLOSING,
    WINDOW_OPEN,
    WINDOW_SETTLED,
    WINDOW_SETTLING,
    settlement_transfers,
)
from tidebank.node.ledger.clearing_records import (
    CMD_ACK,
    CMD_BEGIN_CLOSE,
    CMD_BEGIN_SETTLE,
    CMD_BEGIN_UNWIND,
    CMD_CLOSE_HERE,
    CMD_CLOSED,
    CMD_COPY,
    CMD_GIVE,
    CMD_PROPAGATED,
    CMD_REGISTER,
    CMD_SETTLE_FAILED,
    CMD_SETTLE_HERE,
    CMD_SETTLED,
    CMD_TAKE,
    CMD_UNWIND_HERE,
    CMD_UNWOUND,
    CMD_UPDATE,
    ClearingCommand,
    ClearingItem,
    Participant,
    pack_participant,
)
from tidebank.node.ledger.entry import decode_entry, encode_entry
from tidebank.node.ledger.operations import OP_CLEARING, OP_CLEARING_ITEMS, Operation
from tidebank.node.ledger.results import ITEM_ALLOWANCE_LOW, ClearingItemResult, ParticipantResult, WindowResult
from tidebank.node.ledger.state_machine import LedgerStateMachine

IR, PR, WR = ClearingItemResult, ParticipantResult, WindowResult
T0 = 1_700_000_000 * 10**9
BANK_A, BANK_B, BANK_C = 101, 102, 103


class Shard:
    """One shard's state machine, driven entry by entry like a replica does."""

    def __init__(self, path) -> None:
        self.env = lmdb.open(str(path), max_dbs=64, map_size=1 << 28, sync=False)
        self.sm = LedgerStateMachine(self.env)
        self.ts = T0

    def run(self, *commands: ClearingCommand) -> list:
        return self._apply(Operation(OP_CLEARING, list(commands)))

    def one(self, tag: int, *args):
        return self.run(ClearingCommand(tag, args))[0]

    def items(self, *items: ClearingItem) -> list[int]:
        return self._apply(Operation(OP_CLEARING_ITEMS, list(items)))

    def _apply(self, op: Operation) -> list:
        self.ts += 1_000_000
        _, ops = decode_entry(encode_entry(self.ts, [op]))  # through the codec, as on every replica
        with self.env.begin(write=True) as txn:
            return self.sm.apply(txn, ops, self.ts)[0]

    def read(self, name: str, *args, **kwargs):
        with self.env.begin() as txn:
            return getattr(self.sm.clearing, name)(txn, *args, **kwargs)

    def register(self, pid: int, cap: int, ledger: int = 1, settlement: int | None = None) -> list:
        return self.one(CMD_REGISTER, pid, ledger, 7, f"bank {pid}", settlement or pid + 9000, cap)

    def copy(self, pid: int, cap: int = 0, ledger: int = 1, version: int = 1, suspended: bool = False,
             ledger_home: bool = True) -> int:
        p = Participant(pid, ledger, 7, f"bank {pid}", pid + 9000, cap, suspended, version)
        return self.one(CMD_COPY, pack_participant(p), ledger_home)

    def allow(self, pid: int, amount: int, move_id: int) -> int:
        return self.one(CMD_GIVE, move_id, pid, amount, False)

    def position(self, pid: int) -> tuple[int, int, int]:
        return self.read("positions", [pid])[0][1:]


@pytest.fixture
def shard(tmp_path):
    s = Shard(tmp_path / "s")
    yield s
    s.env.close()


@pytest.fixture
def banks(shard):
    """Three participants known on this shard, each with an allowance of 1,000 here."""
    for n, pid in enumerate((BANK_A, BANK_B, BANK_C)):
        shard.copy(pid)
        shard.allow(pid, 1_000, move_id=900 + n)
    return shard


def item(iid: int, payer: int = BANK_A, payee: int = BANK_B, amount: int = 10, ledger: int = 1) -> ClearingItem:
    return ClearingItem(iid, payer, payee, amount, ledger, user_data_128=iid % 1000 * 3)


# ------------------------------------------------------------ participants


def test_register_puts_the_whole_cap_in_the_pool(shard):
    assert shard.register(BANK_A, cap=5_000) == [PR.ok, 1]
    assert shard.position(BANK_A) == (0, 0, 5_000)


def test_register_again_with_the_same_fields_is_exists(shard):
    shard.register(BANK_A, cap=5_000)
    assert shard.register(BANK_A, cap=5_000) == [PR.exists, 1]
    assert shard.position(BANK_A) == (0, 0, 5_000)


def test_register_again_with_another_ledger_is_refused(shard):
    shard.register(BANK_A, cap=5_000)
    assert shard.register(BANK_A, cap=5_000, ledger=2)[0] == PR.exists_with_different_ledger


def test_register_again_with_another_settlement_account_is_refused(shard):
    shard.register(BANK_A, cap=5_000)
    assert shard.register(BANK_A, cap=5_000, settlement=1)[0] == PR.exists_with_different_settlement_account


def test_register_zero_id_is_refused(shard):
    assert shard.register(0, cap=1)[0] == PR.id_must_not_be_zero


def test_raising_the_cap_adds_to_the_pool_and_bumps_the_version(shard):
    shard.register(BANK_A, cap=5_000)
    assert shard.one(CMD_UPDATE, BANK_A, 8_000, -1) == [PR.ok, 2]
    assert shard.position(BANK_A) == (0, 0, 8_000)
    assert [p.version for p in shard.read("unpropagated", 10)] == [2]


def test_lowering_the_cap_below_what_the_pool_holds_is_refused(shard):
    shard.register(BANK_A, cap=5_000)
    shard.one(CMD_TAKE, 1, BANK_A, 4_500, 2, True, False)  # 4,500 handed to another shard
    assert shard.one(CMD_UPDATE, BANK_A, 1_000, -1) == [PR.cap_below_position, 1]
    assert shard.position(BANK_A) == (0, 0, 500)


def test_update_of_a_participant_not_homed_here_is_not_found(shard):
    shard.copy(BANK_A)
    assert shard.one(CMD_UPDATE, BANK_A, 10, -1)[0] == PR.participant_not_found


def test_propagated_clears_only_the_version_it_names(shard):
    shard.register(BANK_A, cap=5_000)
    shard.one(CMD_UPDATE, BANK_A, -1, 1)
    assert shard.one(CMD_PROPAGATED, BANK_A, 1) == 0
    assert shard.one(CMD_PROPAGATED, BANK_A, 2) == 1
    assert shard.read("unpropagated", 10) == []


def test_copy_never_moves_a_participant_backwards(shard):
    shard.copy(BANK_A, version=3, suspended=True)
    assert shard.copy(BANK_A, version=2, suspended=False) == 0
    assert shard.read("lookup_participants", [BANK_A])[0].suspended


def test_copy_on_the_ledger_home_opens_window_one(shard):
    shard.copy(BANK_A, ledger_home=True)
    assert shard.read("open_window", 1) == 1
    assert shard.read("window", 1, 1)["state"] == WINDOW_OPEN


def test_copy_elsewhere_opens_no_window(shard):
    shard.copy(BANK_A, ledger_home=False)
    assert shard.read("open_window", 1) == 0


# ------------------------------------------------------------ items


def test_item_within_the_allowance_is_accepted_and_moves_both_positions(banks):
    assert banks.items(item(1, amount=300)) == [IR.ok]
    assert banks.position(BANK_A) == (1_000, 300, 0)
    assert banks.position(BANK_B) == (1_000, -300, 0)


def test_item_beyond_the_allowance_asks_for_more_and_changes_nothing(banks):
    assert banks.items(item(1, amount=1_001)) == [ITEM_ALLOWANCE_LOW]
    assert banks.position(BANK_A) == (1_000, 0, 0)
    assert banks.read("lookup_items", [1]) == []


def test_items_of_one_batch_share_the_allowance_in_order(banks):
    assert banks.items(item(1, amount=600), item(2, amount=600), item(3, amount=400)) == [
        IR.ok, ITEM_ALLOWANCE_LOW, IR.ok]


def test_what_a_participant_received_here_funds_what_it_pays_here(banks):
    banks.items(item(1, payer=BANK_B, payee=BANK_A, amount=500))
    assert banks.items(item(2, amount=1_500)) == [IR.ok]  # allowance 1,000 + received 500


def test_item_resubmitted_is_exists(banks):
    banks.items(item(1))
    assert banks.items(item(1)) == [IR.exists]
    assert banks.position(BANK_A)[1] == 10


def test_item_id_reused_with_another_amount_is_refused(banks):
    banks.items(item(1))
    assert banks.items(item(1, amount=11)) == [IR.exists_with_different_amount]


def test_item_id_reused_with_another_payee_is_refused(banks):
    banks.items(item(1))
    assert banks.items(item(1, payee=BANK_C)) == [IR.exists_with_different_payee]


@pytest.mark.parametrize(("bad", "code"), [
    (item(0), IR.id_must_not_be_zero),
    (item((1 << 128) - 1), IR.id_must_not_be_int_max),
    (item(1, amount=0), IR.amount_must_not_be_zero),
    (item(1, ledger=0), IR.ledger_must_not_be_zero),
    (item(1, payee=BANK_A), IR.same_participant),
    (item(1, payer=555), IR.payer_not_found),
    (item(1, payee=555), IR.payee_not_found),
    (item(1, ledger=2), IR.ledger_mismatch),
])
def test_invalid_item_is_refused_with_its_code(banks, bad, code):
    assert banks.items(bad) == [code]
    assert banks.read("lookup_items", [bad.id]) == []


def test_suspended_payer_submits_nothing(banks):
    banks.copy(BANK_A, version=2, suspended=True)
    assert banks.items(item(1)) == [IR.payer_suspended]


def test_suspended_payee_still_receives(banks):
    banks.copy(BANK_B, version=2, suspended=True)
    assert banks.items(item(1)) == [IR.ok]


def test_accepted_item_records_its_window_and_time(banks):
    banks.items(item(1))
    stored = banks.read("lookup_items", [1])[0]
    assert (stored.window, stored.timestamp > T0, stored.user_data_128) == (1, True, 3)


# ------------------------------------------------------------ allowance moves


def test_take_from_the_pool_takes_at_most_what_it_holds(shard):
    shard.register(BANK_A, cap=500)
    assert shard.one(CMD_TAKE, 1, BANK_A, 800, 3, True, False) == 500
    assert shard.position(BANK_A) == (0, 0, 0)


def test_take_is_idempotent_by_move_id(shard):
    shard.register(BANK_A, cap=500)
    shard.one(CMD_TAKE, 1, BANK_A, 200, 3, True, False)
    assert shard.one(CMD_TAKE, 1, BANK_A, 200, 3, True, False) == 200
    assert shard.position(BANK_A) == (0, 0, 300)


def test_take_from_a_shard_leaves_its_position_covered(banks):
    banks.items(item(1, amount=700))
    assert banks.one(CMD_TAKE, 1, BANK_A, 1_000, 0, False, True) == 300
    assert banks.position(BANK_A) == (700, 700, 0)
    assert banks.items(item(2, amount=1)) == [ITEM_ALLOWANCE_LOW]


def test_give_applies_once_per_move_id(shard):
    assert shard.one(CMD_GIVE, 7, BANK_A, 100, False) == 0
    assert shard.one(CMD_GIVE, 7, BANK_A, 100, False) == 1
    assert shard.position(BANK_A) == (100, 0, 0)


def test_ack_forgets_the_move(shard):
    shard.register(BANK_A, cap=500)
    shard.one(CMD_TAKE, 1, BANK_A, 200, 3, True, False)
    assert [m[0] for m in shard.read("moves_out", 10)] == [1]
    shard.one(CMD_ACK, 1)
    assert shard.read("moves_out", 10) == []


def test_take_retried_after_its_move_was_acknowledged_takes_nothing_more(shard):
    # A TAKE whose answer was lost can be retried after the periodic pass delivered and acknowledged the move:
    # taking again would lose that amount (the GIVE of the same move id is deduplicated at the destination).
    shard.register(BANK_A, cap=500)
    assert shard.one(CMD_TAKE, 1, BANK_A, 200, 3, True, False) == 200
    shard.one(CMD_ACK, 1)
    assert shard.one(CMD_TAKE, 1, BANK_A, 200, 3, True, False) == 200
    assert shard.position(BANK_A) == (0, 0, 300)
    assert shard.read("moves_out", 10) == []


def test_ack_of_an_unknown_move_changes_nothing(shard):
    shard.register(BANK_A, cap=500)
    assert shard.one(CMD_ACK, 99) == 0
    assert shard.position(BANK_A) == (0, 0, 500)


def test_totals_count_moving_allowance_toward_the_cap(shard):
    shard.register(BANK_A, cap=500)
    shard.one(CMD_TAKE, 1, BANK_A, 200, 3, True, False)
    t = shard.read("totals")[1]
    assert (t["pool"], t["moving"], t["cap"]) == (300, 200, 500)


# ------------------------------------------------------------ windows


def test_begin_close_opens_the_next_window(banks):
    assert banks.one(CMD_BEGIN_CLOSE, 1, 1) == WR.ok
    assert banks.read("open_window", 1) == 2
    assert banks.read("window", 1, 1)["state"] == WINDOW_CLOSING


def test_begin_close_of_a_window_no_longer_open_changes_nothing(banks):
    banks.one(CMD_BEGIN_CLOSE, 1, 1)
    assert banks.one(CMD_BEGIN_CLOSE, 1, 1) == WR.window_not_open
    assert banks.read("open_window", 1) == 2


def test_begin_close_of_an_unknown_window_is_not_found(banks):
    assert banks.one(CMD_BEGIN_CLOSE, 1, 5) == WR.window_not_found


def test_next_window_cannot_close_while_the_previous_is_closing(banks):
    banks.one(CMD_BEGIN_CLOSE, 1, 1)
    assert banks.one(CMD_BEGIN_CLOSE, 1, 2) == WR.previous_window_still_closing


def test_items_after_close_here_go_to_the_next_window(banks):
    banks.items(item(1))
    banks.one(CMD_CLOSE_HERE, 1, 1)
    banks.items(item(2))
    assert [i.window for i in banks.read("lookup_items", [1, 2])] == [1, 2]
    assert banks.read("window_sums", 1, 1) == [(BANK_A, 10, 0, 1, 0), (BANK_B, 0, 10, 0, 1)]


def test_close_here_never_moves_a_shard_back(banks):
    banks.one(CMD_CLOSE_HERE, 1, 3)
    banks.one(CMD_CLOSE_HERE, 1, 1)
    assert banks.read("current_window_here", 1) == 4


def test_bilateral_sums_follow_payer_and_payee(banks):
    banks.items(item(1, amount=10), item(2, amount=5), item(3, payer=BANK_B, payee=BANK_C, amount=7))
    assert banks.read("bilateral", 1, 1) == [(BANK_A, BANK_B, 15, 2), (BANK_B, BANK_C, 7, 1)]


def _close(shard: Shard, window: int = 1) -> None:
    shard.one(CMD_BEGIN_CLOSE, 1, window)
    shard.one(CMD_CLOSE_HERE, 1, window)
    nets = tuple(shard.read("window_sums", 1, window))
    assert shard.one(CMD_CLOSED, 1, window, nets) == WR.ok


def test_closed_stores_the_netting(banks):
    banks.items(item(1, amount=10), item(2, payer=BANK_B, payee=BANK_C, amount=4))
    _close(banks)
    assert banks.read("window", 1, 1)["state"] == WINDOW_CLOSED
    nets = {n[0]: n[1] - n[2] for n in banks.read("window_nets", 1, 1)}
    assert nets == {BANK_A: 10, BANK_B: -6, BANK_C: -4}


def test_closed_refuses_nettings_that_do_not_sum_to_zero(banks):
    banks.one(CMD_BEGIN_CLOSE, 1, 1)
    assert banks.one(CMD_CLOSED, 1, 1, ((BANK_A, 10, 0, 1, 0),)) is None  # a bug: rolled back
    assert banks.read("window", 1, 1)["state"] == WINDOW_CLOSING


def test_open_window_cannot_settle(banks):
    assert banks.one(CMD_BEGIN_SETTLE, 1, 1) == [WR.window_not_closed, 0]


def test_settle_failure_returns_the_window_to_closed_with_the_reason(banks):
    _close(banks)
    assert banks.one(CMD_BEGIN_SETTLE, 1, 1) == [WR.ok, 1]
    assert banks.read("window", 1, 1)["state"] == WINDOW_SETTLING
    banks.one(CMD_SETTLE_FAILED, 1, 1, 1, "bank 101 short by 10")
    record = banks.read("window", 1, 1)
    assert (record["state"], record["failure"]) == (WINDOW_CLOSED, "bank 101 short by 10")


def test_settled_window_never_settles_again(banks):
    _close(banks)
    banks.one(CMD_BEGIN_SETTLE, 1, 1)
    assert banks.one(CMD_SETTLED, 1, 1, 1, (5, 6)) == WR.ok
    assert banks.read("window", 1, 1)["state"] == WINDOW_SETTLED
    assert banks.one(CMD_BEGIN_SETTLE, 1, 1)[0] == WR.window_already_settled


def test_settle_here_gives_the_cap_back_once(banks):
    banks.items(item(1, amount=900))
    _close(banks)
    assert banks.one(CMD_SETTLE_HERE, 1, 1) == 0
    assert banks.one(CMD_SETTLE_HERE, 1, 1) == 1
    assert banks.position(BANK_A) == (1_000, 0, 0)
    assert banks.position(BANK_B) == (1_000, 0, 0)
    assert banks.items(item(2, amount=1_000)) == [IR.ok]


def test_unwind_excludes_a_participants_items_and_their_positions(banks):
    banks.items(item(1, amount=10), item(2, payer=BANK_B, payee=BANK_C, amount=4),
                item(3, payer=BANK_C, payee=BANK_A, amount=2))
    _close(banks)
    assert banks.one(CMD_UNWIND_HERE, 1, 1, BANK_A, 100) == 2
    assert banks.one(CMD_UNWIND_HERE, 1, 1, BANK_A, 100) == 0
    assert [i.status for i in banks.read("lookup_items", [1, 2, 3])] == [1, 0, 1]
    assert banks.position(BANK_A)[1] == 0
    assert banks.position(BANK_B)[1] == 4
    assert banks.read("bilateral", 1, 1) == [(BANK_B, BANK_C, 4, 1)]


def test_unwind_works_through_a_large_window_in_bounded_steps(banks):
    banks.items(*[item(i, amount=1) for i in range(1, 11)])
    _close(banks)
    steps = [banks.one(CMD_UNWIND_HERE, 1, 1, BANK_A, 4) for _ in range(4)]
    assert steps == [4, 4, 2, 0]
    assert banks.position(BANK_A)[1] == 0


def test_unwound_renets_the_window_and_counts_a_round(banks):
    banks.items(item(1, amount=10), item(2, payer=BANK_B, payee=BANK_C, amount=4))
    _close(banks)
    assert banks.one(CMD_BEGIN_UNWIND, 1, 1, BANK_A) == WR.ok
    banks.one(CMD_UNWIND_HERE, 1, 1, BANK_A, 100)
    assert banks.one(CMD_UNWOUND, 1, 1, BANK_A, tuple(banks.read("window_sums", 1, 1))) == WR.ok
    record = banks.read("window", 1, 1)
    assert (record["unwound"], record["round"]) == ([BANK_A], 1)
    nets = {n[0]: n[1] - n[2] for n in banks.read("window_nets", 1, 1) if n[1] or n[2]}
    assert nets == {BANK_B: 4, BANK_C: -4}


def test_unwind_after_the_cap_was_given_back_is_refused(banks):
    banks.items(item(1))
    _close(banks)
    banks.one(CMD_SETTLE_HERE, 1, 1)
    assert banks.one(CMD_UNWIND_HERE, 1, 1, BANK_A, 100) == -1


def test_window_items_pages_a_participants_items_by_id(banks):
    banks.items(item(5), item(3), item(9, payer=BANK_B, payee=BANK_C))
    assert [i.id for i in banks.read("window_items", 1, 1, BANK_A, 0, 10)] == [3, 5]
    assert [i.id for i in banks.read("window_items", 1, 1, BANK_A, 3, 10)] == [5]
    assert [i.id for i in banks.read("window_items", 1, 1, BANK_B, 0, 1)] == [3]


def test_nets_on_one_shard_sum_to_zero(banks):
    banks.items(item(1, amount=10), item(2, payer=BANK_C, payee=BANK_A, amount=3))
    assert banks.read("totals")[1]["net"] == 0


def test_closing_state_constants_are_ordered():
    assert WINDOW_OPEN < WINDOW_CLOSING < WINDOW_CLOSED < WINDOW_SETTLING < WINDOW_SETTLED


def test_unwind_of_a_participant_without_items_in_the_window_is_refused(banks):
    banks.items(item(1))
    _close(banks)
    assert banks.one(CMD_BEGIN_UNWIND, 1, 1, BANK_C) == WR.participant_not_in_window


def test_window_being_unwound_cannot_start_settling(banks):
    banks.items(item(1))
    _close(banks)
    banks.one(CMD_BEGIN_UNWIND, 1, 1, BANK_A)
    assert banks.one(CMD_BEGIN_SETTLE, 1, 1)[0] == WR.window_not_closed


def test_unwound_without_begin_unwind_is_refused(banks):
    banks.items(item(1))
    _close(banks)
    assert banks.one(CMD_UNWOUND, 1, 1, BANK_A, ()) == WR.window_not_closed


# ------------------------------------------------------------ settlement transfers


def test_settlement_pays_in_before_it_pays_out_as_one_chain():
    nets = [(BANK_A, 10, 0, 1, 0), (BANK_B, 0, 6, 0, 1), (BANK_C, 0, 4, 0, 1)]
    chain = settlement_transfers(1, 7, 0, nets, {BANK_A: 1, BANK_B: 2, BANK_C: 3}, hub_account_id=99)
    assert [(t.debit_account_id, t.credit_account_id, t.amount, t.code) for t in chain] == [
        (1, 99, 10, SETTLEMENT_PAY_IN_CODE), (99, 2, 6, SETTLEMENT_PAY_OUT_CODE), (99, 3, 4, SETTLEMENT_PAY_OUT_CODE)]
    assert [t.flags for t in chain] == [1, 1, 0]


def test_settlement_leaves_out_participants_with_a_zero_net():
    nets = [(BANK_A, 5, 5, 1, 1), (BANK_B, 3, 0, 1, 0), (BANK_C, 0, 3, 0, 1)]
    chain = settlement_transfers(1, 7, 0, nets, {BANK_A: 1, BANK_B: 2, BANK_C: 3}, hub_account_id=99)
    assert [t.user_data_128 for t in chain] == [BANK_B, BANK_C]


def test_settlement_after_a_failed_attempt_is_a_new_attempt(banks):
    _close(banks)
    banks.one(CMD_BEGIN_SETTLE, 1, 1)
    banks.one(CMD_SETTLE_FAILED, 1, 1, 1, "short")
    assert banks.one(CMD_BEGIN_SETTLE, 1, 1) == [WR.ok, 2]


def test_a_second_settle_while_an_attempt_holds_the_window_is_refused(banks):
    _close(banks)
    banks.one(CMD_BEGIN_SETTLE, 1, 1)
    assert banks.one(CMD_BEGIN_SETTLE, 1, 1) == [WR.settlement_in_progress, 1]


def test_an_attempt_nobody_finished_is_taken_over_after_its_lease(banks):
    _close(banks)
    banks.one(CMD_BEGIN_SETTLE, 1, 1)
    banks.ts += (SETTLE_LEASE_S + 1) * 10**9
    assert banks.one(CMD_BEGIN_SETTLE, 1, 1) == [WR.ok, 1]  # the same attempt: its transfer ids are kept


def test_a_stale_attempts_failure_changes_nothing(banks):
    _close(banks)
    banks.one(CMD_BEGIN_SETTLE, 1, 1)
    banks.one(CMD_SETTLE_FAILED, 1, 1, 1, "short")
    banks.one(CMD_BEGIN_SETTLE, 1, 1)
    assert banks.one(CMD_SETTLE_FAILED, 1, 1, 1, "late") == WR.settlement_in_progress
    assert banks.read("window", 1, 1)["state"] == WINDOW_SETTLING


def test_settled_by_a_stale_attempt_is_a_bug(banks):
    _close(banks)
    banks.one(CMD_BEGIN_SETTLE, 1, 1)
    banks.one(CMD_SETTLE_FAILED, 1, 1, 1, "short")
    banks.one(CMD_BEGIN_SETTLE, 1, 1)
    assert banks.one(CMD_SETTLED, 1, 1, 1, ()) is None  # rolled back: the invariant fired
    assert banks.read("window", 1, 1)["state"] == WINDOW_SETTLING


def test_settlement_ids_change_with_the_attempt():
    nets = [(BANK_A, 5, 0, 1, 0), (BANK_B, 0, 5, 0, 1)]
    first = settlement_transfers(1, 7, 0, nets, {BANK_A: 1, BANK_B: 2}, hub_account_id=99)
    again = settlement_transfers(1, 7, 0, nets, {BANK_A: 1, BANK_B: 2}, hub_account_id=99)
    renetted = settlement_transfers(1, 7, 1, nets, {BANK_A: 1, BANK_B: 2}, hub_account_id=99)
    assert [t.id for t in first] == [t.id for t in again]
    assert not {t.id for t in first} & {t.id for t in renetted}


def test_settlement_of_nets_that_do_not_sum_to_zero_is_a_bug():
    with pytest.raises(AssertionError):
        settlement_transfers(1, 7, 0, [(BANK_A, 5, 0, 1, 0)], {BANK_A: 1}, hub_account_id=99)

"""The node resends the chains of items refused for a moving slot (node/api/ledger_service._retry_slot_moves)."""

from __future__ import annotations

from tidebank.node.api import ledger_service
from tidebank.node.api.ledger_service import _MOVING_TRANSFER, _retry_slot_moves
from tidebank.node.ledger.results import CreateTransferResult as TR

LINKED = 1


class Deadline:
    """A servicer context whose deadline is `remaining_s` away."""

    def __init__(self, remaining_s: float) -> None:
        self.remaining_s = remaining_s

    def time_remaining(self) -> float:
        return self.remaining_s


def test_the_whole_chain_of_a_refused_item_is_sent_again(monkeypatch):
    monkeypatch.setattr(ledger_service.time, "sleep", lambda s: None)
    sent = []

    def resubmit(positions):
        sent.append(positions)
        return [TR.created] * len(positions)

    codes = [TR.created, TR.linked_event_failed, TR.slot_moving, TR.exceeds_credits]
    flags = [0, LINKED, 0, 0]
    assert _retry_slot_moves(Deadline(5.0), codes, flags, _MOVING_TRANSFER, resubmit) == [TR.created] * 3 + [
        TR.exceeds_credits]
    assert sent == [[1, 2]]


def test_items_still_refused_at_the_deadline_keep_their_code(monkeypatch):
    monkeypatch.setattr(ledger_service.time, "sleep", lambda s: None)
    context = Deadline(1.0)

    def resubmit(positions):
        context.remaining_s -= 0.3
        return [TR.slot_moved] * len(positions)

    assert _retry_slot_moves(context, [TR.slot_moving], [0], _MOVING_TRANSFER, resubmit) == [TR.slot_moved]
    assert context.remaining_s < 0.5


def test_a_failed_resend_keeps_the_answers_so_far(monkeypatch):
    monkeypatch.setattr(ledger_service.time, "sleep", lambda s: None)

    def resubmit(positions):
        raise RuntimeError("shard unavailable")

    codes = [TR.created, TR.slot_moving]
    assert _retry_slot_moves(Deadline(5.0), codes, [0, 0], _MOVING_TRANSFER, resubmit) == [TR.created,
                                                                                          TR.slot_moving]

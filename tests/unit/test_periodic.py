"""Background work's retry policy: delays double per failure, up to a cap; a success forgets the item."""

from __future__ import annotations

from tidebank.node.txn.escrow_coordinator import TIMER_RETRY_MAX_S, EscrowTimers
from tidebank.node.txn.periodic import RetryLater


def test_delays_double_per_failure_up_to_the_cap():
    retry = RetryLater(first_s=1.0, max_s=8.0)
    assert [retry.failed("t", 0.0) for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_an_item_is_left_alone_until_its_delay_has_passed():
    retry = RetryLater(first_s=1.0, max_s=8.0)
    retry.failed("t", 100.0)
    assert not retry.due("t", 100.5) and retry.due("t", 101.0) and retry.due("other", 100.5)


def test_a_success_forgets_the_failures():
    retry = RetryLater(first_s=1.0, max_s=8.0)
    for _ in range(3):
        retry.failed("t", 0.0)
    retry.succeeded("t")
    assert len(retry) == 0 and retry.failed("t", 0.0) == 1.0


def test_items_remembered_are_bounded_oldest_forgotten_first():
    retry = RetryLater(keys_max=3)
    for key in range(5):
        retry.failed(key, 0.0)
    assert len(retry) == 3 and retry.due(0, 0.0) and retry.due(1, 0.0) and not retry.due(4, 0.0)


def test_a_refused_trade_timer_is_tried_again_at_most_timer_retry_max_s_apart():
    timers = EscrowTimers(node=None, escrow_coordinator=None, start=False)
    delays = [timers.retry_later.failed(7, 0.0) for _ in range(10)]
    assert max(delays) == TIMER_RETRY_MAX_S < 30.0  # the bank test's bound on timers after healing is 30 s

"""The batcher coalesces concurrent requests into few entries and maps Raft outcomes to errors.

A fake `submit` stands in for the Raft replica here to isolate the unit; the real
replica is exercised by tests/unit/test_replica.py and the integration tests.
"""

import threading
import time

import pytest
from pysyncobj import FAIL_REASON

from tidebank.node.batcher import ShardBatcher
from tidebank.node.ledger.entry import decode_entry
from tidebank.node.ledger.operations import OP_CREATE_TRANSFERS, Operation
from tidebank.node.ledger.records import Transfer
from tidebank.node.outcomes import NotAppliedError, OutcomeUnknownError, OverloadedError


def op(*ids: int) -> Operation:
    return Operation(OP_CREATE_TRANSFERS, [Transfer(id=i) for i in ids])


class HeldRaft:
    """Records entries; answers them when told to, like a replica whose commits we control."""

    def __init__(self):
        self.entries = []
        self.submitted = threading.Event()

    def submit(self, payload, callback):
        self.entries.append((payload, callback))
        self.submitted.set()

    def answer_all(self, error=FAIL_REASON.SUCCESS):
        while self.entries:
            payload, callback = self.entries.pop(0)
            _, operations = decode_entry(payload)
            callback([[item.id for item in o.items] for o in operations] if error == 0 else None, error)


@pytest.fixture
def raft():
    return HeldRaft()


class Loop:
    """Stands in for the node's Raft loop: calls `propose` whenever the batcher wakes it (and every 5 ms)."""

    def __init__(self):
        self.woken = threading.Event()
        self.stopped = threading.Event()
        self.batcher = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def wake(self):
        self.woken.set()

    def start(self, batcher):
        self.batcher = batcher
        self.thread.start()
        return batcher

    def _run(self):
        while not self.stopped.is_set():
            self.woken.wait(0.005)
            self.woken.clear()
            self.batcher.propose()

    def stop(self):
        self.stopped.set()
        self.thread.join(5)


def driven(raft, **kwargs):
    loop = Loop()
    return loop, loop.start(ShardBatcher(0, raft.submit, wake=loop.wake, **kwargs))


@pytest.fixture
def batcher(raft):
    loop, b = driven(raft, in_flight_max=1, queue_items_max=10)
    yield b
    b.close()
    loop.stop()


def wait_for(predicate, timeout_s=5.0):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def test_requests_queued_behind_an_entry_in_flight_share_the_next_entry(batcher, raft):
    first = batcher.submit(op(1))
    raft.submitted.wait(5)
    second, third = batcher.submit(op(2, 3)), batcher.submit(op(4))
    raft.answer_all()
    assert first.result(5) == [1]
    wait_for(lambda: raft.entries)
    assert len(raft.entries) == 1
    raft.answer_all()
    assert second.result(5) == [2, 3] and third.result(5) == [4]
    assert batcher.entries_submitted == 2


def test_barrier_resolves_with_none_once_its_entry_applies(batcher, raft):
    barrier = batcher.submit(None)
    wait_for(lambda: raft.entries)
    raft.answer_all()
    assert barrier.result(5) is None


def test_not_applied_outcomes_raise_not_applied(batcher, raft):
    future = batcher.submit(op(1))
    wait_for(lambda: raft.entries)
    raft.answer_all(FAIL_REASON.NOT_LEADER)
    with pytest.raises(NotAppliedError):
        future.result(5)


def test_leader_change_outcome_is_unknown_not_a_failure(batcher, raft):
    future = batcher.submit(op(1))
    wait_for(lambda: raft.entries)
    raft.answer_all(FAIL_REASON.LEADER_CHANGED)
    with pytest.raises(OutcomeUnknownError):
        future.result(5)


def test_full_queue_refuses_instead_of_growing(batcher, raft):
    batcher.submit(op(1))
    wait_for(lambda: raft.entries)
    batcher.submit(op(*range(2, 11)))  # queued behind the entry in flight: 9 items
    with pytest.raises(OverloadedError):
        batcher.submit(op(20, 21))


def test_entry_never_answered_times_out_as_unknown_and_frees_its_slot(raft):
    loop, b = driven(raft, in_flight_max=1, entry_timeout_s=0.2)
    try:
        stuck = b.submit(op(1))
        with pytest.raises(OutcomeUnknownError):
            stuck.result(5)
        later = b.submit(op(2))
        wait_for(lambda: len(raft.entries) == 2)
        raft.entries.pop(0)
        raft.answer_all()
        assert later.result(5) == [2]
    finally:
        b.close()
        loop.stop()


def test_losing_leadership_ends_entries_in_flight_as_unknown_and_queued_ones_as_not_applied(raft):
    leading = threading.Event()
    leading.set()
    loop, b = driven(raft, in_flight_max=1, is_leader=leading.is_set)
    try:
        proposed = b.submit(op(1))
        wait_for(lambda: raft.entries)
        queued = b.submit(op(2))
        leading.clear()
        with pytest.raises(OutcomeUnknownError):
            proposed.result(5)
        with pytest.raises(NotAppliedError):
            queued.result(5)
    finally:
        b.close()
        loop.stop()

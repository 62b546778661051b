"""Leader placement: leadership goes back to a shard's preferred replica, without losing what was proposed."""

from __future__ import annotations

import time

import pytest
from pysyncobj.config import FAIL_REASON

from tests.unit.test_replica import Cluster, submit_many, submit_wait, wait_for
from tidebank.node.raft.placement import (
    ABANDON,
    KEEP,
    START,
    TRANSFER,
    HandoverState,
    LeaderView,
    PlacementTuning,
)

TUNING = PlacementTuning(stable_s=3.0, pause_s=0.5, retry_s=10.0, lag_max=16)


def view(now: float, *, leading_since: float = 0.0, last: int = 100, commit: int = 100, applied: int = 100,
         match: int = 100, responsive: bool = True) -> LeaderView:
    return LeaderView(now=now, leading_since=leading_since, last_index=last, commit_index=commit,
                      applied_index=applied, target_match_index=match, target_responsive=responsive)


# ---------------------------------------------------------------------- the policy


def test_a_new_leader_keeps_leading_until_it_has_led_for_the_stable_period():
    state = HandoverState(TUNING)
    assert state.decide(view(2.9)) == KEEP
    assert not state.holding_proposals
    assert state.decide(view(3.0)) == START
    assert state.holding_proposals


def test_no_handover_starts_while_the_preferred_replica_is_silent():
    state = HandoverState(TUNING)
    assert state.decide(view(5.0, responsive=False)) == KEEP
    assert not state.holding_proposals


def test_no_handover_starts_while_the_preferred_replica_lags_more_than_the_limit():
    state = HandoverState(TUNING)
    assert state.decide(view(5.0, last=100, match=100 - TUNING.lag_max - 1)) == KEEP
    assert state.decide(view(5.1, last=100, match=100 - TUNING.lag_max)) == START


@pytest.mark.parametrize("behind", [dict(match=99), dict(commit=99, applied=99), dict(applied=99)])
def test_timeout_now_waits_until_the_target_holds_and_this_leader_applied_the_whole_log(behind):
    state = HandoverState(TUNING)
    assert state.decide(view(5.0, **behind)) == START
    assert state.decide(view(5.1, **behind)) == KEEP
    assert state.decide(view(5.2)) == TRANSFER
    assert state.holding_proposals  # until leadership is gone or the pause runs out


def test_timeout_now_is_sent_once_per_handover():
    state = HandoverState(TUNING)
    assert state.decide(view(5.0)) == START
    assert state.decide(view(5.1)) == TRANSFER
    assert state.decide(view(5.2)) == KEEP


def test_a_handover_that_does_not_happen_in_the_pause_is_abandoned_and_retried_after_the_retry_period():
    state = HandoverState(TUNING)
    assert state.decide(view(5.0, match=90)) == START
    assert state.decide(view(5.0 + TUNING.pause_s, match=90)) == ABANDON
    assert not state.holding_proposals
    assert state.decide(view(5.0 + TUNING.pause_s + TUNING.retry_s - 0.01)) == KEEP
    assert state.decide(view(5.0 + TUNING.pause_s + TUNING.retry_s)) == START
    assert (state.handovers_started, state.handovers_abandoned) == (2, 1)


def test_losing_leadership_releases_held_proposals_and_delays_the_next_attempt():
    state = HandoverState(TUNING)
    assert state.decide(view(5.0)) == START
    state.reset(5.1)
    assert not state.holding_proposals
    assert state.decide(view(5.1 + TUNING.retry_s - 0.01, leading_since=0.0)) == KEEP


# ---------------------------------------------------------------------- real replicas

FAST_PLACEMENT = PlacementTuning(stable_s=0.5, pause_s=0.5, retry_s=1.0)


@pytest.fixture
def placed(tmp_path):
    c = Cluster(tmp_path, preferred="n2", placement=FAST_PLACEMENT)
    try:
        yield c
    finally:
        c.close()


def test_a_new_shard_is_led_by_its_preferred_replica(placed):
    placed.start_all()  # n2 campaigns first; if another wins anyway, it hands over after the stable period
    wait_for(lambda: placed.replicas[2].is_leader(), 10, what="the preferred replica to lead")


def test_leadership_returns_to_the_preferred_replica_once_it_is_back(placed):
    placed.start_all()
    wait_for(lambda: placed.replicas[2].is_leader(), 10, what="the preferred replica to lead")
    placed.stop(2)
    interim = placed.leader()
    assert interim.host.name != "n2"
    assert submit_wait(interim, b"while-away")[1] == FAIL_REASON.SUCCESS
    placed.start(2)
    wait_for(lambda: placed.replicas[2].is_leader(), 15, what="the preferred replica to lead again")
    assert interim.status()["handovers_started"] >= 1
    results = submit_many(placed.replicas[2], [b"after-%d" % i for i in range(20)])
    assert all(err == FAIL_REASON.SUCCESS for _, err in results.values())
    placed.wait_converged()
    contents = placed.contents(2)
    assert contents[b"count:while-away"] == b"1"


def test_no_handover_when_placement_is_off(tmp_path):
    c = Cluster(tmp_path, preferred="n2", placement=None)
    try:
        c.start_all()
        if c.leader().host.name == "n2":
            c.stop(2)
            c.leader()
            c.start(2)
        interim = c.leader().host.name
        assert interim != "n2"
        wait_for(lambda: c.replicas[2].status()["applied_index"] >= c.leader().status()["commit_index"], 10,
                 what="n2 to catch up")
        watch_until = time.monotonic() + 4 * FAST_PLACEMENT.stable_s  # a handover would have happened by now
        while time.monotonic() < watch_until:
            assert c.leader().host.name == interim
            time.sleep(0.05)
    finally:
        c.close()

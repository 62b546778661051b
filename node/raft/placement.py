"""Leader placement: a shard's leadership goes back to its preferred replica (OceanBase's primary zone).

Raft elects whichever replica times out first, so after a start or a failover the
leaders of a node's shards pile up on whichever nodes happened to win. Each node is
one Python process (one GIL): three leaders on one node and none on another leaves
a core idle while the busy node queues. The topology names a preferred leader per
shard (leaders spread over DCs); a leader that is not the preferred one hands over
to it once it is back and healthy, with Raft's leadership transfer (TimeoutNow,
built into pysyncobj): proposals are held, the target catches up to the last index,
then it is told to campaign at once and wins with an up-to-date log. Held proposals
are never lost: what the old leader proposed before the pause is committed on the
target too, what was queued after it is refused as "not leader" and retried by the
client at the new leader.

Opt-in (TIDEBANK_LEADER_HANDOVER=1): on one box it cost single-caller throughput (bench/RESULTS.md).
This module only decides; the replica (replica.py) carries the decisions out on the
Raft loop thread.
"""

from __future__ import annotations

from dataclasses import dataclass

HANDOVER_STABLE_S = 3.0  # lead at least this long before handing over (no flapping right after an election)
HANDOVER_PAUSE_S = 0.5  # proposals are held at most this long for one handover
HANDOVER_RETRY_S = 10.0  # after a handover that did not happen, wait this long before the next attempt
HANDOVER_LAG_MAX = 16  # entries the target may miss when the handover starts (it must catch up in the pause)


@dataclass(frozen=True)
class PlacementTuning:
    stable_s: float = HANDOVER_STABLE_S
    pause_s: float = HANDOVER_PAUSE_S
    retry_s: float = HANDOVER_RETRY_S
    lag_max: int = HANDOVER_LAG_MAX


@dataclass(frozen=True)
class LeaderView:
    """What the leader knows at one tick, as plain values (the policy never touches pysyncobj)."""

    now: float
    leading_since: float
    last_index: int
    commit_index: int
    applied_index: int
    target_match_index: int  # the preferred replica's match index (0 if unknown)
    target_responsive: bool  # connected and answered within the leader fallback timeout


# Decisions
KEEP = "keep"  # nothing to do
START = "start"  # hold proposals from now on (a handover begins)
TRANSFER = "transfer"  # the target is caught up: send TimeoutNow
ABANDON = "abandon"  # the pause ran out: resume proposals and retry later


class HandoverState:
    """One replica's handover progress; `decide` is called by the leader at every tick."""

    def __init__(self, tuning: PlacementTuning = PlacementTuning()) -> None:
        self.tuning = tuning
        self.pausing_until: float | None = None  # proposals held while set
        self.transfer_sent = False
        self.next_attempt_at = 0.0
        self.handovers_started = 0
        self.handovers_abandoned = 0

    @property
    def holding_proposals(self) -> bool:
        return self.pausing_until is not None

    def reset(self, now: float) -> None:
        """Leadership lost (or never held): nothing held any more."""
        if self.pausing_until is not None:
            self.next_attempt_at = now + self.tuning.retry_s
        self.pausing_until = None
        self.transfer_sent = False

    def decide(self, view: LeaderView) -> str:
        t = self.tuning
        if self.pausing_until is not None:
            if view.now >= self.pausing_until:
                self.pausing_until = None
                self.transfer_sent = False
                self.next_attempt_at = view.now + t.retry_s
                self.handovers_abandoned += 1
                return ABANDON
            caught_up = (view.target_match_index == view.last_index == view.commit_index == view.applied_index)
            if not self.transfer_sent and caught_up and view.target_responsive:
                self.transfer_sent = True
                return TRANSFER
            return KEEP
        if view.now < self.next_attempt_at or view.now - view.leading_since < t.stable_s:
            return KEEP
        if not view.target_responsive or view.last_index - view.target_match_index > t.lag_max:
            return KEEP
        self.pausing_until = view.now + t.pause_s
        self.transfer_sent = False
        self.handovers_started += 1
        return START

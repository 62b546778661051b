"""Which slots to move so that shards carry even shares of the load and the data.

Pure planning: the inputs are what nodes report for each shard's leader (slots held, accounts
held, items applied per second between two polls); the output is a list of moves for
`cluster/slot_moves.py`. Keys hash evenly over slots, so within a shard each slot is taken to
carry an even share of that shard's load and size (a single hot account breaks that; it
cannot be split by moving slots anyway).

A shard's weight is its share of the cluster's load, of its accounts and of its slots,
mixed LOAD_WEIGHT : SIZE_WEIGHT : SLOTS_WEIGHT (a part whose cluster total is zero, such as
the load of an idle cluster, drops out). The plan moves slots from the heaviest shard to the
lightest until every shard is within `tolerance` of the mean weight, `slots_per_move` at a
time at most, `moves_max` moves at most.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

LOAD_WEIGHT = 0.4
SIZE_WEIGHT = 0.4
SLOTS_WEIGHT = 0.2
TOLERANCE = 0.15  # a shard within 15 % of the mean weight is balanced
MOVES_MAX = 64


@dataclass(frozen=True)
class ShardLoad:
    shard_id: int
    slots: tuple[int, ...]
    accounts: int = 0
    items_per_s: float = 0.0


@dataclass(frozen=True)
class PlannedMove:
    slots: tuple[int, ...]
    source: int
    target: int


def shard_weights(shards: Sequence[ShardLoad]) -> dict[int, float]:
    """Each shard's weight (they sum to 1, or are all 0 when no shard holds anything)."""
    parts = [(LOAD_WEIGHT, [s.items_per_s for s in shards]), (SIZE_WEIGHT, [float(s.accounts) for s in shards]),
             (SLOTS_WEIGHT, [float(len(s.slots)) for s in shards])]
    parts = [(w, values) for w, values in parts if sum(values) > 0]
    total_weight = sum(w for w, _ in parts)
    weights = {s.shard_id: 0.0 for s in shards}
    for w, values in parts:
        total = sum(values)
        for s, value in zip(shards, values, strict=True):
            weights[s.shard_id] += (w / total_weight) * value / total
    return weights


def plan_slot_moves(shards: Sequence[ShardLoad], *, slots_per_move: int, moves_max: int = MOVES_MAX,
                    tolerance: float = TOLERANCE) -> list[PlannedMove]:
    """Moves that bring every shard within `tolerance` of the mean weight (or as close as whole slots allow)."""
    if slots_per_move < 1:
        raise ValueError(f"slots_per_move must be at least 1, not {slots_per_move}")
    if len(shards) < 2:
        return []
    weights = shard_weights(shards)
    held = {s.shard_id: sorted(s.slots) for s in shards}
    mean = 1.0 / len(shards)
    plan: list[PlannedMove] = []
    while len(plan) < moves_max:
        heavy = max(held, key=lambda s: (weights[s], len(held[s]), -s))
        light = min(held, key=lambda s: (weights[s], len(held[s]), s))
        if weights[heavy] - mean <= tolerance * mean and mean - weights[light] <= tolerance * mean:
            break
        if len(held[heavy]) < 2:
            break  # its weight is one slot's: moving that slot only moves the imbalance
        per_slot = weights[heavy] / len(held[heavy])
        wanted = (min(weights[heavy] - mean, mean - weights[light]) if weights[light] < mean
                  else weights[heavy] - mean)
        count = max(1, min(slots_per_move, len(held[heavy]) - 1, round(wanted / per_slot)))
        if count * per_slot >= weights[heavy] - weights[light]:
            break  # whole slots cannot get closer: the move would overshoot the lighter shard
        moving = tuple(held[heavy][-count:])  # from the top of its highest range: ranges stay few
        held[heavy] = held[heavy][:-count]
        held[light] = sorted(held[light] + list(moving))
        weights[heavy] -= count * per_slot
        weights[light] += count * per_slot
        plan.append(PlannedMove(moving, heavy, light))
    return plan

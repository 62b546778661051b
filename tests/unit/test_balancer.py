"""Balancing plans: slots go from heavy shards to light ones until every shard is near the mean."""

from __future__ import annotations

import pytest

from tidebank.cluster.balancer import ShardLoad, plan_slot_moves, shard_weights


def _even(shards: int, slot_count: int = 4096, **load) -> list[ShardLoad]:
    per = slot_count // shards
    return [ShardLoad(s, tuple(range(s * per, (s + 1) * per)), **load) for s in range(shards)]


def _after(shards: list[ShardLoad], plan) -> dict[int, int]:
    held = {s.shard_id: len(s.slots) for s in shards}
    for move in plan:
        held[move.source] -= len(move.slots)
        held[move.target] += len(move.slots)
    return held


def test_four_new_empty_shards_each_get_half_of_a_full_ones_slots():
    shards = _even(4, accounts=25_000, items_per_s=1_000.0) + [ShardLoad(s, ()) for s in range(4, 8)]
    plan = plan_slot_moves(shards, slots_per_move=256)
    assert _after(shards, plan) == {s: 512 for s in range(8)}
    assert all(len(m.slots) <= 256 and m.source < 4 <= m.target for m in plan)


def test_an_even_cluster_needs_no_move():
    assert plan_slot_moves(_even(4, accounts=1_000, items_per_s=50.0), slots_per_move=64) == []


def test_a_hot_shard_gives_slots_to_a_cold_one_in_proportion_to_its_load():
    shards = [ShardLoad(0, tuple(range(0, 2048)), 50_000, 9_000.0),
              ShardLoad(1, tuple(range(2048, 4096)), 50_000, 1_000.0)]
    plan = plan_slot_moves(shards, slots_per_move=256)
    assert plan and all(m.source == 0 and m.target == 1 for m in plan)
    moved = sum(len(m.slots) for m in plan)
    assert 300 < moved < 800  # about a quarter of its slots: load and size then balance between the two


def test_a_move_takes_slots_from_the_top_of_the_source_so_its_ranges_stay_few():
    shards = [ShardLoad(0, tuple(range(0, 100))), ShardLoad(1, ())]
    (move,) = plan_slot_moves(shards, slots_per_move=32, moves_max=1)
    assert move.slots == tuple(range(68, 100))


def test_moves_are_bounded_in_size_and_number():
    shards = [ShardLoad(0, tuple(range(4096))), ShardLoad(1, ())]
    plan = plan_slot_moves(shards, slots_per_move=100, moves_max=3)
    assert [len(m.slots) for m in plan] == [100, 100, 100]
    with pytest.raises(ValueError, match="at least 1"):
        plan_slot_moves(shards, slots_per_move=0)


def test_a_shard_whose_weight_is_one_slot_is_not_split():
    assert plan_slot_moves([ShardLoad(0, (0,), 10, 5.0), ShardLoad(1, ())], slots_per_move=8) == []


def test_weights_ignore_a_measure_no_shard_has_and_sum_to_one():
    weights = shard_weights([ShardLoad(0, (0, 1, 2)), ShardLoad(1, (3,))])  # no accounts, no load: slots only
    assert weights == {0: 0.75, 1: 0.25}
    assert shard_weights([ShardLoad(0, ()), ShardLoad(1, ())]) == {0: 0.0, 1: 0.0}

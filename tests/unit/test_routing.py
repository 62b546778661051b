"""The router splits batches by shard, keeps linked chains whole, and rejects what spans shards."""

import pytest

from tidebank.common.keys import slot_of
from tidebank.node.api.routing import ShardMap, chains, route_accounts, route_transfers
from tidebank.node.ledger.records import Account, AccountFlags, Transfer, TransferFlags
from tidebank.node.ledger.results import CreateAccountResult, CreateTransferResult

SLOTS = 64
MAP = ShardMap(1, SLOTS, {0: [(0, 16)], 1: [(16, 32)], 2: [(32, 48)], 3: [(48, 64)]})


def ids_on(shard: int, count: int, start: int = 1) -> list[int]:
    found, candidate = [], start
    while len(found) < count:
        if MAP.shard_of(candidate) == shard:
            found.append(candidate)
        candidate += 1
    return found


def test_shard_of_follows_the_slot_hash():
    for key in range(1, 200):
        slot = slot_of(key, SLOTS)
        assert MAP.shard_of(key) == slot // 16


def test_shard_map_rejects_overlapping_slots():
    with pytest.raises(ValueError, match="assigned to shards"):
        ShardMap(1, 4, {0: [(0, 3)], 1: [(2, 4)]})


def test_shard_map_rejects_unassigned_slots():
    with pytest.raises(ValueError, match="have no shard"):
        ShardMap(1, 4, {0: [(0, 3)]})


def test_chains_split_on_the_item_closing_each_chain():
    linked = TransferFlags.LINKED
    assert chains([0, linked, linked, 0, 0], linked) == [range(0, 1), range(1, 4), range(4, 5)]


def test_open_chain_at_the_end_stays_one_chain():
    linked = TransferFlags.LINKED
    assert chains([0, linked, linked], linked) == [range(0, 1), range(1, 3)]


def test_transfers_go_to_their_debit_accounts_shard_in_request_order():
    a0, b0 = ids_on(0, 2)
    a2, b2 = ids_on(2, 2)
    t0, t1 = ids_on(2, 2, start=1000)
    (t2,) = ids_on(0, 1, start=1000)
    batch = [Transfer(id=t0, debit_account_id=a2, credit_account_id=b2),
             Transfer(id=t2, debit_account_id=a0, credit_account_id=b0),
             Transfer(id=t1, debit_account_id=b2, credit_account_id=a2)]
    routed = route_transfers(batch, MAP)
    assert routed.codes == {}
    assert routed.sub_batches[2].positions == [0, 2]
    assert routed.sub_batches[0].positions == [1]
    assert routed.merge({2: [0, 55], 0: [46]}) == [0, 46, 55]


def test_transfer_between_shards_becomes_a_group_coordinated_by_its_debit_shard():
    (a0,) = ids_on(0, 1)
    (a1,) = ids_on(1, 1)
    routed = route_transfers([Transfer(id=1, debit_account_id=a0, credit_account_id=a1)], MAP)
    assert routed.sub_batches == {} and routed.codes == {}
    (group,) = routed.groups
    assert (group.coordinator_shard, group.positions) == (0, [0])
    assert routed.merge({}, [[CreateTransferResult.created]]) == [CreateTransferResult.created]


def test_chain_with_a_cross_shard_item_becomes_one_group_in_chain_order():
    a0, b0 = ids_on(0, 2)
    (a1,) = ids_on(1, 1)
    linked = TransferFlags.LINKED
    batch = [Transfer(id=1, debit_account_id=a0, credit_account_id=b0, flags=linked),
             Transfer(id=2, debit_account_id=a0, credit_account_id=a1, flags=linked),
             Transfer(id=3, debit_account_id=b0, credit_account_id=a0)]
    routed = route_transfers(batch, MAP)
    assert routed.sub_batches == {}
    (group,) = routed.groups
    assert group.positions == [0, 1, 2] and [t.id for t in group.items] == [1, 2, 3]


def test_chain_whose_items_debit_different_shards_is_coordinated_by_the_first():
    a0, b0 = ids_on(0, 2)
    a1, b1 = ids_on(1, 2)
    batch = [Transfer(id=1, debit_account_id=a1, credit_account_id=b1, flags=TransferFlags.LINKED),
             Transfer(id=2, debit_account_id=a0, credit_account_id=b0)]
    (group,) = route_transfers(batch, MAP).groups
    assert group.coordinator_shard == 1


def test_merge_refuses_a_group_without_an_answer():
    (a0,) = ids_on(0, 1)
    (a1,) = ids_on(1, 1)
    routed = route_transfers([Transfer(id=1, debit_account_id=a0, credit_account_id=a1)], MAP)
    with pytest.raises(AssertionError):
        routed.merge({})


def test_chain_on_one_shard_stays_contiguous_in_its_sub_batch():
    a0, b0 = ids_on(0, 2)
    a1, b1 = ids_on(1, 2)
    t0, t1 = ids_on(0, 2, start=1000)
    (t2,) = ids_on(1, 1, start=1000)
    linked = TransferFlags.LINKED
    batch = [Transfer(id=t0, debit_account_id=a0, credit_account_id=b0, flags=linked),
             Transfer(id=t1, debit_account_id=b0, credit_account_id=a0),
             Transfer(id=t2, debit_account_id=a1, credit_account_id=b1)]
    routed = route_transfers(batch, MAP)
    assert routed.sub_batches[0].positions == [0, 1]
    assert routed.sub_batches[1].positions == [2]


def test_post_without_debit_account_is_rejected_because_it_cannot_be_routed():
    routed = route_transfers([Transfer(id=5, pending_id=4, flags=TransferFlags.POST_PENDING_TRANSFER)], MAP)
    assert routed.codes == {0: CreateTransferResult.debit_account_id_must_not_be_zero}


def test_transfer_with_zero_credit_account_reaches_the_state_machine_for_its_own_code():
    (a0,) = ids_on(0, 1)
    (t0,) = ids_on(0, 1, start=1000)
    routed = route_transfers([Transfer(id=t0, debit_account_id=a0)], MAP)
    assert routed.codes == {}
    assert routed.sub_batches[0].positions == [0]


def test_a_transfer_whose_id_lives_on_another_shard_is_a_group_with_that_shard():
    a0, b0 = ids_on(0, 2)
    (t3,) = ids_on(3, 1, start=1000)
    routed = route_transfers([Transfer(id=t3, debit_account_id=a0, credit_account_id=b0)], MAP)
    assert routed.sub_batches == {}
    (group,) = routed.groups
    assert (group.coordinator_shard, group.positions) == (0, [0])


def test_a_chain_with_one_id_living_elsewhere_becomes_one_group():
    a0, b0 = ids_on(0, 2)
    (t0,) = ids_on(0, 1, start=1000)
    (t1,) = ids_on(1, 1, start=1000)
    linked = TransferFlags.LINKED
    batch = [Transfer(id=t0, debit_account_id=a0, credit_account_id=b0, flags=linked),
             Transfer(id=t1, debit_account_id=b0, credit_account_id=a0)]
    routed = route_transfers(batch, MAP)
    assert routed.sub_batches == {}
    (group,) = routed.groups
    assert group.positions == [0, 1]


def test_accounts_go_to_the_shard_of_their_id():
    (a3,) = ids_on(3, 1)
    routed = route_accounts([Account(id=a3)], MAP)
    assert list(routed.sub_batches) == [3]


def test_account_chain_across_shards_fails_whole():
    (a0,) = ids_on(0, 1)
    (a1,) = ids_on(1, 1)
    routed = route_accounts([Account(id=a0, flags=AccountFlags.LINKED), Account(id=a1)], MAP)
    assert routed.merge({}) == [CreateAccountResult.linked_event_failed, CreateAccountResult.chain_spans_shards]


def test_merge_refuses_a_shard_answer_of_the_wrong_length():
    a0, b0 = ids_on(0, 2)
    routed = route_transfers([Transfer(id=1, debit_account_id=a0, credit_account_id=b0)], MAP)
    with pytest.raises(AssertionError):
        routed.merge({0: [0, 0]})


# --- transfers and accounts in binary form route exactly as the objects they stand for

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tidebank.node.api.routing import route_packed_accounts, route_packed_transfers, split_records  # noqa: E402
from tidebank.node.ledger.records import pack_account, pack_transfer  # noqa: E402

_small_ids = st.integers(0, 300)
_flag_bits = st.sampled_from([0, TransferFlags.LINKED, TransferFlags.POST_PENDING_TRANSFER,
                              TransferFlags.LINKED | TransferFlags.PENDING])
_transfer_lists = st.lists(st.builds(Transfer, id=_small_ids, debit_account_id=_small_ids,
                                     credit_account_id=_small_ids, flags=_flag_bits), max_size=30)


def _shape(routed):
    return ({s: sub.positions for s, sub in routed.sub_batches.items()}, routed.codes,
            [(g.coordinator_shard, g.positions, g.items) for g in routed.groups])


@given(_transfer_lists)
def test_packed_transfers_route_like_the_transfers_they_stand_for(transfers):
    packed = route_packed_transfers([pack_transfer(t) for t in transfers], MAP)
    assert _shape(packed) == _shape(route_transfers(transfers, MAP))
    for sub in packed.sub_batches.values():  # the records go on unchanged
        assert list(sub.items) == [pack_transfer(transfers[p]) for p in sub.positions]


@given(st.lists(st.builds(Account, id=_small_ids, flags=st.sampled_from([0, AccountFlags.LINKED])), max_size=30))
def test_packed_accounts_route_like_the_accounts_they_stand_for(accounts):
    packed = route_packed_accounts([pack_account(a) for a in accounts], MAP)
    assert _shape(packed) == _shape(route_accounts(accounts, MAP))


def test_a_packed_field_must_hold_whole_records():
    assert split_records(b"x" * 256, 128) == [b"x" * 128] * 2
    with pytest.raises(ValueError, match="whole number"):
        split_records(b"x" * 129, 128)

"""Client values, conversions, ids and the pure core (no network)."""

from __future__ import annotations

import threading

import grpc
import pytest

from tidebank.client import (
    Account,
    AccountFlags,
    AccountResult,
    CreateAccountResult,
    CreateTransferResult,
    InvalidRequestError,
    ReadConsistency,
    ShardMap,
    Transfer,
    TransferFlags,
    TransferResult,
    _core,
    _model,
    new_id,
    u128_from_proto,
    u128_to_proto,
)
from tidebank.client._errors import FieldViolation
from tidebank.client.testing import rich_status
from tidebank.common.keys import U128_MAX, slot_of
from tidebank.v1 import admin_pb2, ledger_pb2, types_pb2

# --------------------------------------------------------------------------- u128 and conversions


@pytest.mark.parametrize("value", [0, 1, (1 << 64) - 1, 1 << 64, (1 << 64) + 1, 0xDEADBEEF << 70, U128_MAX])
def test_u128_round_trip(value: int) -> None:
    m = u128_to_proto(value)
    assert (m.hi, m.lo) == (value >> 64, value & ((1 << 64) - 1))
    assert u128_from_proto(types_pb2.U128.FromString(m.SerializeToString())) == value


@pytest.mark.parametrize("value", [-1, U128_MAX + 1])
def test_u128_out_of_range(value: int) -> None:
    with pytest.raises(ValueError):
        u128_to_proto(value)


def test_account_round_trip() -> None:
    a = Account(
        U128_MAX - 1,
        debits_pending=1,
        debits_posted=2,
        credits_pending=3,
        credits_posted=(1 << 64) - 1,
        user_data_128=(1 << 127) + 5,
        user_data_64=7,
        user_data_32=8,
        ledger=9,
        code=10,
        flags=AccountFlags.LINKED | AccountFlags.HISTORY,
        timestamp=11,
    )
    m = types_pb2.Account.FromString(_model.account_to_proto(a).SerializeToString())
    back = _model.account_from_proto(m)
    assert back == a
    assert isinstance(back.flags, AccountFlags)
    assert Account(5) == _model.account_from_proto(_model.account_to_proto(Account(5)))


def test_transfer_round_trip() -> None:
    t = Transfer(
        new_id(),
        debit_account_id=1 << 100,
        credit_account_id=3,
        amount=(1 << 64) - 1,
        pending_id=(1 << 90) + 1,
        user_data_128=4,
        user_data_64=5,
        user_data_32=6,
        timeout=7,
        ledger=8,
        code=9,
        flags=TransferFlags.PENDING | TransferFlags.BALANCING_CREDIT,
        timestamp=10,
    )
    back = _model.transfer_from_proto(types_pb2.Transfer.FromString(_model.transfer_to_proto(t).SerializeToString()))
    assert back == t
    assert isinstance(back.flags, TransferFlags)


def test_keyword_only_fields() -> None:
    with pytest.raises(TypeError):
        Account(1, 2)  # type: ignore[misc]


# --------------------------------------------------------------------------- enums


def test_result_enums_match_proto() -> None:
    for enum_cls, desc, prefix in (
        (CreateAccountResult, types_pb2.CreateAccountResult.DESCRIPTOR, "CREATE_ACCOUNT_RESULT_"),
        (CreateTransferResult, types_pb2.CreateTransferResult.DESCRIPTOR, "CREATE_TRANSFER_RESULT_"),
    ):
        want = {v.name.removeprefix(prefix).lower(): v.number for v in desc.values}
        assert {m.name: m.value for m in enum_cls} == want
    assert CreateTransferResult.exceeds_credits == types_pb2.CREATE_TRANSFER_RESULT_EXCEEDS_CREDITS
    assert CreateAccountResult.exists == types_pb2.CREATE_ACCOUNT_RESULT_EXISTS
    assert CreateTransferResult(0) is CreateTransferResult.created


def test_flag_enums_match_proto() -> None:
    for flag_cls, desc, prefix in (
        (AccountFlags, types_pb2.AccountFlag.DESCRIPTOR, "ACCOUNT_FLAG_"),
        (TransferFlags, types_pb2.TransferFlag.DESCRIPTOR, "TRANSFER_FLAG_"),
        (ReadConsistency, ledger_pb2.ReadConsistency.DESCRIPTOR, "READ_CONSISTENCY_"),
    ):
        want = {v.name.removeprefix(prefix): v.number for v in desc.values}
        assert {k: int(v) for k, v in flag_cls.__members__.items()} == want
    assert TransferFlags.POST_PENDING_TRANSFER == 4
    assert AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS == 2


def test_result_ok() -> None:
    assert AccountResult(0, 1, CreateAccountResult.created).ok
    assert AccountResult(0, 1, CreateAccountResult.exists).ok
    assert not AccountResult(0, 1, CreateAccountResult.exists_with_different_flags).ok
    assert TransferResult(0, 1, CreateTransferResult.exists).ok
    assert not TransferResult(0, 1, CreateTransferResult.exceeds_credits).ok
    with pytest.raises(AttributeError):
        TransferResult(0, 1, CreateTransferResult.created).index = 3  # type: ignore[misc]


def test_unknown_result_code_is_kept() -> None:
    assert _model._transfer_status(999) == 999


# --------------------------------------------------------------------------- ids


def test_new_id_layout() -> None:
    import time

    before = time.time_ns() // 1_000_000
    i = new_id()
    after = time.time_ns() // 1_000_000
    assert 0 < i < U128_MAX
    assert before <= i >> 80 <= after + 1


def test_new_id_monotonic_and_unique_under_threads() -> None:
    per_thread = 2000
    out: list[list[int]] = []
    barrier = threading.Barrier(8)

    def run() -> None:
        barrier.wait()
        ids = [new_id() for _ in range(per_thread)]
        out.append(ids)

    threads = [threading.Thread(target=run) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    flat = [i for ids in out for i in ids]
    assert len(set(flat)) == len(flat) == 8 * per_thread
    for ids in out:
        assert all(a < b for a, b in zip(ids, ids[1:], strict=False))


def test_new_id_strictly_increasing_within_a_millisecond(monkeypatch: pytest.MonkeyPatch) -> None:
    gen = _model._IdGenerator()
    monkeypatch.setattr(_model.time, "time_ns", lambda: 1_700_000_000_000 * 1_000_000)
    ids = [gen() for _ in range(1000)]
    assert all(b == a + 1 for a, b in zip(ids, ids[1:], strict=False)) or all(
        a < b for a, b in zip(ids, ids[1:], strict=False)
    )
    assert {i >> 80 for i in ids} <= {1_700_000_000_000, 1_700_000_000_001}
    # the clock going backwards does not make ids go backwards
    monkeypatch.setattr(_model.time, "time_ns", lambda: 1_600_000_000_000 * 1_000_000)
    assert gen() > ids[-1]


def test_new_id_random_overflow_bumps_the_millisecond(monkeypatch: pytest.MonkeyPatch) -> None:
    gen = _model._IdGenerator()
    monkeypatch.setattr(_model.time, "time_ns", lambda: 5 * 1_000_000)
    monkeypatch.setattr(_model.os, "urandom", lambda n: b"\xff" * n)
    a = gen()
    b = gen()
    assert a >> 80 == 5 and b >> 80 == 6 and b > a


# --------------------------------------------------------------------------- shard map


def _map_proto(shards: int = 2, slot_count: int = 16) -> admin_pb2.ShardMap:
    m = admin_pb2.ShardMap(version=3, slot_count=slot_count)
    per = slot_count // shards
    for s in range(shards):
        sh = m.shards.add(shard_id=s, leader_node=f"n{s}")
        sh.slots.add(start=s * per, end=(s + 1) * per)
        for n in range(shards):
            sh.replicas.add(node=f"n{n}", dc=f"dc{n}", address=f"h{n}:1")
    return m


def test_shard_map_lookup() -> None:
    smap = ShardMap.from_proto(_map_proto())
    assert smap.version == 3 and smap.slot_count == 16
    assert smap.shards[1].leader_address == "h1:1" and smap.shards[1].leader.dc == "dc1"
    for key in range(100):
        assert smap.shard_id_for(key) == slot_of(key, 16) // 8
    assert smap.addresses() == ["h0:1", "h1:1"]
    m = _map_proto()
    del m.shards[1].slots[:]
    assert any(ShardMap.from_proto(m).shard_id_for(k) is None for k in range(100))


# --------------------------------------------------------------------------- encoding and planning


def _cfg(**kw: object) -> _core.Config:
    args = {
        "addresses": "a:1, b:2,a:1",
        "timeout_s": 5.0,
        "max_batch_items": 8189,
        "max_in_flight_per_shard": 2,
        "max_queued_items_per_shard": 1000,
        "attempt_timeout_s": None,
        "backoff_base_s": 0.01,
        "backoff_max_s": 0.5,
        "options": (),
    }
    args.update(kw)
    return _core.Config.make(**args)  # type: ignore[arg-type]


def test_config_parses_addresses() -> None:
    assert _cfg().seeds == ("a:1", "b:2")
    with pytest.raises(ValueError):
        _cfg(addresses=" , ")
    with pytest.raises(ValueError):
        _cfg(max_batch_items=8190)


def test_frames_concatenate_into_a_request() -> None:
    items = [Transfer(i + 1, debit_account_id=7, credit_account_id=8, amount=i, ledger=1, code=1) for i in range(300)]
    items[5].user_data_128 = U128_MAX  # a long item (> 127 bytes needs a 2-byte length)
    items[5].user_data_64 = (1 << 64) - 1
    items[5].pending_id = U128_MAX - 1
    frames, keys, ids, units = _core.encode_items(_core.TRANSFERS, items)
    assert all(len(f) == 128 for f in frames)  # transfers go in their 128-byte binary form
    body = _core.TRANSFERS.packed_tag + _core._varint(128 * 300) + b"".join(frames)
    req = ledger_pb2.CreateTransfersRequest.FromString(body)
    assert not req.transfers and _model.transfers_from_records(req.transfers_packed) == items
    assert keys == [7] * 300 and ids == list(range(1, 301))
    assert units == [(i, i + 1) for i in range(300)]


def test_a_transfer_field_out_of_range_is_refused_before_anything_is_sent() -> None:
    bad = Transfer(1, debit_account_id=7, credit_account_id=8, amount=1 << 64, ledger=1, code=1)
    with pytest.raises(InvalidRequestError) as caught:
        _core.encode_items(_core.TRANSFERS, [Transfer(2, debit_account_id=7, credit_account_id=8), bad])
    assert [v.field for v in caught.value.field_violations] == ["transfers[1].amount"]


def test_units_keep_linked_chains() -> None:
    L = TransferFlags.LINKED
    flags = [0, L, L, 0, 0, L, 0, L, L]  # chain 1..3, chain 5..6, open chain 7..8
    items = [Transfer(i + 1, debit_account_id=1, credit_account_id=2, flags=f) for i, f in enumerate(flags)]
    assert _core.encode_items(_core.TRANSFERS, items)[3] == [(0, 1), (1, 4), (4, 5), (5, 7), (7, 9)]


def test_bad_field_is_reported_before_sending() -> None:
    items = [Transfer(1, debit_account_id=1, credit_account_id=2, amount=-5), Transfer(U128_MAX + 1)]
    with pytest.raises(InvalidRequestError) as ei:
        _core.encode_items(_core.TRANSFERS, items)
    assert [v.field for v in ei.value.field_violations] == ["transfers[0].amount", "transfers[1].id"]
    with pytest.raises(TypeError):
        _core.encode_items(_core.TRANSFERS, [Account(1)])


def _two_shard_map() -> ShardMap:
    return ShardMap.from_proto(_map_proto(shards=2, slot_count=4096))


def test_plan_splits_by_shard_and_limit_without_splitting_chains() -> None:
    smap = _two_shard_map()
    L = TransferFlags.LINKED
    k0 = [k for k in range(1, 500) if smap.shard_id_for(k) == 0][:3]
    k1 = [k for k in range(1, 500) if smap.shard_id_for(k) == 1][:3]
    items = [
        Transfer(1, debit_account_id=k0[0], credit_account_id=9),
        Transfer(2, debit_account_id=k1[0], credit_account_id=9, flags=L),
        Transfer(3, debit_account_id=k0[1], credit_account_id=9, flags=L),  # the chain follows its first item
        Transfer(4, debit_account_id=k0[2], credit_account_id=9),
        Transfer(5, debit_account_id=k0[0], credit_account_id=9),
        Transfer(6, debit_account_id=k0[1], credit_account_id=9),
        Transfer(7, debit_account_id=k0[1], credit_account_id=9),
    ]
    call = _core.WriteCall(_core.TRANSFERS, items, _cfg(max_batch_items=3), None, 0.0)
    entries = {e.shard_id: e for e in call.plan(smap) or []}
    assert entries[0].indexes == [0, 4, 5]
    assert entries[1].indexes == [1, 2, 3]
    for e in entries.values():
        e.outcome = [0] * e.n
    assert call.absorb(list(entries.values()), 0.0) is not None
    (last,) = call.plan(smap) or []
    assert last.shard_id == 0 and last.indexes == [6]
    last.outcome = [46]
    assert call.absorb([last], 0.0) is None
    assert [(r.index, r.id, r.status.name) for r in call.results()] == [
        (i, i + 1, "exists" if i == 6 else "created") for i in range(7)
    ]


def test_chain_longer_than_limit_is_refused() -> None:
    L = TransferFlags.LINKED
    items = [Transfer(i + 1, debit_account_id=1, credit_account_id=2, flags=L) for i in range(3)]
    items.append(Transfer(4, debit_account_id=1, credit_account_id=2))
    with pytest.raises(InvalidRequestError, match="linked chain"):
        _core.WriteCall(_core.TRANSFERS, items, _cfg(max_batch_items=3), None, 0.0)


def test_plan_rounds_keep_request_order_per_shard() -> None:
    smap = _two_shard_map()
    k0 = [k for k in range(1, 500) if smap.shard_id_for(k) == 0][:1] * 5
    items = [Transfer(i + 1, debit_account_id=k, credit_account_id=9) for i, k in enumerate(k0)]
    call = _core.WriteCall(_core.TRANSFERS, items, _cfg(max_batch_items=2), None, 0.0)
    seen = []
    verdicts = []
    while not call.done:
        (entry,) = call.plan(smap) or []
        seen.append(entry.indexes)
        entry.outcome = [0] * entry.n
        verdicts.append(call.absorb([entry], 0.0))
    assert seen == [[0, 1], [2, 3], [4]]
    # The round that resolves the last items ends the call (None); the earlier ones go on at once:
    # no backoff and no map refresh after a round that succeeded.
    assert verdicts == [_core.Verdict(0.0, False), _core.Verdict(0.0, False), None]
    assert [r.index for r in call.results()] == [0, 1, 2, 3, 4]


# --------------------------------------------------------------------------- queue and settlement


class _W:
    def __init__(self) -> None:
        self.n = 0

    def done_one(self) -> None:
        self.n += 1


def _entry(indexes: list[int], solo: bool = False) -> _core.Entry:
    e = _core.Entry(0, [0], indexes, b"x" * len(indexes), solo, 1e9)
    e.waiter = _W()
    return e


def test_queue_batches_whole_entries_up_to_the_limit() -> None:
    q = _core.QueueState(_core.TRANSFERS, 0)
    es = [_entry([0, 1, 2]), _entry([0, 1]), _entry([0, 1, 2, 3]), _entry([0]), _entry([0], solo=True), _entry([0])]
    for e in es:
        q.push(e)
    q.cancel(es[3], _core.Failure(_core.Failure.RETRY, "x"))
    batches = q.take(max_items=6, max_in_flight=2)
    assert [[len(e.indexes) for e in b] for b in batches] == [[3, 2], [4]]
    assert q.in_flight == 2 and q.queued_items == 2
    assert q.take(6, 2) == []
    q.in_flight = 0
    batches = q.take(6, 5)
    assert [[len(e.indexes) for e in b] for b in batches] == [[1], [1]]  # solo goes alone
    assert q.queued_items == 0 and not q.entries and q.in_flight == 2
    # An empty queue admits a call of any size (else a call larger than the bound could never be sent);
    # a non-empty one only what fits under the bound.
    assert q.has_room(10_000, 4)
    q.push(_entry([0, 1, 2]))
    assert q.queued_items == 3 and q.has_room(1, 4) and not q.has_room(2, 4)


def test_settle_distributes_results_in_order() -> None:
    a, b = _entry([4, 7]), _entry([0, 1, 2])
    _core.settle_batch([a, b], "transfers", [10, 11, 12, 13, 14], None)
    assert a.outcome == [10, 11] and b.outcome == [12, 13, 14]
    assert a.waiter.n == 1 and a.state == _core.DONE


def test_settle_wrong_result_count_is_ambiguous() -> None:
    a = _entry([0, 1])
    _core.settle_batch([a], "transfers", [0], None)
    assert isinstance(a.outcome, _core.Failure) and a.outcome.ambiguous


def test_settle_invalid_blames_only_the_offending_call() -> None:
    a, b, c = _entry([0, 1]), _entry([3, 5, 9]), _entry([2])
    f = _core.Failure(
        _core.Failure.INVALID,
        "bad",
        violations=[FieldViolation("transfers[3].amount", "too big"), FieldViolation("transfers[4]", "x")],
    )
    _core.settle_batch([a, b, c], "transfers", None, f)
    assert a.outcome.kind == c.outcome.kind == _core.Failure.RETRY and not a.outcome.backoff
    assert b.outcome.kind == _core.Failure.INVALID
    assert [v.field for v in b.outcome.violations] == ["transfers[5].amount", "transfers[9]"]


def test_settle_unattributable_invalid_retries_each_call_alone() -> None:
    a, b = _entry([0]), _entry([0])
    _core.settle_batch([a, b], "transfers", None, _core.Failure(_core.Failure.INVALID, "batch too large"))
    assert a.outcome.solo and b.outcome.solo and a.outcome.kind == _core.Failure.RETRY
    solo = _entry([0, 1])
    _core.settle_batch([solo], "transfers", None, _core.Failure(_core.Failure.INVALID, "nope"))
    assert solo.outcome.kind == _core.Failure.INVALID


# --------------------------------------------------------------------------- error classification


class _FakeRpcError(grpc.RpcError):
    def __init__(self, status: grpc.Status) -> None:
        self._s = status

    def code(self) -> grpc.StatusCode:
        return self._s.code

    def details(self) -> str:
        return self._s.details

    def trailing_metadata(self) -> tuple:
        return self._s.trailing_metadata


def _err(code: grpc.StatusCode, reason: str = "", **kw: object) -> _FakeRpcError:
    return _FakeRpcError(rich_status(code, "msg", reason=reason, **kw))  # type: ignore[arg-type]


def test_classify() -> None:
    U = grpc.StatusCode.UNAVAILABLE
    f = _core.classify(_err(U, "NOT_LEADER", metadata={"shard_id": "1", "leader_address": "h:1"}), write=True)
    assert f.kind == "retry" and not f.ambiguous and not f.refresh and f.metadata["leader_address"] == "h:1"
    f = _core.classify(_err(U, "NOT_LEADER", metadata={"shard_id": "1"}), write=True)
    assert f.kind == "retry" and f.refresh and not f.ambiguous
    f = _core.classify(_err(U, "NO_LEADER"), write=True)
    assert f.kind == "retry" and f.refresh and not f.ambiguous
    f = _core.classify(_err(grpc.StatusCode.RESOURCE_EXHAUSTED, "OVERLOADED"), write=True)
    assert f.kind == "retry" and not f.ambiguous and not f.refresh
    assert _core.classify(_err(U), write=True).ambiguous
    assert _core.classify(_err(grpc.StatusCode.DEADLINE_EXCEEDED), write=True).ambiguous
    assert _core.classify(_err(grpc.StatusCode.INTERNAL), write=True).kind == "retry"
    assert _core.classify(_err(grpc.StatusCode.INTERNAL), write=False).kind == "fatal"
    assert _core.classify(_err(grpc.StatusCode.UNIMPLEMENTED), write=True).kind == "fatal"
    f = _core.classify(_err(grpc.StatusCode.INVALID_ARGUMENT, violations=[("transfers[0].amount", "zero")]), write=True)
    assert f.kind == "invalid" and f.violations == [FieldViolation("transfers[0].amount", "zero")]


def test_backoff_is_bounded_and_jittered() -> None:
    ds = [_core.backoff_delay(a, 0.01, 0.5) for a in range(40)]
    assert all(0.005 <= d <= 0.5 for d in ds)
    assert ds[0] <= 0.01 and max(ds[10:]) > 0.25


def test_ids_made_near_an_account_are_unique_ordered_and_share_its_slot() -> None:
    from tidebank.client import new_id

    account = 123456789
    ids = [new_id(near=account) for _ in range(20_000)]  # many within one millisecond
    assert len(set(ids)) == len(ids)
    assert {slot_of(i) for i in ids} == {slot_of(account)}
    assert ids == sorted(ids)

"""Per-principal quotas: a flooding principal is refused with a retry hint, others keep being served."""

import sys
import threading

import pytest
from google.rpc import code_pb2, error_details_pb2

from tidebank.common.limits import BATCH_ITEMS_MAX
from tidebank.node.api import quotas as quotas_module
from tidebank.node.api.errors import DOMAIN, RequestError
from tidebank.node.api.quotas import LIMIT_CALLS_IN_FLIGHT, LIMIT_ITEMS_PER_S, Quotas


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def details(error: RequestError) -> tuple[error_details_pb2.ErrorInfo, error_details_pb2.RetryInfo]:
    info, retry = error_details_pb2.ErrorInfo(), error_details_pb2.RetryInfo()
    found = set()
    for packed in error.status.details:
        for message in (info, retry):
            if packed.Is(message.DESCRIPTOR):
                packed.Unpack(message)
                found.add(type(message))
    assert found == {error_details_pb2.ErrorInfo, error_details_pb2.RetryInfo}
    return info, retry


def retry_ms(error: RequestError) -> int:
    return details(error)[1].retry_delay.ToMilliseconds()


def quotas(clock: FakeClock, **limits) -> Quotas:
    limits = {"items_per_s": 10, "burst_items": 20, "calls_in_flight": 3, **limits}
    return Quotas(clock=clock, **limits)


def test_a_principal_within_its_rate_is_admitted():
    clock = FakeClock()
    q = quotas(clock)
    for _ in range(10):
        with q.admit("alice", 2):
            pass
        clock.advance(0.2)  # 2 items per 0.2 s = its rate of 10/s
    assert q.in_flight("alice") == 0


def test_a_flood_is_refused_with_resource_exhausted_and_quota_exceeded():
    q = quotas(FakeClock())
    q.admit("alice", 20).release()
    with pytest.raises(RequestError) as refused:
        q.admit("alice", 1)
    assert refused.value.status.code == code_pb2.RESOURCE_EXHAUSTED
    info, _ = details(refused.value)
    assert info.reason == "QUOTA_EXCEEDED"
    assert info.domain == DOMAIN
    assert dict(info.metadata) == {"principal": "alice", "limit": LIMIT_ITEMS_PER_S, "limit_value": "10"}


def test_the_retry_delay_is_the_time_until_the_bucket_holds_enough_for_the_call():
    clock = FakeClock()
    q = quotas(clock)
    q.admit("alice", 20).release()
    clock.advance(0.1)  # refilled 1 item
    with pytest.raises(RequestError) as refused:
        q.admit("alice", 6)
    assert retry_ms(refused.value) == 500  # 5 more items at 10/s
    clock.advance(0.5)
    q.admit("alice", 6).release()


def test_a_refused_call_consumes_no_tokens():
    clock = FakeClock()
    q = quotas(clock)
    q.admit("alice", 15).release()
    with pytest.raises(RequestError):
        q.admit("alice", 10)
    q.admit("alice", 5).release()


def test_another_principal_is_admitted_while_the_first_is_refused():
    q = quotas(FakeClock())
    q.admit("flood", 20).release()
    with pytest.raises(RequestError):
        q.admit("flood", 1)
    q.admit("bob", 20).release()
    with pytest.raises(RequestError):
        q.admit("flood", 1)


def test_tokens_refill_over_time_up_to_the_burst():
    clock = FakeClock()
    q = quotas(clock)
    q.admit("alice", 20).release()
    clock.advance(1.0)
    q.admit("alice", 10).release()  # 1 s at 10/s
    with pytest.raises(RequestError):
        q.admit("alice", 1)
    clock.advance(3600.0)
    q.admit("alice", 20).release()  # an hour idle still holds only the burst
    with pytest.raises(RequestError):
        q.admit("alice", 1)


def test_a_call_of_zero_items_costs_one():
    q = quotas(FakeClock(), burst_items=2)
    q.admit("alice", 0).release()
    q.admit("alice", 0).release()
    with pytest.raises(RequestError):
        q.admit("alice", 0)


def test_a_call_larger_than_the_burst_is_admitted_on_a_full_bucket_and_empties_it():
    clock = FakeClock()
    q = quotas(clock)
    q.admit("alice", 1).release()
    with pytest.raises(RequestError) as refused:
        q.admit("alice", 1000)
    assert retry_ms(refused.value) == 100  # its cost is the burst: 1 item short
    clock.advance(0.1)
    q.admit("alice", 1000).release()
    with pytest.raises(RequestError):
        q.admit("alice", 1)


def test_the_default_burst_admits_a_full_batch_twice():
    q = Quotas(clock=FakeClock())
    assert q.burst_items >= 2 * BATCH_ITEMS_MAX
    q.admit("alice", BATCH_ITEMS_MAX).release()
    q.admit("alice", BATCH_ITEMS_MAX).release()


def test_the_default_in_flight_cap_is_well_below_the_grpc_handler_threads():
    from tidebank.node.server import GRPC_WORKERS

    assert quotas_module.QUOTA_CALLS_IN_FLIGHT * 4 <= GRPC_WORKERS


def test_the_in_flight_cap_refuses_the_next_concurrent_call_with_a_short_hint():
    q = quotas(FakeClock())
    tickets = [q.admit("alice", 1) for _ in range(3)]
    with pytest.raises(RequestError) as refused:
        q.admit("alice", 1)
    assert refused.value.status.code == code_pb2.RESOURCE_EXHAUSTED
    info, retry = details(refused.value)
    assert info.reason == "QUOTA_EXCEEDED"
    assert dict(info.metadata) == {"principal": "alice", "limit": LIMIT_CALLS_IN_FLIGHT, "limit_value": "3"}
    assert retry.retry_delay.ToMilliseconds() == 50
    assert q.in_flight("alice") == 3
    for ticket in tickets:
        ticket.release()


def test_a_release_admits_the_next_concurrent_call_again():
    q = quotas(FakeClock())
    tickets = [q.admit("alice", 1) for _ in range(3)]
    with pytest.raises(RequestError):
        q.admit("alice", 1)
    tickets[0].release()
    q.admit("alice", 1)
    assert q.in_flight("alice") == 3


def test_the_in_flight_cap_is_per_principal():
    q = quotas(FakeClock())
    for _ in range(3):
        q.admit("alice", 1)
    q.admit("bob", 1)
    assert (q.in_flight("alice"), q.in_flight("bob")) == (3, 1)


def test_release_is_idempotent():
    q = quotas(FakeClock())
    first = q.admit("alice", 1)
    second = q.admit("alice", 1)
    first.release()
    first.release()
    first.release()
    assert q.in_flight("alice") == 1
    second.release()
    assert q.in_flight("alice") == 0


def test_leaving_the_with_block_releases_even_on_an_exception():
    q = quotas(FakeClock())
    with pytest.raises(KeyError), q.admit("alice", 1) as ticket:
        assert q.in_flight("alice") == 1
        raise KeyError("handler failed")
    assert q.in_flight("alice") == 0
    ticket.release()  # and after it, still idempotent
    assert q.in_flight("alice") == 0


def test_exempt_callers_are_never_refused_nor_tracked():
    q = quotas(FakeClock())
    tickets = [q.admit("node-2", 1_000_000, exempt=True) for _ in range(100)]
    assert "node-2" not in q
    assert len(q) == 0
    for ticket in tickets:
        ticket.release()
        ticket.release()


def test_exempt_calls_leave_the_principals_own_quota_untouched():
    q = quotas(FakeClock())
    q.admit("alice", 1_000, exempt=True)
    q.admit("alice", 20).release()


def test_each_refusal_is_reported_with_principal_and_limit():
    seen = []
    q = quotas(FakeClock(), on_refused=lambda principal, limit: seen.append((principal, limit)))
    q.admit("alice", 20)
    with pytest.raises(RequestError):
        q.admit("alice", 1)
    q.admit("bob", 1)
    q.admit("bob", 1)
    q.admit("bob", 1)
    with pytest.raises(RequestError):
        q.admit("bob", 1)
    assert seen == [("alice", LIMIT_ITEMS_PER_S), ("bob", LIMIT_CALLS_IN_FLIGHT)]


def test_the_refusal_hook_may_read_the_quotas_without_deadlock():
    seen = []
    q = quotas(FakeClock(), on_refused=lambda principal, limit: seen.append(q.in_flight(principal)))
    q.admit("alice", 20)
    with pytest.raises(RequestError):
        q.admit("alice", 1)
    assert seen == [1]


def test_the_principal_table_stays_bounded_and_forgets_the_least_recently_used():
    q = quotas(FakeClock(), principals_max=3)
    for principal in ("a", "b", "c"):
        q.admit(principal, 1).release()
    q.admit("a", 1).release()  # b is now the least recently used
    q.admit("d", 1).release()
    assert len(q) == 3
    assert "b" not in q
    assert all(p in q for p in ("a", "c", "d"))


def test_a_principal_with_calls_in_flight_is_never_forgotten():
    q = quotas(FakeClock(), principals_max=2)
    busy = q.admit("busy", 1)  # least recently used but in flight
    q.admit("idle", 1).release()
    q.admit("new", 1).release()
    assert "busy" in q and "idle" not in q
    assert q.in_flight("busy") == 1
    busy.release()
    assert q.in_flight("busy") == 0


def test_the_table_grows_past_the_bound_only_by_busy_principals_and_shrinks_back_on_release():
    q = quotas(FakeClock(), principals_max=2)
    tickets = [q.admit(principal, 1) for principal in ("a", "b", "c")]
    assert len(q) == 3  # all busy: none may be forgotten
    tickets[0].release()
    assert len(q) == 2
    assert "a" not in q


def test_a_forgotten_principal_starts_again_with_a_full_bucket():
    q = quotas(FakeClock(), principals_max=1)
    q.admit("a", 20).release()
    q.admit("b", 1).release()
    q.admit("a", 20).release()


def test_limits_must_be_positive():
    for bad in ({"items_per_s": 0}, {"burst_items": 0}, {"calls_in_flight": 0}, {"principals_max": 0}):
        with pytest.raises(ValueError):
            quotas(FakeClock(), **bad)


def test_threads_hammering_admit_and_release_keep_counts_consistent():
    clock = FakeClock()
    cap = 4
    refused = []
    q = quotas(clock, items_per_s=100_000, burst_items=1_000, calls_in_flight=cap, principals_max=2,
               on_refused=lambda principal, limit: refused.append(limit))
    principals = ["p0", "p1", "p2"]  # more than the table holds: eviction races with admission
    holding = {p: 0 for p in principals}
    observed_max = {p: 0 for p in principals}
    count_lock = threading.Lock()
    failures = []
    start = threading.Barrier(8)

    def hammer(worker: int) -> None:
        try:
            start.wait()
            for i in range(2_000):
                principal = principals[(worker + i) % len(principals)]
                try:
                    ticket = q.admit(principal, 1 + i % 7)
                except RequestError as e:
                    assert e.status.code == code_pb2.RESOURCE_EXHAUSTED
                    continue
                with count_lock:
                    holding[principal] += 1
                    observed_max[principal] = max(observed_max[principal], holding[principal])
                assert 1 <= q.in_flight(principal) <= cap  # held, so neither forgotten nor over the cap
                with count_lock:
                    holding[principal] -= 1
                ticket.release()
                ticket.release()
                if i % 100 == 0:
                    clock.advance(0.001)
        except BaseException as e:  # reported below, from the main thread
            failures.append(e)

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(8)]
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # interleave the threads as finely as the interpreter allows
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    finally:
        sys.setswitchinterval(switch_interval)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []
    assert all(q.in_flight(p) == 0 for p in principals)
    assert all(value <= cap for value in observed_max.values())
    assert len(q) <= 2
    assert set(refused) <= {LIMIT_ITEMS_PER_S, LIMIT_CALLS_IN_FLIGHT}

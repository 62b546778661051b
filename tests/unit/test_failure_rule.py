"""One rule for what a request answers when some of its parts fail (node/api/failures.py).

Anything that may have applied wins over anything that certainly did not, and the
rule is applied only after every part (same-shard and cross-shard) was awaited.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import grpc
import pytest
from google.rpc import code_pb2

from tidebank.node.api import errors
from tidebank.node.api.escrow_service import EscrowService
from tidebank.node.api.failures import Failures, part_failure
from tidebank.node.api.ledger_service import LedgerService
from tidebank.node.api.routing import ShardMap
from tidebank.node.executor import NodeView
from tidebank.node.outcomes import (
    ApplyFailedError,
    NotAppliedError,
    OutcomeUnknownError,
    OverloadedError,
    ParticipantUnavailableError,
)
from tidebank.node.txn.escrow_coordinator import StepOutcome
from tidebank.v1 import escrow_pb2, ledger_pb2

SLOTS = 16
SHARD_MAP = ShardMap(1, SLOTS, {0: [(0, 8)], 1: [(8, 16)]})


def _id_on(shard: int, start: int = 1) -> int:
    while SHARD_MAP.shard_of(start) != shard:
        start += 1
    return start


UNKNOWN = OutcomeUnknownError("lost")
NOT_LEADER = NotAppliedError("moved")
ABORTED = ParticipantUnavailableError("aborted")
OVERLOADED = OverloadedError("full")
INTERNAL = ApplyFailedError("bug")


def _verdict(*failures: BaseException) -> errors.RequestError:
    rule = Failures()
    for n, exc in enumerate(failures):
        rule.add_part(n, exc, None, write=True)
    assert rule.worst is not None
    return rule.worst


@pytest.mark.parametrize("others", [(NOT_LEADER,), (ABORTED,), (OVERLOADED,), (INTERNAL,),
                                    (NOT_LEADER, OVERLOADED, INTERNAL, ABORTED)])
@pytest.mark.parametrize("unknown_first", [True, False])
def test_a_part_that_may_have_applied_wins_over_every_part_that_certainly_did_not(others, unknown_first):
    parts = (UNKNOWN, *others) if unknown_first else (*others, UNKNOWN)
    assert errors.reason_of(_verdict(*parts)) == "OUTCOME_UNKNOWN"


@pytest.mark.parametrize("retryable", [NOT_LEADER, ABORTED, OVERLOADED])
def test_an_internal_failure_wins_over_retryable_ones(retryable):
    assert _verdict(retryable, INTERNAL).status.code == code_pb2.INTERNAL
    assert _verdict(INTERNAL, retryable).status.code == code_pb2.INTERNAL


@pytest.mark.parametrize("not_applied", [NOT_LEADER, ABORTED])
def test_overloaded_wins_over_not_applied(not_applied):
    assert errors.reason_of(_verdict(not_applied, OVERLOADED)) == "OVERLOADED"
    assert errors.reason_of(_verdict(OVERLOADED, not_applied)) == "OVERLOADED"


def test_each_certainly_not_applied_failure_keeps_its_own_reason():
    assert errors.reason_of(part_failure(0, NOT_LEADER, "n2:1", write=True)) == "NOT_LEADER"
    assert errors.reason_of(part_failure(0, NOT_LEADER, None, write=True)) == "NO_LEADER"
    assert errors.reason_of(part_failure(0, ABORTED, None, write=True)) == "NOT_APPLIED"


def test_a_timed_out_write_may_have_applied_but_a_timed_out_read_changed_nothing():
    from concurrent.futures import TimeoutError as FutureTimeout
    assert errors.reason_of(part_failure(0, FutureTimeout(), None, write=True)) == "OUTCOME_UNKNOWN"
    assert errors.reason_of(part_failure(0, FutureTimeout(), None, write=False)) == "NO_LEADER"
    assert errors.reason_of(part_failure(0, UNKNOWN, None, write=False)) == "NO_LEADER"


class _LostConnection(grpc.RpcError):
    def code(self):
        return grpc.StatusCode.UNAVAILABLE

    def details(self):
        return "connection reset"

    def trailing_metadata(self):
        return ()


def test_a_forwarded_write_that_lost_its_connection_may_have_applied():
    assert errors.reason_of(part_failure(0, _LostConnection(), None, write=True)) == "OUTCOME_UNKNOWN"


# --- the rule in the servicers: every part awaited first ------------------------------------------------------


class _Node(NodeView):
    address = "self:1"
    shard_map = SHARD_MAP

    def local_shard(self, shard_id):
        return _Host()

    def leader_address(self, shard_id):
        return None

    def replica_addresses(self, shard_id):
        return []

    def reachable(self, address):
        return True

    def ledger_stub(self, address):
        raise AssertionError("nothing is forwarded in these tests")

    escrow_stub = ledger_stub


class _Host:
    def is_leader(self):
        return True


class _Executor:
    """Answers each shard's same-shard part with a configured outcome; runs groups 'locally'."""

    def __init__(self, outcomes: dict[int, object]):
        self.outcomes = outcomes

    def submit(self, shard_id, operation, timeout_s):
        future: Future = Future()
        outcome = self.outcomes[shard_id]
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result([outcome] * len(operation.items))
        return future

    def on_leader(self, shard_id, local, remote):
        return local(_Host())


class _SlowCoordinator:
    """A cross-shard group that is still deciding when the same-shard part has already failed."""

    def __init__(self, outcome, delay_s: float = 0.2):
        self.outcome = outcome
        self.delay_s = delay_s
        self.finished = threading.Event()

    def run_many(self, groups, wait_s):
        time.sleep(self.delay_s)
        self.finished.set()
        return [self.outcome for _ in groups]


class _Context:
    def invocation_metadata(self):
        return ()

    def time_remaining(self):
        return 5.0


def _transfer(message, tid: int, debit: int, credit: int) -> None:
    t = message.transfers.add(amount=1, ledger=1, code=1)
    t.id.lo, t.debit_account_id.lo, t.credit_account_id.lo = tid, debit, credit


def _mixed_request() -> ledger_pb2.CreateTransfersRequest:
    """One same-shard transfer on shard 1 and one cross-shard transfer coordinated by shard 0."""
    a0, b0 = _id_on(0, 1), _id_on(0, _id_on(0, 1) + 1)
    a1, b1 = _id_on(1, 1), _id_on(1, _id_on(1, 1) + 1)
    request = ledger_pb2.CreateTransfersRequest()
    _transfer(request, _id_on(1, 100), a1, b1)  # its id lives on shard 1 too: a same-shard transfer
    _transfer(request, _id_on(0, 200), a0, a1)
    assert b0 != a0
    return request


@pytest.fixture
def pool():
    with ThreadPoolExecutor(4) as p:
        yield p


def test_a_same_shard_part_refused_early_never_hides_a_cross_shard_group_that_may_have_applied(pool):
    coordinator = _SlowCoordinator(UNKNOWN)
    service = LedgerService(_Node(), _Executor({1: NOT_LEADER}), coordinator, pool)
    with pytest.raises(errors.RequestError) as caught:
        service.CreateTransfers(_mixed_request(), _Context())
    assert coordinator.finished.is_set(), "answered before the cross-shard group was awaited"
    assert errors.reason_of(caught.value) == "OUTCOME_UNKNOWN"


def test_a_same_shard_part_that_may_have_applied_wins_over_an_aborted_group(pool):
    service = LedgerService(_Node(), _Executor({1: UNKNOWN}), _SlowCoordinator(ABORTED, 0.0), pool)
    with pytest.raises(errors.RequestError) as caught:
        service.CreateTransfers(_mixed_request(), _Context())
    assert errors.reason_of(caught.value) == "OUTCOME_UNKNOWN"


def test_every_part_answered_gives_every_code_in_request_order(pool):
    service = LedgerService(_Node(), _Executor({1: 0}), _SlowCoordinator([0], 0.0), pool)
    response = service.CreateTransfers(_mixed_request(), _Context())
    assert list(response.results) == [0, 0]


class _Escrow:
    def __init__(self, outcomes: dict[int, object]):
        self.outcomes = outcomes

    def execute(self, shard_id, commands, wait_s):
        outcome = self.outcomes[shard_id]
        return [outcome for _ in commands]


def _ship_request() -> escrow_pb2.TradeIdsRequest:
    request = escrow_pb2.TradeIdsRequest()
    request.trades.add().trade_id.lo = _id_on(0, 1)
    request.trades.add().trade_id.lo = _id_on(1, 1)
    return request


def test_escrow_steps_follow_the_same_rule(pool):
    service = EscrowService(_Node(), _Executor({}), _Escrow({0: UNKNOWN, 1: NOT_LEADER}), pool)
    with pytest.raises(errors.RequestError) as caught:
        service.ShipTrades(_ship_request(), _Context())
    assert errors.reason_of(caught.value) == "OUTCOME_UNKNOWN"
    service = EscrowService(_Node(), _Executor({}), _Escrow({0: StepOutcome(0), 1: ABORTED}), pool)
    with pytest.raises(errors.RequestError) as caught:
        service.ShipTrades(_ship_request(), _Context())
    assert errors.reason_of(caught.value) == "NOT_APPLIED"

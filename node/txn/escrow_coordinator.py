"""Escrow steps on the leader of a trade's shard: plan each step from the trade, run it as one 2PC group.

For a batch of commands on trades of one shard (which this node leads):

1. read the trades locally and evaluate every command with the pure rules
   (`escrow.evaluate`, without cluster time); a command refused or answered from
   the record (`exists`, `trade_not_found`, ...) is answered after a barrier
   through the shard's log, so the answer is never based on a stale replica;
2. a CREATE that would run is checked against the buyer's and seller's accounts
   (read linearizably from their shards; account metadata never changes, so what
   was read once stays true and is cached);
3. every other command becomes a 2PC `Group`: its transfers (`escrow.legs`) and
   the `TradeStep` (command + the version it was planned on), keyed by
   `escrow.step_key`. The trade's shard re-evaluates the step on cluster time when
   it prepares; a step planned on a version that moved on (or racing another step
   of the same trade) votes busy and is planned again from a fresh read.

Commands naming the same trade run one after another in request order. Timers:
`EscrowTimers` fires due ship-by and auto-confirm timers of the shards led here,
through the same path, keyed so that each fires at most once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

from tidebank.node import metrics
from tidebank.node.api import convert
from tidebank.node.ledger import escrow
from tidebank.node.ledger.records import Account
from tidebank.node.ledger.results import TradeResult
from tidebank.node.ledger.trades import (
    CMD_AUTO_CONFIRM,
    CMD_AUTO_REFUND,
    CMD_CREATE,
    COMMAND_NAMES,
    TIMER_SHIP_BY,
    TRADE_STEP_INDEX,
    TradeCommand,
    TradeStep,
)
from tidebank.node.outcomes import NotAppliedError, OutcomeUnknownError, OverloadedError, ParticipantUnavailableError
from tidebank.node.txn.coordinator import Coordinator, Group
from tidebank.node.txn.periodic import LedShardsLoop, RetryLater
from tidebank.v1 import ledger_pb2

log = logging.getLogger(__name__)

PLAN_ROUNDS_MAX = 8  # re-plans of a step that raced another step of its trade (or found a participant busy)
ACCOUNT_CACHE_MAX = 100_000  # buyer/seller account metadata kept (it never changes)
ACCOUNT_READ_TIMEOUT_S = 5.0
TIMER_PERIOD_S = 0.25
TIMER_BATCH_MAX = 512  # due timers fired per shard per period
TIMER_WAIT_S = 10.0
# A refused timer is tried again at most this far apart (periodic.RetryLater doubles from 1 s). Most refusals are
# transient: a leg's pending transfer locked by a step still prepared during a partition is refused with a
# transfer code, like a business refusal. With the default 30 s cap such a timer could fire up to 30 s after the
# partition healed; at 8 s it fires within seconds, and a trade refused for good costs one try per 8 s.
TIMER_RETRY_MAX_S = 8.0

_OK = int(TradeResult.ok)
_EXISTS = int(TradeResult.exists)


@dataclass(frozen=True, slots=True)
class StepOutcome:
    """A command's answer: a TradeResult code, and the transfer's code when it is transfer_failed."""

    code: int
    transfer_code: int = 0


class EscrowCoordinator:
    """Runs escrow commands for the trade shards this node leads (see the module docstring)."""

    def __init__(self, node, coordinator: Coordinator, slot_count: int):
        self.node = node
        self.coordinator = coordinator
        self.executor = coordinator.executor
        self.slot_count = slot_count
        self._accounts: OrderedDict[int, Account] = OrderedDict()
        self._accounts_lock = threading.Lock()

    def execute(self, shard_id: int, commands: Sequence[TradeCommand],
                wait_s: float) -> list[StepOutcome | Exception]:
        """Per command, in order: its outcome, or the exception saying why it has none (NotAppliedError,
        ParticipantUnavailableError: nothing applied; OutcomeUnknownError: only a retry can tell)."""
        deadline = time.monotonic() + wait_s
        outcomes: list[StepOutcome | Exception | None] = [None] * len(commands)
        for wave in _waves(commands):
            for position, outcome in self._run_wave(shard_id, [(p, commands[p]) for p in wave], deadline).items():
                outcomes[position] = outcome
        assert all(o is not None for o in outcomes)
        for c, outcome in zip(commands, outcomes, strict=True):
            label = TradeResult(outcome.code).name if isinstance(outcome, StepOutcome) else type(outcome).__name__
            metrics.ESCROW_STEPS.labels(COMMAND_NAMES.get(c.kind, str(c.kind)), label).inc()
        return outcomes  # type: ignore[return-value]

    def _run_wave(self, shard_id: int, pending: list[tuple[int, TradeCommand]],
                  deadline: float) -> dict[int, StepOutcome | Exception]:
        out: dict[int, StepOutcome | Exception] = {}
        confirmed = False  # whether the local state was confirmed current by a barrier in this round
        rounds = 0
        while pending:
            host = self.node.local_shard(shard_id)
            if host is None or not host.is_leader():
                out.update((p, NotAppliedError(f"shard {shard_id} is not led here")) for p, _ in pending)
                return out
            if time.monotonic() >= deadline or rounds >= PLAN_ROUNDS_MAX:
                error = ParticipantUnavailableError(
                    f"shard {shard_id}: steps still racing other steps of their trades after {rounds} rounds")
                out.update((p, error) for p, _ in pending)
                return out
            trades = {t.id: t for t in host.lookup_trades([c.trade_id for _, c in pending])}
            plans = [(p, c, trades.get(c.trade_id), escrow.evaluate(trades.get(c.trade_id), c, None))
                     for p, c in pending]
            if not confirmed and any(v.code != _OK for _, _, _, v in plans):
                try:
                    self._barrier(host, deadline)
                except (NotAppliedError, OutcomeUnknownError, OverloadedError, FutureTimeout) as exc:
                    out.update((p, ParticipantUnavailableError(f"shard {shard_id}: read not confirmed: {exc}"))
                               for p, _ in pending)
                    return out
                confirmed = True
                continue  # read again: this read is known current
            runnable = []
            for p, c, trade, verdict in plans:
                if verdict.code != _OK:
                    out[p] = StepOutcome(verdict.code)
                else:
                    runnable.append((p, c, trade, verdict))
            runnable = self._check_parties(runnable, out, deadline)
            groups = []
            for _, c, trade, verdict in runnable:
                version = 0 if trade is None else trade.version
                groups.append(Group(escrow.legs(trade, c, verdict, self.slot_count), shard_id,
                                    key=escrow.step_key(c, version), trade=TradeStep(version, c)))
            retry = []
            if groups:
                decisions = self.coordinator.run_decisions(groups, max(0.05, deadline - time.monotonic()))
                for (p, c, _, _), result in zip(runnable, decisions, strict=True):
                    if isinstance(result, ParticipantUnavailableError):
                        retry.append((p, c))  # nothing applied: plan it again from a fresh read
                    elif isinstance(result, Exception):
                        out[p] = result
                    else:
                        out[p] = _step_outcome(*result)
            pending = retry
            confirmed = False
            rounds += 1
            if pending:
                time.sleep(min(0.2, 0.01 * 2 ** rounds, max(0.0, deadline - time.monotonic())))
        return out

    @staticmethod
    def _barrier(host, deadline: float) -> None:
        host.read_barrier().result(timeout=max(0.01, deadline - time.monotonic()))

    # --- buyer and seller accounts of new trades

    def _check_parties(self, runnable: list, out: dict, deadline: float) -> list:
        """Drop (answering them) the CREATEs whose buyer or seller account cannot take part."""
        creates = [r for r in runnable if r[1].kind == CMD_CREATE]
        if not creates:
            return runnable
        ids = {a for _, c, _, _ in creates for a in (c.buyer_account_id, c.seller_account_id)}
        try:
            accounts = self._accounts_of(ids, deadline)
        except ParticipantUnavailableError as exc:
            for p, *_ in creates:
                out[p] = exc
            return [r for r in runnable if r[1].kind != CMD_CREATE]
        kept = []
        for r in runnable:
            p, c = r[0], r[1]
            if c.kind == CMD_CREATE:
                code = escrow.check_parties(c, accounts.get(c.buyer_account_id), accounts.get(c.seller_account_id))
                if code != _OK:
                    out[p] = StepOutcome(int(code))
                    continue
            kept.append(r)
        return kept

    def _accounts_of(self, ids: set[int], deadline: float) -> dict[int, Account]:
        """The accounts among `ids` that exist, read linearizably from their shards (or from the cache)."""
        found: dict[int, Account] = {}
        missing: dict[int, list[int]] = {}
        with self._accounts_lock:
            for account_id in ids:
                cached = self._accounts.get(account_id)
                if cached is not None:
                    found[account_id] = cached
                else:
                    missing.setdefault(self.node.shard_map.shard_of(account_id), []).append(account_id)
        reads = {}
        for shard, part in missing.items():  # every read in flight before waiting for any
            try:
                reads[shard] = self._read_accounts(shard, part)
            except Exception as exc:
                raise ParticipantUnavailableError(f"accounts on shard {shard} not readable: {exc}") from exc
        for shard, read in reads.items():
            try:
                accounts = read(max(0.01, deadline - time.monotonic()))
            except Exception as exc:
                raise ParticipantUnavailableError(f"accounts on shard {shard} not readable: {exc}") from exc
            for a in accounts:
                found[a.id] = a
        with self._accounts_lock:
            for account_id, a in found.items():
                self._accounts[account_id] = a
                self._accounts.move_to_end(account_id)
            while len(self._accounts) > ACCOUNT_CACHE_MAX:
                self._accounts.popitem(last=False)
        return found

    def _read_accounts(self, shard_id: int, ids: list[int]) -> Callable[[float], list[Account]]:
        """Start a linearizable read of accounts on one shard (a barrier here when this node leads it, else
        the leader's LookupAccounts); returns the wait for its answer, to be called in this thread (never a
        Raft callback: the local read happens in the caller)."""
        request = ledger_pb2.LookupAccountsRequest()
        for account_id in ids:
            convert.u128_to_pb(request.ids.add(), account_id)

        def remote(address: str) -> Future:
            return self.node.ledger_stub(address).LookupAccounts.future(request, timeout=ACCOUNT_READ_TIMEOUT_S)

        read = self.executor.read(shard_id, True, lambda host: host.lookup_accounts(ids), remote)

        def wait(timeout_s: float) -> list[Account]:
            answer = read.result(timeout=timeout_s)()
            if isinstance(answer, ledger_pb2.LookupAccountsResponse):
                return [convert.account_from_pb(m) for m in answer.accounts]
            return answer

        return wait


def _waves(commands: Sequence[TradeCommand]) -> list[list[int]]:
    """Positions split so that each wave names a trade at most once, keeping each trade's commands in order."""
    waves: list[list[int]] = []
    seen: dict[int, int] = {}
    for position, c in enumerate(commands):
        n = seen.get(c.trade_id, 0)
        seen[c.trade_id] = n + 1
        if n == len(waves):
            waves.append([])
        waves[n].append(position)
    return waves


def _step_outcome(decision, replay: bool) -> StepOutcome:
    if decision.committed:
        return StepOutcome(_EXISTS if replay else _OK)
    if decision.failed_index == TRADE_STEP_INDEX:
        return StepOutcome(decision.code)
    return StepOutcome(int(TradeResult.transfer_failed), decision.code)


class EscrowTimers:
    """Fires due trade timers on the shards this node leads.

    A timer is due by the local clock here; the trade's shard checks it against
    cluster time when the step prepares (never due: it votes busy and is tried
    again). The step is keyed by the trade's version, so a timer fires at most once
    however many leaders try, and a trade whose step is in flight is skipped. A
    timer refused for a business reason is tried again later (periodic.RetryLater, at most TIMER_RETRY_MAX_S
    apart).
    """

    def __init__(self, node, escrow_coordinator: EscrowCoordinator, clock_ns=time.time_ns, start: bool = True):
        self.node = node
        self.escrow = escrow_coordinator
        self.clock_ns = clock_ns
        self.fired = 0
        self._fired_lock = threading.Lock()
        self.retry_later = RetryLater(max_s=TIMER_RETRY_MAX_S)
        self._loop = LedShardsLoop(node, "escrow-timers", TIMER_PERIOD_S, self.fire_due) if start else None

    def fire_due(self, shard_id: int, host) -> int:
        """Fire the timers due now on one shard led here; how many fired."""
        now = time.monotonic()
        due = [t for t in host.due_trades(self.clock_ns(), TIMER_BATCH_MAX) if self.retry_later.due(t.id, now)]
        if not due:
            return 0
        commands = [TradeCommand(CMD_AUTO_REFUND if t.timer == TIMER_SHIP_BY else CMD_AUTO_CONFIRM, t.id)
                    for t in due]
        fired = 0
        for c, outcome in zip(commands, self.escrow.execute(shard_id, commands, TIMER_WAIT_S), strict=True):
            if isinstance(outcome, StepOutcome) and outcome.code == _OK:
                fired += 1
                self.retry_later.succeeded(c.trade_id)
            elif isinstance(outcome, StepOutcome) and outcome.code != _EXISTS:
                delay = self.retry_later.failed(c.trade_id, now)
                log.warning("shard %d: timer of trade %d refused: %s (transfer %s); next try in %.0f s", shard_id,
                            c.trade_id, TradeResult(outcome.code).name, outcome.transfer_code, delay)
            elif isinstance(outcome, Exception):
                log.info("shard %d: timer of trade %d not fired yet: %s", shard_id, c.trade_id, outcome)
        with self._fired_lock:
            self.fired += fired
        return fired

    def close(self) -> None:
        if self._loop is not None:
            self._loop.close()

"""Cross-shard transactions: two-phase commit over the shards' Raft logs, presume-abort.

A group (one transfer, or one linked chain) whose accounts span shards is run by
the leader of its coordinator shard (the shard of its first debit account):

1. PREPARE on every participant shard, in parallel, each through that shard's log;
2. DECIDE on the coordinator shard's log — the commit point, first writer wins;
3. FINISH on every participant (apply or release), then answer the client.

Every step is idempotent and keyed by the attempt key. An attempt that aborts
without a failing item (a participant did not answer, or the recovery sweeper
presumed abort) applied nothing anywhere; a retry of the same ids runs the next
attempt with a fresh key. A business failure is final and replayed on retry.
The `Sweeper` on every node resolves prepared transactions whose coordinator
went silent, asking the coordinator, which records ABORT first if it has no
decision. Nothing that decides an outcome lives only in memory.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

from tidebank.node import metrics
from tidebank.node.api import convert
from tidebank.node.api.routing import ShardMap
from tidebank.node.executor import ShardExecutor
from tidebank.node.ledger.operations import OP_COMMIT_LOCAL, OP_DECIDE, OP_FINISH, OP_PREPARE, Operation
from tidebank.node.ledger.records import Transfer, pack_transfer
from tidebank.node.ledger.results import CreateTransferResult
from tidebank.node.ledger.txn_records import (
    SIDE_BOTH,
    SIDE_CREDIT,
    SIDE_DEBIT,
    SIDE_HOME,
    Decide,
    Decision,
    Finish,
    Leg,
    Prepare,
    TradeStep,
    Vote,
    merge_votes,
)
from tidebank.node.outcomes import (
    NotAppliedError,
    OutcomeUnknownError,
    ParticipantBusyError,
    ParticipantUnavailableError,
)
from tidebank.v1 import internal_pb2

log = logging.getLogger(__name__)

# Attempts of one group, ever: each aborted one (busy, unreachable) leaves its decision and the next run takes
# the next key. A slot move fences a participant for about a second, and a client retrying with backoff runs a
# few requests of BUSY_ROUNDS_MAX attempts each meanwhile: 16 ran out within one move and failed the transfer
# for good. Finding the next key reads one decision per earlier attempt (local LMDB reads, microseconds each).
ATTEMPTS_MAX = 1024
BUSY_ROUNDS_MAX = 4  # rounds of one request's groups that a busy participant aborted
STEP_TIMEOUT_S = 5.0  # one step (prepare, decide or finish) on one shard


def attempt_key(txid: int, attempt: int) -> int:
    """The 2PC key of one attempt of a group: attempts never share participant records."""
    if attempt == 0:
        return txid
    digest = hashlib.blake2b(txid.to_bytes(16, "big") + attempt.to_bytes(4, "big"), digest_size=16).digest()
    return int.from_bytes(digest, "big") or 1


@dataclass
class Group:
    """A transfer or linked chain whose accounts span shards, in request order; or an escrow step: the
    trade's change (`trade`, checked and applied on the coordinator shard, the trade's) with its transfers."""

    transfers: list[Transfer]
    coordinator_shard: int
    key: int = 0  # the 2PC key (txid); 0: group_key(transfers), computed once
    trade: TradeStep | None = None

    def __post_init__(self) -> None:
        if not self.key:
            self.key = group_key(self.transfers)

    @property
    def txid(self) -> int:
        return self.key


def group_key(transfers: Sequence[Transfer]) -> int:
    """The txid of a transfer group: a hash of all its transfers. A retry of the same group has the same key; a
    different group that reuses a transfer id has another, so it can never be taken for the first one by a
    participant that prepared it (which would apply the legs of one group under the decision of the other)."""
    digest = hashlib.blake2b(b"tidebank-group" + b"".join(pack_transfer(t) for t in transfers), digest_size=16)
    return int.from_bytes(digest.digest(), "big") or 1


def legs_by_shard(group: Group, shard_map: ShardMap) -> dict[int, list[Leg]]:
    """Which legs each participant shard checks and holds: the shards of each transfer's accounts, and the home
    of its id (the shard of slot_of(id)), which answers for the id even when no account of it lives there.
    An escrow step always involves its trade's shard."""
    legs: dict[int, list[Leg]] = {}
    if group.trade is not None:
        legs[group.coordinator_shard] = []
    for index, transfer in enumerate(group.transfers):
        debit_shard = shard_map.shard_of(transfer.debit_account_id)
        credit_shard = (shard_map.shard_of(transfer.credit_account_id) if transfer.credit_account_id
                        else debit_shard)
        home = shard_map.shard_of(transfer.id)
        if debit_shard == credit_shard:
            legs.setdefault(debit_shard, []).append(
                Leg(index, SIDE_BOTH | (SIDE_HOME if home == debit_shard else 0), transfer))
        else:
            legs.setdefault(debit_shard, []).append(
                Leg(index, SIDE_DEBIT | (SIDE_HOME if home == debit_shard else 0), transfer))
            legs.setdefault(credit_shard, []).append(
                Leg(index, SIDE_CREDIT | (SIDE_HOME if home == credit_shard else 0), transfer))
        if home != debit_shard and home != credit_shard:
            legs.setdefault(home, []).append(Leg(index, SIDE_HOME, transfer))
    return legs


@dataclass
class _Attempt:
    """One group's attempt in a run: where its outcome goes, its key, and its legs per participant shard."""

    position: int
    group: Group
    key: int
    legs: dict[int, list[Leg]]


def group_codes(size: int, decision: Decision, replay: bool) -> list[int]:
    if decision.committed:
        return [CreateTransferResult.exists if replay else CreateTransferResult.created] * size
    codes = [CreateTransferResult.linked_event_failed] * size
    codes[decision.failed_index] = decision.code
    return codes


def _outcome_label(outcome) -> str:
    if isinstance(outcome, ParticipantBusyError):
        return "busy"
    if isinstance(outcome, (ParticipantUnavailableError, NotAppliedError)):
        return "not_applied"
    if isinstance(outcome, Exception):
        return "unknown"
    decision, _ = outcome
    return "committed" if decision.committed else "aborted"


def finish_of(key: int, decision: Decision) -> Finish:
    """The FINISH of a decided txn: an abort names its failing leg, so that leg's id home keeps it failed."""
    if decision.committed:
        return Finish(key, True, decision.timestamp)
    return Finish(key, False, decision.timestamp, decision.failed_index, decision.code)


def presumed_abort(key: int) -> Decide:
    return Decide(txid=key, commit=False, failed_index=0, failed_code=0, participants=[], transfer_ids=[])


class Coordinator:
    """Runs groups whose coordinator shard this node leads, many at once.

    All groups of one request that share a coordinator go through each step
    together: one PREPARE entry per participant shard, one DECIDE entry, one
    FINISH entry per participant. Each group still has its own key and outcome.
    Groups that touch no shard but their coordinator (escrow steps whose accounts
    all live with the trade) skip 2PC: one OP_COMMIT_LOCAL entry prepares and
    commits them at once.
    """

    def __init__(self, node, executor: ShardExecutor):
        self.node = node
        self.executor = executor

    def run(self, group: Group, wait_s: float) -> list[int]:
        """Per-item codes of one group; raises ParticipantUnavailableError when nothing was applied."""
        (outcome,) = self.run_many([group], wait_s)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def run_many(self, groups: Sequence[Group], wait_s: float) -> list[list[int] | Exception]:
        """Per group: its per-item codes, or the exception saying why it has no outcome to report."""
        return [o if isinstance(o, Exception) else group_codes(len(g.transfers), o[0], o[1])
                for g, o in zip(groups, self.run_decisions(groups, wait_s), strict=True)]

    def run_decisions(self, groups: Sequence[Group], wait_s: float) -> list[tuple[Decision, bool] | Exception]:
        """Per group: (its decision, whether an earlier run had recorded it), or why it has none:
        ParticipantUnavailableError (aborted, nothing applied: run it again) or OutcomeUnknownError.

        A group aborted only because a participant was busy with another group naming the same id or pending
        transfer (often one of the same request) runs again, a few rounds at most: the other one has finished
        by then, so the request gets real answers rather than a retryable error."""
        deadline = time.monotonic() + wait_s
        outcomes: list[tuple[Decision, bool] | Exception | None] = [None] * len(groups)
        positions = list(range(len(groups)))
        for round_ in range(BUSY_ROUNDS_MAX):
            self._run_round(groups, positions, outcomes, deadline)
            positions = [p for p in positions if isinstance(outcomes[p], ParticipantBusyError)]
            if not positions or time.monotonic() >= deadline:
                break
            time.sleep(min(0.01 * round_, max(0.0, deadline - time.monotonic())))
        assert all(o is not None for o in outcomes)
        for outcome in outcomes:
            metrics.TXN_GROUPS.labels(_outcome_label(outcome)).inc()
        return outcomes  # type: ignore[return-value]

    def _run_round(self, groups: Sequence[Group], positions: list[int], outcomes: list, deadline: float) -> None:
        todo: list[_Attempt] = []
        refinish: dict[int, list[Finish]] = {}  # decided earlier: their FINISH may not have reached everyone yet
        for position in positions:
            group = groups[position]
            host = self.node.local_shard(group.coordinator_shard)
            for attempt in range(ATTEMPTS_MAX):
                key = attempt_key(group.txid, attempt)
                record = host.txn_decision_record(key) if host is not None else None
                if record is None:
                    todo.append(_Attempt(position, group, key, legs_by_shard(group, self.node.shard_map)))
                    break
                known, decide = record
                if known.committed or known.code != 0:
                    outcomes[position] = (known, True)
                    for shard in decide.participants:
                        refinish.setdefault(shard, []).append(finish_of(key, known))
                    break
                # an attempt aborted without a failing item: try the next key
            else:
                outcomes[position] = ParticipantUnavailableError(
                    f"group {group.txid}: {ATTEMPTS_MAX} attempts aborted")
        if refinish:  # idempotent: a retry answers only once its earlier outcome is applied everywhere
            self._finish(refinish, deadline)
        by_coordinator: dict[int, list[_Attempt]] = {}
        local: dict[int, list[_Attempt]] = {}  # groups whose only participant is the coordinator
        for entry in todo:
            coordinator_shard = entry.group.coordinator_shard
            alone = set(entry.legs) == {coordinator_shard}
            (local if alone else by_coordinator).setdefault(coordinator_shard, []).append(entry)
        for coordinator_shard, entries in local.items():
            for position, result in self._run_local(coordinator_shard, entries, deadline):
                outcomes[position] = result
        for coordinator_shard, entries in by_coordinator.items():
            for position, result in self._run_attempts(coordinator_shard, entries, deadline):
                outcomes[position] = result

    def _run_local(self, coordinator_shard: int, entries: list[_Attempt],
                   deadline: float) -> list[tuple[int, tuple[Decision, bool] | Exception]]:
        """Groups that touch only their coordinator shard: one OP_COMMIT_LOCAL entry prepares and commits them."""
        items = [Prepare(e.key, coordinator_shard, len(e.group.transfers), e.legs[coordinator_shard], e.group.trade)
                 for e in entries]
        try:
            votes: list[Vote] = self.executor.run(coordinator_shard, Operation(OP_COMMIT_LOCAL, items),
                                                  max(deadline, time.monotonic() + STEP_TIMEOUT_S))
        except (NotAppliedError, OutcomeUnknownError) as exc:
            unknown = OutcomeUnknownError(f"local commit not confirmed: {exc}")  # it may have applied
            return [(e.position, unknown) for e in entries]
        results: list[tuple[int, tuple[Decision, bool] | Exception]] = []
        for e, vote in zip(entries, votes, strict=True):
            if vote.prepared:
                results.append((e.position, (Decision(True, 0, 0, 0), False)))
            elif vote.code == 0:
                results.append((e.position, ParticipantBusyError(f"group {e.key:x}: busy; nothing applied")))
            else:
                results.append((e.position, (Decision(False, vote.failed_index, vote.code, 0), False)))
        return results

    def _run_attempts(self, coordinator_shard: int, entries: list[_Attempt],
                      deadline: float) -> list[tuple[int, tuple[Decision, bool] | Exception]]:
        step_deadline = min(deadline, time.monotonic() + STEP_TIMEOUT_S)
        # 1. PREPARE: one entry per participant shard with every group's legs there.
        prepares: dict[int, list[tuple[int, Prepare]]] = {}
        participants: dict[int, list[int]] = {}
        for n, e in enumerate(entries):
            participants[n] = sorted(e.legs)
            for shard, shard_legs in e.legs.items():
                trade = e.group.trade if shard == coordinator_shard else None
                prepares.setdefault(shard, []).append((n, Prepare(e.key, coordinator_shard, len(e.group.transfers),
                                                                  shard_legs, trade)))
        futures = {shard: self.executor.run_async(shard, Operation(OP_PREPARE, [p for _, p in items]), step_deadline)
                   for shard, items in prepares.items()}
        votes: dict[int, list[Vote]] = {n: [] for n in range(len(entries))}
        missing: dict[int, list[int]] = {n: [] for n in range(len(entries))}
        for shard, future in futures.items():
            try:
                shard_votes = future.result(timeout=max(0.01, step_deadline - time.monotonic()) + 1.0)
            except (NotAppliedError, OutcomeUnknownError, FutureTimeout):  # DECIDE aborts it: nothing applies
                for n, _ in prepares[shard]:
                    missing[n].append(shard)
                continue
            for (n, _), vote in zip(prepares[shard], shard_votes, strict=True):
                votes[n].append(vote)
        # 2. DECIDE: one entry on the coordinator shard; first writer wins per key.
        decides = []
        for n, e in enumerate(entries):
            key, ids = e.key, [t.id for t in e.group.transfers]
            if missing[n]:
                decides.append(Decide(key, False, 0, 0, participants[n], ids))
            elif all(v.prepared for v in votes[n]):
                decides.append(Decide(key, True, 0, 0, participants[n], ids))
            else:
                first = merge_votes(votes[n])  # the item a single-shard run would have reported
                decides.append(Decide(key, False, first.failed_index, first.code, participants[n], ids))
        try:
            decisions: list[Decision] = self.executor.run(coordinator_shard, Operation(OP_DECIDE, decides),
                                                          max(deadline, time.monotonic() + STEP_TIMEOUT_S))
        except (NotAppliedError, OutcomeUnknownError) as exc:
            # The decision may or may not be recorded: only the ids can tell, never a guess.
            unknown = OutcomeUnknownError(f"decision not confirmed: {exc}")
            return [(e.position, unknown) for e in entries]
        # 3. FINISH: one entry per participant, then answer.
        finishes: dict[int, list[Finish]] = {}
        for n, decision in enumerate(decisions):
            for shard in participants[n]:
                finishes.setdefault(shard, []).append(finish_of(entries[n].key, decision))
        self._finish(finishes, deadline)
        results: list[tuple[int, tuple[Decision, bool] | Exception]] = []
        for n, decision in enumerate(decisions):
            e = entries[n]
            if not decision.committed and decision.code == 0:
                if missing[n]:
                    results.append((e.position, ParticipantUnavailableError(
                        f"group {e.group.txid:x}: shard(s) {missing[n]} did not prepare in time; aborted, "
                        "nothing applied")))
                else:
                    results.append((e.position, ParticipantBusyError(
                        f"group {e.group.txid:x}: a participant was busy; aborted, nothing applied")))
            else:
                results.append((e.position, (decision, False)))
        return results

    def _finish(self, finishes: dict[int, list[Finish]], deadline: float) -> None:
        """Tell every participant, and wait (across leader changes, until the request's deadline) so that a client
        told "created" reads its own write on every shard; past the deadline the sweeper finishes the rest."""
        finish_deadline = max(deadline, time.monotonic() + STEP_TIMEOUT_S)
        futures = [self.executor.run_async(shard, Operation(OP_FINISH, items), finish_deadline)
                   for shard, items in finishes.items()]
        for future in futures:
            try:
                future.result(timeout=max(0.05, deadline - time.monotonic()))
            except Exception as exc:  # the sweeper finishes it from the participant's side
                log.warning("finish not confirmed before the deadline: %s", exc)

    def resolve(self, coordinator_shard: int, key: int, deadline: float) -> Decision:
        """The coordinator's decision for `key`; presume-abort records ABORT there if it has none."""
        host = self.node.local_shard(coordinator_shard)
        if host is not None and host.is_leader():
            (decision,) = self.executor.run(coordinator_shard, Operation(OP_DECIDE, [presumed_abort(key)]), deadline)
            return decision
        address = self.node.forward_address(coordinator_shard) or next(
            iter(self.node.replica_addresses(coordinator_shard)))
        request = internal_pb2.ResolveRequest(coordinator_shard=coordinator_shard)
        convert.u128_to_pb(request.txid, key)
        response = self.executor.call(address, "Resolve", request, deadline - time.monotonic())
        return Decision(response.decision.ok, response.decision.failed_index, response.decision.code,
                        response.decision.timestamp)

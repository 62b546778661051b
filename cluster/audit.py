"""`tidebank audit`: does the money add up across the whole cluster?

Every node answers Admin.GetLedgerTotals with the shards it leads (each read after a
barrier through the shard's log). The audit takes each shard once, from its leader,
sums per ledger over the shards, and judges:

* quiescent: no shard holds a prepared cross-shard transaction. While one does, its
  legs are one-sided and the sums need not match yet; the CLI re-polls for a while.
* balanced, per ledger: total debits_posted == total credits_posted,
  debits_pending == credits_pending, remote_debits_posted == remote_credits_posted and
  remote_debits_pending == remote_credits_pending.

Exit codes (:attr:`AuditReport.exit_code`): 0 quiescent and balanced, 1 a mismatch on a
quiescent cluster, 2 a shard without an answering leader, 3 still not quiescent.

The summing and the verdict are pure functions of the nodes' answers; only
:func:`collect_totals` talks to the cluster.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc

from tidebank.cluster.launcher import ChannelPool
from tidebank.v1 import admin_pb2

FIELDS = (
    "debits_posted",
    "credits_posted",
    "debits_pending",
    "credits_pending",
    "reserved_debits",
    "reserved_credits",
    "remote_debits_posted",
    "remote_credits_posted",
    "remote_debits_pending",
    "remote_credits_pending",
)
#: (left, right) totals that must be equal per ledger on a quiescent cluster.
BALANCED_PAIRS = (
    ("debits_posted", "credits_posted"),
    ("debits_pending", "credits_pending"),
    ("remote_debits_posted", "remote_credits_posted"),
    ("remote_debits_pending", "remote_credits_pending"),
)

EXIT_OK, EXIT_MISMATCH, EXIT_NO_LEADER, EXIT_IN_FLIGHT = 0, 1, 2, 3


def u128(value) -> int:
    return (value.hi << 64) | value.lo


@dataclass(frozen=True)
class ShardTotals:
    """One shard's answer, from the node that leads it."""

    shard_id: int
    node: str  # address of the node that answered
    applied_index: int
    prepared_txns: int
    ledgers: Mapping[int, Mapping[str, int]]  # ledger -> field -> amount


def shard_totals_from_proto(message: admin_pb2.ShardLedgerTotals, node: str) -> ShardTotals:
    ledgers: dict[int, dict[str, int]] = {}
    for entry in message.ledgers:
        sums = ledgers.setdefault(entry.ledger, dict.fromkeys(FIELDS, 0))
        for name in FIELDS:
            sums[name] += u128(getattr(entry, name))
    return ShardTotals(message.shard_id, node, message.applied_index, message.prepared_txns, ledgers)


def pick_per_shard(answers: Iterable[ShardTotals]) -> dict[int, ShardTotals]:
    """Each shard once. Two nodes can both answer for a shard around a leader change (both
    reads were confirmed through the log): the one that has applied more wins."""
    chosen: dict[int, ShardTotals] = {}
    for answer in answers:
        current = chosen.get(answer.shard_id)
        if current is None or answer.applied_index > current.applied_index:
            chosen[answer.shard_id] = answer
    return chosen


def sum_ledgers(shards: Iterable[ShardTotals]) -> dict[int, dict[str, int]]:
    """Per ledger, every field summed over the shards."""
    out: dict[int, dict[str, int]] = {}
    for shard in shards:
        for ledger, sums in shard.ledgers.items():
            total = out.setdefault(ledger, dict.fromkeys(FIELDS, 0))
            for name in FIELDS:
                total[name] += int(sums.get(name, 0))
    return dict(sorted(out.items()))


@dataclass(frozen=True)
class Mismatch:
    ledger: int
    left: str
    right: str
    left_total: int
    right_total: int

    @property
    def difference(self) -> int:
        return self.left_total - self.right_total

    def describe(self) -> str:
        return (f"ledger {self.ledger}: {self.left} {self.left_total} != {self.right} {self.right_total} "
                f"(difference {self.difference:+d})")


def mismatches(ledgers: Mapping[int, Mapping[str, int]]) -> list[Mismatch]:
    out = []
    for ledger, sums in sorted(ledgers.items()):
        for left, right in BALANCED_PAIRS:
            a, b = int(sums.get(left, 0)), int(sums.get(right, 0))
            if a != b:
                out.append(Mismatch(ledger, left, right, a, b))
    return out


@dataclass(frozen=True)
class AuditReport:
    shards: dict[int, ShardTotals]
    ledgers: dict[int, dict[str, int]]
    missing_shards: list[int]  # expected shards no leader answered for
    in_flight: dict[int, int]  # shard -> prepared transactions (only shards with some)
    mismatches: list[Mismatch]
    unreachable: list[str] = field(default_factory=list)  # nodes that did not answer (informational)

    @property
    def complete(self) -> bool:
        return not self.missing_shards

    @property
    def quiescent(self) -> bool:
        return not self.in_flight

    @property
    def balanced(self) -> bool:
        return not self.mismatches

    @property
    def exit_code(self) -> int:
        if not self.complete:
            return EXIT_NO_LEADER
        if not self.quiescent:
            return EXIT_IN_FLIGHT
        if not self.balanced:
            return EXIT_MISMATCH
        return EXIT_OK

    @property
    def verdict(self) -> str:
        return {EXIT_OK: "balanced", EXIT_MISMATCH: "MISMATCH", EXIT_NO_LEADER: "incomplete",
                EXIT_IN_FLIGHT: "not quiescent"}[self.exit_code]

    @property
    def settled(self) -> bool:
        """Nothing more to wait for: every shard answered and none has work in flight."""
        return self.complete and self.quiescent

    def to_dict(self) -> dict:
        return {
            "verdict": self.verdict,
            "exit_code": self.exit_code,
            "quiescent": self.quiescent,
            "balanced": self.balanced,
            "missing_shards": self.missing_shards,
            "in_flight": {str(k): v for k, v in sorted(self.in_flight.items())},
            "unreachable": self.unreachable,
            # 128-bit sums as strings, like ids elsewhere in the CLI's JSON
            "ledgers": [{"ledger": ledger, **{k: str(v) for k, v in sums.items()}}
                        for ledger, sums in self.ledgers.items()],
            "mismatches": [{"ledger": m.ledger, "left": m.left, "right": m.right, "left_total": str(m.left_total),
                            "right_total": str(m.right_total), "difference": str(m.difference)}
                           for m in self.mismatches],
            "shards": [{"shard_id": s.shard_id, "node": s.node, "applied_index": s.applied_index,
                        "prepared_txns": s.prepared_txns} for s in sorted(self.shards.values(),
                                                                           key=lambda s: s.shard_id)],
        }


def audit(answers: Iterable[ShardTotals], expected_shards: Iterable[int],
          unreachable: Sequence[str] = ()) -> AuditReport:
    """The verdict on one round of answers (every node's shards, in any order)."""
    shards = pick_per_shard(answers)
    expected = sorted(set(expected_shards))
    missing = [s for s in expected if s not in shards]
    in_flight = {s.shard_id: s.prepared_txns for s in shards.values() if s.prepared_txns}
    ledgers = sum_ledgers(shards.values())
    return AuditReport(shards, ledgers, missing, in_flight, mismatches(ledgers), list(unreachable))


# ---------------------------------------------------------------------- talking to the cluster


def collect_totals(addresses: Sequence[str], timeout_s: float,
                   pool: ChannelPool) -> tuple[list[ShardTotals], list[str]]:
    """GetLedgerTotals (every shard the node leads) from every address at once:
    (answers, addresses that did not answer)."""
    addresses = list(dict.fromkeys(addresses))

    def ask(address: str) -> admin_pb2.LedgerTotals | None:
        try:
            return pool.admin(address).GetLedgerTotals(admin_pb2.GetLedgerTotalsRequest(), timeout=timeout_s)
        except grpc.RpcError:
            return None

    answers: list[ShardTotals] = []
    unreachable: list[str] = []
    if not addresses:
        return answers, unreachable
    with ThreadPoolExecutor(max_workers=min(16, len(addresses))) as ex:
        for address, reply in zip(addresses, ex.map(ask, addresses), strict=True):
            if reply is None:
                unreachable.append(address)
            else:
                answers += [shard_totals_from_proto(s, address) for s in reply.shards]
    return answers, unreachable

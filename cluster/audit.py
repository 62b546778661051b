"""`tidebank audit`: does the money add up across the whole cluster?

Every node answers Admin.GetLedgerTotals with the shards it leads (each read after a
barrier through the shard's log). The audit takes each shard once, from its leader,
sums per ledger over the shards, and judges:

* quiescent: no shard holds a prepared cross-shard transaction. While one does, its
  legs are one-sided and the sums need not match yet; the CLI re-polls for a while.
* balanced, per ledger: total debits_posted == total credits_posted,
  debits_pending == credits_pending, remote_debits_posted == remote_credits_posted and
  remote_debits_pending == remote_credits_pending.
* the escrow book matches its accounts, per ledger: what the trades still hold == the
  balance of the escrow accounts, and the fees the trades took == the balance of the
  platform-fee accounts (each summed over the shards).
* the clearing book holds, per ledger: participants' positions sum to zero; their
  allowances plus pools equal their caps (while an allowance move is between its
  TAKE and ACK it counts as in flight, like a prepared transaction); the hub account
  is back at zero with nothing pending.

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

#: Escrow totals (EscrowTotal): money sums (U128) and trade counts by state (uint64).
ESCROW_FIELDS = ("held", "fees", "released", "refunded", "escrow_balance", "fee_balance")
TRADE_COUNT_FIELDS = (
    "trades_paid",
    "trades_shipped",
    "trades_disputed",
    "trades_settled",
    "trades_refunded",
    "trades_closed",
)
ALL_ESCROW_FIELDS = ESCROW_FIELDS + TRADE_COUNT_FIELDS
#: (what the trades say, what the accounts hold) that must be equal per ledger on a quiescent cluster.
ESCROW_BALANCED_PAIRS = (
    ("held", "escrow_balance"),
    ("fees", "fee_balance"),
)

#: The clearing book (ClearingTotal), summed over shards.
CLEARING_FIELDS = ("net", "allowance", "pool", "moving", "cap", "hub_balance", "hub_pending")

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
    escrow: Mapping[int, Mapping[str, int]] = field(default_factory=dict)  # ledger -> escrow field -> value
    clearing: Mapping[int, Mapping[str, int]] = field(default_factory=dict)  # ledger -> clearing field -> value


def shard_totals_from_proto(message: admin_pb2.ShardLedgerTotals, node: str) -> ShardTotals:
    ledgers: dict[int, dict[str, int]] = {}
    for entry in message.ledgers:
        sums = ledgers.setdefault(entry.ledger, dict.fromkeys(FIELDS, 0))
        for name in FIELDS:
            sums[name] += u128(getattr(entry, name))
    escrow: dict[int, dict[str, int]] = {}
    for entry in message.escrow:
        sums = escrow.setdefault(entry.ledger, dict.fromkeys(ALL_ESCROW_FIELDS, 0))
        for name in ESCROW_FIELDS:
            sums[name] += u128(getattr(entry, name))
        for name in TRADE_COUNT_FIELDS:
            sums[name] += getattr(entry, name)
    clearing: dict[int, dict[str, int]] = {}
    for entry in message.clearing:
        sums = clearing.setdefault(entry.ledger, dict.fromkeys(CLEARING_FIELDS, 0))
        for name in CLEARING_FIELDS:
            sums[name] += int(getattr(entry, name) or 0)
    return ShardTotals(message.shard_id, node, message.applied_index, message.prepared_txns, ledgers, escrow,
                       clearing)


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


def sum_escrow(shards: Iterable[ShardTotals]) -> dict[int, dict[str, int]]:
    """Per ledger, every escrow field (money and trade counts) summed over the shards."""
    out: dict[int, dict[str, int]] = {}
    for shard in shards:
        for ledger, sums in shard.escrow.items():
            total = out.setdefault(ledger, dict.fromkeys(ALL_ESCROW_FIELDS, 0))
            for name in ALL_ESCROW_FIELDS:
                total[name] += int(sums.get(name, 0))
    return dict(sorted(out.items()))


def sum_clearing(shards: Iterable[ShardTotals]) -> dict[int, dict[str, int]]:
    """Per ledger, the clearing book summed over the shards."""
    out: dict[int, dict[str, int]] = {}
    for shard in shards:
        for ledger, sums in shard.clearing.items():
            total = out.setdefault(ledger, dict.fromkeys(CLEARING_FIELDS, 0))
            for name in CLEARING_FIELDS:
                total[name] += int(sums.get(name, 0))
    return dict(sorted(out.items()))


def clearing_mismatches(clearing: Mapping[int, Mapping[str, int]]) -> list[Mismatch]:
    """Per ledger: nets sum to 0; allowance + pool == cap (when nothing is moving); the hub at 0, nothing pending."""
    out = []
    for ledger, sums in sorted(clearing.items()):
        if sums["net"] != 0:
            out.append(Mismatch(ledger, "positions", "zero", sums["net"], 0, book="clearing"))
        held = sums["allowance"] + sums["pool"]
        if held > sums["cap"] or (sums["moving"] == 0 and held != sums["cap"]):
            out.append(Mismatch(ledger, "allowances+pools", "caps", held, sums["cap"], book="clearing"))
        if sums["hub_balance"] or sums["hub_pending"]:
            out.append(Mismatch(ledger, "hub_balance", "zero", sums["hub_balance"] + sums["hub_pending"], 0,
                                book="clearing"))
    return out


@dataclass(frozen=True)
class Mismatch:
    ledger: int
    left: str
    right: str
    left_total: int
    right_total: int
    book: str = "ledger"  # "ledger": debits vs credits; "escrow": the trades vs their accounts; "clearing"

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


def escrow_mismatches(escrow: Mapping[int, Mapping[str, int]]) -> list[Mismatch]:
    """Per ledger: held == escrow_balance and fees == fee_balance."""
    out = []
    for ledger, sums in sorted(escrow.items()):
        for left, right in ESCROW_BALANCED_PAIRS:
            a, b = int(sums.get(left, 0)), int(sums.get(right, 0))
            if a != b:
                out.append(Mismatch(ledger, left, right, a, b, book="escrow"))
    return out


def escrow_dict(sums: Mapping[str, int]) -> dict:
    """One ledger's escrow totals for JSON: 128-bit money sums as strings, trade counts as numbers."""
    return {**{k: str(int(sums.get(k, 0))) for k in ESCROW_FIELDS},
            **{k: int(sums.get(k, 0)) for k in TRADE_COUNT_FIELDS}}


@dataclass(frozen=True)
class AuditReport:
    shards: dict[int, ShardTotals]
    ledgers: dict[int, dict[str, int]]
    missing_shards: list[int]  # expected shards no leader answered for
    in_flight: dict[int, int]  # shard -> prepared transactions (only shards with some)
    mismatches: list[Mismatch]  # both books: debits/credits ("ledger") and the escrow book ("escrow")
    unreachable: list[str] = field(default_factory=list)  # nodes that did not answer (informational)
    escrow: dict[int, dict[str, int]] = field(default_factory=dict)  # ledger -> escrow totals over shards
    clearing: dict[int, dict[str, int]] = field(default_factory=dict)  # ledger -> clearing book over shards

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
            "escrow": [{"ledger": ledger, **escrow_dict(sums)} for ledger, sums in self.escrow.items()],
            "clearing": [{"ledger": ledger, **{k: str(v) for k, v in sums.items()}}
                         for ledger, sums in self.clearing.items()],
            "mismatches": [{"book": m.book, "ledger": m.ledger, "left": m.left, "right": m.right,
                            "left_total": str(m.left_total), "right_total": str(m.right_total),
                            "difference": str(m.difference)}
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
    in_flight = {s.shard_id: s.prepared_txns + sum(1 for c in s.clearing.values() if c.get("moving"))
                 for s in shards.values() if s.prepared_txns or any(c.get("moving") for c in s.clearing.values())}
    ledgers = sum_ledgers(shards.values())
    escrow = sum_escrow(shards.values())
    clearing = sum_clearing(shards.values())
    found = mismatches(ledgers) + escrow_mismatches(escrow) + clearing_mismatches(clearing)
    return AuditReport(shards, ledgers, missing, in_flight, found, list(unreachable), escrow, clearing)


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

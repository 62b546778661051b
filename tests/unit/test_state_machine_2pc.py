"""The state-machine side of cross-shard two-phase commit: one behaviour per test, real LMDB.

Each simulated shard is its own LMDB env with its own LedgerStateMachine; the tests
play coordinator by hand (PREPARE on every participant, DECIDE on the coordinator,
FINISH on every participant). Account ids encode their shard: 10-19 live on shard 0,
20-29 on shard 1, 30-39 on shard 2.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass, replace

import lmdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tidebank.node.ledger import state_machine as sm_module
from tidebank.node.ledger.operations import (
    OP_CREATE_ACCOUNTS,
    OP_CREATE_TRANSFERS,
    OP_DECIDE,
    OP_FINISH,
    OP_PREPARE,
    Operation,
)
from tidebank.node.ledger.records import (
    BATCH_ITEMS_MAX,
    U64_MAX,
    U128_MAX,
    Account,
    AccountFlags,
    Transfer,
    TransferFlags,
)
from tidebank.node.ledger.results import CreateTransferResult as TR
from tidebank.node.ledger.state_machine import EXPIRE_PER_APPLY_MAX, PREPARED_TXNS_LIMIT_MAX, LedgerStateMachine
from tidebank.node.ledger.txn_records import (
    FINISH_ALREADY,
    FINISH_APPLIED,
    FINISH_CONFLICT,
    FINISH_INTERNAL_ERROR,
    FINISH_UNKNOWN_TXID,
    SIDE_BOTH,
    SIDE_CREDIT,
    SIDE_DEBIT,
    Decide,
    Decision,
    Finish,
    Leg,
    Prepare,
    Vote,
    merge_votes,
    pack_decide,
    pack_finish,
    pack_prepare,
    unpack_decide,
    unpack_finish,
    unpack_prepare,
)

T0 = 1_700_000_000 * 10**9
SECOND = 10**9
MS = 10**6

LINKED = TransferFlags.LINKED
PENDING = TransferFlags.PENDING
POST = TransferFlags.POST_PENDING_TRANSFER
VOID = TransferFlags.VOID_PENDING_TRANSFER
BAL_D = TransferFlags.BALANCING_DEBIT
DMNEC = AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
CMNED = AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS
CLOSED = AccountFlags.CLOSED

YES = Vote(True, 0, 0)


def shard_of(account_id: int) -> int:
    return account_id // 10 - 1


class Shard:
    """One shard: its env and state machine, applied the way the replica does (one write txn per entry)."""

    def __init__(self, env: lmdb.Environment, cluster: Cluster) -> None:
        self.env = env
        self.sm = LedgerStateMachine(env)
        self.cluster = cluster

    def apply(self, *operations: Operation, ts: int | None = None) -> list[list]:
        with self.env.begin(write=True) as txn:
            return self.sm.apply(txn, list(operations), self.cluster.tick() if ts is None else ts)

    def accounts(self, *items: Account) -> list[int]:
        return self.apply(Operation(OP_CREATE_ACCOUNTS, list(items)))[0]

    def transfers(self, *items: Transfer, ts: int | None = None) -> list[int]:
        return self.apply(Operation(OP_CREATE_TRANSFERS, list(items)), ts=ts)[0]

    def prepare(self, *items: Prepare, ts: int | None = None) -> list[Vote]:
        return self.apply(Operation(OP_PREPARE, list(items)), ts=ts)[0]

    def finish(self, *items: Finish, ts: int | None = None) -> list[int]:
        return self.apply(Operation(OP_FINISH, list(items)), ts=ts)[0]

    def decide(self, *items: Decide, ts: int | None = None) -> list[Decision]:
        return self.apply(Operation(OP_DECIDE, list(items)), ts=ts)[0]

    def read(self, fn, *args, **kwargs):
        with self.env.begin() as txn:
            return fn(txn, *args, **kwargs)

    def balances(self, account_id: int) -> tuple[int, int, int, int]:
        (a,) = self.read(self.sm.lookup_accounts, [account_id])
        return a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted

    def transfer(self, transfer_id: int) -> Transfer | None:
        found = self.read(self.sm.lookup_transfers, [transfer_id])
        return found[0] if found else None

    def totals(self, ledger: int = 1) -> dict[str, int]:
        return self.read(self.sm.ledger_totals)[ledger]

    def history(self, account_id: int) -> list[int]:
        return [t.id for t in self.read(self.sm.get_account_transfers, account_id)]

    def dump(self) -> dict[str, dict[bytes, bytes]]:
        """Every ledger db, except the cluster clock (a replayed entry may move it forward)."""
        out = {}
        with self.env.begin() as txn:
            for name in LedgerStateMachine.DB_NAMES:
                db = self.env.open_db(name.encode(), txn=txn, create=False)
                out[name] = dict(txn.cursor(db=db).iternext())
        del out["ledger_meta"]
        return out


@dataclass
class Outcome:
    votes: dict[int, Vote]
    vote: Vote
    decision: Decision
    finished: dict[int, int]


class Cluster:
    """Shards sharing one cluster clock, and a hand-driven coordinator."""

    def __init__(self, envs: list[lmdb.Environment]) -> None:
        self.now = T0
        self.shards = [Shard(env, self) for env in envs]

    def tick(self) -> int:
        self.now += MS
        return self.now

    def __getitem__(self, shard: int) -> Shard:
        return self.shards[shard]

    def find(self, transfer_id: int) -> Transfer | None:
        for s in self.shards:
            t = s.transfer(transfer_id)
            if t is not None:
                return t
        return None

    def plan(self, items: list[Transfer], known: dict[int, Transfer] | None = None) -> tuple[int, dict[int, Prepare]]:
        """(coordinator shard, PREPARE per participant) for a group, as the coordinator builds them."""
        legs: dict[int, list[Leg]] = {}
        in_group = {t.id: t for t in items}
        for index, t in enumerate(items):
            d, c = t.debit_account_id, t.credit_account_id
            if t.flags & (POST | VOID):
                p = in_group.get(t.pending_id) or (known or {}).get(t.pending_id) or self.find(t.pending_id)
                if p is not None:
                    d, c = p.debit_account_id, p.credit_account_id
            sd, sc = shard_of(d), shard_of(c)
            if sd == sc:
                legs.setdefault(sd, []).append(Leg(index, SIDE_BOTH, t))
            else:
                legs.setdefault(sd, []).append(Leg(index, SIDE_DEBIT, t))
                legs.setdefault(sc, []).append(Leg(index, SIDE_CREDIT, t))
        txid = items[0].id
        coordinator = shard_of(items[0].debit_account_id or d)
        return coordinator, {s: Prepare(txid, coordinator, len(items), ls) for s, ls in sorted(legs.items())}

    def prepare_all(self, items: list[Transfer]) -> dict[int, Vote]:
        _, prepares = self.plan(items)
        return {s: self[s].prepare(p)[0] for s, p in prepares.items()}

    def decide(self, items: list[Transfer], vote: Vote) -> Decision:
        coordinator, prepares = self.plan(items)
        d = Decide(items[0].id, vote.prepared, vote.failed_index, vote.code, sorted(prepares), [t.id for t in items])
        return self[coordinator].decide(d)[0]

    def finish_all(self, items: list[Transfer], decision: Decision) -> dict[int, int]:
        _, prepares = self.plan(items)
        f = Finish(items[0].id, decision.committed, decision.timestamp)
        return {s: self[s].finish(f)[0] for s in prepares}

    def run(self, *items: Transfer) -> Outcome:
        """The whole protocol for one group: prepare everywhere, decide, finish everywhere."""
        group = list(items)
        votes = self.prepare_all(group)
        vote = merge_votes(votes.values())
        decision = self.decide(group, vote)
        return Outcome(votes, vote, decision, self.finish_all(group, decision))


def acct(account_id: int, **kw) -> Account:
    kw.setdefault("ledger", 1)
    kw.setdefault("code", 1)
    return Account(id=account_id, **kw)


def xfer(transfer_id: int, dr: int, cr: int, amount: int = 10, **kw) -> Transfer:
    kw.setdefault("ledger", 1)
    kw.setdefault("code", 1)
    return Transfer(id=transfer_id, debit_account_id=dr, credit_account_id=cr, amount=amount, **kw)


def post(transfer_id: int, pending_id: int, amount: int = 0, **kw) -> Transfer:
    return Transfer(id=transfer_id, pending_id=pending_id, amount=amount, flags=POST | kw.pop("flags", 0), **kw)


def void(transfer_id: int, pending_id: int, **kw) -> Transfer:
    return Transfer(id=transfer_id, pending_id=pending_id, flags=VOID | kw.pop("flags", 0), **kw)


def _env(path) -> lmdb.Environment:
    return lmdb.open(str(path), max_dbs=64, map_size=1 << 28, sync=False)


@pytest.fixture
def envs(tmp_path):
    opened = [_env(tmp_path / f"shard{i}") for i in range(3)]
    yield opened
    for e in opened:
        e.close()


@pytest.fixture
def cl(envs) -> Cluster:
    """Per shard k (ids 10k+10..): plain x0, plain x1, DMNEC x2, CMNED x3, ledger-2 x4, closed x5."""
    c = Cluster(envs)
    for k in range(3):
        b = 10 * (k + 1)
        codes = c[k].accounts(
            acct(b), acct(b + 1), acct(b + 2, flags=DMNEC), acct(b + 3, flags=CMNED),
            acct(b + 4, ledger=2), acct(b + 5, flags=CLOSED),
        )  # fmt: skip
        assert codes == [0] * 6
    return c


# ------------------------------------------------------------------ records


def test_prepare_pack_roundtrips():
    p = Prepare(
        U128_MAX - 1, 7, 3,
        [Leg(0, SIDE_DEBIT, xfer(U128_MAX - 1, 10, 20, U64_MAX, user_data_128=2**100)),
         Leg(2, SIDE_BOTH, post(5, 9, timestamp=3))],
    )  # fmt: skip
    assert unpack_prepare(pack_prepare(p)) == p


def test_finish_and_decide_pack_roundtrip():
    f = Finish(2**127, True, U64_MAX)
    d = Decide(2**127 + 5, False, 8188, int(TR.exceeds_credits), [0, 3, 2**32 - 1], [1, U128_MAX - 1])
    assert unpack_finish(pack_finish(f)) == f
    assert unpack_decide(pack_decide(d)) == d


@pytest.mark.parametrize(
    ("unpack", "payload"),
    [
        (unpack_prepare, pack_prepare(Prepare(1, 0, 1, [Leg(0, SIDE_BOTH, xfer(1, 10, 11))]))[:-1]),
        (unpack_prepare, b"\x00" * 3),
        (unpack_finish, pack_finish(Finish(1, True, 5)) + b"\x00"),
        (unpack_decide, pack_decide(Decide(1, True, 0, 0, [1], [1]))[:-1]),
    ],
    ids=["prepare-truncated", "prepare-short-header", "finish-trailing", "decide-truncated"],
)
def test_unpack_refuses_wrong_length(unpack, payload):
    with pytest.raises(ValueError):
        unpack(payload)


def test_pack_refuses_out_of_range_fields():
    with pytest.raises(struct.error):
        pack_finish(Finish(U128_MAX + 1, True, 0))


def test_merge_votes_reports_the_earliest_failure_in_single_shard_check_order():
    votes = [
        YES,
        Vote(False, 2, int(TR.exceeds_credits)),
        Vote(False, 1, int(TR.debit_account_already_closed)),
        Vote(False, 1, int(TR.credit_account_not_found)),
    ]
    assert merge_votes(votes) == Vote(False, 1, int(TR.credit_account_not_found))
    assert merge_votes([YES, YES]) == YES


# ------------------------------------------------------------ commit / abort


def test_commit_moves_money_on_both_shards(cl):
    out = cl.run(xfer(1, 10, 20, 7))
    assert out.votes == {0: YES, 1: YES}
    assert out.decision.committed
    assert out.finished == {0: FINISH_APPLIED, 1: FINISH_APPLIED}
    assert cl[0].balances(10) == (0, 7, 0, 0)
    assert cl[1].balances(20) == (0, 0, 0, 7)


def test_commit_stores_the_transfer_on_every_participant_with_its_own_timestamp(cl):
    cl[1].transfers(xfer(99, 20, 21, 1))  # shard 1's clock is now ahead of shard 0's
    cl.run(xfer(1, 10, 20, 7, user_data_64=3))
    t0, t1 = cl[0].transfer(1), cl[1].transfer(1)
    want = xfer(1, 10, 20, 7, user_data_64=3)
    assert replace(t0, timestamp=0) == want
    assert replace(t1, timestamp=0) == want
    assert t0.timestamp > 0 and t1.timestamp > 0 and t0.timestamp != t1.timestamp


def test_commit_indexes_history_for_local_accounts_only(cl):
    cl.run(xfer(1, 10, 20, 7))
    assert cl[0].history(10) == [1]
    assert cl[1].history(20) == [1]
    assert cl[0].history(20) == []
    assert cl[1].history(10) == []


def test_prepare_reserves_amounts_as_pending_on_each_side(cl):
    assert cl.prepare_all([xfer(1, 10, 20, 7)]) == {0: YES, 1: YES}
    assert cl[0].balances(10) == (7, 0, 0, 0)
    assert cl[1].balances(20) == (0, 0, 7, 0)
    assert cl[0].transfer(1) is None and cl[1].transfer(1) is None


def test_abort_changes_nothing(cl):
    before = [s.dump() for s in cl.shards]
    group = [xfer(1, 10, 20, 7)]
    assert cl.prepare_all(group) == {0: YES, 1: YES}
    decision = cl.decide(group, Vote(False, 0, int(TR.linked_event_failed)))
    assert not decision.committed
    assert cl.finish_all(group, decision) == {0: FINISH_APPLIED, 1: FINISH_APPLIED}
    assert cl[0].balances(10) == (0, 0, 0, 0)
    assert cl[1].balances(20) == (0, 0, 0, 0)
    assert cl.find(1) is None
    after = [s.dump() for s in cl.shards]
    # Only the txn bookkeeping differs: the aborted record on each participant and the decision on shard 0.
    for b, a in zip(before, after, strict=True):
        for name in b:
            if name not in ("ledger_txns", "ledger_decisions"):
                assert a[name] == b[name], name
    assert cl[0].read(cl[0].sm.txn_state, 1) == "aborted"
    assert cl[1].read(cl[1].sm.txn_state, 1) == "aborted"


def test_commit_keeps_both_side_legs_on_one_shard_balanced(cl):
    # Leg 0 is local to shard 0 (both sides), leg 1 crosses to shard 1.
    out = cl.run(xfer(1, 10, 11, 5, flags=LINKED), xfer(2, 11, 21, 3))
    assert out.decision.committed
    assert cl[0].balances(10) == (0, 5, 0, 0)
    assert cl[0].balances(11) == (0, 3, 0, 5)
    assert cl[1].balances(21) == (0, 0, 0, 3)
    assert cl[0].history(11) == [1, 2]


def test_linked_group_of_three_items_over_three_shards_commits(cl):
    group = [xfer(1, 10, 20, 5, flags=LINKED), xfer(2, 20, 30, 4, flags=LINKED), xfer(3, 30, 10, 3)]
    out = cl.run(*group)
    assert out.votes == {0: YES, 1: YES, 2: YES}
    assert out.decision.committed
    assert cl[0].balances(10) == (0, 5, 0, 3)
    assert cl[1].balances(20) == (0, 4, 0, 5)
    assert cl[2].balances(30) == (0, 3, 0, 4)
    for shard, ids in ((0, [1, 3]), (1, [1, 2]), (2, [2, 3])):
        assert [t.id for t in cl[shard].read(cl[shard].sm.lookup_transfers, [1, 2, 3])] == ids


def test_linked_group_over_three_shards_fails_as_a_whole(cl):
    group = [xfer(1, 10, 20, 5, flags=LINKED), xfer(2, 20, 30, 4, flags=LINKED), xfer(3, 30, 32, 3, ledger=2)]
    out = cl.run(*group)
    assert out.votes[0] == YES
    assert out.votes[1] == YES
    assert out.votes[2] == Vote(False, 2, int(TR.transfer_must_have_the_same_ledger_as_accounts))
    assert replace(out.decision, timestamp=0) == Decision(
        False, 2, int(TR.transfer_must_have_the_same_ledger_as_accounts), 0
    )
    for shard, account in ((0, 10), (1, 20), (2, 30)):
        assert cl[shard].balances(account) == (0, 0, 0, 0)
    assert all(cl.find(i) is None for i in (1, 2, 3))


def test_later_leg_sees_earlier_legs_reservations(cl):
    # 12 is DMNEC with 10 credits; two legs of 6 debiting it cannot both fit.
    cl.run(xfer(1, 20, 12, 10))
    out = cl.run(xfer(2, 12, 21, 6, flags=LINKED), xfer(3, 12, 22, 6))
    assert out.votes[0] == Vote(False, 1, int(TR.exceeds_credits))
    assert cl[0].balances(12) == (0, 0, 0, 10)


def test_exceeds_credits_via_reservation_of_a_concurrent_prepared_txn(cl):
    cl.run(xfer(1, 20, 12, 10))  # 12 (DMNEC) has 10 credits
    assert cl.prepare_all([xfer(2, 12, 21, 8)]) == {0: YES, 1: YES}
    votes = cl.prepare_all([xfer(3, 12, 22, 8)])
    assert votes[0] == Vote(False, 0, int(TR.exceeds_credits))
    # The reservation binds single-shard transfers too.
    assert cl[0].transfers(xfer(4, 12, 11, 3)) == [TR.exceeds_credits]
    assert cl[0].balances(12) == (8, 0, 0, 10)


def test_chain_credit_funds_a_later_debit_of_the_same_limited_account(cl):
    # As in a single-shard chain: 32 (DMNEC, no credits) may pay on because the chain credited it first.
    group = [xfer(1, 10, 21, 10, flags=LINKED), xfer(2, 21, 32, 10, flags=LINKED), xfer(3, 32, 11, 10)]
    out = cl.run(*group)
    assert out.votes == {0: YES, 1: YES, 2: YES} and out.decision.committed
    assert cl[2].balances(32) == (0, 10, 0, 10)
    assert cl[2].dump()["ledger_xfund"] == {}


def test_chain_debit_funds_a_later_credit_of_the_same_credits_limited_account(cl):
    group = [xfer(1, 33, 10, 10, flags=LINKED), xfer(2, 20, 33, 10)]  # 33: CMNED, no debits yet
    assert cl.run(*group).decision.committed
    assert cl[2].balances(33) == (0, 10, 0, 10)


def test_chain_credit_beyond_what_it_funds_is_exceeds_credits(cl):
    group = [xfer(1, 21, 32, 10, flags=LINKED), xfer(2, 32, 11, 11)]
    assert cl.prepare_all(group)[2] == Vote(False, 1, int(TR.exceeds_credits))


def test_pending_credit_in_the_chain_does_not_fund_a_later_debit(cl):
    group = [xfer(1, 21, 32, 10, flags=PENDING | LINKED), xfer(2, 32, 11, 10)]
    assert cl.prepare_all(group)[2] == Vote(False, 1, int(TR.exceeds_credits))


def test_chain_funded_credit_is_not_available_to_others_while_prepared(cl):
    group = [xfer(1, 21, 32, 10, flags=LINKED), xfer(2, 32, 11, 10)]
    assert cl.prepare_all(group) == {0: YES, 1: YES, 2: YES}
    # Stored past its limit by what the txn itself funds; reads net that matched pair out.
    assert cl[2].balances(32) == (0, 0, 0, 0)
    assert cl.prepare_all([xfer(3, 32, 12, 1)])[2] == Vote(False, 0, int(TR.exceeds_credits))
    assert cl[2].transfers(xfer(4, 32, 30, 1)) == [TR.exceeds_credits]
    assert cl[2].transfers(xfer(5, 30, 32, 1)) == [0]  # other changes to the account still pass the invariants


def test_a_read_while_a_self_funded_group_is_prepared_never_shows_the_account_beyond_its_limit(cl):
    cl.run(xfer(1, 20, 32, 4))  # 32 (DMNEC) has 4 credits posted of its own
    group = [xfer(2, 21, 32, 10, flags=LINKED), xfer(3, 32, 11, 12)]  # pays 12: its 4 plus 8 of the chain's 10
    assert cl.prepare_all(group) == {0: YES, 1: YES, 2: YES}
    debits_pending, debits_posted, credits_pending, credits_posted = cl[2].balances(32)
    assert debits_pending + debits_posted <= credits_posted
    assert debits_pending - credits_pending == 12 - 10  # the net hold on the account is unchanged
    cl.finish_all(group, cl.decide(group, YES))
    assert cl[2].balances(32) == (0, 12, 0, 14)


def test_abort_of_a_chain_funded_debit_removes_the_allowance(cl):
    group = [xfer(1, 21, 32, 10, flags=LINKED), xfer(2, 32, 11, 10)]
    cl.prepare_all(group)
    assert cl[2].dump()["ledger_xfund"] != {}
    cl.finish_all(group, cl.decide(group, Vote(False, 0, int(TR.linked_event_failed))))
    assert cl[2].balances(32) == (0, 0, 0, 0)
    assert cl[2].dump()["ledger_xfund"] == {}


def test_exceeds_debits_via_reservation_of_a_concurrent_prepared_txn(cl):
    cl.run(xfer(1, 13, 20, 10))  # 13 (CMNED) has 10 debits
    assert cl.prepare_all([xfer(2, 21, 13, 8)]) == {0: YES, 1: YES}
    assert cl.prepare_all([xfer(3, 22, 13, 8)])[0] == Vote(False, 0, int(TR.exceeds_debits))


# ------------------------------------------------------- rejection codes


def _expect_failure(cl: Cluster, bad: Transfer, failing: dict[int, int], plan_items=None) -> None:
    """Group [harmless leg 0 (11 -> 21), bad]: the failing shards vote NO at index 1, the others yes."""
    group = [xfer(1, 11, 21, 1, flags=LINKED), bad]
    prepares = _plan_as(cl, group, plan_items) if plan_items else cl.plan(group)[1]
    before = {s: cl[s].dump() for s in prepares}
    votes = {s: cl[s].prepare(p)[0] for s, p in prepares.items()}
    want = {s: Vote(False, 1, int(failing[s])) if s in failing else YES for s in prepares}
    assert votes == want
    vote = merge_votes(votes.values())
    (decision,) = cl[0].decide(Decide(1, vote.prepared, vote.failed_index, vote.code, sorted(prepares), [1, bad.id]))
    assert not decision.committed and decision.failed_index == 1
    for s in prepares:
        want_finish = FINISH_ALREADY if s in failing else FINISH_APPLIED
        assert cl[s].finish(Finish(1, False, decision.timestamp)) == [want_finish]
    for s, dump in before.items():
        after = cl[s].dump()
        for name in dump:
            if name not in ("ledger_txns", "ledger_decisions"):
                assert after[name] == dump[name], (s, name)
    assert cl.find(1) is None


DEBIT_SIDE = {
    # code: (setup on shard 0 or None, failing transfer debiting shard 0 and crediting shard 1)
    "debit_account_not_found": (None, xfer(2, 16, 20)),
    "transfer_must_have_the_same_ledger_as_accounts": (None, xfer(2, 14, 20)),
    "debit_account_already_closed": (None, xfer(2, 15, 20)),
    "overflows_debits_pending": (xfer(90, 10, 11, U64_MAX - 5, flags=PENDING), xfer(2, 10, 20, flags=PENDING)),
    "overflows_debits_posted": (xfer(90, 10, 11, U64_MAX - 5), xfer(2, 10, 20)),
    "overflows_debits": (xfer(90, 10, 11, U64_MAX - 5, flags=PENDING), xfer(2, 10, 20)),
    "exceeds_credits": (None, xfer(2, 12, 20)),
}
CREDIT_SIDE = {
    "credit_account_not_found": (None, xfer(2, 20, 16)),
    "transfer_must_have_the_same_ledger_as_accounts": (None, xfer(2, 20, 14)),
    "credit_account_already_closed": (None, xfer(2, 20, 15)),
    "overflows_credits_pending": (xfer(90, 11, 10, U64_MAX - 5, flags=PENDING), xfer(2, 20, 10, flags=PENDING)),
    "overflows_credits_posted": (xfer(90, 11, 10, U64_MAX - 5), xfer(2, 20, 10)),
    "overflows_credits": (xfer(90, 11, 10, U64_MAX - 5, flags=PENDING), xfer(2, 20, 10)),
    "exceeds_debits": (None, xfer(2, 20, 13)),
}


@pytest.mark.parametrize("code", sorted(DEBIT_SIDE))
def test_debit_side_rejection_votes_no_on_the_debit_shard(cl, code):
    setup, bad = DEBIT_SIDE[code]
    if setup is not None:
        assert cl[0].transfers(setup) == [0]
    _expect_failure(cl, bad, {0: TR[code]})


@pytest.mark.parametrize("code", sorted(CREDIT_SIDE))
def test_credit_side_rejection_votes_no_on_the_credit_shard(cl, code):
    setup, bad = CREDIT_SIDE[code]
    if setup is not None:
        assert cl[0].transfers(setup) == [0]
    _expect_failure(cl, bad, {0: TR[code]})


def test_both_sides_leg_checks_accounts_must_have_the_same_ledger(cl):
    _expect_failure(cl, xfer(2, 10, 14), {0: TR.accounts_must_have_the_same_ledger})


def test_overflows_timeout_is_checked_against_the_prepare_cluster_time(cl):
    late = U64_MAX - 10 * SECOND
    votes = {
        s: cl[s].prepare(p, ts=late)[0] for s, p in cl.plan([xfer(1, 10, 20, flags=PENDING, timeout=11)])[1].items()
    }
    assert votes == {0: Vote(False, 0, int(TR.overflows_timeout)), 1: Vote(False, 0, int(TR.overflows_timeout))}


STATIC = {
    "timestamp_must_be_zero": {"timestamp": 1},
    "reserved_flag": {"flags": 64},
    "id_must_not_be_zero": {"id": 0},
    "id_must_not_be_int_max": {"id": U128_MAX},
    "flags_are_mutually_exclusive": {"flags": PENDING | POST, "pending_id": 9},
    "debit_account_id_must_not_be_zero": {"debit_account_id": 0},
    "debit_account_id_must_not_be_int_max": {"debit_account_id": U128_MAX},
    "credit_account_id_must_not_be_zero": {"credit_account_id": 0},
    "credit_account_id_must_not_be_int_max": {"credit_account_id": U128_MAX},
    "accounts_must_be_different": {"credit_account_id": 10},
    "pending_id_must_be_zero": {"pending_id": 9},
    "pending_id_must_not_be_zero": {"flags": POST},
    "pending_id_must_not_be_int_max": {"flags": VOID, "pending_id": U128_MAX},
    "pending_id_must_be_different": {"flags": POST, "pending_id": 2},
    "timeout_reserved_for_pending_transfer": {"timeout": 5},
    "amount_must_not_be_zero": {"amount": 0},
    "ledger_must_not_be_zero": {"ledger": 0},
    "code_must_not_be_zero": {"code": 0},
    "accounts_on_different_shards": {"flags": BAL_D},  # balancing needs both balances
}


@pytest.mark.parametrize("code", sorted(STATIC))
def test_static_rejection_is_the_same_on_every_participant(cl, code):
    bad = replace(xfer(2, 10, 20), **STATIC[code])
    # Place the leg as for 10 -> 20 whatever the broken fields say.
    _expect_failure(cl, bad, {0: TR[code], 1: TR[code]}, plan_items=[xfer(1, 11, 21, 1, flags=LINKED), xfer(2, 10, 20)])


def _plan_as(cl: Cluster, group: list[Transfer], placed_as: list[Transfer]) -> dict[int, Prepare]:
    _, prepares = cl.plan(placed_as)
    by_index = dict(enumerate(group))
    return {
        s: replace(p, legs=[Leg(leg.index, leg.sides, by_index[leg.index]) for leg in p.legs])
        for s, p in prepares.items()
    }


@pytest.fixture
def pending50(cl) -> Cluster:
    """Cross-shard pending transfer 50 (10 -> 20, 10, timeout 60 s) and posted transfer 51 (10 -> 20, 10)."""
    assert cl.run(xfer(50, 10, 20, 10, flags=PENDING, timeout=60)).decision.committed
    assert cl.run(xfer(51, 10, 20, 10)).decision.committed
    return cl


POST_VOID = {
    "pending_transfer_not_pending": post(2, 51),
    "pending_transfer_has_different_debit_account_id": post(2, 50, debit_account_id=11),
    "pending_transfer_has_different_credit_account_id": post(2, 50, credit_account_id=21),
    "pending_transfer_has_different_ledger": post(2, 50, ledger=2),
    "pending_transfer_has_different_code": post(2, 50, code=2),
    "exceeds_pending_transfer_amount": post(2, 50, amount=11),
    "pending_transfer_has_different_amount": void(2, 50, amount=9),
}


@pytest.mark.parametrize("code", sorted(POST_VOID))
def test_post_void_rejection_is_the_same_on_both_shards_of_the_pending(pending50, code):
    _expect_failure(pending50, POST_VOID[code], {0: TR[code], 1: TR[code]})


def test_post_of_unknown_pending_transfer_is_pending_transfer_not_found(cl):
    bad = post(2, 77, debit_account_id=10, credit_account_id=20)
    _expect_failure(cl, bad, {0: TR.pending_transfer_not_found, 1: TR.pending_transfer_not_found})


def test_post_of_posted_pending_transfer_is_already_posted(pending50):
    assert pending50.run(post(60, 50)).decision.committed
    code = TR.pending_transfer_already_posted
    _expect_failure(pending50, post(2, 50), {0: code, 1: code})


def test_void_of_voided_pending_transfer_is_already_voided(pending50):
    assert pending50.run(void(60, 50)).decision.committed
    code = TR.pending_transfer_already_voided
    _expect_failure(pending50, void(2, 50), {0: code, 1: code})


def test_post_of_expired_pending_transfer_is_pending_transfer_expired(cl):
    out = cl.run(xfer(50, 10, 20, 10, flags=PENDING, timeout=1))
    cl.now = out.decision.timestamp + SECOND
    cl[0].apply()
    cl[1].apply()
    code = TR.pending_transfer_expired
    _expect_failure(cl, post(2, 50), {0: code, 1: code})


def test_existing_transfer_id_is_exists_on_every_shard_that_stored_it(pending50):
    _expect_failure(pending50, xfer(51, 10, 20, 10), {0: TR.exists, 1: TR.exists})


def test_existing_transfer_id_with_other_fields_is_exists_with_different(pending50):
    code = TR.exists_with_different_amount
    _expect_failure(pending50, xfer(51, 10, 20, 11), {0: code, 1: code})


def test_id_that_failed_single_shard_is_id_already_failed_where_it_failed(cl):
    assert cl[0].transfers(xfer(70, 12, 11, 5)) == [TR.exceeds_credits]
    _expect_failure(cl, xfer(70, 12, 20, 5), {0: TR.id_already_failed})


def test_duplicate_id_within_the_group_is_exists(cl):
    group = [xfer(1, 10, 20, 5, flags=LINKED), xfer(1, 10, 20, 5)]
    assert cl.prepare_all(group) == {0: Vote(False, 1, int(TR.exists)), 1: Vote(False, 1, int(TR.exists))}


def test_failed_legs_are_not_recorded_as_failed_ids(cl):
    _expect_failure(cl, xfer(2, 12, 20), {0: TR.exceeds_credits})
    cl.run(xfer(3, 20, 12, 50))  # now 12 has credits
    assert cl.run(xfer(4, 11, 21, 1, flags=LINKED), xfer(2, 12, 20)).decision.committed


# ----------------------------------------------------------- idempotency


def test_prepare_again_votes_yes_and_reserves_once(cl):
    _, prepares = cl.plan([xfer(1, 10, 20, 7)])
    assert cl[0].prepare(prepares[0]) == [YES]
    assert cl[0].prepare(prepares[0]) == [YES]
    assert cl[0].balances(10) == (7, 0, 0, 0)


def test_prepare_after_commit_votes_yes_and_changes_nothing(cl):
    cl.run(xfer(1, 10, 20, 7))
    before = cl[0].dump()
    _, prepares = cl.plan([xfer(1, 10, 20, 7)])
    assert cl[0].prepare(prepares[0]) == [YES]
    assert cl[0].dump() == before


def test_prepare_after_a_no_vote_returns_the_recorded_no(cl):
    _, prepares = cl.plan([xfer(1, 12, 20, 7)])
    no = Vote(False, 0, int(TR.exceeds_credits))
    assert cl[0].prepare(prepares[0]) == [no]
    cl[0].transfers(xfer(2, 11, 12, 50))  # now it would fit
    assert cl[0].prepare(prepares[0]) == [no]
    assert cl[0].balances(12) == (0, 0, 0, 50)


def test_prepare_after_abort_votes_busy(cl):
    group = [xfer(1, 10, 20, 7)]
    cl.prepare_all(group)
    cl.finish_all(group, cl.decide(group, Vote(False, 0, int(TR.linked_event_failed))))
    _, prepares = cl.plan(group)
    assert cl[0].prepare(prepares[0]) == [Vote(False, 0, 0)]  # nothing applied, no rule failed: next attempt
    assert cl[0].balances(10) == (0, 0, 0, 0)


def test_late_prepare_after_abort_tombstone_votes_busy(cl):
    assert cl[1].finish(Finish(1, False, 0)) == [FINISH_UNKNOWN_TXID]
    assert cl[1].read(cl[1].sm.txn_state, 1) == "aborted"
    _, prepares = cl.plan([xfer(1, 10, 20, 7)])
    assert cl[1].prepare(prepares[1]) == [Vote(False, 0, 0)]
    assert cl[1].balances(20) == (0, 0, 0, 0)
    assert cl[1].read(cl[1].sm.prepared_txns) == []


def test_finish_again_is_already(cl):
    out = cl.run(xfer(1, 10, 20, 7))
    before = cl[0].dump()
    assert cl[0].finish(Finish(1, True, out.decision.timestamp)) == [FINISH_ALREADY]
    assert cl[0].dump() == before
    assert cl[0].balances(10) == (0, 7, 0, 0)


def test_finish_abort_again_is_already(cl):
    assert cl[0].finish(Finish(1, False, 0)) == [FINISH_UNKNOWN_TXID]
    assert cl[0].finish(Finish(1, False, 0)) == [FINISH_ALREADY]


def test_finish_abort_after_a_no_vote_is_already(cl):
    _, prepares = cl.plan([xfer(1, 12, 20, 7)])
    cl[0].prepare(prepares[0])
    assert cl[0].finish(Finish(1, False, 0)) == [FINISH_ALREADY]
    assert cl[0].read(cl[0].sm.txn_state, 1) == "aborted"


def test_finish_with_the_opposite_outcome_is_conflict_and_changes_nothing(cl, caplog):
    out = cl.run(xfer(1, 10, 20, 7))
    before = cl[0].dump()
    with caplog.at_level(logging.CRITICAL, logger=sm_module.__name__):
        assert cl[0].finish(Finish(1, False, 0)) == [FINISH_CONFLICT]
    assert cl[0].dump() == before
    assert "already committed" in caplog.text
    assert out.decision.committed


def test_finish_commit_after_a_tombstone_is_conflict(cl, caplog):
    cl[0].finish(Finish(1, False, 0))
    with caplog.at_level(logging.CRITICAL, logger=sm_module.__name__):
        assert cl[0].finish(Finish(1, True, T0)) == [FINISH_CONFLICT]
    assert cl[0].read(cl[0].sm.txn_state, 1) == "aborted"


def test_finish_commit_of_unknown_txid_changes_nothing(cl, caplog):
    before = cl[0].dump()
    with caplog.at_level(logging.CRITICAL, logger=sm_module.__name__):
        assert cl[0].finish(Finish(1, True, T0)) == [FINISH_UNKNOWN_TXID]
    assert cl[0].dump() == before
    assert cl[0].read(cl[0].sm.txn_state, 1) is None
    assert "never prepared" in caplog.text


def test_decide_records_the_first_decision_and_returns_it_to_later_writers(cl):
    sweeper = Decide(1, False, 0, int(TR.linked_event_failed), [0, 1], [1])
    (first,) = cl[0].decide(sweeper)
    assert first == Decision(False, 0, int(TR.linked_event_failed), cl.now)
    (second,) = cl[0].decide(Decide(1, True, 0, 0, [0, 1], [1]))
    assert second == first
    assert cl[0].read(cl[0].sm.txn_decision, 1) == first


def test_coordinator_commit_after_sweeper_abort_aborts_everywhere(cl):
    group = [xfer(1, 10, 20, 7)]
    assert cl.prepare_all(group) == {0: YES, 1: YES}
    sweeper = cl.decide(group, Vote(False, 0, int(TR.linked_event_failed)))  # presume-abort
    coordinator = cl.decide(group, YES)
    assert coordinator == sweeper and not coordinator.committed
    assert cl.finish_all(group, coordinator) == {0: FINISH_APPLIED, 1: FINISH_APPLIED}
    assert cl[0].balances(10) == (0, 0, 0, 0)
    assert cl[1].balances(20) == (0, 0, 0, 0)


def test_decide_keeps_participants_and_transfer_ids_for_recovery(cl):
    d = Decide(1, True, 0, 0, [2, 0, 1], [1, 2, 3])
    cl[0].decide(d)
    decision, recorded = cl[0].read(cl[0].sm.txn_decision_record, 1)
    assert recorded == d and decision.committed
    assert cl[0].read(cl[0].sm.txn_decision, 99) is None


def test_txn_state_follows_prepare_and_finish(cl):
    group = [xfer(1, 10, 20, 7)]
    assert cl[0].read(cl[0].sm.txn_state, 1) is None
    cl.prepare_all(group)
    assert cl[0].read(cl[0].sm.txn_state, 1) == "prepared"
    cl.finish_all(group, cl.decide(group, YES))
    assert cl[0].read(cl[0].sm.txn_state, 1) == "committed"


# ------------------------------------------------------ pending, post, void


def test_pending_across_shards_holds_then_post_moves_money(cl):
    out = cl.run(xfer(50, 10, 20, 10, flags=PENDING))
    assert out.decision.committed
    assert cl[0].balances(10) == (10, 0, 0, 0)
    assert cl[1].balances(20) == (0, 0, 10, 0)
    assert cl.run(post(60, 50, debit_account_id=10)).decision.committed
    assert cl[0].balances(10) == (0, 10, 0, 0)
    assert cl[1].balances(20) == (0, 0, 0, 10)
    assert cl[0].transfer(60) == cl[1].transfer(60).__class__(
        id=60, debit_account_id=10, credit_account_id=20, amount=10, pending_id=50, ledger=1, code=1,
        flags=POST, timestamp=cl[0].transfer(60).timestamp,
    )  # fmt: skip


def test_partial_post_across_shards_releases_the_remainder(cl):
    cl.run(xfer(50, 10, 20, 10, flags=PENDING))
    assert cl.run(post(60, 50, amount=4)).decision.committed
    assert cl[0].balances(10) == (0, 4, 0, 0)
    assert cl[1].balances(20) == (0, 0, 0, 4)
    assert cl[1].transfer(60).amount == 4


def test_void_across_shards_releases_the_hold(cl):
    cl.run(xfer(50, 10, 20, 10, flags=PENDING))
    assert cl.run(void(60, 50)).decision.committed
    assert cl[0].balances(10) == (0, 0, 0, 0)
    assert cl[1].balances(20) == (0, 0, 0, 0)
    assert cl[0].history(10) == [50, 60]


def test_single_shard_pending_posted_by_a_cross_shard_group(cl):
    assert cl[0].transfers(xfer(50, 10, 11, 10, flags=PENDING)) == [0]
    out = cl.run(post(60, 50, flags=LINKED), xfer(61, 11, 20, 3))
    assert out.decision.committed
    assert cl[0].balances(10) == (0, 10, 0, 0)
    assert cl[0].balances(11) == (0, 3, 0, 10)


def test_pending_and_its_post_in_the_same_group(cl):
    out = cl.run(xfer(40, 10, 20, 10, flags=PENDING | LINKED, timeout=5), post(41, 40, amount=4))
    assert out.decision.committed
    assert cl[0].balances(10) == (0, 4, 0, 0)
    assert cl[1].balances(20) == (0, 0, 0, 4)
    assert cl[0].read(cl[0].sm.next_expiry_ns) is None
    code = TR.pending_transfer_already_posted
    _expect_failure(cl, void(3, 40), {0: code, 1: code})


def test_second_post_of_the_same_pending_in_one_group_is_already_posted(cl):
    cl.run(xfer(50, 10, 20, 10, flags=PENDING))
    group = [post(1, 50, amount=2, flags=LINKED), post(2, 50, amount=3)]
    code = int(TR.pending_transfer_already_posted)
    assert cl.prepare_all(group) == {0: Vote(False, 1, code), 1: Vote(False, 1, code)}


def test_single_shard_post_of_a_cross_shard_pending_is_accounts_on_different_shards(cl):
    cl.run(xfer(50, 10, 20, 10, flags=PENDING))
    assert cl[0].transfers(post(60, 50, debit_account_id=10)) == [TR.accounts_on_different_shards]
    # Not recorded: the same id can still be posted through a txn.
    assert cl[0].transfers(post(60, 50, debit_account_id=10)) == [TR.accounts_on_different_shards]
    assert cl.run(post(60, 50)).decision.committed


def test_single_shard_post_of_a_both_sides_txn_pending_uses_commit_expiry(cl):
    # Pending 50 is local to shard 0 but was created by a cross-shard group.
    out = cl.run(xfer(50, 10, 11, 10, flags=PENDING | LINKED, timeout=2), xfer(51, 10, 20, 1))
    expires_at = out.decision.timestamp + 2 * SECOND
    assert cl[0].read(cl[0].sm.next_expiry_ns) == expires_at
    assert cl[0].transfers(post(60, 50), ts=expires_at - 1) == [0]
    assert cl[0].balances(11) == (0, 0, 0, 10)
    assert cl[0].read(cl[0].sm.next_expiry_ns) is None


# ---------------------------------------------------------------- expiry


def test_cross_shard_pending_expires_on_each_shard_at_commit_timestamp_plus_timeout(cl):
    group = [xfer(50, 10, 20, 10, flags=PENDING, timeout=3)]
    cl.prepare_all(group)
    decision = cl.decide(group, YES)
    expires_at = decision.timestamp + 3 * SECOND
    f = Finish(50, True, decision.timestamp)
    assert cl[0].finish(f, ts=decision.timestamp + MS) == [FINISH_APPLIED]
    assert cl[1].finish(f, ts=decision.timestamp + 2 * SECOND) == [FINISH_APPLIED]  # a slow participant
    for shard, account in ((0, 10), (1, 20)):
        s = cl[shard]
        assert s.read(s.sm.next_expiry_ns) == expires_at
        s.apply(ts=expires_at - 1)
        assert sum(s.balances(account)) == 10
        s.apply(ts=expires_at)
        assert s.balances(account) == (0, 0, 0, 0)
        assert s.read(s.sm.next_expiry_ns) is None
        totals = s.totals()
        assert totals["remote_debits_pending"] == totals["remote_credits_pending"] == 0


def test_locked_pending_does_not_expire_until_finished(cl):
    out = cl.run(xfer(50, 10, 20, 10, flags=PENDING, timeout=1))
    expires_at = out.decision.timestamp + SECOND
    group = [post(60, 50)]
    assert cl.prepare_all(group) == {0: YES, 1: YES}
    cl.now = expires_at + 5 * SECOND
    for shard in (0, 1):
        cl[shard].apply()
        assert cl[shard].read(cl[shard].sm.next_expiry_ns) is None  # nothing to wake the leader for
    assert cl[0].balances(10) == (10, 0, 0, 0)
    cl.finish_all(group, cl.decide(group, YES))
    assert cl[0].balances(10) == (0, 10, 0, 0)
    assert cl[1].balances(20) == (0, 0, 0, 10)


def test_locked_pending_expires_after_an_abort_if_due(cl):
    out = cl.run(xfer(50, 10, 20, 10, flags=PENDING, timeout=1))
    expires_at = out.decision.timestamp + SECOND
    group = [post(60, 50)]
    cl.prepare_all(group)
    cl.now = expires_at + SECOND
    cl.finish_all(group, cl.decide(group, Vote(False, 0, int(TR.linked_event_failed))))
    for shard, account in ((0, 10), (1, 20)):
        s = cl[shard]
        assert s.read(s.sm.next_expiry_ns) == expires_at
        s.apply()
        assert s.balances(account) == (0, 0, 0, 0)
    code = TR.pending_transfer_expired
    _expect_failure(cl, post(2, 50), {0: code, 1: code})


def test_expiry_sweep_skips_locked_pendings_without_losing_its_budget(cl):
    items = [xfer(100 + i, 10, 11, 1, flags=PENDING, timeout=1) for i in range(EXPIRE_PER_APPLY_MAX + 1)]
    assert cl[0].transfers(*items) == [0] * len(items)
    lock = [post(60, 100, flags=LINKED), xfer(61, 10, 20, 1)]  # locks the earliest-expiring one
    assert cl.prepare_all(lock) == {0: YES, 1: YES}
    cl.now += 2 * SECOND
    cl[0].apply()
    assert cl[0].balances(10) == (1 + 1, 0, 0, 0)  # the locked hold and leg 61's reservation


# ---------------------------------------------------------------- locks


def test_locked_pending_refuses_a_post_from_another_txn_as_already_posted(cl):
    cl.run(xfer(50, 10, 20, 10, flags=PENDING))
    assert cl.prepare_all([post(60, 50)]) == {0: YES, 1: YES}
    code = int(TR.pending_transfer_already_posted)
    assert cl.prepare_all([void(61, 50)]) == {0: Vote(False, 0, code), 1: Vote(False, 0, code)}


def test_locked_pending_refuses_a_post_from_another_txn_as_already_voided(cl):
    cl.run(xfer(50, 10, 20, 10, flags=PENDING))
    assert cl.prepare_all([void(60, 50)]) == {0: YES, 1: YES}
    code = int(TR.pending_transfer_already_voided)
    assert cl.prepare_all([post(61, 50)]) == {0: Vote(False, 0, code), 1: Vote(False, 0, code)}


def test_locked_single_shard_pending_refuses_a_single_shard_post_and_records_it(cl):
    assert cl[0].transfers(xfer(50, 10, 11, 10, flags=PENDING)) == [0]
    assert cl.prepare_all([void(60, 50, flags=LINKED), xfer(61, 10, 20, 1)]) == {0: YES, 1: YES}
    assert cl[0].transfers(post(62, 50)) == [TR.pending_transfer_already_voided]
    assert cl[0].transfers(post(62, 50)) == [TR.id_already_failed]


def test_abort_unlocks_the_pending_transfer(cl):
    cl.run(xfer(50, 10, 20, 10, flags=PENDING))
    group = [post(60, 50)]
    cl.prepare_all(group)
    cl.finish_all(group, cl.decide(group, Vote(False, 0, int(TR.linked_event_failed))))
    assert cl.run(void(61, 50)).decision.committed
    assert cl[0].balances(10) == (0, 0, 0, 0)


def test_transfer_id_of_a_prepared_txn_is_refused_single_shard_until_it_finishes(cl):
    group = [xfer(1, 10, 20, 7)]
    cl.prepare_all(group)
    assert cl[0].transfers(xfer(1, 10, 11, 7)) == [TR.internal_error]
    cl.finish_all(group, cl.decide(group, YES))
    assert cl[0].transfers(xfer(1, 10, 20, 7)) == [TR.exists]


def test_transfer_id_of_a_prepared_txn_makes_another_prepare_vote_busy(cl):
    cl.prepare_all([xfer(1, 10, 20, 7)])
    other = [xfer(2, 11, 21, 1, flags=LINKED), xfer(1, 10, 20, 7)]
    busy = Vote(False, 1, 0)
    assert cl.prepare_all(other) == {0: busy, 1: busy}
    assert merge_votes([busy, Vote(False, 1, int(TR.exceeds_credits))]) == busy
    assert cl[0].balances(10) == (7, 0, 0, 0)


def test_retry_attempt_under_a_new_key_votes_busy_while_the_old_attempt_is_prepared(cl):
    # The coordinator retries a group under a fresh key; the first attempt is still prepared on shard 1.
    group = [xfer(1, 10, 20, 7)]
    _, first = cl.plan(group)
    assert cl[1].prepare(first[1]) == [YES]
    retry = {s: replace(p, txid=12345) for s, p in first.items()}
    assert cl[0].prepare(retry[0]) == [YES]
    assert cl[1].prepare(retry[1]) == [Vote(False, 0, 0)]
    # Once the first attempt is aborted everywhere, a further attempt prepares.
    assert cl[1].finish(Finish(1, False, 0)) == [FINISH_APPLIED]
    assert cl[0].finish(Finish(12345, False, 0)) == [FINISH_APPLIED]
    again = {s: replace(p, txid=12346) for s, p in first.items()}
    assert [cl[s].prepare(p)[0] for s, p in again.items()] == [YES, YES]


# ------------------------------------------------------------ reads, totals


def test_prepared_txns_lists_oldest_first(cl):
    for txid in (3, 1, 2):
        _, prepares = cl.plan([xfer(txid, 10, 20, 1)])
        cl[0].prepare(prepares[0])
    listed = cl[0].read(cl[0].sm.prepared_txns)
    assert [(txid, shard) for txid, shard, _ in listed] == [(3, 0), (1, 0), (2, 0)]
    assert [at for _, _, at in listed] == sorted(at for _, _, at in listed)
    assert cl[0].read(cl[0].sm.prepared_txns, limit=2) == listed[:2]
    assert cl[0].read(cl[0].sm.prepared_txn_count) == 3
    cl[0].finish(Finish(1, False, 0))
    assert [txid for txid, _, _ in cl[0].read(cl[0].sm.prepared_txns)] == [3, 2]


def test_prepared_txns_limit_is_capped(cl):
    prepares = [cl.plan([xfer(txid, 10, 20, 1)])[1][0] for txid in range(1, PREPARED_TXNS_LIMIT_MAX + 3)]
    assert cl[0].prepare(*prepares) == [YES] * len(prepares)
    assert len(cl[0].read(cl[0].sm.prepared_txns, limit=10**6)) == PREPARED_TXNS_LIMIT_MAX
    assert cl[0].read(cl[0].sm.prepared_txns, limit=0) == []


def _zero_2pc(totals: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in totals.items() if v}


def test_ledger_totals_count_reservations_and_remote_legs(cl):
    group = [xfer(1, 10, 20, 7)]
    cl.prepare_all(group)
    assert _zero_2pc(cl[0].totals()) == {"debits_pending": 7, "reserved_debits": 7, "remote_debits_pending": 7}
    assert _zero_2pc(cl[1].totals()) == {"credits_pending": 7, "reserved_credits": 7, "remote_credits_pending": 7}
    cl.finish_all(group, cl.decide(group, YES))
    assert _zero_2pc(cl[0].totals()) == {"debits_posted": 7, "remote_debits_posted": 7}
    assert _zero_2pc(cl[1].totals()) == {"credits_posted": 7, "remote_credits_posted": 7}


def test_ledger_totals_of_a_committed_pending_leg_are_remote_pending_not_reserved(cl):
    cl.run(xfer(1, 10, 20, 7, flags=PENDING))
    assert _zero_2pc(cl[0].totals()) == {"debits_pending": 7, "remote_debits_pending": 7}
    assert _zero_2pc(cl[1].totals()) == {"credits_pending": 7, "remote_credits_pending": 7}


def test_ledger_totals_of_a_both_sides_leg_are_reserved_but_not_remote(cl):
    cl.prepare_all([xfer(1, 10, 11, 5, flags=LINKED), xfer(2, 11, 20, 1)])
    t = cl[0].totals()
    assert (t["reserved_debits"], t["reserved_credits"]) == (6, 5)
    assert (t["remote_debits_pending"], t["remote_credits_pending"]) == (1, 0)


def test_remote_counters_balance_across_a_quiescent_cluster(cl):
    cl.run(xfer(1, 10, 20, 7, flags=LINKED), xfer(2, 20, 30, 3, flags=LINKED), xfer(3, 30, 11, 2))
    cl.run(xfer(4, 21, 31, 9, flags=PENDING))
    cl.run(post(5, 4, amount=5))
    totals = [s.totals() for s in cl.shards]
    for kind in ("posted", "pending"):
        assert sum(t[f"remote_debits_{kind}"] for t in totals) == sum(t[f"remote_credits_{kind}"] for t in totals)
        assert sum(t[f"debits_{kind}"] for t in totals) == sum(t[f"credits_{kind}"] for t in totals)
    assert sum(t["remote_debits_posted"] for t in totals) == 7 + 3 + 2 + 5


# ---------------------------------------------------------- crash points


@pytest.mark.parametrize("commit", [True, False], ids=["commit", "abort"])
def test_replaying_any_step_leaves_the_state_unchanged(cl, commit):
    cl.run(xfer(50, 10, 20, 10, flags=PENDING))
    group = [post(1, 50, amount=3, flags=LINKED), xfer(2, 30, 11, 4, flags=PENDING, timeout=9)]
    coordinator, prepares = cl.plan(group)
    steps = [(s, Operation(OP_PREPARE, [p])) for s, p in prepares.items()]
    vote = YES if commit else Vote(False, 0, int(TR.linked_event_failed))
    decide = Decide(1, vote.prepared, 0, vote.code, sorted(prepares), [1, 2])
    steps.append((coordinator, Operation(OP_DECIDE, [decide])))
    first_results = []
    for shard, op in steps:
        first_results.append(cl[shard].apply(op)[0])
        before = [s.dump() for s in cl.shards]
        assert cl[shard].apply(op)[0] == first_results[-1]  # a replayed entry answers the same
        assert [s.dump() for s in cl.shards] == before
        _check_invariants(cl)
    decision = first_results[-1][0]
    for shard in prepares:
        op = Operation(OP_FINISH, [Finish(1, decision.committed, decision.timestamp)])
        assert cl[shard].apply(op)[0] == [FINISH_APPLIED]
        before = [s.dump() for s in cl.shards]
        assert cl[shard].apply(op)[0] == [FINISH_ALREADY]
        assert [s.dump() for s in cl.shards] == before
        _check_invariants(cl)
    assert cl[0].balances(10) == ((0, 3, 0, 0) if commit else (10, 0, 0, 0))
    assert cl[0].balances(11) == ((0, 0, 4, 0) if commit else (0, 0, 0, 0))


def _check_invariants(cl: Cluster) -> None:
    for s in cl.shards:
        for t in s.read(s.sm.ledger_totals).values():
            _check_totals(t)


def _check_totals(t: dict[str, int]) -> None:
    for kind in ("pending", "posted"):
        local_debits = t[f"debits_{kind}"] - t[f"remote_debits_{kind}"]
        assert local_debits == t[f"credits_{kind}"] - t[f"remote_credits_{kind}"], t
    assert t["reserved_debits"] <= t["debits_pending"] and t["reserved_credits"] <= t["credits_pending"]


# -------------------------------------------------------- errors, limits


def test_exception_in_prepare_fails_only_its_item_and_records_nothing(cl, monkeypatch, caplog):
    real = LedgerStateMachine._prepare_leg

    def flaky(self, txn, tkey, leg, ctx, earlier):
        if leg.transfer.id == 2:
            raise RuntimeError("bug")
        return real(self, txn, tkey, leg, ctx, earlier)

    monkeypatch.setattr(LedgerStateMachine, "_prepare_leg", flaky)
    p1 = cl.plan([xfer(1, 10, 20, 1)])[1][0]
    p2 = cl.plan([xfer(2, 10, 20, 1)])[1][0]
    with caplog.at_level(logging.CRITICAL, logger=sm_module.__name__):
        assert cl[0].prepare(p1, p2) == [YES, Vote(False, 0, int(TR.internal_error))]
    assert cl[0].read(cl[0].sm.txn_state, 2) is None
    assert cl[0].balances(10) == (1, 0, 0, 0)
    monkeypatch.undo()
    assert cl[0].prepare(p2) == [YES]


def test_exception_in_finish_is_finish_internal_error_and_keeps_the_txn_prepared(cl, monkeypatch):
    group = [xfer(1, 10, 20, 7)]
    cl.prepare_all(group)
    decision = cl.decide(group, YES)

    def broken(self, *args):
        raise RuntimeError("bug")

    monkeypatch.setattr(LedgerStateMachine, "_commit_legs", broken)
    assert cl[0].finish(Finish(1, True, decision.timestamp)) == [FINISH_INTERNAL_ERROR]
    assert cl[0].read(cl[0].sm.txn_state, 1) == "prepared"
    monkeypatch.undo()
    assert cl[0].finish(Finish(1, True, decision.timestamp)) == [FINISH_APPLIED]


def test_broken_balance_invariant_in_finish_is_internal_error(cl, monkeypatch):
    group = [xfer(1, 10, 20, 7)]
    cl.prepare_all(group)
    decision = cl.decide(group, YES)
    real = LedgerStateMachine._leg_account

    def skewed(self, txn, account_id, ctx):
        a = real(self, txn, account_id, ctx)
        a.debits_posted += 1  # money from nowhere
        return a

    monkeypatch.setattr(LedgerStateMachine, "_leg_account", skewed)
    assert cl[0].finish(Finish(1, True, decision.timestamp)) == [FINISH_INTERNAL_ERROR]
    assert cl[0].balances(10) == (7, 0, 0, 0)


def test_decide_beyond_its_limits_is_internal_error_and_records_nothing(cl):
    d = Decide(1, True, 0, 0, [0], list(range(1, BATCH_ITEMS_MAX + 2)))
    assert cl[0].decide(d) == [Decision(False, 0, int(TR.internal_error), 0)]
    assert cl[0].read(cl[0].sm.txn_decision, 1) is None


def test_finish_commit_without_a_commit_timestamp_is_internal_error(cl):
    cl.prepare_all([xfer(1, 10, 20, 7)])
    assert cl[0].finish(Finish(1, True, 0)) == [FINISH_INTERNAL_ERROR]
    assert cl[0].read(cl[0].sm.txn_state, 1) == "prepared"


MALFORMED = {
    "no-legs": lambda p: replace(p, legs=[]),
    "out-of-order": lambda p: replace(p, legs=[p.legs[1], p.legs[0]]),
    "beyond-group-size": lambda p: replace(p, group_size=1),
    "bad-sides": lambda p: replace(p, legs=[replace(p.legs[0], sides=0), p.legs[1]]),
    "too-many-legs": lambda p: replace(p, legs=[p.legs[0]] * (BATCH_ITEMS_MAX + 1)),
}


@pytest.mark.parametrize("how", sorted(MALFORMED))
def test_malformed_prepare_is_internal_error_and_not_recorded(cl, how):
    _, prepares = cl.plan([xfer(1, 10, 11, 1, flags=LINKED), xfer(2, 11, 20, 1)])
    good = prepares[0]
    bad = MALFORMED[how](good)
    assert cl[0].prepare(bad) == [Vote(False, 0, int(TR.internal_error))]
    assert cl[0].read(cl[0].sm.txn_state, bad.txid) is None
    assert cl[0].prepare(good) == [YES]


def test_operation_of_too_many_items_is_internal_error_for_each(cl):
    f = Finish(1, False, 0)
    assert cl[0].finish(*[f] * (BATCH_ITEMS_MAX + 1)) == [FINISH_INTERNAL_ERROR] * (BATCH_ITEMS_MAX + 1)
    assert cl[0].read(cl[0].sm.txn_state, 1) is None


def test_whole_entry_failure_gives_each_kind_its_internal_error(cl, monkeypatch):
    def broken(self, *args):
        raise RuntimeError("bug")

    monkeypatch.setattr(LedgerStateMachine, "_apply", broken)
    results = cl[0].apply(
        Operation(OP_PREPARE, [Prepare(1, 0, 1, [])]),
        Operation(OP_FINISH, [Finish(1, False, 0)]),
        Operation(OP_DECIDE, [Decide(1, False, 0, 0, [], [])]),
        Operation(OP_CREATE_TRANSFERS, [xfer(1, 10, 11)]),
    )
    assert results == [
        [Vote(False, 0, int(TR.internal_error))],
        [FINISH_INTERNAL_ERROR],
        [Decision(False, 0, int(TR.internal_error), 0)],
        [TR.internal_error],
    ]


# ------------------------------------------------------------ property test
#
# Random groups over three shards, driven by a simulated coordinator through random
# interleavings of PREPARE / DECIDE / FINISH, with sweeper aborts racing the
# coordinator, replayed (duplicate) steps, single-shard transfers competing for the
# same balances, and time passing. A plain dict model applies each group's legs once,
# at the moment its COMMIT is recorded; at the end the shards must agree with it.

P_ACCOUNTS = [10 * (k + 1) + i for k in range(3) for i in range(4)] + [15]  # plain, plain, DMNEC, CMNED; 15 closed
P_FLAGS = {0: 0, 1: 0, 2: int(DMNEC), 3: int(CMNED)}
# Limited accounts (DMNEC x2 debited, CMNED x3 credited) come up often, so reservations compete.
P_PAIRS = [(a, b) for a in P_ACCOUNTS for b in P_ACCOUNTS if a != b]
P_PAIRS += [(a, b) for a, b in P_PAIRS if a % 10 == 2 or b % 10 == 3] * 2
ACTIONS = st.sampled_from(
    ["start"] * 4 + ["step"] * 8 + ["sweep"] + ["replay"] * 3 + ["single"] * 2 + ["time"] * 3 + ["late"]
)


class Sim:
    """One group in flight, as its coordinator sees it."""

    def __init__(self, items: list[Transfer], coordinator: int, prepares: dict[int, Prepare]) -> None:
        self.items = items
        self.txid = items[0].id
        self.coordinator = coordinator
        self.prepares = prepares
        self.votes: dict[int, Vote] = {}
        self.to_prepare = sorted(prepares)
        self.to_finish: list[int] = []
        self.decision: Decision | None = None
        self.done = False


class World:
    def __init__(self, cluster: Cluster, draw) -> None:
        self.cl = cluster
        self.draw = draw
        self.balances = {a: [0, 0, 0, 0] for a in P_ACCOUNTS}
        self.pendings: dict[int, list] = {}  # id -> [debit, credit, amount, timeout, status]
        self.committed: dict[int, Transfer] = {}  # transfer id -> the request, for committed groups and singles
        self.committed_sides: dict[int, set[int]] = {}  # transfer id -> shards that must hold it
        self.aborted_ids: set[int] = set()
        self.active: list[Sim] = []
        self.sent: list[tuple[int, Operation, list]] = []  # (shard, op, first results) for replays
        self.next_id = 100

    # -- requests

    def fresh(self) -> int:
        self.next_id += 1
        return self.next_id

    def item(self, earlier: list[Transfer]) -> Transfer:
        d = self.draw
        kind = d(st.sampled_from(["plain"] * 6 + ["pending"] * 3 + ["post"] * 3 + ["void"] * 2 + ["again"] * 2))
        if kind in ("post", "void"):
            # Mostly a transfer that is still pending, one that a group in flight posts or voids
            # already (to race it), or one created earlier in this group.
            open_ = sorted(i for i, p in self.pendings.items() if p[4] == "pending")
            contested = sorted(
                {t.pending_id for g in self.active if not g.done for t in g.items if t.flags & (POST | VOID)}
                & set(open_)
            )
            in_group = [t.id for t in earlier if t.flags & PENDING]
            choices = [c for c in (in_group, in_group, open_, open_, contested, contested, sorted(self.pendings)) if c]
            if choices:
                pid = d(st.sampled_from(d(st.sampled_from(choices))))
                amount = d(st.sampled_from([0, 0, 1, 3])) if kind == "post" else 0
                return post(self.fresh(), pid, amount) if kind == "post" else void(self.fresh(), pid)
            kind = "plain"
        if kind == "again" and self.committed:
            # An id already used: committed, or named by a group in flight.
            named = {t.id: t for g in self.active if not g.done and (g.votes or g.decision) for t in g.items}
            pool = d(st.sampled_from([c for c in (self.committed, named) if c]))
            t = pool[d(st.sampled_from(sorted(pool)))]
            if not t.flags & (POST | VOID):
                return replace(t, flags=t.flags & ~LINKED)  # fails with exists
            kind = "plain"
        dr, cr = d(st.sampled_from(P_PAIRS))
        amount = d(st.sampled_from([1, 5, 10, 20, 20, 2**63]))
        if kind == "pending":
            return xfer(self.fresh(), dr, cr, amount, flags=PENDING, timeout=d(st.sampled_from([0, 1, 2, 3600])))
        return xfer(self.fresh(), dr, cr, amount)

    def start_group(self) -> None:
        items: list[Transfer] = []
        for _ in range(self.draw(st.integers(1, 3))):
            items.append(self.item(items))
        *chain, last = items
        items = [replace(t, flags=t.flags | LINKED) for t in chain] + [replace(last, flags=last.flags & ~LINKED)]
        if items[0].id in self.committed or any(t.id == items[0].id for s in self.active for t in s.items):
            return  # a txid must be new; re-submitting a whole group is what replays test
        coordinator, prepares = self.cl.plan(items, self.committed)
        self.active.append(Sim(items, coordinator, prepares))

    def single(self) -> None:
        d = self.draw
        # Ids of groups prepared somewhere and not finished everywhere: the ones a retry could clash with.
        in_flight = [g for g in self.active if not g.done and (g.votes or g.decision)]
        taken = [t for g in in_flight for t in g.items if not t.flags & (POST | VOID)]
        if taken and d(st.integers(0, 2)) == 0:
            # Re-submit, single-shard, an id that a group names: created only if no group holds it.
            t = d(st.sampled_from(taken))
            t = replace(t, flags=t.flags & PENDING)
            shard = shard_of(t.debit_account_id)
            if self.cl[shard].transfers(t) == [0]:
                self.created_single(t, shard)
            return
        shard = d(st.integers(0, 2))
        local = [a for a in P_ACCOUNTS if shard_of(a) == shard]
        dr, cr = d(st.sampled_from([(a, b) for a in local for b in local if a != b]))
        t = xfer(self.fresh(), dr, cr, d(st.sampled_from([1, 5, 20])))
        if self.cl[shard].transfers(t) == [0]:
            self.created_single(t, shard)

    def created_single(self, t: Transfer, shard: int) -> None:
        assert t.id not in self.committed, t  # exactly once
        self.move(t.debit_account_id, t.credit_account_id, t.amount, posted=not t.flags & PENDING)
        if t.flags & PENDING:
            self.pendings[t.id] = [t.debit_account_id, t.credit_account_id, t.amount, t.timeout, "pending"]
        self.committed[t.id] = t
        self.committed_sides[t.id] = {shard}

    # -- protocol steps

    def send(self, shard: int, op: Operation) -> list:
        result = self.cl[shard].apply(op)[0]
        self.sent.append((shard, op, result))
        return result

    def step(self, g: Sim) -> None:
        if g.decision is None and g.to_prepare and all(v.prepared for v in g.votes.values()):
            shard = g.to_prepare.pop(self.draw(st.integers(0, len(g.to_prepare) - 1)))
            (vote,) = self.send(shard, Operation(OP_PREPARE, [g.prepares[shard]]))
            self.check_vote(g, vote)
            g.votes[shard] = vote
        elif g.decision is None:
            vote = merge_votes(g.votes.values())
            if len(g.votes) < len(g.prepares) and vote.prepared:
                return
            self.decide(g, vote)
        else:
            shard = g.to_finish.pop(self.draw(st.integers(0, len(g.to_finish) - 1)))
            finish = Finish(g.txid, g.decision.committed, g.decision.timestamp)
            (code,) = self.send(shard, Operation(OP_FINISH, [finish]))
            allowed = {FINISH_APPLIED, FINISH_ALREADY} | (set() if g.decision.committed else {FINISH_UNKNOWN_TXID})
            assert code in allowed, (code, g.decision)
            if not g.to_finish:
                g.done = True

    def check_vote(self, g: Sim, vote: Vote) -> None:
        assert vote.code != TR.internal_error, vote
        if not vote.prepared and vote.code == 0:
            if g.decision is not None and not g.decision.committed:
                return  # the group was aborted: a participant that saw the abort prepares nothing, says busy
            # Busy: only for a transfer id that another group in flight has prepared somewhere.
            tid = g.items[vote.failed_index].id
            assert any(tid in (t.id for t in other.items) for other in self.active if other is not g and not other.done)

    def late_prepare(self, g: Sim) -> None:
        """A PREPARE the coordinator sent before the decision arrives only now."""
        shard = g.to_prepare.pop(self.draw(st.integers(0, len(g.to_prepare) - 1)))
        finished_here = shard not in g.to_finish
        (vote,) = self.send(shard, Operation(OP_PREPARE, [g.prepares[shard]]))
        self.check_vote(g, vote)
        if finished_here:
            assert vote == Vote(False, 0, 0)  # a late PREPARE after the abort never prepares: busy, no rule failed

    def sweep(self, g: Sim) -> None:
        """A participant's sweeper gives up on the coordinator: presume abort."""
        self.decide(g, Vote(False, 0, int(TR.linked_event_failed)))

    def decide(self, g: Sim, vote: Vote) -> None:
        op = Operation(
            OP_DECIDE,
            [Decide(g.txid, vote.prepared, vote.failed_index, vote.code, sorted(g.prepares), [t.id for t in g.items])],
        )
        (decision,) = self.send(g.coordinator, op)
        assert decision.timestamp != 0  # recorded (0 only when DECIDE itself failed)
        if g.decision is None:
            g.decision = decision
            g.to_finish = sorted(g.prepares)
            if decision.committed:
                assert len(g.votes) == len(g.prepares) and all(v.prepared for v in g.votes.values())
                self.apply_committed(g)
            else:
                self.aborted_ids.update(t.id for t in g.items if t.id not in self.committed)
        else:
            assert decision == g.decision  # first writer wins

    def replay(self) -> None:
        # Mostly a recent step (its txn is likely still in flight), sometimes any earlier one.
        n = len(self.sent)
        shard, op, first = self.sent[self.draw(st.integers(max(0, n - 6), n - 1) | st.integers(0, n - 1))]
        s = self.cl[shard]
        state = s.read(s.sm.txn_state, op.items[0].txid)
        (again,) = s.apply(op)[0]
        if op.kind == OP_DECIDE:
            assert again == first[0]
        elif op.kind == OP_FINISH:
            assert again == FINISH_ALREADY or (again == FINISH_UNKNOWN_TXID and not op.items[0].commit)
        elif not first[0].prepared:
            assert again == first[0]  # a NO stays a NO
        else:
            assert again.prepared == (state in ("prepared", "committed")), (state, again)

    # -- the model

    def move(self, dr: int, cr: int, amount: int, *, posted: bool) -> None:
        i = 1 if posted else 0
        self.balances[dr][i] += amount
        self.balances[cr][2 + i] += amount

    def apply_committed(self, g: Sim) -> None:
        for t in g.items:
            assert t.id not in self.committed, t  # exactly once
            if t.flags & (POST | VOID):
                p = self.pendings[t.pending_id]
                assert p[4] == "pending"
                dr, cr, amount = p[0], p[1], p[2]
                self.balances[dr][0] -= amount
                self.balances[cr][2] -= amount
                if t.flags & POST:
                    self.move(dr, cr, t.amount or amount, posted=True)
                p[4] = "resolved"
            else:
                dr, cr = t.debit_account_id, t.credit_account_id
                self.move(dr, cr, t.amount, posted=not t.flags & PENDING)
                if t.flags & PENDING:
                    self.pendings[t.id] = [dr, cr, t.amount, t.timeout, "pending"]
                    self.committed_sides[t.id] = {shard_of(dr), shard_of(cr)}
            self.committed[t.id] = t
            self.committed_sides.setdefault(t.id, set()).update(
                s for s, p in g.prepares.items() if any(leg.transfer.id == t.id for leg in p.legs)
            )

    def expire_all(self) -> None:
        for p in self.pendings.values():
            if p[4] == "pending" and p[3]:
                self.balances[p[0]][0] -= p[2]
                self.balances[p[1]][2] -= p[2]
                p[4] = "expired"

    # -- checks

    def check_every_shard(self, *, quiescent: bool = False) -> None:
        """Balances within limits: posted ones always; with holds once no txn is prepared.

        (While a chain that credits and then debits a limited account is prepared, its
        holds may exceed the limit by what the chain itself funds.)
        """
        for s in self.cl.shards:
            for t in s.read(s.sm.ledger_totals).values():
                _check_totals(t)
            for a in s.read(s.sm.lookup_accounts, [a for a in P_ACCOUNTS if shard_of(a) == self.cl.shards.index(s)]):
                assert a.debits_pending + a.debits_posted <= U64_MAX and a.credits_pending + a.credits_posted <= U64_MAX
                held = quiescent or not s.read(s.sm.prepared_txns)
                if a.flags & DMNEC:
                    assert a.debits_posted + (a.debits_pending if held else 0) <= a.credits_posted
                if a.flags & CMNED:
                    assert a.credits_posted + (a.credits_pending if held else 0) <= a.debits_posted

    def check_final(self) -> None:
        totals = [s.totals() for s in self.cl.shards]
        for key in ("debits_pending", "debits_posted", "remote_debits_pending", "remote_debits_posted"):
            assert sum(t[key] for t in totals) == sum(t[key.replace("debits", "credits")] for t in totals), key
        assert all(t["reserved_debits"] == t["reserved_credits"] == 0 for t in totals)
        for s in self.cl.shards:
            assert s.read(s.sm.prepared_txns) == []
        for a in P_ACCOUNTS:
            assert list(self.cl[shard_of(a)].balances(a)) == self.balances[a], a
        for tid, t in self.committed.items():
            for shard in self.committed_sides[tid]:
                got = self.cl[shard].transfer(tid)
                assert got is not None, (tid, shard)
                if not t.flags & (POST | VOID):
                    assert replace(got, timestamp=0) == replace(t, timestamp=0)
                else:
                    assert got.pending_id == t.pending_id and got.flags == t.flags
        for tid in self.aborted_ids - set(self.committed):
            assert self.cl.find(tid) is None, tid
        for a in P_ACCOUNTS:
            s = self.cl[shard_of(a)]
            history = [t.id for t in s.read(s.sm.get_account_transfers, a, limit=10_000)]
            stored = {t.id for t in s.read(s.sm.lookup_transfers, sorted(self.committed))}
            want = {
                tid for tid in stored
                if a in (s.transfer(tid).debit_account_id, s.transfer(tid).credit_account_id)
            }  # fmt: skip
            assert len(history) == len(set(history)) and set(history) == want, a


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_random_interleavings_of_cross_shard_groups_keep_the_ledger_whole(data, tmp_path_factory):
    """Money is conserved across shards, no account passes its limits, committed groups apply exactly once."""
    root = tmp_path_factory.mktemp("prop")
    envs = [_env(root / f"shard{i}") for i in range(3)]
    try:
        cl = Cluster(envs)
        for k in range(3):
            b = 10 * (k + 1)
            setup = [acct(b + i, flags=P_FLAGS[i]) for i in range(4)] + ([acct(15, flags=CLOSED)] if k == 0 else [])
            assert cl[k].accounts(*setup) == [0] * len(setup)
        world = World(cl, data.draw)
        # Give the limited accounts some room: credits for DMNEC x2, debits for CMNED x3.
        for k in range(3):
            b = 10 * (k + 1)
            for t in (xfer(90 + k, b, b + 2, 30), xfer(95 + k, b + 3, b + 1, 30)):
                assert cl[k].transfers(t) == [0]
                world.created_single(t, k)
        for _ in range(data.draw(st.integers(5, 60), label="steps")):
            action = data.draw(ACTIONS)
            live = [g for g in world.active if not g.done]
            if action == "start" and len(live) < 6:
                world.start_group()
            elif action == "step" and live:
                world.step(data.draw(st.sampled_from(live)))
            elif action == "sweep" and live:
                world.sweep(data.draw(st.sampled_from(live)))
            elif action == "late" and any(g.decision is not None and g.to_prepare for g in world.active):
                world.late_prepare(data.draw(st.sampled_from([g for g in world.active if g.decision and g.to_prepare])))
            elif action == "replay" and world.sent:
                world.replay()
            elif action == "single":
                world.single()
            elif action == "time":
                cl.now += data.draw(st.sampled_from([MS, SECOND // 2, SECOND, 2 * SECOND]))
            world.check_every_shard()
        for g in world.active:  # let every coordinator finish its group
            while not g.done:
                world.step(g)
        world.check_every_shard(quiescent=True)
        cl.now += 7200 * SECOND
        for s in cl.shards:
            s.apply()
        world.expire_all()
        world.check_final()
    finally:
        for e in envs:
            e.close()

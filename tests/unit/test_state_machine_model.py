"""Property tests: the LMDB state machine against a plain in-memory model of the same rules.

The model keeps everything in dicts and implements linked chains by deep-copying
its whole state, so it shares none of the state machine's machinery (nested txns,
account cache, indexes, failed-id db). Small id and amount ranges make collisions,
duplicates, overflows, expiry and chain failures common.
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile

import lmdb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tidebank.node.ledger.operations import OP_CREATE_ACCOUNTS, OP_CREATE_TRANSFERS, Operation
from tidebank.node.ledger.records import U64_MAX, U128_MAX, Account, AccountFlags, Transfer, TransferFlags
from tidebank.node.ledger.results import CreateAccountResult as AR
from tidebank.node.ledger.results import CreateTransferResult as TR
from tidebank.node.ledger.state_machine import LedgerStateMachine

NS = 1_000_000_000
T0 = 1_700_000_000 * NS

A_LINKED, A_DMNEC, A_CMNED, A_HISTORY, A_CLOSED = (int(f) for f in AccountFlags)
T_LINKED, T_PENDING, T_POST, T_VOID, T_BAL_D, T_BAL_C = (int(f) for f in TransferFlags)


class Model:
    """The ledger rules written as plainly as possible."""

    def __init__(self) -> None:
        self.accounts: dict[int, Account] = {}
        self.transfers: dict[int, Transfer] = {}
        self.status: dict[int, str] = {}  # pending transfer id -> pending/posted/voided/expired
        self.failed: set[int] = set()
        self.last = 0
        self.ts = 0
        self.base = 0

    # -- entry

    def apply(self, operations: list[tuple[int, list]], timestamp_ns: int) -> list[list[int]]:
        self.base = max(timestamp_ns, self.last + 1)
        self.expire()
        self.ts = self.base
        results = []
        for kind, items in operations:
            fn = self.create_account if kind == OP_CREATE_ACCOUNTS else self.create_transfer
            codes = AR if kind == OP_CREATE_ACCOUNTS else TR
            results.append(self.run(items, fn, codes, record=kind == OP_CREATE_TRANSFERS))
        self.last = max(self.base, self.ts - 1)
        return results

    def expire(self) -> None:
        due = sorted(
            (p.timestamp + p.timeout * NS, pid)
            for pid, p in self.transfers.items()
            if self.status.get(pid) == "pending" and p.timeout and p.timestamp + p.timeout * NS <= self.base
        )
        for _, pid in due[:512]:
            p = self.transfers[pid]
            self.accounts[p.debit_account_id].debits_pending -= p.amount
            self.accounts[p.credit_account_id].credits_pending -= p.amount
            self.status[pid] = "expired"

    def snapshot(self):
        return copy.deepcopy((self.accounts, self.transfers, self.status, self.failed, self.ts))

    def restore(self, snap) -> None:
        self.accounts, self.transfers, self.status, self.failed, self.ts = snap

    def run(self, items, fn, codes, record: bool) -> list[int]:
        out: list[int] = []
        i = 0
        while i < len(items):
            j = i
            while j < len(items) and items[j].flags & 1:
                j += 1
            if j == len(items):  # open chain
                out += [codes.linked_event_failed] * (j - i - 1) + [codes.linked_event_chain_open]
                break
            chain = items[i : j + 1]
            snap = self.snapshot()
            chain_codes = []
            for item in chain:
                code = fn(item)
                chain_codes.append(code)
                if code != 0:
                    break
            if chain_codes[-1] != 0:
                self.restore(snap)
                failing = len(chain_codes) - 1
                chain_codes = [codes.linked_event_failed] * len(chain)
                chain_codes[failing] = code
                if record and code in STATE_FAILURES:
                    self.failed.add(chain[failing].id)
            out += chain_codes
            i = j + 1
        return out

    # -- accounts

    def create_account(self, a: Account) -> int:
        if a.timestamp:
            return AR.timestamp_must_be_zero
        if a.flags >= 32:
            return AR.reserved_flag
        if a.id == 0:
            return AR.id_must_not_be_zero
        if a.id == U128_MAX:
            return AR.id_must_not_be_int_max
        if a.flags & A_DMNEC and a.flags & A_CMNED:
            return AR.flags_are_mutually_exclusive
        for field in ("debits_pending", "debits_posted", "credits_pending", "credits_posted"):
            if getattr(a, field):
                return AR[f"{field}_must_be_zero"]
        if not a.ledger:
            return AR.ledger_must_not_be_zero
        if not a.code:
            return AR.code_must_not_be_zero
        e = self.accounts.get(a.id)
        if e is not None:
            if e.flags | A_LINKED != a.flags | A_LINKED:
                return AR.exists_with_different_flags
            for field in ("user_data_128", "user_data_64", "user_data_32", "ledger", "code"):
                if getattr(e, field) != getattr(a, field):
                    return AR[f"exists_with_different_{field}"]
            return AR.exists
        self.accounts[a.id] = dataclasses.replace(a, timestamp=self.ts)
        self.ts += 1
        return 0

    # -- transfers

    def create_transfer(self, t: Transfer) -> int:
        f = t.flags
        pv = f & (T_POST | T_VOID)
        if t.timestamp:
            return TR.timestamp_must_be_zero
        if f >= 64:
            return TR.reserved_flag
        if t.id == 0:
            return TR.id_must_not_be_zero
        if t.id == U128_MAX:
            return TR.id_must_not_be_int_max
        if (f & T_PENDING and pv) or pv == T_POST | T_VOID or (pv and f & (T_BAL_D | T_BAL_C)):
            return TR.flags_are_mutually_exclusive
        if pv:
            if t.pending_id == 0:
                return TR.pending_id_must_not_be_zero
            if t.pending_id == U128_MAX:
                return TR.pending_id_must_not_be_int_max
            if t.pending_id == t.id:
                return TR.pending_id_must_be_different
            if t.timeout:
                return TR.timeout_reserved_for_pending_transfer
        else:
            for side in ("debit", "credit"):
                v = getattr(t, f"{side}_account_id")
                if v == 0:
                    return TR[f"{side}_account_id_must_not_be_zero"]
                if v == U128_MAX:
                    return TR[f"{side}_account_id_must_not_be_int_max"]
            if t.debit_account_id == t.credit_account_id:
                return TR.accounts_must_be_different
            if t.pending_id:
                return TR.pending_id_must_be_zero
            if t.timeout and not f & T_PENDING:
                return TR.timeout_reserved_for_pending_transfer
            if t.amount == 0 and not f & (T_BAL_D | T_BAL_C):
                return TR.amount_must_not_be_zero
            if not t.ledger:
                return TR.ledger_must_not_be_zero
            if not t.code:
                return TR.code_must_not_be_zero
        e = self.transfers.get(t.id)
        if e is not None:
            return self.exists(t, e)
        if t.id in self.failed:
            return TR.id_already_failed
        return self.post_or_void(t) if pv else self.create_plain(t)

    def exists(self, t: Transfer, e: Transfer) -> int:
        pv = t.flags & (T_POST | T_VOID)
        if t.flags | T_LINKED != e.flags | T_LINKED:
            return TR.exists_with_different_flags
        for field in ("debit_account_id", "credit_account_id"):
            if (getattr(t, field) or not pv) and getattr(t, field) != getattr(e, field):
                return TR[f"exists_with_different_{field}"]
        skip_amount = (pv and t.amount == 0) or (t.flags & (T_BAL_D | T_BAL_C))
        if not skip_amount and t.amount != e.amount:
            return TR.exists_with_different_amount
        for field in ("pending_id", "user_data_128", "user_data_64", "user_data_32", "timeout"):
            if getattr(t, field) != getattr(e, field):
                return TR[f"exists_with_different_{field}"]
        for field in ("ledger", "code"):
            if (getattr(t, field) or not pv) and getattr(t, field) != getattr(e, field):
                return TR[f"exists_with_different_{field}"]
        return TR.exists

    def create_plain(self, t: Transfer) -> int:
        dr = self.accounts.get(t.debit_account_id)
        cr = self.accounts.get(t.credit_account_id)
        if dr is None:
            return TR.debit_account_not_found
        if cr is None:
            return TR.credit_account_not_found
        if dr.ledger != cr.ledger:
            return TR.accounts_must_have_the_same_ledger
        if t.ledger != dr.ledger:
            return TR.transfer_must_have_the_same_ledger_as_accounts
        if dr.flags & A_CLOSED:
            return TR.debit_account_already_closed
        if cr.flags & A_CLOSED:
            return TR.credit_account_already_closed
        amount = t.amount
        if t.flags & (T_BAL_D | T_BAL_C):
            amount = amount or U64_MAX
            if t.flags & T_BAL_D:
                amount = min(amount, max(0, dr.credits_posted - dr.debits_pending - dr.debits_posted))
                if amount == 0:
                    return TR.exceeds_credits
            if t.flags & T_BAL_C:
                amount = min(amount, max(0, cr.debits_posted - cr.credits_pending - cr.credits_posted))
                if amount == 0:
                    return TR.exceeds_debits
        pending = bool(t.flags & T_PENDING)
        if pending and dr.debits_pending + amount > U64_MAX:
            return TR.overflows_debits_pending
        if pending and cr.credits_pending + amount > U64_MAX:
            return TR.overflows_credits_pending
        if dr.debits_posted + amount > U64_MAX:
            return TR.overflows_debits_posted
        if cr.credits_posted + amount > U64_MAX:
            return TR.overflows_credits_posted
        if dr.debits_pending + dr.debits_posted + amount > U64_MAX:
            return TR.overflows_debits
        if cr.credits_pending + cr.credits_posted + amount > U64_MAX:
            return TR.overflows_credits
        if self.ts + t.timeout * NS > U64_MAX:
            return TR.overflows_timeout
        if dr.flags & A_DMNEC and dr.debits_pending + dr.debits_posted + amount > dr.credits_posted:
            return TR.exceeds_credits
        if cr.flags & A_CMNED and cr.credits_pending + cr.credits_posted + amount > cr.debits_posted:
            return TR.exceeds_debits
        if pending:
            dr.debits_pending += amount
            cr.credits_pending += amount
            self.status[t.id] = "pending"
        else:
            dr.debits_posted += amount
            cr.credits_posted += amount
        self.transfers[t.id] = dataclasses.replace(t, amount=amount, timestamp=self.ts)
        self.ts += 1
        return 0

    def post_or_void(self, t: Transfer) -> int:
        p = self.transfers.get(t.pending_id)
        if p is None:
            return TR.pending_transfer_not_found
        if not p.flags & T_PENDING:
            return TR.pending_transfer_not_pending
        for field, code in (
            ("debit_account_id", TR.pending_transfer_has_different_debit_account_id),
            ("credit_account_id", TR.pending_transfer_has_different_credit_account_id),
            ("ledger", TR.pending_transfer_has_different_ledger),
            ("code", TR.pending_transfer_has_different_code),
        ):
            if getattr(t, field) and getattr(t, field) != getattr(p, field):
                return code
        post = bool(t.flags & T_POST)
        if post:
            amount = t.amount or p.amount
            if amount > p.amount:
                return TR.exceeds_pending_transfer_amount
        else:
            if t.amount not in (0, p.amount):
                return TR.pending_transfer_has_different_amount
            amount = p.amount
        status = self.status[p.id]
        if status == "posted":
            return TR.pending_transfer_already_posted
        if status == "voided":
            return TR.pending_transfer_already_voided
        if status == "expired" or (p.timeout and p.timestamp + p.timeout * NS <= self.base):
            return TR.pending_transfer_expired
        dr = self.accounts[p.debit_account_id]
        cr = self.accounts[p.credit_account_id]
        if post and dr.flags & A_CLOSED:
            return TR.debit_account_already_closed
        if post and cr.flags & A_CLOSED:
            return TR.credit_account_already_closed
        dr.debits_pending -= p.amount
        cr.credits_pending -= p.amount
        if post:
            dr.debits_posted += amount
            cr.credits_posted += amount
        self.status[p.id] = "posted" if post else "voided"
        self.transfers[t.id] = dataclasses.replace(
            t,
            debit_account_id=p.debit_account_id,
            credit_account_id=p.credit_account_id,
            amount=amount,
            ledger=p.ledger,
            code=p.code,
            timestamp=self.ts,
        )
        self.ts += 1
        return 0


STATE_FAILURES = {
    code
    for code in TR
    if TR.debit_account_not_found <= code <= TR.pending_transfer_expired
    or TR.overflows_debits_pending <= code <= TR.credit_account_already_closed
}

# ------------------------------------------------------------------ generation
#
# Requests are drawn interactively against the model's current state: mostly valid
# transfers between same-ledger accounts, posts and voids of transfers that really are
# pending, and re-submissions of earlier requests, each occasionally broken in one
# field. Purely random requests would almost all fail a static check.

SETUP = [
    Account(id=1, ledger=1, code=1),
    Account(id=2, ledger=1, code=1),
    Account(id=3, ledger=1, code=1, flags=A_DMNEC),
    Account(id=4, ledger=1, code=1, flags=A_CMNED),
    Account(id=5, ledger=2, code=1),
    Account(id=6, ledger=2, code=1),
    Account(id=7, ledger=1, code=1, flags=A_CLOSED),
]
ACCOUNT_IDS = range(1, 10)  # 8 and 9 only exist if a random account op creates them
GOOD_PAIRS = [(1, 2), (2, 1), (1, 2), (2, 1), (1, 3), (3, 2), (2, 4), (4, 1), (3, 4), (5, 6), (6, 5)]
ODD_PAIRS = [(1, 7), (7, 2), (1, 5), (8, 1), (2, 9), (1, 1), (0, 2), (1, U128_MAX)]

small_amount = st.integers(1, 50)
amounts = st.one_of(small_amount, small_amount, small_amount, st.sampled_from([U64_MAX, 2**63, 2**63 - 1]))
rarely = st.sampled_from([0] * 30 + [1])
BALANCE_FIELDS = ("debits_pending", "debits_posted", "credits_pending", "credits_posted")
account_flags = st.sampled_from(
    [0, 0, 0, 0, A_DMNEC, A_CMNED, A_LINKED, A_LINKED, A_LINKED | A_DMNEC, A_HISTORY, A_CLOSED]
    + [A_DMNEC | A_CMNED, 64]
)


@st.composite
def accounts(draw) -> Account:
    nonzero_balance = draw(st.sampled_from([None] * 30 + list(BALANCE_FIELDS)))
    return Account(
        id=draw(st.sampled_from([*ACCOUNT_IDS] * 3 + [0, U128_MAX])),
        ledger=draw(st.sampled_from([1] * 8 + [2, 2, 0])),
        code=draw(st.sampled_from([1] * 8 + [2, 0])),
        flags=draw(account_flags),
        user_data_128=draw(rarely),
        user_data_64=draw(rarely),
        user_data_32=draw(rarely),
        timestamp=draw(rarely),
        **({nonzero_balance: 1} if nonzero_balance else {}),
    )


# One-field breakages, each aimed at a check (static ones, and exists_with_different_*).
MUTATIONS = {
    "timestamp": lambda t, d: {"timestamp": 1},
    "reserved": lambda t, d: {"flags": t.flags | 64},
    "id0": lambda t, d: {"id": 0},
    "idmax": lambda t, d: {"id": U128_MAX},
    "dr": lambda t, d: {"debit_account_id": d(st.sampled_from([0, U128_MAX, 1, 2, 3]))},
    "cr": lambda t, d: {"credit_account_id": d(st.sampled_from([0, U128_MAX, 1, 2, 4]))},
    "pending_id": lambda t, d: {"pending_id": d(st.sampled_from([0, U128_MAX, t.id, 1, 2]))},
    "timeout": lambda t, d: {"timeout": d(st.sampled_from([1, 2, 2**32 - 1]))},
    "amount": lambda t, d: {"amount": d(st.sampled_from([0, 1, t.amount + 1]))},
    "ledger": lambda t, d: {"ledger": d(st.sampled_from([0, 1, 2]))},
    "code": lambda t, d: {"code": d(st.sampled_from([0, 1, 2]))},
    "flags": lambda t, d: {"flags": t.flags ^ d(st.sampled_from([T_PENDING, T_POST, T_VOID, T_BAL_D, T_BAL_C]))},
    "user_data": lambda t, d: {d(st.sampled_from(["user_data_128", "user_data_64", "user_data_32"])): 7},
}


RETRY_MUTATIONS = ["dr", "cr", "pending_id", "timeout", "amount", "ledger", "code", "flags", "user_data"]


class Requests:
    """Draws transfers that are likely to matter, given what the model holds now."""

    def __init__(self, data: st.DataObject, model: Model) -> None:
        self.draw = data.draw
        self.model = model
        self.next_id = 1
        self.sent: list[Transfer] = []

    def fresh_id(self) -> int:
        # Mostly new ids; sometimes one that was used already, to collide.
        if self.sent and self.draw(st.integers(0, 9)) == 0:
            return self.draw(st.sampled_from(self.sent)).id
        self.next_id += 1
        return self.next_id - 1

    def transfer(self) -> Transfer:
        d = self.draw
        kind = d(
            st.sampled_from(["plain"] * 5 + ["pending"] * 3 + ["post"] * 2 + ["void", "balancing"] + ["again"] * 2)
        )
        if kind == "again" and self.sent:
            # A retry of an earlier request or of a stored transfer, maybe changed.
            stored = sorted(self.model.transfers)
            if stored and d(st.booleans()):
                t = dataclasses.replace(self.model.transfers[d(st.sampled_from(stored))], timestamp=0)
            else:
                t = d(st.sampled_from(self.sent))
            if d(st.booleans()):
                t = dataclasses.replace(t, **MUTATIONS[d(st.sampled_from(RETRY_MUTATIONS))](t, d))
        elif kind in ("post", "void"):
            t = self.resolution(T_POST if kind == "post" else T_VOID)
        else:
            dr, cr = d(st.sampled_from(GOOD_PAIRS * 3 + ODD_PAIRS))
            ledger = self.model.accounts[dr].ledger if dr in self.model.accounts else 1
            flags = 0
            amount = d(amounts)
            timeout = 0
            if kind == "pending":
                flags = T_PENDING
                timeout = d(st.sampled_from([0, 0, 1, 2, 3]))
            elif kind == "balancing":
                flags = d(st.sampled_from([T_BAL_D, T_BAL_C, T_BAL_D | T_BAL_C, T_BAL_D | T_PENDING]))
                amount = d(st.sampled_from([0, 0, 5, 50]))
            t = Transfer(
                id=self.fresh_id(), debit_account_id=dr, credit_account_id=cr, amount=amount,
                timeout=timeout, ledger=ledger, code=1, flags=flags,
            )  # fmt: skip
        if d(st.integers(0, 9)) == 0:
            t = dataclasses.replace(t, **MUTATIONS[d(st.sampled_from(sorted(MUTATIONS)))](t, d))
        if d(st.integers(0, 9)) == 0:
            t = dataclasses.replace(t, flags=t.flags | T_LINKED)
        self.sent.append(t)
        return t

    def resolution(self, flag: int) -> Transfer:
        d = self.draw
        pendings = sorted(i for i, p in self.model.transfers.items() if p.flags & T_PENDING)
        pending_id = d(st.sampled_from(pendings)) if pendings and d(st.integers(0, 4)) else d(st.integers(1, 9))
        p = self.model.transfers.get(pending_id)

        def same_or_zero(field: str) -> int:
            # Zero ("inherit") mostly, the pending's own value sometimes, rarely a wrong one.
            if p is None:
                return 0
            return d(st.sampled_from([0, 0, 0, 0, getattr(p, field), getattr(p, field) + 1]))

        amount = 0
        if p is not None and d(st.booleans()):
            amount = d(st.sampled_from([p.amount, max(1, p.amount - 1), 1, p.amount + 1]))
        return Transfer(
            id=self.fresh_id(), pending_id=pending_id, amount=amount, flags=flag,
            debit_account_id=same_or_zero("debit_account_id"), credit_account_id=same_or_zero("credit_account_id"),
            ledger=same_or_zero("ledger"), code=same_or_zero("code"),
        )  # fmt: skip

    def operation(self) -> tuple[int, list]:
        if self.draw(st.integers(0, 5)) == 0:
            return OP_CREATE_ACCOUNTS, self.draw(st.lists(accounts(), min_size=1, max_size=4))
        return OP_CREATE_TRANSFERS, [self.transfer() for _ in range(self.draw(st.integers(1, 10)))]


# Time between entries: mostly forward by under a second to a few seconds, sometimes backwards.
time_steps = st.sampled_from([0, 1, NS // 2, NS, NS, 2 * NS, 3 * NS, 5 * NS, -NS])


def _apply_both(machine: LedgerStateMachine, env: lmdb.Environment, model: Model, ops, ts: int) -> list[list[int]]:
    with env.begin(write=True) as txn:
        got = machine.apply(txn, [Operation(kind, items) for kind, items in ops], ts)
    want = model.apply(ops, ts)
    assert got == want, f"codes differ at ts={ts}\nops={ops}"
    return got


def _check_state(machine: LedgerStateMachine, env: lmdb.Environment, model: Model, transfer_ids) -> None:
    with env.begin() as txn:
        got_accounts = {a.id: a for a in machine.lookup_accounts(txn, list(ACCOUNT_IDS))}
        assert got_accounts == model.accounts
        got_transfers = {t.id: t for t in machine.lookup_transfers(txn, sorted(transfer_ids))}
        assert got_transfers == model.transfers
        assert machine.cluster_time_ns(txn) == model.last
        pending_expiries = [
            p.timestamp + p.timeout * NS
            for pid, p in model.transfers.items()
            if model.status.get(pid) == "pending" and p.timeout
        ]
        assert machine.next_expiry_ns(txn) == (min(pending_expiries) if pending_expiries else None)
        totals = machine.ledger_totals(txn)
        for ledger in {a.ledger for a in model.accounts.values()}:
            members = [a for a in model.accounts.values() if a.ledger == ledger]
            want = {f: sum(getattr(a, f) for a in members) for f in BALANCE_FIELDS}
            assert {f: totals[ledger][f] for f in BALANCE_FIELDS} == want
            assert not any(v for f, v in totals[ledger].items() if f not in BALANCE_FIELDS)  # no 2PC counters
            # Conservation: every unit debited somewhere is credited somewhere.
            assert want["debits_pending"] == want["credits_pending"]
            assert want["debits_posted"] == want["credits_posted"]
        for a in model.accounts.values():
            history = machine.get_account_transfers(txn, a.id, limit=1000)
            want_ids = sorted(
                (t for t in model.transfers.values() if a.id in (t.debit_account_id, t.credit_account_id)),
                key=lambda t: t.timestamp,
            )
            assert [t.id for t in history] == [t.id for t in want_ids]
            debits = machine.get_account_transfers(txn, a.id, credits=False, reversed=True, limit=3)
            want_debits = [t.id for t in reversed(want_ids) if t.debit_account_id == a.id][:3]
            assert [t.id for t in debits] == want_debits


def _with_machine(fn):
    with tempfile.TemporaryDirectory() as tmp:
        env = lmdb.open(tmp, max_dbs=64, map_size=1 << 26, sync=False)
        try:
            machine = LedgerStateMachine(env)
            model = Model()
            _apply_both(machine, env, model, [(OP_CREATE_ACCOUNTS, SETUP)], T0)
            fn(machine, env, model)
        finally:
            env.close()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_state_machine_matches_model(data):
    """Per-item codes, balances, transfers, indexes and totals equal the model's after every entry."""

    def run(machine, env, model):
        requests = Requests(data, model)
        ts = T0
        for _ in range(data.draw(st.integers(1, 12), label="entries")):
            ts += data.draw(time_steps)
            ops = [requests.operation() for _ in range(data.draw(st.integers(0, 3)))]
            _apply_both(machine, env, model, ops, ts)
            _check_state(machine, env, model, {t.id for t in requests.sent})

    _with_machine(run)


@settings(max_examples=60, deadline=None)
@given(
    amounts=st.lists(st.integers(1, 50), min_size=1, max_size=30),
    rng=st.randoms(use_true_random=False),
)
def test_money_is_conserved_under_random_pending_post_void(amounts, rng):
    """Whatever mix of pending, post, void and expiry runs, pending drains to zero and sides stay equal."""

    def run(machine, env, model):
        items = []
        for i, amount in enumerate(amounts, start=1):
            dr, cr = rng.sample([1, 2, 3, 4], 2)
            items.append(
                Transfer(
                    id=i,
                    debit_account_id=dr,
                    credit_account_id=cr,
                    amount=amount,
                    ledger=1,
                    code=1,
                    flags=T_PENDING,
                    timeout=rng.choice([1, 2]),
                )  # fmt: skip
            )
        _apply_both(machine, env, model, [(OP_CREATE_TRANSFERS, items)], T0 + 1)
        resolutions = [
            Transfer(id=100 + i, pending_id=i, flags=rng.choice([T_POST, T_VOID]), amount=rng.choice([0, 1]))
            for i in range(1, len(amounts) + 1)
        ]
        _apply_both(machine, env, model, [(OP_CREATE_TRANSFERS, resolutions)], T0 + rng.choice([2, NS, 2 * NS]))
        _apply_both(machine, env, model, [], T0 + 4 * NS)
        with env.begin() as txn:
            for totals in machine.ledger_totals(txn).values():
                assert totals["debits_pending"] == totals["credits_pending"] == 0
                assert totals["debits_posted"] == totals["credits_posted"]
            assert machine.next_expiry_ns(txn) is None

    _with_machine(run)

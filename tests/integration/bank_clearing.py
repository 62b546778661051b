"""Clearing in the bank test: items submitted and windows closed and settled while the nemesis strikes.

Four participants on their own ledger clear items among themselves under small net
debit caps (so some items are refused), an operator thread closes and settles the
open window every few seconds, and afterwards every unknown outcome is resolved by
submitting the same items again, the last window is closed and everything settled.
`check_clearing` then proves, from the history and what the cluster holds:

* every acknowledged item is stored, accepted, in exactly one window, and counted in
  that window's netting (the nets equal the sums replayed from the items);
* no refused item is stored anywhere;
* every window's nets sum to zero, and no window is left unsettled (none stuck) but
  those aborted: an aborted window holds no sums, no settlement, and every item in it
  is excluded (status aborted), never counted elsewhere;
* each settlement account moved by exactly the sum of its participant's nets, through
  one settlement transfer per settled window it owed or was owed in (nothing twice);
* nobody owes anything at the end, and the caps are whole again (allowances + pools ==
  caps, positions zero: the audit's clearing book). No cap can be exceeded on the way:
  each shard asserts net <= allowance when it applies, and the book shows the
  allowances never add up to more than the caps.

The checker is a pure function of a `ClearingView`, so its own tests
(tests/unit/test_bank_checker.py) can feed it corrupted views.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import grpc

from tidebank.client import Account, AccountFlags, Client, CreateAccountResult, Transfer
from tidebank.v1 import clearing_pb2, clearing_pb2_grpc, types_pb2

CLEARING_LEDGER = 8
PARTICIPANTS = 4
NET_DEBIT_CAP = 3_000
SETTLEMENT_FUNDS = 10**9
SETTLEMENT_CODES = (9201, 9202)
R = clearing_pb2
ITEM_ACKNOWLEDGED = {R.CLEARING_ITEM_RESULT_OK, R.CLEARING_ITEM_RESULT_EXISTS}
RESOLVE_BOUND_S = 60.0
SETTLE_BOUND_S = 150.0  # a settlement cut short by a fault is taken over after its 60 s lease


def u128(value: int) -> types_pb2.U128:
    return types_pb2.U128(hi=value >> 64, lo=value & ((1 << 64) - 1))


def from_u128(m: types_pb2.U128) -> int:
    return m.hi << 64 | m.lo


def from_i128(m: types_pb2.I128) -> int:
    raw = m.hi << 64 | m.lo
    return raw - (1 << 128) if m.hi >> 63 else raw


@dataclass
class ItemOp:
    """One SubmitItems call: its items (id, payer, payee, amount) and what it was told."""

    items: list[tuple[int, int, int, int]]
    outcome: str = "pending"  # ok | unknown
    codes: list[int] = field(default_factory=list)


@dataclass
class ClearingHistory:
    participants: dict[int, int] = field(default_factory=dict)  # participant -> settlement account
    initial_balances: dict[int, int] = field(default_factory=dict)  # settlement account -> balance at the start
    item_ops: list[ItemOp] = field(default_factory=list)
    window_steps: Counter = field(default_factory=Counter)  # "close ok", "settle unknown", ...
    lock: threading.Lock = field(default_factory=threading.Lock)

    def acknowledged(self) -> dict[int, tuple[int, int, int]]:
        return {i[0]: i[1:] for op in self.item_ops if op.outcome == "ok"
                for i, code in zip(op.items, op.codes, strict=True) if code in ITEM_ACKNOWLEDGED}

    def refused(self) -> set[int]:
        return {i[0] for op in self.item_ops if op.outcome == "ok"
                for i, code in zip(op.items, op.codes, strict=True) if code not in ITEM_ACKNOWLEDGED}


@dataclass
class ClearingView:
    """What the cluster holds at the end, for the checker."""

    items: dict[int, clearing_pb2.ClearingItem]  # every id the history names that the cluster stores
    windows: list[clearing_pb2.Window]  # with nets, oldest first; the last one is the open one
    balances: dict[int, int]  # settlement account -> credits_posted - debits_posted
    settlement_legs: dict[int, list[Transfer]]  # settlement account -> its settlement transfers
    positions: dict[int, int]  # participant -> position
    book: dict[str, int] | None  # the audit's clearing book of the ledger (None: not read)


class ClearingWorkload:
    def __init__(self, cluster, client: Client, new_id) -> None:
        self.cluster = cluster
        self.client = client
        self.new_id = new_id
        self.history = ClearingHistory()
        self._channels = [cluster.channel(a) for a in cluster.endpoints]
        self._stubs = [clearing_pb2_grpc.ClearingStub(c) for c in self._channels]
        self.ids: list[int] = []

    def stub(self, rng: random.Random | None = None) -> clearing_pb2_grpc.ClearingStub:
        return (rng or random).choice(self._stubs)

    # --- setup ------------------------------------------------------------------------------------------
    def open(self) -> None:
        mint = self.new_id()
        self.ids = [self.new_id() for _ in range(PARTICIPANTS)]
        accounts = [self.new_id() for _ in range(PARTICIPANTS)]
        results = self.client.create_accounts([Account(id=mint, ledger=CLEARING_LEDGER, code=1)] + [
            Account(id=a, ledger=CLEARING_LEDGER, code=2, flags=AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)
            for a in accounts])
        assert all(r.status == CreateAccountResult.created for r in results), results
        for a in accounts:
            (r,) = self.client.create_transfers([Transfer(id=self.new_id(), debit_account_id=mint, credit_account_id=a,
                                                          amount=SETTLEMENT_FUNDS, ledger=CLEARING_LEDGER, code=1)])
            assert r.ok, r
        response = self._retry(lambda stub: stub.RegisterParticipants(R.RegisterParticipantsRequest(participants=[
            R.Participant(id=u128(p), ledger=CLEARING_LEDGER, code=1, name=f"bank-{n}", settlement_account_id=u128(a),
                          net_debit_cap=NET_DEBIT_CAP) for n, (p, a) in enumerate(zip(self.ids, accounts, strict=True))
        ]), timeout=20))
        assert set(response.results) <= {R.PARTICIPANT_RESULT_OK, R.PARTICIPANT_RESULT_EXISTS}, response.results
        self.history.participants = dict(zip(self.ids, accounts, strict=True))
        self.history.initial_balances = {a: SETTLEMENT_FUNDS for a in accounts}

    def _retry(self, call, bound_s: float = RESOLVE_BOUND_S):
        deadline = time.monotonic() + bound_s
        while True:
            try:
                return call(self.stub())
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    # --- workload ---------------------------------------------------------------------------------------
    def submit(self, rng: random.Random) -> ItemOp:
        items = []
        for _ in range(rng.randint(1, 4)):
            payer, payee = rng.sample(self.ids, 2)
            items.append((self.new_id(), payer, payee, rng.randint(1, 400)))
        op = ItemOp(items)
        self._send(op, self.stub(rng))
        with self.history.lock:
            self.history.item_ops.append(op)
        return op

    def _send(self, op: ItemOp, stub) -> None:
        request = R.SubmitItemsRequest(items=[R.ClearingItem(id=u128(i), payer_id=u128(p), payee_id=u128(q),
                                                             amount=a, ledger=CLEARING_LEDGER)
                                              for i, p, q, a in op.items])
        try:
            op.codes = list(stub.SubmitItems(request, timeout=10).results)
            op.outcome = "ok"
        except grpc.RpcError:
            op.outcome = "unknown"

    def operator(self, stop: threading.Event, period_s: float) -> None:
        """Closes the open window and settles it, every period, through whatever the nemesis does."""
        while not stop.wait(period_s):
            number = self._step("close", lambda s: s.CloseWindow(R.WindowRequest(ledger=CLEARING_LEDGER), timeout=10))
            if number:
                self._step("settle", lambda s, n=number: s.SettleWindow(
                    R.WindowRequest(ledger=CLEARING_LEDGER, number=n), timeout=20))

    def _step(self, what: str, call) -> int:
        try:
            step = call(self.stub())
        except grpc.RpcError:
            self.history.window_steps[f"{what} unknown"] += 1
            return 0
        result = R.WindowResult.Name(step.result).removeprefix("WINDOW_RESULT_").lower()
        self.history.window_steps[f"{what} {result}"] += 1
        return step.window.number if step.result == R.WINDOW_RESULT_OK else 0

    # --- after the run ----------------------------------------------------------------------------------
    def resolve_unknowns(self) -> int:
        """The same items again until each has a definite answer (`exists` for those that had applied)."""
        unknown = [op for op in self.history.item_ops if op.outcome == "unknown"]
        for op in unknown:
            deadline = time.monotonic() + RESOLVE_BOUND_S
            while op.outcome == "unknown":
                self._send(op, self.stub())
                if op.outcome == "unknown":
                    if time.monotonic() > deadline:
                        raise AssertionError(f"items {[i[0] for i in op.items]} stay unknown")
                    time.sleep(0.5)
        return len(unknown)

    def finish(self) -> None:
        """Close the open window and settle every closed one (the periodic pass may be finishing some too)."""
        self._retry(lambda s: s.CloseWindow(R.WindowRequest(ledger=CLEARING_LEDGER), timeout=20))
        deadline = time.monotonic() + SETTLE_BOUND_S
        while True:
            windows = self._retry(lambda s: s.ListWindows(R.ListWindowsRequest(ledger=CLEARING_LEDGER), timeout=20))
            pending = [w for w in windows.windows
                       if w.state not in (R.WINDOW_STATE_OPEN, R.WINDOW_STATE_SETTLED, R.WINDOW_STATE_ABORTED)]
            if not pending:
                return
            for w in pending:
                if w.state == R.WINDOW_STATE_CLOSED:
                    try:
                        self.stub().SettleWindow(R.WindowRequest(ledger=CLEARING_LEDGER, number=w.number), timeout=20)
                    except grpc.RpcError:
                        pass
            if time.monotonic() > deadline:
                raise AssertionError(f"windows {[(w.number, w.state) for w in pending]} never settled")
            time.sleep(0.5)

    def view(self, book: dict[str, int] | None) -> ClearingView:
        named = sorted({i[0] for op in self.history.item_ops for i in op.items})
        items: dict[int, clearing_pb2.ClearingItem] = {}
        for start in range(0, len(named), 4000):
            response = self._retry(lambda s, chunk=named[start:start + 4000]: s.LookupItems(
                R.LookupItemsRequest(ids=[u128(i) for i in chunk]), timeout=20))
            items.update({from_u128(i.id): i for i in response.items})
        listed = self._retry(lambda s: s.ListWindows(R.ListWindowsRequest(ledger=CLEARING_LEDGER), timeout=20))
        windows = [self._retry(lambda s, n=w.number: s.GetWindow(R.GetWindowRequest(ledger=CLEARING_LEDGER, number=n),
                                                                 timeout=20)) for w in listed.windows]
        accounts = list(self.history.participants.values())
        balances = {a.id: a.credits_posted - a.debits_posted for a in self.client.lookup_accounts(accounts)}
        legs = {a: [t for t in self.client.get_account_transfers(a, limit=8189).items if t.code in SETTLEMENT_CODES]
                for a in accounts}
        found = self._retry(lambda s: s.LookupParticipants(R.LookupParticipantsRequest(
            ids=[u128(p) for p in self.ids]), timeout=20)).participants
        positions = {from_u128(p.id): from_i128(p.position) for p in found}
        return ClearingView(items, windows, balances, legs, positions, book)

    def close(self) -> None:
        for channel in self._channels:
            channel.close()


def check_clearing(history: ClearingHistory, view: ClearingView) -> list[str]:
    """Every violation found, as sentences (see the module docstring)."""
    problems: list[str] = []
    acknowledged = history.acknowledged()
    aborted = {w.number for w in view.windows if w.state == R.WINDOW_STATE_ABORTED}
    for item_id, (payer, payee, amount) in acknowledged.items():
        stored = view.items.get(item_id)
        if stored is None:
            problems.append(f"acknowledged item {item_id} is missing")
        elif (from_u128(stored.payer_id), from_u128(stored.payee_id), stored.amount) != (payer, payee, amount):
            problems.append(f"item {item_id} is stored with other fields")
        elif stored.window == 0:
            problems.append(f"acknowledged item {item_id} is not accepted in a window")
        elif (stored.status == R.CLEARING_ITEM_STATUS_ABORTED) != (stored.window in aborted):
            problems.append(f"acknowledged item {item_id} is {R.ClearingItemStatus.Name(stored.status)} in window "
                            f"{stored.window}, which is {'' if stored.window in aborted else 'not '}aborted")
        elif stored.status not in (R.CLEARING_ITEM_STATUS_ACCEPTED, R.CLEARING_ITEM_STATUS_ABORTED):
            problems.append(f"acknowledged item {item_id} is not accepted in a window")
    ghosts = sorted(history.refused() & view.items.keys())
    if ghosts:
        problems.append(f"{len(ghosts)} refused items are stored, e.g. {ghosts[:3]}")
    replay: dict[tuple[int, int], list[int]] = {}
    for item_id, (payer, payee, amount) in acknowledged.items():
        stored = view.items.get(item_id)
        if stored is None or stored.status != R.CLEARING_ITEM_STATUS_ACCEPTED:
            continue  # an aborted window counts none of its items
        sent = replay.setdefault((stored.window, payer), [0, 0, 0, 0])
        sent[0] += amount
        sent[2] += 1
        received = replay.setdefault((stored.window, payee), [0, 0, 0, 0])
        received[1] += amount
        received[3] += 1
    numbers = {w.number for w in view.windows}
    strays = sorted({w for w, _ in replay} - numbers)
    if strays:
        problems.append(f"items lie in windows {strays} that do not exist")
    owed: Counter = Counter()
    settled_with: Counter = Counter()
    transfer_ids: list[int] = []
    for w in view.windows:
        nets = {from_u128(n.participant_id): [from_u128(n.sent), from_u128(n.received), n.count_sent,
                                              n.count_received]
                for n in w.nets if n.count_sent or n.count_received}
        expected = {pid: sums for (number, pid), sums in replay.items() if number == w.number}
        if nets != expected:
            problems.append(f"window {w.number}: nets {nets} != the items in it {expected}")
        if sum(from_i128(n.net) for n in w.nets) != 0:
            problems.append(f"window {w.number}: nets sum to {sum(from_i128(n.net) for n in w.nets)}, not 0")
        if w.state == R.WINDOW_STATE_ABORTED:
            if w.settlement_transfer_ids:
                problems.append(f"window {w.number} is aborted but names settlement transfers")
        elif w.state == R.WINDOW_STATE_SETTLED:
            for n in w.nets:
                owed[from_u128(n.participant_id)] += from_i128(n.net)
                settled_with[from_u128(n.participant_id)] += bool(from_i128(n.net))
            transfer_ids += [from_u128(t) for t in w.settlement_transfer_ids]
        elif w is not view.windows[-1] or w.state != R.WINDOW_STATE_OPEN:
            problems.append(f"window {w.number} is stuck in state {R.WindowState.Name(w.state)}")
    if len(transfer_ids) != len(set(transfer_ids)):
        problems.append("a settlement transfer id serves two windows")
    for pid, account in history.participants.items():
        moved = history.initial_balances[account] - view.balances.get(account, 0)
        if moved != owed[pid]:
            problems.append(f"participant {pid}: settlement account moved {moved}, its nets say {owed[pid]}")
        legs = view.settlement_legs.get(account, [])
        if len(legs) != settled_with[pid] or len({t.id for t in legs}) != len(legs):
            problems.append(f"participant {pid}: {len(legs)} settlement transfers for {settled_with[pid]} "
                            "settled windows")
        if view.positions.get(pid, 0) != 0:
            problems.append(f"participant {pid}: position {view.positions[pid]} after every window settled")
    if view.book is not None:
        if view.book.get("net", 0) != 0:
            problems.append(f"clearing book: positions sum to {view.book['net']}")
        if view.book.get("allowance", 0) + view.book.get("pool", 0) != view.book.get("cap", 0):
            problems.append(f"clearing book: allowances {view.book.get('allowance')} + pools {view.book.get('pool')}"
                            f" != caps {view.book.get('cap')}")
    return problems

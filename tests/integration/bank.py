"""A Jepsen-style bank workload, nemesis and checker over a real local cluster.

Clients move money between accounts spread over every shard (mostly cross-shard)
with single transfers, linked chains and pending transfers later posted or
voided, and escrow trades between the same accounts (created, shipped, confirmed,
refunded, disputed and split, extended, or left to their 2-5 s timers), and
clearing items between four participants whose windows an operator closes and
settles every few seconds (bank_clearing.py), while a
nemesis kills and restarts shard leaders, pauses a node,
partitions a data centre and heals it, and restarts a node, on a schedule
derived from the seed. Every operation is recorded with its outcome; afterwards
unknown outcomes are resolved by re-submitting the same ids, and the checker
verifies the ledger against the history. Used by tests/integration/test_bank.py
and by bench/soak_bank.py (many seeds).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import grpc

from tidebank.client import (
    Account,
    AccountFlags,
    Client,
    CreateAccountResult,
    CreateTransferResult,
    DisputeResolution,
    Extension,
    NewTrade,
    OutcomeUnknownError,
    Refund,
    TidebankError,
    TradeClosedBy,
    TradeResultCode,
    TradeState,
    TradeTimer,
    Transfer,
    TransferFlags,
)
from tidebank.cluster.launcher import LocalCluster
from tidebank.common.auth import signed
from tidebank.common.keys import slot_of
from tidebank.v1 import admin_pb2, admin_pb2_grpc

from .bank_clearing import CLEARING_LEDGER, ClearingWorkload, check_clearing

LEDGER = 7
INITIAL_BALANCE = 10_000
OK = {CreateTransferResult.created, CreateTransferResult.exists}
QUIESCENCE_BOUND_S = 30.0  # after faults heal, no prepared transaction or hold may remain longer
TRADE_OK = {TradeResultCode.ok, TradeResultCode.exists}
TRADE_SHARE = 0.25  # of the workers' operations
CLEARING_SHARE = 0.15  # of the workers' operations
CLEARING_WINDOWS = 6  # the operator closes and settles a window this many times per run
# Transfer codes of escrow legs (tidebank.node.ledger.escrow): hold, release, fee, refund.
CODE_HOLD, CODE_RELEASE, CODE_FEE, CODE_REFUND = 9101, 9102, 9103, 9104
ESCROW_CODES = {CODE_HOLD, CODE_RELEASE, CODE_FEE, CODE_REFUND}
TRADE_ENDED = {TradeResultCode.trade_is_settled, TradeResultCode.trade_is_refunded, TradeResultCode.trade_is_closed}
RESTING = {TradeState.SETTLED, TradeState.REFUNDED, TradeState.CLOSED, TradeState.DISPUTED}  # no timer runs


@dataclass
class Op:
    """One client call and what it was told."""

    kind: str  # single | chain | pending | post | void
    transfers: list[Transfer]
    outcome: str = "pending"  # ok | failed | unknown
    codes: list[int] = field(default_factory=list)


@dataclass
class TradeOp:
    """One escrow call and what it was told."""

    kind: str  # create | ship | confirm | refund | dispute | withdraw | resolve | extend
    trade_id: int
    item: object  # NewTrade, Refund, DisputeResolution, Extension, or the trade id
    outcome: str = "pending"  # ok | failed | unknown
    code: int = -1


@dataclass
class History:
    ops: list[Op] = field(default_factory=list)
    trade_ops: list[TradeOp] = field(default_factory=list)
    limit_violations: list[str] = field(default_factory=list)
    reads: int = 0
    faults: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, op: Op) -> None:
        with self.lock:
            self.ops.append(op)

    def add_trade(self, op: TradeOp) -> None:
        with self.lock:
            self.trade_ops.append(op)


class Bank:
    def __init__(self, cluster: LocalCluster, seed: int, accounts_per_shard: int = 3):
        self.cluster = cluster
        self.seed = seed
        self.rng = random.Random(seed)
        self.history = History()
        self.client = Client(cluster.endpoints, tls=cluster.client_tls(), timeout_s=20.0)
        shard_map = self.client.shard_map()
        owner = {slot: s.shard_id for s in shard_map.shards for a, b in s.slots for slot in range(a, b)}
        self._next_id = (seed << 96) | (1 << 80)
        self._id_lock = threading.Lock()
        self.accounts: list[int] = []
        for shard_id in sorted(s.shard_id for s in shard_map.shards):
            found = 0
            while found < accounts_per_shard:
                candidate = self.new_id()
                if owner[slot_of(candidate, shard_map.slot_count)] == shard_id:
                    self.accounts.append(candidate)
                    found += 1
        self.mint = self.new_id()
        self.open_pending: list[Transfer] = []
        self.stop = threading.Event()
        self.clearing = ClearingWorkload(cluster, self.client, self.new_id)

    def new_id(self) -> int:
        with self._id_lock:
            self._next_id += 1
            return self._next_id

    # --- setup ------------------------------------------------------------------------------------------
    def open(self) -> None:
        accounts = [Account(id=self.mint, ledger=LEDGER, code=1)] + [
            Account(id=a, ledger=LEDGER, code=1, flags=AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)
            for a in self.accounts]
        assert all(r.status == CreateAccountResult.created for r in self.client.create_accounts(accounts))
        funding = [Transfer(id=self.new_id(), debit_account_id=self.mint, credit_account_id=a,
                            amount=INITIAL_BALANCE, ledger=LEDGER, code=1) for a in self.accounts]
        for t in funding:  # one by one: each is its own (mostly cross-shard) group
            op = Op("single", [t])
            self._submit(op)
            assert op.outcome == "ok", f"funding failed: {op.codes}"
        self.clearing.open()

    # --- workload ---------------------------------------------------------------------------------------
    def _transfer(self, rng: random.Random, **fields) -> Transfer:
        debit, credit = rng.sample(self.accounts, 2)
        return Transfer(id=self.new_id(), debit_account_id=debit, credit_account_id=credit,
                        amount=fields.pop("amount", rng.randint(1, 400)), ledger=LEDGER, code=1, **fields)

    def _submit(self, op: Op) -> None:
        try:
            results = self.client.create_transfers(op.transfers)
        except (OutcomeUnknownError, TidebankError, grpc.RpcError):
            op.outcome = "unknown"
        else:
            op.codes = [int(r.status) for r in results]
            op.outcome = "ok" if all(r.status in OK for r in results) else "failed"
        self.history.add(op)

    # --- escrow workload --------------------------------------------------------------------------------
    def _trade_op(self, rng: random.Random, mine: list[int]) -> TradeOp:
        if len(mine) < 3 or rng.random() < 0.2:
            buyer, seller = rng.sample(self.accounts, 2)
            t = NewTrade(self.new_id(), buyer, seller, rng.randint(1, 300), LEDGER,
                         fee_bps=rng.choice([0, 150, 275]), ship_by_timeout_s=rng.randint(2, 5),
                         auto_confirm_timeout_s=rng.randint(2, 5))
            return TradeOp("create", t.id, t)
        trade_id = rng.choice(mine)
        kind = rng.choice(["ship", "ship", "confirm", "refund", "dispute", "withdraw", "resolve", "extend"])
        if kind == "refund":
            return TradeOp(kind, trade_id, Refund(trade_id, self.new_id(), rng.randint(1, 60)))
        if kind == "resolve":
            return TradeOp(kind, trade_id, DisputeResolution(trade_id, rng.randint(0, 60)))
        if kind == "extend":
            return TradeOp(kind, trade_id, Extension(trade_id, self.new_id(), rng.randint(1, 3)))
        return TradeOp(kind, trade_id, trade_id)

    def _submit_trade(self, op: TradeOp) -> None:
        c = self.client
        call = {"create": c.create_trades, "ship": c.ship_trades, "confirm": c.confirm_trades,
                "refund": c.refund_trades, "dispute": c.open_disputes, "withdraw": c.withdraw_disputes,
                "resolve": c.resolve_disputes, "extend": c.extend_trades}[op.kind]
        try:
            (result,) = call([op.item])
        except (OutcomeUnknownError, TidebankError, grpc.RpcError):
            op.outcome = "unknown"
        else:
            op.code = int(result.status)
            op.outcome = "ok" if result.status in TRADE_OK else "failed"

    def worker(self, index: int) -> None:
        rng = random.Random(self.seed * 1000 + index)
        mine: list[int] = []  # trades this worker opened
        while not self.stop.is_set():
            if rng.random() < CLEARING_SHARE:
                self.clearing.submit(rng)
                continue
            if rng.random() < TRADE_SHARE:
                trade_op = self._trade_op(rng, mine)
                self._submit_trade(trade_op)
                self.history.add_trade(trade_op)
                if trade_op.kind == "create" and trade_op.outcome != "failed":
                    mine.append(trade_op.trade_id)
                elif trade_op.code in TRADE_ENDED or (trade_op.kind in ("confirm", "resolve")
                                                      and trade_op.outcome == "ok"):
                    mine.remove(trade_op.trade_id)  # over: pick open trades for the next steps
                continue
            choice = rng.random()
            if choice < 0.5:
                op = Op("single", [self._transfer(rng)])
            elif choice < 0.7:
                chain = [self._transfer(rng, flags=TransferFlags.LINKED) for _ in range(rng.randint(1, 2))]
                chain.append(self._transfer(rng))
                op = Op("chain", chain)
            elif choice < 0.85 or not self.open_pending:
                op = Op("pending", [self._transfer(rng, flags=TransferFlags.PENDING)])
            else:
                with self.history.lock:
                    pending = self.open_pending.pop(rng.randrange(len(self.open_pending))) \
                        if self.open_pending else None
                if pending is None:
                    continue
                post = rng.random() < 0.6
                amount = rng.randint(1, pending.amount) if post else 0
                flags = TransferFlags.POST_PENDING_TRANSFER if post else TransferFlags.VOID_PENDING_TRANSFER
                op = Op("post" if post else "void", [Transfer(
                    id=self.new_id(), debit_account_id=pending.debit_account_id,
                    credit_account_id=pending.credit_account_id, amount=amount, pending_id=pending.id,
                    ledger=LEDGER, code=1, flags=flags)])
            self._submit(op)
            if op.kind == "pending" and op.outcome == "ok":
                with self.history.lock:
                    self.open_pending.append(op.transfers[0])

    def reader(self) -> None:
        """Linearizable reads during the run: no limited account is ever beyond its limit."""
        while not self.stop.wait(0.5):
            try:
                accounts = self.client.lookup_accounts(self.accounts, timeout_s=5.0)
            except Exception:
                continue
            self.history.reads += 1
            for a in accounts:
                if a.debits_pending + a.debits_posted > a.credits_posted:
                    self.history.limit_violations.append(
                        f"account {a.id}: debits {a.debits_pending}+{a.debits_posted} > credits {a.credits_posted}")

    # --- nemesis ----------------------------------------------------------------------------------------
    def nemesis_schedule(self, duration_s: float) -> list[tuple[float, str, str]]:
        """(offset seconds, action, target), from the seed: kills, a pause, a partition and heal, a restart."""
        rng = random.Random(self.seed)
        nodes = self.cluster.topology.node_names
        dcs = list(self.cluster.topology.dcs)
        step = duration_s / 10
        shard_a, shard_b = rng.sample(range(len(self.cluster.topology.shards)), 2)
        paused = rng.choice(nodes)
        restarted = rng.choice(nodes)
        return [
            (1 * step, "kill-leader", str(shard_a)),
            (2 * step, "start-dead", ""),
            (3 * step, "pause", paused),
            (4 * step, "resume", paused),
            (5 * step, "partition", rng.choice(dcs)),
            (6.5 * step, "heal", ""),
            (7 * step, "restart", restarted),
            (8 * step, "kill-leader", str(shard_b)),
            (9 * step, "start-dead", ""),
        ]

    def nemesis(self, duration_s: float, started: float) -> None:
        for offset, action, target in self.nemesis_schedule(duration_s):
            if self.stop.wait(max(0.0, started + offset - time.monotonic())):
                return
            try:
                self._fault(action, target)
                self.history.faults.append(f"{offset:5.1f}s {action} {target}".rstrip())
            except Exception as exc:
                self.history.faults.append(f"{offset:5.1f}s {action} {target} FAILED: {exc}")

    def _fault(self, action: str, target: str) -> None:
        cluster = self.cluster
        if action == "kill-leader":
            status = cluster.cluster_status()
            leaders = [r.node for r in status if r.shard == int(target) and r.role == "leader"]
            if leaders:
                cluster.kill(leaders[0])
        elif action == "start-dead":
            dead = [n for n in cluster.topology.node_names if not cluster.is_running(n)]
            if dead:
                cluster.start(dead)
        elif action == "pause":
            cluster.pause(target)
        elif action == "resume":
            cluster.resume(target)
        elif action == "partition":
            set_link_faults(cluster, isolated_dcs=[target])
        elif action == "heal":
            set_link_faults(cluster, isolated_dcs=[])
        elif action == "restart":
            cluster.restart(target)

    def heal_everything(self) -> None:
        for node in self.cluster.topology.node_names:
            if self.cluster.is_paused(node):
                self.cluster.resume(node)
        dead = [n for n in self.cluster.topology.node_names if not self.cluster.is_running(n)]
        if dead:
            self.cluster.start(dead)
        set_link_faults(self.cluster, isolated_dcs=[])
        self.cluster.wait_ready(timeout_s=60)

    # --- run --------------------------------------------------------------------------------------------
    def run(self, duration_s: float, workers: int = 4, mover=None) -> None:
        """The workload, reader, clearing operator and nemesis for `duration_s`; with `mover` (a
        bank_moves.ReplicaMover) also nodes joining and replicas moving meanwhile."""
        started = time.monotonic()
        threads = [threading.Thread(target=self.worker, args=(i,), daemon=True) for i in range(workers)]
        if mover is not None:
            threads.append(threading.Thread(target=mover.run, args=(started,), daemon=True))
        threads.append(threading.Thread(target=self.reader, daemon=True))
        threads.append(threading.Thread(target=self.clearing.operator,
                                        args=(self.stop, duration_s / CLEARING_WINDOWS), daemon=True))
        nemesis = threading.Thread(target=self.nemesis, args=(duration_s, started), daemon=True)
        for thread in [*threads, nemesis]:
            thread.start()
        self.stop.wait(duration_s)
        self.stop.set()
        for thread in [*threads, nemesis]:
            thread.join(60)
        assert not any(t.is_alive() for t in threads), "a client thread hung"

    def resolve_unknowns(self) -> int:
        """Re-submit every unknown operation with the same ids: each ends applied (ok) or refused."""
        unknown = [op for op in self.history.ops if op.outcome == "unknown"]
        for op in unknown:
            deadline = time.monotonic() + 60
            while True:
                try:
                    results = self.client.create_transfers(op.transfers)
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)
            op.codes = [int(r.status) for r in results]
            op.outcome = "ok" if all(r.status in OK for r in results) else "failed"
        unknown_trade_ops = [op for op in self.history.trade_ops if op.outcome == "unknown"]
        for trade_op in unknown_trade_ops:
            deadline = time.monotonic() + 60
            while trade_op.outcome == "unknown":
                self._submit_trade(trade_op)
                if trade_op.outcome == "unknown":
                    if time.monotonic() > deadline:
                        raise AssertionError(f"escrow step {trade_op.kind} of {trade_op.trade_id} stays unknown")
                    time.sleep(0.5)
        unknown_items = self.clearing.resolve_unknowns()
        self.clearing.finish()
        return len(unknown) + len(unknown_trade_ops) + unknown_items

    def wait_quiescent(self) -> float:
        """Seconds until no shard holds a prepared transaction and every trade's timer has fired (bounded)."""
        began = time.monotonic()
        trade_ids = sorted({op.trade_id for op in self.history.trade_ops if op.kind == "create"})
        while True:
            prepared = prepared_transactions(self.cluster)
            running = [t for t in _lookup_trades(self.client, trade_ids) if t.state not in RESTING]
            if prepared == 0 and not running:
                return time.monotonic() - began
            if time.monotonic() - began > QUIESCENCE_BOUND_S:
                now_ns = time.time_ns()
                timers = "; ".join(
                    f"trade {t.id} {TradeState(t.state).name} v{t.version} timer {TradeTimer(t.timer).name} due "
                    f"{(now_ns - t.deadline) / 1e9:+.1f} s ago" for t in running[:5])
                raise AssertionError(f"{prepared} prepared transactions and {len(running)} trades with running "
                                     f"timers left {QUIESCENCE_BOUND_S} s after healing ({timers or 'none'})")
            time.sleep(0.25)

    def close(self) -> None:
        self.clearing.close()
        self.client.close()


def set_link_faults(cluster: LocalCluster, isolated_dcs: list[str]) -> None:
    faults = admin_pb2.LinkFaults(isolated_dcs=isolated_dcs)
    for spec in cluster.topology.nodes:
        if not cluster.is_running(spec.name):
            continue
        with cluster.channel(spec.grpc_address) as channel:
            try:
                admin_pb2_grpc.AdminStub(channel).SetLinkFaults(
                    faults, timeout=5, metadata=signed(cluster.topology.secret, "SetLinkFaults", faults))
            except grpc.RpcError:
                if not cluster.is_paused(spec.name):
                    raise


def prepared_transactions(cluster: LocalCluster) -> int:
    total, seen = 0, set()
    for spec in cluster.topology.nodes:
        with cluster.channel(spec.grpc_address) as channel:
            try:
                totals = admin_pb2_grpc.AdminStub(channel).GetLedgerTotals(admin_pb2.GetLedgerTotalsRequest(),
                                                                           timeout=10)
            except grpc.RpcError:
                continue
        for shard in totals.shards:
            if shard.shard_id not in seen:
                seen.add(shard.shard_id)
                total += shard.prepared_txns
    if len(seen) < len(cluster.topology.shards):
        return max(total, 1)  # some shard did not report: not known to be quiescent
    return total


# --- the checker ------------------------------------------------------------------------------------------

def check(bank: Bank) -> list[str]:
    """Every violation found, as sentences; empty means the history is consistent with the ledger."""
    problems: list[str] = []
    client, ops = bank.client, bank.history.ops
    problems.extend(bank.history.limit_violations[:10])
    assert not any(op.outcome == "unknown" for op in ops), "resolve unknown outcomes first"

    applied = [t for op in ops if op.outcome == "ok" for t in op.transfers]
    refused = [t for op in ops if op.outcome == "failed" for t in op.transfers]
    trades = _trades_of(bank)
    # Replay the applied transfers into expected balances.
    expected = {a: [0, 0, 0, 0] for a in [bank.mint, *bank.accounts]}  # dp, dpost, cp, cpost
    for tr in trades.values():  # what the trades say they took from buyers and paid to either side
        expected[tr.buyer_account_id][1] += tr.amount
        expected[tr.buyer_account_id][3] += tr.refunded
        expected[tr.seller_account_id][3] += tr.released
    pending_amount: dict[int, Transfer] = {}
    for t in sorted(applied, key=lambda t: t.id):  # ids grow with time per thread; replay is order-free below
        if t.flags & TransferFlags.PENDING:
            pending_amount[t.id] = t
    closed: dict[int, Transfer] = {t.pending_id: t for t in applied
                                   if t.flags & (TransferFlags.POST_PENDING_TRANSFER
                                                 | TransferFlags.VOID_PENDING_TRANSFER)}
    for t in applied:
        if t.flags & (TransferFlags.POST_PENDING_TRANSFER | TransferFlags.VOID_PENDING_TRANSFER):
            pending = pending_amount.get(t.pending_id)
            if pending is None:
                problems.append(f"post/void {t.id} applied for a pending transfer that was never applied")
                continue
            if t.flags & TransferFlags.POST_PENDING_TRANSFER:
                amount = t.amount or pending.amount
                expected[t.debit_account_id][1] += amount
                expected[t.credit_account_id][3] += amount
        elif t.flags & TransferFlags.PENDING:
            if t.id not in closed:
                expected[t.debit_account_id][0] += t.amount
                expected[t.credit_account_id][2] += t.amount
        else:
            expected[t.debit_account_id][1] += t.amount
            expected[t.credit_account_id][3] += t.amount

    accounts = {a.id: a for a in client.lookup_accounts([bank.mint, *bank.accounts])}
    for account_id, (dp, dpost, cp, cpost) in expected.items():
        a = accounts[account_id]
        actual = (a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted)
        if actual != (dp, dpost, cp, cpost):
            problems.append(f"account {account_id}: balances {actual} != replay {(dp, dpost, cp, cpost)}")
    system = sorted({i for tr in trades.values() for i in (tr.escrow_account_id, tr.fee_account_id)})
    books = {a.id: a for a in client.lookup_accounts(system)} if system else {}
    totals = [sum(getattr(a, f) for a in [*accounts.values(), *books.values()])
              for f in ("debits_posted", "credits_posted", "debits_pending", "credits_pending")]
    if totals[0] != totals[1] or totals[2] != totals[3]:
        problems.append(f"money not conserved: debits {totals[0]}/{totals[2]} credits {totals[1]}/{totals[3]}")

    # Applied exactly once on every leg: each account's history has each of its transfers once.
    touching = Counter()
    for t in applied:
        touching[t.debit_account_id] += 1
        touching[t.credit_account_id] += 1
    legs: dict[int, list[Transfer]] = {}  # trade id -> its escrow legs, as the parties' histories show them
    for account_id in expected:
        everything = [t for page in _history(client, account_id) for t in page]
        for t in everything:
            if t.code in ESCROW_CODES:
                legs.setdefault(t.user_data_128, []).append(t)
        seen = [t.id for t in everything if t.code not in ESCROW_CODES]
        if len(seen) != len(set(seen)):
            problems.append(f"account {account_id}: a transfer appears twice in its history")
        if len(seen) != touching[account_id]:
            problems.append(f"account {account_id}: history has {len(seen)} transfers, expected "
                            f"{touching[account_id]}")
    found = {t.id for t in _lookup_all(client, [t.id for t in applied])}
    missing = [t.id for t in applied if t.id not in found]
    if missing:
        problems.append(f"{len(missing)} acknowledged transfers missing, e.g. {missing[:3]}")
    ghosts = {t.id for t in _lookup_all(client, [t.id for t in refused])}
    if ghosts:
        problems.append(f"{len(ghosts)} refused transfers were applied, e.g. {sorted(ghosts)[:3]}")
    problems.extend(check_trades(bank, trades, legs, books))
    clearing = getattr(bank, "clearing", None)
    if clearing is not None:
        problems.extend(check_clearing(clearing.history, clearing.view(clearing_book(bank.cluster))))
    return problems


def clearing_book(cluster: LocalCluster) -> dict[str, int] | None:
    """The audit's clearing book of the bank's clearing ledger, once no allowance move is in flight (bounded)."""
    from tidebank.cluster.audit import audit, collect_totals
    from tidebank.cluster.launcher import ChannelPool

    expected = [s.shard_id for s in cluster.topology.shards]
    deadline = time.monotonic() + QUIESCENCE_BOUND_S
    with ChannelPool(cluster.client_tls()) as pool:
        while True:
            report = audit(collect_totals(cluster.endpoints, 10.0, pool)[0], expected_shards=expected)
            if report.settled or time.monotonic() > deadline:
                return report.clearing.get(CLEARING_LEDGER) if report.settled else None
            time.sleep(0.25)


def check_trades(bank: Bank, trades: dict, legs: dict[int, list[Transfer]], books: dict[int, Account]) -> list[str]:
    """Every acknowledged escrow step is in its trade, no refused create left a trade, each trade's money matches
    its state, the parties' histories hold exactly the legs the trade records, and the escrow and fee accounts
    hold exactly what the trades say."""
    problems: list[str] = []
    trade_ops = bank.history.trade_ops
    created = {op.trade_id for op in trade_ops if op.kind == "create" and op.outcome == "ok"}
    refused = {op.trade_id for op in trade_ops if op.kind == "create" and op.outcome == "failed"} - created
    lost = created - trades.keys()
    if lost:
        problems.append(f"{len(lost)} acknowledged trades missing, e.g. {sorted(lost)[:3]}")
    ghosts = refused & trades.keys()
    if ghosts:
        problems.append(f"{len(ghosts)} refused trades exist, e.g. {sorted(ghosts)[:3]}")
    for tr in trades.values():
        gross = tr.released + tr.fee
        if tr.held != tr.amount - tr.refunded - tr.released - tr.fee or tr.held < 0:
            problems.append(f"trade {tr.id}: held {tr.held} != amount - refunded - released - fee")
        if (tr.state in (TradeState.SETTLED, TradeState.REFUNDED, TradeState.CLOSED)) != (tr.held == 0):
            problems.append(f"trade {tr.id}: state {TradeState(tr.state).name} with {tr.held} held")
        if tr.fee != gross * tr.fee_bps // 10_000:
            problems.append(f"trade {tr.id}: fee {tr.fee} is not the fee on {gross}")
        moved = Counter()
        for t in legs.get(tr.id, []):
            moved[t.code] += t.amount
        want = {CODE_HOLD: tr.amount, CODE_REFUND: tr.refunded, CODE_RELEASE: tr.released}
        got = {code: moved[code] for code in want}
        if got != want:
            problems.append(f"trade {tr.id}: legs in the parties' histories {got} != the trade's book {want}")
    for op in trade_ops:
        tr = trades.get(op.trade_id)
        if op.outcome != "ok" or tr is None:
            continue
        item = op.item
        if op.kind == "refund" and (item.refund_id, item.amount) not in tr.refunds:
            problems.append(f"trade {tr.id}: acknowledged refund {item.refund_id} is not in the trade")
        elif op.kind == "extend" and (item.extension_id, item.extend_by_s) not in tr.extensions:
            problems.append(f"trade {tr.id}: acknowledged extension {item.extension_id} is not in the trade")
        elif op.kind == "ship" and not tr.shipped_at:
            problems.append(f"trade {tr.id}: acknowledged ship, never shipped")
        elif op.kind == "confirm" and tr.closed_by != TradeClosedBy.BUYER_CONFIRMED:
            problems.append(f"trade {tr.id}: acknowledged confirm, closed by {tr.closed_by}")
        elif op.kind == "dispute" and not tr.dispute_opened:
            problems.append(f"trade {tr.id}: acknowledged dispute, never opened")
        elif op.kind == "resolve" and tr.closed_by != TradeClosedBy.DISPUTE_RESOLVED:
            problems.append(f"trade {tr.id}: acknowledged resolution, closed by {tr.closed_by}")
    held = sum(tr.held for tr in trades.values())
    fees = sum(tr.fee for tr in trades.values())
    escrow_ids = {tr.escrow_account_id for tr in trades.values()}
    in_escrow = sum(a.credits_posted - a.debits_posted for i, a in books.items() if i in escrow_ids)
    in_fees = sum(a.credits_posted - a.debits_posted for i, a in books.items() if i not in escrow_ids)
    if (held, fees) != (in_escrow, in_fees):
        problems.append(f"escrow accounts hold {in_escrow} and fee accounts {in_fees}; trades say {held} and {fees}")
    return problems


def _trades_of(bank: Bank) -> dict:
    ids = sorted({op.trade_id for op in bank.history.trade_ops if op.kind == "create"})
    return {t.id: t for t in _lookup_trades(bank.client, ids)}


def _lookup_trades(client, ids: list[int]) -> list:
    found = []
    for start in range(0, len(ids), 4000):
        found.extend(client.lookup_trades(ids[start:start + 4000]))
    return found


def _history(client: Client, account_id: int):
    token = ""
    while True:
        page = client.get_account_transfers(account_id, limit=8189, page_token=token)
        yield page.items
        token = page.next_page_token
        if not token:
            return


def _lookup_all(client: Client, ids: list[int]) -> list[Transfer]:
    found = []
    for start in range(0, len(ids), 4000):
        found.extend(client.lookup_transfers(ids[start:start + 4000]))
    return found


def summary(bank: Bank, unknown: int, quiescent_s: float, problems: list[str]) -> str:
    outcomes = Counter(op.outcome for op in bank.history.ops)
    kinds = Counter(op.kind for op in bank.history.ops if op.outcome == "ok")
    trade_kinds = Counter(op.kind for op in bank.history.trade_ops if op.outcome == "ok")
    clearing = getattr(bank, "clearing", None)
    items_ok = len(clearing.history.acknowledged()) if clearing is not None else 0
    windows = dict(clearing.history.window_steps) if clearing is not None else {}
    verdict = "PASS" if not problems else f"FAIL ({len(problems)} problems)"
    return (f"seed={bank.seed} {verdict} ops={len(bank.history.ops)} ok={outcomes['ok']} "
            f"failed={outcomes['failed']} unknown_resolved={unknown} applied_by_kind={dict(kinds)} "
            f"trade_steps_ok={dict(trade_kinds)} clearing_items_ok={items_ok} clearing_window_steps={windows} "
            f"reads={bank.history.reads} quiescent_after_s={quiescent_s:.1f} faults={len(bank.history.faults)}")

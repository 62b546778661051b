"""A Jepsen-style bank workload, nemesis and checker over a real local cluster.

Clients move money between accounts spread over every shard (mostly cross-shard)
with single transfers, linked chains and pending transfers later posted or
voided, while a nemesis kills and restarts shard leaders, pauses a node,
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

from tidebank.auth import signed
from tidebank.client import (
    Account,
    AccountFlags,
    Client,
    CreateAccountResult,
    CreateTransferResult,
    OutcomeUnknownError,
    TidebankError,
    Transfer,
    TransferFlags,
)
from tidebank.cluster.launcher import LocalCluster
from tidebank.keys import slot_of
from tidebank.v1 import admin_pb2, admin_pb2_grpc

LEDGER = 7
INITIAL_BALANCE = 10_000
OK = {CreateTransferResult.created, CreateTransferResult.exists}
QUIESCENCE_BOUND_S = 30.0  # after faults heal, no prepared transaction or hold may remain longer


@dataclass
class Op:
    """One client call and what it was told."""

    kind: str  # single | chain | pending | post | void
    transfers: list[Transfer]
    outcome: str = "pending"  # ok | failed | unknown
    codes: list[int] = field(default_factory=list)


@dataclass
class History:
    ops: list[Op] = field(default_factory=list)
    limit_violations: list[str] = field(default_factory=list)
    reads: int = 0
    faults: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, op: Op) -> None:
        with self.lock:
            self.ops.append(op)


class Bank:
    def __init__(self, cluster: LocalCluster, seed: int, accounts_per_shard: int = 3):
        self.cluster = cluster
        self.seed = seed
        self.rng = random.Random(seed)
        self.history = History()
        self.client = Client(cluster.endpoints, timeout_s=20.0)
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

    def worker(self, index: int) -> None:
        rng = random.Random(self.seed * 1000 + index)
        while not self.stop.is_set():
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
    def run(self, duration_s: float, workers: int = 4) -> None:
        started = time.monotonic()
        threads = [threading.Thread(target=self.worker, args=(i,), daemon=True) for i in range(workers)]
        threads.append(threading.Thread(target=self.reader, daemon=True))
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
        return len(unknown)

    def wait_quiescent(self) -> float:
        """Seconds until no shard holds a prepared transaction (bounded)."""
        began = time.monotonic()
        while True:
            prepared = prepared_transactions(self.cluster)
            if prepared == 0:
                return time.monotonic() - began
            if time.monotonic() - began > QUIESCENCE_BOUND_S:
                raise AssertionError(f"{prepared} prepared transactions left {QUIESCENCE_BOUND_S} s after healing")
            time.sleep(0.25)

    def close(self) -> None:
        self.client.close()


def set_link_faults(cluster: LocalCluster, isolated_dcs: list[str]) -> None:
    faults = admin_pb2.LinkFaults(isolated_dcs=isolated_dcs)
    for spec in cluster.topology.nodes:
        if not cluster.is_running(spec.name):
            continue
        with grpc.insecure_channel(spec.grpc_address) as channel:
            try:
                admin_pb2_grpc.AdminStub(channel).SetLinkFaults(
                    faults, timeout=5, metadata=signed(cluster.topology.secret, "SetLinkFaults", faults))
            except grpc.RpcError:
                if not cluster.is_paused(spec.name):
                    raise


def prepared_transactions(cluster: LocalCluster) -> int:
    total, seen = 0, set()
    for spec in cluster.topology.nodes:
        with grpc.insecure_channel(spec.grpc_address) as channel:
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
    # Replay the applied transfers into expected balances.
    expected = {a: [0, 0, 0, 0] for a in [bank.mint, *bank.accounts]}  # dp, dpost, cp, cpost
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
    totals = [sum(getattr(a, f) for a in accounts.values())
              for f in ("debits_posted", "credits_posted", "debits_pending", "credits_pending")]
    if totals[0] != totals[1] or totals[2] != totals[3]:
        problems.append(f"money not conserved: debits {totals[0]}/{totals[2]} credits {totals[1]}/{totals[3]}")

    # Applied exactly once on every leg: each account's history has each of its transfers once.
    touching = Counter()
    for t in applied:
        touching[t.debit_account_id] += 1
        touching[t.credit_account_id] += 1
    for account_id in expected:
        seen = [t.id for page in _history(client, account_id) for t in page]
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
    return problems


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
    verdict = "PASS" if not problems else f"FAIL ({len(problems)} problems)"
    return (f"seed={bank.seed} {verdict} ops={len(bank.history.ops)} ok={outcomes['ok']} "
            f"failed={outcomes['failed']} unknown_resolved={unknown} applied_by_kind={dict(kinds)} "
            f"reads={bank.history.reads} quiescent_after_s={quiescent_s:.1f} faults={len(bank.history.faults)}")

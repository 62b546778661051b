"""Process faults on real clusters: nothing acknowledged is lost, nothing applies twice.

Each test gets its own cluster (they kill nodes). Schedules are fixed: which node
dies is decided by who leads, and every wait is bounded.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter

import pytest

from tidebank.client import (
    Account,
    Client,
    CreateAccountResult,
    CreateTransferResult,
    OutcomeUnknownError,
    Transfer,
    UnavailableError,
)
from tidebank.v1 import ledger_pb2

from .conftest import IdSource, leader_of, ledger_stub, running_cluster, wait_until

pytestmark = pytest.mark.integration

LEDGER = 978
SHARD = 1
ACCOUNTS = 8
OK = {CreateTransferResult.created, CreateTransferResult.exists}


class Workload:
    """Writers sending single transfers between accounts of one shard, recording every outcome."""

    def __init__(self, client: Client, ids: IdSource, accounts: list[int], seed: int):
        self.client = client
        self.ids = ids
        self.accounts = accounts
        self.rng = random.Random(seed)
        self.rng_lock = threading.Lock()
        self.acknowledged: dict[int, Transfer] = {}
        self.unknown: list[Transfer] = []
        self.rejected: list[tuple[Transfer, object]] = []
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

    def next_transfer(self) -> Transfer:
        with self.rng_lock:
            debit, credit = self.rng.sample(self.accounts, 2)
            amount = self.rng.randint(1, 1_000)
            transfer_id = self.ids.any()
        return Transfer(id=transfer_id, debit_account_id=debit, credit_account_id=credit, amount=amount,
                        ledger=LEDGER, code=1)

    def _run(self) -> None:
        while not self.stop.is_set():
            t = self.next_transfer()
            try:
                (result,) = self.client.create_transfers([t])
            except (OutcomeUnknownError, UnavailableError):
                self.unknown.append(t)
                continue
            if result.status in OK:
                self.acknowledged[t.id] = t
            else:
                self.rejected.append((t, result.status))

    def start(self, writers: int = 4) -> None:
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(writers)]
        for thread in self.threads:
            thread.start()

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)
        assert not any(thread.is_alive() for thread in self.threads), "a writer hung"
        # An unknown outcome is resolved by re-submitting the same id: applied at most once either way.
        for t in self.unknown:
            (result,) = self.client.create_transfers([t])
            assert result.status in OK, f"re-submitted transfer {t.id}: {result.status.name}"
            self.acknowledged[t.id] = t
        self.unknown.clear()


def open_accounts(client: Client, ids: IdSource) -> list[int]:
    accounts = [Account(id=ids.on_shard(SHARD), ledger=LEDGER, code=1) for _ in range(ACCOUNTS)]
    assert [r.status for r in client.create_accounts(accounts)] == [CreateAccountResult.created] * ACCOUNTS
    return [a.id for a in accounts]


def assert_ledger_matches_replay(client: Client, accounts: list[int], acknowledged: dict[int, Transfer]) -> None:
    """Every acknowledged transfer is present exactly once, and balances equal their replay."""
    ids = list(acknowledged)
    found = []
    for start in range(0, len(ids), 4000):
        found.extend(client.lookup_transfers(ids[start:start + 4000]))
    assert len(found) == len(ids) and {t.id for t in found} == set(ids)
    for t in found:
        sent = acknowledged[t.id]
        assert (t.debit_account_id, t.credit_account_id, t.amount) == (
            sent.debit_account_id, sent.credit_account_id, sent.amount)

    debits, credits, touching = Counter(), Counter(), Counter()
    for t in acknowledged.values():
        debits[t.debit_account_id] += t.amount
        credits[t.credit_account_id] += t.amount
        touching[t.debit_account_id] += 1
        touching[t.credit_account_id] += 1
    for account in client.lookup_accounts(accounts):
        assert (account.debits_posted, account.credits_posted) == (debits[account.id], credits[account.id])
        assert (account.debits_pending, account.credits_pending) == (0, 0)
    for account_id in accounts:
        history = client.get_account_transfers(account_id, limit=8189)
        assert not history.next_page_token
        assert len(history.items) == touching[account_id], "a transfer was applied more than once"


def replica_balances(cluster, address: str, accounts: list[int]) -> list[tuple[int, int]]:
    """Balances as the replica on `address` holds them (a stale read: no leader involved)."""
    channel, stub = ledger_stub(cluster, address)
    with channel:
        request = ledger_pb2.LookupAccountsRequest(consistency=ledger_pb2.READ_CONSISTENCY_STALE)
        for account_id in accounts:
            request.ids.add(hi=account_id >> 64, lo=account_id & ((1 << 64) - 1))
        response = stub.LookupAccounts(request, timeout=10)
    return [(a.debits_posted, a.credits_posted) for a in response.accounts]


def wait_replica_caught_up(cluster, node: str, accounts: list[int], expected: list[tuple[int, int]]) -> None:
    address = cluster.topology.node(node).grpc_address
    wait_until(lambda: _answers(cluster, address, accounts) == expected, 60, f"{node} to catch up")


def _answers(cluster, address: str, accounts: list[int]):
    try:
        return replica_balances(cluster, address, accounts)
    except Exception:
        return None


def test_shard_leader_killed_under_a_stream_of_transfers_loses_no_acknowledged_transfer(tmp_path):
    with running_cluster(tmp_path) as cluster, Client(cluster.endpoints, tls=cluster.client_tls(),
                                                      timeout_s=30.0) as client:
        ids = IdSource(cluster.shard_map(), start=1 << 64)
        accounts = open_accounts(client, ids)
        workload = Workload(client, ids, accounts, seed=7)
        workload.start()
        wait_until(lambda: len(workload.acknowledged) >= 200, 60, "transfers before the fault")
        victim = leader_of(cluster, SHARD)
        cluster.kill(victim)
        acknowledged_at_kill = len(workload.acknowledged)
        wait_until(lambda: len(workload.acknowledged) >= acknowledged_at_kill + 200, 60,
                   "transfers to flow again under a new leader")
        workload.finish()
        assert workload.rejected == []
        assert leader_of(cluster, SHARD) != victim
        assert_ledger_matches_replay(client, accounts, workload.acknowledged)

        cluster.start([victim])
        expected = [(a.debits_posted, a.credits_posted) for a in client.lookup_accounts(accounts)]
        wait_replica_caught_up(cluster, victim, accounts, expected)


def test_restarted_node_catches_up_from_the_log(tmp_path):
    with running_cluster(tmp_path) as cluster, Client(cluster.endpoints, tls=cluster.client_tls(),
                                                      timeout_s=30.0) as client:
        ids = IdSource(cluster.shard_map(), start=1 << 64)
        accounts = open_accounts(client, ids)
        follower = next(n.name for n in cluster.topology.nodes if n.name != leader_of(cluster, SHARD))
        cluster.kill(follower)
        workload = Workload(client, ids, accounts, seed=11)
        workload.start(writers=2)
        wait_until(lambda: len(workload.acknowledged) >= 300, 60, "transfers while the follower is down")
        workload.finish()
        cluster.start([follower])
        expected = [(a.debits_posted, a.credits_posted) for a in client.lookup_accounts(accounts)]
        wait_replica_caught_up(cluster, follower, accounts, expected)
        assert_ledger_matches_replay(client, accounts, workload.acknowledged)


COMPACTION_ENV = {"TIDEBANK_RAFT_LOG_COMPACTION_MIN_ENTRIES": "50", "TIDEBANK_RAFT_LOG_COMPACTION_MIN_TIME_S": "1"}


def test_node_restarted_after_log_compaction_catches_up_from_a_snapshot(tmp_path):
    with running_cluster(tmp_path, env=COMPACTION_ENV) as cluster, \
            Client(cluster.endpoints, tls=cluster.client_tls(), timeout_s=30.0) as client:
        ids = IdSource(cluster.shard_map(), start=1 << 64)
        accounts = open_accounts(client, ids)
        leader = leader_of(cluster, SHARD)
        follower = next(n.name for n in cluster.topology.nodes if n.name != leader)
        applied_before = _applied_index(cluster, follower)
        cluster.kill(follower)
        workload = Workload(client, ids, accounts, seed=13)
        workload.start(writers=1)  # one writer: about one Raft entry per transfer
        wait_until(lambda: len(workload.acknowledged) >= 400, 90, "entries while the follower is down")
        workload.finish()
        # The leader compacted its log past what the follower has: only a snapshot can catch it up.
        wait_until(lambda: _first_log_index_beyond(cluster, leader, applied_before), 60,
                   "the leader to compact its log")
        cluster.start([follower])
        expected = [(a.debits_posted, a.credits_posted) for a in client.lookup_accounts(accounts)]
        wait_replica_caught_up(cluster, follower, accounts, expected)
        assert_ledger_matches_replay(client, accounts, workload.acknowledged)


def _applied_index(cluster, node: str) -> int:
    status = cluster.node_status(node)
    return next(r.applied_index for r in status.replicas if r.shard_id == SHARD)


def _first_log_index_beyond(cluster, node: str, index: int) -> bool:
    status = cluster.node_status(node)
    replica = next(r for r in status.replicas if r.shard_id == SHARD)
    return replica.commit_index - replica.log_size + 1 > index + 1


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_whole_cluster_stop_and_start_keeps_every_acknowledged_transfer(tmp_path, how):
    with running_cluster(tmp_path) as cluster:
        with Client(cluster.endpoints, tls=cluster.client_tls(), timeout_s=30.0) as client:
            ids = IdSource(cluster.shard_map(), start=1 << 64)
            accounts = open_accounts(client, ids)
            workload = Workload(client, ids, accounts, seed=17)
            workload.start(writers=2)
            wait_until(lambda: len(workload.acknowledged) >= 300, 60, "transfers before the stop")
            workload.finish()
        if how == "sigkill":
            for node in cluster.topology.node_names:
                cluster.kill(node)
        else:
            cluster.stop()
        time.sleep(0.5)
        cluster.start()
        cluster.wait_ready(timeout_s=90)
        with Client(cluster.endpoints, tls=cluster.client_tls(), timeout_s=30.0) as client:
            assert_ledger_matches_replay(client, accounts, workload.acknowledged)

"""Simulated data-centre faults on a real cluster (`tidebank dc ...`), and `tidebank audit`.

One 3-DC cluster for the module; every test heals all links on the way out. Every wait
is bounded; no assertion depends on how fast anything is.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tidebank.client import Account, Client, CreateAccountResult, CreateTransferResult, Transfer, TransferFlags
from tidebank.cluster.cli import app
from tidebank.v1 import admin_pb2, admin_pb2_grpc, ledger_pb2

from .conftest import IdSource, leader_of, ledger_stub, running_cluster, wait_until

pytestmark = pytest.mark.integration

SHARDS = 3
FAILOVER_TIMEOUT_S = 30.0
CATCH_UP_TIMEOUT_S = 60.0


def cli(*args: str):
    result = CliRunner().invoke(app, list(args))
    assert "Traceback" not in result.output, result.output
    return result


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):  # conftest's `client` and `ids` fixtures use this one
    with running_cluster(tmp_path_factory.mktemp("dc-faults"), shards=SHARDS) as c:
        yield c


@pytest.fixture(autouse=True)
def heal_afterwards(cluster):
    yield
    r = cli("dc", "heal", "--dir", str(cluster.dir))
    assert r.exit_code == 0, r.output
    cluster.wait_ready(timeout_s=FAILOVER_TIMEOUT_S)


def open_accounts(client: Client, ids: IdSource, shard_id: int, ledger: int, n: int = 2) -> list[int]:
    accounts = [ids.on_shard(shard_id) for _ in range(n)]
    results = client.create_accounts([Account(id=a, ledger=ledger, code=1) for a in accounts])
    assert [r.status for r in results] == [CreateAccountResult.created] * n
    return accounts


def transfer(client: Client, ids: IdSource, debit: int, credit: int, amount: int, ledger: int, flags: int = 0):
    (result,) = client.create_transfers([Transfer(id=ids.any(), debit_account_id=debit, credit_account_id=credit,
                                                  amount=amount, ledger=ledger, code=1, flags=flags)])
    assert result.status == CreateTransferResult.created, result
    return result


def replica_of(cluster, node: str, shard_id: int) -> admin_pb2.ReplicaStatus | None:
    status = cluster.node_status(node)
    if status is None:
        return None
    return next((r for r in status.replicas if r.shard_id == shard_id), None)


def link_faults(cluster, address: str) -> admin_pb2.LinkFaults:
    with cluster.channel(address) as channel:
        return admin_pb2_grpc.AdminStub(channel).GetLinkFaults(admin_pb2.GetLinkFaultsRequest(), timeout=5)


def stale_balances(cluster, address: str, accounts: list[int]) -> list[tuple[int, int, int, int]]:
    channel, stub = ledger_stub(cluster, address)
    try:
        request = ledger_pb2.LookupAccountsRequest(consistency=ledger_pb2.READ_CONSISTENCY_STALE)
        for a in accounts:
            request.ids.add(hi=a >> 64, lo=a & ((1 << 64) - 1))
        response = stub.LookupAccounts(request, timeout=10)
        return [(m.debits_pending, m.debits_posted, m.credits_pending, m.credits_posted) for m in response.accounts]
    finally:
        channel.close()


def balances(client: Client, accounts: list[int]) -> list[tuple[int, int, int, int]]:
    return [(a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted)
            for a in client.lookup_accounts(accounts)]


# ---------------------------------------------------------------------- audit


def test_audit_of_a_quiescent_cluster_after_transfers_is_balanced(cluster, client, ids):
    ledger = 4201
    per_shard = [open_accounts(client, ids, s, ledger) for s in range(SHARDS)]
    for a, b in per_shard:
        transfer(client, ids, a, b, 100, ledger)
        transfer(client, ids, b, a, 30, ledger)
        transfer(client, ids, a, b, 7, ledger, flags=TransferFlags.PENDING)  # still pending: balanced too
    r = cli("audit", "--dir", str(cluster.dir), "-o", "json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["verdict"] == "balanced" and data["quiescent"] and not data["missing_shards"]
    assert sorted(s["shard_id"] for s in data["shards"]) == list(range(SHARDS))
    (mine,) = [row for row in data["ledgers"] if row["ledger"] == ledger]
    assert mine["debits_posted"] == mine["credits_posted"] == str(130 * SHARDS)
    assert mine["debits_pending"] == mine["credits_pending"] == str(7 * SHARDS)
    r = cli("audit", "--dir", str(cluster.dir))
    assert r.exit_code == 0 and "balanced" in r.output


# ---------------------------------------------------------------------- latency


def test_latency_between_two_dcs_is_on_every_node_and_the_cluster_still_commits(cluster, client, ids):
    r = cli("dc", "latency", "dc1", "dc2", "50", "--dir", str(cluster.dir))
    assert r.exit_code == 0, r.output
    for node in cluster.topology.nodes:
        faults = link_faults(cluster, node.grpc_address)
        assert not faults.isolated_dcs
        assert sorted((d.from_dc, d.to_dc, d.delay_ms) for d in faults.delays) == [
            ("dc1", "dc2", 50), ("dc2", "dc1", 50)], node.name
    r = cli("dc", "status", "--dir", str(cluster.dir), "-o", "json")
    assert r.exit_code == 0 and json.loads(r.stdout)["consistent"]
    ledger = 4202
    for shard_id in range(SHARDS):
        a, b = open_accounts(client, ids, shard_id, ledger)
        for _ in range(3):
            transfer(client, ids, a, b, 1, ledger)
        assert balances(client, [a, b]) == [(0, 3, 0, 0), (0, 0, 0, 3)]
    r = cli("dc", "heal", "--dir", str(cluster.dir))
    assert r.exit_code == 0
    assert all(not link_faults(cluster, n.grpc_address).delays for n in cluster.topology.nodes)


# ---------------------------------------------------------------------- partition and heal


def test_partitioning_the_leaders_dc_fails_over_and_heal_catches_up(cluster, client, ids):
    shard_id = 0  # the shard whose leader's DC is cut off
    ledger = 4203
    pairs = {s: open_accounts(client, ids, s, ledger) for s in range(SHARDS)}
    for a, b in pairs.values():
        transfer(client, ids, a, b, 5, ledger)
    old_leader = leader_of(cluster, shard_id)
    isolated_dc = cluster.topology.node(old_leader).dc
    isolated = [n.name for n in cluster.topology.nodes if n.dc == isolated_dc]
    others = [n.name for n in cluster.topology.nodes if n.dc != isolated_dc]

    r = cli("dc", "partition", isolated_dc, "--dir", str(cluster.dir))
    assert r.exit_code == 0, r.output
    assert all(list(link_faults(cluster, n.grpc_address).isolated_dcs) == [isolated_dc] for n in cluster.topology.nodes)

    def leader_outside(shard: int):
        for name in others:
            rep = replica_of(cluster, name, shard)
            if rep is not None and rep.role == "leader" and rep.has_quorum:
                return name
        return None

    leader = wait_until(lambda: leader_outside(shard_id), FAILOVER_TIMEOUT_S,
                        f"a leader of shard {shard_id} outside {isolated_dc}")
    assert leader != old_leader and cluster.topology.node(leader).dc != isolated_dc
    isolated_replicas = [(n, s) for n in isolated for s in range(SHARDS) if replica_of(cluster, n, s) is not None]
    wait_until(lambda: all(replica_of(cluster, n, s).role != "leader" for n, s in isolated_replicas),
               FAILOVER_TIMEOUT_S, "the isolated replicas to stop leading")
    frozen = {(n, s): replica_of(cluster, n, s).applied_index for n, s in isolated_replicas}

    for a, b in pairs.values():  # clients still reach every node; the writes land on leaders elsewhere
        for _ in range(3):
            transfer(client, ids, a, b, 1, ledger)
    expected = [(0, 8, 0, 0), (0, 0, 0, 8)]
    assert all(balances(client, pair) == expected for pair in pairs.values())
    leaders = {s: wait_until(lambda s=s: leader_outside(s), FAILOVER_TIMEOUT_S, f"shard {s}'s leader")
               for s in range(SHARDS)}
    commit = {s: replica_of(cluster, leaders[s], s).commit_index for s in range(SHARDS)}
    for (n, s), applied in frozen.items():
        assert replica_of(cluster, n, s).applied_index == applied, (n, s)  # nothing reaches it
        assert commit[s] > applied
        assert stale_balances(cluster, cluster.topology.node(n).grpc_address, pairs[s]) != expected

    r = cli("dc", "heal", "--dir", str(cluster.dir))
    assert r.exit_code == 0, r.output
    for n, s in isolated_replicas:
        wait_until(lambda n=n, s=s: replica_of(cluster, n, s).applied_index >= commit[s], CATCH_UP_TIMEOUT_S,
                   f"{n} to catch up on shard {s}")
        address = cluster.topology.node(n).grpc_address
        wait_until(lambda address=address, s=s:
                   stale_balances(cluster, address, pairs[s]) == balances(client, pairs[s]),
                   CATCH_UP_TIMEOUT_S, f"stale reads of shard {s} on {n} to equal the leader's")
    r = cli("dc", "status", "--dir", str(cluster.dir), "-o", "json")
    assert r.exit_code == 0
    assert all(node["faults"] == {"isolated_dcs": [], "delays": []} for node in json.loads(r.stdout)["nodes"])

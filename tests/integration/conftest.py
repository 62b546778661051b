"""Real local clusters: separate node processes on loopback, free ports, always stopped."""

from __future__ import annotations

import contextlib
import os
import time

import grpc
import pytest

from tidebank.client import Client
from tidebank.cluster.launcher import LocalCluster
from tidebank.common.keys import slot_of
from tidebank.v1 import admin_pb2, ledger_pb2_grpc

pytestmark = pytest.mark.integration

READY_TIMEOUT_S = 90.0


@contextlib.contextmanager
def running_cluster(directory, *, shards: int = 4, env: dict[str, str] | None = None, plaintext: bool = False,
                    quotas=None):
    """Start a 3-DC cluster; stop every process on the way out, also when the test fails."""
    saved = {key: os.environ.get(key) for key in (env or {})}
    os.environ.update(env or {})
    cluster = LocalCluster.create(directory, dcs=3, nodes_per_dc=1, shards=shards, plaintext=plaintext,
                                  quotas=quotas)
    try:
        cluster.start()
        cluster.wait_ready(timeout_s=READY_TIMEOUT_S)
        yield cluster
    finally:
        cluster.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with running_cluster(tmp_path_factory.mktemp("cluster")) as c:
        yield c


@pytest.fixture(scope="module")
def client(cluster):
    with Client(cluster.endpoints, tls=cluster.client_tls(), timeout_s=30.0) as c:
        yield c


def shard_of(shard_map: admin_pb2.ShardMap, key: int) -> int:
    slot = slot_of(key, shard_map.slot_count)
    for shard in shard_map.shards:
        if any(r.start <= slot < r.end for r in shard.slots):
            return shard.shard_id
    raise AssertionError(f"slot {slot} has no shard")


class IdSource:
    """Fresh ids, optionally constrained to land on one shard."""

    def __init__(self, shard_map: admin_pb2.ShardMap, start: int):
        self.shard_map = shard_map
        self.next = start

    def any(self) -> int:
        self.next += 1
        return self.next

    def on_shard(self, shard_id: int) -> int:
        while True:
            self.next += 1
            if shard_of(self.shard_map, self.next) == shard_id:
                return self.next


@pytest.fixture
def ids(cluster):
    # Distinct per test (time-based), so module-scoped clusters can be shared.
    return IdSource(cluster.shard_map(), start=time.time_ns() << 20)


def leader_of(cluster: LocalCluster, shard_id: int) -> str:
    """Name of the node that leads the shard, once all reachable replicas agree."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        leaders = {row.leader_node for row in cluster.cluster_status()
                   if row.shard == shard_id and row.reachable and row.leader_node}
        roles = [row.node for row in cluster.cluster_status()
                 if row.shard == shard_id and row.role == "leader"]
        if len(leaders) == 1 and len(roles) == 1 and roles[0] in leaders:
            return roles[0]
        time.sleep(0.1)
    raise AssertionError(f"shard {shard_id} has no agreed leader")


def ledger_stub(cluster: LocalCluster, address: str) -> tuple[grpc.Channel, ledger_pb2_grpc.LedgerStub]:
    channel = cluster.channel(address)
    return channel, ledger_pb2_grpc.LedgerStub(channel)


def wait_until(predicate, timeout_s: float, what: str, interval_s: float = 0.1):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)

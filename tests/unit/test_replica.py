"""ShardReplica with real pysyncobj and real LMDB: three nodes' Raft loops in one process on loopback."""

from __future__ import annotations

import contextlib
import pathlib
import socket
import threading
import time

import pytest
from pysyncobj.config import FAIL_REASON

from tidebank.node.links import LinkFaults, LinkPolicy
from tidebank.node.raft import pysyncobj_patches as patches
from tidebank.node.raft.loop import RaftHost
from tidebank.node.raft.placement import PlacementTuning
from tidebank.node.raft.replica import (
    JOINING,
    LEAVING,
    VOTER,
    ApplyFailed,
    MembershipBusyError,
    PartnerAnsweringError,
    RaftTuning,
    ShardReplica,
)
from tidebank.node.raft.snapshots import DumpError, SnapshotManager
from tidebank.node.raft.transport import NodeTransport, normalize_append_entries

SECRET = "unit-test-secret"
FAST = RaftTuning(log_compaction_min_time=3600)


class CountingKV:
    """A tiny state machine: each payload increments a per-payload counter."""

    def __init__(self, apply_delay_s: float = 0.0):
        self.db = None
        self.opens = 0
        self.apply_delay_s = apply_delay_s  # a slow state machine (a big entry's apply), to test pacing

    def open_fn(self, env):
        self.db = env.open_db(b"kv")
        self.opens += 1

    def apply(self, txn, payload: bytes):
        if payload.startswith(b"boom"):
            txn.put(b"half-written", b"x", db=self.db)  # must be rolled back
            raise ValueError("deterministic bug")
        if self.apply_delay_s:
            time.sleep(self.apply_delay_s)
        name, _, blob = payload.partition(b"=")  # "name=blob": the blob is stored too (it fills the map)
        key = b"count:" + name
        n = int(txn.get(key, db=self.db) or 0) + 1
        txn.put(key, b"%d" % n, db=self.db)
        if blob:
            txn.put(b"blob:" + name, blob, db=self.db)
        return n


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_for(cond, timeout=10.0, interval=0.01, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


class Cluster:
    """Three nodes in one process, each with its own RaftHost (loop thread and Raft port) holding one replica of
    shard 7. Stopping a replica closes its host too, as a node process exit would."""

    def __init__(self, root: pathlib.Path, tuning: RaftTuning = FAST, size: int = 3,
                 map_sizes: dict[int, int] | None = None, preferred: str | None = None,
                 placement: PlacementTuning | None = None):
        self.root = root
        self.preferred = preferred  # the shard's preferred leader (None: no leader placement)
        self.placement = placement
        self.tuning = tuning
        self.names = [f"n{i}" for i in range(size)]
        self.endpoints = {name: ("127.0.0.1", port) for name, port in zip(self.names, _free_ports(size), strict=True)}
        self.map_sizes = map_sizes or {}
        self.hosts: list[RaftHost | None] = [None] * size
        self.replicas: list[ShardReplica | None] = [None] * size
        self.kvs: list[CountingKV | None] = [None] * size
        self.members: dict[int, list[str]] = {}  # replica i's initial members, when not every name
        self.memberships: dict[int, str] = {}  # replica i's part in a replica move, when not a voter
        self.apply_delay_s: dict[int, float] = {}  # replica i's state machine takes this long per entry
        self.links: dict[int, LinkPolicy] = {}  # replica i's simulated link faults (each node is its own DC)

    def start(self, i: int) -> ShardReplica:
        assert self.replicas[i] is None
        kv = CountingKV(self.apply_delay_s.get(i, 0.0))
        name = self.names[i]
        host = RaftHost(name, self.endpoints[name], self.endpoints, SECRET, links=self.links.get(i))
        host.start()
        r = ShardReplica(
            shard_id=7,
            host=host,
            members=self.members.get(i, self.names),
            data_dir=self.root / f"r{i}",
            apply_fn=kv.apply,
            open_fn=kv.open_fn,
            raft=self.tuning,
            map_size=self.map_sizes.get(i),
            preferred_leader=self.preferred,
            placement=self.placement,
            membership=self.memberships.get(i, VOTER),
        )
        self.hosts[i], self.replicas[i], self.kvs[i] = host, r, kv
        return r

    def start_all(self):
        for i in range(len(self.names)):
            self.start(i)

    def stop(self, i: int):
        r, host = self.replicas[i], self.hosts[i]
        self.replicas[i] = self.hosts[i] = None
        if r is not None:
            r.close()
        if host is not None:
            host.close()

    def close(self):
        for i in range(len(self.names)):
            with contextlib.suppress(Exception):
                self.stop(i)

    def live(self) -> list[ShardReplica]:
        return [r for r in self.replicas if r is not None]

    def leader(self, timeout=10.0) -> ShardReplica:
        found = []

        def one_leader():
            found[:] = [r for r in self.live() if r.is_leader()]
            return len(found) == 1

        wait_for(one_leader, timeout, what="a leader")
        return found[0]

    def contents(self, i: int) -> dict:
        r, kv = self.replicas[i], self.kvs[i]
        with r.read_txn() as txn:
            return dict(txn.cursor(db=kv.db).iternext())

    def wait_converged(self, timeout=15.0, among: list[int] | None = None):
        def same():
            live = [i for i, r in enumerate(self.replicas) if r is not None and (among is None or i in among)]
            states = [self.replicas[i].status() for i in live]
            if len({s["applied_index"] for s in states}) != 1:
                return False
            if len({s["commit_index"] for s in states}) != 1:
                return False
            first = self.contents(live[0])
            return all(self.contents(i) == first for i in live[1:])

        wait_for(same, timeout, interval=0.05, what="replicas to converge")


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.close()


def submit_wait(replica: ShardReplica, payload: bytes, timeout=10.0):
    done = threading.Event()
    out = []

    def cb(result, err):
        out.append((result, err))
        done.set()

    replica.submit(payload, cb)
    assert done.wait(timeout), f"no callback for {payload!r}"
    return out[0]


def submit_many(replica: ShardReplica, payloads, timeout=20.0):
    results: dict[bytes, tuple] = {}
    lock = threading.Lock()
    done = threading.Event()
    total = len(payloads)

    def make_cb(p):
        def cb(result, err):
            with lock:
                results[p] = (result, err)
                if len(results) == total:
                    done.set()

        return cb

    for p in payloads:
        replica.submit(p, make_cb(p))
    assert done.wait(timeout), f"{len(results)}/{total} callbacks"
    return results


def counts(contents: dict) -> dict:
    return {k: int(v) for k, v in contents.items() if k.startswith(b"count:")}


# ---------------------------------------------------------------------- tests


def test_three_replicas_elect_and_apply_everywhere(cluster, monkeypatch):
    # sync-before-send: nothing leaves a node while a journal of it holds unsynced entries (acks, votes, entries)
    violations = []
    real_flush = NodeTransport.flush

    def checking_flush(self):
        if self._pending:
            for r in cluster.live():
                journal = r._journal
                if r.host.transport is self and (journal.dirty or journal.durable_index < journal.last_index()):
                    violations.append(("send", r.host.name, journal.durable_index, journal.last_index()))
        return real_flush(self)

    monkeypatch.setattr(NodeTransport, "flush", checking_flush)
    # sync-before-count: a leader's commit index never exceeds what its journal has synced
    real_stats = ShardReplica._record_tick_stats

    def checking_stats(self):
        if self._isLeader() and self.raftCommitIndex > self._journal.durable_index:
            violations.append(("commit", self.raftCommitIndex, self._journal.durable_index))
        real_stats(self)

    monkeypatch.setattr(ShardReplica, "_record_tick_stats", checking_stats)

    cluster.start_all()
    leader = cluster.leader()
    assert leader.leader_node() == leader.host.name
    result, err = submit_wait(leader, b"first")
    assert (result, err) == (1, FAIL_REASON.SUCCESS)
    results = submit_many(leader, [b"k%d" % i for i in range(300)])
    assert all(v == (1, FAIL_REASON.SUCCESS) for v in results.values())
    cluster.wait_converged()
    for i in range(3):
        c = counts(cluster.contents(i))
        assert len(c) == 301 and set(c.values()) == {1}
    followers = [r for r in cluster.live() if r is not leader]
    assert all(f.leader_node() == leader.host.name and not f.is_leader() for f in followers)
    st = leader.status()
    assert st["role"] == "leader" and st["has_quorum"] and st["journal_sync_count"] > 0
    assert st["journal_sync_count"] < 301  # group commit
    assert {f.status()["role"] for f in followers} == {"follower"}
    assert violations == []


def test_submit_through_a_follower_is_forwarded(cluster):
    cluster.start_all()
    leader = cluster.leader()
    follower = next(r for r in cluster.live() if r is not leader)
    assert submit_wait(follower, b"via-follower") == (1, FAIL_REASON.SUCCESS)


def test_restart_does_not_reapply(cluster):
    cluster.start_all()
    leader = cluster.leader()
    submit_many(leader, [b"a%d" % i for i in range(100)])
    cluster.wait_converged()
    victim = next(i for i, r in enumerate(cluster.replicas) if r is not leader)
    before = cluster.contents(victim)
    applied_before = cluster.replicas[victim].status()["applied_index"]
    cluster.stop(victim)
    submit_many(leader, [b"b%d" % i for i in range(50)])  # it misses these
    cluster.start(victim)  # replays its journal from index 2: everything is ALREADY_APPLIED
    cluster.wait_converged()
    after = counts(cluster.contents(victim))
    assert len(after) == 150 and set(after.values()) == {1}
    assert counts(before).items() <= after.items()
    assert cluster.replicas[victim].status()["applied_index"] > applied_before


def test_exception_in_apply_does_not_wedge(cluster):
    cluster.start_all()
    leader = cluster.leader()
    result, err = submit_wait(leader, b"boom-1")
    assert err == FAIL_REASON.SUCCESS
    assert isinstance(result, ApplyFailed) and "deterministic bug" in result.reason
    assert submit_wait(leader, b"after-boom") == (1, FAIL_REASON.SUCCESS)
    cluster.wait_converged()
    for i in range(3):
        kv = cluster.contents(i)
        assert b"half-written" not in kv  # the failed txn was rolled back everywhere
        assert counts(kv) == {b"count:after-boom": 1}
        assert cluster.replicas[i].status()["apply_failures"] == 1


def _lag_behind_compaction(cluster: Cluster, batches: int = 3) -> tuple[ShardReplica, int]:
    """Start all, stop one replica, let the others compact their log past it: it must catch up by snapshot."""
    cluster.start_all()
    leader = cluster.leader()
    submit_many(leader, [b"x%d" % i for i in range(30)])
    cluster.wait_converged()
    lagging = next(i for i, r in enumerate(cluster.replicas) if r is not leader)
    cluster.stop(lagging)
    for batch in range(batches):
        submit_many(leader, [b"y%d-%d" % (batch, i) for i in range(40)])
    wait_for(lambda: leader.status()["log_size"] < 100, what="log compaction")
    return leader, lagging


def test_lagging_replica_catches_up_from_snapshot_and_restart_keeps_state(tmp_path):
    tuning = RaftTuning(log_compaction_min_entries=20, log_compaction_min_time=3600)
    cluster = Cluster(tmp_path, tuning)
    try:
        leader, lagging = _lag_behind_compaction(cluster, batches=4)  # several compactions while it is down
        wait_for(lambda: leader.status()["snapshots_written"] >= 2, what="leader snapshots")

        cluster.start(lagging)
        cluster.wait_converged(timeout=20)
        st = cluster.replicas[lagging].status()
        assert st["snapshots_installed"] >= 1
        assert cluster.kvs[lagging].opens >= 2  # open_fn ran again on the installed env
        c = counts(cluster.contents(lagging))
        assert len(c) == 190 and set(c.values()) == {1}
        assert submit_wait(leader, b"after-catch-up") == (1, FAIL_REASON.SUCCESS)
        cluster.wait_converged()

        # restart every replica after compaction: state comes from LMDB + dump + journal
        expected = cluster.contents(0)
        for i in range(3):
            cluster.stop(i)
        cluster.start_all()
        new_leader = cluster.leader(timeout=15)
        assert submit_wait(new_leader, b"after-restart") == (1, FAIL_REASON.SUCCESS)
        cluster.wait_converged()
        for i in range(3):
            c = counts(cluster.contents(i))
            assert set(c.values()) == {1}
            assert len(c) == len(counts(expected)) + 1
    finally:
        cluster.close()


def test_snapshot_from_the_leader_is_prepared_off_the_loop_thread(tmp_path, monkeypatch):
    tuning = RaftTuning(log_compaction_min_entries=20, log_compaction_min_time=3600)
    cluster = Cluster(tmp_path, tuning)
    preparing = threading.Event()
    release = threading.Event()
    real_prepare = SnapshotManager.prepare_received

    def slow_prepare(self, path):
        preparing.set()
        assert release.wait(20), "the test never let the install go on"
        return real_prepare(self, path)

    monkeypatch.setattr(SnapshotManager, "prepare_received", slow_prepare)
    try:
        leader, lagging = _lag_behind_compaction(cluster)
        cluster.start(lagging)
        wait_for(preparing.is_set, timeout=15, what="the dump to arrive")
        replica, host = cluster.replicas[lagging], cluster.hosts[lagging]
        assert replica.installing_snapshot
        turns = host.turns
        assert submit_wait(leader, b"while-installing") == (1, FAIL_REASON.SUCCESS)  # the others go on
        time.sleep(0.5)
        assert host.turns > turns + 5  # the node's loop is not held up by the install
        assert replica.status()["installing_snapshot"] and replica.status()["snapshots_installed"] == 0
        release.set()
        cluster.wait_converged(timeout=20)
        assert not replica.installing_snapshot
        assert replica.status()["snapshots_installed"] >= 1
        c = counts(cluster.contents(lagging))
        assert len(c) == 30 + 120 + 1 and set(c.values()) == {1}
    finally:
        release.set()
        cluster.close()


def test_a_dump_that_cannot_be_prepared_is_dropped_and_sent_again(tmp_path, monkeypatch):
    tuning = RaftTuning(log_compaction_min_entries=20, log_compaction_min_time=3600)
    cluster = Cluster(tmp_path, tuning)
    attempts = []
    real_prepare = SnapshotManager.prepare_received

    def failing_once(self, path):
        attempts.append(path)
        if len(attempts) == 1:
            raise DumpError("disk trouble, once")
        return real_prepare(self, path)

    monkeypatch.setattr(SnapshotManager, "prepare_received", failing_once)
    try:
        leader, lagging = _lag_behind_compaction(cluster)
        cluster.start(lagging)
        cluster.wait_converged(timeout=30)
        assert len(attempts) >= 2
        replica = cluster.replicas[lagging]
        assert replica.status()["snapshots_installed"] >= 1
        c = counts(cluster.contents(lagging))
        assert len(c) == 30 + 120 and set(c.values()) == {1}
    finally:
        cluster.close()


def test_isolated_leader_stops_claiming_leadership(cluster):
    cluster.start_all()
    leader = cluster.leader()
    assert leader.is_leader()
    for i, r in enumerate(cluster.replicas):
        if r is not leader:
            cluster.stop(i)
    wait_for(lambda: not leader.is_leader(), timeout=3 * FAST.leader_fallback_timeout, what="step down")
    assert leader.status()["is_leader"] is False


def test_a_node_requires_a_cluster_secret():
    with pytest.raises(ValueError, match="secret"):
        RaftHost("n0", ("127.0.0.1", 1), {"n0": ("127.0.0.1", 1)}, "")


def test_single_member_group_applies_and_restarts(tmp_path):
    (port,) = _free_ports(1)
    endpoints = {"solo": ("127.0.0.1", port)}
    kv = CountingKV()

    def make():
        host = RaftHost("solo", endpoints["solo"], endpoints, SECRET)
        host.start()
        replica = ShardReplica(shard_id=1, host=host, members=["solo"], data_dir=tmp_path, apply_fn=kv.apply,
                               open_fn=kv.open_fn, raft=FAST)
        return host, replica

    host, r = make()
    try:
        wait_for(r.is_leader, what="single leader")
        assert submit_wait(r, b"solo") == (1, FAIL_REASON.SUCCESS)
        # the leader's no-op, appended and counted in the same tick, was synced on add
        assert r._journal.durable_index >= r.raftCommitIndex
    finally:
        r.close()
        host.close()
    host, r = make()
    try:
        wait_for(r.is_leader, what="single leader after restart")
        assert submit_wait(r, b"solo") == (2, FAIL_REASON.SUCCESS)
        with r.read_txn() as txn:
            assert txn.get(b"count:solo", db=kv.db) == b"2"
    finally:
        r.close()
        host.close()


# ---------------------------------------------------------------------- storage errors stop the apply loop


def test_a_replica_whose_lmdb_fills_up_stops_applying_while_the_others_agree(tmp_path):
    """One replica's LMDB map is tiny: once it is full, that replica records why and applies nothing more, the
    others go on and agree; it never leads or campaigns; after the cause is fixed a restart catches it up."""
    cluster = Cluster(tmp_path, map_sizes={2: 256 << 10})
    try:
        cluster.start_all()
        leader = cluster.leader()
        if leader is cluster.replicas[2]:  # let a healthy replica lead from the start
            cluster.stop(2)
            leader = cluster.leader()
            cluster.start(2)
        payloads = [b"p%04d=" % i + b"x" * 2000 for i in range(300)]  # ~600 kB: more than the small map holds
        submit_many(leader, payloads, timeout=60)
        small = cluster.replicas[2]
        wait_for(lambda: small.apply_error is not None, what="the small replica to stop applying")
        assert "MapFull" in small.apply_error
        cluster.wait_converged(among=[0, 1])
        healthy = counts(cluster.contents(0))
        assert len(healthy) == 300 and set(healthy.values()) == {1}  # "more" comes later
        # what it did apply is a prefix of what the others applied: nothing different, nothing skipped
        stalled = counts(cluster.contents(2))
        assert stalled.items() <= healthy.items() and len(stalled) < 300
        stalled_applied = small.applied_index()
        assert small.status()["apply_error"] == small.apply_error
        # it keeps journaling (the shard keeps its quorum) but applies nothing more
        assert submit_wait(leader, b"more") == (1, FAIL_REASON.SUCCESS)
        cluster.wait_converged(among=[0, 1])
        assert small.applied_index() == stalled_applied
        wait_for(lambda: small._journal.last_index() >= leader._journal.last_index(), what="journal catch-up")
        # it never leads: stop the leader; the other healthy replica is elected, with the stalled one's vote
        term_before = max(r.status()["term"] for r in cluster.live())
        leader_index = cluster.replicas.index(leader)
        cluster.stop(leader_index)
        new_leader = cluster.leader(timeout=15)
        assert new_leader is not small and not small.is_leader()
        time.sleep(3 * FAST.raft_max_timeout)  # it would have campaigned by now
        assert small.status()["role"] == "follower" and not small.is_leader()
        assert max(r.status()["term"] for r in cluster.live()) <= term_before + 2
        assert submit_wait(new_leader, b"after") == (1, FAIL_REASON.SUCCESS)
        # the cause fixed (a larger map), the node restarted: it replays its journal and agrees again
        cluster.stop(2)
        cluster.map_sizes.pop(2)
        cluster.start(2)
        cluster.start(leader_index)
        cluster.wait_converged(timeout=30)
        assert cluster.replicas[2].apply_error is None
        assert counts(cluster.contents(2)) == counts(cluster.contents(leader_index))
    finally:
        cluster.close()


def test_a_leader_that_stops_applying_steps_down_and_never_campaigns_again(tmp_path):
    cluster = Cluster(tmp_path, size=1)
    try:
        cluster.start_all()
        r = cluster.leader()
        r._stop_applying(99, OSError(28, "No space left on device"))
        wait_for(lambda: r.status()["role"] == "follower", what="it steps down")
        time.sleep(3 * FAST.raft_max_timeout)  # alone, it would have elected itself again by now
        assert r.status()["role"] == "follower" and not r.is_leader()
        assert "No space left" in r.status()["apply_error"]
    finally:
        cluster.close()


# ---------------------------------------------------------------------- AppendEntries rewrite


def _log(terms: dict[int, int]):
    return terms.get, max(terms)


def _ae(prev, prev_term, entries, commit=0):
    return {
        "type": "append_entries",
        "term": 5,
        "commit_index": commit,
        "prevLogIdx": prev,
        "prevLogTerm": prev_term,
        "entries": [(b"c%d" % i, i, t) for i, t in entries],
    }


def test_normalize_passes_through_when_nothing_can_be_truncated():
    term_at, last = _log({1: 1, 2: 1, 3: 1})
    msg = _ae(3, 1, [(4, 2), (5, 2)])
    assert normalize_append_entries(msg, term_at, last) == (msg, None)
    mismatch = _ae(3, 9, [(4, 2)])  # prev does not match: pysyncobj resets
    assert normalize_append_entries(mismatch, term_at, last) == (mismatch, None)
    chunk = dict(msg, transmission="start")
    assert normalize_append_entries(chunk, term_at, last) == (chunk, None)


def test_normalize_keeps_acknowledged_entries_after_a_shorter_retransmit():
    # follower holds 1..10; leader re-sends 4..6 (its nextIndex went back after an old ack)
    term_at, last = _log({i: 1 for i in range(1, 11)})
    msg = _ae(3, 1, [(4, 1), (5, 1), (6, 1)], commit=9)
    new, ack = normalize_append_entries(msg, term_at, last)
    assert new["entries"] == [] and new["prevLogIdx"] == 10 and new["prevLogTerm"] == 1
    assert new["commit_index"] == 6  # only what this message verified
    assert ack == 7
    heartbeat = _ae(3, 1, [], commit=2)
    new, ack = normalize_append_entries(heartbeat, term_at, last)
    assert new["prevLogIdx"] == 10 and new["entries"] == [] and ack == 4 and new["commit_index"] == 2


def test_normalize_skips_matching_prefix_and_truncates_only_conflicts():
    term_at, last = _log({1: 1, 2: 1, 3: 1, 4: 1, 5: 1, 6: 1})
    msg = _ae(2, 1, [(3, 1), (4, 1), (5, 3), (6, 3), (7, 3)])
    new, ack = normalize_append_entries(msg, term_at, last)
    assert ack is None
    assert new["prevLogIdx"] == 4 and new["prevLogTerm"] == 1
    assert [e[1:] for e in new["entries"]] == [(5, 3), (6, 3), (7, 3)]
    exact = _ae(2, 1, [(3, 1), (4, 1), (5, 1), (6, 1)])
    new, ack = normalize_append_entries(exact, term_at, last)
    assert new["entries"] == [] and new["prevLogIdx"] == 6 and ack is None
    first_conflicts = _ae(2, 1, [(3, 2)])
    assert normalize_append_entries(first_conflicts, term_at, last) == (first_conflicts, None)


# ---------------------------------------------------------------------- reads without a log entry


def test_a_read_index_needs_a_majority_and_writes_no_log_entry(cluster):
    from tidebank.node.raft.replica import ReadNotLeaderError

    cluster.start_all()
    leader = cluster.leader()
    assert submit_wait(leader, b"before-read") == (1, FAIL_REASON.SUCCESS)
    log_before = leader._journal.last_index()
    index = leader.read_index().result(5)
    assert index >= leader.raftCommitIndex - 1 and leader.raftLastApplied >= index
    assert leader._journal.last_index() == log_before  # no entry was written for the read
    # without a majority the read is never confirmed: it fails once the leader steps down
    for i, r in enumerate(cluster.replicas):
        if r is not leader:
            cluster.stop(i)
    pending = leader.read_index()
    wait_for(pending.done, 3 * FAST.leader_fallback_timeout, what="the read to end")
    assert isinstance(pending.exception(), ReadNotLeaderError)


def test_a_follower_refuses_read_index(cluster):
    cluster.start_all()
    leader = cluster.leader()
    follower = next(r for r in cluster.live() if r is not leader)
    from tidebank.node.raft.replica import ReadNotLeaderError
    with pytest.raises(ReadNotLeaderError):
        follower.read_index().result(1)


def test_a_replica_joins_catches_up_and_another_leaves_without_losing_an_entry(tmp_path):
    c = Cluster(tmp_path, size=4)
    try:
        for i in range(3):
            c.members[i] = c.names[:3]
        c.memberships[3] = JOINING
        for i in range(3):
            c.start(i)
        leader = c.leader()
        submit_many(leader, [b"a%d" % n for n in range(50)])
        joining = c.start(3)
        time.sleep(1.5)  # several election timeouts: a replica nobody added never campaigns
        assert joining.status()["role"] == "follower" and leader.is_leader()
        assert leader.change_membership("add", "n3").result(timeout=10) is True
        assert leader.change_membership("add", "n3").result(timeout=10) is False  # already so: a retry
        c.wait_converged(among=[0, 1, 2, 3])
        assert leader.members_now() == ("n0", "n1", "n2", "n3") and joining._self_member is True
        leaving = next(r for r in c.live()[:3] if r is not leader)
        leaving.membership = LEAVING
        term = leader.raftCurrentTerm
        assert leader.change_membership("rem", leaving.host.name).result(timeout=10) is True
        assert leader.members_now() == tuple(sorted({"n0", "n1", "n2", "n3"} - {leaving.host.name}))
        time.sleep(2.0)  # the removed replica hears no leader and campaigns: nobody may listen to it
        assert leader.is_leader() and leader.raftCurrentTerm == term
        submit_many(leader, [b"b%d" % n for n in range(50)])
        stayed = [i for i, r in enumerate(c.replicas) if r is not None and r is not leaving]
        c.wait_converged(among=stayed)
        assert counts(c.contents(3)) == counts(c.contents(stayed[0]))
        assert sum(1 for key in c.contents(3) if key.startswith(b"count:b")) == 50
    finally:
        c.close()


def test_the_leader_cannot_remove_itself_and_nothing_changes(cluster):
    cluster.start_all()
    leader = cluster.leader()
    with pytest.raises(MembershipBusyError, match="cannot remove itself"):
        leader.change_membership("rem", leader.host.name).result(timeout=10)
    assert leader.members_now() == ("n0", "n1", "n2")


def test_an_eviction_takes_out_only_a_partner_that_stopped_answering(cluster):
    cluster.start_all()
    leader = cluster.leader()
    names = [r.host.name for r in cluster.live() if r is not leader]
    with pytest.raises(PartnerAnsweringError, match="not evicted"):
        leader.change_membership("rem", names[0], silent_for_s=1.0).result(timeout=10)
    assert leader.members_now() == ("n0", "n1", "n2")
    cluster.stop(cluster.names.index(names[0]))
    time.sleep(1.5)  # silent for longer than silent_for_s
    assert leader.change_membership("rem", names[0], silent_for_s=1.0).result(timeout=10) is True
    assert leader.members_now() == tuple(sorted({"n0", "n1", "n2"} - {names[0]}))
    assert submit_wait(leader, b"with-two") == (1, FAIL_REASON.SUCCESS)  # the two live ones are the group now


def test_a_replica_catching_up_on_many_entries_does_not_hold_up_its_nodes_loop(tmp_path):
    cluster = Cluster(tmp_path)
    try:
        cluster.start_all()
        leader = cluster.leader()
        lagging = next(i for i, r in enumerate(cluster.replicas) if r is not leader)
        cluster.stop(lagging)
        submit_many(leader, [b"z%d" % i for i in range(300)])
        cluster.apply_delay_s[lagging] = 0.005  # 300 entries: 1.5 s of applying to catch up
        replica = cluster.start(lagging)
        host = cluster.hosts[lagging]
        longest_gap, last_turns, last_change = 0.0, host.turns, time.monotonic()
        deadline = time.monotonic() + 20
        while replica.status()["applied_index"] < leader.status()["commit_index"]:
            assert time.monotonic() < deadline, "the replica did not catch up"
            time.sleep(0.01)
            now = time.monotonic()
            if host.turns != last_turns:
                last_turns, last_change = host.turns, now
            longest_gap = max(longest_gap, now - last_change)
        assert longest_gap < 0.4, f"the node's loop stood still for {longest_gap:.2f} s while applying"
        assert replica.status()["role"] == "follower" and leader.is_leader()
        cluster.wait_converged()
    finally:
        cluster.close()


def test_a_replica_whose_election_timer_runs_out_does_not_depose_a_leader_the_others_hear(cluster):
    cluster.start_all()
    leader = cluster.leader()
    term = leader.raftCurrentTerm
    follower_index = next(i for i, r in enumerate(cluster.replicas) if r is not leader)
    follower, host = cluster.replicas[follower_index], cluster.hosts[follower_index]
    others = [r for r in cluster.live() if r is not follower]
    refused_before = sum(r.status()["pre_votes_refused"] for r in others)
    def missed_heartbeats():
        follower.leader_heard_at = float("-inf")
        patches.hold_election(follower, 0.0)

    for _ in range(5):  # as if it had missed the leader's heartbeats (a busy node, a new replica catching up)
        host.call(missed_heartbeats)
        time.sleep(0.3)
    assert leader.is_leader() and leader.raftCurrentTerm == term and follower.raftCurrentTerm == term
    assert sum(r.status()["pre_votes_refused"] for r in others) > refused_before  # it asked, they said no
    assert submit_wait(leader, b"still-leading") == (1, FAIL_REASON.SUCCESS)


def test_the_partners_of_a_dead_leader_elect_another_after_a_pre_vote(cluster):
    cluster.start_all()
    leader = cluster.leader()
    term = leader.raftCurrentTerm
    cluster.stop(cluster.replicas.index(leader))
    new_leader = cluster.leader(timeout=10)
    assert new_leader is not leader and new_leader.raftCurrentTerm > term
    assert submit_wait(new_leader, b"after-the-leader-died") == (1, FAIL_REASON.SUCCESS)



def test_a_settled_leader_serves_reads_under_a_lease_without_a_heartbeat_round(cluster):
    cluster.start_all()
    leader = cluster.leader()
    time.sleep(2 * FAST.raft_max_timeout)  # a new leader takes no lease at first
    before = leader.status()["lease_reads"]
    for _ in range(20):
        assert leader.read_index().result(timeout=2) >= 1
    assert leader.status()["lease_reads"] >= before + 15  # nearly all: a lease lasts 0.2 s, renewed per 50 ms


def test_a_cut_off_leader_serves_no_read_once_the_others_can_have_a_new_leader(tmp_path):
    faults = LinkFaults()
    cluster = Cluster(tmp_path)
    for i, name in enumerate(cluster.names):
        cluster.links[i] = LinkPolicy(name, lambda node: node, faults)  # each node its own DC
    try:
        cluster.start_all()
        old = cluster.leader()
        time.sleep(2 * FAST.raft_max_timeout)
        assert old.read_index().result(timeout=2) >= 1 and old.status()["lease_reads"] > 0
        served: list[float] = []
        stop = threading.Event()

        def read_at_the_old_leader():
            while not stop.is_set():
                try:
                    old.read_index().result(timeout=0.05)
                    served.append(time.monotonic())
                except Exception:  # noqa: BLE001 - not leader, or no round confirmed in time
                    pass

        reader = threading.Thread(target=read_at_the_old_leader)
        reader.start()
        cut_at = time.monotonic()
        faults.set(isolated_dcs=[old.host.name])
        others = [r for r in cluster.live() if r is not old]
        wait_for(lambda: any(r.is_leader() for r in others), timeout=10, what="a leader among the others")
        elected_at = time.monotonic()
        stop.set()
        reader.join()
        assert served, "the old leader served no read at all (it should until its lease ran out)"
        assert max(served) < elected_at, "a read was served by the cut-off leader after another was elected"
        assert max(served) - cut_at < FAST.raft_min_timeout  # its lease ran out well before any election
        new = next(r for r in others if r.is_leader())
        assert new.raftCurrentTerm > old.raftCurrentTerm or not old.is_leader()
    finally:
        faults.clear()
        cluster.close()

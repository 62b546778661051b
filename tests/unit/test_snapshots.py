"""LMDB snapshots through pysyncobj's serializer/deserializer/serializeChecker contract."""

from __future__ import annotations

import contextlib
import os
import threading
import time

import lmdb
import pytest
from pysyncobj.config import SERIALIZER_STATE
from pysyncobj.serializer import Serializer

from tidebank.node.raft import snapshots
from tidebank.node.raft.snapshots import (
    DumpError,
    SnapshotManager,
    open_meta_db,
    read_applied_index,
    read_dump_info,
    write_applied_index,
)
from tidebank.node.raft.transport import PeerNode

LAST = (b"\x00last", 10, 2)
PREV = (b"\x00prev", 9, 2)


class FakeHost:
    """The replica side of the snapshot protocol, over a real LMDB env."""

    def __init__(self, path):
        self.dir = path
        self.installs = 0
        self.aligned = []
        self._open()

    def _open(self):
        self.dir.mkdir(parents=True, exist_ok=True)
        self.env = lmdb.open(str(self.dir), max_dbs=8, map_size=1 << 30, sync=False, metasync=False)
        self.meta_db = open_meta_db(self.env)
        self.data_db = self.env.open_db(b"data")

    def write(self, items: dict, applied: int):
        with self.env.begin(write=True) as txn:
            for k, v in items.items():
                txn.put(k, v, db=self.data_db)
            write_applied_index(txn, self.meta_db, applied)

    def contents(self) -> dict:
        with self.env.begin() as txn:
            return dict(txn.cursor(db=self.data_db).iternext())

    @contextlib.contextmanager
    def snapshot_env(self):
        yield self.env

    def applied_index(self) -> int:
        with self.env.begin() as txn:
            return read_applied_index(txn, self.meta_db)

    def ensure_applied_at_least(self, index):
        with self.env.begin(write=True) as txn:
            if read_applied_index(txn, self.meta_db) < index:
                write_applied_index(txn, self.meta_db, index)

    def install_lmdb_file(self, path):
        self.installs += 1
        self.env.close()
        os.replace(path, self.dir / "data.mdb")
        self._open()

    def align_journal(self, prev, last):
        self.aligned.append((prev, last))

    def note_dump_members(self, members):
        self.members = members

    def close(self):
        self.env.close()


@pytest.fixture
def host(tmp_path):
    h = FakeHost(tmp_path / "lmdb")
    yield h
    h.close()


def _run_to_completion(mgr: SnapshotManager, timeout=10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = mgr.serialize_checker()
        if state in (SERIALIZER_STATE.SUCCESS, SERIALIZER_STATE.FAILED):
            assert mgr.serialize_checker() == SERIALIZER_STATE.NOT_SERIALIZING
            return state
        assert state == SERIALIZER_STATE.SERIALIZING
        time.sleep(0.005)
    raise AssertionError("snapshot did not finish")


def _snapshot(mgr: SnapshotManager, data=(LAST, PREV, {"a:1", "b:2"})) -> int:
    tmp = mgr.dump_path + ".tmp"
    mgr.serializer(tmp, data)
    os.replace(tmp, mgr.dump_path)  # what pysyncobj does right after the serializer returns
    return _run_to_completion(mgr)


def test_snapshot_round_trip_through_pysyncobj_serializer(tmp_path, host):
    host.write({b"k%d" % i: b"v%d" % i for i in range(1000)}, applied=10)
    dump = str(tmp_path / "raft.dump")
    mgr = SnapshotManager(dump, host)
    ser = Serializer(dump, 2**16, True, mgr.serializer, mgr.deserializer, mgr.serialize_checker)
    ser.serialize((None, LAST, PREV, {"a:1"}), PREV[1])  # as SyncObj.__tryLogCompaction calls it
    assert os.path.getsize(dump) == 0  # no dump yet: pysyncobj renamed an empty placeholder
    state, snap_id = ser.checkSerializing()
    assert state == SERIALIZER_STATE.SERIALIZING and snap_id == PREV[1]
    deadline = time.monotonic() + 10
    while state == SERIALIZER_STATE.SERIALIZING and time.monotonic() < deadline:
        time.sleep(0.005)
        state, snap_id = ser.checkSerializing()
    assert state == SERIALIZER_STATE.SUCCESS and snap_id == PREV[1]
    assert ser.checkSerializing()[0] == SERIALIZER_STATE.NOT_SERIALIZING
    assert ser.getTransmissionData("node") is not None  # the Serializer is free again

    info = read_dump_info(dump)
    assert info.last == LAST and info.prev == PREV and info.cluster == ("a:1",)
    assert info.lmdb_applied_min >= LAST[1]
    # local LMDB is as new as the dump: kept, not reinstalled
    # members come back as PeerNodes: pysyncobj compares them with its own node when it restores membership
    assert ser.deserialize() == (None, LAST, PREV, {PeerNode("a:1")})
    assert host.installs == 0 and host.aligned == [(PREV, LAST)]


def test_copy_runs_off_the_calling_thread(tmp_path, host, monkeypatch):
    host.write({b"a": b"1"}, applied=10)
    threads = []
    real = snapshots.write_dump

    def spy(*args, **kwargs):
        threads.append(threading.current_thread())
        return real(*args, **kwargs)

    monkeypatch.setattr(snapshots, "write_dump", spy)
    mgr = SnapshotManager(str(tmp_path / "raft.dump"), host)
    mgr.serializer(mgr.dump_path + ".tmp", (LAST, PREV, set()))
    assert threads == []  # the serializer call only records the job
    os.replace(mgr.dump_path + ".tmp", mgr.dump_path)
    assert _run_to_completion(mgr) == SERIALIZER_STATE.SUCCESS
    assert threads and threads[0] is not threading.current_thread()


def test_serializer_bumps_applied_index_over_noop_entries(tmp_path, host):
    host.write({b"a": b"1"}, applied=7)  # entries 8..10 were no-ops: never reached apply
    mgr = SnapshotManager(str(tmp_path / "raft.dump"), host)
    assert _snapshot(mgr) == SERIALIZER_STATE.SUCCESS
    assert host.applied_index() == 10
    assert read_dump_info(mgr.dump_path).lmdb_applied_min == 10


def test_previous_dump_stays_valid_while_the_next_one_is_built(tmp_path, host):
    host.write({b"a": b"1"}, applied=10)
    mgr = SnapshotManager(str(tmp_path / "raft.dump"), host)
    assert _snapshot(mgr) == SERIALIZER_STATE.SUCCESS
    host.write({b"b": b"2"}, applied=20)
    tmp = mgr.dump_path + ".tmp"
    mgr.serializer(tmp, ((b"l", 20, 3), (b"p", 19, 3), set()))
    os.replace(tmp, mgr.dump_path)  # a hard link of the current dump: nothing changes
    assert read_dump_info(mgr.dump_path).last_index == 10
    assert _run_to_completion(mgr) == SERIALIZER_STATE.SUCCESS
    assert read_dump_info(mgr.dump_path).last_index == 20
    assert not os.path.exists(tmp) and not os.path.exists(mgr.building_path)


def test_deserializer_installs_a_newer_dump(tmp_path, host):
    items = {b"k%d" % i: os.urandom(50) for i in range(2000)}
    host.write(items, applied=10)
    mgr = SnapshotManager(str(tmp_path / "raft.dump"), host)
    assert _snapshot(mgr) == SERIALIZER_STATE.SUCCESS

    other = FakeHost(tmp_path / "other")  # a replica that is behind
    try:
        other.write({b"stale": b"x"}, applied=3)
        dump2 = str(tmp_path / "received.dump")
        os.link(mgr.dump_path, dump2)
        mgr2 = SnapshotManager(dump2, other)
        assert mgr2.deserializer(dump2) == (LAST, PREV, {PeerNode("a:1"), PeerNode("b:2")})
        assert other.installs == 1 and mgr2.snapshots_installed == 1
        assert other.contents() == items
        assert other.applied_index() >= 10
        assert not os.path.exists(mgr2.install_path)
    finally:
        other.close()


@pytest.mark.parametrize(
    "content",
    [b"", b"garbage" * 100, snapshots.DUMP_MAGIC + b"\0" * 10],
    ids=["empty", "garbage", "short-header"],
)
def test_deserializer_rejects_bad_dumps(tmp_path, host, content):
    host.write({b"a": b"1"}, applied=1)
    dump = tmp_path / "raft.dump"
    dump.write_bytes(content)
    mgr = SnapshotManager(str(dump), host)
    with pytest.raises(DumpError):
        mgr.deserializer(str(dump))
    assert host.installs == 0 and host.contents() == {b"a": b"1"}


def test_corrupt_lmdb_data_is_rejected_before_touching_the_env(tmp_path, host):
    host.write({b"a": b"1"}, applied=10)
    mgr = SnapshotManager(str(tmp_path / "raft.dump"), host)
    assert _snapshot(mgr) == SERIALIZER_STATE.SUCCESS
    info = read_dump_info(mgr.dump_path)
    with open(mgr.dump_path, "r+b") as f:
        f.seek(info.data_offset + 5000)
        f.write(b"\xff" * 8)
    other = FakeHost(tmp_path / "other")
    try:
        other.write({b"mine": b"1"}, applied=2)
        with pytest.raises(DumpError):
            SnapshotManager(mgr.dump_path, other).deserializer(mgr.dump_path)
        assert other.installs == 0 and other.contents() == {b"mine": b"1"}
    finally:
        other.close()


def test_snapshot_installed_meanwhile_supersedes_the_local_job(tmp_path, host):
    host.write({b"a": b"1"}, applied=10)
    mgr = SnapshotManager(str(tmp_path / "raft.dump"), host)
    assert _snapshot(mgr) == SERIALIZER_STATE.SUCCESS
    received = open(mgr.dump_path, "rb").read()

    tmp = mgr.dump_path + ".tmp"
    mgr.serializer(tmp, ((b"l", 8, 2), (b"p", 7, 2), set()))
    os.replace(tmp, mgr.dump_path)
    assert mgr.serialize_checker() == SERIALIZER_STATE.SERIALIZING  # job started
    mgr.deserializer(mgr.dump_path)  # e.g. a dump from the leader arrived meanwhile
    assert _run_to_completion(mgr) == SERIALIZER_STATE.FAILED
    assert open(mgr.dump_path, "rb").read() == received  # not overwritten by the stale job


def test_failed_snapshot_backs_off_and_never_raises(tmp_path, host, monkeypatch):
    host.write({b"a": b"1"}, applied=10)
    mgr = SnapshotManager(str(tmp_path / "raft.dump"), host)

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(snapshots, "write_dump", boom)
    assert _snapshot(mgr) == SERIALIZER_STATE.FAILED
    monkeypatch.undo()
    tmp = mgr.dump_path + ".tmp"
    mgr.serializer(tmp, (LAST, PREV, set()))
    os.replace(tmp, mgr.dump_path)
    assert mgr.serialize_checker() == SERIALIZER_STATE.SERIALIZING  # waiting out the backoff
    assert mgr._job.thread is None
    mgr._job.not_before = 0  # skip the rest of the pause
    assert _run_to_completion(mgr) == SERIALIZER_STATE.SUCCESS
    # a malformed job is reported as FAILED, not raised into pysyncobj
    mgr.serializer(tmp, ("not", "entries"))
    assert os.path.exists(tmp)
    assert _run_to_completion(mgr) == SERIALIZER_STATE.FAILED

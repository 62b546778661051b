"""DurableJournal: record format, torn tails, compaction, durable term/vote, group commit."""

from __future__ import annotations

import json
import os

import pysyncobj.syncobj as syncobj_module
import pytest
from pysyncobj.journal import MemoryJournal

from tidebank.node.raft import journal as journal_mod
from tidebank.node.raft.journal import HEADER_SIZE, DurableJournal, JournalCorruptError


def _entries(n: int, start: int = 1, term: int = 1):
    return [(b"cmd-%d" % i + b"x" * (i % 7), i, term) for i in range(start, start + n)]


def _open(path, **kw) -> DurableJournal:
    return DurableJournal(str(path), **kw)


def _fill(j: DurableJournal, entries) -> None:
    for e in entries:
        j.add(*e)
    j.sync()


def test_append_reopen_round_trip(tmp_path):
    path = tmp_path / "j"
    j = _open(path)
    entries = _entries(50)
    _fill(j, entries)
    assert len(j) == 50 and j[0] == entries[0] and j[-1] == entries[-1]
    assert j[10:12] == entries[10:12]
    j._destroy()

    j2 = _open(path)
    assert list(j2[:]) == entries
    assert j2.truncated_bytes == 0
    assert j2.entry_term(25) == 1 and j2.entry_term(51) is None and j2.last_index() == 50
    j2.add(b"more", 51, 2)
    j2._destroy()
    assert _open(path)[-1] == (b"more", 51, 2)


def test_unsynced_adds_are_written_on_destroy(tmp_path):
    j = _open(tmp_path / "j")
    for e in _entries(5):
        j.add(*e)
    j._destroy()  # clean shutdown writes the buffer
    assert len(_open(tmp_path / "j")) == 5


def test_torn_tail_is_truncated(tmp_path):
    for cut in (3, 20, 30):  # torn inside the last record (44 bytes): in its command or its header
        path = tmp_path / f"j{cut}"
        j = _open(path)
        _fill(j, [(b"c" * 20, i, 1) for i in range(1, 11)])  # 44-byte records
        good_end = j._offsets[-1]
        j._destroy()
        full = os.path.getsize(path)
        with open(path, "r+b") as f:
            f.truncate(full - cut)
        j2 = _open(path)
        assert len(j2) == 9
        assert j2.truncated_bytes == (full - cut) - good_end
        assert os.path.getsize(path) == good_end
        j2.add(b"again", 10, 1)  # appends where the good records end
        j2._destroy()
        j3 = _open(path)
        assert len(j3) == 10 and j3[-1] == (b"again", 10, 1) and j3.truncated_bytes == 0
        j3._destroy()


def test_bad_checksum_truncates_from_that_record(tmp_path):
    path = tmp_path / "j"
    j = _open(path)
    _fill(j, _entries(10))
    offset_of_7th = j._offsets[6]
    j._destroy()
    with open(path, "r+b") as f:
        f.seek(offset_of_7th + 24 + 1)  # inside the 7th record's command
        byte = f.read(1)
        f.seek(offset_of_7th + 24 + 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    j2 = _open(path)
    assert [e[1] for e in j2[:]] == [1, 2, 3, 4, 5, 6]
    assert os.path.getsize(path) == offset_of_7th
    j2._destroy()


def test_foreign_file_is_refused(tmp_path):
    path = tmp_path / "j"
    path.write_bytes(b"definitely not a journal file")
    with pytest.raises(JournalCorruptError):
        _open(path)


def test_delete_entries_from_then_reopen(tmp_path):
    path = tmp_path / "j"
    j = _open(path)
    _fill(j, _entries(20))
    j.deleteEntriesFrom(12)  # keep list positions 0..11 = indexes 1..12
    assert j.last_index() == 12
    j.add(b"new13", 13, 2)  # conflicting tail replaced
    for e in _entries(3, start=14, term=2):
        j.add(*e)  # unsynced, then trimmed from the buffer only
    j.deleteEntriesFrom(13)  # list position 13 = index 14
    j.sync()
    j._destroy()
    j2 = _open(path)
    assert [e[1] for e in j2[:]] == list(range(1, 14))
    assert j2[-1] == (b"new13", 13, 2)
    j2._destroy()


def test_delete_entries_to_then_reopen(tmp_path):
    path = tmp_path / "j"
    j = _open(path)
    entries = _entries(30)
    _fill(j, entries)
    j.add(b"unsynced", 31, 1)
    j.deleteEntriesTo(25)  # compaction keeps indexes 26..31
    assert [e[1] for e in j[:]] == list(range(26, 32))
    assert not j.dirty  # the rewritten file was fsynced
    j.deleteEntriesFrom(3)  # offsets still right after the rewrite: keep 26..28
    j.add(b"x", 29, 3)
    j.sync()
    j._destroy()
    j2 = _open(path)
    assert [e[1] for e in j2[:]] == [26, 27, 28, 29]
    assert j2[0] == entries[25] and j2[-1] == (b"x", 29, 3)
    assert not os.path.exists(str(path) + ".compact.tmp")
    j2._destroy()


def test_clear_then_reopen(tmp_path):
    path = tmp_path / "j"
    j = _open(path)
    _fill(j, _entries(10))
    j.clear()
    j.add(b"p", 40, 3)
    j.add(b"l", 41, 3)
    j.sync()
    j._destroy()
    assert list(_open(path)[:]) == [(b"p", 40, 3), (b"l", 41, 3)]


def test_align_to_snapshot_keeps_entries_after_the_dump(tmp_path):
    j = _open(tmp_path / "j")
    entries = _entries(20)
    _fill(j, entries)
    assert j.align_to_snapshot(entries[9], entries[10])  # prev=10, last=11
    assert j[0] == entries[9] and j[1] == entries[10] and j.last_index() == 20
    assert not j.align_to_snapshot((b"", 30, 1), (b"", 31, 1))  # not in the journal
    assert not j.align_to_snapshot(entries[11], (b"", 13, 9))  # term mismatch
    j._destroy()


def test_term_and_vote_are_durable(tmp_path, monkeypatch):
    path = tmp_path / "j"
    fsyncs = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (fsyncs.append(fd), real_fsync(fd)))
    j = _open(path)
    assert j.getCurrentTerm() == 0 and j.getVotedForNodeId() is None
    fsyncs.clear()
    j.setCurrentTerm(7, "127.0.0.1:1234")
    assert len(fsyncs) >= 2  # meta file and its directory, before returning
    # no _destroy: the meta must already be on disk
    meta = json.loads((tmp_path / "j.meta").read_bytes())
    assert meta["term"] == 7 and meta["voted_for"] == "127.0.0.1:1234"
    j2 = _open(tmp_path / "j2")
    j2._destroy()
    j._destroy()
    j3 = _open(path)
    assert j3.getCurrentTerm() == 7 and j3.getVotedForNodeId() == "127.0.0.1:1234"
    j3._destroy()


def test_commit_index_saved_lazily(tmp_path):
    path = tmp_path / "j"
    j = _open(path)
    j.setCurrentTerm(1, None)
    j.setRaftCommitIndex(42)
    assert json.loads((tmp_path / "j.meta").read_bytes())["commit_index"] == 1
    j.onOneSecondTimer()
    assert json.loads((tmp_path / "j.meta").read_bytes())["commit_index"] == 42
    j._destroy()
    assert _open(path).getRaftCommitIndex() == 42


def test_one_fdatasync_for_many_adds(tmp_path, monkeypatch):
    calls = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (calls.append(fd), real(fd)))
    j = _open(tmp_path / "j")
    for e in _entries(500):
        j.add(*e)
    assert calls == [] and j.sync_count == 0
    assert j.sync() is True
    assert len(calls) == 1 and j.sync_count == 1
    assert j.sync() is False  # nothing new: no second fdatasync
    assert len(calls) == 1
    j.add(b"one", 501, 1)
    j.sync()
    assert len(calls) == 2 and j.sync_count == 2
    j._destroy()


def test_fsync_disabled_writes_without_fdatasync(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(os, "fdatasync", lambda fd: calls.append(fd))
    j = _open(tmp_path / "j", fsync_enabled=False)
    _fill(j, _entries(10))
    assert calls == [] and j.sync_count == 1
    assert os.path.getsize(tmp_path / "j") > HEADER_SIZE  # written to the page cache
    j._destroy()


def test_sync_on_next_add(tmp_path):
    j = _open(tmp_path / "j")
    j.sync_on_next_add()
    j.add(b"noop", 1, 1)
    assert not j.dirty and j.sync_count == 1
    j.add(b"x", 2, 1)
    assert j.dirty
    j._destroy()


def test_install_is_idempotent_and_uses_registry(tmp_path):
    from tidebank.node.raft.pysyncobj_patches import install_journal

    install_journal(journal_mod.create_journal)
    install_journal(journal_mod.create_journal)
    assert syncobj_module.createJournal is journal_mod.create_journal
    assert isinstance(syncobj_module.createJournal(None), MemoryJournal)
    pre = journal_mod.open_journal(str(tmp_path / "j"), fsync_enabled=False)
    try:
        assert syncobj_module.createJournal(str(tmp_path / "j")) is pre
        assert journal_mod.get_journal(str(tmp_path / "j")) is pre
        with pytest.raises(RuntimeError):
            journal_mod.open_journal(str(tmp_path / "j"))
    finally:
        pre._destroy()
    assert journal_mod.get_journal(str(tmp_path / "j")) is None
    fresh = syncobj_module.createJournal(str(tmp_path / "j"))
    try:
        assert isinstance(fresh, DurableJournal) and fresh is not pre
        assert journal_mod.get_journal(str(tmp_path / "j")) is fresh
    finally:
        fresh._destroy()

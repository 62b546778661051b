"""DurableJournal: record format, torn tails, compaction, durable term/vote, group commit, bounded memory tail."""

from __future__ import annotations

import json
import os
import tempfile
import threading
from unittest import mock

import pysyncobj.syncobj as syncobj_module
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pysyncobj.journal import MemoryJournal

from tidebank.node.raft import journal as journal_mod
from tidebank.node.raft.journal import (
    HEADER_SIZE,
    RECORD_HEADER_SIZE,
    DurableJournal,
    JournalCorruptError,
    JournalSlice,
)

TAIL = 1024  # memory_tail_bytes_max for the eviction tests: a few dozen entries


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


# ---------------------------------------------------------------------- bounded memory tail


def _sized_entries(n: int, start: int = 1, term: int = 1, size: int = 40):
    return [(b"%06d" % i + bytes([i % 251]) * (size - 6), i, term) for i in range(start, start + n)]


def _filled(tmp_path, n: int, **sized) -> tuple[DurableJournal, list]:
    """A journal with a TAIL-byte memory limit holding n synced entries (and the entries)."""
    j = _open(tmp_path / "j", memory_tail_bytes_max=TAIL)
    entries = _sized_entries(n, **sized)
    _fill(j, entries)
    return j, entries


def _within_tail(j: DurableJournal, entries) -> bool:
    return j.memory_bytes() <= TAIL + max(len(e[0]) for e in entries)


def _pread_sizes(monkeypatch) -> list[int]:
    sizes: list[int] = []
    real = os.pread
    monkeypatch.setattr(os, "pread", lambda fd, n, off: (sizes.append(n), real(fd, n, off))[1])
    return sizes


def _bytes_served_from_memory(j: DurableJournal) -> int:
    """Command bytes of the entries that ``j[i]`` returns without reading the file."""
    total = 0
    reads: list[int] = []
    real = os.pread
    with mock.patch.object(os, "pread", lambda fd, n, off: (reads.append(n), real(fd, n, off))[1]):
        for i in range(len(j)):
            before = len(reads)
            entry = j[i]
            if len(reads) == before:
                total += len(entry[0])
    return total


def _flip_byte(path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))


def test_old_entries_are_evicted_and_read_back_like_a_list(tmp_path):
    j, entries = _filled(tmp_path, 500)
    assert _within_tail(j, entries) and j.memory_bytes() < sum(len(e[0]) for e in entries) // 10
    assert len(j) == 500
    assert [j[i] for i in range(500)] == entries
    assert [j[i] for i in range(-500, 0)] == entries
    assert j[0] == entries[0] and j[1] == entries[1] and j[-1] == entries[-1]
    assert j[10:14] == entries[10:14] and j[490:] == entries[490:] and j[250:250] == []
    assert list(j[:]) == entries and j[::7] == entries[::7] and j[-3:] == entries[-3:]
    assert j.entry_term(1) == 1 and j.first_index() == 1 and j.last_index() == 500
    with pytest.raises(IndexError):
        j[500]
    with pytest.raises(IndexError):
        j[-501]
    j._destroy()


def test_memory_bytes_is_what_reads_without_io_hold(tmp_path):
    j, entries = _filled(tmp_path, 300, size=50)
    assert j.memory_bytes() == _bytes_served_from_memory(j)
    assert TAIL - 50 < j.memory_bytes() <= TAIL  # evicts only what exceeds the limit
    j.deleteEntriesTo(290)  # the cut falls inside the cached tail
    assert j.memory_bytes() == _bytes_served_from_memory(j) == 10 * 50
    j._destroy()


def test_first_and_last_entry_reads_never_touch_the_file(tmp_path, monkeypatch):
    j, entries = _filled(tmp_path, 200)
    sizes = _pread_sizes(monkeypatch)
    for _ in range(100):
        assert j[0] == entries[0] and j[-1] == entries[-1] and j[-2] == entries[-2]
        assert j.entry_term(3) == 1 and j.last_index() == 200 and j.first_index() == 1
    assert sizes == []
    j._destroy()


def test_run_of_evicted_entries_is_read_with_one_pread(tmp_path, monkeypatch):
    j, entries = _filled(tmp_path, 200)
    sizes = _pread_sizes(monkeypatch)
    assert j[10:20] == entries[10:20]
    assert sizes == [10 * (RECORD_HEADER_SIZE + 40)]
    j._destroy()


def test_long_slice_over_evicted_entries_is_read_in_bounded_chunks(tmp_path, monkeypatch):
    j, entries = _filled(tmp_path, 300)
    sizes = _pread_sizes(monkeypatch)
    view = j[5:]
    assert isinstance(view, JournalSlice) and sizes == []  # nothing read until used
    assert len(view) == 295 and view == entries[5:] and list(view) == entries[5:]
    assert max(sizes) <= TAIL and len(sizes) > 1
    assert view[0] == entries[5] and view[-1] == entries[-1] and view[3:6] == entries[8:11]
    assert isinstance(view[3:6], list)
    j._destroy()


def test_slice_view_refuses_use_after_entries_are_deleted(tmp_path):
    j, entries = _filled(tmp_path, 300)
    view = j[0:]
    j.add(b"more", 301, 1)
    j.sync()
    assert view == entries  # appends and syncs do not invalidate it
    j.deleteEntriesTo(10)
    with pytest.raises(RuntimeError):
        list(view)
    j._destroy()


def test_unwritten_entries_are_never_evicted(tmp_path):
    path = tmp_path / "j"
    j = _open(path, memory_tail_bytes_max=TAIL)
    entries = _sized_entries(200)
    for e in entries:
        j.add(*e)
    assert os.path.getsize(path) == HEADER_SIZE  # nothing written yet: everything must be in memory
    assert j.memory_bytes() == sum(len(e[0]) for e in entries)
    assert list(j[:]) == entries
    j.sync()
    assert _within_tail(j, entries)
    more = _sized_entries(100, start=201)
    for e in more:
        j.add(*e)
    assert j.memory_bytes() >= sum(len(e[0]) for e in more)
    assert list(j[:]) == entries + more
    j._destroy()


def test_corrupt_evicted_record_raises_on_access(tmp_path):
    # inside the 11th record's command, its index field, its checksum
    for where in (RECORD_HEADER_SIZE + 3, 8, 4):
        path = tmp_path / f"j{where}"
        j = _open(path, memory_tail_bytes_max=TAIL)
        entries = _sized_entries(200)
        _fill(j, entries)
        _flip_byte(path, j._offsets[10] + where)
        with pytest.raises(JournalCorruptError):
            j[10]
        with pytest.raises(JournalCorruptError):
            j[5:15]
        with pytest.raises(JournalCorruptError):
            list(j[1:])
        assert j[9] == entries[9] and j[11] == entries[11] and j[-1] == entries[-1]
        j._destroy()


def test_reopen_holds_only_the_tail_and_reads_everything(tmp_path, monkeypatch):
    path = tmp_path / "j"
    j = _open(path)
    entries = _sized_entries(3000, size=100)
    _fill(j, entries)
    j._destroy()
    monkeypatch.setattr(journal_mod, "_LOAD_CHUNK_BYTES", 1000)  # records straddle the read windows
    sizes = _pread_sizes(monkeypatch)
    j2 = _open(path, memory_tail_bytes_max=TAIL)
    assert max(sizes) <= 1000 and j2.truncated_bytes == 0
    assert _within_tail(j2, entries)
    assert len(j2) == 3000 and j2[0] == entries[0] and j2[-1] == entries[-1] and j2[1234] == entries[1234]
    assert list(j2[:]) == entries
    j2._destroy()


def test_compaction_shifts_evicted_offsets_to_the_new_file(tmp_path):
    path = tmp_path / "j"
    j = _open(path, memory_tail_bytes_max=TAIL)
    entries = _sized_entries(300)
    _fill(j, entries)
    j.deleteEntriesTo(100)
    assert j[0] == entries[100] and j[1] == entries[101] and j[50] == entries[150]
    assert list(j[:]) == entries[100:] and _within_tail(j, entries)
    assert os.path.getsize(path) == HEADER_SIZE + 200 * (RECORD_HEADER_SIZE + 40)
    j.add(b"next", 301, 2)
    j._destroy()
    assert list(_open(path)[:]) == entries[100:] + [(b"next", 301, 2)]


def test_delete_entries_from_into_evicted_entries(tmp_path):
    path = tmp_path / "j"
    j = _open(path, memory_tail_bytes_max=TAIL)
    entries = _sized_entries(300)
    _fill(j, entries)
    j.deleteEntriesFrom(50)  # the new last entry was evicted: it is read back and cached
    assert len(j) == 50 and j[-1] == entries[49] and j.last_index() == 50
    assert list(j[:]) == entries[:50]
    j.add(b"new", 51, 2)
    j.sync()
    j._destroy()
    assert list(_open(path)[:]) == entries[:50] + [(b"new", 51, 2)]


def test_delete_entries_from_down_to_an_evicted_first_entry(tmp_path):
    j, entries = _filled(tmp_path, 300)
    j.deleteEntriesFrom(1)
    assert list(j[:]) == entries[:1] and j[-1] == j[0] == entries[0]
    assert j.memory_bytes() == len(entries[0][0])
    j._destroy()


def test_reading_an_evicted_entry_after_close_raises(tmp_path):
    j = _open(tmp_path / "j", memory_tail_bytes_max=TAIL)
    _fill(j, _sized_entries(200))
    j._destroy()
    with pytest.raises(ValueError):
        j[10]


def test_add_refuses_a_gap_in_indexes(tmp_path):
    # the file reader stops at a gap, so such an entry would silently disappear at the next open
    j = _open(tmp_path / "j")
    j.add(b"a", 5, 1)
    with pytest.raises(ValueError):
        j.add(b"c", 7, 1)
    assert list(j[:]) == [(b"a", 5, 1)]
    j._destroy()


def test_reads_stay_correct_while_another_thread_syncs(tmp_path):
    j = _open(tmp_path / "j", memory_tail_bytes_max=TAIL, fsync_enabled=False)
    entries = _sized_entries(3000)
    stop = threading.Event()
    errors = []

    def syncer():
        while not stop.is_set():
            try:
                j.sync()
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

    thread = threading.Thread(target=syncer)
    thread.start()
    try:
        for i, e in enumerate(entries):
            j.add(*e)
            assert j[i] == e and j[-1] == e and j[i // 2] == entries[i // 2]
            assert j[max(0, i - 40) : i + 1] == entries[max(0, i - 40) : i + 1]
    finally:
        stop.set()
        thread.join()
    assert errors == [] and list(j[:]) == entries
    j._destroy()


_OPS = st.one_of(
    st.tuples(st.just("add"), st.lists(st.integers(0, 300), min_size=5, max_size=40), st.integers(0, 2)),
    st.tuples(st.just("sync")),
    # a cut position k from the end (n - k, or the negative index -k) or from the start (k)
    st.tuples(st.just("delete_from"), st.integers(-3, 60), st.sampled_from(["end", "negative", "start"])),
    st.tuples(st.just("delete_to"), st.integers(-3, 60), st.sampled_from(["end", "start"])),
    st.tuples(st.just("reopen")),
    st.tuples(st.just("clear")),
)


def _cut(k: int, origin: str, n: int) -> int:
    if origin == "end":
        return n - k
    if origin == "negative":
        return -k if k > 0 else n + 1
    return k


def _assert_same_as(j: DurableJournal, model: list) -> None:
    n = len(model)
    assert len(j) == n
    assert [j[i] for i in range(n)] == model and [j[i] for i in range(-n, 0)] == model
    cuts = sorted({0, 1, n // 3, n // 2, n - 1, n, n + 3, -1, -7})
    for a in cuts:
        assert j[a:] == model[a:]
        for b in cuts:
            assert j[a:b] == model[a:b]
    assert j[::5] == model[::5] and j[::-3] == model[::-3]
    if model:
        assert j.first_index() == model[0][1] and j.last_index() == model[-1][1]
        assert [j.entry_term(e[1]) for e in model] == [e[2] for e in model]
        assert j.entry_term(model[-1][1] + 1) is None and j.entry_term(model[0][1] - 1) is None
    else:
        assert j.last_index() == 0
        with pytest.raises(IndexError):
            j[-1]


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(_OPS, min_size=10, max_size=40))
def test_random_operations_read_like_a_list_model(ops):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "j")
        j = DurableJournal(path, memory_tail_bytes_max=TAIL)
        model: list = []
        next_idx, term = 1, 1
        try:
            for op in ops:
                if op[0] == "add":
                    term += op[2]
                    for size in op[1]:
                        idx = model[-1][1] + 1 if model else next_idx
                        entry = (b"%d." % idx + bytes([idx % 256]) * size, idx, term)
                        j.add(*entry)
                        model.append(entry)
                elif op[0] == "sync":
                    j.sync()
                    if model:
                        assert j.memory_bytes() <= TAIL + max(len(e[0]) for e in model)
                elif op[0] == "delete_from":
                    cut = _cut(op[1], op[2], len(model))
                    j.deleteEntriesFrom(cut)
                    del model[max(0, len(model) + cut) if cut < 0 else cut :]
                elif op[0] == "delete_to":
                    cut = _cut(op[1], op[2], len(model))
                    j.deleteEntriesTo(cut)
                    if cut > 0:
                        del model[:cut]
                elif op[0] == "reopen":
                    j._destroy()
                    j = DurableJournal(path, memory_tail_bytes_max=TAIL)
                    if model:
                        assert j.memory_bytes() <= TAIL + max(len(e[0]) for e in model)
                else:
                    j.clear()
                    model = []
                    next_idx += 1000
                _assert_same_as(j, model)
                assert j.memory_bytes() == _bytes_served_from_memory(j)
            j._destroy()
            j = DurableJournal(path)
            assert list(j[:]) == model and j.truncated_bytes == 0
        finally:
            j._destroy()

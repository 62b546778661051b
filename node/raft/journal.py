"""Durable Raft journal for pysyncobj.

pysyncobj 0.3.17 never fsyncs its log (``FileJournal`` writes into an mmap), so a
success callback only means "in the page cache of a majority". :class:`DurableJournal`
implements pysyncobj's ``Journal`` interface with

* entries kept in memory as pysyncobj expects (a list of ``(command, idx, term)``);
* an append-only file of checksummed records::

      file   := header record*
      header := b"TBJRNL01" u32 version u32 reserved                      (16 bytes)
      record := u32 len  u32 crc32(idx|term|command)  u64 idx  u64 term  command[len]

  all little-endian. On open, records are read until the first truncated record, bad
  checksum or index discontinuity, and the file is truncated there (torn tail after a
  power loss);
* group commit: :meth:`DurableJournal.add` only buffers; :meth:`DurableJournal.sync`
  writes the buffer and does **one** ``fdatasync`` for everything added since the last
  sync. The replica calls ``sync()`` before the leader counts its own log and before a
  follower acknowledges (see ``replica.py``);
* term and vote stored in ``<journal>.meta`` (JSON, tmp + fsync + rename + dir fsync)
  before :meth:`setCurrentTerm` returns, i.e. before pysyncobj sends a vote. The commit
  index is only a hint and is written lazily from :meth:`onOneSecondTimer`.

:func:`create_journal` replaces ``pysyncobj.syncobj.createJournal`` (installed by
``pysyncobj_patches.install_journal``) so that ``SyncObj`` uses this class for
``conf.journalFile``; :func:`open_journal` / :func:`get_journal` give the replica the
journal object pysyncobj uses.

Thread safety: pysyncobj calls the journal only from the node's Raft loop thread, which
also calls ``sync()``. A lock guards file operations anyway so that
``sync()``/``_destroy()`` from another thread cannot interleave with them.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import threading
import zlib
from collections.abc import Iterable

from pysyncobj.journal import Journal, MemoryJournal

logger = logging.getLogger(__name__)

MAGIC = b"TBJRNL01"
FORMAT_VERSION = 1
_FILE_HEADER = struct.Struct("<8sII")
HEADER_SIZE = _FILE_HEADER.size  # 16
_REC_LEN_CRC = struct.Struct("<II")
_REC_IDX_TERM = struct.Struct("<QQ")
RECORD_HEADER_SIZE = _REC_LEN_CRC.size + _REC_IDX_TERM.size  # 24
_MAX_RECORD = 1 << 31  # anything larger is garbage, not a record

Entry = tuple[bytes, int, int]


class JournalCorruptError(Exception):
    """The journal or its meta file cannot be trusted (not a torn tail)."""


def fsync_dir(path: str) -> None:
    """fsync a directory so that a rename/creation inside it is durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` via tmp + (fsync) + rename + (dir fsync)."""
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if durable:
        fsync_dir(os.path.dirname(os.path.abspath(path)))


def encode_record(command: bytes, idx: int, term: int) -> bytes:
    idx_term = _REC_IDX_TERM.pack(idx, term)
    crc = zlib.crc32(command, zlib.crc32(idx_term))
    return _REC_LEN_CRC.pack(len(command), crc) + idx_term + command


def _to_bytes(command) -> bytes:
    if isinstance(command, bytes):
        return command
    if isinstance(command, (bytearray, memoryview)):
        return bytes(command)
    if isinstance(command, str):  # pysyncobj on py2-style data; never expected on py3
        return command.encode("latin-1")
    raise TypeError(f"journal command must be bytes, got {type(command).__name__}")


class DurableJournal(Journal):
    """pysyncobj ``Journal`` with checksummed records, group fdatasync and durable term/vote."""

    def __init__(self, path: str, *, fsync_enabled: bool = True):
        self.path = os.path.abspath(path)
        self.meta_path = self.path + ".meta"
        self.fsync_enabled = fsync_enabled
        self.sync_count = 0  # group commits flushed (each one fdatasync when fsync_enabled)
        self.truncated_bytes = 0  # bytes dropped from a torn/corrupt tail at open
        self.durable_index = 0  # last Raft index covered by a completed sync()
        self._lock = threading.RLock()
        self._entries: list[Entry] = []
        self._offsets: list[int] = []  # file offset of each entry's record
        self._pending: list[bytes] = []  # encoded records not yet written
        self._pending_bytes = 0
        self._end = HEADER_SIZE  # logical end of the file incl. pending records
        self._written_end = HEADER_SIZE  # end of what has been written to the fd
        self._dirty = False  # written or truncated since last fdatasync
        self._sync_on_next_add = False
        self._closed = False
        self._meta = self._load_meta()
        self._meta_dirty = False
        self._fd = self._open_file()

    # ------------------------------------------------------------------ open/load

    def _load_meta(self) -> dict:
        try:
            with open(self.meta_path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return {"term": 0, "voted_for": None, "commit_index": 1}
        try:
            meta = json.loads(raw)
            int(meta["term"])
        except Exception as exc:  # tmp+fsync+rename never leaves a torn file
            raise JournalCorruptError(f"unreadable journal meta {self.meta_path}: {exc}") from exc
        meta.setdefault("voted_for", None)
        meta.setdefault("commit_index", 1)
        return meta

    def _open_file(self) -> int:
        if not os.path.exists(self.path):
            atomic_write(self.path, _FILE_HEADER.pack(MAGIC, FORMAT_VERSION, 0), durable=self.fsync_enabled)
        fd = os.open(self.path, os.O_RDWR)
        try:
            self._load(fd)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _load(self, fd: int) -> None:
        size = os.fstat(fd).st_size
        data = os.pread(fd, size, 0) if size else b""
        if len(data) < HEADER_SIZE:
            # Created through tmp+rename, so a short header is not a torn write: refuse.
            raise JournalCorruptError(f"{self.path}: file shorter than the journal header")
        magic, version, _ = _FILE_HEADER.unpack_from(data, 0)
        if magic != MAGIC:
            raise JournalCorruptError(f"{self.path}: not a tidebank journal (magic {magic!r})")
        if version != FORMAT_VERSION:
            raise JournalCorruptError(f"{self.path}: unsupported journal format version {version}")
        entries = self._entries
        offsets = self._offsets
        off = HEADER_SIZE
        n = len(data)
        reason = None
        while off < n:
            if off + RECORD_HEADER_SIZE > n:
                reason = "truncated record header"
                break
            length, crc = _REC_LEN_CRC.unpack_from(data, off)
            start = off + RECORD_HEADER_SIZE
            end = start + length
            if length >= _MAX_RECORD or end > n:
                reason = "truncated record"
                break
            command = data[start:end]
            if zlib.crc32(command, zlib.crc32(data[off + 8 : start])) != crc:
                reason = "bad checksum"
                break
            idx, term = _REC_IDX_TERM.unpack_from(data, off + 8)
            if entries and idx != entries[-1][1] + 1:
                reason = f"index discontinuity ({entries[-1][1]} -> {idx})"
                break
            entries.append((command, idx, term))
            offsets.append(off)
            off = end
        if off < n:
            self.truncated_bytes = n - off
            logger.warning("journal %s: %s at offset %d, dropping %d trailing bytes", self.path, reason, off, n - off)
            os.ftruncate(fd, off)
            if self.fsync_enabled:
                os.fsync(fd)
        self._end = self._written_end = off
        self.durable_index = entries[-1][1] if entries else 0

    # ------------------------------------------------------------------ entries

    def add(self, command, idx, term):
        command = _to_bytes(command)
        rec = encode_record(command, idx, term)
        with self._lock:
            self._entries.append((command, idx, term))
            self._offsets.append(self._end)
            self._end += len(rec)
            self._pending.append(rec)
            self._pending_bytes += len(rec)
            self._dirty = True
            if self._sync_on_next_add:
                self._sync_on_next_add = False
                self.sync()
            elif self._pending_bytes >= (4 << 20):  # bound memory; still one fdatasync per group
                self._write_pending()

    def __getitem__(self, item):
        return self._entries[item]

    def __len__(self):
        return len(self._entries)

    def entry_term(self, idx: int) -> int | None:
        """Term of the entry with Raft index ``idx``, or None if not in the journal."""
        entries = self._entries
        if not entries:
            return None
        pos = idx - entries[0][1]
        if 0 <= pos < len(entries):
            return entries[pos][2]
        return None

    def last_index(self) -> int:
        return self._entries[-1][1] if self._entries else 0

    def first_index(self) -> int:
        return self._entries[0][1] if self._entries else 0

    def clear(self):
        with self._lock:
            self._entries = []
            self._offsets = []
            self._drop_pending()
            self._truncate_file(HEADER_SIZE)
            self.durable_index = 0

    def deleteEntriesFrom(self, entryFrom):
        """Drop entries at list position >= entryFrom (conflicting tail)."""
        with self._lock:
            if entryFrom < 0:
                entryFrom = max(0, len(self._entries) + entryFrom)
            if entryFrom >= len(self._entries):
                return
            offset = self._offsets[entryFrom]
            del self._entries[entryFrom:]
            del self._offsets[entryFrom:]
            self.durable_index = min(self.durable_index, self.last_index())
            if offset >= self._written_end:
                # only unwritten records go: trim the pending buffer
                keep = offset - self._written_end
                buf = b"".join(self._pending)[:keep]
                self._pending = [buf] if buf else []
                self._pending_bytes = len(buf)
                self._end = offset
            else:
                self._drop_pending()
                self._truncate_file(offset)

    def deleteEntriesTo(self, entryTo):
        """Drop entries at list position < entryTo (after log compaction).

        The kept records are copied into a new file which is fsynced and renamed over the
        old one, then the directory is fsynced: the journal is never without its tail.
        """
        with self._lock:
            if entryTo <= 0:
                return
            entryTo = min(entryTo, len(self._entries))
            self._write_pending()
            start = self._offsets[entryTo] if entryTo < len(self._entries) else self._end
            tail = os.pread(self._fd, self._end - start, start) if self._end > start else b""
            tmp = self.path + ".compact.tmp"
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, _FILE_HEADER.pack(MAGIC, FORMAT_VERSION, 0))
                view = memoryview(tail)
                while view:
                    view = view[os.write(fd, view) :]
                if self.fsync_enabled:
                    os.fsync(fd)
            except BaseException:
                os.close(fd)
                raise
            os.replace(tmp, self.path)
            if self.fsync_enabled:
                fsync_dir(os.path.dirname(self.path))
            old_fd, self._fd = self._fd, fd
            os.close(old_fd)
            shift = start - HEADER_SIZE
            del self._entries[:entryTo]
            self._offsets = [o - shift for o in self._offsets[entryTo:]]
            self._end = self._written_end = HEADER_SIZE + len(tail)
            self._dirty = False  # everything in the new file has been fsynced
            self.durable_index = self.last_index()

    def align_to_snapshot(self, prev: Entry, last: Entry) -> bool:
        """Make the journal start at ``prev`` if it holds both snapshot boundary entries.

        pysyncobj's ``__loadDumpFile`` clears the whole journal unless its first two
        entries equal the dump's (prev, last). After a crash between writing a dump and
        compacting the journal, the journal still starts earlier and pysyncobj would
        throw away acknowledged entries after the dump. Compacting here keeps them.
        Returns True if the journal now starts with (prev, last).
        """
        with self._lock:
            if self.entry_term(last[1]) != last[2] or self.entry_term(prev[1]) != prev[2]:
                return False
            if prev[1] + 1 != last[1]:
                return False
            pos = prev[1] - self._entries[0][1]
            if pos > 0:
                self.deleteEntriesTo(pos)
            return True

    # ------------------------------------------------------------------ durability

    def _write_pending(self) -> None:
        if not self._pending:
            return
        buf = b"".join(self._pending) if len(self._pending) > 1 else self._pending[0]
        off = self._written_end
        view = memoryview(buf)
        while view:
            n = os.pwrite(self._fd, view, off)
            off += n
            view = view[n:]
        self._written_end = off
        self._pending = []
        self._pending_bytes = 0

    def _drop_pending(self) -> None:
        self._pending = []
        self._pending_bytes = 0
        self._end = self._written_end

    def _truncate_file(self, offset: int) -> None:
        os.ftruncate(self._fd, offset)
        self._end = self._written_end = offset
        self._dirty = True

    def sync(self) -> bool:
        """Write buffered records and fdatasync once if anything changed (group commit).

        Returns True if a group was flushed. ``sync_count`` counts flushed groups.
        """
        with self._lock:
            if self._closed:
                return False
            self._write_pending()
            if not self._dirty:
                self.durable_index = self.last_index()
                return False
            if self.fsync_enabled:
                os.fdatasync(self._fd)
            self._dirty = False
            self.durable_index = self.last_index()
            self.sync_count += 1
            return True

    @property
    def dirty(self) -> bool:
        return self._dirty

    @property
    def needs_sync(self) -> bool:
        """Records buffered or written since the last fdatasync (what sync() would flush)."""
        return self._dirty or bool(self._pending)

    def sync_on_next_add(self) -> None:
        """Make the next :meth:`add` sync immediately (used for the new leader's no-op)."""
        self._sync_on_next_add = True

    def flush(self):
        self.sync()

    def _destroy(self):
        with self._lock:
            if self._closed:
                return
            try:
                self._write_pending()
                if self._dirty and self.fsync_enabled:
                    os.fdatasync(self._fd)
                self._dirty = False
                if self._meta_dirty:
                    self._store_meta()
            finally:
                self._closed = True
                os.close(self._fd)
                _unregister(self)

    @property
    def closed(self) -> bool:
        return self._closed

    # ------------------------------------------------------------------ meta

    def _store_meta(self) -> None:
        atomic_write(self.meta_path, json.dumps(self._meta).encode(), durable=self.fsync_enabled)
        self._meta_dirty = False

    def setRaftCommitIndex(self, raftCommitIndex):
        if self._meta.get("commit_index") != raftCommitIndex:
            self._meta["commit_index"] = raftCommitIndex
            self._meta_dirty = True

    def getRaftCommitIndex(self):
        return self._meta.get("commit_index", 1)

    def setCurrentTerm(self, term, votedForNodeId):
        # Raft: currentTerm and votedFor must be on disk before any message reflecting
        # them is sent. pysyncobj sends right after this returns, so write synchronously.
        self._meta["term"] = term
        self._meta["voted_for"] = votedForNodeId
        with self._lock:
            self._store_meta()

    def getCurrentTerm(self):
        return self._meta.get("term", 0)

    def getVotedForNodeId(self):
        return self._meta.get("voted_for")

    def onOneSecondTimer(self):
        if self._meta_dirty:
            with self._lock:
                if not self._closed:
                    self._store_meta()


# ---------------------------------------------------------------------- registry / install

_registry: dict[str, DurableJournal] = {}
_registry_lock = threading.Lock()


def open_journal(path: str, *, fsync_enabled: bool = True) -> DurableJournal:
    """Open ``path`` and register it so pysyncobj's ``createJournal(path)`` returns it."""
    key = os.path.abspath(path)
    with _registry_lock:
        existing = _registry.get(key)
        if existing is not None and not existing.closed:
            raise RuntimeError(f"journal {key} is already open in this process")
        journal = DurableJournal(key, fsync_enabled=fsync_enabled)
        _registry[key] = journal
        return journal


def get_journal(path: str) -> DurableJournal | None:
    with _registry_lock:
        return _registry.get(os.path.abspath(path))


def registered_journals() -> Iterable[DurableJournal]:
    with _registry_lock:
        return list(_registry.values())


def _unregister(journal: DurableJournal) -> None:
    with _registry_lock:
        if _registry.get(journal.path) is journal:
            del _registry[journal.path]


def create_journal(journalFile=None):
    """Drop-in replacement for ``pysyncobj.journal.createJournal``."""
    if journalFile is None:
        return MemoryJournal()
    key = os.path.abspath(journalFile)
    with _registry_lock:
        journal = _registry.get(key)
    if journal is not None and not journal.closed:
        return journal
    return open_journal(key)

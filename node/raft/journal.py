"""Durable Raft journal for pysyncobj.

pysyncobj 0.3.17 never fsyncs its log (``FileJournal`` writes into an mmap), so a
success callback only means "in the page cache of a majority". :class:`DurableJournal`
implements pysyncobj's ``Journal`` interface with

* an append-only file of checksummed records::

      file   := header record*
      header := b"TBJRNL01" u32 version u32 reserved                      (16 bytes)
      record := u32 len  u32 crc32(idx|term|command)  u64 idx  u64 term  command[len]

  all little-endian. On open, records are read (in bounded chunks) until the first
  truncated record, bad checksum or index discontinuity, and the file is truncated there
  (torn tail after a power loss);
* a bounded in-memory tail. pysyncobj indexes the journal like a list of
  ``(command, idx, term)`` and only drops entries when it compacts its log (every
  ``logCompactionMinTime``, 300 s), so keeping every command in memory made a loaded
  node grow by hundreds of MB between compactions. Only the newest
  ``memory_tail_bytes_max`` bytes of commands (:data:`MEMORY_TAIL_BYTES_MAX`), the first
  entry and the last entry are kept; for every entry the journal also keeps its term and
  record offset (16 bytes in two arrays; its index is ``first index + position``). An
  older command is ``pread`` back from the file, checksum and header verified
  (:class:`JournalCorruptError` otherwise), when it is read: a lagging follower being
  sent old entries, or a replay after a restart, both rare. A record not yet written
  to the fd is never evicted. Slices over many evicted records come back as a
  :class:`JournalSlice`, a read-only sequence that reads them in chunks as it is
  iterated (pysyncobj slices ``[diff:]`` and then keeps only one batch of it), so
  reading old entries does not pull the whole file into memory either;
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
also calls ``sync()``. A lock guards file operations and every change of the entry
structures anyway, so that ``sync()``/``_destroy()`` from another thread cannot
interleave with them. Reads of cached entries take no lock (they are on the hot path):
the only change another thread can make to the cache is eviction by ``sync()``, which
replaces the oldest cached entries by None, in order; a reader that meets None takes the
lock and reads the entry from the file. Everything that reshapes the cache (``add``,
deletions, ``clear``) runs on the Raft thread, like the reads. ``len()``, ``[0]``,
``[-1]``, :meth:`last_index` and :meth:`first_index` read one attribute each and are
safe from any thread.
"""

from __future__ import annotations

import bisect
import json
import logging
import operator
import os
import struct
import threading
import zlib
from array import array
from collections.abc import Iterable, Iterator, Sequence

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

# Command bytes kept in memory per journal (i.e. per shard replica). Followers in step, the
# apply path and a conflicting uncommitted tail only touch the newest entries. At 10k
# transfers/s the entries held between compactions grew by ~350 MB per 300 s (~1.2 MB/s,
# object overhead included), so 16 MiB is still more than ten seconds of log; older entries
# are read back from the file.
MEMORY_TAIL_BYTES_MAX = 16 << 20
# Largest read of evicted records at once (also the eager/lazy threshold for slices).
READ_CHUNK_BYTES_MAX = 1 << 20
_LOAD_CHUNK_BYTES = 4 << 20  # file read window when opening a journal
_COPY_CHUNK_BYTES = 4 << 20  # compaction copies the kept records in pieces this big
_PENDING_WRITE_BYTES = 4 << 20  # add() writes the buffer out beyond this (still one fdatasync per sync)
_TAIL_RECLAIM_MIN = 1024  # evicted slots reclaimed from the tail list at once (at least)

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


def _pread_full(fd: int, size: int, offset: int) -> bytes:
    """pread ``size`` bytes (fewer only at end of file): one call unless the kernel returns short."""
    data = os.pread(fd, size, offset)
    if len(data) == size or not data:
        return data
    parts = [data]
    got = len(data)
    while got < size:
        more = os.pread(fd, size - got, offset + got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


class JournalSlice(Sequence):
    """Read-only view of journal positions ``[start, stop)``, returned for slices over many evicted entries.

    pysyncobj slices ``log[diff:]`` to send a lagging follower one batch of it, and applies
    ``log[a:b]`` after a restart by iterating it: materialising such slices would read the
    whole rest of the file into memory. The view reads evicted records in chunks of at most
    ``READ_CHUNK_BYTES_MAX`` as it is iterated; indexing, ``len``, ``==`` (with lists) and
    slicing (which returns a plain list) behave like the list it stands for. It stays valid
    across ``add``/``sync``; after entries are deleted or the journal is cleared, using it
    raises ``RuntimeError`` rather than returning other entries.
    """

    __slots__ = ("_journal", "_start", "_stop", "_gen")

    def __init__(self, journal: DurableJournal, start: int, stop: int):
        self._journal = journal
        self._start = start
        self._stop = stop
        self._gen = journal._gen

    def __len__(self) -> int:
        return self._stop - self._start

    def __getitem__(self, item):
        n = self._stop - self._start
        if isinstance(item, slice):
            start, stop, step = item.indices(n)
            if step != 1:
                return [self[i] for i in range(start, stop, step)]
            if start >= stop:
                return []
            return self._journal._materialize_view(self._start + start, self._start + stop, self._gen)
        item = operator.index(item)
        if item < 0:
            item += n
        if not 0 <= item < n:
            raise IndexError("journal slice index out of range")
        return self._journal._materialize_view(self._start + item, self._start + item + 1, self._gen)[0]

    def __iter__(self) -> Iterator[Entry]:
        pos = self._start
        while pos < self._stop:
            pos, entries = self._journal._next_chunk(pos, self._stop, self._gen)
            yield from entries

    def __eq__(self, other) -> bool:
        if not isinstance(other, (list, JournalSlice)):
            return NotImplemented
        if len(self) != len(other):
            return False
        return all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # like list

    def __repr__(self) -> str:
        return f"JournalSlice(positions {self._start}..{self._stop} of {self._journal.path})"


class DurableJournal(Journal):
    """pysyncobj ``Journal`` with checksummed records, group fdatasync, durable term/vote and a bounded memory tail."""

    def __init__(self, path: str, *, fsync_enabled: bool = True, memory_tail_bytes_max: int = MEMORY_TAIL_BYTES_MAX):
        self.path = os.path.abspath(path)
        self.meta_path = self.path + ".meta"
        self.fsync_enabled = fsync_enabled
        self.memory_tail_bytes_max = max(0, memory_tail_bytes_max)
        self._read_chunk = max(1, min(READ_CHUNK_BYTES_MAX, self.memory_tail_bytes_max))
        self.sync_count = 0  # group commits flushed (each one fdatasync when fsync_enabled)
        self.truncated_bytes = 0  # bytes dropped from a torn/corrupt tail at open
        self.durable_index = 0  # last Raft index covered by a completed sync()
        self._lock = threading.RLock()
        # Entries: position p (0 = oldest) has Raft index _first_idx + p (indexes are contiguous),
        # term _terms[p] and its record at file offset _offsets[p]; the record ends where the
        # next one starts (the last one at _end). _tail[k] is the entry at position
        # _tail_base + k: None for k < _tail_head (evicted, its slot not yet reclaimed), the
        # entry itself from there to the last entry, which is always cached. Older commands
        # are read from the file, except the first entry's, kept in _first.
        self._reset_entries()
        self._gen = 0  # bumped whenever existing positions change meaning (JournalSlice checks it)
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

    def _reset_entries(self) -> None:
        self._first_idx = 0
        self._terms = array("q")
        self._offsets = array("q")
        self._tail: list[Entry | None] = []
        self._tail_base = 0
        self._tail_head = 0
        self._cache_bytes = 0  # command bytes of the entries cached in _tail
        self._first_extra_bytes = 0  # len of _first's command when it is not cached in _tail
        self._first: Entry | None = None
        self._last: Entry | None = None

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
            with self._lock:
                self._load(fd)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _load(self, fd: int) -> None:
        """Scan the records in bounded windows, caching only the tail (a big journal is not read into memory)."""
        size = os.fstat(fd).st_size
        header = _pread_full(fd, HEADER_SIZE, 0)
        if len(header) < HEADER_SIZE:
            # Created through tmp+rename, so a short header is not a torn write: refuse.
            raise JournalCorruptError(f"{self.path}: file shorter than the journal header")
        magic, version, _ = _FILE_HEADER.unpack(header)
        if magic != MAGIC:
            raise JournalCorruptError(f"{self.path}: not a tidebank journal (magic {magic!r})")
        if version != FORMAT_VERSION:
            raise JournalCorruptError(f"{self.path}: unsupported journal format version {version}")
        off = HEADER_SIZE
        window = b""
        wstart = off  # file offset of window[0]
        reason = None
        while off < size:
            if off + RECORD_HEADER_SIZE > size:
                reason = "truncated record header"
                break
            if off + RECORD_HEADER_SIZE > wstart + len(window):
                wstart, window = off, _pread_full(fd, min(_LOAD_CHUNK_BYTES, size - off), off)
            rel = off - wstart
            length, crc = _REC_LEN_CRC.unpack_from(window, rel)
            end = off + RECORD_HEADER_SIZE + length
            if length >= _MAX_RECORD or end > size:
                reason = "truncated record"
                break
            if end > wstart + len(window):  # record runs past the window: restart the window at it
                wstart, window = off, _pread_full(fd, min(max(_LOAD_CHUNK_BYTES, end - off), size - off), off)
                rel = 0
                if len(window) < end - off:
                    reason = "short read"
                    break
            idx_term = window[rel + 8 : rel + RECORD_HEADER_SIZE]
            command = window[rel + RECORD_HEADER_SIZE : rel + RECORD_HEADER_SIZE + length]
            if zlib.crc32(command, zlib.crc32(idx_term)) != crc:
                reason = "bad checksum"
                break
            idx, term = _REC_IDX_TERM.unpack(idx_term)
            if self._last is not None and idx != self._last[1] + 1:
                reason = f"index discontinuity ({self._last[1]} -> {idx})"
                break
            self._append_entry((command, idx, term), off)
            self._end = self._written_end = off = end
            if self._cache_bytes + self._first_extra_bytes > self.memory_tail_bytes_max:
                self._evict()
        if off < size:
            self.truncated_bytes = size - off
            logger.warning(
                "journal %s: %s at offset %d, dropping %d trailing bytes", self.path, reason, off, size - off
            )
            os.ftruncate(fd, off)
            if self.fsync_enabled:
                os.fsync(fd)
        self._end = self._written_end = off
        self.durable_index = self.last_index()

    # ------------------------------------------------------------------ entries

    def _append_entry(self, entry: Entry, offset: int) -> None:
        """Add ``entry`` (record at ``offset``) to the structures (lock held; Raft thread or open)."""
        last = self._last
        if last is None:
            self._first_idx = entry[1]
            self._first = entry
        elif entry[1] != last[1] + 1:
            # the file's reader stops at a gap: such an entry would be lost at the next open
            raise ValueError(f"journal index {entry[1]} does not follow {last[1]}")
        self._terms.append(entry[2])
        self._offsets.append(offset)
        tail = self._tail
        tail.append(entry)
        self._cache_bytes += len(entry[0])
        self._last = entry
        head = self._tail_head
        if head >= _TAIL_RECLAIM_MIN and head * 2 >= len(tail):
            # reclaim evicted slots; amortized O(1). Only here: readers of _tail run on this thread
            del tail[:head]
            self._tail_base += head
            self._tail_head = 0

    def add(self, command: bytes, idx: int, term: int) -> None:
        """Append an entry (buffered; durable after the next :meth:`sync`)."""
        command = _to_bytes(command)
        rec = encode_record(command, idx, term)
        with self._lock:
            self._append_entry((command, idx, term), self._end)
            self._end += len(rec)
            self._pending.append(rec)
            self._pending_bytes += len(rec)
            self._dirty = True
            if self._sync_on_next_add:
                self._sync_on_next_add = False
                self.sync()
            elif self._pending_bytes >= _PENDING_WRITE_BYTES:  # bound memory; still one fdatasync per group
                self._write_pending()

    def __getitem__(self, item):
        """Like a list of ``(command, idx, term)``: cached entries without I/O, older ones read from the file."""
        if item.__class__ is not int:
            if isinstance(item, slice):
                return self._slice(item)
            item = operator.index(item)
        pos = item
        if pos <= 0:
            if pos == -1 or pos == 0:  # pysyncobj's most frequent reads: one attribute
                entry = self._last if pos else self._first
                if entry is None:
                    raise IndexError("journal index out of range")
                return entry
            pos += len(self._terms)
            if pos < 0:
                raise IndexError("journal index out of range")
        k = pos - self._tail_base
        if k >= 0:
            try:
                entry = self._tail[k]
            except IndexError:
                raise IndexError("journal index out of range") from None
            if entry is not None:
                return entry
        with self._lock:  # evicted (or being evicted): read it from the file
            pos = item + len(self._terms) if item < 0 else item
            if not 0 <= pos < len(self._terms):
                raise IndexError("journal index out of range")
            return self._materialize(pos, pos + 1)[0]

    def _slice(self, s: slice) -> list[Entry] | JournalSlice:
        start, stop, step = s.indices(len(self._terms))
        if step != 1:
            return [self[i] for i in range(start, stop, step)]
        if start >= stop:
            return []
        base = self._tail_base
        if start >= base:  # the common case: recent entries, all cached
            out = self._tail[start - base : stop - base]
            # eviction (sync(), maybe on another thread) only clears the oldest slots, in order
            if out[0] is not None:
                return out
        with self._lock:
            start, stop, _ = s.indices(len(self._terms))
            if start >= stop:
                return []
            evicted_stop = min(stop, self._tail_base + self._tail_head)
            read_start = max(start, 1)  # position 0 is always in memory
            if (
                read_start < evicted_stop
                and self._record_end(evicted_stop - 1) - self._offsets[read_start] > self._read_chunk
            ):
                return JournalSlice(self, start, stop)
            return self._materialize(start, stop)

    def __len__(self) -> int:
        return len(self._terms)

    def memory_bytes(self) -> int:
        """Command bytes held in memory: the cached tail plus the first entry.

        Once everything is written this is at most ``memory_tail_bytes_max``, or the first
        and last entry's if those two alone are bigger (both always stay); records not yet
        written are never evicted. The write buffer (encoded copies of unsynced records,
        emptied by every sync) is not counted.
        """
        return self._cache_bytes + self._first_extra_bytes

    def entry_term(self, idx: int) -> int | None:
        """Term of the entry with Raft index ``idx``, or None if not in the journal."""
        terms = self._terms
        pos = idx - self._first_idx
        if 0 <= pos < len(terms):
            return terms[pos]
        return None

    def last_index(self) -> int:
        last = self._last
        return last[1] if last is not None else 0

    def first_index(self) -> int:
        first = self._first
        return first[1] if first is not None else 0

    def clear(self) -> None:
        with self._lock:
            self._reset_entries()
            self._gen += 1
            self._drop_pending()
            self._truncate_file(HEADER_SIZE)
            self.durable_index = 0

    def deleteEntriesFrom(self, entryFrom: int) -> None:
        """Drop entries at list position >= entryFrom (conflicting tail)."""
        with self._lock:
            n = len(self._terms)
            if entryFrom < 0:
                entryFrom = max(0, n + entryFrom)
            if entryFrom >= n:
                return
            offset = self._offsets[entryFrom]
            if entryFrom == 0:
                self._reset_entries()
            else:
                tail = self._tail
                cut = entryFrom - self._tail_base
                if cut > self._tail_head:  # the new last entry is cached
                    self._cache_bytes -= sum(len(e[0]) for e in tail[cut:])
                    del tail[cut:]
                    new_last = tail[-1]
                else:  # every cached entry goes: read the new last back (the last is always cached)
                    new_last = self._materialize(entryFrom - 1, entryFrom)[0]
                    self._tail = [new_last]
                    self._tail_base = entryFrom - 1
                    self._tail_head = 0
                    self._cache_bytes = len(new_last[0])
                del self._terms[entryFrom:]
                del self._offsets[entryFrom:]
                self._last = new_last
                self._count_first()
            self._gen += 1
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

    def deleteEntriesTo(self, entryTo: int) -> None:
        """Drop entries at list position < entryTo (after log compaction).

        The kept records are copied (in bounded pieces) into a new file which is fsynced and
        renamed over the old one, then the directory is fsynced: the journal is never
        without its tail. Kept records move to the front of the new file, so their offsets
        shift; later reads of evicted entries go to the new file.
        """
        with self._lock:
            n = len(self._terms)
            if entryTo <= 0 or n == 0:
                return
            entryTo = min(entryTo, n)
            self._write_pending()
            start = self._offsets[entryTo] if entryTo < n else self._end
            new_first = None
            if entryTo < n:  # read (and verify) the new first entry before anything changes
                new_first = self._materialize(entryTo, entryTo + 1)[0]
            end = self._end
            tmp = self.path + ".compact.tmp"
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, _FILE_HEADER.pack(MAGIC, FORMAT_VERSION, 0))
                pos = start
                while pos < end:
                    chunk = _pread_full(self._fd, min(_COPY_CHUNK_BYTES, end - pos), pos)
                    if not chunk:
                        raise JournalCorruptError(f"{self.path}: file ends at {pos}, expected {end}")
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view) :]
                    pos += len(chunk)
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
            if new_first is None:
                self._reset_entries()
            else:
                tail = self._tail
                head = self._tail_head
                cut = entryTo - self._tail_base
                if cut <= head:  # the cut is among evicted entries
                    del tail[:head]
                    self._tail_base = -cut + head
                else:
                    self._cache_bytes -= sum(len(e[0]) for e in tail[head:cut])
                    del tail[:cut]
                    self._tail_base = 0
                self._tail_head = 0
                self._first_idx += entryTo
                self._first = new_first
                del self._terms[:entryTo]
                self._offsets = array("q", [o - shift for o in self._offsets[entryTo:]])
                self._count_first()
            self._gen += 1
            self._end = self._written_end = HEADER_SIZE + (end - start)
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
            pos = prev[1] - self._first_idx
            if pos > 0:
                self.deleteEntriesTo(pos)
            return True

    # ------------------------------------------------------------------ memory tail

    def _count_first(self) -> None:
        first = self._first
        self._first_extra_bytes = len(first[0]) if first is not None and self._tail_base + self._tail_head > 0 else 0

    def _evict(self) -> None:
        """Drop the oldest cached commands beyond the limit (lock held); amortized O(1) per entry.

        Stops at the last entry and at the first record not entirely written to the fd.
        """
        limit = self.memory_tail_bytes_max
        total = self._cache_bytes + self._first_extra_bytes
        if total <= limit or self._last is None:
            return
        tail = self._tail
        offsets = self._offsets
        base = self._tail_base
        written = self._written_end
        head = self._tail_head
        keep = len(tail) - 1  # the last entry stays
        freed = 0
        while total > limit and head < keep:
            pos = base + head
            if offsets[pos + 1] > written:  # this record is (partly) unwritten: keep it and all newer
                break
            size = len(tail[head][0])
            tail[head] = None  # before _tail_head moves: a lock-free reader seeing None takes the lock
            head += 1
            if pos == 0:  # the first entry stays in memory (pysyncobj reads [0] all the time)
                self._first_extra_bytes = size
            else:
                total -= size
            freed += size
        self._tail_head = head
        self._cache_bytes -= freed

    def _record_end(self, pos: int) -> int:
        return self._offsets[pos + 1] if pos + 1 < len(self._offsets) else self._end

    def _materialize(self, start: int, stop: int) -> list[Entry]:
        """Entries at positions [start, stop) as a list (lock held): evicted ones with one pread."""
        base = self._tail_base
        cached_from = base + self._tail_head
        out: list[Entry] = []
        if start == 0 and cached_from > 0 and self._first is not None:
            out.append(self._first)
            start = 1
        evicted_stop = min(stop, cached_from)
        if start < evicted_stop:
            out.extend(self._read_records(start, evicted_stop))
            start = evicted_stop
        if start < stop:
            out.extend(self._tail[start - base : stop - base])
        return out

    def _read_records(self, start: int, stop: int) -> list[Entry]:
        """Read positions [start, stop) from the fd in one pread and verify each record (lock held)."""
        if self._closed:
            raise ValueError(f"journal {self.path} is closed")
        offsets = self._offsets
        first_off = offsets[start]
        end = self._record_end(stop - 1)
        if end > self._written_end:
            raise AssertionError("evicted journal record was never written")  # evict() forbids it
        buf = _pread_full(self._fd, end - first_off, first_off)
        if len(buf) != end - first_off:
            raise JournalCorruptError(f"{self.path}: file ends before offset {end}")
        base = self._first_idx
        terms = self._terms
        out: list[Entry] = []
        for pos in range(start, stop):
            rel = offsets[pos] - first_off
            rec_end = (offsets[pos + 1] if pos + 1 < stop else end) - first_off
            length, crc = _REC_LEN_CRC.unpack_from(buf, rel)
            idx_term = buf[rel + 8 : rel + RECORD_HEADER_SIZE]
            command = buf[rel + RECORD_HEADER_SIZE : rec_end]
            idx, term = _REC_IDX_TERM.unpack(idx_term)
            if (
                length != len(command)
                or idx != base + pos
                or term != terms[pos]
                or zlib.crc32(command, zlib.crc32(idx_term)) != crc
            ):
                raise JournalCorruptError(
                    f"{self.path}: record of index {base + pos} at offset {offsets[pos]} does not match its checksum"
                    " or its index/term"
                )
            out.append((command, idx, term))
        return out

    def _materialize_view(self, start: int, stop: int, gen: int) -> list[Entry]:
        with self._lock:
            self._check_gen(gen)
            return self._materialize(start, stop)

    def _next_chunk(self, pos: int, stop: int, gen: int) -> tuple[int, list[Entry]]:
        """Entries from ``pos`` for a :class:`JournalSlice`: evicted ones up to ~one read chunk, or the cached rest."""
        with self._lock:
            self._check_gen(gen)
            evicted_stop = min(stop, self._tail_base + self._tail_head)
            if pos >= evicted_stop:
                return stop, self._materialize(pos, stop)
            offsets = self._offsets
            # largest e with record e-1 ending within the chunk (offsets[e] is its end); at least one record
            e = bisect.bisect_right(offsets, offsets[pos] + self._read_chunk, pos + 1, evicted_stop + 1) - 1
            e = max(e, pos + 1)
            return e, self._materialize(pos, e)

    def _check_gen(self, gen: int) -> None:
        if gen != self._gen:
            raise RuntimeError("journal entries were deleted since this slice was taken")

    # ------------------------------------------------------------------ durability

    def _write_pending(self) -> None:
        """Write the buffered records to the fd (lock held); they may then be evicted from memory."""
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
        self._evict()

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

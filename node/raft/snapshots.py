"""LMDB snapshots for pysyncobj log compaction, made off the Raft tick thread.

pysyncobj with a custom ``serializer`` (``Serializer`` in pysyncobj/serializer.py):

1. ``serializer(fullDumpFile + '.tmp', (last_applied_entry, entry_before, cluster))`` is
   called on the tick thread, then pysyncobj renames the tmp file over ``fullDumpFile``
   *immediately*;
2. ``serializeChecker()`` is polled every tick: SERIALIZING / SUCCESS / FAILED (then
   NOT_SERIALIZING). On SUCCESS the journal is compacted up to the snapshot's id;
3. ``deserializer(fullDumpFile)`` must return the tuple given to the serializer; it runs on
   restart (local dump) and when a dump from the leader has been received.

So :meth:`SnapshotManager.serializer` only records the job and makes the tmp file a hard
link of the current dump (pysyncobj's rename then changes nothing; with no dump yet it is
an empty file). The first checker poll starts a background thread that copies the LMDB
environment consistently (``env.copyfd``, non-compacting, which takes its own read txn)
into ``<dump>.building``; a later poll renames it over the dump (on the tick thread, so
nothing else touches the dump file concurrently) and reports SUCCESS.

Dump file format (little-endian)::

    header  := b"TBDUMP01" u32 version u32 meta_len u64 data_len u32 data_crc32 u32 meta_crc32
               u64 lmdb_applied_min u64 last_index                         (48 bytes)
    meta    := JSON {"last": [cmd_b64, idx, term], "prev": [...], "cluster": [node ids]}
    data    := the LMDB data file (data.mdb) as written by mdb_env_copyfd

``lmdb_applied_min`` is the applied index read under the snapshot lock before the copy;
the copy's applied index is at least that, and at least ``last_index`` (the serializer
bumps the stored applied index to the snapshot index first, covering no-op entries that
never reach the replicated method).

The applied index lives in the replica's own named db ``replica_meta`` under
``applied_index`` (u64 big-endian); helpers for it are here so both the replica and the
snapshot code use the same encoding.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import shutil
import struct
import threading
import time
import zlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

import lmdb
from pysyncobj.config import SERIALIZER_STATE

from .journal import fsync_dir
from .transport import PeerNode

logger = logging.getLogger(__name__)

META_DB = b"replica_meta"
APPLIED_KEY = b"applied_index"
_U64 = struct.Struct(">Q")

DUMP_MAGIC = b"TBDUMP01"
DUMP_VERSION = 1
_DUMP_HEADER = struct.Struct("<8sIIQIIQQ")
DUMP_HEADER_SIZE = _DUMP_HEADER.size
_COPY_CHUNK = 4 << 20
_MAX_META = 16 << 20
FAILURE_BACKOFF_S = 5.0


class DumpError(Exception):
    """The dump file is empty, truncated or corrupt."""


# ---------------------------------------------------------------------- applied index


def open_meta_db(env: lmdb.Environment, *, create: bool = True):
    return env.open_db(META_DB, create=create)


def read_applied_index(txn: lmdb.Transaction, db) -> int:
    raw = txn.get(APPLIED_KEY, db=db)
    return _U64.unpack(raw)[0] if raw else 0


def write_applied_index(txn: lmdb.Transaction, db, index: int) -> None:
    txn.put(APPLIED_KEY, _U64.pack(index), db=db)


def applied_index_of_lmdb_file(path: str) -> int:
    """Applied index stored in a standalone LMDB data file (not opened elsewhere)."""
    env = lmdb.open(path, subdir=False, readonly=True, lock=False, max_dbs=64, readahead=False)
    try:
        with env.begin() as txn:
            try:
                db = env.open_db(META_DB, txn=txn, create=False)
            except lmdb.NotFoundError:
                return 0
            return read_applied_index(txn, db)
    finally:
        env.close()


# ---------------------------------------------------------------------- dump file format


@dataclass(frozen=True)
class DumpInfo:
    last: tuple[bytes, int, int]
    prev: tuple[bytes, int, int]
    cluster: tuple[str, ...]
    lmdb_applied_min: int
    data_offset: int
    data_len: int
    data_crc: int

    @property
    def last_index(self) -> int:
        return self.last[1]


def _entry_to_json(entry) -> list:
    command, idx, term = entry
    return [base64.b64encode(bytes(command)).decode("ascii"), int(idx), int(term)]


def _entry_from_json(obj) -> tuple[bytes, int, int]:
    cmd_b64, idx, term = obj
    return (base64.b64decode(cmd_b64, validate=True), int(idx), int(term))


def encode_meta(last, prev, cluster) -> bytes:
    ids = sorted(getattr(node, "id", node) for node in (cluster or ()))
    return json.dumps(
        {"last": _entry_to_json(last), "prev": _entry_to_json(prev), "cluster": [str(i) for i in ids]}
    ).encode()


def read_dump_info(path: str) -> DumpInfo:
    """Read and check a dump's header and metadata (not the LMDB data checksum)."""
    with open(path, "rb") as f:
        head = f.read(DUMP_HEADER_SIZE)
        if len(head) < DUMP_HEADER_SIZE:
            raise DumpError(f"{path}: {len(head)} bytes, too short for a dump header")
        magic, version, meta_len, data_len, data_crc, meta_crc, applied_min, last_index = _DUMP_HEADER.unpack(head)
        if magic != DUMP_MAGIC:
            raise DumpError(f"{path}: bad magic {magic!r}")
        if version != DUMP_VERSION:
            raise DumpError(f"{path}: unsupported dump version {version}")
        if meta_len > _MAX_META:
            raise DumpError(f"{path}: metadata length {meta_len} is implausible")
        meta_raw = f.read(meta_len)
        if len(meta_raw) != meta_len or zlib.crc32(meta_raw) != meta_crc:
            raise DumpError(f"{path}: metadata truncated or checksum mismatch")
        size = os.fstat(f.fileno()).st_size
    if size != DUMP_HEADER_SIZE + meta_len + data_len:
        raise DumpError(f"{path}: size {size} != header+meta+data {DUMP_HEADER_SIZE + meta_len + data_len}")
    try:
        meta = json.loads(meta_raw)
        last = _entry_from_json(meta["last"])
        prev = _entry_from_json(meta["prev"])
        cluster = tuple(str(n) for n in meta.get("cluster", ()))
    except Exception as exc:
        raise DumpError(f"{path}: bad metadata: {exc}") from exc
    if last[1] != last_index or prev[1] + 1 != last[1]:
        raise DumpError(f"{path}: inconsistent snapshot indexes {prev[1]}, {last[1]}, {last_index}")
    if applied_min < last_index:
        raise DumpError(f"{path}: LMDB applied index {applied_min} < snapshot index {last_index}")
    return DumpInfo(last, prev, cluster, applied_min, DUMP_HEADER_SIZE + meta_len, data_len, data_crc)


def _crc_of_range(fd: int, offset: int, length: int) -> int:
    crc = 0
    pos = offset
    end = offset + length
    while pos < end:
        chunk = os.pread(fd, min(_COPY_CHUNK, end - pos), pos)
        if not chunk:
            raise DumpError("unexpected end of file while checksumming")
        crc = zlib.crc32(chunk, crc)
        pos += len(chunk)
    return crc


def write_dump(
    path: str, env: lmdb.Environment, meta: bytes, last_index: int, applied_min: int, *, durable: bool = True
) -> None:
    """Write one dump file: header + meta + consistent LMDB copy. Caller renames it into place."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, b"\0" * DUMP_HEADER_SIZE)
        os.write(fd, meta)
        data_offset = DUMP_HEADER_SIZE + len(meta)
        os.lseek(fd, data_offset, os.SEEK_SET)
        env.copyfd(fd)  # non-compacting: takes its own read txn, writes at the current offset
        data_len = os.fstat(fd).st_size - data_offset
        crc = _crc_of_range(fd, data_offset, data_len)
        header = _DUMP_HEADER.pack(
            DUMP_MAGIC, DUMP_VERSION, len(meta), data_len, crc, zlib.crc32(meta), applied_min, last_index
        )
        os.pwrite(fd, header, 0)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)


def extract_lmdb(dump_path: str, info: DumpInfo, dest: str, *, durable: bool = True) -> None:
    """Copy the LMDB data file out of a dump, verifying its checksum."""
    src = os.open(dump_path, os.O_RDONLY)
    try:
        dst = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            crc = 0
            pos = info.data_offset
            end = info.data_offset + info.data_len
            while pos < end:
                chunk = os.pread(src, min(_COPY_CHUNK, end - pos), pos)
                if not chunk:
                    raise DumpError(f"{dump_path}: unexpected end of LMDB data")
                crc = zlib.crc32(chunk, crc)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(dst, view) :]
                pos += len(chunk)
            if crc != info.data_crc:
                raise DumpError(f"{dump_path}: LMDB data checksum mismatch")
            if durable:
                os.fsync(dst)
        finally:
            os.close(dst)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(dest)
        raise
    finally:
        os.close(src)


# ---------------------------------------------------------------------- pysyncobj glue


class SnapshotHost(Protocol):
    """What the snapshot code needs from the replica."""

    def snapshot_env(self) -> AbstractContextManager[lmdb.Environment]:
        """The current env, held so that it cannot be swapped/closed meanwhile (any thread)."""

    def applied_index(self) -> int:
        """Applied index stored in the current LMDB env (any thread)."""

    def ensure_applied_at_least(self, index: int) -> None:
        """Raise the stored applied index to ``index`` if lower (tick thread)."""

    def install_lmdb_file(self, path: str) -> None:
        """Replace the env's data file with ``path`` and reopen (tick thread)."""

    def align_journal(self, prev, last) -> None:
        """Drop journal entries before ``prev`` if it holds (prev, last) (tick thread)."""

    def note_dump_members(self, members: set) -> None:
        """The voting members the loaded dump records (the replica tells from them whether it is one)."""


@dataclass(frozen=True)
class ReceivedDump:
    """A dump from the leader, checked and (if newer than the local LMDB) extracted to the install path."""

    inode: int  # the received file's: the deserializer uses the preparation only for that very file
    info: DumpInfo
    extracted: bool


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class _Job:
    meta: bytes
    last_index: int
    epoch: int
    not_before: float = 0.0
    thread: threading.Thread | None = None
    error: BaseException | None = None
    started: float = 0.0
    finished: float = 0.0


class SnapshotManager:
    """Provides ``serializer`` / ``deserializer`` / ``serialize_checker`` for SyncObjConf."""

    def __init__(self, dump_path: str, host: SnapshotHost, *, durable: bool = True):
        self.dump_path = os.path.abspath(dump_path)
        self.dir = os.path.dirname(self.dump_path)
        self.host = host
        self.durable = durable
        self.building_path = self.dump_path + ".building"
        self.install_path = self.dump_path + ".install"
        self._job: _Job | None = None
        self._received: ReceivedDump | None = None  # prepared off the loop thread, loaded by the deserializer
        self._epoch = 0
        self._last_failure = 0.0
        self.snapshots_written = 0
        self.snapshots_installed = 0
        self.last_snapshot_seconds = 0.0
        for stale in (self.building_path, self.install_path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(stale)

    # -- serializer (tick thread) ------------------------------------------------------

    def serializer(self, tmp_path: str, data) -> None:
        """Record a snapshot job; leave a harmless tmp file for pysyncobj to rename.

        Must never raise: pysyncobj would keep its Serializer marked busy forever (no more
        compaction, no snapshot transfers to lagging followers).
        """
        job = _Job(meta=b"", last_index=0, epoch=self._epoch)
        self._job = job
        try:
            last, prev, cluster = data
            job.meta = encode_meta(last, prev, cluster)
            job.last_index = int(last[1])
            # After a failure, start the copy only after a pause (a failing disk must not
            # be hammered with a full LMDB copy every tick).
            job.not_before = self._last_failure + FAILURE_BACKOFF_S
            # No-op entries never reach the replicated method: make the stored applied
            # index cover everything pysyncobj has applied, so the copy's index >= this.
            self.host.ensure_applied_at_least(job.last_index)
        except BaseException as exc:  # noqa: BLE001 - recorded, reported as FAILED
            job.error = exc
        self._prepare_tmp(tmp_path)

    def _prepare_tmp(self, tmp_path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_path)
        try:
            os.link(self.dump_path, tmp_path)
            return
        except FileNotFoundError:
            pass
        except OSError:
            try:
                shutil.copyfile(self.dump_path, tmp_path)
                return
            except OSError:
                logger.exception("could not copy the current dump to %s", tmp_path)
        # No dump yet (or unreadable): an empty file. pysyncobj renames it over the dump;
        # an empty dump is rejected by the deserializer and the journal is still whole.
        with open(tmp_path, "wb"):
            pass

    # -- checker (tick thread) ---------------------------------------------------------

    def serialize_checker(self) -> int:
        job = self._job
        if job is None:
            return SERIALIZER_STATE.NOT_SERIALIZING
        if job.thread is None and job.error is None:
            if time.monotonic() < job.not_before:
                return SERIALIZER_STATE.SERIALIZING
            # pysyncobj has renamed tmp over the dump by now; drop a leftover hard link
            tmp = self.dump_path + ".tmp"
            with contextlib.suppress(OSError):
                if os.path.exists(tmp) and os.path.samefile(tmp, self.dump_path):
                    os.unlink(tmp)
            job.started = time.monotonic()
            job.thread = threading.Thread(
                target=self._build, args=(job,), name=f"snapshot-{os.path.basename(self.dir)}", daemon=True
            )
            job.thread.start()
            return SERIALIZER_STATE.SERIALIZING
        if job.thread is not None and job.thread.is_alive():
            return SERIALIZER_STATE.SERIALIZING
        self._job = None
        if job.error is None and job.epoch != self._epoch:
            job.error = RuntimeError("superseded by a snapshot installed meanwhile")
        if job.error is None:
            try:
                os.replace(self.building_path, self.dump_path)
                if self.durable:
                    fsync_dir(self.dir)
            except OSError as exc:
                job.error = exc
        if job.error is not None:
            self._last_failure = time.monotonic()
            logger.warning("snapshot at index %d failed: %r", job.last_index, job.error)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.building_path)
            return SERIALIZER_STATE.FAILED
        self.snapshots_written += 1
        self.last_snapshot_seconds = job.finished - job.started
        logger.info("snapshot at index %d written in %.3fs", job.last_index, self.last_snapshot_seconds)
        return SERIALIZER_STATE.SUCCESS

    def _build(self, job: _Job) -> None:
        try:
            with self.host.snapshot_env() as env:
                applied = self.host.applied_index()
                if applied < job.last_index:
                    raise RuntimeError(f"LMDB applied index {applied} < snapshot index {job.last_index}")
                write_dump(self.building_path, env, job.meta, job.last_index, applied, durable=self.durable)
                if self.durable:
                    env.sync(True)
        except BaseException as exc:  # noqa: BLE001 - reported by the checker
            job.error = exc
        finally:
            job.finished = time.monotonic()

    def wait_idle(self, timeout: float | None = None) -> None:
        job = self._job
        if job is not None and job.thread is not None:
            job.thread.join(timeout)

    # -- a dump received from the leader, made ready off the loop thread ------------------

    def prepare_received(self, received_path: str) -> None:
        """Any thread but the loop: make a dump the leader sent durable, check it and, if it is newer than the
        local LMDB, extract and verify its LMDB copy into ``install_path``. The deserializer, later on the loop
        thread, then only swaps files: a big install no longer stops the node's other replicas. Raises
        DumpError (or OSError) on a dump that cannot be installed; nothing local has changed then."""
        if self.durable:
            _fsync_file(received_path)
        info = read_dump_info(received_path)
        extracted = self.host.applied_index() < info.last_index
        if extracted:
            self._extract_checked(received_path, info)
        self._received = ReceivedDump(os.stat(received_path).st_ino, info, extracted)

    def _extract_checked(self, dump_path: str, info: DumpInfo) -> None:
        """Copy the dump's LMDB to install_path and check that it holds the snapshot's index (else removed)."""
        extract_lmdb(dump_path, info, self.install_path, durable=self.durable)
        try:
            copied = applied_index_of_lmdb_file(self.install_path)
            if copied < info.last_index:
                raise DumpError(f"{dump_path}: LMDB copy applied index {copied} < {info.last_index}")
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.install_path)
            raise

    def discard_received(self) -> None:
        """A prepared dump will not be loaded after all (the replica closed, or the rename failed)."""
        self._received = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.install_path)

    def _take_received(self, file_name: str) -> ReceivedDump | None:
        ready, self._received = self._received, None
        if ready is None:
            return None
        try:
            same = os.stat(file_name).st_ino == ready.inode
        except FileNotFoundError:
            same = False
        if not same:  # not the file that was prepared: the slow path checks this one from scratch
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.install_path)
            return None
        return ready

    # -- deserializer (tick thread) ----------------------------------------------------

    def deserializer(self, file_name: str):
        """Return (last applied entry, entry before, cluster) of the dump; install its LMDB
        if it is newer than the local one. Raises DumpError on an empty/garbage dump. A dump
        prepared by `prepare_received` costs only the swap of the LMDB file here."""
        ready = self._take_received(file_name)
        if self.durable:
            # A dump received from the leader was written and renamed without fsync.
            if ready is None:
                _fsync_file(file_name)
            fsync_dir(os.path.dirname(os.path.abspath(file_name)))
        info = ready.info if ready is not None else read_dump_info(file_name)
        self._epoch += 1  # an in-flight local snapshot must not replace this dump
        local = self.host.applied_index()
        if local < info.last_index:
            if ready is None or not ready.extracted:
                self._extract_checked(file_name, info)
            try:
                self.host.install_lmdb_file(self.install_path)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.install_path)
            self.snapshots_installed += 1
            logger.info("installed LMDB snapshot at index %d (local applied index was %d)", info.last_index, local)
        else:
            logger.info("keeping local LMDB (applied index %d >= snapshot index %d)", local, info.last_index)
        self.host.align_journal(info.prev, info.last)
        # PeerNodes, as pysyncobj compares them with its own node when it restores the membership from a dump
        members = {PeerNode(name) for name in info.cluster}
        self.host.note_dump_members(members)
        return (info.last, info.prev, members)

    # -- convenience for SyncObjConf -----------------------------------------------------

    def conf_kwargs(self) -> dict[str, Callable]:
        return {
            "serializer": self.serializer,
            "deserializer": self.deserializer,
            "serializeChecker": self.serialize_checker,
        }

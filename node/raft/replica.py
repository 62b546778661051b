"""One Raft replica of one shard: a pysyncobj ``SyncObj`` over an LMDB environment.

The replica knows nothing about the ledger: it replicates opaque payloads and applies
each committed one through ``apply_fn(write_txn, payload)`` in one LMDB write txn that
also stores the entry's Raft index (``replica_meta``/``applied_index``), so that a
restart, which replays the journal from the last snapshot, skips what LMDB already holds.

Durability (DESIGN.md, "Replication and durability"): entries are written to a
:class:`~tidebank.node.raft.journal.DurableJournal` without syncing, and

* the leader counts itself for an entry only after it is fdatasync'ed: pysyncobj
  computes the commit index at the top of ``SyncObj._onTick`` counting the leader's
  whole in-memory log, so :meth:`ShardReplica._onTick` syncs the journal before calling
  it. Entries appended during the previous tick (``_checkCommandsToApply`` and message
  handling in ``poll``) are thereby synced, as one group, before they are counted. The
  one path that appends and counts within the same tick is an election won inside
  ``_onTick`` (a single-member group): ``__onBecomeLeader`` adds the no-op right after
  ``__setState(LEADER)``, so the ``onStateChanged`` hook makes that one add sync at once;
* a follower acknowledges (``next_node_idx``) only after its journal is synced:
  :class:`DurableTCPTransport` holds back ``next_node_idx`` messages and sends them after
  one ``sync()`` at the end of the tick (or before any other message to keep the order),
  so all AppendEntries handled in one poll share one fdatasync;
* LMDB is written with ``sync=False``; snapshots (snapshots.py) fsync their copy and
  call ``env.sync``.

pysyncobj followers truncate their log whenever an AppendEntries overlaps it, even when
nothing conflicts (FACTS.md). With pipelined AppendEntries this can drop entries the
follower has already acknowledged, and the leader keeps counting them (its match index
never goes down). :func:`normalize_append_entries` rewrites such messages before
pysyncobj sees them so that only conflicting entries are ever truncated (Raft's rule),
and the acknowledgement never claims more than the message verified.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import pathlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import lmdb
import pysyncobj.pickle as sync_pickle
import pysyncobj.syncobj as syncobj_module
from pysyncobj import SyncObj, SyncObjConf, replicated
from pysyncobj.config import FAIL_REASON
from pysyncobj.monotonic import monotonic
from pysyncobj.transport import TCPTransport

from tidebank.node.links import DelayLine, LinkPolicy

from .journal import DurableJournal, fsync_dir, install, open_journal
from .snapshots import (
    SnapshotManager,
    open_meta_db,
    read_applied_index,
    write_applied_index,
)

logger = logging.getLogger(__name__)

LMDB_MAP_SIZE = 64 << 30  # sparse; LMDB only grows the file as pages are used
LMDB_MAX_DBS = 32

_ROLE_NAMES = {0: "follower", 1: "candidate", 2: "leader"}
_LEADER = 2


@dataclass(frozen=True)
class RaftTuning:
    """pysyncobj settings for a shard replica (SyncObjConf names in comments)."""

    append_entries_period: float = 0.01  # appendEntriesPeriod: heartbeat period (and send period if batching)
    # appendEntriesUseBatch: False ships entries as soon as they are added and wakes the tick thread on submit;
    # measured worse here (more messages for the same CPU): bench/RESULTS.md.
    append_entries_use_batch: bool = True
    auto_tick_period: float = 0.005  # autoTickPeriod: poll timeout of the tick thread
    raft_min_timeout: float = 0.3  # raftMinTimeout (must be > 3 * append_entries_period)
    raft_max_timeout: float = 0.6  # raftMaxTimeout
    leader_fallback_timeout: float = 1.0  # leaderFallbackTimeout: leader steps down without quorum
    connection_timeout: float = 3.5  # connectionTimeout (>= raft_max_timeout)
    connection_retry_time: float = 0.5  # connectionRetryTime (pysyncobj default 5 s)
    log_compaction_min_entries: int = 5000  # logCompactionMinEntries
    log_compaction_min_time: float = 300.0  # logCompactionMinTime
    commands_queue_size: int = 10_000  # commandsQueueSize: beyond it submit fails with QUEUE_FULL
    commands_wait_leader: bool = True  # commandsWaitLeader: queue (not fail) while no leader is known
    append_entries_batch_size_bytes: int = 1 << 20  # appendEntriesBatchSizeBytes
    log_compaction_batch_size: int = 1 << 20  # logCompactionBatchSize: snapshot transfer chunk
    send_buffer_size: int = 1 << 20  # sendBufferSize
    recv_buffer_size: int = 1 << 20  # recvBufferSize


class _AlreadyApplied:
    __slots__ = ()

    def __repr__(self) -> str:
        return "ALREADY_APPLIED"

    def __reduce__(self):
        return "ALREADY_APPLIED"


#: Result of an entry whose index LMDB already holds (journal replay after a restart).
ALREADY_APPLIED = _AlreadyApplied()


@dataclass(frozen=True)
class ApplyFailed:
    """Result of an entry whose ``apply_fn`` raised; the entry is recorded as applied."""

    reason: str


class ReplicaStorageError(Exception):
    """LMDB failed while applying: the entry is retried (never skipped) until it works."""


# ---------------------------------------------------------------------- AppendEntries


def normalize_append_entries(
    message: dict, term_at: Callable[[int], int | None], last_index: int
) -> tuple[dict, int | None]:
    """Rewrite an AppendEntries so pysyncobj only truncates on a real conflict.

    ``term_at(idx)`` gives the term of the local entry at ``idx`` (None if absent),
    ``last_index`` the local last index. Returns (message to hand to pysyncobj,
    ``next_node_idx`` its success acknowledgement must carry, or None to leave it).

    pysyncobj deletes every local entry after ``prevLogIdx`` whenever the local log is
    longer, then appends the message's entries. Raft deletes only from the first entry
    whose term differs. So: skip the prefix of the message that the log already holds;
    if everything matches and the log is longer, turn the message into a heartbeat at
    the local last index (no truncation) but acknowledge only ``prevLogIdx + len(entries)``
    and pass on a commit index no larger than that (the rest of the local log is not
    verified by this message).
    """
    if "prevLogIdx" not in message or "transmission" in message:
        return message, None
    prev_idx = message["prevLogIdx"]
    prev_term = message["prevLogTerm"]
    entries = message.get("entries") or []
    if prev_idx is None or term_at(prev_idx) != prev_term:
        return message, None  # pysyncobj answers with a reset
    for i, entry in enumerate(entries):
        if entry[1] != prev_idx + 1 + i:
            return message, None  # not contiguous: leave it to pysyncobj
    n = len(entries)
    end = prev_idx + n
    if last_index <= prev_idx:
        return message, None  # nothing after prev locally: nothing can be truncated
    k = 0
    while k < n and term_at(entries[k][1]) == entries[k][2]:
        k += 1
    if k < n:
        if k == 0:
            return message, None  # first new entry conflicts (or is new): pysyncobj is right
        rewritten = dict(message)
        rewritten["prevLogIdx"] = entries[k - 1][1]
        rewritten["prevLogTerm"] = entries[k - 1][2]
        rewritten["entries"] = entries[k:]
        return rewritten, None
    # every entry in the message is already in the local log
    rewritten = dict(message)
    rewritten["entries"] = []
    if last_index == end:
        rewritten["prevLogIdx"] = end
        rewritten["prevLogTerm"] = entries[-1][2] if entries else prev_term
        return rewritten, None
    rewritten["prevLogIdx"] = last_index
    rewritten["prevLogTerm"] = term_at(last_index)
    rewritten["commit_index"] = min(message["commit_index"], end)
    return rewritten, end + 1


class DurableTCPTransport(TCPTransport):
    """TCPTransport that acknowledges entries only once they are on disk.

    ``next_node_idx`` messages are held back and sent after one journal ``sync()``: at the
    end of the tick (:meth:`flush_acks`, called by the replica) or before any other
    message is sent, so the order of messages on the wire never changes.
    AppendEntries are normalized (:func:`normalize_append_entries`) before pysyncobj
    handles them. A vote request is sent only with a synced log.

    Simulated inter-DC faults (links.py): with a :class:`~tidebank.node.links.LinkPolicy`
    on the replica (``syncObj._links``), every message leaving the hold-back stage goes
    through a :class:`~tidebank.node.links.DelayLine` (dropped on a cut link, queued FIFO
    per destination on a delayed one and sent by :meth:`_onTick` once due), and messages
    received from a node of a cut-off DC are dropped before anything else sees them.
    """

    def __init__(self, syncObj, selfNode, otherNodes):
        self._journal: DurableJournal = syncObj._journal
        policy: LinkPolicy | None = getattr(syncObj, "_links", None)
        self._link: DelayLine | None = (
            DelayLine(policy, functools.partial(TCPTransport.send, self)) if policy is not None else None
        )
        self._deferred_acks: list[tuple[Any, dict]] = []
        self._ack_override: int | None = None
        self._chunks: dict[Any, bytearray] = {}
        self.acks_sent = 0
        self.ack_flushes = 0
        self.rewritten_append_entries = 0
        self.truncations_avoided = 0  # messages after which pysyncobj would have cut acked entries
        super().__init__(syncObj, selfNode, otherNodes)

    # -- incoming -----------------------------------------------------------------------

    def _onMessageReceived(self, node, message):
        if self._link is not None and not self._link.accept_from(node):
            return  # simulated cut: the message never arrived
        if isinstance(message, dict) and message.get("type") == "append_entries":
            message, override = self._prepare_append_entries(node, message)
            self._ack_override = override
            try:
                super()._onMessageReceived(node, message)
            finally:
                self._ack_override = None
            return
        super()._onMessageReceived(node, message)

    def _prepare_append_entries(self, node, message: dict) -> tuple[dict, int | None]:
        transmission = message.get("transmission")
        if transmission is not None:
            # A single entry larger than appendEntriesBatchSizeBytes arrives in pieces;
            # reassemble it here too so that the final piece can be normalized.
            data = message.get("data") or b""
            if transmission == "start":
                self._chunks[node] = bytearray(data)
                return message, None
            buf = self._chunks.get(node)
            if buf is None:
                return message, None
            buf += data
            if transmission != "finish":
                return message, None
            del self._chunks[node]
            try:
                entry = tuple(sync_pickle.loads(bytes(buf)))
            except Exception:
                return message, None
            message = {k: v for k, v in message.items() if k not in ("transmission", "data")}
            message["entries"] = [entry]
        journal = self._journal
        new_message, override = normalize_append_entries(message, journal.entry_term, journal.last_index())
        if new_message is not message:
            self.rewritten_append_entries += 1
            if override is not None:
                self.truncations_avoided += 1
        return new_message, override

    # -- outgoing -----------------------------------------------------------------------

    def send(self, node, message):
        mtype = message.get("type") if isinstance(message, dict) else None
        if mtype == "next_node_idx":
            if self._ack_override is not None and message.get("success"):
                message = dict(message)
                message["next_node_idx"] = self._ack_override
            self._deferred_acks.append((node, message))
            return True
        if self._deferred_acks:
            self.flush_acks()
        if mtype == "request_vote":
            self._journal.sync()
        return self._wire_send(node, message)

    def _wire_send(self, node, message) -> bool:
        """Below the hold-back stage: through the simulated link, if any, to TCP."""
        if self._link is None:
            return super().send(node, message)
        return self._link.send(node, message)

    def flush_acks(self) -> None:
        """fdatasync the journal once, then send the held-back acknowledgements."""
        if not self._deferred_acks:
            return
        self._journal.sync()
        acks, self._deferred_acks = self._deferred_acks, []
        self.ack_flushes += 1
        for node, message in acks:
            self._wire_send(node, message)
        self.acks_sent += len(acks)

    def _onTick(self):
        """Tick callback (every SyncObj tick, before the poll): connect, and release the
        delayed messages that are due. Never sleeps."""
        super()._onTick()
        if self._link is not None:
            self._link.flush()

    def link_stats(self) -> dict[str, int]:
        return self._link.stats() if self._link is not None else {}

    def destroy(self):
        self._deferred_acks = []
        self._chunks = {}
        if self._link is not None:
            self._link.clear()
        super().destroy()


# ---------------------------------------------------------------------- env gate


class _EnvGate:
    """Readers/writer gate around the LMDB env: read txns vs. env swap by snapshot install.

    Shared holds are re-entrant per thread; the exclusive side (tick thread only) waits
    for the current readers and keeps new ones out meanwhile.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0
        self._local = threading.local()

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        depth = getattr(self._local, "depth", 0)
        if depth == 0:
            with self._cond:
                while self._writer or self._writers_waiting:
                    self._cond.wait()
                self._readers += 1
        self._local.depth = depth + 1
        try:
            yield
        finally:
            self._local.depth = depth
            if depth == 0:
                with self._cond:
                    self._readers -= 1
                    if self._readers == 0:
                        self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


# ---------------------------------------------------------------------- encryptor cache


_encryptor_patch_lock = threading.Lock()


def _install_encryptor_cache() -> None:
    """pysyncobj derives the Fernet key with PBKDF2 (100k rounds) per SyncObj: cache it
    per password so that many shard replicas in one process start quickly. Fernet
    objects are stateless and thread-safe."""
    with _encryptor_patch_lock:
        current = syncobj_module.getEncryptor
        if getattr(current, "_tidebank_cached", False):
            return
        cached = functools.lru_cache(maxsize=16)(current)
        cached._tidebank_cached = True
        syncobj_module.getEncryptor = cached


# ---------------------------------------------------------------------- replica


@dataclass(frozen=True)
class _TickStats:
    at: float
    role: int
    term: int
    commit_index: int
    applied_index: int
    leader: str | None
    has_quorum: bool
    quorum_recent: bool


class ShardReplica(SyncObj):
    """One replica of one shard: pysyncobj Raft + DurableJournal + LMDB + snapshots."""

    def __init__(
        self,
        *,
        shard_id: int,
        raft_address: str,
        partner_addresses: list[str],
        data_dir: pathlib.Path,
        secret: str,
        apply_fn: Callable[[lmdb.Transaction, bytes], object],
        open_fn: Callable[[lmdb.Environment], None] | None = None,
        raft: RaftTuning = RaftTuning(),
        fsync: bool = True,
        links: LinkPolicy | None = None,
    ):
        """``links``: simulated inter-DC faults for this replica's Raft traffic (None: none)."""
        if not secret:
            raise ValueError("a cluster secret is required: pysyncobj unpickles every Raft frame")
        install()
        _install_encryptor_cache()
        self.shard_id = shard_id
        self.raft_address = raft_address
        self.data_dir = pathlib.Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.tuning = raft
        self.fsync = fsync
        self._links = links  # read by DurableTCPTransport while SyncObj.__init__ builds it
        self._apply_fn = apply_fn
        self._open_fn = open_fn
        self._gate = _EnvGate()
        self._env: lmdb.Environment | None = None
        self._meta_db = None
        self._closed = False
        self._close_lock = threading.Lock()
        self._storage_error_logged_at = 0.0
        self.apply_failures = 0
        self._lmdb_dir = self.data_dir / "lmdb"
        self._journal_path = str(self.data_dir / "raft.journal")
        self._dump_path = str(self.data_dir / "raft.dump")
        self._tick_stats = _TickStats(monotonic(), 0, 0, 0, 0, None, False, False)
        self._open_env()
        try:
            self._journal: DurableJournal = open_journal(self._journal_path, fsync_enabled=fsync)
        except BaseException:
            self._env.close()
            raise
        try:
            self._snapshots = SnapshotManager(self._dump_path, self, durable=fsync)
            conf = SyncObjConf(
                password=secret,
                bindAddress=raft_address,  # default would bind 0.0.0.0: never expose Raft ports
                autoTick=True,
                autoTickPeriod=raft.auto_tick_period,
                appendEntriesPeriod=raft.append_entries_period,
                appendEntriesUseBatch=raft.append_entries_use_batch,
                raftMinTimeout=raft.raft_min_timeout,
                raftMaxTimeout=raft.raft_max_timeout,
                leaderFallbackTimeout=raft.leader_fallback_timeout,
                connectionTimeout=raft.connection_timeout,
                connectionRetryTime=raft.connection_retry_time,
                logCompactionMinEntries=raft.log_compaction_min_entries,
                logCompactionMinTime=raft.log_compaction_min_time,
                logCompactionBatchSize=raft.log_compaction_batch_size,
                commandsQueueSize=raft.commands_queue_size,
                commandsWaitLeader=raft.commands_wait_leader,
                appendEntriesBatchSizeBytes=raft.append_entries_batch_size_bytes,
                sendBufferSize=raft.send_buffer_size,
                recvBufferSize=raft.recv_buffer_size,
                journalFile=self._journal_path,
                fullDumpFile=self._dump_path,
                dynamicMembershipChange=False,
                useFork=False,
                onStateChanged=self._on_state_changed,
                **self._snapshots.conf_kwargs(),
            )
            partners = [p for p in partner_addresses if p != raft_address]
            super().__init__(raft_address, partners, conf=conf, transportClass=DurableTCPTransport)
        except BaseException:
            self._journal._destroy()
            self._env.close()
            raise
        # pysyncobj stops the tick thread once the thread that created the SyncObj exits;
        # a replica must live until close(), whichever thread built it.
        self._SyncObj__mainThread = threading.main_thread()

    # ------------------------------------------------------------------ LMDB env

    def _open_env(self) -> None:
        self._lmdb_dir.mkdir(parents=True, exist_ok=True)
        env = lmdb.open(
            str(self._lmdb_dir),
            max_dbs=LMDB_MAX_DBS,
            map_size=LMDB_MAP_SIZE,
            sync=False,
            metasync=False,
            readahead=False,
            lock=True,
        )
        try:
            meta_db = open_meta_db(env)
            if self._open_fn is not None:
                self._open_fn(env)
        except BaseException:
            env.close()
            raise
        self._env = env
        self._meta_db = meta_db

    @property
    def env(self) -> lmdb.Environment:
        """The current LMDB environment (replaced when a snapshot is installed)."""
        return self._env

    @contextlib.contextmanager
    def read_txn(self) -> Iterator[lmdb.Transaction]:
        """A read-only txn on the current env; the env is not swapped while it is open.

        Keep it short: a snapshot install on the tick thread waits for open read txns.
        """
        with self._gate.shared():
            txn = self._env.begin()
            try:
                yield txn
            finally:
                txn.abort()

    # SnapshotHost -------------------------------------------------------------------

    @contextlib.contextmanager
    def snapshot_env(self) -> Iterator[lmdb.Environment]:
        with self._gate.shared():
            yield self._env

    def applied_index(self) -> int:
        with self._gate.shared(), self._env.begin() as txn:
            return read_applied_index(txn, self._meta_db)

    def ensure_applied_at_least(self, index: int) -> None:
        with self._env.begin(write=True) as txn:
            if read_applied_index(txn, self._meta_db) < index:
                write_applied_index(txn, self._meta_db, index)

    def install_lmdb_file(self, path: str) -> None:
        with self._gate.exclusive():
            self._env.close()
            os.replace(path, self._lmdb_dir / "data.mdb")
            if self.fsync:
                fsync_dir(str(self._lmdb_dir))
            self._open_env()

    def align_journal(self, prev, last) -> None:
        self._journal.align_to_snapshot(tuple(prev), tuple(last))

    # ------------------------------------------------------------------ apply

    @replicated
    def _apply_entry(self, payload: bytes):
        index = self.raftLastApplied + 1  # pysyncobj increments it after we return
        env = self._env
        meta_db = self._meta_db
        try:
            txn = env.begin(write=True)
        except lmdb.Error as exc:
            raise ReplicaStorageError(f"cannot begin write txn for entry {index}: {exc!r}") from exc
        try:
            if index <= read_applied_index(txn, meta_db):
                txn.abort()
                return ALREADY_APPLIED
            try:
                result = self._apply_fn(txn, payload)
            except (lmdb.Error, MemoryError, OSError) as exc:
                # Not deterministic across replicas (map full, I/O): never skip the entry.
                raise ReplicaStorageError(f"storage error applying entry {index}: {exc!r}") from exc
            except Exception as exc:
                txn.abort()
                txn = None
                self.apply_failures += 1
                logger.critical(
                    "shard %s: apply of entry %d raised %r; recording it as failed",
                    self.shard_id,
                    index,
                    exc,
                    exc_info=True,
                )
                with env.begin(write=True) as txn2:
                    write_applied_index(txn2, meta_db, index)
                return ApplyFailed(f"{type(exc).__name__}: {exc}")
            write_applied_index(txn, meta_db, index)
            txn.commit()
            txn = None
            return result
        except lmdb.Error as exc:
            raise ReplicaStorageError(f"storage error applying entry {index}: {exc!r}") from exc
        finally:
            if txn is not None:
                with contextlib.suppress(lmdb.Error):
                    txn.abort()

    def submit(self, payload: bytes, callback: Callable[[object, int], None]) -> None:
        """Replicate ``payload``; ``callback(result, FAIL_REASON)`` runs on the tick thread
        once it is applied or has failed.

        ``result`` is what ``apply_fn`` returned, :class:`ApplyFailed` if it raised, or
        ``ALREADY_APPLIED``. QUEUE_FULL is reported synchronously in the caller's thread.
        No callback ever comes for a command still pending at ``close()``, nor for an entry
        whose apply hit a storage error (pysyncobj drops its waiters before applying):
        callers need their own timeout, and a timeout means "outcome unknown".
        """
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            raise TypeError("payload must be bytes")
        if self._closed:
            callback(None, FAIL_REASON.REQUEST_DENIED)
            return
        self._apply_entry(bytes(payload), callback=callback)

    # ------------------------------------------------------------------ tick

    def _on_state_changed(self, old_state: int, new_state: int) -> None:
        if new_state == _LEADER:
            # __onBecomeLeader appends the no-op right after this callback; if the election
            # was won inside _onTick (single-member group) it would be counted in the same
            # tick, before our sync at the top of the next one. Sync it on add instead.
            self._journal.sync_on_next_add()
        logger.info(
            "shard %s %s: %s -> %s",
            self.shard_id,
            self.raft_address,
            _ROLE_NAMES.get(old_state, old_state),
            _ROLE_NAMES.get(new_state, new_state),
        )

    def _onTick(self, timeToWait=0.0):
        # Group commit: everything appended since the last tick is made durable before
        # pysyncobj counts the leader's own log for the commit index.
        self._journal.sync()
        try:
            super()._onTick(timeToWait)
        except ReplicaStorageError:
            now = monotonic()
            if now - self._storage_error_logged_at > 5.0:
                self._storage_error_logged_at = now
                logger.critical("shard %s: apply is stuck on a storage error, retrying", self.shard_id, exc_info=True)
            time.sleep(0.05)
        finally:
            self._SyncObj__transport.flush_acks()
            self._record_tick_stats()

    def _record_tick_stats(self) -> None:
        now = monotonic()
        role = self._SyncObj__raftState
        leader = self._getLeader()
        quorum_recent = False
        if role == _LEADER:
            others = self._SyncObj__otherNodes
            deadline = now - self.tuning.leader_fallback_timeout
            last_response = self._SyncObj__lastResponseTime
            count = 1 + sum(1 for node in others if last_response.get(node, 0) > deadline)
            quorum_recent = count > (len(others) + 1) / 2
        self._tick_stats = _TickStats(
            at=now,
            role=role,
            term=self.raftCurrentTerm,
            commit_index=self.raftCommitIndex,
            applied_index=self.raftLastApplied,
            leader=getattr(leader, "address", None) if leader is not None else None,
            has_quorum=self.hasQuorum,
            quorum_recent=quorum_recent,
        )

    # ------------------------------------------------------------------ status

    def is_leader(self) -> bool:
        """Leader according to pysyncobj, with a majority answering within
        leaderFallbackTimeout, as of a tick that is itself that recent."""
        stats = self._tick_stats
        if self._closed or stats.role != _LEADER or not stats.quorum_recent:
            return False
        return monotonic() - stats.at < self.tuning.leader_fallback_timeout

    def leader_address(self) -> str | None:
        stats = self._tick_stats
        if monotonic() - stats.at >= self.tuning.leader_fallback_timeout:
            return None
        return stats.leader

    def status(self) -> dict:
        stats = self._tick_stats
        transport = self._SyncObj__transport
        return {
            "shard_id": self.shard_id,
            "raft_address": self.raft_address,
            "role": _ROLE_NAMES.get(stats.role, str(stats.role)),
            "term": stats.term,
            "commit_index": stats.commit_index,
            "applied_index": stats.applied_index,
            "leader": stats.leader,
            "has_quorum": stats.quorum_recent if stats.role == _LEADER else stats.has_quorum,
            "is_leader": self.is_leader(),
            "log_size": len(self._journal),
            "journal_sync_count": self._journal.sync_count,
            "ack_flushes": transport.ack_flushes,
            "rewritten_append_entries": transport.rewritten_append_entries,
            "truncations_avoided": transport.truncations_avoided,
            **transport.link_stats(),
            "snapshots_written": self._snapshots.snapshots_written,
            "snapshots_installed": self._snapshots.snapshots_installed,
            "apply_failures": self.apply_failures,
            "tick_age": monotonic() - stats.at,
            "closed": self._closed,
        }

    # ------------------------------------------------------------------ close

    def close(self) -> None:
        """Stop the tick thread, close sockets, journal and LMDB. Idempotent."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        tick_thread = self._SyncObj__thread
        if tick_thread is threading.current_thread():
            raise RuntimeError("ShardReplica.close() must not be called from its tick thread")
        try:
            if tick_thread is not None and tick_thread.is_alive():
                self.destroy_synchronous()
            else:
                self._doDestroy()
        finally:
            self._snapshots.wait_idle()
            self._journal._destroy()  # idempotent; pysyncobj's _doDestroy normally did it
            with self._gate.exclusive():
                if self._env is not None:
                    self._env.close()

"""One Raft replica of one shard: a pysyncobj ``SyncObj`` over an LMDB environment, ticked by its node's loop.

The replica knows nothing about the ledger: it replicates opaque payloads and applies
each committed one through ``apply_fn(write_txn, payload)`` in one LMDB write txn that
also stores the entry's Raft index (``replica_meta``/``applied_index``), so that a
restart, which replays the journal from the last snapshot, skips what LMDB already holds.

Its node's `RaftHost` (loop.py) ticks it and carries its messages; it never runs a
thread of its own. Durability (docs/architecture.md, "Replication and durability"): entries go
to a :class:`~tidebank.node.raft.journal.DurableJournal` without syncing; the loop
fdatasyncs every journal written to before anything leaves the node, so

* the leader counts itself for an entry only after it is on disk: pysyncobj computes
  the commit index at the top of ``_onTick`` counting the leader's whole log, and the
  entries appended since the previous tick were synced at the end of the previous
  turn. The one path that appends and counts within the same tick is an election won
  inside ``_onTick`` (a single-member group): the ``onStateChanged`` hook makes that
  no-op sync on add;
* a follower's acknowledgement (``next_node_idx``) leaves only after the entries it
  acknowledges are synced;
* LMDB is written with ``sync=False``; snapshots (snapshots.py) fsync their copy.

**Storage errors stop the apply loop** (node/storage.py): an LMDB, memory or I/O error
while applying may hit this replica only, so the entry is never recorded as failed or
skipped. The replica records the reason (``apply_error``), stops applying, steps down
if it leads and never campaigns again; it still journals and acknowledges entries, so
the shard keeps its quorum. Its LMDB stays at the last entry it applied, no snapshot
is taken, and after the cause is fixed a restart replays the journal from there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import pathlib
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass

import lmdb
from pysyncobj import SyncObj, SyncObjConf, replicated
from pysyncobj.config import FAIL_REASON

from tidebank.node.raft import pysyncobj_patches as patches
from tidebank.node.raft.journal import DurableJournal, create_journal, fsync_dir, open_journal
from tidebank.node.raft.loop import RaftHost
from tidebank.node.raft.placement import ABANDON, START, TRANSFER, HandoverState, LeaderView, PlacementTuning
from tidebank.node.raft.snapshots import (
    SnapshotManager,
    open_meta_db,
    read_applied_index,
    write_applied_index,
)
from tidebank.node.raft.transport import GroupTransport, PeerNode
from tidebank.node.storage import STORAGE_ERRORS

logger = logging.getLogger(__name__)

LMDB_MAP_SIZE = 64 << 30  # sparse; LMDB only grows the file as pages are used
LMDB_MAX_DBS = 64
NEVER_CAMPAIGN_S = 3600.0
VOTER, JOINING, LEAVING = "voter", "joining", "leaving"
# A leaving leader hands over at once, retries each second, and lets its target lag more than a preferred one may
LEAVING_HANDOVER = PlacementTuning(stable_s=0.0, pause_s=0.5, retry_s=1.0, lag_max=256)
JOIN_CAMPAIGN_LAG_MAX = 256  # entries a joining member may lag the leader's commit index and still campaign
FIRST_ELECTION_PREFERRED_S = 0.2  # below raft_min_timeout: the preferred replica of a new shard campaigns first
# One tick applies committed entries for about this long at most, then the loop turns (other replicas tick,
# heartbeats are read) and comes back: a replica catching up on thousands of entries (a new one in a move)
# would otherwise hold its node's loop for seconds, stalling the node's leaders and drawing elections.
APPLY_TICK_BUDGET_S = 0.05
APPLY_ENTRIES_PER_TICK_MAX = 4096
# Lease reads: a leader whose heartbeat round started at t was answered by a majority serves linearizable
# reads with no further round until t + LEASE_FRACTION * raft_min_timeout. Every member (the asker included)
# refuses a pre-vote for raft_min_timeout after it last heard a leader, so no other leader can be elected
# before t + raft_min_timeout; the fraction leaves room for clock drift between nodes. TIDEBANK_LEASE_READS=0
# turns leases off (every read then waits for a heartbeat round, etcd's ReadIndex).
LEASE_FRACTION = 0.5
READ_ROUNDS_KEPT = 64  # start times of the latest read rounds (a lease needs the one a majority confirmed)


@dataclass(frozen=True)
class RaftTuning:
    """pysyncobj settings for a shard replica (SyncObjConf names in comments)."""

    # appendEntriesPeriod: the heartbeat. Entries are sent as soon as they are appended (loop.py), not on it.
    append_entries_period: float = 0.05
    raft_min_timeout: float = 0.4  # raftMinTimeout (must be > 3 * append_entries_period)
    raft_max_timeout: float = 0.8  # raftMaxTimeout
    leader_fallback_timeout: float = 1.0  # leaderFallbackTimeout: leader steps down without quorum
    connection_timeout: float = 3.5  # connectionTimeout (>= raft_max_timeout)
    log_compaction_min_entries: int = 5000  # logCompactionMinEntries
    log_compaction_min_time: float = 300.0  # logCompactionMinTime
    commands_queue_size: int = 10_000  # commandsQueueSize: beyond it submit fails with QUEUE_FULL
    commands_wait_leader: bool = True  # commandsWaitLeader: queue (not fail) while no leader is known
    # appendEntriesBatchSizeBytes: an entry larger than this is sent in pickled chunks; entries stay far below
    append_entries_batch_size_bytes: int = 64 << 20
    log_compaction_batch_size: int = 1 << 20  # logCompactionBatchSize: snapshot transfer chunk


class _AlreadyApplied:
    __slots__ = ()

    def __repr__(self) -> str:
        return "ALREADY_APPLIED"

    def __reduce__(self):
        return "ALREADY_APPLIED"


#: Result of an entry whose index LMDB already holds (journal replay after a restart).
ALREADY_APPLIED = _AlreadyApplied()


class _ApplyStopped:
    __slots__ = ()

    def __repr__(self) -> str:
        return "APPLY_STOPPED"


#: Result of an entry committed while this replica's apply loop is stopped (storage error): not applied here.
APPLY_STOPPED = _ApplyStopped()


@dataclass(frozen=True)
class ApplyFailed:
    """Result of an entry whose ``apply_fn`` raised a deterministic error; recorded as applied everywhere."""

    reason: str


class ReadNotLeaderError(Exception):
    """A read_index request on a replica that is not (or no longer) the leader: read elsewhere."""


class MembershipBusyError(Exception):
    """A membership change cannot start now (another one is not committed yet, or the leader would remove
    itself); nothing changed, retry later."""


class PartnerAnsweringError(Exception):
    """An eviction was refused: the replica to take out has answered this leader recently (it is not dead;
    move it the normal way, which adds its replacement first)."""


class ApplyStoppedError(Exception):
    """This replica's apply loop is stopped on a storage error: it cannot do what needs its LMDB current."""


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



# ---------------------------------------------------------------------- replica


@dataclass
class _DumpInstall:
    """A dump from the leader being made ready off the loop thread; the replica is away until it is."""

    path: str
    leader: object  # the PeerNode that sent it: told the next index it needs once the dump is loaded
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    error: BaseException | None = None
    thread: threading.Thread | None = None


@dataclass
class _PreVote:
    """One pre-vote round of this replica: who said they would vote for it."""

    round: int
    started: float
    granted: set = dataclasses.field(default_factory=set)
    passed: bool = False


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
    members: tuple[str, ...] = ()


class ShardReplica(SyncObj):
    """One replica of one shard: pysyncobj Raft + DurableJournal + LMDB + snapshots, on its node's RaftHost."""

    def __init__(
        self,
        *,
        shard_id: int,
        host: RaftHost,
        members: list[str],
        data_dir: pathlib.Path,
        apply_fn: Callable[[lmdb.Transaction, bytes], object],
        open_fn: Callable[[lmdb.Environment], None] | None = None,
        raft: RaftTuning = RaftTuning(),
        fsync: bool = True,
        on_apply_stopped: Callable[[int, str], None] | None = None,
        map_size: int | None = None,
        preferred_leader: str | None = None,
        placement: PlacementTuning | None = None,
        membership: str = VOTER,
    ):
        """``members``: the node names of every replica of the shard, this node's included. ``map_size``: LMDB's
        map size in bytes (default TIDEBANK_LMDB_MAP_SIZE, else 64 GiB, sparse). ``preferred_leader``: the member
        that should lead when it is healthy (placement.py); with ``placement`` set, another leader hands over to
        it (None, the default, as on a node without TIDEBANK_LEADER_HANDOVER=1: no hand-overs). ``membership``:
        VOTER, or JOINING / LEAVING while a replica move brings this replica in or takes it out (who may
        campaign then: `_may_campaign`; a LEAVING leader hands its leadership to a caught-up partner)."""
        if host.name not in members:
            raise ValueError(f"node {host.name} is not a member of shard {shard_id}: {members}")
        patches.install_journal(create_journal)
        self.shard_id = shard_id
        self.host = host
        self.data_dir = pathlib.Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.tuning = raft
        self.fsync = fsync
        self.touched = True  # the loop ticks a replica that received something; set by GroupTransport
        self.before_tick: Callable[[], object] | None = None  # runs on the loop thread before each tick
        # leader: read rounds started (read_index, leases); tagged on every append_entries sent. Counted from the
        # wall clock in ms, so that a partner's answer to a round of this replica's previous life (buffered across
        # a restart) names a round lower than any of this life and confirms none of them.
        self.read_round = time.time_ns() // 1_000_000
        self._round_started: OrderedDict[int, float] = OrderedDict()  # leader: round -> when it began
        self.lease_reads_enabled = os.environ.get("TIDEBANK_LEASE_READS", "1") != "0"
        self._lease_until = 0.0  # leader: reads need no heartbeat round before this (monotonic; loop thread)
        self._no_lease_before = 0.0  # leader: no lease until then (a hand-over asked a partner to campaign)
        self.lease_reads = 0  # reads served under a lease
        self._acked_rounds: dict[str, int] = {}  # leader: per partner, the highest read round it answered
        self._new_reads: list[Future] = []  # read_index requests not yet in a round (any thread appends)
        self._reads: list[tuple[int, int, Future]] = []  # (round, read index, future), loop thread only
        self._reads_lock = threading.Lock()
        self._node_transport = host.transport  # read by GroupTransport while SyncObj.__init__ builds it
        self._apply_fn = apply_fn
        self._open_fn = open_fn
        self._on_apply_stopped = on_apply_stopped
        self._map_size = map_size or int(os.environ.get("TIDEBANK_LMDB_MAP_SIZE", LMDB_MAP_SIZE))
        self._gate = _EnvGate()
        self._env: lmdb.Environment | None = None
        self._meta_db = None
        self._closed = False
        self._close_lock = threading.Lock()
        self.apply_failures = 0
        self.apply_error: str | None = None
        self._lmdb_dir = self.data_dir / "lmdb"
        self._journal_path = str(self.data_dir / "raft.journal")
        self._dump_path = str(self.data_dir / "raft.dump")
        self._tick_stats = _TickStats(time.monotonic(), 0, 0, 0, 0, None, False, False)
        if preferred_leader is not None and preferred_leader not in members:
            raise ValueError(f"preferred leader {preferred_leader} is not a member of shard {shard_id}: {members}")
        self.preferred_leader = preferred_leader
        # voter, or a replica move's JOINING (catching up) / LEAVING (replaced) replica (see _may_campaign)
        self.membership = membership
        # Whether this replica is a voting member by its own log (membership entries, the dump's list); None
        # until it has seen either: then the topology's `membership` decides (a joining replica waits).
        self._self_member: bool | None = None
        self._dump_install: _DumpInstall | None = None
        # when an append_entries of a current leader last arrived (transport); a replica just started counts as
        # having heard one (it may have answered a leader's heartbeat just before it stopped: leases rely on it)
        self.leader_heard_at = time.monotonic()
        self._transfer_vote_until = float("-inf")  # TimeoutNow from the leader: campaign with no pre-vote till then
        self._pre_vote: _PreVote | None = None
        self._pre_vote_rounds = 0
        self.pre_votes_refused = 0  # pre-vote requests of partners this replica refused (it heard a leader)
        self._apply_per_tick = 8  # committed entries one tick applies at most (adapted: _SyncObj__applyLogEntries)
        self.leader_commit_seen = 0  # the commit index of the last append_entries from a leader (GroupTransport)
        self._election_deferred_at = float("-inf")
        self._leaving_handover = HandoverState(LEAVING_HANDOVER)
        self._leaving_target = None
        self._handover = HandoverState(placement) if placement is not None else None
        self._leading_since = 0.0
        self._open_env()
        try:
            self._journal: DurableJournal = open_journal(self._journal_path, fsync_enabled=fsync)
        except BaseException:
            self._env.close()
            raise
        try:
            self._snapshots = SnapshotManager(self._dump_path, self, durable=fsync)
            conf = SyncObjConf(
                autoTick=False,  # the node's RaftHost ticks every replica from one thread
                appendEntriesPeriod=raft.append_entries_period,
                appendEntriesUseBatch=True,
                raftMinTimeout=raft.raft_min_timeout,
                raftMaxTimeout=raft.raft_max_timeout,
                leaderFallbackTimeout=raft.leader_fallback_timeout,
                connectionTimeout=raft.connection_timeout,
                logCompactionMinEntries=raft.log_compaction_min_entries,
                logCompactionMinTime=raft.log_compaction_min_time,
                logCompactionBatchSize=raft.log_compaction_batch_size,
                commandsQueueSize=raft.commands_queue_size,
                commandsWaitLeader=raft.commands_wait_leader,
                appendEntriesBatchSizeBytes=raft.append_entries_batch_size_bytes,
                journalFile=self._journal_path,
                fullDumpFile=self._dump_path,
                dynamicMembershipChange=True,  # replica moves (cluster/membership.py); one change at a time
                useFork=False,
                pollerType="select",
                onStateChanged=self._on_state_changed,
                **self._snapshots.conf_kwargs(),
            )
            partners = [PeerNode(m) for m in members if m != host.name]
            super().__init__(PeerNode(host.name), partners, conf=conf, nodeClass=PeerNode,
                             transportClass=GroupTransport)
            self._transport: GroupTransport = patches.transport(self)
            if self.raftCurrentTerm == 0:
                self.leader_heard_at = float("-inf")  # a new replica never answered any leader: no promise to keep
            patches.receive_dumps_in_background(self, self._on_dump_received)
            if preferred_leader == host.name and self.raftCurrentTerm == 0 and placement is not None:
                # a new shard: its preferred replica campaigns first, so the first leaders need no handover
                patches.hold_election(self, time.monotonic() + FIRST_ELECTION_PREFERRED_S)
            host.add(self)
            host.call(lambda: host.transport.announce_connections(self._transport))
        except BaseException:
            self._journal._destroy()
            self._env.close()
            raise

    # ------------------------------------------------------------------ LMDB env

    def _open_env(self) -> None:
        self._lmdb_dir.mkdir(parents=True, exist_ok=True)
        env = lmdb.open(
            str(self._lmdb_dir),
            max_dbs=LMDB_MAX_DBS,
            map_size=self._map_size,
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

        Keep it short: a snapshot install on the loop thread waits for open read txns.
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
        if self.apply_error is not None:
            # LMDB stopped at the last entry applied here: a snapshot claiming a later index would lose entries.
            raise ApplyStoppedError(f"apply stopped: {self.apply_error}")
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
        if self.apply_error is not None:
            return APPLY_STOPPED
        try:
            return self._apply_in_txn(index, payload)
        except STORAGE_ERRORS as exc:
            self._stop_applying(index, exc)
            return APPLY_STOPPED

    def _apply_in_txn(self, index: int, payload: bytes):
        env = self._env
        meta_db = self._meta_db
        txn = env.begin(write=True)
        try:
            if index <= read_applied_index(txn, meta_db):
                txn.abort()
                txn = None
                return ALREADY_APPLIED
            try:
                result = self._apply_fn(txn, payload)
            except STORAGE_ERRORS:
                raise
            except Exception as exc:  # deterministic: every replica fails this entry alike
                txn.abort()
                txn = None
                self.apply_failures += 1
                logger.critical("shard %s: apply of entry %d raised %r; recording it as failed", self.shard_id,
                                index, exc, exc_info=True)
                with env.begin(write=True) as txn2:
                    write_applied_index(txn2, meta_db, index)
                return ApplyFailed(f"{type(exc).__name__}: {exc}")
            write_applied_index(txn, meta_db, index)
            txn.commit()
            txn = None
            return result
        finally:
            if txn is not None:
                with contextlib.suppress(lmdb.Error):
                    txn.abort()

    def _stop_applying(self, index: int, exc: BaseException) -> None:
        self.apply_error = f"entry {index}: {type(exc).__name__}: {exc}"
        logger.critical(
            "shard %s: apply of entry %d hit a storage error (%r): this replica stops applying (it will neither "
            "campaign nor lead) until the cause is fixed and the node restarted; the other replicas go on",
            self.shard_id, index, exc, exc_info=exc)
        patches.step_down(self)
        if self._on_apply_stopped is not None:
            try:
                self._on_apply_stopped(self.shard_id, self.apply_error)
            except Exception:
                logger.exception("shard %s: apply-stopped hook failed", self.shard_id)

    def submit(self, payload: bytes, callback: Callable[[object, int], None]) -> None:
        """Replicate ``payload``; ``callback(result, FAIL_REASON)`` runs on the loop thread once it is applied
        or has failed.

        ``result`` is what ``apply_fn`` returned, :class:`ApplyFailed` if it raised, ``ALREADY_APPLIED``, or
        ``APPLY_STOPPED``. QUEUE_FULL is reported synchronously in the caller's thread. No callback ever comes
        for a command still pending at ``close()``: callers need their own timeout, and a timeout means
        "outcome unknown".
        """
        self.propose(payload, callback)
        self.host.wake(self.shard_id)

    def propose(self, payload: bytes, callback: Callable[[object, int], None]) -> None:
        """`submit` without waking the loop: for the loop thread itself (before_tick), whose tick appends it."""
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            raise TypeError("payload must be bytes")
        if self._closed:
            callback(None, FAIL_REASON.REQUEST_DENIED)
            return
        self._apply_entry(bytes(payload), callback=callback)

    # ------------------------------------------------------------------ tick (the loop thread)

    def _on_state_changed(self, old_state: int, new_state: int) -> None:
        if new_state == patches.LEADER:
            # __onBecomeLeader appends the no-op right after this callback; if the election was won inside
            # _onTick (single-member group) it would be counted in the same tick, before the loop's sync.
            self._journal.sync_on_next_add()
            self._leading_since = time.monotonic()
        elif old_state == patches.LEADER:
            now = time.monotonic()
            if self._handover is not None:
                self._handover.reset(now)
            self._leaving_handover.reset(now)
            if self.membership == LEAVING:
                # give the others two election timeouts to elect one of them; only if none can does it come back
                patches.hold_election(self, now + 2 * self.tuning.raft_max_timeout)
        logger.info("shard %s %s: %s -> %s", self.shard_id, self.host.name,
                    patches.ROLE_NAMES.get(old_state, old_state), patches.ROLE_NAMES.get(new_state, new_state))

    def tick(self) -> None:
        """One pysyncobj tick (after `before_tick`, which may propose entries); a leader then sends what it
        appended at once."""
        self.touched = False
        if self._dump_install is not None and not self._finish_dump_install():
            self._record_tick_stats()
            return
        if self.apply_error is not None:
            patches.hold_election(self, time.monotonic() + NEVER_CAMPAIGN_S)
            patches.step_down(self)
        elif not self._may_campaign():
            patches.hold_election(self, time.monotonic() + NEVER_CAMPAIGN_S)
        if self.before_tick is not None:
            self.before_tick()
        self._pre_vote_step()
        self._onTick(0.0)
        if patches.raft_state(self) == patches.LEADER:
            if patches.has_unsent_entries(self):
                patches.send_append_entries(self)
            if self.membership == LEAVING:
                self._hand_over_before_leaving()
            else:
                self._place_leader()
        self._serve_reads()
        self._record_tick_stats()

    # ------------------------------------------------------------------ snapshots from the leader

    @property
    def installing_snapshot(self) -> bool:
        """A dump from the leader is being made ready: this replica neither ticks nor takes messages meanwhile,
        as if it were down for that long; the node's other replicas go on (loop thread)."""
        return self._dump_install is not None

    def _on_dump_received(self, path: str) -> None:
        """Loop thread: the last chunk of a dump arrived. Its fsync, check and LMDB extraction (seconds for a
        big shard) run on a thread of their own; `_finish_dump_install` loads it once they are done."""
        install = _DumpInstall(path, self._getLeader())  # pysyncobj took the sender for its leader already

        def prepare() -> None:
            try:
                self._snapshots.prepare_received(path)
            except BaseException as exc:  # noqa: BLE001 - reported on the loop thread
                install.error = exc
            finally:
                install.done.set()
                self.host.wake(self.shard_id)

        install.thread = threading.Thread(target=prepare, name=f"dump-install-{self.shard_id}", daemon=True)
        self._dump_install = install
        install.thread.start()

    def _finish_dump_install(self) -> bool:
        """Loop thread: False while the dump is still being prepared. Then load it (a file swap) and tell the
        leader, or drop it if it could not be prepared (the leader sends it again), and tick on."""
        install = self._dump_install
        if not install.done.is_set():
            return False
        self._dump_install = None
        if install.error is not None:
            logger.error("shard %s %s: a dump from the leader could not be installed, dropped (%s)", self.shard_id,
                         self.host.name, install.error)
            self._snapshots.discard_received()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(install.path)
        else:
            patches.load_received_dump(self, install.path, install.leader)
        # it heard no leader meanwhile: give the leader's next heartbeat time to arrive before campaigning
        now = time.monotonic()
        patches.hold_election(self, max(patches.election_deadline(self), now + self.tuning.raft_max_timeout))
        return True

    # ------------------------------------------------------------------ pre-vote (Ongaro's thesis, 9.6)
    #
    # pysyncobj campaigns as soon as a replica's election timer runs out: it raises its term, and a leader that
    # hears the higher term steps down, even when every other replica still hears it. A replica that only missed
    # a few heartbeats (a new one catching up in a move, one whose node was busy, one back from a partition)
    # deposed a healthy leader that way. Here a replica whose timer ran out first asks its partners whether they
    # would vote for it, without raising any term; only when a majority would does pysyncobj campaign. A partner
    # says yes only if it has not heard a leader for raft_min_timeout and the asker's log is at least as up to
    # date as its own. A TimeoutNow from the leader (a hand-over) campaigns at once: the leader asked for it.

    def _pre_vote_step(self) -> None:
        """Loop thread, before pysyncobj's tick: hold its election until a pre-vote round has passed."""
        if patches.raft_state(self) == patches.LEADER or not patches.other_nodes(self):
            self._pre_vote = None
            return
        now = time.monotonic()
        if now < self._transfer_vote_until or patches.election_deadline(self) > now:
            return
        vote = self._pre_vote
        if vote is not None and vote.passed:
            self._pre_vote = None  # pysyncobj campaigns in this tick
            return
        if self.hears_a_leader(now):
            # it would refuse others the same: no round (its timer was held short, e.g. after a pre-vote passed
            # that it then did not need); leases rely on every member keeping this promise, itself included
            patches.hold_election(self, now + self.tuning.raft_min_timeout)
            return
        if vote is None or now - vote.started > self.tuning.raft_max_timeout:
            self._pre_vote_rounds += 1
            vote = self._pre_vote = _PreVote(self._pre_vote_rounds, now, {self.host.name})
            request = {"type": "pre_vote", "round": vote.round, "term": self.raftCurrentTerm + 1,
                       "last_log_index": patches.last_log_index(self), "last_log_term": patches.last_log_term(self)}
            for node in patches.other_nodes(self):
                self._transport.send(node, dict(request))
        patches.hold_election(self, now + random.uniform(self.tuning.raft_min_timeout, self.tuning.raft_max_timeout))

    def note_timeout_now(self, node) -> None:
        """Transport, loop thread: the leader asked this replica to take over (pysyncobj campaigns at once)."""
        if node == self._getLeader():
            self._transfer_vote_until = time.monotonic() + self.tuning.raft_max_timeout

    def hears_a_leader(self, now: float) -> bool:
        if patches.raft_state(self) == patches.LEADER:
            return self._tick_stats.quorum_recent
        return now - self.leader_heard_at < self.tuning.raft_min_timeout

    def answer_pre_vote(self, node, request: dict) -> None:
        """Transport, loop thread: would this replica vote for `node` now? Changes no Raft state."""
        fields = [request.get(k) for k in ("round", "term", "last_log_index", "last_log_term")]
        if not all(isinstance(f, int) and not isinstance(f, bool) for f in fields):
            return
        round_, term, last_index, last_term = fields
        mine = (patches.last_log_term(self), patches.last_log_index(self))
        granted = (node in patches.other_nodes(self) and term > self.raftCurrentTerm
                   and not self.hears_a_leader(time.monotonic()) and (last_term, last_index) >= mine)
        if not granted:
            self.pre_votes_refused += 1
        self._transport.send(node, {"type": "pre_vote_reply", "round": round_, "granted": granted})

    def note_pre_vote_reply(self, node, reply: dict) -> None:
        """Transport, loop thread: a partner's answer; with a majority the held election goes ahead now."""
        vote = self._pre_vote
        if vote is None or reply.get("round") != vote.round or reply.get("granted") is not True:
            return
        if node not in patches.other_nodes(self):
            return
        vote.granted.add(node.id)
        if not vote.passed and len(vote.granted) > (len(patches.other_nodes(self)) + 1) / 2:
            vote.passed = True
            patches.hold_election(self, 0.0)
            self.host.wake(self.shard_id)

    # ------------------------------------------------------------------ leader placement (placement.py)

    @property
    def holding_proposals(self) -> bool:
        """A handover (to the preferred leader, or away from a leaving replica) is under way: propose nothing new
        here (loop thread)."""
        if self.membership == LEAVING and self._leaving_handover.holding_proposals:
            return True
        return self._handover is not None and self._handover.holding_proposals

    def _place_leader(self) -> None:
        """Leader, after each tick: hand leadership to the preferred replica when it is back and caught up."""
        handover = self._handover
        preferred = self.preferred_leader
        if handover is None or preferred is None or preferred == self.host.name or self.apply_error is not None:
            return
        target = next((n for n in patches.other_nodes(self) if n.id == preferred), None)
        if target is not None:
            self._hand_over_step(handover, target, "the preferred replica")

    def _hand_over_step(self, handover: HandoverState, target, why: str) -> None:
        """One tick of a hand-over to `target` (placement.py decides; this carries it out on the loop thread)."""
        now = time.monotonic()
        answered_after = now - self.tuning.leader_fallback_timeout
        responsive = (target in patches.connected_nodes(self)
                      and patches.last_response_times(self).get(target, 0.0) > answered_after)
        decision = handover.decide(LeaderView(
            now=now, leading_since=self._leading_since, last_index=patches.last_log_index(self),
            commit_index=self.raftCommitIndex, applied_index=self.raftLastApplied,
            target_match_index=patches.match_index(self, target), target_responsive=responsive))
        if decision == START:
            logger.info("shard %s %s: handing leadership over to %s %s", self.shard_id, self.host.name, why,
                        target.id)
        elif decision == TRANSFER:
            # the target campaigns at once, with no pre-vote: no lease from now until it could have won
            self._lease_until = 0.0
            self._no_lease_before = now + 2 * self.tuning.raft_max_timeout
            self.transferLeadership(target)
        elif decision == ABANDON:
            logger.info("shard %s %s: %s did not take over in time; leading on, retrying later", self.shard_id,
                        self.host.name, target.id)
            self.host.wake(self.shard_id)  # proposals held meanwhile go now

    # ------------------------------------------------------------------ membership (cluster/membership.py)

    def _may_campaign(self) -> bool:
        """Never when this replica's own log says it is not a voting member (a joining replica not yet added, a
        leaving one already removed), nor while a joining one is still catching up: it would only disrupt the
        group. Otherwise yes, also while leaving (it then hands over as soon as it leads): a member that holds
        back can leave the group without any electable replica when it has entries the others lack."""
        if self._self_member is False:
            return False
        if self.membership == JOINING:
            # added, and close to what the leader had committed when it last wrote (under load a new member lags
            # by a few entries for good): before that it cannot win, and its campaign (pysyncobj has no pre-vote)
            # would only depose the leader
            return (bool(self._self_member) and self.leader_commit_seen > 0
                    and patches.last_log_index(self) + JOIN_CAMPAIGN_LAG_MAX >= self.leader_commit_seen)
        return True

    def _SyncObj__doChangeCluster(self, request, reverse=False):  # noqa: N802 - overrides pysyncobj's private
        """pysyncobj applies a membership entry (appended, rolled back, or replayed from the journal): note
        whether it adds or removes this replica itself, which pysyncobj does not track."""
        changed = SyncObj._SyncObj__doChangeCluster(self, request, reverse)
        kind, node_id = request[0], request[1]
        if node_id == self.host.name and kind in ("add", "rem"):
            self._self_member = (kind == "add") != reverse
        return changed

    def _SyncObj__applyLogEntries(self):  # noqa: N802 - overrides pysyncobj's private
        """pysyncobj applies every committed entry in one tick. Here at most `_apply_per_tick` of them, a count
        that halves when a tick's applying overran APPLY_TICK_BUDGET_S and doubles when it took under half; with
        more left, the loop is woken to come back at once. Only the pacing changes: the same entries apply in
        the same order."""
        commit = self._SyncObj__raftCommitIndex
        limit = self._SyncObj__raftLastApplied + self._apply_per_tick
        if commit <= limit:
            return SyncObj._SyncObj__applyLogEntries(self)
        started = time.monotonic()
        self._SyncObj__raftCommitIndex = limit
        try:
            result = SyncObj._SyncObj__applyLogEntries(self)
        finally:
            self._SyncObj__raftCommitIndex = commit
        took = time.monotonic() - started
        if took > APPLY_TICK_BUDGET_S:
            self._apply_per_tick = max(1, self._apply_per_tick // 2)
        elif took < APPLY_TICK_BUDGET_S / 2:
            self._apply_per_tick = min(APPLY_ENTRIES_PER_TICK_MAX, self._apply_per_tick * 2)
        self.host.wake(self.shard_id)
        return result

    def defer_election(self) -> None:
        """Loop thread, after it was held up: campaign no sooner than one full election timeout from now. At
        most once per two timeouts, so a loop held up again and again still lets a dead leader be replaced."""
        now = time.monotonic()
        if now - self._election_deferred_at < 2 * self.tuning.raft_max_timeout:
            return
        self._election_deferred_at = now
        patches.hold_election(self, max(patches.election_deadline(self), now + self.tuning.raft_max_timeout))

    def note_dump_members(self, members: set) -> None:
        """A dump was loaded: its membership is the starting point (a later log entry may change it)."""
        self._self_member = PeerNode(self.host.name) in members

    def _hand_over_before_leaving(self) -> None:
        """A leaving leader hands over to its most caught-up connected partner as leader placement does
        (proposals held at most LEAVING_HANDOVER.pause_s until the target has the whole log, then TimeoutNow);
        it keeps leading until one takes over, so writes go on meanwhile. A new target is chosen per attempt."""
        if not self._leaving_handover.holding_proposals:
            connected = patches.connected_nodes(self)
            partners = sorted((n for n in patches.other_nodes(self) if n in connected),
                              key=lambda n: (patches.match_index(self, n), n.id), reverse=True)
            self._leaving_target = partners[0] if partners else None
        if self._leaving_target is not None:
            self._hand_over_step(self._leaving_handover, self._leaving_target, "its partner (leaving the group)")

    def members(self) -> list[str]:
        """The voting members of the group as this replica knows them (its log's latest configuration), as of
        its last tick (the loop thread changes them)."""
        return list(self._tick_stats.members)

    def members_now(self) -> tuple[str, ...]:
        """Loop thread only."""
        return tuple(sorted([self.host.name, *(n.id for n in patches.other_nodes(self))]))

    def change_membership(self, action: str, node: str, *, silent_for_s: float | None = None) -> Future:
        """Leader: add (action "add") or remove ("rem") one voting member. The future gives True once the
        change is committed, False when it was already so; it fails with ReadNotLeaderError off the leader and
        MembershipBusyError while an earlier change is not yet committed. With `silent_for_s`, a removal is
        made only if this replica has led for that long and heard nothing from `node` meanwhile, else it fails
        with PartnerAnsweringError. Never from the loop thread."""
        if action not in ("add", "rem"):
            raise ValueError(f"unknown membership action {action!r}")
        if silent_for_s is not None and (action != "rem" or silent_for_s <= 0):
            raise ValueError("silent_for_s is for removals only, and positive")
        future: Future = Future()

        def on_done(_result, error) -> None:
            if error == FAIL_REASON.SUCCESS:
                future.set_result(True)
            elif error == FAIL_REASON.REQUEST_DENIED:
                future.set_exception(MembershipBusyError(
                    f"shard {self.shard_id}: another membership change is not committed yet"))
            elif error in (FAIL_REASON.NOT_LEADER, FAIL_REASON.MISSING_LEADER, FAIL_REASON.LEADER_CHANGED):
                future.set_exception(ReadNotLeaderError(f"shard {self.shard_id}: leadership changed ({error})"))
            else:
                future.set_exception(MembershipBusyError(f"shard {self.shard_id}: membership change failed "
                                                         f"({error}); it may still commit: retry"))

        def start() -> None:
            if self._closed or patches.raft_state(self) != patches.LEADER:
                future.set_exception(ReadNotLeaderError(f"shard {self.shard_id}: not the leader here"))
                return
            if node == self.host.name and action == "rem":
                future.set_exception(MembershipBusyError(
                    f"shard {self.shard_id}: the leader cannot remove itself; it hands over first"))
                return
            present = node in self.members_now()
            if present == (action == "add"):
                future.set_result(False)
                return
            target = PeerNode(node)
            if silent_for_s is not None:
                now = time.monotonic()
                heard = patches.last_response_times(self).get(target, 0.0)
                if now - self._leading_since < silent_for_s or now - heard < silent_for_s:
                    future.set_exception(PartnerAnsweringError(
                        f"shard {self.shard_id}: {node} answered this leader {now - heard:.1f} s ago (or it has "
                        f"led for less than {silent_for_s:g} s): not evicted"))
                    return
            if action == "add":
                self.addNodeToCluster(target, callback=on_done)
            else:
                self.removeNodeFromCluster(target, callback=on_done)

        self.host.call(start)
        return future

    # ------------------------------------------------------------------ reads without a log entry (ReadIndex)

    def read_index(self) -> Future:
        """A future that resolves (with the read index) once this leader may serve a linearizable read from
        its own state: a majority answered a heartbeat sent after this call, so no other leader can have
        committed anything this one has not applied (etcd's ReadIndex; reads are batched per round). It fails
        with ReadNotLeaderError if leadership is lost first; callers add their own timeout."""
        future: Future = Future()
        if self._closed or not self.is_leader():
            future.set_exception(ReadNotLeaderError(f"shard {self.shard_id}: not the leader here"))
            return future
        with self._reads_lock:
            self._new_reads.append(future)
        self.host.wake(self.shard_id)
        return future

    def note_read_round(self, partner: str, read_round: int) -> None:
        if read_round > self.read_round:
            return  # a round this replica never started (not in this life): it confirms nothing
        if read_round > self._acked_rounds.get(partner, 0):
            self._acked_rounds[partner] = read_round

    def _start_read_round(self, now: float) -> None:
        self.read_round += 1
        self._round_started[self.read_round] = now
        while len(self._round_started) > READ_ROUNDS_KEPT:
            self._round_started.popitem(last=False)

    def _confirmed_round(self) -> int:
        """The latest read round a majority (this leader and enough partners) has answered."""
        partners = patches.other_nodes(self)
        needed = (len(partners) + 1) // 2  # partners' answers that make a majority with this leader
        acked = sorted((self._acked_rounds.get(p.id, 0) for p in partners), reverse=True)
        return acked[needed - 1] if needed > 0 else self.read_round

    def _renew_lease(self, now: float) -> None:
        """Loop thread, each tick: a leader starts a read round per heartbeat period (its heartbeats carry it)
        and holds a lease from the latest round a majority answered."""
        self._lease_until = 0.0
        if (not self.lease_reads_enabled or patches.raft_state(self) != patches.LEADER or self._closed
                or self.apply_error is not None or self.holding_proposals or now < self._no_lease_before):
            return
        latest = self._round_started.get(self.read_round)
        if latest is None or now - latest >= self.tuning.append_entries_period:
            self._start_read_round(now)
        started = self._round_started.get(self._confirmed_round())
        if started is not None and now - self._leading_since > self.tuning.raft_max_timeout:
            self._lease_until = started + LEASE_FRACTION * self.tuning.raft_min_timeout

    def _serve_reads(self) -> None:
        """Loop thread, after each tick: reads under a lease get the commit index at once; others start a
        round; resolve the reads whose round is confirmed."""
        now = time.monotonic()
        self._renew_lease(now)
        if not self._new_reads and not self._reads:
            return
        leading = patches.raft_state(self) == patches.LEADER and self.apply_error is None and not self._closed
        if self._new_reads:
            with self._reads_lock:
                new, self._new_reads = self._new_reads, []
            # the clock is read after taking them: each was asked for before `now` (a process paused between a
            # clock read and the take would otherwise serve a read asked after the pause with the old time)
            now = time.monotonic()
            noop = patches.noop_index(self)
            if leading and now < self._lease_until and noop is not None and self.raftCommitIndex >= noop:
                self._reads.extend((0, self.raftCommitIndex, f) for f in new)  # round 0: the lease confirms it
                self.lease_reads += len(new)
            elif leading:
                self._start_read_round(now)
                commit_index = self.raftCommitIndex
                self._reads.extend((self.read_round, commit_index, f) for f in new)
                patches.send_append_entries(self)  # the round's heartbeat, now
            else:
                self._reads.extend((0, 0, f) for f in new)
        if not leading:
            reads, self._reads = self._reads, []
            for _, _, future in reads:
                future.set_exception(ReadNotLeaderError(f"shard {self.shard_id}: leadership lost before the read"))
            return
        noop = patches.noop_index(self)
        if noop is None or self.raftCommitIndex < noop:
            return  # a new leader must first commit an entry of its term to know the commit index
        confirmed = self._confirmed_round()
        applied = self.raftLastApplied
        still = []
        for read_round, index, future in self._reads:
            if read_round <= confirmed and applied >= index:
                future.set_result(index)
            else:
                still.append((read_round, index, future))
        self._reads = still

    @property
    def journal_dirty(self) -> bool:
        """Whether this replica appended (or truncated) anything not yet fdatasync'ed."""
        return self._journal.needs_sync

    def sync_journal(self) -> None:
        """Group commit: write and fdatasync what this replica appended since the last sync (loop thread)."""
        self._journal.sync()

    def _record_tick_stats(self) -> None:
        now = time.monotonic()
        role = patches.raft_state(self)
        leader = self._getLeader()
        quorum_recent = False
        if role == patches.LEADER:
            others = patches.other_nodes(self)
            deadline = now - self.tuning.leader_fallback_timeout
            last_response = patches.last_response_times(self)
            count = 1 + sum(1 for node in others if last_response.get(node, 0) > deadline)
            quorum_recent = count > (len(others) + 1) / 2
        self._tick_stats = _TickStats(
            at=now,
            role=role,
            term=self.raftCurrentTerm,
            commit_index=self.raftCommitIndex,
            applied_index=self.raftLastApplied,
            leader=leader.id if leader is not None else None,
            has_quorum=self.hasQuorum,
            quorum_recent=quorum_recent,
            members=self.members_now(),
        )

    # ------------------------------------------------------------------ status

    @property
    def closed(self) -> bool:
        return self._closed

    def is_leader(self) -> bool:
        """Leader according to pysyncobj, with a majority answering within leaderFallbackTimeout, as of a tick
        that is itself that recent, and able to apply."""
        stats = self._tick_stats
        if self._closed or self.apply_error is not None or stats.role != patches.LEADER or not stats.quorum_recent:
            return False
        return time.monotonic() - stats.at < self.tuning.leader_fallback_timeout

    def leader_node(self) -> str | None:
        """The name of the node this replica last saw leading the shard (None if unknown or stale)."""
        stats = self._tick_stats
        if time.monotonic() - stats.at >= self.tuning.leader_fallback_timeout:
            return None
        return stats.leader

    def status(self) -> dict:
        stats = self._tick_stats
        transport = self._transport
        return {
            "shard_id": self.shard_id,
            "node": self.host.name,
            "role": patches.ROLE_NAMES.get(stats.role, str(stats.role)),
            "term": stats.term,
            "commit_index": stats.commit_index,
            "applied_index": stats.applied_index,
            "leader": stats.leader,
            "has_quorum": stats.quorum_recent if stats.role == patches.LEADER else stats.has_quorum,
            "is_leader": self.is_leader(),
            "log_size": len(self._journal),
            "journal_sync_count": self._journal.sync_count,
            "rewritten_append_entries": transport.rewritten_append_entries,
            "truncations_avoided": transport.truncations_avoided,
            "snapshots_written": self._snapshots.snapshots_written,
            "snapshots_installed": self._snapshots.snapshots_installed,
            "apply_failures": self.apply_failures,
            "preferred_leader": self.preferred_leader or "",
            "handovers_started": self._handover.handovers_started if self._handover else 0,
            "handovers_abandoned": self._handover.handovers_abandoned if self._handover else 0,
            "apply_error": self.apply_error or "",
            "members": self.members(),
            "membership": self.membership,
            "tick_age": time.monotonic() - stats.at,
            "installing_snapshot": self._dump_install is not None,
            "pre_votes_refused": self.pre_votes_refused,
            "lease_reads": self.lease_reads,
            "closed": self._closed,
        }

    # ------------------------------------------------------------------ close

    def close(self) -> None:
        """Leave the node's loop, close the transport, journal and LMDB. Idempotent; never from the loop thread
        while the loop still ticks this replica (use the loop's own shutdown)."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        with self._reads_lock:
            waiting = [f for _, _, f in self._reads] + self._new_reads
            self._reads, self._new_reads = [], []
        for future in waiting:
            if not future.done():
                future.set_exception(ReadNotLeaderError(f"shard {self.shard_id}: replica closed"))
        try:
            self.host.remove(self)
            self.host.call(self._doDestroy)
        finally:
            install = self._dump_install
            if install is not None and install.thread is not None:
                install.thread.join()
                self._snapshots.discard_received()
            self._snapshots.wait_idle()
            self._journal._destroy()  # idempotent; pysyncobj's _doDestroy normally did it
            with self._gate.exclusive():
                if self._env is not None:
                    self._env.close()

"""Every place where tidebank reaches into pysyncobj, in one module, with what it changes and why.

pysyncobj stays the Raft implementation (elections, log matching, commit index);
tidebank replaces what pysyncobj does around it:

* **journal** (`install_journal`): pysyncobj never fsyncs its log; `createJournal` is
  patched so a SyncObj gets tidebank's `DurableJournal` (checksummed records, group
  fdatasync) for `conf.journalFile`.
* **transport and tick loop** (raft/transport.py, raft/loop.py): a SyncObj is built
  with `autoTick=False` and a `GroupTransport`, so one thread per node ticks every
  shard replica and one connection per peer node carries their messages, coalesced,
  authenticated and encoded without pickle. These use the public `doTick`-style
  entry points plus the private members below.
* **private state**: pysyncobj keeps Raft state in name-mangled attributes; the
  accessors below are the only code that reads or writes them. They are checked
  against the pinned version (`PYSYNCOBJ_VERSION`); a different version fails at
  import, not at run time.

Private members used, and why:

========================================  ===========================================================
``_SyncObj__transport``                   the replica's GroupTransport (status counters)
``_SyncObj__raftState``                   role, for leader checks between ticks (tick stats)
``_SyncObj__otherNodes``                  the partners, for the leader's quorum-recently check
``_SyncObj__lastResponseTime``            when each partner last answered (quorum-recently check)
``_SyncObj__raftElectionDeadline``        pushed forward so a replica that cannot apply never campaigns, nor
                                          one whose node's loop was just held up (loop.py), nor one whose
                                          pre-vote has not passed (replica.py, "pre-vote")
``_SyncObj__doChangeCluster``             overridden: whether a membership entry adds or removes this replica
``_SyncObj__applyLogEntries``             overridden (with ``__raftCommitIndex`` held lower around the call):
                                          a tick applies a bounded number of committed entries, not all
``_SyncObj__setState`` / ``__raftLeader``  a replica that cannot apply steps down at once
``_SyncObj__sendAppendEntries``           send new entries as soon as they are appended (no waiting
                                          for the next heartbeat period)
``_SyncObj__raftLog``                     its length tells whether a tick appended entries
``_SyncObj__raftNextIndex``               whether a partner has entries it has not been sent yet
``_SyncObj__connectedNodes``              same, only for connected partners
``_SyncObj__noopIDx``                     a new leader serves reads only once its no-op is committed
``_SyncObj__raftMatchIndex``              whether the preferred leader is caught up (leader placement)
``_SyncObj__serializer``                  its ``setTransmissionData`` replaced: the last chunk of a dump from
                                          the leader no longer loads it inside the message handler
                                          (`receive_dumps_in_background`)
``_SyncObj__loadDumpFile``                called when that dump is ready (`load_received_dump`)
``_SyncObj__sendNextNodeIdx``             then tells the leader, as pysyncobj does after a load
========================================  ===========================================================
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import pysyncobj.syncobj as syncobj_module
from pysyncobj import SyncObj
from pysyncobj.atomic_replace import atomicReplace
from pysyncobj.version import VERSION as _INSTALLED

PYSYNCOBJ_VERSION = "0.3.17"

if _INSTALLED != PYSYNCOBJ_VERSION:  # pragma: no cover
    raise ImportError(f"tidebank is tested with pysyncobj {PYSYNCOBJ_VERSION}, not {_INSTALLED}: its private "
                      "state is read in tidebank/node/raft/pysyncobj_patches.py")

FOLLOWER = 0
CANDIDATE = 1
LEADER = 2
ROLE_NAMES = {FOLLOWER: "follower", CANDIDATE: "candidate", LEADER: "leader"}

_install_lock = threading.Lock()
_log = logging.getLogger(__name__)


def install_journal(create_journal) -> None:
    """Make SyncObj create journals through `create_journal(path)` (tidebank's DurableJournal). Idempotent."""
    with _install_lock:
        if syncobj_module.createJournal is not create_journal:
            syncobj_module.createJournal = create_journal


# --- private state ---------------------------------------------------------------------------------------


def transport(obj: SyncObj):
    return obj._SyncObj__transport


def raft_state(obj: SyncObj) -> int:
    return obj._SyncObj__raftState


def other_nodes(obj: SyncObj) -> set:
    return obj._SyncObj__otherNodes


def last_response_times(obj: SyncObj) -> dict:
    return obj._SyncObj__lastResponseTime


def log_length(obj: SyncObj) -> int:
    return len(obj._SyncObj__raftLog)


def last_log_index(obj: SyncObj) -> int:
    return obj._SyncObj__raftLog[-1][1]


def last_log_term(obj: SyncObj) -> int:
    return obj._SyncObj__raftLog[-1][2]


def noop_index(obj: SyncObj) -> int | None:
    """Leader only: the index of the no-op it appended when elected (None before any election)."""
    return obj._SyncObj__noopIDx


def election_deadline(obj: SyncObj) -> float:
    """When this replica campaigns if it hears from no leader first (monotonic)."""
    return obj._SyncObj__raftElectionDeadline


def hold_election(obj: SyncObj, until: float) -> None:
    """This replica does not campaign before `until` (monotonic)."""
    obj._SyncObj__raftElectionDeadline = until


def step_down(obj: SyncObj) -> None:
    """Stop leading now; the partners elect another leader after their election timeout."""
    if obj._SyncObj__raftState == LEADER:
        obj._SyncObj__setState(FOLLOWER)
        obj._SyncObj__raftLeader = None


def has_unsent_entries(obj: SyncObj) -> bool:
    """Leader only: whether a connected partner has log entries it has not been sent."""
    last = obj._SyncObj__raftLog[-1][1]
    next_index = obj._SyncObj__raftNextIndex
    return any(next_index.get(node, last + 1) <= last for node in connected_nodes(obj))


def match_index(obj: SyncObj, node) -> int:
    """Leader only: the last index known to be in `node`'s log (0 if unknown)."""
    return obj._SyncObj__raftMatchIndex.get(node, 0)


def connected_nodes(obj: SyncObj) -> set:
    return obj._SyncObj__connectedNodes


def send_append_entries(obj: SyncObj) -> None:
    """Leader only: send what each partner has not been sent yet (and a heartbeat to the others) now."""
    obj._SyncObj__sendAppendEntries()


def receive_dumps_in_background(obj: SyncObj, on_received: Callable[[str], None]) -> str:
    """A follower writes a dump from the leader chunk by chunk (as pysyncobj does), but on the last chunk it
    only closes the file and calls ``on_received(path)``; pysyncobj would rename and load it right there, on
    the tick thread, which stops every replica of the node for as long as the install takes. The caller
    prepares the dump elsewhere and then calls `load_received_dump`. Returns the path chunks are written to."""
    serializer = obj._SyncObj__serializer
    path = serializer._Serializer__fileName + ".1.tmp"  # pysyncobj's own name for it
    incoming = []  # the open file of a transmission under way (at most one)

    def set_transmission_data(data) -> bool:
        if data is None:
            return False
        chunk, is_first, is_last = data
        if is_first:
            for f in incoming:
                f.close()
            incoming.clear()
            try:
                incoming.append(open(path, "wb"))  # noqa: SIM115 - kept open across chunks
            except OSError:
                _log.exception("failed to open %s for a dump from the leader", path)
                return False
        elif not incoming:
            return False  # a chunk without its start: pysyncobj ignores it too
        try:
            incoming[0].write(chunk)
            if is_last:
                incoming.pop().close()
        except OSError:
            _log.exception("failed to write a dump from the leader to %s", path)
            for f in incoming:
                f.close()
            incoming.clear()
            return False
        if is_last:
            on_received(path)
        return False  # pysyncobj loads nothing now; load_received_dump does, later

    serializer.setTransmissionData = set_transmission_data
    return path


def load_received_dump(obj: SyncObj, received_path: str, leader) -> None:
    """Loop thread, once the dump `receive_dumps_in_background` reported is ready: what pysyncobj does after
    the last chunk (put it in place, load it, tell the leader the next index it needs)."""
    atomicReplace(received_path, obj._SyncObj__serializer._Serializer__fileName)
    obj._SyncObj__loadDumpFile(clearJournal=True)
    if leader is not None:  # else the leader learns the next index from the answer to its next append
        obj._SyncObj__sendNextNodeIdx(leader, success=True)

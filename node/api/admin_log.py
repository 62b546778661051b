"""A node's durable log of privileged actions and refused calls: who, what, when, with what result.

One JSON line per record in DATA/admin-log.jsonl, bounded: at ADMIN_LOG_FILE_BYTES_MAX
the file becomes admin-log.1.jsonl (the one before is dropped), so two files at
most. A privileged action is fsync'ed before its answer leaves the node. Refused
calls are written at once but fsync'ed with the next privileged action or within
ADMIN_LOG_SYNC_PERIOD_S, so a flood of refusals cannot turn into a flood of fsyncs.
A node keeps its own log (no Raft): an operator reads every node's
(`tidebank admin log`), and a node that is lost loses only its own records.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass

log = logging.getLogger(__name__)

ADMIN_LOG_FILE_BYTES_MAX = 16 << 20
ADMIN_LOG_SYNC_PERIOD_S = 1.0
ADMIN_LOG_RECENT_MAX = 4096  # records kept in memory for GetAdminLog; older ones are read from the files
ADMIN_LOG_PAGE_DEFAULT = 256
ADMIN_LOG_PAGE_MAX = 1024
DETAIL_CHARS_MAX = 512

# Permissions whose every use is recorded, allowed or not (node/api/access.py names them).
PRIVILEGED_PERMISSIONS = frozenset({"cluster.faults", "cluster.membership", "participants.manage", "clearing.settle",
                                    "trades.resolve"})


@dataclass(frozen=True)
class AdminRecord:
    seq: int
    time_ns: int
    principal: str
    roles: str
    method: str
    permission: str
    result: str
    detail: str
    node: str


class AdminLog:
    def __init__(self, directory: pathlib.Path, node: str, *, file_bytes_max: int = ADMIN_LOG_FILE_BYTES_MAX):
        self.path = directory / "admin-log.jsonl"
        self.older = directory / "admin-log.1.jsonl"
        self.node = node
        self.file_bytes_max = file_bytes_max
        directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._recent: deque[AdminRecord] = deque(maxlen=ADMIN_LOG_RECENT_MAX)
        for record in self._read_files():
            self._recent.append(record)
        self._seq = self._recent[-1].seq if self._recent else 0
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the node's life
        if self._file.tell() and not self.path.read_bytes().endswith(b"\n"):
            self._file.write("\n")  # end a line torn by a crash, so the next record starts on its own
        self._unsynced = False
        self._last_sync = time.monotonic()

    def record(self, *, principal: str, roles: str, method: str, permission: str, result: str, detail: str = "",
               durable: bool = True) -> AdminRecord:
        """Append one record; with `durable`, on disk before this returns."""
        with self._lock:
            self._seq += 1
            rec = AdminRecord(self._seq, time.time_ns(), principal, roles, method, permission, result,
                              detail[:DETAIL_CHARS_MAX], self.node)
            self._file.write(json.dumps(asdict(rec), separators=(",", ":")) + "\n")
            self._file.flush()
            self._recent.append(rec)
            self._unsynced = True
            if durable or time.monotonic() - self._last_sync >= ADMIN_LOG_SYNC_PERIOD_S:
                self._sync_locked()
            if self._file.tell() >= self.file_bytes_max:
                self._rotate_locked()
            return rec

    def sync(self) -> None:
        """fsync what is written (the node's periodic loop calls this)."""
        with self._lock:
            if self._unsynced:
                self._sync_locked()

    def page(self, after_seq: int, limit: int) -> tuple[list[AdminRecord], int]:
        """Records after `after_seq`, oldest first, and the seq to ask after next (0: no more)."""
        limit = min(max(limit or ADMIN_LOG_PAGE_DEFAULT, 1), ADMIN_LOG_PAGE_MAX)
        with self._lock:
            recent = list(self._recent)
        if recent and after_seq + 1 < recent[0].seq:  # older than memory holds: read the files
            recent = [r for r in self._read_files() if r.seq > after_seq]
        records = [r for r in recent if r.seq > after_seq][:limit]
        more = bool(records) and records[-1].seq < (recent[-1].seq if recent else 0)
        return records, (records[-1].seq if more else 0)

    def close(self) -> None:
        with self._lock:
            if self._unsynced:
                self._sync_locked()
            self._file.close()

    def _sync_locked(self) -> None:
        os.fsync(self._file.fileno())
        self._unsynced = False
        self._last_sync = time.monotonic()

    def _rotate_locked(self) -> None:
        self._sync_locked()
        self._file.close()
        os.replace(self.path, self.older)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115

    def _read_files(self) -> list[AdminRecord]:
        out = []
        for path in (self.older, self.path):
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except FileNotFoundError:
                continue
            for line in lines:
                try:
                    out.append(AdminRecord(**json.loads(line)))
                except (ValueError, TypeError):
                    log.warning("%s: skipping a torn or unreadable record", path)  # a crash mid-write
        return out

"""The one failure rule of apply: what may hit one replica only never becomes a result.

Every replica applies the same entries and must end in the same state. A failure
that every replica would hit alike (a bug in a rule, a broken invariant) is
deterministic: the state machine records it as `internal_error` results. A
failure that may hit one replica only — LMDB's map or disk full, an I/O error,
memory exhausted — is not: recording it would give the same ids different
outcomes on different replicas. Those errors escape the state machine and stop
that replica's apply loop (raft/replica.py) until the cause is fixed and the
node restarted; the journal still holds the entries, so it then catches up.
"""

from __future__ import annotations

import lmdb

#: Errors that may hit one replica only: never turned into a result, never skipped.
STORAGE_ERRORS: tuple[type[BaseException], ...] = (lmdb.Error, MemoryError, OSError)

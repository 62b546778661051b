"""Whose accounts are whose: the check an account holder's call passes before it touches any account.

An account's owner is written with the account (OP_CREATE_OWNED_ACCOUNTS) and never
changes, so an answer once read is true forever: it is cached here, bounded. An
account this node has not seen owned by the caller is looked up on this node's
replica first and, when that does not show it owned (a lagging follower, an account
created a moment ago), on the shard's leader after a ReadIndex round, so a refusal
is never based on a stale read. An account that does not exist is owned by nobody:
a holder cannot name an account it will create later.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterable

from tidebank.node.api import access, errors
from tidebank.node.api.internal_service import OWNERS_READ
from tidebank.node.executor import ShardExecutor
from tidebank.node.ledger.clearing_records import pack_value, unpack_value
from tidebank.node.outcomes import NotAppliedError
from tidebank.v1 import internal_pb2

OWNERS_CACHED_MAX = 200_000  # account ids with a known owner, about 30 MB at most
OWNER_READ_TIMEOUT_S = 5.0


class Owners:
    def __init__(self, node, executor: ShardExecutor, cached_max: int = OWNERS_CACHED_MAX) -> None:
        self.node = node
        self.executor = executor
        self._cache: OrderedDict[int, str] = OrderedDict()
        self._cached_max = cached_max
        self._lock = threading.Lock()

    def require_owned(self, grant: access.Grant, account_ids: Iterable[int], what: str, wait_s: float) -> None:
        """Nothing to check for a grant to everything; else PERMISSION_DENIED naming the first account the
        principal does not own."""
        if grant.everything:
            return
        name = grant.principal.name
        wanted = list(dict.fromkeys(account_ids))
        unknown = [a for a in wanted if self._cached(a) != name]
        if not unknown:
            return
        owners = self.owners(unknown, min(wait_s, OWNER_READ_TIMEOUT_S))
        for account_id in unknown:
            if owners.get(account_id) != name:
                raise access.denied(grant.principal, grant.permission,
                                    f"{what} {account_id} is not an account of this principal")

    def require_party(self, grant: access.Grant, parties: dict[int, tuple[int, int]], what: str,
                      wait_s: float) -> None:
        """For a grant to one's own only: every record (by id) must have one of its two accounts (a transfer's
        debit and credit, a trade's buyer and seller) owned by the principal; else PERMISSION_DENIED naming it."""
        if grant.everything or not parties:
            return
        owners = self.owners(sorted({a for pair in parties.values() for a in pair}), wait_s)
        for key, pair in parties.items():
            if grant.principal.name not in (owners.get(pair[0]), owners.get(pair[1])):
                raise access.denied(grant.principal, grant.permission,
                                    f"{what} {key} touches no account of this principal")

    def owners(self, account_ids: list[int], wait_s: float) -> dict[int, str | None]:
        """Each account's owner: this replica's answer where it shows one, else the leader's."""
        deadline = time.monotonic() + wait_s
        by_shard: dict[int, list[int]] = {}
        for a in account_ids:
            by_shard.setdefault(self.node.shard_map.shard_of(a), []).append(a)
        found: dict[int, str | None] = {}
        for shard_id, ids in by_shard.items():
            host = self.node.local_shard(shard_id)
            local = dict(zip(ids, host.account_owners(ids), strict=True)) if host is not None else {}
            missing = [a for a in ids if local.get(a) is None]
            if missing:
                local.update(zip(missing, self._leader_read(shard_id, missing, deadline), strict=True))
            found.update(local)
        with self._lock:
            for a, owner in found.items():
                if owner is not None:
                    self._cache[a] = owner
                    self._cache.move_to_end(a)
            while len(self._cache) > self._cached_max:
                self._cache.popitem(last=False)
        return found

    def _cached(self, account_id: int) -> str | None:
        with self._lock:
            owner = self._cache.get(account_id)
            if owner is not None:
                self._cache.move_to_end(account_id)
            return owner

    def _leader_read(self, shard_id: int, ids: list[int], deadline: float) -> list[str | None]:
        remaining = max(0.05, deadline - time.monotonic())
        host = self.node.local_shard(shard_id)
        try:
            if host is not None and host.is_leader():
                host.read_barrier().result(timeout=remaining)
                return host.account_owners(ids)
            address = self.node.forward_address(shard_id)
            if address is None or address == self.node.address:
                raise NotAppliedError(f"shard {shard_id} has no leader right now")
            request = internal_pb2.QueryRequest(shard_id=shard_id, name=OWNERS_READ, args=pack_value([ids]),
                                                linearizable=True)
            return list(unpack_value(self.executor.call(address, "Query", request, remaining).value))
        except Exception as exc:  # noqa: BLE001 - whatever stopped the read, the caller may retry
            raise errors.retryable("NOT_APPLIED", f"shard {shard_id}: cannot read account owners now ({exc})",
                                   shard_id=shard_id) from exc

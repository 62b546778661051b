"""One shard on one node: its Raft replica, its ledger state machine and its batcher.

The replica sees opaque bytes; this module is the one place where those bytes
are decoded into ledger operations and handed to the state machine.
"""

from __future__ import annotations

import logging
import pathlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future

import lmdb

from tidebank.common.keys import DEFAULT_SLOT_COUNT, clearing_hub_account_id
from tidebank.node import metrics
from tidebank.node.batcher import ShardBatcher
from tidebank.node.ledger.entry import decode_entry
from tidebank.node.ledger.operations import Operation
from tidebank.node.ledger.records import Account, Transfer
from tidebank.node.ledger.state_machine import LedgerStateMachine
from tidebank.node.ledger.trades import Trade
from tidebank.node.outcomes import NotAppliedError
from tidebank.node.raft.loop import RaftHost
from tidebank.node.raft.placement import PlacementTuning
from tidebank.node.raft.replica import VOTER, RaftTuning, ReadNotLeaderError, ShardReplica

log = logging.getLogger(__name__)

#: The clearing reads a node serves for other nodes (Internal.Query): name -> ClearingRules method.
CLEARING_READS = frozenset({
    "lookup_items", "lookup_participants", "participants", "positions", "window_sums", "bilateral",
    "window_items", "windows", "window", "window_nets", "open_window", "home_ledgers", "moves_out",
    "unpropagated", "totals",
})


class ShardHost:
    def __init__(
        self,
        *,
        shard_id: int,
        host: RaftHost,
        members: Sequence[str],
        data_dir: pathlib.Path,
        raft: RaftTuning | None = None,
        fsync: bool = True,
        slot_count: int = DEFAULT_SLOT_COUNT,
        on_apply_stopped: Callable[[int, str], None] | None = None,
        preferred_leader: str | None = None,
        placement: PlacementTuning | None = None,
        membership: str = VOTER,
    ):
        self.shard_id = shard_id
        self.slot_count = slot_count
        self.ledger: LedgerStateMachine | None = None
        data_dir.mkdir(parents=True, exist_ok=True)
        self.replica = ShardReplica(
            shard_id=shard_id,
            host=host,
            members=list(members),
            data_dir=data_dir,
            apply_fn=self._apply,
            open_fn=self._open,
            raft=raft or RaftTuning(),
            fsync=fsync,
            on_apply_stopped=on_apply_stopped,
            preferred_leader=preferred_leader,
            placement=placement,
            membership=membership,
        )
        self.batcher = ShardBatcher(shard_id, self.replica.propose, wake=lambda: host.wake(shard_id),
                                    is_leader=self.replica.is_leader)
        self.replica.before_tick = self._before_tick
        self.items_applied = 0  # since this process started (loop thread writes, status reads): the shard's load

    def _before_tick(self) -> None:
        """Loop thread: queued requests become entries, except while leadership is being handed over."""
        if not self.replica.holding_proposals:
            self.batcher.propose()

    def _open(self, env: lmdb.Environment) -> None:
        """Called by the replica whenever it (re)opens LMDB, e.g. after installing a snapshot."""
        self.ledger = LedgerStateMachine(env, slot_count=self.slot_count)

    def _apply(self, txn: lmdb.Transaction, payload: bytes) -> list[list[int]]:
        """The replicated apply: runs on the Raft tick thread on every replica."""
        started = time.perf_counter()
        timestamp_ns, operations = decode_entry(payload)
        assert self.ledger is not None
        results = self.ledger.apply(txn, operations, timestamp_ns)
        metrics.APPLY_SECONDS.observe(time.perf_counter() - started)
        items = sum(len(op.items) for op in operations)
        metrics.APPLY_ITEMS.inc(items)
        self.items_applied += items
        return results

    # Writes and linearizable reads go through the batcher (leader only).
    def submit(self, operation: Operation) -> Future:
        return self.batcher.submit(operation)

    def barrier(self) -> Future:
        """Resolves once an entry proposed now has been applied here (also an expiry pulse: it carries cluster
        time into apply)."""
        return self.batcher.submit(None)

    def read_barrier(self) -> Future:
        """Resolves once reads here are linearizable, without a log entry (the replica's ReadIndex); fails with
        NotAppliedError when this replica does not lead (read on the leader's node instead)."""
        source = self.replica.read_index()
        target: Future = Future()

        def done(f: Future) -> None:
            exc = f.exception()
            if exc is None:
                target.set_result(None)
            elif isinstance(exc, ReadNotLeaderError):
                target.set_exception(NotAppliedError(str(exc)))
            else:
                target.set_exception(exc)

        source.add_done_callback(done)
        return target

    def lookup_accounts(self, ids: Sequence[int]) -> list[Account]:
        with self.replica.read_txn() as txn:
            return self.ledger.lookup_accounts(txn, ids)

    def lookup_transfers(self, ids: Sequence[int]) -> list[Transfer]:
        with self.replica.read_txn() as txn:
            return self.ledger.lookup_transfers(txn, ids)

    def get_account_transfers(self, account_id: int, **query) -> list[Transfer]:
        with self.replica.read_txn() as txn:
            return self.ledger.get_account_transfers(txn, account_id, **query)

    def export_slots(self, move_id: int, cursor: tuple[int, bytes] | None, records_max: int):
        """A page of a leaving slot move's records (node/ledger/slot_moves.py); the caller runs a barrier first."""
        with self.replica.read_txn() as txn:
            return self.ledger.slot_moves.export_page(txn, move_id, cursor, records_max)

    def ledger_totals(self) -> dict[int, dict[str, int]]:
        with self.replica.read_txn() as txn:
            return self.ledger.ledger_totals(txn)

    def audit_totals(self) -> dict:
        """For `tidebank audit`: ledger totals and prepared transactions from one read txn on
        this replica (the caller runs a barrier first when it needs it linearizable), and the
        applied index read just before it (a lower bound for that txn):
        ``{"ledgers": {ledger: {field: int}}, "prepared_txns": n, "applied_index": i}``.
        Fields the state machine does not keep are absent; prepared transactions count up to 1000."""
        applied_index = self.replica.applied_index()
        with self.replica.read_txn() as txn:
            ledgers = self.ledger.ledger_totals(txn)
            prepared = getattr(self.ledger, "prepared_txns", None)
            prepared_txns = len(prepared(txn, limit=1000)) if prepared is not None else 0
            escrow = self.ledger.escrow_totals(txn)
            clearing = self.ledger.clearing.totals(txn)
            hubs = {a.ledger: a for a in self.ledger.lookup_accounts(txn, [clearing_hub_account_id(ledger)
                                                                           for ledger in clearing])}
        for ledger, sums in clearing.items():
            hub = hubs.get(ledger)
            sums["hub_balance"] = 0 if hub is None else hub.credits_posted - hub.debits_posted
            sums["hub_pending"] = 0 if hub is None else hub.debits_pending + hub.credits_pending
        return {"ledgers": ledgers, "prepared_txns": prepared_txns, "applied_index": applied_index,
                "escrow": escrow, "clearing": clearing}

    def clearing_read(self, name: str, args: Sequence) -> object:
        """One of CLEARING_READS on this replica (callers run a barrier first when they need it linearizable)."""
        if name not in CLEARING_READS:
            raise ValueError(f"not a clearing read: {name!r}")
        with self.replica.read_txn() as txn:
            return getattr(self.ledger.clearing, name)(txn, *args)

    def account_owners(self, ids: Sequence[int]) -> list[str | None]:
        """Each account's owner on this replica (callers run a barrier first when they need it linearizable)."""
        with self.replica.read_txn() as txn:
            return self.ledger.account_owners(txn, ids)

    # --- escrow reads (local replica; callers run a barrier first when they need them linearizable)
    def lookup_trades(self, ids: Sequence[int]) -> list[Trade]:
        with self.replica.read_txn() as txn:
            return self.ledger.lookup_trades(txn, ids)

    def list_trades(self, account_id: int, *, seller: bool, after: tuple[int, int] | None,
                    limit: int) -> list[Trade]:
        with self.replica.read_txn() as txn:
            return self.ledger.list_trades(txn, account_id, seller=seller, after=after, limit=limit)

    def due_trades(self, now_ns: int, limit: int) -> list[Trade]:
        """Trades whose timer is due by `now_ns` and that no step is changing right now."""
        with self.replica.read_txn() as txn:
            return self.ledger.due_trades(txn, now_ns, limit=limit)

    def txn_decision(self, key: int):
        """The coordinator decision recorded here for a 2PC attempt key (local replica, may lag)."""
        with self.replica.read_txn() as txn:
            return self.ledger.txn_decision(txn, key)

    def txn_decision_record(self, key: int):
        """(decision, the DECIDE with its participants) recorded here for a 2PC attempt key, or None."""
        with self.replica.read_txn() as txn:
            return self.ledger.txn_decision_record(txn, key)

    def prepared_txns(self, limit: int = 100) -> list[tuple[int, int, int]]:
        """(key, coordinator shard, prepared at ns) of transactions prepared here, oldest first."""
        with self.replica.read_txn() as txn:
            return self.ledger.prepared_txns(txn, limit=limit)

    def expiry_due(self, now_ns: int | None = None) -> bool:
        """Whether a pending transfer has passed its timeout and needs an entry to expire it."""
        with self.replica.read_txn() as txn:
            due = self.ledger.next_expiry_ns(txn)
        return due is not None and due <= (now_ns if now_ns is not None else time.time_ns())

    def cluster_time_ns(self) -> int:
        """The latest cluster time this replica has applied (0 before the first entry)."""
        with self.replica.read_txn() as txn:
            return self.ledger.cluster_time_ns(txn)

    def is_leader(self) -> bool:
        return self.replica.is_leader()

    def leader_node(self) -> str | None:
        """The name of the node leading this shard, as this replica last saw it."""
        return self.replica.leader_node()

    @property
    def apply_error(self) -> str | None:
        """Why this replica's apply loop stopped (a storage error), or None while it applies."""
        return self.replica.apply_error

    def status(self) -> dict:
        return self.replica.status()

    def record_counts(self) -> dict[str, int]:
        """Accounts and transfer records on this replica (for balancing; {} before its LMDB is open)."""
        if self.ledger is None:
            return {}
        with self.replica.read_txn() as txn:
            return self.ledger.record_counts(txn)

    # --- membership (cluster/membership.py) ---------------------------------------------------------------
    @property
    def membership(self) -> str:
        return self.replica.membership

    def set_membership(self, membership: str) -> None:
        """VOTER, JOINING or LEAVING, as the newest topology says (what each may do: ShardReplica._may_campaign)."""
        self.replica.membership = membership

    def members(self) -> list[str]:
        return self.replica.members()

    def current_members(self) -> list[str]:
        """The voting members now (read on the loop thread, so it includes a change committed a moment ago)."""
        return list(self.replica.host.call(self.replica.members_now))

    def change_membership(self, action: str, node: str, *, silent_for_s: float | None = None) -> Future:
        return self.replica.change_membership(action, node, silent_for_s=silent_for_s)

    def close(self) -> None:
        self.batcher.close()
        self.replica.close()

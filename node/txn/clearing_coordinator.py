"""Clearing across shards: the steps that span several shards' logs, each idempotent, each resumable.

The rules (node/ledger/clearing.py) decide everything about positions, caps and
windows on one shard; this module only sequences commands over shards:

* **registration and changes** are applied on the participant's home shard, then
  copied to every shard (a copy carries its version and only moves forward), then
  marked propagated; the periodic pass finishes any propagation cut short;
* **items** go to the shard of their own id; an item refused there only because that
  shard's allowance is used up (ITEM_ALLOWANCE_LOW) makes this node move allowance
  to that shard (from the pool, then from other shards' headroom) and submit it
  again; if there is not enough anywhere it is `exceeds_net_debit_cap`, but only once
  the payer's position summed over every shard shows no room for it under its cap
  (while what is left of the cap is in another request's move, or concurrent requests
  keep taking it from each other, the item is tried again, a bounded number of
  times). A move is TAKE on the source (remembered there), GIVE on the destination
  (once per move id), ACK on the source; the periodic pass re-delivers moves left
  unacknowledged. A refill asks the pool for a spare beyond the need, sized from the
  participant's cap (read from a replica when this node has not seen it);
* **closing** a window: BEGIN_CLOSE on the ledger's home (the next window opens),
  CLOSE_HERE on every shard (the cut), a linearizable read of every shard's sums,
  CLOSED with the netting on the home;
* **settling**: BEGIN_SETTLE, a check that every debtor can pay (nothing moves if one
  cannot), one linked chain of ledger transfers through the ledger's hub account
  (ids derived from the window and the settlement attempt: resuming answers `exists`),
  SETTLE_HERE on every shard (the cap comes back), SETTLED. An attempt's runner holds a
  lease; SETTLE_FAILED names its lease token, so a runner taken over cannot fail the
  attempt. Before a new attempt, an unwind or an abort of a window whose last attempt
  failed, that attempt's chain is *fenced* (a transfer with its first id that must fail
  burns the id, so the chain can never commit); if the chain committed after all (a
  runner taken over submitted it), that attempt settled the window: SETTLE_HERE and
  SETTLED with its ids, and no money moves again;
* **unwinding** a participant from a closed window: BEGIN_UNWIND, UNWIND_HERE on
  every shard until none of its items is left, UNWOUND with the new netting;
* **aborting** a closed window: BEGIN_ABORT (no settlement attempt may start), a check
  that no earlier attempt's settlement chain committed (ABORT_CANCELLED if one did),
  ABORT_HERE on every shard until none of its items is left, ABORTED;
* **registration** first admits each participant on its ledger's home (CMD_ADMIT,
  the ledger's participant limit), then registers it on its own home.

A step cut short by a crash or a timeout leaves its window in `closing`,
`settling`, `unwinding` or `aborting`; the periodic pass on the ledger home's leader
resumes it (every step is idempotent), so nothing stays half-done. The schedule
(`[clearing] cycle_s`) is decided on cluster time: the pass asks for a close only
once the window has been open a cycle by the home shard's cluster time, and the
close itself (BEGIN_CLOSE with the cycle) is refused inside apply, at the entry's
cluster timestamp, if it is not due yet.
"""

from __future__ import annotations

import heapq
import logging
import os
import random
import time
from collections.abc import Iterator, Sequence

import grpc

from tidebank.common.keys import CLEARING_HUB_CODE, U128_MAX, clearing_hub_account_id, id_near, is_system_account
from tidebank.node.api import convert
from tidebank.node.executor import ShardExecutor, all_results, retry_delays
from tidebank.node.ledger.clearing import (
    SETTLEMENT_PAY_IN_CODE,
    UNWIND_ITEMS_PER_ENTRY_MAX,
    WINDOW_CLOSED,
    WINDOW_CLOSING,
    WINDOW_OPEN,
    WINDOW_SETTLING,
    settlement_transfer_id,
    settlement_transfers,
)
from tidebank.node.ledger.clearing_records import (
    CMD_ABORT_CANCELLED,
    CMD_ABORT_HERE,
    CMD_ABORTED,
    CMD_ACK,
    CMD_ADMIT,
    CMD_BEGIN_ABORT,
    CMD_BEGIN_CLOSE,
    CMD_BEGIN_SETTLE,
    CMD_BEGIN_UNWIND,
    CMD_CLOSE_HERE,
    CMD_CLOSED,
    CMD_COPY,
    CMD_GIVE,
    CMD_PROPAGATED,
    CMD_REGISTER,
    CMD_RELEASE,
    CMD_SETTLE_FAILED,
    CMD_SETTLE_HERE,
    CMD_SETTLED,
    CMD_TAKE,
    CMD_UNWIND_HERE,
    CMD_UNWOUND,
    CMD_UPDATE,
    ClearingCommand,
    ClearingItem,
    Participant,
    pack_participant,
    pack_value,
    plain,
    unpack_value,
)
from tidebank.node.ledger.operations import OP_CLEARING, OP_CLEARING_ITEMS, Operation
from tidebank.node.ledger.records import Account, AccountFlags, Transfer
from tidebank.node.ledger.results import (
    ITEM_ALLOWANCE_LOW,
    ClearingItemResult,
    ParticipantResult,
    WindowResult,
)
from tidebank.node.outcomes import NotAppliedError, OutcomeUnknownError, OverloadedError
from tidebank.node.txn.periodic import LedShardsLoop, RetryLater
from tidebank.v1 import internal_pb2, ledger_pb2, types_pb2

log = logging.getLogger(__name__)

STEP_TIMEOUT_S = 10.0  # one resumed step of the periodic pass
MOVE_REDELIVER_AFTER_S = 2.0  # an unacknowledged allowance move older than this is delivered again
STATEMENT_PAGE_ITEMS = 1024  # items read from one shard per page of a statement
REFILL_SHARE = 4  # a refill from the pool asks for need + cap / (shards * REFILL_SHARE)
REFILL_ROUNDS_MAX = 8  # refill-and-resubmit rounds of one request (each moves allowance or ends the loop)
ROOM_CHECKS_MAX = 3  # times one request finds its payers' caps still have room after the rounds, and tries again
ROOM_WAIT_S = 0.05  # before trying again: what is left of the cap may be between another move's TAKE and GIVE
SETTLEMENT_CHAIN_MAX = 8189  # transfers in one settlement chain (one CreateTransfers request)
FENCE_ROUNDS_MAX = 4  # times one settle or unwind fences again because another runner failed an attempt meanwhile
FENCE_CODE = 1  # the code of a fencing transfer (never applies: its debit account does not exist)
_FENCE_BURNT = frozenset(("DEBIT_ACCOUNT_NOT_FOUND", "CREDIT_ACCOUNT_NOT_FOUND", "ID_ALREADY_FAILED"))


class ClearingStepError(Exception):
    """A clearing command failed inside the state machine (a bug, rolled back there)."""


class ClearingCoordinator:
    """See the module docstring. One per node; thread-safe (holds no state but caches)."""

    def __init__(self, node, executor: ShardExecutor) -> None:
        self.node = node
        self.executor = executor
        self._caps: dict[int, int] = {}  # participant -> last cap seen here (sizes refills only; read on a miss)

    # ------------------------------------------------------------------ plumbing

    @property
    def shard_map(self):
        return self.node.shard_map

    def home_of(self, key: int) -> int:
        return self.shard_map.shard_of(key)

    def run(self, shard_id: int, commands: Sequence[ClearingCommand], deadline: float) -> list:
        """Commands through the shard's log (retried across leader changes: every command is idempotent)."""
        results = self.executor.run(shard_id, Operation(OP_CLEARING, list(commands)), deadline)
        if any(r is None for r in results):
            raise ClearingStepError(f"shard {shard_id}: a clearing command failed (see that node's log)")
        return results

    def run_one(self, shard_id: int, command: ClearingCommand, deadline: float):
        return self.run(shard_id, [command], deadline)[0]

    def run_everywhere(self, commands_of: dict[int, list[ClearingCommand]], deadline: float) -> dict[int, list]:
        """Commands on several shards at once; every shard's answer, or the worst failure (may-have-applied wins)."""
        out = gather({s: self.executor.run_async(s, Operation(OP_CLEARING, cmds), deadline)
                      for s, cmds in commands_of.items() if cmds}, deadline)
        for shard_id, results in out.items():
            if any(r is None for r in results):
                raise ClearingStepError(f"shard {shard_id}: a clearing command failed (see that node's log)")
        return out

    def query(self, shard_id: int, name: str, args: Sequence, deadline: float, *, linearizable: bool = True):
        """A clearing read of one shard: on its leader after a ReadIndex round (here or on the leader's node), or
        from the local replica when stale reads do. Values come back as plain lists (records as field lists)."""
        last: Exception | None = None
        for delay in retry_delays():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                return self._query_once(shard_id, name, list(args), remaining, linearizable)
            except (NotAppliedError, OverloadedError, TimeoutError) as exc:
                last = exc
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        raise NotAppliedError(f"shard {shard_id}: {name}: {last or 'no time left'}")

    def _query_once(self, shard_id: int, name: str, args: list, timeout_s: float, linearizable: bool):
        host = self.node.local_shard(shard_id)
        if host is not None and (not linearizable or host.is_leader()):
            if linearizable:
                try:
                    host.read_barrier().result(timeout=timeout_s)
                except NotAppliedError:
                    raise
                except Exception as exc:
                    raise NotAppliedError(f"shard {shard_id}: read barrier: {exc}") from exc
            return plain(host.clearing_read(name, args))
        address = self.node.forward_address(shard_id)
        if address is None or address == self.node.address:
            raise NotAppliedError(f"shard {shard_id} has no leader right now")
        if not self.node.reachable(address):
            raise NotAppliedError(f"shard {shard_id}: its leader {address} is cut off from here")
        request = internal_pb2.QueryRequest(shard_id=shard_id, name=name, args=pack_value(args),
                                            linearizable=linearizable)
        try:
            response = self.executor.call(address, "Query", request, timeout_s)
        except grpc.RpcError as exc:
            raise NotAppliedError(f"shard {shard_id} via {address}: {exc.code().name}") from exc
        return unpack_value(response.value)

    def query_everywhere(self, name: str, args: Sequence, deadline: float) -> dict[int, object]:
        return gather({s: self.executor.pool.submit(self.query, s, name, args, deadline)
                       for s in self.shard_map.shard_ids}, deadline)

    # ------------------------------------------------------------------ participants

    def register(self, participants: Sequence[Participant], deadline: float) -> list[int]:
        """Admit each participant on its ledger's home (participants_limit_reached changes nothing), register it on
        its own home, then copy it to every shard. Codes in request order."""
        codes = [0] * len(participants)
        admitted = self._admit(participants, codes, deadline)
        by_home: dict[int, list[int]] = {}
        for index in admitted:
            by_home.setdefault(self.home_of(participants[index].id), []).append(index)
        commands = {home: [ClearingCommand(CMD_REGISTER, (p.id, p.ledger, p.code, p.name, p.settlement_account_id,
                                                           p.net_debit_cap))
                           for p in (participants[i] for i in indexes)]
                    for home, indexes in by_home.items()}
        answers = self.run_everywhere(commands, deadline)
        for home, indexes in by_home.items():
            for index, (code, _version) in zip(indexes, answers[home], strict=True):
                codes[index] = code
        # Registered before on another ledger: it was admitted to this one for nothing.
        others = [participants[i] for i in admitted if codes[i] == ParticipantResult.exists_with_different_ledger]
        if others:
            self.run_everywhere(self._by_ledger_home(others, CMD_RELEASE), deadline)
        kept = (ParticipantResult.ok, ParticipantResult.exists)
        done = [participants[i].id for i, c in enumerate(codes) if c in kept]
        self.propagate(done, deadline)
        new = [participants[i] for i, c in enumerate(codes) if c == ParticipantResult.ok]
        self._spread_allowance(new, deadline)
        return codes

    def _admit(self, participants: Sequence[Participant], codes: list[int], deadline: float) -> list[int]:
        """Count the participants toward their ledgers' limits (on each ledger's home, idempotent by id); the
        indexes admitted. Those the rules refuse anyway (zero ids, ledger or account) are not counted but go on to
        be refused by CMD_REGISTER with their own code."""
        valid = [i for i, p in enumerate(participants)
                 if p.id not in (0, U128_MAX) and p.ledger and p.settlement_account_id]
        answers = self.run_everywhere(self._by_ledger_home([participants[i] for i in valid], CMD_ADMIT), deadline)
        at: dict[int, int] = {}
        refused: set[int] = set()
        for index in valid:
            home = self.home_of(participants[index].ledger)
            code = answers[home][at.get(home, 0)]
            at[home] = at.get(home, 0) + 1
            if code != ParticipantResult.ok:
                codes[index] = code
                refused.add(index)
        return [i for i in range(len(participants)) if i not in refused]

    def _by_ledger_home(self, participants: Sequence[Participant], tag: int) -> dict[int, list[ClearingCommand]]:
        commands: dict[int, list[ClearingCommand]] = {}
        for p in participants:
            commands.setdefault(self.home_of(p.ledger), []).append(ClearingCommand(tag, (p.ledger, p.id)))
        return commands

    def _spread_allowance(self, participants: Sequence[Participant], deadline: float) -> None:
        """Give every shard a share of each new participant's cap at once (half of the cap, evenly), so its
        first items need no allowance move; the other half stays in the pool for the shards that run low."""
        shards = self.shard_map.shard_ids
        moves = [(p, s, p.net_debit_cap // (2 * len(shards))) for p in participants for s in shards]
        futures = [self.executor.pool.submit(self.move, p.id, self.home_of(p.id), s, share, from_pool=True,
                                             to_pool=False, deadline=deadline)
                   for p, s, share in moves if share > 0]
        for outcome in all_results(futures, deadline - time.monotonic() + 1):
            if isinstance(outcome, BaseException):
                log.warning("spreading a new participant's allowance was cut short: %s", outcome)

    def update(self, updates: Sequence[tuple[int, int, int]], deadline: float) -> list[int]:
        """(participant, cap or -1, suspended 0/1 or -1) each, on its home, then copied everywhere. A lower cap first
        gathers the shards' headroom into the pool; cap_below_position if even that is not enough."""
        codes = []
        for pid, cap, suspended in updates:
            home = self.home_of(pid)
            if cap >= 0:
                record = self._home_record(pid, deadline)
                if record is None:
                    codes.append(ParticipantResult.participant_not_found)
                    continue
                _pid, _allowance, _net, pool = self.query(home, "positions", [[pid]], deadline)[0]
                shortfall = record.net_debit_cap - cap - pool
                if shortfall > 0:
                    self.gather_to_pool(pid, shortfall, deadline)
            code, _version = self.run_one(home, ClearingCommand(CMD_UPDATE, (pid, cap, suspended)), deadline)
            codes.append(code)
            if code == ParticipantResult.ok:
                self.propagate([pid], deadline)
        return codes

    def _home_record(self, pid: int, deadline: float) -> Participant | None:
        found = self.query(self.home_of(pid), "lookup_participants", [[pid]], deadline)
        return Participant(*found[0]) if found else None

    def home_records(self, pids: Sequence[int], deadline: float) -> dict[int, Participant]:
        """The participants' authoritative records (on their homes, linearizable), by id; the missing ones absent."""
        by_home: dict[int, list[int]] = {}
        for pid in pids:
            by_home.setdefault(self.home_of(pid), []).append(pid)
        found: dict[int, Participant] = {}
        for rows in gather({home: self.executor.pool.submit(self.query, home, "lookup_participants", [ids], deadline)
                            for home, ids in by_home.items()}, deadline).values():
            for fields in rows:
                found[fields[0]] = Participant(*fields)
        return found

    def list_participants(self, ledger: int, after: int, limit: int, deadline: float) -> list[Participant]:
        """One page of the participants of a ledger (0: of every ledger) by id, after `after`: each shard's home
        records (the authoritative ones) merged, at most `limit`."""
        pages = self.query_everywhere("participants", [ledger, after, limit, True], deadline)
        rows = sorted((Participant(*fields) for page in pages.values() for fields in page), key=lambda p: p.id)
        return rows[:limit]

    def _cap_of(self, pid: int, deadline: float) -> int:
        """The participant's cap as last seen here, read from any replica of its home when not seen yet (only to
        size refills: a stale one costs an extra move, never a wrong answer)."""
        cap = self._caps.get(pid)
        if cap is None:
            found = self.query(self.home_of(pid), "lookup_participants", [[pid]], deadline, linearizable=False)
            cap = self._caps[pid] = Participant(*found[0]).net_debit_cap if found else 0
        return cap

    def propagate(self, pids: Sequence[int], deadline: float) -> None:
        """Copy the home records of these participants to every shard, then mark them propagated."""
        by_home: dict[int, list[int]] = {}
        for pid in pids:
            by_home.setdefault(self.home_of(pid), []).append(pid)
        records: list[Participant] = []
        for home, ids in by_home.items():
            records += [Participant(*r) for r in self.query(home, "lookup_participants", [ids], deadline)]
        self.copy_everywhere(records, deadline)

    def copy_everywhere(self, records: Sequence[Participant], deadline: float) -> None:
        if not records:
            return
        for p in records:
            self._caps[p.id] = p.net_debit_cap
        commands = {s: [ClearingCommand(CMD_COPY, (pack_participant(p), s == self.home_of(p.ledger)))
                        for p in records]
                    for s in self.shard_map.shard_ids}
        self.run_everywhere(commands, deadline)
        marks: dict[int, list[ClearingCommand]] = {}
        for p in records:
            marks.setdefault(self.home_of(p.id), []).append(ClearingCommand(CMD_PROPAGATED, (p.id, p.version)))
        self.run_everywhere(marks, deadline)

    def positions(self, pids: Sequence[int], deadline: float) -> dict[int, int]:
        """Each participant's position (sum of its nets over every shard)."""
        out = dict.fromkeys(pids, 0)
        for rows in self.query_everywhere("positions", [list(pids)], deadline).values():
            for pid, _allowance, net, _pool in rows:
                out[pid] += net
        return out

    # ------------------------------------------------------------------ allowance

    def move(self, pid: int, source: int, dest: int, wanted: int, *, from_pool: bool, to_pool: bool,
             deadline: float) -> int:
        """Move up to `wanted` of a participant's cap from `source` (its pool or its headroom there) to `dest`
        (its allowance or pool there): TAKE, GIVE, ACK. What was taken; 0 if the source had nothing."""
        move_id = int.from_bytes(os.urandom(16), "big") or 1
        taken = self.run_one(source, ClearingCommand(CMD_TAKE, (move_id, pid, wanted, dest, from_pool, to_pool)),
                             deadline)
        if taken:
            self.deliver(move_id, source, dest, pid, taken, to_pool, deadline)
        return taken

    def deliver(self, move_id: int, source: int, dest: int, pid: int, amount: int, to_pool: bool,
                deadline: float) -> None:
        self.run_one(dest, ClearingCommand(CMD_GIVE, (move_id, pid, amount, to_pool)), deadline)
        self.run_one(source, ClearingCommand(CMD_ACK, (move_id,)), deadline)

    def refill(self, pid: int, dest: int, need: int, deadline: float) -> int:
        """Give shard `dest` at least `need` more of the participant's cap if it exists anywhere: from the pool
        first (with some to spare, so the next items do not need a move), then from other shards' headroom."""
        home = self.home_of(pid)
        shards = self.shard_map.shard_ids
        spare = self._cap_of(pid, deadline) // (len(shards) * REFILL_SHARE)
        got = self.move(pid, home, dest, need + spare, from_pool=True, to_pool=False, deadline=deadline)
        for source in shards:
            if got >= need:
                break
            if source != dest:
                got += self.move(pid, source, dest, need - got, from_pool=False, to_pool=False, deadline=deadline)
        return got

    def _refill_all(self, pid: int, wants: Sequence[tuple[int, int]], deadline: float) -> int:
        return sum(self.refill(pid, shard_id, need, deadline) for shard_id, need in wants)

    def gather_to_pool(self, pid: int, wanted: int, deadline: float) -> int:
        """Bring up to `wanted` of the shards' headroom back into the participant's pool (to lower its cap)."""
        home = self.home_of(pid)
        got = 0
        for source in self.shard_map.shard_ids:
            if got >= wanted:
                break
            got += self.move(pid, source, home, wanted - got, from_pool=False, to_pool=True, deadline=deadline)
        return got

    # ------------------------------------------------------------------ items

    def submit_items(self, items: Sequence[ClearingItem], deadline: float) -> list[int]:
        """Each item on its own id's shard. Items short of allowance there are submitted again after allowance
        moved to that shard, until they fit or no allowance can be moved. Before such an item is answered
        exceeds_net_debit_cap, its payer's position is read over every shard: while the cap still has room for it
        (what is left sits in another request's move, or concurrent requests keep taking it from each other), it is
        tried again, up to ROOM_CHECKS_MAX times. So the code means the cap had no room for it when last read, unless
        the request's payers kept losing the race that long."""
        codes: list[int] = [ClearingItemResult.internal_error] * len(items)
        low = self._submit_round(items, self._by_item_shard(items, range(len(items))), codes, deadline)
        rounds = checks = 0
        while low:
            moved = self._refill_for(items, low, deadline) if rounds < REFILL_ROUNDS_MAX else 0
            rounds += 1
            if moved == 0:
                if checks >= ROOM_CHECKS_MAX or deadline - time.monotonic() < 2 * ROOM_WAIT_S:
                    break
                checks += 1
                fits = self._fit_under_caps(items, low, deadline)
                for index in set(low) - set(fits):
                    codes[index] = ClearingItemResult.exceeds_net_debit_cap
                low = fits
                if not low:
                    break
                rounds = 0
                time.sleep(ROOM_WAIT_S * checks * random.uniform(0.5, 1.5))  # jittered: two requests taking the
                # last of a cap from each other do not come back in step
            low = self._submit_round(items, self._by_item_shard(items, low), codes, deadline)
        for index in low:
            codes[index] = ClearingItemResult.exceeds_net_debit_cap
        return codes

    def _by_item_shard(self, items: Sequence[ClearingItem], indexes) -> dict[int, list[int]]:
        by_shard: dict[int, list[int]] = {}
        for index in indexes:
            by_shard.setdefault(self.home_of(items[index].id), []).append(index)
        return by_shard

    def _refill_for(self, items: Sequence[ClearingItem], low: Sequence[int], deadline: float) -> int:
        """Move allowance to each shard whose items ran short, for their payers; how much moved in all."""
        need: dict[tuple[int, int], int] = {}
        for index in low:
            key = (self.home_of(items[index].id), items[index].payer_id)
            need[key] = need.get(key, 0) + items[index].amount
        by_payer: dict[int, list[tuple[int, int]]] = {}
        for (shard_id, payer), amount in need.items():
            by_payer.setdefault(payer, []).append((shard_id, amount))
        # payers in parallel; one payer's shards one after the other, so they never take from each other
        return sum(gather({payer: self.executor.pool.submit(self._refill_all, payer, wants, deadline)
                           for payer, wants in by_payer.items()}, deadline).values())

    def _fit_under_caps(self, items: Sequence[ClearingItem], low: Sequence[int], deadline: float) -> list[int]:
        """The indexes of `low` whose item alone still fits under its payer's cap (position + amount <= cap, the
        position summed over every shard): the others certainly exceed it."""
        payers = sorted({items[i].payer_id for i in low})
        positions = self.positions(payers, deadline)
        records = self.home_records(payers, deadline)
        room = {pid: (records[pid].net_debit_cap if pid in records else 0) - positions[pid] for pid in payers}
        return [i for i in low if items[i].amount <= room[items[i].payer_id]]

    def _submit_round(self, items, by_shard: dict[int, list[int]], codes: list[int], deadline: float) -> list[int]:
        """Submit each shard's items once; fill in their codes; the indexes short of allowance."""
        answers = gather({s: self.executor.run_async(s, Operation(OP_CLEARING_ITEMS, [items[i] for i in indexes]),
                                                     deadline)
                          for s, indexes in by_shard.items()}, deadline)
        low: list[int] = []
        for shard_id, results in answers.items():
            for index, code in zip(by_shard[shard_id], results, strict=True):
                codes[index] = code
                if code == ITEM_ALLOWANCE_LOW:
                    low.append(index)
        return low

    def lookup_items(self, ids: Sequence[int], linearizable: bool, deadline: float) -> list[ClearingItem]:
        by_shard: dict[int, list[int]] = {}
        for i in ids:
            by_shard.setdefault(self.home_of(i), []).append(i)
        found: dict[int, ClearingItem] = {}
        for shard_id, shard_ids in by_shard.items():
            for fields in self.query(shard_id, "lookup_items", [shard_ids], deadline, linearizable=linearizable):
                found[fields[0]] = ClearingItem(*fields)
        return [found[i] for i in ids if i in found]

    # ------------------------------------------------------------------ windows

    def window(self, ledger: int, number: int, deadline: float) -> tuple[int, dict | None]:
        """(number, record) of a window on the ledger's home; number 0 means the open one."""
        home = self.home_of(ledger)
        if number == 0:
            number = self.query(home, "open_window", [ledger], deadline)
            if number == 0:
                return 0, None
        return number, self.query(home, "window", [ledger, number], deadline)

    def nets(self, ledger: int, number: int, deadline: float) -> list[tuple[int, int, int, int, int]]:
        return [tuple(n) for n in self.query(self.home_of(ledger), "window_nets", [ledger, number], deadline)]

    def shard_sums(self, ledger: int, number: int, deadline: float) -> list[tuple[int, int, int, int, int]]:
        """The window's sums per participant over every shard (linearizable reads: after the cut, final)."""
        totals: dict[int, list[int]] = {}
        for rows in self.query_everywhere("window_sums", [ledger, number], deadline).values():
            for pid, sent, received, n_sent, n_received in rows:
                t = totals.setdefault(pid, [0, 0, 0, 0])
                t[0] += sent
                t[1] += received
                t[2] += n_sent
                t[3] += n_received
        return [(pid, *t) for pid, t in sorted(totals.items())]

    def bilateral(self, ledger: int, number: int, deadline: float) -> list[tuple[int, int, int, int]]:
        totals: dict[tuple[int, int], list[int]] = {}
        for rows in self.query_everywhere("bilateral", [ledger, number], deadline).values():
            for payer, payee, amount, count in rows:
                t = totals.setdefault((payer, payee), [0, 0])
                t[0] += amount
                t[1] += count
        return [(payer, payee, *t) for (payer, payee), t in sorted(totals.items()) if t[1]]

    def close(self, ledger: int, number: int, deadline: float, cycle_s: float = 0.0) -> tuple[int, int]:
        """(WindowResult, number): close the open window (number 0) or that one. With `cycle_s` (the schedule) only
        if it has been open that long in cluster time: WINDOW_NOT_DUE otherwise, and nothing changed."""
        home = self.home_of(ledger)
        if number == 0:
            number = self.query(home, "open_window", [ledger], deadline)
            if number == 0:
                return WindowResult.window_not_found, 0
        args = (ledger, number, int(cycle_s * 1e9)) if cycle_s > 0 else (ledger, number)
        code = self.run_one(home, ClearingCommand(CMD_BEGIN_CLOSE, args), deadline)
        if code == WindowResult.window_not_open:
            _, record = self.window(ledger, number, deadline)
            if record is not None and record["state"] == WINDOW_CLOSING:  # a close cut short (ours, retried)
                self.finish_close(ledger, number, deadline)
                return WindowResult.ok, number
        if code != WindowResult.ok:
            return code, number
        self.finish_close(ledger, number, deadline)
        return WindowResult.ok, number

    def finish_close(self, ledger: int, number: int, deadline: float) -> None:
        _, record = self.window(ledger, number, deadline)
        if record is None or record["state"] != WINDOW_CLOSING:
            return
        self.run_everywhere({s: [ClearingCommand(CMD_CLOSE_HERE, (ledger, number))]
                             for s in self.shard_map.shard_ids}, deadline)
        nets = self.shard_sums(ledger, number, deadline)
        code = self.run_one(self.home_of(ledger), ClearingCommand(CMD_CLOSED, (ledger, number, tuple(nets))),
                            deadline)
        if code != WindowResult.ok:
            raise ClearingStepError(f"ledger {ledger} window {number}: CLOSED answered {WindowResult(code).name}")

    def settle(self, ledger: int, number: int, deadline: float) -> tuple[int, list[tuple[int, int, int]], str]:
        """(WindowResult, shortfalls [(participant, net debit, available)], failure reason).

        A window that failed attempt n first has chain n fenced (see `fence`): BEGIN_SETTLE starts attempt n + 1
        only for a caller that names the attempt it fenced; if chain n committed after all, that attempt settled
        the window and only its bookkeeping is left (no new money moves)."""
        home = self.home_of(ledger)
        for _ in range(FENCE_ROUNDS_MAX):
            record, fenced, late = self._fence_failed_attempt(ledger, number, deadline)
            if late is not None:
                return late
            code, attempt, token = self.run_one(home, ClearingCommand(CMD_BEGIN_SETTLE, (ledger, number, fenced)),
                                                deadline)
            if code == WindowResult.settlement_in_progress and record is not None \
                    and record["state"] == WINDOW_CLOSED:
                continue  # another runner began (or began and failed) an attempt since the read: look again
            if code != WindowResult.ok:
                return code, [], ""
            return self.finish_settle(ledger, number, attempt, deadline, token)
        return WindowResult.settlement_in_progress, [], ""

    def finish_settle(self, ledger: int, number: int, attempt: int, deadline: float, token: int | None = None):
        """Run settlement attempt `attempt`, held with the lease `token` BEGIN_SETTLE gave (None: the old form of
        SETTLE_FAILED, which any runner of the attempt may apply)."""
        home = self.home_of(ledger)
        nets = self.nets(ledger, number, deadline)
        chain = self._chain(ledger, number, attempt, nets, deadline)

        def failed(reason: str) -> None:
            args = (ledger, number, attempt, reason) if token is None else \
                (ledger, number, attempt, reason, token, chain[0].id if chain else 0)
            self.run_one(home, ClearingCommand(CMD_SETTLE_FAILED, args), deadline)

        if len(chain) > SETTLEMENT_CHAIN_MAX:
            reason = f"{len(chain)} participants to settle, at most {SETTLEMENT_CHAIN_MAX} per window"
            failed(reason)
            return WindowResult.settlement_failed, [], reason
        if chain:
            done = self._settled_already(chain, deadline)
            if not done:
                shortfalls = self._shortfalls(chain, deadline)
                if shortfalls:
                    reason = "; ".join(f"participant {pid} short by {need - have}" for pid, need, have in shortfalls)
                    failed(reason)
                    return WindowResult.insufficient_funds, shortfalls, reason
                refused = self._move_money(ledger, chain, deadline)
                if refused is not None:
                    failed(refused)
                    shortfalls = self._shortfalls(chain, deadline)
                    code = WindowResult.insufficient_funds if shortfalls else WindowResult.settlement_failed
                    return code, shortfalls, refused
        return self.settled_late(ledger, number, attempt, tuple(t.id for t in chain), deadline)

    def _fence_failed_attempt(self, ledger: int, number: int, deadline: float):
        """(the window's record, the failed attempt fenced now (0: none to fence), settled_late's answer when that
        attempt's chain committed after all and settled the window, else None): what settle and unwind do before
        naming the fenced attempt to BEGIN_SETTLE / BEGIN_UNWIND."""
        _, record = self.window(ledger, number, deadline)
        if record is None or not needs_fence(record):
            return record, 0, None
        fenced = record["attempt"]
        committed = self.fence(ledger, number, record, deadline)
        if committed is None:
            return record, fenced, None
        return record, fenced, self.settled_late(ledger, number, fenced, committed, deadline)

    def settled_late(self, ledger: int, number: int, attempt: int, ids: Sequence[int], deadline: float):
        """The bookkeeping of an attempt whose chain moved the money: the cap back on every shard, then SETTLED
        (which also takes a window its attempt failed on another runner: that chain committed after all)."""
        given = self.run_everywhere({s: [ClearingCommand(CMD_SETTLE_HERE, (ledger, number))]
                                     for s in self.shard_map.shard_ids}, deadline)
        aborting = [shard_id for shard_id, (result,) in given.items() if result < 0]
        if aborting:
            raise ClearingStepError(f"ledger {ledger} window {number}: settlement attempt {attempt} moved the money "
                                    f"but shards {aborting} are aborting the window")
        code = self.run_one(self.home_of(ledger),
                            ClearingCommand(CMD_SETTLED, (ledger, number, attempt, tuple(ids))), deadline)
        return code, [], ""

    def _chain(self, ledger: int, number: int, attempt: int, nets, deadline: float):
        pids = [n[0] for n in nets if n[1] != n[2]]
        records = {fields[0]: Participant(*fields)
                   for fields in self.query(self.home_of(ledger), "lookup_participants", [pids], deadline)} \
            if pids else {}
        return settlement_transfers(ledger, number, attempt, nets,
                                    {pid: p.settlement_account_id for pid, p in records.items()},
                                    clearing_hub_account_id(ledger))

    # ------------------------------------------------------------------ fencing a failed attempt's chain

    def fence(self, ledger: int, number: int, record: dict, deadline: float) -> tuple[int, ...] | None:
        """Make the chain of the window's last (failed) attempt unable ever to commit, or learn that it committed.
        None: it never can now; else the ids of its transfers (it committed: that attempt settled the window).

        A runner of the attempt that was taken over may still submit its chain (it checked the funds before it
        stalled). Burning one id of a linked chain is enough: its transfer fails id_already_failed, so the whole
        chain does. The window records the chain's first id (SETTLE_FAILED); a window failed by the old form
        records none, and every id the attempt could have used is fenced (one per participant of the nets)."""
        attempt = record["attempt"]
        if "fence" in record:
            if not record["fence"]:
                return None  # the attempt had no chain
            ids = [record["fence"]]
        else:
            ids = sorted({settlement_transfer_id(ledger, number, attempt, n[0])
                          for n in self.nets(ledger, number, deadline)})
        exists = self.fence_ids(ledger, ids, deadline)
        committed = [i for i in ids if exists[i]]
        if not committed:
            return None
        if "fence" not in record:
            return tuple(committed)
        # Chain n's nets are the window's nets now: every unwind since fenced it first (and found it committed).
        chain = self._chain(ledger, number, attempt, self.nets(ledger, number, deadline), deadline)
        if not chain or chain[0].id != record["fence"]:
            raise ClearingStepError(f"ledger {ledger} window {number}: attempt {attempt}'s chain committed but the "
                                    f"nets no longer give it")
        log.warning("ledger %d window %d: settlement attempt %d failed on one runner but its chain committed (a "
                    "runner taken over submitted it): the window is settled by it", ledger, number, attempt)
        return tuple(t.id for t in chain)

    def fence_ids(self, ledger: int, ids: Sequence[int], deadline: float) -> dict[int, bool]:
        """Submit, for each id, a transfer with that id that cannot apply: debit account = the id itself (no such
        account: settlement ids are hashes), credit account = another id of the same slot that is no account, so
        the transfer is single-shard at the id's home. Its refusal (debit_account_not_found, a state failure) burns
        the id there; id_already_failed means it was burnt before. -> id: True if a transfer with it exists (its
        chain committed), False once it is burnt. A busy or unknown answer (the chain is PREPARED somewhere) is
        tried again until the deadline, then OutcomeUnknownError (every fence is idempotent: call again)."""
        credit = self._fence_credit_accounts(ids, deadline)
        out: dict[int, bool] = {}
        last = "no time left"
        for delay in retry_delays():
            todo = [i for i in ids if i not in out]
            for start in range(0, len(todo), SETTLEMENT_CHAIN_MAX):
                part = todo[start:start + SETTLEMENT_CHAIN_MAX]
                request = ledger_pb2.CreateTransfersRequest()
                for tid in part:
                    convert.transfer_to_pb(Transfer(id=tid, debit_account_id=tid, credit_account_id=credit[tid],
                                                    amount=1, ledger=ledger, code=FENCE_CODE),
                                           request.transfers.add())
                try:
                    response = self._ledger_stub().CreateTransfers(
                        request, timeout=max(0.1, deadline - time.monotonic()))
                except grpc.RpcError as exc:
                    last = f"{exc.code().name}: {exc.details()}"
                    continue
                for tid, result in zip(part, response.results, strict=True):
                    name = types_pb2.CreateTransferResult.Name(result).removeprefix("CREATE_TRANSFER_RESULT_")
                    if name in _FENCE_BURNT:
                        out[tid] = False
                    elif name == "EXISTS" or name.startswith("EXISTS_WITH_DIFFERENT_"):
                        out[tid] = True
                    else:
                        last = f"transfer {tid:x}: {name.lower()}"
            if len(out) == len(ids):
                return out
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            time.sleep(min(delay, remaining))
        raise OutcomeUnknownError(f"settlement fence: {last} (a chain may still be prepared; tried again later)")

    def _fence_credit_accounts(self, ids: Sequence[int], deadline: float) -> dict[int, int]:
        """For each id, an id of its slot that is no account (and not the id itself)."""
        out: dict[int, int] = {}
        for salt in range(1, 9):
            todo = [i for i in ids if i not in out]
            if not todo:
                return out
            candidates = {i: id_near(i ^ (salt << 100) ^ (salt << 40), i, self.shard_map.slot_count) for i in todo}
            try:
                taken = self.lookup_accounts(list(candidates.values()), deadline)
            except grpc.RpcError as exc:
                raise NotAppliedError(f"settlement fence: lookup failed: {exc.code().name}") from exc
            for i, c in candidates.items():
                if c != i and c not in taken and not is_system_account(c) and c not in (0, U128_MAX):
                    out[i] = c
        if len(out) != len(ids):
            raise ClearingStepError("settlement fence: no free account id found near a settlement id")
        return out

    def _ledger_stub(self):
        return self.node.ledger_stub(self.node.address)

    def lookup_accounts(self, ids: Sequence[int], deadline: float) -> dict[int, types_pb2.Account]:
        """Accounts by id through this node's Ledger service (linearizable); grpc.RpcError if it fails."""
        request = ledger_pb2.LookupAccountsRequest()
        for account_id in ids:
            convert.u128_to_pb(request.ids.add(), account_id)
        response = self._ledger_stub().LookupAccounts(request, timeout=max(0.1, deadline - time.monotonic()))
        return {convert.u128_from_pb(a.id): a for a in response.accounts}

    def _settled_already(self, chain, deadline: float) -> bool:
        """Whether an earlier attempt moved this very chain (its transfers exist): then only bookkeeping is left."""
        request = ledger_pb2.LookupTransfersRequest()
        convert.u128_to_pb(request.ids.add(), chain[0].id)
        try:
            found = self._ledger_stub().LookupTransfers(request, timeout=max(0.1, deadline - time.monotonic()))
        except grpc.RpcError as exc:
            raise NotAppliedError(f"settlement: lookup failed: {exc.code().name}") from exc
        return len(found.transfers) > 0

    def _shortfalls(self, chain, deadline: float) -> list[tuple[int, int, int]]:
        """(participant, net debit, available) of each debtor whose settlement account cannot pay its net debit.

        Only to name every short debtor before anything moves (the chain would name the first one only): the
        binding check is the state machine's, when the chain applies."""
        pay_in = [t for t in chain if t.code == SETTLEMENT_PAY_IN_CODE]
        try:
            accounts = self.lookup_accounts([t.debit_account_id for t in pay_in], deadline)
        except grpc.RpcError as exc:
            raise NotAppliedError(f"settlement: lookup failed: {exc.code().name}") from exc
        out = []
        for t in pay_in:
            a = accounts.get(t.debit_account_id)
            if a is None:
                out.append((t.user_data_128, t.amount, 0))
                continue
            if not a.flags & int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS):
                continue
            available = max(0, a.credits_posted - a.debits_posted - a.debits_pending)
            if available < t.amount:
                out.append((t.user_data_128, t.amount, available))
        return out

    def _move_money(self, ledger: int, chain, deadline: float) -> str | None:
        """Run the settlement chain through this node's Ledger service; None when it applied (now or before), else
        why it did not. Raises OutcomeUnknownError when that cannot be told (the window stays settling)."""
        stub = self._ledger_stub()
        hub = clearing_hub_account_id(ledger)
        timeout_s = max(0.1, deadline - time.monotonic())
        try:
            accounts = ledger_pb2.CreateAccountsRequest()
            convert.account_to_pb(Account(id=hub, ledger=ledger, code=CLEARING_HUB_CODE,
                                          flags=int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)),
                                  accounts.accounts.add())
            stub.CreateAccounts(accounts, timeout=timeout_s)
            request = ledger_pb2.CreateTransfersRequest()
            for t in chain:
                convert.transfer_to_pb(t, request.transfers.add())
            response = stub.CreateTransfers(request, timeout=max(0.1, deadline - time.monotonic()))
        except grpc.RpcError as exc:
            raise OutcomeUnknownError(f"settlement transfers: {exc.code().name}: {exc.details()}") from exc
        names = types_pb2.CreateTransferResult
        for t, result in zip(chain, response.results, strict=True):
            name = names.Name(result)
            if name in ("CREATE_TRANSFER_RESULT_CREATED", "CREATE_TRANSFER_RESULT_EXISTS"):
                continue
            if name == "CREATE_TRANSFER_RESULT_LINKED_EVENT_FAILED":
                continue
            return f"participant {t.user_data_128}: {name.removeprefix('CREATE_TRANSFER_RESULT_').lower()}"
        return None

    def unwind(self, ledger: int, number: int, pid: int, deadline: float) -> int:
        """Unwinding changes the nets: after a failed attempt its chain is fenced first (BEGIN_UNWIND names the
        attempt fenced); if that chain committed after all, the window is settled by it and the unwind answers
        window_already_settled."""
        home = self.home_of(ledger)
        for _ in range(FENCE_ROUNDS_MAX):
            _, fenced, late = self._fence_failed_attempt(ledger, number, deadline)
            if late is not None:
                return WindowResult.window_already_settled
            code = self.run_one(home, ClearingCommand(CMD_BEGIN_UNWIND, (ledger, number, pid, fenced)), deadline)
            if code == WindowResult.settlement_in_progress:
                continue  # an attempt began and failed since the read: fence it
            if code != WindowResult.ok:
                return code
            return self.finish_unwind(ledger, number, pid, deadline)
        return WindowResult.settlement_in_progress

    def finish_unwind(self, ledger: int, number: int, pid: int, deadline: float) -> int:
        for shard_id in self.shard_map.shard_ids:
            while True:
                done = self.run_one(shard_id, ClearingCommand(
                    CMD_UNWIND_HERE, (ledger, number, pid, UNWIND_ITEMS_PER_ENTRY_MAX)), deadline)
                if done < 0:
                    raise ClearingStepError(f"ledger {ledger} window {number}: shard {shard_id} already settled it")
                if done == 0:
                    break
        nets = self.shard_sums(ledger, number, deadline)
        return self.run_one(self.home_of(ledger), ClearingCommand(CMD_UNWOUND, (ledger, number, pid, tuple(nets))),
                            deadline)

    def abort(self, ledger: int, number: int, deadline: float) -> tuple[int, int]:
        """Abort a closed window. (WindowResult, attempt): ok (aborted now, or an abort cut short finished), or the
        refusal of BEGIN_ABORT (window_already_aborted: aborted before); or window_already_settled with the
        settlement attempt whose chain turned out to have committed (the window is left closed, not aborted)."""
        home = self.home_of(ledger)
        code = self.run_one(home, ClearingCommand(CMD_BEGIN_ABORT, (ledger, number)), deadline)
        if code != WindowResult.ok:
            return code, 0
        return self.finish_abort(ledger, number, deadline)

    def finish_abort(self, ledger: int, number: int, deadline: float) -> tuple[int, int]:
        _, record = self.window(ledger, number, deadline)
        if record is None or not record.get("aborting"):
            return WindowResult.ok, 0
        committed = 0
        if record.get("attempt", 0) >= 1:  # no attempt begins while aborting: fence the last (failed) one's chain
            if record["state"] != WINDOW_CLOSED:
                raise ClearingStepError(f"ledger {ledger} window {number}: aborting but not closed")
            if self.fence(ledger, number, record, deadline) is not None:
                committed = record["attempt"]
        committed = committed or self.committed_attempt(ledger, number, record.get("attempt", 0), deadline)
        if committed:
            # BEGIN_ABORT stopped new attempts; an old one's chain moved the money: never abort that window.
            self.run_one(self.home_of(ledger), ClearingCommand(CMD_ABORT_CANCELLED, (ledger, number)), deadline)
            log.error("ledger %d window %d: not aborted: the settlement transfers of attempt %d committed", ledger,
                      number, committed)
            return WindowResult.window_already_settled, committed
        for shard_id in self.shard_map.shard_ids:
            while True:
                done = self.run_one(shard_id, ClearingCommand(
                    CMD_ABORT_HERE, (ledger, number, UNWIND_ITEMS_PER_ENTRY_MAX)), deadline)
                if done < 0:
                    raise ClearingStepError(f"ledger {ledger} window {number}: shard {shard_id} settled it")
                if done == 0:
                    break
        nets = self.shard_sums(ledger, number, deadline)
        return self.run_one(self.home_of(ledger), ClearingCommand(CMD_ABORTED, (ledger, number, tuple(nets))),
                            deadline), 0

    def committed_attempt(self, ledger: int, number: int, attempts: int, deadline: float) -> int:
        """The settlement attempt (1..attempts) of the window whose chain exists in the ledger, or 0. Every attempt
        builds its chain from the window's nets of that time, one transfer per participant with a non-zero net,
        with ids derived from (window, attempt, participant); a chain is linked, so one transfer found means it
        committed. Participants never leave a window's nets (an unwind zeroes their sums), so trying every
        participant of the nets for every attempt covers each chain."""
        if attempts <= 0:
            return 0
        pids = [n[0] for n in self.nets(ledger, number, deadline)]
        ids = {settlement_transfer_id(ledger, number, a, pid): a for a in range(1, attempts + 1) for pid in pids}
        request = ledger_pb2.LookupTransfersRequest()
        for tid in ids:
            convert.u128_to_pb(request.ids.add(), tid)
        try:
            found = self._ledger_stub().LookupTransfers(request, timeout=max(0.1, deadline - time.monotonic()))
        except grpc.RpcError as exc:
            raise NotAppliedError(f"abort: settlement lookup failed: {exc.code().name}") from exc
        return max((ids.get(convert.u128_from_pb(t.id), 0) for t in found.transfers), default=0)

    # ------------------------------------------------------------------ statements

    def statement_items(self, ledger: int, number: int, pid: int, deadline_of) -> Iterator[ClearingItem]:
        """The participant's items of the window from every shard, merged by id, read page by page (never all at
        once). `deadline_of()` gives the deadline for each page read."""

        def shard_items(shard_id: int) -> Iterator[ClearingItem]:
            after = 0
            while True:
                page = self.query(shard_id, "window_items", [ledger, number, pid, after, STATEMENT_PAGE_ITEMS],
                                  deadline_of())
                for fields in page:
                    yield ClearingItem(*fields)
                if len(page) < STATEMENT_PAGE_ITEMS:
                    return
                after = page[-1][0]

        return heapq.merge(*(shard_items(s) for s in self.shard_map.shard_ids), key=lambda i: i.id)

    @staticmethod
    def digest_line(item: ClearingItem) -> bytes:
        return f"{item.id},{item.payer_id},{item.payee_id},{item.amount}\n".encode()

    # ------------------------------------------------------------------ the periodic pass

    def repair(self, shard_id: int, host, now_ns: int, cycle_s: float) -> None:
        """On a shard this node leads: re-deliver old allowance moves, finish propagations, and (on a ledger's
        home) close windows that are due and resume windows left closing, settling or unwinding."""
        deadline = time.monotonic() + STEP_TIMEOUT_S
        for move_id, dest, pid, amount, to_pool, taken_at in plain(host.clearing_read("moves_out", [64])):
            if now_ns - taken_at > MOVE_REDELIVER_AFTER_S * 1e9:
                self.deliver(move_id, shard_id, dest, pid, amount, to_pool, deadline)
        stale = [Participant(*f) for f in plain(host.clearing_read("unpropagated", [64]))]
        if stale:
            self.copy_everywhere(stale, deadline)
        for ledger in host.clearing_read("home_ledgers", []):
            if self.home_of(ledger) != shard_id:
                continue
            open_number = host.clearing_read("open_window", [ledger])
            for number, record in host.clearing_read("windows", [ledger, max(0, open_number - 8), 16]):
                self._resume(ledger, number, record, now_ns, cycle_s, deadline)

    def _resume(self, ledger: int, number: int, record: dict, now_ns: int, cycle_s: float, deadline: float) -> None:
        """`now_ns` is the home shard's cluster time as of now (see ClearingTimers.cluster_now_ns): the schedule
        compares it with opened_at, cluster time too; BEGIN_CLOSE checks the cycle again at its own timestamp."""
        state = record["state"]
        if state == WINDOW_OPEN and cycle_s > 0 and now_ns - record["opened_at"] >= cycle_s * 1e9:
            code, _ = self.close(ledger, number, deadline, cycle_s)
            if code == WindowResult.ok:
                log.info("ledger %d: window %d closed on its schedule (cycle %.0f s)", ledger, number, cycle_s)
        elif state == WINDOW_CLOSING:
            self.finish_close(ledger, number, deadline)
        elif state == WINDOW_SETTLING:  # taken over only once its attempt's lease ran out (CMD_BEGIN_SETTLE)
            self.settle(ledger, number, deadline)
        elif state == WINDOW_CLOSED and record.get("unwinding") is not None:
            self.finish_unwind(ledger, number, record["unwinding"], deadline)
        elif state == WINDOW_CLOSED and record.get("aborting"):
            self.finish_abort(ledger, number, deadline)


def needs_fence(record: dict) -> bool:
    """Whether the window failed a settlement attempt whose chain must be fenced before the next attempt or an
    unwind (closed, not being unwound or aborted: those refuse both anyway)."""
    return (record["state"] == WINDOW_CLOSED and record.get("attempt", 0) >= 1
            and record.get("unwinding") is None and not record.get("aborting"))


CLEARING_PASS_PERIOD_S = 1.0


class ClearingTimers:
    """The periodic pass of ClearingCoordinator.repair on every shard this node leads; a shard whose pass failed
    is left alone for a while (periodic.RetryLater), not retried every period."""

    def __init__(self, node, coordinator: ClearingCoordinator, cycle_s: float, clock_ns=time.time_ns,
                 start: bool = True) -> None:
        self.coordinator = coordinator
        self.cycle_s = cycle_s
        self.clock_ns = clock_ns
        self.retry_later = RetryLater()
        self._loop = LedShardsLoop(node, "clearing-pass", CLEARING_PASS_PERIOD_S, self.pass_once) if start else None

    def cluster_now_ns(self, host) -> int:
        """The shard's cluster time as of now: the timestamp its next entry would get. The proposer stamps an entry
        with its clock and apply makes it monotonic (max(stamp, last + 1)), so it is this node's clock, unless the
        shard already applied a later time (a leader before this one had a clock ahead): then that time."""
        return max(self.clock_ns(), host.cluster_time_ns())

    def pass_once(self, shard_id: int, host) -> None:
        if not self.retry_later.due(shard_id, time.monotonic()):
            return
        try:
            self.coordinator.repair(shard_id, host, self.cluster_now_ns(host), self.cycle_s)
        except Exception as exc:
            log.warning("shard %d: clearing pass cut short (%s); tried again later", shard_id, exc)
            self.retry_later.failed(shard_id, time.monotonic())
        else:
            self.retry_later.succeeded(shard_id)

    def close(self) -> None:
        if self._loop is not None:
            self._loop.close()


def gather(futures: dict, deadline: float) -> dict:
    """Every future's result by key, once all are awaited; else the failure that matters most (one that may
    have applied, OutcomeUnknownError, over any that certainly did not)."""
    outcomes = dict(zip(futures, all_results(list(futures.values()), deadline - time.monotonic() + 1), strict=True))
    failures = [o for o in outcomes.values() if isinstance(o, BaseException)]
    if failures:
        raise next((f for f in failures if isinstance(f, OutcomeUnknownError)), failures[0])
    return outcomes

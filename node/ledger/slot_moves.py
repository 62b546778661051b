"""Moving hash slots between shards: the state machine's half (fence, copy, switch, forget).

A slot move takes hash slots S from shard A to shard B. Every step is one Raft entry
(an OP_SLOT_MOVES command), so a driver that dies resumes from what A and B recorded
(docs/architecture.md, "Slot moves"):

=============  =====  ==============================================================================
command        on     what it does
=============  =====  ==============================================================================
TRACKING       A      the move begins and A, still serving S, notes in ledger_slot_delta the key of
                      every record of S it writes from this entry on (an account, an index entry,
                      a transfer id, a decision), so a copy taken while S changes can be caught up
IMPORTING      B      B fences S: items naming it get `slot_moving` while it takes S's records
(export_page)  A      a read, not a command: S's records in pages (the precopy, while A serves S)
IMPORT         B      one page, staged (hidden); idempotent by page number
LEAVING        A      fence: from this entry on A refuses every item naming an id in S with
                      `slot_moving` (nothing changed, retry) and PREPAREs naming S vote busy; the
                      export now gives the catch-up: what the precopy could not (checks, pending
                      transfers) and the records named in ledger_slot_delta, as they are now
ARRIVED        B      checks page and record counts and the digest, writes the records, takes S's
                      totals, serves S
SWITCHED       A      S has left: items naming S get `slot_moved` (refresh the shard map) and reads of
                      S's accounts raise SlotMovedError, so a node still routing by the old map never
                      reads A's stale copy once B may take writes (the topology is published after this)
GONE           A      deletes S's accounts, owners and account index, gives up their totals, keeps a
                      tombstone per slot (switching first if SWITCHED was not applied)
ABORT          A, B   before SWITCHED (A) or ARRIVED (B): the move never happened
=============  =====  ==============================================================================

So writes naming S wait only from LEAVING to the new shard map: for the catch-up, ARRIVED and SWITCHED,
not for the bulk copy. B writes the pages in order and a later record of a key replaces an earlier one,
so precopy + catch-up is S as the fence froze it: every record of S the precopy saw either stayed as it
was or was written again after TRACKING, and then its key is in the delta. The delta is bounded
(DELTA_KEYS_MAX): past it A stops noting keys and the catch-up copies all of S again (still correct,
only a longer pause). LEAVING without TRACKING fences first and copies everything under the fence.

What moves: accounts, their owners and account-transfer index entries, every transfer
record that names an account or has an id in S (posted transfers, failed ids, id homes), and
the 2PC decisions a retry will look for on B (K_DECISION). A keeps its copies of transfers
and decisions: ids are global and neither ever changes, so a copy never lies (a cross-shard
transfer's copies differ only in the timestamp each shard stamped). Totals move with the
accounts, and the remote_* counters follow the transfers whose two sides end up on two shards
(or on one), so each shard's debits - remote debits == credits - remote credits still holds
and the audit still balances.

Pending transfers (live or finished) whose two accounts are in S move with them: status,
expiry key, pending balances; A's sweep skips them while they move, B's expires them after.
Not supported yet, refused by the export with a reason and nothing changed: a pending transfer
the move would split (one account in S; it would need ledger_xpending on both sides), one
created by a cross-shard txn, trades or escrow books in S, and clearing state on the shard.
A PREPARED txn naming S is a wait: the fence stops new ones and the sweeper finishes old ones.

One move at a time per shard, in either role: its record is b"move"; finished moves leave
b"done" + move id, so a resumed driver's replays answer `already`.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import lmdb

from tidebank.common.keys import U128_MAX, slot_of
from tidebank.node.ledger.clearing_records import pack_value, unpack_value
from tidebank.node.ledger.records import ACCOUNT_SIZE, TRANSFER_SIZE, TransferFlags, unpack_account, unpack_transfer
from tidebank.node.ledger.txn_records import unpack_decide

SLOTS_PER_MOVE_MAX = 1024
PAGE_RECORDS_MAX = 2048  # records in one IMPORT page (a Raft entry of at most ~0.5 MB)
MOVE_RECORDS_MAX = 100_000  # records of one move: ARRIVED writes them all in one entry
DELTA_KEYS_MAX = 200_000  # keys of S written during a precopy that A notes; past it the catch-up copies all of S
EXPORT_SCAN_MAX = 65_536  # keys one export call looks at (a read on the serving node: keep it short)
OWNER_BYTES_MAX = 64

# Record kinds of an export page; ARRIVED writes them in this order.
K_ACCOUNT = 1  # key: account id (16), value: packed Account
K_OWNER = 2  # key: account id (16), value: owner's principal name (utf-8)
K_TRANSFER = 3  # key: transfer id (16), value: the ledger_transfers value (a transfer, a failed id, an id home)
K_INDEX = 4  # key: account id (16) + timestamp (8), value: side (1) + transfer id (16)
# key: txid (16), value: a ledger_decisions value. A retry of a group is coordinated by the shard of its first
# debit account, B after the move, and must find the group's decision there: a committed group's when that
# account is in S; every aborted attempt's, failed by a rule or busy (a decision names no accounts, and an
# aborted group stored no transfer to find it by; a copy that B never consults costs only space), so B never
# runs again an attempt key that A aborted while a FINISH of it may still be on its way.
K_DECISION = 5  # (the value starts with the decision's timestamp, u64 little-endian)
K_PENDING = 6  # key: pending transfer id (16), value: its ledger_pending status (both its accounts are in S)
K_EXPIRY = 7  # key: expires_at (8) + pending transfer id (16), value: b"" (a pending transfer still pending)
_KEY_SIZE = {K_ACCOUNT: 16, K_OWNER: 16, K_TRANSFER: 16, K_INDEX: 24, K_DECISION: 16, K_PENDING: 16, K_EXPIRY: 24}

# Fence states, one byte per slot in b"fence" (absent: every slot served, no tombstone).
SERVING = 0
MOVING = 1
MOVED = 2

# Commands (tag, args).
LEAVING = 1  # (move_id, slots, to_shard)
IMPORTING = 2  # (move_id, slots, from_shard)
IMPORT = 3  # (move_id, page_no, records: ((kind, key, value), ...))
ARRIVED = 4  # (move_id, pages, records, digest)
GONE = 5  # (move_id, version)
ABORT = 6  # (move_id,)
SWITCHED = 7  # (move_id, version)
TRACKING = 8  # (move_id, slots, to_shard)
COMMAND_TAGS = frozenset((LEAVING, IMPORTING, IMPORT, ARRIVED, GONE, ABORT, SWITCHED, TRACKING))

# Export phases (the first element of a cursor).
P_CHECK, P_ACCOUNTS, P_INDEX, P_IDS, P_DECISIONS, P_PENDINGS, P_DELTA = range(7)

_ROLE_OUT = "out"
_ROLE_IN = "in"
_FENCE = b"fence"
_MOVE = b"move"
_DONE = b"done"
_TRACK = b"track"  # one byte per slot, 1 for S: the slots whose writes A notes (from TRACKING to the end)
_OVERFLOW = b"overflow"  # the delta passed DELTA_KEYS_MAX: the catch-up copies everything
_ENDED = {_ROLE_OUT: "gone", _ROLE_IN: "arrived"}
_GONE_TO = b"g"  # + slot (2): [to shard, topology version] of a slot that left
# A pending transfer and its post or void move only with both their accounts (a split needs ledger_xpending).
_PENDING_FLAGS = int(TransferFlags.PENDING | TransferFlags.POST_PENDING_TRANSFER | TransferFlags.VOID_PENDING_TRANSFER)
_STATUS_PENDING = 1  # state_machine.STATUS_PENDING
_NS = 1_000_000_000
_ID_RESERVED_TAG = b"R"[0]
_ID_FAILED_TAG = b"F"[0]
_ID_HOME_TAG = b"H"[0]
_SIDE_DEBIT = 1
_SIDE_CREDIT = 2
_ABOVE_EVERY_TIMESTAMP = 1 << 64


class SlotMoveResult(enum.IntEnum):
    """The result of one slot-move command."""

    ok = 0
    already = 1  # this step was done before (a resumed driver's replay): nothing changed
    shard_busy = 2  # another move is in progress on this shard
    slots_not_free = 3  # a slot is moving, or (LEAVING) has left this shard, or (IMPORTING) has records here
    unknown_move = 4  # no such move in progress here
    wrong_step = 5  # the move is not at the step this command needs (GONE on B, ARRIVED before its pages, ...)
    page_out_of_order = 6  # an IMPORT page beyond the next one expected
    too_large = 7  # the move would stage more than MOVE_RECORDS_MAX records: move fewer slots
    mismatch = 8  # ARRIVED: the pages, records or digest differ from what was staged
    clearing_in_use = 9  # IMPORTING: this shard holds clearing state, which slot moves do not carry yet


class ExportRefusal(enum.IntEnum):
    """Why export_page gives no page. `reserved` is a wait; the others end the move (ABORT)."""

    none = 0
    not_leaving = 1  # no such LEAVING move on this shard
    reserved = 2  # a PREPARED txn holds records of S: retry when it has finished
    pending_transfers = 3  # S names pending transfers: not supported yet
    escrow = 4  # S holds trades or escrow books: not supported yet
    clearing = 5  # the shard holds clearing state: not supported yet


class SlotMovedError(Exception):
    """A read names an account whose slot has left this shard: the caller's shard map is older than the move.
    Nothing was read; route by the newer map (retry)."""

    def __init__(self, slot: int, shard: int, version: int) -> None:
        super().__init__(f"slot {slot} has moved to shard {shard} (shard map v{version})")
        self.slot, self.shard, self.version = slot, shard, version


@dataclass(frozen=True, slots=True)
class SlotMoveCommand:
    tag: int
    args: tuple = field(default=())


def pack_command(c: SlotMoveCommand) -> bytes:
    return pack_value([c.tag, *c.args])


def unpack_command(raw: bytes) -> SlotMoveCommand:
    try:
        value = unpack_value(raw)
    except Exception as exc:  # msgpack raises several kinds for garbage
        raise ValueError(f"not a slot-move command: {exc}") from exc
    if not isinstance(value, list) or not value or value[0] not in COMMAND_TAGS:
        raise ValueError("not a slot-move command")
    return SlotMoveCommand(value[0], tuple(_tuples(a) for a in value[1:]))


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


@dataclass(frozen=True, slots=True)
class ExportPage:
    """One page of a move's records, and where the next page starts (None: this was the last)."""

    records: tuple[tuple[int, bytes, bytes], ...]
    cursor: tuple[int, bytes] | None
    refusal: ExportRefusal = ExportRefusal.none


def records_digest(pages: Iterable[Sequence[tuple[int, bytes, bytes]]]) -> bytes:
    """What A's export and B's staged pages must agree on: every record, in order."""
    h = hashlib.blake2b(digest_size=16)
    for page in pages:
        for kind, key, value in page:
            h.update(bytes((kind, len(key))) + len(value).to_bytes(4, "little") + key + value)
    return h.digest()


class SlotMoves:
    """The slot-move commands and the export read, over the ledger's dbs of one shard (given by the state
    machine) and two of its own: ledger_slot_moves (fence, move records, tombstones) and ledger_slot_import
    (B's staged pages)."""

    DB_NAMES = ("ledger_slot_moves", "ledger_slot_import", "ledger_slot_delta")

    def __init__(self, dbs: dict[str, object], slot_count: int, clearing_dbs: Sequence[object],
                 prepared_touching: Callable[[lmdb.Transaction, set[int]], bool]) -> None:
        self._prepared_touching = prepared_touching  # whether a PREPARED txn names an id of the slots
        self._moves = dbs["ledger_slot_moves"]
        self._staged = dbs["ledger_slot_import"]
        self._delta = dbs["ledger_slot_delta"]  # kind (1) + key: a record of S written since TRACKING
        self._accounts = dbs["ledger_accounts"]
        self._owners = dbs["ledger_owners"]
        self._transfers = dbs["ledger_transfers"]
        self._account_transfers = dbs["ledger_account_transfers"]
        self._pending = dbs["ledger_pending"]
        self._xpending = dbs["ledger_xpending"]
        self._decisions = dbs["ledger_decisions"]
        self._trades = dbs["escrow_trades"]
        self._escrow_slots = dbs["escrow_slots"]
        self._expiry = dbs["ledger_expiry"]
        self._clearing_dbs = tuple(clearing_dbs)
        self._slot_count = slot_count

    # ------------------------------------------------------------------ the fence (read on every apply)

    def fence(self, txn: lmdb.Transaction) -> bytes | None:
        """One state byte per slot (SERVING, MOVING, MOVED), or None when no slot was ever fenced here."""
        return txn.get(_FENCE, db=self._moves)

    def tracking(self, txn: lmdb.Transaction) -> bytes | None:
        """One byte per slot, nonzero for the slots of a move in its precopy (None: no such move)."""
        return txn.get(_TRACK, db=self._moves)

    def note_writes(self, txn: lmdb.Transaction, keys: set[bytes]) -> None:
        """Note the keys (kind + key) of S's records an entry wrote during a precopy; past DELTA_KEYS_MAX stop
        noting and have the catch-up copy everything."""
        if txn.stat(self._delta)["entries"] + len(keys) > DELTA_KEYS_MAX:
            txn.put(_OVERFLOW, b"", db=self._moves)
            txn.delete(_TRACK, db=self._moves)
            return
        for key in keys:
            txn.put(key, b"", db=self._delta)

    def moving(self, txn: lmdb.Transaction) -> bool:
        """Whether a move is in progress here (clearing waits for it to end)."""
        return txn.get(_MOVE, db=self._moves) is not None

    def check_reads(self, txn: lmdb.Transaction, ids: Sequence[int]) -> None:
        """Raise SlotMovedError if an id's slot has left this shard (a read by a node with an older map)."""
        fence = self.fence(txn)
        if fence is None:
            return
        n = self._slot_count
        for i in ids:
            slot = slot_of(i, n)
            if fence[slot] == MOVED:
                shard, version = self.gone_to(txn, slot)
                raise SlotMovedError(slot, shard, version)

    def gone_to(self, txn: lmdb.Transaction, slot: int) -> tuple[int, int] | None:
        """(shard, topology version) a slot left this shard for, None if it did not."""
        raw = txn.get(_GONE_TO + slot.to_bytes(2, "big"), db=self._moves)
        return None if raw is None else tuple(unpack_value(raw))

    def current_move(self, txn: lmdb.Transaction) -> dict | None:
        raw = txn.get(_MOVE, db=self._moves)
        return None if raw is None else unpack_value(raw)

    # ------------------------------------------------------------------ commands

    def command(self, txn: lmdb.Transaction, c: SlotMoveCommand, add_totals: Callable[[lmdb.Transaction, dict], None],
                raise_clock: Callable[[int], None], now_ns: int = 0) -> int:
        """One command; `add_totals` folds per-ledger deltas of the ten totals into ledger_totals (checking that
        they balance), `raise_clock` keeps cluster time past the timestamps of imported records, `now_ns` is the
        timestamp the next record written here gets (TRACKING: what the precopy leaves to the catch-up)."""
        tag, args = c.tag, c.args
        if tag == LEAVING:
            return self._leaving(txn, *args)
        if tag == TRACKING:
            return self._begin(txn, *args, _ROLE_OUT, fence_now=False, since_ns=now_ns)
        if tag == IMPORTING:
            return self._importing(txn, *args)
        if tag == IMPORT:
            return self._import(txn, *args)
        if tag == ARRIVED:
            return self._arrived(txn, *args, add_totals=add_totals, raise_clock=raise_clock)
        if tag == GONE:
            return self._gone(txn, *args, add_totals=add_totals)
        if tag == ABORT:
            return self._abort(txn, *args)
        if tag == SWITCHED:
            return self._switched(txn, *args)
        raise ValueError(f"unknown slot-move command {tag}")

    def _check_slots(self, slots: Sequence[int]) -> tuple[int, ...]:
        slots = tuple(slots)
        if not 0 < len(slots) <= SLOTS_PER_MOVE_MAX or list(slots) != sorted(set(slots)):
            raise ValueError(f"a move names 1..{SLOTS_PER_MOVE_MAX} distinct slots in order")
        if slots[0] < 0 or slots[-1] >= self._slot_count:
            raise ValueError("slot out of range")
        return slots

    def _begin(self, txn, move_id: int, slots: Sequence[int], peer: int, role: str, *, fence_now: bool = True,
               since_ns: int = 0) -> int:
        if not 0 < move_id < U128_MAX or not 0 <= peer < 1 << 32:
            raise ValueError("invalid move id or shard")
        slots = self._check_slots(slots)
        current = self.current_move(txn)
        if current is not None:
            same = (current["id"] == move_id and current["role"] == role and tuple(current["slots"]) == slots
                    and current["peer"] == peer)
            return SlotMoveResult.already if same else SlotMoveResult.shard_busy
        done = self._done(txn, move_id)
        if done is not None:
            return SlotMoveResult.already if done == _ENDED[role] else SlotMoveResult.wrong_step
        fence = bytearray(self.fence(txn) or bytes(self._slot_count))
        for s in slots:
            if fence[s] == MOVING or (role == _ROLE_OUT and fence[s] == MOVED):
                return SlotMoveResult.slots_not_free
        if role == _ROLE_IN:
            if any(txn.stat(db)["entries"] for db in self._clearing_dbs):
                return SlotMoveResult.clearing_in_use
            if self._holds_any(txn, set(slots)):
                return SlotMoveResult.slots_not_free
        record = {"id": move_id, "role": role, "slots": list(slots), "peer": peer, "pages": 0, "records": 0,
                  "tracked": not fence_now, "fenced": fence_now}
        if not fence_now:
            # Records stamped from here on are noted as they are written: the precopy leaves them to the
            # catch-up, so it never chases a slot that is written faster than it is copied.
            record["since"] = since_ns
        if fence_now:
            for s in slots:
                fence[s] = MOVING
            txn.put(_FENCE, bytes(fence), db=self._moves)
        else:
            track = bytearray(self._slot_count)
            for s in slots:
                track[s] = 1
            txn.put(_TRACK, bytes(track), db=self._moves)
        txn.put(_MOVE, pack_value(record), db=self._moves)
        return SlotMoveResult.ok

    def _leaving(self, txn, move_id: int, slots: Sequence[int], to_shard: int) -> int:
        """Fence a move whose precopy ran (TRACKING), or begin and fence one in one step."""
        current = self.current_move(txn)
        if (current is not None and current["id"] == move_id and current["role"] == _ROLE_OUT
                and current.get("tracked") and not current.get("fenced")):
            if tuple(current["slots"]) != self._check_slots(slots) or current["peer"] != to_shard:
                return SlotMoveResult.shard_busy
            fence = bytearray(self.fence(txn) or bytes(self._slot_count))
            for s in current["slots"]:
                fence[s] = MOVING
            txn.put(_FENCE, bytes(fence), db=self._moves)
            # A keeps noting: a txn PREPARED before the fence still writes S when it finishes (the catch-up
            # waits for it), and nothing else does.
            current["fenced"] = True
            txn.put(_MOVE, pack_value(current), db=self._moves)
            return SlotMoveResult.ok
        return self._begin(txn, move_id, slots, to_shard, _ROLE_OUT)

    def _importing(self, txn, move_id: int, slots: Sequence[int], from_shard: int) -> int:
        return self._begin(txn, move_id, slots, from_shard, _ROLE_IN)

    def _holds_any(self, txn, slots: set[int]) -> bool:
        """Whether an account of these slots lives here (B must take S empty: a scan, once per move)."""
        n = self._slot_count
        for key in txn.cursor(db=self._accounts).iternext(keys=True, values=False):
            if slot_of(int.from_bytes(key, "big"), n) in slots:
                return True
        return False

    def _move_of(self, txn, move_id: int, role: str) -> dict | int:
        """The move in progress with this id and role, or the result that refuses the command."""
        current = self.current_move(txn)
        if current is not None and current["id"] == move_id:
            return current if current["role"] == role else SlotMoveResult.wrong_step
        done = self._done(txn, move_id)
        if done is None:
            return SlotMoveResult.unknown_move
        return SlotMoveResult.already if done == _ENDED[role] else SlotMoveResult.wrong_step

    def _done(self, txn, move_id: int) -> str | None:
        """How a finished move ended here: "gone" (A), "arrived" (B), "aborted"; None if it did not."""
        raw = txn.get(_DONE + move_id.to_bytes(16, "big"), db=self._moves)
        return None if raw is None else unpack_value(raw)

    def _import(self, txn, move_id: int, page_no: int, records: Sequence) -> int:
        move = self._move_of(txn, move_id, _ROLE_IN)
        if not isinstance(move, dict):
            return move
        if page_no < move["pages"]:
            return SlotMoveResult.already
        if page_no > move["pages"]:
            return SlotMoveResult.page_out_of_order
        if len(records) > PAGE_RECORDS_MAX:
            raise ValueError(f"a page holds at most {PAGE_RECORDS_MAX} records")
        slots = set(move["slots"])
        for record in records:
            self._check_record(record, slots)
        if move["records"] + len(records) > MOVE_RECORDS_MAX:
            return SlotMoveResult.too_large
        txn.put(page_no.to_bytes(4, "big"), pack_value([list(r) for r in records]), db=self._staged)
        move["pages"] += 1
        move["records"] += len(records)
        txn.put(_MOVE, pack_value(move), db=self._moves)
        return SlotMoveResult.ok

    def _check_record(self, record, slots: set[int]) -> None:
        """A staged record must be well formed and belong to the move (the driver is trusted, not blindly)."""
        kind, key, value = record
        if _KEY_SIZE.get(kind) != len(key):
            raise ValueError(f"record of kind {kind} with a {len(key)}-byte key")
        n = self._slot_count
        if kind == K_ACCOUNT:
            if len(value) != ACCOUNT_SIZE or slot_of(int.from_bytes(key, "big"), n) not in slots:
                raise ValueError("account record not of the move's slots")
        elif kind == K_OWNER:
            if not 0 < len(value) <= OWNER_BYTES_MAX or slot_of(int.from_bytes(key, "big"), n) not in slots:
                raise ValueError("owner record not of the move's slots")
        elif kind == K_INDEX:
            if len(value) != 17 or value[0] > 1 or slot_of(int.from_bytes(key[:16], "big"), n) not in slots:
                raise ValueError("index record not of the move's slots")
        elif kind == K_PENDING:
            if len(value) != 9 or not 1 <= value[0] <= 4:
                raise ValueError("pending status record not a status and an amount")
        elif kind == K_EXPIRY:
            if value:
                raise ValueError("expiry record with a value")
        elif kind == K_DECISION:
            unpack_decide(value[8:])  # well formed
        elif kind == K_TRANSFER:
            if not value or (len(value) != TRANSFER_SIZE and value[0] not in (_ID_FAILED_TAG, _ID_HOME_TAG)):
                raise ValueError("transfer record neither a transfer, a failed id nor an id home")
            if len(value) not in (TRANSFER_SIZE, TRANSFER_SIZE + 1, 2):
                raise ValueError(f"transfer record of {len(value)} bytes")

    def _staged_pages(self, txn, pages: int) -> list[list[tuple[int, bytes, bytes]]]:
        out = []
        for page_no in range(pages):
            raw = txn.get(page_no.to_bytes(4, "big"), db=self._staged)
            if raw is None:
                raise AssertionError(f"staged page {page_no} is missing")
            out.append([(k, bytes(key), bytes(value)) for k, key, value in unpack_value(raw)])
        return out

    def _arrived(self, txn, move_id: int, pages: int, records: int, digest: bytes, *,
                 add_totals: Callable, raise_clock: Callable[[int], None]) -> int:
        move = self._move_of(txn, move_id, _ROLE_IN)
        if not isinstance(move, dict):
            return move
        if move["pages"] != pages or move["records"] != records:
            return SlotMoveResult.mismatch
        staged = self._staged_pages(txn, pages)
        if records_digest(staged) != digest:
            return SlotMoveResult.mismatch
        slots = set(move["slots"])
        by_kind: dict[int, dict[bytes, bytes]] = {kind: {} for kind in _KEY_SIZE}
        for page in staged:
            for kind, key, value in page:
                by_kind[kind][key] = value
        deltas: dict[int, list[int]] = {}
        latest = 0
        moved_accounts = set()
        for key, value in by_kind[K_ACCOUNT].items():
            a = unpack_account(value)
            if txn.get(key, db=self._accounts) is not None:
                raise AssertionError(f"account {key.hex()} of a moving slot already exists here")
            txn.put(key, value, db=self._accounts)
            d = deltas.setdefault(a.ledger, [0] * 10)
            d[0] += a.debits_pending
            d[1] += a.debits_posted
            d[2] += a.credits_pending
            d[3] += a.credits_posted
            latest = max(latest, a.timestamp)
            moved_accounts.add(a.id)
        for key, value in by_kind[K_OWNER].items():
            if int.from_bytes(key, "big") not in moved_accounts:
                raise AssertionError(f"owner of account {key.hex()}, which did not arrive")
            txn.put(key, value, db=self._owners)
        for key, value in by_kind[K_TRANSFER].items():
            if _merged_transfer(key, txn.get(key, db=self._transfers), value):
                txn.put(key, value, db=self._transfers)
        moving_sides = _sides_by_transfer(by_kind[K_INDEX])
        for tkey, moving in moving_sides.items():
            t = _stored(txn, self._transfers, tkey, moving)
            latest = max(latest, t.timestamp)
            before = (_SIDE_DEBIT if t.debit_account_id not in moved_accounts and self._has(txn, t.debit_account_id)
                      else 0) | (_SIDE_CREDIT if t.credit_account_id not in moved_accounts
                                 and self._has(txn, t.credit_account_id) else 0)
            _add_remote(deltas, t.ledger, t.amount, before, before | moving)
        for key, value in by_kind[K_INDEX].items():
            if int.from_bytes(key[:16], "big") not in moved_accounts:
                raise AssertionError(f"index entry {key.hex()} of an account that did not arrive")
            txn.put(key, value, db=self._account_transfers)
        for key, value in by_kind[K_PENDING].items():
            if txn.get(key, db=self._pending) is not None:
                raise AssertionError(f"pending transfer {key.hex()} of a moving slot already has a status here")
            txn.put(key, value, db=self._pending)
        for key in by_kind[K_EXPIRY]:
            txn.put(key, b"", db=self._expiry)
        for key, value in by_kind[K_DECISION].items():
            existing = txn.get(key, db=self._decisions)
            if existing is None:
                txn.put(key, value, db=self._decisions)
            elif bytes(existing[8:]) != value[8:]:  # the same decision, stamped by each shard, is the same
                raise AssertionError(f"txn {key.hex()} was decided differently here")
        add_totals(txn, deltas)
        raise_clock(latest)
        for page_no in range(pages):
            txn.delete(page_no.to_bytes(4, "big"), db=self._staged)
        self._finish(txn, move, slots, SERVING)
        return SlotMoveResult.ok

    def _switched(self, txn, move_id: int, version: int) -> int:
        move = self._move_of(txn, move_id, _ROLE_OUT)
        if not isinstance(move, dict):
            return move
        if move.get("switched"):
            return SlotMoveResult.already
        self._switch(txn, move, version)
        return SlotMoveResult.ok

    def _switch(self, txn, move: dict, version: int) -> None:
        if not 0 < version < 1 << 63:
            raise ValueError("invalid topology version")
        fence = bytearray(self.fence(txn) or bytes(self._slot_count))
        for s in move["slots"]:
            fence[s] = MOVED
            txn.put(_GONE_TO + s.to_bytes(2, "big"), pack_value([move["peer"], version]), db=self._moves)
        self._store_fence(txn, fence)
        move["switched"] = version
        txn.put(_MOVE, pack_value(move), db=self._moves)

    def _gone(self, txn, move_id: int, version: int, *, add_totals: Callable) -> int:
        move = self._move_of(txn, move_id, _ROLE_OUT)
        if not isinstance(move, dict):
            return move
        if not move.get("switched"):
            self._switch(txn, move, version)
        slots = set(move["slots"])
        n = self._slot_count
        accounts = []
        for key, value in txn.cursor(db=self._accounts).iternext():
            if slot_of(int.from_bytes(key, "big"), n) in slots:
                accounts.append(unpack_account(value))
        moved = {a.id for a in accounts}
        deltas: dict[int, list[int]] = {}
        index: dict[bytes, bytes] = {}
        for a in accounts:
            d = deltas.setdefault(a.ledger, [0] * 10)
            d[0] -= a.debits_pending
            d[1] -= a.debits_posted
            d[2] -= a.credits_pending
            d[3] -= a.credits_posted
            index.update(_prefix_items(txn, self._account_transfers, a.id.to_bytes(16, "big")))
        for tkey, moving in _sides_by_transfer(index).items():
            t = _stored(txn, self._transfers, tkey, moving)
            before = ((_SIDE_DEBIT if self._has(txn, t.debit_account_id) else 0)
                      | (_SIDE_CREDIT if self._has(txn, t.credit_account_id) else 0))
            _add_remote(deltas, t.ledger, t.amount, before, before & ~moving)
        for key in index:
            txn.delete(key, db=self._account_transfers)
        for pkey, status, p in self._carried_pendings(txn, slots):
            txn.delete(pkey, db=self._pending)
            if status[0] == _STATUS_PENDING and p.timeout:
                txn.delete((p.timestamp + p.timeout * _NS).to_bytes(8, "big") + pkey, db=self._expiry)
        for aid in moved:
            key = aid.to_bytes(16, "big")
            txn.delete(key, db=self._accounts)
            txn.delete(key, db=self._owners)
        add_totals(txn, deltas)
        self._finish(txn, move, slots, MOVED)
        return SlotMoveResult.ok

    def _abort(self, txn, move_id: int) -> int:
        current = self.current_move(txn)
        if current is None or current["id"] != move_id:
            done = self._done(txn, move_id)
            if done is None:
                return SlotMoveResult.unknown_move
            return SlotMoveResult.already if done == "aborted" else SlotMoveResult.wrong_step
        if current.get("switched"):
            return SlotMoveResult.wrong_step  # the slots have left: B may serve them already
        for page_no in range(current["pages"]):
            txn.delete(page_no.to_bytes(4, "big"), db=self._staged)
        self._forget_precopy(txn)
        fence = bytearray(self.fence(txn) or bytes(self._slot_count))
        for s in current["slots"]:
            # A serves its slots again; B's go back to what they were (a tombstone if B gave them away before).
            gave_away = txn.get(_GONE_TO + s.to_bytes(2, "big"), db=self._moves) is not None
            fence[s] = MOVED if current["role"] == _ROLE_IN and gave_away else SERVING
        self._store_fence(txn, fence)
        txn.delete(_MOVE, db=self._moves)
        txn.put(_DONE + move_id.to_bytes(16, "big"), pack_value("aborted"), db=self._moves)
        return SlotMoveResult.ok

    def _forget_precopy(self, txn) -> None:
        txn.delete(_TRACK, db=self._moves)
        txn.delete(_OVERFLOW, db=self._moves)
        txn.drop(self._delta, delete=False)

    def _finish(self, txn, move: dict, slots: set[int], state: int) -> None:
        self._forget_precopy(txn)
        fence = bytearray(self.fence(txn) or bytes(self._slot_count))
        for s in slots:
            fence[s] = state
            if state == SERVING:
                txn.delete(_GONE_TO + s.to_bytes(2, "big"), db=self._moves)
        self._store_fence(txn, fence)
        txn.delete(_MOVE, db=self._moves)
        txn.put(_DONE + move["id"].to_bytes(16, "big"), pack_value("gone" if state == MOVED else "arrived"),
                db=self._moves)

    def _store_fence(self, txn, fence: bytearray) -> None:
        if any(fence):
            txn.put(_FENCE, bytes(fence), db=self._moves)
        else:
            txn.delete(_FENCE, db=self._moves)

    def _has(self, txn, account_id: int) -> bool:
        return txn.get(account_id.to_bytes(16, "big"), db=self._accounts) is not None

    # ------------------------------------------------------------------ export (a read on A)

    def export_page(self, txn: lmdb.Transaction, move_id: int, cursor: tuple[int, bytes] | None = None,
                    records_max: int = PAGE_RECORDS_MAX) -> ExportPage:
        """The records of a move leaving this shard from `cursor` (None: the start) on, at most `records_max`
        of them and EXPORT_SCAN_MAX keys looked at; a page may be empty and still have a next cursor.

        Phases: P_CHECK what the move cannot carry (pending transfers, escrow, clearing), P_ACCOUNTS accounts
        and owners, P_INDEX each account's index entries and their transfers, P_IDS every other transfer
        record with an id in S, P_DECISIONS the decisions of committed groups whose coordinator S's accounts
        make B, P_PENDINGS pending transfers with their status and expiry, P_DELTA the records written since
        TRACKING. Which run (_next_phase): a precopy (TRACKING, not fenced yet) gives accounts, index, ids
        and decisions; its catch-up (fenced) gives checks, delta and pendings (everything, if the delta
        overflowed); a move fenced by LEAVING alone gives all but the delta.
        The same cursor on the same (fenced, so frozen) state gives the same page."""
        move = self.current_move(txn)
        if move is None or move["id"] != move_id or move["role"] != _ROLE_OUT:
            return ExportPage((), None, ExportRefusal.not_leaving)
        if not 0 < records_max <= PAGE_RECORDS_MAX:
            raise ValueError(f"records_max must be 1..{PAGE_RECORDS_MAX}")
        slots = set(move["slots"])
        fenced = move.get("fenced", True)
        phase, after = cursor if cursor is not None else (P_CHECK if fenced else P_ACCOUNTS, b"")
        if not fenced and phase not in (P_ACCOUNTS, P_INDEX, P_IDS, P_DECISIONS):
            raise ValueError(f"export phase {phase} before the fence")
        out: list[tuple[int, bytes, bytes]] = []
        # The precopy copies records stamped before TRACKING (later ones are noted).
        before_ns = _ABOVE_EVERY_TIMESTAMP if fenced else move["since"]
        if phase == P_CHECK:
            page = self._export_check(txn, slots, after)
        elif phase == P_ACCOUNTS:
            page = self._export_accounts(txn, slots, after, records_max, out, before_ns)
        elif phase == P_INDEX:
            page = self._export_index(txn, slots, after, records_max, out, before_ns)
        elif phase == P_IDS:
            page = self._export_ids(txn, slots, after, records_max, out, before_ns, precopy=not fenced)
        elif phase == P_DECISIONS:
            page = self._export_decisions(txn, slots, after, records_max, out, before_ns)
        elif phase == P_PENDINGS:
            page = self._export_pendings(txn, slots, after, records_max, out)
        elif phase == P_DELTA and move.get("tracked"):
            page = self._export_delta(txn, slots, after, records_max, out)
        else:
            raise ValueError(f"bad export cursor phase {phase}")
        if page.cursor is not None and page.cursor[0] != phase:  # this phase is done
            page = dataclasses.replace(page, cursor=self._next_phase(txn, move, phase))
        return page

    def _next_phase(self, txn, move: dict, phase: int) -> tuple[int, bytes] | None:
        if not move.get("tracked"):
            return None if phase == P_PENDINGS else (phase + 1, b"")
        if not move.get("fenced"):
            return None if phase == P_DECISIONS else (phase + 1, b"")
        if phase == P_CHECK:
            return (P_ACCOUNTS if txn.get(_OVERFLOW, db=self._moves) is not None else P_DELTA, b"")
        if phase == P_DECISIONS:
            return (P_DELTA, b"")
        if phase == P_DELTA:
            return (P_PENDINGS, b"")
        return None if phase == P_PENDINGS else (phase + 1, b"")

    def _in(self, key: bytes, slots: set[int]) -> bool:
        return slot_of(int.from_bytes(key[:16], "big"), self._slot_count) in slots

    def _export_check(self, txn, slots: set[int], after: bytes) -> ExportPage:
        """Phase 0, in steps: clearing and escrow (cheap), then pending transfers (a scan, bounded per call)."""
        if not after:
            if any(txn.stat(db)["entries"] for db in self._clearing_dbs):
                return ExportPage((), None, ExportRefusal.clearing)
            for key in txn.cursor(db=self._escrow_slots).iternext(keys=True, values=False):
                if int.from_bytes(key[4:6], "big") in slots:
                    return ExportPage((), None, ExportRefusal.escrow)
            for key in txn.cursor(db=self._trades).iternext(keys=True, values=False):
                if self._in(key, slots):
                    return ExportPage((), None, ExportRefusal.escrow)
            if self._prepared_touching(txn, slots):
                return ExportPage((), None, ExportRefusal.reserved)
            after = b"p"
        scanned = 0
        for tag, db in ((b"p", self._pending), (b"x", self._xpending)):
            if after[:1] > tag:
                continue
            cursor = txn.cursor(db=db)
            start = after[1:] if after[:1] == tag else b""
            found = cursor.set_range(start) if start else cursor.first()
            if found and start and cursor.key() == start:
                found = cursor.next()
            while found:
                key = cursor.key()
                if scanned >= EXPORT_SCAN_MAX:
                    return ExportPage((), (P_CHECK, tag + _before(key)))
                scanned += 1
                raw = txn.get(key, db=self._transfers)
                if tag == b"x" or raw is None or len(raw) != TRANSFER_SIZE:
                    # a cross-shard pending transfer (or one whose id alone is here): not carried yet
                    if self._in(key, slots) or (raw is not None and len(raw) == TRANSFER_SIZE
                                                and self._names(unpack_transfer(raw), slots)):
                        return ExportPage((), None, ExportRefusal.pending_transfers)
                else:
                    t = unpack_transfer(raw)
                    d = self._in(t.debit_account_id.to_bytes(16, "big"), slots)
                    c = self._in(t.credit_account_id.to_bytes(16, "big"), slots)
                    if d != c:  # the move would split it (one whose id alone is in S stays, only its id is copied)
                        return ExportPage((), None, ExportRefusal.pending_transfers)
                found = cursor.next()
        return ExportPage((), (P_ACCOUNTS, b""))

    def _names(self, t, slots: set[int]) -> bool:
        return any(self._in(i.to_bytes(16, "big"), slots) for i in (t.id, t.debit_account_id, t.credit_account_id))

    def _carried_pendings(self, txn, slots: set[int]) -> list[tuple[bytes, bytes, object]]:
        """(pending id key, ledger_pending status, transfer) of every pending transfer whose accounts are in S:
        they move with them (phase 0 refused the move if any pending transfer would be split)."""
        out = []
        for key, status in txn.cursor(db=self._pending).iternext():
            raw = txn.get(key, db=self._transfers)
            if raw is None or len(raw) != TRANSFER_SIZE:
                continue
            t = unpack_transfer(raw)
            if self._in(t.debit_account_id.to_bytes(16, "big"), slots):
                out.append((bytes(key), bytes(status), t))
        return out

    def _account_records(self, txn, key: bytes, value: bytes, out: list) -> None:
        out.append((K_ACCOUNT, key, value))
        owner = txn.get(key, db=self._owners)
        if owner is not None:
            out.append((K_OWNER, key, bytes(owner)))

    def _index_records(self, txn, key: bytes, value: bytes, slots: set[int], out: list) -> bool:
        """An index entry of S's and its transfer (sent once: with the debit side's entry when both sides are
        in S); False, sending nothing, if the transfer is a pending one the move would split."""
        raw = txn.get(value[1:], db=self._transfers)
        if raw is None or len(raw) != TRANSFER_SIZE:
            raise AssertionError(f"account index names a missing transfer {value[1:].hex()}")
        t = unpack_transfer(raw)
        other_in_s = self._in((t.credit_account_id if value[0] == 0 else t.debit_account_id).to_bytes(16, "big"),
                              slots)
        if t.flags & _PENDING_FLAGS and not other_in_s:
            return False
        out.append((K_INDEX, key, value))
        if value[0] == 0 or not other_in_s:
            out.append((K_TRANSFER, value[1:], bytes(raw)))
        return True

    def _id_record(self, key: bytes, value: bytes, out: list, *, precopy: bool) -> bool:
        """A ledger_transfers record with an id in S; False if a PREPARED txn reserves the id (a wait, under the
        fence; the precopy skips it: whatever it becomes is noted)."""
        if value[0] == _ID_RESERVED_TAG and len(value) != TRANSFER_SIZE:
            return precopy
        out.append((K_TRANSFER, key, value))
        return True

    def _export_accounts(self, txn, slots, after: bytes, records_max: int, out: list, before_ns: int) -> ExportPage:
        cursor = txn.cursor(db=self._accounts)
        found = _resume(cursor, after)
        scanned = 0
        while found:
            key, value = cursor.item()
            if scanned >= EXPORT_SCAN_MAX or (out and len(out) + 2 > records_max):
                return ExportPage(tuple(out), (P_ACCOUNTS, _before(key)))
            scanned += 1
            if self._in(key, slots) and unpack_account(value).timestamp < before_ns:
                self._account_records(txn, bytes(key), bytes(value), out)
            found = cursor.next()
        return ExportPage(tuple(out), (P_INDEX, b""))

    def _export_index(self, txn, slots, after: bytes, records_max: int, out: list, before_ns: int) -> ExportPage:
        """Index entries of S's accounts, each with its transfer: account by account (the accounts table is far
        smaller than the index), each account's own range of the index. `after` is the last index key done
        (an account id and 8 zero bytes: none of that account's yet)."""
        accounts = txn.cursor(db=self._accounts)
        index = txn.cursor(db=self._account_transfers)
        found = accounts.set_range(after[:16]) if after else accounts.first()
        scanned = 0
        while found:
            akey = bytes(accounts.key())
            if scanned >= EXPORT_SCAN_MAX:
                return ExportPage(tuple(out), (P_INDEX, akey + bytes(8)))
            scanned += 1
            if self._in(akey, slots):
                start = after if after[:16] == akey else akey
                more = index.set_range(start)
                if more and index.key() == after:
                    more = index.next()
                while more and index.key()[:16] == akey and int.from_bytes(index.key()[16:], "big") < before_ns:
                    key, value = index.item()
                    if scanned >= EXPORT_SCAN_MAX or (out and len(out) + 2 > records_max):
                        return ExportPage(tuple(out), (P_INDEX, _before(key)))
                    scanned += 1
                    if not self._index_records(txn, bytes(key), bytes(value), slots, out):
                        return ExportPage((), None, ExportRefusal.pending_transfers)
                    more = index.next()
            after = b""
            found = accounts.next()
        return ExportPage(tuple(out), (P_IDS, b""))

    def _export_ids(self, txn, slots, after: bytes, records_max: int, out: list, before_ns: int, *,
                    precopy: bool) -> ExportPage:
        """Every ledger_transfers record whose id is in S (transfers, failed ids, id homes). An id reserved by a
        PREPARED txn is a wait under the fence; the precopy skips it (whatever it becomes is in the delta)."""
        cursor = txn.cursor(db=self._transfers)
        found = _resume(cursor, after)
        scanned = 0
        while found:
            key, value = cursor.item()
            if scanned >= EXPORT_SCAN_MAX or len(out) + 1 > records_max:
                return ExportPage(tuple(out), (P_IDS, _before(key)))
            scanned += 1
            if self._in(key, slots):
                # A transfer naming an account of S went with its index entry; one stamped after TRACKING was noted.
                if len(value) == TRANSFER_SIZE:
                    t = unpack_transfer(value)
                    skip = t.timestamp >= before_ns or any(
                        self._in(a.to_bytes(16, "big"), slots) for a in (t.debit_account_id, t.credit_account_id))
                else:
                    skip = False
                if not skip and not self._id_record(bytes(key), bytes(value), out, precopy=precopy):
                    return ExportPage((), None, ExportRefusal.reserved)
            found = cursor.next()
        return ExportPage(tuple(out), (P_DECISIONS, b""))

    def _export_decisions(self, txn, slots, after: bytes, records_max: int, out: list, before_ns: int) -> ExportPage:
        """Decisions of committed groups coordinated for an account in S (their first transfer's debit), and of
        aborted attempts."""
        cursor = txn.cursor(db=self._decisions)
        found = _resume(cursor, after)
        scanned = 0
        while found:
            key, value = cursor.item()
            if scanned >= EXPORT_SCAN_MAX or len(out) + 1 > records_max:
                return ExportPage(tuple(out), (P_DECISIONS, _before(key)))
            scanned += 1
            if int.from_bytes(value[:8], "little") < before_ns and self._decision_moves(txn, value, slots):
                out.append((K_DECISION, bytes(key), bytes(value)))
            found = cursor.next()
        return ExportPage(tuple(out), (P_PENDINGS, b""))

    def _decision_moves(self, txn, value: bytes, slots: set[int]) -> bool:
        """Every aborted attempt's decision (it names no account: which shard coordinated it cannot be told, and
        B must not run an attempt key again that A aborted), and committed ones coordinated for S's accounts."""
        decide = unpack_decide(value[8:])
        if not decide.commit:
            return True
        if decide.transfer_ids:
            raw = txn.get(decide.transfer_ids[0].to_bytes(16, "big"), db=self._transfers)
            if raw is not None and len(raw) == TRANSFER_SIZE:
                return self._in(unpack_transfer(raw).debit_account_id.to_bytes(16, "big"), slots)
        return False

    def _export_delta(self, txn, slots, after: bytes, records_max: int, out: list) -> ExportPage:
        """The records of S written since TRACKING, as they are now (the fence froze them): what the precopy
        missed or saw before it changed. The same filters as the phases that copied them."""
        cursor = txn.cursor(db=self._delta)
        found = _resume(cursor, after)
        scanned = 0
        while found:
            noted = bytes(cursor.key())
            if scanned >= EXPORT_SCAN_MAX or (out and len(out) + 2 > records_max):
                return ExportPage(tuple(out), (P_DELTA, _before(noted)))
            scanned += 1
            kind, key = noted[0], noted[1:]
            if kind == K_ACCOUNT and self._in(key, slots):
                value = txn.get(key, db=self._accounts)
                if value is None:
                    raise AssertionError(f"a written account {key.hex()} is missing")
                self._account_records(txn, key, bytes(value), out)
            elif kind == K_INDEX and self._in(key, slots):
                value = txn.get(key, db=self._account_transfers)
                # None: written by a chain that was rolled back
                if value is not None and not self._index_records(txn, key, bytes(value), slots, out):
                    return ExportPage((), None, ExportRefusal.pending_transfers)
            elif kind == K_TRANSFER and self._in(key, slots):
                value = txn.get(key, db=self._transfers)
                # None: an id a PREPARED txn reserved, and its abort freed
                if value is not None and not self._id_record(key, bytes(value), out, precopy=False):
                    return ExportPage((), None, ExportRefusal.reserved)
            elif kind == K_DECISION:
                value = txn.get(key, db=self._decisions)
                if value is not None and self._decision_moves(txn, value, slots):
                    out.append((K_DECISION, key, bytes(value)))
            found = cursor.next()
        return ExportPage(tuple(out), (P_PENDINGS, b""))

    def _export_pendings(self, txn, slots, after: bytes, records_max: int, out: list) -> ExportPage:
        """The status, and the expiry key of those still pending, of pending transfers whose accounts are in S."""
        cursor = txn.cursor(db=self._pending)
        found = _resume(cursor, after)
        scanned = 0
        while found:
            key, status = cursor.item()
            if scanned >= EXPORT_SCAN_MAX or (out and len(out) + 2 > records_max):
                return ExportPage(tuple(out), (P_PENDINGS, _before(key)))
            scanned += 1
            raw = txn.get(key, db=self._transfers)
            if raw is not None and len(raw) == TRANSFER_SIZE:
                t = unpack_transfer(raw)
                if self._in(t.debit_account_id.to_bytes(16, "big"), slots):
                    out.append((K_PENDING, bytes(key), bytes(status)))
                    if status[0] == _STATUS_PENDING and t.timeout:
                        expires = (t.timestamp + t.timeout * _NS).to_bytes(8, "big")
                        out.append((K_EXPIRY, expires + bytes(key), b""))
            found = cursor.next()
        return ExportPage(tuple(out), None)


def _resume(cursor, after: bytes) -> bool:
    """Place a cursor on the first key past `after` (b"": the first key); whether there is one."""
    found = cursor.set_range(after) if after else cursor.first()
    if found and after and cursor.key() == after:
        found = cursor.next()
    return found


def _before(key: bytes) -> bytes:
    """A cursor that resumes at `key` itself (the next call skips only an exact match of what it returns)."""
    value = int.from_bytes(key, "big")
    return (value - 1).to_bytes(len(key), "big") if value else b""


def _record_kind(raw: bytes) -> int:
    """What a ledger_transfers value is: a transfer, or (by its tag) an id home, failed id or reserved id."""
    if len(raw) == TRANSFER_SIZE:
        return 0
    if raw[:1] in (b"H", b"F", b"R"):
        return raw[0]
    raise AssertionError(f"a ledger_transfers value of {len(raw)} bytes")


def _merged_transfer(key: bytes, existing: bytes | None, arriving: bytes) -> bool:
    """Whether an arriving ledger_transfers record is written over what B holds under the same id.

    Ids are global, so both must tell the same story: a transfer replaces an id home (B now holds a side
    of it); the same transfer (each shard stamps its own copy of a cross-shard one), and a transfer or id
    home over an id home, stay; anything else (a transfer here and a failed id there, an id reserved here
    by a PREPARED txn) is a bug."""
    if existing is None:
        return True
    have, get = _record_kind(existing), _record_kind(arriving)
    if have == 0 and (get == _ID_HOME_TAG or (get == 0 and _same_transfer(existing, arriving))):
        return False
    if have == _ID_HOME_TAG and get in (0, _ID_HOME_TAG):
        return get == 0
    if have == _ID_FAILED_TAG and get == _ID_FAILED_TAG:
        return False
    raise AssertionError(f"transfer id {key.hex()} holds {bytes(existing[:1])!r}.. here and {arriving[:1]!r}.. there")


def _same_transfer(a: bytes, b: bytes) -> bool:
    return dataclasses.replace(unpack_transfer(a), timestamp=0) == dataclasses.replace(unpack_transfer(b),
                                                                                           timestamp=0)


def _prefix_items(txn, db, prefix: bytes) -> list[tuple[bytes, bytes]]:
    cursor = txn.cursor(db=db)
    out = []
    if cursor.set_range(prefix):
        for key, value in cursor.iternext():
            if not key.startswith(prefix):
                break
            out.append((bytes(key), bytes(value)))
    return out


def _sides_by_transfer(index: dict[bytes, bytes]) -> dict[bytes, int]:
    """Which sides of each transfer the given index entries hold (1 debit, 2 credit)."""
    out: dict[bytes, int] = {}
    for value in index.values():
        tkey = bytes(value[1:])
        out[tkey] = out.get(tkey, 0) | (_SIDE_DEBIT if value[0] == 0 else _SIDE_CREDIT)
    return out


def _stored(txn, db, tkey: bytes, moving: int):
    raw = txn.get(tkey, db=db)
    if raw is None or len(raw) != TRANSFER_SIZE:
        raise AssertionError(f"account index names a missing transfer {tkey.hex()}")
    t = unpack_transfer(raw)
    if t.flags & _PENDING_FLAGS and moving != _SIDE_DEBIT | _SIDE_CREDIT:
        raise AssertionError(f"transfer {tkey.hex()} of a pending transfer would be split by a slot move")
    return t


def _remote(sides: int, amount: int) -> tuple[int, int]:
    """What one posted transfer adds to (remote_debits_posted, remote_credits_posted) on a shard holding
    `sides` of it: a one-sided leg is remote, both sides or none are not."""
    if sides == _SIDE_DEBIT:
        return amount, 0
    if sides == _SIDE_CREDIT:
        return 0, amount
    return 0, 0


def _add_remote(deltas: dict[int, list[int]], ledger: int, amount: int, before: int, after: int) -> None:
    old, new = _remote(before, amount), _remote(after, amount)
    if old == new:
        return
    d = deltas.setdefault(ledger, [0] * 10)
    d[6] += new[0] - old[0]  # remote_debits_posted (state_machine._TOTAL_KEYS)
    d[7] += new[1] - old[1]  # remote_credits_posted

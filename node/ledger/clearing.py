"""The clearing rules: participants, positions under a net debit cap, windows, netting, settlement bookkeeping.

Pure functions of an LMDB write txn, like the ledger rules (no clock: time is the
entry's cluster timestamp; no I/O but the txn). Where things live:

* An **item** lives on the shard of its own id's hash slot, so a big participant's
  items spread over every shard: no participant is a hot spot.
* A participant's **net debit cap (NDC)** is split into per-shard *allowances*
  (the demarcation protocol). On each shard ``net`` is the participant's position
  there (what it paid minus what it received, over unsettled items); an item is
  accepted only while ``net + amount <= allowance``. The participant's home shard
  keeps the authoritative record and a *pool*: the part of the cap no shard holds.
  Allowance moves from a source (a shard's headroom, or the pool) to a destination
  in two steps, TAKE on the source (remembered there until acknowledged) and GIVE on
  the destination (once per move id), so at every instant
  ``sum(allowances) + pool + moving == NDC`` and the position
  ``sum(nets) <= sum(allowances) <= NDC``: the cap holds on every shard, always.
* Every shard keeps a copy of every participant (to check an item alone); copies
  carry a version and only move forward.
* A ledger's **windows** are recorded on the ledger's home shard. Each shard keeps
  the number of the window its items go to; closing window w moves every shard to
  w + 1 (an item is applied on one shard, before or after that shard's move: it is
  in exactly one window). Each shard keeps running sums per (window, participant)
  and per (window, payer, payee), so netting a window costs O(participants x
  shards), not O(items).
* A ledger has at most PARTICIPANTS_PER_LEDGER_MAX participants: each is *admitted*
  on the ledger's home shard (counted, idempotent by id) before it is registered on
  its own home, so the count is exact however registrations spread over shards.
* A closed window that has not settled may be **aborted**: every shard excludes its
  items (status aborted, sums and positions taken back, like an unwind of everyone)
  and the window is never settled. A shard that gave the window's cap back (settled
  it here) refuses to abort it, and one that began aborting it refuses to settle it.

LMDB layout (keys big-endian):

======================  ===========================================  ===============================================
db                      key                                          value
======================  ===========================================  ===============================================
clearing_participants   participant id (16)                          packed Participant (a copy, or the home record)
clearing_home           participant id (16)                          b"" (this shard is its home) or version to push
clearing_positions      participant id (16)                          allowance, net, pool (3 x i128)
clearing_moves_out      move id (16)                                 msgpack [dest shard, participant, amount,
                                                                     to_pool, taken_at]
clearing_moves_in       move id (16)                                 given_at (8)
clearing_moves_done     move id (16)                                 acknowledged_at (8), amount (8)
clearing_forget_by_     b"i" or b"o", time (8), move id (16)         b"" (moves in / done, forgotten after an hour)
  time
clearing_items          item id (16)                                 packed ClearingItem
clearing_index          ledger (4) window (8) participant (16) item  role (1): 0 payer, 1 payee
clearing_sums           ledger (4) window (8) participant (16)       sent, received (2 x u128), n_sent, n_received
clearing_bilateral      ledger (4) window (8) payer (16) payee (16)  amount (u128), count (8)
clearing_cursor         b"c" ledger (4)                              this shard's current window (8)
                        b"s" ledger (4) window (8)                   this shard gave the window's cap back
                        b"u" ledger window participant               last item unwound (16)
                        b"x" ledger (4) window (8)                   this shard began aborting the window
                        b"a" ledger (4) window (8)                   last index key an abort went through (44)
                        b"h" ledger (4)                              the ledger's open window (its home) (8)
                        b"n" ledger (4)                              participants admitted (ledger's home) (8)
                        b"m" ledger (4) participant (16)             b"": admitted toward the ledger's limit
clearing_windows        ledger (4) window (8)                        msgpack window record (ledger's home)
clearing_nets           ledger (4) window (8) participant (16)       msgpack [sent, received, n_sent, n_received]
======================  ===========================================  ===============================================
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator, Sequence
from typing import Any

import lmdb

from tidebank.common.keys import U64_MAX, U128_MAX
from tidebank.common.limits import PARTICIPANTS_PER_LEDGER_MAX
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
    ITEM_ABORTED,
    ITEM_ACCEPTED,
    ITEM_UNWOUND,
    PARTICIPANT_NAME_BYTES_MAX,
    ClearingCommand,
    ClearingItem,
    Participant,
    pack_item,
    pack_participant,
    pack_value,
    unpack_item,
    unpack_participant,
    unpack_value,
)
from tidebank.node.ledger.records import Transfer, TransferFlags
from tidebank.node.ledger.results import (
    ITEM_ALLOWANCE_LOW,
    WINDOW_NOT_DUE,
    ClearingItemResult,
    ParticipantResult,
    WindowResult,
)

_IR = ClearingItemResult
_PR = ParticipantResult
_WR = WindowResult

WINDOW_OPEN = 0
WINDOW_CLOSING = 1
WINDOW_CLOSED = 2
WINDOW_SETTLING = 3
WINDOW_SETTLED = 4
WINDOW_ABORTED = 5
WINDOW_STATES = ("open", "closing", "closed", "settling", "settled", "aborted")

SETTLE_LEASE_S = 60  # a settlement attempt nobody finished for this long (cluster time) may be taken over
UNWIND_ITEMS_PER_ENTRY_MAX = 4096  # items one UNWIND_HERE / ABORT_HERE command excludes (a bounded entry's work)
MOVES_KEPT_S = 3600  # a GIVE or TAKE retried later than this after the first would apply twice (deadlines <= 30 s)

_I128 = struct.Struct("<16s16s16s")
_SUMS = struct.Struct("<16s16sQQ")
_BILATERAL = struct.Struct("<16sQ")
_U64 = struct.Struct("<Q")
_U64_BE = struct.Struct(">Q")
_DONE = struct.Struct("<QQ")  # acknowledged at, amount


def _k(value: int) -> bytes:
    return value.to_bytes(16, "big")


def _ledger_window(ledger: int, window: int) -> bytes:
    return ledger.to_bytes(4, "big") + window.to_bytes(8, "big")


def _scan(txn, db, prefix: bytes, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) of the keys that start with `prefix`, in key order, from `start` (default: the prefix)."""
    with txn.cursor(db=db) as cursor:
        if not cursor.set_range(start if start is not None else prefix):
            return
        for key, value in cursor.iternext():
            if not key.startswith(prefix):
                return
            yield key, value


def _i128(raw: bytes) -> int:
    return int.from_bytes(raw, "little", signed=True)


def _to_i128(value: int) -> bytes:
    return value.to_bytes(16, "little", signed=True)


class ClearingInvariantViolation(AssertionError):
    """A clearing invariant does not hold: a bug, never user error (the operation is rolled back)."""


class ClearingRules:
    """Deterministic clearing rules over the "clearing_*" named dbs of one shard's LMDB env."""

    DB_NAMES: tuple[str, ...] = (
        "clearing_participants",
        "clearing_home",
        "clearing_positions",
        "clearing_moves_out",
        "clearing_moves_in",
        "clearing_moves_done",
        "clearing_forget_by_time",
        "clearing_items",
        "clearing_index",
        "clearing_sums",
        "clearing_bilateral",
        "clearing_cursor",
        "clearing_windows",
        "clearing_nets",
    )

    def __init__(self, env: lmdb.Environment, *, txn: lmdb.Transaction | None = None) -> None:
        dbs = {name: env.open_db(name.encode(), txn=txn, create=True) for name in self.DB_NAMES}
        self._participants = dbs["clearing_participants"]
        self._home = dbs["clearing_home"]
        self._positions = dbs["clearing_positions"]
        self._moves_out = dbs["clearing_moves_out"]
        self._moves_in = dbs["clearing_moves_in"]
        self._moves_done = dbs["clearing_moves_done"]
        self._forget = dbs["clearing_forget_by_time"]
        self._items = dbs["clearing_items"]
        self._index = dbs["clearing_index"]
        self._sums = dbs["clearing_sums"]
        self._bilateral = dbs["clearing_bilateral"]
        self._cursor = dbs["clearing_cursor"]
        self._windows = dbs["clearing_windows"]
        self._nets = dbs["clearing_nets"]

    # ------------------------------------------------------------------ items

    def submit_items(self, txn: lmdb.Transaction, items: Sequence[ClearingItem], timestamp_ns: int) -> list[int]:
        """Accept or refuse each item, in order. Participants, positions and sums are read once per batch and
        written back once at the end."""
        participants: dict[int, Participant | None] = {}
        positions: dict[int, list[int]] = {}
        sums: dict[bytes, list[int]] = {}
        bilateral: dict[bytes, list[int]] = {}
        windows: dict[int, int] = {}
        codes: list[int] = []
        for item in items:
            code = self._submit_item(txn, item, timestamp_ns, participants, positions, sums, bilateral, windows)
            codes.append(code)
        for pid, pos in positions.items():
            allowance, net = pos[0], pos[1]
            if net > allowance and pos[3]:
                raise ClearingInvariantViolation(f"participant {pid}: position {net} above its allowance {allowance}")
            txn.put(_k(pid), _I128.pack(_to_i128(pos[0]), _to_i128(pos[1]), _to_i128(pos[2])), db=self._positions)
        for key, s in sums.items():
            txn.put(key, _SUMS.pack(s[0].to_bytes(16, "little"), s[1].to_bytes(16, "little"), s[2], s[3]),
                    db=self._sums)
        for key, b in bilateral.items():
            txn.put(key, _BILATERAL.pack(b[0].to_bytes(16, "little"), b[1]), db=self._bilateral)
        return codes

    def _submit_item(self, txn, item: ClearingItem, ts: int, participants, positions, sums, bilateral,
                     windows) -> int:
        iid = item.id
        if iid == 0:
            return _IR.id_must_not_be_zero
        if iid == U128_MAX:
            return _IR.id_must_not_be_int_max
        key = _k(iid)
        stored = txn.get(key, db=self._items)
        if stored is not None:
            return _item_exists(item, unpack_item(stored))
        if item.amount == 0:
            return _IR.amount_must_not_be_zero
        if item.ledger == 0:
            return _IR.ledger_must_not_be_zero
        if item.payer_id == item.payee_id:
            return _IR.same_participant
        payer = self._participant_cached(txn, item.payer_id, participants)
        if payer is None:
            return _IR.payer_not_found
        payee = self._participant_cached(txn, item.payee_id, participants)
        if payee is None:
            return _IR.payee_not_found
        if payer.ledger != item.ledger or payee.ledger != item.ledger:
            return _IR.ledger_mismatch
        if payer.suspended:
            return _IR.payer_suspended
        pp = self._position_cached(txn, item.payer_id, positions)
        if pp[1] + item.amount > pp[0]:
            return ITEM_ALLOWANCE_LOW
        ledger = item.ledger
        window = windows.get(ledger)
        if window is None:
            window = windows[ledger] = self.current_window_here(txn, ledger)
        pq = self._position_cached(txn, item.payee_id, positions)
        pp[1] += item.amount
        pp[3] = 1
        pq[1] -= item.amount
        lw = _ledger_window(ledger, window)
        s = self._sums_cached(txn, lw + _k(item.payer_id), sums)
        s[0] += item.amount
        s[2] += 1
        s = self._sums_cached(txn, lw + _k(item.payee_id), sums)
        s[1] += item.amount
        s[3] += 1
        bkey = lw + _k(item.payer_id) + _k(item.payee_id)
        b = bilateral.get(bkey)
        if b is None:
            raw = txn.get(bkey, db=self._bilateral)
            if raw is None:
                b = bilateral[bkey] = [0, 0]
            else:
                amount, count = _BILATERAL.unpack(raw)
                b = bilateral[bkey] = [int.from_bytes(amount, "little"), count]
        b[0] += item.amount
        b[1] += 1
        accepted = ClearingItem(iid, item.payer_id, item.payee_id, item.amount, ledger, item.user_data_128,
                                item.user_data_64, window, ts, ITEM_ACCEPTED)
        txn.put(key, pack_item(accepted), db=self._items)
        txn.put(lw + _k(item.payer_id) + key, b"\0", db=self._index)
        txn.put(lw + _k(item.payee_id) + key, b"\1", db=self._index)
        return _IR.ok

    def _participant_cached(self, txn, pid: int, cache: dict) -> Participant | None:
        if pid in cache:
            return cache[pid]
        raw = txn.get(_k(pid), db=self._participants)
        p = cache[pid] = None if raw is None else unpack_participant(raw)
        return p

    def _position_cached(self, txn, pid: int, cache: dict) -> list[int]:
        """[allowance, net, pool, raised]: raised is 1 once an item raised this batch's net (checked at flush)."""
        pos = cache.get(pid)
        if pos is None:
            pos = cache[pid] = [*self._position(txn, pid), 0]
        return pos

    def _sums_cached(self, txn, key: bytes, cache: dict) -> list[int]:
        s = cache.get(key)
        if s is None:
            raw = txn.get(key, db=self._sums)
            s = cache[key] = [0, 0, 0, 0] if raw is None else _unpack_sums(raw)
        return s

    def _position(self, txn, pid: int) -> tuple[int, int, int]:
        raw = txn.get(_k(pid), db=self._positions)
        if raw is None:
            return 0, 0, 0
        a, n, p = _I128.unpack(raw)
        return _i128(a), _i128(n), _i128(p)

    def _put_position(self, txn, pid: int, allowance: int, net: int, pool: int) -> None:
        txn.put(_k(pid), _I128.pack(_to_i128(allowance), _to_i128(net), _to_i128(pool)), db=self._positions)

    def current_window_here(self, txn, ledger: int) -> int:
        raw = txn.get(b"c" + ledger.to_bytes(4, "big"), db=self._cursor)
        return 1 if raw is None else _U64.unpack(raw)[0]

    # ------------------------------------------------------------------ commands

    def command(self, txn: lmdb.Transaction, c: ClearingCommand, timestamp_ns: int) -> Any:
        """One clearing command; its result is a small msgpack-able value (see each handler)."""
        handler = _HANDLERS.get(c.tag)
        if handler is None:
            raise ValueError(f"unknown clearing command {c.tag}")
        return handler(self, txn, timestamp_ns, *c.args)

    # participants ---------------------------------------------------------------------------------------

    def _register(self, txn, ts, pid: int, ledger: int, code: int, name: str, settlement: int, cap: int) -> list:
        """-> [ParticipantResult, version]. A new participant's whole cap starts in its pool."""
        if pid == 0:
            return [_PR.id_must_not_be_zero, 0]
        if pid == U128_MAX:
            return [_PR.id_must_not_be_int_max, 0]
        if ledger == 0:
            return [_PR.ledger_must_not_be_zero, 0]
        if settlement == 0:
            return [_PR.settlement_account_not_found, 0]
        if not 0 <= cap <= U64_MAX or len(name.encode()) > PARTICIPANT_NAME_BYTES_MAX:
            raise ValueError("participant fields out of range (the servicer validates them)")
        raw = txn.get(_k(pid), db=self._participants)
        if raw is not None:
            e = unpack_participant(raw)
            if e.ledger != ledger:
                return [_PR.exists_with_different_ledger, e.version]
            if e.code != code:
                return [_PR.exists_with_different_code, e.version]
            if e.name != name:
                return [_PR.exists_with_different_name, e.version]
            if e.settlement_account_id != settlement:
                return [_PR.exists_with_different_settlement_account, e.version]
            return [_PR.exists, e.version]
        p = Participant(pid, ledger, code, name, settlement, cap, False, 1)
        txn.put(_k(pid), pack_participant(p), db=self._participants)
        txn.put(_k(pid), _U64.pack(1), db=self._home)
        allowance, net, pool = self._position(txn, pid)
        self._put_position(txn, pid, allowance, net, pool + cap)
        return [_PR.ok, 1]

    def _update(self, txn, ts, pid: int, cap: int, suspended: int) -> list:
        """-> [ParticipantResult, version]. cap < 0 keeps it; suspended < 0 keeps it. A lower cap needs that much
        in the pool (the node gathers headroom there first): cap_below_position otherwise."""
        raw = txn.get(_k(pid), db=self._participants)
        if raw is None or txn.get(_k(pid), db=self._home) is None:
            return [_PR.participant_not_found, 0]
        p = unpack_participant(raw)
        changed = False
        if cap >= 0 and cap != p.net_debit_cap:
            if cap > U64_MAX:
                raise ValueError("cap out of range (the servicer validates it)")
            allowance, net, pool = self._position(txn, pid)
            delta = cap - p.net_debit_cap
            if pool + delta < 0:
                return [_PR.cap_below_position, p.version]
            self._put_position(txn, pid, allowance, net, pool + delta)
            p.net_debit_cap = cap
            changed = True
        if suspended >= 0 and bool(suspended) != p.suspended:
            p.suspended = bool(suspended)
            changed = True
        if changed:
            p.version += 1
            txn.put(_k(pid), pack_participant(p), db=self._participants)
            txn.put(_k(pid), _U64.pack(p.version), db=self._home)
        return [_PR.ok, p.version]

    def _copy(self, txn, ts, record: bytes, ledger_home: bool) -> int:
        """-> 1 if the copy moved forward, else 0. On the ledger's home shard it also opens window 1."""
        p = unpack_participant(record)
        raw = txn.get(_k(p.id), db=self._participants)
        moved = 0
        if raw is None or unpack_participant(raw).version < p.version:
            txn.put(_k(p.id), record, db=self._participants)
            moved = 1
        if ledger_home and self.open_window(txn, p.ledger) == 0:
            self._put_window(txn, p.ledger, 1, {"state": WINDOW_OPEN, "opened_at": ts})
            txn.put(b"h" + p.ledger.to_bytes(4, "big"), _U64.pack(1), db=self._cursor)
        return moved

    def _propagated(self, txn, ts, pid: int, version: int) -> int:
        raw = txn.get(_k(pid), db=self._home)
        if raw is not None and raw and _U64.unpack(raw)[0] == version:
            txn.put(_k(pid), b"", db=self._home)
            return 1
        return 0

    def _admit(self, txn, ts, ledger: int, pid: int) -> int:
        """On the ledger's home: count `pid` toward the ledger's PARTICIPANTS_PER_LEDGER_MAX (once per id).
        -> ParticipantResult ok (admitted, now or before) or participants_limit_reached (nothing changed)."""
        member = b"m" + ledger.to_bytes(4, "big") + _k(pid)
        if txn.get(member, db=self._cursor) is not None:
            return _PR.ok
        count = self.admitted(txn, ledger)
        if count >= PARTICIPANTS_PER_LEDGER_MAX:
            return _PR.participants_limit_reached
        txn.put(member, b"", db=self._cursor)
        txn.put(b"n" + ledger.to_bytes(4, "big"), _U64.pack(count + 1), db=self._cursor)
        return _PR.ok

    def _release(self, txn, ts, ledger: int, pid: int) -> int:
        """On the ledger's home: uncount `pid` (its registration was refused). -> 1 if it was counted."""
        member = b"m" + ledger.to_bytes(4, "big") + _k(pid)
        if txn.get(member, db=self._cursor) is None:
            return 0
        txn.delete(member, db=self._cursor)
        txn.put(b"n" + ledger.to_bytes(4, "big"), _U64.pack(self.admitted(txn, ledger) - 1), db=self._cursor)
        return 1

    def admitted(self, txn, ledger: int) -> int:
        """Participants admitted toward the ledger's limit (on its home shard)."""
        raw = txn.get(b"n" + ledger.to_bytes(4, "big"), db=self._cursor)
        return 0 if raw is None else _U64.unpack(raw)[0]

    # allowance moves ------------------------------------------------------------------------------------

    def _take(self, txn, ts, move_id: int, pid: int, wanted: int, dest: int, from_pool: bool, to_pool: bool) -> int:
        """-> the amount taken (0..wanted) from this shard's headroom or from the pool; remembered until ACK."""
        raw = txn.get(_k(move_id), db=self._moves_out)
        if raw is not None:
            return unpack_value(raw)[2]
        done = txn.get(_k(move_id), db=self._moves_done)
        if done is not None:  # a retry of a TAKE whose move was delivered and acknowledged meanwhile
            return _DONE.unpack(done)[1]
        if wanted <= 0:
            return 0
        allowance, net, pool = self._position(txn, pid)
        if from_pool:
            taken = min(wanted, max(0, pool))
            pool -= taken
        else:
            taken = min(wanted, max(0, allowance - net))
            allowance -= taken
        if taken == 0:
            return 0
        self._put_position(txn, pid, allowance, net, pool)
        txn.put(_k(move_id), pack_value([dest, pid, taken, bool(to_pool), ts]), db=self._moves_out)
        return taken

    def _give(self, txn, ts, move_id: int, pid: int, amount: int, to_pool: bool) -> int:
        """-> 0 when given now, 1 when this move was given before."""
        key = _k(move_id)
        if txn.get(key, db=self._moves_in) is not None:
            return 1
        if amount <= 0:
            raise ValueError("a move gives a positive amount")
        allowance, net, pool = self._position(txn, pid)
        if to_pool:
            pool += amount
        else:
            allowance += amount
        self._put_position(txn, pid, allowance, net, pool)
        txn.put(key, _U64.pack(ts), db=self._moves_in)
        txn.put(b"i" + _U64_BE.pack(ts) + key, b"", db=self._forget)
        self._forget_old(txn, b"i", self._moves_in, ts)
        return 0

    def _forget_old(self, txn, kind: bytes, db, ts: int) -> None:
        """Keep the records that make moves idempotent bounded: up to 8 older than MOVES_KEPT_S go per step."""
        horizon = kind + _U64_BE.pack(max(0, ts - MOVES_KEPT_S * 1_000_000_000))
        old = []
        for key, _ in _scan(txn, self._forget, kind):
            if key >= horizon or len(old) >= 8:
                break
            old.append(key)
        for key in old:
            txn.delete(key, db=self._forget)
            txn.delete(key[9:], db=db)

    def _ack(self, txn, ts, move_id: int) -> int:
        """The destination has the move: it stops counting as moving here, and is remembered as done (a late retry
        of its TAKE must not take again)."""
        key = _k(move_id)
        raw = txn.get(key, db=self._moves_out)
        if raw is None:
            return 0
        txn.delete(key, db=self._moves_out)
        txn.put(key, _DONE.pack(ts, unpack_value(raw)[2]), db=self._moves_done)
        txn.put(b"o" + _U64_BE.pack(ts) + key, b"", db=self._forget)
        self._forget_old(txn, b"o", self._moves_done, ts)
        return 1

    # windows --------------------------------------------------------------------------------------------

    def open_window(self, txn, ledger: int) -> int:
        """The ledger's open window, on its home shard (0: no participant of this ledger yet)."""
        raw = txn.get(b"h" + ledger.to_bytes(4, "big"), db=self._cursor)
        return 0 if raw is None else _U64.unpack(raw)[0]

    def window(self, txn, ledger: int, window: int) -> dict | None:
        raw = txn.get(_ledger_window(ledger, window), db=self._windows)
        return None if raw is None else unpack_value(raw)

    def _put_window(self, txn, ledger: int, window: int, record: dict) -> None:
        txn.put(_ledger_window(ledger, window), pack_value(record), db=self._windows)

    def _begin_close(self, txn, ts, ledger: int, window: int, cycle_ns: int = 0) -> int:
        """open -> closing, and the next window opens. With `cycle_ns` (a close on the schedule) only once the
        window has been open that long in cluster time (this entry's timestamp): WINDOW_NOT_DUE before, changing
        nothing, so every replica and every leader decides alike whatever its own clock says."""
        open_w = self.open_window(txn, ledger)
        record = self.window(txn, ledger, window)
        if record is None:
            return _WR.window_not_found
        if record["state"] != WINDOW_OPEN:
            return _WR.window_not_open  # closing or beyond (the coordinator finishes a close left closing)
        if cycle_ns > 0 and ts - record.get("opened_at", 0) < cycle_ns:
            return WINDOW_NOT_DUE
        if window != open_w:
            raise ClearingInvariantViolation(f"ledger {ledger}: window {window} open but {open_w} is the open one")
        previous = self.window(txn, ledger, window - 1) if window > 1 else None
        if previous is not None and previous["state"] == WINDOW_CLOSING:
            return _WR.previous_window_still_closing
        record["state"] = WINDOW_CLOSING
        record["closed_at"] = ts
        self._put_window(txn, ledger, window, record)
        self._put_window(txn, ledger, window + 1, {"state": WINDOW_OPEN, "opened_at": ts})
        txn.put(b"h" + ledger.to_bytes(4, "big"), _U64.pack(window + 1), db=self._cursor)
        return _WR.ok

    def _close_here(self, txn, ts, ledger: int, window: int) -> int:
        if self.current_window_here(txn, ledger) <= window:
            txn.put(b"c" + ledger.to_bytes(4, "big"), _U64.pack(window + 1), db=self._cursor)
        return 0

    def _closed(self, txn, ts, ledger: int, window: int, nets: tuple) -> int:
        record = self.window(txn, ledger, window)
        if record is None:
            return _WR.window_not_found
        if record["state"] != WINDOW_CLOSING:
            return _WR.ok if record["state"] > WINDOW_CLOSING else _WR.window_not_open
        self._store_nets(txn, ledger, window, nets)
        record["state"] = WINDOW_CLOSED
        self._put_window(txn, ledger, window, record)
        return _WR.ok

    def _store_nets(self, txn, ledger: int, window: int, nets: tuple) -> None:
        sent = sum(n[1] for n in nets)
        received = sum(n[2] for n in nets)
        if sent != received:
            raise ClearingInvariantViolation(f"ledger {ledger} window {window}: sent {sent} != received {received}")
        lw = _ledger_window(ledger, window)
        stale = [k for k, _ in _scan(txn, self._nets, lw)]
        for k in stale:
            txn.delete(k, db=self._nets)
        for pid, s, r, ns, nr in nets:
            txn.put(lw + _k(pid), pack_value([s, r, ns, nr]), db=self._nets)

    def _begin_settle(self, txn, ts, ledger: int, window: int, fenced: int | None = None) -> list:
        """-> [WindowResult, attempt] (old form), or [WindowResult, attempt, lease token] when `fenced` is given.
        Each closed -> settling is a new attempt: its settlement transfers get new ids (a chain refused before,
        e.g. for want of funds, keeps its ids failed). An attempt holds the window for SETTLE_LEASE_S: meanwhile
        another BEGIN_SETTLE answers settlement_in_progress (two runs of one attempt could let one see the other's
        reservations as a shortfall); after it, the caller takes the attempt over. The lease token is the
        settling_since written now: SETTLE_FAILED names it, so a runner that was taken over cannot fail the attempt.

        Fence: a window that failed attempt n (closed, attempt n >= 1) begins attempt n + 1 only if `fenced` == n,
        i.e. the caller made chain n unable to commit (or learnt it committed, and settled the window with it)
        after reading attempt n: a runner of n taken over may still be about to submit chain n, and it would pay
        a second time. Otherwise settlement_in_progress (another runner failed an attempt meanwhile: fence it and
        begin again). The old form (no `fenced`, entries of nodes before the fence) decides as it always did."""
        new_form = fenced is not None

        def answer(code: int, attempt: int, token: int = 0) -> list:
            return [code, attempt, token] if new_form else [code, attempt]

        record = self.window(txn, ledger, window)
        if record is None:
            return answer(_WR.window_not_found, 0)
        state = record["state"]
        if state == WINDOW_SETTLED:
            return answer(_WR.window_already_settled, record.get("attempt", 0))
        if state == WINDOW_ABORTED:
            return answer(_WR.window_already_aborted, record.get("attempt", 0))
        if state in (WINDOW_OPEN, WINDOW_CLOSING):
            return answer(_WR.window_not_closed, 0)
        if state == WINDOW_CLOSED and (record.get("unwinding") or record.get("aborting")):
            return answer(_WR.window_not_closed, 0)  # an unwind is re-netting it (settle after it), or it is aborting
        if state == WINDOW_SETTLING and ts - record.get("settling_since", 0) < SETTLE_LEASE_S * 1_000_000_000:
            return answer(_WR.settlement_in_progress, record["attempt"])
        if state == WINDOW_CLOSED:
            last = record.get("attempt", 0)
            if new_form and last >= 1 and fenced != last:
                return answer(_WR.settlement_in_progress, last)
            record["state"] = WINDOW_SETTLING
            record["attempt"] = last + 1
            record.pop("failure", None)
            record.pop("fence", None)
        record["settling_since"] = ts
        self._put_window(txn, ledger, window, record)
        return answer(_WR.ok, record["attempt"], ts)

    def _settle_failed(self, txn, ts, ledger: int, window: int, attempt: int, reason: str, token: int | None = None,
                       fence: int = 0) -> int:
        """settling -> closed with why, for the attempt named and the lease token its runner got from BEGIN_SETTLE
        (a stale attempt, or a runner whose lease was taken over since, changes nothing: settlement_in_progress
        while the window is settling, else ok). `fence` is the id of the attempt's first settlement transfer (0: no
        chain), fenced before the next attempt or an unwind. The old form (no token: entries of nodes before the
        lease token) decides as it always did, and records no fence (the coordinator then fences every id the
        attempt could have used)."""
        record = self.window(txn, ledger, window)
        if record is None:
            return _WR.window_not_found
        if record["state"] != WINDOW_SETTLING or record.get("attempt") != attempt:
            return _WR.settlement_in_progress if record["state"] == WINDOW_SETTLING else _WR.ok
        if token is not None and record.get("settling_since") != token:
            return _WR.settlement_in_progress  # taken over: the attempt's current holder decides
        record["state"] = WINDOW_CLOSED
        record["failure"] = reason
        if token is not None:
            record["fence"] = fence
        else:
            record.pop("fence", None)
        self._put_window(txn, ledger, window, record)
        return _WR.ok

    def _settle_here(self, txn, ts, ledger: int, window: int) -> int:
        """Give back the cap the window's accepted items took on this shard (once per window). -> 0 now, 1 before,
        -1 refused (the window is being aborted here)."""
        mark = b"s" + _ledger_window(ledger, window)
        if txn.get(mark, db=self._cursor) is not None:
            return 1
        if txn.get(b"x" + _ledger_window(ledger, window), db=self._cursor) is not None:
            return -1  # this shard began aborting the window: its positions go back item by item, never twice
        for pid, sent, received, _ns, _nr in self.window_sums(txn, ledger, window):
            allowance, net, pool = self._position(txn, pid)
            self._put_position(txn, pid, allowance, net - (sent - received), pool)
        txn.put(mark, b"", db=self._cursor)
        return 0

    def _settled(self, txn, ts, ledger: int, window: int, attempt: int, transfers: tuple) -> int:
        record = self.window(txn, ledger, window)
        if record is None:
            return _WR.window_not_found
        if record["state"] == WINDOW_SETTLED:
            return _WR.ok
        # A window that failed its last attempt (closed) whose chain committed after all (a runner taken over
        # submitted it): that attempt settled it. Never while an unwind re-nets it (unwinds fence the chain first).
        failed_late = (record["state"] == WINDOW_CLOSED and record.get("attempt") == attempt and attempt >= 1
                       and record.get("unwinding") is None)
        if not failed_late and (record["state"] != WINDOW_SETTLING or record.get("attempt") != attempt):
            raise ClearingInvariantViolation(f"ledger {ledger} window {window}: attempt {attempt} moved the money "
                                             f"but the window is {WINDOW_STATES[record['state']]}, attempt "
                                             f"{record.get('attempt')}")
        record["state"] = WINDOW_SETTLED
        record["settled_at"] = ts
        record["transfers"] = list(transfers)
        for stale in ("failure", "fence", "aborting"):  # an abort begun meanwhile never excluded anything: every
            record.pop(stale, None)                     # shard gave the cap back (SETTLE_HERE) before this
        self._put_window(txn, ledger, window, record)
        return _WR.ok

    def _unwind_here(self, txn, ts, ledger: int, window: int, pid: int, limit: int) -> int:
        """Exclude up to `limit` of the participant's accepted items of the window on this shard: their sums and
        positions are taken back. -> how many (0: none left). Refused (-1) once the window gave its cap back here
        or began aborting here."""
        lw = _ledger_window(ledger, window)
        if txn.get(b"s" + lw, db=self._cursor) is not None or txn.get(b"x" + lw, db=self._cursor) is not None:
            return -1
        limit = max(1, min(limit, UNWIND_ITEMS_PER_ENTRY_MAX))
        prefix = lw + _k(pid)
        cursor_key = b"u" + prefix
        last = txn.get(cursor_key, db=self._cursor)
        start = prefix + (last if last is not None else b"")
        done = 0
        last_id = last
        todo: list[bytes] = []
        for key, _role in _scan(txn, self._index, prefix, start):
            if last is not None and key == start:
                continue
            todo.append(key[len(prefix):])
            if len(todo) >= limit:
                break
        for item_key in todo:
            last_id = item_key
            done += self._exclude(txn, lw, item_key, ITEM_UNWOUND)
        if last_id is not None:
            txn.put(cursor_key, last_id, db=self._cursor)
        return done if todo else 0

    def _exclude(self, txn, lw: bytes, item_key: bytes, status: int) -> int:
        """Mark an accepted item of the window `lw` excluded (`status`): its sums, bilateral cell and both
        positions are taken back on this shard. -> 1, or 0 if it was not accepted (excluded before)."""
        item = unpack_item(txn.get(item_key, db=self._items))
        if item.status != ITEM_ACCEPTED:
            return 0
        item.status = status
        txn.put(item_key, pack_item(item), db=self._items)
        self._add_sums(txn, lw + _k(item.payer_id), -item.amount, 0, -1, 0)
        self._add_sums(txn, lw + _k(item.payee_id), 0, -item.amount, 0, -1)
        bkey = lw + _k(item.payer_id) + _k(item.payee_id)
        amount, count = _BILATERAL.unpack(txn.get(bkey, db=self._bilateral))
        txn.put(bkey, _BILATERAL.pack((int.from_bytes(amount, "little") - item.amount).to_bytes(16, "little"),
                                      count - 1), db=self._bilateral)
        a, n, p = self._position(txn, item.payer_id)
        self._put_position(txn, item.payer_id, a, n - item.amount, p)
        a, n, p = self._position(txn, item.payee_id)
        self._put_position(txn, item.payee_id, a, n + item.amount, p)
        return 1

    def _add_sums(self, txn, key: bytes, sent: int, received: int, n_sent: int, n_received: int) -> None:
        raw = txn.get(key, db=self._sums)
        s = [0, 0, 0, 0] if raw is None else _unpack_sums(raw)
        s = [s[0] + sent, s[1] + received, s[2] + n_sent, s[3] + n_received]
        if min(s) < 0:
            raise ClearingInvariantViolation(f"clearing sums below zero: {s}")
        txn.put(key, _SUMS.pack(s[0].to_bytes(16, "little"), s[1].to_bytes(16, "little"), s[2], s[3]),
                db=self._sums)

    def _begin_unwind(self, txn, ts, ledger: int, window: int, pid: int, fenced: int | None = None) -> int:
        """closed -> closed and unwinding `pid` (one unwind at a time; settling waits for it). An unwind changes the
        nets: after a failed attempt n it begins only if `fenced` == n (the caller made chain n unable to commit),
        else settlement_in_progress. The old form (no `fenced`) decides as it always did."""
        record = self.window(txn, ledger, window)
        if record is None:
            return _WR.window_not_found
        if record["state"] == WINDOW_SETTLED:
            return _WR.window_already_settled
        if record["state"] == WINDOW_ABORTED:
            return _WR.window_already_aborted
        if record["state"] != WINDOW_CLOSED or record.get("aborting"):
            return _WR.window_not_closed
        if pid in record.get("unwound", ()):
            return _WR.ok
        if not any(n[0] == pid and (n[1] or n[2]) for n in self.window_nets(txn, ledger, window)):
            return _WR.participant_not_in_window
        current = record.get("unwinding")
        if current is not None and current != pid:
            return _WR.window_not_closed
        if current is None and fenced is not None and record.get("attempt", 0) >= 1 and fenced != record["attempt"]:
            return _WR.settlement_in_progress
        record["unwinding"] = pid
        self._put_window(txn, ledger, window, record)
        return _WR.ok

    def _unwound(self, txn, ts, ledger: int, window: int, pid: int, nets: tuple) -> int:
        record = self.window(txn, ledger, window)
        if record is None:
            return _WR.window_not_found
        if record["state"] == WINDOW_SETTLED:
            return _WR.window_already_settled
        if record["state"] == WINDOW_ABORTED:
            return _WR.window_already_aborted
        if record["state"] != WINDOW_CLOSED:
            return _WR.window_not_closed
        if pid in record.get("unwound", ()):
            return _WR.ok
        if record.get("unwinding") != pid:
            return _WR.window_not_closed
        del record["unwinding"]
        unwound = record.setdefault("unwound", [])
        if pid not in unwound:
            unwound.append(pid)
            record["round"] = record.get("round", 0) + 1
        self._store_nets(txn, ledger, window, nets)
        self._put_window(txn, ledger, window, record)
        return _WR.ok

    # aborts ---------------------------------------------------------------------------------------------

    def _begin_abort(self, txn, ts, ledger: int, window: int) -> int:
        """closed -> closed and aborting (settling, unwinding and new settlement attempts wait for it). Refused for
        any other state: window_not_closed (open, closing, or an unwind is re-netting it), settlement_in_progress
        (an attempt holds it: it settles or fails back to closed), window_already_settled, and
        window_already_aborted (aborted before: nothing to do)."""
        record = self.window(txn, ledger, window)
        if record is None:
            return _WR.window_not_found
        state = record["state"]
        if state == WINDOW_ABORTED:
            return _WR.window_already_aborted
        if state == WINDOW_SETTLED:
            return _WR.window_already_settled
        if state == WINDOW_SETTLING:
            return _WR.settlement_in_progress
        if state != WINDOW_CLOSED or record.get("unwinding") is not None:
            return _WR.window_not_closed
        if not record.get("aborting"):
            record["aborting"] = True
            self._put_window(txn, ledger, window, record)
        return _WR.ok

    def _abort_here(self, txn, ts, ledger: int, window: int, limit: int) -> int:
        """Exclude up to `limit` of the window's items on this shard (status aborted; sums, bilateral cells and
        positions taken back). -> index entries gone through (0: none left). Refused (-1) once this shard gave the
        window's cap back (it settled here)."""
        lw = _ledger_window(ledger, window)
        if txn.get(b"s" + lw, db=self._cursor) is not None:
            return -1
        txn.put(b"x" + lw, b"", db=self._cursor)
        limit = max(1, min(limit, UNWIND_ITEMS_PER_ENTRY_MAX))
        cursor_key = b"a" + lw
        last = txn.get(cursor_key, db=self._cursor)
        seen: list[bytes] = []
        for key, _role in _scan(txn, self._index, lw, last):
            if key == last:
                continue
            seen.append(key)
            if len(seen) >= limit:
                break
        for key in seen:  # each item is indexed under its payer and its payee: the second visit finds it aborted
            self._exclude(txn, lw, key[28:], ITEM_ABORTED)
        if seen:
            txn.put(cursor_key, seen[-1], db=self._cursor)
        return len(seen)

    def _aborted(self, txn, ts, ledger: int, window: int, nets: tuple) -> int:
        """aborting -> aborted, with the netting left (every sum zero once each shard excluded its items)."""
        record = self.window(txn, ledger, window)
        if record is None:
            return _WR.window_not_found
        if record["state"] == WINDOW_ABORTED:
            return _WR.ok
        if record["state"] != WINDOW_CLOSED or not record.get("aborting"):
            raise ClearingInvariantViolation(f"ledger {ledger} window {window}: ABORTED but the window is "
                                             f"{WINDOW_STATES[record['state']]} and not aborting")
        if any(n[1] or n[2] or n[3] or n[4] for n in nets):
            raise ClearingInvariantViolation(f"ledger {ledger} window {window}: aborted with items left in it")
        self._store_nets(txn, ledger, window, nets)
        del record["aborting"]
        record["state"] = WINDOW_ABORTED
        record["aborted_at"] = ts
        self._put_window(txn, ledger, window, record)
        return _WR.ok

    def _abort_cancelled(self, txn, ts, ledger: int, window: int) -> int:
        """aborting -> closed, before any shard excluded anything (the window's settlement had committed)."""
        record = self.window(txn, ledger, window)
        if record is None:
            return _WR.window_not_found
        if record["state"] == WINDOW_CLOSED and record.pop("aborting", None):
            self._put_window(txn, ledger, window, record)
        return _WR.ok

    # ------------------------------------------------------------------ reads

    def lookup_items(self, txn, ids: Sequence[int]) -> list[ClearingItem]:
        out = []
        for i in ids:
            raw = txn.get(_k(i), db=self._items)
            if raw is not None:
                out.append(unpack_item(raw))
        return out

    def lookup_participants(self, txn, ids: Sequence[int]) -> list[Participant]:
        out = []
        for i in ids:
            raw = txn.get(_k(i), db=self._participants)
            if raw is not None:
                out.append(unpack_participant(raw))
        return out

    def participants(self, txn, ledger: int = 0, after: int = 0, limit: int = 0,
                     home_only: bool = False) -> list[Participant]:
        """The participants this shard knows (of one ledger, or all; only those homed here with `home_only`), by
        id, after the id `after`; at most `limit` (0: all)."""
        out: list[Participant] = []
        if after >= U128_MAX:
            return out
        for key, raw in _scan(txn, self._participants, b"", _k(after + 1) if after else b""):
            if limit and len(out) >= limit:
                break
            if home_only and txn.get(key, db=self._home) is None:
                continue
            p = unpack_participant(raw)
            if not ledger or p.ledger == ledger:
                out.append(p)
        return out

    def positions(self, txn, ids: Sequence[int]) -> list[tuple[int, int, int, int]]:
        """(participant, allowance, net, pool) on this shard."""
        return [(i, *self._position(txn, i)) for i in ids]

    def window_sums(self, txn, ledger: int, window: int) -> list[tuple[int, int, int, int, int]]:
        """(participant, sent, received, n_sent, n_received) of the window's accepted items on this shard."""
        return [(int.from_bytes(key[12:28], "big"), *_unpack_sums(raw))
                for key, raw in _scan(txn, self._sums, _ledger_window(ledger, window))]

    def bilateral(self, txn, ledger: int, window: int) -> list[tuple[int, int, int, int]]:
        """(payer, payee, gross amount, count) of the window's accepted items on this shard."""
        out = []
        for key, raw in _scan(txn, self._bilateral, _ledger_window(ledger, window)):
            amount, count = _BILATERAL.unpack(raw)
            if count:
                out.append((int.from_bytes(key[12:28], "big"), int.from_bytes(key[28:44], "big"),
                            int.from_bytes(amount, "little"), count))
        return out

    def window_items(self, txn, ledger: int, window: int, pid: int, after_id: int, limit: int) -> list[ClearingItem]:
        """The participant's items of the window on this shard (as payer or payee, unwound ones too), by id."""
        prefix = _ledger_window(ledger, window) + _k(pid)
        start = prefix + _k(after_id + 1) if after_id else prefix
        out: list[ClearingItem] = []
        if after_id >= U128_MAX:
            return out
        for key, _role in _scan(txn, self._index, prefix, start):
            if len(out) >= limit:
                break
            out.append(unpack_item(txn.get(key[28:], db=self._items)))
        return out

    def windows(self, txn, ledger: int, after: int, limit: int) -> list[tuple[int, dict]]:
        """(window, record) of the ledger recorded here (its home), after `after`, oldest first."""
        out: list[tuple[int, dict]] = []
        if after >= U64_MAX:
            return out  # no window comes after the last number
        for key, raw in _scan(txn, self._windows, ledger.to_bytes(4, "big"), _ledger_window(ledger, after + 1)):
            if len(out) >= limit:
                break
            out.append((_U64_BE.unpack(key[4:12])[0], unpack_value(raw)))
        return out

    def window_nets(self, txn, ledger: int, window: int) -> list[tuple[int, int, int, int, int]]:
        return [(int.from_bytes(key[12:28], "big"), *unpack_value(raw))
                for key, raw in _scan(txn, self._nets, _ledger_window(ledger, window))]

    def home_ledgers(self, txn) -> list[int]:
        """Ledgers whose windows are recorded here."""
        return [int.from_bytes(key[1:5], "big") for key, _ in _scan(txn, self._cursor, b"h")]

    def moves_out(self, txn, limit: int) -> list[tuple[int, int, int, int, bool, int]]:
        """(move id, dest shard, participant, amount, to_pool, taken_at) not yet acknowledged, by move id."""
        out = []
        with txn.cursor(db=self._moves_out) as cursor:
            for key, raw in cursor:
                if len(out) >= limit:
                    break
                dest, pid, amount, to_pool, taken_at = unpack_value(raw)
                out.append((int.from_bytes(key, "big"), dest, pid, amount, to_pool, taken_at))
        return out

    def unpropagated(self, txn, limit: int) -> list[Participant]:
        """Home records whose latest version some shard may not hold yet."""
        out = []
        with txn.cursor(db=self._home) as cursor:
            for key, raw in cursor:
                if len(out) >= limit:
                    break
                if raw:
                    out.append(unpack_participant(txn.get(key, db=self._participants)))
        return out

    def totals(self, txn) -> dict[int, dict[str, int]]:
        """Per ledger, for `tidebank audit`: sums of nets, allowances, pools, moving amounts and (home records)
        caps on this shard. Over all shards: nets sum to 0 and allowance + pool + moving == cap."""
        ledgers: dict[int, dict[str, int]] = {}
        ledger_of: dict[int, int] = {}

        def row(ledger: int) -> dict[str, int]:
            return ledgers.setdefault(ledger, {"net": 0, "allowance": 0, "pool": 0, "moving": 0, "cap": 0})

        with txn.cursor(db=self._participants) as cursor:
            for key, raw in cursor:
                p = unpack_participant(raw)
                ledger_of[p.id] = p.ledger
                if txn.get(key, db=self._home) is not None:
                    row(p.ledger)["cap"] += p.net_debit_cap
        with txn.cursor(db=self._positions) as cursor:
            for key, raw in cursor:
                pid = int.from_bytes(key, "big")
                a, n, p = (_i128(x) for x in _I128.unpack(raw))
                r = row(ledger_of.get(pid, 0))
                r["allowance"] += a
                r["net"] += n
                r["pool"] += p
        for _move, _dest, pid, amount, _to_pool, _at in self.moves_out(txn, limit=1 << 30):
            row(ledger_of.get(pid, 0))["moving"] += amount
        return ledgers


def _unpack_sums(raw: bytes) -> list[int]:
    s, r, ns, nr = _SUMS.unpack(raw)
    return [int.from_bytes(s, "little"), int.from_bytes(r, "little"), ns, nr]


def _item_exists(i: ClearingItem, e: ClearingItem) -> int:
    if i.payer_id != e.payer_id:
        return _IR.exists_with_different_payer
    if i.payee_id != e.payee_id:
        return _IR.exists_with_different_payee
    if i.amount != e.amount:
        return _IR.exists_with_different_amount
    if i.ledger != e.ledger:
        return _IR.exists_with_different_ledger
    if i.user_data_128 != e.user_data_128 or i.user_data_64 != e.user_data_64:
        return _IR.exists_with_different_user_data
    return _IR.exists


_HANDLERS = {
    CMD_REGISTER: ClearingRules._register,
    CMD_UPDATE: ClearingRules._update,
    CMD_COPY: ClearingRules._copy,
    CMD_PROPAGATED: ClearingRules._propagated,
    CMD_TAKE: ClearingRules._take,
    CMD_GIVE: ClearingRules._give,
    CMD_ACK: ClearingRules._ack,
    CMD_BEGIN_CLOSE: ClearingRules._begin_close,
    CMD_CLOSE_HERE: ClearingRules._close_here,
    CMD_CLOSED: ClearingRules._closed,
    CMD_BEGIN_SETTLE: ClearingRules._begin_settle,
    CMD_SETTLE_FAILED: ClearingRules._settle_failed,
    CMD_SETTLE_HERE: ClearingRules._settle_here,
    CMD_SETTLED: ClearingRules._settled,
    CMD_UNWIND_HERE: ClearingRules._unwind_here,
    CMD_UNWOUND: ClearingRules._unwound,
    CMD_BEGIN_UNWIND: ClearingRules._begin_unwind,
    CMD_BEGIN_ABORT: ClearingRules._begin_abort,
    CMD_ABORT_HERE: ClearingRules._abort_here,
    CMD_ABORTED: ClearingRules._aborted,
    CMD_ABORT_CANCELLED: ClearingRules._abort_cancelled,
    CMD_ADMIT: ClearingRules._admit,
    CMD_RELEASE: ClearingRules._release,
}


# ------------------------------------------------------------------ settlement: which money moves

SETTLEMENT_PAY_IN_CODE = 9201  # a net debtor's settlement account -> the ledger's hub account
SETTLEMENT_PAY_OUT_CODE = 9202  # the hub -> a net creditor's settlement account


def settlement_transfer_id(ledger: int, window: int, attempt: int, participant_id: int) -> int:
    """The id of a participant's settlement transfer in one settlement attempt of a window: resuming the attempt
    reuses it (answered `exists`), a new attempt (after a refusal or an unwind) gets new ones."""
    digest = hashlib.blake2b(b"tidebank-settlement" + ledger.to_bytes(4, "big") + window.to_bytes(8, "big")
                             + attempt.to_bytes(4, "big") + participant_id.to_bytes(16, "big"),
                             digest_size=16).digest()
    value = int.from_bytes(digest, "big")
    return value if 0 < value < U128_MAX else 1


def settlement_transfers(ledger: int, window: int, attempt: int, nets: Sequence[tuple[int, int, int, int, int]],
                         settlement_accounts: dict[int, int], hub_account_id: int) -> list[Transfer]:
    """The window's settlement as one linked chain: every net debtor pays the hub first, then the hub pays every
    net creditor, so the hub (which may not go below zero) ends where it began. Nets sum to zero."""
    pay_in, pay_out = [], []
    for pid, sent, received, _ns, _nr in sorted(nets):
        net = sent - received
        if net == 0:
            continue
        account = settlement_accounts[pid]
        tid = settlement_transfer_id(ledger, window, attempt, pid)
        if net > 0:
            pay_in.append(Transfer(id=tid, debit_account_id=account, credit_account_id=hub_account_id, amount=net,
                                   user_data_128=pid, user_data_64=window, user_data_32=attempt, ledger=ledger,
                                   code=SETTLEMENT_PAY_IN_CODE))
        else:
            pay_out.append(Transfer(id=tid, debit_account_id=hub_account_id, credit_account_id=account, amount=-net,
                                    user_data_128=pid, user_data_64=window, user_data_32=attempt, ledger=ledger,
                                    code=SETTLEMENT_PAY_OUT_CODE))
    if sum(t.amount for t in pay_in) != sum(t.amount for t in pay_out):
        raise ClearingInvariantViolation(f"ledger {ledger} window {window}: nets do not sum to zero")
    chain = pay_in + pay_out
    for t in chain[:-1]:
        t.flags = int(TransferFlags.LINKED)
    return chain

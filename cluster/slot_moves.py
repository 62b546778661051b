"""Moving hash slots between shards while the cluster runs: the operator-side driver.

`tidebank slot move SLOTS --to B` runs these steps (what each does on a shard, and
what a move cannot carry yet, is in tidebank.node.ledger.slot_moves):

==========  =====================================================================================
step        what happens
==========  =====================================================================================
tracking    the move begins on A, which still serves the slots and notes what it writes to them
importing   B fences them (it does not serve them yet), and checks it holds none of their accounts
            and no clearing state
precopy     A's records of the slots, page by page (Admin/ExportSlots), into B's staging (IMPORT),
            while A serves them
leaving     A fences the slots: items naming them get slot_moving (the node resends them) from here on
copy        the catch-up: what A wrote to the slots during the precopy, and their pending transfers
arrived     B checks the pages, records and digest, takes the records and their totals
switched    A stops serving the slots: writes get slot_moved, reads a retryable SLOT_MOVED
publish     the topology version with the slots on B, pushed to every node (all must take it)
gone        A forgets the slots' accounts; a late caller gets slot_moved (refresh the shard map)
==========  =====================================================================================

Every step is idempotent on its shard (a replay answers `already`), and the move's id and
arguments stay in `<topology file>.slot-move` until `gone`, so a driver that dies resumes
the move when the same command runs again: from `switched` on if B took the slots, else
(B's staged pages may not be what this run would send: the precopy read changing data) it
aborts the move on both shards and starts it again. A move the export refuses (pending
transfers, escrow or clearing state in the slots) is aborted on both shards: nothing changed.
Writes naming the slots wait (slot_moving) from `leaving` to `publish`: for the catch-up, not
the bulk copy, so the pause grows with what is written during the precopy, not with the slots' size.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from tidebank.cluster.membership import Membership, MembershipError, MoveInterrupted
from tidebank.common.auth import signed
from tidebank.common.keys import u128_to_pair
from tidebank.common.topology import TopologyError, slot_ranges, slots_of
from tidebank.node.ledger import slot_moves as sm
from tidebank.node.ledger.clearing_records import unpack_value
from tidebank.v1 import admin_pb2, types_pb2

STEPS = ("tracking", "importing", "precopy", "leaving", "copy", "arrived", "switched", "publish", "gone")
POLL_S = 0.2
RPC_TIMEOUT_S = 10.0
MOVE_TIMEOUT_S = 300.0
PAGE_RECORDS = 2048  # records per IMPORT entry (~300 KB)
STATE_SUFFIX = ".slot-move"

_REFUSAL_TEXT = {
    sm.ExportRefusal.not_leaving: "the source has no such move in progress",
    sm.ExportRefusal.pending_transfers: "a pending transfer has one account in the slots and one outside, or was "
                                        "made by a cross-shard transaction (slot moves do not split them yet)",
    sm.ExportRefusal.escrow: "the slots hold trades or escrow books (slot moves do not carry them yet)",
    sm.ExportRefusal.clearing: "the source shard holds clearing state (slot moves do not carry it yet)",
}


class SlotMoveError(MembershipError):
    """A slot move cannot be made; whatever it had begun was aborted on both shards."""


@dataclass
class SlotMoveReport:
    source: int
    target: int
    slots: list[int]
    move_id: int = 0
    steps_done: list[str] = dataclasses.field(default_factory=list)
    pages: int = 0
    records: int = 0
    resumed: bool = False
    restarted: bool = False  # resumed before the target took the slots: aborted, and made again as a new move
    unreached: set[str] = dataclasses.field(default_factory=set)
    pause_s: float = 0.0  # from leaving to publish: how long writes naming the slots waited (0 if resumed later)
    step_s: dict[str, float] = dataclasses.field(default_factory=dict)  # how long each step took


class SlotMover:
    """Drives one slot move at a time for the cluster of a Membership (its topology file and channels)."""

    def __init__(self, membership: Membership, *, rpc_timeout_s: float = RPC_TIMEOUT_S,
                 page_records: int = PAGE_RECORDS, on_step: Callable[[str], None] | None = None) -> None:
        if not 0 < page_records <= sm.PAGE_RECORDS_MAX:
            raise ValueError(f"page_records must be 1..{sm.PAGE_RECORDS_MAX}")
        self.membership = membership
        self.rpc_timeout_s = rpc_timeout_s
        self.page_records = page_records
        self.on_step = on_step  # told after each step (CLI progress)
        self.state_path = pathlib.Path(str(membership.topology_path) + STATE_SUFFIX)
        self._progress: dict = {}  # the resume file's contents while a move runs

    # ---- the move ---------------------------------------------------------------------------------------

    def move(self, slots: list[int], source: int, target: int, *, timeout_s: float = MOVE_TIMEOUT_S,
             stop_after: str | None = None) -> SlotMoveReport:
        """Move `slots` from shard `source` to shard `target`, or resume the move of them begun before."""
        deadline = time.monotonic() + timeout_s
        slots = sorted(set(slots))
        report = SlotMoveReport(source, target, slots)
        self._check(slots, source, target)
        state = self._load_state()
        if state is None:
            on = self._placement(slots, source, target)
            if on == target:
                return report  # moved before: nothing to do
            if on != source:
                raise SlotMoveError(f"slots {_ranges(slots)} are not all on shard {source}")
        arrived_before = False
        if state is not None:
            if (state["source"], state["target"], state["slots"]) != (source, target, slots):
                raise SlotMoveError(f"a move of slots {_ranges(state['slots'])} from shard {state['source']} to "
                                    f"{state['target']} is in progress: run that again to finish it first")
            report.move_id, report.resumed = state["move_id"], True
            arrived_before = self._arrived_or_aborted(report, deadline)
            report.restarted = not arrived_before
        if not arrived_before:
            report.move_id = secrets.randbits(127) + 1
            state = {"move_id": report.move_id, "source": source, "target": target, "slots": slots}
            self._save_state(state)
        self._progress = dict(state)
        move_id = report.move_id
        fenced_at = None
        last = time.monotonic()

        def done(step: str) -> bool:
            nonlocal last
            now = time.monotonic()
            report.step_s[step] = round(now - last, 4)
            last = now
            report.steps_done.append(step)
            if step != "gone":
                self._note_progress(step=step, pages=report.pages, records=report.records)
            if self.on_step is not None:
                self.on_step(step)
            return step == stop_after

        def abort() -> None:
            self._abort(report, deadline)

        if arrived_before:  # every step up to `arrived` was done by the run that stopped
            report.steps_done.extend(STEPS[:STEPS.index("arrived") + 1])
        else:
            self._require(report, source, sm.SlotMoveCommand(sm.TRACKING, (move_id, slots, target)), deadline,
                          f"shard {source} will not give slots {_ranges(slots)}", undo=self._forget_state)
            if done("tracking"):
                return report
            self._require(report, target, sm.SlotMoveCommand(sm.IMPORTING, (move_id, slots, source)), deadline,
                          f"shard {target} will not take slots {_ranges(slots)}", undo=abort)
            if done("importing"):
                return report
            sent: list[list[tuple[int, bytes, bytes]]] = []
            self._copy(report, sent, deadline)
            if done("precopy"):
                return report
            fenced_at = time.monotonic()
            self._require(report, source, sm.SlotMoveCommand(sm.LEAVING, (move_id, slots, target)), deadline,
                          f"shard {source} will not fence slots {_ranges(slots)}", undo=abort)
            if done("leaving"):
                return report
            self._copy(report, sent, deadline)
            if done("copy"):
                return report
            arrived = sm.SlotMoveCommand(sm.ARRIVED, (move_id, len(sent), sum(len(p) for p in sent),
                                                      sm.records_digest(sent)))
            self._require(report, target, arrived, deadline, f"shard {target} refused the copied slots", undo=abort)
            if done("arrived"):
                return report
        version = self._next_version(report)
        self._require(report, source, sm.SlotMoveCommand(sm.SWITCHED, (move_id, version)), deadline,
                      f"shard {source} did not switch the slots over")
        if done("switched"):
            return report
        version = self._publish(report, deadline)
        if fenced_at is not None:
            report.pause_s = time.monotonic() - fenced_at
        if done("publish"):
            return report
        self._require(report, source, sm.SlotMoveCommand(sm.GONE, (move_id, version)), deadline,
                      f"shard {source} did not forget the moved slots")
        self._forget_state()
        done("gone")
        return report

    def _check(self, slots: list[int], source: int, target: int) -> None:
        topology = self.membership.topology
        if source == target:
            raise SlotMoveError("--from and --to are the same shard")
        shards = {s.shard_id: s for s in topology.shards}
        for shard in (source, target):
            if shard not in shards:
                raise SlotMoveError(f"no shard {shard} (shards: {', '.join(map(str, sorted(shards)))})")
        if not 0 < len(slots) <= sm.SLOTS_PER_MOVE_MAX:
            raise SlotMoveError(f"move 1..{sm.SLOTS_PER_MOVE_MAX} slots at a time, not {len(slots)}")
        held = set(slots_of(shards[source].slots)) | set(slots_of(shards[target].slots))
        elsewhere = [s for s in slots if s not in held]
        if elsewhere:
            raise SlotMoveError(f"slot {elsewhere[0]} is on neither shard {source} nor shard {target}")

    def _placement(self, slots: list[int], source: int, target: int) -> int | None:
        """The shard holding every one of `slots` (source or target), None if they are split."""
        topology = self.membership.topology
        for shard in (source, target):
            if set(slots) <= set(slots_of(topology.shard(shard).slots)):
                return shard
        return None

    def _require(self, report: SlotMoveReport, shard_id: int, command: sm.SlotMoveCommand, deadline: float,
                 refused: str, *, undo: Callable[[], None] | None = None) -> None:
        """One step that must answer ok (or already, a replay); else `undo` (abort the move, forget it) and
        raise SlotMoveError saying `refused` and why."""
        result = self._step(shard_id, command, deadline)
        if result in (sm.SlotMoveResult.ok, sm.SlotMoveResult.already):
            return
        if undo is not None:
            undo()
        raise SlotMoveError(f"{refused}: {_result_text(result)}")

    def _arrived_or_aborted(self, report: SlotMoveReport, deadline: float) -> bool:
        """For a resumed move: True if the target took the slots (go on from `switched`); else abort it on both
        shards (the target first: it never served them) and return False."""
        abort = sm.SlotMoveCommand(sm.ABORT, (report.move_id,))
        if self._step(report.target, abort, deadline) == sm.SlotMoveResult.wrong_step:
            return True  # the target arrived: only an arrived move refuses ABORT there
        result = self._step(report.source, abort, deadline)
        if result not in (sm.SlotMoveResult.ok, sm.SlotMoveResult.already, sm.SlotMoveResult.unknown_move):
            raise SlotMoveError(f"shard {report.source} did not abort the interrupted move: {_result_text(result)}")
        return False

    def _copy(self, report: SlotMoveReport, sent: list[list[tuple[int, bytes, bytes]]], deadline: float) -> None:
        """Every page of one export (the precopy, or the catch-up) into the target's staging, after the pages
        `sent` before; each page is appended to `sent` as sent (ARRIVED's digest covers them all)."""
        cursor: tuple[int, bytes] | None = None
        while True:
            page = self._export(report, cursor, deadline)
            records = [tuple(r) for r in unpack_value(page.records)]
            if records:
                command = sm.SlotMoveCommand(sm.IMPORT, (report.move_id, len(sent), tuple(records)))
                self._require(report, report.target, command, deadline,
                              f"shard {report.target} refused page {len(sent)}",
                              undo=lambda: self._abort(report, deadline))
                sent.append(records)
                report.records += len(records)
                self._note_progress(pages=len(sent), records=report.records)
            if page.last:
                break
            cursor = (page.phase, page.after)
        report.pages = len(sent)

    def _export(self, report: SlotMoveReport, cursor, deadline: float) -> admin_pb2.ExportSlotsResponse:
        hi, lo = u128_to_pair(report.move_id)
        request = admin_pb2.ExportSlotsRequest(shard_id=report.source, move_id=types_pb2.U128(hi=hi, lo=lo),
                                               resume=cursor is not None, records_max=self.page_records)
        if cursor is not None:
            request.phase, request.after = cursor
        while True:
            page = self._call(report.source, "ExportSlots", request, deadline)
            refusal = sm.ExportRefusal(page.refusal)
            if refusal == sm.ExportRefusal.none:
                return page
            if refusal != sm.ExportRefusal.reserved:
                self._abort(report, deadline)
                raise SlotMoveError(f"slots {_ranges(report.slots)} cannot move: {_REFUSAL_TEXT[refusal]}; "
                                    "the move was aborted, nothing changed")
            if time.monotonic() + POLL_S >= deadline:  # a PREPARED txn holds money of the slots: it will finish
                raise MoveInterrupted(f"slots {_ranges(report.slots)}: a transaction in flight still holds them; "
                                      "run the move again to resume it")
            time.sleep(POLL_S)

    def _next_version(self, report: SlotMoveReport) -> int:
        """The topology version that gives the slots to the target (the current one once published)."""
        topology = self.membership.topology
        if set(report.slots) <= set(slots_of(topology.shard(report.target).slots)):
            return topology.shard_map_version
        return topology.shard_map_version + 1

    def _publish(self, report: SlotMoveReport, deadline: float) -> int:
        """The topology with the slots on the target, taken by every node before the source forgets them (so no
        node routes to the source any more)."""
        m = self.membership
        topology = m.topology
        if not set(report.slots) <= set(slots_of(topology.shard(report.target).slots)):
            try:
                topology = topology.with_slots_moved(report.slots, report.target)
            except TopologyError as exc:
                raise SlotMoveError(str(exc)) from None
            missed = m.publish(topology)
        else:
            missed = m.push()
        while missed and time.monotonic() + POLL_S < deadline:
            time.sleep(POLL_S)
            missed = m.push(sorted(missed))
        if missed:
            report.unreached = missed
            raise MoveInterrupted(f"{', '.join(sorted(missed))} did not take topology v{topology.shard_map_version}; "
                                  "the source keeps the slots' records until every node has: run the move again")
        return topology.shard_map_version

    def _abort(self, report: SlotMoveReport, deadline: float) -> None:
        """Undo a move that cannot finish: both shards serve as before (target first: it never served them)."""
        for shard in (report.target, report.source):
            self._step(shard, sm.SlotMoveCommand(sm.ABORT, (report.move_id,)), deadline)
        self._forget_state()

    # ---- calls ------------------------------------------------------------------------------------------

    def _step(self, shard_id: int, command: sm.SlotMoveCommand, deadline: float) -> int:
        request = admin_pb2.SlotMoveStepRequest(shard_id=shard_id, command=sm.pack_command(command))
        reply = self._call(shard_id, "SlotMoveStep", request, deadline)
        if reply.failed:
            raise SlotMoveError(f"shard {shard_id} rolled back slot-move step {command.tag} (a bug or a malformed "
                                "command: see that node's log)")
        return reply.result

    def _call(self, shard_id: int, method: str, request, deadline: float):
        """The call on the shard's leader, retried across leader changes and lost answers (every step is
        idempotent) until `deadline`."""
        m = self.membership
        metadata = signed(m.topology.secret, method, request)
        last = "no leader"
        while time.monotonic() < deadline:
            leader = m._leader(shard_id)
            if leader is not None:
                address = m.topology.node(leader[0]).grpc_address
                try:
                    return getattr(m.pool.admin(address), method)(
                        request, timeout=min(self.rpc_timeout_s, max(0.1, deadline - time.monotonic())),
                        metadata=metadata)
                except grpc.RpcError as exc:
                    if exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED,
                                      grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.UNIMPLEMENTED):
                        raise SlotMoveError(f"shard {shard_id} {method}: {exc.details()}") from None
                    last = f"{exc.code().name}: {exc.details()}"
            time.sleep(POLL_S)
        raise MoveInterrupted(f"shard {shard_id} {method} not done in time ({last}); run the move again to resume")

    # ---- the resume file --------------------------------------------------------------------------------

    def _load_state(self) -> dict | None:
        try:
            return json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return None

    def _save_state(self, state: dict) -> None:
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(self.state_path)

    def _note_progress(self, **progress) -> None:
        """What `tidebank status` shows of this move: the last step done, pages and records copied."""
        self._progress.update(progress, updated_at=round(time.time(), 3))
        self._save_state(self._progress)

    def _forget_state(self) -> None:
        self.state_path.unlink(missing_ok=True)


def slot_move_progress(topology_path: pathlib.Path | str) -> dict | None:
    """The slot move in progress for the topology at `topology_path`, from its resume file (where it runs): None
    if there is none. `step` is the last step done ("" before the first), `steps_done` of `steps_total`."""
    try:
        state = json.loads(pathlib.Path(str(topology_path) + STATE_SUFFIX).read_text())
    except (FileNotFoundError, ValueError):
        return None
    step = state.get("step", "")
    return {"slots": _ranges(state["slots"]), "source": state["source"], "target": state["target"],
            "step": step, "steps_done": STEPS.index(step) + 1 if step in STEPS else 0, "steps_total": len(STEPS),
            "pages": state.get("pages", 0), "records": state.get("records", 0),
            "updated_at": state.get("updated_at")}


def _ranges(slots: list[int]) -> str:
    return ",".join(f"{a}" if b == a + 1 else f"{a}-{b - 1}" for a, b in slot_ranges(slots))


def _result_text(result: int) -> str:
    try:
        return sm.SlotMoveResult(result).name.replace("_", " ")
    except ValueError:
        return f"result {result}"

"""The Clearing gRPC servicer: validate, convert, hand each call to the clearing coordinator, translate.

Nothing about money is decided here: the clearing rules decide every per-item code,
cap and window state; the coordinator sequences the steps over shards. This module
checks the request's shape at the trust boundary (sizes, lengths, read-only fields)
and maps what went wrong to a gRPC status: a multi-step write cut short answers
OUTCOME_UNKNOWN (every step is idempotent: the same request again finishes it).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from tidebank.common.keys import U128_MAX, clearing_hub_account_id
from tidebank.common.limits import PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX, PARTICIPANTS_PER_REQUEST_MAX
from tidebank.node.api import access, convert, errors
from tidebank.node.api.calls import check_batch_size, wait_of
from tidebank.node.ledger.clearing import (
    WINDOW_CLOSED,
    WINDOW_OPEN,
    WINDOW_SETTLED,
    WINDOW_STATES,
    settlement_transfer_id,
)
from tidebank.node.ledger.clearing_records import (
    ITEM_ACCEPTED,
    PARTICIPANT_NAME_BYTES_MAX,
    ClearingItem,
    Participant,
)
from tidebank.node.ledger.results import ParticipantResult, WindowResult
from tidebank.node.outcomes import NotAppliedError, OutcomeUnknownError, OverloadedError
from tidebank.node.txn.clearing_coordinator import ClearingCoordinator, ClearingStepError
from tidebank.v1 import clearing_pb2, ledger_pb2

log = logging.getLogger(__name__)

STATEMENT_CHUNK_ITEMS = 1024  # items per streamed message
STATEMENT_PAGE_WAIT_S = 10.0  # each page of a statement, read from one shard


class ClearingService:
    def __init__(self, node, coordinator: ClearingCoordinator) -> None:
        self.node = node
        self.coordinator = coordinator

    # ------------------------------------------------------------------ participants

    def RegisterParticipants(self, request: clearing_pb2.RegisterParticipantsRequest,
                             context) -> clearing_pb2.ParticipantResultsResponse:
        _check_count("participants", len(request.participants), PARTICIPANTS_PER_REQUEST_MAX)
        participants = []
        for n, m in enumerate(request.participants):
            name = m.name
            if len(name.encode()) > PARTICIPANT_NAME_BYTES_MAX:
                raise errors.invalid_argument([(f"participants[{n}].name",
                                                f"at most {PARTICIPANT_NAME_BYTES_MAX} bytes of UTF-8")])
            if m.suspended or m.version or m.HasField("position"):
                raise errors.invalid_argument([(f"participants[{n}]", "suspended, version and position are "
                                                "read-only (register, then UpdateParticipants)")])
            participants.append(Participant(convert.u128_from_pb(m.id), m.ledger, m.code, name,
                                            convert.u128_from_pb(m.settlement_account_id), m.net_debit_cap))
        deadline = time.monotonic() + wait_of(context)
        codes: list[int | None] = [None] * len(participants)
        wanted = [p.settlement_account_id for p in participants if p.settlement_account_id]
        accounts = {}
        if wanted:
            accounts = self._guard(lambda: self.coordinator.lookup_accounts(wanted, deadline), write=False)
        checked = []
        for index, p in enumerate(participants):
            account = accounts.get(p.settlement_account_id)
            if p.id and p.id != U128_MAX and p.ledger and p.settlement_account_id:
                if account is None:
                    codes[index] = ParticipantResult.settlement_account_not_found
                    continue
                if account.ledger != p.ledger:
                    codes[index] = ParticipantResult.settlement_account_ledger_mismatch
                    continue
            checked.append(index)
        if checked:
            results = self._guard(lambda: self.coordinator.register([participants[i] for i in checked], deadline))
            for index, code in zip(checked, results, strict=True):
                codes[index] = code
        return clearing_pb2.ParticipantResultsResponse(results=[int(c) for c in codes])

    def UpdateParticipants(self, request: clearing_pb2.UpdateParticipantsRequest,
                           context) -> clearing_pb2.ParticipantResultsResponse:
        _check_count("updates", len(request.updates), PARTICIPANTS_PER_REQUEST_MAX)
        updates = []
        for n, m in enumerate(request.updates):
            pid = convert.u128_from_pb(m.id)
            if pid == 0 or pid == U128_MAX:
                raise errors.invalid_argument([(f"updates[{n}].id", "must not be 0 or 2^128-1")])
            if not m.HasField("net_debit_cap") and not m.HasField("suspended"):
                raise errors.invalid_argument([(f"updates[{n}]", "set net_debit_cap and/or suspended")])
            updates.append((pid, m.net_debit_cap if m.HasField("net_debit_cap") else -1,
                            int(m.suspended) if m.HasField("suspended") else -1))
        deadline = time.monotonic() + wait_of(context)
        codes = self._guard(lambda: self.coordinator.update(updates, deadline))
        return clearing_pb2.ParticipantResultsResponse(results=[int(c) for c in codes])

    def LookupParticipants(self, request: clearing_pb2.LookupParticipantsRequest,
                           context) -> clearing_pb2.ParticipantsResponse:
        check_batch_size("ids", len(request.ids))
        ids = [convert.u128_from_pb(i) for i in request.ids]
        access.require_participants(access.current(), ids, "the record")
        deadline = time.monotonic() + wait_of(context)

        def read() -> list[Participant]:
            found: dict[int, Participant] = {}
            by_home: dict[int, list[int]] = {}
            for i in ids:
                by_home.setdefault(self.coordinator.home_of(i), []).append(i)
            for home, home_ids in by_home.items():
                for fields in self.coordinator.query(home, "lookup_participants", [home_ids], deadline):
                    found[fields[0]] = Participant(*fields)
            return [found[i] for i in ids if i in found]

        participants = self._guard(read, write=False)
        positions = self._guard(lambda: self.coordinator.positions([p.id for p in participants], deadline),
                                write=False) if participants else {}
        return clearing_pb2.ParticipantsResponse(
            participants=[_participant_pb(p, positions.get(p.id, 0)) for p in participants])

    def ListParticipants(self, request: clearing_pb2.ListParticipantsRequest,
                         context) -> clearing_pb2.ParticipantsResponse:
        """One page, by id, after `after`: each participant's record from its home shard (without positions)."""
        limit = _page_limit(request.limit)
        after = convert.u128_from_pb(request.after)
        deadline = time.monotonic() + wait_of(context)
        participants = self._guard(
            lambda: self.coordinator.list_participants(request.ledger, after, limit, deadline), write=False)
        grant = access.current()
        if not grant.everything:  # a bank sees itself in the list, not the others
            participants = [p for p in participants if p.id in grant.principal.participants]
        return clearing_pb2.ParticipantsResponse(participants=[_participant_pb(p, 0) for p in participants])

    # ------------------------------------------------------------------ items

    def SubmitItems(self, request: clearing_pb2.SubmitItemsRequest, context) -> clearing_pb2.SubmitItemsResponse:
        check_batch_size("items", len(request.items))
        items = []
        for n, m in enumerate(request.items):
            if m.window or m.timestamp or m.status:
                raise errors.invalid_argument([(f"items[{n}]", "window, timestamp and status are set by the "
                                                "cluster: leave them 0")])
            items.append(ClearingItem(convert.u128_from_pb(m.id), convert.u128_from_pb(m.payer_id),
                                      convert.u128_from_pb(m.payee_id), m.amount, m.ledger,
                                      convert.u128_from_pb(m.user_data_128), m.user_data_64))
        access.require_participants(access.current(), [i.payer_id for i in items], "items as payer")
        if not items:
            return clearing_pb2.SubmitItemsResponse()
        deadline = time.monotonic() + wait_of(context)
        codes = self._guard(lambda: self.coordinator.submit_items(items, deadline), multi_step=False)
        return clearing_pb2.SubmitItemsResponse(results=[int(c) for c in codes])

    def LookupItems(self, request: clearing_pb2.LookupItemsRequest, context) -> clearing_pb2.LookupItemsResponse:
        check_batch_size("ids", len(request.ids))
        ids = [convert.u128_from_pb(i) for i in request.ids]
        linearizable = request.consistency != ledger_pb2.READ_CONSISTENCY_STALE
        deadline = time.monotonic() + wait_of(context)
        items = self._guard(lambda: self.coordinator.lookup_items(ids, linearizable, deadline), write=False)
        grant = access.current()
        for item in items if not grant.everything else ():
            if not {item.payer_id, item.payee_id} & grant.principal.participants:
                raise access.denied(grant.principal, grant.permission,
                                    f"item {item.id} is neither paid nor received by this principal")
        return clearing_pb2.LookupItemsResponse(items=[_item_pb(i) for i in items])

    # ------------------------------------------------------------------ windows

    def ListWindows(self, request: clearing_pb2.ListWindowsRequest, context) -> clearing_pb2.ListWindowsResponse:
        _check_ledger(request.ledger)
        limit = _page_limit(request.limit)
        deadline = time.monotonic() + wait_of(context)
        rows = self._guard(lambda: self.coordinator.query(self.coordinator.home_of(request.ledger), "windows",
                                                          [request.ledger, request.after, limit], deadline),
                           write=False)
        return clearing_pb2.ListWindowsResponse(windows=[_window_pb(request.ledger, n, r) for n, r in rows])

    def GetWindow(self, request: clearing_pb2.GetWindowRequest, context) -> clearing_pb2.Window:
        _check_ledger(request.ledger)
        deadline = time.monotonic() + wait_of(context)
        number, record = self._guard(lambda: self.coordinator.window(request.ledger, request.number, deadline),
                                     write=False)
        if record is None:
            raise errors.not_found(f"ledger {request.ledger} has no window {request.number or '(open)'}")
        if record["state"] == WINDOW_OPEN:
            nets = self._guard(lambda: self.coordinator.shard_sums(request.ledger, number, deadline), write=False)
        else:
            nets = self._guard(lambda: self.coordinator.nets(request.ledger, number, deadline), write=False)
        bilateral = self._guard(lambda: self.coordinator.bilateral(request.ledger, number, deadline),
                                write=False) if request.bilateral else []
        grant = access.current()
        if not grant.everything:  # a bank sees its own position and its own pairs, not the others'
            own = grant.principal.participants
            nets = [n for n in nets if n[0] in own]
            bilateral = [b for b in bilateral if b[0] in own or b[1] in own]
        return _window_pb(request.ledger, number, record, nets, bilateral)

    def CloseWindow(self, request: clearing_pb2.WindowRequest, context) -> clearing_pb2.WindowStepResponse:
        _check_ledger(request.ledger)
        deadline = time.monotonic() + wait_of(context)
        code, number = self._guard(lambda: self.coordinator.close(request.ledger, request.number, deadline))
        return self._step_response(request.ledger, number, code, deadline)

    def SettleWindow(self, request: clearing_pb2.WindowRequest, context) -> clearing_pb2.WindowStepResponse:
        _check_ledger(request.ledger)
        if request.number == 0:
            raise errors.invalid_argument([("number", "name the closed window to settle")])
        deadline = time.monotonic() + wait_of(context)
        code, shortfalls, _reason = self._guard(
            lambda: self.coordinator.settle(request.ledger, request.number, deadline))
        response = self._step_response(request.ledger, request.number, code, deadline)
        for pid, need, have in shortfalls:
            s = response.shortfalls.add()
            convert.u128_to_pb(s.participant_id, pid)
            s.net_debit, s.available, s.shortfall = need, have, need - have
        return response

    def UnwindParticipant(self, request: clearing_pb2.UnwindParticipantRequest,
                          context) -> clearing_pb2.WindowStepResponse:
        _check_ledger(request.ledger)
        if request.number == 0:
            raise errors.invalid_argument([("number", "name the closed window to unwind from")])
        pid = convert.u128_from_pb(request.participant_id)
        deadline = time.monotonic() + wait_of(context)
        code = self._guard(lambda: self.coordinator.unwind(request.ledger, request.number, pid, deadline))
        return self._step_response(request.ledger, request.number, code, deadline)

    def AbortWindow(self, request: clearing_pb2.WindowRequest, context) -> clearing_pb2.WindowStepResponse:
        """ok or window_already_aborted in the response; every refusal (the window's state) is FAILED_PRECONDITION
        with a PreconditionFailure naming the window, and changes nothing."""
        _check_ledger(request.ledger)
        if request.number == 0:
            raise errors.invalid_argument([("number", "name the closed window to abort")])
        deadline = time.monotonic() + wait_of(context)
        code, committed = self._guard(lambda: self.coordinator.abort(request.ledger, request.number, deadline))
        if code == WindowResult.window_not_found:
            raise errors.not_found(f"ledger {request.ledger} has no window {request.number}")
        if code not in (WindowResult.ok, WindowResult.window_already_aborted):
            _, record = self._guard(lambda: self.coordinator.window(request.ledger, request.number, deadline),
                                    write=False)
            why = _abort_refusal(code, record or {}, committed)
            raise errors.failed_precondition(f"window {request.number} of ledger {request.ledger} cannot be aborted: "
                                             f"{why}", [("WINDOW_STATE", f"{request.ledger}/{request.number}", why)])
        return self._step_response(request.ledger, request.number, code, deadline)

    def _step_response(self, ledger: int, number: int, code: int, deadline: float) -> clearing_pb2.WindowStepResponse:
        response = clearing_pb2.WindowStepResponse(result=int(code))
        if number:
            _, record = self._guard(lambda: self.coordinator.window(ledger, number, deadline), write=False)
            if record is not None:
                nets = self._guard(lambda: self.coordinator.nets(ledger, number, deadline), write=False) \
                    if record["state"] >= WINDOW_CLOSED else []
                response.window.CopyFrom(_window_pb(ledger, number, record, nets))
        return response

    # ------------------------------------------------------------------ statements

    def ExportStatement(self, request: clearing_pb2.ExportStatementRequest,
                        context) -> Iterator[clearing_pb2.StatementChunk]:
        """Streams the participant's items of a closed window by id, then the statement; never all in memory.
        Resumed (after_item_id), the items up to the cursor are read for the statement's totals and digest (which
        always cover the whole window) but not sent."""
        _check_ledger(request.ledger)
        pid = convert.u128_from_pb(request.participant_id)
        access.require_participants(access.current(), [pid], "the statement")
        after = convert.u128_from_pb(request.after_item_id)
        deadline = time.monotonic() + wait_of(context)
        number, record = self._guard(lambda: self.coordinator.window(request.ledger, request.number, deadline),
                                     write=False)
        if record is None:
            raise errors.not_found(f"ledger {request.ledger} has no window {request.number}")
        if record["state"] < WINDOW_CLOSED:
            raise errors.failed_precondition(f"window {number} is {WINDOW_STATES[record['state']]}: "
                                             "statements are of closed windows",
                                             [("WINDOW_STATE", f"{request.ledger}/{number}",
                                               WINDOW_STATES[record["state"]])])
        digest = hashlib.sha256()
        sums = [0, 0, 0, 0]
        chunk = clearing_pb2.StatementChunk()
        items = self.coordinator.statement_items(request.ledger, number, pid,
                                                 lambda: time.monotonic() + STATEMENT_PAGE_WAIT_S)
        while True:
            item = self._guard(lambda: next(items, None), write=False)
            if item is None:
                break
            if item.status == ITEM_ACCEPTED:
                digest.update(self.coordinator.digest_line(item))
                if item.payer_id == pid:
                    sums[0] += item.amount
                    sums[2] += 1
                else:
                    sums[1] += item.amount
                    sums[3] += 1
            elif not request.include_unwound:
                continue
            if item.id <= after:
                continue  # sent before the stream broke: counted above, not sent again
            _item_pb(item, chunk.items.add())
            if len(chunk.items) >= STATEMENT_CHUNK_ITEMS:
                yield chunk
                chunk = clearing_pb2.StatementChunk()
        s = chunk.statement
        convert.u128_to_pb(s.participant_id, pid)
        s.ledger, s.window = request.ledger, number
        convert.u128_to_pb(s.sent, sums[0])
        convert.u128_to_pb(s.received, sums[1])
        convert.i128_to_pb(s.net, sums[0] - sums[1])
        s.count_sent, s.count_received = sums[2], sums[3]
        s.items = sums[2] + sums[3]
        s.sha256 = digest.hexdigest()
        if record["state"] == WINDOW_SETTLED and sums[0] != sums[1]:
            convert.u128_to_pb(s.settlement_transfer_id,
                               settlement_transfer_id(request.ledger, number, record.get("attempt", 0), pid))
            s.settlement_amount = abs(sums[0] - sums[1])
        yield chunk

    # ------------------------------------------------------------------ plumbing

    def _guard(self, fn: Callable[[], Any], *, write: bool = True, multi_step: bool = True) -> Any:
        """Run a coordinator step; its failure as a gRPC status. A multi-step write cut short may have applied."""
        try:
            return fn()
        except errors.RequestError:
            raise
        except OutcomeUnknownError as exc:
            raise errors.outcome_unknown(0, str(exc)) from exc
        except OverloadedError as exc:
            raise errors.overloaded(0, str(exc)) from exc
        except NotAppliedError as exc:
            if write and multi_step:
                raise errors.outcome_unknown(0, f"cut short: {exc}") from exc
            raise errors.retryable("NOT_APPLIED" if write else "NO_LEADER", str(exc)) from exc
        except ClearingStepError as exc:
            raise errors.internal(str(exc)) from exc
        except Exception as exc:  # a gRPC failure of an inner call, or a bug
            log.warning("clearing step failed: %r", exc, exc_info=not isinstance(exc, grpc.RpcError))
            if write:
                raise errors.outcome_unknown(0, f"{type(exc).__name__}: {exc}") from exc
            raise errors.retryable("NO_LEADER", f"{type(exc).__name__}: {exc}") from exc


def _check_count(field: str, count: int, limit: int) -> None:
    if count > limit:
        raise errors.invalid_argument([(field, f"at most {limit} per request, got {count}")])


def _check_ledger(ledger: int) -> None:
    if ledger == 0:
        raise errors.invalid_argument([("ledger", "must not be 0")])


def _page_limit(limit: int) -> int:
    if limit > PAGE_SIZE_MAX:
        raise errors.invalid_argument([("limit", f"at most {PAGE_SIZE_MAX}, got {limit}")])
    return limit or PAGE_SIZE_DEFAULT


def _abort_refusal(code: int, record: dict, committed: int) -> str:
    """Why AbortWindow refused the window, in words (the rules' code and the window as it is now)."""
    if committed:
        return f"the settlement transfers of its attempt {committed} committed (settle it to finish the bookkeeping)"
    if code == WindowResult.window_already_settled:
        return "it is settled"
    if code == WindowResult.settlement_in_progress:
        return ("a settlement attempt holds it: wait until it settles or fails back to closed (at most "
                "its lease)")
    state = record.get("state", WINDOW_OPEN)
    if state == WINDOW_CLOSED and record.get("unwinding") is not None:
        return f"participant {record['unwinding']} is being unwound from it: abort after the unwind"
    if state == WINDOW_OPEN:
        return "it is open: only a closed window can be aborted (close it first)"
    if state < WINDOW_CLOSED:
        return f"it is {WINDOW_STATES[state]}: abort it once it is closed"
    return f"{WindowResult(code).name} (it is {WINDOW_STATES[state]})"


def _participant_pb(p: Participant, position: int) -> clearing_pb2.Participant:
    m = clearing_pb2.Participant(ledger=p.ledger, code=p.code, name=p.name, net_debit_cap=p.net_debit_cap,
                                 suspended=p.suspended, version=p.version)
    convert.u128_to_pb(m.id, p.id)
    convert.u128_to_pb(m.settlement_account_id, p.settlement_account_id)
    if position:
        convert.i128_to_pb(m.position, position)
    return m


def _item_pb(i: ClearingItem, m: clearing_pb2.ClearingItem | None = None) -> clearing_pb2.ClearingItem:
    m = m if m is not None else clearing_pb2.ClearingItem()
    convert.u128_to_pb(m.id, i.id)
    convert.u128_to_pb(m.payer_id, i.payer_id)
    convert.u128_to_pb(m.payee_id, i.payee_id)
    convert.u128_to_pb(m.user_data_128, i.user_data_128)
    m.amount, m.ledger, m.user_data_64 = i.amount, i.ledger, i.user_data_64
    m.window, m.timestamp, m.status = i.window, i.timestamp, i.status
    return m


def _window_pb(ledger: int, number: int, record: dict, nets=(), bilateral=()) -> clearing_pb2.Window:
    m = clearing_pb2.Window(ledger=ledger, number=number, state=record["state"],
                            opened_at=record.get("opened_at", 0), closed_at=record.get("closed_at", 0),
                            settled_at=record.get("settled_at", 0), round=record.get("round", 0),
                            failure=record.get("failure", ""), aborted_at=record.get("aborted_at", 0))
    for pid in record.get("unwound", ()):
        convert.u128_to_pb(m.unwound.add(), pid)
    for tid in record.get("transfers", ()):
        convert.u128_to_pb(m.settlement_transfer_ids.add(), tid)
    convert.u128_to_pb(m.hub_account_id, clearing_hub_account_id(ledger))
    for pid, sent, received, n_sent, n_received in nets:
        n = m.nets.add()
        convert.u128_to_pb(n.participant_id, pid)
        convert.u128_to_pb(n.sent, sent)
        convert.u128_to_pb(n.received, received)
        convert.i128_to_pb(n.net, sent - received)
        n.count_sent, n.count_received = n_sent, n_received
    for payer, payee, amount, count in bilateral:
        b = m.bilateral.add()
        convert.u128_to_pb(b.payer_id, payer)
        convert.u128_to_pb(b.payee_id, payee)
        convert.u128_to_pb(b.amount, amount)
        b.count = count
    return m


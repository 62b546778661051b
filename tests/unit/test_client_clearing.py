"""The Clearing API of Client and AsyncClient against an in-process fake Clearing service (real gRPC servers on
127.0.0.1), and the clearing values and their protobuf conversions."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import pytest

from tidebank.client import (
    AsyncClient,
    BilateralPosition,
    ClearingItem,
    ClearingItemResult,
    ClearingItemResultCode,
    ClearingItemStatus,
    Client,
    InvalidRequestError,
    NetPosition,
    OutcomeUnknownError,
    Participant,
    ParticipantResultCode,
    ReadConsistency,
    Shortfall,
    Statement,
    TidebankError,
    UnavailableError,
    Window,
    WindowResultCode,
    WindowState,
    WindowStep,
    _core,
    _model,
)
from tidebank.client.testing import rich_status
from tidebank.common.keys import U128_MAX
from tidebank.common.limits import BATCH_ITEMS_MAX
from tidebank.v1 import admin_pb2, admin_pb2_grpc, clearing_pb2, clearing_pb2_grpc

T = TypeVar("T")
BIG = 2**127 + 12345  # ids above 2^64 check both halves of every U128
PAYER, PAYEE = BIG + 1, BIG + 2
PARTICIPANTS_MAX = 1024  # per Register/UpdateParticipants request, as the node refuses more


# --------------------------------------------------------------------------- the fake service


@dataclass
class Fault:
    method: str
    times: int  # attempts left; < 0: forever
    code: grpc.StatusCode
    reason: str
    apply: bool  # apply the request, then fail (an answer lost on the way back)


def _u128(m: Any) -> int:
    return (m.hi << 64) | m.lo


class FakeClearing:
    """Clearing on ``nodes`` gRPC servers sharing one state; records every request. Not the rules: it stores what
    it is sent, answers ok / exists, and does what the test scripts (faults, step answers, stream hooks)."""

    def __init__(self, nodes: int = 2) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[str, str, Any]] = []  # (node, method, request)
        self.faults: list[Fault] = []
        self.participants: dict[int, clearing_pb2.Participant] = {}
        self.items: dict[int, clearing_pb2.ClearingItem] = {}
        self.item_results: dict[int, int] = {}  # scripted result per item id
        self.open_window: dict[int, int] = {1: 3}  # ledger -> its open window
        self.windows: dict[tuple[int, int], clearing_pb2.Window] = {}
        self.steps: dict[str, clearing_pb2.WindowStepResponse] = {}  # scripted answer per method
        self.statement_items: list[clearing_pb2.ClearingItem] = []
        self.statement = clearing_pb2.Statement()
        self.chunk_size = 1000
        self.break_after_chunks: int | None = None
        self.breaks = 1  # streams broken after break_after_chunks chunks (then they run to their end)
        self.between_chunks: Callable[[int, Any], None] | None = None
        self.delay_s = 0.0
        self.servers: dict[str, grpc.Server] = {}
        self.addresses: list[str] = []
        for i in range(nodes):
            name = f"node{i + 1}"
            server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=[("grpc.so_reuseport", 0)])
            clearing_pb2_grpc.add_ClearingServicer_to_server(_Servicer(self, name), server)
            admin_pb2_grpc.add_AdminServicer_to_server(_Admin(self), server)
            port = server.add_insecure_port("127.0.0.1:0")
            server.start()
            self.servers[name] = server
            self.addresses.append(f"127.0.0.1:{port}")

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop(0).wait()

    def fail(self, method: str, *, reason: str = "", code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE,
             times: int = 1, apply: bool = False) -> None:
        with self.lock:
            self.faults.append(Fault(method, times, code, reason, apply))

    def requests(self, method: str) -> list[Any]:
        with self.lock:
            return [r for _, m, r in self.calls if m == method]

    def take_fault(self, method: str) -> Fault | None:
        with self.lock:
            for f in self.faults:
                if f.method == method and f.times != 0:
                    f.times -= 1
                    return f
        return None


def _abort(context: Any, code: grpc.StatusCode, message: str, reason: str = "") -> None:
    context.abort_with_status(rich_status(code, message, reason=reason))


def _unary(fn: Callable[[Any, Any, Any], Any]) -> Callable[[Any, Any, Any], Any]:
    """Record the request, then the scripted fault: before the handler, or after it (``apply``)."""

    def wrapper(self: _Servicer, request: Any, context: Any) -> Any:
        fc = self.fc
        method = fn.__name__
        with fc.lock:
            fc.calls.append((self.node, method, request))
        if fc.delay_s:
            time.sleep(fc.delay_s)
        fault = fc.take_fault(method)
        if fault is not None and not fault.apply:
            _abort(context, fault.code, f"injected {fault.reason or fault.code.name}", fault.reason)
        answer = fn(self, request, context)
        if fault is not None:
            _abort(context, fault.code, f"injected {fault.reason or fault.code.name} (applied)", fault.reason)
        return answer

    wrapper.__name__ = fn.__name__
    return wrapper


class _Servicer(clearing_pb2_grpc.ClearingServicer):
    def __init__(self, fc: FakeClearing, node: str) -> None:
        self.fc = fc
        self.node = node

    @_unary
    def RegisterParticipants(self, request: Any, context: Any) -> Any:  # noqa: N802
        if len(request.participants) > PARTICIPANTS_MAX:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"at most {PARTICIPANTS_MAX} participants")
        results = []
        with self.fc.lock:
            for p in request.participants:
                pid = _u128(p.id)
                if pid in self.fc.participants:
                    results.append(clearing_pb2.PARTICIPANT_RESULT_EXISTS)
                else:
                    stored = clearing_pb2.Participant()
                    stored.CopyFrom(p)
                    stored.version = 1
                    self.fc.participants[pid] = stored
                    results.append(clearing_pb2.PARTICIPANT_RESULT_OK)
        return clearing_pb2.ParticipantResultsResponse(results=results)

    @_unary
    def UpdateParticipants(self, request: Any, context: Any) -> Any:  # noqa: N802
        results = []
        with self.fc.lock:
            for u in request.updates:
                p = self.fc.participants.get(_u128(u.id))
                if p is None:
                    results.append(clearing_pb2.PARTICIPANT_RESULT_PARTICIPANT_NOT_FOUND)
                    continue
                if u.HasField("net_debit_cap"):
                    p.net_debit_cap = u.net_debit_cap
                if u.HasField("suspended"):
                    p.suspended = u.suspended
                p.version += 1
                results.append(clearing_pb2.PARTICIPANT_RESULT_OK)
        return clearing_pb2.ParticipantResultsResponse(results=results)

    @_unary
    def LookupParticipants(self, request: Any, context: Any) -> Any:  # noqa: N802
        with self.fc.lock:
            found = [self.fc.participants[_u128(i)] for i in request.ids if _u128(i) in self.fc.participants]
        return clearing_pb2.ParticipantsResponse(participants=found)

    @_unary
    def ListParticipants(self, request: Any, context: Any) -> Any:  # noqa: N802
        with self.fc.lock:
            rows = [p for pid, p in sorted(self.fc.participants.items())
                    if request.ledger in (0, p.ledger) and pid > _u128(request.after)]
        return clearing_pb2.ParticipantsResponse(participants=rows[: request.limit or 100])

    @_unary
    def SubmitItems(self, request: Any, context: Any) -> Any:  # noqa: N802
        if len(request.items) > BATCH_ITEMS_MAX:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"{len(request.items)} items, at most {BATCH_ITEMS_MAX}")
        results = []
        with self.fc.lock:
            for item in request.items:
                iid = _u128(item.id)
                if iid in self.fc.item_results:
                    results.append(self.fc.item_results[iid])
                elif iid in self.fc.items:
                    results.append(clearing_pb2.CLEARING_ITEM_RESULT_EXISTS)
                else:
                    stored = clearing_pb2.ClearingItem()
                    stored.CopyFrom(item)
                    stored.window = self.fc.open_window.get(item.ledger, 1)
                    self.fc.items[iid] = stored
                    results.append(clearing_pb2.CLEARING_ITEM_RESULT_OK)
        return clearing_pb2.SubmitItemsResponse(results=results)

    @_unary
    def LookupItems(self, request: Any, context: Any) -> Any:  # noqa: N802
        with self.fc.lock:
            found = [self.fc.items[_u128(i)] for i in request.ids if _u128(i) in self.fc.items]
        return clearing_pb2.LookupItemsResponse(items=found)

    def _window(self, ledger: int, number: int) -> clearing_pb2.Window:
        number = number or self.fc.open_window.get(ledger, 0)
        w = self.fc.windows.get((ledger, number))
        if w is None:
            state = clearing_pb2.WINDOW_STATE_OPEN if number == self.fc.open_window.get(ledger) else \
                clearing_pb2.WINDOW_STATE_CLOSED
            w = clearing_pb2.Window(ledger=ledger, number=number, state=state)
        return w

    @_unary
    def ListWindows(self, request: Any, context: Any) -> Any:  # noqa: N802
        with self.fc.lock:
            last = self.fc.open_window.get(request.ledger, 0)
            windows = [self._window(request.ledger, n) for n in range(request.after + 1, last + 1)]
        return clearing_pb2.ListWindowsResponse(windows=windows[: request.limit or 100])

    @_unary
    def GetWindow(self, request: Any, context: Any) -> Any:  # noqa: N802
        with self.fc.lock:
            if request.ledger not in self.fc.open_window:
                _abort(context, grpc.StatusCode.NOT_FOUND, f"ledger {request.ledger} has no windows")
            return self._window(request.ledger, request.number)

    @_unary
    def CloseWindow(self, request: Any, context: Any) -> Any:  # noqa: N802
        with self.fc.lock:
            open_number = self.fc.open_window.get(request.ledger, 0)
            number = request.number or open_number
            if not number:
                return clearing_pb2.WindowStepResponse(result=clearing_pb2.WINDOW_RESULT_WINDOW_NOT_FOUND)
            if number == open_number:
                self.fc.open_window[request.ledger] = number + 1
            w = clearing_pb2.Window(ledger=request.ledger, number=number, state=clearing_pb2.WINDOW_STATE_CLOSED)
            self.fc.windows[(request.ledger, number)] = w
            return clearing_pb2.WindowStepResponse(result=clearing_pb2.WINDOW_RESULT_OK, window=w)

    def _step(self, method: str, request: Any) -> Any:
        scripted = self.fc.steps.get(method)
        if scripted is not None:
            return scripted
        return clearing_pb2.WindowStepResponse(window=clearing_pb2.Window(ledger=request.ledger,
                                                                          number=request.number))

    @_unary
    def SettleWindow(self, request: Any, context: Any) -> Any:  # noqa: N802
        return self._step("SettleWindow", request)

    @_unary
    def UnwindParticipant(self, request: Any, context: Any) -> Any:  # noqa: N802
        return self._step("UnwindParticipant", request)

    @_unary
    def AbortWindow(self, request: Any, context: Any) -> Any:  # noqa: N802
        return self._step("AbortWindow", request)

    def ExportStatement(self, request: Any, context: Any) -> Iterator[Any]:  # noqa: N802
        fc = self.fc
        with fc.lock:
            fc.calls.append((self.node, "ExportStatement", request))
        fault = fc.take_fault("ExportStatement")
        if fault is not None:
            _abort(context, fault.code, f"injected {fault.reason or fault.code.name}", fault.reason)
        after = _u128(request.after_item_id)
        items = [i for i in fc.statement_items if _u128(i.id) > after]
        chunks = [items[k : k + fc.chunk_size] for k in range(0, len(items), fc.chunk_size)] or [[]]
        for n, chunk in enumerate(chunks):
            if fc.break_after_chunks is not None and n == fc.break_after_chunks and fc.breaks > 0:
                fc.breaks -= 1
                _abort(context, grpc.StatusCode.UNAVAILABLE, "injected: the stream broke")
            last = n == len(chunks) - 1
            yield clearing_pb2.StatementChunk(items=chunk, statement=fc.statement if last else None)
            if fc.between_chunks is not None and not last:
                fc.between_chunks(n, context)


class _Admin(admin_pb2_grpc.AdminServicer):
    def __init__(self, fc: FakeClearing) -> None:
        self.fc = fc

    def GetShardMap(self, request: Any, context: Any) -> Any:  # noqa: N802
        m = admin_pb2.ShardMap(version=1, slot_count=4096)
        s = m.shards.add(shard_id=0)
        s.slots.add(start=0, end=4096)
        for i, address in enumerate(self.fc.addresses):
            s.replicas.add(node=f"node{i + 1}", dc=f"dc{i + 1}", address=address)
        return m


@pytest.fixture
def fc() -> Iterator[FakeClearing]:
    fake = FakeClearing()
    try:
        yield fake
    finally:
        fake.stop()


def client(fc: FakeClearing, **kw: Any) -> Client:
    kw.setdefault("timeout_s", 2.0)
    kw.setdefault("attempt_timeout_s", 0.5)
    return Client(fc.addresses, **kw)


def run_async(fc: FakeClearing, body: Callable[[AsyncClient], Awaitable[T]], **kw: Any) -> T:
    kw.setdefault("timeout_s", 2.0)
    kw.setdefault("attempt_timeout_s", 0.5)

    async def main() -> T:
        async with AsyncClient(fc.addresses, **kw) as c:
            return await body(c)

    return asyncio.run(main())


def participant(pid: int, **kw: Any) -> Participant:
    values = dict(ledger=1, code=7, name="Bank Ä", settlement_account_id=BIG + 100, net_debit_cap=10_000)
    return Participant(pid, **(values | kw))


def item(iid: int, **kw: Any) -> ClearingItem:
    values = dict(payer_id=PAYER, payee_id=PAYEE, amount=100, ledger=1)
    return ClearingItem(iid, **(values | kw))


def statement_items(n: int, pid: int = PAYER) -> list[clearing_pb2.ClearingItem]:
    return [_model.clearing_item_record_to_proto(item(i + 1, payer_id=pid, window=1)) for i in range(n)]


# --------------------------------------------------------------------------- values and conversions


def test_participant_round_trips_through_its_wire_record() -> None:
    p = participant(U128_MAX - 1, suspended=True, version=4, position=-2**62, net_debit_cap=2**64 - 1)
    m = clearing_pb2.Participant.FromString(_model.participant_record_to_proto(p).SerializeToString())
    assert _model.participant_from_proto(m) == p


def test_register_sends_none_of_the_read_only_participant_fields() -> None:
    m = _model.participant_to_proto(participant(5, suspended=True, version=4, position=9))
    assert (m.suspended, m.version, m.HasField("position")) == (False, 0, False)
    assert _u128(m.settlement_account_id) == BIG + 100 and m.name == "Bank Ä"


def test_participant_update_sets_only_the_fields_to_change() -> None:
    m = _model.participant_update_to_proto(_model.ParticipantUpdate(BIG, net_debit_cap=0))
    assert m.HasField("net_debit_cap") and m.net_debit_cap == 0
    assert not m.HasField("suspended")
    assert _model.participant_update_from_proto(m) == _model.ParticipantUpdate(BIG, net_debit_cap=0)


def test_clearing_item_round_trips_with_its_server_fields() -> None:
    i = item(BIG, user_data_128=U128_MAX, user_data_64=3, window=9, timestamp=10**18, status=ClearingItemStatus.UNWOUND)
    m = clearing_pb2.ClearingItem.FromString(_model.clearing_item_record_to_proto(i).SerializeToString())
    assert _model.clearing_item_from_proto(m) == i


def test_submit_sends_none_of_the_read_only_item_fields() -> None:
    m = _model.clearing_item_to_proto(item(5, window=9, timestamp=10, status=ClearingItemStatus.UNWOUND))
    assert (m.window, m.timestamp, m.status) == (0, 0, 0)


def test_window_step_round_trips_with_nets_bilateral_and_shortfalls() -> None:
    w = Window(1, 7, state=WindowState.SETTLED, opened_at=1, closed_at=2, settled_at=3, round=2, unwound=[BIG],
               failure="x", nets=[NetPosition(PAYER, 5, 2, 1, 1, 3), NetPosition(PAYEE, 2, 5, 1, 1, -3)],
               bilateral=[BilateralPosition(PAYER, PAYEE, 5, 1)], settlement_transfer_ids=[BIG + 9],
               hub_account_id=BIG + 10)
    step = WindowStep(WindowResultCode.insufficient_funds, w, [Shortfall(PAYER, 3, 1, 2)])
    m = clearing_pb2.WindowStepResponse.FromString(_model.window_step_to_proto(step).SerializeToString())
    assert _model.window_step_from_proto(m) == step


def test_sums_beyond_64_bits_decode_whole() -> None:
    big = 2**70 + 5
    m = clearing_pb2.NetPosition(sent=_model.u128_to_proto(big), received=_model.u128_to_proto(3), count_sent=1)
    _model._put_i128(m.net, big - 3)
    assert _model.net_position_from_proto(m) == NetPosition(0, big, 3, 1, 0, big - 3)


def test_a_negative_net_beyond_64_bits_decodes_whole() -> None:
    n = NetPosition(PAYER, 1, 2**66, 1, 9, 1 - 2**66)
    m = clearing_pb2.NetPosition.FromString(_model.net_position_to_proto(n).SerializeToString())
    assert _model.net_position_from_proto(m) == n


def test_a_position_beyond_63_bits_decodes_whole() -> None:
    p = participant(5, net_debit_cap=2**64 - 1, position=2**64 - 2)
    m = clearing_pb2.Participant.FromString(_model.participant_record_to_proto(p).SerializeToString())
    assert _model.participant_from_proto(m).position == 2**64 - 2


def test_a_bilateral_amount_beyond_64_bits_decodes_whole() -> None:
    b = BilateralPosition(PAYER, PAYEE, 2**80, 3)
    m = clearing_pb2.BilateralPosition.FromString(_model.bilateral_to_proto(b).SerializeToString())
    assert _model.bilateral_from_proto(m) == b


def test_statement_sums_beyond_64_bits_decode_whole() -> None:
    s = Statement(BIG, sent=2**90, received=2**65, net=2**90 - 2**65, count_sent=2, count_received=1)
    m = clearing_pb2.Statement.FromString(_model.statement_to_proto(s).SerializeToString())
    assert _model.statement_from_proto(m) == s


def test_statement_round_trips() -> None:
    s = Statement(BIG, ledger=1, window=2, sent=3, received=4, count_sent=5, count_received=6, net=-1,
                  settlement_transfer_id=BIG + 1, settlement_amount=1, sha256="ab" * 32, items=11)
    m = clearing_pb2.Statement.FromString(_model.statement_to_proto(s).SerializeToString())
    assert _model.statement_from_proto(m) == s


@pytest.mark.parametrize(
    ("enum", "descriptor", "prefix"),
    [(ParticipantResultCode, clearing_pb2.ParticipantResult, "PARTICIPANT_RESULT_"),
     (ClearingItemResultCode, clearing_pb2.ClearingItemResult, "CLEARING_ITEM_RESULT_"),
     (WindowResultCode, clearing_pb2.WindowResult, "WINDOW_RESULT_")],
)
def test_result_enums_are_the_proto_enums(enum: Any, descriptor: Any, prefix: str) -> None:
    want = {name[len(prefix):].lower(): number for name, number in descriptor.items()}
    assert {m.name: m.value for m in enum} == want


def test_a_result_code_newer_than_the_client_stays_a_number() -> None:
    r = _model.clearing_item_result(0, 5, 999)
    assert r.status == 999 and not r.ok


# --------------------------------------------------------------------------- participants


def test_register_participants_answers_one_result_per_item_in_order(fc: FakeClearing) -> None:
    with client(fc) as c:
        c.register_participants([participant(PAYER)])
        results = c.register_participants([participant(PAYEE), participant(PAYER)])
    assert [(r.index, r.id, r.status) for r in results] == [
        (0, PAYEE, ParticipantResultCode.ok), (1, PAYER, ParticipantResultCode.exists)]
    assert all(r.ok for r in results)


def test_register_participants_go_in_requests_of_at_most_1024(fc: FakeClearing) -> None:
    with client(fc, timeout_s=10.0, attempt_timeout_s=5.0) as c:
        results = c.register_participants([participant(i + 1) for i in range(PARTICIPANTS_MAX + 1)])
    assert [len(r.participants) for r in fc.requests("RegisterParticipants")] == [PARTICIPANTS_MAX, 1]
    assert [r.id for r in results] == list(range(1, PARTICIPANTS_MAX + 2)) and all(r.ok for r in results)


def test_set_net_debit_cap_sends_only_the_cap(fc: FakeClearing) -> None:
    fc.participants[PAYER] = _model.participant_record_to_proto(participant(PAYER))
    with client(fc) as c:
        r = c.set_net_debit_cap(PAYER, 0)
    [req] = fc.requests("UpdateParticipants")
    [u] = req.updates
    assert _u128(u.id) == PAYER and u.HasField("net_debit_cap") and u.net_debit_cap == 0
    assert not u.HasField("suspended")
    assert r.status == ParticipantResultCode.ok and r.id == PAYER


@pytest.mark.parametrize(("method", "suspended"), [("suspend_participant", True), ("resume_participant", False)])
def test_suspend_and_resume_send_the_suspended_flag(fc: FakeClearing, method: str, suspended: bool) -> None:
    fc.participants[PAYER] = _model.participant_record_to_proto(participant(PAYER, suspended=not suspended))
    with client(fc) as c:
        getattr(c, method)(PAYER)
    [u] = fc.requests("UpdateParticipants")[0].updates
    assert u.HasField("suspended") and u.suspended is suspended and not u.HasField("net_debit_cap")
    assert fc.participants[PAYER].suspended is suspended


def test_lookup_participants_returns_the_found_ones_in_request_order(fc: FakeClearing) -> None:
    for pid, position in ((PAYER, -500), (PAYEE, 500)):
        fc.participants[pid] = _model.participant_record_to_proto(participant(pid, position=position))
    with client(fc) as c:
        found = c.lookup_participants([PAYEE, 42, PAYER])
    assert [(p.id, p.position) for p in found] == [(PAYEE, 500), (PAYER, -500)]


def test_list_participants_reads_every_page(fc: FakeClearing, monkeypatch: pytest.MonkeyPatch) -> None:
    for pid in range(1, 8):
        fc.participants[pid] = _model.participant_record_to_proto(participant(pid))
    monkeypatch.setattr(_core, "PAGE_SIZE_MAX", 3)  # the largest page the node serves
    with client(fc) as c:
        found = c.list_participants(1)
    assert [p.id for p in found] == list(range(1, 8))
    assert [(_u128(r.after), r.limit) for r in fc.requests("ListParticipants")] == [(0, 3), (3, 3), (6, 3)]


def test_list_participants_with_a_limit_reads_one_page_after_an_id(fc: FakeClearing) -> None:
    for pid in range(1, 8):
        fc.participants[pid] = _model.participant_record_to_proto(participant(pid))
    with client(fc) as c:
        found = c.list_participants(1, after=2, limit=2)
    assert [p.id for p in found] == [3, 4]
    assert len(fc.requests("ListParticipants")) == 1


def test_list_participants_asks_for_the_ledger(fc: FakeClearing) -> None:
    fc.participants[PAYER] = _model.participant_record_to_proto(participant(PAYER, ledger=2))
    fc.participants[PAYEE] = _model.participant_record_to_proto(participant(PAYEE, ledger=1))
    with client(fc) as c:
        found = c.list_participants(2)
    assert [p.id for p in found] == [PAYER]
    assert fc.requests("ListParticipants")[0].ledger == 2


# --------------------------------------------------------------------------- items


def test_submit_items_above_the_batch_limit_go_in_several_requests_in_order(fc: FakeClearing) -> None:
    n = 2 * BATCH_ITEMS_MAX + 5
    fc.item_results[BATCH_ITEMS_MAX + 1] = clearing_pb2.CLEARING_ITEM_RESULT_EXCEEDS_NET_DEBIT_CAP  # the 8190th
    with client(fc, timeout_s=20.0, attempt_timeout_s=10.0) as c:
        results = c.submit_items([item(i + 1) for i in range(n)])
    assert [len(r.items) for r in fc.requests("SubmitItems")] == [BATCH_ITEMS_MAX, BATCH_ITEMS_MAX, 5]
    assert [r.id for r in results] == list(range(1, n + 1))
    assert [r.index for r in results] == list(range(n))
    refused = [r for r in results if not r.ok]
    assert [(r.index, r.status) for r in refused] == [(BATCH_ITEMS_MAX, ClearingItemResultCode.exceeds_net_debit_cap)]


def test_submit_items_retries_not_leader_with_the_same_request(fc: FakeClearing) -> None:
    fc.fail("SubmitItems", reason="NOT_LEADER", times=2)
    with client(fc) as c:
        results = c.submit_items([item(1), item(2)])
    sent = fc.requests("SubmitItems")
    assert len(sent) == 3
    assert sent[0].SerializeToString() == sent[1].SerializeToString() == sent[2].SerializeToString()
    assert [r.status for r in results] == [ClearingItemResultCode.ok] * 2


def test_submit_items_whose_outcome_stays_unknown_raise_outcome_unknown(fc: FakeClearing) -> None:
    fc.fail("SubmitItems", reason="OUTCOME_UNKNOWN", times=-1)
    with client(fc, timeout_s=0.8) as c, pytest.raises(OutcomeUnknownError) as caught:
        c.submit_items([item(1), item(2)])
    assert caught.value.ids == [1, 2]


def test_a_retry_after_a_lost_answer_learns_the_outcome(fc: FakeClearing) -> None:
    fc.fail("SubmitItems", reason="OUTCOME_UNKNOWN", apply=True)
    with client(fc) as c:
        results = c.submit_items([item(1)])
    assert [r.status for r in results] == [ClearingItemResultCode.exists]


def test_not_applied_is_retried_and_never_reported_as_unknown(fc: FakeClearing) -> None:
    fc.fail("SubmitItems", reason="NOT_APPLIED", times=-1)
    with client(fc, timeout_s=0.6) as c, pytest.raises(UnavailableError) as caught:
        c.submit_items([item(1)])
    assert not isinstance(caught.value, OutcomeUnknownError)
    assert len(fc.requests("SubmitItems")) > 1


def test_overloaded_is_retried_after_a_backoff(fc: FakeClearing) -> None:
    fc.fail("SubmitItems", reason="OVERLOADED", code=grpc.StatusCode.RESOURCE_EXHAUSTED)
    with client(fc) as c:
        results = c.submit_items([item(1)])
    assert results[0].ok and len(fc.requests("SubmitItems")) == 2


def test_an_invalid_item_is_refused_before_sending_by_its_field(fc: FakeClearing) -> None:
    with client(fc) as c, pytest.raises(InvalidRequestError) as caught:
        c.submit_items([item(1), item(2, payer_id=-1)])
    assert [v.field for v in caught.value.field_violations] == ["items[1].payer_id"]
    assert fc.requests("SubmitItems") == []


def test_concurrent_submit_items_callers_share_requests(fc: FakeClearing) -> None:
    fc.delay_s = 0.3
    callers = 8
    barrier = threading.Barrier(callers)
    results: dict[int, list[ClearingItemResult]] = {}
    with client(fc, timeout_s=10.0, attempt_timeout_s=5.0) as c:

        def submit(k: int) -> None:
            barrier.wait()
            results[k] = c.submit_items([item(k + 1)])

        threads = [threading.Thread(target=submit, args=(k,)) for k in range(callers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sorted(r[0].id for r in results.values()) == list(range(1, callers + 1))
    assert all(r[0].ok for r in results.values())
    assert len(fc.requests("SubmitItems")) < callers


def test_lookup_items_sends_the_consistency(fc: FakeClearing) -> None:
    with client(fc) as c:
        c.submit_items([item(BIG, window=0)])
        [found] = c.lookup_items([BIG, 5], consistency=ReadConsistency.STALE)
    assert found.id == BIG and found.window == 3 and found.payer_id == PAYER
    assert fc.requests("LookupItems")[0].consistency == ReadConsistency.STALE


def test_a_node_that_is_down_is_skipped(fc: FakeClearing) -> None:
    fc.servers["node1"].stop(0).wait()
    with client(fc, timeout_s=5.0) as c:
        for k in range(4):  # whichever node each call starts with
            assert c.submit_items([item(k + 1)])[0].ok


# --------------------------------------------------------------------------- windows


def test_get_window_zero_asks_for_the_open_window(fc: FakeClearing) -> None:
    fc.windows[(1, 3)] = _model.window_to_proto(Window(1, 3, nets=[NetPosition(PAYER, 5, 0, 1, 0, 5)]))
    with client(fc) as c:
        w = c.get_window(1, bilateral=True)
    req = fc.requests("GetWindow")[0]
    assert (req.ledger, req.number, req.bilateral) == (1, 0, True)
    assert (w.number, w.state, w.nets) == (3, WindowState.OPEN, [NetPosition(PAYER, 5, 0, 1, 0, 5)])


def test_close_window_zero_closes_the_open_window_by_its_number(fc: FakeClearing) -> None:
    with client(fc) as c:
        step = c.close_window(1)
    assert [r.number for r in fc.requests("CloseWindow")] == [3]
    assert step.ok and step.window.number == 3


def test_close_window_retries_a_lost_answer_without_closing_the_next_window(fc: FakeClearing) -> None:
    fc.fail("CloseWindow", reason="OUTCOME_UNKNOWN", apply=True)
    with client(fc) as c:
        step = c.close_window(1)
    assert [r.number for r in fc.requests("CloseWindow")] == [3, 3]
    assert step.result == WindowResultCode.ok
    assert fc.open_window[1] == 4


def test_close_window_without_a_known_open_window_is_not_retried_after_a_lost_answer(fc: FakeClearing) -> None:
    fc.fail("CloseWindow", reason="OUTCOME_UNKNOWN", apply=True)
    with client(fc) as c, pytest.raises(OutcomeUnknownError):
        c.close_window(9)  # the fake knows no window of ledger 9: GetWindow answers NOT_FOUND
    assert [r.number for r in fc.requests("CloseWindow")] == [0]


def test_settle_window_with_insufficient_funds_carries_the_shortfalls(fc: FakeClearing) -> None:
    fc.steps["SettleWindow"] = clearing_pb2.WindowStepResponse(
        result=clearing_pb2.WINDOW_RESULT_INSUFFICIENT_FUNDS,
        window=clearing_pb2.Window(ledger=1, number=2, state=clearing_pb2.WINDOW_STATE_CLOSED, failure="short"),
        shortfalls=[_model.shortfall_to_proto(Shortfall(PAYER, 500, 200, 300))],
    )
    with client(fc) as c:
        step = c.settle_window(1, 2)
    assert step.result == WindowResultCode.insufficient_funds and not step.ok
    assert step.shortfalls == [Shortfall(PAYER, 500, 200, 300)]
    assert (step.window.state, step.window.failure) == (WindowState.CLOSED, "short")


def test_a_window_step_whose_outcome_stays_unknown_raises_outcome_unknown(fc: FakeClearing) -> None:
    fc.fail("SettleWindow", reason="OUTCOME_UNKNOWN", times=-1)
    with client(fc, timeout_s=0.6) as c, pytest.raises(OutcomeUnknownError):
        c.settle_window(1, 2)


def test_a_window_step_refused_before_applying_raises_unavailable(fc: FakeClearing) -> None:
    fc.fail("SettleWindow", reason="NO_LEADER", times=-1)
    with client(fc, timeout_s=0.6) as c, pytest.raises(UnavailableError) as caught:
        c.settle_window(1, 2)
    assert not isinstance(caught.value, OutcomeUnknownError)


@pytest.mark.parametrize("step", [lambda c: c.settle_window(1, 0), lambda c: c.unwind_participant(1, 0, PAYER)],
                         ids=["settle", "unwind"])
def test_settle_and_unwind_of_window_zero_are_refused_before_sending(fc: FakeClearing, step: Any) -> None:
    with client(fc) as c, pytest.raises(InvalidRequestError) as caught:
        step(c)
    assert [v.field for v in caught.value.field_violations] == ["number"]
    assert fc.requests("SettleWindow") == fc.requests("UnwindParticipant") == []


def test_abort_window_sends_the_window_and_answers_its_step(fc: FakeClearing) -> None:
    fc.steps["AbortWindow"] = clearing_pb2.WindowStepResponse(
        result=clearing_pb2.WINDOW_RESULT_OK,
        window=clearing_pb2.Window(ledger=1, number=2, state=clearing_pb2.WINDOW_STATE_ABORTED, aborted_at=77))
    with client(fc) as c:
        step = c.abort_window(1, 2)
    assert step.ok and step.window.state == WindowState.ABORTED and step.window.aborted_at == 77
    [req] = fc.requests("AbortWindow")
    assert (req.ledger, req.number) == (1, 2)


def test_abort_window_again_answers_already_aborted(fc: FakeClearing) -> None:
    fc.steps["AbortWindow"] = clearing_pb2.WindowStepResponse(result=clearing_pb2.WINDOW_RESULT_WINDOW_ALREADY_ABORTED)
    with client(fc) as c:
        assert c.abort_window(1, 2).result == WindowResultCode.window_already_aborted


def test_abort_window_refused_by_its_state_raises_failed_precondition_at_once(fc: FakeClearing) -> None:
    fc.fail("AbortWindow", code=grpc.StatusCode.FAILED_PRECONDITION, times=-1)
    with client(fc) as c, pytest.raises(TidebankError) as caught:
        c.abort_window(1, 2)
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert len(fc.requests("AbortWindow")) == 1


def test_abort_window_whose_answer_was_lost_is_retried(fc: FakeClearing) -> None:
    fc.fail("AbortWindow", reason="OUTCOME_UNKNOWN", apply=True)
    with client(fc) as c:
        assert c.abort_window(1, 2).ok
    assert len(fc.requests("AbortWindow")) == 2


def test_abort_of_window_zero_is_refused_before_sending(fc: FakeClearing) -> None:
    with client(fc) as c, pytest.raises(InvalidRequestError) as caught:
        c.abort_window(1, 0)
    assert [v.field for v in caught.value.field_violations] == ["number"]
    assert fc.requests("AbortWindow") == []


def test_unwind_participant_sends_the_participant(fc: FakeClearing) -> None:
    with client(fc) as c:
        c.unwind_participant(1, 2, BIG)
    req = fc.requests("UnwindParticipant")[0]
    assert (req.ledger, req.number, _u128(req.participant_id)) == (1, 2, BIG)


def test_list_windows_sends_after_and_limit(fc: FakeClearing) -> None:
    with client(fc) as c:
        windows = c.list_windows(1, after=1, limit=5)
    req = fc.requests("ListWindows")[0]
    assert (req.ledger, req.after, req.limit) == (1, 1, 5)
    assert [(w.number, w.state) for w in windows] == [(2, WindowState.CLOSED), (3, WindowState.OPEN)]


def test_a_window_argument_out_of_range_is_refused_before_sending(fc: FakeClearing) -> None:
    with client(fc) as c, pytest.raises(InvalidRequestError) as caught:
        c.get_window(-1)
    assert [v.field for v in caught.value.field_violations] == ["ledger"]
    assert fc.requests("GetWindow") == []


# --------------------------------------------------------------------------- statements


def test_export_statement_streams_the_items_then_the_statement(fc: FakeClearing) -> None:
    fc.statement_items = statement_items(2500)
    fc.statement = clearing_pb2.Statement(ledger=1, window=1, items=2500, sha256="cd" * 32)
    with client(fc) as c, c.export_statement(1, 1, PAYER) as export:
        ids = [i.id for i in export]
        statement = export.statement
    assert ids == list(range(1, 2501))
    assert (statement.items, statement.sha256) == (2500, "cd" * 32)
    req = fc.requests("ExportStatement")[0]
    assert (req.ledger, req.number, _u128(req.participant_id), req.include_unwound) == (1, 1, PAYER, False)


def test_export_statement_sends_nothing_until_iterated(fc: FakeClearing) -> None:
    with client(fc) as c:
        export = c.export_statement(1, 1, PAYER)
        assert fc.requests("ExportStatement") == []
        list(export)
    assert len(fc.requests("ExportStatement")) == 1


def test_the_statement_is_not_known_before_the_last_item(fc: FakeClearing) -> None:
    fc.statement_items = statement_items(3)
    with client(fc) as c, c.export_statement(1, 1, PAYER) as export:
        next(iter(export))
        with pytest.raises(RuntimeError):
            _ = export.statement


def test_export_statement_hands_out_items_before_the_stream_ends(fc: FakeClearing) -> None:
    fc.statement_items = statement_items(30)
    fc.chunk_size = 10
    seen_first = threading.Event()

    def wait_for_the_consumer(n: int, context: Any) -> None:
        if not seen_first.wait(5.0):
            _abort(context, grpc.StatusCode.INTERNAL, "the consumer never got the first chunk")

    fc.between_chunks = wait_for_the_consumer
    with client(fc, timeout_s=10.0) as c, c.export_statement(1, 1, PAYER) as export:
        items = iter(export)
        first = next(items)
        seen_first.set()
        rest = list(items)
    assert [first.id, *(i.id for i in rest)] == list(range(1, 31))


def test_leaving_an_export_early_cancels_the_stream(fc: FakeClearing) -> None:
    fc.statement_items = statement_items(30)
    fc.chunk_size = 10
    streaming, cancelled = threading.Event(), threading.Event()

    def watch(n: int, context: Any) -> None:
        streaming.set()
        deadline = time.monotonic() + 5.0
        while context.is_active() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not context.is_active():
            cancelled.set()

    fc.between_chunks = watch
    with client(fc, timeout_s=10.0) as c:
        with c.export_statement(1, 1, PAYER) as export:
            next(iter(export))
            assert streaming.wait(5.0)  # the server sent the first chunk and waits to send the next
        assert cancelled.wait(5.0)


def test_export_statement_retries_a_failure_before_the_first_item(fc: FakeClearing) -> None:
    fc.statement_items = statement_items(3)
    fc.fail("ExportStatement", reason="NOT_LEADER")
    with client(fc) as c, c.export_statement(1, 1, PAYER) as export:
        assert [i.id for i in export] == [1, 2, 3]
    assert len(fc.requests("ExportStatement")) == 2


def _digest(items: list[clearing_pb2.ClearingItem]) -> str:
    """The statement's digest over the accepted items, as the node computes it."""
    lines = "".join(f"{_u128(i.id)},{_u128(i.payer_id)},{_u128(i.payee_id)},{i.amount}\n" for i in items
                    if i.status == clearing_pb2.CLEARING_ITEM_STATUS_ACCEPTED)
    return hashlib.sha256(lines.encode()).hexdigest()


def test_an_export_broken_after_its_first_items_resumes_after_the_last_one(fc: FakeClearing) -> None:
    fc.statement_items = statement_items(30)
    fc.statement = clearing_pb2.Statement(items=30, sha256=_digest(fc.statement_items))
    fc.chunk_size = 10
    fc.break_after_chunks = 1
    with client(fc) as c, c.export_statement(1, 1, PAYER) as export:
        got = [i.id for i in export]
        statement = export.statement
    assert got == list(range(1, 31))
    assert statement.items == 30
    first, second = fc.requests("ExportStatement")
    assert (_u128(first.after_item_id), _u128(second.after_item_id)) == (0, 10)


def test_an_export_is_resumed_as_often_as_it_breaks_within_its_deadline(fc: FakeClearing) -> None:
    fc.statement_items = statement_items(30)
    fc.statement = clearing_pb2.Statement(items=30, sha256=_digest(fc.statement_items))
    fc.chunk_size = 10
    fc.break_after_chunks, fc.breaks = 1, 2
    with client(fc) as c, c.export_statement(1, 1, PAYER) as export:
        assert [i.id for i in export] == list(range(1, 31))
    assert [_u128(r.after_item_id) for r in fc.requests("ExportStatement")] == [0, 10, 20]


def test_a_resumed_export_whose_window_changed_meanwhile_raises(fc: FakeClearing) -> None:
    fc.statement_items = statement_items(30)
    changed = list(fc.statement_items)
    changed[3] = _model.clearing_item_record_to_proto(item(4, window=1, status=ClearingItemStatus.UNWOUND))
    fc.statement = clearing_pb2.Statement(items=29, sha256=_digest(changed))  # item 4 unwound after it was sent
    fc.chunk_size = 10
    fc.break_after_chunks = 1
    with client(fc) as c, c.export_statement(1, 1, PAYER) as export, pytest.raises(TidebankError) as caught:
        list(export)
    assert "the window changed" in str(caught.value)


def test_an_export_that_keeps_breaking_gives_up_at_its_deadline_handing_out_nothing_twice(fc: FakeClearing) -> None:
    fc.statement_items = statement_items(10_000)
    fc.chunk_size = 1  # every stream hands out one item, then breaks
    fc.break_after_chunks, fc.breaks = 1, 10**6
    got: list[int] = []
    with client(fc) as c, c.export_statement(1, 1, PAYER, timeout_s=1.0) as export, \
            pytest.raises(UnavailableError):
        got.extend(i.id for i in export)
    assert got == list(range(1, len(got) + 1))


def test_export_statement_refuses_a_bad_participant_id_at_once(fc: FakeClearing) -> None:
    with client(fc) as c, pytest.raises(InvalidRequestError):
        c.export_statement(1, 1, U128_MAX + 1)


# --------------------------------------------------------------------------- AsyncClient


def test_async_submit_items_above_the_batch_limit_go_in_several_requests_in_order(fc: FakeClearing) -> None:
    n = BATCH_ITEMS_MAX + 3

    async def body(c: AsyncClient) -> list[ClearingItemResult]:
        return await c.submit_items([item(i + 1) for i in range(n)])

    results = run_async(fc, body, timeout_s=20.0, attempt_timeout_s=10.0)
    assert [len(r.items) for r in fc.requests("SubmitItems")] == [BATCH_ITEMS_MAX, 3]
    assert [r.id for r in results] == list(range(1, n + 1)) and all(r.ok for r in results)


def test_async_submit_items_retries_not_leader_with_the_same_request(fc: FakeClearing) -> None:
    fc.fail("SubmitItems", reason="NOT_LEADER")

    async def body(c: AsyncClient) -> list[ClearingItemResult]:
        return await c.submit_items([item(1)])

    assert run_async(fc, body)[0].status == ClearingItemResultCode.ok
    first, second = fc.requests("SubmitItems")
    assert first.SerializeToString() == second.SerializeToString()


def test_async_outcome_unknown_raises_outcome_unknown(fc: FakeClearing) -> None:
    fc.fail("SettleWindow", reason="OUTCOME_UNKNOWN", times=-1)

    async def body(c: AsyncClient) -> WindowStep:
        return await c.settle_window(1, 2)

    with pytest.raises(OutcomeUnknownError):
        run_async(fc, body, timeout_s=0.6)


def test_async_close_window_zero_closes_the_open_window_by_its_number(fc: FakeClearing) -> None:
    async def body(c: AsyncClient) -> WindowStep:
        return await c.close_window(1)

    assert run_async(fc, body).window.number == 3
    assert [r.number for r in fc.requests("CloseWindow")] == [3]


def test_async_lookup_participants_returns_the_found_ones(fc: FakeClearing) -> None:
    fc.participants[PAYER] = _model.participant_record_to_proto(participant(PAYER, position=-1))

    async def body(c: AsyncClient) -> list[Participant]:
        return await c.lookup_participants([7, PAYER])

    assert [(p.id, p.position) for p in run_async(fc, body)] == [(PAYER, -1)]


def test_async_export_statement_streams_the_items_then_the_statement(fc: FakeClearing) -> None:
    fc.statement_items = statement_items(25)
    fc.chunk_size = 10
    fc.statement = clearing_pb2.Statement(items=25)

    async def body(c: AsyncClient) -> tuple[list[int], Statement]:
        async with c.export_statement(1, 1, PAYER) as export:
            ids = [i.id async for i in export]
            return ids, export.statement

    ids, statement = run_async(fc, body)
    assert ids == list(range(1, 26)) and statement.items == 25


def test_async_export_broken_after_its_first_items_resumes_after_the_last_one(fc: FakeClearing) -> None:
    fc.statement_items = statement_items(30)
    fc.chunk_size = 10
    fc.break_after_chunks = 2
    fc.statement = clearing_pb2.Statement(items=30, sha256=_digest(fc.statement_items))
    got: list[int] = []

    async def body(c: AsyncClient) -> None:
        async with c.export_statement(1, 1, PAYER) as export:
            async for i in export:
                got.append(i.id)

    run_async(fc, body)
    assert got == list(range(1, 31))
    assert [_u128(r.after_item_id) for r in fc.requests("ExportStatement")] == [0, 20]

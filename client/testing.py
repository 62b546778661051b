"""An in-process fake tidebank cluster, for unit tests of the client and of code using it.

It is *not* a ledger: no balances, no rules. Each fake node is a real gRPC server
on 127.0.0.1 (port 0) serving Ledger, Escrow and Admin; all nodes share one state.
It stores accounts and transfers (answering ``created`` / ``exists``), honours linked
chains, records every call, and can be told to misbehave:

    with FakeCluster(nodes=3, shards=2) as fc:
        fc.fail("CreateTransfers", reason="NO_LEADER", times=2)   # then succeed
        fc.set_leader(0, "node2", in_map=False)                    # the map is stale
        fc.results[some_id] = CreateTransferResult.exceeds_credits  # scripted outcome
        with Client(fc.addresses, tls=fc.tls) as c: ...

Escrow: CreateTrades stores trades (``ok``, ``exists`` for a known id); the action
RPCs answer ``trade_not_found`` for an unknown trade, ``exists`` for a step applied
before (same trade, and same refund / extension id), else ``ok`` with a token state
change (no money rules, no timers). ``fc.trade_results[trade_id]`` (or
``[(method, trade_id)]``) scripts the answer: a TradeResultCode, or a pair
(TradeResultCode.transfer_failed, CreateTransferResult.x); a scripted item changes
nothing. LookupTrades serves the stored trades; ListTrades pages over them by buyer
or seller, oldest first, at any node (the real one gathers from every shard).

Like the real server it refuses requests for shards a node does not lead with
UNAVAILABLE + ErrorInfo NOT_LEADER (leader_address when ``hint``), or NO_LEADER;
unlike it, it also refuses a request mixing several shards (INVALID_ARGUMENT),
so that tests see a client that routes badly. Items whose user_data_32 equals
``INVALID_MARK`` (accounts, transfers, trades to create) are refused with
INVALID_ARGUMENT and a BadRequest field violation.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from tidebank.common.keys import DEFAULT_SLOT_COUNT, slot_of
from tidebank.common.records import ACCOUNT_STRUCT, M64, TRANSFER_STRUCT
from tidebank.common.tls import Plaintext
from tidebank.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    escrow_pb2,
    escrow_pb2_grpc,
    ledger_pb2,
    ledger_pb2_grpc,
    types_pb2,
)

INVALID_MARK = 0xBAD


def _u128_pb(message: Any, value: int) -> None:
    message.hi, message.lo = value >> 64, value & M64


def _accounts_of_records(raw: bytes) -> list[Any]:
    """accounts_packed as the Account messages they stand for (the fake then treats both fields alike)."""
    out = []
    for v in ACCOUNT_STRUCT.iter_unpack(raw):
        m = types_pb2.Account(debits_pending=v[2], debits_posted=v[3], credits_pending=v[4], credits_posted=v[5],
                              user_data_64=v[8], user_data_32=v[9], ledger=v[10], code=v[11], flags=v[12],
                              timestamp=v[13])
        _u128_pb(m.id, v[0] | v[1] << 64)
        _u128_pb(m.user_data_128, v[6] | v[7] << 64)
        out.append(m)
    return out


def _transfers_of_records(raw: bytes) -> list[Any]:
    """transfers_packed as the Transfer messages they stand for."""
    out = []
    for v in TRANSFER_STRUCT.iter_unpack(raw):
        m = types_pb2.Transfer(amount=v[6], user_data_64=v[11], user_data_32=v[12], timeout=v[13], ledger=v[14],
                               code=v[15], flags=v[16], timestamp=v[17])
        _u128_pb(m.id, v[0] | v[1] << 64)
        _u128_pb(m.debit_account_id, v[2] | v[3] << 64)
        _u128_pb(m.credit_account_id, v[4] | v[5] << 64)
        _u128_pb(m.pending_id, v[7] | v[8] << 64)
        _u128_pb(m.user_data_128, v[9] | v[10] << 64)
        out.append(m)
    return out

_ACCOUNT_EXISTS = types_pb2.CREATE_ACCOUNT_RESULT_EXISTS
_TRANSFER_EXISTS = types_pb2.CREATE_TRANSFER_RESULT_EXISTS
_OK_CODES = {0, _ACCOUNT_EXISTS, _TRANSFER_EXISTS}  # created is 0 in both enums


def _u128(m: Any) -> int:
    return (m.hi << 64) | m.lo


@dataclass
class RecordedCall:
    node: str
    method: str
    shard_ids: list[int]
    ids: list[int]  # item ids (writes) or looked-up ids / the account id (reads)
    flags: list[int] = field(default_factory=list)
    outcome: str = "OK"  # or the status code name it failed with


@dataclass
class Fault:
    method: str | None
    node: str | None
    times: int  # attempts left to hit; < 0 means forever
    code: grpc.StatusCode | None
    reason: str
    metadata: dict[str, str]
    message: str
    delay_s: float
    apply: bool
    violations: list[tuple[str, str]]


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str, **kw: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.kw = kw


def rich_status(
    code: grpc.StatusCode,
    message: str,
    *,
    reason: str = "",
    metadata: dict[str, str] | None = None,
    violations: Iterable[tuple[str, str]] = (),
) -> grpc.Status:
    """A grpc.Status with google.rpc details, as tidebank nodes send them."""
    st = status_pb2.Status(code=code.value[0], message=message)
    if reason:
        st.details.add().Pack(error_details_pb2.ErrorInfo(reason=reason, domain="tidebank.v1", metadata=metadata or {}))
    vs = list(violations)
    if vs:
        br = error_details_pb2.BadRequest(
            field_violations=[error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in vs]
        )
        st.details.add().Pack(br)
    return rpc_status.to_status(st)


class FakeCluster:
    def __init__(
        self,
        nodes: int = 3,
        shards: int = 2,
        slot_count: int = DEFAULT_SLOT_COUNT,
        *,
        workers: int = 32,
        start: bool = True,
    ) -> None:
        self.lock = threading.RLock()
        self.tls = Plaintext()  # an in-process fake: no TLS (Client(fc.addresses, tls=fc.tls))
        self.slot_count = slot_count
        self.node_names = [f"node{i + 1}" for i in range(nodes)]
        self.dcs = {n: f"dc{i + 1}" for i, n in enumerate(self.node_names)}
        self.shard_ids = list(range(shards))
        per = slot_count // shards
        self.slots = {s: (s * per, slot_count if s == shards - 1 else (s + 1) * per) for s in self.shard_ids}
        self.leaders: dict[int, str | None] = {s: self.node_names[s % nodes] for s in self.shard_ids}
        self.map_leaders: dict[int, str | None] = dict(self.leaders)
        self.map_version = 1
        self.hint = True  # NOT_LEADER carries leader_address
        self.forward = False  # non-leaders forward instead of refusing
        self.delay_s = 0.0  # every ledger call sleeps this long (lets concurrent callers pile up)
        self.calls: list[RecordedCall] = []
        self.faults: list[Fault] = []
        self.results: dict[int, int] = {}  # scripted result code per item id
        self.accounts: dict[int, types_pb2.Account] = {}
        self.transfers: dict[int, types_pb2.Transfer] = {}
        self.trades: dict[int, escrow_pb2.Trade] = {}
        # scripted escrow answer per trade id or (method, trade id): a code, or (code, CreateTransferResult)
        self.trade_results: dict[int | tuple[str, int], int | tuple[int, int]] = {}
        self._steps: set[tuple[str, int, int]] = set()  # applied escrow steps, so a repeat answers exists
        self._clock = 1_000_000_000
        self.addresses: list[str] = []
        self.address_of: dict[str, str] = {}
        self._servers: dict[str, grpc.Server] = {}
        self._workers = workers
        if start:
            self.start()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        for name in self.node_names:
            server = grpc.server(
                futures.ThreadPoolExecutor(max_workers=self._workers),
                options=[("grpc.so_reuseport", 0)],
            )
            ledger_pb2_grpc.add_LedgerServicer_to_server(_Ledger(self, name), server)
            admin_pb2_grpc.add_AdminServicer_to_server(_Admin(self, name), server)
            escrow_pb2_grpc.add_EscrowServicer_to_server(_Escrow(self, name), server)
            port = server.add_insecure_port("127.0.0.1:0")
            server.start()
            self._servers[name] = server
            self.address_of[name] = f"127.0.0.1:{port}"
        self.addresses = [self.address_of[n] for n in self.node_names]

    def stop_node(self, name: str) -> None:
        """Stop one node: its address then refuses connections."""
        server = self._servers.pop(name, None)
        if server is not None:
            server.stop(0).wait()

    def stop(self) -> None:
        for name in list(self._servers):
            self.stop_node(name)

    def __enter__(self) -> FakeCluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ control

    def shard_of(self, key_id: int) -> int:
        slot = slot_of(key_id, self.slot_count)
        for sid, (start, end) in self.slots.items():
            if start <= slot < end:
                return sid
        raise KeyError(slot)

    def ids_on_shard(self, shard_id: int, count: int, start: int = 1) -> list[int]:
        """``count`` ids (from ``start`` up) that live on ``shard_id``."""
        out = []
        i = start
        while len(out) < count:
            if self.shard_of(i) == shard_id:
                out.append(i)
            i += 1
        return out

    def set_leader(self, shard_id: int, node: str | None, *, in_map: bool = True) -> None:
        with self.lock:
            self.leaders[shard_id] = node
            if in_map:
                self.map_leaders[shard_id] = node
                self.map_version += 1

    def fail(
        self,
        method: str | None = None,
        *,
        node: str | None = None,
        times: int = 1,
        code: grpc.StatusCode | None = grpc.StatusCode.UNAVAILABLE,
        reason: str = "",
        metadata: dict[str, str] | None = None,
        message: str = "",
        delay_s: float = 0.0,
        apply: bool = False,
        violations: Iterable[tuple[str, str]] = (),
    ) -> Fault:
        """The next ``times`` calls of ``method`` (any Ledger or Escrow method if None) at ``node``
        (any if None) sleep ``delay_s``, then fail with ``code`` (after applying the
        request if ``apply``: an answer lost on the way back). code=None: only delay."""
        f = Fault(
            method, node, times, code, reason, dict(metadata or {}), message or (reason or "injected fault"),
            delay_s, apply, list(violations),
        )  # fmt: skip
        with self.lock:
            self.faults.append(f)
        return f

    def clear_faults(self) -> None:
        with self.lock:
            self.faults.clear()

    def ledger_calls(self, method: str | None = None, *, ok: bool | None = None) -> list[RecordedCall]:
        """The recorded calls (Ledger, Escrow and GetShardMap), optionally of one method / outcome."""
        with self.lock:
            return [
                c
                for c in self.calls
                if (method is None or c.method == method) and (ok is None or (c.outcome == "OK") == ok)
            ]

    # ------------------------------------------------------------------ internals

    def _take_fault(self, method: str, node: str) -> Fault | None:
        with self.lock:
            for f in self.faults:
                if f.times == 0:
                    continue
                if f.method is not None and f.method != method:
                    continue
                if f.method is None and method == "GetShardMap":
                    continue
                if f.node is not None and f.node != node:
                    continue
                if f.times > 0:
                    f.times -= 1
                return f
        return None

    def map_proto(self) -> admin_pb2.ShardMap:
        with self.lock:
            m = admin_pb2.ShardMap(version=self.map_version, slot_count=self.slot_count)
            for sid in self.shard_ids:
                s = m.shards.add(shard_id=sid, leader_node=self.map_leaders[sid] or "")
                start, end = self.slots[sid]
                s.slots.add(start=start, end=end)
                for n in self.node_names:
                    s.replicas.add(node=n, dc=self.dcs[n], address=self.address_of.get(n, ""))
            return m

    def _enter(
        self, node: str, method: str, keys: list[int], ids: list[int], flags: list[int], *, leader: bool = True
    ) -> tuple[RecordedCall, Fault | None, int]:
        """Common prologue: record, faults, routing. Returns (record, fault to apply after, shard)."""
        # A linked chain belongs to the shard of its first item (a real node answers
        # per item for chain members on other shards; this fake just accepts them).
        heads = [k for i, k in enumerate(keys) if i == 0 or not (flags and flags[i - 1] & 1)]
        shard_ids = sorted({self.shard_of(k) for k in heads})
        rec = RecordedCall(node, method, shard_ids, ids, flags)
        _current.rec = rec
        with self.lock:
            self.calls.append(rec)
        if self.delay_s:
            time.sleep(self.delay_s)
        fault = self._take_fault(method, node)
        if fault is not None:
            if fault.delay_s:
                time.sleep(fault.delay_s)
            if fault.code is not None and not fault.apply:
                raise _Abort(
                    fault.code, fault.message, reason=fault.reason, metadata=fault.metadata, violations=fault.violations
                )
        if not keys:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "empty request")
        if len(shard_ids) > 1:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"request spans shards {shard_ids} (fake refuses)")
        sid = shard_ids[0]
        if leader:
            with self.lock:
                lead = self.leaders[sid]
            if lead is None:
                raise _Abort(
                    grpc.StatusCode.UNAVAILABLE, f"shard {sid} has no leader", reason="NO_LEADER",
                    metadata={"shard_id": str(sid)},
                )  # fmt: skip
            if lead != node and not self.forward:
                md = {"shard_id": str(sid)}
                if self.hint:
                    md["leader_address"] = self.address_of.get(lead, "")
                raise _Abort(
                    grpc.StatusCode.UNAVAILABLE, f"{node} does not lead shard {sid}", reason="NOT_LEADER", metadata=md
                )
        return rec, (fault if fault is not None and fault.code is not None and fault.apply else None), sid

    def _apply(self, items: list[Any], store: dict[int, Any], exists_code: int) -> list[int]:
        codes: list[int] = []
        with self.lock:
            start = 0
            for i, item in enumerate(items):
                if item.flags & 1 and i < len(items) - 1:
                    continue
                chain = items[start : i + 1]
                if chain[-1].flags & 1:  # chain left open at the end of the batch
                    codes.extend([2] * len(chain))
                else:
                    tentative = []
                    for it in chain:
                        iid = _u128(it.id)
                        if iid in self.results:
                            tentative.append(self.results[iid])
                        elif iid in store:
                            tentative.append(exists_code)
                        else:
                            tentative.append(0)
                    bad = [k for k, c in enumerate(tentative) if c not in _OK_CODES]
                    if bad and len(chain) > 1:
                        codes.extend(tentative[k] if k == bad[0] else 1 for k in range(len(chain)))
                    else:
                        codes.extend(tentative)
                        for it, c in zip(chain, tentative, strict=True):
                            if c == 0:
                                copy = type(it)()
                                copy.CopyFrom(it)
                                self._clock += 1000
                                copy.timestamp = self._clock
                                store[_u128(it.id)] = copy
                start = i + 1
        return codes

    def _scripted_trade_result(self, method: str, trade_id: int) -> escrow_pb2.TradeResult | None:
        scripted = self.trade_results.get((method, trade_id), self.trade_results.get(trade_id))
        if scripted is None:
            return None
        code, transfer = scripted if isinstance(scripted, tuple) else (scripted, 0)
        return escrow_pb2.TradeResult(code=code, transfer_result=transfer)

    def _create_trade(self, c: escrow_pb2.CreateTrade) -> escrow_pb2.TradeResult:
        trade_id = _u128(c.id)
        with self.lock:
            scripted = self._scripted_trade_result("CreateTrades", trade_id)
            if scripted is not None:
                return scripted
            if trade_id in self.trades:
                return escrow_pb2.TradeResult(code=escrow_pb2.TRADE_RESULT_EXISTS)
            t = escrow_pb2.Trade.FromString(c.SerializeToString())  # fields 1..11 are CreateTrade's, by design
            self._clock += 1000
            t.created_at = self._clock
            t.state = escrow_pb2.TRADE_STATE_PAID
            t.held = t.amount
            t.timer = escrow_pb2.TRADE_TIMER_SHIP_BY
            t.deadline = t.created_at + t.ship_by_timeout_s * 1_000_000_000
            t.version = 1
            self.trades[trade_id] = t
            return escrow_pb2.TradeResult()

    def _trade_step(self, method: str, trade_id: int, step_id: int, change: Any) -> escrow_pb2.TradeResult:
        """An action on a stored trade: scripted, not found, a repeat (exists), or applied (ok)."""
        with self.lock:
            scripted = self._scripted_trade_result(method, trade_id)
            if scripted is not None:
                return scripted
            t = self.trades.get(trade_id)
            if t is None:
                return escrow_pb2.TradeResult(code=escrow_pb2.TRADE_RESULT_TRADE_NOT_FOUND)
            if (method, trade_id, step_id) in self._steps:
                return escrow_pb2.TradeResult(code=escrow_pb2.TRADE_RESULT_EXISTS)
            self._steps.add((method, trade_id, step_id))
            self._clock += 1000
            change(t, self._clock)
            t.version += 1
            return escrow_pb2.TradeResult()


_current = threading.local()  # the RecordedCall of the request this server thread handles


def _guard(fn: Any) -> Any:
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        _current.rec = None
        try:
            return fn(self, request, context)
        except _Abort as a:
            rec = _current.rec
            if rec is not None:
                rec.outcome = a.code.name
            context.abort_with_status(rich_status(a.code, a.message, **a.kw))
        finally:
            _current.rec = None

    wrapper.__name__ = fn.__name__
    return wrapper


def _refuse_marked(items: list[Any], name: str) -> None:
    bad = [
        (f"{name}[{k}].user_data_32", "marked invalid") for k, it in enumerate(items) if it.user_data_32 == INVALID_MARK
    ]
    if bad:
        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid {name}", violations=bad)


class _Ledger(ledger_pb2_grpc.LedgerServicer):
    def __init__(self, fc: FakeCluster, node: str) -> None:
        self.fc = fc
        self.node = node

    def _invalid_marks(self, items: list[Any], name: str) -> None:
        _refuse_marked(items, name)

    @_guard
    def CreateAccounts(self, request: Any, context: Any) -> Any:  # noqa: N802
        items = list(request.accounts) or _accounts_of_records(request.accounts_packed)
        ids = [_u128(a.id) for a in items]
        _, after, _ = self.fc._enter(self.node, "CreateAccounts", ids, ids, [a.flags for a in items])
        self._invalid_marks(items, "accounts")
        codes = self.fc._apply(items, self.fc.accounts, _ACCOUNT_EXISTS)
        if after is not None:
            raise _Abort(after.code, after.message, reason=after.reason, metadata=after.metadata)
        return ledger_pb2.CreateAccountsResponse(results=codes)

    @_guard
    def CreateTransfers(self, request: Any, context: Any) -> Any:  # noqa: N802
        items = list(request.transfers) or _transfers_of_records(request.transfers_packed)
        keys = [_u128(t.debit_account_id) for t in items]
        ids = [_u128(t.id) for t in items]
        _, after, _ = self.fc._enter(self.node, "CreateTransfers", keys, ids, [t.flags for t in items])
        self._invalid_marks(items, "transfers")
        codes = self.fc._apply(items, self.fc.transfers, _TRANSFER_EXISTS)
        if after is not None:
            raise _Abort(after.code, after.message, reason=after.reason, metadata=after.metadata)
        return ledger_pb2.CreateTransfersResponse(results=codes)

    def _lookup(self, method: str, request: Any, store: dict[int, Any]) -> list[Any]:
        ids = [_u128(i) for i in request.ids]
        leader = request.consistency == ledger_pb2.READ_CONSISTENCY_LINEARIZABLE
        self.fc._enter(self.node, method, ids, ids, [], leader=leader)
        with self.fc.lock:
            return [store[i] for i in ids if i in store]

    @_guard
    def LookupAccounts(self, request: Any, context: Any) -> Any:  # noqa: N802
        return ledger_pb2.LookupAccountsResponse(accounts=self._lookup("LookupAccounts", request, self.fc.accounts))

    @_guard
    def LookupTransfers(self, request: Any, context: Any) -> Any:  # noqa: N802
        return ledger_pb2.LookupTransfersResponse(transfers=self._lookup("LookupTransfers", request, self.fc.transfers))

    @_guard
    def GetAccountTransfers(self, request: Any, context: Any) -> Any:  # noqa: N802
        acct = _u128(request.account_id)
        leader = request.consistency == ledger_pb2.READ_CONSISTENCY_LINEARIZABLE
        self.fc._enter(self.node, "GetAccountTransfers", [acct], [acct], [], leader=leader)
        debits, credits = request.debits, request.credits
        if not debits and not credits:
            debits = credits = True
        with self.fc.lock:
            rows = [
                t
                for t in self.fc.transfers.values()
                if (debits and _u128(t.debit_account_id) == acct) or (credits and _u128(t.credit_account_id) == acct)
            ]
        rows = [
            t
            for t in rows
            if t.timestamp >= request.timestamp_min
            and (not request.timestamp_max or t.timestamp <= request.timestamp_max)
        ]
        rows.sort(key=lambda t: t.timestamp, reverse=request.reversed)
        offset = int(request.page_token or 0)
        limit = request.limit or 100
        page = rows[offset : offset + limit]
        more = offset + limit < len(rows)
        return ledger_pb2.GetAccountTransfersResponse(
            transfers=page, next_page_token=str(offset + limit) if more else ""
        )


# --------------------------------------------------------------------------- escrow (token state changes only)


def _ship(t: escrow_pb2.Trade, now: int) -> None:
    t.state, t.shipped_at, t.timer = escrow_pb2.TRADE_STATE_SHIPPED, now, escrow_pb2.TRADE_TIMER_AUTO_CONFIRM


def _settle(t: escrow_pb2.Trade, now: int) -> None:
    t.state, t.closed_by, t.closed_at = escrow_pb2.TRADE_STATE_SETTLED, escrow_pb2.TRADE_CLOSED_BY_BUYER_CONFIRMED, now
    t.released, t.held, t.timer, t.deadline = t.released + t.held, 0, escrow_pb2.TRADE_TIMER_NONE, 0


def _open_dispute(t: escrow_pb2.Trade, now: int) -> None:
    t.state_before_dispute, t.state, t.dispute_opened = t.state, escrow_pb2.TRADE_STATE_DISPUTED, True


def _withdraw_dispute(t: escrow_pb2.Trade, now: int) -> None:
    t.state, t.state_before_dispute = t.state_before_dispute, escrow_pb2.TRADE_STATE_UNSPECIFIED


def _refund(r: escrow_pb2.Refund) -> Any:
    def change(t: escrow_pb2.Trade, now: int) -> None:
        t.refunds.add(refund_id=r.refund_id, amount=r.amount)
        t.refunded += r.amount
        t.held -= min(t.held, r.amount)

    return change


def _resolve(r: escrow_pb2.DisputeResolution) -> Any:
    def change(t: escrow_pb2.Trade, now: int) -> None:
        to_buyer = min(t.held, r.buyer_amount)
        t.state, t.closed_at = escrow_pb2.TRADE_STATE_CLOSED, now
        t.closed_by = escrow_pb2.TRADE_CLOSED_BY_DISPUTE_RESOLVED
        t.refunded, t.released, t.held = t.refunded + to_buyer, t.released + t.held - to_buyer, 0

    return change


def _extend(e: escrow_pb2.Extension) -> Any:
    def change(t: escrow_pb2.Trade, now: int) -> None:
        t.extensions.add(extension_id=e.extension_id, extend_by_s=e.extend_by_s)
        t.extended_s += e.extend_by_s

    return change


class _Escrow(escrow_pb2_grpc.EscrowServicer):
    def __init__(self, fc: FakeCluster, node: str) -> None:
        self.fc = fc
        self.node = node

    def _steps(self, method: str, items: list[Any], step: Any) -> escrow_pb2.TradeResultsResponse:
        """Route, record and fault like the Ledger; then one result per item from ``step(item)``."""
        ids = [_u128(it.id if method == "CreateTrades" else it.trade_id) for it in items]
        _, after, _ = self.fc._enter(self.node, method, ids, ids, [])
        if method == "CreateTrades":
            _refuse_marked(items, "trades")
        results = [step(it) for it in items]
        if after is not None:
            raise _Abort(after.code, after.message, reason=after.reason, metadata=after.metadata)
        return escrow_pb2.TradeResultsResponse(results=results)

    def _action(self, method: str, request: Any, change: Any) -> escrow_pb2.TradeResultsResponse:
        return self._steps(
            method, list(request.trades), lambda it: self.fc._trade_step(method, _u128(it.trade_id), 0, change)
        )

    @_guard
    def CreateTrades(self, request: Any, context: Any) -> Any:  # noqa: N802
        return self._steps("CreateTrades", list(request.trades), self.fc._create_trade)

    @_guard
    def ShipTrades(self, request: Any, context: Any) -> Any:  # noqa: N802
        return self._action("ShipTrades", request, _ship)

    @_guard
    def ConfirmTrades(self, request: Any, context: Any) -> Any:  # noqa: N802
        return self._action("ConfirmTrades", request, _settle)

    @_guard
    def OpenDisputes(self, request: Any, context: Any) -> Any:  # noqa: N802
        return self._action("OpenDisputes", request, _open_dispute)

    @_guard
    def WithdrawDisputes(self, request: Any, context: Any) -> Any:  # noqa: N802
        return self._action("WithdrawDisputes", request, _withdraw_dispute)

    @_guard
    def RefundTrades(self, request: Any, context: Any) -> Any:  # noqa: N802
        def step(r: Any) -> Any:
            return self.fc._trade_step("RefundTrades", _u128(r.trade_id), _u128(r.refund_id), _refund(r))

        return self._steps("RefundTrades", list(request.refunds), step)

    @_guard
    def ResolveDisputes(self, request: Any, context: Any) -> Any:  # noqa: N802
        def step(r: Any) -> Any:
            return self.fc._trade_step("ResolveDisputes", _u128(r.trade_id), 0, _resolve(r))

        return self._steps("ResolveDisputes", list(request.resolutions), step)

    @_guard
    def ExtendTrades(self, request: Any, context: Any) -> Any:  # noqa: N802
        def step(e: Any) -> Any:
            return self.fc._trade_step("ExtendTrades", _u128(e.trade_id), _u128(e.extension_id), _extend(e))

        return self._steps("ExtendTrades", list(request.extensions), step)

    @_guard
    def LookupTrades(self, request: Any, context: Any) -> Any:  # noqa: N802
        ids = [_u128(i) for i in request.ids]
        leader = request.consistency == ledger_pb2.READ_CONSISTENCY_LINEARIZABLE
        self.fc._enter(self.node, "LookupTrades", ids, ids, [], leader=leader)
        with self.fc.lock:
            return escrow_pb2.LookupTradesResponse(trades=[self.fc.trades[i] for i in ids if i in self.fc.trades])

    @_guard
    def ListTrades(self, request: Any, context: Any) -> Any:  # noqa: N802
        acct = _u128(request.account_id)
        self.fc._enter(self.node, "ListTrades", [acct], [acct], [], leader=False)
        if request.consistency == ledger_pb2.READ_CONSISTENCY_LINEARIZABLE:
            with self.fc.lock:
                leaderless = [sid for sid, lead in self.fc.leaders.items() if lead is None]
            if leaderless:
                raise _Abort(
                    grpc.StatusCode.UNAVAILABLE, f"shard {leaderless[0]} has no leader", reason="NO_LEADER",
                    metadata={"shard_id": str(leaderless[0])},
                )  # fmt: skip
        if request.role not in (escrow_pb2.TRADE_ROLE_BUYER, escrow_pb2.TRADE_ROLE_SELLER):
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "unknown role", violations=[("role", "unknown")])
        side = "buyer_account_id" if request.role == escrow_pb2.TRADE_ROLE_BUYER else "seller_account_id"
        with self.fc.lock:
            rows = [t for t in self.fc.trades.values() if _u128(getattr(t, side)) == acct]
        rows.sort(key=lambda t: (t.created_at, _u128(t.id)))
        offset = int(request.page_token or 0)
        limit = request.limit or 100
        more = offset + limit < len(rows)
        return escrow_pb2.ListTradesResponse(
            trades=rows[offset : offset + limit], next_page_token=str(offset + limit) if more else ""
        )


class _Admin(admin_pb2_grpc.AdminServicer):
    def __init__(self, fc: FakeCluster, node: str) -> None:
        self.fc = fc
        self.node = node

    def GetShardMap(self, request: Any, context: Any) -> Any:  # noqa: N802
        fault = self.fc._take_fault("GetShardMap", self.node)
        if fault is not None:
            if fault.delay_s:
                time.sleep(fault.delay_s)
            if fault.code is not None:
                context.abort_with_status(rich_status(fault.code, fault.message, reason=fault.reason))
        with self.fc.lock:
            self.fc.calls.append(RecordedCall(self.node, "GetShardMap", [], []))
        return self.fc.map_proto()

    def GetNodeStatus(self, request: Any, context: Any) -> Any:  # noqa: N802
        return admin_pb2.NodeStatus(node=self.node, dc=self.fc.dcs[self.node], address=self.fc.address_of[self.node])

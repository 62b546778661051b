"""gRPC servicers: validate, route to shard leaders, wait, translate.

Nothing about money is decided here: the state machine decides every per-item
code, the router decides placement. This module checks the request's shape,
splits it by shard, runs each part on the local leader (through its batcher) or
forwards it to the leader's node, and merges the answers in request order.
"""

from __future__ import annotations

import base64
import binascii
import logging
import struct
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

import grpc
from google.protobuf import message_factory
from google.protobuf.message import DecodeError

from tidebank.node.api import convert, errors
from tidebank.node.api.routing import CrossShardGroup, ShardMap, route_accounts, route_transfers
from tidebank.node.batcher import ApplyFailedError, NotAppliedError, OutcomeUnknownError, OverloadedError
from tidebank.node.ledger.records import BATCH_ITEMS_MAX, PAGE_SIZE_MAX
from tidebank.node.ledger.state_machine import OP_CREATE_ACCOUNTS, OP_CREATE_TRANSFERS, Operation
from tidebank.node.links import LinkFaults, LinkTable, validate_link_faults
from tidebank.node.txn.coordinator import Group, ParticipantUnavailableError
from tidebank.v1 import admin_pb2, escrow_pb2, internal_pb2, ledger_pb2, ledger_pb2_grpc, types_pb2

log = logging.getLogger(__name__)

HOPS_HEADER = "x-tidebank-hops"
SHARD_HEADER = "x-tidebank-shard"  # set on forwarded calls: the one shard the receiver must serve
HOPS_MAX = 2
WAIT_DEFAULT_S = 30.0
PAGE_SIZE_DEFAULT = 100
LINEARIZABLE = ledger_pb2.READ_CONSISTENCY_LINEARIZABLE


class NodeView:
    """What the servicers need to know about the node they run on (implemented by server.Node)."""

    shard_map: ShardMap
    coordinator = None  # runs cross-shard groups whose coordinator shard this node leads
    coordinator_pool = None  # executor for coordinator.run (and escrow.execute)
    escrow = None  # runs escrow steps on the trade shards this node leads (escrow_coordinator.EscrowCoordinator)

    def local_shard(self, shard_id: int):  # -> ShardHost | None
        raise NotImplementedError

    def leader_address(self, shard_id: int) -> str | None:
        """gRPC address of the shard's leader as seen from here."""
        raise NotImplementedError

    def replica_addresses(self, shard_id: int) -> list[str]:
        raise NotImplementedError

    def ledger_stub(self, address: str) -> ledger_pb2_grpc.LedgerStub:
        raise NotImplementedError

    def escrow_stub(self, address: str):  # -> escrow_pb2_grpc.EscrowStub
        raise NotImplementedError

    def reachable(self, address: str) -> bool:
        """Whether node-to-node traffic to `address` can pass (simulated DC faults)."""
        return True

    @property
    def address(self) -> str:
        raise NotImplementedError


@dataclass
class _Call:
    """Context shared by the parts of one request."""

    context: grpc.ServicerContext
    hops: int
    wait_s: float
    only_shard: int | None  # a forwarded call serves one shard, never scatters again


def _call(context: grpc.ServicerContext) -> _Call:
    hops, only_shard = 0, None
    for key, value in context.invocation_metadata() or ():
        try:
            if key == HOPS_HEADER:
                hops = int(value)
            elif key == SHARD_HEADER:
                only_shard = int(value)
        except ValueError:
            raise errors.invalid_argument([(key, f"not an integer: {value!r}")]) from None
    remaining = context.time_remaining()
    wait_s = WAIT_DEFAULT_S if remaining is None else max(0.0, min(remaining - 0.05, WAIT_DEFAULT_S))
    return _Call(context, hops, wait_s, only_shard)


def _chain_future(source: grpc.Future, transform: Callable) -> Future:
    target: Future = Future()

    def done(f: grpc.Future) -> None:
        try:
            target.set_result(transform(f.result()))
        except grpc.RpcError as exc:
            target.set_exception(exc)
        except Exception as exc:  # transform bug: surfaced as INTERNAL by the waiter
            target.set_exception(exc)

    source.add_done_callback(done)
    return target


def _chain_local(source: Future, transform: Callable) -> Future:
    """A future of transform(source's result); transform must be cheap: it may run on the Raft tick thread."""
    target: Future = Future()

    def done(f: Future) -> None:
        try:
            target.set_result(transform(f.result()))
        except Exception as exc:
            target.set_exception(exc)

    source.add_done_callback(done)
    return target


class ShardRouter:
    """What every public servicer does with a shard: run on its local leader, or forward once to its leader's
    node; reads after a barrier through the shard's log (linearizable) or from the local replica (stale)."""

    def __init__(self, node: NodeView):
        self.node = node

    def _stub(self, address: str):
        """The stub of this servicer's own service on another node (forwarded calls)."""
        raise NotImplementedError

    def _forward(self, call: _Call, shard_id: int, method: str, request, transform: Callable) -> Future:
        leader = self.node.leader_address(shard_id)
        if leader is None and self.node.local_shard(shard_id) is None:
            # Not hosting this shard: ask a node that does; it forwards or names the leader.
            leader = next(iter(self.node.replica_addresses(shard_id)), None)
        if leader is None or leader == self.node.address or call.hops >= HOPS_MAX:
            raise errors.not_leader(shard_id, leader if leader != self.node.address else None)
        if not self.node.reachable(leader):
            # Cut off from the leader's DC: certainly not sent; the client should go elsewhere.
            raise errors.not_leader(shard_id, None)
        stub = self._stub(leader)
        rpc = getattr(stub, method).future(request, timeout=call.wait_s,
                                           metadata=((HOPS_HEADER, str(call.hops + 1)),
                                                     (SHARD_HEADER, str(shard_id))))
        return _chain_future(rpc, transform)

    def _read(self, call: _Call, shard_id: int, consistency: int, method: str, read_local: Callable,
              forward_request, from_response: Callable) -> Future:
        """A future of a zero-argument function that produces the read's records.

        The local read itself runs in the waiting handler thread (`_wait_read`): the barrier's future is
        resolved on the Raft tick thread, which must never do LMDB reads or conversions."""
        host = self.node.local_shard(shard_id)
        if host is not None and consistency != LINEARIZABLE:
            done: Future = Future()
            done.set_result(lambda: read_local(host))
            return done
        if host is not None and host.is_leader():
            try:
                barrier = host.barrier()
            except (NotAppliedError, OverloadedError):
                pass
            else:
                return _chain_local(barrier, lambda _: (lambda: read_local(host)))
        return self._forward(call, shard_id, method, forward_request,
                             lambda response: (lambda: from_response(response)))

    def _wait_read(self, call: _Call, shard_id: int, future: Future) -> list:
        try:
            read = future.result(timeout=call.wait_s)
        except FutureTimeout as exc:
            raise errors.retryable("NO_LEADER", f"shard {shard_id}: read not confirmed by a leader in time",
                                   shard_id=shard_id) from exc
        except (NotAppliedError, OutcomeUnknownError) as exc:
            raise errors.not_leader(shard_id, self.node.leader_address(shard_id)) from exc
        except grpc.RpcError as exc:
            raise errors.from_rpc_error(exc) from exc
        return read()


class LedgerService(ShardRouter, ledger_pb2_grpc.LedgerServicer):
    def _stub(self, address: str) -> ledger_pb2_grpc.LedgerStub:
        return self.node.ledger_stub(address)

    # --- writes -----------------------------------------------------------------------------------------
    def CreateAccounts(self, request: ledger_pb2.CreateAccountsRequest, context) -> ledger_pb2.CreateAccountsResponse:
        _check_batch_size("accounts", len(request.accounts))
        accounts = [convert.account_from_pb(m) for m in request.accounts]
        routed = route_accounts(accounts, self.node.shard_map)
        call = _call(context)
        parts = {}
        for shard_id, sub in routed.sub_batches.items():
            forward = ledger_pb2.CreateAccountsRequest(accounts=[request.accounts[i] for i in sub.positions])
            parts[shard_id] = self._write(call, shard_id, Operation(OP_CREATE_ACCOUNTS, sub.items),
                                          "CreateAccounts", forward)
        codes = routed.merge(self._wait_writes(call, parts))
        return ledger_pb2.CreateAccountsResponse(results=codes)

    def CreateTransfers(self, request: ledger_pb2.CreateTransfersRequest,
                        context) -> ledger_pb2.CreateTransfersResponse:
        _check_batch_size("transfers", len(request.transfers))
        transfers = [convert.transfer_from_pb(m) for m in request.transfers]
        routed = route_transfers(transfers, self.node.shard_map)
        call = _call(context)
        parts = {}
        for shard_id, sub in routed.sub_batches.items():
            forward = ledger_pb2.CreateTransfersRequest(transfers=[request.transfers[i] for i in sub.positions])
            parts[shard_id] = self._write(call, shard_id, Operation(OP_CREATE_TRANSFERS, sub.items),
                                          "CreateTransfers", forward)
        batches = self._cross_shard(call, routed.groups, request)
        shard_codes = self._wait_writes(call, parts)
        codes = routed.merge(shard_codes, self._wait_groups(call, routed.groups, batches))
        return ledger_pb2.CreateTransfersResponse(results=codes)

    def _cross_shard(self, call: _Call, groups: list[CrossShardGroup], request) -> dict[int, tuple[list[int], Future]]:
        """Per coordinator shard: the indexes of its groups and a future of their outcomes, run by this node's
        coordinator when it leads that shard, else forwarded there as one request."""
        by_coordinator: dict[int, list[int]] = {}
        for index, group in enumerate(groups):
            by_coordinator.setdefault(group.coordinator_shard, []).append(index)
        batches = {}
        for shard_id, indexes in by_coordinator.items():
            host = self.node.local_shard(shard_id)
            if host is not None and host.is_leader() and self.node.coordinator is not None:
                future = self.node.coordinator_pool.submit(
                    self.node.coordinator.run_many,
                    [Group(list(groups[i].items), shard_id) for i in indexes], call.wait_s)
            else:
                positions = [p for i in indexes for p in groups[i].positions]
                forward = ledger_pb2.CreateTransfersRequest(transfers=[request.transfers[p] for p in positions])
                sizes = [len(groups[i].positions) for i in indexes]
                future = self._forward(call, shard_id, "CreateTransfers", forward,
                                       lambda response, sizes=sizes: _split(list(response.results), sizes))
            batches[shard_id] = (indexes, future)
        return batches

    def _wait_groups(self, call: _Call, groups: list[CrossShardGroup],
                     batches: dict[int, tuple[list[int], Future]]) -> list[list[int]]:
        """Each group's codes in group order, or the most actionable failure as a status (a retry with the same
        ids is safe: committed groups answer `exists`)."""
        codes: list[list[int] | None] = [None] * len(groups)
        failure = None
        for shard_id, (indexes, future) in batches.items():
            try:
                outcomes = future.result(timeout=call.wait_s + 1.0)
            except FutureTimeout:
                failure = failure or errors.outcome_unknown(shard_id, "cross-shard commit not decided in time")
                continue
            except grpc.RpcError as exc:
                failure = failure or _forwarded_write_failure(shard_id, exc)
                continue
            for index, outcome in zip(indexes, outcomes, strict=True):
                if isinstance(outcome, ParticipantUnavailableError):
                    failure = failure or errors.retryable("NOT_APPLIED", str(outcome), shard_id=shard_id)
                elif isinstance(outcome, Exception):
                    failure = failure or errors.outcome_unknown(shard_id, str(outcome))
                else:
                    codes[index] = outcome
        if failure is not None:
            raise failure
        return codes  # type: ignore[return-value]

    def _write(self, call: _Call, shard_id: int, operation: Operation, method: str, forward_request) -> Future:
        host = self.node.local_shard(shard_id)
        if host is not None and host.is_leader():
            try:
                return host.submit(operation)
            except OverloadedError as exc:
                raise errors.overloaded(shard_id, str(exc)) from exc
            except NotAppliedError:
                pass  # lost leadership meanwhile: forward below
        return self._forward(call, shard_id, method, forward_request, lambda response: list(response.results))

    def _wait_writes(self, call: _Call, parts: dict[int, Future]) -> dict[int, list[int]]:
        """Every part's codes, or the most actionable failure as a status (some parts may have applied:
        a retry with the same ids is safe and answers `exists` for those)."""
        results, failure = {}, None
        for shard_id, future in parts.items():
            try:
                results[shard_id] = future.result(timeout=call.wait_s)
            except FutureTimeout:
                failure = failure or errors.outcome_unknown(shard_id, "no commit before the deadline")
            except OutcomeUnknownError as exc:
                failure = failure or errors.outcome_unknown(shard_id, str(exc))
            except ApplyFailedError as exc:
                failure = failure or errors.internal(f"shard {shard_id}: entry failed on every replica: {exc}")
            except NotAppliedError:
                # Certainly not applied (leadership moved or the node is stopping): retry elsewhere.
                failure = failure or errors.not_leader(shard_id, self.node.leader_address(shard_id))
            except grpc.RpcError as exc:
                failure = failure or _forwarded_write_failure(shard_id, exc)
            except Exception as exc:
                log.exception("shard %d: write failed", shard_id)
                failure = failure or errors.internal(f"shard {shard_id}: {exc}")
        if failure is not None:
            raise failure
        return results

    # --- reads ------------------------------------------------------------------------------------------
    def LookupAccounts(self, request: ledger_pb2.LookupAccountsRequest, context) -> ledger_pb2.LookupAccountsResponse:
        _check_batch_size("ids", len(request.ids))
        ids = [convert.u128_from_pb(m) for m in request.ids]
        found = self._lookup(_call(context), ids, request.consistency, "LookupAccounts",
                             lambda host, part: host.lookup_accounts(part),
                             lambda response: [convert.account_from_pb(m) for m in response.accounts],
                             ledger_pb2.LookupAccountsRequest)
        response = ledger_pb2.LookupAccountsResponse()
        for key in ids:
            if key in found:
                convert.account_to_pb(found[key], response.accounts.add())
        return response

    def LookupTransfers(self, request: ledger_pb2.LookupTransfersRequest,
                        context) -> ledger_pb2.LookupTransfersResponse:
        _check_batch_size("ids", len(request.ids))
        ids = [convert.u128_from_pb(m) for m in request.ids]
        # A transfer lives on its debit account's shard, which its id does not tell: ask every shard.
        found = self._lookup(_call(context), ids, request.consistency, "LookupTransfers",
                             lambda host, part: host.lookup_transfers(part),
                             lambda response: [convert.transfer_from_pb(m) for m in response.transfers],
                             ledger_pb2.LookupTransfersRequest, every_shard=True)
        response = ledger_pb2.LookupTransfersResponse()
        for key in ids:
            if key in found:
                convert.transfer_to_pb(found[key], response.transfers.add())
        return response

    def _lookup(self, call: _Call, ids: Sequence[int], consistency: int, method: str,
                read_local: Callable, from_response: Callable, request_cls, every_shard: bool = False) -> dict:
        by_shard: dict[int, list[int]] = {}
        if every_shard:
            shards = [call.only_shard] if call.only_shard is not None else self.node.shard_map.shard_ids
            by_shard = {shard_id: list(ids) for shard_id in shards}
        else:
            for key in ids:
                by_shard.setdefault(self.node.shard_map.shard_of(key), []).append(key)
        futures = {shard_id: self._read(call, shard_id, consistency, method,
                                        lambda host, part=part: read_local(host, part),
                                        request_cls(ids=[_u128(k) for k in part], consistency=consistency),
                                        from_response)
                   for shard_id, part in by_shard.items()}
        found = {}
        for shard_id, future in futures.items():
            for record in self._wait_read(call, shard_id, future):
                found[record.id] = record
        return found

    def GetAccountTransfers(self, request: ledger_pb2.GetAccountTransfersRequest, context
                            ) -> ledger_pb2.GetAccountTransfersResponse:
        limit = request.limit or PAGE_SIZE_DEFAULT
        if limit > PAGE_SIZE_MAX:
            raise errors.invalid_argument([("limit", f"at most {PAGE_SIZE_MAX}, got {limit}")])
        if request.timestamp_max and request.timestamp_min > request.timestamp_max:
            raise errors.invalid_argument([("timestamp_min", "must not exceed timestamp_max")])
        account_id = convert.u128_from_pb(request.account_id)
        debits, credits = (request.debits, request.credits) if (request.debits or request.credits) else (True, True)
        timestamp_min, timestamp_max = request.timestamp_min, request.timestamp_max
        if request.page_token:
            bound = _decode_page_token(request.page_token, account_id, debits, credits, request.reversed)
            if request.reversed:
                timestamp_max = bound
            else:
                timestamp_min = bound
            if timestamp_max and timestamp_min > timestamp_max:
                return ledger_pb2.GetAccountTransfersResponse()
        shard_id = self.node.shard_map.shard_of(account_id)
        query = dict(timestamp_min=timestamp_min, timestamp_max=timestamp_max, limit=limit, debits=debits,
                     credits=credits, reversed=request.reversed)
        forward = ledger_pb2.GetAccountTransfersRequest()
        forward.CopyFrom(request)
        call = _call(context)
        future = self._read(call, shard_id, request.consistency, "GetAccountTransfers",
                            lambda host: host.get_account_transfers(account_id, **query), forward,
                            lambda response: response)
        result = self._wait_read(call, shard_id, future)
        if isinstance(result, ledger_pb2.GetAccountTransfersResponse):
            return result  # answered by the leader's node, token included
        response = ledger_pb2.GetAccountTransfersResponse()
        for transfer in result:
            convert.transfer_to_pb(transfer, response.transfers.add())
        if len(result) == limit:
            last = result[-1].timestamp
            next_bound = last - 1 if request.reversed else last + 1
            response.next_page_token = _encode_page_token(account_id, debits, credits, request.reversed,
                                                          next_bound)
        return response


def _u128(value: int) -> types_pb2.U128:
    message = types_pb2.U128()
    convert.u128_to_pb(message, value)
    return message


def _forwarded_write_failure(shard_id: int, exc: grpc.RpcError) -> errors.RequestError:
    """A forwarded write that failed without an answer may still have applied."""
    code = exc.code() if hasattr(exc, "code") else None
    passed_on = errors.from_rpc_error(exc)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return errors.outcome_unknown(shard_id, "the leader did not answer in time")
    if code == grpc.StatusCode.UNAVAILABLE and not passed_on.status.details:
        return errors.outcome_unknown(shard_id, "lost the connection to the leader")
    return passed_on


def _split(values: list[int], sizes: list[int]) -> list[list[int]]:
    out, start = [], 0
    for size in sizes:
        out.append(values[start:start + size])
        start += size
    assert start == len(values), "a forwarded answer has a different number of items"
    return out


def _check_batch_size(field: str, count: int) -> None:
    if count > BATCH_ITEMS_MAX:
        raise errors.invalid_argument([(field, f"at most {BATCH_ITEMS_MAX} items per request, got {count}")])


_PAGE_TOKEN = struct.Struct(">16sBQ")


def _filter_bits(debits: bool, credits: bool, reversed_: bool) -> int:
    return int(debits) | int(credits) << 1 | int(reversed_) << 2


def encode_token(layout: struct.Struct, *fields) -> str:
    """An opaque page token: the fields packed with `layout`, URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(layout.pack(*fields)).decode().rstrip("=")


def decode_token(layout: struct.Struct, token: str) -> tuple:
    """The fields of a token made by encode_token; INVALID_ARGUMENT for anything else."""
    try:
        return layout.unpack(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, struct.error, ValueError) as exc:
        raise errors.invalid_argument([("page_token", "not a token this service issued")]) from exc


def _encode_page_token(account_id: int, debits: bool, credits: bool, reversed_: bool, bound: int) -> str:
    return encode_token(_PAGE_TOKEN, account_id.to_bytes(16, "big"), _filter_bits(debits, credits, reversed_), bound)


def _decode_page_token(token: str, account_id: int, debits: bool, credits: bool, reversed_: bool) -> int:
    token_account, bits, bound = decode_token(_PAGE_TOKEN, token)
    if token_account != account_id.to_bytes(16, "big") or bits != _filter_bits(debits, credits, reversed_):
        raise errors.invalid_argument([("page_token", "belongs to a different query (account or filters)")])
    return bound


class AdminService:
    """The Admin service (registered through the same raw-bytes handlers): shard map, node status,
    the simulated link faults (links.py) and per-ledger totals for `tidebank audit`."""

    def __init__(self, node_status: Callable[[], admin_pb2.NodeStatus],
                 shard_map: Callable[[], admin_pb2.ShardMap], *, node: NodeView | None = None,
                 link_faults: LinkFaults | None = None, dcs: Sequence[str] = ()):
        self._node_status = node_status
        self._shard_map = shard_map
        self._node = node
        self._link_faults = link_faults if link_faults is not None else LinkFaults()
        self._dcs = tuple(dcs)

    def GetShardMap(self, request: admin_pb2.GetShardMapRequest, context) -> admin_pb2.ShardMap:
        return self._shard_map()

    def GetNodeStatus(self, request: admin_pb2.GetNodeStatusRequest, context) -> admin_pb2.NodeStatus:
        return self._node_status()

    # --- simulated link faults (in memory only: a restarted node has none) -------------------------------
    def SetLinkFaults(self, request: admin_pb2.LinkFaults, context) -> admin_pb2.LinkFaults:
        violations = validate_link_faults(request, self._dcs)
        if violations:
            raise errors.invalid_argument(violations)
        table = self._link_faults.set_table(LinkTable.from_proto(request))
        log.warning("simulated link faults set: %s", table.describe())
        return table.to_proto()

    def GetLinkFaults(self, request: admin_pb2.GetLinkFaultsRequest, context) -> admin_pb2.LinkFaults:
        return self._link_faults.to_proto()

    # --- audit ---------------------------------------------------------------------------------------------
    def GetLedgerTotals(self, request: admin_pb2.GetLedgerTotalsRequest, context) -> admin_pb2.LedgerTotals:
        """Totals of the requested shards (each must be led here) or of every shard led here, each
        read after a barrier through the shard's log (linearizable). Without explicit shard ids a
        shard whose leadership moves meanwhile is left out: the caller asks its new leader."""
        node = self._node
        if node is None:
            raise errors.internal("this node serves no shards")
        explicit = bool(request.shard_ids)
        shard_ids = list(dict.fromkeys(request.shard_ids)) if explicit else list(node.shard_map.shard_ids)
        unknown = [s for s in shard_ids if s not in node.shard_map.shard_ids]
        if unknown:
            raise errors.invalid_argument([("shard_ids", f"no shard {s}") for s in unknown])
        barriers = {}
        for shard_id in shard_ids:
            host = node.local_shard(shard_id)
            try:
                if host is None or not host.is_leader():
                    raise NotAppliedError("not the leader")
                barriers[shard_id] = (host, host.barrier())
            except (NotAppliedError, OverloadedError) as exc:
                if explicit:
                    raise errors.not_leader(shard_id, node.leader_address(shard_id)) from exc
        response = admin_pb2.LedgerTotals()
        for shard_id, (host, barrier) in barriers.items():
            remaining = context.time_remaining()
            wait_s = WAIT_DEFAULT_S if remaining is None else max(0.0, min(remaining - 0.05, WAIT_DEFAULT_S))
            try:
                barrier.result(timeout=wait_s)
            except (FutureTimeout, NotAppliedError, OutcomeUnknownError, ApplyFailedError) as exc:
                if explicit:
                    raise errors.retryable("NO_LEADER", f"shard {shard_id}: read not confirmed by a leader in time",
                                           shard_id=shard_id) from exc
                continue
            _shard_totals_to_pb(shard_id, host.audit_totals(), response.shards.add())
        return response


_LEDGER_TOTAL_FIELDS = [f.name for f in admin_pb2.LedgerTotal.DESCRIPTOR.fields if f.name != "ledger"]
_ESCROW_MONEY_FIELDS = [f.name for f in admin_pb2.EscrowTotal.DESCRIPTOR.fields if f.message_type is not None]
_ESCROW_COUNT_FIELDS = [f.name for f in admin_pb2.EscrowTotal.DESCRIPTOR.fields
                        if f.message_type is None and f.name != "ledger"]


def _shard_totals_to_pb(shard_id: int, totals: dict, target: admin_pb2.ShardLedgerTotals) -> None:
    target.shard_id = shard_id
    target.prepared_txns = totals.get("prepared_txns", 0)
    target.applied_index = totals.get("applied_index", 0)
    for ledger, sums in sorted(totals.get("ledgers", {}).items()):
        entry = target.ledgers.add(ledger=ledger)
        for name in _LEDGER_TOTAL_FIELDS:
            convert.u128_to_pb(getattr(entry, name), sums.get(name, 0))
    for ledger, sums in sorted(totals.get("escrow", {}).items()):
        book = target.escrow.add(ledger=ledger)
        for name in _ESCROW_MONEY_FIELDS:
            convert.u128_to_pb(getattr(book, name), sums.get(name, 0))
        for name in _ESCROW_COUNT_FIELDS:
            setattr(book, name, sums.get(name, 0))


# --- registration: parse requests ourselves so a malformed message is INVALID_ARGUMENT, not INTERNAL --------

def _raw_handler(method: Callable, request_cls, response_cls,
                 authenticate: Callable | None = None) -> grpc.RpcMethodHandler:
    name = method.__name__

    def handle(raw: bytes, context: grpc.ServicerContext):
        if authenticate is not None:
            authenticate(name, raw, context)
        request = request_cls()
        try:
            request.ParseFromString(raw)
        except DecodeError as exc:
            errors.abort(context, errors.invalid_argument(
                [("request", f"not a valid {request_cls.DESCRIPTOR.full_name} message: {exc}")]))
        try:
            return method(request, context)
        except errors.RequestError as exc:
            errors.abort(context, exc)

    return grpc.unary_unary_rpc_method_handler(handle, request_deserializer=None,
                                               response_serializer=response_cls.SerializeToString)


SIGNED_ADMIN_METHODS = frozenset({"SetLinkFaults"})  # fault injection: only holders of the cluster secret


def generic_handlers(ledger: LedgerService, admin: AdminService, internal=None,
                     admin_secret: str | None = None, escrow=None) -> list[grpc.GenericRpcHandler]:
    """Handlers for the public Ledger and Admin services and, when given, the Escrow service and the signed
    Internal service. With `admin_secret`, the fault-injection Admin methods require the cluster's signature."""
    from tidebank.node.api.internal_service import require_signature

    def admin_auth(method, raw, context):
        require_signature(admin_secret, method, raw, context)

    handlers = []
    services = [("tidebank.v1.Ledger", ledger, ledger_pb2, None), ("tidebank.v1.Admin", admin, admin_pb2, None)]
    if escrow is not None:
        services.append(("tidebank.v1.Escrow", escrow, escrow_pb2, None))
    if internal is not None:
        services.append(("tidebank.v1.Internal", internal, internal_pb2, internal.authenticate))
    for service_name, servicer, pb2, authenticate in services:
        service = pb2.DESCRIPTOR.services_by_name[service_name.split(".")[-1]]
        methods = {}
        for method in service.methods:
            request_cls = _message_class(method.input_type)
            response_cls = _message_class(method.output_type)
            method_auth = authenticate
            if pb2 is admin_pb2 and admin_secret is not None and method.name in SIGNED_ADMIN_METHODS:
                method_auth = admin_auth
            methods[method.name] = _raw_handler(getattr(servicer, method.name), request_cls, response_cls,
                                                method_auth)
        handlers.append(grpc.method_handlers_generic_handler(service_name, methods))
    return handlers


def _message_class(descriptor):
    return message_factory.GetMessageClass(descriptor)

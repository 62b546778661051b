"""The Escrow gRPC servicer: split a batch by trade shard, run each part on its leader, translate.

Nothing about money is decided here: the escrow coordinator plans each step with
the escrow rules and the trade's shard applies it. This module checks the
request's shape, routes items to the shard of their trade id (running them on the
local leader or forwarding them once to the leader's node), merges the answers in
request order, and serves trade lookups and the paged list of a buyer's or
seller's trades (gathered from every shard).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout

import grpc

from tidebank.node.api import convert, errors
from tidebank.node.api.ledger_service import (
    PAGE_SIZE_DEFAULT,
    ShardRouter,
    _call,
    _check_batch_size,
    _forwarded_write_failure,
    _u128,
    decode_token,
    encode_token,
)
from tidebank.node.batcher import NotAppliedError, OutcomeUnknownError
from tidebank.node.ledger.records import PAGE_SIZE_MAX
from tidebank.node.ledger.trades import (
    CMD_CONFIRM,
    CMD_OPEN_DISPUTE,
    CMD_SHIP,
    CMD_WITHDRAW_DISPUTE,
    Trade,
    TradeCommand,
)
from tidebank.node.txn.coordinator import ParticipantUnavailableError
from tidebank.node.txn.escrow_coordinator import StepOutcome
from tidebank.v1 import escrow_pb2, escrow_pb2_grpc

log = logging.getLogger(__name__)

_SHIP = convert.trade_action_from_pb(CMD_SHIP)
_CONFIRM = convert.trade_action_from_pb(CMD_CONFIRM)
_OPEN = convert.trade_action_from_pb(CMD_OPEN_DISPUTE)
_WITHDRAW = convert.trade_action_from_pb(CMD_WITHDRAW_DISPUTE)


class EscrowService(ShardRouter, escrow_pb2_grpc.EscrowServicer):
    def _stub(self, address: str) -> escrow_pb2_grpc.EscrowStub:
        return self.node.escrow_stub(address)

    # --- steps ------------------------------------------------------------------------------------------
    def CreateTrades(self, request, context) -> escrow_pb2.TradeResultsResponse:
        return self._steps(request, context, "CreateTrades", "trades", convert.create_trade_from_pb)

    def ShipTrades(self, request, context) -> escrow_pb2.TradeResultsResponse:
        return self._steps(request, context, "ShipTrades", "trades", _SHIP)

    def ConfirmTrades(self, request, context) -> escrow_pb2.TradeResultsResponse:
        return self._steps(request, context, "ConfirmTrades", "trades", _CONFIRM)

    def RefundTrades(self, request, context) -> escrow_pb2.TradeResultsResponse:
        return self._steps(request, context, "RefundTrades", "refunds", convert.refund_from_pb)

    def OpenDisputes(self, request, context) -> escrow_pb2.TradeResultsResponse:
        return self._steps(request, context, "OpenDisputes", "trades", _OPEN)

    def WithdrawDisputes(self, request, context) -> escrow_pb2.TradeResultsResponse:
        return self._steps(request, context, "WithdrawDisputes", "trades", _WITHDRAW)

    def ResolveDisputes(self, request, context) -> escrow_pb2.TradeResultsResponse:
        return self._steps(request, context, "ResolveDisputes", "resolutions", convert.resolution_from_pb)

    def ExtendTrades(self, request, context) -> escrow_pb2.TradeResultsResponse:
        return self._steps(request, context, "ExtendTrades", "extensions", convert.extension_from_pb)

    def _steps(self, request, context, method: str, field: str,
               to_command: Callable[[object], TradeCommand]) -> escrow_pb2.TradeResultsResponse:
        items = getattr(request, field)
        _check_batch_size(field, len(items))
        commands = [to_command(m) for m in items]
        call = _call(context)
        by_shard: dict[int, list[int]] = {}
        for position, c in enumerate(commands):
            by_shard.setdefault(self.node.shard_map.shard_of(c.trade_id), []).append(position)
        futures = {}
        for shard_id, positions in by_shard.items():
            host = self.node.local_shard(shard_id)
            if host is not None and host.is_leader() and self.node.escrow is not None:
                futures[shard_id] = self.node.coordinator_pool.submit(
                    self.node.escrow.execute, shard_id, [commands[p] for p in positions], call.wait_s)
            else:
                forward = type(request)(**{field: [items[p] for p in positions]})
                futures[shard_id] = self._forward(call, shard_id, method, forward, _outcomes_from_pb)
        results: list[StepOutcome | None] = [None] * len(commands)
        failure = None
        for shard_id, future in futures.items():
            try:
                outcomes = future.result(timeout=call.wait_s + 1.0)
            except FutureTimeout:
                failure = _worse(failure, errors.outcome_unknown(shard_id, "escrow step not decided in time"))
                continue
            except grpc.RpcError as exc:
                failure = _worse(failure, _forwarded_write_failure(shard_id, exc))
                continue
            for position, outcome in zip(by_shard[shard_id], outcomes, strict=True):
                if isinstance(outcome, StepOutcome):
                    results[position] = outcome
                else:
                    failure = _worse(failure, _step_failure(shard_id, outcome, self.node.leader_address(shard_id)))
        if failure is not None:
            raise failure
        response = escrow_pb2.TradeResultsResponse()
        for outcome in results:
            assert outcome is not None
            response.results.add(code=outcome.code, transfer_result=outcome.transfer_code)
        return response

    # --- reads ------------------------------------------------------------------------------------------
    def LookupTrades(self, request, context) -> escrow_pb2.LookupTradesResponse:
        _check_batch_size("ids", len(request.ids))
        ids = [convert.u128_from_pb(m) for m in request.ids]
        call = _call(context)
        by_shard: dict[int, list[int]] = {}
        for key in ids:
            by_shard.setdefault(self.node.shard_map.shard_of(key), []).append(key)
        futures = {
            shard_id: self._read(call, shard_id, request.consistency, "LookupTrades",
                                 lambda host, part=part: self._to_pb(host.lookup_trades(part)),
                                 escrow_pb2.LookupTradesRequest(ids=[_u128(k) for k in part],
                                                                consistency=request.consistency),
                                 lambda response: list(response.trades))
            for shard_id, part in by_shard.items()}
        found = {}
        for shard_id, future in futures.items():
            for message in self._wait_read(call, shard_id, future):
                found[convert.u128_from_pb(message.id)] = message
        response = escrow_pb2.LookupTradesResponse()
        for key in ids:
            if key in found:
                response.trades.add().CopyFrom(found[key])
        return response

    def ListTrades(self, request, context) -> escrow_pb2.ListTradesResponse:
        limit = request.limit or PAGE_SIZE_DEFAULT
        if limit > PAGE_SIZE_MAX:
            raise errors.invalid_argument([("limit", f"at most {PAGE_SIZE_MAX}, got {limit}")])
        if request.role not in (escrow_pb2.TRADE_ROLE_BUYER, escrow_pb2.TRADE_ROLE_SELLER):
            raise errors.invalid_argument([("role", f"not a TradeRole: {request.role}")])
        account_id = convert.u128_from_pb(request.account_id)
        seller = request.role == escrow_pb2.TRADE_ROLE_SELLER
        after = _decode_list_token(request.page_token, account_id, request.role) if request.page_token else None
        call = _call(context)
        shards = [call.only_shard] if call.only_shard is not None else self.node.shard_map.shard_ids
        futures = {
            shard_id: self._read(call, shard_id, request.consistency, "ListTrades",
                                 lambda host: self._to_pb(host.list_trades(account_id, seller=seller, after=after,
                                                                           limit=limit)),
                                 request, lambda response: list(response.trades))
            for shard_id in shards}
        pages = [self._wait_read(call, shard_id, future) for shard_id, future in futures.items()]
        merged = sorted((m for page in pages for m in page),
                        key=lambda m: (m.created_at, convert.u128_from_pb(m.id)))
        response = escrow_pb2.ListTradesResponse(trades=merged[:limit])
        if len(merged) > limit or any(len(page) == limit for page in pages):
            last = merged[min(limit, len(merged)) - 1]
            response.next_page_token = _encode_list_token(account_id, request.role, last.created_at,
                                                          convert.u128_from_pb(last.id))
        return response

    def _to_pb(self, trades: list[Trade]) -> list[escrow_pb2.Trade]:
        out = []
        for t in trades:
            m = escrow_pb2.Trade()
            convert.trade_to_pb(t, m, self.node.shard_map.slot_count)
            out.append(m)
        return out


def _outcomes_from_pb(response: escrow_pb2.TradeResultsResponse) -> list[StepOutcome]:
    return [StepOutcome(r.code, r.transfer_result) for r in response.results]


def _step_failure(shard_id: int, exc: Exception, leader: str | None) -> errors.RequestError:
    if isinstance(exc, ParticipantUnavailableError):
        return errors.retryable("NOT_APPLIED", str(exc), shard_id=shard_id)
    if isinstance(exc, NotAppliedError):
        return errors.not_leader(shard_id, leader)
    if isinstance(exc, OutcomeUnknownError):
        return errors.outcome_unknown(shard_id, str(exc))
    log.error("shard %d: escrow step failed: %r", shard_id, exc)
    return errors.internal(f"shard {shard_id}: {type(exc).__name__}: {exc}")


def _worse(current: errors.RequestError | None, new: errors.RequestError) -> errors.RequestError:
    """The failure to report for a request: one that may have applied something wins (retry the same items)."""
    if current is None or (errors.reason_of(new) == "OUTCOME_UNKNOWN" != errors.reason_of(current)):
        return new
    return current


_LIST_TOKEN = struct.Struct(">16sBQ16s")


def _encode_list_token(account_id: int, role: int, created_at: int, trade_id: int) -> str:
    return encode_token(_LIST_TOKEN, account_id.to_bytes(16, "big"), role, created_at, trade_id.to_bytes(16, "big"))


def _decode_list_token(token: str, account_id: int, role: int) -> tuple[int, int]:
    token_account, token_role, created_at, trade_id = decode_token(_LIST_TOKEN, token)
    if token_account != account_id.to_bytes(16, "big") or token_role != role:
        raise errors.invalid_argument([("page_token", "belongs to a different query (account or role)")])
    return created_at, int.from_bytes(trade_id, "big")


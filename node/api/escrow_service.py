"""The Escrow gRPC servicer: split a batch by trade shard, run each part on its leader, translate.

Nothing about money is decided here: the escrow coordinator plans each step with
the escrow rules and the trade's shard applies it. This module checks the
request's shape, routes items to the shard of their trade id (running them on the
local leader or forwarding them once to the leader's node), waits for every part,
answers by the one failure rule (api/failures.py), and serves trade lookups and
the paged list of a buyer's or seller's trades (gathered from every shard).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from concurrent.futures import Future

from tidebank.node.api import access, convert, errors
from tidebank.node.api.calls import (
    call_of,
    check_batch_size,
    decode_token,
    encode_token,
    failed,
    forward,
    page_limit,
    read_part,
    u128,
    wait_of,
    wait_reads,
)
from tidebank.node.api.failures import Failures
from tidebank.node.api.ownership import Owners
from tidebank.node.executor import NodeView, ShardExecutor, all_results
from tidebank.node.ledger.trades import (
    CMD_CONFIRM,
    CMD_OPEN_DISPUTE,
    CMD_SHIP,
    CMD_WITHDRAW_DISPUTE,
    Trade,
    TradeCommand,
)
from tidebank.node.txn.escrow_coordinator import StepOutcome
from tidebank.v1 import escrow_pb2, escrow_pb2_grpc, ledger_pb2

log = logging.getLogger(__name__)

LINEARIZABLE = ledger_pb2.READ_CONSISTENCY_LINEARIZABLE
_SHIP = convert.trade_action_from_pb(CMD_SHIP)
_CONFIRM = convert.trade_action_from_pb(CMD_CONFIRM)
_OPEN = convert.trade_action_from_pb(CMD_OPEN_DISPUTE)
_WITHDRAW = convert.trade_action_from_pb(CMD_WITHDRAW_DISPUTE)
# Which party's account an account holder must own for each step (CreateTrades: the buyer's, from the request).
_SIDE_OF_STEP = {"ConfirmTrades": "buyer", "OpenDisputes": "buyer", "WithdrawDisputes": "buyer",
                 "ExtendTrades": "buyer", "ShipTrades": "seller", "RefundTrades": "seller"}


class EscrowService(escrow_pb2_grpc.EscrowServicer):
    def __init__(self, node: NodeView, executor: ShardExecutor, escrow=None, pool=None, owners: Owners | None = None):
        self.node = node
        self.executor = executor
        self.owners = owners or Owners(node, executor)  # whose accounts are whose, for account holders' calls
        self.escrow = escrow  # runs escrow steps on the trade shards this node leads (EscrowCoordinator)
        self.pool = pool

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
        check_batch_size(field, len(items))
        commands = [to_command(m) for m in items]
        call = call_of(context)
        self._require_party(access.current(), method, commands, call)
        by_shard: dict[int, list[int]] = {}
        for position, c in enumerate(commands):
            by_shard.setdefault(self.node.shard_map.shard_of(c.trade_id), []).append(position)
        futures: dict[int, Future] = {}
        for shard_id, positions in by_shard.items():
            def local(host, shard_id=shard_id, positions=positions) -> Future:
                if self.escrow is None:
                    raise errors.internal("this node runs no escrow coordinator")
                return self.pool.submit(self.escrow.execute, shard_id, [commands[p] for p in positions],
                                        call.wait_s)

            forwarded = type(request)(**{field: [items[p] for p in positions]})
            try:
                futures[shard_id] = forward(self.executor, call, shard_id, self.node.escrow_stub, method, forwarded,
                                            local)
            except Exception as exc:
                futures[shard_id] = failed(exc)
        results: list[StepOutcome | None] = [None] * len(commands)
        failures = Failures()
        for shard_id, outcomes in zip(futures, all_results(list(futures.values()), call.wait_s + 1.0), strict=True):
            if isinstance(outcomes, BaseException):
                failures.add_part(shard_id, outcomes, self.node.leader_address(shard_id), write=True)
                continue
            if isinstance(outcomes, escrow_pb2.TradeResultsResponse):  # answered by the leader's node
                outcomes = [StepOutcome(r.code, r.transfer_result) for r in outcomes.results]
            for position, outcome in zip(by_shard[shard_id], outcomes, strict=True):
                if isinstance(outcome, StepOutcome):
                    results[position] = outcome
                else:
                    failures.add_part(shard_id, outcome, self.node.leader_address(shard_id), write=True)
        failures.raise_if_any()  # only after every part has been awaited
        response = escrow_pb2.TradeResultsResponse()
        for outcome in results:
            assert outcome is not None
            response.results.add(code=outcome.code, transfer_result=outcome.transfer_code)
        return response

    def _require_party(self, grant: access.Grant, method: str, commands: list[TradeCommand], call) -> None:
        """An account holder acts on a trade only in its own part: as the buyer (the account it pays from) to
        create, confirm, extend and dispute, as the seller to ship and refund."""
        if grant.everything:
            return
        if method == "CreateTrades":
            self.owners.require_owned(grant, [c.buyer_account_id for c in commands], "buyer account", call.wait_s)
            return
        side = _SIDE_OF_STEP.get(method)
        if side is None:
            access.require_everything(grant, method)
            return
        ids = [c.trade_id for c in commands]
        trades = self._lookup(call, ids, LINEARIZABLE)
        for trade_id in ids:
            if trade_id not in trades:
                raise access.denied(grant.principal, grant.permission, f"trade {trade_id} is not found")
        accounts = [convert.u128_from_pb(getattr(trades[t], f"{side}_account_id")) for t in ids]
        self.owners.require_owned(grant, accounts, f"{side} account", call.wait_s)

    # --- reads ------------------------------------------------------------------------------------------
    def LookupTrades(self, request, context) -> escrow_pb2.LookupTradesResponse:
        check_batch_size("ids", len(request.ids))
        ids = [convert.u128_from_pb(m) for m in request.ids]
        found = self._lookup(call_of(context), ids, request.consistency)
        self.owners.require_party(access.current(), {
            k: (convert.u128_from_pb(m.buyer_account_id), convert.u128_from_pb(m.seller_account_id))
            for k, m in found.items()}, "trade", wait_of(context))
        response = escrow_pb2.LookupTradesResponse()
        for key in ids:
            if key in found:
                response.trades.add().CopyFrom(found[key])
        return response

    def _lookup(self, call, ids: list[int], consistency: int) -> dict[int, escrow_pb2.Trade]:
        by_shard: dict[int, list[int]] = {}
        for key in ids:
            by_shard.setdefault(self.node.shard_map.shard_of(key), []).append(key)
        reads = {shard_id: self._read(call, shard_id, consistency, "LookupTrades",
                                      lambda host, part=part: self._to_pb(host.lookup_trades(part)),
                                      escrow_pb2.LookupTradesRequest(ids=[u128(k) for k in part],
                                                                     consistency=consistency),
                                      lambda response: list(response.trades))
                 for shard_id, part in by_shard.items()}
        found = {}
        for trades in wait_reads(self.node, call, reads).values():
            for message in trades:
                found[convert.u128_from_pb(message.id)] = message
        return found

    def ListTrades(self, request, context) -> escrow_pb2.ListTradesResponse:
        limit = page_limit(request.limit)
        if request.role not in (escrow_pb2.TRADE_ROLE_BUYER, escrow_pb2.TRADE_ROLE_SELLER):
            raise errors.invalid_argument([("role", f"not a TradeRole: {request.role}")])
        account_id = convert.u128_from_pb(request.account_id)
        self.owners.require_owned(access.current(), [account_id], "account", wait_of(context))
        seller = request.role == escrow_pb2.TRADE_ROLE_SELLER
        after = _decode_list_token(request.page_token, account_id, request.role) if request.page_token else None
        call = call_of(context)
        shards = [call.only_shard] if call.only_shard is not None else self.node.shard_map.shard_ids
        reads = {shard_id: self._read(call, shard_id, request.consistency, "ListTrades",
                                      lambda host: self._to_pb(host.list_trades(account_id, seller=seller,
                                                                                after=after, limit=limit)),
                                      request, lambda response: list(response.trades))
                 for shard_id in shards}
        pages = list(wait_reads(self.node, call, reads).values())
        merged = sorted((m for page in pages for m in page),
                        key=lambda m: (m.created_at, convert.u128_from_pb(m.id)))
        response = escrow_pb2.ListTradesResponse(trades=merged[:limit])
        if len(merged) > limit or any(len(page) == limit for page in pages):
            last = merged[min(limit, len(merged)) - 1]
            response.next_page_token = _encode_list_token(account_id, request.role, last.created_at,
                                                          convert.u128_from_pb(last.id))
        return response

    def _read(self, call, shard_id: int, consistency: int, method: str, read_local: Callable, forward_request,
              from_response: Callable) -> Future:
        return read_part(self.executor, call, shard_id, consistency == LINEARIZABLE, read_local,
                         self.node.escrow_stub, method, forward_request, from_response)

    def _to_pb(self, trades: list[Trade]) -> list[escrow_pb2.Trade]:
        out = []
        for t in trades:
            m = escrow_pb2.Trade()
            convert.trade_to_pb(t, m, self.node.shard_map.slot_count)
            out.append(m)
        return out


_LIST_TOKEN = struct.Struct(">16sBQ16s")


def _encode_list_token(account_id: int, role: int, created_at: int, trade_id: int) -> str:
    return encode_token(_LIST_TOKEN, account_id.to_bytes(16, "big"), role, created_at, trade_id.to_bytes(16, "big"))


def _decode_list_token(token: str, account_id: int, role: int) -> tuple[int, int]:
    token_account, token_role, created_at, trade_id = decode_token(_LIST_TOKEN, token)
    if token_account != account_id.to_bytes(16, "big") or token_role != role:
        raise errors.invalid_argument([("page_token", "belongs to a different query (account or role)")])
    return created_at, int.from_bytes(trade_id, "big")


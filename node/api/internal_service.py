"""The node-to-node Internal service: 2PC steps through a shard's log on its leader.

Every call must carry an HMAC of its exact request bytes keyed by the cluster
secret: the public port serves this service too, and a forged FINISH or DECIDE
would move money.
"""

from __future__ import annotations

import time

import grpc

from tidebank.common.auth import AUTH_HEADER, verify
from tidebank.node.api import convert, errors
from tidebank.node.ledger.state_machine import OP_DECIDE, Operation
from tidebank.node.txn.coordinator import (
    _UNPACK,
    STEP_TIMEOUT_S,
    SUBMIT_ITEMS_MAX,
    ParticipantUnavailableError,
    ShardSteps,
    result_to_pb,
)
from tidebank.v1 import internal_pb2


def require_signature(secret: bytes | str, method: str, raw: bytes, context: grpc.ServicerContext) -> None:
    """Abort with PERMISSION_DENIED unless the call carries the cluster's signature of these exact bytes."""
    presented = dict(context.invocation_metadata() or ()).get(AUTH_HEADER, "")
    if not verify(secret, method, raw, presented):
        context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{method} needs a valid cluster signature")


class InternalService:
    def __init__(self, node, steps: ShardSteps, secret: str):
        self.node = node
        self.steps = steps
        self.secret = secret.encode()

    def authenticate(self, method: str, raw: bytes, context: grpc.ServicerContext) -> None:
        require_signature(self.secret, method, raw, context)

    def Submit(self, request: internal_pb2.InternalSubmitRequest, context) -> internal_pb2.InternalSubmitResponse:
        unpack = _UNPACK.get(request.kind)
        if unpack is None:
            raise errors.invalid_argument([("kind", f"not a transaction step: {request.kind}")])
        if not 0 < len(request.items) <= SUBMIT_ITEMS_MAX:
            raise errors.invalid_argument([("items", f"1..{SUBMIT_ITEMS_MAX} items, got {len(request.items)}")])
        host = self.node.local_shard(request.shard_id)
        if host is None or not host.is_leader():
            raise errors.not_leader(request.shard_id, self.node.leader_address(request.shard_id))
        items = [unpack(raw) for raw in request.items]
        remaining = context.time_remaining()
        try:
            results = host.submit(Operation(request.kind, items)).result(
                timeout=STEP_TIMEOUT_S if remaining is None else max(0.01, remaining - 0.05))
        except Exception as exc:
            raise errors.outcome_unknown(request.shard_id, f"{type(exc).__name__}: {exc}") from exc
        return internal_pb2.InternalSubmitResponse(results=[result_to_pb(request.kind, r) for r in results])

    def Resolve(self, request: internal_pb2.ResolveRequest, context) -> internal_pb2.ResolveResponse:
        shard_id = request.coordinator_shard
        host = self.node.local_shard(shard_id)
        if host is None or not host.is_leader():
            raise errors.not_leader(shard_id, self.node.leader_address(shard_id))
        key = convert.u128_from_pb(request.txid)
        try:
            decision = self.steps.resolve(shard_id, key, time.monotonic() + STEP_TIMEOUT_S)
        except ParticipantUnavailableError as exc:
            raise errors.not_leader(shard_id, self.node.leader_address(shard_id)) from exc
        return internal_pb2.ResolveResponse(decision=result_to_pb(OP_DECIDE, decision))

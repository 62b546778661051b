"""The node-to-node Internal service: an operation through a shard's log on its leader, and 2PC recovery.

Every call must carry an HMAC of its exact request bytes keyed by the cluster
secret: the public port serves this service too, and a forged FINISH or DECIDE
would move money.
"""

from __future__ import annotations

import time

import grpc

from tidebank.common.auth import AUTH_HEADER, verify
from tidebank.node.api import convert, errors
from tidebank.node.api.failures import part_failure
from tidebank.node.executor import SUBMIT_ITEMS_MAX, result_to_pb
from tidebank.node.ledger.clearing_records import pack_value, plain, unpack_value
from tidebank.node.ledger.entry import CommandFormatError, unpack_item
from tidebank.node.ledger.operations import KINDS, OP_DECIDE, Operation
from tidebank.node.outcomes import NotAppliedError, OverloadedError
from tidebank.node.shard import CLEARING_READS
from tidebank.node.txn.coordinator import STEP_TIMEOUT_S, Coordinator
from tidebank.v1 import internal_pb2

OWNERS_READ = "account_owners"  # Query name of the ownership read (node/api/ownership.py)

def require_signature(secret: bytes | str, method: str, raw: bytes, context: grpc.ServicerContext) -> None:
    """Abort with PERMISSION_DENIED unless the call carries the cluster's signature of these exact bytes."""
    presented = dict(context.invocation_metadata() or ()).get(AUTH_HEADER, "")
    if not verify(secret, method, raw, presented):
        context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{method} needs a valid cluster signature")


class InternalService:
    def __init__(self, node, coordinator: Coordinator, secret: str):
        self.node = node
        self.coordinator = coordinator
        self.secret = secret.encode()

    def authenticate(self, method: str, raw: bytes, context: grpc.ServicerContext) -> None:
        require_signature(self.secret, method, raw, context)

    def Submit(self, request: internal_pb2.InternalSubmitRequest, context) -> internal_pb2.InternalSubmitResponse:
        """One operation into the shard's next Raft entry here; only the shard's leader takes it."""
        if request.kind not in KINDS:
            raise errors.invalid_argument([("kind", f"not an operation kind: {request.kind}")])
        if not 0 < len(request.items) <= SUBMIT_ITEMS_MAX:
            raise errors.invalid_argument([("items", f"1..{SUBMIT_ITEMS_MAX} items, got {len(request.items)}")])
        try:
            items = [unpack_item(request.kind, raw) for raw in request.items]
        except CommandFormatError as exc:
            raise errors.invalid_argument([("items", str(exc))]) from exc
        shard_id = request.shard_id
        host = self.node.local_shard(shard_id)
        if host is None or not host.is_leader():
            raise errors.not_leader(shard_id, self.node.leader_address(shard_id))
        remaining = context.time_remaining()
        timeout_s = STEP_TIMEOUT_S if remaining is None else max(0.01, remaining - 0.05)
        try:
            results = host.submit(Operation(request.kind, items)).result(timeout=timeout_s)
        except (NotAppliedError, OverloadedError) as exc:
            raise part_failure(shard_id, exc, self.node.leader_address(shard_id), write=True) from exc
        except Exception as exc:  # it may have applied: the caller retries by key
            raise errors.outcome_unknown(shard_id, f"{type(exc).__name__}: {exc}") from exc
        return internal_pb2.InternalSubmitResponse(results=[result_to_pb(request.kind, r) for r in results])

    def Resolve(self, request: internal_pb2.ResolveRequest, context) -> internal_pb2.ResolveResponse:
        shard_id = request.coordinator_shard
        host = self.node.local_shard(shard_id)
        if host is None or not host.is_leader():
            raise errors.not_leader(shard_id, self.node.leader_address(shard_id))
        key = convert.u128_from_pb(request.txid)
        try:
            decision = self.coordinator.resolve(shard_id, key, time.monotonic() + STEP_TIMEOUT_S)
        except Exception as exc:
            raise errors.not_leader(shard_id, self.node.leader_address(shard_id)) from exc
        return internal_pb2.ResolveResponse(decision=result_to_pb(OP_DECIDE, decision))

    def Query(self, request: internal_pb2.QueryRequest, context) -> internal_pb2.QueryResponse:
        """A clearing read of one shard here: on its leader (after a ReadIndex round) when linearizable."""
        if request.name not in CLEARING_READS and request.name != OWNERS_READ:
            raise errors.invalid_argument([("name", f"not a read this node serves: {request.name!r}")])
        try:
            args = unpack_value(request.args) if request.args else []
        except Exception as exc:  # msgpack raises several kinds for garbage
            raise errors.invalid_argument([("args", f"not msgpack: {exc}")]) from exc
        if not isinstance(args, list):
            raise errors.invalid_argument([("args", "must be a list")])
        shard_id = request.shard_id
        host = self.node.local_shard(shard_id)
        if host is None or (request.linearizable and not host.is_leader()):
            raise errors.not_leader(shard_id, self.node.leader_address(shard_id))
        if request.linearizable:
            remaining = context.time_remaining()
            try:
                host.read_barrier().result(timeout=STEP_TIMEOUT_S if remaining is None else max(0.01, remaining))
            except Exception as exc:
                raise errors.not_leader(shard_id, self.node.leader_address(shard_id)) from exc
        try:
            if request.name == OWNERS_READ:
                if len(args) != 1 or not isinstance(args[0], list) or len(args[0]) > SUBMIT_ITEMS_MAX:
                    raise errors.invalid_argument([("args", f"[ids] with at most {SUBMIT_ITEMS_MAX} ids")])
                value = host.account_owners(args[0])
            else:
                value = host.clearing_read(request.name, args)
        except (TypeError, ValueError, OverflowError) as exc:  # arguments the read cannot take
            raise errors.invalid_argument([("args", str(exc))]) from exc
        return internal_pb2.QueryResponse(value=pack_value(plain(value)))


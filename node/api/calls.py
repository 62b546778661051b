"""What every public servicer needs around a call: its deadline, forwarding, batch limits, page tokens.

A public call is served by the node that receives it. Parts that must run where
this node does not lead go through the shard executor (node/executor.py); reads
and cross-shard groups led elsewhere are forwarded once, as the same public
call, to the leader's node, marked with a hop count (never forwarded twice) and
the one shard the receiver must serve (it never scatters again).
"""

from __future__ import annotations

import base64
import binascii
import struct
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

import grpc

from tidebank.common.limits import BATCH_ITEMS_MAX, PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX
from tidebank.node.api import access, convert, errors
from tidebank.node.api.failures import Failures
from tidebank.node.executor import ShardExecutor, all_results
from tidebank.node.outcomes import NotAppliedError
from tidebank.v1 import types_pb2

HOPS_HEADER = "x-tidebank-hops"
SHARD_HEADER = "x-tidebank-shard"  # set on forwarded calls: the one shard the receiver must serve
HOPS_MAX = 2  # a node hosting no replica asks one that does, which forwards to the leader
WAIT_DEFAULT_S = 30.0


@dataclass
class Call:
    """Context shared by the parts of one request."""

    context: grpc.ServicerContext
    hops: int
    wait_s: float
    only_shard: int | None  # a forwarded call serves one shard, never scatters again
    forwarded_for: tuple[tuple[str, str], ...] = ()  # who the caller is, for the node a part is forwarded to


def call_of(context: grpc.ServicerContext) -> Call:
    hops, only_shard = 0, None
    for key, value in context.invocation_metadata() or ():
        try:
            if key == HOPS_HEADER:
                hops = int(value)
            elif key == SHARD_HEADER:
                only_shard = int(value)
        except ValueError:
            raise errors.invalid_argument([(key, f"not an integer: {value!r}")]) from None
    return Call(context, hops, wait_of(context), only_shard, access.forwarding_metadata())


def wait_of(context: grpc.ServicerContext) -> float:
    """How long a handler may wait for its parts: the caller's deadline less a margin, at most 30 s."""
    remaining = context.time_remaining()
    return WAIT_DEFAULT_S if remaining is None else max(0.0, min(remaining - 0.05, WAIT_DEFAULT_S))


def forward(executor: ShardExecutor, call: Call, shard_id: int, stub_of: Callable[[str], object], method: str,
            request, local: Callable[[object], Future] | None = None) -> Future:
    """`local(host)` when this node leads the shard, else the same public call on its leader's node."""

    def remote(address: str) -> Future:
        if call.hops >= HOPS_MAX:
            raise NotAppliedError(f"shard {shard_id}: already forwarded {call.hops} times")
        rpc = getattr(stub_of(address), method).future(
            request, timeout=call.wait_s,
            metadata=((HOPS_HEADER, str(call.hops + 1)), (SHARD_HEADER, str(shard_id)), *call.forwarded_for))
        return _grpc_future(rpc)

    return executor.on_leader(shard_id, local, remote)


def read_part(executor: ShardExecutor, call: Call, shard_id: int, linearizable: bool, read_local: Callable,
              stub_of: Callable[[str], object], method: str, forward_request, from_response: Callable) -> Future:
    """One shard's part of a read: a future of a function producing its answer, read here (after a barrier
    when linearizable) or by the leader's node (its answer converted by `from_response`). Never raises: a
    part that cannot start fails its future, for the failure rule."""
    try:
        return executor.read(
            shard_id, linearizable, read_local,
            lambda address: _then(forward(executor, call, shard_id, stub_of, method, forward_request),
                                  from_response))
    except Exception as exc:
        return failed(exc)


def wait_reads(node, call: Call, reads: dict[int, Future]) -> dict[int, object]:
    """Every part's answer (all awaited first), or the failure the rule picks."""
    failures = Failures()
    out = {}
    for shard_id, outcome in zip(reads, all_results(list(reads.values()), call.wait_s), strict=True):
        if isinstance(outcome, BaseException):
            failures.add_part(shard_id, outcome, node.leader_address(shard_id), write=False)
        else:
            out[shard_id] = outcome()
    failures.raise_if_any()
    return out


def failed(exc: BaseException) -> Future:
    """A future that failed before it started (the failure rule reports it with the other parts)."""
    future: Future = Future()
    future.set_exception(exc)
    return future


def _then(source: Future, transform: Callable) -> Future:
    target: Future = Future()

    def done(f: Future) -> None:
        try:
            target.set_result(transform(f.result()))
        except BaseException as exc:  # noqa: BLE001 - the waiter applies the failure rule
            target.set_exception(exc)

    source.add_done_callback(done)
    return target


def _grpc_future(rpc: grpc.Future) -> Future:
    target: Future = Future()

    def done(f: grpc.Future) -> None:
        try:
            target.set_result(f.result())
        except BaseException as exc:  # noqa: BLE001 - the waiter applies the failure rule
            target.set_exception(exc)

    rpc.add_done_callback(done)
    return target


def check_batch_size(field: str, count: int) -> None:
    if count > BATCH_ITEMS_MAX:
        raise errors.invalid_argument([(field, f"at most {BATCH_ITEMS_MAX} items per request, got {count}")])


def page_limit(limit: int) -> int:
    if limit > PAGE_SIZE_MAX:
        raise errors.invalid_argument([("limit", f"at most {PAGE_SIZE_MAX}, got {limit}")])
    return limit or PAGE_SIZE_DEFAULT


def u128(value: int) -> types_pb2.U128:
    message = types_pb2.U128()
    convert.u128_to_pb(message, value)
    return message


def encode_token(layout: struct.Struct, *fields) -> str:
    """An opaque page token: the fields packed with `layout`, URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(layout.pack(*fields)).decode().rstrip("=")


def decode_token(layout: struct.Struct, token: str) -> tuple:
    """The fields of a token made by encode_token; INVALID_ARGUMENT for anything else."""
    try:
        return layout.unpack(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, struct.error, ValueError) as exc:
        raise errors.invalid_argument([("page_token", "not a token this service issued")]) from exc

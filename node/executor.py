"""Run an operation on a shard wherever its leader is: the one way every servicer and 2PC step does it.

A shard's writes and linearizable reads must go through its leader. When this
node leads the shard, an operation goes into the shard's batcher (and rides in
the next Raft entry); otherwise it goes to the leader's node over the signed
node-to-node `Internal.Submit`, where it enters that node's batcher. Either way
the caller gets a future of the per-item results, or one of the outcomes of
`node/outcomes.py` saying why there are none, so no caller has to know where the
leader was. `run` adds retries across leader changes until a deadline, for
operations that are idempotent by key (2PC steps).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import grpc

from tidebank.common.auth import AUTH_HEADER, sign
from tidebank.common.limits import BATCH_ITEMS_MAX
from tidebank.node.api import errors
from tidebank.node.ledger.clearing_records import pack_value, unpack_value
from tidebank.node.ledger.entry import pack_item
from tidebank.node.ledger.operations import OP_CLEARING, OP_COMMIT_LOCAL, OP_DECIDE, OP_PREPARE, Operation
from tidebank.node.ledger.txn_records import Decision, Vote
from tidebank.node.outcomes import NotAppliedError, OutcomeUnknownError, OverloadedError
from tidebank.v1 import internal_pb2

#: Items per Internal.Submit: one request's worth, so a forwarded part is never cut (a cut could split a
#: linked chain over two Raft entries).
SUBMIT_ITEMS_MAX = BATCH_ITEMS_MAX
WORKERS_MAX = 512  # operations run with retries at once (each mostly waits on Raft)
RETRY_DELAY_FIRST_S = 0.02
RETRY_DELAY_MAX_S = 0.5


class NodeView:
    """What the executor and the servicers need to know about the node they run on (server.Node)."""

    shard_map: Any  # routing.ShardMap

    @property
    def address(self) -> str:
        raise NotImplementedError

    def local_shard(self, shard_id: int):  # -> ShardHost | None
        raise NotImplementedError

    def leader_address(self, shard_id: int) -> str | None:
        """gRPC address of the shard's leader as seen from here."""
        raise NotImplementedError

    def replica_addresses(self, shard_id: int) -> list[str]:
        raise NotImplementedError

    def forward_address(self, shard_id: int) -> str | None:
        """Where to send work for a shard led elsewhere: its leader's address when known, else, for a shard this
        node hosts no replica of, one of its replicas in turn (that node answers NOT_LEADER naming the leader,
        and the caller's retry goes on to the next one)."""
        return self.leader_address(shard_id)

    def note_leader(self, shard_id: int, address: str | None) -> None:
        """A node that hosts the shard named its leader (None: the named one did not answer). Only a node that
        hosts no replica of the shard keeps such hints (a replica move leaves nodes without every shard)."""

    def reachable(self, address: str) -> bool:
        """Whether node-to-node traffic to `address` can pass (simulated DC faults)."""
        return True

    def internal_stub(self, address: str):  # -> internal_pb2_grpc.InternalStub
        raise NotImplementedError


def retry_delays(first_s: float = RETRY_DELAY_FIRST_S, max_s: float = RETRY_DELAY_MAX_S):
    """The one backoff policy of the node: doubling from `first_s`, capped at `max_s`."""
    delay = first_s
    while True:
        yield delay
        delay = min(delay * 2, max_s)


def result_to_pb(kind: int, result: Any) -> internal_pb2.TxnResult:
    if kind == OP_CLEARING:
        return internal_pb2.TxnResult(ok=result is not None, value=pack_value(result))
    if kind in (OP_PREPARE, OP_COMMIT_LOCAL):
        return internal_pb2.TxnResult(ok=result.prepared, failed_index=result.failed_index, code=result.code)
    if kind == OP_DECIDE:
        return internal_pb2.TxnResult(ok=result.committed, failed_index=result.failed_index, code=result.code,
                                      timestamp=result.timestamp)
    return internal_pb2.TxnResult(ok=result in (0, 1), code=int(result))  # a result code or a FINISH_* status


def result_from_pb(kind: int, message: internal_pb2.TxnResult) -> Any:
    if kind == OP_CLEARING:
        return unpack_value(message.value) if message.ok else None
    if kind in (OP_PREPARE, OP_COMMIT_LOCAL):
        return Vote(message.ok, message.failed_index, message.code)
    if kind == OP_DECIDE:
        return Decision(message.ok, message.failed_index, message.code, message.timestamp)
    return message.code


class ShardExecutor:
    """See the module docstring. One per node; thread-safe."""

    def __init__(self, node: NodeView, secret: str) -> None:
        self.node = node
        self.secret = secret.encode()
        self.pool = ThreadPoolExecutor(max_workers=WORKERS_MAX, thread_name_prefix="shard-op")

    # --- once ---------------------------------------------------------------------------------------------
    def submit(self, shard_id: int, operation: Operation, timeout_s: float) -> Future:
        """Start `operation` once on the shard's leader. Raises (or the future fails with) NotAppliedError when no
        leader can take it, OverloadedError when its queue is full, OutcomeUnknownError when it may have applied,
        errors.RequestError for a status the leader's node answered with."""
        host = self.node.local_shard(shard_id)
        if host is not None and host.is_leader():
            try:
                return host.submit(operation)
            except NotAppliedError:
                pass  # lost leadership just now: the leader is elsewhere
        address = self.node.forward_address(shard_id)
        if address is None or address == self.node.address:
            raise NotAppliedError(f"shard {shard_id} has no leader right now")
        if not self.node.reachable(address):
            raise NotAppliedError(f"shard {shard_id}: its leader {address} is cut off from here")
        if len(operation.items) > SUBMIT_ITEMS_MAX:
            raise ValueError(f"{len(operation.items)} items exceed SUBMIT_ITEMS_MAX")
        request = internal_pb2.InternalSubmitRequest(shard_id=shard_id, kind=operation.kind,
                                                     items=[pack_item(operation.kind, i) for i in operation.items])
        rpc = self._call_future(address, "Submit", request, timeout_s)
        result: Future = Future()
        kind, count = operation.kind, len(operation.items)

        def done(call: grpc.Future) -> None:
            try:
                response = call.result()
            except grpc.RpcError as exc:
                failure = _remote_failure(shard_id, address, exc)
                if host is None:
                    self._learn_leader(shard_id, address, exc, failure)
                result.set_exception(failure)
                return
            if len(response.results) != count:
                result.set_exception(OutcomeUnknownError(
                    f"shard {shard_id} via {address}: {len(response.results)} results for {count} items"))
                return
            result.set_result([result_from_pb(kind, m) for m in response.results])

        rpc.add_done_callback(done)
        return result

    def wait(self, future: Future, timeout_s: float) -> list:
        """The results of a submitted operation; a timeout means it may still apply."""
        try:
            return future.result(timeout=max(0.0, timeout_s))
        except FutureTimeout as exc:
            raise OutcomeUnknownError("no answer before the deadline") from exc

    # --- until a deadline -------------------------------------------------------------------------------
    def run(self, shard_id: int, operation: Operation, deadline: float) -> list:
        """Run an operation that is idempotent by key, retried across leader changes until `deadline`
        (monotonic). Raises the last failure when time runs out: OutcomeUnknownError if any attempt may have
        applied, else NotAppliedError. A status the leader's node answered with (errors.RequestError) is final
        and raised at once."""
        last: Exception | None = None
        may_have_applied = False
        for delay in retry_delays():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                return self.wait(self.submit(shard_id, operation, remaining), remaining)
            except (NotAppliedError, OverloadedError) as exc:
                last = exc
            except OutcomeUnknownError as exc:
                last, may_have_applied = exc, True
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        if may_have_applied:
            raise OutcomeUnknownError(f"shard {shard_id}: {last}")
        raise NotAppliedError(f"shard {shard_id}: {last or 'no time left'}")

    def run_async(self, shard_id: int, operation: Operation, deadline: float) -> Future:
        return self.pool.submit(self.run, shard_id, operation, deadline)

    # --- reads and coordinator tasks ----------------------------------------------------------------------
    def on_leader(self, shard_id: int, local: Callable[[Any], Future] | None,
                  remote: Callable[[str], Future]) -> Future:
        """`local(host)` when this node leads the shard (None: never locally), else `remote(address)` on the node
        that leads it (or, when this node hosts no replica and knows no leader, on one that hosts one: it
        forwards or names the leader). Raises NotAppliedError when there is nowhere to go."""
        host = self.node.local_shard(shard_id)
        if local is not None and host is not None and host.is_leader():
            try:
                return local(host)
            except (NotAppliedError, OverloadedError):
                pass  # lost leadership meanwhile, or its queue is full: let the leader's node answer
        address = self.node.forward_address(shard_id)
        if address is None or address == self.node.address:
            raise NotAppliedError(f"shard {shard_id} has no leader right now")
        if not self.node.reachable(address):
            raise NotAppliedError(f"shard {shard_id}: its leader {address} is cut off from here")
        return remote(address)

    def read(self, shard_id: int, linearizable: bool, read_local: Callable[[Any], Any],
             read_remote: Callable[[str], Future]) -> Future:
        """A future of a zero-argument function that produces the read's answer.

        Stale reads use the local replica when there is one. Linearizable ones run after a barrier through the
        log of the local leader, or on the leader's node (`read_remote(address)`, a future of its answer). The
        local read itself runs in the thread that calls the returned function: the barrier's future resolves
        on the Raft thread, which must never do LMDB reads or conversions."""
        host = self.node.local_shard(shard_id)
        if host is not None and not linearizable:
            return _done(lambda: read_local(host))
        return self.on_leader(shard_id,
                              lambda leader: _then(leader.read_barrier(), lambda _: (lambda: read_local(leader))),
                              lambda address: _then(read_remote(address), lambda response: (lambda: response)))

    # --- plumbing -----------------------------------------------------------------------------------------
    def call(self, address: str, method: str, request, timeout_s: float):
        """A signed node-to-node call (blocking)."""
        body = request.SerializeToString()
        stub = self.node.internal_stub(address)
        return getattr(stub, method)(request, timeout=max(0.05, timeout_s),
                                     metadata=((AUTH_HEADER, sign(self.secret, method, body)),))

    def _call_future(self, address: str, method: str, request, timeout_s: float) -> grpc.Future:
        body = request.SerializeToString()
        stub = self.node.internal_stub(address)
        return getattr(stub, method).future(request, timeout=max(0.05, timeout_s),
                                            metadata=((AUTH_HEADER, sign(self.secret, method, body)),))

    def _learn_leader(self, shard_id: int, address: str, exc: grpc.RpcError, failure: Exception) -> None:
        if isinstance(failure, NotAppliedError):
            reason, metadata = errors.info_of(errors.from_rpc_error(exc))
            self.node.note_leader(shard_id, metadata.get("leader_address") if reason == "NOT_LEADER" else None)
        elif isinstance(failure, OutcomeUnknownError):
            self.node.note_leader(shard_id, None)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def _remote_failure(shard_id: int, address: str, exc: grpc.RpcError) -> Exception:
    """A failed Internal.Submit as a node outcome: only an answer that says so means "not applied"."""
    passed_on = errors.from_rpc_error(exc)
    reason = errors.reason_of(passed_on)
    code = exc.code() if hasattr(exc, "code") else None
    if reason in ("NOT_LEADER", "NO_LEADER"):
        return NotAppliedError(f"shard {shard_id} via {address}: {passed_on}")
    if reason == "OVERLOADED":
        return OverloadedError(f"shard {shard_id} via {address}: {passed_on}")
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return passed_on  # never reached the shard
    if code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
        return OutcomeUnknownError(f"shard {shard_id} via {address}: {code.name}")
    if reason == "OUTCOME_UNKNOWN":
        return OutcomeUnknownError(f"shard {shard_id} via {address}: {passed_on}")
    return passed_on


def _done(value: Any) -> Future:
    future: Future = Future()
    future.set_result(value)
    return future


def _then(source: Future, transform: Callable[[Any], Any]) -> Future:
    """A future of transform(source's result); transform must be cheap: it may run on the Raft tick thread."""
    target: Future = Future()

    def done(f: Future) -> None:
        try:
            target.set_result(transform(f.result()))
        except BaseException as exc:  # noqa: BLE001 - handed to the waiter
            target.set_exception(exc)

    source.add_done_callback(done)
    return target


def all_results(futures: Sequence[Future], timeout_s: float) -> list[Any]:
    """Wait for every future (never leaving one unawaited because another failed): results or exceptions."""
    deadline = time.monotonic() + timeout_s
    out: list[Any] = []
    for future in futures:
        try:
            out.append(future.result(timeout=max(0.0, deadline - time.monotonic())))
        except BaseException as exc:  # noqa: BLE001 - the caller applies the failure rule
            out.append(exc)
    return out

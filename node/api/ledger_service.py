"""The Ledger gRPC servicer: validate, route to shard leaders, wait for every part, translate.

Nothing about money is decided here: the state machine decides every per-item
code, the router decides placement. This module checks the request's shape,
splits it by shard, runs each part on its shard's leader through the shard
executor (cross-shard groups on their coordinator's leader), waits for every
part and answers by the one failure rule of api/failures.py.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future

from tidebank.common.records import (
    ACCOUNT_FLAGS_OFFSET,
    ACCOUNT_SIZE,
    TRANSFER_DEBIT_ACCOUNT_ID,
    TRANSFER_FLAGS_OFFSET,
    TRANSFER_SIZE,
    flags_of,
    u128_of,
)
from tidebank.common.tls import TlsError, check_principal_name
from tidebank.node.api import access, convert, errors
from tidebank.node.api.calls import (
    Call,
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
from tidebank.node.api.routing import (
    CrossShardGroup,
    chains,
    route_accounts,
    route_packed_accounts,
    route_packed_transfers,
    route_transfers,
    split_records,
)
from tidebank.node.executor import NodeView, ShardExecutor, all_results
from tidebank.node.ledger.operations import (
    OP_CREATE_ACCOUNTS,
    OP_CREATE_OWNED_ACCOUNTS,
    OP_CREATE_TRANSFERS,
    Operation,
)
from tidebank.node.ledger.records import OwnedAccount, unpack_account
from tidebank.node.ledger.results import CreateAccountResult, CreateTransferResult
from tidebank.node.txn.coordinator import Group
from tidebank.v1 import ledger_pb2, ledger_pb2_grpc

log = logging.getLogger(__name__)

# Items refused because a slot they name is moving (or has moved and this node's map is older): nothing
# changed, so the node that took the call sends their chains again, with the map it has by then, until the
# call's deadline; the caller sees the codes only if the move outlasts it.
_MOVING_ACCOUNT = frozenset((int(CreateAccountResult.slot_moving), int(CreateAccountResult.slot_moved)))
_MOVING_TRANSFER = frozenset((int(CreateTransferResult.slot_moving), int(CreateTransferResult.slot_moved)))
SLOT_RETRY_FIRST_S = 0.02
SLOT_RETRY_MAX_S = 0.25
SLOT_RETRY_MARGIN_S = 0.1  # time kept for the last attempt's answer

LINEARIZABLE = ledger_pb2.READ_CONSISTENCY_LINEARIZABLE


class LedgerService(ledger_pb2_grpc.LedgerServicer):
    def __init__(self, node: NodeView, executor: ShardExecutor, coordinator=None, coordinator_pool=None,
                 owners: Owners | None = None):
        self.node = node
        self.executor = executor
        self.owners = owners or Owners(node, executor)  # whose accounts are whose, for account holders' calls
        self.coordinator = coordinator  # runs cross-shard groups whose coordinator shard this node leads
        self.coordinator_pool = coordinator_pool

    # --- writes -----------------------------------------------------------------------------------------
    def CreateAccounts(self, request: ledger_pb2.CreateAccountsRequest, context) -> ledger_pb2.CreateAccountsResponse:
        results = self._create_accounts(request, context)
        if call_of(context).hops == 0 and _MOVING_ACCOUNT.intersection(results):
            if request.accounts_packed:
                records = split_records(request.accounts_packed, ACCOUNT_SIZE)
                flags = [flags_of(r, ACCOUNT_FLAGS_OFFSET) for r in records]
                subset = lambda ps: ledger_pb2.CreateAccountsRequest(  # noqa: E731
                    accounts_packed=b"".join(records[p] for p in ps), owner=request.owner)
            else:
                flags = [m.flags for m in request.accounts]
                subset = lambda ps: ledger_pb2.CreateAccountsRequest(  # noqa: E731
                    accounts=[request.accounts[p] for p in ps], owner=request.owner)
            results = _retry_slot_moves(context, list(results), flags, _MOVING_ACCOUNT,
                                        lambda ps: self._create_accounts(subset(ps), context))
        return ledger_pb2.CreateAccountsResponse(results=results)

    def _create_accounts(self, request: ledger_pb2.CreateAccountsRequest, context) -> list[int]:
        owner = _owner_of(access.current(), request.owner)
        if request.accounts_packed:
            records = _records(request, "accounts", ACCOUNT_SIZE)
            routed = (route_packed_accounts(records, self.node.shard_map) if owner is None else
                      route_accounts([unpack_account(r) for r in records], self.node.shard_map))
        else:
            check_batch_size("accounts", len(request.accounts))
            routed = route_accounts([convert.account_from_pb(m) for m in request.accounts], self.node.shard_map)
        call = call_of(context)
        parts = {shard_id: self._submit(shard_id, _accounts_operation(sub.items, owner), call)
                 for shard_id, sub in routed.sub_batches.items()}
        return routed.merge(self._wait(call, parts))

    def CreateTransfers(self, request: ledger_pb2.CreateTransfersRequest,
                        context) -> ledger_pb2.CreateTransfersResponse:
        results = self._create_transfers(request, context)
        if call_of(context).hops == 0 and _MOVING_TRANSFER.intersection(results):
            if request.transfers_packed:
                records = split_records(request.transfers_packed, TRANSFER_SIZE)
                flags = [flags_of(r, TRANSFER_FLAGS_OFFSET) for r in records]
                subset = lambda ps: ledger_pb2.CreateTransfersRequest(  # noqa: E731
                    transfers_packed=b"".join(records[p] for p in ps))
            else:
                flags = [m.flags for m in request.transfers]
                subset = lambda ps: ledger_pb2.CreateTransfersRequest(  # noqa: E731
                    transfers=[request.transfers[p] for p in ps])
            results = _retry_slot_moves(context, list(results), flags, _MOVING_TRANSFER,
                                        lambda ps: self._create_transfers(subset(ps), context))
        return ledger_pb2.CreateTransfersResponse(results=results)

    def _create_transfers(self, request: ledger_pb2.CreateTransfersRequest, context) -> list[int]:
        grant = access.current()
        if request.transfers_packed:
            records = _records(request, "transfers", TRANSFER_SIZE)
            if not grant.everything:
                self._require_debits_owned(grant, [u128_of(r[TRANSFER_DEBIT_ACCOUNT_ID]) for r in records], context)
            routed = route_packed_transfers(records, self.node.shard_map)
        else:
            check_batch_size("transfers", len(request.transfers))
            transfers = [convert.transfer_from_pb(m) for m in request.transfers]
            if not grant.everything:
                self._require_debits_owned(grant, [t.debit_account_id for t in transfers], context)
            routed = route_transfers(transfers, self.node.shard_map)
        call = call_of(context)
        parts = {shard_id: self._submit(shard_id, Operation(OP_CREATE_TRANSFERS, sub.items), call)
                 for shard_id, sub in routed.sub_batches.items()}
        groups = self._cross_shard(call, routed.groups, request)
        failures = Failures()
        shard_codes = self._wait(call, parts, failures, raise_now=False)
        group_codes = self._wait_groups(call, routed.groups, groups, failures)
        failures.raise_if_any()  # only after every part has been awaited
        return routed.merge(shard_codes, group_codes)

    def _require_debits_owned(self, grant: access.Grant, debit_account_ids: list[int], context) -> None:
        """An account holder moves money only out of its own accounts (a post or void names its pending
        transfer's debit account, which the rules check against the pending transfer)."""
        if any(a == 0 for a in debit_account_ids):
            raise access.denied(grant.principal, grant.permission,
                                "an account holder names the debit account of every transfer (also to post or void)")
        self.owners.require_owned(grant, debit_account_ids, "debit account", wait_of(context))

    def _submit(self, shard_id: int, operation: Operation, call: Call) -> Future:
        try:
            return self.executor.submit(shard_id, operation, call.wait_s)
        except Exception as exc:  # nothing started: the failure rule reports it with the others
            return failed(exc)

    def _wait(self, call: Call, parts: dict[int, Future], failures: Failures | None = None, *,
              raise_now: bool = True) -> dict[int, list[int]]:
        """Every part's codes; failures go to `failures` (raised here unless `raise_now` is False)."""
        failures = failures if failures is not None else Failures()
        results: dict[int, list[int]] = {}
        for shard_id, outcome in zip(parts, all_results(list(parts.values()), call.wait_s), strict=True):
            if isinstance(outcome, BaseException):
                failures.add_part(shard_id, outcome, self.node.leader_address(shard_id), write=True)
            else:
                results[shard_id] = outcome
        if raise_now:
            failures.raise_if_any()
        return results

    def _cross_shard(self, call: Call, groups: list[CrossShardGroup],
                     request) -> dict[int, tuple[list[int], Future, list[int]]]:
        """Per coordinator shard: the indexes of its groups and a future of their outcomes, run by this node's
        coordinator when it leads that shard, else forwarded there as one request."""
        by_coordinator: dict[int, list[int]] = {}
        for index, group in enumerate(groups):
            by_coordinator.setdefault(group.coordinator_shard, []).append(index)
        batches = {}
        for shard_id, indexes in by_coordinator.items():
            def local(host, shard_id=shard_id, indexes=indexes) -> Future:
                if self.coordinator is None:
                    raise errors.internal("this node runs no coordinator")
                return self.coordinator_pool.submit(
                    self.coordinator.run_many, [Group(list(groups[i].items), shard_id) for i in indexes], call.wait_s)

            positions = [p for i in indexes for p in groups[i].positions]
            sizes = [len(groups[i].positions) for i in indexes]
            if request.transfers_packed:
                raw = request.transfers_packed
                forwarded = ledger_pb2.CreateTransfersRequest(transfers_packed=b"".join(
                    raw[p * TRANSFER_SIZE:(p + 1) * TRANSFER_SIZE] for p in positions))
            else:
                forwarded = ledger_pb2.CreateTransfersRequest(transfers=[request.transfers[p] for p in positions])
            try:
                future = forward(self.executor, call, shard_id, self.node.ledger_stub, "CreateTransfers",
                                 forwarded, local)
            except Exception as exc:
                future = failed(exc)
            batches[shard_id] = (indexes, future, sizes)
        return batches

    def _wait_groups(self, call: Call, groups: list[CrossShardGroup], batches: dict,
                     failures: Failures) -> list[list[int]]:
        """Each group's codes in group order; failures go to `failures`."""
        codes: list[list[int] | None] = [None] * len(groups)
        futures = [future for _, future, _ in batches.values()]
        for (shard_id, (indexes, _, sizes)), outcome in zip(batches.items(), all_results(futures, call.wait_s + 1.0),
                                                            strict=True):
            if isinstance(outcome, BaseException):
                failures.add_part(shard_id, outcome, self.node.leader_address(shard_id), write=True)
                continue
            if isinstance(outcome, ledger_pb2.CreateTransfersResponse):  # answered by the coordinator's node
                outcome = _split(list(outcome.results), sizes)
            for index, group_outcome in zip(indexes, outcome, strict=True):
                if isinstance(group_outcome, BaseException):
                    failures.add_part(shard_id, group_outcome, self.node.leader_address(shard_id), write=True)
                else:
                    codes[index] = group_outcome
        return codes  # type: ignore[return-value]

    # --- reads ------------------------------------------------------------------------------------------
    def LookupAccounts(self, request: ledger_pb2.LookupAccountsRequest, context) -> ledger_pb2.LookupAccountsResponse:
        check_batch_size("ids", len(request.ids))
        ids = [convert.u128_from_pb(m) for m in request.ids]
        self.owners.require_owned(access.current(), ids, "account", wait_of(context))
        found = self._lookup(call_of(context), ids, request.consistency, "LookupAccounts",
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
        check_batch_size("ids", len(request.ids))
        ids = [convert.u128_from_pb(m) for m in request.ids]
        # A transfer lives on its debit account's shard, which its id does not tell: ask every shard.
        found = self._lookup(call_of(context), ids, request.consistency, "LookupTransfers",
                             lambda host, part: host.lookup_transfers(part),
                             lambda response: [convert.transfer_from_pb(m) for m in response.transfers],
                             ledger_pb2.LookupTransfersRequest, every_shard=True)
        self.owners.require_party(access.current(), {k: (t.debit_account_id, t.credit_account_id)
                                                     for k, t in found.items()}, "transfer", wait_of(context))
        response = ledger_pb2.LookupTransfersResponse()
        for key in ids:
            if key in found:
                convert.transfer_to_pb(found[key], response.transfers.add())
        return response

    def _lookup(self, call: Call, ids: Sequence[int], consistency: int, method: str,
                read_local: Callable, from_response: Callable, request_cls, every_shard: bool = False) -> dict:
        if every_shard:
            shards = [call.only_shard] if call.only_shard is not None else self.node.shard_map.shard_ids
            by_shard = {shard_id: list(ids) for shard_id in shards}
        else:
            by_shard: dict[int, list[int]] = {}
            for key in ids:
                by_shard.setdefault(self.node.shard_map.shard_of(key), []).append(key)
        reads = {shard_id: self._read(call, shard_id, consistency, method,
                                      lambda host, part=part: read_local(host, part),
                                      request_cls(ids=[u128(k) for k in part], consistency=consistency),
                                      from_response)
                 for shard_id, part in by_shard.items()}
        found = {}
        for records in self._wait_reads(call, reads).values():
            for record in records:
                found[record.id] = record
        return found

    def _read(self, call: Call, shard_id: int, consistency: int, method: str, read_local: Callable,
              forward_request, from_response: Callable) -> Future:
        return read_part(self.executor, call, shard_id, consistency == LINEARIZABLE, read_local,
                         self.node.ledger_stub, method, forward_request, from_response)

    def _wait_reads(self, call: Call, reads: dict[int, Future]) -> dict[int, object]:
        return wait_reads(self.node, call, reads)

    def GetAccountTransfers(self, request: ledger_pb2.GetAccountTransfersRequest, context
                            ) -> ledger_pb2.GetAccountTransfersResponse:
        limit = page_limit(request.limit)
        if request.timestamp_max and request.timestamp_min > request.timestamp_max:
            raise errors.invalid_argument([("timestamp_min", "must not exceed timestamp_max")])
        account_id = convert.u128_from_pb(request.account_id)
        self.owners.require_owned(access.current(), [account_id], "account", wait_of(context))
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
        forwarded = ledger_pb2.GetAccountTransfersRequest()
        forwarded.CopyFrom(request)
        call = call_of(context)
        read = self._read(call, shard_id, request.consistency, "GetAccountTransfers",
                          lambda host: host.get_account_transfers(account_id, **query), forwarded, lambda r: r)
        result = self._wait_reads(call, {shard_id: read})[shard_id]
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


def _owner_of(grant: access.Grant, named: str) -> str | None:
    """Who the new accounts belong to: an account holder's are its own, the platform's whoever it names."""
    if not grant.everything:
        if named and named != grant.principal.name:
            raise access.denied(grant.principal, grant.permission,
                                f"an account holder creates accounts for itself, not for {errors.clip(named, 64)!r}")
        return grant.principal.name
    if named:
        try:
            check_principal_name(named)
        except TlsError as exc:
            raise errors.invalid_argument([("owner", str(exc))]) from None
        return named
    return None


def _accounts_operation(items: list, owner: str | None) -> Operation:
    if owner is None:
        return Operation(OP_CREATE_ACCOUNTS, items)
    return Operation(OP_CREATE_OWNED_ACCOUNTS, [OwnedAccount(owner, a) for a in items])


def _records(request, field: str, size: int) -> list[bytes]:
    """The records of a request's packed field, checked: whole records, within the batch limit, and not
    mixed with the repeated field."""
    if len(getattr(request, field)):
        raise errors.invalid_argument([(f"{field}_packed", f"give either {field} or {field}_packed, not both")])
    try:
        records = split_records(getattr(request, f"{field}_packed"), size)
    except ValueError as exc:
        raise errors.invalid_argument([(f"{field}_packed", str(exc))]) from exc
    check_batch_size(f"{field}_packed", len(records))
    return records


def _split(values: list[int], sizes: list[int]) -> list[list[int]]:
    out, start = [], 0
    for size in sizes:
        out.append(values[start:start + size])
        start += size
    if start != len(values):
        raise errors.internal("a forwarded answer has a different number of items")
    return out


_PAGE_TOKEN = struct.Struct(">16sBQ")


def _filter_bits(debits: bool, credits: bool, reversed_: bool) -> int:
    return int(debits) | int(credits) << 1 | int(reversed_) << 2


def _encode_page_token(account_id: int, debits: bool, credits: bool, reversed_: bool, bound: int) -> str:
    return encode_token(_PAGE_TOKEN, account_id.to_bytes(16, "big"), _filter_bits(debits, credits, reversed_), bound)


def _decode_page_token(token: str, account_id: int, debits: bool, credits: bool, reversed_: bool) -> int:
    token_account, bits, bound = decode_token(_PAGE_TOKEN, token)
    if token_account != account_id.to_bytes(16, "big") or bits != _filter_bits(debits, credits, reversed_):
        raise errors.invalid_argument([("page_token", "belongs to a different query (account or filters)")])
    return bound


def _retry_slot_moves(context, results: list[int], flags: Sequence[int], moving: frozenset[int],
                      resubmit: Callable[[list[int]], list[int]]) -> list[int]:
    """Send the chains with an item refused for a moving slot again (backing off) until none is or the call's
    deadline is near. A resubmission that fails keeps the codes so far: what was applied stays reported."""
    delay = SLOT_RETRY_FIRST_S
    spans = chains(flags, 1)  # LINKED is bit 0 for accounts and transfers
    while True:
        refused = {p for p, code in enumerate(results) if code in moving}
        if not refused or wait_of(context) < delay + SLOT_RETRY_MARGIN_S:
            return results
        time.sleep(delay)
        delay = min(delay * 2, SLOT_RETRY_MAX_S)
        positions = [p for span in spans if any(q in refused for q in span) for p in span]
        try:
            codes = resubmit(positions)
        except Exception:  # noqa: BLE001 - the first answer stands; the caller retries by id
            log.info("resubmitting %d items refused for a moving slot failed", len(positions), exc_info=True)
            return results
        for p, code in zip(positions, codes, strict=True):
            results[p] = code

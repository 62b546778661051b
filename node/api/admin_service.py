"""The Admin servicer: shard map, node status, simulated link faults, per-ledger totals for `tidebank audit`,
the admin log."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict

from google.rpc import code_pb2

from tidebank.common.topology import TopologyError
from tidebank.node import membership
from tidebank.node.api import convert, errors
from tidebank.node.api.admin_log import ADMIN_LOG_PAGE_MAX, AdminLog
from tidebank.node.api.calls import wait_of
from tidebank.node.executor import NodeView
from tidebank.node.ledger import slot_moves
from tidebank.node.ledger.clearing_records import pack_value
from tidebank.node.ledger.operations import OP_SLOT_MOVES, Operation
from tidebank.node.links import LinkFaults, LinkTable, validate_link_faults
from tidebank.node.outcomes import ApplyFailedError, NotAppliedError, OutcomeUnknownError, OverloadedError
from tidebank.node.raft.replica import MembershipBusyError, PartnerAnsweringError, ReadNotLeaderError
from tidebank.v1 import admin_pb2

log = logging.getLogger(__name__)

SHARD_IDS_MAX = 4096  # a cluster has far fewer shards; more ids is a malformed request
TOPOLOGY_CHARS_MAX = 1 << 20  # a topology of thousands of nodes and shards is far smaller
# An EVICT needs this long without an answer from the replica to the leader (which must have led as long): far
# beyond the leader's own fallback timeout (1 s), so a replica that is only slow or briefly cut off is not taken
EVICT_SILENCE_S = 5.0
SLOT_MOVE_COMMAND_BYTES_MAX = 4 << 20  # an IMPORT page of PAGE_RECORDS_MAX records is well under 1 MB


class AdminService:
    """The Admin service (registered through the same raw-bytes handlers): shard map, node status,
    the simulated link faults (links.py) and per-ledger totals for `tidebank audit`."""

    def __init__(self, node_status: Callable[[], admin_pb2.NodeStatus],
                 shard_map: Callable[[], admin_pb2.ShardMap], *, node: NodeView | None = None,
                 link_faults: LinkFaults | None = None, dcs: Sequence[str] = (), admin_log: AdminLog | None = None):
        self._admin_log = admin_log
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

    def GetAdminLog(self, request: admin_pb2.GetAdminLogRequest, context) -> admin_pb2.AdminLog:
        if request.limit > ADMIN_LOG_PAGE_MAX:
            raise errors.invalid_argument([("limit", f"at most {ADMIN_LOG_PAGE_MAX}, got {request.limit}")])
        if self._admin_log is None:
            return admin_pb2.AdminLog()
        records, next_seq = self._admin_log.page(request.after_seq, request.limit)
        return admin_pb2.AdminLog(records=[admin_pb2.AdminLogRecord(**asdict(r)) for r in records],
                                  next_seq=next_seq)

    # --- membership (cluster/membership.py drives it; node/membership.py applies it) -------------------------
    def ApplyTopology(self, request: admin_pb2.ApplyTopologyRequest, context) -> admin_pb2.ApplyTopologyResponse:
        node = self._require_node()
        if len(request.topology_toml) > TOPOLOGY_CHARS_MAX:
            raise errors.invalid_argument([("topology_toml", f"at most {TOPOLOGY_CHARS_MAX} characters")])
        try:
            topology = membership.parse_pushed(request.topology_toml, node.topology.secret)
            version = node.apply_topology(topology)
        except TopologyError as exc:
            raise errors.invalid_argument([("topology_toml", str(exc))]) from exc
        return admin_pb2.ApplyTopologyResponse(shard_map_version=version)

    def ChangeMembership(self, request: admin_pb2.ChangeMembershipRequest,
                         context) -> admin_pb2.ChangeMembershipResponse:
        """Only for a replica the topology this node runs has joining (ADD) or has left or leaving (REMOVE), so
        that no call can make a voter of a node that holds no replica, or take away a steady one; EVICT takes
        away a steady one only while its replacement is joining and only if it has not answered the leader for
        EVICT_SILENCE_S (a dead node's replica, replaced without ever needing the new one for a quorum)."""
        node = self._require_node()
        requests = admin_pb2.ChangeMembershipRequest
        actions = {requests.ADD: "add", requests.REMOVE: "rem", requests.EVICT: "rem"}
        action = actions.get(request.action)
        if action is None:
            raise errors.invalid_argument([("action", "ADD, REMOVE or EVICT")])
        evict = request.action == requests.EVICT
        try:
            shard = node.topology.shard(request.shard_id)
        except KeyError:
            raise errors.invalid_argument([("shard_id", f"no shard {request.shard_id}")]) from None
        if action == "add" and request.node not in shard.joining:
            raise errors.failed_precondition(
                f"shard {shard.shard_id}: {request.node!r} is not joining in topology "
                f"v{node.topology.shard_map_version}",
                [("MEMBERSHIP", request.node, "push the topology that makes it joining first")])
        if evict and (request.node not in shard.replicas or not shard.joining):
            raise errors.failed_precondition(
                f"shard {shard.shard_id}: {request.node!r} is not a steady replica with a replacement joining in "
                f"topology v{node.topology.shard_map_version}",
                [("MEMBERSHIP", request.node, "stage its replacement (joining) first")])
        if action == "rem" and not evict and request.node in shard.replicas + shard.joining:
            raise errors.failed_precondition(
                f"shard {shard.shard_id}: {request.node!r} is still a steady or joining replica in topology "
                f"v{node.topology.shard_map_version}",
                [("MEMBERSHIP", request.node, "push the topology that makes it leaving first")])
        host = node.local_shard(shard.shard_id)
        if host is None or not host.is_leader():
            raise errors.not_leader(shard.shard_id, node.leader_address(shard.shard_id))
        try:
            changed = host.change_membership(action, request.node, silent_for_s=EVICT_SILENCE_S if evict else None
                                             ).result(timeout=wait_of(context))
        except ReadNotLeaderError as exc:
            raise errors.not_leader(shard.shard_id, node.leader_address(shard.shard_id)) from exc
        except PartnerAnsweringError as exc:
            # FAILED_PRECONDITION: not dead, so not to be evicted; the driver then adds the replacement first
            raise errors.retryable("PARTNER_ANSWERING", str(exc), code=code_pb2.FAILED_PRECONDITION,
                                   retry_after_ms=1000, shard_id=shard.shard_id, node=request.node) from exc
        except MembershipBusyError as exc:
            raise errors.retryable("MEMBERSHIP_BUSY", str(exc), code=code_pb2.ABORTED, retry_after_ms=200,
                                   shard_id=shard.shard_id) from exc
        except FutureTimeout as exc:
            raise errors.outcome_unknown(shard.shard_id, "the membership change was not committed in time") from exc
        return admin_pb2.ChangeMembershipResponse(members=host.current_members(), changed=changed)

    # --- slot moves (cluster/slot_moves.py drives them; node/ledger/slot_moves.py applies them) ---------------
    def SlotMoveStep(self, request: admin_pb2.SlotMoveStepRequest, context) -> admin_pb2.SlotMoveStepResponse:
        """One slot-move command through the shard's log, on its leader. The state machine checks the command
        (a malformed one is rolled back and answered `failed`); here only its envelope."""
        node = self._require_node()
        if len(request.command) > SLOT_MOVE_COMMAND_BYTES_MAX:
            raise errors.invalid_argument([("command", f"at most {SLOT_MOVE_COMMAND_BYTES_MAX} bytes")])
        try:
            command = slot_moves.unpack_command(request.command)
        except ValueError as exc:
            raise errors.invalid_argument([("command", str(exc))]) from exc
        host = self._leader_host(node, request.shard_id)
        try:
            (result,) = host.submit(Operation(OP_SLOT_MOVES, [command])).result(timeout=wait_of(context))
        except NotAppliedError as exc:
            raise errors.not_leader(request.shard_id, node.leader_address(request.shard_id)) from exc
        except (FutureTimeout, OutcomeUnknownError) as exc:
            raise errors.outcome_unknown(request.shard_id, "the slot-move step was not applied in time") from exc
        if result is None:
            return admin_pb2.SlotMoveStepResponse(failed=True)
        return admin_pb2.SlotMoveStepResponse(result=int(result))

    def ExportSlots(self, request: admin_pb2.ExportSlotsRequest, context) -> admin_pb2.ExportSlotsResponse:
        node = self._require_node()
        if not 0 < request.records_max <= slot_moves.PAGE_RECORDS_MAX:
            raise errors.invalid_argument([("records_max", f"1..{slot_moves.PAGE_RECORDS_MAX}")])
        if len(request.after) > 64:
            raise errors.invalid_argument([("after", "at most 64 bytes")])
        host = self._leader_host(node, request.shard_id)
        try:
            host.read_barrier().result(timeout=wait_of(context))
        except (FutureTimeout, NotAppliedError, OutcomeUnknownError, ApplyFailedError) as exc:
            raise errors.not_leader(request.shard_id, node.leader_address(request.shard_id)) from exc
        cursor = (request.phase, request.after) if request.resume else None
        try:
            page = host.export_slots(convert.u128_from_pb(request.move_id), cursor, request.records_max)
        except ValueError as exc:
            raise errors.invalid_argument([("phase", str(exc))]) from exc
        response = admin_pb2.ExportSlotsResponse(records=pack_value([list(r) for r in page.records]),
                                                 last=page.cursor is None, refusal=int(page.refusal))
        if page.cursor is not None:
            response.phase, response.after = page.cursor
        return response

    def _leader_host(self, node, shard_id: int):
        if shard_id not in node.shard_map.shard_ids:
            raise errors.invalid_argument([("shard_id", f"no shard {shard_id}")])
        host = node.local_shard(shard_id)
        if host is None or not host.is_leader():
            raise errors.not_leader(shard_id, node.leader_address(shard_id))
        return host

    def _require_node(self):
        if self._node is None:
            raise errors.internal("this node serves no shards")
        return self._node

    # --- audit ---------------------------------------------------------------------------------------------
    def GetLedgerTotals(self, request: admin_pb2.GetLedgerTotalsRequest, context) -> admin_pb2.LedgerTotals:
        """Totals of the requested shards (each must be led here) or of every shard led here, each
        read after a barrier through the shard's log (linearizable). Without explicit shard ids a
        shard whose leadership moves meanwhile is left out: the caller asks its new leader."""
        node = self._node
        if node is None:
            raise errors.internal("this node serves no shards")
        if len(request.shard_ids) > SHARD_IDS_MAX:
            raise errors.invalid_argument([("shard_ids", f"at most {SHARD_IDS_MAX}, got {len(request.shard_ids)}")])
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
                barriers[shard_id] = (host, host.read_barrier())
            except (NotAppliedError, OverloadedError) as exc:
                if explicit:
                    raise errors.not_leader(shard_id, node.leader_address(shard_id)) from exc
        response = admin_pb2.LedgerTotals()
        for shard_id, (host, barrier) in barriers.items():
            try:
                barrier.result(timeout=wait_of(context))
            except (FutureTimeout, NotAppliedError, OutcomeUnknownError, ApplyFailedError) as exc:
                if explicit:
                    raise errors.retryable("NO_LEADER", f"shard {shard_id}: read not confirmed by a leader in time",
                                           shard_id=shard_id) from exc
                continue
            _shard_totals_to_pb(shard_id, host.audit_totals(), response.shards.add())
        return response


_LEDGER_TOTAL_FIELDS = [f.name for f in admin_pb2.LedgerTotal.DESCRIPTOR.fields if f.name != "ledger"]
_ESCROW_MONEY_FIELDS = [f.name for f in admin_pb2.EscrowTotal.DESCRIPTOR.fields if f.message_type is not None]
_CLEARING_FIELDS = [f.name for f in admin_pb2.ClearingTotal.DESCRIPTOR.fields if f.name != "ledger"]
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
    for ledger, sums in sorted(totals.get("clearing", {}).items()):
        book = target.clearing.add(ledger=ledger)
        for name in _CLEARING_FIELDS:
            setattr(book, name, str(sums.get(name, 0)))

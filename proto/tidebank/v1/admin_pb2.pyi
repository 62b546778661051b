from tidebank.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SlotMoveStepRequest(_message.Message):
    __slots__ = ("shard_id", "command")
    SHARD_ID_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    shard_id: int
    command: bytes
    def __init__(self, shard_id: _Optional[int] = ..., command: _Optional[bytes] = ...) -> None: ...

class SlotMoveStepResponse(_message.Message):
    __slots__ = ("failed", "result")
    FAILED_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    failed: bool
    result: int
    def __init__(self, failed: _Optional[bool] = ..., result: _Optional[int] = ...) -> None: ...

class ExportSlotsRequest(_message.Message):
    __slots__ = ("shard_id", "move_id", "resume", "phase", "after", "records_max")
    SHARD_ID_FIELD_NUMBER: _ClassVar[int]
    MOVE_ID_FIELD_NUMBER: _ClassVar[int]
    RESUME_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    RECORDS_MAX_FIELD_NUMBER: _ClassVar[int]
    shard_id: int
    move_id: _types_pb2.U128
    resume: bool
    phase: int
    after: bytes
    records_max: int
    def __init__(self, shard_id: _Optional[int] = ..., move_id: _Optional[_Union[_types_pb2.U128, _Mapping]] = ..., resume: _Optional[bool] = ..., phase: _Optional[int] = ..., after: _Optional[bytes] = ..., records_max: _Optional[int] = ...) -> None: ...

class ExportSlotsResponse(_message.Message):
    __slots__ = ("records", "last", "phase", "after", "refusal")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    REFUSAL_FIELD_NUMBER: _ClassVar[int]
    records: bytes
    last: bool
    phase: int
    after: bytes
    refusal: int
    def __init__(self, records: _Optional[bytes] = ..., last: _Optional[bool] = ..., phase: _Optional[int] = ..., after: _Optional[bytes] = ..., refusal: _Optional[int] = ...) -> None: ...

class ApplyTopologyRequest(_message.Message):
    __slots__ = ("topology_toml",)
    TOPOLOGY_TOML_FIELD_NUMBER: _ClassVar[int]
    topology_toml: str
    def __init__(self, topology_toml: _Optional[str] = ...) -> None: ...

class ApplyTopologyResponse(_message.Message):
    __slots__ = ("shard_map_version",)
    SHARD_MAP_VERSION_FIELD_NUMBER: _ClassVar[int]
    shard_map_version: int
    def __init__(self, shard_map_version: _Optional[int] = ...) -> None: ...

class ChangeMembershipRequest(_message.Message):
    __slots__ = ("shard_id", "action", "node")
    class Action(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ACTION_UNSPECIFIED: _ClassVar[ChangeMembershipRequest.Action]
        ADD: _ClassVar[ChangeMembershipRequest.Action]
        REMOVE: _ClassVar[ChangeMembershipRequest.Action]
        EVICT: _ClassVar[ChangeMembershipRequest.Action]
    ACTION_UNSPECIFIED: ChangeMembershipRequest.Action
    ADD: ChangeMembershipRequest.Action
    REMOVE: ChangeMembershipRequest.Action
    EVICT: ChangeMembershipRequest.Action
    SHARD_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    shard_id: int
    action: ChangeMembershipRequest.Action
    node: str
    def __init__(self, shard_id: _Optional[int] = ..., action: _Optional[_Union[ChangeMembershipRequest.Action, str]] = ..., node: _Optional[str] = ...) -> None: ...

class ChangeMembershipResponse(_message.Message):
    __slots__ = ("members", "changed")
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    members: _containers.RepeatedScalarFieldContainer[str]
    changed: bool
    def __init__(self, members: _Optional[_Iterable[str]] = ..., changed: _Optional[bool] = ...) -> None: ...

class GetShardMapRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SlotRange(_message.Message):
    __slots__ = ("start", "end")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    start: int
    end: int
    def __init__(self, start: _Optional[int] = ..., end: _Optional[int] = ...) -> None: ...

class Replica(_message.Message):
    __slots__ = ("node", "dc", "address", "membership")
    NODE_FIELD_NUMBER: _ClassVar[int]
    DC_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    MEMBERSHIP_FIELD_NUMBER: _ClassVar[int]
    node: str
    dc: str
    address: str
    membership: str
    def __init__(self, node: _Optional[str] = ..., dc: _Optional[str] = ..., address: _Optional[str] = ..., membership: _Optional[str] = ...) -> None: ...

class Shard(_message.Message):
    __slots__ = ("shard_id", "slots", "replicas", "leader_node")
    SHARD_ID_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    LEADER_NODE_FIELD_NUMBER: _ClassVar[int]
    shard_id: int
    slots: _containers.RepeatedCompositeFieldContainer[SlotRange]
    replicas: _containers.RepeatedCompositeFieldContainer[Replica]
    leader_node: str
    def __init__(self, shard_id: _Optional[int] = ..., slots: _Optional[_Iterable[_Union[SlotRange, _Mapping]]] = ..., replicas: _Optional[_Iterable[_Union[Replica, _Mapping]]] = ..., leader_node: _Optional[str] = ...) -> None: ...

class ShardMap(_message.Message):
    __slots__ = ("version", "slot_count", "shards")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SLOT_COUNT_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    version: int
    slot_count: int
    shards: _containers.RepeatedCompositeFieldContainer[Shard]
    def __init__(self, version: _Optional[int] = ..., slot_count: _Optional[int] = ..., shards: _Optional[_Iterable[_Union[Shard, _Mapping]]] = ...) -> None: ...

class GetNodeStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReplicaStatus(_message.Message):
    __slots__ = ("shard_id", "role", "term", "commit_index", "applied_index", "leader_node", "has_quorum", "log_size", "apply_error", "members", "membership", "accounts", "transfers", "items_applied")
    SHARD_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    COMMIT_INDEX_FIELD_NUMBER: _ClassVar[int]
    APPLIED_INDEX_FIELD_NUMBER: _ClassVar[int]
    LEADER_NODE_FIELD_NUMBER: _ClassVar[int]
    HAS_QUORUM_FIELD_NUMBER: _ClassVar[int]
    LOG_SIZE_FIELD_NUMBER: _ClassVar[int]
    APPLY_ERROR_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    MEMBERSHIP_FIELD_NUMBER: _ClassVar[int]
    ACCOUNTS_FIELD_NUMBER: _ClassVar[int]
    TRANSFERS_FIELD_NUMBER: _ClassVar[int]
    ITEMS_APPLIED_FIELD_NUMBER: _ClassVar[int]
    shard_id: int
    role: str
    term: int
    commit_index: int
    applied_index: int
    leader_node: str
    has_quorum: bool
    log_size: int
    apply_error: str
    members: _containers.RepeatedScalarFieldContainer[str]
    membership: str
    accounts: int
    transfers: int
    items_applied: int
    def __init__(self, shard_id: _Optional[int] = ..., role: _Optional[str] = ..., term: _Optional[int] = ..., commit_index: _Optional[int] = ..., applied_index: _Optional[int] = ..., leader_node: _Optional[str] = ..., has_quorum: _Optional[bool] = ..., log_size: _Optional[int] = ..., apply_error: _Optional[str] = ..., members: _Optional[_Iterable[str]] = ..., membership: _Optional[str] = ..., accounts: _Optional[int] = ..., transfers: _Optional[int] = ..., items_applied: _Optional[int] = ...) -> None: ...

class NodeStatus(_message.Message):
    __slots__ = ("node", "dc", "address", "replicas", "shard_map_version")
    NODE_FIELD_NUMBER: _ClassVar[int]
    DC_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    SHARD_MAP_VERSION_FIELD_NUMBER: _ClassVar[int]
    node: str
    dc: str
    address: str
    replicas: _containers.RepeatedCompositeFieldContainer[ReplicaStatus]
    shard_map_version: int
    def __init__(self, node: _Optional[str] = ..., dc: _Optional[str] = ..., address: _Optional[str] = ..., replicas: _Optional[_Iterable[_Union[ReplicaStatus, _Mapping]]] = ..., shard_map_version: _Optional[int] = ...) -> None: ...

class LinkFaults(_message.Message):
    __slots__ = ("isolated_dcs", "delays")
    ISOLATED_DCS_FIELD_NUMBER: _ClassVar[int]
    DELAYS_FIELD_NUMBER: _ClassVar[int]
    isolated_dcs: _containers.RepeatedScalarFieldContainer[str]
    delays: _containers.RepeatedCompositeFieldContainer[LinkDelay]
    def __init__(self, isolated_dcs: _Optional[_Iterable[str]] = ..., delays: _Optional[_Iterable[_Union[LinkDelay, _Mapping]]] = ...) -> None: ...

class LinkDelay(_message.Message):
    __slots__ = ("from_dc", "to_dc", "delay_ms")
    FROM_DC_FIELD_NUMBER: _ClassVar[int]
    TO_DC_FIELD_NUMBER: _ClassVar[int]
    DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    from_dc: str
    to_dc: str
    delay_ms: int
    def __init__(self, from_dc: _Optional[str] = ..., to_dc: _Optional[str] = ..., delay_ms: _Optional[int] = ...) -> None: ...

class GetLinkFaultsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetLedgerTotalsRequest(_message.Message):
    __slots__ = ("shard_ids",)
    SHARD_IDS_FIELD_NUMBER: _ClassVar[int]
    shard_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, shard_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class LedgerTotal(_message.Message):
    __slots__ = ("ledger", "debits_pending", "debits_posted", "credits_pending", "credits_posted", "reserved_debits", "reserved_credits", "remote_debits_posted", "remote_credits_posted", "remote_debits_pending", "remote_credits_pending")
    LEDGER_FIELD_NUMBER: _ClassVar[int]
    DEBITS_PENDING_FIELD_NUMBER: _ClassVar[int]
    DEBITS_POSTED_FIELD_NUMBER: _ClassVar[int]
    CREDITS_PENDING_FIELD_NUMBER: _ClassVar[int]
    CREDITS_POSTED_FIELD_NUMBER: _ClassVar[int]
    RESERVED_DEBITS_FIELD_NUMBER: _ClassVar[int]
    RESERVED_CREDITS_FIELD_NUMBER: _ClassVar[int]
    REMOTE_DEBITS_POSTED_FIELD_NUMBER: _ClassVar[int]
    REMOTE_CREDITS_POSTED_FIELD_NUMBER: _ClassVar[int]
    REMOTE_DEBITS_PENDING_FIELD_NUMBER: _ClassVar[int]
    REMOTE_CREDITS_PENDING_FIELD_NUMBER: _ClassVar[int]
    ledger: int
    debits_pending: _types_pb2.U128
    debits_posted: _types_pb2.U128
    credits_pending: _types_pb2.U128
    credits_posted: _types_pb2.U128
    reserved_debits: _types_pb2.U128
    reserved_credits: _types_pb2.U128
    remote_debits_posted: _types_pb2.U128
    remote_credits_posted: _types_pb2.U128
    remote_debits_pending: _types_pb2.U128
    remote_credits_pending: _types_pb2.U128
    def __init__(self, ledger: _Optional[int] = ..., debits_pending: _Optional[_Union[_types_pb2.U128, _Mapping]] = ..., debits_posted: _Optional[_Union[_types_pb2.U128, _Mapping]] = ..., credits_pending: _Optional[_Union[_types_pb2.U128, _Mapping]] = ..., credits_posted: _Optional[_Union[_types_pb2.U128, _Mapping]] = ..., reserved_debits: _Optional[_Union[_types_pb2.U128, _Mapping]] = ..., reserved_credits: _Optional[_Union[_types_pb2.U128, _Mapping]] = ..., remote_debits_posted: _Optional[_Union[_types_pb2.U128, _Mapping]] = ..., remote_credits_posted: _Optional[_Union[_types_pb2.U128, _Mapping]] = ..., remote_debits_pending: _Optional[_Union[_types_pb2.U128, _Mapping]] = ..., remote_credits_pending: _Optional[_Union[_types_pb2.U128, _Mapping]] = ...) -> None: ...

class ShardLedgerTotals(_message.Message):
    __slots__ = ("shard_id", "ledgers", "prepared_txns", "applied_index", "escrow", "clearing")
    SHARD_ID_FIELD_NUMBER: _ClassVar[int]
    LEDGERS_FIELD_NUMBER: _ClassVar[int]
    PREPARED_TXNS_FIELD_NUMBER: _ClassVar[int]
    APPLIED_INDEX_FIELD_NUMBER: _ClassVar[int]
    ESCROW_FIELD_NUMBER: _ClassVar[int]
    CLEARING_FIELD_NUMBER: _ClassVar[int]
    shard_id: int
    ledgers: _containers.RepeatedCompositeFieldContainer[LedgerTotal]
    prepared_txns: int
    applied_index: int
    escrow: _containers.RepeatedCompositeFieldContainer[EscrowTotal]
    clearing: _containers.RepeatedCompositeFieldContainer[ClearingTotal]
    def __init__(self, shard_id: _Optional[int] = ..., ledgers: _Optional[_Iterable[_Union[LedgerTotal, _Mapping]]] = ..., prepared_txns: _Optional[int] = ..., applied_index: _Optional[int] = ..., escrow: _Optional[_Iterable[_Union[EscrowTotal, _Mapping]]] = ..., clearing: _Optional[_Iterable[_Union[ClearingTotal, _Mapping]]] = ...) -> None: ...

class ClearingTotal(_message.Message):
    __slots__ = ("ledger", "net", "allowance", "pool", "moving", "cap", "hub_balance", "hub_pending")
    LEDGER_FIELD_NUMBER: _ClassVar[int]
    NET_FIELD_NUMBER: _ClassVar[int]
    ALLOWANCE_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    MOVING_FIELD_NUMBER: _ClassVar[int]
    CAP_FIELD_NUMBER: _ClassVar[int]
    HUB_BALANCE_FIELD_NUMBER: _ClassVar[int]
    HUB_PENDING_FIELD_NUMBER: _ClassVar[int]
    ledger: int
    net: str
    allowance: str
    pool: str
    moving: str
    cap: str
    hub_balance: str
    hub_pending: str
    def __init__(self, ledger: _Optional[int] = ..., net: _Optional[str] = ..., allowance: _Optional[str] = ..., pool: _Optional[str] = ..., moving: _Optional[str] = ..., cap: _Optional[str] = ..., hub_balance: _Optional[str] = ..., hub_pending: _Optional[str] = ...) -> None: ...

class EscrowTotal(_message.Message):
    __slots__ = ("ledger", "held", "fees", "released", "refunded", "escrow_balance", "fee_balance", "trades_paid", "trades_shipped", "trades_disputed", "trades_settled", "trades_refunded", "trades_closed")
    LEDGER_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    FEES_FIELD_NUMBER: _ClassVar[int]
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    REFUNDED_FIELD_NUMBER: _ClassVar[int]
    ESCROW_BALANCE_FIELD_NUMBER: _ClassVar[int]
    FEE_BALANCE_FIELD_NUMBER: _ClassVar[int]
    TRADES_PAID_FIELD_NUMBER: _ClassVar[int]
    TRADES_SHIPPED_FIELD_NUMBER: _ClassVar[int]
    TRADES_DISPUTED_FIELD_NUMBER: _ClassVar[int]
    TRADES_SETTLED_FIELD_NUMBER: _ClassVar[int]
    TRADES_REFUNDED_FIELD_NUMBER: _ClassVar[int]
    TRADES_CLOSED_FIELD_NUMBER: _ClassVar[int]
    ledger: int
    held: _types_pb2.U128
    fees: _types_pb2.U128
    released: _types_pb2.U128
    refunded: _types_pb2.U128
    escrow_balance: _types_pb2.U128
    fee_balance: _types_pb2.U128
    trades_paid: int
    trades_shipped: int
    trades_disputed: int
    trades_settled: int
    trades_refunded: int
    trades_closed: int
    def __init__(self, ledger: _Optional[int] = ..., held: _Optional[_Union[_types_pb2.U128, _Mapping]] = ..., fees: _Optional[_Union[_types_pb2.U128, _Mapping]] = ..., released: _Optional[_Union[_types_pb2.U128, _Mapping]] = ..., refunded: _Optional[_Union[_types_pb2.U128, _Mapping]] = ..., escrow_balance: _Optional[_Union[_types_pb2.U128, _Mapping]] = ..., fee_balance: _Optional[_Union[_types_pb2.U128, _Mapping]] = ..., trades_paid: _Optional[int] = ..., trades_shipped: _Optional[int] = ..., trades_disputed: _Optional[int] = ..., trades_settled: _Optional[int] = ..., trades_refunded: _Optional[int] = ..., trades_closed: _Optional[int] = ...) -> None: ...

class LedgerTotals(_message.Message):
    __slots__ = ("shards",)
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    shards: _containers.RepeatedCompositeFieldContainer[ShardLedgerTotals]
    def __init__(self, shards: _Optional[_Iterable[_Union[ShardLedgerTotals, _Mapping]]] = ...) -> None: ...

class GetAdminLogRequest(_message.Message):
    __slots__ = ("after_seq", "limit")
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    after_seq: int
    limit: int
    def __init__(self, after_seq: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class AdminLogRecord(_message.Message):
    __slots__ = ("seq", "time_ns", "principal", "roles", "method", "permission", "result", "detail", "node")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIME_NS_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    ROLES_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    PERMISSION_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    seq: int
    time_ns: int
    principal: str
    roles: str
    method: str
    permission: str
    result: str
    detail: str
    node: str
    def __init__(self, seq: _Optional[int] = ..., time_ns: _Optional[int] = ..., principal: _Optional[str] = ..., roles: _Optional[str] = ..., method: _Optional[str] = ..., permission: _Optional[str] = ..., result: _Optional[str] = ..., detail: _Optional[str] = ..., node: _Optional[str] = ...) -> None: ...

class AdminLog(_message.Message):
    __slots__ = ("records", "next_seq")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_SEQ_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[AdminLogRecord]
    next_seq: int
    def __init__(self, records: _Optional[_Iterable[_Union[AdminLogRecord, _Mapping]]] = ..., next_seq: _Optional[int] = ...) -> None: ...

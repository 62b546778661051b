from tidebank.v1 import ledger_pb2 as _ledger_pb2
from tidebank.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ParticipantResult(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PARTICIPANT_RESULT_OK: _ClassVar[ParticipantResult]
    PARTICIPANT_RESULT_EXISTS: _ClassVar[ParticipantResult]
    PARTICIPANT_RESULT_ID_MUST_NOT_BE_ZERO: _ClassVar[ParticipantResult]
    PARTICIPANT_RESULT_ID_MUST_NOT_BE_INT_MAX: _ClassVar[ParticipantResult]
    PARTICIPANT_RESULT_LEDGER_MUST_NOT_BE_ZERO: _ClassVar[ParticipantResult]
    PARTICIPANT_RESULT_SETTLEMENT_ACCOUNT_NOT_FOUND: _ClassVar[ParticipantResult]
    PARTICIPANT_RESULT_SETTLEMENT_ACCOUNT_LEDGER_MISMATCH: _ClassVar[ParticipantResult]
    PARTICIPANT_RESULT_EXISTS_WITH_DIFFERENT_LEDGER: _ClassVar[ParticipantResult]
    PARTICIPANT_RESULT_EXISTS_WITH_DIFFERENT_CODE: _ClassVar[ParticipantResult]
    PARTICIPANT_RESULT_EXISTS_WITH_DIFFERENT_NAME: _ClassVar[ParticipantResult]
    PARTICIPANT_RESULT_EXISTS_WITH_DIFFERENT_SETTLEMENT_ACCOUNT: _ClassVar[ParticipantResult]
    PARTICIPANT_RESULT_PARTICIPANT_NOT_FOUND: _ClassVar[ParticipantResult]
    PARTICIPANT_RESULT_CAP_BELOW_POSITION: _ClassVar[ParticipantResult]
    PARTICIPANT_RESULT_INTERNAL_ERROR: _ClassVar[ParticipantResult]
    PARTICIPANT_RESULT_PARTICIPANTS_LIMIT_REACHED: _ClassVar[ParticipantResult]

class ClearingItemStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CLEARING_ITEM_STATUS_ACCEPTED: _ClassVar[ClearingItemStatus]
    CLEARING_ITEM_STATUS_UNWOUND: _ClassVar[ClearingItemStatus]
    CLEARING_ITEM_STATUS_ABORTED: _ClassVar[ClearingItemStatus]

class ClearingItemResult(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CLEARING_ITEM_RESULT_OK: _ClassVar[ClearingItemResult]
    CLEARING_ITEM_RESULT_EXISTS: _ClassVar[ClearingItemResult]
    CLEARING_ITEM_RESULT_ID_MUST_NOT_BE_ZERO: _ClassVar[ClearingItemResult]
    CLEARING_ITEM_RESULT_ID_MUST_NOT_BE_INT_MAX: _ClassVar[ClearingItemResult]
    CLEARING_ITEM_RESULT_AMOUNT_MUST_NOT_BE_ZERO: _ClassVar[ClearingItemResult]
    CLEARING_ITEM_RESULT_LEDGER_MUST_NOT_BE_ZERO: _ClassVar[ClearingItemResult]
    CLEARING_ITEM_RESULT_SAME_PARTICIPANT: _ClassVar[ClearingItemResult]
    CLEARING_ITEM_RESULT_PAYER_NOT_FOUND: _ClassVar[ClearingItemResult]
    CLEARING_ITEM_RESULT_PAYEE_NOT_FOUND: _ClassVar[ClearingItemResult]
    CLEARING_ITEM_RESULT_PAYER_SUSPENDED: _ClassVar[ClearingItemResult]
    CLEARING_ITEM_RESULT_LEDGER_MISMATCH: _ClassVar[ClearingItemResult]
    CLEARING_ITEM_RESULT_EXCEEDS_NET_DEBIT_CAP: _ClassVar[ClearingItemResult]
    CLEARING_ITEM_RESULT_EXISTS_WITH_DIFFERENT_PAYER: _ClassVar[ClearingItemResult]
    CLEARING_ITEM_RESULT_EXISTS_WITH_DIFFERENT_PAYEE: _ClassVar[ClearingItemResult]
    CLEARING_ITEM_RESULT_EXISTS_WITH_DIFFERENT_AMOUNT: _ClassVar[ClearingItemResult]
    CLEARING_ITEM_RESULT_EXISTS_WITH_DIFFERENT_LEDGER: _ClassVar[ClearingItemResult]
    CLEARING_ITEM_RESULT_EXISTS_WITH_DIFFERENT_USER_DATA: _ClassVar[ClearingItemResult]
    CLEARING_ITEM_RESULT_INTERNAL_ERROR: _ClassVar[ClearingItemResult]
    CLEARING_ITEM_RESULT_SLOT_MOVING: _ClassVar[ClearingItemResult]

class WindowState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WINDOW_STATE_OPEN: _ClassVar[WindowState]
    WINDOW_STATE_CLOSING: _ClassVar[WindowState]
    WINDOW_STATE_CLOSED: _ClassVar[WindowState]
    WINDOW_STATE_SETTLING: _ClassVar[WindowState]
    WINDOW_STATE_SETTLED: _ClassVar[WindowState]
    WINDOW_STATE_ABORTED: _ClassVar[WindowState]

class WindowResult(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WINDOW_RESULT_OK: _ClassVar[WindowResult]
    WINDOW_RESULT_WINDOW_NOT_FOUND: _ClassVar[WindowResult]
    WINDOW_RESULT_WINDOW_NOT_OPEN: _ClassVar[WindowResult]
    WINDOW_RESULT_WINDOW_NOT_CLOSED: _ClassVar[WindowResult]
    WINDOW_RESULT_WINDOW_ALREADY_SETTLED: _ClassVar[WindowResult]
    WINDOW_RESULT_PREVIOUS_WINDOW_STILL_CLOSING: _ClassVar[WindowResult]
    WINDOW_RESULT_INSUFFICIENT_FUNDS: _ClassVar[WindowResult]
    WINDOW_RESULT_PARTICIPANT_NOT_IN_WINDOW: _ClassVar[WindowResult]
    WINDOW_RESULT_SETTLEMENT_FAILED: _ClassVar[WindowResult]
    WINDOW_RESULT_INTERNAL_ERROR: _ClassVar[WindowResult]
    WINDOW_RESULT_SETTLEMENT_IN_PROGRESS: _ClassVar[WindowResult]
    WINDOW_RESULT_WINDOW_ALREADY_ABORTED: _ClassVar[WindowResult]
PARTICIPANT_RESULT_OK: ParticipantResult
PARTICIPANT_RESULT_EXISTS: ParticipantResult
PARTICIPANT_RESULT_ID_MUST_NOT_BE_ZERO: ParticipantResult
PARTICIPANT_RESULT_ID_MUST_NOT_BE_INT_MAX: ParticipantResult
PARTICIPANT_RESULT_LEDGER_MUST_NOT_BE_ZERO: ParticipantResult
PARTICIPANT_RESULT_SETTLEMENT_ACCOUNT_NOT_FOUND: ParticipantResult
PARTICIPANT_RESULT_SETTLEMENT_ACCOUNT_LEDGER_MISMATCH: ParticipantResult
PARTICIPANT_RESULT_EXISTS_WITH_DIFFERENT_LEDGER: ParticipantResult
PARTICIPANT_RESULT_EXISTS_WITH_DIFFERENT_CODE: ParticipantResult
PARTICIPANT_RESULT_EXISTS_WITH_DIFFERENT_NAME: ParticipantResult
PARTICIPANT_RESULT_EXISTS_WITH_DIFFERENT_SETTLEMENT_ACCOUNT: ParticipantResult
PARTICIPANT_RESULT_PARTICIPANT_NOT_FOUND: ParticipantResult
PARTICIPANT_RESULT_CAP_BELOW_POSITION: ParticipantResult
PARTICIPANT_RESULT_INTERNAL_ERROR: ParticipantResult
PARTICIPANT_RESULT_PARTICIPANTS_LIMIT_REACHED: ParticipantResult
CLEARING_ITEM_STATUS_ACCEPTED: ClearingItemStatus
CLEARING_ITEM_STATUS_UNWOUND: ClearingItemStatus
CLEARING_ITEM_STATUS_ABORTED: ClearingItemStatus
CLEARING_ITEM_RESULT_OK: ClearingItemResult
CLEARING_ITEM_RESULT_EXISTS: ClearingItemResult
CLEARING_ITEM_RESULT_ID_MUST_NOT_BE_ZERO: ClearingItemResult
CLEARING_ITEM_RESULT_ID_MUST_NOT_BE_INT_MAX: ClearingItemResult
CLEARING_ITEM_RESULT_AMOUNT_MUST_NOT_BE_ZERO: ClearingItemResult
CLEARING_ITEM_RESULT_LEDGER_MUST_NOT_BE_ZERO: ClearingItemResult
CLEARING_ITEM_RESULT_SAME_PARTICIPANT: ClearingItemResult
CLEARING_ITEM_RESULT_PAYER_NOT_FOUND: ClearingItemResult
CLEARING_ITEM_RESULT_PAYEE_NOT_FOUND: ClearingItemResult
CLEARING_ITEM_RESULT_PAYER_SUSPENDED: ClearingItemResult
CLEARING_ITEM_RESULT_LEDGER_MISMATCH: ClearingItemResult
CLEARING_ITEM_RESULT_EXCEEDS_NET_DEBIT_CAP: ClearingItemResult
CLEARING_ITEM_RESULT_EXISTS_WITH_DIFFERENT_PAYER: ClearingItemResult
CLEARING_ITEM_RESULT_EXISTS_WITH_DIFFERENT_PAYEE: ClearingItemResult
CLEARING_ITEM_RESULT_EXISTS_WITH_DIFFERENT_AMOUNT: ClearingItemResult
CLEARING_ITEM_RESULT_EXISTS_WITH_DIFFERENT_LEDGER: ClearingItemResult
CLEARING_ITEM_RESULT_EXISTS_WITH_DIFFERENT_USER_DATA: ClearingItemResult
CLEARING_ITEM_RESULT_INTERNAL_ERROR: ClearingItemResult
CLEARING_ITEM_RESULT_SLOT_MOVING: ClearingItemResult
WINDOW_STATE_OPEN: WindowState
WINDOW_STATE_CLOSING: WindowState
WINDOW_STATE_CLOSED: WindowState
WINDOW_STATE_SETTLING: WindowState
WINDOW_STATE_SETTLED: WindowState
WINDOW_STATE_ABORTED: WindowState
WINDOW_RESULT_OK: WindowResult
WINDOW_RESULT_WINDOW_NOT_FOUND: WindowResult
WINDOW_RESULT_WINDOW_NOT_OPEN: WindowResult
WINDOW_RESULT_WINDOW_NOT_CLOSED: WindowResult
WINDOW_RESULT_WINDOW_ALREADY_SETTLED: WindowResult
WINDOW_RESULT_PREVIOUS_WINDOW_STILL_CLOSING: WindowResult
WINDOW_RESULT_INSUFFICIENT_FUNDS: WindowResult
WINDOW_RESULT_PARTICIPANT_NOT_IN_WINDOW: WindowResult
WINDOW_RESULT_SETTLEMENT_FAILED: WindowResult
WINDOW_RESULT_INTERNAL_ERROR: WindowResult
WINDOW_RESULT_SETTLEMENT_IN_PROGRESS: WindowResult
WINDOW_RESULT_WINDOW_ALREADY_ABORTED: WindowResult

class Participant(_message.Message):
    __slots__ = ("id", "ledger", "code", "name", "settlement_account_id", "net_debit_cap", "suspended", "version", "position")
    ID_FIELD_NUMBER: _ClassVar[int]
    LEDGER_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SETTLEMENT_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    NET_DEBIT_CAP_FIELD_NUMBER: _ClassVar[int]
    SUSPENDED_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    id: _types_pb2.U128
    ledger: int
    code: int
    name: str
    settlement_account_id: _types_pb2.U128
    net_debit_cap: int
    suspended: bool
    version: int
    position: _types_pb2.I128
    def __init__(self, id: _Optional[_Union[_types_pb2.U128, _Mapping]] = ..., ledger: _Optional[int] = ..., code: _Optional[int] = ..., name: _Optional[str] = ..., settlement_account_id: _Optional[_Union[_types_pb2.U128, _Mapping]] = ..., net_debit_cap: _Optional[int] = ..., suspended: _Optional[bool] = ..., version: _Optional[int] = ..., position: _Optional[_Union[_types_pb2.I128, _Mapping]] = ...) -> None: ...

class RegisterParticipantsRequest(_message.Message):
    __slots__ = ("participants",)
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    participants: _containers.RepeatedCompositeFieldContainer[Participant]
    def __init__(self, participants: _Optional[_Iterable[_Union[Participant, _Mapping]]] = ...) -> None: ...

class ParticipantUpdate(_message.Message):
    __slots__ = ("id", "net_debit_cap", "suspended")
    ID_FIELD_NUMBER: _ClassVar[int]
    NET_DEBIT_CAP_FIELD_NUMBER: _ClassVar[int]
    SUSPENDED_FIELD_NUMBER: _ClassVar[int]
    id: _types_pb2.U128
    net_debit_cap: int
    suspended: bool
    def __init__(self, id: _Optional[_Union[_types_pb2.U128, _Mapping]] = ..., net_debit_cap: _Optional[int] = ..., suspended: _Optional[bool] = ...) -> None: ...

class UpdateParticipantsRequest(_message.Message):
    __slots__ = ("updates",)
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    updates: _containers.RepeatedCompositeFieldContainer[ParticipantUpdate]
    def __init__(self, updates: _Optional[_Iterable[_Union[ParticipantUpdate, _Mapping]]] = ...) -> None: ...

class ParticipantResultsResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedScalarFieldContainer[ParticipantResult]
    def __init__(self, results: _Optional[_Iterable[_Union[ParticipantResult, str]]] = ...) -> None: ...

class LookupParticipantsRequest(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedCompositeFieldContainer[_types_pb2.U128]
    def __init__(self, ids: _Optional[_Iterable[_Union[_types_pb2.U128, _Mapping]]] = ...) -> None: ...

class ListParticipantsRequest(_message.Message):
    __slots__ = ("ledger", "after", "limit")
    LEDGER_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    ledger: int
    after: _types_pb2.U128
    limit: int
    def __init__(self, ledger: _Optional[int] = ..., after: _Optional[_Union[_types_pb2.U128, _Mapping]] = ..., limit: _Optional[int] = ...) -> None: ...

class ParticipantsResponse(_message.Message):
    __slots__ = ("participants",)
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    participants: _containers.RepeatedCompositeFieldContainer[Participant]
    def __init__(self, participants: _Optional[_Iterable[_Union[Participant, _Mapping]]] = ...) -> None: ...

class ClearingItem(_message.Message):
    __slots__ = ("id", "payer_id", "payee_id", "amount", "ledger", "user_data_128", "user_data_64", "window", "timestamp", "status")
    ID_FIELD_NUMBER: _ClassVar[int]
    PAYER_ID_FIELD_NUMBER: _ClassVar[int]
    PAYEE_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    LEDGER_FIELD_NUMBER: _ClassVar[int]
    USER_DATA_128_FIELD_NUMBER: _ClassVar[int]
    USER_DATA_64_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    id: _types_pb2.U128
    payer_id: _types_pb2.U128
    payee_id: _types_pb2.U128
    amount: int
    ledger: int
    user_data_128: _types_pb2.U128
    user_data_64: int
    window: int
    timestamp: int
    status: ClearingItemStatus
    def __init__(self, id: _Optional[_Union[_types_pb2.U128, _Mapping]] = ..., payer_id: _Optional[_Union[_types_pb2.U128, _Mapping]] = ..., payee_id: _Optional[_Union[_types_pb2.U128, _Mapping]] = ..., amount: _Optional[int] = ..., ledger: _Optional[int] = ..., user_data_128: _Optional[_Union[_types_pb2.U128, _Mapping]] = ..., user_data_64: _Optional[int] = ..., window: _Optional[int] = ..., timestamp: _Optional[int] = ..., status: _Optional[_Union[ClearingItemStatus, str]] = ...) -> None: ...

class SubmitItemsRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ClearingItem]
    def __init__(self, items: _Optional[_Iterable[_Union[ClearingItem, _Mapping]]] = ...) -> None: ...

class SubmitItemsResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedScalarFieldContainer[ClearingItemResult]
    def __init__(self, results: _Optional[_Iterable[_Union[ClearingItemResult, str]]] = ...) -> None: ...

class LookupItemsRequest(_message.Message):
    __slots__ = ("ids", "consistency")
    IDS_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedCompositeFieldContainer[_types_pb2.U128]
    consistency: _ledger_pb2.ReadConsistency
    def __init__(self, ids: _Optional[_Iterable[_Union[_types_pb2.U128, _Mapping]]] = ..., consistency: _Optional[_Union[_ledger_pb2.ReadConsistency, str]] = ...) -> None: ...

class LookupItemsResponse(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ClearingItem]
    def __init__(self, items: _Optional[_Iterable[_Union[ClearingItem, _Mapping]]] = ...) -> None: ...

class NetPosition(_message.Message):
    __slots__ = ("participant_id", "count_sent", "count_received", "sent", "received", "net")
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    COUNT_SENT_FIELD_NUMBER: _ClassVar[int]
    COUNT_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    SENT_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    NET_FIELD_NUMBER: _ClassVar[int]
    participant_id: _types_pb2.U128
    count_sent: int
    count_received: int
    sent: _types_pb2.U128
    received: _types_pb2.U128
    net: _types_pb2.I128
    def __init__(self, participant_id: _Optional[_Union[_types_pb2.U128, _Mapping]] = ..., count_sent: _Optional[int] = ..., count_received: _Optional[int] = ..., sent: _Optional[_Union[_types_pb2.U128, _Mapping]] = ..., received: _Optional[_Union[_types_pb2.U128, _Mapping]] = ..., net: _Optional[_Union[_types_pb2.I128, _Mapping]] = ...) -> None: ...

class BilateralPosition(_message.Message):
    __slots__ = ("payer_id", "payee_id", "count", "amount")
    PAYER_ID_FIELD_NUMBER: _ClassVar[int]
    PAYEE_ID_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    payer_id: _types_pb2.U128
    payee_id: _types_pb2.U128
    count: int
    amount: _types_pb2.U128
    def __init__(self, payer_id: _Optional[_Union[_types_pb2.U128, _Mapping]] = ..., payee_id: _Optional[_Union[_types_pb2.U128, _Mapping]] = ..., count: _Optional[int] = ..., amount: _Optional[_Union[_types_pb2.U128, _Mapping]] = ...) -> None: ...

class Window(_message.Message):
    __slots__ = ("ledger", "number", "state", "opened_at", "closed_at", "settled_at", "round", "unwound", "failure", "nets", "bilateral", "settlement_transfer_ids", "hub_account_id", "aborted_at")
    LEDGER_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    OPENED_AT_FIELD_NUMBER: _ClassVar[int]
    CLOSED_AT_FIELD_NUMBER: _ClassVar[int]
    SETTLED_AT_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    UNWOUND_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    NETS_FIELD_NUMBER: _ClassVar[int]
    BILATERAL_FIELD_NUMBER: _ClassVar[int]
    SETTLEMENT_TRANSFER_IDS_FIELD_NUMBER: _ClassVar[int]
    HUB_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    ABORTED_AT_FIELD_NUMBER: _ClassVar[int]
    ledger: int
    number: int
    state: WindowState
    opened_at: int
    closed_at: int
    settled_at: int
    round: int
    unwound: _containers.RepeatedCompositeFieldContainer[_types_pb2.U128]
    failure: str
    nets: _containers.RepeatedCompositeFieldContainer[NetPosition]
    bilateral: _containers.RepeatedCompositeFieldContainer[BilateralPosition]
    settlement_transfer_ids: _containers.RepeatedCompositeFieldContainer[_types_pb2.U128]
    hub_account_id: _types_pb2.U128
    aborted_at: int
    def __init__(self, ledger: _Optional[int] = ..., number: _Optional[int] = ..., state: _Optional[_Union[WindowState, str]] = ..., opened_at: _Optional[int] = ..., closed_at: _Optional[int] = ..., settled_at: _Optional[int] = ..., round: _Optional[int] = ..., unwound: _Optional[_Iterable[_Union[_types_pb2.U128, _Mapping]]] = ..., failure: _Optional[str] = ..., nets: _Optional[_Iterable[_Union[NetPosition, _Mapping]]] = ..., bilateral: _Optional[_Iterable[_Union[BilateralPosition, _Mapping]]] = ..., settlement_transfer_ids: _Optional[_Iterable[_Union[_types_pb2.U128, _Mapping]]] = ..., hub_account_id: _Optional[_Union[_types_pb2.U128, _Mapping]] = ..., aborted_at: _Optional[int] = ...) -> None: ...

class ListWindowsRequest(_message.Message):
    __slots__ = ("ledger", "after", "limit")
    LEDGER_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    ledger: int
    after: int
    limit: int
    def __init__(self, ledger: _Optional[int] = ..., after: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class ListWindowsResponse(_message.Message):
    __slots__ = ("windows",)
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    windows: _containers.RepeatedCompositeFieldContainer[Window]
    def __init__(self, windows: _Optional[_Iterable[_Union[Window, _Mapping]]] = ...) -> None: ...

class GetWindowRequest(_message.Message):
    __slots__ = ("ledger", "number", "bilateral")
    LEDGER_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    BILATERAL_FIELD_NUMBER: _ClassVar[int]
    ledger: int
    number: int
    bilateral: bool
    def __init__(self, ledger: _Optional[int] = ..., number: _Optional[int] = ..., bilateral: _Optional[bool] = ...) -> None: ...

class WindowRequest(_message.Message):
    __slots__ = ("ledger", "number")
    LEDGER_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    ledger: int
    number: int
    def __init__(self, ledger: _Optional[int] = ..., number: _Optional[int] = ...) -> None: ...

class UnwindParticipantRequest(_message.Message):
    __slots__ = ("ledger", "number", "participant_id")
    LEDGER_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    ledger: int
    number: int
    participant_id: _types_pb2.U128
    def __init__(self, ledger: _Optional[int] = ..., number: _Optional[int] = ..., participant_id: _Optional[_Union[_types_pb2.U128, _Mapping]] = ...) -> None: ...

class Shortfall(_message.Message):
    __slots__ = ("participant_id", "net_debit", "available", "shortfall")
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    NET_DEBIT_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    SHORTFALL_FIELD_NUMBER: _ClassVar[int]
    participant_id: _types_pb2.U128
    net_debit: int
    available: int
    shortfall: int
    def __init__(self, participant_id: _Optional[_Union[_types_pb2.U128, _Mapping]] = ..., net_debit: _Optional[int] = ..., available: _Optional[int] = ..., shortfall: _Optional[int] = ...) -> None: ...

class WindowStepResponse(_message.Message):
    __slots__ = ("result", "window", "shortfalls")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    SHORTFALLS_FIELD_NUMBER: _ClassVar[int]
    result: WindowResult
    window: Window
    shortfalls: _containers.RepeatedCompositeFieldContainer[Shortfall]
    def __init__(self, result: _Optional[_Union[WindowResult, str]] = ..., window: _Optional[_Union[Window, _Mapping]] = ..., shortfalls: _Optional[_Iterable[_Union[Shortfall, _Mapping]]] = ...) -> None: ...

class ExportStatementRequest(_message.Message):
    __slots__ = ("ledger", "number", "participant_id", "include_unwound", "after_item_id")
    LEDGER_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_UNWOUND_FIELD_NUMBER: _ClassVar[int]
    AFTER_ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    ledger: int
    number: int
    participant_id: _types_pb2.U128
    include_unwound: bool
    after_item_id: _types_pb2.U128
    def __init__(self, ledger: _Optional[int] = ..., number: _Optional[int] = ..., participant_id: _Optional[_Union[_types_pb2.U128, _Mapping]] = ..., include_unwound: _Optional[bool] = ..., after_item_id: _Optional[_Union[_types_pb2.U128, _Mapping]] = ...) -> None: ...

class Statement(_message.Message):
    __slots__ = ("participant_id", "ledger", "window", "count_sent", "count_received", "settlement_transfer_id", "settlement_amount", "sha256", "items", "sent", "received", "net")
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    LEDGER_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    COUNT_SENT_FIELD_NUMBER: _ClassVar[int]
    COUNT_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    SETTLEMENT_TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    SETTLEMENT_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    SENT_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    NET_FIELD_NUMBER: _ClassVar[int]
    participant_id: _types_pb2.U128
    ledger: int
    window: int
    count_sent: int
    count_received: int
    settlement_transfer_id: _types_pb2.U128
    settlement_amount: int
    sha256: str
    items: int
    sent: _types_pb2.U128
    received: _types_pb2.U128
    net: _types_pb2.I128
    def __init__(self, participant_id: _Optional[_Union[_types_pb2.U128, _Mapping]] = ..., ledger: _Optional[int] = ..., window: _Optional[int] = ..., count_sent: _Optional[int] = ..., count_received: _Optional[int] = ..., settlement_transfer_id: _Optional[_Union[_types_pb2.U128, _Mapping]] = ..., settlement_amount: _Optional[int] = ..., sha256: _Optional[str] = ..., items: _Optional[int] = ..., sent: _Optional[_Union[_types_pb2.U128, _Mapping]] = ..., received: _Optional[_Union[_types_pb2.U128, _Mapping]] = ..., net: _Optional[_Union[_types_pb2.I128, _Mapping]] = ...) -> None: ...

class StatementChunk(_message.Message):
    __slots__ = ("items", "statement")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    STATEMENT_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ClearingItem]
    statement: Statement
    def __init__(self, items: _Optional[_Iterable[_Union[ClearingItem, _Mapping]]] = ..., statement: _Optional[_Union[Statement, _Mapping]] = ...) -> None: ...

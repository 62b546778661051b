from tidebank.v1 import ledger_pb2 as _ledger_pb2
from tidebank.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TradeState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRADE_STATE_UNSPECIFIED: _ClassVar[TradeState]
    TRADE_STATE_PAID: _ClassVar[TradeState]
    TRADE_STATE_SHIPPED: _ClassVar[TradeState]
    TRADE_STATE_SETTLED: _ClassVar[TradeState]
    TRADE_STATE_REFUNDED: _ClassVar[TradeState]
    TRADE_STATE_DISPUTED: _ClassVar[TradeState]
    TRADE_STATE_CLOSED: _ClassVar[TradeState]

class TradeTimer(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRADE_TIMER_NONE: _ClassVar[TradeTimer]
    TRADE_TIMER_SHIP_BY: _ClassVar[TradeTimer]
    TRADE_TIMER_AUTO_CONFIRM: _ClassVar[TradeTimer]

class TradeClosedBy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRADE_CLOSED_BY_NONE: _ClassVar[TradeClosedBy]
    TRADE_CLOSED_BY_BUYER_CONFIRMED: _ClassVar[TradeClosedBy]
    TRADE_CLOSED_BY_AUTO_CONFIRMED: _ClassVar[TradeClosedBy]
    TRADE_CLOSED_BY_REFUNDED: _ClassVar[TradeClosedBy]
    TRADE_CLOSED_BY_SHIP_BY_EXPIRED: _ClassVar[TradeClosedBy]
    TRADE_CLOSED_BY_DISPUTE_RESOLVED: _ClassVar[TradeClosedBy]

class TradeResultCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRADE_RESULT_OK: _ClassVar[TradeResultCode]
    TRADE_RESULT_EXISTS: _ClassVar[TradeResultCode]
    TRADE_RESULT_ID_MUST_NOT_BE_ZERO: _ClassVar[TradeResultCode]
    TRADE_RESULT_ID_MUST_NOT_BE_INT_MAX: _ClassVar[TradeResultCode]
    TRADE_RESULT_BUYER_ACCOUNT_ID_MUST_NOT_BE_ZERO: _ClassVar[TradeResultCode]
    TRADE_RESULT_SELLER_ACCOUNT_ID_MUST_NOT_BE_ZERO: _ClassVar[TradeResultCode]
    TRADE_RESULT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX: _ClassVar[TradeResultCode]
    TRADE_RESULT_ACCOUNTS_MUST_BE_DIFFERENT: _ClassVar[TradeResultCode]
    TRADE_RESULT_ACCOUNT_RESERVED: _ClassVar[TradeResultCode]
    TRADE_RESULT_AMOUNT_MUST_NOT_BE_ZERO: _ClassVar[TradeResultCode]
    TRADE_RESULT_LEDGER_MUST_NOT_BE_ZERO: _ClassVar[TradeResultCode]
    TRADE_RESULT_FEE_BPS_ABOVE_10000: _ClassVar[TradeResultCode]
    TRADE_RESULT_TIMEOUT_OUT_OF_RANGE: _ClassVar[TradeResultCode]
    TRADE_RESULT_BUYER_ACCOUNT_NOT_FOUND: _ClassVar[TradeResultCode]
    TRADE_RESULT_SELLER_ACCOUNT_NOT_FOUND: _ClassVar[TradeResultCode]
    TRADE_RESULT_ACCOUNT_HAS_DIFFERENT_LEDGER: _ClassVar[TradeResultCode]
    TRADE_RESULT_ACCOUNT_CLOSED: _ClassVar[TradeResultCode]
    TRADE_RESULT_ACCOUNT_FLAGS_NOT_SUPPORTED: _ClassVar[TradeResultCode]
    TRADE_RESULT_EXISTS_WITH_DIFFERENT_BUYER_ACCOUNT_ID: _ClassVar[TradeResultCode]
    TRADE_RESULT_EXISTS_WITH_DIFFERENT_SELLER_ACCOUNT_ID: _ClassVar[TradeResultCode]
    TRADE_RESULT_EXISTS_WITH_DIFFERENT_AMOUNT: _ClassVar[TradeResultCode]
    TRADE_RESULT_EXISTS_WITH_DIFFERENT_LEDGER: _ClassVar[TradeResultCode]
    TRADE_RESULT_EXISTS_WITH_DIFFERENT_FEE_BPS: _ClassVar[TradeResultCode]
    TRADE_RESULT_EXISTS_WITH_DIFFERENT_TIMEOUTS: _ClassVar[TradeResultCode]
    TRADE_RESULT_EXISTS_WITH_DIFFERENT_USER_DATA: _ClassVar[TradeResultCode]
    TRADE_RESULT_TRADE_NOT_FOUND: _ClassVar[TradeResultCode]
    TRADE_RESULT_TRADE_IS_SHIPPED: _ClassVar[TradeResultCode]
    TRADE_RESULT_TRADE_IS_SETTLED: _ClassVar[TradeResultCode]
    TRADE_RESULT_TRADE_IS_REFUNDED: _ClassVar[TradeResultCode]
    TRADE_RESULT_TRADE_IS_DISPUTED: _ClassVar[TradeResultCode]
    TRADE_RESULT_TRADE_IS_CLOSED: _ClassVar[TradeResultCode]
    TRADE_RESULT_TRADE_IS_NOT_DISPUTED: _ClassVar[TradeResultCode]
    TRADE_RESULT_DISPUTE_ALREADY_OPENED: _ClassVar[TradeResultCode]
    TRADE_RESULT_DEADLINE_PASSED: _ClassVar[TradeResultCode]
    TRADE_RESULT_REFUND_EXCEEDS_HELD: _ClassVar[TradeResultCode]
    TRADE_RESULT_REFUND_ID_MUST_NOT_BE_ZERO: _ClassVar[TradeResultCode]
    TRADE_RESULT_TOO_MANY_REFUNDS: _ClassVar[TradeResultCode]
    TRADE_RESULT_SPLIT_EXCEEDS_HELD: _ClassVar[TradeResultCode]
    TRADE_RESULT_EXTENSION_ID_MUST_NOT_BE_ZERO: _ClassVar[TradeResultCode]
    TRADE_RESULT_EXTENSION_OUT_OF_RANGE: _ClassVar[TradeResultCode]
    TRADE_RESULT_TOO_MANY_EXTENSIONS: _ClassVar[TradeResultCode]
    TRADE_RESULT_TRANSFER_FAILED: _ClassVar[TradeResultCode]
    TRADE_RESULT_INTERNAL_ERROR: _ClassVar[TradeResultCode]
    TRADE_RESULT_TIMER_NOT_RUNNING: _ClassVar[TradeResultCode]

class TradeRole(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRADE_ROLE_BUYER: _ClassVar[TradeRole]
    TRADE_ROLE_SELLER: _ClassVar[TradeRole]
TRADE_STATE_UNSPECIFIED: TradeState
TRADE_STATE_PAID: TradeState
TRADE_STATE_SHIPPED: TradeState
TRADE_STATE_SETTLED: TradeState
TRADE_STATE_REFUNDED: TradeState
TRADE_STATE_DISPUTED: TradeState
TRADE_STATE_CLOSED: TradeState
TRADE_TIMER_NONE: TradeTimer
TRADE_TIMER_SHIP_BY: TradeTimer
TRADE_TIMER_AUTO_CONFIRM: TradeTimer
TRADE_CLOSED_BY_NONE: TradeClosedBy
TRADE_CLOSED_BY_BUYER_CONFIRMED: TradeClosedBy
TRADE_CLOSED_BY_AUTO_CONFIRMED: TradeClosedBy
TRADE_CLOSED_BY_REFUNDED: TradeClosedBy
TRADE_CLOSED_BY_SHIP_BY_EXPIRED: TradeClosedBy
TRADE_CLOSED_BY_DISPUTE_RESOLVED: TradeClosedBy
TRADE_RESULT_OK: TradeResultCode
TRADE_RESULT_EXISTS: TradeResultCode
TRADE_RESULT_ID_MUST_NOT_BE_ZERO: TradeResultCode
TRADE_RESULT_ID_MUST_NOT_BE_INT_MAX: TradeResultCode
TRADE_RESULT_BUYER_ACCOUNT_ID_MUST_NOT_BE_ZERO: TradeResultCode
TRADE_RESULT_SELLER_ACCOUNT_ID_MUST_NOT_BE_ZERO: TradeResultCode
TRADE_RESULT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX: TradeResultCode
TRADE_RESULT_ACCOUNTS_MUST_BE_DIFFERENT: TradeResultCode
TRADE_RESULT_ACCOUNT_RESERVED: TradeResultCode
TRADE_RESULT_AMOUNT_MUST_NOT_BE_ZERO: TradeResultCode
TRADE_RESULT_LEDGER_MUST_NOT_BE_ZERO: TradeResultCode
TRADE_RESULT_FEE_BPS_ABOVE_10000: TradeResultCode
TRADE_RESULT_TIMEOUT_OUT_OF_RANGE: TradeResultCode
TRADE_RESULT_BUYER_ACCOUNT_NOT_FOUND: TradeResultCode
TRADE_RESULT_SELLER_ACCOUNT_NOT_FOUND: TradeResultCode
TRADE_RESULT_ACCOUNT_HAS_DIFFERENT_LEDGER: TradeResultCode
TRADE_RESULT_ACCOUNT_CLOSED: TradeResultCode
TRADE_RESULT_ACCOUNT_FLAGS_NOT_SUPPORTED: TradeResultCode
TRADE_RESULT_EXISTS_WITH_DIFFERENT_BUYER_ACCOUNT_ID: TradeResultCode
TRADE_RESULT_EXISTS_WITH_DIFFERENT_SELLER_ACCOUNT_ID: TradeResultCode
TRADE_RESULT_EXISTS_WITH_DIFFERENT_AMOUNT: TradeResultCode
TRADE_RESULT_EXISTS_WITH_DIFFERENT_LEDGER: TradeResultCode
TRADE_RESULT_EXISTS_WITH_DIFFERENT_FEE_BPS: TradeResultCode
TRADE_RESULT_EXISTS_WITH_DIFFERENT_TIMEOUTS: TradeResultCode
TRADE_RESULT_EXISTS_WITH_DIFFERENT_USER_DATA: TradeResultCode
TRADE_RESULT_TRADE_NOT_FOUND: TradeResultCode
TRADE_RESULT_TRADE_IS_SHIPPED: TradeResultCode
TRADE_RESULT_TRADE_IS_SETTLED: TradeResultCode
TRADE_RESULT_TRADE_IS_REFUNDED: TradeResultCode
TRADE_RESULT_TRADE_IS_DISPUTED: TradeResultCode
TRADE_RESULT_TRADE_IS_CLOSED: TradeResultCode
TRADE_RESULT_TRADE_IS_NOT_DISPUTED: TradeResultCode
TRADE_RESULT_DISPUTE_ALREADY_OPENED: TradeResultCode
TRADE_RESULT_DEADLINE_PASSED: TradeResultCode
TRADE_RESULT_REFUND_EXCEEDS_HELD: TradeResultCode
TRADE_RESULT_REFUND_ID_MUST_NOT_BE_ZERO: TradeResultCode
TRADE_RESULT_TOO_MANY_REFUNDS: TradeResultCode
TRADE_RESULT_SPLIT_EXCEEDS_HELD: TradeResultCode
TRADE_RESULT_EXTENSION_ID_MUST_NOT_BE_ZERO: TradeResultCode
TRADE_RESULT_EXTENSION_OUT_OF_RANGE: TradeResultCode
TRADE_RESULT_TOO_MANY_EXTENSIONS: TradeResultCode
TRADE_RESULT_TRANSFER_FAILED: TradeResultCode
TRADE_RESULT_INTERNAL_ERROR: TradeResultCode
TRADE_RESULT_TIMER_NOT_RUNNING: TradeResultCode
TRADE_ROLE_BUYER: TradeRole
TRADE_ROLE_SELLER: TradeRole

class TradeResult(_message.Message):
    __slots__ = ("code", "transfer_result")
    CODE_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_RESULT_FIELD_NUMBER: _ClassVar[int]
    code: TradeResultCode
    transfer_result: _types_pb2.CreateTransferResult
    def __init__(self, code: _Optional[_Union[TradeResultCode, str]] = ..., transfer_result: _Optional[_Union[_types_pb2.CreateTransferResult, str]] = ...) -> None: ...

class TradeResultsResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[TradeResult]
    def __init__(self, results: _Optional[_Iterable[_Union[TradeResult, _Mapping]]] = ...) -> None: ...

class CreateTrade(_message.Message):
    __slots__ = ("id", "buyer_account_id", "seller_account_id", "amount", "ledger", "fee_bps", "ship_by_timeout_s", "auto_confirm_timeout_s", "user_data_128", "user_data_64", "user_data_32")
    ID_FIELD_NUMBER: _ClassVar[int]
    BUYER_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    SELLER_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    LEDGER_FIELD_NUMBER: _ClassVar[int]
    FEE_BPS_FIELD_NUMBER: _ClassVar[int]
    SHIP_BY_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    AUTO_CONFIRM_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    USER_DATA_128_FIELD_NUMBER: _ClassVar[int]
    USER_DATA_64_FIELD_NUMBER: _ClassVar[int]
    USER_DATA_32_FIELD_NUMBER: _ClassVar[int]
    id: _types_pb2.U128
    buyer_account_id: _types_pb2.U128
    seller_account_id: _types_pb2.U128
    amount: int
    ledger: int
    fee_bps: int
    ship_by_timeout_s: int
    auto_confirm_timeout_s: int
    user_data_128: _types_pb2.U128
    user_data_64: int
    user_data_32: int
    def __init__(self, id: _Optional[_Union[_types_pb2.U128, _Mapping]] = ..., buyer_account_id: _Optional[_Union[_types_pb2.U128, _Mapping]] = ..., seller_account_id: _Optional[_Union[_types_pb2.U128, _Mapping]] = ..., amount: _Optional[int] = ..., ledger: _Optional[int] = ..., fee_bps: _Optional[int] = ..., ship_by_timeout_s: _Optional[int] = ..., auto_confirm_timeout_s: _Optional[int] = ..., user_data_128: _Optional[_Union[_types_pb2.U128, _Mapping]] = ..., user_data_64: _Optional[int] = ..., user_data_32: _Optional[int] = ...) -> None: ...

class CreateTradesRequest(_message.Message):
    __slots__ = ("trades",)
    TRADES_FIELD_NUMBER: _ClassVar[int]
    trades: _containers.RepeatedCompositeFieldContainer[CreateTrade]
    def __init__(self, trades: _Optional[_Iterable[_Union[CreateTrade, _Mapping]]] = ...) -> None: ...

class TradeId(_message.Message):
    __slots__ = ("trade_id",)
    TRADE_ID_FIELD_NUMBER: _ClassVar[int]
    trade_id: _types_pb2.U128
    def __init__(self, trade_id: _Optional[_Union[_types_pb2.U128, _Mapping]] = ...) -> None: ...

class TradeIdsRequest(_message.Message):
    __slots__ = ("trades",)
    TRADES_FIELD_NUMBER: _ClassVar[int]
    trades: _containers.RepeatedCompositeFieldContainer[TradeId]
    def __init__(self, trades: _Optional[_Iterable[_Union[TradeId, _Mapping]]] = ...) -> None: ...

class Refund(_message.Message):
    __slots__ = ("trade_id", "refund_id", "amount")
    TRADE_ID_FIELD_NUMBER: _ClassVar[int]
    REFUND_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    trade_id: _types_pb2.U128
    refund_id: _types_pb2.U128
    amount: int
    def __init__(self, trade_id: _Optional[_Union[_types_pb2.U128, _Mapping]] = ..., refund_id: _Optional[_Union[_types_pb2.U128, _Mapping]] = ..., amount: _Optional[int] = ...) -> None: ...

class RefundTradesRequest(_message.Message):
    __slots__ = ("refunds",)
    REFUNDS_FIELD_NUMBER: _ClassVar[int]
    refunds: _containers.RepeatedCompositeFieldContainer[Refund]
    def __init__(self, refunds: _Optional[_Iterable[_Union[Refund, _Mapping]]] = ...) -> None: ...

class DisputeResolution(_message.Message):
    __slots__ = ("trade_id", "buyer_amount")
    TRADE_ID_FIELD_NUMBER: _ClassVar[int]
    BUYER_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    trade_id: _types_pb2.U128
    buyer_amount: int
    def __init__(self, trade_id: _Optional[_Union[_types_pb2.U128, _Mapping]] = ..., buyer_amount: _Optional[int] = ...) -> None: ...

class ResolveDisputesRequest(_message.Message):
    __slots__ = ("resolutions",)
    RESOLUTIONS_FIELD_NUMBER: _ClassVar[int]
    resolutions: _containers.RepeatedCompositeFieldContainer[DisputeResolution]
    def __init__(self, resolutions: _Optional[_Iterable[_Union[DisputeResolution, _Mapping]]] = ...) -> None: ...

class Extension(_message.Message):
    __slots__ = ("trade_id", "extension_id", "extend_by_s")
    TRADE_ID_FIELD_NUMBER: _ClassVar[int]
    EXTENSION_ID_FIELD_NUMBER: _ClassVar[int]
    EXTEND_BY_S_FIELD_NUMBER: _ClassVar[int]
    trade_id: _types_pb2.U128
    extension_id: _types_pb2.U128
    extend_by_s: int
    def __init__(self, trade_id: _Optional[_Union[_types_pb2.U128, _Mapping]] = ..., extension_id: _Optional[_Union[_types_pb2.U128, _Mapping]] = ..., extend_by_s: _Optional[int] = ...) -> None: ...

class ExtendTradesRequest(_message.Message):
    __slots__ = ("extensions",)
    EXTENSIONS_FIELD_NUMBER: _ClassVar[int]
    extensions: _containers.RepeatedCompositeFieldContainer[Extension]
    def __init__(self, extensions: _Optional[_Iterable[_Union[Extension, _Mapping]]] = ...) -> None: ...

class TradeRefund(_message.Message):
    __slots__ = ("refund_id", "amount")
    REFUND_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    refund_id: _types_pb2.U128
    amount: int
    def __init__(self, refund_id: _Optional[_Union[_types_pb2.U128, _Mapping]] = ..., amount: _Optional[int] = ...) -> None: ...

class TradeExtension(_message.Message):
    __slots__ = ("extension_id", "extend_by_s")
    EXTENSION_ID_FIELD_NUMBER: _ClassVar[int]
    EXTEND_BY_S_FIELD_NUMBER: _ClassVar[int]
    extension_id: _types_pb2.U128
    extend_by_s: int
    def __init__(self, extension_id: _Optional[_Union[_types_pb2.U128, _Mapping]] = ..., extend_by_s: _Optional[int] = ...) -> None: ...

class Trade(_message.Message):
    __slots__ = ("id", "buyer_account_id", "seller_account_id", "amount", "ledger", "fee_bps", "ship_by_timeout_s", "auto_confirm_timeout_s", "user_data_128", "user_data_64", "user_data_32", "state", "state_before_dispute", "closed_by", "version", "held", "refunded", "released", "fee", "created_at", "shipped_at", "closed_at", "timer", "deadline", "timer_remaining_ns", "extended_s", "dispute_opened", "refunds", "extensions", "escrow_account_id", "fee_account_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    BUYER_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    SELLER_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    LEDGER_FIELD_NUMBER: _ClassVar[int]
    FEE_BPS_FIELD_NUMBER: _ClassVar[int]
    SHIP_BY_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    AUTO_CONFIRM_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    USER_DATA_128_FIELD_NUMBER: _ClassVar[int]
    USER_DATA_64_FIELD_NUMBER: _ClassVar[int]
    USER_DATA_32_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STATE_BEFORE_DISPUTE_FIELD_NUMBER: _ClassVar[int]
    CLOSED_BY_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    REFUNDED_FIELD_NUMBER: _ClassVar[int]
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    FEE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    SHIPPED_AT_FIELD_NUMBER: _ClassVar[int]
    CLOSED_AT_FIELD_NUMBER: _ClassVar[int]
    TIMER_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_FIELD_NUMBER: _ClassVar[int]
    TIMER_REMAINING_NS_FIELD_NUMBER: _ClassVar[int]
    EXTENDED_S_FIELD_NUMBER: _ClassVar[int]
    DISPUTE_OPENED_FIELD_NUMBER: _ClassVar[int]
    REFUNDS_FIELD_NUMBER: _ClassVar[int]
    EXTENSIONS_FIELD_NUMBER: _ClassVar[int]
    ESCROW_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    FEE_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    id: _types_pb2.U128
    buyer_account_id: _types_pb2.U128
    seller_account_id: _types_pb2.U128
    amount: int
    ledger: int
    fee_bps: int
    ship_by_timeout_s: int
    auto_confirm_timeout_s: int
    user_data_128: _types_pb2.U128
    user_data_64: int
    user_data_32: int
    state: TradeState
    state_before_dispute: TradeState
    closed_by: TradeClosedBy
    version: int
    held: int
    refunded: int
    released: int
    fee: int
    created_at: int
    shipped_at: int
    closed_at: int
    timer: TradeTimer
    deadline: int
    timer_remaining_ns: int
    extended_s: int
    dispute_opened: bool
    refunds: _containers.RepeatedCompositeFieldContainer[TradeRefund]
    extensions: _containers.RepeatedCompositeFieldContainer[TradeExtension]
    escrow_account_id: _types_pb2.U128
    fee_account_id: _types_pb2.U128
    def __init__(self, id: _Optional[_Union[_types_pb2.U128, _Mapping]] = ..., buyer_account_id: _Optional[_Union[_types_pb2.U128, _Mapping]] = ..., seller_account_id: _Optional[_Union[_types_pb2.U128, _Mapping]] = ..., amount: _Optional[int] = ..., ledger: _Optional[int] = ..., fee_bps: _Optional[int] = ..., ship_by_timeout_s: _Optional[int] = ..., auto_confirm_timeout_s: _Optional[int] = ..., user_data_128: _Optional[_Union[_types_pb2.U128, _Mapping]] = ..., user_data_64: _Optional[int] = ..., user_data_32: _Optional[int] = ..., state: _Optional[_Union[TradeState, str]] = ..., state_before_dispute: _Optional[_Union[TradeState, str]] = ..., closed_by: _Optional[_Union[TradeClosedBy, str]] = ..., version: _Optional[int] = ..., held: _Optional[int] = ..., refunded: _Optional[int] = ..., released: _Optional[int] = ..., fee: _Optional[int] = ..., created_at: _Optional[int] = ..., shipped_at: _Optional[int] = ..., closed_at: _Optional[int] = ..., timer: _Optional[_Union[TradeTimer, str]] = ..., deadline: _Optional[int] = ..., timer_remaining_ns: _Optional[int] = ..., extended_s: _Optional[int] = ..., dispute_opened: _Optional[bool] = ..., refunds: _Optional[_Iterable[_Union[TradeRefund, _Mapping]]] = ..., extensions: _Optional[_Iterable[_Union[TradeExtension, _Mapping]]] = ..., escrow_account_id: _Optional[_Union[_types_pb2.U128, _Mapping]] = ..., fee_account_id: _Optional[_Union[_types_pb2.U128, _Mapping]] = ...) -> None: ...

class LookupTradesRequest(_message.Message):
    __slots__ = ("ids", "consistency")
    IDS_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedCompositeFieldContainer[_types_pb2.U128]
    consistency: _ledger_pb2.ReadConsistency
    def __init__(self, ids: _Optional[_Iterable[_Union[_types_pb2.U128, _Mapping]]] = ..., consistency: _Optional[_Union[_ledger_pb2.ReadConsistency, str]] = ...) -> None: ...

class LookupTradesResponse(_message.Message):
    __slots__ = ("trades",)
    TRADES_FIELD_NUMBER: _ClassVar[int]
    trades: _containers.RepeatedCompositeFieldContainer[Trade]
    def __init__(self, trades: _Optional[_Iterable[_Union[Trade, _Mapping]]] = ...) -> None: ...

class ListTradesRequest(_message.Message):
    __slots__ = ("account_id", "role", "limit", "page_token", "consistency")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_FIELD_NUMBER: _ClassVar[int]
    account_id: _types_pb2.U128
    role: TradeRole
    limit: int
    page_token: str
    consistency: _ledger_pb2.ReadConsistency
    def __init__(self, account_id: _Optional[_Union[_types_pb2.U128, _Mapping]] = ..., role: _Optional[_Union[TradeRole, str]] = ..., limit: _Optional[int] = ..., page_token: _Optional[str] = ..., consistency: _Optional[_Union[_ledger_pb2.ReadConsistency, str]] = ...) -> None: ...

class ListTradesResponse(_message.Message):
    __slots__ = ("trades", "next_page_token")
    TRADES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    trades: _containers.RepeatedCompositeFieldContainer[Trade]
    next_page_token: str
    def __init__(self, trades: _Optional[_Iterable[_Union[Trade, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

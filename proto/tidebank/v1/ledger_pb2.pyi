from tidebank.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReadConsistency(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    READ_CONSISTENCY_LINEARIZABLE: _ClassVar[ReadConsistency]
    READ_CONSISTENCY_STALE: _ClassVar[ReadConsistency]
READ_CONSISTENCY_LINEARIZABLE: ReadConsistency
READ_CONSISTENCY_STALE: ReadConsistency

class CreateAccountsRequest(_message.Message):
    __slots__ = ("accounts", "accounts_packed", "owner")
    ACCOUNTS_FIELD_NUMBER: _ClassVar[int]
    ACCOUNTS_PACKED_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    accounts: _containers.RepeatedCompositeFieldContainer[_types_pb2.Account]
    accounts_packed: bytes
    owner: str
    def __init__(self, accounts: _Optional[_Iterable[_Union[_types_pb2.Account, _Mapping]]] = ..., accounts_packed: _Optional[bytes] = ..., owner: _Optional[str] = ...) -> None: ...

class CreateAccountsResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedScalarFieldContainer[_types_pb2.CreateAccountResult]
    def __init__(self, results: _Optional[_Iterable[_Union[_types_pb2.CreateAccountResult, str]]] = ...) -> None: ...

class CreateTransfersRequest(_message.Message):
    __slots__ = ("transfers", "transfers_packed")
    TRANSFERS_FIELD_NUMBER: _ClassVar[int]
    TRANSFERS_PACKED_FIELD_NUMBER: _ClassVar[int]
    transfers: _containers.RepeatedCompositeFieldContainer[_types_pb2.Transfer]
    transfers_packed: bytes
    def __init__(self, transfers: _Optional[_Iterable[_Union[_types_pb2.Transfer, _Mapping]]] = ..., transfers_packed: _Optional[bytes] = ...) -> None: ...

class CreateTransfersResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedScalarFieldContainer[_types_pb2.CreateTransferResult]
    def __init__(self, results: _Optional[_Iterable[_Union[_types_pb2.CreateTransferResult, str]]] = ...) -> None: ...

class LookupAccountsRequest(_message.Message):
    __slots__ = ("ids", "consistency")
    IDS_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedCompositeFieldContainer[_types_pb2.U128]
    consistency: ReadConsistency
    def __init__(self, ids: _Optional[_Iterable[_Union[_types_pb2.U128, _Mapping]]] = ..., consistency: _Optional[_Union[ReadConsistency, str]] = ...) -> None: ...

class LookupAccountsResponse(_message.Message):
    __slots__ = ("accounts",)
    ACCOUNTS_FIELD_NUMBER: _ClassVar[int]
    accounts: _containers.RepeatedCompositeFieldContainer[_types_pb2.Account]
    def __init__(self, accounts: _Optional[_Iterable[_Union[_types_pb2.Account, _Mapping]]] = ...) -> None: ...

class LookupTransfersRequest(_message.Message):
    __slots__ = ("ids", "consistency")
    IDS_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedCompositeFieldContainer[_types_pb2.U128]
    consistency: ReadConsistency
    def __init__(self, ids: _Optional[_Iterable[_Union[_types_pb2.U128, _Mapping]]] = ..., consistency: _Optional[_Union[ReadConsistency, str]] = ...) -> None: ...

class LookupTransfersResponse(_message.Message):
    __slots__ = ("transfers",)
    TRANSFERS_FIELD_NUMBER: _ClassVar[int]
    transfers: _containers.RepeatedCompositeFieldContainer[_types_pb2.Transfer]
    def __init__(self, transfers: _Optional[_Iterable[_Union[_types_pb2.Transfer, _Mapping]]] = ...) -> None: ...

class GetAccountTransfersRequest(_message.Message):
    __slots__ = ("account_id", "timestamp_min", "timestamp_max", "limit", "debits", "credits", "reversed", "page_token", "consistency")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MIN_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MAX_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    DEBITS_FIELD_NUMBER: _ClassVar[int]
    CREDITS_FIELD_NUMBER: _ClassVar[int]
    REVERSED_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_FIELD_NUMBER: _ClassVar[int]
    account_id: _types_pb2.U128
    timestamp_min: int
    timestamp_max: int
    limit: int
    debits: bool
    credits: bool
    reversed: bool
    page_token: str
    consistency: ReadConsistency
    def __init__(self, account_id: _Optional[_Union[_types_pb2.U128, _Mapping]] = ..., timestamp_min: _Optional[int] = ..., timestamp_max: _Optional[int] = ..., limit: _Optional[int] = ..., debits: _Optional[bool] = ..., credits: _Optional[bool] = ..., reversed: _Optional[bool] = ..., page_token: _Optional[str] = ..., consistency: _Optional[_Union[ReadConsistency, str]] = ...) -> None: ...

class GetAccountTransfersResponse(_message.Message):
    __slots__ = ("transfers", "next_page_token")
    TRANSFERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    transfers: _containers.RepeatedCompositeFieldContainer[_types_pb2.Transfer]
    next_page_token: str
    def __init__(self, transfers: _Optional[_Iterable[_Union[_types_pb2.Transfer, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

from tidebank.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class QueryRequest(_message.Message):
    __slots__ = ("shard_id", "name", "args", "linearizable")
    SHARD_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    LINEARIZABLE_FIELD_NUMBER: _ClassVar[int]
    shard_id: int
    name: str
    args: bytes
    linearizable: bool
    def __init__(self, shard_id: _Optional[int] = ..., name: _Optional[str] = ..., args: _Optional[bytes] = ..., linearizable: _Optional[bool] = ...) -> None: ...

class QueryResponse(_message.Message):
    __slots__ = ("value",)
    VALUE_FIELD_NUMBER: _ClassVar[int]
    value: bytes
    def __init__(self, value: _Optional[bytes] = ...) -> None: ...

class InternalSubmitRequest(_message.Message):
    __slots__ = ("shard_id", "kind", "items")
    SHARD_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    shard_id: int
    kind: int
    items: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, shard_id: _Optional[int] = ..., kind: _Optional[int] = ..., items: _Optional[_Iterable[bytes]] = ...) -> None: ...

class TxnResult(_message.Message):
    __slots__ = ("ok", "failed_index", "code", "timestamp", "value")
    OK_FIELD_NUMBER: _ClassVar[int]
    FAILED_INDEX_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    failed_index: int
    code: int
    timestamp: int
    value: bytes
    def __init__(self, ok: _Optional[bool] = ..., failed_index: _Optional[int] = ..., code: _Optional[int] = ..., timestamp: _Optional[int] = ..., value: _Optional[bytes] = ...) -> None: ...

class InternalSubmitResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[TxnResult]
    def __init__(self, results: _Optional[_Iterable[_Union[TxnResult, _Mapping]]] = ...) -> None: ...

class ResolveRequest(_message.Message):
    __slots__ = ("coordinator_shard", "txid")
    COORDINATOR_SHARD_FIELD_NUMBER: _ClassVar[int]
    TXID_FIELD_NUMBER: _ClassVar[int]
    coordinator_shard: int
    txid: _types_pb2.U128
    def __init__(self, coordinator_shard: _Optional[int] = ..., txid: _Optional[_Union[_types_pb2.U128, _Mapping]] = ...) -> None: ...

class ResolveResponse(_message.Message):
    __slots__ = ("decision",)
    DECISION_FIELD_NUMBER: _ClassVar[int]
    decision: TxnResult
    def __init__(self, decision: _Optional[_Union[TxnResult, _Mapping]] = ...) -> None: ...

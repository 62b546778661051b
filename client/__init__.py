"""The tidebank Python client: ``Client`` (blocking, thread-safe) and ``AsyncClient`` (asyncio).

    from tidebank.client import Client, Transfer, new_id

    with Client(["127.0.0.1:7001", "127.0.0.1:7002"]) as c:
        results = c.create_transfers([Transfer(id=new_id(), debit_account_id=a, credit_account_id=b,
                                               amount=100, ledger=1, code=1)])

Both clients route items to shard leaders, retry with the same ids (ids are the
idempotency keys) until ``timeout_s``, and coalesce the items of concurrent
callers into batched RPCs. The same holds for the escrow (trades) API:
``create_trades``, ``ship_trades``, ``confirm_trades``, ``refund_trades``, the
dispute calls and ``extend_trades`` (each also as a single-item call, e.g.
``create_trade``), ``lookup_trades`` and ``list_trades`` / ``iter_trades``. A write
whose outcome could not be learned raises OutcomeUnknownError: re-submit the same
ids or look them up; never guess.
"""

from ._async import AsyncClient
from ._errors import (
    ClientClosedError,
    FieldViolation,
    InvalidRequestError,
    OutcomeUnknownError,
    TidebankError,
    UnavailableError,
)
from ._model import (
    Account,
    AccountFlags,
    AccountResult,
    CreateAccountResult,
    CreateTransferResult,
    DisputeResolution,
    Extension,
    NewTrade,
    Page,
    ReadConsistency,
    Refund,
    Replica,
    Shard,
    ShardMap,
    Trade,
    TradeClosedBy,
    TradePage,
    TradeResult,
    TradeResultCode,
    TradeRole,
    TradeState,
    TradeTimer,
    Transfer,
    TransferFlags,
    TransferResult,
    new_id,
    trade_from_proto,
    trade_to_proto,
    u128_from_proto,
    u128_to_proto,
)
from ._sync import Client

__all__ = [
    "Account",
    "AccountFlags",
    "AccountResult",
    "AsyncClient",
    "Client",
    "ClientClosedError",
    "CreateAccountResult",
    "CreateTransferResult",
    "DisputeResolution",
    "Extension",
    "FieldViolation",
    "InvalidRequestError",
    "NewTrade",
    "OutcomeUnknownError",
    "Page",
    "ReadConsistency",
    "Refund",
    "Replica",
    "Shard",
    "ShardMap",
    "TidebankError",
    "Trade",
    "TradeClosedBy",
    "TradePage",
    "TradeResult",
    "TradeResultCode",
    "TradeRole",
    "TradeState",
    "TradeTimer",
    "Transfer",
    "TransferFlags",
    "TransferResult",
    "UnavailableError",
    "new_id",
    "trade_from_proto",
    "trade_to_proto",
    "u128_from_proto",
    "u128_to_proto",
]

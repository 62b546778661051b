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

Clearing (net settlement between participants) is the same client too:
``register_participants`` / ``update_participants`` (and ``set_net_debit_cap``,
``suspend_participant``, ``resume_participant``), ``lookup_participants``,
``list_participants``, ``submit_items`` (any number, cut into batches, coalesced with
concurrent callers), ``lookup_items``, the windows (``list_windows``, ``get_window``,
``close_window``, ``settle_window``, ``unwind_participant``, ``abort_window``) and
``export_statement``, which streams a participant's items and then its Statement (a
stream that breaks is resumed after the last item handed out)::

    with client.export_statement(ledger, window, participant_id) as export:
        for item in export:          # ClearingItem, by id; one chunk in memory at a time
            ...
        statement = export.statement # after the last item

(``async for`` and ``async with`` on AsyncClient.) Clearing requests go to any node,
which routes them to the shard leaders itself.
"""

from tidebank.common.tls import Plaintext, TlsFiles  # noqa: E402 - what `tls=` takes

from ._async import AsyncClient, AsyncStatementExport
from ._errors import (
    ClientClosedError,
    FieldViolation,
    InvalidRequestError,
    OutcomeUnknownError,
    PermissionDeniedError,
    TidebankError,
    UnavailableError,
)
from ._model import (
    Account,
    AccountFlags,
    AccountResult,
    BilateralPosition,
    ClearingItem,
    ClearingItemResult,
    ClearingItemResultCode,
    ClearingItemStatus,
    CreateAccountResult,
    CreateTransferResult,
    DisputeResolution,
    Extension,
    NetPosition,
    NewTrade,
    Page,
    Participant,
    ParticipantResult,
    ParticipantResultCode,
    ParticipantUpdate,
    ReadConsistency,
    Refund,
    Replica,
    Shard,
    ShardMap,
    Shortfall,
    Statement,
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
    Window,
    WindowResultCode,
    WindowState,
    WindowStep,
    new_id,
    trade_from_proto,
    trade_to_proto,
    u128_from_proto,
    u128_to_proto,
)
from ._sync import Client, StatementExport

__all__ = [
    "Plaintext",
    "PermissionDeniedError",
    "TlsFiles",
    "Account",
    "AccountFlags",
    "AccountResult",
    "AsyncClient",
    "AsyncStatementExport",
    "BilateralPosition",
    "ClearingItem",
    "ClearingItemResult",
    "ClearingItemResultCode",
    "ClearingItemStatus",
    "Client",
    "ClientClosedError",
    "CreateAccountResult",
    "CreateTransferResult",
    "DisputeResolution",
    "Extension",
    "FieldViolation",
    "InvalidRequestError",
    "NetPosition",
    "NewTrade",
    "OutcomeUnknownError",
    "Page",
    "Participant",
    "ParticipantResult",
    "ParticipantResultCode",
    "ParticipantUpdate",
    "ReadConsistency",
    "Refund",
    "Replica",
    "Shard",
    "ShardMap",
    "Shortfall",
    "Statement",
    "StatementExport",
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
    "Window",
    "WindowResultCode",
    "WindowState",
    "WindowStep",
    "new_id",
    "trade_from_proto",
    "trade_to_proto",
    "u128_from_proto",
    "u128_to_proto",
]

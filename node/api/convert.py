"""Translation between protobuf messages and the state machine's records.

Kept apart so that the state machine never sees protobuf and the servicers never
touch record internals. These run once per item per request: keep them flat.
"""

from __future__ import annotations

from tidebank.node.ledger.escrow import system_accounts
from tidebank.node.ledger.records import Account, Transfer
from tidebank.node.ledger.trades import CMD_CREATE, CMD_EXTEND, CMD_REFUND, CMD_RESOLVE_DISPUTE, Trade, TradeCommand
from tidebank.v1 import escrow_pb2, types_pb2

_U64 = (1 << 64) - 1


def u128_from_pb(value: types_pb2.U128) -> int:
    return (value.hi << 64) | value.lo


def u128_to_pb(target: types_pb2.U128, value: int) -> None:
    target.hi = value >> 64
    target.lo = value & _U64


def i128_from_pb(value: types_pb2.I128) -> int:
    raw = (value.hi << 64) | value.lo
    return raw - (1 << 128) if value.hi >> 63 else raw


def i128_to_pb(target: types_pb2.I128, value: int) -> None:
    """A signed 128-bit value, two's complement (ValueError beyond 128 bits)."""
    if not -(1 << 127) <= value < 1 << 127:
        raise ValueError(f"{value} does not fit in 128 signed bits")
    raw = value & ((1 << 128) - 1)
    target.hi = raw >> 64
    target.lo = raw & _U64


def account_from_pb(m: types_pb2.Account) -> Account:
    return Account(
        id=(m.id.hi << 64) | m.id.lo,
        debits_pending=m.debits_pending,
        debits_posted=m.debits_posted,
        credits_pending=m.credits_pending,
        credits_posted=m.credits_posted,
        user_data_128=(m.user_data_128.hi << 64) | m.user_data_128.lo,
        user_data_64=m.user_data_64,
        user_data_32=m.user_data_32,
        ledger=m.ledger,
        code=m.code,
        flags=m.flags,
        timestamp=m.timestamp,
    )


def transfer_from_pb(m: types_pb2.Transfer) -> Transfer:
    return Transfer(
        id=(m.id.hi << 64) | m.id.lo,
        debit_account_id=(m.debit_account_id.hi << 64) | m.debit_account_id.lo,
        credit_account_id=(m.credit_account_id.hi << 64) | m.credit_account_id.lo,
        amount=m.amount,
        pending_id=(m.pending_id.hi << 64) | m.pending_id.lo,
        user_data_128=(m.user_data_128.hi << 64) | m.user_data_128.lo,
        user_data_64=m.user_data_64,
        user_data_32=m.user_data_32,
        timeout=m.timeout,
        ledger=m.ledger,
        code=m.code,
        flags=m.flags,
        timestamp=m.timestamp,
    )


def account_to_pb(a: Account, m: types_pb2.Account) -> None:
    """Fill `m` (typically `response.accounts.add()`) from a record."""
    u128_to_pb(m.id, a.id)
    m.debits_pending = a.debits_pending
    m.debits_posted = a.debits_posted
    m.credits_pending = a.credits_pending
    m.credits_posted = a.credits_posted
    if a.user_data_128:
        u128_to_pb(m.user_data_128, a.user_data_128)
    m.user_data_64 = a.user_data_64
    m.user_data_32 = a.user_data_32
    m.ledger = a.ledger
    m.code = a.code
    m.flags = a.flags
    m.timestamp = a.timestamp


def transfer_to_pb(t: Transfer, m: types_pb2.Transfer) -> None:
    u128_to_pb(m.id, t.id)
    u128_to_pb(m.debit_account_id, t.debit_account_id)
    u128_to_pb(m.credit_account_id, t.credit_account_id)
    m.amount = t.amount
    if t.pending_id:
        u128_to_pb(m.pending_id, t.pending_id)
    if t.user_data_128:
        u128_to_pb(m.user_data_128, t.user_data_128)
    m.user_data_64 = t.user_data_64
    m.user_data_32 = t.user_data_32
    m.timeout = t.timeout
    m.ledger = t.ledger
    m.code = t.code
    m.flags = t.flags
    m.timestamp = t.timestamp


# --- escrow ---------------------------------------------------------------------------------------------------

def create_trade_from_pb(m: escrow_pb2.CreateTrade) -> TradeCommand:
    return TradeCommand(
        CMD_CREATE, u128_from_pb(m.id), amount=m.amount, buyer_account_id=u128_from_pb(m.buyer_account_id),
        seller_account_id=u128_from_pb(m.seller_account_id), ledger=m.ledger, fee_bps=m.fee_bps,
        ship_by_timeout_s=m.ship_by_timeout_s, auto_confirm_timeout_s=m.auto_confirm_timeout_s,
        user_data_128=u128_from_pb(m.user_data_128), user_data_64=m.user_data_64, user_data_32=m.user_data_32,
    )  # fmt: skip


def trade_action_from_pb(kind: int):
    """A converter of TradeId messages into commands of one kind (ship, confirm, open/withdraw dispute)."""

    def convert(m: escrow_pb2.TradeId) -> TradeCommand:
        return TradeCommand(kind, u128_from_pb(m.trade_id))

    return convert


def refund_from_pb(m: escrow_pb2.Refund) -> TradeCommand:
    return TradeCommand(CMD_REFUND, u128_from_pb(m.trade_id), arg_id=u128_from_pb(m.refund_id), amount=m.amount)


def resolution_from_pb(m: escrow_pb2.DisputeResolution) -> TradeCommand:
    return TradeCommand(CMD_RESOLVE_DISPUTE, u128_from_pb(m.trade_id), amount=m.buyer_amount)


def extension_from_pb(m: escrow_pb2.Extension) -> TradeCommand:
    return TradeCommand(CMD_EXTEND, u128_from_pb(m.trade_id), arg_id=u128_from_pb(m.extension_id),
                        seconds=m.extend_by_s)


def trade_to_pb(t: Trade, m: escrow_pb2.Trade, slot_count: int) -> None:
    """Fill `m` from a trade record, with the escrow and fee accounts of its (ledger, slot)."""
    u128_to_pb(m.id, t.id)
    u128_to_pb(m.buyer_account_id, t.buyer_account_id)
    u128_to_pb(m.seller_account_id, t.seller_account_id)
    m.amount = t.amount
    m.ledger = t.ledger
    m.fee_bps = t.fee_bps
    m.ship_by_timeout_s = t.ship_by_timeout_s
    m.auto_confirm_timeout_s = t.auto_confirm_timeout_s
    if t.user_data_128:
        u128_to_pb(m.user_data_128, t.user_data_128)
    m.user_data_64 = t.user_data_64
    m.user_data_32 = t.user_data_32
    m.state = t.state
    m.state_before_dispute = t.state_before_dispute
    m.closed_by = t.closed_by
    m.version = t.version
    m.held = t.held
    m.refunded = t.refunded
    m.released = t.released
    m.fee = t.fee
    m.created_at = t.created_at
    m.shipped_at = t.shipped_at
    m.closed_at = t.closed_at
    m.timer = t.timer
    m.deadline = t.deadline
    m.timer_remaining_ns = t.timer_remaining_ns
    m.extended_s = t.extended_s
    m.dispute_opened = t.dispute_opened
    for refund_id, amount in t.refunds:
        r = m.refunds.add(amount=amount)
        u128_to_pb(r.refund_id, refund_id)
    for extension_id, seconds in t.extensions:
        e = m.extensions.add(extend_by_s=seconds)
        u128_to_pb(e.extension_id, extension_id)
    escrow_id, fee_id = system_accounts(t.id, t.ledger, slot_count)
    u128_to_pb(m.escrow_account_id, escrow_id)
    u128_to_pb(m.fee_account_id, fee_id)

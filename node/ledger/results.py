"""Per-item result codes of create_accounts / create_transfers and of the escrow steps.

Mirrors the tidebank.v1 CreateAccountResult / CreateTransferResult / TradeResultCode enums (lower-case,
prefix dropped, same numbers) so the node does not depend on generated protobuf code;
tests/unit/test_result_codes_match_proto.py keeps the two in step.
"""

from __future__ import annotations

import enum


class CreateAccountResult(enum.IntEnum):
    created = 0
    linked_event_failed = 1
    linked_event_chain_open = 2
    timestamp_must_be_zero = 3
    reserved_flag = 4
    id_must_not_be_zero = 5
    id_must_not_be_int_max = 6
    flags_are_mutually_exclusive = 7
    debits_pending_must_be_zero = 8
    debits_posted_must_be_zero = 9
    credits_pending_must_be_zero = 10
    credits_posted_must_be_zero = 11
    ledger_must_not_be_zero = 12
    code_must_not_be_zero = 13
    exists_with_different_flags = 14
    exists_with_different_user_data_128 = 15
    exists_with_different_user_data_64 = 16
    exists_with_different_user_data_32 = 17
    exists_with_different_ledger = 18
    exists_with_different_code = 19
    exists = 20
    internal_error = 21
    chain_spans_shards = 22
    id_reserved_for_escrow = 23
    exists_with_different_owner = 24
    slot_moving = 25  # the account's slot is moving between shards (node/ledger/slot_moves.py): retry
    slot_moved = 26  # the account's slot has moved to another shard: refresh the map, retry there


class CreateTransferResult(enum.IntEnum):
    created = 0
    linked_event_failed = 1
    linked_event_chain_open = 2
    timestamp_must_be_zero = 3
    reserved_flag = 4
    id_must_not_be_zero = 5
    id_must_not_be_int_max = 6
    flags_are_mutually_exclusive = 7
    debit_account_id_must_not_be_zero = 8
    debit_account_id_must_not_be_int_max = 9
    credit_account_id_must_not_be_zero = 10
    credit_account_id_must_not_be_int_max = 11
    accounts_must_be_different = 12
    pending_id_must_be_zero = 13
    pending_id_must_not_be_zero = 14
    pending_id_must_not_be_int_max = 15
    pending_id_must_be_different = 16
    timeout_reserved_for_pending_transfer = 17
    amount_must_not_be_zero = 18
    ledger_must_not_be_zero = 19
    code_must_not_be_zero = 20
    debit_account_not_found = 21
    credit_account_not_found = 22
    accounts_must_have_the_same_ledger = 23
    transfer_must_have_the_same_ledger_as_accounts = 24
    pending_transfer_not_found = 25
    pending_transfer_not_pending = 26
    pending_transfer_has_different_debit_account_id = 27
    pending_transfer_has_different_credit_account_id = 28
    pending_transfer_has_different_ledger = 29
    pending_transfer_has_different_code = 30
    exceeds_pending_transfer_amount = 31
    pending_transfer_has_different_amount = 32
    pending_transfer_already_posted = 33
    pending_transfer_already_voided = 34
    pending_transfer_expired = 35
    exists_with_different_flags = 36
    exists_with_different_debit_account_id = 37
    exists_with_different_credit_account_id = 38
    exists_with_different_amount = 39
    exists_with_different_pending_id = 40
    exists_with_different_user_data_128 = 41
    exists_with_different_user_data_64 = 42
    exists_with_different_user_data_32 = 43
    exists_with_different_timeout = 44
    exists_with_different_code = 45
    exists = 46
    id_already_failed = 47
    overflows_debits_pending = 48
    overflows_credits_pending = 49
    overflows_debits_posted = 50
    overflows_credits_posted = 51
    overflows_debits = 52
    overflows_credits = 53
    overflows_timeout = 54
    exceeds_credits = 55
    exceeds_debits = 56
    debit_account_already_closed = 57
    credit_account_already_closed = 58
    accounts_on_different_shards = 59
    exists_with_different_ledger = 60
    internal_error = 61
    account_reserved_for_escrow = 62
    slot_moving = 63  # an account's slot is moving between shards (node/ledger/slot_moves.py): retry
    slot_moved = 64  # an account's slot has moved to another shard: refresh the map, retry there


class TradeResult(enum.IntEnum):
    """Per-item result codes of the Escrow service (tidebank.v1.TradeResultCode)."""

    ok = 0
    exists = 1
    id_must_not_be_zero = 2
    id_must_not_be_int_max = 3
    buyer_account_id_must_not_be_zero = 4
    seller_account_id_must_not_be_zero = 5
    account_id_must_not_be_int_max = 6
    accounts_must_be_different = 7
    account_reserved = 8
    amount_must_not_be_zero = 9
    ledger_must_not_be_zero = 10
    fee_bps_above_10000 = 11
    timeout_out_of_range = 12
    buyer_account_not_found = 13
    seller_account_not_found = 14
    account_has_different_ledger = 15
    account_closed = 16
    account_flags_not_supported = 17
    exists_with_different_buyer_account_id = 18
    exists_with_different_seller_account_id = 19
    exists_with_different_amount = 20
    exists_with_different_ledger = 21
    exists_with_different_fee_bps = 22
    exists_with_different_timeouts = 23
    exists_with_different_user_data = 24
    trade_not_found = 25
    trade_is_shipped = 26
    trade_is_settled = 27
    trade_is_refunded = 28
    trade_is_disputed = 29
    trade_is_closed = 30
    trade_is_not_disputed = 31
    dispute_already_opened = 32
    deadline_passed = 33
    refund_exceeds_held = 34
    refund_id_must_not_be_zero = 35
    too_many_refunds = 36
    split_exceeds_held = 37
    extension_id_must_not_be_zero = 38
    extension_out_of_range = 39
    too_many_extensions = 40
    transfer_failed = 41
    internal_error = 42
    timer_not_running = 43


class ClearingItemResult(enum.IntEnum):
    """Per-item result codes of Clearing.SubmitItems (tidebank.v1.ClearingItemResult)."""

    ok = 0
    exists = 1
    id_must_not_be_zero = 2
    id_must_not_be_int_max = 3
    amount_must_not_be_zero = 4
    ledger_must_not_be_zero = 5
    same_participant = 6
    payer_not_found = 7
    payee_not_found = 8
    payer_suspended = 9
    ledger_mismatch = 10
    exceeds_net_debit_cap = 11
    exists_with_different_payer = 12
    exists_with_different_payee = 13
    exists_with_different_amount = 14
    exists_with_different_ledger = 15
    exists_with_different_user_data = 16
    internal_error = 17
    slot_moving = 18  # the shard is giving or taking hash slots (node/ledger/slot_moves.py): retry


#: A clearing item refused only because its shard's share of the payer's cap is used up: never an answer to a
#: client. The node moves allowance to that shard and retries the item; exceeds_net_debit_cap if it cannot.
ITEM_ALLOWANCE_LOW = 255

#: A scheduled close (BEGIN_CLOSE with a cycle) of a window not yet open for a whole cycle in cluster time: never
#: an answer to a client. Nothing changed; the clearing pass tries again later.
WINDOW_NOT_DUE = 255


class ParticipantResult(enum.IntEnum):
    """Per-item result codes of participant registration and changes (tidebank.v1.ParticipantResult)."""

    ok = 0
    exists = 1
    id_must_not_be_zero = 2
    id_must_not_be_int_max = 3
    ledger_must_not_be_zero = 4
    settlement_account_not_found = 5
    settlement_account_ledger_mismatch = 6
    exists_with_different_ledger = 7
    exists_with_different_code = 8
    exists_with_different_name = 9
    exists_with_different_settlement_account = 10
    participant_not_found = 11
    cap_below_position = 12
    internal_error = 13
    participants_limit_reached = 14


class WindowResult(enum.IntEnum):
    """Result codes of clearing window steps (tidebank.v1.WindowResult)."""

    ok = 0
    window_not_found = 1
    window_not_open = 2
    window_not_closed = 3
    window_already_settled = 4
    previous_window_still_closing = 5
    insufficient_funds = 6
    participant_not_in_window = 7
    settlement_failed = 8
    internal_error = 9
    settlement_in_progress = 10
    window_already_aborted = 11

"""Transfers whose accounts live on different shards: all legs or none, same codes as within one shard."""

from __future__ import annotations

import pytest

from tidebank.client import AccountFlags, CreateTransferResult, TransferFlags

from .conftest import wait_until
from .test_ledger_api import balances, one, open_accounts, transfer

pytestmark = pytest.mark.integration


def test_transfer_between_two_shards_moves_money_on_both(client, ids):
    (debit,) = open_accounts(client, ids, 0, 1)
    (credit,) = open_accounts(client, ids, 1, 1)
    assert one(client, transfer(ids, debit, credit, 900)) == CreateTransferResult.created
    assert balances(client, debit) == (0, 900, 0, 0)
    assert balances(client, credit) == (0, 0, 0, 900)


def test_resubmitted_cross_shard_transfer_returns_exists_and_moves_money_once(client, ids):
    (debit,) = open_accounts(client, ids, 2, 1)
    (credit,) = open_accounts(client, ids, 3, 1)
    t = transfer(ids, debit, credit, 40)
    assert one(client, t) == CreateTransferResult.created
    assert one(client, t) == CreateTransferResult.exists
    assert balances(client, debit) == (0, 40, 0, 0)
    assert balances(client, credit) == (0, 0, 0, 40)


def test_cross_shard_transfer_overdrawing_the_debit_account_changes_nothing(client, ids):
    (debit,) = open_accounts(client, ids, 0, 1, flags=AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)
    (credit,) = open_accounts(client, ids, 2, 1)
    assert one(client, transfer(ids, debit, credit, 1)) == CreateTransferResult.exceeds_credits
    assert balances(client, debit) == (0, 0, 0, 0) and balances(client, credit) == (0, 0, 0, 0)


def test_cross_shard_transfer_to_an_unknown_account_changes_nothing(client, ids):
    (debit,) = open_accounts(client, ids, 1, 1)
    missing = ids.on_shard(3)
    assert one(client, transfer(ids, debit, missing, 5)) == CreateTransferResult.credit_account_not_found
    assert balances(client, debit) == (0, 0, 0, 0)


def test_linked_chain_over_three_shards_fails_whole_when_its_last_item_fails(client, ids):
    (a,) = open_accounts(client, ids, 0, 1)
    (b,) = open_accounts(client, ids, 1, 1)
    (c,) = open_accounts(client, ids, 2, 1, flags=AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)
    (d,) = open_accounts(client, ids, 3, 1)
    chain = [transfer(ids, a, b, 10, flags=TransferFlags.LINKED),
             transfer(ids, b, c, 10, flags=TransferFlags.LINKED),
             transfer(ids, c, d, 11)]
    assert [r.status for r in client.create_transfers(chain)] == [
        CreateTransferResult.linked_event_failed, CreateTransferResult.linked_event_failed,
        CreateTransferResult.exceeds_credits]
    for account in (a, b, c, d):
        assert balances(client, account) == (0, 0, 0, 0)


def test_linked_chain_over_three_shards_commits_every_leg(client, ids):
    (a,) = open_accounts(client, ids, 0, 1)
    (b,) = open_accounts(client, ids, 1, 1)
    (c,) = open_accounts(client, ids, 2, 1, flags=AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)
    (d,) = open_accounts(client, ids, 3, 1)
    chain = [transfer(ids, a, b, 10, flags=TransferFlags.LINKED),
             transfer(ids, b, c, 10, flags=TransferFlags.LINKED),
             transfer(ids, c, d, 10)]  # c may pay d because the chain credited it first
    assert [r.status for r in client.create_transfers(chain)] == [CreateTransferResult.created] * 3
    assert balances(client, c) == (0, 10, 0, 10)
    assert balances(client, d) == (0, 0, 0, 10)


def test_pending_transfer_across_shards_holds_both_sides_until_posted_in_part(client, ids):
    (debit,) = open_accounts(client, ids, 1, 1)
    (credit,) = open_accounts(client, ids, 2, 1)
    pending = transfer(ids, debit, credit, 500, flags=TransferFlags.PENDING)
    assert one(client, pending) == CreateTransferResult.created
    assert balances(client, debit) == (500, 0, 0, 0)
    assert balances(client, credit) == (0, 0, 500, 0)
    post = transfer(ids, debit, credit, 200, pending_id=pending.id, flags=TransferFlags.POST_PENDING_TRANSFER)
    assert one(client, post) == CreateTransferResult.created
    assert balances(client, debit) == (0, 200, 0, 0)
    assert balances(client, credit) == (0, 0, 0, 200)


def test_pending_transfer_across_shards_voided_releases_both_sides(client, ids):
    (debit,) = open_accounts(client, ids, 3, 1)
    (credit,) = open_accounts(client, ids, 0, 1)
    pending = transfer(ids, debit, credit, 70, flags=TransferFlags.PENDING)
    assert one(client, pending) == CreateTransferResult.created
    void = transfer(ids, debit, credit, 0, pending_id=pending.id, flags=TransferFlags.VOID_PENDING_TRANSFER)
    assert one(client, void) == CreateTransferResult.created
    assert balances(client, debit) == (0, 0, 0, 0) and balances(client, credit) == (0, 0, 0, 0)


def test_pending_transfer_across_shards_expires_on_both_sides(client, ids):
    (debit,) = open_accounts(client, ids, 0, 1)
    (credit,) = open_accounts(client, ids, 3, 1)
    pending = transfer(ids, debit, credit, 33, flags=TransferFlags.PENDING, timeout=1)
    assert one(client, pending) == CreateTransferResult.created
    wait_until(lambda: balances(client, debit) == (0, 0, 0, 0) and balances(client, credit) == (0, 0, 0, 0),
               15, "both holds to expire")
    post = transfer(ids, debit, credit, 0, pending_id=pending.id, flags=TransferFlags.POST_PENDING_TRANSFER)
    assert one(client, post) == CreateTransferResult.pending_transfer_expired


def test_cross_shard_transfer_is_found_by_id_and_in_both_accounts_histories(client, ids):
    (debit,) = open_accounts(client, ids, 2, 1)
    (credit,) = open_accounts(client, ids, 0, 1)
    t = transfer(ids, debit, credit, 12)
    assert one(client, t) == CreateTransferResult.created
    (found,) = client.lookup_transfers([t.id])
    assert (found.debit_account_id, found.credit_account_id, found.amount) == (debit, credit, 12)
    assert [x.id for x in client.get_account_transfers(debit).items] == [t.id]
    assert [x.id for x in client.get_account_transfers(credit).items] == [t.id]

"""Unit tests of the ledger state machine: one behaviour per test, on a real LMDB env."""

from __future__ import annotations

import logging
import struct

import lmdb
import pytest

from tidebank.node.ledger import state_machine as sm_module
from tidebank.node.ledger.clearing import ClearingRules
from tidebank.node.ledger.operations import OP_CREATE_ACCOUNTS, OP_CREATE_TRANSFERS, Operation
from tidebank.node.ledger.records import (
    ACCOUNT_SIZE,
    BATCH_ITEMS_MAX,
    PAGE_SIZE_MAX,
    TRANSFER_SIZE,
    U64_MAX,
    U128_MAX,
    Account,
    AccountFlags,
    Transfer,
    TransferFlags,
    pack_account,
    pack_transfer,
    unpack_account,
    unpack_transfer,
)
from tidebank.node.ledger.results import CreateAccountResult as AR
from tidebank.node.ledger.results import CreateTransferResult as TR
from tidebank.node.ledger.state_machine import LedgerStateMachine

T0 = 1_700_000_000 * 10**9
SECOND = 10**9
MS = 10**6
T1 = T0 + SECOND  # comfortably after the fixtures' own entries

LINKED = TransferFlags.LINKED
PENDING = TransferFlags.PENDING
POST = TransferFlags.POST_PENDING_TRANSFER
VOID = TransferFlags.VOID_PENDING_TRANSFER
BAL_D = TransferFlags.BALANCING_DEBIT
BAL_C = TransferFlags.BALANCING_CREDIT
DMNEC = AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
CMNED = AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS


class Harness:
    """Drives the state machine the way the replica does: one write txn per Raft entry."""

    def __init__(self, env: lmdb.Environment) -> None:
        self.env = env
        self.sm = LedgerStateMachine(env)
        self.now = T0

    def apply(self, *operations: Operation, ts: int | None = None) -> list[list[int]]:
        if ts is None:
            self.now += MS
            ts = self.now
        with self.env.begin(write=True) as txn:
            return self.sm.apply(txn, list(operations), ts)

    def accounts(self, *items: Account, ts: int | None = None) -> list[int]:
        return self.apply(Operation(OP_CREATE_ACCOUNTS, list(items)), ts=ts)[0]

    def transfers(self, *items: Transfer, ts: int | None = None) -> list[int]:
        return self.apply(Operation(OP_CREATE_TRANSFERS, list(items)), ts=ts)[0]

    def read(self, fn, *args, **kwargs):
        with self.env.begin() as txn:
            return fn(txn, *args, **kwargs)

    def account(self, account_id: int) -> Account:
        (a,) = self.read(self.sm.lookup_accounts, [account_id])
        return a

    def transfer(self, transfer_id: int) -> Transfer | None:
        found = self.read(self.sm.lookup_transfers, [transfer_id])
        return found[0] if found else None

    def balances(self, account_id: int) -> tuple[int, int, int, int]:
        a = self.account(account_id)
        return a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted


def acct(account_id: int, **kw) -> Account:
    kw.setdefault("ledger", 1)
    kw.setdefault("code", 1)
    return Account(id=account_id, **kw)


def xfer(transfer_id: int, dr: int = 1, cr: int = 2, amount: int = 10, **kw) -> Transfer:
    kw.setdefault("ledger", 1)
    kw.setdefault("code", 1)
    return Transfer(id=transfer_id, debit_account_id=dr, credit_account_id=cr, amount=amount, **kw)


def post(transfer_id: int, pending_id: int, amount: int = 0, **kw) -> Transfer:
    return Transfer(id=transfer_id, pending_id=pending_id, amount=amount, flags=POST | kw.pop("flags", 0), **kw)


def void(transfer_id: int, pending_id: int, amount: int = 0, **kw) -> Transfer:
    return Transfer(id=transfer_id, pending_id=pending_id, amount=amount, flags=VOID | kw.pop("flags", 0), **kw)


@pytest.fixture
def env(tmp_path):
    e = lmdb.open(str(tmp_path / "db"), max_dbs=64, map_size=1 << 30, sync=False)
    yield e
    e.close()


@pytest.fixture
def h(env) -> Harness:
    return Harness(env)


@pytest.fixture
def ab(h) -> Harness:
    """Accounts 1 and 2 (ledger 1, no flags), 3 (DMNEC), 4 (CMNED), 5 (ledger 2), 6 (closed)."""
    assert (
        h.accounts(
            acct(1),
            acct(2),
            acct(3, flags=DMNEC),
            acct(4, flags=CMNED),
            acct(5, ledger=2),
            acct(6, flags=AccountFlags.CLOSED),
        )
        == [0] * 6
    )
    return h


# ----------------------------------------------------------------- records


def test_account_pack_roundtrips_all_fields_at_their_maximum():
    a = Account(
        id=U128_MAX - 1, debits_pending=U64_MAX, debits_posted=U64_MAX - 1, credits_pending=1, credits_posted=2,
        user_data_128=U128_MAX, user_data_64=U64_MAX, user_data_32=2**32 - 1, ledger=2**32 - 1,
        code=2**32 - 1, flags=2**32 - 1, timestamp=U64_MAX,
    )  # fmt: skip
    assert len(pack_account(a)) == ACCOUNT_SIZE
    assert unpack_account(pack_account(a)) == a


def test_transfer_pack_roundtrips_all_fields_at_their_maximum():
    t = Transfer(
        id=U128_MAX, debit_account_id=U128_MAX - 1, credit_account_id=2**64, amount=U64_MAX,
        pending_id=2**64 - 1, user_data_128=U128_MAX, user_data_64=U64_MAX, user_data_32=2**32 - 1,
        timeout=2**32 - 1, ledger=2**32 - 2, code=2**32 - 3, flags=2**32 - 4, timestamp=U64_MAX,
    )  # fmt: skip
    assert len(pack_transfer(t)) == TRANSFER_SIZE
    assert unpack_transfer(pack_transfer(t)) == t


@pytest.mark.parametrize(
    "bad",
    [
        Transfer(id=U128_MAX + 1),
        Transfer(id=-1),
        Transfer(id=1, amount=U64_MAX + 1),
        Transfer(id=1, timeout=2**32),
        Transfer(id=1, pending_id=-5),
    ],
)
def test_packing_rejects_out_of_range_fields_instead_of_truncating(bad):
    with pytest.raises(struct.error):
        pack_transfer(bad)


def test_flags_have_contract_values():
    assert [int(f) for f in AccountFlags] == [1, 2, 4, 8, 16]
    assert [int(f) for f in TransferFlags] == [1, 2, 4, 8, 16, 32]
    assert BATCH_ITEMS_MAX == 8189 and PAGE_SIZE_MAX == 8189


# ------------------------------------------------------------ construction


def test_db_names_are_all_prefixed_ledger_escrow_or_clearing(env):
    # The replica's own dbs are "replica_*": the state machine's never collide with them.
    assert all(name.startswith(("ledger_", "escrow_")) for name in LedgerStateMachine.DB_NAMES)
    assert all(name.startswith("clearing_") for name in ClearingRules.DB_NAMES)


def test_apply_only_creates_named_dbs_it_declares(h):
    h.accounts(acct(1), acct(2))
    h.transfers(xfer(1, amount=5, flags=PENDING, timeout=1))
    with h.env.begin() as txn:
        names = {bytes(k).decode() for k, _ in txn.cursor()}
    assert names == set(LedgerStateMachine.DB_NAMES) | set(ClearingRules.DB_NAMES)


def test_writemap_env_is_rejected_at_construction(tmp_path):
    e = lmdb.open(str(tmp_path / "wm"), max_dbs=64, map_size=1 << 24, writemap=True)
    try:
        with pytest.raises(ValueError, match="writemap"):
            LedgerStateMachine(e)
    finally:
        e.close()


def test_apply_leaves_commit_to_the_caller(h):
    with h.env.begin(write=True) as txn:
        assert h.sm.apply(txn, [Operation(OP_CREATE_ACCOUNTS, [acct(1)])], T0) == [[0]]
        txn.abort()
    assert h.read(h.sm.lookup_accounts, [1]) == []
    assert h.read(h.sm.cluster_time_ns) == 0


# ---------------------------------------------------------------- accounts


def test_account_is_created_with_cluster_timestamp_and_zero_balances(h):
    assert h.accounts(acct(7, user_data_128=5, user_data_64=6, user_data_32=7, flags=DMNEC), ts=T0) == [0]
    assert h.account(7) == Account(
        id=7, user_data_128=5, user_data_64=6, user_data_32=7, ledger=1, code=1, flags=DMNEC, timestamp=T0
    )


def test_account_timestamp_must_be_zero(h):
    assert h.accounts(acct(1, timestamp=5)) == [AR.timestamp_must_be_zero]


def test_account_reserved_flag(h):
    assert h.accounts(acct(1, flags=32)) == [AR.reserved_flag]


def test_account_id_must_not_be_zero(h):
    assert h.accounts(acct(0)) == [AR.id_must_not_be_zero]


def test_account_id_must_not_be_int_max(h):
    assert h.accounts(acct(U128_MAX)) == [AR.id_must_not_be_int_max]


def test_account_flags_are_mutually_exclusive(h):
    assert h.accounts(acct(1, flags=DMNEC | CMNED)) == [AR.flags_are_mutually_exclusive]


def test_account_debits_pending_must_be_zero(h):
    assert h.accounts(acct(1, debits_pending=1)) == [AR.debits_pending_must_be_zero]


def test_account_debits_posted_must_be_zero(h):
    assert h.accounts(acct(1, debits_posted=1)) == [AR.debits_posted_must_be_zero]


def test_account_credits_pending_must_be_zero(h):
    assert h.accounts(acct(1, credits_pending=1)) == [AR.credits_pending_must_be_zero]


def test_account_credits_posted_must_be_zero(h):
    assert h.accounts(acct(1, credits_posted=1)) == [AR.credits_posted_must_be_zero]


def test_account_ledger_must_not_be_zero(h):
    assert h.accounts(acct(1, ledger=0)) == [AR.ledger_must_not_be_zero]


def test_account_code_must_not_be_zero(h):
    assert h.accounts(acct(1, code=0)) == [AR.code_must_not_be_zero]


def test_account_checks_run_in_documented_order(h):
    # Everything is wrong: the first check in the documented order wins.
    assert h.accounts(Account(id=0, timestamp=1, flags=64, debits_pending=1)) == [AR.timestamp_must_be_zero]
    assert h.accounts(Account(id=0, flags=64)) == [AR.reserved_flag]
    assert h.accounts(Account(id=0, flags=DMNEC | CMNED)) == [AR.id_must_not_be_zero]


def test_account_exists_with_same_fields(h):
    h.accounts(acct(1, user_data_64=3))
    assert h.accounts(acct(1, user_data_64=3)) == [AR.exists]


def test_account_exists_ignores_linked_flag(h):
    h.accounts(acct(1, flags=DMNEC))
    assert h.accounts(acct(1, flags=DMNEC | AccountFlags.LINKED), acct(2)) == [AR.exists, AR.linked_event_failed]


def test_account_exists_with_different_flags(h):
    h.accounts(acct(1))
    assert h.accounts(acct(1, flags=AccountFlags.HISTORY)) == [AR.exists_with_different_flags]


def test_account_exists_with_different_user_data_128(h):
    h.accounts(acct(1))
    assert h.accounts(acct(1, user_data_128=1)) == [AR.exists_with_different_user_data_128]


def test_account_exists_with_different_user_data_64(h):
    h.accounts(acct(1))
    assert h.accounts(acct(1, user_data_64=1)) == [AR.exists_with_different_user_data_64]


def test_account_exists_with_different_user_data_32(h):
    h.accounts(acct(1))
    assert h.accounts(acct(1, user_data_32=1)) == [AR.exists_with_different_user_data_32]


def test_account_exists_with_different_ledger(h):
    h.accounts(acct(1))
    assert h.accounts(acct(1, ledger=2)) == [AR.exists_with_different_ledger]


def test_account_exists_with_different_code(h):
    h.accounts(acct(1))
    assert h.accounts(acct(1, code=2)) == [AR.exists_with_different_code]


def test_account_duplicate_in_one_batch_is_exists(h):
    assert h.accounts(acct(1), acct(1)) == [0, AR.exists]


def test_account_linked_chain_succeeds_together(h):
    assert h.accounts(acct(1, flags=AccountFlags.LINKED), acct(2)) == [0, 0]
    assert [a.id for a in h.read(h.sm.lookup_accounts, [1, 2])] == [1, 2]


def test_account_linked_chain_failure_creates_none_of_it(h):
    codes = h.accounts(acct(1, flags=AccountFlags.LINKED), acct(2, flags=AccountFlags.LINKED, code=0), acct(3), acct(4))
    assert codes == [AR.linked_event_failed, AR.code_must_not_be_zero, AR.linked_event_failed, 0]
    assert [a.id for a in h.read(h.sm.lookup_accounts, [1, 2, 3, 4])] == [4]


def test_account_open_chain_at_end_of_batch_fails(h):
    codes = h.accounts(acct(1), acct(2, flags=AccountFlags.LINKED), acct(3, flags=AccountFlags.LINKED))
    assert codes == [0, AR.linked_event_failed, AR.linked_event_chain_open]
    assert [a.id for a in h.read(h.sm.lookup_accounts, [1, 2, 3])] == [1]


# Cross-shard (2PC) counters of ledger_totals: all zero without cross-shard txns.
NO_2PC = dict.fromkeys(
    [
        "reserved_debits",
        "reserved_credits",
        "remote_debits_posted",
        "remote_credits_posted",
        "remote_debits_pending",
        "remote_credits_pending",
    ],
    0,
)


def test_account_creation_lists_its_ledger_in_totals(h):
    h.accounts(acct(1, ledger=9))
    assert h.read(h.sm.ledger_totals) == {
        9: {"debits_pending": 0, "debits_posted": 0, "credits_pending": 0, "credits_posted": 0, **NO_2PC}
    }


# ------------------------------------------------- transfers: static checks


def test_transfer_created_moves_posted_balances(ab):
    assert ab.transfers(xfer(1, 1, 2, 10)) == [0]
    assert ab.balances(1) == (0, 10, 0, 0)
    assert ab.balances(2) == (0, 0, 0, 10)


def test_transfer_timestamp_must_be_zero(ab):
    assert ab.transfers(xfer(1, timestamp=1)) == [TR.timestamp_must_be_zero]


def test_transfer_reserved_flag(ab):
    assert ab.transfers(xfer(1, flags=64)) == [TR.reserved_flag]


def test_transfer_id_must_not_be_zero(ab):
    assert ab.transfers(xfer(0)) == [TR.id_must_not_be_zero]


def test_transfer_id_must_not_be_int_max(ab):
    assert ab.transfers(xfer(U128_MAX)) == [TR.id_must_not_be_int_max]


def test_transfer_flags_pending_with_post_are_mutually_exclusive(ab):
    assert ab.transfers(post(1, 9, flags=PENDING)) == [TR.flags_are_mutually_exclusive]


def test_transfer_flags_post_with_void_are_mutually_exclusive(ab):
    assert ab.transfers(post(1, 9, flags=VOID)) == [TR.flags_are_mutually_exclusive]


def test_transfer_flags_balancing_with_void_are_mutually_exclusive(ab):
    assert ab.transfers(void(1, 9, flags=BAL_D)) == [TR.flags_are_mutually_exclusive]


def test_transfer_balancing_with_pending_is_allowed(ab):
    ab.transfers(xfer(1, 2, 1, 50))
    assert ab.transfers(xfer(2, 1, 2, 0, flags=PENDING | BAL_D)) == [0]
    assert ab.balances(1) == (50, 0, 0, 50)


def test_transfer_pending_id_must_not_be_zero(ab):
    assert ab.transfers(post(1, 0)) == [TR.pending_id_must_not_be_zero]


def test_transfer_pending_id_must_not_be_int_max(ab):
    assert ab.transfers(void(1, U128_MAX)) == [TR.pending_id_must_not_be_int_max]


def test_transfer_pending_id_must_be_different(ab):
    assert ab.transfers(post(1, 1)) == [TR.pending_id_must_be_different]


def test_transfer_post_with_timeout_is_timeout_reserved_for_pending_transfer(ab):
    assert ab.transfers(post(1, 2, timeout=5)) == [TR.timeout_reserved_for_pending_transfer]


def test_transfer_posted_with_timeout_is_timeout_reserved_for_pending_transfer(ab):
    assert ab.transfers(xfer(1, timeout=5)) == [TR.timeout_reserved_for_pending_transfer]


def test_transfer_debit_account_id_must_not_be_zero(ab):
    assert ab.transfers(xfer(1, dr=0)) == [TR.debit_account_id_must_not_be_zero]


def test_transfer_debit_account_id_must_not_be_int_max(ab):
    assert ab.transfers(xfer(1, dr=U128_MAX)) == [TR.debit_account_id_must_not_be_int_max]


def test_transfer_credit_account_id_must_not_be_zero(ab):
    assert ab.transfers(xfer(1, cr=0)) == [TR.credit_account_id_must_not_be_zero]


def test_transfer_credit_account_id_must_not_be_int_max(ab):
    assert ab.transfers(xfer(1, cr=U128_MAX)) == [TR.credit_account_id_must_not_be_int_max]


def test_transfer_accounts_must_be_different(ab):
    assert ab.transfers(xfer(1, 1, 1)) == [TR.accounts_must_be_different]


def test_transfer_pending_id_must_be_zero(ab):
    assert ab.transfers(xfer(1, pending_id=3)) == [TR.pending_id_must_be_zero]


def test_transfer_amount_must_not_be_zero(ab):
    assert ab.transfers(xfer(1, amount=0)) == [TR.amount_must_not_be_zero]


def test_transfer_ledger_must_not_be_zero(ab):
    assert ab.transfers(xfer(1, ledger=0)) == [TR.ledger_must_not_be_zero]


def test_transfer_code_must_not_be_zero(ab):
    assert ab.transfers(xfer(1, code=0)) == [TR.code_must_not_be_zero]


def test_transfer_static_failure_does_not_burn_the_id(ab):
    assert ab.transfers(xfer(1, code=0)) == [TR.code_must_not_be_zero]
    assert ab.transfers(xfer(1)) == [0]


# -------------------------------------------------- transfers: state checks


def test_transfer_debit_account_not_found(ab):
    assert ab.transfers(xfer(1, 99, 2)) == [TR.debit_account_not_found]


def test_transfer_credit_account_not_found(ab):
    assert ab.transfers(xfer(1, 1, 99)) == [TR.credit_account_not_found]


def test_transfer_accounts_must_have_the_same_ledger(ab):
    assert ab.transfers(xfer(1, 1, 5)) == [TR.accounts_must_have_the_same_ledger]


def test_transfer_must_have_the_same_ledger_as_accounts(ab):
    assert ab.transfers(xfer(1, 1, 2, ledger=2)) == [TR.transfer_must_have_the_same_ledger_as_accounts]


def test_transfer_debit_account_already_closed(ab):
    assert ab.transfers(xfer(1, 6, 2)) == [TR.debit_account_already_closed]


def test_transfer_credit_account_already_closed(ab):
    assert ab.transfers(xfer(1, 1, 6)) == [TR.credit_account_already_closed]


def test_transfer_exceeds_credits(ab):
    assert ab.transfers(xfer(1, 3, 2, 1)) == [TR.exceeds_credits]
    assert ab.balances(3) == (0, 0, 0, 0)


def test_transfer_within_credits_is_created(ab):
    assert ab.transfers(xfer(1, 1, 3, 10), xfer(2, 3, 2, 10)) == [0, 0]
    assert ab.balances(3) == (0, 10, 0, 10)


def test_transfer_exceeds_credits_counts_pending_debits(ab):
    ab.transfers(xfer(1, 1, 3, 10), xfer(2, 3, 2, 6, flags=PENDING))
    assert ab.transfers(xfer(3, 3, 2, 5)) == [TR.exceeds_credits]


def test_transfer_exceeds_debits(ab):
    assert ab.transfers(xfer(1, 1, 4, 1)) == [TR.exceeds_debits]


def test_transfer_overflows_debits_pending(ab):
    assert ab.transfers(xfer(1, 1, 2, U64_MAX, flags=PENDING)) == [0]
    assert ab.transfers(xfer(2, 1, 3, 1, flags=PENDING)) == [TR.overflows_debits_pending]


def test_transfer_overflows_credits_pending(ab):
    assert ab.transfers(xfer(1, 1, 2, U64_MAX, flags=PENDING)) == [0]
    ab.accounts(acct(7))
    assert ab.transfers(xfer(2, 7, 2, 1, flags=PENDING)) == [TR.overflows_credits_pending]


def test_transfer_overflows_debits_posted(ab):
    assert ab.transfers(xfer(1, 1, 2, U64_MAX)) == [0]
    assert ab.transfers(xfer(2, 1, 3, 1)) == [TR.overflows_debits_posted]


def test_transfer_overflows_credits_posted(ab):
    assert ab.transfers(xfer(1, 1, 2, U64_MAX)) == [0]
    ab.accounts(acct(7))
    assert ab.transfers(xfer(2, 7, 2, 1)) == [TR.overflows_credits_posted]


def test_transfer_overflows_debits(ab):
    ab.accounts(acct(7), acct(8))
    assert ab.transfers(xfer(1, 1, 2, 2**63, flags=PENDING), xfer(2, 1, 7, 2**63 - 1)) == [0, 0]
    assert ab.transfers(xfer(3, 1, 8, 1)) == [TR.overflows_debits]


def test_transfer_overflows_credits(ab):
    ab.accounts(acct(7), acct(8))
    assert ab.transfers(xfer(1, 1, 2, 2**63, flags=PENDING), xfer(2, 7, 2, 2**63 - 1)) == [0, 0]
    assert ab.transfers(xfer(3, 8, 2, 1)) == [TR.overflows_credits]


def test_transfer_overflows_timeout(ab):
    late = U64_MAX - 10**18
    assert ab.transfers(xfer(1, flags=PENDING, timeout=2**32 - 1), ts=late) == [TR.overflows_timeout]
    assert ab.transfers(xfer(2, flags=PENDING, timeout=1), ts=late + 1) == [0]


def test_transfer_state_checks_run_in_documented_order(ab):
    # Ledger mismatch is reported before the closed account and the limits.
    assert ab.transfers(xfer(1, 6, 5)) == [TR.accounts_must_have_the_same_ledger]
    assert ab.transfers(xfer(2, 99, 98)) == [TR.debit_account_not_found]


def test_transfer_id_already_failed_after_state_failure(ab):
    assert ab.transfers(xfer(1, 3, 2, 5)) == [TR.exceeds_credits]
    ab.transfers(xfer(2, 1, 3, 100))
    assert ab.transfers(xfer(1, 3, 2, 5)) == [TR.id_already_failed]
    assert ab.transfer(1) is None
    assert ab.balances(3) == (0, 0, 0, 100)


def test_transfer_id_already_failed_even_with_different_fields(ab):
    assert ab.transfers(xfer(1, 99, 2)) == [TR.debit_account_not_found]
    assert ab.transfers(xfer(1, 1, 2)) == [TR.id_already_failed]


# --------------------------------------------------------------- idempotency


def test_transfer_resubmission_returns_exists_without_effect(ab):
    assert ab.transfers(xfer(1, 1, 2, 10)) == [0]
    assert ab.transfers(xfer(1, 1, 2, 10)) == [TR.exists]
    assert ab.balances(1) == (0, 10, 0, 0)


def test_transfer_duplicate_in_one_batch_is_exists(ab):
    assert ab.transfers(xfer(1), xfer(1)) == [0, TR.exists]


def test_transfer_exists_ignores_linked_flag(ab):
    ab.transfers(xfer(1))
    assert ab.transfers(xfer(1, flags=LINKED), xfer(2)) == [TR.exists, TR.linked_event_failed]


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"flags": PENDING}, TR.exists_with_different_flags),
        ({"dr": 3}, TR.exists_with_different_debit_account_id),
        ({"cr": 3}, TR.exists_with_different_credit_account_id),
        ({"amount": 11}, TR.exists_with_different_amount),
        ({"user_data_128": 1}, TR.exists_with_different_user_data_128),
        ({"user_data_64": 1}, TR.exists_with_different_user_data_64),
        ({"user_data_32": 1}, TR.exists_with_different_user_data_32),
        ({"ledger": 2}, TR.exists_with_different_ledger),
        ({"code": 2}, TR.exists_with_different_code),
    ],
    ids=["flags", "debit", "credit", "amount", "ud128", "ud64", "ud32", "ledger", "code"],
)
def test_transfer_exists_with_different_field(ab, change, code):
    ab.transfers(xfer(1, 1, 2, 10))
    assert ab.transfers(xfer(1, **{"dr": 1, "cr": 2, "amount": 10, **change})) == [code]


def test_transfer_exists_with_different_timeout(ab):
    ab.transfers(xfer(1, flags=PENDING, timeout=5))
    assert ab.transfers(xfer(1, flags=PENDING, timeout=6)) == [TR.exists_with_different_timeout]


def test_transfer_exists_with_different_pending_id(ab):
    ab.transfers(xfer(1, flags=PENDING), xfer(2, flags=PENDING), post(3, 1))
    assert ab.transfers(post(3, 2)) == [TR.exists_with_different_pending_id]


def test_transfer_exists_compares_fields_in_documented_order(ab):
    ab.transfers(xfer(1, 1, 2, 10))
    assert ab.transfers(xfer(1, 2, 1, 11, code=3)) == [TR.exists_with_different_debit_account_id]
    assert ab.transfers(xfer(1, 1, 2, 11, code=3)) == [TR.exists_with_different_amount]


def test_balancing_transfer_exists_ignores_amount(ab):
    ab.transfers(xfer(1, 2, 1, 30))
    assert ab.transfers(xfer(2, 1, 2, 100, flags=BAL_D)) == [0]
    assert ab.transfers(xfer(2, 1, 2, 77, flags=BAL_D)) == [TR.exists]


def test_post_resubmission_with_zero_fields_returns_exists(ab):
    ab.transfers(xfer(1, flags=PENDING))
    assert ab.transfers(post(2, 1)) == [0]
    assert ab.transfers(post(2, 1)) == [TR.exists]
    assert ab.transfers(post(2, 1, amount=10, debit_account_id=1, credit_account_id=2, ledger=1, code=1)) == [TR.exists]
    assert ab.transfers(post(2, 1, amount=9)) == [TR.exists_with_different_amount]
    assert ab.transfers(post(2, 1, credit_account_id=3)) == [TR.exists_with_different_credit_account_id]


# ------------------------------------------------------ pending / post / void


def test_pending_transfer_reserves_pending_balances(ab):
    assert ab.transfers(xfer(1, 1, 2, 10, flags=PENDING)) == [0]
    assert ab.balances(1) == (10, 0, 0, 0)
    assert ab.balances(2) == (0, 0, 10, 0)


def test_post_full_amount_with_zero_amount(ab):
    ab.transfers(xfer(1, 1, 2, 10, flags=PENDING))
    assert ab.transfers(post(2, 1)) == [0]
    assert ab.balances(1) == (0, 10, 0, 0)
    assert ab.balances(2) == (0, 0, 0, 10)


def test_post_partial_releases_the_remainder(ab):
    ab.transfers(xfer(1, 1, 2, 10, flags=PENDING))
    assert ab.transfers(post(2, 1, amount=4)) == [0]
    assert ab.balances(1) == (0, 4, 0, 0)
    assert ab.balances(2) == (0, 0, 0, 4)
    assert ab.transfer(2).amount == 4


def test_post_stores_inherited_fields(ab):
    ab.transfers(xfer(1, 1, 2, 10, flags=PENDING, code=7, timeout=60))
    assert ab.transfers(post(2, 1, user_data_64=5)) == [0]
    t = ab.transfer(2)
    assert (t.debit_account_id, t.credit_account_id, t.amount, t.ledger, t.code, t.timeout) == (1, 2, 10, 1, 7, 0)
    assert (t.pending_id, t.user_data_64, t.flags) == (1, 5, POST)


def test_post_with_matching_explicit_fields_is_created(ab):
    ab.transfers(xfer(1, 1, 2, 10, flags=PENDING))
    assert ab.transfers(post(2, 1, amount=10, debit_account_id=1, credit_account_id=2, ledger=1, code=1)) == [0]


def test_void_releases_pending_balances(ab):
    ab.transfers(xfer(1, 1, 2, 10, flags=PENDING))
    assert ab.transfers(void(2, 1)) == [0]
    assert ab.balances(1) == (0, 0, 0, 0)
    assert ab.balances(2) == (0, 0, 0, 0)
    assert ab.transfer(2).amount == 10


def test_void_with_equal_amount_is_created(ab):
    ab.transfers(xfer(1, 1, 2, 10, flags=PENDING))
    assert ab.transfers(void(2, 1, amount=10)) == [0]


def test_post_pending_transfer_not_found(ab):
    assert ab.transfers(post(2, 1)) == [TR.pending_transfer_not_found]


def test_post_pending_transfer_not_pending(ab):
    ab.transfers(xfer(1))
    assert ab.transfers(post(2, 1)) == [TR.pending_transfer_not_pending]


def test_post_pending_transfer_has_different_debit_account_id(ab):
    ab.transfers(xfer(1, flags=PENDING))
    assert ab.transfers(post(2, 1, debit_account_id=3)) == [TR.pending_transfer_has_different_debit_account_id]


def test_post_pending_transfer_has_different_credit_account_id(ab):
    ab.transfers(xfer(1, flags=PENDING))
    assert ab.transfers(post(2, 1, credit_account_id=3)) == [TR.pending_transfer_has_different_credit_account_id]


def test_post_pending_transfer_has_different_ledger(ab):
    ab.transfers(xfer(1, flags=PENDING))
    assert ab.transfers(post(2, 1, ledger=2)) == [TR.pending_transfer_has_different_ledger]


def test_post_pending_transfer_has_different_code(ab):
    ab.transfers(xfer(1, flags=PENDING))
    assert ab.transfers(post(2, 1, code=2)) == [TR.pending_transfer_has_different_code]


def test_post_exceeds_pending_transfer_amount(ab):
    ab.transfers(xfer(1, amount=10, flags=PENDING))
    assert ab.transfers(post(2, 1, amount=11)) == [TR.exceeds_pending_transfer_amount]


def test_void_pending_transfer_has_different_amount(ab):
    ab.transfers(xfer(1, amount=10, flags=PENDING))
    assert ab.transfers(void(2, 1, amount=9)) == [TR.pending_transfer_has_different_amount]
    assert ab.transfers(void(3, 1, amount=11)) == [TR.pending_transfer_has_different_amount]


def test_post_pending_transfer_already_posted(ab):
    ab.transfers(xfer(1, flags=PENDING))
    ab.transfers(post(2, 1, amount=3))
    assert ab.transfers(post(3, 1)) == [TR.pending_transfer_already_posted]


def test_void_pending_transfer_already_voided(ab):
    ab.transfers(xfer(1, flags=PENDING))
    ab.transfers(void(2, 1))
    assert ab.transfers(post(3, 1)) == [TR.pending_transfer_already_voided]


def test_post_and_void_in_one_batch_only_first_wins(ab):
    ab.transfers(xfer(1, flags=PENDING))
    assert ab.transfers(post(2, 1), void(3, 1)) == [0, TR.pending_transfer_already_posted]
    assert ab.balances(1) == (0, 10, 0, 0)


def test_post_failure_is_recorded_as_failed_id(ab):
    assert ab.transfers(post(2, 1)) == [TR.pending_transfer_not_found]
    ab.transfers(xfer(1, flags=PENDING))
    assert ab.transfers(post(2, 1)) == [TR.id_already_failed]


# ------------------------------------------------------------------- expiry


def test_pending_transfer_expires_on_later_apply(ab):
    ab.transfers(xfer(1, amount=10, flags=PENDING, timeout=2), ts=T0 + SECOND)
    ab.apply(ts=T0 + 3 * SECOND - 1)
    assert ab.balances(1) == (10, 0, 0, 0)
    ab.apply(ts=T0 + 3 * SECOND)
    assert ab.balances(1) == (0, 0, 0, 0)
    assert ab.balances(2) == (0, 0, 0, 0)


def test_post_after_expiry_is_pending_transfer_expired(ab):
    ab.transfers(xfer(1, flags=PENDING, timeout=1), ts=T0 + SECOND)
    assert ab.transfers(post(2, 1), ts=T0 + 5 * SECOND) == [TR.pending_transfer_expired]
    assert ab.balances(1) == (0, 0, 0, 0)


def test_expired_check_applies_before_the_sweep_reaches_it(ab, monkeypatch):
    monkeypatch.setattr(sm_module, "EXPIRE_PER_APPLY_MAX", 0)
    ab.transfers(xfer(1, flags=PENDING, timeout=1), ts=T0 + SECOND)
    assert ab.transfers(void(2, 1), ts=T0 + 5 * SECOND) == [TR.pending_transfer_expired]
    assert ab.balances(1) == (10, 0, 0, 0)  # not yet swept


def test_post_before_timeout_succeeds_and_clears_expiry(ab):
    ab.transfers(xfer(1, flags=PENDING, timeout=10), ts=T0 + SECOND)
    assert ab.read(ab.sm.next_expiry_ns) == T0 + 11 * SECOND
    assert ab.transfers(post(2, 1), ts=T0 + 2 * SECOND) == [0]
    assert ab.read(ab.sm.next_expiry_ns) is None
    ab.apply(ts=T0 + 20 * SECOND)
    assert ab.balances(1) == (0, 10, 0, 0)


def test_next_expiry_ns_is_earliest_pending_expiry(ab):
    assert ab.read(ab.sm.next_expiry_ns) is None
    ab.transfers(xfer(1, flags=PENDING, timeout=5), xfer(2, flags=PENDING, timeout=3), xfer(3, flags=PENDING), ts=T1)
    assert ab.read(ab.sm.next_expiry_ns) == T1 + 1 + 3 * SECOND


def test_expiry_sweep_is_capped_and_in_expiry_order(ab, monkeypatch):
    monkeypatch.setattr(sm_module, "EXPIRE_PER_APPLY_MAX", 2)
    ab.transfers(
        xfer(1, amount=1, flags=PENDING, timeout=3),
        xfer(2, amount=2, flags=PENDING, timeout=1),
        xfer(3, amount=4, flags=PENDING, timeout=2),
        ts=T1,
    )
    ab.apply(ts=T1 + 10 * SECOND)
    assert ab.balances(1) == (1, 0, 0, 0)  # transfers 2 and 3 expired first
    ab.apply(ts=T1 + 11 * SECOND)
    assert ab.balances(1) == (0, 0, 0, 0)


def test_expired_transfer_cannot_be_voided_after_sweep(ab):
    ab.transfers(xfer(1, flags=PENDING, timeout=1), ts=T1)
    ab.apply(ts=T1 + 2 * SECOND)
    assert ab.transfers(void(2, 1)) == [TR.pending_transfer_expired]


def test_pending_without_timeout_never_expires(ab):
    ab.transfers(xfer(1, flags=PENDING), ts=T1)
    ab.apply(ts=U64_MAX - 5)
    assert ab.balances(1) == (10, 0, 0, 0)


# ---------------------------------------------------------------- balancing


def test_balancing_debit_clamps_to_available_credit(ab):
    ab.transfers(xfer(1, 2, 1, 30))
    assert ab.transfers(xfer(2, 1, 2, 100, flags=BAL_D)) == [0]
    assert ab.transfer(2).amount == 30
    assert ab.balances(1) == (0, 30, 0, 30)


def test_balancing_debit_zero_amount_means_as_much_as_possible(ab):
    ab.transfers(xfer(1, 2, 1, 30))
    assert ab.transfers(xfer(2, 1, 2, 0, flags=BAL_D)) == [0]
    assert ab.transfer(2).amount == 30


def test_balancing_debit_keeps_smaller_requested_amount(ab):
    ab.transfers(xfer(1, 2, 1, 30))
    assert ab.transfers(xfer(2, 1, 2, 12, flags=BAL_D)) == [0]
    assert ab.transfer(2).amount == 12


def test_balancing_debit_with_nothing_available_is_exceeds_credits(ab):
    assert ab.transfers(xfer(1, 1, 2, 0, flags=BAL_D)) == [TR.exceeds_credits]


def test_balancing_credit_clamps_to_available_debit(ab):
    ab.transfers(xfer(1, 2, 1, 25))  # account 2 has debits_posted 25
    assert ab.transfers(xfer(2, 1, 2, 100, flags=BAL_C)) == [0]
    assert ab.transfer(2).amount == 25


def test_balancing_credit_with_nothing_available_is_exceeds_debits(ab):
    assert ab.transfers(xfer(1, 1, 2, 5, flags=BAL_C)) == [TR.exceeds_debits]


def test_balancing_debit_and_credit_take_the_smaller_room(ab):
    ab.accounts(acct(7))
    # Account 1 has 30 of credit to give; account 2 has 30 debits of which 25 are already credited.
    ab.transfers(xfer(1, 2, 1, 30), xfer(2, 7, 2, 25))
    assert ab.transfers(xfer(3, 1, 2, 0, flags=BAL_D | BAL_C)) == [0]
    assert ab.transfer(3).amount == 5


# ------------------------------------------------------------- linked chains


def test_linked_transfers_succeed_together(ab):
    assert ab.transfers(xfer(1, flags=LINKED), xfer(2, flags=LINKED), xfer(3)) == [0, 0, 0]
    assert ab.balances(1) == (0, 30, 0, 0)


def test_linked_failure_in_middle_rolls_back_the_chain(ab):
    codes = ab.transfers(xfer(1, 1, 2, flags=LINKED), xfer(2, 3, 2, flags=LINKED), xfer(3, 1, 2), xfer(4, 1, 2))
    assert codes == [TR.linked_event_failed, TR.exceeds_credits, TR.linked_event_failed, 0]
    assert ab.transfer(1) is None and ab.transfer(3) is None
    assert ab.balances(1) == (0, 10, 0, 0)


def test_linked_failure_records_only_the_failing_item(ab):
    ab.transfers(xfer(1, 1, 2, flags=LINKED), xfer(2, 3, 2, flags=LINKED), xfer(3, 1, 2))
    assert ab.transfers(xfer(1, 1, 2)) == [0]
    assert ab.transfers(xfer(2, 3, 2)) == [TR.id_already_failed]
    assert ab.transfers(xfer(3, 1, 2)) == [0]


def test_linked_chain_later_items_see_earlier_effects(ab):
    assert ab.transfers(xfer(1, 1, 3, 10, flags=LINKED), xfer(2, 3, 2, 10)) == [0, 0]
    assert ab.balances(3) == (0, 10, 0, 10)


def test_linked_chain_rollback_restores_balances_seen_by_later_items(ab):
    codes = ab.transfers(xfer(1, 1, 3, 10, flags=LINKED), xfer(2, 1, 2, code=0), xfer(3, 3, 2, 10))
    assert codes == [TR.linked_event_failed, TR.code_must_not_be_zero, TR.exceeds_credits]
    assert ab.balances(3) == (0, 0, 0, 0)


def test_linked_open_chain_at_end_of_batch(ab):
    codes = ab.transfers(xfer(1), xfer(2, flags=LINKED), xfer(3, flags=LINKED))
    assert codes == [0, TR.linked_event_failed, TR.linked_event_chain_open]
    assert ab.transfer(2) is None and ab.transfer(3) is None


def test_linked_single_open_item_is_chain_open(ab):
    assert ab.transfers(xfer(1, flags=LINKED)) == [TR.linked_event_chain_open]


def test_linked_chain_with_exists_fails_whole_chain(ab):
    ab.transfers(xfer(1))
    assert ab.transfers(xfer(2, flags=LINKED), xfer(1)) == [TR.linked_event_failed, TR.exists]
    assert ab.transfer(2) is None


def test_linked_chain_failure_does_not_consume_timestamps(ab):
    ab.transfers(xfer(1, flags=LINKED), xfer(2, code=0), xfer(3), ts=T0 + SECOND)
    assert ab.transfer(3).timestamp == T0 + SECOND


def test_linked_chain_pending_then_post(ab):
    assert ab.transfers(xfer(1, flags=PENDING | LINKED), post(2, 1, amount=4)) == [0, 0]
    assert ab.balances(1) == (0, 4, 0, 0)


# --------------------------------------------------------------- timestamps


def test_timestamps_are_unique_and_increasing_within_a_batch(ab):
    ab.transfers(xfer(1), xfer(2, code=0), xfer(3), ts=T0 + SECOND)
    assert ab.transfer(1).timestamp == T0 + SECOND
    assert ab.transfer(3).timestamp == T0 + SECOND + 1


def test_timestamps_stay_monotonic_when_timestamp_ns_goes_backwards(ab):
    ab.transfers(xfer(1), xfer(2), ts=T0 + 10 * SECOND)
    ab.transfers(xfer(3), ts=T0 + 5 * SECOND)
    assert ab.transfer(3).timestamp == T0 + 10 * SECOND + 2


def test_cluster_time_is_last_assigned_timestamp(ab):
    ab.transfers(xfer(1), xfer(2), ts=T0 + SECOND)
    assert ab.read(ab.sm.cluster_time_ns) == T0 + SECOND + 1


def test_cluster_time_advances_on_empty_entry(h):
    assert h.read(h.sm.cluster_time_ns) == 0
    h.apply(ts=T0)
    assert h.read(h.sm.cluster_time_ns) == T0
    h.apply(ts=T0 - 5)
    assert h.read(h.sm.cluster_time_ns) == T0 + 1


def test_operations_in_one_entry_share_the_timestamp_sequence(h):
    results = h.apply(
        Operation(OP_CREATE_ACCOUNTS, [acct(1), acct(2)]),
        Operation(OP_CREATE_TRANSFERS, [xfer(1)]),
        ts=T0,
    )
    assert results == [[0, 0], [0]]
    assert [h.account(1).timestamp, h.account(2).timestamp, h.transfer(1).timestamp] == [T0, T0 + 1, T0 + 2]


# ------------------------------------------------------------------- queries


def test_lookup_returns_found_items_in_request_order(ab):
    ab.transfers(xfer(1), xfer(2))
    assert [a.id for a in ab.read(ab.sm.lookup_accounts, [4, 99, 1, 0, U128_MAX])] == [4, 1]
    assert [t.id for t in ab.read(ab.sm.lookup_transfers, [2, 7, 1])] == [2, 1]


@pytest.fixture
def history(ab) -> Harness:
    """Account 1: debit 1 (ts T1), credit 2 (T1+1), debit 3 (T1+2), credit 4 (T1+3); 5 is 2 -> 3 (T1+4)."""
    assert ab.transfers(xfer(1, 1, 2), xfer(2, 2, 1), xfer(3, 1, 2), xfer(4, 2, 1), xfer(5, 2, 1 + 2), ts=T1) == [0] * 5
    return ab


def _ids(transfers):
    return [t.id for t in transfers]


def test_get_account_transfers_returns_both_sides_by_timestamp(history):
    assert _ids(history.read(history.sm.get_account_transfers, 1)) == [1, 2, 3, 4]


def test_get_account_transfers_debits_only(history):
    assert _ids(history.read(history.sm.get_account_transfers, 1, credits=False)) == [1, 3]


def test_get_account_transfers_credits_only(history):
    assert _ids(history.read(history.sm.get_account_transfers, 1, debits=False)) == [2, 4]


def test_get_account_transfers_timestamp_bounds_are_inclusive(history):
    got = history.read(history.sm.get_account_transfers, 1, timestamp_min=T1 + 1, timestamp_max=T1 + 2)
    assert _ids(got) == [2, 3]


def test_get_account_transfers_limit(history):
    assert _ids(history.read(history.sm.get_account_transfers, 1, limit=3)) == [1, 2, 3]


def test_get_account_transfers_reversed(history):
    assert _ids(history.read(history.sm.get_account_transfers, 1, reversed=True, limit=3)) == [4, 3, 2]


def test_get_account_transfers_reversed_with_bounds(history):
    got = history.read(history.sm.get_account_transfers, 1, reversed=True, timestamp_min=T1 + 1, timestamp_max=T1 + 2)
    assert _ids(got) == [3, 2]


def test_get_account_transfers_reversed_for_last_account_in_index(history):
    # Account 3 sorts after every other key, so the reverse scan starts from the end of the db.
    assert _ids(history.read(history.sm.get_account_transfers, 3, reversed=True)) == [5]


def test_get_account_transfers_reversed_from_an_exact_timestamp(history):
    got = history.read(history.sm.get_account_transfers, 2, reversed=True, timestamp_max=T1 + 3)
    assert _ids(got) == [4, 3, 2, 1]


def test_get_account_transfers_limit_is_capped_at_page_size(history):
    assert len(history.read(history.sm.get_account_transfers, 1, limit=PAGE_SIZE_MAX * 10)) == 4


@pytest.mark.parametrize(
    "query",
    [
        {"limit": 0},
        {"debits": False, "credits": False},
        {"timestamp_min": T1 + 3, "timestamp_max": T1 + 1},
        {"timestamp_min": T1 + 100},
    ],
    ids=["zero-limit", "no-side", "min-after-max", "after-last"],
)
def test_get_account_transfers_empty_for_impossible_filter(history, query):
    assert history.read(history.sm.get_account_transfers, 1, **query) == []


def test_get_account_transfers_unknown_account_is_empty(history):
    assert history.read(history.sm.get_account_transfers, 99) == []
    assert history.read(history.sm.get_account_transfers, 0) == []


def test_ledger_totals_sum_balances_per_ledger(ab):
    ab.transfers(xfer(1, 1, 2, 10), xfer(2, 2, 1, 3, flags=PENDING))
    totals = ab.read(ab.sm.ledger_totals)
    assert totals[1] == {"debits_pending": 3, "debits_posted": 10, "credits_pending": 3, "credits_posted": 10, **NO_2PC}
    assert totals[2] == {"debits_pending": 0, "debits_posted": 0, "credits_pending": 0, "credits_posted": 0, **NO_2PC}


# ------------------------------------------------------- errors and invariants


def test_helper_exception_becomes_internal_error_and_rolls_back(ab, monkeypatch, caplog):
    real_store = LedgerStateMachine._store
    calls = []

    def flaky_store(self, *args):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("disk on fire")
        return real_store(self, *args)

    monkeypatch.setattr(LedgerStateMachine, "_store", flaky_store)
    with caplog.at_level(logging.CRITICAL, logger=sm_module.__name__):
        results = ab.apply(
            Operation(OP_CREATE_TRANSFERS, [xfer(1), xfer(2), xfer(3)]),
            Operation(OP_CREATE_ACCOUNTS, [acct(7)]),
        )
    assert results == [[TR.internal_error] * 3, [0]]
    assert ab.transfer(1) is None
    assert ab.balances(1) == (0, 0, 0, 0)
    assert ab.account(7).id == 7
    assert any(r.levelno == logging.CRITICAL for r in caplog.records)


def test_internal_error_does_not_consume_timestamps(ab, monkeypatch):
    def broken(self, *args):
        raise RuntimeError("bug")

    monkeypatch.setattr(LedgerStateMachine, "_store", broken)
    results = ab.apply(Operation(OP_CREATE_TRANSFERS, [xfer(1)]), Operation(OP_CREATE_ACCOUNTS, [acct(7)]), ts=T1)
    assert results == [[TR.internal_error], [0]]
    assert ab.account(7).timestamp == T1


def test_broken_invariant_in_stored_state_becomes_internal_error(ab, caplog):
    # Corrupt account 3 (debits must not exceed credits) behind the state machine's back.
    with ab.env.begin(write=True) as txn:
        db = ab.env.open_db(b"ledger_accounts", txn=txn)
        txn.put((3).to_bytes(16, "big"), pack_account(acct(3, flags=DMNEC, debits_posted=5)), db=db)
    with caplog.at_level(logging.CRITICAL, logger=sm_module.__name__):
        assert ab.transfers(xfer(1, 1, 3, 1)) == [TR.internal_error]
    assert ab.balances(1) == (0, 0, 0, 0)
    assert "debits exceed credits" in caplog.text


def test_unbalanced_ledger_totals_become_internal_error(ab, monkeypatch):
    real = LedgerStateMachine._touch

    def skewed_touch(self, a, ctx):
        real(self, a, ctx)
        if a.id == 2:
            a.credits_pending += 1  # money from nowhere

    monkeypatch.setattr(LedgerStateMachine, "_touch", skewed_touch)
    assert ab.transfers(xfer(1, 1, 2, 5)) == [TR.internal_error]
    monkeypatch.undo()
    assert ab.balances(2) == (0, 0, 0, 0)


def test_operation_larger_than_batch_items_max_is_internal_error(ab):
    items = [xfer(i) for i in range(1, BATCH_ITEMS_MAX + 2)]
    assert ab.transfers(*items) == [TR.internal_error] * len(items)
    assert ab.transfer(1) is None


def test_unknown_operation_kind_is_internal_error(ab):
    assert ab.apply(Operation(99, [xfer(1)]), Operation(OP_CREATE_TRANSFERS, [xfer(2)])) == [
        [TR.internal_error],
        [0],
    ]


def test_out_of_range_field_is_internal_error_not_exception(ab):
    assert ab.transfers(xfer(1, amount=-5)) == [TR.internal_error]
    assert ab.balances(1) == (0, 0, 0, 0)


def test_failing_expiry_sweep_does_not_block_operations(ab, monkeypatch, caplog):
    ab.transfers(xfer(1, flags=PENDING, timeout=1), ts=T1)

    def broken(self, txn, ctx):
        raise RuntimeError("bug in sweep")

    monkeypatch.setattr(LedgerStateMachine, "_expire", broken)
    with caplog.at_level(logging.CRITICAL, logger=sm_module.__name__):
        assert ab.transfers(xfer(2), ts=T1 + 5 * SECOND) == [0]
    assert "expiry sweep" in caplog.text
    assert ab.balances(1) == (10, 10, 0, 0)

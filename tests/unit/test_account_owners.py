"""Account ownership in the state machine: written with the account, never changed, rolled back with a chain."""

import pytest

from tests.unit.test_state_machine import Harness, acct
from tests.unit.test_state_machine import env as env  # noqa: F401 - the LMDB fixture
from tidebank.node.ledger.entry import decode_entry, encode_entry
from tidebank.node.ledger.operations import OP_CREATE_OWNED_ACCOUNTS, Operation
from tidebank.node.ledger.records import AccountFlags, OwnedAccount, pack_owned_account, unpack_owned_account
from tidebank.node.ledger.results import CreateAccountResult as R


@pytest.fixture
def h(env) -> Harness:  # noqa: F811 - env is the LMDB fixture imported above
    return Harness(env)


def owned(h: Harness, *items: OwnedAccount) -> list[int]:
    return h.apply(Operation(OP_CREATE_OWNED_ACCOUNTS, list(items)))[0]


def owners(h: Harness, *ids: int) -> list[str | None]:
    return h.read(h.sm.account_owners, list(ids))


def test_an_owned_account_is_created_with_its_owner(h):
    assert owned(h, OwnedAccount("alice", acct(1))) == [R.created]
    assert owners(h, 1) == ["alice"]
    assert h.account(1).ledger == 1


def test_an_account_created_without_an_owner_has_none(h):
    assert h.accounts(acct(2)) == [R.created]
    assert owners(h, 2, 3) == [None, None]


def test_creating_it_again_for_the_same_owner_is_exists(h):
    owned(h, OwnedAccount("alice", acct(1)))
    assert owned(h, OwnedAccount("alice", acct(1))) == [R.exists]


def test_nobody_else_can_create_it_again(h):
    owned(h, OwnedAccount("alice", acct(1)))
    h.accounts(acct(2))
    assert owned(h, OwnedAccount("bob", acct(1)), OwnedAccount("bob", acct(2))) == [
        R.exists_with_different_owner, R.exists_with_different_owner]
    assert owners(h, 1, 2) == ["alice", None]


def test_a_failed_chain_leaves_no_owner_behind(h):
    linked = AccountFlags.LINKED
    codes = owned(h, OwnedAccount("alice", acct(1, flags=linked)), OwnedAccount("alice", acct(2, ledger=0)))
    assert codes == [R.linked_event_failed, R.ledger_must_not_be_zero]
    assert owners(h, 1, 2) == [None, None]


def test_owned_accounts_travel_in_raft_entries_unchanged():
    item = OwnedAccount("bank-a.ops", acct(7, flags=AccountFlags.HISTORY))
    assert unpack_owned_account(pack_owned_account(item)) == item
    _, (op,) = decode_entry(encode_entry(5, [Operation(OP_CREATE_OWNED_ACCOUNTS, [item])]))
    assert list(op.items) == [item]


def test_an_owner_name_beyond_64_bytes_does_not_pack():
    with pytest.raises(ValueError):
        pack_owned_account(OwnedAccount("x" * 65, acct(1)))

"""Escrow trades on a real 3-DC cluster: buyers, sellers and trades on different shards.

Timers use 1-2 s timeouts; every wait is bounded.
"""

from __future__ import annotations

import time

import pytest

from tidebank.client import (
    Account,
    AccountFlags,
    Client,
    CreateAccountResult,
    CreateTransferResult,
    DisputeResolution,
    Extension,
    NewTrade,
    Refund,
    TradeClosedBy,
    TradeResultCode,
    TradeRole,
    TradeState,
    Transfer,
)

from .conftest import IdSource, leader_of, running_cluster, wait_until

pytestmark = pytest.mark.integration

LEDGER = 840
FUNDS = 100_000
OK = TradeResultCode.ok
EXISTS = TradeResultCode.exists


def open_parties(client: Client, ids: IdSource, *, buyer_shard: int = 0, seller_shard: int = 1,
                 funds: int = FUNDS) -> tuple[int, int]:
    """A funded buyer (who cannot overdraw) and a seller, on the given shards."""
    mint, buyer, seller = ids.any(), ids.on_shard(buyer_shard), ids.on_shard(seller_shard)
    results = client.create_accounts([
        Account(id=mint, ledger=LEDGER, code=1),
        Account(id=buyer, ledger=LEDGER, code=1, flags=AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS),
        Account(id=seller, ledger=LEDGER, code=1),
    ])
    assert all(r.status == CreateAccountResult.created for r in results)
    (funding,) = client.create_transfers([Transfer(id=ids.any(), debit_account_id=mint, credit_account_id=buyer,
                                                   amount=funds, ledger=LEDGER, code=1)])
    assert funding.status == CreateTransferResult.created
    return buyer, seller


def net(client: Client, account_id: int) -> int:
    """credits_posted - debits_posted; 0 for an escrow or fee account not opened yet (opened on first use)."""
    found = client.lookup_accounts([account_id])
    return found[0].credits_posted - found[0].debits_posted if found else 0


def trade(client: Client, trade_id: int):
    (t,) = client.lookup_trades([trade_id])
    return t


def new_trade(trade_id: int, buyer: int, seller: int, amount: int, *, fee_bps: int = 250, ship_by_s: int = 600,
              auto_confirm_s: int = 600) -> NewTrade:
    return NewTrade(trade_id, buyer, seller, amount, LEDGER, fee_bps=fee_bps, ship_by_timeout_s=ship_by_s,
                    auto_confirm_timeout_s=auto_confirm_s)


def test_a_trade_across_three_shards_goes_from_paid_to_settled_paying_the_fee(client, ids):
    buyer, seller = open_parties(client, ids, buyer_shard=0, seller_shard=1)
    trade_id = ids.on_shard(2)
    assert client.create_trade(new_trade(trade_id, buyer, seller, 10_000)).status == OK
    t = trade(client, trade_id)
    assert (t.state, t.held) == (TradeState.PAID, 10_000)
    assert net(client, buyer) == FUNDS - 10_000 and net(client, t.escrow_account_id) >= 10_000
    assert client.ship_trade(trade_id).status == OK
    assert trade(client, trade_id).state == TradeState.SHIPPED
    escrow_before, fee_before = net(client, t.escrow_account_id), net(client, t.fee_account_id)
    assert client.confirm_trade(trade_id).status == OK
    t = trade(client, trade_id)
    assert (t.state, t.closed_by, t.held, t.released, t.fee) == (
        TradeState.SETTLED, TradeClosedBy.BUYER_CONFIRMED, 0, 9_750, 250)
    assert net(client, seller) == 9_750
    assert net(client, t.escrow_account_id) == escrow_before - 10_000
    assert net(client, t.fee_account_id) == fee_before + 250


def test_partial_refunds_go_back_to_the_buyer_and_the_seller_gets_the_rest(client, ids):
    buyer, seller = open_parties(client, ids, buyer_shard=1, seller_shard=3)
    trade_id = ids.on_shard(0)
    client.create_trade(new_trade(trade_id, buyer, seller, 5_000, fee_bps=0))
    assert client.refund_trade(trade_id, refund_id=1, amount=1_000).status == OK
    assert client.refund_trade(trade_id, refund_id=2, amount=1_500).status == OK
    assert client.refund_trade(trade_id, refund_id=3, amount=2_501).status == TradeResultCode.refund_exceeds_held
    assert client.confirm_trade(trade_id).status == OK
    t = trade(client, trade_id)
    assert (t.refunded, t.released, t.refunds) == (2_500, 2_500, [(1, 1_000), (2, 1_500)])
    assert net(client, buyer) == FUNDS - 2_500 and net(client, seller) == 2_500


def test_a_dispute_freezes_the_trade_and_a_split_pays_both_sides(client, ids):
    buyer, seller = open_parties(client, ids, buyer_shard=2, seller_shard=0)
    trade_id = ids.on_shard(1)
    client.create_trade(new_trade(trade_id, buyer, seller, 8_000, fee_bps=500))
    client.ship_trade(trade_id)
    assert client.open_dispute(trade_id).status == OK
    t = trade(client, trade_id)
    assert (t.state, t.deadline) == (TradeState.DISPUTED, 0) and t.timer_remaining_ns > 0
    assert client.confirm_trade(trade_id).status == TradeResultCode.trade_is_disputed
    assert client.resolve_dispute(trade_id, buyer_amount=3_000).status == OK
    t = trade(client, trade_id)
    assert (t.state, t.refunded, t.released, t.fee) == (TradeState.CLOSED, 3_000, 4_750, 250)
    assert net(client, buyer) == FUNDS - 5_000 and net(client, seller) == 4_750


def test_a_trade_not_shipped_in_time_is_refunded_by_its_timer(client, ids):
    buyer, seller = open_parties(client, ids, buyer_shard=3, seller_shard=2)
    trade_id = ids.on_shard(0)
    client.create_trade(new_trade(trade_id, buyer, seller, 700, ship_by_s=1))
    t = wait_until(lambda: (x := trade(client, trade_id)).state == TradeState.REFUNDED and x, 15.0,
                   "the ship-by timer")
    assert (t.closed_by, t.refunded, t.held) == (TradeClosedBy.SHIP_BY_EXPIRED, 700, 0)
    assert net(client, buyer) == FUNDS
    assert client.ship_trade(trade_id).status == TradeResultCode.trade_is_refunded


def test_a_shipped_trade_not_confirmed_in_time_is_released_by_its_timer(client, ids):
    buyer, seller = open_parties(client, ids, buyer_shard=0, seller_shard=2)
    trade_id = ids.on_shard(3)
    client.create_trade(new_trade(trade_id, buyer, seller, 2_000, fee_bps=100, auto_confirm_s=1))
    client.ship_trade(trade_id)
    t = wait_until(lambda: (x := trade(client, trade_id)).state == TradeState.SETTLED and x, 15.0,
                   "the auto-confirm timer")
    assert (t.closed_by, t.released, t.fee) == (TradeClosedBy.AUTO_CONFIRMED, 1_980, 20)
    assert net(client, seller) == 1_980


def test_a_withdrawn_dispute_resumes_the_paused_timer(client, ids):
    buyer, seller = open_parties(client, ids, buyer_shard=1, seller_shard=2)
    trade_id = ids.on_shard(3)
    client.create_trade(new_trade(trade_id, buyer, seller, 900, ship_by_s=2))
    client.open_dispute(trade_id)
    time.sleep(3)  # past the original deadline: paused, nothing fires
    assert trade(client, trade_id).state == TradeState.DISPUTED
    assert client.withdraw_dispute(trade_id).status == OK
    t = wait_until(lambda: (x := trade(client, trade_id)).state == TradeState.REFUNDED and x, 15.0,
                   "the resumed ship-by timer")
    assert t.closed_by == TradeClosedBy.SHIP_BY_EXPIRED and net(client, buyer) == FUNDS


def test_every_step_retried_answers_exists_and_moves_nothing_more(client, ids):
    buyer, seller = open_parties(client, ids, buyer_shard=2, seller_shard=3)
    first, second, third = ids.on_shard(1), ids.on_shard(0), ids.on_shard(3)
    spec = new_trade(first, buyer, seller, 3_000)
    steps = [
        lambda: client.create_trade(spec),
        lambda: client.extend_trade(first, extension_id=4, extend_by_s=60),
        lambda: client.refund_trade(first, refund_id=9, amount=500),
        lambda: client.ship_trade(first),
        lambda: client.confirm_trade(first),
        lambda: client.create_trade(new_trade(second, buyer, seller, 1_000)),
        lambda: client.open_dispute(second),
        lambda: client.withdraw_dispute(second),
        lambda: client.refund_trade(second, refund_id=1, amount=100),
        lambda: client.create_trade(new_trade(third, buyer, seller, 1_000)),
        lambda: client.open_dispute(third),
        lambda: client.resolve_dispute(third, buyer_amount=10),
    ]
    for step in steps:
        assert step().status == OK
        balances = (net(client, buyer), net(client, seller))
        assert step().status == EXISTS  # the same call again
        assert (net(client, buyer), net(client, seller)) == balances
    assert client.create_trade(new_trade(first, buyer, seller, 3_001)).status == \
        TradeResultCode.exists_with_different_amount
    assert client.refund_trade(first, refund_id=9, amount=501).status == TradeResultCode.exists_with_different_amount
    assert client.resolve_dispute(third, buyer_amount=11).status == TradeResultCode.exists_with_different_amount
    assert net(client, buyer) == FUNDS - 2_500 - 900 - 990


def test_a_buyer_without_the_money_gets_transfer_failed_and_nothing_is_held(client, ids):
    buyer, seller = open_parties(client, ids, buyer_shard=0, seller_shard=1, funds=100)
    trade_id = ids.on_shard(2)
    result = client.create_trade(new_trade(trade_id, buyer, seller, 101))
    assert (result.status, result.transfer_status) == (TradeResultCode.transfer_failed,
                                                      CreateTransferResult.exceeds_credits)
    assert client.lookup_trades([trade_id]) == [] and net(client, buyer) == 100
    assert client.create_trade(new_trade(trade_id, buyer, seller, 101)).status == TradeResultCode.transfer_failed


def test_a_trade_with_a_missing_seller_is_refused_before_any_money_moves(client, ids):
    buyer, _ = open_parties(client, ids)
    result = client.create_trade(new_trade(ids.any(), buyer, ids.any(), 10))
    assert result.status == TradeResultCode.seller_account_not_found
    assert net(client, buyer) == FUNDS


def test_escrow_money_cannot_be_moved_by_a_plain_transfer(client, ids):
    buyer, seller = open_parties(client, ids)
    trade_id = ids.on_shard(3)
    client.create_trade(new_trade(trade_id, buyer, seller, 10))
    escrow_id = trade(client, trade_id).escrow_account_id
    (result,) = client.create_transfers([Transfer(id=ids.any(), debit_account_id=escrow_id,
                                                  credit_account_id=buyer, amount=10, ledger=LEDGER, code=1)])
    assert result.status == CreateTransferResult.account_reserved_for_escrow


def test_list_trades_pages_a_sellers_trades_from_every_shard(client, ids):
    buyer, seller = open_parties(client, ids)
    created = [ids.on_shard(n % 4) for n in range(7)]
    results = client.create_trades([new_trade(t, buyer, seller, 10 + n) for n, t in enumerate(created)])
    assert all(r.status == OK for r in results)
    page = client.list_trades(seller, role=TradeRole.SELLER, limit=3)
    seen = [t.id for t in page.items]
    while page.next_page_token:
        page = client.list_trades(seller, role=TradeRole.SELLER, limit=3, page_token=page.next_page_token)
        seen.extend(t.id for t in page.items)
    assert sorted(seen) == sorted(created) and len(seen) == len(set(seen))
    assert {t.id for t in client.list_trades(buyer, limit=100).items} == set(created)


def test_a_batch_of_steps_on_one_trade_runs_them_in_order(client, ids):
    buyer, seller = open_parties(client, ids)
    trade_id = ids.on_shard(1)
    client.create_trade(new_trade(trade_id, buyer, seller, 600))
    results = client.refund_trades([Refund(trade_id, 1, 100), Refund(trade_id, 2, 200), Refund(trade_id, 3, 300)])
    assert [r.status for r in results] == [OK, OK, OK]
    assert trade(client, trade_id).state == TradeState.REFUNDED
    assert [r.status for r in client.extend_trades([Extension(trade_id, 1, 5)])] == [TradeResultCode.trade_is_refunded]
    assert client.resolve_disputes([DisputeResolution(trade_id, 1)])[0].status == TradeResultCode.trade_is_refunded


# ---- timers across a leader kill (own cluster)


def test_timers_due_while_the_leader_is_killed_or_the_cluster_restarts_each_fire_once(tmp_path):
    with running_cluster(tmp_path) as cluster:
        with Client(cluster.endpoints, tls=cluster.client_tls(), timeout_s=30.0) as client:
            ids = IdSource(cluster.shard_map(), start=time.time_ns() << 20)
            buyer, seller = open_parties(client, ids, buyer_shard=0, seller_shard=1)
            trade_shard = 2
            trades = [ids.on_shard(trade_shard) for _ in range(20)]
            results = client.create_trades([new_trade(t, buyer, seller, 100 + n, ship_by_s=2)
                                            for n, t in enumerate(trades)])
            assert all(r.status == OK for r in results)
            time.sleep(1.9)  # the timers come due as the leader dies
            victim = leader_of(cluster, trade_shard)
            cluster.kill(victim)
            refunded = wait_until(
                lambda: all(t.state == TradeState.REFUNDED for t in client.lookup_trades(trades)), 40.0,
                "every ship-by timer after the leader kill")
            assert refunded
            cluster.start([victim])
            cluster.wait_ready(timeout_s=60)
            found = client.lookup_trades(trades)
            assert all(t.refunded == t.amount and t.held == 0 for t in found)
            assert net(client, buyer) == FUNDS  # every refund exactly once
            refunds = [x for page in _pages(client, buyer) for x in page
                       if x.code == 9104 and x.user_data_128 in set(trades)]
            assert sorted(x.user_data_128 for x in refunds) == sorted(trades)  # one refund transfer each
            _check_whole_cluster_restart(cluster, client, ids, buyer, seller)


def _check_whole_cluster_restart(cluster, client: Client, ids: IdSource, buyer: int, seller: int) -> None:
    """Timers that come due while every node is down fire once after the restart (on the same cluster)."""
    trades = [ids.on_shard(n % 4) for n in range(8)]
    results = client.create_trades([new_trade(t, buyer, seller, 50, ship_by_s=1) for t in trades])
    assert all(r.status == OK for r in results)
    cluster.stop()
    time.sleep(1.5)  # every timer is due while nothing runs
    cluster.start()
    cluster.wait_ready(timeout_s=60)
    wait_until(lambda: all(t.state == TradeState.REFUNDED for t in client.lookup_trades(trades)), 40.0,
               "every ship-by timer after the restart")
    assert net(client, buyer) == FUNDS
    refunds = [x for page in _pages(client, buyer) for x in page
               if x.code == 9104 and x.user_data_128 in set(trades)]
    assert sorted(x.user_data_128 for x in refunds) == sorted(trades)


def _pages(client: Client, account_id: int):
    token = ""
    while True:
        page = client.get_account_transfers(account_id, limit=8189, page_token=token)
        yield page.items
        token = page.next_page_token
        if not token:
            return

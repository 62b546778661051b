"""Hash slots moved between the shards of a running cluster, with their accounts and transfers."""

from __future__ import annotations

import json
import threading

import pytest

from tidebank.client import (
    Account,
    Client,
    CreateTransferResult,
    OutcomeUnknownError,
    Transfer,
    TransferFlags,
    UnavailableError,
)
from tidebank.cluster.audit import audit, collect_totals
from tidebank.cluster.launcher import ChannelPool, fetch_shard_map
from tidebank.cluster.membership import MoveInterrupted
from tidebank.cluster.slot_moves import STEPS, SlotMoveError, SlotMover, slot_move_progress
from tidebank.common.keys import slot_of
from tidebank.common.topology import slots_of

from .conftest import leader_of, running_cluster

pytestmark = pytest.mark.integration

LEDGER = 9
MOVE_TIMEOUT_S = 60.0
TR = CreateTransferResult


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with running_cluster(tmp_path_factory.mktemp("slot-moves"), shards=2) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def client(cluster):
    with Client(cluster.endpoints, tls=cluster.client_tls(), timeout_s=30.0) as c:
        yield c


def _slot(cluster, key: int) -> int:
    return slot_of(key, cluster.topology.slot_count)


def _ids_in(cluster, slots: set[int], count: int, start: int) -> list[int]:
    out, i = [], start
    while len(out) < count:
        i += 1
        if _slot(cluster, i) in slots:
            out.append(i)
    return out


def _shard0_slots(cluster, first: int, count: int) -> list[int]:
    return slots_of(cluster.topology.shard(0).slots)[first:first + count]


def _audit_clean(cluster) -> None:
    with ChannelPool(cluster.client_tls()) as pool:
        answers, _ = collect_totals(cluster.endpoints, 10.0, pool)
        report = audit(answers, expected_shards=[s.shard_id for s in cluster.topology.shards])
    assert report.exit_code == 0, [m.describe() for m in report.mismatches]


def _xfer(tid: int, d: int, c: int, amount: int, **kw) -> Transfer:
    return Transfer(id=tid, debit_account_id=d, credit_account_id=c, amount=amount, ledger=LEDGER, code=1, **kw)


def test_moved_slots_keep_every_account_history_and_answer_on_their_new_shard(cluster, client):
    slots = _shard0_slots(cluster, 0, 8)
    moving = _ids_in(cluster, set(slots), 6, start=(1 << 90))
    staying = _ids_in(cluster, set(slots_of(cluster.topology.shard(0).slots)) - set(slots), 3, start=(2 << 90))
    elsewhere = _ids_in(cluster, set(slots_of(cluster.topology.shard(1).slots)), 3, start=(3 << 90))
    accounts = moving + staying + elsewhere
    assert all(r.status == 0 for r in client.create_accounts([Account(id=a, ledger=LEDGER, code=1)
                                                               for a in accounts]))
    transfers = [_xfer((4 << 90) + n, accounts[n % 12], accounts[(n * 5 + 1) % 12], 3 + n) for n in range(36)]
    transfers = [t for t in transfers if t.debit_account_id != t.credit_account_id]
    assert all(r.status == TR.created for r in client.create_transfers(transfers))
    before = {a.id: a for a in client.lookup_accounts(accounts)}
    history = {a: [t.id for t in client.get_account_transfers(a, limit=100).items] for a in moving}

    report = SlotMover(cluster.membership(), page_records=16).move(slots, 0, 1, timeout_s=MOVE_TIMEOUT_S)
    cluster.reload()

    assert report.steps_done == list(STEPS) and report.pages >= 2
    assert set(slots) <= set(slots_of(cluster.topology.shard(1).slots))
    with ChannelPool(tls=cluster.client_tls()) as pool:
        for node in cluster.topology.nodes:
            assert fetch_shard_map([node.grpc_address], 5.0, pool).version == cluster.topology.shard_map_version
    assert {a.id: a for a in client.lookup_accounts(accounts)} == before
    assert {a: [t.id for t in client.get_account_transfers(a, limit=100).items] for a in moving} == history
    assert [r.status for r in client.create_transfers(transfers[:5])] == [TR.exists] * 5
    _audit_clean(cluster)


def test_money_moves_to_and_from_moved_accounts_after_the_move(cluster, client):
    slots = _shard0_slots(cluster, 0, 4)
    moved = _ids_in(cluster, set(slots), 2, start=(5 << 90))
    other = _ids_in(cluster, set(slots_of(cluster.topology.shard(0).slots)), 1, start=(6 << 90))
    client.create_accounts([Account(id=a, ledger=LEDGER, code=1) for a in moved + other])
    SlotMover(cluster.membership()).move(slots, 0, 1, timeout_s=MOVE_TIMEOUT_S)
    cluster.reload()
    results = client.create_transfers([_xfer((7 << 90) + 1, other[0], moved[0], 40),
                                       _xfer((7 << 90) + 2, moved[0], moved[1], 15)])
    assert [r.status for r in results] == [TR.created, TR.created]
    a, b = client.lookup_accounts(moved)
    assert (a.credits_posted, a.debits_posted, b.credits_posted) == (40, 15, 15)
    _audit_clean(cluster)


# What a write naming the slots gets while the move's driver is stopped after each step: served by the source
# through the precopy, fenced there from leaving until it switches, then redirected (every node still has the
# old map), then served by the target.
WRITE_WHILE_STOPPED = {"tracking": TR.created, "importing": TR.created, "precopy": TR.created,
                       "leaving": TR.slot_moving, "copy": TR.slot_moving, "arrived": TR.slot_moving,
                       "switched": TR.slot_moved, "publish": TR.created}


@pytest.mark.parametrize("stop_after", STEPS[:-1])
def test_a_move_whose_driver_stopped_resumes_when_run_again(cluster, client, stop_after):
    slots = _shard0_slots(cluster, 0, 2)
    x, y = _ids_in(cluster, set(slots), 2, start=(12 << 90) + (1 << 80) * STEPS.index(stop_after))
    client.create_accounts([Account(id=x, ledger=LEDGER, code=1), Account(id=y, ledger=LEDGER, code=1)])
    (tid,) = _ids_in(cluster, set(slots), 1, start=(13 << 90) + (1 << 80) * STEPS.index(stop_after))
    mover = SlotMover(cluster.membership())
    stopped = mover.move(slots, 0, 1, timeout_s=MOVE_TIMEOUT_S, stop_after=stop_after)
    assert stopped.steps_done[-1] == stop_after
    progress = slot_move_progress(cluster.membership().topology_path)  # what `tidebank status` shows
    assert (progress["step"], progress["steps_done"]) == (stop_after, STEPS.index(stop_after) + 1)
    # The node retries a refused write until the call's deadline; a 1 s call sees where the move stopped.
    (during,) = client.create_transfers([_xfer(tid, x, y, 2)], timeout_s=1.0)
    assert during.status == WRITE_WHILE_STOPPED[stop_after]
    resumed = SlotMover(cluster.membership()).move(slots, 0, 1, timeout_s=MOVE_TIMEOUT_S)
    cluster.reload()
    assert resumed.resumed and resumed.steps_done == list(STEPS)
    assert slot_move_progress(cluster.membership().topology_path) is None
    # Stopped before the target took the slots, the move is aborted and made again; after, it goes on.
    arrived = STEPS.index(stop_after) >= STEPS.index("arrived")
    assert (resumed.move_id == stopped.move_id) == arrived and resumed.restarted == (not arrived)
    (after,) = client.create_transfers([_xfer(tid, x, y, 2)])
    assert after.status == (TR.exists if during.status == TR.created else TR.created)
    assert client.lookup_accounts([y])[0].credits_posted == 2
    _audit_clean(cluster)


def test_reads_wait_between_the_switch_and_the_new_shard_map_never_reading_the_old_copy(cluster, client):
    slots = _shard0_slots(cluster, 0, 2)
    (x,) = _ids_in(cluster, set(slots), 1, start=(14 << 90))
    client.create_accounts([Account(id=x, ledger=LEDGER, code=1)])
    stopped = SlotMover(cluster.membership()).move(slots, 0, 1, timeout_s=MOVE_TIMEOUT_S, stop_after="switched")
    assert stopped.steps_done[-1] == "switched"
    with pytest.raises(UnavailableError, match="SLOT_MOVED|moved to shard 1"):
        client.lookup_accounts([x], timeout_s=1.0)
    SlotMover(cluster.membership()).move(slots, 0, 1, timeout_s=MOVE_TIMEOUT_S)
    cluster.reload()
    assert [a.id for a in client.lookup_accounts([x])] == [x]


def test_moving_slots_that_are_already_there_changes_nothing(cluster):
    slots = slots_of(cluster.topology.shard(1).slots)[:2]
    report = SlotMover(cluster.membership()).move(slots, 0, 1, timeout_s=MOVE_TIMEOUT_S)
    assert report.steps_done == []


def test_a_pending_transfer_within_the_slots_moves_with_them_and_is_posted_after(cluster, client):
    slots = _shard0_slots(cluster, 0, 2)
    x, y = _ids_in(cluster, set(slots), 2, start=(17 << 90))
    client.create_accounts([Account(id=x, ledger=LEDGER, code=1), Account(id=y, ledger=LEDGER, code=1)])
    (pending,) = client.create_transfers([_xfer((17 << 90) + 1, x, y, 6, flags=TransferFlags.PENDING)])
    assert pending.status == TR.created
    SlotMover(cluster.membership()).move(slots, 0, 1, timeout_s=MOVE_TIMEOUT_S)
    cluster.reload()
    assert client.lookup_accounts([x])[0].debits_pending == 6
    (posted,) = client.create_transfers([_xfer((17 << 90) + 2, x, y, 6, pending_id=(17 << 90) + 1,
                                               flags=TransferFlags.POST_PENDING_TRANSFER)])
    assert posted.status == TR.created
    a, b = client.lookup_accounts([x, y])
    assert (a.debits_pending, a.debits_posted, b.credits_posted) == (0, 6, 6)
    _audit_clean(cluster)


def test_slots_a_move_would_split_a_pending_transfer_of_are_refused_and_keep_serving(cluster, client):
    slots = slots_of(cluster.topology.shard(0).slots)[-2:]  # slots no other test moves
    (x,) = _ids_in(cluster, set(slots), 1, start=(8 << 90))
    # y's slot can never move either (a pending transfer, even finished, is not split): one no other test moves.
    (y,) = _ids_in(cluster, {slots_of(cluster.topology.shard(0).slots)[-3]}, 1, start=(8 << 90))
    client.create_accounts([Account(id=x, ledger=LEDGER, code=1), Account(id=y, ledger=LEDGER, code=1)])
    (result,) = client.create_transfers([_xfer((9 << 90) + 1, x, y, 5, flags=TransferFlags.PENDING)])
    assert result.status == TR.created
    version = cluster.topology.shard_map_version
    with pytest.raises(SlotMoveError, match="a pending transfer has one account in the slots"):
        SlotMover(cluster.membership()).move(slots, 0, 1, timeout_s=MOVE_TIMEOUT_S)
    cluster.reload()
    assert cluster.topology.shard_map_version == version
    (posted,) = client.create_transfers([_xfer((9 << 90) + 2, x, y, 5, pending_id=(9 << 90) + 1,
                                               flags=TransferFlags.POST_PENDING_TRANSFER)])
    assert posted.status == TR.created


def test_writes_during_a_move_are_applied_once_and_none_is_lost(cluster, client):
    slots = _shard0_slots(cluster, 0, 16)
    moving = _ids_in(cluster, set(slots), 4, start=(10 << 90))
    client.create_accounts([Account(id=a, ledger=LEDGER, code=1) for a in moving])
    earlier = [_xfer((10 << 90) + n, moving[n % 4], moving[(n + 1) % 4], 1) for n in range(40)]
    assert all(r.status == TR.created for r in client.create_transfers(earlier))
    # Ids in the moving slots too: each write is one shard's (a cross-shard one would wait as a busy 2PC).
    transfer_ids = iter(_ids_in(cluster, set(slots), 5000, start=(11 << 90)))
    refused: list[Transfer] = []
    created: list[Transfer] = list(earlier)
    stop = threading.Event()

    def write() -> None:
        n = 0
        while not stop.is_set() or n < 20:
            n += 1
            t = _xfer(next(transfer_ids), moving[n % 4], moving[(n + 1) % 4], 1)
            (r,) = client.create_transfers([t])
            if r.status == TR.created:
                created.append(t)
            elif r.status in (TR.slot_moving, TR.slot_moved):
                refused.append(t)
            else:
                raise AssertionError(f"transfer {t.id}: {r.status!r}")

    writer = threading.Thread(target=write)
    writer.start()
    try:
        SlotMover(cluster.membership(), page_records=1).move(slots, 0, 1, timeout_s=MOVE_TIMEOUT_S)
    finally:
        stop.set()
        writer.join(timeout=60)
    cluster.reload()
    assert not writer.is_alive()
    retried = client.create_transfers(refused)
    assert all(r.status == TR.created for r in retried), retried
    applied = created + refused
    accounts = {a.id: a for a in client.lookup_accounts(moving)}
    for account_id, account in accounts.items():
        assert account.debits_posted == sum(t.amount for t in applied if t.debit_account_id == account_id)
        assert account.credits_posted == sum(t.amount for t in applied if t.credit_account_id == account_id)
    _audit_clean(cluster)


def test_cross_shard_writes_during_a_move_are_applied_once_and_none_is_lost(cluster, client):
    # Each write is a 2PC between an account of the moving slots and one of the other shard: some are PREPARED
    # when the fence goes up and finish under it, and what they write must still reach the target.
    slots = _shard0_slots(cluster, 40, 16)
    moving = _ids_in(cluster, set(slots), 3, start=(20 << 90))
    others = _ids_in(cluster, set(slots_of(cluster.topology.shard(1).slots)), 3, start=(21 << 90))
    assert all(r.status == 0 for r in client.create_accounts([Account(id=a, ledger=LEDGER, code=1)
                                                               for a in moving + others]))
    transfer_ids = iter(range((22 << 90) + 1, (22 << 90) + 100_000))
    created: list[Transfer] = []
    unsettled: list[Transfer] = []  # refused for now, or the call's outcome is unknown: sent again after
    stop = threading.Event()

    def write(offset: int) -> None:
        n = 0
        while not stop.is_set() or n < 10:
            n += 1
            a, b = moving[(n + offset) % 3], others[(n + 2 * offset) % 3]
            t = _xfer(next(transfer_ids), *((a, b) if n % 2 else (b, a)), 1)
            try:
                (r,) = client.create_transfers([t], timeout_s=5.0)
            except (UnavailableError, OutcomeUnknownError):
                unsettled.append(t)
                continue
            (created if r.status == TR.created else unsettled).append(t)

    writers = [threading.Thread(target=write, args=(i,)) for i in range(3)]
    for w in writers:
        w.start()
    try:
        SlotMover(cluster.membership(), page_records=8).move(slots, 0, 1, timeout_s=MOVE_TIMEOUT_S)
    finally:
        stop.set()
        for w in writers:
            w.join(timeout=60)
    cluster.reload()
    assert not any(w.is_alive() for w in writers)
    again = client.create_transfers(unsettled)
    assert all(r.status in (TR.created, TR.exists) for r in again), again
    applied = created + unsettled
    accounts = {a.id: a for a in client.lookup_accounts(moving + others)}
    for account_id, account in accounts.items():
        assert account.debits_posted == sum(t.amount for t in applied if t.debit_account_id == account_id)
        assert account.credits_posted == sum(t.amount for t in applied if t.credit_account_id == account_id)
    _audit_clean(cluster)


def test_the_cli_moves_slots_from_the_shard_holding_them(cluster, client):
    from typer.testing import CliRunner

    from tidebank.cluster.cli import app

    slots = _shard0_slots(cluster, 0, 3)
    (x,) = _ids_in(cluster, set(slots), 1, start=(15 << 90))
    client.create_accounts([Account(id=x, ledger=LEDGER, code=1)])
    spec = f"{slots[0]},{slots[1]}-{slots[2]}" if slots[2] == slots[1] + 1 else ",".join(map(str, slots))
    result = CliRunner().invoke(app, ["slot", "move", spec, "--to", "1", "--dir", str(cluster.dir), "-o", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["steps"] == list(STEPS)
    cluster.reload()
    assert set(slots) <= set(slots_of(cluster.topology.shard(1).slots))
    assert [a.id for a in client.lookup_accounts([x])] == [x]
    again = CliRunner().invoke(app, ["slot", "move", spec, "--to", "1", "--dir", str(cluster.dir)])
    assert again.exit_code == 0 and "already on shard 1" in again.output


def test_status_shows_the_slot_move_in_progress_and_how_far_it_got(cluster, client):
    from typer.testing import CliRunner

    from tidebank.cluster.cli import app

    slots = _shard0_slots(cluster, 3, 2)
    SlotMover(cluster.membership()).move(slots, 0, 1, timeout_s=MOVE_TIMEOUT_S, stop_after="precopy")
    try:
        shown = CliRunner().invoke(app, ["status", "--dir", str(cluster.dir)])
        assert shown.exit_code == 0, shown.output
        assert "slot move shard 0 -> 1" in shown.output and "3/9 steps, last done: precopy" in shown.output
        report = json.loads(CliRunner().invoke(app, ["status", "--dir", str(cluster.dir), "-o", "json"]).output)
        assert [(m["step"], m["source"], m["target"]) for m in report["slot_moves"]] == [("precopy", 0, 1)]
    finally:
        SlotMover(cluster.membership()).move(slots, 0, 1, timeout_s=MOVE_TIMEOUT_S)
    cluster.reload()
    after = json.loads(CliRunner().invoke(app, ["status", "--dir", str(cluster.dir), "-o", "json"]).output)
    assert after["slot_moves"] == []


@pytest.mark.parametrize("stop_after", ["copy", "switched"])
@pytest.mark.parametrize("side", ["source", "target"])
def test_a_slot_move_goes_on_when_a_shard_leader_is_killed_after_a_step(cluster, client, stop_after, side):
    slots = _shard0_slots(cluster, 0, 2)
    start = (16 << 90) + (1 << 80) * (STEPS.index(stop_after) * 2 + (side == "target"))
    x, y = _ids_in(cluster, set(slots), 2, start=start)
    client.create_accounts([Account(id=x, ledger=LEDGER, code=1), Account(id=y, ledger=LEDGER, code=1)])
    assert client.create_transfers([_xfer(start + 1, x, y, 9)])[0].status == TR.created
    SlotMover(cluster.membership()).move(slots, 0, 1, timeout_s=MOVE_TIMEOUT_S, stop_after=stop_after)
    victim = leader_of(cluster, 0 if side == "source" else 1)
    cluster.kill(victim)
    try:
        try:  # the shards elect new leaders and the move goes on, except that a dead node cannot take the map
            report = SlotMover(cluster.membership()).move(slots, 0, 1, timeout_s=8.0)
        except MoveInterrupted as exc:
            assert victim in str(exc)
            report = None
    finally:
        cluster.start([victim])
        cluster.wait_ready(timeout_s=60)
    if report is None:
        report = SlotMover(cluster.membership()).move(slots, 0, 1, timeout_s=MOVE_TIMEOUT_S)
    cluster.reload()
    assert report.steps_done[-1] == "gone"
    assert set(slots) <= set(slots_of(cluster.topology.shard(1).slots))
    a, b = client.lookup_accounts([x, y])
    assert (a.debits_posted, b.credits_posted) == (9, 9)
    assert client.create_transfers([_xfer(start + 2, y, x, 4)])[0].status == TR.created
    _audit_clean(cluster)

"""The bank test: concurrent money movement under a seeded schedule of real faults."""

from __future__ import annotations

import pytest

from .bank import Bank, check, summary
from .bank_moves import ReplicaMover
from .conftest import running_cluster

pytestmark = pytest.mark.integration

DURATION_S = 60.0
SEED = 20261124


def test_bank_conserves_money_and_loses_no_acknowledged_transfer_under_faults(tmp_path):
    with running_cluster(tmp_path) as cluster:
        bank = Bank(cluster, SEED)
        try:
            bank.open()
            bank.run(DURATION_S)
            bank.heal_everything()
            unknown = bank.resolve_unknowns()
            quiescent_s = bank.wait_quiescent()
            problems = check(bank)
            print(summary(bank, unknown, quiescent_s, problems))
            print("\n".join(bank.history.faults))
            assert not any("FAILED" in fault for fault in bank.history.faults), bank.history.faults
            assert sum(op.outcome == "ok" for op in bank.history.ops) > 100, "the workload made no progress"
            assert problems == []
        finally:
            bank.close()


MOVES_SEED = 20261204


def test_bank_stays_whole_while_nodes_join_and_replicas_move_under_faults(tmp_path):
    with running_cluster(tmp_path) as cluster:
        bank = Bank(cluster, MOVES_SEED)
        mover = ReplicaMover(cluster, MOVES_SEED, bank.stop)
        try:
            bank.open()
            bank.run(DURATION_S, mover=mover)
            bank.heal_everything()
            mover.finish()
            unknown = bank.resolve_unknowns()
            quiescent_s = bank.wait_quiescent()
            problems = check(bank)
            print(summary(bank, unknown, quiescent_s, problems))
            print("\n".join(sorted(bank.history.faults + mover.log)))
            print(f"replica moves: {mover.moves_done} done in {mover.attempts} attempts")
            assert mover.error is None, repr(mover.error)
            assert not any("FAILED" in fault for fault in bank.history.faults), bank.history.faults
            assert mover.moves_done >= 3, "replicas did not move"
            assert sum(op.outcome == "ok" for op in bank.history.ops) > 100, "the workload made no progress"
            assert problems == []
        finally:
            bank.close()

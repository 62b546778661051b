"""Soak: the bank test over many seeds, one summary line per seed (not part of the default suite).

    .venv/bin/python bench/soak_bank.py --seeds 10 --duration-s 60
    .venv/bin/python bench/soak_bank.py --seeds 10 --duration-s 60 --replica-moves
    .venv/bin/python bench/soak_bank.py --seeds 10 --keep-failed /tmp/soak   # a failed seed keeps its logs

Each seed gets a fresh local 3-DC cluster, the seeded workload and nemesis of
tests/integration/bank.py, and the full checker. With --replica-moves, two spare nodes join and
replicas move between the nodes of a DC throughout (tests/integration/bank_moves.py). Exit code 1 if
any seed fails.
"""

from __future__ import annotations

import argparse
import contextlib
import pathlib
import shutil
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from tests.integration.bank import Bank, check, summary  # noqa: E402
from tests.integration.bank_moves import ReplicaMover  # noqa: E402
from tests.integration.conftest import running_cluster  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument("--duration-s", type=float, default=60.0)
    parser.add_argument("--replica-moves", action="store_true", help="nodes join and replicas move meanwhile")
    parser.add_argument("--keep-failed", type=pathlib.Path, default=None,
                        help="run each seed's cluster in DIR/seed-N and keep it (logs, data) when the seed fails")
    args = parser.parse_args()
    failures = 0
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        if args.keep_failed is not None:
            place = args.keep_failed / f"seed-{seed}"
            shutil.rmtree(place, ignore_errors=True)
            place.mkdir(parents=True)
            folder = contextlib.nullcontext(str(place))
        else:
            folder = tempfile.TemporaryDirectory(prefix=f"tidebank-soak-{seed}-")
        with folder as directory, running_cluster(pathlib.Path(directory)) as cluster:
            bank = Bank(cluster, seed)
            mover = ReplicaMover(cluster, seed, bank.stop) if args.replica_moves else None
            try:
                bank.open()
                bank.run(args.duration_s, mover=mover)
                bank.heal_everything()
                if mover is not None:
                    mover.finish()
                unknown = bank.resolve_unknowns()
                quiescent_s = bank.wait_quiescent()
                problems = check(bank)
                if mover is not None and mover.error is not None:
                    problems.append(f"replica mover stopped: {mover.error!r}")
                line = summary(bank, unknown, quiescent_s, problems)
                if mover is not None:
                    line += f" replica_moves={mover.moves_done}/{mover.attempts}_attempts"
            except Exception as exc:  # a crashed run is a failed seed, reported and counted
                problems, line = [repr(exc)], f"seed={seed} FAIL (error: {exc!r})"
            finally:
                bank.close()
            print(line, flush=True)
            for problem in problems[:5]:
                print(f"    {problem}", flush=True)
            failures += bool(problems)
        if args.keep_failed is not None and not problems:
            shutil.rmtree(directory, ignore_errors=True)
        elif args.keep_failed is not None:
            print(f"    kept: {directory}", flush=True)
    print(f"{args.seeds} seeds, {args.seeds - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

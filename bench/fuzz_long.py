"""A long fuzz of every RPC on a local three-DC cluster (not part of the tests; issue 11, item 4).

    .venv/bin/python bench/fuzz_long.py --duration-s 120 --seed 1     # starts (and stops) its own cluster
    .venv/bin/python bench/fuzz_long.py --dir DIR --duration-s 600    # fuzzes a running one

The generators and the verdict are tests/integration/fuzz_messages.py's, as in tests/integration/
test_fuzz.py, driven by `random.Random(f"{seed}:{n}")` for input n (so any input can be made again from
the seed and its number), methods taken in turn so each gets its share, from --workers threads at once.

Verdict: every call answers a clear code within its deadline (never UNKNOWN, INTERNAL, DEADLINE_EXCEEDED,
nor UNAVAILABLE while every node is up), principals lacking a permission and unsigned signed-only calls are
refused, every node keeps running with its health check SERVING (checked every few seconds), no handler
exception appears in the node logs, and `tidebank audit` is clean at the end. Prints the inputs tried per
service and method, the status-code histogram, the mutations, the violations and the audit; exit code 1 on
any violation.
"""

from __future__ import annotations

import argparse
import itertools
import json
import pathlib
import random
import sys
import threading
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from bench_transfers import cluster_for  # noqa: E402 - one way for every bench to start (and stop) its cluster

from tests.integration import fuzz_messages as fm  # noqa: E402

HEALTH_PERIOD_S = 5.0


def fuzz(cluster, args) -> dict:
    principals = fm.add_principals(cluster)
    channels = fm.Channels(cluster)
    try:
        fm.seed_world(channels.get("admin", 0))
        offsets = fm.log_offsets(cluster)
        tally = fm.Tally()
        methods = fm.all_methods()
        nodes = len(cluster.endpoints)
        numbers = itertools.count()
        stop = threading.Event()
        health: list[str] = []
        began = time.monotonic()
        until = began + args.duration_s

        def work() -> None:
            while not stop.is_set() and time.monotonic() < until:
                n = next(numbers)
                method = methods[n % len(methods)]
                item = fm.make_input(fm.RandomSource(random.Random(f"{args.seed}:{n}")), method, principals, nodes)
                answer = fm.call(channels.get(item.principal, item.node), item, args.timeout_s)
                verdict = fm.judge(item, answer, args.timeout_s)
                tally.record(item, answer, None if verdict is None else f"[input {n}, seed {args.seed}] {verdict}")

        def watch() -> None:
            while not stop.wait(HEALTH_PERIOD_S) and time.monotonic() < until:
                problems = fm.health_problems(cluster, channels)
                if problems:
                    health.extend(f"at {time.monotonic() - began:.0f} s: {p}" for p in problems)
                    if any("is not running" in p for p in problems):
                        stop.set()  # a node died: every later answer would be UNAVAILABLE

        threads = [threading.Thread(target=work, name=f"fuzz-{i}") for i in range(args.workers)]
        threads.append(threading.Thread(target=watch, name="health"))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - began
        health += fm.health_problems(cluster, channels)
        report = fm.audit_verdict(cluster, wait_s=60.0)
        findings = fm.log_findings(cluster, offsets)
    finally:
        channels.close()
    return {"tally": tally, "elapsed_s": elapsed, "health": health, "audit": report, "log_findings": findings}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration-s", type=float, default=120.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=4, help="threads sending inputs at once")
    parser.add_argument("--timeout-s", type=float, default=15.0, help="deadline of each call")
    parser.add_argument("--dir", help="fuzz the running cluster in DIR (its principals get fuzz certificates)")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--json", action="store_true", help="also print one JSON object at the end")
    args = parser.parse_args()
    with cluster_for(args) as cluster:
        out = fuzz(cluster, args)
    tally: fm.Tally = out["tally"]
    report = out["audit"]
    print(f"fuzz: {tally.total} inputs in {out['elapsed_s']:.0f} s ({tally.total / out['elapsed_s']:.0f}/s), "
          f"seed {args.seed}, {args.workers} workers")
    print("\ninputs per service:")
    for service, count in sorted(tally.by_service().items()):
        print(f"  {service:10} {count:7}")
    print("\ninputs per method (codes):")
    for key in sorted(tally.tried):
        codes = ", ".join(f"{c} {n}" for c, n in tally.codes_by_method[key].most_common())
        print(f"  {key:32} {tally.tried[key]:6}   {codes}")
    print("\nstatus codes:")
    for code, count in tally.codes.most_common():
        print(f"  {code:20} {count:7}")
    print("\nsome answers per code:")
    for code, samples in sorted(tally.samples.items()):
        for sample in samples:
            print(f"  {code:20} {sample}")
    print("\nmutations: " + ", ".join(f"{m} {n}" for m, n in tally.mutations.most_common()))
    missing = [m.key for m in fm.all_methods() if not tally.tried[m.key]]
    print(f"\naudit: {report.verdict} (exit code {report.exit_code})"
          + "".join(f"\n  {m.describe()}" for m in report.mismatches))
    problems = ([f"violation: {v}" for v in tally.violations] + [f"health: {h}" for h in out["health"]]
                + [f"node log: {f}" for f in out["log_findings"]] + [f"never tried: {k}" for k in missing])
    if report.exit_code != 0:
        problems.append(f"audit: {report.verdict}")
    print(f"\n{len(problems)} problem(s)" + (":" if problems else ""))
    for p in problems[:30]:
        print("  " + p.replace("\n", "\n  "))
    if args.json:
        print(json.dumps({"inputs": tally.total, "elapsed_s": round(out["elapsed_s"], 1), "seed": args.seed,
                          "by_service": tally.by_service(), "by_method": dict(tally.tried),
                          "codes": dict(tally.codes), "mutations": dict(tally.mutations),
                          "audit": report.verdict, "problems": len(problems)}))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

"""tidebank next to PostgreSQL on the same box, in one run: one table of ratios, as JSON and as a PNG.

    .venv/bin/python bench/compare.py                      # ours, then the PostgreSQL peer, then ours again
    .venv/bin/python bench/compare.py --skip-peer          # ours only (the ratios to the peer are left out)
    .venv/bin/python bench/compare.py --duration-s 15 --out bench/out

The peer is the PostgreSQL harness (three servers, synchronous quorum commit, fsync on, 100,000
accounts, a plpgsql transfer() checking the balance): ``--peer`` or TIDEBANK_PG_PEER names it; by default
``../shared/peers/postgres/run.sh`` when that exists beside the checkout, else bench/peers/postgres.sh (a copy).
Its runs take the machine to themselves (flock), as ours do when nothing else runs.

Our workloads, each on a fresh three-DC cluster of 4 shards (bench_transfers.py, bench_escrow.py):
batched same-shard transfers; 64 callers sending one transfer each (coalesced by the client); single
transfers at half that load (latency); uniform pairs (~75 % cross-shard), batched; escrow trades through
create -> ship -> confirm, batched and with 64 single callers; linearizable lookups of a few accounts at low
load (latency) and with 64 single callers (lookups/s). Writes <out>/compare.json and <out>/compare.png.
Not a test: ratios hold across machines better than absolute numbers do.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import pathlib
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import bench_escrow  # noqa: E402
import bench_transfers  # noqa: E402

from tidebank.client import Client  # noqa: E402
from tidebank.cluster.launcher import LocalCluster  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
SHARED_PEER = ROOT.parent / "shared" / "peers" / "postgres" / "run.sh"
COPIED_PEER = HERE / "peers" / "postgres.sh"

# Targets of issue 9 (ratios in one run; latency bounds in ms)
TARGETS = {
    "batched_vs_pg": 1.0,
    "single_vs_pg": 1.0,
    "half_load_p99_ms": 40.0,
    "uniform_vs_batched": 0.5,
    "escrow_batched_vs_transfers": 0.2,
    "escrow_step_p50_vs_transfer": 3.0,
    "lookup_p50_ms": 2.0,
    "lookup_p99_ms": 10.0,
    "lookups_per_s": 20_000,
}


# --------------------------------------------------------------------------- ours


class _Cluster:
    """A fresh local cluster for one workload (so one does not slow the next)."""

    def __init__(self, shards: int) -> None:
        self.shards = shards
        self.tmp = tempfile.TemporaryDirectory(prefix="tidebank-compare-")
        self.cluster = LocalCluster.create(self.tmp.name, dcs=3, nodes_per_dc=1, shards=shards)

    def __enter__(self) -> LocalCluster:
        self.cluster.start()
        self.cluster.wait_ready(timeout_s=120)
        return self.cluster

    def __exit__(self, *exc) -> None:
        try:
            self.cluster.stop()
        finally:
            self.tmp.cleanup()


def lookups(client: Client, accounts: list[int], duration_s: float, callers: int) -> dict:
    """Linearizable lookups of two accounts per call: latency alone, then lookups/s with many callers."""
    latencies = []
    for n in range(300):
        pair = random.sample(accounts, 2)
        began = time.perf_counter()
        client.lookup_accounts(pair)
        latencies.append(time.perf_counter() - began)
        if n % 50 == 49:
            time.sleep(0.05)
    report = {"lookup_p50_ms": round(bench_transfers.percentile_ms(latencies, 50), 2),
              "lookup_p99_ms": round(bench_transfers.percentile_ms(latencies, 99), 2)}
    counts = [0] * callers
    stop = time.monotonic() + duration_s

    def caller(k: int) -> None:
        rng = random.Random(k)
        while time.monotonic() < stop:
            client.lookup_accounts([rng.choice(accounts)])
            counts[k] += 1

    started = time.monotonic()
    threads = [threading.Thread(target=caller, args=(k,)) for k in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report["lookups_per_s"] = round(sum(counts) / (time.monotonic() - started))
    return report


def run_ours(args) -> dict:
    out: dict[str, float] = {}
    with _Cluster(args.shards) as cluster, Client(cluster.endpoints, tls=cluster.client_tls(),
                                                  timeout_s=60.0) as client:
        shard_of = bench_transfers.shard_table(client)
        by_shard = bench_transfers.create_accounts(client, args.accounts, shard_of)
        ids = bench_transfers.Ids()
        out["batched_per_s"] = round(bench_transfers.batched(client, by_shard, ids, args.duration_s, 1000, 4))
        out["uniform_per_s"] = round(bench_transfers.batched(client, by_shard, ids, args.duration_s, 1000, 4,
                                                             uniform=True))
        rate, lat = bench_transfers.single_callers(client, by_shard, ids, args.duration_s, 64)
        out["single_per_s"] = round(rate)
        out["single_p50_ms"] = round(bench_transfers.percentile_ms(lat, 50), 2)
        out["single_p95_ms"] = round(bench_transfers.percentile_ms(lat, 95), 2)
        out["single_p99_ms"] = round(bench_transfers.percentile_ms(lat, 99), 2)
        achieved, lat = bench_transfers.single_callers(client, by_shard, ids, args.duration_s, 64, rate / 2)
        out["half_load_per_s"] = round(achieved)
        out["half_load_p50_ms"] = round(bench_transfers.percentile_ms(lat, 50), 2)
        out["half_load_p99_ms"] = round(bench_transfers.percentile_ms(lat, 99), 2)
        accounts = [a for group in by_shard.values() for a in group]
        out.update(lookups(client, accounts, args.duration_s, 64))
    with _Cluster(args.shards) as cluster, Client(cluster.endpoints, tls=cluster.client_tls(),
                                                  timeout_s=60.0) as client:
        buyers, sellers = bench_escrow.open_parties(client, 2000, 500)
        batched = bench_escrow.run(client, buyers, sellers, args.duration_s, 500, 4)
        single = bench_escrow.run(client, buyers, sellers, args.duration_s, 1, 64)
    out["escrow_batched_per_s"] = batched["trades_per_s"]
    out["escrow_single_per_s"] = single["trades_per_s"]
    for step in ("create", "ship", "confirm"):
        out[f"escrow_{step}_p50_ms"] = single.get(f"{step}_latency_ms_p50", 0.0)
        out[f"escrow_{step}_p99_ms"] = single.get(f"{step}_latency_ms_p99", 0.0)
    return out


# --------------------------------------------------------------------------- the peer


def peer_script(arg: str | None) -> pathlib.Path | None:
    for candidate in (arg, os.environ.get("TIDEBANK_PG_PEER"), SHARED_PEER, COPIED_PEER):
        if candidate and pathlib.Path(candidate).is_file():
            return pathlib.Path(candidate)
    return None


def run_peer(script: pathlib.Path, duration_s: float, base: pathlib.Path) -> dict:
    """Run the PostgreSQL harness and read its results table (results.tsv)."""
    env = {**os.environ, "DUR": str(int(duration_s)), "BASE": str(base)}
    print(f"running the PostgreSQL peer ({script}), about {int(duration_s) * 15 // 60 + 2} minutes", file=sys.stderr)
    subprocess.run(["bash", str(script)], env=env, check=True, stdout=sys.stderr)
    rows = {}
    with open(base / "results.tsv") as f:
        for row in csv.reader(f, delimiter="\t"):
            case, nodes, clients, tps, transfers_per_s = row[0], row[1], row[2], row[3], row[4]
            p50, p95, p99 = row[6], row[7], row[8]
            rows[(case, int(nodes), int(clients))] = {"transfers_per_s": float(transfers_per_s), "tps": float(tps),
                                                      "p50_ms": float(p50), "p95_ms": float(p95),
                                                      "p99_ms": float(p99)}
    three = {k: v for k, v in rows.items() if k[1] == 3}
    return {"batched_per_s": three[("B-loop", 3, 16)]["transfers_per_s"],
            "single_per_s": three[("A-fn", 3, 64)]["transfers_per_s"],
            "single_p50_ms": three[("A-fn", 3, 64)]["p50_ms"],
            "single_p95_ms": three[("A-fn", 3, 64)]["p95_ms"],
            "single_p99_ms": three[("A-fn", 3, 64)]["p99_ms"],
            "rows": {f"{c} n{n} C{k}": v for (c, n, k), v in rows.items()}}


# --------------------------------------------------------------------------- the table


def ratios(ours: dict, peer: dict | None) -> list[dict]:
    """One row per comparison: what, ours, theirs (or the bound), ratio or value, target, met."""
    rows = []

    def row(what: str, value: float, reference: float | None, target: float, higher_is_better: bool = True,
            unit: str = "") -> None:
        ratio = value / reference if reference else None
        shown = ratio if ratio is not None else value
        met = (shown >= target) if higher_is_better else (shown <= target)
        rows.append({"what": what, "ours": value, "reference": reference, "ratio": ratio, "target": target,
                     "higher_is_better": higher_is_better, "unit": unit, "met": met})

    if peer is not None:
        row("batched same-shard transfers/s vs PG 3-node B-loop", ours["batched_per_s"], peer["batched_per_s"],
            TARGETS["batched_vs_pg"])
        row("64 single callers transfers/s vs PG 3-node A-fn C=64", ours["single_per_s"], peer["single_per_s"],
            TARGETS["single_vs_pg"])
        row("64 single callers p99 vs PG's p99 (ms)", ours["single_p99_ms"], peer["single_p99_ms"], 1.0,
            higher_is_better=False)
    row("single transfer p99 at half load (ms)", ours["half_load_p99_ms"], None, TARGETS["half_load_p99_ms"],
        higher_is_better=False, unit="ms")
    row("uniform (~75 % cross-shard) vs same-shard, batched", ours["uniform_per_s"], ours["batched_per_s"],
        TARGETS["uniform_vs_batched"])
    row("escrow trades/s (create->ship->confirm) vs transfers/s, batched", ours["escrow_batched_per_s"],
        ours["batched_per_s"], TARGETS["escrow_batched_vs_transfers"])
    for step in ("create", "ship", "confirm"):
        row(f"escrow {step} p50 vs a single transfer's p50, 64 callers", ours[f"escrow_{step}_p50_ms"],
            ours["single_p50_ms"], TARGETS["escrow_step_p50_vs_transfer"], higher_is_better=False)
    row("linearizable lookup p50 at low load (ms)", ours["lookup_p50_ms"], None, TARGETS["lookup_p50_ms"],
        higher_is_better=False, unit="ms")
    row("linearizable lookup p99 at low load (ms)", ours["lookup_p99_ms"], None, TARGETS["lookup_p99_ms"],
        higher_is_better=False, unit="ms")
    row("lookups/s with 64 single callers", ours["lookups_per_s"], None, TARGETS["lookups_per_s"])
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"{'comparison':<66} {'ours':>10} {'reference':>10} {'ratio/value':>12} {'target':>8}  met")
    for r in rows:
        shown = r["ratio"] if r["ratio"] is not None else r["ours"]
        sign = ">=" if r["higher_is_better"] else "<="
        ref = "" if r["reference"] is None else f"{r['reference']:,.1f}"
        print(f"{r['what']:<66} {r['ours']:>10,.1f} {ref:>10} {shown:>12,.2f} {sign}{r['target']:>6g}  "
              f"{'yes' if r['met'] else 'NO'}")


def draw(ours_runs: list[dict], peer: dict | None, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ours = ours_runs[-1]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    names = ["batched\ntransfers", "64 single\ncallers", "uniform\n(~75% x-shard)", "escrow trades\nbatched",
             "escrow trades\n64 callers"]
    mine = [ours["batched_per_s"], ours["single_per_s"], ours["uniform_per_s"], ours["escrow_batched_per_s"],
            ours["escrow_single_per_s"]]
    xs = range(len(names))
    left.bar([x - 0.2 for x in xs], mine, width=0.4, label="tidebank")
    if peer is not None:
        left.bar([x + 0.2 for x in xs[:2]], [peer["batched_per_s"], peer["single_per_s"]], width=0.4,
                 label="PostgreSQL, 3 nodes (B-loop, A-fn C=64)")
    left.set_xticks(list(xs), names)
    left.set_ylabel("per second")
    left.set_title("throughput, same 2 cores")
    left.legend()
    pct = ["p50", "p95", "p99"]
    right.bar([i - 0.2 for i in range(3)], [ours[f"single_{p}_ms"] for p in pct], width=0.4,
              label="tidebank, 64 single callers")
    if peer is not None:
        right.bar([i + 0.2 for i in range(3)], [peer[f"single_{p}_ms"] for p in pct], width=0.4,
                  label="PostgreSQL 3 nodes, C=64")
    right.set_xticks(range(3), pct)
    right.set_ylabel("ms")
    right.set_title("single-transfer latency at full load")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration-s", type=float, default=15.0)
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--peer", help="the PostgreSQL peer script (default: see above)")
    parser.add_argument("--skip-peer", action="store_true")
    parser.add_argument("--out", default=str(HERE / "out"))
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    ours_runs = [run_ours(args)]
    peer = None
    if not args.skip_peer:
        script = peer_script(args.peer)
        if script is None:
            print("no PostgreSQL peer script found: comparing with targets only", file=sys.stderr)
        else:
            with tempfile.TemporaryDirectory(prefix="peer-pg-") as base:
                os.chmod(base, 0o755)
                peer = run_peer(script, args.duration_s, pathlib.Path(base))
            ours_runs.append(run_ours(args))
    # the mean of our runs before and after the peer's (both are in the JSON)
    ours = {k: round(statistics.fmean(r[k] for r in ours_runs), 2) for k in ours_runs[0]}
    rows = ratios(ours, peer)
    print_table(rows)
    report = {"started": started, "duration_s": args.duration_s, "cpus": os.cpu_count(), "ours_runs": ours_runs,
              "ours": ours, "peer": peer, "rows": rows}
    (out / "compare.json").write_text(json.dumps(report, indent=2))
    draw(ours_runs, peer, out / "compare.png")
    print(f"wrote {out / 'compare.json'} and {out / 'compare.png'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Does a node's memory keep growing under steady load? RSS of every node process over a long batched run.

    .venv/bin/python bench/rss_soak.py                             # 10 minutes, a sample every 10 s
    .venv/bin/python bench/rss_soak.py --duration-s 120 --sample-s 5 --accounts 20000
    .venv/bin/python bench/rss_soak.py --from-csv bench/results/rss.csv      # no run: the table and PNG again

Starts its own three-DC cluster (4 shards), creates --accounts accounts, then runs bench_transfers.py's batched
same-shard load (--senders senders x --batch transfers per call) for --duration-s, reading each node's
VmRSS (and its RssAnon / RssFile split: LMDB's file pages count in VmRSS but are not a leak) from
/proc/PID/status every --sample-s. Prints a line per sample, then per node: RSS before the load, at the first
sample under load (start), at the end, the max, and the least-squares slope over the second half in MB per
minute. Writes bench/results/rss.csv and rss.png (--out-dir). The cluster is stopped however the run ends.
"""

from __future__ import annotations

import argparse
import csv
import math
import pathlib
import random
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import bench_transfers  # noqa: E402

from tidebank.client import Client  # noqa: E402
from tidebank.cluster.launcher import LocalCluster  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
STATUS_FIELDS = ("VmRSS", "RssAnon", "RssFile")
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd")


def read_rss_mb(pid: int) -> dict[str, float]:
    """VmRSS, RssAnon and RssFile of a process in MB (the kernel reports kB); NaN for a process that is gone."""
    out = dict.fromkeys(STATUS_FIELDS, math.nan)
    try:
        text = pathlib.Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in out:
            out[key] = int(value.split()[0]) / 1024
    return out


@dataclass
class Sample:
    """One reading of every node, with the load's progress at that moment."""

    t_s: float
    transfers_done: int
    transfers_per_s: float
    rss_mb: dict[str, dict[str, float]] = field(default_factory=dict)  # node -> {VmRSS, RssAnon, RssFile}


class BatchedLoad:
    """bench_transfers.batched, but open-ended and counted as it goes, so the sampler can read progress."""

    def __init__(self, client: Client, by_shard: dict[int, list[int]], senders: int, batch: int) -> None:
        self.client = client
        self.by_shard = by_shard
        self.batch = batch
        self.ids = bench_transfers.Ids()
        self.done = 0
        self.failed = 0
        self.errors = 0
        self.first_error: str | None = None
        self.stop = threading.Event()
        self._lock = threading.Lock()
        # daemons: after an error or Ctrl-C, a sender stuck in a call must not keep the process (or the cluster) up
        self._threads = [threading.Thread(target=self._sender, args=(k,), name=f"sender-{k}", daemon=True)
                         for k in range(senders)]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def join(self, timeout_s: float | None = None) -> None:
        """Stop the senders and wait for them (at most timeout_s in all, if given)."""
        self.stop.set()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        for t in self._threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def _sender(self, k: int) -> None:
        rng = random.Random(k)
        while not self.stop.is_set():
            transfers = bench_transfers.make_transfers(rng, self.by_shard, self.ids, self.batch)
            try:
                results = self.client.create_transfers(transfers)
            except Exception as exc:  # keep the soak going: count it, report the first one
                with self._lock:
                    self.errors += 1
                    self.first_error = self.first_error or repr(exc)
                self.stop.wait(0.5)
                continue
            ok = sum(1 for r in results if r.ok)
            with self._lock:
                self.done += ok
                self.failed += len(results) - ok


def slope_per_min(t_s: Sequence[float], values: Sequence[float]) -> float:
    """Least-squares slope of values over t_s, per minute (NaN with fewer than two finite points)."""
    points = [(t, v) for t, v in zip(t_s, values, strict=True) if not math.isnan(v)]
    if len(points) < 2:
        return math.nan
    mean_t = sum(t for t, _ in points) / len(points)
    mean_v = sum(v for _, v in points) / len(points)
    var_t = sum((t - mean_t) ** 2 for t, _ in points)
    if var_t == 0:
        return math.nan
    return 60 * sum((t - mean_t) * (v - mean_v) for t, v in points) / var_t


@dataclass
class NodeSummary:
    node: str
    pid: int
    before_load_mb: float
    start_mb: float
    end_mb: float
    max_mb: float
    slope_mb_per_min: float
    anon_start_mb: float
    anon_end_mb: float
    anon_slope_mb_per_min: float
    file_slope_mb_per_min: float


def summarize(samples: list[Sample], pids: dict[str, int], duration_s: float) -> list[NodeSummary]:
    """samples[0] is the reading before the load; the rest are under load. Slopes fit the second half."""
    under = samples[1:]
    half = [s for s in under if s.t_s >= duration_s / 2]
    half_t = [s.t_s for s in half]
    out = []
    for node, pid in pids.items():
        def series(which: str, rows: list[Sample], node: str = node) -> list[float]:
            return [s.rss_mb[node][which] for s in rows]

        rss, anon = series("VmRSS", under), series("RssAnon", under)
        out.append(NodeSummary(
            node=node, pid=pid, before_load_mb=samples[0].rss_mb[node]["VmRSS"],
            start_mb=rss[0] if rss else math.nan, end_mb=rss[-1] if rss else math.nan,
            max_mb=max((v for v in rss if not math.isnan(v)), default=math.nan),
            slope_mb_per_min=slope_per_min(half_t, series("VmRSS", half)),
            anon_start_mb=anon[0] if anon else math.nan, anon_end_mb=anon[-1] if anon else math.nan,
            anon_slope_mb_per_min=slope_per_min(half_t, series("RssAnon", half)),
            file_slope_mb_per_min=slope_per_min(half_t, series("RssFile", half))))
    return out


def print_summary(summaries: list[NodeSummary]) -> None:
    print(f"{'node':8} {'pid':>7} {'before MB':>10} {'start MB':>9} {'end MB':>8} {'max MB':>8} "
          f"{'slope MB/min':>13} | {'anon start':>10} {'anon end':>9} {'anon MB/min':>12} {'file MB/min':>12}")
    for s in summaries:
        print(f"{s.node:8} {s.pid:>7} {s.before_load_mb:10.1f} {s.start_mb:9.1f} {s.end_mb:8.1f} {s.max_mb:8.1f} "
              f"{s.slope_mb_per_min:+13.2f} | {s.anon_start_mb:10.1f} {s.anon_end_mb:9.1f} "
              f"{s.anon_slope_mb_per_min:+12.2f} {s.file_slope_mb_per_min:+12.2f}")
    print("slopes: least squares over the second half of the run; start = first sample under load; "
          "anon = RssAnon (heap), file = RssFile (mapped files: LMDB)")


_CSV_FIELDS = {"rss_mb": "VmRSS", "rss_anon_mb": "RssAnon", "rss_file_mb": "RssFile"}


def write_csv(path: pathlib.Path, samples: list[Sample], nodes: list[str], pids: dict[str, int]) -> None:
    """One row per sample; the pid is in each node's column names so that --from-csv can print it again."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["t_s", "transfers_done", "transfers_per_s"]
                        + [f"{node}:{pids[node]}:{col}" for node in nodes for col in _CSV_FIELDS])
        for s in samples:
            writer.writerow([f"{s.t_s:.1f}", s.transfers_done, f"{s.transfers_per_s:.0f}"]
                            + [f"{s.rss_mb[node][k]:.1f}" for node in nodes for k in _CSV_FIELDS.values()])


def read_csv(path: pathlib.Path) -> tuple[list[Sample], dict[str, int]]:
    """The samples and pids write_csv wrote: to redraw and re-summarize a run without running it again."""
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        columns = [tuple(name.split(":")) for name in header[3:]]
        pids = {node: int(pid) for node, pid, _ in columns}
        samples = []
        for row in reader:
            rss: dict[str, dict[str, float]] = {node: {} for node in pids}
            for (node, _, col), value in zip(columns, row[3:], strict=True):
                rss[node][_CSV_FIELDS[col]] = float(value)
            samples.append(Sample(float(row[0]), int(row[1]), float(row[2]), rss))
    return samples, pids


def draw(path: pathlib.Path, samples: list[Sample], summaries: list[NodeSummary], duration_s: float,
         title: str) -> None:
    """VmRSS per node with the second-half fit; its RssAnon / RssFile split; the load's transfers/s."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    under = samples[1:]
    t_min = [s.t_s / 60 for s in under]
    half = [s for s in under if s.t_s >= duration_s / 2]
    fig, (ax, ax_split, ax_rate) = plt.subplots(3, 1, figsize=(9, 8), sharex=True,
                                                gridspec_kw={"height_ratios": [3, 2.2, 1.2]})
    for colour, summary in zip(COLOURS * 4, summaries, strict=False):
        node = summary.node
        ax.plot(t_min, [s.rss_mb[node]["VmRSS"] for s in under], color=colour, linewidth=1.5,
                label=f"{node}: {summary.start_mb:.0f} -> {summary.end_mb:.0f} MB, "
                      f"{summary.slope_mb_per_min:+.0f} MB/min in the 2nd half")
        if len(half) >= 2 and not math.isnan(summary.slope_mb_per_min):
            # the least-squares line over the second half, through its mean point
            t0 = sum(s.t_s for s in half) / len(half) / 60
            v0 = sum(s.rss_mb[node]["VmRSS"] for s in half) / len(half)
            ends = (half[0].t_s / 60, half[-1].t_s / 60)
            ax.plot(ends, [v0 + summary.slope_mb_per_min * (t - t0) for t in ends], color=colour, linewidth=1,
                    linestyle=":")
        ax_split.plot(t_min, [s.rss_mb[node]["RssAnon"] for s in under], color=colour, linewidth=1.3,
                      label=f"{node} RssAnon ({summary.anon_slope_mb_per_min:+.0f} MB/min)")
        ax_split.plot(t_min, [s.rss_mb[node]["RssFile"] for s in under], color=colour, linewidth=1.3,
                      linestyle="--", label=f"{node} RssFile ({summary.file_slope_mb_per_min:+.0f} MB/min)")
    ax.set_ylabel("VmRSS, MB")
    ax.set_title(title, fontsize=9, loc="left")
    ax_split.set_ylabel("MB")
    ax_split.set_title("RssAnon (heap, solid) and RssFile (mapped files: LMDB, dashed); slopes over the 2nd half",
                       fontsize=8, loc="left")
    ax_rate.plot(t_min, [s.transfers_per_s for s in under], color="#555555", linewidth=1)
    ax_rate.set_ylabel("transfers/s")
    ax_rate.set_xlabel("minutes under load")
    for a in (ax, ax_split, ax_rate):
        a.set_ylim(bottom=0)
        a.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    ax_split.legend(fontsize=7, loc="upper left", ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration-s", type=float, default=600.0, help="how long the load runs")
    parser.add_argument("--sample-s", type=float, default=10.0, help="RSS sample interval")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--out-dir", type=pathlib.Path, default=HERE / "results")
    parser.add_argument("--from-csv", type=pathlib.Path, help="no run: summarize and redraw a CSV this script wrote")
    args = parser.parse_args()
    if args.from_csv:
        samples, pids = read_csv(args.from_csv)
        duration_s = samples[-1].t_s
        summaries = summarize(samples, pids, duration_s)
        print(f"{args.from_csv}: {len(samples)} samples over {duration_s:.0f} s, "
              f"mean {samples[-1].transfers_done / duration_s:,.0f} transfers/s")
        print_summary(summaries)
        png_path = args.out_dir / "rss.png"
        draw(png_path, samples, summaries, duration_s,
             f"node RSS, from {args.from_csv.name}; mean {samples[-1].transfers_done / duration_s:,.0f} transfers/s")
        print(f"wrote {png_path}")
        return 0

    samples: list[Sample] = []
    with tempfile.TemporaryDirectory(prefix="tidebank-rss-") as directory:
        cluster = LocalCluster.create(directory, dcs=3, nodes_per_dc=1, shards=args.shards)
        load: BatchedLoad | None = None
        try:
            cluster.start()
            cluster.wait_ready(timeout_s=120)
            nodes = cluster.topology.node_names
            pids = {node: cluster.pid(node) for node in nodes}
            if any(pid is None for pid in pids.values()):
                raise SystemExit(f"a node is not running: {pids}")
            with Client(cluster.endpoints, tls=cluster.client_tls(), timeout_s=60.0) as client:
                by_shard = bench_transfers.create_accounts(client, args.accounts, bench_transfers.shard_table(client))
                load = BatchedLoad(client, by_shard, args.senders, args.batch)
                header = "   t_s  transfers/s  " + "  ".join(f"{n + ' MB':>12}" for n in nodes)
                print(f"{args.accounts} accounts created; batched load ({args.senders} x {args.batch}) for "
                      f"{args.duration_s:.0f} s, RSS every {args.sample_s:g} s; pids {pids}\n{header}", flush=True)
                started = time.monotonic()
                last_t, last_done = 0.0, 0

                def sample() -> None:
                    nonlocal last_t, last_done
                    t_s = time.monotonic() - started
                    done = load.done
                    rate = (done - last_done) / (t_s - last_t) if t_s > last_t else 0.0
                    s = Sample(t_s, done, rate, {node: read_rss_mb(pid) for node, pid in pids.items()})
                    samples.append(s)
                    last_t, last_done = t_s, done
                    print(f"{t_s:6.0f}  {rate:11,.0f}  "
                          + "  ".join(f"{s.rss_mb[n]['VmRSS']:12.1f}" for n in nodes), flush=True)

                sample()  # before the load: what account creation left
                load.start()
                next_at = started + args.sample_s
                end_at = started + args.duration_s
                while next_at <= end_at + 1e-6:
                    time.sleep(max(0.0, next_at - time.monotonic()))
                    sample()
                    cluster.check_processes()  # a node that died ends the soak with its log tail
                    next_at += args.sample_s
                load.join()
        finally:
            if load is not None:
                load.join(timeout_s=10.0)  # already joined unless the run failed or was interrupted
            cluster.stop()

    summaries = summarize(samples, pids, args.duration_s)
    load_s = samples[-1].t_s if len(samples) > 1 else math.nan
    mean_rate = samples[-1].transfers_done / load_s if load_s else math.nan
    print(f"\nmean {mean_rate:,.0f} transfers/s over {load_s:.0f} s ({samples[-1].transfers_done:,} transfers); "
          f"failed results {load.failed}, request errors {load.errors}"
          + (f" (first: {load.first_error})" if load.first_error else ""))
    print_summary(summaries)
    csv_path, png_path = args.out_dir / "rss.csv", args.out_dir / "rss.png"
    write_csv(csv_path, samples, nodes, pids)
    title = (f"node RSS, batched same-shard load ({args.senders} x {args.batch}), {args.accounts:,} accounts, "
             f"{args.shards} shards; mean {mean_rate:,.0f} transfers/s")
    draw(png_path, samples, summaries, args.duration_s, title)
    print(f"wrote {csv_path} and {png_path}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # the cluster was stopped on the way out
        print("interrupted: cluster stopped, nothing written", file=sys.stderr)
        sys.exit(130)

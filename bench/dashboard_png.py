"""The Grafana dashboard (bench/grafana/tidebank-dashboard.json) as one PNG, from a local run: no Prometheus needed.

    .venv/bin/python bench/dashboard_png.py                          # 60 s of mixed load, bench/results/dashboard.png
    .venv/bin/python bench/dashboard_png.py --duration-s 120 --interval-s 5 --out /tmp/dash.png

Starts its own three-DC cluster (4 shards; LocalCluster gives every node a metrics_port), drives a mixed load
(batched same-shard transfers from 2 senders, a few callers sending one transfer at a time, a sender of small
cross-shard batches), and scrapes every node's /metrics every --interval-s. Rates come from counter deltas
between scrapes and p50/p99 from histogram bucket deltas per interval (interpolated within a bucket, as
histogram_quantile does), so each panel shows what the dashboard's query would. Prints a short summary and
the path of the PNG; the cluster is stopped however the run ends.
"""

from __future__ import annotations

import argparse
import math
import pathlib
import random
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import bench_transfers  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from tidebank.client import Client  # noqa: E402
from tidebank.cluster.launcher import LocalCluster  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "dashboard.png"

Labels = tuple[tuple[str, str], ...]
Samples = dict[tuple[str, Labels], float]
Series = dict[str, list[float]]

# Grafana's classic palette, in its order: one colour per node (or per legend entry)
PALETTE = ("#73BF69", "#F2CC0C", "#8AB8FF", "#FF780A", "#F2495C", "#5794F2", "#B877D9", "#FADE2A", "#C4162A",
           "#1F78C1", "#FF9830", "#96D98D")
BACKGROUND = "#111217"
PANEL = "#181b1f"
TEXT = "#ccccdc"
GRID = "#2c3235"


# ---------------------------------------------------------------------------------------------- scraping

def scrape(url: str, timeout_s: float) -> Samples:
    """Every sample of one /metrics page, keyed by (sample name, sorted labels)."""
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        text = response.read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


@dataclass
class Round:
    """One scrape of every node; a node that did not answer is missing from `samples`."""

    t_s: float
    taken_at: dict[str, float] = field(default_factory=dict)
    samples: dict[str, Samples] = field(default_factory=dict)


class Scraper:
    """Scrapes all nodes every interval on its own thread, so the load threads never wait for it."""

    def __init__(self, urls: dict[str, str], interval_s: float, started: float) -> None:
        self.urls = urls
        self.interval_s = interval_s
        self.started = started
        self.rounds: list[Round] = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scraper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def scrape_once(self) -> None:
        now = time.monotonic()
        round_ = Round(t_s=now - self.started)
        for node, url in self.urls.items():
            try:
                round_.samples[node] = scrape(url, timeout_s=max(1.0, self.interval_s))
                round_.taken_at[node] = time.monotonic() - self.started
            except OSError as exc:
                self.failures += 1
                print(f"scrape of {node} failed: {exc}", file=sys.stderr)
        self.rounds.append(round_)

    def _run(self) -> None:
        next_at = time.monotonic() + self.interval_s  # the baseline was scraped just before the load started
        while not self._stop.wait(max(0.0, next_at - time.monotonic())):
            self.scrape_once()
            next_at += self.interval_s


# ---------------------------------------------------------------------------------------------- series

def _match(labels: Labels, where: dict[str, str] | None) -> bool:
    if not where:
        return True
    d = dict(labels)
    return all(d.get(k) == v for k, v in where.items())


def _group(labels: Labels, by: Sequence[str]) -> tuple[str, ...]:
    d = dict(labels)
    return tuple(d.get(k, "") for k in by)


def _deltas(prev: Samples, cur: Samples, name: str, by: Sequence[str], where: dict[str, str] | None
            ) -> dict[tuple[str, ...], float]:
    """Counter increase per group between two scrapes of one node (a series new in `cur` started at 0)."""
    out: dict[tuple[str, ...], float] = defaultdict(float)
    for (sample_name, labels), value in cur.items():
        if sample_name != name or not _match(labels, where):
            continue
        delta = value - prev.get((sample_name, labels), 0.0)
        out[_group(labels, by)] += value if delta < 0 else delta  # a reset counts from zero
    return out


def histogram_quantile(q: float, buckets: dict[float, float]) -> float:
    """Prometheus' histogram_quantile over cumulative bucket counts {le: count}: linear within the bucket."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return math.nan
    total = buckets[bounds[-1]]
    rank = q * total
    lower, below = 0.0, 0.0
    for le in bounds:
        count = buckets[le]
        if count >= rank:
            if math.isinf(le):
                return lower  # in the +Inf bucket: the highest finite bound, as Prometheus does
            if count == below:
                return le
            return lower + (le - lower) * (rank - below) / (count - below)
        lower, below = le, count
    return bounds[-1]


def _label(parts: Iterable[str]) -> str:
    return " ".join(p for p in parts if p)


class Data:
    """Per-interval values from the scrape rounds, the way the dashboard's PromQL computes them."""

    def __init__(self, rounds: list[Round], nodes: list[str]) -> None:
        self.rounds = rounds
        self.nodes = nodes
        self.t_s = [r.t_s for r in rounds[1:]]  # each interval is plotted at its end

    def _pairs(self, node: str) -> Iterable[tuple[int, Samples, Samples, float] | tuple[int, None, None, float]]:
        for i in range(1, len(self.rounds)):
            a, b = self.rounds[i - 1], self.rounds[i]
            if node in a.samples and node in b.samples:
                yield i - 1, a.samples[node], b.samples[node], b.taken_at[node] - a.taken_at[node]
            else:
                yield i - 1, None, None, math.nan

    def _per_node_deltas(self, name: str, by: Sequence[str], where: dict[str, str] | None
                         ) -> dict[str, list[dict[tuple[str, ...], float] | None]]:
        out: dict[str, list[dict[tuple[str, ...], float] | None]] = {}
        for node in self.nodes:
            rows: list[dict[tuple[str, ...], float] | None] = []
            for _, prev, cur, _dt in self._pairs(node):
                rows.append(None if prev is None or cur is None else _deltas(prev, cur, name, by, where))
            out[node] = rows
        return out

    def _dts(self, node: str) -> list[float]:
        return [dt for *_, dt in self._pairs(node)]

    def rate(self, name: str, by: Sequence[str] = (), where: dict[str, str] | None = None,
             per_node: bool = False, scale: float = 1.0) -> Series:
        """rate(name) summed by `by` (and by node if per_node); name is the sample name, e.g. ..._total."""
        n = len(self.t_s)
        out: Series = {}
        for node, rows in self._per_node_deltas(name, by, where).items():
            dts = self._dts(node)
            for i, row in enumerate(rows):
                if row is None or not dts[i] > 0:
                    continue
                for group, delta in row.items():
                    key = _label(((node,) if per_node else ()) + group)
                    series = out.setdefault(key, [0.0 if not per_node else math.nan] * n)
                    series[i] = (0.0 if math.isnan(series[i]) else series[i]) + scale * delta / dts[i]
        return out

    def quantile(self, q: float, name: str, by: Sequence[str] = (), where: dict[str, str] | None = None,
                 per_node: bool = False, scale: float = 1.0) -> Series:
        """histogram_quantile(q, sum by (by, le) (rate(name_bucket))), over all nodes unless per_node."""
        n = len(self.t_s)
        buckets: dict[str, list[dict[float, float]]] = {}
        for node, rows in self._per_node_deltas(f"{name}_bucket", (*by, "le"), where).items():
            for i, row in enumerate(rows):
                for group, delta in (row or {}).items():
                    key = _label(((node,) if per_node else ()) + group[:-1])
                    per_interval = buckets.setdefault(key, [defaultdict(float) for _ in range(n)])
                    per_interval[i][float(group[-1])] += delta
        return {key: [scale * histogram_quantile(q, b) for b in rows] for key, rows in buckets.items()}

    def ratio(self, num: Series, den: Series, scale: float = 1.0) -> Series:
        return {key: [scale * a / b if b and not math.isnan(b) else math.nan
                      for a, b in zip(values, den[key], strict=True)]
                for key, values in num.items() if key in den}

    def gauge(self, name: str, by: Sequence[str] = (), where: dict[str, str] | None = None,
              per_node: bool = False) -> Series:
        """The gauge at each interval's end, summed by `by` (and by node if per_node)."""
        n = len(self.t_s)
        out: Series = {}
        for i, round_ in enumerate(self.rounds[1:]):
            for node, samples in round_.samples.items():
                for (sample_name, labels), value in samples.items():
                    if sample_name != name or not _match(labels, where):
                        continue
                    key = _label(((node,) if per_node else ()) + _group(labels, by))
                    series = out.setdefault(key, [math.nan] * n)
                    series[i] = (0.0 if math.isnan(series[i]) else series[i]) + value
        return out


# ---------------------------------------------------------------------------------------------- load

@dataclass
class LoadStats:
    """What the load threads did, counted on the client side."""

    ok: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    failed: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    single_latencies_s: list[float] = field(default_factory=list)
    first_error: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, kind: str, ok: int, failed: int) -> None:
        with self.lock:
            self.ok[kind] += ok
            self.failed[kind] += failed

    def error(self, kind: str, exc: Exception) -> None:
        with self.lock:
            self.errors[kind] += 1
            if self.first_error is None:
                self.first_error = f"{kind}: {exc!r}"


def run_load(clients: dict[str, Client], by_shard: dict[int, list[int]], ids: bench_transfers.Ids,
             args: argparse.Namespace, stop: threading.Event, stats: LoadStats) -> list[threading.Thread]:
    """Start the mixed load's threads; they run until `stop` is set."""

    def loop(kind: str, seed: int, count: int, uniform: bool) -> None:
        rng = random.Random(seed)
        client = clients[kind]
        while not stop.is_set():
            transfers = bench_transfers.make_transfers(rng, by_shard, ids, count, uniform)
            began = time.perf_counter()
            try:
                results = client.create_transfers(transfers)
            except Exception as exc:  # keep the load going: count it, report the first one
                stats.error(kind, exc)
                stop.wait(0.1)
                continue
            if kind == "single":
                with stats.lock:
                    stats.single_latencies_s.append(time.perf_counter() - began)
            ok = sum(1 for r in results if r.ok)
            stats.record(kind, ok, len(results) - ok)

    # (kind, seed, transfers per call, uniform pairs) per thread; daemons, so that a call stuck after an error or
    # Ctrl-C cannot keep the process up
    plan = ([("batched", k, args.batch, False) for k in range(args.senders)]
            + [("single", 1000 + k, 1, False) for k in range(args.callers)]
            + [("cross", 2000 + k, args.cross_batch, True) for k in range(args.cross_senders)])
    threads = [threading.Thread(target=loop, args=job, name=f"{job[0]}-{job[1]}", daemon=True) for job in plan]
    for t in threads:
        t.start()
    return threads


# ---------------------------------------------------------------------------------------------- drawing

@dataclass
class Panel:
    """One dashboard panel: its title, a unit for the y axis and the lines (label -> values); dashed lines are
    the p99 ones (or the received direction), as in the dashboard's overrides."""

    title: str
    unit: str
    lines: Series
    dashed: Callable[[str], bool] = lambda label: False
    empty_note: str = "no data"
    note: str = ""
    stacked: bool = False  # for gauges whose sum means something (leaders add up to the shard count)
    log_y: bool = False  # p50 and p99 differ by one or two orders of magnitude: on a linear axis p50 hugs zero


def _p50_p99(data: Data, name: str, by: Sequence[str] = (), per_node: bool = False,
             scale: float = 1.0) -> Series:
    out: Series = {}
    for q, tag in ((0.5, "p50"), (0.99, "p99")):
        for key, values in data.quantile(q, name, by, per_node=per_node, scale=scale).items():
            out[_label((tag, key))] = values
    return out


def _is_p99(label: str) -> bool:
    return label.startswith("p99")


def _received(label: str) -> bool:
    return label.endswith("received")


def _ticks(label: str) -> bool:
    return label.endswith("ticks")


def _nonzero(series: Series) -> Series:
    """Drop lines that are zero (or missing) throughout: per-shard gauges are zero on followers."""
    return {k: v for k, v in series.items() if any(x and not math.isnan(x) for x in v)}


def build_panels(data: Data) -> list[Panel]:
    """The dashboard's panels, in its order (rows of four here, rows of three in Grafana)."""
    ms, us = 1000.0, 1e6
    nodes = data.nodes
    items_mean = data.ratio(data.rate("tidebank_request_items_total", ("method",)),
                            data.rate("tidebank_request_batch_items_count", ("method",)))
    items = {_label(("mean", k)): v for k, v in items_mean.items()}
    items.update({_label(("p99", k)): v
                  for k, v in data.quantile(0.99, "tidebank_request_batch_items", ("method",)).items()})
    entry_items = {_label(("mean", k)): v for k, v in data.ratio(
        data.rate("tidebank_entry_items_sum", per_node=True),
        data.rate("tidebank_entry_items_count", per_node=True)).items()}
    entry_items.update({_label(("p99", k)): v
                        for k, v in data.quantile(0.99, "tidebank_entry_items", per_node=True).items()})
    apply_us = data.ratio(data.rate("tidebank_apply_seconds_sum", per_node=True),
                          data.rate("tidebank_apply_items_total", per_node=True), scale=us)
    stopped = _by_shard(data.gauge("tidebank_replica_apply_stopped", ("shard",), per_node=True))
    stopped_note = "" if stopped else "series absent: no replica stopped (shown as 0)"
    if not stopped:
        stopped = {node: [0.0] * len(data.t_s) for node in nodes}
    commit = data.gauge("tidebank_replica_commit_index", ("shard",), per_node=True)
    applied = data.gauge("tidebank_replica_applied_index", ("shard",), per_node=True)
    lag = {key: [c - a for c, a in zip(values, applied[key], strict=True)] for key, values in commit.items()
           if key in applied}
    errors = {_label((k, "loop errors")): v for k, v in
              data.rate("tidebank_raft_loop_total", where={"what": "loop_errors"}, per_node=True).items()}
    errors.update({_label((k, "rejected connections")): v for k, v in
                   data.rate("tidebank_raft_rejected_connections_total", per_node=True).items()})
    errors_note = "all zero" if not _nonzero(errors) else ""
    links = data.rate("tidebank_link_events_total", ("event",), per_node=True)
    links_note = "all zero: no link faults injected" if not _nonzero(links) else ""
    return [
        Panel("Requests/s by method and status code", "req/s",
              _nonzero(data.rate("tidebank_requests_total", ("method", "code")))),
        Panel("Request latency p50 / p99 by method", "ms",
              _nonzero(_p50_p99(data, "tidebank_request_latency_seconds", ("method",), scale=ms)), _is_p99, log_y=True),
        Panel("Items per request (mean, p99)", "items", _nonzero(items), _is_p99),
        Panel("Items/s by method (CreateTransfers = transfers/s)", "items/s",
              _nonzero(data.rate("tidebank_request_items_total", ("method",)))),
        Panel("Items per Raft entry (mean, p99) by node", "items", entry_items, _is_p99),
        Panel("Raft entries proposed/s by node and shard", "entries/s",
              _by_shard(_nonzero(data.rate("tidebank_shard_entries_proposed_total", ("shard",), per_node=True)))),
        Panel("Raft commit latency p50 / p99 by node", "ms",
              _p50_p99(data, "tidebank_raft_commit_seconds", per_node=True, scale=ms), _is_p99, log_y=True),
        Panel("Journal fdatasync p50 / p99 by node", "ms",
              _p50_p99(data, "tidebank_raft_journal_sync_seconds", per_node=True, scale=ms), _is_p99, log_y=True),
        Panel("Apply time per entry p50 / p99 by node", "ms",
              _p50_p99(data, "tidebank_apply_seconds", per_node=True, scale=ms), _is_p99, log_y=True),
        Panel("Items applied/s by node", "items/s", data.rate("tidebank_apply_items_total", per_node=True)),
        Panel("Apply µs per item by node", "µs/item", apply_us),
        Panel("Leaders per node (stacked)", "shards", data.gauge("tidebank_replica_is_leader", per_node=True),
              stacked=True),
        Panel("Batcher queue depth by node and shard", "items",
              _by_shard(_nonzero(data.gauge("tidebank_batcher_queued_items", ("shard",), per_node=True))),
              empty_note="always 0: nothing waited for an entry at scrape times"),
        Panel("Batcher entries in flight by node and shard", "entries",
              _by_shard(_nonzero(data.gauge("tidebank_batcher_entries_in_flight", ("shard",), per_node=True)))),
        Panel("2PC groups/s by outcome", "groups/s", _nonzero(data.rate("tidebank_txn_groups_total", ("outcome",))),
              empty_note="no data: no cross-shard groups ran"),
        Panel("Escrow steps/s by kind and outcome", "steps/s",
              data.rate("tidebank_escrow_steps_total", ("kind", "outcome")),
              empty_note="no data: this load runs no escrow"),
        Panel("Raft frames/s by node (received dashed)", "frames/s",
              data.rate("tidebank_raft_frames_total", ("direction",), per_node=True), _received),
        Panel("Raft MB/s by node (received dashed)", "MB/s",
              data.rate("tidebank_raft_bytes_total", ("direction",), per_node=True, scale=1e-6), _received),
        Panel("Link-layer delays and drops/s by node", "events/s", links if _nonzero(links) else
              {node: [0.0] * len(data.t_s) for node in nodes}, note=links_note),
        Panel("Replicas that stopped applying", "replicas", stopped, note=stopped_note),
        Panel("Raft loop turns and ticks/s by node (ticks dashed)", "per s",
              {k: v for k, v in data.rate("tidebank_raft_loop_total", ("what",), per_node=True).items()
               if not k.endswith("loop_errors")}, _ticks),
        Panel("Raft loop errors and rejected connections/s", "per s", errors, note=errors_note),
        Panel("Apply lag (commit - applied index) by node and shard", "entries", _by_shard(_nonzero(lag)),
              empty_note="always 0 at scrape times: every replica applied what it knew committed"),
    ]


# the same thing drawn twice (one colour, solid and dashed): p50/p99, mean/p99, sent/received, turns/ticks
_VARIANTS = ("p50", "p99", "mean", "sent", "received", "turns", "ticks")


def _colour_keys(panel: Panel, nodes: list[str]) -> dict[str, str]:
    """A node keeps its colour in every panel; p50/p99 (or sent/received) of one thing share a colour; other
    lines (by method, by shard, by outcome) take the next colours in order."""
    def base(label: str) -> str:
        return " ".join(w for w in label.split() if w not in _VARIANTS)

    others = sorted({base(label) for label in panel.lines} - set(nodes))
    return {label: PALETTE[nodes.index(base(label)) if base(label) in nodes
                           else (len(nodes) + others.index(base(label))) % len(PALETTE)]
            for label in panel.lines}


def _by_shard(series: Series) -> Series:
    """'dc2-n1 3' -> 'dc2-n1 shard 3'."""
    return {" shard ".join(key.rsplit(" ", 1)) if " " in key else key: values for key, values in series.items()}


def draw(panels: list[Panel], t_s: list[float], nodes: list[str], title: str, out: pathlib.Path,
         columns: int = 4) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(6.4 * columns, 4.1 * rows), facecolor=BACKGROUND,
                             squeeze=False)
    for ax, panel in zip(axes.flat, panels, strict=False):  # the grid's last row may have blanks
        ax.set_facecolor(PANEL)
        for spine in ax.spines.values():
            spine.set_color(GRID)
        ax.tick_params(colors=TEXT, labelsize=8)
        ax.grid(True, color=GRID, linewidth=0.6)
        ax.set_title(panel.title, color=TEXT, fontsize=10, loc="left", fontweight="bold")
        ax.set_ylabel(panel.unit, color=TEXT, fontsize=8)
        ax.set_xlabel("s since load start", color=TEXT, fontsize=8)
        colours = _colour_keys(panel, nodes)
        ordered = sorted(panel.lines.items())
        if panel.stacked and ordered:
            ax.stackplot(t_s, *[[0.0 if math.isnan(v) else v for v in values] for _, values in ordered],
                         labels=[label for label, _ in ordered], colors=[colours[label] for label, _ in ordered],
                         alpha=0.75)
        for label, values in ordered if not panel.stacked else ():
            ax.plot(t_s, values, label=label, color=colours[label], linewidth=1.3,
                    linestyle="--" if panel.dashed(label) else "-")
        if not panel.lines:
            ax.text(0.5, 0.5, panel.empty_note, transform=ax.transAxes, ha="center", va="center", color=TEXT,
                    fontsize=10)
            ax.set_xlim(min(t_s, default=0), max(t_s, default=1))
        else:
            # headroom above the lines for the legend, as many rows as it needs
            ncol = 1 if len(panel.lines) <= 3 else 2 if len(panel.lines) <= 8 else 3
            legend_rows = math.ceil(len(panel.lines) / ncol)
            headroom = 1.08 + 0.085 * legend_rows
            finite = [v for values in panel.lines.values() for v in values if not math.isnan(v)]
            if panel.log_y and any(v > 0 for v in finite):
                low = math.log10(min(v for v in finite if v > 0) / 1.5)
                high = math.log10(max(finite))
                ax.set_yscale("log")
                ax.set_ylim(10 ** low, 10 ** (low + max(high - low, 1.0) * headroom))
                ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
                ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                ax.yaxis.set_minor_formatter(NullFormatter())
            else:
                stacked_tops = [sum(0.0 if math.isnan(v) else v for v in column)
                                for column in zip(*panel.lines.values(), strict=True)]
                top = max(stacked_tops if panel.stacked else finite, default=0.0)
                ax.set_ylim(0, top * headroom if top > 0 else 1.0)
            legend = ax.legend(fontsize=7, loc="upper left", ncol=ncol, facecolor=PANEL, edgecolor=GRID,
                               labelcolor=TEXT, framealpha=0.85)
            legend.set_zorder(5)
        if panel.note:
            ax.text(0.99, 0.03, panel.note, transform=ax.transAxes, ha="right", va="bottom", color=TEXT,
                    fontsize=8, style="italic")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(title, color=TEXT, fontsize=13, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.975))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90, facecolor=BACKGROUND)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- main

def _mean(values: Iterable[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return statistics.fmean(finite) if finite else math.nan


def summarize(data: Data, stats: LoadStats, load_s: float) -> dict[str, float]:
    """Client-side transfers/s, and from the scrapes: CreateTransfers p99 over the run, mean fdatasync p50."""
    summary = {f"{kind}_transfers_per_s": stats.ok[kind] / load_s for kind in ("batched", "single", "cross")}
    summary["transfers_per_s"] = sum(stats.ok.values()) / load_s
    whole = Data([data.rounds[0], data.rounds[-1]], data.nodes)  # one interval: the whole run
    p99 = whole.quantile(0.99, "tidebank_request_latency_seconds", where={"method": "CreateTransfers"})
    summary["create_transfers_p99_ms"] = 1000 * next(iter(p99.values()), [math.nan])[0]
    p50s = data.quantile(0.5, "tidebank_raft_journal_sync_seconds", per_node=True)
    summary["fdatasync_p50_ms_mean"] = 1000 * _mean(v for values in p50s.values() for v in values)
    if stats.single_latencies_s:
        ordered = sorted(stats.single_latencies_s)
        summary["single_client_p99_ms"] = 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration-s", type=float, default=60.0, help="how long the load runs")
    parser.add_argument("--interval-s", type=float, default=2.0, help="scrape interval")
    parser.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1_000, help="transfers per batched same-shard call")
    parser.add_argument("--senders", type=int, default=2, help="batched same-shard senders")
    parser.add_argument("--callers", type=int, default=4, help="callers sending one transfer at a time")
    parser.add_argument("--cross-senders", type=int, default=1, help="senders of uniform (mostly cross-shard) pairs")
    parser.add_argument("--cross-batch", type=int, default=100, help="transfers per cross-shard call")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="tidebank-dash-") as directory:
        cluster = LocalCluster.create(directory, dcs=3, nodes_per_dc=1, shards=args.shards)
        stop = threading.Event()
        threads: list[threading.Thread] = []
        clients: dict[str, Client] = {}
        scraper: Scraper | None = None
        try:
            cluster.start()
            cluster.wait_ready(timeout_s=120)
            nodes = cluster.topology.node_names
            urls = {n.name: f"http://{n.grpc_host}:{n.metrics_port}/metrics" for n in cluster.topology.nodes}
            if not all(n.metrics_port for n in cluster.topology.nodes):
                raise SystemExit("the cluster's topology has nodes without a metrics_port")
            clients = {kind: Client(cluster.endpoints, tls=cluster.client_tls(),
                                    timeout_s=60.0) for kind in ("setup", "batched", "single",
                                                                                     "cross")}
            shard_of = bench_transfers.shard_table(clients["setup"])
            by_shard = bench_transfers.create_accounts(clients["setup"], args.accounts, shard_of)
            print(f"{args.accounts} accounts created; load for {args.duration_s:.0f} s, scrapes every "
                  f"{args.interval_s:g} s", file=sys.stderr)
            stats = LoadStats()
            started = time.monotonic()
            scraper = Scraper(urls, args.interval_s, started)
            scraper.scrape_once()  # the baseline, before any load
            threads = run_load(clients, by_shard, bench_transfers.Ids(), args, stop, stats)
            scraper.start()
            stop.wait(args.duration_s)
            stop.set()
            for t in threads:
                t.join()
            load_s = time.monotonic() - started
            scraper.stop()
            plotted = list(scraper.rounds)
            scraper.scrape_once()  # the tail after the load threads finished: counted in the summary, not drawn
            rounds = scraper.rounds
        finally:
            stop.set()
            deadline = time.monotonic() + 10.0  # already joined unless the run failed or was interrupted
            for t in threads:
                t.join(max(0.0, deadline - time.monotonic()))
            if scraper is not None:
                scraper.stop()
            for client in clients.values():
                client.close()
            cluster.stop()

    summary = summarize(Data(rounds, nodes), stats, load_s)
    data = Data(plotted, nodes)
    title = (f"tidebank, 3 DCs x 1 node, {args.shards} shards, {args.accounts:,} accounts: {args.senders} batched "
             f"senders x {args.batch}, {args.callers} single callers, {args.cross_senders} cross-shard sender(s) x "
             f"{args.cross_batch}; {load_s:.0f} s, scraped every {args.interval_s:g} s  |  "
             f"{summary['transfers_per_s']:,.0f} transfers/s, CreateTransfers p99 "
             f"{summary['create_transfers_p99_ms']:.1f} ms, fdatasync p50 {summary['fdatasync_p50_ms_mean']:.2f} ms")
    draw(build_panels(data), data.t_s, nodes, title, args.out)
    print(f"transfers/s (client, ok): {summary['transfers_per_s']:,.0f} "
          f"(batched {summary['batched_transfers_per_s']:,.0f}, single {summary['single_transfers_per_s']:,.0f}, "
          f"cross {summary['cross_transfers_per_s']:,.0f})")
    print(f"request latency p99, CreateTransfers, all nodes, whole run (histogram): "
          f"{summary['create_transfers_p99_ms']:.1f} ms"
          + (f"; single callers at the client: {summary['single_client_p99_ms']:.1f} ms"
             if "single_client_p99_ms" in summary else ""))
    print(f"journal fdatasync p50, mean over nodes and intervals: {summary['fdatasync_p50_ms_mean']:.2f} ms")
    failed = {k: v for k, v in stats.failed.items() if v}
    if failed or stats.errors or scraper.failures:
        print(f"failed results {dict(failed)}, request errors {dict(stats.errors)} (first: {stats.first_error}), "
              f"scrape failures {scraper.failures}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # the cluster was stopped on the way out
        print("interrupted: cluster stopped, nothing drawn", file=sys.stderr)
        sys.exit(130)

"""Prometheus metrics per node: the same CPU and latency budget as bench/RESULTS.md, in production.

What each layer reports (the layers stay apart: they only call the small hooks below):

* servicers (`instrument`): requests by method and gRPC status code, latency, items per request;
* batcher: entries proposed, items per entry, commit latency (proposed -> applied), queue depth and
  entries in flight per shard;
* shard host: apply time per entry and items applied (their ratio is the apply cost per item);
* Raft loop: journal fdatasync time per turn, turns, ticks, frames and bytes each way, link-layer
  (simulated DC) drops and delays;
* 2PC coordinator: groups by outcome (committed, aborted, busy, not applied, unknown);
* escrow: steps by kind and outcome.
"""

from __future__ import annotations

import functools
import time

import grpc
from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

# Finer between 100 ms and 2.5 s, where a loaded cluster's tails live.
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.35, 0.5, 0.75, 1,
                    1.5, 2, 2.5, 5, 10)
_SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000)

REQUESTS = Counter("tidebank_requests_total", "gRPC requests handled, by method and status code",
                   ["method", "code"])
ITEMS = Counter("tidebank_request_items_total", "items in batch requests", ["method"])
LATENCY = Histogram("tidebank_request_latency_seconds", "gRPC request latency, by method", ["method"],
                    buckets=_LATENCY_BUCKETS)
REQUEST_ITEMS = Histogram("tidebank_request_batch_items", "items per batch request", ["method"],
                          buckets=_SIZE_BUCKETS)

ENTRY_ITEMS = Histogram("tidebank_entry_items", "items per Raft entry proposed by this node", buckets=_SIZE_BUCKETS)
COMMIT_SECONDS = Histogram("tidebank_raft_commit_seconds", "a proposed entry's wait until it was applied here",
                           buckets=_LATENCY_BUCKETS)
APPLY_SECONDS = Histogram("tidebank_apply_seconds", "applying one Raft entry through the state machine",
                          buckets=(0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5))
APPLY_ITEMS = Counter("tidebank_apply_items_total", "items applied through the state machine (all replicas here)")
RAFT_SYNC_SECONDS = Histogram("tidebank_raft_journal_sync_seconds",
                              "fdatasync of the journals written in one Raft loop turn (in parallel)",
                              buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5))
PERMISSION_DENIED = Counter("tidebank_permission_denied_total",
                            "calls refused for a missing permission, by permission", ["permission"])
QUOTA_REFUSED = Counter("tidebank_quota_refused_total", "calls refused for a principal's quota, by limit",
                        ["limit"])
APPLY_STOPPED = Gauge("tidebank_replica_apply_stopped",
                      "1 if this replica stopped applying on a storage error (it will not campaign or lead)",
                      ["shard"])
TXN_GROUPS = Counter("tidebank_txn_groups_total", "cross-shard groups run by this node's coordinator, by outcome",
                     ["outcome"])
ESCROW_STEPS = Counter("tidebank_escrow_steps_total", "escrow steps run here, by kind and outcome",
                       ["kind", "outcome"])

LEDGER_BATCH_FIELDS = {"CreateAccounts": "accounts", "CreateTransfers": "transfers", "LookupAccounts": "ids",
                       "LookupTransfers": "ids", "GetAccountTransfers": None}
ESCROW_BATCH_FIELDS = {"CreateTrades": "trades", "ShipTrades": "trades", "ConfirmTrades": "trades",
                       "RefundTrades": "refunds", "OpenDisputes": "trades", "WithdrawDisputes": "trades",
                       "ResolveDisputes": "resolutions", "ExtendTrades": "extensions", "LookupTrades": "ids",
                       "ListTrades": None}
# ExportStatement streams: it is not wrapped (its items are counted by the client)
CLEARING_BATCH_FIELDS = {"RegisterParticipants": "participants", "UpdateParticipants": "updates",
                         "LookupParticipants": "ids", "ListParticipants": None, "SubmitItems": "items",
                         "LookupItems": "ids", "ListWindows": None, "GetWindow": None, "CloseWindow": None,
                         "SettleWindow": None, "UnwindParticipant": None, "AbortWindow": None}
_PACKED_SIZES = {"transfers": 128, "accounts": 96}


def _items_of(request, field: str) -> int:
    packed = getattr(request, f"{field}_packed", b"") if field in _PACKED_SIZES else b""
    return len(packed) // _PACKED_SIZES[field] if packed else len(getattr(request, field))


def instrument(servicer, batch_fields: dict[str, str | None] = LEDGER_BATCH_FIELDS):
    """Wrap the servicer's RPC methods (name -> the request's batch field, or None) with counters by status code,
    a latency histogram and the batch size."""
    from tidebank.node.api.errors import RequestError, code_name

    for method, field in batch_fields.items():
        original = getattr(servicer, method)

        @functools.wraps(original)
        def wrapped(request, context, _original=original, _method=method, _field=field):
            started = time.perf_counter()
            code = "UNKNOWN"
            try:
                response = _original(request, context)
                code = "OK"
                return response
            except RequestError as exc:
                code = code_name(exc.status.code)
                raise
            except grpc.RpcError as exc:
                code = getattr(exc.code(), "name", "UNKNOWN") if hasattr(exc, "code") else "UNKNOWN"
                raise
            finally:
                LATENCY.labels(_method).observe(time.perf_counter() - started)
                REQUESTS.labels(_method, code).inc()
                if _field:
                    n = _items_of(request, _field)
                    ITEMS.labels(_method).inc(n)
                    REQUEST_ITEMS.labels(_method).observe(n)

        setattr(servicer, method, wrapped)
    return servicer


class _NodeCollector:
    """Read at each scrape: replica state, batcher queues, Raft loop counters."""

    def __init__(self, node):
        self.node = node

    def collect(self):
        role = GaugeMetricFamily("tidebank_replica_is_leader", "1 if this replica leads its shard", labels=["shard"])
        commit = GaugeMetricFamily("tidebank_replica_commit_index", "Raft commit index", labels=["shard"])
        applied = GaugeMetricFamily("tidebank_replica_applied_index", "Raft applied index", labels=["shard"])
        entries = CounterMetricFamily("tidebank_shard_entries_proposed", "Raft entries proposed by this node",
                                      labels=["shard"])
        queued = GaugeMetricFamily("tidebank_batcher_queued_items", "items waiting for the next entry",
                                   labels=["shard"])
        in_flight = GaugeMetricFamily("tidebank_batcher_entries_in_flight", "entries proposed, not yet applied",
                                      labels=["shard"])
        for shard_id, host in self.node.shards.items():
            status = host.status()
            label = [str(shard_id)]
            role.add_metric(label, 1.0 if status["role"] == "leader" else 0.0)
            commit.add_metric(label, status["commit_index"])
            applied.add_metric(label, status["applied_index"])
            entries.add_metric(label, host.batcher.entries_submitted)
            queued.add_metric(label, host.batcher.queued_items)
            in_flight.add_metric(label, host.batcher.entries_in_flight)
        yield from (role, commit, applied, entries, queued, in_flight)
        raft = getattr(self.node, "raft", None)
        if raft is None:
            return
        stats = raft.status()
        loop = CounterMetricFamily("tidebank_raft_loop", "turns and ticks of the node's Raft loop", labels=["what"])
        frames = CounterMetricFamily("tidebank_raft_frames", "Raft frames between nodes", labels=["direction"])
        data = CounterMetricFamily("tidebank_raft_bytes", "Raft bytes between nodes", labels=["direction"])
        links = CounterMetricFamily("tidebank_link_events", "simulated inter-DC link: frames delayed or dropped",
                                    labels=["event"])
        for what in ("turns", "ticks", "loop_errors"):
            loop.add_metric([what], stats.get(what, 0))
        for direction in ("sent", "received"):
            frames.add_metric([direction], stats.get(f"frames_{direction}", 0))
            data.add_metric([direction], stats.get(f"bytes_{direction}", 0))
        for event in ("delayed", "dropped_cut", "dropped_incoming", "dropped_overflow"):
            links.add_metric([event], stats.get(f"link_{event}", 0))
        rejected = CounterMetricFamily("tidebank_raft_rejected_connections",
                                       "Raft connections refused (bad handshake, MAC or framing)")
        rejected.add_metric([], stats.get("rejected_connections", 0))
        yield from (loop, frames, data, links, rejected)


def start(node, spec) -> None:
    if not spec.metrics_port:
        return
    REGISTRY.register(_NodeCollector(node))
    host = spec.grpc_address.rsplit(":", 1)[0]
    start_http_server(spec.metrics_port, addr=host)

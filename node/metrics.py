"""Prometheus metrics per node: request counts and latency, per-item results, replica state."""

from __future__ import annotations

import functools
import time

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

REQUESTS = Counter("tidebank_requests_total", "gRPC requests handled", ["method", "outcome"])
ITEMS = Counter("tidebank_request_items_total", "items in batch requests", ["method"])
LATENCY = Histogram("tidebank_request_latency_seconds", "gRPC request latency", ["method"],
                    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10))

RAFT_SYNC_SECONDS = Histogram("tidebank_raft_journal_sync_seconds",
                              "fdatasync of the journals written in one Raft loop turn (in parallel)",
                              buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5))
APPLY_STOPPED = Gauge("tidebank_replica_apply_stopped",
                      "1 if this replica stopped applying on a storage error (it will not campaign or lead)",
                      ["shard"])

LEDGER_BATCH_FIELDS = {"CreateAccounts": "accounts", "CreateTransfers": "transfers", "LookupAccounts": "ids",
                       "LookupTransfers": "ids", "GetAccountTransfers": None}
ESCROW_BATCH_FIELDS = {"CreateTrades": "trades", "ShipTrades": "trades", "ConfirmTrades": "trades",
                       "RefundTrades": "refunds", "OpenDisputes": "trades", "WithdrawDisputes": "trades",
                       "ResolveDisputes": "resolutions", "ExtendTrades": "extensions", "LookupTrades": "ids",
                       "ListTrades": None}


def instrument(servicer, batch_fields: dict[str, str | None] = LEDGER_BATCH_FIELDS):
    """Wrap the servicer's RPC methods (name -> the request's batch field, or None) with counters and a
    latency histogram."""
    for method, field in batch_fields.items():
        original = getattr(servicer, method)

        @functools.wraps(original)
        def wrapped(request, context, _original=original, _method=method, _field=field):
            started = time.perf_counter()
            outcome = "error"
            try:
                response = _original(request, context)
                outcome = "ok"
                return response
            finally:
                LATENCY.labels(_method).observe(time.perf_counter() - started)
                REQUESTS.labels(_method, outcome).inc()
                if _field:
                    ITEMS.labels(_method).inc(len(getattr(request, _field)))

        setattr(servicer, method, wrapped)
    return servicer


class _ReplicaCollector:
    def __init__(self, node):
        self.node = node

    def collect(self):
        role = GaugeMetricFamily("tidebank_replica_is_leader", "1 if this replica leads its shard", labels=["shard"])
        commit = GaugeMetricFamily("tidebank_replica_commit_index", "Raft commit index", labels=["shard"])
        applied = GaugeMetricFamily("tidebank_replica_applied_index", "Raft applied index", labels=["shard"])
        entries = GaugeMetricFamily("tidebank_shard_entries_submitted", "Raft entries proposed by this node",
                                    labels=["shard"])
        raft = getattr(self.node, "raft", None)
        if raft is not None:
            loop = GaugeMetricFamily("tidebank_raft_loop", "Raft loop counters (turns, ticks, frames, bytes)",
                                     labels=["counter"])
            for name, value in raft.status().items():
                if isinstance(value, int):
                    loop.add_metric([name], value)
            yield loop
        for shard_id, host in self.node.shards.items():
            status = host.status()
            label = [str(shard_id)]
            role.add_metric(label, 1.0 if status["role"] == "leader" else 0.0)
            commit.add_metric(label, status["commit_index"])
            applied.add_metric(label, status["applied_index"])
            entries.add_metric(label, host.batcher.entries_submitted)
        yield from (role, commit, applied, entries)


def start(node, spec) -> None:
    if not spec.metrics_port:
        return
    REGISTRY.register(_ReplicaCollector(node))
    host = spec.grpc_address.rsplit(":", 1)[0]
    start_http_server(spec.metrics_port, addr=host)

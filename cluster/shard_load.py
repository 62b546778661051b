"""How much each shard holds and how busy it is, measured from its replicas' status (`tidebank shard load`).

Size is what a replica reports holding (accounts and transfer records, counted by LMDB, no scan).
Load is items applied per second between two polls `sample_s` apart: every replica of a shard
applies the same entries, so any replica that answered both polls gives the shard's rate (the
highest is taken: a replica that restarted between the polls counts from zero and reads low).
The balancer (tidebank.cluster.balancer) plans slot moves from these numbers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from tidebank.cluster.balancer import ShardLoad
from tidebank.cluster.launcher import ChannelPool, poll_nodes
from tidebank.v1 import admin_pb2

SAMPLE_S_MAX = 60.0


@dataclass(frozen=True)
class MeasuredShard:
    shard_id: int
    slots: tuple[int, ...]
    accounts: int | None  # None: no replica of the shard answered
    transfers: int | None
    items_per_s: float | None  # None: no replica answered both polls

    @property
    def measured(self) -> bool:
        return self.accounts is not None and self.items_per_s is not None

    def to_load(self) -> ShardLoad:
        return ShardLoad(self.shard_id, self.slots, accounts=self.accounts or 0, items_per_s=self.items_per_s or 0.0)

    def to_dict(self) -> dict:
        return {**asdict(self), "slots": len(self.slots)}


def _slots(shard: admin_pb2.ShardMap.Shard) -> tuple[int, ...]:
    return tuple(slot for r in shard.slots for slot in range(r.start, r.end))


def _replicas_of(statuses: dict[str, admin_pb2.NodeStatus | None], shard_id: int) -> dict[str, admin_pb2.ReplicaStatus]:
    out = {}
    for address, status in statuses.items():
        if status is None:
            continue
        replica = next((r for r in status.replicas if r.shard_id == shard_id), None)
        if replica is not None:
            out[address] = replica
    return out


def measure_shards(shard_map: admin_pb2.ShardMap, sample_s: float, timeout_s: float = 2.0,
                   pool: ChannelPool | None = None, *, sleep: Callable[[float], None] = time.sleep
                   ) -> list[MeasuredShard]:
    """Every shard of the map, with its size and its load over `sample_s` seconds."""
    if not 0 < sample_s <= SAMPLE_S_MAX:
        raise ValueError(f"sample_s must be in (0, {SAMPLE_S_MAX:g}], not {sample_s}")
    addresses = sorted({r.address for s in shard_map.shards for r in s.replicas})
    first_at = time.monotonic()
    first = poll_nodes(addresses, timeout_s, pool)
    sleep(sample_s)
    second_at = time.monotonic()
    second = poll_nodes(addresses, timeout_s, pool)
    elapsed_s = max(second_at - first_at, 1e-6)
    measured = []
    for shard in sorted(shard_map.shards, key=lambda s: s.shard_id):
        before, after = _replicas_of(first, shard.shard_id), _replicas_of(second, shard.shard_id)
        rates = [max(0, after[a].items_applied - before[a].items_applied) / elapsed_s
                 for a in after if a in before]
        answered = list(after.values()) or list(before.values())
        measured.append(MeasuredShard(
            shard.shard_id, _slots(shard),
            accounts=max((r.accounts for r in answered), default=None),
            transfers=max((r.transfers for r in answered), default=None),
            items_per_s=round(max(rates), 1) if rates else None))
    return measured

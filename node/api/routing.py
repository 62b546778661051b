"""Which shard holds a key, and how a client batch splits into per-shard batches.

Keys hash to slots (`tidebank.common.keys.slot_of`); a versioned shard map assigns slot
ranges to shards. A batch is split by the shard of each item's routing key
(account id; a transfer's debit account id) keeping every linked chain whole.
A transfer chain whose accounts or ids span shards becomes a cross-shard group, run by
the coordinator (two-phase commit). Items that cannot be placed get their result
code here and never reach a state machine, so nothing is ever applied half.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tidebank.common.keys import slot_of
from tidebank.common.records import (
    ACCOUNT_FLAGS_OFFSET,
    ACCOUNT_ID,
    TRANSFER_CREDIT_ACCOUNT_ID,
    TRANSFER_DEBIT_ACCOUNT_ID,
    TRANSFER_FLAGS_OFFSET,
    TRANSFER_ID,
    flags_of,
    slot_of_field,
)
from tidebank.node.ledger.operations import PackedRecords
from tidebank.node.ledger.records import Account, AccountFlags, Transfer, TransferFlags, unpack_transfer
from tidebank.node.ledger.results import CreateAccountResult, CreateTransferResult


class ShardMap:
    """Slot ranges per shard, with a version that grows whenever slots move."""

    def __init__(self, version: int, slot_count: int, slot_ranges: dict[int, Sequence[tuple[int, int]]]):
        self.version = version
        self.slot_count = slot_count
        self.slot_ranges = {shard: tuple(ranges) for shard, ranges in slot_ranges.items()}
        owner = [-1] * slot_count
        for shard, ranges in self.slot_ranges.items():
            for start, end in ranges:
                for slot in range(start, end):
                    if owner[slot] != -1:
                        raise ValueError(f"slot {slot} is assigned to shards {owner[slot]} and {shard}")
                    owner[slot] = shard
        missing = [slot for slot, shard in enumerate(owner) if shard == -1]
        if missing:
            raise ValueError(f"{len(missing)} slots have no shard (first: {missing[0]})")
        self._owner = owner

    def shard_of(self, key_id: int) -> int:
        return self._owner[slot_of(key_id, self.slot_count)]

    def owner_of_slot(self, slot: int) -> int:
        return self._owner[slot]

    @property
    def shard_ids(self) -> list[int]:
        return sorted(self.slot_ranges)


@dataclass
class SubBatch:
    """The items of one request that go to one shard, with their request positions."""

    shard_id: int
    positions: list[int] = field(default_factory=list)
    items: list = field(default_factory=list)


@dataclass
class CrossShardGroup:
    """A transfer or linked chain touching several shards; its coordinator is its first debit's shard."""

    coordinator_shard: int
    positions: list[int]
    items: list


@dataclass
class RoutedBatch:
    size: int
    sub_batches: dict[int, SubBatch]
    codes: dict[int, int]  # request position -> result code decided by routing
    groups: list[CrossShardGroup] = field(default_factory=list)

    def merge(self, shard_codes: dict[int, Sequence[int]], group_codes: Sequence[Sequence[int]] = ()) -> list[int]:
        """Per-item codes in request order, from each shard's codes for its sub-batch and each group's codes."""
        merged = [-1] * self.size
        assert len(group_codes) == len(self.groups), "a cross-shard group got no answer"
        for group, codes in zip(self.groups, group_codes, strict=True):
            assert len(codes) == len(group.positions)
            for position, code in zip(group.positions, codes, strict=True):
                merged[position] = code
        for position, code in self.codes.items():
            merged[position] = code
        for shard_id, codes in shard_codes.items():
            sub = self.sub_batches[shard_id]
            assert len(codes) == len(sub.positions), "a shard answered a different number of items"
            for position, code in zip(sub.positions, codes, strict=True):
                merged[position] = code
        assert all(code >= 0 for code in merged), "an item got no result"
        return merged


def chains(flags: Sequence[int], linked_bit: int) -> list[range]:
    """Position ranges of linked chains; a lone item is a chain of one."""
    spans, start = [], 0
    for position, item_flags in enumerate(flags):
        if not item_flags & linked_bit:
            spans.append(range(start, position + 1))
            start = position + 1
    if start < len(flags):
        spans.append(range(start, len(flags)))  # left open: the state machine reports it
    return spans


def _route(items: Sequence, place: Callable[[int], tuple[int | None, int | None, tuple]],
           linked_bit: int, linked_event_failed: int, spans_shards: int | None,
           flags: Sequence[int] | None = None, sub_items: Callable[[], list] = list,
           group_item: Callable[[object], object] = lambda item: item) -> RoutedBatch:
    """Place every chain; `place(position)` gives (routing shard, code or None, other shards touched).

    With `spans_shards` None, chains over several shards become cross-shard groups; otherwise they fail
    with that code. `flags` (default: each item's .flags) finds the chains; `sub_items()` makes a sub-batch's
    item list (a PackedRecords for records still in binary form); `group_item` turns an item into what a
    cross-shard group holds (a Transfer)."""
    routed = RoutedBatch(size=len(items), sub_batches={}, codes={})
    for span in chains([item.flags for item in items] if flags is None else flags, linked_bit):
        chain_shard, failure, touched = None, None, set()
        for position in span:
            shard, code, others = place(position)
            if code is None and spans_shards is not None and chain_shard is not None and shard != chain_shard:
                code = spans_shards
            if code is not None:
                failure = (position, code)
                break
            chain_shard = shard if chain_shard is None else chain_shard
            touched.add(shard)
            touched.update(others)
        if failure is not None:
            for position in span:
                routed.codes[position] = failure[1] if position == failure[0] else linked_event_failed
            continue
        if len(touched) > 1:
            routed.groups.append(CrossShardGroup(chain_shard, list(span), [group_item(items[p]) for p in span]))
            continue
        sub = routed.sub_batches.get(chain_shard)
        if sub is None:
            sub = routed.sub_batches[chain_shard] = SubBatch(chain_shard, items=sub_items())
        for position in span:
            sub.positions.append(position)
            sub.items.append(items[position])
    return routed


def route_accounts(accounts: Sequence[Account], shard_map: ShardMap) -> RoutedBatch:
    def place(position: int) -> tuple[int, None, tuple]:
        return shard_map.shard_of(accounts[position].id), None, ()

    return _route(accounts, place, AccountFlags.LINKED, CreateAccountResult.linked_event_failed,
                  CreateAccountResult.chain_spans_shards)


_CLOSES_PENDING = TransferFlags.POST_PENDING_TRANSFER | TransferFlags.VOID_PENDING_TRANSFER
_ZERO_ID = bytes(16)


def route_transfers(transfers: Sequence[Transfer], shard_map: ShardMap) -> RoutedBatch:
    """A transfer lives on its debit account's shard (and, when they differ, on its credit account's too); its id
    lives on the shard of its own slot (its home), which answers for the id ledger-wide. When the three are one
    shard it runs there; otherwise it is a cross-shard group. Clients that make ids in their debit account's
    slot (`tidebank.client.new_id(near=...)`) keep same-shard transfers on one shard."""

    def place(position: int) -> tuple[int | None, int | None, tuple]:
        transfer = transfers[position]
        if transfer.debit_account_id == 0 and transfer.flags & _CLOSES_PENDING:
            # The debit account is the routing key, so a post or void must name it.
            return None, CreateTransferResult.debit_account_id_must_not_be_zero, ()
        shard = shard_map.shard_of(transfer.debit_account_id)
        home = shard_map.shard_of(transfer.id)
        if transfer.credit_account_id:
            return shard, None, (shard_map.shard_of(transfer.credit_account_id), home)
        return shard, None, (home,)

    return _route(transfers, place, TransferFlags.LINKED, CreateTransferResult.linked_event_failed, None)


def split_records(raw: bytes, size: int) -> list[bytes]:
    """The records of a packed field, or ValueError if its length is not a multiple of the record size."""
    if len(raw) % size:
        raise ValueError(f"{len(raw)} bytes is not a whole number of {size}-byte records")
    return [raw[i:i + size] for i in range(0, len(raw), size)]


def route_packed_accounts(records: Sequence[bytes], shard_map: ShardMap) -> RoutedBatch:
    """route_accounts for accounts in binary form: sub-batches keep the records as they are."""
    count = shard_map.slot_count
    owner = shard_map.owner_of_slot

    def place(position: int) -> tuple[int, None, tuple]:
        return owner(slot_of_field(records[position][ACCOUNT_ID], count)), None, ()

    return _route(records, place, AccountFlags.LINKED, CreateAccountResult.linked_event_failed,
                  CreateAccountResult.chain_spans_shards, flags=[flags_of(r, ACCOUNT_FLAGS_OFFSET) for r in records],
                  sub_items=PackedRecords)


def route_packed_transfers(records: Sequence[bytes], shard_map: ShardMap) -> RoutedBatch:
    """route_transfers for transfers in binary form: the three ids are read from each record (no Transfer is
    made unless the transfer joins a cross-shard group), and sub-batches keep the records as they are."""
    count = shard_map.slot_count
    owner = shard_map.owner_of_slot
    closes_pending = int(_CLOSES_PENDING)
    flags = [flags_of(r, TRANSFER_FLAGS_OFFSET) for r in records]

    def place(position: int) -> tuple[int | None, int | None, tuple]:
        record = records[position]
        debit = record[TRANSFER_DEBIT_ACCOUNT_ID]
        if flags[position] & closes_pending and debit == _ZERO_ID:
            return None, CreateTransferResult.debit_account_id_must_not_be_zero, ()
        shard = owner(slot_of_field(debit, count))
        home = owner(slot_of_field(record[TRANSFER_ID], count))
        credit = record[TRANSFER_CREDIT_ACCOUNT_ID]
        if credit != _ZERO_ID:
            return shard, None, (owner(slot_of_field(credit, count)), home)
        return shard, None, (home,)

    return _route(records, place, TransferFlags.LINKED, CreateTransferResult.linked_event_failed, None,
                  flags=flags, sub_items=PackedRecords, group_item=unpack_transfer)

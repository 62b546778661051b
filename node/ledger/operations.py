"""The operations a Raft entry carries: what kind of items, and the items.

The entry codec (entry.py), the state machine, the batcher and the shard executor
all speak in operations; this module is the one place that names their kinds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

OP_CREATE_ACCOUNTS = 1  # items: Account -> CreateAccountResult code
OP_CREATE_TRANSFERS = 2  # items: Transfer -> CreateTransferResult code
OP_PREPARE = 3  # items: Prepare -> Vote
OP_FINISH = 4  # items: Finish -> FINISH_* int
OP_DECIDE = 5  # items: Decide -> Decision
# items: Prepare -> Vote. A group whose only participant is its coordinator shard (an escrow step that
# touches no other shard): PREPARE and FINISH(commit) in one entry, no DECIDE. A NO vote is recorded
# like a PREPARE's (replayed for the same txid); a busy NO (code 0) records nothing.
OP_COMMIT_LOCAL = 6
OP_CLEARING_ITEMS = 7  # items: ClearingItem -> ClearingItemResult code (or ITEM_ALLOWANCE_LOW)
OP_CLEARING = 8  # items: ClearingCommand -> a small value (see node/ledger/clearing.py), None if it failed
OP_CREATE_OWNED_ACCOUNTS = 9  # items: OwnedAccount -> CreateAccountResult code (the owner kept with the account)
OP_SLOT_MOVES = 10  # items: SlotMoveCommand -> SlotMoveResult code, None if it failed (node/ledger/slot_moves.py)

KINDS = (OP_CREATE_ACCOUNTS, OP_CREATE_TRANSFERS, OP_PREPARE, OP_FINISH, OP_DECIDE, OP_COMMIT_LOCAL,
         OP_CLEARING_ITEMS, OP_CLEARING, OP_CREATE_OWNED_ACCOUNTS, OP_SLOT_MOVES)
TXN_KINDS = (OP_PREPARE, OP_FINISH, OP_DECIDE, OP_COMMIT_LOCAL)


class PackedRecords(list):
    """The items of an OP_CREATE_ACCOUNTS / OP_CREATE_TRANSFERS operation still in their binary form (one bytes
    object per record, tidebank.common.records): a request that arrived packed goes into the Raft entry as it
    came, without being unpacked and packed again on the leader."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Operation:
    """One batch inside a Raft entry: all items of one kind."""

    kind: int
    items: Sequence[Any]

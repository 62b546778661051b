"""Limits of the public API that nodes, clients and tools must agree on.

One place for each number: a node refuses what exceeds them with INVALID_ARGUMENT,
a client checks them before sending, tools cut their batches by them.
"""

from __future__ import annotations

#: Items (accounts, transfers, trade steps, clearing items, ids to look up) per request.
#: TigerBeetle's batch size: a request of this many 128-byte records fits in 1 MiB.
BATCH_ITEMS_MAX = 8189

#: Records per page of a paged read (account transfers, trades).
PAGE_SIZE_MAX = 8189

#: Default page size when a request leaves it at 0.
PAGE_SIZE_DEFAULT = 100

#: Participants per RegisterParticipants / UpdateParticipants request.
PARTICIPANTS_PER_REQUEST_MAX = 1024

#: Clearing participants per ledger (counted on the ledger's home shard): beyond it RegisterParticipants answers
#: participants_limit_reached. It bounds a window's netting and its settlement chain (one transfer per
#: participant, at most BATCH_ITEMS_MAX per chain).
PARTICIPANTS_PER_LEDGER_MAX = 4096

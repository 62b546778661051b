"""tidebank: a sharded, Raft-replicated ledger database for payment platforms.

This root package holds what both sides of the wire share: the generated API
(`tidebank.v1`) and the key-to-slot hash (`tidebank.keys`).
"""

__version__ = "0.1.0"

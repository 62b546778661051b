"""tidebank: a sharded, Raft-replicated ledger database for payment platforms.

The root package holds the generated API (`tidebank.v1`, beside its .proto files);
what nodes and clients share otherwise is in `tidebank.common`.
"""

__version__ = "0.1.0"

"""What nodes, clients and tools share: key hashing, limits, signatures, the topology file."""

"""The bytes between the Raft loops of two nodes: authenticated frames of coalesced messages, no pickle.

pysyncobj's own transport pickles every message (any host that reaches a Raft port
can execute code without a password) and encrypts each one with Fernet. Here:

* one TCP connection per peer and direction carries the messages of every shard;
  the messages queued for a peer during one loop iteration go out as one frame;
* a frame is ``u32 length | 16-byte MAC | payload``; the payload is msgpack of
  ``[[shard_id, message], ...]`` (pysyncobj's message dicts: ints, bytes, strings,
  lists), which decoding can never turn into code;
* the MAC is keyed BLAKE2b under a per-connection session key, over the frame's
  sequence number and payload: a frame from anyone without the cluster secret, or a
  replayed, reordered or altered frame, fails and closes the connection before
  anything is decoded. The traffic is not encrypted (the cluster's own network is
  private; TLS can wrap the connection where it is not).

Handshake (connector C, acceptor A): A sends ``MAGIC | nonce_a``; C answers
``len(name) | name | nonce_c | MAC(secret; "hello", nonce_a, nonce_c, name)``. Both
derive the session key from the secret, both nonces and C's name, so a recorded
connection cannot be replayed to a new acceptor.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct

import msgpack

MAGIC = b"TBRAFT01"
NONCE_SIZE = 16
MAC_SIZE = 16
KEY_SIZE = 32
NAME_BYTES_MAX = 255
FRAME_HEADER = struct.Struct("<I16s")  # payload length, MAC
FRAME_BYTES_MAX = 256 << 20  # a larger frame is garbage: the connection is closed
GREETING_SIZE = len(MAGIC) + NONCE_SIZE
_SEQ = struct.Struct("<Q")


class WireError(Exception):
    """Bytes from a peer that are not a valid, authentic frame or handshake: close the connection."""


def cluster_key(secret: str) -> bytes:
    """The key everything on the wire is authenticated with, derived from the cluster secret."""
    if not secret:
        raise ValueError("a cluster secret is required for Raft traffic")
    return hashlib.blake2b(b"tidebank-raft-v1\0" + secret.encode(), digest_size=KEY_SIZE).digest()


def new_nonce() -> bytes:
    return os.urandom(NONCE_SIZE)


def greeting(nonce_a: bytes) -> bytes:
    return MAGIC + nonce_a


def parse_greeting(data: bytes) -> bytes:
    if len(data) != GREETING_SIZE or data[:len(MAGIC)] != MAGIC:
        raise WireError("not a tidebank Raft endpoint")
    return data[len(MAGIC):]


def hello(key: bytes, nonce_a: bytes, name: str) -> tuple[bytes, bytes]:
    """(C's hello message, the session key) for connecting as `name` to an acceptor that greeted with nonce_a."""
    raw_name = name.encode()
    if not 0 < len(raw_name) <= NAME_BYTES_MAX:
        raise ValueError(f"node name {name!r} must be 1..{NAME_BYTES_MAX} bytes")
    nonce_c = new_nonce()
    mac = _mac(key, b"hello", nonce_a, nonce_c, raw_name)
    return bytes((len(raw_name),)) + raw_name + nonce_c + mac, _session(key, nonce_a, nonce_c, raw_name)


def hello_size(first_byte: int) -> int:
    return 1 + first_byte + NONCE_SIZE + MAC_SIZE


def check_hello(key: bytes, nonce_a: bytes, data: bytes) -> tuple[str, bytes]:
    """(the connector's name, the session key) of a valid hello; WireError otherwise."""
    n = data[0]
    if len(data) != hello_size(n):
        raise WireError("hello of the wrong size")
    raw_name = data[1:1 + n]
    nonce_c = data[1 + n:1 + n + NONCE_SIZE]
    mac = data[1 + n + NONCE_SIZE:]
    if not hmac.compare_digest(mac, _mac(key, b"hello", nonce_a, nonce_c, raw_name)):
        raise WireError("hello not signed with the cluster secret")
    try:
        name = raw_name.decode()
    except UnicodeDecodeError as exc:
        raise WireError("node name is not UTF-8") from exc
    return name, _session(key, nonce_a, nonce_c, raw_name)


def _mac(key: bytes, *parts: bytes) -> bytes:
    h = hashlib.blake2b(key=key, digest_size=MAC_SIZE)
    for part in parts:
        h.update(len(part).to_bytes(4, "little"))
        h.update(part)
    return h.digest()


def _session(key: bytes, nonce_a: bytes, nonce_c: bytes, raw_name: bytes) -> bytes:
    return hashlib.blake2b(b"session" + nonce_a + nonce_c + raw_name, key=key, digest_size=KEY_SIZE).digest()


class Sealer:
    """Seals outgoing frames of one connection: each MAC covers the frame's sequence number."""

    def __init__(self, session_key: bytes) -> None:
        self._key = session_key
        self._seq = 0

    def seal(self, payload: bytes) -> bytes:
        mac = hashlib.blake2b(_SEQ.pack(self._seq) + payload, key=self._key, digest_size=MAC_SIZE).digest()
        self._seq += 1
        return FRAME_HEADER.pack(len(payload), mac) + payload


class Opener:
    """Checks incoming frames of one connection, in order."""

    def __init__(self, session_key: bytes) -> None:
        self._key = session_key
        self._seq = 0

    def open(self, mac: bytes, payload: bytes | memoryview) -> None:
        expected = hashlib.blake2b(_SEQ.pack(self._seq) + payload, key=self._key, digest_size=MAC_SIZE).digest()
        if not hmac.compare_digest(mac, expected):
            raise WireError("frame fails its MAC (wrong secret, replayed, reordered or altered)")
        self._seq += 1


def encode_messages(messages: list[tuple[int, dict]]) -> bytes:
    return msgpack.packb(messages, use_bin_type=True)


def decode_messages(payload: bytes | memoryview) -> list[tuple[int, dict]]:
    """[(shard_id, message)] of an authentic payload; WireError if its shape is not that."""
    try:
        decoded = msgpack.unpackb(payload, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises several types for malformed input
        raise WireError(f"payload does not decode: {exc}") from exc
    if not isinstance(decoded, list):
        raise WireError("payload is not a list of messages")
    out = []
    for item in decoded:
        if (not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], int)
                or not isinstance(item[1], dict) or not isinstance(item[1].get("type"), str)):
            raise WireError("payload holds something that is not a (shard, message) pair")
        message = item[1]
        entries = message.get("entries")
        if entries is not None:  # pysyncobj's entries are (command, index, term) tuples
            if not isinstance(entries, list) or not all(
                    isinstance(e, list) and len(e) == 3 and isinstance(e[0], bytes) for e in entries):
                raise WireError("append_entries with malformed entries")
            message["entries"] = [tuple(e) for e in entries]
        out.append((item[0], message))
    return out

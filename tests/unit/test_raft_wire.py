"""Nothing from outside the cluster is ever acted on at a Raft port (raft/wire.py, raft/transport.py).

A real NodeTransport listens on loopback; these tests talk to it over real sockets as an attacker would: garbage,
the wrong secret, a replayed or altered frame, and a pickle payload (what pysyncobj's own transport would have
unpickled). The port keeps serving its real peers afterwards.
"""

from __future__ import annotations

import os
import pickle
import socket
import time

import pytest

from tidebank.node.raft import wire
from tidebank.node.raft.transport import NodeTransport

SECRET = "wire-unit-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Group:
    shard_id = 1

    def __init__(self):
        self.received = []

    def deliver(self, node, message):
        self.received.append((node.id, message))

    def peer_connected(self, name):
        pass

    def peer_disconnected(self, name):
        pass


@pytest.fixture
def node():
    port = _free_port()
    t = NodeTransport("target", ("127.0.0.1", port), {"target": ("127.0.0.1", port), "peer": ("127.0.0.1", 1)},
                      SECRET)
    t.start()
    group = _Group()
    t.register(group, ["peer"])
    yield t, group, port
    t.close()


def _pump(t: NodeTransport, until, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, "timed out"
        t.poll(0.01)


def _connect(t: NodeTransport, port: int) -> tuple[socket.socket, bytes]:
    """Connect as an attacker would; the transport answers with its greeting while it polls."""
    s = socket.create_connection(("127.0.0.1", port), timeout=2)
    s.setblocking(False)
    greeting = b""
    deadline = time.monotonic() + 3
    while len(greeting) < wire.GREETING_SIZE:
        assert time.monotonic() < deadline, "no greeting"
        t.poll(0.01)
        try:
            greeting += s.recv(wire.GREETING_SIZE - len(greeting))
        except BlockingIOError:
            pass
    s.setblocking(True)
    return s, wire.parse_greeting(greeting)


def _closed_by_peer(s: socket.socket, t: NodeTransport) -> bool:
    t.poll(0.01)
    s.setblocking(False)
    try:
        return s.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def _frame_from(name: str, secret: str, nonce_a: bytes, payload: bytes) -> tuple[bytes, bytes]:
    hello, session = wire.hello(wire.cluster_key(secret), nonce_a, name)
    return hello, wire.Sealer(session).seal(payload)


def test_garbage_closes_the_connection_and_reaches_no_shard(node):
    t, group, port = node
    s, _ = _connect(t, port)
    s.sendall(os.urandom(4096))
    _pump(t, lambda: _closed_by_peer(s, t))
    assert t.rejected_connections == 1 and group.received == []


def test_a_peer_without_the_cluster_secret_is_refused(node):
    t, group, port = node
    s, nonce = _connect(t, port)
    hello, frame = _frame_from("peer", "not-the-secret", nonce, wire.encode_messages([(1, {"type": "request_vote"})]))
    s.sendall(hello + frame)
    _pump(t, lambda: _closed_by_peer(s, t))
    assert group.received == [] and t.rejected_connections == 1


def test_a_node_name_that_is_not_a_peer_is_refused(node):
    t, group, port = node
    s, nonce = _connect(t, port)
    hello, frame = _frame_from("stranger", SECRET, nonce, wire.encode_messages([(1, {"type": "request_vote"})]))
    s.sendall(hello + frame)
    _pump(t, lambda: _closed_by_peer(s, t))
    assert group.received == []


def test_a_signed_pickle_is_never_unpickled(node, tmp_path):
    """Even with the secret, a frame holding a pickle (pysyncobj's own wire format) is refused unread."""
    t, group, port = node
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    s, nonce = _connect(t, port)
    hello, frame = _frame_from("peer", SECRET, nonce, pickle.dumps({"type": "append_entries", "x": Exploit()}))
    s.sendall(hello + frame)
    _pump(t, lambda: _closed_by_peer(s, t))
    assert not marker.exists() and group.received == []


def test_a_replayed_connection_is_refused(node):
    t, group, port = node
    s, nonce = _connect(t, port)
    hello, frame = _frame_from("peer", SECRET, nonce, wire.encode_messages([(1, {"type": "request_vote"})]))
    s.sendall(hello + frame)
    _pump(t, lambda: len(group.received) == 1)
    again, _ = _connect(t, port)  # a new greeting (nonce): the recorded bytes no longer authenticate
    again.sendall(hello + frame)
    _pump(t, lambda: _closed_by_peer(again, t))
    assert len(group.received) == 1


def test_an_altered_or_repeated_frame_closes_the_connection(node):
    t, group, port = node
    s, nonce = _connect(t, port)
    hello, session = wire.hello(wire.cluster_key(SECRET), nonce, "peer")
    sealer = wire.Sealer(session)
    first = sealer.seal(wire.encode_messages([(1, {"type": "request_vote", "term": 1})]))
    s.sendall(hello + first)
    _pump(t, lambda: len(group.received) == 1)
    s.sendall(first)  # the same frame again: its sequence number is spent
    _pump(t, lambda: _closed_by_peer(s, t))
    s2, nonce2 = _connect(t, port)
    hello2, session2 = wire.hello(wire.cluster_key(SECRET), nonce2, "peer")
    altered = bytearray(wire.Sealer(session2).seal(wire.encode_messages([(1, {"type": "request_vote", "term": 2})])))
    altered[-1] ^= 1
    s2.sendall(hello2 + bytes(altered))
    _pump(t, lambda: _closed_by_peer(s2, t))
    assert [m["term"] for _, m in group.received] == [1]


def test_a_valid_frame_reaches_its_shard(node):
    t, group, port = node
    s, nonce = _connect(t, port)
    hello, frame = _frame_from("peer", SECRET, nonce, wire.encode_messages(
        [(1, {"type": "append_entries", "entries": [[b"cmd", 5, 2]]}), (9, {"type": "request_vote"})]))
    s.sendall(hello + frame)
    _pump(t, lambda: len(group.received) == 1)
    ((sender, message),) = group.received
    assert sender == "peer" and message["entries"] == [(b"cmd", 5, 2)]  # shard 9 has no replica here: ignored


@pytest.mark.parametrize("payload", [
    wire.encode_messages({"not": "a list"}),
    wire.encode_messages([[1]]),
    wire.encode_messages([["1", {"type": "x"}]]),
    wire.encode_messages([[1, {"no": "type"}]]),
    wire.encode_messages([[1, {"type": "append_entries", "entries": [[1, 2]]}]]),
    b"\xc1",
])
def test_authentic_payloads_of_the_wrong_shape_are_refused(payload):
    with pytest.raises(wire.WireError):
        wire.decode_messages(payload)

"""The node's Raft loop reacts to every wakeup at once (loop.py)."""

from __future__ import annotations

import socket
import time

from tidebank.node.raft.loop import RaftHost


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _RacingSocket:
    """The loop's wakeup socket, with another thread's wake() landing in the middle of the drain."""

    def __init__(self, real: socket.socket, host: RaftHost):
        self.real, self.host, self.raced = real, host, False

    def recv(self, n: int) -> bytes:
        data = self.real.recv(n)
        if not self.raced:
            self.raced = True
            self.host._signal()  # a proposal arrives while the loop drains
        return data


def test_a_wakeup_during_the_drain_is_never_lost():
    port = _free_port()
    host = RaftHost("n0", ("127.0.0.1", port), {"n0": ("127.0.0.1", port)}, "secret")
    try:
        host._signal()
        host._wake_r = _RacingSocket(host._wake_r, host)
        host._drain_wakeup()
        # either the racing wake's byte is still pending, or the flag is clear so the next wake sends one
        host._wake_r = host._wake_r.real
        host._wake_r.setblocking(False)
        try:
            pending = host._wake_r.recv(1) != b""
        except BlockingIOError:
            pending = False
        assert pending or not host._signalled
    finally:
        host._wake_r = getattr(host._wake_r, "real", host._wake_r)
        host.close()


def test_a_woken_shard_is_ticked_within_a_few_milliseconds():
    port = _free_port()
    host = RaftHost("n0", ("127.0.0.1", port), {"n0": ("127.0.0.1", port)}, "secret", tick_period_s=10.0)

    class Replica:
        shard_id, closed, touched, journal_dirty = 3, False, False, False

        def __init__(self):
            self.ticked = []

        def tick(self):
            self.ticked.append(time.monotonic())

        def sync_journal(self):
            pass

        def defer_election(self):
            pass

        def close(self):
            pass

    replica = Replica()
    host.start()
    try:
        host.add(replica)
        time.sleep(0.05)
        for _ in range(20):
            before = len(replica.ticked)
            woken_at = time.monotonic()
            host.wake(3)
            deadline = woken_at + 1.0
            while len(replica.ticked) == before and time.monotonic() < deadline:
                time.sleep(0.0002)
            assert len(replica.ticked) > before and replica.ticked[-1] - woken_at < 0.005
    finally:
        host.close()

"""Simulated inter-DC link faults (node/links.py): the table, the Raft delay line, the
transport's use of it (real pysyncobj replicas on loopback), and the gRPC interceptor."""

from __future__ import annotations

import contextlib
import pathlib
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from tidebank.node.links import (
    DELAY_MS_MAX,
    DelayLine,
    LinkFaults,
    LinkInterceptor,
    LinkPolicy,
    LinkRpcError,
    LinkTable,
    intercepted_channel,
    validate_link_faults,
)
from tidebank.node.raft.loop import RaftHost
from tidebank.node.raft.replica import RaftTuning, ShardReplica
from tidebank.node.raft.transport import NodeTransport, PeerNode
from tidebank.v1 import admin_pb2, admin_pb2_grpc

DCS = ("dc1", "dc2", "dc3")


# ---------------------------------------------------------------------- the table


def test_empty_table_cuts_and_delays_nothing():
    t = LinkTable()
    assert t.empty and t.describe() == "no faults"
    assert not t.is_cut("dc1", "dc2") and t.delay_ms("dc1", "dc2") == 0


def test_isolated_dc_is_cut_both_ways_but_not_from_itself():
    t = LinkTable.make(isolated=["dc2"])
    assert t.is_cut("dc1", "dc2") and t.is_cut("dc2", "dc1") and t.is_cut("dc3", "dc2")
    assert not t.is_cut("dc1", "dc3") and not t.is_cut("dc2", "dc2")
    assert not t.is_cut(None, "dc2") and not t.is_cut("dc2", None)  # unknown peers: no link layer


def test_delays_are_one_way_and_normalized():
    t = LinkTable.make(delays=[("dc2", "dc1", 30), ("dc1", "dc2", 50), ("dc1", "dc3", 0), ("dc1", "dc2", 40)])
    assert t.delays == (("dc1", "dc2", 40), ("dc2", "dc1", 30))  # sorted, zero dropped, last one wins
    assert t.delay_ms("dc1", "dc2") == 40 and t.delay_ms("dc2", "dc1") == 30 and t.delay_ms("dc1", "dc3") == 0
    assert LinkTable.make(delays={("dc1", "dc1"): 10}).empty  # no link inside a DC
    with pytest.raises(ValueError):
        LinkTable.make(delays=[("dc1", "dc2", -1)])


def test_changes_are_pure_and_compose():
    base = LinkTable()
    cut = base.partition("dc1")
    assert base.empty and cut.isolated == {"dc1"}
    both = cut.partition("dc3").with_latency("dc1", "dc2", 50)
    assert both.isolated == {"dc1", "dc3"}
    assert both.delays == (("dc1", "dc2", 50), ("dc2", "dc1", 50))
    assert both.with_latency("dc2", "dc1", 0).delays == ()
    assert both.healed().empty
    with pytest.raises(ValueError):
        base.with_latency("dc1", "dc1", 5)


def test_table_round_trips_through_protobuf_and_is_hashable():
    t = LinkTable.make(["dc3"], [("dc1", "dc2", 7), ("dc2", "dc1", 9)])
    message = t.to_proto()
    assert list(message.isolated_dcs) == ["dc3"]
    assert [(d.from_dc, d.to_dc, d.delay_ms) for d in message.delays] == [("dc1", "dc2", 7), ("dc2", "dc1", 9)]
    assert LinkTable.from_proto(message) == t
    assert len({t, LinkTable.from_proto(message)}) == 1
    assert t.to_dict() == {"isolated_dcs": ["dc3"], "delays": [{"from_dc": "dc1", "to_dc": "dc2", "delay_ms": 7},
                                                               {"from_dc": "dc2", "to_dc": "dc1", "delay_ms": 9}]}


def test_validation_names_each_bad_field():
    good = LinkTable.make(["dc1"], [("dc2", "dc3", DELAY_MS_MAX)]).to_proto()
    assert validate_link_faults(good, DCS) == []
    bad = admin_pb2.LinkFaults(isolated_dcs=["dc9"])
    bad.delays.add(from_dc="dc1", to_dc="dcX", delay_ms=5)
    bad.delays.add(from_dc="dc2", to_dc="dc2", delay_ms=5)
    bad.delays.add(from_dc="dc1", to_dc="dc2", delay_ms=DELAY_MS_MAX + 1)
    bad.delays.add(from_dc="dc1", to_dc="dc2", delay_ms=1)
    fields = [f for f, _ in validate_link_faults(bad, DCS)]
    assert fields == ["isolated_dcs[0]", "delays[0].to_dc", "delays[1]", "delays[2].delay_ms", "delays[3]"]


def test_link_faults_swaps_whole_tables():
    faults = LinkFaults()
    assert faults.empty and faults.version == 0
    faults.set(["dc2"], {("dc1", "dc3"): 250})
    assert faults.is_cut("dc1", "dc2") and faults.delay_s("dc1", "dc3") == 0.25 and faults.delay_s("dc3", "dc1") == 0
    assert faults.version == 1
    assert LinkFaults.from_proto(faults.to_proto()).table == faults.table
    faults.clear()
    assert faults.empty and not faults.is_cut("dc1", "dc2") and faults.version == 2


def test_link_faults_readers_never_see_a_torn_table():
    faults = LinkFaults()
    stop = threading.Event()
    seen = set()

    def writer():
        i = 0
        while not stop.is_set():
            faults.set(["dc1"] if i % 2 else [], {("dc2", "dc3"): 5 + i % 2})
            i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(20_000):
            table = faults.table
            seen.add((frozenset(table.isolated), table.delays))
    finally:
        stop.set()
        thread.join()
    assert seen <= {(frozenset(), ()), (frozenset(), (("dc2", "dc3", 5),)), (frozenset({"dc1"}), (("dc2", "dc3", 6),))}


# ---------------------------------------------------------------------- the delay line


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Peer:
    """Stands for a pysyncobj node: equal (and hashing alike) by address."""

    def __init__(self, address: str):
        self.address = address

    def __eq__(self, other):
        return isinstance(other, Peer) and other.address == self.address

    def __hash__(self):
        return hash(self.address)


PEERS = {"a2": "dc2", "a3": "dc3", "a1b": "dc1"}


def make_line(faults: LinkFaults, max_queued: int = 100):
    sent: list[tuple[str, object]] = []
    clock = FakeClock()
    policy = LinkPolicy("dc1", PEERS.get, faults)
    line = DelayLine(policy, lambda node, m: sent.append((node.address, m)) or True, clock=clock,
                     max_queued=max_queued)
    return line, sent, clock


def test_no_faults_sends_at_once():
    line, sent, _ = make_line(LinkFaults())
    assert line.send(Peer("a2"), "m1")
    assert sent == [("a2", "m1")] and line.queued() == 0


def test_cut_drops_outgoing_and_incoming_but_not_inside_the_dc():
    faults = LinkFaults()
    faults.set(["dc2"])
    line, sent, _ = make_line(faults)
    assert line.send(Peer("a2"), "lost")  # the sender cannot tell
    line.send(Peer("a3"), "ok")
    line.send(Peer("a1b"), "same-dc")
    assert sent == [("a3", "ok"), ("a1b", "same-dc")]
    assert line.dropped_cut == 1
    assert not line.accept_from(Peer("a2")) and line.accept_from(Peer("a3")) and line.accept_from(Peer("a1b"))
    assert line.dropped_incoming == 1
    faults.set(["dc1"])  # our own DC cut off: nothing leaves it, nothing comes in
    line.send(Peer("a3"), "lost too")
    assert sent[-1] == ("a1b", "same-dc") and not line.accept_from(Peer("a3"))


def test_delayed_messages_wait_then_leave_in_order():
    faults = LinkFaults()
    faults.set((), {("dc1", "dc2"): 50})
    line, sent, clock = make_line(faults)
    line.send(Peer("a2"), 1)
    line.send(Peer("a3"), "undelayed")
    clock.now += 0.02
    line.send(Peer("a2"), 2)
    assert sent == [("a3", "undelayed")] and line.queued() == 2
    assert line.flush() == 0
    clock.now += 0.03  # 50 ms after the first
    assert line.flush() == 1 and sent[-1] == ("a2", 1)
    clock.now += 0.02
    assert line.flush() == 1 and sent[-1] == ("a2", 2)
    assert line.queued() == 0 and line.delayed == 2


def test_nothing_overtakes_a_waiting_message():
    faults = LinkFaults()
    faults.set((), {("dc1", "dc2"): 1000})
    line, sent, clock = make_line(faults)
    line.send(Peer("a2"), "slow")
    faults.set((), {("dc1", "dc2"): 10})  # a later message would be due first ...
    line.send(Peer("a2"), "fast")
    faults.clear()  # ... and one sent without any delay must not jump the queue either
    line.send(Peer("a2"), "plain")
    clock.now += 0.5
    assert line.flush() == 0 and sent == []
    clock.now += 0.5
    assert line.flush() == 3
    assert [m for _, m in sent] == ["slow", "fast", "plain"]
    line.send(Peer("a2"), "after")  # queue drained: direct again
    assert sent[-1] == ("a2", "after")


def test_cut_while_queued_drops_in_flight_messages():
    faults = LinkFaults()
    faults.set((), {("dc1", "dc2"): 10})
    line, sent, clock = make_line(faults)
    line.send(Peer("a2"), 1)
    faults.set(["dc2"], {("dc1", "dc2"): 10})
    clock.now += 1
    assert line.flush() == 0 and sent == [] and line.dropped_cut == 1 and line.queued() == 0


def test_queue_is_bounded():
    faults = LinkFaults()
    faults.set((), {("dc1", "dc2"): 10})
    line, sent, clock = make_line(faults, max_queued=3)
    for i in range(5):
        line.send(Peer("a2"), i)
    assert line.queued() == 3 and line.dropped_overflow == 2
    clock.now += 1
    line.flush()
    assert [m for _, m in sent] == [0, 1, 2]
    assert line.stats()["link_dropped_overflow"] == 2


# ---------------------------------------------------------------------- the transport


def _transport_pair(faults_a: LinkFaults, faults_b: LinkFaults):
    """Two node transports in one process: a in dc1, b in dc2, each with its own fault table."""
    ports = _free_ports(2)
    endpoints = {"a": ("127.0.0.1", ports[0]), "b": ("127.0.0.1", ports[1])}
    dcs = {"a": "dc1", "b": "dc2"}.get
    a = NodeTransport("a", endpoints["a"], endpoints, SECRET, LinkPolicy("dc1", dcs, faults_a))
    b = NodeTransport("b", endpoints["b"], endpoints, SECRET, LinkPolicy("dc2", dcs, faults_b))
    a.start()
    b.start()
    return a, b


class _Group:
    def __init__(self, shard_id: int):
        self.shard_id = shard_id
        self.received: list[tuple[str, dict, float]] = []

    def deliver(self, node, message):
        self.received.append((node.id, message, time.monotonic()))

    def peer_connected(self, name):
        pass

    def peer_disconnected(self, name):
        pass


def _pump(*transports, until, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, "timed out"
        for t in transports:
            t.poll(0.005)
            t.flush()


def test_messages_leave_only_at_flush_in_order_through_a_delay():
    faults = LinkFaults()
    faults.set((), {("dc1", "dc2"): 30})
    a, b = _transport_pair(faults, LinkFaults())
    group = _Group(1)
    b.register(group, ["a"])
    try:
        _pump(a, b, until=lambda: a.connected_peers() == ["b"])
        for i in range(3):
            assert a.queue("b", 1, {"type": "next_node_idx", "i": i})
        for _ in range(5):
            b.poll(0.005)
        assert group.received == []  # nothing left before the flush
        sent_at = time.monotonic()
        a.flush()
        _pump(a, b, until=lambda: len(group.received) == 3)
        assert [m["i"] for _, m, _ in group.received] == [0, 1, 2]
        assert group.received[0][2] - sent_at >= 0.03
        assert a.stats()["link_delayed"] == 1  # the three went as one frame
    finally:
        a.close()
        b.close()


def test_frames_from_a_cut_dc_are_dropped_on_receipt():
    faults_b = LinkFaults()
    a, b = _transport_pair(LinkFaults(), faults_b)
    group = _Group(1)
    b.register(group, ["a"])
    try:
        _pump(a, b, until=lambda: a.connected_peers() == ["b"])
        a.queue("b", 1, {"type": "request_vote"})
        a.flush()
        _pump(a, b, until=lambda: len(group.received) == 1)
        faults_b.set(["dc1"])
        a.queue("b", 1, {"type": "request_vote"})
        a.flush()
        _pump(a, b, until=lambda: b.stats()["link_dropped_incoming"] == 1)
        assert len(group.received) == 1
    finally:
        a.close()
        b.close()


# ---------------------------------------------------------------------- real replicas


SECRET = "links-unit-test"
FAST = RaftTuning(log_compaction_min_time=3600)


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_for(cond, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Counter:
    def open_fn(self, env):
        self.db = env.open_db(b"kv")

    def apply(self, txn, payload: bytes):
        n = int(txn.get(b"n", db=self.db) or 0) + 1
        txn.put(b"n", b"%d" % n, db=self.db)
        return n


@pytest.fixture
def group(tmp_path: pathlib.Path):
    """Three nodes, node i in DC i+1, each holding a replica of one shard, sharing one fault table (as if the
    CLI had sent the same table to every node)."""
    names = [f"n{i}" for i in range(3)]
    endpoints = {name: ("127.0.0.1", port) for name, port in zip(names, _free_ports(3), strict=True)}
    dc_of = {name: f"dc{i + 1}" for i, name in enumerate(names)}.get
    faults = LinkFaults()
    hosts, replicas = [], []
    try:
        for i, name in enumerate(names):
            kv = Counter()
            host = RaftHost(name, endpoints[name], endpoints, SECRET,
                            links=LinkPolicy(f"dc{i + 1}", dc_of, faults))
            host.start()
            hosts.append(host)
            replicas.append(ShardReplica(shard_id=3, host=host, members=names, data_dir=tmp_path / f"r{i}",
                                         apply_fn=kv.apply, open_fn=kv.open_fn, raft=FAST))
        yield replicas, faults
    finally:
        for r in replicas:
            with contextlib.suppress(Exception):
                r.close()
        for host in hosts:
            with contextlib.suppress(Exception):
                host.close()


def leader_of(replicas, among=None, timeout=15.0) -> ShardReplica:
    found = []

    def one():
        found[:] = [r for r in (among or replicas) if r.is_leader()]
        return len(found) == 1

    wait_for(one, timeout, "a leader")
    return found[0]


def submit(replica: ShardReplica, timeout=10.0):
    done, out = threading.Event(), []
    replica.submit(b"x", lambda result, err: (out.append((result, err)), done.set()))
    assert done.wait(timeout), "no callback"
    return out[0]


def test_isolating_the_leaders_dc_moves_leadership_and_healing_catches_up(group):
    replicas, faults = group
    old = leader_of(replicas)
    assert submit(old)[1] == 0
    old_dc = f"dc{replicas.index(old) + 1}"
    faults.set([old_dc])
    others = [r for r in replicas if r is not old]
    new = leader_of(replicas, among=others)
    wait_for(lambda: not old.is_leader(), 5.0, "the isolated leader to step down")
    frozen = old.status()["applied_index"]
    for _ in range(5):
        assert submit(new)[1] == 0
    assert old.status()["applied_index"] == frozen  # nothing reaches it
    # both sides drop what they send across the cut (so nothing is left to drop on receipt)
    assert old.host.status()["link_dropped_cut"] > 0 and new.host.status()["link_dropped_cut"] > 0
    faults.clear()
    target = new.status()["commit_index"]
    wait_for(lambda: old.status()["applied_index"] >= target, 15.0, "the healed replica to catch up")


def test_delays_slow_the_group_down_but_it_still_commits(group):
    replicas, faults = group
    leader = leader_of(replicas)
    faults.set((), {(a, b): 40 for a in DCS for b in DCS if a != b})
    started = time.monotonic()
    for _ in range(3):
        assert submit(leader)[1] == 0
    assert time.monotonic() - started >= 3 * 0.08  # every commit waits a round trip of 2 x 40 ms
    assert leader.host.status()["link_delayed"] > 0


# ---------------------------------------------------------------------- the gRPC interceptor


class EchoAdmin(admin_pb2_grpc.AdminServicer):
    def __init__(self):
        self.calls = 0

    def GetLinkFaults(self, request, context):
        self.calls += 1
        return admin_pb2.LinkFaults(isolated_dcs=["echo"])


@pytest.fixture
def echo_server():
    servicer = EchoAdmin()
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    admin_pb2_grpc.add_AdminServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", servicer
    server.stop(None)


def test_interceptor_passes_calls_without_faults(echo_server):
    address, servicer = echo_server
    faults = LinkFaults()
    with intercepted_channel(address, "dc2", "dc1", faults) as channel:
        stub = admin_pb2_grpc.AdminStub(channel)
        assert list(stub.GetLinkFaults(admin_pb2.GetLinkFaultsRequest(), timeout=5).isolated_dcs) == ["echo"]
        assert stub.GetLinkFaults.future(admin_pb2.GetLinkFaultsRequest(), timeout=5).result().isolated_dcs
    assert servicer.calls == 2


def test_interceptor_fails_fast_on_a_cut_for_blocking_and_future_calls(echo_server):
    address, servicer = echo_server
    faults = LinkFaults()
    faults.set(["dc2"])
    with intercepted_channel(address, "dc2", "dc1", faults) as channel:
        stub = admin_pb2_grpc.AdminStub(channel)
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            stub.GetLinkFaults(admin_pb2.GetLinkFaultsRequest(), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert info.value.details() == "link to dc2 cut (simulated)"
        future = stub.GetLinkFaults.future(admin_pb2.GetLinkFaultsRequest(), timeout=5)
        assert future.done() and isinstance(future.exception(), LinkRpcError)
        with pytest.raises(grpc.RpcError):
            future.result()
        assert time.monotonic() - started < 1.0
    assert servicer.calls == 0  # never sent


def test_same_dc_channels_have_no_link_layer(echo_server):
    address, servicer = echo_server
    faults = LinkFaults()
    faults.set(["dc1"])
    with intercepted_channel(address, "dc1", "dc1", faults) as channel:
        admin_pb2_grpc.AdminStub(channel).GetLinkFaults(admin_pb2.GetLinkFaultsRequest(), timeout=5)
    assert servicer.calls == 1


def test_interceptor_delays_both_ways(echo_server):
    address, _ = echo_server
    faults = LinkFaults()
    faults.set((), {("dc1", "dc2"): 100, ("dc2", "dc1"): 150})
    with intercepted_channel(address, "dc2", "dc1", faults) as channel:
        stub = admin_pb2_grpc.AdminStub(channel)
        started = time.monotonic()
        stub.GetLinkFaults(admin_pb2.GetLinkFaultsRequest(), timeout=5)
        assert time.monotonic() - started >= 0.25
        started = time.monotonic()
        future = stub.GetLinkFaults.future(admin_pb2.GetLinkFaultsRequest(), timeout=5)
        issued = time.monotonic() - started
        assert 0.1 <= issued  # the request's delay, in the calling thread
        callbacks = []
        future.add_done_callback(lambda f: callbacks.append(time.monotonic() - started))
        assert list(future.result(timeout=5).isolated_dcs) == ["echo"]
        assert time.monotonic() - started >= 0.25 and future.code() == grpc.StatusCode.OK
        wait_for(lambda: callbacks, 2.0, "the done callback")
        assert callbacks[0] >= 0.25


def test_interceptor_records_its_sleeps_and_shrinks_the_deadline():
    faults = LinkFaults()
    faults.set((), {("dc1", "dc2"): 30, ("dc2", "dc1"): 40})
    slept: list[float] = []
    clock = FakeClock()

    def sleep(s: float) -> None:
        slept.append(s)
        clock.now += s

    seen = []

    class Done:
        def done(self):
            return True

    def continuation(details, request):
        seen.append(details.timeout)
        return Done()

    interceptor = LinkInterceptor("dc1", "dc2", faults, sleep=sleep, clock=clock)
    details = type("D", (), {"method": "/m", "timeout": 1.0, "metadata": None, "credentials": None,
                             "wait_for_ready": None, "compression": None})()
    interceptor.intercept_unary_unary(continuation, details, object())
    assert slept == [0.03, 0.04] and seen == [pytest.approx(0.97)]
    details.timeout = 0.01
    outcome = interceptor.intercept_unary_unary(continuation, details, object())
    assert outcome.code() == grpc.StatusCode.DEADLINE_EXCEEDED and len(seen) == 1


def test_peer_nodes_map_to_dcs_by_name():
    faults = LinkFaults()
    faults.set(["dc2"])
    line, sent, _ = make_line(faults)
    line.policy = LinkPolicy("dc1", {"dc2-n1": "dc2"}.get, faults)
    line.send(PeerNode("dc2-n1"), "x")
    assert sent == [] and line.dropped_cut == 1

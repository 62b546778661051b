"""Fuzzing every RPC of a real cluster with random and malformed messages (issue 11, item 4).

Every method of Ledger, Escrow, Clearing, Admin and Internal (found from the descriptors, so a new RPC is
fuzzed without a change here) gets hypothesis-drawn requests (tests/integration/fuzz_messages.py):
valid-typed messages biased to boundaries and to the ids of a seeded world, then mutated (unknown fields,
wrong wire types, flipped bytes, truncation, garbage, deep nesting, huge repeated fields), sent as raw bytes
by principals with and without the method's permission, and a node certificate. Internal calls and
SetLinkFaults are never signed: they must be refused.

The verdict: every call answers within its deadline with a clear code (fuzz_messages.CLEAR_CODES: never
UNKNOWN, INTERNAL, DEADLINE_EXCEEDED, nor UNAVAILABLE while every node is up), every node still runs and
its health check says SERVING, no handler exception in the node logs, and afterwards the audit is clean
(debits == credits, the escrow and clearing books hold). Garbage on a Raft port is refused too.

Deterministic: each method's examples come from a fixed seed (its name), no example database, no shrinking
(a violation is reported with the input's bytes instead); bench/fuzz_long.py runs the same generators longer.
"""

from __future__ import annotations

import os
import random
import socket
import time
from dataclasses import dataclass

import grpc
import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from tests.integration import fuzz_messages as fm
from tidebank.common.limits import BATCH_ITEMS_MAX, PARTICIPANTS_PER_REQUEST_MAX
from tidebank.v1 import ledger_pb2, ledger_pb2_grpc, types_pb2

pytestmark = pytest.mark.integration

METHODS = fm.all_methods()
EXAMPLES_PER_METHOD = int(os.environ.get("TIDEBANK_FUZZ_EXAMPLES", "40"))


@dataclass
class Fuzz:
    cluster: object
    channels: fm.Channels
    principals: list[str]
    tally: fm.Tally
    log_offsets: dict[str, int]


@pytest.fixture(scope="module")
def fuzz(cluster):
    principals = fm.add_principals(cluster)
    channels = fm.Channels(cluster)
    fm.seed_world(channels.get("admin", 0))
    state = Fuzz(cluster, channels, principals, fm.Tally(), fm.log_offsets(cluster))
    yield state
    channels.close()


def _send(fuzz: Fuzz, item: fm.Input) -> None:
    answer = fm.call(fuzz.channels.get(item.principal, item.node), item)
    fuzz.tally.record(item, answer, fm.judge(item, answer))


def _new_problems(fuzz: Fuzz, since: int) -> list[str]:
    return fuzz.tally.violations[since:] + fm.health_problems(fuzz.cluster, fuzz.channels)


def _fail_on(problems: list[str]) -> None:
    if problems:
        shown = "\n".join(problems[:10])
        pytest.fail(f"{len(problems)} violation(s):\n{shown}", pytrace=False)


# ---------------------------------------------------------------------- coverage of the API


def test_the_fuzz_knows_every_service_the_node_serves(fuzz):
    """Reflection lists what a node serves: each public service must be one the fuzz walks; and every
    RPC the access table names is fuzzed (Internal is not reflected, but is in the table)."""
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(fuzz.channels.get("admin", 0))
    answers = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                        timeout=10)
    served = {s.name for a in answers for s in a.list_services_response.service}
    served -= {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
               "grpc.reflection.v1.ServerReflection"}
    assert served and served <= fm.service_names(), f"not fuzzed: {sorted(served - fm.service_names())}"
    from tidebank.node.api.access import PERMISSION_OF

    keys = {m.key for m in METHODS}
    assert set(PERMISSION_OF) <= keys, f"RPCs with a permission the fuzz does not know: {set(PERMISSION_OF) - keys}"
    assert {m.service for m in METHODS} == {*fm.PUBLIC_SERVICES, "Internal"}


# ---------------------------------------------------------------------- random inputs, every method


@pytest.mark.parametrize("method", METHODS, ids=[m.key for m in METHODS])
def test_random_and_malformed_requests_get_a_clear_answer(fuzz, method):
    since = len(fuzz.tally.violations)
    nodes = len(fuzz.cluster.endpoints)

    @settings(max_examples=EXAMPLES_PER_METHOD, deadline=None, database=None, derandomize=False,
              phases=(Phase.explicit, Phase.generate), suppress_health_check=list(HealthCheck))
    @seed(fm.method_seed(method))
    @given(st.data())
    def run(data):
        _send(fuzz, fm.make_input(fm.HypothesisSource(data), method, fuzz.principals, nodes))

    run()
    assert fuzz.tally.tried[method.key] >= EXAMPLES_PER_METHOD
    _fail_on(_new_problems(fuzz, since))


# ---------------------------------------------------------------------- fixed edges, every method


def _over_limit(method: fm.Method) -> list[tuple[str, bytes]]:
    """For each top-level repeated field: the request with it one past its limit (items copied from one)."""
    out = []
    src = fm.RandomSource(random.Random(fm.method_seed(method, 1)))
    for f in method.request_cls.DESCRIPTOR.fields:
        if not f.is_repeated:
            continue
        limit = PARTICIPANTS_PER_REQUEST_MAX if method.service == "Clearing" and f.name in (
            "participants", "updates") else BATCH_ITEMS_MAX
        message = method.request_cls()
        target = getattr(message, f.name)
        if f.type == f.TYPE_MESSAGE:
            one = fm.random_message(src, fm._class(f.message_type), 1)
            for i in range(limit + 1):
                item = target.add()
                item.CopyFrom(one)
                if "id" in item.DESCRIPTOR.fields_by_name:
                    item.id.hi, item.id.lo = 7, i + 1
        elif f.type == f.TYPE_UINT32 or f.type == f.TYPE_UINT64:  # distinct numbers: each may be refused alone
            target.extend(range(100, 100 + limit + 1))
        else:
            target.extend([fm._scalar(src, f)] * (limit + 1))
        out.append((f"{f.name} x {limit + 1}", message.SerializeToString()))
    return out


LONG_TEXT = "A" * 20_000  # past gRPC's 16 KiB metadata limit if an error message echoes it


def _long_strings(method: fm.Method) -> list[tuple[str, bytes]]:
    """For each top-level string field: the request with it 20,000 characters long."""
    out = []
    for f in method.request_cls.DESCRIPTOR.fields:
        if f.type != f.TYPE_STRING:
            continue
        message = method.request_cls()
        if f.is_repeated:
            getattr(message, f.name).append(LONG_TEXT)
        else:
            setattr(message, f.name, LONG_TEXT)
        out.append((f"{f.name} of {len(LONG_TEXT)} characters", message.SerializeToString()))
    return out


@pytest.mark.parametrize("method", METHODS, ids=[m.key for m in METHODS])
def test_fixed_edge_inputs_get_a_clear_answer(fuzz, method):
    """Every method, whatever the draws above: garbage, truncation, deep nesting, a bad varint, each
    repeated field one past its limit, each string field 20,000 characters long, and every principal
    lacking the permission."""
    since = len(fuzz.tally.violations)
    valid = fm.random_message(fm.RandomSource(random.Random(fm.method_seed(method, 2))), method.request_cls)
    raw = valid.SerializeToString()
    edges = [
        ("empty", b""), ("garbage", b"\xff" * 7), ("garbage", bytes(range(256))),
        ("truncate", raw[: len(raw) // 2]), ("deep_groups", b"\xa3\x01" * 5000 + b"\xa4\x01" * 5000),
        ("bad_varint", b"\x08" + b"\xff" * 10 + b"\x01"), ("huge_length", b"\x0a\xff\xff\xff\xff\x07\x00"),
        ("unknown_fields", raw + b"\xf8\xff\xff\xff\x0f\x01" + b"\xc2\x3e\x03abc"),
    ]
    edges += _over_limit(method)
    principals = ["admin", fuzz.principals[-1]]  # everything-but-node, and the node identity
    for index, (mutation, body) in enumerate(edges):
        item = fm.Input(method, principals[index % 2], index % len(fuzz.cluster.endpoints), mutation, body, ())
        _send(fuzz, item)
    for mutation, body in _long_strings(method):  # by every principal: a refusal may echo the text too
        for name in fuzz.principals:
            _send(fuzz, fm.Input(method, name, 0, mutation, body, ()))
    for name in fuzz.principals:  # the principals that lack the permission: refused, whatever the body
        item = fm.Input(method, name, 0, "none", raw, ())
        if fm.expected_refusal(item):
            _send(fuzz, item)
    _fail_on(_new_problems(fuzz, since))


def test_batches_beyond_the_limit_are_invalid_argument(fuzz):
    """The public batch limit (tidebank.common.limits) is refused as INVALID_ARGUMENT, not applied."""
    channel = fuzz.channels.get("admin", 1)
    ledger = ledger_pb2_grpc.LedgerStub(channel)
    ids = [types_pb2.U128(hi=9, lo=i + 1) for i in range(BATCH_ITEMS_MAX + 1)]
    for call, request in (
        (ledger.LookupAccounts, ledger_pb2.LookupAccountsRequest(ids=ids)),
        (ledger.LookupTransfers, ledger_pb2.LookupTransfersRequest(ids=ids)),
        (ledger.CreateAccounts, ledger_pb2.CreateAccountsRequest(
            accounts=[types_pb2.Account(id=i, ledger=1, code=1) for i in ids])),
        (ledger.CreateTransfers, ledger_pb2.CreateTransfersRequest(transfers_packed=bytes(128) * len(ids))),
    ):
        with pytest.raises(grpc.RpcError) as raised:
            call(request, timeout=fm.CALL_TIMEOUT_S)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value.details()
    found = ledger.LookupAccounts(ledger_pb2.LookupAccountsRequest(ids=ids[:10]), timeout=fm.CALL_TIMEOUT_S)
    assert not found.accounts  # nothing of the refused CreateAccounts was applied


# ---------------------------------------------------------------------- the Raft port


def _refused_by_peer(sock: socket.socket, timeout_s: float) -> bool:
    """Whether the node closes the connection (EOF or reset) within timeout_s, reading what it sends."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            if not sock.recv(65536):
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
    return False


def test_garbage_on_a_raft_port_is_refused_and_the_shards_keep_their_leaders(fuzz):
    """Raft ports authenticate every connection with the cluster secret (node/raft/wire.py): garbage, a
    hello with a forged MAC, an over-long frame, an HTTP request or a silent connection are closed, and
    the node keeps serving: every shard has a leader and a write goes through."""
    from tidebank.node.raft import wire

    cluster = fuzz.cluster
    node = cluster.topology.nodes[0]
    peer = cluster.topology.nodes[1].name.encode()
    rng = random.Random(11)
    forged_hello = bytes((len(peer),)) + peer + rng.randbytes(wire.NONCE_SIZE) + rng.randbytes(wire.MAC_SIZE)
    payloads = {
        "random bytes": rng.randbytes(4096),
        "hello with a forged MAC": forged_hello,
        "forged hello then a frame": forged_hello + wire.FRAME_HEADER.pack(5, bytes(16)) + b"hello",
        "hello naming nobody": b"\x00" + rng.randbytes(32),
        "a frame claiming 4 GiB": bytes((1,)) + b"x" + rng.randbytes(32) + b"\xff\xff\xff\xff" + bytes(16),
        "HTTP": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        "pickle": b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x94\x8c\x06system\x94\x93\x94.",
        "the node's own greeting": wire.MAGIC + rng.randbytes(wire.NONCE_SIZE),
        "silence": b"",
    }
    handshake_wait_s = getattr(wire, "HANDSHAKE_TIMEOUT_S", 3.0) + 5.0
    silent = [("silence", b"")] * 32  # a flood of connections that never say anything
    opened = [(what, payload, socket.create_connection(node.raft_endpoint, timeout=5))
              for what, payload in [*payloads.items(), *silent]]
    try:
        sent = []
        for what, payload, sock in opened:
            try:
                sock.sendall(payload)
            except (ConnectionResetError, BrokenPipeError):
                continue  # refused before it was all sent
            sent.append((what, sock))
        deadline = time.monotonic() + handshake_wait_s
        for what, sock in sent:  # all at once: the silent and short ones wait out the handshake timeout
            kept = not _refused_by_peer(sock, max(0.1, deadline - time.monotonic()))
            assert not kept, f"{what}: the Raft port kept the connection past its handshake timeout"
    finally:
        for _, _, sock in opened:
            sock.close()
    cluster.check_processes()
    fm_problems = fm.health_problems(cluster, fuzz.channels)
    assert not fm_problems, fm_problems
    deadline = time.monotonic() + 30
    while not cluster.healthy() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert cluster.healthy(), cluster.status().problems
    ledger = ledger_pb2_grpc.LedgerStub(fuzz.channels.get("admin", 0))
    account = types_pb2.Account(id=types_pb2.U128(hi=0x7A5F, lo=time.time_ns()), ledger=3, code=1)
    done = ledger.CreateAccounts(ledger_pb2.CreateAccountsRequest(accounts=[account]), timeout=fm.CALL_TIMEOUT_S)
    assert list(done.results) == [0]


# ---------------------------------------------------------------------- the verdict afterwards


def test_after_the_fuzz_every_node_is_up_every_method_was_tried_and_the_audit_is_clean(fuzz):
    tally = fuzz.tally
    if not tally.total:
        pytest.skip("the fuzz tests did not run in this session")
    print(f"\nfuzz: {tally.total} inputs, by service {tally.by_service()}, codes {dict(tally.codes)}")
    for code in ("RESOURCE_EXHAUSTED", "UNAVAILABLE", "FAILED_PRECONDITION", "NOT_FOUND"):
        for sample in tally.samples.get(code, ()):
            print(f"  {code}: {sample}")
    missing = [m.key for m in METHODS if not tally.tried[m.key]]
    assert not missing, f"methods never exercised: {missing}"
    assert not fm.health_problems(fuzz.cluster, fuzz.channels)
    report = fm.audit_verdict(fuzz.cluster)
    assert report.exit_code == 0, (report.verdict, [m.describe() for m in report.mismatches], report.in_flight,
                                   report.missing_shards)
    findings = fm.log_findings(fuzz.cluster, fuzz.log_offsets)
    assert not findings, "handler exceptions in the node logs:\n" + "\n".join(findings[:5])

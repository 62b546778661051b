"""Raft traffic of all shard replicas of one node over one authenticated connection per peer and direction.

`NodeTransport` owns the sockets; it is driven by the node's Raft loop (loop.py),
on that loop's thread only. Each shard replica's SyncObj gets a `GroupTransport`
(pysyncobj's Transport interface) that queues its outgoing messages here and
receives the ones addressed to its shard. Per loop iteration:

1. `poll` reads every readable connection, checks each frame (wire.py) and hands
   its messages to the replicas (they append to their journals, without syncing);
2. the loop ticks the replicas and fdatasyncs every journal written to;
3. `flush` sends what was queued during 1 and 2, one frame per peer.

So nothing leaves a node before what it claims is on disk: a follower's
acknowledgement, a vote, a leader's entries (docs/architecture.md, "Replication and
durability"). Simulated DC faults (links.py) apply per frame: a cut link drops it,
a delayed one queues it FIFO until due.

Connections: this node connects to each peer to send, and accepts a connection
from each peer to receive. A peer counts as connected for pysyncobj (it sends to
it, it may campaign) while the outgoing connection is up.
"""

from __future__ import annotations

import errno
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from pysyncobj.node import Node
from pysyncobj.transport import Transport

from tidebank.node.links import DelayLine, LinkPolicy
from tidebank.node.raft import pysyncobj_patches as patches
from tidebank.node.raft import wire

log = logging.getLogger(__name__)

CONNECT_RETRY_S = 0.25
CONNECT_TIMEOUT_S = 3.0
HANDSHAKE_TIMEOUT_S = 3.0
OUT_BUFFER_BYTES_MAX = 256 << 20  # a peer that does not read this much loses its connection (Raft resends)
READ_CHUNK = 1 << 20
SEND_BUFFER_BYTES = 4 << 20
RECV_BUFFER_BYTES = 4 << 20


class PeerNode(Node):
    """A peer node as pysyncobj sees it: identified by its node name (also its `address` for the link layer)."""

    @property
    def address(self) -> str:
        return self.id


# --------------------------------------------------------------------------- AppendEntries normalization


def normalize_append_entries(
    message: dict, term_at: Callable[[int], int | None], last_index: int
) -> tuple[dict, int | None]:
    """Rewrite an AppendEntries so pysyncobj only truncates on a real conflict.

    ``term_at(idx)`` gives the term of the local entry at ``idx`` (None if absent),
    ``last_index`` the local last index. Returns (message to hand to pysyncobj,
    ``next_node_idx`` its success acknowledgement must carry, or None to leave it).

    pysyncobj deletes every local entry after ``prevLogIdx`` whenever the local log is
    longer, then appends the message's entries. Raft deletes only from the first entry
    whose term differs. So: skip the prefix of the message that the log already holds;
    if everything matches and the log is longer, turn the message into a heartbeat at
    the local last index (no truncation) but acknowledge only ``prevLogIdx + len(entries)``
    and pass on a commit index no larger than that (the rest of the local log is not
    verified by this message).
    """
    if "prevLogIdx" not in message or "transmission" in message:
        return message, None
    prev_idx = message["prevLogIdx"]
    prev_term = message["prevLogTerm"]
    entries = message.get("entries") or []
    if prev_idx is None or term_at(prev_idx) != prev_term:
        return message, None  # pysyncobj answers with a reset
    for i, entry in enumerate(entries):
        if entry[1] != prev_idx + 1 + i:
            return message, None  # not contiguous: leave it to pysyncobj
    n = len(entries)
    end = prev_idx + n
    if last_index <= prev_idx:
        return message, None  # nothing after prev locally: nothing can be truncated
    k = 0
    while k < n and term_at(entries[k][1]) == entries[k][2]:
        k += 1
    if k < n:
        if k == 0:
            return message, None  # first new entry conflicts (or is new): pysyncobj is right
        rewritten = dict(message)
        rewritten["prevLogIdx"] = entries[k - 1][1]
        rewritten["prevLogTerm"] = entries[k - 1][2]
        rewritten["entries"] = entries[k:]
        return rewritten, None
    # every entry in the message is already in the local log
    rewritten = dict(message)
    rewritten["entries"] = []
    if last_index == end:
        rewritten["prevLogIdx"] = end
        rewritten["prevLogTerm"] = entries[-1][2] if entries else prev_term
        return rewritten, None
    rewritten["prevLogIdx"] = last_index
    rewritten["prevLogTerm"] = term_at(last_index)
    rewritten["commit_index"] = min(message["commit_index"], end)
    return rewritten, end + 1


# --------------------------------------------------------------------------- per shard: pysyncobj's side


class GroupTransport(Transport):
    """pysyncobj's Transport for one shard replica, over the node's NodeTransport.

    The SyncObj must carry `_node_transport` (the NodeTransport), `shard_id` and `_journal` (its
    DurableJournal) before SyncObj.__init__ builds its transport."""

    def __init__(self, syncObj, selfNode, otherNodes):
        super().__init__(syncObj, selfNode, otherNodes)
        self._replica = syncObj  # marked `touched` when a message arrives: the loop then ticks it
        self._node_transport: NodeTransport = syncObj._node_transport
        self._journal = syncObj._journal
        self.shard_id: int = syncObj.shard_id
        self._ack_override: int | None = None
        self._answering_round: int | None = None
        self._chunks: dict[Any, bytearray] = {}
        self.rewritten_append_entries = 0
        self.truncations_avoided = 0  # messages after which pysyncobj would have cut acknowledged entries
        self._node_transport.register(self, [n.id for n in otherNodes])

    @property
    def ready(self) -> bool:
        return True

    def send(self, node, message) -> bool:
        kind = message.get("type")
        if kind == "append_entries":
            # the leader's read round (read_index in replica.py): an answer to this message proves the partner
            # took us for its leader after the round began
            message["rr"] = self._replica.read_round
        elif kind == "next_node_idx":
            if self._ack_override is not None and message.get("success"):
                message = dict(message)
                message["next_node_idx"] = self._ack_override
            if self._answering_round is not None:
                message["rr"] = self._answering_round
        return self._node_transport.queue(node.id, self.shard_id, message)

    def deliver(self, node: Node, message: dict) -> None:
        """A message for this shard from `node` (loop thread): normalized, then handed to pysyncobj."""
        self._replica.touched = True
        if self._replica.installing_snapshot:
            return  # away until the dump from the leader is installed (ShardReplica.installing_snapshot)
        kind = message.get("type")
        if kind == "pre_vote":
            self._replica.answer_pre_vote(node, message)
            return  # tidebank's own (replica.py, "pre-vote"): pysyncobj never sees these
        if kind == "pre_vote_reply":
            self._replica.note_pre_vote_reply(node, message)
            return
        if kind == "timeout_now":
            self._replica.note_timeout_now(node)
        if kind == "append_entries":
            term = message.get("term")
            if isinstance(term, int) and term >= self._replica.raftCurrentTerm:
                self._replica.leader_heard_at = time.monotonic()
            commit_index = message.get("commit_index")
            if isinstance(commit_index, int):
                self._replica.leader_commit_seen = commit_index
            message, override = self._prepare_append_entries(node, message)
            self._ack_override = override
            self._answering_round = message.get("rr")
            try:
                self._onMessageReceived(node, message)
            finally:
                self._ack_override = None
                self._answering_round = None
            return
        if kind == "request_vote" and node not in patches.other_nodes(self._replica):
            # A replica removed from the group never receives its removal (the leader stops sending to it the
            # moment it appends it), so it campaigns; its higher term must not depose the group's leader.
            return
        if kind == "next_node_idx":
            if node not in patches.other_nodes(self._replica):
                return  # from a replica removed a moment ago (a replica move): pysyncobj would fail on it
            if isinstance(message.get("rr"), int):
                self._replica.note_read_round(node.id, message["rr"])
        self._onMessageReceived(node, message)

    def _prepare_append_entries(self, node, message: dict) -> tuple[dict, int | None]:
        transmission = message.get("transmission")
        if transmission is not None:
            # A single entry larger than appendEntriesBatchSizeBytes arrives in pieces, pickled by pysyncobj;
            # it is only reassembled to be normalized (the frames carrying it were authenticated).
            import pysyncobj.pickle as sync_pickle

            data = message.get("data") or b""
            if transmission == "start":
                self._chunks[node] = bytearray(data)
                return message, None
            buf = self._chunks.get(node)
            if buf is None:
                return message, None
            buf += data
            if transmission != "finish":
                return message, None
            del self._chunks[node]
            try:
                entry = tuple(sync_pickle.loads(bytes(buf)))
            except Exception:
                return message, None
            message = {k: v for k, v in message.items() if k not in ("transmission", "data")}
            message["entries"] = [entry]
        journal = self._journal
        new_message, override = normalize_append_entries(message, journal.entry_term, journal.last_index())
        if new_message is not message:
            self.rewritten_append_entries += 1
            if override is not None:
                self.truncations_avoided += 1
        return new_message, override

    def peer_connected(self, name: str) -> None:
        self._replica.touched = True
        self._onNodeConnected(PeerNode(name))

    def peer_disconnected(self, name: str) -> None:
        self._replica.touched = True
        self._onNodeDisconnected(PeerNode(name))

    def destroy(self) -> None:
        self._chunks = {}
        self._node_transport.unregister(self)


# --------------------------------------------------------------------------- per node: the sockets


class _Outgoing:
    """Our connection to a peer, for sending."""

    def __init__(self, name: str, endpoint: tuple[str, int]) -> None:
        self.name = name
        self.endpoint = endpoint
        self.sock: socket.socket | None = None
        self.state = "idle"  # idle | connecting | greeting | ready
        self.sealer: wire.Sealer | None = None
        self.inbox = bytearray()  # the acceptor's greeting
        self.out = bytearray()
        self.started = 0.0
        self.retry_at = 0.0

    @property
    def address(self) -> str:
        """The peer's name: what the link layer (links.DelayLine) looks its DC up by."""
        return self.name


class _Incoming:
    """A connection a peer opened to us, for receiving."""

    def __init__(self, sock: socket.socket, nonce: bytes) -> None:
        self.sock = sock
        self.nonce = nonce
        self.name: str | None = None
        self.opener: wire.Opener | None = None
        self.inbox = bytearray()
        self.greeting = bytearray(wire.greeting(nonce))
        self.started = time.monotonic()


class NodeTransport:
    """The Raft sockets of one node (see the module docstring). Every method but `wakeup_fd` users runs on the
    loop thread."""

    def __init__(self, name: str, bind: tuple[str, int], peers: dict[str, tuple[str, int]], secret: str,
                 links: LinkPolicy | None = None) -> None:
        self.name = name
        self.bind = bind
        self._key = wire.cluster_key(secret)
        self._peers = {peer: _Outgoing(peer, address) for peer, address in peers.items() if peer != name}
        self._groups: dict[int, GroupTransport] = {}
        self._groups_lock = threading.Lock()
        self._pending: dict[str, list[tuple[int, dict]]] = {}
        self._incoming: dict[int, _Incoming] = {}
        self._selector = selectors.DefaultSelector()
        self._listener: socket.socket | None = None
        self._link = DelayLine(links, self._enqueue_frame) if links is not None else None
        self.frames_sent = 0
        self.frames_received = 0
        self.messages_sent = 0
        self.messages_received = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self.rejected_connections = 0  # handshakes or frames that failed authentication or framing

    # --- lifecycle --------------------------------------------------------------------------------------
    def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.bind[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(self.bind)
        sock.listen(64)
        sock.setblocking(False)
        self._listener = sock
        self._selector.register(sock, selectors.EVENT_READ, ("listen", None))

    def register_wakeup(self, fd, callback: Callable[[], None]) -> None:
        self._selector.register(fd, selectors.EVENT_READ, ("wakeup", callback))

    def register(self, group: GroupTransport, partners: list[str]) -> None:
        """Any thread (a replica is built outside the loop): the groups dict is replaced, never mutated."""
        unknown = [p for p in partners if p not in self._peers]
        if unknown:
            raise ValueError(f"shard {group.shard_id}: partners {unknown} are not peers of node {self.name}")
        with self._groups_lock:
            if group.shard_id in self._groups:
                raise ValueError(f"shard {group.shard_id} already has a replica on node {self.name}")
            self._groups = {**self._groups, group.shard_id: group}

    def set_peers(self, peers: dict[str, tuple[str, int]]) -> None:
        """Loop thread: the nodes this one talks Raft with, after a membership change (cluster/membership.py).
        New ones are connected to; gone ones are disconnected (their groups see a disconnect). The dict is
        replaced, never mutated, as `register` reads it from other threads."""
        peers = {name: tuple(endpoint) for name, endpoint in peers.items() if name != self.name}
        current = dict(self._peers)
        for name, conn in list(current.items()):
            if peers.get(name) != conn.endpoint:
                self._drop_outgoing(conn)
                del current[name]
        for name, endpoint in peers.items():
            if name not in current:
                current[name] = _Outgoing(name, endpoint)
        self._peers = current
        for conn in list(self._incoming.values()):
            if conn.name is not None and conn.name not in current:
                self._drop_incoming(conn)

    def announce_connections(self, group: GroupTransport) -> None:
        """Tell a new replica (loop thread, once its SyncObj is built) which peers are connected already."""
        for name, conn in self._peers.items():
            if conn.state == "ready":
                group.peer_connected(name)

    def unregister(self, group: GroupTransport) -> None:
        with self._groups_lock:
            if self._groups.get(group.shard_id) is group:
                self._groups = {k: v for k, v in self._groups.items() if v is not group}

    def close(self) -> None:
        for conn in self._peers.values():
            self._drop_outgoing(conn, notify=False)
        for conn in list(self._incoming.values()):
            self._drop_incoming(conn)
        if self._listener is not None:
            try:
                self._selector.unregister(self._listener)
            except (KeyError, ValueError):
                pass
            self._listener.close()
            self._listener = None
        self._selector.close()
        if self._link is not None:
            self._link.clear()

    # --- sending ----------------------------------------------------------------------------------------
    def queue(self, peer: str, shard_id: int, message: dict) -> bool:
        """Queue a message for `peer` until the next flush. False (dropped) when not connected."""
        conn = self._peers.get(peer)
        if conn is None or conn.state != "ready":
            return False
        self._pending.setdefault(peer, []).append((shard_id, message))
        return True

    def flush(self) -> None:
        """Send everything queued: one frame per peer, through the simulated link faults."""
        if self._pending:
            pending, self._pending = self._pending, {}
            for peer, messages in pending.items():
                payload = wire.encode_messages(messages)
                self.messages_sent += len(messages)
                if self._link is not None:
                    self._link.send(self._peers[peer], payload)
                else:
                    self._enqueue_frame(self._peers[peer], payload)
        if self._link is not None:
            self._link.flush()
        for conn in self._peers.values():
            if conn.out and conn.state == "ready":
                self._write(conn)

    def _enqueue_frame(self, conn: _Outgoing, payload: bytes) -> bool:
        if conn.state != "ready" or conn.sealer is None:
            return False
        frame = conn.sealer.seal(payload)
        if len(conn.out) + len(frame) > OUT_BUFFER_BYTES_MAX:
            log.warning("raft: %s does not read; dropping the connection (%d bytes unsent)", conn.name,
                        len(conn.out))
            self._drop_outgoing(conn)
            return False
        conn.out += frame
        self.frames_sent += 1
        return True

    def _write(self, conn: _Outgoing) -> None:
        try:
            n = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError as exc:
            log.info("raft: connection to %s lost: %s", conn.name, exc)
            self._drop_outgoing(conn)
            return
        if n:
            del conn.out[:n]
            self.bytes_sent += n
        self._watch(conn.sock, conn, write=bool(conn.out))

    # --- the poll ---------------------------------------------------------------------------------------
    def next_due(self) -> float | None:
        """When the next delayed frame is due (monotonic), if any."""
        return self._link.next_due() if self._link is not None else None

    def poll(self, timeout_s: float) -> None:
        """Wait up to `timeout_s` for socket events and handle them; messages go to their shard's replica."""
        self._connect_peers()
        for key, events in self._selector.select(max(0.0, timeout_s)):
            kind, conn = key.data
            if kind == "listen":
                self._accept()
            elif kind == "wakeup":
                conn()
            elif kind == "out":
                self._on_outgoing(conn, events)
            else:
                self._on_incoming(conn)
        self._expire_handshakes()

    def _connect_peers(self) -> None:
        now = time.monotonic()
        for conn in self._peers.values():
            if conn.state == "idle" and now >= conn.retry_at:
                family = socket.AF_INET6 if ":" in conn.endpoint[0] else socket.AF_INET
                sock = socket.socket(family, socket.SOCK_STREAM)
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
                err = sock.connect_ex(conn.endpoint)
                if err not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
                    sock.close()
                    conn.retry_at = now + CONNECT_RETRY_S
                    continue
                conn.sock = sock
                conn.state = "connecting"
                conn.started = now
                self._selector.register(sock, selectors.EVENT_WRITE, ("out", conn))

    def _on_outgoing(self, conn: _Outgoing, events: int) -> None:
        if conn.state == "connecting":
            err = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._drop_outgoing(conn, notify=False)
                return
            conn.state = "greeting"
            self._watch(conn.sock, conn, write=False)
            return
        if events & selectors.EVENT_READ:
            try:
                data = conn.sock.recv(wire.GREETING_SIZE)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                data = b""
            if data == b"":
                self._drop_outgoing(conn)
                return
            if data and conn.state == "greeting":
                conn.inbox += data
                if len(conn.inbox) >= wire.GREETING_SIZE:
                    try:
                        nonce_a = wire.parse_greeting(bytes(conn.inbox[:wire.GREETING_SIZE]))
                    except wire.WireError as exc:
                        log.warning("raft: %s at %s is not a tidebank node: %s", conn.name, conn.endpoint, exc)
                        self._drop_outgoing(conn, notify=False)
                        return
                    message, session = wire.hello(self._key, nonce_a, self.name)
                    conn.sealer = wire.Sealer(session)
                    conn.out = bytearray(message) + conn.out
                    conn.state = "ready"
                    conn.inbox = bytearray()
                    log.info("raft: connected to %s", conn.name)
                    for group in list(self._groups.values()):
                        group.peer_connected(conn.name)
        if events & selectors.EVENT_WRITE and conn.state == "ready":
            self._write(conn)

    def _watch(self, sock: socket.socket, conn: _Outgoing, *, write: bool) -> None:
        mask = selectors.EVENT_READ | (selectors.EVENT_WRITE if write else 0)
        try:
            self._selector.modify(sock, mask, ("out", conn))
        except (KeyError, ValueError):
            pass

    def _drop_outgoing(self, conn: _Outgoing, *, notify: bool = True) -> None:
        was_ready = conn.state == "ready"
        if conn.sock is not None:
            try:
                self._selector.unregister(conn.sock)
            except (KeyError, ValueError):
                pass
            conn.sock.close()
        conn.sock = None
        conn.state = "idle"
        conn.sealer = None
        conn.out = bytearray()
        conn.inbox = bytearray()
        conn.retry_at = time.monotonic() + CONNECT_RETRY_S
        self._pending.pop(conn.name, None)
        if was_ready and notify:
            for group in list(self._groups.values()):
                group.peer_disconnected(conn.name)

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("raft: accept failed: %s", exc)
                return
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BUFFER_BYTES)
            conn = _Incoming(sock, wire.new_nonce())
            self._incoming[sock.fileno()] = conn
            try:
                sent = sock.send(conn.greeting)
                del conn.greeting[:sent]
            except OSError:
                self._drop_incoming(conn)
                continue
            self._selector.register(sock, selectors.EVENT_READ, ("in", conn))

    def _on_incoming(self, conn: _Incoming) -> None:
        try:
            data = conn.sock.recv(READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop_incoming(conn)
            return
        self.bytes_received += len(data)
        conn.inbox += data
        try:
            self._consume(conn)
        except wire.WireError as exc:
            self.rejected_connections += 1
            log.warning("raft: dropping a connection from %s: %s", conn.name or "an unknown peer", exc)
            self._drop_incoming(conn)

    def _consume(self, conn: _Incoming) -> None:
        inbox = conn.inbox
        pos = 0
        if conn.opener is None:
            if len(inbox) < 1 or len(inbox) < wire.hello_size(inbox[0]):
                return
            size = wire.hello_size(inbox[0])
            name, session = wire.check_hello(self._key, conn.nonce, bytes(inbox[:size]))
            if name not in self._peers:
                raise wire.WireError(f"{name!r} is not a peer of this node")
            conn.name = name
            conn.opener = wire.Opener(session)
            pos = size
        header = wire.FRAME_HEADER
        try:
            while len(inbox) - pos >= header.size:
                length, mac = header.unpack_from(inbox, pos)
                if length > wire.FRAME_BYTES_MAX:
                    raise wire.WireError(f"frame of {length} bytes")
                end = pos + header.size + length
                if len(inbox) < end:
                    break
                payload = bytes(inbox[pos + header.size:end])
                conn.opener.open(mac, payload)
                messages = wire.decode_messages(payload)
                pos = end
                self.frames_received += 1
                self._dispatch(conn.name, messages)
        finally:
            if pos:
                del inbox[:pos]

    def _dispatch(self, peer: str, messages: list[tuple[int, dict]]) -> None:
        if self._link is not None and not self._link.accept_from(self._peers[peer]):
            return  # simulated cut: the frame never arrived
        node = PeerNode(peer)
        self.messages_received += len(messages)
        for shard_id, message in messages:
            group = self._groups.get(shard_id)
            if group is not None:
                try:
                    group.deliver(node, message)
                except Exception:  # a bug in one shard's handling must not stop the node's Raft traffic
                    log.exception("raft: shard %d failed to handle %s from %s", shard_id, message.get("type"),
                                  peer)

    def _drop_incoming(self, conn: _Incoming) -> None:
        self._incoming.pop(conn.sock.fileno(), None)
        try:
            self._selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()

    def _expire_handshakes(self) -> None:
        now = time.monotonic()
        for conn in list(self._incoming.values()):
            if conn.opener is None and now - conn.started > HANDSHAKE_TIMEOUT_S:
                self.rejected_connections += 1
                self._drop_incoming(conn)
        for conn in self._peers.values():
            if conn.state in ("connecting", "greeting") and now - conn.started > CONNECT_TIMEOUT_S:
                self._drop_outgoing(conn, notify=False)

    # --- status -----------------------------------------------------------------------------------------
    def connected_peers(self) -> list[str]:
        return sorted(name for name, conn in self._peers.items() if conn.state == "ready")

    def stats(self) -> dict[str, int]:
        out = {"frames_sent": self.frames_sent, "frames_received": self.frames_received,
               "messages_sent": self.messages_sent, "messages_received": self.messages_received,
               "bytes_sent": self.bytes_sent, "bytes_received": self.bytes_received,
               "rejected_connections": self.rejected_connections}
        if self._link is not None:
            out.update(self._link.stats())
        return out

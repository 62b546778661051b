"""Measure what the durable journal (group fdatasync) costs a Raft group.

Three ShardReplicas run in three processes on loopback. The leader's process submits N
payloads keeping up to W in flight and reports ops/s and latency, with fsync on and
off. Not a test; run it by hand:

    .venv/bin/python bench/journal_cost.py --n 20000 --inflight 1 100 1000

Numbers depend on the disk (fdatasync latency) and on the number of cores: three
replicas plus the load generator share this machine's CPUs.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import pathlib
import socket
import tempfile
import threading
import time


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _run_load(replica, n: int, inflight: int, size: int, tag: bytes) -> dict:
    """Submit n payloads keeping up to `inflight` outstanding; runs in the leader's process."""
    from pysyncobj.config import FAIL_REASON

    window = threading.Semaphore(inflight)
    done = threading.Event()
    lock = threading.Lock()
    latencies: list[float] = []
    errors: dict[int, int] = {}
    pad = b"p" * max(0, size - 24)

    def make_cb(t0: float):
        def cb(result, err):
            lat = time.perf_counter() - t0
            with lock:
                if err == FAIL_REASON.SUCCESS:
                    latencies.append(lat)
                else:
                    errors[err] = errors.get(err, 0) + 1
                if len(latencies) + sum(errors.values()) == n:
                    done.set()
            window.release()

        return cb

    syncs0 = replica.status()["journal_sync_count"]
    start = time.perf_counter()
    for i in range(n):
        window.acquire()
        replica.submit(b"%s%012d" % (tag, i) + pad, make_cb(time.perf_counter()))
    done.wait(300)
    elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "elapsed": elapsed,
        "ok": len(latencies),
        "errors": errors,
        "p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else float("nan"),
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)] if latencies else float("nan"),
        "leader_syncs": replica.status()["journal_sync_count"] - syncs0,
    }


def _replica_process(conn, addr: str, addrs: list[str], data_dir: str, fsync: bool) -> None:
    from tidebank.node.raft.loop import RaftHost
    from tidebank.node.raft.replica import RaftTuning, ShardReplica

    def apply_fn(txn, payload: bytes):
        txn.put(payload[:16], payload)
        return None

    endpoints = {a: (a.rsplit(":", 1)[0], int(a.rsplit(":", 1)[1])) for a in addrs}
    host = RaftHost(addr, endpoints[addr], endpoints, "bench-secret")
    host.start()
    replica = ShardReplica(
        shard_id=1,
        host=host,
        members=list(addrs),
        data_dir=pathlib.Path(data_dir),
        apply_fn=apply_fn,
        raft=RaftTuning(log_compaction_min_entries=50_000),
        fsync=fsync,
    )
    try:
        while True:
            cmd, *args = conn.recv()
            if cmd == "is_leader":
                conn.send(replica.is_leader())
            elif cmd == "status":
                conn.send(replica.status())
            elif cmd == "run":
                conn.send(_run_load(replica, *args))
            elif cmd == "stop":
                break
    finally:
        replica.close()
        host.close()
        conn.send("closed")


def run_mode(fsync: bool, n: int, inflights: list[int], size: int, root: pathlib.Path) -> list[dict]:
    ctx = mp.get_context("spawn")
    addrs = [f"127.0.0.1:{p}" for p in _free_ports(3)]
    procs, conns = [], []
    for i, addr in enumerate(addrs):
        parent, child = ctx.Pipe()
        p = ctx.Process(target=_replica_process, args=(child, addr, addrs, str(root / f"r{i}"), fsync), daemon=True)
        p.start()
        procs.append(p)
        conns.append(parent)
    rows = []
    try:
        deadline = time.monotonic() + 30
        leader = None
        while leader is None and time.monotonic() < deadline:
            for c in conns:
                c.send(("is_leader",))
            flags = [c.recv() for c in conns]
            if flags.count(True) == 1:
                leader = conns[flags.index(True)]
            else:
                time.sleep(0.05)
        if leader is None:
            raise RuntimeError("no leader elected")
        leader.send(("run", min(n, 2000), 200, size, b"warm"))
        leader.recv()
        for w in inflights:
            follower_syncs0 = []
            for c in conns:
                if c is not leader:
                    c.send(("status",))
                    follower_syncs0.append(c.recv()["journal_sync_count"])
            count = n if w > 1 else min(n, 500)
            leader.send(("run", count, w, size, b"w%06d" % w))
            res = leader.recv()
            follower_syncs = []
            for c in conns:
                if c is not leader:
                    c.send(("status",))
                    follower_syncs.append(c.recv()["journal_sync_count"])
            res.update(
                fsync=fsync,
                inflight=w,
                n=count,
                ops_per_s=res["ok"] / res["elapsed"],
                follower_syncs=[b - a for a, b in zip(follower_syncs0, follower_syncs, strict=True)],
            )
            rows.append(res)
    finally:
        for c in conns:
            try:
                c.send(("stop",))
                c.recv()
            except (OSError, EOFError):
                pass
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20_000, help="submits per measurement")
    ap.add_argument("--inflight", type=int, nargs="+", default=[1, 100, 1000])
    ap.add_argument("--size", type=int, default=128, help="payload bytes")
    ap.add_argument("--dir", default=None, help="data directory (default: a temp dir)")
    args = ap.parse_args()
    base = pathlib.Path(args.dir) if args.dir else pathlib.Path(tempfile.mkdtemp(prefix="journal-cost-"))
    print(f"data under {base} ({os.cpu_count()} CPUs)")
    print(
        f"{'fsync':>5} {'inflight':>8} {'n':>7} {'ops/s':>9} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'leader syncs':>12} {'ops/sync':>8} {'follower syncs':>15} errors"
    )
    for fsync in (True, False):
        for r in run_mode(fsync, args.n, args.inflight, args.size, base / ("fsync" if fsync else "nofsync")):
            per_sync = r["ok"] / r["leader_syncs"] if r["leader_syncs"] else float("nan")
            print(
                f"{'on' if r['fsync'] else 'off':>5} {r['inflight']:>8} {r['n']:>7} {r['ops_per_s']:>9.0f} "
                f"{r['p50_ms']:>7.1f} {r['p99_ms']:>7.1f} {r['leader_syncs']:>12} {per_sync:>8.1f} "
                f"{str(r['follower_syncs']):>15} {r['errors'] or ''}"
            )


if __name__ == "__main__":
    main()

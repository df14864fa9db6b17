#!/usr/bin/env python3
"""kvload: the paper's memaslap workload against a memcached-protocol server (a client app).

Side of the trust boundary: neither; this is the load generator that plays the remote
clients, run outside any enclave. Use it where Debian's memcaslap is not installed.

The workload is memaslap's: a closed loop over N connections (each has one request in flight
and sends the next as soon as the answer arrives), gets and sets in a 9:1 ratio, keys drawn
uniformly from a fixed key space, values from a size distribution, a warm-up that sets every
key once before measuring, and a run of a given duration or number of operations. Connections
are spread over a few processes so the Python client is not the bottleneck. It prints
ops/s and latency percentiles and can write them as JSON.

Errors are counted, never hidden: any answer other than VALUE/END for a get and STORED for a
set (SERVER_ERROR, CLIENT_ERROR, a closed connection, a malformed reply) is one error.
"""
from __future__ import annotations

import argparse
import array
import json
import multiprocessing
import os
import random
import selectors
import socket
import sys
import time

# memaslap's defaults: 64-byte keys, 1 KB values, get:set 9:1.
DEFAULT_KEY_SIZE = 64
DEFAULT_VALUE_SIZE = "1024"
WARMUP_BATCH = 64


def parse_value_sizes(text: str) -> list[tuple[int, int, float]]:
    """'1024' (fixed), '100-2000' (uniform), or '512:0.7,4096:0.3' / '1-64:1,1000-2000:3'
    (weighted ranges, as memaslap's value distribution). Returns (lo, hi, weight) rows."""
    rows = []
    for part in text.split(","):
        size, _, weight = part.partition(":")
        lo, _, hi = size.partition("-")
        lo_i = int(lo)
        hi_i = int(hi) if hi else lo_i
        w = float(weight) if weight else 1.0
        if lo_i < 1 or hi_i < lo_i or w <= 0:
            raise argparse.ArgumentTypeError(f"bad value size {part!r}")
        rows.append((lo_i, hi_i, w))
    return rows


def parse_duration(text: str) -> float:
    t = text.strip().lower()
    mult = {"s": 1, "m": 60, "h": 3600}.get(t[-1:], None)
    return float(t[:-1]) * mult if mult else float(t)


class Workload:
    """The keys and values of one run; deterministic for a seed."""

    def __init__(self, keys: int, key_size: int, value_sizes: list[tuple[int, int, float]],
                 seed: int) -> None:
        self.nkeys = keys
        self.key_size = key_size
        self.sizes = value_sizes
        self.max_value = max(hi for _, hi, _ in value_sizes)
        rnd = random.Random(seed)
        # Values are slices of one random blob: building them costs the client nothing.
        # A value is blob[off:off + n] with off < 4096, so the blob is at least 4 KB longer
        # than the largest value.
        self.blob = rnd.randbytes(4096) * (self.max_value // 4096 + 2)

    def key(self, i: int) -> bytes:
        k = b"kvload:%d:" % i
        return k + b"x" * (self.key_size - len(k)) if len(k) < self.key_size else k

    def value_size(self, rnd: random.Random) -> int:
        rows = self.sizes
        if len(rows) == 1:
            lo, hi, _ = rows[0]
        else:
            lo, hi, _ = rnd.choices(rows, weights=[w for _, _, w in rows])[0]
        return lo if lo == hi else rnd.randint(lo, hi)

    def set_request(self, i: int, rnd: random.Random) -> bytes:
        n = self.value_size(rnd)
        off = rnd.randrange(0, 4096)
        return b"set %s 0 0 %d\r\n%s\r\n" % (self.key(i), n, self.blob[off:off + n])


class _Conn:
    __slots__ = ("sock", "buf", "kind", "t0", "wbuf")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.kind = 0       # 1 get, 2 set
        self.t0 = 0
        self.wbuf = b""


def _reply_done(conn: _Conn) -> int:
    """0 = incomplete, 1 = hit, 2 = miss, 3 = stored, -1 = error reply."""
    buf = conn.buf
    if conn.kind == 2:
        nl = buf.find(b"\n")
        if nl < 0:
            return 0
        return 3 if buf[:nl + 1] == b"STORED\r\n" else -1
    if buf.startswith(b"END\r\n"):
        return 2
    if buf.startswith(b"VALUE "):
        nl = buf.find(b"\n")
        if nl < 0:
            return 0
        try:
            n = int(buf[:nl].split()[3])
        except (IndexError, ValueError):
            return -1
        need = nl + 1 + n + 2 + 5
        if len(buf) < need:
            return 0
        return 1 if buf[need - 5:need] == b"END\r\n" else -1
    if b"\n" in buf or len(buf) >= 6:
        return -1
    return 0


def _worker(addr: tuple[str, int], nconns: int, wl: Workload, get_ratio: float,
            deadline: float | None, ops: int | None, seed: int, out) -> None:
    rnd = random.Random(seed)
    sel = selectors.DefaultSelector()
    conns = []
    result = {"gets": 0, "sets": 0, "hits": 0, "misses": 0, "errors": 0, "ops": 0}
    lat = array.array("d")
    try:
        for _ in range(nconns):
            s = socket.create_connection(addr)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.setblocking(False)
            c = _Conn(s)
            conns.append(c)
            sel.register(s, selectors.EVENT_READ, c)
        sent = 0
        limit = ops if ops is not None else 1 << 62

        def issue(c: _Conn) -> None:
            nonlocal sent
            i = rnd.randrange(wl.nkeys)
            if rnd.random() < get_ratio:
                c.kind = 1
                req = b"get %s\r\n" % wl.key(i)
            else:
                c.kind = 2
                req = wl.set_request(i, rnd)
            sent += 1
            c.t0 = time.perf_counter_ns()
            try:
                n = c.sock.send(req)
            except BlockingIOError:
                n = 0
            if n < len(req):
                c.wbuf = req[n:]
                sel.modify(c.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, c)

        for c in conns:
            issue(c)
        inflight = len(conns)
        while inflight:
            for key, mask in sel.select(1.0):
                c = key.data
                if mask & selectors.EVENT_WRITE and c.wbuf:
                    n = c.sock.send(c.wbuf)
                    c.wbuf = c.wbuf[n:]
                    if not c.wbuf:
                        sel.modify(c.sock, selectors.EVENT_READ, c)
                if not mask & selectors.EVENT_READ:
                    continue
                try:
                    data = c.sock.recv(262144)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    result["errors"] += 1       # the server closed a connection
                    sel.unregister(c.sock)
                    inflight -= 1
                    continue
                c.buf += data
                r = _reply_done(c)
                if r == 0:
                    continue
                lat.append((time.perf_counter_ns() - c.t0) / 1000.0)
                result["ops"] += 1
                if c.kind == 1:
                    result["gets"] += 1
                else:
                    result["sets"] += 1
                if r == 1:
                    result["hits"] += 1
                elif r == 2:
                    result["misses"] += 1
                elif r < 0:
                    result["errors"] += 1
                c.buf.clear()
                if (deadline is not None and time.perf_counter() >= deadline) or sent >= limit:
                    sel.unregister(c.sock)
                    inflight -= 1
                else:
                    issue(c)
    except OSError as e:
        result["errors"] += 1
        result["error"] = f"{type(e).__name__}: {e}"
    finally:
        for c in conns:
            c.sock.close()
        sel.close()
    out.send((result, lat.tobytes()))
    out.close()


def warmup(addr: tuple[str, int], wl: Workload, first: int, last: int, seed: int) -> int:
    """Set keys [first, last) once, pipelined in batches; returns the number of errors."""
    rnd = random.Random(seed)
    errors = 0
    with socket.create_connection(addr) as s:
        f = s.makefile("rb")
        for lo in range(first, last, WARMUP_BATCH):
            hi = min(last, lo + WARMUP_BATCH)
            s.sendall(b"".join(wl.set_request(i, rnd) for i in range(lo, hi)))
            for _ in range(lo, hi):
                line = f.readline()
                if line != b"STORED\r\n":
                    errors += 1
                    if not line:
                        return errors + (hi - lo)
        f.close()
    return errors


def percentile(sorted_vals, q: float) -> float:
    if not sorted_vals:
        return 0.0
    i = min(len(sorted_vals) - 1, max(0, int(round(q / 100.0 * (len(sorted_vals) - 1)))))
    return sorted_vals[i]


def run(args: argparse.Namespace) -> dict:
    host, _, port = args.servers.rpartition(":")
    addr = (host or "127.0.0.1", int(port))
    wl = Workload(args.keys, args.key_size, args.value_size, args.seed)
    ctx = multiprocessing.get_context("fork")
    procs = max(1, min(args.processes, args.concurrency))
    warm_errors = 0
    t_warm = 0.0
    if args.warmup:
        t0 = time.perf_counter()
        step = (args.keys + procs - 1) // procs
        with ctx.Pool(procs) as pool:
            warm_errors = sum(pool.starmap(
                warmup, [(addr, wl, i * step, min(args.keys, (i + 1) * step), args.seed + i)
                         for i in range(procs)]))
        t_warm = time.perf_counter() - t0
    get_ratio = args.get / float(args.get + args.set)
    per = [args.concurrency // procs + (1 if i < args.concurrency % procs else 0)
           for i in range(procs)]
    t0 = time.perf_counter()
    deadline = t0 + args.time if args.execute_number is None else None
    ops_each = None
    if args.execute_number is not None:
        ops_each = [args.execute_number // procs + (1 if i < args.execute_number % procs else 0)
                    for i in range(procs)]
    pipes, children = [], []
    for i in range(procs):
        rx, tx = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_worker, args=(addr, per[i], wl, get_ratio, deadline,
                                              ops_each[i] if ops_each else None,
                                              args.seed * 1000 + i, tx))
        p.start()
        tx.close()
        pipes.append(rx)
        children.append(p)
    total = {"gets": 0, "sets": 0, "hits": 0, "misses": 0, "errors": 0, "ops": 0}
    lat = array.array("d")
    notes = []
    for rx in pipes:
        try:
            res, raw = rx.recv()
        except EOFError:
            total["errors"] += 1
            notes.append("a worker process died")
            continue
        for k in total:
            total[k] += res[k]
        if "error" in res:
            notes.append(res["error"])
        part = array.array("d")
        part.frombytes(raw)
        lat.extend(part)
    elapsed = time.perf_counter() - t0
    for p in children:
        p.join()
    vals = sorted(lat)
    report = {
        "tool": "kvload",
        "server": f"{addr[0]}:{addr[1]}",
        "connections": args.concurrency,
        "processes": procs,
        "keys": args.keys,
        "key_size": args.key_size,
        "value_size": ",".join(f"{lo}-{hi}:{w:g}" for lo, hi, w in args.value_size),
        "get_set_ratio": f"{args.get}:{args.set}",
        "warmup_s": round(t_warm, 3),
        "warmup_errors": warm_errors,
        "duration_s": round(elapsed, 3),
        "ops": total["ops"],
        "ops_per_s": round(total["ops"] / elapsed, 1) if elapsed > 0 else 0.0,
        "gets": total["gets"], "sets": total["sets"],
        "get_hits": total["hits"], "get_misses": total["misses"],
        "errors": total["errors"] + warm_errors,
        "latency_us": {
            "mean": round(sum(vals) / len(vals), 1) if vals else 0.0,
            "p50": round(percentile(vals, 50), 1), "p90": round(percentile(vals, 90), 1),
            "p99": round(percentile(vals, 99), 1), "p99.9": round(percentile(vals, 99.9), 1),
            "max": round(vals[-1], 1) if vals else 0.0,
        },
        "notes": notes,
    }
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kvload", description=__doc__.splitlines()[0])
    p.add_argument("-s", "--servers", default="127.0.0.1:11211", help="host:port")
    p.add_argument("-c", "--concurrency", type=int, default=16, help="connections (default 16)")
    p.add_argument("-P", "--processes", type=int, default=max(1, min(4, os.cpu_count() or 1)),
                   help="client processes the connections are spread over")
    p.add_argument("-t", "--time", type=parse_duration, default=5.0,
                   help="run length, e.g. 10s, 1m (default 5s)")
    p.add_argument("-x", "--execute-number", type=int, default=None,
                   help="run this many operations instead of a duration")
    p.add_argument("--get", type=int, default=9, help="get share of get:set (default 9)")
    p.add_argument("--set", type=int, default=1, help="set share of get:set (default 1)")
    p.add_argument("-k", "--keys", type=int, default=10000, help="key space (default 10000)")
    p.add_argument("--key-size", type=int, default=DEFAULT_KEY_SIZE)
    p.add_argument("--value-size", type=parse_value_sizes, default=parse_value_sizes(
        DEFAULT_VALUE_SIZE), help="N, LO-HI or weighted LO-HI:W,... (default 1024)")
    p.add_argument("--no-warmup", dest="warmup", action="store_false",
                   help="skip setting every key once before the run")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", metavar="PATH", help="also write the report as JSON here ('-' = stdout)")
    p.add_argument("-q", "--quiet", action="store_true", help="no table")
    args = p.parse_args(argv)
    if args.concurrency < 1 or args.keys < 1 or args.get < 0 or args.set < 0 \
            or args.get + args.set == 0 or not 8 <= args.key_size <= 250:
        p.error("need -c >= 1, -k >= 1, get+set > 0, 8 <= key size <= 250")
    report = run(args)
    if not args.quiet:
        lat = report["latency_us"]
        print(f"kvload {report['server']}: {report['connections']} conns / "
              f"{report['processes']} procs, get:set {report['get_set_ratio']}, "
              f"{report['keys']} keys, values {report['value_size']}")
        print(f"  ops/s {report['ops_per_s']:.0f}  ops {report['ops']}  "
              f"hits {report['get_hits']}  misses {report['get_misses']}  "
              f"errors {report['errors']}")
        print(f"  latency us: p50 {lat['p50']}  p90 {lat['p90']}  p99 {lat['p99']}  "
              f"p99.9 {lat['p99.9']}  max {lat['max']}")
        for n in report["notes"]:
            print("  note:", n)
    if args.json == "-":
        json.dump(report, sys.stdout, indent=1)
        print()
    elif args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0 if report["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

"""What each syscall path costs an app: direct vs OCALL vs exit-less RPC (issue 3).

The app's own calls, made through the installed LibOS as an unmodified app makes them:
  null   one os.write of 1 byte to /dev/null (a null-ish call)
  pipe   a 64-byte os.write into a pipe and the os.read of it back (2 calls)
  tcp    a 64-byte ping-pong over a TCP connection on 127.0.0.1 whose both ends the thread
         holds: send, recv on the other end, send back, recv (4 calls; data is always there,
         so no call waits and every one can go through the ring)
with 1 and 4 app threads at once, under direct (routed, no exit), ocall (EEXIT + EENTER +
indirect cost, spent: ELEOS_COST=spin) and rpc (ring + 1 native worker, the defaults).
Per operation: the median over runs of the mean time each thread saw per operation.  Ratios
ocall/rpc and rpc/direct in the same run; the RPC worker's CPU time per call it served; the
share of calls that fell back to an OCALL.

The C floor, no Python in the loop: a NOP on each path (the transport's bench), a NOP through
the ring alone (enclave_rpc_nop_loop), and the cross-core hand-off floor of this machine (one
value bounced between two threads) that the ring round trip should come near.

    python benchmarks/syscall_paths.py [--scale S] [--runs R] [--json PATH]
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import machine, machine_line, median, table, write_json  # noqa: E402
from eleos_shim.config import Config  # noqa: E402
from eleos_shim.enclave import Enclave  # noqa: E402

PAYLOAD = b"p" * 64
PATHS = ("direct", "ocall", "rpc")
THREADS = (1, 4)


class Null:
    calls = 1
    iters = 4000

    def __init__(self):
        self.fd = os.open(os.devnull, os.O_WRONLY)

    def op(self):
        os.write(self.fd, b"x")

    def close(self):
        os.close(self.fd)


class Pipe:
    calls = 2
    iters = 2000

    def __init__(self):
        self.r, self.w = os.pipe()

    def op(self):
        os.write(self.w, PAYLOAD)
        os.read(self.r, 64)

    def close(self):
        os.close(self.r)
        os.close(self.w)


class Tcp:
    calls = 4
    iters = 1000

    def __init__(self):
        with socket.create_server(("127.0.0.1", 0)) as srv:
            self.a = socket.create_connection(srv.getsockname())
            self.b, _ = srv.accept()
        for s in (self.a, self.b):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    @staticmethod
    def _recv(s):
        got = s.recv(64)
        while len(got) < 64:
            got += s.recv(64 - len(got))
        return got

    def op(self):
        self.a.send(PAYLOAD)
        self.b.send(self._recv(self.b))
        self._recv(self.a)

    def close(self):
        self.a.close()
        self.b.close()


WORKLOADS = {"null": Null, "pipe": Pipe, "tcp": Tcp}


def run_threads(kind, nthreads: int, iters: int, runs: int) -> list[float]:
    """Seconds per operation, one sample per run (mean over the threads of what each saw)."""
    samples = []
    for _ in range(runs):
        barrier = threading.Barrier(nthreads)
        times = [0.0] * nthreads
        errors = []

        def worker(k):
            try:
                w = kind()
                try:
                    for _ in range(min(50, iters)):
                        w.op()                      # warm up: staging buffers, workers awake
                    barrier.wait()
                    t0 = time.perf_counter()
                    for _ in range(iters):
                        w.op()
                    times[k] = (time.perf_counter() - t0) / iters
                finally:
                    w.close()
            except BaseException as exc:           # report, do not hang the barrier
                errors.append(exc)
                barrier.abort()

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(nthreads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        samples.append(sum(times) / nthreads)
    return samples


def measure(path: str, scale: float, runs: int) -> dict:
    cfg = Config.from_env({}, mode="native", syscalls=path, cost="spin")
    enclave = Enclave(cfg).start(route=True)
    rows = {}
    try:
        for name, kind in WORKLOADS.items():
            iters = max(20, int(kind.iters * scale))
            for nthreads in THREADS:
                rpc0 = enclave.host.rpc.stats() if enclave.host.rpc else None
                counts0 = enclave.transport.counts()
                samples = run_threads(kind, nthreads, iters, runs)
                counts1 = enclave.transport.counts()
                row = {"op_ns": median(samples) * 1e9, "samples_ns": [s * 1e9 for s in samples],
                       "calls_per_op": kind.calls, "iters": iters}
                served = sum(c["rpc"] for c in counts1.values()) - sum(c["rpc"] for c in counts0.values())
                fell = (sum(c["fallback"] for c in counts1.values())
                        - sum(c["fallback"] for c in counts0.values()))
                if rpc0 is not None:
                    rpc1 = enclave.host.rpc.stats()
                    done = rpc1["processed"] - rpc0["processed"]
                    cpu = rpc1["worker_cpu_s"] - rpc0["worker_cpu_s"]
                    row["worker_cpu_ns_per_call"] = cpu / done * 1e9 if done else float("nan")
                    row["fallback_share"] = fell / (served + fell) if served + fell else 0.0
                rows[(name, nthreads)] = row
        floor = {}
        n = int(200_000 * scale) or 1000
        floor["transport_nop_ns"] = median(enclave.transport.bench(n) for _ in range(runs)) * 1e9
        if path == "rpc":
            from trusted._native._enclave import lib as elib
            ring = enclave.host.rpc.ring_addr
            spin = cfg.rpc_spin
            elib.enclave_rpc_nop_loop(ring, 1000, spin)              # warm up
            ring_ns = []
            for _ in range(runs):
                t0 = time.perf_counter()
                done = elib.enclave_rpc_nop_loop(ring, n, spin)
                ring_ns.append((time.perf_counter() - t0) / n * 1e9)
                floor["ring_nop_served"] = done / n
            floor["ring_nop_ns"] = median(ring_ns)
    finally:
        enclave.close()
        enclave.uninstall()
    return {"path": path, "rows": rows, "floor": floor}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the iteration counts")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    m = machine()
    from untrusted._native._host import lib as hlib
    handoff = median(hlib.rpc_handoff_floor_ns(int(200_000 * args.scale) or 1000)
                     for _ in range(args.runs))
    results = {p: measure(p, args.scale, args.runs) for p in PATHS}
    print(machine_line(m))
    print("cost model: spin (EEXIT 3800 + EENTER 3300 cycles + pollution per OCALL); rpc: 1 worker, "
          "defaults\n")
    rows, json_rows = [], []
    for name in WORKLOADS:
        for nthreads in THREADS:
            d, o, r = (results[p]["rows"][(name, nthreads)] for p in PATHS)
            rows.append([name, nthreads, d["op_ns"], o["op_ns"], r["op_ns"],
                         o["op_ns"] / r["op_ns"], r["op_ns"] / d["op_ns"],
                         (r["op_ns"] - d["op_ns"]) / r["calls_per_op"],
                         r["worker_cpu_ns_per_call"], 100 * r["fallback_share"]])
            json_rows.append({"workload": name, "threads": nthreads, "direct": d, "ocall": o,
                              "rpc": r, "ocall_over_rpc": o["op_ns"] / r["op_ns"],
                              "rpc_over_direct": r["op_ns"] / d["op_ns"]})
    print("per operation, ns (median of runs; with 4 threads: what each thread saw)")
    print(table(["op", "threads", "direct", "ocall", "rpc", "ocall/rpc", "rpc/direct",
                 "rpc-direct per call", "worker CPU ns/call", "fallback %"], rows))
    f = {p: results[p]["floor"] for p in PATHS}
    print("\nC floor (no Python in the loop), ns per call")
    print(table(["what", "ns"], [
        ["NOP, direct path", f["direct"]["transport_nop_ns"]],
        ["NOP, ocall path", f["ocall"]["transport_nop_ns"]],
        ["NOP, rpc path (through the stub)", f["rpc"]["transport_nop_ns"]],
        ["NOP, ring round trip alone", f["rpc"]["ring_nop_ns"]],
        ["cross-core hand-off floor", handoff],
    ]))
    print(f"(ring NOPs served by the worker: {100 * f['rpc']['ring_nop_served']:.1f}%)")
    path = write_json("syscall_paths", {
        "machine": m, "scale": args.scale, "runs": args.runs, "rows": json_rows,
        "floor": f, "handoff_floor_ns": handoff}, args.json)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

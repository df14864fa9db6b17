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
the ring alone (enclave_rpc_nop_loop, worker kept awake), and the cross-core hand-off floor of
this machine (one value bounced between two threads) that the ring round trip should come near.

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

from benchmarks.common import figure_path, machine, machine_line, median, plot_bars, table, write_json  # noqa: E402
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


def run_threads(kind, nthreads: int, iters: int) -> float:
    """Seconds per operation: the mean over the threads of what each one saw."""
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
    return sum(times) / nthreads


def sample_plain(scale: float) -> dict:
    """One run of every workload in plain Python, no shim at all: what the LibOS costs."""
    return {f"{name}/{n}": {"op_ns": run_threads(kind, n, max(20, int(kind.iters * scale))) * 1e9}
            for name, kind in WORKLOADS.items() for n in THREADS}


TIME_SCALE = 1.0    # ELEOS_TIME_SCALE of the enclaves (--time-scale)


def sample(path: str, scale: float) -> dict:
    """One run of every workload on one path (one enclave started and closed)."""
    cfg = Config.from_env({}, mode="native", syscalls=path, cost="spin", time_scale=TIME_SCALE)
    enclave = Enclave(cfg).start(route=True)
    rows = {}
    try:
        rpc = enclave.host.rpc
        for name, kind in WORKLOADS.items():
            iters = max(20, int(kind.iters * scale))
            for nthreads in THREADS:
                rpc0 = rpc.stats() if rpc else None
                c0 = enclave.transport.counts()
                op_s = run_threads(kind, nthreads, iters)
                c1 = enclave.transport.counts()
                row = {"op_ns": op_s * 1e9, "calls_per_op": kind.calls, "iters": iters}
                if rpc is not None:
                    rpc1 = rpc.stats()
                    done = rpc1["processed"] - rpc0["processed"]
                    cpu = rpc1["worker_cpu_s"] - rpc0["worker_cpu_s"]
                    served = sum(c["rpc"] for c in c1.values()) - sum(c["rpc"] for c in c0.values())
                    fell = (sum(c["fallback"] for c in c1.values())
                            - sum(c["fallback"] for c in c0.values()))
                    row["worker_cpu_ns_per_call"] = cpu / done * 1e9 if done else float("nan")
                    row["fallback_share"] = fell / (served + fell) if served + fell else 0.0
                rows[f"{name}/{nthreads}"] = row
        n = max(1000, int(200_000 * scale))
        floor = {"transport_nop_ns": enclave.transport.bench(n) * 1e9}
    finally:
        enclave.close()
        enclave.uninstall()
    return {"rows": rows, "floor": floor}


def ring_round_trip_ns(n: int) -> tuple[float, float]:
    """The ring alone, from C: n NOPs through a ring whose worker never sleeps, each call
    waiting as long as it takes (the mechanism, not the fallback policy).  Returns (ns per
    round trip, share served by the worker)."""
    from trusted._native._enclave import lib as elib
    from untrusted._native._host import lib as hlib
    from untrusted.rpc import RpcHost
    cfg = Config.from_env({}, rpc_workers="1", rpc_sleep=str(1 << 62))
    host = RpcHost(cfg, hlib.host_dispatch_fn())
    host.start()
    elib.enclave_rpc_attach(host.ring_addr, cfg.rpc_slots)
    try:
        elib.enclave_rpc_nop_loop(host.ring_addr, 1000, 1 << 40)          # warm up
        t0 = time.perf_counter()
        done = elib.enclave_rpc_nop_loop(host.ring_addr, n, 1 << 40)
        return (time.perf_counter() - t0) / n * 1e9, done / n
    finally:
        host.stop()
        elib.enclave_rpc_detach(host.ring_addr)
        host.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the iteration counts")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--time-scale", type=float, default=1.0,
                    help="ELEOS_TIME_SCALE of the enclaves (benchmarks/kvstore.py measures it)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    global TIME_SCALE
    TIME_SCALE = args.time_scale
    m = machine()
    from untrusted._native._host import lib as hlib
    n = max(1000, int(200_000 * args.scale))
    # Runs interleave the paths, so that load that comes and goes hits all three alike;
    # ratios are taken within a run, then the median over runs.
    runs = []
    for _ in range(args.runs):
        run = {p: sample(p, args.scale) for p in PATHS}
        run["plain"] = {"rows": sample_plain(args.scale)}
        run["handoff_ns"] = hlib.rpc_handoff_floor_ns(n)
        run["ring_nop_ns"], run["ring_nop_served"] = ring_round_trip_ns(n)
        runs.append(run)
    print(machine_line(m))
    print(f"cost model: spin (an OCALL's budget {Config().ocall_cycles} cycles, then the indirect "
          f"window; time scale {TIME_SCALE:g}); rpc: 1 worker, spin and sleep budgets at their "
          "defaults")
    print(f"median of {args.runs} runs; the ratios are medians of per-run ratios\n")

    def med(p, key, field):
        return median(r[p]["rows"][key][field] for r in runs)

    rows, json_rows = [], []
    for name in WORKLOADS:
        for nthreads in THREADS:
            key = f"{name}/{nthreads}"
            d, o, r = (med(p, key, "op_ns") for p in PATHS)
            plain = med("plain", key, "op_ns")
            o_r = median(x["ocall"]["rows"][key]["op_ns"] / x["rpc"]["rows"][key]["op_ns"] for x in runs)
            r_d = median(x["rpc"]["rows"][key]["op_ns"] / x["direct"]["rows"][key]["op_ns"] for x in runs)
            calls = WORKLOADS[name].calls
            extra = median((x["rpc"]["rows"][key]["op_ns"] - x["direct"]["rows"][key]["op_ns"]) / calls
                           for x in runs)
            cpu = med("rpc", key, "worker_cpu_ns_per_call")
            fb = med("rpc", key, "fallback_share")
            rows.append([name, nthreads, plain, d, o, r, o_r, r_d, extra, cpu, 100 * fb])
            json_rows.append({"workload": name, "threads": nthreads, "calls_per_op": calls,
                              "plain_ns": plain, "direct_ns": d, "ocall_ns": o, "rpc_ns": r,
                              "ocall_over_rpc": o_r, "rpc_minus_direct_per_call_ns": extra,
                              "rpc_over_direct": r_d, "worker_cpu_ns_per_call": cpu,
                              "fallback_share": fb})
    print("per operation, ns (with 4 threads: what each thread saw); plain = no shim at all")
    print(table(["op", "threads", "plain", "direct", "ocall", "rpc", "ocall/rpc", "rpc/direct",
                 "rpc-direct per call", "worker CPU ns/call", "fallback %"], rows))
    floor = {
        "direct_nop_ns": median(r["direct"]["floor"]["transport_nop_ns"] for r in runs),
        "ocall_nop_ns": median(r["ocall"]["floor"]["transport_nop_ns"] for r in runs),
        "rpc_nop_ns": median(r["rpc"]["floor"]["transport_nop_ns"] for r in runs),
        "ring_nop_ns": median(r["ring_nop_ns"] for r in runs),
        "ring_nop_served": median(r["ring_nop_served"] for r in runs),
        "handoff_ns": median(r["handoff_ns"] for r in runs),
    }
    print("\nC floor (no Python in the loop), ns per call")
    print(table(["what", "ns"], [
        ["NOP, direct path", floor["direct_nop_ns"]],
        ["NOP, ocall path", floor["ocall_nop_ns"]],
        ["NOP, rpc path (through the stub)", floor["rpc_nop_ns"]],
        ["NOP, ring round trip alone (worker awake)", floor["ring_nop_ns"]],
        ["cross-core hand-off floor (2 threads, 2 cache lines)", floor["handoff_ns"]],
    ]))
    print(f"(ring NOPs served by the worker: {100 * floor['ring_nop_served']:.1f}%)")
    path = write_json("syscall_paths", {
        "machine": m, "scale": args.scale, "runs": args.runs, "rows": json_rows,
        "floor": floor, "raw": runs}, args.json)
    print(f"\nwrote {path}")
    plot_bars(figure_path("syscall_paths", args.json),
              {f"{r['workload']}, {r['threads']} thr": {"plain": r["plain_ns"] / 1e3,
                                                         "direct": r["direct_ns"] / 1e3,
                                                         "ocall": r["ocall_ns"] / 1e3,
                                                         "rpc": r["rpc_ns"] / 1e3}
               for r in json_rows},
              title="one operation per syscall path (lower is better; plain = no shim)",
              ylabel="us per operation", log=True, note=machine_line(m))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

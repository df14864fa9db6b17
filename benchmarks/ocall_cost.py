"""What an OCALL costs an app: per-call latency of routed null-ish calls, direct vs ocall.

The calls are the app's own (``os.write`` of 1 byte to /dev/null, ``os.fstat``), made through
the installed LibOS exactly as an unmodified app makes them, under the direct path (routed,
no exit) and the ocall path (EEXIT + EENTER + indirect cost), with the cost model spending
its cycles (spin) and only counting them (account).  Also the C-level floor of each path
(no Python in the loop).  Medians of several runs; ratios against direct.

    python benchmarks/ocall_cost.py [--calls N] [--runs R] [--json PATH]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import figure_path, machine, machine_line, median, plot_bars, table, write_json  # noqa: E402
from eleos_shim.config import Config  # noqa: E402
from eleos_shim.enclave import Enclave  # noqa: E402


def per_call(fn, calls: int, runs: int) -> float:
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - t0) / calls)
    return median(samples)


def measure(syscalls: str, cost: str, calls: int, runs: int) -> dict:
    cfg = Config.from_env({}, mode="native", syscalls=syscalls, cost=cost)
    enclave = Enclave(cfg).start(route=True)
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        write_s = per_call(lambda: os.write(fd, b"x"), calls, runs)
        fstat_s = per_call(lambda: os.fstat(fd), calls, runs)
        os.close(fd)
        floor_s = median(enclave.transport.bench(calls) for _ in range(runs))
        exits = enclave.cpu.counters()["eexit"]
    finally:
        enclave.close()
        enclave.uninstall()
    return {"syscalls": syscalls, "cost": cost, "write_ns": write_s * 1e9,
            "fstat_ns": fstat_s * 1e9, "c_floor_ns": floor_s * 1e9, "eexits": exits}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    m = machine()
    fd = os.open(os.devnull, os.O_WRONLY)
    native = {"write_ns": per_call(lambda: os.write(fd, b"x"), args.calls, args.runs) * 1e9,
              "fstat_ns": per_call(lambda: os.fstat(fd), args.calls, args.runs) * 1e9}
    os.close(fd)
    rows = [measure(s, c, args.calls, args.runs) for c in ("spin", "account")
            for s in ("direct", "ocall")]
    base = {r["cost"]: r for r in rows if r["syscalls"] == "direct"}
    print(machine_line(m))
    print(f"plain python (no shim): os.write {native['write_ns']:.0f} ns, os.fstat {native['fstat_ns']:.0f} ns\n")
    out_rows = []
    for r in rows:
        b = base[r["cost"]]
        r["write_ratio"] = r["write_ns"] / b["write_ns"]
        r["fstat_ratio"] = r["fstat_ns"] / b["fstat_ns"]
        out_rows.append([r["syscalls"], r["cost"], r["write_ns"], r["write_ratio"], r["fstat_ns"],
                         r["fstat_ratio"], r["c_floor_ns"]])
    print(table(["path", "cost", "write ns", "x direct", "fstat ns", "x direct", "C floor ns"], out_rows))
    path = write_json("ocall_cost", {"machine": m, "native": native, "rows": rows,
                                     "calls": args.calls, "runs": args.runs}, args.json)
    print(f"\nwrote {path}")
    groups = {"1-byte os.write": {"plain python": native["write_ns"] / 1e3},
              "os.fstat": {"plain python": native["fstat_ns"] / 1e3}}
    for r in rows:
        groups["1-byte os.write"][f"{r['syscalls']} ({r['cost']})"] = r["write_ns"] / 1e3
        groups["os.fstat"][f"{r['syscalls']} ({r['cost']})"] = r["fstat_ns"] / 1e3
    plot_bars(figure_path("ocall_cost", args.json), groups, log=True,
              title="an app's routed call, per path and cost model (lower is better)",
              ylabel="us per call", note=machine_line(m))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

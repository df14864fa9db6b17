"""The paper's paging microbenchmark: SUVM vs SGX driver paging (issue 5; Eleos section 6.1).

Set-up, as the Eleos microbenchmark (suvm_read_write_sample): a region 2x to 5x the EPC
(scaled down: a 32 MB EPC), 4 KiB items, uniformly random accesses (100,000 per run, split over
the threads), read-only (copy an item out) and write-only (copy an item in), 1 and 4 threads.

* SGX paging: the region is an EPC map (eleos_shim.epc): plain memory, every access to a page
  that is not resident is a real page fault served by the modeled SGX driver (by default the
  faulting thread's own SIGBUS handler: ELDU, UFFDIO_CONTINUE, and the EWB of a victim when no
  frame is free; ``--reclaim background``: ksgxswapd),
  each fault one modeled event that pays its budget (ELEOS_EPC_FAULT_CYCLES, 40,000: the real
  part timed, a spin the rest), then the indirect cost.  The access loop is C (compiled here
  with cffi), called with the GIL released: C-speed code, so time scale 1 is the faithful one
  (``--time-scale`` multiplies the budgets anyway, to show what it does).
* SUVM: the same offsets through SUVM's C entry point ``suvm_bench_access`` (trusted/_native/
  suvm.c): software translation, in-enclave page cache (3/4 of the EPC, the config's default),
  fault handler without exits, dirty-only write-back.

Both run in the same process, interleaved run by run; medians of several runs.  Output:
throughput, SUVM's speedup over SGX paging (paper: reads 5.5x / 7x, writes 3.5x / 5.9x with
1 / 4 threads), faults per access, and the per-fault cost breakdown of SGX paging.  Constants
are the config's defaults (sourced: `python -m eleos_shim --help`); nothing is tuned to reach the
targets.  ``--traps sigbus,userfaultfd,sigsegv`` measures each trap in turn.

    python benchmarks/paging.py [--quick] [--runs R] [--epc-mb MB] [--multiples 2,5] [--json PATH]
                                [--traps auto] [--reclaim background] [--time-scale 1]
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import RESULTS, Progress, figure_path, machine, machine_line, median, plot_bars, table, write_json  # noqa: E402
from eleos_shim import suvm  # noqa: E402
from eleos_shim.config import Config  # noqa: E402
from eleos_shim.cpu import ModeledCPU  # noqa: E402
from eleos_shim.epc import EPC  # noqa: E402
from trusted.suvm import ffi as sffi, lib as slib  # noqa: E402

MB = 1 << 20
ITEM = 4096
TARGETS = {("read", 1): 5.5, ("read", 4): 7.0, ("write", 1): 3.5, ("write", 4): 5.9}

# The enclave's access loop over plain memory, as the Eleos microbenchmark's memmove of an item
# into or out of a private buffer.  A checksum of what was read keeps the reads observable.
LOOP_C = r"""
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

/* This machine's yardstick: the ns of one plain first-touch page fault (the kernel allocating
 * and zeroing an anonymous page), which every trap the driver takes also pays in some form. */
double plain_fault_ns(size_t pages)
{
    uint8_t *p = mmap(NULL, pages * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return -1;
    madvise(p, pages * 4096, MADV_NOHUGEPAGE);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (size_t i = 0; i < pages; i++) p[i * 4096] = 1;
    clock_gettime(CLOCK_MONOTONIC, &b);
    munmap(p, pages * 4096);
    return ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / (double)pages;
}
uint64_t plain_bench_access(uintptr_t base, const uint64_t *offsets, size_t n, size_t item,
                            int write)
{
    uint8_t *buf = malloc(item ? item : 1);
    uint64_t sum = 0;
    if (!buf) return 0;
    memset(buf, 0xA5, item);
    for (size_t i = 0; i < n; i++) {
        uint8_t *p = (uint8_t *)(base + offsets[i]);
        if (write) {
            buf[0] = (uint8_t)i;
            memcpy(p, buf, item);
        } else {
            memcpy(buf, p, item);
            sum += buf[i % item];
        }
    }
    free(buf);
    return sum;
}
"""


def build_loop():
    from cffi import FFI
    ffi = FFI()
    ffi.cdef("uint64_t plain_bench_access(uintptr_t base, const uint64_t *offsets, size_t n, "
             "size_t item, int write); double plain_fault_ns(size_t pages);")
    ffi.set_source("_paging_loop", LOOP_C, extra_compile_args=["-O2"])
    out = RESULTS / "_build"
    out.mkdir(parents=True, exist_ok=True)
    path = ffi.compile(tmpdir=str(out))
    spec = importlib.util.spec_from_file_location("_paging_loop", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.ffi, mod.lib


def in_threads(work, chunks) -> float:
    """Run ``work(chunk)`` in one thread per chunk, all released together; wall seconds from
    the first start to the last end."""
    starts, ends = [], []
    barrier = threading.Barrier(len(chunks))

    def body(chunk):
        barrier.wait()
        starts.append(time.perf_counter())
        work(chunk)
        ends.append(time.perf_counter())

    threads = [threading.Thread(target=body, args=(c,)) for c in chunks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return max(ends) - min(starts)


def offsets_for(region, count, seed):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, region // ITEM, count) * ITEM).astype(np.uint64)


def split(arr, nthreads):
    return [np.ascontiguousarray(c) for c in np.array_split(arr, nthreads)]


class SgxSide:
    def __init__(self, epc, lffi, llib, region):
        self.epc, self.lffi, self.llib = epc, lffi, llib
        self.map = epc.map(region)
        self.base = self.map.address
        seq = np.arange(0, region, ITEM, dtype=np.uint64)
        self._run([seq], 1)                       # every page written once: sealed or resident

    def _run(self, chunks, write):
        def work(c):
            buf = self.lffi.from_buffer("uint64_t[]", c)
            self.llib.plain_bench_access(self.base, buf, len(c), ITEM, write)
        return in_threads(work, chunks)

    def run(self, offs, nthreads, write):
        ModeledCPU.reset()
        c0 = self.epc.counters()
        dt = self._run(split(offs, nthreads), write)
        c1 = self.epc.counters()
        d = {k: c1[k] - c0[k] for k in c1 if isinstance(c1[k], int)}
        d["event"] = ModeledCPU.events()["epc_fault"]
        paid, real = ModeledCPU.samples("epc_fault")
        d["paid_p50"] = median(paid) if paid else 0
        d["real_p50"] = median(real) if real else 0
        return dt, d

    def close(self):
        self.map.close()


class SuvmSide:
    def __init__(self, cfg, cpu, region):
        self.inst = suvm.create(cfg, charge_fn=cpu.charge_fn, pollute_fn=cpu.pollute_fn)
        self.p = self.inst.malloc(region)
        self.p.fill(1, region)

    def run(self, offs, nthreads, write):
        absolute = (offs + np.uint64(self.p.address)).astype(np.uint64)
        self.inst.reset_stats()

        def work(c):
            buf = sffi.from_buffer("uint64_t[]", c)
            rc = slib.suvm_bench_access(self.inst.handle, buf, len(c), ITEM, write)
            if rc:
                raise RuntimeError(f"suvm_bench_access: {rc}")
        dt = in_threads(work, split(absolute, nthreads))
        return dt, self.inst.stats()

    def close(self):
        self.inst.close()


def per_fault(d, cpu_ns_per_cycle, cfg) -> dict:
    f = max(1, d["faults"])
    return {
        "handler_us": d["fault_ns"] / f / 1e3,
        "trap_us": max(0, d["fault_ns"] - d["eldu_ns"] - d["modeled_ns"] - d["frame_wait_ns"]
                       - d["install_ns"]) / f / 1e3,
        "install_us": d["install_ns"] / f / 1e3,
        "eldu_us": d["eldu_ns"] / max(1, d["eldu"]) / 1e3,
        "ewb_us": d["ewb_ns"] / max(1, d["ewb"]) / 1e3,
        "modeled_us": d["modeled_ns"] / f / 1e3,
        "budget_cycles": d["event"]["budget_cycles"] / max(1, d["event"]["count"]),
        "paid_mean_cycles": d["event"]["paid_cycles"] / max(1, d["event"]["count"]),
        "paid_p50_cycles": d["paid_p50"], "real_p50_cycles": d["real_p50"],
        "overruns": d["event"]["overruns"],
        "frame_wait_us": d["frame_wait_ns"] / f / 1e3,
        "eblock_us": d["eblock_ns"] / max(1, d["ewb"]) / 1e3,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one run, 20,000 accesses, 2x only")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--epc-mb", type=float, default=32)
    ap.add_argument("--multiples", default="2,5", help="region sizes as multiples of the EPC")
    ap.add_argument("--accesses", type=int, default=100_000)
    ap.add_argument("--traps", default="auto",
                    help="comma-separated from auto, sigbus, userfaultfd, sigsegv: one pass each")
    ap.add_argument("--reclaim", default="direct", choices=("direct", "background"))
    ap.add_argument("--time-scale", type=float, default=1.0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    traps = args.traps.split(",")
    bad = [t for t in traps if t not in ("auto", "sigbus", "userfaultfd", "sigsegv")]
    if bad:
        ap.error(f"--traps: unknown {bad}")
    runs, accesses = args.runs, args.accesses
    multiples = [float(x) for x in args.multiples.split(",")]
    if args.quick:
        runs, accesses, multiples = 1, 20_000, multiples[:1]

    m = machine()
    print(machine_line(m))
    lffi, llib = build_loop()
    passes = []
    for trap in traps:
        passes.append(one_pass(args, trap, runs, accesses, multiples, lffi, llib))
    path = write_json("paging", {"machine": m, **passes[0], "passes": passes}, args.json)
    print(f"\nJSON: {path}")
    # The paper's figure: SUVM's speedup over SGX paging per op and threads, per region size
    # (the first trap's pass).
    first = passes[0]
    groups: dict[str, dict[str, float]] = {}
    for r in first["results"]:
        label = f"{r['op']}s, {r['threads']} thread{'s' if r['threads'] > 1 else ''}"
        groups.setdefault(label, {})[f"region {r['multiple']:g}x the EPC"] = r["speedup"]
    plot_bars(figure_path("paging", args.json), groups, ref_line=1.0,
              title=f"paging: SUVM vs SGX paging (EPC {first['epc_bytes'] >> 20} MB, trap "
                    f"{first['trap']}, reclaim {first['reclaim']})",
              ylabel="accesses/s, SUVM / SGX", target_label="paper: SUVM/SGX",
              targets={f"{op}s, {n} thread{'s' if n > 1 else ''}": t for (op, n), t in TARGETS.items()},
              note=machine_line(m))
    return 0


def one_pass(args, trap_asked, runs, accesses, multiples, lffi, llib) -> dict:
    cfg = Config.from_env({}, mode="sgx", epc_mb=args.epc_mb, cost="spin", epc_trap=trap_asked,
                          epc_reclaim=args.reclaim, time_scale=args.time_scale)
    scfg = Config.from_env({}, mode="eleos", epc_mb=args.epc_mb, cost="spin",
                           time_scale=args.time_scale)
    cpu = ModeledCPU(cfg)
    epc_bytes = cfg.epc_bytes
    plain_fault = median(llib.plain_fault_ns(20000) for _ in range(3))
    print(f"this machine: one plain first-touch page fault (no enclave) costs {plain_fault / 1e3:.2f} us")
    print(f"EPC {epc_bytes / MB:g} MiB (SGX driver, trap={cfg.epc_trap}); SUVM page cache "
          f"{scfg.suvm_cache_bytes / MB:g} MiB of it; items {ITEM} B; {accesses:,} accesses per run; "
          f"a fault's budget {cfg.epc_fault_cycles} cycles x{cfg.time_scale:g}, indirect "
          f"{cfg.indirect}; reclaim {cfg.epc_reclaim}; median of {runs}")

    rows, brows, out = [], [], []
    with EPC(cfg, cpu) as epc:
        trap = epc.trap
        # The cost of an access that does not fault: a region half the EPC, all resident.
        small = SgxSide(epc, lffi, llib, epc_bytes // 2)
        resident_ns = {}
        for write in (0, 1):
            offs = offsets_for(epc_bytes // 2, accesses, seed=3)
            small.run(offs, 1, write)
            resident_ns[write] = median(small.run(offs, 1, write)[0] for _ in range(max(1, runs))) / accesses * 1e9
        small.close()
        bar = Progress(len(multiples) * 4, "paging").start()
        for mult in multiples:
            region = int(mult * epc_bytes) // ITEM * ITEM
            sgx = SgxSide(epc, lffi, llib, region)
            svm = SuvmSide(scfg, cpu, region)
            for write in (0, 1):
                op = "write" if write else "read"
                for nthreads in (1, 4):
                    bar.step(f"{mult:g}x {op} {nthreads} thr")
                    warm = offsets_for(region, accesses // 5, seed=11)
                    sgx.run(warm, nthreads, write)
                    svm.run(warm, nthreads, write)
                    s_thr, v_thr, s_d, v_st = [], [], None, None
                    for r in range(runs):
                        offs = offsets_for(region, accesses, seed=100 + r)
                        dt, s_d = sgx.run(offs, nthreads, write)
                        s_thr.append(accesses / dt)
                        dt, v_st = svm.run(offs, nthreads, write)
                        v_thr.append(accesses / dt)
                    s, v = median(s_thr), median(v_thr)
                    target = TARGETS[(op, nthreads)]
                    pf = per_fault(s_d, 0, cfg)
                    app_fault_us = None
                    if nthreads == 1 and s_d["faults"]:
                        app_fault_us = (accesses / s - accesses * resident_ns[write] / 1e9) / s_d["faults"] * 1e6
                    rows.append([f"{mult:g}x", op, nthreads, s / 1e3, v / 1e3, v / s, target,
                                 s_d["faults"] / accesses, v_st["faults"] / accesses])
                    brows.append([f"{mult:g}x", op, nthreads,
                                  f"{app_fault_us:.1f}" if app_fault_us is not None else "-",
                                  pf["budget_cycles"], pf["paid_p50_cycles"], pf["paid_mean_cycles"],
                                  pf["real_p50_cycles"], pf["overruns"],
                                  pf["handler_us"], pf["eldu_us"], pf["install_us"],
                                  pf["ewb_us"], pf["eblock_us"], pf["frame_wait_us"]])
                    out.append({"multiple": mult, "op": op, "threads": nthreads,
                                "sgx_kacc_s": s / 1e3, "suvm_kacc_s": v / 1e3, "speedup": v / s,
                                "paper_target": target,
                                "sgx_faults_per_access": s_d["faults"] / accesses,
                                "sgx_ewb": s_d["ewb"], "sgx_eldu": s_d["eldu"],
                                "suvm_faults_per_access": v_st["faults"] / accesses,
                                "suvm_writebacks": v_st["writebacks"],
                                "sgx_fault_app_us": app_fault_us, "sgx_per_fault": pf,
                                "sgx_runs_kacc_s": [x / 1e3 for x in s_thr],
                                "suvm_runs_kacc_s": [x / 1e3 for x in v_thr]})
            sgx.close()
            svm.close()
        bar.stop()
        epc_stats = epc.stats()

    print(f"\nThroughput (k accesses/s), SUVM over SGX paging (trap: {trap})")
    print(table(["region", "op", "thr", "SGX kacc/s", "SUVM kacc/s", "speedup", "paper",
                 "SGX faults/acc", "SUVM faults/acc"], rows))
    print("\nSGX paging: one fault.  app us = what the app's loop lost per fault (vs "
          f"{resident_ns[0]:.0f}/{resident_ns[1]:.0f} ns per resident read/write), the indirect "
          "cost after it included; budget, paid (median, mean), real (median) and overruns in "
          "cycles, from the modeled CPU (real = the trap, measured once at start, and the "
          "handler); handler, eldu, install (the copy into the EPC frame, then UFFDIO_CONTINUE "
          "or mprotect) in us, from the driver; ewb and eblock: per victim, on the faulting path (direct reclaim) or in "
          "ksgxswapd (background), where frame wait = no free frame, waiting for it")
    print(table(["region", "op", "thr", "app us", "budget", "paid p50", "paid mean", "real p50",
                 "overruns", "handler", "eldu", "install", "ewb", "eblock", "frame wait"], brows))
    scaling = thread_scaling(out)
    if scaling:
        print(f"\n4 threads over 1 ({machine()['cores']} cores here; the paper's threads had a core "
              "each): " + "; ".join(f"{k} SGX {sg:.2f}x, SUVM {sv:.2f}x"
                                   for k, (sg, sv) in scaling.items()))
    return {"epc_bytes": epc_bytes, "trap": trap, "reclaim": cfg.epc_reclaim,
            "time_scale": cfg.time_scale, "trap_cycles": epc.trap_cycles,
            "suvm_cache_bytes": scfg.suvm_cache_bytes, "item": ITEM,
            "accesses": accesses, "runs": runs,
            "resident_ns": resident_ns, "plain_fault_ns": plain_fault,
            "results": out, "epc_stats": epc_stats, "thread_scaling": thread_scaling(out)}


def thread_scaling(results: list[dict]) -> dict:
    """Per region and op, throughput at 4 threads over 1: (SGX, SUVM)."""
    by = {(r["multiple"], r["op"], r["threads"]): r for r in results}
    return {f"{m:g}x {op}s": (by[(m, op, 4)]["sgx_kacc_s"] / by[(m, op, 1)]["sgx_kacc_s"],
                              by[(m, op, 4)]["suvm_kacc_s"] / by[(m, op, 1)]["suvm_kacc_s"])
            for (m, op, t) in by if t == 1 and (m, op, 4) in by}


if __name__ == "__main__":
    raise SystemExit(main())

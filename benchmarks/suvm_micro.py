"""SUVM microbenchmarks (issue 4): fast path, miss cost, policies / page sizes / sub-pages.

1. Fast path: resident reads and writes of 8 B, 64 B, 1 KiB and 4 KiB through SecureMemory
   slicing, against the same slicing on a plain anonymous mmap (target: <= 1.2x from 64 B).
2. Miss cost: one major fault (a read of a sealed, non-resident page; the victim clean, and
   dirty), in a C loop, against raw AES-128-GCM decryption of one page in C (target: <= 2x).
3. Policies (fifo, lru, clock, random), page sizes and sub-pages on uniform random and
   zipfian (s = 0.99, as YCSB) 64 B accesses, 10% writes, over a region 4x the page cache:
   hits, faults, write-backs and throughput, in C with the GIL released.
   3b. Sub-pages (off, 1 KiB, 2 KiB) by access size (64 B, 512 B, 4 KiB): when they pay.
4. The policies again with 4 threads on one instance (zipf): the cost of their locking.
Medians of several runs; every configuration in the same run, in rounds.  Sections 1-3 time
the measuring thread's CPU time (other processes on a busy machine do not count), section 4
wall time.  Prints tables and the machine,
writes results/suvm_micro.json.

    python benchmarks/suvm_micro.py [--quick] [--runs R] [--json PATH]
"""
from __future__ import annotations

import argparse
import mmap
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import figure_path, machine, machine_line, median, plot_bars, table, write_json  # noqa: E402
from eleos_shim import suvm  # noqa: E402
from eleos_shim.config import Config  # noqa: E402
from trusted.suvm import ffi as sffi, lib as slib  # noqa: E402

MB = 1 << 20

# Single-threaded timings use the measuring thread's CPU time: on a shared 2-core machine,
# time other processes take from us must not count (wall time is used with threads, section 4).
cpu_now = time.thread_time


def make(page=4096, subpage=0, policy="clock", cache_mb=4.0, store_mb=256):
    cfg = Config().replace(suvm_page_size=page, suvm_subpage=subpage, suvm_eviction=policy,
                           suvm_cache_mb=cache_mb, suvm_store_mb=store_mb, epc_mb=93)
    return suvm.create(cfg)


# ---- 1. fast path ----

def slice_loop_ns(m, offsets, n, write, reps):
    data = b"\x5a" * n
    if write:
        t0 = cpu_now()
        for _ in range(reps):
            for o in offsets:
                m[o:o + n] = data
    else:
        t0 = cpu_now()
        for _ in range(reps):
            for o in offsets:
                m[o:o + n]
    return (cpu_now() - t0) / (reps * len(offsets)) * 1e9


def fast_path(runs, quick):
    region = 2 * MB                       # resident: half of the 4 MiB page cache
    rng = random.Random(1)
    rows, out = [], []
    for policy in ("clock", "lru"):
        inst = make(policy=policy)
        sm = suvm.SecureMemory(region, suvm=inst)
        sm[:] = b"\x01" * region          # bring everything in
        plain = mmap.mmap(-1, region)
        plain[:] = b"\x01" * region
        for n in (8, 64, 1024, 4096):
            offsets = [rng.randrange(region // n) * n for _ in range(1000)]   # n-aligned
            reps = 20 if quick else 60
            for write in (0, 1):
                base, sec = [], []
                for _ in range(runs):     # interleaved, so drift hits both alike
                    base.append(slice_loop_ns(plain, offsets, n, write, reps))
                    sec.append(slice_loop_ns(sm, offsets, n, write, reps))
                b, s = median(base), median(sec)
                op = "write" if write else "read"
                rows.append([policy, op, n, b, s, s / b])
                out.append({"policy": policy, "op": op, "bytes": n, "mmap_ns": b, "suvm_ns": s,
                            "ratio": s / b})
        st = inst.stats()
        assert st["faults"] <= region // 4096 + 4, "fast path must not fault"
        sm.close()
        plain.close()
        inst.close()
    print("\n1. Fast path: resident slicing, SecureMemory vs plain mmap (ns per access, "
          "median of %d)" % runs)
    print(table(["policy", "op", "bytes", "mmap ns", "suvm ns", "ratio"], rows))
    return out


# ---- 2. miss cost ----

def miss_cost(runs, quick):
    iters = 20000 if quick else 60000
    page, cache_mb = 4096, 4
    frames = cache_mb * MB // page
    setups = {}
    for victim in ("clean", "dirty"):
        inst = make(page=page, policy="fifo", cache_mb=cache_mb)
        p = inst.malloc(4 * frames * page)
        p.fill(7, 4 * frames * page)
        inst.evict_all()
        # Cycle over 4x the cache in page order: with fifo every access misses.
        offs = sffi.new("uint64_t[]", [p.address + (i % (4 * frames)) * page for i in range(iters)])
        setups[victim] = (inst, offs)
    samples = {"raw": [], "clean": [], "dirty": []}
    last = {}
    for _ in range(runs):   # interleaved: a noisy neighbour slows all three alike
        t0 = cpu_now()
        assert slib.suvm_bench_raw_open(page, iters) == 0
        samples["raw"].append((cpu_now() - t0) / iters * 1e9)
        for victim, (inst, offs) in setups.items():
            inst.reset_stats()
            t0 = cpu_now()
            rc = slib.suvm_bench_access(inst.handle, offs, iters, 8, 1 if victim == "dirty" else 0)
            samples[victim].append((cpu_now() - t0) / iters * 1e9)
            assert rc == 0
            last[victim] = inst.stats()
            assert last[victim]["faults"] >= iters * 0.99, last[victim]
    for inst, _ in setups.values():
        inst.close()
    raw = median(samples["raw"])
    res = {"page": page, "raw_open_ns": raw}
    for victim in ("clean", "dirty"):
        res[victim] = {"miss_ns": median(samples[victim]), "ratio": median(samples[victim]) / raw,
                       "faults": last[victim]["faults"], "writebacks": last[victim]["writebacks"]}
    rows = [[f"miss, {v} victim", res[v]["miss_ns"], raw, res[v]["ratio"]] for v in ("clean", "dirty")]
    print("\n2. Miss cost: one major fault of a 4 KiB page vs raw AES-GCM open of one page, "
          "both in C (ns, median of %d)" % runs)
    print(table(["case", "ns", "raw open ns", "ratio"], rows))
    return res


# ---- 3. policies, page sizes, sub-pages ----

def zipf_pages(npages, count, s, rng):
    ranks = np.arange(1, npages + 1, dtype=np.float64)
    prob = ranks ** -s
    prob /= prob.sum()
    # Hot pages scattered over the region, the same ones for every thread and run.
    perm = np.random.default_rng(7).permutation(npages)
    return perm[rng.choice(npages, size=count, p=prob)]


def workload(dist, region, item, count, seed):
    rng = np.random.default_rng(seed)
    if dist == "uniform":
        offs = rng.integers(0, region // item, count) * item
    else:
        unit = 4096                                # zipf over 4 KiB units, any page size
        units = zipf_pages(region // unit, count, 0.99, rng)
        offs = units * unit + rng.integers(0, unit // item, count) * item
    writes = rng.random(count) < 0.10
    return offs.astype(np.uint64), writes


def run_mix(inst, base, offs, writes, item):
    # One C call for the whole mix (GIL released throughout): returns its CPU or wall time.
    absolute = (offs + np.uint64(base)).astype(np.uint64)
    w = writes.astype(np.uint8)
    t0 = cpu_now()
    rc = slib.suvm_bench_mix(inst.handle, sffi.from_buffer("uint64_t[]", absolute),
                             sffi.from_buffer("uint8_t[]", w), len(absolute), item)
    if rc:
        raise RuntimeError(f"suvm_bench_mix: {rc}")
    return cpu_now() - t0


def policies(runs, quick):
    cache_mb = 4
    region = 4 * cache_mb * MB
    item = 64
    count = 100_000 if quick else 300_000
    configs = [(pol, 4096, 0) for pol in ("fifo", "lru", "clock", "random")]
    configs += [("clock", 1024, 0), ("clock", 16384, 0), ("clock", 4096, 256),
                ("clock", 4096, 1024), ("clock", 16384, 1024)]
    rows, out = [], []
    for dist in ("uniform", "zipf"):
        offs, writes = workload(dist, region, item, count, seed=42)
        thr = {c: [] for c in configs}
        last = {}
        for r in range(runs):          # rounds over all configurations: noise hits all alike
            for pol, page, sub in configs:
                inst = make(page=page, subpage=sub, policy=pol, cache_mb=cache_mb)
                p = inst.malloc(region)
                p.fill(1, region)                    # every page sealed once in the store
                inst.evict_all()
                run_mix(inst, p.address, offs[: count // 4], writes[: count // 4], item)  # warm
                inst.reset_stats()
                dt = run_mix(inst, p.address, offs, writes, item)
                thr[(pol, page, sub)].append(count / dt)
                last[(pol, page, sub)] = inst.stats()
                inst.close()
        for pol, page, sub in configs:
            t, st = median(thr[(pol, page, sub)]), last[(pol, page, sub)]
            hit = st["hits"] / max(1, st["hits"] + st["faults"] + st["subpage_reads"])
            rows.append([dist, pol, page, sub or "off", t / 1e3, f"{hit:.3f}", st["faults"],
                         st["subpage_reads"], st["writebacks"]])
            out.append({"dist": dist, "policy": pol, "page": page, "subpage": sub,
                        "kaccess_per_s": t / 1e3, "hit_ratio": hit, **{k: st[k] for k in (
                            "hits", "faults", "subpage_reads", "writebacks", "evictions",
                            "bytes_unsealed", "bytes_sealed")}})
    print(f"\n3. Policies, page sizes, sub-pages: {item} B accesses (10% writes) over {region // MB} "
          f"MiB = 4x a {cache_mb} MiB page cache, C loop (median of {runs})")
    print(table(["dist", "policy", "page", "subpage", "kacc/s", "hit ratio", "faults",
                 "subpage rd", "writebacks"], rows))
    return out


def subpages(runs, quick):
    """When sub-pages pay: clock, 4 KiB pages, sub-pages off / 1 KiB / 2 KiB, by access size."""
    cache_mb, region = 4, 16 * MB
    count = 40_000 if quick else 120_000
    subs = (0, 1024, 2048)
    rows, out = [], []
    for item in (64, 512, 4096):
        for dist in ("uniform", "zipf"):
            offs, writes = workload(dist, region, item, count, seed=42)
            thr = {sub: [] for sub in subs}
            for _ in range(runs):
                for sub in subs:
                    inst = make(page=4096, subpage=sub, policy="clock", cache_mb=cache_mb)
                    p = inst.malloc(region)
                    p.fill(1, region)
                    inst.evict_all()
                    run_mix(inst, p.address, offs[: count // 4], writes[: count // 4], item)
                    dt = run_mix(inst, p.address, offs, writes, item)
                    thr[sub].append(count / dt)
                    inst.close()
            t = {sub: median(v) / 1e3 for sub, v in thr.items()}
            rows.append([item, dist, t[0], t[1024], t[1024] / t[0], t[2048], t[2048] / t[0]])
            out.append({"item": item, "dist": dist, **{f"kaccess_per_s_sub{k}": v for k, v in t.items()}})
    print(f"\n3b. Sub-pages by access size: clock, 4 KiB pages, 10% writes, region 4x the cache "
          f"(kacc/s, median of {runs})")
    print(table(["item B", "dist", "off", "1K", "1K/off", "2K", "2K/off"], rows))
    return out


def threaded(runs, quick, threads=4):
    """Zipf mix from several threads at once on one instance: what each policy's locking costs
    when threads contend (lru takes the list lock on every hit)."""
    import threading
    cache_mb, region, item = 4, 16 * MB, 64
    count = 50_000 if quick else 150_000
    pols = ("fifo", "lru", "clock", "random")
    loads = [workload("zipf", region, item, count, seed=100 + t) for t in range(threads)]
    thr = {pol: [] for pol in pols}
    last = {}
    for _ in range(runs):
        for pol in pols:
            inst = make(policy=pol, cache_mb=cache_mb)
            p = inst.malloc(region)
            p.fill(1, region)
            inst.evict_all()
            run_mix(inst, p.address, loads[0][0][: count // 4], loads[0][1][: count // 4], item)
            inst.reset_stats()
            ths = [threading.Thread(target=run_mix, args=(inst, p.address, o, w, item))
                   for o, w in loads]
            t0, c0 = time.perf_counter(), time.process_time()
            for th in ths:
                th.start()
            for th in ths:
                th.join()
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            thr[pol].append((threads * count / wall, threads * count / cpu, cpu / wall))
            last[pol] = inst.stats()
            inst.close()
    rows, out = [], []
    for pol in pols:
        st = last[pol]
        t = median(x[0] for x in thr[pol])
        per_cpu = median(x[1] for x in thr[pol])
        busy = median(x[2] for x in thr[pol])
        hit = st["hits"] / max(1, st["hits"] + st["faults"])
        rows.append([pol, threads, t / 1e3, per_cpu / 1e3, busy, f"{hit:.3f}", st["faults"],
                     st["writebacks"]])
        out.append({"policy": pol, "threads": threads, "kaccess_per_s": t / 1e3,
                    "kaccess_per_cpu_s": per_cpu / 1e3, "cores_busy": busy, "hit_ratio": hit,
                    "faults": st["faults"], "writebacks": st["writebacks"]})
    print(f"\n4. Zipf mix from {threads} threads on one instance (4 KiB pages, median of {runs})")
    print(table(["policy", "threads", "kacc/s wall", "kacc/cpu-s", "cores busy", "hit ratio",
                 "faults", "writebacks"], rows))
    print("(wall throughput depends on the other load of the machine: cores busy < 2 means the "
          "threads did not get both cores)")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer accesses (a smoke run)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", default=None)
    ap.add_argument("--only", choices=("fast", "miss", "policies", "subpages", "threads"),
                    default=None)
    args = ap.parse_args()
    m = machine()
    print(machine_line(m))
    result = {"machine": m}
    if args.only in (None, "fast"):
        result["fast_path"] = fast_path(args.runs, args.quick)
    if args.only in (None, "miss"):
        result["miss"] = miss_cost(args.runs, args.quick)
    if args.only in (None, "policies"):
        result["policies"] = policies(max(1, args.runs // 2 + 1), args.quick)
    if args.only in (None, "subpages"):
        result["subpages"] = subpages(max(1, args.runs // 2 + 1), args.quick)
    if args.only in (None, "threads"):
        result["threads"] = threaded(max(1, args.runs // 2 + 1), args.quick)
    path = write_json("suvm_micro", result, args.json)
    print(f"\nJSON: {path}")
    if result.get("fast_path"):
        groups: dict[str, dict[str, float]] = {}
        for r in result["fast_path"]:
            groups.setdefault(f"{r['op']} {r['bytes']} B", {})[r["policy"]] = r["ratio"]
        plot_bars(figure_path("suvm_micro", args.json), groups, ref_line=1.0,
                  targets={g: 1.2 for g in groups}, target_label="paper: at most 1.2x",
                  title="SUVM fast path (page resident): SecureMemory slicing vs plain mmap",
                  ylabel="time per access, SUVM / mmap", note=machine_line(m))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

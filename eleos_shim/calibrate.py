"""``eleos-shim calibrate``: measure the cost model on this machine (eleos_shim/).

Prints the TSC frequency, the cost of a null OCALL against a direct call (medians, ns and
cycles, timed in C and through the Python transport), and the indirect cost: how much slower a
fixed piece of Python work runs right after an exit's pollution than without it, for several
pollution sizes, so the default ``ELEOS_POLLUTE_KB`` can be chosen inside the 1.5x-5x range
the paper cites (FlexSC, OSDI'10).
"""
from __future__ import annotations

import json
import random
import statistics
import time

from eleos_shim.config import Config

SIZES_KB = (0, 64, 128, 256, 512, 1024, 2048, 4096)


def _work(data: dict, keys: list) -> int:
    # The slice of app code between two syscalls of a request handler: 256 lookups in a
    # 4096-entry dict of small values (~10-20 us of Python), a working set that stays in the
    # caches when nothing disturbs it.
    total = 0
    for k in keys:
        total += len(data[k])
    return total


def indirect_slowdown(pollute_kb: int, rounds: int = 300) -> tuple[float, float, float]:
    """Median ns of: the work right after an exit's pollution (the work alone), the same plus
    the pollution itself (the whole indirect cost the app's thread pays), the work without."""
    from eleos_shim._native._cpu import lib as cpu
    cfg = Config.from_env({}, mode="native")
    cpu.cpu_configure(cfg.eenter_cycles, cfg.eexit_cycles, cfg.aex_cycles, cfg.eresume_cycles,
                      1, pollute_kb * 1024, 1.0)
    rng = random.Random(1)
    data = {f"key{i}": bytes(32) for i in range(4096)}
    keys = rng.sample(sorted(data), 256)
    after, whole, clean = [], [], []
    for _ in range(rounds):
        _work(data, keys)
        t0 = time.perf_counter_ns()
        _work(data, keys)
        clean.append(time.perf_counter_ns() - t0)
        t0 = time.perf_counter_ns()
        cpu.cpu_pollute()
        t1 = time.perf_counter_ns()
        _work(data, keys)
        t2 = time.perf_counter_ns()
        after.append(t2 - t1)
        whole.append(t2 - t0)
    return statistics.median(after), statistics.median(whole), statistics.median(clean)


def null_call_costs(cfg: Config, n: int = 20000, runs: int = 5) -> dict:
    from eleos_shim.cpu import ModeledCPU
    from trusted.syscall import Bridge, Transport
    from untrusted._native._host import lib as host
    cpu = ModeledCPU(cfg)
    bridge = Bridge(host.host_dispatch_fn(), host.host_alloc_fn(), host.host_free_fn(),
                    cpu.charge_fn, cpu.pollute_fn)
    out = {}
    for path in ("direct", "ocall"):
        t = Transport(path, bridge)
        c_level = statistics.median(t.bench(n, path=path) for _ in range(runs))
        py = []
        for _ in range(runs):
            t0 = time.perf_counter()
            for _ in range(n // 10):
                t.call(0)
            py.append((time.perf_counter() - t0) / (n // 10))
        out[path] = {"c_ns": c_level * 1e9, "c_cycles": c_level * cpu.tsc_hz,
                     "python_ns": statistics.median(py) * 1e9}
    ModeledCPU.reset()
    return out


def main(cfg: Config, args: list[str]) -> int:
    from eleos_shim.cpu import measured_tsc_hz
    tsc = cfg.tsc_mhz * 1e6 if cfg.tsc_mhz else measured_tsc_hz()
    print(f"TSC frequency: {tsc / 1e6:.1f} MHz"
          f"{' (ELEOS_TSC_MHZ)' if cfg.tsc_mhz else ' (measured)'}")
    print(f"modeled costs: EENTER {cfg.eenter_cycles}  EEXIT {cfg.eexit_cycles}  "
          f"AEX {cfg.aex_cycles}  ERESUME {cfg.eresume_cycles} cycles; pollution "
          f"{cfg.pollute_kb} KB; cost={cfg.cost}")
    costs = null_call_costs(cfg)
    print("\nnull call (ELEOS_OP_NOP), median of 5 runs:")
    print(f"  {'path':<8}{'C loop ns':>12}{'cycles':>10}{'via Python ns':>16}")
    for path, c in costs.items():
        print(f"  {path:<8}{c['c_ns']:>12.0f}{c['c_cycles']:>10.0f}{c['python_ns']:>16.0f}")
    ocall, direct = costs["ocall"], costs["direct"]
    print(f"  an OCALL costs {ocall['c_ns'] - direct['c_ns']:.0f} ns "
          f"({ocall['c_cycles'] - direct['c_cycles']:.0f} cycles) more than a direct call")
    print("\nindirect cost: a fixed slice of Python work (~15 us) right after an exit vs without,")
    print("by pollution size; 'with pollution' counts the touch of the buffer too, since the app's")
    print("thread pays it: that is the slowdown the default is chosen by (1.5x-5x, FlexSC OSDI'10):")
    print(f"  {'KB':>6}{'clean ns':>10}{'after exit ns':>15}{'slowdown':>10}{'with pollution':>16}")
    rows = []
    for kb in SIZES_KB:
        after, whole, clean = indirect_slowdown(kb)
        rows.append({"pollute_kb": kb, "after_ns": after, "with_pollution_ns": whole,
                     "clean_ns": clean, "slowdown": after / clean,
                     "slowdown_with_pollution": whole / clean})
        mark = "  <- default" if kb == cfg.pollute_kb else ""
        print(f"  {kb:>6}{clean:>10.0f}{after:>15.0f}{after / clean:>9.2f}x{whole / clean:>15.2f}x{mark}")
    if "--json" in args:
        path = args[args.index("--json") + 1]
        with open(path, "w") as f:
            json.dump({"tsc_hz": tsc, "null_call": costs, "indirect": rows}, f, indent=1)
    return 0

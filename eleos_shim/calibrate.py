"""``eleos-shim calibrate``: how faithfully this machine pays the cost model (eleos_shim/).

Each modeled event has a budget (the sourced constants, ``python -m eleos_shim --help``); the
shim times the real part of each event and a TSC spin pays the rest.  This measures, on this
machine, with the configured constants (ELEOS_* variables and flags apply):

  * the fidelity table: per event (ocall, epc_fault per trap, indirect), the budget, median
    and p90 of what was paid (cycles and ns), the median real and spun parts, the overruns
    (events whose real part alone exceeded the budget) and median paid/budget;
  * the same from outside: what a null OCALL costs a caller in C over a direct call, and what
    an access that faults costs over a resident one (and how much of that is the indirect
    window's charge after the fault, an event of its own);
  * what a trap costs outside its handler, per trap (measured by the driver at start);
  * with ``--pollution``: how much slower a slice of Python work runs right after touching a
    pollution buffer of each size (ELEOS_INDIRECT=pollute), against the modeled factor.

``--json PATH`` writes all of it.
"""
from __future__ import annotations

import json
import random
import statistics
import time

from eleos_shim.config import Config

SIZES_KB = (0, 256, 512, 1024, 2048)
TRAPS = ("sigbus", "userfaultfd", "sigsegv")


def _work(data: dict, keys: list) -> int:
    # The slice of app code between two syscalls of a request handler: 256 lookups in a
    # 4096-entry dict of small values (~10-20 us of Python).
    total = 0
    for k in keys:
        total += len(data[k])
    return total


def _pct(values: list[int], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return float(s[min(len(s) - 1, int(q * len(s)))])


def fidelity_row(name: str, cpu, event: str) -> dict:
    """Median/p90 paid, median real and spun, overruns, budget per event: from the CPU's
    counters and its ring of recent events."""
    from eleos_shim.cpu import ModeledCPU
    tot = ModeledCPU.events()[event]
    paid, real = ModeledCPU.samples(event)
    n = tot["count"]
    budget = tot["budget_cycles"] / n if n else 0.0
    spun = [p - r for p, r in zip(paid, real)]
    med = statistics.median(paid) if paid else float("nan")
    return {"event": name, "count": n, "budget_cycles": budget,
            "paid_median_cycles": med, "paid_p90_cycles": _pct(paid, 0.9),
            "paid_median_ns": cpu.cycles_to_ns(med), "paid_p90_ns": cpu.cycles_to_ns(_pct(paid, 0.9)),
            "paid_mean_cycles": tot["paid_cycles"] / n if n else float("nan"),
            "real_median_cycles": statistics.median(real) if real else float("nan"),
            "spun_median_cycles": statistics.median(spun) if spun else float("nan"),
            "overruns": tot["overruns"],
            "paid_over_budget": med / budget if budget else float("nan")}


def ocall_events(cfg: Config, n: int = 20000) -> tuple[dict, dict, dict]:
    """Null OCALLs (ocall and indirect rows) and the outside view: C loop ns per call, ocall
    and direct.  The OCALLs alternate with a slice of Python work so each exit's window has
    work in it, as a request handler's does."""
    from eleos_shim.cpu import ModeledCPU
    from trusted.syscall import Bridge, Transport
    from untrusted._native._host import lib as host
    cpu = ModeledCPU(cfg)
    bridge = Bridge(host.host_dispatch_fn(), host.host_alloc_fn(), host.host_free_fn(),
                    cpu.charge_fn, cpu.pollute_fn)
    outside = {}
    for path in ("direct", "ocall"):
        t = Transport(path, bridge)
        outside[path] = statistics.median(t.bench(n, path=path) for _ in range(5)) * 1e9
    ModeledCPU.reset()
    t = Transport("ocall", bridge)
    t.bench(n, path="ocall")                   # back to back: windows empty
    ocall = fidelity_row("ocall", cpu, "ocall")
    ModeledCPU.reset()
    rng = random.Random(1)
    data = {f"key{i}": bytes(32) for i in range(4096)}
    keys = rng.sample(sorted(data), 256)
    for _ in range(2000):
        t.call(0)
        _work(data, keys)
    t.call(0)
    indirect = fidelity_row("indirect", cpu, "indirect")
    ModeledCPU.reset()
    extra_ns = outside["ocall"] - outside["direct"]
    out = {"direct_ns": outside["direct"], "ocall_ns": outside["ocall"], "extra_ns": extra_ns,
           "extra_cycles": extra_ns * cpu.tsc_hz / 1e9, "budget_cycles": ocall["budget_cycles"]}
    return ocall, indirect, out


def fault_events(cfg: Config, trap: str, accesses: int = 3000) -> tuple[dict, dict]:
    """Random reads over a region 4x a 4 MB EPC, each page touched once first: every read
    misses with probability 3/4; the epc_fault row, and the outside view (ns per access that
    faulted over one that did not)."""
    from eleos_shim.cpu import ModeledCPU
    from eleos_shim.epc import EPC
    cfg = cfg.replace(epc_mb=4, suvm_cache_mb=2, epc_trap=trap)
    cpu = ModeledCPU(cfg)
    with EPC(cfg, cpu) as epc:
        m = epc.map(16 << 20)
        npages = len(m) // 4096
        for i in range(npages):
            m[i * 4096] = 1
        ModeledCPU.reset()
        rng = random.Random(2)
        idx = [rng.randrange(npages) for _ in range(accesses)]
        c0 = epc.counters()
        t0 = time.perf_counter_ns()
        for i in idx:
            m[i * 4096]
        wall = time.perf_counter_ns() - t0
        faults = epc.counters()["faults"] - c0["faults"]
        # The indirect window each fault opens is charged at the next one: its own event.
        indirect_cycles = ModeledCPU.events()["indirect"]["paid_cycles"]
        t0 = time.perf_counter_ns()
        for _ in range(accesses):
            m[0]                               # resident: the floor of an access
        hit = (time.perf_counter_ns() - t0) / accesses
        row = fidelity_row(f"epc_fault ({epc.trap})", cpu, "epc_fault")
        trap_cycles, trap_return = epc.trap_cycles, epc._driver.trap_return_cycles
        m.close()
    per_fault = (wall - hit * accesses) / max(1, faults)
    ModeledCPU.reset()
    cycles = per_fault * cpu.tsc_hz / 1e9
    indirect = indirect_cycles / max(1, faults)
    return row, {"trap": trap, "faults": faults, "ns_per_fault": per_fault,
                 "cycles_per_fault": cycles, "trap_cycles": trap_cycles,
                 "trap_return_cycles": trap_return,
                 "indirect_cycles_per_fault": indirect, "fault_alone_cycles": cycles - indirect,
                 "budget_cycles": row["budget_cycles"]}


def indirect_slowdown(pollute_kb: int, rounds: int = 300) -> tuple[float, float, float]:
    """Median ns of: the work right after touching the pollution buffer, the same plus the
    touch, the work without (ELEOS_INDIRECT=pollute's real effect here)."""
    from eleos_shim.cpu import ModeledCPU
    from eleos_shim._native._cpu import lib as cpu
    ModeledCPU(Config.from_env({}, mode="native", indirect="pollute", pollute_kb=pollute_kb))
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
    ModeledCPU.reset()
    return statistics.median(after), statistics.median(whole), statistics.median(clean)


def print_table(rows: list[dict]) -> None:
    print(f"  {'event':<24}{'count':>7}{'budget':>9}{'paid p50':>10}{'p90':>9}{'p50 ns':>9}"
          f"{'p90 ns':>9}{'mean':>9}{'real p50':>10}{'spun p50':>10}{'overruns':>10}{'paid/budget':>13}")
    for r in rows:
        print(f"  {r['event']:<24}{r['count']:>7}{r['budget_cycles']:>9.0f}{r['paid_median_cycles']:>10.0f}"
              f"{r['paid_p90_cycles']:>9.0f}{r['paid_median_ns']:>9.0f}{r['paid_p90_ns']:>9.0f}"
              f"{r['paid_mean_cycles']:>9.0f}"
              f"{r['real_median_cycles']:>10.0f}{r['spun_median_cycles']:>10.0f}{r['overruns']:>10}"
              f"{r['paid_over_budget']:>12.2f}x")


def main(cfg: Config, args: list[str]) -> int:
    from eleos_shim.cpu import measured_tsc_hz
    tsc = cfg.tsc_mhz * 1e6 if cfg.tsc_mhz else measured_tsc_hz()
    print(f"TSC frequency: {tsc / 1e6:.1f} MHz"
          f"{' (ELEOS_TSC_MHZ)' if cfg.tsc_mhz else ' (measured)'}; cost={cfg.cost}, "
          f"time scale {cfg.time_scale:g}, indirect={cfg.indirect}")
    print(f"budgets (cycles, x{cfg.time_scale:g}): ocall {cfg.ocall_cycles} (EEXIT part "
          f"{cfg.eexit_cycles}), epc_fault {cfg.epc_fault_cycles}, indirect "
          f"({cfg.indirect_slowdown:g} - 1) x min({cfg.indirect_window_cycles}, work after the exit)")
    ocall, indirect, outside = ocall_events(cfg)
    rows, faults = [ocall, indirect], []
    traps = [t for t in TRAPS if f"--trap={t}" in args] or list(TRAPS)
    for trap in traps:
        try:
            row, out = fault_events(cfg, trap)
        except OSError as exc:
            print(f"  ({trap}: not available here: {exc})")
            continue
        rows.append(row)
        faults.append(out)
    print("\nfidelity: what each modeled event cost the app (cycles unless ns), from the CPU's own")
    print("timing; real = what the shim ran on the event's path, spun = the TSC top-up:")
    print_table(rows)
    print("\nthe same from outside:")
    print(f"  null OCALL from C: {outside['ocall_ns']:.0f} ns vs direct {outside['direct_ns']:.0f} ns: "
          f"{outside['extra_cycles']:.0f} cycles more, budget {outside['budget_cycles']:.0f} "
          f"({outside['extra_cycles'] / outside['budget_cycles']:.2f}x)")
    for f in faults:
        budget = f["budget_cycles"] or float("nan")
        print(f"  an access that faults ({f['trap']}): {f['ns_per_fault']:.0f} ns = "
              f"{f['cycles_per_fault']:.0f} cycles more than a resident one "
              f"({f['cycles_per_fault'] / budget:.2f}x), of which {f['indirect_cycles_per_fault']:.0f} "
              f"the indirect window after it: the fault alone {f['fault_alone_cycles']:.0f} "
              f"({f['fault_alone_cycles'] / budget:.2f}x) ({f['faults']} faults; the trap outside "
              f"its handler, measured at start: {f['trap_cycles']} cycles, "
              f"{f['trap_return_cycles']} of them after it)")
    pollution = []
    if "--pollution" in args:
        print("\nELEOS_INDIRECT=pollute: a slice of Python work right after touching the buffer vs "
              f"without (the model charges {cfg.indirect_slowdown:g}x within its window):")
        print(f"  {'KB':>6}{'clean ns':>10}{'after ns':>10}{'slowdown':>10}{'with touch':>12}")
        for kb in SIZES_KB:
            after, whole, clean = indirect_slowdown(kb)
            pollution.append({"pollute_kb": kb, "after_ns": after, "with_pollution_ns": whole,
                              "clean_ns": clean})
            print(f"  {kb:>6}{clean:>10.0f}{after:>10.0f}{after / clean:>9.2f}x{whole / clean:>11.2f}x")
    if "--json" in args:
        path = args[args.index("--json") + 1]
        with open(path, "w") as f:
            json.dump({"tsc_hz": tsc, "fidelity": rows, "ocall_outside": outside,
                       "faults_outside": faults, "pollution": pollution}, f, indent=1)
    return 0

"""Many enclaves, one EPC: SGX shared paging vs SUVM with a static split vs SUVM ballooning.

Three (or two) enclave processes share one EPC domain (ELEOS_EPC_DOMAIN) whose EPC is smaller
than their working sets together (by default 3 x 0.6 EPC: even with one of them idle, the
other two exceed the EPC).  Each runs benchmarks/multi_enclave_worker.py under the shim:
uniformly random 64-byte accesses (one batch in four writes) over its working set, in C.  The
second enclave follows a phase change: busy, idle, busy again; the others are busy throughout.

* sgx-shared: ELEOS_MODE=sgx.  The heap is EPC memory paged by each process's SGX driver model,
  all taking frames from the domain, reclaimed from the domain's global LRU; a fault costs an
  AEX + ERESUME and the indirect cost (spent: ELEOS_COST=spin), plus the real trap and EWB/ELDU.
* suvm-static: ELEOS_MODE=eleos, each SUVM page cache a balloon whose target the manager sets to
  an equal share of the EPC (ELEOS_EPC_BALLOON=static): the idle enclave keeps its half.
* suvm-balloon: the same with ELEOS_EPC_BALLOON=demand: the idle enclave is taxed to its floor
  and its share goes to the enclaves that miss; an enclave whose working set fits keeps it.
* suvm-fair: ELEOS_EPC_BALLOON=fair: the same idle tax, then max-min fair shares.

Throughput per enclave and in aggregate is counted in bins by each worker; the EPC share of
each enclave is sampled from the domain's table by this process.  Output: the table (aggregate
throughput over the run and per phase, medians over runs; ratios of the ballooning to the
other two; how long the idle enclave's share took to reach the busy one), the machine, JSON in
results/multi_enclave.json and a plot in results/multi_enclave.png.

    python benchmarks/multi_enclave.py [--quick] [--runs R] [--enclaves 2|3] [--epc-mb MB]
"""
from __future__ import annotations

import argparse
import json
import os
import selectors
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import RESULTS, machine, machine_line, median, table, write_json  # noqa: E402
from eleos_shim.harness import ROOT, app_command, app_env  # noqa: E402
from untrusted import epc_domain  # noqa: E402

WORKER = str(ROOT / "benchmarks" / "multi_enclave_worker.py")
CONFIGS = {
    "sgx-shared": {"ELEOS_MODE": "sgx", "ELEOS_SYSCALLS": "ocall"},
    "suvm-static": {"ELEOS_MODE": "eleos", "ELEOS_SYSCALLS": "ocall", "ELEOS_EPC_BALLOON": "static"},
    "suvm-balloon": {"ELEOS_MODE": "eleos", "ELEOS_SYSCALLS": "ocall", "ELEOS_EPC_BALLOON": "demand"},
    "suvm-fair": {"ELEOS_MODE": "eleos", "ELEOS_SYSCALLS": "ocall", "ELEOS_EPC_BALLOON": "fair"},
}
TARGETS = {"vs_static": 1.3, "vs_sgx": 2.0, "handover_s": 5.0}
SAMPLE_S = 0.1
SETTLE_S = 1.0


def read_line(proc: subprocess.Popen, timeout: float) -> str:
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise RuntimeError("a worker stayed silent")
    return proc.stdout.readline().strip()


def run_config(name: str, env_cfg: dict, args, run: int) -> dict:
    domain = f"bench-multi-{os.getpid()}-{name}-{run}"
    phases = [("busy", args.busy), ("idle", args.idle), ("busy", args.busy)]
    total = sum(d for _, d in phases)
    schedules = []
    for k in range(args.enclaves):
        if k == 1:
            schedules.append(",".join(f"{p}:{d}" for p, d in phases))
        else:
            schedules.append(f"busy:{total}")
    env = app_env(None, {**env_cfg, "ELEOS_EPC_DOMAIN": domain, "ELEOS_EPC_MB": str(args.epc_mb),
                         "ELEOS_COST": "spin", "ELEOS_SUVM_CACHE_MB": str(args.epc_mb * 0.95)})
    procs = []
    try:
        for k, sched in enumerate(schedules):
            procs.append(subprocess.Popen(app_command(WORKER, str(args.ws_mb), sched, str(args.bin_s),
                                                      str(100 * run + k)),
                                          env=env, cwd=ROOT, stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True))
        for p in procs:
            if read_line(p, 300) != "ready":
                raise RuntimeError(f"{name}: a worker did not start")
        t0 = time.monotonic() + 1.0
        for p in procs:
            p.stdin.write(f"{t0}\n")
            p.stdin.flush()
        pids = [p.pid for p in procs]
        shares = []                                        # (t - t0, [resident per enclave])
        while time.monotonic() < t0 + total + 0.2:
            try:
                snap = epc_domain.snapshot(domain)
                by_pid = {m["pid"]: m["resident_pages"] for m in snap["members"]}
                shares.append((round(time.monotonic() - t0, 3), [by_pid.get(pid, 0) for pid in pids]))
            except epc_domain.DomainError:
                pass
            time.sleep(SAMPLE_S)
        bins = [json.loads(read_line(p, 120))["bins"] for p in procs]
        for p in procs:
            p.wait(timeout=120)
        limit = (int(args.epc_mb * 2**20) // 4096)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        epc_domain.remove(domain)
    nb = min(len(b) for b in bins)
    t = [round(bins[0][i][0] - t0, 3) for i in range(nb)]
    per = [[b[i][1] / args.bin_s for i in range(nb)] for b in bins]
    agg = [sum(per[k][i] for k in range(len(per))) for i in range(nb)]
    edges = [0.0, args.busy, args.busy + args.idle, total]

    def phase_median(series, lo, hi):
        vals = [v for ti, v in zip(t, series) if lo + args.bin_s <= ti and ti + args.bin_s <= hi]
        return median(vals) if vals else 0.0
    phase_agg = [phase_median(agg, edges[i], edges[i + 1]) for i in range(3)]
    # Fairness: the slowest enclave's throughput once all are busy again.
    slowest = phase_median([min(per[k][i] for k in range(len(per))) for i in range(nb)], edges[2], edges[3])
    # The handover: from the idle phase's start until the idle enclave (1) holds less than a
    # fifth of what it held when it went idle (its frames are then the busy ones').
    handover, held = None, None
    for ts, res in shares:
        if ts < edges[1]:
            held = res[1]
        elif ts < edges[2] and held and res[1] < 0.2 * held:
            handover = round(ts - edges[1], 2)
            break
    return {"t_s": t, "per_enclave": per, "aggregate": agg, "shares": shares, "limit_pages": limit,
            # The run's mean after SETTLE_S: the first bins measure the warm-up's leftovers
            # (pages its writes left resident), not the configuration.
            "throughput": statistics.mean(v for ti, v in zip(t, agg) if ti >= SETTLE_S),
            "phase_aggregate": phase_agg, "slowest_busy_again": slowest, "handover_s": handover,
            "schedules": schedules}


def plot(results: dict, args, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(results)
    fig, axes = plt.subplots(2, len(names), figsize=(5 * len(names), 7), sharex=True)
    for col, name in enumerate(names):
        r = results[name][0]
        ax = axes[0][col]
        for k, series in enumerate(r["per_enclave"]):
            ax.plot(r["t_s"], [v / 1e6 for v in series], label=f"enclave {k}")
        ax.plot(r["t_s"], [v / 1e6 for v in r["aggregate"]], "k--", label="aggregate")
        ax.set_title(name)
        ax.set_ylabel("accesses/s (M)")
        ax.legend(fontsize=8)
        ax = axes[1][col]
        ts = [s[0] for s in r["shares"]]
        for k in range(len(r["per_enclave"])):
            ax.plot(ts, [100.0 * s[1][k] / r["limit_pages"] for s in r["shares"]], label=f"enclave {k}")
        ax.set_ylabel("EPC share (%)")
        ax.set_xlabel("s")
        ax.set_ylim(0, 105)
        for x in (args.busy, args.busy + args.idle):
            axes[0][col].axvline(x, color="grey", lw=0.5)
            ax.axvline(x, color="grey", lw=0.5)
    fig.suptitle(f"{args.enclaves} enclaves, {args.ws_mb:g} MB working sets each, one EPC of "
                 f"{args.epc_mb:g} MB; enclave 1 idle from {args.busy:g} s to {args.busy + args.idle:g} s")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short phases (a smoke run)")
    ap.add_argument("--runs", type=int, default=1, help="runs per configuration (medians)")
    ap.add_argument("--enclaves", type=int, default=3, choices=(2, 3))
    ap.add_argument("--epc-mb", type=float, default=8.0)
    ap.add_argument("--ws-mb", type=float, default=None,
                    help="each enclave's working set (default: 0.6 of the EPC with 3 enclaves, so the "
                         "busy ones exceed the EPC even while one is idle; 0.75 with 2)")
    ap.add_argument("--busy", type=float, default=4.0, help="seconds of each busy phase")
    ap.add_argument("--idle", type=float, default=5.0, help="seconds of the idle phase")
    ap.add_argument("--bin-s", type=float, default=0.5)
    ap.add_argument("--json", default=None)
    ap.add_argument("--plot", default=str(RESULTS / "multi_enclave.png"))
    args = ap.parse_args()
    if args.quick:
        args.busy, args.idle = 2.0, 3.0
    if args.ws_mb is None:
        args.ws_mb = round(args.epc_mb * (0.6 if args.enclaves == 3 else 0.75), 2)
    from benchmarks.paging import build_loop
    build_loop()                                     # the SGX workers' access loop, compiled here
    results: dict[str, list[dict]] = {name: [] for name in CONFIGS}
    for run in range(args.runs):
        for name, cfg in CONFIGS.items():            # interleaved: the same load on the machine
            results[name].append(run_config(name, cfg, args, run))
    rows, summary = [], {}
    for name, runs in results.items():
        thr = median(r["throughput"] for r in runs)
        ph = [median(r["phase_aggregate"][i] for r in runs) for i in range(3)]
        hand = [r["handover_s"] for r in runs if r["handover_s"] is not None]
        slow = median(r["slowest_busy_again"] for r in runs)
        summary[name] = {"throughput": thr, "phases": ph, "slowest_busy_again": slow,
                         "handover_s": median(hand) if hand else None}
        rows.append([name, thr / 1e6, ph[0] / 1e6, ph[1] / 1e6, ph[2] / 1e6, slow / 1e6,
                     f"{summary[name]['handover_s']:.2f}" if hand else "never"])
    bal = summary["suvm-balloon"]["throughput"]
    ratios = {"vs_static": bal / max(1.0, summary["suvm-static"]["throughput"]),
              "vs_sgx": bal / max(1.0, summary["sgx-shared"]["throughput"]),
              "fair_vs_static": summary["suvm-fair"]["throughput"] / max(1.0, summary["suvm-static"]["throughput"]),
              "fair_vs_sgx": summary["suvm-fair"]["throughput"] / max(1.0, summary["sgx-shared"]["throughput"])}
    print(f"{args.enclaves} enclaves, working sets {args.ws_mb:g} MB each, one EPC of {args.epc_mb:g} MB; "
          f"enclave 1: busy {args.busy:g} s, idle {args.idle:g} s, busy {args.busy:g} s; "
          f"{args.runs} run(s), medians")
    print(table(["config", "aggregate M/s", "all busy", "1 idle", "busy again", "slowest enclave",
                 "handover s"], rows))
    print(f"(M accesses/s; aggregate: the run's mean after its first {SETTLE_S:g} s; phases: medians of "
          "the aggregate's bins; slowest enclave: median of the slowest one's bins once all are busy again)")
    print(f"ballooning vs static split: {ratios['vs_static']:.2f}x (target >= {TARGETS['vs_static']}x); "
          f"vs SGX shared paging: {ratios['vs_sgx']:.2f}x (target >= {TARGETS['vs_sgx']}x); "
          f"idle share handed over in {summary['suvm-balloon']['handover_s']} s (target <= "
          f"{TARGETS['handover_s']} s)")
    print(f"fair ballooning vs static split: {ratios['fair_vs_static']:.2f}x; vs SGX shared paging: "
          f"{ratios['fair_vs_sgx']:.2f}x; idle share handed over in {summary['suvm-fair']['handover_s']} s")
    m = machine()
    print(machine_line(m))
    plot_path = Path(args.plot)
    plot_path.parent.mkdir(parents=True, exist_ok=True)
    plot(results, args, plot_path)
    out = write_json("multi_enclave", {"machine": m, "args": vars(args), "summary": summary,
                                       "ratios": ratios, "targets": TARGETS, "runs": results}, args.json)
    print(f"wrote {out} and {plot_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

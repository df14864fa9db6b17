"""`make bench`: run every benchmark of the paper's experiments, then write results/report.md.

Each benchmark prints its own table and the machine, writes results/<name>.json and draws
results/<name>.png; this runner sequences them (they must not run at the same time on a
2-core machine), says how far it is (the long ones draw a progress bar), keeps what each
printed, runs ``eleos-shim calibrate`` for the cost model's budgets against what this machine paid, and
assembles results/report.md: the machine, then per benchmark its figure and its tables.
Pass names to run a subset: ``run_all.py paging kvstore`` (``calibrate`` is one of them);
``--quick`` runs each once, short (a smoke run of the whole pipeline).
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.common import RESULTS, machine, machine_line, plot_bars  # noqa: E402

ORDER = ["calibrate", "ocall_cost", "syscall_paths", "libos_overhead", "suvm_micro", "paging",
         "kvstore", "faceverify", "multi_enclave"]
WHAT = {
    "calibrate": "the cost model's budgets against what this machine paid (`eleos-shim calibrate`)",
    "ocall_cost": "an app's routed null-ish call under direct and ocall, spin and account",
    "syscall_paths": "null call, pipe, TCP ping-pong under direct, ocall and rpc, 1 and 4 threads",
    "libos_overhead": "the LibOS's own cost per call: native vs routed with no exit",
    "suvm_micro": "SUVM's fast path against plain mmap, its miss, policies, page sizes",
    "paging": "the paper's paging microbenchmark: SUVM vs SGX paging per op and threads",
    "kvstore": "the paper's memcached experiment, throughput normalised to vanilla SGX",
    "faceverify": "the paper's face verification experiment, normalised to vanilla SGX",
    "multi_enclave": "enclaves sharing one EPC: SGX shared paging, SUVM static split, ballooning",
}


# --quick: each benchmark's own short settings, for a smoke run of the whole pipeline (the
# numbers are then rough: one run each).
QUICK = {"ocall_cost": ["--calls", "2000", "--runs", "2"],
         "syscall_paths": ["--scale", "0.05", "--runs", "1"],
         "libos_overhead": ["--scale", "0.05", "--runs", "1"],
         "suvm_micro": ["--quick", "--runs", "1"], "paging": ["--quick"],
         "kvstore": ["--runs", "1", "--duration", "2"],
         "faceverify": ["--runs", "1", "--duration", "2", "--warmup", "0.5"],
         "multi_enclave": ["--quick"]}


def command(name: str, quick: bool = False) -> list[str]:
    if name == "calibrate":
        return [sys.executable, "-m", "eleos_shim", "calibrate", "--json",
                str(RESULTS / "calibrate.json")]
    return [sys.executable, str(HERE / f"{name}.py"), *(QUICK.get(name, []) if quick else [])]


def run(name: str, quick: bool = False) -> tuple[int, str, float]:
    """Run one benchmark, echoing its output as it comes; (exit status, output, seconds)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(command(name, quick), cwd=HERE.parent, stdout=subprocess.PIPE, text=True,
                            bufsize=1)
    lines = []
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        lines.append(line)
    return proc.wait(), "".join(lines), time.perf_counter() - t0


def plot_calibrate(path: Path = RESULTS / "calibrate.json") -> Path | None:
    """Budget against paid (median and p90) per modeled event, from calibrate's JSON."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    rows = data.get("fidelity") or []
    if not rows:
        print("no calibrate figure: this calibrate's JSON has no fidelity rows")
        return None
    groups = {r["event"]: {"budget": r.get("budget_cycles"),
                           "paid, median": r.get("paid_median_cycles"),
                           "paid, p90": r.get("paid_p90_cycles"),
                           "real part, median": r.get("real_median_cycles")} for r in rows}
    return plot_bars(path.with_suffix(".png"), groups, log=True,
                     title="cost model: each event's budget and what this machine paid",
                     ylabel="cycles per event", note=machine_line())


def write_report(done: list[dict], quick: bool = False) -> Path:
    m = machine()
    lines = ["# eleos-shim benchmark report", "",
             f"Written by `make bench` (benchmarks/run_all.py{' --quick' if quick else ''}) "
             f"on {m['date']}." + (" A quick run: one short run of each benchmark, rough "
                                   "numbers." if quick else ""), "",
             f"**{machine_line(m)}**", "",
             "Ratios are medians of runs measured in the same run; a shared or loaded machine "
             "moves them (the load average is in each benchmark's machine line).", "",
             "| benchmark | what | exit | minutes |", "|---|---|---|---|"]
    for d in done:
        lines.append(f"| [{d['name']}](#{d['name']}) | {WHAT.get(d['name'], '')} | "
                     f"{d['rc']} | {d['seconds'] / 60:.1f} |")
    for d in done:
        lines += ["", f"## {d['name']}", "", WHAT.get(d["name"], ""), ""]
        # the figure, and the app benchmarks' second one (closed-loop throughput)
        for png in (RESULTS / f"{d['name']}.png", RESULTS / f"{d['name']}-closed-loop.png"):
            if png.exists():
                lines += [f"![{png.stem}]({png.name})", ""]
        if (RESULTS / f"{d['name']}.json").exists():
            lines += [f"Data: [{d['name']}.json]({d['name']}.json)", ""]
        lines += ["```", d["output"].rstrip(), "```"]
    out = RESULTS / "report.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    return out


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    names = [a for a in argv if a != "--quick"] or ORDER
    unknown = [n for n in names if n not in ORDER]
    if unknown:
        print(f"no such benchmark: {', '.join(unknown)} (have: {', '.join(ORDER)})")
        return 2
    RESULTS.mkdir(parents=True, exist_ok=True)
    done, failed = [], []
    t0 = time.perf_counter()
    for i, name in enumerate(names, 1):
        # each benchmark draws its own progress bar on stderr; this line says where we are
        print(f"\n== {name} ({i}/{len(names)}, {(time.perf_counter() - t0) / 60:.0f} min so far) ==",
              flush=True)
        rc, output, seconds = run(name, quick)
        if name == "calibrate" and rc == 0:
            plot_calibrate()
        print(f"== {name}: exit {rc} after {seconds:.0f} s", flush=True)
        done.append({"name": name, "rc": rc, "output": output, "seconds": seconds})
        if rc:
            failed.append(name)
    print(f"\nwrote {write_report(done, quick)}")
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

"""Helpers every benchmark shares: the machine it ran on, medians, a table, JSON output.

Benchmarks are programs, not tests: they compare configurations in the same run and report
ratios with medians of several runs, print the machine, and write JSON under results/.
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"


def machine() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import psutil
        load = os.getloadavg()[0]
        mem_gb = psutil.virtual_memory().total / 2**30
    except Exception:
        load, mem_gb = float("nan"), float("nan")
    return {"platform": platform.platform(), "cpu": cpu, "cores": os.cpu_count(),
            "memory_gb": round(mem_gb, 1), "python": sys.version.split()[0],
            "loadavg_1m": round(load, 2), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def machine_line(m: dict | None = None) -> str:
    m = m or machine()
    return (f"machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB, {m['platform']}, "
            f"Python {m['python']}, load {m['loadavg_1m']}")


def median(xs) -> float:
    return statistics.median(list(xs))


def same_run_ratio(runs: list[dict], key: str, num: dict, den: dict) -> float | None:
    """Median over runs of ``key`` of the row that matches ``num`` (field: value) over that of
    the row that matches ``den`` in the same run (rows carry ``run``): ratios of configurations
    measured side by side, so drift between runs cancels."""
    rs = []
    for r in {x["run"] for x in runs}:
        a = [x for x in runs if x["run"] == r and all(x.get(k) == v for k, v in num.items())]
        b = [x for x in runs if x["run"] == r and all(x.get(k) == v for k, v in den.items())]
        if a and b and a[0][key] is not None and b[0][key]:
            rs.append(a[0][key] / b[0][key])
    return median(rs) if rs else None


def fmt_ratio(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def fmt_count(v) -> str:
    return f"{v:,.0f}" if isinstance(v, (int, float)) else "-"


def table(headers: list[str], rows: list[list]) -> str:
    cells = [[h for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(c) -> str:
    if isinstance(c, float):
        if c == 0 or abs(c) >= 100:
            return f"{c:,.0f}"
        if abs(c) >= 10:
            return f"{c:.1f}"
        return f"{c:.2f}"
    return str(c)


def write_json(name: str, data: dict, path: str | None = None) -> Path:
    out = Path(path) if path else RESULTS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as f:
        json.dump(data, f, indent=1, default=str)
    return out


def add_pin_argument(ap) -> None:
    ap.add_argument("--no-pin", dest="pin", action="store_false",
                    help="do not give the RPC worker a core of its own (see pin_rpc_core)")


def pin_rpc_core(enabled: bool = True) -> dict[str, str]:
    """Eleos's setting on a small machine: the RPC worker gets a core of its own.

    The paper ran its load generator on another host and its RPC workers on dedicated cores.
    Here the client shares the box, so every configuration runs with this process (and so the
    server and the client it starts) on CPU 0, and the RPC worker alone on CPU 1
    (ELEOS_RPC_CPUS).  Configurations without RPC leave CPU 1 idle: that core is what Eleos
    spends.  Returns the environment for the servers (ELEOS_RPC_CPUS=none when not pinned)."""
    cpus = os.sched_getaffinity(0)
    if not enabled or not {0, 1} <= cpus:
        return {"ELEOS_RPC_CPUS": "none"}
    os.sched_setaffinity(0, {0})
    return {"ELEOS_RPC_CPUS": "1"}


def pin_line(env: dict[str, str]) -> str:
    if env.get("ELEOS_RPC_CPUS") == "1":
        return "cores: server and client on CPU 0, RPC worker alone on CPU 1 (ELEOS_RPC_CPUS=1)"
    return "cores: not pinned (server, client and RPC worker share every CPU)"


def add_client_argument(ap) -> None:
    ap.add_argument("--client-preempts", dest="client_batch", action="store_false",
                    help="run the load generator as an ordinary task (see client_preexec)")


def client_preexec(batch: bool = True):
    """A preexec_fn that makes the load generator SCHED_BATCH (None when ``batch`` is off).

    The paper's load generator ran on another host.  Here it shares CPU 0 with the server,
    and as an ordinary task every reply that wakes it may preempt the server in the middle
    of a round of ready connections, which a client on another host never does (it costs
    context switches and breaks up the batches of both sides).  SCHED_BATCH tasks do not
    preempt on wake-up: the client runs when the server blocks, or at the scheduler tick.
    Every configuration, memcached included, gets the same client.  The function also serves
    as a client thread's first call (the face benchmark's client is threads of its own
    process): on Linux the policy is per thread, pid 0 the calling one."""
    if not batch:
        return None

    def preexec() -> None:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    return preexec


def client_line(batch: bool) -> str:
    if batch:
        return ("client: SCHED_BATCH, so its wake-ups do not preempt the server (it stands in "
                "for the paper's client on another host; --client-preempts to turn off)")
    return "client: an ordinary task (its wake-ups may preempt the server mid-round)"


# -- server capacity -------------------------------------------------------------------------
# The paper's load generators ran on other hosts and its servers were saturated, so what it
# reports is the server's capacity: how many operations a second the server's own threads
# can serve.  Here the client shares the server's core, so a closed loop measures 1 / (server
# time + client time) per operation, which compresses every ratio between configurations.
# The capacity takes the client out: operations served over the CPU time of the server's app
# threads alone, read per thread from /proc before and after the load.  The shim's host-side
# threads (RPC workers, the EPC driver's reclaimer and fault threads, an EPC domain's member
# thread) name themselves ``eleos-*`` (pthread_setname_np in untrusted/_native/) and sat, in
# the paper, on cores of their own: they are not the app's.

HOST_THREAD_PREFIX = "eleos-"
RPC_WORKER = "eleos-rpc"            # the RPC workers' name (untrusted/_native/rpc_workers.c)
MEMCACHED_WORKER = "mc-worker"      # memcached (1.6) names the threads that serve requests
_TICK = os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass(frozen=True)
class ThreadCPU:
    """One thread's name (its comm) and CPU seconds so far; ``waited_s``: how long it was
    runnable but not running (on a run queue, from schedstat): a thread whose core others
    took, as a shared machine's tenants take the RPC worker's."""
    name: str
    user_s: float
    system_s: float
    waited_s: float = 0.0

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.system_s


def parse_task_stat(text: str) -> ThreadCPU:
    """A /proc/<pid>/task/<tid>/stat line: the name sits in parentheses (and may hold spaces
    and parentheses itself, so it ends at the last ``)``); utime and stime, fields 14 and 15,
    are in clock ticks."""
    name = text[text.index("(") + 1:text.rindex(")")]
    fields = text[text.rindex(")") + 2:].split()
    return ThreadCPU(name, int(fields[11]) / _TICK, int(fields[12]) / _TICK)


def parse_schedstat(text: str) -> float:
    """Seconds a thread waited on a run queue, from /proc/<pid>/task/<tid>/schedstat (its
    second field, in ns: on-CPU time, run-queue wait, time slices)."""
    return int(text.split()[1]) / 1e9


def thread_cpu(pid: int) -> dict[int, ThreadCPU]:
    """Every live thread of a process, by thread id (empty if the process is gone)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            t = parse_task_stat((task / "stat").read_text())
        except (OSError, ValueError):
            continue    # a thread that ended meanwhile
        try:
            t = dataclasses.replace(t, waited_s=parse_schedstat((task / "schedstat").read_text()))
        except (OSError, ValueError, IndexError):
            pass        # a kernel without schedstats: no wait, the CPU still counts
        out[int(task.name)] = t
    return out


def thread_cpu_delta(before: dict[int, ThreadCPU], after: dict[int, ThreadCPU]) -> dict[int, ThreadCPU]:
    """Per thread alive at the second reading, the CPU it spent between the two: a thread
    born in between counts from zero (as does a reused id whose count went down).  A thread
    that ended in between is not counted (the servers' app threads live as long as they)."""
    out = {}
    for tid, a in after.items():
        b = before.get(tid)
        if b is None or b.cpu_s > a.cpu_s:
            b = ThreadCPU(a.name, 0.0, 0.0)
        out[tid] = ThreadCPU(a.name, a.user_s - b.user_s, a.system_s - b.system_s,
                             max(0.0, a.waited_s - b.waited_s))
    return out


def is_app_thread(name: str) -> bool:
    """A shim server's thread that is the app's (not one of the shim's named host threads)."""
    return not name.startswith(HOST_THREAD_PREFIX)


def selected_cpu_s(delta: dict[int, ThreadCPU], select: Callable[[str], bool] = is_app_thread) -> float:
    """The CPU seconds of the threads whose name ``select`` accepts."""
    return sum(t.cpu_s for t in delta.values() if select(t.name))


def cpu_by_name(delta: dict[int, ThreadCPU]) -> dict[str, float]:
    """CPU seconds per thread name (threads of one name summed), for the record."""
    out: dict[str, float] = {}
    for t in delta.values():
        out[t.name] = round(out.get(t.name, 0.0) + t.cpu_s, 4)
    return out


def waited_by_name(delta: dict[int, ThreadCPU]) -> dict[str, float]:
    """Run-queue wait seconds per thread name (threads of one name summed)."""
    out: dict[str, float] = {}
    for t in delta.values():
        out[t.name] = round(out.get(t.name, 0.0) + t.waited_s, 4)
    return out


def rpc_worker_waited(delta: dict[int, ThreadCPU], window_s: float) -> float | None:
    """The share of a window the RPC workers (each, on average) spent runnable but not
    running: their core was taken (None without workers).  The paper's had cores of their
    own; a worker kept waiting makes enclave calls spin longer and fall back to OCALLs."""
    w = [t.waited_s for t in delta.values() if t.name == RPC_WORKER]
    return sum(w) / len(w) / window_s if w and window_s > 0 else None


def capacity(served: int, cpu_s: float) -> float | None:
    """Operations per second of the selected threads' CPU: the throughput they would sustain
    saturated, each on a core of its own (None if they spent no measurable CPU)."""
    return served / cpu_s if cpu_s > 0 else None


def children_cpu_s() -> float:
    """CPU seconds of this process's children that have ended and been waited for (their
    own waited-for children included): a load generator's, read around its run."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


# -- figures ---------------------------------------------------------------------------------
# The paper's results are figures: each benchmark draws its own beside its JSON, through this
# one helper, so they all read the same way (grouped bars, the baseline as a dashed line, the
# paper's target as a black tick, the value on each bar).

# One colour per configuration in every figure.
COLORS = {"sgx": "#1f77b4", "eleos": "#ff7f0e", "native": "#2ca02c", "memcached": "#7f7f7f",
          "suvm-only": "#9467bd", "rpc-only": "#8c564b", "no-exits": "#bcbd22", "direct": "#2ca02c", "ocall": "#1f77b4",
          "rpc": "#ff7f0e", "plain": "#7f7f7f"}


def figure_path(name: str, json_path: str | Path | None = None) -> Path:
    """results/<name>.png, or beside an explicit JSON path (same stem)."""
    return Path(json_path).with_suffix(".png") if json_path else RESULTS / f"{name}.png"


def plot_bars(path: str | Path, groups: dict[str, dict[str, float | None]], *, title: str,
              ylabel: str, baseline: str | None = None, targets: dict[str, float] | None = None,
              note: str | None = None, log: bool = False,
              target_label: str = "paper", target_series: str | None = None,
              ref_line: float | None = None) -> Path | None:
    """Grouped bars: one group per key of ``groups`` (a workload, a database, an op and its
    threads), one bar per series in it (a mode, a region size).  With ``baseline`` every
    value is divided by that series' value in its group (the paper's "normalised to vanilla
    SGX") and 1.0 is drawn dashed (``ref_line``: a dashed line for values already divided).
    ``targets``' ticks span the group, or only ``target_series``' bar.  ``targets``: the paper's value per group, a black tick.
    Returns the PNG's path, or None (with a line saying why) if matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no figure: matplotlib is not installed (pip install -e '.[bench]')")
        return None
    if baseline:
        groups = normalise(groups, baseline)
    series = list(dict.fromkeys(s for row in groups.values() for s in row))
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(min(11.0, max(6.0, 1.2 * len(groups) * max(1, len(series)) ** 0.5 + 3.5)), 3.8))
    colors = plt.get_cmap("tab10")
    for i, s in enumerate(series):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        vals = [row.get(s) for row in groups.values()]
        # "eleos@2.01" (a configuration at a time scale) in eleos's colour, hatched
        base, scaled = s.partition("@")[0], "@" in s
        bars = ax.bar([x for x, v in zip(xs, vals) if v is not None],
                      [v for v in vals if v is not None], width * 0.95, label=s,
                      color=COLORS.get(s, COLORS.get(base, colors(i % 10))),
                      hatch="//" if scaled else None, edgecolor="white" if scaled else None)
        ax.bar_label(bars, labels=[_bar_label(v) for v in vals if v is not None], fontsize=7,
                     padding=1)
    if targets:
        labelled = False
        for g, name in enumerate(groups):
            if targets.get(name) is None:
                continue
            if target_series in series:     # the target is that bar's: a tick over it alone
                x = g + (series.index(target_series) - (len(series) - 1) / 2) * width
                lo, hi = x - width * 0.6, x + width * 0.6
            else:
                lo, hi = g - 0.45, g + 0.45
            ax.hlines(targets[name], lo, hi, colors="black", linewidth=2,
                      label=None if labelled else target_label)
            labelled = True
    if baseline or ref_line is not None:
        ax.axhline(1.0 if baseline else ref_line, color="grey", linestyle="--", linewidth=0.8)
    if log:
        ax.set_yscale("log")
    ax.set_xticks(range(len(groups)), list(groups), fontsize=8)
    ax.set_ylabel(ylabel + (f" (normalised to {baseline})" if baseline else ""), fontsize=9)
    ax.set_title(title, fontsize=10)
    ax.margins(y=0.15)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    if note:
        fig.text(0.01, 0.01, note, fontsize=6.5, color="dimgrey")
    fig.tight_layout(rect=(0, 0.04 if note else 0, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")
    return path


def normalise(groups: dict[str, dict[str, float | None]], baseline: str) -> dict:
    """Each value over its group's ``baseline`` value (None where either is missing)."""
    return {g: {s: (v / row[baseline] if v is not None and row.get(baseline) else None)
                for s, v in row.items()} for g, row in groups.items()}


def _bar_label(v: float) -> str:
    if v >= 10_000:
        return f"{v / 1000:.0f}k"
    if v >= 1000:
        return f"{v / 1000:.1f}k"
    if v >= 100:
        return f"{v:.0f}"
    return f"{v:.2f}" if v < 10 else f"{v:.1f}"


# -- progress ----------------------------------------------------------------------------------

class Progress:
    """How far a long run is, on stderr (the tables stay on stdout).

    Run at a terminal, a rich progress bar with the time left, the run's own prints going
    above it; when stdout is not a terminal (``make bench`` keeps it, or ``> file``), a bar
    would garble the lines that go past it, so each step is one line instead:
    ``kvstore 3/12, 2:31 so far, ~7:30 left: run 0 fits sgx``.

        bar = Progress(total=12, what="kvstore").start()
        ...; bar.step("run 0 sgx")
        bar.stop()            # or: with Progress(...) as bar:
    """

    def __init__(self, total: int, what: str):
        self.total, self.what = total, what
        self._bar = self._task = None
        self._done, self._t0 = 0, time.monotonic()

    def start(self) -> "Progress":
        self._t0 = time.monotonic()
        if not (sys.stdout.isatty() and sys.stderr.isatty()):
            return self
        try:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress as Bar,
                                       TextColumn, TimeElapsedColumn, TimeRemainingColumn)
        except ImportError:
            return self
        self._bar = Bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(),
                        console=Console(stderr=True), redirect_stdout=True, transient=True)
        self._bar.start()
        self._task = self._bar.add_task(self.what, total=self.total)
        return self

    def step(self, label: str = "") -> None:
        """Say that the next of the ``total`` steps starts (``label``: which)."""
        if self._bar is not None:
            self._bar.update(self._task, completed=self._done,
                             description=f"{self.what}: {label}" if label else self.what)
        else:
            elapsed = time.monotonic() - self._t0
            left = (f", ~{_mmss(elapsed / self._done * (self.total - self._done))} left"
                    if self._done else "")
            sys.stderr.write(f"{self.what} {self._done + 1}/{self.total}, {_mmss(elapsed)} so far"
                             f"{left}: {label}\n")
            sys.stderr.flush()
        self._done += 1

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def __enter__(self) -> "Progress":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _mmss(seconds: float) -> str:
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"

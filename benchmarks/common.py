"""Helpers every benchmark shares: the machine it ran on, medians, a table, JSON output.

Benchmarks are programs, not tests: they compare configurations in the same run and report
ratios with medians of several runs, print the machine, and write JSON under results/.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

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
    Every configuration, memcached included, gets the same client."""
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

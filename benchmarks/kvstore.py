"""The paper's memcached experiment: the KV store's throughput under native, sgx and eleos.

The unmodified server (apps/kvstore.py) runs under ``python -m eleos_shim --mode M`` with its
items (hash table, slab pages, values) in one mmap arena, against two databases:
  (a) one that fits in the EPC, and
  (b) one 5.5x the EPC (the paper: 500 MB with 93 MB usable).
Scaled down by default so a run takes minutes: EPC 16 MB, databases of 8 MB and 88 MB of items
(1 KB values and 64-byte keys, memaslap's defaults; an item takes a 1184-byte slab chunk).
Debian's memcached (``-t 1``: one worker thread, as our server) under the same load is the
native reference.

The load: memaslap's workload, closed loop, get:set 9:1.
  * memcaslap (Debian's memaslap) where installed, for database (a). memaslap only reads keys
    it has itself set in the same run, and sets are 10% of its operations, so its database
    grows slowly from empty: it cannot hold a given database size, so it is not used for (b).
  * apps/kvload.py otherwise, and always for (b): it sets every key of the database once
    (a pipelined warm-up) and then reads and writes keys drawn uniformly from all of them, so
    the whole database is the working set.
The tool is named in every row.  The client shares CPU 0 with the server and runs as
SCHED_BATCH, so that its wake-ups do not preempt the server mid-round as a client on another
host (the paper's) never does; ``--client-preempts`` runs it as an ordinary task, and the
``preempted/op`` column shows the difference (benchmarks/common.py, client_preexec).

Time dilation (ELEOS_TIME_SCALE, DESIGN.md section 3): the cost model's budgets are cycles of C
programs, and our server is Python, so an exit is a smaller share of its request than of
memcached's.  The benchmark measures the factor in the same run, first: server CPU time per
operation served (user + system, from /proc) of our server under `native` over Debian
memcached's, under the same load; the median over runs is the scale S (from database (a) when
it runs).  Nothing else chooses it.  Then every enclave configuration runs at scale 1 (faithful
for this Python app) and at S (a C-speed app), labelled ``sgx`` and ``sgx@S``.

Two measures side by side, from the same runs.  The closed-loop throughput is what this box
delivers with the client on the server's core: 1 / (server time + client time) per operation.
The server's capacity is the paper's (its clients ran on other hosts, its server was saturated,
its RPC workers had cores of their own): operations served over the CPU time of the server's
app threads alone, read per thread from /proc before and after the load; the shim's host
threads (named ``eleos-*``: the RPC workers, the EPC driver's) and the client are left out
(benchmarks/common.py).  The window is the load alone: kvload's warm-up runs before it, and
the server's own counters say how many operations it served in it.

Each run starts every configuration once, in a rotated order so drift on a shared machine
spreads evenly; each ratio is the median over runs of ratios measured within the same run.
Exits and faults per operation come from the shim's stats over the server's life (warm-up
included). ``--demo`` is the short version of (a) for ``make demo``: one run, three modes.

    python benchmarks/kvstore.py [--runs 3] [--duration 8] [--epc-mb 16] [--json PATH]
    python benchmarks/kvstore.py --demo
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import add_client_argument, add_pin_argument, client_line, client_preexec, pin_line, pin_rpc_core, ROOT, machine, machine_line, median, table, write_json  # noqa: E402
from benchmarks.common import Progress, figure_path, plot_bars  # noqa: E402
from benchmarks.common import (MEMCACHED_WORKER, capacity, children_cpu_s, cpu_by_name,  # noqa: E402
                               fmt_count, fmt_ratio, is_app_thread, rpc_worker_waited,
                               same_run_ratio, selected_cpu_s, thread_cpu, thread_cpu_delta,
                               waited_by_name)
from eleos_shim.harness import CONFIGS, AppProcess, app_command, app_env  # noqa: E402

SERVER = "apps/kvstore.py"
KVLOAD = "apps/kvload.py"
CHUNK = 1184            # slab chunk of a 40-byte header + 64-byte key + 1024-byte value
KEY_SIZE, VALUE_SIZE = 64, 1024


def store_mb(db_mb: float) -> int:
    """Item memory for a database: the data plus room for a partly filled page per class."""
    return int(math.ceil(db_mb * 1.1)) + 2


def db_keys(db_mb: float) -> int:
    return int(db_mb * 1024 * 1024 // CHUNK)


# -- servers ------------------------------------------------------------------------------
def base_config(label: str) -> str:
    """``sgx@5.2`` -> ``sgx``."""
    return label.split("@")[0]


def label_scale(label: str) -> float:
    return float(label.split("@")[1]) if "@" in label else 1.0


class Server:
    def __init__(self, label: str, db_mb: float, args) -> None:
        config = self.config = base_config(label)
        if config == "memcached":
            self.err = tempfile.TemporaryFile(mode="w+")
            self.port = _free_port()
            cmd = [shutil.which("memcached"), "-p", str(self.port), "-U", "0", "-l", "127.0.0.1",
                   "-m", str(store_mb(db_mb)), "-t", "1", "-c", "1024"]
            if os.geteuid() == 0:
                cmd += ["-u", "root"]
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.err)
            _wait_listening(self.port, self.proc)
            return
        self.app = AppProcess(
            app_command(SERVER, "-p", "0", "-A", "--allow-control-keys",
                        "-m", str(store_mb(db_mb)), "-c", "1024"),
            app_env(config, {"ELEOS_EPC_MB": args.epc_mb, "ELEOS_COST": args.cost,
                             "ELEOS_TIME_SCALE": label_scale(label), **args.pin_env}),
            name=f"kvstore-{config}", stats=True, start_timeout=120,
            exit_command=b"shutdown\r\n")
        self.proc, self.port = self.app.proc, self.app.port

    def server_stats(self) -> dict:
        """memcached's ``stats``, as a dict of ints where they are ints."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=60) as s:
            s.sendall(b"stats\r\n")
            data = b""
            while not data.endswith(b"END\r\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        out = {}
        for line in data.decode().splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == "STAT":
                out[parts[1]] = int(parts[2]) if parts[2].isdigit() else parts[2]
        return out

    def stop(self) -> str:
        """Stop the server; returns its stderr."""
        if self.config != "memcached":
            self.app.stop(timeout=120)
            return self.app.stderr()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.err.seek(0)
        text = self.err.read()
        self.err.close()
        return text

    def shim_stats(self) -> dict:
        """The shim's stats (after stop); removes the server's temporary files."""
        if self.config == "memcached":
            return {}
        stats = self.app.stats() or {}
        self.app.close()
        return stats


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port: int, proc: subprocess.Popen) -> None:
    for _ in range(1000):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except ConnectionRefusedError:
            if proc.poll() is not None:
                raise RuntimeError("memcached exited at start") from None
            try:
                proc.wait(timeout=0.01)
            except subprocess.TimeoutExpired:
                pass
    raise RuntimeError("memcached never listened")


# -- load ---------------------------------------------------------------------------------
def run_kvload(port: int, db_mb: float, args, warmup: bool = False) -> dict:
    """The measured run (no warm-up), or with ``warmup`` the warm-up alone: every key set once
    (and one operation per client process), so the measured window holds the workload only."""
    phase = (["-x", str(args.client_procs)] if warmup
             else ["-t", str(args.duration), "--no-warmup"])
    cmd = [sys.executable, KVLOAD, "-s", f"127.0.0.1:{port}", "-c", str(args.connections),
           "-P", str(args.client_procs), *phase, "-k", str(db_keys(db_mb)),
           "--key-size", str(KEY_SIZE), "--value-size", str(VALUE_SIZE), "--json", "-", "-q"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          timeout=args.duration + 900, preexec_fn=client_preexec(args.client_batch))
    try:
        rep = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise RuntimeError(f"kvload failed: {proc.stderr[-2000:]}") from None
    return {"tool": "kvload", "ops_per_s": rep["ops_per_s"], "ops": rep["ops"],
            "errors": rep["errors"], "get_misses": rep["get_misses"],
            "p50_us": rep["latency_us"]["p50"], "p99_us": rep["latency_us"]["p99"],
            "warmup_s": rep["warmup_s"]}


_PERIOD = re.compile(r"^Period\s+\d+\s+(\d+)\s+(\d+)", re.M)


def run_memcaslap(port: int, db_mb: float, args) -> dict:
    # The key window per connection (in units of 1k items) bounds the keys memaslap uses; the
    # store's -m bounds the arena, so (a) stays within the EPC whatever memaslap reaches.
    window = f"{max(1, math.ceil(db_keys(db_mb) / args.connections / 1024))}k"
    cmd = [shutil.which("memcaslap"), "-s", f"127.0.0.1:{port}", "-T", "1",
           "-c", str(args.connections), "-t", f"{int(args.duration)}s", "-w", str(window),
           "-X", str(VALUE_SIZE)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.duration + 120,
                          preexec_fn=client_preexec(args.client_batch))
    out = proc.stdout + proc.stderr
    m = re.search(r"Run time: ([\d.]+)s Ops: (\d+) TPS: (\d+)", out)
    if proc.returncode != 0 or not m:
        raise RuntimeError(f"memcaslap failed ({proc.returncode}): {out[-2000:]}")
    errors = len(re.findall(r"(CLIENT|SERVER)_ERROR|^ERROR", out, re.M))
    avg = re.search(r"Total Statistics.*?Avg:\s+(\d+)", out, re.S)
    return {"tool": "memcaslap", "ops_per_s": float(m.group(3)), "ops": int(m.group(2)),
            "errors": errors, "get_misses": None, "p50_us": None,
            "avg_us": float(avg.group(1)) if avg else None, "warmup_s": 0.0}


def tool_for(db: str, args) -> str:
    if args.load != "auto":
        return args.load
    if db == "fits" and shutil.which("memcaslap"):
        return "memcaslap"
    return "kvload"


def preemptions(pid: int) -> dict[int, int]:
    """Per thread of a process, how often it was descheduled while runnable (involuntary
    context switches, from /proc): a client on the server's core that preempts it shows here."""
    out = {}
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        try:
            for line in status.read_text().splitlines():
                if line.startswith("nonvoluntary_ctxt_switches:"):
                    out[int(status.parent.name)] = int(line.split()[1])
        except OSError:
            pass    # a thread that ended meanwhile
    return out


def most_preempted(before: dict[int, int], after: dict[int, int]) -> int:
    """The largest per-thread increase between two readings: the server's busiest thread
    (our server's app thread, memcached's worker), whatever helper threads come and go."""
    return max((n - before.get(tid, 0) for tid, n in after.items()), default=0)


def cpu_s(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process so far, all its threads."""
    t = psutil.Process(pid).cpu_times()
    return t.user, t.system


def served_ops(sstats: dict) -> int:
    """Operations a server has served so far, from its ``stats``."""
    return int(sstats.get("cmd_get", 0)) + int(sstats.get("cmd_set", 0))


def one_run(config: str, db: str, db_mb: float, args) -> dict:
    tool = tool_for(db, args)
    srv = Server(config, db_mb, args)
    pid = srv.proc.pid
    try:
        warm = run_kvload(srv.port, db_mb, args, warmup=True) if tool == "kvload" else None
        # The measured window: the load alone, its operations counted by the server itself.
        served0 = served_ops(srv.server_stats())
        before = preemptions(pid)
        cpu0, threads0, client0 = cpu_s(pid), thread_cpu(pid), children_cpu_s()
        t0 = time.monotonic()
        load = (run_memcaslap if tool == "memcaslap" else run_kvload)(srv.port, db_mb, args)
        window_s = time.monotonic() - t0
        cpu1, threads1, client1 = cpu_s(pid), thread_cpu(pid), children_cpu_s()
        preempted = most_preempted(before, preemptions(pid))
        sstats = srv.server_stats()
    finally:
        err = srv.stop()
    shim = srv.shim_stats()
    if warm:
        load["errors"] += warm["errors"]
        load["warmup_s"] = warm["warmup_s"]
    if load["errors"]:
        raise RuntimeError(f"{config} {db}: {load['errors']} client errors\n{err[-2000:]}")
    served = max(1, served_ops(sstats) - served0)
    life = max(1, served_ops(sstats))       # for the shim's counts, over the server's life
    server_user = cpu1[0] - cpu0[0]
    server_cpu = server_user + cpu1[1] - cpu0[1]
    threads = thread_cpu_delta(threads0, threads1)
    # Every thread but the shim's host threads (named eleos-*): memcached's are all its own,
    # its LRU maintainer included, which does work our server does on its one thread.
    app_cpu = selected_cpu_s(threads, is_app_thread)
    return {
        "config": config, "db": db, "db_mb": db_mb, **load,
        "served": served, "time_scale": label_scale(config), "window_s": window_s,
        "server_cpu_s": server_cpu, "cpu_us_per_op": server_cpu / served * 1e6,
        "user_us_per_op": server_user / served * 1e6,
        # The server's capacity: operations over its app threads' CPU alone (common.py).
        "app_cpu_s": app_cpu, "app_cpu_us_per_op": app_cpu / served * 1e6,
        "capacity_ops_per_s": capacity(served, app_cpu),
        "app_busy": app_cpu / window_s if window_s > 0 else None,
        "thread_cpu_s": cpu_by_name(threads), "thread_waited_s": waited_by_name(threads),
        "rpc_worker_waited": rpc_worker_waited(threads, window_s),
        "request_thread_us_per_op": _request_thread_cpu(config, threads) / served * 1e6,
        "client_cpu_us_per_op": (client1 - client0) / served * 1e6,
        "curr_items": sstats.get("curr_items"),
        "evictions": sstats.get("evictions"), "store_bytes": sstats.get("bytes"),
        "exits_per_op": shim.get("exits", {}).get("total", 0) / life,
        "preemptions_per_op": preempted / max(1, load["ops"]),
        "epc_faults_per_op": shim.get("epc", {}).get("faults", 0) / life,
        "suvm_faults_per_op": shim.get("suvm", {}).get("faults", 0) / life,
        "rpc_processed": shim.get("rpc", {}).get("processed", 0),
        "rpc_fallbacks": shim.get("rpc", {}).get("fallbacks", 0),
        # The share of the server's life spent paying modeled events (ocall, epc_fault, indirect).
        "modeled_exit_share": _modeled_share(shim),
        "blocked_wait_us_per_op": blocked_wait_us(shim, life),
        "events": shim.get("events", {}),
        "shim": shim,
    }


def _request_thread_cpu(config: str, threads: dict) -> float:
    """The CPU of the thread that reads and answers the requests: memcached's worker (by its
    name), or all of our server's app threads (it has one)."""
    if base_config(config) == "memcached":
        return selected_cpu_s(threads, lambda name: name == MEMCACHED_WORKER)
    return selected_cpu_s(threads, is_app_thread)


def _modeled_share(shim: dict) -> float:
    return shim.get("modeled_share", 0.0)


def blocked_wait_us(shim: dict, life: int) -> float:
    """Under RPC with ELEOS_RPC_WAIT=ocall, what the app paid per operation (us, over the
    server's life) for the waits that exited: a wait that may block (an epoll wait with
    nothing ready: the server idle, its client on the same core) leaves through an OCALL,
    paying its budget and the indirect window after it.  With the default (spin) such a wait
    blocks in place of Eleos's spin (enclave_ocalls.c: rpc_wait) and this is 0.  The OCALLs'
    share of the ocall events is taken from the call counts (fallbacks are OCALLs too); the
    indirect window's share from all exits (page faults' AEXs included).  0 off RPC."""
    if shim.get("syscalls") != "rpc" or not shim.get("tsc_mhz"):
        return 0.0
    calls = shim.get("calls", {}).values()
    waits = sum(c.get("ocall", 0) for c in calls)
    fallbacks = sum(c.get("fallback", 0) for c in calls)
    aex = shim.get("transitions", {}).get("aex", 0)
    ev = shim.get("events", {})
    paid = 0.0
    if waits:
        paid += ev.get("ocall", {}).get("paid_cycles", 0) * waits / (waits + fallbacks)
        paid += ev.get("indirect", {}).get("paid_cycles", 0) * waits / (waits + fallbacks + aex)
    return paid / (shim["tsc_mhz"] * 1e6) / max(1, life) * 1e6


def measured_scale(runs: list[dict], db: str, key: str = "cpu_us_per_op") -> float | None:
    """Median over runs of our native server's CPU per operation over memcached's (``key``
    user_us_per_op: user time only, for the record)."""
    rs = []
    for r in {x["run"] for x in runs}:
        a = [x for x in runs if x["run"] == r and x["db"] == db and x["config"] == "native"]
        b = [x for x in runs if x["run"] == r and x["db"] == db and x["config"] == "memcached"]
        if a and b and b[0][key] > 0:
            rs.append(a[0][key] / b[0][key])
    return median(rs) if rs else None


def _fallback_share(x: dict) -> float | None:
    n = x["rpc_processed"] + x["rpc_fallbacks"]
    return x["rpc_fallbacks"] / n if n else None


# -- report -------------------------------------------------------------------------------
def ratio(runs: list[dict], db: str, num: str, den: str, key: str = "ops_per_s") -> float | None:
    """Median over runs of num/den throughput measured in the same run (``key``
    capacity_ops_per_s: of the servers' capacities)."""
    return same_run_ratio(runs, key, {"db": db, "config": num}, {"db": db, "config": den})


def _ops(summary: list[dict], db: str, config: str, key: str = "ops_per_s") -> float | str:
    row = [s for s in summary if s["db"] == db and s["config"] == config]
    return row[0][key] if row else "-"


_x, _n = fmt_ratio, fmt_count


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration", type=float, default=8.0, help="measured seconds per run")
    ap.add_argument("--epc-mb", type=float, default=16.0, help="usable EPC (paper: 93)")
    ap.add_argument("--fit-mb", type=float, default=None, help="database (a), default EPC/2")
    ap.add_argument("--big-mb", type=float, default=None, help="database (b), default 5.5x EPC")
    ap.add_argument("--dbs", default="fits,big", help="which databases: fits, big")
    ap.add_argument("--modes", default="native,no-exits,sgx,eleos",
                    help="comma-separated, from " + ", ".join(CONFIGS) + " (no-exits: for the "
                    "breakdown of a request's time)")
    ap.add_argument("--no-memcached", action="store_true", help="skip the memcached reference")
    ap.add_argument("--load", default="auto", choices=("auto", "memcaslap", "kvload"))
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--client-procs", type=int, default=2, help="kvload client processes")
    ap.add_argument("--cost", default="spin", choices=("spin", "account"))
    add_pin_argument(ap)
    add_client_argument(ap)
    ap.add_argument("--demo", action="store_true",
                    help="short (a) only: one run of 3 s, three modes (make demo)")
    ap.add_argument("--json", help="output path (default results/kvstore.json)")
    args = ap.parse_args(argv)
    args.pin_env = pin_rpc_core(args.pin)
    if args.demo:
        args.runs, args.duration, args.dbs = 1, 3.0, "fits"
        args.modes = "native,sgx,eleos"
    modes = args.modes.split(",")
    bad = [m for m in modes if m not in CONFIGS]
    if bad or "sgx" not in modes or "native" not in modes:
        ap.error(f"--modes: unknown {bad}" if bad else "--modes needs native and sgx")
    if args.load == "memcaslap" and not shutil.which("memcaslap"):
        ap.error("memcaslap is not installed (scripts/install-system-deps.sh)")
    dbs = {"fits": args.fit_mb or args.epc_mb / 2, "big": args.big_mb or args.epc_mb * 5.5}
    dbs = {k: v for k, v in dbs.items() if k in args.dbs.split(",")}
    configs = list(modes)
    if not args.no_memcached:
        if shutil.which("memcached"):
            configs.append("memcached")
        else:
            print("!!! memcached not installed: no native reference "
                  "(scripts/install-system-deps.sh)", flush=True)
    m = machine()
    print(machine_line(m), flush=True)
    m["pinning"] = pin_line(args.pin_env)
    print(m["pinning"], flush=True)
    m["client"] = client_line(args.client_batch)
    print(m["client"], flush=True)
    print(f"EPC {args.epc_mb:g} MB (scaled down from 93); databases: "
          + ", ".join(f"({'a' if k == 'fits' else 'b'}) {v:g} MB = {db_keys(v)} items, "
                      f"load {tool_for(k, args)}" for k, v in dbs.items())
          + f"; {args.connections} connections, {args.duration:g} s x {args.runs} runs, "
          f"cost model {args.cost}", flush=True)
    runs = []

    def phase(labels: list[str]) -> None:
        bar = Progress(args.runs * len(dbs) * len(labels), "kvstore").start()
        for r in range(args.runs):
            for db, mb in dbs.items():
                order = labels[r % len(labels):] + labels[:r % len(labels)]
                for config in order:
                    bar.step(f"run {r} {db} {config}")
                    res = one_run(config, db, mb, args)
                    res["run"] = r
                    runs.append(res)
                    print(f"  run {r} {db:4s} {mb:5g} MB {config:10s} {res['tool']:9s} "
                          f"{res['ops_per_s']:8.0f} ops/s  capacity {_n(res['capacity_ops_per_s'])} "
                          f"ops/s  cpu/op {res['cpu_us_per_op']:6.1f} us (app threads "
                          f"{res['app_cpu_us_per_op']:.1f}, client {res['client_cpu_us_per_op']:.1f})  "
                          f"exits/op {res['exits_per_op']:.2f}  "
                          f"faults/op epc {res['epc_faults_per_op']:.2f} "
                          f"suvm {res['suvm_faults_per_op']:.2f}"
                          + ("" if res["rpc_worker_waited"] is None else
                             f"  rpc worker waited {100 * res['rpc_worker_waited']:.0f}%, "
                             f"fallbacks {100 * (_fallback_share(res) or 0):.0f}%"), flush=True)
        bar.stop()

    # Phase 1: the time scale, from our native server and memcached under the same load.
    phase([c for c in configs if c in ("native", "memcached")])
    scales = {db: measured_scale(runs, db) for db in dbs}
    scale = scales.get("fits") or scales.get("big")
    user_scales = {db: measured_scale(runs, db, "user_us_per_op") for db in dbs}
    app_scales = {db: measured_scale(runs, db, "request_thread_us_per_op") for db in dbs}
    for db, sc in scales.items():
        us, aps = user_scales[db], app_scales[db]
        print(f"time scale, ({'a' if db == 'fits' else 'b'}): our native server's CPU per "
              f"operation over memcached's = {'-' if sc is None else f'{sc:.2f}'} (user time "
              f"alone: {'-' if us is None else f'{us:.2f}'}; the kernel's share of a request, "
              "the same socket calls in both, is not sped up by dilation; against memcached's "
              f"{MEMCACHED_WORKER} thread alone, without the LRU upkeep it hands to helper "
              f"threads: {'-' if aps is None else f'{aps:.2f}'})", flush=True)
    enclave = [c for c in configs if c not in ("native", "memcached")]
    if scale is None:
        print("!!! no memcached: no measured time scale, scale 1 only", flush=True)
        scaled = []
    else:
        scale = round(scale, 2)
        scaled = [f"{c}@{scale:g}" for c in enclave]
    # Phase 2: every enclave configuration at scale 1 and at the measured scale.
    phase(enclave + scaled)
    configs = [c for c in configs if c in ("native", "memcached")] + enclave + scaled
    summary = [summarise(runs, db, mb, config) for db, mb in dbs.items() for config in configs]
    print()
    print(table(["database", "config", "load", "ops/s (median)", "range", "vs native", "vs sgx",
                 "capacity ops/s", "range", "vs native", "vs sgx"],
                [[_db_short(s["db"], s["db_mb"]), s["config"], s["tool"], s["ops_per_s"],
                  f"{s['min']:.0f}-{s['max']:.0f}", _x(s["vs_native"]), _x(s["vs_sgx"]),
                  _n(s["capacity_ops_per_s"]), s["capacity_range"],
                  _x(s["capacity_vs_native"]), _x(s["capacity_vs_sgx"])] for s in summary]))
    print("ops/s = closed-loop throughput with the client on the server's core; capacity = "
          "operations served over the CPU time of the server's app threads alone (the shim's "
          "eleos-* host threads and the client excluded); config@S = "
          "at time scale S (the measured one); vs sgx = against sgx at the same scale, the "
          "median of per-run ratios")
    print()
    print(table(["database", "config", "cpu us/op", "app us/op", "client us/op", "app busy",
                 "exits/op*", "preempted/op", "faults/op*", "modeled*", "rpc fallback*",
                 "worker waited"],
                [[_db_short(s["db"], s["db_mb"]), s["config"], s["cpu_us_per_op"],
                  s["app_cpu_us_per_op"], s["client_cpu_us_per_op"],
                  f"{100 * s['app_busy']:.0f}%", s["exits_per_op"], s["preemptions_per_op"],
                  s["faults_per_op"], f"{100 * s['modeled_exit_share']:.1f}%",
                  "-" if s["rpc_fallback_share"] is None
                  else f"{100 * s['rpc_fallback_share']:.0f}%",
                  "-" if s["rpc_worker_waited"] is None
                  else f"{100 * s['rpc_worker_waited']:.0f}%"] for s in summary]))
    print("per operation served in the measured window: cpu = all of the server's CPU (its "
          "host threads included), app = its app threads' (the capacity's), client = the load "
          "generator's; app busy = the app threads' CPU over the wall time of the load "
          "generator's run (its start-up and connections included); "
          "* over the server's life (warm-up included): exits, faults; modeled = share of the "
          "server's wall time spent paying modeled events (ocall, epc_fault, indirect); rpc "
          "fallback = share of RPC calls that no worker took in time and that left through an "
          "OCALL; preempted/op = involuntary context switches of the server's busiest thread "
          "per operation of the load; worker waited = share of the window the RPC worker was "
          "runnable but not running (its core taken by another task: on a shared machine, "
          "what makes enclave calls fall back)")
    headline = {"time_scale": scale, "time_scale_per_db": scales,
                "user_time_scale_per_db": user_scales, "request_thread_time_scale_per_db": app_scales,
                "paper_measure": "capacity"}
    for db in dbs:
        name = "a" if db == "fits" else "b"
        target = 2.0 if db == "fits" else 2.2
        h = {"native_vs_memcached": ratio(runs, db, "native", "memcached")
             if "memcached" in configs else None,
             "native_vs_memcached_capacity": ratio(runs, db, "native", "memcached", CAP)
             if "memcached" in configs else None, "target": target}
        for suffix in [""] + ([f"@{scale:g}"] if scale is not None else []):
            key = "" if not suffix else "_scaled"
            for measure, k in (("", "ops_per_s"), ("_capacity", CAP)):
                h["sgx_vs_native" + measure + key] = ratio(runs, db, "sgx" + suffix, "native", k)
                h["eleos_vs_native" + measure + key] = (
                    ratio(runs, db, "eleos" + suffix, "native", k) if "eleos" in modes else None)
                h["eleos_vs_sgx" + measure + key] = (
                    ratio(runs, db, "eleos" + suffix, "sgx" + suffix, k) if "eleos" in modes
                    else None)
            print(f"({name}) at time scale {scale if suffix else 1:g}: closed loop: sgx/native "
                  f"{_x(h['sgx_vs_native' + key])}, eleos/native {_x(h['eleos_vs_native' + key])}, "
                  f"eleos/sgx {_x(h['eleos_vs_sgx' + key])}; capacity: sgx/native "
                  f"{_x(h['sgx_vs_native_capacity' + key])}, eleos/native "
                  f"{_x(h['eleos_vs_native_capacity' + key])}, eleos/sgx "
                  f"{_x(h['eleos_vs_sgx_capacity' + key])} (paper's target >= {target}x)")
        headline[db] = h
        print(f"({name}) our native/memcached: throughput {_x(h['native_vs_memcached'])}, "
              f"capacity {_x(h['native_vs_memcached_capacity'])}")
        if scale is not None:
            side = [[m, _ops(summary, db, m), _x(ratio(runs, db, m, "sgx")),
                     _n(_ops(summary, db, m, CAP)), _x(ratio(runs, db, m, "sgx", CAP)),
                     _ops(summary, db, f"{m}@{scale:g}"),
                     _x(ratio(runs, db, f"{m}@{scale:g}", f"sgx@{scale:g}")),
                     _n(_ops(summary, db, f"{m}@{scale:g}", CAP)),
                     _x(ratio(runs, db, f"{m}@{scale:g}", f"sgx@{scale:g}", CAP))] for m in enclave]
            print(f"\n({name}) both scales side by side (scale 1 = this Python app as it is; "
                  f"{scale:g} = measured: an app as fast as memcached)")
            print(table(["config", "ops/s, scale 1", "vs sgx", "capacity", "vs sgx",
                         f"ops/s, scale {scale:g}", "vs sgx", "capacity", "vs sgx"], side))
    print(CAPACITY_NOTE)
    for db in dbs:
        rows = breakdown(summary, db, scale)
        if rows:
            headline[db]["breakdown_us_per_op"] = rows
            print(_breakdown_text(db, rows))
    for db in dbs:
        print(_worker_note(summary, db))
    if "fits" in dbs:
        print("note: with the database in the EPC the only cost Eleos removes is the exits (about "
              "2.1 per request under sgx, each an OCALL's budget plus the indirect cost after it: "
              "`eleos-shim calibrate` prints what they cost here); the RPC calls replace them. "
              "At scale 1 they are a small share of a Python request; at the measured scale they "
              "weigh as in a C server. With the database 5.5x the EPC, (b), SGX paging adds to "
              "that: `python benchmarks/kvstore.py` (README, Results).")
    print(machine_line(m))
    out = write_json("kvstore" + ("-demo" if args.demo else ""), {
        "benchmark": "kvstore", "machine": m, "config": vars(args), "databases_mb": dbs,
        "items": {k: db_keys(v) for k, v in dbs.items()}, "headline": headline,
        "summary": summary, "runs": runs}, args.json)
    print(f"wrote {out}")
    # The paper's figure: throughput normalised to vanilla SGX, per database and mode; the
    # server's capacity is the paper's measure (CAPACITY_NOTE), the closed loop a second figure.
    eleos_target = "eleos" + (f"@{scale:g}" if scale is not None else "")
    png = figure_path("kvstore" + ("-demo" if args.demo else ""), args.json)
    for path, key, what in ((png, "capacity_vs_sgx", "server capacity"),
                            (png.with_name(png.stem + "-closed-loop.png"), "vs_sgx",
                             "closed-loop throughput, client on the server's core")):
        plot_bars(path, {_db_label(db, mb, args): {s["config"]: s[key] for s in summary
                                                   if s["db"] == db and s["config"] != "memcached"}
                         for db, mb in dbs.items()},
                  title=f"KV store (apps/kvstore.py), EPC {args.epc_mb:g} MB: {what} vs sgx",
                  ylabel="vs sgx at the same scale (median of runs)", ref_line=1.0,
                  targets={_db_label(db, mb, args): 2.0 if db == "fits" else 2.2
                           for db, mb in dbs.items()},
                  target_label=f"paper: eleos/sgx (for {eleos_target})",
                  target_series=eleos_target, note=machine_line(m))
    return 0


CAP = "capacity_ops_per_s"

CAPACITY_NOTE = (
    "which stands for the paper's: the capacity.  The paper's clients ran on other hosts and "
    "its server was saturated, so its throughput was the server's capacity, 1 / (the server's "
    "time per operation), with the RPC workers on cores of their own.  Here the load generator "
    "runs on the server's core (the RPC worker alone on CPU 1), so a closed loop measures "
    "1 / (server time + client time) per operation: the client's share, the same in every "
    "configuration, compresses every ratio towards 1.  The capacity counts the app threads' "
    "CPU alone: an app thread that waits for the client blocks in the kernel and spends "
    "nothing but the wait's crossing (an OCALL under sgx; under eleos none: the wait blocks "
    "in place of Eleos's spin, ELEOS_RPC_WAIT), while the "
    "modeled costs (an OCALL's budget, the indirect cost, an EPC fault's) are spun on it and "
    "count.  The closed loop stays in the tables: it is what this machine delivers.")


def _worker_note(summary: list[dict], db: str) -> str:
    """Whether the RPC worker, left out of the capacity, could be what bounds it: its work
    per operation is about the kernel's part of a request (the syscalls it makes for the
    enclave), which our native server's system time per operation measures."""
    native = [s for s in summary if s["db"] == db and s["config"] == "native"]
    eleos = [s for s in summary if s["db"] == db and base_config(s["config"]) == "eleos"]
    if not native or not eleos:
        return ""
    sys_us = native[0]["cpu_us_per_op"] - native[0]["user_us_per_op"]
    apps = ", ".join(f"{s['config']} {s['app_cpu_us_per_op']:.1f}" for s in eleos)
    return (f"({'a' if db == 'fits' else 'b'}) the RPC worker's share of a request, the kernel's "
            f"part (our native server's system time): {sys_us:.1f} us/op, against the eleos app "
            f"thread's {apps} us/op: the worker, on a core of its own, does not bound the capacity"
            + ("" if all(sys_us < s["app_cpu_us_per_op"] for s in eleos)
               else " -- EXCEPT where it is not smaller: there it may"))


def breakdown(summary: list[dict], db: str, scale: float | None) -> list[dict]:
    """Where a request's time goes, from the app threads' CPU per operation (medians): our
    native server; what the LibOS itself adds (no-exits: vanilla SGX whose calls leave for
    free, over native; with database (b) SGX paging too, as no-exits pages in the EPC); what
    the exits add (sgx over no-exits); what Eleos adds instead (eleos over no-exits: the RPC
    hand-offs, and with database (b) SUVM's paging in place of the EPC's).  One row per
    scale; empty without no-exits."""
    app = {s["config"]: s["app_cpu_us_per_op"] for s in summary if s["db"] == db}
    waits = {s["config"]: s.get("blocked_wait_us_per_op", 0.0) for s in summary if s["db"] == db}
    rows = []
    for suffix in [""] + ([f"@{scale:g}"] if scale is not None else []):
        free = app.get("no-exits" + suffix)
        if free is None or "native" not in app:
            continue
        row = {"scale": scale if suffix else 1.0, "native": app["native"],
               "libos": free - app["native"], "no_exits": free}
        if "sgx" + suffix in app:
            row["sgx_over_no_exits"] = app["sgx" + suffix] - free
        if "eleos" + suffix in app:
            row["eleos_over_no_exits"] = app["eleos" + suffix] - free
            row["eleos_blocked_waits"] = waits.get("eleos" + suffix, 0.0)
        rows.append(row)
    return rows


def _breakdown_text(db: str, rows: list[dict]) -> str:
    name = "a" if db == "fits" else "b"
    lines = [f"({name}) where a request's time goes, app threads' CPU per operation (us, "
             "medians): no-exits = vanilla SGX whose calls leave for free"]
    for r in rows:
        # With database (b) no-exits pages in the EPC too: that is in its part, not sgx's.
        big = db == "big"
        parts = [f"native {r['native']:.1f}",
                 f"+ LibOS routing{' and SGX paging' if big else ''} {r['libos']:+.1f}"]
        if "sgx_over_no_exits" in r:
            parts.append(f"sgx: + exits {r['sgx_over_no_exits']:+.1f}")
        if "eleos_over_no_exits" in r:
            waits = r.get("eleos_blocked_waits", 0.0)
            parts.append(f"eleos: + RPC{' and SUVM, less SGX paging' if big else ''} "
                         f"{r['eleos_over_no_exits']:+.1f}"
                         + (f", of it waits that exited (ELEOS_RPC_WAIT=ocall) {waits:+.1f}"
                            if waits else ""))
        lines.append(f"  scale {r['scale']:g}: " + "; ".join(parts))
    lines.append("  the LibOS's routing is this Python shim's own cost, paid alike in every "
                 "enclave mode; it is not time dilated and so narrows eleos/sgx")
    return "\n".join(lines)


def summarise(runs: list[dict], db: str, mb: float, config: str) -> dict:
    """One configuration's row: medians over runs, ratios of the same run's measurements."""
    mine = [x for x in runs if x["db"] == db and x["config"] == config]
    tput = [x["ops_per_s"] for x in mine]
    caps = [x[CAP] for x in mine if x[CAP] is not None]
    sgx_here = "sgx" + (f"@{label_scale(config):g}" if "@" in config else "")
    return {"db": db, "db_mb": mb, "config": config, "tool": mine[0]["tool"],
            "ops_per_s": median(tput), "min": min(tput), "max": max(tput),
            "vs_native": ratio(runs, db, config, "native"),
            "vs_sgx": ratio(runs, db, config, sgx_here),
            CAP: median(caps) if caps else None,
            "capacity_range": f"{min(caps):.0f}-{max(caps):.0f}" if caps else "-",
            "capacity_vs_native": ratio(runs, db, config, "native", CAP),
            "capacity_vs_sgx": ratio(runs, db, config, sgx_here, CAP),
            "exits_per_op": median(x["exits_per_op"] for x in mine),
            "preemptions_per_op": median(x["preemptions_per_op"] for x in mine),
            "faults_per_op": median(x["epc_faults_per_op"] + x["suvm_faults_per_op"]
                                    for x in mine),
            "evictions": max(x["evictions"] or 0 for x in mine),
            "time_scale": label_scale(config),
            "cpu_us_per_op": median(x["cpu_us_per_op"] for x in mine),
            "user_us_per_op": median(x["user_us_per_op"] for x in mine),
            "app_cpu_us_per_op": median(x["app_cpu_us_per_op"] for x in mine),
            "client_cpu_us_per_op": median(x["client_cpu_us_per_op"] for x in mine),
            "app_busy": median(x["app_busy"] or 0.0 for x in mine),
            "modeled_exit_share": median(x["modeled_exit_share"] for x in mine),
            "blocked_wait_us_per_op": median(x.get("blocked_wait_us_per_op", 0.0) for x in mine),
            "rpc_worker_waited": (median(x["rpc_worker_waited"] for x in mine)
                                  if all(x["rpc_worker_waited"] is not None for x in mine)
                                  else None),
            "rpc_fallback_share": (median(f for f in map(_fallback_share, mine))
                                   if all(_fallback_share(x) is not None for x in mine)
                                   else None)}


def _db_short(db: str, mb: float) -> str:
    return f"({'a' if db == 'fits' else 'b'}) {mb:g} MB"


def _db_label(db: str, mb: float, args) -> str:
    return (f"({'a' if db == 'fits' else 'b'}) {mb:g} MB"
            + (" fits the EPC" if db == "fits" else f", {mb / args.epc_mb:.1f}x the EPC"))


if __name__ == "__main__":
    sys.exit(main())

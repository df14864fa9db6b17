"""The paper's face verification experiment: throughput under native, sgx and eleos.

The unmodified server (apps/faceverify/server.py) runs under ``python -m eleos_shim --mode M``
with its template database in one mmap arena, once with a database that fits in the EPC and
once with one 5x the EPC (the paper: 450 MB in a ~93 MB EPC).  Scaled down by default so a
run takes minutes: EPC 16 MB, databases of 8 MB (fits) and 80 MB (5x).  A closed-loop client
(apps/faceverify/load.py, in this process) drives it for a fixed time.  Every run starts every
configuration once, in a rotated order so drift on a shared machine spreads evenly; each
mode's speedup over sgx is the median over runs of the ratio measured within the same run.
Besides the three presets, Eleos's halves alone: suvm-only (database in SUVM, sockets still
exit through OCALLs) and rpc-only (exit-less sockets, database in the EPC).

The client shares the machine with the server (Eleos's ran on another host): on a 2-core box
100 Python client threads cost the server CPU, so the default is 16 threads, enough to keep
the single-threaded server busy (``--threads 100`` for the paper's number).  Each client
thread makes itself SCHED_BATCH, as the KV benchmark's load generator is, so that its
wake-ups do not preempt the server mid-request (benchmarks/common.py, client_preexec;
``--client-preempts`` to turn off); the main thread, which starts the servers, keeps its
policy, so the servers do too.

Two measures side by side, from the same runs: the closed-loop throughput (the client's
threads on the server's core, so 1 / (server time + client time) per request) and the
server's capacity, the paper's (its client ran on another host): requests served over the
CPU time of the server's app thread alone, per thread from /proc, the shim's host threads
(named ``eleos-*``) and the client left out (benchmarks/common.py).  The server is a
single-threaded event loop; the client's CPU per request is in the table too.

Time dilation: every mode also runs at the time scale the KV benchmark measured (our server's
CPU per operation over memcached's, results/kvstore.json; ``--time-scale`` names another
measurement's, ``1`` runs scale 1 only), labelled ``mode@S``; each is compared with sgx at the
same scale.

    python benchmarks/faceverify.py [--runs 3] [--duration 5] [--epc-mb 16] [--json PATH]
                                    [--time-scale auto]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import RESULTS, add_pin_argument, pin_line, pin_rpc_core, machine, machine_line, median, table, write_json  # noqa: E402
from benchmarks.common import add_client_argument, client_line, client_preexec  # noqa: E402
from benchmarks.common import Progress, figure_path, plot_bars  # noqa: E402
from benchmarks.common import (capacity, cpu_by_name, fmt_count, fmt_ratio,  # noqa: E402
                               is_app_thread, rpc_worker_waited, same_run_ratio,
                               selected_cpu_s, thread_cpu, thread_cpu_delta, waited_by_name)
from eleos_shim.harness import CONFIGS, AppProcess, app_command, app_env  # noqa: E402
from apps.faceverify import load  # noqa: E402
from apps.faceverify.server import identities_for_mb  # noqa: E402

SERVER = "apps/faceverify/server.py"


def measured_scale(arg: str) -> float | None:
    """The time scale to run besides 1: a number, or (auto) the KV benchmark's measurement."""
    if arg != "auto":
        return float(arg)
    try:
        with open(RESULTS / "kvstore.json") as f:
            return json.load(f)["headline"].get("time_scale")
    except (OSError, ValueError, KeyError):
        return None


def one_run(mode: str, db_mb: float, pool, identities: int, args) -> dict:
    base, _, scale = mode.partition("@")
    env = app_env(base, {"ELEOS_EPC_MB": args.epc_mb, "ELEOS_COST": args.cost,
                         "ELEOS_TIME_SCALE": scale or 1, **args.pin_env})
    with AppProcess(app_command(SERVER, "-p", "0", "--db-mb", str(db_mb)), env,
                    name=f"faceverify-{mode}", stats=True, start_timeout=300) as srv:
        # The window is the load's whole run (warm-up included): the server serves nothing
        # outside it (it builds its database before it listens), so every request it counts
        # is in it.  The client is this process's threads.
        threads0, client0, t0 = thread_cpu(srv.proc.pid), _self_cpu_s(), time.monotonic()
        summary = drive(srv.address, identities, pool, args)
        threads1, client1 = thread_cpu(srv.proc.pid), _self_cpu_s()
        window_s = time.monotonic() - t0
        srv.stop()
        err, stats = srv.stderr(), srv.stats() or {}
    if summary["errors"]:
        raise RuntimeError(f"{mode} {db_mb} MB: {summary['errors']} client errors\n{err[-2000:]}")
    served = max(1, _served(err))
    threads = thread_cpu_delta(threads0, threads1)
    app_cpu = selected_cpu_s(threads, is_app_thread)
    return {
        "mode": mode, "db_mb": db_mb,
        "verifications_per_s": summary["verifications_per_s"],
        # The server's capacity: requests over its app threads' CPU alone (common.py).
        "capacity_per_s": capacity(served, app_cpu),
        "app_cpu_us_per_request": app_cpu / served * 1e6,
        "server_cpu_us_per_request": sum(t.cpu_s for t in threads.values()) / served * 1e6,
        "client_cpu_us_per_request": (client1 - client0) / served * 1e6,
        "thread_cpu_s": cpu_by_name(threads), "thread_waited_s": waited_by_name(threads),
        "rpc_worker_waited": rpc_worker_waited(threads, window_s),
        "latency_us": summary["latency_us"],
        "accuracy": summary["accuracy"],
        # Per request over the whole server life: the shim writes its stats only at exit, so
        # these include the warm-up and, for faults, the DB build (one pass over the arena).
        "served": served,
        "exits_per_request": stats.get("exits", {}).get("total", 0) / served,
        "epc_faults_per_request": stats.get("epc", {}).get("faults", 0) / served,
        "suvm_faults_per_request": stats.get("suvm", {}).get("faults", 0) / served,
        "rpc_fallbacks": stats.get("rpc", {}).get("fallbacks", 0),
        "rpc_processed": stats.get("rpc", {}).get("processed", 0),
        "stats": stats,
    }


def drive(address, identities: int, pool, args) -> dict:
    """The closed-loop load, from this process's threads: each SCHED_BATCH unless
    ``--client-preempts`` (the policy is per thread, so the main thread, which starts the
    servers, and the servers keep theirs)."""
    return load.run(address, identities, args.threads, args.duration, args.warmup, pool=pool,
                    thread_init=client_preexec(args.client_batch))


def _self_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _served(stderr: str) -> int:
    for line in stderr.splitlines():
        if line.startswith("faceverify: served "):
            return int(line.split()[2])
    return 0


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5.0, help="measured seconds per run")
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--epc-mb", type=float, default=16.0, help="usable EPC (paper: 93)")
    ap.add_argument("--fit-mb", type=float, default=None, help="database that fits (EPC/2)")
    ap.add_argument("--big-mb", type=float, default=None, help="database 5x the EPC")
    ap.add_argument("--modes", default=",".join(c for c in CONFIGS if c != "no-exits"),
                    help="comma-separated, from " + ", ".join(CONFIGS))
    ap.add_argument("--cost", default="spin", choices=("spin", "account"))
    add_pin_argument(ap)
    ap.add_argument("--pool", type=int, default=0,
                    help="pre-sealed requests per database (default: one per identity, >= 2048,"
                         " so the requests cover most of the database, not a cacheable subset)")
    ap.add_argument("--time-scale", default="auto",
                    help="also run every mode at this time scale (auto: the one benchmarks/"
                         "kvstore.py measured, results/kvstore.json; 1: scale 1 only)")
    ap.add_argument("--json", help="output path (default results/faceverify.json)")
    add_client_argument(ap)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    args.pin_env = pin_rpc_core(args.pin)
    modes = args.modes.split(",")
    unknown = [x for x in modes if x not in CONFIGS]
    if unknown or "sgx" not in modes:
        ap.error(f"--modes: unknown {unknown}" if unknown else "--modes must include sgx (the baseline)")
    scale = measured_scale(args.time_scale)
    if scale is None:
        print("!!! no measured time scale (run benchmarks/kvstore.py first): scale 1 only", flush=True)
    elif scale != 1:
        modes = modes + [f"{x}@{scale:g}" for x in modes if x != "native"]
    sizes = [("fits in EPC", args.fit_mb or args.epc_mb / 2),
             ("5x EPC", args.big_mb or args.epc_mb * 5)]
    m = machine()
    print(machine_line(m), flush=True)
    m["pinning"] = pin_line(args.pin_env)
    print(m["pinning"], flush=True)
    m["client"] = client_line(args.client_batch)
    print(m["client"], flush=True)
    print(f"EPC {args.epc_mb:g} MB (scaled down from 93), databases "
          + ", ".join(f"{mb:g} MB ({name})" for name, mb in sizes)
          + f"; {args.threads} client threads, {args.duration:g} s x {args.runs} runs, "
          f"cost model {args.cost}", flush=True)
    pools = {}
    for name, mb in sizes:
        n = identities_for_mb(mb)
        t0 = time.perf_counter()
        pools[mb] = (load.build_pool(args.pool or max(2048, n), n, 0.5, client_id=1, seed=1), n)
        print(f"  pool for {mb:g} MB ({n} identities) built in {time.perf_counter() - t0:.1f} s",
              flush=True)
    runs = []
    bar = Progress(args.runs * len(sizes) * len(modes), "faceverify").start()
    for r in range(args.runs):
        for _, mb in sizes:
            order = modes[r % len(modes):] + modes[:r % len(modes)]
            for mode in order:
                bar.step(f"run {r} {mb:g} MB {mode}")
                pool, n = pools[mb]
                load_before = os.getloadavg()[0]
                res = one_run(mode, mb, pool, n, args)
                res["run"] = r
                # The machine may be shared: keep how busy it was, to judge a noisy run.
                res["loadavg_1m_before"] = round(load_before, 2)
                runs.append(res)
                print(f"  run {r} {mb:g} MB {mode:10s} {res['verifications_per_s']:8.0f} verif/s  "
                      f"capacity {_n(res['capacity_per_s'])}/s  app "
                      f"{res['app_cpu_us_per_request']:.0f} us/req, client "
                      f"{res['client_cpu_us_per_request']:.0f}  "
                      f"p50 {res['latency_us']['p50']:.0f} us  faults/req epc "
                      f"{res['epc_faults_per_request']:.2f} suvm {res['suvm_faults_per_request']:.2f}"
                      f"  rpc fallbacks {res['rpc_fallbacks']}"
                      + ("" if res["rpc_worker_waited"] is None else
                         f", worker waited {100 * res['rpc_worker_waited']:.0f}%")
                      + f"  load {load_before:.1f}",
                      flush=True)
    bar.stop()

    summary = [summarise(runs, name, mb, mode) for name, mb in sizes for mode in modes]
    print()
    print(table(["database", "mode", "verif/s (median)", "range", "vs sgx", "capacity/s",
                 "range", "vs sgx", "p50 us", "p99 us"],
                [[f"{s['db']} ({s['db_mb']:g} MB)", s["mode"], s["verifications_per_s"],
                  f"{s['min']:.0f}-{s['max']:.0f}", _x(s["speedup_over_sgx"]),
                  _n(s["capacity_per_s"]), s["capacity_range"], _x(s["capacity_over_sgx"]),
                  s["p50_us"], s["p99_us"]] for s in summary]))
    print("verif/s = closed-loop throughput, the client's threads on the server's core; "
          "capacity = requests served over the CPU time of the server's app threads alone (the "
          "shim's eleos-* host threads and the client excluded); mode@S = at time scale S; "
          "vs sgx = against sgx at the same scale, the median of per-run ratios")
    print()
    print(table(["database", "mode", "server us/req", "app us/req", "client us/req",
                 "exits/req", "faults/req*", "rpc fallback", "worker waited", "TPR/FPR"],
                [[f"{s['db']} ({s['db_mb']:g} MB)", s["mode"], s["server_cpu_us_per_request"],
                  s["app_cpu_us_per_request"], s["client_cpu_us_per_request"],
                  s["exits_per_request"], s["faults_per_request"], _pct(s["rpc_fallback_share"]),
                  _pct(s["rpc_worker_waited"]), f"{s['tpr']:.3f}/{s['fpr']:.3f}"]
                 for s in summary]))
    print("CPU per request served during the load (warm-up included): server = all its "
          "threads, app = its app threads (the capacity's), client = this process's client "
          "threads; rpc fallback = share of RPC calls that left through an OCALL; worker waited = "
          "share of the load's run the RPC worker was runnable but not running (its core "
          "taken by another task); * per request served, counted over the server's life: "
          "includes building the database")
    print(CAPACITY_NOTE)
    print(machine_line(m))
    headline = {"time_scale": scale, "paper_measure": "capacity", "target": 2.3}
    for label in ["eleos"] + ([f"eleos@{scale:g}"] if scale not in (None, 1) else []):
        big = [s for s in summary if s["db"] == "5x EPC" and s["mode"] == label]
        if big and big[0]["speedup_over_sgx"] is not None:
            headline[label] = big[0]["speedup_over_sgx"]
            headline[label + "_capacity"] = big[0]["capacity_over_sgx"]
            print(f"{label}/sgx at 5x the EPC: closed loop {big[0]['speedup_over_sgx']:.2f}x, "
                  f"capacity {_x(big[0]['capacity_over_sgx'])} (paper: 2.3x)")
    out = write_json("faceverify", {
        "benchmark": "faceverify", "machine": m,
        "config": {k: v for k, v in vars(args).items()}, "databases_mb": dict(sizes),
        "headline": headline, "summary": summary, "runs": runs}, args.json)
    print(f"wrote {out}")
    # The paper's figure: throughput normalised to vanilla SGX, per database and mode; the
    # server's capacity is the paper's measure (CAPACITY_NOTE), the closed loop a second figure.
    eleos_target = "eleos" + (f"@{scale:g}" if scale not in (None, 1) else "")
    png = figure_path("faceverify", args.json)
    for path, key, what in ((png, "capacity_over_sgx", "server capacity"),
                            (png.with_name(png.stem + "-closed-loop.png"), "speedup_over_sgx",
                             "closed-loop throughput, client on the server's core")):
        plot_bars(path, {f"{name} ({mb:g} MB)": {s["mode"]: s[key] for s in summary
                                                if s["db_mb"] == mb} for name, mb in sizes},
                  title=f"face verification, EPC {args.epc_mb:g} MB: {what} vs sgx",
                  ylabel="vs sgx at the same scale (median of runs)", ref_line=1.0,
                  targets={f"5x EPC ({sizes[1][1]:g} MB)": 2.3},
                  target_label=f"paper: eleos/sgx (for {eleos_target})",
                  target_series=eleos_target, note=machine_line(m))
    return 0


CAPACITY_NOTE = (
    "which stands for the paper's: the capacity.  Eleos's load generator ran on another host "
    "and its server was saturated, so its throughput was the server's capacity, with the RPC "
    "workers on cores of their own.  Here the client's threads run on the server's core, so "
    "a closed loop measures 1 / (server time + client time) per request, which compresses "
    "every ratio towards 1; the capacity counts the server's app thread alone (an idle app "
    "thread blocks in the kernel and spends nothing but the wait's crossing: an OCALL in sgx, "
    "none in eleos, where it blocks in place of Eleos's spin (ELEOS_RPC_WAIT; "
    "eleos-exit-waits is eleos whose waits exit); the modeled costs are spun on it and "
    "count).")


def summarise(runs: list[dict], name: str, mb: float, mode: str) -> dict:
    """One mode's row: medians over runs, ratios of the same run's measurements."""
    mine = [x for x in runs if x["db_mb"] == mb and x["mode"] == mode]
    tput = [x["verifications_per_s"] for x in mine]
    caps = [x["capacity_per_s"] for x in mine if x["capacity_per_s"] is not None]
    sgx = "sgx" + (mode[mode.index("@"):] if "@" in mode else "")
    return {
        "db": name, "db_mb": mb, "mode": mode,
        "verifications_per_s": median(tput), "min": min(tput), "max": max(tput),
        "speedup_over_sgx": same_run_ratio(runs, "verifications_per_s", {"db_mb": mb, "mode": mode},
                                           {"db_mb": mb, "mode": sgx}),
        "capacity_per_s": median(caps) if caps else None,
        "capacity_range": f"{min(caps):.0f}-{max(caps):.0f}" if caps else "-",
        "capacity_over_sgx": same_run_ratio(runs, "capacity_per_s", {"db_mb": mb, "mode": mode},
                                            {"db_mb": mb, "mode": sgx}),
        "p50_us": median(x["latency_us"]["p50"] for x in mine),
        "p99_us": median(x["latency_us"]["p99"] for x in mine),
        "server_cpu_us_per_request": median(x["server_cpu_us_per_request"] for x in mine),
        "app_cpu_us_per_request": median(x["app_cpu_us_per_request"] for x in mine),
        "client_cpu_us_per_request": median(x["client_cpu_us_per_request"] for x in mine),
        "exits_per_request": median(x["exits_per_request"] for x in mine),
        "rpc_fallback_share": _median_or_none(
            x["rpc_fallbacks"] / (x["rpc_fallbacks"] + x["rpc_processed"])
            if x["rpc_fallbacks"] + x["rpc_processed"] else None for x in mine),
        "rpc_worker_waited": _median_or_none(x["rpc_worker_waited"] for x in mine),
        "faults_per_request": median(x["epc_faults_per_request"] + x["suvm_faults_per_request"]
                                     for x in mine),
        "tpr": median(x["accuracy"]["tpr"] for x in mine),
        "fpr": median(x["accuracy"]["fpr"] for x in mine),
    }


def _median_or_none(xs) -> float | None:
    xs = list(xs)
    return None if not xs or None in xs else median(xs)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.0f}%"


_x, _n = fmt_ratio, fmt_count


if __name__ == "__main__":
    sys.exit(main())

"""``eleos-shim compare [modes] -- app.py args``: one app under several modes, side by side
(eleos_shim/, host-side tooling).

Runs the app once per configuration of :data:`eleos_shim.harness.CONFIGS` (default native,
sgx, eleos), each in a fresh ``python -m eleos_shim`` with its stats written to a temporary
file, and prints one table: wall time, exits, EPC faults, SUVM misses, the share of wall time
in modeled events, RPC fallbacks, and whether the app's own output (stdout) was identical to
the first mode's.  A server (first line ``listening on HOST:PORT``) is started through
:class:`eleos_shim.harness.AppProcess` and driven by ``--client CMD`` (``{host}`` and
``{port}`` are filled in); the client's last output line goes in the table.  ``--json PATH``
('-' for stdout) and ``--plot PNG`` keep the numbers.  Settings given before ``compare``
(``eleos-shim --epc-mb 16 compare ...``) and ELEOS_ variables other than the mode's apply
to every run.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time

from eleos_shim import config as config_mod
from eleos_shim import harness
from eleos_shim.report import modeled

DEFAULT_MODES = ("native", "sgx", "eleos")
_MODE_VARS = ("ELEOS_MODE", "ELEOS_SYSCALLS", "ELEOS_MEMORY", "ELEOS_STATS")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="eleos-shim compare", usage="eleos-shim compare [modes...] [options] -- app.py [args...]",
        description="Run one app under each mode and print a side-by-side table.")
    ap.add_argument("modes", nargs="*", metavar="MODE",
                    help=f"any of {', '.join(harness.CONFIGS)} (default: {' '.join(DEFAULT_MODES)})")
    ap.add_argument("--client", metavar="CMD",
                    help="the app is a server: run this load command against each run "
                         "({host}, {port} and {python} are replaced), then stop the server")
    ap.add_argument("--json", metavar="PATH", help="write the results as JSON ('-' = stdout)")
    ap.add_argument("--plot", metavar="PNG", help="draw wall time and its modeled part per mode")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per run (default 600)")
    return ap


def child_env(mode: str, settings: dict[str, str]) -> dict[str, str]:
    """The harness's environment for ``mode``, with the user's other ELEOS_ settings."""
    return harness.app_env(mode, config_mod.settings_in_environ(settings, _MODE_VARS))


def _row(mode: str, stats: dict | None, out: str, seconds: float) -> dict:
    row = {"mode": mode, "process_s": seconds, "output": out}
    if stats is None:
        return row
    s, share = modeled(stats)
    calls = stats.get("calls", {})
    row.update(wall_s=stats.get("wall_s", seconds), exits=stats.get("exits", {}).get("total", 0),
               epc_faults=stats.get("epc", {}).get("faults", 0),
               suvm_misses=stats.get("suvm", {}).get("faults", 0), modeled_s=s,
               modeled_share=share, calls=sum(c.get("count", 0) for c in calls.values()),
               fallbacks=sum(c.get("fallback", 0) for c in calls.values()))
    return row


def run_script(mode: str, app: list[str], settings: dict[str, str], timeout: float) -> dict:
    fd, path = tempfile.mkstemp(prefix=f"compare-{mode}-", suffix=".json")
    os.close(fd)
    try:
        env = dict(child_env(mode, settings), ELEOS_STATS=path)
        t0 = time.perf_counter()
        proc = subprocess.run(harness.app_command(*app), env=env, capture_output=True,
                              text=True, timeout=timeout)
        seconds = time.perf_counter() - t0
        with open(path) as f:
            text = f.read()
        row = _row(mode, json.loads(text) if text.strip() else None, proc.stdout, seconds)
        row["status"] = proc.returncode
        if proc.returncode:
            row["stderr"] = proc.stderr[-2000:]
        return row
    finally:
        os.unlink(path)


def run_server(mode: str, app: list[str], settings: dict[str, str], client: str,
               timeout: float) -> dict:
    t0 = time.perf_counter()
    with harness.AppProcess(harness.app_command(*app), child_env(mode, settings), name=mode,
                            stats=True) as server:
        cmd = client.format(host=server.host, port=server.port, python=shlex.quote(sys.executable))
        done = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=timeout,
                              cwd=harness.ROOT)
        server.stop()
        out = server.proc.stdout.read()
        row = _row(mode, server.stats(), out, time.perf_counter() - t0)
        row["status"] = server.proc.returncode
    lines = [ln.strip() for ln in done.stdout.splitlines() if ln.strip()]
    # the throughput line if the client prints one (kvload: "ops/s ..."), else its last line
    rate = [ln for ln in lines if "/s" in ln]
    row["client"] = (rate or lines or [f"(no output, exit {done.returncode})"])[-1][:90]
    row["client_output"] = done.stdout
    row["client_status"] = done.returncode
    return row


def first_difference(a: str, b: str) -> str:
    """Where two outputs first differ, as 'line N: 'x' vs 'y''."""
    la, lb = a.splitlines(), b.splitlines()
    for i, (x, y) in enumerate(zip(la, lb)):
        if x != y:
            return f"line {i + 1}: {x[:60]!r} vs {y[:60]!r}"
    return f"{len(la)} lines vs {len(lb)}"


def _fmt_share(x) -> str:
    return "-" if x is None else f"{x:.1%}"


def table(rows: list[dict]) -> str:
    head = ["mode", "wall s", "exits", "epc faults", "suvm misses", "modeled", "fallbacks",
            "output"]
    client = any("client" in r for r in rows)
    if client:
        head.append("client")
    body = []
    for r in rows:
        if "wall_s" not in r:
            cells = [r["mode"], f"{r['process_s']:.3f}", "-", "-", "-", "-", "-", "no stats"]
        else:
            cells = [r["mode"], f"{r['wall_s']:.3f}", f"{r['exits']:,}", f"{r['epc_faults']:,}",
                     f"{r['suvm_misses']:,}", _fmt_share(r["modeled_share"]),
                     f"{r['fallbacks']:,}", r["same_output"]]
        if r.get("status"):
            cells[-1] = f"exit {r['status']}"
        if client:
            cells.append(r.get("client", ""))
        body.append(cells)
    widths = [max(len(str(c)) for c in col) for col in zip(head, *body)]
    lines = ["  ".join(str(c).ljust(w) if i in (0, len(head) - 1) else str(c).rjust(w)
                       for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
             for cells in [head, ["-" * w for w in widths]] + body]
    return "\n".join(lines)


def plot(rows: list[dict], path: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [r for r in rows if "wall_s" in r]
    fig, ax = plt.subplots(figsize=(1.4 * len(rows) + 2.5, 3.6))
    names = [r["mode"] for r in rows]
    walls = [r["wall_s"] for r in rows]
    model = [min(r["modeled_s"], r["wall_s"]) for r in rows]
    ax.bar(names, walls, color="#9ecae1", label="wall time")
    ax.bar(names, model, color="#de2d26", label="in modeled events (exits, faults)")
    for x, r in enumerate(rows):
        ax.annotate(f"{r['exits']:,} exits", (x, r["wall_s"]), ha="center", va="bottom",
                    fontsize=8)
    ax.set_ylabel("seconds")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    ax.margins(y=0.15)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str], settings: dict[str, str] | None = None) -> int:
    if "--" in argv:
        cut = argv.index("--")
        ours, app = argv[:cut], argv[cut + 1:]
    else:
        ours, app = argv, []
    ap = build_parser()
    ns = ap.parse_args(ours)
    if not app:
        ap.error("give the app after --: eleos-shim compare sgx eleos -- app.py args")
    modes = ns.modes or list(DEFAULT_MODES)
    bad = [m for m in modes if m not in harness.CONFIGS]
    if bad:
        ap.error(f"unknown mode {bad[0]!r}: expected any of {', '.join(harness.CONFIGS)}")
    if app[0] == "-m":
        ap.error("compare runs a script: give app.py, not -m module")
    settings = settings or {}
    try:   # a bad setting stops here, once, rather than in every child
        config_mod.resolve(config_mod.settings_in_environ(settings, _MODE_VARS))
    except config_mod.ConfigError as exc:
        sys.stderr.write(f"eleos-shim compare: {exc}\n")
        return 2
    rows = []
    for mode in modes:
        sys.stderr.write(f"compare: {mode} ...\n")
        sys.stderr.flush()
        try:
            if ns.client:
                rows.append(run_server(mode, app, settings, ns.client, ns.timeout))
            else:
                rows.append(run_script(mode, app, settings, ns.timeout))
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            sys.stderr.write(f"compare: {mode} failed: {exc}\n")
            rows.append({"mode": mode, "process_s": 0.0, "output": "", "status": "failed"})
    first = rows[0]["output"]
    for r in rows:
        r["same_output"] = "same" if r["output"] == first else "DIFFERENT"
    print(f"eleos-shim compare: {shlex.join(app)}")
    print(table(rows))
    for r in rows:
        if r["same_output"] != "same":
            print(f"{r['mode']}: the app's output differs from {rows[0]['mode']}'s, "
                  f"{first_difference(first, r['output'])}")
    for r in rows:
        if r.get("stderr"):
            print(f"-- {r['mode']} stderr (tail):\n{r['stderr']}")
    if ns.json:
        data = json.dumps({"app": app, "runs": rows}, indent=1, default=str)
        if ns.json == "-":
            print(data)
        else:
            with open(ns.json, "w") as f:
                f.write(data)
    if ns.plot:
        plot(rows, ns.plot, f"eleos-shim compare: {shlex.join(app)[:60]}")
    return 1 if any(r.get("status") for r in rows) else 0

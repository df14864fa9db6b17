"""What the LibOS itself costs per call (issue 12): the app's own calls, native vs routed with no
exit (sgx with ELEOS_SYSCALLS=direct), so what is left is the shim's Python and its C crossing,
which every mode pays and which compresses every eleos/sgx ratio the tool reports.

The calls, each in a tight loop of the app's own code (as an unmodified app makes them):
  write          os.write of 1 byte to /dev/null
  send+recv      a 7-byte send on one end of a socketpair and the recv of it on the other
  recv_into      the same with recv_into a bytearray
  select(ready)  selectors.DefaultSelector().select(0) with one registered fd ready (epoll)
  poll(ready)    select.poll().poll(0), one fd ready
  select.select  select.select([fd], [], [], 0), one fd ready
Per call: the median over runs of ns per call; native and routed runs alternate, so drift
between runs touches both.  Overhead = routed - native.

    python benchmarks/libos_overhead.py [--runs R] [--scale S] [--json PATH]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (figure_path, machine, machine_line, median,  # noqa: E402
                               plot_bars, table, write_json)

ROOT = Path(__file__).resolve().parent.parent
# The app: prints "name ns-per-call" lines.  Plain Python: it runs as any app does.
APP = r'''
import os, select, selectors, socket, sys, time
scale = float(sys.argv[1])
def t(f, n):
    n = max(1000, int(n * scale))
    f()
    t0 = time.perf_counter_ns()
    for _ in range(n):
        f()
    return (time.perf_counter_ns() - t0) / n
fd = os.open(os.devnull, os.O_WRONLY)
print("write", t(lambda: os.write(fd, b"x"), 200000))
a, b = socket.socketpair()
a.setblocking(False), b.setblocking(False)
def sr():
    a.send(b"get k\r\n"); b.recv(4096)
print("send+recv", t(sr, 100000))
buf = bytearray(4096)
def sri():
    a.send(b"get k\r\n"); b.recv_into(buf)
print("send+recv_into", t(sri, 100000))
sel = selectors.DefaultSelector()
sel.register(b, selectors.EVENT_READ)
a.send(b"x")
print("select(ready)", t(lambda: sel.select(0), 100000))
p = select.poll()
p.register(b, select.POLLIN)
print("poll(ready)", t(lambda: p.poll(0), 100000))
print("select.select", t(lambda: select.select([b], [], [], 0), 100000))
'''
MODES = {"native": {"ELEOS_MODE": "native"},
         "routed": {"ELEOS_MODE": "sgx", "ELEOS_SYSCALLS": "direct"}}


def run_app(app: Path, mode: str, scale: float) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ELEOS_")}
    env.update(MODES[mode])
    out = subprocess.run([sys.executable, "-m", "eleos_shim", str(app), str(scale)], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=600, check=True)
    return {name: float(v) for name, v in (line.split() for line in out.stdout.splitlines())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="runs per mode (default 3)")
    ap.add_argument("--scale", type=float, default=1.0, help="loop lengths times this")
    ap.add_argument("--json", help="write results here (default results/libos_overhead.json)")
    args = ap.parse_args(argv)
    if args.runs < 1 or args.scale <= 0:
        ap.error("--runs must be >= 1 and --scale > 0")
    runs: dict[str, list[dict]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory() as tmp:
        app = Path(tmp) / "libos_calls.py"
        app.write_text(APP)
        for _ in range(args.runs):
            for mode in MODES:
                runs[mode].append(run_app(app, mode, args.scale))
    names = list(runs["native"][0])
    rows, result = [], {}
    for name in names:
        nat = median(r[name] for r in runs["native"])
        rou = median(r[name] for r in runs["routed"])
        result[name] = {"native_ns": nat, "routed_ns": rou, "overhead_ns": rou - nat}
        rows.append([name, nat, rou, rou - nat, f"{rou / nat:.2f}x"])
    print(machine_line())
    print(f"ns per call, median of {args.runs} runs each (routed = sgx, ELEOS_SYSCALLS=direct)")
    print(table(["call", "native", "routed", "overhead", "ratio"], rows))
    path = write_json("libos_overhead", {"machine": machine(), "runs": args.runs,
                                         "scale": args.scale, "calls": result,
                                         "raw": runs}, args.json)
    print(f"wrote {path}")
    groups = {name: {"native": r["native_ns"], "routed": r["routed_ns"]}
              for name, r in result.items()}
    plot_bars(figure_path("libos_overhead", args.json), groups,
              title="the LibOS's own cost per call (no exit)", ylabel="ns per call")
    return 0


if __name__ == "__main__":
    sys.exit(main())

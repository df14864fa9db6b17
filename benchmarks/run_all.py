"""`make bench`: run every benchmark of the paper's experiments, one after the other.

Each benchmark prints its own table and the machine and writes results/<name>.json; this
runner only sequences them (they must not run at the same time on a 2-core machine) and
prints where the JSON went.  Pass names to run a subset: ``run_all.py paging kvstore``.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = ["ocall_cost", "syscall_paths", "suvm_micro", "paging", "kvstore", "faceverify"]


def main(argv: list[str]) -> int:
    names = argv or ORDER
    failed = []
    for name in names:
        script = HERE / f"{name}.py"
        if not script.exists():
            print(f"== {name}: no such benchmark", flush=True)
            failed.append(name)
            continue
        print(f"\n== {name} ==", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, str(script)], cwd=HERE.parent)
        print(f"== {name}: exit {rc} after {time.perf_counter() - t0:.0f} s", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

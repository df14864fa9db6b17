"""One enclave of benchmarks/multi_enclave.py, run under the shim (``python -m eleos_shim``).

Its heap is one anonymous mmap (the app's heap: EPC pages under ELEOS_MEMORY=epc, SUVM under
suvm).  From the common start time it follows its schedule of busy and idle phases; while busy
it makes uniformly random accesses of ITEM bytes (a write every WRITE_EVERY-th batch) over its
working set, in C with the GIL released (the paging benchmark's loop over EPC memory,
``suvm_bench_access`` over SUVM), and counts them in bins.  At the end it prints one JSON line:
``{"bins": [[t_monotonic, accesses], ...]}``.

    python -m eleos_shim benchmarks/multi_enclave_worker.py WS_MB SCHEDULE BIN_S SEED
    SCHEDULE: busy:4,idle:4,busy:4 (seconds from T0)
It says ``ready`` once its heap is written, then reads T0 (time.monotonic(), which is the same
clock in every process) from stdin.
"""
import json
import mmap
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ITEM = 64
BATCH = 2000
WRITE_EVERY = 4
PAGE = 4096


def load_loop():
    """The paging benchmark's C loop, compiled by benchmarks/multi_enclave.py beforehand (an
    enclave cannot run a compiler: it cannot spawn processes)."""
    import glob
    import importlib.util
    from benchmarks.common import RESULTS
    path = sorted(glob.glob(str(RESULTS / "_build" / "_paging_loop*.so")))[-1]
    spec = importlib.util.spec_from_file_location("_paging_loop", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.ffi, mod.lib


def main() -> int:
    ws_mb, schedule, bin_s, seed = float(sys.argv[1]), sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
    size = int(ws_mb * 2**20) // PAGE * PAGE
    heap = mmap.mmap(-1, size)
    rng = np.random.default_rng(seed)
    if hasattr(heap, "address"):                         # the EPC: plain memory, real faults
        lffi, llib = load_loop()
        base = heap.address
        heap[0:size:PAGE] = b"\1" * (size // PAGE)       # every page written once

        def access(offs, write):
            llib.plain_bench_access(base, lffi.from_buffer("uint64_t[]", offs), len(offs), ITEM, write)
    else:                                                # SUVM: software translation
        from trusted.suvm import ffi as sffi, lib as slib
        base = heap._lo
        h = heap._suvm.handle
        heap[0:size:PAGE] = b"\1" * (size // PAGE)

        def access(offs, write):
            rc = slib.suvm_bench_access(h, sffi.from_buffer("uint64_t[]", offs + np.uint64(base)),
                                        len(offs), ITEM, write)
            if rc:
                raise RuntimeError(f"suvm_bench_access: {rc}")
    print("ready", flush=True)
    t0 = float(sys.stdin.readline())
    phases = []
    at = t0
    for part in schedule.split(","):
        kind, dur = part.split(":")
        phases.append((kind, at, at + float(dur)))
        at += float(dur)
    while time.monotonic() < t0:
        time.sleep(min(0.05, max(0.0, t0 - time.monotonic())))
    bins: list[list[float]] = []
    cur_bin, count, batches = t0, 0, 0
    for kind, start, end in phases:
        while True:
            now = time.monotonic()
            while now >= cur_bin + bin_s:
                bins.append([cur_bin, count])
                cur_bin += bin_s
                count = 0
            if now >= end:
                break
            if kind == "idle":
                time.sleep(min(0.05, end - now))          # the app has nothing to do
                continue
            offs = (rng.integers(0, size // ITEM, BATCH) * ITEM).astype(np.uint64)
            access(offs, 1 if batches % WRITE_EVERY == 0 else 0)
            batches += 1
            count += BATCH
    bins.append([cur_bin, count])
    print(json.dumps({"bins": bins}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

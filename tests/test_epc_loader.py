"""An unmodified app whose heap is ``mmap.mmap(-1, n)`` runs under ``--mode sgx`` with its heap in
the EPC (pages through the modeled SGX driver) and prints exactly what it prints natively."""
from __future__ import annotations

import textwrap

import pytest

APP = textwrap.dedent("""
    import hashlib
    import mmap
    import random
    import sys

    import numpy as np

    size = int(sys.argv[1]) << 20
    heap = mmap.mmap(-1, size)                 # the app's heap: 3x the EPC under sgx
    rng = random.Random(42)
    for _ in range(4000):
        off = rng.randrange(0, size - 64)
        heap[off:off + 8] = rng.randbytes(8)
    arr = np.frombuffer(heap, dtype=np.uint32)
    arr[::1024] += np.arange(arr[::1024].size, dtype=np.uint32)
    view = memoryview(heap)
    total = int(arr.sum(dtype=np.uint64))
    print(isinstance(heap, mmap.mmap), len(heap), total)
    print(hashlib.sha256(view).hexdigest())
    for _ in range(5):
        off = rng.randrange(0, size - 16)
        print(off, heap[off:off + 16].hex())
    del arr, view
    heap.close()
""")


@pytest.mark.parametrize("trap", ["userfaultfd", "sigsegv"])
def test_unmodified_mmap_app_prints_the_same_under_sgx_as_native(shim, tmp_path, trap):
    script = tmp_path / "heap_app.py"
    script.write_text(APP)
    env = {"ELEOS_EPC_MB": "2", "ELEOS_EPC_TRAP": trap}
    native = shim("native", script, "6", env=env)
    sgx = shim("sgx", script, "6", env=env)
    assert native.returncode == 0, native.stderr
    assert sgx.returncode == 0, sgx.stderr
    assert sgx.stdout == native.stdout
    assert native.stdout.startswith("True 6291456 ")
    epc = sgx.stats["epc"]
    assert epc["limit_bytes"] == 2 << 20
    assert epc["faults"] > 3 * (6 << 20) // 4096 // 2
    assert epc["ewb"] > 0 and epc["eldu"] > 0
    assert epc["peak_resident_bytes"] <= 2 << 20
    assert sgx.stats["transitions"]["aex"] >= epc["faults"]
    assert sgx.stats["transitions"]["eresume"] >= epc["faults"]


TAMPERED_APP = textwrap.dedent("""
    import mmap
    from eleos_shim import epc

    heap = mmap.mmap(-1, 1 << 20)
    heap[0:5] = b"hello"
    host = epc.current()                       # the test plays the hostile host
    host.evict(heap, 0)
    host.backing_store(heap)[0][10] ^= 1
    print("before", flush=True)
    value = heap[0:5]
    print("after", value, flush=True)
""")


def test_app_under_sgx_stops_with_integrity_error_when_the_host_tampers(shim, tmp_path):
    script = tmp_path / "tampered_app.py"
    script.write_text(TAMPERED_APP)
    run = shim("sgx", script)
    assert run.returncode == 1
    assert run.stdout == "before\n"
    assert "IntegrityError" in run.stderr and "ELDU" in run.stderr
    assert run.stats["epc"]["integrity_errors"] == 1

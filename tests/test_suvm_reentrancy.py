"""SUVM's allocator under re-entry from the thread that is inside it: a Python signal handler
and a GC finalizer run on the main thread between bytecodes, so an app's handler that maps
memory (mmap.mmap(-1, n): an SUVM region under ELEOS_MEMORY=suvm), or a dropped map's
finalizer, may run while the allocator is mid-operation.  Before the allocator was C
(trusted/_native/suvm_heap.c) its Python critical sections held a threading.Lock: both runs
below deadlocked at the first interruption; with an RLock instead, the signal run's handler
got memory another map was using (its bytes were overwritten)."""
import subprocess

import pytest

from tests.conftest import SCRIPTS, run_shim

SCRIPT = SCRIPTS / "suvm_handler_alloc.py"


def run(how: str):
    try:
        # eleos mode: the app's anonymous maps are SUVM regions.  A deadlock is a timeout.
        return run_shim("eleos", SCRIPT, how, 300, stats=False, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the {how} run deadlocked (no exit in 60 s)")


def test_a_signal_handler_that_maps_memory_inside_the_allocator_gets_memory_of_its_own():
    r = run("signal")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout == "interrupted: True; maps that lost their bytes: 0; bytes left allocated: 0\n"


def test_a_finalizer_that_frees_inside_the_allocator_neither_deadlocks_nor_leaks():
    r = run("gc")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout == "interrupted: True; maps that lost their bytes: 0; bytes left allocated: 0\n"

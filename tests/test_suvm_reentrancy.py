"""SUVM's allocator under re-entry from the thread that is inside it: a Python signal handler
and a GC finalizer run on the main thread between bytecodes, so an app's handler that maps
memory (mmap.mmap(-1, n): an SUVM region under ELEOS_MEMORY=suvm), or a dropped map's
finalizer, may run while the allocator is mid-operation.  Before the allocator was C
(trusted/_native/suvm_heap.c) its Python critical sections held a threading.Lock: both runs
below deadlocked at the first interruption; with an RLock instead, the signal run's handler
got memory another map was using (its bytes were overwritten)."""
import subprocess
import sys

import pytest

from tests.conftest import ROOT, SCRIPTS, run_shim, shim_env

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


DEFAULT_IN_HANDLER = """
import signal, threading
from eleos_shim import suvm
from trusted import suvm as t
got, built, fired = [], [], []
signal.signal(signal.SIGUSR1, lambda *a: got.append(t.default()))
def provider():
    if not fired:               # the first build only: the handler lands in it
        fired.append(1)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)
    s = suvm.create(suvm_store_mb=1, suvm_cache_mb=0.0625)
    built.append(s)
    return s
t.set_default(None)
t.set_default_provider(provider)
d = t.default()
print(len(built), got == [d], [s.closed for s in built].count(True))
"""


def test_the_default_instance_asked_for_by_a_handler_while_it_is_built_is_the_one_kept():
    # Before the default's lock was re-entrant this deadlocked; now the handler's build wins
    # and the interrupted one, finding it, closes its own.
    try:
        r = subprocess.run([sys.executable, "-c", DEFAULT_IN_HANDLER], capture_output=True,
                           text=True, timeout=60, cwd=ROOT, env=shim_env())
    except subprocess.TimeoutExpired:
        pytest.fail("the default instance's build deadlocked when re-entered from a handler")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "2 True 1\n"

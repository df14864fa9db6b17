"""An app whose signal handler, and whose finalizers, allocate and free heap memory (anonymous
mmap: SUVM regions under ELEOS_MEMORY=suvm) while the main thread is in the middle of its own
allocations and frees.  A Python handler runs on the main thread between bytecodes, and so
does a finalizer the cyclic GC calls; if either lands inside the allocator while it holds its
lock, a plain lock deadlocks and a re-entrant one lets the handler see half-updated state.

To make the interruption land everywhere, deterministically: ``signal`` sets a tracer that
sends SIGUSR1 to the main thread at every line the shim's allocator module runs (so the
handler runs at the next bytecode boundary, inside whatever that line was doing); ``gc``
sets a tracer that, at every such line, drops a map held only by a reference cycle and runs
the collector, as an allocation there may (so the map's finalizer frees it right there).  Then it checks that
every live map still holds its bytes, that no two maps share memory, and that once all are
closed the heap's allocated bytes are back to zero (nothing leaked, nothing freed twice)."""
import gc
import mmap
import random
import signal
import sys
import threading

SIZES = (1, 24, 100, 700, 2048, 4096, 9000, 40000)
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 300   # maps the main thread makes
rng = random.Random(7)
live = []          # (map, pattern byte)
handled = [0]


class Cycle:
    """A map held only by a reference cycle: freed by the GC's finalizer pass."""
    def __init__(self, m):
        self.m, self.me = m, self


def fresh(n: int, tag: int):
    m = mmap.mmap(-1, n)
    m[0:n] = bytes([tag]) * n
    return m


def handler(signum, frame):
    handled[0] += 1
    tag = 200 + handled[0] % 50
    a, b = fresh(60, tag), fresh(3 * 4096 + 5, tag)
    ok = a[:] == bytes([tag]) * 60 and b[:] == bytes([tag]) * (3 * 4096 + 5)
    a.close()
    Cycle(b)                      # left to the GC: a finalizer that frees
    if not ok:
        print("handler's map lost its bytes", flush=True)
        sys.exit(3)


def tracer(frame, event, arg):
    # Only the allocator's module, and not while the handler itself runs.
    if frame.f_code.co_filename.endswith("trusted/suvm.py"):
        if event == "line" and not in_handler[0]:
            signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)
        return tracer
    return None


spare = []         # maps held only by cycles, for gc_tracer to drop
line_rng = random.Random(11)   # which lines drop one: a fixed sequence, the same every run


def gc_tracer(frame, event, arg):
    if frame.f_code.co_filename.endswith("trusted/suvm.py"):
        if event == "line" and spare and line_rng.random() < 0.25:
            spare.pop()
            handled[0] += gc.collect() > 0
        return gc_tracer
    return None


in_handler = [False]


def guarded(signum, frame):
    in_handler[0] = True
    try:
        handler(signum, frame)
    finally:
        in_handler[0] = False


def workload(how: str) -> None:
    for i in range(ROUNDS):
        n = rng.choice(SIZES)
        tag = i % 199 + 1
        if how == "gc":
            spare.append(Cycle(fresh(rng.choice(SIZES), tag)))
        m = fresh(n, tag)
        r = rng.random()
        if r < 0.5:
            live.append((m, tag))
        elif r < 0.7:
            Cycle(m)
        else:
            m.close()
        if live and rng.random() < 0.3:
            old, _ = live.pop(rng.randrange(len(live)))
            old.close()


def main() -> None:
    how = sys.argv[1]
    signal.signal(signal.SIGUSR1, guarded)
    if how == "signal":
        sys.settrace(tracer)
    elif how == "gc":
        sys.settrace(gc_tracer)
    workload(how)
    sys.settrace(None)
    spare.clear()
    bad = [n for n, (m, tag) in enumerate(live) if m[:] != bytes([tag]) * len(m)]
    for m, _ in live:
        m.close()
    gc.collect()
    from eleos_shim import suvm
    left = suvm.instance().allocated_bytes()
    print(f"interrupted: {handled[0] > 0}; "
          f"maps that lost their bytes: {len(bad)}; bytes left allocated: {left}")


main()

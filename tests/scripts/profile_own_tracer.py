"""An app with its own tracer (as a debugger or coverage tool sets one), which touches its heap
and makes routed calls while tracing (tests/test_profile_tracer.py runs it natively, under the
shim, and under the shim with ELEOS_PROFILE=1: it must print the same).

``chain``: sys.settrace and threading.settrace tracers that log every event of this file's
frames: calls, lines, returns, an exception, a local tracer that swaps itself for another and
one that returns None, a tracer switched off and on mid-function (no events between), and a
thread.  Prints how many events and a digest of them, and what sys/threading.gettrace say.
``c-tracer``: installs a tracer below sys.settrace (C's PyEval_SetTrace, as coverage's C
tracer does) while it touches the heap, then turns tracing off the same way.  ``raise``: its tracer raises; CPython
then switches tracing off, for the app as natively."""
import ctypes
import hashlib
import mmap
import os
import sys
import threading

HERE = __file__
events = []
heap = mmap.mmap(-1, 1 << 20)
devnull = os.open(os.devnull, os.O_WRONLY)


def log(frame, event, arg):
    info = type(arg[0]).__name__ if event == "exception" else (arg if event == "return" else None)
    events.append((threading.current_thread().name, frame.f_code.co_name, event,
                   frame.f_lineno, repr(info)))


def tracer(frame, event, arg):
    if frame.f_code.co_filename != HERE:
        return None
    log(frame, event, arg)
    if frame.f_code.co_name == "quiet":
        return None                    # no local events for this frame
    if frame.f_code.co_name == "swapped":
        return first_local
    return tracer


def first_local(frame, event, arg):
    log(frame, "first:" + event, arg)
    return second_local               # replaces itself from now on


def second_local(frame, event, arg):
    log(frame, "second:" + event, arg)
    return None                       # None: CPython keeps this one


def touch(step=4096):
    total = 0
    for i in range(0, len(heap), step):
        heap[i] = (heap[i] + 1) % 256
        total += heap[i]
    os.write(devnull, b"x")           # a routed call (an exit under sgx)
    return total


def quiet():
    return touch(8192)


def swapped():
    a = 1
    b = a + 1
    return a + b


def raises():
    try:
        raise KeyError("k")
    except KeyError:
        return "caught"


def off_and_on():
    x = 1
    sys.settrace(None)                # natively: no more events from here, any frame
    x += touch(16384)
    sys.settrace(tracer)
    x += 1
    return x


def chain():
    sys.settrace(tracer)
    threading.settrace(tracer)
    touch()
    quiet()
    swapped()
    raises()
    off_and_on()
    t = threading.Thread(target=touch, name="worker")
    t.start()
    t.join()
    touch()
    sys.settrace(None)
    threading.settrace(None)
    touch()                            # untraced
    digest = hashlib.sha256(repr(events).encode()).hexdigest()[:16]
    print(len(events), digest, sys.gettrace() is None, threading.gettrace() is None)


class CTracer:
    """Stands for coverage's C tracer: installed with PyEval_SetTrace, as it is."""
    calls = 0


TRACEFUNC = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.py_object, ctypes.c_void_p, ctypes.c_int,
                             ctypes.c_void_p)


@TRACEFUNC
def c_trace(obj, frame, what, arg):
    CTracer.calls += 1
    return 0


def c_tracer():
    touch()
    ctypes.pythonapi.PyEval_SetTrace.argtypes = [TRACEFUNC, ctypes.py_object]
    obj = CTracer()
    ctypes.pythonapi.PyEval_SetTrace(c_trace, obj)
    for _ in range(3):
        touch()
    shown = sys.gettrace() is obj
    ctypes.pythonapi.PyEval_SetTrace.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    ctypes.pythonapi.PyEval_SetTrace(None, None)
    print("C tracer saw events:", CTracer.calls > 0, "gettrace showed it:", shown)


def raise_in_tracer():
    def bad(frame, event, arg):
        if frame.f_code.co_filename == HERE and event == "line" and frame.f_code.co_name == "touch":
            raise RuntimeError("tracer failed")
        return bad
    sys.settrace(bad)
    try:
        touch()
    except RuntimeError as exc:
        print("raised:", exc, "gettrace is None:", sys.gettrace() is None)
    touch()


{"chain": chain, "c-tracer": c_tracer, "raise": raise_in_tracer}[sys.argv[1]]()

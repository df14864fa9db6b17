"""A signal handler's routed call that lands in the middle of a staging area's growth.

The host delivers signals when it likes, and a Python handler runs at any bytecode boundary
of the main thread: also between the statements of ``Transport._grow``, which record a new
buffer and then its size.  ``data_out`` uses the area on top of the thread's stack without
taking it, so a handler's call could take that same area and grow it too; the interrupted
growth then recorded its size for the handler's (smaller) buffer, and the next copy into the
area ran past the end of the buffer it named.  The handler is injected here at exactly that
boundary with a line trace (deterministic, where a real signal would land there by chance)."""
from __future__ import annotations

import ctypes
import inspect
import os
import sys

from eleos_shim import abi
from tests.test_transport_hostile import built
from trusted._native._enclave import ffi
from trusted.syscall import Transport

_libc = ctypes.CDLL(None)
_libc.malloc_usable_size.restype = ctypes.c_size_t
_libc.malloc_usable_size.argtypes = [ctypes.c_void_p]


def _line_of(func, text: str) -> int:
    lines, first = inspect.getsourcelines(func)
    return first + next(i for i, line in enumerate(lines) if text in line)


def test_a_handlers_growth_inside_a_growth_never_leaves_a_size_above_its_buffer(tmp_path):
    # The size line of _grow's buffer-1 branch: the buffer is recorded, its size not yet.
    target = _line_of(Transport._grow, "st.t.cap = st.cap = new")
    (tmp_path / "in").write_bytes(b"h" * (1 << 20))
    with built("ocall") as t:
        src = os.open(tmp_path / "in", os.O_RDONLY)
        dst = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT)
        try:
            small = t._top_staging().cap
            handler_ran = []

            def handler():               # what a signal handler's os.read would do
                handler_ran.append(t.data_in(abi.OP_READ, src, small + 1))

            def trace(frame, event, arg):
                if frame.f_code is not Transport._grow.__code__:
                    return None

                def lines(frame, event, arg):
                    if event == "line" and frame.f_lineno == target and not handler_ran:
                        handler()
                    return lines
                return lines

            data = os.urandom(4 * small)     # grows the area past what the handler's needs
            sys.settrace(trace)
            try:
                took = t.data_out(abi.OP_WRITE, dst, data)
            finally:
                sys.settrace(None)
            assert handler_ran and handler_ran[0][0] == small + 1
            for area in t._all_staging:
                assert area.t.cap <= _libc.malloc_usable_size(area.t.buf), \
                    "an area's recorded size is larger than the buffer it names"
                assert area.t.buf == int(ffi.cast("uintptr_t", area.buf))
                assert area.t.cap == area.cap
            assert took == len(data) and os.pread(dst, len(data) + 1, 0) == data
        finally:
            os.close(src), os.close(dst)

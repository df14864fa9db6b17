"""TRUSTED side: the app's stdout and stderr, routed (in a real enclave each write is an exit).

At install, ``sys.stdout`` and ``sys.stderr`` are rebuilt as CPython's start-up builds them
(TextIOWrapper over a BufferedWriter) with the same encoding, errors, line buffering and
write-through, over the enclave's ``io.FileIO`` (trusted.libos.fs) on the same fd (never closing
it), so a ``print`` is a counted write through the transport.  Only streams that are still
the interpreter's own are replaced: a stream the app or a test harness swapped in is left
alone.  stdin is not routed: a read may wait without end, which must not tie up an RPC worker.
"""
from __future__ import annotations

import _io
import io
import sys

_STREAMS = (("stdout", 1), ("stderr", 2))


def _raw(stream):
    """The FileIO under a stream (``python -u``: the text layer sits on it directly)."""
    buf = getattr(stream, "buffer", None)
    return buf if type(buf) is _io.FileIO else getattr(buf, "raw", None)


def _is_interpreters(stream, fd: int) -> bool:
    raw = _raw(stream)
    return (type(stream) is io.TextIOWrapper and type(raw) is _io.FileIO and not raw.closed
            and raw.fileno() == fd)


def patches(fs) -> list[tuple[object, str, object]]:
    """(sys, "stdout"/"stderr", routed stream) for each stream that is the interpreter's."""
    out = []
    for name, fd in _STREAMS:
        old = getattr(sys, name, None)
        if not _is_interpreters(old, fd):
            continue
        raw = fs.FileIO(fd, "wb", closefd=False)
        raw.name = f"<{name}>"
        buffered = old.buffer is not _raw(old)
        new = io.TextIOWrapper(io.BufferedWriter(raw, raw._blksize) if buffered else raw,
                               encoding=old.encoding,
                               errors=old.errors, newline="\n",
                               line_buffering=old.line_buffering,
                               write_through=old.write_through)
        new.mode = old.mode
        old.flush()                 # what the app wrote before goes out first, in order
        out.append((sys, name, new))
    return out

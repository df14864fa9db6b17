"""``io.FileIO`` called directly is routed, and behaves as CPython's C FileIO.

Under the LibOS, ``io.FileIO`` is the enclave's raw file (trusted/libos/fs.py): every syscall
through the transport, the constructor's checks and errors CPython's, subclasses and
destructors as with the C class, and the files the interpreter opened before (stdin's raw
file) still ``io.FileIO``s.  CPython's test_io is the reference; these pin each of those.
"""
from __future__ import annotations

import errno
import io
import os
import sys

import pytest

from trusted.libos._kernel import set_errno
from tests.libos_helpers import installed, make_transport
from tests.test_libos_conformance import _Spy
from tests.test_libos_fidelity import libos, same_as_native, transport  # noqa: F401


def test_fileio_called_directly_goes_through_the_transport(tmp_path):
    spy = _Spy(make_transport("ocall"))
    path = tmp_path / "f"
    secret = b"written through io.FileIO itself"
    with installed(spy):
        with io.FileIO(path, "w") as f:
            assert type(f) is io.FileIO and f.mode == "wb" and f.name == path
            assert f.write(secret) == len(secret)
        with open(path, "rb", buffering=0) as raw:
            assert type(raw) is io.FileIO                 # open() builds on the same class
            assert raw.read() == secret
    assert spy.seen.count(secret) == 2                    # out with the write, back with the read
    assert path.read_bytes() == secret


def test_files_opened_before_the_shim_are_still_fileio(libos):
    raw = sys.__stdin__.buffer.raw
    assert type(raw).__module__ == "_io" and isinstance(raw, io.FileIO)
    assert issubclass(type(raw), io.FileIO)
    assert io.FileIO.__module__ == "_io"                 # io.__all__ checks, reprs


@pytest.mark.parametrize("case", [
    "mode_rw", "mode_plus_plus", "mode_bad_char", "mode_not_str", "float", "negative_fd",
    "directory", "missing", "closefd_with_name", "opener_negative", "opener_not_int",
    "create_existing", "bytes_path_missing", "list", "fd_beyond_c_int", "closefd_none",
    "embedded_nul"])
def test_constructor_errors_are_cpythons(transport, tmp_path, case):
    path = tmp_path / "exists"
    path.write_bytes(b"x")
    call = {
        "mode_rw": lambda: io.FileIO(path, "rw"),
        "mode_plus_plus": lambda: io.FileIO(path, "r++"),
        "mode_bad_char": lambda: io.FileIO(path, "rq"),
        "mode_not_str": lambda: io.FileIO(path, 1),
        "float": lambda: io.FileIO(1.5),
        "negative_fd": lambda: io.FileIO(-2),
        "directory": lambda: io.FileIO(tmp_path),
        "missing": lambda: io.FileIO(tmp_path / "nope"),
        "closefd_with_name": lambda: io.FileIO(path, closefd=False),
        "opener_negative": lambda: io.FileIO(path, opener=lambda p, fl: -1),
        "opener_not_int": lambda: io.FileIO(path, opener=lambda p, fl: "3"),
        "create_existing": lambda: io.FileIO(path, "x"),
        "bytes_path_missing": lambda: io.FileIO(bytes(tmp_path / "nope")),
        "list": lambda: io.FileIO([1]),
        "fd_beyond_c_int": lambda: io.FileIO(1 << 40),
        "closefd_none": lambda: io.FileIO(1, "w", closefd=None),
        "embedded_nul": lambda: io.FileIO("a\0b"),
    }[case]
    assert same_as_native(transport, call)[0] == "raise"


def open_files() -> list[str]:
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            out.append(os.readlink(f"/proc/self/fd/{fd}"))
        except FileNotFoundError:        # the listing's own fd, closed by now
            pass
    return out


def test_reinit_and_closefd_false_leave_the_callers_fds_open(libos, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"line a\n")
    b.write_bytes(b"line b\n")
    with open(a, "rb") as fa, open(b, "rb") as fb:
        f = io.FileIO(fa.fileno(), closefd=False)
        f.__init__(fb.fileno(), closefd=False)         # must not close fa's fd
        assert fa.readline() == b"line a\n"
        f.close()                                      # must not close fb's fd
        assert fb.readline() == b"line b\n"
    f = io.FileIO(a, "rb")
    f.__init__(b, "rb")                                # closes the file it held first
    assert f.read() == b"line b\n"
    assert str(a) not in open_files() and str(b) in open_files()
    f.close()


def test_subclass_destructor_order_and_resource_warning(libos, tmp_path):
    record = []

    class MyFileIO(io.FileIO):
        def __del__(self):
            record.append(1)
            super().__del__()

        def close(self):
            record.append(2)
            super().close()

        def flush(self):
            record.append(3)
            super().flush()

    f = MyFileIO(tmp_path / "d", "wb")
    f.write(b"xxx")
    with pytest.warns(ResourceWarning):
        del f
        import gc
        gc.collect()
    assert record == [1, 2, 3]
    assert (tmp_path / "d").read_bytes() == b"xxx"
    assert not isinstance(sys.__stdin__.buffer.raw, MyFileIO)   # only io.FileIO itself


class _ErrnoAfterEveryCall:
    """A transport whose calls leave this thread's errno as something else, as an RPC does
    (the syscall ran on a host worker thread)."""

    def __init__(self, inner):
        self.inner, self.path = inner, inner.path

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def call(self, *args, **kwargs):
        try:
            return self.inner.call(*args, **kwargs)
        finally:
            set_errno(errno.ENOENT)


def test_a_nonblocking_buffered_write_reports_eagain_whatever_thread_ran_it():
    with installed(_ErrnoAfterEveryCall(make_transport("ocall"))):
        r, w = os.pipe()
        os.set_blocking(w, False)
        with open(r, "rb") as rf, open(w, "wb", buffering=1024) as wf:
            with pytest.raises(BlockingIOError) as exc:
                while True:
                    wf.write(b"x" * 9999)
            assert exc.value.errno == errno.EAGAIN
            assert exc.value.args[2] == exc.value.characters_written
            os.set_blocking(r, False)
            while rf.read() is not None:       # drain so that closing wf can flush
                pass
            try:
                wf.flush()
            except BlockingIOError:
                pass
            os.set_blocking(w, True)


def test_the_buffered_layers_closed_check_runs_no_python_code(libos, tmp_path):
    # BufferedWriter reads raw.closed before each flush and takes an exception from it for
    # "closed": a signal handler that raised inside a Python-level ``closed`` (as test_io's
    # reentrant-write tests' handler does) turned into "flush of closed file".
    calls = []
    with open(tmp_path / "f", "wb") as f:
        f.write(b"x")
        sys.setprofile(lambda frame, event, arg: calls.append(frame.f_code.co_name)
                       if event == "call" else None)
        try:
            f.closed  # noqa: B018
            f.raw.closed  # noqa: B018
        finally:
            sys.setprofile(None)
    assert "closed" not in calls

"""The host lies to ``fcntl(fd, F_DUPFD[_CLOEXEC], arg)``: Linux answers the lowest free fd at
or above ``arg``, never the source fd (it is open).  An answer below ``arg`` or equal to the
source names an fd the app did not ask for, and the enclave's fd table would alias it:
IagoError, and the fds the app holds are untouched."""
from __future__ import annotations

import fcntl
import os

import pytest

from eleos_shim import abi
from eleos_shim.errors import IagoError
from tests.test_libos_hostile import liar  # noqa: F401  (the lying-host fixture)


def _answering(lie):
    """The host really dups (in this process: the test's host is in-process), closes its dup
    and answers ``lie``."""
    def fn(r, a, k):
        os.close(r.ret)
        return r._replace(ret=lie)
    return fn


@pytest.mark.parametrize("cmd", [fcntl.F_DUPFD, fcntl.F_DUPFD_CLOEXEC], ids=["dupfd", "cloexec"])
def test_a_dup_below_the_floor_or_onto_its_source_is_caught(liar, tmp_path, cmd):
    t, _ = liar
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    fd = os.open(path, os.O_RDONLY)
    try:
        floor = fd + 10
        for lie in (floor - 1, fd, 0):
            t.lie(abi.OP_FCNTL, _answering(lie))
            with pytest.raises(IagoError, match="F_DUPFD"):
                fcntl.fcntl(fd, cmd, floor)
        # honest again: the source fd still reads, and a real dup lands at the floor or above
        new = fcntl.fcntl(fd, cmd, floor)
        try:
            assert new >= floor and new != fd
            assert os.pread(new, 3, 0) == b"abc" and os.pread(fd, 3, 0) == b"abc"
        finally:
            os.close(new)
    finally:
        os.close(fd)

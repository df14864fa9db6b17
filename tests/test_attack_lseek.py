"""The host lies to ``os.lseek`` on a raw fd (and to ``io.FileIO.seek``, for every whence).

A raw fd's type is not kept in the enclave, so ``os.lseek`` checks what costs nothing: a
regular file's seek lands where it is told (SEEK_SET), at or past a non-negative offset
(SEEK_CUR, SEEK_END: the base, position or size, is never negative), at the next data or
hole at or past the offset (SEEK_DATA, SEEK_HOLE); another whence is EINVAL.  Only an answer
outside that asks the host what the fd is: a character device may answer what it likes
(/dev/null answers 0), a regular file may not.  A negative answer that is no errno is the
transport's to refuse, before any of this.
"""
from __future__ import annotations

import io
import os

import pytest

from eleos_shim import abi
from eleos_shim.errors import IagoError
from tests.libos_helpers import installed, make_transport
from tests.test_libos_hostile import liar  # noqa: F401  (the lying-host fixture)
from untrusted.host import Host


def _landing_at(value):
    return lambda r, a, k: r._replace(ret=value)


@pytest.fixture
def regular(tmp_path):
    path = tmp_path / "data"
    path.write_bytes(bytes(range(100)))
    return path


@pytest.mark.parametrize("pos, whence, lie", [
    (10, os.SEEK_SET, 90),            # an absolute seek that lands elsewhere
    (10, os.SEEK_SET, 0),
    (50, os.SEEK_CUR, 7),             # short of a non-negative offset from a base >= 0
    (50, os.SEEK_END, 49),
    (20, os.SEEK_DATA, 19),           # the next data before the offset
    (20, os.SEEK_HOLE, 3),
    (-1, os.SEEK_DATA, 5),            # natively ENXIO
    (0, 7, 0),                        # natively EINVAL: no such whence
], ids=["set", "set-0", "cur", "end", "data", "hole", "data-negative", "whence-7"])
def test_an_lseek_of_a_regular_raw_fd_that_no_regular_file_answers_is_caught(
        liar, regular, pos, whence, lie):
    t, _libos = liar
    fd = os.open(regular, os.O_RDONLY)
    try:
        t.lie(abi.OP_LSEEK, _landing_at(lie))
        with pytest.raises(IagoError, match=f"regular file landed at {lie}"):
            os.lseek(fd, pos, whence)
        # honest again: the fd works and its answers pass
        assert os.lseek(fd, 30, os.SEEK_SET) == 30 and os.read(fd, 2) == bytes([30, 31])
        assert os.lseek(fd, 0, os.SEEK_CUR) == 32
    finally:
        os.close(fd)


@pytest.mark.parametrize("pos, whence, lie", [
    (10, os.SEEK_SET, 10), (0, os.SEEK_CUR, 77), (5, os.SEEK_CUR, 77), (0, os.SEEK_END, 3),
    (-5, os.SEEK_END, 1), (-5, os.SEEK_CUR, 0), (20, os.SEEK_DATA, 20), (20, os.SEEK_HOLE, 100),
])
def test_an_lseek_answer_a_regular_file_can_give_passes_without_asking_its_type(
        liar, regular, pos, whence, lie):
    # Unverifiable without the position and size (which would cost a call each time): the
    # common path asks nothing more (no fstat).
    t, _libos = liar
    fd = os.open(regular, os.O_RDONLY)
    try:
        t.lie(abi.OP_LSEEK, _landing_at(lie))
        t.lie(abi.OP_FSTAT, _landing_at(-9))     # would refuse: never asked
        assert os.lseek(fd, pos, whence) == lie
        assert t._lies.pop(abi.OP_FSTAT) is not None
    finally:
        os.close(fd)


@pytest.mark.parametrize("pos, whence", [(10, os.SEEK_SET), (5, os.SEEK_CUR),
                                         (5, os.SEEK_END)])
def test_a_character_devices_own_lseek_answer_still_reaches_the_app(pos, whence):
    # Linux's /dev/null and /dev/zero answer 0 to every seek: honest, not a lie.
    native = []
    for dev in ("/dev/null", "/dev/zero"):
        fd = os.open(dev, os.O_RDONLY)
        try:
            native.append(os.lseek(fd, pos, whence))
        finally:
            os.close(fd)
    assert native == [0, 0]
    with installed(make_transport("ocall")):
        for dev in ("/dev/null", "/dev/zero"):
            fd = os.open(dev, os.O_RDONLY)
            try:
                assert os.lseek(fd, pos, whence) == 0
            finally:
                os.close(fd)


def test_a_host_that_then_cannot_fstat_the_fd_it_just_seeked_is_caught(liar, regular):
    t, _libos = liar
    fd = os.open(regular, os.O_RDONLY)
    try:
        t.lie(abi.OP_LSEEK, _landing_at(90))
        t.lie(abi.OP_FSTAT, _landing_at(-9))       # EBADF
        with pytest.raises(IagoError, match="fails fstat"):
            os.lseek(fd, 10, os.SEEK_SET)
    finally:
        os.close(fd)


def test_a_host_that_calls_a_regular_file_a_device_is_believed(liar, regular):
    # The enclave cannot tell: the type is the host's word (as FileIO's, read at open).
    t, _libos = liar
    fd = os.open(regular, os.O_RDONLY)
    try:
        t.lie(abi.OP_LSEEK, _landing_at(0))
        t.lie(abi.OP_FSTAT, lambda r, a, k: r._replace(out=_as_chardev(r.out)))
        assert os.lseek(fd, 10, os.SEEK_SET) == 0
    finally:
        os.close(fd)


def _as_chardev(raw: bytes) -> bytes:
    import stat
    import struct
    fields = list(struct.unpack(abi.STAT_FORMAT, raw))
    i = abi.STAT_FIELDS.index("mode")
    fields[i] = stat.S_IFCHR | 0o666
    return struct.pack(abi.STAT_FORMAT, *fields)


@pytest.mark.parametrize("pos, whence, lie", [(50, os.SEEK_CUR, 7), (20, os.SEEK_DATA, 3),
                                              (0, 9, 0)])
def test_a_fileio_seek_that_no_regular_file_answers_is_caught_for_any_whence(
        liar, regular, pos, whence, lie):
    t, _libos = liar
    with io.FileIO(regular, "rb") as f:
        t.lie(abi.OP_LSEEK, _landing_at(lie))
        with pytest.raises(IagoError, match=f"landed at {lie}"):
            f.seek(pos, whence)
        assert f.seek(40) == 40 and f.read(1) == bytes([40])


@pytest.mark.parametrize("value", [-4096, -5000, -(1 << 40)])
def test_a_negative_lseek_answer_that_is_no_errno_is_caught_by_the_transport(regular, value):
    # The real C host lies (not the Python wrapper): an off_t below every -errno.
    with installed(make_transport("ocall")):
        fd = os.open(regular, os.O_RDONLY)
        try:
            Host.lie_next("ret", value, 1)
            with pytest.raises(IagoError, match="not a result and not an errno"):
                os.lseek(fd, 10, os.SEEK_SET)
            assert os.lseek(fd, 10, os.SEEK_SET) == 10     # the lie was consumed
        finally:
            Host.lie_next("ret", 0, 0)
            os.close(fd)

"""The host lies to ``io.FileIO`` called directly (and to the buffered files on it).

Most of what a raw file believes the transport and ``stat_result`` already check (a read
longer than asked, a block size that would size the app's buffer).  What is left is the
position: a regular file's seek to an absolute offset lands exactly there, so any other
answer is a lie, never the app's (or BufferedReader's) idea of where the file is.
"""
from __future__ import annotations

import io

import pytest

from eleos_shim import abi
from eleos_shim.errors import IagoError
from tests.test_libos_hostile import liar  # noqa: F401  (the lying-host fixture)


def _landing_at(value):
    return lambda r, a, k: r._replace(ret=value)


@pytest.mark.parametrize("how", ["raw", "buffered"])
def test_a_seek_of_a_regular_file_that_lands_elsewhere_is_caught(liar, tmp_path, how):
    t, _libos = liar
    path = tmp_path / "data"
    path.write_bytes(bytes(range(100)))
    f = io.FileIO(path, "rb") if how == "raw" else open(path, "rb")
    with f:
        assert f.seekable()          # asked once (an lseek of its own), then remembered
        t.lie(abi.OP_LSEEK, _landing_at(90))
        with pytest.raises(IagoError, match="landed at 90"):
            f.seek(10)
        assert f.seek(20) == 20 and f.read(3) == bytes([20, 21, 22])


def test_a_relative_seek_and_a_devices_seek_are_the_hosts_to_answer(liar, tmp_path):
    # SEEK_CUR/SEEK_END results cannot be checked without the file's size and position, and
    # a device's lseek may answer what it likes (Linux's /dev/zero answers 0): they pass.
    t, _libos = liar
    path = tmp_path / "data"
    path.write_bytes(bytes(100))
    with io.FileIO(path, "rb") as f:
        t.lie(abi.OP_LSEEK, _landing_at(7))
        assert f.seek(0, io.SEEK_END) == 7
    with io.FileIO("/dev/zero", "rb") as f:      # a character device
        t.lie(abi.OP_LSEEK, _landing_at(0))
        assert f.seek(10) == 0

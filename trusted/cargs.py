"""TRUSTED side: CPython's C argument converters, in Python, with CPython's errors.

What the LibOS (trusted/libos/) and the enclave heap's maps (SUVM's, the EPC's) replace was
C that parsed its arguments with these converters; the replacements parse them the same way,
so a bad argument fails as natively: the same exception, the same message.
"""
from __future__ import annotations

import operator
import sys

_INT_MAX = (1 << 31) - 1
_UINT_MAX = (1 << 32) - 1


def c_int(value) -> int:
    """The ``i`` format: an index that fits a C int, else OverflowError."""
    value = operator.index(value)
    if value > _INT_MAX:
        raise OverflowError("signed integer is greater than maximum")
    if value < -_INT_MAX - 1:
        raise OverflowError("signed integer is less than minimum")
    return value


def as_int(value) -> int:
    """_PyLong_AsInt (and PyLong_AsPid): the same bounds, its own message."""
    value = operator.index(value)
    if not -_INT_MAX - 1 <= value <= _INT_MAX:
        raise OverflowError("Python int too large to convert to C int")
    return value


def ssize(value) -> int:
    """The ``n`` format: an index that fits a Py_ssize_t."""
    value = operator.index(value)
    if not -sys.maxsize - 1 <= value <= sys.maxsize:
        raise OverflowError("Python int too large to convert to C ssize_t")
    return value


def id_t(value, what: str = "uid") -> int:
    """_Py_Uid_Converter / _Py_Gid_Converter (``what``: "uid" or "gid"): an index that fits a
    32-bit uid_t/gid_t, or -1 (none)."""
    value = operator.index(value)
    if value < -1:
        raise OverflowError(f"{what} is less than minimum")
    if value > _UINT_MAX:
        raise OverflowError(f"{what} is greater than maximum")
    return value


__all__ = ["as_int", "c_int", "id_t", "ssize"]

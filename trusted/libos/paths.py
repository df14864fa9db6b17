"""TRUSTED side: the app's metadata and name-space calls, routed: ``os.chmod/fchmod/utime/access/
dup2/chdir/fchdir/getcwd/getcwdb/readlink/symlink/link``.

Same signatures, return values and exceptions (errno and filenames) as CPython's; the replies
that carry data (``getcwd``, ``readlink``) are checked as hostile input: a length that is not
what was written, a NUL inside a name, a working directory that is not absolute.
"""
from __future__ import annotations

import errno as _errno
import math
import operator
import os as _os
import struct

from eleos_shim import abi
from eleos_shim.errors import IagoError
from trusted.libos._kernel import AT_SYMLINK_NOFOLLOW, O_CLOEXEC, oserror
from trusted.libos.fs import _dir_fd, _fildes, _fn, _path

AT_EACCESS = 0x200
AT_SYMLINK_FOLLOW = 0x400
PATH_MAX = 4096
_TIMESPEC2 = struct.Struct("=qqqq")
_NS = 1_000_000_000


def _timespec(value) -> tuple[int, int]:
    """CPython's _PyTime_ObjectToTimespec with ROUND_FLOOR (os.utime's times)."""
    if isinstance(value, float):
        if value != value:
            raise ValueError("Invalid value NaN (not a number)")
        frac, whole = math.modf(value)
        frac = math.floor(frac * 1e9)
        if frac >= 1e9:
            frac -= 1e9
            whole += 1.0
        elif frac < 0:
            frac += 1e9
            whole -= 1.0
        if not -(1 << 63) <= whole < 1 << 63:
            raise OverflowError("timestamp out of range for platform time_t")
        return int(whole), int(frac)
    return operator.index(value), 0


def _fd_path_checks(func, fd, dir_fd, follow_symlinks):
    if fd is not None:
        if dir_fd is not None:
            raise ValueError(f"{func}: can't specify dir_fd without matching path")
        if not follow_symlinks:
            raise ValueError(f"{func}: cannot use fd and follow_symlinks together")


class PathCalls:
    """The routed functions, bound to one kernel."""

    def __init__(self, kernel):
        self.kernel = kernel
        self._check = kernel.check

    def chmod(self, path, mode, *, dir_fd=None, follow_symlinks=True):
        raw, fd = _path("chmod", path, allow_fd=True)
        mode = operator.index(mode)
        _fd_path_checks("chmod", fd, dir_fd, follow_symlinks)
        if fd is not None:
            self._check(abi.OP_FCHMODAT, fd, mode, 0)
            return
        flags = 0 if follow_symlinks else AT_SYMLINK_NOFOLLOW
        r = self.kernel.call(abi.OP_FCHMODAT, _dir_fd(dir_fd), mode, flags, inbuf=raw)
        if r.ret in (-_errno.ENOTSUP, -_errno.EOPNOTSUPP) and not follow_symlinks:
            # as CPython: Linux's fchmodat cannot change a link itself
            if dir_fd is not None:
                raise ValueError("chmod: cannot use dir_fd and follow_symlinks together")
            raise NotImplementedError("chmod: follow_symlinks unavailable on this platform")
        if r.ret < 0:
            raise oserror(-r.ret, _fn(path))

    def fchmod(self, fd, mode):
        self._check(abi.OP_FCHMODAT, operator.index(fd), operator.index(mode), 0)

    def utime(self, path, times=None, *, ns=None, dir_fd=None, follow_symlinks=True):
        raw, fd = _path("utime", path, allow_fd=True)
        if times is not None and ns is not None:
            raise ValueError("utime: you may specify either 'times' or 'ns' but not both")
        if times is not None:
            if type(times) is not tuple or len(times) != 2:
                raise TypeError("utime: 'times' must be either a tuple of two ints or None")
            (a, an), (m, mn) = _timespec(times[0]), _timespec(times[1])
            ts = _TIMESPEC2.pack(a, an, m, mn)
        elif ns is not None:
            if type(ns) is not tuple or len(ns) != 2:
                raise TypeError("utime: 'ns' must be a tuple of two ints")
            a, an = divmod(operator.index(ns[0]), _NS)
            m, mn = divmod(operator.index(ns[1]), _NS)
            ts = _TIMESPEC2.pack(a, an, m, mn)
        else:
            ts = None
        _fd_path_checks("utime", fd, dir_fd, follow_symlinks)
        flags = 0 if follow_symlinks else AT_SYMLINK_NOFOLLOW
        if fd is not None:
            self._check(abi.OP_UTIMENSAT, fd, 0, in2=ts)
        else:
            self._check(abi.OP_UTIMENSAT, _dir_fd(dir_fd), flags, inbuf=raw, in2=ts,
                        filename=_fn(path))

    def access(self, path, mode, *, dir_fd=None, effective_ids=False, follow_symlinks=True):
        raw, _ = _path("access", path)
        flags = (AT_EACCESS if effective_ids else 0) | \
            (0 if follow_symlinks else AT_SYMLINK_NOFOLLOW)
        r = self.kernel.call(abi.OP_FACCESSAT, _dir_fd(dir_fd), operator.index(mode), flags,
                             inbuf=raw)
        if r.ret > 0:
            raise IagoError(f"host returned {r.ret} for access")
        return r.ret == 0

    def dup2(self, fd, fd2, inheritable=True):
        fd, fd2 = operator.index(fd), operator.index(fd2)
        k = self.kernel
        r = self._check(abi.OP_DUP3, fd, fd2, 0 if inheritable or fd == fd2 else O_CLOEXEC)
        if r.ret != fd2:
            raise IagoError(f"host's dup2 onto fd {fd2} returned fd {r.ret}")
        if fd != fd2:
            # The old file on fd2 is closed and this is a new one; an fd a shim object held
            # (stdio, a socket) stays that object's, as it keeps using the number.
            held = fd2 in k.fds and fd2 not in k.raw_fds
            k.forget_fd(fd2)
            k.adopt_fd(fd2, "dup2", raw=not held)
            if fd in k.app_blocking:
                k.app_blocking[fd2] = k.app_blocking[fd]
            if fd in k.full_write:
                k.full_write.add(fd2)
        return fd2

    def chdir(self, path):
        raw, fd = _path("chdir", path, allow_fd=True)
        if fd is not None:
            self._check(abi.OP_CHDIR, fd)
        else:
            self._check(abi.OP_CHDIR, inbuf=raw, filename=_fn(path))

    def fchdir(self, fd):
        self._check(abi.OP_CHDIR, _fildes(fd))

    def getcwdb(self):
        r = self._check(abi.OP_GETCWD, outcap=PATH_MAX)
        if r.ret != len(r.out) or not r.out.startswith(b"/") or b"\0" in r.out:
            raise IagoError(f"host's getcwd returned {r.ret} for {len(r.out)} bytes that are "
                            f"not an absolute path")
        return r.out

    def getcwd(self):
        return _os.fsdecode(self.getcwdb())

    def readlink(self, path, *, dir_fd=None):
        raw, _ = _path("readlink", path)
        r = self._check(abi.OP_READLINKAT, _dir_fd(dir_fd), inbuf=raw, out2cap=PATH_MAX,
                        filename=_fn(path))
        if r.ret != len(r.out2) or b"\0" in r.out2:
            raise IagoError(f"host's readlink returned {r.ret} for {len(r.out2)} bytes")
        as_bytes = isinstance(path, bytes) or (
            not isinstance(path, str) and hasattr(type(path), "__fspath__")
            and isinstance(_os.fspath(path), bytes))
        return r.out2 if as_bytes else _os.fsdecode(r.out2)

    def symlink(self, src, dst, target_is_directory=False, *, dir_fd=None):
        a, _ = _path("symlink", src)
        b, _ = _path("symlink", dst)
        self._check(abi.OP_SYMLINKAT, _dir_fd(dir_fd), inbuf=a, in2=b, filename=_fn(src),
                    filename2=_fn(dst))

    def link(self, src, dst, *, src_dir_fd=None, dst_dir_fd=None, follow_symlinks=True):
        a, _ = _path("link", src)
        b, _ = _path("link", dst)
        self._check(abi.OP_LINKAT, _dir_fd(src_dir_fd), _dir_fd(dst_dir_fd),
                    AT_SYMLINK_FOLLOW if follow_symlinks else 0, inbuf=a, in2=b,
                    filename=_fn(src), filename2=_fn(dst))


NAMES = ("chmod", "fchmod", "utime", "access", "dup2", "chdir", "fchdir", "getcwd", "getcwdb",
         "readlink", "symlink", "link")
__all__ = ["PathCalls", "NAMES"]

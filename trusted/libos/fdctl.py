"""TRUSTED side: ``fcntl.fcntl`` and ``fcntl.ioctl``, routed, answering as the app's view of the fd.

Socket and pipe fds are O_NONBLOCK in the host (see _kernel.py); the app believes what it set.
So ``F_GETFL`` reports O_NONBLOCK as the app last set it (by ``setblocking``, ``settimeout``,
``os.set_blocking``, ``F_SETFL`` or ``FIONBIO``), ``F_SETFL`` and ``FIONBIO`` change that view
and leave the host fd non-blocking, and ``F_DUPFD`` gives a new fd that enters the enclave's
fd table.  Everything else goes to the host as CPython sends it: an int argument by value, a
buffer argument (at most 1024 bytes, as CPython) copied out and back.
"""
from __future__ import annotations

import fcntl as _fcntl
import operator
import signal as _signal
import struct
import termios as _termios
import threading

from eleos_shim import abi
from eleos_shim.errors import IagoError
from trusted.libos._kernel import F_GETFL, F_SETFL, O_NONBLOCK, Kernel
from trusted.libos.fs import _fildes

ARG_MAX = 1024                       # CPython's fcntl/ioctl buffer (IOCTL_BUFSZ)
FIONBIO = _termios.FIONBIO
_DUPS = (_fcntl.F_DUPFD, getattr(_fcntl, "F_DUPFD_CLOEXEC", 1030))
_INT = struct.Struct("=i")
_SET_WAKEUP_FD = _signal.set_wakeup_fd      # CPython's own, saved before the LibOS patches it


def _int_arg(value, what: str) -> int:
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{what} requires a file or file descriptor, an integer and "
                        f"optionally a third integer or a string") from None
    if not -(1 << 31) <= value < 1 << 32:
        raise OverflowError("Python int too large to convert to C int")
    return value


class Fcntl:
    """The routed ``fcntl`` functions of one enclave (and ``signal.set_wakeup_fd``, whose one
    question to the fd is its blocking mode)."""

    def __init__(self, kernel: Kernel):
        self.kernel = kernel

    def _buffer_call(self, op, fd, code, data: bytes, what: str) -> tuple[int, bytes]:
        if len(data) > ARG_MAX:
            raise ValueError(f"{what} string arg too long")
        r = self.kernel.check(op, fd, code, 0, 1, inbuf=data, outcap=len(data))
        if len(r.out) not in (0, len(data)):
            raise IagoError(f"host returned {len(r.out)} bytes for a {len(data)}-byte "
                            f"{what} argument")
        return r.ret, r.out or data

    def fcntl(self, fd, cmd, arg=0, /):
        fd, cmd, k = _fildes(fd), operator.index(cmd), self.kernel
        if isinstance(arg, str):
            arg = arg.encode()
        if not isinstance(arg, int):
            try:
                data = memoryview(arg).tobytes()
            except TypeError:
                data = None
            if data is not None:
                return self._buffer_call(abi.OP_FCNTL, fd, cmd, data, "fcntl")[1]
        arg = _int_arg(arg, "fcntl")
        if cmd == F_SETFL and fd in k.app_blocking:
            ret = k.check(abi.OP_FCNTL, fd, F_SETFL, arg | O_NONBLOCK).ret
            k.app_blocking[fd] = not arg & O_NONBLOCK
            return ret
        ret = k.check(abi.OP_FCNTL, fd, cmd, arg).ret
        if cmd == F_GETFL and fd in k.app_blocking:
            ret = (ret & ~O_NONBLOCK) | (0 if k.app_blocking[fd] else O_NONBLOCK)
        elif cmd in _DUPS:
            # Linux gives the lowest free fd at or above the argument; the source fd is open,
            # so it is never the answer.  Anything else would alias an fd the enclave holds.
            if ret < arg or ret == fd:
                raise IagoError(f"host returned fd {ret} for fcntl(F_DUPFD) of fd {fd} at or "
                                f"above {arg}")
            newfd = k.adopt_fd(ret, "fcntl(F_DUPFD)", raw=True)
            if fd in k.app_blocking:
                k.app_blocking[newfd] = k.app_blocking[fd]
            if fd in k.full_write:
                k.full_write.add(newfd)
        return ret

    def set_wakeup_fd(self, fd, /, *, warn_on_full_buffer=True):
        """``signal.set_wakeup_fd``: CPython's own (its C signal handler writes the byte to
        the fd, as natively), after the one check it makes of the fd answered by the app's
        view: a socket or pipe is always O_NONBLOCK in the host, so CPython would never see
        one the app made blocking, which it refuses."""
        if (type(fd) is int and fd != -1 and self.kernel.app_blocking.get(fd)
                and threading.current_thread() is threading.main_thread()):
            raise ValueError(f"the fd {fd} must be in non-blocking mode")
        return _SET_WAKEUP_FD(fd, warn_on_full_buffer=warn_on_full_buffer)

    # As the function it stands for (CPython's test_signal checks each one's module).
    set_wakeup_fd.__module__, set_wakeup_fd.__qualname__ = "signal", "set_wakeup_fd"

    def ioctl(self, fd, request, arg=0, mutate_flag=True, /):
        fd, k = _fildes(fd), self.kernel
        request = operator.index(request) & 0xFFFFFFFF
        if isinstance(arg, int):
            return k.check(abi.OP_IOCTL_INT, fd, request, _int_arg(arg, "ioctl"), 2).ret
        if isinstance(arg, str):
            arg = arg.encode()
        view = memoryview(arg).cast("B")
        mutable = not view.readonly and mutate_flag
        if request == FIONBIO and fd in k.app_blocking and len(view) >= _INT.size:
            # the app's blocking view only: the host fd stays O_NONBLOCK
            k.app_blocking[fd] = not _INT.unpack_from(view)[0]
            return 0 if mutable else bytes(view)
        if mutable and len(view) > ARG_MAX:
            r = k.check(abi.OP_IOCTL_INT, fd, request, 0, 1, inbuf=view, outcap=len(view))
            if len(r.out) not in (0, len(view)):
                raise IagoError(f"host returned {len(r.out)} bytes for a {len(view)}-byte "
                                f"ioctl argument")
            if r.out:
                view[:] = r.out
            return r.ret
        ret, out = self._buffer_call(abi.OP_IOCTL_INT, fd, request, bytes(view), "ioctl")
        if mutable:
            view[:] = out
            return ret
        return out

"""TRUSTED side: the LibOS's view of the host kernel (the enclave fd table and checked calls).

Every routed call of the app ends here: :class:`Kernel` sends one ABI request through the
transport (trusted/syscall.py: direct, ocall or rpc) and turns the reply into what CPython
would have given the app: a value, or an ``OSError`` subclass with the same errno and filename.

The host is hostile.  The transport already rejects generic lies (lengths above capacity,
errnos out of range); this layer rejects the *semantic* ones, which need to know what the
enclave did before: an fd the host hands back that is negative or already open in the enclave
(the fd table below), a stat record whose mode names no file type.  Each raises
:class:`eleos_shim.errors.IagoError` (fail-stop: the app never sees the lie).

Socket and pipe fds are kept O_NONBLOCK in the host kernel (so no call on them can tie up an
RPC worker); what the app believes about blocking lives here, per fd (``app_blocking``), so
that ``os.read`` on such an fd waits (as an OCALL) where it would block natively, and a write
to a blocking stream (pipe, stream socket) completes as the kernel's blocking write does.
"""
from __future__ import annotations

import errno as _errno
import math
import stat as _stat
import struct
import threading
import time

from eleos_shim import abi
from eleos_shim.errors import IagoError

AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_REMOVEDIR = 0x200
O_CLOEXEC = 0o2000000
O_NONBLOCK = 0o4000
O_DIRECTORY = 0o200000
F_GETFL, F_SETFL = 3, 4
SOL_SOCKET = 1

POLLIN, POLLPRI, POLLOUT, POLLERR, POLLHUP, POLLNVAL = 0x1, 0x2, 0x4, 0x8, 0x10, 0x20

STAT = struct.Struct(abi.STAT_FORMAT)
# A file type the host may claim (S_IFMT values); anything else is a lie.
_FILE_TYPES = frozenset({_stat.S_IFREG, _stat.S_IFDIR, _stat.S_IFCHR, _stat.S_IFBLK,
                         _stat.S_IFIFO, _stat.S_IFLNK, _stat.S_IFSOCK})
_NS = 1_000_000_000
# The largest st_blksize the enclave believes.  CPython's open() sizes the app's buffer from
# it, so a lie of 1 GiB or 2**40 is an allocation the host chose; real file systems report
# 4 KiB to a few MiB (ZFS's largest record is 16 MiB).
MAX_BLKSIZE = 16 << 20

# How large one staged transfer may be; a longer read is a short read (POSIX allows it),
# a longer write is a short write that the buffered layers above finish.
MAX_IO = 64 << 20


def _strerror(err: int) -> str:
    import os  # the real module: strerror is a pure libc string lookup, no syscall
    return os.strerror(err)


def oserror(err: int, filename=None, filename2=None) -> OSError:
    """The exception CPython raises for ``err`` (the errno picks the subclass)."""
    if filename2 is not None:
        return OSError(err, _strerror(err), filename, None, filename2)
    if filename is not None:
        return OSError(err, _strerror(err), filename)
    return OSError(err, _strerror(err))


_libc = None


def set_errno(err: int) -> None:
    """Leave ``err`` in the calling thread's C errno, as the real syscall would have: CPython's
    C layers read it after some calls (BufferedWriter's BlockingIOError takes its errno from
    the raw write that returned None), and a routed call may have run on another thread."""
    global _libc
    if _libc is None:
        import ctypes
        _libc = ctypes.CDLL(None)
        _libc.__errno_location.restype = ctypes.POINTER(ctypes.c_int)
    _libc.__errno_location()[0] = err


def timeout_error() -> TimeoutError:
    # CPython's socket.timeout is TimeoutError('timed out'), no errno.
    return TimeoutError("timed out")


def stat_result(raw: bytes, what: str):
    """Build ``os.stat_result`` from a host ``struct eleos_stat`` exactly as CPython's
    ``_pystat_fromstructstat`` does (int, float and ns times; blksize, blocks, rdev)."""
    import os
    if len(raw) != STAT.size:
        raise IagoError(f"host returned a {len(raw)}-byte stat record for {what}, "
                        f"expected {STAT.size}")
    (dev, ino, nlink, mode, uid, gid, rdev, size, blksize, blocks,
     atime_ns, mtime_ns, ctime_ns) = STAT.unpack(raw)
    if mode > 0o177777 or _stat.S_IFMT(mode) not in _FILE_TYPES:
        raise IagoError(f"host returned an impossible file mode {mode:#o} for {what}")
    if size >= 1 << 63 or nlink >= 1 << 63 or blocks >= 1 << 63:
        raise IagoError(f"host returned an impossible size/link/block count for {what}")
    if blksize > MAX_BLKSIZE:
        raise IagoError(f"host returned a block size of {blksize} bytes for {what} "
                        f"(at most {MAX_BLKSIZE} is believed)")
    if uid >= 1 << 32 or gid >= 1 << 32:
        raise IagoError(f"host returned uid {uid} / gid {gid} for {what}: uid_t and gid_t "
                        f"are 32 bits")
    times_i, times_f = [], []
    for ns in (atime_ns, mtime_ns, ctime_ns):
        sec, nsec = divmod(ns, _NS)
        times_i.append(sec)
        times_f.append(sec + nsec * 1e-9)
    return os.stat_result((mode, ino, dev, nlink, uid, gid, size, *times_i, *times_f,
                           atime_ns, mtime_ns, ctime_ns, blksize, blocks, rdev))


def _open_stdio() -> set[int]:
    """Which of 0, 1, 2 the process has open when the enclave is built.  Read once, directly
    (this is enclave construction, like the loader measuring its initial state, not an app
    call): an app started with stdin closed gets fd 0 back from its first open, and that is
    no lie."""
    import posix
    out = set()
    for fd in (0, 1, 2):
        try:
            posix.fstat(fd)
        except OSError:
            continue
        out.add(fd)
    return out


class Kernel:
    """Checked syscalls over a transport, plus the enclave's fd table.

    The fd table holds the stdio fds open at start and every fd the shim obtained from the
    host and has not closed.  An fd is removed *before* its CLOSE is sent, so a concurrent
    open that gets the same number back from the host is never mistaken for a lie.

    Fds handed to the app as bare integers (``os.open``, ``os.dup``, ``os.pipe``) are *raw*:
    the app may give them to C code that closes them behind the shim's back (numpy's
    ``np.load`` dups an fd with ``os.dup`` and ``fclose``s it in C), which a Python-level
    LibOS cannot see.  A host reply naming a raw fd is therefore taken as proof that the old
    one is gone; a reply naming an fd held by a shim object (file, socket, epoll, directory
    iterator, or stdio) is a lie.  Wrapping a raw fd in such an object makes it owned.
    """

    def __init__(self, transport):
        self.transport = transport
        self._call = self.call = transport.call   # the transport's own bound method: no layer
        self.data_out, self.data_in = transport.data_out, transport.data_in   # write/read
        self.data_into = transport.data_into                                   # recv_into
        self.poll, self.epoll_wait = transport.poll, transport.epoll_wait      # checked waits
        # On the rpc path a wait first asks, without a timeout, through the ring (no exit):
        # a busy server's wait usually finds an fd ready at once (see mux.py).  With
        # ELEOS_RPC_WAIT=spin the transport's wait makes that check (enclave_ocalls.c: rpc_wait);
        # with ocall the LibOS makes it, before the wait's OCALL.
        self.wait_precheck = transport.path == "rpc" and transport.rpc_wait == "ocall"
        # Re-entrant: a signal handler's routed open or close runs on the thread that may be
        # holding it (each update below is one set or dict operation, safe to interleave).
        self._lock = threading.RLock()
        self.fds: set[int] = _open_stdio()
        self.raw_fds: set[int] = set()             # subset of fds: bare ints the app holds
        self.app_blocking: dict[int, bool] = {}   # host-O_NONBLOCK fd -> app sees it blocking
        self.full_write: set[int] = set()          # streams whose blocking write completes
        self.epoll_sets: dict[int, dict] = {}      # epoll fd -> {fd: events it may report}

    # -- the fd table --------------------------------------------------------------------------
    def adopt_fd(self, fd: int, what: str, raw: bool = False) -> int:
        """Record an fd the host just created; reject impossible ones (Iago).  ``raw``: it
        goes to the app as a bare integer."""
        if fd < 0 or fd >= 1 << 31:
            raise IagoError(f"host returned an impossible fd {fd} for {what}")
        with self._lock:
            if fd in self.fds:
                if fd not in self.raw_fds:
                    raise IagoError(f"host returned fd {fd} for {what}, but the enclave "
                                    f"already has fd {fd} open")
                self.app_blocking.pop(fd, None)   # closed unseen (see above): a new file
                self.full_write.discard(fd)
                self._unregister(fd)
            self.fds.add(fd)
            if raw:
                self.raw_fds.add(fd)
            else:
                self.raw_fds.discard(fd)
        return fd

    def own_fd(self, fd: int) -> None:
        """A shim object now holds ``fd``: from here on only the shim closes it."""
        with self._lock:
            self.fds.add(fd)
            self.raw_fds.discard(fd)

    def forget_fd(self, fd: int) -> None:
        with self._lock:
            self.fds.discard(fd)
            self.raw_fds.discard(fd)
            self.app_blocking.pop(fd, None)
            self.full_write.discard(fd)
            self.epoll_sets.pop(fd, None)
            self._unregister(fd)

    def _unregister(self, fd: int) -> None:
        """A closed fd leaves every epoll set: the kernel drops a registration with its file,
        so a new file that gets the number was never registered (mux.py checks that)."""
        for registered in list(self.epoll_sets.values()):   # (one made meanwhile: empty)
            registered.pop(fd, None)

    # -- calls ----------------------------------------------------------------------------------
    def check(self, op, *args, filename=None, filename2=None, **kw):
        """Run ``op``; raise the matching OSError on failure, retrying EINTR (PEP 475)."""
        while True:
            r = self._call(op, *args, **kw)
            if r.ret >= 0:
                return r
            if r.ret != -_errno.EINTR:
                raise oserror(-r.ret, filename, filename2)

    def close(self, fd: int) -> None:
        self.forget_fd(fd)
        r = self._call(abi.OP_CLOSE, fd)
        # Linux frees the fd even when close reports EINTR; never retry a close.
        if r.ret < 0 and r.ret != -_errno.EINTR:
            raise oserror(-r.ret)

    def fstat(self, fd: int, filename=None):
        r = self.check(abi.OP_FSTAT, fd, outcap=STAT.size, filename=filename)
        return stat_result(r.out, f"fstat({fd})")

    # -- waiting on a non-blocking socket fd ---------------------------------------------------
    @staticmethod
    def wait_ms(deadline: float | None) -> int:
        """How long the next host wait may last, in poll() milliseconds: -1 for no limit, 0
        once the deadline has passed, else rounded up as CPython does.

        A wait is one uninterrupted OCALL.  Ctrl-C still reaches it: Linux delivers a
        process-directed signal to the main thread first (the host's native threads do not
        take it from a main thread that accepts it), the host's poll returns EINTR, and the
        retry loops return to Python, where the handler raises KeyboardInterrupt."""
        if deadline is None:
            return -1
        remaining = deadline - time.monotonic()
        return 0 if remaining <= 0 else max(1, math.ceil(remaining * 1000))

    def wait_fd(self, fd: int, events: int, deadline: float | None) -> bool:
        """Wait (as an OCALL: it may take long) until ``fd`` has ``events``; False on timeout.

        ``deadline`` is a time.monotonic() value, or None for no limit."""
        fds, evs = [fd], [events]
        while True:
            ms = self.wait_ms(deadline)
            if ms == 0:
                return False
            # Checked in C (Transport.poll): the one entry as asked, only its events (or
            # ERR/HUP/NVAL), and as many ready as marked.
            n, _ = self.poll(fds, evs, ms)
            if n == -_errno.EINTR:
                continue
            if n < 0:
                raise oserror(-n)
            if n == 1:
                return True
            # 0 ready: the time is up (the loop re-checks the clock against the deadline)

    def blocking_io(self, fd: int, events: int, attempt, timeout: float | None, first=None):
        """The socket rule: try ``attempt()`` (which returns a Reply, sent wait=False) and,
        while it reports EAGAIN and the app's view is blocking (timeout None) or has a timeout,
        wait through an OCALL and retry.  ``first``: the reply of an attempt already made (the
        callers' fast path).  Returns the successful Reply; raises BlockingIOError (timeout 0),
        TimeoutError('timed out') or the OSError of the failure."""
        deadline = None
        r = first
        while True:
            if r is None:
                r = attempt()
            ret = r.ret
            if ret >= 0:
                return r
            r = None
            if ret == -_errno.EINTR:
                continue
            if ret != -_errno.EAGAIN:
                raise oserror(-ret)
            if timeout == 0:
                raise oserror(_errno.EAGAIN)
            if deadline is None and timeout is not None:
                deadline = time.monotonic() + timeout
            if not self.wait_fd(fd, events, deadline):
                raise timeout_error()

    def fd_timeout(self, fd: int):
        """The timeout a plain os.read/os.write on ``fd`` has natively: None (blocks) for a
        socket or pipe the app believes blocking, 0 (EAGAIN is final) for everything else."""
        return None if self.app_blocking.get(fd) else 0.0

    def complete_write(self, fd: int, data, done: int, write_chunk) -> int:
        """After a short write of ``done`` bytes to a blocking stream, keep writing (waiting
        as needed) as the kernel's blocking write would, and return the total.  An error after
        some bytes went out ends it with the count so far, as the kernel does."""
        if done >= len(data) or not self.app_blocking.get(fd) or fd not in self.full_write:
            return done
        m = memoryview(data)
        took = done
        while True:
            if took == 0:
                # A stream takes at least a byte of a non-empty write or says EAGAIN: on the
                # host's 0 this loop (and sendall's) would spin for ever.
                raise IagoError(f"host says a write of {len(m) - done} bytes to the stream "
                                f"fd {fd} took none")
            if done >= len(m):
                return done
            rest = m[done:done + MAX_IO]
            try:
                took = self.blocking_io(fd, POLLOUT, lambda: write_chunk(rest), None).ret
            except OSError:
                return done
            done += took

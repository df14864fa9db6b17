"""TRUSTED side: the transport every routed call goes through (the enclave's syscall stubs).

``Transport.call`` stages a request in untrusted memory (each thread has its own staging
areas, as the SGX SDK's untrusted stack for ``sgx_ocalloc``), runs it on the configured path
(direct, ocall or rpc; see trusted/_native/enclave_ocalls.c) and reads the reply back as
hostile input: a length above what was asked, an errno that is not one, a reply that does not
add up, raise :class:`eleos_shim.errors.IagoError` instead of reaching the app.  The host may
rewrite the staged request at any time, so the enclave never reads it back: buffer addresses
and sizes come from its own record of the staging area, and the reply is read once, in C,
into enclave memory (``_Staging.t``) before anything is checked or copied out.

The calls an app makes per request have narrower crossings, each checking its reply in C:
``data_out``/``data_in``/``data_into`` (write, read, send, recv, recv_into), ``poll`` and
``epoll_wait`` (the reply's records checked and built in enclave memory), and ``fused``, which
gives the LibOS an ``os.write``/``os.read``/``send``/``recv`` whose common case is the
crossing and a few Python operations in the app's own frame.

The bridge is how the loader hands the host over without this half importing it: integer
addresses of the host's dispatch and allocator, the modeled CPU's charge functions and the
RPC ring.
"""
from __future__ import annotations

import itertools
import struct
import threading
from dataclasses import dataclass
from typing import NamedTuple

from eleos_shim import abi
from eleos_shim.errors import IagoError
from trusted._native._enclave import ffi, lib

# Staging buffers start at 64 KiB and grow to what a call needs; one call moves at most this
# much (a larger read is a short read, which POSIX allows; writes are split by the caller).
MAX_TRANSFER = 64 << 20
_INITIAL_CAPACITY = 64 << 10

# Ops whose result is a byte count the host wrote into buffer 1.
_READ_LIKE = frozenset({abi.OP_READ, abi.OP_PREAD, abi.OP_GETDENTS})
# Ops whose result is a byte count taken from buffer 1.
_WRITE_LIKE = frozenset({abi.OP_WRITE, abi.OP_PWRITE, abi.OP_SENDTO, abi.OP_SENDMSG})
_CHECKED = _READ_LIKE | _WRITE_LIKE | {abi.OP_RECVFROM, abi.OP_RECVMSG, abi.OP_SENDFILE}
_RPC, _OCALL = abi.PATH_RPC, abi.PATH_OCALL
# The lowest -errno: the C data path returns a value below it when the host's reply lies
# (ENCLAVE_LIE), or one lower still when the request did not fit what it was given (a bug).
_LOWEST_ERRNO = -abi.MAX_ERRNO
_ENCLAVE_BUG = -(1 << 62) - 1
# enclave_write1/enclave_send1's answer when this thread has no area bound for the transport.
_ENCLAVE_UNBOUND = _ENCLAVE_BUG - 1
# A wait's answer after its first step (enclave_ocalls.c: rpc_wait): cross again for the
# second, after Python has run the handler of a signal that came meanwhile.
_WAIT_AGAIN = _ENCLAVE_BUG - 2
_OWNERS = itertools.count(1)        # each transport's number, for the areas C holds per thread
# What the C waits leave in enclave memory per ready fd: (fd, events), the tuples
# select.epoll.poll and select.poll.poll return; epoll needs 4 more bytes per maxevents.
_WAIT_RECORD = struct.Struct("=iI")
_EPOLL_EVENT_SIZE, _POLLFD_SIZE = 12, 8
_INITIAL_RECORDS = 16 << 10
# Up to this size a buffer that is not bytes is copied (bytes(), a slice) rather than pinned
# for C with ffi.from_buffer, which alone costs ~0.6 us.
_VIEW_COPY = 64 << 10
# recvfrom's flag that lets the result (a datagram's length) exceed the bytes written.
_MSG_TRUNC = 0x20
_INT_MAX = (1 << 31) - 1
# enclave_submit's answer when a request does not fit its staging (a bug, never the host).
_MISUSE = -2
# Ops that return values in the arguments.
_ARGS_BACK = frozenset({abi.OP_SENDFILE, abi.OP_IOCTL_INT, abi.OP_GETADDRINFO,
                        abi.OP_RECVMSG})


@dataclass(frozen=True)
class Bridge:
    """Addresses the loader hands to the enclave (edger8r's OCALL table, in effect)."""
    dispatch: int
    alloc: int
    free: int
    charge: int
    pollute: int
    rpc_submit: int = 0
    rpc_ring: int = 0


class Reply(NamedTuple):
    ret: int            # >= 0 result, or -errno
    out: bytes          # what the host wrote into buffer 1 (b"" when copied ``into``)
    out2: bytes         # what the host wrote into buffer 2
    args: tuple         # the six arguments as the host left them (SENDFILE offset: args[4])


class _Staging:
    """One staging area: a request and two buffers in untrusted memory (the host may rewrite
    any of it at any time), and the enclave's own record of them, ``t`` (a ``struct
    enclave_stage`` in enclave memory, enclave_ocalls.cdef): where the buffers are and how
    large, the request as the enclave made it and the reply as it read it back, once.  Every
    address and length used to copy in or out comes from here, never from the request."""
    __slots__ = ("t", "mine", "req", "buf", "cap", "buf2", "cap2", "chars", "chars2",
                 "bytes1", "recs", "recs_p", "recs_view", "rcap")

    def __init__(self, alloc, path: int, owner: int):
        self.req = alloc(ffi.sizeof("struct eleos_req"))
        self.buf = alloc(_INITIAL_CAPACITY)
        self.buf2 = alloc(4096)
        if self.req == ffi.NULL or self.buf == ffi.NULL or self.buf2 == ffi.NULL:
            raise MemoryError("untrusted staging memory could not be allocated")
        self.cap, self.cap2 = _INITIAL_CAPACITY, 4096
        t = self.t = ffi.new("struct enclave_stage *")
        t.host_req = int(ffi.cast("uintptr_t", self.req))
        t.buf, t.cap = int(ffi.cast("uintptr_t", self.buf)), self.cap
        t.buf2, t.cap2 = int(ffi.cast("uintptr_t", self.buf2)), self.cap2
        t.path, t.owner = path, owner
        self.mine = t.mine                            # the reply, as read once
        self.chars = ffi.cast("char *", self.buf)     # buffer 1, for ffi.unpack
        self.chars2 = ffi.cast("char *", self.buf2)
        self.bytes1 = ffi.buffer(self.chars, self.cap)  # buffer 1: a slice is a bytes copy
        self.set_records(_INITIAL_RECORDS)

    def set_records(self, size: int) -> None:
        """Where a wait's checked records go (enclave memory: a bytearray, pinned by the
        pointer C writes through, so it can never move under it)."""
        recs = bytearray(size)
        self.recs_p = ffi.from_buffer(recs)
        self.recs_view = memoryview(recs)
        # Recorded bigger-buffer-first, as _grow does: a signal handler's call in between
        # never sees a size larger than the buffer it goes with.
        self.t.recs = int(ffi.cast("uintptr_t", self.recs_p))
        self.t.rcap = self.rcap = size
        self.recs = recs


def _records(st: _Staging, ret: int) -> list:
    """The (fd, events) records a checked C wait left in ``st`` (enclave memory)."""
    if ret > 0:
        return list(_WAIT_RECORD.iter_unpack(st.recs_view[:ret * 8]))
    if ret < _LOWEST_ERRNO:
        raise Transport._lie(st.t, ret)
    return []


class Transport:
    """Runs ABI requests on one path: ``direct``, ``ocall`` or ``rpc``.

    Each thread has a small stack of staging areas (``_tls.free``).  A call that reads its
    reply out after the crossing (``call``, ``data_in``) takes one for itself and gives it
    back when it has read everything: a Python signal handler runs on the main thread at a
    bytecode boundary, possibly between the crossing and the reading of the reply, and its
    own routed calls then get another area instead of overwriting this one.  ``data_out``
    uses the top one without taking it, since nothing of it is read after its one crossing."""

    def __init__(self, path: str, bridge: Bridge, rpc_spin: int = 20000, rpc_wait: str = "spin"):
        if path not in abi.PATH_NAMES[:3]:
            raise ValueError(f"unknown syscall path {path!r}")
        self.path = path
        self._path_code = abi.PATH_NAMES.index(path)
        # What ``call(..., wait=True)`` takes (a host program's start): it always exits, never
        # ties up a worker.  The waits (poll, epoll_wait) choose their path in C by ``rpc_wait``
        # (ELEOS_RPC_WAIT, enclave_ocalls.c: rpc_wait).
        self._wait_code = _OCALL if self._path_code == _RPC else self._path_code
        self.rpc_wait = rpc_wait
        if rpc_wait not in ("spin", "ocall"):
            raise ValueError(f"unknown rpc_wait {rpc_wait!r}")
        lib.enclave_rpc_wait_mode(rpc_wait == "spin")
        self._owner = next(_OWNERS)
        self._alloc = ffi.cast("void *(*)(uint64_t)", bridge.alloc)
        self._free = ffi.cast("void (*)(void *)", bridge.free)
        lib.enclave_bind(bridge.dispatch, bridge.charge, bridge.pollute)
        lib.enclave_bind_rpc(bridge.rpc_submit, bridge.rpc_ring, rpc_spin)
        self._tls = threading.local()
        # Every staging area made, kept alive for the process (the host memory they name is
        # never freed under a call).  No lock: a signal handler may make one while this
        # thread is inside _new_staging, and list.append is atomic.
        self._all_staging: list[_Staging] = []

    # -- staging -----------------------------------------------------------------------------
    def _free_list(self) -> list:
        free = getattr(self._tls, "free", None)
        if free is None:
            free = self._tls.free = []
        return free

    def _new_staging(self) -> _Staging:
        st = _Staging(self._alloc, self._path_code, self._owner)
        self._all_staging.append(st)
        return st

    def _top_staging(self) -> _Staging:
        """This thread's free staging area on top of its stack, made if there is none (the
        first call, or a signal handler's while every area is taken), left on the stack."""
        free = self._free_list()
        if not free:
            free.append(self._new_staging())
        return free[-1]

    def _bind_out(self, n: int) -> _Staging:
        """This thread's area for the fused writes and sends (made on first use, at least
        ``n`` bytes), bound in C (enclave_bind_out) for this transport.  It is never on the
        free stack: the calls that read their reply after the crossing never get it."""
        tls = self._tls
        st = getattr(tls, "out", None)
        if st is None or n > st.cap:
            # Unbound while it is made or grown: a signal handler's write in between binds an
            # area of its own (and is done before this goes on), never one half grown.
            lib.enclave_bind_out(ffi.NULL)
            tls.out = None
            if st is None:
                st = self._new_staging()
            if n > st.cap:
                self._grow(st, 1, n)
            tls.out = st
        lib.enclave_bind_out(st.t)
        return st

    def _grow(self, st: _Staging, which: int, need: int) -> None:
        cap = st.cap if which == 1 else st.cap2
        new = max(need, min(cap * 2, MAX_TRANSFER))
        p = self._alloc(new)
        if p == ffi.NULL:
            raise MemoryError(f"untrusted staging buffer of {new} bytes could not be allocated")
        parked = self._park(st)
        # The new (larger) buffer is recorded before its size and the old one is freed last:
        # a signal handler's call that runs in between on this area never sees a size larger
        # than the buffer it goes with.
        addr = int(ffi.cast("uintptr_t", p))
        if which == 1:
            old, st.buf = st.buf, p
            st.t.buf, st.chars = addr, ffi.cast("char *", p)
            st.bytes1 = ffi.buffer(st.chars, new)
            st.t.cap = st.cap = new
        else:
            old, st.buf2 = st.buf2, p
            st.t.buf2, st.chars2 = addr, ffi.cast("char *", p)
            st.t.cap2 = st.cap2 = new
        self._unpark(st, parked)
        self._free(old)

    def _park(self, st: _Staging) -> bool:
        """Take ``st`` off this thread's free stack while :meth:`_grow` changes its record
        (``data_out`` grows the area on top without taking it): a signal handler's call in
        between would take it, and growing it too would leave this growth's size recorded
        for the handler's smaller buffer.  True if it was there."""
        try:
            self._tls.free.remove(st)
        except (AttributeError, ValueError):
            return False
        return True

    def _unpark(self, st: _Staging, parked: bool) -> None:
        if parked:
            self._tls.free.append(st)

    @staticmethod
    def _refused(st: _Staging, taken: int, op: int) -> Exception:
        why = ffi.string(st.t.why).decode(errors="replace")
        if taken == _MISUSE:
            return RuntimeError(f"enclave staging: {why}")
        return IagoError(f"RPC slot for {abi.OP_NAMES.get(op, op).lower()} came back "
                         f"corrupted: {why}")

    # -- the call ----------------------------------------------------------------------------
    def call(self, op: int, a0: int = 0, a1: int = 0, a2: int = 0, a3: int = 0, a4: int = 0,
             a5: int = 0, *, inbuf=None, outcap: int = 0, in2=None, out2cap: int = 0,
             wait: bool = False, into=None) -> Reply:
        """Run ``op`` with these arguments.  ``inbuf``/``in2`` are copied into untrusted
        memory; ``outcap``/``out2cap`` are the capacities offered for the host's output.
        ``wait=True`` marks a call that may block for long: it always exits (OCALL), so that it
        never ties up an RPC worker.  ``into``: a writable buffer that receives buffer 1's
        output directly (then ``Reply.out`` is empty)."""
        try:
            free = self._tls.free
        except AttributeError:
            free = self._free_list()
        st = free.pop() if free else self._new_staging()
        try:
            n_in = len(inbuf) if inbuf is not None else 0
            len1 = n_in if n_in > outcap else outcap
            if len1 > MAX_TRANSFER:
                len1 = MAX_TRANSFER
                n_in = min(n_in, len1)
            if len1 > st.cap:
                self._grow(st, 1, len1)
            if not n_in:
                inbuf = ffi.NULL
            elif type(inbuf) is not bytes:
                inbuf = ffi.from_buffer(inbuf)
            path = self._wait_code if wait else self._path_code
            if in2 is None and not out2cap and not (a3 or a4 or a5):
                len2 = 0
                taken = lib.enclave_submit1(path, st.t, op, a0, a1, a2, inbuf, n_in, len1)
            else:
                n_in2 = len(in2) if in2 is not None else 0
                len2 = n_in2 if n_in2 > out2cap else out2cap
                if len2 > st.cap2:
                    self._grow(st, 2, len2)
                if not n_in2:
                    in2 = ffi.NULL
                elif type(in2) is not bytes:
                    in2 = ffi.from_buffer(in2)
                taken = lib.enclave_submit(path, st.t, op, a0, a1, a2, a3, a4, a5,
                                           inbuf, n_in, len1, in2, n_in2, len2)
            if taken < 0:
                raise self._refused(st, taken, op)
            # The reply as the enclave read it back, once (never the untrusted request).
            mine = st.mine
            ret, out_len, out2_len = mine.ret, mine.out_len, mine.out2_len
            # Only a reply that carries data, an error, or a count that could be out of bounds
            # needs the checks (a write that took at most what it was given cannot lie).
            if ret < 0 or out_len or out2_len or (
                    ret > 0 and (ret > n_in if op in _WRITE_LIKE else op in _CHECKED)):
                self._check(op, ret, out_len, out2_len, len1, len2, n_in, a1, a2, a3)
            # Copied out of the enclave's own buffer addresses, by lengths checked above.
            out = b""
            if out_len:
                if into is not None:
                    dst = ffi.from_buffer(into, require_writable=True)
                    if out_len > len(dst):      # cffi's memmove does not check sizes
                        raise ValueError(f"a reply of {out_len} bytes does not fit the "
                                         f"{len(dst)}-byte buffer it was asked into")
                    ffi.memmove(dst, st.chars, out_len)
                else:
                    out = ffi.unpack(st.chars, out_len)
            out2 = ffi.unpack(st.chars2, out2_len) if out2_len else b""
            if op in _ARGS_BACK:
                args = mine.args
                return Reply(ret, out, out2, (args[0], args[1], args[2], args[3], args[4],
                                              args[5]))
            return Reply(ret, out, out2, (a0, a1, a2, a3, a4, a5))
        finally:
            free.append(st)

    # -- the data path ---------------------------------------------------------------------------
    def data_out(self, op: int, fd: int, data, flags: int = 0) -> int:
        """OP_WRITE or OP_SENDTO (no address) of ``data`` in one C crossing that also checks
        the reply: the byte count taken (at most MAX_TRANSFER), or -errno.  The same request,
        path and stats as ``call(op, fd, flags, inbuf=data).ret``, without its reply tuple:
        a server makes one of these per answer."""
        try:
            st = self._tls.free[-1]
        except (AttributeError, IndexError):
            st = self._top_staging()
        n = len(data)
        if n > st.cap:          # (a staging buffer is never larger than MAX_TRANSFER)
            if n > MAX_TRANSFER:
                data, n = memoryview(data)[:MAX_TRANSFER], MAX_TRANSFER
            if n > st.cap:
                self._grow(st, 1, n)
        if type(data) is not bytes:
            data = bytes(data) if n <= _VIEW_COPY else ffi.from_buffer(data)
        ret = lib.enclave_out(st.t, op, fd, flags, data, n)
        if ret < _LOWEST_ERRNO:
            raise self._lie(st.t, ret)
        return ret

    def data_in(self, op: int, fd: int, n: int) -> tuple[int, bytes]:
        """OP_READ or OP_RECVFROM (no flags, no address) of up to ``n`` bytes in one checked
        C crossing: (byte count or -errno, the bytes).  As ``call(op, fd, n, 0, outcap=n)``,
        without its reply tuple."""
        try:
            free = self._tls.free
        except AttributeError:
            free = self._free_list()
        st = free.pop() if free else self._new_staging()
        try:
            if n > st.cap:
                if n > MAX_TRANSFER:
                    n = MAX_TRANSFER
                if n > st.cap:
                    self._grow(st, 1, n)
            ret = lib.enclave_in(st.t, op, fd, n)
            if ret > 0:     # checked in C: ret <= n <= the buffer's size
                return ret, st.bytes1[:ret]
            if ret < _LOWEST_ERRNO:
                raise self._lie(st.t, ret)
            return ret, b""
        finally:
            free.append(st)

    def data_into(self, op: int, fd: int, n: int, dst) -> int:
        """OP_READ or OP_RECVFROM (no flags) of up to ``n`` bytes into the writable buffer
        ``dst`` (at least ``n`` bytes), in one checked C crossing: the byte count, or -errno.
        As ``call(op, fd, n, 0, outcap=n, into=dst).ret``, without its reply."""
        if n > _VIEW_COPY:
            # Large: C copies buffer 1 into dst itself (one copy; pinning dst costs ~0.6 us).
            try:
                st = self._tls.free[-1]
            except (AttributeError, IndexError):
                st = self._top_staging()
            if n > MAX_TRANSFER:
                n = MAX_TRANSFER
            if n > st.cap:
                self._grow(st, 1, n)
            ret = lib.enclave_in_into(st.t, op, fd, n,
                                      ffi.from_buffer(dst, require_writable=True), len(dst))
            if ret < _LOWEST_ERRNO:
                raise self._lie(st.t, ret)
            return ret
        # Small: copied out of buffer 1 after the crossing, so the area is taken for the call.
        try:
            free = self._tls.free
        except AttributeError:
            free = self._free_list()
        st = free.pop() if free else self._new_staging()
        try:
            if n > st.cap:
                self._grow(st, 1, n)
            ret = lib.enclave_in(st.t, op, fd, n)
            if ret > 0:     # checked in C: ret <= n <= len(dst)
                dst[:ret] = st.bytes1[:ret]
            elif ret < _LOWEST_ERRNO:
                raise self._lie(st.t, ret)
            return ret
        finally:
            free.append(st)

    # -- the data path fused into the app's own call ------------------------------------------
    def fused(self, kind: str, full, after):
        """The app's ``os.write``/``os.read``/``socket.send``/``socket.recv``/``recv_into``
        (``kind`` "write", "read", "send", "recv", "recv_into") with the data path's common
        case done in its own frame: the C crossing that checks the reply (as data_out /
        data_in), and nothing else.  Writes and sends cross with this thread's area held in
        C (enclave_bind_out), reads take one from the stack as data_in does.
        ``full(*args)`` is the LibOS's complete version, called for anything else (an
        argument that is not a plain bytes/int, a size over the staging buffer, no staging
        yet); ``after(*args, ret)`` finishes a call whose one attempt came back with ``ret``
        (an error such as EAGAIN, or a short write).  What the app gets is what ``full``
        would have given it.  Under ELEOS_PROFILE (data_out/data_in wrapped on this object)
        the app's calls go through ``full``, so that every crossing passes the probe."""
        if "data_out" in self.__dict__ or "data_in" in self.__dict__:
            return full
        tls, lie, low = self._tls, self._lie, _LOWEST_ERRNO

        unbound, owner, bind = _ENCLAVE_UNBOUND, self._owner, self._bind_out
        if kind == "write":
            out = lib.enclave_write1

            # The area is the thread's own, held in C (enclave_bind_out): the first call on a
            # thread, or after another transport's, binds it and crosses again.
            def write(fd, data, /):
                if type(data) is bytes:
                    n = len(data)
                    ret = out(owner, fd, data, n)
                    if ret == n:
                        return ret
                    if ret == unbound:
                        if n > MAX_TRANSFER:
                            return full(fd, data)
                        bind(n)
                        ret = out(owner, fd, data, n)
                        if ret == n:
                            return ret
                    if ret < low:
                        raise lie(tls.out.t, ret)
                    return after(fd, data, ret)
                return full(fd, data)
            fn = write
        elif kind == "send":
            out = lib.enclave_send1

            def send(sock, data, flags=0):
                if type(data) is bytes and type(flags) is int:
                    n = len(data)
                    ret = out(owner, sock._fd, data, n, flags)
                    if ret == n:
                        return ret
                    if ret == unbound:
                        if n > MAX_TRANSFER:
                            return full(sock, data, flags)
                        bind(n)
                        ret = out(owner, sock._fd, data, n, flags)
                        if ret == n:
                            return ret
                    if ret < low:
                        raise lie(tls.out.t, ret)
                    return after(sock, data, flags, ret)
                return full(sock, data, flags)
            fn = send
        elif kind in ("read", "recv"):
            inn = lib.enclave_read if kind == "read" else lib.enclave_recv

            # The staging area is taken for the call: its bytes are read after the crossing.
            def read(fd, n, /):
                if type(n) is int:
                    try:
                        free = tls.free
                    except AttributeError:
                        return full(fd, n)
                    if free and 0 <= n <= free[-1].cap:
                        st = free.pop()
                        try:
                            ret = inn(st.t, fd, n)
                            if ret > 0:
                                return st.bytes1[:ret]
                            if ret == 0:
                                return b""
                            if ret < low:
                                raise lie(st.t, ret)
                        finally:
                            free.append(st)
                        return after(fd, n, ret)
                return full(fd, n)

            def recv(sock, bufsize, flags=0):
                if type(bufsize) is int and not flags:
                    try:
                        free = tls.free
                    except AttributeError:
                        return full(sock, bufsize, flags)
                    if free and 0 <= bufsize <= free[-1].cap:
                        st = free.pop()
                        try:
                            ret = inn(st.t, sock._fd, bufsize)
                            if ret > 0:
                                return st.bytes1[:ret]
                            if ret == 0:
                                return b""
                            if ret < low:
                                raise lie(st.t, ret)
                        finally:
                            free.append(st)
                        return after(sock, bufsize, flags, ret)
                return full(sock, bufsize, flags)
            fn = read if kind == "read" else recv
        elif kind == "recv_into":
            inn = lib.enclave_recv

            # Into a bytearray (what servers hand it): copied by slice, no buffer pinned.
            def recv_into(sock, buffer, nbytes=0, flags=0):
                if type(buffer) is bytearray and type(nbytes) is int and not flags:
                    size = len(buffer)
                    n = nbytes or size
                    try:
                        free = tls.free
                    except AttributeError:
                        return full(sock, buffer, nbytes, flags)
                    if free and 0 <= nbytes <= size and n <= free[-1].cap:
                        st = free.pop()
                        try:
                            ret = inn(st.t, sock._fd, n)
                            if ret > 0:
                                buffer[:ret] = st.bytes1[:ret]
                                return ret
                            if ret == 0:
                                return 0
                            if ret < low:
                                raise lie(st.t, ret)
                        finally:
                            free.append(st)
                        return after(sock, n, flags, ret, buffer)
                return full(sock, buffer, nbytes, flags)
            fn = recv_into
        else:
            raise ValueError(f"no fused data path for {kind!r}")
        fn.__name__, fn.__qualname__, fn.__doc__ = full.__name__, full.__qualname__, full.__doc__
        return fn

    # -- waits: the reply checked in C, its records built there ----------------------------
    def epoll_wait(self, epfd: int, maxevents: int, ms: int) -> tuple[int, list]:
        """OP_EPOLL_WAIT in one checked C crossing (enclave_epoll_wait): (count, the
        [(fd, events)] records) or (-errno, []).  A wait (``ms`` not 0) on the rpc path is
        exit-less with ``rpc_wait`` spin (a ring check, then the wait in place: two
        crossings), an OCALL with ocall (enclave_ocalls.c: rpc_wait).  The staging area is
        taken for the call: its records are read after the crossing (see the class
        docstring)."""
        try:
            free = self._tls.free
        except AttributeError:
            free = self._free_list()
        st = free.pop() if free else self._new_staging()
        try:
            need = maxevents * _EPOLL_EVENT_SIZE
            if need > st.cap:
                self._grow(st, 1, need)
            if need > st.rcap:
                st.set_records(need)
            try:
                ret = lib.enclave_epoll_wait(st.t, epfd, maxevents, ms)
                if ret == _WAIT_AGAIN:
                    ret = lib.enclave_epoll_wait(st.t, epfd, maxevents, ms)
            except BaseException:       # a signal handler's, between the two crossings
                st.t.wait_next = 0
                raise
            if ret == 1:
                return 1, [_WAIT_RECORD.unpack_from(st.recs)]
            return ret, _records(st, ret)
        finally:
            free.append(st)

    def poll(self, fds, events, ms: int) -> tuple[int, list]:
        """OP_POLL of the pollfd table (``fds``, ``events``: parallel lists, events as
        signed shorts) in one checked C crossing (enclave_poll): (count, the [(fd, revents)]
        of the ready entries, in table order) or (-errno, []).  A wait (``ms`` not 0) takes
        the path ``epoll_wait``'s does."""
        try:
            free = self._tls.free
        except AttributeError:
            free = self._free_list()
        st = free.pop() if free else self._new_staging()
        try:
            nfds = len(fds)
            need = nfds * _POLLFD_SIZE
            if need > st.cap:
                self._grow(st, 1, need)
            if need > st.rcap:
                st.set_records(need)
            try:
                ret = lib.enclave_poll(st.t, fds, events, nfds, ms)
                if ret == _WAIT_AGAIN:
                    ret = lib.enclave_poll(st.t, fds, events, nfds, ms)
            except BaseException:       # a signal handler's, between the two crossings
                st.t.wait_next = 0
                raise
            if ret == 1:
                return 1, [_WAIT_RECORD.unpack_from(st.recs)]
            return ret, _records(st, ret)
        finally:
            free.append(st)

    # The same checks on a reply that reached the enclave as a Reply (the tests' lying host
    # answers through ``call``): what ``epoll_wait``/``poll`` return for it (``ms``: the
    # wait's timeout as asked, -1 for none).
    @staticmethod
    def epoll_reply(r: Reply, maxevents: int, ms: int = 0) -> tuple[int, list]:
        recs = ffi.new("char[]", maxevents * _EPOLL_EVENT_SIZE)
        why = ffi.new("char[]", 192)
        ret = lib.enclave_epoll_events(why, r.ret, len(r.out), len(r.out2), r.out, maxevents,
                                       ms, recs, maxevents * _EPOLL_EVENT_SIZE)
        return Transport._reply_records(ret, why, recs)

    @staticmethod
    def poll_reply(r: Reply, fds, events, ms: int = 0) -> tuple[int, list]:
        n = len(fds)
        recs = ffi.new("char[]", max(1, n * _POLLFD_SIZE))
        why = ffi.new("char[]", 192)
        ret = lib.enclave_poll_events(why, r.ret, len(r.out), len(r.out2), r.out, fds, events,
                                      n, ms, recs, n * _POLLFD_SIZE)
        return Transport._reply_records(ret, why, recs)

    @staticmethod
    def _reply_records(ret, why, recs) -> tuple[int, list]:
        if ret < _LOWEST_ERRNO:
            msg = ffi.string(why).decode(errors="replace")
            raise RuntimeError(msg) if ret == _ENCLAVE_BUG else IagoError(msg)
        if ret <= 0:
            return ret, []
        return ret, list(_WAIT_RECORD.iter_unpack(ffi.buffer(recs, ret * 8)))

    @staticmethod
    def _lie(t, ret) -> Exception:
        """The exception for a C data path's refusal (``st.why`` says why)."""
        if ret == _ENCLAVE_UNBOUND:
            return RuntimeError("enclave staging: no area bound for this thread")
        msg = ffi.string(t.why).decode(errors="replace")
        return RuntimeError(f"enclave staging: {msg}") if ret == _ENCLAVE_BUG else IagoError(msg)

    @staticmethod
    def _check(op, ret, out_len, out2_len, len1, len2, n_in, a1, a2, a3) -> None:
        name = abi.OP_NAMES.get(op, str(op))
        if ret < -4095:
            raise IagoError(f"host returned {ret} for {name}: not a result and not an errno")
        if out_len > len1 or out2_len > len2:
            raise IagoError(f"host claims {out_len}/{out2_len} bytes for {name} "
                            f"into buffers of {len1}/{len2}")
        if ret < 0:
            if out_len:
                raise IagoError(f"host returned an error for {name} with {out_len} bytes of data")
            return
        if op in _READ_LIKE:
            asked = min(a1, len1)
            if ret > asked or ret != out_len:
                raise IagoError(f"host returned {ret} for {name} of {asked} bytes "
                                f"({out_len} written)")
        elif op == abi.OP_RECVFROM or op == abi.OP_RECVMSG:
            # Only MSG_TRUNC (a2: flags) lets the result exceed the bytes written, and never
            # past an int (the kernel's recvmsg returns one).
            if out_len > min(a1, len1) or ret < out_len or (ret > out_len and (
                    not a2 & _MSG_TRUNC or ret > _INT_MAX)):
                raise IagoError(f"host returned {ret} for recvfrom of {a1} bytes ({out_len} written)")
        elif op in _WRITE_LIKE:
            if ret > n_in:
                raise IagoError(f"host says {name} took {ret} bytes of {n_in}")
        elif op == abi.OP_SENDFILE:
            if ret > a3:
                raise IagoError(f"host says sendfile moved {ret} bytes of {a3}")

    def bench(self, n: int, op: int = abi.OP_NOP, a0: int = 0, path: str | None = None,
              inbuf: bytes | None = None) -> float:
        """Seconds per call for ``n`` back-to-back calls of one staged request, timed in C
        (no Python in the loop): the floor of a path, for calibration and benchmarks."""
        st = self._top_staging()
        code = self._path_code if path is None else abi.PATH_NAMES.index(path)
        n_in = len(inbuf) if inbuf else 0
        if n_in > st.cap:
            self._grow(st, 1, n_in)
        lib.enclave_submit(code, st.t, op, a0, 0, 0, 0, 0, 0,
                           inbuf if n_in else ffi.NULL, n_in, n_in, ffi.NULL, 0, 0)
        return lib.enclave_bench(code, st.t, n) / 1e9 / n

    # -- stats -------------------------------------------------------------------------------
    def counts(self) -> dict[str, dict[str, int]]:
        """Per OCALL name: count and how many went direct / ocall / rpc / fallback."""
        n = abi_count = len(abi.OPS)
        raw = ffi.new("uint64_t[]", n * 4)
        lib.enclave_counts(raw, abi_count * 4)
        out = {}
        for op, name in abi.OP_NAMES.items():
            row = [raw[op * 4 + p] for p in range(4)]
            if any(row):
                entry = dict(zip(abi.PATH_NAMES, row))
                entry["count"] = sum(row)
                out[name.lower()] = entry
        return out

    @staticmethod
    def waits_blocked() -> int:
        """Waits on the rpc path that found nothing ready through the ring and blocked in
        place of Eleos's spin (ELEOS_RPC_WAIT=spin)."""
        return lib.enclave_waits_blocked()

    @staticmethod
    def reset_counts() -> None:
        lib.enclave_reset_counts()

"""TRUSTED side: the transport every routed call goes through (the enclave's syscall stubs).

``Transport.call`` stages a request in untrusted memory (each thread has its own staging
area, as the SGX SDK's untrusted stack for ``sgx_ocalloc``), runs it on the configured path
(direct, ocall or rpc; see trusted/_native/enclave_ocalls.c) and reads the reply back as
hostile input: a length above what was asked, an errno that is not one, a reply that does not
add up, raise :class:`eleos_shim.errors.IagoError` instead of reaching the app.

The bridge is how the loader hands the host over without this half importing it: integer
addresses of the host's dispatch and allocator, the modeled CPU's charge functions and the
RPC ring.
"""
from __future__ import annotations

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
# The lowest -errno: the C data path returns a value below it when the host's reply lies.
_LOWEST_ERRNO = -abi.MAX_ERRNO
# recvfrom's flag that lets the result (a datagram's length) exceed the bytes written.
_MSG_TRUNC = 0x20
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
    """One thread's request and buffers in untrusted memory."""
    __slots__ = ("req", "buf", "cap", "buf2", "cap2", "addr", "addr2", "chars")

    def __init__(self, alloc):
        self.req = ffi.cast("struct eleos_req *", alloc(ffi.sizeof("struct eleos_req")))
        self.buf = alloc(_INITIAL_CAPACITY)
        self.cap = _INITIAL_CAPACITY
        self.buf2 = alloc(4096)
        self.cap2 = 4096
        if self.req == ffi.NULL or self.buf == ffi.NULL or self.buf2 == ffi.NULL:
            raise MemoryError("untrusted staging memory could not be allocated")
        self.addr = int(ffi.cast("uintptr_t", self.buf))
        self.addr2 = int(ffi.cast("uintptr_t", self.buf2))
        self.chars = ffi.cast("char *", self.buf)     # buffer 1, for ffi.unpack
        self.req.buf, self.req.buf2 = self.addr, self.addr2


class Transport:
    """Runs ABI requests on one path: ``direct``, ``ocall`` or ``rpc``."""

    def __init__(self, path: str, bridge: Bridge, rpc_spin: int = 20000):
        if path not in abi.PATH_NAMES[:3]:
            raise ValueError(f"unknown syscall path {path!r}")
        self.path = path
        self._path_code = abi.PATH_NAMES.index(path)
        self._alloc = ffi.cast("void *(*)(uint64_t)", bridge.alloc)
        self._free = ffi.cast("void (*)(void *)", bridge.free)
        lib.enclave_bind(bridge.dispatch, bridge.charge, bridge.pollute)
        lib.enclave_bind_rpc(bridge.rpc_submit, bridge.rpc_ring, rpc_spin)
        self._tls = threading.local()
        self._all_staging: list[_Staging] = []
        self._lock = threading.Lock()

    # -- staging -----------------------------------------------------------------------------
    def _staging(self) -> _Staging:
        st = getattr(self._tls, "st", None)
        if st is None:
            st = _Staging(self._alloc)
            self._tls.st = st
            with self._lock:
                self._all_staging.append(st)
        return st

    def _grow(self, st: _Staging, which: int, need: int) -> None:
        cap = st.cap if which == 1 else st.cap2
        new = max(need, min(cap * 2, MAX_TRANSFER))
        p = self._alloc(new)
        if p == ffi.NULL:
            raise MemoryError(f"untrusted staging buffer of {new} bytes could not be allocated")
        if which == 1:
            self._free(st.buf)
            st.buf, st.cap, st.addr = p, new, int(ffi.cast("uintptr_t", p))
            st.chars = ffi.cast("char *", p)
            st.req.buf = st.addr
        else:
            self._free(st.buf2)
            st.buf2, st.cap2, st.addr2 = p, new, int(ffi.cast("uintptr_t", p))
            st.req.buf2 = st.addr2

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
            st = self._tls.st
        except AttributeError:
            st = self._staging()
        req = st.req
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
        path = self._path_code
        if wait and path == _RPC:
            path = _OCALL
        if in2 is None and not out2cap and not (a3 or a4 or a5):
            len2 = 0
            taken = lib.enclave_submit1(path, req, op, a0, a1, a2, inbuf, n_in, len1)
        else:
            n_in2 = len(in2) if in2 is not None else 0
            len2 = n_in2 if n_in2 > out2cap else out2cap
            if len2 > st.cap2:
                self._grow(st, 2, len2)
            if not n_in2:
                in2 = ffi.NULL
            elif type(in2) is not bytes:
                in2 = ffi.from_buffer(in2)
            taken = lib.enclave_submit(path, req, op, a0, a1, a2, a3, a4, a5,
                                       inbuf, n_in, len1, in2, n_in2, len2)
        if taken < 0:
            why = ffi.string(lib.enclave_rpc_last_error()).decode(errors="replace")
            raise IagoError(f"RPC slot for {abi.OP_NAMES.get(op, op).lower()} came back "
                            f"corrupted: {why}")
        ret, out_len, out2_len = req.ret, req.out_len, req.out2_len
        # Only a reply that carries data, an error, or a count that could be out of bounds
        # needs the checks (a write that took at most what it was given cannot lie).
        if ret < 0 or out_len or out2_len or (
                ret > 0 and (ret > n_in if op in _WRITE_LIKE else op in _CHECKED)):
            self._check(op, ret, out_len, out2_len, len1, len2, n_in, a1, a2, a3)
        out = b""
        if out_len:
            if into is not None:
                ffi.memmove(ffi.from_buffer(into, require_writable=True), st.buf, out_len)
            else:
                out = ffi.unpack(st.chars, out_len)
        out2 = ffi.unpack(ffi.cast("char *", st.buf2), out2_len) if out2_len else b""
        if op in _ARGS_BACK:
            args = req.args
            return Reply(ret, out, out2, (args[0], args[1], args[2], args[3], args[4], args[5]))
        return Reply(ret, out, out2, (a0, a1, a2, a3, a4, a5))

    # -- the data path ---------------------------------------------------------------------------
    def data_out(self, op: int, fd: int, data, flags: int = 0) -> int:
        """OP_WRITE or OP_SENDTO (no address) of ``data`` in one C crossing that also checks
        the reply: the byte count taken (at most MAX_TRANSFER), or -errno.  The same request,
        path and stats as ``call(op, fd, flags, inbuf=data).ret``, without its reply tuple:
        a server makes one of these per answer."""
        try:
            st = self._tls.st
        except AttributeError:
            st = self._staging()
        n = len(data)
        if n > MAX_TRANSFER:
            data, n = memoryview(data)[:MAX_TRANSFER], MAX_TRANSFER
        if n > st.cap:
            self._grow(st, 1, n)
        if type(data) is not bytes:
            data = ffi.from_buffer(data)
        ret = lib.enclave_out(self._path_code, st.req, op, fd, flags, data, n)
        if ret < _LOWEST_ERRNO:
            raise IagoError(ffi.string(lib.enclave_lie()).decode(errors="replace"))
        return ret

    def data_in(self, op: int, fd: int, n: int) -> tuple[int, bytes]:
        """OP_READ or OP_RECVFROM (no flags, no address) of up to ``n`` bytes in one checked
        C crossing: (byte count or -errno, the bytes).  As ``call(op, fd, n, 0, outcap=n)``,
        without its reply tuple."""
        try:
            st = self._tls.st
        except AttributeError:
            st = self._staging()
        if n > MAX_TRANSFER:
            n = MAX_TRANSFER
        if n > st.cap:
            self._grow(st, 1, n)
        ret = lib.enclave_in(self._path_code, st.req, op, fd, n)
        if ret > 0:
            return ret, ffi.unpack(st.chars, ret)
        if ret < _LOWEST_ERRNO:
            raise IagoError(ffi.string(lib.enclave_lie()).decode(errors="replace"))
        return ret, b""

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
            # Only MSG_TRUNC (a2: flags) lets the result exceed the bytes written.
            if out_len > min(a1, len1) or ret < out_len or (ret > out_len and
                                                           not a2 & _MSG_TRUNC):
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
        st = self._staging()
        code = self._path_code if path is None else abi.PATH_NAMES.index(path)
        n_in = len(inbuf) if inbuf else 0
        lib.enclave_submit(code, st.req, op, a0, 0, 0, 0, 0, 0,
                           inbuf if n_in else ffi.NULL, n_in, n_in, ffi.NULL, 0, 0)
        return lib.enclave_bench(code, st.req, n) / 1e9 / n

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
    def reset_counts() -> None:
        lib.enclave_reset_counts()

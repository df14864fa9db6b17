"""Helpers for the LibOS tests: a real transport over the real host handlers (no loader), an
installed LibOS as a context manager, and a transport wrapper that lies (the hostile host)."""
from __future__ import annotations

import contextlib
import os
import struct

from eleos_shim import abi
from eleos_shim.config import Config
from eleos_shim.cpu import ModeledCPU
from trusted.libos import LibOS
from trusted.syscall import Bridge, Reply, Transport
from untrusted.host import Host

_CPU = None


def make_transport(path: str = "ocall") -> Transport:
    """A transport on ``path`` ("direct" or "ocall") with the cost model only counting."""
    global _CPU
    cfg = Config.from_env({}, mode="sgx", cost="account")
    if _CPU is None:
        _CPU = ModeledCPU(cfg)
    host = Host(cfg.replace(syscalls="ocall"))
    a = host.bridge_addresses()
    return Transport(path, Bridge(a["dispatch"], a["alloc"], a["free"], _CPU.charge_fn,
                                  _CPU.pollute_fn))


@contextlib.contextmanager
def installed(transport, heap_factory=None):
    libos = LibOS(transport, heap_factory=heap_factory)
    libos.install()
    try:
        yield libos
    finally:
        libos.uninstall()


class LyingTransport:
    """Wraps a real transport; ``lie(op, fn)`` makes the next reply to ``op`` pass through
    ``fn(reply, args, kwargs) -> Reply`` first (the real call still happens)."""

    # Ops whose honest reply creates fds: when such a reply is replaced by a lie, the real
    # fds are remembered so that the test can close them (see ``close_hidden``).
    _FD_OPS = {abi.OP_OPENAT, abi.OP_SOCKET, abi.OP_ACCEPT4, abi.OP_DUP, abi.OP_EPOLL_CREATE}
    _PAIR_OPS = {abi.OP_PIPE2, abi.OP_SOCKETPAIR}

    def __init__(self, inner):
        self.inner = inner
        self.path = inner.path
        self.rpc_wait = inner.rpc_wait
        self._lies: dict[int, object] = {}
        self.told = 0
        self.hidden_fds: list[int] = []

    def lie(self, op: int, fn) -> None:
        self._lies[op] = fn

    def call(self, op, *args, **kwargs) -> Reply:
        reply = self.inner.call(op, *args, **kwargs)
        fn = self._lies.pop(op, None)
        if fn is None:
            return reply
        self.told += 1
        if reply.ret >= 0 and op in self._FD_OPS:
            self.hidden_fds.append(reply.ret)
        elif reply.ret >= 0 and op in self._PAIR_OPS:
            self.hidden_fds.extend(struct.unpack("=ii", reply.out))
        return fn(reply, args, kwargs)

    # The data path, through ``call`` so that its replies can lie too.
    def data_out(self, op, fd, data, flags=0) -> int:
        return self.call(op, fd, flags, inbuf=data).ret

    def data_in(self, op, fd, n) -> tuple[int, bytes]:
        r = self.call(op, fd, n, 0, outcap=n)
        return r.ret, r.out

    def data_into(self, op, fd, n, dst) -> int:
        return self.call(op, fd, n, 0, outcap=n, into=dst).ret

    # The waits, through ``call`` too; their replies then get the C checks of the real ones.
    def epoll_wait(self, epfd, maxevents, ms):
        r = self.call(abi.OP_EPOLL_WAIT, epfd, maxevents, ms, outcap=maxevents * 12,
                      wait=ms != 0)
        return Transport.epoll_reply(r, maxevents, ms)

    def poll(self, fds, events, ms):
        table = b"".join(struct.pack("=ihh", fd, ev, 0) for fd, ev in zip(fds, events))
        r = self.call(abi.OP_POLL, len(fds), ms, inbuf=table, outcap=len(table), wait=ms != 0)
        return Transport.poll_reply(r, fds, events, ms)

    def close_hidden(self) -> None:
        """Close (directly, after uninstall) the real fds that lies hid from the enclave."""
        for fd in self.hidden_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.hidden_fds.clear()

    def counts(self):
        return self.inner.counts()


@contextlib.contextmanager
def lying_libos(liar_class=LyingTransport):
    """An installed LibOS over a lying transport (``liar_class`` wrapping a real ocall one):
    ``(liar, libos)``; afterwards the fds its lies hid are closed, and every lie set up must
    have been told."""
    t = liar_class(make_transport("ocall"))
    with installed(t) as libos:
        yield t, libos
    t.close_hidden()
    assert t._lies == {}, "a lie was set up but never told"


def epoll_reply(ret, records, maxevents):
    """Transport.epoll_reply on a host answer of ``ret`` and ``(events, data)`` records."""
    raw = b"".join(struct.pack("=IQ", ev, data) for ev, data in records)
    return Transport.epoll_reply(Reply(ret, raw, b"", ()), maxevents)


def poll_reply(ret, table, fds, events, out2=b""):
    """Transport.poll_reply on a host answer of ``ret`` and ``(fd, events, revents)`` rows."""
    raw = b"".join(struct.pack("=ihh", *entry) for entry in table)
    return Transport.poll_reply(Reply(ret, raw, out2, ()), fds, events)

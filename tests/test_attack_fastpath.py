"""A hostile host against the LibOS's fast paths (the checked C waits, the fused data path):
what the host may say in a wait's reply that no kernel could, and the moments in which the
enclave's own record of what it asked for is out of step with what it asked the kernel.

Each lie is told by the lying transport (its reply goes through the same C checker the real
crossing uses), by the real C host, or by the RPC ring's workers; an honest answer must be
what CPython gives."""
from __future__ import annotations

import contextlib
import os
import select
import socket
import struct
import sys
import time

import pytest

from eleos_shim import abi
from eleos_shim.errors import IagoError
from tests.libos_helpers import installed, lying_libos, make_transport, epoll_reply, poll_reply
from tests.racing import racing
from tests.test_transport_hostile import built
from tests.test_transport_waits import pair  # noqa: F401 - a fixture
from trusted.libos._kernel import Kernel
from trusted.syscall import Reply, Transport
from untrusted.host import Host

POLLIN, POLLOUT, POLLNVAL = select.POLLIN, select.POLLOUT, select.POLLNVAL
EPOLLIN, EPOLLOUT = select.EPOLLIN, select.EPOLLOUT


@pytest.fixture
def liar():
    with lying_libos() as pair:
        yield pair


@contextlib.contextmanager
def _libos_on(path):
    if path == "rpc":
        with built("rpc") as t, installed(t) as lo:
            yield lo
    else:
        with installed(make_transport(path)) as lo:
            yield lo


@pytest.fixture(params=["direct", "ocall", "rpc"])
def libos(request):
    with _libos_on(request.param) as lo:
        yield lo






# -- epoll: an event with no events ------------------------------------------------------------

def test_an_epoll_event_that_reports_no_events_is_caught():
    """The kernel reports an fd only when one of its events is ready (ep_send_events skips an
    item whose poll gives nothing): a record with events 0 cannot be.  The app would get
    (fd, 0), and selectors a ready key with no events."""
    assert epoll_reply(1, [(EPOLLIN, 5)], 4) == (1, [(5, EPOLLIN)])
    with pytest.raises(IagoError, match="no events"):
        epoll_reply(1, [(0, 5)], 4)
    with pytest.raises(IagoError, match="no events"):
        epoll_reply(2, [(EPOLLIN, 5), (0, 6)], 4)


def test_an_epoll_event_with_no_events_never_reaches_the_app(liar, pair):
    t, _ = liar
    a, b = pair
    with select.epoll() as ep:
        ep.register(a.fileno(), EPOLLIN)
        t.lie(abi.OP_EPOLL_WAIT, lambda r, args, kw: r._replace(
            ret=1, out=struct.pack("=IQ", 0, a.fileno())))
        with pytest.raises(IagoError, match="no events"):
            ep.poll(0)
        assert ep.poll(0) == []


# -- poll: POLLNVAL is alone -------------------------------------------------------------------

def test_poll_nval_with_other_bits_is_caught():
    """The kernel's do_pollfd says POLLNVAL only for an fd that is not open, and then alone:
    for an open one the mask is filtered by the events asked and ERR/HUP, never NVAL."""
    fds, evs = [5], [POLLIN]
    assert poll_reply(1, [(5, POLLIN, POLLNVAL)], fds, evs) == (1, [(5, POLLNVAL)])
    for bits in (POLLIN, select.POLLHUP, select.POLLERR):
        with pytest.raises(IagoError, match="NVAL"):
            poll_reply(1, [(5, POLLIN, POLLNVAL | bits)], fds, evs)


def test_poll_nval_with_other_bits_never_reaches_the_app(liar, pair):
    t, _ = liar
    a, _b = pair
    p = select.poll()
    p.register(a, POLLIN)
    t.lie(abi.OP_POLL, lambda r, args, kw: r._replace(
        ret=1, out=struct.pack("=ihh", a.fileno(), POLLIN, POLLNVAL | POLLIN)))
    with pytest.raises(IagoError, match="NVAL"):
        p.poll(0)
    assert p.poll(0) == []


def test_an_honest_nval_still_comes_back_as_natively(libos):
    """An fd that is not open: the kernel's own POLLNVAL, alone, as CPython gives it."""
    s = socket.socket()
    fd = s.fileno()
    s.close()
    p = select.poll()
    p.register(fd, POLLIN)
    assert p.poll(0) == [(fd, POLLNVAL)]


# -- epoll: what the enclave records against what the kernel has --------------------------------

@contextlib.contextmanager
def _after_each_epoll_ctl(fn):
    """Run ``fn()`` the moment each EPOLL_CTL the LibOS makes has come back from the host,
    before the LibOS's own code goes on: where another app thread's wait, holding the GIL
    next, would have its reply checked.  (Injected with a trace, deterministically, where a
    thread switch lands by chance.)"""
    code = Kernel.check.__code__

    def trace(frame, event, arg):
        if frame.f_code is not code or frame.f_locals.get("op") != abi.OP_EPOLL_CTL:
            return None

        def on_return(frame, event, arg):
            if event == "return" and arg is not None:
                fn()
            return on_return
        return on_return
    sys.settrace(trace)
    try:
        yield
    finally:
        sys.settrace(None)


def test_a_wait_checked_right_after_a_register_took_effect_accepts_its_event(libos, pair):
    """Another thread's wait may report an fd as soon as the kernel has it registered, which
    can be before the registering thread runs again: the enclave's record of it must already
    be there, or a true event is taken for a lie (IagoError in a correct app)."""
    a, b = pair
    a.send(b"x")
    with select.epoll() as ep:
        seen = []
        with _after_each_epoll_ctl(lambda: seen.append(ep.poll(0))):
            ep.register(b.fileno(), EPOLLIN)
        assert seen == [[(b.fileno(), EPOLLIN)]]
        seen.clear()
        with _after_each_epoll_ctl(lambda: seen.append(ep.poll(0))):
            ep.modify(b.fileno(), EPOLLIN | EPOLLOUT)
        assert seen == [[(b.fileno(), EPOLLIN | EPOLLOUT)]]
        seen.clear()
        with _after_each_epoll_ctl(lambda: seen.append(ep.poll(0))):
            ep.unregister(b.fileno())
        assert seen == [[]]


def test_a_refused_register_leaves_nothing_the_host_may_report(liar, pair):
    """A register the kernel refuses (EEXIST, ENOENT) leaves the record as it was."""
    t, _ = liar
    a, b = pair
    with select.epoll() as ep:
        ep.register(a.fileno(), EPOLLOUT)
        with pytest.raises(FileExistsError):
            ep.register(a.fileno(), EPOLLIN)
        with pytest.raises(FileNotFoundError):
            ep.modify(b.fileno(), EPOLLIN)
        t.lie(abi.OP_EPOLL_WAIT, lambda r, args, kw: r._replace(
            ret=1, out=struct.pack("=IQ", EPOLLIN, a.fileno())))
        with pytest.raises(IagoError, match="registered for"):
            ep.poll(0)
        t.lie(abi.OP_EPOLL_WAIT, lambda r, args, kw: r._replace(
            ret=1, out=struct.pack("=IQ", EPOLLIN, b.fileno())))
        with pytest.raises(IagoError, match="never registered"):
            ep.poll(0)


def test_an_fd_closed_while_registered_is_no_longer_reportable(liar):
    """Closing an fd takes it out of every epoll set (the kernel drops the registration with
    the file): a new socket that gets the same number was never registered, and an event the
    host reports for it is a lie, not one for the socket the app closed."""
    t, _ = liar
    with select.epoll() as ep:
        old = socket.socket()
        fd = old.fileno()
        ep.register(fd, EPOLLIN)
        old.close()                            # no unregister: the kernel forgets it itself
        new = socket.socket()
        try:
            assert new.fileno() == fd          # the lowest free number
            t.lie(abi.OP_EPOLL_WAIT, lambda r, args, kw: r._replace(
                ret=1, out=struct.pack("=IQ", EPOLLIN, fd)))
            with pytest.raises(IagoError, match="never registered"):
                ep.poll(0)
        finally:
            new.close()


# -- epoll: EPOLLONESHOT ------------------------------------------------------------------------

ONESHOT = select.EPOLLONESHOT


def test_a_oneshot_fd_reported_again_before_it_is_rearmed_is_caught(liar, pair):
    """After a oneshot registration's event the kernel disarms it (not even ERR/HUP come)
    until EPOLL_CTL_MOD: a host that reports it again would hand one connection to two of the
    app's threads at once, which EPOLLONESHOT is there to prevent."""
    t, _ = liar
    a, b = pair
    b.send(b"x")
    again = struct.pack("=IQ", EPOLLIN, a.fileno())
    with select.epoll() as ep:
        ep.register(a.fileno(), EPOLLIN | ONESHOT)
        assert ep.poll(0) == [(a.fileno(), EPOLLIN)]
        assert ep.poll(0) == []                            # the kernel disarmed it
        t.lie(abi.OP_EPOLL_WAIT, lambda r, args, kw: r._replace(ret=1, out=again))
        with pytest.raises(IagoError, match="disarmed"):
            ep.poll(0)
        t.lie(abi.OP_EPOLL_WAIT, lambda r, args, kw: r._replace(
            ret=1, out=struct.pack("=IQ", select.EPOLLHUP, a.fileno())))
        with pytest.raises(IagoError, match="disarmed"):
            ep.poll(0)
        ep.modify(a.fileno(), EPOLLIN | ONESHOT)            # rearmed
        assert ep.poll(0) == [(a.fileno(), EPOLLIN)]
        t.lie(abi.OP_EPOLL_WAIT, lambda r, args, kw: r._replace(ret=1, out=again))
        with pytest.raises(IagoError, match="disarmed"):
            ep.poll(0)
        t.lie(abi.OP_EPOLL_WAIT, lambda r, args, kw: r._replace(
            ret=1, out=struct.pack("=IQ", EPOLLIN | ONESHOT, a.fileno())))
        ep.modify(a.fileno(), EPOLLIN | ONESHOT)
        with pytest.raises(IagoError, match="registered for"):  # an input-only flag
            ep.poll(0)


def test_oneshot_events_as_natively(libos, pair):
    a, b = pair
    b.send(b"x")
    with select.epoll() as ep:
        ep.register(a.fileno(), EPOLLIN | ONESHOT)
        ep.register(b.fileno(), EPOLLOUT)
        assert sorted(ep.poll(0)) == sorted([(a.fileno(), EPOLLIN), (b.fileno(), EPOLLOUT)])
        assert ep.poll(0) == [(b.fileno(), EPOLLOUT)]
        ep.modify(a.fileno(), EPOLLIN | ONESHOT)
        assert sorted(ep.poll(0)) == sorted([(a.fileno(), EPOLLIN), (b.fileno(), EPOLLOUT)])
        ep.unregister(a.fileno())
        ep.register(a.fileno(), EPOLLIN | ONESHOT)         # a new registration is armed
        assert sorted(ep.poll(0)) == sorted([(a.fileno(), EPOLLIN), (b.fileno(), EPOLLOUT)])
        ep.modify(a.fileno(), EPOLLIN)                     # no longer oneshot
        for _ in range(3):
            assert sorted(ep.poll(0)) == sorted([(a.fileno(), EPOLLIN),
                                                 (b.fileno(), EPOLLOUT)])
        with select.epoll.fromfd(ep.fileno()) as other:    # one record for the fd
            ep.modify(a.fileno(), EPOLLIN | ONESHOT)
            assert other.poll(0, 1) in ([(a.fileno(), EPOLLIN)], [(b.fileno(), EPOLLOUT)])
            got = ep.poll(0) + other.poll(0)
            assert got.count((a.fileno(), EPOLLIN)) <= 1


def test_a_rearm_between_a_oneshot_event_and_its_check_is_not_lost(libos, pair):
    """Another thread may rearm the fd after the kernel delivered its event and before this
    thread's reply is checked (injected here at the crossing's return): the kernel then has it
    armed, so the next event is true and must not be taken for a lie."""
    a, b = pair
    b.send(b"x")
    code = type(libos.kernel.transport).epoll_wait.__code__
    with select.epoll() as ep:
        ep.register(a.fileno(), EPOLLIN | ONESHOT)
        rearmed = []

        def trace(frame, event, arg):
            if frame.f_code is not code:
                return None

            def on_return(frame, event, arg):
                if event == "return" and not rearmed:
                    rearmed.append(ep.modify(a.fileno(), EPOLLIN | ONESHOT))
                return on_return
            return on_return
        sys.settrace(trace)
        try:
            assert ep.poll(0) == [(a.fileno(), EPOLLIN)]
        finally:
            sys.settrace(None)
        assert rearmed == [None]
        assert ep.poll(0) == [(a.fileno(), EPOLLIN)]       # armed by the rearm: true
        assert ep.poll(0) == []


# -- a host thread racing the records a wait reads ----------------------------------------------

def _raced(racer, call, ok, lie, addr, value, count, seconds=10.0):
    """``call()`` while the host thread ``racer`` keeps storing the byte ``value`` at the
    ``count`` bytes from ``addr`` (in the wait's staging buffer, where the host leaves its
    records): each answer is either ``ok`` or the IagoError matching ``lie``, never another
    value.  The race must have been seen (it is, most of the time the racer has its CPU: the
    stores land between the host's writing of the records and the enclave's reading of
    them), or the test proved nothing; on a busy machine that may take a while."""
    caught = honest = 0
    deadline = time.monotonic() + seconds
    racer.arm(addr, value=value, count=count, stride=1)
    try:
        while caught < 10 and time.monotonic() < deadline:
            try:
                got = call()
            except IagoError as e:
                assert lie in str(e)
                caught += 1
            else:
                assert got == ok
                honest += 1
    finally:
        racer.disarm()
    assert caught, f"the racing host thread never landed in {honest} calls ({seconds} s)"


@contextlib.contextmanager
def _raced_libos(path):
    """A LibOS on ``path`` and a racing host thread on another CPU than the app's thread,
    which the RPC worker shares (made after the pinning): on the ring the worker's reply is
    then read only after a switch back to the app's thread, while the racer runs on."""
    with racing() as racer, _libos_on(path) as lo:
        a, b = socket.socketpair()
        try:
            b.send(b"x")
            yield lo, racer, a
        finally:
            a.close(), b.close()


def _wait_area(libos):
    """The staging area this thread's next wait crosses with (the top of its stack)."""
    t = libos.kernel.transport
    t._top_staging()
    return t._tls.free[-1]


@pytest.mark.parametrize("path", ["ocall", "rpc"])
def test_a_host_racing_an_epoll_record_never_hands_the_app_a_wrong_event(path):
    with _raced_libos(path) as (lo, racer, a), select.epoll() as ep:
        ep.register(a.fileno(), EPOLLIN)
        assert ep.poll(0) == [(a.fileno(), EPOLLIN)]
        # record 0's events, zeroed: the fd in its data stays the kernel's
        _raced(racer, lambda: ep.poll(0), [(a.fileno(), EPOLLIN)], "no events",
               _wait_area(lo).t.buf, 0, 4)
        assert ep.poll(0) == [(a.fileno(), EPOLLIN)]


@pytest.mark.parametrize("path", ["ocall", "rpc"])
def test_a_host_racing_a_pollfd_never_hands_the_app_impossible_revents(path):
    with _raced_libos(path) as (lo, racer, a):
        p = select.poll()
        p.register(a, POLLIN)
        assert p.poll(0) == [(a.fileno(), POLLIN)]
        # the low byte of entry 0's revents: NVAL beside the kernel's POLLIN
        _raced(racer, lambda: p.poll(0), [(a.fileno(), POLLIN)], "NVAL",
               _wait_area(lo).t.buf + 6, POLLNVAL | POLLIN, 1)
        assert p.poll(0) == [(a.fileno(), POLLIN)]


# -- recv_into with MSG_TRUNC -------------------------------------------------------------------

@pytest.fixture(params=["direct", "ocall", "rpc"])
def c_libos(request):
    """A LibOS whose next reply the real host can be told to lie in: ``lie(value)`` makes
    its result ``value`` (Host.lie_next; on the ring, the worker's completion)."""
    with _libos_on(request.param) as lo:
        t = lo.kernel.transport
        if request.param == "rpc":
            lo.lie = lambda value: t.host.rpc.corrupt_next("ret", value)
        else:
            lo.lie = lambda value: Host.lie_next("ret", value, 1)
        try:
            yield lo
        finally:
            Host.lie_next("ret", 0, 0)


def test_a_stream_recv_into_with_msg_trunc_never_counts_more_than_asked(c_libos, pair):
    """MSG_TRUNC lets a datagram's length exceed the buffer; a stream's count never does (TCP
    and Unix streams move at most what was asked)."""
    a, b = pair
    a.sendall(b"0123456789")
    buf = bytearray(8)
    c_libos.lie(1000)
    with pytest.raises(IagoError, match="recvfrom of 4 bytes"):
        b.recv_into(buf, 4, socket.MSG_TRUNC)
    assert b.recv_into(buf, 4, socket.MSG_TRUNC) == 4     # (the lie's call took 0123)
    assert b.recv_into(memoryview(buf)[4:], 4, socket.MSG_TRUNC) == 2
    assert buf == bytearray(b"456789\0\0")


def test_a_datagram_recv_into_with_msg_trunc_counts_as_natively_within_an_int(c_libos):
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        a.send(b"0123456789")
        buf = bytearray(8)
        assert b.recv_into(buf, 4, socket.MSG_TRUNC) == 10        # the datagram's length
        assert buf[:4] == b"0123"
        a.send(b"0123456789")
        c_libos.lie(1 << 40)                       # the kernel's recvmsg returns an int
        with pytest.raises(IagoError, match="recvfrom of 4 bytes"):
            b.recv_into(buf, 4, socket.MSG_TRUNC)


# -- the fused writes' area of a transport that is gone -----------------------------------------

def test_a_fused_write_never_crosses_with_an_area_its_transport_did_not_bind():
    """C holds the thread's fused-write area by address (enclave_bind_out).  When the
    transport that bound it is gone, its memory is freed and may be reused (a transport made
    next gets its staging area there, with its own number in it: seen by hand with gc and
    pymalloc): a fused write must then still bind an area of its own, never cross with what
    lies at the old address.  The reuse is stood in for here by writing the next transport's
    number into the bound area's record (deterministic, where reuse happens by chance)."""
    import os

    def unexpected(*args):
        raise AssertionError(f"the fused path handed over: {args}")
    r, w = os.pipe()
    first, second = make_transport("direct"), make_transport("direct")
    try:
        assert first.fused("write", unexpected, unexpected)(w, b"a") == 1
        bound = first._tls.out
        bound.t.owner = second._owner        # what the reused memory would say
        assert second.fused("write", unexpected, unexpected)(w, b"b") == 1
        assert getattr(second._tls, "out", None) is not None, \
            "the second transport's write crossed with an area it never bound"
        assert os.read(r, 10) == b"ab"
    finally:
        os.close(r), os.close(w)


# -- a wait without a timeout that comes back with nothing ---------------------------------------

def test_a_wait_without_a_timeout_that_finds_nothing_ready_is_caught():
    """poll and epoll_wait with no timeout return only when something is ready, or with an
    error (EINTR): a count of 0 cannot be.  The app's select(..., None) would get three empty
    lists, its socket's blocking wait would ask again and again for ever."""
    assert epoll_reply(0, [], 4) == (0, [])                       # a zero timeout may
    with pytest.raises(IagoError, match="without a timeout"):
        Transport.epoll_reply(Reply(0, b"", b"", ()), 4, -1)
    assert Transport.epoll_reply(Reply(-4, b"", b"", ()), 4, -1) == (-4, [])   # EINTR
    table = struct.pack("=ihh", 5, POLLIN, 0)
    assert Transport.poll_reply(Reply(0, table, b"", ()), [5], [POLLIN], 1) == (0, [])
    with pytest.raises(IagoError, match="without a timeout"):
        Transport.poll_reply(Reply(0, table, b"", ()), [5], [POLLIN], -1)


class _NothingReady:
    """A lie for the lying transport: the wait's reply says nothing is ready (the real call,
    made first, found the fd ready, so it did not block)."""

    @staticmethod
    def poll(r, args, kw):
        table = bytearray(r.out)
        for i in range(0, len(table), 8):
            table[i + 6:i + 8] = b"\0\0"
        return r._replace(ret=0, out=bytes(table))

    @staticmethod
    def epoll(r, args, kw):
        return r._replace(ret=0, out=b"")


def test_the_apps_waits_without_a_timeout_never_come_back_empty(liar, pair):
    t, _ = liar
    a, b = pair
    b.send(b"x")
    t.lie(abi.OP_POLL, _NothingReady.poll)
    with pytest.raises(IagoError, match="without a timeout"):
        select.select([a], [], [])
    p = select.poll()
    p.register(a, POLLIN)
    t.lie(abi.OP_POLL, _NothingReady.poll)
    with pytest.raises(IagoError, match="without a timeout"):
        p.poll()
    with select.epoll() as ep:
        ep.register(a.fileno(), EPOLLIN)
        t.lie(abi.OP_EPOLL_WAIT, _NothingReady.epoll)
        with pytest.raises(IagoError, match="without a timeout"):
            ep.poll()
        assert ep.poll() == [(a.fileno(), EPOLLIN)]
    assert select.select([a], [], []) == ([a], [], [])


def test_a_blocking_recv_whose_wait_keeps_finding_nothing_is_caught(liar, pair):
    """A blocking socket's recv waits (poll, no timeout) while the host says EAGAIN: a wait
    that comes back with nothing ready would have it ask again, for as long as the host
    likes, a busy loop where the native call sleeps."""
    t, _ = liar
    a, b = pair
    b.send(b"xy")              # (the real recv under the EAGAIN lie takes the x)
    lies = []

    def nothing_ready_then_honest(r, args, kw):
        lies.append(1)
        if len(lies) < 5:
            t.lie(abi.OP_POLL, nothing_ready_then_honest)
        return _NothingReady.poll(r, args, kw)
    t.lie(abi.OP_RECVFROM, lambda r, args, kw: Reply(-11, b"", b"", r.args))   # EAGAIN
    t.lie(abi.OP_POLL, nothing_ready_then_honest)
    try:
        with pytest.raises(IagoError, match="without a timeout"):
            a.recv(1)
        assert lies == [1]
    finally:
        t._lies.pop(abi.OP_POLL, None)
    assert a.recv(1) == b"y"


# -- the fused data path, on every path ---------------------------------------------------------

_BIG = 100 << 10                         # a recv_into past the size copied by slice


@pytest.mark.parametrize("call, value", [
    ("read", 5), ("recv", 5), ("recv_into", 5), ("recv_into_view", 5),
    ("recv_into_big", _BIG + 1),         # more bytes than asked
    ("write", 4), ("send", 4),           # more taken than given
    ("send", 0),                         # a socket takes a byte or says EAGAIN
    ("read", -5000), ("send", -5000),    # neither a count nor an errno
])
def test_the_fused_data_path_rejects_a_count_that_cannot_be(c_libos, call, value):
    """What the app's os.read/os.write and socket calls (the fused crossings, the C data path
    behind them) do with a result the host cannot have: IagoError, nothing of it in the
    app's buffer, and the next call honest."""
    a, b = socket.socketpair()
    r, w = os.pipe()
    try:
        a.sendall(b"0123456789")
        os.write(w, b"0123456789")
        buf = bytearray(b"-" * (_BIG + 8))
        do = {"read": lambda: os.read(r, 4), "recv": lambda: b.recv(4),
              "recv_into": lambda: b.recv_into(buf, 4),
              "recv_into_view": lambda: b.recv_into(memoryview(buf)[:8], 4),
              "recv_into_big": lambda: b.recv_into(memoryview(buf), _BIG),
              "write": lambda: os.write(w, b"abc"), "send": lambda: a.send(b"abc")}[call]
        c_libos.lie(value)
        with pytest.raises(IagoError):
            do()
        assert buf == bytearray(b"-" * (_BIG + 8))
        a.sendall(b"0123456789")                # (the big recv's lie took all there was)
        assert b.recv(4) in (b"0123", b"4567") and os.read(r, 4) in (b"0123", b"4567")
        assert a.send(b"xyz") == 3 and os.write(w, b"xyz") == 3
    finally:
        a.close(), b.close(), os.close(r), os.close(w)

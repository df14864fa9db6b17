"""The checked C waits and the fused data path (issue 12): epoll_wait and poll read their
reply once, in C, and check it there (trusted/_native/enclave_ocalls.c: enclave_epoll_wait,
enclave_poll and their checkers); recv_into's bytes go from the host's buffer into the app's
in the same crossing; os.read/os.write and socket send/recv run their common case fused with
the crossing (Transport.fused).  Each lie below is told by the real C host (Host.lie_next) or
fed to the same C checker the crossing uses, and must be an IagoError; the honest answers
must be CPython's."""
import os
import select
import socket
import struct
import time

import pytest

from eleos_shim import abi
from eleos_shim.errors import IagoError
from tests.libos_helpers import installed, make_transport, epoll_reply, poll_reply
from trusted.syscall import Reply, Transport
from untrusted.host import Host

POLLIN, POLLOUT = select.POLLIN, select.POLLOUT


@pytest.fixture(params=["direct", "ocall"])
def libos(request):
    with installed(make_transport(request.param)) as lo:
        try:
            yield lo
        finally:
            Host.lie_next("ret", 0, 0)


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    yield a, b
    a.close(), b.close()




# -- honest answers ---------------------------------------------------------------------------

def test_checked_waits_answer_as_cpython_does(libos, pair):
    a, b = pair
    a.send(b"x")
    with select.epoll() as ep:
        ep.register(b.fileno(), select.EPOLLIN)
        ep.register(a.fileno(), select.EPOLLIN)
        assert ep.poll(0) == [(b.fileno(), select.EPOLLIN)]
        assert ep.poll(0, 1) == [(b.fileno(), select.EPOLLIN)]
    p = select.poll()
    p.register(a, POLLIN | POLLOUT)
    p.register(b, POLLIN)
    assert p.poll(0) == [(a.fileno(), POLLOUT), (b.fileno(), POLLIN)]
    assert select.select([a, b], [a], [], 0) == ([b], [a], [])
    assert b.recv(1) == b"x"
    assert select.select([b], [], [], 0) == ([], [], [])


def test_many_ready_fds_come_back_each_once(libos):
    pairs = [socket.socketpair() for _ in range(40)]
    try:
        with select.epoll() as ep:
            for a, b in pairs:
                ep.register(b.fileno(), select.EPOLLIN)
                a.send(b"x")
            got = ep.poll(0)
            assert sorted(got) == sorted((b.fileno(), select.EPOLLIN) for _, b in pairs)
    finally:
        for a, b in pairs:
            a.close(), b.close()


# -- epoll_wait: lies told by the C host, caught in the crossing -----------------------------

def test_epoll_wait_claiming_more_events_than_maxevents_is_caught(libos, pair):
    a, b = pair
    a.send(b"x")
    with select.epoll() as ep:
        ep.register(b.fileno(), select.EPOLLIN)
        Host.lie_next("ret", 2, 1)
        with pytest.raises(IagoError, match="maxevents 1"):
            ep.poll(0, 1)
        assert ep.poll(0, 1) == [(b.fileno(), select.EPOLLIN)]     # honest again


def test_epoll_wait_count_its_records_do_not_fill_is_caught(libos, pair):
    a, b = pair
    a.send(b"x")
    with select.epoll() as ep:
        ep.register(b.fileno(), select.EPOLLIN)
        Host.lie_next("out_len", 24, 1)           # one event, two records' worth of bytes
        with pytest.raises(IagoError, match="1 events in 24 bytes"):
            ep.poll(0)
        Host.lie_next("ret", -5000, 1)            # neither a count nor an errno
        with pytest.raises(IagoError, match="cannot be true"):
            ep.poll(0)


def test_epoll_records_naming_an_impossible_or_repeated_fd_are_caught():
    assert epoll_reply(2, [(1, 5), (4, 6)], 4) == (2, [(5, 1), (6, 4)])
    with pytest.raises(IagoError, match="impossible fd"):
        epoll_reply(1, [(1, 1 << 31)], 4)
    with pytest.raises(IagoError, match="fd 5 twice"):
        epoll_reply(3, [(1, 5), (1, 6), (4, 5)], 4)
    many = [(1, fd) for fd in range(100)] + [(1, 42)]      # the sorted check, past a few
    with pytest.raises(IagoError, match="fd 42 twice"):
        epoll_reply(101, many, 200)
    with pytest.raises(IagoError, match="cannot be true"):
        Transport.epoll_reply(Reply(-4, struct.pack("=IQ", 1, 5), b"", ()), 4)   # errno + data


# -- poll: the table the enclave sent, checked entry by entry --------------------------------

def test_poll_count_the_table_does_not_mark_is_caught(libos, pair):
    a, b = pair
    p = select.poll()
    p.register(b, POLLIN)
    Host.lie_next("ret", 1, 1)                 # nothing to read, yet "one ready"
    with pytest.raises(IagoError, match="says 1 fds are ready but marks 0"):
        p.poll(0)
    Host.lie_next("ret", 2, 1)                 # more ready than were asked about
    with pytest.raises(IagoError, match="2 ready fds for 1 fds"):
        select.select([b], [], [], 0)
    assert p.poll(0) == []


def test_poll_reply_that_rewrites_the_table_or_adds_events_is_caught():
    fds, evs = [5, -1, 7], [POLLIN, POLLIN, POLLOUT]
    honest = [(5, POLLIN, POLLIN), (-1, POLLIN, 0), (7, POLLOUT, POLLOUT | select.POLLHUP)]
    assert poll_reply(2, honest, fds, evs) == (2, [(5, POLLIN), (7, POLLOUT | select.POLLHUP)])
    with pytest.raises(IagoError, match="rewrote entry 2"):
        poll_reply(1, honest[:2] + [(8, POLLOUT, 0)], fds, evs)
    with pytest.raises(IagoError, match="rewrote entry 0"):
        poll_reply(1, [(5, POLLOUT, POLLIN)] + honest[1:], fds, evs)
    with pytest.raises(IagoError, match="asked only for"):
        poll_reply(1, [(5, POLLIN, POLLOUT)] + honest[1:], fds, evs)
    with pytest.raises(IagoError, match="ignored entry 1"):
        poll_reply(3, [honest[0], (-1, POLLIN, POLLIN), honest[2]], fds, evs)
    with pytest.raises(IagoError, match="holds 16 bytes"):
        poll_reply(1, honest[:2], fds, evs)
    with pytest.raises(IagoError, match="cannot be true"):
        poll_reply(2, honest, fds, evs, out2=b"x")


def test_a_blocking_sockets_wait_that_says_ready_for_nothing_is_caught(libos, pair):
    a, b = pair
    Host.lie_next("ret", 1, 1)       # the wait says "ready" for a socket with nothing to read
    with pytest.raises(IagoError, match="marks 0"):
        libos.kernel.wait_fd(a.fileno(), POLLIN, time.monotonic() + 0.02)


# -- recv_into and the fused data path --------------------------------------------------------

@pytest.mark.parametrize("view", [False, True])     # the fused path; data_into's
def test_recv_into_a_count_over_what_was_asked_is_caught_and_nothing_spills(libos, pair, view):
    a, b = pair
    a.sendall(b"0123456789")
    buf = bytearray(b"-" * 8)
    into = memoryview(buf) if view else buf
    Host.lie_next("ret_add", 4, 1)
    with pytest.raises(IagoError, match="recv of 4 bytes"):
        b.recv_into(into, 4)
    assert buf == bytearray(b"-" * 8)
    assert b.recv_into(into, 4) == 4 and buf[:4] in (b"0123", b"4567")


def test_a_large_recv_into_lands_whole_in_the_apps_buffer(libos, pair):
    a, b = pair
    data = bytes(range(256)) * 400                  # over the size copied by slice
    a.setblocking(False)
    sent = a.send(data)
    buf = bytearray(len(data))
    got = 0
    while got < sent:
        got += b.recv_into(memoryview(buf)[got:])
    assert buf[:sent] == data[:sent]


def test_recv_into_fills_the_apps_buffer_as_natively(libos, pair):
    a, b = pair
    a.sendall(b"hello world")
    buf = bytearray(64)
    assert b.recv_into(memoryview(buf)[3:], 5) == 5
    assert bytes(buf[:10]) == b"\0\0\0hello\0\0"
    assert b.recv_into(buf) == 6 and bytes(buf[:6]) == b" world"


def test_the_fused_data_path_is_what_the_app_gets_and_it_is_counted():
    t = make_transport("direct")
    with installed(t) as lo:
        a, b = socket.socketpair()
        r, w = os.pipe()
        try:
            assert type(a).send.__name__ == "send" and os.write.__name__ == "write"
            assert os.write.__code__ is not type(lo.fs).write.__code__    # the fused one
            t.reset_counts()
            assert a.send(b"ping") == 4 and b.recv(10) == b"ping"
            assert os.write(w, b"pong") == 4 and os.read(r, 10) == b"pong"
            assert os.write(w, bytearray(b"xy")) == 2 and os.read(r, 2) == b"xy"  # the full path
            c = t.counts()
            assert (c["sendto"]["count"], c["recvfrom"]["count"]) == (1, 1)
            assert (c["write"]["count"], c["read"]["count"]) == (2, 2)
            Host.lie_next("ret", 9, 1)
            with pytest.raises(IagoError, match="host's reply to write of 4 bytes"):
                os.write(w, b"abcd")
            b.setblocking(False)
            with pytest.raises(BlockingIOError):
                b.recv(10)                 # EAGAIN: the fused recv hands over to the LibOS
        finally:
            Host.lie_next("ret", 0, 0)
            a.close(), b.close(), os.close(r), os.close(w)


def test_fused_writes_take_their_own_transports_path_on_every_thread():
    """The area a fused write crosses with is held in C per thread and bound per transport:
    alternating two transports, and a second thread, each call goes its own transport's way."""
    import threading

    def unexpected(*args):
        raise AssertionError(f"the fused path handed over: {args}")
    direct, ocall = make_transport("direct"), make_transport("ocall")
    wd = direct.fused("write", unexpected, unexpected)
    wo = ocall.fused("write", unexpected, unexpected)
    r, w = os.pipe()
    try:
        direct.reset_counts()
        assert (wd(w, b"a"), wo(w, b"b"), wd(w, b"c"), wo(w, b"d")) == (1, 1, 1, 1)
        done = []
        th = threading.Thread(target=lambda: done.append((wo(w, b"e"), wd(w, b"f"))))
        th.start(), th.join()
        assert done == [(1, 1)] and os.read(r, 10) == b"abcdef"
        c = direct.counts()["write"]
        assert (c["direct"], c["ocall"], c["count"]) == (3, 3, 6)
        Host.lie_next("ret", 5, 1)              # a lie on the bound area's crossing
        with pytest.raises(IagoError, match="host's reply to write of 1 bytes"):
            wo(w, b"g")
    finally:
        Host.lie_next("ret", 0, 0)
        os.close(r), os.close(w)


def test_a_handlers_fused_write_inside_the_out_areas_growth_never_overruns(tmp_path):
    """The area C holds for a thread's fused writes is unbound while it grows: a signal
    handler's write that lands between the new buffer and its size being recorded (injected
    there with a line trace, as tests/test_attack_staging.py does) binds an area of its own,
    and never leaves a size above the buffer it goes with."""
    import ctypes
    import inspect
    import sys

    libc = ctypes.CDLL(None)
    libc.malloc_usable_size.restype = ctypes.c_size_t
    libc.malloc_usable_size.argtypes = [ctypes.c_void_p]
    lines, first = inspect.getsourcelines(Transport._grow)
    target = first + next(i for i, line in enumerate(lines) if "st.t.cap = st.cap = new" in line)

    def unexpected(*args):
        raise AssertionError(f"the fused path handed over: {args}")
    t = make_transport("direct")
    write = t.fused("write", unexpected, unexpected)
    out, out2 = (os.open(tmp_path / n, os.O_RDWR | os.O_CREAT) for n in ("out", "out2"))
    try:
        assert write(out, b"") == 0                  # this thread's area, bound at its size
        small = t._tls.out.cap
        mine, theirs = os.urandom(4 * small), os.urandom(small + 10)
        handler_ran = []

        def trace(frame, event, arg):
            if frame.f_code is not Transport._grow.__code__:
                return None

            def on_line(frame, event, arg):
                if event == "line" and frame.f_lineno == target and not handler_ran:
                    handler_ran.append(write(out2, theirs))      # a handler's os.write
                return on_line
            return on_line
        sys.settrace(trace)
        try:
            took = write(out, mine)
        finally:
            sys.settrace(None)
        assert handler_ran == [len(theirs)] and took == len(mine)
        for area in t._all_staging:
            assert area.t.cap <= libc.malloc_usable_size(area.t.buf), \
                "an area's recorded size is larger than the buffer it names"
        assert os.pread(out, len(mine) + 1, 0) == mine
        assert os.pread(out2, len(theirs) + 1, 0) == theirs
    finally:
        os.close(out), os.close(out2)

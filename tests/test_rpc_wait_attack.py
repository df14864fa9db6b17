"""Exit-less waits (ELEOS_RPC_WAIT=spin, trusted/_native/enclave_ocalls.c: rpc_wait) against a
hostile host.  A poll or epoll_wait with a timeout other than 0 is first sent through the RPC
ring with a timeout of 0; if that reply says 0 ready the thread runs the wait in place, for
the timeout it asked, in a second crossing.  Every reply the host can give in either step must end as the honest
result or an IagoError, checked against the enclave's own request (fds, events, nfds,
maxevents and the ORIGINAL timeout), never as a wrong value:
- the ring step lies (``corrupt_next``): an errno, a count beyond the request, bytes beyond
  the buffer, a count with no entry marked, 0 for a ready fd;
- the ring step's host rewrites what it may (the args the ring copies back, the pollfd table
  in buffer 1) before the in-place step (a submit wrapper stands for that host: enclave_rpc
  copies the slot's args back unchecked, and buffer 1 is host memory);
- the in-place step lies (``Host.lie_next``, armed between the two steps).
And as CPython: a signal during an in-place wait (PEP 475 retry with the time left), a wait
blocked in place while another thread's calls go through the one worker."""
from __future__ import annotations

import errno
import os
import select
import signal
import socket
import threading
import time

import pytest

from eleos_shim import abi
from eleos_shim.config import Config
from eleos_shim.cpu import ModeledCPU
from eleos_shim.errors import IagoError
from tests.libos_helpers import installed
from trusted._native._enclave import ffi as tffi, lib as tlib
from trusted.syscall import Bridge, Transport
from untrusted.host import Host

POLLIN = select.POLLIN
EPOLLIN = select.EPOLLIN
NEVER = 10_000          # ms: a wait that only ends by its fd (a broken check shows as slow)


class Ring:
    """A transport on the rpc path over a real ring and one real worker that never sleeps;
    ``after_ring(req)``, when set, runs after each ring reply was read into the enclave's
    copy (``req``), as the host that wrote it could have arranged."""

    def __init__(self, wrap_dispatch=False):
        cfg = Config.from_env({}, mode="eleos", memory="native", cost="account",
                              rpc_sleep=str(1 << 62))
        self.cpu = ModeledCPU(cfg)
        self.host = Host(cfg)
        self.host.start()
        a = self.host.bridge_addresses()
        self.ring_addr = a["rpc_ring"]
        assert tlib.enclave_rpc_attach(self.ring_addr, cfg.rpc_slots) == 0
        self.after_ring = None
        self.ring_timeouts: list[int] = []

        @tffi.callback("int(uintptr_t, struct eleos_req *, uint64_t)")
        def submit(ring, req, spin):
            if req.op == abi.OP_POLL or req.op == abi.OP_EPOLL_WAIT:
                # the timeout a wait hands the worker (poll: args[1], epoll_wait: args[2])
                ms = req.args[1 if req.op == abi.OP_POLL else 2]
                self.ring_timeouts.append(ms)
                if ms != 0:
                    # A wait that could block the one worker (a bug the tests below catch by
                    # ring_timeouts): not handed to it but refused, so the test fails, not hangs.
                    return abi.RPC_CORRUPT
            rc = tlib.enclave_rpc(ring, req, spin)
            hook = self.after_ring
            if hook is not None and rc == 0:          # ELEOS_RPC_DONE
                self.after_ring = None
                hook(req)
            return rc

        # With wrap_dispatch, the host's handler of the calls the enclave thread runs itself
        # (the wait in place, OCALLs) is this Python one; ``in_place(req, real)``, when set,
        # answers the next one instead.  (Not by default: a Python signal handler would run
        # inside it.)
        self.in_place = None
        real = tffi.cast("void (*)(struct eleos_req *)", a["dispatch"])

        @tffi.callback("void(struct eleos_req *)")
        def dispatch(req):
            hook = self.in_place
            if hook is None:
                real(req)                             # cffi releases the GIL around it
            else:
                self.in_place = None
                hook(req, real)

        self._submit, self._dispatch = submit, dispatch     # alive as long as the transport
        self.transport = Transport(
            "rpc", Bridge(int(tffi.cast("uintptr_t", dispatch)) if wrap_dispatch
                          else a["dispatch"], a["alloc"], a["free"],
                          self.cpu.charge_fn,
                          self.cpu.pollute_fn,
                          rpc_submit=int(tffi.cast("uintptr_t", submit)), rpc_ring=self.ring_addr),
            rpc_spin=1 << 40, rpc_wait="spin")
        self.transport.reset_counts()

    def close(self):
        Host.lie_next("ret", 0, 0)
        self.host.stop()
        tlib.enclave_rpc_detach(self.ring_addr)
        # The enclave's bindings are process-wide: leave them on the real host dispatch and
        # the real producer (on the detached ring every call falls back), never on these
        # callbacks, which are kept alive all the same (_KEPT).
        a = self.host.bridge_addresses()
        tlib.enclave_bind(a["dispatch"], self.cpu.charge_fn, self.cpu.pollute_fn)
        tlib.enclave_bind_rpc(int(tffi.cast("uintptr_t", tffi.addressof(tlib, "enclave_rpc"))),
                              self.ring_addr, 1 << 40)
        _KEPT.append(self)


_RING = None
_KEPT: list = []


def _ring(**kw):
    global _RING
    r = _RING = Ring(**kw)
    try:
        yield r
    finally:
        _RING = None
        r.close()
    # In every test: no wait reached the one worker with a timeout (it would be tied up).
    assert set(r.ring_timeouts) <= {0}, r.ring_timeouts


@pytest.fixture
def ring():
    yield from _ring()


@pytest.fixture
def liar():
    """A ring whose in-place step can lie (``liar.in_place``)."""
    yield from _ring(wrap_dispatch=True)


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    yield a, b
    a.close(), b.close()


class Epoll:
    """An epoll set made and filled through the host's handlers (data.u64 = the fd, as the
    LibOS registers; CPython's own register leaves the upper half of data unset)."""

    def __init__(self, *fds):
        t = _RING.transport
        self.fd = t.call(abi.OP_EPOLL_CREATE, 0).ret
        assert self.fd >= 0
        for fd in fds:
            assert t.call(abi.OP_EPOLL_CTL, self.fd, 1, fd, EPOLLIN).ret == 0

    def fileno(self):
        return self.fd

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        os.close(self.fd)


def honest_or_iago(call, honest):
    """``call()``'s answer: the honest one, or an IagoError; anything else fails."""
    try:
        got = call()
    except IagoError:
        return "iago"
    assert got == honest, f"a lie became a value: {got!r}, honest {honest!r}"
    return "honest"


def waits_blocked():
    return Transport.waits_blocked()


def wait_for(t, which, fd, ep):
    """A ``which`` ("poll" or "epoll") wait for ``fd`` through transport ``t`` (for epoll, on
    ``ep``, which holds fd): a function of the timeout, and its honest answer once fd is
    ready."""
    if which == "poll":
        return (lambda ms: t.poll([fd], [POLLIN], ms)), (1, [(fd, POLLIN)])
    return (lambda ms: t.epoll_wait(ep.fileno(), 4, ms)), (1, [(fd, EPOLLIN)])


# -- the ring step lies ------------------------------------------------------------------------

@pytest.mark.parametrize("ms", [-1, NEVER])
@pytest.mark.parametrize("kind, value", [
    ("ret", 1 << 40), ("ret", 2), ("ret", -5000), ("out_len", 1), ("out2_len", 1),
    ("state", 9), ("seq", 1)])
def test_poll_ring_lies_on_a_ready_fd_are_iago_errors(ring, pair, ms, kind, value):
    a, b = pair
    a.send(b"x")
    t = ring.transport
    honest = (1, [(b.fileno(), POLLIN)])
    ring.host.rpc.corrupt_next(kind, value)
    honest_or_iago(lambda: t.poll([b.fileno()], [POLLIN], ms), honest)
    assert t.poll([b.fileno()], [POLLIN], ms) == honest                      # honest again


@pytest.mark.parametrize("ms", [-1, NEVER])
def test_poll_ring_says_ready_on_an_idle_fd_is_an_iago_error(ring, pair, ms):
    # One ready, no entry marked; and the in-place wait must not have run (it would block).
    a, b = pair
    ring.host.rpc.corrupt_next("ret", 1)
    before = waits_blocked()
    with pytest.raises(IagoError):
        ring.transport.poll([b.fileno()], [POLLIN], ms)
    assert waits_blocked() == before


@pytest.mark.parametrize("ms", [-1, NEVER])
@pytest.mark.parametrize("kind, value", [
    ("ret", 1 << 40), ("ret", 5), ("ret", -5000), ("out_len", 1), ("out2_len", 1),
    ("state", 9), ("seq", 1)])
def test_epoll_ring_lies_on_a_ready_fd_are_iago_errors(ring, pair, ms, kind, value):
    a, b = pair
    a.send(b"x")
    with Epoll(b.fileno()) as ep:
        t = ring.transport
        honest = (1, [(b.fileno(), EPOLLIN)])
        ring.host.rpc.corrupt_next(kind, value)
        honest_or_iago(lambda: t.epoll_wait(ep.fileno(), 4, ms), honest)
        assert t.epoll_wait(ep.fileno(), 4, ms) == honest


@pytest.mark.parametrize("ms", [-1, NEVER])
def test_epoll_ring_says_ready_with_no_event_written_is_an_iago_error(ring, pair, ms):
    a, b = pair
    with Epoll(b.fileno()) as ep:
        # ret 1 with out_len 0 (an idle wait writes nothing): the count has no record
        ring.host.rpc.corrupt_next("ret", 1)
        with pytest.raises(IagoError):
            ring.transport.epoll_wait(ep.fileno(), 4, ms)


def eintr(ring, times):
    """The next ``times`` ring replies say EINTR, as a worker whose syscall a signal cut short
    does (ret -EINTR, nothing written)."""
    left = [times]

    def hook(req):
        req.ret, req.out_len, req.out2_len = -errno.EINTR, 0, 0
        left[0] -= 1
        if left[0]:
            ring.after_ring = hook
    ring.after_ring = hook


@pytest.mark.parametrize("which", ["poll", "epoll"])
def test_ring_eintr_is_only_an_errno_and_the_libos_retries_it(ring, pair, which):
    # EINTR in the ring's reply is an errno, not a value: the transport returns it as one
    # (with data beside it, an IagoError, or the honest answer) and the LibOS retries it
    # (PEP 475) to the honest answer.
    a, b = pair
    a.send(b"x")
    t = ring.transport
    with Epoll(b.fileno()) as ep:
        call, honest = wait_for(t, which, b.fileno(), ep)
        for ms in (NEVER, -1):
            eintr(ring, 1)
            got = call(ms)
            assert got in ((-errno.EINTR, []), honest), got     # an errno, or waited again
            assert ring.after_ring is None
            ring.host.rpc.corrupt_next("ret", -errno.EINTR)   # beside the ready fd's record
            honest_or_iago(lambda: call(ms), honest)
    with installed(t):
        a, b = socket.socketpair()                   # the LibOS's own sockets
        a.send(b"x")
        if which == "poll":
            eintr(ring, 3)
            assert select.select([b], [], [], NEVER / 1000) == ([b], [], [])
            eintr(ring, 3)
            assert select.select([b], [], []) == ([b], [], [])
            p = select.poll()
            p.register(b, POLLIN)
            eintr(ring, 3)
            assert p.poll(NEVER) == [(b.fileno(), POLLIN)]
        else:
            with select.epoll() as ep2:
                ep2.register(b.fileno(), EPOLLIN)
                eintr(ring, 3)
                assert ep2.poll(NEVER / 1000) == [(b.fileno(), EPOLLIN)]
                eintr(ring, 3)
                assert ep2.poll() == [(b.fileno(), EPOLLIN)]
        assert ring.after_ring is None
        a.close(), b.close()


@pytest.mark.parametrize("which", ["poll", "epoll"])
def test_ring_says_nothing_ready_for_a_ready_fd_the_wait_in_place_answers(ring, pair, which):
    a, b = pair
    a.send(b"x")
    t = ring.transport
    with Epoll(b.fileno()) as ep:
        call, honest = wait_for(t, which, b.fileno(), ep)
        before = waits_blocked()
        ring.host.rpc.corrupt_next("ret", 0)
        assert call(-1) == honest
        assert waits_blocked() == before + 1


# -- what the ring step's host leaves for the in-place step --------------------------------------

def test_poll_in_place_uses_the_enclaves_args_not_the_ones_the_ring_copied_back(ring, pair):
    # The ring's host scribbles every arg it hands back (nfds 0, timeout 0, ...) and then
    # makes the fd ready: the in-place wait is the enclave's own request, so the honest answer.
    a, b = pair

    def scribble(req):
        for i in range(6):
            req.args[i] = 0
        a.send(b"x")
    ring.after_ring = scribble
    assert ring.transport.poll([b.fileno()], [POLLIN], -1) == (1, [(b.fileno(), POLLIN)])
    assert ring.after_ring is None                   # the ring step ran, then the wait in place


def test_epoll_in_place_uses_the_enclaves_epfd_not_the_ones_the_ring_copied_back(ring, pair):
    # The ring's host names another epoll set, whose fd is ready, in the args it hands back:
    # an in-place wait on it would report an fd of the host's choosing.
    a, b = pair
    c, d = socket.socketpair()
    try:
        with Epoll(b.fileno()) as mine, Epoll(d.fileno()) as other:
            c.send(b"y")

            def scribble(req):
                req.args[0] = other.fileno()
                req.args[1] = 1 << 20
                req.args[2] = 0
                a.send(b"x")
            ring.after_ring = scribble
            assert ring.transport.epoll_wait(mine.fileno(), 4, NEVER) == \
                (1, [(b.fileno(), EPOLLIN)])
            assert ring.after_ring is None
    finally:
        c.close(), d.close()


def test_poll_table_rewritten_by_the_ring_host_is_never_a_wrong_answer(ring, pair):
    # The pollfd table lives in buffer 1 (host memory).  The ring's host points its entry at
    # another fd, which is ready: the answer is the honest one or an IagoError, never the
    # other fd.  (The wait's second crossing builds the table again from the enclave's own
    # fds and events, so the honest one: b is idle, the wait times out.)
    a, b = pair
    c, d = socket.socketpair()
    try:
        c.send(b"y")

        def rewrite(req):
            table = tffi.cast("int32_t *", req.buf)
            table[0] = d.fileno()
        ring.after_ring = rewrite
        try:
            got = ring.transport.poll([b.fileno()], [POLLIN], 50)
        except IagoError:
            got = None
        assert ring.after_ring is None
        assert got == (0, [])
    finally:
        c.close(), d.close()


# -- the in-place step lies: checked against the original timeout ---------------------------------

@pytest.mark.parametrize("which", ["poll", "epoll"])
@pytest.mark.parametrize("kind, value", [("ret", 0), ("ret", 1 << 40), ("ret", 3),
                                         ("out_len", 1 << 30), ("out2_len", 8)])
def test_in_place_lies_are_iago_errors(ring, pair, which, kind, value):
    # The ring step honestly finds nothing (timeout 0); the in-place wait without a timeout
    # then lies.  0 ready is what the ring step could say, never what a wait without a
    # timeout can: it must be checked against -1, the timeout the app asked for.
    a, b = pair

    def arm(req):
        Host.lie_next(kind, value)
        a.send(b"x")                                 # the honest in-place wait ends at once
    with Epoll(b.fileno()) as ep:
        call, _ = wait_for(ring.transport, which, b.fileno(), ep)
        ring.after_ring = arm
        with pytest.raises(IagoError):
            call(-1)
        assert ring.after_ring is None


@pytest.mark.parametrize("which", ["poll", "epoll"])
def test_in_place_nothing_ready_without_a_timeout_is_an_iago_error(liar, pair, which):
    # The ring step honestly finds nothing (its timeout is 0); the host then ends the wait in
    # place at once with nothing ready, a reply that is whole and consistent (for poll the
    # table as sent, no revents).  Only the timeout the app asked for (-1, none) shows the
    # lie: the reply must be checked against it, not against the ring step's 0.
    a, b = pair

    def nothing(req, real):
        req.ret, req.out2_len = 0, 0
        req.out_len = 8 if which == "poll" else 0
    liar.in_place = nothing
    with Epoll(b.fileno()) as ep:
        call, _ = wait_for(liar.transport, which, b.fileno(), ep)
        with pytest.raises(IagoError, match="without a timeout"):
            call(-1)
        assert liar.in_place is None                   # the in-place step was the host's lie
        # the same reply to a wait with a timeout is the honest "timed out"
        liar.in_place = nothing
        assert call(NEVER) == (0, [])
    assert liar.in_place is None


# -- as CPython: signals, timeouts, other threads --------------------------------------------------

def signal_in_place(ring, delay):
    """SIGUSR1 to this (the main) thread ``delay`` s after the next wait's ring step, i.e. into
    its wait in place (pytest-timeout owns SIGALRM)."""
    main = threading.get_ident()
    timer = threading.Timer(delay, signal.pthread_kill, (main, signal.SIGUSR1))
    ring.after_ring = lambda req: timer.start()
    return timer


def test_a_signal_during_an_in_place_wait_is_retried_with_the_time_left(ring, pair):
    a, b = pair
    seen = []
    timer = None
    old = signal.signal(signal.SIGUSR1, lambda *_: seen.append(1))
    try:
        with installed(ring.transport):
            before = waits_blocked()
            t0 = time.monotonic()
            timer = signal_in_place(ring, 0.05)
            assert select.select([b], [], [], 0.4) == ([], [], [])
            elapsed = time.monotonic() - t0
    finally:
        if timer:
            timer.cancel()
            if timer.ident:
                timer.join()
        signal.signal(signal.SIGUSR1, old)
    assert seen == [1]
    # PEP 475: the wait goes on after the handler, for what is left of the 0.4 s, not anew
    assert 0.4 <= elapsed < 0.4 + 0.3, elapsed
    assert waits_blocked() >= before + 2             # cut short, then the rest in place


def test_a_signal_whose_handler_raises_ends_an_in_place_wait(ring, pair):
    a, b = pair

    class Alarm(Exception):
        pass

    def handler(*_):
        raise Alarm
    old = signal.signal(signal.SIGUSR1, handler)
    timer = None
    try:
        with installed(ring.transport):
            p = select.poll()
            p.register(b, POLLIN)
            timer = signal_in_place(ring, 0.05)
            with pytest.raises(Alarm):
                p.poll()                               # no timeout: only the signal ends it
    finally:
        if timer:
            timer.cancel()
            if timer.ident:
                timer.join()
        signal.signal(signal.SIGUSR1, old)


def test_a_wait_in_place_leaves_the_one_worker_to_another_thread(ring, pair):
    a, b = pair
    r, w = os.pipe()
    t = ring.transport
    in_place = threading.Event()
    got = []

    def waiter():
        got.append(t.poll([b.fileno()], [POLLIN], NEVER))

    def mark(req):
        in_place.set()                                # next: the wait in place
    ring.after_ring = mark
    th = threading.Thread(target=waiter)
    th.start()
    try:
        assert in_place.wait(NEVER / 1000)
        processed = ring.host.rpc.stats()["processed"]
        for _ in range(50):                           # through the one worker meanwhile
            assert t.call(abi.OP_WRITE, w, inbuf=b"z").ret == 1
            assert t.call(abi.OP_READ, r, 1, outcap=1).out == b"z"
        assert ring.host.rpc.stats()["processed"] >= processed + 100
        assert got == []                              # the waiter still waits
    finally:
        a.send(b"!")
        th.join()
        os.close(r), os.close(w)
    assert got == [(1, [(b.fileno(), POLLIN)])]
    # The worker never got a wait that could block: the waiter's ring step had a timeout of 0.
    assert ring.ring_timeouts == [0]


def test_the_ring_only_ever_carries_waits_with_a_timeout_of_0(ring):
    # A wait with a timeout handed to the one worker would tie it up for that long (and every
    # other thread's calls behind it): through the LibOS, every select/poll/epoll with a
    # timeout, found ready or not, reaches the ring with 0.
    t = ring.transport
    with installed(t):
        a, b = socket.socketpair()
        try:
            p = select.poll()
            p.register(b, POLLIN)
            with select.epoll() as ep:
                ep.register(b.fileno(), EPOLLIN)
                for ready in (False, True):
                    if ready:
                        a.send(b"x")
                    want = [b] if ready else []
                    assert select.select([b], [], [], 0.02)[0] == want
                    assert [fd for fd, _ in p.poll(20)] == [b.fileno()] * ready
                    assert [fd for fd, _ in ep.poll(0.02)] == [b.fileno()] * ready
                    if ready:
                        assert select.select([b], [], [])[0] == want
                        assert [fd for fd, _ in p.poll()] == [b.fileno()]
                        assert [fd for fd, _ in ep.poll()] == [b.fileno()]
        finally:
            a.close(), b.close()
    assert len(ring.ring_timeouts) >= 9 and set(ring.ring_timeouts) == {0}
    assert t.counts()["poll"]["ocall"] == t.counts()["epoll_wait"]["ocall"] == 0

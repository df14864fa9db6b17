"""The wait path's per-call shortcuts (trusted/libos/mux.py, trusted/_native/enclave_ocalls.c):
epoll.poll's one-test-per-event check of a ready list, the remembered float-timeout
conversion, and the small-array sort behind epoll_wait's "each fd once" check.  Each must
give what the long way gives: the same answers, the same errors, the same lies caught."""
from __future__ import annotations

import math
import select
import struct

import pytest

from eleos_shim.errors import IagoError
from eleos_shim import abi
from tests.libos_helpers import epoll_reply, lying_libos
from tests.test_transport_waits import pair  # noqa: F401 - a fixture
from trusted.libos import mux

EPOLLIN, EPOLLOUT, EPOLLONESHOT = select.EPOLLIN, select.EPOLLOUT, select.EPOLLONESHOT


@pytest.fixture
def liar():
    with lying_libos() as pair:
        yield pair


# -- the remembered timeout conversion ----------------------------------------------------------
def _uncached(timeout):
    mux._MS_OF_SECONDS.clear()
    try:
        return mux._ms_from_seconds(timeout)
    finally:
        mux._MS_OF_SECONDS.clear()


@pytest.mark.parametrize("seconds", [1.0, 0.5, 1e-7, 0.0015, 2.5e-4, 1.0000001, 0.999, 3e5,
                                     2147483.647, -0.0, -1.5])
def test_a_remembered_float_converts_as_the_first_time(seconds):
    first = _uncached(seconds)
    assert first == mux._ms_from_seconds(seconds)     # now remembered
    assert mux._MS_OF_SECONDS.get(seconds) == first
    assert mux._ms_from_seconds(seconds) == first     # and answered from it
    if seconds > 0:
        assert first == math.ceil(seconds * 1e9 / 1e6)


def test_ints_and_bools_are_never_answered_from_floats_remembered():
    """1, True and 1.0 are one dict key: only floats are kept and only floats looked up."""
    mux._MS_OF_SECONDS.clear()
    mux._MS_OF_SECONDS[1.0] = 12345                    # a stale entry would show
    try:
        assert mux._ms_from_seconds(1) == 1000
        assert mux._ms_from_seconds(True) == 1000
        assert mux._MS_OF_SECONDS == {1.0: 12345}      # and neither was kept
    finally:
        mux._MS_OF_SECONDS.clear()


def test_a_float_that_fails_still_fails_every_time_and_is_not_kept():
    mux._MS_OF_SECONDS.clear()
    nan = float("nan")
    for _ in range(2):
        with pytest.raises(ValueError):
            mux._ms_from_seconds(nan)
        with pytest.raises(OverflowError):
            mux._ms_from_seconds(1e300)
        with pytest.raises(OverflowError):
            mux._ms_from_seconds(2147483.6475)    # above an int of milliseconds
    assert not mux._MS_OF_SECONDS


def test_the_remembered_conversions_stay_bounded():
    mux._MS_OF_SECONDS.clear()
    try:
        for i in range(10 * mux._MS_CACHE_MAX):
            assert mux._ms_from_seconds(i + 0.25) == i * 1000 + 250
        assert len(mux._MS_OF_SECONDS) <= mux._MS_CACHE_MAX
    finally:
        mux._MS_OF_SECONDS.clear()


# -- epoll.poll: the one-test check and the full one -------------------------------------------
def test_a_registered_fd_the_enclave_no_longer_holds_is_caught(liar, pair):
    """The one-test check also asks the fd table: an fd still in the epoll record but not open
    (a state only a LibOS bug could leave) is reported as the full check reports it."""
    t, libos = liar
    a, b = pair
    with select.epoll() as ep:
        ep.register(a.fileno(), EPOLLIN | EPOLLOUT)
        ep.register(b.fileno(), EPOLLIN | EPOLLOUT)
        k = libos.kernel
        k.fds.discard(b.fileno())
        try:
            t.lie(abi.OP_EPOLL_WAIT, lambda r, args, kw: r._replace(
                ret=2, out=struct.pack("=IQ", EPOLLOUT, a.fileno()) +
                struct.pack("=IQ", EPOLLOUT, b.fileno())))
            with pytest.raises(IagoError, match="which is not open"):
                ep.poll(0)
        finally:
            k.fds.add(b.fileno())


@pytest.mark.parametrize("where", [0, 1, 2])
def test_a_lie_anywhere_in_a_ready_list_is_caught(liar, pair, where):
    """Honest events before and after the one lie: the check stops at it, wherever it is."""
    t, _ = liar
    a, b = pair
    with select.epoll() as ep:
        ep.register(a.fileno(), EPOLLOUT)
        ep.register(b.fileno(), EPOLLOUT)
        honest = [struct.pack("=IQ", EPOLLOUT, a.fileno()),
                  struct.pack("=IQ", EPOLLOUT, b.fileno())]
        records = honest[:where] + [struct.pack("=IQ", EPOLLIN, 1 << 20)] + honest[where:]
        records = records[:3]
        t.lie(abi.OP_EPOLL_WAIT, lambda r, args, kw: r._replace(
            ret=len(records), out=b"".join(records)))
        with pytest.raises(IagoError, match="not open|never registered"):
            ep.poll(0)


def test_an_honest_ready_list_with_a_oneshot_fd_takes_the_full_check(libos_pair):
    """A oneshot registration never passes the one-test check: its event is taken (and its
    record disarmed) as the full check does, and a second wait reports nothing for it."""
    a, b = libos_pair
    with select.epoll() as ep:
        ep.register(a.fileno(), EPOLLOUT | EPOLLONESHOT)
        ep.register(b.fileno(), EPOLLOUT)
        got = dict(ep.poll(0))
        assert got == {a.fileno(): EPOLLOUT, b.fileno(): EPOLLOUT}
        assert dict(ep.poll(0)) == {b.fileno(): EPOLLOUT}
        ep.modify(a.fileno(), EPOLLOUT | EPOLLONESHOT)
        assert dict(ep.poll(0)) == {a.fileno(): EPOLLOUT, b.fileno(): EPOLLOUT}


@pytest.fixture
def libos_pair(liar, pair):
    return pair


# -- epoll_wait's "each fd once": the small sort and qsort ---------------------------------------
@pytest.mark.parametrize("n", [2, 3, 17, 32, 33, 100])
@pytest.mark.parametrize("order", ["ascending", "descending", "shuffled"])
def test_a_repeated_fd_is_caught_in_any_order_and_any_count(n, order):
    fds = list(range(3, 3 + n))
    if order == "descending":
        fds.reverse()
    elif order == "shuffled":
        fds = fds[::2] + fds[1::2]
    assert epoll_reply(n, [(EPOLLIN, fd) for fd in fds], n)[0] == n
    for i, j in ((0, n - 1), (n // 2, n // 2 - 1), (n - 1, 0)):
        if i == j:
            continue
        dup = list(fds)
        dup[i] = dup[j]
        with pytest.raises(IagoError, match="twice"):
            epoll_reply(n, [(EPOLLIN, fd) for fd in dup], n)


def test_distinct_fds_far_apart_pass_and_come_back_in_the_hosts_order():
    fds = [2**31 - 1, 0, 7, 2**30, 5, 6, 1, 2**31 - 2]
    n, records = epoll_reply(len(fds), [(EPOLLIN, fd) for fd in fds], len(fds))
    assert n == len(fds)
    assert [fd for fd, _ in records] == fds

"""TRUSTED side: ``select.select``, ``select.poll`` and ``select.epoll``, routed.

All three wait in the host (OP_POLL / OP_EPOLL_WAIT), each in one C crossing that reads the
reply once into enclave memory and checks it there (Transport.poll / Transport.epoll_wait).
A wait that may last (a timeout other than 0) never ties up an RPC worker.  On the rpc path it
is first a zero-timeout check through the ring, an ordinary RPC call: a busy server's wait
finds an fd ready at once and leaves no exit behind.  If nothing is ready, with
ELEOS_RPC_WAIT=spin (the default, as Eleos) the thread blocks in the host's wait in place of
Eleos's spin and makes no exit; the transport's wait makes both steps, two C crossings
(enclave_ocalls.c: rpc_wait).
With ELEOS_RPC_WAIT=ocall the LibOS makes the check and the wait then exits.  (On the ocall
path the check would be one more exit, so there the wait goes out at once.)

What comes back is checked as hostile: a ready fd the enclave never asked about, a pollfd
array reordered or resized, events that were not asked for (beyond ERR/HUP/NVAL, which the
kernel always may report, NVAL alone), an epoll event with no events, more events than
``maxevents``, an fd reported twice, nothing ready after a wait without a timeout: each
raises IagoError.  The checks that need only the request are made in C as the reply is read;
the ones that need the enclave's state (an epoll event on an fd not open, or never
registered, or for events it did not register, or for a oneshot registration its last event
disarmed) are made here, against a record of each registration kept in step with the
kernel's (Epoll._ctl; a closed fd leaves every set, Kernel.forget_fd).
"""
from __future__ import annotations

import errno as _errno
import math
import operator
import select as _select
import threading
import time

from eleos_shim import abi
from eleos_shim.errors import IagoError
from trusted.libos._kernel import (POLLERR, POLLHUP, POLLIN, POLLNVAL, POLLOUT, POLLPRI,
                                   Kernel, oserror)
from trusted.libos.fs import _fildes

FD_SETSIZE = 1024
EPOLL_CLOEXEC = 0o2000000
EPOLL_CTL_ADD, EPOLL_CTL_DEL, EPOLL_CTL_MOD = 1, 2, 3
EPOLLERR, EPOLLHUP = _select.EPOLLERR, _select.EPOLLHUP
# Input-only epoll flags: they shape delivery and are never reported back.
_EPOLL_INPUT_ONLY = (_select.EPOLLET | _select.EPOLLONESHOT | getattr(_select, "EPOLLEXCLUSIVE", 0)
                     | (1 << 29))   # EPOLLWAKEUP
# The record of an epoll registration (``_reportable``, see Epoll._ctl): the events it may
# report, in bits 0-31, or for a oneshot one in bits 32-63 (so that each of its events takes
# the slow way, _oneshot; 0 there once its event has disarmed it) and from bit 64 the number
# of the EPOLL_CTL that made it, oneshot ones numbered in the order they came back (``_ctls``:
# the last number; a wait notes it before it crosses).  Changed under _records.
_ONESHOT = _select.EPOLLONESHOT
_LOW = 0xFFFFFFFF
_ctls = [0]
_records = threading.RLock()      # re-entrant: a signal handler may register on its thread
_READ_SET = POLLIN | POLLHUP | POLLERR      # the kernel's select(): what makes an fd readable
_WRITE_SET = POLLOUT | POLLERR
_EXCEPT_SET = POLLPRI


_INT_MAX = (1 << 31) - 1
_EINTR = -_errno.EINTR
_SEQS = (list, tuple)
_PYTIME_MAX_NS = (1 << 63) - 1           # CPython's _PyTime_t: int64 nanoseconds


def _ms_from_seconds(timeout) -> int:
    """Seconds (None: forever) to poll()'s milliseconds, rounding up as CPython does, with
    CPython's errors: OverflowError when it does not fit an int of milliseconds."""
    if timeout is None:
        return -1
    # A server's loop passes the same float every time (selectors' select(1.0)): its
    # conversion, a pure function of the value, is remembered.  Only floats that converted
    # are kept, and only a float is looked up (1 and True hash as 1.0 and must fail or
    # convert on their own; a NaN raises and is never kept).
    if timeout.__class__ is float:
        ms = _MS_OF_SECONDS.get(timeout)
        if ms is not None:
            return ms
    ms = _timeout_ms(timeout, 1000)
    if ms > _INT_MAX:
        raise OverflowError("timeout is too large")
    if timeout.__class__ is float:
        if len(_MS_OF_SECONDS) >= _MS_CACHE_MAX:
            _MS_OF_SECONDS.clear()
        _MS_OF_SECONDS[timeout] = ms
    return ms


# _ms_from_seconds' remembered conversions (float seconds -> ms), at most this many.
_MS_OF_SECONDS: dict = {}
_MS_CACHE_MAX = 64


def _timeout_ms(value, per_unit: int) -> int:
    """``value`` (seconds: per_unit 1000; milliseconds: 1) as whole milliseconds rounded up,
    as CPython's _PyTime_From*Object + _PyTime_AsMilliseconds(ROUND_TIMEOUT)."""
    if isinstance(value, float):
        if value != value:
            raise ValueError("Invalid value NaN (not a number)")
        ns = value * (1_000_000 * per_unit)
        if not -_PYTIME_MAX_NS - 1 <= ns <= _PYTIME_MAX_NS:
            raise OverflowError("timestamp too large to convert to C _PyTime_t")
        ms = ns / 1_000_000
        return math.ceil(ms) if ms >= 0 else math.floor(ms)
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"'{type(value).__name__}' object cannot be interpreted as an "
                        f"integer") from None
    if abs(value * 1_000_000 * per_unit) > _PYTIME_MAX_NS:
        raise OverflowError("timestamp too large to convert to C _PyTime_t")
    return value * per_unit


def _ushort(value) -> int:
    """CPython's unsigned short converter (poll event masks)."""
    value = operator.index(value)
    if value < 0:
        raise ValueError("value must be positive")
    if value >= 1 << 64:
        raise OverflowError("Python int too large to convert to C unsigned long")
    if value > 0xFFFF:
        raise OverflowError("Python int too large for C unsigned short")
    return value


def wait(kernel: Kernel, call, a, b, ms: int):
    """The app's wait of ``ms`` milliseconds (0: none, -1: no limit) through ``call(a, b,
    ms)``, Kernel.poll or Kernel.epoll_wait, whose reply is checked in C: (count or -errno,
    records).  EINTR is retried (PEP 475) within the time left.  On the rpc path a wait
    that may last is first a check without a timeout, through the ring, so that a busy
    server's wait leaves no exit behind: made by the transport with ELEOS_RPC_WAIT=spin, here
    before the wait's OCALL with ocall (see the module docstring)."""
    if ms == 0:
        n, records = call(a, b, 0)
        while n == _EINTR:
            n, records = call(a, b, 0)
        return n, records
    if kernel.wait_precheck:
        n, records = call(a, b, 0)
        if n != 0 and n != _EINTR:
            return n, records
        # nothing ready yet: wait, as an OCALL
    if ms < 0:
        n, records = call(a, b, -1)
        while n == _EINTR:
            n, records = call(a, b, -1)
        return n, records
    # The first wait is for all of ms; only a wait cut short by a signal needs the clock.
    deadline = time.monotonic() + ms / 1000
    n, records = call(a, b, ms)
    while n == _EINTR:
        n, records = call(a, b, kernel.wait_ms(deadline))
    return n, records


class Select:
    """``select.select``: a callable object, not a function, so that a class attribute holding
    it (``selectors.SelectSelector._select``) is not turned into a bound method."""

    def __init__(self, kernel: Kernel):
        self.kernel = kernel
        self.__name__ = "select"
        self.__doc__ = _select.select.__doc__

    def __repr__(self):
        return "<built-in function select (eleos-shim)>"

    def __call__(self, rlist, wlist, xlist, timeout=None, /):
        if timeout is not None:
            if not isinstance(timeout, (int, float)):
                raise TypeError("timeout must be a float or None")
            if timeout < 0:
                raise ValueError("timeout must be non-negative")
            if isinstance(timeout, float) and timeout != timeout:
                raise ValueError("Invalid value NaN (not a number)")
        # (An empty list or tuple, the usual write and except lists, has nothing to convert.)
        r = _select_entries(rlist)
        w = [] if wlist.__class__ in _SEQS and not wlist else _select_entries(wlist)
        x = [] if xlist.__class__ in _SEQS and not xlist else _select_entries(xlist)
        if not w and not x:
            # Read fds only: one entry each (an fd listed twice is asked about twice, which
            # poll allows and which comes back the same).
            fds = [fd for _, fd in r]
            evs = [POLLIN] * len(fds)
        else:
            events: dict[int, int] = {}
            for _, fd in r:
                events[fd] = POLLIN
            for _, fd in w:
                events[fd] = events.get(fd, 0) | POLLOUT
            for _, fd in x:
                events[fd] = events.get(fd, 0) | POLLPRI
            fds, evs = list(events), list(events.values())
        k = self.kernel
        ms = -1 if timeout is None else 0 if timeout == 0 else \
            k.wait_ms(time.monotonic() + timeout)
        n, ready = wait(k, k.poll, fds, evs, ms)
        if n < 0:
            raise oserror(-n)
        if not ready:
            return [], [], []
        got = dict(ready)
        for rr in got.values():
            if rr & POLLNVAL:
                raise oserror(_errno.EBADF)       # as the kernel's select() on a closed fd
        return ([obj for obj, fd in r if got.get(fd, 0) & _READ_SET] if r else [],
                [obj for obj, fd in w if got.get(fd, 0) & _WRITE_SET] if w else [],
                [obj for obj, fd in x if got.get(fd, 0) & _EXCEPT_SET] if x else [])


def _select_entries(seq) -> list:
    """select()'s (object, fd) pairs of one of its lists, as CPython's seq2set makes them."""
    if not isinstance(seq, (list, tuple)):
        try:
            seq = list(seq)
        except TypeError:
            raise TypeError("arguments 1-3 must be sequences") from None
    entries = []
    i = 0
    # By index against the current length, as CPython's seq2set: a fileno() that changes
    # the list changes what is selected.
    while i < len(seq):
        obj = seq[i]
        fd = _fildes(obj)
        if fd >= FD_SETSIZE:
            raise ValueError("filedescriptor out of range in select()")
        entries.append((obj, fd))
        i += 1
    return entries


class Poll:
    """``select.poll()`` objects.  As the C type, it cannot be instantiated directly (only
    ``select.poll()`` makes them): see :func:`new_poll`."""

    _k: Kernel

    def __init__(self, *args, **kwargs):
        raise TypeError("cannot create 'select.poll' instances")

    def _setup(self):
        self._fds: dict[int, int] = {}
        self._table = None          # ([fd], [events as signed shorts]), made once per change
        self._busy = threading.Lock()
        return self

    def register(self, fd, eventmask=POLLIN | POLLPRI | POLLOUT, /):
        fd = _fildes(fd)
        self._fds[fd] = _ushort(eventmask)
        self._table = None

    def modify(self, fd, eventmask, /):
        fd = _fildes(fd)
        eventmask = _ushort(eventmask)
        if fd not in self._fds:
            raise oserror(_errno.ENOENT)
        self._fds[fd] = eventmask
        self._table = None

    def unregister(self, fd, /):
        fd = _fildes(fd)
        if fd not in self._fds:
            raise KeyError(fd)
        del self._fds[fd]
        self._table = None

    def poll(self, timeout=None, /):
        if timeout is None:
            ms = -1
        elif timeout.__class__ is int and 0 <= timeout <= _INT_MAX:
            ms = timeout
        else:
            try:
                ms = _timeout_ms(timeout, 1)
            except TypeError:
                raise TypeError("timeout must be an integer or None") from None
            if not -_INT_MAX - 1 <= ms <= _INT_MAX:
                raise OverflowError("timeout is too large")
            ms = -1 if ms < 0 else ms
        if not self._busy.acquire(blocking=False):
            raise RuntimeError("concurrent poll() invocation")
        try:
            table = self._table
            if table is None:
                table = self._table = (list(self._fds), [ev if ev < 0x8000 else ev - 0x10000
                                                         for ev in self._fds.values()])
            fds, evs = table
            k = self._k
            n, ready = wait(k, k.poll, fds, evs, ms)
            if n < 0:
                raise oserror(-n)
            return ready
        finally:
            self._busy.release()


class Epoll:
    """``select.epoll`` objects over a host epoll fd (``data.u64`` carries the fd)."""

    _k: Kernel

    def __init__(self, sizehint=-1, flags=0):
        sizehint, flags = operator.index(sizehint), operator.index(flags)
        if sizehint == 0 or sizehint < -1:
            raise ValueError("negative sizehint")
        if flags and flags != EPOLL_CLOEXEC:
            raise OSError("invalid flags")
        r = self._k.check(abi.OP_EPOLL_CREATE, EPOLL_CLOEXEC)
        self._epfd = self._k.adopt_fd(r.ret, "epoll_create")
        # What each fd registered on this epoll fd may report (what it asked for, less the
        # input-only flags, plus ERR/HUP), shared by every object on it (fromfd).
        self._registered: dict[int, int] | None = self._k.epoll_sets.setdefault(self._epfd, {})

    @classmethod
    def fromfd(cls, fd, /):
        self = cls.__new__(cls)
        self._epfd = _fildes(fd)
        # An epoll fd the enclave made shares its registrations; one from elsewhere is
        # unknown (only fd >= 0 is checkable then).
        self._registered = self._k.epoll_sets.get(self._epfd)
        self._k.own_fd(self._epfd)
        return self

    def _check_open(self) -> int:
        if self._epfd < 0:
            raise ValueError("I/O operation on closed epoll object")
        return self._epfd

    @property
    def closed(self) -> bool:
        return self._epfd < 0

    def fileno(self) -> int:
        return self._check_open()

    def close(self) -> None:
        if self._epfd >= 0:
            fd, self._epfd = self._epfd, -1
            # Another object on the same fd (fromfd) may have closed it already: closing the
            # number again could close an fd opened since.
            if fd in self._k.fds:
                self._k.close(fd)

    def __enter__(self):
        self._check_open()
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        if getattr(self, "_epfd", -1) >= 0:
            try:
                self.close()
            except Exception:   # noqa: BLE001 - a finalizer must not raise
                pass

    def _ctl(self, op, fd, eventmask):
        """EPOLL_CTL ``op`` of ``fd``, and its record kept in step with the kernel: another
        thread's wait may report ``fd`` as soon as the kernel has taken the ctl, before this
        thread runs again, so an ADD or MOD is recorded before the crossing (while it is out,
        what was registered before may still come too) and undone if the kernel refuses; a
        DEL is recorded after it (until then events may still come)."""
        epfd = self._check_open()
        fd = _fildes(fd)
        reg = self._registered
        if reg is None or op == EPOLL_CTL_DEL:
            self._k.check(abi.OP_EPOLL_CTL, epfd, op, fd, eventmask & _LOW)
            if reg is not None:
                with _records:
                    reg.pop(fd, None)
            return
        new = _reportable(eventmask)
        with _records:
            old = reg.get(fd)
            # while it is out: what either allows, never disarmed by an event
            reg[fd] = _allows(new) if old is None else _allows(old) | _allows(new)
        try:
            self._k.check(abi.OP_EPOLL_CTL, epfd, op, fd, eventmask & _LOW)
        except BaseException:
            with _records:
                if old is None:
                    reg.pop(fd, None)
                else:
                    reg[fd] = old
            raise
        with _records:
            if new > _LOW:                  # oneshot: numbered
                _ctls[0] = n = _ctls[0] + 1
                new |= n << 64
            reg[fd] = new

    def register(self, fd, eventmask=_select.EPOLLIN | _select.EPOLLPRI | _select.EPOLLOUT):
        self._ctl(EPOLL_CTL_ADD, fd, eventmask)

    def modify(self, fd, eventmask):
        self._ctl(EPOLL_CTL_MOD, fd, eventmask)

    def unregister(self, fd):
        self._ctl(EPOLL_CTL_DEL, fd, 0)

    def poll(self, timeout=None, maxevents=-1):
        epfd = self._epfd
        if epfd < 0:
            raise ValueError("I/O operation on closed epoll object")
        if timeout is None:
            ms = -1
        elif (timeout.__class__ is int or timeout.__class__ is float) and timeout == 0:
            ms = 0          # selectors' select(0): nothing to convert
        elif timeout < 0:
            ms = -1
        else:
            ms = _ms_from_seconds(timeout)
        if maxevents == -1:
            maxevents = FD_SETSIZE - 1
        elif maxevents < 1:
            raise ValueError(f"maxevents must be greater than 0, got {maxevents}")
        k = self._k
        since = _ctls[0]
        n, events = wait(k, k.epoll_wait, epfd, maxevents, ms)
        if n < 0:
            raise oserror(-n)
        # Counted, sized, each fd possible and reported once, each with some event: checked
        # in C as it was read (Transport.epoll_wait).  What the enclave knows of each fd is
        # checked here.
        reg, open_fds = self._registered, k.fds
        if reg is not None:
            # The common case in one test per event: an open fd, registered without
            # EPOLLONESHOT, for (at least) these events.  An unregistered fd (0) or a oneshot
            # record (nothing below bit 32) fails it, as any event is nonzero (checked in C);
            # whatever fails it gets the full checks below, in their order.
            get = reg.get
            for fd, ev in events:
                if ev & ~get(fd, 0) or fd not in open_fds:
                    break
            else:
                return events
        for fd, ev in events:
            if fd not in open_fds:
                raise IagoError(f"host's epoll_wait reports fd {fd}, which is not open")
            if reg is not None:
                allowed = reg.get(fd)
                if allowed is None:
                    raise IagoError(f"host's epoll_wait reports fd {fd}, which was never "
                                    f"registered")
                if ev & ~allowed:
                    _oneshot(reg, fd, ev, allowed, since)
        return events

def _reportable(eventmask: int) -> int:
    """The record of a registration of ``eventmask`` (without its number): the events
    epoll_wait may report for it, what it asks for less the flags that only shape delivery,
    and ERR/HUP, which the kernel always may; for a oneshot one, above bit 32."""
    allowed = (eventmask & _LOW & ~_EPOLL_INPUT_ONLY) | EPOLLERR | EPOLLHUP
    return allowed << 32 if eventmask & _ONESHOT else allowed


def _allows(record: int) -> int:
    """The events a record allows (a oneshot one's, armed or not, as a plain one's)."""
    return (record | record >> 32) & _LOW


def _oneshot(reg: dict, fd: int, ev: int, allowed: int, since: int) -> None:
    """Events ``ev`` on ``fd`` beyond its record's plain events: a lie, unless ``allowed`` is a
    oneshot registration's.  Its one event is taken as the kernel takes it: none at all
    comes after it until EPOLL_CTL_MOD, and it goes to one wait, so if another wait has had it
    this one is a lie.  A record made while this wait was out (numbered above ``since``, the
    last number before it) may have been armed after this event, and one disarmed since by
    another wait's event this one may be from the arm before: such a record stays as it is."""
    mask, made = allowed >> 32 & _LOW, allowed >> 64
    if allowed & _LOW or ev & ~mask and mask:
        raise IagoError(f"host's epoll_wait reports events {ev:#x} on fd {fd}, registered "
                        f"for {_allows(allowed) & ~(EPOLLERR | EPOLLHUP):#x}")
    if made > since:
        return
    if mask:
        with _records:
            now = reg.get(fd)
            if now == allowed:
                reg[fd] = made << 64                  # disarmed
                return
        if now is None or now >> 64 != made or _allows(now):
            return                                    # unregistered or remade since
    raise IagoError(f"host's epoll_wait reports events {ev:#x} on fd {fd}, which its oneshot "
                    f"registration disarmed at its one event")


def epoll_class(kernel: Kernel):
    return type("epoll", (Epoll,), {"_k": kernel, "__module__": "select"})


def poll_class(kernel: Kernel):
    """The type of ``select.poll()`` objects for this kernel, named as the C type."""
    return type("poll", (Poll,), {"_k": kernel, "__module__": "select",
                                  "__qualname__": "poll", "__doc__": Poll.__doc__})


def new_poll(cls):
    """``select.poll()``: a new poll object of ``cls`` (a :func:`poll_class` type)."""
    return cls.__new__(cls)._setup()

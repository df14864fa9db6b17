"""The shared EPC of a domain, Python side (untrusted/: the host).

A thin wrapper over the domain table of ``untrusted/_native/epc_domain.c`` (where the design
is described): enclave processes started with the same ``ELEOS_EPC_DOMAIN`` take their EPC
frames from one table in shared memory (``/dev/shm/eleos-epc-NAME``), so their resident pages
together never exceed the domain's EPC; the SGX driver models of all of them reclaim from one
global LRU; a process that dies gives its frames back (robust mutexes, found by the next one
that looks).

:class:`Domain` is a membership (one per enclave process); :func:`snapshot` reads a domain's
state as ``eleos-shim epc NAME`` shows it.  The balloon manager (the policy that sets SUVM
enclaves' targets) is in :mod:`untrusted.balloon_host`.
"""
from __future__ import annotations

import os
import threading
import time

from untrusted._native._epc import ffi, lib
from untrusted.threads import host_thread

PAGE = 4096
KINDS = {"sgx": lib.EPC_DOM_SGX, "suvm": lib.EPC_DOM_SUVM}
KIND_NAMES = {v: k for k, v in KINDS.items()}
HEADER = ("limit_pages", "used_pages", "low_watermark", "high_watermark", "members", "deaths",
          "dead_pages_reclaimed", "stamp", "kicks", "frame_waits", "stuck_fallbacks", "manager_pid",
          "manager_changes")
MEMBER = ("slot", "pid", "kind", "resident_pages", "target_pages", "floor_pages", "cap_pages",
          "loads", "returned", "demand", "oldest", "joined_ns")
# How often a member samples its resident count for the stats' history: a second is enough
# to see a phase change, and costs nothing.
HISTORY_INTERVAL_S = 1.0
HISTORY_MAX = 3600


class DomainError(OSError):
    """The domain could not be joined or read; ``str()`` says why in one line."""

    def __str__(self) -> str:
        return str(self.strerror)


def _message(name: str, err: int, limit_pages: int = 0) -> str:
    if err == lib.EPC_DOM_ELIMIT:
        have = _peek_limit(name)
        return (f"ELEOS_EPC_DOMAIN={name!r}: the domain's EPC is {have * PAGE / 2**20:g} MB, not "
                f"ELEOS_EPC_MB={limit_pages * PAGE / 2**20:g} (give every member the same size)")
    if err == lib.EPC_DOM_EFULL:
        return f"ELEOS_EPC_DOMAIN={name!r}: the domain has {lib.EPC_DOM_MAX_MEMBERS} enclaves already"
    if err == lib.EPC_DOM_ELAYOUT:
        return (f"ELEOS_EPC_DOMAIN={name!r}: /dev/shm/eleos-epc-{name} is not a domain table of this "
                "version (remove it if no enclave uses it)")
    if err == lib.EPC_DOM_EFLOOR:
        return (f"ELEOS_EPC_DOMAIN={name!r}: the domain's EPC stayed too full to hold this enclave's "
                "floor (its other members hold pages they cannot give back)")
    if err == -2:
        return f"no EPC domain {name!r} (no enclave runs in it)"
    if err == -22:
        return (f"ELEOS_EPC_DOMAIN={name!r}: expected a name of 1-64 letters, digits, '-', '_' or '.' "
                "(not starting with '.')")
    return f"EPC domain {name!r}: {os.strerror(-err)}"


def _peek_limit(name: str) -> int:
    try:
        return snapshot(name)["limit_pages"]
    except DomainError:
        return 0


class Domain:
    """This process's membership of domain ``name`` (created if needed) of ``limit_pages``.

    ``kind`` is ``sgx`` (frames taken one by one by the SGX driver model) or ``suvm`` (a
    balloon: ``floor_pages`` held from the start, up to ``cap_pages``).  Leaving (``leave()``)
    gives every frame back; so does the death of the process."""

    def __init__(self, name: str, limit_pages: int, kind: str = "sgx", *, floor_pages: int = 0,
                 cap_pages: int = 0):
        self.name = name
        err = ffi.new("int *")
        self._h = lib.epc_domain_join(name.encode(), limit_pages, KINDS[kind], floor_pages,
                                      cap_pages, err)
        if self._h == ffi.NULL:
            raise DomainError(-err[0], _message(name, err[0], limit_pages))
        self.kind = kind
        self.limit_pages = limit_pages
        self.slot = lib.epc_domain_slot(self._h)
        self.history: list[tuple[float, int, int, int]] = []   # (t, resident, target, used)
        self._t0 = time.monotonic()
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None

    @property
    def address(self) -> int:
        """The handle's address, for the driver (epc_driver_use_domain)."""
        return int(ffi.cast("uintptr_t", self._h))

    # -- frames and balloons -------------------------------------------------------------------

    def take(self, n: int) -> int:
        """Reserve up to ``n`` free frames; returns how many were granted."""
        seq = ffi.new("uint32_t *")
        return int(lib.epc_domain_take(self._h, n, seq))

    def put(self, n: int) -> None:
        lib.epc_domain_put(self._h, n)

    def held(self) -> int:
        """Frames the table counts for this member."""
        me = [m for m in self.snapshot()["members"] if m["slot"] == self.slot]
        return me[0]["resident_pages"] if me else 0

    def take_floor(self, floor_pages: int, timeout_s: float) -> int:
        """Hold at least ``floor_pages`` (a balloon's floor): take what is missing as other
        members give frames back (their balloons shrink once the manager counts this one).
        Returns the pages held; raises :class:`DomainError` after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        held = self.held()
        seq = ffi.new("uint32_t *")
        while held < floor_pages:
            got = int(lib.epc_domain_take(self._h, floor_pages - held, seq))
            held += got
            if held >= floor_pages:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                raise DomainError(0, _message(self.name, lib.EPC_DOM_EFLOOR))
            if not got:
                lib.epc_domain_wait_freed(self._h, seq[0], int(min(left, 0.5) * 1000))
        return held

    def target(self) -> tuple[int, int]:
        """``(target pages, sequence)``: the manager's request and the futex value to wait on."""
        seq = ffi.new("uint32_t *")
        t = lib.epc_domain_target(self._h, seq)
        return int(t), int(seq[0])

    def wait_target(self, seq: int, timeout_s: float) -> None:
        """Sleep until the manager writes a new target or ``timeout_s`` passes (GIL released)."""
        lib.epc_domain_wait_target(self._h, seq, int(timeout_s * 1000))

    def set_target(self, slot: int, pages: int) -> bool:
        """The manager's write: member ``slot``'s balloon should be ``pages``."""
        return lib.epc_domain_set_target(self._h, slot, pages) == 0

    def publish(self, loads: int, evictions: int, demand: int) -> None:
        lib.epc_domain_publish(self._h, loads, evictions, demand)

    def manage(self, timeout_s: float) -> bool:
        """Try to become the domain's manager (blocks up to ``timeout_s``)."""
        return bool(lib.epc_domain_manage(self._h, int(timeout_s * 1000)))

    def unmanage(self) -> None:
        lib.epc_domain_unmanage(self._h)

    def snapshot(self) -> dict:
        return _snapshot(self._h, self.name)

    # -- history for the stats -------------------------------------------------------------------

    def record(self) -> None:
        """Append (t, resident, target, domain used) of this member to :attr:`history`."""
        snap = self.snapshot()
        me = next((m for m in snap["members"] if m["slot"] == self.slot), None)
        if me is not None and len(self.history) < HISTORY_MAX:
            self.history.append((round(time.monotonic() - self._t0, 3), me["resident_pages"],
                                 me["target_pages"], snap["used_pages"]))

    def start_history(self, interval_s: float = HISTORY_INTERVAL_S) -> None:
        """Sample :meth:`record` every ``interval_s`` in a daemon thread until :meth:`leave`."""
        def run():
            while not self._stop.wait(interval_s):
                self.record()
        self.record()
        self._sampler = host_thread(run, "eleos-epc-domain-history")
        self._sampler.start()

    def stats(self) -> dict:
        """The ``epc_domain`` section of the stats JSON."""
        out = {"name": self.name, "slot": self.slot, "kind": self.kind,
               "limit_bytes": self.limit_pages * PAGE,
               "history": {"t_s": [h[0] for h in self.history],
                           "resident_pages": [h[1] for h in self.history],
                           "target_pages": [h[2] for h in self.history],
                           "domain_used_pages": [h[3] for h in self.history]}}
        if self._h is not None:
            snap = self.snapshot()
            me = next((m for m in snap["members"] if m["slot"] == self.slot), {})
            out.update({"resident_pages": me.get("resident_pages", 0),
                        "target_pages": me.get("target_pages", 0),
                        "domain_used_pages": snap["used_pages"], "domain_members": len(snap["members"]),
                        "domain_deaths": snap["deaths"]})
        return out

    def leave(self) -> None:
        """Give every frame back and free the slot.  Idempotent."""
        self._stop.set()
        if self._sampler is not None:
            self._sampler.join()
            self._sampler = None
        if self._h is not None:
            self.record()
            lib.epc_domain_leave(self._h)
            self._h = None


def _snapshot(h, name: str) -> dict:
    hdr = ffi.new("uint64_t[]", len(HEADER))
    rows = ffi.new("uint64_t[]", lib.EPC_DOM_MAX_MEMBERS * len(MEMBER))
    n = lib.epc_domain_snapshot(h, hdr, rows, lib.EPC_DOM_MAX_MEMBERS)
    if n < 0:
        raise DomainError(-n, _message(name, n))
    d = {k: int(hdr[i]) for i, k in enumerate(HEADER)}
    d["name"] = name
    d["free_pages"] = max(0, d["limit_pages"] - d["used_pages"])
    members = []
    for r in range(n):
        m = {k: int(rows[r * len(MEMBER) + i]) for i, k in enumerate(MEMBER)}
        m["kind"] = KIND_NAMES.get(m["kind"], "?")
        members.append(m)
    d["members"] = members
    return d


class Observer:
    """Domain ``name`` seen from outside (tools, tests): :meth:`snapshot` and a wait for the
    next change of its frames.  Raises :class:`DomainError` if there is no such domain."""

    def __init__(self, name: str):
        self.name = name
        err = ffi.new("int *")
        self._h = lib.epc_domain_open(name.encode(), err)
        if self._h == ffi.NULL:
            raise DomainError(-err[0], _message(name, err[0]))

    def snapshot(self) -> dict:
        return _snapshot(self._h, self.name)

    def wait_freed(self, timeout_s: float) -> None:
        """Sleep until some member gives frames back, or ``timeout_s`` (GIL released)."""
        lib.epc_domain_wait_freed(self._h, lib.epc_domain_freed_seq(self._h), int(timeout_s * 1000))

    def close(self) -> None:
        if self._h is not None:
            lib.epc_domain_close(self._h)
            self._h = None


def snapshot(name: str) -> dict:
    """Domain ``name``'s state (members whose process died are swept first: their frames are
    back in ``free_pages``).  Raises :class:`DomainError` if there is no such domain."""
    err = ffi.new("int *")
    h = lib.epc_domain_open(name.encode(), err)
    if h == ffi.NULL:
        raise DomainError(-err[0], _message(name, err[0]))
    try:
        return _snapshot(h, name)
    finally:
        lib.epc_domain_close(h)


def remove(name: str) -> None:
    """Unlink domain ``name``'s table (tests; members that have it mapped keep theirs)."""
    lib.epc_domain_unlink(name.encode())

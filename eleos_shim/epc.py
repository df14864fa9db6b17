"""The enclave heap under vanilla SGX: memory in the EPC, paged by the SGX driver (eleos_shim/).

``EPC(cfg)`` joins the two halves as the loader does for the app: the modeled CPU's paging
instructions (``eleos_shim._native._epcm``: EWB/ELDU under the CPU's key, the version array)
and the host's driver (``untrusted.epc``: the EPC limit, the traps (by default SIGBUS from
userfaultfd, resolved in the faulting thread; a userfaultfd or SIGSEGV handler thread as options),
direct or ksgxswapd-style background reclaim), which gets EWB, ELDU and the transition charges
as addresses.

``EPC.map(n)`` returns a real :class:`mmap.mmap` (a subclass that releases its EPC frames on
close) whose pages live in the EPC: slicing, the buffer protocol, memoryview and numpy work
unchanged, and every access to a page that is not resident is a real page fault (served in
the faulting thread's SIGBUS handler by default).  :func:`heap_factory` is what the LibOS calls for an app's anonymous
``mmap.mmap(-1, n)`` under ``ELEOS_MEMORY=epc``.

Integrity, fail-stop: when ELDU finds a tampered, swapped or replayed page the CPU marks the
enclave dead and sends a real-time signal to the main thread (tgkill, from the native thread
that ran ELDU: no GIL needed; a main thread blocked in a lock or a syscall is woken).  Its
Python-level handler, installed here, raises :class:`eleos_shim.IntegrityError` in the main
thread at its next bytecode boundary, and also in the faulting thread if that is another one
(``PyThreadState_SetAsyncExc``).  The faulting access itself never sees the
bad plaintext (the CPU wiped it); the kernel holds the thread until the driver installs a zero
page in its place, because a thread blocked in a fault cannot be unwound into Python.  Every
later call of this API raises IntegrityError too (:meth:`EPC.check`).  If the EPC is created
outside the main thread, the signal path is not available and only :meth:`EPC.check` reports.
"""
from __future__ import annotations

import ctypes
import errno
import mmap
import os
import signal
import threading
import time
import weakref

from eleos_shim._native._epcm import ffi as _epcm_ffi, lib as _epcm
from eleos_shim.config import Config
from eleos_shim.errors import IagoError, IntegrityError
from trusted.cargs import ssize

PAGE = 4096
# Fault-handling driver threads: enough for faults on different pages to be served at once,
# no more than the cores they would queue behind.
DRIVER_THREADS = max(2, min(4, os.cpu_count() or 2))
# The real-time signal that delivers an ELDU failure to Python; glibc keeps the first few
# real-time signals for itself, the last ones are free.
INTEGRITY_SIGNAL = signal.SIGRTMAX - 3

_REASONS = {1: "its version slot is occupied", 2: "no sealed copy may be loaded there (replayed)",
            3: "its AES-GCM tag does not verify (tampered with, swapped or replayed)",
            4: "bad version slot (not the slot of that page)", 5: "libcrypto failed",
            6: "no enclave memory is at that address",
            7: "the verified page could not be put in enclave memory",
            8: "another paging instruction was working on that page (the host raced them)",
            9: "the driver's sealed page or tag buffer lies in enclave memory"}

_current: "EPC | None" = None
_ZERO_PAGE = bytes(PAGE)


def _integrity_message() -> str:
    st = _epcm_ffi.new("uint64_t[8]")
    _epcm.epcm_status(st)
    why = _REASONS.get(int(st[1]), "it failed to load")
    return (f"ELDU of the EPC page at {int(st[2]):#x} failed: {why}; the enclave is dead "
            "(the host tampered with its backing store)")


def _on_integrity_failure(signum, frame):  # runs in the main thread, between bytecodes
    inst = _current
    if inst is not None and inst._driver is not None:
        # The CPU signals from inside ELDU; the driver records which thread faulted just after
        # ELDU returns.  Give it that moment (bounded: a stopped driver never records).
        deadline = time.monotonic() + 0.5
        dead, tid, _addr = inst._driver.failure()
        while not dead and time.monotonic() < deadline:
            time.sleep(0.0002)
            dead, tid, _addr = inst._driver.failure()
        for t in threading.enumerate():
            if t.native_id == tid and t is not threading.main_thread():
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(t.ident),
                                                           ctypes.py_object(IntegrityError))
    raise IntegrityError(_integrity_message())


class EPCMap(mmap.mmap):
    """An anonymous-memory mmap whose pages live in the EPC.  Everything mmap.mmap offers works,
    ``resize`` included; ``close()`` (or garbage collection) returns its frames to the EPC.

    The object is a real anonymous mmap (no fd, as ``mmap.mmap(-1, n)`` is) whose pages are
    replaced, in place, by a shared mapping of the driver's region: the kernel then holds the
    region's memory and the mmap object only its address, which is what lets ``resize`` swap
    in a new region (the driver has no call that grows or shrinks one)."""

    def __new__(cls, epc: "EPC", length: int):
        epc.check()
        if length < 0:                 # the errors mmap.mmap(-1, n) gives
            raise OverflowError("memory mapped length must be positive")
        if length == 0:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        region = epc._region_new(length)
        try:
            self = super().__new__(cls, -1, length)
        except BaseException:
            epc._region_drop(region)
            raise
        self._epc = epc
        try:
            epc._region_place(self, region, _address_of(self), length)
        except BaseException:
            super(EPCMap, self).close()
            raise
        return self

    @property
    def address(self) -> int:
        """Where the app's view of the region starts (for C loops over it)."""
        return self._epc_address

    def resize(self, newsize: int) -> None:
        """As ``mmap.resize`` of an anonymous map: the same errors in the same order; the
        contents up to the smaller size kept, zeros beyond the old end, the position
        unchanged (a position past the new end reads nothing).  A new region replaces the old
        one (realloc: allocate, copy, free), so the map may move; its EPC frames follow what
        is resident.  Growing works (the kernel's own shared anonymous maps cannot grow).
        Not atomic for other threads: one that touches the map meanwhile may fault."""
        size = len(self)                      # ValueError once closed (CHECK_VALID)
        newsize = ssize(newsize)              # TypeError / OverflowError, as the "n" format
        super().resize(size)                  # exports, access: a same-size mremap is a no-op
        if newsize < 0:
            raise ValueError("new size out of range")
        if newsize == 0:                      # what mremap(2) says to a zero length
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        self._epc.check()
        self._epc._region_resize(self, newsize)

    def close(self) -> None:
        super().close()              # BufferError while views exist: then nothing changes
        self._epc_release()

    def __exit__(self, *exc) -> None:
        # The C __exit__ calls the C close directly, which would unmap the region without
        # giving its frames back or telling the CPU.
        self.close()


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
# Linux's values; the mmap module does not export them.
_MAP_FIXED = 0x10
_PROT_NONE = 0
_MAP_NORESERVE = 0x4000


def _map_fixed(address: int, length: int, prot: int, flags: int, fd: int) -> None:
    """mmap(2) over [address, address+length), replacing what the caller owns there."""
    got = _libc.mmap(address, length, prot, flags | _MAP_FIXED, fd, 0)
    if got != address:
        err = ctypes.get_errno() if got in (None, ctypes.c_void_p(-1).value) else errno.EFAULT
        raise OSError(err, f"mapping an EPC region at {address:#x}: {os.strerror(err)}")


def _address_of(m: mmap.mmap) -> int:
    ffi = _driver_ffi()
    buf = ffi.from_buffer(m)
    try:
        return int(ffi.cast("uintptr_t", buf))
    finally:
        ffi.release(buf)


def _driver_ffi():
    from untrusted._native._epc import ffi
    return ffi


class EPC:
    """The enclave's EPC with the SGX driver paging it (one per process at a time).

    ``EPC(cfg, cpu)`` starts the driver with ``cfg.epc_bytes`` of EPC and ``cfg.epc_trap``;
    ``cpu`` (eleos_shim.cpu.ModeledCPU) is charged each fault's budget (ELEOS_EPC_FAULT_CYCLES)
    and the indirect cost after it (one is built from ``cfg`` if not given).  Use as a context manager or call close().
    """

    def __init__(self, cfg: Config | None = None, cpu=None, *, threads: int = DRIVER_THREADS):
        global _current
        from untrusted.epc import EPCDriver
        if _current is not None:
            raise RuntimeError("an EPC is already running in this process; close it first")
        self.cfg = cfg = cfg or Config.from_env()
        if cpu is None:
            from eleos_shim.cpu import ModeledCPU
            cpu = ModeledCPU(cfg)
        self.cpu = cpu
        if _epcm.epcm_init() != 0:
            raise OSError("the CPU could not draw its paging key")
        _epcm.epcm_reset()
        self._regions: dict[int, tuple[int, int]] = {}
        self._maps: dict[int, weakref.ref] = {}      # region id -> its map (fork's checkpoint)
        self._threads = threads
        self._lock = threading.Lock()
        self.domain = None
        if cfg.epc_domain:
            # The EPC is the domain's: the sum of all its enclaves' resident pages stays within it.
            from untrusted.epc_domain import Domain, DomainError
            try:
                self.domain = Domain(cfg.epc_domain, cfg.epc_bytes // PAGE, "sgx")
            except DomainError as exc:   # a setting that cannot work: one line, exit status 2
                from eleos_shim.config import ConfigError
                raise ConfigError(str(exc)) from None
        try:
            self._driver = EPCDriver(cfg.epc_bytes, ewb_fn=_epcm.epcm_ewb_fn(),
                                     eldu_fn=_epcm.epcm_eldu_fn(), charge_fn=cpu.charge_fn,
                                     pollute_fn=cpu.pollute_fn, shift_fn=cpu.shift_fn,
                                     trap=cfg.epc_trap, threads=threads,
                                     reclaim=cfg.epc_reclaim, domain=self.domain,
                                     tick_hz=cpu.tsc_hz)
        except BaseException:
            if self.domain is not None:
                self.domain.leave()
            raise
        if self.domain is not None:
            self.domain.start_history()
        self.trap = self._driver.trap
        # The trap's delivery and return run where no code can time them: the driver measured
        # them once; each fault's real part includes them.
        self.trap_cycles = self._driver.trap_cycles
        cpu.set_trap_cycles(self.trap_cycles, self._driver.trap_return_cycles)
        self._old_handler = None
        if threading.current_thread() is threading.main_thread():
            self._old_handler = signal.signal(INTEGRITY_SIGNAL, _on_integrity_failure)
            _epcm.epcm_arm(INTEGRITY_SIGNAL, threading.get_native_id())
        _current = self

    # -- the explicit API --------------------------------------------------------------------

    def map(self, length: int) -> EPCMap:
        """``length`` bytes of zeroed enclave memory in the EPC, as a real mmap object."""
        return EPCMap(self, length)

    # -- regions behind the maps -------------------------------------------------------------

    def _region_new(self, length: int) -> tuple[int, int, int, int]:
        """A driver region of ``length`` bytes with its own VA slots, not yet mapped:
        ``(region id, memfd, first VA slot, pages)``."""
        npages = (length + PAGE - 1) // PAGE
        va_first = _epcm.epcm_epa(npages)
        if not va_first:
            raise MemoryError("the CPU's version array is full")
        try:
            rid, memfd = self._driver.create_region(length, va_first)
        except BaseException:
            _epcm.epcm_eremove(va_first, npages)
            raise
        with self._lock:
            taken = rid in self._regions
        if taken:
            # A live region's id handed out again: attaching, freeing or evicting "this" region
            # would act on the other one (its frames freed while the app maps them).  Nothing
            # is dropped: the id names the other region.
            _epcm.epcm_eremove(va_first, npages)
            raise IagoError(f"the EPC driver gave region id {rid} to a second region")
        return rid, memfd, va_first, npages

    def _region_drop(self, region: tuple[int, int, int, int]) -> None:
        rid, _memfd, va_first, npages = region
        try:
            self._driver.destroy(rid)
        finally:
            _epcm.epcm_eremove(va_first, npages)     # whatever the driver answers

    def _region_place(self, m: EPCMap, region: tuple[int, int, int, int], address: int,
                      length: int) -> None:
        """Put ``region`` under ``m``'s pages at ``address`` (the mmap object's own anonymous
        memory, which it replaces), tell the CPU and trap its accesses; on failure the region
        is dropped and ``m``'s memory is whatever was there."""
        rid, memfd, va_first, npages = region
        try:
            _map_fixed(address, npages * PAGE, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED,
                       memfd)
            # Enclave memory is not in a core dump (SGX's VMAs are VM_DONTDUMP): a host that
            # makes the app dump core gets no plaintext of its resident pages.
            _libc.madvise(address, npages * PAGE, mmap.MADV_DONTDUMP)
            # The CPU learns from the enclave, not from the driver, where this region lives and
            # which memory backs it: ELDU installs a page only at the address it verified.
            rc = _epcm.epcm_region_add(address, length, va_first, memfd)
            if rc < 0:
                raise OSError(-rc, f"the CPU refused the EPC region: {os.strerror(-rc)}")
        except BaseException:
            self._region_drop(region)
            raise
        m._epc_region = rid
        m._epc_pages = npages
        m._epc_address = address
        m._epc_release = weakref.finalize(m, self._release, rid, va_first, npages, address)
        with self._lock:
            self._regions[rid] = (address, npages)
            self._maps[rid] = weakref.ref(m)
        try:
            self._driver.attach(rid, address)
        except BaseException:
            m._epc_release()
            raise

    def _region_resize(self, m: EPCMap, newsize: int) -> None:
        """Give ``m`` a new region of ``newsize`` bytes holding its contents (realloc).  The
        contents are copied into enclave memory first, so a failure once the old region is
        gone puts them back, in a new region under the map as it then is."""
        old_size, address = len(m), m._epc_address
        region = self._region_new(newsize)                 # fails: nothing changed
        content = m[:]
        parked = resized = False
        try:
            # Park the map's pages on private anonymous memory: mremap then moves nothing the
            # driver traps, and the old region can go (its frames back, its slots EREMOVEd).
            _map_fixed(address, m._epc_pages * PAGE, _PROT_NONE,
                       mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE, -1)
            parked = True
            m._epc_release()
            super(EPCMap, m).resize(newsize)               # may move the parked pages
            resized = True
            self._region_place(m, region, _address_of(m), newsize)
        except BaseException:
            try:
                if not resized:
                    self._region_drop(region)
            finally:
                if parked:
                    self._region_restore(m, content, old_size)
            raise
        keep = min(old_size, newsize)
        m[:keep] = content[:keep]

    def _region_restore(self, m: EPCMap, content: bytes, old_size: int) -> None:
        """After a resize failed with ``m``'s old region gone: a new region under the map as it
        now is, holding its contents.  If none can be placed (a driver that refuses every
        one), the map's memory is parked (no access: a crash) or a dropped region's (no EPC,
        not the contents): the map is closed instead, a ValueError to use."""
        m._epc_release()                           # (a no-op if it ran)
        try:
            self._region_place(m, self._region_new(len(m)), _address_of(m), len(m))
        except BaseException:
            super(EPCMap, m).close()
            raise
        m[:min(len(m), old_size)] = content[:len(m)]

    # -- fork (eleos_shim/fork.py) -------------------------------------------------------------

    def checkpoint(self) -> list[tuple["EPCMap", list[tuple[int, bytes]]]]:
        """In the parent, before fork(2): the contents of every live map, as Graphene-SGX's
        checkpoint has them, read through the app's view (an evicted page is faulted in, ELDU
        under this enclave's key, as any access does): ``[(map, [(offset, page bytes)])]``.
        Pages that read as zero are left out (the child's fresh region reads zero there).
        Every page is read, those never touched too (each faults in a zero page): which pages
        were never touched is the driver's word, and a host that called a written page "new"
        gave the child zeros there (tests/test_attack_fork.py).  The copy is in enclave memory
        (the interpreter's), never in the host's: the child restores it into regions of its
        own (:meth:`restore_in_child`)."""
        self.check()
        with self._lock:
            live = [(rid, ref()) for rid, ref in self._maps.items()]
        out = []
        for _rid, m in live:
            if m is None or m.closed:
                continue
            n = len(m)
            pages = []
            for i in range(m._epc_pages):
                lo = i * PAGE
                data = m[lo:min(lo + PAGE, n)]
                if data != _ZERO_PAGE[:len(data)]:
                    pages.append((lo, data))
            out.append((m, pages))
        self.check()              # an ELDU that failed while reading: no checkpoint of a lie
        return out

    def restore_in_child(self, checkpoint) -> None:
        """In the child of fork(2), before anything else runs: this process is a new enclave.
        The parent's driver (its threads gone, its userfaultfd and memfds the parent's) and the
        CPU's state for it (views, VA slots, paging key) are forgotten, a driver of the child's
        own starts, with its own EPC limit (the private EPC of a new process) and the CPU's new
        key, and each map of ``checkpoint`` gets a region of its own at the same address (the
        parent's shared mapping replaced), holding the parent's pages: written through the
        child's view, so the child pages as it fills them."""
        global _current
        from untrusted.epc import EPCDriver
        # A map another thread made after the checkpoint listed the maps is in no checkpoint:
        # kept, it would stay the parent's memfd (the two enclaves writing one memory), and
        # its contents at the fork are not the child's to read (the parent runs on).  The
        # child is not built (tests/test_attack_fork.py).
        listed = {id(m) for m, _pages in checkpoint}
        late = [m for ref in self._maps.values()
                if (m := ref()) is not None and not m.closed and id(m) not in listed]
        if late:
            raise RuntimeError(f"{len(late)} EPC map(s) made by another thread during the fork "
                               f"are not in its checkpoint")
        EPCDriver.forget_after_fork()
        _epcm.epcm_fork_child()
        for m, _pages in checkpoint:
            m._epc_release.detach()          # the parent's region: nothing of it is the child's
        self._driver = None
        _current = None
        EPC.__init__(self, self.cfg, self.cpu, threads=self._threads)
        for m, pages in checkpoint:
            length = len(m)
            self._region_place(m, self._region_new(length), m._epc_address, length)
            for off, data in pages:
                m[off:off + len(data)] = data

    def check(self) -> None:
        """Raise IntegrityError if a page failed to load: the enclave is dead."""
        if _epcm.epcm_dead():
            raise IntegrityError(_integrity_message())

    @property
    def dead(self) -> bool:
        return bool(_epcm.epcm_dead())

    def evict(self, m: EPCMap, offset: int | None = None) -> int:
        """EWB the page holding ``offset`` of ``m`` (every resident page if None), as the host
        may at any time.  Returns how many pages were written back."""
        self.check()
        if offset is None:
            return sum(self._driver.evict(m._epc_region, i) for i in range(m._epc_pages))
        return int(self._driver.evict(m._epc_region, offset // PAGE))

    def backing_store(self, m: EPCMap) -> tuple[memoryview, memoryview]:
        """The sealed pages of ``m`` and their 16-byte tags, in the host's memory: what a hostile
        host may tamper with or replay (tests do)."""
        return self._driver.backing_store(m._epc_region)

    def page_states(self, m: EPCMap) -> list[str]:
        return self._driver.page_states(m._epc_region, m._epc_pages)

    def counters(self) -> dict:
        """The driver's raw cumulative counters and nanosecond sums (benchmarks take deltas)."""
        return self._driver.raw_stats()

    def stats(self) -> dict:
        """The ``epc`` section of the stats (DESIGN.md section 4) with the per-fault breakdown
        (after close(): as they were when the driver stopped)."""
        d = self._driver.raw_stats() if self._driver is not None else self._final
        faults = d["faults"] or 1
        cfg = self.cfg
        per_fault = {
            "handler_ns": d["fault_ns"] / faults,
            # the trap's own cost as the driver sees it: reading it, locks, bookkeeping, and
            # installing the page (the kernel's delivery before the read is not visible here)
            "trap_ns": max(0.0, (d["fault_ns"] - d["eldu_ns"] - d["modeled_ns"] - d["frame_wait_ns"])
                           / faults),
            "install_ns": d["install_ns"] / faults,
            "crypto_ns": (d["eldu_ns"] + d["ewb_ns"]) / faults,
            "eldu_ns": d["eldu_ns"] / max(1, d["eldu"] + d["integrity_errors"]),
            "ewb_ns": d["ewb_ns"] / max(1, d["ewb"]),
            "modeled_cycles": int(cfg.epc_fault_cycles * cfg.time_scale),
            "modeled_ns": d["modeled_ns"] / faults,
            "frame_wait_ns": d["frame_wait_ns"] / faults,
            # direct reclaim's clusters: the time a fault spent EWBing for the faults that take
            # the other frames it freed, and what those took as paid ahead (cpu_fault_shift)
            "reclaim_ahead_ns": d["reclaim_ahead_ns"] / faults,
            "reclaim_prepaid_ns": d["reclaim_prepaid_ns"] / faults,
        }
        return {
            "limit_bytes": d["limit_pages"] * PAGE,
            "faults": d["faults"], "ewb": d["ewb"], "eldu": d["eldu"],
            "zero_fills": d["zero_fills"], "integrity_errors": d["integrity_errors"],
            "resident_bytes": d["resident_pages"] * PAGE,
            "peak_resident_bytes": d["peak_resident_pages"] * PAGE,
            "frame_waits": d["frame_waits"], "reclaim_batches": d["reclaim_batches"],
            "scanned": d["scanned"], "second_chances": d["second_chances"],
            "watermarks": [d["low_watermark"], d["high_watermark"]],
            "trap": d["trap"], "regions": len(self._regions), "dead": bool(d["dead"]),
            "per_fault": per_fault,
            **(self._driver.trap_stats() if self._driver is not None else self._final_trap),
        }

    def close(self) -> None:
        """Stop the driver.  Regions still mapped keep their resident pages readable; pages
        that were evicted are lost, so close maps first."""
        global _current
        if self._driver is None:
            return
        self._driver.stop()
        self._final = self._driver.raw_stats()
        self._final_trap = self._driver.trap_stats()
        with self._lock:
            for rid, (addr, _n) in list(self._regions.items()):
                self._driver_destroy(rid)
                _epcm.epcm_region_remove(addr)
            self._regions.clear()
        if self.domain is not None:
            self._driver.release_domain()
            self.domain.leave()
        _epcm.epcm_arm(0, 0)
        if self._old_handler is not None and threading.current_thread() is threading.main_thread():
            signal.signal(INTEGRITY_SIGNAL, self._old_handler)
        self._driver = None
        _current = None

    def _driver_destroy(self, rid: int) -> None:
        from untrusted._native._epc import lib
        lib.epc_region_destroy(rid)

    def _release(self, rid: int, va_first: int, npages: int, address: int) -> None:
        # The enclave freed the region: EREMOVE its version slots (so nothing sealed for it can
        # be loaded again), give its frames back, and the CPU forgets the region.
        _epcm.epcm_eremove(va_first, npages)
        with self._lock:
            known = self._regions.pop(rid, None)
            self._maps.pop(rid, None)
        if known is not None and self._driver is not None:
            try:
                self._driver.destroy(rid)
            finally:
                # The CPU forgets the region whatever the driver answers: a driver that refuses
                # to free it must not keep the address range the CPU's (a resize puts the next
                # region there) nor the CPU's view of its frames alive.
                _epcm.epcm_region_remove(address)

    def __enter__(self) -> "EPC":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def current() -> "EPC | None":
    """The running EPC of this process, if any (the loader's, under ``ELEOS_MEMORY=epc``)."""
    return _current


def install_default(cfg: Config, cpu=None) -> EPC:
    """The loader's entry: the enclave's EPC for ``ELEOS_MEMORY=epc``."""
    return EPC(cfg, cpu)


def heap_factory(epc: EPC):
    """The factory the LibOS calls for an app's anonymous ``mmap.mmap(-1, n, ...)``: a real
    mmap whose pages live in ``epc``.  Flags, prot and access are accepted and ignored: an
    enclave heap is private read-write memory (MAP_PRIVATE is served as MAP_SHARED of a memfd
    nobody else maps, which behaves the same in one process)."""
    def factory(n: int, **kwargs) -> EPCMap:
        return epc.map(n)
    return factory

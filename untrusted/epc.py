"""The SGX driver model, Python side (untrusted/: the host).

A thin wrapper over ``untrusted._native._epc`` (epc_driver.c, where the design is described):
EPC frames limited to ``limit_bytes``, real page-fault traps (userfaultfd's SIGBUS, handled by
the faulting thread itself in C; or userfaultfd served by native driver threads; or
mprotect+SIGSEGV where userfaultfd is refused), none of which takes the GIL, and EWB of victims
to an untrusted backing store by the faulting thread (direct reclaim) or a ksgxswapd-style
reclaimer.

The driver is given the modeled CPU's EWB/ELDU and cost functions as addresses (integers) by
the loader (eleos_shim/epc.py); it never sees the paging key or the version array.  One driver
per process (it owns the process's SIGSEGV handler in the fallback mode).

Victim choice approximates the Intel SGX driver of the paper's time (linux-sgx-driver,
sgx_page_cache.c): loaded pages join the tail of an active list; a ksgxswapd thread, woken when
free frames drop below a low watermark (32 pages there, scaled down for small EPCs), reclaims
while they are below the high one (64), in batches of up to 16 pages from the head, giving a
page whose accessed bit is set a second chance at the tail; the batch is EBLOCKed (unmapped,
one TLB shootdown), then EWBed page by page.  A fault that finds no free frame waits for
ksgxswapd, as the driver's atomic allocation in its fault handler does.  The approximation: the
hardware accessed bit of a resident page is not visible from user space here, so the driver
sets it when it installs a page and cannot see later hits; each page gets exactly one second
chance (FIFO order), the same as Linux under uniform random access, worse for hot pages.
"""
from __future__ import annotations

from untrusted._native._epc import ffi, lib

PAGE = 4096
TRAPS = {"auto": 0, "sigbus": lib.TRAP_SIGBUS, "userfaultfd": lib.TRAP_USERFAULTFD,
         "sigsegv": lib.TRAP_SIGSEGV}
TRAP_NAMES = {lib.TRAP_SIGBUS: "sigbus", lib.TRAP_USERFAULTFD: "userfaultfd",
              lib.TRAP_SIGSEGV: "sigsegv"}
RECLAIMS = {"direct": lib.RECLAIM_DIRECT, "background": lib.RECLAIM_BACKGROUND}
PAGE_STATES = ("new", "resident", "loading", "evicting", "evicted")

# The order of epc_driver_stats()'s output (struct epc_stats, then the driver's state).
STAT_FIELDS = (
    "faults", "zero_fills", "eldu", "ewb", "frame_waits", "reclaim_batches", "scanned",
    "second_chances", "integrity_errors", "ewb_failures", "peak_resident_pages", "spurious",
    "fault_ns", "eldu_ns", "ewb_ns", "install_ns", "modeled_ns", "frame_wait_ns", "eblock_ns",
    "reclaim_ahead_ns", "reclaim_prepaid_ns",
    "limit_pages", "resident_pages", "free_pages", "low_watermark", "high_watermark", "trap",
    "dead",
)


class DriverError(OSError):
    """The driver could not do what was asked (the OS refused a mapping, a trap, ...)."""


def _check(rc: int, what: str) -> int:
    if rc < 0:
        raise DriverError(-rc, f"{what}: {__import__('os').strerror(-rc)}")
    return rc


class EPCDriver:
    """The host's SGX driver: ``limit_bytes`` of EPC shared by all regions of the enclave.

    ``trap`` is ``auto`` (the first of sigbus, userfaultfd, sigsegv the kernel allows),
    ``sigbus``, ``userfaultfd`` or ``sigsegv``; ``threads`` native fault-handling threads serve
    traps concurrently (userfaultfd and sigsegv; under sigbus each faulting thread serves its
    own).  ``reclaim``: ``direct`` (a fault with no free frame reclaims a cluster itself, its
    time the EWB share of the faults that take the frames: ``shift_fn``, the CPU's) or
    ``background`` (ksgxswapd keeps frames free; a fault that finds none waits for it); in a
    domain the domain's reclaimers always do it.  ``trap_cycles`` is what a trap costs outside
    its handler, measured at start (TSC cycles; 0 in a domain), ``trap_return_cycles`` the part
    of it after the handler (the way back to the app).  ``tick_hz``: the TSC's rate
    (the modeled CPU's), at which the driver's times, taken with the TSC, convert to ns.
    """

    def __init__(self, limit_bytes: int, *, ewb_fn: int, eldu_fn: int, charge_fn: int = 0,
                 pollute_fn: int = 0, shift_fn: int = 0, trap: str = "auto", threads: int = 4,
                 reclaim: str = "direct", domain=None, tick_hz: float = 0.0):
        if trap not in TRAPS:
            raise ValueError(f"trap must be one of {', '.join(TRAPS)}, not {trap!r}")
        if reclaim not in RECLAIMS:
            raise ValueError(f"reclaim must be one of {', '.join(RECLAIMS)}, not {reclaim!r}")
        pages = limit_bytes // PAGE
        lib.epc_driver_set_reclaim(RECLAIMS[reclaim])
        # The fault path times itself with the TSC; its stats come out in ns at this rate.
        lib.epc_driver_set_tick_hz(tick_hz)
        # A domain (untrusted.epc_domain.Domain): frames come from the EPC the domain's
        # enclaves share, and this driver's reclaimer is one of the domain's.
        self.domain = domain
        _check(lib.epc_driver_use_domain(domain.address if domain is not None else 0), "joining the domain")
        rc = lib.epc_driver_start(pages, TRAPS[trap], threads, ewb_fn, eldu_fn, charge_fn, pollute_fn,
                                  shift_fn)
        if rc < 0:
            lib.epc_driver_use_domain(0)
        if rc == -1:  # -EPERM: userfaultfd explicitly asked for and refused
            raise DriverError(1, f"userfaultfd{' with SIGBUS' if trap == 'sigbus' else ''} is "
                              "refused here (ELEOS_EPC_TRAP=sigsegv works without it)")
        _check(rc, "starting the EPC driver")
        self.trap = TRAP_NAMES[rc]
        self.reclaim = reclaim
        got = lib.epc_driver_measure_trap(16)
        if got < 0:
            lib.epc_driver_stop()
            _check(got, "measuring the trap's cost")
        self.trap_cycles = int(got)
        self.trap_return_cycles = self.trap_stats()["trap_return_cycles"]
        self.limit_bytes = pages * PAGE
        self._stopped = False

    def create_region(self, nbytes: int, va_first: int) -> tuple[int, int]:
        """A region of ``nbytes`` whose page i uses VA slot ``va_first + i``.  Returns
        ``(region id, memfd)``; the caller maps the memfd and calls :meth:`attach`.  The
        memfd stays the driver's (the modeled CPU maps it too: its frames are the EPC's)."""
        npages = (nbytes + PAGE - 1) // PAGE
        fd = ffi.new("int *")
        rid = _check(lib.epc_region_create(npages, nbytes, va_first, fd), "creating an EPC region")
        return rid, fd[0]

    def attach(self, rid: int, address: int) -> None:
        """The app's view of the region is at ``address``: trap its accesses from now on."""
        _check(lib.epc_region_attach(rid, address), "registering the region's traps")

    def destroy(self, rid: int) -> None:
        """Return the region's frames to the EPC and free its backing store."""
        _check(lib.epc_region_destroy(rid), "destroying an EPC region")

    def evict(self, rid: int, index: int) -> bool:
        """EWB page ``index`` now, if resident (the host may do this at any time)."""
        return bool(_check(lib.epc_evict(rid, index), "evicting a page"))

    def hostile_load(self, rid: int, sealed: int, slot_of: int, at: int) -> int:
        """The host as an attacker: try to make the verified content of page ``sealed`` appear
        as page ``at`` (not resident), giving the CPU that page's sealed copy and the VA slot
        of page ``slot_of``.  Returns the CPU's EPCM code (0: it loaded; else the enclave is
        dead)."""
        return _check(lib.epc_host_load(rid, sealed, slot_of, at), "loading a page")

    def backing_store(self, rid: int) -> tuple[memoryview, memoryview]:
        """The region's sealed pages and their tags: untrusted memory the host (and a test
        playing a hostile host) can read and write."""
        out = ffi.new("uint64_t[4]")
        _check(lib.epc_region_info(rid, out), "region info")
        npages = out[2]
        pages = ffi.buffer(ffi.cast("char *", out[0]), npages * PAGE)
        tags = ffi.buffer(ffi.cast("char *", out[1]), npages * 16)
        return memoryview(pages), memoryview(tags)

    def page_states(self, rid: int, npages: int) -> list[str]:
        out = ffi.new("uint8_t[]", npages)
        _check(lib.epc_region_states(rid, out, npages), "region states")
        return [PAGE_STATES[out[i]] for i in range(npages)]

    def raw_stats(self) -> dict:
        out = ffi.new("uint64_t[28]")
        lib.epc_driver_stats(out)
        d = dict(zip(STAT_FIELDS, (int(out[i]) for i in range(len(STAT_FIELDS)))))
        d["trap"] = TRAP_NAMES.get(d["trap"], "none")
        return d

    def trap_stats(self) -> dict:
        """The trap's measured cost outside its handler, faults resolved by their own thread
        (SIGBUS), victims EWBed by a faulting thread (direct reclaim)."""
        out = ffi.new("uint64_t[5]")
        lib.epc_driver_trap_stats(out)
        return {"trap_cycles": int(out[0]), "trap_return_cycles": int(out[4]),
                "sigbus_faults": int(out[1]),
                "direct_reclaims": int(out[2]),
                "reclaim": "background" if out[3] == lib.RECLAIM_BACKGROUND else "direct"}

    def failure(self) -> tuple[bool, int, int]:
        """``(dead, faulting thread id, page address)`` of the first failed ELDU."""
        out = ffi.new("uint64_t[3]")
        lib.epc_driver_failure(out)
        return bool(out[0]), int(out[1]), int(out[2])

    def stop(self) -> None:
        """Join the driver's threads and restore the SIGSEGV handler.  Idempotent."""
        if not self._stopped:
            self._stopped = True
            lib.epc_driver_stop()

    @staticmethod
    def forget_after_fork() -> None:
        """In the child of fork(2): forget the parent's driver (epc_driver.c,
        epc_driver_forget): its threads, locks, userfaultfd, regions and handlers; a new
        driver may then start."""
        lib.epc_driver_forget()

    def release_domain(self) -> None:
        """After :meth:`stop` and the regions' destruction: the frames are back, detach from
        the domain (the caller leaves it)."""
        lib.epc_driver_use_domain(0)

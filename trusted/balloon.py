"""The balloon driver of an SUVM enclave (trusted/, inside the enclave).

When several enclaves share one EPC (ELEOS_EPC_DOMAIN), each SUVM page cache (EPC++) is a
balloon in it, as a VM's memory is in a host's under VMware's ballooning: a host-side manager
sets each enclave's target from what it measures, and the enclave's balloon driver shrinks its
cache (evicting in the enclave: dirty pages are sealed to the backing store as any eviction
does, clean ones dropped; no exits per page) or grows it when memory is free
(trusted/_native/suvm.c, ``suvm_resize``).  SGX paging cannot do this: the SGX driver cannot
know which of an enclave's pages it needs.

The target is a request from the untrusted host.  The host may deny service (a target of zero
slows the enclave down) but can never make it lose, leak or corrupt a page: :meth:`resize`
reads the request once, as an integer, and clamps it to ``[floor, cap]`` before acting on it;
``floor`` is what the enclave needs to make progress (each thread holds at most a page or two
pinned at a time, and a handful of frames keeps a small working set hitting), ``cap`` the
cache it was configured with.  Eviction writes back every dirty page sealed, so no resize,
however many and however fast, changes what the app reads.
"""
from __future__ import annotations

from trusted.suvm import STAT_KEYS, Suvm, ffi, lib

PAGE = 4096
# The balloon never shrinks below this many frames: 16 threads each holding one page pinned,
# and enough frames that a small working set still hits.  64 KiB at 4 KiB pages.
FLOOR_FRAMES = 16


class Balloon:
    """The balloon of ``suvm``'s page cache, sized in EPC pages of 4 KiB (the domain's unit)."""

    def __init__(self, suvm: Suvm, floor_frames: int = FLOOR_FRAMES):
        self.suvm = suvm
        self.frame_bytes = suvm.page_size
        self.cap_frames = suvm.cache_bytes // suvm.page_size
        self.floor_frames = max(4, min(floor_frames, self.cap_frames))
        self.resizes = 0

    def _pages(self, frames: int) -> int:
        return (frames * self.frame_bytes + PAGE - 1) // PAGE

    @property
    def floor_pages(self) -> int:
        return self._pages(self.floor_frames)

    @property
    def cap_pages(self) -> int:
        return self._pages(self.cap_frames)

    def frames(self) -> int:
        # One C call each: it refuses once the instance is closed (suvm_heap.c).
        return int(lib.suvm_heap_cache_frames(self.suvm._heap))

    def pages(self) -> int:
        """EPC pages the cache holds now."""
        return self._pages(self.frames())

    def resize(self, target_pages) -> int:
        """The host's request (an ECALL): hold about ``target_pages`` EPC pages.  Clamped to
        [floor, cap]; returns the pages held afterwards (what the host may count)."""
        try:
            want = int(target_pages)          # read once; only this copy is used below
        except (TypeError, ValueError, OverflowError):
            want = self.pages()
        frames = max(0, want) * PAGE // self.frame_bytes
        frames = max(self.floor_frames, min(self.cap_frames, frames))
        got = int(lib.suvm_heap_resize(self.suvm._heap, frames))   # 0 once closed
        if not got:
            return 0
        self.resizes += 1
        return self._pages(got)

    def demand(self) -> tuple[int, int]:
        """``(misses, accesses)`` so far: the enclave's own report of its demand.  A hint the
        host's policy may use; the host cannot check it, and a lie only changes the enclave's
        own share (as a VM's balloon driver reports to its hypervisor)."""
        out = ffi.new("uint64_t[]", lib.SUVM_ST_COUNT)
        if lib.suvm_heap_stats(self.suvm._heap, out):   # closed
            return 0, 0
        misses = int(out[STAT_KEYS.index("faults")])
        return misses, misses + int(out[STAT_KEYS.index("hits")])

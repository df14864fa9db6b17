"""SUVM, secure user-space virtual memory: the Python API (trusted/, inside the enclave).

Eleos's SUVM gives an enclave more memory than the EPC without exits: a software page table
and page cache (EPC++) in the enclave, pages sealed with AES-GCM in an untrusted backing
store, and a fault handler that runs in the enclave.  The core is C
(trusted/_native/suvm.c); this module adds what the app sees:

* :class:`Suvm` - one SUVM instance: the C core, its allocator and its stats.  It is given the
  backing store as plain addresses (base, capacity, grow and discard entry points) by
  eleos_shim/suvm.py, which alone knows the untrusted side.
* :class:`SPointer` - a secure pointer (``suvm_malloc(n)``): indexing, slicing, ``p + k``,
  ``p - k``, ``p - q``, comparisons, ``read(n)``, ``write(data)``, bulk copy/fill/compare.
* :class:`SecureMemory` - an SUVM region with the ``mmap.mmap`` API; under
  ``ELEOS_MEMORY=suvm`` an app's anonymous ``mmap.mmap(-1, n)`` is one of these.

Neither has the buffer protocol (there is no stable address: every access is translated),
so ``memoryview(m)`` or ``numpy.frombuffer(m)`` raise a TypeError that says so.

The allocator's metadata (which ranges are in use) lives here, in enclave memory, never in
the backing store the host can write.  Small requests (up to half a page) come from per-size
slabs; larger ones get whole pages, whose freeing drops them from the cache and the store.
Memory from :meth:`Suvm.malloc` reads as zero, as calloc.
"""
from __future__ import annotations

import errno
import mmap as _mmap
import threading
import weakref
from typing import Callable

from eleos_shim.errors import IntegrityError
from trusted.cargs import ssize

try:
    from trusted._native import _suvm
except ImportError as exc:  # pragma: no cover - a build problem, said clearly
    raise ImportError("trusted._native._suvm is not built: run "
                      "`.venv/bin/python trusted/_native/suvm_build.py`") from exc

ffi, lib = _suvm.ffi, _suvm.lib
if lib.suvm_region_register() != 0:  # pragma: no cover
    raise ImportError("could not create the SUVM Region type")
Region = _suvm.Region

POLICIES = {"fifo": lib.SUVM_FIFO, "lru": lib.SUVM_LRU, "clock": lib.SUVM_CLOCK,
            "random": lib.SUVM_RANDOM}

# Names of the C counters, in the order of SUVM_ST_* (suvm.h); DESIGN.md section 4 keys first.
STAT_KEYS = ("hits", "faults", "evictions", "writebacks", "subpage_reads", "integrity_errors",
             "bytes_sealed", "bytes_unsealed", "clean_drops", "resident_pages", "cache_pages",
             "store_bytes")

# The advice values Linux's madvise knows (mmap.MADV_*): anything else is EINVAL, as natively.
_MADV = frozenset(getattr(_mmap, n) for n in dir(_mmap) if n.startswith("MADV_"))


def _check(rc: int) -> None:
    if rc == 0:
        return
    if rc == lib.SUVM_EINTEGRITY:
        raise IntegrityError("SUVM page failed its integrity check (tampered, swapped or replayed "
                             "by the host); no data returned")
    if rc == lib.SUVM_ERANGE:
        raise IndexError("SUVM access outside the allocated space")
    if rc == lib.SUVM_ENOMEM:
        raise MemoryError("SUVM backing store is full")
    raise RuntimeError(f"SUVM internal error {rc}")


class Suvm:
    """One SUVM instance (the enclave's): the C core over a backing store, plus its allocator.

    ``store`` is a mapping of plain integers the host side provides: ``handle``, ``base``,
    ``capacity``, ``grow_fn``, ``discard_fn`` (see untrusted/backing_store.py).  ``charge_fn``
    is the modeled CPU's ``cpu_charge`` address (0 = none), charged when the store must grow
    or the cache is resized (an OCALL each); ``pollute_fn`` its ``cpu_pollute`` (0 = none),
    called after each such exit, as after every OCALL.  ``overwrite``: ``open`` (a write
    miss opens the page's stored copy first, as Eleos' SUVM does) or ``skip`` (a write over a
    whole page does not).  Thread-safe."""

    def __init__(self, store: dict, *, cache_bytes: int, page_size: int = 4096, subpage: int = 0,
                 eviction: str = "clock", charge_fn: int = 0, pollute_fn: int = 0,
                 overwrite: str = "open"):
        if eviction not in POLICIES:
            raise ValueError(f"unknown SUVM eviction policy {eviction!r}: expected one of "
                             + ", ".join(POLICIES))
        h = lib.suvm_new(cache_bytes, page_size, subpage, POLICIES[eviction], store["handle"],
                         store["base"], store["capacity"], store["grow_fn"], store["discard_fn"],
                         charge_fn)
        if h == ffi.NULL:
            raise ValueError(f"bad SUVM parameters: cache {cache_bytes} B, page {page_size} B, "
                             f"sub-page {subpage} B (need >= 4 pages, power-of-two sizes)")
        self._h = h
        lib.suvm_set_pollute(h, pollute_fn)
        lib.suvm_set_overwrite(h, overwrite == "skip")
        self.addr = int(ffi.cast("uintptr_t", h))
        self.store = store           # keeps the host's store (and its owner) alive
        self.page_size, self.subpage, self.eviction = page_size, subpage, eviction
        self.cache_bytes = cache_bytes // page_size * page_size
        self.capacity = store["capacity"] // page_size * page_size
        heap = lib.suvm_heap_new(h, page_size, self.capacity)
        if heap == ffi.NULL:   # pragma: no cover - out of memory
            lib.suvm_destroy(h)
            raise MemoryError("could not create the SUVM allocator")
        self._heap = ffi.gc(heap, lib.suvm_heap_free_struct)   # the struct outlives close()
        self._heap_addr = int(ffi.cast("uintptr_t", heap))     # for Region's own calls
        self._regions: weakref.WeakSet = weakref.WeakSet()   # closed with the instance
        self.on_close: list[Callable[[], None]] = []   # e.g. the host releasing the store
        self.closed = False

    # ---- allocator (trusted/_native/suvm_heap.c; metadata stays in the enclave) ----

    def malloc(self, n: int) -> "SPointer":
        """A zeroed allocation of n bytes as a secure pointer.  MemoryError when the backing
        store cannot hold it."""
        p = SPointer.__new__(SPointer)
        p._suvm = self
        self._regions.add(p)
        try:
            self._alloc_into(p, n)
        except BaseException:
            # A signal handler's exception right after the allocation: a pointer has no
            # finalizer, so this one frees it (nothing, if the allocation itself failed).
            # Once returned, the pointer is the app's to free, as a C pointer is.
            p._release(self._heap_addr)
            raise
        return p

    def _alloc_into(self, region: Region, n: int, owns: bool = False) -> None:
        """Allocate ``n`` bytes for the unbound ``region``, which holds them from the moment
        they exist: allocation and binding are one C call (Region._bind_new), so no signal
        handler or finalizer can run between them, and the allocator itself is C under a
        mutex no Python runs inside (suvm_heap.c), so neither can re-enter it.  ``owns``:
        the region's (C) finalizer frees them if it is dropped still open."""
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"SUVM allocation size must be a non-negative int, not {n!r}")
        if n > self.capacity:
            self._full(n, (1 << 64) - 1)
        rc, got = region._bind_new(self.addr, self._heap_addr, n, owns)
        if rc == lib.SUVM_EINVAL:
            raise ValueError("this SUVM instance is closed")
        if rc == lib.SUVM_ENOMEM:
            self._full(n, got)
        _check(rc)

    def _full(self, n: int, need: int):
        if need > self.capacity:
            raise MemoryError(f"SUVM backing store is full: {n} more bytes would exceed its "
                              f"limit of {self.capacity} bytes (ELEOS_SUVM_STORE_MB)")
        raise MemoryError(f"SUVM backing store is full: the host refused to grow it to {need} "
                          f"bytes (limit {self.capacity} bytes, ELEOS_SUVM_STORE_MB)")

    def free(self, addr: int) -> None:
        """Free the allocation that starts at SUVM address ``addr``."""
        rc = lib.suvm_heap_free(self._heap, addr) if isinstance(addr, int) and addr >= 0 \
            else lib.SUVM_EINVAL
        self._freed(rc, addr)

    def _freed(self, rc, addr: int) -> None:
        """Raise for a free of ``addr`` that answered ``rc`` (None: the region held nothing)."""
        if rc is None or rc == lib.SUVM_EINVAL:
            if self.closed:
                raise ValueError("this SUVM instance is closed")
            raise ValueError(f"SUVM free of {addr:#x}: not the start of a live allocation")
        _check(rc)

    def allocated_bytes(self) -> int:
        """Bytes handed out: each allocation's chunk (a power of two) or whole pages."""
        return lib.suvm_heap_allocated(self._heap)

    # ---- whole-instance operations ----

    def flush(self) -> None:
        """Write back every dirty resident page (sealed); they stay resident."""
        _check(lib.suvm_flush(self._h))

    def evict_all(self) -> None:
        """Write back every dirty page and empty the page cache."""
        _check(lib.suvm_evict_all(self._h))

    def stats(self) -> dict:
        out = ffi.new("uint64_t[]", lib.SUVM_ST_COUNT)
        lib.suvm_stats(self._h, out)
        d = dict(zip(STAT_KEYS, out))
        d.update(page_size=self.page_size, subpage=self.subpage, eviction=self.eviction,
                 cache_bytes=self.cache_bytes, allocated_bytes=self.allocated_bytes())
        return d

    def reset_stats(self) -> None:
        lib.suvm_reset_stats(self._h)

    # Raw access by SUVM address, for bulk helpers and tests.
    # ---- fork (eleos_shim/fork.py; suvm.c, "fork") ----

    def fork_prepare(self) -> None:
        """Before fork(2): wait until no SUVM operation is half done and hold it so (every
        lock a page changes under), until :meth:`fork_parent` or :meth:`fork_child`."""
        lib.suvm_heap_fork_prepare(self._heap)

    def fork_parent(self) -> None:
        lib.suvm_heap_fork_parent(self._heap)

    def fork_child(self) -> None:
        """In the child: its locks anew, and a key of its own: every stored page opened under
        the parent's key and sealed again under the child's (IntegrityError: the host
        tampered with one)."""
        _check(lib.suvm_heap_fork_child(self._heap))

    def read(self, addr: int, n: int) -> bytes:
        buf = ffi.new("uint8_t[]", n)
        _check(lib.suvm_read(self._h, addr, buf, n))
        return ffi.buffer(buf, n)[:]

    def write(self, addr: int, data) -> None:
        _check(lib.suvm_write(self._h, addr, ffi.from_buffer(data), len(data)))

    def close(self) -> None:
        """Destroy the instance: the page cache and the key are wiped.  Pointers into it must
        not be used afterwards."""
        # Only the first close goes on (one C call decides, so a close from a signal handler or
        # a finalizer in the middle of another cannot deadlock or destroy twice); it waits for
        # the allocations under way and refuses later ones.
        if not lib.suvm_heap_close(self._heap):
            return
        self.closed = True
        for r in list(self._regions):   # a later access raises ValueError, not a crash
            r._mark_closed()
        lib.suvm_destroy(self._h)
        self._h = ffi.NULL
        callbacks, self.on_close = self.on_close, []
        self.store = None
        for cb in callbacks:
            cb()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def bench_access(self, addresses, item: int, write: bool = False) -> None:
        """The benchmark loop: one access of ``item`` bytes at each SUVM address (a
        buffer of uint64, e.g. a numpy array, or a sequence of ints), reads or writes, in C
        with the GIL released (``suvm_bench_access``)."""
        try:
            buf = ffi.from_buffer("uint64_t[]", addresses)
        except TypeError:
            buf = ffi.new("uint64_t[]", list(addresses))
        _check(lib.suvm_bench_access(self._h, buf, len(buf), item, 1 if write else 0))

    @property
    def handle(self):
        """The C ``suvm_t *`` for C-level loops (suvm_bench_access)."""
        return self._h


class SPointer(Region):
    """A secure pointer into one SUVM allocation (Eleos's spointer).

    ``p[i]`` and ``p[a:b]`` index from where the pointer points, up to the end of its
    allocation (``len(p)`` bytes); ``p + k`` / ``p - k`` move it within the allocation
    (one past the end is allowed), ``p - q`` is the distance between two pointers into the same
    allocation, and comparisons order pointers by address.  Every access is bounds-checked
    against the allocation, translated by the software page table, and faulted in by the
    enclave's own handler if needed."""

    _suvm = None      # its Suvm (not an annotation: mmap.mmap and pointers have none)

    def __init__(self, *args, **kwargs):
        raise TypeError("use suvm_malloc(n) to get an SPointer")

    @property
    def address(self) -> int:
        """The SUVM address the pointer holds."""
        return self._cur

    def _moved(self, addr: int) -> "SPointer":
        if not self._lo <= addr <= self._hi:
            raise IndexError(f"SPointer arithmetic leaves its allocation ({addr - self._lo} bytes "
                             f"from its start, size {self._hi - self._lo})")
        p = SPointer.__new__(SPointer)
        p._bind(self._suvm.addr, self._lo, addr, self._hi)
        p._suvm = self._suvm
        self._suvm._regions.add(p)
        return p

    def __add__(self, k: int) -> "SPointer":
        if not isinstance(k, int):
            return NotImplemented
        return self._moved(self._cur + k)

    __radd__ = __add__

    def __sub__(self, other):
        if isinstance(other, SPointer):
            if other._suvm is not self._suvm or other._lo != self._lo:
                raise ValueError("difference of pointers into different allocations")
            return self._cur - other._cur
        if isinstance(other, int):
            return self._moved(self._cur - other)
        return NotImplemented

    def _key(self, other):
        if not isinstance(other, SPointer) or other._suvm is not self._suvm:
            return NotImplemented
        return other._cur

    def __eq__(self, other):
        k = self._key(other)
        return k if k is NotImplemented else self._cur == k

    def __ne__(self, other):
        k = self._key(other)
        return k if k is NotImplemented else self._cur != k

    def __lt__(self, other):
        k = self._key(other)
        return k if k is NotImplemented else self._cur < k

    def __le__(self, other):
        k = self._key(other)
        return k if k is NotImplemented else self._cur <= k

    def __gt__(self, other):
        k = self._key(other)
        return k if k is NotImplemented else self._cur > k

    def __ge__(self, other):
        k = self._key(other)
        return k if k is NotImplemented else self._cur >= k

    def __hash__(self):
        return hash((id(self._suvm), self._cur))

    def __repr__(self):
        return (f"<SPointer {self._cur:#x} (+{self._cur - self._lo} of {self._hi - self._lo} B)"
                f"{' freed' if self.closed else ''}>")

    def read(self, n: int) -> bytes:  # type: ignore[override]
        """The n bytes the pointer points at (pointer semantics, not a file position)."""
        return self[0:n] if n <= len(self) else self._short(n)

    def write(self, data) -> int:  # type: ignore[override]
        """Store data where the pointer points; returns len(data)."""
        n = len(data)
        if n > len(self):
            self._short(n)
        self[0:n] = data
        return n

    def _short(self, n):
        raise IndexError(f"{n} bytes from this SPointer overrun its allocation ({len(self)} left)")

    def fill(self, byte: int, n: int) -> None:
        """memset: n bytes of ``byte`` from the pointer."""
        if n > len(self):
            self._short(n)
        _check(lib.suvm_fill(self._suvm._h, self._cur, byte, n))

    def copy_from(self, src, n: int | None = None) -> None:
        """memcpy/memmove into this pointer from bytes-like data or another SPointer of the
        same SUVM (overlap allowed)."""
        if isinstance(src, SPointer):
            n = len(src) if n is None else n
            if n > len(src):
                src._short(n)
            if n > len(self):
                self._short(n)
            _check(lib.suvm_move(self._suvm._h, self._cur, src._cur, n))
        else:
            data = memoryview(src)[:n] if n is not None else src
            self.write(data)

    def compare(self, other, n: int | None = None) -> int:
        """memcmp with bytes-like data or another SPointer: -1, 0 or 1."""
        if isinstance(other, SPointer):
            n = min(len(self), len(other)) if n is None else n
            other = other.read(n)
        data = bytes(other if n is None else memoryview(other)[:n])
        if len(data) > len(self):
            self._short(len(data))
        res = ffi.new("int *")
        _check(lib.suvm_compare(self._suvm._h, self._cur, data, len(data), res))
        return res[0]

    def free(self) -> None:
        """suvm_free(p): p must point at the start of its allocation."""
        if self._cur != self._lo:
            raise ValueError("suvm_free of a pointer that is not the start of its allocation")
        s = self._suvm
        # Closed and freed in one C call: never freed but still open (its memory reused
        # under it), nor closed but never freed (leaked), whatever runs in between.
        s._freed(self._release(s._heap_addr), self._lo)


class SecureMemory(Region):
    """``mmap.mmap(-1, n)`` in SUVM: same API (len, item and slice access with steps,
    read/write/seek/tell/find/rfind/flush/move/size/close, read_byte/write_byte, context
    manager), no buffer protocol.  The memory is zero at first, like a fresh anonymous map;
    ``close()`` frees it."""

    _suvm = None      # its Suvm (not an annotation: mmap.mmap and pointers have none)

    def __init__(self, length: int, *args, suvm: Suvm | None = None, **kwargs):
        if not isinstance(length, int):
            raise TypeError(f"SecureMemory length must be an int, not {type(length).__name__}")
        if length < 0:
            raise OverflowError("memory mapped length must be positive")
        if length == 0:
            raise OSError(errno.EINVAL, "Invalid argument")   # as mmap.mmap(-1, 0)
        s = suvm if suvm is not None else default()
        # Known to its instance before it holds memory, and holding it from the moment the
        # memory exists (Suvm._alloc_into): a KeyboardInterrupt at any point of this leaves
        # either nothing allocated or a map whose finalizer frees it.
        self._suvm = s
        s._regions.add(self)
        s._alloc_into(self, length, owns=True)

    def size(self) -> int:
        return len(self)

    def flush(self, offset: int = 0, size: int | None = None) -> None:
        """Nothing to write: the memory is already protected (sealed when it leaves the
        cache).  The arguments are checked as mmap.flush checks them (msync on Linux wants
        a page-aligned offset)."""
        if self.closed:
            raise ValueError("mmap closed or invalid")
        n = len(self)
        size = n - offset if size is None else size
        if size < 0 or offset < 0 or n - offset < size:
            raise ValueError("flush values out of range")
        if offset % _mmap.PAGESIZE:
            raise OSError(errno.EINVAL, "Invalid argument")

    def madvise(self, option: int, start: int = 0, length: int | None = None) -> None:
        """Checked as mmap.madvise; SUVM pages have no host mapping to advise, so a valid
        advice changes nothing."""
        if self.closed:
            raise ValueError("mmap closed or invalid")
        n = len(self)
        length = n if length is None else length
        if start < 0 or start >= n:
            raise ValueError("madvise start out of bounds")
        if length < 0:
            raise ValueError("madvise length invalid")
        if length > (1 << 63) - 1 - start:
            raise OverflowError("madvise length too large")
        if start % _mmap.PAGESIZE or option not in _MADV:
            raise OSError(errno.EINVAL, "Invalid argument")

    def resize(self, newsize: int) -> None:
        """As mmap.resize: a new SUVM allocation of ``newsize`` bytes (zero beyond the old
        end) holding the old contents, the position kept; the old one is freed."""
        if self.closed:
            raise ValueError("mmap closed or invalid")
        newsize = ssize(newsize)          # TypeError / OverflowError, as the "n" format
        if newsize < 0:
            raise ValueError("new size out of range")
        if newsize == 0:
            raise OSError(errno.EINVAL, "Invalid argument")   # as mremap to 0 bytes
        s = self._suvm
        # The new allocation is built in a map of its own, then the two swap allocations
        # (one C call) and the other map, now holding the old one, is closed: at every
        # point each allocation has one owner whose finalizer frees it.
        new = SecureMemory.__new__(SecureMemory)
        new._suvm = s
        s._regions.add(new)
        s._alloc_into(new, newsize, owns=True)
        keep = min(len(self), newsize)
        if keep:
            _check(lib.suvm_move(s._h, new._lo, self._cur, keep))
        self._swap(new)               # the position stays, even past the end (as mmap)
        new.close()

    def move(self, dest: int, src: int, count: int) -> None:
        n = len(self)
        if min(dest, src, count) < 0 or src + count > n or dest + count > n:
            raise ValueError("source, destination, or count out of range")
        _check(lib.suvm_move(self._suvm._h, self._cur + dest, self._cur + src, count))

    def _bounds(self, start, end):
        n = len(self)
        start = self.tell() if start is None else start
        end = n if end is None else end
        start, end, _ = slice(start, end).indices(n)
        return start, end

    def find(self, sub, start: int | None = None, end: int | None = None) -> int:
        """Lowest index of ``sub`` in [start, end), or -1 (as mmap.find, which starts at the
        current position when start is omitted)."""
        sub = bytes(sub)
        start, end = self._bounds(start, end)
        chunk = max(1 << 16, 4 * len(sub))
        at = start
        while at + len(sub) <= end:
            stop = min(end, at + chunk + len(sub) - 1)
            i = self[at:stop].find(sub)
            if i >= 0:
                return at + i
            if stop == end:
                break
            at += chunk
        return -1

    def rfind(self, sub, start: int | None = None, end: int | None = None) -> int:
        """Highest index of ``sub`` in [start, end), or -1."""
        sub = bytes(sub)
        start, end = self._bounds(start, end)
        chunk = max(1 << 16, 4 * len(sub))
        hi = end
        while hi - start >= len(sub):
            lo = max(start, hi - chunk - len(sub) + 1)
            i = self[lo:hi].rfind(sub)
            if i >= 0:
                return lo + i
            if lo == start:
                break
            hi = lo + len(sub) - 1
        return -1

    def __iter__(self):
        # As mmap: iterating yields one-byte bytes objects.
        for i in range(len(self)):
            yield self[i:i + 1]

    def close(self) -> None:
        if self.closed:
            return
        s = self._suvm
        rc = self._release(s._heap_addr)      # closed and freed in one C call
        if rc is not None and not s.closed:   # (a closed instance freed everything)
            s._freed(rc, self._lo)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # No __del__: a map dropped without close() gives its memory back in Region's C
    # finalizer (suvm_region.c), where no KeyboardInterrupt can cut the free short.

    def __repr__(self):
        state = "closed" if self.closed else f"length={len(self)} pos={self.tell()}"
        return f"<SecureMemory {state} (SUVM)>"


# ---- the default instance (set by eleos_shim/suvm.py, which knows the backing store) ----

_default: Suvm | None = None
# Re-entrant: a signal handler (or a finalizer) on the thread that is building the default
# may ask for it too.  It then builds one of its own, which becomes the default; the outer
# build, on return, finds one installed and closes its own.  The state is one global,
# consistent at every bytecode.
_default_lock = threading.RLock()
_provider: Callable[[], Suvm] | None = None


def set_default_provider(provider: Callable[[], Suvm]) -> None:
    """Register the function that builds the default instance on first use."""
    global _provider
    _provider = provider


def set_default(instance: Suvm | None) -> None:
    global _default
    with _default_lock:
        _default = instance


def default() -> Suvm:
    global _default
    inst = _default
    if inst is not None:
        return inst
    with _default_lock:
        if _default is None:
            if _provider is None:
                raise RuntimeError("no SUVM instance: import eleos_shim.suvm (it wires the default "
                                   "one to its backing store) or run under `python -m eleos_shim`")
            built = _provider()
            if _default is None:
                _default = built
            else:
                built.close()
        return _default


def suvm_malloc(n: int, suvm: Suvm | None = None) -> SPointer:
    """A zeroed SUVM allocation of n bytes, as a secure pointer."""
    return (suvm or default()).malloc(n)


def suvm_free(p: SPointer) -> None:
    p.free()

"""The SUVM backing store (untrusted/, host memory), and the adversary's view of it.

SUVM pages that leave the enclave's page cache are sealed (AES-128-GCM) and written here:
plain host memory that grows on demand up to a limit (untrusted/_native/store.c).  Page
``vpn`` of an SUVM instance is at ``base + vpn * page_size``; the store keeps no metadata of
its own, so there is nothing here for the enclave to trust.

:class:`BackingStore` also is the adversary API for tests and demos: a host can flip a bit
in a stored page, swap two stored pages, or put back an older copy of a page (replay).  The
enclave must detect each of them (trusted/_native/suvm.c raises IntegrityError in the app).
"""
from __future__ import annotations

try:
    from untrusted._native import _store
except ImportError as exc:  # pragma: no cover - a build problem, said clearly
    raise ImportError("untrusted._native._store is not built: run "
                      "`.venv/bin/python untrusted/_native/store_build.py`") from exc

ffi, lib = _store.ffi, _store.lib


class BackingStore:
    """Host memory for one SUVM instance's sealed pages, at most ``limit`` bytes."""

    def __init__(self, limit: int, page_size: int = 4096):
        if limit <= 0:
            raise ValueError(f"backing store limit must be positive, not {limit}")
        self._h = lib.store_new(limit)
        if not self._h:
            raise MemoryError(f"could not reserve {limit} bytes of address space for the SUVM "
                              "backing store")
        self.page_size = page_size
        self.base = lib.store_base(self._h)
        self.capacity = lib.store_capacity(self._h)

    def bridge(self) -> dict:
        """What the enclave is handed (integers only, as edger8r's bridge passes addresses)."""
        return {"handle": self._h, "base": self.base, "capacity": self.capacity,
                "grow_fn": lib.store_grow_fn(), "discard_fn": lib.store_discard_fn(),
                "owner": self}

    @property
    def committed(self) -> int:
        """Bytes made usable so far (the store grows in 1 MiB steps)."""
        return lib.store_committed(self._h) if self._h else 0

    def stats(self) -> dict:
        return {"store_committed_bytes": self.committed, "store_limit_bytes": self.capacity}

    def after_fork(self) -> None:
        """In the child of fork(2): the store (private memory) is the child's copy; its lock
        is made anew (a thread of the parent's may have held it at the fork)."""
        if self._h:
            lib.store_after_fork(self._h)

    def close(self) -> None:
        """Unmap the store.  Only once the enclave that used it is gone."""
        if self._h:
            lib.store_destroy(self._h)
            self._h = 0

    def __del__(self):
        try:
            self.close()
        except Exception:   # interpreter shutdown: the module may be half torn down
            pass

    # ---- the adversary (the host can do all of this to its own memory) ----

    def _span(self, off: int, n: int):
        if not self._h:
            raise ValueError("the backing store is closed")
        if off < 0 or off + n > self.committed:
            raise IndexError(f"[{off}, {off + n}) is outside the committed backing store")
        return ffi.buffer(ffi.cast("uint8_t *", self.base + off), n)

    def raw(self, off: int = 0, n: int | None = None) -> bytes:
        """A copy of the raw stored bytes (the whole committed store by default)."""
        n = self.committed - off if n is None else n
        return self._span(off, n)[:]

    def read_page(self, vpn: int) -> bytes:
        return self._span(vpn * self.page_size, self.page_size)[:]

    def write_page(self, vpn: int, data: bytes) -> None:
        """Overwrite stored page vpn (e.g. with an older copy: a replay)."""
        if len(data) != self.page_size:
            raise ValueError(f"a stored page is {self.page_size} bytes, not {len(data)}")
        self._span(vpn * self.page_size, self.page_size)[:] = data

    def flip_bit(self, vpn: int, bit: int = 0) -> None:
        """Flip one bit of stored page vpn."""
        span = self._span(vpn * self.page_size + bit // 8, 1)
        span[0:1] = bytes([span[0][0] ^ (1 << (bit % 8))])

    def swap_pages(self, a: int, b: int) -> None:
        """Exchange the stored copies of pages a and b."""
        pa, pb = self.read_page(a), self.read_page(b)
        self.write_page(a, pb)
        self.write_page(b, pa)

    def find(self, pattern: bytes) -> int:
        """Offset of pattern anywhere in the committed store, or -1 (a confidentiality scan)."""
        return self.raw().find(pattern)


class Racer:
    """A hostile host thread that races the enclave on shared memory (tests and demos).

    A native thread pinned to ``cpu`` (None: not pinned) that, between :meth:`arm` and
    :meth:`disarm`, flips ``mask`` in some bytes of host memory as fast as it can (or keeps
    writing a value of its choosing there), on its own core, while the enclave reads or writes
    that memory (an ELDU, a write-back).  :meth:`arm` returns once the racer is writing, so what
    the caller does next runs inside the race; :meth:`disarm` returns once it has stopped, with
    how many rounds of writes it made.  It spins while idle; :meth:`close` ends it."""

    def __init__(self, cpu: int | None = None):
        self._h = lib.store_racer_new(-1 if cpu is None else cpu)
        if not self._h:
            raise OSError("could not start the racing thread")

    @staticmethod
    def address_of(buf, offset: int = 0) -> int:
        """The address of byte ``offset`` of a writable buffer (a memoryview of host memory)."""
        c = ffi.from_buffer(buf)
        try:
            return int(ffi.cast("uintptr_t", c)) + offset
        finally:
            ffi.release(c)

    def arm(self, address: int, mask: int = 0x01, *, value: int | None = None, count: int = 1,
            stride: int = 16) -> None:
        """Start flipping the bits of ``mask`` in the bytes ``address + k * stride`` for
        ``k < count`` (one byte by default), or, given ``value``, keep writing that value there.
        One byte in every 16-byte AES block of a page catches a re-read wherever the AES-GCM
        implementation of this machine makes it."""
        if value is None:
            lib.store_racer_arm(self._h, address, count, stride, mask, 0)
        else:
            lib.store_racer_arm(self._h, address, count, stride, value, 1)

    def disarm(self) -> int:
        return int(lib.store_racer_disarm(self._h))

    def close(self) -> None:
        if self._h:
            lib.store_racer_free(self._h)
            self._h = 0

    def __enter__(self) -> "Racer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

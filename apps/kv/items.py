"""memcached's item memory in one anonymous mmap arena (app code, used by apps/kvstore.py).

Everything memcached keeps in its item memory lives in the arena: the hash table, the slab
class table (LRU heads and tails, free lists, page cursors) and every item (header, key,
value), the meta protocol's state included (CAS, last access, the fetched / stale / win-token
flags). So the EPC or SUVM sees each lookup, not only the values, as the paper's memcached
did. Python objects hold only the statistics counters. Under SUVM the arena has the mmap API
but no buffer protocol, so this file touches it only by slicing (``a[x:y]`` and
``a[x:y] = b``) and keeps the slices per request few: a get hit is two (bucket, then
header+key+value in one window), a set a dozen or so.

Arena layout (little endian):
    [0, 64)            header: magic, page size, page count, pages used, hash power, classes
    [64, ...)          slab class table, 32 bytes per class (see CLASS below)
    [4K-aligned)       hash table: 2**hashpower u32 item offsets (0 = empty bucket)
    [4K-aligned)       slab pages of ``-I`` bytes each, carved into one class's chunks

An item takes the chunk memcached would give it: its size is counted as memcached counts it
(ITEM_ntotal: a 48-byte header, the key and a NUL, the value and CRLF, the CAS, the flags if
not 0), though our header is 40 bytes, so classes, ``bytes`` and the slab statistics match.
"""
from __future__ import annotations

import mmap
import struct
import time
from bisect import bisect_left

from apps.kv.tokens import KEY_MAX

# protocol.txt: an exptime above 30 days is an absolute unix time.
REALTIME_MAXDELTA = 60 * 60 * 24 * 30
# memcached bumps an item in its LRU at most once a minute: a hot get costs no writes.
ITEM_UPDATE_INTERVAL = 60
# Smallest chunk: memcached's 48-byte item header plus its default -n 48 minimum space.
CHUNK_MIN = 96
MAX_CLASSES = 63
# A get reads the header, key and up to this many value bytes in one arena slice (memaslap's
# default value is 1 KB), so a small hit costs one item access.
GET_WINDOW = 1280
# memcached's ITEM_ntotal less key and value: header 48, key NUL 1, value CRLF 2, CAS 8.
MC_OVERHEAD = 48 + 1 + 2 + 8

# Item header, 40 bytes: hash chain next, LRU prev, LRU next, last access time, absolute
# exptime (0 = never), client flags, value length, cas, key length, slab class, flags, pad.
ITEM = struct.Struct("<IIIIIIIQBBBB")
ITEM_SIZE = ITEM.size
I_HNEXT, I_PREV, I_NEXT, I_TIME, I_EXP, I_FLAGS, I_NBYTES, I_CAS, I_NKEY, I_CLS = range(10)
OFF_PREV, OFF_NEXT, OFF_TIME, OFF_EXP, OFF_CAS = 4, 8, 12, 16, 28
OFF_IFLAGS = 38
# Item flags (the header's flags byte), as memcached's it_flags: linked; fetched since stored
# (mg h, me fetch=); a client was sent the win token (W, then Z to the others); marked stale
# by md I / ms I (X); the key came base64-encoded (printed back so, b).
ITEM_LINKED, ITEM_FETCHED, ITEM_TOKEN_SENT, ITEM_STALE, ITEM_KEY_BINARY = 1, 2, 4, 8, 16
I_IFLAGS = 10
# Slab class state: LRU head, LRU tail, free-list head, next never-used chunk, chunks left
# in the newest page, pages owned.
CLASS = struct.Struct("<IIIIII")
CLASS_STRIDE = 32
C_HEAD, C_TAIL, C_FREE, C_END, C_LEFT, C_PAGES = range(6)
HEADER = struct.Struct("<8sIIIII")
HEADER_PAGES_USED = 16
MAGIC = b"KVARENA1"
U32 = struct.Struct("<I")



def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def ntotal(nkey: int, nbytes: int, flags: int) -> int:
    """The size memcached gives an item (ITEM_ntotal), which picks its slab class."""
    return MC_OVERHEAD + nkey + nbytes + (4 if flags else 0)


class OutOfMemory(Exception):
    """No chunk of the needed class can be had: no free chunk, no free page, nothing to evict."""


class ClassCounters:
    """memcached's per-class item counters (stats items). Apart from ItemStore so that its
    instance keeps few attributes: CPython's fast attribute access on the hot path holds
    for up to 30 of them."""
    __slots__ = ("evicted", "evicted_nonzero", "evicted_time", "evicted_unfetched",
                 "reclaimed", "expired_unfetched", "outofmemory")

    def __init__(self, n: int) -> None:
        self.evicted = [0] * n
        self.evicted_nonzero = [0] * n      # evicted items that had an exptime
        self.evicted_time = [0] * n         # seconds since the last evicted item's access
        self.evicted_unfetched = [0] * n
        self.reclaimed = [0] * n            # dead items whose chunk was reused
        self.expired_unfetched = [0] * n
        self.outofmemory = [0] * n


class ItemStore:
    """memcached's item memory in one arena: hash table, slab classes, per-class LRU.

    Single-threaded. Offsets are arena offsets; 0 is never an item (the header lives there).
    ``now`` is the server clock in whole unix seconds, as memcached's current_time.
    """

    def __init__(self, mem_bytes: int, page_size: int, factor: float = 1.25,
                 hashpower: int | None = None, window: int = GET_WINDOW) -> None:
        self.page_size = page_size
        self.npages = max(1, mem_bytes // page_size)
        self.limit_maxbytes = self.npages * page_size
        # memcached's slabs_init: classes grow by the factor up to slab_chunk_max (half a
        # page), whose class is the largest; memcached stores a bigger item as a chain of
        # such chunks. We keep one more class of whole pages for those (no chains), and
        # report its items as memcached does, in the largest class (reported_class).
        chunk_max = page_size // 2
        sizes = []
        size = CHUNK_MIN
        while size < chunk_max / factor and len(sizes) < MAX_CLASSES - 2:
            sizes.append(size)
            size = _align(int(size * factor), 8)
        sizes.append(chunk_max)
        self.largest = len(sizes) - 1           # memcached's power_largest, 0-based
        sizes.append(page_size)
        self.sizes = sizes                      # class i has chunks of sizes[i]
        self.per_page = [page_size // s for s in sizes]
        if hashpower is None:
            # About one bucket per 512 bytes of item memory: chains stay short for 1 KB items.
            hashpower = min(26, max(10, (self.limit_maxbytes // 512).bit_length()))
        self.hashpower = hashpower
        self.mask = (1 << hashpower) - 1
        self.class_base = 64
        self.hash_base = _align(self.class_base + CLASS_STRIDE * len(sizes), 4096)
        self.slab_base = _align(self.hash_base + 4 * (1 << hashpower), 4096)
        self.arena_size = self.slab_base + self.npages * page_size
        self.arena_pages = self.npages      # cache_memlimit can lower npages, not pass this
        self.window = window
        # The app's heap: in sgx mode the shim puts it in the EPC, in eleos mode in SUVM.
        self.arena = mmap.mmap(-1, self.arena_size)
        self.arena[0:HEADER.size] = HEADER.pack(MAGIC, page_size, self.npages, 0, hashpower,
                                                len(sizes))
        self.now = int(time.time())
        self.started = self.now
        self.cas_counter = 0
        self.last_class = 0     # the class link_new last used (the set path counts there)
        self.oldest_live = 0    # flush_all with a delay: items last touched <= this are gone
        self.oldest_cas = 0     # flush_all now: items with cas <= this are gone
        self.last_dead = 0      # why the last lookup missed: 0 absent, 1 expired, 2 flushed
        self.curr_items = 0
        self.total_items = 0
        self.bytes = 0
        n = len(sizes)
        self.class_items = [0] * n
        self.reset_counters()

    def reset_counters(self) -> None:
        """memcached's per-class item counters (stats items), zeroed by stats reset."""
        self.counters = ClassCounters(len(self.sizes))
        self.total_items = 0

    @property
    def evictions(self) -> int:
        return sum(self.counters.evicted)

    # -- arena primitives -------------------------------------------------------------
    def _cls_get(self, c: int) -> list[int]:
        o = self.class_base + CLASS_STRIDE * c
        return list(CLASS.unpack(self.arena[o:o + CLASS.size]))

    def _cls_put(self, c: int, st: list[int]) -> None:
        o = self.class_base + CLASS_STRIDE * c
        self.arena[o:o + CLASS.size] = CLASS.pack(*st)

    def _put32(self, off: int, v: int) -> None:
        self.arena[off:off + 4] = U32.pack(v)

    def _page_end(self, off: int) -> int:
        ps = self.page_size
        return self.slab_base + ((off - self.slab_base) // ps + 1) * ps

    def _bucket(self, key: bytes) -> int:
        # Python's bytes hash is salted per process; the arena lives no longer than the process.
        return self.hash_base + ((hash(key) & self.mask) << 2)

    def reported_class(self, c: int) -> int:
        """The class id memcached would report for our class c (1-based)."""
        return min(c, self.largest) + 1

    def class_for(self, total: int) -> int:
        return bisect_left(self.sizes, total)

    def fits(self, nkey: int, nbytes: int, flags: int = 0) -> bool:
        """memcached's item_size_ok: the item's ntotal fits the largest chunk (-I)."""
        return MC_OVERHEAD + nkey + nbytes + (4 if flags else 0) <= self.page_size

    # -- lookup -----------------------------------------------------------------------
    def _find(self, key: bytes, window: int):
        """(off, header, blob, link) of key's item, linked or not yet reclaimed, or None.

        blob is the header, the key and up to ``window`` value bytes read in one slice; link
        is the offset of the u32 that points at the item (its bucket or the previous item's
        hash-chain field), which is what unlinking rewrites.
        """
        a = self.arena
        link = self.hash_base + ((hash(key) & self.mask) << 2)     # _bucket, inlined
        off = U32.unpack(a[link:link + 4])[0]
        klen = len(key)
        base, ps = self.slab_base, self.page_size
        while off:
            end = off + ITEM_SIZE + klen + window
            page_end = base + ((off - base) // ps + 1) * ps            # _page_end, inlined
            blob = a[off:end if end < page_end else page_end]
            h = ITEM.unpack_from(blob)
            if h[I_NKEY] == klen and blob[ITEM_SIZE:ITEM_SIZE + klen] == key:
                return off, h, blob, link
            link = off      # I_HNEXT is at offset 0 of the item
            off = h[I_HNEXT]
        return None

    def _live(self, h: tuple) -> bool:
        exp = h[I_EXP]
        if exp and exp <= self.now:
            return False
        if self.oldest_cas and h[I_CAS] <= self.oldest_cas:
            return False
        ol = self.oldest_live
        if ol and ol <= self.now and h[I_TIME] <= ol:
            return False
        return True

    def lookup(self, key: bytes, window: int = 0):
        """(off, header, blob, link) of key's live item, or None; a dead one is reclaimed."""
        self.last_dead = 0
        r = self._find(key, window)
        if r is None:
            return None
        exp = r[1][I_EXP]
        # Most items never expire and most stores are never flushed: skip _live then.
        if (exp or self.oldest_cas or self.oldest_live) and not self._live(r[1]):
            self.last_dead = 1 if exp and exp <= self.now else 2
            self.unlink(r[0], r[1], r[3])
            return None
        return r

    def value_of(self, r) -> bytes:
        off, h, blob, _ = r
        start = ITEM_SIZE + h[I_NKEY]
        n = h[I_NBYTES]
        if len(blob) >= start + n:
            return blob[start:start + n]
        return self.arena[off + start:off + start + n]

    def touch_lru(self, r) -> None:
        """memcached's item_update: move a hit to its LRU head, at most once a minute."""
        off, h, _, _ = r
        if self.now - h[I_TIME] < ITEM_UPDATE_INTERVAL:
            return
        c = h[I_CLS]
        st = self._cls_get(c)
        self._lru_remove(st, off, h[I_PREV], h[I_NEXT])
        self._lru_push(st, off)
        self._put32(off + OFF_TIME, self.now)
        self._cls_put(c, st)

    # -- LRU and slab lists (callers hold the class state st and write it back) ---------
    def _lru_remove(self, st: list[int], off: int, prev: int, nxt: int) -> None:
        a = self.arena
        if prev:
            a[prev + OFF_NEXT:prev + OFF_NEXT + 4] = U32.pack(nxt)
        else:
            st[C_HEAD] = nxt
        if nxt:
            a[nxt + OFF_PREV:nxt + OFF_PREV + 4] = U32.pack(prev)
        else:
            st[C_TAIL] = prev

    def _lru_push(self, st: list[int], off: int) -> None:
        """Link off at the head; writes its prev/next and the old head's prev."""
        head = st[C_HEAD]
        self.arena[off + OFF_PREV:off + OFF_NEXT + 4] = struct.pack("<II", 0, head)
        if head:
            self._put32(head + OFF_PREV, off)
        st[C_HEAD] = off
        if not st[C_TAIL]:
            st[C_TAIL] = off

    def unlink(self, off: int, h: tuple, link: int) -> None:
        """Remove an item from the hash table and its LRU and give its chunk back."""
        self._put32(link, h[I_HNEXT])
        c = h[I_CLS]
        st = self._cls_get(c)
        self._lru_remove(st, off, h[I_PREV], h[I_NEXT])
        # A free chunk keeps its free-list next in the hash-chain field.
        self.arena[off:off + 4] = U32.pack(st[C_FREE])
        st[C_FREE] = off
        self._cls_put(c, st)
        self.curr_items -= 1
        self.class_items[c] -= 1
        self.bytes -= MC_OVERHEAD + h[I_NKEY] + h[I_NBYTES] + (4 if h[I_FLAGS] else 0)

    def _alloc(self, c: int, st: list[int]) -> int:
        """A chunk of class c: a freed one, a never-used one, a new page, or the LRU tail."""
        if st[C_FREE]:
            off = st[C_FREE]
            st[C_FREE] = U32.unpack(self.arena[off:off + 4])[0]
            return off
        if st[C_LEFT]:
            off = st[C_END]
            st[C_END] = off + self.sizes[c]
            st[C_LEFT] -= 1
            return off
        used = U32.unpack(self.arena[HEADER_PAGES_USED:HEADER_PAGES_USED + 4])[0]
        if used < self.npages:
            self._put32(HEADER_PAGES_USED, used + 1)
            page = self.slab_base + used * self.page_size
            st[C_PAGES] += 1
            st[C_END] = page + self.sizes[c]
            st[C_LEFT] = self.per_page[c] - 1
            return page
        tail = st[C_TAIL]
        if not tail:
            self.counters.outofmemory[c] += 1
            raise OutOfMemory
        # Evict (or reclaim, when already dead) the least recently used item of this class.
        blob = self.arena[tail:min(tail + ITEM_SIZE + KEY_MAX, self._page_end(tail))]
        h = ITEM.unpack_from(blob)
        key = blob[ITEM_SIZE:ITEM_SIZE + h[I_NKEY]]
        link = self._bucket(key)
        cur = U32.unpack(self.arena[link:link + 4])[0]
        while cur != tail:
            if not cur:     # not reachable from its bucket: the arena is corrupt
                raise RuntimeError(f"kvstore: item at {tail:#x} missing from its hash chain")
            link = cur
            cur = U32.unpack(self.arena[cur:cur + 4])[0]
        self._put32(link, h[I_HNEXT])
        self._lru_remove(st, tail, h[I_PREV], h[I_NEXT])
        fetched = h[I_IFLAGS] & ITEM_FETCHED
        k = self.counters
        if self._live(h):
            k.evicted[c] += 1
            k.evicted_time[c] = self.now - h[I_TIME]
            if h[I_EXP]:
                k.evicted_nonzero[c] += 1
            if not fetched:
                k.evicted_unfetched[c] += 1
        else:
            k.reclaimed[c] += 1
            if not fetched:
                k.expired_unfetched[c] += 1
        self.curr_items -= 1
        self.class_items[c] -= 1
        self.bytes -= ntotal(h[I_NKEY], h[I_NBYTES], h[I_FLAGS])
        return tail

    def link_new(self, key: bytes, flags: int, exptime: int, value: bytes,
                 iflags: int = ITEM_LINKED) -> int:
        """Allocate, write and link a new item for key (the caller unlinked any old one)."""
        nkey, nbytes = len(key), len(value)
        size = MC_OVERHEAD + nkey + nbytes + (4 if flags else 0)     # ntotal, inlined
        self.last_class = c = bisect_left(self.sizes, size)
        st = self._cls_get(c)
        off = self._alloc(c, st)    # OutOfMemory leaves st untouched
        a = self.arena
        bucket = self._bucket(key)
        hnext = U32.unpack(a[bucket:bucket + 4])[0]
        self.cas_counter += 1
        head = st[C_HEAD]
        # One write puts header, key and value in place; then the two links point at it.
        a[off:off + ITEM_SIZE + nkey + nbytes] = ITEM.pack(
            hnext, 0, head, self.now, exptime, flags, nbytes, self.cas_counter, nkey, c,
            iflags, 0) + key + value
        self._put32(bucket, off)
        if head:
            self._put32(head + OFF_PREV, off)
        st[C_HEAD] = off
        if not st[C_TAIL]:
            st[C_TAIL] = off
        self._cls_put(c, st)
        self.curr_items += 1
        self.total_items += 1
        self.class_items[c] += 1
        self.bytes += size
        return off

    def rewrite_in_place(self, r, key: bytes, value: bytes) -> int:
        """incr/decr that fits: new digits and a new cas in one write (memcached pads with
        spaces); the access time too, as memcached's do_item_update."""
        off, h, _, _ = r
        self.cas_counter += 1
        if self.now - h[I_TIME] >= ITEM_UPDATE_INTERVAL:
            self._put32(off + OFF_TIME, self.now)
        tail = struct.pack("<QBBBB", self.cas_counter, h[I_NKEY], h[I_CLS], h[I_IFLAGS], 0)
        self.arena[off + OFF_CAS:off + ITEM_SIZE + len(key) + len(value)] = tail + key + value
        return self.cas_counter

    def set_exptime(self, off: int, exptime: int) -> None:
        self._put32(off + OFF_EXP, exptime)

    def flags_of(self, off: int) -> int:
        return self.arena[off + OFF_IFLAGS]

    def set_iflags(self, off: int, iflags: int) -> None:
        self.arena[off + OFF_IFLAGS:off + OFF_IFLAGS + 1] = bytes((iflags,))

    def set_cas(self, off: int) -> int:
        """A new CAS for an item changed in place (md I marks it stale so)."""
        self.cas_counter += 1
        self.arena[off + OFF_CAS:off + OFF_CAS + 8] = struct.pack("<Q", self.cas_counter)
        return self.cas_counter

    def mark_fetched(self, r) -> None:
        """memcached's do_item_bump: a fetch marks the item fetched and may move it in the
        LRU (at most once a minute)."""
        h = r[1]
        if not h[I_IFLAGS] & ITEM_FETCHED:
            self.set_iflags(r[0], h[I_IFLAGS] | ITEM_FETCHED)
        if self.now - h[I_TIME] >= ITEM_UPDATE_INTERVAL:
            self.touch_lru(r)

    def items_of(self, c: int, oldest_first: bool = False, resume: tuple | None = None):
        """(off, header, key) of class c's items from the LRU head (newest) on, or from its
        tail (the crawler's order); from ``resume`` = (off, key) on if that item is still
        linked there (a walk resumed after other commands ran), else nothing more."""
        if resume is None:
            off = self._cls_get(c)[C_TAIL if oldest_first else C_HEAD]
        else:
            off, key = resume
            r = self._find(key, 0)
            if r is None or r[0] != off or r[1][I_CLS] != c:
                return
        while off:
            blob = self.arena[off:min(off + ITEM_SIZE + KEY_MAX, self._page_end(off))]
            h = ITEM.unpack_from(blob)
            yield off, h, blob[ITEM_SIZE:ITEM_SIZE + h[I_NKEY]]
            off = h[I_PREV if oldest_first else I_NEXT]

    def class_bytes(self, c: int) -> int:
        """memcached's mem_requested of class c: the sum of its items' ITEM_ntotal (walked
        when asked, so the set path does not keep it)."""
        return sum(ntotal(h[I_NKEY], h[I_NBYTES], h[I_FLAGS]) for _, h, _ in self.items_of(c))

    def tail_time(self, c: int) -> int:
        """The access time of class c's least recently used item (0 if none)."""
        tail = self._cls_get(c)[C_TAIL]
        return U32.unpack(self.arena[tail + OFF_TIME:tail + OFF_TIME + 4])[0] if tail else 0

    def pages_used(self) -> int:
        return U32.unpack(self.arena[HEADER_PAGES_USED:HEADER_PAGES_USED + 4])[0]

    def set_page_limit(self, pages: int) -> None:
        """cache_memlimit: new pages are taken only below this (the arena never grows)."""
        self.npages = pages
        self.limit_maxbytes = pages * self.page_size

    def realtime(self, exptime: int) -> int:
        """protocol.txt's exptime: 0 never, <0 already expired, >30 days absolute unix time."""
        if exptime == 0:
            return 0
        if exptime < 0:
            return 1
        if exptime > REALTIME_MAXDELTA:
            return exptime if exptime > self.started else 1
        return self.now + exptime

    def flush_all(self, delay: int) -> None:
        if delay > 0:
            self.oldest_live = self.realtime(delay) - 1
        else:
            # memcached takes a fresh CAS id as the mark (so the next item's CAS is one more).
            self.oldest_live = 0
            self.cas_counter += 1
            self.oldest_cas = self.cas_counter

    def pages_of(self, c: int) -> int:
        return self._cls_get(c)[C_PAGES]



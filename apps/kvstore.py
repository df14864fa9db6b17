#!/usr/bin/env python3
"""kvstore: a memcached text-protocol server whose items live in one anonymous mmap arena.

Side of the trust boundary: neither. This is an ordinary, unmodified app: it never imports
eleos_shim. Run it natively (``python apps/kvstore.py -p 11311``) or inside the modeled enclave
(``python -m eleos_shim --mode sgx|eleos apps/kvstore.py ...``); the shim then routes its socket
and epoll calls through OCALLs or the exit-less RPC ring, and places its ``mmap.mmap(-1, n)``
arena in the EPC (sgx) or in SUVM (eleos).

Everything memcached keeps in its item memory lives in the arena: the hash table, the slab
class table (LRU heads and tails, free lists, page cursors) and every item (header, key,
value). So the EPC or SUVM sees each lookup, not only the values, as the paper's memcached
did. Python objects hold only per-connection state (buffers, the command being read) and the
statistics counters. Under SUVM the arena has the mmap API but no buffer protocol, so this file
touches it only by slicing (``a[x:y]`` and ``a[x:y] = b``) and keeps the slices per request few:
a get hit is two (bucket, then header+key+value in one window), a set a dozen or so.

Arena layout (little endian):
    [0, 64)            header: magic, page size, page count, pages used, hash power, classes
    [64, ...)          slab class table, 32 bytes per class (see CLASS below)
    [4K-aligned)       hash table: 2**hashpower u32 item offsets (0 = empty bucket)
    [4K-aligned)       slab pages of ``-I`` bytes each, carved into one class's chunks

Protocol: memcached's protocol.txt (text), checked against Debian's memcached 1.6.18 for the
answers to bad input. Single-threaded ``selectors`` loop, non-blocking sockets, pipelining.
"""
from __future__ import annotations

import argparse
import bisect
import mmap
import os
import re
import resource
import selectors
import signal
import socket
import struct
import sys
import time

VERSION = b"1.6.18-kvstore"

KEY_MAX = 250
# memcached closes a connection whose command line exceeds 2048 bytes without a newline,
# except a multi-get (many keys); those we cap at 1 MB.
LINE_MAX = 2048
GET_LINE_MAX = 1 << 20
# protocol.txt: an exptime above 30 days is an absolute unix time.
REALTIME_MAXDELTA = 60 * 60 * 24 * 30
# memcached bumps an item in its LRU at most once a minute: a hot get costs no writes.
ITEM_UPDATE_INTERVAL = 60
# Smallest chunk: memcached's 48-byte item header plus its default -n 48 minimum space.
CHUNK_MIN = 96
MAX_CLASSES = 63
# At most this much per read: CPython's recv(n) allocates n bytes first, and above glibc's
# mmap threshold (128 KiB) every read would map and unmap a fresh buffer.
RECV_SIZE = 64 * 1024
# Per-connection output bound: stop parsing a client's input, and suspend a multi-get
# between two keys, while this much of its output is unsent (memcached bounds what one
# connection pins the same way: a client that does not read stops being read).
OUT_HIGH = 4 << 20
# Replies queued before they are joined and sent: a pipeline of small answers goes out in
# one send per this many.
OUT_BATCH = 64
# A get reads the header, key and up to this many value bytes in one arena slice (memaslap's
# default value is 1 KB), so a small hit costs one item access.
GET_WINDOW = 1280
MASK64 = (1 << 64) - 1
# Refused connections are drained until the client closes, for this long at most, and no
# more than this many at once (beyond that they are closed at once).
LINGER_S = 5.0
LINGER_MAX = 256

# Item header, 40 bytes: hash chain next, LRU prev, LRU next, last access time, absolute
# exptime (0 = never), client flags, value length, cas, key length, slab class, flags, pad.
ITEM = struct.Struct("<IIIIIIIQBBBB")
ITEM_SIZE = ITEM.size
I_HNEXT, I_PREV, I_NEXT, I_TIME, I_EXP, I_FLAGS, I_NBYTES, I_CAS, I_NKEY, I_CLS = range(10)
OFF_PREV, OFF_NEXT, OFF_TIME, OFF_EXP, OFF_CAS = 4, 8, 12, 16, 28
ITEM_LINKED = 1
# Slab class state: LRU head, LRU tail, free-list head, next never-used chunk, chunks left
# in the newest page, pages owned.
CLASS = struct.Struct("<IIIIII")
CLASS_STRIDE = 32
C_HEAD, C_TAIL, C_FREE, C_END, C_LEFT, C_PAGES = range(6)
HEADER = struct.Struct("<8sIIIII")
HEADER_PAGES_USED = 16
MAGIC = b"KVARENA1"
U32 = struct.Struct("<I")

_NUM = re.compile(rb"[+-]?[0-9]+\Z")
# protocol.txt: a key has no control characters or whitespace. memaslap (the paper's load
# generator) starts its keys with an 8-byte binary counter (0x10 bytes, 0x7f, ...), which
# memcached accepts: with --allow-control-keys only what memcached cannot carry in a key
# (NUL, CR, LF; a space already splits tokens) is refused.
_BAD_KEY = re.compile(rb"[\x00-\x20\x7f]")
_BAD_KEY_LENIENT = re.compile(rb"[\x00\r\n]")


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def _num(tok: bytes, lo: int, hi: int) -> int | None:
    """A decimal as memcached's safe_strto* accepts it (sign, leading zeros), or None."""
    if not tok.isdigit() and not _NUM.match(tok):
        return None
    if len(tok) > 21:
        # int() refuses more than 4,300 digits (ValueError); memcached's strtoull reads any
        # number of leading zeros, so only those can make a long token a 64-bit number.
        sign = tok[:1] if tok[:1] in b"+-" else b""
        tok = sign + (tok[len(sign):].lstrip(b"0") or b"0")
        if len(tok) > 21:
            return None
    v = int(tok)
    return v if lo <= v <= hi else None


class OutOfMemory(Exception):
    """No chunk of the needed class can be had: no free chunk, no free page, nothing to evict."""


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
        sizes = []
        size = CHUNK_MIN
        while size <= page_size / factor and len(sizes) < MAX_CLASSES - 1:
            sizes.append(size)
            size = _align(int(size * factor), 8)
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
        self.window = window
        # The app's heap: in sgx mode the shim puts it in the EPC, in eleos mode in SUVM.
        self.arena = mmap.mmap(-1, self.arena_size)
        self.arena[0:HEADER.size] = HEADER.pack(MAGIC, page_size, self.npages, 0, hashpower,
                                                len(sizes))
        self.now = int(time.time())
        self.started = self.now
        self.cas_counter = 0
        self.oldest_live = 0    # flush_all with a delay: items last touched <= this are gone
        self.oldest_cas = 0     # flush_all now: items with cas <= this are gone
        self.last_dead = 0      # why the last lookup missed: 0 absent, 1 expired, 2 flushed
        self.reset_counters()
        self.curr_items = 0
        self.total_items = 0
        self.bytes = 0
        self.class_items = [0] * len(sizes)

    def reset_counters(self) -> None:
        self.evictions = 0
        self.reclaimed = 0

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

    def class_for(self, total: int) -> int:
        return bisect.bisect_left(self.sizes, total)

    def fits(self, nkey: int, nbytes: int) -> bool:
        return ITEM_SIZE + nkey + nbytes <= self.page_size

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
        self.bytes -= ITEM_SIZE + h[I_NKEY] + h[I_NBYTES]

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
        if self._live(h):
            self.evictions += 1
        else:
            self.reclaimed += 1
        self.curr_items -= 1
        self.class_items[c] -= 1
        self.bytes -= ITEM_SIZE + h[I_NKEY] + h[I_NBYTES]
        return tail

    def link_new(self, key: bytes, flags: int, exptime: int, value: bytes) -> int:
        """Allocate, write and link a new item for key (the caller unlinked any old one)."""
        nkey, nbytes = len(key), len(value)
        c = self.class_for(ITEM_SIZE + nkey + nbytes)
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
            ITEM_LINKED, 0) + key + value
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
        self.bytes += ITEM_SIZE + nkey + nbytes
        return off

    def rewrite_in_place(self, r, key: bytes, value: bytes) -> int:
        """incr/decr that fits: new digits and a new cas in one write (memcached pads with spaces)."""
        off, h, _, _ = r
        self.cas_counter += 1
        tail = struct.pack("<QBBBB", self.cas_counter, h[I_NKEY], h[I_CLS], ITEM_LINKED, 0)
        self.arena[off + OFF_CAS:off + ITEM_SIZE + len(key) + len(value)] = tail + key + value
        return self.cas_counter

    def set_exptime(self, off: int, exptime: int) -> None:
        self._put32(off + OFF_EXP, exptime)

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
            self.oldest_live = 0
            self.oldest_cas = self.cas_counter

    def pages_of(self, c: int) -> int:
        return self._cls_get(c)[C_PAGES]


class Connection:
    """What memcached keeps per connection: buffers and the storage command awaiting its data."""
    __slots__ = ("sock", "rbuf", "out", "obytes", "wbuf", "pending", "swallow", "closing",
                 "writing", "refused", "more")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.rbuf = bytearray()
        self.out: list[bytes] = []
        self.obytes = 0         # bytes of value in out since the last flush (large replies)
        self.wbuf = b""
        self.pending = None     # (cmd, key, flags, exptime, nbytes, cas, noreply)
        self.swallow = 0        # bytes of a refused value still to discard
        self.closing = False
        self.writing = False
        self.refused = False    # beyond -c: only drained until the client closes
        # A reply streamed in parts (a multi-get past OUT_HIGH): (method, args) that appends
        # the next part to out, called as method(conn, *args), or None. Input waits for it.
        self.more = None


STORAGE = {b"set", b"add", b"replace", b"append", b"prepend", b"cas"}
BAD_FORMAT = b"CLIENT_ERROR bad command line format\r\n"


class KVServer:
    """The event loop and the text protocol over an :class:`ItemStore`."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.store = ItemStore(int(args.memory_limit * 1024 * 1024), args.max_item_size,
                               factor=args.factor, hashpower=args.hashpower)
        self.maxconns = args.conn_limit
        self._key_check = (_BAD_KEY_LENIENT if args.allow_control_keys else _BAD_KEY).search
        self.verbosity = 0
        self.stopping = False
        self._in_select = False
        self.stats = {}
        self.reset_stats()
        self.total_connections = 0
        self.rejected_connections = 0
        self.conns: dict[int, Connection] = {}
        self.lingering: dict[int, tuple[Connection, float]] = {}   # refused, closing
        self.accept_paused_until = 0.0      # out of descriptors: listener off until then
        self.listen_disabled_num = 0
        self.sel = selectors.DefaultSelector()
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind((args.listen, args.port))
        self.lsock.listen(args.backlog)
        self.lsock.setblocking(False)
        self.sel.register(self.lsock, selectors.EVENT_READ, None)
        self.port = self.lsock.getsockname()[1]

    def reset_stats(self) -> None:
        for name in ("cmd_get", "cmd_set", "cmd_flush", "cmd_touch", "get_hits", "get_misses",
                     "get_expired", "get_flushed", "delete_misses", "delete_hits", "incr_misses",
                     "incr_hits", "decr_misses", "decr_hits", "cas_misses", "cas_hits",
                     "cas_badval", "touch_hits", "touch_misses", "bytes_read", "bytes_written"):
            self.stats[name] = 0

    # -- event loop -------------------------------------------------------------------
    def serve_forever(self) -> None:
        sel = self.sel
        try:
            while not self.stopping:
                self._in_select = True
                try:
                    # A timeout so a stop request is seen even if a signal cannot interrupt
                    # the wait (inside the shim the wait may run in an untrusted worker).
                    events = sel.select(1.0)
                finally:
                    self._in_select = False
                self.store.now = int(time.time())
                if self.lingering:
                    self._expire_lingering()
                if self.accept_paused_until and time.monotonic() >= self.accept_paused_until:
                    self._resume_accept()
                for key, mask in events:
                    conn = key.data
                    try:
                        if conn is None:
                            self._accept()
                        elif conn.sock.fileno() < 0:
                            continue    # closed earlier in this round (an expired lingerer)
                        elif mask & selectors.EVENT_WRITE:
                            self._on_writable(conn)
                        else:
                            self._on_readable(conn)
                    except Exception as e:      # noqa: BLE001 - one client's failure only
                        self._fail(conn, e)
        except _Stop:
            pass
        finally:
            self.close()

    def _fail(self, conn: Connection | None, e: Exception) -> None:
        """A failure while serving one connection (a bug, MemoryError): say so on stderr and
        close that connection; everyone else keeps being served."""
        print(f"kvstore: closing a connection after an internal error: {e!r}",
              file=sys.stderr, flush=True)
        if conn is None:
            return
        conn.more = None
        if conn.refused:
            self._end_lingering(conn)
        else:
            self._close(conn)

    def request_stop(self, *_a) -> None:
        self.stopping = True
        if self._in_select:
            raise _Stop

    def close(self) -> None:
        for conn in list(self.conns.values()):
            self._close(conn)
        for conn, _ in list(self.lingering.values()):
            self._end_lingering(conn)
        if not self.accept_paused_until:
            self.sel.unregister(self.lsock)
        self.lsock.close()
        self.sel.close()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                # Out of descriptors (EMFILE/ENFILE): the pending connection stays queued and
                # the listener would wake us at once, forever; stop accepting until a
                # connection closes or a second passes, as memcached does.
                self._pause_accept()
                return
            self.total_connections += 1
            if len(self.conns) >= self.maxconns:
                # What memcached answers a connection beyond -c before closing it.
                self.rejected_connections += 1
                self._refuse(sock)
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Connection(sock)
            self.conns[sock.fileno()] = conn
            self.sel.register(sock, selectors.EVENT_READ, conn)

    def _refuse(self, sock: socket.socket) -> None:
        """Answer as memcached does, then close without losing the answer.

        Closing a socket whose client already sent a request makes the kernel send a reset
        that can destroy the error message in flight; so the socket is half-closed and
        drained until the client closes it (a lingering close), for at most LINGER_S seconds
        and LINGER_MAX sockets.
        """
        try:
            sock.setblocking(False)
            sock.send(b"ERROR Too many open connections\r\n")
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            sock.close()
            return
        if len(self.lingering) >= LINGER_MAX:
            sock.close()
            return
        conn = Connection(sock)
        conn.refused = True
        self.lingering[sock.fileno()] = (conn, time.monotonic() + LINGER_S)
        self.sel.register(sock, selectors.EVENT_READ, conn)

    def _end_lingering(self, conn: Connection) -> None:
        self.lingering.pop(conn.sock.fileno(), None)
        self.sel.unregister(conn.sock)
        conn.sock.close()

    def _expire_lingering(self) -> None:
        now = time.monotonic()
        for conn, deadline in list(self.lingering.values()):
            if deadline <= now:
                self._end_lingering(conn)

    def _close(self, conn: Connection) -> None:
        # A storage command still waiting for its data is dropped here: nothing of it was
        # written to the arena, so a client gone mid-value leaves nothing half-written.
        fd = conn.sock.fileno()
        if fd >= 0:
            try:
                self.sel.unregister(conn.sock)
            except (KeyError, ValueError):
                pass
            self.conns.pop(fd, None)
        conn.sock.close()
        if self.accept_paused_until:
            self._resume_accept()

    def _pause_accept(self) -> None:
        if not self.accept_paused_until:
            self.sel.unregister(self.lsock)
            self.listen_disabled_num += 1
        self.accept_paused_until = time.monotonic() + 1.0

    def _resume_accept(self) -> None:
        self.accept_paused_until = 0.0
        self.sel.register(self.lsock, selectors.EVENT_READ, None)

    def _on_readable(self, conn: Connection) -> None:
        try:
            data = conn.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if conn.refused:
            if not data:
                self._end_lingering(conn)
            return
        if not data:
            self._close(conn)
            return
        self.stats["bytes_read"] += len(data)
        conn.rbuf += data
        self._run(conn)

    def _on_writable(self, conn: Connection) -> None:
        self._flush(conn)
        if (not conn.writing and (conn.rbuf or conn.more is not None) and not conn.closing
                and conn.sock.fileno() >= 0):
            self._run(conn)     # input (or a streamed reply) parked while output backed up

    def _run(self, conn: Connection) -> None:
        while self._process(conn):
            self._flush(conn)
            if conn.writing or conn.sock.fileno() < 0:
                return
        self._flush(conn)

    def _flush(self, conn: Connection) -> None:
        if conn.out:
            conn.wbuf = conn.wbuf + b"".join(conn.out) if conn.wbuf else b"".join(conn.out)
            conn.out.clear()
        while conn.wbuf:
            try:
                n = conn.sock.send(conn.wbuf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                conn.more = None
                self._close(conn)
                return
            self.stats["bytes_written"] += n
            conn.wbuf = conn.wbuf[n:]
        conn.obytes = len(conn.wbuf)
        if conn.wbuf:
            if not conn.writing:
                conn.writing = True
                self.sel.modify(conn.sock, selectors.EVENT_WRITE, conn)
            return
        if conn.closing:
            self._close(conn)
            return
        if conn.writing:
            conn.writing = False
            self.sel.modify(conn.sock, selectors.EVENT_READ, conn)

    # -- protocol ---------------------------------------------------------------------
    def _process(self, conn: Connection) -> bool:
        """Run the complete commands in conn.rbuf; True if it stopped for unsent output."""
        if conn.more is not None:
            # A streamed reply first: its next part (which may leave a next), then the input.
            method, args = conn.more
            conn.more = None
            method(conn, *args)
            if conn.more is not None:
                return True
        buf = conn.rbuf
        pos = 0
        n = len(buf)
        parked = False
        while pos < n and not conn.closing:
            if conn.obytes > OUT_HIGH or len(conn.out) > OUT_BATCH or conn.more is not None:
                parked = True       # send what is queued (or wait for the client) first
                break
            if conn.swallow:
                take = min(conn.swallow, n - pos)
                conn.swallow -= take
                pos += take
                continue
            if conn.pending is not None:
                need = conn.pending[4] + 2
                if n - pos < need:
                    break
                chunk = bytes(buf[pos:pos + need])
                pos += need
                pending, conn.pending = conn.pending, None
                self._complete_store(conn, pending, chunk)
                continue
            nl = buf.find(b"\n", pos)
            if nl < 0:
                rest = n - pos
                if rest > LINE_MAX and not (buf.startswith(b"get ", pos)
                                            or buf.startswith(b"gets ", pos)) \
                        or rest > GET_LINE_MAX:
                    conn.closing = True     # as memcached: an endless line closes the connection
                    pos = n
                break
            end = nl - 1 if nl > pos and buf[nl - 1] == 13 else nl
            line = bytes(buf[pos:end])
            pos = nl + 1
            self._command(conn, line)
        if pos:
            del buf[:pos]
        return parked

    def _command(self, conn: Connection, line: bytes) -> None:
        tokens = line.split(b" ")
        if b"" in tokens:       # runs of spaces: memcached's tokenizer skips them
            tokens = [t for t in tokens if t]
        if not tokens:
            conn.out.append(b"ERROR\r\n")
            return
        cmd = tokens[0]
        nt = len(tokens)
        if cmd == b"get" or cmd == b"gets":
            if nt < 2:
                conn.out.append(b"ERROR\r\n")
            else:
                self._get(conn, tokens[1:], cmd == b"gets")
        elif cmd in STORAGE:
            if (cmd == b"cas" and nt in (6, 7)) or (cmd != b"cas" and nt in (5, 6)):
                self._store_command(conn, cmd, tokens)
            else:
                conn.out.append(b"ERROR\r\n")
        elif cmd == b"delete" and 2 <= nt <= 4:
            self._delete(conn, tokens)
        elif (cmd == b"incr" or cmd == b"decr") and nt in (3, 4):
            self._arith(conn, tokens)
        elif cmd == b"touch" and nt in (3, 4):
            self._touch(conn, tokens)
        elif (cmd == b"gat" or cmd == b"gats") and nt >= 3:
            self._gat(conn, tokens)
        elif cmd == b"stats":
            self._stats(conn, tokens[1:])
        elif cmd == b"flush_all" and nt <= 3:
            self._flush_all(conn, tokens)
        elif cmd == b"version" and nt == 1:
            conn.out.append(b"VERSION " + VERSION + b"\r\n")
        elif cmd == b"verbosity" and nt in (2, 3):
            if tokens[-1] != b"noreply":
                conn.out.append(b"OK\r\n")
            v = _num(tokens[1], 0, 1 << 31)
            if v is not None:
                self.verbosity = v
        elif cmd == b"quit" and nt == 1:
            conn.closing = True
        elif cmd == b"shutdown" and nt == 1 and self.args.enable_shutdown:
            self.stopping = True
            conn.closing = True
        else:
            conn.out.append(b"ERROR\r\n")

    def _bad_key(self, key: bytes) -> bool:
        return len(key) > KEY_MAX or self._key_check(key) is not None

    def _get(self, conn: Connection, keys: list[bytes], with_cas: bool, i: int = 0):
        """get/gets: the VALUE lines of the keys from keys[i] on, then END.

        The hot path of the paper's workload (nine gets in ten): helpers inlined. A reply
        that passes OUT_HIGH is streamed: the rest of the keys are checked at once (a bad
        key drops the whole reply, as memcached does) and looked up as the client reads, so
        one line naming a 1 MB item thousands of times pins OUT_HIGH, not gigabytes.
        """
        st = self.store
        out = conn.out
        stats = self.stats
        start = len(out)
        key_check = self._key_check
        size = conn.obytes      # this connection's output not yet sent, and this reply's
        for key in keys[i:] if i else keys:
            if len(key) > KEY_MAX or key_check(key) is not None:
                del out[start:]     # memcached drops the values it had found for this get
                out.append(BAD_FORMAT)
                return
            i += 1
            if size > OUT_HIGH and i < len(keys):
                if any(len(k) > KEY_MAX or key_check(k) is not None for k in keys[i:]):
                    del out[start:]
                    out.append(BAD_FORMAT)
                    return
                conn.obytes = size
                conn.more = (self._get, (keys, with_cas, i - 1))
                return
            stats["cmd_get"] += 1
            r = st.lookup(key, st.window)
            if r is None:
                stats["get_misses"] += 1
                if st.last_dead == 1:
                    stats["get_expired"] += 1
                elif st.last_dead == 2:
                    stats["get_flushed"] += 1
                continue
            stats["get_hits"] += 1
            h = r[1]
            vstart = ITEM_SIZE + h[I_NKEY]
            vend = vstart + h[I_NBYTES]
            blob = r[2]
            value = blob[vstart:vend] if len(blob) >= vend else st.value_of(r)
            size += vend
            if with_cas:
                out.append(b"VALUE %s %d %d %d\r\n%s\r\n"
                           % (key, h[I_FLAGS], h[I_NBYTES], h[I_CAS], value))
            else:
                out.append(b"VALUE %s %d %d\r\n%s\r\n" % (key, h[I_FLAGS], h[I_NBYTES], value))
            if st.now - h[I_TIME] >= ITEM_UPDATE_INTERVAL:
                st.touch_lru(r)
        conn.obytes = size
        out.append(b"END\r\n")

    def _gat(self, conn: Connection, tokens: list[bytes]) -> None:
        exptime = _num(tokens[1], -(1 << 31), (1 << 31) - 1)
        if exptime is None:
            conn.out.append(b"CLIENT_ERROR invalid exptime argument\r\n")
            return
        keys = tokens[2:]
        if any(self._bad_key(k) for k in keys):
            # memcached answers the keys before the bad one, then the error
            for n, k in enumerate(keys):
                if self._bad_key(k):
                    break
            self._gat_keys(conn, keys[:n], self.store.realtime(exptime), tokens[0] == b"gats",
                           0, tail=BAD_FORMAT)
            return
        self._gat_keys(conn, keys, self.store.realtime(exptime), tokens[0] == b"gats", 0)

    def _gat_keys(self, conn: Connection, keys: list[bytes], exp: int, with_cas: bool, i: int,
                  tail: bytes = b"END\r\n") -> None:
        """gat/gats from keys[i] on; streamed past OUT_HIGH as _get is."""
        st = self.store
        out = conn.out
        size = conn.obytes
        while i < len(keys):
            if size > OUT_HIGH:
                conn.obytes = size
                conn.more = (self._gat_keys, (keys, exp, with_cas, i, tail))
                return
            key = keys[i]
            i += 1
            self.stats["cmd_touch"] += 1
            r = st.lookup(key, st.window)
            if r is None:
                self.stats["touch_misses"] += 1
                continue
            self.stats["touch_hits"] += 1
            h = r[1]
            st.set_exptime(r[0], exp)
            value = st.value_of(r)
            size += len(value)
            if with_cas:
                out.append(b"VALUE %s %d %d %d\r\n" % (key, h[I_FLAGS], h[I_NBYTES], h[I_CAS]))
            else:
                out.append(b"VALUE %s %d %d\r\n" % (key, h[I_FLAGS], h[I_NBYTES]))
            out.append(value)
            out.append(b"\r\n")
        conn.obytes = size
        out.append(tail)

    def _store_command(self, conn: Connection, cmd: bytes, tokens: list[bytes]) -> None:
        key = tokens[1]
        flags = _num(tokens[2], 0, (1 << 32) - 1)
        exptime = _num(tokens[3], -(1 << 31), (1 << 31) - 1)
        nbytes = _num(tokens[4], -(1 << 31), (1 << 31) - 1)
        cas = 0
        if cmd == b"cas":
            cas = _num(tokens[5], 0, MASK64)
        noreply = tokens[-1] == b"noreply"
        if (self._bad_key(key) or flags is None or exptime is None or nbytes is None
                or nbytes < 0 or cas is None):
            # memcached does not swallow the data here: it is parsed as a command (ERROR).
            if not noreply:
                conn.out.append(BAD_FORMAT)
            return
        if not self.store.fits(len(key), nbytes):
            # An error memcached sends even under noreply; it swallows the value, and a set
            # also drops the old item so a stale value does not outlive the failed update.
            conn.out.append(b"SERVER_ERROR object too large for cache\r\n")
            conn.swallow = nbytes + 2
            if cmd == b"set":
                r = self.store.lookup(key)
                if r is not None:
                    self.store.unlink(r[0], r[1], r[3])
            return
        conn.pending = (cmd, key, flags, exptime, nbytes, cas, noreply)

    def _complete_store(self, conn: Connection, p: tuple, chunk: bytes) -> None:
        cmd, key, flags, exptime, nbytes, cas, noreply = p
        out = conn.out
        if chunk[-2:] != b"\r\n":
            if not noreply:
                out.append(b"CLIENT_ERROR bad data chunk\r\n")
            return
        self.stats["cmd_set"] += 1
        value = chunk[:-2]
        res = self._store(cmd, key, flags, self.store.realtime(exptime), value, cas)
        if not noreply or res.startswith(b"SERVER_ERROR"):
            out.append(res)

    def _store(self, cmd: bytes, key: bytes, flags: int, exp: int, value: bytes,
               cas: int) -> bytes:
        st = self.store
        window = st.window if cmd in (b"append", b"prepend") else 0
        r = st.lookup(key, window)
        if cmd == b"add":
            if r is not None:
                return b"NOT_STORED\r\n"
        elif cmd == b"cas":
            if r is None:
                self.stats["cas_misses"] += 1
                return b"NOT_FOUND\r\n"
            if r[1][I_CAS] != cas:
                self.stats["cas_badval"] += 1
                return b"EXISTS\r\n"
            self.stats["cas_hits"] += 1
        elif cmd != b"set":
            if r is None:
                return b"NOT_STORED\r\n"
            if cmd == b"append" or cmd == b"prepend":
                old = st.value_of(r)
                if not st.fits(len(key), len(old) + len(value)):
                    return b"SERVER_ERROR out of memory storing object\r\n"
                # append/prepend keep the old item's flags and exptime, as memcached does.
                flags, exp = r[1][I_FLAGS], r[1][I_EXP]
                value = old + value if cmd == b"append" else value + old
        if r is not None:
            st.unlink(r[0], r[1], r[3])
        try:
            st.link_new(key, flags, exp, value)
        except OutOfMemory:
            return b"SERVER_ERROR out of memory storing object\r\n"
        return b"STORED\r\n"

    def _delete(self, conn: Connection, tokens: list[bytes]) -> None:
        nt = len(tokens)
        noreply = tokens[-1] == b"noreply"
        if nt > 2:
            zero = tokens[2] == b"0"
            if not ((nt == 3 and (zero or noreply)) or (nt == 4 and zero and noreply)):
                conn.out.append(b"CLIENT_ERROR bad command line format.  "
                                b"Usage: delete <key> [noreply]\r\n")
                return
        key = tokens[1]
        if self._bad_key(key):
            if not noreply:
                conn.out.append(BAD_FORMAT)
            return
        r = self.store.lookup(key)
        if r is None:
            self.stats["delete_misses"] += 1
            res = b"NOT_FOUND\r\n"
        else:
            self.stats["delete_hits"] += 1
            self.store.unlink(r[0], r[1], r[3])
            res = b"DELETED\r\n"
        if not noreply:
            conn.out.append(res)

    def _arith(self, conn: Connection, tokens: list[bytes]) -> None:
        incr = tokens[0] == b"incr"
        noreply = tokens[-1] == b"noreply"
        key = tokens[1]
        out = conn.out
        if self._bad_key(key):
            if not noreply:
                out.append(BAD_FORMAT)
            return
        delta = _num(tokens[2], 0, MASK64) if tokens[2][:1] not in (b"-", b"+") else None
        if delta is None:
            if not noreply:
                out.append(b"CLIENT_ERROR invalid numeric delta argument\r\n")
            return
        st = self.store
        r = st.lookup(key, st.window)
        name = "incr" if incr else "decr"
        if r is None:
            self.stats[name + "_misses"] += 1
            if not noreply:
                out.append(b"NOT_FOUND\r\n")
            return
        old = st.value_of(r)
        digits = old.strip(b" ")
        if not digits.isdigit() or len(digits) > 20 or int(digits) > MASK64:
            if not noreply:
                out.append(b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n")
            return
        self.stats[name + "_hits"] += 1
        v = int(digits)
        v = (v + delta) & MASK64 if incr else max(0, v - delta)
        new = b"%d" % v
        if len(new) <= len(old):
            # In place, padded with spaces, as memcached does when the number gets no longer.
            st.rewrite_in_place(r, key, new.ljust(len(old)))
        else:
            h = r[1]
            st.unlink(r[0], h, r[3])
            try:
                st.link_new(key, h[I_FLAGS], h[I_EXP], new)
            except OutOfMemory:
                out.append(b"SERVER_ERROR out of memory\r\n")
                return
        if not noreply:
            out.append(new + b"\r\n")

    def _touch(self, conn: Connection, tokens: list[bytes]) -> None:
        noreply = tokens[-1] == b"noreply"
        key = tokens[1]
        if self._bad_key(key):
            if not noreply:
                conn.out.append(BAD_FORMAT)
            return
        exptime = _num(tokens[2], -(1 << 31), (1 << 31) - 1)
        if exptime is None:
            conn.out.append(b"CLIENT_ERROR invalid exptime argument\r\n")
            return
        self.stats["cmd_touch"] += 1
        st = self.store
        r = st.lookup(key)
        if r is None:
            self.stats["touch_misses"] += 1
            res = b"NOT_FOUND\r\n"
        else:
            self.stats["touch_hits"] += 1
            st.set_exptime(r[0], st.realtime(exptime))
            res = b"TOUCHED\r\n"
        if not noreply:
            conn.out.append(res)

    def _flush_all(self, conn: Connection, tokens: list[bytes]) -> None:
        noreply = tokens[-1] == b"noreply"
        args = tokens[1:-1] if noreply else tokens[1:]
        delay = 0
        if args:
            d = _num(args[0], -(1 << 31), (1 << 31) - 1)
            if d is None or len(args) > 1:
                conn.out.append(b"CLIENT_ERROR invalid exptime argument\r\n")
                return
            delay = d
        self.stats["cmd_flush"] += 1
        self.store.flush_all(delay)
        if not noreply:
            conn.out.append(b"OK\r\n")

    def _stats(self, conn: Connection, args: list[bytes]) -> None:
        out = conn.out
        if not args:
            rows = self._general_stats()
        elif args == [b"reset"]:
            self.reset_stats()
            self.store.reset_counters()
            self.total_connections = 0
            self.rejected_connections = 0
            out.append(b"RESET\r\n")
            return
        elif args == [b"settings"]:
            a = self.args
            rows = [("maxbytes", self.store.limit_maxbytes), ("maxconns", self.maxconns),
                    ("tcpport", self.port), ("interface", a.listen),
                    ("verbosity", self.verbosity), ("evictions", "on"),
                    ("growth_factor", f"{a.factor:.2f}"), ("chunk_size", CHUNK_MIN - 48),
                    ("num_threads", 1), ("cas_enabled", "yes"),
                    ("item_size_max", a.max_item_size), ("hashpower_init", self.store.hashpower)]
        elif args == [b"slabs"] or args == [b"items"]:
            rows = []
            st = self.store
            for c, size in enumerate(st.sizes):
                if not st.pages_of(c) and not st.class_items[c]:
                    continue
                if args == [b"slabs"]:
                    rows += [(f"{c + 1}:chunk_size", size), (f"{c + 1}:chunks_per_page",
                             st.per_page[c]), (f"{c + 1}:total_pages", st.pages_of(c)),
                             (f"{c + 1}:used_chunks", st.class_items[c])]
                else:
                    rows.append((f"items:{c + 1}:number", st.class_items[c]))
            if args == [b"slabs"]:
                rows += [("active_slabs", sum(1 for r in rows if r[0].endswith("total_pages"))),
                         ("total_malloced", U32.unpack(
                             st.arena[HEADER_PAGES_USED:HEADER_PAGES_USED + 4])[0] * st.page_size)]
        else:
            out.append(b"ERROR\r\n")
            return
        out.append(b"".join(b"STAT %s %s\r\n" % (str(k).encode(), str(v).encode())
                            for k, v in rows))
        out.append(b"END\r\n")

    def _general_stats(self) -> list[tuple[str, object]]:
        st = self.store
        ru = resource.getrusage(resource.RUSAGE_SELF)
        now = int(time.time())
        s = self.stats
        rows: list[tuple[str, object]] = [
            ("pid", os.getpid()), ("uptime", now - st.started), ("time", now),
            ("version", VERSION.decode()), ("pointer_size", 64),
            ("rusage_user", f"{ru.ru_utime:.6f}"), ("rusage_system", f"{ru.ru_stime:.6f}"),
            ("max_connections", self.maxconns), ("curr_connections", len(self.conns)),
            ("total_connections", self.total_connections),
            ("rejected_connections", self.rejected_connections),
            ("listen_disabled_num", self.listen_disabled_num),
            ("connection_structures", len(self.conns)),
        ]
        rows += [(k, s[k]) for k in ("cmd_get", "cmd_set", "cmd_flush", "cmd_touch",
                                     "get_hits", "get_misses", "get_expired", "get_flushed",
                                     "delete_misses", "delete_hits", "incr_misses", "incr_hits",
                                     "decr_misses", "decr_hits", "cas_misses", "cas_hits",
                                     "cas_badval", "touch_hits", "touch_misses", "bytes_read",
                                     "bytes_written")]
        rows += [("limit_maxbytes", st.limit_maxbytes), ("accepting_conns", 1), ("threads", 1),
                 ("hash_power_level", st.hashpower), ("hash_bytes", 4 << st.hashpower),
                 ("bytes", st.bytes), ("curr_items", st.curr_items),
                 ("total_items", st.total_items), ("evictions", st.evictions),
                 ("reclaimed", st.reclaimed)]
        return rows


class _Stop(BaseException):
    """Raised by the stop signal handler to leave a blocking select."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="kvstore", description="memcached text-protocol server over an mmap arena")
    p.add_argument("-p", "--port", type=int, default=11211,
                   help="TCP port (0 = an ephemeral one; the first line of stdout names it)")
    p.add_argument("-l", "--listen", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1)")
    p.add_argument("-m", "--memory-limit", type=float, default=64.0,
                   help="MB of item memory (default 64)")
    p.add_argument("-c", "--conn-limit", type=int, default=1024,
                   help="max simultaneous connections (default 1024)")
    p.add_argument("-I", "--max-item-size", type=_size, default=1 << 20,
                   help="max item size, also the slab page size (default 1m; 1k..128m)")
    p.add_argument("-f", "--factor", type=float, default=1.25,
                   help="chunk size growth factor (default 1.25)")
    p.add_argument("-b", "--backlog", type=int, default=1024, help="listen backlog")
    p.add_argument("-o", "--hashpower", type=int, default=None,
                   help="log2 of the hash table size (default: from -m)")
    p.add_argument("-A", "--enable-shutdown", action="store_true",
                   help="allow the 'shutdown' command, as memcached -A")
    p.add_argument("--allow-control-keys", action="store_true",
                   help="accept keys with control characters other than NUL, CR and LF, as "
                        "memcached does (memaslap's keys start with binary bytes)")
    p.add_argument("-v", "--verbose", action="count", default=0)
    args = p.parse_args(argv)
    if args.conn_limit < 1:
        p.error("-c must be at least 1")
    if not 1.0 < args.factor <= 4.0:
        p.error("-f must be in (1, 4]")
    if args.memory_limit * 1024 * 1024 < args.max_item_size:
        p.error("-m must hold at least one page of -I bytes")
    if args.memory_limit > 4000:
        p.error("-m must be at most 4000: arena offsets are 32-bit, as the item headers store them")
    if args.hashpower is not None and not 8 <= args.hashpower <= 30:
        p.error("-o hashpower must be 8..30")
    return args


def _size(text: str) -> int:
    t = text.strip().lower()
    mult = {"k": 1024, "m": 1 << 20}.get(t[-1:], 1)
    try:
        v = int(t[:-1] if mult > 1 else t) * mult
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad size {text!r}") from None
    if not 1024 <= v <= 128 << 20:
        raise argparse.ArgumentTypeError("item size must be 1k..128m")
    return v


def _raise_fd_limit(want: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        except (ValueError, OSError):
            pass


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _raise_fd_limit(args.conn_limit + 64)
    server = KVServer(args)
    signal.signal(signal.SIGTERM, server.request_stop)
    signal.signal(signal.SIGINT, server.request_stop)
    print(f"listening on {args.listen}:{server.port}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""kvstore: a memcached text-protocol server whose items live in one anonymous mmap arena.

Side of the trust boundary: neither. This is an ordinary, unmodified app: it never imports
eleos_shim. Run it natively (``python apps/kvstore.py -p 11311``) or inside the modeled enclave
(``python -m eleos_shim --mode sgx|eleos apps/kvstore.py ...``); the shim then routes its socket
and epoll calls through OCALLs or the exit-less RPC ring, and places its ``mmap.mmap(-1, n)``
arena in the EPC (sgx) or in SUVM (eleos).

The item memory (hash table, slab classes, LRU, items and their meta-protocol state) is one
arena, in apps/kv/items.py; the meta protocol is apps/kv/meta.py, stats and the other
administrative commands apps/kv/admin.py, UDP apps/kv/udp.py, the binary protocol
apps/kv/binary.py; this file is the event loop and the classic text commands. Python objects hold only per-connection state (buffers, the command being read)
and the statistics counters.

Protocol: memcached 1.6's protocol.txt (text, meta commands included), UDP and the binary
protocol, checked byte for byte against Debian's memcached 1.6.18 (tests/test_kvstore_meta.py,
tests/test_kvstore_binary.py). Single-threaded ``selectors``
loop, non-blocking sockets, pipelining; what one connection can make the server hold is
bounded (OUT_HIGH), and a failure while serving one connection closes only that one.
"""
from __future__ import annotations

if __package__ in (None, ""):
    # Run as a script (or by the shim's loader as a path): make `apps` importable.
    import pathlib
    import sys
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import argparse
import os
import resource
import selectors
import signal
import socket
import sys
import time

from apps.kv.admin import AdminCommands
from apps.kv.binary import BinaryProtocol
from apps.kv.items import (  # noqa: F401 - re-exported for tests and tools
    CHUNK_MIN, GET_WINDOW, HEADER_PAGES_USED, I_CAS, I_CLS, I_EXP, I_FLAGS, I_HNEXT, I_IFLAGS,
    I_NBYTES, I_NEXT, I_NKEY, I_PREV, I_TIME, ITEM, ITEM_FETCHED, ITEM_SIZE,
    ITEM_UPDATE_INTERVAL, ItemStore, OutOfMemory, U32, ntotal)
from apps.kv.meta import MetaCommands
from apps.kv.udp import UdpTransport
from apps.kv.tokens import BAD_KEY, BAD_KEY_LENIENT, KEY_MAX, MASK64, num

VERSION = b"1.6.18-kvstore"

# memcached closes a connection whose command line exceeds 2048 bytes without a newline,
# except a multi-get (many keys); those we cap at 1 MB.
LINE_MAX = 2048
GET_LINE_MAX = 1 << 20
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
# Refused connections are drained until the client closes, for this long at most, and no
# more than this many at once (beyond that they are closed at once).
LINGER_S = 5.0
LINGER_MAX = 256
_num = num


class Connection:
    """What memcached keeps per connection: buffers and the storage command awaiting its data."""
    __slots__ = ("sock", "rbuf", "out", "obytes", "wbuf", "pending", "swallow", "closing",
                 "writing", "refused", "more", "last_cmd", "binary")

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
        self.last_cmd = 0       # server clock at its last command (stats conns)
        self.binary = None      # the binary protocol? decided by the first byte, as memcached


STORAGE = {b"set", b"add", b"replace", b"append", b"prepend", b"cas"}
BAD_FORMAT = b"CLIENT_ERROR bad command line format\r\n"
STORED = b"STORED\r\n"


class KVServer(MetaCommands, AdminCommands, UdpTransport, BinaryProtocol):
    """The event loop and the text protocol over an :class:`ItemStore`: the classic
    commands here, the meta protocol in apps/kv/meta.py, stats and the other administrative
    commands in apps/kv/admin.py, UDP in apps/kv/udp.py, the binary protocol in
    apps/kv/binary.py."""
    OUT_HIGH = OUT_HIGH
    STORED = STORED

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.store = ItemStore(int(args.memory_limit * 1024 * 1024), args.max_item_size,
                               factor=args.factor, hashpower=args.hashpower)
        self.maxconns = args.conn_limit
        self._key_check = (BAD_KEY_LENIENT if args.allow_control_keys else BAD_KEY).search
        self.verbosity = 0
        self.version = VERSION
        self.stopping = False
        self._in_select = False
        self.stats: dict[str, int] = {}
        self.cls_stats: dict[str, list[int]] = {}     # per slab class (stats slabs)
        self.reset_stats()
        self.detail = False                             # stats detail on: per-prefix stats
        self.prefix_stats: dict[bytes, list[int]] = {}
        self.crawler_checked = [0] * len(self.store.sizes)
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
        self.usock = None
        self.udp_conn = Connection(None)        # the state of the datagram being served
        self.udp_conn.binary = False
        if args.udp_port:
            self._udp_open(args.listen, args.udp_port)
            self.sel.register(self.usock, selectors.EVENT_READ, self.udp_conn)

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
                        elif conn is self.udp_conn:
                            self._on_udp()
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
        if conn is self.udp_conn:           # that datagram's reply is lost, the socket stays
            conn.out.clear()
            conn.rbuf.clear()
            return
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
        if self.usock is not None:
            self.sel.unregister(self.usock)
            self.usock.close()
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
        if conn.binary is not False:
            if conn.binary is None:
                if not conn.rbuf:
                    return False
                conn.binary = conn.rbuf[0] == 0x80      # memcached's auto-negotiation
            if conn.binary:
                return self._process_binary(conn)
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
                if pending[0] == "ms":
                    self._complete_ms(conn, pending, chunk)
                else:
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
        # A reply left to stream (conn.more) must go on even when no input follows it.
        return parked or conn.more is not None

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
            if nt == 2:
                self._get1(conn, tokens[1], cmd == b"gets")
            elif nt < 2:
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
        elif len(cmd) == 2 and cmd[0] == 0x6d:      # m?: the meta protocol
            self._meta(conn, tokens)
        elif cmd == b"stats":
            self._stats(conn, tokens[1:])
        elif cmd == b"flush_all" and nt <= 3:
            self._flush_all(conn, tokens)
        elif cmd == b"version":
            conn.out.append(b"VERSION " + VERSION + b"\r\n")
        elif cmd == b"verbosity" and nt in (2, 3):
            self._verbosity(conn, tokens)
        elif cmd == b"cache_memlimit" and nt in (2, 3):
            self._memlimit(conn, tokens)
        elif cmd == b"lru_crawler":
            self._lru_crawler(conn, tokens)
        elif cmd == b"quit":
            conn.closing = True
        elif cmd == b"shutdown":
            if not self.args.enable_shutdown:
                conn.out.append(b"ERROR: shutdown not enabled\r\n")
            elif nt == 1 or (nt == 2 and tokens[1] == b"graceful"):
                self.stopping = True
                conn.closing = True
            else:
                conn.out.append(b"CLIENT_ERROR invalid shutdown mode\r\n")
        else:
            conn.out.append(b"ERROR\r\n")

    def _bad_key(self, key: bytes) -> bool:
        return len(key) > KEY_MAX or self._key_check(key) is not None

    def _count_miss(self) -> None:
        """A get that missed, and why (the store's last lookup found it expired or flushed)."""
        stats = self.stats
        stats["get_misses"] += 1
        if self.store.last_dead == 1:
            stats["get_expired"] += 1
        elif self.store.last_dead == 2:
            stats["get_flushed"] += 1

    def _get1(self, conn: Connection, key: bytes, with_cas: bool) -> None:
        """get/gets of one key: the paper's workload's hot path (nine requests in ten), with
        the helpers inlined and the reply in one piece; no streaming needed for one value."""
        out = conn.out
        if len(key) > KEY_MAX or self._key_check(key) is not None:
            out.append(BAD_FORMAT)
            return
        st = self.store
        stats = self.stats
        stats["cmd_get"] += 1
        r = st.lookup(key, st.window)
        if r is None:
            self._count_miss()
            out.append(b"END\r\n")
            return
        h = r[1]
        self._get_hits[h[I_CLS]] += 1
        vstart = ITEM_SIZE + h[I_NKEY]
        vend = vstart + h[I_NBYTES]
        blob = r[2]
        value = blob[vstart:vend] if len(blob) >= vend else st.value_of(r)
        conn.obytes += vend
        if with_cas:
            out.append(b"VALUE %s %d %d %d\r\n%s\r\nEND\r\n"
                       % (key, h[I_FLAGS], h[I_NBYTES], h[I_CAS], value))
        else:
            out.append(b"VALUE %s %d %d\r\n%s\r\nEND\r\n" % (key, h[I_FLAGS], h[I_NBYTES], value))
        # memcached's do_item_bump: marked fetched once, moved in the LRU once a minute.
        if not h[I_IFLAGS] & ITEM_FETCHED or st.now - h[I_TIME] >= ITEM_UPDATE_INTERVAL:
            st.mark_fetched(r)

    def _get(self, conn: Connection, keys: list[bytes], with_cas: bool, i: int = 0):
        """get/gets: the VALUE lines of the keys from keys[i] on, then END.

        Helpers inlined, as in _get1 (the one-key case). A reply that passes OUT_HIGH is
        streamed: the rest of the keys are checked at once (a bad
        key drops the whole reply, as memcached does) and looked up as the client reads, so
        one line naming a 1 MB item thousands of times pins OUT_HIGH, not gigabytes.
        """
        st = self.store
        out = conn.out
        stats = self.stats
        hits = self._get_hits
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
                self._count_miss()
                out.append(b"")     # one response per key, as memcached (UDP sends each)
                continue
            h = r[1]
            hits[h[I_CLS]] += 1
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
            # memcached's do_item_bump: marked fetched once, moved in the LRU once a minute.
            if not h[I_IFLAGS] & ITEM_FETCHED or st.now - h[I_TIME] >= ITEM_UPDATE_INTERVAL:
                st.mark_fetched(r)
        conn.obytes = size
        # END goes with the last key's response, as memcached builds them (over UDP each is
        # its own message, an empty one too).
        out[-1] += b"END\r\n"

    def _gat(self, conn: Connection, tokens: list[bytes]) -> None:
        exptime = _num(tokens[1], -(1 << 31), (1 << 31) - 1)
        if exptime is None:
            conn.out.append(b"CLIENT_ERROR invalid exptime argument\r\n")
            return
        keys = tokens[2:]
        if any(self._bad_key(k) for k in keys):
            # as for get, memcached drops the whole reply (and touches nothing here)
            conn.out.append(BAD_FORMAT)
            return
        self._gat_keys(conn, keys, self.store.realtime(exptime), tokens[0] == b"gats", 0)

    def _gat_keys(self, conn: Connection, keys: list[bytes], exp: int, with_cas: bool,
                  i: int) -> None:
        """gat/gats from keys[i] on; streamed past OUT_HIGH as _get is."""
        st = self.store
        out = conn.out
        size = conn.obytes
        while i < len(keys):
            if size > OUT_HIGH:
                conn.obytes = size
                conn.more = (self._gat_keys, (keys, exp, with_cas, i))
                return
            key = keys[i]
            i += 1
            self.stats["cmd_touch"] += 1
            r = st.lookup(key, st.window)
            if r is None:
                self.stats["touch_misses"] += 1
                out.append(b"")     # one response per key, as in _get
                continue
            h = r[1]
            self.cls_stats["touch_hits"][h[I_CLS]] += 1
            st.set_exptime(r[0], exp)
            st.mark_fetched(r)
            value = st.value_of(r)
            size += len(value)
            if with_cas:
                out.append(b"VALUE %s %d %d %d\r\n%s\r\n"
                           % (key, h[I_FLAGS], h[I_NBYTES], h[I_CAS], value))
            else:
                out.append(b"VALUE %s %d %d\r\n%s\r\n" % (key, h[I_FLAGS], h[I_NBYTES], value))
        conn.obytes = size
        out[-1] += b"END\r\n"   # with the last key's response, as in _get

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
        if not self.store.fits(len(key), nbytes, flags):
            # An error memcached sends even under noreply; it swallows the value, and a set
            # also drops the old item so a stale value does not outlive the failed update.
            conn.out.append(b"SERVER_ERROR object too large for cache\r\n")
            self.stats["store_too_large"] += 1
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
        st = self.store
        if chunk[-2:] != b"\r\n":
            self._set_cmds[st.class_for(ntotal(len(key), nbytes, flags))] += 1
            if not noreply:
                out.append(b"CLIENT_ERROR bad data chunk\r\n")
            return
        res = self._store(cmd, key, flags, st.realtime(exptime), chunk[:-2], cas)
        # memcached counts a set at the class of the item it allocated for it.
        if res is STORED:
            self._set_cmds[st.last_class] += 1
        else:
            self._set_cmds[st.class_for(ntotal(len(key), nbytes, flags))] += 1
        if not noreply or res.startswith(b"SERVER_ERROR"):
            out.append(res)

    def _store(self, cmd: bytes, key: bytes, flags: int, exp: int, value: bytes,
               cas: int) -> bytes:
        st = self.store
        window = st.window if cmd in (b"append", b"prepend") else 0
        r = st.lookup(key, window)
        if cmd == b"add":
            if r is not None:
                st.touch_lru(r)         # memcached promotes the item an add ran into
                return b"NOT_STORED\r\n"
        elif cmd == b"cas":
            if r is None:
                self.stats["cas_misses"] += 1
                return b"NOT_FOUND\r\n"
            if r[1][I_CAS] != cas:
                self.cls_stats["cas_badval"][r[1][I_CLS]] += 1
                return b"EXISTS\r\n"
            self.cls_stats["cas_hits"][r[1][I_CLS]] += 1
        elif cmd != b"set":
            if r is None:
                return b"NOT_STORED\r\n"
            if cmd == b"append" or cmd == b"prepend":
                old = st.value_of(r)
                if not st.fits(len(key), len(old) + len(value), r[1][I_FLAGS]):
                    return b"NOT_STORED\r\n"      # memcached: the merged item cannot be had
                # append/prepend keep the old item's flags and exptime, as memcached does.
                flags, exp = r[1][I_FLAGS], r[1][I_EXP]
                value = old + value if cmd == b"append" else value + old
        if r is not None:
            st.unlink(r[0], r[1], r[3])
        try:
            st.link_new(key, flags, exp, value)
        except OutOfMemory:
            return b"SERVER_ERROR out of memory storing object\r\n"
        return STORED

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
        if self.detail:
            self.record_prefix(key, 3)
        r = self.store.lookup(key)
        if r is None:
            self.stats["delete_misses"] += 1
            res = b"NOT_FOUND\r\n"
        else:
            self.cls_stats["delete_hits"][r[1][I_CLS]] += 1
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
        res, new, _ = self._add_delta(key, incr, delta)
        if res == "not_found":
            self.stats["incr_misses" if incr else "decr_misses"] += 1
            res = b"NOT_FOUND\r\n"
        elif res == "non_numeric":
            res = b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"
        elif res == "eom":
            out.append(b"SERVER_ERROR out of memory\r\n")
            return
        else:
            res = new + b"\r\n"
        if not noreply:
            out.append(res)

    def _add_delta(self, key: bytes, incr: bool, delta: int, cas: int = 0,
                   want_item: bool = False):
        """memcached's do_add_delta for incr/decr and ma: (result, new digits, the item after
        it when want_item); result is "ok", "not_found", "non_numeric", "cas_mismatch" or
        "eom". In place when the new number is no longer, space-padded, as memcached does."""
        st = self.store
        r = st.lookup(key, st.window)
        if r is None:
            return "not_found", b"", None
        h = r[1]
        if cas and h[I_CAS] != cas:
            return "cas_mismatch", b"", None
        old = st.value_of(r)
        digits = old.strip(b" ")
        if not digits.isdigit() or len(digits) > 20 or int(digits) > MASK64:
            return "non_numeric", b"", None
        self.cls_stats["incr_hits" if incr else "decr_hits"][h[I_CLS]] += 1
        v = int(digits)
        v = (v + delta) & MASK64 if incr else max(0, v - delta)
        new = b"%d" % v
        if len(new) <= len(old):
            st.rewrite_in_place(r, key, new.ljust(len(old)))
        else:
            st.unlink(r[0], h, r[3])
            try:
                st.link_new(key, h[I_FLAGS], h[I_EXP], new)
            except OutOfMemory:
                return "eom", b"", None
        return "ok", new, st.lookup(key) if want_item else None

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
            self.cls_stats["touch_hits"][r[1][I_CLS]] += 1
            st.set_exptime(r[0], st.realtime(exptime))
            st.mark_fetched(r)          # memcached's touch fetches the item (DO_UPDATE)
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


class _Stop(BaseException):
    """Raised by the stop signal handler to leave a blocking select."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="kvstore", description="memcached text-protocol server over an mmap arena")
    p.add_argument("-p", "--port", type=int, default=11211,
                   help="TCP port (0 = an ephemeral one; the first line of stdout names it)")
    p.add_argument("-U", "--udp-port", type=int, default=0,
                   help="UDP port, memcached's frame format (default 0: off, as memcached)")
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

"""memcached's binary protocol (app code of apps/kvstore.py): get/getk/gat/touch and their
quiet forms, set/add/replace/append/prepend, delete, incr/decr, flush, noop, version, quit,
stat.

A mixin of the server (apps/kvstore.py's KVServer). A connection whose first byte is the
request magic 0x80 speaks it from then on, as memcached's auto-negotiation decides
(try_read_command_negotiate). Answers follow memcached 1.6.18's proto_bin.c: a 24-byte
header (magic 0x81, the request's opcode and opaque, status, lengths, CAS), errors carry
memcached's texts, the quiet forms answer only errors (and get hits), a bad length or a key
longer than 250 bytes gets "Invalid arguments" and the connection is closed, an unknown
opcode "Unknown command" with its body skipped. Items are the same items the text protocol
sees. SASL is not offered (memcached without -S answers its opcodes as unknown too).
"""
from __future__ import annotations

import struct

from apps.kv.items import I_CAS, I_CLS, I_FLAGS, OutOfMemory, ntotal

REQ = struct.Struct(">BBHBBHIIQ")     # magic opcode keylen extlen datatype vbucket body opaque cas
RES = struct.Struct(">BBHBBHIIQ")     # magic opcode keylen extlen datatype status body opaque cas
REQ_MAGIC, RES_MAGIC = 0x80, 0x81

GET, SET, ADD, REPLACE, DELETE, INCR, DECR, QUIT, FLUSH, GETQ, NOOP, VERSION, GETK, GETKQ, \
    APPEND, PREPEND, STAT, SETQ, ADDQ, REPLACEQ, DELETEQ, INCRQ, DECRQ, QUITQ, FLUSHQ, \
    APPENDQ, PREPENDQ = range(0x1b)
TOUCH, GAT, GATQ, GATK, GATKQ = 0x1c, 0x1d, 0x1e, 0x23, 0x24
# quiet opcode -> its loud form (dispatch_bin_command)
QUIET = {SETQ: SET, ADDQ: ADD, REPLACEQ: REPLACE, DELETEQ: DELETE, INCRQ: INCR, DECRQ: DECR,
         QUITQ: QUIT, FLUSHQ: FLUSH, APPENDQ: APPEND, PREPENDQ: PREPEND, GETQ: GET,
         GETKQ: GETK, GATQ: GAT, GATKQ: GATK}

SUCCESS, KEY_ENOENT, KEY_EEXISTS, E2BIG, EINVAL, NOT_STORED, DELTA_BADVAL = range(7)
UNKNOWN_COMMAND, ENOMEM = 0x81, 0x82
ERRORS = {ENOMEM: b"Out of memory", UNKNOWN_COMMAND: b"Unknown command",
          KEY_ENOENT: b"Not found", EINVAL: b"Invalid arguments",
          KEY_EEXISTS: b"Data exists for key.", E2BIG: b"Too large.",
          DELTA_BADVAL: b"Non-numeric server-side value for incr or decr",
          NOT_STORED: b"Not stored."}
KEY_MAX_LENGTH = 250


class _Req:
    """One binary request being answered (memcached keeps these in its conn)."""
    __slots__ = ("opcode", "cmd", "quiet", "opaque", "cas", "key", "ext")

    def __init__(self, opcode, opaque, cas, key, ext):
        self.opcode = opcode
        self.cmd = QUIET.get(opcode, opcode)
        self.quiet = opcode in QUIET
        self.opaque, self.cas, self.key, self.ext = opaque, cas, key, ext


class _Discard:
    """A stand-in connection whose text answer nobody reads (stats detail on/off)."""

    def __init__(self) -> None:
        self.out: list[bytes] = []


class BinaryProtocol:
    """The binary protocol over the server's ItemStore (a mixin of KVServer)."""

    # -- framing --------------------------------------------------------------------------
    def _process_binary(self, conn) -> bool:
        """_process for a binary connection: the complete requests in conn.rbuf; True if it
        stopped for unsent output."""
        buf = conn.rbuf
        pos = 0
        n = len(buf)
        parked = False
        while not conn.closing:
            if conn.obytes > self.OUT_HIGH or len(conn.out) > 64:
                parked = True
                break
            if conn.swallow:
                take = min(conn.swallow, n - pos)
                conn.swallow -= take
                pos += take
                if conn.swallow:
                    break
                continue
            if conn.pending is not None:
                need = conn.pending[4]
                if n - pos < need:
                    break
                value = bytes(buf[pos:pos + need])
                pos += need
                p, conn.pending = conn.pending, None
                self._bin_complete_store(conn, p, value)
                continue
            if n - pos < REQ.size:
                break
            magic, opcode, keylen, extlen, _dt, _vb, bodylen, opaque, cas = \
                REQ.unpack_from(buf, pos)
            if magic != REQ_MAGIC:
                conn.closing = True         # memcached closes without an answer
                pos = n
                break
            if n - pos < REQ.size + extlen + keylen:
                break
            start = pos + REQ.size
            ext = bytes(buf[start:start + extlen])
            key = bytes(buf[start + extlen:start + extlen + keylen])
            pos = start + extlen + keylen
            self._bin_dispatch(conn, _Req(opcode, opaque, cas, key, ext), keylen, extlen,
                               bodylen)
        if pos:
            del buf[:pos]
        return parked

    def _bin_answer(self, conn, req: _Req, status: int = SUCCESS, ext: bytes = b"",
                    key: bytes = b"", value: bytes = b"", cas: int = 0) -> None:
        conn.out.append(RES.pack(RES_MAGIC, req.opcode, len(key), len(ext), 0, status,
                                 len(ext) + len(key) + len(value), req.opaque, cas)
                        + ext + key + value)

    def _bin_error(self, conn, req: _Req, status: int, text: bytes | None = None,
                   swallow: int = 0) -> None:
        """write_bin_error: sent even in quiet mode."""
        self._bin_answer(conn, req, status, value=ERRORS[status] if text is None else text)
        conn.swallow = swallow

    def _bin_ok(self, conn, req: _Req, value: bytes = b"", cas: int = 0) -> None:
        """write_bin_response: nothing in quiet mode."""
        if not req.quiet:
            self._bin_answer(conn, req, value=value, cas=cas)

    def _bin_protocol_error(self, conn, req: _Req) -> None:
        self._bin_error(conn, req, EINVAL)
        conn.closing = True

    # -- dispatch -------------------------------------------------------------------------
    def _bin_dispatch(self, conn, req: _Req, keylen: int, extlen: int, bodylen: int) -> None:
        if keylen > bodylen or keylen + extlen > bodylen:
            self._bin_error(conn, req, UNKNOWN_COMMAND)
            conn.closing = True
            return
        if keylen > KEY_MAX_LENGTH:
            self._bin_protocol_error(conn, req)
            return
        cmd = req.cmd
        ok = True
        if cmd == VERSION:
            ok = extlen == 0 and keylen == 0 and bodylen == 0
            if ok:
                self._bin_ok(conn, req, self.version)
        elif cmd == FLUSH:
            ok = keylen == 0 and bodylen == extlen and extlen in (0, 4)
            if ok:
                delay = struct.unpack(">I", req.ext)[0] if extlen == 4 else 0
                self.stats["cmd_flush"] += 1
                self.store.flush_all(delay)
                self._bin_ok(conn, req)
        elif cmd == NOOP:
            ok = extlen == 0 and keylen == 0 and bodylen == 0
            if ok:
                self._bin_ok(conn, req)
        elif cmd in (SET, ADD, REPLACE):
            ok = extlen == 8 and keylen != 0 and bodylen >= keylen + 8
            if ok:
                flags, exptime = struct.unpack(">II", req.ext)
                self._bin_update(conn, req, flags, exptime, bodylen - keylen - 8)
        elif cmd in (GET, GETK):
            ok = extlen == 0 and bodylen == keylen and keylen > 0
            if ok:
                self._bin_get(conn, req, None)
        elif cmd == DELETE:
            ok = keylen > 0 and extlen == 0 and bodylen == keylen
            if ok:
                self._bin_delete(conn, req)
        elif cmd in (INCR, DECR):
            ok = keylen > 0 and extlen == 20 and bodylen == keylen + extlen
            if ok:
                self._bin_arith(conn, req)
        elif cmd in (APPEND, PREPEND):
            ok = keylen > 0 and extlen == 0
            if ok:
                self._bin_update(conn, req, 0, 0, bodylen - keylen)
        elif cmd == STAT:
            ok = extlen == 0
            if ok:
                self._bin_stat(conn, req)
        elif cmd == QUIT:
            ok = keylen == 0 and extlen == 0 and bodylen == 0
            if ok:
                self._bin_ok(conn, req)
                conn.closing = True
        elif cmd in (TOUCH, GAT, GATK):
            ok = extlen == 4 and keylen != 0
            if ok:
                self._bin_get(conn, req, struct.unpack(">I", req.ext)[0])
        else:
            self._bin_error(conn, req, UNKNOWN_COMMAND, swallow=bodylen)
        if not ok:
            self._bin_protocol_error(conn, req)

    # -- commands -------------------------------------------------------------------------
    def _bin_get(self, conn, req: _Req, touch_exptime: int | None) -> None:
        st = self.store
        r = st.lookup(req.key, st.window)
        stats = self.stats
        if r is None:
            if touch_exptime is not None:
                stats["cmd_touch"] += 1
                stats["touch_misses"] += 1
            else:
                stats["cmd_get"] += 1
                self._count_miss()
            if not req.quiet:
                if req.cmd in (GETK, GATK):
                    self._bin_answer(conn, req, KEY_ENOENT, key=req.key)
                else:
                    self._bin_error(conn, req, KEY_ENOENT)
            return
        h = r[1]
        if touch_exptime is not None:
            st.set_exptime(r[0], st.realtime(touch_exptime))
            stats["cmd_touch"] += 1
            self.cls_stats["touch_hits"][h[I_CLS]] += 1
        else:
            stats["cmd_get"] += 1
            self._get_hits[h[I_CLS]] += 1
        st.mark_fetched(r)
        value = b"" if req.cmd == TOUCH else st.value_of(r)
        key = req.key if req.cmd in (GETK, GATK) else b""
        conn.obytes += len(value)
        self._bin_answer(conn, req, ext=struct.pack(">I", h[I_FLAGS]), key=key, value=value,
                         cas=h[I_CAS])

    def _bin_update(self, conn, req: _Req, flags: int, exptime: int, vlen: int) -> None:
        st = self.store
        if not st.fits(len(req.key), vlen, flags):
            self.stats["store_too_large"] += 1
            self._bin_error(conn, req, E2BIG, swallow=vlen)
            if req.cmd == SET:              # a stale value must not outlive the update
                r = st.lookup(req.key)
                if r is not None:
                    st.unlink(r[0], r[1], r[3])
            return
        conn.pending = ("bin", req, flags, exptime, vlen)

    def _bin_complete_store(self, conn, p: tuple, value: bytes) -> None:
        _, req, flags, exptime, _vlen = p
        cmd = {SET: b"set", ADD: b"add", REPLACE: b"replace", APPEND: b"append",
               PREPEND: b"prepend"}[req.cmd]
        if req.cas and cmd in (b"set", b"add", b"replace"):
            cmd = b"cas"                    # memcached: any update given a CAS is a cas
        st = self.store
        if cmd in (b"append", b"prepend") and req.cas:
            r = st.lookup(req.key)
            if r is not None and r[1][I_CAS] != req.cas:
                self._bin_error(conn, req, KEY_EEXISTS)
                return
        res = self._store(cmd, req.key, flags, st.realtime(exptime), value, req.cas)
        self._set_cmds[st.last_class if res is self.STORED else
                       st.class_for(ntotal(len(req.key), len(value), flags))] += 1
        if res is self.STORED:
            self._bin_ok(conn, req, cas=st.cas_counter)
        elif res == b"EXISTS\r\n":
            self._bin_error(conn, req, KEY_EEXISTS)
        elif res == b"NOT_FOUND\r\n":
            self._bin_error(conn, req, KEY_ENOENT)
        elif res.startswith(b"SERVER_ERROR"):
            self._bin_error(conn, req, ENOMEM, b"Out of memory allocating item")
        else:   # NOT_STORED: add found one, replace found none, append/prepend found none
            self._bin_error(conn, req, KEY_EEXISTS if req.cmd == ADD else
                            KEY_ENOENT if req.cmd == REPLACE else NOT_STORED)

    def _bin_delete(self, conn, req: _Req) -> None:
        st = self.store
        if self.detail:
            self.record_prefix(req.key, 3)
        r = st.lookup(req.key)
        if r is None:
            self._bin_error(conn, req, KEY_ENOENT)
            self.stats["delete_misses"] += 1
            return
        if req.cas and req.cas != r[1][I_CAS]:
            self._bin_error(conn, req, KEY_EEXISTS)
            return
        self.cls_stats["delete_hits"][r[1][I_CLS]] += 1
        st.unlink(r[0], r[1], r[3])
        self._bin_ok(conn, req)

    def _bin_arith(self, conn, req: _Req) -> None:
        delta, initial, exptime = struct.unpack(">QQI", req.ext)
        incr = req.cmd == INCR
        res, new, r = self._add_delta(req.key, incr, delta, req.cas, want_item=True)
        st = self.store
        if res == "ok":
            self._bin_ok(conn, req, struct.pack(">Q", int(new)), cas=r[1][I_CAS])
        elif res == "non_numeric":
            self._bin_error(conn, req, DELTA_BADVAL)
        elif res == "eom":
            self._bin_error(conn, req, ENOMEM, b"Out of memory incrementing value")
        elif res == "cas_mismatch":
            self._bin_error(conn, req, KEY_EEXISTS)
        elif exptime != 0xFFFFFFFF:
            # Not found: created with the initial value (memcached's NREAD_ADD).
            try:
                st.link_new(req.key, 0, st.realtime(exptime), b"%d" % initial)
            except OutOfMemory:
                self._bin_error(conn, req, ENOMEM, b"Out of memory allocating new item")
                return
            self._bin_ok(conn, req, struct.pack(">Q", initial), cas=st.cas_counter)
        else:
            self.stats["incr_misses" if incr else "decr_misses"] += 1
            self._bin_error(conn, req, KEY_ENOENT)

    def _bin_stat(self, conn, req: _Req) -> None:
        sub = req.key
        if not sub:
            rows = self._general_stats()
        elif sub.startswith(b"reset"):
            self.reset_stats()
            self.store.reset_counters()
            rows = []
        elif sub.startswith(b"settings"):
            rows = self._settings()
        elif sub.startswith(b"detail"):
            what = sub[6:]
            if what.startswith(b" dump"):
                dump = b"".join(b"PREFIX %s get %d hit %d set %d del %d\r\n" % (p, *v)
                                for p, v in self.prefix_stats.items()) + b"END\r\n"
                rows = [("detailed", dump.decode("latin-1"))]
            elif what.startswith(b" on") or what.startswith(b" off"):
                self._stats_detail(_Discard(), what[1:].split(b" ")[0])
                rows = []
            else:
                self._bin_error(conn, req, KEY_ENOENT)
                return
        elif sub in (b"items", b"slabs", b"sizes", b"conns"):
            rows = {b"items": self._items_stats, b"slabs": self._slabs_stats,
                    b"sizes": lambda: [("sizes_status", "disabled")],
                    b"conns": lambda: self._conns(conn)}[sub]()
        else:
            self._bin_error(conn, req, KEY_ENOENT)
            return
        packets = []
        for k, v in rows:
            k, v = str(k).encode(), str(v).encode("latin-1")
            packets.append(RES.pack(RES_MAGIC, STAT, len(k), 0, 0, 0, len(k) + len(v),
                                    req.opaque, 0) + k + v)
        packets.append(RES.pack(RES_MAGIC, STAT, 0, 0, 0, 0, 0, req.opaque, 0))
        conn.out.append(b"".join(packets))


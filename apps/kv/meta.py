"""The meta protocol of memcached 1.6 (mg, ms, md, ma, mn, me), app code of apps/kvstore.py.

A mixin of the server (apps/kvstore.py's KVServer): it reads and writes items through the
server's ItemStore, so what the meta commands keep (CAS, last access, the fetched, stale and
win-token flags, base64-ness of the key) lives in the item headers in the arena. The answers
follow memcached 1.6.18's proto_text.c (process_mget/mset/mdelete/marithmetic/meta_command):
flags are answered in the order they were given, ``q`` drops the nominal answers (EN for mg,
HD for ms/md, HD/VA for ma) and never an error, ``O`` is echoed, ``k`` returns the key
(base64 with ``b`` when it came so). The classic commands never come here: the server
dispatches a two-byte command starting with ``m`` to :meth:`MetaCommands._meta` after every
classic command has been tried, so get and set pay nothing for this file.
"""
from __future__ import annotations

import base64
import binascii

from apps.kv.items import (
    I_CAS, I_CLS, I_EXP, I_FLAGS, I_IFLAGS, I_NBYTES, I_NKEY, I_TIME, ITEM_FETCHED,
    ITEM_KEY_BINARY, ITEM_LINKED, ITEM_STALE, ITEM_TOKEN_SENT, REALTIME_MAXDELTA, OutOfMemory,
    ntotal)
from apps.kv.tokens import INT32_MAX, INT32_MIN, KEY_MAX, MASK64, UINT32_MAX, num, unsigned

BAD_FORMAT_LINE = b"CLIENT_ERROR bad command line format\r\n"
# proto_text.c: more tokens than this (command and key included, plus the tokenizer's
# terminator) is refused; an opaque longer than 32 bytes too.
MFLAG_MAX_OPT_LENGTH = 20
MFLAG_MAX_OPAQUE_LENGTH = 32
_BAD_TOKEN = "CLIENT_ERROR bad token in command line format"
_B64 = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")


def b64_key(token: bytes) -> bytes | None:
    """memcached's base64_decode of a key: characters outside the alphabet are skipped, the
    rest must come in groups of four, decoding stops at the first padded group; None (its
    0) on failure or an empty result."""
    data = bytes(c for c in token if c in _B64)
    if not data or len(data) % 4:
        return None
    end = data.find(b"=")
    if end >= 0:
        group = end // 4 * 4 + 4           # the padded group is the last one decoded
        pad = data[end:group].count(b"=")
        if pad > 2 or data[end:group] != b"=" * (group - end):
            return None
        data = data[:group]
    try:
        out = base64.b64decode(data)
    except binascii.Error:
        return None
    return out or None


class _Flags:
    """What _meta_flag_preparse learns from a meta command's flags."""
    __slots__ = ("no_update", "locked", "vivify", "value", "set_stale", "no_reply",
                 "has_cas", "new_ttl", "key_binary", "mode", "exptime", "autoviv_exptime",
                 "recache_time", "client_flags", "req_cas", "delta", "initial", "key")

    def __init__(self, key: bytes) -> None:
        self.no_update = self.locked = self.vivify = self.value = self.set_stale = False
        self.no_reply = self.has_cas = self.new_ttl = self.key_binary = False
        self.mode = 0
        self.exptime = self.autoviv_exptime = self.recache_time = 0
        self.client_flags = self.req_cas = self.initial = 0
        self.delta = 1
        self.key = key


class MetaCommands:
    """mg, ms, md, ma, mn, me over the server's ItemStore (a mixin of KVServer)."""

    def _meta(self, conn, tokens: list[bytes]) -> None:
        op = tokens[0][1]
        if op == 0x67:      # g
            self._mg(conn, tokens)
        elif op == 0x73:    # s
            self._ms(conn, tokens)
        elif op == 0x64:    # d
            self._md(conn, tokens)
        elif op == 0x61:    # a
            self._ma(conn, tokens)
        elif op == 0x6e:    # n: memcached also flushes its output here; ours goes each round
            conn.out.append(b"MN\r\n")
        elif op == 0x65:    # e
            self._me(conn, tokens)
        else:
            conn.out.append(b"ERROR\r\n")

    # -- shared parsing -------------------------------------------------------------------
    def _preparse(self, tokens: list[bytes], start: int) -> tuple[_Flags, str | None]:
        """_meta_flag_preparse: the flags from tokens[start:], and the error if any (the last
        one found: parsing goes on after a bad value, not after a duplicate or unknown flag)."""
        of = _Flags(tokens[1])
        st = self.store
        seen = set()
        err = None
        for tok in tokens[start:]:
            o = tok[0]
            if o >= 127 or o in seen:
                return of, "CLIENT_ERROR duplicate flag"
            seen.add(o)
            arg = tok[1:]
            if o == 0x62:                                       # b
                key = b64_key(tokens[1])
                if key is None:
                    err = "CLIENT_ERROR error decoding key"
                    key = b""
                of.key = key
                of.key_binary = True
            elif o in (0x4e, 0x54, 0x52):                       # N, T, R
                of.locked = True
                v = num(arg, INT32_MIN, INT32_MAX)
                if v is None:
                    err = _BAD_TOKEN
                    continue
                # EXPTIME_TO_POSITIVE_TIME: a negative TTL means already expired.
                t = st.realtime(REALTIME_MAXDELTA + 1 if v < 0 else v)
                if o == 0x4e:
                    of.vivify = True
                    of.autoviv_exptime = t
                elif o == 0x54:
                    of.exptime = t
                    of.new_ttl = True
                else:
                    of.recache_time = t
            elif o == 0x6c or o == 0x68:                        # l, h: delay the LRU bump
                of.locked = True
            elif o in b"OPLkstcf":
                pass
            elif o == 0x76:                                     # v
                of.value = True
            elif o == 0x75:                                     # u
                of.no_update = True
            elif o == 0x71:                                     # q
                of.no_reply = True
            elif o == 0x46:                                     # F
                v = unsigned(arg, UINT32_MAX)
                if v is None:
                    err = err or "CLIENT_ERROR bad command line format"
                else:
                    of.client_flags = v
            elif o == 0x43:                                     # C
                v = unsigned(arg, MASK64)
                if v is None:
                    err = _BAD_TOKEN
                else:
                    of.req_cas = v
                    of.has_cas = True
            elif o == 0x4d:                                     # M
                if len(tok) != 2:
                    err = "CLIENT_ERROR incorrect length for M token"
                else:
                    of.mode = tok[1]
            elif o == 0x4a:                                     # J
                v = unsigned(arg, MASK64)
                if v is None:
                    err = "CLIENT_ERROR invalid numeric initial value"
                else:
                    of.initial = v
            elif o == 0x44:                                     # D
                v = unsigned(arg, MASK64)
                if v is None:
                    err = "CLIENT_ERROR invalid numeric delta value"
                else:
                    of.delta = v
            elif o == 0x49:                                     # I
                of.set_stale = True
            else:
                return of, "CLIENT_ERROR invalid flag"
        return of, err

    def _key_ok(self, of: _Flags) -> bool:
        """A key given as text must pass the server's key check; a base64 one is binary."""
        return of.key_binary or not self._bad_key(of.key)

    @staticmethod
    def _ret_key(key: bytes, binary: bool) -> bytes:
        return b" k" + (base64.b64encode(key) + b" b" if binary else key)

    @staticmethod
    def _opaque_and_key(tokens: list[bytes], of: _Flags) -> bytes | None:
        """The O and k flags of an answer without an item (None: an opaque too long)."""
        out = b""
        for tok in tokens[2:]:
            if tok[0] == 0x4f:
                if len(tok) > MFLAG_MAX_OPAQUE_LENGTH:
                    return None
                out += b" " + tok
            elif tok[0] == 0x6b:
                out += MetaCommands._ret_key(of.key, of.key_binary)
        return out

    def _meta_start(self, conn, tokens: list[bytes], too_long: bytes) -> bool:
        """The checks every meta command makes before its flags; False if it answered."""
        if len(tokens) < 2:
            conn.out.append(b"ERROR\r\n")
            return False
        if len(tokens[1]) > KEY_MAX:
            conn.out.append(BAD_FORMAT_LINE)
            return False
        if len(tokens) + 1 > MFLAG_MAX_OPT_LENGTH:
            conn.out.append(too_long)
            return False
        return True

    # -- mg -------------------------------------------------------------------------------
    def _mg(self, conn, tokens: list[bytes]) -> None:
        out = conn.out
        if not self._meta_start(conn, tokens, b"CLIENT_ERROR options flags are too long\r\n"):
            return
        of, err = self._preparse(tokens, 2)
        if err is None and not self._key_ok(of):
            err = "CLIENT_ERROR bad command line format"
        if err is not None:
            out.append(err.encode() + b"\r\n")
            return
        st = self.store
        key = of.key
        r = st.lookup(key, st.window if of.value else 0)
        stats = self.stats
        created = False
        if r is None and of.vivify:
            # Autovivify: an empty item; the N flag below gives it its TTL and this client
            # the win token. (memcached does not mark such an item's key binary.)
            try:
                st.link_new(key, 0, 0, b"")
            except OutOfMemory:
                pass
            else:
                r = st.lookup(key)
                created = True
        ttl_set = False
        if r is None:
            if of.new_ttl:
                stats["cmd_touch"] += 1
                stats["touch_misses"] += 1
            else:
                stats["get_misses"] += 1
                stats["cmd_get"] += 1
            tail = self._opaque_and_key(tokens, of)
            if tail is None:
                out.append(b"CLIENT_ERROR opaque token too long\r\n")
            elif not of.no_reply:
                out.append(b"EN" + tail + b"\r\n")
            return
        off, h = r[0], r[1]
        if not of.locked and not of.no_update:
            st.mark_fetched(r)              # limited_get(DO_UPDATE): bumped before answering
        iflags = st.flags_of(off) if not of.locked and not of.no_update else h[I_IFLAGS]
        exp = h[I_EXP]
        won = False
        parts = [b"VA %d" % h[I_NBYTES] if of.value else b"HD"]
        for tok in tokens[2:]:
            o = tok[0]
            if o == 0x54:                                       # T
                ttl_set = True
                exp = of.exptime
                st.set_exptime(off, exp)
            elif o == 0x4e:                                     # N
                if created:
                    exp = of.autoviv_exptime
                    st.set_exptime(off, exp)
                    won = True
            elif o == 0x52:                                     # R
                if (not iflags & ITEM_TOKEN_SENT and not created and exp
                        and exp < of.recache_time):
                    won = True
            elif o == 0x73:                                     # s
                parts.append(b" s%d" % h[I_NBYTES])
            elif o == 0x74:                                     # t
                parts.append(b" t-1" if exp == 0 else b" t%d" % ((exp - st.now) & 0xFFFFFFFF))
            elif o == 0x63:                                     # c
                parts.append(b" c%d" % h[I_CAS])
            elif o == 0x66:                                     # f
                parts.append(b" f%d" % h[I_FLAGS])
            elif o == 0x6c:                                     # l
                parts.append(b" l%d" % ((st.now - h[I_TIME]) & 0xFFFFFFFF))
            elif o == 0x68:                                     # h
                parts.append(b" h1" if iflags & ITEM_FETCHED else b" h0")
            elif o == 0x4f:                                     # O
                if len(tok) > MFLAG_MAX_OPAQUE_LENGTH:
                    out.append(b"CLIENT_ERROR opaque token too long\r\n")
                    return
                parts.append(b" " + tok)
            elif o == 0x6b:                                     # k
                parts.append(self._ret_key(key, bool(iflags & ITEM_KEY_BINARY)))
        if iflags & ITEM_TOKEN_SENT:
            parts.append(b" Z")
        if iflags & ITEM_STALE:
            parts.append(b" X")
            if not iflags & ITEM_TOKEN_SENT:
                won = True
        if won:
            parts.append(b" W")
            iflags |= ITEM_TOKEN_SENT
        if of.locked and not of.no_update:
            iflags |= ITEM_FETCHED           # the delayed bump, after the answer was made
            st.mark_fetched(r)
        if iflags != st.flags_of(off):
            st.set_iflags(off, iflags)
        parts.append(b"\r\n")
        if of.value:
            value = st.value_of(r)
            parts.append(value)
            parts.append(b"\r\n")
            conn.obytes += len(value)
        out.append(b"".join(parts))
        c = h[I_CLS]
        if ttl_set:
            stats["cmd_touch"] += 1
            self.cls_stats["touch_hits"][c] += 1
        else:
            self.cls_stats["get_hits"][c] += 1
            stats["cmd_get"] += 1

    # -- ms -------------------------------------------------------------------------------
    def _ms(self, conn, tokens: list[bytes]) -> None:
        out = conn.out
        if len(tokens) < 2:
            out.append(b"ERROR\r\n")
            return
        if len(tokens[1]) > KEY_MAX or len(tokens) == 2:
            out.append(BAD_FORMAT_LINE)
            return
        if len(tokens) + 1 > MFLAG_MAX_OPT_LENGTH:
            out.append(b"CLIENT_ERROR options flags too long\r\n")
            return
        vlen = num(tokens[2], INT32_MIN, INT32_MAX)
        if vlen is None or vlen < 0 or vlen > INT32_MAX - 2:
            out.append(BAD_FORMAT_LINE)
            return
        of, err = self._preparse(tokens, 3)
        if err is None and not self._key_ok(of):
            err = "CLIENT_ERROR bad command line format"
        if err is None:
            for tok in tokens[3:]:
                if tok[0] == 0x4f and len(tok) > MFLAG_MAX_OPAQUE_LENGTH:
                    err = "CLIENT_ERROR opaque token too long"
        mode = {0: b"set", 0x45: b"add", 0x41: b"append", 0x50: b"prepend", 0x52: b"replace",
                0x53: b"set"}.get(of.mode)
        if err is None and mode is None:
            err = "CLIENT_ERROR invalid mode for ms M token"
        if err is None and of.has_cas and mode in (b"set", b"replace"):
            mode = b"cas"
        if err is None and not self.store.fits(len(of.key), vlen, of.client_flags):
            err = "SERVER_ERROR object too large for cache"
            self.stats["store_too_large"] += 1
            r = self.store.lookup(of.key)       # a stale value must not outlive the update
            if r is not None:
                self.store.unlink(r[0], r[1], r[3])
        if err is not None:
            out.append(err.encode() + b"\r\n")
            conn.swallow = vlen + 2
            return
        conn.pending = ("ms", of, tokens, mode, vlen)

    def _complete_ms(self, conn, p: tuple, chunk: bytes) -> None:
        _, of, tokens, mode, vlen = p
        c = self.store.class_for(ntotal(len(of.key), vlen, of.client_flags))
        self.cls_stats["cmd_set"][c] += 1
        if chunk[-2:] != b"\r\n":
            conn.out.append(b"CLIENT_ERROR bad data chunk\r\n")
            return
        code, cas = self._mstore(of, mode, chunk[:-2])
        if code == b"SERVER_ERROR":
            conn.out.append(b"SERVER_ERROR out of memory storing object\r\n")
            return
        if code == b"HD" and of.no_reply:
            return
        parts = [code]
        for tok in tokens[3:]:
            o = tok[0]
            if o == 0x4f:
                parts.append(b" " + tok)
            elif o == 0x6b:
                parts.append(self._ret_key(of.key, of.key_binary))
            elif o == 0x63:
                parts.append(b" c%d" % cas)
        parts.append(b"\r\n")
        conn.out.append(b"".join(parts))

    def _mstore(self, of: _Flags, mode: bytes, value: bytes) -> tuple[bytes, int]:
        """do_store_item for ms: (HD/NS/EX/NF or SERVER_ERROR, the CAS memcached reports:
        the new item's, 0 when nothing was stored)."""
        st = self.store
        key = of.key
        r = st.lookup(key, st.window if mode in (b"append", b"prepend") else 0)
        flags, exp = of.client_flags, of.exptime
        iflags = ITEM_LINKED | (ITEM_KEY_BINARY if of.key_binary else 0)
        if r is not None:
            old_cas = r[1][I_CAS]
            if not of.req_cas:
                cas_res = "none"
            elif of.req_cas == old_cas:
                cas_res = "match"
            elif of.set_stale and of.req_cas < old_cas:
                cas_res = "stale"
            else:
                cas_res = "badval"
            c = r[1][I_CLS]
            if mode == b"add":
                st.touch_lru(r)
                return b"NS", 0
            if mode == b"cas":
                if cas_res == "match":
                    self.cls_stats["cas_hits"][c] += 1
                elif cas_res == "stale":
                    # Replaces the value, keeps the TTL, marks it stale (and the token sent).
                    exp = r[1][I_EXP]
                    iflags |= ITEM_STALE | (r[1][I_IFLAGS] & ITEM_TOKEN_SENT)
                    self.cls_stats["cas_hits"][c] += 1
                else:
                    self.cls_stats["cas_badval"][c] += 1
                    return b"EX", 0
            elif mode in (b"append", b"prepend"):
                if cas_res not in ("none", "match"):
                    return b"EX", 0
                old = st.value_of(r)
                if not st.fits(len(key), len(old) + len(value), r[1][I_FLAGS]):
                    return b"NS", 0
                flags, exp = r[1][I_FLAGS], r[1][I_EXP]
                value = old + value if mode == b"append" else value + old
                st.unlink(r[0], r[1], r[3])
                try:
                    st.link_new(key, flags, exp, value, iflags)
                except OutOfMemory:
                    return b"NS", 0
                return b"HD", st.cas_counter
            st.unlink(r[0], r[1], r[3])
        else:
            if mode == b"cas":
                self.stats["cas_misses"] += 1
                return b"NF", 0
            if mode not in (b"set", b"add"):
                return b"NS", 0
        try:
            st.link_new(key, flags, exp, value, iflags)
        except OutOfMemory:
            return b"SERVER_ERROR", 0
        return b"HD", st.cas_counter

    # -- md -------------------------------------------------------------------------------
    def _md_ma_flags(self, conn, tokens: list[bytes]) -> _Flags | None:
        """md's and ma's checks and flags (both say only "invalid or duplicate flag" for any
        bad flag); None if an error was answered."""
        if not self._meta_start(conn, tokens, b"CLIENT_ERROR options flags too long\r\n"):
            return None
        of, err = self._preparse(tokens, 2)
        if err is not None:
            conn.out.append(b"CLIENT_ERROR invalid or duplicate flag\r\n")
            return None
        if not self._key_ok(of):
            conn.out.append(BAD_FORMAT_LINE)
            return None
        return of

    def _md(self, conn, tokens: list[bytes]) -> None:
        out = conn.out
        of = self._md_ma_flags(conn, tokens)
        if of is None:
            return
        tail = self._opaque_and_key(tokens, of)
        if tail is None:
            out.append(b"CLIENT_ERROR opaque token too long\r\n")
            return
        st = self.store
        r = st.lookup(of.key)
        if r is None:
            self.stats["delete_misses"] += 1
            out.append(b"NF" + tail + b"\r\n")
            return
        off, h = r[0], r[1]
        if of.has_cas and h[I_CAS] != of.req_cas:
            self.stats["delete_misses"] += 1
            out.append(b"EX" + tail + b"\r\n")
            return
        if of.set_stale:
            # Invalidate: keep the item, mark it stale, let the next client win the token.
            if of.new_ttl:
                st.set_exptime(off, of.exptime)
            st.set_iflags(off, (h[I_IFLAGS] | ITEM_STALE) & ~ITEM_TOKEN_SENT)
            st.set_cas(off)
        else:
            self.cls_stats["delete_hits"][h[I_CLS]] += 1
            st.unlink(off, h, r[3])
        if not of.no_reply:
            out.append(b"HD" + tail + b"\r\n")

    # -- ma -------------------------------------------------------------------------------
    def _ma(self, conn, tokens: list[bytes]) -> None:
        out = conn.out
        of = self._md_ma_flags(conn, tokens)
        if of is None:
            return
        if of.mode in (0, 0x49, 0x2b):          # I, +
            incr = True
        elif of.mode in (0x44, 0x2d):           # D, -
            incr = False
        else:
            out.append(b"CLIENT_ERROR invalid mode for ma M token\r\n")
            return
        st = self.store
        key = of.key
        res, new, r = self._add_delta(key, incr, of.delta, of.req_cas, want_item=True)
        created = False
        if res == "non_numeric":
            out.append(b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n")
            return
        if res == "eom":
            out.append(b"SERVER_ERROR out of memory\r\n")
            return
        code = b""
        if res == "not_found":
            if of.vivify:
                new = b"%d" % of.initial
                try:
                    st.link_new(key, 0, 0, new)
                except OutOfMemory:
                    out.append(b"SERVER_ERROR Out of memory allocating new item\r\n")
                    return
                r = st.lookup(key)
                created = True
            else:
                self.stats["incr_misses" if incr else "decr_misses"] += 1
                code = b"NF"
        elif res == "cas_mismatch":
            code = b"EX"
        if r is None:
            tail = self._opaque_and_key(tokens, of)
            if tail is None:
                out.append(b"CLIENT_ERROR opaque token too long\r\n")
                return
            out.append(code + tail + b"\r\n")
            return
        off, h = r[0], r[1]
        exp = h[I_EXP]
        parts = [b"VA %d" % len(new) if of.value else b"HD"]
        for tok in tokens[2:]:
            o = tok[0]
            if o == 0x63:
                parts.append(b" c%d" % h[I_CAS])
            elif o == 0x74:
                parts.append(b" t-1" if exp == 0 else b" t%d" % ((exp - st.now) & 0xFFFFFFFF))
            elif o == 0x54:
                exp = of.exptime
                st.set_exptime(off, exp)
            elif o == 0x4e:
                if created:
                    exp = of.autoviv_exptime
                    st.set_exptime(off, exp)
            elif o == 0x4f:
                if len(tok) > MFLAG_MAX_OPAQUE_LENGTH:
                    out.append(b"CLIENT_ERROR opaque token too long\r\n")
                    return
                parts.append(b" " + tok)
            elif o == 0x6b:
                parts.append(self._ret_key(key, of.key_binary))
        if of.value:
            parts.append(b"\r\n" + new)
        parts.append(b"\r\n")
        if not of.no_reply:
            out.append(b"".join(parts))

    # -- me -------------------------------------------------------------------------------
    def _me(self, conn, tokens: list[bytes]) -> None:
        out = conn.out
        if len(tokens) < 2 or len(tokens[1]) > KEY_MAX:
            out.append(BAD_FORMAT_LINE)
            return
        key = tokens[1]
        binary = False
        if len(tokens) >= 3 and tokens[2] == b"b":
            key = b64_key(key)
            if key is None:
                out.append(BAD_FORMAT_LINE)
                return
            binary = True
        self.stats["meta_cmds"] += 1
        if not binary and self._bad_key(key):
            out.append(BAD_FORMAT_LINE)
            return
        st = self.store
        r = st.lookup(key)
        if r is None:
            out.append(b"EN\r\n")
            return
        h = r[1]
        shown = base64.b64encode(key) if h[I_IFLAGS] & ITEM_KEY_BINARY else key
        exp = -1 if h[I_EXP] == 0 else _i32(st.now - h[I_EXP])
        out.append(b"ME %s exp=%d la=%d cas=%d fetch=%s cls=%d size=%d\r\n" % (
            shown, exp, (st.now - h[I_TIME]) & 0xFFFFFFFF, h[I_CAS],
            b"yes" if h[I_IFLAGS] & ITEM_FETCHED else b"no", st.reported_class(h[I_CLS]),
            ntotal(h[I_NKEY], h[I_NBYTES], h[I_FLAGS])))


def _i32(v: int) -> int:
    """A C int from rel_time_t arithmetic (unsigned, wrapping)."""
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= 1 << 31 else v


"""The KV store's administrative commands (app code of apps/kvstore.py): stats and its
subcommands, cache_memlimit, lru_crawler, verbosity, shutdown.

A mixin of the server (apps/kvstore.py's KVServer). Answers and error strings follow
memcached 1.6.18 (process_stat, process_memlimit_command, process_lru_crawler_command in
proto_text.c; item_cachedump and the crawler's metadump in items.c and crawler.c). Stats
carry memcached's names; those that describe machinery this server does not have (extstore,
the LRU maintainer and crawler threads, slab rebalancing, TLS, SASL, response objects) are
left out rather than reported as zeros (README, "Sample apps").
"""
from __future__ import annotations

import os
import resource
import time
from urllib.parse import quote

from apps.kv.items import I_CAS, I_EXP, I_FLAGS, I_IFLAGS, I_NBYTES, I_NKEY, I_TIME, \
    ITEM_FETCHED, ITEM_KEY_BINARY, ntotal
from apps.kv.tokens import UINT32_MAX, unsigned

# memcached's MAX_NUMBER_OF_SLAB_CLASSES (63 + 1): class ids at or above are refused.
MAX_NUMBER_OF_SLAB_CLASSES = 64
# lru_crawler metadump is answered in parts of about this many bytes, each sent before the
# next is made.
DUMP_PART = 1 << 20
# item_cachedump stops at 2 MB of answer.
CACHEDUMP_LIMIT = 2 * 1024 * 1024
# Counters memcached keeps per slab class, summed for the general stats.
CLASS_STATS = ("get_hits", "cmd_set", "delete_hits", "incr_hits", "decr_hits", "cas_hits",
               "cas_badval", "touch_hits")
GLOBAL_STATS = ("cmd_flush", "cmd_touch", "meta_cmds", "cmd_get", "get_misses", "get_expired",
                "get_flushed", "delete_misses", "incr_misses", "decr_misses", "cas_misses",
                "touch_misses", "store_too_large", "store_no_memory", "bytes_read",
                "bytes_written")


def _rows(rows) -> bytes:
    return b"".join(b"STAT %s %s\r\n" % (str(k).encode(), str(v).encode()) for k, v in rows)


class AdminCommands:
    """stats, cache_memlimit, lru_crawler, verbosity (a mixin of KVServer)."""

    def reset_stats(self) -> None:
        for name in GLOBAL_STATS:
            self.stats[name] = 0
        n = len(self.store.sizes)
        for name in CLASS_STATS:
            self.cls_stats[name] = [0] * n
        # the get and set paths' counters, without a dict lookup
        self._get_hits = self.cls_stats["get_hits"]
        self._set_cmds = self.cls_stats["cmd_set"]

    # -- stats ----------------------------------------------------------------------------
    def _stats(self, conn, args: list[bytes]) -> None:
        out = conn.out
        sub = args[0] if args else None
        if sub is None:
            rows = self._general_stats()
        elif sub == b"reset":
            self.reset_stats()
            self.store.reset_counters()
            self.total_connections = 0
            self.rejected_connections = 0
            self.listen_disabled_num = 0
            out.append(b"RESET\r\n")
            return
        elif sub == b"detail":
            self._stats_detail(conn, args[1] if len(args) > 1 else b"")
            return
        elif sub == b"settings":
            rows = self._settings()
        elif sub == b"cachedump":
            self._cachedump(conn, args)
            return
        elif sub == b"conns":
            rows = self._conns(conn)
        elif sub == b"items":
            rows = self._items_stats()
        elif sub == b"slabs":
            rows = self._slabs_stats()
        elif sub == b"sizes":
            rows = [("sizes_status", "disabled")]      # memcached's default: not tracked
        else:
            out.append(b"ERROR\r\n")
            return
        out.append(_rows(rows) + b"END\r\n")

    def _general_stats(self) -> list[tuple[str, object]]:
        st = self.store
        ru = resource.getrusage(resource.RUSAGE_SELF)
        now = int(time.time())
        s = self.stats
        cs = {k: sum(v) for k, v in self.cls_stats.items()}
        return [
            ("pid", os.getpid()), ("uptime", now - st.started), ("time", now),
            ("version", self.version.decode()), ("pointer_size", 64),
            ("rusage_user", f"{ru.ru_utime:.6f}"), ("rusage_system", f"{ru.ru_stime:.6f}"),
            ("max_connections", self.maxconns), ("curr_connections", len(self.conns)),
            ("total_connections", self.total_connections),
            ("rejected_connections", self.rejected_connections),
            ("connection_structures", len(self.conns)),
            ("cmd_get", s["cmd_get"]), ("cmd_set", cs["cmd_set"]), ("cmd_flush", s["cmd_flush"]),
            ("cmd_touch", s["cmd_touch"]), ("cmd_meta", s["meta_cmds"]),
            ("get_hits", cs["get_hits"]), ("get_misses", s["get_misses"]),
            ("get_expired", s["get_expired"]), ("get_flushed", s["get_flushed"]),
            ("delete_misses", s["delete_misses"]), ("delete_hits", cs["delete_hits"]),
            ("incr_misses", s["incr_misses"]), ("incr_hits", cs["incr_hits"]),
            ("decr_misses", s["decr_misses"]), ("decr_hits", cs["decr_hits"]),
            ("cas_misses", s["cas_misses"]), ("cas_hits", cs["cas_hits"]),
            ("cas_badval", cs["cas_badval"]), ("touch_hits", cs["touch_hits"]),
            ("touch_misses", s["touch_misses"]), ("store_too_large", s["store_too_large"]),
            ("store_no_memory", s["store_no_memory"]),
            ("bytes_read", s["bytes_read"]), ("bytes_written", s["bytes_written"]),
            ("limit_maxbytes", st.limit_maxbytes), ("accepting_conns", 1),
            ("listen_disabled_num", self.listen_disabled_num), ("threads", 1),
            ("hash_power_level", st.hashpower), ("hash_bytes", 4 << st.hashpower),
            ("hash_is_expanding", 0),
            ("bytes", st.bytes), ("curr_items", st.curr_items), ("total_items", st.total_items),
            ("expired_unfetched", sum(st.counters.expired_unfetched)),
            ("evicted_unfetched", sum(st.counters.evicted_unfetched)),
            ("evictions", st.evictions), ("reclaimed", sum(st.counters.reclaimed)),
        ]

    def _settings(self) -> list[tuple[str, object]]:
        a = self.args
        st = self.store
        return [
            ("maxbytes", st.limit_maxbytes), ("maxconns", self.maxconns), ("tcpport", self.port),
            ("udpport", a.udp_port), ("inter", a.listen), ("verbosity", self.verbosity),
            ("oldest", st.oldest_live), ("evictions", "on"),
            ("shutdown_command", "yes" if a.enable_shutdown else "no"),
            ("growth_factor", f"{a.factor:.2f}"), ("chunk_size", 48), ("num_threads", 1),
            ("stat_key_prefix", ":"), ("detail_enabled", "yes" if self.detail else "no"),
            ("cas_enabled", "yes"), ("tcp_backlog", a.backlog), ("binding_protocol", "ascii"),
            ("item_size_max", a.max_item_size), ("hashpower_init", a.hashpower or 0),
            ("slab_reassign", "no"), ("slab_chunk_max", st.page_size), ("lru_crawler", "yes"),
            ("flush_enabled", "yes"), ("dump_enabled", "yes"),
            ("lru_maintainer_thread", "no"), ("lru_segmented", "no"), ("track_sizes", "no"),
        ]

    def _conns(self, asking) -> list[tuple[str, object]]:
        rows: list[tuple[str, object]] = []
        lfd = self.lsock.fileno()
        host, port = self.lsock.getsockname()[:2]
        rows += [(f"{lfd}:addr", f"tcp:{host}:{port}"), (f"{lfd}:state", "conn_listening"),
                 (f"{lfd}:secs_since_last_cmd", 0)]
        now = self.store.now
        for fd in sorted(self.conns):
            conn = self.conns[fd]
            try:
                peer = conn.sock.getpeername()
            except OSError:
                continue
            state = "conn_parse_cmd" if conn is asking else (
                "conn_nread" if conn.pending is not None else
                "conn_mwrite" if conn.writing else "conn_waiting")
            rows += [(f"{fd}:addr", f"tcp:{peer[0]}:{peer[1]}"),
                     (f"{fd}:listen_addr", f"tcp:{host}:{port}"), (f"{fd}:state", state),
                     (f"{fd}:secs_since_last_cmd", now - conn.last_cmd)]
        return rows

    def _items_stats(self) -> list[tuple[str, object]]:
        st = self.store
        rows: list[tuple[str, object]] = []
        # Our whole-page class is reported with memcached's largest, where it keeps such items.
        groups = [[c] for c in range(st.largest)] + [[st.largest, st.largest + 1]]
        for cs in groups:
            number = sum(st.class_items[c] for c in cs)
            if not number:
                continue
            tails = [st.tail_time(c) for c in cs if st.class_items[c]]
            p = f"items:{cs[0] + 1}:"

            def total(counter, cs=cs):
                return sum(counter[c] for c in cs)
            rows += [(p + "number", number), (p + "age", st.now - min(tails)),
                     (p + "mem_requested", sum(st.class_bytes(c) for c in cs)),
                     (p + "evicted", total(st.counters.evicted)),
                     (p + "evicted_nonzero", total(st.counters.evicted_nonzero)),
                     (p + "evicted_time", max(st.counters.evicted_time[c] for c in cs)),
                     (p + "outofmemory", total(st.counters.outofmemory)), (p + "tailrepairs", 0),
                     (p + "reclaimed", total(st.counters.reclaimed)),
                     (p + "expired_unfetched", total(st.counters.expired_unfetched)),
                     (p + "evicted_unfetched", total(st.counters.evicted_unfetched)),
                     (p + "crawler_reclaimed", 0),
                     (p + "crawler_items_checked", total(self.crawler_checked)),
                     (p + "lrutail_reflocked", 0)]
        return rows

    def _slabs_stats(self) -> list[tuple[str, object]]:
        st = self.store
        cs = self.cls_stats
        rows: list[tuple[str, object]] = []
        active = 0
        for c, size in enumerate(st.sizes):
            pages = st.pages_of(c)
            if not pages:
                continue
            active += 1
            total = pages * st.per_page[c]
            used = st.class_items[c]
            p = f"{c + 1}:"
            rows += [(p + "chunk_size", size), (p + "chunks_per_page", st.per_page[c]),
                     (p + "total_pages", pages), (p + "total_chunks", total),
                     (p + "used_chunks", used), (p + "free_chunks", total - used),
                     (p + "free_chunks_end", 0)]
            rows += [(p + name, cs[name][c]) for name in CLASS_STATS]
        rows += [("active_slabs", active), ("total_malloced", st.pages_used() * st.page_size)]
        return rows

    def _cachedump(self, conn, args: list[bytes]) -> None:
        out = conn.out
        if len(args) < 3:
            out.append(b"CLIENT_ERROR bad command line\r\n")
            return
        cls = unsigned(args[1], UINT32_MAX)
        limit = unsigned(args[2], UINT32_MAX)
        if cls is None or limit is None:
            out.append(b"CLIENT_ERROR bad command line format\r\n")
            return
        if cls >= MAX_NUMBER_OF_SLAB_CLASSES:
            out.append(b"CLIENT_ERROR Illegal slab id\r\n")
            return
        st = self.store
        lines = []
        size = 0
        if 1 <= cls <= len(st.sizes):
            for _off, h, key in st.items_of(cls - 1):
                if limit and len(lines) >= limit:
                    break
                if h[I_IFLAGS] & ITEM_KEY_BINARY:
                    continue            # memcached does not print binary keys here
                line = b"ITEM %s [%d b; %d s]\r\n" % (key, h[I_NBYTES], h[I_EXP])
                if size + len(line) + 6 > CACHEDUMP_LIMIT:
                    break
                lines.append(line)
                size += len(line)
        out.append(b"".join(lines) + b"END\r\n")

    def _stats_detail(self, conn, what: bytes) -> None:
        out = conn.out
        if what == b"on":
            self.detail = True
            # Gets are counted by a wrapper put in front of the classic get only while detail
            # is on, so the hot path pays nothing for it otherwise.
            self._get = self._get_detail
            self._get1 = self._get1_detail
            self._complete_store = self._complete_store_detail
            out.append(b"OK\r\n")
        elif what == b"off":
            self.detail = False
            for name in ("_get", "_get1", "_complete_store"):
                self.__dict__.pop(name, None)
            out.append(b"OK\r\n")
        elif what == b"dump":
            out.append(b"".join(b"PREFIX %s get %d hit %d set %d del %d\r\n" % (p, *v)
                                for p, v in self.prefix_stats.items()) + b"END\r\n")
        else:
            out.append(b"CLIENT_ERROR usage: stats detail on|off|dump\r\n")

    def _get_detail(self, conn, keys: list[bytes], with_cas: bool, i: int = 0) -> None:
        if i == 0:              # a streamed reply's later parts were counted with the first
            for k in keys:
                self.record_prefix(k, 0, self.store.lookup(k) is not None)
        type(self)._get(self, conn, keys, with_cas, i)

    def _get1_detail(self, conn, key: bytes, with_cas: bool) -> None:
        self.record_prefix(key, 0, self.store.lookup(key) is not None)
        type(self)._get1(self, conn, key, with_cas)

    def _complete_store_detail(self, conn, p: tuple, chunk: bytes) -> None:
        self.record_prefix(p[1], 2)
        type(self)._complete_store(self, conn, p, chunk)

    def record_prefix(self, key: bytes, what: int, hit: bool = False) -> None:
        """stats detail: per key prefix (up to the first ':') gets (0), sets (2), deletes (3)."""
        i = key.find(b":")
        if i < 0:
            return
        v = self.prefix_stats.setdefault(key[:i], [0, 0, 0, 0])
        v[what] += 1
        if hit:
            v[1] += 1

    # -- cache_memlimit, lru_crawler, verbosity -------------------------------------------
    def _memlimit(self, conn, tokens: list[bytes]) -> None:
        noreply = tokens[-1] == b"noreply"
        mb = unsigned(tokens[1], UINT32_MAX)
        if mb is None:
            res = b"ERROR\r\n"
        elif mb < 8:
            res = b"MEMLIMIT_TOO_SMALL cannot set maxbytes to less than 8m\r\n"
        elif mb > 1000000000:
            res = b"MEMLIMIT_ADJUST_FAILED input value is megabytes not bytes\r\n"
        else:
            st = self.store
            pages = (mb << 20) // st.page_size
            if pages > st.arena_pages:
                # The arena is one mapping made at start (the enclave's heap): it can be
                # used less, never grown past -m.
                res = b"MEMLIMIT_ADJUST_FAILED out of bounds or unable to adjust\r\n"
            else:
                st.set_page_limit(pages)
                res = b"OK\r\n"
        if not noreply:
            conn.out.append(res)

    def _lru_crawler(self, conn, tokens: list[bytes]) -> None:
        out = conn.out
        nt = len(tokens)
        if nt == 3 and tokens[1] == b"metadump":
            if conn.out or conn.wbuf:
                # memcached's resp_has_stack: answers of pipelined commands still queued
                out.append(b"ERROR cannot pipeline other commands before metadump\r\n")
                return
            self._metadump(conn, tokens[2])
        elif nt == 3 and tokens[1] == b"crawl":
            classes = self._crawl_classes(tokens[2])
            if classes is None:
                out.append(b"BADCLASS invalid class id\r\n")
                return
            # Expired and flushed items are reclaimed by every lookup and by eviction at the
            # tail; a crawl walks the classes and reclaims the rest now.
            st = self.store
            for c in classes:
                for off, h, key in list(st.items_of(c)):
                    self.crawler_checked[c] += 1
                    st.lookup(key)
            out.append(b"OK\r\n")
        elif nt == 3 and tokens[1] in (b"tocrawl", b"sleep"):
            v = unsigned(tokens[2], UINT32_MAX)
            if v is None:
                out.append(b"CLIENT_ERROR bad command line format\r\n")
            elif tokens[1] == b"sleep" and v > 1000000:
                out.append(b"CLIENT_ERROR sleep must be one second or less\r\n")
            else:
                out.append(b"OK\r\n")       # accepted; a crawl here runs at once, unpaced
        elif nt == 2 and tokens[1] in (b"enable", b"disable"):
            out.append(b"OK\r\n")
        else:
            out.append(b"ERROR\r\n")

    def _crawl_classes(self, which: bytes) -> list[int] | None:
        n = len(self.store.sizes)
        if which in (b"all", b"hash"):
            return list(range(n))
        out = []
        for part in which.split(b","):
            c = unsigned(part, UINT32_MAX)
            if c is None or not 1 <= c < MAX_NUMBER_OF_SLAB_CLASSES:
                return None
            if c <= n:
                out.append(c - 1)
        return out

    def _metadump(self, conn, which: bytes) -> None:
        classes = self._crawl_classes(which)
        if classes is None:
            conn.out.append(b"BADCLASS invalid class id\r\n")
            return
        self._metadump_part(conn, classes, 0, None)

    def _metadump_part(self, conn, classes: list[int], ci: int, resume) -> None:
        """Up to DUMP_PART bytes of the dump, then it goes on as the client reads (conn.more),
        so a dump of millions of items pins no more than that (memcached's crawler writes
        through a bounded buffer too). Items changed meanwhile may be skipped, as there."""
        st = self.store
        lines = []
        size = 0
        while ci < len(classes):
            c = classes[ci]
            for off, h, key in st.items_of(c, oldest_first=True, resume=resume):
                if size > DUMP_PART:
                    conn.out.append(b"".join(lines))
                    conn.obytes += size
                    conn.more = (self._metadump_part, (classes, ci, (off, key)))
                    return
                self.crawler_checked[c] += 1
                if (h[I_EXP] and h[I_EXP] < st.now) or not st._live(h):
                    continue
                shown = quote(key, safe="-._~").encode()
                line = b"key=%s exp=%d la=%d cas=%d fetch=%s cls=%d size=%d\n" % (
                    shown, h[I_EXP] or -1, h[I_TIME], h[I_CAS],
                    b"yes" if h[I_IFLAGS] & ITEM_FETCHED else b"no", st.reported_class(c),
                    ntotal(h[I_NKEY], h[I_NBYTES], h[I_FLAGS]))
                lines.append(line)
                size += len(line)
            ci += 1
            resume = None
        conn.out.append(b"".join(lines) + b"END\r\n")
        conn.obytes += size

    def _verbosity(self, conn, tokens: list[bytes]) -> None:
        noreply = tokens[-1] == b"noreply"
        v = unsigned(tokens[1], UINT32_MAX)
        if v is None:
            res = b"CLIENT_ERROR bad command line format\r\n"
        else:
            self.verbosity = min(v, 2)      # memcached's MAX_VERBOSITY_LEVEL
            res = b"OK\r\n"
        if not noreply:
            conn.out.append(res)

"""The KV store speaks memcached's text protocol identically under native, sgx and eleos.

pymemcache drives every command through one transcript whose answers are pinned below; the
same transcript against Debian's memcached gives the same answers (cas values are compared
as "the one gets returned" vs "stale", since counters differ between servers). Under the
shim the server runs as ``python -m eleos_shim --mode M apps/kvstore.py`` and its stats must
show the socket calls and the arena where the mode puts them.
"""
from __future__ import annotations

import contextlib
import time

import pytest
from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheClientError

from tests.conftest_kv import MODES, kvserver, real_memcached

MAX64 = 2 ** 64 - 1


@contextlib.contextmanager
def client(address):
    c = Client(address, default_noreply=False, connect_timeout=10, timeout=30)
    try:
        yield c
    finally:
        c.close()


def transcript(c: Client) -> list:
    """Every command of the protocol, with the answers recorded in order."""
    now = int(time.time())
    r: list = []
    add = r.append
    add(c.flush_all())
    # storage commands
    add(c.set(b"a", b"1"))
    add(c.get(b"a"))
    add(c.add(b"a", b"2"))
    add(c.add(b"b", b"2"))
    add(c.replace(b"zz", b"x"))
    add(c.replace(b"b", b"3"))
    add(c.append(b"b", b"4"))
    add(c.prepend(b"b", b"0"))
    add(c.get(b"b"))
    add(c.append(b"nope", b"x"))
    add(c.prepend(b"nope", b"x"))
    add(c.set(b"flagged", b"v", flags=4242))
    add(c.raw_command(b"get flagged", b"END\r\n"))
    add(c.set(b"empty", b""))
    add(c.get(b"empty"))
    big = bytes(range(256)) * 300       # 76.8 KB, every byte value, \r\n inside
    add(c.set(b"big", big))
    add(c.get(b"big") == big)
    # multi-get with misses
    add(sorted(c.get_many([b"a", b"missing1", b"b", b"missing2", b"a"]).items()))
    add(c.get_many([b"missing3", b"missing4"]))
    # cas: the unique from gets wins once; a stale one conflicts; a missing key is None
    value, cas = c.gets(b"a")
    add(value)
    add(c.cas(b"a", b"new", cas))
    add(c.cas(b"a", b"newer", cas))
    add(c.cas(b"absent", b"x", 1))
    add(c.get(b"a"))
    _, cas2 = c.gets(b"a")
    add(cas2 != cas)
    add(c.set(b"a", b"reset"))
    add(c.cas(b"a", b"late", cas2))     # a set in between makes the unique stale
    # incr/decr: wrap at 2**64, decr stops at 0, non-numeric refused, misses are None
    add(c.set(b"n", b"10"))
    add(c.incr(b"n", 5))
    add(c.decr(b"n", 20))
    add(c.incr(b"n", MAX64))
    add(c.incr(b"n", 2))
    add(c.set(b"n", str(MAX64).encode()))
    add(c.incr(b"n", 1))
    add(c.get(b"n"))                    # memcached rewrites in place, space-padded
    add(c.set(b"n", b"99"))
    add(c.incr(b"n", 1))                # one digit longer: a new item
    add(c.get(b"n"))
    add(c.incr(b"absent", 1))
    add(c.decr(b"absent", 1))
    add(c.incr(b"b", 1))                # "034" is a number to memcached: 35, padded
    add(c.set(b"s", b"12ab"))
    try:
        c.incr(b"s", 1)
        add("no error")
    except MemcacheClientError as e:
        add(str(e))
    # delete
    add(c.delete(b"a"))
    add(c.delete(b"a"))
    add(c.get(b"a"))
    # expiry: negative = already expired; > 30 days = absolute unix time; touch; gat
    add(c.set(b"e1", b"v", expire=-1))
    add(c.get(b"e1"))
    add(c.set(b"e2", b"v", expire=now - 3600))
    add(c.get(b"e2"))
    add(c.set(b"e3", b"v", expire=now + 3600))
    add(c.get(b"e3"))
    add(c.set(b"e4", b"v", expire=100))
    add(c.get(b"e4"))
    add(c.touch(b"e4", -1))
    add(c.get(b"e4"))
    add(c.touch(b"missing", 10))
    add(c.set(b"e5", b"w", expire=-1))
    add(c.add(b"e5", b"x"))             # an expired item does not block add
    add(c.get(b"e5"))
    add(c.raw_command(b"gat 100 e5", b"END\r\n"))
    add(c.touch(b"e5", now - 10))       # absolute time in the past
    add(c.get(b"e5"))
    # noreply: no answers, but the effects happen
    add(c.set(b"nr", b"q", noreply=True))
    add(c.add(b"nr", b"zz", noreply=True))
    add(c.get(b"nr"))
    add(c.append(b"nr", b"+", noreply=True))
    add(c.incr(b"n", 1, noreply=True))
    add(c.get_many([b"nr", b"n"]))
    add(c.delete(b"nr", noreply=True))
    add(c.get(b"nr"))
    # flush_all with a delay leaves items for now; without one it drops them all
    add(c.flush_all(delay=3600))
    add(c.get(b"b"))
    add(c.flush_all())
    add(c.get_many([b"b", b"n", b"e3", b"flagged"]))
    add(c.set(b"after", b"flush"))
    add(c.get(b"after"))
    return r


EXPECTED = [
    True,
    True, b"1", False, True, False, True, True, True, b"034", False, False,
    True, b"VALUE flagged 4242 1\r\nv\r\n", True, b"", True, True,
    [(b"a", b"1"), (b"b", b"034")], {},
    b"1", True, False, None, b"new", True, True, False,
    True, 15, 0, MAX64, 1, True, 0, b"0" + b" " * 19, True, 100, b"100", None, None, 35, True,
    "b'cannot increment or decrement non-numeric value'",
    True, False, None,
    True, None, True, None, True, b"v", True, b"v", True, None, False,
    True, True, b"x", b"VALUE e5 0 1\r\nx\r\n", True, None,
    True, True, b"q", True, None, {b"nr": b"q+", b"n": b"101"}, True, None,
    True, b"35 ", True, {}, True, b"flush",
]


@pytest.fixture(scope="module", params=MODES)
def server(request):
    with kvserver(request.param, "-m", "16", "-I", "256k", "-c", "16") as srv:
        yield srv


def test_pymemcache_transcript_matches_memcached_semantics(server):
    with client(server.address) as c:
        got = transcript(c)
    assert got == EXPECTED


def test_real_memcached_gives_the_same_transcript():
    with real_memcached("-m", "16") as address:
        with client(address) as c:
            got = transcript(c)
    assert got == EXPECTED


def test_stats_use_memcached_names_and_count(server):
    with client(server.address) as c:
        assert c.raw_command(b"stats reset") == b"RESET"
        before = c.stats()
        for i in range(5):
            c.set(b"stat-key-%d" % i, b"x" * 100)
        c.get_many([b"stat-key-0", b"stat-key-1", b"stat-nope"])
        c.delete(b"stat-key-4")
        st = c.stats()
        version = c.version()
    assert version.startswith(b"1.6")
    for name in (b"curr_items", b"total_items", b"bytes", b"evictions", b"get_hits",
                 b"get_misses", b"cmd_get", b"cmd_set", b"curr_connections",
                 b"limit_maxbytes", b"total_connections", b"delete_hits", b"pid", b"uptime"):
        assert name in st, name
    assert before[b"cmd_set"] == before[b"cmd_get"] == 0     # reset
    assert st[b"curr_items"] - before[b"curr_items"] == 4
    assert st[b"total_items"] - before[b"total_items"] == 5
    assert st[b"cmd_set"] == 5
    assert st[b"get_hits"] == 2 and st[b"get_misses"] == 1 and st[b"cmd_get"] == 3
    assert st[b"delete_hits"] == 1
    assert st[b"limit_maxbytes"] == 16 * 1024 * 1024
    # memcached's ITEM_ntotal: 48-byte header, key + NUL, value + CRLF, 8-byte CAS
    assert st[b"bytes"] - before[b"bytes"] == 4 * (48 + 11 + 102 + 8)
    assert st[b"curr_connections"] >= 1


def test_verbosity_version_and_quit_over_the_wire(server):
    import socket
    with socket.create_connection(server.address, timeout=30) as s:
        s.sendall(b"verbosity 1\r\nverbosity 1 noreply\r\nversion\r\nquit\r\nversion\r\n")
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    assert data.startswith(b"OK\r\nVERSION 1.6")
    assert data.count(b"VERSION") == 1      # nothing after quit


def test_shim_routes_the_sockets_and_places_the_arena():
    """One server per shim mode: its stats show where the calls and the heap went."""
    for mode, check in (("sgx", _check_sgx), ("eleos", _check_eleos)):
        with kvserver(mode, "-m", "16") as srv:
            with client(srv.address) as c:
                for i in range(200):
                    c.set(b"k%d" % i, b"v" * 2000)
                assert c.get(b"k7") == b"v" * 2000
            assert srv.stop() == 0, srv.stderr()
            stats = srv.shim_stats()
        assert stats is not None and stats["mode"] == mode
        calls = stats["calls"]
        recv = sum(v["count"] for k, v in calls.items() if k.startswith("recv"))
        assert recv >= 201, calls
        check(stats)


def _check_sgx(stats):
    assert stats["transitions"]["eexit"] > 200      # every socket call left the enclave
    assert stats["epc"]["faults"] > 0               # the arena lives in the EPC


def _check_eleos(stats):
    assert stats["rpc"]["processed"] + stats["rpc"]["fallbacks"] > 200
    assert stats["suvm"]["hits"] + stats["suvm"]["faults"] > 1000   # the arena is SUVM


def test_relative_ttl_expires_on_the_clock():
    """A 1-second TTL: present within its second, gone once the clock passes it (waits < 1 s;
    the wait is for wall-clock time, the thing under test, not for synchronisation). Natively
    only: the modes differ in where the arena lives, not in the clock."""
    with kvserver("native", "-m", "2") as srv, client(srv.address) as c:
        t0 = time.time()
        assert c.set(b"ttl", b"v", expire=1)
        got = c.get(b"ttl")
        t_reply = time.time()
        if int(t_reply) == int(t0):             # still within the second it was set in
            assert got == b"v"
        # The server's exptime is at most int(t_reply) + 1: by then the item is gone.
        time.sleep(max(0.0, int(t_reply) + 1.02 - time.time()))
        assert c.get(b"ttl") is None
        assert c.touch(b"ttl", 100) is False    # expired items cannot be touched back

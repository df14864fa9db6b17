"""The slab allocator evicts as memcached does: per size class, least recently used first.

The store gets 1 MB of item memory in 16 KB pages (64 pages). Values of 900 bytes with 6-byte
keys take 1184-byte chunks (classes grow by 1.25 from 96 bytes), 13 to a page. Gets do not
reorder the LRU within a minute (memcached's ITEM_UPDATE_INTERVAL), so a fill evicts in
insertion order. Requests are pipelined over a raw socket to keep the test fast.
Runs under native, sgx and eleos.
"""
from __future__ import annotations

import socket

import pytest

from tests.conftest_kv import MODES, kvserver

PAGES = 64
PER_PAGE = 16384 // 1184        # 13 chunks of the 1184-byte class per page
VALUE = b"v" * 900


def exchange(sock: socket.socket, payload: bytes) -> list[bytes]:
    """Send a pipeline and a ``version`` sentinel; the reply lines before it (values skipped)."""
    sock.sendall(payload + b"version\r\n")
    buf, out = b"", []
    while True:
        chunk = sock.recv(1 << 20)
        assert chunk, f"closed after {len(out)} answers"
        buf += chunk
        while True:
            nl = buf.find(b"\r\n")
            if nl < 0:
                break
            line = buf[:nl]
            if line.startswith(b"VALUE "):
                n = int(line.split()[3])
                if len(buf) < nl + 2 + n + 2:
                    break
                buf = buf[nl + 2 + n + 2:]
            else:
                buf = buf[nl + 2:]
            if line.startswith(b"VERSION "):
                return out
            out.append(line)


def sets(keys, value=VALUE) -> bytes:
    return b"".join(b"set %s 0 0 %d\r\n%s\r\n" % (k, len(value), value) for k in keys)


def present(sock, keys) -> list[bool]:
    """One bool per key: each single-key get answers [VALUE, END] or [END]."""
    lines = iter(exchange(sock, b"".join(b"get %s\r\n" % k for k in keys)))
    out = []
    for line in lines:
        hit = line.startswith(b"VALUE ")
        if hit:
            assert next(lines) == b"END"
        else:
            assert line == b"END", line
        out.append(hit)
    assert len(out) == len(keys)
    return out


def stat(sock, name: bytes) -> int:
    for line in exchange(sock, b"stats\r\n"):
        parts = line.split()
        if len(parts) == 3 and parts[1] == name:
            return int(parts[2])
    raise KeyError(name)


@pytest.fixture(params=MODES)
def server(request):
    with kvserver(request.param, "-m", "1", "-I", "16k") as srv:
        yield srv


def test_full_class_evicts_least_recently_set_first(server):
    capacity = PAGES * PER_PAGE
    keys = [b"k%05d" % i for i in range(capacity + 150)]
    with socket.create_connection(server.address, timeout=60) as s:
        assert set(exchange(s, sets(keys))) == {b"STORED"}
        alive = present(s, keys)
        assert stat(s, b"evictions") == 150
        assert stat(s, b"curr_items") == capacity
    assert alive == [False] * 150 + [True] * capacity


def test_classes_evict_only_within_themselves(server):
    small = [b"s%05d" % i for i in range(20)]           # the 152-byte class: one page
    with socket.create_connection(server.address, timeout=60) as s:
        assert set(exchange(s, sets(small, b"x" * 100))) == {b"STORED"}
        churn = [b"k%05d" % i for i in range(2 * PAGES * PER_PAGE)]
        assert set(exchange(s, sets(churn))) == {b"STORED"}
        assert present(s, small) == [True] * 20         # untouched by the other class
        assert present(s, churn[-5:]) == [True] * 5
        # A class that never got a page cannot evict anything: memcached's answer.
        big = b"z" * 5000
        assert exchange(s, sets([b"bigone"], big)) == \
            [b"SERVER_ERROR out of memory storing object"]
        assert present(s, [b"bigone"]) == [False]

"""A store smaller than its data: evictions happen, and every value read back is one that was
acknowledged for that key (never a torn value, a stale one, or another key's).

The server gets 1 MB of item memory in 16 KB slab pages; the test writes about 4 MB of values
over three connections, in four size classes, mixed with gets and deletes. Operations are
sequential (each waits for its answer), so a get must return exactly the last value
acknowledged for its key, or miss if that value was evicted or deleted. Every value encodes
its key and version and is filled with bytes derived from both, so any mix-up shows.
Runs under native, sgx and eleos.
"""
from __future__ import annotations

import contextlib
import hashlib
import random

import pytest
from pymemcache.client.base import Client

from tests.conftest_kv import MODES, kvserver

KEYS = 1200
OPS = 6000
SIZES = (100, 700, 3000, 9000)      # four slab classes, each used from the first sets on


def value_for(key: bytes, version: int, size: int) -> bytes:
    head = b"%s|%d|" % (key, version)
    fill = hashlib.sha256(head).digest()
    body = fill * (size // len(fill) + 1)
    return (head + body)[:size]


@contextlib.contextmanager
def clients(address, n):
    cs = [Client(address, default_noreply=False, connect_timeout=10, timeout=30)
          for _ in range(n)]
    try:
        yield cs
    finally:
        for c in cs:
            c.close()


@pytest.mark.parametrize("mode", MODES)
def test_reads_return_only_acknowledged_values_under_eviction(mode):
    rnd = random.Random(6)
    acked: dict[bytes, bytes | None] = {}     # key -> last acknowledged value (None: deleted)
    written = hits = misses = 0
    with kvserver(mode, "-m", "1", "-I", "16k") as srv, clients(srv.address, 3) as cs:
        for op in range(OPS):
            c = cs[op % 3]
            key = b"key%d" % rnd.randrange(KEYS)
            r = rnd.random()
            if r < 0.5 or key not in acked:
                size = rnd.choice(SIZES) + rnd.randrange(8)
                value = value_for(key, op, size)
                assert c.set(key, value) is True
                acked[key] = value
                written += size
            elif r < 0.9:
                got = c.get(key)
                if got is None:
                    misses += 1
                else:
                    hits += 1
                    assert got == acked[key], f"{key!r}: read {got[:40]!r}"
            else:
                c.delete(key)
                acked[key] = None
        # Finally read every key once more: present values are the acknowledged ones.
        for key, value in acked.items():
            got = cs[0].get(key)
            if got is not None:
                assert got == value, f"{key!r}: read {got[:40]!r}"
        stats = cs[0].stats()
    assert written > 3 * 1024 * 1024        # the data is several times the store
    assert stats[b"evictions"] > 0
    assert hits > 100 and misses > 0        # the store served reads and evicted some
    assert stats[b"bytes"] <= stats[b"limit_maxbytes"]

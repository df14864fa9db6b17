"""The KV store's arena structures against a model, in process (plain mmap arena).

Hypothesis drives random storage commands, deletes, incr and gets through the server's own
command code (KVServer._store and friends, no sockets involved) and then walks the arena:
every linked item sits in the hash chain of its key's bucket and in its class's LRU exactly
once, LRU links are symmetric, free chunks are disjoint from linked ones, and the counters
(curr_items, bytes, per-class items) match what is linked. With a store larger than the data
every get must equal the model; with a small store a get may miss (evicted) but never return
anything other than the last value stored for that key.
"""
from __future__ import annotations

import struct

from hypothesis import HealthCheck, example, given, settings, strategies as st

from apps import kvstore as kv
from apps.kv import items as kvi

KEYS = [b"k%d" % i for i in range(12)]


def make_server(mb: str, item: str) -> kv.KVServer:
    return kv.KVServer(kv.parse_args(["-p", "0", "-m", mb, "-I", item]))


def check_arena(store: kvi.ItemStore) -> dict[bytes, bytes]:
    """Walk hash chains, LRUs and free lists; return {key: value} of the linked items."""
    a = store.arena
    nb = 1 << store.hashpower
    buckets = struct.unpack(f"<{nb}I", a[store.hash_base:store.hash_base + 4 * nb])
    linked: dict[int, tuple] = {}
    items: dict[bytes, bytes] = {}
    for b, off in enumerate(buckets):
        while off:
            assert off not in linked, "an item is reachable twice (cycle or shared chain)"
            h = kvi.ITEM.unpack(a[off:off + kvi.ITEM_SIZE])
            key = a[off + kvi.ITEM_SIZE:off + kvi.ITEM_SIZE + h[kvi.I_NKEY]]
            assert store._bucket(key) == store.hash_base + 4 * b, "item in a foreign bucket"
            assert key not in items, "two linked items for one key"
            start = off + kvi.ITEM_SIZE + h[kvi.I_NKEY]
            items[key] = a[start:start + h[kvi.I_NBYTES]]
            size = kvi.ntotal(h[kvi.I_NKEY], h[kvi.I_NBYTES], h[kvi.I_FLAGS])
            assert size <= store.sizes[h[kvi.I_CLS]]
            linked[off] = h
            off = h[kvi.I_HNEXT]
    in_lru = set()
    for c in range(len(store.sizes)):
        st_ = store._cls_get(c)
        prev, off, n = 0, st_[kvi.C_HEAD], 0
        while off:
            assert off in linked and linked[off][kvi.I_CLS] == c, "LRU holds an unlinked item"
            assert linked[off][kvi.I_PREV] == prev, "LRU prev/next not symmetric"
            in_lru.add(off)
            prev, off, n = off, linked[off][kvi.I_NEXT], n + 1
        assert st_[kvi.C_TAIL] == prev
        assert n == store.class_items[c]
        free, nfree = st_[kvi.C_FREE], 0
        while free:
            assert free not in linked, "a chunk is both free and linked"
            free, nfree = struct.unpack("<I", a[free:free + 4])[0], nfree + 1
        # No chunk leaks: the class's pages hold its items, its free list, the unused tail.
        assert st_[kvi.C_PAGES] * store.per_page[c] == n + nfree + st_[kvi.C_LEFT], c
    assert in_lru == set(linked), "hash table and LRUs disagree"
    assert store.curr_items == len(linked)
    # bytes counts items as memcached does (ITEM_ntotal), per class and in all.
    assert store.bytes == sum(kvi.ntotal(h[kvi.I_NKEY], h[kvi.I_NBYTES], h[kvi.I_FLAGS])
                              for h in linked.values())
    for c in range(len(store.sizes)):
        assert store.class_bytes(c) == sum(
            kvi.ntotal(h[kvi.I_NKEY], h[kvi.I_NBYTES], h[kvi.I_FLAGS])
            for h in linked.values() if h[kvi.I_CLS] == c)
    return items


ops = st.lists(st.one_of(
    st.tuples(st.sampled_from([b"set", b"add", b"replace", b"append", b"prepend"]),
              # A few sizes often, so classes fill and free lists grow; any size sometimes.
              st.sampled_from(KEYS), st.one_of(st.sampled_from([5, 60, 900, 2000]),
                                               st.integers(0, 3000))),
    st.tuples(st.just(b"delete"), st.sampled_from(KEYS), st.just(0)),
    st.tuples(st.just(b"incr"), st.sampled_from(KEYS), st.integers(0, 2 ** 64 - 1)),
    st.tuples(st.just(b"get"), st.sampled_from(KEYS), st.just(0)),
    # the meta protocol over the same items: ms in each mode, md I (invalidate: the item
    # stays, marked stale, with a new CAS), ma (incr through the meta path)
    st.tuples(st.sampled_from([b"ms-S", b"ms-E", b"ms-A", b"ms-P", b"ms-R"]),
              st.sampled_from(KEYS), st.sampled_from([3, 60, 900, 2000])),
    st.tuples(st.just(b"md-I"), st.sampled_from(KEYS), st.just(0)),
    st.tuples(st.just(b"ma"), st.sampled_from(KEYS), st.integers(0, 2 ** 64 - 1)),
), min_size=1, max_size=120)


def meta(server: kv.KVServer, line: bytes) -> bytes:
    """One meta command through the server's own parser; its answer."""
    conn = kv.Connection(None)
    conn.rbuf += line
    while server._process(conn):
        pass
    return b"".join(conn.out)


def check_delta(model: dict, key: bytes, arg: int, answer: bytes, missing: bytes,
                answered) -> None:
    """An incr by arg (classic or ma) against the model: the answer, and the model after."""
    old = model.get(key)
    if old is None:
        assert answer == missing, answer
    elif not old.strip(b" ").isdigit() or int(old.strip(b" ")) > 2 ** 64 - 1:
        assert answer.startswith(b"CLIENT_ERROR"), answer
    elif answer.startswith(b"SERVER_ERROR"):
        model.pop(key)              # no chunk for the longer number: item gone
    else:
        digits = b"%d" % ((int(old.strip(b" ")) + arg) % 2 ** 64)
        assert answer == answered(digits), answer
        model[key] = digits.ljust(len(old)) if len(digits) <= len(old) else digits


def run(server: kv.KVServer, program, exact: bool) -> dict[bytes, bytes]:
    """Run the program against the server's command code and the model; returns the model.

    With a small store (exact=False) an item may be evicted by any allocation: before each
    command the model forgets keys the store no longer has, so every answer is checked
    exactly against what the model says a memcached would answer.
    """
    store = server.store
    model: dict[bytes, bytes] = {}
    for n, (cmd, key, arg) in enumerate(program):
        if key in model and store.lookup(key) is None:
            assert not exact, f"{key!r} lost from a store larger than the data"
            model.pop(key)
        if cmd.startswith(b"ms-"):
            value = ((b"%d|" % n) * (arg // 2 + 1))[:arg]
            mode = cmd[3:]
            answer = meta(server, b"ms %s %d M%s\r\n%s\r\n" % (key, len(value), mode, value))
            old = model.get(key)
            if answer.startswith(b"SERVER_ERROR"):
                model.pop(key, None)
            elif (mode == b"E") == (old is not None) and mode != b"S":
                assert answer == b"NS\r\n", (n, cmd, key, answer)
            else:
                assert answer == b"HD\r\n", (n, cmd, key, answer)
                model[key] = (old + value if mode == b"A" else value + old if mode == b"P"
                              else value)
        elif cmd == b"md-I":
            answer = meta(server, b"md %s I\r\n" % key)
            assert answer == (b"HD\r\n" if key in model else b"NF\r\n"), (n, key, answer)
            if key in model:                    # stale, not gone: mg says X and W
                assert meta(server, b"mg %s v\r\n" % key).startswith(b"VA %d " % len(model[key]))
        elif cmd == b"ma":
            answer = meta(server, b"ma %s D%d v\r\n" % (key, arg))
            check_delta(model, key, arg, answer, b"NF\r\n",
                        lambda d: b"VA %d\r\n%s\r\n" % (len(d), d))
        elif cmd == b"get":
            r = store.lookup(key, store.window)
            assert (None if r is None else store.value_of(r)) == model.get(key), (n, key)
        elif cmd == b"delete":
            r = store.lookup(key)
            assert (r is not None) == (key in model)
            if r is not None:
                store.unlink(r[0], r[1], r[3])
            model.pop(key, None)
        elif cmd == b"incr":
            conn = kv.Connection(None)
            server._arith(conn, [b"incr", key, b"%d" % arg])
            answer = b"".join(conn.out)
            check_delta(model, key, arg, answer, b"NOT_FOUND\r\n", lambda d: d + b"\r\n")
        else:
            value = ((b"%d|" % n) * (arg // 2 + 1))[:arg]
            if cmd == b"set" and n % 5 == 0:
                value = b"%d" % n               # numbers for incr to work on
            res = server._store(cmd, key, 0, 0, value, 0)
            old = model.get(key)
            if res.startswith(b"SERVER_ERROR"):
                model.pop(key, None)            # the old item goes first, as memcached
            elif (cmd == b"add") == (old is not None) and cmd in (b"add", b"replace",
                                                                 b"append", b"prepend"):
                assert res == b"NOT_STORED\r\n", (n, cmd, key, res)
            elif cmd in (b"append", b"prepend") and not store.fits(len(key),
                                                                  len(old) + len(value), 0):
                # memcached: no item can hold the merged value; the old one stays as it was
                assert res == b"NOT_STORED\r\n", (n, cmd, key, res)
            else:
                assert res == b"STORED\r\n", (n, cmd, key, res)
                model[key] = (old + value if cmd == b"append" else
                              value + old if cmd == b"prepend" else value)
    items = check_arena(store)
    for key in set(model) - set(items):
        assert not exact, f"{key!r} missing at the end"
        model.pop(key)
    assert items == model
    return model


# Two frees in one class, then two allocations: the free list must hand out both chunks.
FREE_LIST = [(b"get", b"k0", 0), (b"set", b"k1", 60), (b"set", b"k2", 60), (b"delete", b"k1", 0),
             (b"delete", b"k2", 0), (b"set", b"k3", 60), (b"set", b"k4", 60)]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=ops)
@example(program=FREE_LIST)
def test_large_store_matches_the_model_exactly(program):
    server = make_server("8", "64k")
    try:
        run(server, program, exact=True)
    finally:
        server.close()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=ops)
def test_small_store_evicts_but_never_returns_a_foreign_value(program):
    server = make_server("0.0625", "4k")       # 16 pages of 4 KB: evictions all the time
    try:
        run(server, program, exact=False)
    finally:
        server.close()


def test_small_store_program_really_evicts():
    server = make_server("0.0625", "4k")
    keys = [b"e%d" % i for i in range(300)]
    program = [(b"set", k, 600 + (37 * i) % 2500) for i, k in enumerate(keys)]
    program += [(b"get", k, 0) for k in keys]
    try:
        model = run(server, program, exact=False)
        assert server.store.evictions > 10
        assert 0 < len(model) < len(keys)
    finally:
        server.close()

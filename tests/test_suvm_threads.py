"""SUVM under 4 threads: shared and private data through a tiny cache, checked against a
reference.  Misses release the GIL and the C benchmark loop runs without it, so the threads
really fault, evict and seal at the same time."""
import random
import threading

import numpy as np
import pytest

from eleos_shim import suvm
from eleos_shim.config import Config
from trusted.suvm import ffi as sffi, lib as slib

THREADS = 4
PAGE = 4096


def make(policy, pages=8, subpage=0):
    cfg = Config().replace(suvm_page_size=PAGE, suvm_subpage=subpage, suvm_eviction=policy,
                           suvm_cache_mb=pages * PAGE / 2**20, suvm_store_mb=16)
    return suvm.create(cfg)


def run_threads(target):
    errors = []

    def wrap(t):
        try:
            target(t)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=wrap, args=(t,)) for t in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    assert not any(th.is_alive() for th in threads), "a thread hung"
    if errors:
        raise errors[0]


@pytest.mark.parametrize("subpage", [0, 512])
@pytest.mark.parametrize("policy", ["fifo", "lru", "clock", "random"])
def test_four_threads_on_shared_and_private_data_match_reference(policy, subpage):
    inst = make(policy, subpage=subpage)
    try:
        shared_len = 48 * PAGE
        shared = inst.malloc(shared_len)
        # Thread t owns the 64-byte cells whose index % THREADS == t: every page is written by
        # all four threads at once, yet the final content is deterministic.
        final = [None] * THREADS

        def work(t):
            rng = random.Random(t)
            private = inst.malloc(24 * PAGE)
            pmodel = bytearray(24 * PAGE)
            mine = {}
            cells = [c for c in range(shared_len // 64) if c % THREADS == t]
            for step in range(600):
                c = rng.choice(cells)
                val = bytes([(t * 50 + step) & 255]) * 64
                shared[c * 64:(c + 1) * 64] = val
                mine[c] = val
                off, n = rng.randrange(24 * PAGE - 3000), rng.randrange(1, 3000)
                data = rng.randbytes(n)
                private[off:off + n] = data
                pmodel[off:off + n] = data
                c2 = rng.choice(list(mine))
                assert shared[c2 * 64:(c2 + 1) * 64] == mine[c2]
                off = rng.randrange(24 * PAGE - 5000)
                assert private[off:off + 5000] == bytes(pmodel[off:off + 5000])
            assert private[:] == bytes(pmodel)
            final[t] = mine
            private.free()

        run_threads(work)
        reference = bytearray(shared_len)
        for mine in final:
            for c, val in mine.items():
                reference[c * 64:(c + 1) * 64] = val
        assert shared[:] == bytes(reference)
        inst.evict_all()
        assert shared[:] == bytes(reference)
        s = inst.stats()
        assert s["integrity_errors"] == 0 and s["evictions"] > 100
    finally:
        inst.close()


@pytest.mark.parametrize("policy", ["lru", "clock"])
def test_native_loops_without_the_gil_fault_concurrently_and_stay_consistent(policy):
    inst = make(policy, pages=6)
    try:
        region = inst.malloc(64 * PAGE)
        base = region.address

        def work(t):
            rng = np.random.default_rng(t)
            # Each thread writes 0xA5 (the loop's pattern) into its own 128-byte slots, and
            # reads everywhere, all in C with the GIL released.
            slots = rng.integers(0, 64 * PAGE // 512, 4000) * 512 + t * 128
            offs = sffi.new("uint64_t[]", [int(base + o) for o in slots])
            assert slib.suvm_bench_access(inst.handle, offs, len(slots), 128, 1) == 0
            reads = rng.integers(0, 64 * PAGE - 200, 4000)
            offs = sffi.new("uint64_t[]", [int(base + o) for o in reads])
            assert slib.suvm_bench_access(inst.handle, offs, len(reads), 200, 0) == 0
            return slots

        written = set()
        for t in range(THREADS):
            rng = np.random.default_rng(t)
            written.update(int(o) for o in rng.integers(0, 64 * PAGE // 512, 4000) * 512 + t * 128)
        run_threads(work)
        data = region[:]
        for o in range(0, 64 * PAGE, 128):
            expect = b"\xa5" * 128 if o in written else bytes(128)
            assert data[o:o + 128] == expect, o
        s = inst.stats()
        assert s["integrity_errors"] == 0 and s["faults"] > 1000
    finally:
        inst.close()


def test_a_hundred_short_lived_threads_read_and_write_correctly():
    # More threads than the core's per-thread fast-path slots, 8 alive at a time: slots are
    # handed back when a thread exits and reused by the next ones.
    inst = make("clock", pages=6)
    try:
        region = inst.malloc(32 * PAGE)
        errors = []

        def work(t):
            try:
                for i in range(20):
                    off = ((t * 20 + i) % 512) * 64
                    region[off:off + 64] = bytes([t]) * 64
                    if region[off:off + 64] != bytes([t]) * 64:
                        errors.append((t, off))
            except BaseException as exc:
                errors.append(exc)

        for batch in range(0, 100, 8):
            ths = [threading.Thread(target=work, args=(t,)) for t in range(batch, min(batch + 8, 100))]
            for th in ths:
                th.start()
            for th in ths:
                th.join(30)
            assert not any(th.is_alive() for th in ths)
        assert not errors
        expect = bytearray(32 * PAGE)
        for t in range(100):
            for i in range(20):
                off = ((t * 20 + i) % 512) * 64
                expect[off:off + 64] = bytes([t]) * 64
        # the last writer of every cell is the highest t that wrote it (batches run in order,
        # and within a batch threads write disjoint cells)
        assert region[:] == bytes(expect)
        assert inst.stats()["integrity_errors"] == 0
    finally:
        inst.close()

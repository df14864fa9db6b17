"""SUVM's allocator (trusted/_native/suvm_heap.c) against a model: small requests get a chunk
of the next power of two (from 16 B) aligned to it, larger ones whole pages; live
allocations never overlap, each reads as zero when handed out, allocated_bytes() is the sum
of what is live; a bad or double free is a ValueError that changes nothing; once everything
is freed the whole store is one free run again (nothing leaked)."""
import pytest
from hypothesis import given, settings, strategies as st

from eleos_shim import suvm
from eleos_shim.config import Config

PAGE = 1024


@pytest.fixture(scope="module")
def inst():
    cfg = Config().replace(suvm_page_size=PAGE, suvm_subpage=0, suvm_eviction="clock",
                           suvm_cache_mb=16 * PAGE / 2**20, suvm_store_mb=1)
    s = suvm.create(cfg)
    yield s
    s.close()


def footprint(n: int) -> int:
    if n <= PAGE // 2:
        return max(16, 1 << (max(n, 1) - 1).bit_length())
    return -(-n // PAGE) * PAGE


sizes = st.one_of(st.integers(0, PAGE // 2), st.integers(PAGE // 2 + 1, 6 * PAGE))
ops = st.lists(st.one_of(st.tuples(st.just("alloc"), sizes),
                         st.tuples(st.just("free"), st.integers(0, 1 << 30))), max_size=80)


@settings(max_examples=60, deadline=None)
@given(ops)
def test_allocations_are_disjoint_zeroed_and_all_come_back(inst, script):
    live = {}   # address -> (pointer, footprint)
    for kind, arg in script:
        if kind == "alloc":
            p = inst.malloc(arg)
            size = footprint(arg)
            assert p.address % min(size, PAGE) == 0
            assert p[:] == bytes(arg)                      # zero, even where reused
            for a, (_, n) in live.items():
                assert p.address + size <= a or a + n <= p.address
            p[:] = b"\xa5" * arg                            # dirty it for the next owner
            live[p.address] = (p, size)
        elif live:
            addr = sorted(live)[arg % len(live)]
            live.pop(addr)[0].free()
        assert inst.allocated_bytes() == sum(n for _, n in live.values())
    for p, _ in live.values():
        p.free()
    assert inst.allocated_bytes() == 0
    whole = inst.malloc(inst.capacity)    # fits only if every page went back
    whole.free()


def test_a_bad_or_double_free_is_refused_and_changes_nothing(inst):
    small, large = inst.malloc(40), inst.malloc(3 * PAGE)
    before = inst.allocated_bytes()
    for addr in (small.address + 16, large.address + PAGE, large.address + 8, 1 << 40, -1):
        with pytest.raises(ValueError, match="not the start of a live allocation"):
            inst.free(addr)
    assert inst.allocated_bytes() == before
    small.free()
    with pytest.raises(ValueError, match="not the start of a live allocation"):
        inst.free(small.address)
    large.free()
    with pytest.raises(ValueError, match="not the start of a live allocation"):
        inst.free(large.address)
    assert inst.allocated_bytes() == 0


def test_more_than_the_store_is_a_memory_error_that_names_the_limit(inst):
    with pytest.raises(MemoryError, match="limit of 1048576 bytes"):
        inst.malloc(inst.capacity + 1)
    with pytest.raises(MemoryError, match="limit of 1048576 bytes"):
        inst.malloc(1 << 70)
    p = inst.malloc(inst.capacity - PAGE)
    try:
        with pytest.raises(MemoryError, match="backing store is full"):
            inst.malloc(2 * PAGE)
        inst.malloc(10).free()            # the last page still serves a slab
    finally:
        p.free()
    assert inst.allocated_bytes() == 0


def test_a_closed_instance_refuses_allocation_and_a_second_close_is_harmless():
    s = suvm.create(Config().replace(suvm_page_size=PAGE, suvm_cache_mb=16 * PAGE / 2**20,
                                     suvm_store_mb=1))
    p = s.malloc(100)
    s.close()
    with pytest.raises(ValueError, match="closed"):
        s.malloc(10)
    with pytest.raises(ValueError, match="closed"):
        s.free(p.address)
    s.close()

"""An async exception (KeyboardInterrupt from a signal handler) at any point of an SUVM map's
making, resizing or closing leaks nothing and frees nothing twice.

A Python signal handler runs between any two bytecodes.  SecureMemory used to take its
allocation from the allocator in one call and bind it in the next: a handler's exception in
between left an allocation no object held, so nothing ever freed it (and resize and close had
windows of the same kind).  Now the region owns the memory from the moment it exists (one C
call allocates and binds; one closes and frees; a resize swaps allocations in one), and a
map's finalizer frees what it owns.

Deterministic, no signals needed: a trace function raises KeyboardInterrupt just before the
k-th bytecode of the functions on the path, for every k (a superset of where a handler can
run), and after each run the allocator's own count of live bytes must be what it was.
"""
from __future__ import annotations

import gc
import sys
import typing

import pytest

from eleos_shim import suvm
from eleos_shim.config import Config
from trusted.suvm import SecureMemory, Suvm

PAGE = 1024


@pytest.fixture(scope="module")
def inst():
    cfg = Config().replace(suvm_page_size=PAGE, suvm_subpage=0, suvm_eviction="clock",
                           suvm_cache_mb=16 * PAGE / 2**20, suvm_store_mb=1)
    s = suvm.create(cfg)
    yield s
    s.close()


def _codes(*funcs):
    return {f.__code__ for f in funcs if f is not None}


# The functions on the paths (the old ones' names too, so that this test runs on them).
ALLOC = _codes(getattr(Suvm, "_alloc_into", None), getattr(Suvm, "_alloc", None))
FREE = _codes(getattr(Suvm, "_freed", None), Suvm.free, SecureMemory.close)
MAKE = _codes(SecureMemory.__init__) | ALLOC
RESIZE = _codes(SecureMemory.resize) | ALLOC | FREE


def interrupted_at(k: int, action, path) -> bool:
    """Run ``action()`` with a KeyboardInterrupt raised just before the k-th bytecode (from
    1) executed in the functions of ``path``; True if it was raised (the action did not
    finish)."""
    seen = 0

    def local(frame, event, arg):
        nonlocal seen
        if event == "opcode":
            seen += 1
            if seen == k:
                raise KeyboardInterrupt     # unsets the tracer, as a handler runs once
        return local

    def tracer(frame, event, arg):
        if frame.f_code in path:
            frame.f_trace_opcodes = True
            return local
        return None

    sys.settrace(tracer)
    try:
        action()
    except KeyboardInterrupt:
        return True
    finally:
        sys.settrace(None)
    return False


def every_point(action, after, path, before=lambda: None) -> int:
    """``interrupted_at(k, action, path)`` for k = 1, 2, ... until the action completes, each
    after an untraced ``before()``; ``after(hit)`` checks each run.  How many points were
    tried."""
    k = 1
    while True:
        before()
        hit = interrupted_at(k, action, path)
        gc.collect()                  # a dropped map's finalizer runs
        after(hit)
        if not hit:
            return k
        k += 1


def test_making_a_map_interrupted_anywhere_leaks_nothing(inst):
    base = inst.allocated_bytes()
    made = []

    def after(hit):
        for m in made:
            assert len(m) == 3 * PAGE and m[:4] == bytes(4)
            m.close()
        made.clear()
        gc.collect()
        assert inst.allocated_bytes() == base

    points = every_point(lambda: made.append(SecureMemory(3 * PAGE, suvm=inst)), after, MAKE)
    assert points > 5


@pytest.mark.parametrize("old, new", [(3 * PAGE, 6 * PAGE), (6 * PAGE, 100), (100, 200)])
def test_resizing_a_map_interrupted_anywhere_leaks_nothing_and_keeps_its_bytes(inst, old, new):
    base = inst.allocated_bytes()
    data = bytes(range(256)) * (old // 256) + bytes(old % 256)
    keep = min(old, new)
    maps = []

    def before():
        m = SecureMemory(old, suvm=inst)
        m[:] = data
        m.seek(7)
        maps.append(m)

    def after(hit):
        (m,) = maps
        assert len(m) in (old, new) and m[:keep] == data[:keep] and m.tell() == 7
        assert not hit or not m.closed
        m.close()
        maps.clear()
        gc.collect()
        assert inst.allocated_bytes() == base

    assert every_point(lambda: maps[0].resize(new), after, RESIZE, before) > 5


def test_closing_a_map_interrupted_anywhere_frees_it_once(inst):
    base = inst.allocated_bytes()
    maps = []

    def after(hit):
        maps.clear()                  # dropped: its finalizer finishes a close cut short
        gc.collect()
        assert inst.allocated_bytes() == base

    assert every_point(lambda: maps[0].close(), after, FREE,
                       lambda: maps.append(SecureMemory(2 * PAGE, suvm=inst))) > 2


def test_a_failed_allocation_leaves_nothing_to_free(inst):
    base = inst.allocated_bytes()
    with pytest.raises(MemoryError):
        SecureMemory(10 << 20, suvm=inst)
    with pytest.raises(MemoryError):
        inst.malloc(10 << 20)
    gc.collect()
    assert inst.allocated_bytes() == base


def test_a_pointer_is_freed_once_and_then_refuses_access(inst):
    base = inst.allocated_bytes()
    p = inst.malloc(100)
    p.write(b"abc")
    p.free()
    assert p.closed and inst.allocated_bytes() == base
    with pytest.raises(ValueError, match="not the start of a live allocation"):
        p.free()
    with pytest.raises(ValueError):
        p.read(3)


def test_an_suvm_map_has_no_annotations_as_an_mmap_has_none(inst):
    import mmap
    native = mmap.mmap(-1, 100)
    m = SecureMemory(100, suvm=inst)
    try:
        for obj in (native, m):
            with pytest.raises(TypeError, match="is not a module, class"):
                typing.get_type_hints(obj)
    finally:
        native.close()
        m.close()

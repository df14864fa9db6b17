"""The enclave heap under vanilla SGX behaves as an anonymous mmap: resize and the with block.

An app's ``mmap.mmap(-1, n)`` under ``ELEOS_MEMORY=epc`` is an EPC map (eleos_shim/epc.py).
CPython's test_mmap is the reference; these pin what it touches only lightly: resize keeps
the contents through eviction and beyond the EPC's size, fails as CPython's does and gives
the old region's frames back; leaving a ``with`` block frees the region as close() does.
"""
from __future__ import annotations

import mmap

import pytest

from eleos_shim.config import Config
from eleos_shim.epc import EPC

PAGE = 4096
LIMIT = 1 << 20        # a 1 MB EPC: 256 frames, so a few hundred pages page


@pytest.fixture(params=["sigbus", "userfaultfd", "sigsegv"])
def epc(request):
    cfg = Config.from_env({}, mode="sgx", epc_mb=1, cost="account", epc_trap=request.param)
    with EPC(cfg) as e:
        yield e


def pattern(n: int) -> bytes:
    return bytes((i * 7 + i // 4096) & 0xFF for i in range(n))


def test_resize_keeps_evicted_contents_and_grows_past_the_epc(epc):
    m = epc.map(3 * PAGE + 5)
    m[:] = pattern(len(m))
    epc.evict(m)                                   # the old contents are sealed, not resident
    m.resize(3 * LIMIT // PAGE * PAGE)             # three times the EPC: it pages
    assert len(m) == 3 * LIMIT
    assert m[:3 * PAGE + 5] == pattern(3 * PAGE + 5)
    assert m[3 * PAGE + 5:] == bytes(3 * LIMIT - 3 * PAGE - 5)
    m[-4:] = b"tail"
    assert epc.stats()["integrity_errors"] == 0 and epc.stats()["regions"] == 1
    m.resize(PAGE + 1)
    assert m[:] == pattern(PAGE + 1)
    m.close()
    assert epc.stats()["resident_bytes"] == 0 and epc.stats()["regions"] == 0


def test_shrinking_returns_the_old_regions_frames(epc):
    m = epc.map(64 * PAGE)
    m[:] = pattern(len(m))
    assert epc.stats()["resident_bytes"] == 64 * PAGE
    m.resize(2 * PAGE)
    assert epc.stats()["resident_bytes"] == 2 * PAGE
    assert m[:] == pattern(2 * PAGE)
    m.close()


def test_resize_past_the_position_reads_nothing_as_cpython(epc):
    m = epc.map(2 * PAGE)
    m.read(5000)
    m.resize(PAGE)
    assert m.tell() == 5000 and m.read(14) == b""
    with pytest.raises(ValueError):
        m.read_byte()
    with pytest.raises(ValueError):
        m.write(b"abc")
    m.close()


def outcome(fn):
    try:
        fn()
    except Exception as exc:                      # the exception is the outcome compared
        return type(exc), str(exc)
    return None


def test_resize_errors_are_cpythons_in_cpythons_order(epc):
    real, ours = mmap.mmap(-1, 2 * PAGE), epc.map(2 * PAGE)
    for arg in (-1, 0, 1.5, "4096", 1 << 70):
        assert outcome(lambda: ours.resize(arg)) == outcome(lambda: real.resize(arg)), arg
    views = [memoryview(real), memoryview(ours)]
    assert outcome(lambda: ours.resize(1.5)) == outcome(lambda: real.resize(1.5))
    assert outcome(lambda: ours.resize(PAGE)) == outcome(lambda: real.resize(PAGE))
    assert outcome(lambda: ours.resize(PAGE))[0] is BufferError
    for view in views:
        view.release()
    assert len(ours) == 2 * PAGE                  # refused: nothing changed
    real.close()
    ours.close()
    assert outcome(lambda: ours.resize(PAGE)) == outcome(lambda: real.resize(PAGE))


def test_leaving_a_with_block_frees_the_region(epc):
    for n in range(1, 4):                         # a freed address is reused at once
        with epc.map(n * PAGE) as m:
            m[0] = 1
        assert m.closed
        assert epc.stats()["regions"] == 0 and epc.stats()["resident_bytes"] == 0


def test_suvm_map_resize_errors_are_cpythons():
    from eleos_shim import suvm
    cfg = Config.from_env({}, mode="eleos", cost="account").replace(suvm_cache_mb=1,
                                                                    suvm_store_mb=4)
    inst = suvm.create(cfg)
    try:
        real, ours = mmap.mmap(-1, 2 * PAGE), suvm.SecureMemory(2 * PAGE, suvm=inst)
        ours[:3] = b"abc"
        for arg in (-1, 0, 1.5, "4096", 1 << 70):
            assert outcome(lambda: ours.resize(arg)) == outcome(lambda: real.resize(arg)), arg
        ours.resize(PAGE)
        assert len(ours) == PAGE and ours[:3] == b"abc"
        real.close()
        ours.close()
        assert outcome(lambda: ours.resize(PAGE)) == outcome(lambda: real.resize(PAGE))
    finally:
        inst.close()

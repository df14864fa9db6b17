"""SecureMemory behaves as mmap.mmap(-1, n); SPointer behaves as a bounds-checked pointer;
neither offers the buffer protocol; an unmodified mmap app prints the same under SUVM."""
import contextlib
import io
import mmap
import runpy
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from eleos_shim import suvm
from eleos_shim.config import Config

SCRIPTS = Path(__file__).resolve().parent / "scripts"


@pytest.fixture(scope="module")
def inst():
    cfg = Config().replace(suvm_page_size=1024, suvm_subpage=256, suvm_eviction="clock",
                           suvm_cache_mb=6 * 1024 / 2**20, suvm_store_mb=16)
    s = suvm.create(cfg)
    yield s
    s.close()


idx = st.integers(-12000, 12000)
opt_idx = st.one_of(st.none(), idx)
step = st.one_of(st.none(), st.sampled_from([1, 2, 3, -1, -2, 7, 1000]))
api_ops = st.one_of(
    st.tuples(st.just("getitem"), idx),
    st.tuples(st.just("getslice"), opt_idx, opt_idx, step),
    st.tuples(st.just("setitem"), idx, st.integers(-2, 258)),
    st.tuples(st.just("setslice"), opt_idx, opt_idx, step, st.integers(0, 255), st.integers(-1, 1)),
    st.tuples(st.just("read"), st.one_of(st.none(), st.integers(-2, 12000))),
    st.tuples(st.just("write"), st.binary(max_size=3000)),
    st.tuples(st.just("seek"), st.integers(-12000, 12000), st.sampled_from([0, 1, 2, 3])),
    st.tuples(st.just("tell"),),
    st.tuples(st.just("read_byte"),),
    st.tuples(st.just("write_byte"), st.integers(-1, 256)),
    st.tuples(st.just("find"), st.binary(max_size=4), opt_idx, opt_idx),
    st.tuples(st.just("rfind"), st.binary(max_size=4), opt_idx, opt_idx),
    st.tuples(st.just("move"), st.integers(-5, 11000), st.integers(-5, 11000), st.integers(-5, 6000)),
    st.tuples(st.just("len"),),
)


def apply(m, op):
    kind = op[0]
    if kind == "getitem":
        return m[op[1]]
    if kind == "getslice":
        return m[op[1]:op[2]:op[3]]
    if kind == "setitem":
        m[op[1]] = op[2]
        return None
    if kind == "setslice":
        n = len(range(*slice(op[1], op[2], op[3]).indices(len(m))))
        m[op[1]:op[2]:op[3]] = bytes([op[4]]) * max(0, n + op[5])
        return None
    if kind == "read":
        return m.read(op[1])
    if kind == "write":
        return m.write(op[1])
    if kind == "seek":
        return m.seek(op[1], op[2])
    if kind in ("tell", "read_byte"):
        return getattr(m, kind)()
    if kind == "write_byte":
        return m.write_byte(op[1])
    if kind in ("find", "rfind"):
        args = [a for a in op[2:]]
        while args and args[-1] is None:
            args.pop()
        if None in args:
            return None      # mmap does not take None for start/end
        return getattr(m, kind)(op[1], *args)
    if kind == "move":
        return m.move(op[1], op[2], op[3])
    if kind == "len":
        return len(m)
    raise AssertionError(kind)


def outcome(m, op):
    try:
        return ("ok", apply(m, op))
    except (IndexError, ValueError, TypeError, OverflowError) as exc:
        return ("error", type(exc))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 11000), ops=st.lists(api_ops, max_size=30))
def test_secure_memory_matches_mmap(inst, n, ops):
    ref = mmap.mmap(-1, n)
    sm = suvm.SecureMemory(n, suvm=inst)
    try:
        for op in ops:
            assert outcome(sm, op) == outcome(ref, op), op
        assert sm[:] == ref[:]
        assert sm.tell() == ref.tell()
    finally:
        sm.close()
        ref.close()


def test_iteration_and_membership_work_as_on_mmap(inst):
    ref = mmap.mmap(-1, 300)
    with suvm.SecureMemory(300, suvm=inst) as m:
        for x in (ref, m):
            x[0:5] = b"ab\x00cd"
        assert list(m) == list(ref)
        for probe in (b"a", b"ab", b"z", 97):
            assert (probe in m) == (probe in ref)
    ref.close()


def test_size_is_the_length(inst):
    # (an anonymous mmap.mmap raises OSError here in 3.11; SUVM memory has a size to give)
    with suvm.SecureMemory(12345, suvm=inst) as m:
        assert m.size() == len(m) == 12345


def test_buffer_protocol_is_refused_with_a_clear_type_error(inst):
    with suvm.SecureMemory(4096, suvm=inst) as m:
        for attempt in (memoryview, bytes, lambda x: np.frombuffer(x, dtype=np.uint8)):
            with pytest.raises(TypeError, match="no buffer protocol"):
                attempt(m)
        p = inst.malloc(10)
        with pytest.raises(TypeError, match="no buffer protocol"):
            memoryview(p)
        p.free()


def test_closed_secure_memory_refuses_access_and_frees_its_memory(inst):
    before = inst.allocated_bytes()
    with suvm.SecureMemory(5000, suvm=inst) as m:
        m[0:3] = b"abc"
        assert not m.closed
        assert inst.allocated_bytes() > before
    assert m.closed
    assert inst.allocated_bytes() == before
    for bad in (lambda: m[0], lambda: m[0:1], lambda: len(m), lambda: m.read(1), lambda: m.tell()):
        with pytest.raises(ValueError, match="closed"):
            bad()
    m.close()   # idempotent, as mmap


def test_spointer_arithmetic_comparison_and_bounds(inst):
    p = inst.malloc(100)
    try:
        p[0:10] = b"0123456789"
        q = p + 3
        assert q[0] == ord("3") and q[0:3] == b"345" and q.read(2) == b"34"
        assert q - p == 3 and (q - 3) == p and p < q and q >= p and p != q
        assert len(q) == 97 and q.address == p.address + 3
        end = p + 100                       # one past the end is a valid pointer
        assert len(end) == 0
        with pytest.raises(IndexError):
            p + 101
        with pytest.raises(IndexError):
            p - 1
        with pytest.raises(IndexError):
            q[97]
        with pytest.raises(IndexError):
            q.write(b"x" * 98)
        q.write(b"abc")
        assert p[0:7] == b"012abc6"
    finally:
        p.free()


def test_spointer_bulk_copy_fill_compare(inst):
    a, b = inst.malloc(20000), inst.malloc(20000)
    try:
        a.fill(0x41, 20000)
        assert a[:] == b"A" * 20000
        a.write(bytes(range(256)) * 40)
        b.copy_from(a)
        assert b[:] == a[:]
        assert a.compare(b) == 0 and a.compare(b"\xff") == -1 and (a + 1).compare(b"\x00") == 1
        (a + 10).copy_from(a, 1000)         # overlapping move, as memmove
        assert a[10:1010] == (bytes(range(256)) * 40)[0:1000]
        with pytest.raises(ValueError, match="start of its allocation"):
            (a + 1).free()
    finally:
        a.free()
        b.free()
    with pytest.raises(ValueError, match="not the start of a live allocation"):
        inst.free(a.address)


def test_spointers_into_many_small_allocations_are_independent(inst):
    ptrs = [inst.malloc(n) for n in (1, 7, 16, 33, 100, 500, 512, 513, 2000)]
    try:
        for i, p in enumerate(ptrs):
            p[:] = bytes([i + 1]) * len(p)
        inst.evict_all()
        for i, p in enumerate(ptrs):
            assert p[:] == bytes([i + 1]) * len(p)
    finally:
        for p in ptrs:
            p.free()


def run_script_capturing(path, patch_mmap=None):
    out = io.StringIO()
    real = mmap.mmap
    if patch_mmap is not None:
        mmap.mmap = patch_mmap
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(str(path), run_name="__main__")
    finally:
        mmap.mmap = real
    return out.getvalue()


def test_unmodified_mmap_app_prints_the_same_on_suvm_in_process(inst):
    made = []

    def heap(fileno, length, *args, **kwargs):
        assert fileno == -1
        m = suvm.heap_factory(inst)(length, **kwargs)
        made.append(m)
        return m

    native = run_script_capturing(SCRIPTS / "suvm_mmap_app.py")
    inst.reset_stats()
    secure = run_script_capturing(SCRIPTS / "suvm_mmap_app.py", patch_mmap=heap)
    assert secure == native and "checksum" in native
    assert made and all(isinstance(m, suvm.SecureMemory) for m in made)
    s = inst.stats()
    assert s["faults"] > 0 and s["evictions"] > 0   # it really ran through the tiny page cache


def test_unmodified_mmap_app_prints_the_same_under_the_loader_with_suvm_memory(shim):
    native = shim("native", SCRIPTS / "suvm_mmap_app.py")
    secure = shim("eleos", SCRIPTS / "suvm_mmap_app.py", env={"ELEOS_SUVM_CACHE_MB": "0.25"})
    assert native.returncode == 0 and secure.returncode == 0, secure.stderr
    assert secure.stdout == native.stdout and "checksum" in native.stdout
    assert secure.stats["memory"] == "suvm"
    s = secure.stats["suvm"]
    assert s["faults"] > 0 and s["evictions"] > 0 and s["writebacks"] > 0
    assert s["integrity_errors"] == 0


def test_tampering_under_the_loader_stops_the_app_with_integrity_error(shim, tmp_path):
    # The app itself plays the host here (it reaches the backing store through the instance
    # the loader installed): after its data is paged out, one bit of it is flipped.
    script = tmp_path / "tamper.py"
    script.write_text(
        "import mmap\n"
        "from eleos_shim import suvm\n"
        "m = mmap.mmap(-1, 1 << 20)\n"
        "m[:] = b'x' * (1 << 20)\n"
        "inst = suvm.instance()\n"
        "inst.evict_all()\n"
        "inst.backing_store.flip_bit(m._lo // inst.page_size + 3, 77)\n"
        "print('before', m[0:4])\n"
        "print('after', m[3 * inst.page_size:3 * inst.page_size + 4])\n")
    run = shim("eleos", script)
    assert run.returncode == 1
    assert "before b'xxxx'" in run.stdout and "after" not in run.stdout
    assert "IntegrityError" in run.stderr
    assert run.stats["suvm"]["integrity_errors"] >= 1


def test_memory_of_a_closed_instance_refuses_access_instead_of_crashing():
    inst = suvm.create(Config().replace(suvm_cache_mb=0.0625, suvm_store_mb=4))
    m = suvm.SecureMemory(10000, suvm=inst)
    p = inst.malloc(100)
    q = p + 5
    inst.close()
    for bad in (lambda: m[0], lambda: p[0:4], lambda: q[0]):
        with pytest.raises(ValueError, match="closed"):
            bad()


@pytest.mark.parametrize("n", [0, -1])
def test_bad_lengths_fail_as_mmap_does(inst, n):
    with pytest.raises(Exception) as native:
        mmap.mmap(-1, n)
    with pytest.raises(type(native.value)) as secure:
        suvm.SecureMemory(n, suvm=inst)
    assert str(secure.value) == str(native.value)

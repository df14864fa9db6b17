"""EPC paging under vanilla SGX: the driver keeps an enclave heap larger than the EPC correct.

Real traps (userfaultfd, and the mprotect+SIGSEGV fallback), real AES-GCM EWB/ELDU, small EPCs
so that every test pages heavily and stays fast.  Resident pages are measured independently of
the driver's own accounting, as the pages the app's views map (tests/epc_helpers.py).
"""
from __future__ import annotations

import ctypes
import mmap
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from eleos_shim.config import Config
from eleos_shim.epc import EPC, EPCMap
from tests.epc_helpers import app_mapped_pages

ROOT = Path(__file__).resolve().parent.parent
PAGE = 4096
EPC_MB = 1
LIMIT = EPC_MB << 20

def resident_pages(maps) -> int:
    """Pages of ``maps`` in the EPC, as the kernel sees it: mapped in the app's views."""
    return app_mapped_pages("self", [(m._epc_address, (len(m) + PAGE - 1) // PAGE * PAGE)
                                     for m in maps])


def make_cfg(trap: str, **kw) -> Config:
    return Config.from_env({}, mode="sgx", epc_mb=EPC_MB, cost="account", epc_trap=trap, **kw)


@pytest.fixture(params=["sigbus", "userfaultfd", "sigsegv"])
def epc(request):
    with EPC(make_cfg(request.param)) as e:
        assert e.trap == request.param
        yield e


def test_map_is_a_real_zeroed_mmap(epc):
    m = epc.map(3 * PAGE + 100)
    assert isinstance(m, mmap.mmap) and isinstance(m, EPCMap)
    assert len(m) == 3 * PAGE + 100
    assert m[:] == bytes(len(m))
    m.seek(PAGE - 2)
    m.write(b"spans")
    assert m.find(b"spans", 0) == PAGE - 2
    assert memoryview(m)[PAGE - 2:PAGE + 3].tobytes() == b"spans"
    m.close()
    assert epc.stats()["resident_bytes"] == 0


def test_region_three_times_the_epc_reads_back_what_numpy_and_slicing_wrote(epc):
    size = 3 * LIMIT
    m = epc.map(size)
    ref = bytearray(size)
    arr = np.frombuffer(m, dtype=np.uint8)
    rng = np.random.default_rng(7)
    peak = 0
    for step in range(3000):
        off = int(rng.integers(0, size - 300))
        n = int(rng.integers(1, 300))
        data = rng.integers(0, 256, n, dtype=np.uint8)
        if step % 2:
            arr[off:off + n] = data                 # numpy, through the buffer protocol
        else:
            m[off:off + n] = data.tobytes()         # mmap slicing
        ref[off:off + n] = data.tobytes()
        if step % 3 == 0:                           # read back at another random place
            r = int(rng.integers(0, size - 300))
            assert m[r:r + 256] == bytes(ref[r:r + 256])
            assert arr[r:r + 256].tobytes() == bytes(ref[r:r + 256])
        if step % 50 == 0:                          # the app is paused: an upper bound
            peak = max(peak, resident_pages([m]))
    assert m[:] == bytes(ref)
    assert bytes(arr) == bytes(ref)
    assert peak * PAGE <= LIMIT
    st = epc.stats()
    assert st["peak_resident_bytes"] <= LIMIT
    assert st["faults"] > size // PAGE                 # it really paged
    assert st["ewb"] > 0 and st["eldu"] > 0
    assert st["integrity_errors"] == 0
    del arr
    m.close()


def test_resident_pages_across_regions_never_exceed_the_epc(epc):
    # Measured by the app's thread between its accesses: while it is paused no page can come
    # in (only ksgxswapd's evictions can run), so each sample is an upper bound of the moment.
    maps = [epc.map(LIMIT) for _ in range(3)]
    samples = []
    for rnd in range(3):
        for k, m in enumerate(maps):
            for off in range(0, LIMIT, PAGE):
                m[off] = (rnd + k + off // PAGE) & 0xFF
                if off % (16 * PAGE) == 0:
                    samples.append(resident_pages(maps))
    for k, m in enumerate(maps):
        assert all(m[off] == (2 + k + off // PAGE) & 0xFF for off in range(0, LIMIT, PAGE))
    assert max(samples) * PAGE <= LIMIT
    assert max(samples) * PAGE > LIMIT // 2        # the EPC was really used, not bypassed
    assert epc.stats()["peak_resident_bytes"] <= LIMIT
    for m in maps:
        m.close()
    assert epc.stats()["resident_bytes"] == 0


def test_four_threads_faulting_at_once_on_shared_pages_are_correct(epc):
    size = 3 * LIMIT
    m = epc.map(size)
    base = m._epc_address
    chunk = 64                                      # threads interleave inside every page
    nthreads = 4
    errors = []
    barrier = threading.Barrier(nthreads)

    def worker(k: int):
        rng = np.random.default_rng(100 + k)
        mine = {}
        barrier.wait()
        for _ in range(1500):
            c = int(rng.integers(0, size // chunk // nthreads)) * nthreads + k
            data = rng.integers(0, 256, chunk, dtype=np.uint8).tobytes()
            ctypes.memmove(base + c * chunk, data, chunk)     # releases the GIL: real concurrency
            mine[c] = data
            probe = list(mine)[int(rng.integers(0, len(mine)))]
            got = ctypes.string_at(base + probe * chunk, chunk)
            if got != mine[probe]:
                errors.append((k, probe))
        for c, data in mine.items():
            if ctypes.string_at(base + c * chunk, chunk) != data:
                errors.append((k, c))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(nthreads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a faulting thread hung"
    assert errors == []
    st = epc.stats()
    assert st["faults"] > 0 and st["ewb"] > 0 and st["peak_resident_bytes"] <= LIMIT
    m.close()


@pytest.mark.parametrize("trap", ["sigbus", "userfaultfd", "sigsegv"])
def test_each_fault_is_one_event_that_pays_its_budget(trap):
    from eleos_shim.cpu import ModeledCPU
    cfg = make_cfg(trap)
    cpu = ModeledCPU(cfg)
    with EPC(cfg, cpu) as e:
        cpu.reset()
        m = e.map(2 * LIMIT)
        for off in range(0, 2 * LIMIT, PAGE):
            m[off] = 1
        faults = e.stats()["faults"]
        counters = cpu.counters()
        ev = cpu.events()["epc_fault"]
        m.close()
    assert faults >= 2 * LIMIT // PAGE
    assert counters["aex"] == faults and counters["eresume"] == faults
    assert ev["count"] == faults and ev["budget_cycles"] == faults * cfg.epc_fault_cycles
    assert ev["paid_cycles"] == ev["real_cycles"] + ev["spun_cycles"] >= ev["budget_cycles"]
    # the trap's delivery, measured at start, is part of every fault's real part
    assert ev["real_cycles"] >= faults * e.trap_cycles > 0


def test_sigbus_faults_are_resolved_by_the_faulting_threads_while_others_run():
    cfg = make_cfg("sigbus")
    with EPC(cfg) as e:
        m = e.map(3 * LIMIT)
        spins = [0]
        stop = threading.Event()

        def busy():                      # a Python thread that never touches the EPC
            while not stop.is_set():
                spins[0] += 1

        def writer(k):
            for off in range(k * PAGE, len(m), 4 * PAGE):
                m[off:off + 8] = off.to_bytes(8, "little")

        other = threading.Thread(target=busy)
        other.start()
        workers = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        for off in range(0, len(m), PAGE):
            assert int.from_bytes(m[off:off + 8], "little") == off
        stop.set()
        other.join()
        st = e.stats()
        m.close()
    assert spins[0] > 0
    assert st["trap"] == "sigbus" and st["sigbus_faults"] >= st["faults"] > 3 * LIMIT // PAGE


@pytest.mark.parametrize("reclaim", ["background", "direct"])
def test_both_reclaimers_page_a_region_larger_than_the_epc(reclaim):
    with EPC(make_cfg("sigbus", epc_reclaim=reclaim)) as e:
        m = e.map(3 * LIMIT)
        for off in range(0, len(m), PAGE):
            m[off] = off // PAGE % 251
        assert all(m[off] == off // PAGE % 251 for off in range(0, len(m), PAGE))
        st = e.stats()
        m.close()
    assert st["reclaim"] == reclaim and st["ewb"] > 0
    assert (st["direct_reclaims"] > 0) == (reclaim == "direct")


def test_direct_reclaim_evicts_clusters_and_hands_their_time_to_the_faults_that_take_them():
    # One victim a fault would cost one TLB shootdown a fault; a cluster costs one (where the
    # kernel batches the flush).  Its EWBs are the EWB share of the faults that take the
    # frames it freed: the driver moves that time to them, so each pays its own budget.
    from eleos_shim.cpu import ModeledCPU
    cfg = make_cfg("sigbus", epc_reclaim="direct")
    cpu = ModeledCPU(cfg)
    with EPC(cfg, cpu) as e:
        cpu.reset()
        m = e.map(3 * LIMIT)
        for off in range(0, len(m), PAGE):
            m[off] = off // PAGE % 251
        assert all(m[off] == off // PAGE % 251 for off in range(0, len(m), PAGE))
        raw = e._driver.raw_stats()
        st = e.stats()
        ev = cpu.events()["epc_fault"]
        m.close()
    assert st["reclaim_batches"] > 0 and raw["ewb"] > 2 * st["reclaim_batches"]
    assert 0 < raw["reclaim_prepaid_ns"] <= raw["reclaim_ahead_ns"]
    assert st["per_fault"]["reclaim_ahead_ns"] > 0
    assert ev["count"] == raw["faults"] and ev["paid_cycles"] >= ev["budget_cycles"]


def test_reclaim_evicts_the_oldest_loaded_pages_first(epc):
    # The driver's approximation of the SGX driver's list: loaded pages join the tail, the
    # reclaimer takes from the head (with one second chance each).
    m = epc.map(2 * LIMIT)
    npages = 2 * LIMIT // PAGE
    for i in range(npages):
        m[i * PAGE] = 1
    states = epc.page_states(m)
    # The limit: at least half the pages are out.  The order: the oldest quarter is out and the
    # newest quarter is in.  (Between them the reclaimer's batches and second chances, which
    # run on their own thread, decide page by page.)
    assert states.count("evicted") >= npages // 2
    assert set(states[: npages // 4]) == {"evicted"}
    # ("loading": the last page's handler may not have finished its bookkeeping yet)
    assert set(states[-npages // 4:]) <= {"resident", "loading"}
    m.close()


def test_evicted_pages_come_back_sealed_and_loaded_by_eldu(epc):
    m = epc.map(8 * PAGE)
    for i in range(8):
        m[i * PAGE:(i + 1) * PAGE] = bytes([i + 1]) * PAGE
    assert epc.evict(m) == 8
    assert epc.page_states(m) == ["evicted"] * 8
    pages, _tags = epc.backing_store(m)
    # The host only holds ciphertext: no page of plaintext is in the backing store.
    assert all(bytes([i + 1]) * 64 not in pages[i * PAGE:(i + 1) * PAGE].tobytes() for i in range(8))
    before = epc.stats()["eldu"]
    assert all(m[i * PAGE + 17] == i + 1 for i in range(8))
    assert epc.stats()["eldu"] == before + 8
    m.close()


def test_a_partial_last_page_round_trips_through_ewb_and_eldu(epc):
    # The region's last page is only partly inside it: EWB pads it in the CPU's frame, ELDU
    # writes back only the bytes that belong to the region.
    m = epc.map(2 * PAGE + 100)
    m[:] = bytes(range(256)) * ((2 * PAGE + 100) // 256) + bytes(range((2 * PAGE + 100) % 256))
    want = m[:]
    assert epc.evict(m) == 3
    assert m[:] == want
    assert epc.stats()["eldu"] == 3
    m.close()


def test_closing_a_map_returns_its_frames_and_its_pages_cannot_come_back(epc):
    m = epc.map(LIMIT)
    m[:PAGE] = b"x" * PAGE
    m.close()
    assert epc.stats()["resident_bytes"] == 0 and epc.stats()["regions"] == 0
    again = epc.map(LIMIT)
    assert again[:PAGE] == bytes(PAGE)
    again.close()


def test_bad_lengths_fail_as_with_anonymous_mmap(epc):
    with pytest.raises(OSError):
        epc.map(0)
    with pytest.raises(OverflowError):
        epc.map(-1)


def test_map_garbage_collected_returns_its_frames(epc):
    m = epc.map(LIMIT // 2)
    m[0] = 1
    del m
    assert epc.stats()["resident_bytes"] == 0


def test_close_with_an_exported_view_keeps_the_map_usable(epc):
    m = epc.map(4 * PAGE)
    view = memoryview(m)
    with pytest.raises(BufferError):
        m.close()
    view[5] = 9
    assert m[5] == 9
    view.release()
    m.close()


def test_explicit_userfaultfd_or_sigsegv_is_what_runs():
    with EPC(make_cfg("sigsegv")) as e:
        assert e.stats()["trap"] == "sigsegv"
    with EPC(make_cfg("userfaultfd")) as e:
        assert e.stats()["trap"] == "userfaultfd"
    with EPC(make_cfg("auto")) as e:
        assert e.stats()["trap"] in ("sigbus", "userfaultfd", "sigsegv")


def test_a_sigbus_outside_the_epc_still_kills_as_without_the_driver(tmp_path):
    script = tmp_path / "bus.py"
    script.write_text(textwrap.dedent("""
        import mmap, tempfile
        from eleos_shim.config import Config
        from eleos_shim.epc import EPC
        epc = EPC(Config.from_env({}, mode="sgx", epc_mb=1, cost="account", epc_trap="sigbus"))
        m = epc.map(1 << 20)
        m[0] = 1
        print("mapped", flush=True)
        f = tempfile.TemporaryFile()
        f.truncate(8192)
        beyond = mmap.mmap(f.fileno(), 8192)
        f.truncate(1)                          # the second page is now past the end of the file
        beyond[5000]
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=60)
    assert proc.stdout == "mapped\n"
    assert proc.returncode == -7          # SIGBUS, as under plain python


def test_a_segfault_outside_the_epc_still_crashes_as_without_the_driver(tmp_path):
    script = tmp_path / "crash.py"
    script.write_text(textwrap.dedent("""
        import ctypes, faulthandler
        faulthandler.enable()
        from eleos_shim.config import Config
        from eleos_shim.epc import EPC
        epc = EPC(Config.from_env({}, mode="sgx", epc_mb=1, cost="account", epc_trap="sigsegv"))
        m = epc.map(1 << 20)
        m[0] = 1
        print("mapped", flush=True)
        ctypes.string_at(8)
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=60)
    assert proc.stdout == "mapped\n"
    assert proc.returncode == -11
    assert "Segmentation fault" in proc.stderr


def test_only_one_epc_per_process():
    with EPC(make_cfg("auto")):
        with pytest.raises(RuntimeError):
            EPC(make_cfg("auto"))

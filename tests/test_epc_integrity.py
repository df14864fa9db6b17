"""EPC integrity: the host may tamper with, swap or replay sealed pages; the enclave stops.

The test plays the hostile host: it changes the driver's backing store (untrusted memory)
between an EWB and the next ELDU.  The app must stop with IntegrityError and never see data
derived from what the host wrote.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from eleos_shim import IntegrityError
from eleos_shim._native._epcm import ffi as cpu_ffi, lib as cpu
from eleos_shim.config import Config
from eleos_shim.epc import EPC

PAGE = 4096
ROOT = Path(__file__).resolve().parent.parent


def make_cfg(trap: str) -> Config:
    return Config.from_env({}, mode="sgx", epc_mb=1, cost="account", epc_trap=trap)


@pytest.fixture(params=["userfaultfd", "sigsegv"])
def epc(request):
    with EPC(make_cfg(request.param)) as e:
        yield e


def access_then_work(m, off, seen, reached):
    """The app: read 16 bytes, then keep computing (the loop is where a pending signal is
    handled at the latest).  ``reached`` records that the app got past its work."""
    seen.append(m[off:off + 16])
    total = 0
    for i in range(1000):
        total += i
    reached.append(total)


def expect_stop(m, off):
    seen, reached = [], []
    with pytest.raises(IntegrityError, match="ELDU"):
        access_then_work(m, off, seen, reached)
    assert reached == []
    assert seen in ([], [bytes(16)])          # at most the zero page, never the host's data
    return seen


def sealed_page(epc, m, index):
    pages, tags = epc.backing_store(m)
    return pages[index * PAGE:(index + 1) * PAGE], tags[index * 16:(index + 1) * 16]


def test_tampered_ciphertext_stops_the_app_with_integrity_error(epc):
    m = epc.map(4 * PAGE)
    m[PAGE:PAGE + 6] = b"secret"
    assert epc.evict(m, PAGE) == 1
    page, _tag = sealed_page(epc, m, 1)
    page[100] ^= 0x01
    expect_stop(m, PAGE)
    st = epc.stats()
    assert st["integrity_errors"] == 1 and st["dead"]
    with pytest.raises(IntegrityError):
        epc.check()
    with pytest.raises(IntegrityError):
        epc.map(PAGE)


def test_tampered_tag_stops_the_app(epc):
    m = epc.map(2 * PAGE)
    m[0:4] = b"abcd"
    epc.evict(m, 0)
    _page, tag = sealed_page(epc, m, 0)
    tag[0] ^= 0x80
    expect_stop(m, 0)


def test_replayed_old_copy_of_a_page_is_detected(epc):
    m = epc.map(2 * PAGE)
    m[0:3] = b"old"
    epc.evict(m, 0)
    page, tag = sealed_page(epc, m, 0)
    old_page, old_tag = bytes(page), bytes(tag)
    assert m[0:3] == b"old"                   # ELDU: loaded, its version slot emptied
    m[0:3] = b"new"
    epc.evict(m, 0)                           # sealed again under a new version
    assert bytes(page) != old_page
    page[:] = old_page                        # the host puts the old copy back
    tag[:] = old_tag
    expect_stop(m, 0)


def test_page_swapped_with_another_page_is_detected(epc):
    m = epc.map(2 * PAGE)
    m[0:1] = b"A"
    m[PAGE:PAGE + 1] = b"B"
    epc.evict(m)
    p0, t0 = sealed_page(epc, m, 0)
    p1, t1 = sealed_page(epc, m, 1)
    a, ta = bytes(p0), bytes(t0)
    p0[:], t0[:] = bytes(p1), bytes(t1)
    p1[:], t1[:] = a, ta
    expect_stop(m, 0)


def test_untampered_pages_load_after_many_round_trips(epc):
    m = epc.map(4 * PAGE)
    for rnd in range(20):
        for i in range(4):
            m[i * PAGE] = (rnd * 4 + i) & 0xFF
        epc.evict(m)
        assert [m[i * PAGE] for i in range(4)] == [(rnd * 4 + i) & 0xFF for i in range(4)]
    assert epc.stats()["integrity_errors"] == 0


def test_faulting_thread_and_blocked_main_thread_both_get_integrity_error(epc):
    m = epc.map(2 * PAGE)
    m[0:4] = b"data"
    epc.evict(m, 0)
    sealed_page(epc, m, 0)[0][7] ^= 0xFF
    outcome = []

    def worker():
        try:
            got = m[0:4]
            for _ in range(5_000_000):        # the app goes on computing; it must be stopped
                pass
            outcome.append(("finished", got))
        except IntegrityError:
            outcome.append(("stopped", None))

    t = threading.Thread(target=worker)
    with pytest.raises(IntegrityError):
        t.start()
        t.join(timeout=30)                    # the main thread blocks here: it is woken
    t.join(timeout=30)
    assert not t.is_alive()
    assert outcome == [("stopped", None)]


def test_app_that_reads_a_tampered_page_exits_with_integrity_error(tmp_path):
    script = tmp_path / "app.py"
    script.write_text(textwrap.dedent("""
        from eleos_shim.config import Config
        from eleos_shim.epc import EPC
        epc = EPC(Config.from_env({}, mode="sgx", epc_mb=1, cost="account"))
        m = epc.map(1 << 20)
        m[0:5] = b"hello"
        epc.evict(m, 0)
        epc.backing_store(m)[0][0] ^= 1        # the host flips one bit
        print("before", flush=True)
        value = m[0:5]
        print("after", value, flush=True)
    """))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ELEOS_")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env=env, timeout=60)
    assert proc.returncode == 1
    assert proc.stdout == "before\n"
    assert "eleos_shim.errors.IntegrityError: ELDU" in proc.stderr


def test_cpu_refuses_to_load_a_copy_twice_or_to_overwrite_a_live_version():
    # The version array semantics of the modeled CPU, driven directly (no driver).
    assert cpu.epcm_init() == 0
    slot = cpu.epcm_epa(2)
    assert slot
    src = cpu_ffi.new("char[]", b"x" * PAGE)
    sealed = cpu_ffi.new("char[]", PAGE)
    tag = cpu_ffi.new("char[]", 16)
    frame = cpu_ffi.new("char[]", PAGE)
    try:
        assert cpu.epcm_ewb(src, 0x1000, slot, sealed, tag) == cpu.EPCM_OK
        assert cpu.epcm_ewb(src, 0x1000, slot, sealed, tag) == cpu.EPCM_ERR_SLOT_OCCUPIED
        assert cpu.epcm_eldu(frame, 0x2000, slot, sealed, tag) == cpu.EPCM_ERR_MAC   # wrong address
        assert cpu_ffi.buffer(frame)[:] == bytes(PAGE)                             # wiped
        cpu.epcm_reset()
        assert cpu.epcm_eldu(frame, 0x1000, slot, sealed, tag) == cpu.EPCM_OK
        assert cpu_ffi.buffer(frame)[:] == b"x" * PAGE
        assert cpu.epcm_eldu(frame, 0x1000, slot, sealed, tag) == cpu.EPCM_ERR_SLOT_EMPTY  # replay
        cpu.epcm_reset()
        assert cpu.epcm_ewb(src, 0x1000, slot, sealed, tag) == cpu.EPCM_OK
        cpu.epcm_eremove(slot, 2)                                                   # freed region
        assert cpu.epcm_eldu(frame, 0x1000, slot, sealed, tag) == cpu.EPCM_ERR_SLOT_EMPTY
    finally:
        cpu.epcm_reset()

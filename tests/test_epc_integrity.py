"""EPC integrity: the host may tamper with, swap or replay sealed pages, race ELDU on them, or
ask for a page at another address; the enclave stops.

The test plays the hostile host: it changes the driver's backing store (untrusted memory)
between an EWB and the next ELDU, or while ELDU or EWB runs, or drives the CPU as a hostile
driver.  The app must stop with IntegrityError and never see data derived from what the host
wrote.
"""
from __future__ import annotations

import contextlib
import errno
import mmap
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from eleos_shim import IagoError, IntegrityError
from eleos_shim._native._epcm import ffi as cpu_ffi, lib as cpu
from eleos_shim.config import Config
from eleos_shim.epc import EPC, INTEGRITY_SIGNAL
from tests.racing import check_raced, racing, two_cpus
from untrusted.backing_store import Racer

PAGE = 4096
ROOT = Path(__file__).resolve().parent.parent


def make_cfg(trap: str) -> Config:
    return Config.from_env({}, mode="sgx", epc_mb=1, cost="account", epc_trap=trap)


@pytest.fixture(params=["sigbus", "userfaultfd", "sigsegv"])
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
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == "before\n", proc.stderr
    assert "eleos_shim.errors.IntegrityError: ELDU" in proc.stderr


@pytest.fixture
def cpu_region():
    """Two pages of enclave memory registered with the modeled CPU, driven directly (no
    driver): (view, its address, first VA slot)."""
    assert cpu.epcm_init() == 0
    slot = cpu.epcm_epa(2)
    assert slot
    fd = os.memfd_create("epc-test")
    os.ftruncate(fd, 2 * PAGE)
    view = mmap.mmap(fd, 2 * PAGE)
    buf = cpu_ffi.from_buffer(view)
    addr = int(cpu_ffi.cast("uintptr_t", buf))
    assert cpu.epcm_region_add(addr, 2 * PAGE, slot, fd) == 0
    os.close(fd)                      # the CPU keeps its own descriptor of the region's memory
    try:
        yield view, addr, slot
    finally:
        cpu.epcm_region_remove(addr)
        cpu_ffi.release(buf)
        view.close()
        cpu.epcm_eremove(slot, 2)
        cpu.epcm_reset()


def test_cpu_refuses_to_load_a_copy_twice_or_to_overwrite_a_live_version(cpu_region):
    # The version array semantics of the modeled CPU, driven directly (no driver).
    view, addr, slot = cpu_region
    sealed = cpu_ffi.new("char[]", PAGE)
    tag = cpu_ffi.new("char[]", 16)
    res = cpu_ffi.new("uint64_t[2]")
    view[0:PAGE] = b"x" * PAGE
    assert cpu.epcm_ewb(addr, slot, sealed, tag) == cpu.EPCM_OK
    assert view[0:PAGE] == bytes(PAGE)                    # EWB freed the EPC page
    assert b"xxxx" not in cpu_ffi.buffer(sealed)[:]
    assert cpu.epcm_ewb(addr, slot, sealed, tag) == cpu.EPCM_ERR_SLOT_OCCUPIED
    assert cpu.epcm_eldu(addr + PAGE, slot, sealed, tag, -1, res) == cpu.EPCM_ERR_BAD_SLOT
    assert cpu.epcm_eldu(addr + PAGE, slot + 1, sealed, tag, -1, res) == cpu.EPCM_ERR_SLOT_EMPTY
    assert view[:] == bytes(2 * PAGE)                     # nothing installed anywhere
    cpu.epcm_reset()
    assert cpu.epcm_eldu(addr, slot, sealed, tag, -1, res) == cpu.EPCM_OK
    assert view[0:PAGE] == b"x" * PAGE and res[0] == 0    # written into the region, not mapped
    assert cpu.epcm_eldu(addr, slot, sealed, tag, -1, res) == cpu.EPCM_ERR_SLOT_EMPTY  # replay
    cpu.epcm_reset()
    assert cpu.epcm_ewb(addr, slot, sealed, tag) == cpu.EPCM_OK
    cpu.epcm_eremove(slot, 2)                                                   # freed region
    assert cpu.epcm_eldu(addr, slot, sealed, tag, -1, res) == cpu.EPCM_ERR_SLOT_EMPTY


def test_cpu_knows_only_the_regions_the_enclave_registered(cpu_region):
    view, addr, slot = cpu_region
    sealed, tag = cpu_ffi.new("char[]", PAGE), cpu_ffi.new("char[]", 16)
    res = cpu_ffi.new("uint64_t[2]")
    # an address no region holds, or not page-aligned
    assert cpu.epcm_ewb(addr + 2 * PAGE, slot + 2, sealed, tag) == cpu.EPCM_ERR_BAD_ADDR
    assert cpu.epcm_ewb(addr + 8, slot, sealed, tag) == cpu.EPCM_ERR_BAD_ADDR
    # a region overlapping a registered one
    fd = os.memfd_create("epc-test")
    os.ftruncate(fd, PAGE)
    try:
        assert cpu.epcm_region_add(addr + PAGE, PAGE, slot + 1, fd) == -errno.EEXIST
        assert cpu.epcm_region_add(addr + 4 * PAGE, 2 * PAGE, slot, fd) == -errno.EINVAL  # too small
    finally:
        os.close(fd)
    view[0:1] = b"y"
    assert cpu.epcm_ewb(addr, slot, sealed, tag) == cpu.EPCM_OK
    assert cpu.epcm_eldu(addr, slot, sealed, tag, -1, res) == cpu.EPCM_OK
    assert view[0:1] == b"y"


# ---- a host thread racing ELDU; a driver installing a page somewhere else ----

@contextlib.contextmanager
def integrity_signal_blocked():
    """Many enclaves die in a row here: take the CPU's signal synchronously (sigtimedwait)
    instead of as an exception at an arbitrary point of the loop."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {INTEGRITY_SIGNAL})
    try:
        yield
    finally:
        while signal.sigtimedwait([INTEGRITY_SIGNAL], 0) is not None:
            pass
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {INTEGRITY_SIGNAL})


@pytest.mark.parametrize("trap", ["sigbus", "userfaultfd", "sigsegv"])
def test_ciphertext_flipped_during_eldu_never_reaches_the_app(trap):
    # The host flips one byte of the sealed page while ELDU opens it, one round per byte of the
    # page (which bytes an AES-GCM implementation reads twice, for the tag and to decrypt,
    # depends on it).  The CPU copies the page in once and opens its copy: the app reads the
    # page as written, or the enclave dies (then the app saw a zero page), never a flipped byte.
    cfg = make_cfg(trap)
    raced = deaths = flipped = 0
    with integrity_signal_blocked(), racing() as racer:
        e = None
        try:
            for i in range(PAGE):
                if e is None:                              # the driver threads share our CPU
                    e = EPC(cfg)
                    m = e.map(PAGE)
                    store = Racer.address_of(e.backing_store(m)[0])
                data = os.urandom(PAGE)
                m[:] = data
                assert e.evict(m, 0) == 1
                racer.arm(store + i)
                got = m[:]                                 # the fault: ELDU, raced
                raced += racer.disarm() > 0
                if e.dead:
                    deaths += 1
                    assert got == bytes(PAGE)
                    assert signal.sigtimedwait([INTEGRITY_SIGNAL], 10) is not None
                    m.close()
                    e.close()
                    e = None
                else:
                    flipped += got != data
        finally:
            if e is not None:
                m.close()
                e.close()
    assert flipped == 0, f"{flipped} of {PAGE} raced loads gave the app a byte the host flipped"
    check_raced(raced, PAGE)
    assert deaths > 0                                      # the flips were seen: as tampering


@pytest.mark.parametrize("slot_of", ["sealed", "at"])
def test_page_verified_for_one_address_never_appears_at_another(epc, slot_of):
    # A hostile driver asks the CPU to load page 0's sealed copy as page 1 (with page 0's VA
    # slot, or page 1's).  The CPU installs only at the address it verified, and that address
    # is in the tag: the enclave dies, and page 1 never shows page 0's data.
    m = epc.map(2 * PAGE)
    m[0:PAGE] = b"A" * PAGE
    m[PAGE:2 * PAGE] = b"B" * PAGE
    assert epc.evict(m) == 2
    drv = epc._driver
    seen = []
    with pytest.raises(IntegrityError):
        rc = drv.hostile_load(m._epc_region, 0, 0 if slot_of == "sealed" else 1, 1)
        seen.append(rc)
        seen.append(m[PAGE:PAGE + 16])
        access_then_work(m, PAGE, seen, [])
    assert all(b"A" * 16 != s for s in seen)
    assert seen[:1] in ([], [cpu.EPCM_ERR_BAD_SLOT if slot_of == "sealed" else cpu.EPCM_ERR_MAC])
    assert epc.dead


def test_driver_loading_a_page_at_its_own_address_gets_it_there(epc):
    # The same path, told the truth: the CPU loads and installs page 0 at page 0.
    m = epc.map(2 * PAGE)
    m[0:PAGE] = b"A" * PAGE
    assert epc.evict(m, 0) == 1
    assert epc._driver.hostile_load(m._epc_region, 0, 0, 0) == 0
    assert epc.page_states(m)[0] == "resident"
    assert m[0:PAGE] == b"A" * PAGE


def test_sealed_page_rewritten_while_ewb_writes_it_out_never_loads_as_forged(cpu_region):
    # The host keeps writing a byte of its own into the page EWB is writing out, one byte of
    # the page after the other.  The CPU computes the tag in its own frame before the copy out,
    # so ELDU then loads the page as it was, or refuses it, never the host's byte.
    view, addr, slot = cpu_region
    sealed, tag = cpu_ffi.new("char[]", PAGE), cpu_ffi.new("char[]", 16)
    res = cpu_ffi.new("uint64_t[2]")
    out = int(cpu_ffi.cast("uintptr_t", sealed))
    raced = forged = refused = 0
    with racing() as racer:
        for i in range(PAGE):
            data = os.urandom(PAGE)
            view[0:PAGE] = data
            racer.arm(out + i, value=0x5A)
            rc = cpu.epcm_ewb(addr, slot, sealed, tag)
            raced += racer.disarm() > 0
            assert rc == cpu.EPCM_OK
            rc = cpu.epcm_eldu(addr, slot, sealed, tag, -1, res)
            if rc == cpu.EPCM_OK:
                forged += view[0:PAGE] != data
            else:
                assert rc == cpu.EPCM_ERR_MAC
                refused += 1
                cpu.epcm_eremove(slot, 1)                  # the failed copy's slot, emptied
                cpu.epcm_reset()
    assert forged == 0, f"{forged} of {PAGE} raced write-outs loaded as forged pages"
    check_raced(raced, PAGE)
    assert refused > 0


def _region_memfd(m, flags: int = os.O_RDONLY) -> int:
    """A descriptor of the memfd behind EPC map ``m`` (its frames), found as the host would."""
    for name in os.listdir("/proc/self/fd"):
        try:
            if "memfd:eleos-epc" not in os.readlink(f"/proc/self/fd/{name}"):
                continue
            fd = os.open(f"/proc/self/fd/{name}", flags)
        except OSError:
            continue
        if os.fstat(fd).st_size == len(m):
            return fd
        os.close(fd)
    raise LookupError("no memfd of that size")


def test_evicted_pages_leave_only_wiped_frames_and_still_trap(epc):
    # EWB wipes the frame instead of freeing it: what stays in the EPC memory of an evicted
    # page is zeros, never its plaintext, and the next access traps (the app's view has no
    # mapping of it; the kernel maps no neighbour that is in the memfd without a fault).
    npages = 3 * (1 << 20) // PAGE
    m = epc.map(npages * PAGE)
    for i in range(npages):
        m[i * PAGE:(i + 1) * PAGE] = bytes([i % 251 + 1]) * PAGE
    states = epc.page_states(m)
    evicted = [i for i, s in enumerate(states) if s == "evicted"]
    assert len(evicted) > npages // 2
    fd = _region_memfd(m)
    try:
        for i in evicted:
            assert os.pread(fd, PAGE, i * PAGE) == bytes(PAGE), f"page {i} left plaintext behind"
    finally:
        os.close(fd)
    before = epc.stats()["eldu"]
    for i in evicted[:64]:                  # neighbours: fault-around would map their zeros
        assert m[i * PAGE + 7] == i % 251 + 1
    assert epc.stats()["eldu"] >= before + 64
    m.close()


def test_racing_paging_instructions_on_one_page_never_lose_or_tear_it(cpu_region):
    # A hostile driver runs EWB and ELDU of one page from two threads at once (each thread
    # loads back the copy it sealed), as a driver whose reclaimer and fault path ignore each
    # other would.  An EWB that checked the slot before another EWB's ELDU, or before an ELDU
    # had put the page back, must not record a version for what it read: a copy of the page
    # half wiped, or of its wiped frame, would load later as the page, silently.  Like SGX's
    # EPCM lock (SGX_EPC_PAGE_CONFLICT), a page one instruction is working on refuses another.
    view, addr, slot = cpu_region
    data = os.urandom(PAGE)
    view[0:PAGE] = data
    # Until each thread has met the other's instruction `enough` times (on a busy machine the
    # two threads share the CPUs less often, so the rounds run on, up to `most`).
    enough, most, raced, rounds, wrong, done = 2000, 400_000, [0, 0], [0, 0], [], [False]
    start = threading.Barrier(2)

    def host(k):
        sealed, tag = cpu_ffi.new("char[]", PAGE), cpu_ffi.new("char[]", 16)
        res = cpu_ffi.new("uint64_t[2]")
        start.wait()
        while not done[0]:
            rounds[k] += 1
            if k == 0 and (min(raced) >= enough or rounds[0] >= most):
                done[0] = True
            rc = cpu.epcm_ewb(addr, slot, sealed, tag)
            if rc != cpu.EPCM_OK:
                raced[k] += 1
                continue
            rc = cpu.epcm_eldu(addr, slot, sealed, tag, -1, res)
            if rc != cpu.EPCM_OK:
                wrong.append(f"ELDU of its own copy failed: {rc}")
                done[0] = True
                return

    mine, other = two_cpus()
    old = os.sched_getaffinity(0)
    try:
        t = threading.Thread(target=lambda: (os.sched_setaffinity(0, {other}), host(1)))
        os.sched_setaffinity(0, {mine})
        t.start()
        host(0)
        t.join()
    finally:
        os.sched_setaffinity(0, old)
    assert not cpu.epcm_dead() and wrong == []
    got = view[0:PAGE]
    assert got == data, (f"the page came back with {sum(a != b for a, b in zip(got, data))} "
                         "bytes wrong: an EWB sealed a page another instruction was changing")
    check_raced(min(raced), enough * 10)


def test_cpu_takes_as_a_region_only_fresh_memory_of_no_other_region(cpu_region, tmp_path):
    # The memfd of a region comes from the driver.  The CPU takes only what EPC memory is when
    # a region is added: a memfd, no page of it allocated (no bytes the host put there, no old
    # region's frames), and no other region's memory (ELDU of one region's page would then write
    # its plaintext into the other region).
    view, addr, slot = cpu_region
    base = addr + 64 * PAGE                       # the CPU only records where the region lives
    used = os.memfd_create("epc-test")
    fresh = os.memfd_create("epc-test")
    with open(tmp_path / "disk", "wb") as f:
        f.truncate(PAGE)
    disk = os.open(tmp_path / "disk", os.O_RDWR)
    try:
        os.ftruncate(used, PAGE)
        os.pwrite(used, b"host", 100)             # content the host chose
        os.ftruncate(fresh, PAGE)
        assert cpu.epcm_region_add(base, PAGE, slot, used) == -errno.EINVAL
        assert cpu.epcm_region_add(base, PAGE, slot, disk) == -errno.EINVAL   # a file on disk
        assert cpu.epcm_region_add(base, PAGE, slot, fresh) == 0
        try:
            # the same memory again, at another address
            assert cpu.epcm_region_add(base + 4 * PAGE, PAGE, slot, fresh) == -errno.EEXIST
        finally:
            assert cpu.epcm_region_remove(base) == 0
        assert os.lseek(fresh, 0, os.SEEK_CUR) == 0   # the driver's file offset untouched
    finally:
        for fd in (used, fresh, disk):
            os.close(fd)


def test_driver_handing_out_another_regions_memory_gets_no_new_map(epc):
    # A hostile driver answers "create a region" with the memfd of a live one.  Had the CPU
    # taken it, the new map and the old would share frames: whatever one region loaded (ELDU)
    # or wrote, the other would show.  The map is refused; the old one keeps its contents.
    old = epc.map(3 * PAGE)
    old[0:6] = b"first!"
    fd = _region_memfd(old, os.O_RDWR)
    real = epc._driver.create_region

    def hostile(nbytes, va_first):
        rid, _memfd = real(nbytes, va_first)
        return rid, fd

    epc._driver.create_region = hostile
    try:
        with pytest.raises(OSError, match="the CPU refused the EPC region"):
            new = epc.map(2 * PAGE)
            new[0:6] = b"second"
    finally:
        del epc._driver.create_region
        os.close(fd)
    assert old[0:6] == b"first!"
    assert epc.stats()["regions"] == 1
    assert not epc.dead


def test_driver_giving_a_live_region_id_to_a_new_map_is_a_lie(epc):
    # The driver names regions; the enclave frees, evicts and attaches by that name.  A name
    # handed out twice would let "closing the new map" free the old one's frames under the app.
    old = epc.map(2 * PAGE)
    old[0:5] = b"first"
    real = epc._driver.create_region

    def hostile(nbytes, va_first):
        _rid, memfd = real(nbytes, va_first)
        return old._epc_region, memfd

    epc._driver.create_region = hostile
    try:
        with pytest.raises(IagoError, match="region id"):
            epc.map(PAGE)
    finally:
        del epc._driver.create_region
    assert epc.evict(old, 0) == 1
    assert old[0:5] == b"first"
    assert epc.stats()["regions"] == 1


def test_a_resize_whose_old_region_the_driver_says_it_could_not_free_keeps_the_map(tmp_path):
    # A resize frees the map's old region before placing the new one.  A driver that frees it
    # but answers with an error must not leave the CPU holding the old region's addresses:
    # then no region could be put back there, and the map was left on parked (inaccessible)
    # memory, a segfault at the app's next access.  (In a child: that is how it failed.)
    script = tmp_path / "app.py"
    script.write_text(textwrap.dedent("""
        from eleos_shim.config import Config
        from eleos_shim.epc import EPC
        from untrusted.epc import DriverError
        with EPC(Config.from_env({}, mode="sgx", epc_mb=1, cost="account")) as epc:
            m = epc.map(2 * 4096)
            m[0:6] = b"secret"
            real = epc._driver.destroy
            def lying(rid):
                real(rid)
                raise DriverError(5, "the driver says it could not free the region")
            epc._driver.destroy = lying
            try:
                m.resize(3 * 4096)
            except OSError as exc:
                print("resize failed:", exc.strerror, flush=True)
            del epc._driver.destroy
            print(len(m), m[0:6], flush=True)
            m.resize(5 * 4096)                       # an honest driver again: it works
            print(len(m), m[0:6], epc.stats()["regions"], flush=True)
            m.close()
    """))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ELEOS_")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == ("resize failed: the driver says it could not free the region\n"
                           "8192 b'secret'\n20480 b'secret' 1\n")


def test_a_resize_no_region_can_be_placed_for_closes_the_map_not_zeros(epc):
    # A driver that refuses to trap every new region: the resize fails, and the old region is
    # already gone.  The map must not stay usable on memory that is no region's (outside the
    # EPC, its contents zeros): it is closed, so the app's next access is a ValueError.
    m = epc.map(2 * PAGE)
    m[0:6] = b"secret"

    def refusing(rid, address):
        raise OSError(errno.ENOMEM, "the driver refuses to trap the region")

    epc._driver.attach = refusing
    try:
        with pytest.raises(OSError, match="refuses to trap"):
            m.resize(3 * PAGE)
    finally:
        del epc._driver.attach
    with pytest.raises(ValueError, match="closed"):
        m[0:6]
    assert m.closed
    assert epc.stats()["regions"] == 0
    fresh = epc.map(3 * PAGE)                   # the CPU kept no stale region
    fresh[0:5] = b"fresh"
    assert epc.evict(fresh, 0) == 1
    assert fresh[0:5] == b"fresh"
    fresh.close()


def _vmas_of(inode: int) -> dict[int, set[str]]:
    """The start address and VmFlags of every mapping of file ``inode`` in this process."""
    out, start = {}, None
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
                start = int(head[0].split("-")[0], 16) if int(head[4]) == inode else None
            elif head[0] == "VmFlags:" and start is not None:
                out[start] = set(head[1:])
    return out


def test_epc_frames_stay_out_of_core_dumps_and_forks(epc):
    # A host can make the app dump core, or fork it: the app's view of its EPC (resident
    # plaintext) is not dumped, as SGX's enclave mappings are not; the CPU's own view of the
    # frames is neither dumped nor inherited by a child.
    m = epc.map(2 * PAGE)
    m[0:6] = b"secret"
    fd = _region_memfd(m)
    try:
        vmas = _vmas_of(os.fstat(fd).st_ino)
    finally:
        os.close(fd)
    app = [a for a in vmas if m.address <= a < m.address + len(m)]   # split by mprotect
    assert m.address in app and len(vmas) - len(app) == 1, vmas      # and the CPU's view
    for start, flags in vmas.items():
        assert "dd" in flags, f"the mapping at {start:#x} would be in a core dump"
        if start not in app:
            assert "dc" in flags, "a forked child would keep the CPU's view of the frames"
    m.close()


def test_cpu_writes_a_sealed_page_only_outside_enclave_memory(cpu_region):
    # The driver names where EWB writes the sealed page and its tag.  Pointed at enclave memory
    # (another page of a region), EWB would write ciphertext over the app's data: SGX's EWB
    # takes only buffers outside the EPC, and so does this CPU (nor does ELDU read from it).
    view, addr, slot = cpu_region
    data = os.urandom(2 * PAGE)
    view[:] = data
    tag = cpu_ffi.new("char[]", 16)
    sealed = cpu_ffi.new("char[]", PAGE)
    res = cpu_ffi.new("uint64_t[2]")
    other = addr + PAGE
    assert cpu.epcm_ewb(addr, slot, cpu_ffi.cast("void *", other), tag) == cpu.EPCM_ERR_BAD_BUFFER
    assert cpu.epcm_ewb(addr, slot, sealed, cpu_ffi.cast("void *", other + 40)) == \
        cpu.EPCM_ERR_BAD_BUFFER
    assert view[:] == data                        # neither page written, page 0 still resident
    assert cpu.epcm_ewb(addr, slot, sealed, tag) == cpu.EPCM_OK   # its slot was left empty
    assert cpu.epcm_eldu(addr, slot, cpu_ffi.cast("void *", other), tag, -1, res) == \
        cpu.EPCM_ERR_BAD_BUFFER
    assert cpu.epcm_dead()

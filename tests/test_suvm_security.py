"""SUVM against a hostile host: tamper, swap and replay are detected, also by a host thread
racing the enclave's seal and open; the crypto is real AES-GCM; the backing store never shows
plaintext."""
import os

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from eleos_shim import IntegrityError, suvm
from eleos_shim.config import Config
from tests.racing import check_raced, racing
from trusted.suvm import ffi as sffi, lib as slib

PAGE = 4096


@pytest.fixture(params=[0, 512], ids=["whole-page", "sub-pages"])
def inst(request):
    cfg = Config().replace(suvm_page_size=PAGE, suvm_subpage=request.param, suvm_eviction="clock",
                           suvm_cache_mb=4 * PAGE / 2**20, suvm_store_mb=8)
    s = suvm.create(cfg)
    yield s
    s.close()


def written_and_evicted(inst, pages=4):
    p = inst.malloc(pages * PAGE)
    assert p.address % PAGE == 0
    data = os.urandom(pages * PAGE)
    p[:] = data
    inst.evict_all()
    return p, data, p.address // PAGE


def test_flipped_bit_in_stored_page_raises_integrity_error(inst):
    p, data, vpn = written_and_evicted(inst)
    inst.backing_store.flip_bit(vpn + 1, bit=12345)
    assert p[0:PAGE] == data[0:PAGE]                     # other pages are fine
    with pytest.raises(IntegrityError):
        p[PAGE:2 * PAGE]
    with pytest.raises(IntegrityError):                  # fail-stop: again, never the data
        p[PAGE + 12345 // 8]                           # the flipped byte itself
    assert inst.stats()["integrity_errors"] >= 2


def test_swapped_pages_raise_integrity_error(inst):
    p, data, vpn = written_and_evicted(inst)
    inst.backing_store.swap_pages(vpn, vpn + 2)
    with pytest.raises(IntegrityError):
        p[0:PAGE]
    with pytest.raises(IntegrityError):
        p[2 * PAGE:3 * PAGE]
    assert p[PAGE:2 * PAGE] == data[PAGE:2 * PAGE]


def test_replayed_old_copy_raises_integrity_error(inst):
    p, data, vpn = written_and_evicted(inst)
    old = inst.backing_store.read_page(vpn)              # host keeps the old sealed copy
    p[0:8] = b"NEWDATA!"
    inst.evict_all()                                     # new version written back
    assert inst.backing_store.read_page(vpn) != old
    inst.backing_store.write_page(vpn, old)              # ... and puts the old one back
    with pytest.raises(IntegrityError):
        p[0:8]


def test_small_read_of_tampered_sub_page_raises_integrity_error():
    cfg = Config().replace(suvm_page_size=PAGE, suvm_subpage=256, suvm_cache_mb=4 * PAGE / 2**20,
                           suvm_store_mb=8)
    inst = suvm.create(cfg)
    try:
        p, data, vpn = written_and_evicted(inst)
        inst.backing_store.flip_bit(vpn, bit=8 * 256 * 3 + 1)     # in sub-page 3
        assert p[0:16] == data[0:16]                              # sub-page 0 still opens
        with pytest.raises(IntegrityError):
            p[256 * 3 + 10:256 * 3 + 20]
        assert inst.stats()["subpage_reads"] >= 1
    finally:
        inst.close()


def test_page_sealed_in_c_opens_with_cryptography_aesgcm(inst):
    p, data, vpn = written_and_evicted(inst, pages=2)
    key = sffi.new("uint8_t[16]")
    slib.suvm_test_key(inst.handle, key)
    nsub = 1 if not inst.subpage else PAGE // inst.subpage
    sub_len = PAGE // nsub
    stored = inst.backing_store.read_page(vpn + 1)
    for sub in range(nsub):
        nonce, aad, tag = sffi.new("uint8_t[12]"), sffi.new("uint8_t[24]"), sffi.new("uint8_t[16]")
        assert slib.suvm_test_sealed(inst.handle, vpn + 1, sub, nonce, aad, tag) == 0
        ct = stored[sub * sub_len:(sub + 1) * sub_len]
        plain = AESGCM(bytes(key)).decrypt(bytes(nonce), ct + bytes(tag), bytes(aad))
        assert plain == data[PAGE + sub * sub_len:PAGE + (sub + 1) * sub_len]
        # the AAD binds the page number and the version
        assert int.from_bytes(bytes(aad)[0:8], "little") == vpn + 1


def test_every_write_back_uses_a_fresh_nonce(inst):
    p, data, vpn = written_and_evicted(inst, pages=1)
    nonces = set()
    for i in range(5):
        p[0] = i
        inst.evict_all()
        nonce, aad, tag = sffi.new("uint8_t[12]"), sffi.new("uint8_t[24]"), sffi.new("uint8_t[16]")
        assert slib.suvm_test_sealed(inst.handle, vpn, 0, nonce, aad, tag) == 0
        nonces.add(bytes(nonce))
    assert len(nonces) == 5


def test_backing_store_never_shows_the_plaintext(inst):
    pattern = b"SECRET-PATTERN-0123456789abcdef!"
    p = inst.malloc(64 * PAGE)
    for i in range(0, 64 * PAGE, 1000):
        p[i:i + len(pattern)] = pattern
    inst.evict_all()
    raw = inst.backing_store.raw()                       # the whole committed store
    mine = raw[p.address:p.address + 64 * PAGE]
    assert len(mine) == 64 * PAGE
    assert mine.count(b"\0" * 64) == 0                   # the pages really are there, sealed
    for probe in (pattern, pattern[:16], pattern[8:24]):
        assert raw.find(probe) == -1
    assert p[1000:1000 + len(pattern)] == pattern


def test_store_full_is_a_clear_memory_error():
    cfg = Config().replace(suvm_cache_mb=0.0625, suvm_store_mb=1)
    inst = suvm.create(cfg)
    try:
        a = inst.malloc(768 * 1024)
        with pytest.raises(MemoryError, match="backing store is full"):
            inst.malloc(512 * 1024)
        a.free()
        b = inst.malloc(1024 * 1024)        # freed space is usable again
        b[-1] = 7
        assert b[-1] == 7
    finally:
        inst.close()


def test_closing_the_instance_unmaps_its_backing_store():
    inst = suvm.create(Config().replace(suvm_cache_mb=0.0625, suvm_store_mb=4))
    store = inst.backing_store
    p = inst.malloc(200 * 1024)
    p[:] = b"z" * (200 * 1024)
    inst.evict_all()
    assert store.committed >= 200 * 1024
    inst.close()
    assert store.committed == 0
    with pytest.raises(ValueError, match="closed"):
        store.raw()


# ---- a host thread racing the enclave on the backing store ----

# Each round races one byte, the next round the next byte: which bytes an AES-GCM
# implementation reads twice depends on it (OpenSSL 3.0's AVX-512 code here: a few bytes near
# offset 3000 of a page), and a forgery needs all the raced bytes to be read the same way,
# so one byte at a time, every byte of the page in turn.
RACE_ROUNDS = 2 * PAGE


def race_byte(i: int) -> int:
    return i % PAGE


def race_instance():
    # overwrite=skip: each round rewrites the whole page without opening the copy a raced round
    # may have left tampered (by default that write would open it and stop on IntegrityError).
    return suvm.create(Config().replace(suvm_page_size=PAGE, suvm_subpage=0, suvm_eviction="clock",
                                        suvm_cache_mb=4 * PAGE / 2**20, suvm_store_mb=8,
                                        suvm_overwrite="skip"))


def test_ciphertext_rewritten_during_write_back_never_opens_as_a_forged_page():
    # The host flips a byte of the stored page while the enclave writes it back.  The tag
    # must be over what the enclave sealed (in its own memory), so the next read returns
    # either the page as written (the host's last flip undone) or IntegrityError, never a page
    # with the host's flip in it.
    inst = race_instance()
    try:
        p = inst.malloc(PAGE)
        vpn = p.address // PAGE
        p[:] = bytes(PAGE)
        inst.evict_all()
        store = inst.backing_store.base + vpn * PAGE
        raced = forged = refused = 0
        with racing() as racer:
            for i in range(RACE_ROUNDS):
                data = os.urandom(PAGE)
                p[:] = data                              # resident, dirty
                racer.arm(store + race_byte(i), value=0x5A)
                inst.evict_all()                         # the write-back, raced
                raced += racer.disarm() > 0
                try:
                    got = p[0:PAGE]
                except IntegrityError:
                    refused += 1
                    continue
                forged += got != data
        assert forged == 0, (f"{forged} of {RACE_ROUNDS} write-backs ({raced} raced, {refused} "
                             "refused) opened as forged pages")
        check_raced(raced, RACE_ROUNDS)
    finally:
        inst.close()


@pytest.mark.parametrize("subpage", [0, 512], ids=["whole-page", "sub-pages"])
def test_ciphertext_flipped_while_a_miss_opens_it_never_reaches_the_app(subpage):
    # The host flips a byte of the stored page while the enclave's miss handler (or its
    # sub-page direct read) opens it: the enclave copies the ciphertext in once and opens its
    # copy, so the app gets the right data or IntegrityError.
    # overwrite=skip: each round's whole-page write must not open the copy the last round's
    # race may have left flipped.
    inst = suvm.create(Config().replace(suvm_page_size=PAGE, suvm_subpage=subpage,
                                        suvm_eviction="clock", suvm_cache_mb=4 * PAGE / 2**20,
                                        suvm_store_mb=8, suvm_overwrite="skip"))
    try:
        p = inst.malloc(PAGE)
        vpn = p.address // PAGE
        store = inst.backing_store.base + vpn * PAGE
        rounds = RACE_ROUNDS // 5
        raced = flipped = 0
        with racing() as racer:
            for i in range(rounds):
                data = os.urandom(PAGE)
                p[:] = data
                inst.evict_all()                         # sealed, nobody racing
                at = race_byte(i)
                racer.arm(store + at)
                try:
                    lo = min(at, PAGE - 16)
                    got = p[lo:lo + 16] if subpage else p[0:PAGE]
                    want = data[lo:lo + 16] if subpage else data
                    flipped += got != want
                except IntegrityError:
                    pass
                finally:
                    raced += racer.disarm() > 0
        assert flipped == 0
        check_raced(raced, rounds)
        if subpage:
            assert inst.stats()["subpage_reads"] > 0
    finally:
        inst.close()

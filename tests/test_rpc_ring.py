"""The RPC ring in isolation, at the C level through cffi: the enclave producer
(trusted/_native/enclave_rpc.c) against the native workers (untrusted/_native/rpc_workers.c)
running the host's real OCALL dispatch.  A call that falls back is made here as the OCALL would
make it: host_dispatch on the calling thread."""
from __future__ import annotations

import errno
import os
import threading
import time
from collections import Counter

import pytest

from eleos_shim import abi
from eleos_shim.config import Config
from trusted._native._enclave import ffi as tffi, lib as tlib
from untrusted._native._host import lib as hlib
from untrusted.rpc import RpcHost

SPIN = 20000
# For calls a test needs served: a worker that was just started, or is preempted on a busy
# 2-core machine, may take longer than the default budget to reach the ring.
PATIENT = 1 << 40
FALLBACK_FULL, FALLBACK_NO_WORKER, FALLBACK_TIMEOUT, FALLBACK_ASLEEP, WAKEUPS, CORRUPT = range(6)
AWAKE = 1 << 62     # an idle budget no test reaches: the workers never sleep


class Ring:
    """An RpcHost plus the enclave's attachment of its ring."""

    def __init__(self, workers=1, slots=1024, sleep=AWAKE):
        self.slots = slots
        cfg = Config().replace(rpc_workers=workers, rpc_slots=slots, rpc_sleep=sleep)
        self.host = RpcHost(cfg, hlib.host_dispatch_fn())
        self.addr = self.host.ring_addr
        assert tlib.enclave_rpc_attach(self.addr, slots) == 0
        self.host.start()

    def close(self):
        self.host.close()
        tlib.enclave_rpc_detach(self.addr)

    def counters(self):
        out = tffi.new("uint64_t[6]")
        tlib.enclave_rpc_counters(self.addr, out, 6)
        return list(out)

    def slot(self, i):
        return tffi.cast("struct eleos_req *",
                         self.addr + abi.ring_slots_offset(self.slots) + i * abi.RING_SLOT_SIZE)

    def posted(self):
        words = tffi.cast("uint64_t *", self.addr + abi.RING_HDR_SIZE)
        return [words[k] for k in range((self.slots + 63) // 64)]

    def header(self):
        return tffi.cast("struct eleos_ring *", self.addr)


@pytest.fixture
def make_ring():
    rings = []

    def make(**kw):
        r = Ring(**kw)
        rings.append(r)
        return r
    yield make
    for r in rings:
        r.close()


def request(op, *args, buf=None, buf_len=0, buf2=None, buf2_len=0):
    req = tffi.new("struct eleos_req *")
    req.op = op
    for i, a in enumerate(args):
        req.args[i] = a
    if buf is not None:
        req.buf = int(tffi.cast("uintptr_t", buf))
        req.buf_len = buf_len
    if buf2 is not None:
        req.buf2 = int(tffi.cast("uintptr_t", buf2))
        req.buf2_len = buf2_len
    return req


def ocall(req):
    """The fallback: run the request on this thread, as the OCALL stub does."""
    hlib.host_dispatch(tffi.cast("void *", req))


def wait_until(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.0005)


@pytest.fixture
def pipe():
    r, w = os.pipe()
    yield r, w
    for fd in (r, w):
        try:
            os.close(fd)
        except OSError:
            pass


def run_threads(n, target):
    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


@pytest.mark.parametrize("workers", [1, 4])
def test_every_write_from_many_producers_completes_exactly_once(make_ring, pipe, workers):
    ring = make_ring(workers=workers)
    rfd, wfd = pipe
    producers, per = 6, 400          # 6*400*8 bytes fit in the pipe: no reader needed
    results = [[] for _ in range(producers)]

    def produce(p):
        buf = tffi.new("char[8]")
        for i in range(per):
            tffi.memmove(buf, p.to_bytes(4, "little") + i.to_bytes(4, "little"), 8)
            req = request(abi.OP_WRITE, wfd, buf=buf, buf_len=8)
            # Every other call waits as long as it takes, so that some go through the ring
            # whatever the load (a loaded machine may not run the worker for the whole
            # test); the others may fall back, racing the worker for their slot.
            rc = tlib.enclave_rpc(ring.addr, req, PATIENT if i % 2 else SPIN)
            if rc == abi.RPC_FALLBACK:
                ocall(req)
            results[p].append((rc, req.ret))

    run_threads(producers, produce)
    data = os.read(rfd, 1 << 20)
    records = Counter(data[i:i + 8] for i in range(0, len(data), 8))
    expected = {p.to_bytes(4, "little") + i.to_bytes(4, "little") for p in range(producers) for i in range(per)}
    assert len(data) == producers * per * 8
    assert set(records) == expected and set(records.values()) == {1}
    outcomes = [rc for rs in results for rc, _ in rs]
    assert all(ret == 8 for rs in results for _, ret in rs)
    assert set(outcomes) <= {abi.RPC_DONE, abi.RPC_FALLBACK}
    stats = ring.host.stats()
    assert stats["processed"] == outcomes.count(abi.RPC_DONE)
    assert stats["fallbacks"] == outcomes.count(abi.RPC_FALLBACK)
    assert outcomes.count(abi.RPC_DONE) >= producers * per // 2


def test_nop_loops_from_many_threads_are_each_processed_once(make_ring):
    ring = make_ring(workers=2)
    done = [0] * 4

    def produce(p):
        done[p] = tlib.enclave_rpc_nop_loop(ring.addr, 5000, SPIN)

    run_threads(4, produce)
    assert all(d >= 0 for d in done)
    stats = ring.host.stats()
    assert stats["processed"] == sum(done)
    assert stats["fallbacks"] == 4 * 5000 - sum(done)


def test_read_results_and_errno_come_back_through_the_ring(make_ring, pipe):
    ring = make_ring()
    rfd, wfd = pipe
    os.write(wfd, b"hello ring")
    buf = tffi.new("char[64]")
    req = request(abi.OP_READ, rfd, 64, buf=buf, buf_len=64)
    assert tlib.enclave_rpc(ring.addr, req, PATIENT) == abi.RPC_DONE
    assert (req.ret, req.out_len) == (10, 10)
    assert tffi.unpack(buf, 10) == b"hello ring"
    bad = request(abi.OP_WRITE, 987654, buf=buf, buf_len=1)
    assert tlib.enclave_rpc(ring.addr, bad, PATIENT) == abi.RPC_DONE
    assert bad.ret == -errno.EBADF


def test_zero_workers_every_call_falls_back_and_still_works(make_ring, pipe):
    ring = make_ring(workers=0)
    rfd, wfd = pipe
    buf = tffi.new("char[]", b"x")
    for _ in range(100):
        req = request(abi.OP_WRITE, wfd, buf=buf, buf_len=1)
        assert tlib.enclave_rpc(ring.addr, req, SPIN) == abi.RPC_FALLBACK
        assert req.ret == 0 and req.out_len == 0      # untouched: the caller makes the OCALL
        ocall(req)
        assert req.ret == 1
    assert os.read(rfd, 1000) == b"x" * 100
    assert ring.counters()[FALLBACK_NO_WORKER] == 100
    assert ring.host.stats()["fallbacks"] == 100
    assert ring.host.stats()["fallback_why"]["no_worker"] == 100
    assert ring.host.stats()["processed"] == 0


def _block_a_worker(ring, rfd, taken=1):
    """Start a thread whose RPC read blocks in a worker; returns (thread, result) once
    ``taken`` slots are held by workers."""
    out = {}
    buf = tffi.new("char[16]")

    def reader():
        req = request(abi.OP_READ, rfd, 16, buf=buf, buf_len=16)
        out["rc"] = tlib.enclave_rpc(ring.addr, req, PATIENT)
        out["ret"] = req.ret
        out["data"] = tffi.unpack(buf, max(req.out_len, 0))

    t = threading.Thread(target=reader)
    t.start()
    wait_until(lambda: sum(ring.slot(i).state == abi.SLOT_TAKEN for i in range(ring.slots)) == taken)
    return t, out


def test_a_call_no_worker_takes_in_time_is_taken_back(make_ring, pipe):
    ring = make_ring(workers=1, slots=2)
    rfd, wfd = pipe
    t, out = _block_a_worker(ring, rfd)             # the only worker is stuck in a read
    nop = request(abi.OP_NOP)
    assert tlib.enclave_rpc(ring.addr, nop, 1000) == abi.RPC_FALLBACK
    assert ring.counters()[FALLBACK_TIMEOUT] == 1
    # Taken back: its slot is free again and no bit is left for a worker to find.
    assert sorted(ring.slot(i).state for i in range(2)) == [abi.SLOT_FREE, abi.SLOT_TAKEN]
    busy = [i for i in range(2) if ring.slot(i).state == abi.SLOT_TAKEN][0]
    assert ring.posted() == [0]
    os.write(wfd, b"unblock")
    t.join()
    assert out == {"rc": abi.RPC_DONE, "ret": 7, "data": b"unblock"}
    assert ring.slot(busy).state == abi.SLOT_FREE
    assert tlib.enclave_rpc(ring.addr, nop, PATIENT) == abi.RPC_DONE
    assert ring.host.stats()["processed"] == 2
    assert ring.host.stats()["fallback_why"] == {"ring_full": 0, "no_worker": 0, "timeout": 1,
                                                 "workers_asleep": 0}


def test_full_ring_falls_back_at_once(make_ring):
    ring = make_ring(workers=2, slots=2)
    pipes = [os.pipe() for _ in range(2)]
    try:
        t1, out1 = _block_a_worker(ring, pipes[0][0], taken=1)
        t2, out2 = _block_a_worker(ring, pipes[1][0], taken=2)   # both slots held
        assert tlib.enclave_rpc(ring.addr, request(abi.OP_NOP), PATIENT) == abi.RPC_FALLBACK
        assert ring.counters()[FALLBACK_FULL] == 1
        assert ring.host.stats()["fallback_why"]["ring_full"] == 1
        for _, w in pipes:
            os.write(w, b"x")
        t1.join()
        t2.join()
        assert out1["rc"] == out2["rc"] == abi.RPC_DONE
        assert tlib.enclave_rpc(ring.addr, request(abi.OP_NOP), PATIENT) == abi.RPC_DONE
    finally:
        for fds in pipes:
            for fd in fds:
                os.close(fd)


def test_a_thread_holding_a_slot_does_not_block_the_others(make_ring, pipe):
    """No FIFO order: while one call holds a slot (here: blocked in a worker), a thousand
    calls go through the other slots (a preempted thread would hold its slot the same way)."""
    ring = make_ring(workers=2, slots=4)
    rfd, wfd = pipe
    t, out = _block_a_worker(ring, rfd)
    assert tlib.enclave_rpc_nop_loop(ring.addr, 1000, PATIENT) == 1000
    assert ring.host.stats()["fallbacks"] == 0
    os.write(wfd, b"late")
    t.join()
    assert out["data"] == b"late"


def test_stop_with_a_call_in_flight_returns_and_the_call_gets_eintr(make_ring, pipe):
    ring = make_ring(workers=1)
    rfd, _ = pipe
    t, out = _block_a_worker(ring, rfd)
    assert ring.host.stop(timeout=0.2) == 0        # interrupted and joined, none left behind
    t.join()
    assert out["rc"] == abi.RPC_DONE and out["ret"] == -errno.EINTR
    # After stop, calls fall back at once.
    assert tlib.enclave_rpc(ring.addr, request(abi.OP_NOP), SPIN) == abi.RPC_FALLBACK
    assert ring.host.stats()["workers"] == 1


def test_stop_while_producers_hammer_the_ring_returns_and_every_call_ends(make_ring):
    ring = make_ring(workers=2)
    started = threading.Barrier(5)
    outcomes = Counter()
    lock = threading.Lock()

    def produce(p):
        started.wait()
        mine = Counter()
        for _ in range(3000):
            mine[tlib.enclave_rpc(ring.addr, request(abi.OP_NOP), 2000)] += 1
        with lock:
            outcomes.update(mine)

    threads = [threading.Thread(target=produce, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    started.wait()
    assert ring.host.stop() == 0
    for t in threads:
        t.join()
    assert sum(outcomes.values()) == 4 * 3000
    assert set(outcomes) <= {abi.RPC_DONE, abi.RPC_FALLBACK}
    assert ring.host.stats()["processed"] == outcomes[abi.RPC_DONE]


def test_idle_workers_sleep_and_burn_under_5_percent_of_a_core(make_ring):
    ring = make_ring(workers=2, sleep=20000)          # the default idle budget
    assert tlib.enclave_rpc_nop_loop(ring.addr, 1000, SPIN) >= 0
    wait_until(lambda: ring.header().sleepers == 2)
    before = ring.host.stats()["worker_cpu_s"]
    time.sleep(1.0)                        # the measurement window, not a synchronisation
    used = ring.host.stats()["worker_cpu_s"] - before
    assert used < 0.05, f"idle workers used {used:.3f} s of CPU in 1 s"
    assert ring.host.stats()["sleeps"] >= 2


def test_a_call_to_a_sleeping_pool_falls_back_and_wakes_a_worker(make_ring):
    ring = make_ring(workers=1, sleep=3_000_000)      # ~0.1 s of idle polls before sleeping
    wait_until(lambda: ring.header().sleepers == 1)
    # The futex wake is a syscall: it rides on the OCALL this call falls back to.
    assert tlib.enclave_rpc(ring.addr, request(abi.OP_NOP), SPIN) == abi.RPC_FALLBACK
    assert ring.counters()[FALLBACK_ASLEEP] == 1
    assert ring.host.stats()["fallback_why"]["workers_asleep"] == 1
    assert ring.counters()[WAKEUPS] == 1 == ring.host.stats()["wakeups"]
    wait_until(lambda: ring.header().sleepers == 0)
    # Awake now, for its idle budget: the next call is served by the ring.  (On a loaded
    # machine the budget may run out before this thread gets a core: then the call wakes it
    # again, and a later one is served.)
    outcomes = []
    while abi.RPC_DONE not in outcomes and len(outcomes) < 100:
        outcomes.append(tlib.enclave_rpc(ring.addr, request(abi.OP_NOP), PATIENT))
    assert outcomes[-1] == abi.RPC_DONE
    assert ring.host.stats()["processed"] == 1


# -- the hostile host -------------------------------------------------------------------------

@pytest.mark.parametrize("kind, value, words", [
    ("state", 77, "slot state 77"),
    ("state", abi.SLOT_FREE, "slot state 0"),
    ("out_len", 1, "into a buffer of 16"),
    ("out2_len", 5, "into a second buffer of 8"),
    ("ret", -4096, "neither a result nor an errno"),
    ("ret", -(1 << 62), "neither a result nor an errno"),
    ("seq", 1, "is not the ticket"),
    ("seq", 1024, "is not the ticket"),
])
def test_each_corruption_of_a_reply_is_caught(make_ring, pipe, kind, value, words):
    ring = make_ring(workers=1)
    rfd, wfd = pipe
    os.write(wfd, b"0123456789abcdef")
    buf, buf2 = tffi.new("char[16]"), tffi.new("char[8]")
    ring.host.corrupt_next(kind, value)
    req = request(abi.OP_READ, rfd, 16, buf=buf, buf_len=16, buf2=buf2, buf2_len=8)
    assert tlib.enclave_rpc(ring.addr, req, PATIENT) == abi.RPC_CORRUPT
    assert words in tffi.string(tlib.enclave_rpc_last_error()).decode()
    assert req.ret == 0 and req.out_len == 0       # nothing of the lie reached the caller
    assert ring.counters()[CORRUPT] == 1
    # The lie was one reply: the next call is served honestly.
    honest = request(abi.OP_READ, rfd, 16, buf=buf, buf_len=16)
    os.write(wfd, b"again")
    assert tlib.enclave_rpc(ring.addr, honest, PATIENT) == abi.RPC_DONE


def test_a_ring_the_enclave_never_attached_is_never_touched(make_ring):
    ring = make_ring(workers=1)
    tlib.enclave_rpc_detach(ring.addr)
    unknown = tffi.new("uint64_t[1]")
    tlib.enclave_rpc_counters(0, unknown, 1)
    before = unknown[0]
    assert tlib.enclave_rpc(ring.addr, request(abi.OP_NOP), SPIN) == abi.RPC_FALLBACK
    tlib.enclave_rpc_counters(0, unknown, 1)
    assert unknown[0] == before + 1
    assert ring.slot(0).state == abi.SLOT_FREE and ring.slot(0).op == 0
    assert tlib.enclave_rpc_attach(ring.addr, 1000) == -1          # not a power of two


def test_a_host_that_marks_every_slot_busy_only_causes_fallbacks(make_ring):
    ring = make_ring(workers=1, slots=4)
    ring.header().nslots = 1 << 30         # a lie the enclave must not use
    for i in range(4):
        ring.slot(i).state = abi.SLOT_TAKEN
    assert tlib.enclave_rpc(ring.addr, request(abi.OP_NOP), SPIN) == abi.RPC_FALLBACK
    assert ring.counters()[FALLBACK_FULL] == 1
    ring.slot(2).state = abi.SLOT_FREE
    assert tlib.enclave_rpc(ring.addr, request(abi.OP_NOP), PATIENT) == abi.RPC_DONE


def test_each_reply_is_matched_to_its_call_by_a_ticket_no_other_call_has(make_ring):
    ring = make_ring(workers=1, slots=2)
    seen = set()
    for _ in range(50):
        assert tlib.enclave_rpc(ring.addr, request(abi.OP_NOP), PATIENT) == abi.RPC_DONE
        seen.update(ring.slot(i).seq for i in range(2))
    seen.discard(0)
    assert len(seen) == 50                 # fresh tickets: a replayed reply would not match


def test_ring_layout_is_one_definition_for_both_halves():
    import re

    from untrusted._native._host import ffi as hffi
    with open(abi.HEADER) as f:
        text = f.read()
    consts = {m.group(1): int(m.group(2), 0)
              for m in re.finditer(r"#define ELEOS_(\w+)\s+(0x[0-9a-f]+|\d+)", text)}
    assert consts["RING_MAGIC"] == abi.RING_MAGIC
    assert consts["RING_HDR_SIZE"] == abi.RING_HDR_SIZE
    assert consts["RING_SLOT_SIZE"] == abi.RING_SLOT_SIZE
    assert consts["MAX_ERRNO"] == abi.MAX_ERRNO
    assert [consts[f"RPC_WHY_{w}"] for w in ("FULL", "NO_WORKER", "TIMEOUT", "ASLEEP")] == [0, 1, 2, 3]
    assert len(abi.RPC_WHY) == 4
    for ffi in (tffi, hffi):
        assert ffi.sizeof("struct eleos_ring") == abi.RING_HDR_SIZE
        assert ffi.sizeof("struct eleos_req") <= abi.RING_SLOT_SIZE
        # the contended words each on their own cache line
        offsets = [ffi.offsetof("struct eleos_ring", f) for f in ("workers_live", "futex", "fallbacks")]
        assert [o // 64 for o in offsets] == [0, 1, 2]
    assert abi.ring_slots_offset(2) == abi.RING_HDR_SIZE + 128
    assert abi.ring_slots_offset(1024) == abi.RING_HDR_SIZE + 128
    assert abi.ring_slots_offset(4096) == abi.RING_HDR_SIZE + 512


def test_a_new_ring_is_free_for_its_first_lap(make_ring):
    ring = make_ring(workers=0, slots=8)
    hdr = ring.header()
    assert (hdr.magic, hdr.nslots, hdr.slot_size) == (abi.RING_MAGIC, 8, abi.RING_SLOT_SIZE)
    assert all(ring.slot(i).state == abi.SLOT_FREE for i in range(8))
    assert ring.posted() == [0]


# A corrupted slot is no served call (not counted); a served call whose result lies is.
@pytest.mark.parametrize("kind, value, words, served", [
    ("state", 77, "RPC slot for recv came back corrupted: slot state 77", 1),
    ("seq", 1, "RPC slot for recv came back corrupted", 1),
    ("ret", 100, "host's reply to recv of 4 bytes cannot be true", 2),
])
def test_socket_fast_path_on_the_ring_catches_a_corrupted_reply(make_ring, kind, value, words,
                                                               served):
    import socket
    from eleos_shim.cpu import ModeledCPU
    from eleos_shim.errors import IagoError
    from trusted.syscall import Bridge, Transport
    ring = make_ring(workers=1)
    cpu = ModeledCPU(Config.from_env({}, mode="sgx", cost="account"))   # for a fallback OCALL
    t = Transport("rpc", Bridge(hlib.host_dispatch_fn(), hlib.host_alloc_fn(), hlib.host_free_fn(),
                                cpu.charge_fn, cpu.pollute_fn, tlib.enclave_rpc_fn(), ring.addr),
                  rpc_spin=PATIENT)
    a, b = socket.socketpair()
    try:
        t.reset_counts()
        assert t.data_out(abi.OP_SENDTO, a.fileno(), b"01234567") == 8
        ring.host.corrupt_next(kind, value)
        with pytest.raises(IagoError, match=words):
            t.data_in(abi.OP_RECVFROM, b.fileno(), 4)
        # the next reply is honest
        assert t.data_in(abi.OP_RECVFROM, b.fileno(), 4)[1] in (b"0123", b"4567")
        c = t.counts()
        assert c["sendto"]["rpc"] == 1 and c["recvfrom"]["rpc"] == served
    finally:
        a.close(), b.close()

"""Write-what-where through the staged request (issue 11, part 1): the request the enclave
stages lives in host memory, and a host that rewrites its buffer addresses, sizes or op (in a
reply, or from a racing thread) must never steer where the enclave copies.  Each test puts a
canary in enclave memory, tells the host to point the request at it, and checks that the
enclave's next calls leave it intact and move the right bytes, on the direct, ocall and rpc
paths and through the C data path (Transport.data_out/data_in)."""
from __future__ import annotations

import contextlib
import os
import time

import pytest

from eleos_shim import abi
from eleos_shim.config import Config
from eleos_shim.cpu import ModeledCPU
from eleos_shim.errors import IagoError
from trusted._native._enclave import ffi, lib as tlib
from trusted.syscall import Bridge, Transport
from untrusted.host import Host

CANARY = b"enclave secret: never the host's to choose " * 6
PATIENT = 1 << 40           # rpc: a call is always served by the ring, never falls back


class Target:
    """A canary in enclave memory, at an address the host names in its lies."""

    def __init__(self):
        self.mem = ffi.new("char[]", CANARY)
        self.addr = int(ffi.cast("uintptr_t", self.mem))

    def intact(self) -> bool:
        return ffi.unpack(self.mem, len(CANARY)) == CANARY


@contextlib.contextmanager
def built(path):
    cfg = Config.from_env({}, mode="sgx", cost="account")
    cpu = ModeledCPU(cfg)
    host = Host(cfg.replace(syscalls=path, rpc_workers=1, rpc_sleep=1 << 62))
    a = host.bridge_addresses()
    submit, ring = 0, 0
    if path == "rpc":
        ring = a["rpc_ring"]
        assert tlib.enclave_rpc_attach(ring, cfg.rpc_slots) == 0
        submit = tlib.enclave_rpc_fn()
        host.start()
    t = Transport(path, Bridge(a["dispatch"], a["alloc"], a["free"], cpu.charge_fn,
                               cpu.pollute_fn, submit, ring), rpc_spin=PATIENT)
    t.host = host
    try:
        yield t
    finally:
        Host.lie_next("ret", 0, 0)
        Host.race_stop()
        if path == "rpc":
            host.rpc.close()
            tlib.enclave_rpc_detach(ring)


@pytest.fixture(params=["direct", "ocall", "rpc"])
def transport(request):
    with built(request.param) as t:
        yield t


@pytest.fixture(params=["direct", "ocall"])
def exiting_transport(request):
    """The paths where the host serves the staged request itself."""
    with built(request.param) as t:
        yield t


@pytest.fixture
def pipe():
    r, w = os.pipe()
    yield r, w
    os.close(r), os.close(w)


def lie_in_reply(t: Transport, field: str, value: int) -> None:
    """The host's next reply leaves ``value`` in ``field`` of the request: in the staged
    request on the direct and ocall paths, in the slot on the ring."""
    if t.path == "rpc":
        t.host.rpc.corrupt_next(field, value)
    else:
        Host.lie_next(field, value, 1)


def staged_request_address(t: Transport) -> int:
    """Where this thread's staged request is in host memory (the host allocated it)."""
    return int(ffi.cast("uintptr_t", t._top_staging().req))


def wait_for(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"


# -- lies in a reply --------------------------------------------------------------------------

@pytest.mark.parametrize("field", ["buf", "buf_len", "op"])
def test_a_reply_that_rewrites_the_request_does_not_steer_the_next_call(transport, pipe, field):
    t, (r, w) = transport, pipe
    canary = Target()
    value = {"buf": canary.addr, "buf_len": 1 << 40, "op": abi.OP_NOP}[field]
    t.reset_counts()
    lie_in_reply(t, field, value)
    assert t.call(abi.OP_WRITE, w, inbuf=b"first ").ret == 6
    assert t.call(abi.OP_WRITE, w, inbuf=b"SECRET-KEY").ret == 10      # the general path
    assert t.data_out(abi.OP_WRITE, w, b" and more") == 9             # the C data path
    assert canary.intact()
    assert os.read(r, 100) == b"first SECRET-KEY and more"
    # and inward: the host reads into the enclave's buffer, which is what comes back
    os.write(w, b"inbound")
    assert t.data_in(abi.OP_READ, r, 64) == (7, b"inbound")
    os.write(w, b"again")
    assert t.call(abi.OP_READ, r, 64, outcap=64).out == b"again"
    assert canary.intact()
    # counted under the op the enclave made, not the one the host wrote back
    c = t.counts()
    assert set(c) == {"write", "read"} and c["write"]["count"] == 3 and c["read"]["count"] == 2


def test_a_reply_that_rewrites_buf_does_not_steer_the_data_path(transport, pipe):
    t, (r, w) = transport, pipe
    canary = Target()
    lie_in_reply(t, "buf", canary.addr)
    assert t.data_out(abi.OP_WRITE, w, b"one ") == 4
    assert t.data_out(abi.OP_WRITE, w, b"TWO-SECRET") == 10
    assert canary.intact()
    assert os.read(r, 100) == b"one TWO-SECRET"
    lie_in_reply(t, "buf", canary.addr)
    os.write(w, b"abc")
    assert t.data_in(abi.OP_READ, r, 3) == (3, b"abc")
    os.write(w, b"host-data")
    assert t.data_in(abi.OP_READ, r, 64) == (9, b"host-data")       # not into the canary
    assert canary.intact()


def test_a_reply_that_rewrites_buf2_does_not_steer_the_second_buffer(exiting_transport,
                                                                       tmp_path):
    t = exiting_transport
    canary = Target()
    old, new = tmp_path / "old", tmp_path / "new-name-the-enclave-chose"
    old.write_text("x")
    Host.lie_next("buf2", canary.addr, 1)
    assert t.call(abi.OP_NOP).ret == 0
    assert t.call(abi.OP_RENAMEAT, -100, -100, inbuf=bytes(old) + b"\0",
                  in2=bytes(new) + b"\0").ret == 0
    assert canary.intact()
    assert new.read_text() == "x" and not old.exists()


# -- a racing host thread ---------------------------------------------------------------------

@pytest.mark.parametrize("field", ["buf", "buf2"])
def test_a_host_thread_racing_the_staged_request_never_steers_a_copy(transport, pipe, field):
    """The host keeps pointing the staged request at the canary while the enclave makes its
    calls.  The enclave copies only to the buffers it allocated.  Where the host serves the
    staged request itself (direct, ocall) what it then sends is its own business (it may read
    where it likes), so only the canary is checked there; the ring never reads it, so there
    the bytes must arrive as sent."""
    t, (r, w) = transport, pipe
    canary = Target()
    field_at = staged_request_address(t) + ffi.offsetof("struct eleos_req", field)
    Host.race_start(field_at, canary.addr)
    wait_for(lambda: Host.race_stores() > 0)
    sink = os.open(os.devnull, os.O_WRONLY)
    out = w if t.path == "rpc" else sink
    try:
        sent = b""
        for i in range(200):
            data = b"SECRET-%03d;" % i
            assert t.data_out(abi.OP_WRITE, out, data) == len(data)          # buffer 1
            assert t.call(abi.OP_WRITE, out, inbuf=data).ret == len(data)
            assert t.call(abi.OP_RENAMEAT, -100, -100, inbuf=b"/nonexistent/a\0",   # and 2
                          in2=b"/nonexistent/" + data + b"\0").ret < 0
            sent += data * 2
    finally:
        assert Host.race_stop() > 0
        os.close(sink)
    assert canary.intact()
    if t.path == "rpc":
        assert t.counts()["write"]["fallback"] == 0
        assert os.read(r, 1 << 16) == sent


# -- the Python copy-out --------------------------------------------------------------------

def test_a_reply_larger_than_the_callers_buffer_is_never_copied_into_it(transport, pipe):
    t, (r, w) = transport, pipe
    os.write(w, b"0123456789abcdef")
    small = bytearray(4)
    with pytest.raises(ValueError, match="does not fit"):
        t.call(abi.OP_READ, r, 16, outcap=16, into=small)   # cffi's memmove checks no size
    assert small == bytearray(4)

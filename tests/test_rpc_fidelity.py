"""The LibOS fidelity tests (tests/test_libos_fidelity.py), run again on the RPC path with 1
and with 4 workers: what the app observes through the ring (values, exceptions, errno,
filenames, sockets, asyncio) is what it observes natively.  The tests are imported; only the
``transport`` fixture differs."""
from __future__ import annotations

import pytest

from tests.test_libos_fidelity import *  # noqa: F401,F403 - the same tests, collected here
from eleos_shim.config import Config
from eleos_shim.cpu import ModeledCPU
from trusted._native._enclave import ffi as _tffi, lib as _tlib
from trusted.syscall import Bridge, Transport
from untrusted.host import Host

_CPU = None


@pytest.fixture(params=[1, 4], ids=["1-worker", "4-workers"])
def transport(request):
    """A transport on the rpc path over a started worker pool whose workers never sleep and
    whose calls wait up to ~0.5 s for one: every call goes through the ring (a fallback would
    be the OCALL path, which the original tests cover), yet a call stuck behind one that
    blocks in the only worker still falls back instead of deadlocking."""
    global _CPU
    cfg = Config.from_env({}, mode="eleos", memory="native", cost="account",
                          rpc_workers=str(request.param), rpc_sleep=str(1 << 62),
                          rpc_spin=str(1 << 24))
    if _CPU is None:
        _CPU = ModeledCPU(cfg)
    host = Host(cfg)
    host.start()
    a = host.bridge_addresses()
    assert _tlib.enclave_rpc_attach(a["rpc_ring"], cfg.rpc_slots) == 0
    submit = int(_tffi.cast("uintptr_t", _tffi.addressof(_tlib, "enclave_rpc")))
    t = Transport("rpc", Bridge(a["dispatch"], a["alloc"], a["free"], _CPU.charge_fn,
                                _CPU.pollute_fn, rpc_submit=submit, rpc_ring=a["rpc_ring"]),
                  rpc_spin=cfg.rpc_spin)
    t.reset_counts()
    yield t
    counts = t.counts()
    host.stop()
    _tlib.enclave_rpc_detach(a["rpc_ring"])
    # Every routed call went through the ring, fell back, or (a wait) exited on purpose.
    assert all(c["direct"] == 0 for c in counts.values())
    if any(c["count"] for c in counts.values()):
        assert sum(c["rpc"] for c in counts.values()) > 0

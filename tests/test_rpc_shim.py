"""Exit-less system calls end to end: unmodified scripts under ``python -m eleos_shim`` with
ELEOS_SYSCALLS=rpc, with 1 and 4 workers and 4 app threads, no worker at all, a same-enclave
client/server, an exit with calls in flight; and the transport turning a corrupted RPC slot
into IagoError.  (tests/test_libos_scripts.py runs every LibOS script with 0 and 4 workers.)"""
from __future__ import annotations

import os

import pytest

from eleos_shim import abi
from eleos_shim.config import Config
from eleos_shim.cpu import ModeledCPU
from eleos_shim.errors import IagoError
from tests.conftest import SCRIPTS, run_shim
from trusted._native._enclave import ffi as tffi, lib as tlib
from trusted.syscall import Bridge, Transport
from untrusted.host import Host

# Workers that never sleep and calls that wait for them as long as it takes: every call goes
# through the ring, whatever the machine's load (the sleep and fallback policies are pinned
# by tests/test_rpc_ring.py).
ALWAYS_RPC = {"ELEOS_RPC_SLEEP": str(1 << 62), "ELEOS_RPC_SPIN": str(1 << 40)}


def rpc_env(workers, **extra):
    return {"ELEOS_SYSCALLS": "rpc", "ELEOS_MEMORY": "native", "ELEOS_RPC_WORKERS": str(workers),
            **extra}


@pytest.fixture(scope="module")
def native_output():
    cache = {}

    def get(name, *args):
        key = (name, args)
        if key not in cache:
            run = run_shim("native", SCRIPTS / f"{name}.py", *args, stats=False)
            assert run.returncode == 0, run.stderr
            assert run.stdout.strip()
            cache[key] = run.stdout
        return cache[key]
    return get


@pytest.mark.parametrize("workers", [1, 4])
def test_four_app_threads_at_once_through_the_ring(native_output, workers):
    run = run_shim(None, SCRIPTS / "rpc_threads.py", 200, env=rpc_env(workers, **ALWAYS_RPC))
    assert run.returncode == 0, run.stderr
    assert run.stdout == native_output("rpc_threads", 200)
    calls = run.stats["calls"]
    assert calls["write"]["rpc"] == calls["write"]["count"] >= 4 * 2 * 200, run.stats["rpc"]
    assert calls["read"]["rpc"] == calls["read"]["count"]
    assert run.stats["rpc"]["processed"] == sum(c["rpc"] for c in calls.values())
    assert run.stats["rpc"]["fallbacks"] == 0


def test_n_nonblocking_writes_are_n_rpc_calls_and_no_exit():
    n = 300
    run = run_shim(None, SCRIPTS / "libos_writes.py", n, env=rpc_env(1, **ALWAYS_RPC))
    assert run.returncode == 0, run.stderr
    write = run.stats["calls"]["write"]
    n += 1                                              # and stdout's one (routed too)
    assert (write["count"], write["rpc"], write["ocall"], write["fallback"]) == (n, n, 0, 0)
    # No call of the script left the enclave.
    assert run.stats["transitions"]["eexit"] == 0
    assert run.stats["rpc"]["processed"] >= n + 2       # + open and close


def test_n_writes_with_default_spin_and_sleep_never_take_a_plain_ocall():
    n = 300
    run = run_shim(None, SCRIPTS / "libos_writes.py", n, env=rpc_env(1))
    assert run.returncode == 0, run.stderr
    write = run.stats["calls"]["write"]
    n += 1                                              # and stdout's one (routed too)
    assert write["count"] == n and write["ocall"] == 0
    assert write["rpc"] + write["fallback"] == n        # fallbacks counted apart
    rpc = run.stats["rpc"]
    assert rpc["fallbacks"] == sum(rpc["fallback_why"].values())
    assert run.stats["transitions"]["eexit"] == sum(c["fallback"] + c["ocall"]
                                                    for c in run.stats["calls"].values())


@pytest.mark.parametrize("name", ["tcp"])
def test_zero_workers_every_call_falls_back_and_the_script_still_works(native_output, name):
    run = run_shim(None, SCRIPTS / f"libos_{name}.py", env=rpc_env(0))
    assert run.returncode == 0, run.stderr
    assert run.stdout == native_output(f"libos_{name}")
    calls = run.stats["calls"]
    assert all(c["rpc"] == 0 for c in calls.values())
    fallbacks = sum(c["fallback"] for c in calls.values())
    assert fallbacks > 0
    assert run.stats["rpc"]["fallback_why"]["no_worker"] == fallbacks


def test_same_enclave_client_and_server_finish_with_one_worker(native_output):
    rounds = 200
    run = run_shim(None, SCRIPTS / "rpc_client_server.py", rounds,
                   env=rpc_env(1, **ALWAYS_RPC), timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout == native_output("rpc_client_server", rounds)
    assert run.stdout == f"replies {rounds} served {rounds}\n"
    calls = run.stats["calls"]
    # The data moved through the ring; only the waits left the enclave.
    assert calls["sendto"]["rpc"] == calls["sendto"]["count"] > 0
    assert calls["recvfrom"]["rpc"] > 0


def test_exit_with_calls_in_flight_and_a_thread_in_accept_does_not_hang():
    run = run_shim(None, SCRIPTS / "rpc_exit_in_flight.py", env=rpc_env(2), timeout=60)
    assert run.returncode == 3, run.stderr
    assert run.stdout == "exiting with calls in flight\n"
    assert run.stats is not None and run.stats["rpc"]["workers"] == 2
    assert run.stats["calls"]["write"]["count"] >= 2


# -- the transport over the ring, against a hostile host --------------------------------------

@pytest.fixture
def rpc_transport():
    cfg = Config.from_env({}, mode="eleos", memory="native", cost="account",
                          rpc_sleep=str(1 << 62))
    cpu = ModeledCPU(cfg)
    host = Host(cfg)
    host.start()
    a = host.bridge_addresses()
    assert tlib.enclave_rpc_attach(a["rpc_ring"], cfg.rpc_slots) == 0
    submit = int(tffi.cast("uintptr_t", tffi.addressof(tlib, "enclave_rpc")))
    t = Transport("rpc", Bridge(a["dispatch"], a["alloc"], a["free"], cpu.charge_fn,
                                cpu.pollute_fn, rpc_submit=submit, rpc_ring=a["rpc_ring"]),
                  rpc_spin=1 << 40)
    t.reset_counts()
    yield t, host.rpc
    host.stop()
    tlib.enclave_rpc_detach(a["rpc_ring"])


@pytest.mark.parametrize("kind, value", [("state", 9), ("out_len", 1), ("ret", -5000), ("seq", 3)])
def test_a_corrupted_rpc_slot_raises_iago_error_in_the_transport(rpc_transport, kind, value):
    transport, rpc = rpc_transport
    r, w = os.pipe()
    try:
        os.write(w, b"abcdef")
        assert transport.call(abi.OP_READ, r, 3, outcap=3).out == b"abc"     # honest first
        rpc.corrupt_next(kind, value)
        with pytest.raises(IagoError):
            transport.call(abi.OP_READ, r, 3, outcap=3)
        assert transport.call(abi.OP_WRITE, w, inbuf=b"z").ret == 1         # honest again
    finally:
        os.close(r)
        os.close(w)
    counts = transport.counts()
    assert counts["read"]["rpc"] == 1 and counts["write"]["rpc"] == 1


def test_a_wait_that_finds_an_fd_ready_makes_no_exit_nor_does_one_that_blocks(native_output):
    run = run_shim(None, SCRIPTS / "libos_waits.py", env=rpc_env(1, **ALWAYS_RPC))
    assert run.returncode == 0, run.stderr
    assert run.stdout == native_output("libos_waits")
    calls = run.stats["calls"]
    # ELEOS_RPC_WAIT=spin (default): the ready selector wait is one ring call; the idle one
    # a ring check that found nothing, then (a second crossing) the wait in place of Eleos's
    # spin, no exit
    assert (calls["epoll_wait"]["rpc"], calls["epoll_wait"]["ocall"]) == (3, 0)
    # select and poll each found the fd ready through the ring
    assert (calls["poll"]["rpc"], calls["poll"]["ocall"]) == (2, 0)
    assert run.stats["rpc"]["waits_blocked"] == 1
    assert run.stats["rpc"]["processed"] == 4 + sum(c["rpc"] for n, c in calls.items()
                                                     if n not in ("epoll_wait", "poll"))
    assert run.stats["transitions"]["eexit"] == sum(c["fallback"] + c["ocall"]
                                                    for c in calls.values())


def test_with_rpc_wait_ocall_a_wait_that_blocks_exits(native_output):
    run = run_shim(None, SCRIPTS / "libos_waits.py",
                   env=rpc_env(1, ELEOS_RPC_WAIT="ocall", **ALWAYS_RPC))
    assert run.returncode == 0, run.stderr
    assert run.stdout == native_output("libos_waits")
    calls = run.stats["calls"]
    # the idle wait: the LibOS's ring check, then the OCALL wait
    assert (calls["epoll_wait"]["rpc"], calls["epoll_wait"]["ocall"]) == (2, 1)
    assert (calls["poll"]["rpc"], calls["poll"]["ocall"]) == (2, 0)
    assert run.stats["rpc"]["waits_blocked"] == 0


def test_a_blocked_wait_leaves_the_worker_to_other_threads_and_a_signal_cuts_it_short(
        native_output):
    rounds = 100
    run = run_shim(None, SCRIPTS / "rpc_wait_inplace.py", rounds,
                   env=rpc_env(1, **ALWAYS_RPC), timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout == native_output("rpc_wait_inplace", rounds)
    assert run.stdout == "woken by the byte True\ninterrupted by the signal\n"
    calls = run.stats["calls"]
    # the main thread's sends and receives all went through the one worker while the other
    # thread's select blocked; neither wait exited
    assert calls["sendto"]["rpc"] == calls["sendto"]["count"] >= rounds + 1
    assert calls["recvfrom"]["rpc"] == calls["recvfrom"]["count"] >= rounds
    assert calls["poll"]["ocall"] == calls["poll"]["fallback"] == 0
    # the select the signal ended blocked (the waiter's may have found its byte at once)
    assert run.stats["rpc"]["waits_blocked"] >= 1


def test_on_the_ocall_path_a_wait_is_one_exit(native_output):
    run = run_shim("sgx", SCRIPTS / "libos_waits.py", env={"ELEOS_COST": "account"})
    assert run.returncode == 0, run.stderr
    assert run.stdout == native_output("libos_waits")
    calls = run.stats["calls"]
    assert (calls["epoll_wait"]["count"], calls["poll"]["count"]) == (2, 2)

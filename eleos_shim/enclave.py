"""The enclave launcher (eleos_shim/: the only module that knows both halves).

``Enclave(cfg)`` builds the host side (untrusted.Host: OCALL handlers, RPC workers, the EPC
driver or the SUVM backing store), hands the enclave side its bridge (addresses only, as
edger8r's generated code does for SGX SDK enclaves), installs the LibOS interposition, and on
``close()`` stops the workers and collects the stats.  In native mode (direct syscalls, native
memory) nothing is installed: the app runs as under plain ``python``.
"""
from __future__ import annotations

import os
import threading
import time

from eleos_shim.config import Config
from eleos_shim.cpu import ModeledCPU


class Enclave:
    """One modeled enclave in this process.  Use ``start()`` / ``close()`` (or ``with``)."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.cpu = None
        self.host = None
        self.transport = None
        self.libos = None
        self.memory = None          # the EPC driver or the SUVM instance, if any
        self.probe = None           # ELEOS_PROFILE's exit sites (eleos_shim/profile.py)
        self.syscw0 = None          # write syscalls before the app: the unrouted ones are the rest
        self._t0 = time.perf_counter()
        self._closed = False
        self.forked_child = False   # this process is a forked child's enclave (eleos_shim/fork.py)
        self._affinity_before = None
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        return self.cfg.in_enclave

    def start(self, route: bool = False) -> "Enclave":
        """Build and install.  ``route=True`` installs the LibOS even in native mode (direct
        syscalls, routed and counted: the baseline of the benchmarks)."""
        if not (self.active or route):
            return self
        from trusted.syscall import Bridge, Transport
        from untrusted.host import Host

        self.cpu = ModeledCPU(self.cfg)
        self.host = Host(self.cfg)
        self._start_host()
        addrs = self.host.bridge_addresses()
        rpc_submit = 0
        if self.cfg.syscalls == "rpc":
            from trusted._native._enclave import ffi as eff, lib as elib
            rpc_submit = int(eff.cast("uintptr_t", eff.addressof(elib, "enclave_rpc")))
            # The enclave indexes the ring with the slot count of its own configuration,
            # never with the host-writable header's (enclave_rpc.c); unattached = fall back.
            if elib.enclave_rpc_attach(addrs["rpc_ring"], self.cfg.rpc_slots) != 0:
                raise RuntimeError("the enclave could not attach the RPC ring")
        bridge = Bridge(dispatch=addrs["dispatch"], alloc=addrs["alloc"], free=addrs["free"],
                        charge=self.cpu.charge_fn, pollute=self.cpu.pollute_fn,
                        rpc_submit=rpc_submit, rpc_ring=addrs.get("rpc_ring", 0))
        # direct syscalls with an enclave heap still route (and count) the calls, without exits
        self.transport = Transport(self.cfg.syscalls, bridge, rpc_spin=self.cfg.rpc_spin,
                                   rpc_wait=self.cfg.rpc_wait)
        heap_factory = self._heap_factory()
        from eleos_shim import profile
        self.syscw0 = profile.start_counters()
        self.probe = profile.install(self)   # before the LibOS binds the transport's methods
        from eleos_shim.fork import EnclaveForker
        from trusted.libos import LibOS
        self.libos = LibOS(self.transport, heap_factory=heap_factory,
                           fork=EnclaveForker(self))
        self.libos.install()
        return self

    def restart_host_in_child(self) -> None:
        """In the child of a fork (eleos_shim/fork.py): the host's workers anew, placed as at
        start."""
        self._start_host(self.host.after_fork)

    def _start_host(self, start=None) -> None:
        """Start the host's workers; with ELEOS_RPC_CPUS they run on those CPUs and the app's
        threads on the others (threads inherit their creator's CPU mask)."""
        start = start or self.host.start
        workers = self.cfg.rpc_cpus if self.cfg.syscalls == "rpc" else ()
        if workers == "auto":
            # Eleos gives its workers dedicated cores: the last ones, if the app keeps one.
            # (A forked child starts from the CPUs the app had before its workers were placed.)
            mine = sorted(self._affinity_before or os.sched_getaffinity(0))
            n = self.cfg.rpc_workers
            workers = mine[-n:] if 0 < n < len(mine) else ()
        workers = set(workers)
        if not workers:
            start()
            return
        mine = os.sched_getaffinity(0)
        if self._affinity_before is not None:
            mine = self._affinity_before   # a forked child: the app's CPUs and the workers'
        app = (mine - workers) or mine
        self._affinity_before = mine
        os.sched_setaffinity(0, workers)
        try:
            start()
        finally:
            os.sched_setaffinity(0, app)

    def _heap_factory(self):
        if self.cfg.memory == "suvm":
            from eleos_shim import suvm
            self.memory = suvm.install_default(self.cfg, self.cpu)
            return suvm.heap_factory(self.memory)
        if self.cfg.memory == "epc":
            from eleos_shim import epc
            self.memory = epc.install_default(self.cfg, self.cpu)
            return epc.heap_factory(self.memory)
        return None

    def close(self) -> None:
        """Stop the host's workers.  Idempotent; the LibOS stays installed (daemon threads and
        later atexit handlers may still make calls: they fall back to OCALLs)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self.host is not None:
            self.host.stop()

    def leave_domain(self) -> None:
        """At exit, after the stats: give this enclave's frames back to its EPC domain at once
        (ELEOS_EPC_DOMAIN; without it nothing changes).  Were the process to die instead, the
        domain's other members would take the frames back when they next need some."""
        if self.domain is None:
            return
        if self.cfg.memory == "epc":
            self.memory.close()     # stops the driver, returns its frames, leaves the domain
        else:
            self.domain.close()     # the balloon's agent and manager stop, the frames go back

    @property
    def domain(self):
        """This enclave's membership of its EPC domain (ELEOS_EPC_DOMAIN), or None."""
        return getattr(self.memory, "domain", None)

    def uninstall(self) -> None:
        """Take the LibOS out and give this thread back the CPUs it had (in-process use)."""
        if self.probe is not None:
            self.probe.stop()       # the tracer chain out: sys.settrace is CPython's again
        if self.libos is not None:
            self.libos.uninstall()
        if self._affinity_before is not None:
            os.sched_setaffinity(0, self._affinity_before)
            self._affinity_before = None

    def stats(self) -> dict:
        from eleos_shim.profile import extend
        from eleos_shim.stats import collect
        return extend(collect(self, time.perf_counter() - self._t0), self)

    def __enter__(self) -> "Enclave":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
        self.uninstall()

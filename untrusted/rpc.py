"""UNTRUSTED side: the RPC worker pool that serves the enclave's exit-less system calls.

:class:`RpcHost` owns the ring (in untrusted memory; layout in ``eleos_shim/include/eleos_abi.h``)
and ``cfg.rpc_workers`` native pthreads (``untrusted/_native/rpc_workers.c``) that poll it, run
each request through the host's OCALL dispatch and publish the result; they never take the
GIL.  The loader hands :attr:`RpcHost.ring_addr` to the enclave, which attaches it with the
slot count from its own configuration (``trusted/_native/enclave_rpc.c``).

Cost: each worker is a thread that polls, a core while the enclave is busy; after
``cfg.rpc_sleep`` empty polls it sleeps on a futex, so an idle enclave costs almost no CPU,
and the next call pays one wake-up (an exit, charged by the enclave side).
"""
from __future__ import annotations

from eleos_shim import abi
from eleos_shim.config import Config
from untrusted._native._host import ffi, lib

# What the hostile-host fixture can make the workers lie about (rpc_workers.c, enum HOSTILE_*).
HOSTILE_KINDS = {"state": 1, "out_len": 2, "out2_len": 3, "ret": 4, "seq": 5,
                 "buf": 6, "buf_len": 7, "op": 8}

# How long stop() waits for a worker in a call before it leaves it detached (it interrupts
# the call every 20 ms meanwhile): a non-blocking syscall takes microseconds.
STOP_TIMEOUT_S = 1.0


class RpcHost:
    """The ring and its workers.  The ring is unmapped only by :meth:`close`: never by the
    garbage collector, because app threads (daemon threads at interpreter exit included) may
    still be inside an enclave call that reads it."""

    def __init__(self, cfg: Config, dispatch_addr: int):
        self.slots = cfg.rpc_slots
        self.workers = cfg.rpc_workers
        h = lib.rpc_host_new(cfg.rpc_slots, cfg.rpc_workers, cfg.rpc_sleep, dispatch_addr)
        if h == ffi.NULL:
            raise MemoryError(f"RPC ring of {cfg.rpc_slots} slots could not be allocated")
        self._h = h
        self.ring_addr: int = lib.rpc_host_ring(h)
        self._started = self._stopped = False
        self._leaked = 0

    def start(self) -> None:
        """Start the workers (once)."""
        if self._started:
            raise RuntimeError("RPC workers already started")
        rc = lib.rpc_host_start(self._h)
        self._started = True
        if rc < 0:
            self.stop()
            raise OSError(-rc, "could not start the RPC worker threads")

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """Stop and join the workers; returns at once if they are idle.  A worker still in a
        call 20 ms later is in a call that blocks: it is interrupted with a signal (its syscall
        returns EINTR, the result its caller gets) until it returns; one that has not returned
        after ``timeout`` seconds is left detached (the ring then stays mapped).  Enclave calls
        made after this fall back to OCALLs.  Returns how many workers were left detached."""
        if not self._started or self._stopped:
            return 0
        self._stopped = True
        self._leaked = lib.rpc_host_stop(self._h, timeout)
        return self._leaked

    def after_fork(self) -> None:
        """In the child of fork(2): the parent's workers are gone and the ring (private
        memory) is the child's copy; empty it and start this process's own workers on it, at
        the same address, which the enclave has attached (rpc_workers.c)."""
        rc = lib.rpc_host_after_fork(self._h)
        self._started, self._stopped, self._leaked = True, False, 0
        if rc < 0:
            self.stop()
            raise OSError(-rc, "could not start the RPC worker threads in the forked child")

    def close(self) -> None:
        """Stop the workers and unmap the ring (no enclave call may be in flight, and the
        enclave must have detached it)."""
        if self._h is not None:
            self.stop()
            h, self._h = self._h, None
            lib.rpc_host_free(h)

    def __enter__(self) -> "RpcHost":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def per_worker(self) -> list[dict]:
        """For each worker: requests completed, CPU seconds, times it slept."""
        n = max(self.workers, 1)
        processed = ffi.new("uint64_t[]", n)
        cpu = ffi.new("double[]", n)
        sleeps = ffi.new("uint64_t[]", n)
        lib.rpc_host_worker_stats(self._h, processed, cpu, sleeps, n)
        return [{"processed": processed[i], "cpu_s": cpu[i], "sleeps": sleeps[i]}
                for i in range(self.workers)]

    def stats(self) -> dict:
        """``processed`` (by the workers), ``fallbacks`` (calls producers took back to make an
        OCALL, as the ring header counts them), ``worker_cpu_s``, ``workers``, why the calls
        fell back (``fallback_why``: ring_full, no_worker, timeout, workers_asleep), ``wakeups``
        (futex wakes of sleeping workers, each riding on a fallback) and ``sleeps``."""
        per = self.per_worker()
        ring = ffi.new("uint64_t[8]")
        lib.rpc_host_ring_counters(self._h, ring)
        return {
            "processed": sum(w["processed"] for w in per),
            "fallbacks": ring[0],
            "worker_cpu_s": round(sum(w["cpu_s"] for w in per), 6),
            "workers": self.workers,
            "wakeups": ring[1],
            "sleeps": sum(w["sleeps"] for w in per),
            "fallback_why": {why: ring[4 + i] for i, why in enumerate(abi.RPC_WHY)},
        }

    # -- the hostile-host fixture -----------------------------------------------------------
    def corrupt_next(self, kind: str, value: int, count: int = 1) -> None:
        """Make the next ``count`` completions lie (tests): ``state`` publishes ``value`` as the
        slot state, ``out_len``/``out2_len`` claim ``value`` bytes more than the buffer holds,
        ``ret`` returns ``value``, ``seq`` shifts the slot's ticket by ``value``; ``buf``,
        ``buf_len`` and ``op`` leave ``value`` in that field of the slot's request."""
        if lib.rpc_host_corrupt_next(self._h, HOSTILE_KINDS[kind], value, count) < 0:
            raise ValueError(kind)

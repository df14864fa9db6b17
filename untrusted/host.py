"""UNTRUSTED side: the host process's half of the enclave.

Owns the native OCALL handlers (untrusted/_native/host_ocalls.c) and the untrusted allocator
the enclave stages its buffers in, and starts the RPC worker pool when the configuration asks
for exit-less calls.  The loader reads the addresses it publishes (``bridge_addresses``) and
hands them to the trusted half, which never imports this module.
"""
from __future__ import annotations

from eleos_shim.config import Config
from untrusted._native._host import lib


# The lies host_lie_next() can tell (untrusted/_native/host_ocalls.c).
LIES = {"ret": 1, "out_len": 2, "out2_len": 3, "ret_add": 4,
        # rewrites of the request, left in it after the reply
        "buf": 5, "buf2": 6, "buf_len": 7, "op": 8}


class Host:
    """The untrusted runtime: OCALL table, untrusted memory, optional RPC workers."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.rpc = None
        if cfg.syscalls == "rpc":
            from untrusted.rpc import RpcHost
            self.rpc = RpcHost(cfg, lib.host_dispatch_fn())

    def start(self) -> None:
        if self.rpc is not None:
            self.rpc.start()

    def stop(self) -> None:
        if self.rpc is not None:
            self.rpc.stop()

    def after_fork(self) -> None:
        """In the child of fork(2): this process's own RPC workers, on its copy of the ring."""
        if self.rpc is not None:
            self.rpc.after_fork()

    def bridge_addresses(self) -> dict[str, int]:
        out = {"dispatch": lib.host_dispatch_fn(), "alloc": lib.host_alloc_fn(),
               "free": lib.host_free_fn()}
        if self.rpc is not None:
            out["rpc_ring"] = self.rpc.ring_addr
        return out

    @staticmethod
    def lie_next(kind: str, value: int, count: int = 1) -> None:
        """Adversary API: the next ``count`` replies lie (``kind`` from LIES)."""
        lib.host_lie_next(LIES[kind], value, count)

    @staticmethod
    def race_start(addr: int, value: int) -> None:
        """Adversary API: a host thread keeps storing the 8-byte ``value`` at ``addr`` (a field
        of a request the enclave staged in host memory) until :meth:`race_stop`."""
        if lib.host_race_start(addr, value) != 0:
            raise RuntimeError("the racing host thread could not start (one already runs?)")

    @staticmethod
    def race_stores() -> int:
        """How many stores the racing thread has made so far."""
        return lib.host_race_stores()

    @staticmethod
    def race_stop() -> int:
        """Stop and join the racing thread; how many stores it made."""
        return lib.host_race_stop()

    def stats(self) -> dict:
        if self.rpc is None:
            return {"rpc": {"processed": 0, "fallbacks": 0, "worker_cpu_s": 0.0, "workers": 0}}
        return {"rpc": self.rpc.stats()}

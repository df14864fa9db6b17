"""The modeled SGX CPU, Python side (eleos_shim/: knows both halves).

Configures the C cost model (eleos_shim/_native/cpu.c) from the Config: each modeled event's
budget in cycles (the sourced constants of eleos_shim/config.py ``COSTS``, times
ELEOS_TIME_SCALE), whether the top-up is spent (spin) or only counted (account), and how the
indirect cost of an exit is charged.  Reads back, per event, what was budgeted, paid, really
run and spun, and the overruns.  Modeled cycles are TSC cycles; the TSC frequency is measured
once per process (or given by ELEOS_TSC_MHZ) to turn them into time.
"""
from __future__ import annotations

import functools

from eleos_shim._native._cpu import ffi, lib
from eleos_shim.config import Config

# The events of cpu.c, in its order, and the totals kept for each (the stats JSON's keys).
EVENTS = ("ocall", "epc_fault", "indirect", "fork")
EVENT_FIELDS = ("count", "budget_cycles", "paid_cycles", "real_cycles", "spun_cycles", "overruns")
INDIRECT_MODES = {"off": 0, "model": 1, "pollute": 2}


@functools.lru_cache(maxsize=None)
def measured_tsc_hz() -> float:
    """TSC ticks per second, measured against CLOCK_MONOTONIC_RAW over 20 ms."""
    return lib.cpu_measure_tick_hz(0.02)


def costs_struct(cfg: Config, spin: bool | None = None):
    """The C cost table for ``cfg`` (``spin`` overrides cfg.cost)."""
    c = ffi.new("struct cpu_costs *")
    c.eenter, c.eexit = cfg.eenter_cycles, cfg.eexit_cycles
    c.aex, c.eresume = cfg.aex_cycles, cfg.eresume_cycles
    c.ocall, c.epc_fault = cfg.ocall_cycles, cfg.epc_fault_cycles
    c.indirect_window = cfg.indirect_window_cycles
    c.indirect_slowdown = cfg.indirect_slowdown
    c.time_scale = cfg.time_scale
    c.spin = int(cfg.cost == "spin" if spin is None else spin)
    c.indirect = INDIRECT_MODES[cfg.indirect]
    c.pollute_bytes = cfg.pollute_kb * 1024
    c.fork = cfg.fork_cycles
    return c


class ModeledCPU:
    """The enclave's CPU: event budgets, their counters, and the function pointers the trusted
    stubs and the EPC driver call to charge them.  One cost model per process (C globals)."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.tsc_hz = cfg.tsc_mhz * 1e6 if cfg.tsc_mhz else measured_tsc_hz()
        if lib.cpu_configure(costs_struct(cfg)) != 0:
            raise MemoryError(f"pollution buffer of {cfg.pollute_kb} KB could not be allocated")

    @property
    def charge_fn(self) -> int:
        return lib.cpu_charge_fn()

    @property
    def pollute_fn(self) -> int:
        return lib.cpu_pollute_fn()

    @property
    def shift_fn(self) -> int:
        """The EPC driver's: moves a fault's time done for other faults to them (cpu.c)."""
        return lib.cpu_fault_shift_fn()

    @staticmethod
    def charge_fork(real_ticks: int) -> None:
        """A fork of the enclave (eleos_shim/fork.py), in the parent: its budget
        (ELEOS_FORK_CYCLES), ``real_ticks`` of which were really run."""
        lib.cpu_charge_fork(max(0, int(real_ticks)))

    @staticmethod
    def ticks() -> int:
        return lib.cpu_ticks()

    def set_trap_cycles(self, cycles: int, return_cycles: int = 0) -> None:
        """What a trap costs outside the fault handler (measured by the EPC driver): added to
        each fault's real part.  ``return_cycles`` of it come after the handler (the way back
        to the app): the indirect window after the fault opens when they are over."""
        lib.cpu_set_trap_cycles(max(0, int(cycles)))
        lib.cpu_set_trap_return_cycles(max(0, min(int(cycles), int(return_cycles))))

    def counters(self) -> dict:
        raw = ffi.new("uint64_t[6]")
        lib.cpu_counters(raw)
        return {"eenter": raw[0], "eexit": raw[1], "aex": raw[2], "eresume": raw[3],
                "modeled_cycles": raw[4], "modeled_s": raw[4] / self.tsc_hz,
                "pollutions": raw[5]}

    @staticmethod
    def events() -> dict:
        """Per event: count, budget, paid, real and spun cycles (totals), overruns."""
        raw = ffi.new(f"uint64_t[{len(EVENTS) * len(EVENT_FIELDS)}]")
        lib.cpu_events(raw)
        n = len(EVENT_FIELDS)
        return {name: {f: int(raw[e * n + k]) for k, f in enumerate(EVENT_FIELDS)}
                for e, name in enumerate(EVENTS)}

    @staticmethod
    def samples(event: str, n: int = 4096) -> tuple[list[int], list[int]]:
        """The last (up to 4096) events of a kind: (paid cycles, real cycles), unordered."""
        paid, real = ffi.new("uint64_t[]", n), ffi.new("uint64_t[]", n)
        got = lib.cpu_samples(EVENTS.index(event), paid, real, n)
        return list(paid[0:got]), list(real[0:got])

    @staticmethod
    def reset() -> None:
        lib.cpu_reset_counters()

    def cycles_to_ns(self, cycles: float) -> float:
        return cycles / self.tsc_hz * 1e9

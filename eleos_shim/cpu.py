"""The modeled SGX CPU, Python side (eleos_shim/: knows both halves).

Configures the C cost model (eleos_shim/_native/cpu.c) from the Config: the cycles each
transition costs, whether they are spent (spin) or only counted (account), and the pollution
buffer that models an exit's indirect cost.  Modeled cycles are TSC cycles; the TSC frequency
is measured once per process (or given by ELEOS_TSC_MHZ) to turn them into time.
"""
from __future__ import annotations

import functools

from eleos_shim._native._cpu import ffi, lib
from eleos_shim.config import Config

# Where the defaults come from (DESIGN.md section 3): EENTER ~3,300 and EEXIT ~3,800 cycles,
# the Eleos talk's overhead analysis slide; AEX ~ EEXIT and ERESUME ~ EENTER as in the paper's
# model of a page fault (an AEX leaves the enclave like EEXIT, ERESUME enters like EENTER).
SOURCES = {
    "eenter_cycles": "Eleos talk, overhead analysis: 'Enter enclave ~3,300 cycles'",
    "eexit_cycles": "Eleos talk, overhead analysis: 'Exit enclave ~3,800 cycles'",
    "aex_cycles": "modeled as EEXIT (an AEX is an exit)",
    "eresume_cycles": "modeled as EENTER (ERESUME re-enters)",
    "pollute_kb": "calibrated so a slice of app code right after an exit, with the pollution "
                  "it pays, runs 1.5x-5x slower (FlexSC, OSDI'10, as cited by Eleos): 512 KB "
                  "gave 1.9x here; see `eleos-shim calibrate`",
}


@functools.lru_cache(maxsize=None)
def measured_tsc_hz() -> float:
    """TSC ticks per second, measured against CLOCK_MONOTONIC_RAW over 20 ms."""
    return lib.cpu_measure_tick_hz(0.02)


class ModeledCPU:
    """The enclave's CPU: transition costs, their counters, and the function pointers the
    trusted stubs and the EPC driver call to charge them."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.tsc_hz = cfg.tsc_mhz * 1e6 if cfg.tsc_mhz else measured_tsc_hz()
        rc = lib.cpu_configure(cfg.eenter_cycles, cfg.eexit_cycles, cfg.aex_cycles,
                               cfg.eresume_cycles, 1 if cfg.cost == "spin" else 0,
                               cfg.pollute_kb * 1024, 1.0)
        if rc != 0:
            raise MemoryError(f"pollution buffer of {cfg.pollute_kb} KB could not be allocated")

    @property
    def charge_fn(self) -> int:
        return lib.cpu_charge_fn()

    @property
    def pollute_fn(self) -> int:
        return lib.cpu_pollute_fn()

    def counters(self) -> dict:
        raw = ffi.new("uint64_t[6]")
        lib.cpu_counters(raw)
        return {"eenter": raw[0], "eexit": raw[1], "aex": raw[2], "eresume": raw[3],
                "modeled_cycles": raw[4], "modeled_s": raw[4] / self.tsc_hz,
                "pollutions": raw[5]}

    @staticmethod
    def reset() -> None:
        lib.cpu_reset_counters()

    def cycles_to_ns(self, cycles: float) -> float:
        return cycles / self.tsc_hz * 1e9

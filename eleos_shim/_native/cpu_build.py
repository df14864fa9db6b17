"""cffi build of the modeled CPU (eleos_shim._native._cpu).  Run directly to build in place."""
import os
import sys

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
INCLUDE = os.path.join(HERE, "..", "include")

ffi = FFI()
ffi.cdef("""
    uint64_t cpu_ticks(void);
    double cpu_measure_tick_hz(double seconds);
    void cpu_spin_cycles(uint64_t cycles);
    int cpu_configure(uint64_t eenter, uint64_t eexit, uint64_t aex, uint64_t eresume,
                      int spin, uint64_t pollute_bytes, double ticks_per_modeled_cycle);
    void cpu_charge(int t);
    void cpu_pollute(void);
    void cpu_counters(uint64_t out[6]);
    void cpu_reset_counters(void);
    uintptr_t cpu_charge_fn(void);
    uintptr_t cpu_pollute_fn(void);
""")
with open(os.path.join(HERE, "cpu.c")) as f:
    ffi.set_source("eleos_shim._native._cpu", f.read(),
                   include_dirs=[os.path.abspath(INCLUDE)],
                   extra_compile_args=["-O2", "-std=gnu11"])

if __name__ == "__main__":
    ffi.compile(tmpdir=os.path.join(HERE, "..", ".."), verbose="-v" in sys.argv)

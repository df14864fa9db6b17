"""cffi build of the modeled CPU (eleos_shim._native._cpu).  Run directly to build in place."""
import os
import sys

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
INCLUDE = os.path.join(HERE, "..", "include")

ffi = FFI()
ffi.cdef("""
    struct cpu_costs {
        uint64_t eenter, eexit, aex, eresume;
        uint64_t ocall, epc_fault;
        uint64_t indirect_window;
        double indirect_slowdown;
        double time_scale;
        int spin;
        int indirect;
        uint64_t pollute_bytes;
        uint64_t fork;
    };
    uint64_t cpu_ticks(void);
    double cpu_measure_tick_hz(double seconds);
    void cpu_spin_cycles(uint64_t cycles);
    int cpu_configure(const struct cpu_costs *c);
    void cpu_set_trap_cycles(uint64_t cycles);
    void cpu_set_trap_return_cycles(uint64_t cycles);
    uint64_t cpu_trap_cycles(void);
    uint64_t cpu_indirect_budget(uint64_t dt);
    void cpu_charge(int t);
    void cpu_pollute(void);
    void cpu_counters(uint64_t out[6]);
    void cpu_events(uint64_t out[24]);
    void cpu_charge_fork(uint64_t real);
    uint64_t cpu_samples(int e, uint64_t *paid, uint64_t *real, uint64_t n);
    void cpu_reset_counters(void);
    void cpu_test_clock(int on, uint64_t value);
    uintptr_t cpu_charge_fn(void);
    uintptr_t cpu_pollute_fn(void);
    void cpu_fault_shift(int64_t ticks);
    uintptr_t cpu_fault_shift_fn(void);
""")
with open(os.path.join(HERE, "cpu.c")) as f:
    ffi.set_source("eleos_shim._native._cpu", f.read(),
                   include_dirs=[os.path.abspath(INCLUDE)],
                   extra_compile_args=["-O2", "-std=gnu11"])

if __name__ == "__main__":
    ffi.compile(tmpdir=os.path.join(HERE, "..", ".."), verbose="-v" in sys.argv)

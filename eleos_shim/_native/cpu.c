/*
 * cpu.c - the modeled SGX CPU (eleos_shim/, knows both halves).
 *
 * Enclave transitions (EENTER, EEXIT, AEX, ERESUME) are not available without SGX hardware,
 * so their cost is modeled: each one is counted and, in spin mode, its cycles are spent in a
 * busy-wait on the TSC, so real clients see real throughput.  The indirect cost of an exit
 * (TLB flush, cache pollution: 1.5x-5x slower code right after a syscall, FlexSC OSDI'10) is
 * modeled by writing one byte in every cache line of a pollution buffer, which evicts the
 * app's working set so that the code that follows really misses.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "eleos_abi.h"

#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
static inline uint64_t now_ticks(void) { return __rdtsc(); }
static inline void relax(void) { _mm_pause(); }
#else
static inline uint64_t now_ticks(void) {
    struct timespec ts; clock_gettime(CLOCK_MONOTONIC_RAW, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}
static inline void relax(void) { __asm__ __volatile__("" ::: "memory"); }
#endif

static uint64_t cost_cycles[4] = {3300, 3800, 3800, 3300};
static int spend = 1;
static double ticks_per_cycle = 1.0;   /* TSC ticks per modeled cycle (1: cycles are TSC cycles) */
static volatile unsigned char *pollute_buf;
static size_t pollute_len;

static uint64_t n_transitions[4];
static uint64_t n_modeled_cycles;
static uint64_t n_pollutions;

uint64_t cpu_ticks(void) { return now_ticks(); }

double cpu_measure_tick_hz(double seconds)
{
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC_RAW, &a);
    uint64_t t0 = now_ticks();
    do { clock_gettime(CLOCK_MONOTONIC_RAW, &b); }
    while ((double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) * 1e-9 < seconds);
    uint64_t t1 = now_ticks();
    double dt = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) * 1e-9;
    return (double)(t1 - t0) / dt;
}

void cpu_spin_cycles(uint64_t cycles)
{
    uint64_t ticks = (uint64_t)((double)cycles * ticks_per_cycle);
    uint64_t start = now_ticks();
    while (now_ticks() - start < ticks)
        relax();
}

int cpu_configure(uint64_t eenter, uint64_t eexit, uint64_t aex, uint64_t eresume,
                  int spin, uint64_t pollute_bytes, double ticks_per_modeled_cycle)
{
    cost_cycles[ELEOS_T_EENTER] = eenter;
    cost_cycles[ELEOS_T_EEXIT] = eexit;
    cost_cycles[ELEOS_T_AEX] = aex;
    cost_cycles[ELEOS_T_ERESUME] = eresume;
    spend = spin;
    ticks_per_cycle = ticks_per_modeled_cycle > 0 ? ticks_per_modeled_cycle : 1.0;
    if (pollute_bytes != pollute_len) {
        free((void *)pollute_buf);
        pollute_buf = NULL;
        pollute_len = 0;
        if (pollute_bytes) {
            pollute_buf = aligned_alloc(4096, (pollute_bytes + 4095) & ~(uint64_t)4095);
            if (!pollute_buf) return -1;
            memset((void *)pollute_buf, 1, pollute_bytes);
            pollute_len = pollute_bytes;
        }
    }
    return 0;
}

void cpu_charge(int t)
{
    if (t < 0 || t > 3) return;
    __atomic_add_fetch(&n_transitions[t], 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&n_modeled_cycles, cost_cycles[t], __ATOMIC_RELAXED);
    if (spend && cost_cycles[t])
        cpu_spin_cycles(cost_cycles[t]);
}

void cpu_pollute(void)
{
    if (!pollute_len || !spend) return;
    __atomic_add_fetch(&n_pollutions, 1, __ATOMIC_RELAXED);
    for (size_t i = 0; i < pollute_len; i += 64)
        pollute_buf[i]++;
}

void cpu_counters(uint64_t out[6])
{
    for (int i = 0; i < 4; i++) out[i] = __atomic_load_n(&n_transitions[i], __ATOMIC_RELAXED);
    out[4] = __atomic_load_n(&n_modeled_cycles, __ATOMIC_RELAXED);
    out[5] = __atomic_load_n(&n_pollutions, __ATOMIC_RELAXED);
}

void cpu_reset_counters(void)
{
    for (int i = 0; i < 4; i++) __atomic_store_n(&n_transitions[i], 0, __ATOMIC_RELAXED);
    __atomic_store_n(&n_modeled_cycles, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&n_pollutions, 0, __ATOMIC_RELAXED);
}

/* The function pointers handed to the other halves by the loader. */
uintptr_t cpu_charge_fn(void) { return (uintptr_t)&cpu_charge; }
uintptr_t cpu_pollute_fn(void) { return (uintptr_t)&cpu_pollute; }

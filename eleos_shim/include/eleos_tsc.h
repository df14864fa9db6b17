/*
 * eleos_tsc.h - the modeled CPU's clock: the TSC, read by the cost model (cpu.c), the CPU's
 * paging instructions (epcm.c) and the SGX driver model's fault path (epc_driver.c).  Every
 * budget is in TSC cycles, and a read costs a few ns where clock_gettime cost 5% of a fault.
 * Off x86, CLOCK_MONOTONIC_RAW nanoseconds stand in.
 */
#ifndef ELEOS_TSC_H
#define ELEOS_TSC_H

#include <stdint.h>
#include <time.h>

#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
static inline uint64_t eleos_tsc(void) { return __rdtsc(); }
#else
static inline uint64_t eleos_tsc(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_RAW, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}
#endif

#endif

/*
 * epc_driver.h - the SGX driver model's API (untrusted/, host).  Called from untrusted/epc.py
 * through cffi (GIL released); see epc_driver.c for the design.
 */
#ifndef EPC_DRIVER_H
#define EPC_DRIVER_H

#include <stdint.h>

#define TRAP_USERFAULTFD 1
#define TRAP_SIGSEGV 2
#define TRAP_SIGBUS 3               /* userfaultfd's SIGBUS: the faulting thread handles it */
#define RECLAIM_DIRECT 0            /* a fault with no free frame reclaims a cluster itself */
#define RECLAIM_BACKGROUND 1        /* it waits for ksgxswapd */

int epc_driver_start(uint64_t limit_pages, int trap, int nthreads, uintptr_t ewb,
                     uintptr_t eldu, uintptr_t charge, uintptr_t pollute, uintptr_t shift);
void epc_driver_stop(void);
int epc_region_create(uint64_t npages, uint64_t nbytes, uint64_t va_first, int *memfd);
int epc_region_attach(int id, uintptr_t app);
int epc_region_destroy(int id);
int epc_evict(int id, uint64_t index);
int epc_host_load(int id, uint64_t sealed, uint64_t slot_of, uint64_t at);
int epc_region_info(int id, uint64_t out[4]);
int epc_region_states(int id, uint8_t *out, uint64_t n);
void epc_driver_stats(uint64_t out[28]);
void epc_driver_failure(uint64_t out[3]);
void epc_driver_set_spin(uint64_t ns);
void epc_driver_set_tick_hz(double hz);
void epc_driver_set_reclaim(int how);
int64_t epc_driver_measure_trap(int n);
void epc_driver_trap_stats(uint64_t out[5]);
int epc_driver_use_domain(uintptr_t dom);
void epc_driver_forget(void);

#endif

/*
 * suvm.h - SUVM core API (trusted/, inside the enclave).  Used by suvm.c (the core),
 * suvm_region.c (the CPython fast path of SecureMemory / SPointer) and, through cffi, by
 * trusted/suvm.py.  Nothing here is seen by the host.
 *
 * An SUVM instance is a linear space of "SUVM addresses" [0, reserved) split into pages of
 * `page_size` bytes.  A software page table maps each page to a frame of the in-enclave page
 * cache (EPC++) or to its sealed copy in the untrusted backing store at
 * store_base + vpn * page_size.  All functions below are thread-safe and never touch the GIL.
 */
#ifndef ELEOS_SUVM_H
#define ELEOS_SUVM_H

#include <stddef.h>
#include <stdint.h>

/* Results (negative) of the calls below. */
#define SUVM_OK          0
#define SUVM_EINTEGRITY -1   /* a sealed page or sub-page failed its tag: tampered/swapped/replayed */
#define SUVM_ERANGE     -2   /* the access is outside the reserved SUVM space */
#define SUVM_ENOMEM     -3   /* the backing store refused to grow (full) */
#define SUVM_EINVAL     -4   /* bad parameters */
#define SUVM_ECRYPTO    -5   /* libcrypto failed while sealing (should not happen) */

/* Eviction policies (the order of Config's EVICTION_POLICIES). */
#define SUVM_FIFO   0
#define SUVM_LRU    1
#define SUVM_CLOCK  2
#define SUVM_RANDOM 3

/* Indices of the counters suvm_stats() fills. */
#define SUVM_ST_HITS            0
#define SUVM_ST_FAULTS          1
#define SUVM_ST_EVICTIONS       2
#define SUVM_ST_WRITEBACKS      3
#define SUVM_ST_SUBPAGE_READS   4
#define SUVM_ST_INTEGRITY       5
#define SUVM_ST_BYTES_SEALED    6
#define SUVM_ST_BYTES_UNSEALED  7
#define SUVM_ST_CLEAN_DROPS     8
#define SUVM_ST_RESIDENT        9
#define SUVM_ST_FRAMES         10
#define SUVM_ST_STORE_BYTES    11
#define SUVM_ST_COUNT          12

/* The backing store's host-side entry points, handed over by eleos_shim/suvm.py as addresses
 * (see untrusted/_native/store.c).  grow: make the store usable up to `bytes` from its base;
 * returns the bytes now usable, or a negative errno (-ENOMEM beyond its limit).  discard:
 * the enclave no longer needs [off, off+len) (the host may give the memory back). */
typedef int64_t (*suvm_store_grow_fn)(void *store, uint64_t bytes);
typedef void (*suvm_store_discard_fn)(void *store, uint64_t off, uint64_t len);

typedef struct suvm suvm_t;

suvm_t *suvm_new(uint64_t cache_bytes, uint32_t page_size, uint32_t subpage, int policy,
                 uintptr_t store, uintptr_t store_base, uint64_t store_capacity,
                 uintptr_t grow_fn, uintptr_t discard_fn, uintptr_t cpu_charge_fn);
void suvm_destroy(suvm_t *s);
void suvm_set_pollute(suvm_t *s, uintptr_t cpu_pollute_fn);
void suvm_set_overwrite(suvm_t *s, int skip);

int suvm_reserve(suvm_t *s, uint64_t end);             /* make [0, end) usable */
uint64_t suvm_reserved(suvm_t *s);
int suvm_discard(suvm_t *s, uint64_t addr, uint64_t n); /* page-aligned; contents -> zero */

int suvm_read(suvm_t *s, uint64_t addr, void *dst, size_t n);
int suvm_write(suvm_t *s, uint64_t addr, const void *src, size_t n);
int suvm_fill(suvm_t *s, uint64_t addr, int byte, size_t n);
int suvm_move(suvm_t *s, uint64_t dst, uint64_t src, size_t n);
int suvm_compare(suvm_t *s, uint64_t addr, const void *buf, size_t n, int *result); /* memcmp sign */

/* The fast path: copy as much of the access as lies in resident pages, starting at addr,
 * without taking a lock or faulting.  Returns the bytes done (stops at the first miss). */
size_t suvm_copy_resident(suvm_t *s, uint64_t addr, void *buf, size_t n, int write);

int suvm_flush(suvm_t *s);       /* write back every dirty resident page (they stay resident) */
int suvm_evict_all(suvm_t *s);   /* write back dirty pages and empty the page cache */
void suvm_stats(suvm_t *s, uint64_t out[SUVM_ST_COUNT]);
/* Ballooning: use n frames of the page cache (clamped to [4, configured]); returns it. */
uint32_t suvm_resize(suvm_t *s, uint32_t n);
uint32_t suvm_cache_frames(suvm_t *s);
void suvm_reset_stats(suvm_t *s);

/* For the benchmarks: n accesses of `item` bytes at SUVM addresses offsets[i] (read, or
 * write when write != 0), through the same path as the app.  Returns 0 or an error. */
int suvm_bench_access(suvm_t *s, const uint64_t *offsets, size_t n, size_t item, int write);
/* The same, access i a write if writes[i] != 0. */
int suvm_bench_mix(suvm_t *s, const uint64_t *offsets, const uint8_t *writes, size_t n, size_t item);

/* The yardstick of the miss cost: open one sealed page `iters` times.  0, or -1. */
int suvm_bench_raw_open(uint32_t page_size, uint64_t iters);

/* Test hooks: the enclave's key, and what it needs to open the stored copy of (vpn, sub)
 * (nonce 12 bytes, AAD 24 bytes, tag 16 bytes).  Return -2 if the page has no stored copy. */
void suvm_test_key(suvm_t *s, uint8_t out[16]);
int suvm_test_half_evict(suvm_t *s, uint64_t addr);
int suvm_test_sealed(suvm_t *s, uint64_t vpn, uint32_t sub, uint8_t nonce[12], uint8_t aad[24],
                     uint8_t tag[16]);

/* The allocator (suvm_heap.c): which SUVM addresses are in use.  Its critical sections are C
 * that never calls back into Python, so a signal handler or finalizer cannot re-enter one. */
typedef struct suvm_heap suvm_heap_t;
suvm_heap_t *suvm_heap_new(suvm_t *s, uint32_t page_size, uint64_t capacity);
/* A zeroed allocation of n bytes (0 counts as 1): *addr its SUVM address, *size what it
 * takes (a chunk of a power of two up to half a page, else whole pages).  SUVM_ENOMEM: *addr
 * is the store size it needed (UINT64_MAX: more than the capacity alone); SUVM_EINVAL: closed. */
int suvm_heap_alloc(suvm_heap_t *h, uint64_t n, uint64_t *addr, uint64_t *size);
/* SUVM_EINVAL: addr is not the start of a live allocation (nothing changes). */
int suvm_heap_free(suvm_heap_t *h, uint64_t addr);
uint64_t suvm_heap_allocated(suvm_heap_t *h);
/* Refuse every later call (before the core is destroyed); waits for the calls under way.
 * 1 for the call that closed it, 0 for any later one. */
int suvm_heap_close(suvm_heap_t *h);
void suvm_heap_free_struct(suvm_heap_t *h);   /* the struct itself (after close) */
/* The core's calls another thread may make while the instance may be closed (the balloon):
 * nothing happens once closed (0 frames; stats -1). */
uint32_t suvm_heap_resize(suvm_heap_t *h, uint32_t frames);
uint32_t suvm_heap_cache_frames(suvm_heap_t *h);
int suvm_heap_stats(suvm_heap_t *h, uint64_t out[SUVM_ST_COUNT]);
/* fork (suvm.c, "fork"): quiesce before fork(2), let go in the parent, re-key in the child */
void suvm_fork_prepare(suvm_t *s);
void suvm_fork_parent(suvm_t *s);
int suvm_fork_child(suvm_t *s);
void suvm_heap_fork_prepare(suvm_heap_t *h);
void suvm_heap_fork_parent(suvm_heap_t *h);
int suvm_heap_fork_child(suvm_heap_t *h);

#endif

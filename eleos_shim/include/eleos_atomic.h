/*
 * eleos_atomic.h - the memory-ordering vocabulary both halves of the RPC ring use.
 *
 * The ring is shared memory written by the enclave (producers) and the host (workers): each
 * side publishes with release stores and reads the other's writes with acquire loads, so a
 * slot's contents are visible before its state says they are there.  One definition, so the
 * two sides cannot drift apart.
 */
#ifndef ELEOS_ATOMIC_H
#define ELEOS_ATOMIC_H

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
static inline void relax(void) { _mm_pause(); }
#else
static inline void relax(void) { __asm__ __volatile__("" ::: "memory"); }
#endif

#define LOAD(p)         __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define LOAD_RELAXED(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define STORE(p, v)     __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define CAS(p, expp, v) __atomic_compare_exchange_n((p), (expp), (v), 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)
#define COUNT(x)        __atomic_add_fetch(&(x), 1, __ATOMIC_RELAXED)

#endif

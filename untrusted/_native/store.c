/*
 * store.c - the SUVM backing store (untrusted/, host memory).
 *
 * The enclave's SUVM keeps its page cache inside the enclave and pages the rest out, sealed,
 * to this store: ordinary host memory that the host can read and rewrite (it is where the
 * adversary API of untrusted/backing_store.py does its flipping, swapping and replaying).
 * Page vpn's ciphertext lives at base + vpn * page_size, so the store keeps no per-page
 * metadata at all: tags, versions and the allocator stay in the enclave.
 *
 * It grows on demand: the whole limit is reserved as address space up front (PROT_NONE,
 * MAP_NORESERVE: costs no memory), and committed (made read-write) in chunks when the enclave
 * asks through store_grow, an OCALL in the model.  Untouched committed pages still cost no
 * memory until the enclave writes a page back.  Beyond the limit store_grow says -ENOMEM.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>

#define STORE_CHUNK (1u << 20)   /* commit 1 MiB at a time: few mprotect calls, little waste */

struct store {
    uint8_t *base;
    uint64_t capacity;
    uint64_t committed;
    pthread_mutex_t lock;
};

uintptr_t store_new(uint64_t capacity)
{
    capacity = (capacity + STORE_CHUNK - 1) / STORE_CHUNK * STORE_CHUNK;
    if (!capacity)
        return 0;
    struct store *st = calloc(1, sizeof *st);
    if (!st)
        return 0;
    void *p = mmap(NULL, capacity, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
        free(st);
        return 0;
    }
    st->base = p;
    st->capacity = capacity;
    pthread_mutex_init(&st->lock, NULL);
    return (uintptr_t)st;
}

void store_destroy(uintptr_t handle)
{
    struct store *st = (struct store *)handle;
    if (!st)
        return;
    munmap(st->base, st->capacity);
    pthread_mutex_destroy(&st->lock);
    free(st);
}

/* The enclave needs [0, bytes) usable.  Returns the bytes now usable, or -ENOMEM. */
int64_t store_grow(void *handle, uint64_t bytes)
{
    struct store *st = handle;
    int64_t rc;
    pthread_mutex_lock(&st->lock);
    if (bytes > st->capacity) {
        rc = -ENOMEM;
    } else if (bytes <= st->committed) {
        rc = (int64_t)st->committed;
    } else {
        uint64_t want = (bytes + STORE_CHUNK - 1) / STORE_CHUNK * STORE_CHUNK;
        if (want > st->capacity)
            want = st->capacity;
        if (mprotect(st->base + st->committed, want - st->committed, PROT_READ | PROT_WRITE) != 0) {
            rc = -errno;
        } else {
            st->committed = want;
            rc = (int64_t)want;
        }
    }
    pthread_mutex_unlock(&st->lock);
    return rc;
}

/* The enclave freed [off, off+len): give the memory back (it reads as zero afterwards). */
void store_discard(void *handle, uint64_t off, uint64_t len)
{
    struct store *st = handle;
    if (off >= st->committed || !len)
        return;
    if (len > st->committed - off)
        len = st->committed - off;
    uint64_t lo = (off + 4095) & ~4095ull, hi = (off + len) & ~4095ull;
    if (hi > lo)
        madvise(st->base + lo, hi - lo, MADV_DONTNEED);
}

/* In the child of a fork(2): the store (MAP_PRIVATE) is the child's own copy; a thread of the
 * parent's may have held its lock at the fork. */
void store_after_fork(uintptr_t handle)
{
    pthread_mutex_init(&((struct store *)handle)->lock, NULL);
}

uintptr_t store_base(uintptr_t handle) { return (uintptr_t)((struct store *)handle)->base; }
uint64_t store_capacity(uintptr_t handle) { return ((struct store *)handle)->capacity; }

uint64_t store_committed(uintptr_t handle)
{
    struct store *st = (struct store *)handle;
    pthread_mutex_lock(&st->lock);
    uint64_t c = st->committed;
    pthread_mutex_unlock(&st->lock);
    return c;
}

uintptr_t store_grow_fn(void) { return (uintptr_t)&store_grow; }
uintptr_t store_discard_fn(void) { return (uintptr_t)&store_discard; }

/* ---- the adversary's racing thread (tests and demos) ----
 *
 * A host that shares memory with the enclave can change it while the enclave works on it.
 * The racer is that host: a native thread, pinned to one CPU, that waits (spinning) until it
 * is armed and then, as fast as it can until it is disarmed, flips `mask` in some bytes of host
 * memory or keeps writing a value of its choosing there.  Armed just before an enclave
 * operation that reads or writes that memory (an ELDU, a write-back), it races the operation
 * on another core, as a hostile host thread would.  Arm returns once the racer is writing,
 * disarm once it has stopped, so the operation between them runs entirely inside the race and
 * the bytes keep their last value afterwards.  Works on any host memory: the SUVM store, the
 * EPC driver's backing store. */
struct racer {
    pthread_t thread;
    _Atomic(volatile uint8_t *) target;
    _Atomic uint8_t mask;
    _Atomic uint32_t count, stride; /* the bytes target + k * stride, k < count */
    _Atomic int set;              /* 1: store `mask` itself (the host writes a value of its own
                                   * choosing), 0: flip the bits of `mask` */
    _Atomic int armed;            /* arm sequence number while armed, 0 when not */
    _Atomic int busy;             /* the arm sequence the racer is flipping for, 0 when idle */
    _Atomic int stop;
    _Atomic uint64_t flips;       /* flips done while armed, since the last arm */
    int seq;
    int cpu;
};

static void *racer_main(void *arg)
{
    struct racer *r = arg;
    if (r->cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(r->cpu, &set);
        (void)pthread_setaffinity_np(pthread_self(), sizeof set, &set);
    }
    while (!r->stop) {
        int armed = r->armed;
        if (!armed) {
            __builtin_ia32_pause();
            continue;
        }
        /* Announce, then re-check (both sequentially consistent): a disarm either sees us
         * busy and waits, or we see it and never write. */
        r->busy = armed;
        if (r->armed == armed) {
            volatile uint8_t *t = r->target;
            uint8_t m = r->mask;
            int set = r->set;
            uint32_t count = r->count, stride = r->stride;
            uint64_t n = 0;
            while (__atomic_load_n(&r->armed, __ATOMIC_RELAXED) == armed) {
                for (uint32_t k = 0; k < count; k++) {
                    if (set)
                        t[(size_t)k * stride] = m;
                    else
                        t[(size_t)k * stride] ^= m;
                }
                n++;
            }
            r->flips = n;
        }
        r->busy = 0;
        while (r->armed == armed && !r->stop)   /* disarmed and re-armed: a new sequence */
            __builtin_ia32_pause();
    }
    return NULL;
}

/* A racer pinned to `cpu` (-1: not pinned).  0 on failure. */
uintptr_t store_racer_new(int cpu)
{
    struct racer *r = calloc(1, sizeof *r);
    if (!r)
        return 0;
    r->cpu = cpu;
    if (pthread_create(&r->thread, NULL, racer_main, r) != 0) {
        free(r);
        return 0;
    }
    return (uintptr_t)r;
}

/* Start flipping the bits of `mask` in the bytes addr + k * stride, k < count (host memory),
 * or, if `set`, keep storing `mask` there; returns once the racer has started. */
void store_racer_arm(uintptr_t handle, uintptr_t addr, uint32_t count, uint32_t stride,
                     uint8_t mask, int set)
{
    struct racer *r = (struct racer *)handle;
    r->target = (volatile uint8_t *)addr;
    r->count = count ? count : 1;
    r->stride = stride;
    r->mask = mask;
    r->set = set;
    r->flips = 0;
    r->seq = r->seq % 1000000 + 1;
    r->armed = r->seq;
    /* Return once the racer is writing: the caller's operation then runs entirely inside the
     * race, however busy the machine is (the racer may wait for its CPU). */
    while (r->busy != r->seq)
        sched_yield();
}

/* Stop flipping; returns once the racer no longer writes, with how many flips it made while
 * armed (0: it never got to run in the window). */
uint64_t store_racer_disarm(uintptr_t handle)
{
    struct racer *r = (struct racer *)handle;
    int seq = r->armed;
    if (!seq)
        return 0;
    r->armed = 0;
    while (r->busy == seq)
        sched_yield();
    return r->flips;
}

void store_racer_free(uintptr_t handle)
{
    struct racer *r = (struct racer *)handle;
    if (!r)
        return;
    store_racer_disarm(handle);
    r->stop = 1;
    pthread_join(r->thread, NULL);
    free(r);
}

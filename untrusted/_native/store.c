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

/*
 * suvm_heap.c - SUVM's allocator: which SUVM addresses are in use (trusted/, inside the enclave).
 *
 * suvm_malloc / suvm_free (and an app's mmap.mmap(-1, n) under ELEOS_MEMORY=suvm) come here.
 * The metadata lives in enclave memory, never in the backing store the host can write.  Small
 * requests (up to half a page) are chunks of per-size-class slabs (one page each, chunks of a
 * power of two from 16 B); larger ones are runs of whole pages, first fit among freed runs
 * (kept sorted and coalesced) or from the high-water mark.  Freeing a run, or a slab's last
 * chunk, discards its pages (they drop out of the cache and the store, and read as zero).
 *
 * Why C and not Python: a Python signal handler, and a finalizer the cyclic GC runs, execute
 * on the main thread between any two bytecodes, so a Python allocator holding its lock could
 * be re-entered by the very thread holding it (an app's handler that builds an mmap, a map
 * freed by its __del__): a plain lock deadlocks, a re-entrant one lets the handler work on
 * half-updated slabs and runs.  Here every critical section is C under a pthread mutex and
 * never calls back into Python, so no handler or finalizer can run inside one: by the time
 * the interpreter can run Python code on this thread again the mutex is released.
 *
 * Lock order: heap->lock, then the core's pt_lock / page stripes (suvm_reserve, suvm_discard);
 * the core never takes heap->lock.  A new chunk is zeroed after the lock is dropped (it is
 * the caller's already); runs need no zeroing, their pages were discarded or never written.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "suvm.h"

#define SMALL_MIN_SHIFT 4   /* 16 B: the smallest chunk keeps a slab's free stack short */

struct slab {
    uint64_t page;
    uint32_t shift;          /* chunk size 1 << shift */
    uint32_t nfree;
    int32_t prev, next;      /* the size class's list of slabs with a free chunk (-1 ends) */
    uint32_t *free;          /* stack of free chunk indices (top = next handed out) */
    uint8_t *used;           /* one byte per chunk: live, so a bad or double free is caught */
};

struct run { uint64_t first, count; };

struct suvm_heap {
    pthread_mutex_t lock;
    /* Held shared by the calls other threads make on the core (the balloon's, below), and
     * exclusive by close: after suvm_heap_close no call is in the core or will enter it. */
    pthread_rwlock_t life;
    suvm_t *s;
    uint32_t page_size, page_shift;
    uint64_t capacity_pages;
    int closed;

    uint64_t top;             /* high-water mark, pages */
    int64_t *page_kind;       /* per page below top: 0 none, n > 0 a run of n starts here,
                               * -(i + 1) page of slab i */
    uint64_t kinds_len;

    struct run *runs;         /* freed runs, sorted by first page, never adjacent */
    uint64_t nruns, runs_cap;

    struct slab *slabs;       /* slots; a free slot has free == NULL */
    uint32_t nslabs, slabs_cap;
    int32_t free_slot;        /* a chain of free slots through .next */
    int32_t partial[32];      /* per shift: first slab with a free chunk */

    uint64_t allocated;       /* bytes handed out (chunk or run sizes) */
};

suvm_heap_t *suvm_heap_new(suvm_t *s, uint32_t page_size, uint64_t capacity)
{
    if (page_size < 2u << SMALL_MIN_SHIFT || (page_size & (page_size - 1)))
        return NULL;
    suvm_heap_t *h = calloc(1, sizeof *h);
    if (!h)
        return NULL;
    pthread_mutex_init(&h->lock, NULL);
    pthread_rwlock_init(&h->life, NULL);
    h->s = s;
    h->page_size = page_size;
    h->page_shift = (uint32_t)__builtin_ctz(page_size);
    h->capacity_pages = capacity >> h->page_shift;
    h->free_slot = -1;
    for (int i = 0; i < 32; i++)
        h->partial[i] = -1;
    return h;
}

static void release_memory(suvm_heap_t *h)
{
    for (uint32_t i = 0; i < h->nslabs; i++) {
        free(h->slabs[i].free);
        free(h->slabs[i].used);
    }
    free(h->slabs);
    free(h->runs);
    free(h->page_kind);
    h->slabs = NULL;
    h->runs = NULL;
    h->page_kind = NULL;
    h->nslabs = 0;
    h->nruns = h->kinds_len = 0;
}

int suvm_heap_close(suvm_heap_t *h)
{
    pthread_rwlock_wrlock(&h->life);
    pthread_mutex_lock(&h->lock);
    int first = !h->closed;
    h->closed = 1;
    h->s = NULL;
    release_memory(h);
    pthread_mutex_unlock(&h->lock);
    pthread_rwlock_unlock(&h->life);
    return first;
}

/* The balloon's calls (trusted/balloon.py, from the host's agent thread): each one whole C
 * call under the shared `life` lock, so the core cannot be destroyed under it and no Python
 * code runs while it is held.  Closed: 0 frames, no stats (returns -1). */
uint32_t suvm_heap_resize(suvm_heap_t *h, uint32_t frames)
{
    pthread_rwlock_rdlock(&h->life);
    uint32_t got = h->closed ? 0 : suvm_resize(h->s, frames);
    pthread_rwlock_unlock(&h->life);
    return got;
}

uint32_t suvm_heap_cache_frames(suvm_heap_t *h)
{
    pthread_rwlock_rdlock(&h->life);
    uint32_t got = h->closed ? 0 : suvm_cache_frames(h->s);
    pthread_rwlock_unlock(&h->life);
    return got;
}

int suvm_heap_stats(suvm_heap_t *h, uint64_t out[SUVM_ST_COUNT])
{
    pthread_rwlock_rdlock(&h->life);
    int rc = h->closed ? -1 : 0;
    if (!rc)
        suvm_stats(h->s, out);
    pthread_rwlock_unlock(&h->life);
    return rc;
}

void suvm_heap_free_struct(suvm_heap_t *h)
{
    if (!h)
        return;
    release_memory(h);
    pthread_rwlock_destroy(&h->life);
    pthread_mutex_destroy(&h->lock);
    free(h);
}

uint64_t suvm_heap_allocated(suvm_heap_t *h)
{
    pthread_mutex_lock(&h->lock);
    uint64_t n = h->allocated;
    pthread_mutex_unlock(&h->lock);
    return n;
}

/* ---- runs of pages ---- */

static int kinds_cover(suvm_heap_t *h, uint64_t pages)
{
    if (pages <= h->kinds_len)
        return 0;
    uint64_t n = h->kinds_len ? h->kinds_len : 256;
    while (n < pages)
        n *= 2;
    int64_t *k = realloc(h->page_kind, n * sizeof *k);
    if (!k)
        return -1;
    memset(k + h->kinds_len, 0, (n - h->kinds_len) * sizeof *k);
    h->page_kind = k;
    h->kinds_len = n;
    return 0;
}

/* First fit among freed runs, else grow the high-water mark (reserving the space in the core,
 * an OCALL when the store must grow).  *need: the store size the request needed, on ENOMEM. */
static int take_pages(suvm_heap_t *h, uint64_t npages, uint64_t *first, uint64_t *need)
{
    for (uint64_t i = 0; i < h->nruns; i++) {
        struct run *r = &h->runs[i];
        if (r->count < npages)
            continue;
        *first = r->first;
        if (r->count == npages) {
            memmove(r, r + 1, (h->nruns - i - 1) * sizeof *r);
            h->nruns--;
        } else {
            r->first += npages;
            r->count -= npages;
        }
        return SUVM_OK;
    }
    if (npages > h->capacity_pages) {
        *need = UINT64_MAX;
        return SUVM_ENOMEM;
    }
    uint64_t end = h->top + npages;
    *need = end << h->page_shift;
    if (end > h->capacity_pages)
        return SUVM_ENOMEM;
    if (kinds_cover(h, end))
        return SUVM_ENOMEM;
    int rc = suvm_reserve(h->s, *need);
    if (rc)
        return rc;
    *first = h->top;
    h->top = end;
    return SUVM_OK;
}

static int give_pages(suvm_heap_t *h, uint64_t first, uint64_t npages)
{
    int rc = suvm_discard(h->s, first << h->page_shift, npages << h->page_shift);
    if (rc)
        return rc;
    /* i: the first run after `first`; coalesce with it and with the one before. */
    uint64_t lo = 0, hi = h->nruns;
    while (lo < hi) {
        uint64_t mid = (lo + hi) / 2;
        if (h->runs[mid].first < first)
            lo = mid + 1;
        else
            hi = mid;
    }
    uint64_t i = lo;
    if (i < h->nruns && h->runs[i].first == first + npages) {
        npages += h->runs[i].count;
        memmove(&h->runs[i], &h->runs[i + 1], (h->nruns - i - 1) * sizeof *h->runs);
        h->nruns--;
    }
    if (i > 0 && h->runs[i - 1].first + h->runs[i - 1].count == first) {
        i--;
        first = h->runs[i].first;
        npages += h->runs[i].count;
    } else {
        if (h->nruns == h->runs_cap) {
            uint64_t cap = h->runs_cap ? h->runs_cap * 2 : 64;
            struct run *r = realloc(h->runs, cap * sizeof *r);
            if (!r)
                return SUVM_ENOMEM;   /* the pages stay discarded and unlisted: a leak, not a fault */
            h->runs = r;
            h->runs_cap = cap;
        }
        memmove(&h->runs[i + 1], &h->runs[i], (h->nruns - i) * sizeof *h->runs);
        h->nruns++;
    }
    h->runs[i].first = first;
    h->runs[i].count = npages;
    if (first + npages == h->top) {   /* the top run goes back to the high-water mark */
        h->top = first;
        h->nruns--;                   /* it is the last run */
    }
    return SUVM_OK;
}

/* ---- slabs ---- */

static void partial_push(suvm_heap_t *h, int32_t i)
{
    struct slab *sl = &h->slabs[i];
    sl->prev = -1;
    sl->next = h->partial[sl->shift];
    if (sl->next >= 0)
        h->slabs[sl->next].prev = i;
    h->partial[sl->shift] = i;
}

static void partial_unlink(suvm_heap_t *h, int32_t i)
{
    struct slab *sl = &h->slabs[i];
    if (sl->prev >= 0)
        h->slabs[sl->prev].next = sl->next;
    else
        h->partial[sl->shift] = sl->next;
    if (sl->next >= 0)
        h->slabs[sl->next].prev = sl->prev;
}

static int new_slab(suvm_heap_t *h, uint32_t shift, uint64_t *need, int32_t *out)
{
    int32_t i = h->free_slot;
    if (i < 0) {
        if (h->nslabs == h->slabs_cap) {
            uint32_t cap = h->slabs_cap ? h->slabs_cap * 2 : 64;
            struct slab *sl = realloc(h->slabs, cap * sizeof *sl);
            if (!sl)
                return SUVM_ENOMEM;
            memset(sl + h->slabs_cap, 0, (cap - h->slabs_cap) * sizeof *sl);
            h->slabs = sl;
            h->slabs_cap = cap;
        }
        i = (int32_t)h->nslabs;
    }
    uint32_t n = h->page_size >> shift;
    uint32_t *stack = malloc(n * sizeof *stack);
    uint8_t *used = calloc(n, 1);
    uint64_t page;
    int rc = (stack && used) ? take_pages(h, 1, &page, need) : SUVM_ENOMEM;
    if (rc) {
        free(stack);
        free(used);
        return rc;
    }
    if (i == h->free_slot)
        h->free_slot = h->slabs[i].next;
    else
        h->nslabs++;
    struct slab *sl = &h->slabs[i];
    for (uint32_t k = 0; k < n; k++)
        stack[k] = n - 1 - k;          /* the lowest chunk is handed out first */
    *sl = (struct slab){.page = page, .shift = shift, .nfree = n, .free = stack, .used = used};
    h->page_kind[page] = -(int64_t)i - 1;
    partial_push(h, i);
    *out = i;
    return SUVM_OK;
}

static void drop_slab(suvm_heap_t *h, int32_t i)
{
    struct slab *sl = &h->slabs[i];
    partial_unlink(h, i);
    h->page_kind[sl->page] = 0;
    give_pages(h, sl->page, 1);
    free(sl->free);
    free(sl->used);
    sl->free = NULL;
    sl->used = NULL;
    sl->next = h->free_slot;
    h->free_slot = i;
}

/* Free the allocation that starts at `addr`, under h->lock. */
static int free_locked(suvm_heap_t *h, uint64_t addr)
{
    uint64_t page = addr >> h->page_shift;
    if (h->closed || page >= h->top)
        return SUVM_EINVAL;
    int64_t kind = h->page_kind[page];
    if (kind > 0) {
        if (addr & (h->page_size - 1))
            return SUVM_EINVAL;              /* inside a run, not its start */
        h->page_kind[page] = 0;
        h->allocated -= (uint64_t)kind << h->page_shift;
        return give_pages(h, page, (uint64_t)kind);
    }
    if (kind == 0)
        return SUVM_EINVAL;
    int32_t i = (int32_t)(-kind - 1);
    struct slab *sl = &h->slabs[i];
    uint64_t off = addr & (h->page_size - 1);
    uint32_t k = (uint32_t)(off >> sl->shift);
    if (off & ((1ull << sl->shift) - 1) || !sl->used[k])
        return SUVM_EINVAL;
    sl->used[k] = 0;
    h->allocated -= 1ull << sl->shift;
    if (!sl->nfree)
        partial_push(h, i);
    sl->free[sl->nfree++] = k;
    if (sl->nfree == h->page_size >> sl->shift)   /* empty: its page goes back */
        drop_slab(h, i);
    return SUVM_OK;
}

static int alloc_locked(suvm_heap_t *h, uint64_t n, uint64_t *addr, uint64_t *size)
{
    uint64_t need = 0;
    int rc;
    if (h->closed)
        return SUVM_EINVAL;
    if (n <= h->page_size / 2) {
        uint32_t shift = SMALL_MIN_SHIFT;
        while ((1ull << shift) < n)
            shift++;
        int32_t i = h->partial[shift];
        if (i < 0 && (rc = new_slab(h, shift, &need, &i)) != SUVM_OK) {
            *addr = need;
            return rc;
        }
        struct slab *sl = &h->slabs[i];
        uint32_t k = sl->free[--sl->nfree];
        sl->used[k] = 1;
        if (!sl->nfree)
            partial_unlink(h, i);
        *addr = (sl->page << h->page_shift) + ((uint64_t)k << shift);
        *size = 1ull << shift;
        h->allocated += *size;
        /* Chunks are reused: zero it.  A failure (an integrity error on its page) gives the
         * chunk back and is reported. */
        if ((rc = suvm_fill(h->s, *addr, 0, *size)) != SUVM_OK)
            free_locked(h, *addr);
        return rc;
    }
    uint64_t npages = (n >> h->page_shift) + ((n & (h->page_size - 1)) != 0);
    uint64_t first;
    if ((rc = take_pages(h, npages, &first, &need)) != SUVM_OK) {
        *addr = need;
        return rc;
    }
    h->page_kind[first] = (int64_t)npages;
    *addr = first << h->page_shift;
    *size = npages << h->page_shift;
    h->allocated += *size;
    return SUVM_OK;
}

/* ---- the API ---- */

int suvm_heap_alloc(suvm_heap_t *h, uint64_t n, uint64_t *addr, uint64_t *size)
{
    pthread_mutex_lock(&h->lock);
    int rc = alloc_locked(h, n ? n : 1, addr, size);
    pthread_mutex_unlock(&h->lock);
    return rc;
}

int suvm_heap_free(suvm_heap_t *h, uint64_t addr)
{
    pthread_mutex_lock(&h->lock);
    int rc = free_locked(h, addr);
    pthread_mutex_unlock(&h->lock);
    return rc;
}

/* fork (eleos_shim/fork.py): the allocator's lock first (its calls take the core's locks
 * under it), then the core's (suvm.c, "fork").  The child's locks are made anew. */
void suvm_heap_fork_prepare(suvm_heap_t *h)
{
    pthread_mutex_lock(&h->lock);
    suvm_fork_prepare(h->s);
}

void suvm_heap_fork_parent(suvm_heap_t *h)
{
    suvm_fork_parent(h->s);
    pthread_mutex_unlock(&h->lock);
}

int suvm_heap_fork_child(suvm_heap_t *h)
{
    pthread_mutex_init(&h->lock, NULL);
    pthread_rwlock_init(&h->life, NULL);
    return suvm_fork_child(h->s);
}

/*
 * suvm.c - SUVM, secure user-space virtual memory: the core (trusted/, inside the enclave).
 *
 * Eleos's second half (EuroSys'17, section 4).  SGX paging costs an enclave exit per fault
 * (AEX + kernel EWB/ELDU + ERESUME, ~40,000 cycles); SUVM instead keeps a software page table
 * and a page cache ("EPC++") inside the enclave and an AES-GCM-sealed backing store in
 * untrusted memory, and handles a miss in the enclave without any exit.  Being software it
 * picks its own page size, eviction policy (fifo, lru, clock, random), writes back only dirty
 * pages, and can read one sub-page straight from the backing store.
 *
 * Trust: the backing store (store_base..) is host memory: the host may read or rewrite it
 * at any time.  So every page written back is sealed with AES-128-GCM under this enclave's
 * key (random, never leaves the enclave) with a fresh nonce; the additional data binds the
 * page number, the sub-page index and a version; the tag and the version stay in the page
 * table, here.  A flipped bit, two swapped pages or an old copy put back (replay) fail the
 * tag check: SUVM_EINTEGRITY, the data is never returned.  Ciphertext is copied into enclave
 * memory before it is opened, so the host cannot change it between the check and the use.
 *
 * Concurrency (no global lock on any path):
 *  - hit: lock-free.  An access pins the frame its PTE names, re-checks that the frame still
 *    holds that page, copies, unpins.  The fast path pins with a per-thread hazard slot (one
 *    locked store), the slow path with the frame's `pins` counter.  A frame is never evicted
 *    while pinned: the evictor claims it by CAS pins 0 -> PIN_EVICT (very negative), which
 *    makes later pinners back off to the slow path, then checks that no hazard names it.
 *  - miss: a striped mutex (by page number) serialises faults on one page; the replacement
 *    structures (free list, fifo/lru list, clock hand) have their own mutex, held only to pick
 *    a victim; sealing and opening run with no lock but the two pages' stripes.  A victim
 *    whose stripe is busy is skipped (trylock), never waited for, so there is no lock cycle.
 *  - lru is exact: every hit moves the page to the front of the list, under the list mutex.
 *    That per-hit cost is why clock exists (see benchmarks/suvm_micro.py).
 * Nonces: 32-bit sub-page index || 64-bit version, where each write-back of a page takes a
 * new version from one 64-bit counter of this instance, so no (key, nonce) pair repeats.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <openssl/rand.h>

#include "eleos_abi.h"
#include "seal.h"
#include "suvm.h"

#define NSTRIPES 1024                 /* page-fault locks: enough that 4..64 threads rarely share one */
#define PT_CHUNK_SHIFT 10              /* page table chunks of 1024 PTEs, allocated as space is reserved */
#define PT_CHUNK (1u << PT_CHUNK_SHIFT)
#define PIN_EVICT (INT32_MIN / 2)      /* pins value of a frame being evicted, loaded, or free */
#define BOUNCE (64 * 1024)             /* per-thread enclave buffer: sub-page reads, write-back seals */
#define HIT_SLOTS 64                   /* per-thread hit counters; thread 64 and up share slot 0 atomically */

struct pte {
    _Atomic int32_t frame;    /* frame in the page cache, or -1 */
    uint32_t sealed;          /* a sealed copy is in the backing store (written under the stripe) */
    uint64_t direct_at;       /* miss clock at the last sub-page direct read (0: never) */
    uint64_t version;         /* version of that copy: part of its nonce and AAD */
    uint8_t *tags;            /* nsub GCM tags of that copy */
};

struct frame_meta {
    _Atomic int32_t pins;
    _Atomic uint8_t dirty;
    _Atomic uint8_t ref;      /* clock's reference bit */
    _Atomic int64_t vpn;      /* page held, or -1 */
    int32_t prev, next;       /* fifo/lru list (under cache_lock) */
    uint8_t listed;
    uint8_t ballooned;        /* given back by suvm_resize: neither free nor holding a page */
};

struct suvm {
    uint32_t page_size, page_shift, subpage, nsub;
    int policy;
    uint32_t nframes;
    _Atomic uint32_t active;          /* frames [0, active) in use; the rest ballooned (suvm_resize) */
    pthread_mutex_t resize_lock;
    uint8_t *frames;                  /* the page cache (EPC++) */
    struct frame_meta *fm;

    pthread_mutex_t cache_lock;       /* free list, fifo/lru list, clock hand */
    int32_t *free_stack;
    uint32_t nfree;
    int32_t head, tail;               /* list: head = most recent (lru) / newest (fifo) */
    uint32_t hand;

    pthread_mutex_t stripes[NSTRIPES];

    pthread_mutex_t pt_lock;          /* growth of the page table */
    struct pte **dir;
    uint64_t dir_len;
    _Atomic uint64_t reserved;        /* bytes of SUVM space usable: [0, reserved) */

    void *store;                      /* the host's backing store */
    uint8_t *store_base;
    uint64_t store_capacity, committed;
    suvm_store_grow_fn grow;
    suvm_store_discard_fn discard;
    eleos_cpu_charge_fn charge;
    eleos_cpu_pollute_fn pollute;     /* opens the indirect window after an exit (cpu.c) */
    int overwrite_skips_open;         /* a write miss over a whole page does not open it */

    uint8_t key[16];
    _Atomic uint64_t seal_counter;
    _Atomic uint64_t miss_clock;      /* +1 per read miss (sub-pages on): ages sub-page reuse */
    _Atomic uint64_t st[SUVM_ST_COUNT];
    /* Hits are counted per thread: an atomic add per hit would be a third locked instruction
     * on the fast path and a cache line all threads fight over. */
    /* And the fast path pins through a per-thread hazard slot (the frame it is copying, or -1)
     * instead of the frame's pin counter: one locked store instead of two locked adds. */
    struct { _Alignas(64) _Atomic uint64_t hits; _Atomic int32_t hazard; } hit_slot[HIT_SLOTS];
};

/* SUVM's own exits (the store's growth, a resize) are OCALLs like the syscall stub's: EEXIT
 * before the host's work, EENTER after, and then, as after every exit, the indirect window
 * opens (cpu.c: the app's code after it runs slower for a while). */
static inline void exit_begin(suvm_t *s)
{
    if (s->charge) s->charge(ELEOS_T_EEXIT);
}

static inline void exit_end(suvm_t *s)
{
    if (s->charge) s->charge(ELEOS_T_EENTER);
    if (s->pollute) s->pollute();
}

#define ST_ADD(s, i, v) atomic_fetch_add_explicit(&(s)->st[i], (v), memory_order_relaxed)

/* Thread slots 1..HIT_SLOTS-1, handed out on a thread's first SUVM access and given back when
 * it exits (pthread key destructor), so servers that start a thread per connection keep the
 * fast path.  A thread that finds none free uses -1: shared atomic counters, still correct. */
static _Atomic int next_thread_slot = 1;          /* slots ever handed out + 1 (for scans) */
static pthread_mutex_t slot_lock = PTHREAD_MUTEX_INITIALIZER;
static int free_slots[HIT_SLOTS], nfree_slots;
static pthread_key_t slot_key;
static pthread_once_t slot_once = PTHREAD_ONCE_INIT;
/* initial-exec: one %fs-relative load instead of a __tls_get_addr call on every hit. */
static __thread int thread_slot __attribute__((tls_model("initial-exec")));   /* 0: unassigned */

static void slot_release(void *v)
{
    int t = (int)(intptr_t)v;
    if (t <= 0)
        return;
    pthread_mutex_lock(&slot_lock);
    free_slots[nfree_slots++] = t;
    pthread_mutex_unlock(&slot_lock);
}

static void slot_key_make(void) { (void)pthread_key_create(&slot_key, slot_release); }

static int __attribute__((noinline)) slot_assign(void)
{
    int t = -1;
    pthread_once(&slot_once, slot_key_make);
    pthread_mutex_lock(&slot_lock);
    if (nfree_slots)
        t = free_slots[--nfree_slots];
    else if (atomic_load(&next_thread_slot) < HIT_SLOTS)
        t = atomic_fetch_add(&next_thread_slot, 1);
    pthread_mutex_unlock(&slot_lock);
    if (t > 0)
        (void)pthread_setspecific(slot_key, (void *)(intptr_t)t);
    thread_slot = t;
    return t;
}

/* This thread's slot (1..HIT_SLOTS-1), or -1 when none is free. */
static inline int my_slot(void)
{
    int t = thread_slot;
    return __builtin_expect(t != 0, 1) ? t : slot_assign();
}

static inline void count_hit(suvm_t *s)
{
    int t = my_slot();
    if (t > 0) {   /* this slot is only ever written by this thread: a plain add is enough */
        _Atomic uint64_t *c = &s->hit_slot[t].hits;
        atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + 1, memory_order_relaxed);
    } else {
        atomic_fetch_add_explicit(&s->hit_slot[0].hits, 1, memory_order_relaxed);
    }
}

static inline struct pte *pte_of(suvm_t *s, uint64_t vpn)
{
    struct pte *chunk = __atomic_load_n(&s->dir[vpn >> PT_CHUNK_SHIFT], __ATOMIC_ACQUIRE);
    return &chunk[vpn & (PT_CHUNK - 1)];
}

static inline pthread_mutex_t *stripe_of(suvm_t *s, uint64_t vpn)
{
    return &s->stripes[(vpn * 0x9E3779B97F4A7C15ull) >> 54 & (NSTRIPES - 1)];
}

static inline uint8_t *frame_ptr(suvm_t *s, int32_t f) { return s->frames + (size_t)f * s->page_size; }

static inline int range_ok(suvm_t *s, uint64_t addr, size_t n)
{
    uint64_t r = atomic_load_explicit(&s->reserved, memory_order_acquire);
    return addr <= r && n <= r - addr;
}

/* ---- replacement structures (all under cache_lock) ---- */

static void list_push_front(suvm_t *s, int32_t f)
{
    struct frame_meta *m = &s->fm[f];
    m->prev = -1;
    m->next = s->head;
    if (s->head >= 0)
        s->fm[s->head].prev = f;
    s->head = f;
    if (s->tail < 0)
        s->tail = f;
    m->listed = 1;
}

static void list_remove(suvm_t *s, int32_t f)
{
    struct frame_meta *m = &s->fm[f];
    if (!m->listed)
        return;
    if (m->prev >= 0) s->fm[m->prev].next = m->next; else s->head = m->next;
    if (m->next >= 0) s->fm[m->next].prev = m->prev; else s->tail = m->prev;
    m->prev = m->next = -1;
    m->listed = 0;
}

static void policy_insert(suvm_t *s, int32_t f)
{
    atomic_store_explicit(&s->fm[f].ref, 1, memory_order_relaxed);
    if (s->policy == SUVM_FIFO || s->policy == SUVM_LRU)
        list_push_front(s, f);
}

static inline void policy_touch(suvm_t *s, int32_t f)
{
    if (s->policy == SUVM_CLOCK) {
        if (!atomic_load_explicit(&s->fm[f].ref, memory_order_relaxed))
            atomic_store_explicit(&s->fm[f].ref, 1, memory_order_relaxed);
    } else if (s->policy == SUVM_LRU) {
        pthread_mutex_lock(&s->cache_lock);
        if (s->fm[f].listed && s->head != f) {
            list_remove(s, f);
            list_push_front(s, f);
        }
        pthread_mutex_unlock(&s->cache_lock);
    }
}

static uint64_t rand_next(void)
{
    static __thread uint64_t x;
    if (!x)
        x = (uint64_t)(uintptr_t)&x ^ (uint64_t)time(NULL) * 0x9E3779B97F4A7C15ull ^ 0x2545F4914F6CDD1Dull;
    x ^= x << 13; x ^= x >> 7; x ^= x << 17;
    return x;
}

/* ---- pinning: the lock-free hit path ---- */

static inline int32_t pin_resident(suvm_t *s, uint64_t vpn)
{
    struct pte *p = pte_of(s, vpn);
    int32_t f = atomic_load_explicit(&p->frame, memory_order_acquire);
    if (f < 0)
        return -1;
    struct frame_meta *m = &s->fm[f];
    int32_t old = atomic_fetch_add(&m->pins, 1);
    if (old < 0 || atomic_load_explicit(&m->vpn, memory_order_acquire) != (int64_t)vpn) {
        atomic_fetch_sub(&m->pins, 1);
        return -1;
    }
    return f;
}

static inline void unpin(suvm_t *s, int32_t f) { atomic_fetch_sub_explicit(&s->fm[f].pins, 1, memory_order_release); }

/* Hazard pinning (the fast path; thread slot t > 0).  Dekker-style with the evictor: the pinner
 * publishes its hazard then reads pins; the evictor claims pins (0 -> PIN_EVICT) then reads
 * every hazard; all sequentially consistent, so at least one of them sees the other and backs
 * off.  The unpin is a release store, so an evictor that sees it also sees the copy's writes. */
static inline int32_t hazard_pin(suvm_t *s, uint64_t vpn, int t)
{
    int32_t f = atomic_load_explicit(&pte_of(s, vpn)->frame, memory_order_acquire);
    if (f < 0)
        return -1;
    atomic_store(&s->hit_slot[t].hazard, f);
    if (atomic_load(&s->fm[f].pins) < 0 ||
        atomic_load_explicit(&s->fm[f].vpn, memory_order_acquire) != (int64_t)vpn) {
        atomic_store_explicit(&s->hit_slot[t].hazard, -1, memory_order_release);
        return -1;
    }
    return f;
}

static inline void hazard_unpin(suvm_t *s, int t)
{
    atomic_store_explicit(&s->hit_slot[t].hazard, -1, memory_order_release);
}

/* After claiming frame f: does a fast-path access still hold it? */
static int hazard_holds(suvm_t *s, int32_t f)
{
    int n = atomic_load(&next_thread_slot);
    if (n > HIT_SLOTS)
        n = HIT_SLOTS;
    for (int t = 1; t < n; t++)
        if (atomic_load(&s->hit_slot[t].hazard) == f)
            return 1;
    return 0;
}

/* Claim frame f for eviction/flush/discard: pins 0 -> PIN_EVICT and no hazard on it. */
static int try_claim(suvm_t *s, int32_t f)
{
    int32_t zero = 0;
    if (!atomic_compare_exchange_strong(&s->fm[f].pins, &zero, PIN_EVICT))
        return 0;
    if (hazard_holds(s, f)) {
        atomic_fetch_sub(&s->fm[f].pins, PIN_EVICT);
        return 0;
    }
    return 1;
}

/* ---- sealing ---- */

static void make_nonce_aad(suvm_t *s, uint64_t vpn, uint32_t sub, uint64_t version,
                           uint8_t nonce[12], uint8_t aad[24])
{
    eleos_nonce(nonce, sub, version);
    for (int i = 0; i < 8; i++) aad[i] = (uint8_t)(vpn >> (8 * i));
    for (int i = 0; i < 8; i++) aad[8 + i] = (uint8_t)(version >> (8 * i));
    for (int i = 0; i < 4; i++) aad[16 + i] = (uint8_t)(sub >> (8 * i));
    for (int i = 0; i < 4; i++) aad[20 + i] = (uint8_t)(s->subpage >> (8 * i));  /* binds the layout */
}

/* This thread's bounce buffer (enclave memory, BOUNCE bytes), freed when the thread exits:
 * servers that start a thread per connection would otherwise leak one per connection. */
static __thread uint8_t *tls_bounce;
static pthread_key_t bounce_key;
static pthread_once_t bounce_once = PTHREAD_ONCE_INIT;

static void bounce_free(void *b) { free(b); }
static void bounce_key_make(void) { (void)pthread_key_create(&bounce_key, bounce_free); }

static uint8_t *bounce_buf(void)
{
    if (!tls_bounce) {
        pthread_once(&bounce_once, bounce_key_make);
        tls_bounce = malloc(BOUNCE);
        if (tls_bounce)
            (void)pthread_setspecific(bounce_key, tls_bounce);
    }
    return tls_bounce;
}

/* Seal page vpn from the enclave frame `frame` (claimed) into the store.  Called with vpn's
 * stripe held.  The page is sealed in enclave memory and only then copied out: AES-GCM
 * computes the tag over the ciphertext it has written, and some implementations read that
 * ciphertext back from `out` to do it (OpenSSL 3's AVX-512 GCM does, for a few blocks), so
 * sealing straight into host memory let a racing host change a byte between the write and the
 * read and get a tag for its own byte.  What the host changes after the copy fails.  `keep`:
 * the frame stays resident (a flush), so seal into this thread's bounce buffer; else (an
 * eviction: the frame's content is dropped) seal it in place. */
static void seal_page(suvm_t *s, uint64_t vpn, struct pte *p, uint8_t *frame, int keep)
{
    uint8_t nonce[12], aad[24];
    uint8_t *sealed = keep ? bounce_buf() : frame;   /* page_size <= BOUNCE (suvm_new checks) */
    if (!p->tags)
        p->tags = malloc((size_t)s->nsub * 16);
    if (!p->tags || !sealed) {
        fprintf(stderr, "eleos suvm: out of enclave memory to write a page back\n");
        abort();
    }
    uint64_t version = atomic_fetch_add(&s->seal_counter, 1) + 1;
    for (uint32_t sub = 0; sub < s->nsub; sub++) {
        make_nonce_aad(s, vpn, sub, version, nonce, aad);
        size_t at = (size_t)sub * s->subpage;
        if (eleos_seal(s->key, nonce, aad, sizeof aad, frame + at, s->subpage, sealed + at,
                       p->tags + (size_t)sub * 16) != 0) {
            /* Losing a dirty page silently would be worse than stopping. */
            fprintf(stderr, "eleos suvm: libcrypto failed to seal a page; stopping\n");
            abort();
        }
    }
    memcpy(s->store_base + vpn * s->page_size, sealed, s->page_size);   /* the copy out */
    p->version = version;
    p->sealed = 1;
    ST_ADD(s, SUVM_ST_BYTES_SEALED, s->page_size);
}

/* Copy sub-pages [first, first+count) of vpn's stored copy into enclave memory `dst` and open
 * them in place.  0, or SUVM_EINTEGRITY.  Called with vpn's stripe held. */
static int open_subpages(suvm_t *s, uint64_t vpn, struct pte *p, uint32_t first, uint32_t count,
                         uint8_t *dst)
{
    uint8_t nonce[12], aad[24];
    size_t len = (size_t)count * s->subpage;
    memcpy(dst, s->store_base + vpn * s->page_size + (size_t)first * s->subpage, len);
    for (uint32_t i = 0; i < count; i++) {
        uint32_t sub = first + i;
        make_nonce_aad(s, vpn, sub, p->version, nonce, aad);
        uint8_t *d = dst + (size_t)i * s->subpage;
        if (eleos_open(s->key, nonce, aad, sizeof aad, d, s->subpage, d, p->tags + (size_t)sub * 16) != 0) {
            memset(dst, 0, len);   /* nothing of a failed page leaks into enclave use */
            ST_ADD(s, SUVM_ST_INTEGRITY, 1);
            return SUVM_EINTEGRITY;
        }
    }
    ST_ADD(s, SUVM_ST_BYTES_UNSEALED, len);
    return SUVM_OK;
}

/* ---- page faults ---- */

/* Put frame f back on the free list; its pins must be PIN_EVICT. */
static void free_frame(suvm_t *s, int32_t f)
{
    atomic_store(&s->fm[f].vpn, -1);
    pthread_mutex_lock(&s->cache_lock);
    list_remove(s, f);
    if ((uint32_t)f < atomic_load(&s->active))
        s->free_stack[s->nfree++] = f;
    else
        s->fm[f].ballooned = 1;               /* the balloon took it while it was in use */
    pthread_mutex_unlock(&s->cache_lock);
}

/* Evict frame f (claimed: pins == PIN_EVICT) holding page v; v's stripe is held. */
static void evict_frame(suvm_t *s, int32_t f, uint64_t v)
{
    struct pte *p = pte_of(s, v);
    atomic_store_explicit(&p->frame, -1, memory_order_release);
    if (atomic_load(&s->fm[f].dirty)) {
        seal_page(s, v, p, frame_ptr(s, f), 0);   /* its content is dropped: sealed in place */
        ST_ADD(s, SUVM_ST_WRITEBACKS, 1);
    } else {
        ST_ADD(s, SUVM_ST_CLEAN_DROPS, 1);   /* clean: the stored copy (or zero) is still right */
    }
    atomic_store(&s->fm[f].dirty, 0);
    atomic_store(&s->fm[f].vpn, -1);
    ST_ADD(s, SUVM_ST_EVICTIONS, 1);
}

/* Next eviction candidate for the policy, or -1 when a round found nothing; *cursor walks. */
static int32_t next_candidate(suvm_t *s, int32_t *cursor, uint32_t *steps)
{
    if (++*steps > 2 * s->nframes + 2)
        return -1;
    switch (s->policy) {
    case SUVM_FIFO:
    case SUVM_LRU: {
        int32_t c = *cursor == -2 ? s->tail : (*cursor >= 0 ? s->fm[*cursor].prev : -1);
        *cursor = c;
        return c;   /* -1 at the head: round over */
    }
    case SUVM_CLOCK:
        for (;;) {
            int32_t c = (int32_t)(s->hand++ % atomic_load_explicit(&s->active, memory_order_relaxed));
            if (atomic_load_explicit(&s->fm[c].ref, memory_order_relaxed)) {
                atomic_store_explicit(&s->fm[c].ref, 0, memory_order_relaxed);
                if (++*steps > 2 * s->nframes + 2)
                    return -1;
                continue;
            }
            return c;
        }
    default:
        return (int32_t)(rand_next() % atomic_load_explicit(&s->active, memory_order_relaxed));
    }
}

/* A frame for a page whose stripe `mine` we hold: free, or a victim evicted (written back if
 * dirty).  Returned claimed (pins == PIN_EVICT).  -1: no victim could be taken this round. */
static int32_t get_frame(suvm_t *s, pthread_mutex_t *mine)
{
    pthread_mutex_lock(&s->cache_lock);
    if (s->nfree) {
        int32_t f = s->free_stack[--s->nfree];
        pthread_mutex_unlock(&s->cache_lock);
        return f;
    }
    int32_t cursor = -2;
    uint32_t steps = 0;
    for (;;) {
        int32_t c = next_candidate(s, &cursor, &steps);
        if (c < 0)
            break;
        if ((uint32_t)c >= atomic_load(&s->active))
            continue;                                  /* being ballooned: not to be reused */
        if (!try_claim(s, c))
            continue;                                  /* pinned by a live access: never evicted */
        int64_t v = atomic_load(&s->fm[c].vpn);
        pthread_mutex_t *theirs = stripe_of(s, (uint64_t)v);
        if (theirs != mine && pthread_mutex_trylock(theirs) != 0) {
            atomic_fetch_sub(&s->fm[c].pins, PIN_EVICT);   /* someone is faulting it: skip */
            continue;
        }
        list_remove(s, c);
        pthread_mutex_unlock(&s->cache_lock);
        evict_frame(s, c, (uint64_t)v);
        if (theirs != mine)
            pthread_mutex_unlock(theirs);
        return c;
    }
    pthread_mutex_unlock(&s->cache_lock);
    return -1;
}

/* Bring vpn in.  Returns its frame pinned by the caller (>= 0), or a SUVM_E* error.
 * `whole` (may be NULL): the access overwrites the whole page (op 1: copy from whole, op 2:
 * fill with whole[0]), so the stored copy need not be opened: the new content goes into the
 * frame before the page is published, and *done is set. */
static int32_t fault_in(suvm_t *s, uint64_t vpn, const uint8_t *whole, int op, int *done)
{
    pthread_mutex_t *mine = stripe_of(s, vpn);
    struct pte *p = pte_of(s, vpn);
    for (;;) {
        int32_t f = pin_resident(s, vpn);
        if (f >= 0) {
            count_hit(s);
            return f;
        }
        pthread_mutex_lock(mine);
        if (atomic_load_explicit(&p->frame, memory_order_acquire) >= 0) {
            pthread_mutex_unlock(mine);   /* another thread brought it in meanwhile */
            continue;
        }
        f = get_frame(s, mine);
        if (f < 0) {
            /* Every victim is pinned or mid-fault: step back (drop our stripe so nobody waits
             * on us) and retry; pins last one copy, so this ends. */
            pthread_mutex_unlock(mine);
            sched_yield();
            continue;
        }
        uint8_t *dst = frame_ptr(s, f);
        p->direct_at = 0;
        int dirty = 0;
        if (whole) {
            if (op == 1) memcpy(dst, whole, s->page_size); else memset(dst, whole[0], s->page_size);
            dirty = 1;
            *done = 1;
        } else if (p->sealed) {
            if (open_subpages(s, vpn, p, 0, s->nsub, dst) != SUVM_OK) {
                free_frame(s, f);
                pthread_mutex_unlock(mine);
                return SUVM_EINTEGRITY;
            }
        } else {
            memset(dst, 0, s->page_size);   /* never written back: zero, as fresh memory */
        }
        struct frame_meta *m = &s->fm[f];
        atomic_store(&m->dirty, dirty);
        atomic_store_explicit(&m->vpn, (int64_t)vpn, memory_order_release);
        pthread_mutex_lock(&s->cache_lock);
        policy_insert(s, f);
        pthread_mutex_unlock(&s->cache_lock);
        atomic_fetch_add(&m->pins, 1 - PIN_EVICT);   /* claimed -> pinned once, by us */
        atomic_store_explicit(&p->frame, f, memory_order_release);
        pthread_mutex_unlock(mine);
        ST_ADD(s, SUVM_ST_FAULTS, 1);
        return f;
    }
}

/* Sub-page direct read: vpn is not resident, has a sealed copy, and the read covers at most
 * half of its sub-pages: open only those, straight from the store, without a frame.
 * Admission: a direct read does not bring the page in, so a page that is read again soon
 * (within one cache's worth of misses: it would have been a hit had it been cached) is
 * faulted in instead; pages with no such reuse (random small reads over a large space) keep
 * costing a sub-page instead of a page and an eviction.
 * Returns 1 if done, 0 if the case does not apply (caller faults the page in), or an error. */
static int subpage_read(suvm_t *s, uint64_t vpn, uint32_t off, uint8_t *dst, size_t n)
{
    uint32_t first = off / s->subpage, last = (uint32_t)((off + n - 1) / s->subpage);
    uint32_t count = last - first + 1;
    if (2 * count > s->nsub || (size_t)count * s->subpage > BOUNCE)
        return 0;
    struct pte *p = pte_of(s, vpn);
    pthread_mutex_t *mine = stripe_of(s, vpn);
    pthread_mutex_lock(mine);
    uint64_t now = atomic_fetch_add_explicit(&s->miss_clock, 1, memory_order_relaxed) + 1;
    if (!p->sealed || atomic_load_explicit(&p->frame, memory_order_acquire) >= 0 ||
        (p->direct_at && now - p->direct_at < s->nframes)) {
        pthread_mutex_unlock(mine);
        return 0;
    }
    p->direct_at = now;
    uint8_t *tmp = bounce_buf();
    if (!tmp) {
        pthread_mutex_unlock(mine);
        return 0;
    }
    int rc = open_subpages(s, vpn, p, first, count, tmp);
    pthread_mutex_unlock(mine);
    if (rc != SUVM_OK)
        return rc;
    memcpy(dst, tmp + (off - (size_t)first * s->subpage), n);
    ST_ADD(s, SUVM_ST_SUBPAGE_READS, count);
    return 1;
}

/* One access within one page.  op: 0 read into buf, 1 write from buf, 2 fill with *buf. */
static int access_page(suvm_t *s, uint64_t vpn, uint32_t off, uint8_t *buf, size_t n, int op)
{
    int32_t f = pin_resident(s, vpn);
    if (f >= 0) {
        count_hit(s);
    } else {
        if (op == 0 && s->nsub > 1) {
            int rc = subpage_read(s, vpn, off, buf, n);
            if (rc != 0)
                return rc < 0 ? rc : SUVM_OK;
        }
        int done = 0;
        /* Eleos' SUVM opens the stored copy on every miss, a write's too (its hint_write only
         * marks the page dirty); skipping that for a write over the whole page is an option. */
        int whole = s->overwrite_skips_open && op != 0 && off == 0 && n == s->page_size;
        f = fault_in(s, vpn, whole ? buf : NULL, op, &done);
        if (f < 0)
            return f;
        if (done) {
            policy_touch(s, f);
            unpin(s, f);
            return SUVM_OK;
        }
    }
    policy_touch(s, f);
    uint8_t *page = frame_ptr(s, f) + off;
    if (op == 0) {
        memcpy(buf, page, n);
    } else {
        if (op == 1) memcpy(page, buf, n); else memset(page, buf[0], n);
        if (!atomic_load_explicit(&s->fm[f].dirty, memory_order_relaxed))
            atomic_store_explicit(&s->fm[f].dirty, 1, memory_order_relaxed);
    }
    unpin(s, f);
    return SUVM_OK;
}

static int access_range(suvm_t *s, uint64_t addr, uint8_t *buf, size_t n, int op)
{
    if (!range_ok(s, addr, n))
        return SUVM_ERANGE;
    size_t done = 0;
    while (done < n) {
        uint64_t a = addr + done;
        uint32_t off = (uint32_t)(a & (s->page_size - 1));
        size_t chunk = s->page_size - off;
        if (chunk > n - done)
            chunk = n - done;
        int rc = access_page(s, a >> s->page_shift, off, op == 2 ? buf : buf + done, chunk, op);
        if (rc != SUVM_OK)
            return rc;
        done += chunk;
    }
    return SUVM_OK;
}

int suvm_read(suvm_t *s, uint64_t addr, void *dst, size_t n) { return access_range(s, addr, dst, n, 0); }
int suvm_write(suvm_t *s, uint64_t addr, const void *src, size_t n) { return access_range(s, addr, (uint8_t *)src, n, 1); }

int suvm_fill(suvm_t *s, uint64_t addr, int byte, size_t n)
{
    uint8_t b = (uint8_t)byte;
    return access_range(s, addr, &b, n, 2);
}

size_t suvm_copy_resident(suvm_t *s, uint64_t addr, void *buf, size_t n, int write)
{
    if (!range_ok(s, addr, n))
        return 0;
    size_t done = 0;
    while (done < n) {
        uint64_t a = addr + done;
        uint32_t off = (uint32_t)(a & (s->page_size - 1));
        size_t chunk = s->page_size - off;
        if (chunk > n - done)
            chunk = n - done;
        int t = my_slot();
        int32_t f = t > 0 ? hazard_pin(s, a >> s->page_shift, t) : pin_resident(s, a >> s->page_shift);
        if (f < 0)
            break;
        count_hit(s);
        policy_touch(s, f);
        uint8_t *page = frame_ptr(s, f) + off;
        if (write) {
            memcpy(page, (uint8_t *)buf + done, chunk);
            if (!atomic_load_explicit(&s->fm[f].dirty, memory_order_relaxed))
                atomic_store_explicit(&s->fm[f].dirty, 1, memory_order_relaxed);
        } else {
            memcpy((uint8_t *)buf + done, page, chunk);
        }
        if (t > 0) hazard_unpin(s, t); else unpin(s, f);
        done += chunk;
    }
    return done;
}

int suvm_move(suvm_t *s, uint64_t dst, uint64_t src, size_t n)
{
    if (!range_ok(s, dst, n) || !range_ok(s, src, n))
        return SUVM_ERANGE;
    uint8_t *tmp = malloc(n < BOUNCE ? (n ? n : 1) : BOUNCE);
    if (!tmp)
        return SUVM_EINVAL;
    int rc = SUVM_OK;
    int backward = dst > src && dst < src + n;   /* overlap: copy from the end, as memmove */
    size_t done = 0;
    while (done < n && rc == SUVM_OK) {
        size_t chunk = n - done < BOUNCE ? n - done : BOUNCE;
        uint64_t at = backward ? n - done - chunk : done;
        rc = suvm_read(s, src + at, tmp, chunk);
        if (rc == SUVM_OK)
            rc = suvm_write(s, dst + at, tmp, chunk);
        done += chunk;
    }
    free(tmp);
    return rc;
}

int suvm_compare(suvm_t *s, uint64_t addr, const void *buf, size_t n, int *result)
{
    uint8_t tmp[4096];
    *result = 0;
    for (size_t done = 0; done < n; ) {
        size_t chunk = n - done < sizeof tmp ? n - done : sizeof tmp;
        int rc = suvm_read(s, addr + done, tmp, chunk);
        if (rc != SUVM_OK)
            return rc;
        int c = memcmp(tmp, (const uint8_t *)buf + done, chunk);
        if (c) {
            *result = c < 0 ? -1 : 1;
            return SUVM_OK;
        }
        done += chunk;
    }
    return SUVM_OK;
}

/* ---- space management ---- */

int suvm_reserve(suvm_t *s, uint64_t end)
{
    int rc = SUVM_OK;
    pthread_mutex_lock(&s->pt_lock);
    if (end <= atomic_load(&s->reserved))
        goto out;
    uint64_t pages = (end + s->page_size - 1) >> s->page_shift;
    uint64_t bytes = pages << s->page_shift;
    if (bytes > s->store_capacity || (pages + PT_CHUNK - 1) >> PT_CHUNK_SHIFT > s->dir_len) {
        rc = SUVM_ENOMEM;
        goto out;
    }
    if (bytes > s->committed) {
        /* Asking the host for memory is an OCALL: an exit and a re-entry. */
        exit_begin(s);
        int64_t got = s->grow(s->store, bytes);
        exit_end(s);
        if (got < 0 || (uint64_t)got < bytes) {   /* refused, or an impossible answer */
            rc = SUVM_ENOMEM;
            goto out;
        }
        s->committed = bytes;                     /* trust no more than we asked for */
    }
    for (uint64_t c = 0; c < (pages + PT_CHUNK - 1) >> PT_CHUNK_SHIFT; c++) {
        if (s->dir[c])
            continue;
        struct pte *chunk = calloc(PT_CHUNK, sizeof *chunk);
        if (!chunk) {
            rc = SUVM_ENOMEM;
            goto out;
        }
        for (uint32_t i = 0; i < PT_CHUNK; i++)
            atomic_init(&chunk[i].frame, -1);
        __atomic_store_n(&s->dir[c], chunk, __ATOMIC_RELEASE);
    }
    atomic_store_explicit(&s->reserved, bytes, memory_order_release);
out:
    pthread_mutex_unlock(&s->pt_lock);
    return rc;
}

uint64_t suvm_reserved(suvm_t *s) { return atomic_load(&s->reserved); }

int suvm_discard(suvm_t *s, uint64_t addr, uint64_t n)
{
    if ((addr | n) & (s->page_size - 1))
        return SUVM_EINVAL;
    if (!range_ok(s, addr, n))
        return SUVM_ERANGE;
    for (uint64_t vpn = addr >> s->page_shift; vpn < (addr + n) >> s->page_shift; vpn++) {
        struct pte *p = pte_of(s, vpn);
        pthread_mutex_t *mine = stripe_of(s, vpn);
        pthread_mutex_lock(mine);
        int32_t f = atomic_load(&p->frame);
        if (f >= 0) {
            while (!try_claim(s, f))
                sched_yield();   /* a racing access to freed memory: let it finish its copy */
            atomic_store(&p->frame, -1);
            atomic_store(&s->fm[f].dirty, 0);
            free_frame(s, f);
        }
        p->sealed = 0;           /* the stored copy is garbage now; the page reads as zero */
        p->direct_at = 0;
        pthread_mutex_unlock(mine);
    }
    if (n && s->discard)
        s->discard(s->store, addr, n);
    return SUVM_OK;
}

/* Write back (and, if `evict`, drop) every resident page. */
static int sweep(suvm_t *s, int evict)
{
    for (uint32_t f = 0; f < s->nframes; f++) {
        int64_t v = atomic_load(&s->fm[f].vpn);
        if (v < 0)
            continue;
        pthread_mutex_t *st = stripe_of(s, (uint64_t)v);
        pthread_mutex_lock(st);
        struct pte *p = pte_of(s, (uint64_t)v);
        if (atomic_load(&p->frame) != (int32_t)f) {   /* evicted meanwhile */
            pthread_mutex_unlock(st);
            continue;
        }
        while (!try_claim(s, (int32_t)f))
            sched_yield();
        if (evict) {
            evict_frame(s, (int32_t)f, (uint64_t)v);
            free_frame(s, (int32_t)f);
        } else {
            if (atomic_load(&s->fm[f].dirty)) {
                seal_page(s, (uint64_t)v, p, frame_ptr(s, (int32_t)f), 1);
                atomic_store(&s->fm[f].dirty, 0);
                ST_ADD(s, SUVM_ST_WRITEBACKS, 1);
            }
            atomic_fetch_sub(&s->fm[f].pins, PIN_EVICT);
        }
        pthread_mutex_unlock(st);
    }
    return SUVM_OK;
}

int suvm_flush(suvm_t *s) { return sweep(s, 0); }
int suvm_evict_all(suvm_t *s) { return sweep(s, 1); }

/* ---- life cycle, stats, hooks ---- */

suvm_t *suvm_new(uint64_t cache_bytes, uint32_t page_size, uint32_t subpage, int policy,
                 uintptr_t store, uintptr_t store_base, uint64_t store_capacity,
                 uintptr_t grow_fn, uintptr_t discard_fn, uintptr_t cpu_charge_fn)
{
    if (page_size < 1024 || page_size > 65536 || (page_size & (page_size - 1)))
        return NULL;
    if (subpage == 0)
        subpage = page_size;
    if (subpage > page_size || (subpage & (subpage - 1)) || subpage < 64)
        return NULL;
    if (policy < SUVM_FIFO || policy > SUVM_RANDOM || !grow_fn || !store_base)
        return NULL;
    uint64_t nframes = cache_bytes / page_size;
    if (nframes < 4 || nframes > INT32_MAX / 2)
        return NULL;
    suvm_t *s = aligned_alloc(64, (sizeof *s + 63) / 64 * 64);   /* hit slots on their own lines */
    if (!s)
        return NULL;
    memset(s, 0, sizeof *s);
    s->page_size = page_size;
    s->page_shift = (uint32_t)__builtin_ctz(page_size);
    s->subpage = subpage;
    s->nsub = page_size / subpage;
    s->policy = policy;
    s->nframes = (uint32_t)nframes;
    atomic_init(&s->active, (uint32_t)nframes);
    pthread_mutex_init(&s->resize_lock, NULL);
    s->frames = aligned_alloc(4096, ((size_t)nframes * page_size + 4095) & ~(size_t)4095);
    s->fm = calloc(nframes, sizeof *s->fm);
    s->free_stack = malloc(nframes * sizeof(int32_t));
    s->store = (void *)store;
    s->store_base = (uint8_t *)store_base;
    s->store_capacity = store_capacity / page_size * page_size;
    s->dir_len = ((s->store_capacity >> s->page_shift) + PT_CHUNK - 1) >> PT_CHUNK_SHIFT;
    s->dir = calloc(s->dir_len ? s->dir_len : 1, sizeof *s->dir);
    s->grow = (suvm_store_grow_fn)grow_fn;
    s->discard = (suvm_store_discard_fn)discard_fn;
    s->charge = (eleos_cpu_charge_fn)cpu_charge_fn;
    if (!s->frames || !s->fm || !s->free_stack || !s->dir || RAND_bytes(s->key, sizeof s->key) != 1) {
        suvm_destroy(s);
        return NULL;
    }
    memset(s->frames, 0, (size_t)nframes * page_size);   /* commit the EPC++ now, as an enclave would */
    pthread_mutex_init(&s->cache_lock, NULL);
    pthread_mutex_init(&s->pt_lock, NULL);
    for (int i = 0; i < NSTRIPES; i++)
        pthread_mutex_init(&s->stripes[i], NULL);
    s->head = s->tail = -1;
    for (int t = 0; t < HIT_SLOTS; t++)
        atomic_init(&s->hit_slot[t].hazard, -1);
    for (uint32_t f = 0; f < nframes; f++) {
        atomic_init(&s->fm[f].pins, PIN_EVICT);
        atomic_init(&s->fm[f].vpn, -1);
        s->fm[f].prev = s->fm[f].next = -1;
        s->free_stack[s->nfree++] = (int32_t)(nframes - 1 - f);
    }
    return s;
}

void suvm_destroy(suvm_t *s)
{
    if (!s)
        return;
    if (s->dir) {
        for (uint64_t c = 0; c < s->dir_len; c++) {
            if (!s->dir[c])
                continue;
            for (uint32_t i = 0; i < PT_CHUNK; i++)
                free(s->dir[c][i].tags);
            free(s->dir[c]);
        }
    }
    if (s->frames)
        OPENSSL_cleanse(s->frames, (size_t)s->nframes * s->page_size);
    OPENSSL_cleanse(s->key, sizeof s->key);
    free(s->dir);
    free(s->frames);
    free(s->fm);
    free(s->free_stack);
    free(s);
}

/* ---- fork (eleos_shim/fork.py) ----
 *
 * SUVM's memory is all private (the page cache and page table in enclave memory, the sealed
 * pages in a MAP_PRIVATE store), so a fork(2) gives the child a copy of it all.  What must not
 * be copied is an operation half done: prepare takes every lock a page's state changes under,
 * in the order the code takes them (resize, page table, every stripe, the cache), so at the
 * fork no fault, eviction, write-back or resize is in progress; the parent then just lets go.
 * The child is a new enclave: a page it seals must never pass for one of the parent's in the
 * same store slot (the host holds both stores), so it draws a key of its own and re-seals
 * every stored page under it, opening each with the parent's key first (a page the host
 * tampered with before the fork fails here); resident pages are marked dirty, so that their
 * eviction seals them under the new key too.  Pins and hazards of the parent's other threads
 * (gone in the child) are dropped. */
void suvm_fork_prepare(suvm_t *s)
{
    pthread_mutex_lock(&s->resize_lock);
    pthread_mutex_lock(&s->pt_lock);
    for (int i = 0; i < NSTRIPES; i++)
        pthread_mutex_lock(&s->stripes[i]);
    pthread_mutex_lock(&s->cache_lock);
    pthread_mutex_lock(&slot_lock);
}

void suvm_fork_parent(suvm_t *s)
{
    pthread_mutex_unlock(&slot_lock);
    pthread_mutex_unlock(&s->cache_lock);
    for (int i = NSTRIPES - 1; i >= 0; i--)
        pthread_mutex_unlock(&s->stripes[i]);
    pthread_mutex_unlock(&s->pt_lock);
    pthread_mutex_unlock(&s->resize_lock);
}

int suvm_fork_child(suvm_t *s)
{
    pthread_mutex_init(&slot_lock, NULL);
    pthread_mutex_init(&s->cache_lock, NULL);
    for (int i = 0; i < NSTRIPES; i++)
        pthread_mutex_init(&s->stripes[i], NULL);
    pthread_mutex_init(&s->pt_lock, NULL);
    pthread_mutex_init(&s->resize_lock, NULL);
    /* Thread slots: only this thread's survives. */
    int mine = thread_slot, top = atomic_load(&next_thread_slot);
    nfree_slots = 0;
    for (int t = 1; t < top && t < HIT_SLOTS; t++)
        if (t != mine)
            free_slots[nfree_slots++] = t;
    for (int t = 0; t < HIT_SLOTS; t++)
        atomic_store(&s->hit_slot[t].hazard, -1);
    for (uint32_t f = 0; f < s->nframes; f++) {
        int64_t v = atomic_load(&s->fm[f].vpn);
        /* A dirty frame claimed by a thread of the parent's (gone) whose page no longer maps
         * it: an eviction half done (the page unpublished, sealed in place into the frame, its
         * stored copy and tag maybe half written).  The page's content is lost in the child:
         * it would read as the stored copy from before (stale, or zero for a page never
         * written back), so the child is not built. */
        if (v >= 0 && atomic_load(&s->fm[f].pins) < 0 && atomic_load(&s->fm[f].dirty) &&
            atomic_load(&pte_of(s, (uint64_t)v)->frame) != (int32_t)f)
            return SUVM_EINTEGRITY;
        if (atomic_load(&s->fm[f].pins) > 0)
            atomic_store(&s->fm[f].pins, 0);
        if (v >= 0)
            atomic_store(&s->fm[f].dirty, 1);
    }
    uint8_t old[16], fresh[16];
    memcpy(old, s->key, sizeof old);
    if (RAND_bytes(fresh, sizeof fresh) != 1)
        return SUVM_ECRYPTO;
    uint8_t *buf = aligned_alloc(64, s->page_size);
    if (!buf)
        return SUVM_ENOMEM;
    int rc = SUVM_OK;
    for (uint64_t c = 0; c < s->dir_len && rc == SUVM_OK; c++) {
        struct pte *chunk = s->dir[c];
        if (!chunk)
            continue;
        for (uint32_t i = 0; i < PT_CHUNK; i++) {
            struct pte *p = &chunk[i];
            if (!p->sealed || atomic_load(&p->frame) >= 0)
                continue;             /* nothing stored, or resident (dirty: sealed anew) */
            uint64_t vpn = (c << PT_CHUNK_SHIFT) | i;
            memcpy(s->key, old, sizeof old);
            rc = open_subpages(s, vpn, p, 0, s->nsub, buf);
            memcpy(s->key, fresh, sizeof fresh);
            if (rc != SUVM_OK)
                break;
            seal_page(s, vpn, p, buf, 0);
        }
    }
    memcpy(s->key, fresh, sizeof fresh);
    OPENSSL_cleanse(old, sizeof old);
    OPENSSL_cleanse(fresh, sizeof fresh);
    OPENSSL_cleanse(buf, s->page_size);
    free(buf);
    return rc;
}

/* ---- ballooning (trusted/balloon.py) ----
 *
 * The page cache is a balloon in an EPC that several enclaves share: the cache uses frames
 * [0, active) only.  Shrinking evicts, inside the enclave, the pages of frames [n, active) as
 * any eviction does (a dirty page is sealed to the store first, so nothing is lost; a pinned
 * one is waited for, so no copy in progress breaks), wipes those frames and gives their memory
 * back; growing hands frames back to the free list.  One trim of the enclave's pages per call
 * (SGX2's EMODT/EACCEPT and the driver's EREMOVE, or its EAUG when growing) is charged as an
 * OCALL: one exit per resize, none per page.  n is clamped to [4, the configured size]; the
 * caller (the balloon) keeps its own, larger floor.  Returns the frames in use. */
uint32_t suvm_resize(suvm_t *s, uint32_t n)
{
    if (n < 4) n = 4;
    if (n > s->nframes) n = s->nframes;
    pthread_mutex_lock(&s->resize_lock);
    uint32_t old = atomic_load(&s->active);
    if (n == old) {
        pthread_mutex_unlock(&s->resize_lock);
        return n;
    }
    exit_begin(s);
    pthread_mutex_lock(&s->cache_lock);
    if (n > old) {
        for (uint32_t f = old; f < n; f++) {
            s->fm[f].ballooned = 0;
            s->free_stack[s->nfree++] = (int32_t)f;    /* pins PIN_EVICT, vpn -1: a free frame */
        }
        atomic_store(&s->active, n);
        pthread_mutex_unlock(&s->cache_lock);
    } else {
        atomic_store(&s->active, n);
        uint32_t k = 0;
        for (uint32_t i = 0; i < s->nfree; i++) {
            if ((uint32_t)s->free_stack[i] < n) s->free_stack[k++] = s->free_stack[i];
            else s->fm[s->free_stack[i]].ballooned = 1;
        }
        s->nfree = k;
        pthread_mutex_unlock(&s->cache_lock);
        for (uint32_t f = n; f < old; f++) {
            for (uint32_t tries = 0;; tries++) {
                pthread_mutex_lock(&s->cache_lock);
                int done = s->fm[f].ballooned;
                pthread_mutex_unlock(&s->cache_lock);
                if (done) break;
                /* A frame mid-fault, mid-eviction or pinned by a copy settles within a page's
                 * work: poll a little, then let the thread doing it run. */
                if (tries > 64) sched_yield();
                int64_t v = atomic_load(&s->fm[f].vpn);
                if (v < 0) continue;
                pthread_mutex_t *st = stripe_of(s, (uint64_t)v);
                pthread_mutex_lock(st);
                if (atomic_load(&pte_of(s, (uint64_t)v)->frame) == (int32_t)f && try_claim(s, (int32_t)f)) {
                    evict_frame(s, (int32_t)f, (uint64_t)v);
                    free_frame(s, (int32_t)f);         /* f >= active: marks it ballooned */
                }
                pthread_mutex_unlock(st);
            }
        }
        size_t lo = ((size_t)n * s->page_size + 4095) & ~(size_t)4095;
        size_t hi = ((size_t)old * s->page_size) & ~(size_t)4095;
        OPENSSL_cleanse(s->frames + (size_t)n * s->page_size, (size_t)(old - n) * s->page_size);
        if (hi > lo) madvise(s->frames + lo, hi - lo, MADV_DONTNEED);
    }
    exit_end(s);
    pthread_mutex_unlock(&s->resize_lock);
    return n;
}

uint32_t suvm_cache_frames(suvm_t *s) { return atomic_load(&s->active); }

/* skip != 0: a write miss that overwrites a whole page puts the new content in its frame
 * without opening the stored copy (ELEOS_SUVM_OVERWRITE=skip); 0, the default: it opens it
 * first, as Eleos' SUVM does. */
void suvm_set_overwrite(suvm_t *s, int skip)
{
    s->overwrite_skips_open = skip != 0;
}

/* The modeled CPU's cpu_pollute (0: none), called after each of SUVM's own exits. */
void suvm_set_pollute(suvm_t *s, uintptr_t cpu_pollute_fn)
{
    s->pollute = (eleos_cpu_pollute_fn)cpu_pollute_fn;
}

void suvm_stats(suvm_t *s, uint64_t out[SUVM_ST_COUNT])
{
    for (int i = 0; i < SUVM_ST_COUNT; i++)
        out[i] = atomic_load_explicit(&s->st[i], memory_order_relaxed);
    for (int t = 0; t < HIT_SLOTS; t++)
        out[SUVM_ST_HITS] += atomic_load_explicit(&s->hit_slot[t].hits, memory_order_relaxed);
    pthread_mutex_lock(&s->cache_lock);
    out[SUVM_ST_RESIDENT] = atomic_load(&s->active) - s->nfree;
    pthread_mutex_unlock(&s->cache_lock);
    out[SUVM_ST_FRAMES] = s->nframes;
    pthread_mutex_lock(&s->pt_lock);
    out[SUVM_ST_STORE_BYTES] = s->committed;
    pthread_mutex_unlock(&s->pt_lock);
}

void suvm_reset_stats(suvm_t *s)
{
    for (int i = 0; i < SUVM_ST_COUNT; i++)
        atomic_store(&s->st[i], 0);
    /* Approximate if threads are running: their next plain add may bring a slot back. */
    for (int t = 0; t < HIT_SLOTS; t++)
        atomic_store(&s->hit_slot[t].hits, 0);
}

/*
 * The benchmark loop (benchmarks/suvm_micro.py, benchmarks/paging.py): n accesses of `item`
 * bytes each at SUVM addresses offsets[0..n), reads (write == 0) or writes (write != 0)
 * through the app's path (fast path, then the fault handler), with the GIL released by cffi.
 * Returns SUVM_OK or the first error (SUVM_ERANGE if an access is out of the reserved space).
 * Signature: int suvm_bench_access(suvm_t *s, const uint64_t *offsets, size_t n, size_t item,
 *                                  int write)
 */
int suvm_bench_access(suvm_t *s, const uint64_t *offsets, size_t n, size_t item, int write)
{
    uint8_t *buf = malloc(item ? item : 1);
    if (!buf)
        return SUVM_EINVAL;
    memset(buf, 0xA5, item);
    int rc = SUVM_OK;
    for (size_t i = 0; i < n && rc == SUVM_OK; i++) {
        if (suvm_copy_resident(s, offsets[i], buf, item, write) == item)
            continue;
        rc = write ? suvm_write(s, offsets[i], buf, item) : suvm_read(s, offsets[i], buf, item);
    }
    free(buf);
    return rc;
}

/* The same with a per-access choice: writes[i] != 0 makes access i a write (mixed workloads
 * in one call, so Python never runs between accesses). */
int suvm_bench_mix(suvm_t *s, const uint64_t *offsets, const uint8_t *writes, size_t n, size_t item)
{
    uint8_t *buf = malloc(item ? item : 1);
    if (!buf)
        return SUVM_EINVAL;
    memset(buf, 0xA5, item);
    int rc = SUVM_OK;
    for (size_t i = 0; i < n && rc == SUVM_OK; i++) {
        int w = writes[i] != 0;
        if (suvm_copy_resident(s, offsets[i], buf, item, w) == item)
            continue;
        rc = w ? suvm_write(s, offsets[i], buf, item) : suvm_read(s, offsets[i], buf, item);
    }
    free(buf);
    return rc;
}

void suvm_test_key(suvm_t *s, uint8_t out[16]) { memcpy(out, s->key, 16); }

/* Tests of fork (tests/test_attack_fork.py): leave the resident page at addr as an evicting
 * thread leaves it when the fork takes the process from under it: its frame claimed, the page
 * unpublished (evict_frame's first step), nothing sealed yet.  The page is then lost to this
 * process too (a test's page, never touched again).  0, or SUVM_ERANGE (not resident, or
 * pinned). */
int suvm_test_half_evict(suvm_t *s, uint64_t addr)
{
    if (!range_ok(s, addr, 1))
        return SUVM_ERANGE;
    uint64_t vpn = addr >> s->page_shift;
    pthread_mutex_t *st = stripe_of(s, vpn);
    pthread_mutex_lock(st);
    struct pte *p = pte_of(s, vpn);
    int32_t f = atomic_load(&p->frame);
    int rc = SUVM_ERANGE;
    if (f >= 0 && try_claim(s, f)) {
        pthread_mutex_lock(&s->cache_lock);
        list_remove(s, f);
        pthread_mutex_unlock(&s->cache_lock);
        atomic_store_explicit(&p->frame, -1, memory_order_release);
        rc = SUVM_OK;
    }
    pthread_mutex_unlock(st);
    return rc;
}

int suvm_test_sealed(suvm_t *s, uint64_t vpn, uint32_t sub, uint8_t nonce[12], uint8_t aad[24],
                     uint8_t tag[16])
{
    if (!range_ok(s, vpn << s->page_shift, s->page_size) || sub >= s->nsub)
        return SUVM_ERANGE;
    pthread_mutex_t *st = stripe_of(s, vpn);
    pthread_mutex_lock(st);
    struct pte *p = pte_of(s, vpn);
    int rc = SUVM_ERANGE;
    if (p->sealed) {
        make_nonce_aad(s, vpn, sub, p->version, nonce, aad);
        memcpy(tag, p->tags + (size_t)sub * 16, 16);
        rc = SUVM_OK;
    }
    pthread_mutex_unlock(st);
    return rc;
}

/* The benchmark's yardstick: open (AES-128-GCM decrypt + verify) one sealed page of
 * page_size bytes `iters` times, with nothing else around it.  Returns 0, or -1 on failure. */
int suvm_bench_raw_open(uint32_t page_size, uint64_t iters)
{
    uint8_t key[16] = {1}, nonce[12] = {2}, tag[16];
    uint8_t *plain = calloc(1, page_size), *sealed = malloc(page_size), *out = malloc(page_size);
    int rc = -1;
    if (plain && sealed && out && eleos_seal(key, nonce, NULL, 0, plain, page_size, sealed, tag) == 0) {
        rc = 0;
        for (uint64_t i = 0; i < iters && rc == 0; i++)
            rc = eleos_open(key, nonce, NULL, 0, sealed, page_size, out, tag);
    }
    free(plain);
    free(sealed);
    free(out);
    return rc;
}

/*
 * epc_domain.c - one EPC shared by the enclave processes of a domain (untrusted/, host).
 *
 * All enclaves of a machine share its EPC, and the SGX driver pages across all of them: when
 * the EPC is full, its reclaimer takes victims from one global LRU, whichever enclave they
 * belong to (arch/x86/kernel/cpu/sgx/main.c: sgx_global_lru, ksgxswapd, batches of
 * SGX_NR_TO_SCAN = 16, low/high watermarks).  Here each enclave is a process with its own
 * driver model (epc_driver.c); processes started with the same ELEOS_EPC_DOMAIN share one
 * table in shared memory, /dev/shm/eleos-epc-NAME, and take their frames from it:
 *
 *   frames        the table counts the frames each member holds and their sum (`used`); a
 *                 member takes a frame before it loads a page and gives it back after EWB,
 *                 under one process-shared robust mutex, so the sum never exceeds the limit.
 *                 A member that finds no frame waits on a futex in the table (freed_seq),
 *                 woken by whichever process frees one.
 *   global LRU    every page joining a member's active list gets a stamp from one counter in
 *                 the table; each member publishes the stamp of its oldest page.  The member
 *                 whose oldest page is the domain's oldest is the one whose reclaimer runs the
 *                 next batch: the per-process lists merged by stamp are one global FIFO with
 *                 second chance, as Linux's.  Reclaimers sleep on another futex (reclaim_seq),
 *                 kicked when free frames fall below the low watermark or an allocation fails,
 *                 and run until free frames reach the high one.  EWB needs the enclave's own
 *                 CPU (its key and version array), so a victim is always written back by its
 *                 owner's reclaimer, as each enclave's pages are EWBed under its own SECS.
 *   liveness      each member's thread here holds a robust mutex in its slot for as long as it
 *                 is a member.  When the process dies (exit, crash, SIGKILL) the kernel marks
 *                 the mutex owner-dead; the next process that needs frames (or looks at the
 *                 domain) finds it with trylock (EOWNERDEAD) and returns the dead member's
 *                 frames to the pool.  Its memory went with its memfds.  A process killed in
 *                 the middle of an update of the table leaves the table's mutex owner-dead;
 *                 the next locker recomputes the sum from the members' counts.
 *   balloons      an SUVM member holds the frames of its page cache; the manager (the member
 *                 holding the robust `manager` mutex, see untrusted/epc_domain.py) writes each
 *                 one a target and wakes it through a futex in its slot.
 *
 * The table is created complete under a temporary name and linked into place (link(2) fails
 * if another process won the race), so nobody ever maps a half-built table.  The last member
 * to leave unlinks it, under the table's mutex, and marks it so that a process that had just
 * opened it retries with a new one.
 *
 * Threat model: the table is host memory shared by untrusted processes; nothing here is
 * trusted by an enclave.  An enclave reads its balloon target once and clamps it (trusted/
 * balloon.py); a lying table can slow enclaves down, never make them lose a page.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include "epc_domain.h"

#define DOM_MAGIC 0x314d4f4443504545ull   /* "EEPCDOM1" */
#define DOM_VERSION 3
/* A member whose oldest page has not moved for this long while the domain needs frames is
 * stuck (stopped, or starved of CPU): the others then reclaim their own oldest pages. */
#define DOM_STUCK_NS 200000000ull
#define DOM_NR_LOW 32                     /* SGX_NR_LOW_EPC_PAGES_DEFAULT, as epc_driver.c */
#define DOM_DIR "/dev/shm/"
#define DOM_PREFIX "eleos-epc-"

enum { SLOT_FREE = 0, SLOT_LIVE = 1 };

struct member {
    pthread_mutex_t alive;          /* robust: held by the member's thread while it is one */
    int32_t pid;
    uint32_t kind;
    uint32_t state;
    uint32_t target_seq;            /* futex: +1 when the manager writes a target */
    uint64_t resident;              /* frames held (under the table's mutex) */
    uint64_t target, floor, cap;    /* balloon: the manager's request, the member's bounds */
    uint64_t loads, evictions, demand;
    uint64_t oldest;                /* stamp of its oldest page on the active list, or ~0 */
    uint64_t joined_ns;
};

struct dom {
    uint64_t magic;
    uint32_t version, size;
    pthread_mutex_t lock;           /* robust: frames, membership */
    pthread_mutex_t manager;        /* robust: held by the member running the balloon policy */
    uint32_t freed_seq;             /* futex: +1 when frames return */
    uint32_t reclaim_seq;           /* futex: +1 when reclaimers should look again */
    uint32_t freed_waiters, unlinked;
    uint64_t limit, used, low, high;
    uint64_t members, deaths, dead_pages, stamp, kicks, waits;
    uint64_t best_key, best_since_ns, fallbacks;   /* the turn holder, and since when */
    uint64_t manager_pid, manager_changes;          /* who runs the balloon policy */
    struct member m[EPC_DOM_MAX_MEMBERS];
};

struct epc_domain {
    struct dom *d;
    int fd;
    int slot;                       /* -1: an observer (eleos-shim epc) */
    int kind;
    uint64_t limit, floor, cap;
    char path[sizeof DOM_DIR + sizeof DOM_PREFIX + EPC_DOM_NAME_MAX];
    pthread_t thread;
    pthread_mutex_t lk;
    pthread_cond_t cv;
    int phase;                      /* 0 joining, 1 member, 2 leave asked, 3 gone */
    int err;
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

#define LOAD(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define BUMP(p) __atomic_add_fetch((p), 1, __ATOMIC_ACQ_REL)

/* Shared (not FUTEX_PRIVATE) futexes: the waiters are in other processes. */
static void fwake(uint32_t *a) { syscall(SYS_futex, a, FUTEX_WAKE, INT32_MAX, NULL, NULL, 0); }

static int fwait(uint32_t *a, uint32_t v, uint32_t ms)
{
    struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L };
    return (int)syscall(SYS_futex, a, FUTEX_WAIT, v, &ts, NULL, 0);
}

static int robust_init(pthread_mutex_t *m)
{
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    int rc = pthread_mutex_init(m, &a);
    pthread_mutexattr_destroy(&a);
    return rc;
}

static void watermarks(struct dom *d, uint64_t limit)
{
    d->limit = limit;
    d->low = limit / 64 < DOM_NR_LOW ? (limit / 64 ? limit / 64 : 1) : DOM_NR_LOW;
    d->high = 2 * d->low;
}

/* A holder killed mid-update leaves `used` unknown: the members' own counts are the truth. */
static void dom_lock(struct dom *d)
{
    if (pthread_mutex_lock(&d->lock) == EOWNERDEAD) {
        uint64_t sum = 0;
        for (int k = 0; k < EPC_DOM_MAX_MEMBERS; k++)
            if (d->m[k].state == SLOT_LIVE) sum += d->m[k].resident;
        d->used = sum;
        pthread_mutex_consistent(&d->lock);
    }
}

static void dom_unlock(struct dom *d) { pthread_mutex_unlock(&d->lock); }

static void wake_all(struct dom *d)
{
    BUMP(&d->freed_seq);
    fwake(&d->freed_seq);
    BUMP(&d->reclaim_seq);
    fwake(&d->reclaim_seq);
}

/* Return the frames of members whose process is gone.  Under the table's mutex. */
static int sweep_locked(struct dom *d, int self)
{
    int n = 0;
    for (int k = 0; k < EPC_DOM_MAX_MEMBERS; k++) {
        struct member *m = &d->m[k];
        if (k == self || m->state != SLOT_LIVE) continue;
        int rc = pthread_mutex_trylock(&m->alive);
        if (rc == EBUSY) continue;                  /* its thread holds it: alive */
        if (rc == EOWNERDEAD) pthread_mutex_consistent(&m->alive);
        /* EOWNERDEAD, or unlocked while live (its thread ended without leaving): gone. */
        d->used -= m->resident < d->used ? m->resident : d->used;
        d->deaths++;
        d->dead_pages += m->resident;
        d->members--;
        m->state = SLOT_FREE;
        m->resident = 0;
        m->pid = 0;
        m->oldest = UINT64_MAX;
        if (rc == 0 || rc == EOWNERDEAD) pthread_mutex_unlock(&m->alive);
        n++;
    }
    if (n) wake_all(d);
    return n;
}

static int map_table(struct epc_domain *h, int fd)
{
    struct stat st;
    if (fstat(fd, &st) != 0) return -errno;
    if (st.st_size != (off_t)sizeof(struct dom)) return EPC_DOM_ELAYOUT;
    void *p = mmap(NULL, sizeof(struct dom), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) return -errno;
    struct dom *d = p;
    if (d->magic != DOM_MAGIC || d->version != DOM_VERSION || d->size != sizeof(struct dom)) {
        munmap(p, sizeof(struct dom));
        return EPC_DOM_ELAYOUT;
    }
    h->d = d;
    h->fd = fd;
    return 0;
}

/* Open the table, creating it (complete, then linked into place) if it does not exist. */
static int open_table(struct epc_domain *h, uint64_t limit, int create)
{
    for (int tries = 0; tries < 8; tries++) {
        int fd = open(h->path, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
        if (fd >= 0) {
            int rc = map_table(h, fd);
            if (rc) close(fd);
            return rc;
        }
        if (errno != ENOENT || !create) return -errno;
        char tmp[sizeof h->path + 32];
        snprintf(tmp, sizeof tmp, "%s.%d.%ld", h->path, (int)getpid(), (long)syscall(SYS_gettid));
        fd = open(tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0) return -errno;
        if (ftruncate(fd, sizeof(struct dom)) != 0) { int e = -errno; unlink(tmp); close(fd); return e; }
        struct dom *d = mmap(NULL, sizeof(struct dom), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (d == MAP_FAILED) { int e = -errno; unlink(tmp); close(fd); return e; }
        robust_init(&d->lock);
        robust_init(&d->manager);
        watermarks(d, limit);
        for (int k = 0; k < EPC_DOM_MAX_MEMBERS; k++) d->m[k].oldest = UINT64_MAX;
        d->version = DOM_VERSION;
        d->size = sizeof(struct dom);
        STORE(&d->magic, DOM_MAGIC);
        munmap(d, sizeof(struct dom));
        int rc = link(tmp, h->path);
        int e = errno;
        unlink(tmp);
        close(fd);
        if (rc != 0 && e != EEXIST) return -e;
        /* Linked (ours) or lost the race (theirs): open whichever is there. */
    }
    return -EAGAIN;
}

static int set_path(struct epc_domain *h, const char *name)
{
    size_t n = strlen(name);
    if (!n || n > EPC_DOM_NAME_MAX || name[0] == '.') return -EINVAL;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.'))
            return -EINVAL;
    }
    snprintf(h->path, sizeof h->path, "%s%s%s", DOM_DIR, DOM_PREFIX, name);
    return 0;
}

static void unmap(struct epc_domain *h)
{
    if (h->d) munmap(h->d, sizeof(struct dom));
    if (h->fd >= 0) close(h->fd);
    h->d = NULL;
    h->fd = -1;
}

/* The member's thread: joins, holds its slot's robust mutex for as long as it is a member
 * (so that its death, and only its death, marks the slot owner-dead), then leaves. */
static void *member_main(void *arg)
{
    struct epc_domain *h = arg;
    struct dom *d = h->d;
    int err = 0, slot = -1;
    dom_lock(d);
    sweep_locked(d, -1);
    if (d->unlinked) {
        err = -ESTALE;
    } else if (d->limit != h->limit) {
        if (d->members == 0 && d->used == 0) watermarks(d, h->limit);   /* nobody uses it */
        else err = EPC_DOM_ELIMIT;
    }
    /* A balloon's floor comes from what is free now; the rest of it once the others have
     * shrunk (the caller takes it, epc_domain_take), so the sum never exceeds the EPC. */
    uint64_t reserve = d->limit > d->used ? d->limit - d->used : 0;
    if (reserve > h->floor) reserve = h->floor;
    if (!err) {
        for (int k = 0; k < EPC_DOM_MAX_MEMBERS && slot < 0; k++)
            if (d->m[k].state == SLOT_FREE) slot = k;
        if (slot < 0) err = EPC_DOM_EFULL;
    }
    if (!err) {
        struct member *m = &d->m[slot];
        robust_init(&m->alive);
        pthread_mutex_lock(&m->alive);
        m->pid = (int32_t)getpid();
        m->kind = (uint32_t)h->kind;
        m->resident = reserve;
        m->floor = h->floor;
        m->cap = h->cap;
        m->target = h->floor;
        m->loads = m->evictions = m->demand = 0;
        m->oldest = UINT64_MAX;
        m->joined_ns = now_ns();
        d->used += reserve;
        d->members++;
        m->state = SLOT_LIVE;
    }
    dom_unlock(d);
    pthread_mutex_lock(&h->lk);
    h->err = err;
    h->slot = slot;
    h->phase = err ? 3 : 1;
    pthread_cond_broadcast(&h->cv);
    while (!err && h->phase == 1)
        pthread_cond_wait(&h->cv, &h->lk);
    pthread_mutex_unlock(&h->lk);
    if (err) return NULL;

    struct member *m = &d->m[slot];
    dom_lock(d);
    d->used -= m->resident < d->used ? m->resident : d->used;
    m->resident = 0;
    m->state = SLOT_FREE;
    m->pid = 0;
    m->oldest = UINT64_MAX;
    d->members--;
    pthread_mutex_unlock(&m->alive);
    if (d->members == 0 && d->used == 0) {
        /* The last one out removes the name; a process that just opened it sees `unlinked`
         * under this mutex and makes a new one. */
        d->unlinked = 1;
        unlink(h->path);
    }
    wake_all(d);
    dom_unlock(d);
    return NULL;
}

epc_domain_t *epc_domain_join(const char *name, uint64_t limit_pages, int kind, uint64_t floor_pages,
                              uint64_t cap_pages, int *err)
{
    *err = 0;
    if (!limit_pages || (kind != EPC_DOM_SGX && kind != EPC_DOM_SUVM)) { *err = -EINVAL; return NULL; }
    struct epc_domain *h = calloc(1, sizeof *h);
    if (!h) { *err = -ENOMEM; return NULL; }
    h->fd = -1;
    h->slot = -1;
    int rc = set_path(h, name);
    if (rc) { free(h); *err = rc; return NULL; }
    h->kind = kind;
    h->limit = limit_pages;
    h->floor = floor_pages;
    h->cap = cap_pages;
    pthread_mutex_init(&h->lk, NULL);
    pthread_cond_init(&h->cv, NULL);
    for (int tries = 0; tries < 8; tries++) {
        rc = open_table(h, limit_pages, 1);
        if (rc) break;
        h->phase = 0;
        if (pthread_create(&h->thread, NULL, member_main, h) != 0) { rc = -EAGAIN; unmap(h); break; }
        pthread_setname_np(h->thread, "eleos-epc-dom");   /* a host thread: named for benchmarks */
        pthread_mutex_lock(&h->lk);
        while (h->phase == 0) pthread_cond_wait(&h->cv, &h->lk);
        rc = h->err;
        pthread_mutex_unlock(&h->lk);
        if (rc == 0) return h;
        pthread_join(h->thread, NULL);
        unmap(h);
        if (rc != -ESTALE) break;
    }
    free(h);
    *err = rc;
    return NULL;
}

void epc_domain_leave(epc_domain_t *h)
{
    if (!h) return;
    if (h->slot >= 0) {
        pthread_mutex_lock(&h->lk);
        h->phase = 2;
        pthread_cond_broadcast(&h->cv);
        pthread_mutex_unlock(&h->lk);
        pthread_join(h->thread, NULL);
    }
    unmap(h);
    free(h);
}

int epc_domain_slot(epc_domain_t *h) { return h->slot; }

uint64_t epc_domain_take(epc_domain_t *h, uint64_t n, uint32_t *seq)
{
    struct dom *d = h->d;
    struct member *me = &d->m[h->slot];
    dom_lock(d);
    uint64_t free_before = d->limit > d->used ? d->limit - d->used : 0;
    if (free_before < n && sweep_locked(d, h->slot))
        free_before = d->limit > d->used ? d->limit - d->used : 0;
    uint64_t g = n < free_before ? n : free_before;
    d->used += g;
    me->resident += g;
    if (h->kind == EPC_DOM_SGX) me->loads += g;
    uint64_t free_after = free_before - g;
    if (!g) {
        *seq = LOAD(&d->freed_seq);
        d->waits++;
    }
    int kick = !g || (free_before >= d->low && free_after < d->low);
    dom_unlock(d);
    if (kick) epc_domain_kick(h);
    return g;
}

void epc_domain_put(epc_domain_t *h, uint64_t n)
{
    struct dom *d = h->d;
    struct member *me = &d->m[h->slot];
    dom_lock(d);
    if (n > me->resident) n = me->resident;
    me->resident -= n;
    d->used -= n < d->used ? n : d->used;
    if (h->kind == EPC_DOM_SGX) me->evictions += n;
    BUMP(&d->freed_seq);
    int wake = LOAD(&d->freed_waiters) != 0;
    dom_unlock(d);
    if (wake) fwake(&d->freed_seq);
}

int epc_domain_wait_freed(epc_domain_t *h, uint32_t seq, uint32_t timeout_ms)
{
    struct dom *d = h->d;
    __atomic_add_fetch(&d->freed_waiters, 1, __ATOMIC_ACQ_REL);
    int rc = fwait(&d->freed_seq, seq, timeout_ms);
    __atomic_sub_fetch(&d->freed_waiters, 1, __ATOMIC_ACQ_REL);
    return rc;
}

uint32_t epc_domain_freed_seq(epc_domain_t *h) { return LOAD(&h->d->freed_seq); }

uint64_t epc_domain_stamp(epc_domain_t *h) { return __atomic_add_fetch(&h->d->stamp, 1, __ATOMIC_RELAXED); }

void epc_domain_set_oldest(epc_domain_t *h, uint64_t stamp) { STORE(&h->d->m[h->slot].oldest, stamp); }

/* 1: free frames are below the high watermark and this member holds the domain's oldest page,
 * so its reclaimer runs the next batch.  Lock-free (a hint: a stale answer costs one batch
 * taken from the second-oldest member, or one more look). */
int epc_domain_reclaim_turn(epc_domain_t *h)
{
    struct dom *d = h->d;
    for (int again = 0; again < 2; again++) {
        uint64_t used = LOAD(&d->used), limit = d->limit;
        if (limit > used && limit - used >= d->high) return 0;
        int best = -1;
        uint64_t bo = UINT64_MAX;
        for (int k = 0; k < EPC_DOM_MAX_MEMBERS; k++) {
            struct member *m = &d->m[k];
            if (LOAD(&m->state) != SLOT_LIVE || m->kind != EPC_DOM_SGX) continue;
            uint64_t o = LOAD(&m->oldest);
            if (o < bo) { bo = o; best = k; }
        }
        if (best == h->slot) return 1;
        if (best < 0) return 0;
        /* Is the turn holder making progress?  Its (slot, oldest stamp) changes with each of
         * its batches; the same pair for DOM_STUCK_NS means it is not running. */
        uint64_t key = bo * EPC_DOM_MAX_MEMBERS + (uint64_t)best, t = now_ns();
        if (LOAD(&d->best_key) != key) {
            STORE(&d->best_key, key);
            STORE(&d->best_since_ns, t);
        } else if (t - LOAD(&d->best_since_ns) > DOM_STUCK_NS) {
            __atomic_add_fetch(&d->fallbacks, 1, __ATOMIC_RELAXED);
            return 1;
        }
        /* Another member's turn; make sure it is not a dead one holding frames forever. */
        dom_lock(d);
        int n = sweep_locked(d, h->slot);
        dom_unlock(d);
        if (!n) return 0;
    }
    return 0;
}

uint32_t epc_domain_reclaim_seq(epc_domain_t *h) { return LOAD(&h->d->reclaim_seq); }

void epc_domain_wait_reclaim(epc_domain_t *h, uint32_t seq, uint32_t timeout_ms)
{
    fwait(&h->d->reclaim_seq, seq, timeout_ms);
}

void epc_domain_kick(epc_domain_t *h)
{
    struct dom *d = h->d;
    __atomic_add_fetch(&d->kicks, 1, __ATOMIC_RELAXED);
    BUMP(&d->reclaim_seq);
    fwake(&d->reclaim_seq);
}

int epc_domain_sweep(epc_domain_t *h)
{
    dom_lock(h->d);
    int n = sweep_locked(h->d, h->slot);
    dom_unlock(h->d);
    return n;
}

int epc_domain_set_target(epc_domain_t *h, int slot, uint64_t target_pages)
{
    if (slot < 0 || slot >= EPC_DOM_MAX_MEMBERS) return -EINVAL;
    struct member *m = &h->d->m[slot];
    if (LOAD(&m->state) != SLOT_LIVE) return -ENOENT;
    STORE(&m->target, target_pages);
    BUMP(&m->target_seq);
    fwake(&m->target_seq);
    return 0;
}

uint64_t epc_domain_target(epc_domain_t *h, uint32_t *seq)
{
    struct member *m = &h->d->m[h->slot];
    *seq = LOAD(&m->target_seq);
    return LOAD(&m->target);
}

int epc_domain_wait_target(epc_domain_t *h, uint32_t seq, uint32_t timeout_ms)
{
    return fwait(&h->d->m[h->slot].target_seq, seq, timeout_ms);
}

void epc_domain_publish(epc_domain_t *h, uint64_t loads, uint64_t evictions, uint64_t demand)
{
    struct member *m = &h->d->m[h->slot];
    STORE(&m->loads, loads);
    STORE(&m->evictions, evictions);
    STORE(&m->demand, demand);
}

/* 1: the calling thread now holds the manager role (until epc_domain_unmanage from the same
 * thread, or its death, which hands the role to the next waiter); 0: not within timeout_ms. */
int epc_domain_manage(epc_domain_t *h, uint32_t timeout_ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += timeout_ms / 1000;
    ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) { ts.tv_sec++; ts.tv_nsec -= 1000000000L; }
    int rc = pthread_mutex_timedlock(&h->d->manager, &ts);
    if (rc == EOWNERDEAD) { pthread_mutex_consistent(&h->d->manager); rc = 0; }
    if (rc == 0) {
        STORE(&h->d->manager_pid, (uint64_t)getpid());
        __atomic_add_fetch(&h->d->manager_changes, 1, __ATOMIC_RELAXED);
    }
    return rc == 0;
}

void epc_domain_unmanage(epc_domain_t *h)
{
    STORE(&h->d->manager_pid, 0);
    pthread_mutex_unlock(&h->d->manager);
}

int epc_domain_snapshot(epc_domain_t *h, uint64_t *hdr, uint64_t *rows, int max)
{
    struct dom *d = h->d;
    dom_lock(d);
    sweep_locked(d, h->slot);
    uint64_t v[EPC_DOM_HCOLS] = { d->limit, d->used, d->low, d->high, d->members, d->deaths,
                                  d->dead_pages, d->stamp, d->kicks, d->waits, d->fallbacks,
                                  d->manager_pid, d->manager_changes };
    memcpy(hdr, v, sizeof v);
    int n = 0;
    for (int k = 0; k < EPC_DOM_MAX_MEMBERS && n < max; k++) {
        struct member *m = &d->m[k];
        if (m->state != SLOT_LIVE) continue;
        uint64_t r[EPC_DOM_MCOLS] = { (uint64_t)k, (uint64_t)m->pid, m->kind, m->resident, m->target,
                                      m->floor, m->cap, m->loads, m->evictions, m->demand, m->oldest,
                                      m->joined_ns };
        memcpy(rows + (size_t)n * EPC_DOM_MCOLS, r, sizeof r);
        n++;
    }
    dom_unlock(d);
    return n;
}

epc_domain_t *epc_domain_open(const char *name, int *err)
{
    struct epc_domain *h = calloc(1, sizeof *h);
    if (!h) { *err = -ENOMEM; return NULL; }
    h->fd = -1;
    h->slot = -1;
    int rc = set_path(h, name);
    if (!rc) rc = open_table(h, 0, 0);
    if (rc) { free(h); *err = rc; return NULL; }
    *err = 0;
    return h;
}

void epc_domain_close(epc_domain_t *h) { epc_domain_leave(h); }

int epc_domain_unlink(const char *name)
{
    struct epc_domain h = { .fd = -1 };
    int rc = set_path(&h, name);
    if (rc) return rc;
    return unlink(h.path) == 0 ? 0 : -errno;
}

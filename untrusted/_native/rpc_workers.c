/*
 * rpc_workers.c - UNTRUSTED side: the RPC ring and the native worker pool that serves it.
 *
 * Eleos's exit-less system calls: enclave threads post requests into a ring in untrusted
 * shared memory and spin; these workers (native pthreads, never the GIL) poll the ring's
 * `posted` bitmap, run each request through the host's OCALL dispatch (host_ocalls.c) and
 * publish the result.
 * No enclave exit, no TLB flush: the price is a core that polls.  To keep an idle server from
 * burning that core, a worker that found nothing for `sleep_spins` polls sleeps on a futex in
 * the ring header; a producer that sees a sleeper wakes it (a syscall only then: the fast path
 * has none).  Layout and protocol: eleos_abi.h, "The RPC ring".
 *
 * What the host can do here is by definition what an attacker can do: the enclave side
 * (trusted/_native/enclave_rpc.c) checks every field it reads back.  rpc_host_corrupt_next()
 * is the hostile-host fixture the tests use to prove that: it makes the workers lie.
 *
 * Stop: workers are told to stop, woken and joined.  A worker stuck in a blocking syscall is
 * interrupted with a signal (its syscall returns EINTR, which it reports as the result);
 * if it still does not return, it is detached and the ring is leaked rather than freed
 * under it, so stop() never hangs.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "eleos_abi.h"

#include "eleos_atomic.h"

/* Hostile-host fixture: what the next completions lie about (tests only). */
enum { HOSTILE_NONE = 0, HOSTILE_STATE = 1, HOSTILE_OUT_LEN = 2, HOSTILE_OUT2_LEN = 3,
       HOSTILE_RET = 4, HOSTILE_SEQ = 5,
       /* rewrites of the request in the slot, left there with the reply */
       HOSTILE_BUF = 6, HOSTILE_BUF_LEN = 7, HOSTILE_OP = 8, HOSTILE_LAST = HOSTILE_OP };

struct rpc_worker {
    pthread_t tid;
    struct rpc_host *host;
    uint64_t processed;     /* requests this worker completed (written by it, read by stats) */
    uint64_t sleeps;        /* times it went to sleep on the futex */
    uint64_t cpu_ns_final;  /* its CPU time, stored as it exits (the clock dies with it) */
    uint32_t running;       /* 1 from start until it has stored cpu_ns_final */
    uint32_t joined;
} __attribute__((aligned(64)));

struct rpc_host {
    struct eleos_ring *ring;
    size_t map_len;
    uint32_t nslots, mask, nworkers;
    uint64_t sleep_spins;
    eleos_host_dispatch_fn dispatch;
    uint32_t started;
    uint32_t stop;          /* set by rpc_host_stop, read by the workers between calls */
    uint32_t leaked;        /* workers that could not be joined: the ring must outlive them */
    int hostile_kind;
    int64_t hostile_value;
    uint32_t hostile_left;
    struct rpc_worker *workers;
};

/* The OS name of every worker thread (at most 15 characters: the kernel's comm). */
#define ELEOS_RPC_THREAD_NAME "eleos-rpc"

/* A realtime signal, only ever sent to our own workers, to interrupt a blocking syscall. */
#define RPC_INTERRUPT_SIGNAL (SIGRTMIN + 4)
static void on_interrupt(int sig) { (void)sig; }

static long futex(uint32_t *addr, int op, uint32_t val)
{
    return syscall(SYS_futex, addr, op, val, NULL, NULL, 0);
}

struct rpc_host *rpc_host_new(uint32_t nslots, uint32_t nworkers, uint64_t sleep_spins,
                              uintptr_t dispatch)
{
    if (nslots < 2 || (nslots & (nslots - 1)) || nslots > (1u << 16) || !dispatch)
        return NULL;
    struct rpc_host *h = calloc(1, sizeof *h);
    if (!h) return NULL;
    h->map_len = ELEOS_RING_BYTES(nslots);
    void *m = mmap(NULL, h->map_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) { free(h); return NULL; }
    h->ring = m;
    h->nslots = nslots;
    h->mask = nslots - 1;
    h->nworkers = nworkers;
    h->sleep_spins = sleep_spins;
    h->dispatch = (eleos_host_dispatch_fn)dispatch;
    if (nworkers) {
        h->workers = aligned_alloc(64, sizeof(struct rpc_worker) * nworkers);
        if (!h->workers) { munmap(m, h->map_len); free(h); return NULL; }
        memset(h->workers, 0, sizeof(struct rpc_worker) * nworkers);
    }
    struct eleos_ring *r = h->ring;
    r->magic = ELEOS_RING_MAGIC;
    r->nslots = nslots;
    r->slot_size = ELEOS_RING_SLOT_SIZE;
    /* mmap zeroed it: every slot FREE, no bit posted. */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    return h;
}

uintptr_t rpc_host_ring(struct rpc_host *h) { return (uintptr_t)h->ring; }

static void complete(struct rpc_host *h, struct eleos_req *slot)
{
    uint32_t state = ELEOS_SLOT_DONE;
    if (LOAD(&h->hostile_left)) {          /* acquire: pairs with corrupt_next's store */
        if (__atomic_sub_fetch(&h->hostile_left, 1, __ATOMIC_ACQ_REL) != UINT32_MAX) {
            int64_t v = h->hostile_value;
            switch (h->hostile_kind) {
            case HOSTILE_STATE: state = (uint32_t)v; break;
            case HOSTILE_OUT_LEN: slot->out_len = slot->buf_len + (uint64_t)v; break;
            case HOSTILE_OUT2_LEN: slot->out2_len = slot->buf2_len + (uint64_t)v; break;
            case HOSTILE_RET: slot->ret = v; break;
            case HOSTILE_SEQ: slot->seq += (uint64_t)v; break;
            case HOSTILE_BUF: slot->buf = (uint64_t)v; break;
            case HOSTILE_BUF_LEN: slot->buf_len = (uint64_t)v; break;
            case HOSTILE_OP: slot->op = (uint32_t)v; break;
            }
        } else {
            __atomic_store_n(&h->hostile_left, 0, __ATOMIC_RELAXED);
        }
    }
    STORE(&slot->state, state);
}

/* Take one posted request if there is one.  1: ran one; 0: nothing to do.  `start` spreads
 * several workers over the bitmap's words. */
static int serve_one(struct rpc_host *h, struct rpc_worker *w, uint32_t start)
{
    struct eleos_ring *r = h->ring;
    uint64_t *posted = ELEOS_RING_POSTED(r);
    const uint32_t words = (uint32_t)ELEOS_RING_POSTED_WORDS(h->nslots);
    for (uint32_t k = 0; k < words; k++) {
        uint32_t wi = (start + k) % words;
        uint64_t bits = LOAD(&posted[wi]);
        while (bits) {
            uint32_t b = (uint32_t)__builtin_ctzll(bits);
            bits &= bits - 1;
            uint32_t i = wi * 64 + b;
            if (i >= h->nslots) continue;
            struct eleos_req *slot = ELEOS_RING_SLOT(r, h->nslots, i);
            uint32_t expect = ELEOS_SLOT_POSTED;
            /* Losing this race is fine: another worker took it, or its producer is taking
             * it back; whoever moved it out of POSTED clears the bit. */
            if (!CAS(&slot->state, &expect, ELEOS_SLOT_TAKEN))
                continue;
            __atomic_fetch_and(&posted[wi], ~(1ull << b), __ATOMIC_SEQ_CST);
            h->dispatch(slot);
            complete(h, slot);
            __atomic_store_n(&w->processed, w->processed + 1, __ATOMIC_RELAXED);
            return 1;
        }
    }
    return 0;
}

static int anything_posted(struct rpc_host *h)
{
    uint64_t *posted = ELEOS_RING_POSTED(h->ring);
    for (uint64_t k = 0; k < ELEOS_RING_POSTED_WORDS(h->nslots); k++)
        if (__atomic_load_n(&posted[k], __ATOMIC_SEQ_CST))
            return 1;
    return 0;
}

static void *worker_main(void *arg)
{
    struct rpc_worker *w = arg;
    struct rpc_host *h = w->host;
    struct eleos_ring *r = h->ring;
    sigset_t only;
    sigemptyset(&only);
    sigaddset(&only, RPC_INTERRUPT_SIGNAL);
    pthread_sigmask(SIG_UNBLOCK, &only, NULL);

    const uint32_t start = (uint32_t)(w - h->workers);
    uint64_t idle = 0;
    while (!LOAD(&h->stop)) {
        if (serve_one(h, w, start)) { idle = 0; continue; }
        if (++idle < h->sleep_spins) { relax(); continue; }
        /* Going to sleep.  Announce it, then look once more: a producer that posted before it
         * could see the announcement gets served now; one that posts after it sees a sleeper,
         * takes its call back and wakes us (bumping `futex`, so the wait returns at once). */
        uint32_t ticket = LOAD(&r->futex);
        __atomic_add_fetch(&r->sleepers, 1, __ATOMIC_SEQ_CST);
        /* A wake-up flagged before this announcement was for an earlier sleep. */
        __atomic_store_n(&r->wake_pending, 0, __ATOMIC_SEQ_CST);
        if (!anything_posted(h) && !LOAD(&h->stop)) {
            __atomic_store_n(&w->sleeps, w->sleeps + 1, __ATOMIC_RELAXED);
            futex(&r->futex, FUTEX_WAIT_PRIVATE, ticket);
        }
        __atomic_sub_fetch(&r->sleepers, 1, __ATOMIC_SEQ_CST);
        __atomic_store_n(&r->wake_pending, 0, __ATOMIC_SEQ_CST);
        idle = 0;
    }
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    w->cpu_ns_final = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
    __atomic_sub_fetch(&r->workers_live, 1, __ATOMIC_SEQ_CST);
    STORE(&w->running, 0);
    return NULL;
}

/* Start the workers.  Returns 0, or -errno (then none is left running). */
int rpc_host_start(struct rpc_host *h)
{
    if (h->started) return -EALREADY;
    static int handler_installed;
    if (!__atomic_exchange_n(&handler_installed, 1, __ATOMIC_ACQ_REL)) {
        struct sigaction old, sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_interrupt;       /* no SA_RESTART: the blocked syscall returns EINTR */
        sigemptyset(&sa.sa_mask);
        if (sigaction(RPC_INTERRUPT_SIGNAL, NULL, &old) == 0 && old.sa_handler == SIG_DFL)
            sigaction(RPC_INTERRUPT_SIGNAL, &sa, NULL);
    }
    /* Workers start with every signal blocked (they unblock only the interrupt signal), so
     * the app's signals (SIGINT, SIGTERM...) keep going to the app's threads. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    h->stop = 0;
    int rc = 0;
    uint32_t i;
    for (i = 0; i < h->nworkers; i++) {
        struct rpc_worker *w = &h->workers[i];
        memset(w, 0, sizeof *w);
        w->host = h;
        w->running = 1;
        __atomic_add_fetch(&h->ring->workers_live, 1, __ATOMIC_SEQ_CST);
        rc = pthread_create(&w->tid, NULL, worker_main, w);
        /* A name of its own, so a benchmark can tell the app's threads from the workers
         * (which in the paper sit on cores of their own): /proc/<pid>/task/<tid>/comm. */
        if (!rc) pthread_setname_np(w->tid, ELEOS_RPC_THREAD_NAME);
        if (rc) {
            __atomic_sub_fetch(&h->ring->workers_live, 1, __ATOMIC_SEQ_CST);
            w->running = 0;
            w->joined = 1;
            break;
        }
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    h->started = 1;
    if (rc) {
        uint32_t made = i;
        for (uint32_t j = made; j < h->nworkers; j++) h->workers[j].joined = 1;
        return -rc;
    }
    return 0;
}

static void add_ns(struct timespec *ts, long ns)
{
    ts->tv_nsec += ns;
    while (ts->tv_nsec >= 1000000000L) { ts->tv_nsec -= 1000000000L; ts->tv_sec++; }
}

/* Stop and join the workers, waiting at most about `timeout_s` for calls in flight.
 * Returns how many workers could not be joined (detached; the ring is then never freed). */
int rpc_host_stop(struct rpc_host *h, double timeout_s)
{
    if (!h->started) return 0;
    struct eleos_ring *r = h->ring;
    STORE(&h->stop, 1);
    __atomic_add_fetch(&r->futex, 1, __ATOMIC_SEQ_CST);
    futex(&r->futex, FUTEX_WAKE_PRIVATE, INT_MAX);
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    add_ns(&deadline, (long)(timeout_s * 1e9));
    int stuck = 0;
    for (uint32_t i = 0; i < h->nworkers; i++) {
        struct rpc_worker *w = &h->workers[i];
        if (w->joined) continue;
        for (;;) {
            struct timespec step;
            clock_gettime(CLOCK_REALTIME, &step);
            add_ns(&step, 20 * 1000000L);
            if (step.tv_sec > deadline.tv_sec ||
                (step.tv_sec == deadline.tv_sec && step.tv_nsec > deadline.tv_nsec))
                step = deadline;
            int rc = pthread_timedjoin_np(w->tid, NULL, &step);
            if (rc == 0) { w->joined = 1; break; }
            struct timespec now;
            clock_gettime(CLOCK_REALTIME, &now);
            if (now.tv_sec > deadline.tv_sec ||
                (now.tv_sec == deadline.tv_sec && now.tv_nsec >= deadline.tv_nsec)) {
                pthread_detach(w->tid);
                w->joined = 1;
                stuck++;
                break;
            }
            /* Still running: it is in a syscall that blocks (a call that should not have come
             * through the ring, or a lying client).  Interrupt it; futex wake in case it slept. */
            if (LOAD(&w->running))
                pthread_kill(w->tid, RPC_INTERRUPT_SIGNAL);
            futex(&r->futex, FUTEX_WAKE_PRIVATE, INT_MAX);
        }
    }
    h->leaked += (uint32_t)stuck;
    return stuck;
}

/* Release the ring and the host, unless a worker could not be joined (then the ring stays
 * mapped: that worker may still touch it). */
/* In the child of a fork(2) (eleos_shim/fork.py), before any enclave call: the parent's
 * workers did not survive the fork, and the ring (MAP_PRIVATE) is the child's own copy, at the
 * same address, with whatever the parent's threads had in flight in it, threads the child does
 * not have.  Empty it (every slot FREE, nothing posted, no sleeper, no worker) and start this
 * host's own workers on it.  Only the forking thread runs in the child, and it is in no enclave
 * call, so no slot is owned by a live producer.  0, or -errno from rpc_host_start. */
int rpc_host_after_fork(struct rpc_host *h)
{
    struct eleos_ring *r = h->ring;
    memset(r, 0, h->map_len);
    r->magic = ELEOS_RING_MAGIC;
    r->nslots = h->nslots;
    r->slot_size = ELEOS_RING_SLOT_SIZE;
    if (h->nworkers)
        memset(h->workers, 0, sizeof(struct rpc_worker) * h->nworkers);
    h->started = 0;
    h->stop = 0;
    h->leaked = 0;
    h->hostile_kind = HOSTILE_NONE;
    h->hostile_left = 0;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    return rpc_host_start(h);
}

void rpc_host_free(struct rpc_host *h)
{
    if (!h) return;
    if (h->started) rpc_host_stop(h, 1.0);
    if (h->leaked) return;
    munmap(h->ring, h->map_len);
    free(h->workers);
    free(h);
}

/* Per worker: requests completed and CPU seconds used so far.  Returns the worker count. */
uint32_t rpc_host_worker_stats(struct rpc_host *h, uint64_t *processed, double *cpu_s,
                               uint64_t *sleeps, uint32_t n)
{
    for (uint32_t i = 0; i < h->nworkers && i < n; i++) {
        struct rpc_worker *w = &h->workers[i];
        processed[i] = __atomic_load_n(&w->processed, __ATOMIC_RELAXED);
        sleeps[i] = __atomic_load_n(&w->sleeps, __ATOMIC_RELAXED);
        uint64_t ns = 0;
        if (h->started && LOAD(&w->running) && !w->joined) {
            clockid_t cid;
            struct timespec ts;
            if (pthread_getcpuclockid(w->tid, &cid) == 0 && clock_gettime(cid, &ts) == 0)
                ns = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
            /* It may have exited between the check and the read: take the larger. */
            if (!LOAD(&w->running) && w->cpu_ns_final > ns) ns = w->cpu_ns_final;
        } else {
            ns = w->cpu_ns_final;
        }
        cpu_s[i] = (double)ns * 1e-9;
    }
    return h->nworkers;
}

/* The counters producers keep in the ring header: fallbacks, wakeups, sleepers now, live
 * workers, then the fallbacks by reason (ELEOS_RPC_WHY_*). */
void rpc_host_ring_counters(struct rpc_host *h, uint64_t out[8])
{
    struct eleos_ring *r = h->ring;
    out[0] = __atomic_load_n(&r->fallbacks, __ATOMIC_RELAXED);
    out[1] = __atomic_load_n(&r->wakeups, __ATOMIC_RELAXED);
    out[2] = __atomic_load_n(&r->sleepers, __ATOMIC_RELAXED);
    out[3] = __atomic_load_n(&r->workers_live, __ATOMIC_RELAXED);
    for (int i = 0; i < 4; i++)
        out[4 + i] = __atomic_load_n(&r->fallback_why[i], __ATOMIC_RELAXED);
}

/* Hostile-host fixture: the next `count` completions lie in the way `kind` says (see the enum
 * above; `value` is the lie: a state, an excess length, a result, a seq offset, or what to
 * write into the slot's buf / buf_len / op). */
int rpc_host_corrupt_next(struct rpc_host *h, int kind, int64_t value, uint32_t count)
{
    if (kind < HOSTILE_NONE || kind > HOSTILE_LAST) return -EINVAL;
    h->hostile_kind = kind;
    h->hostile_value = value;
    __atomic_store_n(&h->hostile_left, kind == HOSTILE_NONE ? 0 : count, __ATOMIC_SEQ_CST);
    return 0;
}

/* Calibration for benchmarks/syscall_paths.py: the cross-core hand-off floor, i.e. the round
 * trip of one value between two threads over two cache lines, with the same polling as the
 * ring.  Returns nanoseconds per round trip over `n`, or -1. */
static uint64_t pp_ping __attribute__((aligned(64)));
static uint64_t pp_pong __attribute__((aligned(64)));

#define PP_WARMUP 10000   /* untimed round trips: the peer thread is up and both lines warm */

static void *pp_peer(void *arg)
{
    uint64_t n = *(uint64_t *)arg + PP_WARMUP;
    for (uint64_t i = 1; i <= n; i++) {
        while (LOAD(&pp_ping) != i) relax();
        STORE(&pp_pong, i);
    }
    return NULL;
}

double rpc_handoff_floor_ns(uint64_t n)
{
    pthread_t t;
    STORE(&pp_ping, 0);
    STORE(&pp_pong, 0);
    if (pthread_create(&t, NULL, pp_peer, &n)) return -1;
    for (uint64_t i = 1; i <= PP_WARMUP; i++) {
        STORE(&pp_ping, i);
        while (LOAD(&pp_pong) != i) relax();
    }
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (uint64_t i = PP_WARMUP + 1; i <= PP_WARMUP + n; i++) {
        STORE(&pp_ping, i);
        while (LOAD(&pp_pong) != i) relax();
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    pthread_join(t, NULL);
    return ((double)(b.tv_sec - a.tv_sec) * 1e9 + (double)(b.tv_nsec - a.tv_nsec)) / (double)n;
}

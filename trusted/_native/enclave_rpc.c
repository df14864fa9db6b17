/*
 * enclave_rpc.c - TRUSTED side: the enclave's RPC producer (exit-less system calls).
 *
 * enclave_rpc() hands one request to the untrusted workers (untrusted/_native/rpc_workers.c)
 * through the ring in untrusted memory instead of exiting the enclave: claim a free slot, copy
 * the request in (its buffers already live in untrusted memory: only their addresses are
 * copied), stamp it with a ticket of its own, publish it, spin up to `spin` polls for a
 * worker to take it, then wait for the result.  `req` is the enclave's own copy of the
 * request (enclave memory, enclave_ocalls.c's struct enclave_stage): the slot is built from
 * it, and the reply is read from the slot once, checked against it, and written into it.
 * Many app threads call it at once (the GIL is released around it).
 *
 * Return codes (eleos_abi.h), what the caller (enclave_ocalls.c) does with each:
 *   ELEOS_RPC_DONE      a worker ran it: ret, out_len, out2_len and args are copied into *req.
 *   ELEOS_RPC_FALLBACK  no worker took it: the ring is full, no worker is running, every
 *                       worker is asleep, the spin budget ran out (the slot was taken back:
 *                       no worker will run it), or the enclave never attached this ring.
 *                       *req is untouched; make the call as a regular OCALL.
 *   ELEOS_RPC_CORRUPT   what the host left in the slot is impossible (a state that is not
 *                       DONE, a seq that is not our ticket, more bytes than the buffer holds,
 *                       a result below -MAX_ERRNO): raise IagoError.
 *                       enclave_rpc_last_error() says which, for this thread.
 *
 * The ring is hostile memory.  The enclave indexes it only with the slot count it was given
 * by enclave_rpc_attach() (from its own configuration), never with what the header says, so
 * a lying header cannot steer its writes; every loop on host-written values is bounded except
 * the wait for a TAKEN call (a taken call is running: as with an OCALL, a host that never
 * answers can stall the thread, which SGX cannot prevent either).
 *
 * Waking a sleeping worker is a futex syscall, which a real enclave can only make from an
 * OCALL.  So the wake always rides on one: when every worker sleeps, the producer takes its
 * request back, wakes a worker and returns FALLBACK, and the caller's OCALL is the exit that
 * carries the wake (as the host side of that OCALL would do it).  Waiting for the worker
 * instead would cost more than the OCALL: a futex wake-up takes 0.2-3 ms on this 2-vCPU VM.
 * The calls that follow find the worker awake.  A producer that gives up on a busy pool
 * wakes a sleeper the same way.  The wake is never charged apart: it is part of that OCALL.
 */
#define _GNU_SOURCE
#include <linux/futex.h>
#include <sched.h>
#include <stdio.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "eleos_abi.h"

#include "eleos_atomic.h"

/* After this many polls waiting for a result the thread yields between polls: on a machine
 * with fewer cores than app threads + workers, a spinning producer would otherwise hold the
 * core the worker needs to finish its call (with dedicated cores, as in the paper, it never
 * gets here: 2k polls is ~50 us, more than a non-blocking syscall takes). */
#define YIELD_AFTER_POLLS (1u << 11)

/* Back-off of the spin budget.  Each call that spent its whole budget without a worker taking
 * it halves the budget of the calls that follow, down to spin >> MAX_BACKOFF; each call a
 * worker takes in time doubles it back.  When the workers cannot keep up (or do not get a
 * core: an oversubscribed machine), calls then fall back after ~10 us instead of ~0.5 ms
 * each, and with free workers the full budget (ELEOS_RPC_SPIN) applies. */
#define MAX_BACKOFF 6

/* Counters the enclave keeps itself (trusted; the ring header has the host's view). */
enum { C_FALLBACK_FULL = ELEOS_RPC_WHY_FULL, C_FALLBACK_NO_WORKER = ELEOS_RPC_WHY_NO_WORKER,
       C_FALLBACK_TIMEOUT = ELEOS_RPC_WHY_TIMEOUT, C_FALLBACK_ASLEEP = ELEOS_RPC_WHY_ASLEEP,
       C_WAKEUPS, C_CORRUPT, C_N };

/* The enclave's own copy of what it knows about an attached ring. */
struct ring_ref {
    uintptr_t ring;                     /* 0: unused entry */
    uint32_t nslots, mask;
    uint32_t backoff;                   /* the spin budget is spin >> backoff */
    uint64_t counters[C_N];
} __attribute__((aligned(64)));

#define MAX_RINGS 16
static struct ring_ref refs[MAX_RINGS];

static __thread char last_error[160];
static __thread uint32_t slot_hint;     /* where this thread last found a free slot */
static __thread uint64_t next_ticket;   /* this thread's tickets: thread number << 40 | count */
static uint64_t thread_numbers;
static uint64_t unattached_fallbacks;   /* calls on a ring the enclave does not know */

static inline struct ring_ref *lookup(uintptr_t ring)
{
    for (int i = 0; i < MAX_RINGS; i++)
        if (LOAD(&refs[i].ring) == ring)
            return &refs[i];
    return NULL;
}

/* Tell the enclave about a ring: its untrusted address and the slot count from the enclave's
 * own configuration (a power of two).  Until then calls on it fall back.
 * Returns 0, or -1 (bad count / no room). */
int enclave_rpc_attach(uintptr_t ring, uint32_t nslots)
{
    if (!ring || nslots < 2 || (nslots & (nslots - 1)) || nslots > (1u << 16))
        return -1;
    struct ring_ref *ref = lookup(ring);
    if (!ref) {
        for (int i = 0; i < MAX_RINGS && !ref; i++) {
            uintptr_t zero = 0;
            /* Reserve a free entry with a placeholder so two attaches cannot share it. */
            if (CAS(&refs[i].ring, &zero, (uintptr_t)1))
                ref = &refs[i];
        }
        if (!ref) return -1;
    } else {
        STORE(&ref->ring, (uintptr_t)1);    /* hide it while it changes */
    }
    ref->nslots = nslots;
    ref->mask = nslots - 1;
    memset(ref->counters, 0, sizeof ref->counters);
    ref->backoff = 0;
    STORE(&ref->ring, ring);
    return 0;
}

/* Forget a ring (no call may be in flight on it). */
void enclave_rpc_detach(uintptr_t ring)
{
    struct ring_ref *ref = lookup(ring);
    if (ref) STORE(&ref->ring, (uintptr_t)0);
}

/* The enclave's counters for a ring: fallback_full, fallback_no_worker, fallback_timeout,
 * fallback_asleep, wakeups, corrupt; ring 0: calls on rings never attached (index 0 only).
 * Returns how many were written. */
int enclave_rpc_counters(uintptr_t ring, uint64_t *out, int n)
{
    if (!ring) {
        if (n > 0) out[0] = __atomic_load_n(&unattached_fallbacks, __ATOMIC_RELAXED);
        return n > 0;
    }
    struct ring_ref *ref = lookup(ring);
    int i;
    for (i = 0; i < C_N && i < n; i++)
        out[i] = ref ? __atomic_load_n(&ref->counters[i], __ATOMIC_RELAXED) : 0;
    return i;
}

/* Why this thread's last ELEOS_RPC_CORRUPT happened, in words. */
const char *enclave_rpc_last_error(void) { return last_error; }

/* Record why (for this thread) and count it.  The reply is not copied to the caller. */
static int corrupt(struct ring_ref *ref)
{
    if (ref) COUNT(ref->counters[C_CORRUPT]);
    return ELEOS_RPC_CORRUPT;
}

static int fallback(struct ring_ref *ref, struct eleos_ring *r, int why)
{
    COUNT(ref->counters[why]);
    __atomic_add_fetch(&r->fallbacks, 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&r->fallback_why[why], 1, __ATOMIC_RELAXED);
    return ELEOS_RPC_FALLBACK;
}

/* Wake one sleeping worker.  Called only on the way to a fallback OCALL, whose exit carries
 * the syscall (see the top of the file). */
static void wake_worker(struct ring_ref *ref, struct eleos_ring *r)
{
    __atomic_store_n(&r->wake_pending, 1, __ATOMIC_SEQ_CST);
    __atomic_add_fetch(&r->futex, 1, __ATOMIC_SEQ_CST);
    syscall(SYS_futex, &r->futex, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
    COUNT(ref->counters[C_WAKEUPS]);
    __atomic_add_fetch(&r->wakeups, 1, __ATOMIC_RELAXED);
}

/* Every running worker asleep (or about to be) and none on its way back: a call would wait
 * for a futex wake-up.  (While a woken worker is on its way, calls post and spin as usual.) */
static inline int all_asleep(struct eleos_ring *r)
{
    uint32_t live = __atomic_load_n(&r->workers_live, __ATOMIC_SEQ_CST);
    return __atomic_load_n(&r->sleepers, __ATOMIC_SEQ_CST) >= live
        && !__atomic_load_n(&r->wake_pending, __ATOMIC_SEQ_CST);
}

int enclave_rpc(uintptr_t ring, struct eleos_req *req, uint64_t spin)
{
    struct ring_ref *ref = lookup(ring);
    if (!ref || ring <= 1) {
        /* The enclave does not know this ring's geometry, so it does not touch it. */
        COUNT(unattached_fallbacks);
        return ELEOS_RPC_FALLBACK;
    }
    struct eleos_ring *r = (struct eleos_ring *)ring;
    const uint64_t nslots = ref->nslots, mask = ref->mask;

    if (LOAD_RELAXED(&r->workers_live) == 0)
        return fallback(ref, r, C_FALLBACK_NO_WORKER);
    if (LOAD_RELAXED(&r->sleepers) && all_asleep(r)) {
        wake_worker(ref, r);
        return fallback(ref, r, C_FALLBACK_ASLEEP);
    }

    /* The request as the enclave made it (its own copy): the slot is written from this, and
     * the reply is checked against its capacities, never against what the slot says. */
    struct eleos_req in;
    memcpy(&in, req, sizeof in);

    /* Claim a free slot, starting where this thread last found one (threads spread out, and
     * a thread keeps reusing its own slot's cache lines).  Bounded by the slot count. */
    struct eleos_req *slot = NULL;
    uint32_t i = slot_hint & mask;
    for (uint64_t k = 0; k < nslots; k++, i = (i + 1) & mask) {
        struct eleos_req *s = ELEOS_RING_SLOT(r, nslots, i);
        uint32_t expect = ELEOS_SLOT_FREE;
        if (LOAD_RELAXED(&s->state) == ELEOS_SLOT_FREE &&
            CAS(&s->state, &expect, ELEOS_SLOT_CLAIMED)) {
            slot = s;
            break;
        }
    }
    if (!slot)
        return fallback(ref, r, C_FALLBACK_FULL);
    slot_hint = i;
    if (!next_ticket)
        next_ticket = (__atomic_add_fetch(&thread_numbers, 1, __ATOMIC_RELAXED) << 40) + 1;
    const uint64_t t = next_ticket++;
    uint64_t *posted_word = ELEOS_RING_POSTED(r) + i / 64;
    const uint64_t bit = 1ull << (i % 64);

    slot->op = in.op;
    memcpy(slot->args, in.args, sizeof slot->args);
    slot->buf = in.buf;
    slot->buf_len = in.buf_len;
    slot->buf2 = in.buf2;
    slot->buf2_len = in.buf2_len;
    slot->ret = 0;
    slot->out_len = 0;
    slot->out2_len = 0;
    slot->seq = t;
    STORE(&slot->state, ELEOS_SLOT_POSTED);
    __atomic_fetch_or(posted_word, bit, __ATOMIC_SEQ_CST);
    /* Pairs with a worker's "sleepers++ then look at the bitmap": either it sees this post
     * and stays up, or we see it asleep here, take the request back and wake it. */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    int why = -1;
    if (LOAD_RELAXED(&r->sleepers) && all_asleep(r))
        why = C_FALLBACK_ASLEEP;

    uint32_t st;
    uint64_t polls = 0;
    const uint32_t backoff = LOAD_RELAXED(&ref->backoff);
    const uint64_t budget_take = spin >> backoff;
    while ((st = LOAD(&slot->state)) == ELEOS_SLOT_POSTED) {
        if (why >= 0 || polls++ >= budget_take) {
            uint32_t posted = ELEOS_SLOT_POSTED;
            if (CAS(&slot->state, &posted, ELEOS_SLOT_ABANDON)) {
                /* Taken back: no worker will run it.  Clear its bit before freeing it, so the
                 * next post of this slot sets a bit that is not ours.  The OCALL the caller
                 * makes now can wake a sleeper for the calls that follow. */
                __atomic_fetch_and(posted_word, ~bit, __ATOMIC_SEQ_CST);
                STORE(&slot->state, ELEOS_SLOT_FREE);
                if (why >= 0 || (LOAD_RELAXED(&r->sleepers) && !LOAD_RELAXED(&r->wake_pending)))
                    wake_worker(ref, r);
                if (why < 0 && backoff < MAX_BACKOFF)
                    __atomic_store_n(&ref->backoff, backoff + 1, __ATOMIC_RELAXED);
                return fallback(ref, r, why >= 0 ? why : C_FALLBACK_TIMEOUT);
            }
            st = posted;                                       /* taken at the last moment */
            break;
        }
        relax();
    }
    if (backoff)
        __atomic_store_n(&ref->backoff, backoff - 1, __ATOMIC_RELAXED);
    /* Taken: the call is running; wait for it without a limit, as an OCALL would. */
    polls = 0;
    while (st == ELEOS_SLOT_TAKEN) {
        if (++polls > YIELD_AFTER_POLLS) sched_yield(); else relax();
        st = LOAD(&slot->state);
    }

    /* The reply, read once: only these copies are checked and handed back. */
    int rc = ELEOS_RPC_DONE;
    const int64_t ret = LOAD_RELAXED(&slot->ret);
    const unsigned long long out_len = LOAD_RELAXED(&slot->out_len);
    const unsigned long long out2_len = LOAD_RELAXED(&slot->out2_len);
    const unsigned long long seq = LOAD_RELAXED(&slot->seq);
    int64_t args[6];
    for (int k = 0; k < 6; k++)
        args[k] = LOAD_RELAXED(&slot->args[k]);
    const unsigned long long cap = in.buf_len, cap2 = in.buf2_len;
    if (st != ELEOS_SLOT_DONE) {
        snprintf(last_error, sizeof last_error,
                 "slot state %u where a worker must publish DONE (%u)", st, ELEOS_SLOT_DONE);
        rc = corrupt(ref);
    } else if (seq != t) {
        snprintf(last_error, sizeof last_error,
                 "slot seq %llu is not the ticket %llu that posted it", seq, (unsigned long long)t);
        rc = corrupt(ref);
    } else if (out_len > cap) {
        snprintf(last_error, sizeof last_error,
                 "host wrote %llu bytes into a buffer of %llu", out_len, cap);
        rc = corrupt(ref);
    } else if (out2_len > cap2) {
        snprintf(last_error, sizeof last_error,
                 "host wrote %llu bytes into a second buffer of %llu", out2_len, cap2);
        rc = corrupt(ref);
    } else if (ret < -(int64_t)ELEOS_MAX_ERRNO) {
        snprintf(last_error, sizeof last_error,
                 "result %lld is neither a result nor an errno", (long long)ret);
        rc = corrupt(ref);
    }
    if (rc == ELEOS_RPC_DONE) {
        memcpy(req->args, args, sizeof req->args);
        req->ret = ret;
        req->out_len = out_len;
        req->out2_len = out2_len;
    }
    /* Give the slot back.  Also after a corruption: the enclave stops trusting the reply,
     * not the ring, which it only ever indexes with its own `mask`; each reply is matched to
     * its call by the ticket, which no other call has. */
    STORE(&slot->state, ELEOS_SLOT_FREE);
    return rc;
}

uintptr_t enclave_rpc_fn(void) { return (uintptr_t)&enclave_rpc; }

/* Benchmark: `n` NOP calls through the ring from C (no Python per call), to measure the
 * cross-core hand-off itself.  Returns how many a worker ran (the rest fell back and were
 * not run), or -1 on a corrupted reply. */
int64_t enclave_rpc_nop_loop(uintptr_t ring, uint64_t n, uint64_t spin)
{
    struct eleos_req req;
    int64_t done = 0;
    for (uint64_t i = 0; i < n; i++) {
        memset(&req, 0, sizeof req);
        req.op = ELEOS_OP_NOP;
        int rc = enclave_rpc(ring, &req, spin);
        if (rc == ELEOS_RPC_DONE) done++;
        else if (rc == ELEOS_RPC_CORRUPT) return -1;
    }
    return done;
}

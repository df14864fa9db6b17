/*
 * enclave_ocalls.c - TRUSTED side: the enclave's syscall stubs (the edger8r-style bridge).
 *
 * enclave_call() runs one request that trusted/syscall.py staged, on the path the
 * configuration chose:
 *   direct - the host handler is called as a plain function (no enclave: the baseline);
 *   ocall  - EEXIT, the host handler, EENTER, then the indirect cost (cache/TLB pollution),
 *            all charged through the modeled CPU's function pointers;
 *   rpc    - the request goes to the exit-less RPC ring (enclave_rpc.c); if no worker takes
 *            it in time, or the ring is full, it falls back to an OCALL.
 * It counts every call per OCALL number and path with atomics, so the stats are exact under
 * many app threads.  Everything runs with the GIL released (cffi drops it around C calls).
 *
 * The host is hostile and the staged request (struct eleos_req) lives in its memory, where it
 * may rewrite any field at any time, in its reply or from a racing thread.  So the enclave
 * keeps its own copy (struct enclave_stage, enclave memory; see enclave_ocalls.cdef): every
 * pointer, length, op and argument it uses comes from that copy; the untrusted request is
 * written from it before each call, and the reply's ret, out_len, out2_len and args are read
 * once, into the copy, after it.  Nothing the host wrote is ever read again, and no address
 * the host wrote is ever copied to.
 */
#include <stdint.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "eleos_abi.h"
#include "enclave_ocalls.cdef"   /* struct enclave_stage and the prototypes (one definition) */

static eleos_host_dispatch_fn host_dispatch;
static eleos_cpu_charge_fn cpu_charge;
static eleos_cpu_pollute_fn cpu_pollute;
static eleos_enclave_rpc_fn rpc_submit;
static uintptr_t rpc_ring;
static uint64_t rpc_spin;
/* How a wait that may block runs on the rpc path (ELEOS_RPC_WAIT, see rpc_wait below):
 * 1 = spin (Eleos), 0 = ocall (it exits). */
static int rpc_wait_spin = 1;
/* Waits on the rpc path that found nothing ready through the ring and blocked in place. */
static uint64_t waits_blocked;

/* counts[op][path]: path 0 direct, 1 ocall, 2 rpc, 3 fallback */
static uint64_t counts[ELEOS_OP_COUNT][4];
/* The path this thread's last call took: ELEOS_PROFILE (eleos_shim/profile.py) attributes
 * the exits to the app's source line from it. */
static __thread int last_path;
int enclave_last_path(void) { return last_path; }
/* TSC cycles spent per op in enclave_call (the exit or the ring, the host's syscall): the
 * report's mean latency per call.  Two rdtsc and one relaxed add, 15-30 ns a call on the
 * Xeon VM, so only when stats are asked for (enclave_time_calls(1), by the loader). */
static uint64_t call_cycles[ELEOS_OP_COUNT];
static int time_calls;
void enclave_time_calls(int on) { time_calls = on; }
void enclave_call_cycles(uint64_t *out, int n)
{
    for (int op = 0; op < ELEOS_OP_COUNT && op < n; op++)
        out[op] = __atomic_load_n(&call_cycles[op], __ATOMIC_RELAXED);
}
static inline uint64_t tsc_now(void)
{
#if defined(__x86_64__) || defined(__i386__)
    return __builtin_ia32_rdtsc();
#else
    return 0;
#endif
}

/* What enclave_call/enclave_submit return besides a path (st->why says why). */
#define ENCLAVE_CORRUPT (-1)    /* the RPC slot came back impossible: IagoError */
#define ENCLAVE_MISUSE  (-2)    /* the request does not fit the staging (a caller's bug) */

/* One load of a host-written field: the compiler may neither repeat nor defer it. */
#define READ_ONCE(x) __atomic_load_n(&(x), __ATOMIC_RELAXED)

void enclave_bind(uintptr_t dispatch, uintptr_t charge, uintptr_t pollute)
{
    host_dispatch = (eleos_host_dispatch_fn)dispatch;
    cpu_charge = (eleos_cpu_charge_fn)charge;
    cpu_pollute = (eleos_cpu_pollute_fn)pollute;
}

void enclave_bind_rpc(uintptr_t submit, uintptr_t ring, uint64_t spin)
{
    rpc_submit = (eleos_enclave_rpc_fn)submit;
    rpc_ring = ring;
    rpc_spin = spin;
}

void enclave_rpc_wait_mode(int spin) { rpc_wait_spin = spin; }
uint64_t enclave_waits_blocked(void) { return __atomic_load_n(&waits_blocked, __ATOMIC_RELAXED); }

static inline void count(uint32_t op, int path)
{
    last_path = path;
    if (op < ELEOS_OP_COUNT)
        __atomic_add_fetch(&counts[op][path], 1, __ATOMIC_RELAXED);
}

/* Hand the host the request: the untrusted copy is overwritten whole from the enclave's. */
static inline struct eleos_req *publish(struct enclave_stage *st)
{
    struct eleos_req *h = (struct eleos_req *)(uintptr_t)st->host_req;
    memcpy(h, &st->mine, sizeof *h);
    return h;
}

/* The reply, read once into the enclave's copy; op, buffers and lengths are not read back. */
static inline void take_reply(struct enclave_stage *st, const struct eleos_req *h)
{
    st->mine.ret = READ_ONCE(h->ret);
    st->mine.out_len = READ_ONCE(h->out_len);
    st->mine.out2_len = READ_ONCE(h->out2_len);
    for (int i = 0; i < 6; i++)
        st->mine.args[i] = READ_ONCE(h->args[i]);
}

static inline void run_direct(struct enclave_stage *st)
{
    struct eleos_req *h = publish(st);
    host_dispatch(h);
    take_reply(st, h);
}

static inline void ocall(struct enclave_stage *st)
{
    struct eleos_req *h = publish(st);
    cpu_charge(ELEOS_T_EEXIT);
    host_dispatch(h);
    cpu_charge(ELEOS_T_EENTER);
    take_reply(st, h);
    cpu_pollute();
}

const char *enclave_rpc_last_error(void);

/* A path of the enclave's own, never counted as such: a wait (poll or epoll_wait with a
 * timeout) on the rpc path, with ELEOS_RPC_WAIT=spin (wait_path below). */
#define PATH_RPC_WAIT 4

/* Hand a request to the ring.  ELEOS_RPC_DONE: the reply is in st->mine (read once);
 * ENCLAVE_CORRUPT: st->why says why; ELEOS_RPC_FALLBACK: not run, st->mine untouched. */
static int rpc_try(struct enclave_stage *st)
{
    if (!rpc_submit)
        return ELEOS_RPC_FALLBACK;
    int rc = rpc_submit(rpc_ring, &st->mine, rpc_spin);
    if (rc == ELEOS_RPC_CORRUPT) {
        snprintf(st->why, sizeof st->why, "%s", enclave_rpc_last_error());
        return ENCLAVE_CORRUPT;
    }
    return rc;
}

/* A wait that may block, exit-less, as Eleos makes it.  Eleos's enclave thread hands every
 * call to a worker and spins for the answer, blocking calls included (acsl-technion/eleos,
 * rpc_ocall.cpp): it never exits, and its spin has a core of its own.  The shim has no core to
 * spare (the paper's server had one per thread, and was saturated, so its waits found events
 * ready), and a spinning thread would take the core its own clients need.  So the wait goes
 * through the ring first with a timeout of 0: real hand-off, real worker, and what a busy
 * server gets is its events.  Only if nothing is ready does the thread block in the host's
 * wait itself, for the timeout it asked for, in place of Eleos's spin: no exit is charged,
 * as none is made in Eleos, and the worker is never tied up by a blocking call, so other
 * threads keep it.  A signal interrupts that wait as it interrupts an OCALL's (EINTR).
 * If the ring does not take the first try (no worker, all asleep, full), the wait is an OCALL,
 * as any call that falls back.
 * The two steps are two crossings from Python: after a first step that found nothing ready
 * (or fell back) this returns PATH_WAIT_AGAIN with st->wait_next set, the caller returns to
 * Python, where a signal that came during the first step has its handler run (the eval loop
 * checks after each C call), and calls again for the second step.  In one crossing such a
 * signal would wait for the end of the wait, for ever for a wait without a timeout. */
#define PATH_WAIT_AGAIN 5
#define WAIT_IN_PLACE 1
#define WAIT_OCALL 2
static int rpc_wait(struct enclave_stage *st)
{
    struct eleos_req *m = &st->mine;
    const uint32_t op = m->op;
    const int next = st->wait_next;
    st->wait_next = 0;
    if (next == WAIT_IN_PLACE) {
        /* Nothing was ready: the wait, in place of the spin. */
        run_direct(st);
        __atomic_add_fetch(&waits_blocked, 1, __ATOMIC_RELAXED);
        count(op, ELEOS_PATH_RPC);
        return ELEOS_PATH_RPC;
    }
    if (next == WAIT_OCALL) {
        ocall(st);
        count(op, ELEOS_PATH_FALLBACK);
        return ELEOS_PATH_FALLBACK;
    }
    /* The first step, with a timeout of 0.  Nothing of this request (the ring copied the
     * host's args back into m) reaches the second step: its crossing builds it anew. */
    m->args[op == ELEOS_OP_POLL ? 1 : 2] = 0;
    int rc = rpc_try(st);
    if (rc == ENCLAVE_CORRUPT)
        return rc;
    if (rc == ELEOS_RPC_DONE) {
        count(op, ELEOS_PATH_RPC);
        if (m->ret != 0)
            return ELEOS_PATH_RPC;                      /* ready (or an error): done */
        st->wait_next = WAIT_IN_PLACE;
    } else {
        st->wait_next = WAIT_OCALL;
    }
    return PATH_WAIT_AGAIN;
}

static int call_path(int path, struct enclave_stage *st);

/* Run st->mine on `path`.  Returns the path taken (0..3), or ENCLAVE_CORRUPT if the RPC slot
 * came back impossible (st->why says why).  With stats asked for, the TSC cycles of each call
 * are added to its op's total (the report's mean latency). */
int enclave_call(int path, struct enclave_stage *st)
{
    if (!time_calls)
        return call_path(path, st);
    const uint32_t op = st->mine.op;    /* the enclave's own copy */
    uint64_t t0 = tsc_now();
    int taken = call_path(path, st);
    if (op < ELEOS_OP_COUNT)
        __atomic_add_fetch(&call_cycles[op], tsc_now() - t0, __ATOMIC_RELAXED);
    return taken;
}

static int call_path(int path, struct enclave_stage *st)
{
    const uint32_t op = st->mine.op;
    switch (path) {
    case ELEOS_PATH_DIRECT:
        run_direct(st);
        count(op, ELEOS_PATH_DIRECT);
        return ELEOS_PATH_DIRECT;
    case ELEOS_PATH_RPC: {
        /* The producer builds the slot from the enclave's copy and reads the reply back
         * into it, once (enclave_rpc.c). */
        int rc = rpc_try(st);
        if (rc == ELEOS_RPC_DONE) {
            count(op, ELEOS_PATH_RPC);
            return ELEOS_PATH_RPC;
        }
        if (rc == ENCLAVE_CORRUPT)
            return rc;
        ocall(st);
        count(op, ELEOS_PATH_FALLBACK);
        return ELEOS_PATH_FALLBACK;
    }
    case PATH_RPC_WAIT:
        return rpc_wait(st);
    default:
        ocall(st);
        count(op, ELEOS_PATH_OCALL);
        return ELEOS_PATH_OCALL;
    }
}

void enclave_counts(uint64_t *out, int n)
{
    for (int op = 0; op < ELEOS_OP_COUNT && op * 4 + 3 < n; op++)
        for (int p = 0; p < 4; p++)
            out[op * 4 + p] = __atomic_load_n(&counts[op][p], __ATOMIC_RELAXED);
}

void enclave_reset_counts(void)
{
    memset(counts, 0, sizeof counts);
    memset(call_cycles, 0, sizeof call_cycles);
    __atomic_store_n(&waits_blocked, 0, __ATOMIC_RELAXED);
}

/* Stage and run in one crossing from Python: build the request in the enclave's copy, copy
 * the inputs into the staging buffers at the addresses the enclave allocated (the equivalent
 * of sgx_ocalloc + memcpy), run it.  Returns as enclave_call, or ENCLAVE_MISUSE (nothing run)
 * when the inputs do not fit the buffers the staging has: the caller grows them first. */
int enclave_submit(int path, struct enclave_stage *st, uint32_t op,
                   int64_t a0, int64_t a1, int64_t a2, int64_t a3, int64_t a4, int64_t a5,
                   const char *in, uint64_t n_in, uint64_t len1,
                   const char *in2, uint64_t n_in2, uint64_t len2)
{
    if (n_in > len1 || len1 > st->cap || n_in2 > len2 || len2 > st->cap2) {
        snprintf(st->why, sizeof st->why, "request of %llu/%llu bytes does not fit staging "
                 "buffers of %llu/%llu", (unsigned long long)len1, (unsigned long long)len2,
                 (unsigned long long)st->cap, (unsigned long long)st->cap2);
        return ENCLAVE_MISUSE;
    }
    struct eleos_req *m = &st->mine;
    m->state = 0;
    m->op = op;
    m->args[0] = a0; m->args[1] = a1; m->args[2] = a2;
    m->args[3] = a3; m->args[4] = a4; m->args[5] = a5;
    m->buf = st->buf;
    m->buf_len = len1;
    m->buf2 = st->buf2;
    m->buf2_len = len2;
    m->ret = 0;
    m->out_len = 0;
    m->out2_len = 0;
    m->seq = 0;
    if (n_in) memcpy((void *)(uintptr_t)st->buf, in, n_in);
    if (n_in2) memcpy((void *)(uintptr_t)st->buf2, in2, n_in2);
    return enclave_call(path, st);
}

/* n back-to-back calls of the staged request on one path, for calibration and benchmarks:
 * returns the elapsed CLOCK_MONOTONIC nanoseconds (no Python in the loop). */
uint64_t enclave_bench(int path, struct enclave_stage *st, uint64_t n)
{
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (uint64_t i = 0; i < n; i++)
        enclave_call(path, st);
    clock_gettime(CLOCK_MONOTONIC, &b);
    return (uint64_t)(b.tv_sec - a.tv_sec) * 1000000000ull + (uint64_t)(b.tv_nsec - a.tv_nsec);
}

/* The common shape in one narrower crossing (each cffi argument costs): three arguments and
 * one input/output buffer, nothing in buffer 2. */
int enclave_submit1(int path, struct enclave_stage *st, uint32_t op,
                    int64_t a0, int64_t a1, int64_t a2,
                    const char *in, uint64_t n_in, uint64_t len1)
{
    return enclave_submit(path, st, op, a0, a1, a2, 0, 0, 0, in, n_in, len1, NULL, 0, 0);
}

/* The data path in one crossing, checked here: write / send(fd, in[0:n], flags) out of the
 * enclave and read / recv(fd, n, flags) into buffer 1, no address, no offset.  A server's
 * request costs two of them, so they skip what the general path pays in Python (the reply
 * tuple, the per-op checks) and check the reply in C instead.  Each returns what the app's
 * call returns (a count, or -errno), or ENCLAVE_LIE when the reply cannot be true (then
 * st->why says why): a result that is neither a count nor an errno, a count above what was
 * asked or given, data the host claims beyond the buffer, alongside an error or in buffer 2,
 * or a corrupted RPC slot.  After enclave_in the bytes are in buffer 1 (st->buf), as many as
 * the result says.  Any other op is refused. */
#define ENCLAVE_LIE (-((int64_t)1 << 62))
/* ... or ENCLAVE_BUG when the request does not fit what the caller gave (nothing run). */
#define ENCLAVE_BUG (ENCLAVE_LIE - 1)
/* A wait's answer after its first step (rpc_wait): call again, for the second. */
#define ENCLAVE_WAIT_AGAIN (ENCLAVE_LIE - 3)

static const char *op_word(uint32_t op)
{
    switch (op) {
    case ELEOS_OP_WRITE: return "write";
    case ELEOS_OP_SENDTO: return "send";
    case ELEOS_OP_READ: return "read";
    default: return "recv";
    }
}

static int64_t lied(struct enclave_stage *st, uint32_t op, int64_t ret, uint64_t out_len,
                    uint64_t out2_len, uint64_t n)
{
    snprintf(st->why, sizeof st->why, "host's reply to %s of %llu bytes cannot be true: "
             "result %lld, %llu/%llu bytes written", op_word(op), (unsigned long long)n,
             (long long)ret, (unsigned long long)out_len, (unsigned long long)out2_len);
    return ENCLAVE_LIE;
}

/* The request is staged and run as enclave_submit does; then the reply, as read once into
 * the enclave's copy, is checked. */
static inline int64_t run_checked(int path, struct enclave_stage *st, uint32_t op, int64_t fd,
                                  int64_t a1, const char *in, uint64_t n_in, uint64_t n,
                                  int inward)
{
    int taken = enclave_submit(path, st, op, fd, a1, 0, 0, 0, 0, in, n_in, n, NULL, 0, 0);
    if (taken < 0) {
        if (taken == ENCLAVE_CORRUPT) {
            char why[sizeof st->why];
            memcpy(why, st->why, sizeof why);
            snprintf(st->why, sizeof st->why, "RPC slot for %s came back corrupted: %.150s",
                     op_word(op), why);
        }
        return ENCLAVE_LIE;
    }
    const int64_t ret = st->mine.ret;
    const uint64_t out_len = st->mine.out_len, out2_len = st->mine.out2_len;
    if (ret < -(int64_t)ELEOS_MAX_ERRNO || out2_len || (uint64_t)(ret > 0 ? ret : 0) > n)
        return lied(st, op, ret, out_len, out2_len, n);
    if (inward ? (ret < 0 ? out_len != 0 : out_len != (uint64_t)ret) : out_len != 0)
        return lied(st, op, ret, out_len, out2_len, n);
    /* A socket takes at least a byte of non-empty data or says EAGAIN: a 0 would make the
     * app's send loop (sendall) spin for ever.  (A write of 0 is left to the LibOS: a few
     * device files may answer it.) */
    if (op == ELEOS_OP_SENDTO && ret == 0 && n)
        return lied(st, op, ret, out_len, out2_len, n);
    return ret;
}

/* Each takes its path from the staging (st->path, the transport's): every argument cffi
 * converts costs the app's call 10-50 ns, and a server makes two of these per request. */

/* op: ELEOS_OP_WRITE (flags unused) or ELEOS_OP_SENDTO. */
int64_t enclave_out(struct enclave_stage *st, uint32_t op, int64_t fd, int64_t flags,
                    const char *in, uint64_t n)
{
    const int path = st->path;
    if (op != ELEOS_OP_WRITE && op != ELEOS_OP_SENDTO) {
        snprintf(st->why, sizeof st->why, "op %u is not a write or a send", op);
        return ENCLAVE_LIE;
    }
    return run_checked(path, st, op, fd, op == ELEOS_OP_SENDTO ? flags : 0, in, n, n, 0);
}

/* op: ELEOS_OP_READ or ELEOS_OP_RECVFROM (without flags: MSG_TRUNC would let the result
 * exceed the bytes written, which the general path checks). */
int64_t enclave_in(struct enclave_stage *st, uint32_t op, int64_t fd, uint64_t n)
{
    const int path = st->path;
    if (op != ELEOS_OP_READ && op != ELEOS_OP_RECVFROM) {
        snprintf(st->why, sizeof st->why, "op %u is not a read or a recv", op);
        return ENCLAVE_LIE;
    }
    return run_checked(path, st, op, fd, (int64_t)n, NULL, 0, n, 1);
}

/* recv_into / readinto: as enclave_in, then the bytes go straight from buffer 1 into the
 * app's buffer `dst` (enclave memory, `dst_len` bytes), read once, by the checked count. */
int64_t enclave_in_into(struct enclave_stage *st, uint32_t op, int64_t fd, uint64_t n,
                        char *dst, uint64_t dst_len)
{
    const int path = st->path;
    if ((op != ELEOS_OP_READ && op != ELEOS_OP_RECVFROM) || n > dst_len) {
        snprintf(st->why, sizeof st->why, "op %u of %llu bytes into %llu is not a read or a "
                 "recv that fits", op, (unsigned long long)n, (unsigned long long)dst_len);
        return ENCLAVE_BUG;
    }
    int64_t ret = run_checked(path, st, op, fd, (int64_t)n, NULL, 0, n, 1);
    if (ret > 0)
        memcpy(dst, (const void *)(uintptr_t)st->buf, (size_t)ret);
    return ret;
}

/* -- waits: epoll_wait and poll, checked here ---------------------------------------------
 * A wait's reply is a table the host fills: what comes back is read once, record by record,
 * into enclave memory (`out`), and checked on the way.  Each checker takes the reply as the
 * enclave read it (ret, out_len, out2_len) and the host's records (`raw`), so that the same
 * checks serve the crossing below and a reply that reached the enclave some other way (the
 * tests' lying host).  Each returns what the app's call returns (a count, or -errno) or
 * ENCLAVE_LIE with `why` said. */
#define EPOLL_EVENT_SIZE 12     /* struct epoll_event, packed on x86_64: u32 events, u64 data */
#define POLLFD_SIZE 8           /* struct pollfd: int fd, short events, short revents */
#define WAIT_ALWAYS (0x008 | 0x010 | 0x020)     /* POLLERR | POLLHUP | POLLNVAL */
#define WAIT_NVAL 0x020
#define WHY_SIZE sizeof(((struct enclave_stage *)0)->why)

static int64_t wait_lie(char *why, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int64_t wait_lie(char *why, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, WHY_SIZE, fmt, ap);
    va_end(ap);
    return ENCLAVE_LIE;
}

/* The generic reply checks of a wait: an errno, or a count with exactly its records. */
static int wait_reply_ok(char *why, const char *name, int64_t ret, uint64_t out_len,
                         uint64_t out2_len)
{
    if (ret < -(int64_t)ELEOS_MAX_ERRNO || out2_len || (ret < 0 && out_len)) {
        wait_lie(why, "host's %s reply cannot be true: result %lld, %llu/%llu bytes written",
                 name, (long long)ret, (unsigned long long)out_len,
                 (unsigned long long)out2_len);
        return 0;
    }
    return 1;
}

static int cmp_i32(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* fds[0:n] in ascending order: a server's wait reports a few dozen fds at most, which an
 * insertion sort orders without qsort's calls through a comparator (and its temporary). */
#define SORT_SMALL 32
static void sort_fds(int32_t *fds, int64_t n)
{
    if (n > SORT_SMALL) {
        qsort(fds, (size_t)n, sizeof *fds, cmp_i32);
        return;
    }
    for (int64_t i = 1; i < n; i++) {
        const int32_t v = fds[i];
        int64_t j = i;
        for (; j > 0 && fds[j - 1] > v; j--)
            fds[j] = fds[j - 1];
        fds[j] = v;
    }
}

/* epoll_wait's events: at most `maxevents`, as many records as the count says, each naming a
 * possible fd (data.u64 carries it) at most once.  `out` receives (int32 fd, uint32 events)
 * per event, what select.epoll.poll returns, and needs 12 bytes per maxevents (the last 4 are
 * scratch).  Each has some event, and a wait without a timeout (`ms` < 0) has some.  Whether
 * each fd was registered, and for what, is the LibOS's to check. */
int64_t enclave_epoll_events(char *why, int64_t ret, uint64_t out_len, uint64_t out2_len,
                             const char *raw, int64_t maxevents, int64_t ms, char *out,
                             uint64_t out_cap)
{
    if (maxevents <= 0 || maxevents > INT32_MAX ||
            (uint64_t)maxevents * EPOLL_EVENT_SIZE > out_cap) {
        snprintf(why, WHY_SIZE, "epoll_wait of %lld events does not fit %llu bytes",
                 (long long)maxevents, (unsigned long long)out_cap);
        return ENCLAVE_BUG;
    }
    if (!wait_reply_ok(why, "epoll_wait", ret, out_len, out2_len))
        return ENCLAVE_LIE;
    if (ret < 0)
        return ret;
    if (ret > maxevents || out_len != (uint64_t)ret * EPOLL_EVENT_SIZE)
        return wait_lie(why, "host's epoll_wait returned %lld events in %llu bytes "
                        "(maxevents %lld)", (long long)ret, (unsigned long long)out_len,
                        (long long)maxevents);
    if (!ret && ms < 0)
        return wait_lie(why, "host's epoll_wait without a timeout came back with nothing "
                        "ready");
    int32_t *rec = (int32_t *)out;
    for (int64_t i = 0; i < ret; i++) {
        uint32_t events;
        uint64_t data;
        memcpy(&events, raw + i * EPOLL_EVENT_SIZE, 4);       /* each field read once */
        memcpy(&data, raw + i * EPOLL_EVENT_SIZE + 4, 8);
        if (data >= (uint64_t)1 << 31)
            return wait_lie(why, "host's epoll_wait names an impossible fd %llu",
                            (unsigned long long)data);
        /* The kernel reports an fd only for an event that is ready (ep_send_events skips an
         * item whose poll gives none). */
        if (!events)
            return wait_lie(why, "host's epoll_wait reports fd %llu with no events",
                            (unsigned long long)data);
        rec[2 * i] = (int32_t)data;
        memcpy(&rec[2 * i + 1], &events, 4);
    }
    /* The kernel reports each ready fd once per wait. */
    int32_t *fds = (int32_t *)(out + 8 * maxevents);
    for (int64_t i = 0; i < ret; i++)
        fds[i] = rec[2 * i];
    sort_fds(fds, ret);
    for (int64_t i = 1; i < ret; i++)
        if (fds[i] == fds[i - 1])
            return wait_lie(why, "host's epoll_wait reports fd %d twice", fds[i]);
    return ret;
}

/* poll's pollfd table, against the one the enclave sent (`fds`, `events`: nfds entries): the
 * same fds and events in the same order, revents only of what was asked (ERR/HUP always may
 * be; NVAL may, alone), none on an ignored (negative) fd, as many ready entries as the count
 * says, and some if the wait had no timeout (`ms` < 0).
 * `out` receives (int32 fd, uint32 revents) per ready entry, what select.poll.poll returns
 * (8 bytes per nfds). */
int64_t enclave_poll_events(char *why, int64_t ret, uint64_t out_len, uint64_t out2_len,
                            const char *raw, const int32_t *fds, const int16_t *events,
                            int64_t nfds, int64_t ms, char *out, uint64_t out_cap)
{
    if (nfds < 0 || nfds > INT32_MAX || (uint64_t)nfds * POLLFD_SIZE > out_cap) {
        snprintf(why, WHY_SIZE, "poll of %lld fds does not fit %llu bytes", (long long)nfds,
                 (unsigned long long)out_cap);
        return ENCLAVE_BUG;
    }
    if (!wait_reply_ok(why, "poll", ret, out_len, out2_len))
        return ENCLAVE_LIE;
    if (ret < 0)
        return ret;
    if (out_len != (uint64_t)nfds * POLLFD_SIZE || ret > nfds)
        return wait_lie(why, "host's poll reply holds %llu bytes and %lld ready fds for %lld "
                        "fds", (unsigned long long)out_len, (long long)ret, (long long)nfds);
    if (!ret && ms < 0)
        return wait_lie(why, "host's poll without a timeout came back with nothing ready");
    int32_t *rec = (int32_t *)out;
    int64_t ready = 0;
    for (int64_t i = 0; i < nfds; i++) {
        int32_t rfd;
        int16_t rev;
        uint16_t rr;
        memcpy(&rfd, raw + i * POLLFD_SIZE, 4);               /* each field read once */
        memcpy(&rev, raw + i * POLLFD_SIZE + 4, 2);
        memcpy(&rr, raw + i * POLLFD_SIZE + 6, 2);
        if (rfd != fds[i] || rev != events[i])
            return wait_lie(why, "host's poll reply rewrote entry %lld (fd %lld -> %lld)",
                            (long long)i, (long long)fds[i], (long long)rfd);
        if (!rr)
            continue;
        if (fds[i] < 0)
            return wait_lie(why, "host's poll reports events on ignored entry %lld",
                            (long long)i);
        if (rr & ~((uint16_t)events[i] | WAIT_ALWAYS))
            return wait_lie(why, "host's poll reports events %#x on fd %d, which asked only "
                            "for %#x", rr, fds[i], (uint16_t)events[i]);
        /* NVAL is the kernel's answer for an fd that is not open, and then its only one (an
         * open fd's mask is its events as asked and ERR/HUP: do_pollfd). */
        if ((rr & WAIT_NVAL) && rr != WAIT_NVAL)
            return wait_lie(why, "host's poll reports NVAL with events %#x on fd %d", rr,
                            fds[i]);
        rec[2 * ready] = fds[i];       /* at most nfds records: out has room for them all */
        rec[2 * ready + 1] = (int32_t)rr;
        ready++;
    }
    if (ready != ret)
        return wait_lie(why, "host's poll says %lld fds are ready but marks %lld",
                        (long long)ret, (long long)ready);
    return ret;
}

/* A corrupted RPC slot, said as the data path says it. */
static int64_t wait_refused(struct enclave_stage *st, int taken, const char *name)
{
    if (taken == ENCLAVE_CORRUPT) {
        char why[sizeof st->why];
        memcpy(why, st->why, sizeof why);
        snprintf(st->why, sizeof st->why, "RPC slot for %s came back corrupted: %.150s",
                 name, why);
        return ENCLAVE_LIE;
    }
    return ENCLAVE_BUG;
}

/* The path of a wait.  One that may block (ms not 0) on the rpc path never ties up an RPC
 * worker: with ELEOS_RPC_WAIT=spin it is rpc_wait's (a try through the ring, then in place
 * of Eleos's spin), with ocall it exits. */
static inline int wait_path(const struct enclave_stage *st, int64_t ms)
{
    if (!ms || st->path != ELEOS_PATH_RPC)
        return st->path;
    return rpc_wait_spin ? PATH_RPC_WAIT : ELEOS_PATH_OCALL;
}

/* epoll_wait(epfd, maxevents, ms) in one crossing, its events checked into st->recs (as
 * enclave_epoll_events; at least 12 bytes per maxevents). */
int64_t enclave_epoll_wait(struct enclave_stage *st, int64_t epfd, int64_t maxevents,
                           int64_t ms)
{
    const int path = wait_path(st, ms);
    char *out = (char *)(uintptr_t)st->recs;
    const uint64_t out_cap = st->rcap;
    if (maxevents <= 0 || maxevents > INT32_MAX ||
            (uint64_t)maxevents * EPOLL_EVENT_SIZE > st->cap ||
            (uint64_t)maxevents * EPOLL_EVENT_SIZE > out_cap) {
        snprintf(st->why, sizeof st->why, "epoll_wait of %lld events does not fit its "
                 "buffers", (long long)maxevents);
        return ENCLAVE_BUG;
    }
    int taken = enclave_submit(path, st, ELEOS_OP_EPOLL_WAIT, epfd, maxevents, ms, 0, 0, 0,
                               NULL, 0, (uint64_t)maxevents * EPOLL_EVENT_SIZE, NULL, 0, 0);
    if (taken < 0)
        return wait_refused(st, taken, "epoll_wait");
    if (taken == PATH_WAIT_AGAIN)
        return ENCLAVE_WAIT_AGAIN;
    return enclave_epoll_events(st->why, st->mine.ret, st->mine.out_len, st->mine.out2_len,
                                (const char *)(uintptr_t)st->buf, maxevents, ms, out,
                                out_cap);
}

/* poll(fds, events, nfds, ms) in one crossing: the pollfd table is built in buffer 1 from the
 * enclave's own arrays and the reply checked against them into st->recs (as
 * enclave_poll_events; at least 8 bytes per nfds). */
int64_t enclave_poll(struct enclave_stage *st, const int32_t *fds, const int16_t *events,
                     int64_t nfds, int64_t ms)
{
    const int path = wait_path(st, ms);
    char *out = (char *)(uintptr_t)st->recs;
    const uint64_t out_cap = st->rcap;
    if (nfds < 0 || nfds > INT32_MAX || (uint64_t)nfds * POLLFD_SIZE > st->cap ||
            (uint64_t)nfds * POLLFD_SIZE > out_cap) {
        snprintf(st->why, sizeof st->why, "poll of %lld fds does not fit its buffers",
                 (long long)nfds);
        return ENCLAVE_BUG;
    }
    char *table = (char *)(uintptr_t)st->buf;
    for (int64_t i = 0; i < nfds; i++) {
        const int16_t zero = 0;
        memcpy(table + i * POLLFD_SIZE, &fds[i], 4);
        memcpy(table + i * POLLFD_SIZE + 4, &events[i], 2);
        memcpy(table + i * POLLFD_SIZE + 6, &zero, 2);
    }
    /* the table is already in place: staged as a request of nfds*8 bytes with no input copy */
    int taken = enclave_submit(path, st, ELEOS_OP_POLL, nfds, ms, 0, 0, 0, 0,
                               NULL, 0, (uint64_t)nfds * POLLFD_SIZE, NULL, 0, 0);
    if (taken < 0)
        return wait_refused(st, taken, "poll");
    if (taken == PATH_WAIT_AGAIN)
        return ENCLAVE_WAIT_AGAIN;
    return enclave_poll_events(st->why, st->mine.ret, st->mine.out_len, st->mine.out2_len,
                               table, fds, events, nfds, ms, out, out_cap);
}

/* The fused data path's narrowest crossings (trusted/syscall.py, Transport.fused): each
 * argument cffi converts costs 10-25 ns, so the op, and the flags where they are none, are
 * in the function's name.  As enclave_in; the writes and sends are enclave_write1/send1
 * below. */
int64_t enclave_read(struct enclave_stage *st, int64_t fd, uint64_t n)
{
    return run_checked(st->path, st, ELEOS_OP_READ, fd, (int64_t)n, NULL, 0, n, 1);
}

int64_t enclave_recv(struct enclave_stage *st, int64_t fd, uint64_t n)
{
    return run_checked(st->path, st, ELEOS_OP_RECVFROM, fd, (int64_t)n, NULL, 0, n, 1);
}

/* The staging area of this thread's fused writes and sends (trusted/syscall.py binds one per
 * thread, for one transport at a time), so that they cross without the Python lookup of a
 * thread's area, nor its arguments.  Nothing of it is read after a crossing, so a signal
 * handler's own write, between two of the app's, may use it too; no call that reads its reply
 * afterwards ever does (those take an area of their own). */
static __thread struct enclave_stage *out_stage;
/* Whose it is, kept beside the address: the area is looked at only for the transport that
 * bound it, which is alive while its fused calls run (and keeps its areas).  Another's may be
 * gone, its area freed and the memory reused (a transport's number is never reused). */
static __thread uint32_t out_owner;
#define ENCLAVE_UNBOUND (ENCLAVE_LIE - 2)   /* no area bound for this transport, or too small */

void enclave_bind_out(struct enclave_stage *st)
{
    out_owner = 0;
    out_stage = st;
    out_owner = st ? st->owner : 0;
}

int64_t enclave_write1(uint32_t owner, int64_t fd, const char *in, uint64_t n)
{
    struct enclave_stage *st = out_stage;
    if (!st || out_owner != owner || n > st->cap)
        return ENCLAVE_UNBOUND;
    return run_checked(st->path, st, ELEOS_OP_WRITE, fd, 0, in, n, n, 0);
}

int64_t enclave_send1(uint32_t owner, int64_t fd, const char *in, uint64_t n, int64_t flags)
{
    struct enclave_stage *st = out_stage;
    if (!st || out_owner != owner || n > st->cap)
        return ENCLAVE_UNBOUND;
    return run_checked(st->path, st, ELEOS_OP_SENDTO, fd, flags, in, n, n, 0);
}

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
#include <stdio.h>
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
    case ELEOS_PATH_RPC:
        if (rpc_submit) {
            /* The producer builds the slot from the enclave's copy and reads the reply back
             * into it, once (enclave_rpc.c). */
            int rc = rpc_submit(rpc_ring, &st->mine, rpc_spin);
            if (rc == ELEOS_RPC_DONE) {
                count(op, ELEOS_PATH_RPC);
                return ELEOS_PATH_RPC;
            }
            if (rc != ELEOS_RPC_FALLBACK) {
                snprintf(st->why, sizeof st->why, "%s", enclave_rpc_last_error());
                return ENCLAVE_CORRUPT;
            }
        }
        ocall(st);
        count(op, ELEOS_PATH_FALLBACK);
        return ELEOS_PATH_FALLBACK;
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

/* op: ELEOS_OP_WRITE (flags unused) or ELEOS_OP_SENDTO. */
int64_t enclave_out(int path, struct enclave_stage *st, uint32_t op, int64_t fd, int64_t flags,
                    const char *in, uint64_t n)
{
    if (op != ELEOS_OP_WRITE && op != ELEOS_OP_SENDTO) {
        snprintf(st->why, sizeof st->why, "op %u is not a write or a send", op);
        return ENCLAVE_LIE;
    }
    return run_checked(path, st, op, fd, op == ELEOS_OP_SENDTO ? flags : 0, in, n, n, 0);
}

/* op: ELEOS_OP_READ or ELEOS_OP_RECVFROM (without flags: MSG_TRUNC would let the result
 * exceed the bytes written, which the general path checks). */
int64_t enclave_in(int path, struct enclave_stage *st, uint32_t op, int64_t fd, uint64_t n)
{
    if (op != ELEOS_OP_READ && op != ELEOS_OP_RECVFROM) {
        snprintf(st->why, sizeof st->why, "op %u is not a read or a recv", op);
        return ENCLAVE_LIE;
    }
    return run_checked(path, st, op, fd, (int64_t)n, NULL, 0, n, 1);
}

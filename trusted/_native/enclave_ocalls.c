/*
 * enclave_ocalls.c - TRUSTED side: the enclave's syscall stubs (the edger8r-style bridge).
 *
 * enclave_call() runs one request that trusted/syscall.py staged in untrusted memory, on the
 * path the configuration chose:
 *   direct - the host handler is called as a plain function (no enclave: the baseline);
 *   ocall  - EEXIT, the host handler, EENTER, then the indirect cost (cache/TLB pollution),
 *            all charged through the modeled CPU's function pointers;
 *   rpc    - the request goes to the exit-less RPC ring (enclave_rpc.c); if no worker takes
 *            it in time, or the ring is full, it falls back to an OCALL.
 * It counts every call per OCALL number and path with atomics, so the stats are exact under
 * many app threads.  Everything runs with the GIL released (cffi drops it around C calls).
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include "eleos_abi.h"

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

static inline void ocall(struct eleos_req *req)
{
    cpu_charge(ELEOS_T_EEXIT);
    host_dispatch(req);
    cpu_charge(ELEOS_T_EENTER);
    cpu_pollute();
}

static int call_path(int path, struct eleos_req *req);

/* Returns the path taken (0..3), or -1 if the RPC slot came back corrupted (Iago). */
int enclave_call(int path, struct eleos_req *req)
{
    if (!time_calls)
        return call_path(path, req);
    uint32_t op = req->op;      /* read once: the host may rewrite the staged request */
    uint64_t t0 = tsc_now();
    int taken = call_path(path, req);
    if (op < ELEOS_OP_COUNT)
        __atomic_add_fetch(&call_cycles[op], tsc_now() - t0, __ATOMIC_RELAXED);
    return taken;
}

static int call_path(int path, struct eleos_req *req)
{
    switch (path) {
    case ELEOS_PATH_DIRECT:
        host_dispatch(req);
        count(req->op, ELEOS_PATH_DIRECT);
        return ELEOS_PATH_DIRECT;
    case ELEOS_PATH_RPC:
        if (rpc_submit) {
            int rc = rpc_submit(rpc_ring, req, rpc_spin);
            if (rc == ELEOS_RPC_DONE) {
                count(req->op, ELEOS_PATH_RPC);
                return ELEOS_PATH_RPC;
            }
            if (rc != ELEOS_RPC_FALLBACK)
                return -1;
        }
        ocall(req);
        count(req->op, ELEOS_PATH_FALLBACK);
        return ELEOS_PATH_FALLBACK;
    default:
        ocall(req);
        count(req->op, ELEOS_PATH_OCALL);
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

/* Stage and run in one crossing from Python: copy the inputs into the thread's untrusted
 * buffers (the equivalent of sgx_ocalloc + memcpy), fill the request, run it. */
int enclave_submit(int path, struct eleos_req *req, uint32_t op,
                   int64_t a0, int64_t a1, int64_t a2, int64_t a3, int64_t a4, int64_t a5,
                   const char *in, uint64_t n_in, uint64_t len1,
                   const char *in2, uint64_t n_in2, uint64_t len2)
{
    if (n_in) memcpy((void *)(uintptr_t)req->buf, in, n_in);
    if (n_in2) memcpy((void *)(uintptr_t)req->buf2, in2, n_in2);
    req->op = op;
    req->args[0] = a0; req->args[1] = a1; req->args[2] = a2;
    req->args[3] = a3; req->args[4] = a4; req->args[5] = a5;
    req->buf_len = len1;
    req->buf2_len = len2;
    return enclave_call(path, req);
}

/* n back-to-back calls of the staged request on one path, for calibration and benchmarks:
 * returns the elapsed CLOCK_MONOTONIC nanoseconds (no Python in the loop). */
#include <time.h>
uint64_t enclave_bench(int path, struct eleos_req *req, uint64_t n)
{
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (uint64_t i = 0; i < n; i++)
        enclave_call(path, req);
    clock_gettime(CLOCK_MONOTONIC, &b);
    return (uint64_t)(b.tv_sec - a.tv_sec) * 1000000000ull + (uint64_t)(b.tv_nsec - a.tv_nsec);
}

/* The common shape in one narrower crossing (each cffi argument costs): three arguments and
 * one input/output buffer, nothing in buffer 2. */
int enclave_submit1(int path, struct eleos_req *req, uint32_t op,
                    int64_t a0, int64_t a1, int64_t a2,
                    const char *in, uint64_t n_in, uint64_t len1)
{
    return enclave_submit(path, req, op, a0, a1, a2, 0, 0, 0, in, n_in, len1, NULL, 0, 0);
}

/* The data path in one crossing, checked here: write / send(fd, in[0:n], flags) out of the
 * enclave and read / recv(fd, n, flags) into buffer 1, no address, no offset.  A server's
 * request costs two of them, so they skip what the general path pays in Python (the reply
 * tuple, the per-op checks) and check the reply in C instead.  Each returns what the app's
 * call returns (a count, or -errno), or ENCLAVE_LIE when the reply cannot be true (then
 * enclave_lie() says why, for this thread): a result that is neither a count nor an errno,
 * a count above what was asked or given, data the host claims beyond the buffer, alongside
 * an error or in buffer 2, or a corrupted RPC slot.  enclave_in leaves the byte count the
 * host wrote in req->out_len (== the result).  Any other op is refused. */
#define ENCLAVE_LIE (-((int64_t)1 << 62))

const char *enclave_rpc_last_error(void);
static __thread char lie[200];

const char *enclave_lie(void) { return lie; }

static const char *op_word(uint32_t op)
{
    switch (op) {
    case ELEOS_OP_WRITE: return "write";
    case ELEOS_OP_SENDTO: return "send";
    case ELEOS_OP_READ: return "read";
    default: return "recv";
    }
}

static int64_t lied(uint32_t op, int64_t ret, uint64_t out_len, uint64_t out2_len, uint64_t n)
{
    snprintf(lie, sizeof lie, "host's reply to %s of %llu bytes cannot be true: result %lld, "
             "%llu/%llu bytes written", op_word(op), (unsigned long long)n, (long long)ret,
             (unsigned long long)out_len, (unsigned long long)out2_len);
    return ENCLAVE_LIE;
}

/* The request is staged and run as enclave_submit does; then the reply is checked. */
static inline int64_t run_checked(int path, struct eleos_req *req, uint32_t op, int64_t fd,
                                  int64_t a1, const char *in, uint64_t n_in, uint64_t n,
                                  int inward)
{
    if (enclave_submit(path, req, op, fd, a1, 0, 0, 0, 0, in, n_in, n, NULL, 0, 0) < 0) {
        snprintf(lie, sizeof lie, "RPC slot for %s came back corrupted: %s", op_word(op),
                 enclave_rpc_last_error());
        return ENCLAVE_LIE;
    }
    const int64_t ret = req->ret;
    const uint64_t out_len = req->out_len, out2_len = req->out2_len;
    if (ret < -(int64_t)ELEOS_MAX_ERRNO || out2_len || (uint64_t)(ret > 0 ? ret : 0) > n)
        return lied(op, ret, out_len, out2_len, n);
    if (inward ? (ret < 0 ? out_len != 0 : out_len != (uint64_t)ret) : out_len != 0)
        return lied(op, ret, out_len, out2_len, n);
    return ret;
}

/* op: ELEOS_OP_WRITE (flags unused) or ELEOS_OP_SENDTO. */
int64_t enclave_out(int path, struct eleos_req *req, uint32_t op, int64_t fd, int64_t flags,
                    const char *in, uint64_t n)
{
    if (op != ELEOS_OP_WRITE && op != ELEOS_OP_SENDTO) {
        snprintf(lie, sizeof lie, "op %u is not a write or a send", op);
        return ENCLAVE_LIE;
    }
    return run_checked(path, req, op, fd, op == ELEOS_OP_SENDTO ? flags : 0, in, n, n, 0);
}

/* op: ELEOS_OP_READ or ELEOS_OP_RECVFROM (without flags: MSG_TRUNC would let the result
 * exceed the bytes written, which the general path checks). */
int64_t enclave_in(int path, struct eleos_req *req, uint32_t op, int64_t fd, uint64_t n)
{
    if (op != ELEOS_OP_READ && op != ELEOS_OP_RECVFROM) {
        snprintf(lie, sizeof lie, "op %u is not a read or a recv", op);
        return ENCLAVE_LIE;
    }
    return run_checked(path, req, op, fd, (int64_t)n, NULL, 0, n, 1);
}

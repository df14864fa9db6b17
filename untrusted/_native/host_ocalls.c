/*
 * host_ocalls.c - UNTRUSTED side: the host's OCALL handlers.
 *
 * host_dispatch() runs one request of the ABI (eleos_abi.h) as a real system call and
 * writes back the result (>= 0 or -errno) and how many bytes it put in each buffer.  The same
 * function serves both transports: the enclave's OCALL stub calls it after EEXIT, and the RPC
 * workers call it from the ring without any exit.  It never touches Python, so it runs with
 * the GIL released and on native worker threads.  Buffers are untrusted memory the enclave
 * filled; the host trusts nothing either, so lengths are clamped to the stated capacity.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "eleos_abi.h"

#define BUF(r)  ((void *)(uintptr_t)(r)->buf)
#define BUF2(r) ((void *)(uintptr_t)(r)->buf2)
#define A(i)    (req->args[i])

static inline int64_t res(long rc) { return rc < 0 ? -(int64_t)errno : (int64_t)rc; }

/* A NUL-terminated path inside buffer 1 (or 2), or NULL if the enclave sent none. */
static const char *path_arg(uint64_t addr, uint64_t len)
{
    const char *p = (const char *)(uintptr_t)addr;
    if (!p || !len || memchr(p, 0, len) == NULL) return NULL;
    return p;
}

static void fill_stat(struct eleos_stat *out, const struct stat *st)
{
    out->dev = st->st_dev; out->ino = st->st_ino; out->nlink = st->st_nlink;
    out->mode = st->st_mode; out->uid = st->st_uid; out->gid = st->st_gid;
    out->rdev = st->st_rdev; out->size = (uint64_t)st->st_size;
    out->blksize = (uint64_t)st->st_blksize; out->blocks = (uint64_t)st->st_blocks;
    out->atime_ns = (int64_t)st->st_atim.tv_sec * 1000000000 + st->st_atim.tv_nsec;
    out->mtime_ns = (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec;
    out->ctime_ns = (int64_t)st->st_ctim.tv_sec * 1000000000 + st->st_ctim.tv_nsec;
}

static int64_t do_getaddrinfo(struct eleos_req *req)
{
    const char *strings = path_arg(req->buf, req->buf_len);
    if (!strings) return -EINVAL;
    size_t hl = strlen(strings);
    if (hl + 1 >= req->buf_len || !memchr(strings + hl + 1, 0, req->buf_len - hl - 1)) return -EINVAL;
    const char *host = strings[0] ? strings : NULL;
    const char *port = strings[hl + 1] ? strings + hl + 1 : NULL;
    struct addrinfo hints, *list = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = (int)A(0); hints.ai_socktype = (int)A(1);
    hints.ai_protocol = (int)A(2); hints.ai_flags = (int)A(3);
    int rc = getaddrinfo(host, port, &hints, &list);
    if (rc != 0) {
        if (rc == EAI_SYSTEM) return -(int64_t)errno;
        const char *msg = gai_strerror(rc);
        size_t n = strlen(msg);
        if (n > req->buf2_len) n = req->buf2_len;
        memcpy(BUF2(req), msg, n);
        req->out2_len = n;
        A(5) = rc;
        return 0;
    }
    uint8_t *out = BUF2(req);
    uint64_t used = 0, count = 0;
    for (struct addrinfo *ai = list; ai; ai = ai->ai_next) {
        uint32_t canon = ai->ai_canonname ? (uint32_t)strlen(ai->ai_canonname) : 0;
        int32_t head[4] = {ai->ai_family, ai->ai_socktype, ai->ai_protocol, (int32_t)ai->ai_addrlen};
        uint64_t need = sizeof head + sizeof canon + ai->ai_addrlen + canon;
        if (used + need > req->buf2_len) break;   /* what fits: the enclave asked for this much */
        memcpy(out + used, head, sizeof head); used += sizeof head;
        memcpy(out + used, &canon, sizeof canon); used += sizeof canon;
        memcpy(out + used, ai->ai_addr, ai->ai_addrlen); used += ai->ai_addrlen;
        if (canon) { memcpy(out + used, ai->ai_canonname, canon); used += canon; }
        count++;
    }
    freeaddrinfo(list);
    req->out2_len = used;
    return (int64_t)count;
}

/* The adversary's handle (tests, demos): make the next `count` replies lie.  A hostile host
 * can write anything into the request; these are the lies the enclave must catch. */
#define HOST_LIE_RET      1   /* ret = value */
#define HOST_LIE_OUT_LEN  2   /* out_len = value */
#define HOST_LIE_OUT2_LEN 3   /* out2_len = value */
#define HOST_LIE_RET_ADD  4   /* ret += value, out_len follows it */
/* Rewrites of the request itself, left in it after the reply: an enclave that reads its
 * buffer addresses, sizes or op back from untrusted memory is steered by them. */
#define HOST_LIE_BUF      5   /* buf = value (an address of the host's choosing) */
#define HOST_LIE_BUF2     6   /* buf2 = value */
#define HOST_LIE_BUF_LEN  7   /* buf_len = value */
#define HOST_LIE_OP       8   /* op = value */
static int lie_kind;
static int64_t lie_value;
static uint32_t lie_count;

void host_lie_next(int kind, int64_t value, uint32_t count)
{
    lie_kind = kind;
    lie_value = value;
    __atomic_store_n(&lie_count, count, __ATOMIC_RELEASE);
}

static void host_lie(struct eleos_req *req)
{
    uint32_t n = __atomic_load_n(&lie_count, __ATOMIC_ACQUIRE);
    while (n && !__atomic_compare_exchange_n(&lie_count, &n, n - 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
        ;
    if (!n) return;
    switch (lie_kind) {
    case HOST_LIE_RET: req->ret = lie_value; break;
    case HOST_LIE_OUT_LEN: req->out_len = (uint64_t)lie_value; break;
    case HOST_LIE_OUT2_LEN: req->out2_len = (uint64_t)lie_value; break;
    case HOST_LIE_RET_ADD: req->ret += lie_value; req->out_len += (uint64_t)lie_value; break;
    case HOST_LIE_BUF: req->buf = (uint64_t)lie_value; break;
    case HOST_LIE_BUF2: req->buf2 = (uint64_t)lie_value; break;
    case HOST_LIE_BUF_LEN: req->buf_len = (uint64_t)lie_value; break;
    case HOST_LIE_OP: req->op = (uint32_t)lie_value; break;
    }
}

/* The adversary's racing thread (tests): a host thread that keeps storing `value` at `addr`
 * (8 bytes; a field of a request the enclave staged: the host allocated it, so it knows
 * where it is) until host_race_stop().  One at a time. */
static pthread_t race_tid;
static uint64_t *race_addr;
static uint64_t race_value;
static uint32_t race_run;
static uint64_t race_stores;

static void *race_main(void *arg)
{
    (void)arg;
    while (__atomic_load_n(&race_run, __ATOMIC_ACQUIRE)) {
        __atomic_store_n(race_addr, race_value, __ATOMIC_RELAXED);
        __atomic_add_fetch(&race_stores, 1, __ATOMIC_RELEASE);
    }
    return NULL;
}

/* Returns 0, or -1 if a racer already runs or the thread could not start. */
int host_race_start(uintptr_t addr, uint64_t value)
{
    if (__atomic_load_n(&race_run, __ATOMIC_ACQUIRE) || !addr) return -1;
    race_addr = (uint64_t *)addr;
    race_value = value;
    __atomic_store_n(&race_stores, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&race_run, 1, __ATOMIC_RELEASE);
    if (pthread_create(&race_tid, NULL, race_main, NULL)) {
        __atomic_store_n(&race_run, 0, __ATOMIC_RELEASE);
        return -1;
    }
    return 0;
}

/* How many stores the racer has made so far. */
uint64_t host_race_stores(void) { return __atomic_load_n(&race_stores, __ATOMIC_ACQUIRE); }

/* Stop and join the racer; returns how many stores it made. */
uint64_t host_race_stop(void)
{
    if (!__atomic_exchange_n(&race_run, 0, __ATOMIC_ACQ_REL)) return 0;
    pthread_join(race_tid, NULL);
    return host_race_stores();
}

void host_dispatch(struct eleos_req *req)
{
    int64_t r = -ENOSYS;
    req->out_len = 0;
    req->out2_len = 0;
    switch (req->op) {
    case ELEOS_OP_NOP:
        r = 0;
        break;
    case ELEOS_OP_READ: {
        uint64_t n = (uint64_t)A(1) < req->buf_len ? (uint64_t)A(1) : req->buf_len;
        r = res(read((int)A(0), BUF(req), n));
        if (r > 0) req->out_len = (uint64_t)r;
        break;
    }
    case ELEOS_OP_WRITE:
        r = res(write((int)A(0), BUF(req), req->buf_len));
        break;
    case ELEOS_OP_PREAD: {
        uint64_t n = (uint64_t)A(1) < req->buf_len ? (uint64_t)A(1) : req->buf_len;
        r = res(pread((int)A(0), BUF(req), n, (off_t)A(2)));
        if (r > 0) req->out_len = (uint64_t)r;
        break;
    }
    case ELEOS_OP_PWRITE:
        r = res(pwrite((int)A(0), BUF(req), req->buf_len, (off_t)A(2)));
        break;
    case ELEOS_OP_LSEEK:
        r = res((long)lseek((int)A(0), (off_t)A(1), (int)A(2)));
        break;
    case ELEOS_OP_CLOSE:
        r = res(close((int)A(0)));
        break;
    case ELEOS_OP_OPENAT: {
        const char *p = path_arg(req->buf, req->buf_len);
        r = p ? res(openat((int)A(0), p, (int)A(1), (mode_t)A(2))) : -EFAULT;
        break;
    }
    case ELEOS_OP_FSTAT: {
        struct stat st;
        if (req->buf_len < sizeof(struct eleos_stat)) { r = -EINVAL; break; }
        r = res(fstat((int)A(0), &st));
        if (r == 0) { fill_stat(BUF(req), &st); req->out_len = sizeof(struct eleos_stat); }
        break;
    }
    case ELEOS_OP_FSTATAT: {
        struct stat st;
        const char *p = path_arg(req->buf, req->buf_len);
        if (!p || req->buf2_len < sizeof(struct eleos_stat)) { r = -EFAULT; break; }
        r = res(fstatat((int)A(0), p, &st, (int)A(1)));
        if (r == 0) { fill_stat(BUF2(req), &st); req->out2_len = sizeof(struct eleos_stat); }
        break;
    }
    case ELEOS_OP_FSYNC:
        r = res(fsync((int)A(0)));
        break;
    case ELEOS_OP_FDATASYNC:
        r = res(fdatasync((int)A(0)));
        break;
    case ELEOS_OP_FTRUNCATE:
        r = res(ftruncate((int)A(0), (off_t)A(1)));
        break;
    case ELEOS_OP_TRUNCATE: {
        const char *p = path_arg(req->buf, req->buf_len);
        r = p ? res(truncate(p, (off_t)A(1))) : -EFAULT;
        break;
    }
    case ELEOS_OP_UNLINKAT: {
        const char *p = path_arg(req->buf, req->buf_len);
        r = p ? res(unlinkat((int)A(0), p, (int)A(1))) : -EFAULT;
        break;
    }
    case ELEOS_OP_RENAMEAT: {
        const char *p = path_arg(req->buf, req->buf_len);
        const char *q = path_arg(req->buf2, req->buf2_len);
        r = (p && q) ? res(renameat((int)A(0), p, (int)A(1), q)) : -EFAULT;
        break;
    }
    case ELEOS_OP_MKDIRAT: {
        const char *p = path_arg(req->buf, req->buf_len);
        r = p ? res(mkdirat((int)A(0), p, (mode_t)A(1))) : -EFAULT;
        break;
    }
    case ELEOS_OP_GETDENTS: {
        uint64_t n = (uint64_t)A(1) < req->buf_len ? (uint64_t)A(1) : req->buf_len;
        r = res(syscall(SYS_getdents64, (int)A(0), BUF(req), n));
        if (r > 0) req->out_len = (uint64_t)r;
        break;
    }
    case ELEOS_OP_SENDFILE: {
        off_t off = (off_t)A(2);
        r = res(sendfile((int)A(0), (int)A(1), A(2) < 0 ? NULL : &off, (size_t)A(3)));
        if (A(2) >= 0) A(4) = off;
        break;
    }
    case ELEOS_OP_SOCKET:
        r = res(socket((int)A(0), (int)A(1), (int)A(2)));
        break;
    case ELEOS_OP_BIND:
        r = res(bind((int)A(0), BUF(req), (socklen_t)req->buf_len));
        break;
    case ELEOS_OP_LISTEN:
        r = res(listen((int)A(0), (int)A(1)));
        break;
    case ELEOS_OP_ACCEPT4: {
        socklen_t len = (socklen_t)(req->buf_len < 4096 ? req->buf_len : 4096);
        r = res(accept4((int)A(0), req->buf_len ? BUF(req) : NULL, req->buf_len ? &len : NULL,
                        (int)A(1)));
        if (r >= 0 && req->buf_len) req->out_len = len < req->buf_len ? len : req->buf_len;
        break;
    }
    case ELEOS_OP_CONNECT:
        r = res(connect((int)A(0), BUF(req), (socklen_t)req->buf_len));
        break;
    case ELEOS_OP_SENDTO:
        r = res(sendto((int)A(0), BUF(req), req->buf_len, (int)A(1),
                       req->buf2_len ? BUF2(req) : NULL, (socklen_t)req->buf2_len));
        break;
    case ELEOS_OP_RECVFROM: {
        uint64_t n = (uint64_t)A(1) < req->buf_len ? (uint64_t)A(1) : req->buf_len;
        socklen_t alen = (socklen_t)(req->buf2_len < 4096 ? req->buf2_len : 4096);
        r = res(recvfrom((int)A(0), BUF(req), n, (int)A(2),
                         req->buf2_len ? BUF2(req) : NULL, req->buf2_len ? &alen : NULL));
        if (r >= 0) {
            /* MSG_TRUNC may report the datagram's full length: only n bytes were written */
            req->out_len = (uint64_t)r < n ? (uint64_t)r : n;
            if (req->buf2_len) req->out2_len = alen < req->buf2_len ? alen : req->buf2_len;
        }
        break;
    }
    case ELEOS_OP_SHUTDOWN:
        r = res(shutdown((int)A(0), (int)A(1)));
        break;
    case ELEOS_OP_SETSOCKOPT:
        r = res(setsockopt((int)A(0), (int)A(1), (int)A(2), BUF(req), (socklen_t)req->buf_len));
        break;
    case ELEOS_OP_GETSOCKOPT: {
        socklen_t len = (socklen_t)((uint64_t)A(3) < req->buf_len ? (uint64_t)A(3) : req->buf_len);
        r = res(getsockopt((int)A(0), (int)A(1), (int)A(2), BUF(req), &len));
        if (r == 0) req->out_len = len;
        break;
    }
    case ELEOS_OP_GETSOCKNAME:
    case ELEOS_OP_GETPEERNAME: {
        socklen_t len = (socklen_t)(req->buf_len < 4096 ? req->buf_len : 4096);
        r = req->op == ELEOS_OP_GETSOCKNAME ? res(getsockname((int)A(0), BUF(req), &len))
                                            : res(getpeername((int)A(0), BUF(req), &len));
        if (r == 0) req->out_len = len < req->buf_len ? len : req->buf_len;
        break;
    }
    case ELEOS_OP_POLL: {
        uint64_t n = (uint64_t)A(0);
        if (n * sizeof(struct pollfd) > req->buf_len) { r = -EINVAL; break; }
        r = res(poll(BUF(req), (nfds_t)n, (int)A(1)));
        if (r >= 0) req->out_len = n * sizeof(struct pollfd);
        break;
    }
    case ELEOS_OP_EPOLL_CREATE:
        r = res(epoll_create1((int)A(0)));
        break;
    case ELEOS_OP_EPOLL_CTL: {
        struct epoll_event ev;
        memset(&ev, 0, sizeof ev);
        ev.events = (uint32_t)A(3);
        ev.data.u64 = (uint64_t)A(2);
        r = res(epoll_ctl((int)A(0), (int)A(1), (int)A(2), &ev));
        break;
    }
    case ELEOS_OP_EPOLL_WAIT: {
        int64_t max = A(1);
        if (max <= 0 || (uint64_t)max * sizeof(struct epoll_event) > req->buf_len) { r = -EINVAL; break; }
        r = res(epoll_wait((int)A(0), BUF(req), (int)max, (int)A(2)));
        if (r > 0) req->out_len = (uint64_t)r * sizeof(struct epoll_event);
        break;
    }
    case ELEOS_OP_GETADDRINFO:
        r = do_getaddrinfo(req);
        break;
    case ELEOS_OP_FCNTL:
        r = res(fcntl((int)A(0), (int)A(1), (long)A(2)));
        break;
    case ELEOS_OP_DUP:
        r = res(fcntl((int)A(0), F_DUPFD_CLOEXEC, 0));
        break;
    case ELEOS_OP_PIPE2:
    case ELEOS_OP_SOCKETPAIR: {
        int fds[2];
        if (req->buf_len < sizeof fds) { r = -EINVAL; break; }
        r = req->op == ELEOS_OP_PIPE2 ? res(pipe2(fds, (int)A(0)))
                                      : res(socketpair((int)A(0), (int)A(1), (int)A(2), fds));
        if (r == 0) { memcpy(BUF(req), fds, sizeof fds); req->out_len = sizeof fds; }
        break;
    }
    case ELEOS_OP_IOCTL_INT: {
        int v = (int)A(2);
        r = res(ioctl((int)A(0), (unsigned long)A(1), &v));
        A(5) = v;
        break;
    }
    default:
        r = -ENOSYS;
    }
    req->ret = r;
    if (__builtin_expect(__atomic_load_n(&lie_count, __ATOMIC_RELAXED) != 0, 0))
        host_lie(req);
}

uintptr_t host_dispatch_fn(void) { return (uintptr_t)&host_dispatch; }

/* Untrusted memory for the enclave's staging buffers (as sgx_ocalloc's untrusted stack). */
void *host_alloc(uint64_t n) { return n ? aligned_alloc(64, (n + 63) & ~(uint64_t)63) : NULL; }
void host_free(void *p) { free(p); }
uintptr_t host_alloc_fn(void) { return (uintptr_t)&host_alloc; }
uintptr_t host_free_fn(void) { return (uintptr_t)&host_free; }

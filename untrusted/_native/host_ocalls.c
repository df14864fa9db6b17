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
#include <sys/uio.h>
#include <sys/wait.h>
#include <grp.h>
#include <sched.h>
#include <signal.h>
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

/* spawn: the enclave cannot fork, so it asks the host to start a program (as SDK enclaves
 * do with an OCALL).  What CPython's _posixsubprocess.fork_exec does, on the host: fork, and
 * in the child only async-signal-safe calls (dup2 the stdio pipes, close fds, chdir, exec),
 * reporting a failure on the error pipe in CPython's "OSError:<hex errno>:noexec" format.
 * buf: the strings (argv, executables, env, cwd), each NUL-terminated; buf2: int64 fields,
 * ELEOS_SP_* in eleos_abi.h.  ret = the child's pid. */
#define SPAWN_MAX_ITEMS 65536

static void child_report(int fd, int err, const char *what)
{
    char hex[20], *cur = hex + sizeof hex;
    unsigned e = (unsigned)err;
    do { *--cur = "0123456789abcdef"[e % 16]; e /= 16; } while (e && cur > hex);
    if (write(fd, "OSError:", 8) < 0) return;
    if (write(fd, cur, (size_t)(hex + sizeof hex - cur)) < 0) return;
    if (write(fd, ":", 1) < 0) return;
    if (what && write(fd, what, strlen(what)) < 0) return;
}

static int is_kept(const int64_t *keep, int64_t n, int fd)
{
    for (int64_t i = 0; i < n; i++) if (keep[i] == fd) return 1;
    return 0;
}

static void child_blocking_stdio(int fd)
{
    /* the enclave keeps its pipes O_NONBLOCK in the host; a native child's stdio blocks */
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0 && (fl & O_NONBLOCK)) fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
}

/* posix_spawn's attributes and file actions, in the order glibc's spawn child applies them
 * (the signal mask last, just before exec).  0, or -1 with errno set. */
static int child_spawn_attrs(const int64_t *v, const int64_t *act, char *const *opens)
{
    if (v[ELEOS_SP_RESETIDS] && (seteuid(getuid()) < 0 || setegid(getgid()) < 0)) return -1;
    if (v[ELEOS_SP_SIGDEF]) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = SIG_DFL;
        for (int sig = 1; sig <= 64; sig++)
            if ((uint64_t)v[ELEOS_SP_SIGDEF] >> (sig - 1) & 1)
                sigaction(sig, &sa, NULL);      /* as glibc: SIGKILL/SIGSTOP refuse, ignored */
    }
    if (v[ELEOS_SP_SCHED]) {
        struct sched_param sp = { .sched_priority = (int)v[ELEOS_SP_SCHED_PRIORITY] };
        int rc = v[ELEOS_SP_SCHED] == 2
            ? sched_setscheduler(0, (int)v[ELEOS_SP_SCHED_POLICY], &sp) : sched_setparam(0, &sp);
        if (rc < 0) return -1;
    }
    int64_t nopen = 0;
    for (int64_t i = 0; i < v[ELEOS_SP_NACTIONS]; i++) {
        const int64_t *a = act + 4 * i;
        int fd = (int)a[1];
        if (a[0] == ELEOS_SPAWN_CLOSE) {
            close(fd);                          /* as glibc: a close that fails is not an error */
        } else if (a[0] == ELEOS_SPAWN_OPEN) {
            int nfd = open(opens[nopen++], (int)a[2], (mode_t)a[3]);
            if (nfd < 0) return -1;
            if (nfd != fd) {
                if (dup2(nfd, fd) < 0) return -1;
                close(nfd);
            }
        } else {
            if (fd == (int)a[2]) {              /* dup2 onto itself: keep it across exec */
                int fl = fcntl(fd, F_GETFD);
                if (fl < 0 || fcntl(fd, F_SETFD, fl & ~FD_CLOEXEC) < 0) return -1;
            } else if (dup2(fd, (int)a[2]) < 0) {
                return -1;
            }
            if (a[3]) child_blocking_stdio((int)a[2]);   /* the app's view of it blocks */
        }
    }
    if (v[ELEOS_SP_HAS_SIGMASK]) {
        sigset_t set;
        sigemptyset(&set);
        for (int sig = 1; sig <= 64; sig++)
            if ((uint64_t)v[ELEOS_SP_SIGMASK] >> (sig - 1) & 1) sigaddset(&set, sig);
        if (sigprocmask(SIG_SETMASK, &set, NULL) < 0) return -1;
    }
    return 0;
}

static void child_exec(const int64_t *v, char *const *argv, char *const *execs, char *const *envp,
                       const char *cwd, const gid_t *groups, const int64_t *keep,
                       char *const *opens)
{
    int errpipe = (int)v[ELEOS_SP_ERRPIPE_WRITE];
    int p2cread = (int)v[ELEOS_SP_P2CREAD], c2pwrite = (int)v[ELEOS_SP_C2PWRITE], errwrite = (int)v[ELEOS_SP_ERRWRITE];
    const char *stage = "noexec";
    if (v[ELEOS_SP_P2CWRITE] != -1) close((int)v[ELEOS_SP_P2CWRITE]);
    if (v[ELEOS_SP_C2PREAD] != -1) close((int)v[ELEOS_SP_C2PREAD]);
    if (v[ELEOS_SP_ERRREAD] != -1) close((int)v[ELEOS_SP_ERRREAD]);
    if (v[ELEOS_SP_ERRPIPE_READ] != -1) close((int)v[ELEOS_SP_ERRPIPE_READ]);
    /* as CPython: keep the later dup2s from clobbering an fd still needed */
    if (c2pwrite == 0 && (c2pwrite = dup(c2pwrite)) < 0) goto fail;
    while (errwrite == 0 || errwrite == 1) if ((errwrite = dup(errwrite)) < 0) goto fail;
    if (p2cread == 0) { if (fcntl(0, F_SETFD, 0) < 0) goto fail; }
    else if (p2cread != -1 && dup2(p2cread, 0) < 0) goto fail;
    if (c2pwrite == 1) { if (fcntl(1, F_SETFD, 0) < 0) goto fail; }
    else if (c2pwrite != -1 && dup2(c2pwrite, 1) < 0) goto fail;
    if (errwrite == 2) { if (fcntl(2, F_SETFD, 0) < 0) goto fail; }
    else if (errwrite != -1 && dup2(errwrite, 2) < 0) goto fail;
    if (p2cread != -1) child_blocking_stdio(0);
    if (c2pwrite != -1) child_blocking_stdio(1);
    if (errwrite != -1) child_blocking_stdio(2);
    for (int64_t i = 0; i < v[ELEOS_SP_NKEEP]; i++)
        if (keep[i] != errpipe && fcntl((int)keep[i], F_SETFD, 0) < 0) goto fail;
    if (v[ELEOS_SP_CLOSE_FDS]) {
        long max = sysconf(_SC_OPEN_MAX);
        if (max < 0 || max > 1 << 20) max = 1 << 20;
        for (int fd = 3; fd < max; fd++) {
            if (is_kept(keep, v[ELEOS_SP_NKEEP], fd)) continue;
            int lo = fd;
            while (fd + 1 < max && !is_kept(keep, v[ELEOS_SP_NKEEP], fd + 1)) fd++;
            if (syscall(SYS_close_range, (unsigned)lo, (unsigned)fd, 0) < 0)
                for (int c = lo; c <= fd; c++) close(c);
        }
    }
    if (v[ELEOS_SP_HAS_CWD] && chdir(cwd) < 0) { stage = "noexec:chdir"; goto fail; }
    if (v[ELEOS_SP_UMASK] >= 0) umask((mode_t)v[ELEOS_SP_UMASK]);
    if (v[ELEOS_SP_RESTORE_SIGNALS]) {
        signal(SIGPIPE, SIG_DFL);
        signal(SIGXFSZ, SIG_DFL);
    }
    if (v[ELEOS_SP_SETSID] && setsid() < 0) goto fail;
    if (v[ELEOS_SP_PGID] >= 0 && setpgid(0, (pid_t)v[ELEOS_SP_PGID]) < 0) goto fail;
    if (v[ELEOS_SP_NGROUPS] >= 0 && setgroups((size_t)v[ELEOS_SP_NGROUPS], groups) < 0) goto fail;
    if (v[ELEOS_SP_GID] >= 0 && setregid((gid_t)v[ELEOS_SP_GID], (gid_t)v[ELEOS_SP_GID]) < 0) goto fail;
    if (v[ELEOS_SP_UID] >= 0 && setreuid((uid_t)v[ELEOS_SP_UID], (uid_t)v[ELEOS_SP_UID]) < 0) goto fail;
    if (child_spawn_attrs(v, keep + v[ELEOS_SP_NKEEP], opens) < 0) goto fail;
    stage = NULL;
    int saved = 0;
    for (int64_t i = 0; i < v[ELEOS_SP_NEXEC]; i++) {
        if (envp) execve(execs[i], argv, envp);
        else execv(execs[i], argv);
        if (errno != ENOENT && errno != ENOTDIR && saved == 0) saved = errno;
    }
    if (saved) errno = saved;
fail:
    if (errpipe < 0) _exit(127);     /* no error pipe (os.spawn*): the shell's "cannot exec" */
    child_report(errpipe, errno, stage);
    _exit(255);
}

/* Split `n` NUL-terminated strings off *p (within end) into out[0..n-1], out[n] = NULL. */
static int take_strings(char **p, const char *end, int64_t n, char **out)
{
    for (int64_t i = 0; i < n; i++) {
        char *nul = memchr(*p, 0, (size_t)(end - *p));
        if (!nul) return -1;
        out[i] = *p;
        *p = nul + 1;
    }
    out[n] = NULL;
    return 0;
}

static int64_t do_spawn(struct eleos_req *req)
{
    const int64_t *v = BUF2(req);
    uint64_t nints = req->buf2_len / sizeof(int64_t);
    if (nints < ELEOS_SP_FIXED) return -EINVAL;
    int64_t nargv = v[ELEOS_SP_NARGV], nexec = v[ELEOS_SP_NEXEC], nenv = v[ELEOS_SP_NENV];
    int64_t ngroups = v[ELEOS_SP_NGROUPS], nkeep = v[ELEOS_SP_NKEEP];
    int64_t nactions = v[ELEOS_SP_NACTIONS], nopen = 0;
    if (nargv < 1 || nargv > SPAWN_MAX_ITEMS || nexec < 1 || nexec > SPAWN_MAX_ITEMS ||
        nenv < -1 || nenv > SPAWN_MAX_ITEMS || ngroups < -1 || ngroups > SPAWN_MAX_ITEMS ||
        nkeep < 0 || nkeep > SPAWN_MAX_ITEMS || nactions < 0 || nactions > SPAWN_MAX_ITEMS ||
        v[ELEOS_SP_SCHED] < 0 || v[ELEOS_SP_SCHED] > 2 ||
        (uint64_t)(ELEOS_SP_FIXED + (ngroups > 0 ? ngroups : 0) + nkeep + 4 * nactions) > nints)
        return -EINVAL;
    const int64_t *act = v + ELEOS_SP_FIXED + (ngroups > 0 ? ngroups : 0) + nkeep;
    for (int64_t i = 0; i < nactions; i++) {
        if (act[4 * i] == ELEOS_SPAWN_OPEN) nopen++;
        else if (act[4 * i] != ELEOS_SPAWN_CLOSE && act[4 * i] != ELEOS_SPAWN_DUP2) return -EINVAL;
    }
    char *p = BUF(req), *end = p + req->buf_len;
    char **argv = calloc((size_t)nargv + 1, sizeof *argv);
    char **execs = calloc((size_t)nexec + 1, sizeof *execs);
    char **envp = nenv >= 0 ? calloc((size_t)nenv + 1, sizeof *envp) : NULL;
    gid_t *groups = calloc((size_t)(ngroups > 0 ? ngroups : 1), sizeof *groups);
    char **opens = calloc((size_t)nopen + 1, sizeof *opens);
    int64_t r = -ENOMEM;
    char *cwd[2] = {NULL, NULL};
    if (!argv || !execs || (nenv >= 0 && !envp) || !groups || !opens) goto out;
    r = -EINVAL;
    if (take_strings(&p, end, nargv, argv) || take_strings(&p, end, nexec, execs) ||
        (envp && take_strings(&p, end, nenv, envp)) ||
        (v[ELEOS_SP_HAS_CWD] && take_strings(&p, end, 1, cwd)) ||
        take_strings(&p, end, nopen, opens))
        goto out;
    for (int64_t i = 0; i < ngroups; i++) groups[i] = (gid_t)v[ELEOS_SP_FIXED + i];
    const int64_t *keep = v + ELEOS_SP_FIXED + (ngroups > 0 ? ngroups : 0);
    pid_t pid = fork();
    if (pid == 0) child_exec(v, argv, execs, envp, cwd[0], groups, keep, opens);  /* never returns */
    r = pid < 0 ? -(int64_t)errno : (int64_t)pid;
out:
    free(argv); free(execs); free(envp); free(groups); free(opens);
    return r;
}

/* fcntl/ioctl with a buffer argument (a3 = 1): as CPython, the argument is copied into a
 * 1024-byte buffer of our own (a call that writes more than it was given cannot overrun the
 * request's buffer), the call made on it, and it is copied back. */
static int64_t buffer_ctl(struct eleos_req *req, int is_ioctl)
{
    char arg[1024 + 1];
    uint64_t n = req->buf_len;
    if (n > 1024) {
        if (!is_ioctl) return -EINVAL;
        /* a larger mutable ioctl argument is used in place, as CPython does */
        int64_t r = res(ioctl((int)A(0), (unsigned long)(uint32_t)A(1), BUF(req)));
        if (r >= 0) req->out_len = n;
        return r;
    }
    memset(arg, 0, sizeof arg);
    memcpy(arg, BUF(req), n);
    int64_t r = is_ioctl ? res(ioctl((int)A(0), (unsigned long)(uint32_t)A(1), arg))
                         : res(fcntl((int)A(0), (int)A(1), arg));
    if (r >= 0) { memcpy(BUF(req), arg, n); req->out_len = n; }
    return r;
}

/* recvmsg: data into buffer 1; buffer 2 is the name (ELEOS_MSG_NAME_MAX bytes) then the
 * control data (capacity a3).  a4 = msg_flags, a5 = the name's length. */
static int64_t do_recvmsg(struct eleos_req *req)
{
    uint64_t n = (uint64_t)A(1) < req->buf_len ? (uint64_t)A(1) : req->buf_len;
    uint64_t ctl = (uint64_t)A(3);
    if (req->buf2_len < ELEOS_MSG_NAME_MAX || ctl > req->buf2_len - ELEOS_MSG_NAME_MAX)
        return -EINVAL;
    struct iovec iov = {BUF(req), n};
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_name = BUF2(req);
    msg.msg_namelen = ELEOS_MSG_NAME_MAX;
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = ctl ? (char *)BUF2(req) + ELEOS_MSG_NAME_MAX : NULL;
    msg.msg_controllen = ctl;
    int64_t r = res(recvmsg((int)A(0), &msg, (int)A(2)));
    if (r < 0) return r;
    req->out_len = (uint64_t)r < n ? (uint64_t)r : n;
    uint64_t nl = msg.msg_namelen < ELEOS_MSG_NAME_MAX ? msg.msg_namelen : ELEOS_MSG_NAME_MAX;
    uint64_t cl = msg.msg_controllen < ctl ? msg.msg_controllen : ctl;
    req->out2_len = ELEOS_MSG_NAME_MAX + cl;
    A(4) = msg.msg_flags;
    A(5) = (int64_t)nl;
    return r;
}

/* sendmsg: data from buffer 1; buffer 2 is the name (a2 bytes, 0: none) then control data. */
static int64_t do_sendmsg(struct eleos_req *req)
{
    uint64_t nl = (uint64_t)A(2);
    if (nl > req->buf2_len || nl > ELEOS_MSG_NAME_MAX) return -EINVAL;
    struct iovec iov = {BUF(req), req->buf_len};
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_name = nl ? BUF2(req) : NULL;
    msg.msg_namelen = (socklen_t)nl;
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = req->buf2_len > nl ? (char *)BUF2(req) + nl : NULL;
    msg.msg_controllen = req->buf2_len - nl;
    return res(sendmsg((int)A(0), &msg, (int)A(1)));
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
        if (A(3) == 1) r = buffer_ctl(req, 0);
        else r = res(fcntl((int)A(0), (int)A(1), (long)A(2)));
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
    case ELEOS_OP_SPAWN:
        r = do_spawn(req);
        break;
    case ELEOS_OP_FCHMODAT: {
        const char *p = path_arg(req->buf, req->buf_len);
        r = p ? res(fchmodat((int)A(0), p, (mode_t)A(1), (int)A(2)))
              : res(fchmod((int)A(0), (mode_t)A(1)));
        break;
    }
    case ELEOS_OP_UTIMENSAT: {
        const char *p = path_arg(req->buf, req->buf_len);
        const struct timespec *ts = req->buf2_len == 2 * sizeof(struct timespec) ? BUF2(req) : NULL;
        r = p ? res(utimensat((int)A(0), p, ts, (int)A(1))) : res(futimens((int)A(0), ts));
        break;
    }
    case ELEOS_OP_FACCESSAT: {
        const char *p = path_arg(req->buf, req->buf_len);
        r = p ? res(faccessat((int)A(0), p, (int)A(1), (int)A(2))) : -EINVAL;
        break;
    }
    case ELEOS_OP_DUP3:
        r = A(2) ? res(dup3((int)A(0), (int)A(1), (int)A(2))) : res(dup2((int)A(0), (int)A(1)));
        break;
    case ELEOS_OP_CHDIR: {
        const char *p = path_arg(req->buf, req->buf_len);
        r = p ? res(chdir(p)) : res(fchdir((int)A(0)));
        break;
    }
    case ELEOS_OP_GETCWD:
        if (!req->buf_len) { r = -EINVAL; break; }
        if (getcwd(BUF(req), req->buf_len) == NULL) { r = -(int64_t)errno; break; }
        r = (int64_t)strnlen(BUF(req), req->buf_len);
        req->out_len = (uint64_t)r;
        break;
    case ELEOS_OP_READLINKAT: {
        const char *p = path_arg(req->buf, req->buf_len);
        if (!p) { r = -EINVAL; break; }
        r = res(readlinkat((int)A(0), p, BUF2(req), req->buf2_len));
        if (r >= 0) req->out2_len = (uint64_t)r;
        break;
    }
    case ELEOS_OP_SYMLINKAT: {
        const char *target = path_arg(req->buf, req->buf_len);
        const char *link = path_arg(req->buf2, req->buf2_len);
        r = target && link ? res(symlinkat(target, (int)A(0), link)) : -EINVAL;
        break;
    }
    case ELEOS_OP_LINKAT: {
        const char *old = path_arg(req->buf, req->buf_len);
        const char *new = path_arg(req->buf2, req->buf2_len);
        r = old && new ? res(linkat((int)A(0), old, (int)A(1), new, (int)A(2))) : -EINVAL;
        break;
    }
    case ELEOS_OP_RECVMSG:
        r = do_recvmsg(req);
        break;
    case ELEOS_OP_SENDMSG:
        r = do_sendmsg(req);
        break;
    case ELEOS_OP_IOCTL_INT: {
        if (A(3) == 1) { r = buffer_ctl(req, 1); break; }
        if (A(3) == 2) { r = res(ioctl((int)A(0), (unsigned long)(uint32_t)A(1), (unsigned long)A(2))); break; }
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

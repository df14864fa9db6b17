/*
 * eleos_abi.h - what crosses the trust boundary, defined once.
 *
 * Both halves include this header: trusted/ (the enclave's OCALL and RPC stubs, SUVM) and
 * untrusted/ (the host's OCALL handlers, the RPC worker pool, the EPC driver).  The Python
 * mirror is eleos_shim/abi.py; tests/test_abi.py checks that the two agree.
 *
 * A request names an OCALL, carries up to six integer arguments and two buffers that live in
 * untrusted memory (the enclave copies its data there first, as sgx_ocalloc does), and gets
 * back a result (>= 0, or -errno) and how many bytes the host wrote into each buffer.  The
 * host is hostile: the enclave checks every field it reads back (see trusted/syscall.py).
 */
#ifndef ELEOS_ABI_H
#define ELEOS_ABI_H

#include <stdint.h>

/* OCALL numbers.  Keep in step with eleos_shim/abi.py (a test checks). */
#define ELEOS_OP_NOP            0   /* nothing: the null call for benchmarks */
#define ELEOS_OP_READ           1   /* a0=fd a1=n                     -> buf (out)            */
#define ELEOS_OP_WRITE          2   /* a0=fd                          <- buf (in, buf_len)    */
#define ELEOS_OP_PREAD          3   /* a0=fd a1=n a2=off              -> buf                  */
#define ELEOS_OP_PWRITE         4   /* a0=fd a2=off                   <- buf                  */
#define ELEOS_OP_LSEEK          5   /* a0=fd a1=off a2=whence                                 */
#define ELEOS_OP_CLOSE          6   /* a0=fd                                                   */
#define ELEOS_OP_OPENAT         7   /* a0=dirfd a1=flags a2=mode      <- buf path (NUL-ended)  */
#define ELEOS_OP_FSTAT          8   /* a0=fd                          -> buf struct eleos_stat */
#define ELEOS_OP_FSTATAT        9   /* a0=dirfd a1=flags              <- buf path, -> buf2 stat*/
#define ELEOS_OP_FSYNC         10   /* a0=fd                                                   */
#define ELEOS_OP_FTRUNCATE     11   /* a0=fd a1=length                                         */
#define ELEOS_OP_TRUNCATE      12   /* a1=length                      <- buf path              */
#define ELEOS_OP_UNLINKAT      13   /* a0=dirfd a1=flags              <- buf path              */
#define ELEOS_OP_RENAMEAT      14   /* a0=olddirfd a1=newdirfd        <- buf old, buf2 new     */
#define ELEOS_OP_MKDIRAT       15   /* a0=dirfd a1=mode               <- buf path              */
#define ELEOS_OP_GETDENTS      16   /* a0=fd a1=n                     -> buf linux_dirent64s   */
#define ELEOS_OP_SENDFILE      17   /* a0=out_fd a1=in_fd a2=off(-1: none) a3=count; a4 out: new off */
#define ELEOS_OP_SOCKET        18   /* a0=family a1=type a2=proto                              */
#define ELEOS_OP_BIND          19   /* a0=fd                          <- buf sockaddr          */
#define ELEOS_OP_LISTEN        20   /* a0=fd a1=backlog                                        */
#define ELEOS_OP_ACCEPT4       21   /* a0=fd a1=flags                 -> buf sockaddr          */
#define ELEOS_OP_CONNECT       22   /* a0=fd                          <- buf sockaddr          */
#define ELEOS_OP_SENDTO        23   /* a0=fd a1=flags                 <- buf data, buf2 addr (len 0: none) */
#define ELEOS_OP_RECVFROM      24   /* a0=fd a1=n a2=flags            -> buf data, buf2 addr   */
#define ELEOS_OP_SHUTDOWN      25   /* a0=fd a1=how                                            */
#define ELEOS_OP_SETSOCKOPT    26   /* a0=fd a1=level a2=name         <- buf optval            */
#define ELEOS_OP_GETSOCKOPT    27   /* a0=fd a1=level a2=name a3=optlen -> buf optval          */
#define ELEOS_OP_GETSOCKNAME   28   /* a0=fd                          -> buf sockaddr          */
#define ELEOS_OP_GETPEERNAME   29   /* a0=fd                          -> buf sockaddr          */
#define ELEOS_OP_POLL          30   /* a0=nfds a1=timeout_ms          <-> buf struct pollfd[]  */
#define ELEOS_OP_EPOLL_CREATE  31   /* a0=flags                                                */
#define ELEOS_OP_EPOLL_CTL     32   /* a0=epfd a1=op a2=fd a3=events (data.u64 = fd)           */
#define ELEOS_OP_EPOLL_WAIT    33   /* a0=epfd a1=maxevents a2=timeout_ms -> buf epoll_event[] */
#define ELEOS_OP_GETADDRINFO   34   /* a0=family a1=type a2=proto a3=flags <- buf host\0port\0 (empty = NULL)
                                      -> buf2 records "=iiiiI" (family,type,proto,addrlen,canonlen)
                                      + addr + canonname; ret = count.  On a resolver error:
                                      ret = 0, a5 = the EAI_* code, buf2 = gai_strerror text. */
#define ELEOS_OP_FCNTL         35   /* a0=fd a1=cmd a2=arg; a3=1: the arg is buf (<= 1024 bytes,
                                      copied back into it)                                    */
#define ELEOS_OP_DUP           36   /* a0=fd                                                   */
#define ELEOS_OP_PIPE2         37   /* a0=flags                       -> buf int[2]            */
#define ELEOS_OP_SOCKETPAIR    38   /* a0=family a1=type a2=proto     -> buf int[2]            */
#define ELEOS_OP_FDATASYNC     39   /* a0=fd                                                   */
#define ELEOS_OP_IOCTL_INT     40   /* a0=fd a1=request a2=int arg (FIONBIO, FIONREAD) -> a5 int out;
                                      a3=1: the arg is buf, copied back; a3=2: a2 by value   */
#define ELEOS_OP_RECVMSG      41   /* a0=fd a1=n a2=flags a3=control capacity -> buf data, buf2 =
                                      name (ELEOS_MSG_NAME_MAX bytes) then control; ret = bytes,
                                      a4 out: msg_flags, a5 out: name length */
#define ELEOS_OP_SENDMSG      42   /* a0=fd a1=flags a2=name length <- buf data, buf2 = name then
                                      control (struct cmsghdr records); ret = bytes taken */
#define ELEOS_OP_SPAWN        43   /* start a host program (fork+exec on the host, as CPython's
                                      fork_exec) <- buf strings argv/executables/env/cwd/open paths,
                                      buf2 int64 fields (host_ocalls.c: SP_*); ret = pid */
#define ELEOS_OP_FCHMODAT     44   /* a0=dirfd a1=mode a2=flags      <- buf path (empty: fchmod(a0)) */
#define ELEOS_OP_UTIMENSAT    45   /* a0=dirfd a1=flags <- buf path (empty: futimens(a0)),
                                      buf2 struct timespec[2] (empty: now)                    */
#define ELEOS_OP_FACCESSAT    46   /* a0=dirfd a1=mode a2=flags      <- buf path              */
#define ELEOS_OP_DUP3         47   /* a0=fd a1=fd2 a2=flags (0: dup2)                         */
#define ELEOS_OP_CHDIR        48   /* <- buf path (empty: fchdir(a0))                          */
#define ELEOS_OP_GETCWD       49   /*                                -> buf path; ret = length */
#define ELEOS_OP_READLINKAT   50   /* a0=dirfd <- buf path           -> buf2 target; ret = length */
#define ELEOS_OP_SYMLINKAT    51   /* a0=newdirfd <- buf target, buf2 link path               */
#define ELEOS_OP_LINKAT       52   /* a0=olddirfd a1=newdirfd a2=flags <- buf old, buf2 new    */
#define ELEOS_OP_COUNT         53

/* OP_SPAWN's buffer 2: these int64 fields in this order, then ngroups gids, then nkeep fds
 * (fds the child keeps), then nactions file actions of 4 int64 each (ELEOS_SPAWN_*, fd, a, b:
 * open(path, a=flags, b=mode) onto fd, its path the next string of buffer 1 after cwd;
 * close(fd); dup2(fd, a), b=1: make it blocking, the app's view of fd), applied in order, as posix_spawn's file_actions are.  -1 means
 * "none" for an fd, pgid, gid, uid, umask, nenv, ngroups.  sigmask/sigdef: bit n-1 is signal
 * n; sched: 0 none, 1 sched_setparam, 2 sched_setscheduler.
 * Keep in step with abi.SPAWN_FIELDS (a test checks). */
enum eleos_spawn_field {
    ELEOS_SP_P2CREAD, ELEOS_SP_P2CWRITE, ELEOS_SP_C2PREAD, ELEOS_SP_C2PWRITE, ELEOS_SP_ERRREAD,
    ELEOS_SP_ERRWRITE, ELEOS_SP_ERRPIPE_READ, ELEOS_SP_ERRPIPE_WRITE, ELEOS_SP_CLOSE_FDS,
    ELEOS_SP_RESTORE_SIGNALS, ELEOS_SP_SETSID, ELEOS_SP_PGID, ELEOS_SP_GID, ELEOS_SP_UID,
    ELEOS_SP_UMASK, ELEOS_SP_NARGV, ELEOS_SP_NEXEC, ELEOS_SP_NENV, ELEOS_SP_HAS_CWD,
    ELEOS_SP_NGROUPS, ELEOS_SP_NKEEP, ELEOS_SP_RESETIDS, ELEOS_SP_HAS_SIGMASK, ELEOS_SP_SIGMASK,
    ELEOS_SP_SIGDEF, ELEOS_SP_SCHED, ELEOS_SP_SCHED_POLICY, ELEOS_SP_SCHED_PRIORITY,
    ELEOS_SP_NACTIONS, ELEOS_SP_FIXED
};
#define ELEOS_SPAWN_OPEN       0
#define ELEOS_SPAWN_CLOSE      1
#define ELEOS_SPAWN_DUP2       2

/* recvmsg's name area at the start of buffer 2: sizeof(struct sockaddr_storage). */
#define ELEOS_MSG_NAME_MAX    128

/* The stat record the host fills (fixed layout, independent of the libc's struct stat). */
struct eleos_stat {
    uint64_t dev, ino, nlink, mode, uid, gid, rdev, size, blksize, blocks;
    int64_t  atime_ns, mtime_ns, ctime_ns;
};

/* One request.  In the RPC ring these are the slots; for an OCALL the enclave fills one on
 * its untrusted staging area and passes it to the host handler. */
struct eleos_req {
    uint32_t state;         /* ring only: ELEOS_SLOT_*; accessed with __atomic builtins */
    uint32_t op;            /* ELEOS_OP_* */
    /* The reply shares the state's cache line: a worker that publishes DONE hands the
     * producer one line back, not two (a ring round trip is a few line transfers). */
    int64_t  ret;           /* out: result >= 0, or -errno */
    uint64_t out_len;       /* out: bytes the host wrote to buf */
    uint64_t out2_len;      /* out: bytes the host wrote to buf2 */
    int64_t  args[6];
    uint64_t buf;           /* address of buffer 1 in untrusted memory */
    uint64_t buf_len;       /* in: bytes valid (input) or capacity (output) */
    uint64_t buf2;          /* address of buffer 2 in untrusted memory */
    uint64_t buf2_len;
    uint64_t seq;           /* ring only: ticket of the producer that owns the slot */
};

/* Slot states of the RPC ring (issue: exit-less system calls). */
#define ELEOS_SLOT_FREE    0u   /* empty, a producer may claim it */
#define ELEOS_SLOT_CLAIMED 1u   /* a producer is filling it */
#define ELEOS_SLOT_POSTED  2u   /* ready for a worker */
#define ELEOS_SLOT_TAKEN   3u   /* a worker is running the call */
#define ELEOS_SLOT_DONE    4u   /* result written; the producer reads it and frees the slot */
#define ELEOS_SLOT_ABANDON 5u   /* the producer gave up waiting for a worker (fallback) */

/* The host's OCALL entry point: runs req->op for real and fills ret/out_len/out2_len. */
typedef void (*eleos_host_dispatch_fn)(struct eleos_req *req);

/* The modeled CPU's transition charges, handed to the other halves as function pointers. */
#define ELEOS_T_EENTER  0
#define ELEOS_T_EEXIT   1
#define ELEOS_T_AEX     2
#define ELEOS_T_ERESUME 3
typedef void (*eleos_cpu_charge_fn)(int transition);   /* count it and spend its cycles */
typedef void (*eleos_cpu_pollute_fn)(void);             /* the indirect cost after an exit */
/* The fault open on the calling thread did `ticks` of its time for other faults (> 0), or
 * had that much of its own done by another (< 0): the EPC driver's clustered reclaim. */
typedef void (*eleos_cpu_shift_fn)(int64_t ticks);

/* The paths a call can take (trusted/_native/enclave_ocalls.c counts each). */
#define ELEOS_PATH_DIRECT   0
#define ELEOS_PATH_OCALL    1
#define ELEOS_PATH_RPC      2
#define ELEOS_PATH_FALLBACK 3

/* The enclave's RPC producer (trusted/_native/enclave_rpc.c): submit req (the enclave's own
 * copy of the request, in enclave memory) to the ring at `ring`, spin up to `spin`
 * iterations for a worker to take it.  Returns ELEOS_RPC_DONE with the results, read once
 * from the slot, copied back into *req, ELEOS_RPC_FALLBACK if no worker took it (or the ring was
 * full: the caller then makes an OCALL), or ELEOS_RPC_CORRUPT if what the host left in the
 * slot is impossible (the caller raises IagoError). */
#define ELEOS_RPC_DONE      0
#define ELEOS_RPC_FALLBACK  1
#define ELEOS_RPC_CORRUPT   2
typedef int (*eleos_enclave_rpc_fn)(uintptr_t ring, struct eleos_req *req, uint64_t spin);

/* ---- The RPC ring (exit-less system calls; untrusted/_native/rpc_workers.c allocates and
 * serves it, trusted/_native/enclave_rpc.c produces into it).  One mapping in untrusted memory:
 * this header, the `posted` bitmap (one bit per slot, own cache lines), then `nslots` slots
 * of ELEOS_RING_SLOT_SIZE bytes, each a struct eleos_req.
 * A producer claims any FREE slot (CAS FREE -> CLAIMED, starting where its thread last
 * succeeded), fills it, stamps `seq` with a ticket of its own, publishes POSTED and sets the
 * slot's bit.  A worker that sees a bit moves the slot POSTED -> TAKEN (CAS), clears the bit,
 * runs the call and publishes DONE; the producer reads the result and frees the slot.  A
 * producer that waited too long moves it POSTED -> ABANDON, clears the bit, frees it and makes
 * an OCALL instead.  No slot waits for another (no FIFO order): a thread preempted while it
 * holds a slot blocks only that slot.  Everything here is host-writable: the enclave indexes
 * slots with the slot count it attached with, never with `nslots` below, and checks every
 * field it reads back. */
#define ELEOS_RING_MAGIC     0x676e6972736f656cull   /* "leosring" */
#define ELEOS_RING_HDR_SIZE  256   /* four cache lines; the posted bitmap follows */
#define ELEOS_RING_SLOT_SIZE 128   /* struct eleos_req (120 bytes) padded: no false sharing */
#define ELEOS_MAX_ERRNO      4095  /* a result below -4095 is neither a result nor an errno */
#define ELEOS_RPC_WHY_FULL      0   /* no free slot: nslots calls in flight */
#define ELEOS_RPC_WHY_NO_WORKER 1   /* no worker running (0 configured, or stopped) */
#define ELEOS_RPC_WHY_TIMEOUT   2   /* no worker took it within the spin budget */
#define ELEOS_RPC_WHY_ASLEEP    3   /* every worker asleep: woken, the call exits meanwhile */

struct eleos_ring {
    uint64_t magic;         /* ELEOS_RING_MAGIC */
    uint32_t nslots;        /* informational (the enclave uses its own copy) */
    uint32_t slot_size;     /* ELEOS_RING_SLOT_SIZE */
    uint32_t workers_live;  /* running workers; 0: producers fall back without posting */
    uint32_t wake_pending;  /* a producer woke a worker that has not come back yet */
    uint8_t  _pad0[40];
    uint32_t futex;         /* bumped by a producer that wakes a sleeping worker */
    uint32_t sleepers;      /* workers asleep or about to sleep on `futex` */
    uint8_t  _pad1[56];
    uint64_t fallbacks;     /* calls producers took back to make an OCALL (stats) */
    uint64_t wakeups;       /* futex wakes producers made, each riding on a fallback OCALL */
    uint64_t fallback_why[4];  /* fallbacks by reason: ELEOS_RPC_WHY_* (stats) */
    uint8_t  _pad2[16];
    uint8_t  _pad3[64];
};

/* Where things are, for a ring of n slots. */
#define ELEOS_RING_POSTED_WORDS(n) (((uint64_t)(n) + 63) / 64)
#define ELEOS_RING_POSTED(ring) ((uint64_t *)((char *)(ring) + ELEOS_RING_HDR_SIZE))
#define ELEOS_RING_SLOTS_OFFSET(n) \
    (ELEOS_RING_HDR_SIZE + ((ELEOS_RING_POSTED_WORDS(n) * 8 + 127) & ~(uint64_t)127))
#define ELEOS_RING_SLOT(ring, n, i) ((struct eleos_req *)((char *)(ring) + \
    ELEOS_RING_SLOTS_OFFSET(n) + (uint64_t)(i) * ELEOS_RING_SLOT_SIZE))
#define ELEOS_RING_BYTES(n) (ELEOS_RING_SLOTS_OFFSET(n) + (uint64_t)(n) * ELEOS_RING_SLOT_SIZE)
_Static_assert(sizeof(struct eleos_ring) == ELEOS_RING_HDR_SIZE, "ring header size");
_Static_assert(sizeof(struct eleos_req) <= ELEOS_RING_SLOT_SIZE, "a request fits a slot");

#endif

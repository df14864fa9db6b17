"""The boundary ABI, Python side: OCALL numbers and the request layout.

The C definition is ``eleos_shim/include/eleos_abi.h``; this module mirrors it and
``tests/test_abi.py`` checks that both agree, so there is one ABI with two spellings.
Both halves (trusted/ and untrusted/) import these names; neither imports the other.
"""
from __future__ import annotations

import os
import re

INCLUDE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "include")
HEADER = os.path.join(INCLUDE_DIR, "eleos_abi.h")

OPS = (
    "NOP", "READ", "WRITE", "PREAD", "PWRITE", "LSEEK", "CLOSE", "OPENAT", "FSTAT", "FSTATAT",
    "FSYNC", "FTRUNCATE", "TRUNCATE", "UNLINKAT", "RENAMEAT", "MKDIRAT", "GETDENTS", "SENDFILE",
    "SOCKET", "BIND", "LISTEN", "ACCEPT4", "CONNECT", "SENDTO", "RECVFROM", "SHUTDOWN",
    "SETSOCKOPT", "GETSOCKOPT", "GETSOCKNAME", "GETPEERNAME", "POLL", "EPOLL_CREATE", "EPOLL_CTL",
    "EPOLL_WAIT", "GETADDRINFO", "FCNTL", "DUP", "PIPE2", "SOCKETPAIR", "FDATASYNC", "IOCTL_INT",
    "RECVMSG", "SENDMSG", "SPAWN", "FCHMODAT", "UTIMENSAT", "FACCESSAT", "DUP3", "CHDIR",
    "GETCWD", "READLINKAT", "SYMLINKAT", "LINKAT",
)
MSG_NAME_MAX = 128      # ELEOS_MSG_NAME_MAX: recvmsg's name area at the start of buffer 2
# OP_SPAWN's buffer 2: these int64 fields (eleos_abi.h ELEOS_SP_*), then the groups, then the
# fds to keep, then the file actions (4 int64 each: SPAWN_OPEN/CLOSE/DUP2, fd, a, b).
SPAWN_FIELDS = ("p2cread", "p2cwrite", "c2pread", "c2pwrite", "errread", "errwrite",
                "errpipe_read", "errpipe_write", "close_fds", "restore_signals", "setsid",
                "pgid", "gid", "uid", "umask", "nargv", "nexec", "nenv", "has_cwd", "ngroups",
                "nkeep", "resetids", "has_sigmask", "sigmask", "sigdef", "sched", "sched_policy",
                "sched_priority", "nactions")
SPAWN_OPEN, SPAWN_CLOSE, SPAWN_DUP2 = range(3)    # ELEOS_SPAWN_*
OP = {name: number for number, name in enumerate(OPS)}
OP_NAMES = dict(enumerate(OPS))
globals().update({"OP_" + name: number for name, number in OP.items()})

SLOT_FREE, SLOT_CLAIMED, SLOT_POSTED, SLOT_TAKEN, SLOT_DONE, SLOT_ABANDON = range(6)
T_EENTER, T_EEXIT, T_AEX, T_ERESUME = range(4)
PATH_DIRECT, PATH_OCALL, PATH_RPC, PATH_FALLBACK = range(4)
PATH_NAMES = ("direct", "ocall", "rpc", "fallback")
RPC_DONE, RPC_FALLBACK, RPC_CORRUPT = range(3)

# The RPC ring (eleos_abi.h: struct eleos_ring, then the slots).
RING_MAGIC = 0x676E6972736F656C
RING_HDR_SIZE = 256
RING_SLOT_SIZE = 128
MAX_ERRNO = 4095
RPC_WHY = ("ring_full", "no_worker", "timeout", "workers_asleep")   # ELEOS_RPC_WHY_*


def ring_slots_offset(nslots: int) -> int:
    """ELEOS_RING_SLOTS_OFFSET: the header, then the posted bitmap rounded up to 128 bytes."""
    words = (nslots + 63) // 64
    return RING_HDR_SIZE + ((words * 8 + 127) & ~127)

# struct eleos_stat: 10 u64 then 3 i64.
STAT_FORMAT = "=10Q3q"
STAT_FIELDS = ("dev", "ino", "nlink", "mode", "uid", "gid", "rdev", "size", "blksize", "blocks",
               "atime_ns", "mtime_ns", "ctime_ns")


def header_ops() -> dict[str, int]:
    """The OCALL numbers as the C header spells them (for the consistency test)."""
    with open(HEADER) as f:
        text = f.read()
    return {m.group(1): int(m.group(2))
            for m in re.finditer(r"#define ELEOS_OP_(\w+)\s+(\d+)", text) if m.group(1) != "COUNT"}


def header_cdef() -> str:
    """The struct and typedef declarations of the header, for cffi's ``cdef``."""
    return """
    struct eleos_stat {
        uint64_t dev, ino, nlink, mode, uid, gid, rdev, size, blksize, blocks;
        int64_t  atime_ns, mtime_ns, ctime_ns;
    };
    struct eleos_req {
        uint32_t state; uint32_t op; int64_t ret; uint64_t out_len; uint64_t out2_len;
        int64_t args[6]; uint64_t buf; uint64_t buf_len; uint64_t buf2; uint64_t buf2_len;
        uint64_t seq;
    };
    typedef void (*eleos_host_dispatch_fn)(struct eleos_req *req);
    typedef void (*eleos_cpu_charge_fn)(int transition);
    typedef void (*eleos_cpu_pollute_fn)(void);
    typedef void (*eleos_cpu_shift_fn)(int64_t ticks);
    struct eleos_ring {
        uint64_t magic; uint32_t nslots; uint32_t slot_size; uint32_t workers_live;
        uint32_t wake_pending; uint8_t _pad0[40];
        uint32_t futex; uint32_t sleepers; uint8_t _pad1[56];
        uint64_t fallbacks; uint64_t wakeups; uint64_t fallback_why[4]; uint8_t _pad2[16];
        uint8_t _pad3[64];
    };
    typedef int (*eleos_enclave_rpc_fn)(uintptr_t ring, struct eleos_req *req, uint64_t spin);
    """

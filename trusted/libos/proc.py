"""TRUSTED side: child processes.  The enclave cannot fork; it can ask the host to start a program.

An SGX enclave cannot fork: its memory is encrypted with keys bound to this enclave instance,
so a child that is a copy of the enclave would have to be a new enclave, attested and handed
the parent's state sealed (Graphene-SGX's checkpoint-and-restore).  eleos-shim does not model
that, so ``os.fork``/``os.forkpty`` (and ``preexec_fn``, which would run Python code of the
enclave in the child) raise :class:`EnclaveForkError`.

What an enclave *can* do is what SDK enclaves do: ask the host, with an OCALL, to start a host
program.  ``subprocess`` (through ``_posixsubprocess.fork_exec``, which it calls for every
child), ``os.spawn*`` and ``os.system`` are routed that way (OP_SPAWN, always an OCALL: it is slow and the
host's fork must not run on an RPC worker).  The child's pipes are ordinary enclave fds made
by ``os.pipe``, so the parent's reads and writes on them are routed; the child itself is a
host program, outside the enclave, and sees only what the app sends it.
"""
from __future__ import annotations

import errno as _errno
import os as _os
import struct

from eleos_shim import abi
from eleos_shim.errors import IagoError


class EnclaveForkError(OSError):
    """Raised by os.fork, os.forkpty, os.posix_spawn and preexec_fn inside the enclave
    (errno ENOSYS)."""


def _refuse(what: str):
    def refused(*args, **kwargs):
        raise EnclaveForkError(
            _errno.ENOSYS,
            f"{what} is not possible inside the enclave: an SGX enclave cannot fork (its "
            f"memory is bound to this enclave instance); subprocess and os.system start "
            f"host programs instead")
    refused.__name__ = what.rsplit(".", 1)[-1].rstrip("()")
    refused.__qualname__ = refused.__name__
    return refused


def _fsencode_all(items, what: str) -> list[bytes]:
    out = []
    for item in items:
        raw = _os.fsencode(item)
        if b"\0" in raw:
            raise ValueError("embedded null byte")
        out.append(raw)
    if not out and what == "args":
        raise ValueError("args must not be empty")
    return out


class Spawner:
    """The routed process starters of one enclave."""

    def __init__(self, kernel):
        self.kernel = kernel

    def spawn(self, argv, executables, env, cwd, fds=(-1,) * 8, close_fds=False,
              keep=(), restore_signals=True, setsid=False, pgid=-1, gid=None, groups=None,
              uid=None, umask=-1) -> int:
        """One OP_SPAWN: the pid of the host program started (checked: a positive pid)."""
        argv, executables = _fsencode_all(argv, "args"), _fsencode_all(executables, "exec")
        env_list = None if env is None else _fsencode_all(env, "env")
        strings = b"".join(s + b"\0" for s in argv + executables + (env_list or []))
        if cwd is not None:
            strings += _fsencode_all([cwd], "cwd")[0] + b"\0"
        groups = None if groups is None else [int(g) for g in groups]
        keep = sorted(int(fd) for fd in keep)
        fields = dict(zip(("p2cread", "p2cwrite", "c2pread", "c2pwrite", "errread",
                           "errwrite", "errpipe_read", "errpipe_write"), fds))
        fields.update(close_fds=int(bool(close_fds)), restore_signals=int(bool(restore_signals)),
                      setsid=int(bool(setsid)), pgid=pgid, gid=-1 if gid is None else gid,
                      uid=-1 if uid is None else uid, umask=umask, nargv=len(argv),
                      nexec=len(executables), nenv=-1 if env_list is None else len(env_list),
                      has_cwd=int(cwd is not None), ngroups=-1 if groups is None else len(groups),
                      nkeep=len(keep))
        ints = [fields[name] for name in abi.SPAWN_FIELDS] + (groups or []) + keep
        r = self.kernel.check(abi.OP_SPAWN, inbuf=strings,
                              in2=struct.pack(f"={len(ints)}q", *ints), wait=True)
        if r.ret <= 0 or r.ret >= 1 << 31:
            raise IagoError(f"host returned an impossible pid {r.ret} for spawn")
        return r.ret

    def fork_exec(self, args, executable_list, close_fds, fds_to_keep, cwd, env_list,
                  p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite,
                  errpipe_read, errpipe_write, restore_signals, call_setsid, pgid_to_set,
                  gid, extra_groups, uid, child_umask, preexec_fn, *unused):
        """``_posixsubprocess.fork_exec`` (CPython 3.11's arguments), as a host spawn."""
        if preexec_fn is not None:
            _refuse("subprocess preexec_fn")()
        return self.spawn(args, executable_list, env_list, cwd,
                          (p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite,
                           errpipe_read, errpipe_write), close_fds, fds_to_keep,
                          restore_signals, call_setsid, pgid_to_set, gid, extra_groups, uid,
                          child_umask)

    def spawnvef(self, mode, file, args, env, func):
        """``os.spawnv*``'s helper (``os._spawnvef``, which forks natively): the program as a
        host spawn; a child that cannot exec exits 127, as natively."""
        if not isinstance(args, (tuple, list)):
            raise TypeError("argv must be a tuple or a list")
        if not args or not args[0]:
            raise ValueError("argv first element cannot be empty")
        env_list = None
        if env is not None:
            env_list = []
            for key, value in env.items():
                key = _os.fsencode(key)
                if b"=" in key:
                    raise ValueError("illegal environment variable name")
                env_list.append(key + b"=" + _os.fsencode(value))
        exe = _os.fsencode(file)
        if func in (_os.execvp, _os.execvpe) and not _os.path.dirname(exe):
            executables = [_os.path.join(_os.fsencode(d), exe) for d in _os.get_exec_path(env)]
        else:
            executables = [exe]
        pid = self.spawn(args, executables, env_list, None)
        if mode == _os.P_NOWAIT:
            return pid
        while True:
            wpid, sts = _os.waitpid(pid, 0)
            if _os.WIFSTOPPED(sts):
                continue
            return _os.waitstatus_to_exitcode(sts)

    def system(self, command):
        """``os.system``: ``/bin/sh -c command`` on the host, with the app's stdio; the wait
        status."""
        pid = self.spawn(["sh", "-c", command], ["/bin/sh"], None, None)
        while True:
            try:
                return _os.waitpid(pid, 0)[1]
            except InterruptedError:
                continue


def patches(kernel) -> list[tuple[object, str, object]]:
    """(owner, attribute, replacement) for every fork/spawn entry point that exists."""
    import subprocess
    spawner = Spawner(kernel)
    out = []
    for name in ("fork", "forkpty", "posix_spawn", "posix_spawnp"):
        if hasattr(_os, name):
            out.append((_os, name, _refuse(f"os.{name}()")))
    out.append((_os, "system", spawner.system))
    if hasattr(_os, "_spawnvef"):
        out.append((_os, "_spawnvef", spawner.spawnvef))
    # subprocess binds fork_exec at import and prefers posix_spawn when it can: route both
    # through fork_exec.
    out.append((subprocess, "_fork_exec", spawner.fork_exec))
    out.append((subprocess, "_USE_POSIX_SPAWN", False))
    try:
        import _posixsubprocess
        out.append((_posixsubprocess, "fork_exec", spawner.fork_exec))
    except ImportError:   # pragma: no cover - always present on Linux
        pass
    return out

"""TRUSTED side: child processes.  A fork is a new enclave; a spawn is a host program.

An SGX enclave's memory is encrypted with keys bound to that enclave instance, so a child that
is a copy of the enclave must be a new enclave, handed the parent's state (Graphene-SGX's
checkpoint-and-restore, which Eleos ran on).  ``os.fork`` does that when the loader gives the
LibOS a host fork (eleos_shim/fork.py builds the child enclave before it returns there): the
child gets a private copy of the enclave's state, 0 in the child, the child's pid in the parent,
as natively.  What the host answers is hostile input: the pid is checked as spawn's is, and a
0 ("you are the child") must come in a process other than the one that asked.  The host fork
may refuse (an EPC domain): then, as without one, :class:`EnclaveForkError`.  ``os.forkpty``
and subprocess's ``preexec_fn`` stay refused: forkpty's terminal would be the host's fds, not
the enclave's, and preexec_fn runs enclave code in a child that then execs a host program,
which no spawn OCALL can carry.

What an enclave *can* also do is what SDK enclaves do: ask the host, with an OCALL, to start a
host program.  ``subprocess`` (through ``_posixsubprocess.fork_exec``, which it calls for every
child), ``os.spawn*``, ``os.system`` and ``os.posix_spawn``/``posix_spawnp`` (file actions,
process group, session, reset ids, signal mask and defaults, scheduler: all of them) are
routed that way (OP_SPAWN, always an OCALL: it is slow and the host's fork must not run on an
RPC worker).  The child's pipes are ordinary enclave fds made
by ``os.pipe``, so the parent's reads and writes on them are routed; the child itself is a
host program, outside the enclave, and sees only what the app sends it.  What the host says
of a child is hostile input: its pid is checked, and a child that fails reports on an error
pipe of the enclave's own, in the one form an honest child writes (README "Threat model").
"""
from __future__ import annotations

import errno as _errno
import operator
import os as _os
import struct
import sys

from eleos_shim import abi
from eleos_shim.errors import IagoError
from trusted.cargs import as_int, c_int, id_t


class EnclaveForkError(OSError):
    """Raised by os.forkpty and preexec_fn inside the enclave, and by os.fork where the
    enclave cannot fork (errno ENOSYS)."""


def _refuse(what: str, why: str | None = None):
    def refused(*args, **kwargs):
        raise EnclaveForkError(
            _errno.ENOSYS,
            f"{what} is not possible inside the enclave: "
            f"{why or 'an SGX enclave cannot fork (its memory is bound to this enclave instance)'}"
            f"; subprocess, os.system and os.posix_spawn start host programs instead")
    refused.__name__ = what.rsplit(".", 1)[-1].rstrip("()")
    refused.__qualname__ = refused.__name__
    return refused


def _fsencode_one(item) -> bytes:
    """As PyUnicode_FSConverter: str, bytes or PathLike; no NUL."""
    raw = _os.fsencode(item)
    if b"\0" in raw:
        raise ValueError("embedded null byte")
    return raw


def _fsencode_all(items, what: str) -> list[bytes]:
    out = [_fsencode_one(item) for item in items]
    if not out and what == "args":
        raise ValueError("args must not be empty")
    return out


# The most of a spawn child's error report the enclave reads (CPython's subprocess reads
# at most this much of its error pipe); an honest report ("OSError:<hex>:noexec") is ~30 bytes.
_MAX_REPORT = 50000
_INT_MAX = (1 << 31) - 1
_UNSET = object()                  # an argument not given (C's NULL default), not None
_NSIG = 65                         # Linux: signals 1..64
# What glibc's posix_spawnattr_setschedpolicy accepts.
_SCHED_POLICIES = tuple(getattr(_os, n) for n in ("SCHED_OTHER", "SCHED_FIFO", "SCHED_RR")
                        if hasattr(_os, n))
F_DUPFD_CLOEXEC = 1030            # Linux's fcntl: the lowest free fd at or above the argument


def _env_list(env) -> list[bytes]:
    out = []
    for key, value in zip(list(env.keys()), list(env.values())):
        key, value = _fsencode_one(key), _fsencode_one(value)
        if not key or b"=" in key[1:]:
            raise ValueError("illegal environment variable name")
        out.append(key + b"=" + value)
    return out


def _sigset(signals) -> list[int]:
    """As CPython's _Py_Sigset_Converter."""
    out = []
    for item in signals:
        n = operator.index(item)
        if not 0 < n < _NSIG:
            raise ValueError(f"signal number {n} out of range [1; {_NSIG - 1}]")
        out.append(n)
    return out


def _bits(signals) -> int:
    bits = 0
    for n in signals:
        bits |= 1 << (n - 1)
    return bits - (1 << 64) if bits >= 1 << 63 else bits      # an int64 field


class SpawnAttrs:
    """posix_spawn's attributes and file actions, checked, ready for OP_SPAWN."""

    def __init__(self):
        self.actions: list[tuple[int, int, int, int]] = []
        self.open_paths: list[bytes] = []
        self.pgroup = None
        self.resetids = False
        self.sigmask = None
        self.sigdef: list[int] = []
        self.sched = None                 # (policy or None, priority)


def _bad_fd(fd: int) -> bool:
    # glibc's posix_spawn_file_actions_add*: EBADF for an fd no process can have.
    import resource
    return fd < 0 or fd >= resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def spawn_attrs(file_actions, setpgroup, resetids, setsigmask, setsigdef,
                scheduler) -> SpawnAttrs:
    """CPython's parse_file_actions and parse_posix_spawn_flags: the same checks, errors and
    order."""
    a = SpawnAttrs()
    if file_actions is not None and file_actions is not _UNSET:
        try:
            actions = list(file_actions)          # PySequence_Fast: any iterable
        except TypeError:
            raise TypeError("file_actions must be a sequence or None") from None
        for action in actions:
            if not isinstance(action, tuple) or not action:
                raise TypeError("Each file_actions element must be a non-empty tuple")
            tag = operator.index(action[0])
            if tag == _os.POSIX_SPAWN_OPEN:
                if len(action) != 5:
                    raise TypeError("A open file_action tuple must have 5 elements")
                fd, path = c_int(action[1]), _fsencode_one(action[2])
                flags, mode = c_int(action[3]), operator.index(action[4]) & 0xFFFFFFFF
                if _bad_fd(fd):
                    raise OSError(_errno.EBADF, _os.strerror(_errno.EBADF))
                a.actions.append((abi.SPAWN_OPEN, fd, flags, mode))
                a.open_paths.append(path)
            elif tag == _os.POSIX_SPAWN_CLOSE:
                if len(action) != 2:
                    raise TypeError("A close file_action tuple must have 2 elements")
                fd = c_int(action[1])
                if _bad_fd(fd):
                    raise OSError(_errno.EBADF, _os.strerror(_errno.EBADF))
                a.actions.append((abi.SPAWN_CLOSE, fd, 0, 0))
            elif tag == _os.POSIX_SPAWN_DUP2:
                if len(action) != 3:
                    raise TypeError("A dup2 file_action tuple must have 3 elements")
                fd, new = c_int(action[1]), c_int(action[2])
                if _bad_fd(fd) or _bad_fd(new):
                    raise OSError(_errno.EBADF, _os.strerror(_errno.EBADF))
                a.actions.append((abi.SPAWN_DUP2, fd, new, 0))
            else:
                raise TypeError("Unknown file_actions identifier")
    if setpgroup is not _UNSET:
        a.pgroup = as_int(setpgroup)
    a.resetids = resetids
    if setsigmask is not _UNSET:
        a.sigmask = _sigset(setsigmask)
    if setsigdef is not _UNSET:
        a.sigdef = _sigset(setsigdef)
    if scheduler is not _UNSET:
        if not isinstance(scheduler, tuple):
            raise SystemError("new style getargs format but argument is not a tuple")
        if len(scheduler) != 2:
            raise TypeError("A scheduler tuple must have two elements")
        policy, param = scheduler
        if not isinstance(param, _os.sched_param):
            raise TypeError("must have a sched_param object")
        priority = as_int(param.sched_priority)
        if policy is not None:
            policy = as_int(policy)
            if policy not in _SCHED_POLICIES:
                raise OSError(_errno.EINVAL, _os.strerror(_errno.EINVAL))
        a.sched = (policy, priority)
    return a


# What the host child's report may say after its errno: where it failed (CPython's own child
# reports the same): before exec ("noexec"), in chdir ("noexec:chdir"), or in exec itself.
_STAGES = (b"noexec", b"noexec:chdir", b"")


def _child_report(report: bytes) -> tuple[int, bytes]:
    """The errno and stage of the host child's "OSError:<hex>:<stage>" report (checked:
    hostile input, whose every other form is an IagoError)."""
    parts = report.split(b":", 2)
    try:
        if len(parts) != 3 or parts[0] != b"OSError" or parts[2] not in _STAGES or \
                not parts[1] or parts[1].strip(b"0123456789abcdef"):
            raise ValueError
        err = int(parts[1], 16)
    except ValueError:
        raise IagoError(f"host's spawn child reported {report[:80]!r}") from None
    if not 0 < err < 4096:
        raise IagoError(f"host's spawn child reported errno {err}")
    return err, parts[2]


def _reap(pid: int) -> None:
    """Wait for a child that failed before its exec (it exits at once), as glibc's posix_spawn
    and subprocess do."""
    while True:
        try:
            _os.waitpid(pid, 0)
            return
        except InterruptedError:
            continue
        except ChildProcessError:
            return


def _orig_executable(args, executable_list):
    """What subprocess names in an exec failure (its ``orig_executable``): ``args[0]`` as the
    app gave it when the executables came from it, else the program they were made from (as
    a str: an ``executable=`` given as bytes is not seen here, only its encoding)."""
    first = _os.fsencode(args[0])
    names = [_os.fsencode(e) for e in executable_list]
    if _os.path.dirname(first):
        if names == [first]:
            return args[0]
    elif names and all(_os.path.basename(n) == first for n in names):
        return args[0]
    exe = names[0] if len(names) == 1 else _os.path.basename(names[0])
    return _os.fsdecode(exe)


class Spawner:
    """The routed process starters of one enclave."""

    def __init__(self, kernel, fs=None):
        self.kernel = kernel
        self.fs = fs

    def spawn(self, argv, executables, env, cwd, fds=(-1,) * 8, close_fds=False,
              keep=(), restore_signals=True, setsid=False, pgid=-1, gid=None, groups=None,
              uid=None, umask=-1, spawn_attrs=None) -> int:
        """One OP_SPAWN: the pid of the host program started (checked: a positive pid).
        ``spawn_attrs``: posix_spawn's, from :func:`spawn_attrs`."""
        argv, executables = _fsencode_all(argv, "args"), _fsencode_all(executables, "exec")
        env_list = None if env is None else _fsencode_all(env, "env")
        strings = b"".join(s + b"\0" for s in argv + executables + (env_list or []))
        if cwd is not None:
            strings += _fsencode_all([cwd], "cwd")[0] + b"\0"
        attrs = spawn_attrs or SpawnAttrs()
        policy, priority = attrs.sched if attrs.sched is not None else (None, 0)
        strings += b"".join(path + b"\0" for path in attrs.open_paths)
        groups = None if groups is None else [int(g) for g in groups]
        keep = sorted(int(fd) for fd in keep)
        fields = dict(zip(("p2cread", "p2cwrite", "c2pread", "c2pwrite", "errread",
                           "errwrite", "errpipe_read", "errpipe_write"), fds))
        fields.update(close_fds=int(bool(close_fds)), restore_signals=int(bool(restore_signals)),
                      setsid=int(bool(setsid)), pgid=pgid, gid=-1 if gid is None else gid,
                      uid=-1 if uid is None else uid, umask=umask, nargv=len(argv),
                      nexec=len(executables), nenv=-1 if env_list is None else len(env_list),
                      has_cwd=int(cwd is not None), ngroups=-1 if groups is None else len(groups),
                      nkeep=len(keep), resetids=int(attrs.resetids),
                      has_sigmask=int(attrs.sigmask is not None),
                      sigmask=_bits(attrs.sigmask or ()), sigdef=_bits(attrs.sigdef),
                      sched=0 if attrs.sched is None else (1 if policy is None else 2),
                      sched_policy=policy or 0, sched_priority=priority,
                      nactions=len(attrs.actions))
        ints = [fields[name] for name in abi.SPAWN_FIELDS] + (groups or []) + keep
        for action in attrs.actions:
            if action[0] == abi.SPAWN_DUP2 and self.kernel.app_blocking.get(action[1]):
                # The host keeps the enclave's pipes and sockets O_NONBLOCK; the child's copy
                # blocks, as the app's view of the fd does (fork_exec's stdio likewise).
                action = action[:3] + (1,)
            ints += action
        r = self.kernel.check(abi.OP_SPAWN, inbuf=strings,
                              in2=struct.pack(f"={len(ints)}q", *ints), wait=True)
        if r.ret <= 0 or r.ret >= 1 << 31:
            raise IagoError(f"host returned an impossible pid {r.ret} for spawn")
        if r.ret in (_os.getpid(), _os.getppid()):
            # A new child is neither the enclave nor its parent: the app's kill, send_signal or
            # wait on it would act on one of them.
            raise IagoError(f"host returned pid {r.ret} for spawn: the enclave's own or its "
                            f"parent's, not a new child's")
        return r.ret

    def fork_exec(self, *args):
        """subprocess's ``_fork_exec``: as :meth:`posix_fork_exec`, but a child that fails
        before or in its exec is an OSError raised here, as subprocess raises it (which
        then finds its own error pipe empty)."""
        return self._fork_exec(False, *args)

    def posix_fork_exec(self, *args):
        """``_posixsubprocess.fork_exec`` (CPython 3.11's arguments), as a host spawn; a child
        that fails reports it on the caller's error pipe, as natively."""
        return self._fork_exec(True, *args)

    def _fork_exec(self, to_caller, args, executable_list, close_fds, fds_to_keep, cwd,
                   env_list, p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite,
                   errpipe_read, errpipe_write, restore_signals, call_setsid, pgid_to_set,
                   gid, extra_groups, uid, child_umask, preexec_fn, *unused):
        if not isinstance(fds_to_keep, tuple):
            raise TypeError(f"fork_exec() argument 4 must be tuple, not "
                            f"{type(fds_to_keep).__name__}")
        prev = -1
        for fd in fds_to_keep:       # as _posixsubprocess: ints, sorted, no duplicate
            if not isinstance(fd, int) or fd <= prev or fd > _INT_MAX:
                raise ValueError("bad value(s) in fds_to_keep")
            prev = fd
        # As fork_exec's converters (subprocess leaves the range checks to them).
        gid = None if gid is None else id_t(gid, "gid")
        uid = None if uid is None else id_t(uid, "uid")
        if extra_groups is not None:
            try:
                extra_groups = [id_t(g, "gid") for g in extra_groups]
            except OverflowError:
                raise ValueError("invalid group id") from None
        if preexec_fn is not None:
            _refuse("subprocess preexec_fn", "the enclave cannot fork a child that runs "
                    "enclave code (preexec_fn) and then execs a host program: no spawn OCALL "
                    "carries code")()
        # The child reports on an error pipe of the enclave's own, read and checked here, not
        # on subprocess's: subprocess raises whatever builtin the report names (SystemExit,
        # KeyboardInterrupt, ...), and the report is the host's.  Its own pipe then reads
        # empty (the child never has it open after exec), and a failure is raised here as
        # subprocess raises it.
        keep = [fd for fd in fds_to_keep if fd != errpipe_write]
        pid, report = self._spawn_reporting(
            args, executable_list, env_list, cwd,
            (p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite), close_fds, keep,
            restore_signals, call_setsid, pgid_to_set, gid, extra_groups, uid, child_umask)
        if not report:
            return pid
        err, stage = _child_report(report)
        if to_caller:
            # What the native child writes (checked: only that), for the caller to read; the
            # child is the caller's to reap.
            self.fs.write(errpipe_write, b"OSError:%x:%s" % (err, stage))
            return pid
        _reap(pid)
        if stage == b"noexec":
            raise OSError(err, _os.strerror(err))
        raise OSError(err, _os.strerror(err),
                      cwd if stage == b"noexec:chdir" else _orig_executable(args, executable_list))

    def _spawn_reporting(self, argv, executables, env, cwd, stdio_fds, close_fds, keep,
                         *spawn_args, **spawn_kwargs) -> tuple[int, bytes]:
        """:meth:`spawn` with an error pipe of the enclave's own: ``(pid, the child's error
        report)``, the report empty once the child has exec'd."""
        fs = self.fs
        errpipe_read, errpipe_write = fs.pipe2(_os.O_CLOEXEC)
        try:
            try:
                errpipe_write = self._clear_of_child_fds(errpipe_write,
                                                         spawn_kwargs.get("spawn_attrs"))
                pid = self.spawn(argv, executables, env, cwd,
                                 tuple(stdio_fds) + (errpipe_read, errpipe_write), close_fds,
                                 list(keep) + [errpipe_write], *spawn_args, **spawn_kwargs)
            finally:
                fs.close(errpipe_write)
            report = b""
            while chunk := fs.read(errpipe_read, _MAX_REPORT + 1 - len(report)):
                report += chunk
                if len(report) > _MAX_REPORT:
                    # The host child's report is a few bytes; a pipe that keeps giving would
                    # grow enclave memory for as long as the host likes.
                    raise IagoError(f"host's spawn child reported more than {_MAX_REPORT} "
                                    f"bytes of error")
        finally:
            fs.close(errpipe_read)
        return pid, report

    def _clear_of_child_fds(self, fd: int, attrs) -> int:
        """``fd`` (the error pipe's write end), or a copy of it, closed on exec, numbered
        clear of every fd the child changes before its exec: 0-2 (its stdio) and what
        posix_spawn's file actions open, close or dup2 onto.  Natively the error pipe is
        never there (subprocess moves its own above 2; glibc's posix_spawn has none), but a
        pipe made when the app has closed fds 0-2, or one that an action names, would be
        clobbered in the child and its failure reported to whatever took the fd.  Nothing
        is asked of the host in the common case (an fd above 2 that no action names)."""
        targets = {0, 1, 2}
        for kind, a, b, _ in (attrs.actions if attrs is not None else ()):
            targets.add(b if kind == abi.SPAWN_DUP2 else a)
        if fd not in targets:
            return fd
        k, floor = self.kernel, 3
        while True:
            new = k.check(abi.OP_FCNTL, fd, F_DUPFD_CLOEXEC, floor).ret
            if not floor <= new < 1 << 31:
                raise IagoError(f"host returned fd {new} for fcntl(F_DUPFD_CLOEXEC, {floor})")
            k.adopt_fd(new, "fcntl(F_DUPFD_CLOEXEC)", raw=True)
            if new not in targets:
                break
            k.close(new)          # free again, but an action names it: look above it
            floor = new + 1
        try:
            k.close(fd)
        except OSError:
            pass                  # forgotten by the enclave all the same
        return new

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

    def posix_spawn(self, path, argv, env, /, *, file_actions=(), setpgroup=_UNSET,
                    resetids=False, setsid=False, setsigmask=_UNSET, setsigdef=_UNSET,
                    scheduler=_UNSET):
        """``os.posix_spawn``: ``path`` as a host program, with CPython's checks and errors."""
        return self._posix_spawn("posix_spawn", path, argv, env, file_actions, setpgroup,
                                 resetids, setsid, setsigmask, setsigdef, scheduler)

    def posix_spawnp(self, path, argv, env, /, *, file_actions=(), setpgroup=_UNSET,
                     resetids=False, setsid=False, setsigmask=_UNSET, setsigdef=_UNSET,
                     scheduler=_UNSET):
        """``os.posix_spawnp``: as posix_spawn, ``path`` looked up in this process's PATH
        (not in ``env``'s)."""
        return self._posix_spawn("posix_spawnp", path, argv, env, file_actions, setpgroup,
                                 resetids, setsid, setsigmask, setsigdef, scheduler)

    def _posix_spawn(self, func, path, argv, env, file_actions, setpgroup, resetids, setsid,
                     setsigmask, setsigdef, scheduler):
        from trusted.libos.fs import _path
        # Argument parsing first, as Argument Clinic does it, then the body's checks in order.
        if isinstance(path, str) and "\0" in path or isinstance(path, bytes) and b"\0" in path:
            raise ValueError(f"{func}: embedded null character in path")
        raw = _path(func, path)[0][:-1]
        resetids, setsid = bool(operator.index(resetids)), bool(operator.index(setsid))
        if not isinstance(argv, (list, tuple)):
            raise TypeError(f"{func}: argv must be a tuple or list")
        if not argv:
            raise ValueError(f"{func}: argv must not be empty")
        if not hasattr(type(env), "__getitem__"):
            raise TypeError(f"{func}: environment must be a mapping object")
        args = [_fsencode_one(a) for a in argv]
        if not args[0]:
            raise ValueError(f"{func}: argv first element cannot be empty")
        env_list = _env_list(env)
        attrs = spawn_attrs(file_actions, setpgroup, resetids, setsigmask, setsigdef, scheduler)
        sys.audit("os.posix_spawn", path, argv, env)
        if func == "posix_spawnp" and b"/" not in raw:
            executables = [_os.path.join(_os.fsencode(d), raw) for d in _os.get_exec_path()]
        else:
            executables = [raw]
        pid, report = self._spawn_reporting(args, executables, env_list, None, (-1,) * 6,
                                            False, (), restore_signals=False, setsid=setsid,
                                            pgid=-1 if attrs.pgroup is None else attrs.pgroup,
                                            spawn_attrs=attrs)
        if not report:
            return pid
        # As glibc's posix_spawn: the child that failed is reaped, its errno is the result.
        err, _stage = _child_report(report)
        _reap(pid)
        raise OSError(err, _os.strerror(err), path)

    def system(self, command):
        """``os.system``: ``/bin/sh -c command`` on the host, with the app's stdio; the wait
        status."""
        pid = self.spawn(["sh", "-c", command], ["/bin/sh"], None, None)
        while True:
            try:
                return _os.waitpid(pid, 0)[1]
            except InterruptedError:
                continue


class Forker:
    """``os.fork()`` of the enclave: the host's fork (``host_fork``, eleos_shim/fork.py) makes
    the child enclave; what it answers is checked here."""

    def __init__(self, kernel, host_fork):
        self.kernel = kernel
        self.host_fork = host_fork

    def fork(self):
        why = self.host_fork.refused()
        if why is not None:
            _refuse("os.fork()", f"this enclave cannot fork: {why}")()
        sys.audit("os.fork")
        me, parent = _os.getpid(), _os.getppid()
        # No other thread of the enclave may hold the fd table's lock at the fork: the child
        # would find it held for ever.
        with self.kernel._lock:
            pid = self.host_fork()
        if type(pid) is not int:
            raise IagoError(f"host returned {type(pid).__name__} for fork, not a pid")
        if pid != 0 and _os.getpid() != me:
            # The child told it is the parent would run the parent's code (and wait for a
            # child it does not have).
            raise IagoError(f"host answered the child's fork with pid {pid}, the parent's "
                            f"answer")
        if pid == 0:
            if _os.getpid() == me:
                # The parent told it is the child would run the child's code on the
                # parent's state (and the app would lose its child).
                raise IagoError("host answered the parent's fork with 0, the child's answer")
            return 0
        if pid < 0 or pid >= 1 << 31:
            raise IagoError(f"host returned an impossible pid {pid} for fork")
        if pid in (me, parent):
            raise IagoError(f"host returned pid {pid} for fork: the enclave's own or its "
                            f"parent's, not a new child's")
        return pid


class _NoReportExpected:
    """subprocess's ``builtins`` under the shim, which it consults only to name the exception
    of a child's error report (``getattr(builtins, name, SubprocessError)`` in
    ``Popen._execute_child``).  The child reports on the enclave's own pipe
    (:meth:`Spawner.fork_exec`), so subprocess's pipe reads empty from an honest host; data
    there is the host's answer to the read, and subprocess would raise the builtin it names
    (SystemExit, KeyboardInterrupt, ...): any lookup from there is the IagoError, a dunder
    name's too (``__class__`` made subprocess raise a TypeError).  Only while
    ``subprocess._fork_exec`` is the shim's: an app that puts its own there (CPython's tests
    of the report's parsing do) writes the pipe itself, and gets subprocess's parsing.
    Anyone else (introspection: inspect, pydoc, unittest.mock, asyncio's checks) gets what
    the builtins module answers for a name (AttributeError for one it has not), and dunder
    names are the object's own."""

    def __init__(self, fork_exec):
        self.__fork_exec__ = fork_exec

    def __getattribute__(self, name):
        import subprocess
        if subprocess._fork_exec is object.__getattribute__(self, "__fork_exec__") and \
                sys._getframe(1).f_code is subprocess.Popen._execute_child.__code__:
            raise IagoError(f"host answered a read of subprocess's error pipe, which no "
                            f"child writes, with a report naming {name!r}")
        if name.startswith("__") and name.endswith("__"):
            return object.__getattribute__(self, name)
        import builtins
        return getattr(builtins, name)


def patches(kernel, fs, host_fork=None) -> list[tuple[object, str, object]]:
    """(owner, attribute, replacement) for every fork/spawn entry point that exists.
    ``host_fork``: the loader's fork of this enclave (eleos_shim/fork.py), or None (refused)."""
    import subprocess
    spawner = Spawner(kernel, fs)
    out = []
    if hasattr(_os, "fork"):
        out.append((_os, "fork", Forker(kernel, host_fork).fork if host_fork is not None
                    else _refuse("os.fork()")))
    if hasattr(_os, "forkpty"):
        out.append((_os, "forkpty", _refuse(
            "os.forkpty()", "the enclave cannot fork onto a pseudo-terminal (its fds would be "
            "the host's, not the enclave's); os.fork works")))
    for name in ("posix_spawn", "posix_spawnp"):
        if hasattr(_os, name):
            out.append((_os, name, getattr(spawner, name)))
    out.append((_os, "system", spawner.system))
    if hasattr(_os, "_spawnvef"):
        out.append((_os, "_spawnvef", spawner.spawnvef))
    # subprocess binds fork_exec at import and prefers posix_spawn when it can: route both
    # through fork_exec.
    fork_exec = spawner.fork_exec          # one bound method: the guard knows it by identity
    out.append((subprocess, "_fork_exec", fork_exec))
    out.append((subprocess, "_USE_POSIX_SPAWN", False))
    out.append((subprocess, "builtins", _NoReportExpected(fork_exec)))
    try:
        import _posixsubprocess
        out.append((_posixsubprocess, "fork_exec", spawner.posix_fork_exec))
    except ImportError:   # pragma: no cover - always present on Linux
        pass
    return out

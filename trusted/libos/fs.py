"""TRUSTED side: the app's file system calls, routed through the transport.

``open``/``io.open`` build the same stack CPython builds (raw file -> Buffered* ->
TextIOWrapper, the C classes for the upper layers) on a raw :class:`FileIO` whose every
syscall is an ABI request; ``os.open/read/write/stat/...`` keep CPython's signatures, return
values and exceptions (errno and filename).  Directory listings come back from the host as raw
``linux_dirent64`` records and are parsed here as hostile input.
"""
from __future__ import annotations

import errno as _errno
import io as _io
import operator
import os as _os
import stat as _stat
import struct
import types as _types
import warnings

from eleos_shim import abi
from eleos_shim.errors import IagoError
from trusted.libos._kernel import (AT_FDCWD, AT_REMOVEDIR, AT_SYMLINK_NOFOLLOW, F_GETFL,
                                   F_SETFL, MAX_IO, O_CLOEXEC, O_DIRECTORY, O_NONBLOCK, POLLIN,
                                   POLLOUT, STAT, Kernel, oserror, set_errno, stat_result)
from trusted.syscall import Reply

DEFAULT_BUFFER_SIZE = _io.DEFAULT_BUFFER_SIZE
TIOCOUTQ = 0x5411          # a tty-only ioctl with an int result: how isatty() asks the host
GETDENTS_BUF = 32768       # glibc's readdir buffer size
_DIRENT = struct.Struct("=QqHB")   # linux_dirent64 head: ino, off, reclen, type; name follows
DT_UNKNOWN, DT_DIR, DT_REG, DT_LNK = 0, 4, 8, 10
SEEK_DATA, SEEK_HOLE = getattr(_os, "SEEK_DATA", 3), getattr(_os, "SEEK_HOLE", 4)
# The whences Linux's lseek knows: with one of them, landing at the offset itself is always
# a possible answer (the fast path below); with any other, no answer is a regular file's.
_WHENCES = frozenset({_os.SEEK_SET, _os.SEEK_CUR, _os.SEEK_END, SEEK_DATA, SEEK_HOLE})


def _seek_possible(pos: int, whence: int, ret: int) -> bool:
    """Whether a successful lseek(pos, whence) of a *regular file* can answer ``ret`` (>= 0).

    It lands where it is told (SEEK_SET); at a non-negative offset from a non-negative base,
    the position or the size, so at or past the offset (SEEK_CUR, SEEK_END); at the next data
    or hole at or past the offset (SEEK_DATA, SEEK_HOLE, ENXIO for a negative one); any other
    whence is EINVAL.  A device's lseek may answer what it likes (/dev/null and /dev/zero
    answer 0), so this says nothing of one."""
    if whence == _os.SEEK_SET:
        return ret == pos
    if whence == _os.SEEK_CUR or whence == _os.SEEK_END:
        return pos < 0 or ret >= pos
    if whence == SEEK_DATA or whence == SEEK_HOLE:
        return 0 <= pos <= ret
    return False


# -- argument conversion, as CPython's path_t / fildes converters -------------------------------
def _path(func: str, path, allow_fd: bool = False, nullable: bool = False):
    """(bytes path, None) or (None, fd) for ``path``; raise CPython's TypeError/ValueError."""
    if path is None and nullable:
        return b".\0", None
    if allow_fd and isinstance(path, int):
        return None, path
    if isinstance(path, str):
        raw = _os.fsencode(path)
    elif isinstance(path, bytes):
        raw = path
    else:
        fspath = getattr(type(path), "__fspath__", None)
        value = fspath(path) if fspath is not None else None
        if isinstance(value, (str, bytes)):
            raw = _os.fsencode(value)
        elif fspath is not None:
            raise TypeError(f"expected {type(path).__name__}.__fspath__() to return str "
                            f"or bytes, not {type(value).__name__}")
        else:
            allowed = "string, bytes, os.PathLike or integer" if allow_fd \
                else "string, bytes or os.PathLike"
            try:
                view = memoryview(path)
            except TypeError:
                raise TypeError(f"{func}: path should be {allowed}, not "
                                f"{type(path).__name__}") from None
            # As CPython 3.11: other bytes-like objects still work, with a warning.
            warnings.warn(f"{func}: path should be {allowed}, not {type(path).__name__}",
                          DeprecationWarning, stacklevel=3)
            raw = view.tobytes()
    if b"\0" in raw:
        raise ValueError("embedded null byte")
    return raw + b"\0", None


def _fn(path):
    """The filename an OSError carries, as CPython's path_t gives it (PathLike -> fspath,
    anything else as given)."""
    if isinstance(path, (str, bytes, int)) or path is None or \
            getattr(type(path), "__fspath__", None) is None:
        return path
    return _os.fspath(path)


def _bytes_path(path) -> bool:
    """Whether a listing of ``path`` gives bytes names (bytes, a bytes-like object, or a
    PathLike whose fspath is bytes), as CPython's path_t decides; a bad type is left to
    :func:`_path` to report."""
    if isinstance(path, bytes):
        return True
    if path is None or isinstance(path, (str, int)):
        return False
    fspath = getattr(type(path), "__fspath__", None)
    if fspath is not None:
        try:
            return isinstance(fspath(path), bytes)
        except Exception:    # noqa: BLE001 - _path raises CPython's error for it
            return False
    try:
        memoryview(path)
    except TypeError:
        return False
    return True


class io_open:
    """What is patched in as ``open``/``io.open``: ``fs.open``, named as the real one (module
    ``io``, so ``io.__all__`` and introspection read as natively).  A callable object, not a
    function, so that a class attribute holding it (test suites do ``open = io.open``) is not
    turned into a method, as a builtin is not."""

    def __init__(self, fs: "FileSystem"):
        self._open = fs.open
        self.__module__, self.__name__, self.__qualname__ = "io", "open", "open"
        self.__doc__ = _io.open.__doc__

    def __call__(self, *args, **kwargs):
        return self._open(*args, **kwargs)

    def __repr__(self):
        return "<built-in function open>"


def _dir_fd(dir_fd) -> int:
    if dir_fd is None:
        return AT_FDCWD
    if not isinstance(dir_fd, int):
        raise TypeError(f"argument should be integer or None, not {type(dir_fd).__name__}")
    return dir_fd


def _fildes(obj) -> int:
    """CPython's PyObject_AsFileDescriptor: an int, or an object with fileno()."""
    if isinstance(obj, int):
        fd = obj
    else:
        meth = getattr(obj, "fileno", None)
        if meth is None:
            raise TypeError("argument must be an int, or have a fileno() method.")
        fd = meth()
        if not isinstance(fd, int):
            raise TypeError("fileno() returned a non-integer")
    if fd < 0:
        raise ValueError(f"file descriptor cannot be a negative integer ({fd})")
    return fd


_RealFileIO = _io.FileIO


class _FileIOType(type(_io.RawIOBase)):
    """Metaclass: once the LibOS's FileIO is patched in as ``io.FileIO``, the files the
    interpreter opened before (``sys.stdin``'s raw file, ...) are still ``io.FileIO``s."""

    def __instancecheck__(cls, obj):
        return (cls.__dict__.get("_is_io_fileio", False) and isinstance(obj, _RealFileIO)) \
            or super().__instancecheck__(obj)

    def __subclasscheck__(cls, sub):
        return (cls.__dict__.get("_is_io_fileio", False) and issubclass(sub, _RealFileIO)) \
            or super().__subclasscheck__(sub)


class FileIO(_io.RawIOBase, metaclass=_FileIOType):
    """The raw layer of an enclave file: CPython's ``_io.FileIO`` with its syscalls routed.

    ``FileSystem.FileIO`` (this class bound to one enclave's kernel) is what the app gets as
    ``io.FileIO``: the same constructor, ``FileIO(file, mode="r", closefd=True,
    opener=None)``, the same checks and errors in the same order.  The C BufferedReader/
    Writer/Random and TextIOWrapper sit on top of it unchanged, so buffering, iteration,
    encodings and newlines are CPython's own."""

    # The enclave's Kernel, set in each enclave's class (FileSystem.FileIO).  Not an
    # annotation: the class would then have __annotations__, which _io.FileIO has not.
    _k = None
    # What a FileIO that was never opened (or failed to open) reports: closed.
    _fd = -1
    _closed = True                # kept with _fd: what ``closed`` reads (see there)
    _closefd = True
    _readable = _writable = False
    _mode = "rb"
    _st_mode = 0
    _blksize = DEFAULT_BUFFER_SIZE
    _seekable = None

    def __init__(self, file, mode="r", closefd=True, opener=None):
        k = self._k
        if self._fd >= 0:             # __init__ again: as CPython, let go of the old file
            fd, self._fd, self._closed = self._fd, -1, True
            if self._closefd:
                k.close(fd)
        if not isinstance(mode, str):
            raise TypeError(f"FileIO() argument 'mode' must be str, not {type(mode).__name__}")
        closefd = bool(operator.index(closefd))
        if not isinstance(file, int) or not -(1 << 31) <= file < 1 << 31:
            # Not a C int: a path, as PyUnicode_FSConverter takes it (str, bytes, PathLike).
            if isinstance(file, int):
                raise TypeError("expected str, bytes or os.PathLike object, not int")
            _os.fspath(file)
        readable = writable = appending = created = False
        plus = rwa = flags = 0
        for c in mode:
            if c in "xrwa":
                if rwa:
                    rwa = 2
                    break
                rwa = 1
                if c == "x":
                    created = writable = True
                    flags |= _os.O_EXCL | _os.O_CREAT
                elif c == "r":
                    readable = True
                elif c == "w":
                    writable = True
                    flags |= _os.O_CREAT | _os.O_TRUNC
                else:
                    writable = appending = True
                    flags |= _os.O_APPEND | _os.O_CREAT
            elif c == "+":
                if plus:
                    rwa = 2
                    break
                plus = 1
                readable = writable = True
            elif c != "b":
                raise ValueError(f"invalid mode: {mode}")
        if rwa != 1:
            raise ValueError("Must have exactly one of create/read/write/append mode and at "
                             "most one plus")
        flags |= _os.O_RDWR if (readable and writable) else (_os.O_RDONLY if readable
                                                             else _os.O_WRONLY)
        flags |= O_CLOEXEC
        if created:
            mstr = "xb+" if readable else "xb"
        elif appending:
            mstr = "ab+" if readable else "ab"
        elif readable:
            mstr = "rb+" if writable else "rb"
        else:
            mstr = "wb"
        own = True
        if isinstance(file, int):
            if file < 0:
                raise ValueError("negative file descriptor")
            fd, own = file, False
        else:
            if not closefd:
                raise ValueError("Cannot use closefd=False with file name")
            if opener is None:
                raw_path, _ = _path("open", file)
                r = k.check(abi.OP_OPENAT, AT_FDCWD, flags, 0o666, inbuf=raw_path,
                            filename=file)
                fd = k.adopt_fd(r.ret, "open")
            else:
                fd = opener(file, flags)
                if not isinstance(fd, int):
                    raise TypeError("expected integer from opener")
                if fd < 0:
                    raise ValueError(f"opener returned {fd}")
                k.own_fd(fd)              # the file object holds it from now on
        try:
            r = k.call(abi.OP_FSTAT, fd, outcap=STAT.size)
            blksize, st_mode = DEFAULT_BUFFER_SIZE, 0
            if r.ret == -_errno.EBADF:    # as CPython: other fstat errors are tolerated
                raise oserror(_errno.EBADF)
            if r.ret == 0:
                st = stat_result(r.out, "open")
                if _stat.S_ISDIR(st.st_mode):
                    raise oserror(_errno.EISDIR, file)
                st_mode = st.st_mode
                if st.st_blksize > 1:
                    blksize = st.st_blksize
            self._fd, self._closed, self._mode, self._closefd = fd, False, mstr, bool(closefd)
            self._readable, self._writable = readable, writable
            self._st_mode, self._blksize, self._seekable = st_mode, blksize, None
            if closefd and isinstance(file, int):
                k.own_fd(fd)              # the file object holds the caller's fd from now on
            self.name = file
            if appending:
                # As CPython's FileIO: seek to the end, but a pipe or socket (ESPIPE) is fine.
                r = k.call(abi.OP_LSEEK, fd, 0, _os.SEEK_END)
                if r.ret < 0 and r.ret != -_errno.ESPIPE:
                    raise oserror(-r.ret)
        except BaseException:
            self._fd, self._closed = -1, True
            if own:    # as CPython: close only an fd this call opened, never the caller's
                k.close(fd)
            raise

    # -- state ------------------------------------------------------------------------------
    # A C getter, no Python frame: the Buffered* layers above read ``closed`` before each
    # operation and take an exception from it for "closed" ("flush of closed file"); a Python
    # function would let a signal handler run, and raise, inside it (C FileIO's cannot).
    closed = property(operator.attrgetter("_closed"),
                      doc="True if the file is closed")

    @property
    def closefd(self) -> bool:
        return self._closefd

    @property
    def mode(self) -> str:
        return self._mode

    def _check(self) -> int:
        if self._fd < 0:
            raise ValueError("I/O operation on closed file")
        return self._fd

    def fileno(self) -> int:
        return self._check()

    def readable(self) -> bool:
        self._check()
        return self._readable

    def writable(self) -> bool:
        self._check()
        return self._writable

    def seekable(self) -> bool:
        self._check()
        if self._seekable is None:
            r = self._k.call(abi.OP_LSEEK, self._fd, 0, _os.SEEK_CUR)
            self._seekable = r.ret >= 0
        return self._seekable

    def isatty(self) -> bool:
        fd = self._check()
        if not _stat.S_ISCHR(self._st_mode):
            return False          # only a character device can be a terminal: no exit needed
        return self._k.call(abi.OP_IOCTL_INT, fd, TIOCOUTQ, 0).ret == 0

    # -- I/O ----------------------------------------------------------------------------------
    def readinto(self, buffer):
        fd = self._check()
        if not self._readable:
            raise _io.UnsupportedOperation("File not open for reading")
        m = memoryview(buffer).cast("B")
        n = min(len(m), MAX_IO)
        r = self._k.call(abi.OP_READ, fd, n, outcap=n, into=m)
        if r.ret < 0:
            r = self._retry(POLLIN, r, lambda: self._k.call(abi.OP_READ, fd, n, outcap=n,
                                                             into=m))
        return None if r is None else r.ret

    def _retry(self, events, r, attempt):
        """Finish a failed first attempt: wait where the app's view of the fd is blocking (a
        pipe or socket kept O_NONBLOCK in the host), else None on EAGAIN as FileIO does."""
        k = self._k
        try:
            return k.blocking_io(self._fd, events, attempt, k.fd_timeout(self._fd), r)
        except BlockingIOError:
            return None

    def read(self, size=-1):
        fd = self._check()
        if not self._readable:
            raise _io.UnsupportedOperation("File not open for reading")
        if size is None or size < 0:
            return self.readall()
        n = min(size, MAX_IO)
        r = self._k.call(abi.OP_READ, fd, n, outcap=n)
        if r.ret < 0:
            r = self._retry(POLLIN, r, lambda: self._k.call(abi.OP_READ, fd, n, outcap=n))
        return None if r is None else r.out

    def readall(self):
        fd = self._check()
        if not self._readable:
            raise _io.UnsupportedOperation("File not open for reading")
        # As CPython: size the first read from the file's size, then read to EOF.
        bufsize = DEFAULT_BUFFER_SIZE
        pos = self._k.call(abi.OP_LSEEK, fd, 0, _os.SEEK_CUR).ret
        st = self._k.call(abi.OP_FSTAT, fd, outcap=STAT.size)
        if st.ret == 0 and pos >= 0:
            end = stat_result(st.out, "readall").st_size
            if end >= pos:
                bufsize = end - pos + 1
        chunks = []
        while True:
            n = min(bufsize, MAX_IO)
            r = self._k.call(abi.OP_READ, fd, n, outcap=n)
            if r.ret < 0:
                if r.ret == -_errno.EAGAIN and chunks and not self._k.app_blocking.get(fd):
                    break
                r = self._retry(POLLIN, r, lambda: self._k.call(abi.OP_READ, fd, n, outcap=n))
                if r is None:
                    return None
            if r.ret == 0:
                break
            chunks.append(r.out)
            bufsize = max(DEFAULT_BUFFER_SIZE, bufsize - r.ret) if r.ret < bufsize \
                else bufsize * 2
        return b"".join(chunks)

    def write(self, b):
        fd = self._check()
        if not self._writable:
            raise _io.UnsupportedOperation("File not open for writing")
        m = b if type(b) is bytes else memoryview(b).cast("B")
        if len(m) > MAX_IO:
            m = m[:MAX_IO]
        call = self._k.call
        r = call(abi.OP_WRITE, fd, inbuf=m)
        if r.ret < 0:
            r = self._retry(POLLOUT, r, lambda: call(abi.OP_WRITE, fd, inbuf=m))
            if r is None:
                set_errno(_errno.EAGAIN)    # what the BufferedWriter above reports
                return None
        if r.ret < len(m):
            return self._k.complete_write(fd, m, r.ret, lambda c: call(abi.OP_WRITE, fd, inbuf=c))
        return r.ret

    def seek(self, pos, whence=0):
        fd = self._check()
        if isinstance(pos, float):
            raise TypeError("an integer is required")
        pos = pos.__index__()
        r = self._k.check(abi.OP_LSEEK, fd, pos, whence)
        if (r.ret != pos or whence not in _WHENCES) and _stat.S_ISREG(self._st_mode) and \
                not _seek_possible(pos, whence, r.ret):
            # The buffered layers above take the result as the file's position.
            raise IagoError(f"host says a seek of {self.name!r} to {pos} (whence {whence}) "
                            f"landed at {r.ret}")
        return r.ret

    def tell(self):
        return self._k.check(abi.OP_LSEEK, self._check(), 0, _os.SEEK_CUR).ret

    def truncate(self, size=None):
        fd = self._check()
        if not self._writable:
            raise _io.UnsupportedOperation("File not open for writing")
        if size is None:
            size = self.tell()
        self._k.check(abi.OP_FTRUNCATE, fd, size.__index__())
        return size

    # -- closing --------------------------------------------------------------------------------
    def _dealloc_warn(self, source):
        if self._fd >= 0 and self._closefd:
            warnings.warn(f"unclosed file {source!r}", ResourceWarning, stacklevel=2,
                          source=source)

    def close(self):
        if self._fd < 0:
            return
        try:
            if getattr(self, "_finalizing", False):
                self._dealloc_warn(self)
            super().close()
        finally:
            fd, self._fd, self._closed = self._fd, -1, True
            if self._closefd:
                self._k.close(fd)

    def __repr__(self):
        # Same text as _io.FileIO's repr, so app output is identical with and without the shim.
        if self._fd < 0:
            return "<_io.FileIO [closed]>"
        return f"<_io.FileIO name={self.name!r} mode={self._mode!r} closefd={self._closefd}>"

    # As _io.FileIO: pickle and copy refuse it (a copy would close the fd twice), with its
    # messages (protocols 0 and 1 go through copyreg, which names the class by __name__);
    # __getstate__ itself answers, as object's does for _io.FileIO.
    def __reduce_ex__(self, protocol):
        raise TypeError("cannot pickle 'FileIO' object" if protocol < 2 else
                        "cannot pickle '_io.FileIO' object")

    def __reduce__(self):
        return self.__reduce_ex__(0)


_RealDirEntry = _os.DirEntry


class _DirEntryType(type):
    """Metaclass: ``isinstance(e, os.DirEntry)`` holds for the enclave's entries and for the
    real ones alike once this class is patched in as ``os.DirEntry``."""

    def __instancecheck__(cls, obj):
        return isinstance(obj, _RealDirEntry) or type.__instancecheck__(cls, obj)


class DirEntry(metaclass=_DirEntryType):
    """What ``os.scandir`` yields (``os.DirEntry`` cannot be created from Python): name, path,
    inode(), is_dir/is_file/is_symlink (from d_type, stat only when needed), stat()."""
    __slots__ = ("name", "path", "_ino", "_type", "_dir_fd", "_fs", "_stat", "_lstat")

    def __init__(self, fs, name, path, ino, dtype, dir_fd):
        self.name, self.path, self._ino, self._type = name, path, ino, dtype
        self._dir_fd, self._fs, self._stat, self._lstat = dir_fd, fs, None, None

    def __fspath__(self):
        return self.path

    def __repr__(self):
        return f"<DirEntry {self.name!r}>"

    def inode(self):
        return self._ino

    def _do_stat(self, follow):
        if self._dir_fd is not None:
            return self._fs.stat(self.name, dir_fd=self._dir_fd, follow_symlinks=follow)
        return self._fs.stat(self.path, follow_symlinks=follow)

    def stat(self, *, follow_symlinks=True):
        if follow_symlinks and self.is_symlink():
            if self._stat is None:
                self._stat = self._do_stat(True)
            return self._stat
        if self._lstat is None:
            self._lstat = self._do_stat(False)
        return self._lstat

    def is_symlink(self):
        if self._type != DT_UNKNOWN:
            return self._type == DT_LNK
        try:
            return _stat.S_ISLNK(self.stat(follow_symlinks=False).st_mode)
        except FileNotFoundError:
            return False

    def _test(self, follow, want_type, test):
        if self._type != DT_UNKNOWN and not (follow and self._type == DT_LNK):
            return self._type == want_type
        try:
            return test(self.stat(follow_symlinks=follow).st_mode)
        except FileNotFoundError:
            return False

    def is_dir(self, *, follow_symlinks=True):
        return self._test(follow_symlinks, DT_DIR, _stat.S_ISDIR)

    def is_file(self, *, follow_symlinks=True):
        return self._test(follow_symlinks, DT_REG, _stat.S_ISREG)

    __class_getitem__ = classmethod(_types.GenericAlias)    # os.DirEntry[str], as CPython


def _first_time(seen: set, name: bytes) -> None:
    """A directory holds each name once: the host listing one twice is lying."""
    if name in seen:
        raise IagoError(f"host's directory listing names {name!r} twice")
    seen.add(name)


class ScandirIterator:
    """``os.scandir``'s iterator: reads the directory in getdents batches as it goes."""

    def __init__(self, fs, fd, path, as_bytes, by_fd):
        self._fs, self._fd, self._path = fs, fd, path
        self._bytes, self._by_fd = as_bytes, by_fd
        self._pending: list = []
        self._seen: set[bytes] = set()

    def __iter__(self):
        return self

    def __next__(self):
        while not self._pending:
            if self._fd < 0:
                raise StopIteration
            try:
                batch = self._fs._getdents(self._fd)
            except BaseException:
                self.close()
                raise
            if not batch:
                self.close()
                raise StopIteration
            self._pending = batch[::-1]
        ino, dtype, name = self._pending.pop()
        try:
            _first_time(self._seen, name)
        except IagoError:
            self.close()
            raise
        if not self._bytes:
            name = _os.fsdecode(name)
        if self._by_fd is not None:
            return DirEntry(self._fs, name, name, ino, dtype, self._by_fd)
        path = _os.path.join(self._path, name)
        return DirEntry(self._fs, name, path, ino, dtype, None)

    def close(self):
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            self._fs.kernel.close(fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        if getattr(self, "_fd", -1) >= 0:
            try:
                warnings.warn(f"unclosed scandir iterator {self!r}", ResourceWarning,
                              stacklevel=2, source=self)
            finally:
                try:
                    self.close()
                except OSError:
                    pass


class FileSystem:
    """The routed ``os`` file functions and ``open``.  Methods are patched in as bound methods,
    which (like CPython's builtins) do not re-bind when stored as class attributes."""

    def __init__(self, kernel: Kernel):
        self.kernel = kernel
        k = kernel
        self._call, self._check = k.call, k.check
        # os.read / os.write: the common case in one frame with the C crossing.
        fused = getattr(k.transport, "fused", None)
        if fused is not None:
            self.read = fused("read", self.read, self._read_after)
            self.write = fused("write", self.write, self._write_after)
        # What the app gets as io.FileIO (and what open() builds on).
        self.FileIO = _FileIOType("FileIO", (FileIO,), {
            "_k": kernel, "_is_io_fileio": True, "__module__": "_io",   # as io.FileIO's
            "__qualname__": "FileIO", "__doc__": _RealFileIO.__doc__})

    # -- open ---------------------------------------------------------------------------------
    def open(self, file, mode="r", buffering=-1, encoding=None, errors=None, newline=None,
             closefd=True, opener=None):
        if not isinstance(mode, str):
            raise TypeError(f"open() argument 'mode' must be str, not {type(mode).__name__}")
        buffering = operator.index(buffering)
        for argname, value in (("encoding", encoding), ("errors", errors),
                               ("newline", newline)):
            if value is not None and not isinstance(value, str):
                raise TypeError(f"open() argument '{argname}' must be str or None, "
                                f"not {type(value).__name__}")
        if not isinstance(file, int):
            file = _os.fspath(file)
        seen = set()
        for c in mode:
            if c not in "xrwab+t" or c in seen:
                raise ValueError(f"invalid mode: {mode!r}")
            seen.add(c)
        creating, reading, writing, appending = ("x" in seen, "r" in seen, "w" in seen,
                                                 "a" in seen)
        updating, text, binary = "+" in seen, "t" in seen, "b" in seen
        if text and binary:
            raise ValueError("can't have text and binary mode at once")
        if creating + reading + writing + appending > 1:
            raise ValueError("must have exactly one of create/read/write/append mode")
        if binary and encoding is not None:
            raise ValueError("binary mode doesn't take an encoding argument")
        if binary and errors is not None:
            raise ValueError("binary mode doesn't take an errors argument")
        if binary and newline is not None:
            raise ValueError("binary mode doesn't take a newline argument")
        if binary and buffering == 1:
            warnings.warn("line buffering (buffering=1) isn't supported in binary mode, "
                          "the default buffer size will be used", RuntimeWarning, 2)
        rawmode = ("x" if creating else "") + ("r" if reading else "") + \
            ("w" if writing else "") + ("a" if appending else "") + ("+" if updating else "")
        raw = self.open_raw(file, rawmode, closefd, opener)
        result = raw
        try:
            line_buffering = False
            isatty = raw.isatty() if buffering < 0 else False
            if buffering == 1 or isatty:
                buffering = -1
                line_buffering = True
            if buffering < 0:
                buffering = raw._blksize
            if buffering < 0:
                raise ValueError("invalid buffering size")
            if buffering == 0:
                if binary:
                    return raw
                raise ValueError("can't have unbuffered text I/O")
            if updating:
                buffer = _io.BufferedRandom(raw, buffering)
            elif creating or writing or appending:
                buffer = _io.BufferedWriter(raw, buffering)
            else:
                buffer = _io.BufferedReader(raw, buffering)
            result = buffer
            if binary:
                return buffer
            wrapper = _io.TextIOWrapper(buffer, encoding, errors, newline, line_buffering)
            result = wrapper
            wrapper.mode = mode
            return wrapper
        except BaseException:
            result.close()
            raise

    def open_raw(self, file, mode: str, closefd: bool = True, opener=None) -> FileIO:
        """The raw file for ``file`` (path or fd) in FileIO's ``mode`` ("r", "w+", ...)."""
        return self.FileIO(file, mode, closefd, opener)

    def fdopen(self, fd, mode="r", buffering=-1, encoding=None, *args, **kwargs):
        if not isinstance(fd, int):
            raise TypeError(f"invalid fd type ({type(fd)}, expected integer)")
        if "b" not in mode:
            encoding = _io.text_encoding(encoding)
        return self.open(fd, mode, buffering, encoding, *args, **kwargs)

    # -- fd calls ------------------------------------------------------------------------------
    def os_open(self, path, flags, mode=0o777, *, dir_fd=None):
        raw, _ = _path("open", path)
        r = self._check(abi.OP_OPENAT, _dir_fd(dir_fd), flags | O_CLOEXEC, mode, inbuf=raw,
                        filename=_fn(path))
        return self.kernel.adopt_fd(r.ret, "open", raw=True)

    def close(self, fd):
        self.kernel.close(fd.__index__())

    def closerange(self, fd_low, fd_high, /):
        # Only the enclave's own fds: the host's (the loader's, the RPC ring's) are not the app's.
        for fd in sorted(f for f in self.kernel.fds if fd_low <= f < fd_high):
            try:
                self.kernel.close(fd)
            except OSError:
                pass

    # os.read / os.write: one call on the fast path; EAGAIN on the fd of a socket the app
    # believes blocking waits (the host fd is O_NONBLOCK), as the native call would block.
    # (The instance's read and write are these fused with the transport's data path: see
    # __init__ and Transport.fused.)
    def read(self, fd, length, /):
        if length < 0:
            raise oserror(_errno.EINVAL)
        n = length if length <= MAX_IO else MAX_IO
        ret, data = self.kernel.data_in(abi.OP_READ, fd, n)   # one checked crossing
        if ret >= 0:
            return data
        return self._read_after(fd, n, ret)

    def _read_after(self, fd, n, ret):
        """os.read of ``n`` bytes (at most MAX_IO) after its first attempt said -errno."""
        call, k = self._call, self.kernel
        return k.blocking_io(fd, POLLIN, lambda: call(abi.OP_READ, fd, n, outcap=n),
                             k.fd_timeout(fd), Reply(ret, b"", b"", ())).out

    def write(self, fd, data, /):
        if type(data) is not bytes:
            data = memoryview(data).cast("B")
        if len(data) > MAX_IO:
            data = data[:MAX_IO]
        return self._write_after(fd, data, self.kernel.data_out(abi.OP_WRITE, fd, data))

    def _write_after(self, fd, data, ret):
        """os.write of ``data`` (at most MAX_IO bytes) after its first attempt took ``ret``."""
        if ret == len(data):
            return ret
        call, k = self._call, self.kernel
        if ret < 0:
            ret = k.blocking_io(fd, POLLOUT, lambda: call(abi.OP_WRITE, fd, inbuf=data),
                                k.fd_timeout(fd), Reply(ret, b"", b"", ())).ret
        if ret < len(data):
            return k.complete_write(fd, data, ret, lambda b: call(abi.OP_WRITE, fd, inbuf=b))
        return ret

    def pread(self, fd, length, offset, /):
        if length < 0:
            raise oserror(_errno.EINVAL)
        n = min(length, MAX_IO)
        return self._check(abi.OP_PREAD, fd, n, offset, outcap=n).out

    def pwrite(self, fd, data, offset, /):
        m = memoryview(data).cast("B")
        if len(m) > MAX_IO:
            m = m[:MAX_IO]
        return self._check(abi.OP_PWRITE, fd, 0, offset, inbuf=m).ret

    def lseek(self, fd, position, whence, /):
        ret = self._check(abi.OP_LSEEK, fd, position, whence).ret
        # The common answers (an absolute seek landing where told, a relative one at or past
        # its offset) need nothing more; any other is a regular file's lie or a device's
        # right, and only then is the fd's type asked for (a raw fd's is not kept).
        if (ret != position or whence not in _WHENCES) and \
                not _seek_possible(position, whence, ret):
            self._lseek_unusual(fd, position, whence, ret)
        return ret

    def _lseek_unusual(self, fd, position, whence, ret) -> None:
        """An lseek answer no regular file gives: an IagoError unless ``fd`` is not one."""
        r = self._call(abi.OP_FSTAT, fd, outcap=STAT.size)
        if r.ret != 0:
            # The seek just succeeded on this fd; a host that now cannot say what it is
            # would have its answer taken unchecked.
            raise IagoError(f"host says lseek(fd {fd}, {position}, whence {whence}) landed at "
                            f"{ret}, then fails fstat of the fd ({r.ret})")
        if _stat.S_ISREG(stat_result(r.out, f"fstat({fd})").st_mode):
            raise IagoError(f"host says lseek(fd {fd}, {position}, whence {whence}) of a "
                            f"regular file landed at {ret}")

    def fstat(self, fd):
        return self.kernel.fstat(fd)

    def fsync(self, fd):
        self._check(abi.OP_FSYNC, _fildes(fd))

    def fdatasync(self, fd):
        self._check(abi.OP_FDATASYNC, _fildes(fd))

    def ftruncate(self, fd, length, /):
        self._check(abi.OP_FTRUNCATE, fd, length)

    def truncate(self, path, length):
        raw, fd = _path("truncate", path, allow_fd=True)
        if fd is not None:
            self._check(abi.OP_FTRUNCATE, fd, length)
            return
        self._check(abi.OP_TRUNCATE, 0, length, inbuf=raw, filename=_fn(path))

    def dup(self, fd, /):
        r = self._check(abi.OP_DUP, fd)
        k = self.kernel
        newfd = k.adopt_fd(r.ret, "dup", raw=True)
        if fd in k.app_blocking:
            k.app_blocking[newfd] = k.app_blocking[fd]
        if fd in k.full_write:
            k.full_write.add(newfd)
        return newfd

    def _pair(self, r, what):
        if len(r.out) != 8:
            raise IagoError(f"host returned {len(r.out)} bytes for {what}'s two fds")
        a, b = struct.unpack("=ii", r.out)
        if a == b:
            raise IagoError(f"host returned the same fd twice for {what}")
        self.kernel.adopt_fd(a, what, raw=True)
        try:
            self.kernel.adopt_fd(b, what, raw=True)
        except IagoError:
            self.kernel.forget_fd(a)
            raise
        return a, b

    def pipe(self):
        return self.pipe2(O_CLOEXEC)

    def pipe2(self, flags, /):
        # The host pipe is O_NONBLOCK (a blocking read must not tie up an RPC worker); the
        # app's view of blocking is kept here.
        r, w = self._pair(self._check(abi.OP_PIPE2, flags | O_NONBLOCK, outcap=8), "pipe")
        k = self.kernel
        k.app_blocking[r] = k.app_blocking[w] = not flags & O_NONBLOCK
        k.full_write.add(w)
        return r, w

    def sendfile(self, out_fd, in_fd, offset, count):
        off = -1 if offset is None else offset
        if off < -1 or (offset is not None and offset < 0):
            raise oserror(_errno.EINVAL)
        n = min(count, MAX_IO)

        def attempt():
            return self._call(abi.OP_SENDFILE, out_fd, in_fd, off, n)
        k = self.kernel
        return k.blocking_io(out_fd, POLLOUT, attempt, k.fd_timeout(out_fd)).ret

    def get_blocking(self, fd, /):
        k = self.kernel
        if fd in k.app_blocking:
            return k.app_blocking[fd]
        return not (self._check(abi.OP_FCNTL, fd, F_GETFL, 0).ret & O_NONBLOCK)

    def set_blocking(self, fd, blocking, /):
        k = self.kernel
        if fd in k.app_blocking:
            k.app_blocking[fd] = bool(blocking)     # the kernel fd stays O_NONBLOCK
            return
        fl = self._check(abi.OP_FCNTL, fd, F_GETFL, 0).ret
        new = (fl & ~O_NONBLOCK) if blocking else (fl | O_NONBLOCK)
        if new != fl:
            self._check(abi.OP_FCNTL, fd, F_SETFL, new)

    # -- path calls ----------------------------------------------------------------------------
    def stat(self, path, *, dir_fd=None, follow_symlinks=True):
        raw, fd = _path("stat", path, allow_fd=True)
        if fd is not None:
            if dir_fd is not None:
                raise ValueError("stat: can't specify dir_fd without matching path")
            if not follow_symlinks:
                raise ValueError("stat: cannot use fd and follow_symlinks together")
            return self.kernel.fstat(fd)
        flags = 0 if follow_symlinks else AT_SYMLINK_NOFOLLOW
        r = self._check(abi.OP_FSTATAT, _dir_fd(dir_fd), flags, inbuf=raw, out2cap=STAT.size,
                        filename=_fn(path))
        return stat_result(r.out2, "stat")

    def lstat(self, path, *, dir_fd=None):
        raw, _ = _path("lstat", path)
        r = self._check(abi.OP_FSTATAT, _dir_fd(dir_fd), AT_SYMLINK_NOFOLLOW, inbuf=raw,
                        out2cap=STAT.size, filename=_fn(path))
        return stat_result(r.out2, "lstat")

    def unlink(self, path, *, dir_fd=None):
        raw, _ = _path("unlink", path)
        self._check(abi.OP_UNLINKAT, _dir_fd(dir_fd), 0, inbuf=raw, filename=_fn(path))

    def remove(self, path, *, dir_fd=None):
        raw, _ = _path("remove", path)
        self._check(abi.OP_UNLINKAT, _dir_fd(dir_fd), 0, inbuf=raw, filename=_fn(path))

    def rmdir(self, path, *, dir_fd=None):
        raw, _ = _path("rmdir", path)
        self._check(abi.OP_UNLINKAT, _dir_fd(dir_fd), AT_REMOVEDIR, inbuf=raw,
                    filename=_fn(path))

    def mkdir(self, path, mode=0o777, *, dir_fd=None):
        raw, _ = _path("mkdir", path)
        self._check(abi.OP_MKDIRAT, _dir_fd(dir_fd), mode, inbuf=raw, filename=_fn(path))

    def _rename(self, func, src, dst, src_dir_fd, dst_dir_fd):
        a, _ = _path(func, src)
        b, _ = _path(func, dst)
        self._check(abi.OP_RENAMEAT, _dir_fd(src_dir_fd), _dir_fd(dst_dir_fd), inbuf=a, in2=b,
                    filename=_fn(src), filename2=_fn(dst))

    def rename(self, src, dst, *, src_dir_fd=None, dst_dir_fd=None):
        self._rename("rename", src, dst, src_dir_fd, dst_dir_fd)

    def replace(self, src, dst, *, src_dir_fd=None, dst_dir_fd=None):
        self._rename("replace", src, dst, src_dir_fd, dst_dir_fd)

    # -- directories ---------------------------------------------------------------------------
    def _getdents(self, fd: int) -> list:
        """One batch of (ino, d_type, name bytes), '.' and '..' left out; [] at the end."""
        head = _DIRENT.size
        while True:
            r = self._check(abi.OP_GETDENTS, fd, GETDENTS_BUF, outcap=GETDENTS_BUF)
            data, out, pos = r.out, [], 0
            if not data:
                return out
            while pos < len(data):
                if pos + head > len(data):
                    raise IagoError("host's getdents record header overruns the buffer")
                ino, _off, reclen, dtype = _DIRENT.unpack_from(data, pos)
                if reclen < head + 2 or pos + reclen > len(data):
                    raise IagoError(f"host's getdents record length {reclen} overruns the "
                                    f"buffer ({len(data) - pos} bytes left)")
                nul = data.find(b"\0", pos + head, pos + reclen)
                if nul < 0 or nul == pos + head:
                    raise IagoError("host's getdents record has an empty or unterminated name")
                name = data[pos + head:nul]
                if b"/" in name:
                    raise IagoError(f"host's getdents record names {name!r}, which has a '/'")
                pos += reclen
                if name not in (b".", b".."):
                    out.append((ino, dtype, name))
            if out:
                return out
            # a batch of only '.' and '..': read on

    def _open_dir(self, func, path):
        """fd of the directory to list and whether the caller passed an fd."""
        raw, fd = _path(func, path, allow_fd=True, nullable=True)
        if fd is not None:
            # As CPython: list a duplicate, from the start, leaving the caller's fd alone.
            newfd = self.kernel.adopt_fd(self._check(abi.OP_DUP, fd).ret, "dup")
            r = self._call(abi.OP_LSEEK, newfd, 0, _os.SEEK_SET)
            if r.ret < 0:
                self.kernel.close(newfd)
                raise oserror(-r.ret)
            return newfd, True
        r = self._check(abi.OP_OPENAT, AT_FDCWD, _os.O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0,
                        inbuf=raw, filename="." if path is None else _fn(path))
        return self.kernel.adopt_fd(r.ret, func), False

    def listdir(self, path=None):
        as_bytes = _bytes_path(path)
        fd, _ = self._open_dir("listdir", path)
        names, seen = [], set()
        try:
            while True:
                batch = self._getdents(fd)
                if not batch:
                    break
                for _, _, name in batch:
                    _first_time(seen, name)
                    names.append(name)
        finally:
            self.kernel.close(fd)
        return names if as_bytes else [_os.fsdecode(n) for n in names]

    def scandir(self, path=None):
        as_bytes = _bytes_path(path)
        fd, by_fd = self._open_dir("scandir", path)
        if by_fd:
            return ScandirIterator(self, fd, None, False, path)
        if path is None:
            shown = "."
        elif getattr(type(path), "__fspath__", None) is not None or isinstance(path, (str, bytes)):
            shown = _os.fspath(path)
        else:
            shown = bytes(memoryview(path))       # a bytes-like path: entries' paths are bytes
        return ScandirIterator(self, fd, shown, as_bytes, None)


__all__ = ["DirEntry", "FileIO", "FileSystem", "ScandirIterator"]

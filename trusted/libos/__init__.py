"""TRUSTED side: the LibOS, a Graphene-style interposition layer for unmodified Python apps.

Once installed, the app's file, socket and select calls (``open``, ``io.FileIO``, ``os.*``,
``socket.*``, ``select.*``, and through them ``pathlib``, ``shutil``, ``selectors``,
``socketserver``, ``http.server``, ``urllib.request``, ``asyncio``) go through the transport
(trusted/syscall.py: direct, ocall or rpc) instead of straight to the kernel, and behave as
they do natively: same return values, same exceptions with the same errno and filename.  So
do ``fcntl.fcntl/ioctl`` (answering as the app's view of blocking), ``print`` to
stdout/stderr, and ``subprocess`` / ``os.system`` / ``os.posix_spawn`` (a host program started
by a spawn OCALL).  Anonymous ``mmap`` goes to the enclave heap when there is one; ``os.fork``
makes a child enclave when the loader gives the LibOS a host fork (eleos_shim/fork.py), and
fails with a clear error otherwise.

What is patched is module *attributes* (``os.open``, ``socket.socket``, ...).  The import
system uses ``posix`` and ``_io`` directly, and the shim itself uses only the transport, so
neither is routed: only the app's calls are counted.

    libos = LibOS(transport, heap_factory=None)
    libos.install()      # idempotent
    ...
    libos.uninstall()    # everything restored (tests rely on it)
"""
from __future__ import annotations

import builtins
import fcntl
import io
import mmap
import os
import select
import signal
import socket
import sys
import threading

from trusted.libos import fdctl, heap, mux, net, paths, proc, stdio

try:
    # Imported before anything is patched, so that ssl.SSLSocket subclasses the stdlib
    # socket class (tls.py makes the enclave's TLS socket a subclass of both).
    from trusted.libos import tls
except ImportError:          # Python built without OpenSSL: no TLS to route
    tls = None
from trusted.libos._kernel import Kernel
from trusted.libos.fs import DirEntry, FileSystem, io_open

__all__ = ["LibOS", "Kernel"]

# os functions routed, as (os attribute, FileSystem method).
_OS_FUNCS = (
    ("open", "os_open"), ("read", "read"), ("write", "write"), ("pread", "pread"),
    ("pwrite", "pwrite"), ("lseek", "lseek"), ("close", "close"),
    ("closerange", "closerange"), ("fstat", "fstat"), ("stat", "stat"), ("lstat", "lstat"),
    ("fsync", "fsync"), ("fdatasync", "fdatasync"), ("ftruncate", "ftruncate"),
    ("truncate", "truncate"), ("unlink", "unlink"), ("remove", "remove"),
    ("rename", "rename"), ("replace", "replace"), ("listdir", "listdir"),
    ("scandir", "scandir"), ("mkdir", "mkdir"), ("rmdir", "rmdir"),
    ("sendfile", "sendfile"), ("dup", "dup"), ("pipe", "pipe"), ("pipe2", "pipe2"),
    ("get_blocking", "get_blocking"), ("set_blocking", "set_blocking"),
    ("fdopen", "fdopen"),
)
_ABSENT = object()
_FEATURE_SETS = ("supports_dir_fd", "supports_fd", "supports_follow_symlinks",
                 "supports_effective_ids", "supports_bytes_environ")


class LibOS:
    """The interposition layer of one enclave over one transport."""

    def __init__(self, transport, heap_factory=None, route_stdio=True, fork=None):
        self.transport = transport
        self.fork = fork            # the host's fork of this enclave (trusted/libos/proc.py)
        self.route_stdio = route_stdio
        self.heap_factory = heap_factory
        self.kernel = Kernel(transport)
        self.fs = FileSystem(self.kernel)
        self.socket_class = net.socket_class(self.kernel)
        self.sockets = net.SocketModule(self.kernel, self.socket_class)
        self.select = mux.Select(self.kernel)
        self.epoll_class = mux.epoll_class(self.kernel)
        self.poll_class = mux.poll_class(self.kernel)
        self.mmap_class = heap.mmap_class(heap_factory)
        self.fcntl = fdctl.Fcntl(self.kernel)
        self.paths = paths.PathCalls(self.kernel)
        self._saved: list[tuple[object, str, object]] = []
        self._sets: list[tuple[set, object, object]] = []
        self._lock = threading.Lock()
        self.installed = False

    def poll(self):
        """``select.poll()``."""
        return mux.new_poll(self.poll_class)

    # -- what is patched ----------------------------------------------------------------------
    def _patches(self) -> list[tuple[object, str, object]]:
        fs, sm = self.fs, self.sockets
        # First: importing subprocess imports selectors, which must happen before the
        # selectors check below (else its classes would keep the real select functions).
        refused = proc.patches(self.kernel, fs, self.fork)
        opener = io_open(fs)
        out = [(builtins, "open", opener), (io, "open", opener), (io, "FileIO", fs.FileIO)]
        out += [(os, name, getattr(fs, meth)) for name, meth in _OS_FUNCS if hasattr(os, name)]
        out += [(os, name, getattr(self.paths, name)) for name in paths.NAMES
                if hasattr(os, name)]
        out += [(os, "DirEntry", DirEntry)]
        out += [(socket, "socket", self.socket_class), (socket, "getaddrinfo", sm.getaddrinfo),
                (socket, "socketpair", sm.socketpair), (socket, "fromfd", sm.fromfd),
                (socket, "close", sm.close), (socket, "dup", sm.dup),
                (socket, "gethostbyname", sm.gethostbyname)]
        out += [(select, "select", self.select), (select, "poll", self.poll),
                (select, "epoll", self.epoll_class)]
        out += self._selector_patches()
        out += [(mmap, "mmap", self.mmap_class)]
        out += [(fcntl, "fcntl", self.fcntl.fcntl), (fcntl, "ioctl", self.fcntl.ioctl),
                (signal, "set_wakeup_fd", self.fcntl.set_wakeup_fd)]
        if tls is not None:
            out += tls.patches(self.socket_class)
        if self.route_stdio:
            out += stdio.patches(fs)
        return out + refused

    def _selector_patches(self):
        # selectors binds select.* into class attributes when it is imported; if it already
        # was, re-point those attributes (a later import picks up the patched module itself).
        sel = sys.modules.get("selectors")
        if sel is None:
            return []
        return [(sel.SelectSelector, "_select", self.select),
                (sel.PollSelector, "_selector_cls", self.poll),
                (sel.EpollSelector, "_selector_cls", self.epoll_class)]

    # -- install / uninstall --------------------------------------------------------------------
    def install(self) -> None:
        with self._lock:
            if self.installed:
                return
            originals = {}
            for owner, name, new in self._patches():
                if isinstance(owner, type):
                    old = owner.__dict__.get(name, _ABSENT)   # not an inherited attribute
                else:
                    old = getattr(owner, name)
                self._saved.append((owner, name, old))
                originals[id(old)] = new
                setattr(owner, name, new)
            # Feature detection (shutil.rmtree's fd-based walk, os.fwalk): the routed
            # functions support what the originals did.
            for set_name in _FEATURE_SETS:
                fset = getattr(os, set_name, None)
                if not isinstance(fset, set):
                    continue
                for func in list(fset):
                    new = originals.get(id(func))
                    if new is not None:
                        fset.discard(func)
                        fset.add(new)
                        self._sets.append((fset, func, new))
            self.installed = True

    def uninstall(self) -> None:
        with self._lock:
            if not self.installed:
                return
            for fset, old, new in reversed(self._sets):
                fset.discard(new)
                fset.add(old)
            for owner, name, _old in self._saved:
                if owner is sys and name in ("stdout", "stderr"):
                    try:
                        getattr(sys, name).flush()     # the routed stream's last bytes
                    except (OSError, ValueError):
                        pass
            for owner, name, old in reversed(self._saved):
                if old is _ABSENT:
                    delattr(owner, name)
                else:
                    setattr(owner, name, old)
            self._sets.clear()
            self._saved.clear()
            # selectors imported while installed captured our objects in its classes.
            sel = sys.modules.get("selectors")
            if sel is not None:
                for cls, attr, value in ((sel.SelectSelector, "_select", select.select),
                                         (sel.PollSelector, "_selector_cls", select.poll),
                                         (sel.EpollSelector, "_selector_cls", select.epoll)):
                    current = cls.__dict__.get(attr)
                    if current in (self.select, self.poll, self.epoll_class):
                        setattr(cls, attr, value)
            self.installed = False

    def stats(self) -> dict:
        """What the LibOS itself knows: the enclave's open fds."""
        return {"open_fds": len(self.kernel.fds), "sockets": len(self.kernel.app_blocking)}

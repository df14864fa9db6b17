"""TRUSTED side: process creation, refused.

An SGX enclave cannot fork: its memory is encrypted with keys bound to this enclave instance,
so a child process would have to be a new enclave that is attested and handed the parent's
state (Graphene-SGX's checkpoint-and-restore).  eleos-shim does not model that; every way the
stdlib forks or spawns raises one clear error instead of running a child outside the enclave.
"""
from __future__ import annotations

import errno as _errno


class EnclaveForkError(OSError):
    """Raised by os.fork, os.posix_spawn, subprocess, ... inside the enclave (errno ENOSYS)."""


def _refuse(what: str):
    def refused(*args, **kwargs):
        raise EnclaveForkError(
            _errno.ENOSYS,
            f"{what} is not possible inside the enclave: an SGX enclave cannot fork or spawn "
            f"processes (its memory is bound to this enclave instance); run the child outside "
            f"eleos-shim")
    refused.__name__ = what.rsplit(".", 1)[-1].rstrip("()")
    refused.__qualname__ = refused.__name__
    return refused


def patches() -> list[tuple[object, str, object]]:
    """(owner, attribute, replacement) for every fork/spawn entry point that exists."""
    import os
    import subprocess
    out = []
    for name in ("fork", "forkpty", "posix_spawn", "posix_spawnp", "system"):
        if hasattr(os, name):
            out.append((os, name, _refuse(f"os.{name}()")))
    out.append((subprocess.Popen, "_execute_child",
                _refuse_method("subprocess.Popen()")))
    try:
        import _posixsubprocess
        out.append((_posixsubprocess, "fork_exec", _refuse("_posixsubprocess.fork_exec()")))
    except ImportError:   # pragma: no cover - always present on Linux
        pass
    return out


def _refuse_method(what: str):
    plain = _refuse(what)

    def _execute_child(self, *args, **kwargs):
        plain()
    return _execute_child

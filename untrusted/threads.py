"""UNTRUSTED side: the host's own Python threads carry an OS name of the shim's (eleos-*).

Python 3.11 names a thread only for itself (``threading.Thread(name=...)``); the kernel keeps
calling it ``python``.  The benchmarks tell the app's threads from the shim's host threads
by the kernel's name (/proc/<pid>/task/<tid>/comm, benchmarks/common.py), as the native RPC
workers and the EPC driver's threads name themselves with pthread_setname_np; so the host's
Python threads (the balloon agent and manager, the EPC domain's sampler) name themselves
too, with prctl(PR_SET_NAME), from inside the thread.
"""
from __future__ import annotations

import ctypes
import threading

PR_SET_NAME = 15
COMM_MAX = 15                       # the kernel keeps 15 bytes of a thread's name

_libc = ctypes.CDLL(None, use_errno=True)


def name_this_thread(name: str) -> None:
    """Give the calling thread the OS name ``name`` (cut to the kernel's 15 bytes)."""
    _libc.prctl(PR_SET_NAME, ctypes.c_char_p(name.encode()[:COMM_MAX]), 0, 0, 0)


def host_thread(target, name: str) -> threading.Thread:
    """A daemon thread that runs ``target`` under the OS name ``name`` (an eleos-* name)."""
    def run():
        name_this_thread(name)
        target()
    return threading.Thread(target=run, name=name, daemon=True)

"""Start and stop apps/kvstore.py for tests: plain python or under ``python -m eleos_shim``.

Test-side (untrusted) helper, imported by tests/test_kvstore_*.py. Each server is a real
subprocess on 127.0.0.1 with an ephemeral port (``-p 0``; its first stdout line says where
it listens) and ``-A`` so a test stops it with memcached's ``shutdown`` command at once;
SIGTERM, then SIGKILL, if it does not go. Every server started here is stopped when its
context exits. Shim runs use the test environment of tests/conftest.py (cost accounted, not
spent; an 8 MB EPC).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from eleos_shim.harness import AppProcess, app_command, app_env

ROOT = Path(__file__).resolve().parent.parent
SERVER = "apps/kvstore.py"
MODES = ("native", "sgx", "eleos")


class KVServer(AppProcess):
    """A running apps/kvstore.py (see eleos_shim.harness.AppProcess), stopped with memcached's
    ``shutdown`` command first."""

    def __init__(self, mode: str, *args: str, env: dict | None = None, start_timeout: float = 60.0,
                 nofile: int | None = None, address_space: int | None = None):
        self.mode = mode
        cmd, run_env = server_command(mode, *args, env=env)
        super().__init__(cmd, run_env, name="kvstore", stats=mode != "native",
                         start_timeout=start_timeout,
                         preexec_fn=_limits(nofile, address_space),
                         exit_command=b"shutdown\r\n")

    def shim_stats(self) -> dict | None:
        """The shim's stats JSON, written at exit (None natively)."""
        return self.stats()


def server_command(mode: str, *args: str, env: dict | None = None) -> tuple[list[str], dict]:
    """The command and environment that run the KV store in ``mode`` ("native" = plain python)."""
    if mode == "native":
        run_env = app_env(None)
    else:
        from tests.conftest import shim_env
        run_env = shim_env(mode)
    run_env.update(env or {})
    return app_command(SERVER, "-p", "0", "-A", *args, shim=mode != "native"), run_env


@contextlib.contextmanager
def kvserver(mode: str, *args: str, env: dict | None = None, start_timeout: float = 60.0,
             nofile: int | None = None, address_space: int | None = None):
    """Yield a running :class:`KVServer` started with ``args`` (memcached-like options);
    ``nofile`` caps the server's descriptors (RLIMIT_NOFILE, soft and hard), ``address_space``
    its virtual memory in bytes (RLIMIT_AS), so a server that would grow without bound fails
    at once instead of taking the machine's memory."""
    with KVServer(mode, *args, env=env, start_timeout=start_timeout, nofile=nofile,
                  address_space=address_space) as srv:
        yield srv


def _limits(nofile: int | None, address_space: int | None):
    if nofile is None and address_space is None:
        return None

    def apply() -> None:
        import resource
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
        if address_space is not None:
            resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
    return apply


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def real_memcached(*args: str):
    """Debian's memcached on 127.0.0.1 (the reference); skips (fails under CI=true) if absent.

    Run without its LRU maintainer thread, so that its answers depend only on the commands
    sent: an in-place incr/decr (the padded "35 ") happens only while the worker holds the
    one reference to the item besides the hash table's (do_add_delta in memcached.c checks
    ``refcount == 2``); the maintainer, shuffling items between its HOT/WARM/COLD queues,
    holds one for a moment, and then memcached allocates a new, unpadded item. That made the
    transcript fail in 17 of 40 runs here with the defaults, in 17 of 40 without the crawler,
    and in 0 of 40 without the maintainer (which also schedules the crawler). Our server has
    no background thread and always takes the in-place path."""
    exe = require_tool("memcached", "memcached")
    port = free_port()
    cmd = [exe, "-p", str(port), "-U", "0", "-l", "127.0.0.1", "-o", "no_lru_maintainer", *args]
    if os.geteuid() == 0:
        cmd += ["-u", "root"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(500):        # wait until it accepts: connect attempts, no sleeps
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except ConnectionRefusedError:
                if proc.poll() is not None:
                    raise RuntimeError("memcached exited: " + proc.stderr.read().decode())
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=0.01)
        yield ("127.0.0.1", port)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def require_tool(name: str, package: str) -> str:
    """Path of a system tool; without it skip loudly, or fail when CI=true (it must run there)."""
    path = shutil.which(name)
    if path:
        return path
    msg = (f"{name} is not installed (Debian package {package}; scripts/install-system-deps.sh "
           f"installs it)")
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(msg + ": under CI=true this test must run")
    pytest.skip("!!! " + msg)
    raise AssertionError("unreachable")

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
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVER = "apps/kvstore.py"
MODES = ("native", "sgx", "eleos")


@dataclass
class KVServer:
    proc: subprocess.Popen
    host: str
    port: int
    mode: str
    stderr_path: str
    stats_path: str | None

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def stderr(self) -> str:
        with open(self.stderr_path) as f:
            return f.read()

    def stop(self, timeout: float = 30.0) -> int:
        """Ask the server to shut down and wait; returns its exit status."""
        if self.proc.poll() is None:
            try:
                with socket.create_connection(self.address, timeout=5) as s:
                    s.sendall(b"shutdown\r\n")
                    s.recv(64)      # EOF once the server has closed us
            except OSError:
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        return self.proc.returncode

    def shim_stats(self) -> dict | None:
        """The shim's stats JSON, written at exit (None natively)."""
        if self.stats_path and os.path.exists(self.stats_path):
            with open(self.stats_path) as f:
                text = f.read()
            return json.loads(text) if text.strip() else None
        return None


def server_command(mode: str, *args: str, env: dict | None = None) -> tuple[list[str], dict]:
    """The command and environment that run the KV store in ``mode`` ("native" = plain python)."""
    if mode == "native":
        run_env = {k: v for k, v in os.environ.items() if not k.startswith("ELEOS_")}
        run_env["PYTHONPATH"] = str(ROOT)
        cmd = [sys.executable, SERVER]
    else:
        from tests.conftest import shim_env
        run_env = shim_env(mode)
        cmd = [sys.executable, "-m", "eleos_shim", SERVER]
    run_env.update(env or {})
    return cmd + ["-p", "0", "-A", *args], run_env


@contextlib.contextmanager
def kvserver(mode: str, *args: str, env: dict | None = None, start_timeout: float = 60.0,
             nofile: int | None = None):
    """Yield a running :class:`KVServer` started with ``args`` (memcached-like options);
    ``nofile`` caps the server's descriptors (RLIMIT_NOFILE, soft and hard)."""
    cmd, run_env = server_command(mode, *args, env=env)
    stats_path = None
    if mode != "native":
        fd, stats_path = tempfile.mkstemp(prefix="kvstore-stats-", suffix=".json")
        os.close(fd)
        run_env["ELEOS_STATS"] = stats_path
    err = tempfile.NamedTemporaryFile(prefix="kvstore-", suffix=".err", delete=False)
    err.close()
    with open(err.name, "w") as err_file:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=run_env, stdout=subprocess.PIPE,
                                stderr=err_file, text=True,
                                preexec_fn=None if nofile is None else _limit_nofile(nofile))
    srv = KVServer(proc, "", 0, mode, err.name, stats_path)
    try:
        line = first_line(proc, start_timeout)
        if not line.startswith("listening on "):
            proc.kill()
            proc.wait()
            raise RuntimeError(f"kvstore did not start under {mode} (first line {line!r}):\n"
                               + srv.stderr())
        host, port = line.split()[-1].rsplit(":", 1)
        srv.host, srv.port = host, int(port)
        yield srv
    finally:
        srv.stop()
        proc.stdout.close()
        os.unlink(err.name)
        if stats_path and os.path.exists(stats_path):
            os.unlink(stats_path)


def _limit_nofile(n: int):
    def apply() -> None:
        import resource
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))
    return apply


def first_line(proc: subprocess.Popen, timeout: float) -> str:
    """The first stdout line, or "" if the process exits or stays silent for ``timeout`` s."""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            return ""
    return proc.stdout.readline().strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def real_memcached(*args: str):
    """Debian's memcached on 127.0.0.1 (the reference); skips (fails under CI=true) if absent."""
    exe = require_tool("memcached", "memcached")
    port = free_port()
    cmd = [exe, "-p", str(port), "-U", "0", "-l", "127.0.0.1", *args]
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

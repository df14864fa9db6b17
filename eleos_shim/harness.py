"""Run a server app under the shim as a subprocess and drive it (eleos_shim/, host-side tooling).

Tests, benchmarks and users' own experiments all do the same thing: start an app with
``python -m eleos_shim`` (or plain ``python`` for the native baseline) in one named
configuration, wait for its first stdout line ``listening on HOST:PORT``, talk to it over
127.0.0.1, stop it, and read the shim's stats JSON written at exit.  This module is that
one piece of code.
"""
from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Mapping

from eleos_shim.config import environ_without_settings

ROOT = Path(__file__).resolve().parent.parent

# The configurations the paper compares, and Eleos's two halves alone (its breakdown): SUVM
# for the heap with OCALL exits for the calls, and RPC calls with the heap in the EPC.
# no-exits is vanilla SGX whose calls leave for free (the LibOS routes them, nothing is paid):
# against native it is what the LibOS itself costs, against sgx what the exits cost.
CONFIGS: dict[str, dict[str, str]] = {
    "native": {"ELEOS_MODE": "native"},
    "sgx": {"ELEOS_MODE": "sgx"},
    "eleos": {"ELEOS_MODE": "eleos"},
    "suvm-only": {"ELEOS_MODE": "eleos", "ELEOS_SYSCALLS": "ocall"},
    "rpc-only": {"ELEOS_MODE": "sgx", "ELEOS_SYSCALLS": "rpc"},
    "no-exits": {"ELEOS_MODE": "sgx", "ELEOS_SYSCALLS": "direct"},
    # eleos whose waits that may block exit (as before ELEOS_RPC_WAIT, and as Gramine's do).
    "eleos-exit-waits": {"ELEOS_MODE": "eleos", "ELEOS_RPC_WAIT": "ocall"},
}


def app_env(config: str | None = None, extra: Mapping[str, str] | None = None,
            base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of an app run: ``base`` (default: ours) without any ELEOS_ setting,
    the project on PYTHONPATH, then ``config``'s settings and ``extra``."""
    env = environ_without_settings(base)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if config is not None:
        env.update(CONFIGS[config])
    env.update({k: str(v) for k, v in (extra or {}).items()})
    return env


def app_command(script: str, *args: str, shim: bool = True) -> list[str]:
    """``python -m eleos_shim script args`` (or plain ``python script args``)."""
    return [sys.executable, *(["-m", "eleos_shim"] if shim else []), script, *args]


def first_line(proc: subprocess.Popen, timeout: float) -> str:
    """The first stdout line, or "" if the process exits or stays silent for ``timeout`` s."""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            return ""
    return proc.stdout.readline().strip()


class AppProcess:
    """A server app in a subprocess that announces ``listening on HOST:PORT`` first.

    ``exit_command``: what to send over a TCP connection to ask the app to exit (memcached's
    ``shutdown``); without one, SIGTERM.  ``stats=True`` points ELEOS_STATS at a temporary file that :meth:`stats` reads after the
    app has exited.  :meth:`close` (or leaving the ``with`` block) stops the app, if it still
    runs, and removes the temporary files: a caller never leaves a server behind."""

    def __init__(self, cmd: list[str], env: dict[str, str], *, name: str = "app",
                 stats: bool = False, start_timeout: float = 60.0, cwd: Path | str = ROOT,
                 preexec_fn: Callable[[], None] | None = None, exit_command: bytes | None = None):
        self.name = name
        self.exit_command = exit_command
        self.stats_path = None
        if stats:
            fd, self.stats_path = tempfile.mkstemp(prefix=f"{name}-stats-", suffix=".json")
            os.close(fd)
            env = dict(env, ELEOS_STATS=self.stats_path)
        fd, self.stderr_path = tempfile.mkstemp(prefix=f"{name}-", suffix=".err")
        # stderr to a file: a pipe nobody reads during a long run could fill and stall the app
        with os.fdopen(fd, "w") as err:
            self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                         stderr=err, text=True, preexec_fn=preexec_fn)
        line = first_line(self.proc, start_timeout)
        if not line.startswith("listening on "):
            self.proc.kill()
            self.proc.wait()
            text = self.stderr()
            self._cleanup()
            raise RuntimeError(f"{name} did not start (first line {line!r}):\n{text[-4000:]}")
        host, port = line.split()[-1].rsplit(":", 1)
        self.host, self.port = host, int(port)

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def request_exit(self) -> None:
        """Ask the app to exit: its exit command if it has one, else SIGTERM."""
        if self.exit_command is None:
            self.proc.send_signal(signal.SIGTERM)
            return
        with socket.create_connection(self.address, timeout=10) as s:
            s.sendall(self.exit_command)
            s.recv(64)      # EOF once the app has closed us

    def stop(self, timeout: float = 60.0) -> int:
        """:meth:`request_exit` (SIGTERM if that fails) and wait; SIGKILL if the app is still
        there after ``timeout``.  Returns the exit status."""
        if self.proc.poll() is None:
            try:
                self.request_exit()
            except OSError:
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def stderr(self) -> str:
        with open(self.stderr_path) as f:
            return f.read()

    def stats(self) -> dict | None:
        """The shim's stats JSON (written at exit); None if there is none."""
        if self.stats_path and os.path.exists(self.stats_path):
            with open(self.stats_path) as f:
                text = f.read()
            return json.loads(text) if text.strip() else None
        return None

    def _cleanup(self) -> None:
        if self.proc.stdout:
            self.proc.stdout.close()
        for path in (self.stderr_path, self.stats_path):
            if path and os.path.exists(path):
                os.unlink(path)

    def close(self) -> None:
        self.stop()
        self._cleanup()

    def __enter__(self) -> "AppProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

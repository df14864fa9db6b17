"""Start and stop the face verification server for tests: plain python, or under the shim.

Test-side (untrusted) helper.  The server is a real subprocess on 127.0.0.1 with an ephemeral
port; its first stdout line says where it listens.  Every server started here is stopped
(SIGTERM, then SIGKILL if it ignores it) when the context exits.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVER = "apps/faceverify/server.py"


@dataclass
class ServerProc:
    proc: subprocess.Popen
    address: tuple[str, int]
    stderr_path: str
    stats_path: str | None

    def stderr(self) -> str:
        with open(self.stderr_path) as f:
            return f.read()

    def stop(self) -> int:
        """SIGTERM, wait; returns the exit status (the shim writes its stats on the way out)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def stats(self) -> dict | None:
        if self.stats_path and os.path.exists(self.stats_path):
            with open(self.stats_path) as f:
                text = f.read()
            return json.loads(text) if text.strip() else None
        return None


@contextlib.contextmanager
def faceverify_server(*args: str, mode: str | None = None, env: dict | None = None,
                      start_timeout: float = 60.0):
    """Yield a running server.  ``mode`` None: plain python; else ``python -m eleos_shim``
    with ELEOS_MODE=mode (and the test env of tests/conftest.py: cost accounted, small EPC)."""
    if mode is None:
        run_env = {k: v for k, v in os.environ.items() if not k.startswith("ELEOS_")}
        run_env["PYTHONPATH"] = str(ROOT)
        cmd = [sys.executable, SERVER]
    else:
        from tests.conftest import shim_env
        run_env = shim_env(mode)
        cmd = [sys.executable, "-m", "eleos_shim", SERVER]
    run_env.update(env or {})
    stats_path = None
    if mode is not None:
        fd, stats_path = tempfile.mkstemp(prefix="faceverify-stats-", suffix=".json")
        os.close(fd)
        run_env["ELEOS_STATS"] = stats_path
    err = tempfile.NamedTemporaryFile(prefix="faceverify-", suffix=".err", delete=False)
    err.close()
    with open(err.name, "w") as err_file:
        proc = subprocess.Popen(cmd + ["-p", "0", *args], cwd=ROOT, env=run_env,
                                stdout=subprocess.PIPE, stderr=err_file, text=True)
    try:
        line = _first_line(proc, start_timeout)
        if not line.startswith("listening on "):
            proc.kill()
            proc.wait()
            with open(err.name) as f:
                raise RuntimeError(f"server did not start (first line {line!r}):\n{f.read()}")
        host, port = line.split()[-1].rsplit(":", 1)
        yield ServerProc(proc, (host, int(port)), err.name, stats_path)
    finally:
        ServerProc(proc, ("", 0), err.name, None).stop()
        proc.stdout.close()
        os.unlink(err.name)
        if stats_path and os.path.exists(stats_path):
            os.unlink(stats_path)


def _first_line(proc: subprocess.Popen, timeout: float) -> str:
    """The first stdout line, or "" if the process exits or stays silent for ``timeout`` s."""
    import selectors
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            return ""
    return proc.stdout.readline().strip()

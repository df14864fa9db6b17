"""Start and stop the face verification server for tests: plain python, or under the shim.

Test-side (untrusted) helper over eleos_shim.harness.AppProcess.  The server is a real
subprocess on 127.0.0.1 with an ephemeral port; its first stdout line says where it listens.
Every server started here is stopped (SIGTERM, then SIGKILL if it ignores it) when the
context exits; the shim writes its stats on the way out.
"""
from __future__ import annotations

import contextlib

from eleos_shim.harness import AppProcess, app_command, app_env

SERVER = "apps/faceverify/server.py"


@contextlib.contextmanager
def faceverify_server(*args: str, mode: str | None = None, env: dict | None = None,
                      start_timeout: float = 60.0):
    """Yield a running server (an AppProcess).  ``mode`` None: plain python; else
    ``python -m eleos_shim`` with ELEOS_MODE=mode (and the test env of tests/conftest.py:
    cost accounted, small EPC)."""
    if mode is None:
        run_env = app_env(None)
    else:
        from tests.conftest import shim_env
        run_env = shim_env(mode)
    run_env.update(env or {})
    with AppProcess(app_command(SERVER, "-p", "0", *args, shim=mode is not None), run_env,
                    name="faceverify", stats=mode is not None,
                    start_timeout=start_timeout) as srv:
        yield srv

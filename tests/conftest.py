"""Shared fixtures: run scripts under ``python -m eleos_shim`` in a subprocess, per mode.

``run_shim(mode, script, *args, env=..., stats=True)`` returns a ``ShimRun`` with the exit
status, stdout, stderr and the parsed stats JSON.  Runs use ``ELEOS_COST=account`` unless a
test says otherwise: modeled cycles are counted, not spent, so tests stay fast.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = Path(__file__).resolve().parent / "scripts"
MODES = ("native", "sgx", "eleos")


@dataclass
class ShimRun:
    returncode: int
    stdout: str
    stderr: str
    stats: dict | None


def shim_env(mode: str | None = None, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ELEOS_")}
    env["ELEOS_COST"] = "account"
    env["ELEOS_EPC_MB"] = "8"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    if mode:
        env["ELEOS_MODE"] = mode
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_shim(mode: str | None, script, *args, env: dict | None = None, stats: bool = True,
             cwd=None, timeout: float = 60, input: str | None = None,
             preexec_fn=None) -> ShimRun:
    env = shim_env(mode, **(env or {}))
    stats_path = None
    if stats:
        fd, stats_path = __import__("tempfile").mkstemp(suffix=".json", prefix="eleos-stats-")
        os.close(fd)
        os.unlink(stats_path)
        env["ELEOS_STATS"] = stats_path
    cmd = [sys.executable, "-m", "eleos_shim"]
    cmd += ["-m", script[3:]] if str(script).startswith("-m ") else [str(script)]
    cmd += [str(a) for a in args]
    proc = subprocess.run(cmd, env=env, cwd=cwd or ROOT, capture_output=True, text=True,
                          timeout=timeout, input=input, preexec_fn=preexec_fn)
    data = None
    if stats_path and os.path.exists(stats_path):
        with open(stats_path) as f:
            data = json.load(f)
        os.unlink(stats_path)
    return ShimRun(proc.returncode, proc.stdout, proc.stderr, data)


@pytest.fixture
def shim():
    """The ``run_shim`` function, as a fixture."""
    return run_shim

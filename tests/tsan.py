"""Build and run a C harness under ThreadSanitizer (test helper for the native cores).

``build`` compiles the harness with the project's sources and skips the test when this
machine's compiler cannot build with TSan; ``run`` runs the binary so that the first race
report stops it (exit status 66).  The tests keep their own assertions.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def build(directory: Path, name: str, harness: str, sources: list[str],
          includes: list[str], libs: list[str]) -> Path:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip(f"no C compiler: the ThreadSanitizer check of {name} cannot run")
    (directory / "main.c").write_text(harness)
    exe = directory / name
    cmd = [cc, "-O1", "-g", "-std=gnu11", "-fsanitize=thread", "-Wno-tsan",
           *(f"-I{ROOT / i}" for i in includes), str(directory / "main.c"),
           *(str(ROOT / s) for s in sources), "-o", str(exe), *(f"-l{lib}" for lib in libs)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 and ("sanitize" in proc.stderr or "tsan" in proc.stderr):
        pytest.skip("this compiler cannot build with ThreadSanitizer: " + proc.stderr[-200:])
    assert proc.returncode == 0, proc.stderr
    return exe


def run(exe: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, TSAN_OPTIONS="halt_on_error=1 exitcode=66")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, env=env, timeout=120)

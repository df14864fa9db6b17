"""The README's examples work as written: every ``sh`` block is run (a doc test).

A block is a list of shell commands, run one by one from the repository's root with the
project's venv first on PATH (what ``. .venv/bin/activate`` gives) and ``ELEOS_COST=account``
(the examples' results do not depend on cycles being spent, and the suite stays fast).  The
line before a block may say how to run it:

- ``<!-- readme-test: server -->``: the first command is a server; it is started, its first
  output line awaited (it prints it once it listens), the other commands are run against it,
  then it is stopped with SIGINT, as the README's Ctrl-C, and SIGKILL if it does not exit.
- ``<!-- readme-test: skip: REASON -->``: not run (it takes minutes, or is this suite).

A command block without the ``sh`` tag would escape the test, so that is a failure too.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from eleos_shim.harness import first_line
from tests.conftest import sigint_as_at_a_terminal

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
FENCE = re.compile(r"^( *)```(\w*)\s*$")
MARK = re.compile(r"<!--\s*readme-test:\s*(\w+)(?::\s*(.*?))?\s*-->")
# The first word of a line that is a command someone would type.
COMMAND = re.compile(r"^(?:[A-Z_]+=\S+\s+)*(python3?|eleos-shim|make|taskset|chrt|memcaslap)\b")
TIMEOUT = 180


def blocks() -> list[dict]:
    """Every fenced block of the README: line number, tag, mark, its lines."""
    out, lines, i = [], README.read_text().splitlines(), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, tag, start = len(m.group(1)), m.group(2), i
        prev = next((ln for ln in reversed(lines[:i]) if ln.strip()), "")
        mark = MARK.search(prev)
        body = []
        i += 1
        while i < len(lines) and not FENCE.match(lines[i]):
            body.append(lines[i][indent:])
            i += 1
        out.append({"line": start + 1, "tag": tag, "mark": mark.group(1) if mark else None,
                    "why": mark.group(2) if mark else None, "body": body})
        i += 1
    return out


def commands(block: dict) -> list[str]:
    return [ln for ln in block["body"] if ln.strip() and not ln.lstrip().startswith("#")]


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("ELEOS_")}
    e["PATH"] = os.path.dirname(sys.executable) + os.pathsep + e.get("PATH", "")
    e["ELEOS_COST"] = "account"
    e["PYTHONUNBUFFERED"] = "1"       # a server's first line must come out when it is printed
    return e


def run(cmd: str) -> None:
    p = subprocess.run(["bash", "-c", cmd], cwd=ROOT, env=env(), capture_output=True, text=True,
                       timeout=TIMEOUT)
    assert p.returncode == 0, f"README command failed ({p.returncode}): {cmd}\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
    assert "Traceback" not in p.stderr, f"{cmd}\n{p.stderr[-3000:]}"


def run_with_server(server_cmd: str, clients: list[str]) -> None:
    proc = subprocess.Popen(["bash", "-c", server_cmd], cwd=ROOT, env=env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, preexec_fn=sigint_as_at_a_terminal)
    err: list[str] = []
    drain = threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)
    drain.start()
    started = False
    try:
        started = bool(first_line(proc, TIMEOUT))
        if started:
            # keep its stdout drained, so a chatty server never blocks on a full pipe
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            for cmd in clients:
                run(cmd)
            assert proc.poll() is None, f"the server died during the example: {server_cmd}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        drain.join(timeout=10)
        proc.stdout.close()
        proc.stderr.close()
    assert started, f"the server printed nothing: {server_cmd}\n{''.join(err)[-3000:]}"
    text = "".join(err)
    # Ctrl-C may end a server with python's KeyboardInterrupt traceback; anything else fails
    assert "Traceback" not in text or text.rstrip().endswith("KeyboardInterrupt"), text[-3000:]


SH = [b for b in blocks() if b["tag"] == "sh"]


def test_every_command_block_is_an_sh_block():
    """An untagged block that holds commands would never be run here."""
    stray = [(b["line"], ln) for b in blocks() if b["tag"] != "sh"
             for ln in b["body"] if COMMAND.match(ln.strip())]
    assert not stray, f"README blocks with commands but no sh tag (line, command): {stray}"
    assert len(SH) >= 5


def test_every_skipped_block_says_why():
    for b in SH:
        if b["mark"] == "skip":
            assert b["why"], f"README line {b['line']}: readme-test: skip needs a reason"
        else:
            assert b["mark"] in (None, "server"), f"README line {b['line']}: unknown mark {b['mark']}"


@pytest.mark.slow
@pytest.mark.parametrize("block", SH, ids=[f"line{b['line']}" for b in SH])
def test_readme_block_works_as_written(block):
    if block["mark"] == "skip":
        pytest.skip(f"README line {block['line']}: {block['why']}")
    cmds = commands(block)
    if block["mark"] == "server":
        run_with_server(cmds[0], cmds[1:])
    else:
        for cmd in cmds:
            run(cmd)

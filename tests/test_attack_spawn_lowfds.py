"""A spawn child's error pipe is never an fd the child changes before its exec.

The enclave's spawns report a failed child on an error pipe of the enclave's own
(trusted/libos/proc.py).  Made when the app has closed its stdio, that pipe got fd 1 or 2,
which the child then dup2'd its stdout or stderr onto: the failure went into the app's log
and the app saw a child that started and exited 255.  Natively subprocess moves its error
pipe above 2 and glibc's posix_spawn has none; a file action that closes or dup2s onto the
pipe's fd did the same.  Each case is compared with the same app run natively.
"""
from __future__ import annotations

import os

import pytest

from tests.conftest import SCRIPTS, run_shim
from tests.libos_helpers import installed, make_transport

MISSING = "/nonexistent/eleos-prog"


def _run(mode, tmp_path):
    out = tmp_path / f"result-{mode}"
    run = run_shim(mode, SCRIPTS / "spawn_low_fds.py", out, stats=False)
    assert run.returncode == 0, run.stderr
    return out.read_text(), (tmp_path / f"result-{mode}.log").read_text()


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    return _run("native", tmp_path_factory.mktemp("native"))


@pytest.mark.parametrize("mode", ["sgx", "eleos"])
def test_children_of_an_app_without_stdio_fail_and_write_as_natively(native, mode, tmp_path):
    results, log = native
    assert results.count("FileNotFoundError 2") == 11 and "started" not in results
    assert log == "out\nerr\n"                   # only what the shell wrote, no report
    assert _run(mode, tmp_path) == native


def _next_pipe() -> tuple[int, int]:
    """The two fds the next pipe gets (this test runs nothing else that opens fds)."""
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    return r, w


@pytest.mark.parametrize("action", ["close", "dup2", "open"])
def test_a_posix_spawn_file_action_on_the_error_pipes_fd_cannot_hide_a_failure(action):
    def spawn():
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            _r, w = _next_pipe()       # the fd the enclave's error pipe would write on
            actions = {"close": [(os.POSIX_SPAWN_CLOSE, w)],
                       "dup2": [(os.POSIX_SPAWN_DUP2, null, w)],
                       "open": [(os.POSIX_SPAWN_OPEN, w, os.devnull, os.O_WRONLY, 0)]}[action]
            try:
                pid = os.posix_spawn(MISSING, [MISSING], os.environ, file_actions=actions)
            except FileNotFoundError as exc:
                return exc.errno
            return ("started", os.waitpid(pid, 0)[1])
        finally:
            os.close(null)
    native = spawn()
    assert native == 2
    with installed(make_transport("ocall")):
        assert spawn() == native
        # and a program that exists still starts, with the action applied
        _r, w = _next_pipe()
        pid = os.posix_spawn("/bin/sh", ["sh", "-c", f"[ ! -e /dev/fd/{w} ]"],
                             os.environ, file_actions=[(os.POSIX_SPAWN_CLOSE, w)])
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0

"""``os.posix_spawn``/``posix_spawnp`` start host programs through the spawn OCALL.

CPython's own posix_spawn tests (test_posix's ``_PosixSpawnMixin``: file actions, process
group, session, reset ids, signal mask and defaults, scheduler, bad arguments) run here
against ``os.posix_spawn`` with the LibOS installed, every spawn an OP_SPAWN; the argument
errors are compared with the real function's.
"""
from __future__ import annotations

import os
import signal
import unittest

import pytest
from test import test_posix

from eleos_shim import abi
from tests.libos_helpers import installed, make_transport
from tests.test_libos_fidelity import transport  # noqa: F401


class _Counting:
    def __init__(self, inner):
        self.inner, self.path, self.ops = inner, inner.path, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def call(self, op, *args, **kwargs):
        self.ops.append(op)
        return self.inner.call(op, *args, **kwargs)


def _cpython_cases(func_name: str):
    class Routed(test_posix._PosixSpawnMixin, unittest.TestCase):
        spawn_func = staticmethod(lambda *a, **kw: getattr(os, func_name)(*a, **kw))
    return unittest.defaultTestLoader.loadTestsFromTestCase(Routed)


@pytest.mark.parametrize("func_name", ["posix_spawn", "posix_spawnp"])
def test_cpythons_posix_spawn_tests_pass_through_the_spawn_ocall(tmp_path, monkeypatch,
                                                                 func_name):
    monkeypatch.chdir(tmp_path)                  # the tests write os_helper.TESTFN here
    counting = _Counting(make_transport("ocall"))
    suite = _cpython_cases(func_name)
    result = unittest.TestResult()
    with installed(counting):
        suite.run(result)
    problems = [(str(t), tb.splitlines()[-1]) for t, tb in result.failures + result.errors]
    assert problems == [] and result.testsRun >= 20
    assert counting.ops.count(abi.OP_SPAWN) >= result.testsRun - len(result.skipped) - 6


def outcome(fn):
    try:
        pid = fn()
    except Exception as exc:                     # the outcome compared
        return type(exc), str(exc), getattr(exc, "filename", None)
    return "exit", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


BAD = {
    "setpgroup_none": dict(setpgroup=None),
    "scheduler_none": dict(scheduler=None),
    "file_actions_int": dict(file_actions=5),
    "file_action_none": dict(file_actions=[None]),
    "file_action_unknown": dict(file_actions=[(12345,)]),
    "close_no_fd": dict(file_actions=[(os.POSIX_SPAWN_CLOSE,)]),
    "close_negative": dict(file_actions=[(os.POSIX_SPAWN_CLOSE, -1)]),
    "close_unopened_is_fine": dict(file_actions=[(os.POSIX_SPAWN_CLOSE, 99)]),
    "dup2_unopened": dict(file_actions=[(os.POSIX_SPAWN_DUP2, 99, 5)]),
    "open_missing": dict(file_actions=[(os.POSIX_SPAWN_OPEN, 3, "/nonexistent/x", 0, 0)]),
    "resetids_none": dict(resetids=None),
    "sigmask_out_of_range": dict(setsigmask=[0]),
    "scheduler_bad_policy": dict(scheduler=(12345, os.sched_param(0))),
    "sigdef_usr1": dict(setsigdef=[signal.SIGUSR1]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_arguments_and_failures_are_reported_as_cpythons(transport, case):
    kw = BAD[case]
    run = lambda: os.posix_spawn("/bin/true", ["/bin/true"], os.environ, **kw)  # noqa: E731
    native = outcome(run)
    with installed(transport):
        shimmed = outcome(run)
    assert shimmed == native


@pytest.mark.parametrize("path", ["/nonexistent", b"/nonexistent", "/tmp"])
def test_a_program_that_cannot_run_is_an_oserror_naming_it(transport, path):
    run = lambda: os.posix_spawn(path, ["x"], {})  # noqa: E731
    native = outcome(run)
    with installed(transport):
        assert outcome(run) == native
    assert native[0] in (FileNotFoundError, PermissionError) and native[2] == path


def test_a_child_writing_more_than_a_pipe_holds_to_a_dup2ed_pipe_blocks_as_natively(transport):
    def run():
        r, w = os.pipe()
        pid = os.posix_spawn("/bin/sh", ["sh", "-c", "head -c 1000000 /dev/zero"], os.environ,
                             file_actions=[(os.POSIX_SPAWN_DUP2, w, 1)])
        os.close(w)
        got = 0
        while chunk := os.read(r, 1 << 16):
            got += len(chunk)
        os.close(r)
        return got, os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    native = run()
    with installed(transport):
        assert run() == native == (1000000, 0)

"""The host lies in its answers to a spawn (OP_SPAWN and the error pipe's reads after it).

The child is a host program and its pid the host's name for it, which the enclave cannot
verify (README "Threat model").  What it can check, it does: the pid is not the enclave's own
or its parent's (the app's ``kill``/``send_signal``/``wait`` on the "child" would act on
them), and the child's error report is at most what CPython reads of its error pipe (a host
that keeps the pipe giving cannot grow enclave memory for ever), and it says only what an
honest child says: an errno and where it failed.  (subprocess, given the report, raises the
builtin it names: SystemExit, KeyboardInterrupt, anything.)  Each test reaps the real
child the honest host started.
"""
from __future__ import annotations

import os
import struct
import subprocess

import pytest

from eleos_shim import abi
from eleos_shim.errors import IagoError
from tests.libos_helpers import LyingTransport, installed, lying_libos, make_transport
from trusted.syscall import Reply

TRUE = "/bin/true"


class SpawnLiar(LyingTransport):
    """Remembers every pid the real host started (to reap them), and can answer the reads
    after a spawn with a flood of error report."""

    def __init__(self, inner):
        super().__init__(inner)
        self.started: list[int] = []
        self.flood = 0                # reads still to answer with a flood
        self.flooded = 0
        self.report = b""             # the answer to the first read of a pipe, if set
        self.report_pipe = None       # ... of this pipe (0: the first made), else of any
        self.pipes: list[int] = []    # the read end of each pipe made

    def call(self, op, *args, **kwargs):
        if op == abi.OP_SPAWN:
            fn = self._lies.pop(op, None)
            reply = self.inner.call(op, *args, **kwargs)
            if reply.ret > 0:
                self.started.append(reply.ret)
            if fn is None:
                return reply
            self.told += 1
            return fn(reply, args, kwargs)
        reply = super().call(op, *args, **kwargs)
        if op == abi.OP_PIPE2 and reply.ret == 0:
            self.pipes.append(struct.unpack("=ii", reply.out)[0])
        if op == abi.OP_READ and self.report and (
                self.report_pipe is None or self.pipes[self.report_pipe:][:1] == [args[0]]):
            report, self.report = self.report, b""
            return Reply(len(report), report, b"", reply.args)
        if op == abi.OP_READ and self.flood:
            self.flood -= 1
            self.flooded += 1
            n = args[1]
            return Reply(n, b"x" * n, b"", reply.args)
        return reply

    def reap(self) -> None:
        for pid in self.started:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass


@pytest.fixture
def liar():
    with lying_libos(SpawnLiar) as (t, libos):
        try:
            yield t, libos
        finally:
            t.reap()


@pytest.mark.parametrize("whose", ["own", "parent"])
@pytest.mark.parametrize("how", ["subprocess", "posix_spawn"])
def test_a_spawn_answered_with_the_enclaves_own_or_parents_pid_is_caught(liar, whose, how):
    t, _libos = liar
    pid = os.getpid() if whose == "own" else os.getppid()
    t.lie(abi.OP_SPAWN, lambda r, a, k: r._replace(ret=pid))
    with pytest.raises(IagoError, match=f"pid {pid}"):
        if how == "subprocess":
            subprocess.Popen([TRUE])
        else:
            os.posix_spawn(TRUE, [TRUE], os.environ)
    assert len(t.started) == 1


def test_a_spawn_error_report_that_never_ends_is_caught_after_what_cpython_reads(liar):
    t, _libos = liar
    t.flood = 1000                   # 50 MB of "error report" if the enclave kept reading
    with pytest.raises(IagoError, match="more than 50000 bytes"):
        os.posix_spawn(TRUE, [TRUE], os.environ)
    assert t.flooded <= 2
    t.flood = 0


@pytest.mark.parametrize("report", [b"SystemExit:0:bye", b"KeyboardInterrupt:0:",
                                    b"ValueError:0:noexec", b"print:0:", b"OSError:2:elsewhere",
                                    b"OSError:0x2:noexec", b"OSError:fffff:noexec", b"OSError"])
@pytest.mark.parametrize("how", ["subprocess", "posix_spawn"])
def test_a_child_report_that_no_honest_child_writes_is_caught(liar, how, report):
    t, _libos = liar
    t.report = report
    with pytest.raises(IagoError, match="spawn child reported"):
        if how == "subprocess":
            subprocess.Popen([TRUE])
        else:
            os.posix_spawn(TRUE, [TRUE], os.environ)


@pytest.mark.parametrize("report", [b"SystemExit:0:bye", b"OSError:2:", b"x"])
def test_any_report_on_subprocesss_own_error_pipe_is_caught(liar, report):
    # The child reports on the enclave's pipe, so subprocess's own (the first pipe Popen
    # makes) always reads empty from an honest host; what a lying one answers there would
    # be parsed by subprocess, which raises the builtin it names.
    t, _libos = liar
    t.report, t.report_pipe = report, 0
    with pytest.raises(IagoError, match="subprocess's error pipe"):
        subprocess.Popen([TRUE])
    assert not t.report, "the lie was never told"


def _failure(**popen):
    try:
        subprocess.Popen(**popen).wait()
    except OSError as exc:
        return type(exc), exc.errno, exc.filename, str(exc)
    return "started"


FAILING = [dict(args=["/nonexistent/eleos-prog"]), dict(args=[b"/nonexistent/eleos-prog"]),
           dict(args=["eleos-no-such-prog"]), dict(args=["name"], executable="/nonexistent/x"),
           dict(args=["name"], executable="eleos-no-such-prog"),
           dict(args=[TRUE], cwd="/nonexistent/dir"), dict(args=[os.devnull]),
           dict(args="exit 0", shell=True, executable="/nonexistent/sh")]


@pytest.mark.parametrize("popen", FAILING, ids=range(len(FAILING)))
def test_an_honest_childs_failure_is_the_oserror_subprocess_raises_natively(popen):
    native = _failure(**popen)
    assert native != "started"
    with installed(make_transport("ocall")):
        routed = _failure(**popen)
    assert routed == native


# CPython's own tests of what a failed child raises (its cwd, its program, its errpipe's
# parsing with a fake fork_exec, fork_exec's fds_to_keep and id checks), run against the shim.
_SUBPROCESS_CASES = ["test_exception_cwd", "test_exception_bad_executable",
                     "test_exception_bad_args_0", "test_exception_errpipe_normal",
                     "test_exception_errpipe_bad_data", "test_fork_exec_sorted_fd_sanity_check",
                     "test_file_not_found_includes_filename",
                     "test_file_not_found_with_bad_cwd", "test_executable_without_cwd",
                     "test_user", "test_group", "test_extra_groups"]


def test_cpythons_tests_of_a_failed_child_pass_with_the_enclaves_error_pipe(tmp_path,
                                                                            monkeypatch):
    import unittest
    from test import test_subprocess
    monkeypatch.chdir(tmp_path)
    suite = unittest.TestSuite()
    for cls in (test_subprocess.ProcessTestCase, test_subprocess.POSIXProcessTestCase):
        names = unittest.defaultTestLoader.getTestCaseNames(cls)
        suite.addTests(cls(n) for n in _SUBPROCESS_CASES if n in names)
    result = unittest.TestResult()
    with installed(make_transport("ocall")):
        suite.run(result)
    problems = [(str(t), tb.splitlines()[-1]) for t, tb in result.failures + result.errors]
    assert problems == [] and result.testsRun == len(_SUBPROCESS_CASES)


def _direct_fork_exec_report(program: bytes):
    import _posixsubprocess
    r, w = os.pipe()
    try:
        pid = _posixsubprocess.fork_exec(
            [program], [program], True, (w,), None, None, -1, -1, -1, -1, -1, -1, r, w,
            True, False, -1, None, None, None, -1, None, False)
        os.close(w)
        w = -1
        # The child writes its report in pieces ("OSError:", the errno, ":"): read to EOF.
        report = b""
        while chunk := os.read(r, 100):
            report += chunk
        return report, os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def test_a_direct_fork_exec_caller_reads_the_failure_on_its_own_pipe_as_natively():
    # multiprocessing calls _posixsubprocess.fork_exec itself and never reads the report:
    # there a failed exec is no exception, and the report (checked) is the caller's.
    native = _direct_fork_exec_report(b"/nonexistent/eleos-prog")
    with installed(make_transport("ocall")):
        routed = _direct_fork_exec_report(b"/nonexistent/eleos-prog")
    assert routed == native == (b"OSError:2:", 255)


def test_subprocesss_guarded_builtins_answer_introspection(liar):
    import inspect
    guard = subprocess.builtins
    assert inspect.unwrap(guard) is guard and not hasattr(guard, "__wrapped__")
    assert not inspect.isclass(guard) and type(guard).__name__ == "_NoReportExpected"

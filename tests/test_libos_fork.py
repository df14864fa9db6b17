"""os.fork inside the enclave: the child is a new enclave with a private copy of the parent's
state (eleos_shim/fork.py, trusted/libos/proc.py).

Under sgx and eleos: the child sees the parent's heap (EPC maps larger than the EPC, so some
pages are evicted at the fork; SUVM maps larger than its cache, so some are in the sealed
store), the child's later writes are not the parent's nor the parent's the child's, both page,
the child's file, socket and pipe calls work (its own RPC workers, EPC driver threads), exit
statuses are as natively, a ForkingTCPServer serves real requests, and the stats file is the
parent's.  The host's answer to a fork is checked as a spawn's is.  Every child is reaped (the
scripts wait for theirs; the in-process tests reap what they fork).
"""
from __future__ import annotations

import errno
import json
import os
import posix
import signal
import socket
import subprocess
import sys
import tempfile
import threading

import pytest

from eleos_shim.errors import IagoError
from tests.conftest import ROOT, ShimRun, shim_env
from tests.libos_helpers import make_transport
from trusted.libos import LibOS

SCRIPTS = ROOT / "tests" / "scripts"


def run_shim(mode, script, *args, env=None, stats=True, timeout=60) -> ShimRun:
    """conftest's run_shim, in a session of its own: the forked children are in its process
    group, which is killed whatever happens; one still there once the app has exited (its
    scripts reap every child) fails the test."""
    env = shim_env(mode, **(env or {}))
    stats_path = None
    if stats:
        fd, stats_path = tempfile.mkstemp(suffix=".json", prefix="eleos-stats-")
        os.close(fd)
        os.unlink(stats_path)
        env["ELEOS_STATS"] = stats_path
    cmd = [sys.executable, "-m", "eleos_shim", str(script), *map(str, args)]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    stray = False
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
            stray = proc.returncode is not None
        except ProcessLookupError:
            pass
        proc.wait()
    assert not stray, f"a process of the run was left running: {err}"
    data = None
    if stats_path and os.path.exists(stats_path):
        with open(stats_path) as f:
            data = json.load(f)
        os.unlink(stats_path)
    return ShimRun(proc.returncode, out, err, data)


class _Listener:
    """A 127.0.0.1 server of the test's that answers one message per connection."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.got: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = conn.recv(100)
                self.got.append(data)
                conn.sendall(data[::-1])

    def close(self):
        self.sock.close()
        self.thread.join(5)


@pytest.fixture
def listener():
    lst = _Listener()
    yield lst
    lst.close()


# sgx: an EPC of 2 MB under a 6 MB map (evicted pages at the fork, paging in both), with
# each of the driver's traps (the userfaultfd threads' leader lock once hung the child);
# eleos: a 1 MB SUVM cache under it (pages in the sealed store at the fork).
HEAP_ENV = {"sgx": {"ELEOS_EPC_MB": "2"}, "eleos": {"ELEOS_SUVM_CACHE_MB": "1"},
            "sgx-userfaultfd": {"ELEOS_EPC_MB": "2", "ELEOS_EPC_TRAP": "userfaultfd"},
            "sgx-sigsegv": {"ELEOS_EPC_MB": "2", "ELEOS_EPC_TRAP": "sigsegv",
                            "ELEOS_EPC_RECLAIM": "background"}}


@pytest.mark.parametrize("config", list(HEAP_ENV))
def test_the_child_has_a_private_copy_of_the_heap_and_its_calls_work(config, tmp_path, listener):
    mode = config.split("-")[0]
    run = run_shim(mode, SCRIPTS / "libos_fork_heap.py", 6, tmp_path, listener.port,
                   env=HEAP_ENV[config], timeout=40)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[:7] == [
        "parent after child wrote bad=0 small=True",    # the child's writes are its own
        "child exit 5",
        "parent end bad=0",                             # the parent pages on after the fork
        "child saw bad=0 small=True",                   # the parent's data, every page
        "child after bad=0 small=True",                 # the parent's later writes not seen
        "child reply=b'olleh syas dlihc'",              # a socket of the child's
        lines[6],
    ], run.stdout
    threads = lines[6].split("=", 1)[1].split()
    # The child runs host threads of its own: RPC workers (eleos), the EPC driver's (sgx).
    assert ("eleos-rpc" if mode == "eleos" else "eleos-epc-swapd") in threads, lines[6]
    assert lines[7:] == ["child file lines=37"]
    assert listener.got == [b"child says hello"]
    st = run.stats
    # Paging happened before and after the fork, in the parent.
    if mode == "sgx":
        assert st["epc"]["ewb"] > 0 and st["epc"]["eldu"] > 0, st["epc"]
    else:
        assert st["suvm"]["writebacks"] > 0 and st["suvm"]["faults"] > 0, st["suvm"]
    # The stats are the parent's: one fork charged, none of the child's 37 file writes.
    assert st["events"]["fork"]["count"] == 1, st["events"]
    assert st["events"]["fork"]["budget_cycles"] == 20_000_000
    assert st["calls"].get("write", {}).get("count", 0) < 37, st["calls"].get("write")


def test_the_fork_budget_is_the_configured_constant():
    run = run_shim("sgx", SCRIPTS / "libos_fork_status.py", env={"ELEOS_FORK_CYCLES": "12345"})
    assert run.returncode == 0, run.stderr
    fork = run.stats["events"]["fork"]
    assert fork["count"] == 6 and fork["budget_cycles"] == 6 * 12345, fork


@pytest.mark.parametrize("mode", ["sgx", "eleos"])
def test_exit_statuses_are_as_natively(mode):
    native = run_shim("native", SCRIPTS / "libos_fork_status.py", stats=False)
    assert native.returncode == 0, native.stderr
    run = run_shim(mode, SCRIPTS / "libos_fork_status.py")
    assert run.returncode == 0, run.stderr
    assert run.stdout == native.stdout
    assert run.stdout.splitlines()[-3:] == ["sigterm True False 15", "sigkill True False 9",
                                            "stats written by a child: False"]
    assert "ValueError: child fails" in run.stderr
    assert run.stats["events"]["fork"]["count"] == 6      # the parent's stats, not a child's


@pytest.mark.parametrize("mode", ["sgx", "eleos"])
def test_a_forking_socketserver_serves_real_requests(mode):
    native = run_shim("native", SCRIPTS / "libos_fork_server.py", stats=False)
    run = run_shim(mode, SCRIPTS / "libos_fork_server.py")
    assert run.returncode == 0, run.stderr
    assert run.stdout == native.stdout
    assert run.stdout.splitlines()[0] == "REQUEST 0 from parent True"
    assert run.stats["events"]["fork"]["count"] == 4


def test_forkpty_and_fork_in_an_epc_domain_are_refused_with_their_reason(tmp_path):
    script = tmp_path / "refused.py"
    script.write_text(
        "import os\n"
        "for f in (os.forkpty, os.fork):\n"
        "    try:\n"
        "        f()\n"
        "    except OSError as e:\n"
        "        print(type(e).__name__, e.errno, 'cannot fork' in str(e),\n"
        "              'pseudo-terminal' in str(e), 'ELEOS_EPC_DOMAIN' in str(e))\n"
        "    else:\n"
        "        print('forked')\n")
    run = run_shim("sgx", script, env={"ELEOS_EPC_DOMAIN": f"fork-test-{os.getpid()}"})
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["EnclaveForkError 38 True True False",
                                       "EnclaveForkError 38 True False True"]


# -- the host lies about the fork ----------------------------------------------------------

class _HostFork:
    """A host fork that answers ``answer`` (called with the real child's pid, or None when it
    does not fork at all); the real children it makes exit at once and are reaped."""

    def __init__(self, answer, real=False, refusal=None):
        self.answer, self.real, self.refusal = answer, real, refusal
        self.children: list[int] = []

    def refused(self):
        return self.refusal

    def __call__(self):
        child = None
        if self.real:
            child = posix.fork()
            if child == 0:
                os._exit(0)
            self.children.append(child)
        return self.answer(child)

    def reap(self):
        for pid in self.children:
            os.waitpid(pid, 0)


@pytest.fixture
def forking_libos():
    made = []

    def make(host_fork):
        libos = LibOS(make_transport("ocall"), fork=host_fork)
        libos.install()
        made.append((libos, host_fork))
        return libos
    yield make
    for libos, host_fork in made:
        libos.uninstall()
        host_fork.reap()


@pytest.mark.parametrize("lie", [lambda c: os.getpid(), lambda c: os.getppid(), lambda c: -1,
                                 lambda c: 1 << 31, lambda c: 0, lambda c: str(c),
                                 lambda c: True],
                         ids=["own-pid", "parent-pid", "negative", "too-big",
                              "zero-in-the-parent", "not-an-int", "bool"])
@pytest.mark.parametrize("real", [False, True], ids=["no-child", "real-child"])
def test_a_host_lie_about_the_fork_is_an_iago_error(forking_libos, lie, real):
    host_fork = _HostFork(lie, real=real)
    forking_libos(host_fork)
    with pytest.raises(IagoError, match="fork"):
        os.fork()
    assert len(host_fork.children) == int(real)


def test_an_honest_host_forks_answer_passes(forking_libos):
    host_fork = _HostFork(lambda child: child, real=True)
    forking_libos(host_fork)
    pid = os.fork()
    assert pid == host_fork.children[0] and pid > 0


def test_a_refused_fork_is_an_enclave_fork_error_with_the_hosts_reason(forking_libos):
    from trusted.libos.proc import EnclaveForkError
    host_fork = _HostFork(lambda child: 1, refusal="a reason of the host's")
    forking_libos(host_fork)
    with pytest.raises(EnclaveForkError, match="cannot fork: a reason of the host's") as e:
        os.fork()
    assert e.value.errno == errno.ENOSYS


def test_the_suvm_child_seals_under_a_key_of_its_own():
    # The parent's and the child's stores are both the host's: sealed under one key, a page of
    # one could be put in the other's.  The child re-seals its copy of the store under its own.
    run = run_shim("eleos", SCRIPTS / "libos_fork_suvm_keys.py", "honest",
                   env={"ELEOS_SUVM_CACHE_MB": "1"})
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["child status 0", "keys differ True child read all True",
                                       "parent key kept True"]


def test_a_store_page_tampered_with_before_the_fork_stops_the_child_before_the_app_runs():
    run = run_shim("eleos", SCRIPTS / "libos_fork_suvm_keys.py", "tamper",
                   env={"ELEOS_SUVM_CACHE_MB": "1"})
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["child status 70", "parent key kept True"]
    assert "forked child enclave could not be built: IntegrityError" in run.stderr


def test_the_fd_tables_lock_is_held_across_the_hosts_fork(forking_libos):
    # Another enclave thread holding it at the fork would leave it held for ever in the child.
    held = []
    host_fork = _HostFork(lambda child: (held.append(libos.kernel._lock._is_owned()), child)[1],
                          real=True)
    libos = forking_libos(host_fork)
    assert os.fork() > 0
    assert held == [True] and not libos.kernel._lock._is_owned()


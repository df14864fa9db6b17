"""Unmodified scripts (tests/scripts/libos_*.py) print the same thing natively and inside the
enclave (sgx: OCALL exits; eleos: RPC), and the exits they cause are counted exactly."""
import signal
import subprocess
import sys

import pytest

from tests.conftest import ROOT, SCRIPTS, run_shim, shim_env

SCRIPT_NAMES = ["files", "tcp", "udp", "mux", "socketserver", "http", "threads", "edges",
                "asyncio"]


@pytest.fixture(scope="module")
def native_output():
    cache = {}

    def get(name):
        if name not in cache:
            run = run_shim("native", SCRIPTS / f"libos_{name}.py", stats=False)
            assert run.returncode == 0, run.stderr
            assert run.stdout.strip()
            cache[name] = run.stdout
        return cache[name]
    return get


@pytest.mark.parametrize("mode", ["sgx", "eleos"])
@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_script_output_is_identical_inside_the_enclave(native_output, name, mode):
    expected = native_output(name)
    run = run_shim(mode, SCRIPTS / f"libos_{name}.py")
    assert run.returncode == 0, run.stderr
    assert run.stdout == expected
    # and the script's calls really went through the enclave's transport
    calls = run.stats["calls"]
    assert sum(c["count"] for c in calls.values()) > 0
    if mode == "sgx":
        assert all(c["ocall"] == c["count"] for c in calls.values())
        assert run.stats["transitions"]["eexit"] >= sum(c["count"] for c in calls.values())


@pytest.mark.parametrize("workers", ["0", "4"])
@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_script_output_is_identical_with_0_and_4_rpc_workers(native_output, name, workers):
    """0 workers: every call falls back to an OCALL and still works; 4: many in flight."""
    expected = native_output(name)
    run = run_shim("eleos", SCRIPTS / f"libos_{name}.py", env={"ELEOS_RPC_WORKERS": workers})
    assert run.returncode == 0, run.stderr
    assert run.stdout == expected
    if workers == "0":
        assert all(c["rpc"] == 0 for c in run.stats["calls"].values())


def test_n_os_writes_are_n_write_ocalls():
    n = 137
    run = run_shim("sgx", SCRIPTS / "libos_writes.py", n)
    assert run.returncode == 0, run.stderr
    assert run.stdout == f"wrote {n}\n"
    write = run.stats["calls"]["write"]
    assert write["ocall"] == n + 1 and write["count"] == n + 1    # and stdout's one
    assert run.stats["calls"]["openat"]["ocall"] == 1
    assert run.stats["calls"]["close"]["ocall"] == 1
    assert run.stats["transitions"]["eexit"] >= n + 2


def test_n_os_writes_in_rpc_mode_are_n_write_calls_and_no_ocall():
    n = 64
    run = run_shim("eleos", SCRIPTS / "libos_writes.py", n)
    assert run.returncode == 0, run.stderr
    write = run.stats["calls"]["write"]
    assert write["count"] == n + 1                                 # and stdout's one
    assert write["ocall"] == 0
    assert write["rpc"] + write["fallback"] == n + 1


def test_native_mode_routes_nothing():
    run = run_shim("native", SCRIPTS / "libos_writes.py", 10)
    assert run.returncode == 0, run.stderr
    assert run.stats["transitions"]["eexit"] == 0


def test_forkpty_inside_the_enclave_fails_with_a_clear_error(tmp_path):
    # (os.fork makes a child enclave: tests/test_libos_fork.py)
    script = tmp_path / "forker.py"
    script.write_text(
        "import os, subprocess, sys\n"
        "for f in (os.forkpty,):\n"
        "    try:\n"
        "        f()\n"
        "    except OSError as e:\n"
        "        print(type(e).__name__, e.errno, 'cannot fork' in str(e))\n")
    run = run_shim("sgx", script)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["EnclaveForkError 38 True"]


@pytest.mark.parametrize("mode", ["sgx", "eleos"])
def test_subprocess_system_and_spawn_start_host_programs_through_a_counted_spawn_ocall(
        tmp_path, mode):
    script = tmp_path / "child.py"
    script.write_text(
        "import os, subprocess, sys\n"
        "r = subprocess.run([sys.executable, '-c', 'import sys; print(sys.stdin.read()[::-1])'],\n"
        "                   input=b'olleh', capture_output=True, check=True)\n"
        "print(r.stdout.decode().strip())\n"
        "try:\n"
        "    subprocess.run(['/nonexistent/eleos-prog'])\n"
        "except FileNotFoundError as e:\n"
        "    print('missing', e.filename)\n"
        "print(os.system('exit 3') >> 8)\n"
        "print(os.spawnv(os.P_WAIT, sys.executable, ['py', '-c', 'raise SystemExit(5)']),\n"
        "      os.spawnvp(os.P_WAIT, 'eleos-no-such-prog', ['x']))\n"
        "r, w = os.pipe()\n"
        "pid = os.posix_spawnp('sh', ['sh', '-c', 'echo spawned'], os.environ,\n"
        "                      file_actions=[(os.POSIX_SPAWN_DUP2, w, 1)])\n"
        "os.close(w)\n"
        "print(os.read(r, 100).decode().strip(), os.waitpid(pid, 0)[1])\n")
    run = run_shim(mode, script)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["hello", "missing /nonexistent/eleos-prog", "3", "5 127",
                                       "spawned 0"]
    assert run.stats["calls"]["spawn"]["count"] == 6
    assert run.stats["calls"]["spawn"]["ocall"] == 6


@pytest.mark.parametrize("mode", ["sgx", "eleos"])
@pytest.mark.parametrize("how", ["accept", "select"])
def test_ctrl_c_interrupts_a_call_blocked_in_the_host(mode, how):
    proc = subprocess.Popen([sys.executable, "-m", "eleos_shim", str(SCRIPTS /
                                                                     "libos_block_accept.py"),
                             how], env=shim_env(mode), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proc.stdout.readline() == "blocking\n"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 3, err
    assert out == "interrupted\n"

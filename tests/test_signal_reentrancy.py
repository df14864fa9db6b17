"""A Python signal handler runs on the main thread at a bytecode boundary, possibly between a
routed call's crossing and the reading of its reply; its own routed calls must not reuse the
staging area of the call it interrupted (issue 13).  Under plain Python these scripts print
the right bytes; under the shim, before each call took a staging area of its own, the pipe
example raised IagoError and about 1-2% of the preads returned the handler's bytes."""
import pytest

from tests.conftest import SCRIPTS, run_shim

SCRIPT = SCRIPTS / "signal_reentrancy.py"
# Every path: OCALLs (sgx), the RPC ring (eleos), direct calls; each with the C data path.
PATHS = {"sgx": ("sgx", {}), "eleos": ("eleos", {}),
         "direct": ("sgx", {"ELEOS_SYSCALLS": "direct"})}


@pytest.mark.parametrize("path", ["sgx", "eleos"])
def test_a_handler_that_writes_the_pipe_being_read_gives_the_read_its_bytes(path):
    mode, env = PATHS[path]
    run = run_shim(mode, SCRIPT, "pipe", env=env, stats=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout == "b'bar'\n"


@pytest.mark.parametrize("path", sorted(PATHS))
def test_preads_interrupted_by_a_writing_handler_every_200us_all_return_the_file(path):
    mode, env = PATHS[path]
    count = 20000
    run = run_shim(mode, SCRIPT, "stress", count, env=env, stats=False)
    assert run.returncode == 0, run.stderr         # no IagoError
    assert run.stdout == f"wrong 0 of {count} (handler ran: True)\n"


@pytest.mark.parametrize("path", ["sgx", "eleos"])
def test_a_handler_that_opens_and_closes_files_while_the_main_thread_does_never_deadlocks(path):
    mode, env = PATHS[path]
    run = run_shim(mode, SCRIPT, "fds", 5000, env=env, stats=False, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout == "opened and closed 5000\n"

"""ELEOS_RPC_CPUS: the RPC workers run on their own CPUs, the app's threads on the others."""
import os

import pytest

from tests.conftest import SCRIPTS, run_shim

pytestmark = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2 or 1 not in os.sched_getaffinity(0),
                                reason="needs CPUs 0 and 1")


def test_workers_get_the_rpc_cpus_and_the_app_keeps_the_rest():
    r = run_shim("eleos", SCRIPTS / "show_affinity.py", env={"ELEOS_RPC_CPUS": "1"}, stats=False)
    assert r.returncode == 0, r.stderr
    lines = dict(line.split(" ", 1) for line in r.stdout.splitlines())
    assert 1 not in eval(lines["app"])
    assert (1,) in eval(lines["threads"])


def test_without_rpc_there_is_nothing_to_pin():
    r = run_shim("sgx", SCRIPTS / "show_affinity.py", env={"ELEOS_RPC_CPUS": "1"}, stats=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == f"app {sorted(os.sched_getaffinity(0))}"


def test_by_default_one_worker_gets_the_last_cpu():
    r = run_shim("eleos", SCRIPTS / "show_affinity.py", stats=False)
    assert r.returncode == 0, r.stderr
    lines = dict(line.split(" ", 1) for line in r.stdout.splitlines())
    last = max(os.sched_getaffinity(0))
    assert last not in eval(lines["app"])
    assert (last,) in eval(lines["threads"])


def test_none_leaves_every_thread_on_every_cpu():
    r = run_shim("eleos", SCRIPTS / "show_affinity.py", env={"ELEOS_RPC_CPUS": "none"}, stats=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == f"app {sorted(os.sched_getaffinity(0))}"

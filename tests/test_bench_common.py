"""The benchmarks' shared setting for the load generator: SCHED_BATCH by default, so that a
client on the server's core does not preempt the server at every reply (benchmarks/common.py),
and the per-thread count of involuntary context switches the KV benchmark reports."""
import os
import subprocess
import sys

from benchmarks.common import client_preexec
from benchmarks.kvstore import most_preempted, preemptions

PRINT_POLICY = "import os; print(os.sched_getscheduler(0))"


def test_client_runs_sched_batch_by_default():
    out = subprocess.run([sys.executable, "-c", PRINT_POLICY], capture_output=True, text=True,
                         preexec_fn=client_preexec(), check=True).stdout
    assert int(out) == os.SCHED_BATCH


def test_client_preempts_leaves_the_policy_alone():
    assert client_preexec(False) is None
    out = subprocess.run([sys.executable, "-c", PRINT_POLICY], capture_output=True, text=True,
                         check=True).stdout
    assert int(out) == os.sched_getscheduler(0)


SPIN = ("import os, sys, time\nos.sched_setaffinity(0, {int(sys.argv[2])})\n"
        "t = time.process_time()\nwhile time.process_time() - t < float(sys.argv[1]): pass\nprint('spun', flush=True)\n"
        "sys.stdin.read()")


def test_preemptions_sees_a_process_that_shares_its_core():
    # Two CPU-bound processes on one CPU: the scheduler must deschedule each while it is
    # runnable, which is what the KV benchmark's preempted/op column counts for the server.
    cpu = str(max(os.sched_getaffinity(0)))
    hog = subprocess.Popen([sys.executable, "-c", SPIN, "1e9", cpu], stdin=subprocess.PIPE,
                           stdout=subprocess.DEVNULL)
    victim = subprocess.Popen([sys.executable, "-c", SPIN, "0.2", cpu], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert victim.stdout.readline().strip() == "spun"
        counts = preemptions(victim.pid)
        assert list(counts) == [victim.pid] and counts[victim.pid] > 0
    finally:
        for p in (victim, hog):
            p.kill()
            p.wait()
            p.stdin.close()
        victim.stdout.close()
    assert preemptions(2 ** 22 + 12345) == {}      # no such process: nothing to count


def test_most_preempted_is_the_busiest_threads_increase():
    # a helper thread that ended (7) or started (9) between the readings does not skew it
    assert most_preempted({1: 10, 7: 500}, {1: 40, 9: 3}) == 30
    assert most_preempted({}, {}) == 0

"""The app benchmarks' server capacity: operations over the CPU time of the server's app
threads alone, the shim's host threads (named eleos-*) left out (benchmarks/common.py), and
the same-run ratios the KV and face tables print from it (benchmarks/kvstore.py,
benchmarks/faceverify.py)."""
import os
import threading
from pathlib import Path

import pytest

from benchmarks import common, faceverify, kvstore
from benchmarks.common import ThreadCPU
from tests.conftest_kv import kvserver

TICK = os.sysconf("SC_CLK_TCK")


def stat_line(tid: int, name: str, utime: int, stime: int) -> str:
    # /proc/<pid>/task/<tid>/stat as the kernel writes it: utime and stime are fields 14, 15
    return (f"{tid} ({name}) S 1 {tid} {tid} 0 -1 4194304 1000 0 0 0 {utime} {stime} 0 0 20 0 "
            "2 0 100 200000000 5000 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0")


def test_task_stat_name_may_hold_spaces_and_parentheses():
    t = common.parse_task_stat(stat_line(7, "eleos (x) y", 3 * TICK, TICK // 2))
    assert t == ThreadCPU("eleos (x) y", 3.0, 0.5) and t.cpu_s == 3.5


def test_thread_cpu_reads_this_process_threads_by_id():
    stop = threading.Event()
    worker = threading.Thread(target=stop.wait)
    worker.start()
    try:
        threads = common.thread_cpu(os.getpid())
        assert {threading.get_native_id(), worker.native_id} <= set(threads)
        me = Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip()
        assert threads[threading.get_native_id()].name == me
    finally:
        stop.set()
        worker.join()
    assert common.thread_cpu(2 ** 22 + 12345) == {}      # no such process: no threads


def test_delta_counts_a_thread_born_in_between_from_zero_and_drops_one_that_ended():
    before = {1: ThreadCPU("python", 1.0, 0.5), 2: ThreadCPU("eleos-rpc", 4.0, 0.0),
              3: ThreadCPU("python", 9.0, 0.0)}
    after = {1: ThreadCPU("python", 3.0, 1.0), 2: ThreadCPU("eleos-rpc", 6.0, 0.0),
             4: ThreadCPU("python", 0.25, 0.0),
             # an id reused by a new thread: its count went down, so it counts from zero
             5: ThreadCPU("python", 0.5, 0.0)}
    before[5] = ThreadCPU("python", 7.0, 0.0)
    delta = common.thread_cpu_delta(before, after)
    assert delta == {1: ThreadCPU("python", 2.0, 0.5), 2: ThreadCPU("eleos-rpc", 2.0, 0.0),
                     4: ThreadCPU("python", 0.25, 0.0), 5: ThreadCPU("python", 0.5, 0.0)}


def test_schedstat_gives_the_run_queue_wait_and_the_delta_keeps_it():
    assert common.parse_schedstat("123456789 2500000000 77\n") == 2.5
    before = {1: ThreadCPU("eleos-rpc", 1.0, 0.0, 4.0), 2: ThreadCPU("eleos-rpc", 1.0, 0.0, 1.0)}
    after = {1: ThreadCPU("eleos-rpc", 2.0, 0.0, 6.0), 2: ThreadCPU("eleos-rpc", 3.0, 0.0, 1.0),
             3: ThreadCPU("python", 1.0, 0.0, 0.5)}
    delta = common.thread_cpu_delta(before, after)
    assert [delta[t].waited_s for t in (1, 2, 3)] == [2.0, 0.0, 0.5]
    assert common.waited_by_name(delta) == {"eleos-rpc": 2.0, "python": 0.5}
    # each worker, on average, waited 1 s of a 4 s window; no workers: nothing to say
    assert common.rpc_worker_waited(delta, 4.0) == 0.25
    assert common.rpc_worker_waited({3: delta[3]}, 4.0) is None


def test_app_threads_are_every_thread_but_the_shims_host_threads():
    delta = {1: ThreadCPU("python", 2.0, 0.5), 2: ThreadCPU("eleos-rpc", 3.0, 0.0),
             3: ThreadCPU("eleos-rpc", 1.0, 0.0), 4: ThreadCPU("eleos-epc-swapd", 0.5, 0.25),
             5: ThreadCPU("mc-worker", 1.0, 0.0), 6: ThreadCPU("mc-lrumaint", 0.125, 0.0)}
    assert common.selected_cpu_s(delta) == 2.5 + 1.0 + 0.125
    assert common.selected_cpu_s(delta, lambda n: n == "eleos-rpc") == 4.0
    assert common.cpu_by_name(delta) == {"python": 2.5, "eleos-rpc": 4.0, "eleos-epc-swapd": 0.75,
                                         "mc-worker": 1.0, "mc-lrumaint": 0.125}


def test_capacity_is_operations_over_the_app_threads_cpu():
    assert common.capacity(30_000, 0.75) == 40_000
    assert common.capacity(10, 0.0) is None        # no measurable CPU: no capacity, not inf


@pytest.mark.parametrize("mode, host", [("eleos", {"eleos-rpc"}), ("sgx", {"eleos-epc-swapd"})])
def test_a_shim_servers_host_threads_carry_their_names_and_the_app_thread_is_the_rest(mode, host):
    # The names come from pthread_setname_np in untrusted/_native/ (rpc_workers.c,
    # epc_driver.c): without them the capacity would count the RPC worker as the app's.
    with kvserver(mode, "-m", "4") as srv:
        threads = common.thread_cpu(srv.proc.pid)
    names = {t.name for t in threads.values()}
    assert host <= names
    app = [tid for tid, t in threads.items() if common.is_app_thread(t.name)]
    assert app == [srv.proc.pid]                    # the server is single-threaded: its main


def test_the_hosts_python_threads_carry_an_os_name_of_the_shims():
    # Python 3.11 names a thread only for itself: without prctl the kernel calls it "python"
    # and the capacity would count the balloon agent, its manager or the domain's sampler.
    from untrusted.threads import host_thread
    seen, read, go = {}, threading.Event(), threading.Event()

    def body():
        seen["comm"] = Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip()
        read.set()
        go.wait(10)                                   # alive until the test has looked
    t = host_thread(body, "eleos-balloon-agent")
    t.start()
    try:
        assert read.wait(10)
    finally:
        go.set()
        t.join(10)
    assert seen["comm"] == "eleos-balloon-a"          # the kernel keeps 15 bytes
    assert not common.is_app_thread(seen["comm"])


def test_every_python_thread_the_host_starts_goes_through_host_thread():
    root = Path(__file__).resolve().parents[1] / "untrusted"
    starts = [p.name for p in root.glob("*.py")
              if "threading.Thread(" in p.read_text() and p.name != "threads.py"]
    assert starts == []


# -- the tables' arithmetic ---------------------------------------------------------------
def kv_row(run: int, config: str, ops: float, cap: float | None, db: str = "fits") -> dict:
    return {"run": run, "db": db, "config": config, "tool": "memcaslap", "ops_per_s": ops,
            "capacity_ops_per_s": cap, "exits_per_op": 0.0, "preemptions_per_op": 0.0,
            "epc_faults_per_op": 0.0, "suvm_faults_per_op": 0.0, "evictions": 0,
            "cpu_us_per_op": 1.0, "user_us_per_op": 0.5, "app_cpu_us_per_op": 1.0, "client_cpu_us_per_op": 1.0,
            "app_busy": 0.5, "modeled_exit_share": 0.0, "rpc_processed": 0, "rpc_fallbacks": 0,
            "rpc_worker_waited": None}


def test_kv_capacity_ratio_is_against_sgx_at_the_same_scale_within_each_run():
    runs = [kv_row(0, "sgx", 100, 200), kv_row(0, "eleos", 150, 500),
            kv_row(0, "sgx@2", 50, 100), kv_row(0, "eleos@2", 100, 230),
            kv_row(1, "sgx", 80, 100), kv_row(1, "eleos", 100, 300),
            kv_row(1, "sgx@2", 40, 200), kv_row(1, "eleos@2", 80, 420),
            kv_row(2, "sgx", 90, 400), kv_row(2, "eleos", 99, 800),
            kv_row(2, "sgx@2", 45, 100), kv_row(2, "eleos@2", 90, 220)]
    eleos = kvstore.summarise(runs, "fits", 8, "eleos")
    assert eleos["capacity_vs_sgx"] == 2.5           # median of 2.5, 3.0, 2.0
    assert eleos["vs_sgx"] == 1.25                   # median of 1.5, 1.25, 1.1
    assert eleos["capacity_ops_per_s"] == 500 and eleos["capacity_range"] == "300-800"
    scaled = kvstore.summarise(runs, "fits", 8, "eleos@2")
    assert scaled["capacity_vs_sgx"] == 2.2          # median of 2.3, 2.1, 2.2: vs sgx@2
    assert scaled["vs_sgx"] == 2.0
    assert kvstore.ratio(runs, "fits", "eleos@2", "sgx", "capacity_ops_per_s") == 1.15


def test_kv_breakdown_splits_a_request_into_the_libos_and_the_exits_or_the_rpc():
    def row(config, app_us):
        r = kv_row(0, config, 100, 100)
        r["app_cpu_us_per_op"] = app_us
        return r
    runs = [row("native", 12.0), row("no-exits", 15.0), row("sgx", 26.0), row("eleos", 16.0),
            row("no-exits@2", 15.5), row("sgx@2", 34.0), row("eleos@2", 16.5)]
    summary = [kvstore.summarise(runs, "fits", 8, c) for c in
               ("native", "no-exits", "sgx", "eleos", "no-exits@2", "sgx@2", "eleos@2")]
    one, two = kvstore.breakdown(summary, "fits", 2)
    assert (one["scale"], one["native"], one["libos"]) == (1.0, 12.0, 3.0)
    assert (one["sgx_over_no_exits"], one["eleos_over_no_exits"]) == (11.0, 1.0)
    assert (two["scale"], two["libos"], two["sgx_over_no_exits"]) == (2, 3.5, 18.5)
    assert two["eleos_over_no_exits"] == 1.0
    assert "LibOS routing +3.0" in kvstore._breakdown_text("fits", [one, two])
    assert one["eleos_blocked_waits"] == 0.0
    assert "exited" not in kvstore._breakdown_text("fits", [one, two])
    # without the no-exits runs there is nothing to split
    assert kvstore.breakdown([s for s in summary if "no-exits" not in s["config"]], "fits", 2) == []


def test_kv_waits_that_exit_are_the_rpc_modes_ocalls_share_of_the_exit_and_window_cycles():
    # 2 waits and 2 fallbacks (both OCALLs), 4 AEXs; 1,000 MHz: cycles / 1000 = us
    shim = {"syscalls": "rpc", "tsc_mhz": 1000.0, "transitions": {"aex": 4},
            "calls": {"epoll_wait": {"ocall": 2, "fallback": 0}, "recvfrom": {"ocall": 0, "fallback": 2}},
            "events": {"ocall": {"paid_cycles": 40_000}, "indirect": {"paid_cycles": 80_000}}}
    # ocall: 40,000 x 2/4 = 20,000; indirect: 80,000 x 2/8 = 20,000; 40 us over 10 ops
    assert kvstore.blocked_wait_us(shim, 10) == pytest.approx(4.0)
    assert kvstore.blocked_wait_us({**shim, "syscalls": "ocall"}, 10) == 0.0
    assert kvstore.blocked_wait_us({**shim, "calls": {}}, 10) == 0.0

    def row(config, app_us, waits):
        r = kv_row(0, config, 100, 100)
        r["app_cpu_us_per_op"], r["blocked_wait_us_per_op"] = app_us, waits
        return r
    runs = [row("native", 10.0, 0), row("no-exits", 12.0, 0), row("sgx", 25.0, 0),
            row("eleos", 13.0, 0.5)]
    summary = [kvstore.summarise(runs, "fits", 8, c) for c in ("native", "no-exits", "sgx", "eleos")]
    (one,) = kvstore.breakdown(summary, "fits", None)
    assert one["eleos_blocked_waits"] == 0.5
    text = kvstore._breakdown_text("fits", [one])
    assert "of it waits that exited (ELEOS_RPC_WAIT=ocall) +0.5" in text


def test_a_run_without_a_capacity_is_left_out_of_the_ratio():
    runs = [kv_row(0, "sgx", 100, 200), kv_row(0, "eleos", 150, None),
            kv_row(1, "sgx", 100, 0.0), kv_row(1, "eleos", 150, 300),
            kv_row(2, "sgx", 100, 100), kv_row(2, "eleos", 150, 300)]
    assert kvstore.ratio(runs, "fits", "eleos", "sgx", "capacity_ops_per_s") == 3.0
    assert kvstore.ratio(runs, "big", "eleos", "sgx", "capacity_ops_per_s") is None


def face_row(run: int, mode: str, verif: float, cap: float, mb: float = 80) -> dict:
    return {"run": run, "db_mb": mb, "mode": mode, "verifications_per_s": verif,
            "capacity_per_s": cap, "latency_us": {"p50": 1.0, "p99": 2.0},
            "server_cpu_us_per_request": 3.0, "app_cpu_us_per_request": 2.0,
            "client_cpu_us_per_request": 1.0, "exits_per_request": 0.0,
            "epc_faults_per_request": 0.0, "suvm_faults_per_request": 0.0,
            "rpc_fallbacks": 1, "rpc_processed": 3, "rpc_worker_waited": 0.25,
            "accuracy": {"tpr": 1.0, "fpr": 0.0}}


def test_face_capacity_ratio_is_against_sgx_at_the_same_scale_within_each_run():
    runs = [face_row(0, "sgx@2", 100, 100), face_row(0, "eleos@2", 150, 240),
            face_row(0, "sgx", 100, 1000),
            face_row(1, "sgx@2", 100, 200), face_row(1, "eleos@2", 160, 520),
            face_row(1, "sgx", 100, 1000),
            face_row(0, "sgx@2", 1, 1, mb=8), face_row(0, "eleos@2", 9, 9, mb=8)]
    s = faceverify.summarise(runs, "5x EPC", 80, "eleos@2")
    assert s["capacity_over_sgx"] == pytest.approx(2.5)      # median of 2.4 and 2.6
    assert s["speedup_over_sgx"] == pytest.approx(1.55)      # median of 1.5 and 1.6
    assert s["capacity_per_s"] == 380 and s["capacity_range"] == "240-520"
    assert s["rpc_fallback_share"] == 0.25 and s["rpc_worker_waited"] == 0.25


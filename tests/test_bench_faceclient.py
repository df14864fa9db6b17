"""The face benchmark's client is SCHED_BATCH, as the KV benchmark's (benchmarks/common.py,
client_preexec): its load comes from threads of the benchmark's own process, so each client
thread makes itself SCHED_BATCH and the main thread, which starts the servers, keeps its
policy (so the servers do too); --client-preempts leaves them all alone.  Driven against a
real small server for half a second."""
import json
import os
import threading

import pytest

from apps.faceverify import load
from benchmarks import faceverify
from benchmarks.common import client_line
from tests.faceverify_helpers import faceverify_server


@pytest.fixture(scope="module")
def server():
    with faceverify_server("--identities", "300") as srv:
        yield srv
        assert srv.stop() == 0


@pytest.mark.parametrize("flags,policy", [([], os.SCHED_BATCH),
                                          (["--client-preempts"], os.sched_getscheduler(0))],
                         ids=["default", "client-preempts"])
def test_the_face_clients_threads_run_sched_batch_unless_told_otherwise(server, monkeypatch,
                                                                        flags, policy):
    args = faceverify.parser().parse_args(flags + ["--threads", "3", "--duration", "0.3",
                                                   "--warmup", "0.1"])
    seen = []
    client = load._client

    def observed(*a):
        client(*a)     # the policy is read after the run, from the thread that ran it
        seen.append(os.sched_getscheduler(0))
    monkeypatch.setattr(load, "_client", observed)
    main_policy = os.sched_getscheduler(0)
    pool = load.build_pool(300, 300, 0.5, client_id=1, seed=1)
    summary = faceverify.drive(server.address, 300, pool, args)
    assert summary["errors"] == 0 and summary["verifications"] > 0
    assert seen == [policy] * 3
    assert os.sched_getscheduler(0) == main_policy         # the thread that starts servers
    assert threading.current_thread() is threading.main_thread()


@pytest.mark.parametrize("flags,batch", [([], True), (["--client-preempts"], False)])
def test_the_face_benchmark_prints_and_records_how_its_client_runs(tmp_path, monkeypatch,
                                                                   capsys, flags, batch):
    # main() itself, with the runs and the pools stubbed (no server, no database).
    from tests.test_bench_capacity import face_row
    monkeypatch.setattr(faceverify.load, "build_pool", lambda *a, **k: [])
    monkeypatch.setattr(faceverify, "one_run",
                        lambda mode, mb, *a: {**face_row(0, mode, 100, 100, mb), "served": 1})
    monkeypatch.setattr(faceverify, "plot_bars", lambda *a, **k: None)
    out = tmp_path / "face.json"
    affinity = os.sched_getaffinity(0)
    # --no-pin: pinning would put this test process (and every later test) on CPU 0
    assert faceverify.main(["--runs", "1", "--modes", "sgx", "--time-scale", "1", "--no-pin",
                            "--json", str(out), *flags]) == 0
    assert os.sched_getaffinity(0) == affinity
    line = client_line(batch)
    assert line in capsys.readouterr().out.splitlines()
    data = json.loads(out.read_text())
    assert data["machine"]["client"] == line and data["config"]["client_batch"] is batch

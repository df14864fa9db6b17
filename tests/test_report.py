"""The readable report (ELEOS_STATS=-) and ELEOS_PROFILE's exit sites (eleos_shim/report.py,
eleos_shim/profile.py): what a researcher reads to see where the enclave's time went."""
from __future__ import annotations

import re
import sys
import textwrap

from eleos_shim.report import report
from tests.conftest import run_shim

# 300 one-byte writes from line 6 through the stdlib (shutil.copyfileobj), so an exit site
# must skip the stdlib's frames to reach the app's line; 200 more from line 8.
WRITER = textwrap.dedent("""\
    import io, os, shutil
    fd = os.open(os.devnull, os.O_WRONLY)
    out = os.fdopen(fd, "wb", buffering=0)
    def copy(n):
        for _ in range(n):
            shutil.copyfileobj(io.BytesIO(b"x"), out)
    copy(300)
    for _ in range(200): os.write(fd, b"y")
    print("done")
""")

# Touches 1 MiB twice through the heap: with a 0.25 MB EPC every page faults, on lines 4 and 6.
TOUCHER = textwrap.dedent("""\
    import mmap
    m = mmap.mmap(-1, 1 << 20)
    for i in range(0, len(m), 4096):
        m[i] = 1
    for i in range(0, len(m), 4096):
        assert m[i] == 1
    print("ok")
""")


def _script(tmp_path, text, name="app.py"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_report_says_where_the_time_went_under_sgx(tmp_path):
    r = run_shim("sgx", _script(tmp_path, WRITER), env={"ELEOS_STATS": "-"}, stats=False)
    assert r.returncode == 0, r.stderr
    summary = next(ln for ln in r.stderr.splitlines() if ln.startswith("where the time went"))
    assert re.search(r"wall [0-9.]+ s; modeled events [0-9.]+ (ms|us|s) \([0-9.]+% of wall\)",
                     summary), summary
    exits = int(re.search(r"([0-9,]+) exits remain", summary).group(1).replace(",", ""))
    assert exits >= 500
    assert f"under rpc these {exits:,} call exits would cost ~0" in summary
    row = next(ln for ln in r.stderr.splitlines() if ln.strip().startswith("write "))
    cells = row.split()
    assert int(cells[1].replace(",", "")) >= 500 and cells[3] == cells[1]   # all of them ocalls
    assert re.fullmatch(r"[0-9.]+us", cells[6]), row                        # mean latency
    assert "unrouted I/O:" in r.stderr and "stdout/stderr" in r.stderr


def test_report_under_rpc_says_what_sgx_would_charge(tmp_path):
    r = run_shim("eleos", _script(tmp_path, WRITER), env={"ELEOS_STATS": "-"}, stats=False)
    assert r.returncode == 0, r.stderr
    m = re.search(r"under sgx \(ocall\) these ([0-9,]+) calls would cost ([0-9.]+) (ms|us|s)",
                  r.stderr)
    assert m, r.stderr
    assert int(m.group(1).replace(",", "")) >= 500


def test_stats_json_has_mean_latency_and_model_budgets(tmp_path):
    r = run_shim("sgx", _script(tmp_path, WRITER))
    assert r.returncode == 0, r.stderr
    write = r.stats["calls"]["write"]
    assert write["mean_us"] > 0
    from eleos_shim.config import Config
    from eleos_shim.profile import model_budgets
    assert r.stats["model"] == model_budgets(Config()) and r.stats["model"]["ocall_cycles"] > 0
    assert r.stats["unrouted"]["write_syscalls"] is not None
    assert "profile" not in r.stats          # only with ELEOS_PROFILE=1


def test_profile_charges_exits_to_the_apps_line_not_the_stdlibs(tmp_path):
    app = _script(tmp_path, WRITER)
    r = run_shim("sgx", app, env={"ELEOS_PROFILE": "1"})
    assert r.returncode == 0, r.stderr
    sites = {s["site"]: s for s in r.stats["profile"]["sites"]}
    line6 = next(s for k, s in sites.items() if k.endswith("app.py:6 (copy)"))
    line8 = next(s for k, s in sites.items() if k.endswith("app.py:8 (<module>)"))
    assert line6["ocall"] >= 300 and line8["ocall"] == 200
    assert not any("shutil" in k or "eleos_shim" in k for k in sites)
    from eleos_shim.report import event_cycles
    assert line8["modeled_cycles"] == 200 * event_cycles(r.stats)["ocall"]


def test_profile_charges_epc_faults_to_the_lines_that_touched_the_heap(tmp_path):
    r = run_shim("sgx", _script(tmp_path, TOUCHER), env={"ELEOS_PROFILE": "1", "ELEOS_EPC_MB": "0.25"})
    assert r.returncode == 0, r.stderr
    sites = r.stats["profile"]["sites"]
    faults = {s["site"].rsplit(":", 1)[1]: s["epc_fault"] for s in sites if s["epc_fault"]}
    assert faults.get("4 (<module>)", 0) >= 256 - 64 and faults.get("6 (<module>)", 0) >= 256 - 64
    assert sum(s["epc_fault"] for s in sites) == r.stats["epc"]["faults"]


def test_report_lists_the_top_exit_sites(tmp_path):
    r = run_shim("sgx", _script(tmp_path, WRITER), env={"ELEOS_PROFILE": "1", "ELEOS_STATS": "-"},
                 stats=False)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    i = next(i for i, ln in enumerate(lines) if ln.startswith("exit sites (ELEOS_PROFILE=1)"))
    assert lines[i + 2].split()[-2].endswith("app.py:6")      # most exits first


def test_without_profile_the_transport_is_not_wrapped():
    from eleos_shim import config
    from eleos_shim.enclave import Enclave
    from trusted.syscall import Transport
    cfg = config.resolve({"ELEOS_MODE": "sgx", "ELEOS_COST": "account", "ELEOS_EPC_MB": "1",
                          "ELEOS_STATS": "-"})
    with Enclave(cfg) as enclave:
        assert enclave.transport.call.__func__ is Transport.call
        assert enclave.transport.data_out.__func__ is Transport.data_out
        assert enclave.libos.kernel.call.__func__ is Transport.call
        assert sys.gettrace() is None


def _stats(**over) -> dict:
    base = {"mode": "sgx", "syscalls": "ocall", "memory": "epc", "cost": "spin", "wall_s": 2.0,
            "tsc_mhz": 1000.0,
            "transitions": {"eenter": 10, "eexit": 10, "aex": 0, "eresume": 0,
                            "modeled_cycles": 71000, "modeled_s": 71e-6},
            "calls": {"write": {"count": 10, "direct": 0, "ocall": 10, "rpc": 0, "fallback": 0}},
            "rpc": {"processed": 0, "fallbacks": 0, "worker_cpu_s": 0.0},
            "epc": {"faults": 0}, "suvm": {}, "exits": {"total": 10, "why": {"ocalls": 10}}}
    base.update(over)
    return base


def test_report_degrades_without_the_cost_models_event_keys():
    text = report(_stats())
    assert "transitions: eenter=10" in text and "budget" not in text
    assert "mean" not in text.splitlines()[2]          # no latency column without mean_us


def test_report_shows_each_modeled_event_with_its_parts():
    events = {"ocall": {"count": 10, "budget_cycles": 71000, "paid_cycles": 71000,
                        "real_cycles": 1000, "spun_cycles": 70000, "overruns": 0},
              "indirect": {"count": 10, "budget_cycles": 140000, "paid_cycles": 150000,
                           "real_cycles": 150000, "spun_cycles": 0, "overruns": 3},
              "epc_fault": {"count": 0}}
    text = report(_stats(events=events, modeled_s=0.211, modeled_share=0.25))
    assert "modeled events 211.0 ms (25.0% of wall)" in text
    rows = {ln.split()[0]: ln.split() for ln in text.splitlines() if ln.startswith("  ")}
    assert rows["indirect"][1] == "10" and rows["indirect"][-3] == "3"      # overruns
    assert "epc_fault" not in rows                                           # none happened
    # per call: 10 exits x (7,100 + 14,000 indirect) cycles at 1 GHz = 211 us
    assert rows["write"][6:8] == ["211", "us"]


def test_profile_without_stats_prints_the_report(tmp_path):
    r = run_shim("sgx", _script(tmp_path, WRITER), env={"ELEOS_PROFILE": "1"}, stats=False)
    assert r.returncode == 0, r.stderr
    assert "where the time went" in r.stderr and "exit sites (ELEOS_PROFILE=1)" in r.stderr


THREADED = textwrap.dedent("""\
    import os, threading
    fd = os.open(os.devnull, os.O_WRONLY)
    def a():
        for _ in range(400): os.write(fd, b"a")
    def b():
        for _ in range(300): os.write(fd, b"b")
    ts = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in ts: t.start()
    for t in ts: t.join()
""")


def test_profile_counts_every_exit_of_two_threads_on_their_own_lines(tmp_path):
    r = run_shim("sgx", _script(tmp_path, THREADED), env={"ELEOS_PROFILE": "1"})
    assert r.returncode == 0, r.stderr
    sites = {s["site"].split("app.py:")[-1]: s["ocall"] for s in r.stats["profile"]["sites"]}
    assert sites["4 (a)"] == 400 and sites["6 (b)"] == 300
    assert sum(sites.values()) == sum(c["ocall"] for c in r.stats["calls"].values())

"""Real load against the KV store: Debian's memcaslap (the paper's memaslap) under eleos, and
our kvload (its stand-in where memcaslap is missing) natively.

memcaslap runs for a few seconds with data verification on and must report zero errors; it
is skipped loudly when not installed, and fails then under CI=true (it must run there).
memaslap's keys start with an 8-byte binary counter, so the server runs with
--allow-control-keys (memcached accepts such keys; the strict default refuses them).
"""
from __future__ import annotations

import json
import re
import subprocess
import sys

from pymemcache.client.base import Client

from tests.conftest_kv import ROOT, kvserver, require_tool


def test_memcaslap_against_the_eleos_server_reports_no_errors():
    exe = require_tool("memcaslap", "libmemcached-tools")
    with kvserver("eleos", "-m", "32", "--allow-control-keys") as srv:
        proc = subprocess.run(
            [exe, "-s", f"127.0.0.1:{srv.port}", "-t", "3s", "-T", "1", "-c", "8",
             "--verify=0.1"], capture_output=True, text=True, timeout=120)
        assert srv.stop() == 0, srv.stderr()
        shim = srv.shim_stats()
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-2000:]
    assert "ERROR" not in out, out[-2000:]              # no CLIENT_/SERVER_ERROR answers
    assert re.search(r"verify_failed: 0\b", out), out[-2000:]
    ops = int(re.search(r"Ops: (\d+)", out).group(1))
    gets = int(re.search(r"cmd_get: (\d+)", out).group(1))
    assert ops > 100 and gets > 0, out[-2000:]
    assert shim["mode"] == "eleos" and shim["suvm"]["hits"] > ops


def run_kvload(port, *args):
    return subprocess.run([sys.executable, "apps/kvload.py", "-s", f"127.0.0.1:{port}",
                           "--json", "-", "-q", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_kvload_runs_the_memaslap_workload_and_reports_json():
    with kvserver("native", "-m", "16") as srv:
        proc = run_kvload(srv.port, "-x", "1500", "-c", "4", "-P", "2", "-k", "500")
        c = Client(srv.address, default_noreply=False, timeout=30)
        try:
            stats = c.stats()
        finally:
            c.close()
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["tool"] == "kvload" and report["errors"] == 0
    assert report["ops"] == 1500 == report["gets"] + report["sets"]
    assert report["get_hits"] == report["gets"]        # the warm-up set every key
    assert 0.8 < report["gets"] / report["ops"] < 0.97   # 9:1 get:set
    lat = report["latency_us"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert stats[b"cmd_set"] == 500 + report["sets"]      # warm-up + measured sets
    assert stats[b"get_hits"] == report["get_hits"]


def test_kvload_counts_refused_sets_as_errors():
    with kvserver("native", "-m", "2", "-I", "4k") as srv:
        proc = run_kvload(srv.port, "-x", "200", "-c", "2", "-P", "1", "-k", "50",
                          "--value-size", "8000")
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert report["warmup_errors"] == 50                # every set: object too large
    assert report["errors"] >= 50 + report["sets"]

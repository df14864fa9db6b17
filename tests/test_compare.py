"""``eleos-shim compare``: one app under several modes, side by side (eleos_shim/compare.py)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from tests.conftest import ROOT, shim_env

HEAP_APP = textwrap.dedent("""\
    import mmap, os
    m = mmap.mmap(-1, 1 << 20)
    for i in range(0, len(m), 4096):
        m[i] = i % 251
    fd = os.open(os.devnull, os.O_WRONLY)
    for _ in range(50):
        os.write(fd, b"x")
    print(sum(m[i] for i in range(0, len(m), 4096)))
""")


def compare(*args, env=None, timeout=180):
    return subprocess.run([sys.executable, "-m", "eleos_shim", *args], cwd=ROOT,
                          env=shim_env(None, **(env or {})), capture_output=True, text=True,
                          timeout=timeout)


def test_compare_runs_each_mode_and_checks_the_output_is_the_same(tmp_path):
    app = tmp_path / "heap_app.py"
    app.write_text(HEAP_APP)
    out = tmp_path / "cmp.json"
    png = tmp_path / "cmp.png"
    r = compare("--epc-mb", "0.5", "compare", "native", "sgx", "eleos", "suvm-only", "rpc-only",
                "--json", str(out), "--plot", str(png), "--", str(app))
    assert r.returncode == 0, r.stdout + r.stderr
    rows = {row["mode"]: row for row in json.loads(out.read_text())["runs"]}
    assert list(rows) == ["native", "sgx", "eleos", "suvm-only", "rpc-only"]
    assert all(row["same_output"] == "same" for row in rows.values())
    assert rows["native"]["exits"] == 0
    assert rows["sgx"]["epc_faults"] >= 256 - 128 and rows["sgx"]["exits"] >= 50
    assert rows["eleos"]["epc_faults"] == 0 and rows["eleos"]["suvm_misses"] > 0
    assert rows["rpc-only"]["epc_faults"] > 0 and rows["suvm-only"]["suvm_misses"] > 0
    table = r.stdout.splitlines()
    assert table[1].split()[:8] == ["mode", "wall", "s", "exits", "epc", "faults", "suvm", "misses"]
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"


def test_compare_names_the_mode_whose_output_differs(tmp_path):
    app = tmp_path / "which.py"
    app.write_text("import mmap\nprint(type(mmap.mmap(-1, 4096)).__name__)\n")
    r = compare("compare", "native", "eleos", "--", str(app))
    assert r.returncode == 0, r.stderr
    assert "DIFFERENT" in r.stdout
    assert "eleos: the app's output differs from native's, line 1: 'mmap' vs" in r.stdout


def test_compare_drives_a_server_with_the_client_command():
    client = "{python} apps/kvload.py -s {host}:{port} -c 2 -x 300 --no-warmup -q --json -"
    r = compare("compare", "sgx", "eleos", "--client", client, "--json", "-", "--",
                "apps/kvstore.py", "-p", "0", "-m", "8")
    assert r.returncode == 0, r.stdout + r.stderr
    data = json.loads(r.stdout[r.stdout.index("{"):])
    for row in data["runs"]:
        assert row["client_status"] == 0 and row["status"] == 0
        assert json.loads(row["client_output"])["ops"] >= 300
    sgx, eleos = data["runs"]
    assert sgx["exits"] > eleos["exits"]


def test_compare_rejects_an_unknown_mode_and_a_missing_app():
    r = compare("compare", "sgx", "fast", "--", "apps/fileserve.py")
    assert r.returncode == 2 and "unknown mode 'fast'" in r.stderr
    r = compare("compare", "sgx")
    assert r.returncode == 2 and "give the app after --" in r.stderr

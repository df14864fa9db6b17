"""The benchmarks' figures and `make bench`'s report (benchmarks/common.py, benchmarks/run_all.py)."""
from __future__ import annotations

import json

from benchmarks import common, run_all


def test_normalise_divides_each_group_by_its_baseline():
    groups = {"fits": {"sgx": 10.0, "eleos": 25.0, "native": None}, "big": {"sgx": 0, "eleos": 3.0}}
    assert common.normalise(groups, "sgx") == {"fits": {"sgx": 1.0, "eleos": 2.5, "native": None},
                                               "big": {"sgx": None, "eleos": None}}


def test_plot_bars_writes_a_png(tmp_path):
    out = common.plot_bars(tmp_path / "x.png", {"(a)": {"sgx": 1.0, "eleos": 2.3},
                                                "(b)": {"sgx": 1.0, "eleos": None}},
                           title="t", ylabel="ops/s", baseline="sgx", targets={"(a)": 2.0})
    assert out == tmp_path / "x.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000


def test_figure_path_sits_beside_the_json():
    assert common.figure_path("kvstore", "/tmp/run/kv.json").as_posix() == "/tmp/run/kv.png"
    assert common.figure_path("kvstore") == common.RESULTS / "kvstore.png"


def test_calibrate_figure_from_its_fidelity_rows(tmp_path):
    path = tmp_path / "calibrate.json"
    path.write_text(json.dumps({"fidelity": [
        {"event": "ocall", "budget_cycles": 7100, "paid_median_cycles": 7300,
         "paid_p90_cycles": 9000, "real_median_cycles": 400},
        {"event": "indirect", "budget_cycles": 14000, "paid_median_cycles": 15000,
         "paid_p90_cycles": 20000, "real_median_cycles": 15000}]}))
    assert run_all.plot_calibrate(path) == tmp_path / "calibrate.png"
    path.write_text(json.dumps({"null_call": {}}))          # an older calibrate: no figure
    (tmp_path / "calibrate.png").unlink()
    assert run_all.plot_calibrate(path) is None and not (tmp_path / "calibrate.png").exists()


def test_report_md_holds_machine_figures_and_tables(tmp_path, monkeypatch):
    monkeypatch.setattr(run_all, "RESULTS", tmp_path)
    (tmp_path / "kvstore.png").write_bytes(b"\x89PNG")
    (tmp_path / "kvstore-closed-loop.png").write_bytes(b"\x89PNG")
    (tmp_path / "kvstore.json").write_text("{}")
    out = run_all.write_report([
        {"name": "kvstore", "rc": 0, "seconds": 90, "output": "config  ops/s\nsgx  15,489\n"},
        {"name": "paging", "rc": 1, "seconds": 3, "output": "Traceback ..."}])
    text = out.read_text()
    assert out == tmp_path / "report.md"
    assert "machine: " in text and "![kvstore](kvstore.png)" in text
    assert "![kvstore-closed-loop](kvstore-closed-loop.png)" in text
    assert "sgx  15,489" in text and "| [paging](#paging) |" in text and "| 1 |" in text
    assert "![paging]" not in text                          # no figure: none drawn


def test_make_bench_runs_every_benchmark_program():
    # every program in benchmarks/ but the runner and the workers a benchmark starts itself
    programs = {p.stem for p in run_all.HERE.glob("*.py") if "def main(" in p.read_text()
                and p.stem != "run_all" and not p.stem.endswith("_worker")}
    assert programs and programs <= set(run_all.ORDER)


def test_run_all_refuses_an_unknown_benchmark(capsys):
    assert run_all.main(["nope"]) == 2
    assert "no such benchmark: nope" in capsys.readouterr().out


def test_progress_off_a_terminal_is_one_line_per_step(capsys):
    bar = common.Progress(2, "demo").start()
    bar.step("first")
    bar.step("second")
    bar.stop()
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("demo 1/2, 0:00 so far: first")
    assert err[1].startswith("demo 2/2, 0:00 so far, ~0:00 left: second")

"""The loader: an app sees what it would see under plain python, and stats are written at
every exit (normal, exception, SIGINT, SIGTERM)."""
import os
import signal
import subprocess
import sys

import pytest

from tests.conftest import ROOT, SCRIPTS, run_shim, shim_env

MODES = ("native", "sgx")


def plain(script, *args, preexec_fn=None):
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True,
                          cwd=ROOT, env=shim_env(), preexec_fn=preexec_fn)


def sigint_as_at_a_terminal():
    """In the child: SIGINT at its default and unblocked, as a terminal's Ctrl-C finds it.  A
    suite started as a background job of a non-interactive shell inherits SIGINT ignored, and
    then Python installs no KeyboardInterrupt handler (plain python then hangs in pause too)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


@pytest.mark.parametrize("mode", MODES)
def test_app_sees_argv_name_and_path_as_under_python(mode):
    script = SCRIPTS / "show_env.py"
    r = run_shim(mode, script, "a", "--b", "-m", "c")
    assert r.returncode == 0, r.stderr
    assert r.stdout == plain(script, "a", "--b", "-m", "c").stdout


@pytest.mark.parametrize("mode", MODES)
def test_dash_m_runs_a_module_as_main(mode, tmp_path):
    (tmp_path / "mymod.py").write_text("import sys\nprint(__name__, sys.argv[1:])\n")
    r = run_shim(mode, "-m mymod", "x", "y", cwd=tmp_path, env={"PYTHONPATH": f"{tmp_path}:{ROOT}"})
    assert r.returncode == 0, r.stderr
    assert r.stdout == "__main__ ['x', 'y']\n"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("code", ["0", "3"])
def test_exit_status_is_the_apps(mode, code):
    r = run_shim(mode, SCRIPTS / "exit_with.py", code)
    assert r.returncode == int(code)
    assert r.stats is not None and r.stats["mode"] == mode


@pytest.mark.parametrize("mode", MODES)
def test_uncaught_exception_prints_the_apps_traceback_and_exits_1(mode):
    r = run_shim(mode, SCRIPTS / "exit_with.py", "raise")
    ref = plain(SCRIPTS / "exit_with.py", "raise")
    assert r.returncode == ref.returncode == 1
    assert r.stderr.splitlines()[-1] == "ValueError: boom from the app"
    assert "eleos_shim" not in r.stderr and "runpy" not in r.stderr
    assert r.stderr.count("File ") == ref.stderr.count("File ")
    assert r.stats is not None


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("how", ["interrupt", "sigint"])
def test_ctrl_c_gives_keyboardinterrupt_and_dies_of_sigint(mode, how):
    r = run_shim(mode, SCRIPTS / "exit_with.py", how, preexec_fn=sigint_as_at_a_terminal)
    ref = plain(SCRIPTS / "exit_with.py", how, preexec_fn=sigint_as_at_a_terminal)
    assert r.returncode == ref.returncode == -signal.SIGINT
    assert "KeyboardInterrupt" in r.stderr
    assert r.stats is not None


@pytest.mark.parametrize("mode", MODES)
def test_sigterm_writes_stats_and_dies_of_sigterm(mode):
    r = run_shim(mode, SCRIPTS / "exit_with.py", "sigterm")
    assert r.returncode == -signal.SIGTERM
    assert r.stats is not None and r.stats["mode"] == mode


def test_stats_report_on_stderr_with_dash(tmp_path):
    r = run_shim("sgx", SCRIPTS / "exit_with.py", "0", env={"ELEOS_STATS": "-"}, stats=False)
    assert r.returncode == 0
    assert "eleos-shim stats: mode=sgx" in r.stderr
    assert "write" in r.stderr and "exits remaining" in r.stderr


def test_missing_script_is_a_clear_error():
    r = run_shim("sgx", "no_such_app.py", stats=False)
    assert r.returncode == 2
    assert "can't open file" in r.stderr and "no_such_app.py" in r.stderr

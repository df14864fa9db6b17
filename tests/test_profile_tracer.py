"""ELEOS_PROFILE's fault tracer and the app's own tracer (eleos_shim/profile.py, TraceChain):
an app that sets sys.settrace / threading.settrace (a debugger, coverage, trace) gets exactly
the events it gets natively, and the profile still charges faults to lines; a tracer put in
below sys.settrace (C's PyEval_SetTrace, as coverage's C tracer) is named in the report with
its thread and time.  Before the chain, the app's tracer silently replaced the profile's and
the faults were charged to no line."""
import subprocess
import sys

from tests.conftest import ROOT, SCRIPTS, run_shim, shim_env

SCRIPT = SCRIPTS / "profile_own_tracer.py"
# A 0.25 MB EPC: every 4 KiB step of the 1 MiB heap faults.
PROFILED = {"ELEOS_PROFILE": "1", "ELEOS_EPC_MB": "0.25"}
LINES = SCRIPT.read_text().splitlines()
HEAP_WRITE = f"{LINES.index('        heap[i] = (heap[i] + 1) % 256') + 1} (touch)"
ROUTED = LINES.index('    os.write(devnull, b"x")           # a routed call (an exit under sgx)') + 1


def native(mode: str) -> str:
    r = subprocess.run([sys.executable, str(SCRIPT), mode], capture_output=True, text=True,
                       timeout=60, cwd=ROOT, env=shim_env())
    assert r.returncode == 0, r.stderr
    return r.stdout


def faults_by_line(stats) -> dict[str, int]:
    return {s["site"].split("profile_own_tracer.py:")[-1]: s["epc_fault"]
            for s in stats["profile"]["sites"] if s["epc_fault"]}


def test_an_apps_own_tracer_sees_every_event_it_sees_natively_and_faults_still_have_lines():
    expected = native("chain")
    plain = run_shim("sgx", SCRIPT, "chain", env={"ELEOS_EPC_MB": "0.25"}, stats=False)
    profiled = run_shim("sgx", SCRIPT, "chain", env=PROFILED)
    assert plain.returncode == 0 and profiled.returncode == 0, plain.stderr + profiled.stderr
    assert plain.stdout == expected and profiled.stdout == expected   # same events, same digest
    faults = faults_by_line(profiled.stats)
    assert faults.get(HEAP_WRITE, 0) > 1000        # the heap write in touch(), in each thread
    assert sum(faults.values()) == profiled.stats["epc"]["faults"]
    assert profiled.stats["profile"]["tracer_lost"] == []


def test_a_tracer_put_in_below_sys_settrace_is_reported_with_its_thread_and_time():
    r = run_shim("sgx", SCRIPT, "c-tracer", env=PROFILED)
    assert r.returncode == 0, r.stderr
    assert r.stdout == native("c-tracer") == "C tracer saw events: True gettrace showed it: True\n"
    [lost] = r.stats["profile"]["tracer_lost"]
    assert lost["thread"] == "MainThread" and "CTracer object" in lost["how"]
    assert lost["site"].endswith(f"profile_own_tracer.py:{ROUTED}")      # touch's routed call
    assert lost["back_at_s"] >= lost["at_s"] > 0                    # back once it was turned off
    faults = faults_by_line(r.stats)
    assert lost["faults_missed"] == 3 * 256                         # the 3 touches under it
    assert sum(faults.values()) + lost["faults_missed"] == r.stats["epc"]["faults"]
    text = run_shim("sgx", SCRIPT, "c-tracer", env=dict(PROFILED, ELEOS_STATS="-"), stats=False)
    assert "  ! fault tracer of thread MainThread lost at " in text.stderr


def test_an_apps_tracer_that_raises_stops_tracing_as_natively_and_the_profile_resumes():
    r = run_shim("sgx", SCRIPT, "raise", env=PROFILED)
    assert r.returncode == 0, r.stderr
    assert r.stdout == native("raise") == "raised: tracer failed gettrace is None: True\n"
    [lost] = r.stats["profile"]["tracer_lost"]
    assert "raised" in lost["how"] and lost["back_at_s"] is not None
    assert faults_by_line(r.stats) == {HEAP_WRITE: 256}           # the second touch()
    assert r.stats["epc"]["faults"] == 256

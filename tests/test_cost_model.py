"""The cost model's budget arithmetic, exact: top-up, overruns, time scale, the indirect window.

The CPU's clock is replaced by one that moves only when the test says (account mode), so every
real part is what the test made it, and every count below is exact.
"""
import time

import pytest

from eleos_shim._native._cpu import lib
from eleos_shim.config import Config
from eleos_shim.cpu import ModeledCPU

EENTER, EEXIT, AEX, ERESUME = 0, 1, 2, 3


@pytest.fixture
def clock():
    """A CPU in account mode whose clock is ``clock.t`` (set it, then charge)."""
    class Clock:
        def __init__(self):
            self.t = 1_000_000

        def at(self, t):
            self.t = t
            lib.cpu_test_clock(1, t)

        def cpu(self, **kw):
            cpu = ModeledCPU(Config.from_env({}, mode="sgx", cost="account", **kw))
            cpu.reset()
            cpu.set_trap_cycles(0)
            return cpu

    c = Clock()
    c.at(c.t)
    yield c
    lib.cpu_test_clock(0, 0)
    ModeledCPU(Config.from_env({}, mode="sgx", cost="account")).reset()


def ocall(clock, host_cycles=5000):
    lib.cpu_charge(EEXIT)
    clock.at(clock.t + host_cycles)      # the host call: real in both worlds, not charged
    lib.cpu_charge(EENTER)


def fault(clock, handler_cycles):
    lib.cpu_charge(AEX)
    clock.at(clock.t + handler_cycles)
    lib.cpu_charge(ERESUME)


def test_an_ocall_pays_its_budget_whatever_its_host_call_took(clock):
    clock.cpu()
    ocall(clock, host_cycles=5000)
    ocall(clock, host_cycles=900_000)
    ev = ModeledCPU.events()["ocall"]
    assert ev == {"count": 2, "budget_cycles": 16400, "paid_cycles": 16400, "real_cycles": 0,
                  "spun_cycles": 16400, "overruns": 0}


def test_a_fault_tops_its_real_part_up_to_the_budget(clock):
    cpu = clock.cpu()
    cpu.set_trap_cycles(3000)            # delivery and return, measured by the driver
    fault(clock, 27_000)
    ev = ModeledCPU.events()["epc_fault"]
    assert ev == {"count": 1, "budget_cycles": 40000, "paid_cycles": 40000, "real_cycles": 30000,
                  "spun_cycles": 10000, "overruns": 0}


def test_a_real_part_above_the_budget_is_an_overrun_paid_as_it_was(clock):
    cpu = clock.cpu()
    cpu.set_trap_cycles(5000)
    fault(clock, 20_000)
    fault(clock, 55_000)                 # 60,000 real > 40,000
    ev = ModeledCPU.events()["epc_fault"]
    assert ev["overruns"] == 1
    assert ev["real_cycles"] == 25_000 + 60_000
    assert ev["spun_cycles"] == 15_000
    assert ev["paid_cycles"] == 40_000 + 60_000
    assert ev["budget_cycles"] == 80_000


def test_a_clusters_reclaim_time_is_paid_by_the_faults_that_take_its_frames(clock):
    # Direct reclaim: one fault EWBs 4 victims (80,000 cycles) and keeps one share; the three
    # faults that take the other frames had theirs done ahead (the EPC driver's shift calls).
    clock.cpu()
    lib.cpu_charge(AEX)
    clock.at(clock.t + 10_000 + 80_000)          # its own 10,000, then the cluster
    lib.cpu_fault_shift(60_000)                  # 3 shares of 20,000 done for the others
    lib.cpu_charge(ERESUME)
    for _ in range(3):
        lib.cpu_charge(AEX)
        clock.at(clock.t + 5_000)
        lib.cpu_fault_shift(-20_000)             # its share, done ahead
        lib.cpu_charge(ERESUME)
    ev = ModeledCPU.events()["epc_fault"]
    # each real part: the reclaimer 10,000 + 20,000, the others 5,000 + 20,000: all below the
    # budget, so each pays exactly 40,000; what they spin is what the wall clock still owes
    assert ev == {"count": 4, "budget_cycles": 160_000, "paid_cycles": 160_000,
                  "real_cycles": 30_000 + 3 * 25_000, "spun_cycles": 10_000 + 3 * 15_000,
                  "overruns": 0}
    # and the wall time of the four, spins included, is the four budgets
    assert (10_000 + 80_000 + 10_000) + 3 * (5_000 + 15_000) == 160_000


def test_a_shift_outside_a_fault_is_ignored_and_an_own_share_above_the_budget_overruns(clock):
    clock.cpu()
    lib.cpu_fault_shift(1_000_000)               # no fault open: nothing to move
    fault(clock, 20_000)
    lib.cpu_charge(AEX)
    clock.at(clock.t + 30_000)
    lib.cpu_fault_shift(-25_000)                 # 55,000 of its own: an overrun
    lib.cpu_charge(ERESUME)
    ev = ModeledCPU.events()["epc_fault"]
    assert ev["overruns"] == 1 and ev["real_cycles"] == 20_000 + 55_000
    assert ev["spun_cycles"] == 20_000 and ev["paid_cycles"] == 40_000 + 55_000


def test_an_ocall_whose_budget_is_below_zero_real_cost_overruns(clock):
    clock.cpu(eexit_cycles=0, ocall_cycles=0)
    ocall(clock)
    ev = ModeledCPU.events()["ocall"]
    assert ev["budget_cycles"] == 0 and ev["spun_cycles"] == 0 and ev["overruns"] == 0
    lib.cpu_test_clock(0, 0)             # a real clock: the charge itself now takes time
    lib.cpu_charge(EEXIT)
    lib.cpu_charge(EENTER)
    ev = ModeledCPU.events()["ocall"]
    assert ev["overruns"] == 1 and ev["real_cycles"] > 0 and ev["spun_cycles"] == 0


def test_the_time_scale_multiplies_every_budget_and_the_window(clock):
    cpu = clock.cpu(time_scale=2.5)
    cpu.set_trap_cycles(0)
    ocall(clock)
    fault(clock, 1000)
    lib.cpu_pollute()                    # the fault's exit is over: a window opens
    clock.at(clock.t + 1_000_000)        # long after: the whole (scaled) window
    ocall(clock)
    ev = ModeledCPU.events()
    assert ev["ocall"]["budget_cycles"] == 2 * 20500 == ev["ocall"]["paid_cycles"]
    assert ev["epc_fault"]["budget_cycles"] == 100_000 == ev["epc_fault"]["paid_cycles"]
    assert ev["indirect"]["budget_cycles"] == int(0.5 * 14000 * 2.5)


@pytest.mark.parametrize("work,slowdown,window,charged", [
    (4000, 1.5, 14000, 2000),            # inside the window: (s-1) x the work
    (14000, 1.5, 14000, 7000),
    (90000, 1.5, 14000, 7000),           # past it: (s-1) x the window
    (10000, 3.0, 14000, 20000),
    (10000, 1.0, 14000, 0),              # no slowdown, no charge
    (10000, 2.0, 0, 0),                  # no window, no charge
])
def test_the_indirect_cost_is_the_slowdown_over_the_work_in_the_window(clock, work, slowdown,
                                                                     window, charged):
    clock.cpu(indirect_slowdown=slowdown, indirect_window_cycles=window)
    ocall(clock)
    lib.cpu_pollute()                    # as the OCALL stub does after EENTER
    clock.at(clock.t + work)             # the app's code after the exit
    ocall(clock)                         # the next event charges the window
    ev = ModeledCPU.events()["indirect"]
    assert ev == {"count": 1, "budget_cycles": charged, "paid_cycles": charged, "real_cycles": 0,
                  "spun_cycles": charged, "overruns": 0}
    assert lib.cpu_indirect_budget(work) == charged


def test_a_fault_too_closes_the_window_of_the_exit_before_it(clock):
    clock.cpu()
    ocall(clock)
    lib.cpu_pollute()
    clock.at(clock.t + 2000)
    fault(clock, 100)
    assert ModeledCPU.events()["indirect"]["budget_cycles"] == 1000


def test_no_window_opens_with_the_indirect_cost_off(clock):
    clock.cpu(indirect="off")
    ocall(clock)
    lib.cpu_pollute()
    clock.at(clock.t + 5000)
    ocall(clock)
    assert ModeledCPU.events()["indirect"]["count"] == 0


def test_account_mode_counts_a_huge_budget_without_spending_it():
    cpu = ModeledCPU(Config.from_env({}, mode="sgx", cost="account", epc_fault_cycles=10**12))
    cpu.reset()
    t0 = time.monotonic()
    lib.cpu_charge(AEX)
    lib.cpu_charge(ERESUME)
    assert time.monotonic() - t0 < 60     # 10**12 cycles would be minutes
    ev = cpu.events()["epc_fault"]
    assert ev["paid_cycles"] == 10**12 and ev["spun_cycles"] == 10**12 - ev["real_cycles"]
    cpu.reset()


def test_spin_mode_spends_at_least_the_budget():
    cpu = ModeledCPU(Config.from_env({}, mode="sgx", cost="spin"))
    cpu.reset()
    t0 = lib.cpu_ticks()
    lib.cpu_charge(EEXIT)
    lib.cpu_charge(EENTER)
    elapsed = lib.cpu_ticks() - t0
    ev = cpu.events()["ocall"]
    assert ev["paid_cycles"] >= 8200 and elapsed >= 8200
    assert ev["paid_cycles"] == ev["real_cycles"] + ev["spun_cycles"]
    cpu.reset()


def test_stats_json_has_every_event_with_its_budget_and_the_modeled_share(tmp_path):
    from tests.conftest import run_shim
    script = tmp_path / "app.py"
    script.write_text("import mmap, os\n"
                      "m = mmap.mmap(-1, 8 << 20)\n"
                      "for off in range(0, len(m), 4096):\n"
                      "    m[off] = 1\n"
                      f"with open({str(tmp_path / 'out')!r}, 'w') as f:\n"
                      "    for _ in range(50):\n"
                      "        f.write('x'); f.flush()\n")
    run = run_shim("sgx", script, env={"ELEOS_COST": "account", "ELEOS_EPC_MB": "4",
                                       "ELEOS_TIME_SCALE": "2"})
    assert run.returncode == 0, run.stderr
    st = run.stats
    assert set(st["events"]) == {"ocall", "epc_fault", "indirect", "fork"}
    assert st["events"]["fork"]["count"] == 0          # (tests/test_libos_fork.py forks)
    for ev in st["events"].values():
        assert set(ev) == {"count", "budget_cycles", "paid_cycles", "real_cycles", "spun_cycles",
                           "overruns"}
        assert ev["paid_cycles"] == ev["real_cycles"] + ev["spun_cycles"]
    oc, fa = st["events"]["ocall"], st["events"]["epc_fault"]
    assert oc["count"] >= 50 and oc["budget_cycles"] == oc["count"] * 8200 * 2
    assert fa["count"] == st["epc"]["faults"] >= 2048 and fa["budget_cycles"] == fa["count"] * 80000
    assert st["events"]["indirect"]["count"] > 0
    assert st["time_scale"] == 2
    assert st["modeled_s"] == pytest.approx(sum(e["paid_cycles"] for e in st["events"].values())
                                            / (st["tsc_mhz"] * 1e6))
    assert st["modeled_share"] == pytest.approx(st["modeled_s"] / st["wall_s"])
    assert st["transitions"]["modeled_cycles"] == sum(e["paid_cycles"] for e in st["events"].values())


def test_a_real_pollution_touch_counts_against_the_indirect_charge():
    cpu = ModeledCPU(Config.from_env({}, mode="sgx", cost="spin", indirect="pollute",
                                     pollute_kb=1024, indirect_window_cycles=1))
    cpu.reset()
    lib.cpu_pollute()                    # touches 1 MB for real: far above a 1-cycle window
    lib.cpu_charge(EEXIT)
    lib.cpu_charge(EENTER)
    ev = cpu.events()["indirect"]
    assert ev["count"] == 1 and ev["budget_cycles"] <= 1
    assert ev["real_cycles"] > ev["budget_cycles"] and ev["overruns"] == 1 and ev["spun_cycles"] == 0
    assert cpu.counters()["pollutions"] == 1
    cpu.reset()


def test_calibrate_prints_each_events_budget_paid_and_overruns(tmp_path):
    import json
    import subprocess
    import sys
    from tests.conftest import ROOT, shim_env
    out = tmp_path / "cal.json"
    proc = subprocess.run([sys.executable, "-m", "eleos_shim", "calibrate", "--trap=sigbus",
                           "--json", str(out)], env=shim_env(None, ELEOS_COST="account"),
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for word in ("budget", "paid p50", "p90", "real p50", "spun p50", "overruns", "paid/budget",
                 "ocall", "indirect", "epc_fault (sigbus)"):
        assert word in proc.stdout
    rows = {r["event"]: r for r in json.loads(out.read_text())["fidelity"]}
    # account mode: an event below its budget pays exactly its budget
    assert rows["ocall"]["paid_median_cycles"] == rows["ocall"]["budget_cycles"] == 8200
    assert rows["epc_fault (sigbus)"]["budget_cycles"] == 40000


def test_suvm_store_growth_is_an_ocall_whose_window_the_next_event_charges(clock):
    # SUVM asking the host for backing store is an exit like any OCALL: charged, and the app's
    # code after it runs in an indirect window (it opened none before issue 12).
    from eleos_shim import suvm
    cpu = clock.cpu()
    inst = suvm.create(Config().replace(suvm_cache_mb=0.0625, suvm_store_mb=4),
                       charge_fn=cpu.charge_fn, pollute_fn=cpu.pollute_fn)
    try:
        inst.malloc(256 * 1024)              # the store grows: one OCALL
        assert ModeledCPU.events()["ocall"]["count"] >= 1
        assert ModeledCPU.events()["indirect"]["count"] == 0
        clock.at(clock.t + 4000)             # the app's work after the exit
        fault(clock, 100)                    # the next event settles the window
        assert ModeledCPU.events()["indirect"]["budget_cycles"] == 2000
    finally:
        inst.close()


def test_a_faults_window_spans_only_the_apps_work_between_the_traps(clock):
    # A trap's delivery (before the handler) and return (after it) are the fault's, counted in
    # its real part: the window after one fault opens when its return is over, and the next
    # fault closes a window where its own delivery began.
    cpu = clock.cpu()
    cpu.set_trap_cycles(3000, return_cycles=1000)     # delivery 2,000, return 1,000
    fault(clock, 100)
    lib.cpu_pollute()
    clock.at(clock.t + 5000)                          # return, then 4,000 of the app's work
    ocall(clock)
    assert ModeledCPU.events()["indirect"]["budget_cycles"] == 2000
    lib.cpu_pollute()
    clock.at(clock.t + 6000)                          # 4,000 of work, then the delivery
    fault(clock, 100)
    assert ModeledCPU.events()["indirect"]["budget_cycles"] == 2000 + 2000

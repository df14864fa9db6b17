"""The one configuration parser: presets, precedence, and one clear line per bad value."""
import pytest

from eleos_shim.config import OPTIONS, Config, ConfigError, resolve
from tests.conftest import run_shim


def test_presets_set_syscall_path_and_heap():
    assert (resolve({"ELEOS_MODE": "native"}).syscalls, resolve({"ELEOS_MODE": "native"}).memory) == ("direct", "native")
    assert (resolve({"ELEOS_MODE": "sgx"}).syscalls, resolve({"ELEOS_MODE": "sgx"}).memory) == ("ocall", "epc")
    assert (resolve({}).syscalls, resolve({}).memory) == ("rpc", "suvm")


def test_overrides_beat_the_preset_and_flags_beat_variables():
    cfg = resolve({"ELEOS_MODE": "sgx", "ELEOS_SYSCALLS": "rpc"}, {"memory": "suvm"})
    assert (cfg.mode, cfg.syscalls, cfg.memory) == ("sgx", "rpc", "suvm")
    assert resolve({"ELEOS_EPC_MB": "32"}, {"epc_mb": "16"}).epc_mb == 16


def test_aex_and_eresume_follow_eexit_and_eenter_unless_set():
    cfg = resolve({"ELEOS_EEXIT_CYCLES": "5000", "ELEOS_EENTER_CYCLES": "4000"})
    assert (cfg.aex_cycles, cfg.eresume_cycles) == (5000, 4000)
    assert resolve({"ELEOS_AEX_CYCLES": "1"}).aex_cycles == 1


def test_every_cost_constant_has_a_source_a_variable_and_a_flag():
    from eleos_shim.config import COSTS, Config, cost_table
    flags = {o.field: o for o in OPTIONS}
    for c in COSTS:
        assert c.source and c.field in flags
        assert getattr(Config(), c.field) == c.default
        assert getattr(resolve({f"ELEOS_{c.field.upper()}": str(c.default * 2)}), c.field) == c.default * 2
        assert f"ELEOS_{c.field.upper()}" in cost_table()
    defaults = {c.field: c.default for c in COSTS}
    assert (defaults["eenter_cycles"], defaults["eexit_cycles"], defaults["ocall_cycles"],
            defaults["epc_fault_cycles"], defaults["indirect_window_cycles"]) == (3300, 3800, 8200, 40000, 14000)


def test_help_prints_the_cost_table_with_its_sources():
    run = run_shim(None, "--help", stats=False)
    assert run.returncode == 0
    for source in ("HotCalls (ISCA'17)", "VAULT (ASPLOS'18)", "FlexSC (OSDI'10)", "NSDI'06",
                   "ELEOS_TIME_SCALE", "ELEOS_EPC_FAULT_CYCLES"):
        assert source in run.stdout


def test_suvm_cache_defaults_inside_a_small_epc():
    cfg = resolve({"ELEOS_EPC_MB": "16"})
    assert cfg.suvm_cache_mb <= 16


BAD = [
    ("ELEOS_MODE", "sgx2", "one of native, sgx, eleos"),
    ("ELEOS_SYSCALLS", "fast", "one of direct, ocall, rpc"),
    ("ELEOS_MEMORY", "disk", "one of native, epc, suvm"),
    ("ELEOS_EPC_MB", "-3", "positive number"),
    ("ELEOS_EPC_MB", "lots", "positive number"),
    ("ELEOS_SUVM_CACHE_MB", "200", "must fit in the EPC"),
    ("ELEOS_SUVM_PAGE_SIZE", "3000", "power of two"),
    ("ELEOS_SUVM_PAGE_SIZE", "131072", "power of two"),
    ("ELEOS_SUVM_SUBPAGE", "100", "power of two"),
    ("ELEOS_SUVM_EVICTION", "mru", "one of fifo, lru, clock, random"),
    ("ELEOS_SUVM_OVERWRITE", "never", "one of open, skip"),
    ("ELEOS_SUVM_STORE_MB", "0", "positive number"),
    ("ELEOS_RPC_WORKERS", "-1", "integer >= 0"),
    ("ELEOS_RPC_WORKERS", "many", "integer"),
    ("ELEOS_RPC_SPIN", "1.5", "integer"),
    ("ELEOS_RPC_SLEEP", "x", "integer"),
    ("ELEOS_RPC_SLOTS", "1000", "power of two"),
    ("ELEOS_RPC_WAIT", "sleep", "one of spin, ocall"),
    ("ELEOS_RPC_CPUS", "1-x", "CPU list"),
    ("ELEOS_RPC_CPUS", "some", "auto, none, or a CPU list"),
    ("ELEOS_RPC_CPUS", "4096", "expected CPUs from 0"),
    ("ELEOS_EENTER_CYCLES", "-5", "integer >= 0"),
    ("ELEOS_EEXIT_CYCLES", "abc", "integer"),
    ("ELEOS_AEX_CYCLES", "", "integer"),
    ("ELEOS_ERESUME_CYCLES", "1e3", "integer"),
    ("ELEOS_POLLUTE_KB", "-1", "integer >= 0"),
    ("ELEOS_COST", "free", "one of spin, account"),
    ("ELEOS_TSC_MHZ", "0", "positive number"),
    ("ELEOS_EPC_TRAP", "ptrace", "one of auto, sigbus, userfaultfd, sigsegv"),
    ("ELEOS_EPC_RECLAIM", "lazy", "one of direct, background"),
    ("ELEOS_OCALL_CYCLES", "-1", "integer >= 0"),
    ("ELEOS_OCALL_CYCLES", "100", "at least its EEXIT part"),
    ("ELEOS_EPC_FAULT_CYCLES", "4e4", "integer"),
    ("ELEOS_FORK_CYCLES", "-1", "integer"),
    ("ELEOS_INDIRECT", "cache", "one of model, pollute, off"),
    ("ELEOS_INDIRECT_SLOWDOWN", "0.5", "number >= 1"),
    ("ELEOS_INDIRECT_WINDOW_CYCLES", "-3", "integer >= 0"),
    ("ELEOS_TIME_SCALE", "0", "positive number"),
    ("ELEOS_TIME_SCALE", "fast", "positive number"),
    ("ELEOS_EPC_DOMAIN", "a/b", "letters, digits"),
    ("ELEOS_EPC_DOMAIN", ".hidden", "not starting with '.'"),
    ("ELEOS_EPC_BALLOON", "greedy", "one of demand, fair, static"),
    ("ELEOS_STATS", "", "file path"),
    ("ELEOS_PROFILE", "yes", "expected 0 or 1"),
]


@pytest.mark.parametrize("name,value,allowed", BAD)
def test_bad_value_is_rejected_with_name_value_and_what_is_allowed(name, value, allowed):
    with pytest.raises(ConfigError) as exc:
        resolve({name: value})
    msg = str(exc.value)
    assert name in msg and repr(value) in msg or name in msg
    assert allowed in msg
    assert "\n" not in msg


def test_every_option_has_a_bad_value_test():
    assert {o.env for o in OPTIONS} <= {name for name, _, _ in BAD}


def test_bad_setting_stops_startup_with_one_line_and_status_2(tmp_path):
    app = tmp_path / "app.py"
    app.write_text("print('ran')\n")
    r = run_shim(None, app, env={"ELEOS_EPC_MB": "huge"}, stats=False)
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr.strip().splitlines() == ["eleos-shim: ELEOS_EPC_MB='huge': expected a positive number of MB (e.g. 93 or 0.5)"]


def test_misspelt_variable_stops_startup_and_names_the_setting_meant(tmp_path):
    app = tmp_path / "app.py"
    app.write_text("print('ran')\n")
    r = run_shim(None, app, env={"ELEOS_SYSCALL": "direct"}, stats=False)
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr.strip().splitlines() == [
        "eleos-shim: ELEOS_SYSCALL='direct': no such setting (did you mean ELEOS_SYSCALLS?)"]
    with pytest.raises(ConfigError, match="ELEOS_FOO='1': no such setting .see python -m"):
        resolve({"ELEOS_FOO": "1"})
    assert resolve({"ELEOSX": "1", "PATH": "/bin"}).mode == "eleos"      # not ours: ignored


def test_bad_flag_is_named_as_the_flag(tmp_path):
    import subprocess, sys
    from tests.conftest import ROOT, shim_env
    r = subprocess.run([sys.executable, "-m", "eleos_shim", "--mode", "fast", "x.py"], env=shim_env(),
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip() == "eleos-shim: --mode='fast': expected one of native, sgx, eleos"


def test_help_documents_every_option_and_mode():
    import subprocess, sys
    from tests.conftest import ROOT, shim_env
    r = subprocess.run([sys.executable, "-m", "eleos_shim", "--help"], env=shim_env(), cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0
    for opt in OPTIONS:
        assert opt.flag in r.stdout and opt.env in r.stdout
    for mode in ("native", "sgx", "eleos"):
        assert mode in r.stdout


def test_rpc_cpus_is_a_cpu_list():
    assert resolve({"ELEOS_RPC_CPUS": "0"}).rpc_cpus == (0,)
    assert resolve({"ELEOS_RPC_CPUS": ""}).rpc_cpus == ()
    assert resolve({"ELEOS_RPC_CPUS": "none"}).rpc_cpus == ()
    assert resolve({}).rpc_cpus == "auto"


def test_config_is_frozen():
    with pytest.raises(Exception):
        Config().mode = "sgx"  # type: ignore[misc]

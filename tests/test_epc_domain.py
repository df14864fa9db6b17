"""Many enclaves, one EPC: enclave processes of one ELEOS_EPC_DOMAIN share one EPC.

Each enclave is a real process under the shim (SGX mode, a 1 MB EPC, ELEOS_COST=account) driven
line by line (tests/scripts/epc_domain_member.py).  Resident pages are measured by this
process, independently of the driver's accounting: the pages of EPC memory each enclave's app
maps, from /proc/PID/smaps (tests/epc_helpers.py: the driver unmaps every page it EWBs).  To
sum the enclaves at one instant it stops them all (SIGSTOP, waitpid WUNTRACED: every thread,
driver threads included, is stopped) and lets them go after.
"""
from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time

import pytest

from eleos_shim.harness import ROOT, app_command, app_env, first_line
from tests.epc_helpers import app_mapped_pages
from untrusted import epc_domain

PAGE = 4096
EPC_MB = 1
LIMIT_PAGES = (EPC_MB << 20) // PAGE          # 256
SCRIPT = str(ROOT / "tests" / "scripts" / "epc_domain_member.py")

def memfd_resident(pid: int) -> int:
    """Pages of EPC memory process ``pid``'s app maps, as the kernel sees them."""
    return app_mapped_pages(pid)


class Member:
    """One enclave process of a domain, with a heap of ``npages`` EPC pages."""

    def __init__(self, domain: str, npages: int, tmp_path, epc_mb: float = EPC_MB, **extra):
        env = app_env("sgx", {"ELEOS_EPC_DOMAIN": domain, "ELEOS_EPC_MB": str(epc_mb),
                              "ELEOS_COST": "account", **extra})
        self.err_path = tmp_path / f"member-{len(os.listdir(tmp_path))}.err"
        with open(self.err_path, "w") as err:
            self.proc = subprocess.Popen(app_command(SCRIPT, str(npages)), env=env, cwd=ROOT,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                         text=True)
        self.pid = self.proc.pid
        self.expect("ready")

    def send(self, cmd: str) -> None:
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()

    def expect(self, what: str, timeout: float = 120) -> None:
        line = first_line(self.proc, timeout)
        assert line == what, f"expected {what!r}, got {line!r}; stderr: {self.err_path.read_text()[-2000:]}"

    def ask(self, cmd: str, reply: str) -> None:
        self.send(cmd)
        self.expect(reply)

    def resident(self) -> int:
        return memfd_resident(self.pid)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.ask("exit", "bye")
                self.proc.wait(timeout=60)
            except (OSError, AssertionError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass


def stopped_resident(members: list[Member]) -> list[int]:
    """Every member's resident pages at one instant: all are stopped while they are counted."""
    for m in members:
        os.kill(m.pid, signal.SIGSTOP)
    try:
        for m in members:
            _pid, status = os.waitpid(m.pid, os.WUNTRACED)
            assert os.WIFSTOPPED(status)
        return [m.resident() for m in members]
    finally:
        for m in members:
            os.kill(m.pid, signal.SIGCONT)


@pytest.fixture
def domain(request):
    name = f"test-{os.getpid()}-{request.node.name[:40]}".replace("[", "-").replace("]", "")
    members: list[Member] = []
    yield name, members
    for m in members:
        m.close()
    epc_domain.remove(name)


@pytest.mark.parametrize("trap", ["userfaultfd", "sigsegv"])
def test_resident_pages_of_all_enclaves_in_a_domain_never_exceed_its_epc(domain, tmp_path, trap):
    name, members = domain
    # Two enclaves of 1.5 EPCs each, paging at the same time: together three times the EPC.
    members += [Member(name, LIMIT_PAGES * 3 // 2, tmp_path, ELEOS_EPC_TRAP=trap) for _ in range(2)]
    samples = []
    for rnd in range(3):
        for m in members:
            m.send(f"fill {rnd}")
        pending = set(members)
        with selectors.DefaultSelector() as sel:
            for m in members:
                sel.register(m.proc.stdout, selectors.EVENT_READ, m)
            while pending:
                samples.append(stopped_resident(members))
                for key, _ in sel.select(0):
                    m = key.data
                    if m in pending:
                        assert m.proc.stdout.readline().strip() == "filled"
                        pending.discard(m)
                        sel.unregister(m.proc.stdout)
    for m in members:
        m.ask("check 2", "ok")
    totals = [sum(s) for s in samples]
    assert max(totals) <= LIMIT_PAGES, samples
    assert max(totals) > LIMIT_PAGES // 2, samples          # the EPC was really used
    assert any(all(s) for s in samples), samples           # ... by both at once


def a_holding_the_epc_then_b(name: str, members: list, tmp_path) -> tuple[Member, int, Member]:
    """Enclave a fills the whole EPC alone (returns what it holds), then b joins."""
    a = Member(name, LIMIT_PAGES, tmp_path)
    members.append(a)
    a.ask("fill 1", "filled")
    held = a.resident()
    assert held > LIMIT_PAGES * 3 // 4                     # a has the EPC to itself
    b = Member(name, LIMIT_PAGES, tmp_path)
    members.append(b)
    return a, held, b


def test_one_enclaves_working_set_evicts_anothers_pages(domain, tmp_path):
    name, members = domain
    a, a_alone, b = a_holding_the_epc_then_b(name, members, tmp_path)
    b.ask("fill 2", "filled")                              # a is idle: only b touches memory
    a_after, b_after = stopped_resident([a, b])
    assert a_after + b_after <= LIMIT_PAGES
    assert b_after > LIMIT_PAGES // 2                      # b's working set got frames ...
    assert a_after < a_alone - LIMIT_PAGES // 2            # ... that a's reclaimer gave up
    snap = epc_domain.snapshot(name)
    mine = {m["pid"]: m for m in snap["members"]}
    assert set(mine) == {a.pid, b.pid}
    assert mine[a.pid]["returned"] > LIMIT_PAGES // 2      # a's pages were EWBed for b
    a.ask("check 1", "ok")                                 # and came back intact (ELDU)
    b.ask("check 2", "ok")


def test_a_killed_enclave_gives_its_pages_back(domain, tmp_path):
    name, members = domain
    a, held, b = a_holding_the_epc_then_b(name, members, tmp_path)
    a.proc.kill()                                          # SIGKILL: no clean-up runs in a
    a.proc.wait()
    # b alone could hold at most LIMIT - held pages if a's frames stayed taken.
    b.ask("fill 2", "filled")
    assert b.resident() > LIMIT_PAGES * 3 // 4
    snap = epc_domain.snapshot(name)
    assert [m["pid"] for m in snap["members"]] == [b.pid]
    assert snap["deaths"] == 1 and snap["dead_pages_reclaimed"] > LIMIT_PAGES * 3 // 4
    assert snap["used_pages"] <= LIMIT_PAGES
    b.ask("check 2", "ok")


def test_the_domain_is_gone_when_its_last_enclave_exits(domain, tmp_path):
    name, members = domain
    a = Member(name, 64, tmp_path)
    members.append(a)
    a.ask("fill 1", "filled")
    assert epc_domain.snapshot(name)["members"][0]["pid"] == a.pid
    a.close()
    assert a.proc.returncode == 0
    with pytest.raises(epc_domain.DomainError, match="no EPC domain"):
        epc_domain.snapshot(name)


def test_an_enclave_with_another_epc_size_is_refused_with_one_line(domain, tmp_path):
    name, members = domain
    members.append(Member(name, 16, tmp_path))
    env = app_env("sgx", {"ELEOS_EPC_DOMAIN": name, "ELEOS_EPC_MB": "2", "ELEOS_COST": "account"})
    r = subprocess.run(app_command(SCRIPT, "16"), env=env, cwd=ROOT, input="exit\n",
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"eleos-shim: ELEOS_EPC_DOMAIN={name!r}: the domain's EPC is 1 MB, not ELEOS_EPC_MB=2 "
        "(give every member the same size)"]


def test_a_bad_domain_name_stops_start_up_with_one_line():
    env = app_env("sgx", {"ELEOS_EPC_DOMAIN": "../etc", "ELEOS_COST": "account"})
    r = subprocess.run(app_command(SCRIPT, "16"), env=env, cwd=ROOT, input="exit\n",
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip() == ("eleos-shim: ELEOS_EPC_DOMAIN='../etc': expected a name of 1-64 "
                                "letters, digits, '-', '_' or '.' (not starting with '.')")


def test_stats_json_gives_the_domain_and_the_resident_history(domain, tmp_path):
    name, members = domain
    stats_path = tmp_path / "stats.json"
    a = Member(name, LIMIT_PAGES, tmp_path, ELEOS_STATS=str(stats_path))
    members.append(a)
    a.ask("fill 1", "filled")
    a.close()
    st = json.loads(stats_path.read_text())
    d = st["epc_domain"]
    assert d["name"] == name and d["kind"] == "sgx" and d["limit_bytes"] == EPC_MB << 20
    h = d["history"]
    assert len(h["t_s"]) == len(h["resident_pages"]) == len(h["domain_used_pages"]) >= 1
    assert max(h["resident_pages"]) <= LIMIT_PAGES
    assert st["epc"]["faults"] >= LIMIT_PAGES


def test_eleos_shim_epc_shows_each_enclave_of_the_domain(domain, tmp_path):
    name, members = domain
    a, b = Member(name, 96, tmp_path), Member(name, 64, tmp_path)
    members += [a, b]
    a.ask("fill 1", "filled")
    b.ask("fill 1", "filled")
    env = app_env()
    r = subprocess.run([sys.executable, "-m", "eleos_shim", "epc", name, "--json"], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    snap = json.loads(r.stdout)
    rows = {m["pid"]: m for m in snap["members"]}
    assert rows[a.pid]["resident_pages"] == 96 and rows[b.pid]["resident_pages"] == 64
    assert snap["free_pages"] == LIMIT_PAGES - 160
    r = subprocess.run([sys.executable, "-m", "eleos_shim", "epc", name], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    text = r.stdout
    assert f"EPC domain {name}: 1 MB (256 pages), 96 free, 2 enclaves" in text
    lines = {int(line.split()[0]): line.split() for line in text.splitlines() if line.split()[:1]
             and line.split()[0].isdigit()}
    assert lines[a.pid][1:3] == ["sgx", "96"] and lines[b.pid][1:3] == ["sgx", "64"]
    r = subprocess.run([sys.executable, "-m", "eleos_shim", "epc", "no-such-domain-here"], env=env,
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert r.stderr.strip() == "eleos-shim: no EPC domain 'no-such-domain-here' (no enclave runs in it)"


def wait_until(obs, cond, what: str, timeout: float = 60.0) -> dict:
    """The domain's state once ``cond`` holds; woken by frames being given back (a balloon
    shrinking), re-checked at least every 0.2 s, bounded."""
    deadline = time.monotonic() + timeout
    while True:
        snap = obs.snapshot()
        assert snap["used_pages"] <= snap["limit_pages"]
        if cond({m["pid"]: m for m in snap["members"]}):
            return snap
        assert time.monotonic() < deadline, f"{what}: {snap}"
        obs.wait_freed(0.2)


def two_suvm_enclaves(name: str, members: list, tmp_path) -> tuple[Member, Member, epc_domain.Observer]:
    """Two SUVM enclaves of 240 pages whose caches (230 pages) may each hold most of the EPC."""
    suvm = {"ELEOS_MODE": "eleos", "ELEOS_SYSCALLS": "ocall", "ELEOS_SUVM_CACHE_MB": "0.9"}
    a = Member(name, 240, tmp_path, **suvm)
    b = Member(name, 240, tmp_path, **suvm)
    members += [a, b]
    return a, b, epc_domain.Observer(name)


def test_an_idle_suvm_enclaves_balloon_goes_to_a_busy_one_and_comes_back(domain, tmp_path):
    name, members = domain
    a, b, obs = two_suvm_enclaves(name, members, tmp_path)
    try:
        a.ask("fill 1", "filled")
        b.ask("fill 2", "filled")
        a.send("spin 3")                                  # a is busy, b idles
        wait_until(obs, lambda m: m[b.pid]["resident_pages"] == m[b.pid]["floor_pages"]
                   and m[a.pid]["resident_pages"] >= LIMIT_PAGES - 2 * 16 - 8,
                   "b's balloon should shrink to its floor and a's grow into the EPC")
        b.send("spin 4")                                  # b comes back
        wait_until(obs, lambda m: m[b.pid]["resident_pages"] >= LIMIT_PAGES // 4,
                   "b's balloon should grow back")
        a.send("stop")
        a.expect("spun 1")
        b.send("stop")
        b.expect("spun 1")
        a.ask("check 3", "ok")                            # nothing lost through the resizes
        b.ask("check 4", "ok")
    finally:
        obs.close()


def test_a_stopped_enclave_holding_the_oldest_pages_does_not_stall_the_others(domain, tmp_path):
    name, members = domain
    a, _held, b = a_holding_the_epc_then_b(name, members, tmp_path)   # a has the oldest pages
    os.kill(a.pid, signal.SIGSTOP)            # its reclaimer cannot run: only b's can
    os.waitpid(a.pid, os.WUNTRACED)
    try:
        b.ask("fill 2", "filled")             # b gets by with the few free frames and its own
        b.ask("check 2", "ok")
    finally:
        os.kill(a.pid, signal.SIGCONT)
    assert sum(stopped_resident([a, b])) <= LIMIT_PAGES
    a.ask("check 1", "ok")


def test_when_the_balloon_manager_dies_another_enclave_takes_over(domain, tmp_path):
    name, members = domain
    a, b, obs = two_suvm_enclaves(name, members, tmp_path)
    try:
        pids = {a.pid: a, b.pid: b}
        wait_until(obs, lambda m: obs.snapshot()["manager_pid"] in pids, "a manager should run")
        manager = pids[obs.snapshot()["manager_pid"]]
        other = b if manager is a else a
        other.ask("fill 1", "filled")
        other.send("spin 2")
        manager.proc.kill()                               # the manager dies holding its mutex
        manager.proc.wait()
        # The survivor's manager gets the robust mutex, the dead member is swept, and the
        # survivor, busy, is given the whole cache it may hold.
        snap = wait_until(obs, lambda m: set(m) == {other.pid}
                          and m[other.pid]["resident_pages"] >= m[other.pid]["cap_pages"] - 1,
                          "the survivor should manage and grow into the EPC")
        assert snap["manager_pid"] == other.pid and snap["deaths"] == 1
        other.send("stop")
        other.expect("spun 1")
        other.ask("check 2", "ok")
    finally:
        obs.close()

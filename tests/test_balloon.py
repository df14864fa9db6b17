"""SUVM ballooning: the enclave's page cache shrinks and grows on the host's request, and a
lying host (targets of zero, huge, flapping) can slow it down but never make it lose a page.

In-process: real SUVM instances (trusted/_native/suvm.c), the trusted balloon driver, the host's
agent and a real domain table in /dev/shm; the test plays the hostile manager by writing the
targets itself.
"""
from __future__ import annotations

import os
import random
import threading
import time

import pytest

from eleos_shim import suvm as esuvm
from eleos_shim.config import Config
from trusted.balloon import Balloon
from untrusted import epc_domain
from untrusted.balloon_host import (BalloonHost, DemandProportional, FairShare, Manager, StaticSplit,
                                    water_fill)

PAGE = 4096


def make_suvm(cache_pages: int):
    cfg = Config.from_env({}, mode="eleos", epc_mb=64, suvm_cache_mb=cache_pages * PAGE / 2**20,
                          cost="account")
    return esuvm.create(cfg)


def fill_pages(p, npages: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    ref = []
    for i in range(npages):
        data = rng.randbytes(PAGE)
        p[i * PAGE:(i + 1) * PAGE] = data
        ref.append(data)
    return ref


def test_shrinking_writes_dirty_pages_back_and_loses_nothing():
    inst = make_suvm(64)
    b = Balloon(inst)
    p = inst.malloc(128 * PAGE)
    ref = fill_pages(p, 128, 1)
    before = inst.stats()
    assert before["resident_pages"] == 64
    assert b.resize(0) == b.floor_pages == 16          # a target of 0 stops at the floor
    after = inst.stats()
    assert after["resident_pages"] <= 16
    assert after["writebacks"] - before["writebacks"] >= 48   # the dirty pages were sealed out
    assert all(p[i * PAGE:(i + 1) * PAGE] == ref[i] for i in range(128))
    assert inst.stats()["integrity_errors"] == 0
    inst.close()


def test_hostile_targets_are_clamped_to_floor_and_cap():
    inst = make_suvm(64)
    b = Balloon(inst)
    assert b.resize(2**80) == 64                       # huge: the configured cache, no more
    assert b.resize(-5) == 16
    assert b.resize(10**30) == 64
    assert b.resize("lots") == 64                      # not a number: nothing changes
    assert b.resize(None) == 64
    assert b.resize(20) == 20
    p = inst.malloc(40 * PAGE)
    fill_pages(p, 40, 2)
    assert inst.stats()["resident_pages"] <= 20        # the cache really holds 20 frames
    inst.close()


def rss_bytes() -> int:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * PAGE


def test_shrunk_frames_give_their_memory_back():
    inst = make_suvm(4096)                              # 16 MB of cache, committed at creation
    b = Balloon(inst)
    rss = rss_bytes()
    b.resize(0)
    assert rss - rss_bytes() > 12 << 20
    b.resize(4096)
    p = inst.malloc(4096 * PAGE)
    p.fill(7, 4096 * PAGE)                             # grown frames are usable again
    assert p[5 * PAGE] == 7 and p[4095 * PAGE + 9] == 7
    inst.close()


def test_resizes_racing_with_app_threads_never_lose_or_corrupt_a_page():
    inst = make_suvm(96)
    b = Balloon(inst)
    nthreads, pages_each = 4, 48
    regions = [inst.malloc(pages_each * PAGE) for _ in range(nthreads)]
    errors, stop = [], threading.Event()

    def app(k: int):
        rng = random.Random(k)
        p, ref = regions[k], {}
        while not stop.is_set() or len(ref) < pages_each:
            i = rng.randrange(pages_each)
            data = bytes([rng.randrange(256)]) * 64 + rng.randbytes(64)
            p[i * PAGE + 100:i * PAGE + 228] = data
            ref[i] = data
            j = rng.choice(list(ref))
            if p[j * PAGE + 100:j * PAGE + 228] != ref[j]:
                errors.append((k, j))
        for i, data in ref.items():
            if p[i * PAGE + 100:i * PAGE + 228] != data:
                errors.append((k, i, "final"))

    threads = [threading.Thread(target=app, args=(k,)) for k in range(nthreads)]
    for t in threads:
        t.start()
    rng = random.Random(99)
    for n in range(300):                                 # the host flaps: 0, huge, anything
        b.resize(rng.choice([0, 2**64, rng.randrange(0, 200)]))
    stop.set()
    for t in threads:
        t.join()
    assert errors == []
    st = inst.stats()
    assert st["integrity_errors"] == 0 and b.resizes == 300
    inst.close()


@pytest.fixture
def domain_name(request):
    name = f"balloon-{os.getpid()}-{request.node.name[:40]}"
    yield name
    epc_domain.remove(name)


def test_a_lying_manager_slows_the_enclave_but_never_costs_it_a_page(domain_name):
    limit = 256
    inst = make_suvm(128)
    b = Balloon(inst)
    b.resize(b.floor_pages)
    dom = epc_domain.Domain(domain_name, limit, "suvm", floor_pages=b.floor_pages, cap_pages=b.cap_pages)
    agent = BalloonHost(dom, b.resize, b.demand, cap_pages=b.cap_pages, held=b.pages())
    liar = epc_domain.Domain(domain_name, limit, "sgx")      # the hostile manager, as a member
    try:
        agent.start()
        assert agent.held == 128                             # it grew into the free EPC
        p = inst.malloc(200 * PAGE)
        ref = fill_pages(p, 200, 3)

        def settle(target: int) -> int:
            liar.set_target(dom.slot, target)
            n = agent.rounds
            assert agent.wait_rounds(n + 2, 30)              # it read the target and applied it
            snap = liar.snapshot()
            assert snap["used_pages"] <= limit
            assert {m["slot"]: m["resident_pages"] for m in snap["members"]}[dom.slot] == agent.held
            return agent.held

        assert settle(0) == b.floor_pages == b.pages()       # zero: it keeps its floor
        assert settle(2**63) == 128                          # huge: its cache, no more
        assert settle(0) == 16
        got = liar.take(limit - 16 - 20)                     # the EPC fills up ...
        assert got == limit - 16 - 20
        assert settle(2**63) == 16 + 20                      # ... so it can only take what is free
        liar.put(got)
        for k in range(200):                                 # flapping, as fast as it can write
            liar.set_target(dom.slot, 0 if k % 2 else 2**63)
        assert settle(64) == 64
        assert all(p[i * PAGE:(i + 1) * PAGE] == ref[i] for i in range(200))
        assert inst.stats()["integrity_errors"] == 0
    finally:
        agent.stop()
        liar.leave()
        dom.leave()
        inst.close()


def test_water_fill_gives_floors_first_and_caps_no_one_above_its_bound():
    members = [dict(slot=0, lo=10, hi=100), dict(slot=1, lo=10, hi=30), dict(slot=2, lo=10, hi=1000)]
    out = water_fill(200, members, lambda m: 1.0)
    assert out[1] == 30 and sum(out.values()) == 200 and out[0] == out[2] == 85
    assert water_fill(20, members, lambda m: 1.0) == {0: 10, 1: 10, 2: 10}   # floors even when short


def member(slot, resident, loads, accesses, floor=16, cap=1000, kind="suvm"):
    return dict(slot=slot, pid=1000 + slot, kind=kind, resident_pages=resident, target_pages=resident,
                floor_pages=floor, cap_pages=cap, loads=loads, returned=0, demand=accesses)


def snap(members, limit=1024):
    return dict(limit_pages=limit, members=members)


def test_demand_policy_hands_an_idle_enclaves_share_to_a_busy_one_and_back():
    mgr = Manager(None, DemandProportional())
    mgr.decide(snap([member(0, 512, 0, 0), member(1, 512, 0, 0)]), 0.0)
    # Both miss as hard as each other: equal shares.
    t = mgr.decide(snap([member(0, 512, 5000, 10000), member(1, 512, 5000, 10000)]), 1.0)
    assert t == {0: 512, 1: 512}
    # Enclave 1 goes idle (no accesses): it is taxed to its floor, 0 gets the rest.
    t = mgr.decide(snap([member(0, 512, 10000, 20000), member(1, 512, 5000, 10000)]), 2.0)
    assert t[1] == 16 and t[0] == 1000                   # all it may hold (its cap)
    # It comes back missing as hard as 0: they share again.
    t = mgr.decide(snap([member(0, 1008, 15000, 30000), member(1, 16, 25000, 40000)]), 3.0)
    assert t[1] > 256 and t[0] + t[1] == 1024


def test_demand_policy_lets_an_enclave_whose_working_set_fits_keep_it():
    mgr = Manager(None, DemandProportional())
    mgr.decide(snap([member(0, 300, 0, 0), member(1, 300, 0, 0)]), 0.0)
    # 0 hits (few misses), 1 misses: 0 keeps its 300, 1 gets the rest.
    t = mgr.decide(snap([member(0, 300, 5, 50000), member(1, 300, 9000, 10000)]), 1.0)
    assert t == {0: 300, 1: 1024 - 300}


def test_static_split_is_equal_and_leaves_sgx_members_their_pages():
    mgr = Manager(None, StaticSplit())
    t = mgr.decide(snap([member(0, 100, 0, 0), member(1, 900, 0, 0), member(2, 24, 0, 0, kind="sgx")]), 0.0)
    assert t == {0: 500, 1: 500}


class Member:
    """One SUVM enclave's balloon in a domain, in this process: cache, driver, membership."""

    def __init__(self, name: str, limit: int, cache_pages: int):
        self.inst = make_suvm(cache_pages)
        self.balloon = Balloon(self.inst)
        self.balloon.resize(self.balloon.floor_pages)
        self.dom = epc_domain.Domain(name, limit, "suvm", floor_pages=self.balloon.floor_pages,
                                     cap_pages=self.balloon.cap_pages)
        self.agent = None

    def start(self, floor_timeout: float = 30) -> None:
        held = self.dom.take_floor(self.balloon.floor_pages, floor_timeout)
        self.agent = BalloonHost(self.dom, self.balloon.resize, self.balloon.demand,
                                 cap_pages=self.balloon.cap_pages, held=held)
        self.agent.start()

    def close(self) -> None:
        if self.agent is not None:
            self.agent.stop()
        self.dom.leave()
        self.inst.close()


def settle(members, cond, timeout=30.0):
    """Let the agents turn until ``cond(helds)`` (each turn applies the manager's latest)."""
    deadline = time.monotonic() + timeout
    while True:
        snap = members[0].dom.snapshot()
        assert snap["used_pages"] <= snap["limit_pages"]
        held = [m.agent.held for m in members]
        if cond(held):
            return held
        assert time.monotonic() < deadline, held
        members[0].agent.wait_rounds(members[0].agent.rounds + 1, 5)


def test_a_balloon_joining_a_full_domain_gets_its_floor_once_the_others_shrink(domain_name):
    limit = 256
    a, b = Member(domain_name, limit, 200), Member(domain_name, limit, 200)
    members = [a, b]
    mgr = Manager(a.dom, StaticSplit())
    try:
        mgr.start()
        a.start()
        b.start()
        settle(members, lambda h: h == [128, 128])       # the EPC is all given out
        c = Member(domain_name, limit, 200)
        members.append(c)
        assert c.dom.held() == 0                          # no frame free for its floor yet
        c.start()                                         # waits until a and b shrink
        assert c.agent.held >= c.balloon.floor_pages
        settle(members, lambda h: h == [86, 85, 85] or sorted(h) == [85, 85, 86])
    finally:
        mgr.stop()
        for m in members:
            m.close()


def test_fair_share_cuts_an_enclave_whose_working_set_fits_to_an_equal_share_when_others_miss():
    mgr = Manager(None, FairShare())
    mgr.decide(snap([member(0, 600, 0, 0), member(1, 200, 0, 0), member(2, 200, 0, 0)], 1000), 0.0)
    t = mgr.decide(snap([member(0, 600, 5, 50000), member(1, 200, 9000, 10000), member(2, 200, 9000, 10000)],
                        1000), 1.0)
    assert t == {0: 334, 1: 333, 2: 333} or sorted(t.values()) == [333, 333, 334]
    # One goes idle: its floor, the other two half of the rest each.
    t = mgr.decide(snap([member(0, 334, 10, 100000), member(1, 333, 18000, 20000), member(2, 333, 9000, 10000)],
                        1000), 2.0)
    assert t[2] == 16 and t[0] == 334 and t[1] == 1000 - 16 - 334

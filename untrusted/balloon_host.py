"""SUVM ballooning, the host's half (untrusted/): the manager's policy and each enclave's agent.

In an EPC domain (untrusted/epc_domain.py) an SUVM enclave's page cache is a balloon: it holds
some of the domain's frames, between a floor it needs to make progress and the cache it was
configured with.  Two pieces run on the host:

* :class:`BalloonHost`, one per SUVM enclave: it keeps the domain's count of the enclave's
  frames equal to what the enclave holds.  When the manager writes a lower target it asks the
  enclave to shrink (an ECALL into trusted/balloon.py, which evicts in the enclave) and gives
  the freed frames back; for a higher one it first takes free frames from the domain, then lets
  the enclave grow into exactly those.  So the sum over the domain never exceeds the EPC, even
  while targets move.  It also publishes the enclave's own report of its demand.
* :class:`Manager`: every SUVM member runs one, and the one holding the domain's robust
  manager mutex acts (when its process dies the mutex passes to another).  Every
  ``interval`` it reads the table, turns the members' reports into rates and writes targets
  from a :class:`Policy`: :class:`StaticSplit` (the EPC left by SGX members, split equally),
  :class:`DemandProportional` (idle enclaves keep their floor, as VMware's idle memory tax
  takes idle memory first; enclaves that miss share the rest in proportion to their miss
  rates; those that hit keep what they have: the most throughput) or :class:`FairShare`
  (the same idle tax, then max-min fair shares among the active ones).

Both are untrusted: a lying manager or agent can make an enclave slow, never make it lose a
page (trusted/balloon.py clamps and seals).
"""
from __future__ import annotations

import threading
import time
from typing import Callable

from untrusted.threads import host_thread

# How often the agent re-reads its target even without a wake-up (frames freed by a member
# that shrank become takeable), and how often the manager decides: targets follow a change
# of load within a few rounds, well within the seconds the issue asks for.
AGENT_INTERVAL_S = 0.1
MANAGER_INTERVAL_S = 0.25
# A member is idle below this many accesses per second, and hungry when more than this
# fraction of its accesses miss (and it misses more than HUNGRY_RATE times a second).
IDLE_RATE = 20.0
HUNGRY_RATIO = 0.01
HUNGRY_RATE = 20.0
RATE_SMOOTHING = 0.5     # EWMA weight of the newest round
# Room left per round for an SGX member that is faulting in a mixed domain: its driver cannot
# be asked to shrink, so balloons make way for it, a few reclaim batches at a time.
SGX_GROWTH_PAGES = 64
# Targets move only by more than 1/HYSTERESIS_FRACTION of the EPC: rates are noisy, and a
# resize costs the enclave evictions now and refaults later.
HYSTERESIS_FRACTION = 32
LOG_MAX = 400


def water_fill(avail: int, members: list[dict], weight: Callable[[dict], float]) -> dict[int, int]:
    """Targets (by slot): each member its ``lo`` first, then what is left of ``avail`` in
    proportion to ``weight``, none above its ``hi``."""
    out = {m["slot"]: m["lo"] for m in members}
    left = avail - sum(out.values())
    open_ = [m for m in members if m["hi"] > out[m["slot"]] and weight(m) > 0]
    while left > 0 and open_:
        total = sum(weight(m) for m in open_)
        given = 0
        for m in open_:
            share = int(left * weight(m) / total)
            room = m["hi"] - out[m["slot"]]
            g = min(room, share)
            out[m["slot"]] += g
            given += g
        if given == 0:                       # rounding: hand out the remainder one by one
            for m in open_:
                if left - given <= 0:
                    break
                if out[m["slot"]] < m["hi"]:
                    out[m["slot"]] += 1
                    given += 1
        left -= given
        open_ = [m for m in open_ if m["hi"] > out[m["slot"]]]
        if given == 0:
            break
    return out


class Policy:
    """Turns the domain's state into a target per SUVM member (pages)."""
    name = "policy"

    def targets(self, avail: int, members: list[dict]) -> dict[int, int]:
        raise NotImplementedError


class StaticSplit(Policy):
    """Every SUVM enclave the same share of the EPC that SGX members leave, within its bounds."""
    name = "static"

    def targets(self, avail, members):
        return water_fill(avail, [dict(m, lo=m["floor_pages"], hi=m["cap_pages"]) for m in members],
                          lambda m: 1.0)


def activity(m: dict) -> str:
    """``idle`` (no accesses to speak of), ``hungry`` (it misses), or ``fits`` (it hits: its
    working set fits in what it holds), from the rates the manager measured."""
    miss, acc = m.get("raw_miss_rate", m.get("miss_rate", 0.0)), m.get("access_rate", 0.0)
    if acc < IDLE_RATE:
        return "idle"
    if miss > HUNGRY_RATE and miss > HUNGRY_RATIO * acc:
        return "hungry"
    return "fits"


class DemandProportional(Policy):
    """Idle enclaves are taxed down to their floor; enclaves whose working set fits keep what
    they hold; the rest is shared by the enclaves that miss, in proportion to their miss rates."""
    name = "demand"

    def targets(self, avail, members):
        spec = []
        for m in members:
            floor, cap, held = m["floor_pages"], m["cap_pages"], m["resident_pages"]
            kind = activity(m)
            if kind == "idle":
                spec.append(dict(m, lo=floor, hi=floor, w=0.0))
            elif kind == "hungry":
                raw = m.get("raw_miss_rate", m.get("miss_rate", 0.0))
                spec.append(dict(m, lo=floor, hi=cap, w=max(m.get("miss_rate", 0.0), raw / 2)))
            else:
                spec.append(dict(m, lo=max(floor, min(held, cap)), hi=max(floor, min(held, cap)), w=0.0))
        fixed = sum(s["lo"] for s in spec)
        if fixed > avail:   # the satisfied ones are asked to give up some too: back to floors
            for s in spec:
                s["lo"] = s["floor_pages"]
                s["hi"] = max(s["hi"], s["floor_pages"])
                if s["w"] == 0.0 and s["hi"] > s["lo"]:
                    s["w"] = 1.0
        return water_fill(avail, spec, lambda s: s["w"])


class FairShare(Policy):
    """Idle enclaves are taxed down to their floor; the active ones get max-min fair shares: an
    enclave whose working set fits wants no more than it holds, one that misses wants its whole
    cache, and each gets the smaller of what it wants and an equal share of what is left."""
    name = "fair"

    def targets(self, avail, members):
        spec = []
        for m in members:
            floor, cap, held = m["floor_pages"], m["cap_pages"], m["resident_pages"]
            hi = {"idle": floor, "hungry": cap}.get(activity(m), max(floor, min(held, cap)))
            spec.append(dict(m, lo=floor, hi=hi))
        return water_fill(avail, spec, lambda s: 1.0)


POLICIES: dict[str, type[Policy]] = {"static": StaticSplit, "demand": DemandProportional,
                                     "fair": FairShare}


class BalloonHost:
    """One SUVM enclave's agent in its domain.  ``resize(pages) -> pages`` and ``demand() ->
    (misses, accesses)`` are the enclave's balloon entry points (trusted/balloon.py), handed
    over by the loader; ``held`` is what the domain counts for it (its floor at join)."""

    def __init__(self, domain, resize: Callable[[int], int], demand: Callable[[], tuple[int, int]],
                 *, cap_pages: int, held: int, interval_s: float = AGENT_INTERVAL_S):
        self.domain = domain
        self._resize = resize
        self._demand = demand
        self.cap_pages = cap_pages
        self.held = held
        self.interval_s = interval_s
        self.changes: list[tuple[float, int, int]] = []   # (t, target, held)
        self._t0 = time.monotonic()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.rounds = 0                       # loop turns done (each re-reads the target)
        self.slowest_apply_s = 0.0
        self._turned = threading.Condition()

    def wait_rounds(self, n: int, timeout_s: float) -> bool:
        """Wait until the agent has done ``n`` turns (each applies the target it read)."""
        with self._turned:
            return self._turned.wait_for(lambda: self.rounds >= n, timeout_s)

    def apply(self, target: int) -> int:
        """Bring the enclave's cache towards ``target`` pages as far as free frames allow."""
        with self._lock:
            want = max(0, min(int(target), self.cap_pages))
            before = self.held
            if want < self.held:
                now = self._resize(want)
                if now < self.held:
                    self.domain.put(self.held - now)
                    self.held = now
            elif want > self.held:
                got = self.domain.take(want - self.held)
                if got:
                    asked = self.held + got
                    now = min(self._resize(asked), asked)
                    if now < asked:
                        self.domain.put(asked - now)
                    self.held = now
            if self.held != before:
                self.changes.append((round(time.monotonic() - self._t0, 3), int(target), self.held))
            return self.held

    def start(self) -> None:
        # Start with half of what is free (up to the cache configured), leaving room for the
        # floors of enclaves that join next; a manager moves it from there.  The target says
        # so, so that the loop below does not undo it.
        free = self.domain.snapshot()["free_pages"]
        self.apply(min(self.cap_pages, self.held + free // 2))
        self.domain.set_target(self.domain.slot, self.held)
        self._thread = host_thread(self._run, "eleos-balloon-agent")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            target, seq = self.domain.target()
            t = time.monotonic()
            self.apply(target)
            self.slowest_apply_s = max(self.slowest_apply_s, time.monotonic() - t)
            misses, accesses = self._demand()
            self.domain.publish(misses, 0, accesses)
            with self._turned:
                self.rounds += 1
                self._turned.notify_all()
            self.domain.wait_target(seq, self.interval_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None


class Manager:
    """The domain's balloon policy, run by whichever member holds the manager mutex."""

    def __init__(self, domain, policy: Policy, *, interval_s: float = MANAGER_INTERVAL_S):
        self.domain = domain
        self.policy = policy
        self.interval_s = interval_s
        self.rounds = 0
        self.log: list[dict] = []        # each round's view and targets (the last LOG_MAX)
        self._last: dict[int, tuple[float, int, int]] = {}    # slot -> (t, misses, accesses)
        self._rates: dict[int, tuple[float, float]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def decide(self, snap: dict, now: float) -> dict[int, int]:
        """One round: targets (by slot) for the SUVM members of ``snap``."""
        suvm = [m for m in snap["members"] if m["kind"] == "suvm"]
        sgx = [m for m in snap["members"] if m["kind"] != "suvm"]
        # SGX members' pages are theirs (the SGX driver cannot be asked to shrink); one that
        # faulted since the last round is growing: leave it room to grow into.
        grow = 0
        for m in sgx:
            last = self._last.get(-1 - m["slot"])
            if last is not None and m["loads"] > last[1]:
                grow += SGX_GROWTH_PAGES
            self._last[-1 - m["slot"]] = (now, m["loads"], 0)
        avail = max(0, snap["limit_pages"] - sum(m["resident_pages"] for m in sgx) - grow)
        for m in suvm:
            slot = m["slot"]
            last = self._last.get(slot)
            miss_r, _ = self._rates.get(slot, (0.0, 0.0))
            acc_r = 0.0
            if last is not None and now > last[0] and m["loads"] >= last[1] and m["demand"] >= last[2]:
                dt = now - last[0]
                # The weight is smoothed (a round of noise moves no memory); idleness is not
                # (an enclave that stopped is taxed at the next round, not after several).
                miss_r = RATE_SMOOTHING * (m["loads"] - last[1]) / dt + (1 - RATE_SMOOTHING) * miss_r
                acc_r = (m["demand"] - last[2]) / dt
                raw_miss = (m["loads"] - last[1]) / dt
            else:
                raw_miss = 0.0
            self._last[slot] = (now, m["loads"], m["demand"])
            self._rates[slot] = (miss_r, acc_r)
            m["miss_rate"], m["access_rate"], m["raw_miss_rate"] = miss_r, acc_r, raw_miss
        live = {m["slot"] for m in suvm} | {-1 - m["slot"] for m in sgx}
        for slot in list(self._last):
            if slot not in live:
                self._last.pop(slot, None)
                self._rates.pop(slot, None)
        targets = self.policy.targets(avail, suvm) if suvm else {}
        self.log.append({"t": round(now, 3), "avail": avail, "members": {
            m["slot"]: [m["resident_pages"], targets.get(m["slot"]), round(m["miss_rate"]),
                        round(m["access_rate"])] for m in suvm}})
        del self.log[:-LOG_MAX]
        return targets

    def round(self) -> dict[int, int]:
        snap = self.domain.snapshot()
        targets = self.decide(snap, time.monotonic())
        current = {m["slot"]: m["target_pages"] for m in snap["members"]}
        floors = {m["slot"]: m["floor_pages"] for m in snap["members"]}
        # A small move costs evictions and refaults for little: only moves beyond the
        # hysteresis are made (and any move to or from a floor: an idle enclave's tax).
        step = max(16, snap["limit_pages"] // HYSTERESIS_FRACTION)
        for slot, t in targets.items():
            old = current.get(slot)
            if old is None or (old != t and (abs(t - old) >= step or floors.get(slot) in (t, old))):
                self.domain.set_target(slot, t)
        self.rounds += 1
        return targets

    def start(self) -> None:
        self._thread = host_thread(self._run, "eleos-balloon-manager")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.domain.manage(0.2):
                continue
            try:
                while not self._stop.is_set():
                    self.round()
                    self._stop.wait(self.interval_s)
            finally:
                self.domain.unmanage()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

"""The readable stats report, ``ELEOS_STATS=-`` (eleos_shim/: reads only the stats dict).

It answers "how much of my app's time is the enclave, where, and what would Eleos save":
one summary line (wall time, time in modeled events and its share, exits remaining and
why, what the other mode's model would have charged for the same calls), then per call name
(count, paths, mean latency as the app saw it, modeled cost), per modeled event (count,
budget, paid, real, spun, overruns), the I/O the shim did not route, and with
``ELEOS_PROFILE=1`` the top exit sites.  Keys that a stats dict lacks (an older cost model,
native mode) are left out, never shown as zero.
"""
from __future__ import annotations

from eleos_shim.profile import event_cycles
from eleos_shim.stats import EPC_KEYS, SUVM_KEYS

EVENT_KEYS = ("count", "budget_cycles", "paid_cycles", "real_cycles", "spun_cycles", "overruns")
TOP_SITES = 10


def _ms(cycles: float, tsc_hz: float | None) -> str:
    if not tsc_hz:
        return f"{cycles:,.0f} cycles"
    return _time(cycles / tsc_hz)


def _time(s: float) -> str:
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.1f} ms"
    if s == 0:
        return "0"
    return f"{s * 1e6:.1f} us" if s < 1e-5 else f"{s * 1e6:.0f} us"


def modeled(stats: dict) -> tuple[float, float | None]:
    """(seconds in modeled events, share of wall time): the cost model's own figures when it
    gives them, else the transitions' modeled cycles."""
    s = stats.get("modeled_s")
    if s is None:
        s = stats.get("transitions", {}).get("modeled_s", 0.0)
    share = stats.get("modeled_share")
    if share is None and stats.get("wall_s"):
        share = s / stats["wall_s"]
    return s, share


def exits_line(stats: dict) -> str:
    ex = stats.get("exits") or {}
    parts = [f"{n:,} {why.split(' (')[0]}" for why, n in ex.get("why", {}).items() if n]
    rest = ex.get("total", 0) - sum(ex.get("why", {}).values())
    if rest > 0:
        parts.append(f"{rest:,} the shim's own")
    return f"{ex.get('total', 0):,} exits remain" + (f" ({', '.join(parts)})" if parts else "")


def what_if(stats: dict) -> list[str]:
    """What the other mode's model would have charged for the same calls and faults."""
    tsc_hz = stats.get("tsc_mhz", 0) * 1e6 or None
    cyc = event_cycles(stats)
    calls = stats.get("calls", {})
    out = []
    exits = sum(c.get("ocall", 0) + c.get("fallback", 0) for c in calls.values())
    if stats["syscalls"] == "ocall" and exits:
        out.append(f"under rpc these {exits:,} call exits would cost ~0 (the ring makes no exit; "
                   f"a call that falls back costs an OCALL)")
    n = sum(c.get("count", 0) for c in calls.values())
    if stats["syscalls"] in ("rpc", "direct") and n:
        now = f" (now {exits:,} exits: {_ms(exits * cyc['ocall'], tsc_hz)})" if exits else ""
        out.append(f"under sgx (ocall) these {n:,} calls would cost "
                   f"{_ms(n * cyc['ocall'], tsc_hz)}{now}")
    faults = stats.get("epc", {}).get("faults", 0)
    if stats["memory"] == "epc" and faults:
        out.append(f"under suvm these {faults:,} EPC faults would be in-enclave misses: no exit, "
                   f"~0 modeled (they cost {_ms(faults * cyc['epc_fault'], tsc_hz)} now)")
    misses = stats.get("suvm", {}).get("faults", 0)
    if stats["memory"] == "suvm" and misses:
        out.append(f"under sgx paging, if each of these {misses:,} SUVM misses were an EPC fault, "
                   f"{_ms(misses * cyc['epc_fault'], tsc_hz)}")
    return out


def summary(stats: dict) -> str:
    s, share = modeled(stats)
    wall = stats.get("wall_s")
    head = f"wall {wall:.3f} s" if wall is not None else "wall ?"
    share_txt = f" ({share:.1%} of wall)" if share is not None else ""
    line = f"{head}; modeled events {_time(s)}{share_txt}; {exits_line(stats)}"
    return "; ".join([line] + what_if(stats))


def _calls_table(stats: dict) -> list[str]:
    calls = stats.get("calls") or {}
    if not calls:
        native = stats["mode"] == "native" and stats["syscalls"] == "direct"
        return ["  no routed calls" + (" (native mode: no enclave)" if native else "")]
    tsc_hz = stats.get("tsc_mhz", 0) * 1e6 or None
    per_exit = event_cycles(stats)["ocall"]
    timed = any("mean_us" in c for c in calls.values())
    head = f"  {'call':<14}{'count':>9}{'direct':>9}{'ocall':>9}{'rpc':>9}{'fallback':>9}"
    head += f"{'mean':>10}" if timed else ""
    head += f"{'modeled':>11}{'per call':>10}"
    lines = [head]
    for name in sorted(calls, key=lambda n: -calls[n]["count"]):
        c = calls[name]
        cost = (c.get("ocall", 0) + c.get("fallback", 0)) * per_exit
        row = (f"  {name:<14}{c['count']:>9,}{c.get('direct', 0):>9,}{c.get('ocall', 0):>9,}"
               f"{c.get('rpc', 0):>9,}{c.get('fallback', 0):>9,}")
        if timed:
            row += f"{c['mean_us']:>8.1f}us" if "mean_us" in c else f"{'':>10}"
        row += f"{_ms(cost, tsc_hz):>11}{_ms(cost / c['count'], tsc_hz) if c['count'] else '':>10}"
        lines.append(row)
    if timed:
        cyc = event_cycles(stats)
        parts = (f" = {_ms(cyc['ocall'] - cyc['indirect'], tsc_hz)} exit + "
                 f"{_ms(cyc['indirect'], tsc_hz)} indirect" if cyc["indirect"] else "")
        lines.append("  (mean: a call's time in the enclave's stub, as its thread waited for it: "
                     "the exit or the ring, the host's syscall; modeled: its exits x "
                     f"{_ms(per_exit, tsc_hz)} an exit{parts})")
    return lines


def _events_table(stats: dict) -> list[str]:
    events = stats.get("events")
    tsc_hz = stats.get("tsc_mhz", 0) * 1e6 or None
    if not events:
        t = stats["transitions"]
        return [f"transitions: eenter={t['eenter']:,} eexit={t['eexit']:,} aex={t['aex']:,} "
                f"eresume={t['eresume']:,} modeled_cycles={t['modeled_cycles']:,} "
                f"({_time(t.get('modeled_s', 0.0))})"]
    lines = [f"  {'event':<11}{'count':>9}{'budget':>11}{'paid':>11}{'real':>11}{'spun':>11}"
             f"{'overruns':>9}{'per event':>11}"]
    for name, e in events.items():
        n = e.get("count", 0)
        if not n:
            continue
        lines.append(f"  {name:<11}{n:>9,}" + "".join(
            f"{_ms(e.get(k, 0), tsc_hz):>11}" for k in EVENT_KEYS[1:5])
            + f"{e.get('overruns', 0):>9,}{_ms(e.get('budget_cycles', 0) / n, tsc_hz):>11}")
    lines.append("  (budget: what the model charges; real: what the shim ran on the event's "
                 "path; spun: the TSC spin that paid the rest)")
    return lines


def _unrouted(stats: dict) -> list[str]:
    if stats["mode"] == "native" and not stats.get("calls"):
        return []
    writes = (stats.get("unrouted") or {}).get("write_syscalls")
    if stats.get("stdio_routed"):
        what = "stdout/stderr are routed (counted under write)"
    else:
        what = "stdout/stderr (print) are NOT routed: they go straight to the host and no exit is charged"
    if writes:
        what += (f"; {writes:,} write syscalls did not go through the shim (print, "
                 f"_io or posix called directly, the stats file...)")
    return [f"unrouted I/O: {what}"]


def _tracer_lost(r: dict) -> str:
    """One line for a thread whose fault tracer was taken away (eleos_shim/profile.py)."""
    where = f" ({r['site']})" if r.get("site") else ""
    if r.get("back_at_s") is None:
        after = "not back: its later faults are in no line"
    else:
        after = f"back at {r['back_at_s']:.3f} s, {r['faults_missed']:,} faults in between in no line"
    return (f"  ! fault tracer of thread {r['thread']} lost at {r['at_s']:.3f} s{where}: "
            f"{r['how']}; {after}")


def _sites(stats: dict) -> list[str]:
    prof = stats.get("profile")
    if prof is None:
        return []
    sites = prof.get("sites", [])
    tsc_hz = stats.get("tsc_mhz", 0) * 1e6 or None
    lines = [f"exit sites (ELEOS_PROFILE=1), top {min(TOP_SITES, len(sites))} of {len(sites)} "
             f"by modeled cost:"]
    lines += [_tracer_lost(lost) for lost in prof.get("tracer_lost") or ()]
    if not sites:
        return lines + ["  none: no exit or fault happened"]
    lines.append(f"  {'ocall':>8}{'fallback':>9}{'epc_fault':>10}{'suvm_miss':>10}{'modeled':>11}  site")
    for r in sites[:TOP_SITES]:
        lines.append(f"  {r['ocall']:>8,}{r['fallback']:>9,}{r['epc_fault']:>10,}"
                     f"{r['suvm_fault']:>10,}{_ms(r['modeled_cycles'], tsc_hz):>11}  {r['site']}")
    return lines


def report(stats: dict) -> str:
    lines = [f"eleos-shim stats: mode={stats['mode']} syscalls={stats['syscalls']} "
             f"memory={stats['memory']} cost={stats.get('cost', '?')}"
             + (f" tsc={stats['tsc_mhz']:,.0f}MHz" if stats.get("tsc_mhz") else "")
             + (f" time_scale=x{stats['time_scale']:g}" if stats.get("time_scale", 1) != 1 else ""),
             "where the time went: " + summary(stats)]
    lines += _calls_table(stats)
    lines += _events_table(stats)
    if stats["syscalls"] == "rpc":
        r = stats["rpc"]
        lines.append(f"rpc: processed={r['processed']:,} fallbacks={r['fallbacks']:,} "
                     f"workers={r.get('workers', 0)} worker_cpu={r['worker_cpu_s']:.3f}s"
                     + (f" waits={r['wait']} blocked_in_place={r.get('waits_blocked', 0):,}"
                        if "wait" in r else ""))
        why = {k: v for k, v in (r.get("fallback_why") or {}).items() if v}
        if why:
            lines.append("  fallbacks by reason: " + " ".join(f"{k}={v}" for k, v in why.items()))
    ex = stats.get("exits") or {}
    lines.append(f"exits remaining: {ex.get('total', 0):,}")
    for why, n in ex.get("why", {}).items():
        if n:
            lines.append(f"  {n:>10,}  {why}")
    if stats["memory"] == "epc":
        e = stats["epc"]
        lines.append("epc: " + " ".join(f"{k}={e.get(k, 0):,}" for k in EPC_KEYS))
    if stats["memory"] == "suvm":
        s = stats["suvm"]
        lines.append("suvm: " + " ".join(f"{k}={s.get(k, 0):,}" for k in SUVM_KEYS))
    lines += _unrouted(stats)
    lines += _sites(stats)
    return "\n".join(lines)

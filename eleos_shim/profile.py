"""Where the enclave's time goes, per call and per source line (eleos_shim/: knows both halves).

Two probes, installed by the loader only when asked for, so an app that asks for neither runs
the transport's own bound methods with nothing in between:

- **The call clock** (whenever ``ELEOS_STATS`` is set): the transport's three entry points
  (``call``, ``data_out``, ``data_in``) are wrapped so that each routed call's latency, as the
  app's thread saw it (staging, the exit or the ring, the host's syscall, the checks), is
  summed per ABI op in a per-thread list.  Cost: two ``perf_counter_ns`` and two list
  updates, ~0.15 us a call (README, "Stats").
- **Exit sites** (``ELEOS_PROFILE=1``, as sgx-perf does for SDK enclaves): every call that
  left the enclave (an OCALL, an RPC fallback; the C stub says which path this thread's last
  call took) is charged to the app's own source line, the first frame outside the stdlib and
  the shim.  EPC faults (AEX) and SUVM misses happen in the app's own bytecode, not in a
  call, so a line tracer on the app's frames reads the fault counters at each line and
  charges what they grew by to the line the thread ran before.  With one app thread the
  attribution is exact; with several, a fault can land on a line another thread ran at the
  same time (the totals stay exact).

:func:`extend` adds what the probes saw to the stats dict: ``calls[name]["mean_us"]``,
``profile`` {``sites``: [...], ``overhead``}, ``unrouted`` (write syscalls the shim did not
route: print/stdout/stderr, ``io.FileIO``) and ``model`` (the per-event budgets the report uses
to say what the other mode would have charged).
"""
from __future__ import annotations

import os
import posix
import sys
import sysconfig
import threading
import time

from eleos_shim import abi

_N_OPS = max(abi.OP_NAMES) + 1
_EXIT_PATHS = {abi.PATH_OCALL: "ocall", abi.PATH_NAMES.index("fallback"): "fallback"}
_ENTRY_POINTS = ("call", "data_out", "data_in")
# Where the shim and the stdlib live: a frame from here is not "the app's line".
_SHIM_DIRS = tuple(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), d)
                   + os.sep for d in ("eleos_shim", "trusted", "untrusted"))
_STDLIB_DIRS = tuple({f(sysconfig.get_paths()[k]) + os.sep for k in ("stdlib", "platstdlib")
                      for f in (os.path.realpath, os.path.abspath)})


def _proc_io(field: str) -> int | None:
    """A counter of /proc/self/io (``syscw``: write syscalls of every thread), or None."""
    try:   # posix, not open(): the LibOS routes open, and the shim's own I/O is not the app's
        fd = posix.open("/proc/self/io", posix.O_RDONLY | posix.O_CLOEXEC)
        try:
            text = posix.read(fd, 4096)
        finally:
            posix.close(fd)
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field.encode() + b":"):
            return int(line.split()[1])
    return None


class Probe:
    """The probes of one enclave (see the module docstring)."""

    def __init__(self, enclave):
        self.enclave = enclave
        self.cfg = enclave.cfg
        self._tls = threading.local()
        self._clocks: list[list[int]] = []      # per thread: ns per op, then count per op
        self._lock = threading.Lock()
        self.sites: dict[tuple[str, str], int] = {}
        self._app_code: dict[object, str | None] = {}
        self._tracing = False
        self._syscw0 = _proc_io("syscw")

    # -- the call clock and exit sites ---------------------------------------------------------
    def install(self) -> None:
        transport = self.enclave.transport
        if self.cfg.profile:
            from trusted._native._enclave import lib as elib
            self._last_path = elib.enclave_last_path
        for name in _ENTRY_POINTS:
            setattr(transport, name, self._wrap(getattr(transport, name)))
        if self.cfg.profile:
            self._install_fault_tracer()

    def _new_clock(self) -> list[int]:
        acc = [0] * (2 * _N_OPS)
        self._tls.acc = acc
        with self._lock:
            self._clocks.append(acc)
        return acc

    def _wrap(self, fn):
        clock, tls, new_clock, n = time.perf_counter_ns, self._tls, self._new_clock, _N_OPS
        if not self.cfg.profile:
            def timed(op, *args, **kwargs):
                try:
                    acc = tls.acc
                except AttributeError:
                    acc = new_clock()
                t = clock()
                ret = fn(op, *args, **kwargs)
                acc[op] += clock() - t
                acc[n + op] += 1
                return ret
            return timed
        last_path, exits, charge = self._last_path, _EXIT_PATHS, self._charge_exit

        def profiled(op, *args, **kwargs):
            try:
                acc = tls.acc
            except AttributeError:
                acc = new_clock()
            t = clock()
            ret = fn(op, *args, **kwargs)
            acc[op] += clock() - t
            acc[n + op] += 1
            kind = exits.get(last_path())
            if kind is not None:
                charge(kind, sys._getframe(1))
            return ret
        return profiled

    def _charge_exit(self, kind: str, frame) -> None:
        key = (self._site(frame), kind)
        self.sites[key] = self.sites.get(key, 0) + 1

    def _app_site(self, code) -> str | None:
        """``path:line``'s path part for the app's own code, None for the stdlib and the shim."""
        try:
            return self._app_code[code]
        except KeyError:
            pass
        path = code.co_filename
        # abspath, not realpath: its lstat would be the app's routed call, and an exit
        real = os.path.abspath(path) if not path.startswith("<") else path
        if path.startswith("<") or real.startswith(_SHIM_DIRS) or real.startswith(_STDLIB_DIRS):
            site = None
        else:
            site = os.path.relpath(real) if real.startswith(os.getcwd() + os.sep) else real
        self._app_code[code] = site
        return site

    def _site(self, frame) -> str:
        first = frame
        while frame is not None:
            path = self._app_site(frame.f_code)
            if path is not None:
                return f"{path}:{frame.f_lineno} ({frame.f_code.co_name})"
            frame = frame.f_back
        return f"(no app frame: {first.f_code.co_filename}:{first.f_lineno})"

    # -- faults: a line tracer on the app's own frames ----------------------------------------
    def _fault_counter(self):
        """A function returning the enclave's fault count (EPC faults or SUVM misses) in one
        C call, and the kind's name; None if the heap has none."""
        memory = self.enclave.memory
        if self.cfg.memory == "epc" and memory is not None:
            from untrusted._native._epc import ffi, lib
            from untrusted.epc import STAT_FIELDS
            out, idx = ffi.new("uint64_t[]", 64), STAT_FIELDS.index("faults")

            def epc_faults() -> int:
                lib.epc_driver_stats(out)
                return out[idx]
            return epc_faults, "epc_fault"
        if self.cfg.memory == "suvm" and memory is not None:
            from trusted._native._suvm import ffi, lib
            from trusted.suvm import STAT_KEYS
            out, idx, h = ffi.new("uint64_t[]", lib.SUVM_ST_COUNT), STAT_KEYS.index("faults"), memory._h

            def suvm_faults() -> int:
                lib.suvm_stats(h, out)
                return out[idx]
            return suvm_faults, "suvm_fault"
        return None

    def _install_fault_tracer(self) -> None:
        found = self._fault_counter()
        if found is None:
            return
        read, kind = found
        last = [read()]
        tls, sites, app_site = self._tls, self.sites, self._app_site

        def local(frame, event, arg):
            n = read()
            if n != last[0]:
                key = (getattr(tls, "line", None) or self._site(frame), kind)
                sites[key] = sites.get(key, 0) + n - last[0]
                last[0] = n
            if event == "line":
                tls.line = f"{app_site(frame.f_code)}:{frame.f_lineno} ({frame.f_code.co_name})"
            elif event == "return":
                tls.line = None
            return local

        def on_call(frame, event, arg):
            return local if app_site(frame.f_code) is not None else None
        self._tracing = True
        threading.settrace(on_call)
        sys.settrace(on_call)

    def stop(self) -> None:
        if self._tracing:
            sys.settrace(None)
            threading.settrace(None)
            self._tracing = False

    # -- into the stats ----------------------------------------------------------------------
    def latency(self) -> dict[str, tuple[int, int]]:
        """Per call name: (total ns, calls timed)."""
        with self._lock:
            clocks = list(self._clocks)
        out = {}
        for op, name in abi.OP_NAMES.items():
            ns = sum(a[op] for a in clocks)
            n = sum(a[_N_OPS + op] for a in clocks)
            if n:
                out[name.lower()] = (ns, n)
        return out

    def unrouted_writes(self, stats: dict) -> int | None:
        """Write syscalls this process made that the shim did not route: every thread's
        ``syscw`` since start-up minus the routed writes the host made for the app."""
        now = _proc_io("syscw")
        if now is None or self._syscw0 is None:
            return None
        routed = sum(stats["calls"].get(k, {}).get("count", 0) for k in ("write", "pwrite"))
        return max(0, now - self._syscw0 - routed)


def install(enclave) -> Probe | None:
    """Install the probes the configuration asks for (none without ELEOS_STATS/PROFILE)."""
    cfg = enclave.cfg
    if enclave.transport is None or not (cfg.stats or cfg.profile):
        return None
    probe = Probe(enclave)
    probe.install()
    return probe


def _stdio_routed() -> bool:
    """Does the app's ``sys.stdout`` write through the LibOS (trusted/) or straight to fd 1?"""
    raw = getattr(getattr(sys.stdout, "buffer", None), "raw", None)
    return raw is not None and type(raw).__module__.startswith("trusted")


def event_cycles(stats: dict) -> dict[str, float]:
    """Mean modeled cycles per event kind: from ``events`` when the cost model reports them,
    else from the configured transition budgets in ``model``."""
    model = stats.get("model", {})
    events = stats.get("events") or {}

    def mean(name: str) -> float | None:
        e = events.get(name) or {}
        return e["budget_cycles"] / e["count"] if e.get("count") else None
    indirect = mean("indirect")
    if indirect is None:
        indirect = model.get("indirect_cycles") or 0
    ocall = mean("ocall") or model.get("ocall_cycles", 0)
    fault = mean("epc_fault") or model.get("fault_cycles", 0)
    return {"ocall": ocall + indirect, "fallback": ocall + indirect,
            "epc_fault": fault + indirect, "suvm_fault": 0.0, "indirect": indirect}


def extend(stats: dict, enclave) -> dict:
    """Add what the probes saw, and the model's budgets, to ``stats`` (in place)."""
    cfg = enclave.cfg
    indirect = next((getattr(cfg, f) for f in sorted(vars(cfg)) if "indirect" in f
                     and f.endswith("cycles")), None)
    stats["model"] = {"ocall_cycles": cfg.eexit_cycles + cfg.eenter_cycles,
                      "fault_cycles": cfg.aex_cycles + cfg.eresume_cycles,
                      "indirect_cycles": indirect, "pollute_kb": cfg.pollute_kb}
    stats["stdio_routed"] = _stdio_routed()
    probe = getattr(enclave, "probe", None)
    if probe is None:
        return stats
    probe.stop()
    for name, (ns, n) in probe.latency().items():
        if name in stats["calls"]:
            stats["calls"][name]["mean_us"] = ns / n / 1e3
    stats["unrouted"] = {"write_syscalls": probe.unrouted_writes(stats)}
    if cfg.profile:
        cycles = event_cycles(stats)
        tsc_hz = stats.get("tsc_mhz", 0) * 1e6 or None
        rows: dict[str, dict] = {}
        for (site, kind), n in probe.sites.items():
            row = rows.setdefault(site, {"site": site, "ocall": 0, "fallback": 0,
                                         "epc_fault": 0, "suvm_fault": 0, "modeled_cycles": 0.0})
            row[kind] += n
            row["modeled_cycles"] += n * cycles.get(kind, 0.0)
        for row in rows.values():
            row["modeled_ms"] = row["modeled_cycles"] / tsc_hz * 1e3 if tsc_hz else None
        stats["profile"] = {"sites": sorted(rows.values(), key=lambda r: (-r["modeled_cycles"],
                                            -(r["ocall"] + r["fallback"] + r["epc_fault"]
                                              + r["suvm_fault"])))}
    return stats

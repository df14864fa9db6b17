"""Where the enclave's time goes, per call and per source line (eleos_shim/: knows both halves).

- **Mean latency per call** (whenever ``ELEOS_STATS`` is set): the enclave's stub times each
  call in C (``enclave_call_cycles``: two rdtsc, 15-30 ns a call; off, one predicted branch),
  from which the report gives each call name's mean time in the crossing (the exit or the
  ring, and the host's syscall).
- **Exit sites** (``ELEOS_PROFILE=1``, as sgx-perf does for SDK enclaves): every call that
  left the enclave (an OCALL, an RPC fallback; the C stub says which path this thread's last
  call took) is charged to the app's own source line, the first frame outside the stdlib and
  the shim.  EPC faults (AEX) and SUVM misses happen in the app's own bytecode, not in a
  call, so a line tracer on the app's frames reads the fault counters at each line and
  charges what they grew by to the line the thread ran before.  With one app thread the
  attribution is exact; with several, a fault can land on a line another thread ran at the
  same time (the totals stay exact).  Installed only when asked for: without it the LibOS
  calls the transport's own bound methods, with nothing in between.
- **The app's own tracer** (a debugger, coverage, ``trace``): CPython has one trace function
  per thread, so :class:`TraceChain` keeps the profile's installed and runs the app's behind
  it: ``sys.settrace``/``gettrace`` and ``threading.settrace``/``gettrace`` are the chain's,
  and the app's tracer gets exactly the events it would get alone.  A tracer installed past
  them (C's ``PyEval_SetTrace``, as coverage's C tracer does) replaces the profile's; that is
  noticed at the thread's next routed call (and at exit) and said in the report.

:func:`extend` adds what the probes saw to the stats dict: ``calls[name]["mean_us"]``,
``profile`` {``sites``: [...]}, ``unrouted`` (write syscalls the shim did not
route: print/stdout/stderr, ``io.FileIO``) and ``model`` (the per-event budgets the report uses
to say what the other mode would have charged).
"""
from __future__ import annotations

import _io
import os
import posix
import sys
import sysconfig
import threading
import time

from eleos_shim import abi

_N_OPS = max(abi.OP_NAMES) + 1
_EXIT_PATHS = {abi.PATH_OCALL: "ocall", abi.PATH_NAMES.index("fallback"): "fallback"}
_ENTRY_POINTS = ("call", "data_out", "data_in", "data_into", "poll", "epoll_wait")
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
        # (code, line, kind) -> count, one dict per thread (no lost updates between threads)
        self._all_sites: list[dict[tuple[object, int, str], int]] = []
        self._lock = threading.Lock()
        self._app_code: dict[object, str | None] = {}
        self.chain: TraceChain | None = None
        self._losses: list[dict] = []

    def _my_sites(self) -> dict:
        try:
            return self._tls.sites
        except AttributeError:
            sites = self._tls.sites = {}
            with self._lock:
                self._all_sites.append(sites)
            return sites

    # -- exit sites ---------------------------------------------------------------------------
    def install(self) -> None:
        from trusted._native._enclave import lib as elib
        transport = self.enclave.transport
        for name in _ENTRY_POINTS:
            setattr(transport, name, self._wrap(getattr(transport, name), elib.enclave_last_path))
        self._install_fault_tracer()

    def _wrap(self, fn, last_path):
        exits, charge = _EXIT_PATHS, self._charge_exit
        # Each routed call also checks that this thread still runs the profile's line tracer
        # (one C call); `ours` is None when there is none, which gettrace() then matches.
        gettrace, probe = _orig_gettrace, self

        def check(frame):
            chain = probe.chain
            if chain is not None and gettrace() is not chain.dispatch:
                chain.lost(frame)
        if fn.__name__ == "data_out":      # the data path's fixed signatures: no *args to pack
            def profiled_out(op, fd, data, flags=0):
                ret = fn(op, fd, data, flags)
                kind = exits.get(last_path())
                if kind is not None:
                    charge(kind, sys._getframe(1))
                if probe.chain is not None:
                    check(sys._getframe(1))
                return ret
            return profiled_out
        if fn.__name__ == "data_in":
            def profiled_in(op, fd, n):
                ret = fn(op, fd, n)
                kind = exits.get(last_path())
                if kind is not None:
                    charge(kind, sys._getframe(1))
                if probe.chain is not None:
                    check(sys._getframe(1))
                return ret
            return profiled_in

        def profiled(op, *args, **kwargs):
            ret = fn(op, *args, **kwargs)
            kind = exits.get(last_path())
            if kind is not None:
                charge(kind, sys._getframe(1))
            if probe.chain is not None:
                check(sys._getframe(1))
            return ret
        return profiled

    def _charge_exit(self, kind: str, frame, n: int = 1) -> None:
        """Charge ``n`` events to the first app frame from ``frame`` outwards (kept as code
        object and line: the text is made once, in :meth:`sites_by_line`)."""
        app, first = self._app_code, frame
        while frame is not None:
            code = frame.f_code
            site = app[code] if code in app else self._app_site(code)
            if site is not None:
                key = (code, frame.f_lineno, kind)
                break
            frame = frame.f_back
        else:
            key = (first.f_code, first.f_lineno, kind)     # no app frame: where it happened
        sites = self._my_sites()
        sites[key] = sites.get(key, 0) + n

    def _app_site(self, code) -> str | None:
        """The path of the app's own code as the report shows it, None for the stdlib and
        the shim."""
        try:
            return self._app_code[code]
        except KeyError:
            pass
        path = code.co_filename
        # posix.getcwd, not os.getcwd/abspath/realpath: the LibOS routes those, and a routed
        # call here would be an exit of its own (and profile itself)
        cwd = posix.getcwd()
        real = os.path.normpath(os.path.join(cwd, path)) if not path.startswith("<") else path
        if path.startswith("<") or real.startswith(_SHIM_DIRS) or real.startswith(_STDLIB_DIRS):
            site = None
        else:
            site = os.path.relpath(real, cwd) if real.startswith(cwd + os.sep) else real
        self._app_code[code] = site
        return site

    def sites_by_line(self) -> dict[str, dict[str, int]]:
        """``path:line (function)`` -> {kind: count}."""
        out: dict[str, dict[str, int]] = {}
        with self._lock:
            items = [kv for sites in self._all_sites for kv in list(sites.items())]
        for (code, line, kind), n in items:
            path = self._app_site(code) or code.co_filename
            row = out.setdefault(f"{path}:{line} ({code.co_name})", {})
            row[kind] = row.get(kind, 0) + n
        return out

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
        tls, app_site, charge, lock = self._tls, self._app_site, self._charge_exit, self._lock

        def local(frame, event, arg):
            n = read()
            if n != last[0]:
                # grown since the last line event: charge the line this thread ran before
                with lock:
                    grown, last[0] = n - last[0], max(n, last[0])
                if grown > 0:
                    prev = getattr(tls, "line", None)
                    if prev is not None:
                        sites = self._my_sites()
                        key = (prev[0], prev[1], kind)
                        sites[key] = sites.get(key, 0) + grown
                    else:
                        charge(kind, frame, grown)
            if event == "line":
                tls.line = (frame.f_code, frame.f_lineno)
            elif event == "return":
                tls.line = None
            return local

        def resync() -> int:
            # The tracer is back after an absence: the faults meanwhile belong to no line we
            # saw (not to the next one); say how many instead.
            with lock:
                n = read()
                missed, last[0] = n - last[0], max(n, last[0])
            tls.line = None
            return max(0, missed)
        self.chain = TraceChain(local, self._app_code, app_site, self._site_of, resync)
        self.chain.install()

    def _site_of(self, frame) -> str | None:
        """``path:line`` of the first app frame from ``frame`` outwards, or None."""
        while frame is not None:
            site = self._app_site(frame.f_code)
            if site is not None:
                return f"{site}:{frame.f_lineno}"
            frame = frame.f_back
        return None

    def tracer_lost(self) -> list[dict]:
        """Threads whose line tracer was taken away (see :class:`TraceChain`)."""
        return list(self.chain.losses if self.chain is not None else self._losses)

    def stop(self) -> None:
        chain, self.chain = self.chain, None
        if chain is not None:
            chain.check_here()
            chain.uninstall()
            self._losses = chain.losses


_orig_settrace, _orig_gettrace = sys.settrace, sys.gettrace
_orig_thread_settrace, _orig_thread_gettrace = threading.settrace, threading.gettrace


class _ThreadTrace(threading.local):
    """A thread's state in the chain; class attributes are the defaults (a missing attribute
    of a threading.local costs an exception, and dispatch runs on every call)."""
    app = None          # the app's trace function for this thread
    armed = False       # ours was installed in this thread
    lost = False        # ours is not this thread's trace function now (recorded)
    lost_at = 0         # index of that record in TraceChain.losses


class TraceChain:
    """The profile's line tracer and the app's own, on one thread's single trace slot.

    CPython calls one trace function per thread.  While installed, this keeps its own
    global one (:attr:`dispatch`: the profile's local tracer for the app's frames) in every
    thread and puts the app's behind it: ``sys.settrace``/``sys.gettrace`` and
    ``threading.settrace``/``threading.gettrace`` are replaced by the chain's, which record
    the app's function for the thread (for new threads) instead of installing it.  The app's
    tracer then gets exactly the events CPython would give it alone: a 'call' for each new
    frame while its global function is set, and local events only for the frames it asked
    for, only while its global function is set (as CPython delivers none once it is None),
    with its local function replaced by whatever non-None value that returns.  An exception
    in the app's tracer propagates as natively, and CPython then turns tracing off for the
    thread: the app's and ours, which is recorded.

    Not chainable, so detected instead: a tracer installed below ``sys.settrace`` (C's
    ``PyEval_SetTrace``, e.g. coverage's C tracer, or a ``sys.settrace`` saved before the
    shim started), and ``frame.f_trace`` set by hand (pdb does, on the frames it steps:
    those frames' lines then go to it alone).  :meth:`lost` is called where the shim runs on
    the thread (each routed call, and at exit on the main thread) and records the first time
    a thread's tracer is not ours: the thread, when, the app's line, what is there now."""

    def __init__(self, local, app_code: dict, app_site, site_of, resync):
        # ``local`` traces the frames of the app's code (``app_site(code)`` not None, cached in
        # ``app_code``); ``site_of(frame)`` names a line for the report; ``resync()`` says how
        # many faults the tracer missed while it was away.
        self.site_of, self.resync = site_of, resync
        self.tls = _ThreadTrace()
        self.thread_hook = None            # the app's threading.settrace
        self.losses: list[dict] = []
        self._t0 = time.monotonic()
        self._active = False
        self.dispatch = self._make_dispatch(local, app_code, app_site)   # what gettrace() is

    def install(self) -> None:
        self._active = True
        sys.settrace, sys.gettrace = self.settrace, self.gettrace
        threading.settrace, threading.gettrace = self.thread_settrace, self.thread_gettrace
        _orig_thread_settrace(self.dispatch)   # threading starts every new thread with ours
        self.tls.armed = True
        _orig_settrace(self.dispatch)

    def uninstall(self) -> None:
        """Put the originals back; this thread and new ones keep the app's tracer, if any."""
        self._active = False
        sys.settrace, sys.gettrace = _orig_settrace, _orig_gettrace
        threading.settrace, threading.gettrace = _orig_thread_settrace, _orig_thread_gettrace
        _orig_thread_settrace(self.thread_hook)
        if _orig_gettrace() is self.dispatch:
            _orig_settrace(self.tls.app)

    # -- the app's view -----------------------------------------------------------------------
    def settrace(self, func) -> None:
        """sys.settrace for the app: ``func`` becomes this thread's app tracer."""
        tls = self.tls
        if func is self.dispatch:          # threading's bootstrap of a new thread
            func = self.thread_hook
        tls.app = func
        tls.armed = True
        _orig_settrace(self.dispatch)      # the audit event, and ours (back) in place
        if tls.lost:
            self._back()

    def gettrace(self):
        # What CPython would say: the app's function, or whatever was put in past us.
        now = _orig_gettrace()
        return self.tls.app if now is self.dispatch else now

    def thread_settrace(self, func) -> None:
        self.thread_hook = func

    def thread_gettrace(self):
        return self.thread_hook

    # -- what CPython calls -------------------------------------------------------------------
    def _make_dispatch(self, local, app_code, app_site):
        tls, both, raised, unseen = self.tls, self._both, self._raised, object()

        def dispatch(frame, event, arg):
            """The thread's global trace function: CPython calls it for each new frame (a
            closure, not a method: it runs on every call the app makes)."""
            code = frame.f_code
            site = app_code.get(code, unseen)
            if site is unseen:
                site = app_site(code)
            mine = local if site is not None else None
            app = tls.app
            if app is None:
                return mine
            try:
                theirs = app(frame, event, arg)
            except BaseException:
                raised(frame)
                raise
            if theirs is None:
                return mine
            return both(mine, theirs)
        return dispatch

    def _both(self, mine, theirs):
        tls, raised = self.tls, self._raised

        def both(frame, event, arg):
            nonlocal theirs
            if mine is not None:
                mine(frame, event, arg)        # ours returns itself
            if tls.app is not None:
                try:
                    new = theirs(frame, event, arg)
                except BaseException:
                    raised(frame)
                    raise
                if new is not None:
                    theirs = new
            return both
        return both

    def _raised(self, frame) -> None:
        # CPython now clears the thread's trace function (the app's, and ours with it).
        self.tls.app = None
        self._record(frame, "the app's trace function raised; CPython turned tracing off")

    # -- noticing a tracer we could not chain -------------------------------------------------
    def lost(self, frame) -> None:
        """This thread's trace function is not ours: record it once.  If it is no one's
        (tracing turned off from C, or after the app's tracer raised) ours goes back in, and
        the app's view stays as it was (gettrace() still says what the app set)."""
        tls = self.tls
        if not (self._active and tls.armed):
            return
        now = _orig_gettrace()
        if now is None:
            tls.app = None                 # natively gone too: the app's tracer stays off
            _orig_settrace(self.dispatch)
            if not tls.lost:
                self._record(frame, "turned off below sys.settrace")
            self._back()
        elif not tls.lost:
            self._record(frame, f"replaced by {now!r} below sys.settrace")

    def _back(self) -> None:
        tls = self.tls
        rec = self.losses[tls.lost_at]
        rec["back_at_s"] = round(time.monotonic() - self._t0, 3)
        rec["faults_missed"] += self.resync()
        tls.lost = False

    def check_here(self) -> None:
        if _orig_gettrace() is not self.dispatch:
            self.lost(None)

    def _record(self, frame, how: str) -> None:
        tls = self.tls
        tls.lost, tls.lost_at = True, len(self.losses)
        self.losses.append({"thread": threading.current_thread().name,
                            "at_s": round(time.monotonic() - self._t0, 3),
                            "site": self.site_of(frame) if frame is not None else None,
                            "how": how, "back_at_s": None, "faults_missed": 0})


def install(enclave) -> Probe | None:
    """Install what the configuration asks for: the stub's call clock with ELEOS_STATS, the
    exit sites with ELEOS_PROFILE=1 (nothing without either)."""
    if enclave.transport is None:
        return None
    from trusted._native._enclave import lib as elib
    elib.enclave_time_calls(1 if enclave.cfg.stats or enclave.cfg.profile else 0)
    if not enclave.cfg.profile:
        return None
    probe = Probe(enclave)
    probe.install()
    return probe


def call_cycles() -> dict[str, int]:
    """Per call name: TSC cycles its calls spent in the enclave's stub (enclave_call)."""
    from trusted._native._enclave import ffi, lib
    raw = ffi.new("uint64_t[]", _N_OPS)
    lib.enclave_call_cycles(raw, _N_OPS)
    return {name.lower(): raw[op] for op, name in abi.OP_NAMES.items() if raw[op]}


def start_counters() -> int | None:
    """What :func:`extend` subtracts from at the end: write syscalls made so far."""
    return _proc_io("syscw")


def _stdio_routed() -> bool:
    """Does the app's ``sys.stdout`` write through the LibOS (trusted/) or straight to fd 1?"""
    buf = getattr(sys.stdout, "buffer", None)
    raw = getattr(buf, "raw", buf)          # python -u: the text layer sits on the FileIO
    from trusted.libos.fs import FileIO     # the enclave's (its class says module "_io")
    return type(raw) is not _io.FileIO and isinstance(raw, FileIO)


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


def model_budgets(cfg) -> dict:
    """The configured budget of one event of each kind, in cycles: what the report charges
    for events this run did not have (what sgx would have paid for an rpc run's calls).  A
    cost model with whole-event budgets (ELEOS_OCALL_CYCLES, ELEOS_EPC_FAULT_CYCLES, the
    indirect window and slowdown) is used as it is; an older one by its transitions."""
    scale = getattr(cfg, "time_scale", 1) or 1
    ocall = getattr(cfg, "ocall_cycles", None) or cfg.eexit_cycles + cfg.eenter_cycles
    fault = getattr(cfg, "epc_fault_cycles", None) or cfg.aex_cycles + cfg.eresume_cycles
    window, slowdown = getattr(cfg, "indirect_window_cycles", None), getattr(cfg, "indirect_slowdown", None)
    indirect = window * (slowdown - 1) if window and slowdown and getattr(cfg, "indirect", "model") != "off" else 0
    return {"ocall_cycles": ocall * scale, "fault_cycles": fault * scale,
            "indirect_cycles": indirect * scale, "time_scale": scale}


def extend(stats: dict, enclave) -> dict:
    """Add what the probes saw, and the model's budgets, to ``stats`` (in place)."""
    cfg = enclave.cfg
    stats["model"] = model_budgets(cfg)
    stats["stdio_routed"] = _stdio_routed()
    if enclave.transport is not None and stats.get("tsc_mhz"):
        for name, cycles in call_cycles().items():
            c = stats["calls"].get(name)
            if c and c.get("count"):
                c["mean_us"] = cycles / c["count"] / stats["tsc_mhz"]
    if enclave.transport is not None:
        now = _proc_io("syscw")
        routed = sum(stats["calls"].get(k, {}).get("count", 0) for k in ("write", "pwrite"))
        stats["unrouted"] = {"write_syscalls": None if now is None or enclave.syscw0 is None
                             else max(0, now - enclave.syscw0 - routed)}
    probe = getattr(enclave, "probe", None)
    if probe is not None:
        probe.stop()
        losses = probe.tracer_lost()
        cycles = event_cycles(stats)
        tsc_hz = stats.get("tsc_mhz", 0) * 1e6 or None
        rows = []
        for site, kinds in probe.sites_by_line().items():
            row = {"site": site, "ocall": 0, "fallback": 0, "epc_fault": 0, "suvm_fault": 0}
            row.update(kinds)
            row["modeled_cycles"] = sum(n * cycles.get(k, 0.0) for k, n in kinds.items())
            row["modeled_ms"] = row["modeled_cycles"] / tsc_hz * 1e3 if tsc_hz else None
            rows.append(row)
        stats["profile"] = {"sites": sorted(rows, key=lambda r: (
            -r["modeled_cycles"], -(r["ocall"] + r["fallback"] + r["epc_fault"] + r["suvm_fault"]))),
            "tracer_lost": losses}
    return stats

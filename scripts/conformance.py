"""Conformance runner: CPython's own regression tests for the routed modules, plain vs the shim.

Runs each module's tests (``unittest``, the interpreter's own ``Lib/test``) three times in
the same run: under plain python, under ``python -m eleos_shim --mode sgx`` and under
``--mode eleos`` (both with ``ELEOS_COST=account``: the cost model counts, spends nothing),
and prints, per module, the tests that pass plain but not under the shim, with the first line
of the reason.  The reference is always the plain run of the same interpreter in the same
run, never a stored list of expected failures.

Each run is a worker process (this file with ``--worker``) that records every test's outcome
as one JSON line, written with ``posix.write`` so that the record keeping is neither routed
nor counted.  A test that hangs past ``--test-timeout`` or kills its process is recorded as
such and the worker is restarted after it.  A regression is re-run once, alone, in both
plain and the shim: one that then passes in both is reported as flaky (the machine is
shared), not hidden and not counted.

    python scripts/conformance.py                       # all modules, table + details
    python scripts/conformance.py test.test_select -j 1 --json results/conformance.json
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile
import time

MODULES = (
    "test.test_io", "test.test_os", "test.test_socket", "test.test_select", "test.test_poll",
    "test.test_epoll", "test.test_socketserver", "test.test_mmap", "test.test_shutil",
    "test.test_tempfile", "test.test_asyncio.test_events", "test.test_ssl",
    "test.test_selectors", "test.test_signal",
)
MODES = ("plain", "sgx", "eleos")
HERE = os.path.abspath(__file__)
ROOT = os.path.dirname(os.path.dirname(HERE))
PASS = ("ok", "xfail")


# -- the worker: runs inside the process under test (plain or the shim) -----------------------
def _worker(module: str, out_path: str, select_path: str, select_mode: str,
            test_timeout: float) -> None:
    import posix
    import threading
    import unittest

    fd = posix.open(out_path, posix.O_WRONLY | posix.O_APPEND | posix.O_CREAT, 0o644)
    lock = threading.Lock()

    def emit(**rec):
        line = (json.dumps(rec) + "\n").encode()
        with lock:
            posix.write(fd, line)

    chosen: set[str] = set()
    if select_path:
        rfd = posix.open(select_path, posix.O_RDONLY)
        chunks = []
        while True:
            b = posix.read(rfd, 1 << 16)
            if not b:
                break
            chunks.append(b)
        posix.close(rfd)
        chosen = set(b"".join(chunks).decode().split("\n")) - {""}

    def flatten(suite):
        for t in suite:
            if isinstance(t, unittest.TestSuite):
                yield from flatten(t)
            else:
                yield t

    try:
        tests = list(flatten(unittest.defaultTestLoader.loadTestsFromNames(module.split(","))))
    except Exception as e:   # noqa: BLE001 - an import failure is a result
        emit(id=module, status="error", reason=_reason(e))
        emit(done=True)
        return
    if select_mode == "skip":
        tests = [t for t in tests if t.id() not in chosen]
    elif select_mode == "only":
        tests = [t for t in tests if t.id() in chosen]
    current = {"id": None, "since": 0.0}

    def watchdog():
        while True:
            time.sleep(1.0)
            tid, since = current["id"], current["since"]
            if tid is not None and time.monotonic() - since > test_timeout:
                emit(id=tid, status="timeout", reason=f"hung for more than {test_timeout:.0f} s")
                posix._exit(3)

    threading.Thread(target=watchdog, daemon=True, name="conformance-watchdog").start()

    class Result(unittest.TestResult):
        def startTest(self, test):
            super().startTest(test)
            self._bad = None
            current["id"], current["since"] = test.id(), time.monotonic()
            emit(start=test.id())

        def _fail(self, test, err, status):
            if isinstance(test, unittest.case._SubTest):
                test = test.test_case
            if not isinstance(test, unittest.TestCase):       # a class/module fixture
                emit(id=str(test), status="error", reason=_reason(err[1]))
                return
            if self._bad is None:
                self._bad = (status, _reason(err[1]))

        def addError(self, test, err):
            super().addError(test, err)
            self._fail(test, err, "error")

        def addFailure(self, test, err):
            super().addFailure(test, err)
            self._fail(test, err, "fail")

        def addSubTest(self, test, subtest, err):
            super().addSubTest(test, subtest, err)
            if err is not None:
                self._fail(subtest, err,
                           "fail" if issubclass(err[0], test.failureException) else "error")

        def addSkip(self, test, reason):
            super().addSkip(test, reason)
            self._bad = ("skip", reason.splitlines()[0] if reason else "")

        def addExpectedFailure(self, test, err):
            super().addExpectedFailure(test, err)
            self._bad = ("xfail", "")

        def addUnexpectedSuccess(self, test):
            super().addUnexpectedSuccess(test)
            self._bad = ("fail", "unexpected success")

        def stopTest(self, test):
            status, reason = self._bad or ("ok", "")
            emit(id=test.id(), status=status, reason=reason)
            current["id"] = None
            super().stopTest(test)

    unittest.TestSuite(tests).run(Result())
    emit(done=True)


def _reason(exc) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


# -- the runner -----------------------------------------------------------------------------
def _command(mode: str) -> tuple[list[str], dict]:
    env = dict(os.environ)
    for key in list(env):
        if key.startswith("ELEOS_"):
            del env[key]          # the run's own settings only
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    if mode == "plain":
        return [sys.executable, HERE], env
    env["ELEOS_COST"] = "account"
    return [sys.executable, "-m", "eleos_shim", "--mode", mode, HERE], env


def run_module(module: str, mode: str, *, only=None, test_timeout=60.0, log_dir=None,
               max_restarts=40) -> dict[str, tuple[str, str]]:
    """{test id: (status, reason)} for ``module`` (a test module or class, or several,
    comma-separated, run in one process) under ``mode`` ("plain", "sgx", "eleos").
    ``only``: run just these test ids.  Fixture errors appear under their own ids."""
    results: dict[str, tuple[str, str]] = {}
    cmd, env = _command(mode)
    with tempfile.TemporaryDirectory(prefix="conformance-") as tmp:
        out = os.path.join(tmp, "results.jsonl")
        sel = os.path.join(tmp, "select")
        log = open(os.path.join(log_dir, f"{module}.{mode}.log") if log_dir else os.devnull,
                   "ab")
        try:
            for _ in range(max_restarts):
                if only is not None:
                    todo = set(only) - set(results)
                    chosen, how = todo, "only"
                else:
                    chosen, how = set(results), "skip"
                with open(sel, "w") as f:
                    f.write("\n".join(sorted(chosen)) + "\n")
                start = os.path.getsize(out) if os.path.exists(out) else 0
                p = subprocess.run(cmd + ["--worker", module, out, sel, how, str(test_timeout)],
                                   env=env, cwd=tmp, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, timeout=None)
                done, started, timed_out = False, None, False
                with open(out, "rb") as f:
                    f.seek(start)
                    for line in f:
                        try:
                            rec = json.loads(line)
                        except ValueError:
                            continue
                        if rec.get("done"):
                            done = True
                        elif "start" in rec:
                            started = rec["start"]
                        else:
                            results[rec["id"]] = (rec["status"], rec.get("reason", ""))
                            timed_out = rec["status"] == "timeout"
                            if rec["id"] == started:
                                started = None
                if done:
                    break
                if started is not None and started not in results:
                    results[started] = ("crash", f"the process died (exit status "
                                                 f"{p.returncode}) in this test")
                elif not timed_out:          # after a hung test the run goes on
                    results.setdefault(f"{module} (worker)", (
                        "crash", f"the worker exited with status {p.returncode} between tests"))
                    break
        finally:
            log.close()
    return results


def _class_of(test_id: str) -> str:
    return test_id.rsplit(".", 1)[0]


def regressions(plain: dict, shim: dict) -> dict[str, str]:
    """Tests that pass plain but not under the shim: {id: reason}."""
    fixtures = {}
    for tid, (status, reason) in shim.items():
        if " (" in tid and status != "ok":          # "setUpClass (test.mod.Class)"
            fixtures[tid.split(" (", 1)[1].rstrip(")")] = f"{tid.split(' ', 1)[0]}: {reason}"
    out = {}
    for tid, (status, _reason) in plain.items():
        if status not in PASS or " (" in tid:
            continue
        got = shim.get(tid)
        if got is None:
            cls = _class_of(tid)
            why = fixtures.get(cls) or fixtures.get(cls.rsplit(".", 1)[0])
            out[tid] = f"not run ({why})" if why else "not run"
        elif got[0] not in PASS:
            out[tid] = f"{got[0]}: {got[1]}"
    return out


def conformance(modules, modes=("sgx", "eleos"), *, jobs=2, test_timeout=60.0, log_dir=None,
                recheck=True, progress=None):
    """Run everything; returns {module: {"plain": results, mode: results, "regressions":
    {mode: {id: reason}}, "flaky": {mode: [ids]}}}."""
    report = {m: {} for m in modules}
    todo = [(m, mode) for m in modules for mode in ("plain",) + tuple(modes)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        futs = {pool.submit(run_module, m, mode, test_timeout=test_timeout,
                            log_dir=log_dir): (m, mode) for m, mode in todo}
        for fut in concurrent.futures.as_completed(futs):
            m, mode = futs[fut]
            report[m][mode] = fut.result()
            if progress:
                progress(f"{m} {mode}: {len(report[m][mode])} results")
    for m in modules:
        report[m]["regressions"], report[m]["flaky"] = {}, {}
        for mode in modes:
            reg = regressions(report[m]["plain"], report[m][mode])
            flaky = []
            if recheck and reg:
                ids = [t for t in reg if " (" not in t]
                again = run_module(m, mode, only=ids, test_timeout=test_timeout)
                again_plain = run_module(m, "plain", only=ids, test_timeout=test_timeout)
                for tid in ids:
                    if again.get(tid, ("",))[0] in PASS:
                        flaky.append(tid)
                        del reg[tid]
                    elif again_plain.get(tid, ("",))[0] not in PASS:
                        flaky.append(tid)        # fails alone plain too: not the shim's
                        del reg[tid]
            report[m]["regressions"][mode] = reg
            report[m]["flaky"][mode] = sorted(flaky)
    return report


def table(report, modes=("sgx", "eleos")) -> str:
    rows = [("module", "plain passed") + tuple(f"{m} regressions" for m in modes)]
    totals = [0] * (1 + len(modes))
    for m, r in report.items():
        passed = sum(1 for s, _ in r["plain"].values() if s in PASS)
        regs = [len(r["regressions"][mode]) for mode in modes]
        rows.append((m.removeprefix("test."), str(passed)) + tuple(map(str, regs)))
        for i, v in enumerate([passed] + regs):
            totals[i] += v
    rows.append(("total",) + tuple(map(str, totals)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def details(report, modes=("sgx", "eleos")) -> str:
    out = []
    for m, r in report.items():
        for mode in modes:
            reg = r["regressions"][mode]
            if reg:
                out.append(f"\n{m} under {mode}: {len(reg)} pass plain but not under the shim")
                for tid, why in sorted(reg.items()):
                    out.append(f"  {tid.removeprefix(m + '.')}: {why}")
            if r["flaky"][mode]:
                out.append(f"\n{m} under {mode}: flaky (failed once, passed alone or failed "
                           f"alone plain too): " + ", ".join(t.removeprefix(m + ".")
                                                            for t in r["flaky"][mode]))
    return "\n".join(out)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        module, out, sel, how, timeout = argv[1:6]
        _worker(module, out, sel, how, float(timeout))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("modules", nargs="*", help=f"test modules (default: {' '.join(MODULES)})")
    ap.add_argument("-j", "--jobs", type=int, default=2, help="runs in parallel (default 2)")
    ap.add_argument("--modes", default="sgx,eleos", help="shim modes (default sgx,eleos)")
    ap.add_argument("--test-timeout", type=float, default=60.0,
                    help="seconds one test may take before it counts as hung (default 60)")
    ap.add_argument("--no-recheck", action="store_true", help="do not re-run regressions")
    ap.add_argument("--json", help="also write the full results here")
    ap.add_argument("--logs", help="keep each run's output in this directory")
    a = ap.parse_args(argv)
    modes = tuple(x for x in a.modes.split(",") if x)
    bad = [m for m in modes if m not in MODES[1:]]
    if bad:
        ap.error(f"--modes: {bad[0]!r} is not one of sgx, eleos")
    if a.logs:
        os.makedirs(a.logs, exist_ok=True)
    t0 = time.monotonic()
    report = conformance(a.modules or MODULES, modes, jobs=a.jobs, test_timeout=a.test_timeout,
                         log_dir=a.logs, recheck=not a.no_recheck,
                         progress=lambda s: print(s, file=sys.stderr, flush=True))
    print(f"CPython {sys.version.split()[0]} conformance, {time.monotonic() - t0:.0f} s "
          f"(ELEOS_COST=account; tests that pass plain but not under the shim)")
    print(table(report, modes))
    print(details(report, modes))
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            json.dump({m: {k: v for k, v in r.items()} for m, r in report.items()}, f,
                      indent=1, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m eleos_shim [options] app.py [args]`` / ``-m module [args]``: the loader.

Runs an unmodified Python app inside the modeled enclave.  The app sees the ``sys.argv``,
``__name__ == "__main__"`` and ``sys.path[0]`` it would see under plain ``python``; its exit
status, uncaught exceptions and signals behave as there.  Stats are written at every exit:
normal, exception, SIGINT, SIGTERM.  ``eleos-shim calibrate`` measures the cost model;
``eleos-shim compare`` runs one app under several modes side by side (eleos_shim/compare.py);
``eleos-shim epc DOMAIN`` shows a shared EPC (eleos_shim/epcview.py).
"""
from __future__ import annotations

import argparse
import atexit
import os
import runpy
import signal
import sys
import traceback

from eleos_shim import config as config_mod

USAGE = ("eleos-shim [options] (app.py | -m module) [args...]\n       eleos-shim calibrate [options]\n"
         "       eleos-shim [options] compare [modes...] [--client CMD] [--json PATH] [--plot PNG] "
         "-- app.py [args...]\n"
         "       eleos-shim epc DOMAIN [--watch] [--json]")

DESCRIPTION = """\
Run an unmodified Python app inside a modeled SGX enclave.

modes (ELEOS_MODE / --mode):
  native  no enclave: the app runs as under plain python (the baseline)
  sgx     vanilla SGX: every file/socket call exits the enclave (OCALL: EEXIT+EENTER
          cycles plus the indirect cache/TLB cost); the app's anonymous mmap heap lives in
          the EPC and pages through the modeled SGX driver (real faults, AES-GCM EWB/ELDU)
  eleos   Eleos: calls go through an exit-less RPC ring served by native host workers;
          the heap lives in SUVM (software page table, in-enclave page cache, sealed
          backing store)
ELEOS_SYSCALLS (direct|ocall|rpc) and ELEOS_MEMORY (native|epc|suvm) override a preset.
Every option below is also an environment variable; a flag wins over the variable."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eleos-shim", usage=USAGE, description=DESCRIPTION,
                                     epilog="the cost model's constants (each event pays its "
                                     "budget: the real part timed, a TSC spin the rest;\n"
                                     "each is the variable shown and its flag):\n"
                                     + config_mod.cost_table().replace("%", "%%"),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-m", dest="module", metavar="MODULE",
                        help="run a library module as a script (like python -m)")
    parser.add_argument("--version", action="version",
                        version=f"eleos-shim {__import__('eleos_shim').__version__}")
    config_mod.add_arguments(parser)
    parser.add_argument("target", nargs="?", help="the app script (or 'calibrate')")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the app")
    return parser


def parse(argv: list[str]):
    """Split argv into shim options and the app's command line.  The first argument that is
    not an option (or the argument after -m) ends the shim's options, as with python."""
    parser = build_parser()
    # Everything after the script or the -m module belongs to the app, even if it looks like
    # one of our options: cut argv there before argparse sees it.
    shim_argv, app_argv = [], []
    flags_with_value = {o.flag for o in config_mod.OPTIONS} | {"-m"}
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "-m" and i + 1 < len(argv):
            shim_argv += [a, argv[i + 1]]
            app_argv = argv[i + 2:]
            break
        if a.startswith("-m") and len(a) > 2 and not a.startswith("--"):
            shim_argv.append(a)
            app_argv = argv[i + 1:]
            break
        if a in flags_with_value:
            shim_argv += argv[i:i + 2]
            i += 2
            continue
        if a.startswith("-"):
            shim_argv.append(a)
            i += 1
            continue
        shim_argv.append(a)
        app_argv = argv[i + 1:]
        break
    ns = parser.parse_args(shim_argv)
    ns.args = app_argv
    return parser, ns


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser, ns = parse(argv)
    flags = {o.field: getattr(ns, o.field) for o in config_mod.OPTIONS}
    try:
        cfg = config_mod.resolve(None, flags)
    except config_mod.ConfigError as exc:
        sys.stderr.write(f"eleos-shim: {exc}\n")
        return 2
    if ns.module is None and ns.target == "epc":
        from eleos_shim.epcview import main as epc_main
        return epc_main(ns.args)
    if ns.module is None and ns.target == "calibrate":
        from eleos_shim.calibrate import main as calibrate_main
        return calibrate_main(cfg, ns.args)
    if ns.module is None and ns.target == "compare":
        from eleos_shim.compare import main as compare_main
        return compare_main(ns.args, {o.env: str(flags[o.field]) for o in config_mod.OPTIONS
                                      if flags[o.field] is not None})
    if ns.module is None and ns.target is None:
        parser.print_usage(sys.stderr)
        sys.stderr.write("eleos-shim: error: give an app script or -m module\n")
        return 2
    return run(cfg, ns.module, ns.target, ns.args)


def run(cfg, module: str | None, script: str | None, args: list[str]) -> int:
    from eleos_shim import stats as stats_mod
    from eleos_shim.enclave import Enclave

    if script is not None and not os.path.exists(script):
        sys.stderr.write(f"eleos-shim: can't open file {os.path.abspath(script)!r}: "
                         f"[Errno 2] No such file or directory\n")
        return 2
    try:
        enclave = Enclave(cfg).start()
    except config_mod.ConfigError as exc:
        sys.stderr.write(f"eleos-shim: {exc}\n")
        return 2
    written = []

    def finish() -> None:
        if written:
            return
        written.append(True)
        enclave.close()
        where = cfg.stats or ("-" if cfg.profile else None)   # exit sites asked for: shown
        if enclave.forked_child:
            where = None      # the stats are the parent's: a forked child writes none
        if where:
            try:
                stats_mod.write(enclave.stats(), where)
            except Exception as exc:  # a stats failure must not change the app's exit status
                sys.stderr.write(f"eleos-shim: could not write stats to {where}: {exc}\n")
        enclave.leave_domain()

    # atexit runs after the interpreter has joined the app's non-daemon threads, so the RPC
    # workers keep serving them until then.
    atexit.register(finish)

    def on_sigterm(signum, frame):
        finish()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, on_sigterm)

    if module is not None:
        sys.argv = [module] + list(args)  # runpy replaces argv[0] with the module's path
        sys.path[0] = os.getcwd()
    else:
        sys.argv = [script] + list(args)
        sys.path[0] = os.path.dirname(os.path.abspath(script))
    try:
        if module is not None:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(script, run_name="__main__")
    except SystemExit:
        raise
    except KeyboardInterrupt:
        _print_app_traceback()
        finish()
        # Die of SIGINT as python does, so the parent sees the same status.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGINT)
        return 130
    except BaseException:
        _print_app_traceback()
        return 1
    return 0


def _print_app_traceback() -> None:
    """The traceback python would print: without the loader's and runpy's frames."""
    etype, value, tb = sys.exc_info()
    ours = (os.path.abspath(__file__), os.path.abspath(runpy.__file__), "<frozen runpy>")
    while tb is not None and tb.tb_frame.f_code.co_filename in ours:
        tb = tb.tb_next
    sys.stdout.flush()
    traceback.print_exception(etype, value, tb)
    sys.stderr.flush()


if __name__ == "__main__":
    sys.exit(main())

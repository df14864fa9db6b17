"""The one configuration parser (modeled CPU side, eleos_shim/).

Every knob is an environment variable ``ELEOS_X`` and a flag ``--x``; a flag wins over the
variable.  Nothing else in the project reads ``os.environ``: components receive the frozen
:class:`Config` built here.  A bad value raises :class:`ConfigError` whose message is one line
naming the variable, the value and what is allowed; the command line turns it into exit
status 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping

MODES = ("native", "sgx", "eleos")
SYSCALL_PATHS = ("direct", "ocall", "rpc")
MEMORIES = ("native", "epc", "suvm")
EVICTION_POLICIES = ("fifo", "lru", "clock", "random")
OVERWRITE_MODES = ("open", "skip")
COST_MODES = ("spin", "account")
EPC_TRAPS = ("auto", "sigbus", "userfaultfd", "sigsegv")
EPC_RECLAIMS = ("direct", "background")
INDIRECT_MODES = ("model", "pollute", "off")
RPC_WAITS = ("spin", "ocall")
BALLOON_POLICIES = ("demand", "fair", "static")

# The presets of ELEOS_MODE: (syscall path, heap).
PRESETS = {
    "native": ("direct", "native"),
    "sgx": ("ocall", "epc"),
    "eleos": ("rpc", "suvm"),
}


class ConfigError(ValueError):
    """A bad setting; ``str()`` is the one line shown to the user."""


def _choice(allowed: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in allowed:
            raise ValueError("expected one of " + ", ".join(allowed))
        return value
    parse.allowed = "one of " + ", ".join(allowed)  # type: ignore[attr-defined]
    return parse


def _int(minimum: int = 0, maximum: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        t = text.strip().replace("_", "")
        mult = 1
        if t[-1:] in ("k", "K"):
            mult, t = 1024, t[:-1]
        try:
            value = int(t, 0) * mult
        except ValueError:
            raise ValueError("expected an integer") from None
        if value < minimum or (maximum is not None and value > maximum):
            hi = f" and <= {maximum}" if maximum is not None else ""
            raise ValueError(f"expected an integer >= {minimum}{hi}")
        return value
    return parse


def _number(expected: str, low: float = 0.0, high: float = float("inf"),
            low_inclusive: bool = False) -> Callable[[str], float]:
    """A finite float above ``low`` (or at it, if inclusive) and at most ``high``."""
    def parse(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise ValueError(f"expected {expected}") from None
        above = value >= low if low_inclusive else value > low
        if not (above and value <= high) or value == float("inf"):
            raise ValueError(f"expected {expected}")
        return value
    return parse


_mb = _number("a positive number of MB (e.g. 93 or 0.5)")


def _page_size(text: str) -> int:
    value = _int(1)(text)
    if value & (value - 1) or not 1024 <= value <= 65536:
        raise ValueError("expected a power of two from 1024 to 65536 (1K..64K)")
    return value


def _subpage(text: str) -> int:
    value = _int(0)(text)
    if value and (value & (value - 1) or not 64 <= value <= 32768):
        raise ValueError("expected 0 (off) or a power of two from 64 to 32768")
    return value


def _stats(text: str) -> str:
    if not text.strip():
        raise ValueError("expected a file path or '-' for a report on stderr")
    return text


def _cpus(text: str) -> tuple[int, ...] | str:
    """A CPU list as taskset takes it: "1", "2-3", "0,2-3"; "auto"; empty or "none" = not
    pinned."""
    if text.strip().lower() == "auto":
        return "auto"
    if text.strip().lower() == "none":
        return ()
    cpus: set[int] = set()
    try:
        for part in filter(None, (p.strip() for p in text.split(","))):
            lo, _, hi = part.partition("-")
            cpus.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise ValueError("expected auto, none, or a CPU list such as 1, 2-3 or 0,2") from None
    online = os.cpu_count() or 1
    if any(c < 0 or c >= online for c in cpus):
        raise ValueError(f"expected CPUs from 0 to {online - 1} (this machine has {online})")
    return tuple(sorted(cpus))


def _domain(text: str) -> str:
    """An EPC domain's name: it names a file in /dev/shm, so a plain word."""
    value = text.strip()
    if (not 1 <= len(value) <= 64 or value.startswith(".")
            or any(not (c.isascii() and (c.isalnum() or c in "-_.")) for c in value)):
        raise ValueError("expected a name of 1-64 letters, digits, '-', '_' or '.' (not starting with '.')")
    return value


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value not in ("0", "1"):
        raise ValueError("expected 0 or 1")
    return value == "1"


def _tsc(text: str) -> float:
    value = _mb(text)
    return value


_scale = _number("a positive number up to 1e6 (1 = no dilation)", high=1e6)
_slowdown = _number("a number >= 1 and <= 100 (1 = no indirect cost)", low=1.0, high=100.0,
                    low_inclusive=True)


@dataclass(frozen=True)
class Cost:
    """One constant of the cost model: its default and where the number comes from."""
    field: str
    default: Any
    unit: str
    source: str


# The cost model's constants, the one table (DESIGN.md section 3): `--help` and the README
# print it.  Cycles are cycles of the machine the source measured, spent as TSC cycles here.
COSTS: tuple[Cost, ...] = (
    Cost("eenter_cycles", 3300, "cycles", "EENTER; the Eleos talk (EuroSys'17), overhead analysis: "
         "'Enter enclave ~3,300 cycles'"),
    Cost("eexit_cycles", 3800, "cycles", "EEXIT, the first part of an OCALL's budget, paid before "
         "the host call; the Eleos talk: 'Exit enclave ~3,800 cycles'"),
    Cost("ocall_cycles", 8200, "cycles", "a whole OCALL (EEXIT + SDK bridge + EENTER), the host "
         "call excluded; HotCalls (ISCA'17): 8,200 warm to 17,000 cold"),
    Cost("aex_cycles", 3800, "cycles", "AEX, counted as a fault's exit (default = EEXIT); part of "
         "the fault's budget"),
    Cost("eresume_cycles", 3300, "cycles", "ERESUME, counted (default = EENTER); part of the "
         "fault's budget"),
    Cost("epc_fault_cycles", 40000, "cycles", "a whole EPC page fault (AEX, driver, ELDU, the EWB "
         "share, ERESUME); VAULT (ASPLOS'18): ~40,000 cycles a page swap"),
    Cost("fork_cycles", 20000000, "cycles", "a whole fork of the enclave (a new enclave, local "
         "attestation, the checkpoint sent and restored), charged to the parent; a PLACEHOLDER, "
         "far below what Gramine pays: its child enclave is built page by page, so the cost grows "
         "with the enclave's size, ~20 s a fork for a large one (gramineproject/graphene#1993: "
         "~500 forks took 3 h instead of 5 min) and 30 s to minutes (gramineproject/gramine#2127); "
         "no per-fork figure for a given size was found"),
    Cost("indirect_slowdown", 1.5, "x", "the app's code after an exit runs this much slower; the "
         "Eleos talk after FlexSC (OSDI'10): 1.5x-5x, its lower bound (with it an OCALL and a "
         "full window, 8,200 + 7,000, stay under HotCalls' cold 17,000)"),
    Cost("indirect_window_cycles", 14000, "cycles", "for this many cycles of the app's work after "
         "an exit; FlexSC (OSDI'10): 'up to 14,000 cycles of execution before the IPC returns'"),
    Cost("time_scale", 1.0, "x", "every budget (and the window) times this: stands in for an app "
         "that many times faster (time dilation, NSDI'06); benchmarks/kvstore.py measures it"),
    Cost("pollute_kb", 512, "KB", "ELEOS_INDIRECT=pollute only: the buffer touched after each "
         "exit, its time counted against the indirect budget (512 KB: the L2 of a Zen 2/3 "
         "core; Zen 4's is 1 MB)"),
)
COST_DEFAULTS = {c.field: c.default for c in COSTS}


def cost_table() -> str:
    """The constants with their sources, as `--help` and the README show them."""
    lines = []
    for c in COSTS:
        default = f"{c.default:,}" if isinstance(c.default, int) else f"{c.default:g}"
        lines.append(f"  ELEOS_{c.field.upper():<24} {default:>7} {c.unit:<6}  {c.source}")
    return "\n".join(lines)


@dataclass(frozen=True)
class Option:
    field: str
    parse: Callable[[str], Any]
    help: str
    metavar: str = ""

    @property
    def env(self) -> str:
        return "ELEOS_" + self.field.upper()

    @property
    def flag(self) -> str:
        return "--" + self.field.replace("_", "-")


OPTIONS: tuple[Option, ...] = (
    Option("mode", _choice(MODES), "preset: native = no enclave; sgx = vanilla SGX (OCALL exits, "
           "heap in the EPC with driver paging); eleos = exit-less RPC + SUVM heap (default eleos)"),
    Option("syscalls", _choice(SYSCALL_PATHS), "override the preset's syscall path: direct, ocall, rpc"),
    Option("memory", _choice(MEMORIES), "override the preset's heap: native, epc, suvm"),
    Option("epc_mb", _mb, "usable EPC in MB (default 93, of 128 MB)"),
    Option("epc_domain", _domain, "a name: enclaves started with the same name share one EPC of "
           "ELEOS_EPC_MB, as all enclaves of a machine share its EPC; SUVM caches balloon inside it "
           "(default unset: a private EPC)", "NAME"),
    Option("epc_balloon", _choice(BALLOON_POLICIES), "in an EPC domain, how the manager sets SUVM "
           "caches' targets: demand (default: idle caches shrink to their floor, those that miss "
           "share the rest by miss rate, those that fit keep it), fair (the same idle tax, then "
           "max-min fair shares) or static (equal shares)"),
    Option("suvm_cache_mb", _mb, "SUVM page cache (EPC++) in MB; must fit in the EPC "
           "(default 64, or 3/4 of a smaller EPC)"),
    Option("suvm_page_size", _page_size, "SUVM page size, a power of two 1K..64K (default 4096)"),
    Option("suvm_subpage", _subpage, "SUVM sub-page size for direct backing-store reads, 0 = off "
           "(default off: measured, 2K sub-pages of 4K pages win 1.1-1.4x on 64-512 B random "
           "reads but lose 20-45%% on whole-page access; below 1K libcrypto's per-call cost "
           "loses; set it for small-item apps; benchmarks/suvm_micro.py)"),
    Option("suvm_eviction", _choice(EVICTION_POLICIES), "SUVM eviction policy: fifo, lru, clock, random "
           "(default clock: measured, hit ratio within 1%% of lru on zipf with no lock on a hit, so "
           "resident slicing stays within ~1.2x of plain mmap where lru's per-hit lock costs "
           "1.1-1.4x; benchmarks/suvm_micro.py)"),
    Option("suvm_overwrite", _choice(OVERWRITE_MODES), "SUVM write miss over a whole page: open "
           "(default: its stored copy is opened first, as Eleos' SUVM does: its page fault "
           "handler decrypts on every miss, hint_write only marks the page dirty) or skip (the "
           "new content goes in without opening it)"),
    Option("suvm_store_mb", _mb, "limit of the SUVM backing store in untrusted memory (default 8192)"),
    Option("rpc_workers", _int(0, 64), "untrusted RPC worker threads (default 1; 0 = every call falls back)"),
    Option("rpc_spin", _int(0), "spins an enclave call waits for a worker before it falls back to "
           "an OCALL (default 20000, as Intel's switchless calls)"),
    Option("rpc_sleep", _int(0), "idle spins before a worker sleeps on a futex (default 20000)"),
    Option("rpc_slots", _int(2, 1 << 16), "request slots in the RPC ring (default 1024)"),
    Option("rpc_wait", _choice(RPC_WAITS), "a wait that may block (poll, select, epoll with a "
           "timeout) on the rpc path: spin (default) = as Eleos, no exit: Eleos's enclave thread "
           "spins for every call's answer, blocking ones included (its rpc_ocall); the shim tries "
           "it through the ring with a timeout of 0 and, if nothing is ready, blocks the thread in "
           "the host's wait in place of that spin, charging nothing; ocall = it exits (an OCALL), "
           "as Gramine's exitless calls do once their spin gives up (a futex OCALL)"),
    Option("rpc_cpus", _cpus, "CPUs the RPC workers run on, e.g. 1 or 2-3; the app's threads keep "
           "the others (Eleos's dedicated cores). auto (default): the last CPUs, one per worker, "
           "when the app keeps at least one; none: not pinned", "CPUS"),
    Option("eenter_cycles", _int(0), "modeled EENTER cost in cycles (default 3300)"),
    Option("eexit_cycles", _int(0), "modeled EEXIT cost in cycles (default 3800)"),
    Option("ocall_cycles", _int(0), "budget of a whole OCALL in cycles, the host call excluded "
           "(default 8200)"),
    Option("aex_cycles", _int(0), "modeled AEX cost in cycles (default = EEXIT)"),
    Option("eresume_cycles", _int(0), "modeled ERESUME cost in cycles (default = EENTER)"),
    Option("epc_fault_cycles", _int(0), "budget of a whole EPC page fault in cycles (default 40000)"),
    Option("fork_cycles", _int(0), "budget of a whole fork of the enclave in cycles, charged to "
           "the parent (default 20000000, a placeholder)"),
    Option("indirect", _choice(INDIRECT_MODES), "the indirect cost of an exit: model = the app's "
           "code in a window after it is charged as slower (default); pollute = also touch a "
           "buffer of ELEOS_POLLUTE_KB for real, its time counted against that charge; off"),
    Option("indirect_slowdown", _slowdown, "how much slower the app's code runs after an exit "
           "(default 1.5)"),
    Option("indirect_window_cycles", _int(0), "cycles of app work after an exit that run slower "
           "(default 14000)"),
    Option("time_scale", _scale, "multiply every budget (time dilation for an app this many times "
           "faster; default 1)"),
    Option("pollute_kb", _int(0, 1 << 20), "KB of the pollution buffer touched after each exit "
           "with ELEOS_INDIRECT=pollute (default 512)"),
    Option("cost", _choice(COST_MODES), "spin = spend modeled cycles (default); account = only count them"),
    Option("tsc_mhz", _tsc, "TSC frequency in MHz for cycle->time (default: measured)"),
    Option("epc_trap", _choice(EPC_TRAPS), "EPC fault trap: sigbus = userfaultfd's SIGBUS, the "
           "faulting thread handles its own fault; userfaultfd = a driver thread handles it; "
           "sigsegv = mprotect + SIGSEGV, handed to a driver thread; auto (default) = the first "
           "of those the kernel allows"),
    Option("epc_reclaim", _choice(EPC_RECLAIMS), "who EWBs: direct = a fault that finds no free "
           "frame reclaims a cluster (up to 16) itself, the EWB share of the faults that take "
           "its frames (default); background = a ksgxswapd "
           "thread keeps frames free between watermarks and a fault that finds none waits for it"),
    Option("stats", _stats, "at exit write stats as JSON to this path, or '-' for a report on stderr",
           "PATH"),
    Option("profile", _bool, "1 = attribute every exit and EPC fault to the app's source line and "
           "list the top sites in the stats (costs time: see README); default 0"),
)

_BY_FIELD = {o.field: o for o in OPTIONS}


@dataclass(frozen=True)
class Config:
    """The typed, frozen configuration every component receives."""
    mode: str = "eleos"
    syscalls: str = "rpc"
    memory: str = "suvm"
    epc_mb: float = 93.0
    epc_domain: str | None = None
    epc_balloon: str = "demand"
    suvm_cache_mb: float = 64.0
    suvm_page_size: int = 4096
    suvm_subpage: int = 0
    suvm_eviction: str = "clock"
    suvm_overwrite: str = "open"
    suvm_store_mb: float = 8192.0
    rpc_workers: int = 1
    rpc_spin: int = 20000
    rpc_sleep: int = 20000
    rpc_slots: int = 1024
    rpc_wait: str = "spin"
    rpc_cpus: tuple[int, ...] | str = "auto"
    eenter_cycles: int = COST_DEFAULTS["eenter_cycles"]
    eexit_cycles: int = COST_DEFAULTS["eexit_cycles"]
    ocall_cycles: int = COST_DEFAULTS["ocall_cycles"]
    aex_cycles: int = COST_DEFAULTS["aex_cycles"]
    eresume_cycles: int = COST_DEFAULTS["eresume_cycles"]
    epc_fault_cycles: int = COST_DEFAULTS["epc_fault_cycles"]
    fork_cycles: int = COST_DEFAULTS["fork_cycles"]
    indirect: str = "model"
    indirect_slowdown: float = COST_DEFAULTS["indirect_slowdown"]
    indirect_window_cycles: int = COST_DEFAULTS["indirect_window_cycles"]
    time_scale: float = COST_DEFAULTS["time_scale"]
    pollute_kb: int = COST_DEFAULTS["pollute_kb"]
    cost: str = "spin"
    tsc_mhz: float | None = None
    epc_trap: str = "auto"
    epc_reclaim: str = "direct"
    stats: str | None = None
    profile: bool = False

    @property
    def epc_bytes(self) -> int:
        return int(self.epc_mb * 1024 * 1024) // 4096 * 4096

    @property
    def suvm_cache_bytes(self) -> int:
        return int(self.suvm_cache_mb * 1024 * 1024) // self.suvm_page_size * self.suvm_page_size

    @property
    def suvm_store_bytes(self) -> int:
        return int(self.suvm_store_mb * 1024 * 1024)

    @property
    def in_enclave(self) -> bool:
        return self.syscalls != "direct" or self.memory != "native"

    def replace(self, **changes: Any) -> "Config":
        """A copy with ``changes`` applied and checked as :func:`resolve` checks them."""
        raw = {k: v for k, v in dataclasses.asdict(self).items()}
        raw.update(changes)
        return _finish(raw, explicit=set(changes) | {"syscalls", "memory", "suvm_cache_mb",
                                                     "aex_cycles", "eresume_cycles"})

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **flags: Any) -> "Config":
        """Build from the environment (default ``os.environ``) with ``flags`` (raw strings or
        typed values, by field name) taking precedence."""
        return resolve(environ, flags)


def resolve(environ: Mapping[str, str] | None = None,
            flags: Mapping[str, Any] | None = None) -> Config:
    environ = os.environ if environ is None else environ
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    _reject_unknown(environ)
    raw: dict[str, Any] = {}
    explicit: set[str] = set()
    for opt in OPTIONS:
        if opt.field in flags:
            value, where = flags[opt.field], opt.flag
        elif opt.env in environ:
            value, where = environ[opt.env], opt.env
        else:
            continue
        if isinstance(value, str):
            try:
                value = opt.parse(value)
            except ValueError as exc:
                raise ConfigError(f"{where}={value!r}: {exc}") from None
        raw[opt.field] = value
        explicit.add(opt.field)
    return _finish(raw, explicit)


def _reject_unknown(environ: Mapping[str, str]) -> None:
    """A misspelt variable would otherwise be ignored without a word and the run made with
    the default: ELEOS_ is ours, so a name that is no setting stops start-up."""
    known = {opt.env for opt in OPTIONS}
    for name in sorted(k for k in environ if k.startswith("ELEOS_") and k not in known):
        close = difflib.get_close_matches(name[6:], [k[6:] for k in known], n=1)
        hint = f"did you mean ELEOS_{close[0]}?" if close else "see python -m eleos_shim --help"
        raise ConfigError(f"{name}={environ[name]!r}: no such setting ({hint})")


def _finish(raw: dict[str, Any], explicit: set[str]) -> Config:
    defaults = Config()
    mode = raw.get("mode", defaults.mode)
    syscalls, memory = PRESETS[mode]
    values = dataclasses.asdict(defaults)
    values.update({"mode": mode, "syscalls": syscalls, "memory": memory})
    values.update(raw)
    if "aex_cycles" not in explicit:
        values["aex_cycles"] = values["eexit_cycles"]
    if "eresume_cycles" not in explicit:
        values["eresume_cycles"] = values["eenter_cycles"]
    if "suvm_cache_mb" not in explicit:
        values["suvm_cache_mb"] = min(defaults.suvm_cache_mb, values["epc_mb"] * 0.75)
    cfg = Config(**values)
    if cfg.suvm_cache_mb > cfg.epc_mb:
        raise ConfigError(f"ELEOS_SUVM_CACHE_MB={cfg.suvm_cache_mb:g}: the SUVM page cache must fit "
                          f"in the EPC (ELEOS_EPC_MB={cfg.epc_mb:g})")
    if cfg.suvm_cache_bytes < 4 * cfg.suvm_page_size:
        raise ConfigError(f"ELEOS_SUVM_CACHE_MB={cfg.suvm_cache_mb:g}: the SUVM page cache must hold "
                          f"at least 4 pages of {cfg.suvm_page_size} bytes")
    if cfg.suvm_subpage and cfg.suvm_subpage >= cfg.suvm_page_size:
        raise ConfigError(f"ELEOS_SUVM_SUBPAGE={cfg.suvm_subpage}: must be smaller than "
                          f"ELEOS_SUVM_PAGE_SIZE={cfg.suvm_page_size} (or 0 = off)")
    if cfg.epc_bytes < 16 * 4096:
        raise ConfigError(f"ELEOS_EPC_MB={cfg.epc_mb:g}: the EPC must hold at least 16 pages (0.0625 MB)")
    if cfg.ocall_cycles < cfg.eexit_cycles:
        raise ConfigError(f"ELEOS_OCALL_CYCLES={cfg.ocall_cycles}: a whole OCALL's budget must be at "
                          f"least its EEXIT part (ELEOS_EEXIT_CYCLES={cfg.eexit_cycles})")
    if cfg.rpc_slots & (cfg.rpc_slots - 1):
        raise ConfigError(f"ELEOS_RPC_SLOTS={cfg.rpc_slots}: expected a power of two")
    return cfg


def settings_in_environ(overrides: Mapping[str, str] | None = None,
                        drop: tuple[str, ...] = ()) -> dict[str, str]:
    """This process's ELEOS_ variables with ``overrides`` on top, less the names in ``drop``:
    the settings a tool (``eleos-shim compare``) hands on to the children it runs."""
    merged = {**os.environ, **(overrides or {})}
    return {k: v for k, v in merged.items() if k.startswith("ELEOS_") and k not in drop}


def environ_without_settings(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment (default: this process's) without any ELEOS_ variable: the start of a
    child's environment that gets a configuration of its own."""
    return {k: v for k, v in (os.environ if base is None else base).items()
            if not k.startswith("ELEOS_")}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per option (raw strings; :func:`resolve` checks them)."""
    group = parser.add_argument_group("enclave options (each also the environment variable shown)")
    for opt in OPTIONS:
        group.add_argument(opt.flag, dest=opt.field, default=None, metavar=opt.metavar or "VALUE",
                           help=f"{opt.help} [{opt.env}]")


def describe(cfg: Config) -> str:
    return (f"mode={cfg.mode} syscalls={cfg.syscalls} memory={cfg.memory} "
            f"epc={cfg.epc_mb:g}MB cost={cfg.cost} time_scale={cfg.time_scale:g}")

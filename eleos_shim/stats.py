"""Stats: the JSON of DESIGN.md section 4 and a readable report (eleos_shim/).

``collect`` gathers the counters every component keeps (the modeled CPU's transitions and
per-event budgets, the enclave stubs' per-call counts, the RPC pool, the EPC driver, SUVM) into
one dict; ``write`` puts it where ``ELEOS_STATS`` says: a JSON file, or ``-`` for the report on
stderr.  ``events`` holds, per modeled event (``ocall``, ``epc_fault``, ``indirect``), totals
over the run: ``count``, ``budget_cycles``, ``paid_cycles``, ``real_cycles``, ``spun_cycles``
and ``overruns`` (events whose real part alone exceeded the budget); ``modeled_s`` is the time
the app paid in them and ``modeled_share`` that over ``wall_s``.
"""
from __future__ import annotations

import json
import posix  # the real syscalls: the LibOS patches ``os``, and the shim's own I/O is not the app's
import sys

EPC_KEYS = ("limit_bytes", "faults", "ewb", "eldu")
from eleos_shim.cpu import EVENT_FIELDS, EVENTS

SUVM_KEYS = ("hits", "faults", "evictions", "writebacks", "subpage_reads", "integrity_errors")


def collect(enclave, wall_s: float) -> dict:
    cfg = enclave.cfg
    out = {
        "mode": cfg.mode, "syscalls": cfg.syscalls, "memory": cfg.memory,
        "cost": cfg.cost, "wall_s": wall_s, "time_scale": cfg.time_scale,
        "events": {e: {f: 0 for f in EVENT_FIELDS} for e in EVENTS},
        "modeled_s": 0.0, "modeled_share": 0.0,
        "transitions": {"eenter": 0, "eexit": 0, "aex": 0, "eresume": 0,
                        "modeled_cycles": 0, "modeled_s": 0.0, "pollutions": 0},
        "calls": {},
        "rpc": {"processed": 0, "fallbacks": 0, "worker_cpu_s": 0.0, "workers": 0},
        "epc": {"limit_bytes": cfg.epc_bytes if cfg.memory == "epc" else 0,
                "faults": 0, "ewb": 0, "eldu": 0},
        "suvm": {k: 0 for k in SUVM_KEYS},
    }
    if enclave.cpu is not None:
        out["transitions"] = enclave.cpu.counters()
        out["tsc_mhz"] = enclave.cpu.tsc_hz / 1e6
        out["events"] = enclave.cpu.events()
        out["modeled_s"] = out["transitions"]["modeled_s"]
        out["modeled_share"] = out["modeled_s"] / wall_s if wall_s > 0 else 0.0
    if enclave.transport is not None:
        out["calls"] = enclave.transport.counts()
    if enclave.host is not None:
        out.update(enclave.host.stats())
    if cfg.syscalls == "rpc":
        out["rpc"]["wait"] = cfg.rpc_wait
        out["rpc"]["waits_blocked"] = (enclave.transport.waits_blocked()
                                       if enclave.transport is not None else 0)
    memory = enclave.memory
    if memory is not None and hasattr(memory, "stats"):
        part = memory.stats()
        key = "suvm" if cfg.memory == "suvm" else "epc"
        out[key].update(part.get(key, part) if isinstance(part, dict) else {})
    if getattr(enclave, "domain", None) is not None:   # ELEOS_EPC_DOMAIN: the shared EPC
        out["epc_domain"] = enclave.domain.stats()
    out["exits"] = exits_summary(out)
    return out


def exits_summary(stats: dict) -> dict:
    """How many exits the app paid and why (the report's answer to 'what is left?')."""
    calls = stats["calls"]
    ocall = sum(c.get("ocall", 0) for c in calls.values())
    fallback = sum(c.get("fallback", 0) for c in calls.values())
    why = {}
    if stats["syscalls"] == "rpc":
        why["calls that may block, exited (program starts; waits with ELEOS_RPC_WAIT=ocall)"] = ocall
        why["fallbacks (no RPC worker took the call in time, the ring was full, "
            "or every worker slept)"] = fallback
    else:
        why["ocalls"] = ocall + fallback
    why["page faults (AEX)"] = stats["transitions"].get("aex", 0)
    return {"total": stats["transitions"].get("eexit", 0) + stats["transitions"].get("aex", 0),
            "why": why}


def report(stats: dict) -> str:
    from eleos_shim.report import report as readable   # the readable report's own module
    return readable(stats)


def write(stats: dict, where: str) -> None:
    if where == "-":
        sys.stderr.write(report(stats) + "\n")
        sys.stderr.flush()
        return
    data = json.dumps(stats, indent=1, sort_keys=True, default=str).encode()
    tmp = f"{where}.tmp{posix.getpid()}"
    fd = posix.open(tmp, posix.O_WRONLY | posix.O_CREAT | posix.O_TRUNC | posix.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[posix.write(fd, view):]
    finally:
        posix.close(fd)
    posix.rename(tmp, where)

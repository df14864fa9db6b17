"""``eleos-shim epc DOMAIN [--watch] [--json]``: a shared EPC at a glance (eleos_shim/, host tooling).

Reads the domain's table (untrusted/epc_domain.py) as any of its enclaves sees it: the EPC's
size and free frames, and per enclave its pid, kind (``sgx``: paged by the SGX driver model;
``suvm``: an SUVM page cache ballooning in the EPC), resident pages and share, faults (pages
loaded), pages given back, and its balloon's target and floor.  Looking sweeps the table: an
enclave whose process died is removed and its frames are free again.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from untrusted import epc_domain

PAGE = 4096


def render(snap: dict) -> str:
    limit = snap["limit_pages"]
    mb = limit * PAGE / 2**20
    n = len(snap["members"])
    lines = [f"EPC domain {snap['name']}: {mb:g} MB ({limit} pages), {snap['free_pages']} free, "
             f"{n} enclave{'s' if n != 1 else ''}; watermarks {snap['low_watermark']}/"
             f"{snap['high_watermark']}; {snap['deaths']} died ({snap['dead_pages_reclaimed']} pages "
             f"taken back)" + (f"; balloon manager: pid {snap['manager_pid']}" if snap["manager_pid"] else ""),
             f"{'pid':>8} {'kind':<5} {'resident':>9} {'share':>7} {'faults':>10} {'returned':>10} "
             f"{'target':>8} {'floor':>7}"]
    for m in snap["members"]:
        balloon = m["kind"] == "suvm"
        lines.append(f"{m['pid']:>8} {m['kind']:<5} {m['resident_pages']:>9} "
                     f"{100.0 * m['resident_pages'] / max(1, limit):>6.1f}% {m['loads']:>10} "
                     f"{m['returned']:>10} {m['target_pages'] if balloon else '-':>8} "
                     f"{m['floor_pages'] if balloon else '-':>7}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="eleos-shim epc", description="The shared EPC of an "
                                "ELEOS_EPC_DOMAIN: size, free frames, each enclave's share.")
    p.add_argument("domain", help="the domain's name (ELEOS_EPC_DOMAIN of its enclaves)")
    p.add_argument("--watch", action="store_true", help="refresh until interrupted")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes (1)")
    p.add_argument("--json", action="store_true", help="print the state as JSON")
    ns = p.parse_args(argv)
    if ns.interval <= 0:
        p.error("--interval must be positive")
    try:
        while True:
            try:
                snap = epc_domain.snapshot(ns.domain)
            except epc_domain.DomainError as exc:
                if not ns.watch:
                    sys.stderr.write(f"eleos-shim: {exc}\n")
                    return 1
                text = f"{exc}; waiting for an enclave"
            else:
                text = json.dumps(snap, indent=1) if ns.json else render(snap)
            if ns.watch:
                sys.stdout.write("\x1b[H\x1b[2J" + time.strftime("%H:%M:%S ") + text + "\n")
                sys.stdout.flush()
                time.sleep(ns.interval)
            else:
                print(text)
                return 0
    except KeyboardInterrupt:
        return 0

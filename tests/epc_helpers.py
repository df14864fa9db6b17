"""Resident EPC pages as the kernel sees them, independently of the driver's own accounting.

A page is in the EPC while the app's view maps it: the driver installs a page by mapping it
(UFFDIO_COPY / UFFDIO_CONTINUE, or mprotect read-write) and EBLOCKs it by unmapping it
(MADV_DONTNEED, or mprotect PROT_NONE) before its EWB wipes its frame.  The frames themselves
stay allocated in the region's memfd (a wiped frame is not in the EPC), so what counts is the
app's page table: the Rss of the readable mappings of an EPC memfd in /proc/PID/smaps.  The
modeled CPU's own view of each region (eleos_shim/_native/epcm.c) maps every frame; it is not
inherited by a fork (VmFlags ``dc``; both views are out of core dumps), which is how it is told
apart and left out.
"""
from __future__ import annotations

PAGE = 4096
EPC_MEMFD = "memfd:eleos-epc"


def _vmas(pid: int | str):
    """(start, end, perms, path, rss_kb, vmflags) of every mapping of process ``pid``."""
    with open(f"/proc/{pid}/smaps") as f:
        cur = None
        for line in f:
            head = line.split()
            if head and "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
                if cur:
                    yield cur
                start, end = (int(x, 16) for x in head[0].split("-"))
                cur = [start, end, head[1], " ".join(head[5:]), 0, ""]
            elif head and head[0] == "Rss:":
                cur[4] = int(head[1])
            elif head and head[0] == "VmFlags:":
                cur[5] = " ".join(head[1:])
        if cur:
            yield cur


def app_mapped_pages(pid: int | str = "self", ranges: list[tuple[int, int]] | None = None) -> int:
    """Pages of EPC memory the app's views of process ``pid`` map (readable, in its page
    table), only within ``ranges`` ((address, length) pairs) if given."""
    total = 0
    for start, end, perms, path, rss_kb, flags in _vmas(pid):
        if EPC_MEMFD not in path or not perms.startswith("r") or "dc" in flags.split():
            continue
        if ranges is not None and not any(a <= start and end <= a + n for a, n in ranges):
            continue
        total += rss_kb * 1024 // PAGE
    return total

"""Fork of an enclave, Graphene-SGX style (eleos_shim/: knows both halves).

Graphene-SGX (USENIX ATC'17), the LibOS Eleos ran on, and Gramine after it fork an enclave so:
the child is a NEW enclave; the parent checkpoints its state, the two attest each other
locally, and the checkpoint goes over an encrypted channel and is restored in the child before
the app's code runs there.  Here the child is a real ``fork(2)`` of the process, rebuilt before
``os.fork()`` returns 0 in it:

* what the real fork copies privately is the enclave's state as the checkpoint would carry it:
  the interpreter and the LibOS (the app's objects, its fd table), SUVM's page cache, page
  table and sealed backing store (all private memory);
* what it cannot copy is rebuilt.  Native threads do not survive a fork: the RPC workers are
  started anew on the child's copy of the ring (emptied of what the parent had in flight), and
  the EPC driver is forgotten and started anew (its threads, its userfaultfd: registrations
  are not inherited).  Shared mappings stay shared: every EPC region is a memfd the parent
  keeps using, so the parent checkpoints the maps' contents (read through its own view, which
  faults evicted pages in) and the child maps regions of its own at the same addresses and
  writes the pages back in (paging as it goes, against its own EPC);
* locks another thread held at the fork are made anew in the child: SUVM's, the EPC
  driver's, the CPU's and the store's; the LibOS holds its fd table's lock across the fork.
  SUVM is NOT quiesced at the fork (holding its locks until the fork deadlocked: a thread
  touching SUVM memory waits on a page lock holding the GIL), so a fault or eviction another
  thread has half done at that instant can leave that one page wrong in the child (an
  IntegrityError there; a dirty page whose eviction was cut stops the child, which would
  have read the copy from before: suvm.c, suvm_fork_child) or a cache frame lost to it.  Nor is the EPC: the checkpoint is read
  while the app's other threads run (the GIL changes hands in it), so a write another thread
  makes meanwhile may be in the child's copy of one page and not of another; a map made
  between the checkpoint and the fork is in none, and that child is not built (it would keep
  the parent's memfd there: EPC.restore_in_child);
* keys: the child is a new enclave, so it draws its own.  The EPC's paging key and version
  array start afresh (no page of the parent's can be loaded in the child: the child's
  regions are filled from the checkpoint, not from the parent's sealed pages); SUVM's store is
  re-sealed page by page under the child's own key (each opened under the parent's first: a
  page the host tampered with fails there).  So nothing one of them seals can be swapped into
  the other's store.

What this models of Graphene and what it does not: the channel's attestation and encryption
are not run (the checkpoint never leaves enclave memory: the fork copies it), and the
child's enclave creation (ECREATE, EADD/EEXTEND of its image) is not modeled apart.  The
whole fork is one event with a budget (ELEOS_FORK_CYCLES, a placeholder: config.COSTS says
why), charged to the parent as an OCALL-like exit; the checkpoint and the fork(2) itself are
its real part (the child's restore runs in the child, which is another process).

Stats: the child writes none (ELEOS_STATS is the parent's: the child would clobber it), and
its counters start at zero.  EPC: each child has an EPC of its own (``ELEOS_EPC_MB``), as a new
process has; in an EPC domain (ELEOS_EPC_DOMAIN) fork is refused: joining the domain from a
forked child is not modeled.
"""
from __future__ import annotations

import os
import posix
import sys


class EnclaveForker:
    """The host's half of ``os.fork()`` for one enclave (the loader's ``Enclave``): what the
    trusted side calls (trusted/libos/proc.py), which checks the pid it answers."""

    def __init__(self, enclave):
        self.enclave = enclave

    def refused(self) -> str | None:
        """Why this enclave cannot fork, or None."""
        cfg = self.enclave.cfg
        if cfg.epc_domain:
            return (f"in an EPC domain (ELEOS_EPC_DOMAIN={cfg.epc_domain}) a forked child "
                    f"would have to join the domain as a new enclave, which is not modeled")
        return None

    def __call__(self) -> int:
        enc = self.enclave
        cpu, memory, cfg = enc.cpu, enc.memory, enc.cfg
        t0 = cpu.ticks()
        checkpoint = memory.checkpoint() if cfg.memory == "epc" else None
        suvm = memory if cfg.memory == "suvm" else None
        # SUVM is not quiesced across the fork (Suvm.fork_prepare): another thread that
        # touches SUVM memory waits for a page's lock holding the GIL, so holding those locks
        # until posix.fork() deadlocked the parent (tests/test_libos_fork.py).
        me = os.getpid()
        pid = posix.fork()
        # Which process this is, is not the host's answer: the one that asked is the parent,
        # any other the child, rebuilt whatever it was told (a child told a pid ran on the
        # parent's EPC regions and SUVM key; a parent told 0 was "rebuilt").  The answer goes
        # to the trusted side as given, which checks it (trusted/libos/proc.py, Forker).
        if os.getpid() == me:
            del checkpoint
            cpu.charge_fork(cpu.ticks() - t0)
            return pid
        try:
            self._rebuild_child(checkpoint, suvm)
        except BaseException as exc:
            # The new enclave could not be built: it never runs the app (the parent sees a
            # child that exited at once).
            try:
                sys.stderr.write(f"eleos-shim: the forked child enclave could not be built: "
                                 f"{type(exc).__name__}: {exc}\n")
                sys.stderr.flush()
            finally:
                os._exit(70)
        return pid

    def _rebuild_child(self, checkpoint, suvm) -> None:
        enc = self.enclave
        enc.forked_child = True
        enc.cpu.reset()                      # the child's counters are its own
        if suvm is not None:
            store = getattr(suvm, "backing_store", None)
            if store is not None:
                store.after_fork()
            suvm.fork_child()
        if checkpoint is not None:
            enc.memory.restore_in_child(checkpoint)
        enc.restart_host_in_child()

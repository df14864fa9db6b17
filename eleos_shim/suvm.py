"""eleos_shim.suvm: the public SUVM module (eleos_shim/, knows both halves).

Apps that opt in use it directly, as memcached did in the paper::

    from eleos_shim.suvm import suvm_malloc, suvm_free, SecureMemory
    p = suvm_malloc(4096); p[0:5] = b"hello"; suvm_free(p)

The implementation is in trusted/suvm.py (enclave side) over untrusted/backing_store.py
(host side).  This module is the bridge: it builds the backing store and hands the enclave
its addresses, as the loader does for the OCALL table.  Outside the loader a default
instance is built lazily from ``Config.from_env()`` on first use; the loader installs its
own with :func:`install`.  :func:`heap_factory` is what the LibOS calls for an app's
anonymous ``mmap.mmap(-1, n)`` under ``ELEOS_MEMORY=suvm``.
"""
from __future__ import annotations

from eleos_shim.config import Config
from trusted import suvm as _trusted
from trusted.suvm import SecureMemory, SPointer, Suvm, suvm_free
from untrusted.backing_store import BackingStore

__all__ = ["SecureMemory", "SPointer", "Suvm", "create", "install", "install_default", "instance", "heap_factory",
           "suvm_malloc", "suvm_free", "stats", "BackingStore"]


def create(cfg: Config | None = None, *, charge_fn: int = 0, pollute_fn: int = 0,
           **overrides) -> Suvm:
    """A new SUVM instance with its own backing store, sized by ``cfg`` (default: from the
    environment).  ``overrides`` replace config fields (``cfg.replace``).  ``charge_fn`` is the
    modeled CPU's ``cpu_charge`` address, charged as an OCALL when the store grows, and
    ``pollute_fn`` its ``cpu_pollute``, which opens the indirect window after that exit."""
    cfg = cfg or Config.from_env()
    if overrides:
        cfg = cfg.replace(**overrides)
    store = BackingStore(cfg.suvm_store_bytes, cfg.suvm_page_size)
    inst = Suvm(store.bridge(), cache_bytes=cfg.suvm_cache_bytes, page_size=cfg.suvm_page_size,
                subpage=cfg.suvm_subpage, eviction=cfg.suvm_eviction, charge_fn=charge_fn,
                pollute_fn=pollute_fn, overwrite=cfg.suvm_overwrite)
    inst.backing_store = store   # the host's side, for stats and the adversary API in tests
    inst.on_close.append(store.close)   # the enclave is gone: the host unmaps its store
    return inst


def install(inst: Suvm | None) -> None:
    """Make ``inst`` the instance that suvm_malloc and SecureMemory use (None: back to lazy)."""
    _trusted.set_default(inst)


def instance() -> Suvm:
    """The current default instance (built on first use)."""
    return _trusted.default()


def suvm_malloc(n: int) -> SPointer:
    """A zeroed SUVM allocation of n bytes from the default instance."""
    return _trusted.default().malloc(n)


def install_default(cfg: Config | None = None, cpu=None) -> Suvm:
    """Build the enclave's SUVM from ``cfg`` and make it the default (the loader's entry).
    ``cpu`` (eleos_shim.cpu.ModeledCPU) is charged an OCALL when the backing store grows
    (its indirect window after it included)."""
    charge = int(getattr(cpu, "charge_fn", 0) or 0) if cpu is not None else 0
    pollute = int(getattr(cpu, "pollute_fn", 0) or 0) if cpu is not None else 0
    inst = create(cfg, charge_fn=charge, pollute_fn=pollute)
    install(inst)
    if cfg.epc_domain:
        inst.domain = SuvmDomain(inst, cfg)
    return inst


# How long a joining SUVM enclave waits for the domain to make room for its balloon's floor
# (the manager's next rounds shrink the others within a second or so).
FLOOR_WAIT_S = 30.0


class SuvmDomain:
    """An SUVM enclave in an EPC domain (ELEOS_EPC_DOMAIN): its page cache is a balloon.

    Joins the domain holding the balloon's floor, starts the host's agent (which grows the
    cache into whatever is free, and follows the manager's targets) and a manager (which acts
    if it is the domain's).  The enclave side is trusted/balloon.py; the host side
    untrusted/balloon_host.py: this class only connects them, as the loader does."""

    def __init__(self, inst: Suvm, cfg: Config):
        from eleos_shim.config import ConfigError
        from trusted.balloon import Balloon
        from untrusted.balloon_host import POLICIES, BalloonHost, Manager
        from untrusted.epc_domain import Domain, DomainError
        self.balloon = Balloon(inst)
        # The enclave starts at its floor: the cache's other frames go back at once.
        self.balloon.resize(self.balloon.floor_pages)
        try:
            self.domain = Domain(cfg.epc_domain, cfg.epc_bytes // 4096, "suvm",
                                 floor_pages=self.balloon.floor_pages, cap_pages=self.balloon.cap_pages)
        except DomainError as exc:
            raise ConfigError(str(exc)) from None
        # The manager first, so that it can count this enclave if it is the domain's: the
        # others' balloons then shrink to make room for its floor.
        self.manager = Manager(self.domain, POLICIES[cfg.epc_balloon]())
        self.manager.start()
        try:
            held = self.domain.take_floor(self.balloon.floor_pages, FLOOR_WAIT_S)
        except DomainError as exc:
            self.manager.stop()
            self.domain.leave()
            raise ConfigError(str(exc)) from None
        self.agent = BalloonHost(self.domain, self.balloon.resize, self.balloon.demand,
                                 cap_pages=self.balloon.cap_pages, held=held)
        self.agent.start()
        self.domain.start_history()
        self._closed = False

    def stats(self) -> dict:
        d = self.domain.stats()
        d.update(policy=self.manager.policy.name, manager_rounds=self.manager.rounds,
                 manager_log=self.manager.log, agent_rounds=self.agent.rounds,
                 agent_slowest_apply_s=round(self.agent.slowest_apply_s, 4),
                 floor_pages=self.balloon.floor_pages, cap_pages=self.balloon.cap_pages,
                 resizes=self.balloon.resizes,
                 balloon_changes={"t_s": [c[0] for c in self.agent.changes],
                                  "target_pages": [c[1] for c in self.agent.changes],
                                  "held_pages": [c[2] for c in self.agent.changes]})
        return d

    def close(self) -> None:
        """Stop the agent and the manager and give the frames back.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.manager.stop()
        self.agent.stop()
        self.domain.leave()


def heap_factory(inst: Suvm | None = None):
    """The factory the LibOS calls for an app's anonymous ``mmap.mmap(-1, n, ...)`` under
    ``ELEOS_MEMORY=suvm``: ``factory(n, **kw) -> SecureMemory(n)`` in ``inst`` (default: the
    default instance).  Flags, prot and access change nothing for anonymous private memory in
    the enclave, so they are accepted and ignored."""
    def factory(n: int, **kwargs) -> SecureMemory:
        return SecureMemory(n, suvm=inst)
    return factory


def stats() -> dict:
    """The ``suvm`` section of the stats (DESIGN.md section 4), plus the store's size."""
    inst = _trusted.default()
    d = inst.stats()
    store = getattr(inst, "backing_store", None)
    if store is not None:
        d.update(store.stats())
    return d


_trusted.set_default_provider(lambda: create())

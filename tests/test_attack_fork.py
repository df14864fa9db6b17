"""A hostile host against the enclave's fork (eleos_shim/fork.py, trusted/libos/proc.py).

The host answers fork(2).  Swapping its answers between the two processes must not make
either run on state that is not its enclave's: the child told a pid (as if it were the
parent) was not rebuilt at all (under sgx it wrote the parent's EPC pages, its regions being
the parent's shared memfds; under eleos it kept the parent's SUVM key and seal counter, so the
two sealed under one key with the same nonces), and os.fork() returned the host's pid there;
the parent told 0 was "rebuilt" as a child (its key drawn anew, its host restarted, its stats
never written).  Now the process that asked is the parent and any other the child, whatever
the host answers, and os.fork() in the child checks that its answer is 0.

Under sgx the parent's checkpoint skipped the pages its EPC driver called "new" (never
touched): a host that called every page so gave the child zeros for the parent's data, with
no error.  Now every page is read.  A map made between the checkpoint and the fork (the host
holding the fork back while another thread runs) stayed the parent's memfd in the child: the
two enclaves wrote one memory.  Now such a child is not built.

Under eleos SUVM is not quiesced at the fork: a dirty page another thread was evicting at
that instant (unpublished, not yet sealed) read in the child as its stored copy from before
(zero, or stale data), with no error.  Now that child is not built (IntegrityError).
"""
from __future__ import annotations

import os
import posix

import pytest

from eleos_shim.errors import IagoError
from tests.test_libos_fork import SCRIPTS, _HostFork, forking_libos, run_shim  # noqa: F401

SCRIPT = SCRIPTS / "attack_fork_child_told_parent.py"


# Both memories (sgx: epc, eleos: suvm), each on both syscall paths.
CONFIGS = {"sgx": ("sgx", {}), "sgx-rpc": ("sgx", {"ELEOS_SYSCALLS": "rpc"}),
           "eleos": ("eleos", {}), "eleos-ocall": ("eleos", {"ELEOS_SYSCALLS": "ocall"})}
MEMORY = {"sgx": "epc", "eleos": "suvm"}


# Which process the host tells what, and what each then says (the script's lines).
SWAPPED = {"child": ["child os.fork IagoError", "parent os.fork a pid"],
           "parent": ["child os.fork returned 0", "parent os.fork IagoError"]}


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("told", list(SWAPPED))
def test_a_swapped_fork_answer_leaves_the_parent_the_parent_and_the_child_a_new_enclave(
        told, config, tmp_path):
    """told=child: the child told it is the parent is a new enclave and gets an IagoError;
    told=parent: the parent told it is the child stays the parent."""
    mode, env = CONFIGS[config]
    run = run_shim(mode, SCRIPT, MEMORY[mode], told, tmp_path / "out", env=env, timeout=40)
    assert run.returncode == 0, run.stderr
    want = list(SWAPPED[told])
    if mode == "eleos":
        want += ["child key is the parent's False", "parent key kept True"]
    want += ["parent map b'first'"]               # the child's write is its own
    assert run.stdout.splitlines() == want, run.stdout + run.stderr
    if told == "child":
        assert run.stats["events"]["fork"]["count"] == 1
        assert (run.stats["syscalls"], run.stats["memory"]) == (
            env.get("ELEOS_SYSCALLS", "ocall" if mode == "sgx" else "rpc"), MEMORY[mode])
    else:
        assert (tmp_path / "out").read_text() == "parent still runs\n"
        # The parent is still the parent: its stats are written, its fork charged.
        assert run.stats is not None and run.stats["events"]["fork"]["count"] == 1


class _ChildToldAPid(_HostFork):
    """A real fork(2) whose child is answered a pid, as if it were the parent."""

    def __init__(self):
        super().__init__(None)

    def __call__(self):
        child = posix.fork()
        if child:
            self.children.append(child)
            return child
        return 4242


def test_the_libos_refuses_a_pid_answered_in_the_child(forking_libos):
    # In-process (the ocall transport): what the child's os.fork() does, reported on a pipe.
    host_fork = _ChildToldAPid()
    forking_libos(host_fork)
    r, w = posix.pipe()
    me = os.getpid()
    try:
        got, what = os.fork(), b"pid"
    except IagoError as e:
        got, what = None, b"iago" if "child" in str(e) else b"other"
    if os.getpid() != me:
        posix.write(w, what)
        os._exit(0)
    posix.close(w)
    report = posix.read(r, 10)
    posix.close(r)
    assert got == host_fork.children[0]
    assert report == b"iago"


def test_the_drivers_word_on_which_pages_are_new_does_not_decide_the_childs_pages():
    # A 6 MB map in a 2 MB EPC: evicted and resident pages, every one written by the parent.
    run = run_shim("sgx", SCRIPTS / "attack_fork_page_states.py", 6,
                   env={"ELEOS_EPC_MB": "2"}, timeout=40)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["child bad pages 0", "child status 0"], run.stdout


def test_a_map_made_between_the_checkpoint_and_the_fork_is_not_shared_with_the_child():
    # It was: the child kept the parent's memfd there, and its write reached the parent.
    run = run_shim("sgx", SCRIPTS / "attack_fork_late_map.py", timeout=40)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["parent sees b'late'", "child status 70"], run.stdout
    assert "could not be built: RuntimeError: 1 EPC map(s) made by another thread during " \
           "the fork are not in its checkpoint" in run.stderr


def test_a_dirty_page_whose_eviction_the_fork_cut_stops_the_child():
    # It read as the stored copy from before (zero: never written back), with no error.
    run = run_shim("eleos", SCRIPTS / "attack_fork_half_evict.py", timeout=40)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["child status 70"], run.stdout
    assert "forked child enclave could not be built: IntegrityError" in run.stderr

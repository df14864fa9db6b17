"""Helpers for tests that race the enclave with a hostile host thread (test helper).

The racer (untrusted.backing_store.Racer) runs on one CPU and the enclave's side of the race
on another, both pinned, so the two really run at the same time; on a machine with one CPU
the race would only happen at preemption points, so those tests are skipped there.
"""
from __future__ import annotations

import contextlib
import os

import pytest

from untrusted.backing_store import Racer


def two_cpus() -> tuple[int, int]:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("racing a host thread needs two CPUs")
    return cpus[0], cpus[1]


@contextlib.contextmanager
def racing():
    """Pin the calling thread (and the threads it starts) to one CPU and yield a Racer pinned
    to another; both are undone on exit."""
    mine, other = two_cpus()
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {mine})
    try:
        with Racer(other) as racer:
            yield racer
    finally:
        os.sched_setaffinity(0, old)


def check_raced(raced: int, rounds: int) -> None:
    """The race must really have happened in a good share of the rounds, else the test proved
    nothing (the racer never got its CPU): say so rather than pass."""
    assert raced >= rounds // 10, (
        f"the host thread raced only {raced} of {rounds} rounds: the machine is too busy for "
        "this race to prove anything; rerun it alone")

"""The SUVM core has no data races: 4 pthreads fault, evict, seal and read sub-pages of shared
pages at once under ThreadSanitizer (the C core built with -fsanitize=thread, no Python).

Each thread touches only its own 64-byte cells, so every race TSan could report is one inside
SUVM (page table, frames, pins, replacement lists), not one the test itself makes."""
from pathlib import Path

import pytest

from tests import tsan

ROOT = Path(__file__).resolve().parent.parent

HARNESS = r"""
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "suvm.h"
uintptr_t store_new(uint64_t); uintptr_t store_base(uintptr_t); uint64_t store_capacity(uintptr_t);
uintptr_t store_grow_fn(void); uintptr_t store_discard_fn(void); void store_destroy(uintptr_t);
static suvm_t *S;
static const uint64_t REG = 64 * 4096;
static void *work(void *arg)
{
    int t = (int)(intptr_t)arg;
    uint64_t x = 88172645463325252ull ^ (uint64_t)(t + 1) * 7919;
    uint8_t buf[64], chk[64];
    for (int i = 0; i < 2500; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        uint64_t off = (((x % (REG / 64)) & ~3ull) + t) * 64;          /* a cell of thread t */
        memset(buf, (uint8_t)(t * 31 + i), 64);
        int fast = suvm_copy_resident(S, off, buf, 64, 1) == 64;       /* the hazard-pinned path */
        if ((!fast && suvm_write(S, off, buf, 64)) || suvm_read(S, off, chk, 64) ||
            memcmp(buf, chk, 64)) {
            printf("thread %d: wrong data\n", t);
            exit(1);
        }
        uint64_t other = ((((x >> 20) % (REG / 64)) & ~3ull) + t) * 64; /* maybe not resident */
        if (suvm_read(S, other, chk, 64) || suvm_copy_resident(S, other, chk, 8, 0) > 8) {
            printf("thread %d: read failed\n", t);
            exit(1);
        }
    }
    return NULL;
}
int main(int argc, char **argv)
{
    uintptr_t st = store_new(1 << 24);
    S = suvm_new(6 * 4096, 4096, atoi(argv[2]), atoi(argv[1]), st, store_base(st),
                 store_capacity(st), store_grow_fn(), store_discard_fn(), 0);
    if (!S || suvm_reserve(S, REG))
        return 3;
    pthread_t th[4];
    for (int round = 0; round < 2; round++) {   /* the second round reuses the exited threads' slots */
        for (int t = 0; t < 4; t++)
            pthread_create(&th[t], NULL, work, (void *)(intptr_t)t);
        for (int t = 0; t < 4; t++)
            pthread_join(th[t], NULL);
    }
    suvm_flush(S);
    suvm_evict_all(S);
    uint64_t out[SUVM_ST_COUNT];
    suvm_stats(S, out);
    printf("faults %llu subpage_reads %llu integrity %llu\n", (unsigned long long)out[SUVM_ST_FAULTS],
           (unsigned long long)out[SUVM_ST_SUBPAGE_READS], (unsigned long long)out[SUVM_ST_INTEGRITY]);
    suvm_destroy(S);
    store_destroy(st);
    return 0;
}
"""


@pytest.fixture(scope="module")
def tsan_binary(tmp_path_factory):
    return tsan.build(tmp_path_factory.mktemp("suvm_tsan"), "suvm_tsan", HARNESS,
                      ["trusted/_native/suvm.c", "untrusted/_native/store.c"],
                      ["trusted/_native", "eleos_shim/include", "eleos_shim/_native"],
                      ["crypto", "pthread"])


@pytest.mark.parametrize("policy,subpage", [(0, 0), (1, 512), (2, 0), (3, 512)],
                         ids=["fifo", "lru-subpages", "clock", "random-subpages"])
def test_core_has_no_data_races_under_four_threads(tsan_binary, policy, subpage):
    proc = tsan.run(tsan_binary, str(policy), str(subpage))
    assert "ThreadSanitizer" not in proc.stderr, proc.stderr[:4000]
    assert proc.returncode == 0, proc.stdout + proc.stderr[:2000]
    counts = dict(zip(proc.stdout.split()[::2], map(int, proc.stdout.split()[1::2])))
    assert counts["faults"] > 1000 and counts["integrity"] == 0
    if subpage:
        assert counts["subpage_reads"] > 0

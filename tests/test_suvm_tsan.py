"""The SUVM core has no data races: 4 pthreads fault, evict, seal and read sub-pages of shared
pages at once under ThreadSanitizer (the C core built with -fsanitize=thread, no Python); nor
has its allocator (suvm_heap.c), with 4 threads allocating and freeing beside a balloon.

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


HEAP_HARNESS = r"""
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "suvm.h"
uintptr_t store_new(uint64_t); uintptr_t store_base(uintptr_t); uint64_t store_capacity(uintptr_t);
uintptr_t store_grow_fn(void); uintptr_t store_discard_fn(void); void store_destroy(uintptr_t);
static suvm_t *S;
static suvm_heap_t *H;
static volatile int stop_balloon;
#define KEEP 24
static void *work(void *arg)
{
    int t = (int)(intptr_t)arg;
    uint64_t x = 88172645463325252ull ^ (uint64_t)(t + 1) * 7919;
    uint64_t addr[KEEP] = {0}, len[KEEP] = {0};
    uint8_t buf[9000], chk[9000];
    for (int i = 0; i < 3000; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        int k = (int)(x % KEEP);
        if (len[k]) {                        /* check what this thread wrote, then free it */
            memset(buf, (uint8_t)(t * 64 + k), len[k]);
            if (suvm_read(S, addr[k], chk, len[k]) || memcmp(buf, chk, len[k])) {
                printf("thread %d: an allocation lost its bytes\n", t);
                exit(1);
            }
            if (suvm_heap_free(H, addr[k])) {
                printf("thread %d: free refused\n", t);
                exit(1);
            }
            len[k] = 0;
        }
        uint64_t n = (x >> 8) % 4 ? 1 + (x >> 16) % 2048 : 2049 + (x >> 16) % 6000, size;
        if (suvm_heap_alloc(H, n, &addr[k], &size) || size < n) {
            printf("thread %d: alloc failed\n", t);
            exit(1);
        }
        if (suvm_read(S, addr[k], chk, n) || memchr(chk, 1, n) || memchr(chk, 255, n)) {
            printf("thread %d: a new allocation is not zero\n", t);
            exit(1);
        }
        memset(buf, (uint8_t)(t * 64 + k), n);
        suvm_write(S, addr[k], buf, n);
        len[k] = n;
    }
    for (int k = 0; k < KEEP; k++)
        if (len[k])
            suvm_heap_free(H, addr[k]);
    return NULL;
}
static void *balloon(void *arg)
{
    for (uint32_t i = 0; !__atomic_load_n(&stop_balloon, __ATOMIC_RELAXED); i++) {
        uint64_t out[SUVM_ST_COUNT];
        suvm_heap_resize(H, 8 + i % 24);
        suvm_heap_stats(H, out);
        suvm_heap_cache_frames(H);
    }
    return NULL;
}
int main(void)
{
    uintptr_t st = store_new(1 << 24);
    S = suvm_new(32 * 4096, 4096, 0, 2, st, store_base(st), store_capacity(st), store_grow_fn(),
                 store_discard_fn(), 0);
    H = S ? suvm_heap_new(S, 4096, store_capacity(st)) : NULL;
    if (!H)
        return 3;
    pthread_t th[4], b;
    pthread_create(&b, NULL, balloon, NULL);
    for (int t = 0; t < 4; t++)
        pthread_create(&th[t], NULL, work, (void *)(intptr_t)t);
    for (int t = 0; t < 4; t++)
        pthread_join(th[t], NULL);
    printf("allocated %llu\n", (unsigned long long)suvm_heap_allocated(H));
    __atomic_store_n(&stop_balloon, 1, __ATOMIC_RELAXED);
    pthread_join(b, NULL);
    uint64_t a, sz;
    int first = suvm_heap_close(H), second = suvm_heap_close(H);
    int refused = suvm_heap_alloc(H, 10, &a, &sz) == SUVM_EINVAL && suvm_heap_resize(H, 8) == 0;
    printf("closed %d %d refused %d\n", first, second, refused);
    suvm_destroy(S);
    suvm_heap_free_struct(H);
    store_destroy(st);
    return 0;
}
"""


def test_allocator_has_no_data_races_under_four_threads_and_a_balloon(tmp_path):
    exe = tsan.build(tmp_path, "suvm_heap_tsan", HEAP_HARNESS,
                     ["trusted/_native/suvm.c", "trusted/_native/suvm_heap.c",
                      "untrusted/_native/store.c"],
                     ["trusted/_native", "eleos_shim/include", "eleos_shim/_native"],
                     ["crypto", "pthread"])
    proc = tsan.run(exe)
    assert "ThreadSanitizer" not in proc.stderr, proc.stderr[:4000]
    assert proc.returncode == 0, proc.stdout + proc.stderr[:2000]
    assert proc.stdout == "allocated 0\nclosed 1 0 refused 1\n"

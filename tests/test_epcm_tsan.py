"""The modeled CPU's EWB/ELDU have no data races: 4 pthreads seal and load their own pages of
one region while a fifth registers and removes other regions, under ThreadSanitizer (epcm.c
built with -fsanitize=thread, no Python, no driver).

Each thread works on its own pages through a shared mapping of the region's memfd, so any race
TSan reports is one inside the CPU (its region table, its per-thread frames, the version
array); the harness also checks that every page comes back as it was sealed."""
from pathlib import Path

from tests import tsan

ROOT = Path(__file__).resolve().parent.parent

HARNESS = r"""
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
int epcm_init(void);
uint64_t epcm_epa(uint64_t n);
int epcm_region_add(uint64_t base, uint64_t nbytes, uint64_t va_first, int memfd);
int epcm_region_remove(uint64_t base);
int epcm_ewb(uint64_t linaddr, uint64_t slot, void *out_page, void *out_pcmd);
int epcm_eldu(uint64_t linaddr, uint64_t slot, const void *page, const void *pcmd, int uffd,
              uint64_t result[2]);
enum { P = 4096, PER = 4, T = 4, ROUNDS = 300 };
static uint8_t *view;
static uint64_t slot0;
static void *work(void *arg)
{
    int t = (int)(intptr_t)arg;
    uint8_t *sealed = malloc(P * PER), tags[PER][16];
    for (int r = 0; r < ROUNDS; r++) {
        for (int k = 0; k < PER; k++) {
            uint64_t i = (uint64_t)t * PER + k;
            memset(view + i * P, (uint8_t)(t * 37 + r + k), P);
            if (epcm_ewb((uintptr_t)view + i * P, slot0 + i, sealed + k * P, tags[k]) != 0 ||
                view[i * P] != 0) {
                printf("thread %d: EWB failed\n", t);
                exit(1);
            }
        }
        for (int k = 0; k < PER; k++) {
            uint64_t i = (uint64_t)t * PER + k, res[2];
            if (epcm_eldu((uintptr_t)view + i * P, slot0 + i, sealed + k * P, tags[k], -1, res) != 0 ||
                view[i * P + P - 1] != (uint8_t)(t * 37 + r + k)) {
                printf("thread %d: ELDU failed\n", t);
                exit(1);
            }
        }
    }
    free(sealed);
    return NULL;
}
static volatile int stop;
static void *churn(void *arg)
{
    (void)arg;
    int fd = memfd_create("churn", 0);
    if (fd < 0 || ftruncate(fd, P) != 0)
        exit(4);
    uint64_t slot = epcm_epa(1);
    for (uint64_t n = 0; !__atomic_load_n(&stop, __ATOMIC_ACQUIRE); n++) {
        uint64_t base = 0x100000000000ull + (n % 7) * P;   /* never mapped: only the table */
        if (epcm_region_add(base, P, slot, fd) != 0 || epcm_region_remove(base) != 0)
            exit(5);
    }
    close(fd);
    return NULL;
}
int main(void)
{
    if (epcm_init() != 0)
        return 3;
    int fd = memfd_create("epc", 0);
    if (fd < 0 || ftruncate(fd, P * PER * T) != 0)
        return 3;
    view = mmap(NULL, P * PER * T, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    slot0 = epcm_epa(PER * T);
    if (view == MAP_FAILED || !slot0 || epcm_region_add((uintptr_t)view, P * PER * T, slot0, fd) != 0)
        return 3;
    pthread_t th[T], ch;
    pthread_create(&ch, NULL, churn, NULL);
    for (int t = 0; t < T; t++)
        pthread_create(&th[t], NULL, work, (void *)(intptr_t)t);
    for (int t = 0; t < T; t++)
        pthread_join(th[t], NULL);
    __atomic_store_n(&stop, 1, __ATOMIC_RELEASE);
    pthread_join(ch, NULL);
    printf("ok %d\n", T * PER * ROUNDS);
    return epcm_region_remove((uintptr_t)view);
}
"""


def test_cpu_paging_has_no_data_races_under_four_threads(tmp_path):
    exe = tsan.build(tmp_path, "epcm_tsan", HARNESS, ["eleos_shim/_native/epcm.c"],
                     ["eleos_shim/_native", "eleos_shim/include"], ["crypto", "pthread"])
    proc = tsan.run(exe)
    assert "ThreadSanitizer" not in proc.stderr, proc.stderr[:4000]
    assert proc.returncode == 0, proc.stdout + proc.stderr[:2000]
    assert proc.stdout.split() == ["ok", str(4 * 4 * 300)]

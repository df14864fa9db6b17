"""The RPC ring has no data races: 4 producer pthreads (the enclave side, enclave_rpc.c) and 2
workers (rpc_workers.c) run under ThreadSanitizer (both C files built with -fsanitize=thread,
no Python), with budgets short enough that calls are also taken back, on a large ring and on
a 4-slot one where producers fight for slots.  Every reply must be the one for its own call."""
from pathlib import Path

import pytest

from tests import tsan

ROOT = Path(__file__).resolve().parent.parent

HARNESS = r"""
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include "eleos_abi.h"
struct rpc_host;
struct rpc_host *rpc_host_new(uint32_t, uint32_t, uint64_t, uintptr_t);
uintptr_t rpc_host_ring(struct rpc_host *);
int rpc_host_start(struct rpc_host *);
int rpc_host_stop(struct rpc_host *, double);
void rpc_host_free(struct rpc_host *);
int enclave_rpc(uintptr_t, struct eleos_req *, uint64_t);
int enclave_rpc_attach(uintptr_t, uint32_t);

/* The host's answer depends on the request, so a reply delivered to the wrong call shows. */
static void dispatch(struct eleos_req *r) { r->ret = r->args[0] * 2 + r->op; r->out_len = 0; r->out2_len = 0; }
static uintptr_t ring;
static long done[4], fell[4], wrong[4];

static void *producer(void *arg)
{
    long k = (long)arg;
    for (long i = 0; i < 10000; i++) {
        struct eleos_req req;
        memset(&req, 0, sizeof req);
        req.op = ELEOS_OP_NOP;
        req.args[0] = k * 1000000 + i;
        int rc = enclave_rpc(ring, &req, (i % 5) ? 20000 : 20);   /* some calls give up early */
        if (rc == ELEOS_RPC_DONE)
            done[k]++, wrong[k] += req.ret != req.args[0] * 2 + ELEOS_OP_NOP;
        else if (rc == ELEOS_RPC_FALLBACK)
            fell[k]++;
        else
            wrong[k]++;
    }
    return NULL;
}

int main(void)
{
    for (int round = 0; round < 2; round++) {
        uint32_t slots = round ? 4 : 1024;
        struct rpc_host *h = rpc_host_new(slots, 2, round ? 50 : 100000, (uintptr_t)&dispatch);
        ring = rpc_host_ring(h);
        if (rpc_host_start(h) || enclave_rpc_attach(ring, slots))
            return 3;
        pthread_t t[4];
        for (long k = 0; k < 4; k++)
            pthread_create(&t[k], NULL, producer, (void *)k);
        for (int k = 0; k < 4; k++)
            pthread_join(t[k], NULL);
        if (rpc_host_stop(h, 1.0))
            return 4;
        rpc_host_free(h);
        for (int k = 0; k < 4; k++) {
            printf("round %d producer %d done %ld fell %ld wrong %ld\n", round, k, done[k], fell[k], wrong[k]);
            if (wrong[k] || done[k] + fell[k] != 10000)
                return 5;
            done[k] = fell[k] = 0;
        }
    }
    return 0;
}
"""


@pytest.fixture(scope="module")
def tsan_binary(tmp_path_factory):
    return tsan.build(tmp_path_factory.mktemp("rpc_tsan"), "ring", HARNESS,
                      ["untrusted/_native/rpc_workers.c", "trusted/_native/enclave_rpc.c"],
                      ["eleos_shim/include"], ["pthread"])


def test_producers_and_workers_race_on_nothing_and_every_reply_is_its_own(tsan_binary):
    run = tsan.run(tsan_binary)
    assert "ThreadSanitizer" not in run.stderr, run.stderr[-4000:]
    assert run.returncode == 0, run.stdout + run.stderr[-2000:]
    lines = run.stdout.splitlines()
    assert len(lines) == 8 and all(line.endswith("wrong 0") for line in lines)
    # Both outcomes happened: calls went through the ring and calls were taken back.
    assert any(" done 0 " not in line for line in lines)
    assert any(" fell 0 " not in line for line in lines)

/*
 * epcm.c - the modeled CPU's paging instructions: EPA, EWB, ELDU, EREMOVE (eleos_shim/, the CPU).
 *
 * On SGX the kernel driver pages enclave memory, but it cannot read or forge what it moves:
 * EWB encrypts an EPC page under a key that never leaves the CPU and stores the page's version
 * in a Version Array (VA) slot that lives in the EPC; ELDU decrypts, checks the MAC against that
 * version and clears the slot, so a tampered, swapped or replayed page fails to load.  This file
 * is that part of the CPU.  The driver (untrusted/_native/epc_driver.c) only receives `ewb` and
 * `eldu` as function pointers and moves ciphertext; the key and the VA live here, in memory the
 * driver has no API to reach (in one process a hostile host could of course read anything: the
 * model's attacker is the host tampering with the untrusted backing store, as in the paper).
 *
 * Sealing is AES-128-GCM (seal.h), as the Memory Encryption Engine's paging crypto:
 *   nonce = eleos_nonce(fixed "EPC\0", version)   version: a 64-bit counter, unique per EWB
 *   AAD   = linaddr || va_slot || version           binds where the page lives and when
 *   PCMD  = the 16-byte tag (SGX also keeps SECINFO and the enclave id there; one enclave here)
 * A VA slot holds the version of the one sealed copy that may be loaded; 0 means empty.  EWB
 * refuses an occupied slot (SGX_VA_SLOT_OCCUPIED), ELDU refuses an empty one and clears it on
 * success, so an old copy can never be loaded again.
 *
 * Fail-stop: an ELDU whose tag does not verify marks the enclave dead (as the Linux driver kills
 * an enclave whose ELDU failed) and, if the loader armed it, sends a real-time signal to the
 * app's main thread, whose Python-level handler raises IntegrityError (a real signal, so that a
 * main thread blocked in a lock or a syscall wakes up; tgkill needs no GIL); the bad plaintext
 * never leaves the caller's frame and is wiped here.  See eleos_shim/epc.py.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "seal.h"

#define EPCM_PAGE 4096
/* One VA page holds 512 eight-byte slots (SGX SDM 37.7); the VA grows by whole VA pages. */
#define EPCM_VA_SLOTS_PER_PAGE 512
/* Top-level directory of VA pages: 65536 VA pages = 32M slots = 128 GiB of sealable memory. */
#define EPCM_VA_DIR 65536

#define EPCM_OK 0
#define EPCM_ERR_SLOT_OCCUPIED 1   /* EWB into a slot that still holds a version */
#define EPCM_ERR_SLOT_EMPTY 2      /* ELDU from a slot that holds no version: a replay */
#define EPCM_ERR_MAC 3             /* ELDU: the tag does not verify: tampered or swapped */
#define EPCM_ERR_BAD_SLOT 4        /* slot out of range */
#define EPCM_ERR_CRYPTO 5          /* libcrypto failed */

static uint8_t cpu_paging_key[ELEOS_SEAL_KEY_BYTES];
static int key_ready;
static uint64_t *va_dir[EPCM_VA_DIR];
static uint64_t va_next_slot = 1;          /* slot 0 is never handed out */
static uint64_t version_counter;           /* the last version used by EWB */
static pthread_mutex_t va_lock = PTHREAD_MUTEX_INITIALIZER;

/* Death and diagnostics. */
static int enclave_dead;
static uint64_t dead_linaddr;
static int dead_reason;
static int trip_signum;                    /* 0: not armed */
static int trip_tid;                       /* the app's main thread */
static uint64_t n_ewb, n_eldu, n_integrity_errors, ewb_ns, eldu_ns;

static inline uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Create the CPU's paging key (from the kernel's CSPRNG), once per process, as SGX derives a
 * fresh paging key at every power-on. */
int epcm_init(void)
{
    pthread_mutex_lock(&va_lock);
    int rc = 0;
    if (!key_ready) {
        size_t got = 0;
        while (got < sizeof cpu_paging_key) {
            ssize_t r = getrandom(cpu_paging_key + got, sizeof cpu_paging_key - got, 0);
            if (r < 0) {
                if (errno == EINTR) continue;
                rc = -1;
                break;
            }
            got += (size_t)r;
        }
        key_ready = rc == 0;
    }
    pthread_mutex_unlock(&va_lock);
    return rc;
}

static uint64_t *va_slot_ptr(uint64_t slot)
{
    uint64_t page = slot / EPCM_VA_SLOTS_PER_PAGE;
    if (slot == 0 || page >= EPCM_VA_DIR)
        return NULL;
    uint64_t *vp = __atomic_load_n(&va_dir[page], __ATOMIC_ACQUIRE);
    return vp ? &vp[slot % EPCM_VA_SLOTS_PER_PAGE] : NULL;
}

/* EPA: create `n` empty VA slots and return the first one's number (0 on failure).  The slots
 * are consecutive; the driver names them by number, the CPU keeps their contents. */
uint64_t epcm_epa(uint64_t n)
{
    if (n == 0)
        return 0;
    pthread_mutex_lock(&va_lock);
    uint64_t first = va_next_slot, last = first + n - 1;
    if (last / EPCM_VA_SLOTS_PER_PAGE >= EPCM_VA_DIR) {
        pthread_mutex_unlock(&va_lock);
        return 0;
    }
    for (uint64_t p = first / EPCM_VA_SLOTS_PER_PAGE; p <= last / EPCM_VA_SLOTS_PER_PAGE; p++) {
        if (!va_dir[p]) {
            uint64_t *vp = calloc(EPCM_VA_SLOTS_PER_PAGE, sizeof(uint64_t));
            if (!vp) {
                pthread_mutex_unlock(&va_lock);
                return 0;
            }
            __atomic_store_n(&va_dir[p], vp, __ATOMIC_RELEASE);
        }
    }
    va_next_slot = last + 1;
    pthread_mutex_unlock(&va_lock);
    return first;
}

/* EREMOVE of a region's pages: empty its slots, so that copies sealed for a region the enclave
 * has freed can never be loaded into whatever later lives at the same addresses. */
void epcm_eremove(uint64_t first_slot, uint64_t n)
{
    for (uint64_t s = first_slot; s < first_slot + n; s++) {
        uint64_t *v = va_slot_ptr(s);
        if (v)
            __atomic_store_n(v, 0, __ATOMIC_RELEASE);
    }
}

static void make_aad(uint8_t aad[24], uint64_t linaddr, uint64_t slot, uint64_t version)
{
    memcpy(aad, &linaddr, 8);
    memcpy(aad + 8, &slot, 8);
    memcpy(aad + 16, &version, 8);
}

/* EWB: seal the EPC page at `epc_page` (its enclave address is `linaddr`) into `out_page`
 * (untrusted memory, 4096 bytes) and `out_pcmd` (16 bytes), and record its version in VA slot
 * `slot`.  Returns EPCM_OK or an EPCM_ERR_*. */
int epcm_ewb(const void *epc_page, uint64_t linaddr, uint64_t slot, void *out_page, void *out_pcmd)
{
    uint64_t t0 = mono_ns();
    uint64_t *v = va_slot_ptr(slot);
    if (!v)
        return EPCM_ERR_BAD_SLOT;
    if (__atomic_load_n(v, __ATOMIC_ACQUIRE) != 0)
        return EPCM_ERR_SLOT_OCCUPIED;
    uint64_t version = __atomic_add_fetch(&version_counter, 1, __ATOMIC_RELAXED);
    uint8_t nonce[ELEOS_SEAL_NONCE_BYTES], aad[24];
    eleos_nonce(nonce, 0x00435045u /* "EPC" */, version);
    make_aad(aad, linaddr, slot, version);
    if (eleos_seal(cpu_paging_key, nonce, aad, sizeof aad, epc_page, EPCM_PAGE, out_page,
                   (uint8_t *)out_pcmd) != 0)
        return EPCM_ERR_CRYPTO;
    uint64_t expected = 0;
    if (!__atomic_compare_exchange_n(v, &expected, version, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
        return EPCM_ERR_SLOT_OCCUPIED;
    __atomic_add_fetch(&n_ewb, 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&ewb_ns, mono_ns() - t0, __ATOMIC_RELAXED);
    return EPCM_OK;
}

static void die(uint64_t linaddr, int reason)
{
    __atomic_add_fetch(&n_integrity_errors, 1, __ATOMIC_RELAXED);
    int was = __atomic_exchange_n(&enclave_dead, 1, __ATOMIC_ACQ_REL);
    if (!was) {
        dead_linaddr = linaddr;
        dead_reason = reason;
    }
    int sig = __atomic_load_n(&trip_signum, __ATOMIC_ACQUIRE);
    int tid = __atomic_load_n(&trip_tid, __ATOMIC_ACQUIRE);
    if (sig && tid && !was)
        (void)syscall(SYS_tgkill, getpid(), tid, sig);
}

/* ELDU: open the sealed page (`page`, `pcmd`, untrusted) into the EPC frame `epc_frame`, for
 * enclave address `linaddr`, checking it against the version in VA slot `slot`; clears the slot.
 * On any failure the frame is wiped, the enclave is dead, and an EPCM_ERR_* is returned. */
int epcm_eldu(void *epc_frame, uint64_t linaddr, uint64_t slot, const void *page, const void *pcmd)
{
    uint64_t t0 = mono_ns();
    uint64_t *v = va_slot_ptr(slot);
    if (!v) {
        die(linaddr, EPCM_ERR_BAD_SLOT);
        return EPCM_ERR_BAD_SLOT;
    }
    uint64_t version = __atomic_load_n(v, __ATOMIC_ACQUIRE);
    if (version == 0) {
        die(linaddr, EPCM_ERR_SLOT_EMPTY);
        return EPCM_ERR_SLOT_EMPTY;
    }
    uint8_t nonce[ELEOS_SEAL_NONCE_BYTES], aad[24], tag[ELEOS_SEAL_TAG_BYTES];
    /* Copy the tag first: the host may change its memory while we read it. */
    memcpy(tag, pcmd, sizeof tag);
    eleos_nonce(nonce, 0x00435045u, version);
    make_aad(aad, linaddr, slot, version);
    if (eleos_open(cpu_paging_key, nonce, aad, sizeof aad, page, EPCM_PAGE, epc_frame, tag) != 0) {
        /* Never leave unverified plaintext behind. */
        OPENSSL_cleanse(epc_frame, EPCM_PAGE);
        die(linaddr, EPCM_ERR_MAC);
        return EPCM_ERR_MAC;
    }
    if (!__atomic_compare_exchange_n(v, &version, 0, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        /* Two loads raced for one sealed copy: only one may win. */
        OPENSSL_cleanse(epc_frame, EPCM_PAGE);
        die(linaddr, EPCM_ERR_SLOT_EMPTY);
        return EPCM_ERR_SLOT_EMPTY;
    }
    __atomic_add_fetch(&n_eldu, 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&eldu_ns, mono_ns() - t0, __ATOMIC_RELAXED);
    return EPCM_OK;
}

/* Arm (signum > 0: send it to thread `tid` on the first ELDU failure) or disarm (0). */
void epcm_arm(int signum, int tid)
{
    __atomic_store_n(&trip_tid, tid, __ATOMIC_RELEASE);
    __atomic_store_n(&trip_signum, signum, __ATOMIC_RELEASE);
}

/* out: dead, reason, linaddr, ewb, eldu, integrity_errors, ewb_ns, eldu_ns */
void epcm_status(uint64_t out[8])
{
    out[0] = (uint64_t)__atomic_load_n(&enclave_dead, __ATOMIC_ACQUIRE);
    out[1] = (uint64_t)dead_reason;
    out[2] = dead_linaddr;
    out[3] = __atomic_load_n(&n_ewb, __ATOMIC_RELAXED);
    out[4] = __atomic_load_n(&n_eldu, __ATOMIC_RELAXED);
    out[5] = __atomic_load_n(&n_integrity_errors, __ATOMIC_RELAXED);
    out[6] = __atomic_load_n(&ewb_ns, __ATOMIC_RELAXED);
    out[7] = __atomic_load_n(&eldu_ns, __ATOMIC_RELAXED);
}

int epcm_dead(void) { return __atomic_load_n(&enclave_dead, __ATOMIC_ACQUIRE); }

/* A new enclave (tests run several in one process): counters and death are per enclave; the
 * key and the VA persist, as they belong to the CPU. */
void epcm_reset(void)
{
    __atomic_store_n(&enclave_dead, 0, __ATOMIC_RELEASE);
    dead_linaddr = 0;
    dead_reason = 0;
    __atomic_store_n(&n_ewb, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&n_eldu, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&n_integrity_errors, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&ewb_ns, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&eldu_ns, 0, __ATOMIC_RELAXED);
}

/* The function pointers handed to the driver by the loader. */
uintptr_t epcm_ewb_fn(void) { return (uintptr_t)&epcm_ewb; }
uintptr_t epcm_eldu_fn(void) { return (uintptr_t)&epcm_eldu; }

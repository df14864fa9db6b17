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
 * success, so an old copy can never be loaded again.  While an EWB or ELDU works on a page its
 * slot reads EPCM_VA_BUSY, and every other instruction on that page is refused: an EWB that
 * read the page while another EWB wiped it, or before an ELDU had put it back, would otherwise
 * record a version for a torn or wiped page that later loads as the page.
 *
 * Fail-stop: an ELDU whose tag does not verify marks the enclave dead (as the Linux driver kills
 * an enclave whose ELDU failed) and, if the loader armed it, sends a real-time signal to the
 * app's main thread, whose Python-level handler raises IntegrityError (a real signal, so that a
 * main thread blocked in a lock or a syscall wakes up; tgkill needs no GIL); the bad plaintext
 * never leaves the CPU's private frame and is wiped there.  See eleos_shim/epc.py.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "eleos_tsc.h"
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
#define EPCM_ERR_BAD_ADDR 6        /* no enclave region holds that linear address */
#define EPCM_ERR_INSTALL 7         /* unused since ELDU writes through the CPU's view (kept: the codes are the ABI) */
#define EPCM_ERR_BUSY 8            /* another EWB/ELDU is working on that page (SGX_EPC_PAGE_CONFLICT) */
#define EPCM_ERR_BAD_BUFFER 9      /* the driver's page or PCMD buffer lies in the EPC or the CPU */
/* A slot's value while one EWB or ELDU works on its page: the EPCM entry's lock.  No version
 * reaches it (a 64-bit counter, one per EWB). */
#define EPCM_VA_BUSY UINT64_MAX
/* Regions of enclave memory the CPU knows (one per EPC mapping of the app). */
#define EPCM_MAX_REGIONS 1024

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
static uint64_t n_ewb, n_eldu, n_integrity_errors, ewb_ticks, eldu_ticks;

/* The enclave's EPC regions, as the enclave registered them (EPCMap, eleos_shim/epc.py): where
 * each lives, its VA slots, and the CPU's own view of its memory: a mapping, made at
 * registration, of the memfd the app maps (so the driver cannot swap the file under the CPU),
 * through which EWB reads and wipes a page and ELDU writes one, with memcpy: as the CPU reaches
 * EPC frames by physical address, without the app's page tables.  Read by every EWB/ELDU,
 * written when a region comes or goes. */
struct epcm_region {
    uint64_t base, nbytes, npages, va_first;
    uint8_t *view;
    dev_t dev;                     /* the memory's file: no two regions share one */
    ino_t ino;
};
static struct epcm_region regions[EPCM_MAX_REGIONS];
static int nregions;
static pthread_rwlock_t regions_lock = PTHREAD_RWLOCK_INITIALIZER;

/* The CPU-private frames of this thread: [0] ELDU, [1] EWB (4 KiB each).  mmap'ed on first use
 * (async-signal-safe, for a driver that loads pages in a fault handler), out of core dumps,
 * wiped and unmapped when the thread exits.  initial-exec: no allocation on access. */
static __thread uint8_t *cpu_frames __attribute__((tls_model("initial-exec")));
static pthread_key_t frames_key;
static pthread_once_t frames_once = PTHREAD_ONCE_INIT;

static void frames_free(void *p)
{
    OPENSSL_cleanse(p, 2 * EPCM_PAGE);
    munmap(p, 2 * EPCM_PAGE);
}

static void frames_key_make(void) { (void)pthread_key_create(&frames_key, frames_free); }

static uint8_t *cpu_frame(int which)
{
    if (!cpu_frames) {
        void *p = mmap(NULL, 2 * EPCM_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED)
            return NULL;
        (void)madvise(p, 2 * EPCM_PAGE, MADV_DONTDUMP);
        pthread_once(&frames_once, frames_key_make);
        (void)pthread_setspecific(frames_key, p);
        cpu_frames = p;
    }
    return cpu_frames + (size_t)which * EPCM_PAGE;
}

/* The CPU's own clock for its counters: the TSC. */
static inline uint64_t ticks(void) { return eleos_tsc(); }

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

/* The enclave maps `nbytes` of EPC at `base` (page-aligned), backed by `memfd`, page i sealed
 * under VA slot va_first + i; the CPU maps the memfd itself (its view) and keeps no descriptor.
 * The memfd comes from the driver, so it must be what EPC memory is when a region is added
 * (as EAUG gives zeroed pages): a memfd (shmem: no file on disk for the kernel to write pages
 * back to), with no page allocated yet (no content the host put there, or an old region's
 * frames), and the memory of no other region (else ELDU of one region's page would write its
 * plaintext into the other's).  0, or -errno (overlap: -EEXIST; bad arguments, not a fresh
 * memfd that big: -EINVAL; no room for the view). */
int epcm_region_add(uint64_t base, uint64_t nbytes, uint64_t va_first, int memfd)
{
    if (!base || base % EPCM_PAGE || !nbytes || base + nbytes < base || !va_first)
        return -EINVAL;
    uint64_t npages = (nbytes + EPCM_PAGE - 1) / EPCM_PAGE;
    int fd = fcntl(memfd, F_DUPFD_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    struct stat st;
    /* SEEK_DATA fails with ENXIO exactly when no byte of the file is allocated (and then
     * leaves the offset, which the driver's descriptor shares, alone). */
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size < nbytes ||
        fcntl(fd, F_GET_SEALS) < 0 || lseek(fd, 0, SEEK_DATA) != -1 || errno != ENXIO) {
        close(fd);
        return -EINVAL;
    }
    void *view = mmap(NULL, npages * EPCM_PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (view == MAP_FAILED)
        return -errno;
    /* The view reaches every frame of the region, for as long as it is mapped: out of core
     * dumps, and not inherited by a fork (a host's child that does not exec keeps no access). */
    (void)madvise(view, npages * EPCM_PAGE, MADV_DONTDUMP);
    (void)madvise(view, npages * EPCM_PAGE, MADV_DONTFORK);
    pthread_rwlock_wrlock(&regions_lock);
    int rc = 0;
    for (int k = 0; k < nregions && !rc; k++)
        if ((base < regions[k].base + regions[k].npages * EPCM_PAGE &&
             regions[k].base < base + npages * EPCM_PAGE) ||
            (regions[k].dev == st.st_dev && regions[k].ino == st.st_ino))
            rc = -EEXIST;
    if (!rc && nregions == EPCM_MAX_REGIONS)
        rc = -ENOSPC;
    if (!rc)
        regions[nregions++] = (struct epcm_region){ base, nbytes, npages, va_first, view,
                                                    st.st_dev, st.st_ino };
    pthread_rwlock_unlock(&regions_lock);
    if (rc)
        munmap(view, npages * EPCM_PAGE);
    return rc;
}

/* The region at `base` is gone (after the driver released its frames).  0, or -ENOENT. */
int epcm_region_remove(uint64_t base)
{
    struct epcm_region gone = { 0 };
    pthread_rwlock_wrlock(&regions_lock);
    for (int k = 0; k < nregions; k++)
        if (regions[k].base == base) {
            gone = regions[k];
            regions[k] = regions[--nregions];
            break;
        }
    pthread_rwlock_unlock(&regions_lock);
    if (!gone.view)
        return -ENOENT;
    munmap(gone.view, gone.npages * EPCM_PAGE);   /* no EWB/ELDU holds it: they hold the lock */
    return 0;
}

/* The region holding page-aligned `linaddr` (*g) and the page's offset in it.  EPCM_OK with
 * regions_lock held for reading (the caller unlocks), or, unlocked: EPCM_ERR_BAD_ADDR if no
 * region holds it, EPCM_ERR_BAD_SLOT if `slot` is not the VA slot of that page (the driver
 * names the slot, the enclave's layout decides which one is right). */
static int page_of(uint64_t linaddr, uint64_t slot, const struct epcm_region **g, uint64_t *off)
{
    int rc = EPCM_ERR_BAD_ADDR;
    pthread_rwlock_rdlock(&regions_lock);
    for (int k = 0; k < nregions && linaddr % EPCM_PAGE == 0; k++) {
        const struct epcm_region *r = &regions[k];
        if (linaddr >= r->base && linaddr - r->base < r->npages * EPCM_PAGE) {
            *g = r;
            *off = linaddr - r->base;
            rc = slot == r->va_first + *off / EPCM_PAGE ? EPCM_OK : EPCM_ERR_BAD_SLOT;
            break;
        }
    }
    if (rc != EPCM_OK)
        pthread_rwlock_unlock(&regions_lock);
    return rc;
}

/* Whether [p, p+len) overlaps enclave or CPU memory the CPU knows: a region (the app's view
 * or the CPU's), this thread's private frames, the paging key.  EWB's and ELDU's page and PCMD
 * are the driver's memory, outside the EPC (SGX's EWB/ELDU fault otherwise): a pointer of the
 * driver's must not make EWB write ciphertext over enclave memory (or the CPU's), nor ELDU
 * read its input from there.  Called with regions_lock held. */
static int overlaps_cpu_memory(const void *ptr, size_t len)
{
    uintptr_t p = (uintptr_t)ptr, e = p + len;
    if (e < p)
        return 1;
#define OVERLAPS(a, n) (p < (uintptr_t)(a) + (n) && (uintptr_t)(a) < e)
    if (OVERLAPS(cpu_frames, 2 * EPCM_PAGE) || OVERLAPS(cpu_paging_key, sizeof cpu_paging_key))
        return 1;
    for (int k = 0; k < nregions; k++)
        if (OVERLAPS(regions[k].base, regions[k].npages * EPCM_PAGE) ||
            OVERLAPS(regions[k].view, regions[k].npages * EPCM_PAGE))
            return 1;
#undef OVERLAPS
    return 0;
}

/* Bytes of the page at `off` that lie inside the region (the last page may be partial). */
static size_t bytes_at(const struct epcm_region *g, uint64_t off)
{
    return g->nbytes - off < EPCM_PAGE ? (size_t)(g->nbytes - off) : EPCM_PAGE;
}

static void make_aad(uint8_t aad[24], uint64_t linaddr, uint64_t slot, uint64_t version)
{
    memcpy(aad, &linaddr, 8);
    memcpy(aad + 8, &slot, 8);
    memcpy(aad + 16, &version, 8);
}

/* EWB: seal the EPC page at enclave address `linaddr` (VA slot `slot`) and write it out to
 * `out_page` (4096 bytes) and `out_pcmd` (16 bytes), untrusted memory; record its version in
 * the slot and free the EPC page (its frame is wiped).  The driver must have EBLOCKed the page
 * (unmapped it from the app), so no write slips in after the CPU read it.  Returns EPCM_OK or
 * an EPCM_ERR_*. */
int epcm_ewb(uint64_t linaddr, uint64_t slot, void *out_page, void *out_pcmd)
{
    uint64_t t0 = ticks();
    uint64_t *v = va_slot_ptr(slot);
    if (!v)
        return EPCM_ERR_BAD_SLOT;
    uint64_t now = __atomic_load_n(v, __ATOMIC_ACQUIRE);
    if (now != 0)
        return now == EPCM_VA_BUSY ? EPCM_ERR_BUSY : EPCM_ERR_SLOT_OCCUPIED;
    uint8_t *frame = cpu_frame(1);
    if (!frame)
        return EPCM_ERR_CRYPTO;
    uint64_t off;
    const struct epcm_region *g;
    int bad = page_of(linaddr, slot, &g, &off);
    if (bad)
        return bad;
    if (overlaps_cpu_memory(out_page, EPCM_PAGE) || overlaps_cpu_memory(out_pcmd, ELEOS_SEAL_TAG_BYTES)) {
        pthread_rwlock_unlock(&regions_lock);
        return EPCM_ERR_BAD_BUFFER;
    }
    /* The page is this EWB's until its version is recorded (see EPCM_VA_BUSY). */
    uint64_t expected = 0;
    if (!__atomic_compare_exchange_n(v, &expected, EPCM_VA_BUSY, 0, __ATOMIC_ACQ_REL,
                                     __ATOMIC_ACQUIRE)) {
        pthread_rwlock_unlock(&regions_lock);
        return expected == EPCM_VA_BUSY ? EPCM_ERR_BUSY : EPCM_ERR_SLOT_OCCUPIED;
    }
    size_t n = bytes_at(g, off);
    /* The EPC page, through the CPU's view: EBLOCKed (no mapping of the app's writes to it), so
     * it is sealed from where it is; a region's partial last page is padded in the frame. */
    const uint8_t *page = g->view + off;
    if (n < EPCM_PAGE) {
        memcpy(frame, page, n);
        memset(frame + n, 0, EPCM_PAGE - n);
        page = frame;
    }
    uint64_t version = __atomic_add_fetch(&version_counter, 1, __ATOMIC_RELAXED);
    uint8_t nonce[ELEOS_SEAL_NONCE_BYTES], aad[24], tag[ELEOS_SEAL_TAG_BYTES];
    eleos_nonce(nonce, 0x00435045u /* "EPC" */, version);
    make_aad(aad, linaddr, slot, version);
    /* Sealed into the private frame, which holds ciphertext only from here on. */
    if (eleos_seal(cpu_paging_key, nonce, aad, sizeof aad, page, EPCM_PAGE, frame, tag) != 0) {
        expected = EPCM_VA_BUSY;
        (void)__atomic_compare_exchange_n(v, &expected, 0, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
        pthread_rwlock_unlock(&regions_lock);
        OPENSSL_cleanse(frame, EPCM_PAGE);
        return EPCM_ERR_CRYPTO;
    }
    /* The page leaves the EPC: its frame is wiped, so the sealed copy is the only one.  The
     * frame stays allocated (the driver's frame count, not the memfd's pages, is the EPC's
     * size): punching a hole cost a fault a third of its time (the page cache's truncation and
     * a walk of every mapping), and the next ELDU then needed a page allocated again. */
    explicit_bzero(g->view + off, n);
    /* Wiped before its version is recorded: an ELDU may install the page only after that.  An
     * EREMOVE meanwhile (the region freed) wins: no version for a freed region's page. */
    expected = EPCM_VA_BUSY;
    int kept = __atomic_compare_exchange_n(v, &expected, version, 0, __ATOMIC_ACQ_REL,
                                           __ATOMIC_ACQUIRE);
    pthread_rwlock_unlock(&regions_lock);
    if (!kept) {
        OPENSSL_cleanse(frame, EPCM_PAGE);
        return EPCM_ERR_SLOT_EMPTY;
    }
    memcpy(out_page, frame, EPCM_PAGE);                /* the copy out: tag already computed */
    memcpy(out_pcmd, tag, sizeof tag);
    __atomic_add_fetch(&n_ewb, 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&ewb_ticks, ticks() - t0, __ATOMIC_RELAXED);
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

/* Put the verified page in `frame` into the enclave's memory at `linaddr` (offset `off` of
 * region g): written into its EPC frame through the CPU's view, while the app's view has no
 * mapping of it (the driver EBLOCKed it before the EWB), so the app never sees a half-written
 * page.  Then, with the driver's userfaultfd (`uffd` >= 0), UFFDIO_CONTINUE maps that frame
 * for the app (*mapped = 1), without waking the faulting threads: the driver releases them once
 * the fault's cost is paid, as ERESUME comes last.  Else, or if the kernel refused, the driver
 * maps it (*mapped = 0); it can only map an address to what lives at that address, so the
 * destination is the CPU's choice either way. */
static void install_verified(const struct epcm_region *g, uint64_t linaddr, uint64_t off,
                             const uint8_t *frame, int uffd, uint64_t *mapped)
{
    memcpy(g->view + off, frame, bytes_at(g, off));
    *mapped = 0;
    if (uffd >= 0) {
        struct uffdio_continue c = { .range = { .start = linaddr, .len = EPCM_PAGE },
                                     .mode = UFFDIO_CONTINUE_MODE_DONTWAKE };
        if (ioctl(uffd, UFFDIO_CONTINUE, &c) == 0)
            *mapped = 1;
    }
}

/* ELDU: load the sealed page (`page`, `pcmd`: untrusted memory) for enclave address `linaddr`,
 * checking it against the version in VA slot `slot` (which it clears), and install it at
 * `linaddr` (see install_verified; `uffd` is the driver's userfaultfd or -1).
 * result[0] = 1 if the page is mapped (the driver wakes its waiters), 0 if the driver must
 * map it; result[1] = TSC ticks spent installing.  On any failure nothing is installed, the private
 * frame is wiped, the enclave is dead, and an EPCM_ERR_* is returned. */
int epcm_eldu(uint64_t linaddr, uint64_t slot, const void *page, const void *pcmd, int uffd,
              uint64_t result[2])
{
    uint64_t t0 = ticks();
    result[0] = result[1] = 0;
    uint64_t *v = va_slot_ptr(slot);
    if (!v) {
        die(linaddr, EPCM_ERR_BAD_SLOT);
        return EPCM_ERR_BAD_SLOT;
    }
    uint64_t version = __atomic_load_n(v, __ATOMIC_ACQUIRE);
    if (version == 0 || version == EPCM_VA_BUSY) {
        int why = version ? EPCM_ERR_BUSY : EPCM_ERR_SLOT_EMPTY;
        die(linaddr, why);
        return why;
    }
    uint8_t *frame = cpu_frame(0);
    if (!frame) {
        die(linaddr, EPCM_ERR_CRYPTO);
        return EPCM_ERR_CRYPTO;
    }
    uint64_t off;
    const struct epcm_region *g;
    int bad = page_of(linaddr, slot, &g, &off);
    if (!bad && (overlaps_cpu_memory(page, EPCM_PAGE) ||
                 overlaps_cpu_memory(pcmd, ELEOS_SEAL_TAG_BYTES))) {
        pthread_rwlock_unlock(&regions_lock);
        bad = EPCM_ERR_BAD_BUFFER;
    }
    if (bad) {
        die(linaddr, bad);
        return bad;
    }
    uint8_t nonce[ELEOS_SEAL_NONCE_BYTES], aad[24], tag[ELEOS_SEAL_TAG_BYTES];
    /* Copy in, then open: the host may change its memory while we work. */
    memcpy(tag, pcmd, sizeof tag);
    memcpy(frame, page, EPCM_PAGE);
    eleos_nonce(nonce, 0x00435045u, version);
    make_aad(aad, linaddr, slot, version);
    int rc = EPCM_OK;
    if (eleos_open(cpu_paging_key, nonce, aad, sizeof aad, frame, EPCM_PAGE, frame, tag) != 0)
        rc = EPCM_ERR_MAC;
    else if (!__atomic_compare_exchange_n(v, &version, EPCM_VA_BUSY, 0, __ATOMIC_ACQ_REL,
                                          __ATOMIC_ACQUIRE))
        rc = EPCM_ERR_SLOT_EMPTY;      /* two loads raced for one sealed copy: only one may win */
    if (rc == EPCM_OK) {
        /* The slot reads busy until the page is in its frame: an EWB meanwhile is refused
         * instead of sealing the frame half installed. */
        uint64_t i0 = ticks();
        install_verified(g, linaddr, off, frame, uffd, &result[0]);   /* a memcpy: cannot fail */
        result[1] = ticks() - i0;
        uint64_t busy = EPCM_VA_BUSY;
        (void)__atomic_compare_exchange_n(v, &busy, 0, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
    }
    pthread_rwlock_unlock(&regions_lock);
    /* Verified or not, no plaintext stays behind (explicit_bzero: a memset the compiler keeps,
     * 4x faster than OPENSSL_cleanse's byte loop on a 4 KiB frame, on every fault). */
    explicit_bzero(frame, EPCM_PAGE);
    if (rc != EPCM_OK) {
        die(linaddr, rc);
        return rc;
    }
    __atomic_add_fetch(&n_eldu, 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&eldu_ticks, ticks() - t0 - result[1], __ATOMIC_RELAXED);
    return EPCM_OK;
}

/* Arm (signum > 0: send it to thread `tid` on the first ELDU failure) or disarm (0). */
void epcm_arm(int signum, int tid)
{
    __atomic_store_n(&trip_tid, tid, __ATOMIC_RELEASE);
    __atomic_store_n(&trip_signum, signum, __ATOMIC_RELEASE);
}

/* out: dead, reason, linaddr, ewb, eldu, integrity_errors, ewb_ticks, eldu_ticks (TSC) */
void epcm_status(uint64_t out[8])
{
    out[0] = (uint64_t)__atomic_load_n(&enclave_dead, __ATOMIC_ACQUIRE);
    out[1] = (uint64_t)dead_reason;
    out[2] = dead_linaddr;
    out[3] = __atomic_load_n(&n_ewb, __ATOMIC_RELAXED);
    out[4] = __atomic_load_n(&n_eldu, __ATOMIC_RELAXED);
    out[5] = __atomic_load_n(&n_integrity_errors, __ATOMIC_RELAXED);
    out[6] = __atomic_load_n(&ewb_ticks, __ATOMIC_RELAXED);
    out[7] = __atomic_load_n(&eldu_ticks, __ATOMIC_RELAXED);
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
    __atomic_store_n(&ewb_ticks, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&eldu_ticks, 0, __ATOMIC_RELAXED);
}

/* In the child of a fork(2) (eleos_shim/fork.py): this process is a new enclave on the CPU.
 * Its views of the parent's regions were not inherited (MADV_DONTFORK), so the CPU has no
 * region; the parent's VA slots and versions are not the child's (nothing sealed for the
 * parent may ever load here), nor is its paging key: the next epcm_init draws the child's own,
 * so a page the parent seals can never pass for one of the child's, nor the reverse.  Locks
 * made anew (a thread of the parent's may have held one at the fork). */
void epcm_fork_child(void)
{
    pthread_mutex_init(&va_lock, NULL);
    pthread_rwlock_init(&regions_lock, NULL);
    memset(regions, 0, sizeof regions);
    nregions = 0;
    for (int p = 0; p < EPCM_VA_DIR; p++) {
        free(va_dir[p]);
        va_dir[p] = NULL;
    }
    va_next_slot = 1;
    explicit_bzero(cpu_paging_key, sizeof cpu_paging_key);
    key_ready = 0;
    trip_signum = 0;
    trip_tid = 0;
    epcm_reset();
}

/* The function pointers handed to the driver by the loader. */
uintptr_t epcm_ewb_fn(void) { return (uintptr_t)&epcm_ewb; }
uintptr_t epcm_eldu_fn(void) { return (uintptr_t)&epcm_eldu; }

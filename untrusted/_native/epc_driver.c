/*
 * epc_driver.c - the SGX driver model: EPC limit, page-fault traps, reclaim (untrusted/, host).
 *
 * Vanilla SGX keeps the enclave's memory in the EPC, a few dozen MB.  When an enclave touches
 * more, the kernel driver pages: the access traps (AEX), the driver picks a victim, EWBs it
 * (sealed by the CPU) to normal memory, ELDUs the wanted page back and the thread resumes
 * (ERESUME).  This file is that driver, for real, over memory of this process:
 *
 *   enclave memory  a memfd per region.  The app maps it (a real mmap.mmap, created in Python);
 *                   the driver never maps it and never reads or writes enclave pages: the CPU's
 *                   EWB reads a page through the memfd into a CPU-private frame, and ELDU opens
 *                   into such a frame and puts it into the memfd at the page's verified address
 *                   in one step (UFFDIO_COPY, or pwrite), so the app never sees a half-loaded
 *                   page, plaintext never sits in the driver's memory, and evicting a page
 *                   unmaps it from one address space only (one TLB shootdown, not two).  A page
 *                   is resident while it is in the memfd; EWB ends with a hole punched in it, so
 *                   resident pages are real memory you can count with mincore(2) or smaps.
 *   traps           userfaultfd (MISSING|MINOR on the app's view) with UFFD_FEATURE_SIGBUS
 *                   (TRAP_SIGBUS, the default): a non-resident page, or one being evicted,
 *                   raises SIGBUS in the faulting thread, whose handler resolves its own fault
 *                   (the CPU's ELDU installs the page, UFFDIO_COPY, or UFFDIO_CONTINUE maps one
 *                   still in the memfd) and returns, as SGX's kernel handles a #PF on the
 *                   faulting core: no cross-thread wake-up.  TRAP_USERFAULTFD: the thread blocks in the kernel and
 *                   a native driver thread reads the fault and wakes it.  TRAP_SIGSEGV (no
 *                   userfaultfd): the app's view is PROT_NONE where not resident; the SIGSEGV
 *                   handler hands the fault to a driver thread through a lock-free queue and
 *                   sleeps on a futex until the page is in; mprotect installs it.
 *   EBLOCK/ETRACK   before EWB the victims are unmapped from the app's view (MADV_DONTNEED for
 *                   the whole batch in one process_madvise call where the kernel has it, so one
 *                   TLB shootdown covers the batch as one ETRACK does; or mprotect PROT_NONE),
 *                   so no write can slip in after EWB read the page.
 *   EWB/ELDU        function pointers into the modeled CPU (eleos_shim/_native/epcm.c): the
 *                   driver names the page and its VA slot and gives the backing store to write
 *                   to or read from; it never sees the key, the versions or a page's plaintext,
 *                   and the CPU installs what it loads where it verified it belongs.
 *   cost            every trap is one modeled event, AEX ... ERESUME (cpu_charge of
 *                   eleos_shim/_native/cpu.c, a function pointer): what runs between is timed
 *                   against the fault's budget and a spin pays the rest; what a trap costs
 *                   outside the handler (delivery, return) cannot be timed per fault and is
 *                   measured once at start (epc_driver_measure_trap).  cpu_pollute opens the
 *                   indirect window after the fault.
 *   reclaim         RECLAIM_DIRECT (default): a fault that finds no free frame EWBs one victim
 *                   itself, its time part of the fault's, as the 40,000-cycle budget of a page
 *                   swap includes the EWB; RECLAIM_BACKGROUND: ksgxswapd (below) keeps frames
 *                   free and a fault that finds none waits for it.  Measured on a loaded 2-vCPU
 *                   VM: direct faults cost 42,000-47,000 cycles (a lone EBLOCK is one madvise
 *                   and one TLB shootdown, 2-10 us); background ones 40,000 at the median but
 *                   60,000+ on average, from the waits for a reclaimer that shares the CPUs.
 *
 * Reclaim: an approximation of the Intel SGX driver the paper measured (linux-sgx-driver,
 * sgx_page_cache.c, 2017), whose policy survives in today's in-kernel driver:
 *   - loaded pages join the tail of an active list (per enclave there; one enclave here);
 *   - a reclaimer thread, ksgxswapd, runs while free frames < high watermark, woken when an
 *     allocation leaves fewer than the low watermark (32 and 64 pages there; scaled down for
 *     small EPCs: low = min(32, max(1, pages/64)), high = 2*low);
 *   - each pass isolates up to 16 pages (SGX_NR_SWAP_CLUSTER_MAX) from the head of the list:
 *     a page whose accessed bit is set gets it cleared and goes back to the tail (second chance),
 *     the others are EBLOCKed together, ETRACKed, then EWBed and freed one by one;
 *   - the fault path allocates without reclaiming (SGX_ALLOC_ATOMIC): with no free frame the
 *     fault waits for ksgxswapd.  The real driver returns and lets the thread fault again;
 *     we sleep on a condition variable instead and charge AEX/ERESUME once per trap.
 * The approximation: the hardware accessed bit of a resident page cannot be read from user
 * space on this kernel (no page_idle, no A bit in pagemap), so the driver sets it when it
 * installs a page (the faulting access) and cannot see later hits; a page thus gets exactly one
 * second chance.  Under the uniform random accesses of the paper's microbenchmark every policy
 * that cannot predict the future hits equally often, so this changes nothing there; for skewed
 * access it evicts hot pages that Linux would keep.
 *
 * The enclave's first touch of a page finds it neither resident nor sealed: the driver installs
 * a zero page (as EAUG would on SGX2) and counts a fault but no ELDU.
 *
 * Integrity: if ELDU fails, the CPU has marked the enclave dead and raised IntegrityError
 * towards the app (epcm.c); the driver installs a zero page so the faulting thread, which the
 * kernel holds, can be released and reach the exception.  The bad plaintext never left the CPU.
 * After the death, non-resident pages are installed as zero pages, never ELDUed.
 *
 * No GIL: everything here runs in native threads or in a signal handler, and takes no Python
 * lock.  Python (untrusted/epc.py) calls in through cffi, which releases the GIL.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#include "eleos_abi.h"
#include "epc_driver.h"
#include "epc_domain.h"

#define EPC_PAGE 4096u
#define EPC_PCMD 16u                /* the tag of a sealed page (PCMD's MAC) */
#define EPC_MAX_REGIONS 1024
#define EPC_MAX_FAULT_THREADS 16
#define EPC_NR_TO_SCAN 16           /* SGX_NR_SWAP_CLUSTER_MAX of the 2017 driver */
#define EPC_NR_LOW 32               /* SGX_NR_LOW_EPC_PAGES_DEFAULT */
/* An idle userfaultfd leader polls this long before it sleeps: about one fault's worth of
 * driver time, so a paging app's next trap is taken without a wake-up, and an app that stopped
 * paging costs at most this much CPU per fault. */
#define EPC_SPIN_NS 50000

/* The modeled CPU's paging instructions, as epcm.c defines them. */
typedef int (*epc_ewb_fn)(uint64_t linaddr, uint64_t slot, void *out_page, void *out_pcmd);
typedef int (*epc_eldu_fn)(uint64_t linaddr, uint64_t slot, const void *page, const void *pcmd,
                           int uffd, uint64_t result[2]);

enum { PG_NEW, PG_RESIDENT, PG_LOADING, PG_EVICTING, PG_EVICTED };

struct epc_region;

struct epc_page {
    struct epc_page *prev, *next;   /* active list, while resident and not isolated */
    struct epc_region *region;
    uint32_t index;
    uint8_t state;
    uint8_t accessed;               /* the modeled A bit: set on install, cleared by the scan */
    uint8_t on_list;
    uint64_t stamp;                 /* domain mode: its place in the domain's global LRU */
};

struct epc_region {
    uintptr_t app;                  /* the app's view; read lock-free by the SIGSEGV handler */
    uint64_t len;                   /* bytes of the app's view (pages * 4096), 0 = no region */
    int live;                       /* accepts faults */
    int attached;
    int memfd;
    uint8_t *store;                 /* backing store: sealed pages, untrusted memory */
    uint8_t *pcmd;                  /* backing store: tags */
    uint64_t npages;
    uint64_t va_first;              /* first VA slot (the CPU's EPA) */
    struct epc_page *pages;
};

struct fault_req {                  /* a SIGSEGV-mode fault, on the faulting thread's stack */
    struct fault_req *next;
    uintptr_t addr;
    int tid;
    uint32_t done;
};

struct epc_stats {
    uint64_t faults, zero_fills, eldu, ewb, frame_waits, batches, scanned, second_chances;
    uint64_t integrity_failures, ewb_failures, peak_resident, spurious;
    uint64_t fault_ns, eldu_ns, ewb_ns, install_ns, modeled_ns, wait_ns, eblock_ns;
};

static struct {
    int created;
    int trap;
    uint64_t limit, free_frames, resident, low, high;
    int uffd, stopfd;
    int nthreads;
    uint64_t spin_ns;               /* how long an idle driver thread polls before sleeping */
    pthread_t threads[EPC_MAX_FAULT_THREADS];
    pthread_t swapd;
    int running;
    pthread_mutex_t lk;
    pthread_cond_t changed;         /* a page changed state or a frame was freed */
    pthread_cond_t swapd_cv;        /* work for ksgxswapd */
    struct epc_page head;           /* active list sentinel */
    struct epc_region regions[EPC_MAX_REGIONS];
    int regions_used;               /* slots [0, regions_used) may hold a region: the scan bound */
    epc_ewb_fn ewb;
    epc_eldu_fn eldu;
    eleos_cpu_charge_fn charge;
    eleos_cpu_pollute_fn pollute;
    struct epc_stats st;
    epc_domain_t *dom;              /* a shared EPC (epc_domain.c), or NULL: a private one */
    int dead;
    int dead_tid;
    uint64_t dead_addr;
    /* SIGSEGV mode */
    struct fault_req *req_stack;    /* pushed by signal handlers (lock-free) */
    struct fault_req *req_local;    /* taken by fault threads under qlock */
    pthread_mutex_t qlock;
    uint32_t req_seq;
    struct sigaction old_segv;
    int segv_installed;
    /* SIGBUS mode, reclaim, and the trap's own cost */
    struct sigaction old_bus;
    int bus_installed;
    int reclaim;                    /* RECLAIM_* */
    int calibrating;                /* epc_driver_measure_trap runs: charge nothing */
    uint64_t cal_inner;             /* its last fault's ticks inside the handler */
    uint64_t trap_ticks, direct_reclaims, sigbus_faults;
} D = {
    .lk = PTHREAD_MUTEX_INITIALIZER,
    .changed = PTHREAD_COND_INITIALIZER,
    .swapd_cv = PTHREAD_COND_INITIALIZER,
    .qlock = PTHREAD_MUTEX_INITIALIZER,
    .uffd = -1,
    .stopfd = -1,
    .reclaim = RECLAIM_DIRECT,
};

#if defined(__x86_64__) || defined(__i386__)
#define relax() __builtin_ia32_pause()
#else
#define relax() __asm__ __volatile__("" ::: "memory")
#endif

#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
static inline uint64_t ticks(void) { return __rdtsc(); }   /* the modeled CPU's clock */
#else
static inline uint64_t ticks(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_RAW, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}
#endif

static inline uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* The views are registered with a userfaultfd (SIGBUS or driver-thread mode): pages are put in
 * and taken out through it, not by mprotect. */
#define UFFD_TRAP (D.trap == TRAP_USERFAULTFD || D.trap == TRAP_SIGBUS)

#define ADD(field, v) __atomic_add_fetch(&D.st.field, (v), __ATOMIC_RELAXED)

static long futex(uint32_t *addr, int op, uint32_t val)
{
    return syscall(SYS_futex, addr, op, val, NULL, NULL, 0);
}

/* ---- frames: this process's own, or the domain's (epc_domain.c) ---- */

/* Take a frame for a page about to load; 0: none free (then *seq is what to wait on). */
static int frame_take(uint32_t *seq)
{
    if (D.dom) return epc_domain_take(D.dom, 1, seq) == 1;
    if (D.free_frames == 0) return 0;
    D.free_frames--;
    return 1;
}

static void frames_put(uint64_t n)
{
    if (D.dom) epc_domain_put(D.dom, n);
    else D.free_frames += n;
}

/* The domain's reclaimers pick victims by the stamp of each member's oldest page. */
static void publish_oldest(void)
{
    if (D.dom) epc_domain_set_oldest(D.dom, D.head.next != &D.head ? D.head.next->stamp : UINT64_MAX);
}

/* ---- the active list (under D.lk) ---- */

static void list_del(struct epc_page *p)
{
    if (!p->on_list) return;
    p->prev->next = p->next;
    p->next->prev = p->prev;
    p->prev = p->next = NULL;
    p->on_list = 0;
    publish_oldest();
}

static void list_add_tail(struct epc_page *p)
{
    if (D.dom) p->stamp = epc_domain_stamp(D.dom);
    p->prev = D.head.prev;
    p->next = &D.head;
    D.head.prev->next = p;
    D.head.prev = p;
    p->on_list = 1;
    publish_oldest();
}

static struct epc_region *find_region(uintptr_t addr)
{
    int used = __atomic_load_n(&D.regions_used, __ATOMIC_ACQUIRE);
    for (int i = 0; i < used; i++) {
        struct epc_region *r = &D.regions[i];
        uint64_t len = __atomic_load_n(&r->len, __ATOMIC_ACQUIRE);
        uintptr_t app = __atomic_load_n(&r->app, __ATOMIC_ACQUIRE);
        if (len && __atomic_load_n(&r->attached, __ATOMIC_ACQUIRE) && addr >= app && addr < app + len)
            return r;
    }
    return NULL;
}

static inline void spend(int t)
{
    if (D.charge && !D.calibrating) D.charge(t);
}

/* The exit is over: open the indirect window (on the thread that pays it). */
static inline void after_exit(void)
{
    if (D.pollute && !D.calibrating) D.pollute();
}

/* ---- the two ways to make a page visible to / hidden from the app ---- */

static int install_at(uintptr_t a)
{
    if (UFFD_TRAP) {
        struct uffdio_continue c = { .range = { .start = a, .len = EPC_PAGE }, .mode = 0 };
        if (ioctl(D.uffd, UFFDIO_CONTINUE, &c) != 0) {
            /* EEXIST: already mapped by another handler; wake whoever still waits (it will
             * find the page).  Anything else: wake it so that it faults again. */
            int err = errno;
            struct uffdio_range w = { .start = a, .len = EPC_PAGE };
            ioctl(D.uffd, UFFDIO_WAKE, &w);
            return err == EEXIST ? 0 : -1;
        }
        return 0;
    }
    return mprotect((void *)a, EPC_PAGE, PROT_READ | PROT_WRITE);
}

static int install(struct epc_region *r, uint64_t i) { return install_at(r->app + i * EPC_PAGE); }

/* The CPU's ELDU mapped page `a` without waking anyone: release the threads the kernel holds
 * on it (only driver-thread userfaultfd makes faulting threads wait in the kernel). */
static void wake_at(uintptr_t a)
{
    if (D.trap != TRAP_USERFAULTFD)
        return;
    struct uffdio_range w = { .start = a, .len = EPC_PAGE };
    ioctl(D.uffd, UFFDIO_WAKE, &w);
}

static void eblock(struct epc_region *r, uint64_t i)
{
    void *a = (void *)(r->app + i * EPC_PAGE);
    if (UFFD_TRAP)
        madvise(a, EPC_PAGE, MADV_DONTNEED);   /* page stays in the memfd; next touch: MINOR */
    else
        mprotect(a, EPC_PAGE, PROT_NONE);
}

/* EBLOCK a batch: one process_madvise call, whose TLB flush the kernel batches (as one ETRACK
 * covers a batch), where the kernel supports MADV_DONTNEED there; else page by page. */
static int pidfd_self = -1;

static void eblock_batch(struct epc_page **batch, int n)
{
    if (UFFD_TRAP && pidfd_self >= 0) {
        struct iovec iov[EPC_NR_TO_SCAN];
        for (int k = 0; k < n; k++) {
            iov[k].iov_base = (void *)(batch[k]->region->app + (uintptr_t)batch[k]->index * EPC_PAGE);
            iov[k].iov_len = EPC_PAGE;
        }
        if (syscall(SYS_process_madvise, pidfd_self, iov, (size_t)n, MADV_DONTNEED, 0)
            == (long)n * EPC_PAGE)
            return;
    }
    for (int k = 0; k < n; k++)
        eblock(batch[k]->region, batch[k]->index);
}

/* Put `frame` (a zero page: a page the CPU loads, it installs itself) into page i's place in
 * the memfd and map it for the app, which wakes the threads waiting on it.  userfaultfd:
 * UFFDIO_COPY does all of it in one call (the kernel allocates the page and copies, no zeroing,
 * no fault in the driver).  SIGSEGV: pwrite into the memfd, then open the app's view. */
static int commit(struct epc_region *r, uint64_t i, const uint8_t *frame)
{
    uintptr_t a = r->app + i * EPC_PAGE;
    if (UFFD_TRAP) {
        struct uffdio_copy c = { .dst = a, .src = (uintptr_t)frame, .len = EPC_PAGE, .mode = 0 };
        if (ioctl(D.uffd, UFFDIO_COPY, &c) == 0)
            return 0;
        /* EEXIST (cannot happen: the page is a hole while loading) or a signal: fall back. */
    }
    ssize_t n = pwrite(r->memfd, frame, EPC_PAGE, (off_t)(i * EPC_PAGE));
    (void)n;   /* a short write leaves a zero tail: cannot happen for a 4 KiB tmpfs write */
    return install(r, i);
}

/* What a page the enclave never wrote (or one of a dead enclave) reads as. */
static const uint8_t zero_page[EPC_PAGE] __attribute__((aligned(4096)));

/* The CPU installs what it loads through our userfaultfd, or (none: SIGSEGV mode) writes it
 * into the memfd for us to map. */
static inline int cpu_uffd(void) { return D.uffd; }

/* ---- the fault path ---- */

static int write_page(struct epc_page *p);
static void eblock(struct epc_region *r, uint64_t i);

/* Take the active list's head (under D.lk, list not empty): a page whose accessed bit is set
 * gets it cleared and goes back to the tail (its second chance: NULL); any other is isolated
 * for EWB (PG_EVICTING) and returned. */
static struct epc_page *scan_head(void)
{
    struct epc_page *p = D.head.next;
    list_del(p);
    ADD(scanned, 1);
    if (p->accessed) {
        p->accessed = 0;
        list_add_tail(p);
        ADD(second_chances, 1);
        return NULL;
    }
    p->state = PG_EVICTING;
    return p;
}

/* RECLAIM_DIRECT: the fault found no free frame, so its thread EWBs one victim itself (the
 * active list's head; a page with its accessed bit set gets its second chance first).  Under
 * D.lk; returns with it held: 1 if a frame was freed, 0 if nothing can be evicted now (every
 * page loading: wait). */
static int reclaim_one(void)
{
    for (uint64_t k = 0; k <= D.limit && D.head.next != &D.head; k++) {
        struct epc_page *p = scan_head();
        if (!p)
            continue;
        __atomic_add_fetch(&D.direct_reclaims, 1, __ATOMIC_RELAXED);
        pthread_mutex_unlock(&D.lk);
        uint64_t b0 = now_ns();
        eblock(p->region, p->index);
        ADD(eblock_ns, now_ns() - b0);
        write_page(p);
        pthread_mutex_lock(&D.lk);
        return 1;
    }
    return 0;
}

/* ELDU failed: the CPU has killed the enclave; remember the first faulting thread and page. */
static void eldu_failed(int tid, uint64_t addr)
{
    ADD(integrity_failures, 1);
    if (!__atomic_exchange_n(&D.dead, 1, __ATOMIC_ACQ_REL)) {
        D.dead_tid = tid;
        D.dead_addr = addr;
    }
}

/* Bring page i of r in and release the faulting thread(s).  `tid` is the faulting thread. */
static void handle_fault(struct epc_region *r, uint64_t i, uintptr_t fault_addr, int tid, int charge_here);
static void handle_fault(struct epc_region *r, uint64_t i, uintptr_t fault_addr, int tid, int charge_here)
{
    uint64_t t0 = now_ns(), k0 = ticks();
    ADD(faults, 1);
    if (charge_here) spend(ELEOS_T_AEX);
    uint64_t t_modeled = now_ns() - t0;
    struct epc_page *p = NULL;
    int load = 0, from = PG_NEW, live = 0;
    uint64_t tw = 0;

    pthread_mutex_lock(&D.lk);
    for (;;) {
        /* Re-checked under the lock at every turn: the region may be destroyed meanwhile
         * (then its pages are freed; the region slot itself is static). */
        live = r->live && r->pages && i < r->npages && D.running;
        if (!live) break;
        p = &r->pages[i];
        int s = p->state;
        if (s == PG_RESIDENT) break;
        if (s == PG_LOADING || s == PG_EVICTING) {
            pthread_cond_wait(&D.changed, &D.lk);
            continue;
        }
        uint32_t seq = 0;
        if (!frame_take(&seq)) {
            /* RECLAIM_DIRECT, own EPC: this thread EWBs a victim itself.  (In a domain the
             * domain's reclaimers choose the victim, the oldest page of all its members.) */
            if (!D.dom && D.reclaim == RECLAIM_DIRECT && reclaim_one())
                continue;
            /* SGX_ALLOC_ATOMIC failed: let ksgxswapd free frames, wait for one.  In a domain
             * the frame may come from another process: wait on the domain's futex (bounded,
             * so a member that died holding frames is swept by the next look). */
            uint64_t w0 = now_ns();
            ADD(frame_waits, 1);
            if (D.dom) {
                pthread_mutex_unlock(&D.lk);
                epc_domain_wait_freed(D.dom, seq, 50);
                pthread_mutex_lock(&D.lk);
            } else {
                pthread_cond_signal(&D.swapd_cv);
                pthread_cond_wait(&D.changed, &D.lk);
            }
            tw += now_ns() - w0;
            continue;
        }
        D.resident++;
        if (D.resident > D.st.peak_resident) D.st.peak_resident = D.resident;
        from = s;
        p->state = PG_LOADING;
        load = 1;
        break;
    }
    if (!D.dom && D.free_frames < D.low && D.reclaim == RECLAIM_BACKGROUND)
        pthread_cond_signal(&D.swapd_cv);
    uintptr_t page_addr = live ? r->app + i * EPC_PAGE : 0;
    pthread_mutex_unlock(&D.lk);
    int loaded = 0;                 /* the CPU loaded and installed the page */
    uint64_t cpu[2] = {0, 0};       /* from ELDU: mapped already?, ns it spent installing */

    if (!load) {
        ADD(spurious, 1);
    } else if (from == PG_EVICTED && !__atomic_load_n(&D.dead, __ATOMIC_ACQUIRE)) {
        uint64_t c0 = now_ns();
        int rc = D.eldu((uint64_t)page_addr, r->va_first + i, r->store + i * EPC_PAGE,
                        r->pcmd + i * EPC_PCMD, cpu_uffd(), cpu);
        ADD(eldu_ns, now_ns() - c0 - cpu[1]);
        if (rc == 0) {
            ADD(eldu, 1);
            loaded = 1;
        } else {
            eldu_failed(tid, (uint64_t)page_addr);
        }
    } else {
        ADD(zero_fills, 1);                   /* first touch (or a dead enclave): a zero page */
    }
    uint64_t m0 = now_ns();
    if (charge_here) {
        /* Before the install, which wakes the faulting thread: it must not run before its
         * fault's budget is paid.  The window opens in this thread, whose next trap pays it:
         * the app's work between two faults is as near as a handler thread can see. */
        __atomic_store_n(&D.cal_inner, ticks() - k0, __ATOMIC_RELAXED);
        spend(ELEOS_T_ERESUME);
        after_exit();
    }
    t_modeled += now_ns() - m0;
    uint64_t i0 = now_ns();
    if (load) {
        /* A LOADING page keeps its region alive: destroy waits for it to settle.  A failed ELDU
         * installed nothing: the app gets a zero page. */
        if (!loaded)
            commit(r, i, zero_page);
        else if (cpu[0])
            wake_at(page_addr);               /* the CPU mapped it: release the thread */
        else
            install(r, i);                    /* the CPU put it in the memfd: map it */
    } else if (live) {
        install_at(page_addr);                /* resident already: map it, wake the thread */
    } else if (UFFD_TRAP && page_addr == 0) {
        /* The region is gone: release the thread; it faults again on whatever is there now. */
        struct uffdio_range w = { .start = fault_addr & ~(uintptr_t)(EPC_PAGE - 1), .len = EPC_PAGE };
        ioctl(D.uffd, UFFDIO_WAKE, &w);
    }
    ADD(install_ns, now_ns() - i0 + cpu[1]);
    if (load) {
        pthread_mutex_lock(&D.lk);
        p->state = PG_RESIDENT;
        p->accessed = 1;
        list_add_tail(p);
        pthread_cond_broadcast(&D.changed);
        pthread_mutex_unlock(&D.lk);
    }
    ADD(modeled_ns, t_modeled);
    ADD(wait_ns, tw);
    ADD(fault_ns, now_ns() - t0);
}

static struct epc_region *region_of(uintptr_t addr, uint64_t *index)
{
    struct epc_region *r = find_region(addr);
    if (r) *index = (addr - r->app) / EPC_PAGE;
    return r;
}

/* Leader/followers over the one userfaultfd: only the leader waits for a trap (userfaultfd
 * readers are not exclusive, so every waiting thread would wake on every trap); when it gets
 * one it promotes a follower and handles the trap.  A new leader first polls the userfaultfd
 * without sleeping for up to D.spin_ns: a paging app traps again within a few microseconds of
 * being resumed, and a thread that is already running takes the trap without a wake-up, as
 * the kernel's own fault handler runs on the faulting core. */
static int leader_taken;
static pthread_mutex_t lf_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t lf_cv = PTHREAD_COND_INITIALIZER;

/* 1: a message in *msg; 0: stop. */
static int next_trap(struct uffd_msg *msg)
{
    uint64_t spin_until = D.spin_ns ? now_ns() + D.spin_ns : 0;
    struct pollfd fds[2] = { { .fd = D.uffd, .events = POLLIN }, { .fd = D.stopfd, .events = POLLIN } };
    for (;;) {
        if (!__atomic_load_n(&D.running, __ATOMIC_ACQUIRE)) return 0;
        ssize_t n = read(D.uffd, msg, sizeof *msg);
        if (n == (ssize_t)sizeof *msg) {
            if (msg->event == UFFD_EVENT_PAGEFAULT) return 1;
            continue;
        }
        if (spin_until && now_ns() < spin_until) {
            relax();
            continue;
        }
        spin_until = 0;
        if (poll(fds, 2, -1) < 0 && errno != EINTR) return 0;
        if (fds[1].revents) return 0;
    }
}

static void *uffd_thread(void *arg)
{
    (void)arg;
    for (;;) {
        pthread_mutex_lock(&lf_lock);
        while (leader_taken && __atomic_load_n(&D.running, __ATOMIC_ACQUIRE))
            pthread_cond_wait(&lf_cv, &lf_lock);
        if (!__atomic_load_n(&D.running, __ATOMIC_ACQUIRE)) {
            pthread_cond_broadcast(&lf_cv);
            pthread_mutex_unlock(&lf_lock);
            break;
        }
        leader_taken = 1;
        pthread_mutex_unlock(&lf_lock);

        struct uffd_msg msg;
        int got = next_trap(&msg);

        pthread_mutex_lock(&lf_lock);
        leader_taken = 0;
        pthread_cond_signal(&lf_cv);
        pthread_mutex_unlock(&lf_lock);
        if (!got) {
            pthread_mutex_lock(&lf_lock);
            pthread_cond_broadcast(&lf_cv);
            pthread_mutex_unlock(&lf_lock);
            break;
        }
        uintptr_t addr = (uintptr_t)msg.arg.pagefault.address;
        uint64_t i;
        struct epc_region *r = region_of(addr, &i);
        if (!r) {
            struct uffdio_range w = { .start = addr & ~(uintptr_t)(EPC_PAGE - 1), .len = EPC_PAGE };
            ioctl(D.uffd, UFFDIO_WAKE, &w);
            continue;
        }
        handle_fault(r, i, addr, (int)msg.arg.pagefault.feat.ptid, 1);
    }
    return NULL;
}

/* ---- SIGSEGV fallback ---- */

/* A fault that is not ours: behave as if we were not here (the handler before us, or the
 * default action). */
static void chain(struct sigaction *o, int sig, siginfo_t *info, void *uctx)
{
    if (o->sa_flags & SA_SIGINFO) {
        o->sa_sigaction(sig, info, uctx);
    } else if (o->sa_handler == SIG_DFL || o->sa_handler == SIG_IGN) {
        signal(sig, SIG_DFL);               /* return: the access faults again and kills */
    } else {
        o->sa_handler(sig);
    }
}

static void segv_handler(int sig, siginfo_t *info, void *uctx)
{
    uintptr_t addr = (uintptr_t)info->si_addr;
    uint64_t i;
    struct epc_region *r = __atomic_load_n(&D.running, __ATOMIC_ACQUIRE) ? region_of(addr, &i) : NULL;
    if (!r) {
        chain(&D.old_segv, sig, info, uctx);
        return;
    }
    int saved = errno;
    uint64_t k0 = ticks();
    spend(ELEOS_T_AEX);                     /* the faulting thread pays its own exit */
    struct fault_req req = { .addr = addr, .tid = (int)syscall(SYS_gettid), .done = 0 };
    struct fault_req *head = __atomic_load_n(&D.req_stack, __ATOMIC_RELAXED);
    do {
        req.next = head;
    } while (!__atomic_compare_exchange_n(&D.req_stack, &head, &req, 1, __ATOMIC_RELEASE, __ATOMIC_RELAXED));
    __atomic_add_fetch(&D.req_seq, 1, __ATOMIC_RELEASE);
    futex(&D.req_seq, FUTEX_WAKE_PRIVATE, 1);
    while (!__atomic_load_n(&req.done, __ATOMIC_ACQUIRE))
        futex(&req.done, FUTEX_WAIT_PRIVATE, 0);
    __atomic_store_n(&D.cal_inner, ticks() - k0, __ATOMIC_RELAXED);
    spend(ELEOS_T_ERESUME);
    after_exit();
    errno = saved;
}

/* ---- SIGBUS: the faulting thread resolves its own fault ---- */

/* userfaultfd with UFFD_FEATURE_SIGBUS raises SIGBUS, in the faulting thread, for every access
 * the driver must serve.  The handler is that thread's fault path: AEX, the driver's work
 * (handle_fault: reclaim a frame if none is free, ELDU, UFFDIO_COPY), ERESUME; returning
 * retries the access, which now finds the page.  It runs only on an access to the app's EPC
 * view, which neither libc's allocator, the dynamic loader nor this driver ever touch, so the
 * interrupted thread holds none of their locks: what ELDU's libcrypto and the lazily made TLS
 * frame may allocate cannot deadlock.  No Python, no GIL: the app's other threads run on. */
static void bus_handler(int sig, siginfo_t *info, void *uctx)
{
    uintptr_t addr = (uintptr_t)info->si_addr;
    uint64_t i;
    struct epc_region *r = region_of(addr, &i);
    if (!r) {
        chain(&D.old_bus, sig, info, uctx);
        return;
    }
    int saved = errno;
    if (!__atomic_load_n(&D.running, __ATOMIC_ACQUIRE)) {
        /* The driver is stopping: once it closes the userfaultfd the view is plain memory;
         * until then, retry. */
        sched_yield();
        errno = saved;
        return;
    }
    uint64_t k0 = ticks();
    spend(ELEOS_T_AEX);
    __atomic_add_fetch(&D.sigbus_faults, 1, __ATOMIC_RELAXED);
    handle_fault(r, i, addr, (int)syscall(SYS_gettid), 0);
    __atomic_store_n(&D.cal_inner, ticks() - k0, __ATOMIC_RELAXED);
    spend(ELEOS_T_ERESUME);
    after_exit();
    errno = saved;
}

static struct fault_req *take_request(void)
{
    pthread_mutex_lock(&D.qlock);
    if (!D.req_local) {
        /* Take everything pushed so far, oldest first. */
        struct fault_req *s = __atomic_exchange_n(&D.req_stack, NULL, __ATOMIC_ACQUIRE), *rev = NULL;
        while (s) {
            struct fault_req *n = s->next;
            s->next = rev;
            rev = s;
            s = n;
        }
        D.req_local = rev;
    }
    struct fault_req *q = D.req_local;
    if (q) D.req_local = q->next;
    pthread_mutex_unlock(&D.qlock);
    return q;
}

static void *segv_thread(void *arg)
{
    (void)arg;
    uint64_t spin_until = 0;
    for (;;) {
        uint32_t seq = __atomic_load_n(&D.req_seq, __ATOMIC_ACQUIRE);
        if (!__atomic_load_n(&D.running, __ATOMIC_ACQUIRE)) break;
        struct fault_req *q = take_request();
        if (!q) {
            /* As the userfaultfd leader: poll a while before sleeping (see next_trap). */
            if (spin_until && now_ns() < spin_until) {
                relax();
                continue;
            }
            spin_until = 0;
            futex(&D.req_seq, FUTEX_WAIT_PRIVATE, seq);
            continue;
        }
        uint64_t i;
        struct epc_region *r = region_of(q->addr, &i);
        if (r) handle_fault(r, i, q->addr, q->tid, 0);
        __atomic_store_n(&q->done, 1, __ATOMIC_RELEASE);
        futex(&q->done, FUTEX_WAKE_PRIVATE, 1);
        spin_until = D.spin_ns ? now_ns() + D.spin_ns : 0;
    }
    return NULL;
}

/* ---- reclaim ---- */

/* EWB one isolated (PG_EVICTING, already EBLOCKed) page and free its frame. */
static int write_page(struct epc_page *p)
{
    struct epc_region *r = p->region;
    uint64_t i = p->index;
    uint64_t c0 = now_ns();
    /* The CPU reads the page from the memfd, seals it, writes it to the store and punches the
     * page out of the memfd. */
    int rc = D.ewb((uint64_t)(r->app + i * EPC_PAGE), r->va_first + i,
                   r->store + i * EPC_PAGE, r->pcmd + i * EPC_PCMD);
    ADD(ewb_ns, now_ns() - c0);
    pthread_mutex_lock(&D.lk);
    if (rc == 0) {
        ADD(ewb, 1);
        p->state = PG_EVICTED;
        frames_put(1);
        D.resident--;
    } else {
        /* The CPU refused (cannot happen with a consistent VA): keep the page resident. */
        ADD(ewb_failures, 1);
        install(r, i);
        p->state = PG_RESIDENT;
        list_add_tail(p);
    }
    pthread_cond_broadcast(&D.changed);
    pthread_mutex_unlock(&D.lk);
    return rc;
}

/* One pass of sgx_swap_pages(): isolate, EBLOCK all, ETRACK, EWB each.  Under D.lk; returns
 * with it held. */
static void reclaim_pass(void)
{
    struct epc_page *batch[EPC_NR_TO_SCAN];
    int n = 0;
    ADD(batches, 1);
    for (int k = 0; k < EPC_NR_TO_SCAN && D.head.next != &D.head; k++) {
        struct epc_page *p = scan_head();
        if (p)
            batch[n++] = p;
    }
    if (!n) return;
    pthread_mutex_unlock(&D.lk);
    uint64_t b0 = now_ns();
    eblock_batch(batch, n);
    ADD(eblock_ns, now_ns() - b0);
    for (int k = 0; k < n; k++)
        write_page(batch[k]);
    pthread_mutex_lock(&D.lk);
}

static void *swapd_thread(void *arg)
{
    (void)arg;
    /* ksgxswapd is a kernel thread: the app's CPU mask (a benchmark pins the app to one core)
     * does not bind it, so it may run on any online CPU, as the kernel's would. */
    cpu_set_t all;
    CPU_ZERO(&all);
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    for (long c = 0; c < ncpu && c < CPU_SETSIZE; c++)
        CPU_SET((int)c, &all);
    sched_setaffinity(0, sizeof all, &all);
    pthread_mutex_lock(&D.lk);
    int passed = 0;
    while (D.running) {
        if (D.dom) {
            /* One of the domain's reclaimers: it runs when its oldest page is the domain's
             * oldest; after its batches it wakes the others, whose turn it may now be. */
            uint32_t seq = epc_domain_reclaim_seq(D.dom);
            if (D.head.next != &D.head && epc_domain_reclaim_turn(D.dom)) {
                reclaim_pass();
                passed = 1;
                continue;
            }
            pthread_mutex_unlock(&D.lk);
            if (passed) epc_domain_kick(D.dom);
            else epc_domain_wait_reclaim(D.dom, seq, 1000);
            passed = 0;
            pthread_mutex_lock(&D.lk);
            continue;
        }
        if (D.free_frames < D.high && D.head.next != &D.head) {
            reclaim_pass();
            continue;
        }
        pthread_cond_wait(&D.swapd_cv, &D.lk);
    }
    pthread_mutex_unlock(&D.lk);
    return NULL;
}

/* ---- the API Python calls (through cffi, GIL released) ---- */

/* The trap's handler for `sig`, keeping the one before it in *old (to chain and restore). */
static int install_handler(int sig, void (*fn)(int, siginfo_t *, void *), struct sigaction *old)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = fn;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    return sigaction(sig, &sa, old);
}

/* A userfaultfd with `features` (and what every mode needs), or -1 if the kernel refuses. */
static int open_uffd(uint64_t features)
{
    int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return -1;
    struct uffdio_api api = { .api = UFFD_API,
        .features = UFFD_FEATURE_MISSING_SHMEM | UFFD_FEATURE_MINOR_SHMEM | features };
    if (ioctl(fd, UFFDIO_API, &api) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Start the driver: `limit_pages` EPC frames, `trap` TRAP_SIGBUS, TRAP_USERFAULTFD or
 * TRAP_SIGSEGV (0: the first of those the kernel allows), `nthreads` fault-handling threads
 * (none in SIGBUS mode: each faulting thread is its own).  Returns the trap in use, or -errno. */
int epc_driver_start(uint64_t limit_pages, int trap, int nthreads, uintptr_t ewb, uintptr_t eldu,
                     uintptr_t charge, uintptr_t pollute)
{
    if (D.created) return -EBUSY;
    if (!limit_pages || !ewb || !eldu) return -EINVAL;
    if (nthreads < 1) nthreads = 1;
    if (nthreads > EPC_MAX_FAULT_THREADS) nthreads = EPC_MAX_FAULT_THREADS;
    memset(&D.st, 0, sizeof D.st);
    memset(D.regions, 0, sizeof D.regions);
    D.regions_used = 0;
    D.limit = D.free_frames = limit_pages;
    D.resident = 0;
    D.low = limit_pages / 64 < EPC_NR_LOW ? (limit_pages / 64 ? limit_pages / 64 : 1) : EPC_NR_LOW;
    D.high = 2 * D.low;
    D.head.next = D.head.prev = &D.head;
    D.ewb = (epc_ewb_fn)ewb;
    D.eldu = (epc_eldu_fn)eldu;
    D.charge = (eleos_cpu_charge_fn)charge;
    D.pollute = (eleos_cpu_pollute_fn)pollute;
    D.dead = 0;
    D.dead_tid = 0;
    D.dead_addr = 0;
    D.req_stack = D.req_local = NULL;
    D.uffd = -1;
    D.spin_ns = EPC_SPIN_NS;
    leader_taken = 0;

    D.trap = TRAP_SIGSEGV;
    if (trap == 0 || trap == TRAP_SIGBUS) {
        D.uffd = open_uffd(UFFD_FEATURE_SIGBUS);
        if (D.uffd >= 0) D.trap = TRAP_SIGBUS;
        else if (trap == TRAP_SIGBUS) return -EPERM;
    }
    if (D.uffd < 0 && (trap == 0 || trap == TRAP_USERFAULTFD)) {
        D.uffd = open_uffd(UFFD_FEATURE_THREAD_ID);
        if (D.uffd >= 0) D.trap = TRAP_USERFAULTFD;
        else if (trap == TRAP_USERFAULTFD) return -EPERM;
    }
    D.trap_ticks = D.direct_reclaims = D.sigbus_faults = 0;
    D.calibrating = 0;
    pidfd_self = (int)syscall(SYS_pidfd_open, getpid(), 0);
    /* Measured on a 2-core VM: polling saves the userfaultfd path a wake-up per fault, while on
     * the SIGSEGV path (futex hand-offs both ways) it only took CPU from the app. */
    if (D.trap != TRAP_USERFAULTFD) D.spin_ns = 0;
    D.running = 1;
    if (D.trap == TRAP_USERFAULTFD) {
        D.stopfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    } else if (D.trap == TRAP_SIGBUS) {
        if (install_handler(SIGBUS, bus_handler, &D.old_bus) != 0) {
            int err = errno;
            D.running = 0;
            close(D.uffd);
            D.uffd = -1;
            return -err;
        }
        D.bus_installed = 1;
        nthreads = 0;
    } else {
        if (install_handler(SIGSEGV, segv_handler, &D.old_segv) != 0) {
            D.running = 0;
            return -errno;
        }
        D.segv_installed = 1;
    }
    D.nthreads = nthreads;
    for (int k = 0; k < nthreads; k++)
        pthread_create(&D.threads[k], NULL, D.trap == TRAP_USERFAULTFD ? uffd_thread : segv_thread, NULL);
    pthread_create(&D.swapd, NULL, swapd_thread, NULL);
    for (int k = 0; k < nthreads; k++) pthread_setname_np(D.threads[k], "eleos-epc-fault");
    pthread_setname_np(D.swapd, "eleos-epc-swapd");   /* host threads: named for benchmarks */
    D.created = 1;
    return D.trap;
}

void epc_driver_stop(void)
{
    if (!D.created) return;
    pthread_mutex_lock(&D.lk);
    D.running = 0;
    pthread_cond_broadcast(&D.swapd_cv);
    pthread_cond_broadcast(&D.changed);
    pthread_mutex_unlock(&D.lk);
    if (D.dom) epc_domain_kick(D.dom);   /* our reclaimer may sleep on the domain's futex */
    if (D.trap == TRAP_USERFAULTFD) {
        uint64_t one = 1;
        if (write(D.stopfd, &one, sizeof one) < 0) { /* the poll also ends on close */ }
    } else {
        __atomic_add_fetch(&D.req_seq, 1, __ATOMIC_RELEASE);
        futex(&D.req_seq, FUTEX_WAKE_PRIVATE, INT32_MAX);
    }
    for (int k = 0; k < D.nthreads; k++)
        pthread_join(D.threads[k], NULL);
    pthread_join(D.swapd, NULL);
    if (D.trap == TRAP_SIGSEGV) {
        /* Threads still waiting in the SIGSEGV handler must not wait forever: open their page
         * (what the memfd holds: a page that was evicted is lost, as close() documents). */
        struct fault_req *q;
        while ((q = take_request()) != NULL) {
            mprotect((void *)(q->addr & ~(uintptr_t)(EPC_PAGE - 1)), EPC_PAGE, PROT_READ | PROT_WRITE);
            __atomic_store_n(&q->done, 1, __ATOMIC_RELEASE);
            futex(&q->done, FUTEX_WAKE_PRIVATE, 1);
        }
    }
    if (D.segv_installed) {
        sigaction(SIGSEGV, &D.old_segv, NULL);
        D.segv_installed = 0;
    }
    /* SIGBUS mode: closing the userfaultfd unregisters the views (they become plain memory),
     * and only then may a stray access reach whatever handler was there before. */
    if (D.uffd >= 0) close(D.uffd);
    D.uffd = -1;
    if (D.bus_installed) {
        sigaction(SIGBUS, &D.old_bus, NULL);
        D.bus_installed = 0;
    }
    if (pidfd_self >= 0) close(pidfd_self);
    pidfd_self = -1;
    if (D.stopfd >= 0) close(D.stopfd);
    D.uffd = D.stopfd = -1;
    D.created = 0;
}

/* Create a region of `npages` pages whose VA slots start at `va_first`.  Returns its id, and its
 * memfd in *memfd (the app maps it), or -errno. */
int epc_region_create(uint64_t npages, uint64_t nbytes, uint64_t va_first, int *memfd)
{
    if (!D.created) return -EINVAL;
    if (!npages || nbytes > npages * EPC_PAGE) return -EINVAL;
    pthread_mutex_lock(&D.lk);
    int id = -1;
    for (int k = 0; k < EPC_MAX_REGIONS; k++)
        if (!D.regions[k].len && !D.regions[k].pages) { id = k; break; }
    if (id < 0) {
        pthread_mutex_unlock(&D.lk);
        return -ENOSPC;
    }
    struct epc_region *r = &D.regions[id];
    memset(r, 0, sizeof *r);
    r->pages = calloc(npages, sizeof *r->pages);   /* reserves the slot */
    if (id >= D.regions_used) __atomic_store_n(&D.regions_used, id + 1, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&D.lk);
    if (!r->pages) return -ENOMEM;
    int err = 0;
    r->memfd = memfd_create("eleos-epc", MFD_CLOEXEC);
    if (r->memfd < 0) { err = -errno; goto fail; }
    if (ftruncate(r->memfd, (off_t)nbytes) != 0) { err = -errno; goto fail; }
    /* The backing store is ordinary untrusted memory; only written pages cost RAM. */
    r->store = mmap(NULL, npages * (EPC_PAGE + EPC_PCMD), PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (r->store == MAP_FAILED) { r->store = NULL; err = -errno; goto fail; }
    r->pcmd = r->store + npages * EPC_PAGE;
    r->npages = npages;
    r->va_first = va_first;
    for (uint64_t i = 0; i < npages; i++) {
        r->pages[i].region = r;
        r->pages[i].index = (uint32_t)i;
        r->pages[i].state = PG_NEW;
    }
    *memfd = r->memfd;
    return id;
fail:
    if (r->memfd >= 0) close(r->memfd);
    free(r->pages);
    memset(r, 0, sizeof *r);
    return err;
}

/* The app mapped the memfd at `app`: start trapping its accesses. */
int epc_region_attach(int id, uintptr_t app)
{
    if (id < 0 || id >= EPC_MAX_REGIONS || !D.regions[id].pages) return -EINVAL;
    struct epc_region *r = &D.regions[id];
    uint64_t len = r->npages * EPC_PAGE;
    if (UFFD_TRAP) {
        struct uffdio_register reg = { .range = { .start = app, .len = len },
            .mode = UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_MINOR };
        if (ioctl(D.uffd, UFFDIO_REGISTER, &reg) != 0) return -errno;
    } else {
        if (mprotect((void *)app, len, PROT_NONE) != 0) return -errno;
    }
    madvise((void *)app, len, MADV_NOHUGEPAGE);
    r->live = 1;
    __atomic_store_n(&r->app, app, __ATOMIC_RELEASE);
    __atomic_store_n(&r->len, len, __ATOMIC_RELEASE);
    __atomic_store_n(&r->attached, 1, __ATOMIC_RELEASE);
    return 0;
}

/* The enclave freed the region (the app's view is gone or going): return its frames. */
int epc_region_destroy(int id)
{
    if (id < 0 || id >= EPC_MAX_REGIONS || !D.regions[id].pages) return -EINVAL;
    struct epc_region *r = &D.regions[id];
    pthread_mutex_lock(&D.lk);
    r->live = 0;
    __atomic_store_n(&r->attached, 0, __ATOMIC_RELEASE);
    for (uint64_t i = 0; i < r->npages; i++) {
        struct epc_page *p = &r->pages[i];
        while (p->state == PG_LOADING || p->state == PG_EVICTING)
            pthread_cond_wait(&D.changed, &D.lk);
        if (p->state == PG_RESIDENT) {
            list_del(p);
            frames_put(1);
            D.resident--;
        }
        p->state = PG_NEW;
    }
    __atomic_store_n(&r->len, 0, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&D.changed);
    pthread_mutex_unlock(&D.lk);
    munmap(r->store, r->npages * (EPC_PAGE + EPC_PCMD));
    close(r->memfd);
    pthread_mutex_lock(&D.lk);
    free(r->pages);
    memset(r, 0, sizeof *r);
    pthread_mutex_unlock(&D.lk);
    return 0;
}

/* Evict one page now (what the host may do at any time; tests use it to reach the backing
 * store deterministically).  1 if it was resident and is now sealed, 0 if not resident. */
int epc_evict(int id, uint64_t index)
{
    if (id < 0 || id >= EPC_MAX_REGIONS || !D.regions[id].pages) return -EINVAL;
    struct epc_region *r = &D.regions[id];
    if (index >= r->npages) return -EINVAL;
    struct epc_page *p = &r->pages[index];
    pthread_mutex_lock(&D.lk);
    while (p->state == PG_LOADING || p->state == PG_EVICTING)
        pthread_cond_wait(&D.changed, &D.lk);
    if (p->state != PG_RESIDENT) {
        pthread_mutex_unlock(&D.lk);
        return 0;
    }
    list_del(p);
    p->state = PG_EVICTING;
    pthread_mutex_unlock(&D.lk);
    eblock(r, index);
    return write_page(p) == 0 ? 1 : -EIO;
}

/* The host as an attacker (tests): a driver that wants the verified content of page `sealed`
 * to appear as page `at` of the same region.  It hands the CPU that page's sealed copy
 * (ciphertext and PCMD) and the VA slot of page `slot_of`, for the address of page `at`, which
 * is where the CPU installs whatever it verifies; page `at` must not be resident.  Returns the
 * CPU's answer (0 = EPCM_OK, else an EPCM_ERR_*: then the enclave is dead), or -errno. */
int epc_host_load(int id, uint64_t sealed, uint64_t slot_of, uint64_t at)
{
    if (id < 0 || id >= EPC_MAX_REGIONS || !D.regions[id].pages) return -EINVAL;
    struct epc_region *r = &D.regions[id];
    if (sealed >= r->npages || slot_of >= r->npages || at >= r->npages) return -EINVAL;
    struct epc_page *p = &r->pages[at];
    pthread_mutex_lock(&D.lk);
    while (p->state == PG_LOADING || p->state == PG_EVICTING)
        pthread_cond_wait(&D.changed, &D.lk);
    uint32_t seq;
    if (p->state == PG_RESIDENT || !frame_take(&seq)) {
        pthread_mutex_unlock(&D.lk);
        return -EBUSY;
    }
    int from = p->state;
    p->state = PG_LOADING;
    D.resident++;
    pthread_mutex_unlock(&D.lk);
    uint64_t cpu[2] = {0, 0};
    uint64_t addr = (uint64_t)(r->app + at * EPC_PAGE);
    int rc = D.eldu(addr, r->va_first + slot_of, r->store + sealed * EPC_PAGE,
                    r->pcmd + sealed * EPC_PCMD, cpu_uffd(), cpu);
    if (rc == 0 && cpu[0])
        wake_at(addr);
    else if (rc == 0)
        install(r, at);
    if (rc != 0)
        eldu_failed((int)syscall(SYS_gettid), addr);
    pthread_mutex_lock(&D.lk);
    if (rc == 0) {
        p->state = PG_RESIDENT;
        p->accessed = 1;
        list_add_tail(p);
    } else {
        p->state = (uint8_t)from;
        frames_put(1);
        D.resident--;
    }
    pthread_cond_broadcast(&D.changed);
    pthread_mutex_unlock(&D.lk);
    return rc;
}

/* Where the backing store of a region is: out = {store, pcmd, npages, va_first}. */
int epc_region_info(int id, uint64_t out[4])
{
    if (id < 0 || id >= EPC_MAX_REGIONS || !D.regions[id].pages) return -EINVAL;
    struct epc_region *r = &D.regions[id];
    out[0] = (uint64_t)(uintptr_t)r->store;
    out[1] = (uint64_t)(uintptr_t)r->pcmd;
    out[2] = r->npages;
    out[3] = r->va_first;
    return 0;
}

/* The page states of a region, one byte each (0 new, 1 resident, 2 loading, 3 evicting,
 * 4 evicted). */
int epc_region_states(int id, uint8_t *out, uint64_t n)
{
    if (id < 0 || id >= EPC_MAX_REGIONS || !D.regions[id].pages) return -EINVAL;
    struct epc_region *r = &D.regions[id];
    pthread_mutex_lock(&D.lk);
    for (uint64_t i = 0; i < n && i < r->npages; i++) out[i] = r->pages[i].state;
    pthread_mutex_unlock(&D.lk);
    return 0;
}

/* Take this process's frames from domain `dom` (an epc_domain_t *, or 0: a private EPC), before
 * epc_driver_start; the limit passed there is then the domain's. */
int epc_driver_use_domain(uintptr_t dom)
{
    if (D.created) return -EBUSY;
    D.dom = (epc_domain_t *)dom;
    return 0;
}

/* Set the driver threads' poll-before-sleep time (0: sleep at once).  For experiments. */
void epc_driver_set_spin(uint64_t ns) { __atomic_store_n(&D.spin_ns, ns, __ATOMIC_RELAXED); }

/* RECLAIM_DIRECT or RECLAIM_BACKGROUND (see the header comment); kept across starts. */
void epc_driver_set_reclaim(int how)
{
    __atomic_store_n(&D.reclaim, how == RECLAIM_BACKGROUND ? RECLAIM_BACKGROUND : RECLAIM_DIRECT,
                     __ATOMIC_RELAXED);
}

/* What a trap costs outside its handler, in TSC ticks: the kernel's delivery of the fault to
 * the handler (a signal frame, or a driver thread's wake-up) and the way back (sigreturn, or the
 * faulting thread's wake-up after the install).  No code runs there to read the clock, so it is
 * measured here, once: `n` first touches of a scratch region (each a zero-fill fault, nothing
 * charged), the time the toucher sees minus the time inside the handler; the median.  Call
 * after epc_driver_start, before the app maps anything (it needs n free frames).  Returns the
 * ticks (also kept for epc_driver_trap_stats), or -errno. */
int64_t epc_driver_measure_trap(int n)
{
    if (!D.created) return -EINVAL;
    if (n < 1) n = 1;
    if (n > 64) n = 64;
    /* Stay clear of the reclaim marks: a scratch page must never be EWBed.  In a domain the
     * frames are the domain's and its reclaimers may evict any member's page: not measured
     * there (each fault's real part then lacks the trap's delivery). */
    uint64_t room = !D.dom && D.free_frames > 2 * D.high + 1 ? D.free_frames - 2 * D.high - 1 : 0;
    if ((uint64_t)n > room) n = (int)room;
    if (n < 2) return 0;
    int memfd;
    int id = epc_region_create((uint64_t)n, (uint64_t)n * EPC_PAGE, 0, &memfd);
    if (id < 0) return id;
    uint8_t *view = mmap(NULL, (size_t)n * EPC_PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
    if (view == MAP_FAILED) {
        epc_region_destroy(id);
        return -errno;
    }
    int rc = epc_region_attach(id, (uintptr_t)view);
    uint64_t d[64];
    int got = 0;
    if (rc == 0) {
        __atomic_store_n(&D.calibrating, 1, __ATOMIC_RELEASE);
        for (int k = 0; k < n; k++) {
            __atomic_store_n(&D.cal_inner, 0, __ATOMIC_RELAXED);
            uint64_t t0 = ticks();
            (void)*(volatile uint8_t *)(view + (size_t)k * EPC_PAGE);
            uint64_t outer = ticks() - t0;
            uint64_t inner = __atomic_load_n(&D.cal_inner, __ATOMIC_RELAXED);
            if (k >= 1) d[got++] = outer > inner ? outer - inner : 0;   /* the first warms up */
        }
        __atomic_store_n(&D.calibrating, 0, __ATOMIC_RELEASE);
    }
    munmap(view, (size_t)n * EPC_PAGE);
    epc_region_destroy(id);
    pthread_mutex_lock(&D.lk);
    memset(&D.st, 0, sizeof D.st);          /* the app's stats start from its first fault */
    pthread_mutex_unlock(&D.lk);
    if (rc != 0) return rc;
    if (!got) d[got++] = 0;
    for (int a = 1; a < got; a++)           /* insertion sort: a handful of values */
        for (int b = a; b > 0 && d[b - 1] > d[b]; b--) {
            uint64_t t = d[b]; d[b] = d[b - 1]; d[b - 1] = t;
        }
    D.trap_ticks = d[got / 2];
    return (int64_t)D.trap_ticks;
}

/* out = {trap ticks measured, faults resolved in SIGBUS handlers, direct reclaims, reclaim mode}. */
void epc_driver_trap_stats(uint64_t out[4])
{
    out[0] = D.trap_ticks;
    out[1] = __atomic_load_n(&D.sigbus_faults, __ATOMIC_RELAXED);
    out[2] = __atomic_load_n(&D.direct_reclaims, __ATOMIC_RELAXED);
    out[3] = (uint64_t)(D.dom ? RECLAIM_BACKGROUND : D.reclaim);   /* a domain's is its reclaimers' */
}

/* out: see EPC_STAT_FIELDS in untrusted/epc.py (same order). */
void epc_driver_stats(uint64_t out[26])
{
    pthread_mutex_lock(&D.lk);
    uint64_t *s = (uint64_t *)&D.st;
    for (size_t k = 0; k < sizeof D.st / sizeof(uint64_t); k++)
        out[k] = __atomic_load_n(&s[k], __ATOMIC_RELAXED);
    size_t k = sizeof D.st / sizeof(uint64_t);
    out[k++] = D.limit;
    out[k++] = D.resident;
    out[k++] = D.free_frames;
    out[k++] = D.low;
    out[k++] = D.high;
    out[k++] = (uint64_t)D.trap;
    out[k++] = (uint64_t)__atomic_load_n(&D.dead, __ATOMIC_ACQUIRE);
    pthread_mutex_unlock(&D.lk);
}

/* The failed load, if any: out = {dead, tid, linaddr}. */
void epc_driver_failure(uint64_t out[3])
{
    out[0] = (uint64_t)__atomic_load_n(&D.dead, __ATOMIC_ACQUIRE);
    out[1] = (uint64_t)D.dead_tid;
    out[2] = D.dead_addr;
}

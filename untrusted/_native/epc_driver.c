/*
 * epc_driver.c - the SGX driver model: EPC limit, the fault path, reclaim (untrusted/, host).
 *
 * Vanilla SGX keeps the enclave's memory in the EPC, a few dozen MB.  When an enclave touches
 * more, the kernel driver pages: the access traps (AEX), the driver picks a victim, EWBs it
 * (sealed by the CPU) to normal memory, ELDUs the wanted page back and the thread resumes
 * (ERESUME).  This file is that driver, for real, over memory of this process:
 *
 *   enclave memory  a memfd per region: its pages are the EPC frames of the region's pages.
 *                   The app maps it (a real mmap.mmap, created in Python); so does the modeled
 *                   CPU (its own view, epcm.c).  The driver never maps it and never reads or
 *                   writes enclave pages: the CPU's EWB copies a page from its view into a
 *                   CPU-private frame, seals it there and wipes the page; ELDU opens into such
 *                   a frame, copies the plaintext into the page through its view while the
 *                   app's view has no mapping of it, and maps it (UFFDIO_CONTINUE; SIGSEGV mode:
 *                   the driver's mprotect), so the app never sees a half-loaded page and
 *                   plaintext never sits in the driver's memory.  A page is in the EPC while
 *                   the app's view maps it; the driver's frame count (D.limit, free_frames, or
 *                   the domain's) is what bounds that.  A wiped frame stays allocated in the
 *                   memfd (reading as zero, as a punched hole did): punching the hole cost a
 *                   third of a fault (the page cache's truncation, a walk of every mapping, a
 *                   page allocated again at the next load), so the host's memory holds the
 *                   whole region, while the EPC holds D.limit pages of it.
 *   traps           epc_trap.c: userfaultfd's SIGBUS in the faulting thread (TRAP_SIGBUS, the
 *                   default: a never-touched page is a MISSING fault, an evicted one a MINOR
 *                   one, both raise SIGBUS), userfaultfd served by driver threads, or
 *                   mprotect+SIGSEGV; each calls handle_fault below.
 *   EBLOCK/ETRACK   before EWB the victims are unmapped from the app's view (MADV_DONTNEED:
 *                   a reclaim pass's batch in one process_madvise call where the kernel has
 *                   it, which batches the TLB flush except for dirty pages of a shared
 *                   mapping; or mprotect PROT_NONE page by page), so no write can slip in
 *                   after EWB read the page.
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
 *   reclaim         RECLAIM_DIRECT (default): a fault that finds no free frame reclaims a
 *                   cluster itself (reclaim_direct: the reclaimer's pass below, run by the
 *                   faulting thread, as sgx_alloc_epc_page runs sgx_reclaim_pages when it may
 *                   reclaim), as the 40,000-cycle budget of a page swap includes the EWB: the
 *                   cluster's time is the EWB share of the faults that take its frames, and
 *                   the CPU's accounting moves it to them (cpu_fault_shift), so each pays its
 *                   budget.  One EBLOCK for the cluster: a lone victim per fault cost one TLB
 *                   shootdown per fault, an IPI of ~10 us on this VM whenever the other vCPU
 *                   runs a thread of the process (4 threads on 2 vCPUs: always), which is the
 *                   VM's, not SGX's.  Measured on a 2-vCPU VM (benchmarks/paging.py, 1 thread):
 *                   the real part of a fault is ~23,000 cycles at the median (a cluster's EBLOCK
 *                   ~1.3 us a victim), so faults pay 40,000.  At 4 threads the kernel still
 *                   flushes page by page (a dirty page of a shared mapping is flushed before
 *                   its page-table lock drops, and UFFDIO_CONTINUE maps pages dirty): EBLOCK
 *                   ~14 us a victim, and faults overrun.  RECLAIM_BACKGROUND: ksgxswapd
 *                   (below) keeps frames free and a fault that finds none waits for it; its
 *                   faults' real part is ~15,000, but the reclaimer shares the app's CPUs.
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
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#include "epc_internal.h"

struct epc_state D = {
    .lk = PTHREAD_MUTEX_INITIALIZER,
    .changed = PTHREAD_COND_INITIALIZER,
    .swapd_cv = PTHREAD_COND_INITIALIZER,
    .qlock = PTHREAD_MUTEX_INITIALIZER,
    .uffd = -1,
    .stopfd = -1,
    .reclaim = RECLAIM_DIRECT,
    .tick_hz = 1e9,
};

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

/* EBLOCK a batch (ksgxswapd's): one process_madvise call where the kernel supports
 * MADV_DONTNEED there (one syscall; measured here, it still flushes range by range: ~1.6 us a
 * page against ~2.5 for a lone madvise); else page by page. */
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
 * the memfd and map it for the app, which wakes the threads waiting on it.  userfaultfd, a
 * never-touched page (a hole): UFFDIO_COPY does all of it in one call (the kernel allocates
 * the page and copies, no zeroing, no fault in the driver).  Else pwrite into the memfd, then
 * map it. */
static int commit(struct epc_region *r, uint64_t i, const uint8_t *frame)
{
    uintptr_t a = r->app + i * EPC_PAGE;
    if (UFFD_TRAP) {
        struct uffdio_copy c = { .dst = a, .src = (uintptr_t)frame, .len = EPC_PAGE, .mode = 0 };
        if (ioctl(D.uffd, UFFDIO_COPY, &c) == 0)
            return 0;
        /* EEXIST: the page has a frame already (an evicted page's, wiped, whose ELDU failed),
         * or a signal: write it and map that frame. */
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

static int reclaim_pass(void);

/* RECLAIM_DIRECT: the fault found no free frame, so its thread reclaims a cluster itself, as
 * the SGX driver's reclaimer does (sgx_reclaim_pages, which sgx_alloc_epc_page calls when it
 * may reclaim): up to EPC_NR_TO_SCAN pages from the active list's head, the young given their
 * second chance, the rest EBLOCKed together (one madvise call: one TLB shootdown, where this
 * kernel batches the flush), ETRACKed, EWBed one by one.  One victim a fault would cost one
 * shootdown a fault: ~10 us on this VM when another vCPU runs a thread of the process, which
 * is the VM's IPI, not SGX's.  The cluster's time is the EWB share of as many faults: this one
 * keeps a share, and the rest (*ahead) goes with the other frames freed, to the faults that
 * take them (D.prepaid_*; cpu_fault_shift moves it in the CPU's accounting, so each pays its
 * budget).  Under D.lk; returns with it held: how many pages it freed (0: nothing can be
 * evicted now, every page loading: wait). */
static int reclaim_direct(uint64_t *ahead)
{
    uint64_t t0 = ticks();
    int n = 0;
    for (uint64_t k = 0; !n && k <= D.limit / EPC_NR_TO_SCAN + 1 && D.head.next != &D.head; k++)
        n = reclaim_pass();             /* 0 when every page scanned was young: scan on */
    if (n <= 0) return 0;
    __atomic_add_fetch(&D.direct_reclaims, (uint64_t)n, __ATOMIC_RELAXED);
    uint64_t spent = ticks() - t0, share = spent / (uint64_t)n;
    if (n > 1) {
        D.prepaid_tk += spent - share;
        D.prepaid_n += (uint64_t)n - 1;
        *ahead += spent - share;
        ADD(ahead_tk, spent - share);
    }
    return n;
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

/* Bring page i of r in and release the faulting thread(s).  `tid` is the faulting thread.
 * Returns the ticks of this fault's time done for other faults, less its own share done ahead
 * by another (reclaim_direct), for the thread whose fault is open in the CPU's accounting to
 * shift (cpu_fault_shift) before ERESUME; with charge_here, this thread, it is done already. */
int64_t handle_fault(struct epc_region *r, uint64_t i, uintptr_t fault_addr, int tid, int charge_here)
{
    uint64_t t0 = ticks(), k0 = t0;
    ADD(faults, 1);
    if (charge_here) spend(ELEOS_T_AEX);
    uint64_t t_modeled = ticks() - t0;
    struct epc_page *p = NULL;
    int load = 0, from = PG_NEW, live = 0, reclaimed = 0;
    uint64_t tw = 0, ahead = 0, prepaid = 0;

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
            if (!D.dom && D.reclaim == RECLAIM_DIRECT && reclaim_direct(&ahead)) {
                reclaimed = 1;
                continue;
            }
            /* SGX_ALLOC_ATOMIC failed: let ksgxswapd free frames, wait for one.  In a domain
             * the frame may come from another process: wait on the domain's futex (bounded,
             * so a member that died holding frames is swept by the next look). */
            uint64_t w0 = ticks();
            ADD(frame_waits, 1);
            if (D.dom) {
                pthread_mutex_unlock(&D.lk);
                epc_domain_wait_freed(D.dom, seq, 50);
                pthread_mutex_lock(&D.lk);
            } else {
                pthread_cond_signal(&D.swapd_cv);
                pthread_cond_wait(&D.changed, &D.lk);
            }
            tw += ticks() - w0;
            continue;
        }
        D.resident++;
        if (D.resident > D.st.peak_resident) D.st.peak_resident = D.resident;
        if (!reclaimed && D.prepaid_n) {
            /* A frame another fault's cluster freed: its EWB share is paid already. */
            prepaid = D.prepaid_tk / D.prepaid_n;
            D.prepaid_tk -= prepaid;
            D.prepaid_n--;
            ADD(prepaid_tk, prepaid);
        }
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
        uint64_t c0 = ticks();
        int rc = D.eldu((uint64_t)page_addr, r->va_first + i, r->store + i * EPC_PAGE,
                        r->pcmd + i * EPC_PCMD, cpu_uffd(), cpu);
        ADD(eldu_tk, ticks() - c0 - cpu[1]);
        if (rc == 0) {
            ADD(eldu, 1);
            loaded = 1;
        } else {
            eldu_failed(tid, (uint64_t)page_addr);
        }
    } else {
        ADD(zero_fills, 1);                   /* first touch (or a dead enclave): a zero page */
    }
    int64_t moved = (int64_t)ahead - (int64_t)prepaid;
    uint64_t m0 = ticks();
    if (charge_here) {
        shift(moved);
        moved = 0;
        /* Before the install, which wakes the faulting thread: it must not run before its
         * fault's budget is paid.  The window opens in this thread, whose next trap pays it:
         * the app's work between two faults is as near as a handler thread can see. */
        __atomic_store_n(&D.cal_inner, ticks() - k0, __ATOMIC_RELAXED);
    __atomic_store_n(&D.cal_entry, k0, __ATOMIC_RELAXED);
        spend(ELEOS_T_ERESUME);
        after_exit();
    }
    t_modeled += ticks() - m0;
    uint64_t i0 = ticks();
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
    ADD(install_tk, ticks() - i0 + cpu[1]);
    if (load) {
        pthread_mutex_lock(&D.lk);
        p->state = PG_RESIDENT;
        p->accessed = 1;
        list_add_tail(p);
        pthread_cond_broadcast(&D.changed);
        pthread_mutex_unlock(&D.lk);
    }
    ADD(modeled_tk, t_modeled);
    ADD(wait_tk, tw);
    ADD(fault_tk, ticks() - t0);
    return moved;
}

struct epc_region *region_of(uintptr_t addr, uint64_t *index)
{
    struct epc_region *r = find_region(addr);
    if (r) *index = (addr - r->app) / EPC_PAGE;
    return r;
}

/* ---- reclaim ---- */

/* EWB one isolated (PG_EVICTING, already EBLOCKed) page and free its frame. */
static int write_page(struct epc_page *p)
{
    struct epc_region *r = p->region;
    uint64_t i = p->index;
    uint64_t c0 = ticks();
    /* The CPU reads the page through its view, seals it, wipes its frame and writes it to the
     * store. */
    int rc = D.ewb((uint64_t)(r->app + i * EPC_PAGE), r->va_first + i,
                   r->store + i * EPC_PAGE, r->pcmd + i * EPC_PCMD);
    ADD(ewb_tk, ticks() - c0);
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
 * with it held, and how many pages it EWBed. */
static int reclaim_pass(void)
{
    struct epc_page *batch[EPC_NR_TO_SCAN];
    int n = 0;
    ADD(batches, 1);
    for (int k = 0; k < EPC_NR_TO_SCAN && D.head.next != &D.head; k++) {
        struct epc_page *p = scan_head();
        if (p)
            batch[n++] = p;
    }
    if (!n) return 0;
    pthread_mutex_unlock(&D.lk);
    uint64_t b0 = ticks();
    eblock_batch(batch, n);
    ADD(eblock_tk, ticks() - b0);
    int freed = 0;
    for (int k = 0; k < n; k++)
        freed += write_page(batch[k]) == 0;
    pthread_mutex_lock(&D.lk);
    return freed;
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
/* Start the driver: `limit_pages` EPC frames, `trap` TRAP_SIGBUS, TRAP_USERFAULTFD or
 * TRAP_SIGSEGV (0: the first of those the kernel allows), `nthreads` fault-handling threads
 * (none in SIGBUS mode: each faulting thread is its own).  Returns the trap in use, or -errno. */
int epc_driver_start(uint64_t limit_pages, int trap, int nthreads, uintptr_t ewb, uintptr_t eldu,
                     uintptr_t charge, uintptr_t pollute, uintptr_t shift_fn)
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
    D.shift = (eleos_cpu_shift_fn)shift_fn;
    D.prepaid_tk = D.prepaid_n = 0;
    D.dead = 0;
    D.dead_tid = 0;
    D.dead_addr = 0;
    D.req_stack = D.req_local = NULL;
    D.uffd = -1;
    D.spin_ns = EPC_SPIN_NS;

    int got = trap_open(trap);
    if (got < 0) return got;
    D.trap_ticks = D.trap_return_ticks = D.direct_reclaims = D.sigbus_faults = 0;
    D.calibrating = 0;
    pidfd_self = (int)syscall(SYS_pidfd_open, getpid(), 0);
    D.running = 1;
    int err = trap_start(nthreads);
    if (err < 0) {
        D.running = 0;
        trap_close();
        if (pidfd_self >= 0) close(pidfd_self);
        pidfd_self = -1;
        return err;
    }
    pthread_create(&D.swapd, NULL, swapd_thread, NULL);
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
    trap_stop();
    pthread_join(D.swapd, NULL);
    trap_close();
    if (pidfd_self >= 0) close(pidfd_self);
    pidfd_self = -1;
    D.created = 0;
}

/* In the child of a fork(2) (eleos_shim/fork.py), before anything else uses the driver: the
 * parent's driver is not this process's.  Its threads did not survive the fork, a lock one of
 * them held is held for ever here, its userfaultfd (an fd the child shares with the parent)
 * traps the parent's views, not the child's (a registration is not inherited), and every
 * region's memfd is the parent's EPC.  Forget all of it without touching what the parent
 * still uses: locks made anew, the child's copies of the fds closed, the regions' bookkeeping
 * and their backing stores (private copies) freed, the trap handlers put back; the app's
 * views stay mapped (the caller maps the child's own regions over them).  The driver is then
 * as never started, and epc_driver_start makes the child's own. */
void epc_driver_forget(void)
{
    pthread_mutex_init(&D.lk, NULL);
    pthread_mutex_init(&D.qlock, NULL);
    pthread_cond_init(&D.changed, NULL);
    pthread_cond_init(&D.swapd_cv, NULL);
    for (int k = 0; k < EPC_MAX_REGIONS; k++) {
        struct epc_region *r = &D.regions[k];
        if (!r->pages) continue;
        if (r->store) munmap(r->store, r->npages * (EPC_PAGE + EPC_PCMD));
        if (r->memfd >= 0) close(r->memfd);
        free(r->pages);
        memset(r, 0, sizeof *r);
    }
    D.regions_used = 0;
    D.head.next = D.head.prev = &D.head;
    D.resident = 0;
    D.req_stack = D.req_local = NULL;
    if (D.segv_installed) {
        sigaction(SIGSEGV, &D.old_segv, NULL);
        D.segv_installed = 0;
    }
    trap_forget();
    trap_close();                    /* the uffd and stop fd, the SIGBUS handler */
    if (pidfd_self >= 0) close(pidfd_self);
    pidfd_self = -1;
    D.dom = NULL;
    D.running = 0;
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

/* The median of n values (sorted in place: insertion sort, a handful of them). */
static uint64_t median(uint64_t *v, int n)
{
    for (int a = 1; a < n; a++)
        for (int b = a; b > 0 && v[b - 1] > v[b]; b--) {
            uint64_t t = v[b]; v[b] = v[b - 1]; v[b - 1] = t;
        }
    return v[n / 2];
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
    uint64_t d[64], back[64];
    int got = 0;
    if (rc == 0) {
        __atomic_store_n(&D.calibrating, 1, __ATOMIC_RELEASE);
        for (int k = 0; k < n; k++) {
            __atomic_store_n(&D.cal_inner, 0, __ATOMIC_RELAXED);
            uint64_t t0 = ticks();
            (void)*(volatile uint8_t *)(view + (size_t)k * EPC_PAGE);
            uint64_t outer = ticks() - t0;
            uint64_t inner = __atomic_load_n(&D.cal_inner, __ATOMIC_RELAXED);
            uint64_t entry = __atomic_load_n(&D.cal_entry, __ATOMIC_RELAXED);
            uint64_t out = outer > inner ? outer - inner : 0;
            uint64_t in = entry > t0 ? entry - t0 : 0;               /* delivery */
            if (k >= 1) {                                            /* the first warms up */
                back[got] = out > in ? out - in : 0;                 /* the way back */
                d[got++] = out;
            }
        }
        __atomic_store_n(&D.calibrating, 0, __ATOMIC_RELEASE);
    }
    munmap(view, (size_t)n * EPC_PAGE);
    epc_region_destroy(id);
    pthread_mutex_lock(&D.lk);
    memset(&D.st, 0, sizeof D.st);          /* the app's stats start from its first fault */
    pthread_mutex_unlock(&D.lk);
    if (rc != 0) return rc;
    if (!got) {
        d[0] = back[0] = 0;
        got = 1;
    }
    D.trap_ticks = median(d, got);
    D.trap_return_ticks = median(back, got);
    if (D.trap_return_ticks > D.trap_ticks) D.trap_return_ticks = D.trap_ticks;
    return (int64_t)D.trap_ticks;
}

/* out = {trap ticks measured, faults resolved in SIGBUS handlers, direct reclaims, reclaim mode,
 * the trap's return part (ticks, of the first)}. */
void epc_driver_trap_stats(uint64_t out[5])
{
    out[4] = D.trap_return_ticks;
    out[0] = D.trap_ticks;
    out[1] = __atomic_load_n(&D.sigbus_faults, __ATOMIC_RELAXED);
    out[2] = __atomic_load_n(&D.direct_reclaims, __ATOMIC_RELAXED);
    out[3] = (uint64_t)(D.dom ? RECLAIM_BACKGROUND : D.reclaim);   /* a domain's is its reclaimers' */
}

/* How fast ticks() runs (the TSC's rate the modeled CPU measured), for the stats in ns. */
void epc_driver_set_tick_hz(double hz)
{
    if (hz > 0) D.tick_hz = hz;
}

/* out: see EPC_STAT_FIELDS in untrusted/epc.py (same order); the times in ns. */
void epc_driver_stats(uint64_t out[28])
{
    pthread_mutex_lock(&D.lk);
    uint64_t *s = (uint64_t *)&D.st;
    for (size_t k = 0; k < sizeof D.st / sizeof(uint64_t); k++) {
        out[k] = __atomic_load_n(&s[k], __ATOMIC_RELAXED);
        if (k >= EPC_FIRST_TK_FIELD) out[k] = (uint64_t)((double)out[k] * 1e9 / D.tick_hz + 0.5);
    }
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

/*
 * epc_trap.c - the SGX driver model's page-fault traps (untrusted/, host).
 *
 * How an access to a page that is not in the EPC reaches the driver's fault path
 * (handle_fault, epc_driver.c), as SGX's #PF reaches the kernel's driver:
 *   TRAP_SIGBUS       userfaultfd (MISSING|MINOR on the app's views) with UFFD_FEATURE_SIGBUS,
 *                     the default: the kernel raises SIGBUS in the faulting thread, whose handler
 *                     resolves its own fault and returns, so the access is retried and finds the
 *                     page: no cross-thread wake-up, as SGX's kernel handles a #PF on the
 *                     faulting core.  A never-touched page (a hole of the memfd) is a MISSING
 *                     fault; an evicted one (its frame still allocated, wiped) a MINOR one: both
 *                     raise SIGBUS.
 *   TRAP_USERFAULTFD  the faulting thread blocks in the kernel; native driver threads (leader
 *                     and followers over the one userfaultfd) read the fault and wake it.
 *   TRAP_SIGSEGV      no userfaultfd: a page that is not resident is PROT_NONE in the app's
 *                     view; the handler hands the fault to a driver thread through a lock-free
 *                     queue and sleeps on a futex until the page is in.
 * Every trap is one modeled event, AEX ... ERESUME (the handler, or the driver thread, charges
 * them); a fault that is not on an EPC view goes to the handler that was there before us.
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
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "epc_internal.h"

/* Leader/followers over the one userfaultfd: only the leader waits for a trap (userfaultfd
 * readers are not exclusive, so every waiting thread would wake on every trap); when it gets
 * one it promotes a follower and handles the trap.  A new leader first polls the userfaultfd
 * without sleeping for up to D.spin_ns: a paging app traps again within a few microseconds of
 * being resumed, and a thread that is already running takes the trap without a wake-up, as
 * the kernel's own fault handler runs on the faulting core. */
static int leader_taken;
static pthread_mutex_t lf_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t lf_cv = PTHREAD_COND_INITIALIZER;

/* In the child of a fork(2) (epc_driver_forget): the parent's fault threads are gone, and the
 * leader lock or its condition variable may hold state of theirs (a waiter count, a holder). */
void trap_forget(void)
{
    pthread_mutex_init(&lf_lock, NULL);
    pthread_cond_init(&lf_cv, NULL);
    leader_taken = 0;
    D.nthreads = 0;
}

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
    struct fault_req req = { .addr = addr, .tid = (int)syscall(SYS_gettid), .done = 0, .shift = 0 };
    struct fault_req *head = __atomic_load_n(&D.req_stack, __ATOMIC_RELAXED);
    do {
        req.next = head;
    } while (!__atomic_compare_exchange_n(&D.req_stack, &head, &req, 1, __ATOMIC_RELEASE, __ATOMIC_RELAXED));
    __atomic_add_fetch(&D.req_seq, 1, __ATOMIC_RELEASE);
    futex(&D.req_seq, FUTEX_WAKE_PRIVATE, 1);
    while (!__atomic_load_n(&req.done, __ATOMIC_ACQUIRE))
        futex(&req.done, FUTEX_WAIT_PRIVATE, 0);
    shift(req.shift);
    __atomic_store_n(&D.cal_inner, ticks() - k0, __ATOMIC_RELAXED);
    __atomic_store_n(&D.cal_entry, k0, __ATOMIC_RELAXED);
    spend(ELEOS_T_ERESUME);
    after_exit();
    errno = saved;
}

/* ---- SIGBUS: the faulting thread resolves its own fault ---- */

/* userfaultfd with UFFD_FEATURE_SIGBUS raises SIGBUS, in the faulting thread, for every access
 * the driver must serve.  The handler is that thread's fault path: AEX, the driver's work
 * (handle_fault: reclaim a frame if none is free, ELDU, UFFDIO_CONTINUE), ERESUME; returning
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
    shift(handle_fault(r, i, addr, (int)syscall(SYS_gettid), 0));
    __atomic_store_n(&D.cal_inner, ticks() - k0, __ATOMIC_RELAXED);
    __atomic_store_n(&D.cal_entry, k0, __ATOMIC_RELAXED);
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
        if (r) q->shift = handle_fault(r, i, q->addr, q->tid, 0);
        __atomic_store_n(&q->done, 1, __ATOMIC_RELEASE);
        futex(&q->done, FUTEX_WAKE_PRIVATE, 1);
        spin_until = D.spin_ns ? now_ns() + D.spin_ns : 0;
    }
    return NULL;
}

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

/* ---- setting a trap up and taking it down ---- */

int trap_open(int trap)
{
    D.uffd = -1;
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
    return D.trap;
}

int trap_start(int nthreads)
{
    leader_taken = 0;
    /* Measured on a 2-core VM: polling saves the userfaultfd path a wake-up per fault, while on
     * the SIGSEGV path (futex hand-offs both ways) it only took CPU from the app. */
    if (D.trap != TRAP_USERFAULTFD) D.spin_ns = 0;
    if (D.trap == TRAP_USERFAULTFD) {
        D.stopfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (D.stopfd < 0) return -errno;
    } else if (D.trap == TRAP_SIGBUS) {
        if (install_handler(SIGBUS, bus_handler, &D.old_bus) != 0) return -errno;
        D.bus_installed = 1;
        nthreads = 0;
    } else {
        if (install_handler(SIGSEGV, segv_handler, &D.old_segv) != 0) return -errno;
        D.segv_installed = 1;
    }
    D.nthreads = 0;
    for (int k = 0; k < nthreads; k++) {
        if (pthread_create(&D.threads[k], NULL, D.trap == TRAP_USERFAULTFD ? uffd_thread : segv_thread,
                           NULL) != 0)
            break;
        pthread_setname_np(D.threads[k], "eleos-epc-fault");   /* host threads: named for benchmarks */
        D.nthreads = k + 1;
    }
    return 0;
}

void trap_stop(void)
{
    if (D.trap == TRAP_USERFAULTFD) {
        uint64_t one = 1;
        if (write(D.stopfd, &one, sizeof one) < 0) { /* the poll also ends on close */ }
    } else {
        __atomic_add_fetch(&D.req_seq, 1, __ATOMIC_RELEASE);
        futex(&D.req_seq, FUTEX_WAKE_PRIVATE, INT32_MAX);
    }
    for (int k = 0; k < D.nthreads; k++)
        pthread_join(D.threads[k], NULL);
    D.nthreads = 0;
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
}

void trap_close(void)
{
    /* SIGBUS mode: closing the userfaultfd unregisters the views (they become plain memory),
     * and only then may a stray access reach whatever handler was there before. */
    if (D.uffd >= 0) close(D.uffd);
    D.uffd = -1;
    if (D.bus_installed) {
        sigaction(SIGBUS, &D.old_bus, NULL);
        D.bus_installed = 0;
    }
    if (D.stopfd >= 0) close(D.stopfd);
    D.stopfd = -1;
}

/*
 * epc_internal.h - what the SGX driver model's files share (untrusted/, host): its state, the
 * page and region records, the clocks, and the calls between the driver (epc_driver.c: frames,
 * the fault path, reclaim, the API) and its traps (epc_trap.c: SIGBUS, the userfaultfd
 * threads, SIGSEGV).  Not an API: Python sees epc_driver.h only.
 */
#ifndef EPC_INTERNAL_H
#define EPC_INTERNAL_H

#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include "eleos_abi.h"
#include "eleos_tsc.h"
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
    int64_t shift;                  /* the fault's time moved to or from others (handle_fault) */
};

struct epc_stats {
    uint64_t faults, zero_fills, eldu, ewb, frame_waits, batches, scanned, second_chances;
    uint64_t integrity_failures, ewb_failures, peak_resident, spurious;
    /* TSC ticks (the fault path reads no other clock); epc_driver_stats gives them in ns */
    uint64_t fault_tk, eldu_tk, ewb_tk, install_tk, modeled_tk, wait_tk, eblock_tk;
    uint64_t ahead_tk, prepaid_tk;  /* direct reclaim: done for other faults; of it, taken */
};
#define EPC_FIRST_TK_FIELD 12       /* fault_tk's index in struct epc_stats */
_Static_assert(offsetof(struct epc_stats, fault_tk) == EPC_FIRST_TK_FIELD * sizeof(uint64_t),
               "the tick fields follow the counts");

/* The driver's state: one driver per process (it owns the process's SIGBUS/SIGSEGV handler). */
struct epc_state {
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
    eleos_cpu_shift_fn shift;
    /* Direct reclaim's clusters: the EWB share, in ticks, done ahead for faults that will take
     * the frames freed (prepaid_n of them); each such fault takes prepaid_tk / prepaid_n. */
    uint64_t prepaid_tk, prepaid_n;
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
    uint64_t cal_entry;             /* and the tick the handler started at */
    uint64_t trap_ticks, trap_return_ticks, direct_reclaims, sigbus_faults;
    double tick_hz;                 /* ticks() per second (epc_driver_set_tick_hz) */
};
extern struct epc_state D __attribute__((visibility("hidden")));

#if defined(__x86_64__) || defined(__i386__)
#define relax() __builtin_ia32_pause()
#else
#define relax() __asm__ __volatile__("" ::: "memory")
#endif

static inline uint64_t ticks(void) { return eleos_tsc(); }   /* the modeled CPU's clock */

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

static inline long futex(uint32_t *addr, int op, uint32_t val)
{
    return syscall(SYS_futex, addr, op, val, NULL, NULL, 0);
}

static inline void spend(int t)
{
    if (D.charge && !D.calibrating) D.charge(t);
}

/* The fault open on this thread did `t` ticks for other faults (or they for it: < 0). */
static inline void shift(int64_t t)
{
    if (D.shift && !D.calibrating && t) D.shift(t);
}

/* The exit is over: open the indirect window (on the thread that pays it). */
static inline void after_exit(void)
{
    if (D.pollute && !D.calibrating) D.pollute();
}

/* epc_driver.c: the fault path the traps call. */
struct epc_region *region_of(uintptr_t addr, uint64_t *index);
int64_t handle_fault(struct epc_region *r, uint64_t i, uintptr_t fault_addr, int tid, int charge_here);

/* epc_trap.c: choose and open the trap (TRAP_*, 0: the first the kernel allows; returns the
 * one in use, or -errno), start its handler or threads once the driver's state is set, stop
 * them (every thread waiting on a trap released), and close it. */
int trap_open(int trap);
int trap_start(int nthreads);
void trap_stop(void);
void trap_close(void);
void trap_forget(void);     /* in a forked child: the threads' lock and condition anew */

#endif

/*
 * cpu.c - the modeled SGX CPU's cost model (eleos_shim/, knows both halves).
 *
 * Budgets, not busy-waits (DESIGN.md section 3).  Each modeled event costs a total number of
 * cycles taken from the sourced constants of eleos_shim/config.py (COSTS):
 *   ocall     EEXIT ... EENTER around the host's handler: the whole OCALL's budget, the host
 *             call itself excluded (the syscall's work is real in both worlds);
 *   epc_fault AEX ... ERESUME: the whole page fault (trap, ELDU, the EWB share, install; a
 *             fault whose direct reclaim EWBs a cluster passes the others' shares on to the
 *             faults that take those frames: cpu_fault_shift);
 *   indirect  after an exit the app's code runs slower by a factor s for a window of W
 *             cycles (FlexSC, OSDI'10): charged at the thread's next event as
 *             (s - 1) x min(W, time since the exit).
 * What the shim really runs on an event's path (the charge itself, a trap's delivery, the
 * fault handler, a pollution touch) is timed with the TSC and counts against the budget; a TSC
 * spin tops up the rest, so an app pays the budget on any machine.  A real part that alone
 * exceeds the budget is an overrun: counted, paid as it was, never hidden.  Every budget is
 * multiplied by the time scale (ELEOS_TIME_SCALE, time dilation).  In account mode nothing is
 * spun: the top-up is counted as if it had been.
 *
 * The charges come through the function pointers of eleos_abi.h, from the enclave's OCALL stub
 * (EEXIT, host call, EENTER, then cpu_pollute: the exit is over), from the EPC driver (AEX and
 * ERESUME around a fault; in the synchronous trap inside the faulting thread's SIGBUS handler)
 * and from SUVM's store growth.  So this file is async-signal-safe: per-thread state is
 * initial-exec TLS (no allocation on first touch), counters are atomics, no locks, no libc.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "eleos_abi.h"

#include "eleos_tsc.h"

static inline uint64_t tsc(void) { return eleos_tsc(); }
#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
static inline void relax(void) { _mm_pause(); }
#else
static inline void relax(void) { __asm__ __volatile__("" ::: "memory"); }
#endif

/* The events, in the order of cpu_events()'s output (eleos_shim/cpu.py EVENTS). */
enum { EV_OCALL, EV_FAULT, EV_INDIRECT, EV_FORK, EV_N };
/* The totals per event, in this order (cpu.py EVENT_FIELDS). */
enum { F_COUNT, F_BUDGET, F_PAID, F_REAL, F_SPUN, F_OVERRUNS, F_N };
#define NSAMPLES 4096                   /* recent events kept for medians (a ring) */

struct cpu_costs {
    uint64_t eenter, eexit, aex, eresume;   /* transitions: counted; EEXIT is the OCALL's first part */
    uint64_t ocall, epc_fault;              /* whole-event budgets */
    uint64_t indirect_window;               /* W */
    double indirect_slowdown;               /* s */
    double time_scale;                      /* every budget x this */
    int spin;                               /* 1: spend; 0: account only */
    int indirect;                           /* 0 off, 1 model, 2 pollute (+ the window) */
    uint64_t pollute_bytes;
    uint64_t fork;                          /* a whole fork (eleos_shim/fork.py) */
};

static struct cpu_costs C = { 3300, 3800, 3800, 3300, 8200, 40000, 14000, 1.5, 1.0, 1, 1, 0,
                              20000000 };
static uint64_t trap_cycles;            /* a trap's delivery and return, outside the handler */
static uint64_t trap_return_cycles;     /* of which the return (after the handler) */
static volatile unsigned char *pollute_buf;
static size_t pollute_len;

static uint64_t n_transitions[4];
static uint64_t n_pollutions;
static uint64_t totals[EV_N][F_N];
static uint64_t samples[EV_N][2][NSAMPLES];     /* [paid, real] */
static uint64_t sample_next[EV_N];

/* A test clock: with it on, time stands still except when the test moves it (account mode). */
static volatile uint64_t fake_now;
static volatile int fake_clock;

static inline uint64_t now_ticks(void) { return fake_clock ? fake_now : tsc(); }

/* Per thread: the open OCALL, the open fault, the open indirect window.  Kept apart so that
 * one event inside another (a fault during a host call) cannot corrupt either. */
struct tstate {
    uint64_t o_real, o_spun, o_mid;
    uint64_t f_start, f_return;         /* f_return: the trap's return still ahead (cycles) */
    int64_t f_shift;                    /* of the open fault's time, done for other faults */
    uint64_t w_start, w_real;
    int o_open, f_open, w_open;
};
static __thread struct tstate T __attribute__((tls_model("initial-exec")));

uint64_t cpu_ticks(void) { return now_ticks(); }

double cpu_measure_tick_hz(double seconds)
{
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC_RAW, &a);
    uint64_t t0 = tsc();
    do { clock_gettime(CLOCK_MONOTONIC_RAW, &b); }
    while ((double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) * 1e-9 < seconds);
    uint64_t t1 = tsc();
    double dt = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) * 1e-9;
    return (double)(t1 - t0) / dt;
}

void cpu_spin_cycles(uint64_t cycles)
{
    uint64_t start = tsc();
    while (tsc() - start < cycles)
        relax();
}

static inline uint64_t scaled(uint64_t cycles) { return (uint64_t)((double)cycles * C.time_scale + 0.5); }

/* Spend `cycles` (spin mode) and return what was spent; account mode: count them only. */
static uint64_t top_up(uint64_t cycles)
{
    if (!cycles || !C.spin || fake_clock) return cycles;
    uint64_t t0 = tsc(), t;
    while ((t = tsc()) - t0 < cycles)
        relax();
    return t - t0;
}

static void record(int e, uint64_t budget, uint64_t real, uint64_t spun)
{
    uint64_t *t = totals[e];
    __atomic_add_fetch(&t[F_COUNT], 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&t[F_BUDGET], budget, __ATOMIC_RELAXED);
    __atomic_add_fetch(&t[F_PAID], real + spun, __ATOMIC_RELAXED);
    __atomic_add_fetch(&t[F_REAL], real, __ATOMIC_RELAXED);
    __atomic_add_fetch(&t[F_SPUN], spun, __ATOMIC_RELAXED);
    if (real > budget) __atomic_add_fetch(&t[F_OVERRUNS], 1, __ATOMIC_RELAXED);
    uint64_t k = __atomic_fetch_add(&sample_next[e], 1, __ATOMIC_RELAXED) % NSAMPLES;
    samples[e][0][k] = real + spun;
    samples[e][1][k] = real;
}

/* What the indirect cost of a window of `dt` cycles of app work is: (s-1) x min(W, dt), W and
 * so the charge scaled with every budget. */
uint64_t cpu_indirect_budget(uint64_t dt)
{
    uint64_t w = scaled(C.indirect_window);
    double s = C.indirect_slowdown > 1.0 ? C.indirect_slowdown - 1.0 : 0.0;
    return (uint64_t)(s * (double)(dt < w ? dt : w) + 0.5);
}

/* The thread's next event began `lead` cycles ago: charge the window the last exit opened,
 * up to then. */
static void settle_window(uint64_t lead)
{
    if (!T.w_open) return;
    T.w_open = 0;
    uint64_t t0 = now_ticks();
    uint64_t end = t0 > lead ? t0 - lead : 0;
    uint64_t budget = cpu_indirect_budget(end > T.w_start ? end - T.w_start : 0);
    uint64_t real = T.w_real;
    uint64_t spun = top_up(budget > real ? budget - real : 0);
    record(EV_INDIRECT, budget, real, spun);
}

static inline void count(int t) { __atomic_add_fetch(&n_transitions[t], 1, __ATOMIC_RELAXED); }

static void ocall_begin(void)
{
    settle_window(0);
    uint64_t t0 = now_ticks();
    uint64_t budget = scaled(C.ocall), part = scaled(C.eexit);
    uint64_t spun = top_up(part < budget ? part : budget);     /* EEXIT, before the host call */
    uint64_t t1 = now_ticks();
    uint64_t el = t1 - t0, spent = C.spin && !fake_clock ? spun : 0;
    T.o_real = el > spent ? el - spent : 0;
    T.o_spun = spun;
    T.o_mid = t1;
    T.o_open = 1;
}

static void ocall_end(void)
{
    if (!T.o_open) return;
    T.o_open = 0;
    uint64_t budget = scaled(C.ocall), so_far = T.o_real + T.o_spun;
    uint64_t spun = top_up(budget > so_far ? budget - so_far : 0);
    /* The few cycles after the spin (reading the clock, these sums) go unaccounted, so that
     * an event below its budget pays exactly it in account mode. */
    record(EV_OCALL, budget, T.o_real, T.o_spun + spun);
}

static void fault_begin(void)
{
    /* The fault began at the access, a trap's delivery before its handler's AEX: the app's
     * work ended there (the delivery is the fault's, in trap_cycles). */
    uint64_t trap = __atomic_load_n(&trap_cycles, __ATOMIC_RELAXED);
    uint64_t back = __atomic_load_n(&trap_return_cycles, __ATOMIC_RELAXED);
    settle_window(trap > back ? trap - back : 0);
    T.f_start = now_ticks();
    T.f_shift = 0;
    T.f_open = 1;
}

/* The EPC driver's direct reclaim EWBs a cluster of victims in one fault (one EBLOCK, one TLB
 * shootdown, as the SGX driver's reclaimer does): the EWB share of the faults that will take
 * those frames.  The fault open on this thread did `ticks` of its time for them (> 0), or had
 * `-ticks` of its own share done earlier by another fault (< 0: it took such a frame).  Its
 * real part is its time minus the first plus the second, so each fault of a cluster pays the
 * budget (the one that reclaimed spends its own budget and the others' share on top; they
 * spin that much less), and an overrun is a fault whose own share exceeded the budget. */
void cpu_fault_shift(int64_t ticks)
{
    if (T.f_open) T.f_shift += ticks;
}

static void fault_end(void)
{
    if (!T.f_open) return;
    T.f_open = 0;
    uint64_t t0 = now_ticks();
    uint64_t budget = scaled(C.epc_fault);
    int64_t own = (int64_t)((t0 - T.f_start) + __atomic_load_n(&trap_cycles, __ATOMIC_RELAXED))
                  - T.f_shift;
    uint64_t real = own > 0 ? (uint64_t)own : 0;
    T.f_shift = 0;
    uint64_t spun = top_up(budget > real ? budget - real : 0);
    record(EV_FAULT, budget, real, spun);
    /* The app resumes only after the trap's return, which the fault has paid for: the window
     * its exit opens starts then. */
    T.f_return = __atomic_load_n(&trap_return_cycles, __ATOMIC_RELAXED);
}

/* A fork of the enclave (eleos_shim/fork.py): one OCALL-like event in the parent, EEXIT ...
 * EENTER around the host's fork, whose budget is C.fork; `real` ticks of it were really run
 * (the checkpoint of the enclave's memory and the fork itself), the rest is spun.  Then the
 * indirect window opens, as after every exit. */
void cpu_pollute(void);

void cpu_charge_fork(uint64_t real)
{
    settle_window(0);
    count(ELEOS_T_EEXIT);
    count(ELEOS_T_EENTER);
    uint64_t budget = scaled(C.fork);
    uint64_t spun = top_up(budget > real ? budget - real : 0);
    record(EV_FORK, budget, real, spun);
    cpu_pollute();
}

void cpu_charge(int t)
{
    if (t < 0 || t > 3) return;
    count(t);
    switch (t) {
    case ELEOS_T_EEXIT:   ocall_begin(); break;
    case ELEOS_T_EENTER:  ocall_end(); break;
    case ELEOS_T_AEX:     fault_begin(); break;
    case ELEOS_T_ERESUME: fault_end(); break;
    }
}

/* An exit has ended on this thread: open its indirect window.  With real pollution
 * (ELEOS_INDIRECT=pollute) first write one byte in every line of the buffer, so the code that
 * follows really misses; that touch is the window's real part, against its budget. */
void cpu_pollute(void)
{
    if (!C.indirect) return;
    uint64_t real = 0;
    if (C.indirect == 2 && pollute_len) {
        __atomic_add_fetch(&n_pollutions, 1, __ATOMIC_RELAXED);
        uint64_t t0 = now_ticks();
        if (C.spin)
            for (size_t i = 0; i < pollute_len; i += 64)
                pollute_buf[i]++;
        real = now_ticks() - t0;
    }
    T.w_start = now_ticks() + T.f_return;
    T.f_return = 0;
    T.w_real = real;
    T.w_open = 1;
}

int cpu_configure(const struct cpu_costs *c)
{
    C = *c;
    if (!(C.time_scale > 0)) C.time_scale = 1.0;
    uint64_t want = C.indirect == 2 ? C.pollute_bytes : 0;
    if (want != pollute_len) {
        free((void *)pollute_buf);
        pollute_buf = NULL;
        pollute_len = 0;
        if (want) {
            pollute_buf = aligned_alloc(4096, (want + 4095) & ~(uint64_t)4095);
            if (!pollute_buf) return -1;
            memset((void *)pollute_buf, 1, want);
            pollute_len = want;
        }
    }
    return 0;
}

/* The EPC driver measured what a trap costs outside its handler (delivery and return): no code
 * runs there to read the TSC, so it is added to each fault's real part; the return part, which
 * comes after the handler opened the fault's indirect window, delays that window's start. */
void cpu_set_trap_cycles(uint64_t cycles) { __atomic_store_n(&trap_cycles, cycles, __ATOMIC_RELAXED); }
void cpu_set_trap_return_cycles(uint64_t cycles)
{
    __atomic_store_n(&trap_return_cycles, cycles, __ATOMIC_RELAXED);
}
uint64_t cpu_trap_cycles(void) { return __atomic_load_n(&trap_cycles, __ATOMIC_RELAXED); }

/* out: eenter, eexit, aex, eresume, paid cycles of all events, pollutions. */
void cpu_counters(uint64_t out[6])
{
    for (int i = 0; i < 4; i++) out[i] = __atomic_load_n(&n_transitions[i], __ATOMIC_RELAXED);
    uint64_t paid = 0;
    for (int e = 0; e < EV_N; e++) paid += __atomic_load_n(&totals[e][F_PAID], __ATOMIC_RELAXED);
    out[4] = paid;
    out[5] = __atomic_load_n(&n_pollutions, __ATOMIC_RELAXED);
}

/* out[e * F_N + f]: the totals of event e. */
void cpu_events(uint64_t out[EV_N * F_N])
{
    for (int e = 0; e < EV_N; e++)
        for (int f = 0; f < F_N; f++)
            out[e * F_N + f] = __atomic_load_n(&totals[e][f], __ATOMIC_RELAXED);
}

/* The last (up to NSAMPLES) events of kind e: paid and real cycles.  Returns how many. */
uint64_t cpu_samples(int e, uint64_t *paid, uint64_t *real, uint64_t n)
{
    if (e < 0 || e >= EV_N) return 0;
    uint64_t have = __atomic_load_n(&sample_next[e], __ATOMIC_RELAXED);
    if (have > NSAMPLES) have = NSAMPLES;
    if (n > have) n = have;
    for (uint64_t k = 0; k < n; k++) {
        paid[k] = samples[e][0][k];
        real[k] = samples[e][1][k];
    }
    return n;
}

void cpu_reset_counters(void)
{
    for (int i = 0; i < 4; i++) __atomic_store_n(&n_transitions[i], 0, __ATOMIC_RELAXED);
    __atomic_store_n(&n_pollutions, 0, __ATOMIC_RELAXED);
    for (int e = 0; e < EV_N; e++) {
        for (int f = 0; f < F_N; f++) __atomic_store_n(&totals[e][f], 0, __ATOMIC_RELAXED);
        __atomic_store_n(&sample_next[e], 0, __ATOMIC_RELAXED);
    }
    T.o_open = T.f_open = T.w_open = 0;
    T.f_return = 0;
    T.f_shift = 0;
}

/* Tests: a clock that moves only when told (account mode), so the arithmetic is exact. */
void cpu_test_clock(int on, uint64_t value)
{
    fake_now = value;
    fake_clock = on;
}

/* The function pointers handed to the other halves by the loader. */
uintptr_t cpu_charge_fn(void) { return (uintptr_t)&cpu_charge; }
uintptr_t cpu_pollute_fn(void) { return (uintptr_t)&cpu_pollute; }
uintptr_t cpu_fault_shift_fn(void) { return (uintptr_t)&cpu_fault_shift; }

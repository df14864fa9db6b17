/*
 * epc_domain.h - one EPC shared by the enclave processes of a domain (untrusted/, host).
 * Called by the SGX driver model (epc_driver.c) and, through cffi, by untrusted/epc_domain.py;
 * see epc_domain.c for the design.
 */
#ifndef EPC_DOMAIN_H
#define EPC_DOMAIN_H

#include <stdint.h>

#define EPC_DOM_MAX_MEMBERS 32
#define EPC_DOM_NAME_MAX 64
#define EPC_DOM_SGX 1               /* a member paged by the SGX driver model */
#define EPC_DOM_SUVM 2              /* a member whose SUVM page cache is a balloon */

/* Errors of epc_domain_join (negative errno otherwise). */
#define EPC_DOM_ELIMIT -1000        /* the domain exists with another size */
#define EPC_DOM_EFULL -1001         /* every member slot is taken */
#define EPC_DOM_ELAYOUT -1002       /* the domain file is not ours (another version) */
#define EPC_DOM_EFLOOR -1003        /* the domain cannot hold the member's floor */

/* The columns of epc_domain_snapshot(): the domain's, then EPC_DOM_MCOLS per member. */
#define EPC_DOM_HCOLS 13            /* limit used low high members deaths dead_pages stamp kicks waits
                                       fallbacks manager_pid manager_changes */
#define EPC_DOM_MCOLS 12            /* slot pid kind resident target floor cap loads evictions demand oldest joined_ns */

typedef struct epc_domain epc_domain_t;

epc_domain_t *epc_domain_join(const char *name, uint64_t limit_pages, int kind, uint64_t floor_pages,
                              uint64_t cap_pages, int *err);
void epc_domain_leave(epc_domain_t *h);
int epc_domain_slot(epc_domain_t *h);

/* Frames: take up to n (returns how many were granted; on 0, *seq is the freed sequence to wait
 * on), give n back, wait for frames to be freed (bounded). */
uint64_t epc_domain_take(epc_domain_t *h, uint64_t n, uint32_t *seq);
void epc_domain_put(epc_domain_t *h, uint64_t n);
int epc_domain_wait_freed(epc_domain_t *h, uint32_t seq, uint32_t timeout_ms);
uint32_t epc_domain_freed_seq(epc_domain_t *h);

/* The global reclaimer's order: a stamp per page joining the active list; each member publishes
 * the stamp of its oldest page; the member holding the domain's oldest reclaims next. */
uint64_t epc_domain_stamp(epc_domain_t *h);
void epc_domain_set_oldest(epc_domain_t *h, uint64_t stamp);
int epc_domain_reclaim_turn(epc_domain_t *h);
uint32_t epc_domain_reclaim_seq(epc_domain_t *h);
void epc_domain_wait_reclaim(epc_domain_t *h, uint32_t seq, uint32_t timeout_ms);
void epc_domain_kick(epc_domain_t *h);
int epc_domain_sweep(epc_domain_t *h);

/* Balloons: the manager's target for a member, the member's reported demand. */
int epc_domain_set_target(epc_domain_t *h, int slot, uint64_t target_pages);
uint64_t epc_domain_target(epc_domain_t *h, uint32_t *seq);
int epc_domain_wait_target(epc_domain_t *h, uint32_t seq, uint32_t timeout_ms);
void epc_domain_publish(epc_domain_t *h, uint64_t loads, uint64_t evictions, uint64_t demand);
int epc_domain_manage(epc_domain_t *h, uint32_t timeout_ms);
void epc_domain_unmanage(epc_domain_t *h);

/* The state at a glance: fills hdr[EPC_DOM_HCOLS] and up to max rows of members; returns the
 * number of members, or a negative errno. */
int epc_domain_snapshot(epc_domain_t *h, uint64_t *hdr, uint64_t *members, int max);
epc_domain_t *epc_domain_open(const char *name, int *err);
void epc_domain_close(epc_domain_t *h);
int epc_domain_unlink(const char *name);

#endif

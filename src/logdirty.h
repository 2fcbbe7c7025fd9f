/*
 * logdirty.h - dirty logging's own declarations (logdirty.c).  The core
 * reaches it only through mv__logdirty_mechanism (builtin.c).
 */
#ifndef MV_LOGDIRTY_H
#define MV_LOGDIRTY_H

#include "internal.h"


/* Pick the mechanism for a new domain (AUTO resolves to the fastest the
 * kernel has) and the userfaultfd features and register modes it needs. */
int mv__logdirty_resolve(struct mv_host *host, enum mv_logdirty_mode requested,
                         enum mv_logdirty_mode *mode, uint64_t *uffd_features,
                         uint64_t *register_modes);
int mv__logdirty_create(struct mv_domain *d, enum mv_logdirty_mode mode);
void mv__logdirty_destroy(struct mv_domain *d);
/* Bytes of the dirty log's tables (domain lock held). */
uint64_t mv__logdirty_metadata(struct mv_domain *d);
/* memvisor changed [gfn, gfn + n) (lock held): report it if logging. */
void mv__logdirty_mark(struct mv_domain *d, uint64_t gfn, uint64_t n);
/* Whether logging has split the RAM into many VMAs (mprotect mode), so that
 * one userfaultfd call cannot span a 2 MiB block (lock held). */
bool mv__logdirty_splits_ram(struct mv_domain *d);
/* A synchronous write-protect fault at gfn (lock held, domain running). */
void mv__logdirty_wp_fault(struct mv_domain *d, uint64_t gfn);

#endif /* MV_LOGDIRTY_H */

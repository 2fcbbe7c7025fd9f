/*
 * pod.h - populate-on-demand's own declarations (pod.c).  The core reaches
 * it only through mv__pod_mechanism (builtin.c).
 */
#ifndef MV_POD_H
#define MV_POD_H

#include "internal.h"


/* Pages the fault path's emergency sweep examines at most, and how many zero
 * pages it tries to reclaim before stopping. */
#define MV_SWEEP_SCAN_LIMIT 16384u
#define MV_SWEEP_RECLAIM_GOAL 1024u
/* Faults for which a futile sweep suppresses sweeps made only to keep a
 * 2 MiB block whole. */
#define MV_SWEEP_BACKOFF 256u

/* Zero sweep (lock held): examine up to `max_scan` populated pages from the
 * cursor and reclaim all-zero ones until `want` were reclaimed. */
void mv__pod_sweep(struct mv_domain *d, uint64_t max_scan, uint64_t want,
                   struct mv_sweep_result *result);

#endif /* MV_POD_H */

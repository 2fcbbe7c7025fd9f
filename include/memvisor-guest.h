/*
 * memvisor-guest.h - public interface of libmemvisor-guest, memvisor's
 * built-in guests: workloads on threads that act as a domain's vCPUs, the
 * content oracle that checks what they wrote, and the guest's balloon
 * driver.
 *
 * They are test scaffolding for memvisor itself (its tests, daemon and
 * benchmarks link them), not part of libmemvisor: an embedder brings its own
 * vCPUs and hands them mv_domain_ram.  The library is built as a static
 * archive, libmemvisor-guest.a, and is not installed; it links the static
 * libmemvisor (it reaches the domains' internals).
 *
 * A program that calls any function declared here links the guests, and
 * they register with libmemvisor before main() runs (no call to make);
 * from then on every domain gets vCPUs for these calls to drive.  The
 * conventions are memvisor.h's: 0 or a count on success, a negative errno on
 * failure, mv_last_error() for the sentence.  Every call fails with
 * -EOPNOTSUPP when the guests could not register (a host was created before
 * they could, which only another constructor can do, or libmemvisor's
 * mechanism table was full).
 */
#ifndef MEMVISOR_GUEST_H
#define MEMVISOR_GUEST_H

#include "memvisor.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Workloads run on threads that act as the domain's vCPUs and touch guest RAM
 * with ordinary loads and stores.  They keep a content oracle: for every gfn
 * they know what they last wrote, so any lost or foreign byte is found.
 */
enum mv_workload_kind {
    MV_WORKLOAD_SCRUB,   /* zero all of maxmem once, as OSes do at boot */
    MV_WORKLOAD_RANDOM,  /* write random pages at a set rate */
    MV_WORKLOAD_VERIFY,  /* read every page through guest RAM, check oracle */
    /* tmem clients (working_set_pages: the guest's "RAM" for them; max_pages:
     * accesses).  Each verifies every page it gets back, counting any that
     * differs (or, for swap, a persistent page lost) as a mismatch, and ends
     * with its pages flushed and its RAM zeroed (the oracle still holds). */
    MV_WORKLOAD_CLEANCACHE, /* page cache: evicted pages into an ephemeral
                               pool, got back before "reading the disk" */
    MV_WORKLOAD_FRONTSWAP,  /* swap: evicted pages into a persistent pool */
};

struct mv_workload_config {
    enum mv_workload_kind kind;
    uint64_t pages_per_second; /* RANDOM: dirty rate, total; 0 = unlimited */
    uint64_t duration_ms;      /* RANDOM: stop after; 0 = until stopped */
    uint64_t max_pages;        /* RANDOM: stop after this many writes; 0 = no cap */
    uint64_t working_set_pages;/* RANDOM: gfns [0, n) are written; 0 = all */
    uint64_t seed;            /* | MV_SEED_COMPRESSIBLE: pages compress */
    uint64_t reserved[8];     /* zero; room to grow without breaking the ABI */
};
/* A seed with this bit writes pages made of runs of equal words, which
 * compress (about 20:1 with lz4) as real guest memory does; without it the
 * pages do not compress at all. */
#define MV_SEED_COMPRESSIBLE (1ull << 63)

MV_API void mv_workload_config_init(struct mv_workload_config *config,
                                    enum mv_workload_kind kind);

/*
 * Start a workload on all of the domain's vCPUs.  -EBUSY when one is already
 * running, -EPERM on a crashed domain.  The vCPUs leave a crashed domain
 * through a SIGBUS handler this library installs here, at the first start
 * (libmemvisor itself installs none); if the application has replaced it
 * since, it is installed again, chaining to the application's for SIGBUS on
 * any other thread.
 */
MV_API int mv_workload_start(mv_host *host, uint32_t domid,
                             const struct mv_workload_config *config);

struct mv_workload_status {
    int running;              /* vCPUs still running */
    uint64_t pages_done;      /* pages written or verified so far */
    uint64_t mismatches;      /* VERIFY: pages that differed from the oracle */
    uint64_t first_bad_gfn;   /* VERIFY: first mismatch, UINT64_MAX if none */
    int crashed;              /* a vCPU took SIGBUS (the domain crashed) */
    uint64_t elapsed_ns;
    uint64_t reserved[8];     /* zero; room to grow without breaking the ABI */
};

/*
 * Wait for the workload to finish, up to `timeout_ms` (0 = just look).
 * Returns 0 when finished, -ETIMEDOUT when still running; `status` may be
 * NULL.
 */
MV_API int mv_workload_wait(mv_host *host, uint32_t domid, unsigned timeout_ms,
                            struct mv_workload_status *status);

/* Ask the workload's vCPUs to stop and wait for them. */
MV_API int mv_workload_stop(mv_host *host, uint32_t domid);

/*
 * The content oracle, checked from the host side without touching guest RAM
 * (no faults, no population): every page must hold what the built-in
 * workloads last wrote, zero where nothing was written.  Returns the number
 * of mismatching pages (0 is the only acceptable answer) or a negative errno;
 * `first_bad_gfn` (may be NULL) receives the first mismatch.  Call it while no
 * workload runs (-EBUSY otherwise).
 */
MV_API int64_t mv_oracle_verify(mv_host *host, uint32_t domid, uint64_t *first_bad_gfn);

/*
 * The built-in guest's balloon driver: inflate or deflate the balloon so the
 * guest holds `guest_bytes` of usable memory.  It picks pages the guest is
 * not using (skipping the pages vCPUs are writing), gives them back with
 * decrease_reservation (or takes them back with increase_reservation) and
 * tells the workloads never to touch a ballooned page.  Returns the number of
 * pages moved.
 */
MV_API int64_t mv_guest_balloon(mv_host *host, uint32_t domid, uint64_t guest_bytes);

#ifdef __cplusplus
}
#endif
#endif /* MEMVISOR_GUEST_H */

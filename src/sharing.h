/*
 * sharing.h - what copy-on-write sharing (src/share/) offers the rest of the
 * library's own code and its tests: its state's life cycle, trap reasons,
 * settling, the scanner, and test knobs.  The core reaches it only through
 * mv__share_mechanism (src/share/mechanism.c, listed in builtin.c).
 */
#ifndef MV_SHARING_H
#define MV_SHARING_H

#include "internal.h"


struct mv__share;

int mv__share_init(struct mv_host *host);
void mv__share_fini(struct mv_host *host);
/* A new domain: its copy-on-write userfaultfd and sharing state. */
int mv__share_domain_init(struct mv_domain *d);
/* A domain going away (unreachable): drop every shared mapping it holds. */
void mv__share_domain_destroy(struct mv_domain *d);
/* A write to a shared gfn (lock held, domain running): give the domain its
 * private copy.  0, -ENOMEM (the caller applies the PoD policy) or -EFAULT
 * (the domain had to be crashed). */
int mv__share_cow_fault(struct mv_domain *d, uint64_t gfn);
/* The frame a shared gfn maps (lock held).  MV_COW_KERNEL: settle the gfn
 * first (mv__share_settle), or its bytes may be a copy's. */
uint64_t mv__share_mfn(struct mv_domain *d, uint64_t gfn);
/* Reasons an MV_COW_KERNEL domain's shared gfns trap instead of being
 * copied by the kernel. */
enum mv__cow_trap {
    MV__COW_TRAP_PAUSED = 1,    /* paused: writes are held */
    MV__COW_TRAP_LOGDIRTY = 2,  /* dirty log on: breaks mark pages dirty */
    MV__COW_TRAP_MEMORY = 4,    /* a copy found no page: the PoD policy rules */
};
/* Set or clear a trap reason (lock held).  Setting one settles the whole
 * domain too, so that no copy is left unaccounted.  0 or -EFAULT (crashed);
 * nothing for an MV_COW_TRAP domain. */
int mv__share_cow_trap(struct mv_domain *d, enum mv__cow_trap reason, bool on);
/* Settle the kernel copies of [gfn, gfn + n) (lock held): copies settled,
 * -ENOMEM (some wait for memory) or -EFAULT (crashed). */
int64_t mv__share_settle(struct mv_domain *d, uint64_t gfn, uint64_t n);
/* MV_COW_KERNEL: the domain's populated pages or target changed; trap when
 * its target no longer has room for a copy of every shared page (lock held). */
void mv__share_check_room(struct mv_domain *d);
/* Settle every running MV_COW_KERNEL domain (no lock held).  0, or -ENOMEM
 * when the domains could not be listed. */
int mv__share_settle_all(struct mv_host *host);
/* Sharing figures of a domain for mv_domain_info (lock held). */
void mv__share_domain_info(struct mv_domain *d, struct mv_domain_info *out);
/* Bytes of sharing's host-wide tables: frame records, the content index. */
uint64_t mv__share_host_metadata(struct mv_host *host);
/* Drop a shared gfn's mapping and give it `type` (lock held). */
int mv__share_release(struct mv_domain *d, uint64_t gfn, enum mv__p2m_type type);
/* Whether gfn may be shared or scanned (lock held). */
bool mv__share_excluded(struct mv_domain *d, uint64_t gfn);
/* The scanner's per-gfn hashes (0: none; lock held), with the bitmap of
 * those known to hold still (mv__share_known); NULL when no memory. */
uint64_t *mv__share_hashes(struct mv_domain *d);
/* Whether gfn's hash is known to be its content's: read after the last
 * protecting scan of its block, and neither written by the guest (the scan
 * says) nor changed by the hypervisor since. */
bool mv__share_known(struct mv_domain *d, uint64_t gfn);
void mv__share_set_known(struct mv_domain *d, uint64_t gfn, bool known);
/* The hypervisor changed [gfn, gfn + n): their hashes are no longer known. */
void mv__share_forget(struct mv_domain *d, uint64_t gfn, uint64_t n);
/* Whether an indexed frame has hashes[i] (found[i]), for each i that
 * want[i] marks: probes, bytes are compared later. */
void mv__share_index_probe_many(struct mv_host *host, const uint64_t *hashes, const bool *want,
                                size_t n, bool *found);
/* Frames held for sharing (charged to the host budget, to no domain). */
uint64_t mv__share_frames(struct mv_host *host);
/* The scanner's limit on mappings (0: vm.max_map_count less a reserve). */
void mv__share_set_max_vmas(struct mv_host *host, unsigned max_vmas);
/* Tests: the mappings past which CoW breaks stop splitting runs (0: the
 * default, vm.max_map_count less a slack). */
void mv__share_set_break_limit(struct mv_host *host, uint64_t mappings);

/* What mv__share_apply does with each gfn. */
enum mv__share_action {
    MV_ACT_SKIP = 0,       /* leave it alone */
    MV_ACT_MATCH,          /* share with an equal indexed frame, if any */
    MV_ACT_MATCH_INSERT,   /* ... and insert it in the index when none */
    MV_ACT_INSERT,         /* a frame of its own, indexed (nominate) */
};

struct mv__apply_result {
    uint64_t shared;       /* gfns now mapping a frame they matched */
    uint64_t inserted;     /* gfns now in frames of their own, indexed */
    uint64_t zero;         /* zero pages returned to PoD */
    uint64_t skipped;
};

/*
 * Share [gfn, gfn + n) (n <= MV_BLOCK_PAGES; lock held, domain running):
 * unmap the gfns to act on, read them, compare, and map runs of gfns that
 * go to consecutive frames with one remap each; put back the rest.
 */
int mv__share_apply(struct mv_domain *d, uint64_t gfn, uint64_t n,
                    const uint8_t *actions, enum mv_share_outcome *outcomes,
                    struct mv__apply_result *result);
/*
 * Write-protect [gfn, gfn + n) of d (n <= MV_BLOCK_PAGES, lock held) with
 * one protecting scan (mv__ram_protect_scan), where d allows it (apply.c,
 * protects), and say in state[] which pages are mapped, marked and written
 * since the last such scan.  The scanner protects a block at once before
 * reading its chunks: the walk's cost is per call as much as per page (29
 * against 59 ns a page, 512 pages a call against 64).  False when d is not
 * protected, or the scan failed (which turns d's protection off for good,
 * with one warning).
 */
bool mv__share_protect(struct mv_domain *d, uint64_t gfn, uint64_t n, uint8_t *state);
/*
 * Where a scan reads the pages of [gfn, gfn + n) that `take` marks (n <=
 * MV_BLOCK_PAGES, lock held): at[i] is page i's bytes.  With `state` (what
 * mv__share_protect said of these pages; NULL: not protected): a page not
 * written since its last read whose hash is known is not read at all
 * (unchanged[i], at[i] NULL); in a domain read where the guest maps its
 * pages (apply.c, reads_guest), the other pages mapped there are read in
 * its own mapping (in_guest[i] set: to be read under a guard,
 * mv__ram_guard).  The rest are read as the host reads (mv_share_read): in
 * place, or copied out of the machine memfd into this thread's block
 * buffer (which mv__share_apply fills again), or, if that fails (counted
 * in read_fallbacks; mv_last_error says why), in place.
 */
void mv__share_locate(struct mv_domain *d, uint64_t gfn, uint64_t n, const uint8_t *take,
                      const uint8_t *state, const uint8_t **at, uint8_t *in_guest,
                      uint8_t *unchanged);
/* A read through the guest's mapping met a page missing there (or a
 * system call failed): counted in guest_read_fallbacks. */
void mv__share_guest_read_failed(struct mv_domain *d);
/*
 * The gfns of [gfn, gfn + n) marked in zero[] were read all zero in the
 * guest's mapping after the protecting scan of mv__share_protect (lock held,
 * n <= MV_BLOCK_PAGES): unmap them, ask which were written since, free the
 * others back to PoD and unmark those.  The others are left to
 * mv__share_apply.  Returns the pages freed.
 */
uint64_t mv__share_reclaim_zero_in_guest(struct mv_domain *d, uint64_t gfn, uint64_t n,
                                         uint8_t *zero);


struct mv__scanner;

int mv__scanner_init(struct mv_host *host);
void mv__scanner_fini(struct mv_host *host);
/* Scanner figures for mv_share_stats. */
void mv__scanner_stats(struct mv_host *host, struct mv_share_stats *out);

#endif /* MV_SHARING_H */

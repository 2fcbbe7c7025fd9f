/*
 * logdirty.c - dirty logging: "write-protect all memory, then learn which
 * pages were written", three ways, one bitmap.
 *
 *   mechanism   protect all               a guest write              harvest (each fetch)
 *   wp-async    UFFDIO_WRITEPROTECT once  resolved in the kernel,     PAGEMAP_SCAN reads the
 *               (page-table markers)      PTE remembers it            written PTEs and
 *                                                                     re-protects them in
 *                                                                     one call
 *   wp-sync     the same                  trap -> fault thread sets   take `writable`,
 *                                         the bits, unprotects page   re-protect each run,
 *                                                                     then report it
 *   mprotect    mprotect(PROT_READ)       SIGSEGV -> handler          the same, with
 *                                         mprotects RW, sets the bits mprotect
 *
 * The live bitmap lives in a memfd (so another process can map it) and is
 * the one place every producer reports to: the trap handlers above, the
 * harvests, and memvisor's own changes to guest memory (mv__logdirty_mark:
 * populate, zero reclaim, balloon).  Producers set bits with atomic OR; a
 * consumer takes a word with an atomic exchange, so a fetch never stops a
 * producer.  Consumers are of two kinds: mv_logdirty_clean/peek, and code
 * that exchanges words out of the live bitmap itself, after a
 * mv_logdirty_harvest.  mv_logdirty_clean on wp-async uses the caller's
 * bitmap as a second buffer: it takes the live words into it, then the
 * kernel's scan writes into it directly (clean_written), so the scan's
 * answer never goes through the shared bitmap.
 *
 * Which pages can be written without a trap is therefore not the bitmap's
 * business: a consumer may take a bit whenever it likes.  Each mode keeps
 * that record apart -- wp-async in the PTEs (the kernel's "written"), the
 * synchronous modes in `writable`, a private bitmap:
 *
 *   writable  >=  { gfn : the guest may write gfn without a trap }
 *
 * Every producer that may leave a page writable sets its `writable` bit
 * (the handlers after unprotecting, mark for memvisor's own changes, a
 * failed disable for all of RAM), and only a harvest clears it: it takes
 * the words, re-protects those pages and only then ORs them into the live
 * bitmap.  A write before the re-protect is covered by that report, a
 * write after it traps and is reported anew; whoever took the page's bit
 * before, its next write is reported.  The price: a page whose bit was
 * taken while it was writable is reported once more by the next harvest,
 * as it may have been written unseen in between (over-reporting, never a
 * lost write).
 *
 * Why a fetch loses no write: it harvests first, then exchanges the words
 * out; a write after the harvest re-protected its page traps (or, on
 * wp-async, is remembered by the PTE) and is reported by this fetch or the
 * next.  On wp-async the kernel reads and re-protects each PTE atomically
 * under the page-table lock; there a clean takes the words first and
 * scans after, into the caller's bitmap: a bit set after its word was
 * taken stays in the live bitmap, a write after the scan stays in its PTE,
 * and a failed scan puts everything it took back into the live bitmap.
 *
 * The mprotect handler runs in signal context: it finds its domain in a
 * fixed table of lock-free slots and makes only async-signal-safe calls
 * (errno is preserved).  When per-page mprotect fails (vm.max_map_count),
 * it unprotects the 2 MiB block, then the whole RAM, and reports all of it
 * dirty.  A domain holds its slot while any of its pages may still be
 * PROT_READ -- from enable until a disable (or a failed enable's undo) has
 * made all of RAM writable, else until destroy -- so a guest store never
 * reaches the default SIGSEGV action.
 *
 * Failures: a failed enable undoes what it did and leaves the log off; a
 * failed fetch keeps every page it took reported (in the live bitmap) and
 * in `writable`; a failed disable leaves the log on (see
 * mv_logdirty_disable).  No failure leaves a page protected with no one to
 * let its writes through.
 *
 * Locking: everything but the signal handler and bitmap consumers runs
 * under the domain lock (the wp-sync fault handler too); `taken` is the
 * harvest's scratch, under that lock.  slots_lock serializes slot claims
 * and releases (and is taken before os.c's signal lock).
 */
#include "logdirty.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

struct mv__logdirty {
    enum mv_logdirty_mode mode;
    bool enabled;
    int memfd;
    _Atomic uint64_t *bitmap;
    size_t words;
    size_t map_bytes;
    /* wp-sync, mprotect: pages a trap or memvisor may have left writable
     * since the last harvest (a superset), and room to take them. */
    _Atomic uint64_t *writable;
    uint64_t *taken;
    int slot;                 /* mprotect: index in the handler's table; held
                                 while any page may still be PROT_READ */
    struct mv_logdirty_stats stats;
    _Atomic uint64_t faults;
};

const char *mv_logdirty_mode_name(enum mv_logdirty_mode mode)
{
    switch (mode) {
    case MV_LOGDIRTY_AUTO:
        return "auto";
    case MV_LOGDIRTY_WP_ASYNC:
        return "wp-async";
    case MV_LOGDIRTY_WP_SYNC:
        return "wp-sync";
    case MV_LOGDIRTY_MPROTECT:
        return "mprotect";
    }
    return "unknown";
}

/* ------------------------------------------------------------------------ */
/* bits                                                                     */

static void set_bits(_Atomic uint64_t *bm, uint64_t gfn, uint64_t n)
{
    while (n) {
        uint64_t bit = gfn % 64, take = MV_MIN(n, 64 - bit);
        uint64_t mask = take == 64 ? ~0ull : ((1ull << take) - 1) << bit;

        atomic_fetch_or_explicit(&bm[gfn / 64], mask, memory_order_relaxed);
        gfn += take;
        n -= take;
    }
}

/* OR [gfn, gfn + n) into a private bitmap; returns how many of those bits
 * were clear. */
static uint64_t or_bits(uint64_t *bm, uint64_t gfn, uint64_t n)
{
    uint64_t added = 0;

    while (n) {
        uint64_t bit = gfn % 64, take = MV_MIN(n, 64 - bit);
        uint64_t mask = take == 64 ? ~0ull : ((1ull << take) - 1) << bit;

        added += (uint64_t)__builtin_popcountll(mask & ~bm[gfn / 64]);
        bm[gfn / 64] |= mask;
        gfn += take;
        n -= take;
    }
    return added;
}

/*
 * Call fn(d, first, count) over the set bits of `words`, one call per 2 MiB
 * block that has any: re-protecting a page that is still protected changes
 * nothing, while every protect call costs a TLB shootdown, which on a
 * virtual machine is dear (docs/performance.md).  So runs in the same block are merged
 * with the clean pages between them.
 */
static int for_each_block_span(struct mv_domain *d, const uint64_t *words, size_t count,
                               int (*fn)(struct mv_domain *, uint64_t, uint64_t))
{
    uint64_t span_start = UINT64_MAX, span_end = 0;
    int rc = 0;

    for (size_t w = 0; w < count && rc == 0; w++) {
        uint64_t x = words[w];

        while (x && rc == 0) {
            uint64_t gfn = w * 64 + (unsigned)__builtin_ctzll(x);

            x &= x - 1;
            if (span_start != UINT64_MAX &&
                gfn / MV_BLOCK_PAGES != (span_end - 1) / MV_BLOCK_PAGES) {
                rc = fn(d, span_start, span_end - span_start);
                span_start = UINT64_MAX;
            }
            if (span_start == UINT64_MAX)
                span_start = gfn;
            span_end = gfn + 1;
        }
    }
    if (rc == 0 && span_start != UINT64_MAX)
        rc = fn(d, span_start, span_end - span_start);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* mprotect + SIGSEGV                                                        */

#define MV_MPROTECT_SLOTS 256

struct mprotect_slot {
    _Atomic uintptr_t start;
    _Atomic uintptr_t end;
    _Atomic(_Atomic uint64_t *) bitmap;
    _Atomic(_Atomic uint64_t *) writable;
    _Atomic(_Atomic uint64_t *) faults;
};

static struct mprotect_slot slots[MV_MPROTECT_SLOTS];
static atomic_int handlers_running;
static pthread_mutex_t slots_lock = PTHREAD_MUTEX_INITIALIZER;

/*
 * Make [page] writable, then record it as writable and dirty in the domain
 * whose RAM is [start, end); on failure widen (signal context).  Recorded
 * after the mprotect: a harvest that ran in between and missed the page
 * finds it at the next one, and every write before that is covered by the
 * dirty bit set here or by that harvest.
 */
static void unprotect_in_handler(const struct mprotect_slot *s, uintptr_t start,
                                 uintptr_t end, uintptr_t addr)
{
    uintptr_t page = addr & ~(uintptr_t)(MV_PAGE_SIZE - 1);
    uintptr_t block = addr & ~(((uintptr_t)MV_BLOCK_PAGES << MV_PAGE_SHIFT) - 1);
    uintptr_t block_end = MV_MIN(block + ((uintptr_t)MV_BLOCK_PAGES << MV_PAGE_SHIFT), end);
    uintptr_t first = page, last = page + MV_PAGE_SIZE;

    if (block < start)
        block = start;
    if (mv__os_mprotect((void *)page, MV_PAGE_SIZE, PROT_READ | PROT_WRITE) == 0) {
        /* the page alone */
    } else if (mv__os_mprotect((void *)block, block_end - block,
                               PROT_READ | PROT_WRITE) == 0) {
        first = block;
        last = block_end;
    } else {
        /* Unprotecting all of it merges its mappings: no limit to hit. */
        mv__os_mprotect((void *)start, end - start, PROT_READ | PROT_WRITE);
        first = start;
        last = end;
    }
    set_bits(atomic_load(&s->writable), (first - start) >> MV_PAGE_SHIFT,
             (last - first) >> MV_PAGE_SHIFT);
    set_bits(atomic_load(&s->bitmap), (first - start) >> MV_PAGE_SHIFT,
             (last - first) >> MV_PAGE_SHIFT);
    atomic_fetch_add_explicit(atomic_load(&s->faults), 1, memory_order_relaxed);
}

static void on_sigsegv(int sig, siginfo_t *info, void *context)
{
    uintptr_t addr = (uintptr_t)info->si_addr;
    int saved_errno = errno;

    /*
     * Counted before reading any slot, and each slot read once, start
     * before end: a claim stores start first and a release clears end
     * first, so a non-zero start followed by an end past addr are the
     * values of one claim.  A release waits for this handler to finish,
     * and no slot is claimed again before that.
     */
    atomic_fetch_add(&handlers_running, 1);
    for (int i = 0; i < MV_MPROTECT_SLOTS; i++) {
        struct mprotect_slot *s = &slots[i];
        uintptr_t start = atomic_load(&s->start);
        uintptr_t end = start ? atomic_load(&s->end) : 0;

        if (start && addr >= start && addr < end && info->si_code == SEGV_ACCERR) {
            mv__os_signal_context(true);
            unprotect_in_handler(s, start, end, addr);
            mv__os_signal_context(false);
            atomic_fetch_sub(&handlers_running, 1);
            errno = saved_errno;
            return;
        }
    }
    atomic_fetch_sub(&handlers_running, 1);
    mv__os_signal_chain(sig, info, context);
    errno = saved_errno;
}

/* Install the handler and claim a slot, unless the domain holds one still
 * (a disable that could not unprotect all of RAM). */
static int slot_claim(struct mv_domain *d, struct mv__logdirty *l)
{
    int found = -1, rc;

    pthread_mutex_lock(&slots_lock);
    /* Again at every claim: the application may have replaced it since. */
    rc = mv__os_signal_install(SIGSEGV, on_sigsegv, SA_NODEFER);
    if (rc < 0) {
        pthread_mutex_unlock(&slots_lock);
        return mv__fail(rc, "cannot install the SIGSEGV handler: %s", mv_strerror(rc));
    }
    if (l->slot >= 0) {
        pthread_mutex_unlock(&slots_lock);
        return 0;
    }
    for (int i = 0; i < MV_MPROTECT_SLOTS && found < 0; i++) {
        if (atomic_load(&slots[i].end) == 0) {
            atomic_store(&slots[i].bitmap, l->bitmap);
            atomic_store(&slots[i].writable, l->writable);
            atomic_store(&slots[i].faults, &l->faults);
            atomic_store(&slots[i].start, (uintptr_t)d->ram);
            atomic_store(&slots[i].end, (uintptr_t)d->ram + (d->maxmem_pages << MV_PAGE_SHIFT));
            found = i;
        }
    }
    pthread_mutex_unlock(&slots_lock);
    if (found < 0)
        return mv__fail(-ENOSPC, "more than %d domains log dirty pages with "
                        "mprotect at once", MV_MPROTECT_SLOTS);
    l->slot = found;
    return 0;
}

/* Release a slot and wait until no handler can still be using it; until
 * then no one claims a slot (a handler may hold this one's old values). */
static void slot_release(struct mv__logdirty *l)
{
    pthread_mutex_lock(&slots_lock);
    atomic_store(&slots[l->slot].end, 0);
    atomic_store(&slots[l->slot].start, 0);
    while (atomic_load(&handlers_running))
        sched_yield();
    pthread_mutex_unlock(&slots_lock);
    l->slot = -1;
}

/* ------------------------------------------------------------------------ */
/* protecting runs                                                          */

static int protect_run(struct mv_domain *d, uint64_t gfn, uint64_t n)
{
    int rc;

    if (d->logdirty->mode == MV_LOGDIRTY_MPROTECT) {
        rc = mv__os_mprotect(mv__gfn_addr(d, gfn), n << MV_PAGE_SHIFT, PROT_READ);
        if (rc == 0)
            return 0;
    } else {
        rc = mv__os_uffd_writeprotect(d->uffd, mv__gfn_addr(d, gfn),
                                      n << MV_PAGE_SHIFT, true);
        if (rc == 0)
            return 0;
    }
    return mv__fail(rc, "cannot write-protect gfn %#llx+%llu: %s",
                    (unsigned long long)gfn, (unsigned long long)n, mv_strerror(rc));
}

static int protect_all(struct mv_domain *d, bool protect)
{
    size_t length = d->maxmem_pages << MV_PAGE_SHIFT;
    int rc;

    if (d->logdirty->mode == MV_LOGDIRTY_MPROTECT) {
        rc = mv__os_mprotect(d->ram, length, protect ? PROT_READ : PROT_READ | PROT_WRITE);
        return rc < 0 ? mv__fail(rc, "mprotect of guest RAM failed: %s", mv_strerror(rc)) : 0;
    }
    if (protect || d->shared == 0) {
        rc = mv__os_uffd_writeprotect(d->uffd, d->ram, length, protect);
        return rc < 0 ? mv__fail(rc, "UFFDIO_WRITEPROTECT of guest RAM failed: %s",
                                 mv_strerror(rc)) : 0;
    }
    /* Unprotecting through one userfaultfd clears the write protection of
     * every page in the range, also of pages registered with another: skip
     * the shared frames, or a write would land in them. */
    for (uint64_t g = 0; g < d->maxmem_pages;) {
        uint64_t end = g;

        if (d->p2m[g] == MV_P2M_SHARED) {
            g++;
            continue;
        }
        while (end < d->maxmem_pages && d->p2m[end] != MV_P2M_SHARED)
            end++;
        rc = mv__os_uffd_writeprotect(d->uffd, mv__gfn_addr(d, g),
                                      (end - g) << MV_PAGE_SHIFT, false);
        if (rc < 0)
            return mv__fail(rc, "UFFDIO_WRITEPROTECT of gfn %#llx+%llu failed: %s",
                            (unsigned long long)g, (unsigned long long)(end - g),
                            mv_strerror(rc));
        g = end;
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* life cycle                                                               */

int mv__logdirty_resolve(struct mv_host *h, enum mv_logdirty_mode requested,
                         enum mv_logdirty_mode *mode, uint64_t *uffd_features,
                         uint64_t *register_modes)
{
    const struct mv_kernel_features *f = &h->features;
    bool async = f->wp_async && f->pagemap_scan && f->wp_shmem;

    switch (requested) {
    case MV_LOGDIRTY_AUTO:
        *mode = async ? MV_LOGDIRTY_WP_ASYNC
              : f->wp_shmem ? MV_LOGDIRTY_WP_SYNC : MV_LOGDIRTY_MPROTECT;
        break;
    case MV_LOGDIRTY_WP_ASYNC:
        if (!async)
            return mv__fail(-EOPNOTSUPP, "wp-async dirty logging needs "
                            "UFFD_FEATURE_WP_ASYNC and PAGEMAP_SCAN (Linux 6.7); "
                            "kernel is %s", f->release);
        *mode = requested;
        break;
    case MV_LOGDIRTY_WP_SYNC:
        if (!f->wp_shmem)
            return mv__fail(-EOPNOTSUPP, "wp-sync dirty logging needs "
                            "userfaultfd write-protect on shmem (Linux 5.19); "
                            "kernel is %s", f->release);
        *mode = requested;
        break;
    case MV_LOGDIRTY_MPROTECT:
        *mode = requested;
        break;
    default:
        return mv__fail(-EINVAL, "unknown dirty-log mode %d", (int)requested);
    }
    *uffd_features = 0;
    *register_modes = 0;
    if (*mode == MV_LOGDIRTY_WP_ASYNC || *mode == MV_LOGDIRTY_WP_SYNC) {
        *uffd_features = UFFD_FEATURE_WP_HUGETLBFS_SHMEM;
        *register_modes = UFFDIO_REGISTER_MODE_WP;
    }
    if (*mode == MV_LOGDIRTY_WP_ASYNC)
        *uffd_features |= UFFD_FEATURE_WP_ASYNC;
    return 0;
}

int mv__logdirty_create(struct mv_domain *d, enum mv_logdirty_mode mode)
{
    struct mv__logdirty *l = mv__calloc(1, sizeof(*l));
    void *map;

    if (!l)
        return mv__fail(-ENOMEM, "no memory for the dirty log");
    l->mode = mode;
    l->slot = -1;
    l->words = mv_logdirty_words(d->maxmem_pages);
    l->map_bytes = (l->words * sizeof(uint64_t) + MV_PAGE_SIZE - 1) & ~(size_t)(MV_PAGE_SIZE - 1);
    l->memfd = mv__os_memfd("memvisor-dirty-bitmap", l->map_bytes);
    d->logdirty = l;
    if (l->memfd < 0)
        return mv__fail(l->memfd, "cannot create the dirty bitmap memfd");
    map = mv__os_map_shared(NULL, l->map_bytes, l->memfd, 0, PROT_READ | PROT_WRITE);
    if (!map)
        return mv__fail(-errno, "cannot map the dirty bitmap: %s", mv_strerror(-errno));
    l->bitmap = map;
    if (mode != MV_LOGDIRTY_WP_ASYNC) {
        l->writable = mv__calloc(l->words, sizeof(*l->writable));
        l->taken = mv__calloc(l->words, sizeof(*l->taken));
        if (!l->writable || !l->taken)
            return mv__fail(-ENOMEM, "no memory for the dirty log");
    }
    l->stats.mode = mode;
    return 0;
}

uint64_t mv__logdirty_metadata(struct mv_domain *d)
{
    const struct mv__logdirty *l = d->logdirty;

    if (!l)
        return 0;
    return sizeof(*l) + l->map_bytes +
           (l->writable ? l->words * sizeof(*l->writable) : 0) +
           (l->taken ? l->words * sizeof(*l->taken) : 0);
}

void mv__logdirty_destroy(struct mv_domain *d)
{
    struct mv__logdirty *l = d->logdirty;

    if (!l)
        return;
    if (l->slot >= 0)
        slot_release(l);
    if (l->bitmap)
        mv__os_unmap((void *)l->bitmap, l->map_bytes);
    free((void *)l->writable);
    free(l->taken);
    if (l->memfd >= 0)
        close(l->memfd);
    free(l);
    d->logdirty = NULL;
}

/* The change may have left the pages writable (a populate without write
 * protection): the next harvest protects them again. */
void mv__logdirty_mark(struct mv_domain *d, uint64_t gfn, uint64_t n)
{
    struct mv__logdirty *l = d->logdirty;

    if (!l || !l->enabled)
        return;
    if (l->writable)
        set_bits(l->writable, gfn, n);
    set_bits(l->bitmap, gfn, n);
}

/* Also after a failed undo: the domain holds its slot while any page may be
 * PROT_READ, and those pages are mappings of their own. */
bool mv__logdirty_splits_ram(struct mv_domain *d)
{
    struct mv__logdirty *l = d->logdirty;

    return l && l->mode == MV_LOGDIRTY_MPROTECT && (l->enabled || l->slot >= 0);
}

void mv__logdirty_wp_fault(struct mv_domain *d, uint64_t gfn)
{
    struct mv__logdirty *l = d->logdirty;
    int rc;

    /*
     * The message may be older than the gfn's state: sharing, a zero sweep
     * or the balloon may have remapped it since it was read.  Unprotecting
     * through this userfaultfd would clear the protection a shared frame's
     * mapping took through the copy-on-write one, and the guest's write
     * would land in an anonymous copy no one tracks.  Only a private page
     * is unprotected; otherwise the writer retries and meets the gfn's
     * current mapping, whose own fault marks the page dirty.
     */
    if (d->p2m[gfn] != MV_P2M_RAM) {
        mv__fault_wake(d, false, gfn, 1);
        return;
    }
    if (l->writable)
        set_bits(l->writable, gfn, 1);
    set_bits(l->bitmap, gfn, 1);
    atomic_fetch_add_explicit(&l->faults, 1, memory_order_relaxed);
    /* The unprotect wakes the writer.  Tried again, as a wake is (the
     * kernel answers EAGAIN while the mappings change); a writer whose
     * page cannot be unprotected would wait forever, so the domain
     * crashes after that. */
    for (unsigned i = 0; i < MV_WAKE_TRIES; i++) {
        rc = mv__os_uffd_writeprotect(d->uffd, mv__gfn_addr(d, gfn), MV_PAGE_SIZE, false);
        if (rc == 0)
            return;
    }
    mv__domain_crash(d, "cannot unprotect gfn %#llx after a write fault: %s",
                     (unsigned long long)gfn, mv_strerror(rc));
}

/* ------------------------------------------------------------------------ */
/* public interface                                                         */

/* Look the domain up, lock it and check the dirty log is usable. */
static int begin(mv_host *host, uint32_t domid, bool must_be_enabled,
                 struct mv_domain **out)
{
    int rc;

    mv__clear_error();
    rc = mv__domain_lock_live(host, domid, out);
    if (rc == 0 && must_be_enabled && !(*out)->logdirty->enabled) {
        mv__domain_unlock_put(*out);
        rc = mv__fail(-EINVAL, "domain %u is not logging dirty pages", domid);
    }
    return rc;
}

static void end(struct mv_domain *d)
{
    mv__domain_unlock_put(d);
}

/*
 * Undo a failed enable (lock held): make RAM writable again.  When that
 * fails too, some pages may stay protected: a write to one still traps and
 * is let through (wp-sync by the fault thread, mprotect by the handler,
 * whose slot the domain keeps until RAM is known writable), so the domain
 * runs on, paying a trap per such page.  The first failure's message stays.
 */
/*
 * The write-protect modes register RAM for write protection at their first
 * enable, not when the domain is made: a range registered so is unprotected
 * page by page when it leaves the userfaultfd (the kernel walks every
 * page-table entry), which a clone's source does with all its populated
 * pages (share/clone.c).  Domain lock held.
 */
static int register_for_log(struct mv_domain *d)
{
    if (d->logdirty->mode == MV_LOGDIRTY_MPROTECT)
        return 0;
    return mv__domain_register_modes(d, UFFDIO_REGISTER_MODE_WP);
}

static void enable_undo(struct mv_domain *d, int rc)
{
    struct mv__logdirty *l = d->logdirty;
    char message[256];

    snprintf(message, sizeof(message), "%s", mv_last_error());
    if (protect_all(d, false) < 0)
        mv__log(d->host, MV_LOG_WARN, "domain %u: after a failed dirty-log enable: %s",
                d->domid, mv_last_error());
    else if (l->slot >= 0)
        slot_release(l);
    if (mv__domain_writes_watched(d, false) < 0)
        mv__log(d->host, MV_LOG_WARN, "domain %u: after a failed dirty-log enable: %s",
                d->domid, mv_last_error());
    mv__fail(rc, "%s", message);
}

int mv_logdirty_enable(mv_host *host, uint32_t domid)
{
    struct mv_domain *d;
    struct mv__logdirty *l;
    uint64_t start;
    int rc = begin(host, domid, false, &d);

    if (rc < 0)
        return rc;
    l = d->logdirty;
    if (l->enabled) {
        end(d);
        return mv__fail(-EALREADY, "domain %u is already logging dirty pages", domid);
    }
    start = mv__now_ns();
    rc = register_for_log(d);
    if (rc == 0 && l->mode == MV_LOGDIRTY_MPROTECT)
        rc = slot_claim(d, l);
    if (rc == 0) {
        for (size_t i = 0; i < l->words; i++) {
            atomic_store_explicit(&l->bitmap[i], 0, memory_order_relaxed);
            if (l->writable)
                atomic_store_explicit(&l->writable[i], 0, memory_order_relaxed);
        }
        /* Writes to shared pages trap while the log is on: each break
         * marks its page. */
        rc = mv__domain_writes_watched(d, true);
        if (rc == 0)
            rc = protect_all(d, true);
        if (rc < 0)
            enable_undo(d, rc);
    }
    if (rc == 0) {
        memset(&l->stats, 0, sizeof(l->stats));
        atomic_store(&l->faults, 0);
        l->stats.mode = l->mode;
        l->stats.protect_ns = mv__now_ns() - start;
        l->enabled = true;
    }
    end(d);
    return rc;
}

/*
 * When RAM cannot be made writable again, part of it may be: the log stays
 * on and every page counts as left writable, so the next harvest protects
 * and reports all of them (over-reporting, never a lost write), and the
 * mprotect handler keeps its slot, so no write to a page still protected
 * reaches the default SIGSEGV action.
 */
int mv_logdirty_disable(mv_host *host, uint32_t domid)
{
    struct mv_domain *d;
    struct mv__logdirty *l;
    int rc = begin(host, domid, true, &d);

    if (rc < 0)
        return rc;
    l = d->logdirty;
    rc = protect_all(d, false);
    if (rc < 0) {
        if (l->writable)
            set_bits(l->writable, 0, d->maxmem_pages);
        end(d);
        return rc;
    }
    l->enabled = false;
    if (l->slot >= 0)
        slot_release(l);
    /* RAM is writable and the log off whatever this returns; shared pages
     * may go on trapping. */
    rc = mv__domain_writes_watched(d, false);
    end(d);
    return rc;
}

/*
 * wp-async: move written PTEs into a bitmap, re-protecting them (lock
 * held): the live bitmap (atomic ORs) when `into` is NULL, else the
 * private bitmap `into` (plain ORs, mv_logdirty_clean's fast path).
 * Returns pages moved, or into `into` the pages whose bits were clear.
 *
 * One protecting PAGEMAP_SCAN over all of RAM: the kernel reads and
 * re-protects each written PTE atomically under its page-table lock and
 * walks clean memory without any work in userspace; a full output vector
 * stops the walk at a page it has not protected, and the next call goes on
 * from there.  The kernel flushes the TLB once per page table it changed,
 * over that table's whole rest.  The alternative, a read-only scan to find
 * the written regions and then a protecting call per 2 MiB block over just
 * their span (precise flushes), costs a second walk of all of RAM and a
 * system call per block, and measured slower on both hosts we have run on
 * (docs/performance.md).  Mappings of shared frames are skipped: they
 * belong to the synchronous copy-on-write userfaultfd and are never
 * written in place.
 */
static int64_t harvest_written(struct mv_domain *d, uint64_t *into)
{
    struct page_region regions[256];
    uintptr_t base = (uintptr_t)d->ram, end = base + (d->maxmem_pages << MV_PAGE_SHIFT);
    struct pm_scan_arg arg = {
        .size = sizeof(arg),
        .flags = PM_SCAN_WP_MATCHING,
        .start = base,
        .end = end,
        .vec = (uintptr_t)regions,
        .vec_len = MV_ARRAY_SIZE(regions),
        .category_mask = PAGE_IS_WRITTEN,
        .return_mask = PAGE_IS_WRITTEN,
    };
    int64_t pages = 0;

    for (;;) {
        long n = mv__os_pagemap_scan(mv__ram_pagemap_fd(d), &arg);

        if (n < 0)
            return mv__fail((int)n, "PAGEMAP_SCAN failed: %s", mv_strerror((int)n));
        for (long i = 0; i < n; i++) {
            uint64_t gfn = (regions[i].start - base) >> MV_PAGE_SHIFT;
            uint64_t count = (regions[i].end - regions[i].start) >> MV_PAGE_SHIFT;

            if (into)
                pages += (int64_t)or_bits(into, gfn, count);
            else {
                set_bits(d->logdirty->bitmap, gfn, count);
                pages += (int64_t)count;
            }
        }
        if (arg.walk_end == 0 || arg.walk_end >= end)
            return pages;
        arg.start = arg.walk_end;
    }
}

/*
 * wp-sync, mprotect: move the pages left writable into the bitmap,
 * protecting them again (lock held).  Returns pages moved.  Protected
 * first, reported after: a write before the protect is covered by the
 * report, a write after it traps.  Pages that could not be protected are
 * reported and stay in `writable`, for the next harvest to try again.
 */
static int64_t harvest_writable(struct mv_domain *d)
{
    struct mv__logdirty *l = d->logdirty;
    int64_t pages = 0;
    int rc;

    for (size_t i = 0; i < l->words; i++) {
        l->taken[i] = atomic_load_explicit(&l->writable[i], memory_order_relaxed)
                    ? atomic_exchange(&l->writable[i], 0) : 0;
        pages += __builtin_popcountll(l->taken[i]);
    }
    rc = for_each_block_span(d, l->taken, l->words, protect_run);
    for (size_t i = 0; i < l->words; i++) {
        if (!l->taken[i])
            continue;
        atomic_fetch_or(&l->bitmap[i], l->taken[i]);
        if (rc < 0)
            atomic_fetch_or(&l->writable[i], l->taken[i]);
    }
    return rc < 0 ? rc : pages;
}

static int64_t harvest_locked(struct mv_domain *d)
{
    return d->logdirty->mode == MV_LOGDIRTY_WP_ASYNC ? harvest_written(d, NULL)
                                                      : harvest_writable(d);
}

int64_t mv_logdirty_harvest(mv_host *host, uint32_t domid)
{
    struct mv_domain *d;
    int64_t rc = begin(host, domid, true, &d);

    if (rc < 0)
        return rc;
    rc = harvest_locked(d);
    end(d);
    return rc;
}

static void fill_zero(struct mv_domain *d, const uint64_t *dirty, uint64_t *zero,
                      size_t words)
{
    for (size_t w = 0; w < words; w++) {
        uint64_t x = dirty[w], z = 0;

        while (x) {
            unsigned b = (unsigned)__builtin_ctzll(x);

            if (d->p2m[w * 64 + b] == MV_P2M_POD ||
                d->p2m[w * 64 + b] == MV_P2M_BALLOONED)
                z |= 1ull << b;
            x &= x - 1;
        }
        zero[w] = z;
    }
}

/*
 * Copy the live bitmap into `dirty`, exchanging each word that is not zero
 * out of it when `clear`.  A word read as zero is not exchanged: a bit set
 * after the read stays in the live bitmap, like one set after an exchange,
 * and is fetched next time.  Most words are zero, and a locked exchange
 * costs ten times a read (as does popcount without a POPCNT instruction,
 * a library call in a baseline x86-64 build).  Returns the bits taken.
 */
static uint64_t take_words(struct mv__logdirty *l, uint64_t *dirty, size_t words, bool clear)
{
    uint64_t count = 0;

    for (size_t i = 0; i < words; i++) {
        uint64_t w = atomic_load_explicit(&l->bitmap[i], memory_order_acquire);

        if (w && clear)
            w = atomic_exchange_explicit(&l->bitmap[i], 0, memory_order_acq_rel);
        dirty[i] = w;
        if (w)
            count += (uint64_t)__builtin_popcountll(w);
    }
    return count;
}

/*
 * mv_logdirty_clean on wp-async (lock held): the caller's bitmap is the
 * second buffer.  The live words are taken first, then the protecting scan
 * ORs the written PTEs straight into `dirty`, so the kernel's answer never
 * passes through the live bitmap (no atomic per region, no second exchange
 * per word).  A page written after the scan re-protected it is remembered
 * by its PTE, a bit set in the live bitmap after its word was taken stays
 * there: both are fetched next time.  When the scan fails, every bit taken
 * (from the live bitmap or from PTEs the scan re-protected) is ORed back
 * into the live bitmap, where the next fetch or consumer finds it.
 */
static int64_t clean_written(struct mv_domain *d, uint64_t *dirty, size_t words)
{
    struct mv__logdirty *l = d->logdirty;
    uint64_t taken = take_words(l, dirty, words, true);
    int64_t added = harvest_written(d, dirty);

    if (added >= 0)
        return (int64_t)taken + added;
    for (size_t i = 0; i < words; i++)
        if (dirty[i])
            atomic_fetch_or_explicit(&l->bitmap[i], dirty[i], memory_order_release);
    return added;
}

static int64_t fetch(mv_host *host, uint32_t domid, uint64_t *dirty,
                     uint64_t *zero, size_t words, bool clear)
{
    struct mv_domain *d;
    struct mv__logdirty *l;
    uint64_t start = mv__now_ns(), count = 0;
    int64_t rc = begin(host, domid, true, &d);

    if (rc < 0)
        return rc;
    l = d->logdirty;
    if (!dirty || words != l->words) {
        end(d);
        return mv__fail(-EINVAL, "dirty bitmap has %zu words; domain %u needs %zu",
                        dirty ? words : 0, domid, l->words);
    }
    if (clear && l->mode == MV_LOGDIRTY_WP_ASYNC) {
        rc = clean_written(d, dirty, words);
        count = rc >= 0 ? (uint64_t)rc : 0;
    } else {
        /* Every page the guest can write without a trap is protected
         * again and in the live bitmap after this, whoever took its bit
         * before. */
        rc = harvest_locked(d);
        if (rc >= 0)
            count = take_words(l, dirty, words, clear);
    }
    if (rc >= 0 && zero)
        fill_zero(d, dirty, zero, words);
    if (rc >= 0 && clear) {
        l->stats.rounds++;
        l->stats.last_dirty = count;
        l->stats.total_dirty += count;
        l->stats.last_fetch_ns = mv__now_ns() - start;
        l->stats.total_fetch_ns += l->stats.last_fetch_ns;
    }
    end(d);
    return rc < 0 ? rc : (int64_t)count;
}

int64_t mv_logdirty_peek(mv_host *host, uint32_t domid, uint64_t *dirty,
                         uint64_t *zero, size_t words)
{
    return fetch(host, domid, dirty, zero, words, false);
}

int64_t mv_logdirty_clean(mv_host *host, uint32_t domid, uint64_t *dirty,
                          uint64_t *zero, size_t words)
{
    return fetch(host, domid, dirty, zero, words, true);
}

int mv_logdirty_stats(mv_host *host, uint32_t domid, struct mv_logdirty_stats *out)
{
    struct mv_domain *d = mv__domain_get(host, domid);

    if (!d)
        return -ESRCH;
    mv__clear_error();
    mv__mutex_lock(&d->lock);
    *out = d->logdirty->stats;
    out->enabled = d->logdirty->enabled;
    out->mode = d->logdirty->mode;
    out->faults = atomic_load(&d->logdirty->faults);
    mv__mutex_unlock(&d->lock);
    mv__domain_put(d);
    return 0;
}

int mv_logdirty_bitmap(mv_host *host, uint32_t domid, uint64_t **words, size_t *count)
{
    struct mv_domain *d = mv__domain_get(host, domid);

    if (!d)
        return -ESRCH;
    mv__clear_error();
    *words = (uint64_t *)d->logdirty->bitmap;
    *count = d->logdirty->words;
    mv__domain_put(d);
    return 0;
}

int mv_logdirty_bitmap_fd(mv_host *host, uint32_t domid, int *fd)
{
    struct mv_domain *d = mv__domain_get(host, domid);
    int rc = 0;

    if (!d)
        return -ESRCH;
    mv__clear_error();
    *fd = fcntl(d->logdirty->memfd, F_DUPFD_CLOEXEC, 0);
    if (*fd < 0)
        rc = mv__fail(-errno, "cannot duplicate the bitmap descriptor");
    mv__domain_put(d);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* what dirty logging plugs into the core                                   */

/* A new domain: pick its mode, which decides its userfaultfd's features
 * and register modes, and set up its log. */
static int logdirty_traps(struct mv_domain *d, uint64_t *uffd_features,
                          uint64_t *register_modes)
{
    enum mv_logdirty_mode mode = MV_LOGDIRTY_AUTO;
    uint64_t features = 0, modes = 0;
    int rc = mv__logdirty_resolve(d->host, d->config.logdirty_mode, &mode, &features,
                                  &modes);

    if (rc < 0)
        return rc;
    /* The modes are registered at the first enable (register_for_log). */
    (void)register_modes;
    (void)modes;
    *uffd_features |= features;
    return mv__logdirty_create(d, mode);
}

static void logdirty_info(struct mv_domain *d, struct mv_domain_info *out)
{
    out->metadata_bytes += mv__logdirty_metadata(d);
}

const struct mv__mechanism mv__logdirty_mechanism = {
    .name = "dirty logging",
    .domain_traps = logdirty_traps,
    .domain_destroy = mv__logdirty_destroy,
    .domain_info = logdirty_info,
    .pages_changed = mv__logdirty_mark,
    .needs_small_pages = mv__logdirty_splits_ram,
    .write_fault = mv__logdirty_wp_fault,
};

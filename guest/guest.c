/*
 * guest.c - libmemvisor-guest, the built-in guests: vCPU threads, workloads,
 * the content oracle and the guest's balloon driver (memvisor-guest.h).
 *
 * Test scaffolding, kept out of libmemvisor: the product library installs
 * no SIGBUS handler and names no guest.  The guests plug into the core as a
 * mechanism like any other (struct mv__mechanism, at the end of this file),
 * registered with mv__mechanism_register; the core keeps their per-domain
 * state in d->ext[guest_slot] without knowing its type.
 *
 * Registration must happen before the first host exists, and is done by a
 * constructor here (register_guests) rather than by a call every program
 * would have to remember.  A constructor only runs if the linker takes its
 * object out of the static archive, which it does only for an object that
 * defines a symbol the program uses: so this library is ONE object file --
 * every public entry point (mv_workload_*, mv_oracle_verify,
 * mv_guest_balloon) lives in it with the constructor, and any program that
 * calls one of them links the constructor too.  A program calling none has
 * no use for the guests and gets none.  Keep it so: splitting this file
 * would let a program link an entry point without the registration.  (Were
 * the registration to fail anyway -- a host created by an earlier
 * constructor, a full table -- the entry points return -EOPNOTSUPP rather
 * than touch a domain without guest state.)
 *
 * A built-in guest stands in for an operating system: its vCPUs are threads
 * that touch guest RAM with ordinary loads and stores, exactly as a VMM's
 * vCPUs reach memory through KVM, so every fault they take goes through the
 * real fault service.
 *
 * Content oracle: oracle[gfn] is the version last written to gfn (0 = zero
 * page).  A page of version v > 0 holds a pattern derived from (seed, gfn, v)
 * that is never all zero, so any lost write, stale page or foreign byte is
 * found by comparing.  Each gfn has one writer at a time: the random writer
 * gives vCPU i the gfns with gfn % vcpus == i, the scrubber gives each vCPU a
 * contiguous slice, and only one workload runs at a time.
 *
 * Ballooning while vCPUs run: ballooned[gfn] is the guest's own record of
 * pages it gave away, and each vCPU publishes the gfn it is writing in
 * current_gfn.  A vCPU claims a page by storing current_gfn and then
 * checking ballooned[gfn]; the balloon driver claims it by setting
 * ballooned[gfn] and then checking every current_gfn.  With sequentially
 * consistent atomics at least one of the two sees the other and backs off,
 * so a page is never written after it was given away.
 *
 * vCPU threads are registered with the library (mv_vcpu_enter), so that
 * their faults are resolved in the thread itself where the domain allows
 * it (those raise SIGBUS, which the library's handler resolves).  A vCPU
 * whose domain crashes takes SIGBUS on its next access; the library's
 * handler (installed when a workload starts, unless it is in place
 * already, chaining to the previous one for other threads) calls our hook,
 * which jumps back to the vCPU's entry point, which ends the thread.
 *
 * Locking: guest->lock (MV_LOCK_GUEST) guards running/parked/active and
 * serializes the balloon driver; it may be held while taking the domain
 * lock, never the other way round.  vCPUs hold no lock while touching RAM.
 */
#include "internal.h"
#include "memvisor-guest.h"

#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MV_NO_GFN UINT64_MAX
#define MV_PARK_POLL_NS 1000000ull

/* The tables of a tmem client workload (run_tmem_client): kept here, so
 * that a vCPU whose domain crashes under it, and which leaves the workload
 * by its crash jump, still frees them. */
struct tmem_tables {
    uint32_t *slot_item, *item_slot, *version;
    uint8_t *in_tmem;
};

struct mv__vcpu {
    struct mv__guest *guest;
    unsigned index;
    pthread_t thread;
    _Atomic uint64_t current_gfn;
    sigjmp_buf crash_jump;
    struct tmem_tables tmem;
};

static void tmem_tables_free(struct tmem_tables *t)
{
    free(t->slot_item);
    free(t->item_slot);
    free(t->version);
    free(t->in_tmem);
    memset(t, 0, sizeof(*t));
}

struct mv__guest {
    struct mv_domain *domain;
    struct mv__mutex lock;
    pthread_cond_t cond;
    struct mv_workload_config workload;
    unsigned started;           /* threads created for the workload */
    unsigned running;           /* threads still running it */
    unsigned parked;
    atomic_bool stop;
    atomic_bool park;
    atomic_bool crashed;
    _Atomic uint64_t pages_done;
    _Atomic uint64_t mismatches;
    _Atomic uint64_t first_bad_gfn;
    uint64_t start_ns;
    uint64_t end_ns;
    _Atomic uint32_t *oracle;
    _Atomic uint8_t *ballooned;
    uint64_t ballooned_count;
    int tmem_pool[2];           /* cleancache (ephemeral), frontswap
                                   (persistent); -1 until first used */
    unsigned vcpu_count;
    struct mv__vcpu vcpus[];
};

/* Our index in the core's mechanism table, and so our slot in d->ext;
 * -1 until registered (never, if the registration failed). */
static int guest_slot = -1;

static struct mv__guest *guest_of(struct mv_domain *d)
{
    return guest_slot < 0 ? NULL : d->ext[guest_slot];
}

/* Why the registration failed: -EBUSY (a host existed already), -ENOSPC
 * (the core's mechanism table was full). */
static int register_error;

/* What every entry point answers when the guests never registered. */
static int not_registered(void)
{
    return mv__fail(-EOPNOTSUPP, "the built-in guests are not registered with "
                    "libmemvisor: %s", register_error == -ENOSPC
                    ? "its mechanism table is full"
                    : "a host was created before libmemvisor-guest was initialised");
}

/* ------------------------------------------------------------------------ */
/* SIGBUS: a crashed domain's vCPU leaves its workload                       */

static _Thread_local struct mv__vcpu *current_vcpu;

/* Called by the library's SIGBUS handler for a SIGBUS it did not resolve
 * (a crashed domain's RAM), before it passes the signal on. */
static void on_sigbus(int sig, siginfo_t *info, void *context)
{
    struct mv__vcpu *v = current_vcpu;

    (void)sig;
    (void)info;
    (void)context;
    if (v)
        siglongjmp(v->crash_jump, 1);
}

/* Checked at every workload start: the application may have replaced the
 * handler since (it is then chained to, as whatever it replaced was). */
static int install_sigbus_handler(void)
{
    int rc = mv__vcpu_sigbus_install(on_sigbus);

    return rc < 0 ? mv__fail(rc, "cannot install the SIGBUS handler: %s",
                             mv_strerror(rc)) : 0;
}

/* ------------------------------------------------------------------------ */
/* content oracle                                                           */

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* Word i of the page (gfn, version); version 0 is the zero page.  Adjacent
 * words differ by an odd constant, so a version > 0 page is never zero. */
static inline uint64_t pattern_base(uint64_t seed, uint64_t gfn, uint32_t version)
{
    return mix64(seed ^ mix64(gfn * 0x100000001b3ull + version));
}

#define MV_PATTERN_STEP 0x9e3779b97f4a7c15ull

/*
 * Guest RAM is touched by vCPUs with plain loads and stores; everything else
 * that reaches it does so in the kernel (reads with pread, remaps, page
 * moves), ordered by userfaultfd wakes that ThreadSanitizer cannot see.  The
 * functions that touch guest RAM are therefore not instrumented; races on
 * guest bytes are the content oracle's to find.
 */
#if defined(__SANITIZE_THREAD__)
#define MV_GUEST_ACCESS __attribute__((no_sanitize("thread"), noinline))
#else
#define MV_GUEST_ACCESS
#endif

MV_GUEST_ACCESS static void zero_page(uint8_t *page)
{
    uint64_t *w = (uint64_t *)page;

    for (unsigned i = 0; i < MV_PAGE_SIZE / 8; i++)
        w[i] = 0;
}

/* Word i of a pattern steps every 2^shift words: 0 for the seeds of
 * incompressible pages, MV_PATTERN_RUN_SHIFT for MV_SEED_COMPRESSIBLE ones
 * (runs of equal words, which compress the way guest memory does). */
#define MV_PATTERN_RUN_SHIFT 5
static inline unsigned pattern_shift(uint64_t seed)
{
    return (seed & MV_SEED_COMPRESSIBLE) ? MV_PATTERN_RUN_SHIFT : 0;
}

MV_GUEST_ACCESS static void write_pattern(uint8_t *page, uint64_t seed, uint64_t gfn, uint32_t version)
{
    uint64_t *w = (uint64_t *)page, x = pattern_base(seed, gfn, version);
    unsigned shift = pattern_shift(seed);

    for (unsigned i = 0; i < MV_PAGE_SIZE / 8; i++)
        w[i] = x + (i >> shift) * MV_PATTERN_STEP;
}

MV_GUEST_ACCESS static bool page_matches(const uint8_t *page, uint64_t seed, uint64_t gfn,
                         uint32_t version)
{
    const uint64_t *w = (const uint64_t *)page;
    uint64_t x = version ? pattern_base(seed, gfn, version) : 0;
    uint64_t step = version ? MV_PATTERN_STEP : 0;
    unsigned shift = pattern_shift(seed);

    for (unsigned i = 0; i < MV_PAGE_SIZE / 8; i++)
        if (w[i] != x + (i >> shift) * step)
            return false;
    return true;
}

static void note_mismatch(struct mv__guest *g, uint64_t gfn)
{
    uint64_t first = atomic_load(&g->first_bad_gfn);

    atomic_fetch_add(&g->mismatches, 1);
    while (gfn < first && !atomic_compare_exchange_weak(&g->first_bad_gfn, &first, gfn))
        ;
}

/* ------------------------------------------------------------------------ */
/* vCPUs                                                                    */

/* A page boundary: stop or park here if asked.  False means stop. */
static bool vcpu_checkpoint(struct mv__vcpu *v)
{
    struct mv__guest *g = v->guest;

    if (mv_unlikely(atomic_load_explicit(&g->park, memory_order_relaxed))) {
        mv__mutex_lock(&g->lock);
        g->parked++;
        pthread_cond_broadcast(&g->cond);
        while (atomic_load(&g->park) && !atomic_load(&g->stop))
            mv__cond_wait(&g->cond, &g->lock, 0);
        g->parked--;
        mv__mutex_unlock(&g->lock);
    }
    return !atomic_load_explicit(&g->stop, memory_order_relaxed);
}

static bool vcpu_claim(struct mv__vcpu *v, uint64_t gfn)
{
    atomic_store(&v->current_gfn, gfn);
    if (atomic_load(&v->guest->ballooned[gfn])) {
        atomic_store(&v->current_gfn, MV_NO_GFN);
        return false;
    }
    return true;
}

static void vcpu_release(struct mv__vcpu *v)
{
    atomic_store(&v->current_gfn, MV_NO_GFN);
    atomic_fetch_add_explicit(&v->guest->pages_done, 1, memory_order_relaxed);
}

static void run_scrub(struct mv__vcpu *v)
{
    struct mv__guest *g = v->guest;
    struct mv_domain *d = g->domain;
    uint64_t n = d->maxmem_pages, k = g->vcpu_count;
    uint64_t first = n * v->index / k, end = n * (v->index + 1) / k;

    for (uint64_t gfn = first; gfn < end && vcpu_checkpoint(v); gfn++) {
        if (!vcpu_claim(v, gfn))
            continue;
        zero_page(mv__gfn_addr(d, gfn));
        atomic_store_explicit(&g->oracle[gfn], 0, memory_order_relaxed);
        vcpu_release(v);
    }
}

static void pace(uint64_t start_ns, uint64_t done, uint64_t per_second)
{
    uint64_t due = start_ns + done * 1000000000ull / per_second, now = mv__now_ns();

    if (due > now + 100000) {
        struct timespec ts = { .tv_sec = (time_t)((due - now) / 1000000000ull),
                               .tv_nsec = (long)((due - now) % 1000000000ull) };
        nanosleep(&ts, NULL);
    }
}

static void run_random(struct mv__vcpu *v)
{
    struct mv__guest *g = v->guest;
    struct mv_domain *d = g->domain;
    const struct mv_workload_config *c = &g->workload;
    uint64_t k = g->vcpu_count, i = v->index;
    uint64_t ws = c->working_set_pages ? c->working_set_pages : d->maxmem_pages;
    uint64_t owned = ws > i ? (ws - i + k - 1) / k : 0;
    uint64_t rate = c->pages_per_second ? MV_MAX(c->pages_per_second / k, 1) : 0;
    uint64_t cap = c->max_pages ? c->max_pages / k + (i < c->max_pages % k) : UINT64_MAX;
    uint64_t deadline = c->duration_ms ? g->start_ns + c->duration_ms * 1000000ull : 0;
    uint64_t rng = mix64(c->seed ^ (i + 1) * 0x2545f4914f6cdd1dull), done = 0;

    while (owned && done < cap && vcpu_checkpoint(v)) {
        uint64_t gfn;
        uint32_t version;

        if (deadline && (done & 15) == 0 && mv__now_ns() >= deadline)
            break;
        rng = mix64(rng);
        gfn = (rng % owned) * k + i;
        if (!vcpu_claim(v, gfn))
            continue;
        version = atomic_load_explicit(&g->oracle[gfn], memory_order_relaxed) + 1;
        if (version == 0)
            version = 1;
        write_pattern(mv__gfn_addr(d, gfn), c->seed, gfn, version);
        atomic_store_explicit(&g->oracle[gfn], version, memory_order_relaxed);
        vcpu_release(v);
        done++;
        if (rate)
            pace(g->start_ns, done, rate);
    }
}

static void run_verify(struct mv__vcpu *v)
{
    struct mv__guest *g = v->guest;
    struct mv_domain *d = g->domain;

    for (uint64_t gfn = v->index; gfn < d->maxmem_pages && vcpu_checkpoint(v);
         gfn += g->vcpu_count) {
        if (!vcpu_claim(v, gfn))
            continue;
        if (!page_matches(mv__gfn_addr(d, gfn), g->workload.seed, gfn,
                          atomic_load_explicit(&g->oracle[gfn], memory_order_relaxed)))
            note_mismatch(g, gfn);
        vcpu_release(v);
    }
}

/* ------------------------------------------------------------------------ */
/* tmem clients: a page cache over cleancache, swap over frontswap           */

/*
 * The guest's tmem clients, as Linux's cleancache and frontswap drivers use
 * Xen's tmem.  Each vCPU owns the gfns g % vcpus == i of the working set
 * (its "RAM"); pages move between them and tmem through a bounce buffer,
 * as a hypercall copies from and to guest memory (tmem copies under its
 * lock, and a guest page may need that lock to be paged in).
 *
 * Page cache: a file of 4x as many blocks as the vCPU has slots; a block
 * read that misses the cache evicts a slot (FIFO) into the ephemeral pool,
 * then tries the pool before "reading the disk" (the block's pattern).  A
 * page got from the pool must be the block's.
 *
 * Swap: 2x as many virtual pages as slots, each written with a version; an
 * evicted page is put into the persistent pool (or "written to the swap
 * disk" when the put fails) and got back on its next touch.  A page whose
 * put succeeded must come back, and with its last version.
 *
 * Both end by flushing their objects and zeroing their slots, so that the
 * content oracle (which knows nothing of them) still holds.
 */
#define TMEM_CACHE_TAG (1ull << 62)
#define TMEM_SWAP_TAG (1ull << 61)
#define TMEM_NONE UINT32_MAX

MV_GUEST_ACCESS static void copy_from_guest(uint8_t *buf, const uint8_t *page)
{
    memcpy(buf, page, MV_PAGE_SIZE);
}

MV_GUEST_ACCESS static void copy_to_guest(uint8_t *page, const uint8_t *buf)
{
    memcpy(page, buf, MV_PAGE_SIZE);
}

static bool buffer_matches(const uint8_t *buf, uint64_t seed, uint64_t id, uint32_t version)
{
    uint8_t want[MV_PAGE_SIZE];

    write_pattern(want, seed, id, version);
    return memcmp(buf, want, MV_PAGE_SIZE) == 0;
}

static void run_tmem_client(struct mv__vcpu *v, bool swap)
{
    struct mv__guest *g = v->guest;
    struct mv_domain *d = g->domain;
    const struct mv_workload_config *c = &g->workload;
    mv_host *host = d->host;
    uint64_t k = g->vcpu_count, i = v->index;
    uint64_t ws = c->working_set_pages ? c->working_set_pages : d->maxmem_pages;
    uint64_t slots = ws > i ? (ws - i + k - 1) / k : 0;
    uint64_t items = slots * (swap ? 2 : 4);
    uint64_t cap = c->max_pages ? c->max_pages / k + (i < c->max_pages % k) : UINT64_MAX;
    uint64_t rng = mix64(c->seed ^ (i + 1) * 0x9e3779b97f4a7c15ull), done = 0, hand = 0;
    uint64_t oid[3] = { swap ? TMEM_SWAP_TAG : TMEM_CACHE_TAG, i, 0 };
    uint64_t tag = (swap ? TMEM_SWAP_TAG : TMEM_CACHE_TAG) | (i << 32);
    uint32_t pool = (uint32_t)g->tmem_pool[swap];
    struct tmem_tables *t = &v->tmem;
    uint32_t *slot_item = t->slot_item = malloc(slots * sizeof(*slot_item));
    uint32_t *item_slot = t->item_slot = malloc(items * sizeof(*item_slot));
    uint32_t *version = t->version = calloc(items, sizeof(*version));
    uint8_t *in_tmem = t->in_tmem = calloc(items, 1), buf[MV_PAGE_SIZE];

    if (!slot_item || !item_slot || !version || !in_tmem || items > UINT32_MAX) {
        note_mismatch(g, i); /* cannot run: say so rather than pass */
        goto out;
    }
    for (uint64_t s = 0; s < slots; s++)
        slot_item[s] = TMEM_NONE;
    for (uint64_t b = 0; b < items; b++)
        item_slot[b] = TMEM_NONE;
    while (slots && done < cap && vcpu_checkpoint(v)) {
        uint64_t item, s, gfn;
        int rc;

        rng = mix64(rng);
        item = rng % items;
        s = item_slot[item];
        if (s == TMEM_NONE) {
            /* Make room: the slot under the hand goes to tmem. */
            s = hand;
            hand = (hand + 1) % slots;
            gfn = s * k + i;
            if (!vcpu_claim(v, gfn))
                continue;
            if (slot_item[s] != TMEM_NONE) {
                uint32_t old = slot_item[s];

                copy_from_guest(buf, mv__gfn_addr(d, gfn));
                rc = mv_tmem_put_page(host, d->domid, pool, oid, old, buf, MV_PAGE_SIZE);
                in_tmem[old] = rc == 1;
                if (rc < 0 && !swap)
                    note_mismatch(g, gfn); /* an ephemeral put never fails */
                item_slot[old] = TMEM_NONE;
            }
            /* Bring the item in: from tmem, else from the disk. */
            rc = mv_tmem_get_page(host, d->domid, pool, oid, (uint32_t)item, buf, MV_PAGE_SIZE);
            if (rc == 1) {
                if (!buffer_matches(buf, c->seed, tag | item, swap ? version[item] + 1 : 1))
                    note_mismatch(g, gfn);
                if (swap)
                    mv_tmem_flush_page(host, d->domid, pool, oid, (uint32_t)item);
            } else {
                if (rc < 0 || (swap && in_tmem[item]))
                    note_mismatch(g, gfn); /* a persistent page was lost */
                write_pattern(buf, c->seed, tag | item, swap ? version[item] + 1 : 1);
            }
            in_tmem[item] = 0;
            copy_to_guest(mv__gfn_addr(d, gfn), buf);
            slot_item[s] = (uint32_t)item;
            item_slot[item] = (uint32_t)s;
        } else {
            gfn = s * k + i;
            if (!vcpu_claim(v, gfn))
                continue;
        }
        if (swap) {
            /* Anonymous memory is written: a new version. */
            version[item]++;
            write_pattern(mv__gfn_addr(d, gfn), c->seed, tag | item, version[item] + 1);
        } else if (!page_matches(mv__gfn_addr(d, gfn), c->seed, tag | item, 1)) {
            note_mismatch(g, gfn);
        }
        vcpu_release(v);
        done++;
    }
out:
    /* Unmount and power off: the oracle holds again. */
    mv_tmem_flush_object(host, d->domid, pool, oid);
    for (uint64_t s = 0; slot_item && s < slots; s++) {
        uint64_t gfn = s * k + i;

        if (slot_item[s] == TMEM_NONE || !vcpu_claim(v, gfn))
            continue;
        zero_page(mv__gfn_addr(d, gfn));
        atomic_store_explicit(&g->oracle[gfn], 0, memory_order_relaxed);
        atomic_store(&v->current_gfn, MV_NO_GFN);
    }
    tmem_tables_free(t);
}

static void *vcpu_main(void *arg)
{
    struct mv__vcpu *v = arg;
    struct mv__guest *g = v->guest;

    current_vcpu = v;
    (void)mv_vcpu_enter(g->domain->host, g->domain->domid);
    if (sigsetjmp(v->crash_jump, 1) == 0) {
        switch (g->workload.kind) {
        case MV_WORKLOAD_SCRUB:
            run_scrub(v);
            break;
        case MV_WORKLOAD_RANDOM:
            run_random(v);
            break;
        case MV_WORKLOAD_VERIFY:
            run_verify(v);
            break;
        case MV_WORKLOAD_CLEANCACHE:
            run_tmem_client(v, false);
            break;
        case MV_WORKLOAD_FRONTSWAP:
            run_tmem_client(v, true);
            break;
        }
    } else {
        atomic_store(&g->crashed, true);
    }
    tmem_tables_free(&v->tmem); /* a workload left by the crash jump */
    current_vcpu = NULL;
    mv_vcpu_exit();
    atomic_store(&v->current_gfn, MV_NO_GFN);
    mv__mutex_lock(&g->lock);
    if (--g->running == 0)
        g->end_ns = mv__now_ns();
    pthread_cond_broadcast(&g->cond);
    mv__mutex_unlock(&g->lock);
    return NULL;
}

/* Join finished vCPU threads (guest lock held, running == 0). */
static void join_vcpus(struct mv__guest *g)
{
    for (unsigned i = 0; i < g->started; i++)
        pthread_join(g->vcpus[i].thread, NULL);
    g->started = 0;
}

/* Stop the workload and join its threads (guest lock held). */
static void stop_vcpus(struct mv__guest *g)
{
    atomic_store(&g->stop, true);
    pthread_cond_broadcast(&g->cond);
    while (g->running)
        mv__cond_wait(&g->cond, &g->lock, 0);
    join_vcpus(g);
}

/* ------------------------------------------------------------------------ */
/* life cycle                                                               */

static int guest_create(struct mv_domain *d)
{
    unsigned k = d->config.vcpus;
    struct mv__guest *g = calloc(1, sizeof(*g) + k * sizeof(g->vcpus[0]));

    if (!g)
        return mv__fail(-ENOMEM, "no memory for %u vCPUs", k);
    g->oracle = calloc(d->maxmem_pages, sizeof(*g->oracle));
    g->ballooned = calloc(d->maxmem_pages, sizeof(*g->ballooned));
    if (!g->oracle || !g->ballooned) {
        free(g->oracle);
        free(g->ballooned);
        free(g);
        return mv__fail(-ENOMEM, "no memory for the content oracle");
    }
    g->domain = d;
    g->vcpu_count = k;
    g->tmem_pool[0] = g->tmem_pool[1] = -1;
    mv__mutex_init(&g->lock, MV_LOCK_GUEST);
    mv__cond_init(&g->cond);
    for (unsigned i = 0; i < k; i++) {
        g->vcpus[i].guest = g;
        g->vcpus[i].index = i;
        atomic_init(&g->vcpus[i].current_gfn, MV_NO_GFN);
    }
    d->ext[guest_slot] = g;
    return 0;
}

static void guest_destroy(struct mv_domain *d)
{
    struct mv__guest *g = guest_of(d);

    if (!g)
        return;
    mv__mutex_lock(&g->lock);
    stop_vcpus(g);
    mv__mutex_unlock(&g->lock);
    pthread_cond_destroy(&g->cond);
    mv__mutex_destroy(&g->lock);
    free(g->oracle);
    free(g->ballooned);
    free(g);
    d->ext[guest_slot] = NULL;
}

static uint64_t guest_metadata(struct mv_domain *d)
{
    const struct mv__guest *g = guest_of(d);

    if (!g)
        return 0;
    return sizeof(*g) + g->vcpu_count * sizeof(g->vcpus[0]) +
           d->maxmem_pages * (sizeof(*g->oracle) + sizeof(*g->ballooned));
}

static int guest_park(struct mv_domain *d, unsigned timeout_ms)
{
    struct mv__guest *g = guest_of(d);
    uint64_t deadline = mv__now_ns() + timeout_ms * 1000000ull;
    int rc = 0;

    mv__mutex_lock(&g->lock);
    atomic_store(&g->park, true);
    for (;;) {
        size_t held;

        mv__mutex_lock(&d->lock);
        held = mv__fault_held_blocking(d);
        mv__mutex_unlock(&d->lock);
        if (g->parked + held >= g->running)
            break;
        if (mv__now_ns() >= deadline) {
            rc = mv__fail(-ETIMEDOUT, "%u of %u vCPUs did not reach a pause point "
                          "within %u ms", g->running - g->parked, g->running,
                          timeout_ms);
            break;
        }
        mv__cond_wait(&g->cond, &g->lock, mv__now_ns() + MV_PARK_POLL_NS);
    }
    mv__mutex_unlock(&g->lock);
    return rc;
}

static void guest_unpark(struct mv_domain *d)
{
    struct mv__guest *g = guest_of(d);

    mv__mutex_lock(&g->lock);
    atomic_store(&g->park, false);
    pthread_cond_broadcast(&g->cond);
    mv__mutex_unlock(&g->lock);
}

/* ------------------------------------------------------------------------ */
/* workloads                                                                */

void mv_workload_config_init(struct mv_workload_config *config,
                             enum mv_workload_kind kind)
{
    memset(config, 0, sizeof(*config));
    config->kind = kind;
    config->seed = 0x6d656d7669736f72ull;
}

static int validate_workload(struct mv_domain *d, const struct mv_workload_config *c)
{
    if (c->kind != MV_WORKLOAD_SCRUB && c->kind != MV_WORKLOAD_RANDOM &&
        c->kind != MV_WORKLOAD_VERIFY && c->kind != MV_WORKLOAD_CLEANCACHE &&
        c->kind != MV_WORKLOAD_FRONTSWAP)
        return mv__fail(-EINVAL, "unknown workload kind %d", (int)c->kind);
    if (c->working_set_pages > d->maxmem_pages)
        return mv__fail(-EINVAL, "working set of %llu pages exceeds maxmem (%llu)",
                        (unsigned long long)c->working_set_pages,
                        (unsigned long long)d->maxmem_pages);
    return 0;
}

/* An entry point's start: the domain, referenced, and its guest.  -ESRCH,
 * or what not_registered() says when the guests never registered. */
/* Look the domain and its guest up.  `vcpus`: the call runs or reads the
 * built-in vCPUs' work, which a domain whose vCPUs are a VMM's has not. */
static int guest_begin(mv_host *host, uint32_t domid, bool vcpus, struct mv_domain **d,
                       struct mv__guest **g)
{
    if (guest_slot < 0)
        return not_registered();
    *d = mv__domain_get(host, domid);
    if (!*d)
        return -ESRCH;
    mv__clear_error();
    if (vcpus && (*d)->vmm) {
        int pid = (*d)->vmm->pid;

        mv__domain_put(*d);
        return mv__fail(-EOPNOTSUPP, "domain %u's vCPUs are VMM process %d's: it "
                        "runs no built-in workload", domid, pid);
    }
    *g = guest_of(*d);
    if (!*g) {
        mv__domain_put(*d);
        return not_registered();
    }
    return 0;
}

int mv_workload_start(mv_host *host, uint32_t domid,
                      const struct mv_workload_config *config)
{
    struct mv_domain *d;
    struct mv__guest *g;
    int rc = 0;

    rc = guest_begin(host, domid, true, &d, &g);
    if (rc < 0)
        return rc;
    mv__mutex_lock(&g->lock);
    if (g->running) {
        rc = mv__fail(-EBUSY, "a workload is already running on domain %u", domid);
        goto out;
    }
    rc = validate_workload(d, config);
    if (rc < 0)
        goto out;
    /* The tmem clients' pools, made at their first use. */
    if (config->kind == MV_WORKLOAD_CLEANCACHE || config->kind == MV_WORKLOAD_FRONTSWAP) {
        bool swap = config->kind == MV_WORKLOAD_FRONTSWAP;

        if (g->tmem_pool[swap] < 0) {
            rc = mv_tmem_new_pool(host, domid, swap ? MV_TMEM_PERSISTENT : 0, NULL);
            if (rc < 0)
                goto out;
            g->tmem_pool[swap] = rc;
            rc = 0;
        }
    }
    mv__mutex_lock(&d->lock);
    if (d->state == MV_DOMAIN_CRASHED)
        rc = mv__fail(-EPERM, "domain %u has crashed: %s", domid, d->crash_reason);
    mv__mutex_unlock(&d->lock);
    if (rc < 0)
        goto out;
    join_vcpus(g);
    /* The oracle's patterns depend on the seed: keep the first one. */
    if (g->workload.seed && config->seed != g->workload.seed)
        rc = mv__fail(-EINVAL, "seed differs from the one the oracle was written "
                      "with (%#llx)", (unsigned long long)g->workload.seed);
    if (rc == 0)
        rc = install_sigbus_handler();
    if (rc < 0)
        goto out;
    g->workload = *config;
    atomic_store(&g->stop, false);
    atomic_store(&g->crashed, false);
    atomic_store(&g->pages_done, 0);
    atomic_store(&g->mismatches, 0);
    atomic_store(&g->first_bad_gfn, UINT64_MAX);
    g->start_ns = mv__now_ns();
    g->end_ns = 0;
    for (unsigned i = 0; i < g->vcpu_count; i++) {
        int err = pthread_create(&g->vcpus[i].thread, NULL, vcpu_main, &g->vcpus[i]);

        if (err) {
            rc = mv__fail(-err, "cannot start vCPU %u", i);
            stop_vcpus(g);
            goto out;
        }
        g->started++;
        g->running++;
    }
out:
    mv__mutex_unlock(&g->lock);
    mv__domain_put(d);
    return rc;
}

int mv_workload_wait(mv_host *host, uint32_t domid, unsigned timeout_ms,
                     struct mv_workload_status *status)
{
    struct mv_domain *d;
    struct mv__guest *g;
    uint64_t deadline;
    int rc = 0;

    rc = guest_begin(host, domid, false, &d, &g);
    if (rc < 0)
        return rc;
    deadline = mv__now_ns() + timeout_ms * 1000000ull;
    mv__mutex_lock(&g->lock);
    while (g->running && timeout_ms && mv__now_ns() < deadline)
        mv__cond_wait(&g->cond, &g->lock, deadline);
    if (g->running)
        rc = -ETIMEDOUT;
    else
        join_vcpus(g);
    if (status) {
        memset(status, 0, sizeof(*status));
        status->running = (int)g->running;
        status->pages_done = atomic_load(&g->pages_done);
        status->mismatches = atomic_load(&g->mismatches);
        status->first_bad_gfn = atomic_load(&g->first_bad_gfn);
        status->crashed = atomic_load(&g->crashed);
        status->elapsed_ns = !g->start_ns ? 0 :
                             (g->end_ns && !g->running ? g->end_ns : mv__now_ns()) -
                             g->start_ns;
    }
    mv__mutex_unlock(&g->lock);
    mv__domain_put(d);
    return rc;
}

int mv_workload_stop(mv_host *host, uint32_t domid)
{
    struct mv_domain *d;
    struct mv__guest *g;
    int rc = guest_begin(host, domid, false, &d, &g);

    if (rc < 0)
        return rc;
    mv__mutex_lock(&g->lock);
    stop_vcpus(g);
    mv__mutex_unlock(&g->lock);
    mv__domain_put(d);
    return 0;
}

int64_t mv_oracle_verify(mv_host *host, uint32_t domid, uint64_t *first_bad_gfn)
{
    struct mv_domain *d;
    struct mv__guest *g;
    uint8_t *page;
    int64_t bad = 0;
    int rc = 0;

    rc = guest_begin(host, domid, true, &d, &g);
    if (rc < 0)
        return rc;
    page = malloc(MV_PAGE_SIZE);
    if (!page) {
        mv__domain_put(d);
        return mv__fail(-ENOMEM, "no memory");
    }
    if (first_bad_gfn)
        *first_bad_gfn = UINT64_MAX;
    mv__mutex_lock(&g->lock);
    if (g->running)
        rc = mv__fail(-EBUSY, "a workload is running on domain %u", domid);
    for (uint64_t gfn = 0; rc == 0 && gfn < d->maxmem_pages; gfn++) {
        bool ok;

        rc = mv_domain_read_page(host, domid, gfn, page);
        if (atomic_load(&g->ballooned[gfn])) {
            /* The guest gave it away: the hypervisor must agree. */
            ok = rc == -ENODATA;
            rc = 0;
        } else {
            if (rc < 0)
                break;
            ok = page_matches(page, g->workload.seed, gfn,
                              atomic_load_explicit(&g->oracle[gfn], memory_order_relaxed));
        }
        if (!ok) {
            if (bad == 0 && first_bad_gfn)
                *first_bad_gfn = gfn;
            bad++;
        }
    }
    mv__mutex_unlock(&g->lock);
    free(page);
    mv__domain_put(d);
    return rc < 0 ? rc : bad;
}

/* ------------------------------------------------------------------------ */
/* balloon driver                                                           */

/* The balloon's side of the claim protocol (see the head comment). */
static bool balloon_claim(struct mv__guest *g, uint64_t gfn)
{
    atomic_store(&g->ballooned[gfn], 1);
    for (unsigned i = 0; i < g->vcpu_count; i++) {
        if (atomic_load(&g->vcpus[i].current_gfn) == gfn) {
            atomic_store(&g->ballooned[gfn], 0);
            return false;
        }
    }
    return true;
}

static int64_t balloon_inflate(struct mv_host *host, struct mv__guest *g, uint64_t want)
{
    struct mv_domain *d = g->domain;
    uint64_t *gfns = malloc(want * sizeof(*gfns)), n = 0;
    int rc;

    if (!gfns)
        return mv__fail(-ENOMEM, "no memory for %llu gfns", (unsigned long long)want);
    for (uint64_t gfn = d->maxmem_pages; gfn-- > 0 && n < want;)
        if (!atomic_load(&g->ballooned[gfn]) && balloon_claim(g, gfn))
            gfns[n++] = gfn;
    rc = mv_domain_decrease_reservation(host, d->domid, gfns, n);
    /* The gfns released (all, or those before a failure) are given away;
     * the guest keeps the others. */
    for (uint64_t i = 0; i < n; i++) {
        if (rc < 0 || i >= (uint64_t)rc)
            atomic_store(&g->ballooned[gfns[i]], 0);
        else
            atomic_store_explicit(&g->oracle[gfns[i]], 0, memory_order_relaxed);
    }
    free(gfns);
    if (rc < 0)
        return rc;
    g->ballooned_count += (uint64_t)rc;
    return rc;
}

static int64_t balloon_deflate(struct mv_host *host, struct mv__guest *g, uint64_t want)
{
    struct mv_domain *d = g->domain;
    uint64_t *gfns = malloc(want * sizeof(*gfns)), n = 0;
    int rc;

    if (!gfns)
        return mv__fail(-ENOMEM, "no memory for %llu gfns", (unsigned long long)want);
    for (uint64_t gfn = 0; gfn < d->maxmem_pages && n < want; gfn++)
        if (atomic_load(&g->ballooned[gfn]))
            gfns[n++] = gfn;
    rc = mv_domain_increase_reservation(host, d->domid, gfns, n);
    if (rc >= 0)
        for (uint64_t i = 0; i < n; i++)
            atomic_store(&g->ballooned[gfns[i]], 0);
    free(gfns);
    if (rc < 0)
        return rc;
    g->ballooned_count -= n;
    return (int64_t)n;
}

int64_t mv_guest_balloon(mv_host *host, uint32_t domid, uint64_t guest_bytes)
{
    struct mv_domain *d;
    struct mv__guest *g;
    uint64_t want = guest_bytes >> MV_PAGE_SHIFT, usable;
    int64_t rc = 0;

    rc = guest_begin(host, domid, true, &d, &g);
    if (rc < 0)
        return rc;
    if (guest_bytes % MV_PAGE_SIZE || want == 0 || want > d->maxmem_pages) {
        rc = mv__fail(-EINVAL, "guest size %llu must be a positive multiple of "
                      "4 KiB no larger than maxmem (%llu MiB)",
                      (unsigned long long)guest_bytes,
                      (unsigned long long)(d->maxmem_pages >> (20 - MV_PAGE_SHIFT)));
        mv__domain_put(d);
        return rc;
    }
    mv__mutex_lock(&g->lock);
    usable = d->maxmem_pages - g->ballooned_count;
    if (want < usable)
        rc = balloon_inflate(host, g, usable - want);
    else if (want > usable)
        rc = balloon_deflate(host, g, want - usable);
    mv__mutex_unlock(&g->lock);
    mv__domain_put(d);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* clones                                                                   */

/*
 * The clone's guest starts from the source's memory, so its oracle starts
 * from the source's: the same seed, versions and ballooned pages.  Runs with
 * the source's domain lock held and the source paused (its vCPUs write
 * nothing), the clone not reachable yet.
 */
static void guest_clone_oracle(struct mv_domain *src, struct mv_domain *clone)
{
    struct mv__guest *from = guest_of(src), *to = guest_of(clone);

    to->workload.seed = from->workload.seed;
    /* The clone's arrays are fresh and zero: storing only what is not
     * leaves the pages of them that would stay zero untouched. */
    for (uint64_t gfn = 0; gfn < src->maxmem_pages; gfn++) {
        uint32_t version = atomic_load_explicit(&from->oracle[gfn], memory_order_relaxed);
        uint8_t ballooned = atomic_load_explicit(&from->ballooned[gfn], memory_order_relaxed);

        if (version)
            atomic_store_explicit(&to->oracle[gfn], version, memory_order_relaxed);
        if (ballooned)
            atomic_store_explicit(&to->ballooned[gfn], ballooned, memory_order_relaxed);
    }
    to->ballooned_count = from->ballooned_count;
}

/* ------------------------------------------------------------------------ */
/* what the built-in guests plug into the core, last of the mechanisms      */

static void guest_info(struct mv_domain *d, struct mv_domain_info *out)
{
    out->metadata_bytes += guest_metadata(d);
}

static const struct mv__mechanism guest_mechanism = {
    .name = "built-in guests",
    .domain_init = guest_create,
    .domain_stop = guest_destroy,
    .domain_destroy = guest_destroy,
    .domain_info = guest_info,
    .domain_park = guest_park,
    .domain_unpark = guest_unpark,
    .domain_cloned = guest_clone_oracle,
};

/* Before main(), so before any host exists (see the head comment for why a
 * constructor, and why in this file).  A failure leaves guest_slot at -1:
 * the entry points then say so. */
__attribute__((constructor)) static void register_guests(void)
{
    int slot = mv__mechanism_register(&guest_mechanism);

    if (slot >= 0)
        guest_slot = slot;
    else
        register_error = slot;
}

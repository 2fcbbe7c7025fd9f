/*
 * machine.c - machine memory: the memfd that is the host's RAM, the frame
 * allocator and the budget.
 *
 *   memfd  [0 ........................................ machine_pages)
 *           | dom 1 block | free | dom 2 block |      free           |
 *
 * The host reads frames that may be holes with pread (zero checks, page
 * reads, the oracle): a read of a hole returns zeros without allocating.
 * Frames known to hold memory (a domain's populated pages under its lock, a
 * live shared frame under the share lock) are read in place through the
 * view, a read-only shared mapping of the whole memfd: no copy, no page
 * cache lookup, and after the first read of a frame (which maps it and the
 * present frames around it) no kernel entry at all, until a hole punch
 * takes the entry away.  A read of a hole through the view would allocate
 * the frame: only frames the caller knows to be populated may be read there.
 * Residency (which frames hold memory) comes from SEEK_DATA/SEEK_HOLE.
 * Which way pays for reading many frames once (the sharing scanner) depends
 * on what a mapping costs the host: mv__machine_read_costs measures both,
 * once per process.
 *
 * A machine frame number (mfn) is a page offset in the memfd.  The frame
 * space is sparse: handing frames out costs no memory; a frame holds memory
 * only once populated, and punching a hole returns it to the host, zeroed,
 * before anyone else can map it.  That is how freed memory is scrubbed
 * (mv__machine_scrub); scrub.c gives frames back, at once or through the
 * background scrubber, which keeps them out of the free lists until then.
 *
 * Frame allocator: a binary buddy system.  free[k] holds the first frame of
 * every free block of 2^k frames; blocks are naturally aligned and a block's
 * buddy is first ^ 2^k.  The lists are small (a few blocks per order per
 * domain), so they are plain arrays searched linearly; each is reserved at
 * its bound (one block of each aligned pair), so that frees never fail.
 *   Invariants: free blocks are disjoint, aligned, inside the frame space;
 *   no two buddies are both free at the same order; their sizes add up to
 *   free_pages.
 *
 * Budget: populated_pages <= budget_pages, kept with atomics so the fault
 * path never takes a lock for it.
 *
 * Locking: machine->lock (MV_LOCK_MACHINE; only the scrub lock is taken
 * under it, by the audit) protects the free lists and free_pages.  An
 * allocation that finds no run waits, without it, for the scrubber's
 * give-backs.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static unsigned order_for(uint64_t pages)
{
    unsigned order = 0;

    while ((1ull << order) < pages)
        order++;
    return order;
}

/* The most free blocks of order k there can be: below the top order no two
 * buddies are both free, so at most one block of each aligned pair. */
static uint64_t free_list_bound(uint64_t pages, unsigned k)
{
    return (k < MV_BUDDY_MAX_ORDER ? pages >> (k + 1) : pages >> k) + 1;
}

/* Never full: each list has room for its bound (mv__machine_init), so that
 * freeing frames never fails. */
static void free_list_push(struct mv__free_list *list, uint64_t start)
{
    list->starts[list->count++] = start;
}

static ssize_t free_list_find(const struct mv__free_list *list, uint64_t start)
{
    for (size_t i = 0; i < list->count; i++)
        if (list->starts[i] == start)
            return (ssize_t)i;
    return -1;
}

static bool free_list_remove(struct mv__free_list *list, uint64_t start)
{
    ssize_t i = free_list_find(list, start);

    if (i < 0)
        return false;
    list->starts[i] = list->starts[--list->count];
    return true;
}

/* Free one aligned block, merging with free buddies (lock held). */
static void buddy_free_block(struct mv__machine *m, uint64_t start, unsigned order)
{
    while (order < MV_BUDDY_MAX_ORDER) {
        uint64_t buddy = start ^ (1ull << order);

        if (buddy + (1ull << order) > m->pages ||
            !free_list_remove(&m->free[order], buddy))
            break;
        start = MV_MIN(start, buddy);
        order++;
    }
    free_list_push(&m->free[order], start);
}

/* Free [first, first + pages) as maximal aligned blocks (lock held). */
static void buddy_free_range(struct mv__machine *m, uint64_t first, uint64_t pages)
{
    while (pages) {
        unsigned order = first ? (unsigned)__builtin_ctzll(first) : MV_BUDDY_MAX_ORDER;

        order = MV_MIN(order, MV_BUDDY_MAX_ORDER);
        while ((1ull << order) > pages)
            order--;
        buddy_free_block(m, first, order);
        m->free_pages += 1ull << order;
        first += 1ull << order;
        pages -= 1ull << order;
    }
}

int mv__machine_init(struct mv__machine *m, uint64_t machine_bytes,
                     uint64_t budget_pages)
{
    uint64_t slots = 0, at = 0;
    int rc;

    memset(m, 0, sizeof(*m));
    m->memfd = -1;
    m->pages = machine_bytes >> MV_PAGE_SHIFT;
    if (m->pages < MV_BLOCK_PAGES)
        return mv__fail(-EINVAL, "machine size %llu bytes is below one 2 MiB block",
                        (unsigned long long)machine_bytes);
    if (m->pages > (1ull << MV_BUDDY_MAX_ORDER) * 64)
        return mv__fail(-EINVAL, "machine size %llu GiB is above the %llu GiB "
                        "the frame allocator covers",
                        (unsigned long long)(machine_bytes / MV_GIB),
                        (unsigned long long)(((1ull << MV_BUDDY_MAX_ORDER) * 64)
                                             >> (30 - MV_PAGE_SHIFT)));
    mv__mutex_init(&m->lock, MV_LOCK_MACHINE);
    /* The free lists, each as long as its bound: 8 bytes of address space
     * per frame in all (2 GiB for the default 1 TiB), memory only for the
     * entries ever used. */
    for (unsigned k = 0; k <= MV_BUDDY_MAX_ORDER; k++) {
        m->free[k].capacity = free_list_bound(m->pages, k);
        slots += m->free[k].capacity;
    }
    m->free_lists_bytes = slots * sizeof(uint64_t);
    m->free_lists = mv__os_table_reserve(m->free_lists_bytes);
    if (!m->free_lists) {
        rc = -errno;
        mv__machine_fini(m);
        return mv__fail(rc, "cannot reserve the frame allocator's lists (%llu bytes): %s",
                        (unsigned long long)m->free_lists_bytes, mv_strerror(rc));
    }
    for (unsigned k = 0; k <= MV_BUDDY_MAX_ORDER; k++) {
        m->free[k].starts = m->free_lists + at;
        at += m->free[k].capacity;
    }
    m->memfd = mv__os_memfd("memvisor-machine", machine_bytes);
    if (m->memfd < 0) {
        rc = m->memfd;
        m->memfd = -1;
        mv__machine_fini(m);
        return mv__fail(rc, "cannot create the machine memfd of %llu bytes: %s",
                        (unsigned long long)machine_bytes, mv_strerror(rc));
    }
    m->view = mv__os_map_shared(NULL, m->pages << MV_PAGE_SHIFT, m->memfd, 0, PROT_READ);
    if (!m->view) {
        rc = -errno;
        mv__machine_fini(m);
        return mv__fail(rc, "cannot map the machine memfd for reading: %s", mv_strerror(rc));
    }
    /* A child of the host (a VMM it starts) has no use for it. */
    (void)madvise((void *)m->view, m->pages << MV_PAGE_SHIFT, MADV_DONTFORK);
    /* Reading a frame through the view says nothing of its use: with
     * MADV_RANDOM the kernel takes no recency from the view's entries, so
     * a hole punched in a frame read there no longer activates the page on
     * the LRU first (a punch of a frame the view maps cost ~25% more). */
    (void)madvise((void *)m->view, m->pages << MV_PAGE_SHIFT, MADV_RANDOM);
    mv__mutex_lock(&m->lock);
    buddy_free_range(m, 0, m->pages);
    mv__mutex_unlock(&m->lock);
    atomic_store(&m->budget_pages, budget_pages);
    return 0;
}

void mv__machine_fini(struct mv__machine *m)
{
    if (m->view)
        munmap((void *)m->view, m->pages << MV_PAGE_SHIFT);
    if (m->memfd >= 0)
        close(m->memfd);
    if (m->free_lists)
        mv__os_unmap(m->free_lists, m->free_lists_bytes);
    mv__mutex_destroy(&m->lock);
    memset(m, 0, sizeof(*m));
    m->memfd = -1;
}

int mv__machine_fits(const struct mv__machine *m, uint64_t pages)
{
    if (pages > m->pages || order_for(pages) > MV_BUDDY_MAX_ORDER)
        return mv__fail(-E2BIG, "%llu frames exceed the machine's %llu",
                        (unsigned long long)pages, (unsigned long long)m->pages);
    return 0;
}

int mv__machine_alloc(struct mv__machine *m, uint64_t pages, uint64_t *first)
{
    unsigned want = order_for(pages), k;
    uint64_t start;
    int rc = mv__machine_fits(m, pages);

    if (rc < 0)
        return rc;
again:
    mv__mutex_lock(&m->lock);
    for (k = want; k <= MV_BUDDY_MAX_ORDER && m->free[k].count == 0; k++)
        ;
    if (k > MV_BUDDY_MAX_ORDER) {
        mv__mutex_unlock(&m->lock);
        /* Blocks the scrubber has not given back yet may make the run. */
        if (mv__scrub_wait(m, MV__RELEASE_GIVE_BACK))
            goto again;
        return mv__fail(-ENOSPC, "no free run of %llu frames in the machine "
                        "(%llu frames free, fragmented or too few)",
                        (unsigned long long)pages, (unsigned long long)m->free_pages);
    }
    start = m->free[k].starts[--m->free[k].count];
    /* Split down to the order wanted, freeing the upper halves. */
    while (k > want) {
        k--;
        free_list_push(&m->free[k], start + (1ull << k));
    }
    m->free_pages -= 1ull << want;
    /* Return the tail beyond what was asked for. */
    buddy_free_range(m, start + pages, (1ull << want) - pages);
    mv__mutex_unlock(&m->lock);
    *first = start;
    return 0;
}

void mv__machine_free(struct mv__machine *m, uint64_t first, uint64_t pages)
{
    mv__mutex_lock(&m->lock);
    buddy_free_range(m, first, pages);
    mv__mutex_unlock(&m->lock);
}

int mv__machine_read(struct mv__machine *m, uint64_t mfn, uint64_t pages, void *buf)
{
    int rc = mv__os_read(m->memfd, buf, mfn << MV_PAGE_SHIFT, pages << MV_PAGE_SHIFT);

    if (rc < 0)
        return mv__fail(rc, "cannot read frames %#llx+%llu: %s",
                        (unsigned long long)mfn, (unsigned long long)pages,
                        mv_strerror(rc));
    return 0;
}

/* Pages read each way per round of mv__machine_read_costs: a block. */
#define READ_COST_PAGES MV_BLOCK_PAGES
#define READ_COST_ROUNDS 3

static unsigned zero_pages_in(const uint8_t *pages, uint64_t n)
{
    unsigned zero = 0;

    for (uint64_t i = 0; i < n; i++)
        zero += mv__page_is_zero(pages + (i << MV_PAGE_SHIFT));
    return zero;
}

/* pwrite or pread of exactly `len` bytes: 0 or a negative errno.  The
 * measurement calls the kernel directly, not through os.c: it is not guest
 * memory, and a test's injected failures are not meant for it. */
static int io_all(bool write, int fd, void *buf, size_t len, off_t at)
{
    ssize_t done = write ? pwrite(fd, buf, len, at) : pread(fd, buf, len, at);

    return done == (ssize_t)len ? 0 : done < 0 ? -errno : -EIO;
}

/* Two blocks of a throw-away memfd written with zeros by pwrite (so they
 * hold memory, as a guest's populated pages do, and are read whole by the
 * zero check), then one read in place, the other copied out. */
static int read_costs_measure(uint64_t *in_place_ns, uint64_t *copy_ns)
{
    const size_t bytes = (size_t)READ_COST_PAGES << MV_PAGE_SHIFT;
    uint8_t *buf = mv__aligned_alloc(MV_PAGE_SIZE, bytes);
    int fd = memfd_create("memvisor-read-costs", MFD_CLOEXEC), rc = 0;
    unsigned zero = 0;

    *in_place_ns = *copy_ns = UINT64_MAX;
    if (fd < 0 || !buf) {
        rc = fd < 0 ? -errno : -ENOMEM;
        goto out;
    }
    for (unsigned round = 0; round < READ_COST_ROUNDS && rc == 0; round++) {
        uint8_t *map;
        uint64_t t0, t1, t2;

        memset(buf, 0, bytes);
        if ((rc = io_all(true, fd, buf, bytes, 0)) < 0 ||
            (rc = io_all(true, fd, buf, bytes, (off_t)bytes)) < 0)
            break;
        t0 = mv__now_ns();
        map = mmap(NULL, bytes, PROT_READ, MAP_SHARED, fd, 0);
        if (map == MAP_FAILED) {
            rc = -errno;
            break;
        }
        (void)madvise(map, bytes, MADV_RANDOM);    /* as the view */
        zero += zero_pages_in(map, READ_COST_PAGES);
        munmap(map, bytes);
        t1 = mv__now_ns();
        if ((rc = io_all(false, fd, buf, bytes, (off_t)bytes)) < 0)
            break;
        zero += zero_pages_in(buf, READ_COST_PAGES);
        t2 = mv__now_ns();
        *in_place_ns = MV_MIN(*in_place_ns, (t1 - t0) / READ_COST_PAGES);
        *copy_ns = MV_MIN(*copy_ns, (t2 - t1) / READ_COST_PAGES);
        (void)fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 2 * (off_t)bytes);
    }
    if (rc == 0 && zero != 2u * READ_COST_ROUNDS * READ_COST_PAGES)
        rc = -EIO;          /* zeros written, something else read */
out:
    if (fd >= 0)
        close(fd);
    free(buf);
    return rc;
}

static struct {
    pthread_once_t once;
    int rc;
    uint64_t in_place_ns, copy_ns;
} read_costs = { .once = PTHREAD_ONCE_INIT };

static void read_costs_once(void)
{
    read_costs.rc = read_costs_measure(&read_costs.in_place_ns, &read_costs.copy_ns);
}

int mv__machine_read_costs(uint64_t *in_place_ns, uint64_t *copy_ns)
{
    pthread_once(&read_costs.once, read_costs_once);
    *in_place_ns = read_costs.rc == 0 ? read_costs.in_place_ns : 0;
    *copy_ns = read_costs.rc == 0 ? read_costs.copy_ns : 0;
    return read_costs.rc;
}

int mv__machine_resident(struct mv__machine *m, uint64_t first, uint64_t pages,
                         uint8_t *resident)
{
    off_t pos = (off_t)(first << MV_PAGE_SHIFT), end = (off_t)((first + pages) << MV_PAGE_SHIFT);

    memset(resident, 0, pages);
    while (pos < end) {
        off_t data = lseek(m->memfd, pos, SEEK_DATA), hole;

        if (data < 0 && errno == ENXIO)
            break;
        if (data < 0)
            return mv__fail(-errno, "SEEK_DATA on the machine memfd failed");
        if (data >= end)
            break;
        hole = lseek(m->memfd, data, SEEK_HOLE);
        if (hole < 0)
            return mv__fail(-errno, "SEEK_HOLE on the machine memfd failed");
        hole = MV_MIN(hole, end);
        memset(resident + ((uint64_t)data >> MV_PAGE_SHIFT) - first, 1,
               (uint64_t)(hole - data) >> MV_PAGE_SHIFT);
        pos = hole;
    }
    return 0;
}

/* Every change of populated_pages (and every move of charged pages between
 * holders) between these two: the host audit's sum is quiet only across
 * none (see charge_changes). */
void mv__machine_move_begin(struct mv__machine *m)
{
    atomic_fetch_add(&m->charge_changes, 1);
}

void mv__machine_move_end(struct mv__machine *m)
{
    atomic_fetch_add(&m->charge_done, 1);
}

static void raise_peak(struct mv__machine *m, uint64_t populated)
{
    uint64_t peak = atomic_load(&m->peak_populated_pages);

    while (populated > peak &&
           !atomic_compare_exchange_weak(&m->peak_populated_pages, &peak, populated))
        ;
}

bool mv__machine_charge(struct mv__machine *m, uint64_t pages)
{
    uint64_t cur = atomic_load(&m->populated_pages);

    if (cur + pages > atomic_load(&m->budget_pages))
        return false; /* refused before anything was under way */
    mv__machine_move_begin(m);
    do {
        if (cur + pages > atomic_load(&m->budget_pages)) {
            mv__machine_move_end(m);
            return false;
        }
    } while (!atomic_compare_exchange_weak(&m->populated_pages, &cur, cur + pages));
    mv__machine_move_end(m);
    raise_peak(m, cur + pages);
    return true;
}

void mv__machine_charge_anyway(struct mv__machine *m, uint64_t pages)
{
    uint64_t cur;

    mv__machine_move_begin(m);
    cur = atomic_fetch_add(&m->populated_pages, pages) + pages;
    mv__machine_move_end(m);
    raise_peak(m, cur);
}

void mv__machine_uncharge(struct mv__machine *m, uint64_t pages)
{
    mv__machine_move_begin(m);
    atomic_fetch_sub(&m->populated_pages, pages);
    mv__machine_move_end(m);
}

uint64_t mv__machine_room(struct mv__machine *m)
{
    uint64_t budget = atomic_load(&m->budget_pages);
    uint64_t used = atomic_load(&m->populated_pages);

    return budget > used ? budget - used : 0;
}

int mv__machine_scrub(struct mv__machine *m, uint64_t first, uint64_t pages)
{
    static const uint8_t zeros[64 * 1024];
    uint64_t offset = first << MV_PAGE_SHIFT, length = pages << MV_PAGE_SHIFT;
    int rc = 0;

    for (unsigned i = 0; i < MV_SCRUB_TRIES; i++)
        if ((rc = mv__os_punch(m->memfd, offset, length)) == 0)
            return 0;
    for (uint64_t done = 0; done < length; done += sizeof(zeros)) {
        int w = mv__os_write(m->memfd, zeros, offset + done,
                             MV_MIN(sizeof(zeros), length - done));

        if (w < 0)
            return mv__fail(w, "frames %#llx+%llu: cannot punch them (%s) nor "
                            "overwrite them (%s)", (unsigned long long)first,
                            (unsigned long long)pages, mv_strerror(rc), mv_strerror(w));
    }
    return mv__fail(rc, "frames %#llx+%llu: cannot punch them (%s); zeroed, their "
                    "memory stays held", (unsigned long long)first,
                    (unsigned long long)pages, mv_strerror(rc));
}

static int compare_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return x < y ? -1 : x > y;
}

int mv__machine_audit(struct mv__machine *m)
{
    uint64_t total = 0, n = 0, *blocks;
    int rc = 0;

    if (atomic_load(&m->populated_pages) > atomic_load(&m->budget_pages))
        return mv__fail(-EUCLEAN, "machine: populated %llu > budget %llu",
                        (unsigned long long)atomic_load(&m->populated_pages),
                        (unsigned long long)atomic_load(&m->budget_pages));
    mv__mutex_lock(&m->lock);
    for (unsigned k = 0; k <= MV_BUDDY_MAX_ORDER; k++) {
        if (m->free[k].count > m->free[k].capacity) {
            mv__mutex_unlock(&m->lock);
            return mv__fail(-EUCLEAN, "machine: %zu free blocks of order %u, above "
                            "their bound of %zu", m->free[k].count, k, m->free[k].capacity);
        }
        n += m->free[k].count;
    }
    blocks = mv__calloc(n ? n : 1, 2 * sizeof(*blocks));
    if (!blocks) {
        mv__mutex_unlock(&m->lock);
        return mv__fail(-ENOMEM, "machine audit: out of memory");
    }
    n = 0;
    for (unsigned k = 0; k <= MV_BUDDY_MAX_ORDER && rc == 0; k++) {
        for (size_t i = 0; i < m->free[k].count && rc == 0; i++) {
            uint64_t s = m->free[k].starts[i], size = 1ull << k;

            if (s & (size - 1) || s + size > m->pages)
                rc = mv__fail(-EUCLEAN, "machine: free block %llu of order %u "
                              "misaligned or outside the frame space",
                              (unsigned long long)s, k);
            else if (k < MV_BUDDY_MAX_ORDER && free_list_find(&m->free[k], s ^ size) >= 0)
                rc = mv__fail(-EUCLEAN, "machine: buddies %llu and %llu of order "
                              "%u are both free", (unsigned long long)s,
                              (unsigned long long)(s ^ size), k);
            blocks[2 * n] = s;
            blocks[2 * n + 1] = size;
            n++;
            total += size;
        }
    }
    if (rc == 0 && total != m->free_pages)
        rc = mv__fail(-EUCLEAN, "machine: free blocks add up to %llu, counter "
                      "says %llu", (unsigned long long)total,
                      (unsigned long long)m->free_pages);
    /* Blocks waiting for the scrubber are in no free list yet. */
    if (rc == 0)
        rc = mv__scrub_audit(m, &blocks, &n);
    mv__mutex_unlock(&m->lock);
    qsort(blocks, n, 2 * sizeof(*blocks), compare_u64);
    for (uint64_t i = 1; i < n && rc == 0; i++)
        if (blocks[2 * (i - 1)] + blocks[2 * (i - 1) + 1] > blocks[2 * i])
            rc = mv__fail(-EUCLEAN, "machine: free (or scrubbing) blocks at %llu "
                          "and %llu overlap",
                          (unsigned long long)blocks[2 * (i - 1)],
                          (unsigned long long)blocks[2 * i]);
    free(blocks);
    return rc;
}

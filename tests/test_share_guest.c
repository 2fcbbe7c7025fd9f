/*
 * test_share_guest.c - sharing reading pages where the guest maps them: each
 * block write-protected by the PAGEMAP_SCAN that asks which of its pages
 * were written since the last one, the written ones read, zero pages freed
 * from the guest's own mapping (unmapped, checked unwritten), pages not
 * written since their last read not read at all; and every way that can go
 * wrong made certain rather than rare.  This program is linked with ioctl
 * and madvise wrapped (-Wl,--wrap): a test arms a hook that runs once, just
 * before or just after the library's next protecting scan or unmap, and
 * stores into a guest page there (a vCPU's write racing the scanner) or
 * drops a page from the guest's page table (the kernel reclaiming it).
 * Each case ends reading back every page, as the machine holds it and as
 * the guest sees it, and with the audits.
 */
#include "testutil.h"
#include "internal.h"

#include <linux/userfaultfd.h>
#include <stdarg.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

int __real_ioctl(int fd, unsigned long request, ...);
int __wrap_ioctl(int fd, unsigned long request, ...);
int __real_madvise(void *addr, size_t length, int advice);
int __wrap_madvise(void *addr, size_t length, int advice);

enum hook_point {
    HOOK_NONE,
    HOOK_BEFORE_PROTECT,   /* before the next protecting PAGEMAP_SCAN */
    HOOK_AFTER_PROTECT,    /* after it */
    HOOK_BEFORE_UNMAP,     /* before the next MADV_DONTNEED */
};

enum hook_action {
    HOOK_STORE,            /* a guest store of `value` at `at` */
    HOOK_DROP,             /* the page at `at` leaves the guest's page table */
};

/* The library calls these from its scanner in this thread only: no
 * atomics needed. */
static enum hook_point hook_point;
static enum hook_action hook_action;
static uint8_t *hook_at;
static uint8_t hook_value;
static unsigned hook_ran;

static void arm(enum hook_point point, enum hook_action action, uint8_t *at, uint8_t value)
{
    hook_point = point;
    hook_action = action;
    hook_at = at;
    hook_value = value;
    hook_ran = 0;
}


static bool covers(const void *start, size_t length, const uint8_t *at)
{
    return at >= (const uint8_t *)start && at < (const uint8_t *)start + length;
}

static void run_hook(enum hook_point point, const void *start, size_t length)
{
    if (hook_point != point || !covers(start, length, hook_at))
        return;
    hook_point = HOOK_NONE;
    hook_ran++;
    if (hook_action == HOOK_STORE)
        tu_guest_store(hook_at, hook_value);
    else
        assert_int_equal(__real_madvise((void *)((uintptr_t)hook_at & ~(uintptr_t)4095),
                                        MV_PAGE_SIZE, MADV_DONTNEED), 0);
}

int __wrap_ioctl(int fd, unsigned long request, ...)
{
    va_list ap;
    void *arg;
    int rc;

    va_start(ap, request);
    arg = va_arg(ap, void *);
    va_end(ap);
    if (request == PAGEMAP_SCAN &&
        (((const struct pm_scan_arg *)arg)->flags & PM_SCAN_WP_MATCHING)) {
        const struct pm_scan_arg *scan = arg;
        const void *start = (const void *)(uintptr_t)scan->start;
        size_t length = scan->end - scan->start;

        run_hook(HOOK_BEFORE_PROTECT, start, length);
        rc = __real_ioctl(fd, request, arg);
        if (rc >= 0)
            run_hook(HOOK_AFTER_PROTECT, start, length);
        return rc;
    }
    return __real_ioctl(fd, request, arg);
}

int __wrap_madvise(void *addr, size_t length, int advice)
{
    if (advice == MADV_DONTNEED)
        run_hook(HOOK_BEFORE_UNMAP, addr, length);
    return __real_madvise(addr, length, advice);
}

/* ------------------------------------------------------------------------ */

#define PAGES 256u                 /* 1 MiB domains */
#define ZERO_FIRST 16u             /* gfns [16, 144) are written zero */
#define ZERO_END 144u
#define UNIQUE_END 160u            /* [144, 160) unique */
#define DUP_END 176u               /* [160, 176) two copies of 8 contents */

struct guest {
    mv_host *h;
    uint32_t id;
    uint8_t *ram;
    /* What each gfn must read: a page of this byte, except `stored` bytes
     * (page offset 0), which the hooks wrote. */
    uint8_t want[PAGES];
    int16_t stored[PAGES];         /* -1: none */
};

static uint8_t content_of(uint64_t g)
{
    if (g >= ZERO_FIRST && g < ZERO_END)
        return 0;
    if (g >= ZERO_END && g < UNIQUE_END)
        return (uint8_t)(0x40 + g - ZERO_END);
    if (g >= UNIQUE_END && g < DUP_END)
        return (uint8_t)(0x80 + (g - UNIQUE_END) % 8);
    return 0;
}

static struct mv_kernel_features probe_features(void)
{
    struct mv_kernel_features f;

    assert_ok(mv_probe_kernel(&f));
    return f;
}

/* A host with `c` (NULL: the tests' default), one domain whose RAM holds
 * zero, unique and duplicated pages; skips unless that domain's pages are
 * read where the guest maps them, when `need_guest_reads`. */
static void guest_make(struct guest *g, const struct mv_host_config *c, bool need_guest_reads)
{
    struct mv_kernel_features f;
    uint64_t size;

    memset(g, 0, sizeof(*g));
    if (c)
        assert_ok(mv_host_create(c, &g->h));
    else
        g->h = tu_host();
    g->id = tu_domain_with(g->h, "g", PAGES * MV_PAGE_SIZE, PAGES * MV_PAGE_SIZE, 1,
                           MV_POD_WAIT, 0);
    assert_ok(mv_domain_ram(g->h, g->id, (void **)&g->ram, &size));
    assert_ok(mv_probe_kernel(&f));
    if (need_guest_reads && (!tu_info(g->h, g->id).fault_in_thread || !f.wp_async ||
                             !f.pagemap_scan)) {
        mv_host_destroy(g->h);
        print_message("skipped: this domain's pages are not read where the guest maps "
                      "them (faults not resolved in the vCPUs' threads, or a kernel "
                      "without asynchronous write protection)\n");
        skip();
    }
    for (uint64_t p = 0; p < PAGES; p++) {
        g->stored[p] = -1;
        g->want[p] = content_of(p);
        if (p >= ZERO_FIRST && p < DUP_END)
            tu_guest_fill_page(g->ram + p * MV_PAGE_SIZE, g->want[p]);
    }
}

static void expect_stored(struct guest *g, uint64_t gfn, uint8_t value)
{
    g->stored[gfn] = value;
}

static struct mv_share_stats share_stats(mv_host *h)
{
    struct mv_share_stats s;

    assert_ok(mv_share_stats(h, &s));
    return s;
}

/* Every byte of every page, as the machine holds it and as the guest reads
 * it; the audits; then the host goes. */
static void guest_check_and_destroy(struct guest *g)
{
    uint8_t page[MV_PAGE_SIZE];

    for (uint64_t p = 0; p < PAGES; p++) {
        assert_ok(mv_domain_read_page(g->h, g->id, p, page));
        for (size_t i = 0; i < MV_PAGE_SIZE; i++) {
            uint8_t want = i == 0 && g->stored[p] >= 0 ? (uint8_t)g->stored[p] : g->want[p];

            if (page[i] != want)
                fail_msg("gfn %llu byte %zu: %#x, expected %#x", (unsigned long long)p, i,
                         page[i], want);
        }
        assert_int_equal(tu_guest_load(g->ram + p * MV_PAGE_SIZE + 1), g->want[p]);
        if (g->stored[p] >= 0)
            assert_int_equal(tu_guest_load(g->ram + p * MV_PAGE_SIZE), (uint8_t)g->stored[p]);
    }
    assert_ok(mv_share_audit(g->h));
    assert_ok(mv_domain_audit(g->h, g->id));
    assert_ok(mv_host_audit(g->h));
    mv_host_destroy(g->h);
}

static struct mv_scan_result scan(struct guest *g)
{
    struct mv_scan_result r;

    assert_ok(mv_share_scan(g->h, 0, &r));
    return r;
}

/* ------------------------------------------------------------------------ */

/* A domain whose faults raise SIGBUS in the faulting thread has its zero
 * pages freed from its own mapping, every one; a domain served by the fault
 * threads has them freed through the machine's view.  Both end the same. */
static void zero_pages_are_freed_where_the_guest_maps_them(void **state)
{
    struct mv_host_config c;
    struct mv_share_stats s;
    struct guest g;

    (void)state;
    guest_make(&g, NULL, true);
    scan(&g);
    s = share_stats(g.h);
    assert_int_equal(s.zero_reclaimed, ZERO_END - ZERO_FIRST);
    assert_int_equal(s.zero_in_guest, ZERO_END - ZERO_FIRST);
    assert_int_equal(s.guest_read_fallbacks, 0);
    assert_int_equal(s.saved_pages, 8);
    for (uint64_t p = ZERO_FIRST; p < ZERO_END; p++)
        assert_int_equal(tu_page_type(g.h, g.id, p), MV_PAGE_POD);
    /* The pages freed are the guest's again at its next touch. */
    tu_guest_store(g.ram + 20 * MV_PAGE_SIZE, 0x33);
    expect_stored(&g, 20, 0x33);
    guest_check_and_destroy(&g);

    tu_host_config(&c, 4 * GiB);
    c.fault_path = MV_FAULT_PATH_THREAD;
    guest_make(&g, &c, false);
    scan(&g);
    s = share_stats(g.h);
    assert_int_equal(s.zero_reclaimed, ZERO_END - ZERO_FIRST);
    assert_int_equal(s.zero_in_guest, 0);
    /* Its blocks are protected all the same (with asynchronous write
     * protection): the second pass reads no unwritten page. */
    if (probe_features().wp_async && probe_features().pagemap_scan)
        assert_int_equal(scan(&g).pages_unchanged, UNIQUE_END - ZERO_END);
    guest_check_and_destroy(&g);
}

/* A pass says where its time went: each part that had work to do took
 * time, the parts fit in the pass, and a pass that finds nothing new spends
 * nothing freeing or sharing. */
static void a_pass_says_where_its_time_went(void **state)
{
    struct mv_scan_result r;
    struct guest g;

    (void)state;
    guest_make(&g, NULL, true);
    r = scan(&g);
    assert_int_equal(r.pages_zero, ZERO_END - ZERO_FIRST);
    assert_int_equal(r.pages_shared, 16);
    assert_true(r.read_ns > 0);
    assert_true(r.zero_ns > 0);
    assert_true(r.index_ns > 0);
    assert_true(r.share_ns > 0);
    assert_true(r.read_ns + r.zero_ns + r.index_ns + r.share_ns <= r.elapsed_ns);
    r = scan(&g);
    assert_int_equal(r.pages_zero + r.pages_shared, 0);
    assert_true(r.read_ns > 0);
    assert_true(r.index_ns > 0);
    assert_int_equal(r.zero_ns, 0);
    assert_int_equal(r.share_ns, 0);
    assert_true(r.read_ns + r.index_ns <= r.elapsed_ns);
    /* A unique page becomes a copy of a shared one: skipped once as
     * volatile, then shared by the content index (no candidate to visit
     * again). */
    g.want[ZERO_END] = content_of(UNIQUE_END);
    tu_guest_fill_page(g.ram + ZERO_END * MV_PAGE_SIZE, g.want[ZERO_END]);
    assert_int_equal(scan(&g).volatile_skips, 1);
    r = scan(&g);
    assert_int_equal(r.pages_shared, 1);
    assert_true(r.share_ns > 0);
    assert_int_equal(r.zero_ns, 0);
    guest_check_and_destroy(&g);
}

/* A store just before the protecting scan: the read after it sees it, and
 * the page stays, with the store in it. */
static void a_store_before_the_protection_keeps_its_page(void **state)
{
    struct mv_share_stats s;
    struct guest g;

    (void)state;
    guest_make(&g, NULL, true);
    arm(HOOK_BEFORE_PROTECT, HOOK_STORE, g.ram + 40 * MV_PAGE_SIZE, 0x9c);
    expect_stored(&g, 40, 0x9c);
    scan(&g);
    assert_int_equal(hook_ran, 1);
    s = share_stats(g.h);
    assert_int_equal(s.zero_in_guest, ZERO_END - ZERO_FIRST - 1);
    assert_int_equal(s.zero_reclaimed, ZERO_END - ZERO_FIRST - 1);
    assert_int_equal(tu_page_type(g.h, g.id, 40), MV_PAGE_RAM);
    guest_check_and_destroy(&g);
}

/* A store after the read, before the unmap: the write protection let it
 * through and marked the page written, so the page stays. */
static void a_store_before_the_unmap_keeps_its_page(void **state)
{
    struct mv_share_stats s;
    struct guest g;

    (void)state;
    guest_make(&g, NULL, true);
    arm(HOOK_BEFORE_UNMAP, HOOK_STORE, g.ram + 41 * MV_PAGE_SIZE, 0x3e);
    expect_stored(&g, 41, 0x3e);
    scan(&g);
    assert_int_equal(hook_ran, 1);
    s = share_stats(g.h);
    assert_int_equal(s.zero_in_guest, ZERO_END - ZERO_FIRST - 1);
    assert_int_equal(tu_page_type(g.h, g.id, 41), MV_PAGE_RAM);
    guest_check_and_destroy(&g);
}

/* A store after the block's protection, before its page is read (its
 * chunk comes later): the read sees it, so the page stays with the store
 * in it; it was written after the protection, so the next pass reads it
 * again, and the one after does not. */
static void a_store_after_the_protection_is_read_now_and_again(void **state)
{
    struct mv_scan_result r;
    struct guest g;

    (void)state;
    guest_make(&g, NULL, true);
    arm(HOOK_AFTER_PROTECT, HOOK_STORE, g.ram + 140 * MV_PAGE_SIZE, 0x5d);
    expect_stored(&g, 140, 0x5d);
    scan(&g);
    assert_int_equal(hook_ran, 1);
    assert_int_equal(share_stats(g.h).zero_in_guest, ZERO_END - ZERO_FIRST - 1);
    assert_int_equal(tu_page_type(g.h, g.id, 140), MV_PAGE_RAM);
    r = scan(&g);
    assert_true(r.pages_scanned > 1);
    assert_int_equal(r.pages_unchanged, r.pages_scanned - 1);
    r = scan(&g);
    assert_int_equal(r.pages_unchanged, r.pages_scanned);
    guest_check_and_destroy(&g);
}

/* A page the kernel took out of the guest's page table before the scan:
 * the protecting scan says so, and that page is read through the machine's
 * view, without a fault. */
static void a_page_missing_from_the_guest_mapping_is_read_elsewhere(void **state)
{
    struct mv_share_stats s;
    struct guest g;

    (void)state;
    guest_make(&g, NULL, true);
    assert_int_equal(__real_madvise(g.ram + 50 * MV_PAGE_SIZE, MV_PAGE_SIZE, MADV_DONTNEED),
                     0);
    assert_int_equal(__real_madvise(g.ram + 150 * MV_PAGE_SIZE, MV_PAGE_SIZE,
                                    MADV_DONTNEED), 0);
    scan(&g);
    s = share_stats(g.h);
    assert_int_equal(s.guest_read_fallbacks, 0);
    assert_int_equal(s.zero_reclaimed, ZERO_END - ZERO_FIRST);
    assert_int_equal(s.zero_in_guest, ZERO_END - ZERO_FIRST - 1);
    assert_int_equal(tu_page_type(g.h, g.id, 50), MV_PAGE_POD);
    assert_int_equal(tu_page_type(g.h, g.id, 150), MV_PAGE_RAM);
    guest_check_and_destroy(&g);
}

/* A page that leaves the guest's page table between the protecting scan
 * and the read: the read fails there (SIGBUS, back to the guard), and the
 * chunk is read through the machine's view instead. */
static void a_page_gone_under_the_read_leaves_the_chunk_to_the_machine_view(void **state)
{
    struct mv_share_stats s;
    struct guest g;

    (void)state;
    guest_make(&g, NULL, true);
    arm(HOOK_AFTER_PROTECT, HOOK_DROP, g.ram + 60 * MV_PAGE_SIZE, 0);
    scan(&g);
    assert_int_equal(hook_ran, 1);
    s = share_stats(g.h);
    assert_int_equal(s.guest_read_fallbacks, 1);
    assert_int_equal(s.zero_reclaimed, ZERO_END - ZERO_FIRST);
    assert_true(s.zero_in_guest < ZERO_END - ZERO_FIRST);
    assert_int_equal(tu_page_type(g.h, g.id, 60), MV_PAGE_POD);
    guest_check_and_destroy(&g);
}

/* The system calls of the way through the guest's mapping, each failing:
 * the zero pages are freed through the machine's view all the same. */
static void failed_calls_leave_the_zero_pages_to_apply(void **state)
{
    static const struct {
        enum mv__os_op op;
        unsigned skip;
    } cases[] = {
        { MV_OS_PAGEMAP_SCAN, 0 },        /* protecting the block */
        { MV_OS_ZAP, 0 },                 /* unmapping its zero pages */
        { MV_OS_PAGEMAP_SCAN, 1 },        /* asking which were written */
        { MV_OS_PUNCH, 0 },               /* freeing them */
        { MV_OS_UFFD_REGISTER, 0 },       /* registering for protection */
    };

    (void)state;
    for (size_t i = 0; i < MV_ARRAY_SIZE(cases); i++) {
        struct mv_share_stats s;
        struct guest g;

        guest_make(&g, NULL, true);
        mv__os_inject(cases[i].op, EIO, cases[i].skip, 1);
        scan(&g);
        assert_int_equal(mv__os_injection_left(cases[i].op), 0);
        s = share_stats(g.h);
        assert_int_equal(s.zero_reclaimed, ZERO_END - ZERO_FIRST);
        assert_true(s.zero_in_guest < ZERO_END - ZERO_FIRST);
        if (cases[i].op == MV_OS_UFFD_REGISTER ||
            (cases[i].op == MV_OS_PAGEMAP_SCAN && cases[i].skip == 0)) {
            assert_int_equal(s.zero_in_guest, 0);
            /* Not tried again: a second scan frees nothing there either. */
            tu_guest_fill_page(g.ram + 30 * MV_PAGE_SIZE, 0);
            scan(&g);
            assert_int_equal(share_stats(g.h).zero_in_guest, 0);
            assert_int_equal(share_stats(g.h).zero_reclaimed, ZERO_END - ZERO_FIRST + 1);
        }
        guest_check_and_destroy(&g);
    }
}

/* A second pass reads no page the guest has not written since the first:
 * the protecting scan says which were, and the others keep the hash read
 * then.  A guest read changes nothing; a guest write, or the hypervisor
 * changing a page (nominated, then unshared: a new mapping), has it read. */
static void pages_not_written_since_their_last_read_are_not_read_again(void **state)
{
    const uint64_t unique = UNIQUE_END - ZERO_END;
    struct mv_scan_result r;
    struct guest g;
    mv_share_handle handle;

    (void)state;
    guest_make(&g, NULL, true);
    r = scan(&g);
    assert_int_equal(r.pages_unchanged, 0);
    /* Left populated: the unique pages (the zero ones were freed, the
     * duplicates shared). */
    /* One of them leaves the guest's page table (the kernel reclaiming it,
     * tmem's aging): its entry keeps the protection, so it is known
     * unwritten, and not read either. */
    assert_int_equal(__real_madvise(g.ram + (ZERO_END + 6) * MV_PAGE_SIZE, MV_PAGE_SIZE,
                                    MADV_DONTNEED), 0);
    r = scan(&g);
    assert_int_equal(r.pages_scanned, unique);
    assert_int_equal(r.pages_unchanged, unique);
    assert_int_equal(tu_guest_load(g.ram + (ZERO_END + 2) * MV_PAGE_SIZE + 5),
                     g.want[ZERO_END + 2]);
    tu_guest_store(g.ram + (ZERO_END + 1) * MV_PAGE_SIZE, 0x77);
    expect_stored(&g, ZERO_END + 1, 0x77);
    r = scan(&g);
    assert_int_equal(r.pages_unchanged, unique - 1);
    assert_int_equal(r.volatile_skips, 1);
    assert_ok(mv_share_nominate(g.h, g.id, ZERO_END + 3, &handle));
    assert_ok(mv_share_unshare(g.h, g.id, ZERO_END + 3));
    r = scan(&g);
    assert_int_equal(r.pages_unchanged, unique - 1);
    assert_int_equal(share_stats(g.h).scan_unchanged, 3 * unique - 2);
    guest_check_and_destroy(&g);
}

/* What the scanner knew is void where the hypervisor changes a page behind
 * a protected entry (its bytes rewritten in the machine memory, the event
 * raised), and everywhere once a mechanism has watched the domain's writes
 * (it protects pages again without the scanner reading them). */
static void the_hypervisor_s_changes_void_what_the_scanner_knew(void **state)
{
    const uint64_t unique = UNIQUE_END - ZERO_END, changed = ZERO_END + 4;
    uint8_t page[MV_PAGE_SIZE];
    struct mv_scan_result r;
    struct mv_domain *d;
    struct guest g;

    (void)state;
    guest_make(&g, NULL, true);
    scan(&g);
    assert_int_equal(scan(&g).pages_unchanged, unique);
    d = mv__domain_get(g.h, g.id);
    assert_non_null(d);
    mv__mutex_lock(&d->lock);
    g.want[changed] = 0xd7;
    memset(page, g.want[changed], sizeof(page));
    assert_int_equal(pwrite(g.h->machine.memfd, page, sizeof(page),
                            (off_t)((d->base_mfn + changed) << MV_PAGE_SHIFT)),
                     (ssize_t)sizeof(page));
    mv__domain_pages_changed(d, changed, 1);
    mv__mutex_unlock(&d->lock);
    r = scan(&g);
    assert_int_equal(r.pages_unchanged, unique - 1);
    assert_int_equal(r.volatile_skips, 1);

    /* A watcher that protects a written page again: the scan cannot tell
     * it was written, so it reads every page. */
    tu_guest_store(g.ram + (ZERO_END + 5) * MV_PAGE_SIZE, 0x5a);
    expect_stored(&g, ZERO_END + 5, 0x5a);
    mv__mutex_lock(&d->lock);
    assert_ok(mv__domain_writes_watched(d, true));
    {
        uint8_t st[UNIQUE_END - ZERO_END];

        assert_ok(mv__ram_protect_scan(d, ZERO_END, unique, st));
    }
    assert_ok(mv__domain_writes_watched(d, false));
    mv__mutex_unlock(&d->lock);
    mv__domain_put(d);
    r = scan(&g);
    assert_int_equal(r.pages_unchanged, 0);
    assert_int_equal(r.volatile_skips, 1);
    guest_check_and_destroy(&g);
}

/* With the dirty log on, its write protection is its own: sharing reads
 * through the machine's view, and every page written before the scan is
 * still reported. */
static void the_dirty_log_keeps_its_protection(void **state)
{
    uint64_t dirty[PAGES / 64], zero[PAGES / 64];
    struct guest g;

    (void)state;
    guest_make(&g, NULL, true);
    assert_ok(mv_logdirty_enable(g.h, g.id));
    for (uint64_t p = ZERO_FIRST; p < DUP_END; p++)
        tu_guest_fill_page(g.ram + p * MV_PAGE_SIZE, g.want[p]);
    scan(&g);
    assert_int_equal(share_stats(g.h).zero_in_guest, 0);
    assert_int_equal(share_stats(g.h).zero_reclaimed, ZERO_END - ZERO_FIRST);
    memset(dirty, 0, sizeof(dirty));
    assert_ok(mv_logdirty_clean(g.h, g.id, dirty, zero, PAGES / 64));
    for (uint64_t p = ZERO_FIRST; p < DUP_END; p++)
        if (!(dirty[p / 64] & (1ull << (p % 64))))
            fail_msg("gfn %llu was written and is not reported dirty",
                     (unsigned long long)p);
    assert_ok(mv_logdirty_disable(g.h, g.id));
    /* Off again: the next scan reads where the guest maps its pages, every
     * one of them (the dirty log protected them again meanwhile, so the
     * scan cannot tell which were written). */
    tu_guest_fill_page(g.ram + 30 * MV_PAGE_SIZE, 0);
    assert_int_equal(scan(&g).pages_unchanged, 0);
    assert_int_equal(share_stats(g.h).zero_in_guest, 1);
    guest_check_and_destroy(&g);
}

static const struct CMUnitTest cases[] = {
    cmocka_unit_test(zero_pages_are_freed_where_the_guest_maps_them),
    cmocka_unit_test(a_pass_says_where_its_time_went),
    cmocka_unit_test(a_store_before_the_protection_keeps_its_page),
    cmocka_unit_test(a_store_before_the_unmap_keeps_its_page),
    cmocka_unit_test(a_page_missing_from_the_guest_mapping_is_read_elsewhere),
    cmocka_unit_test(a_page_gone_under_the_read_leaves_the_chunk_to_the_machine_view),
    cmocka_unit_test(a_store_after_the_protection_is_read_now_and_again),
    cmocka_unit_test(failed_calls_leave_the_zero_pages_to_apply),
    cmocka_unit_test(pages_not_written_since_their_last_read_are_not_read_again),
    cmocka_unit_test(the_hypervisor_s_changes_void_what_the_scanner_knew),
    cmocka_unit_test(the_dirty_log_keeps_its_protection),
};

TU_MAIN(cases)

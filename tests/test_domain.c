/*
 * test_domain.c - domain life cycle and the treatment of bad input: every
 * invalid call fails with the documented errno, explains itself, and leaves
 * the domain exactly as it was.
 */
#include "testutil.h"
#include "memvisor-guest.h"

#include "internal.h"

static void create_rejects_bad_config(void **state)
{
    struct mv_domain_config c;
    mv_host *h = tu_host();
    uint32_t id;

    (void)state;
    mv_domain_config_init(&c);
    c.maxmem_bytes = 64 * MiB;
    c.target_bytes = 16 * MiB;
    assert_err(mv_domain_create(h, &c, &id), -EINVAL); /* empty name */
    memset(c.name, 'x', sizeof(c.name));
    assert_err(mv_domain_create(h, &c, &id), -EINVAL); /* unterminated */
    snprintf(c.name, sizeof(c.name), "has space");
    assert_err(mv_domain_create(h, &c, &id), -EINVAL);
    snprintf(c.name, sizeof(c.name), "ok");
    c.maxmem_bytes = 0;
    assert_err(mv_domain_create(h, &c, &id), -EINVAL);
    c.maxmem_bytes = 64 * MiB + 1;
    assert_err(mv_domain_create(h, &c, &id), -EINVAL);
    c.maxmem_bytes = 64 * MiB;
    c.target_bytes = 128 * MiB;
    assert_err(mv_domain_create(h, &c, &id), -EINVAL);
    assert_non_null(strstr(mv_last_error(), "exceeds maxmem"));
    c.target_bytes = 16 * MiB;
    c.vcpus = 0;
    assert_err(mv_domain_create(h, &c, &id), -EINVAL);
    c.vcpus = MV_MAX_VCPUS + 1;
    assert_err(mv_domain_create(h, &c, &id), -EINVAL);
    c.vcpus = 1;
    c.pod_policy = (enum mv_pod_policy)7;
    assert_err(mv_domain_create(h, &c, &id), -EINVAL);
    c.pod_policy = MV_POD_WAIT;
    c.pod_fault_around = MV_POD_FAULT_AROUND_MAX + 1;
    assert_err(mv_domain_create(h, &c, &id), -EINVAL);
    assert_non_null(strstr(mv_last_error(), "pod_fault_around"));
    c.pod_fault_around = 0;
    c.maxmem_bytes = 4096 * GiB; /* larger than the 1 TiB machine */
    c.target_bytes = 0;
    assert_err(mv_domain_create(h, &c, &id), -E2BIG);
    /* Refused before its p2m is allocated: a byte per page of 1 PiB is
     * not there to allocate, and the answer is still E2BIG. */
    c.maxmem_bytes = 1024 * 1024 * GiB;
    assert_err(mv_domain_create(h, &c, &id), -E2BIG);
    assert_int_equal(mv_domain_list(h, NULL, 0), 0);
    assert_ok(mv_host_audit(h));
    mv_host_destroy(h);
}

static void names_are_unique_and_ids_never_reused(void **state)
{
    mv_host *h = tu_host();
    uint32_t a, b, c, found, ids[4];
    struct mv_domain_config cfg;

    (void)state;
    a = tu_domain(h, "alpha", 64 * MiB, 16 * MiB);
    b = tu_domain(h, "beta", 64 * MiB, 16 * MiB);
    assert_int_not_equal(a, b);
    mv_domain_config_init(&cfg);
    snprintf(cfg.name, sizeof(cfg.name), "alpha");
    cfg.maxmem_bytes = 64 * MiB;
    assert_err(mv_domain_create(h, &cfg, &c), -EEXIST);
    assert_ok(mv_domain_lookup(h, "beta", &found));
    assert_int_equal(found, b);
    assert_err(mv_domain_lookup(h, "gamma", &found), -ESRCH);
    assert_int_equal(mv_domain_list(h, ids, 4), 2);
    assert_int_equal(ids[0], a);
    assert_int_equal(ids[1], b);
    assert_ok(mv_domain_destroy(h, a));
    assert_err(mv_domain_destroy(h, a), -ESRCH);
    c = tu_domain(h, "alpha", 64 * MiB, 16 * MiB);
    assert_true(c > b);
    assert_ok(mv_host_audit(h));
    mv_host_destroy(h);
}

static void unknown_domain_is_esrch_everywhere(void **state)
{
    mv_host *h = tu_host();
    struct mv_domain_info info;
    struct mv_workload_config w;
    enum mv_page_type t;
    uint64_t gfn = 0, size;
    char page[MV_PAGE_SIZE];
    void *ram;

    (void)state;
    mv_workload_config_init(&w, MV_WORKLOAD_SCRUB);
    assert_int_equal(mv_domain_info(h, 42, &info), -ESRCH);
    assert_int_equal(mv_domain_pause(h, 42), -ESRCH);
    assert_int_equal(mv_domain_unpause(h, 42), -ESRCH);
    assert_int_equal(mv_domain_ram(h, 42, &ram, &size), -ESRCH);
    assert_int_equal(mv_domain_set_target(h, 42, 0), -ESRCH);
    assert_int_equal(mv_domain_decrease_reservation(h, 42, &gfn, 1), -ESRCH);
    assert_int_equal(mv_domain_increase_reservation(h, 42, &gfn, 1), -ESRCH);
    assert_int_equal(mv_domain_page_type(h, 42, 0, &t), -ESRCH);
    assert_int_equal(mv_domain_read_page(h, 42, 0, page), -ESRCH);
    assert_int_equal(mv_domain_audit(h, 42), -ESRCH);
    assert_int_equal(mv_domain_reclaim_zero(h, 42, 0, NULL), -ESRCH);
    assert_int_equal(mv_workload_start(h, 42, &w), -ESRCH);
    assert_int_equal(mv_oracle_verify(h, 42, NULL), -ESRCH);
    assert_int_equal(mv_guest_balloon(h, 42, 4096), -ESRCH);
    assert_string_equal(mv_strerror(-ESRCH), "no such domain");
    mv_host_destroy(h);
}

static void boots_ballooned(void **state)
{
    mv_host *h = tu_host();
    uint32_t id = tu_domain(h, "boot", 256 * MiB, 64 * MiB);
    struct mv_domain_info i = tu_info(h, id);
    enum mv_page_type t;
    uint64_t size;
    void *ram;

    (void)state;
    assert_int_equal(i.maxmem_pages, 65536);
    assert_int_equal(i.target_pages, 16384);
    assert_int_equal(i.populated_pages, 0);
    assert_int_equal(i.pod_pages, 65536);
    assert_int_equal(i.state, MV_DOMAIN_RUNNING);
    assert_ok(mv_domain_ram(h, id, &ram, &size));
    assert_int_equal(size, 256 * MiB);
    assert_int_equal((uintptr_t)ram % (2 * MiB), 0);
    assert_ok(mv_domain_page_type(h, id, 65535, &t));
    assert_int_equal(t, MV_PAGE_POD);
    assert_err(mv_domain_page_type(h, id, 65536, &t), -EINVAL);
    assert_ok(mv_domain_audit(h, id));
    mv_host_destroy(h);
}

static void pause_and_unpause_errors(void **state)
{
    mv_host *h = tu_host();
    uint32_t id = tu_domain(h, "p", 64 * MiB, 16 * MiB);

    (void)state;
    assert_err(mv_domain_unpause(h, id), -EINVAL);
    assert_ok(mv_domain_pause(h, id));
    assert_int_equal(tu_info(h, id).state, MV_DOMAIN_PAUSED);
    assert_err(mv_domain_pause(h, id), -EALREADY);
    assert_ok(mv_domain_unpause(h, id));
    assert_int_equal(tu_info(h, id).state, MV_DOMAIN_RUNNING);
    mv_host_destroy(h);
}

static void reservation_rejects_bad_lists(void **state)
{
    mv_host *h = tu_host();
    uint32_t id = tu_domain(h, "r", 64 * MiB, 16 * MiB);
    struct mv_domain_info before, after;
    uint64_t past[] = { 1, 16384 }, twice[] = { 3, 4, 3 }, ok[] = { 7, 9 };

    (void)state;
    before = tu_info(h, id);
    assert_err(mv_domain_decrease_reservation(h, id, past, 2), -EINVAL);
    assert_non_null(strstr(mv_last_error(), "0x4000"));
    assert_err(mv_domain_decrease_reservation(h, id, twice, 3), -EINVAL);
    assert_err(mv_domain_increase_reservation(h, id, ok, 2), -EINVAL); /* not ballooned */
    assert_err(mv_domain_decrease_reservation(h, id, NULL, 2), -EINVAL);
    after = tu_info(h, id);
    assert_int_equal(after.ballooned_pages, before.ballooned_pages);
    assert_int_equal(after.pod_pages, before.pod_pages);

    assert_int_equal(mv_domain_decrease_reservation(h, id, ok, 2), 2);
    assert_int_equal(tu_info(h, id).ballooned_pages, 2);
    assert_err(mv_domain_decrease_reservation(h, id, ok, 1), -EINVAL); /* already */
    assert_int_equal(mv_domain_increase_reservation(h, id, ok, 2), 2);
    assert_int_equal(tu_info(h, id).ballooned_pages, 0);
    assert_ok(mv_domain_audit(h, id));
    mv_host_destroy(h);
}

static void read_page_does_not_populate(void **state)
{
    mv_host *h = tu_host();
    uint32_t id = tu_domain(h, "rp", 64 * MiB, 16 * MiB);
    uint64_t gfn = 100;
    unsigned char page[MV_PAGE_SIZE];

    (void)state;
    memset(page, 0xaa, sizeof(page));
    assert_ok(mv_domain_read_page(h, id, gfn, page));
    for (size_t i = 0; i < sizeof(page); i++)
        assert_int_equal(page[i], 0);
    assert_int_equal(tu_info(h, id).populated_pages, 0);
    assert_int_equal(mv_domain_decrease_reservation(h, id, &gfn, 1), 1);
    assert_err(mv_domain_read_page(h, id, gfn, page), -ENODATA);
    assert_err(mv_domain_read_page(h, id, 1ull << 40, page), -EINVAL);
    mv_host_destroy(h);
}

static void set_target_validation(void **state)
{
    mv_host *h = tu_host();
    uint32_t id = tu_domain(h, "t", 64 * MiB, 16 * MiB);

    (void)state;
    assert_err(mv_domain_set_target(h, id, 128 * MiB), -EINVAL);
    assert_err(mv_domain_set_target(h, id, 4097), -EINVAL);
    assert_int_equal(tu_info(h, id).target_pages, 4096);
    assert_ok(mv_domain_set_target(h, id, 64 * MiB));
    assert_int_equal(tu_info(h, id).target_pages, 16384);
    assert_ok(mv_domain_set_target(h, id, 0));
    assert_int_equal(tu_info(h, id).target_pages, 0);
    mv_host_destroy(h);
}

static void host_budget_validation(void **state)
{
    mv_host *h = tu_host();
    struct mv_host_stats s;

    (void)state;
    assert_err(mv_host_set_budget(h, 0), -EINVAL);
    assert_err(mv_host_set_budget(h, 4097), -EINVAL);
    assert_ok(mv_host_set_budget(h, 64 * MiB));
    assert_ok(mv_host_stats(h, &s));
    assert_int_equal(s.budget_pages, 16384);
    assert_int_equal(s.populated_pages, 0);
    mv_host_destroy(h);
}

/* memvisor's own tables per domain are counted, grow with maxmem, and sum
 * into the host's figure. */
static void metadata_is_counted(void **state)
{
    mv_host *h = tu_host();
    uint32_t small = tu_domain(h, "small", 1 * GiB, 64 * MiB);
    uint32_t big = tu_domain(h, "big", 4 * GiB, 64 * MiB);
    uint64_t pages = 1 * GiB / MV_PAGE_SIZE;
    struct mv_domain_info s = tu_info(h, small), b = tu_info(h, big);
    struct mv_host_stats hs;

    (void)state;
    /* A p2m byte, an oracle word and a balloon byte per page at least, and
     * the dirty bitmap every domain has from its creation. */
    assert_true(s.metadata_bytes >= pages * 6 + pages / 8);
    assert_true(s.metadata_bytes < pages * 16);
    assert_true(b.metadata_bytes >= 4 * s.metadata_bytes - 4 * MiB);
    assert_ok(mv_host_stats(h, &hs));
    assert_true(hs.metadata_bytes >= s.metadata_bytes + b.metadata_bytes);
    assert_ok(mv_host_audit(h));
    mv_host_destroy(h);
}

static void host_rejects_bad_config(void **state)
{
    struct mv_host_config c;
    mv_host *h = NULL;

    (void)state;
    mv_host_config_init(&c);
    c.budget_bytes = 4097;
    assert_err(mv_host_create(&c, &h), -EINVAL);
    mv_host_config_init(&c);
    c.machine_bytes = 3 * MiB;
    assert_err(mv_host_create(&c, &h), -EINVAL);
    mv_host_config_init(&c);
    c.fault_threads = 1000;
    assert_err(mv_host_create(&c, &h), -EINVAL);
    mv_host_config_init(&c);
    c.fault_mode = (enum mv_fault_mode)7;
    assert_err(mv_host_create(&c, &h), -EINVAL);
    assert_non_null(strstr(mv_last_error(), "fault_mode"));
    mv_host_config_init(&c);
    c.fault_path = (enum mv_fault_path)5;
    assert_err(mv_host_create(&c, &h), -EINVAL);
    assert_non_null(strstr(mv_last_error(), "fault_path"));
    /* CPU lists: syntax, order, range, and CPUs this process may not use. */
    static const char *const bad_cpus[] = { "x", "1,", ",1", "0-", "3-1", "1 2", "0--1",
                                            "99999", "1023" };
    for (size_t i = 0; i < sizeof(bad_cpus) / sizeof(bad_cpus[0]); i++) {
        mv_host_config_init(&c);
        c.fault_cpus = bad_cpus[i];
        assert_err(mv_host_create(&c, &h), -EINVAL);
        assert_non_null(strstr(mv_last_error(), "fault_cpus"));
    }
    assert_null(h);
}

static void probe_reports_features(void **state)
{
    struct mv_kernel_features f;
    int rc = mv_probe_kernel(&f);

    (void)state;
    assert_true(f.release[0] != '\0');
    if (rc < 0) {
        assert_true(mv_last_error()[0] != '\0');
        print_message("skipped: %s\n", mv_last_error());
        skip();
    }
    assert_true(f.uffd_available);
    assert_true(f.missing_shmem && f.minor_shmem);
    assert_true(f.max_map_count > 0);
    assert_true(f.mem_available > 0);
}

/*
 * The built-in guests are not in the core's list of mechanisms: they
 * register themselves (this program calls them, so it links them) and come
 * after the built-in ones.  Registration closes when the first host is
 * created; a registered mechanism's index stays its own.
 */
static void mechanisms_register_before_the_first_host(void **state)
{
    static struct mv__mechanism extra[MV_MECHANISMS_MAX], late = { .name = "late" };
    size_t count = mv__mechanism_count;
    const struct mv__mechanism *guests;
    mv_host *h;
    uint32_t id;
    int rc;

    (void)state;
    assert_true(count >= 2 && count <= MV_MECHANISMS_MAX);
    guests = mv__mechanisms[count - 1];
    assert_string_equal(guests->name, "built-in guests");
    assert_int_equal(mv__mechanism_register(guests), (int)count - 1);
    assert_int_equal(mv__mechanism_register(NULL), -EINVAL);
    for (size_t i = 0; i < MV_MECHANISMS_MAX; i++)
        extra[i].name = "extra";
    /* Run alone, this case has created no host yet: the table fills up.
     * After the other cases of this program it is closed already. */
    rc = mv__mechanism_register(&extra[0]);
    if (rc != -EBUSY) {
        assert_int_equal(rc, (int)count);
        for (size_t i = 1; count + i < MV_MECHANISMS_MAX; i++)
            assert_int_equal(mv__mechanism_register(&extra[i]), (int)(count + i));
        assert_int_equal(mv__mechanism_register(&extra[MV_MECHANISMS_MAX - 1]), -ENOSPC);
        assert_int_equal(mv__mechanism_count, MV_MECHANISMS_MAX);
    }
    h = tu_host();
    assert_int_equal(mv__mechanism_register(&late), -EBUSY);
    assert_int_equal(mv__mechanism_register(guests), (int)count - 1);
    /* Mechanisms without hooks change nothing; the guests still run. */
    id = tu_domain(h, "d", 16 * MiB, 16 * MiB);
    {
        struct mv_workload_config w;

        mv_workload_config_init(&w, MV_WORKLOAD_SCRUB);
        tu_run(h, id, &w);
        tu_verify(h, id);
    }
    mv_host_destroy(h);
}

/* Domain ids wrap past the largest without reusing one still in use, and
 * every domain stays found by its id (the table is searched by halves). */
static void domain_ids_wrap_past_those_in_use(void **state)
{
    mv_host *h = tu_host();
    uint32_t first = tu_domain(h, "first", 2 * MiB, 2 * MiB);
    uint32_t second = tu_domain(h, "second", 2 * MiB, 2 * MiB);
    uint32_t ids[4];
    struct mv_domain_info info;

    (void)state;
    assert_int_equal(first, 1);
    assert_int_equal(second, 2);
    h->next_domid = UINT32_MAX - 2;
    for (int i = 0; i < 4; i++) {
        char name[16];

        snprintf(name, sizeof(name), "wrap%d", i);
        ids[i] = tu_domain(h, name, 2 * MiB, 2 * MiB);
    }
    /* UINT32_MAX is the host's, 1 and 2 are taken. */
    assert_int_equal(ids[0], UINT32_MAX - 2);
    assert_int_equal(ids[1], UINT32_MAX - 1);
    assert_int_equal(ids[2], 3);
    assert_int_equal(ids[3], 4);
    assert_ok(mv_host_audit(h));
    assert_ok(mv_domain_destroy(h, second));
    assert_int_equal(tu_domain(h, "again", 2 * MiB, 2 * MiB), 5);
    h->next_domid = 1;
    assert_int_equal(tu_domain(h, "reused", 2 * MiB, 2 * MiB), 2);
    assert_ok(mv_host_audit(h));
    for (int i = 0; i < 4; i++) {
        assert_ok(mv_domain_info(h, ids[i], &info));
        assert_int_equal(info.domid, ids[i]);
    }
    assert_int_equal(mv_domain_info(h, UINT32_MAX, &info), -ESRCH);
    assert_int_equal(mv_domain_info(h, 0, &info), -ESRCH);
    mv_host_destroy(h);
}

static const struct CMUnitTest cases[] = {
    cmocka_unit_test(domain_ids_wrap_past_those_in_use),
    cmocka_unit_test(create_rejects_bad_config),
    cmocka_unit_test(names_are_unique_and_ids_never_reused),
    cmocka_unit_test(unknown_domain_is_esrch_everywhere),
    cmocka_unit_test(boots_ballooned),
    cmocka_unit_test(pause_and_unpause_errors),
    cmocka_unit_test(reservation_rejects_bad_lists),
    cmocka_unit_test(read_page_does_not_populate),
    cmocka_unit_test(set_target_validation),
    cmocka_unit_test(host_budget_validation),
    cmocka_unit_test(host_rejects_bad_config),
    cmocka_unit_test(metadata_is_counted),
    cmocka_unit_test(probe_reports_features),
    cmocka_unit_test(mechanisms_register_before_the_first_host),
};

TU_MAIN(cases)

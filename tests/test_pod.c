/*
 * test_pod.c - populate-on-demand end to end: first-touch population (2 MiB
 * and 4 KiB), the zero sweep, both out-of-memory policies, ballooning,
 * pause, many domains at once, destroy with faults pending and injected
 * system-call failures; faults resolved in the faulting vCPU's own thread
 * (fault_path auto) and handed to the fault threads from it, fault-around.  Every case that runs a guest ends with the content
 * oracle and the audit.
 */
#include "testutil.h"
#include "memvisor-guest.h"

#include "internal.h"

#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

/* ------------------------------------------------------------------------ */
/* A test thread touching guest RAM the way an embedder's vCPU would, which
 * survives the SIGBUS of a crashed or destroyed domain.                     */

static _Thread_local sigjmp_buf *toucher_jump;

/* As an embedder's handler must: the library's faults first. */
static void toucher_signal(int sig, siginfo_t *info, void *context)
{
    if (sig == SIGBUS && mv_sigbus_handled(sig, info, context))
        return;
    if (toucher_jump)
        siglongjmp(*toucher_jump, 1);
    abort();
}

/* Installed before the host, so the library's SIGBUS handler chains to it.
 * SIGSEGV too: a thread still blocked on a fault when its domain is
 * destroyed may run only after the RAM range is unmapped. */
static void install_toucher_handler(void)
{
    struct sigaction sa;

    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = toucher_signal;
    sa.sa_flags = SA_SIGINFO;
    sigaction(SIGBUS, &sa, NULL);
    sigaction(SIGSEGV, &sa, NULL);
}

struct toucher {
    mv_host *host;      /* set: the thread enters domid as a vCPU first */
    uint32_t domid;
    volatile uint8_t *address;
    bool reads;         /* loads from the address instead of storing */
    atomic_int state; /* 0 running, 1 touched, 2 got a signal */
    pthread_t thread;
};

static void *toucher_main(void *arg)
{
    struct toucher *t = arg;
    sigjmp_buf jump;

    toucher_jump = &jump;
    if (t->host)
        assert_true(mv_vcpu_enter(t->host, t->domid) >= 0);
    if (sigsetjmp(jump, 1) == 0) {
        if (t->reads)
            (void)*t->address;
        else
            *t->address = 0x5a;
        atomic_store(&t->state, 1);
    } else {
        atomic_store(&t->state, 2);
    }
    toucher_jump = NULL;
    mv_vcpu_exit();
    return NULL;
}

/* A thread that stores to (or, with `reads`, loads from) `address`; a
 * vCPU of domain id when `h` is given. */
static void start_toucher(struct toucher *t, mv_host *h, uint32_t id, void *address,
                          bool reads)
{
    t->host = h;
    t->domid = id;
    t->reads = reads;
    t->address = address;
    atomic_store(&t->state, 0);
    assert_int_equal(pthread_create(&t->thread, NULL, toucher_main, t), 0);
}

static void touch_async(struct toucher *t, void *address)
{
    start_toucher(t, NULL, 0, address, false);
}

/* Touch and wait; returns the toucher's final state. */
static int touch(void *address)
{
    struct toucher t;

    touch_async(&t, address);
    pthread_join(t.thread, NULL);
    return atomic_load(&t.state);
}

/* The same from a thread that is a vCPU of domain id. */
static void vcpu_touch_async(struct toucher *t, mv_host *h, uint32_t id, void *address)
{
    start_toucher(t, h, id, address, false);
}

static int vcpu_touch(mv_host *h, uint32_t id, void *address)
{
    struct toucher t;

    vcpu_touch_async(&t, h, id, address);
    pthread_join(t.thread, NULL);
    return atomic_load(&t.state);
}

static uint8_t *ram_of(mv_host *h, uint32_t id)
{
    uint64_t size;
    void *ram;

    assert_ok(mv_domain_ram(h, id, &ram, &size));
    return ram;
}

static void wait_for_held(mv_host *h, uint32_t id, uint64_t n)
{
    tu_wait_until(tu_info(h, id).held_faults >= n);
}

/* Pages the domain's workload has written so far (it may still run). */
static uint64_t pages_done(mv_host *h, uint32_t id)
{
    struct mv_workload_status st;
    int rc = mv_workload_wait(h, id, 0, &st);

    if (rc != -ETIMEDOUT)
        assert_ok(rc);
    return st.pages_done;
}

/* Writes by another domain's vCPUs that a check of something that must
 * not happen waits for: time in which the other threads had the CPU,
 * however loaded the machine, rather than a fixed sleep. */
#define CONTROL_PAGES 50000u

/* Run a workload on a fresh control domain until its vCPUs have written
 * CONTROL_PAGES pages, taking faults through the fault service meanwhile. */
static void run_control_domain(mv_host *h, const char *name)
{
    uint32_t ctl = tu_domain(h, name, 16 * MiB, 16 * MiB);
    struct mv_workload_config w;

    mv_workload_config_init(&w, MV_WORKLOAD_RANDOM);
    assert_ok(mv_workload_start(h, ctl, &w));
    tu_wait_until(pages_done(h, ctl) >= CONTROL_PAGES);
    assert_ok(mv_workload_stop(h, ctl));
    tu_verify(h, ctl);
    assert_ok(mv_domain_destroy(h, ctl));
}

/* ------------------------------------------------------------------------ */

static void first_touch_populates_whole_block(void **state)
{
    mv_host *h = tu_host();
    uint32_t id = tu_domain(h, "blk", 64 * MiB, 16 * MiB);
    uint8_t *ram = ram_of(h, id);
    struct mv_domain_info i;
    enum mv_page_type t;

    (void)state;
    assert_int_equal(touch(ram + 3 * MiB + 5), 1);
    i = tu_info(h, id);
    assert_int_equal(i.populated_pages, MV_BLOCK_PAGES);
    assert_int_equal(i.populated_2m, 1);
    assert_int_equal(i.faults, 1);
    assert_ok(mv_domain_page_type(h, id, 512, &t));
    assert_int_equal(t, MV_PAGE_RAM);
    assert_ok(mv_domain_page_type(h, id, 1024, &t));
    assert_int_equal(t, MV_PAGE_POD);
    assert_int_equal(ram[3 * MiB + 5], 0x5a);
    assert_int_equal(ram[2 * MiB], 0);
    assert_int_equal(tu_info(h, id).faults, 1); /* the block took one trap */
    assert_ok(mv_host_audit(h));
    mv_host_destroy(h);
}

static void single_pages_when_block_populate_is_off(void **state)
{
    struct mv_domain_config c;
    mv_host *h = tu_host();
    uint32_t id;
    uint8_t *ram;

    (void)state;
    tu_domain_config(&c, "4k", 64 * MiB, 16 * MiB);
    c.pod_block_populate = 0;
    assert_ok(mv_domain_create(h, &c, &id));
    ram = ram_of(h, id);
    for (int p = 0; p < 10; p++)
        assert_int_equal(touch(ram + p * 4096), 1);
    assert_int_equal(tu_info(h, id).populated_pages, 10);
    assert_int_equal(tu_info(h, id).populated_4k, 10);
    assert_ok(mv_host_audit(h));
    mv_host_destroy(h);
}

static void single_pages_when_target_is_short_of_a_block(void **state)
{
    mv_host *h = tu_host();
    uint32_t id = tu_domain(h, "short", 64 * MiB, 100 * 4096);
    uint8_t *ram = ram_of(h, id);

    (void)state;
    assert_int_equal(touch(ram), 1);
    assert_int_equal(tu_info(h, id).populated_pages, 1);
    assert_int_equal(tu_info(h, id).populated_2m, 0);
    mv_host_destroy(h);
}

static void scrub_beyond_target_is_served_by_the_sweep(void **state)
{
    mv_host *h = tu_host();
    uint32_t id = tu_domain(h, "scrub", 512 * MiB, 64 * MiB);
    struct mv_workload_config w;
    struct mv_workload_status st;
    struct mv_domain_info i;

    (void)state;
    mv_workload_config_init(&w, MV_WORKLOAD_SCRUB);
    st = tu_run(h, id, &w);
    assert_false(st.crashed);
    assert_int_equal(st.pages_done, 131072);
    i = tu_info(h, id);
    assert_true(i.populated_pages <= i.target_pages);
    assert_true(i.sweeps > 0);
    assert_true(i.reclaimed_zero >= 131072 - i.target_pages);
    assert_int_equal(i.pod_waits, 0);
    assert_int_equal(i.state, MV_DOMAIN_RUNNING);
    tu_verify(h, id);
    mv_host_destroy(h);
}

static void sweep_never_reclaims_data(void **state)
{
    mv_host *h = tu_host();
    uint32_t id = tu_domain(h, "data", 64 * MiB, 64 * MiB);
    uint8_t *ram = ram_of(h, id);
    struct mv_workload_config w;
    struct mv_sweep_result r;

    (void)state;
    /* Data everywhere in the first 8 MiB; then pages whose only non-zero
     * byte is the last one, which passes the cheap check. */
    mv_workload_config_init(&w, MV_WORKLOAD_RANDOM);
    w.working_set_pages = 2048;
    w.max_pages = 20000;
    tu_run(h, id, &w);
    for (int p = 4096; p < 4196; p++)
        ram[(size_t)p * 4096 + 4095] = 1;
    assert_ok(mv_domain_reclaim_zero(h, id, 0, &r));
    for (int p = 4096; p < 4196; p++)
        assert_int_equal(ram[(size_t)p * 4096 + 4095], 1);
    for (int p = 4096; p < 4196; p++)
        ram[(size_t)p * 4096 + 4095] = 0; /* back to what the oracle knows */
    /* The untouched rest of the populated blocks is zero and was reclaimed. */
    assert_true(r.reclaimed > 0);
    assert_true(tu_info(h, id).populated_pages >= 2048);
    tu_verify(h, id);
    mv_host_destroy(h);
}

/* Data over more than the target: the sweep finds nothing to reclaim. */
static struct mv_workload_config overfill_config(uint64_t pages)
{
    struct mv_workload_config w;

    mv_workload_config_init(&w, MV_WORKLOAD_RANDOM);
    w.max_pages = pages;
    return w;
}

static void crash_policy_crashes_only_that_domain(void **state)
{
    mv_host *h;
    uint32_t victim, bystander;
    struct mv_workload_config w = overfill_config(30000);
    struct mv_workload_status st;
    struct mv_domain_info i;

    (void)state;
    install_toucher_handler();
    h = tu_host();
    victim = tu_domain_with(h, "victim", 256 * MiB, 8 * MiB, 2, MV_POD_CRASH, 0);
    bystander = tu_domain(h, "bystander", 64 * MiB, 32 * MiB);
    w.working_set_pages = 0;
    assert_ok(mv_workload_start(h, victim, &w));
    w.max_pages = 4000;
    w.working_set_pages = 4096;
    st = tu_run(h, bystander, &w);
    assert_false(st.crashed);
    assert_ok(mv_workload_wait(h, victim, 60000, &st));
    assert_true(st.crashed);
    i = tu_info(h, victim);
    assert_int_equal(i.state, MV_DOMAIN_CRASHED);
    assert_non_null(strstr(i.crash_reason, "out of memory"));
    /* A crashed domain refuses work and its RAM raises SIGBUS. */
    assert_err(mv_workload_start(h, victim, &w), -EPERM);
    assert_err(mv_domain_pause(h, victim), -EPERM);
    assert_int_equal(touch(ram_of(h, victim)), 2);
    assert_int_equal(tu_info(h, bystander).state, MV_DOMAIN_RUNNING);
    tu_verify(h, bystander);
    assert_ok(mv_domain_destroy(h, victim));
    assert_ok(mv_host_audit(h));
    mv_host_destroy(h);
}

/* The application replaced the library's SIGBUS handler after a workload
 * ran: the next workload puts it back, so a crash still ends only the
 * domain's vCPUs, and other threads' SIGBUS still reach the application. */
static void replaced_sigbus_handler_is_put_back(void **state)
{
    mv_host *h = tu_host();
    uint32_t victim = tu_domain_with(h, "victim", 256 * MiB, 8 * MiB, 2, MV_POD_CRASH, 0);
    struct mv_workload_config w = overfill_config(100);
    struct mv_workload_status st;

    (void)state;
    w.working_set_pages = 64;
    st = tu_run(h, victim, &w);
    assert_false(st.crashed);
    install_toucher_handler();
    w = overfill_config(30000);
    w.working_set_pages = 0;
    st = tu_run(h, victim, &w);
    assert_true(st.crashed);
    assert_int_equal(tu_info(h, victim).state, MV_DOMAIN_CRASHED);
    assert_int_equal(touch(ram_of(h, victim)), 2);
    assert_ok(mv_domain_destroy(h, victim));
    assert_ok(mv_host_audit(h));
    mv_host_destroy(h);
}

static void wait_policy_resumes_when_target_rises(void **state)
{
    mv_host *h = tu_host();
    uint32_t id = tu_domain(h, "waiter", 64 * MiB, 8 * MiB);
    struct mv_workload_config w = overfill_config(6000);
    struct mv_workload_status st;
    struct mv_domain_info i;

    (void)state;
    assert_ok(mv_workload_start(h, id, &w));
    wait_for_held(h, id, 1);
    assert_int_equal(mv_workload_wait(h, id, 100, NULL), -ETIMEDOUT);
    assert_ok(mv_domain_set_target(h, id, 64 * MiB));
    assert_ok(mv_workload_wait(h, id, 60000, &st));
    assert_false(st.crashed);
    i = tu_info(h, id);
    assert_true(i.pod_waits > 0);
    assert_int_equal(i.held_faults, 0);
    assert_int_equal(i.state, MV_DOMAIN_RUNNING);
    tu_verify(h, id);
    mv_host_destroy(h);
}

static void wait_policy_resumes_when_guest_balloons(void **state)
{
    mv_host *h = tu_host();
    uint32_t id = tu_domain(h, "balloon", 64 * MiB, 8 * MiB);
    /* ~2400 distinct pages: more than the 2048 of the target, but after the
     * top half is ballooned the rest fits. */
    struct mv_workload_config w = overfill_config(2600);
    struct mv_workload_status st;

    (void)state;
    assert_ok(mv_workload_start(h, id, &w));
    wait_for_held(h, id, 1);
    /* The guest gives back half of its memory, data pages included. */
    assert_int_equal(mv_guest_balloon(h, id, 32 * MiB), 8192);
    assert_ok(mv_workload_wait(h, id, 60000, &st));
    assert_false(st.crashed);
    assert_int_equal(tu_info(h, id).ballooned_pages, 8192);
    tu_verify(h, id);
    /* Deflate: the pages come back as zero PoD entries. */
    assert_int_equal(mv_guest_balloon(h, id, 64 * MiB), 8192);
    assert_int_equal(tu_info(h, id).ballooned_pages, 0);
    tu_verify(h, id);
    mv_host_destroy(h);
}

/* Memory the scanner frees (copies shared) makes room for a fault waiting
 * for it, and wakes the fault threads only when a fault waits.  (Copies,
 * not zero pages: the fault's own sweep would find those first.) */
static void memory_the_scanner_frees_resumes_a_waiting_fault(void **state)
{
    const uint64_t copies = 1024, first_copy = 8192, zeros = MV_BLOCK_PAGES;
    mv_host *h = tu_host();
    uint32_t id = tu_domain(h, "copies", 64 * MiB, 8 * MiB); /* 2048 pages */
    uint8_t *ram = ram_of(h, id);
    /* About 1,370 distinct pages of the first 8192: more than the room left
     * beside the copies, less than the target. */
    struct mv_workload_config w = overfill_config(1500);
    struct mv_workload_status st;
    struct mv_scan_result r;
    uint64_t kicks;

    (void)state;
    w.working_set_pages = first_copy;
    /* Nothing waits: freeing memory (copies shared, zero pages back to PoD)
     * wakes no one. */
    memset(ram + (first_copy << MV_PAGE_SHIFT), 0x5a, copies << MV_PAGE_SHIFT);
    memset(ram + ((first_copy + copies) << MV_PAGE_SHIFT), 0, zeros << MV_PAGE_SHIFT);
    kicks = atomic_load(&h->kicks);
    assert_ok(mv_share_scan(h, 0, &r));
    assert_int_equal(r.pages_shared, copies);
    assert_int_equal(r.pages_zero, zeros);
    assert_int_equal(tu_info(h, id).populated_pages, 0);
    assert_int_equal(atomic_load(&h->kicks), kicks);
    /* Written again, the copies take half the target; a fault waits for
     * the room they hold. */
    memset(ram + (first_copy << MV_PAGE_SHIFT), 0xa5, copies << MV_PAGE_SHIFT);
    assert_int_equal(tu_info(h, id).populated_pages, copies);
    assert_ok(mv_workload_start(h, id, &w));
    wait_for_held(h, id, 1);
    kicks = atomic_load(&h->kicks);
    /* The first pass finds the copies changed since the last one (volatile)
     * and leaves them; the second shares them.  (Kicks may come during
     * the first too: from faults the workload's vCPUs hand over, and from
     * zero pages of blocks the workload populated going back to PoD.) */
    assert_ok(mv_share_scan(h, 0, &r));
    assert_ok(mv_share_scan(h, 0, &r));
    assert_true(r.pages_shared >= copies);
    assert_true(atomic_load(&h->kicks) > kicks);
    assert_ok(mv_workload_wait(h, id, 60000, &st));
    assert_false(st.crashed);
    assert_true(tu_info(h, id).pod_waits > 0);
    assert_int_equal(tu_info(h, id).held_faults, 0);
    /* What the oracle expects of pages the workload never wrote. */
    assert_ok(mv_domain_set_target(h, id, 64 * MiB));
    memset(ram + (first_copy << MV_PAGE_SHIFT), 0, copies << MV_PAGE_SHIFT);
    tu_verify(h, id);
    mv_host_destroy(h);
}

/* The tests of faults waiting for the host's memory: a budget of 2 MiB,
 * all of it taken by the domain created first, `full` (of full_bytes), and
 * a second domain of 16 MiB, `other`. */
#define FULL_BUDGET (2 * MiB)

static mv_host *full_host(uint64_t full_bytes, uint32_t *full, uint32_t *other)
{
    mv_host *h = tu_host_with(FULL_BUDGET, MV_FAULT_SPIN_DEFAULT);

    *full = tu_domain(h, "full", full_bytes, full_bytes);
    *other = tu_domain(h, "other", 16 * MiB, 16 * MiB);
    assert_true(*full < *other);
    memset(ram_of(h, *full), 0x5a, FULL_BUDGET);
    assert_int_equal(tu_info(h, *full).populated_pages, FULL_BUDGET / 4096);
    return h;
}

/* The end of such a test: the bytes the budget's filling and the touchers
 * (`touched`) wrote become what the oracle expects of pages no workload
 * wrote; both domains verified, the host audited and destroyed. */
static void end_full_host(mv_host *h, uint32_t full, uint32_t other,
                          uint8_t *const *touched, size_t n)
{
    memset(ram_of(h, full), 0, FULL_BUDGET);
    for (size_t i = 0; i < n; i++)
        *touched[i] = 0;
    tu_verify(h, full);
    tu_verify(h, other);
    assert_ok(mv_host_audit(h));
    mv_host_destroy(h);
}

/* The end of such a test: room for `pages` pages over the filled budget,
 * and the fault that waited last (toucher t, of domain id) is served. */
static void room_for_the_last(mv_host *h, uint64_t pages, struct toucher *t, uint32_t id)
{
    assert_ok(mv_host_set_budget(h, FULL_BUDGET + pages * 4096));
    pthread_join(t->thread, NULL);
    assert_int_equal(atomic_load(&t->state), 1);
    assert_int_equal(tu_info(h, id).held_faults, 0);
}

/* Memory freed while faults of several domains wait goes to the fault
 * that has waited longest, whatever the domains' order (it went to the
 * domain created first, which could keep a later one waiting until its
 * deadline while memory came and went). */
static void freed_memory_goes_to_the_longest_waiting_fault(void **state)
{
    uint32_t first, second;
    mv_host *h = full_host(16 * MiB, &first, &second);
    uint8_t *const touched[] = { ram_of(h, second) + 5 * MiB, ram_of(h, first) + 9 * MiB };
    struct toucher early, late;

    (void)state;
    /* The second domain's fault waits first, then the first domain's. */
    touch_async(&early, touched[0]);
    wait_for_held(h, second, 1);
    touch_async(&late, touched[1]);
    wait_for_held(h, first, 1);
    /* One page frees up: the second domain's fault takes it. */
    assert_ok(mv_host_set_budget(h, FULL_BUDGET + 4096));
    tu_wait_until(atomic_load(&early.state) != 0 || atomic_load(&late.state) != 0);
    assert_int_equal(atomic_load(&late.state), 0);
    pthread_join(early.thread, NULL);
    assert_int_equal(atomic_load(&early.state), 1);
    assert_int_equal(tu_info(h, first).held_faults, 1);
    assert_int_equal(tu_info(h, second).populated_pages, 1);
    /* Then room for the other. */
    room_for_the_last(h, 2, &late, first);
    assert_int_equal(tu_info(h, first).populated_pages, FULL_BUDGET / 4096 + 1);
    end_full_host(h, first, second, touched, MV_ARRAY_SIZE(touched));
}

/* Memory freed while faults of several domains wait goes to the faults in
 * the order they came, not domain by domain: a domain's younger fault
 * waits behind another domain's older one (the domain whose fault had
 * waited longest took pages for all of its faults first).  The oldest
 * fault is a read, which leaves its page zero: the younger fault of the
 * same domain must not sweep it back (it did whenever the page was still
 * zero, its vCPU woken but not run yet). */
static void freed_memory_goes_to_faults_in_their_order(void **state)
{
    uint32_t first, second;
    mv_host *h = full_host(16 * MiB, &first, &second);
    uint8_t *const touched[] = { ram_of(h, first) + 9 * MiB, ram_of(h, second) + 5 * MiB,
                                 ram_of(h, first) + 11 * MiB };
    struct toucher oldest, middle, youngest;

    (void)state;
    start_toucher(&oldest, NULL, 0, touched[0], true);
    wait_for_held(h, first, 1);
    touch_async(&middle, touched[1]);
    wait_for_held(h, second, 1);
    touch_async(&youngest, touched[2]);
    wait_for_held(h, first, 2);
    /* Two pages free up: the two oldest faults take them. */
    assert_ok(mv_host_set_budget(h, FULL_BUDGET + 2 * 4096));
    tu_wait_until(atomic_load(&middle.state) != 0 || atomic_load(&youngest.state) != 0);
    assert_int_equal(atomic_load(&youngest.state), 0);
    pthread_join(oldest.thread, NULL);
    pthread_join(middle.thread, NULL);
    assert_int_equal(atomic_load(&oldest.state), 1);
    assert_int_equal(atomic_load(&middle.state), 1);
    assert_int_equal(tu_info(h, first).held_faults, 1);
    assert_int_equal(atomic_load(&youngest.state), 0);
    /* Then room for the youngest. */
    room_for_the_last(h, 3, &youngest, first);
    assert_int_equal(tu_info(h, first).populated_pages, FULL_BUDGET / 4096 + 2);
    assert_int_equal(tu_info(h, second).populated_pages, 1);
    end_full_host(h, first, second, touched, MV_ARRAY_SIZE(touched));
}

/* A new fault does not take the memory that freed up for one that waits:
 * it waits behind it.  (It was served if it came before the pass the
 * freeing kicked off, and so a domain that faulted often could keep
 * another waiting until its deadline.) */
static void new_faults_wait_behind_older_ones(void **state)
{
    /* The first domain's last 64 pages are no whole 2 MiB block: a fault
     * there is one that the faulting thread may resolve itself. */
    uint32_t first, second;
    mv_host *h = full_host(16 * MiB + 64 * 4096, &first, &second);
    uint8_t *const touched[] = { ram_of(h, second) + 5 * MiB,
                                 ram_of(h, first) + 16 * MiB + 3 * 4096 };
    struct toucher older, newer;

    (void)state;
    /* vCPUs: where faults are resolved in the faulting thread, theirs are. */
    vcpu_touch_async(&older, h, second, touched[0]);
    wait_for_held(h, second, 1);
    /* A page frees up, and the pass it brings has not run yet. */
    atomic_fetch_add(&h->machine.budget_pages, 1);
    vcpu_touch_async(&newer, h, first, touched[1]);
    tu_wait_until(tu_info(h, first).held_faults == 1 || atomic_load(&newer.state) != 0);
    assert_int_equal(atomic_load(&newer.state), 0);
    mv__fault_kick(h);
    pthread_join(older.thread, NULL);
    assert_int_equal(atomic_load(&older.state), 1);
    assert_int_equal(tu_info(h, second).populated_pages, 1);
    assert_int_equal(tu_info(h, first).held_faults, 1);
    assert_int_equal(atomic_load(&newer.state), 0);
    /* Then room for the other. */
    room_for_the_last(h, 2, &newer, first);
    end_full_host(h, first, second, touched, MV_ARRAY_SIZE(touched));
}

/* A pass over the held faults that cannot list the domains (no memory) is
 * tried again at the next tick: after three such passes, memory that comes
 * still reaches the fault that waits for it. */
static void held_faults_outlast_a_failed_list_of_domains(void **state)
{
    uint32_t full, waiting;
    mv_host *h = full_host(16 * MiB, &full, &waiting);
    uint8_t *const touched[] = { ram_of(h, waiting) + 3 * MiB };
    struct toucher t;

    (void)state;
    touch_async(&t, touched[0]);
    wait_for_held(h, waiting, 1);
    /* The held fault brings a pass every tick; three of them fail. */
    mv__os_inject(MV_OS_DOMAIN_LIST, ENOMEM, 0, 3);
    tu_wait_until(mv__os_injection_left(MV_OS_DOMAIN_LIST) == 0);
    assert_int_equal(tu_info(h, waiting).held_faults, 1);
    assert_ok(mv_host_set_budget(h, FULL_BUDGET + 4096));
    pthread_join(t.thread, NULL);
    assert_int_equal(atomic_load(&t.state), 1);
    assert_int_equal(tu_info(h, waiting).held_faults, 0);
    assert_int_equal(tu_info(h, waiting).populated_pages, 1);
    end_full_host(h, full, waiting, touched, MV_ARRAY_SIZE(touched));
}

static void wait_policy_times_out_into_a_crash(void **state)
{
    mv_host *h = tu_host();
    uint32_t id = tu_domain_with(h, "timeout", 64 * MiB, 4 * MiB, 1, MV_POD_WAIT, 300);
    struct mv_workload_config w = overfill_config(4000);
    struct mv_workload_status st;
    struct mv_domain_info i;

    (void)state;
    assert_ok(mv_workload_start(h, id, &w));
    assert_ok(mv_workload_wait(h, id, 30000, &st));
    assert_true(st.crashed);
    i = tu_info(h, id);
    assert_int_equal(i.state, MV_DOMAIN_CRASHED);
    assert_non_null(strstr(i.crash_reason, "waited 300 ms"));
    assert_int_equal(i.held_faults, 0);
    assert_ok(mv_host_audit(h));
    mv_host_destroy(h);
}

static void touching_a_ballooned_page_crashes_the_domain(void **state)
{
    mv_host *h;
    uint32_t id;
    uint64_t gfn = 77;

    (void)state;
    install_toucher_handler();
    h = tu_host();
    id = tu_domain(h, "bad-guest", 64 * MiB, 16 * MiB);
    assert_int_equal(mv_domain_decrease_reservation(h, id, &gfn, 1), 1);
    assert_int_equal(touch(ram_of(h, id) + gfn * 4096), 2);
    assert_int_equal(tu_info(h, id).state, MV_DOMAIN_CRASHED);
    assert_non_null(strstr(tu_info(h, id).crash_reason, "ballooned"));
    mv_host_destroy(h);
}

static void lowering_target_reclaims_zero_pages_or_refuses(void **state)
{
    mv_host *h = tu_host();
    uint32_t id = tu_domain(h, "lower", 64 * MiB, 32 * MiB);
    uint8_t *ram = ram_of(h, id);
    struct mv_workload_config w;

    (void)state;
    /* Four blocks populated; one page of data in each. */
    mv_workload_config_init(&w, MV_WORKLOAD_RANDOM);
    w.working_set_pages = 4;
    w.max_pages = 4;
    tu_run(h, id, &w);
    for (int b = 1; b < 4; b++)
        assert_int_equal(touch(ram + b * 2 * MiB), 1);
    for (int b = 1; b < 4; b++)
        ram[b * 2 * MiB] = 0;
    assert_int_equal(tu_info(h, id).populated_pages, 4 * 512);
    assert_ok(mv_domain_set_target(h, id, 16 * 4096));
    assert_true(tu_info(h, id).populated_pages <= 16);
    assert_err(mv_domain_set_target(h, id, 2 * 4096), -EBUSY);
    assert_int_equal(tu_info(h, id).target_pages, 16);
    tu_verify(h, id);
    mv_host_destroy(h);
}

static void pause_holds_faults_until_unpause(void **state)
{
    mv_host *h = tu_host();
    uint32_t id = tu_domain(h, "paused", 64 * MiB, 16 * MiB);
    struct toucher t;

    (void)state;
    assert_ok(mv_domain_pause(h, id));
    touch_async(&t, ram_of(h, id) + 12345);
    wait_for_held(h, id, 1);
    /* The fault service serves another domain's faults meanwhile: this
     * one's stays held. */
    run_control_domain(h, "ctl");
    assert_int_equal(atomic_load(&t.state), 0);
    assert_int_equal(tu_info(h, id).held_faults, 1);
    assert_int_equal(tu_info(h, id).populated_pages, 0);
    assert_ok(mv_domain_unpause(h, id));
    pthread_join(t.thread, NULL);
    assert_int_equal(atomic_load(&t.state), 1);
    assert_int_equal(tu_info(h, id).held_faults, 0);
    mv_host_destroy(h);
}

static void pause_parks_running_vcpus(void **state)
{
    mv_host *h = tu_host();
    uint32_t id = tu_domain(h, "park", 64 * MiB, 64 * MiB);
    struct mv_workload_config w;
    uint64_t a, b;

    (void)state;
    mv_workload_config_init(&w, MV_WORKLOAD_RANDOM); /* until stopped */
    /* One block, populated before the vCPUs start: they take no faults,
     * so only parking can stop them (a fault held while paused would too,
     * and pause counts a held fault as a parked vCPU). */
    w.working_set_pages = MV_BLOCK_PAGES;
    ram_of(h, id)[0] = 0; /* what the oracle expects of an unwritten page */
    assert_int_equal(tu_info(h, id).populated_pages, MV_BLOCK_PAGES);
    assert_ok(mv_workload_start(h, id, &w));
    /* Its vCPUs are running. */
    tu_wait_until(pages_done(h, id) >= MV_BLOCK_PAGES);
    /* Pause returns once every vCPU is parked: from then on none writes,
     * while another domain's vCPUs write many pages. */
    assert_ok(mv_domain_pause(h, id));
    assert_int_equal(tu_info(h, id).held_faults, 0);
    a = pages_done(h, id);
    run_control_domain(h, "ctl");
    b = pages_done(h, id);
    assert_int_equal(a, b);
    assert_int_equal(tu_info(h, id).state, MV_DOMAIN_PAUSED);
    /* Unpaused, they write again. */
    assert_ok(mv_domain_unpause(h, id));
    tu_wait_until(pages_done(h, id) > a);
    assert_ok(mv_workload_stop(h, id));
    tu_verify(h, id);
    mv_host_destroy(h);
}

/* vCPUs that fault all the time (fresh pages of a large domain) are
 * stopped by pause too: those blocked in a fault that needs memory are
 * held, the others park; none writes a page after pause returns.  A stale
 * fault message (its vCPU woken already) must not count as a stopped vCPU. */
static void pause_stops_faulting_vcpus(void **state)
{
    mv_host *h = tu_host();
    uint32_t id = tu_domain(h, "faulting", 256 * MiB, 256 * MiB);
    struct mv_workload_config w;

    (void)state;
    mv_workload_config_init(&w, MV_WORKLOAD_RANDOM); /* until stopped */
    assert_ok(mv_workload_start(h, id, &w));
    for (int round = 0; round < 20; round++) {
        uint64_t a, b;

        tu_wait_until(pages_done(h, id) >= (uint64_t)(round + 1) * 200);
        assert_ok(mv_domain_pause(h, id));
        a = pages_done(h, id);
        run_control_domain(h, "ctl");
        b = pages_done(h, id);
        assert_int_equal(a, b);
        assert_ok(mv_domain_unpause(h, id));
    }
    assert_ok(mv_workload_stop(h, id));
    tu_verify(h, id);
    mv_host_destroy(h);
}

static void many_domains_fault_concurrently_on(mv_host *h)
{
    uint32_t ids[4];
    struct mv_workload_config w;
    struct mv_workload_status st;

    for (int i = 0; i < 4; i++) {
        char name[16];

        snprintf(name, sizeof(name), "dom%d", i);
        ids[i] = tu_domain(h, name, 256 * MiB, 32 * MiB);
    }
    mv_workload_config_init(&w, MV_WORKLOAD_SCRUB);
    for (int i = 0; i < 4; i++)
        assert_ok(mv_workload_start(h, ids[i], &w));
    for (int i = 0; i < 4; i++) {
        assert_ok(mv_workload_wait(h, ids[i], 60000, &st));
        assert_false(st.crashed);
    }
    mv_workload_config_init(&w, MV_WORKLOAD_RANDOM);
    w.working_set_pages = 6000;
    w.max_pages = 20000;
    for (int i = 0; i < 4; i++) {
        w.seed = 0x6d656d7669736f72ull;
        assert_ok(mv_workload_start(h, ids[i], &w));
    }
    for (int i = 0; i < 4; i++) {
        assert_ok(mv_workload_wait(h, ids[i], 60000, &st));
        assert_false(st.crashed);
    }
    /* The guest's own view, through its RAM, agrees with the host's. */
    mv_workload_config_init(&w, MV_WORKLOAD_VERIFY);
    for (int i = 0; i < 4; i++) {
        st = tu_run(h, ids[i], &w);
        assert_int_equal(st.mismatches, 0);
        tu_verify(h, ids[i]);
    }
    mv_host_destroy(h);
}

static void many_domains_fault_concurrently(void **state)
{
    (void)state;
    many_domains_fault_concurrently_on(tu_host());
}

static void two_fault_threads_serve_many_domains(void **state)
{
    struct mv_host_config c;
    mv_host *h;

    (void)state;
    tu_host_config(&c, 4 * GiB);
    c.fault_threads = 2;
    c.fault_spin_us = 0;
    assert_ok(mv_host_create(&c, &h));
    many_domains_fault_concurrently_on(h);
}

/* The guest scrubs all of its RAM and reads it back; then the content
 * oracle and the audit, and the host is destroyed. */
static void scrub_verify_and_destroy(mv_host *h, uint32_t id)
{
    struct mv_workload_config w;
    struct mv_workload_status st;

    mv_workload_config_init(&w, MV_WORKLOAD_SCRUB);
    st = tu_run(h, id, &w);
    assert_false(st.crashed);
    mv_workload_config_init(&w, MV_WORKLOAD_VERIFY);
    st = tu_run(h, id, &w);
    assert_int_equal(st.mismatches, 0);
    tu_verify(h, id);
    mv_host_destroy(h);
}

/* The lowest-numbered CPU in `set` (not empty). */
static int first_cpu(const cpu_set_t *set)
{
    int cpu = 0;

    while (!CPU_ISSET(cpu, set))
        cpu++;
    return cpu;
}

/* Fault threads start on the CPUs fault_cpus names, and serve faults there. */
static void fault_threads_run_on_fault_cpus(void **state)
{
    struct mv_host_config c;
    cpu_set_t allowed, got;
    char list[16];
    mv_host *h;
    uint32_t id;
    int cpu;

    (void)state;
    assert_int_equal(sched_getaffinity(0, sizeof(allowed), &allowed), 0);
    cpu = first_cpu(&allowed);
    snprintf(list, sizeof(list), "%d", cpu);
    tu_host_config(&c, 1 * GiB);
    c.fault_threads = 2;
    c.fault_cpus = list;
    c.fault_mode = MV_FAULT_SHARED;
    assert_ok(mv_host_create(&c, &h));
    assert_int_equal(h->fault_thread_count, 2);
    for (unsigned i = 0; i < h->fault_thread_count; i++) {
        assert_int_equal(pthread_getaffinity_np(h->fault_threads[i].thread, sizeof(got), &got), 0);
        assert_int_equal(CPU_COUNT(&got), 1);
        assert_true(CPU_ISSET(cpu, &got));
    }
    id = tu_domain(h, "pinned", 64 * MiB, 64 * MiB);
    scrub_verify_and_destroy(h, id);
}

/* One fault thread per CPU: each pinned to its own CPU with an epoll set of
 * its own, all of the CPUs covered; faults of several vCPUs served right.
 * MV_FAULT_AUTO chooses it on a few CPUs with one fault thread asked for. */
static void fault_thread_per_cpu_pins_one_each(void **state)
{
    struct mv_host_stats hs;
    struct mv_host_config c;
    struct mv_workload_config w;
    struct mv_workload_status st;
    cpu_set_t allowed, seen, got;
    char list[16];
    mv_host *h;
    uint32_t id;
    int first;

    (void)state;
    assert_int_equal(sched_getaffinity(0, sizeof(allowed), &allowed), 0);
    tu_host_config(&c, 1 * GiB);
    c.fault_threads = 7; /* not used */
    c.fault_mode = MV_FAULT_PER_CPU;
    assert_ok(mv_host_create(&c, &h));
    assert_int_equal(h->fault_thread_count, CPU_COUNT(&allowed));
    assert_ok(mv_host_stats(h, &hs));
    assert_int_equal(hs.fault_mode, MV_FAULT_PER_CPU);
    assert_int_equal(hs.fault_threads, CPU_COUNT(&allowed));
    assert_int_equal(h->epoll_count, h->fault_thread_count);
    CPU_ZERO(&seen);
    for (unsigned i = 0; i < h->fault_thread_count; i++) {
        assert_int_equal(pthread_getaffinity_np(h->fault_threads[i].thread, sizeof(got),
                                                &got), 0);
        assert_int_equal(CPU_COUNT(&got), 1);
        assert_true(CPU_ISSET(h->fault_threads[i].cpu, &got));
        assert_false(CPU_ISSET(h->fault_threads[i].cpu, &seen));
        CPU_SET(h->fault_threads[i].cpu, &seen);
        for (unsigned j = 0; j < i; j++)
            assert_int_not_equal(h->fault_threads[i].epoll_fd, h->fault_threads[j].epoll_fd);
    }
    assert_true(CPU_EQUAL(&seen, &allowed));
    id = tu_domain_with(h, "per-cpu", 64 * MiB, 64 * MiB, 2, MV_POD_WAIT,
                        MV_WAIT_TIMEOUT_DEFAULT_MS);
    scrub_verify_and_destroy(h, id);

    /* With fault_cpus: its CPUs only; AUTO on one CPU chooses per CPU,
     * unless more than one fault thread is asked for. */
    first = first_cpu(&allowed);
    snprintf(list, sizeof(list), "%d", first);
    c.fault_cpus = list;
    c.fault_mode = MV_FAULT_AUTO;
    c.fault_threads = 2;
    assert_ok(mv_host_create(&c, &h));
    assert_ok(mv_host_stats(h, &hs));
    assert_int_equal(hs.fault_mode, MV_FAULT_SHARED);
    assert_int_equal(hs.fault_threads, 2);
    mv_host_destroy(h);
    c.fault_threads = 1;
    assert_ok(mv_host_create(&c, &h));
    assert_ok(mv_host_stats(h, &hs));
    assert_int_equal(hs.fault_mode, MV_FAULT_PER_CPU);
    assert_int_equal(h->fault_thread_count, 1);
    assert_int_equal(h->fault_threads[0].cpu, first);
    id = tu_domain(h, "per-cpu-one", 16 * MiB, 16 * MiB);
    mv_workload_config_init(&w, MV_WORKLOAD_SCRUB);
    st = tu_run(h, id, &w);
    assert_false(st.crashed);
    tu_verify(h, id);
    mv_host_destroy(h);
}

static void host_destroy_with_faults_pending(void **state)
{
    mv_host *h;
    uint32_t a, b;
    struct toucher t1, t2;
    struct mv_workload_config w = overfill_config(100000);

    (void)state;
    install_toucher_handler();
    h = tu_host();
    a = tu_domain(h, "held-a", 64 * MiB, 16 * MiB);
    b = tu_domain(h, "held-b", 64 * MiB, 4 * MiB);
    assert_ok(mv_domain_pause(h, a));
    touch_async(&t1, ram_of(h, a) + 4096);
    assert_ok(mv_workload_start(h, b, &w)); /* will wait for memory */
    touch_async(&t2, ram_of(h, a) + 8 * MiB);
    wait_for_held(h, a, 2);
    wait_for_held(h, b, 1);
    mv_host_destroy(h);
    pthread_join(t1.thread, NULL);
    pthread_join(t2.thread, NULL);
    assert_int_equal(atomic_load(&t1.state), 2);
    assert_int_equal(atomic_load(&t2.state), 2);
}

static void destroy_with_a_fault_pending(void **state)
{
    mv_host *h;
    uint32_t id;
    struct toucher t;
    struct mv_host_stats s;

    (void)state;
    install_toucher_handler();
    h = tu_host();
    id = tu_domain(h, "doomed", 64 * MiB, 16 * MiB);
    assert_int_equal(touch(ram_of(h, id)), 1);
    assert_ok(mv_domain_pause(h, id));
    touch_async(&t, ram_of(h, id) + 8 * MiB);
    wait_for_held(h, id, 1);
    assert_ok(mv_domain_destroy(h, id));
    pthread_join(t.thread, NULL);
    assert_int_equal(atomic_load(&t.state), 2);
    assert_ok(mv_host_stats(h, &s));
    assert_int_equal(s.populated_pages, 0);
    assert_int_equal(s.domains, 0);
    assert_ok(mv_host_audit(h));
    mv_host_destroy(h);
}

static void host_budget_is_shared_by_domains(void **state)
{
    mv_host *h = tu_host_with(16 * MiB, 0);
    uint32_t a = tu_domain(h, "a", 64 * MiB, 64 * MiB);
    uint32_t b = tu_domain_with(h, "b", 64 * MiB, 64 * MiB, 1, MV_POD_CRASH, 0);
    struct mv_workload_config w = overfill_config(3000);
    struct mv_workload_status st;
    struct mv_host_stats s;

    (void)state;
    w.working_set_pages = 3000; /* 12 MiB of data in a */
    st = tu_run(h, a, &w);
    assert_false(st.crashed);
    w.working_set_pages = 2000; /* b finds only 4 MiB left */
    st = tu_run(h, b, &w);
    assert_true(st.crashed);
    assert_ok(mv_host_stats(h, &s));
    assert_true(s.populated_pages <= s.budget_pages);
    assert_true(s.peak_populated_pages <= 4096);
    tu_verify(h, a);
    mv_host_destroy(h);
}

static void injected_failures_never_corrupt(void **state)
{
    mv_host *h = tu_host();
    uint32_t id = tu_domain(h, "inject", 64 * MiB, 64 * MiB);
    uint8_t *ram = ram_of(h, id);
    struct mv_domain_info i;

    (void)state;
    /* A failed 2 MiB populate falls back to one page. */
    mv__os_inject(MV_OS_UFFD_ZEROPAGE, ENOMEM, 0, 1);
    assert_int_equal(touch(ram), 1);
    i = tu_info(h, id);
    assert_int_equal(i.populated_pages, 1);
    assert_int_equal(i.populated_4k, 1);
    assert_ok(mv_host_audit(h));
    /* A 2 MiB populate that fails half-way keeps the half it populated:
     * those pages were mapped and their vCPUs woken, so they may hold
     * guest writes.  The touched page, in the other half, gets its own. */
    mv__os_inject(MV_OS_UFFD_ZEROPAGE_MIDWAY, ENOMEM, 0, 1);
    assert_int_equal(touch(ram + 2 * MiB + 300 * 4096), 1);
    i = tu_info(h, id);
    assert_int_equal(i.populated_pages, 1 + 256 + 1);
    for (uint64_t g = 512; g < 1024; g++) {
        enum mv_page_type t;

        assert_ok(mv_domain_page_type(h, id, g, &t));
        assert_int_equal(t, g < 512 + 256 || g == 512 + 300 ? MV_PAGE_RAM : MV_PAGE_POD);
    }
    assert_int_equal(ram[2 * MiB + 7 * 4096], 0);
    ram[2 * MiB + 7 * 4096] = 0x5a;
    assert_ok(mv_host_audit(h));
    assert_int_equal(ram[2 * MiB + 7 * 4096], 0x5a);
    /* A failed hole punch leaves the page populated and intact. */
    ram[4096 * 3] = 0;
    mv__os_inject(MV_OS_PUNCH, EIO, 0, 1);
    assert_ok(mv_domain_reclaim_zero(h, id, 0, NULL));
    assert_ok(mv_host_audit(h));
    /* An unexpected populate error crashes the domain, not the host. */
    mv__os_inject(MV_OS_UFFD_ZEROPAGE, EIO, 0, 2);
    install_toucher_handler();
    assert_int_equal(touch(ram + 32 * MiB), 2);
    i = tu_info(h, id);
    assert_int_equal(i.state, MV_DOMAIN_CRASHED);
    assert_non_null(strstr(i.crash_reason, "cannot populate"));
    mv__os_inject(MV_OS_UFFD_ZEROPAGE, 0, 0, 0);
    assert_ok(mv_host_audit(h));
    mv_host_destroy(h);
}

static void oracle_detects_a_foreign_write(void **state)
{
    mv_host *h = tu_host();
    uint32_t id = tu_domain(h, "oracle", 64 * MiB, 64 * MiB);
    struct mv_workload_config w;
    uint64_t bad_gfn;

    (void)state;
    mv_workload_config_init(&w, MV_WORKLOAD_RANDOM);
    w.working_set_pages = 1000;
    w.max_pages = 3000;
    tu_run(h, id, &w);
    assert_int_equal(mv_oracle_verify(h, id, &bad_gfn), 0);
    ram_of(h, id)[777 * 4096 + 100] ^= 1;
    assert_int_equal(mv_oracle_verify(h, id, &bad_gfn), 1);
    assert_int_equal(bad_gfn, 777);
    mv_workload_config_init(&w, MV_WORKLOAD_VERIFY);
    assert_int_equal(tu_run(h, id, &w).mismatches, 1);
    mv_host_destroy(h);
}

/* ------------------------------------------------------------------------ */
/* Faults resolved in the faulting vCPU's own thread (fault_path auto)       */

/* A host whose domains resolve their vCPUs' faults in the vCPUs' threads,
 * whatever the environment asks of the other cases. */
static mv_host *in_thread_host(void)
{
    struct mv_host_config c;
    mv_host *h;

    tu_host_config(&c, 4 * GiB);
    c.fault_path = MV_FAULT_PATH_AUTO;
    assert_ok(mv_host_create(&c, &h));
    return h;
}

/* A domain of single pages (no 2 MiB populate) on it; skips, saying why,
 * when the kernel cannot raise SIGBUS for a fault. */
static uint32_t in_thread_domain(mv_host *h, const char *name, uint64_t maxmem,
                                 uint64_t target, enum mv_pod_policy policy,
                                 unsigned fault_around)
{
    struct mv_domain_config c;
    uint32_t id;

    tu_domain_config(&c, name, maxmem, target);
    c.pod_block_populate = 0;
    c.pod_policy = policy;
    c.pod_fault_around = fault_around;
    assert_ok(mv_domain_create(h, &c, &id));
    if (!tu_info(h, id).fault_in_thread) {
        mv_host_destroy(h);
        print_message("skipped: the kernel lacks UFFD_FEATURE_SIGBUS\n");
        skip();
    }
    return id;
}

/* Guest RAM is written by several threads at once here, each store a whole
 * word: atomics, so that ThreadSanitizer sees what the test means. */
static void store_word(uint8_t *page, uint64_t value)
{
    __atomic_store_n((uint64_t *)page, value, __ATOMIC_RELAXED);
}

static uint64_t load_word(const uint8_t *page)
{
    return __atomic_load_n((const uint64_t *)page, __ATOMIC_RELAXED);
}

#define VCPU_THREADS 4u
#define SHARED_PAGES 2048u
#define OWN_PAGES 512u

struct vcpu_worker {
    mv_host *host;
    uint32_t domid;
    uint8_t *ram;
    unsigned index;
    int entered;
    pthread_t thread;
};

/* Every worker stores into every shared page (the same value, from a
 * different starting point), then into its own pages (its own values). */
static void *vcpu_worker_main(void *arg)
{
    struct vcpu_worker *w = arg;

    w->entered = mv_vcpu_enter(w->host, w->domid);
    for (unsigned i = 0; i < SHARED_PAGES; i++) {
        unsigned p = (i + w->index * SHARED_PAGES / VCPU_THREADS) % SHARED_PAGES;

        store_word(w->ram + (size_t)p * 4096, 0x5a);
    }
    for (unsigned i = 0; i < OWN_PAGES; i++) {
        size_t p = SHARED_PAGES + w->index * OWN_PAGES + i;

        store_word(w->ram + p * 4096 + 8, (uint64_t)p << 8 | w->index);
    }
    mv_vcpu_exit();
    return NULL;
}

/* Many vCPUs fault on the same pages and on pages of their own, each
 * resolving its faults in its own thread; then built-in vCPUs run a
 * workload the same way, which the oracle checks. */
static void vcpus_resolve_their_own_faults_concurrently(void **state)
{
    mv_host *h = in_thread_host();
    uint64_t pages = SHARED_PAGES + VCPU_THREADS * OWN_PAGES;
    uint32_t id = in_thread_domain(h, "vcpus", pages * 4096, pages * 4096, MV_POD_WAIT, 0);
    uint8_t *ram = ram_of(h, id);
    struct vcpu_worker w[VCPU_THREADS];
    struct mv_workload_config wl;
    struct mv_domain_info i;
    uint32_t guest;

    (void)state;
    for (unsigned k = 0; k < VCPU_THREADS; k++) {
        w[k] = (struct vcpu_worker){ .host = h, .domid = id, .ram = ram, .index = k };
        assert_int_equal(pthread_create(&w[k].thread, NULL, vcpu_worker_main, &w[k]), 0);
    }
    for (unsigned k = 0; k < VCPU_THREADS; k++) {
        pthread_join(w[k].thread, NULL);
        assert_int_equal(w[k].entered, 1);
    }
    for (unsigned p = 0; p < SHARED_PAGES; p++)
        assert_int_equal(load_word(ram + (size_t)p * 4096), 0x5a);
    for (unsigned k = 0; k < VCPU_THREADS; k++)
        for (unsigned n = 0; n < OWN_PAGES; n++) {
            size_t p = SHARED_PAGES + k * OWN_PAGES + n;

            assert_int_equal(load_word(ram + p * 4096 + 8), (uint64_t)p << 8 | k);
        }
    i = tu_info(h, id);
    assert_int_equal(i.populated_pages, pages);
    assert_true(i.faults_in_thread > 0);
    assert_true(i.faults_in_thread <= i.faults);
    assert_ok(mv_host_audit(h));

    {
        struct mv_domain_config c;

        tu_domain_config(&c, "guest", 64 * MiB, 64 * MiB);
        c.vcpus = 4;
        c.pod_block_populate = 0; /* a whole block is a fault thread's */
        assert_ok(mv_domain_create(h, &c, &guest));
    }
    mv_workload_config_init(&wl, MV_WORKLOAD_RANDOM);
    wl.max_pages = 20000;
    assert_false(tu_run(h, guest, &wl).crashed);
    assert_true(tu_info(h, guest).faults_in_thread > 0);
    tu_verify(h, guest);
    /* Not one of those faults tried to allocate in its SIGBUS handler. */
    assert_int_equal(mv__os_allocations_in_signal(), 0);
    mv_host_destroy(h);
}

/* A thread that is not a vCPU of the domain keeps the fault threads: its
 * fault is handed over from its SIGBUS handler and served there. */
static void other_threads_faults_go_to_fault_threads(void **state)
{
    mv_host *h = in_thread_host();
    uint32_t id = in_thread_domain(h, "others", 16 * MiB, 16 * MiB, MV_POD_WAIT, 0);
    uint8_t *ram = ram_of(h, id);
    struct mv_domain_info i;

    (void)state;
    assert_int_equal(touch(ram), 1);
    assert_int_equal(touch(ram + 4096), 1); /* sequential, but no vCPU */
    i = tu_info(h, id);
    assert_int_equal(i.faults_in_thread, 0);
    assert_int_equal(i.populated_pages, 2);
    assert_int_equal(ram[0], 0x5a);
    assert_int_equal(vcpu_touch(h, id, ram + 8 * 4096), 1);
    i = tu_info(h, id);
    assert_int_equal(i.faults_in_thread, 1);
    assert_int_equal(i.populated_pages, 3);
    /* The old path, asked for: nothing is resolved in the thread. */
    {
        struct mv_host_config c;
        mv_host *old;
        uint32_t o;

        tu_host_config(&c, 64 * MiB);
        c.fault_path = MV_FAULT_PATH_THREAD;
        assert_ok(mv_host_create(&c, &old));
        o = tu_domain(old, "old", 16 * MiB, 16 * MiB);
        assert_int_equal(tu_info(old, o).fault_in_thread, 0);
        assert_int_equal(vcpu_touch(old, o, ram_of(old, o)), 1);
        assert_int_equal(tu_info(old, o).faults_in_thread, 0);
        assert_ok(mv_host_audit(old));
        mv_host_destroy(old);
    }
    assert_ok(mv_host_audit(h));
    mv_host_destroy(h);
}

/* A paused domain's vCPU that faults stops in its handler: the fault is
 * held (what pause counts as a stopped vCPU) until unpause. */
static void pause_holds_a_vcpus_own_fault(void **state)
{
    mv_host *h = in_thread_host();
    uint32_t id = in_thread_domain(h, "paused", 16 * MiB, 16 * MiB, MV_POD_WAIT, 0);
    uint8_t *ram = ram_of(h, id);
    struct toucher t;

    (void)state;
    assert_ok(mv_domain_pause(h, id));
    vcpu_touch_async(&t, h, id, ram + 5 * 4096);
    wait_for_held(h, id, 1);
    assert_int_equal(atomic_load(&t.state), 0);
    assert_int_equal(tu_info(h, id).populated_pages, 0);
    assert_ok(mv_domain_unpause(h, id));
    pthread_join(t.thread, NULL);
    assert_int_equal(atomic_load(&t.state), 1);
    assert_int_equal(ram[5 * 4096], 0x5a);
    assert_int_equal(tu_info(h, id).held_faults, 0);
    assert_ok(mv_host_audit(h));
    mv_host_destroy(h);
}

/* Out of memory, a vCPU's own fault follows the domain's policy: under
 * MV_POD_WAIT it waits until the target rises, under MV_POD_CRASH the
 * domain crashes and the vCPU takes SIGBUS. */
static void vcpu_faults_follow_pod_policy(void **state)
{
    mv_host *h = in_thread_host();
    uint32_t id = in_thread_domain(h, "waits", 16 * MiB, 4 * 4096, MV_POD_WAIT, 0);
    uint32_t crash = in_thread_domain(h, "crashes", 16 * MiB, 4 * 4096, MV_POD_CRASH, 0);
    uint8_t *ram = ram_of(h, id), *cram = ram_of(h, crash);
    struct toucher t;

    (void)state;
    install_toucher_handler();
    for (unsigned p = 0; p < 4; p++) {
        assert_int_equal(vcpu_touch(h, id, ram + p * 4096), 1);
        assert_int_equal(vcpu_touch(h, crash, cram + p * 4096), 1);
    }
    /* Fault-around stayed within the target. */
    assert_int_equal(tu_info(h, id).populated_pages, 4);
    vcpu_touch_async(&t, h, id, ram + 4 * 4096);
    wait_for_held(h, id, 1);
    assert_int_equal(atomic_load(&t.state), 0);
    assert_ok(mv_domain_set_target(h, id, 8 * 4096));
    pthread_join(t.thread, NULL);
    assert_int_equal(atomic_load(&t.state), 1);
    assert_true(tu_info(h, id).pod_waits > 0);

    assert_int_equal(vcpu_touch(h, crash, cram + 4 * 4096), 2);
    assert_int_equal(tu_info(h, crash).state, MV_DOMAIN_CRASHED);
    assert_non_null(strstr(tu_info(h, crash).crash_reason, "out of memory"));
    assert_ok(mv_domain_destroy(h, crash));
    assert_ok(mv_host_audit(h));
    mv_host_destroy(h);
}

/* A vCPU of domain id storing into pages [first, first + count) in order. */
struct sequential {
    mv_host *host;
    uint32_t domid;
    uint8_t *ram;
    unsigned first, count;
};

static void *sequential_main(void *arg)
{
    struct sequential *q = arg;

    assert_int_equal(mv_vcpu_enter(q->host, q->domid), 1);
    for (unsigned p = q->first; p < q->first + q->count; p++)
        store_word(q->ram + (size_t)p * 4096, p);
    mv_vcpu_exit();
    return NULL;
}

static void touch_in_order(mv_host *h, uint32_t id, unsigned first, unsigned count)
{
    struct sequential q = { .host = h, .domid = id, .ram = ram_of(h, id),
                            .first = first, .count = count };
    pthread_t thread;

    assert_int_equal(pthread_create(&thread, NULL, sequential_main, &q), 0);
    pthread_join(thread, NULL);
}

/* A sequential vCPU gets the pages after the one it touched; a random one,
 * another thread, or a domain with pod_fault_around 1 does not. */
static void fault_around_only_for_sequential_vcpus(void **state)
{
    mv_host *h = in_thread_host();
    uint32_t id = in_thread_domain(h, "around", 16 * MiB, 16 * MiB, MV_POD_WAIT, 0);
    uint32_t off = in_thread_domain(h, "single", 16 * MiB, 16 * MiB, MV_POD_WAIT, 1);
    uint8_t *ram = ram_of(h, id), *oram = ram_of(h, off);
    struct mv_domain_info i;

    (void)state;
    /* Pages 0 and 1 in order: the second fault populates 1, 2 and 3. */
    touch_in_order(h, id, 0, 2);
    for (uint64_t g = 0; g < 2 + MV_POD_FAULT_AROUND_DEFAULT - 1; g++)
        assert_int_equal(tu_page_type(h, id, g), MV_PAGE_RAM);
    assert_int_equal(tu_page_type(h, id, 1 + MV_POD_FAULT_AROUND_DEFAULT), MV_PAGE_POD);
    i = tu_info(h, id);
    assert_int_equal(i.populated_pages, 1 + MV_POD_FAULT_AROUND_DEFAULT);
    assert_int_equal(i.faults_in_thread, 2);
    /* Fault-around stops at a page that is not a PoD entry. */
    assert_int_equal(vcpu_touch(h, id, ram + 52 * 4096), 1);
    touch_in_order(h, id, 50, 2);
    assert_int_equal(tu_page_type(h, id, 53), MV_PAGE_POD);
    assert_int_equal(vcpu_touch(h, id, ram + 100 * 4096), 1); /* random */
    assert_int_equal(tu_page_type(h, id, 101), MV_PAGE_POD);
    assert_int_equal(touch(ram + 101 * 4096), 1);            /* not a vCPU */
    assert_int_equal(tu_page_type(h, id, 102), MV_PAGE_POD);
    assert_int_equal(tu_info(h, id).populated_pages, 1 + MV_POD_FAULT_AROUND_DEFAULT + 3 + 2);
    /* Off: a fault per page, in order or not. */
    touch_in_order(h, off, 0, 8);
    assert_int_equal(tu_info(h, off).populated_pages, 8);
    assert_int_equal(tu_info(h, off).faults_in_thread, 8);
    assert_int_equal(load_word(oram + 7 * 4096), 7);
    /* Within the target: a full window that does not fit shrinks to the
     * page touched rather than wait. */
    {
        uint32_t tight = in_thread_domain(h, "tight", 16 * MiB, 3 * 4096, MV_POD_WAIT, 0);

        touch_in_order(h, tight, 0, 3);
        i = tu_info(h, tight);
        assert_int_equal(i.populated_pages, 3);
        assert_int_equal(i.pod_waits, 0);
    }
    assert_ok(mv_host_audit(h));
    mv_host_destroy(h);
}

/* Failures in the faulting thread change nothing there: the fault goes to
 * a fault thread, which serves it (or crashes the domain) as always. */
static void injected_failures_in_the_vcpus_thread(void **state)
{
    mv_host *h = in_thread_host();
    uint32_t id = in_thread_domain(h, "failing", 16 * MiB, 16 * MiB, MV_POD_WAIT, 0);
    uint8_t *ram = ram_of(h, id);
    struct mv_domain_info i;

    (void)state;
    /* A populate that fails once is served by a fault thread. */
    mv__os_inject(MV_OS_UFFD_ZEROPAGE, ENOMEM, 0, 1);
    assert_int_equal(vcpu_touch(h, id, ram + 40 * 4096), 1);
    i = tu_info(h, id);
    assert_int_equal(i.populated_pages, 1);
    assert_int_equal(i.faults_in_thread, 0);
    assert_ok(mv_host_audit(h));
    /* A page whose remap after a sweep failed is mapped again in the
     * thread; when that fails too, by a fault thread. */
    ram[41 * 4096] = 0; /* a zero page the sweep cannot punch out */
    mv__os_inject(MV_OS_PUNCH, EIO, 0, 1);
    mv__os_inject(MV_OS_UFFD_CONTINUE, EIO, 0, 2);
    assert_ok(mv_domain_reclaim_zero(h, id, 0, NULL));
    assert_int_equal(mv__os_injection_left(MV_OS_UFFD_CONTINUE), 1);
    assert_int_equal(tu_page_type(h, id, 41), MV_PAGE_RAM);
    assert_int_equal(vcpu_touch(h, id, ram + 41 * 4096), 1);
    assert_int_equal(mv__os_injection_left(MV_OS_UFFD_CONTINUE), 0);
    assert_int_equal(tu_info(h, id).faults_in_thread, 0);
    assert_int_equal(tu_info(h, id).state, MV_DOMAIN_RUNNING);
    assert_ok(mv_host_audit(h));
    /* Fault-around that fails half-way keeps what it populated: of the
     * window from page 201, its first half. */
    mv__os_inject(MV_OS_UFFD_ZEROPAGE_MIDWAY, ENOMEM, 0, 1);
    touch_in_order(h, id, 200, 2);
    assert_int_equal(mv__os_injection_left(MV_OS_UFFD_ZEROPAGE_MIDWAY), 0);
    assert_int_equal(tu_page_type(h, id, 201), MV_PAGE_RAM);
    assert_int_equal(tu_page_type(h, id, 201 + MV_POD_FAULT_AROUND_DEFAULT - 1), MV_PAGE_POD);
    assert_int_equal(load_word(ram + 201 * 4096), 201);
    assert_ok(mv_host_audit(h));
    /* An unexpected populate error, in the thread and again in the fault
     * thread, crashes the domain; its vCPU takes SIGBUS. */
    install_toucher_handler();
    mv__os_inject(MV_OS_UFFD_ZEROPAGE, EIO, 0, 2);
    assert_int_equal(vcpu_touch(h, id, ram + 300 * 4096), 2);
    i = tu_info(h, id);
    assert_int_equal(i.state, MV_DOMAIN_CRASHED);
    assert_non_null(strstr(i.crash_reason, "cannot populate"));
    mv__os_inject(MV_OS_UFFD_ZEROPAGE, 0, 0, 0);
    assert_ok(mv_host_audit(h));
    mv_host_destroy(h);
}

/* Without its SIGBUS handler a domain keeps the fault threads. */
static void failed_handler_install_keeps_fault_threads(void **state)
{
    mv_host *h = in_thread_host();
    struct mv_domain_config c;
    uint32_t id;

    (void)state;
    tu_domain_config(&c, "nohandler", 16 * MiB, 16 * MiB);
    mv__os_inject(MV_OS_SIGACTION, EINVAL, 0, 1);
    assert_ok(mv_domain_create(h, &c, &id));
    mv__os_inject(MV_OS_SIGACTION, 0, 0, 0);
    assert_int_equal(tu_info(h, id).fault_in_thread, 0);
    assert_int_equal(vcpu_touch(h, id, ram_of(h, id)), 1);
    assert_int_equal(tu_info(h, id).faults_in_thread, 0);
    assert_ok(mv_host_audit(h));
    mv_host_destroy(h);
}

static const struct CMUnitTest cases[] = {
    cmocka_unit_test(first_touch_populates_whole_block),
    cmocka_unit_test(single_pages_when_block_populate_is_off),
    cmocka_unit_test(single_pages_when_target_is_short_of_a_block),
    cmocka_unit_test(scrub_beyond_target_is_served_by_the_sweep),
    cmocka_unit_test(sweep_never_reclaims_data),
    cmocka_unit_test(crash_policy_crashes_only_that_domain),
    cmocka_unit_test(replaced_sigbus_handler_is_put_back),
    cmocka_unit_test(wait_policy_resumes_when_target_rises),
    cmocka_unit_test(wait_policy_resumes_when_guest_balloons),
    cmocka_unit_test(memory_the_scanner_frees_resumes_a_waiting_fault),
    cmocka_unit_test(freed_memory_goes_to_the_longest_waiting_fault),
    cmocka_unit_test(held_faults_outlast_a_failed_list_of_domains),
    cmocka_unit_test(freed_memory_goes_to_faults_in_their_order),
    cmocka_unit_test(new_faults_wait_behind_older_ones),
    cmocka_unit_test(wait_policy_times_out_into_a_crash),
    cmocka_unit_test(touching_a_ballooned_page_crashes_the_domain),
    cmocka_unit_test(lowering_target_reclaims_zero_pages_or_refuses),
    cmocka_unit_test(pause_holds_faults_until_unpause),
    cmocka_unit_test(pause_parks_running_vcpus),
    cmocka_unit_test(pause_stops_faulting_vcpus),
    cmocka_unit_test(many_domains_fault_concurrently),
    cmocka_unit_test(two_fault_threads_serve_many_domains),
    cmocka_unit_test(fault_threads_run_on_fault_cpus),
    cmocka_unit_test(fault_thread_per_cpu_pins_one_each),
    cmocka_unit_test(host_destroy_with_faults_pending),
    cmocka_unit_test(destroy_with_a_fault_pending),
    cmocka_unit_test(host_budget_is_shared_by_domains),
    cmocka_unit_test(injected_failures_never_corrupt),
    cmocka_unit_test(oracle_detects_a_foreign_write),
    cmocka_unit_test(vcpus_resolve_their_own_faults_concurrently),
    cmocka_unit_test(other_threads_faults_go_to_fault_threads),
    cmocka_unit_test(pause_holds_a_vcpus_own_fault),
    cmocka_unit_test(vcpu_faults_follow_pod_policy),
    cmocka_unit_test(fault_around_only_for_sequential_vcpus),
    cmocka_unit_test(injected_failures_in_the_vcpus_thread),
    cmocka_unit_test(failed_handler_install_keeps_fault_threads),
};

TU_MAIN(cases)

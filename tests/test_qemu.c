/*
 * test_qemu.c - real guests: Debian's kernel and the test guest's
 * initramfs (scripts/guest-image.sh) under an unmodified QEMU, its RAM a
 * domain served through the VMM hand-over.  Each case checks a mechanism
 * on the guests and ends with the guest's own verification (its
 * data-verifying writer found nothing wrong), the domain audit and the
 * host audit.
 *
 * Skipped, saying why, where QEMU or the guest image is missing (the
 * Makefile's `test` builds the image; MV_GUEST_IMAGE names another).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "testutil.h"
#include "qemu.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define BOOT_TIMEOUT_MS 120000u
#define CMD_TIMEOUT_MS 30000u

static char kernel[PATH_MAX], initrd[PATH_MAX], run_dir[PATH_MAX];

/* The image's files, or skip the case saying what is missing. */
static void need_image(void)
{
    const char *dir = getenv("MV_GUEST_IMAGE") ? getenv("MV_GUEST_IMAGE")
                                                : MV_GUEST_IMAGE_DEFAULT;

    if (access("/usr/bin/qemu-system-x86_64", X_OK) != 0) {
        print_message("skipped: qemu-system-x86_64 is not installed (Debian package "
                      "qemu-system-x86; make test installs it)\n");
        skip();
    }
    snprintf(kernel, sizeof(kernel), "%s/vmlinuz", dir);
    snprintf(initrd, sizeof(initrd), "%s/initramfs.cpio.gz", dir);
    if (access(kernel, R_OK) != 0 || access(initrd, R_OK) != 0) {
        print_message("skipped: no guest image in %s (scripts/guest-image.sh %s builds it)\n",
                      dir, dir);
        skip();
    }
    snprintf(run_dir, sizeof(run_dir), "/tmp/memvisor-test-qemu.%d", (int)getpid());
    mkdir(run_dir, 0700);
}

struct guest {
    struct mv_qemu q;
    char reply[65536];
};

static void guest_config(struct mv_domain_config *c, const char *name, uint64_t maxmem,
                         uint64_t target)
{
    mv_domain_config_init(c);
    snprintf(c->name, sizeof(c->name), "%s", name);
    c->maxmem_bytes = maxmem;
    c->target_bytes = target;
}

static void guest_launch(mv_host *h, struct guest *g, const struct mv_domain_config *c)
{
    struct mv_qemu_options o = {
        .kernel = kernel, .initrd = initrd, .run_dir = run_dir,
        .append = "console=ttyS0 init_on_free=1 quiet", .agent = MV_AGENT_PATH,
    };
    char why[512];

    if (mv_qemu_launch(h, c, &o, &g->q, why, sizeof(why)) < 0)
        fail_msg("cannot start QEMU: %s", why);
}

/* One command to the guest's agent; its reply in g->reply. */
static int guest_try(struct guest *g, const char *line, unsigned timeout_ms)
{
    char why[256];

    return mv_qemu_guest_command(&g->q, line, g->reply, sizeof(g->reply), timeout_ms, why,
                                 sizeof(why));
}

static const char *guest_cmd(struct guest *g, const char *fmt, ...)
{
    char line[256], why[256];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    if (mv_qemu_guest_command(&g->q, line, g->reply, sizeof(g->reply), CMD_TIMEOUT_MS, why,
                              sizeof(why)) < 0)
        fail_msg("guest %s: '%s': %s", g->q.name, line, why);
    if (!strstr(g->reply, "\"ok\":true"))
        fail_msg("guest %s: '%s' answered %s", g->q.name, line, g->reply);
    return g->reply;
}

/* A number from the last reply. */
static uint64_t reply_u64(struct guest *g, const char *key)
{
    char pattern[64];
    const char *at;

    snprintf(pattern, sizeof(pattern), "\"%s\":", key);
    at = strstr(g->reply, pattern);
    if (!at)
        fail_msg("no %s in %s", key, g->reply);
    return strtoull(at + strlen(pattern), NULL, 10);
}

/* Wait for the guest's agent: the boot is done. */
static void guest_wait_boot(struct guest *g)
{
    uint64_t until = tu_now_ms() + BOOT_TIMEOUT_MS;

    while (guest_try(g, "ping", 2000) < 0) {
        int status;

        if (waitpid(g->q.pid, &status, WNOHANG) == g->q.pid)
            fail_msg("QEMU of %s exited during the boot (status %#x)", g->q.name, status);
        if (tu_now_ms() > until)
            fail_msg("guest %s did not boot within %u s", g->q.name, BOOT_TIMEOUT_MS / 1000);
        /* The agent is not up yet: the socket answers nothing. */
        usleep(200 * 1000);
    }
}

static void guest_boot(mv_host *h, struct guest *g, const char *name, uint64_t maxmem,
                       uint64_t target)
{
    struct mv_domain_config c;

    guest_config(&c, name, maxmem, target);
    guest_launch(h, g, &c);
    guest_wait_boot(g);
}

/* The guest's data-verifying writer has made `rounds` more checks and
 * found no mismatch. */
static void guest_verified(struct guest *g, uint64_t more_checks)
{
    uint64_t checks, until = tu_now_ms() + 60000;

    guest_cmd(g, "verify-check");
    checks = reply_u64(g, "checks");
    do {
        guest_cmd(g, "verify-check");
        assert_int_equal(reply_u64(g, "mismatches"), 0);
        if (tu_now_ms() > until)
            fail_msg("guest %s's verifier made no progress", g->q.name);
    } while (reply_u64(g, "checks") < checks + more_checks);
}

static void guest_stop(mv_host *h, struct guest *g)
{
    mv_qemu_stop(&g->q, 3000);
    mv_qemu_cleanup(&g->q);
    assert_ok(mv_domain_destroy(h, g->q.domid));
}

static void audit_all(mv_host *h, uint32_t domid)
{
    assert_ok(mv_domain_audit(h, domid));
    assert_ok(mv_share_audit(h));
    assert_ok(mv_host_audit(h));
}

/* Populate-on-demand: a 1 GiB guest with a 256 MiB target boots (its
 * kernel zeroes what it frees: init_on_free=1, and the zero sweep takes
 * those pages back) and runs; populated never passes the target; the
 * sweep returns zero pages and keeps every byte the guest checks. */
static void qemu_pod_guest_boots_and_runs_within_target(void **state)
{
    mv_host *h;
    struct mv_sweep_result res;
    struct mv_domain_info info;
    struct guest *g = calloc(1, sizeof(*g));
    uint64_t freed;

    (void)state;
    need_image();
    h = tu_host();
    guest_boot(h, g, "pod", 1 * GiB, 256 * MiB);
    info = tu_info(h, g->q.domid);
    assert_true(info.populated_pages <= info.target_pages);
    guest_cmd(g, "run verify 48");
    guest_cmd(g, "run churn 16");
    guest_cmd(g, "run compile");
    guest_verified(g, 20000);
    info = tu_info(h, g->q.domid);
    assert_true(info.populated_pages <= info.target_pages);
    assert_ok(mv_domain_reclaim_zero(h, g->q.domid, 0, &res));
    print_message("sweep: %llu of %llu pages were zero\n", (unsigned long long)res.reclaimed,
                  (unsigned long long)res.scanned);
    assert_true(res.reclaimed > 0);
    /* QEMU's own blocks: the 2 MiB ACPI table area is zeros but for its
     * tables, which the guest has read by now. */
    assert_ok(mv_vmm_trim(h, g->q.domid, &freed));
    print_message("trim: %llu pages of QEMU's own blocks were zero\n",
                  (unsigned long long)freed);
    assert_true(freed >= 256);
    guest_verified(g, 20000);
    audit_all(h, g->q.domid);
    guest_stop(h, g);
    assert_ok(mv_host_audit(h));
    mv_host_destroy(h);
    free(g);
}

/* MV_POD_WAIT holds the guest's faults when it reaches its target, until
 * the target grows; MV_POD_CRASH crashes it, and its QEMU is stopped. */
static void qemu_pod_policies_act_on_the_guest(void **state)
{
    struct mv_domain_config c;
    struct guest *g = calloc(1, sizeof(*g));
    mv_host *h;
    int status;

    (void)state;
    need_image();
    h = tu_host();
    guest_config(&c, "waits", 512 * MiB, 48 * MiB);
    c.wait_timeout_ms = 600000;
    c.pod_block_populate = 0;
    guest_launch(h, g, &c);
    /* The boot needs more than 48 MiB: its vCPU is held at the target. */
    tu_wait_until(tu_info(h, g->q.domid).populated_pages == 48 * MiB / 4096 &&
                  tu_info(h, g->q.domid).pod_waits > 0);
    assert_int_equal(tu_info(h, g->q.domid).state, MV_DOMAIN_RUNNING);
    assert_ok(mv_domain_set_target(h, g->q.domid, 256 * MiB));
    guest_wait_boot(g);
    guest_cmd(g, "run verify 16");
    guest_verified(g, 5000);
    audit_all(h, g->q.domid);
    guest_stop(h, g);

    guest_config(&c, "crashes", 512 * MiB, 48 * MiB);
    c.pod_policy = MV_POD_CRASH;
    guest_launch(h, g, &c);
    tu_wait_until(tu_info(h, g->q.domid).state == MV_DOMAIN_CRASHED);
    assert_int_equal(waitpid(g->q.pid, &status, 0), g->q.pid);
    assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    g->q.pid = 0;
    mv_qemu_cleanup(&g->q);
    assert_ok(mv_domain_destroy(h, g->q.domid));
    assert_ok(mv_host_audit(h));
    mv_host_destroy(h);
    free(g);
}

/* QEMU's virtio-balloon: inflating gives the guest's pages back to the
 * host (QEMU discards them and memvisor frees their frames); deflating
 * gives the guest its memory again. */
static void qemu_balloon_returns_memory(void **state)
{
    char why[256], reply[1024];
    struct guest *g = calloc(1, sizeof(*g));
    uint64_t before, total_before;
    mv_host *h;

    (void)state;
    need_image();
    h = tu_host();
    guest_boot(h, g, "balloon", 512 * MiB, 512 * MiB);
    guest_cmd(g, "run verify 16");
    /* Fill most of the guest's free memory so that what the balloon takes
     * was populated.  Not all of it: the guest's OOM killer takes a
     * workload first (the agent protects itself), and with 300 MiB it once
     * took the verifier under a loaded host. */
    guest_cmd(g, "touch 240");
    guest_cmd(g, "meminfo");
    total_before = reply_u64(g, "MemTotal");
    before = tu_info(h, g->q.domid).populated_pages;
    assert_ok(mv_qemu_qmp(&g->q, "{\"execute\":\"balloon\",\"arguments\":{\"value\":201326592}}",
                          reply, sizeof(reply), 10000, why, sizeof(why)));
    tu_wait_until((guest_cmd(g, "meminfo"), reply_u64(g, "MemTotal") < total_before - 250 * 1024));
    /* What the balloon holds is not populated: at most what the guest
     * kept (192 MiB) and QEMU's own use of guest RAM (firmware tables). */
    tu_wait_until(tu_info(h, g->q.domid).populated_pages < (192 + 48) * MiB / 4096);
    print_message("balloon: populated %llu -> %llu pages\n", (unsigned long long)before,
                  (unsigned long long)tu_info(h, g->q.domid).populated_pages);
    guest_verified(g, 5000);
    audit_all(h, g->q.domid);
    assert_ok(mv_qemu_qmp(&g->q, "{\"execute\":\"balloon\",\"arguments\":{\"value\":536870912}}",
                          reply, sizeof(reply), 10000, why, sizeof(why)));
    tu_wait_until((guest_cmd(g, "meminfo"), reply_u64(g, "MemTotal") >= total_before - 1024));
    guest_cmd(g, "touch 128");
    guest_verified(g, 5000);
    audit_all(h, g->q.domid);
    guest_stop(h, g);
    mv_host_destroy(h);
    free(g);
}

/* Is bit gfn set in the dirty bitmap? */
static bool dirty_bit(const uint64_t *bits, uint64_t gfn)
{
    return bits[gfn / 64] & (1ull << (gfn % 64));
}

/* One second of the guest's writes seen by QEMU's calc-dirty-rate
 * (*dirty_mb, MB/s), then the next second seen by the log (*ours_pages,
 * pages holding data).  QEMU 7.2 under TCG crashes in its dirty-bitmap
 * mode, so it samples page contents (the most pages it allows): every
 * rewrite of the verifier changes a page's bytes, as sampling needs. */
static void measure_dirty_rates(mv_host *h, struct guest *g, uint64_t *bits, uint64_t *zero,
                                uint64_t words, uint64_t *ours_pages, uint64_t *dirty_mb)
{
    char why[256], reply[2048];
    const char *at;
    int64_t n;

    /* QEMU first, then the log: QEMU's sampling reads pages, and the log
     * reports what the VMM's own reads map (fault-around) as written.
     * Over-reporting, never a lost write; but not the guest's rate. */
    assert_ok(mv_qemu_qmp(&g->q, "{\"execute\":\"calc-dirty-rate\",\"arguments\":"
                          "{\"calc-time\":1,\"sample-pages\":10000}}", reply, sizeof(reply),
                          10000, why, sizeof(why)));
    tu_wait_until(mv_qemu_qmp(&g->q, "{\"execute\":\"query-dirty-rate\"}", reply,
                              sizeof(reply), 10000, why, sizeof(why)) == 0 &&
                  strstr(reply, "\"measured\""));
    assert_ok(mv_logdirty_clean(h, g->q.domid, bits, zero, words));
    usleep(1000 * 1000); /* the rate is per second: one second of writes */
    n = mv_logdirty_clean(h, g->q.domid, bits, zero, words);
    assert_true(n > 0);
    /* Pages that hold data: the guest's free page reporting empties pages
     * meanwhile, which the log reports (as holding no data) and sampling
     * does not see. */
    *ours_pages = 0;
    for (uint64_t w = 0; w < words; w++)
        *ours_pages += (uint64_t)__builtin_popcountll(bits[w] & ~zero[w]);
    at = strstr(reply, "\"dirty-rate\":");
    assert_non_null(at);
    *dirty_mb = strtoull(at + strlen("\"dirty-rate\":"), NULL, 10);
    print_message("dirty rate: memvisor %llu pages/s (%.1f MB/s), QEMU calc-dirty-rate "
                  "%llu MB/s\n", (unsigned long long)*ours_pages, *ours_pages * 4096 / 1e6,
                  (unsigned long long)*dirty_mb);
    assert_true(*dirty_mb > 0);
}

/* Dirty logging on a real guest: every page the guest writes on purpose
 * (their gfns from its own pagemap) is in the log, and the rate the log
 * sees agrees with QEMU's own calc-dirty-rate, measured in the same run. */
static void check_guest_dirty_log(enum mv_logdirty_mode mode)
{
    struct guest *g = calloc(1, sizeof(*g));
    struct mv_domain_config c;
    uint64_t words = (384 * MiB / 4096 + 63) / 64, dirty_mb, ours_pages;
    uint64_t *bits = calloc(words, 8), *zero = calloc(words, 8);
    const char *at;
    mv_host *h;
    int64_t n;

    need_image();
    h = tu_host();
    /* Room for the verifier beside free page reporting, which holds up to
     * 64 MiB of free memory out of the guest's reach while QEMU discards
     * it: in 256 MiB the guest's OOM killer took the verifier once. */
    guest_config(&c, "dirty", 384 * MiB, 384 * MiB);
    c.logdirty_mode = mode;
    guest_launch(h, g, &c);
    guest_wait_boot(g);
    guest_cmd(g, "dirty 64"); /* allocate and write once before logging */
    assert_ok(mv_logdirty_enable(h, g->q.domid));
    assert_ok(mv_logdirty_clean(h, g->q.domid, bits, zero, words));
    guest_cmd(g, "dirty 64");
    n = mv_logdirty_clean(h, g->q.domid, bits, zero, words);
    assert_true(n >= 64);
    at = strstr(g->reply, "\"gfns\":[");
    assert_non_null(at);
    at += strlen("\"gfns\":[");
    for (int i = 0; i < 64; i++) {
        char *end;
        uint64_t gfn = strtoull(at, &end, 10);

        assert_true(end != at);
        if (!dirty_bit(bits, gfn))
            fail_msg("the guest wrote gfn %llu; the dirty log missed it",
                     (unsigned long long)gfn);
        at = end + 1;
    }
    print_message("dirty log: %lld pages dirty, the guest's 64 among them\n", (long long)n);

    /* Rate: the verifier's rewrites, seen by the log and by QEMU. */
    guest_cmd(g, "run verify 32");
    guest_verified(g, 20000); /* filled, and rewriting at its steady pace */
    /* Two seconds in a row, one each: under load (a TCG guest shares two
     * CPUs with the rest of a parallel test run) the guest's pace can
     * change between them, so a pair outside the bounds is measured again,
     * up to three pairs.  A log that is wrong misses every time. */
    for (int attempt = 1;; attempt++) {
        bool agree;

        measure_dirty_rates(h, g, bits, zero, words, &ours_pages, &dirty_mb);
        agree = ours_pages * 4096 / 1000000 * 4 + 4 >= dirty_mb &&
                dirty_mb * 4 + 4 >= ours_pages * 4096 / 1000000;
        if (agree)
            break;
        if (attempt == 3)
            fail_msg("three pairs of seconds: memvisor's log and QEMU's calc-dirty-rate "
                     "never within 4x of each other");
    }
    guest_verified(g, 1000);
    assert_ok(mv_logdirty_disable(h, g->q.domid));
    audit_all(h, g->q.domid);
    guest_stop(h, g);
    mv_host_destroy(h);
    free(bits);
    free(zero);
    free(g);
}

static void qemu_dirty_log_wp_async(void **state)
{
    (void)state;
    check_guest_dirty_log(MV_LOGDIRTY_WP_ASYNC);
}

static void qemu_dirty_log_wp_sync(void **state)
{
    (void)state;
    check_guest_dirty_log(MV_LOGDIRTY_WP_SYNC);
}

/* Sharing across three real guests: the scanner finds what they have in
 * common (the same kernel, the same programs), make_ro_and_share shares
 * more, and the guests' writes after sharing break correctly: each
 * guest's verifier finds nothing wrong. */
static void qemu_sharing_across_guests(void **state)
{
    struct guest *g = calloc(3, sizeof(*g));
    struct mv_share_stats st;
    struct mv_scan_result r;
    mv_host *h;

    (void)state;
    need_image();
    h = tu_host();
    for (int i = 0; i < 3; i++) {
        char name[16];

        snprintf(name, sizeof(name), "share%d", i);
        guest_boot(h, &g[i], name, 256 * MiB, 256 * MiB);
        guest_cmd(&g[i], "run verify 16");
        guest_cmd(&g[i], "run pagecache 8");
    }
    for (int pass = 0; pass < 2; pass++)
        assert_ok(mv_share_scan(h, 0, &r));
    assert_ok(mv_share_stats(h, &st));
    print_message("sharing: %llu pages saved in %llu shared frames\n",
                  (unsigned long long)st.saved_pages, (unsigned long long)st.shared_frames);
    assert_true(st.saved_pages > 1000);
    for (int i = 0; i < 3; i++)
        assert_ok(mv_domain_audit(h, g[i].q.domid));
    assert_ok(mv_share_audit(h));
    assert_ok(mv_share_make_ro_and_share(h, g[0].q.domid, 0, 256 * MiB / 4096, NULL));
    /* The guests write on: copy-on-write breaks, verified by each. */
    for (int i = 0; i < 3; i++)
        guest_cmd(&g[i], "run compile");
    for (int i = 0; i < 3; i++)
        guest_verified(&g[i], 10000);
    assert_ok(mv_share_stats(h, &st));
    print_message("sharing: %llu copy-on-write breaks\n", (unsigned long long)st.cow_breaks);
    assert_true(st.cow_breaks > 0);
    for (int i = 0; i < 3; i++)
        audit_all(h, g[i].q.domid);
    for (int i = 0; i < 3; i++)
        guest_stop(h, &g[i]);
    assert_ok(mv_host_audit(h));
    mv_host_destroy(h);
    free(g);
}

static const struct CMUnitTest cases[] = {
    cmocka_unit_test(qemu_pod_guest_boots_and_runs_within_target),
    cmocka_unit_test(qemu_pod_policies_act_on_the_guest),
    cmocka_unit_test(qemu_balloon_returns_memory),
    cmocka_unit_test(qemu_dirty_log_wp_async),
    cmocka_unit_test(qemu_dirty_log_wp_sync),
    cmocka_unit_test(qemu_sharing_across_guests),
};

TU_MAIN(cases)

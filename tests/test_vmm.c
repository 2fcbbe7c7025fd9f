/*
 * test_vmm.c - domains whose RAM lives in another process: a stand-in VMM
 * (vmm_stub, mapping its RAM the way QEMU does) with the agent loaded,
 * served through the hand-over (mv_vmm_accept).  Each case ends with the
 * VMM verifying its own pages, the library reading them back (the host's
 * view), and the domain and host audits.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "testutil.h"
#include "internal.h"
#include "vmm/handover.h"

#include <fcntl.h>

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

struct stub {
    pid_t pid;
    FILE *in;   /* commands to the VMM */
    FILE *out;  /* its replies */
    uint32_t domid;
};

#define STUB_CONTROL_FD 10
#define STUB_RAM_FD 11

/* What the stand-in VMM's child sets up before its exec: the control
 * socket and the machine file at the descriptors its environment names,
 * and the agent unless the case runs without it. */
struct stub_setup {
    int control, ram;
    bool no_agent;
};

static void stub_prepare(void *arg)
{
    const struct stub_setup *s = arg;

    dup2(s->control, STUB_CONTROL_FD);
    dup2(s->ram, STUB_RAM_FD);
    if (!s->no_agent)
        setenv("LD_PRELOAD", MV_AGENT_PATH, 1);
    setenv("MEMVISOR_VMM_FD", "10", 1);
    setenv("MEMVISOR_RAM_FD", "11", 1);
    /* The agent comes before the sanitizer runtimes in the stub. */
    setenv("ASAN_OPTIONS", "verify_asan_link_order=0:detect_leaks=0", 1);
}

/* Start a stand-in VMM mapping `size` bytes, with the agent unless
 * `no_agent`; memvisor's end of its control socket in *control. */
static pid_t stub_spawn(mv_host *h, uint64_t size, bool no_agent, int *control,
                        FILE **in, FILE **out)
{
    char sz[32], path[64];
    char *argv[] = { "vmm_stub", sz, path, NULL };
    struct stub_setup setup = { .ram = mv_host_machine_fd(h), .no_agent = no_agent };
    int sv[2];
    pid_t pid;

    assert_int_equal(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
    snprintf(sz, sizeof(sz), "%llu", (unsigned long long)size);
    snprintf(path, sizeof(path), "/proc/self/fd/%d", STUB_RAM_FD);
    setup.control = sv[1];
    pid = tu_spawn(MV_STUB_PATH, argv, stub_prepare, &setup, in, out);
    close(sv[1]);
    *control = sv[0];
    return pid;
}

/* One command, its reply line (without the newline) in a static buffer. */
static const char *stub_cmd(struct stub *s, const char *fmt, ...)
{
    const char *reply;
    va_list ap;

    va_start(ap, fmt);
    reply = tu_vask(s->in, s->out, fmt, ap);
    va_end(ap);
    return reply;
}

#define assert_cmd_ok(s, ...) assert_string_equal(stub_cmd(s, __VA_ARGS__), "ok")

static void config_for(struct mv_domain_config *c, const char *name, uint64_t maxmem,
                       uint64_t target)
{
    mv_domain_config_init(c);
    snprintf(c->name, sizeof(c->name), "%s", name);
    c->maxmem_bytes = maxmem;
    c->target_bytes = target;
}

static void stub_start_with(mv_host *h, struct stub *s, const struct mv_domain_config *c)
{
    char line[64];
    int control;

    s->pid = stub_spawn(h, c->maxmem_bytes, false, &control, &s->in, &s->out);
    assert_ok(mv_vmm_accept(h, control, c, 10000, &s->domid));
    assert_non_null(fgets(line, sizeof(line), s->out));
    assert_string_equal(line, "ready\n");
}

static void stub_start(mv_host *h, struct stub *s, const char *name, uint64_t maxmem,
                       uint64_t target)
{
    struct mv_domain_config c;

    config_for(&c, name, maxmem, target);
    stub_start_with(h, s, &c);
}

/* The VMM exits on its own; the domain is destroyed. */
static void stub_stop(mv_host *h, struct stub *s)
{
    int status;

    fprintf(s->in, "exit\n");
    fclose(s->in);
    fclose(s->out);
    assert_int_equal(waitpid(s->pid, &status, 0), s->pid);
    assert_ok(mv_domain_destroy(h, s->domid));
}

/* What the library reads at gfn matches the VMM's pattern (seed) or is
 * all `byte` when seed is 0. */
static void assert_host_sees(mv_host *h, uint32_t domid, uint64_t gfn, uint64_t seed,
                             int byte)
{
    uint8_t page[4096], want[4096];

    assert_ok(mv_domain_read_page(h, domid, gfn, page));
    if (seed) {
        uint64_t *w = (uint64_t *)want;

        for (uint64_t i = 0; i < 512; i++) {
            uint64_t x = seed * 0x9e3779b97f4a7c15ull ^ gfn * 0xbf58476d1ce4e5b9ull ^ i;

            x ^= x >> 31;
            x *= 0x94d049bb133111ebull;
            w[i] = (x ^ (x >> 29)) | 1;
        }
    } else {
        memset(want, byte, sizeof(want));
    }
    assert_memory_equal(page, want, sizeof(page));
}

static void audit_all(mv_host *h, uint32_t domid)
{
    assert_ok(mv_domain_audit(h, domid));
    assert_ok(mv_share_audit(h));
    assert_ok(mv_host_audit(h));
}

/* First touches populate within the target; the VMM and the host agree on
 * every byte. */
static void vmm_pod_populates_on_touch(void **state)
{
    mv_host *h = tu_host();
    struct stub s;
    struct mv_domain_info info;

    (void)state;
    stub_start(h, &s, "vmm-pod", 64 * MiB, 16 * MiB);
    info = tu_info(h, s.domid);
    assert_int_equal(info.populated_pages, 0);
    assert_cmd_ok(&s, "write 0 2048 7");
    info = tu_info(h, s.domid);
    assert_true(info.populated_pages >= 2048);
    assert_true(info.populated_pages <= 4096);
    assert_cmd_ok(&s, "verify 0 2048 7");
    assert_string_equal(stub_cmd(&s, "sum 8000 10"), "ok 0"); /* never written */
    assert_host_sees(h, s.domid, 5, 7, 0);
    assert_host_sees(h, s.domid, 2047, 7, 0);
    audit_all(h, s.domid);
    stub_stop(h, &s);
    assert_ok(mv_host_audit(h));
    mv_host_destroy(h);
}

/* Host paging of a VMM's guest: its pages are compressed out and come back
 * on the VMM's own touch, served through the VMM's userfaultfd; the host
 * reads paged pages without paging them in. */
static void vmm_host_paging_round_trip(void **state)
{
    mv_host *h = tu_host();
    struct mv_tmem_stats ts;
    struct stub s;

    (void)state;
    stub_start(h, &s, "vmm-paged", 64 * MiB, 64 * MiB);
    assert_cmd_ok(&s, "write 0 4096 9");
    assert_int_equal(mv_tmem_page_out(h, s.domid, 1000), 1000);
    assert_int_equal(tu_info(h, s.domid).paged_pages, 1000);
    assert_host_sees(h, s.domid, 5, 9, 0);
    assert_host_sees(h, s.domid, 4095, 9, 0);
    assert_int_equal(tu_info(h, s.domid).paged_pages, 1000);
    audit_all(h, s.domid);
    assert_ok(mv_tmem_audit(h));
    assert_cmd_ok(&s, "verify 0 4096 9");
    assert_int_equal(tu_info(h, s.domid).paged_pages, 0);
    assert_ok(mv_tmem_stats(h, &ts));
    assert_int_equal(ts.page_ins, 1000);
    assert_int_equal(ts.paged_out, 0);
    audit_all(h, s.domid);
    assert_ok(mv_tmem_audit(h));
    stub_stop(h, &s);
    assert_ok(mv_host_audit(h));
    mv_host_destroy(h);
}

/* With MV_POD_CRASH a touch past the target crashes the domain: the VMM is
 * killed, not left hanging. */
static void vmm_crash_policy_stops_the_vmm(void **state)
{
    mv_host *h = tu_host();
    struct mv_domain_config c;
    struct stub s;
    int status;

    (void)state;
    config_for(&c, "vmm-crash", 32 * MiB, 4 * MiB);
    c.pod_policy = MV_POD_CRASH;
    c.pod_block_populate = 0;
    stub_start_with(h, &s, &c);
    assert_string_equal(stub_cmd(&s, "write 0 2048 3"), "eof");
    assert_int_equal(waitpid(s.pid, &status, 0), s.pid);
    assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    assert_int_equal(tu_info(h, s.domid).state, MV_DOMAIN_CRASHED);
    fclose(s.in);
    fclose(s.out);
    assert_ok(mv_domain_destroy(h, s.domid));
    assert_ok(mv_host_audit(h));
    mv_host_destroy(h);
}

/* The zero sweep reclaims the VMM's zero pages (zapping them in the VMM
 * through the agent) and keeps every other byte. */
static void vmm_sweep_reclaims_zero_pages(void **state)
{
    mv_host *h = tu_host();
    struct mv_sweep_result res;
    struct stub s;

    (void)state;
    stub_start(h, &s, "vmm-sweep", 32 * MiB, 32 * MiB);
    assert_cmd_ok(&s, "write 0 1024 11");
    assert_cmd_ok(&s, "fill 1024 1024 0");
    assert_true(tu_info(h, s.domid).populated_pages >= 2048);
    assert_ok(mv_domain_reclaim_zero(h, s.domid, 0, &res));
    assert_true(res.reclaimed >= 1024);
    assert_true(tu_info(h, s.domid).populated_pages <= 1024 + (8192 - 2048));
    assert_cmd_ok(&s, "verify 0 1024 11");
    assert_string_equal(stub_cmd(&s, "sum 1024 1024"), "ok 0");
    /* Written again after the sweep: kept. */
    assert_cmd_ok(&s, "fill 1024 1 5");
    assert_host_sees(h, s.domid, 1024, 0, 5);
    audit_all(h, s.domid);
    stub_stop(h, &s);
    mv_host_destroy(h);
}

/* The VMM punching pages out of its RAM file (a balloon, free page
 * reporting) returns their frames; touched again they read zero. */
static void vmm_discard_returns_frames(void **state)
{
    mv_host *h = tu_host();
    enum mv_page_type type;
    uint64_t before;
    struct stub s;

    (void)state;
    stub_start(h, &s, "vmm-discard", 32 * MiB, 32 * MiB);
    assert_cmd_ok(&s, "write 0 2048 5");
    before = tu_info(h, s.domid).populated_pages;
    assert_cmd_ok(&s, "discard 512 512");
    assert_int_equal(tu_info(h, s.domid).populated_pages, before - 512);
    assert_ok(mv_domain_page_type(h, s.domid, 700, &type));
    assert_int_equal(type, MV_PAGE_POD);
    assert_string_equal(stub_cmd(&s, "sum 512 512"), "ok 0");
    assert_cmd_ok(&s, "verify 0 512 5");
    assert_cmd_ok(&s, "verify 1024 1024 5");
    assert_cmd_ok(&s, "write 512 512 6");
    assert_cmd_ok(&s, "verify 512 512 6");
    assert_host_sees(h, s.domid, 600, 6, 0);
    /* Past the RAM: refused, nothing changed. */
    assert_string_equal(stub_cmd(&s, "discard 8190 4"), "err 22");
    audit_all(h, s.domid);
    stub_stop(h, &s);
    mv_host_destroy(h);
}

/* The VMM's own RAM blocks (a ROM, ACPI tables), asked huge pages and
 * merging for and filled with zeros at reset, stay on small pages, and a
 * trim gives back their zero pages -- never a store of the VMM's: a writer
 * storing to the block all along, half of its stores zeros, finds every
 * page as it left it.  The guest RAM is left alone. */
static void vmm_trim_gives_back_own_zero_pages(void **state)
{
    mv_host *h = tu_host();
    uint64_t freed = 0, total = 0;
    struct stub s;
    uint32_t plain;

    (void)state;
    /* The agent pauses between a page's check and its drop: a store in
     * between must wait for the drop, not be lost to it. */
    setenv("MEMVISOR_AGENT_TRIM_PAUSE_US", "20", 1);
    stub_start(h, &s, "vmm-rom", 16 * MiB, 16 * MiB);
    unsetenv("MEMVISOR_AGENT_TRIM_PAUSE_US");
    assert_cmd_ok(&s, "write 0 16 3");
    assert_string_equal(stub_cmd(&s, "rom"), "ok 2048 nh");
    assert_ok(mv_vmm_trim(h, s.domid, &freed));
    assert_int_equal(freed, 511);
    assert_string_equal(stub_cmd(&s, "romrss"), "ok 4");
    assert_cmd_ok(&s, "romcheck");
    assert_ok(mv_vmm_trim(h, s.domid, &freed));
    assert_int_equal(freed, 0);

    assert_cmd_ok(&s, "romwriter start");
    for (int i = 0; i < 30; i++) {
        assert_ok(mv_vmm_trim(h, s.domid, &freed));
        total += freed;
    }
    assert_cmd_ok(&s, "romwriter stop");
    print_message("trims under the writer gave back %llu pages\n", (unsigned long long)total);
    assert_cmd_ok(&s, "romcheck");

    assert_cmd_ok(&s, "verify 0 16 3");
    assert_host_sees(h, s.domid, 15, 3, 0);
    /* Bad input: no such domain, a domain of the library's own. */
    assert_err(mv_vmm_trim(h, 999, NULL), -ESRCH);
    plain = tu_domain_with(h, "plain", 4 * MiB, 4 * MiB, 1, MV_POD_WAIT, 0);
    assert_err(mv_vmm_trim(h, plain, &freed), -EOPNOTSUPP);
    assert_true(strstr(mv_last_error(), "hand-over") != NULL);
    assert_err(mv_vmm_trim(NULL, s.domid, NULL), -EINVAL);
    audit_all(h, s.domid);
    stub_stop(h, &s);
    mv_host_destroy(h);
}

/* Dirty logging reads the VMM's page tables through its pagemap. */
static void check_dirty_log(enum mv_logdirty_mode mode)
{
    mv_host *h = tu_host();
    struct mv_domain_config c;
    uint64_t dirty[64], zero[64];
    struct stub s;
    int64_t n;

    config_for(&c, "vmm-dirty", 16 * MiB, 16 * MiB);
    c.logdirty_mode = mode;
    stub_start_with(h, &s, &c);
    assert_cmd_ok(&s, "write 0 4096 1");
    assert_ok(mv_logdirty_enable(h, s.domid));
    assert_ok(mv_logdirty_clean(h, s.domid, dirty, zero, 64));
    assert_cmd_ok(&s, "write 100 3 2");
    assert_cmd_ok(&s, "write 3000 1 2");
    n = mv_logdirty_clean(h, s.domid, dirty, zero, 64);
    assert_int_equal(n, 4);
    for (uint64_t g = 0; g < 4096; g++)
        assert_int_equal(!!(dirty[g / 64] & (1ull << (g % 64))),
                         (g >= 100 && g <= 102) || g == 3000);
    assert_int_equal(mv_logdirty_clean(h, s.domid, dirty, zero, 64), 0);
    assert_cmd_ok(&s, "verify 100 3 2");
    assert_cmd_ok(&s, "verify 0 100 1");
    assert_ok(mv_logdirty_disable(h, s.domid));
    audit_all(h, s.domid);
    stub_stop(h, &s);
    mv_host_destroy(h);
}

static void vmm_dirty_log_wp_async(void **state)
{
    (void)state;
    check_dirty_log(MV_LOGDIRTY_WP_ASYNC);
}

static void vmm_dirty_log_wp_sync(void **state)
{
    (void)state;
    check_dirty_log(MV_LOGDIRTY_WP_SYNC);
}

/* Pages equal across two VMMs are shared (remapped inside each VMM by its
 * agent); writes after sharing break correctly in each. */
static void vmm_sharing_across_vmms(void **state)
{
    mv_host *h = tu_host();
    struct mv_scan_result r;
    struct mv_share_stats st;
    struct stub a, b;

    (void)state;
    stub_start(h, &a, "vmm-a", 16 * MiB, 16 * MiB);
    stub_start(h, &b, "vmm-b", 16 * MiB, 16 * MiB);
    assert_cmd_ok(&a, "write 0 512 42");   /* same pattern, same gfns */
    assert_cmd_ok(&b, "write 0 512 42");
    assert_cmd_ok(&a, "write 512 256 1");  /* different */
    assert_cmd_ok(&b, "write 512 256 2");
    for (int i = 0; i < 2; i++)
        assert_ok(mv_share_scan(h, 0, &r));
    assert_ok(mv_share_stats(h, &st));
    assert_true(st.saved_pages >= 500);
    assert_true(tu_info(h, a.domid).shared_pages >= 500);
    audit_all(h, a.domid);
    assert_ok(mv_domain_audit(h, b.domid));
    /* Copy-on-write: a's writes are a's alone. */
    assert_cmd_ok(&a, "write 0 64 43");
    assert_cmd_ok(&a, "verify 0 64 43");
    assert_cmd_ok(&a, "verify 64 448 42");
    assert_cmd_ok(&b, "verify 0 512 42");
    assert_cmd_ok(&b, "verify 512 256 2");
    assert_host_sees(h, b.domid, 10, 42, 0);
    assert_host_sees(h, a.domid, 10, 43, 0);
    audit_all(h, a.domid);
    assert_ok(mv_domain_audit(h, b.domid));
    stub_stop(h, &a);
    assert_cmd_ok(&b, "verify 0 512 42");
    stub_stop(h, &b);
    assert_ok(mv_host_audit(h));
    mv_host_destroy(h);
}

/* A VMM that exits crashes its domain, whose frames go back at once. */
static void vmm_exit_crashes_domain_and_frees_frames(void **state)
{
    mv_host *h = tu_host();
    struct mv_domain_info info;
    struct stub s;
    int status;

    (void)state;
    stub_start(h, &s, "vmm-exit", 32 * MiB, 32 * MiB);
    assert_cmd_ok(&s, "write 0 2048 9");
    kill(s.pid, SIGKILL);
    assert_int_equal(waitpid(s.pid, &status, 0), s.pid);
    tu_wait_until(tu_info(h, s.domid).state == MV_DOMAIN_CRASHED);
    tu_wait_until(tu_info(h, s.domid).populated_pages == 0);
    info = tu_info(h, s.domid);
    assert_int_equal(info.populated_pages, 0);
    assert_ok(mv_host_audit(h));
    fclose(s.in);
    fclose(s.out);
    assert_ok(mv_domain_destroy(h, s.domid));
    assert_ok(mv_host_audit(h));
    mv_host_destroy(h);
}

/* Destroying the domain kills its VMM. */
static void vmm_destroy_kills_the_vmm(void **state)
{
    mv_host *h = tu_host();
    struct stub s;
    int status;

    (void)state;
    stub_start(h, &s, "vmm-destroy", 16 * MiB, 16 * MiB);
    assert_cmd_ok(&s, "write 0 100 4");
    assert_ok(mv_domain_destroy(h, s.domid));
    assert_int_equal(waitpid(s.pid, &status, 0), s.pid);
    assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    fclose(s.in);
    fclose(s.out);
    assert_ok(mv_host_audit(h));
    mv_host_destroy(h);
}

/* If the server goes away, the agent stops its VMM rather than let it run
 * on unserved.  The server is a child process here (with a host of its
 * own), the VMM its child; this process adopts the VMM when the server
 * dies (a subreaper) and sees how it ended. */
static void vmm_stops_when_memvisor_dies(void **state)
{
    int report[2], status;
    pid_t server, vmm = 0;

    (void)state;
    assert_int_equal(prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
    assert_int_equal(pipe(report), 0);
    server = fork();
    assert_true(server >= 0);
    if (server == 0) {
        mv_host *h = tu_host();
        struct stub s;

        close(report[0]);
        stub_start(h, &s, "vmm-orphan", 16 * MiB, 16 * MiB);
        if (strcmp(stub_cmd(&s, "write 0 16 1"), "ok") != 0 ||
            strcmp(stub_cmd(&s, "hold"), "ok") != 0)
            _exit(1);
        if (write(report[1], &s.pid, sizeof(s.pid)) != (ssize_t)sizeof(s.pid))
            _exit(1);
        pause();
        _exit(0);
    }
    close(report[1]);
    assert_int_equal(read(report[0], &vmm, sizeof(vmm)), (ssize_t)sizeof(vmm));
    close(report[0]);
    kill(server, SIGKILL);
    assert_int_equal(waitpid(server, &status, 0), server);
    assert_int_equal(waitpid(vmm, &status, 0), vmm);
    assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
}

/* Bad hand-overs: a size that is not maxmem, no agent (no hello), and a
 * peer that does not speak the protocol: each refused with a reason, the
 * VMM told, nothing left behind. */
static void vmm_bad_handovers_are_refused(void **state)
{
    mv_host *h = tu_host();
    struct mv_domain_config c;
    FILE *in, *out;
    int control, status, sv[2];
    uint32_t id;
    char line[64];
    pid_t pid;

    (void)state;
    config_for(&c, "vmm-bad", 32 * MiB, 32 * MiB);
    pid = stub_spawn(h, 16 * MiB, false, &control, &in, &out);
    assert_err(mv_vmm_accept(h, control, &c, 10000, &id), -EINVAL);
    assert_non_null(strstr(mv_last_error(), "maxmem"));
    assert_non_null(fgets(line, sizeof(line), out));
    assert_string_equal(line, "mapfail 22\n");
    assert_int_equal(waitpid(pid, &status, 0), pid);
    fclose(in);
    fclose(out);

    pid = stub_spawn(h, 32 * MiB, true, &control, &in, &out);
    assert_err(mv_vmm_accept(h, control, &c, 300, &id), -ETIMEDOUT);
    fclose(in);
    fclose(out);
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);

    assert_int_equal(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
    assert_int_equal(write(sv[1], "hello, memvisor", 15), 15);
    assert_err(mv_vmm_accept(h, sv[0], &c, 1000, &id), -EPROTO);
    close(sv[1]);

    /* An unsupported mode for RAM in a VMM is refused before anything. */
    c.logdirty_mode = MV_LOGDIRTY_MPROTECT;
    pid = stub_spawn(h, 32 * MiB, false, &control, &in, &out);
    assert_err(mv_vmm_accept(h, control, &c, 10000, &id), -EOPNOTSUPP);
    assert_non_null(fgets(line, sizeof(line), out));
    assert_string_equal(line, "mapfail 95\n");
    assert_int_equal(waitpid(pid, &status, 0), pid);
    fclose(in);
    fclose(out);
    assert_int_equal(mv_domain_list(h, NULL, 0), 0);
    assert_ok(mv_host_audit(h));
    mv_host_destroy(h);
}

/*
 * A case of failing VMM mappings: two VMMs filled (fill), each call of the
 * VMM's mmap, then of its madvise, failing in turn while act() runs (as
 * an injected failure stands for the VMM's own), then checked (check: every
 * byte as the VMM wrote it, writes after the failure each VMM's own), and
 * the audits.  The n-th call fails, for n = 1, 2, ... until a round makes
 * fewer than n calls (it makes at least one).
 */
struct failing_maps {
    void (*fill)(struct stub *a, struct stub *b);
    void (*act)(mv_host *h, struct stub *a, struct stub *b);
    void (*check)(mv_host *h, struct stub *a, struct stub *b, bool failed);
};

static void fail_each_mapping_call(const struct failing_maps *c)
{
    enum mv__os_op ops[] = { MV_OS_MMAP, MV_OS_ZAP };

    for (size_t o = 0; o < sizeof(ops) / sizeof(ops[0]); o++) {
        bool reached = true;

        for (unsigned skip = 0; reached; skip++) {
            mv_host *h = tu_host();
            struct stub a, b;

            stub_start(h, &a, "vmm-fa", 16 * MiB, 16 * MiB);
            stub_start(h, &b, "vmm-fb", 16 * MiB, 16 * MiB);
            c->fill(&a, &b);
            mv__os_inject(ops[o], EIO, skip, 1);
            c->act(h, &a, &b);
            reached = mv__os_injection_left(ops[o]) == 0;
            assert_true(reached || skip > 0);
            mv__os_inject(ops[o], 0, 0, 0);
            c->check(h, &a, &b, reached);
            audit_all(h, a.domid);
            assert_ok(mv_domain_audit(h, b.domid));
            stub_stop(h, &a);
            stub_stop(h, &b);
            assert_ok(mv_host_audit(h));
            mv_host_destroy(h);
        }
    }
}

static void fill_copies_and_zeros(struct stub *a, struct stub *b)
{
    assert_cmd_ok(a, "write 0 256 42");
    assert_cmd_ok(b, "write 0 256 42");
    assert_cmd_ok(a, "fill 256 256 0");
    assert_cmd_ok(b, "write 256 256 7");
}

static void share_and_sweep(mv_host *h, struct stub *a, struct stub *b)
{
    struct mv_sweep_result res;
    struct mv_scan_result r;

    (void)b;
    (void)mv_share_scan(h, 0, &r);
    (void)mv_domain_reclaim_zero(h, a->domid, 0, &res);
}

static void check_copies_and_zeros(mv_host *h, struct stub *a, struct stub *b, bool failed)
{
    (void)failed;
    assert_cmd_ok(a, "verify 0 256 42");
    assert_cmd_ok(b, "verify 0 256 42");
    assert_string_equal(stub_cmd(a, "sum 256 256"), "ok 0");
    assert_cmd_ok(b, "verify 256 256 7");
    /* Writes after the failure land where they should. */
    assert_cmd_ok(a, "write 0 16 43");
    assert_cmd_ok(b, "verify 0 256 42");
    assert_host_sees(h, a->domid, 3, 43, 0);
    assert_host_sees(h, b->domid, 3, 42, 0);
}

/* The VMM's mappings fail: sharing and the zero sweep fail or do less, and
 * every byte the VMM wrote stays as it was, for every failing call in
 * turn. */
static void vmm_failed_remaps_and_zaps_keep_every_byte(void **state)
{
    const struct failing_maps c = { fill_copies_and_zeros, share_and_sweep,
                                    check_copies_and_zeros };

    (void)state;
    fail_each_mapping_call(&c);
}

/*
 * Pages that make a VMM's agent change several mappings at once: gfns 0-7
 * of one VMM hold the bytes 1-8 and those of the other the same pages in
 * the reverse order (one stretch of eight runs of frames, mapped by one
 * batch), and gfns 16-31 alternate duplicates (bytes 40-47 at the even
 * ones) with pages of their own (eight runs to unmap in one chunk).
 */
static void fill_scattered_copies(struct stub *s, bool reversed, uint64_t seed)
{
    assert_cmd_ok(s, "write 16 16 %llu", (unsigned long long)seed);
    for (unsigned i = 0; i < 8; i++) {
        assert_cmd_ok(s, "fill %u 1 %u", i, reversed ? 8 - i : i + 1);
        assert_cmd_ok(s, "fill %u 1 %u", 16 + 2 * i, 40 + i);
    }
}

static void verify_scattered_copies(struct stub *s, bool reversed, uint64_t seed)
{
    char want[32];

    for (unsigned i = 0; i < 8; i++) {
        snprintf(want, sizeof(want), "ok %u", 4096 * (reversed ? 8 - i : i + 1));
        assert_string_equal(stub_cmd(s, "sum %u 1", i), want);
        snprintf(want, sizeof(want), "ok %u", 4096 * (40 + i));
        assert_string_equal(stub_cmd(s, "sum %u 1", 16 + 2 * i), want);
        assert_cmd_ok(s, "verify %u 1 %llu", 17 + 2 * i, (unsigned long long)seed);
    }
}

static void fill_both_scattered(struct stub *a, struct stub *b)
{
    fill_scattered_copies(a, false, 9);
    fill_scattered_copies(b, true, 10);
}

static void share_once(mv_host *h, struct stub *a, struct stub *b)
{
    struct mv_scan_result r;

    (void)a;
    (void)b;
    (void)mv_share_scan(h, 0, &r);
}

static void check_scattered(mv_host *h, struct stub *a, struct stub *b, bool failed)
{
    struct mv_share_stats st;

    assert_ok(mv_share_stats(h, &st));
    /* 8 + 8 copies: all of them when nothing failed. */
    assert_true(st.saved_pages <= 16);
    if (!failed)
        assert_int_equal(st.saved_pages, 16);
    verify_scattered_copies(a, false, 9);
    verify_scattered_copies(b, true, 10);
    assert_host_sees(h, a->domid, 17, 9, 0);
    assert_host_sees(h, b->domid, 3, 0, 5);
    /* Writes after the failure are each VMM's own. */
    assert_cmd_ok(a, "fill 0 8 77");
    verify_scattered_copies(b, true, 10);
    assert_host_sees(h, a->domid, 3, 0, 77);
}

/* The maps and unmaps a VMM's agent is asked for several at once each fail
 * in turn (the first, the second, ... of a batch): the others of the batch
 * are carried out, and every byte stays as the VMM wrote it; with none
 * failing, every copy is shared. */
static void vmm_batched_remaps_fail_one_run_at_a_time(void **state)
{
    const struct failing_maps c = { fill_both_scattered, share_once, check_scattered };

    (void)state;
    fail_each_mapping_call(&c);
}

/*
 * An agent played by the test itself, in this process, whose replies come
 * with noise before each: the previous reply again, a reply to a request
 * never sent, and one of the right request but the wrong type.  It counts
 * the requests it found already waiting when it went to read the next one
 * (sent before their predecessor's reply was read).  The pid it gives is a
 * child that only waits, so that the kill a destroy sends is not this
 * process's.
 */
struct noisy_agent {
    int control;          /* its end of the control socket */
    int requests;         /* its end of the requests socket */
    int ram_fd;
    uint8_t *ram;
    uint64_t size;
    pid_t stand_in;
    pthread_t thread;
    unsigned sent_ahead, waited_for;  /* maps of the stretch (below) */
    uint64_t silent_gfn;   /* a 1-page map of it is carried out, never answered */
    unsigned silenced;
};

static void agent_send(int fd, const struct mv_handover_msg *m, const int *fds, int nfds)
{
    assert_int_equal(mv_handover_send(fd, m, fds, nfds), 0);
}

/* Whether m maps one of gfns 0-6, which the case remaps as one stretch
 * with gfn 7 (see vmm_batched_replies_are_matched_among_noise). */
static bool maps_stretch_before_last(const struct noisy_agent *a, const struct mv_handover_msg *m)
{
    uint64_t gfn = (m->addr - (uintptr_t)a->ram) >> 12;

    return m->type == MV_HO_MAP && m->length == 4096 && gfn < 7;
}

static void *noisy_agent_main(void *arg)
{
    struct noisy_agent *a = arg;
    struct mv_handover_msg m, last = { 0 };
    bool replied = false;

    while (recv(a->control, &m, sizeof(m), 0) == (ssize_t)sizeof(m)) {
        struct mv_handover_msg noise;

        if (m.type == MV_HO_READY || m.type == MV_HO_STOP)
            continue;
        if (m.type == MV_HO_MAP)
            m.result = mmap(a->ram + (m.addr - (uintptr_t)a->ram), m.length,
                            PROT_READ | PROT_WRITE,
                            MAP_FIXED | (m.flags & MV_HO_MAP_PRIVATE ? MAP_PRIVATE : MAP_SHARED),
                            a->ram_fd, (off_t)m.offset) == MAP_FAILED ? -errno : 0;
        else if (m.type == MV_HO_ZAP)
            m.result = madvise((void *)(uintptr_t)m.addr, m.length, MADV_DONTNEED) < 0 ? -errno : 0;
        else
            m.result = -EOPNOTSUPP;
        /* A map of the stretch is answered only once the next one has come:
         * it comes at once where the maps are sent before their replies are
         * read, never where each waits for its reply (then 3 s pass). */
        if (maps_stretch_before_last(a, &m)) {
            struct pollfd next = { .fd = a->control, .events = POLLIN };

            /* Atomic: the test reads them with no lock in between. */
            if (poll(&next, 1, 3000) == 1)
                __atomic_fetch_add(&a->sent_ahead, 1, __ATOMIC_RELAXED);
            else
                __atomic_fetch_add(&a->waited_for, 1, __ATOMIC_RELAXED);
        }
        if (m.type == MV_HO_MAP && m.length == 4096 &&
            (m.addr - (uintptr_t)a->ram) >> 12 == a->silent_gfn &&
            __atomic_fetch_add(&a->silenced, 1, __ATOMIC_RELAXED) == 0)
            continue;
        /* The noise says the request failed: taken for a reply, it would
         * fail the change it answers. */
        m.type |= MV_HO_REPLY;
        if (replied) {
            last.result = -EIO;
            agent_send(a->control, &last, NULL, 0);
        }
        noise = m;
        noise.seq += 1000;
        noise.result = -EIO;
        agent_send(a->control, &noise, NULL, 0);
        noise.seq = m.seq;
        noise.type = MV_HO_TRIM | MV_HO_REPLY;
        agent_send(a->control, &noise, NULL, 0);
        agent_send(a->control, &m, NULL, 0);
        last = m;
        replied = true;
    }
    return NULL;
}

static int open_uffd_for_agent(void)
{
    return (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
}

static void noisy_agent_start(mv_host *h, struct noisy_agent *a, uint64_t size,
                              uint64_t silent_gfn, uint32_t *domid)
{
    struct mv_domain_config c;
    struct mv_handover_msg hello;
    int control[2], requests[2], fds[MV_HANDOVER_FDS];

    memset(a, 0, sizeof(*a));
    a->size = size;
    a->silent_gfn = silent_gfn;
    a->ram_fd = mv_host_machine_fd(h);
    a->ram = mmap(NULL, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    assert_true(a->ram != MAP_FAILED);
    a->stand_in = fork();
    assert_true(a->stand_in >= 0);
    if (a->stand_in == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        for (;;)
            pause();
    }
    assert_int_equal(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, control), 0);
    assert_int_equal(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, requests), 0);
    a->control = control[1];
    a->requests = requests[0];
    fds[0] = open_uffd_for_agent();
    fds[1] = open_uffd_for_agent();
    fds[2] = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    fds[3] = requests[1];
    assert_true(fds[0] >= 0 && fds[1] >= 0 && fds[2] >= 0);
    memset(&hello, 0, sizeof(hello));
    hello.magic = MV_HANDOVER_MAGIC;
    hello.version = MV_HANDOVER_VERSION;
    hello.type = MV_HO_HELLO;
    hello.addr = (uintptr_t)a->ram;
    hello.length = size;
    hello.pid = a->stand_in;
    snprintf(hello.text, sizeof(hello.text), "noisy-agent");
    agent_send(a->control, &hello, fds, MV_HANDOVER_FDS);
    for (int i = 0; i < MV_HANDOVER_FDS; i++)
        close(fds[i]);
    assert_int_equal(pthread_create(&a->thread, NULL, noisy_agent_main, a), 0);
    config_for(&c, "vmm-noisy", size, size);
    assert_ok(mv_vmm_accept(h, control[0], &c, 10000, domid));
}

/* The domain goes (the stand-in VMM is killed), then the agent. */
static void noisy_agent_stop(mv_host *h, struct noisy_agent *a, uint32_t domid)
{
    int status;

    assert_ok(mv_domain_destroy(h, domid));
    assert_int_equal(waitpid(a->stand_in, &status, 0), a->stand_in);
    shutdown(a->control, SHUT_RDWR);
    pthread_join(a->thread, NULL);
    close(a->control);
    close(a->requests);
    munmap(a->ram, a->size);
}

/* Gfns 64-71 hold the contents of 0-7 in the reverse order: 0-7 are
 * remapped as one stretch of eight runs onto the frames of 64-71. */
static void fill_reversed_stretch(struct noisy_agent *a)
{
    for (unsigned i = 0; i < 8; i++) {
        memset(a->ram + (uint64_t)i * 4096, (int)(i + 1), 4096);
        memset(a->ram + (uint64_t)(64 + i) * 4096, (int)(8 - i), 4096);
    }
}

/* Both the VMM and the library read what fill_reversed_stretch wrote. */
static void verify_reversed_stretch(mv_host *h, struct noisy_agent *a, uint32_t domid)
{
    uint8_t page[4096];

    for (unsigned i = 0; i < 8; i++) {
        assert_int_equal(a->ram[(uint64_t)i * 4096 + 100], i + 1);
        assert_int_equal(a->ram[(uint64_t)(64 + i) * 4096 + 4000], 8 - i);
        assert_ok(mv_domain_read_page(h, domid, i, page));
        assert_int_equal(page[7], i + 1);
        assert_ok(mv_domain_read_page(h, domid, 64 + i, page));
        assert_int_equal(page[7], 8 - i);
    }
}

/* One sharing pass; the pages saved in all after it. */
static uint64_t scan_once_saved(mv_host *h)
{
    struct mv_share_stats st;
    struct mv_scan_result r;

    assert_ok(mv_share_scan(h, 0, &r));
    assert_ok(mv_share_stats(h, &st));
    return st.saved_pages;
}

/* Replies among noise (a reply again, to a request never made, of the
 * wrong type) are matched to their requests; a stretch's maps are sent
 * before their replies are read; the duplicates the domain holds are all
 * shared, and it reads what was written. */
static void vmm_batched_replies_are_matched_among_noise(void **state)
{
    mv_host *h = tu_host();
    struct noisy_agent a;
    uint32_t domid;

    (void)state;
    noisy_agent_start(h, &a, 16 * MiB, UINT64_MAX, &domid);
    fill_reversed_stretch(&a);
    assert_int_equal(scan_once_saved(h), 8);
    /* Gfns 0-7 were mapped by one batch: each map came before the reply
     * to the one before it. */
    assert_int_equal(__atomic_load_n(&a.sent_ahead, __ATOMIC_RELAXED), 7);
    assert_int_equal(__atomic_load_n(&a.waited_for, __ATOMIC_RELAXED), 0);
    verify_reversed_stretch(h, &a, domid);
    /* A write after sharing is this gfn's alone. */
    a.ram[3 * 4096] = 99;
    assert_int_equal(a.ram[(64 + 4) * 4096], 4);
    audit_all(h, domid);
    noisy_agent_stop(h, &a, domid);
    assert_ok(mv_host_audit(h));
    mv_host_destroy(h);
}

/* An agent that carries out one map of a batch and never answers it: the
 * wait ends (after 200 ms here), the stretch goes back to the gfns' own
 * frames, the domain runs on and every byte stays; the next pass, all
 * answered, shares the stretch. */
static void vmm_unanswered_map_fails_its_stretch_alone(void **state)
{
    mv_host *h = tu_host();
    struct noisy_agent a;
    uint32_t domid;

    (void)state;
    mv__vmm_set_reply_timeout(200);
    noisy_agent_start(h, &a, 16 * MiB, 3, &domid);
    fill_reversed_stretch(&a);
    assert_int_equal(scan_once_saved(h), 0);
    assert_int_equal(__atomic_load_n(&a.silenced, __ATOMIC_RELAXED), 1);
    assert_int_equal(tu_info(h, domid).state, MV_DOMAIN_RUNNING);
    verify_reversed_stretch(h, &a, domid);
    audit_all(h, domid);
    assert_int_equal(scan_once_saved(h), 8);
    verify_reversed_stretch(h, &a, domid);
    audit_all(h, domid);
    noisy_agent_stop(h, &a, domid);
    mv__vmm_set_reply_timeout(0);
    assert_ok(mv_host_audit(h));
    mv_host_destroy(h);
}

/* A discard whose hole punch fails: the VMM is told, the pages keep their
 * bytes and their frames. */
static void vmm_failed_discard_keeps_the_pages(void **state)
{
    mv_host *h = tu_host();
    uint64_t before;
    struct stub s;

    (void)state;
    stub_start(h, &s, "vmm-fdiscard", 16 * MiB, 16 * MiB);
    assert_cmd_ok(&s, "write 0 1024 8");
    before = tu_info(h, s.domid).populated_pages;
    mv__os_inject(MV_OS_PUNCH, EIO, 0, 100);
    assert_string_equal(stub_cmd(&s, "discard 0 512"), "err 5");
    mv__os_inject(MV_OS_PUNCH, 0, 0, 0);
    assert_int_equal(tu_info(h, s.domid).populated_pages, before);
    assert_cmd_ok(&s, "verify 0 1024 8");
    audit_all(h, s.domid);
    stub_stop(h, &s);
    mv_host_destroy(h);
}

static const struct CMUnitTest cases[] = {
    cmocka_unit_test(vmm_pod_populates_on_touch),
    cmocka_unit_test(vmm_host_paging_round_trip),
    cmocka_unit_test(vmm_crash_policy_stops_the_vmm),
    cmocka_unit_test(vmm_sweep_reclaims_zero_pages),
    cmocka_unit_test(vmm_discard_returns_frames),
    cmocka_unit_test(vmm_trim_gives_back_own_zero_pages),
    cmocka_unit_test(vmm_dirty_log_wp_async),
    cmocka_unit_test(vmm_dirty_log_wp_sync),
    cmocka_unit_test(vmm_sharing_across_vmms),
    cmocka_unit_test(vmm_exit_crashes_domain_and_frees_frames),
    cmocka_unit_test(vmm_destroy_kills_the_vmm),
    cmocka_unit_test(vmm_stops_when_memvisor_dies),
    cmocka_unit_test(vmm_bad_handovers_are_refused),
    cmocka_unit_test(vmm_failed_remaps_and_zaps_keep_every_byte),
    cmocka_unit_test(vmm_batched_remaps_fail_one_run_at_a_time),
    cmocka_unit_test(vmm_batched_replies_are_matched_among_noise),
    cmocka_unit_test(vmm_unanswered_map_fails_its_stretch_alone),
    cmocka_unit_test(vmm_failed_discard_keeps_the_pages),
};

TU_MAIN(cases)

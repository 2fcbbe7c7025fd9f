/*
 * test_fc.c - Firecracker's page-fault-handler hand-over: a stand-in that
 * follows Firecracker's documented protocol (fc_standin) hands its
 * userfaultfd and regions over on a Unix socket (mv_fc_receive) and its
 * snapshot memory is served (mv_fc_serve): lazy loading from the memory
 * file, populate-on-demand within a target and its policies, balloon
 * removals, synchronous dirty logging, the VMM's exit, bad hand-overs.
 * Every case ends with the VM's audit and the host audit.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "testutil.h"
#include "fc.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

struct standin {
    pid_t pid;
    FILE *in, *out;
    mv_fc *vm;
    uint64_t pages;
    char dir[64];
};

static uint8_t pattern(uint64_t seed, uint64_t page, uint64_t i)
{
    return (uint8_t)((seed * 131 + page * 7 + i) | 1);
}

/* A snapshot memory file of `pages` pages of seed's pattern. */
static void write_mem_file(const char *path, uint64_t pages, uint64_t seed)
{
    uint8_t page[4096];
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

    assert_true(fd >= 0);
    for (uint64_t p = 0; p < pages; p++) {
        for (int i = 0; i < 4096; i++)
            page[i] = pattern(seed, p, (uint64_t)i);
        assert_int_equal(write(fd, page, sizeof(page)), (ssize_t)sizeof(page));
    }
    close(fd);
}

/* Start the stand-in with `sizes` (MiB, comma-separated) and serve it. */
static void standin_start(mv_host *h, struct standin *s, const char *sizes, bool wp,
                          struct mv_fc_config *config)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    struct mv_fc_handover ho;
    char *argv[] = { "fc_standin", sa.sun_path, (char *)sizes, wp ? "--wp" : NULL, NULL };
    char why[256], line[64];
    int lfd;

    snprintf(s->dir, sizeof(s->dir), "/tmp/mv-test-fc.XXXXXX");
    assert_non_null(mkdtemp(s->dir));
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/uffd.sock", s->dir);
    lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_int_equal(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(lfd, 1), 0);
    s->pid = tu_spawn(MV_STANDIN_PATH, argv, NULL, NULL, &s->in, &s->out);
    if (mv_fc_receive(lfd, 10000, &ho, why, sizeof(why)) < 0)
        fail_msg("no hand-over: %s", why);
    close(lfd);
    assert_int_equal(ho.pid, s->pid);
    assert_ok(mv_fc_serve(h, config, ho.uffd, ho.pid, ho.regions, ho.count, &s->vm));
    free(ho.regions);
    assert_non_null(fgets(line, sizeof(line), s->out));
    assert_int_equal(sscanf(line, "ready %llu", (unsigned long long *)&s->pages), 1);
}

static const char *cmd(struct standin *s, const char *fmt, ...)
{
    const char *reply;
    va_list ap;

    va_start(ap, fmt);
    reply = tu_vask(s->in, s->out, fmt, ap);
    va_end(ap);
    return reply;
}

#define assert_cmd_ok(s, ...) assert_string_equal(cmd(s, __VA_ARGS__), "ok")

static struct mv_fc_info info_of(struct standin *s)
{
    struct mv_fc_info info;

    assert_ok(mv_fc_info(s->vm, &info));
    return info;
}

static void standin_stop(struct standin *s)
{
    char path[96];
    int status;

    fprintf(s->in, "exit\n");
    fclose(s->in);
    fclose(s->out);
    waitpid(s->pid, &status, 0);
    mv_fc_destroy(s->vm);
    snprintf(path, sizeof(path), "%s/uffd.sock", s->dir);
    unlink(path);
    snprintf(path, sizeof(path), "%s/mem", s->dir);
    unlink(path);
    rmdir(s->dir);
}

static void config_for(struct mv_fc_config *c, const char *name)
{
    memset(c, 0, sizeof(*c));
    snprintf(c->name, sizeof(c->name), "%s", name);
    c->pod_policy = MV_POD_WAIT;
}

/* Every page the VMM touches comes from the snapshot's memory file, across
 * both regions, once; the host's budget counts them. */
static void fc_lazy_loads_the_snapshot(void **state)
{
    mv_host *h = tu_host();
    struct mv_fc_config c;
    struct mv_host_stats hs;
    struct standin s;
    char mem[96];

    (void)state;
    config_for(&c, "fc-lazy");
    snprintf(mem, sizeof(mem), "/tmp/mv-test-fc-mem.%d", (int)getpid());
    write_mem_file(mem, 3072, 5);
    c.mem_file = mem;
    standin_start(h, &s, "8,4", false, &c);
    assert_int_equal(s.pages, 3072);
    assert_int_equal(info_of(&s).populated_pages, 0);
    assert_cmd_ok(&s, "check 0 100 5");
    assert_int_equal(info_of(&s).loaded_pages, 100);
    assert_cmd_ok(&s, "check 0 3072 5");   /* both regions, offsets honoured */
    assert_int_equal(info_of(&s).loaded_pages, 3072);
    assert_int_equal(info_of(&s).populated_pages, 3072);
    assert_ok(mv_host_stats(h, &hs));
    assert_true(hs.populated_pages >= 3072);
    assert_ok(mv_fc_audit(s.vm));
    assert_ok(mv_host_audit(h));
    standin_stop(&s);
    unlink(mem);
    assert_ok(mv_host_audit(h));
    mv_host_destroy(h);
}

/* Populate-on-demand within a target: MV_POD_WAIT holds the VMM until the
 * target grows; MV_POD_CRASH kills it. */
static void fc_target_and_policies(void **state)
{
    mv_host *h = tu_host();
    struct mv_fc_config c;
    struct standin s;
    int status;

    (void)state;
    config_for(&c, "fc-wait");
    c.target_bytes = 2 * MiB;
    c.wait_timeout_ms = 60000;
    standin_start(h, &s, "8", false, &c);
    fprintf(s.in, "write 0 1024 7\n");
    fflush(s.in);
    tu_wait_until(info_of(&s).pod_waits > 0);
    assert_int_equal(info_of(&s).populated_pages, 512);
    assert_ok(mv_fc_set_target(s.vm, 8 * MiB));
    {
        char reply[32];

        assert_non_null(fgets(reply, sizeof(reply), s.out)); /* the write's */
        assert_string_equal(reply, "ok\n");
    }
    assert_string_equal(cmd(&s, "sum 1023 1"), "ok 28672");
    assert_int_equal(info_of(&s).zero_filled_pages, 1024);
    assert_ok(mv_fc_audit(s.vm));
    assert_ok(mv_host_audit(h));
    standin_stop(&s);

    config_for(&c, "fc-crash");
    c.target_bytes = 2 * MiB;
    c.pod_policy = MV_POD_CRASH;
    standin_start(h, &s, "8", false, &c);
    assert_string_equal(cmd(&s, "write 0 1024 7"), "eof");
    assert_int_equal(waitpid(s.pid, &status, 0), s.pid);
    assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    tu_wait_until(info_of(&s).state == MV_FC_CRASHED);
    assert_non_null(strstr(info_of(&s).reason, "target"));
    fclose(s.in);
    fclose(s.out);
    mv_fc_destroy(s.vm);
    rmdir(s.dir);
    assert_ok(mv_host_audit(h));
    mv_host_destroy(h);
}

/* The balloon: removed pages are uncharged, and read zero when touched
 * again, not the snapshot's bytes. */
static void fc_balloon_removals_return_memory(void **state)
{
    mv_host *h = tu_host();
    struct mv_fc_config c;
    struct standin s;
    char mem[96];

    (void)state;
    config_for(&c, "fc-balloon");
    snprintf(mem, sizeof(mem), "/tmp/mv-test-fc-mem.%d", (int)getpid());
    write_mem_file(mem, 2048, 9);
    c.mem_file = mem;
    standin_start(h, &s, "8", false, &c);
    assert_cmd_ok(&s, "check 0 2048 9");
    assert_cmd_ok(&s, "remove 100 200");
    tu_wait_until(info_of(&s).populated_pages == 2048 - 200);
    assert_int_equal(info_of(&s).removed_pages, 200);
    assert_string_equal(cmd(&s, "sum 100 200"), "ok 0");
    assert_int_equal(info_of(&s).populated_pages, 2048);
    assert_int_equal(info_of(&s).zero_filled_pages, 200);
    assert_cmd_ok(&s, "check 0 100 9");
    assert_cmd_ok(&s, "check 300 1748 9");
    assert_ok(mv_fc_audit(s.vm));
    assert_ok(mv_host_audit(h));
    standin_stop(&s);
    unlink(mem);
    mv_host_destroy(h);
}

/* Synchronous dirty logging when the VMM registered for write protection;
 * refused, saying why, when it did not. */
static void fc_dirty_log(void **state)
{
    mv_host *h = tu_host();
    struct mv_fc_config c;
    uint64_t bits[32];
    struct standin s;

    (void)state;
    config_for(&c, "fc-dirty");
    standin_start(h, &s, "4", true, &c);
    assert_cmd_ok(&s, "write 0 1024 1");
    assert_ok(mv_fc_logdirty_enable(s.vm));
    assert_int_equal(mv_fc_logdirty_clean(s.vm, bits, 16), 0);
    assert_cmd_ok(&s, "write 10 3 2");
    assert_cmd_ok(&s, "write 700 1 2");
    assert_int_equal(mv_fc_logdirty_clean(s.vm, bits, 16), 4);
    for (uint64_t p = 0; p < 1024; p++)
        assert_int_equal(!!(bits[p / 64] & (1ull << (p % 64))),
                         (p >= 10 && p <= 12) || p == 700);
    assert_int_equal(mv_fc_logdirty_clean(s.vm, bits, 16), 0);
    assert_cmd_ok(&s, "write 10 1 3");      /* protected again by the clean */
    assert_int_equal(mv_fc_logdirty_clean(s.vm, bits, 16), 1);
    assert_err(mv_fc_logdirty_clean(s.vm, bits, 2), -ENOBUFS);
    assert_ok(mv_fc_logdirty_disable(s.vm));
    assert_string_equal(cmd(&s, "sum 10 1"), "ok 12288");
    assert_true(info_of(&s).write_faults >= 5);
    assert_ok(mv_fc_audit(s.vm));
    standin_stop(&s);

    config_for(&c, "fc-nowp");
    standin_start(h, &s, "4", false, &c);
    assert_cmd_ok(&s, "write 0 16 1");
    assert_true(mv_fc_logdirty_enable(s.vm) < 0);
    assert_non_null(strstr(mv_last_error(), "write protection"));
    assert_cmd_ok(&s, "write 0 16 2");
    standin_stop(&s);
    assert_ok(mv_host_audit(h));
    mv_host_destroy(h);
}

/* The VMM exits: its pages are uncharged; destroying a VM kills its VMM. */
static void fc_exit_and_destroy(void **state)
{
    mv_host *h = tu_host();
    struct mv_fc_config c;
    struct standin s;
    int status;

    (void)state;
    config_for(&c, "fc-exit");
    standin_start(h, &s, "4", false, &c);
    assert_cmd_ok(&s, "write 0 1024 1");
    kill(s.pid, SIGKILL);
    waitpid(s.pid, &status, 0);
    tu_wait_until(info_of(&s).state == MV_FC_EXITED);
    tu_wait_until(info_of(&s).populated_pages == 0);
    assert_ok(mv_host_audit(h));
    fclose(s.in);
    fclose(s.out);
    mv_fc_destroy(s.vm);
    rmdir(s.dir);

    config_for(&c, "fc-destroy");
    standin_start(h, &s, "4", false, &c);
    assert_cmd_ok(&s, "write 0 64 1");
    assert_cmd_ok(&s, "hold");
    mv_fc_destroy(s.vm);
    assert_int_equal(waitpid(s.pid, &status, 0), s.pid);
    assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    fclose(s.in);
    fclose(s.out);
    rmdir(s.dir);
    assert_ok(mv_host_audit(h));
    mv_host_destroy(h);
}

/* Bad hand-overs: refused with the reason, nothing left behind. */
static void fc_bad_handovers_are_refused(void **state)
{
    struct mv_fc_region r[2] = { { 0x10000000, 1 << 20, 0, 4096 },
                                 { 0x10080000, 1 << 20, 0, 4096 } };
    struct mv_fc_region *got;
    struct mv_fc_config c;
    size_t n;
    char why[256];
    mv_host *h = tu_host();
    mv_fc *vm;
    int fds[2];

    (void)state;
    assert_int_equal(mv_fc_parse_regions("{}", &got, &n, why, sizeof(why)), -EINVAL);
    assert_int_equal(mv_fc_parse_regions("[]", &got, &n, why, sizeof(why)), -EINVAL);
    assert_int_equal(mv_fc_parse_regions("[{\"size\":4096}]", &got, &n, why, sizeof(why)),
                     -EINVAL);
    assert_int_equal(mv_fc_parse_regions("[{\"base_host_virt_addr\":-1,\"size\":4096,"
                                         "\"offset\":0,\"page_size\":4096}]", &got, &n,
                                         why, sizeof(why)), -EINVAL);
    assert_int_equal(mv_fc_parse_regions("[1] trailing", &got, &n, why, sizeof(why)), -EINVAL);
    assert_ok(mv_fc_parse_regions("[{\"base_host_virt_addr\":4096,\"size\":8192,"
                                  "\"offset\":0,\"page_size_kib\":4}]", &got, &n, why,
                                  sizeof(why)));
    assert_int_equal(n, 1);
    assert_int_equal(got[0].page_size, 4096);
    free(got);

    config_for(&c, "fc-bad");
    assert_int_equal(pipe(fds), 0);
    assert_err(mv_fc_serve(h, &c, fds[0], 0, r, 2, &vm), -EINVAL); /* overlap */
    assert_non_null(strstr(mv_last_error(), "overlap"));
    assert_int_equal(pipe(fds), 0);
    r[1].base = 0x20000000;
    r[1].page_size = 2 << 20;
    assert_err(mv_fc_serve(h, &c, fds[0], 0, r, 2, &vm), -EINVAL); /* huge pages */
    assert_int_equal(pipe(fds), 0);
    r[1].page_size = 4096;
    r[1].offset = 100;
    assert_err(mv_fc_serve(h, &c, fds[0], 0, r, 2, &vm), -EINVAL); /* misaligned */
    assert_int_equal(pipe(fds), 0);
    r[1].offset = 0;
    c.mem_file = "/nonexistent/mem";
    assert_err(mv_fc_serve(h, &c, fds[0], 0, r, 2, &vm), -ENOENT);
    close(fds[1]);
    assert_null(mv_fc_next(h, NULL));
    assert_ok(mv_host_audit(h));
    mv_host_destroy(h);
}

static const struct CMUnitTest cases[] = {
    cmocka_unit_test(fc_lazy_loads_the_snapshot),
    cmocka_unit_test(fc_target_and_policies),
    cmocka_unit_test(fc_balloon_removals_return_memory),
    cmocka_unit_test(fc_dirty_log),
    cmocka_unit_test(fc_exit_and_destroy),
    cmocka_unit_test(fc_bad_handovers_are_refused),
};

TU_MAIN(cases)

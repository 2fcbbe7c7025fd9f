/*
 * testutil.h - what every library test shares: a host that skips the test
 * (saying why) when the kernel lacks a feature, domain shorthands, checks
 * that print mv_last_error() on failure, and the runner that executes one
 * named case per process.
 */
#ifndef MV_TESTUTIL_H
#define MV_TESTUTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <semaphore.h>
#include <stdbool.h>
#include <stdio.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

#include "memvisor.h"
#include "memvisor-guest.h"

#define MiB (1024ull * 1024ull)
#define GiB (1024ull * MiB)

/* Fail the test with the library's explanation unless `expr` is >= 0. */
#define assert_ok(expr)                                                        \
    do {                                                                       \
        long long rc_ = (long long)(expr);                                     \
        if (rc_ < 0)                                                           \
            fail_msg("%s = %lld (%s): %s", #expr, rc_, mv_strerror((int)rc_), \
                     mv_last_error());                                         \
    } while (0)

/* Expect exactly the error `err` and a non-empty explanation. */
#define assert_err(expr, err)                                                  \
    do {                                                                       \
        long long rc_ = (long long)(expr);                                     \
        if (rc_ != (err))                                                      \
            fail_msg("%s = %lld, expected %d (%s); message: %s", #expr, rc_,   \
                     (err), mv_strerror(err), mv_last_error());                \
        assert_true(mv_last_error()[0] != '\0' || (err) == -ESRCH);            \
    } while (0)

/* What a host of this machine chooses when it is asked to choose
 * (MV_TMEM_STORE_AUTO, MV_SHARE_READ_AUTO: each measures once per
 * process): asked once, of a small host. */
struct tu_auto_choices {
    enum mv_tmem_store tmem_store;
    enum mv_share_read share_read;
};

static inline struct tu_auto_choices tu_auto_choices(void)
{
    static struct tu_auto_choices chosen;
    static bool asked;
    struct mv_host_config c;
    struct mv_tmem_stats t;
    struct mv_share_stats s;
    mv_host *h = NULL;

    if (asked)
        return chosen;
    mv_host_config_init(&c);
    c.machine_bytes = 1 * GiB;
    c.budget_bytes = 64 * MiB;
    assert_ok(mv_host_create(&c, &h));
    assert_ok(mv_tmem_stats(h, &t));
    assert_ok(mv_share_stats(h, &s));
    mv_host_destroy(h);
    chosen = (struct tu_auto_choices){ .tmem_store = t.store, .share_read = s.read_mode };
    asked = true;
    return chosen;
}

/* CTest runs the tmem suite a second time with the store that
 * MV_TMEM_STORE_AUTO does not choose on this machine. */
static inline void tu_apply_tmem_store(struct mv_host_config *c)
{
    if (getenv("MV_TEST_OTHER_TMEM_STORE"))
        c->tmem_store = tu_auto_choices().tmem_store == MV_TMEM_STORE_COPIED
                      ? MV_TMEM_STORE_MAPPED : MV_TMEM_STORE_COPIED;
}

/* ... and the sharing suite with the way of reading pages
 * (mv_host_config.share_read) that MV_SHARE_READ_AUTO does not choose. */
static inline void tu_apply_share_read(struct mv_host_config *c)
{
    if (getenv("MV_TEST_OTHER_SHARE_READ"))
        c->share_read = tu_auto_choices().share_read == MV_SHARE_READ_COPY
                      ? MV_SHARE_READ_IN_PLACE : MV_SHARE_READ_COPY;
}

static inline mv_host *tu_host_with(uint64_t budget, unsigned spin_us)
{
    struct mv_kernel_features f;
    struct mv_host_config c;
    mv_host *h = NULL;

    if (mv_probe_kernel(&f) < 0) {
        print_message("skipped: %s\n", mv_last_error());
        skip();
    }
    mv_host_config_init(&c);
    /* 64 GiB of frame space: plenty for tests, and it fits the address
     * space ThreadSanitizer leaves to the program. */
    c.machine_bytes = 64 * GiB;
    c.budget_bytes = budget;
    c.fault_spin_us = spin_us;
    /* CTest runs some suites a second time in the fault mode that
     * MV_FAULT_AUTO does not choose on this machine, with every fault taken
     * to a fault thread (MV_FAULT_PATH_THREAD, not the default either). */
    if (getenv("MV_TEST_OTHER_FAULT_MODE")) {
        cpu_set_t cpus;

        c.fault_path = MV_FAULT_PATH_THREAD;

        assert_int_equal(sched_getaffinity(0, sizeof(cpus), &cpus), 0);
        c.fault_mode = CPU_COUNT(&cpus) <= (int)MV_FAULT_PER_CPU_AUTO_MAX
                     ? MV_FAULT_SHARED : MV_FAULT_PER_CPU;
    }
    tu_apply_tmem_store(&c);
    tu_apply_share_read(&c);
    assert_ok(mv_host_create(&c, &h));
    return h;
}

/* A host configuration as tu_host_with makes it, for a test that sets
 * more: the kernel probed first (the test skips, saying why, when it lacks
 * a feature), 64 GiB of frame space and `budget` bytes of it usable, the
 * rest the library's defaults (no fault mode chosen from the environment). */
static inline void tu_host_config(struct mv_host_config *c, uint64_t budget)
{
    struct mv_kernel_features f;

    if (mv_probe_kernel(&f) < 0) {
        print_message("skipped: %s\n", mv_last_error());
        skip();
    }
    mv_host_config_init(c);
    c->machine_bytes = 64 * GiB;
    c->budget_bytes = budget;
    tu_apply_tmem_store(c);
    tu_apply_share_read(c);
}

static inline mv_host *tu_host(void)
{
    return tu_host_with(4 * GiB, MV_FAULT_SPIN_DEFAULT);
}

static inline uint32_t tu_domain_with(mv_host *h, const char *name, uint64_t maxmem,
                                      uint64_t target, unsigned vcpus,
                                      enum mv_pod_policy policy, unsigned wait_ms)
{
    struct mv_domain_config c;
    uint32_t id = 0;

    mv_domain_config_init(&c);
    snprintf(c.name, sizeof(c.name), "%s", name);
    c.maxmem_bytes = maxmem;
    c.target_bytes = target;
    c.vcpus = vcpus;
    c.pod_policy = policy;
    if (wait_ms)
        c.wait_timeout_ms = wait_ms;
    /* CTest runs the sharing suite a second time with the kernel copying
     * shared pages on write. */
    if (getenv("MV_TEST_KERNEL_COW"))
        c.cow_mode = MV_COW_KERNEL;
    assert_ok(mv_domain_create(h, &c, &id));
    return id;
}

/* A domain configuration with a name and sizes, the rest the library's
 * defaults (no copy-on-write mode chosen from the environment), for a test
 * that sets more before mv_domain_create. */
static inline void tu_domain_config(struct mv_domain_config *c, const char *name,
                                    uint64_t maxmem, uint64_t target)
{
    mv_domain_config_init(c);
    snprintf(c->name, sizeof(c->name), "%s", name);
    c->maxmem_bytes = maxmem;
    c->target_bytes = target;
}

static inline uint32_t tu_domain(mv_host *h, const char *name, uint64_t maxmem,
                                 uint64_t target)
{
    return tu_domain_with(h, name, maxmem, target, 2, MV_POD_WAIT, 0);
}

static inline struct mv_domain_info tu_info(mv_host *h, uint32_t id)
{
    struct mv_domain_info info;

    assert_ok(mv_domain_info(h, id, &info));
    return info;
}

/* The type of page gfn of a domain is now. */
static inline enum mv_page_type tu_page_type(mv_host *h, uint32_t id, uint64_t gfn)
{
    enum mv_page_type t;

    assert_ok(mv_domain_page_type(h, id, gfn, &t));
    return t;
}

/* Run a workload to completion and return its status. */
static inline struct mv_workload_status tu_run(mv_host *h, uint32_t id,
                                               const struct mv_workload_config *w)
{
    struct mv_workload_status st;

    assert_ok(mv_workload_start(h, id, w));
    assert_ok(mv_workload_wait(h, id, 60000, &st));
    return st;
}

/* The random writer on every vCPU: `pages` writes to gfns [0, ws) drawn
 * from `seed`, run to completion; the domain must not crash. */
static inline void tu_fill_random(mv_host *h, uint32_t id, uint64_t seed, uint64_t ws,
                                  uint64_t pages)
{
    struct mv_workload_config w;
    struct mv_workload_status st;

    mv_workload_config_init(&w, MV_WORKLOAD_RANDOM);
    w.seed = seed;
    w.working_set_pages = ws;
    w.max_pages = pages;
    st = tu_run(h, id, &w);
    assert_int_equal(st.crashed, 0);
}

/* The closing check of every integration test: content oracle and audit. */
static inline void tu_verify(mv_host *h, uint32_t id)
{
    uint64_t bad_gfn = 0;
    int64_t bad = mv_oracle_verify(h, id, &bad_gfn);

    assert_ok(bad);
    if (bad)
        fail_msg("content oracle: %lld pages differ, first at gfn %#llx",
                 (long long)bad, (unsigned long long)bad_gfn);
    assert_ok(mv_host_audit(h));
}

/* ------------------------------------------------------------------------ */
/*
 * Stores to and loads from guest RAM from the test's thread, made as a vCPU
 * makes them.  ThreadSanitizer cannot see that the trap orders the fault
 * service's reads and remaps of a page around them, so they are not
 * instrumented (as the built-in guests' are not).
 */
__attribute__((no_sanitize("thread"), noinline, unused))
static void tu_guest_store(uint8_t *at, uint8_t value)
{
    *(volatile uint8_t *)at = value;
}

__attribute__((no_sanitize("thread"), noinline, unused))
static void tu_guest_fill_page(uint8_t *page, uint8_t value)
{
    volatile uint64_t *words = (volatile uint64_t *)page;

    for (size_t i = 0; i < MV_PAGE_SIZE / 8; i++)
        words[i] = 0x0101010101010101ull * value;
}

__attribute__((no_sanitize("thread"), noinline, unused))
static uint8_t tu_guest_load(const uint8_t *at)
{
    return *(const volatile uint8_t *)at;
}

/* ------------------------------------------------------------------------ */
/* Waiting for another thread without ordering events by sleeping.           */

/* Long enough for anything a test waits for on a loaded machine under a
 * sanitizer; reaching it fails the test rather than hanging it. */
#define TU_DEADLINE_MS 30000u

static inline uint64_t tu_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Poll `cond` (an expression with no side effects the test depends on)
 * until it holds; fail the test, naming it, if it does not within
 * TU_DEADLINE_MS. */
#define tu_wait_until(cond)                                                    \
    do {                                                                       \
        uint64_t until_ = tu_now_ms() + TU_DEADLINE_MS;                        \
        while (!(cond)) {                                                      \
            if (tu_now_ms() >= until_)                                         \
                fail_msg("still not true after %u ms: %s", TU_DEADLINE_MS,     \
                         #cond);                                               \
            usleep(1000);                                                      \
        }                                                                      \
    } while (0)

/* Wait for `sem` up to `ms`; false when it was not posted in time. */
static inline bool tu_sem_wait_ms(sem_t *sem, unsigned ms)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    for (;;) {
        if (sem_timedwait(sem, &ts) == 0)
            return true;
        if (errno != EINTR)
            return false;
    }
}

/*
 * Start `path` (argv[0] first, NULL-terminated) in a child whose stdin and
 * stdout are pipes, returned as *in (to write it commands) and *out (to
 * read its replies); in the child, setup(arg) runs first when set (its
 * descriptors, its environment).  The child's pid.
 */
static inline pid_t tu_spawn(const char *path, char *const argv[], void (*setup)(void *),
                             void *arg, FILE **in, FILE **out)
{
    int to[2], from[2];
    pid_t pid;

    assert_int_equal(pipe2(to, O_CLOEXEC), 0);
    assert_int_equal(pipe2(from, O_CLOEXEC), 0);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(to[0], 0);
        dup2(from[1], 1);
        if (setup)
            setup(arg);
        execv(path, argv);
        _exit(127);
    }
    close(to[0]);
    close(from[1]);
    *in = fdopen(to[1], "w");
    *out = fdopen(from[0], "r");
    assert_non_null(*in);
    assert_non_null(*out);
    return pid;
}

/* Send a child started by tu_spawn one command line (printf-style) and
 * return its one-line reply, newline dropped, or "eof" when it ended (a
 * static buffer: the next call overwrites it). */
static inline const char *tu_vask(FILE *in, FILE *out, const char *fmt, va_list ap)
{
    static char reply[256];

    vfprintf(in, fmt, ap);
    fputc('\n', in);
    fflush(in);
    if (!fgets(reply, sizeof(reply), out))
        return "eof";
    reply[strcspn(reply, "\n")] = '\0';
    return reply;
}

/* Run the named case, or all of them without an argument.  A name that
 * is no case fails: cmocka would run nothing and pass (a stale ctest entry
 * for a case since renamed would test nothing, silently). */
/*
 * A failed assertion aborts the process where it failed.  Unwinding into
 * cmocka would leave the test's host running (its vCPU, fault and scanner
 * threads) while cmocka puts back the signal handlers of before the test:
 * a vCPU fault then meets no handler of ours, and the process could hang
 * on its way out instead of failing.  No core is written: a test's memory
 * is most of the machine's.
 */
static inline void tu_abort_on_failure(void)
{
    struct rlimit no_core = { 0, 0 };

    setenv("CMOCKA_TEST_ABORT", "1", 0);
    (void)setrlimit(RLIMIT_CORE, &no_core);
}

/* How many file descriptors the process has open (for "leaves nothing
 * open" checks). */
static inline unsigned tu_open_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    unsigned n = 0;

    assert_non_null(d);
    while (readdir(d))
        n++;
    closedir(d);
    return n;
}

#define TU_MAIN(cases)                                                         \
    int main(int argc, char **argv)                                            \
    {                                                                          \
        tu_abort_on_failure();                                                 \
        if (argc > 1) {                                                        \
            size_t i_ = 0;                                                     \
                                                                               \
            while (i_ < sizeof(cases) / sizeof(cases[0]) &&                    \
                   strcmp(cases[i_].name, argv[1]) != 0)                       \
                i_++;                                                          \
            if (i_ == sizeof(cases) / sizeof(cases[0])) {                      \
                fprintf(stderr, "%s: no test case named %s\n", argv[0],        \
                        argv[1]);                                              \
                return 1;                                                      \
            }                                                                  \
            cmocka_set_test_filter(argv[1]);                                   \
        }                                                                      \
        return cmocka_run_group_tests(cases, NULL, NULL);                      \
    }

#endif /* MV_TESTUTIL_H */

/*
 * bench_vm.c - `memvisor bench vm`: real, unmodified QEMU guests (Debian's
 * kernel and the test guest's initramfs) whose RAM memvisor serves,
 * measured against the same QEMU on its own memory in the same run.
 *
 * This file owns the suite: launching the plain-QEMU peers (the same
 * command line as mv_qemu_launch's, the RAM QEMU's own), driving the
 * guests' agents, reading the QEMU processes' memory from /proc, driving
 * KSM for the peer (and putting its settings back), computing the ideal
 * sharing from memvisor's copy of the guests' RAM, and the report.
 *
 *   boot     time from starting QEMU to the guest's agent answering ping:
 *            memvisor (target = maxmem) against QEMU with
 *            memory-backend-memfd,share=on and no agent; --rounds times
 *            each, alternating; medians.
 *   memory   --guests guests, half idle, half running `compile` and
 *            `pagecache 16`; the idle ones ballooned to maxmem / 2 (QMP).
 *            memvisor: target = maxmem / 4 (PoD), a zero sweep of every
 *            domain and a trim of each QEMU's own blocks (mv_vmm_trim: the
 *            zero pages KSM merges in them on the peer's side), then
 *            mv_share_scan passes until two add little.
 *            Peer: QEMU's anonymous RAM with mem-merge=on and KSM at
 *            pages_to_scan 20000, sleep_millisecs 0, use_zero_pages 1,
 *            until pages_sharing stops growing.  Both converge by one
 *            rule: the time and CPU until the last pass / sample that saved
 *            0.5% more, two passes / full scans confirming it.  Both with
 *            free page reporting.  Host memory: Pss of the QEMU processes (plain);
 *            memvisor's frames (domains' populated + shared frames) plus
 *            the QEMU processes' Pss outside the mapping of the machine
 *            file (memvisor).  The ideal: one frame per distinct non-zero
 *            page content over every domain's RAM, read back through
 *            mv_domain_read_page.
 *   touch    `touch 256` in the guest (its own ms), --touch-runs times on
 *            a memvisor guest and a plain (memfd) guest, alternating.
 *
 * MV_BENCH_VM_SMAPS=DIR keeps a copy of every QEMU's smaps at the memory
 * measurement, to see where QEMU's own memory goes.
 */
#include "bench.h"
#include "bench_util.h"
#include "qemu.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* Header-only xxHash (libxxhash-dev): XXH3_64bits without a link flag. */
#define XXH_INLINE_ALL
#include <xxhash.h>

#define VM_MAX_GUESTS 16u
#define VM_APPEND "console=ttyS0 init_on_free=1 quiet"
#define VM_BOOT_TIMEOUT_MS 180000u
#define VM_CMD_TIMEOUT_MS 60000u
#define VM_KSM_DIR "/sys/kernel/mm/ksm/"
#define VM_MAX_SCAN_PASSES 30u

struct vm_options {
    uint64_t guests;
    uint64_t maxmem;            /* bytes */
    uint64_t rounds;            /* boots of each kind */
    uint64_t touch_runs;
    uint64_t settle_s;          /* workloads run this long before converging */
    uint64_t ksm_timeout_s;
    char image[PATH_MAX - 64];
    const char *accel;
    bool json;
};

/* A guest: under memvisor (q.domid valid) or plain QEMU. */
struct vm_guest {
    struct mv_qemu q;
    bool memvisor;
    bool busy;
    char reply[65536];
};

struct vm_memory {
    uint64_t frames;            /* memvisor: domains' populated + shared */
    uint64_t host_populated;    /* memvisor: mv_host_stats populated */
    uint64_t metadata_bytes;    /* memvisor's own tables */
    uint64_t qemu_pss_kb;       /* every QEMU process, whole */
    uint64_t qemu_ram_pss_kb;   /* of it, the guest RAM mapping (machine file or
                                   QEMU's anonymous RAM) */
    uint64_t total_bytes;       /* the figure */
    uint64_t converge_ns;       /* until the last pass / KSM sample that grew */
    uint64_t converge_cpu_ns;
    uint64_t all_ns;            /* with the passes or scans confirming it */
    uint64_t all_cpu_ns;
    uint64_t reclaim_ns;        /* memvisor: the zero sweeps */
    uint64_t reclaimed_pages;
    uint64_t vmm_trimmed_pages;  /* QEMU's own zero pages given back (mv_vmm_trim) */
    unsigned passes;            /* memvisor scan passes / KSM full scans */
    uint64_t saved_pages;       /* shared away (memvisor) / pages_sharing (KSM) */
    uint64_t zero_pages;        /* scanner zero pages / ksm_zero_pages */
    bool timed_out;
};

struct vm_run {
    struct vm_options opt;
    struct mv_bench_machine machine;
    char kernel[PATH_MAX], initrd[PATH_MAX], run_dir[256];
    uint64_t boot_mv[MV_BENCH_MAX_ROUNDS], boot_plain[MV_BENCH_MAX_ROUNDS];
    uint64_t touch_mv[MV_BENCH_MAX_ROUNDS], touch_plain[MV_BENCH_MAX_ROUNDS];
    /* memvisor's touch runs: faults served, pages and 2 MiB blocks populated */
    uint64_t touch_faults[MV_BENCH_MAX_ROUNDS], touch_4k[MV_BENCH_MAX_ROUNDS];
    uint64_t touch_2m[MV_BENCH_MAX_ROUNDS];
    struct vm_memory mem_mv, mem_ksm;
    uint64_t ideal_frames, ideal_nonzero_pages, ideal_pages_read;
    char ksm_settings[160];
};

/* ------------------------------------------------------------------------ */
/* Small helpers                                                             */

static int file_read(const char *path, char *buf, size_t size);

static uint64_t now_ms(void)
{
    return mv_bench_now_ns() / 1000000;
}

/* The number after "key": in a one-line JSON reply; 0 when absent. */
static uint64_t reply_u64(const char *reply, const char *key)
{
    char pattern[64];
    const char *at;

    snprintf(pattern, sizeof(pattern), "\"%s\":", key);
    at = strstr(reply, pattern);
    return at ? strtoull(at + strlen(pattern), NULL, 10) : 0;
}

static int guest_cmd(struct vm_guest *g, const char *line, unsigned timeout_ms)
{
    char why[256];
    int rc = mv_qemu_guest_command(&g->q, line, g->reply, sizeof(g->reply), timeout_ms,
                                   why, sizeof(why));

    if (rc < 0) {
        mv_bench_error("vm: guest %s: '%s': %s", g->q.name, line, why);
        return rc;
    }
    if (!strstr(g->reply, "\"ok\":true")) {
        mv_bench_error("vm: guest %s: '%s' answered %s", g->q.name, line, g->reply);
        return -EIO;
    }
    return 0;
}

/* Until the guest's agent answers ping: 0, or a negative errno. */
static int guest_wait_boot(struct vm_guest *g)
{
    uint64_t until = now_ms() + VM_BOOT_TIMEOUT_MS;
    char why[256];

    for (;;) {
        int status;

        if (mv_qemu_guest_command(&g->q, "ping", g->reply, sizeof(g->reply), 250, why,
                                  sizeof(why)) == 0)
            return 0;
        if (waitpid(g->q.pid, &status, WNOHANG) == g->q.pid) {
            char log[512] = "";

            g->q.pid = 0;
            (void)file_read(g->q.log_path, log, sizeof(log));
            mv_bench_error("vm: QEMU of %s exited during the boot (%s %d); it said: %s",
                           g->q.name, WIFSIGNALED(status) ? "signal" : "status",
                           WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status),
                           log[0] ? log : "nothing");
            return -ECHILD;
        }
        if (now_ms() > until) {
            mv_bench_error("vm: guest %s did not boot within %u s", g->q.name,
                           VM_BOOT_TIMEOUT_MS / 1000);
            return -ETIMEDOUT;
        }
        mv_bench_sleep_ms(20);
    }
}

/* ------------------------------------------------------------------------ */
/* Launching                                                                 */

enum plain_ram { PLAIN_MEMFD, PLAIN_KSM };

/*
 * Plain QEMU: mv_qemu_launch's command line, with QEMU's own RAM
 * (a shared memfd, or anonymous memory KSM may merge) and no agent.
 */
static int plain_launch(struct vm_run *run, const char *name, enum plain_ram ram,
                        struct mv_qemu *out)
{
    struct mv_qemu_argv a = { .argc = 0 };
    char ram_arg[160];
    int log_fd;
    pid_t pid;

    memset(out, 0, sizeof(*out));
    mv_qemu_name_files(out, run->run_dir, name);
    snprintf(ram_arg, sizeof(ram_arg), "memory-backend-memfd,id=ram,size=%" PRIu64
             ",share=on", run->opt.maxmem);
    a.argv[a.argc++] = "qemu-system-x86_64";
    a.argv[a.argc++] = "-accel";
    a.argv[a.argc++] = run->opt.accel;
    a.argv[a.argc++] = "-machine";
    if (ram == PLAIN_MEMFD) {
        a.argv[a.argc++] = "pc,memory-backend=ram";
        a.argv[a.argc++] = "-object";
        a.argv[a.argc++] = ram_arg;
    } else {
        a.argv[a.argc++] = "pc,mem-merge=on";
    }
    mv_qemu_add_guest_args(&a, out, run->opt.maxmem, run->kernel, run->initrd, VM_APPEND);

    log_fd = open(out->log_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (log_fd < 0) {
        mv_bench_error("vm: cannot create %s: %s", out->log_path, strerror(errno));
        return -errno;
    }
    pid = fork();
    if (pid < 0) {
        int rc = -errno;

        close(log_fd);
        mv_bench_error("vm: fork: %s", strerror(-rc));
        return rc;
    }
    if (pid == 0) {
        int devnull = open("/dev/null", O_RDWR);

        setsid();
        if (devnull >= 0)
            dup2(devnull, 0);
        dup2(log_fd, 1);
        dup2(log_fd, 2);
        execvp(a.argv[0], (char *const *)a.argv);
        dprintf(2, "exec %s: %s\n", a.argv[0], strerror(errno));
        _exit(127);
    }
    close(log_fd);
    out->pid = pid;
    return 0;
}

static int mv_launch(struct vm_run *run, mv_host *host, const char *name, uint64_t target,
                     struct mv_qemu *out)
{
    struct mv_qemu_options o = {
        .kernel = run->kernel, .initrd = run->initrd, .append = VM_APPEND,
        .accel = run->opt.accel, .run_dir = run->run_dir,
    };
    struct mv_domain_config c;
    char why[512];
    int rc;

    mv_domain_config_init(&c);
    snprintf(c.name, sizeof(c.name), "%s", name);
    c.maxmem_bytes = run->opt.maxmem;
    c.target_bytes = target;
    rc = mv_qemu_launch(host, &c, &o, out, why, sizeof(why));
    if (rc < 0)
        mv_bench_error("vm: cannot start QEMU on memvisor: %s", why);
    return rc;
}

/* Set while the suite stops a guest's QEMU: the library then reports the
 * domain crashed (its VMM exited), which is what was asked for. */
static volatile bool vm_stopping;

static void vm_log(void *opaque, enum mv_log_level level, const char *message)
{
    if (vm_stopping && strstr(message, "VMM process") && strstr(message, "exited"))
        return;
    mv_bench_log(opaque, level, message);
}

static void guest_stop(mv_host *host, struct vm_guest *g)
{
    vm_stopping = true;
    if (g->q.pid > 0)
        mv_qemu_stop(&g->q, 3000);
    mv_qemu_cleanup(&g->q);
    unlink(g->q.console_path);
    unlink(g->q.log_path);
    if (g->memvisor && host)
        (void)mv_domain_destroy(host, g->q.domid);
    vm_stopping = false;
    g->q.pid = 0;
    g->memvisor = false;
}

/* ------------------------------------------------------------------------ */
/* Boot and touch                                                            */

/* One boot, from starting QEMU to ping; the guest is left running. */
static int boot_once(struct vm_run *run, mv_host *host, bool memvisor, const char *name,
                     struct vm_guest *g, uint64_t *ns)
{
    uint64_t t0 = mv_bench_now_ns();
    int rc;

    memset(g, 0, sizeof(*g));
    rc = memvisor ? mv_launch(run, host, name, run->opt.maxmem, &g->q)
                  : plain_launch(run, name, PLAIN_MEMFD, &g->q);
    if (rc < 0)
        return rc;
    g->memvisor = memvisor;
    rc = guest_wait_boot(g);
    *ns = mv_bench_now_ns() - t0;
    return rc;
}

static int measure_boot(struct vm_run *run, mv_host *host)
{
    struct vm_guest *g = calloc(1, sizeof(*g));
    int rc = 0;

    if (!g)
        return -ENOMEM;
    for (unsigned r = 0; r < run->opt.rounds && rc == 0; r++) {
        for (int kind = 0; kind < 2 && rc == 0; kind++) {
            /* Alternate which goes first, so that drift hits both. */
            bool memvisor = (kind == 0) == (r % 2 == 0);
            uint64_t *slot = memvisor ? &run->boot_mv[r] : &run->boot_plain[r];

            rc = boot_once(run, host, memvisor, memvisor ? "boot-mv" : "boot-plain", g, slot);
            guest_stop(host, g);
            if (rc == 0)
                fprintf(stderr, "vm: boot %u %-8s %.2f s\n", r + 1,
                        memvisor ? "memvisor" : "plain", *slot / 1e9);
        }
    }
    free(g);
    return rc;
}

static int measure_touch(struct vm_run *run, mv_host *host)
{
    struct vm_guest *g = calloc(2, sizeof(*g));
    uint64_t ns;
    int rc;

    if (!g)
        return -ENOMEM;
    rc = boot_once(run, host, true, "touch-mv", &g[0], &ns);
    if (rc == 0)
        rc = boot_once(run, host, false, "touch-plain", &g[1], &ns);
    for (unsigned r = 0; r < run->opt.touch_runs && rc == 0; r++) {
        for (int k = 0; k < 2 && rc == 0; k++) {
            int which = (k + (int)r) % 2;
            struct vm_guest *x = &g[which];
            struct mv_domain_info before = { 0 }, after = { 0 };

            if (which == 0)
                (void)mv_domain_info(host, x->q.domid, &before);
            rc = guest_cmd(x, "touch 256", VM_CMD_TIMEOUT_MS);
            if (which == 0 && rc == 0 && mv_domain_info(host, x->q.domid, &after) == 0) {
                run->touch_faults[r] = after.faults - before.faults;
                run->touch_4k[r] = after.populated_4k - before.populated_4k;
                run->touch_2m[r] = after.populated_2m - before.populated_2m;
            }
            if (rc == 0) {
                uint64_t ms = reply_u64(x->reply, "ms");

                (which == 0 ? run->touch_mv : run->touch_plain)[r] = ms * 1000000;
                if (which == 0)
                    fprintf(stderr, "vm: touch 256 memvisor %" PRIu64 " ms (%" PRIu64
                            " faults, %" PRIu64 " pages and %" PRIu64 " blocks populated)\n",
                            ms, run->touch_faults[r], run->touch_4k[r], run->touch_2m[r]);
                else
                    fprintf(stderr, "vm: touch 256 plain    %" PRIu64 " ms\n", ms);
            }
        }
    }
    guest_stop(host, &g[0]);
    guest_stop(host, &g[1]);
    free(g);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Process memory                                                            */

/* Pss of a whole process, from smaps_rollup, in kB. */
static uint64_t pss_kb(pid_t pid)
{
    char path[64], line[256];
    uint64_t kb = 0;
    FILE *f;

    snprintf(path, sizeof(path), "/proc/%d/smaps_rollup", (int)pid);
    f = fopen(path, "re");
    if (!f)
        return 0;
    while (fgets(line, sizeof(line), f))
        if (strncmp(line, "Pss:", 4) == 0) {
            kb = strtoull(line + 4, NULL, 10);
            break;
        }
    fclose(f);
    return kb;
}

/*
 * Pss of the process's guest RAM, in kB: its mappings of `file` (a path as
 * /proc/PID/maps shows it: memvisor's machine file), or with file NULL the
 * anonymous read-write mapping of maxmem bytes (QEMU's own RAM; QEMU may
 * add up to a 2 MiB alignment).
 */
static uint64_t pss_of_ram_kb(pid_t pid, const char *file, uint64_t maxmem)
{
    char path[64], line[PATH_MAX + 256];
    bool in_ram = false;
    uint64_t kb = 0;
    FILE *f;

    snprintf(path, sizeof(path), "/proc/%d/smaps", (int)pid);
    f = fopen(path, "re");
    if (!f)
        return 0;
    while (fgets(line, sizeof(line), f)) {
        unsigned long a, b;
        char perms[8];
        int off = 0;

        line[strcspn(line, "\n")] = '\0';
        /* A mapping's header: "start-end perms offset dev inode path". */
        if (sscanf(line, "%lx-%lx %7s %*s %*s %*s %n", &a, &b, perms, &off) == 3 && off > 0) {
            if (file)
                in_ram = strcmp(line + off, file) == 0;
            else
                in_ram = line[off] == '\0' && strcmp(perms, "rw-p") == 0 &&
                         b - a >= maxmem && b - a <= maxmem + 4 * MV_BENCH_MIB;
            continue;
        }
        if (in_ram && strncmp(line, "Pss:", 4) == 0)
            kb += strtoull(line + 4, NULL, 10);
    }
    fclose(f);
    return kb;
}

/* With MV_BENCH_VM_SMAPS=DIR, keep a copy of each QEMU's smaps there. */
static void keep_smaps(const struct mv_qemu *q)
{
    const char *dir = getenv("MV_BENCH_VM_SMAPS");
    char cmd[PATH_MAX + 128];

    if (!dir)
        return;
    snprintf(cmd, sizeof(cmd), "cp /proc/%d/smaps '%s/%s.smaps'", (int)q->pid, dir, q->name);
    if (system(cmd) != 0)
        mv_bench_error("vm: cannot copy %s's smaps to %s", q->name, dir);
}

/* ------------------------------------------------------------------------ */
/* KSM                                                                       */

enum { KSM_RUN, KSM_PAGES_TO_SCAN, KSM_SLEEP, KSM_USE_ZERO, KSM_KNOBS };
static const char *const ksm_knob[KSM_KNOBS] = {
    VM_KSM_DIR "run", VM_KSM_DIR "pages_to_scan", VM_KSM_DIR "sleep_millisecs",
    VM_KSM_DIR "use_zero_pages",
};
static char ksm_saved[KSM_KNOBS][32];
static volatile sig_atomic_t ksm_changed;

static int file_write(const char *path, const char *value)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC), rc = 0;
    size_t len = strlen(value);

    if (fd < 0)
        return -errno;
    if (write(fd, value, len) != (ssize_t)len)
        rc = -errno;
    close(fd);
    return rc;
}

static int file_read(const char *path, char *buf, size_t size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    ssize_t n;

    if (fd < 0)
        return -errno;
    n = read(fd, buf, size - 1);
    close(fd);
    if (n < 0)
        return -errno;
    buf[n] = '\0';
    buf[strcspn(buf, "\n")] = '\0';
    return 0;
}

static uint64_t ksm_u64(const char *name)
{
    char path[128], buf[32];

    snprintf(path, sizeof(path), VM_KSM_DIR "%s", name);
    return file_read(path, buf, sizeof(buf)) == 0 ? strtoull(buf, NULL, 10) : 0;
}

/* Put the saved knobs back (async-signal-safe); run last. */
static void ksm_restore(void)
{
    if (!ksm_changed)
        return;
    for (int i = KSM_PAGES_TO_SCAN; i < KSM_KNOBS; i++)
        if (ksm_saved[i][0])
            (void)file_write(ksm_knob[i], ksm_saved[i]);
    (void)file_write(ksm_knob[KSM_RUN], ksm_saved[KSM_RUN]);
    ksm_changed = 0;
}

static void ksm_signal(int sig)
{
    ksm_restore();
    signal(sig, SIG_DFL);
    raise(sig);
}

/* Save the knobs and set the peer's; 0 or a negative errno. */
static int ksm_start(struct vm_run *run)
{
    static const int sigs[] = { SIGINT, SIGTERM, SIGHUP };
    char across[16] = "-";
    int rc;

    for (int i = 0; i < KSM_KNOBS; i++) {
        ksm_saved[i][0] = '\0';
        rc = file_read(ksm_knob[i], ksm_saved[i], sizeof(ksm_saved[i]));
        if (rc < 0 && i != KSM_USE_ZERO) {
            mv_bench_error("vm: cannot read %s (%s): the KSM peer needs KSM and root",
                           ksm_knob[i], strerror(-rc));
            return rc;
        }
    }
    (void)file_read(VM_KSM_DIR "merge_across_nodes", across, sizeof(across));
    for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
        signal(sigs[i], ksm_signal);
    ksm_changed = 1;
    if ((rc = file_write(ksm_knob[KSM_PAGES_TO_SCAN], "20000")) < 0 ||
        (rc = file_write(ksm_knob[KSM_SLEEP], "0")) < 0 ||
        (ksm_saved[KSM_USE_ZERO][0] && (rc = file_write(ksm_knob[KSM_USE_ZERO], "1")) < 0)) {
        mv_bench_error("vm: cannot set KSM: %s", strerror(-rc));
        ksm_restore();
        return rc;
    }
    snprintf(run->ksm_settings, sizeof(run->ksm_settings),
             "pages_to_scan=20000 sleep_millisecs=0 use_zero_pages=%s merge_across_nodes=%s",
             ksm_saved[KSM_USE_ZERO][0] ? "1" : "-", across);
    return 0;
}

/* ksmd's pid, or -1. */
static int find_ksmd(void)
{
    DIR *d = opendir("/proc");
    struct dirent *de;
    int pid = -1;

    if (!d)
        return -1;
    while (pid < 0 && (de = readdir(d))) {
        char path[300], comm[32];

        if (de->d_name[0] < '0' || de->d_name[0] > '9')
            continue;
        snprintf(path, sizeof(path), "/proc/%s/comm", de->d_name);
        if (file_read(path, comm, sizeof(comm)) == 0 && strcmp(comm, "ksmd") == 0)
            pid = atoi(de->d_name);
    }
    closedir(d);
    return pid;
}

/* A thread's user + system time from /proc/PID/stat, in ns. */
static uint64_t proc_cpu_ns(int pid)
{
    char path[64], buf[1024], *p;
    unsigned long long ut, st;
    long tick = sysconf(_SC_CLK_TCK);

    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    if (pid <= 0 || file_read(path, buf, sizeof(buf)) < 0 || tick <= 0)
        return 0;
    p = strrchr(buf, ')');
    if (!p || sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu",
                     &ut, &st) != 2)
        return 0;
    return (ut + st) * (1000000000ull / (uint64_t)tick);
}

/* ------------------------------------------------------------------------ */
/* Memory of N guests                                                        */

static int start_workloads(struct vm_run *run, struct vm_guest *g, unsigned n)
{
    char cmd[160], reply[1024], why[256];
    int rc;

    for (unsigned i = 0; i < n; i++) {
        if (g[i].busy) {
            if ((rc = guest_cmd(&g[i], "run compile", VM_CMD_TIMEOUT_MS)) < 0 ||
                (rc = guest_cmd(&g[i], "run pagecache 16", VM_CMD_TIMEOUT_MS)) < 0)
                return rc;
            continue;
        }
        (void)guest_cmd(&g[i], "run idle", VM_CMD_TIMEOUT_MS);
        snprintf(cmd, sizeof(cmd), "{\"execute\":\"balloon\",\"arguments\":{\"value\":%"
                 PRIu64 "}}", run->opt.maxmem / 2);
        rc = mv_qemu_qmp(&g[i].q, cmd, reply, sizeof(reply), 10000, why, sizeof(why));
        if (rc < 0) {
            mv_bench_error("vm: balloon of %s: %s", g[i].q.name, why);
            return rc;
        }
    }
    return 0;
}

/* Boot n guests at once (memvisor or KSM peer), start their workloads and
 * let them run --settle seconds. */
static int boot_set(struct vm_run *run, mv_host *host, struct vm_guest *g, unsigned n,
                    bool memvisor)
{
    int rc = 0;

    for (unsigned i = 0; i < n && rc == 0; i++) {
        char name[32];

        snprintf(name, sizeof(name), "%s%u", memvisor ? "mem-mv" : "mem-ksm", i);
        memset(&g[i], 0, sizeof(g[i]));
        g[i].busy = i % 2 == 1;
        rc = memvisor ? mv_launch(run, host, name, run->opt.maxmem / 4, &g[i].q)
                      : plain_launch(run, name, PLAIN_KSM, &g[i].q);
        g[i].memvisor = memvisor && rc == 0;
    }
    for (unsigned i = 0; i < n && rc == 0; i++)
        rc = guest_wait_boot(&g[i]);
    if (rc == 0)
        rc = start_workloads(run, g, n);
    if (rc == 0) {
        fprintf(stderr, "vm: %u guests %s up; their workloads run %" PRIu64 " s\n", n,
                memvisor ? "on memvisor" : "on plain QEMU", run->opt.settle_s);
        mv_bench_sleep_ms(run->opt.settle_s * 1000);
    }
    return rc;
}

/* Distinct non-zero page contents over every domain: an open-addressing
 * table of (hash, domain, gfn), bytes compared on equal hashes. */
struct ideal_entry {
    uint64_t hash;
    uint32_t dom;               /* index into doms + 1; 0 = empty */
    uint64_t gfn;
};

static int compute_ideal(struct vm_run *run, mv_host *host, struct vm_guest *g, unsigned n)
{
    uint64_t pages = run->opt.maxmem / MV_PAGE_SIZE, cap = 1, distinct = 0, nonzero = 0;
    static uint8_t page[MV_PAGE_SIZE], other[MV_PAGE_SIZE], zero[MV_PAGE_SIZE];
    struct ideal_entry *t;

    while (cap < pages * n * 2)
        cap <<= 1;
    t = calloc(cap, sizeof(*t));
    if (!t)
        return -ENOMEM;
    for (unsigned d = 0; d < n; d++) {
        for (uint64_t gfn = 0; gfn < pages; gfn++) {
            uint64_t h, i;

            if (mv_domain_read_page(host, g[d].q.domid, gfn, page) < 0)
                continue; /* ballooned */
            run->ideal_pages_read++;
            if (memcmp(page, zero, MV_PAGE_SIZE) == 0)
                continue;
            nonzero++;
            h = XXH3_64bits(page, MV_PAGE_SIZE);
            for (i = h & (cap - 1); t[i].dom; i = (i + 1) & (cap - 1))
                if (t[i].hash == h &&
                    mv_domain_read_page(host, g[t[i].dom - 1].q.domid, t[i].gfn, other) == 0 &&
                    memcmp(page, other, MV_PAGE_SIZE) == 0)
                    break;
            if (!t[i].dom) {
                t[i] = (struct ideal_entry){ .hash = h, .dom = d + 1, .gfn = gfn };
                distinct++;
            }
        }
    }
    free(t);
    run->ideal_frames = distinct;
    run->ideal_nonzero_pages = nonzero;
    return 0;
}

/* The machine file as QEMU's maps name it. */
static void machine_file_name(mv_host *host, char *out, size_t len)
{
    char link[64];
    ssize_t n;

    snprintf(link, sizeof(link), "/proc/self/fd/%d", mv_host_machine_fd(host));
    n = readlink(link, out, len - 1);
    out[n > 0 ? n : 0] = '\0';
}

static int measure_memory_mv(struct vm_run *run, mv_host *host, struct vm_guest *g,
                             unsigned n)
{
    struct vm_memory *m = &run->mem_mv;
    struct mv_share_stats st;
    struct mv_host_stats hs;
    uint64_t t0, c0, total_saved = 0;
    unsigned quiet;
    char file[PATH_MAX];
    int rc = boot_set(run, host, g, n, true);

    if (rc < 0)
        return rc;
    t0 = mv_bench_now_ns();
    for (unsigned i = 0; i < n; i++) {
        struct mv_sweep_result res;

        uint64_t freed;

        if ((rc = mv_domain_reclaim_zero(host, g[i].q.domid, 0, &res)) < 0)
            return mv_bench_lib_error("mv_domain_reclaim_zero", rc);
        m->reclaimed_pages += res.reclaimed;
        /* QEMU's own blocks (the ACPI table area is 2 MiB of zeros but for
         * the tables): what KSM merges on the peer's side. */
        if ((rc = mv_vmm_trim(host, g[i].q.domid, &freed)) < 0)
            return mv_bench_lib_error("mv_vmm_trim", rc);
        m->vmm_trimmed_pages += freed;
    }
    m->reclaim_ns = mv_bench_now_ns() - t0;
    t0 = mv_bench_now_ns();
    c0 = mv_bench_thread_cpu_ns();
    /* Converged as KSM is judged: time and CPU until the last pass that
     * saved more than 0.5% (or 64 pages) more, confirmed by two passes
     * that did not. */
    for (m->passes = 0, quiet = 0; m->passes < VM_MAX_SCAN_PASSES && quiet < 2;) {
        struct mv_scan_result r;
        uint64_t added;

        if ((rc = mv_share_scan(host, 0, &r)) < 0)
            return mv_bench_lib_error("mv_share_scan", rc);
        m->passes++;
        added = r.pages_shared + r.pages_zero;
        if (added > MV_BENCH_MAX(64u, total_saved / 200)) {
            quiet = 0;
            m->converge_ns = mv_bench_now_ns() - t0;
            m->converge_cpu_ns = mv_bench_thread_cpu_ns() - c0;
        } else {
            quiet++;
        }
        total_saved += added;
        m->zero_pages += r.pages_zero;
        fprintf(stderr, "vm: scan pass %u: %" PRIu64 " scanned, %" PRIu64 " shared, %"
                PRIu64 " zero, %" PRIu64 " volatile; %.1f ms: reading %.1f, freeing zero "
                "pages %.1f, index %.1f, sharing %.1f\n", m->passes, r.pages_scanned,
                r.pages_shared, r.pages_zero, r.volatile_skips, (double)r.elapsed_ns / 1e6,
                (double)r.read_ns / 1e6, (double)r.zero_ns / 1e6, (double)r.index_ns / 1e6,
                (double)r.share_ns / 1e6);
    }
    m->all_ns = mv_bench_now_ns() - t0;
    m->all_cpu_ns = mv_bench_thread_cpu_ns() - c0;
    m->timed_out = m->passes == VM_MAX_SCAN_PASSES;

    /* Memory, now. */
    if ((rc = mv_share_stats(host, &st)) < 0)
        return mv_bench_lib_error("mv_share_stats", rc);
    if ((rc = mv_host_stats(host, &hs)) < 0)
        return mv_bench_lib_error("mv_host_stats", rc);
    machine_file_name(host, file, sizeof(file));
    m->frames = st.shared_frames;
    for (unsigned i = 0; i < n; i++) {
        struct mv_domain_info info;

        if ((rc = mv_domain_info(host, g[i].q.domid, &info)) < 0)
            return mv_bench_lib_error("mv_domain_info", rc);
        m->frames += info.populated_pages;
        m->qemu_pss_kb += pss_kb(g[i].q.pid);
        m->qemu_ram_pss_kb += pss_of_ram_kb(g[i].q.pid, file, run->opt.maxmem);
        keep_smaps(&g[i].q);
    }
    m->host_populated = hs.populated_pages;
    m->metadata_bytes = hs.metadata_bytes;
    m->saved_pages = st.saved_pages;
    m->total_bytes = m->frames * MV_PAGE_SIZE +
                     (m->qemu_pss_kb - MV_BENCH_MIN(m->qemu_ram_pss_kb, m->qemu_pss_kb)) * 1024;
    fprintf(stderr, "vm: memvisor: %" PRIu64 " frames, QEMU Pss %" PRIu64 " kB of which "
            "RAM %" PRIu64 " kB; computing the ideal\n", m->frames, m->qemu_pss_kb,
            m->qemu_ram_pss_kb);
    rc = compute_ideal(run, host, g, n);
    if (rc < 0)
        mv_bench_error("vm: no memory for the ideal's table");
    return rc;
}

static int measure_memory_ksm(struct vm_run *run, struct vm_guest *g, unsigned n)
{
    struct vm_memory *m = &run->mem_ksm;
    uint64_t t0, c0, best = 0, last_growth_ns = 0, last_growth_cpu = 0, scans0, scans_at = 0;
    int ksmd = find_ksmd(), rc;

    if (ksmd < 0) {
        mv_bench_error("vm: no ksmd thread: the KSM peer needs a kernel with CONFIG_KSM");
        return -ENOENT;
    }
    rc = boot_set(run, NULL, g, n, false);
    if (rc < 0)
        return rc;
    if ((rc = ksm_start(run)) < 0)
        return rc;
    c0 = proc_cpu_ns(ksmd);
    scans0 = ksm_u64("full_scans");
    t0 = mv_bench_now_ns();
    if ((rc = file_write(ksm_knob[KSM_RUN], "1")) < 0) {
        mv_bench_error("vm: cannot start KSM: %s", strerror(-rc));
        return rc;
    }
    for (;;) {
        uint64_t v, scans, t;

        mv_bench_sleep_ms(250);
        t = mv_bench_now_ns() - t0;
        v = ksm_u64("pages_sharing") + ksm_u64("ksm_zero_pages");
        scans = ksm_u64("full_scans") - scans0;
        if (v > best) {
            /* Growth of more than 0.5% (or 64 pages) counts as progress. */
            if (v > best + MV_BENCH_MAX(64u, best / 200)) {
                last_growth_ns = t;
                last_growth_cpu = proc_cpu_ns(ksmd) - c0;
                scans_at = scans;
            }
            best = v;
        }
        /* Stopped: two full scans since it last grew. */
        if (scans >= scans_at + 2 && best > 0) {
            m->all_ns = t;
            m->all_cpu_ns = proc_cpu_ns(ksmd) - c0;
            break;
        }
        if (t > run->opt.ksm_timeout_s * 1000000000ull) {
            m->timed_out = true;
            last_growth_ns = m->all_ns = t;
            last_growth_cpu = m->all_cpu_ns = proc_cpu_ns(ksmd) - c0;
            break;
        }
    }
    m->converge_ns = last_growth_ns;
    m->converge_cpu_ns = last_growth_cpu;
    m->passes = (unsigned)(ksm_u64("full_scans") - scans0);
    m->saved_pages = ksm_u64("pages_sharing");
    m->zero_pages = ksm_u64("ksm_zero_pages");
    for (unsigned i = 0; i < n; i++) {
        m->qemu_pss_kb += pss_kb(g[i].q.pid);
        m->qemu_ram_pss_kb += pss_of_ram_kb(g[i].q.pid, NULL, run->opt.maxmem);
        keep_smaps(&g[i].q);
    }
    m->total_bytes = m->qemu_pss_kb * 1024;
    fprintf(stderr, "vm: KSM: %u full scans, pages_sharing %" PRIu64 ", zero %" PRIu64
            ", QEMU Pss %" PRIu64 " kB of which RAM %" PRIu64 " kB\n", m->passes,
            m->saved_pages, m->zero_pages, m->qemu_pss_kb, m->qemu_ram_pss_kb);
    return 0;
}

static int measure_memory(struct vm_run *run, mv_host *host)
{
    unsigned n = (unsigned)run->opt.guests;
    struct vm_guest *g = calloc(n, sizeof(*g));
    int rc;

    if (!g)
        return -ENOMEM;
    rc = measure_memory_mv(run, host, g, n);
    for (unsigned i = 0; i < n; i++)
        guest_stop(host, &g[i]);
    if (rc == 0)
        rc = measure_memory_ksm(run, g, n);
    for (unsigned i = 0; i < n; i++)
        guest_stop(NULL, &g[i]);
    ksm_restore();
    free(g);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Report                                                                    */

#define VM_COMPARISONS 7

static size_t comparisons(const struct vm_run *run, struct mv_bench_comparison *c)
{
    size_t n = 0, r = run->opt.rounds, t = run->opt.touch_runs;

    c[n++] = (struct mv_bench_comparison){
        .figure = "boot to agent (median)", .unit = "ns",
        .value = (double)mv_bench_median(run->boot_mv, r),
        .peer = "QEMU, memfd RAM", .peer_value = (double)mv_bench_median(run->boot_plain, r),
        .goal_max_ratio = 1.2,
    };
    c[n++] = (struct mv_bench_comparison){
        .figure = "host memory, N guests", .unit = "MiB",
        .value = run->mem_mv.total_bytes / (double)MV_BENCH_MIB,
        .peer = "QEMU + KSM (Pss)", .peer_value = run->mem_ksm.total_bytes / (double)MV_BENCH_MIB,
        .goal_max_ratio = 1.0,
    };
    c[n++] = (struct mv_bench_comparison){
        .figure = "guest RAM frames", .unit = "MiB",
        .value = run->mem_mv.frames * (double)MV_PAGE_SIZE / MV_BENCH_MIB,
        .peer = "ideal (distinct non-zero)",
        .peer_value = run->ideal_frames * (double)MV_PAGE_SIZE / MV_BENCH_MIB,
        .goal_max_ratio = 1.05,
    };
    c[n++] = (struct mv_bench_comparison){
        .figure = "time to converge", .unit = "ns",
        .value = (double)run->mem_mv.converge_ns,
        .peer = "KSM until sharing stops", .peer_value = (double)run->mem_ksm.converge_ns,
        .goal_max_ratio = 0.5,
    };
    c[n++] = (struct mv_bench_comparison){
        .figure = "CPU to converge", .unit = "ns",
        .value = (double)run->mem_mv.converge_cpu_ns,
        .peer = "ksmd CPU", .peer_value = (double)run->mem_ksm.converge_cpu_ns,
        .goal_max_ratio = 0.5,
    };
    c[n++] = (struct mv_bench_comparison){
        .figure = "touch 256 in guest (median)", .unit = "ns",
        .value = (double)mv_bench_median(run->touch_mv, t),
        .peer = "QEMU, memfd RAM", .peer_value = (double)mv_bench_median(run->touch_plain, t),
        .goal_max_ratio = 1.1,
    };
    return n;
}

static struct json_object *u64_array(const uint64_t *v, size_t n)
{
    struct json_object *a = json_object_new_array();

    for (size_t i = 0; i < n; i++)
        json_object_array_add(a, json_object_new_int64((int64_t)v[i]));
    return a;
}

static struct json_object *memory_json(const struct vm_memory *m)
{
    struct json_object *o = json_object_new_object();

#define ADD(k, v) json_object_object_add(o, k, json_object_new_int64((int64_t)(v)))
    ADD("total_bytes", m->total_bytes);
    ADD("frames", m->frames);
    ADD("host_populated_pages", m->host_populated);
    ADD("metadata_bytes", m->metadata_bytes);
    ADD("qemu_pss_kb", m->qemu_pss_kb);
    ADD("qemu_ram_pss_kb", m->qemu_ram_pss_kb);
    ADD("converge_ns", m->converge_ns);
    ADD("converge_cpu_ns", m->converge_cpu_ns);
    ADD("with_confirmation_ns", m->all_ns);
    ADD("with_confirmation_cpu_ns", m->all_cpu_ns);
    ADD("reclaim_ns", m->reclaim_ns);
    ADD("reclaimed_pages", m->reclaimed_pages);
    ADD("vmm_trimmed_pages", m->vmm_trimmed_pages);
    ADD("passes_or_full_scans", m->passes);
    ADD("saved_or_pages_sharing", m->saved_pages);
    ADD("zero_pages", m->zero_pages);
#undef ADD
    json_object_object_add(o, "timed_out", json_object_new_boolean(m->timed_out));
    return o;
}

static int report(struct vm_run *run)
{
    struct mv_bench_comparison c[VM_COMPARISONS];
    size_t n = comparisons(run, c);
    unsigned goals = 0, met = 0;
    char a[32], b[32];

    for (size_t i = 0; i < n; i++) {
        goals += mv_bench_has_goal(&c[i]);
        met += mv_bench_goal_met(&c[i]);
    }
    fprintf(stderr, "\nvm: %" PRIu64 " guests of %" PRIu64 " MiB, %s; %u of %u goals met\n",
            run->opt.guests, run->opt.maxmem >> 20, run->opt.accel, met, goals);
    for (size_t i = 0; i < n; i++)
        fprintf(stderr, "  %-28s %12s vs %12s %-26s ratio %.3f (goal <= %.2f) %s\n",
                c[i].figure, mv_bench_format(a, sizeof(a), c[i].value, c[i].unit),
                mv_bench_format(b, sizeof(b), c[i].peer_value, c[i].unit), c[i].peer,
                mv_bench_ratio(&c[i]), c[i].goal_max_ratio,
                mv_bench_goal_met(&c[i]) ? "met" : "NOT met");
    if (run->opt.json) {
        struct json_object *root = mv_bench_json_root("vm", &run->machine);
        struct json_object *o = json_object_new_object();

        json_object_object_add(o, "guests", json_object_new_int64((int64_t)run->opt.guests));
        json_object_object_add(o, "maxmem_bytes", json_object_new_int64((int64_t)run->opt.maxmem));
        json_object_object_add(o, "accel", json_object_new_string(run->opt.accel));
        json_object_object_add(o, "rounds", json_object_new_int64((int64_t)run->opt.rounds));
        json_object_object_add(o, "touch_runs",
                               json_object_new_int64((int64_t)run->opt.touch_runs));
        json_object_object_add(o, "settle_s", json_object_new_int64((int64_t)run->opt.settle_s));
        json_object_object_add(o, "image", json_object_new_string(run->opt.image));
        json_object_object_add(o, "ksm", json_object_new_string(run->ksm_settings));
        json_object_object_add(root, "options", o);
        o = json_object_new_object();
        json_object_object_add(o, "boot_memvisor_ns", u64_array(run->boot_mv, run->opt.rounds));
        json_object_object_add(o, "boot_plain_ns", u64_array(run->boot_plain, run->opt.rounds));
        json_object_object_add(o, "touch_memvisor_ns",
                               u64_array(run->touch_mv, run->opt.touch_runs));
        json_object_object_add(o, "touch_plain_ns",
                               u64_array(run->touch_plain, run->opt.touch_runs));
        json_object_object_add(o, "touch_memvisor_faults",
                               u64_array(run->touch_faults, run->opt.touch_runs));
        json_object_object_add(o, "touch_memvisor_populated_4k",
                               u64_array(run->touch_4k, run->opt.touch_runs));
        json_object_object_add(o, "touch_memvisor_populated_2m",
                               u64_array(run->touch_2m, run->opt.touch_runs));
        json_object_object_add(o, "memory_memvisor", memory_json(&run->mem_mv));
        json_object_object_add(o, "memory_ksm", memory_json(&run->mem_ksm));
        json_object_object_add(o, "ideal_frames",
                               json_object_new_int64((int64_t)run->ideal_frames));
        json_object_object_add(o, "ideal_nonzero_pages",
                               json_object_new_int64((int64_t)run->ideal_nonzero_pages));
        json_object_object_add(o, "ideal_pages_read",
                               json_object_new_int64((int64_t)run->ideal_pages_read));
        json_object_object_add(root, "raw", o);
        json_object_object_add(root, "goals_met",
                               json_object_new_boolean(mv_bench_comparisons_json(root, c, n,
                                                                                  NULL)));
        return mv_bench_json_emit(root);
    }
    mv_bench_machine_print(stdout, &run->machine);
    mv_bench_comparisons_print(stdout, c, n);
    return fflush(stdout) == EOF ? MV_BENCH_FAILED : MV_BENCH_OK;
}

/* ------------------------------------------------------------------------ */
/* Entry point                                                               */

static void print_usage(FILE *out)
{
    fprintf(out,
        "usage: memvisor bench vm [--json] [--guests N] [--maxmem SIZE] [--image DIR]\n"
        "                         [--accel tcg|kvm] [--rounds N] [--touch-runs N]\n"
        "                         [--settle S] [--ksm-timeout S]\n"
        "\n"
        "Real QEMU guests on memvisor against the same QEMU on its own memory:\n"
        "boot time, host memory of N guests against KSM and the ideal, time and\n"
        "CPU to converge against ksmd, and a guest's own touch of 256 MiB.\n"
        "Needs qemu-system-x86_64, the guest image and root (KSM's knobs).\n"
        "\n"
        "  --json           print one JSON object (a summary goes to stderr)\n"
        "  --guests N       guests of the memory case, half idle (default 4)\n"
        "  --maxmem SIZE    each guest's RAM, with K, M or G (default 1G)\n"
        "  --image DIR      vmlinuz and initramfs.cpio.gz (default $MV_GUEST_IMAGE,\n"
        "                   else build/vm of the build tree)\n"
        "  --accel A        tcg (default) or kvm\n"
        "  --rounds N       boots of each kind (default 3)\n"
        "  --touch-runs N   touch runs of each kind (default 5)\n"
        "  --settle S       seconds the workloads run before sharing (default 20)\n"
        "  --ksm-timeout S  longest KSM is given to converge (default 300)\n"
        "  --help           this text\n"
        "\n"
        "MV_BENCH_VM_SMAPS=DIR keeps each QEMU's smaps of the memory case in DIR.\n");
}

static int parse_size(const char *arg, uint64_t *out)
{
    char *end;
    uint64_t v = strtoull(arg, &end, 10), mul = 1;

    switch (*end) {
    case 'k': case 'K': mul = 1ull << 10; end++; break;
    case 'm': case 'M': mul = 1ull << 20; end++; break;
    case 'g': case 'G': mul = 1ull << 30; end++; break;
    case '\0': break;
    default: end = NULL;
    }
    if (!end || *end || end == arg || v == 0 || v * mul < 128 * MV_BENCH_MIB ||
        v * mul > 64 * MV_BENCH_GIB || (v * mul) % (2 * MV_BENCH_MIB)) {
        mv_bench_error("vm: --maxmem '%s' is not a size of 128M..64G in whole 2 MiB", arg);
        return MV_BENCH_USAGE;
    }
    *out = v * mul;
    return MV_BENCH_OK;
}

static int parse_option(int opt, const char *arg, void *ctx)
{
    struct vm_options *o = ctx;

    switch (opt) {
    case 'g':
        return mv_bench_parse_u64("vm: --guests", arg, 1, VM_MAX_GUESTS, &o->guests);
    case 'm':
        return parse_size(arg, &o->maxmem);
    case 'i':
        if (strlen(arg) >= sizeof(o->image)) {
            mv_bench_error("vm: --image is too long");
            return MV_BENCH_USAGE;
        }
        snprintf(o->image, sizeof(o->image), "%s", arg);
        return MV_BENCH_OK;
    case 'a':
        if (strcmp(arg, "tcg") != 0 && strcmp(arg, "kvm") != 0) {
            mv_bench_error("vm: --accel is tcg or kvm, not '%s'", arg);
            return MV_BENCH_USAGE;
        }
        o->accel = strcmp(arg, "tcg") == 0 ? "tcg" : "kvm";
        return MV_BENCH_OK;
    case 'r':
        return mv_bench_parse_u64("vm: --rounds", arg, 1, MV_BENCH_MAX_ROUNDS, &o->rounds);
    case 't':
        return mv_bench_parse_u64("vm: --touch-runs", arg, 1, MV_BENCH_MAX_ROUNDS,
                                  &o->touch_runs);
    case 's':
        return mv_bench_parse_u64("vm: --settle", arg, 0, 3600, &o->settle_s);
    case 'k':
        return mv_bench_parse_u64("vm: --ksm-timeout", arg, 1, 36000, &o->ksm_timeout_s);
    }
    return MV_BENCH_OK;
}

static int parse_options(int argc, char **argv, void *arg, bool *help)
{
    static const struct option options[] = {
        { "json", no_argument, NULL, 'j' },
        { "guests", required_argument, NULL, 'g' },
        { "maxmem", required_argument, NULL, 'm' },
        { "image", required_argument, NULL, 'i' },
        { "accel", required_argument, NULL, 'a' },
        { "rounds", required_argument, NULL, 'r' },
        { "touch-runs", required_argument, NULL, 't' },
        { "settle", required_argument, NULL, 's' },
        { "ksm-timeout", required_argument, NULL, 'k' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    struct vm_options *o = &((struct vm_run *)arg)->opt;
    int rc;

    *o = (struct vm_options){
        .guests = 4, .maxmem = MV_BENCH_GIB, .rounds = 3, .touch_runs = 5, .settle_s = 20,
        .ksm_timeout_s = 300, .accel = "tcg",
    };
    rc = mv_bench_parse_options("vm", argc, argv, options, parse_option, o, &o->json, help);
    if (rc == MV_BENCH_OK && !o->image[0])
        mv_bench_guest_image_dir(o->image, sizeof(o->image));
    return mv_bench_options_done("vm", rc, argc, argv);
}

/* QEMU on PATH, the image, /dev/kvm when asked for. */
static int check_prerequisites(struct vm_run *run)
{
    const char *path = getenv("PATH");
    bool qemu = false;

    for (const char *p = path ? path : "/usr/bin:/bin"; *p && !qemu;) {
        const char *end = strchr(p, ':');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        char try[PATH_MAX];

        snprintf(try, sizeof(try), "%.*s/qemu-system-x86_64", (int)n, p);
        qemu = access(try, X_OK) == 0;
        p += n + (end ? 1 : 0);
    }
    if (!qemu) {
        mv_bench_error("vm: qemu-system-x86_64 is not on PATH: install Debian's "
                       "qemu-system-x86 (apt-get install qemu-system-x86)");
        return MV_BENCH_FAILED;
    }
    snprintf(run->kernel, sizeof(run->kernel), "%s/vmlinuz", run->opt.image);
    snprintf(run->initrd, sizeof(run->initrd), "%s/initramfs.cpio.gz", run->opt.image);
    if (access(run->kernel, R_OK) != 0 || access(run->initrd, R_OK) != 0) {
        mv_bench_error("vm: no guest image in %s: it needs vmlinuz and "
                       "initramfs.cpio.gz (the test guest's image); give its directory "
                       "with --image or MV_GUEST_IMAGE", run->opt.image);
        return MV_BENCH_FAILED;
    }
    if (strcmp(run->opt.accel, "kvm") == 0 && access("/dev/kvm", R_OK | W_OK) != 0) {
        mv_bench_error("vm: --accel kvm needs /dev/kvm, which this host lacks: use tcg");
        return MV_BENCH_FAILED;
    }
    return MV_BENCH_OK;
}

static int run_suite(void *arg)
{
    struct vm_run *run = arg;
    struct mv_kernel_features features;
    struct mv_host_config hc;
    mv_host *host = NULL;
    int rc = check_prerequisites(run);

    if (rc != MV_BENCH_OK)
        return rc;
    rc = mv_bench_probe(&features, &run->machine);
    if (rc != MV_BENCH_OK)
        return rc;
    snprintf(run->run_dir, sizeof(run->run_dir), "/tmp/memvisor-bench-vm.%d", (int)getpid());
    if (mkdir(run->run_dir, 0700) < 0 && errno != EEXIST) {
        mv_bench_error("vm: cannot create %s: %s", run->run_dir, strerror(errno));
        return MV_BENCH_FAILED;
    }
    mv_bench_host_config_init(&hc);
    hc.log = vm_log;
    rc = mv_bench_host_create(&hc, &host);
    if (rc != MV_BENCH_OK)
        goto out;
    fprintf(stderr, "vm: boot, %" PRIu64 " rounds\n", run->opt.rounds);
    if (measure_boot(run, host) < 0 ||
        (fprintf(stderr, "vm: memory, %" PRIu64 " guests\n", run->opt.guests),
         measure_memory(run, host) < 0) ||
        (fprintf(stderr, "vm: touch, %" PRIu64 " runs\n", run->opt.touch_runs),
         measure_touch(run, host) < 0)) {
        rc = MV_BENCH_FAILED;
        goto out;
    }
    rc = report(run);
out:
    ksm_restore();
    if (host)
        mv_host_destroy(host);
    rmdir(run->run_dir);
    return rc;
}

int mv_bench_vm(int argc, char **argv)
{
    static const struct mv_bench_suite suite = {
        .name = "vm", .run_size = sizeof(struct vm_run), .parse = parse_options,
        .usage = print_usage, .run = run_suite,
    };

    return mv_bench_suite_main(&suite, argc, argv);
}

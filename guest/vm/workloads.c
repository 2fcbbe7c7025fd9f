/*
 * workloads.c - the workloads the agent runs as children, each a way a real
 * guest uses its memory: idle (nothing), pagecache MiB (a tmpfs file read
 * over and over), compile (many short-lived processes and heap churn),
 * churn MiB_PER_S (anonymous memory allocated, written and freed at a set
 * rate).  The data-verifying writer lives in verify.c.
 */
#include "mvguest.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_MIB 65536u

int mvg_workload_check(const char *name, const char *arg, char *err, size_t errlen)
{
    uint64_t v;
    if (strcmp(name, "idle") == 0 || strcmp(name, "compile") == 0) {
        if (arg) {
            snprintf(err, errlen, "%s takes no argument", name);
            return -1;
        }
        return 0;
    }
    if (strcmp(name, "pagecache") == 0 || strcmp(name, "churn") == 0 ||
        strcmp(name, "verify") == 0) {
        if (!arg || mvg_parse_u64(arg, 1, MAX_MIB, &v) != 0) {
            snprintf(err, errlen, "%s needs a size in MiB (1..%u)", name, MAX_MIB);
            return -1;
        }
        return 0;
    }
    snprintf(err, errlen, "unknown workload: %.40s", name);
    return -1;
}

static void idle_main(void)
{
    for (;;)
        pause();
}

static void pagecache_main(uint64_t mib, struct mvg_counters *c)
{
    const char *path = "/tmp/mv-pagecache";
    const size_t chunk = 1u << 20;
    char *buf = malloc(chunk);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (!buf || fd < 0) {
        mvg_log("pagecache: %s: %s", path, strerror(errno));
        _exit(1);
    }
    for (uint64_t i = 0; i < mib; i++) {
        for (size_t k = 0; k < chunk; k += 8)
            *(uint64_t *)(buf + k) = (i << 32) ^ k ^ 0x5a5a5a5a5a5a5a5aull;
        if (write(fd, buf, chunk) != (ssize_t)chunk) {
            mvg_log("pagecache: write: %s", strerror(errno));
            _exit(1);
        }
    }
    mvg_log("pagecache: wrote %llu MiB, reading", (unsigned long long)mib);
    /* one pass a second at most: the file stays hot in the page cache
     * without the reader taking the CPU (guests share two cores) */
    uint64_t next = mvg_mono_us();
    for (;;) {
        for (uint64_t i = 0; i < mib; i++) {
            ssize_t n = pread(fd, buf, chunk, (off_t)(i * chunk));
            if (n != (ssize_t)chunk)
                MVG_ADD(c->errors, 1);
            else
                MVG_ADD(c->bytes, chunk);
        }
        MVG_ADD(c->ops, 1);
        next += 1000000u;
        uint64_t now = mvg_mono_us();
        if (next > now)
            mvg_sleep_ms((unsigned)((next - now) / 1000u));
        else
            next = now;
    }
}

static int spawn(const char *const argv[], const char *in, const char *out)
{
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        if (in) {
            int fd = open(in, O_RDONLY);
            if (fd < 0 || dup2(fd, 0) < 0)
                _exit(126);
        }
        int fd = out ? open(out, O_WRONLY | O_CREAT | O_TRUNC, 0600) : open("/dev/null", O_WRONLY);
        if (fd < 0 || dup2(fd, 1) < 0)
            _exit(126);
        execv("/bin/busybox", (char *const *)argv);
        _exit(127);
    }
    int st;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR)
            return -1;
    return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -1;
}

static void compile_main(struct mvg_counters *c)
{
    const char *dir = "/tmp/mv-compile";
    mkdir(dir, 0700);
    uint64_t seed = 0x1234567;
    for (uint64_t round = 0;; round++) {
        /* "sources": a few generated files of text */
        char src[64], obj[64];
        for (int f = 0; f < 8; f++) {
            snprintf(src, sizeof src, "%s/src%d.txt", dir, f);
            FILE *fp = fopen(src, "w");
            if (!fp) {
                MVG_ADD(c->errors, 1);
                continue;
            }
            size_t lines = 2000 + (size_t)(seed % 2000);
            for (size_t l = 0; l < lines; l++) {
                seed = seed * 6364136223846793005ull + 1442695040888963407ull;
                fprintf(fp, "line %016llx %zu %llu\n", (unsigned long long)seed, l,
                        (unsigned long long)round);
            }
            fclose(fp);
        }
        /* "compiler" runs: short-lived processes over each file */
        for (int f = 0; f < 8; f++) {
            snprintf(src, sizeof src, "%s/src%d.txt", dir, f);
            snprintf(obj, sizeof obj, "%s/obj%d.gz", dir, f);
            const char *gz[] = { "gzip", "-c", NULL };
            const char *sum[] = { "sha256sum", src, NULL };
            const char *srt[] = { "sort", "-r", src, NULL };
            int bad = 0;
            bad |= spawn(gz, src, obj);
            bad |= spawn(sum, NULL, NULL);
            bad |= spawn(srt, NULL, NULL);
            MVG_ADD(c->ops, 3);
            if (bad)
                MVG_ADD(c->errors, 1);
        }
        /* heap churn in the "build driver" */
        void *keep[64] = { 0 };
        for (int i = 0; i < 1024; i++) {
            seed = seed * 6364136223846793005ull + 1442695040888963407ull;
            int k = (int)(seed >> 58);
            free(keep[k]);
            size_t sz = 64 + (size_t)((seed >> 20) % (64 * 1024));
            keep[k] = malloc(sz);
            if (keep[k]) {
                memset(keep[k], (int)i, sz);
                MVG_ADD(c->bytes, sz);
            }
        }
        for (int k = 0; k < 64; k++)
            free(keep[k]);
        for (int f = 0; f < 8; f++) {
            snprintf(obj, sizeof obj, "%s/obj%d.gz", dir, f);
            unlink(obj);
        }
        mvg_sleep_ms(100);
    }
}

/* A ring of chunks, each alive about a second: every tick (100 ms) a new
 * chunk of rate/10 MiB is mapped and written and the oldest unmapped, so
 * the footprint is about rate MiB and rate MiB/s pass through it. */
static void churn_main(uint64_t rate_mib, struct mvg_counters *c)
{
    enum { RING = 10, TICK_MS = 100 };
    size_t chunk = (size_t)(rate_mib << 20) / (1000 / TICK_MS);
    chunk = (chunk + MVG_PAGE - 1) & ~(size_t)(MVG_PAGE - 1);
    void *ring[RING] = { 0 };
    uint64_t next = mvg_mono_us();
    for (uint64_t t = 0;; t++) {
        int k = (int)(t % RING);
        if (ring[k])
            munmap(ring[k], chunk);
        ring[k] = mmap(NULL, chunk, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (ring[k] == MAP_FAILED) {
            ring[k] = NULL;
            MVG_ADD(c->errors, 1);
        } else {
            for (size_t off = 0; off < chunk; off += MVG_PAGE)
                *(volatile uint64_t *)((char *)ring[k] + off) = t ^ off;
            MVG_ADD(c->bytes, chunk);
        }
        MVG_ADD(c->ops, 1);
        next += TICK_MS * 1000u;
        uint64_t now = mvg_mono_us();
        if (next > now)
            mvg_sleep_ms((unsigned)((next - now) / 1000u));
        else
            next = now; /* behind: do not try to catch up in a burst */
    }
}

void mvg_workload_main(const char *name, const char *arg, struct mvg_counters *c)
{
    uint64_t v = 0;
    if (arg)
        mvg_parse_u64(arg, 1, MAX_MIB, &v);
    if (strcmp(name, "idle") == 0)
        idle_main();
    else if (strcmp(name, "pagecache") == 0)
        pagecache_main(v, c);
    else if (strcmp(name, "compile") == 0)
        compile_main(c);
    else if (strcmp(name, "churn") == 0)
        churn_main(v, c);
    else if (strcmp(name, "verify") == 0)
        mvg_verify_main(v, c);
    _exit(2);
}

/*
 * memcmds.c - the commands that probe guest memory from inside the agent:
 * dirty (write a known, mlocked set of pages and name their guest frames,
 * read from /proc/self/pagemap, to check a host's dirty log against), touch
 * (the guest-visible cost of first-touching memory) and meminfo.
 */
#include "mvguest.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define DIRTY_MAX_PAGES (1u << 18) /* 1 GiB */
#define DIRTY_LIST_MAX 1024u       /* above this, runs only */

static char *dirty_buf;
static uint64_t dirty_pages, dirty_gen;

/* MemAvailable in kB, 0 when unknown */
static uint64_t mem_available_kb(void)
{
    FILE *fp = fopen("/proc/meminfo", "r");
    char line[256];
    uint64_t kb = 0;
    while (fp && fgets(line, sizeof line, fp))
        if (strncmp(line, "MemAvailable:", 13) == 0)
            kb = strtoull(line + 13, NULL, 10);
    if (fp)
        fclose(fp);
    return kb;
}

/* Refuses a request the guest cannot hold: the OOM killer would otherwise
 * answer it, by killing the agent that asked. */
static int too_big(struct mvg_reply *r, const char *id, uint64_t bytes)
{
    uint64_t avail = mem_available_kb() * 1024u, margin = 16u << 20;
    if (avail && bytes + margin > avail) {
        mvg_reply_error(r, id, "%" PRIu64 " KiB asked, %" PRIu64 " KiB available", bytes >> 10,
                        avail >> 10);
        return 1;
    }
    return 0;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

void mvg_cmd_dirty(struct mvg_reply *r, const char *id, const char *arg)
{
    uint64_t n;
    if (mvg_parse_u64(arg, 1, DIRTY_MAX_PAGES, &n) != 0) {
        mvg_reply_error(r, id, "dirty needs a page count (1..%u)", DIRTY_MAX_PAGES);
        return;
    }
    if (dirty_buf && dirty_pages != n) {
        munlock(dirty_buf, dirty_pages * MVG_PAGE);
        munmap(dirty_buf, dirty_pages * MVG_PAGE);
        dirty_buf = NULL;
    }
    if (!dirty_buf) {
        if (too_big(r, id, n * MVG_PAGE))
            return;
        void *p = mmap(NULL, n * MVG_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                       -1, 0);
        if (p == MAP_FAILED) {
            mvg_reply_error(r, id, "mmap: %s", strerror(errno));
            return;
        }
        if (mlock(p, n * MVG_PAGE) != 0) {
            int e = errno;
            munmap(p, n * MVG_PAGE);
            mvg_reply_error(r, id, "mlock: %s", strerror(e));
            return;
        }
        dirty_buf = p;
        dirty_pages = n;
    }
    dirty_gen++;
    for (uint64_t i = 0; i < n; i++)
        for (size_t off = 0; off < MVG_PAGE; off += 512)
            *(volatile uint64_t *)(dirty_buf + i * MVG_PAGE + off) = (dirty_gen << 32) ^ i ^ off;

    uint64_t *pm = malloc(n * sizeof *pm);
    int fd = open("/proc/self/pagemap", O_RDONLY);
    off_t at = (off_t)((uintptr_t)dirty_buf / MVG_PAGE * sizeof *pm);
    if (!pm || fd < 0 || pread(fd, pm, n * sizeof *pm, at) != (ssize_t)(n * sizeof *pm)) {
        mvg_reply_error(r, id, "pagemap: %s", strerror(errno));
        if (fd >= 0)
            close(fd);
        free(pm);
        return;
    }
    close(fd);
    for (uint64_t i = 0; i < n; i++) {
        if (!(pm[i] >> 63) || (pm[i] & ((1ull << 55) - 1)) == 0) {
            mvg_reply_error(r, id, "pagemap: page %" PRIu64 " not present or no PFN (root?)", i);
            free(pm);
            return;
        }
        pm[i] &= (1ull << 55) - 1;
    }
    qsort(pm, n, sizeof *pm, cmp_u64); /* a set of frames: report it sorted */
    mvg_reply_begin(r, id, 1);
    mvg_reply_u64(r, "pages", n);
    mvg_reply_u64(r, "generation", dirty_gen);
    if (n <= DIRTY_LIST_MAX) {
        mvg_reply_key(r, "gfns");
        mvg_reply_raw(r, "[");
        for (uint64_t i = 0; i < n; i++)
            mvg_reply_printf(r, "%s%" PRIu64, i ? "," : "", pm[i]);
        mvg_reply_raw(r, "]");
    }
    mvg_reply_key(r, "gfn_runs");
    mvg_reply_raw(r, "[");
    for (uint64_t i = 0, k = 0; i < n; k++) {
        uint64_t j = i + 1;
        while (j < n && pm[j] == pm[j - 1] + 1)
            j++;
        mvg_reply_printf(r, "%s[%" PRIu64 ",%" PRIu64 "]", k ? "," : "", pm[i], j - i);
        i = j;
    }
    mvg_reply_raw(r, "]");
    mvg_reply_end(r);
    free(pm);
}

void mvg_cmd_touch(struct mvg_reply *r, const char *id, const char *arg)
{
    uint64_t mib;
    if (mvg_parse_u64(arg, 1, 65536, &mib) != 0) {
        mvg_reply_error(r, id, "touch needs a size in MiB (1..65536)");
        return;
    }
    size_t len = (size_t)(mib << 20);
    if (too_big(r, id, len))
        return;
    uint64_t t0 = mvg_mono_us();
    char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        mvg_reply_error(r, id, "mmap: %s", strerror(errno));
        return;
    }
    for (size_t off = 0; off < len; off += MVG_PAGE)
        *(volatile char *)(p + off) = 1;
    munmap(p, len);
    uint64_t us = mvg_mono_us() - t0;
    mvg_reply_begin(r, id, 1);
    mvg_reply_u64(r, "ms", us / 1000u);
    mvg_reply_u64(r, "us", us);
    mvg_reply_u64(r, "pages", len / MVG_PAGE);
    mvg_reply_end(r);
}

void mvg_cmd_meminfo(struct mvg_reply *r, const char *id)
{
    static const char *const keys[] = { "MemTotal", "MemFree", "MemAvailable", "Cached" };
    uint64_t val[4] = { 0 };
    int seen = 0;
    FILE *fp = fopen("/proc/meminfo", "r");
    if (!fp) {
        mvg_reply_error(r, id, "/proc/meminfo: %s", strerror(errno));
        return;
    }
    char line[256];
    while (fgets(line, sizeof line, fp)) {
        for (int k = 0; k < 4; k++) {
            size_t kl = strlen(keys[k]);
            if (strncmp(line, keys[k], kl) == 0 && line[kl] == ':') {
                val[k] = strtoull(line + kl + 1, NULL, 10);
                seen |= 1 << k;
            }
        }
    }
    fclose(fp);
    if (seen != 15) {
        mvg_reply_error(r, id, "/proc/meminfo: fields missing");
        return;
    }
    mvg_reply_begin(r, id, 1);
    mvg_reply_str(r, "unit", "kB");
    for (int k = 0; k < 4; k++)
        mvg_reply_u64(r, keys[k], val[k]);
    mvg_reply_end(r);
}

/*
 * vmm_stub.c - a stand-in VMM for test_vmm: maps its guest RAM the way QEMU
 * does (a reservation, then the RAM file mapped over it MAP_SHARED |
 * MAP_FIXED at offset 0, the file opened by path), with the agent loaded
 * through LD_PRELOAD, and then acts as its vCPU on commands read from
 * stdin, one reply line each on stdout:
 *   write FIRST N SEED   fill pages with a pattern of (seed, gfn)   -> ok
 *   verify FIRST N SEED  check that pattern             -> ok | bad GFN
 *   fill FIRST N BYTE    fill pages with one byte value             -> ok
 *   sum FIRST N          read pages, sum of their bytes         -> ok SUM
 *   discard FIRST N      punch the pages out of the RAM file (a balloon)
 *                                                         -> ok | err ERRNO
 *   rom                  map 2 MiB of anonymous memory as QEMU maps a ROM
 *                        (merging, then huge pages asked), fill it with zeros
 *                        as QEMU does at reset, write page 3
 *                        -> ok RSS_KB FLAGS (FLAGS: "nh" when kept on small
 *                           pages, "hg" when left to huge pages)
 *   romrss               -> ok RSS_KB of that block
 *   romcheck             page 3 as written, every other page as the writer
 *                        left it (zero without one)  -> ok | bad PAGE
 *   romwriter start|stop a thread storing to the block's pages, each store
 *                        either a new non-zero value or zero, until stopped;
 *                        each store checks first that the page still holds
 *                        the one before; stop checks that every page holds
 *                        the last                     -> ok | bad PAGE
 *   hold                 reply, then only wait to be killed     -> ok
 *   exit
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE 4096ull

static uint8_t *ram;
static uint64_t pages;

static uint64_t word(uint64_t seed, uint64_t gfn, uint64_t i)
{
    uint64_t x = seed * 0x9e3779b97f4a7c15ull ^ gfn * 0xbf58476d1ce4e5b9ull ^ i;

    x ^= x >> 31;
    x *= 0x94d049bb133111ebull;
    return (x ^ (x >> 29)) | 1;
}

/* A RAM block of the VMM's own, as QEMU allocates one for a ROM or its
 * ACPI tables. */
#define ROM_BYTES (2u << 20)
#define ROM_PAGES (ROM_BYTES / PAGE)
#define ROM_MARKED 3u

static uint8_t *rom;
static volatile uint64_t rom_last[ROM_PAGES]; /* the writer's last store */
static atomic_int rom_stop;      /* the writer's stop, set by main */
static volatile long rom_lost = -1;   /* a page whose last store was lost */
static pthread_t rom_thread;

static void rom_smaps(unsigned long long *rss, const char **flags)
{
    char line[256], want[32];
    int in_block = 0;
    FILE *f = fopen("/proc/self/smaps", "r");

    *rss = 0;
    *flags = "?";
    snprintf(want, sizeof(want), "%lx-", (unsigned long)(uintptr_t)rom);
    while (f && fgets(line, sizeof(line), f)) {
        if ((line[0] >= '0' && line[0] <= '9') || (line[0] >= 'a' && line[0] <= 'f'))
            in_block = strncmp(line, want, strlen(want)) == 0;
        else if (in_block && strncmp(line, "Rss:", 4) == 0)
            *rss = strtoull(line + 4, NULL, 10);
        else if (in_block && strncmp(line, "VmFlags:", 8) == 0)
            *flags = strstr(line, " nh") ? "nh" : strstr(line, " hg") ? "hg" : "-";
    }
    if (f)
        fclose(f);
}

static void map_rom(void)
{
    uint8_t *reserve = mmap(NULL, 2 * ROM_BYTES, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    unsigned long long rss;
    const char *flags;

    if (reserve == MAP_FAILED) {
        printf("err %d\n", errno);
        return;
    }
    rom = (uint8_t *)(((uintptr_t)reserve + ROM_BYTES - 1) & ~((uintptr_t)ROM_BYTES - 1));
    /* QEMU's order: merging first, then huge pages. */
    if (madvise(rom, ROM_BYTES, MADV_MERGEABLE) < 0 ||
        madvise(rom, ROM_BYTES, MADV_HUGEPAGE) < 0) {
        printf("err %d\n", errno);
        return;
    }
    memset(rom, 0, ROM_BYTES);
    memset(rom + ROM_MARKED * PAGE, 0x33, PAGE);
    rom_smaps(&rss, &flags);
    printf("ok %llu %s\n", rss, flags);
}

static long rom_bad_page(void)
{
    for (uint64_t p = 0; p < ROM_PAGES; p++) {
        const uint64_t *w = (const uint64_t *)(rom + p * PAGE);

        for (uint64_t i = 0; i < PAGE / 8; i++) {
            uint64_t want = p == ROM_MARKED ? 0x3333333333333333ull : i == 0 ? rom_last[p] : 0;

            if (w[i] != want)
                return (long)p;
        }
    }
    return -1;
}

static void *rom_writer(void *arg)
{
    uint64_t value = 1;

    (void)arg;
    while (!atomic_load(&rom_stop)) {
        for (uint64_t p = 0; p < ROM_PAGES && !atomic_load(&rom_stop); p++) {
            uint64_t v = (value++ % 3) ? value : 0; /* a third go back to zero */

            if (p == ROM_MARKED)
                continue;
            /* Each visit first checks that the last store is still there. */
            if (*(volatile uint64_t *)(rom + p * PAGE) != rom_last[p] && rom_lost < 0)
                rom_lost = (long)p;
            *(volatile uint64_t *)(rom + p * PAGE) = v;
            rom_last[p] = v;
        }
    }
    return NULL;
}

static void rom_command(const char *cmd, const char *arg)
{
    unsigned long long rss;
    const char *flags;
    long bad;

    if (strcmp(cmd, "rom") == 0) {
        map_rom();
    } else if (!rom) {
        printf("err %d\n", EINVAL);
    } else if (strcmp(cmd, "romrss") == 0) {
        rom_smaps(&rss, &flags);
        printf("ok %llu\n", rss);
    } else if (strcmp(cmd, "romcheck") == 0) {
        bad = rom_bad_page();
        if (bad < 0)
            printf("ok\n");
        else
            printf("bad %ld\n", bad);
    } else if (strcmp(cmd, "romwriter") == 0 && strcmp(arg, "start") == 0) {
        atomic_store(&rom_stop, 0);
        printf(pthread_create(&rom_thread, NULL, rom_writer, NULL) == 0 ? "ok\n" : "err 12\n");
    } else if (strcmp(cmd, "romwriter") == 0 && strcmp(arg, "stop") == 0) {
        atomic_store(&rom_stop, 1);
        pthread_join(rom_thread, NULL);
        bad = rom_lost >= 0 ? rom_lost : rom_bad_page();
        if (bad < 0)
            printf("ok\n");
        else
            printf("bad %ld\n", bad);
    } else {
        printf("err %d\n", EINVAL);
    }
}

int main(int argc, char **argv)
{
    char line[256];
    uint64_t size;
    int fd;
    uint8_t *reserve, *aligned;

    if (argc != 3) {
        fprintf(stderr, "usage: vmm_stub SIZE RAM_PATH\n");
        return 2;
    }
    size = strtoull(argv[1], NULL, 0);
    pages = size / PAGE;
    fd = open(argv[2], O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        fprintf(stderr, "vmm_stub: open %s: %s\n", argv[2], strerror(errno));
        return 1;
    }
    reserve = mmap(NULL, size + (2 << 20), PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (reserve == MAP_FAILED)
        return 1;
    aligned = (uint8_t *)(((uintptr_t)reserve + (2 << 20) - 1) & ~((uintptr_t)(2 << 20) - 1));
    ram = mmap(aligned, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0);
    if (ram == MAP_FAILED) {
        printf("mapfail %d\n", errno);
        fflush(stdout);
        return 1;
    }
    printf("ready\n");
    fflush(stdout);
    while (fgets(line, sizeof(line), stdin)) {
        char cmd[16];
        unsigned long long first = 0, n = 0, arg = 0;
        int got = sscanf(line, "%15s %llu %llu %llu", cmd, &first, &n, &arg);

        if (got >= 1 && strcmp(cmd, "exit") == 0)
            break;
        if (got >= 1 && strcmp(cmd, "hold") == 0) {
            printf("ok\n"); /* and never read another command */
            fflush(stdout);
            for (;;)
                pause();
        }
        if (got >= 1 && strncmp(cmd, "rom", 3) == 0) {
            char word[16] = "";

            sscanf(line, "%*s %15s", word);
            rom_command(cmd, word);
            fflush(stdout);
            continue;
        }
        if (got < 3 || first > pages || n > pages - first) {
            printf("err %d\n", EINVAL);
        } else if (strcmp(cmd, "write") == 0) {
            for (uint64_t g = first; g < first + n; g++)
                for (uint64_t i = 0; i < PAGE / 8; i++)
                    ((uint64_t *)(ram + g * PAGE))[i] = word(arg, g, i);
            printf("ok\n");
        } else if (strcmp(cmd, "verify") == 0) {
            uint64_t bad = UINT64_MAX;

            for (uint64_t g = first; g < first + n && bad == UINT64_MAX; g++)
                for (uint64_t i = 0; i < PAGE / 8; i++)
                    if (((uint64_t *)(ram + g * PAGE))[i] != word(arg, g, i)) {
                        bad = g;
                        break;
                    }
            if (bad == UINT64_MAX)
                printf("ok\n");
            else
                printf("bad %llu\n", (unsigned long long)bad);
        } else if (strcmp(cmd, "fill") == 0) {
            memset(ram + first * PAGE, (int)arg, n * PAGE);
            printf("ok\n");
        } else if (strcmp(cmd, "sum") == 0) {
            uint64_t sum = 0;

            for (uint64_t b = first * PAGE; b < (first + n) * PAGE; b++)
                sum += ram[b];
            printf("ok %llu\n", (unsigned long long)sum);
        } else if (strcmp(cmd, "discard") == 0) {
            if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                          (off_t)(first * PAGE), (off_t)(n * PAGE)) < 0)
                printf("err %d\n", errno);
            else if (madvise(ram + first * PAGE, n * PAGE, MADV_DONTNEED) < 0)
                printf("err %d\n", errno);
            else
                printf("ok\n");
        } else {
            printf("err %d\n", EINVAL);
        }
        fflush(stdout);
    }
    return 0;
}

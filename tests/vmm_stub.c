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
 *   hold                 reply, then only wait to be killed     -> ok
 *   exit
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
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

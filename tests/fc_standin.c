/*
 * fc_standin.c - a stand-in for Firecracker restoring a snapshot with a
 * page-fault handler, following Firecracker's documented protocol
 * (docs/snapshotting/handling-page-faults-on-snapshot-resume.md there):
 * it opens a userfaultfd (UFFDIO_API with UFFD_FEATURE_EVENT_REMOVE, as
 * Firecracker does for its balloon), maps its guest memory anonymously,
 * registers it for missing faults (and write protection with --wp),
 * connects to the handler's Unix socket and sends the JSON list of its
 * regions with the userfaultfd in one message.  Then it acts as the
 * guest, on commands from stdin (pages are numbered across the regions in
 * order), one reply line each on stdout:
 *   sum FIRST N          read pages: the sum of their bytes      -> ok SUM
 *   check FIRST N SEED   pages hold the snapshot pattern of SEED -> ok | bad P
 *   write FIRST N BYTE   fill pages with BYTE                    -> ok
 *   remove FIRST N       madvise(MADV_DONTNEED): the balloon     -> ok
 *   hold                 reply, then only wait to be killed      -> ok
 *   exit
 * Usage: fc_standin SOCKET REGION_MIB[,REGION_MIB...] [--wp]
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <linux/userfaultfd.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#define PAGE 4096ull
#define MAX_REGIONS 4

static uint8_t *base[MAX_REGIONS];
static uint64_t npages[MAX_REGIONS];
static int nregions;

/* The snapshot file's pattern of a page: test_fc writes the same. */
static uint8_t pattern(uint64_t seed, uint64_t page, uint64_t i)
{
    return (uint8_t)((seed * 131 + page * 7 + i) | 1);
}

static uint8_t *page_at(uint64_t p)
{
    for (int r = 0; r < nregions; r++) {
        if (p < npages[r])
            return base[r] + p * PAGE;
        p -= npages[r];
    }
    return NULL;
}

int main(int argc, char **argv)
{
    struct uffdio_api api = { .api = UFFD_API, .features = UFFD_FEATURE_EVENT_REMOVE };
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    char json[1024], line[256], *sizes, *tok;
    bool wp = argc > 3 && strcmp(argv[3], "--wp") == 0;
    uint64_t offset = 0, total = 0;
    int uffd, sock, len = 0;

    if (argc < 3) {
        fprintf(stderr, "usage: fc_standin SOCKET REGION_MIB[,...] [--wp]\n");
        return 2;
    }
    uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (uffd < 0 || ioctl(uffd, UFFDIO_API, &api) < 0) {
        printf("uffd %d\n", errno);
        return 1;
    }
    len += snprintf(json + len, sizeof(json) - (size_t)len, "[");
    sizes = strdup(argv[2]);
    for (tok = strtok(sizes, ","); tok && nregions < MAX_REGIONS; tok = strtok(NULL, ",")) {
        uint64_t size = strtoull(tok, NULL, 10) << 20;
        struct uffdio_register reg = { .mode = UFFDIO_REGISTER_MODE_MISSING };

        /* A guard page between regions, as separate mappings have. */
        base[nregions] = mmap(NULL, size + PAGE, PROT_READ | PROT_WRITE,
                              MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (base[nregions] == MAP_FAILED)
            return 1;
        munmap(base[nregions] + size, PAGE);
        reg.range.start = (uintptr_t)base[nregions];
        reg.range.len = size;
        if (wp)
            reg.mode |= UFFDIO_REGISTER_MODE_WP;
        if (ioctl(uffd, UFFDIO_REGISTER, &reg) < 0) {
            printf("register %d\n", errno);
            return 1;
        }
        npages[nregions] = size / PAGE;
        len += snprintf(json + len, sizeof(json) - (size_t)len,
                        "%s{\"base_host_virt_addr\":%llu,\"size\":%llu,\"offset\":%llu,"
                        "\"page_size\":4096,\"page_size_kib\":4}",
                        nregions ? "," : "", (unsigned long long)(uintptr_t)base[nregions],
                        (unsigned long long)size, (unsigned long long)offset);
        offset += size;
        total += size / PAGE;
        nregions++;
    }
    len += snprintf(json + len, sizeof(json) - (size_t)len, "]");
    sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", argv[1]);
    if (connect(sock, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        printf("connect %d\n", errno);
        return 1;
    }
    {
        char cbuf[CMSG_SPACE(sizeof(int))];
        struct iovec iov = { json, (size_t)len };
        struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1,
                             .msg_control = cbuf, .msg_controllen = sizeof(cbuf) };
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);

        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &uffd, sizeof(int));
        if (sendmsg(sock, &mh, 0) != len) {
            printf("sendmsg %d\n", errno);
            return 1;
        }
    }
    /* As Firecracker: nothing more on the socket. */
    printf("ready %llu\n", (unsigned long long)total);
    fflush(stdout);
    while (fgets(line, sizeof(line), stdin)) {
        char cmd[16];
        unsigned long long first = 0, n = 0, arg = 0;
        int got = sscanf(line, "%15s %llu %llu %llu", cmd, &first, &n, &arg);

        if (got >= 1 && strcmp(cmd, "exit") == 0)
            break;
        if (got >= 1 && strcmp(cmd, "hold") == 0) {
            printf("ok\n");
            fflush(stdout);
            for (;;)
                pause();
        }
        if (got < 3 || first > total || n > total - first) {
            printf("err %d\n", EINVAL);
        } else if (strcmp(cmd, "sum") == 0) {
            uint64_t sum = 0;

            for (uint64_t p = first; p < first + n; p++)
                for (uint64_t i = 0; i < PAGE; i++)
                    sum += page_at(p)[i];
            printf("ok %llu\n", (unsigned long long)sum);
        } else if (strcmp(cmd, "check") == 0) {
            uint64_t bad = UINT64_MAX;

            for (uint64_t p = first; p < first + n && bad == UINT64_MAX; p++)
                for (uint64_t i = 0; i < PAGE; i++)
                    if (page_at(p)[i] != pattern(arg, p, i)) {
                        bad = p;
                        break;
                    }
            if (bad == UINT64_MAX)
                printf("ok\n");
            else
                printf("bad %llu\n", (unsigned long long)bad);
        } else if (strcmp(cmd, "write") == 0) {
            for (uint64_t p = first; p < first + n; p++)
                memset(page_at(p), (int)arg, PAGE);
            printf("ok\n");
        } else if (strcmp(cmd, "remove") == 0) {
            int rc = 0;

            for (uint64_t p = first; p < first + n && rc == 0; p++)
                rc = madvise(page_at(p), PAGE, MADV_DONTNEED);
            if (rc == 0)
                printf("ok\n");
            else
                printf("err %d\n", errno);
        } else {
            printf("err %d\n", EINVAL);
        }
        fflush(stdout);
    }
    return 0;
}

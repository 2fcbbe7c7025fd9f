/*
 * probe.c - what the running kernel offers, and userfaultfds for domains.
 *
 * Probing opens a throw-away userfaultfd and asks the UFFDIO_API handshake
 * for every feature (the kernel answers with the ones it has), tries the
 * PAGEMAP_SCAN ioctl with an invalid argument (ENOTTY means absent), and
 * reads the sysctls that limit us.  A missing feature the foundation needs is
 * reported with the kernel version that introduced it.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/utsname.h>
#include <unistd.h>

#define MV_UFFD_DOMAIN_FEATURES \
    (UFFD_FEATURE_MISSING_SHMEM | UFFD_FEATURE_MINOR_SHMEM)

static uint64_t read_u64_file(const char *path)
{
    unsigned long long v = 0;
    FILE *f = fopen(path, "r");

    if (!f)
        return 0;
    if (fscanf(f, "%llu", &v) != 1)
        v = 0;
    fclose(f);
    return v;
}

/* The bracketed choice of a sysfs policy file such as "always [never]". */
static void read_policy(const char *path, char *out, size_t size)
{
    char line[256], *open_br, *close_br;
    FILE *f = fopen(path, "r");

    snprintf(out, size, "unknown");
    if (!f)
        return;
    if (fgets(line, sizeof(line), f)) {
        open_br = strchr(line, '[');
        close_br = open_br ? strchr(open_br, ']') : NULL;
        if (open_br && close_br) {
            *close_br = '\0';
            snprintf(out, size, "%s", open_br + 1);
        }
    }
    fclose(f);
}

static uint64_t mem_available_bytes(void)
{
    char line[256];
    unsigned long long kib;
    uint64_t bytes = 0;
    FILE *f = fopen("/proc/meminfo", "r");

    if (!f)
        return 0;
    while (fgets(line, sizeof(line), f)) {
        if (sscanf(line, "MemAvailable: %llu kB", &kib) == 1) {
            bytes = kib * 1024ull;
            break;
        }
    }
    fclose(f);
    return bytes;
}

static int probe_pagemap_scan(void)
{
    struct pm_scan_arg arg = { .size = 1 }; /* wrong size: EINVAL if known */
    int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    int rc, known;

    if (fd < 0)
        return 0;
    rc = ioctl(fd, PAGEMAP_SCAN, &arg);
    known = rc == 0 || errno != ENOTTY;
    close(fd);
    return known;
}

int mv_probe_kernel(struct mv_kernel_features *out)
{
    struct utsname uts;
    uint64_t offered = 0;
    int fd, how = 0, rc;

    mv__clear_error();
    memset(out, 0, sizeof(*out));
    if (uname(&uts) == 0)
        snprintf(out->release, sizeof(out->release), "%s", uts.release);
    out->max_map_count = read_u64_file("/proc/sys/vm/max_map_count");
    out->mem_available = mem_available_bytes();
    read_policy("/sys/kernel/mm/transparent_hugepage/shmem_enabled",
                out->shmem_thp, sizeof(out->shmem_thp));
    out->pagemap_scan = probe_pagemap_scan();

    fd = mv__os_uffd_open(&how);
    if (fd < 0)
        return mv__fail(fd, "cannot open a userfaultfd: %s (needs Linux 4.3 "
                        "built with CONFIG_USERFAULTFD, and root, "
                        "/dev/userfaultfd access or vm.unprivileged_userfaultfd=1)",
                        mv_strerror(fd));
    out->uffd_available = 1;
    out->uffd_dev = how == 0;
    out->uffd_user_mode_only = how == 2;
    rc = mv__os_uffd_api(fd, 0, &offered, NULL);
    close(fd);
    if (rc < 0)
        return mv__fail(rc, "UFFDIO_API handshake failed: %s", mv_strerror(rc));

    out->uffd_features = offered;
    out->missing_shmem = !!(offered & UFFD_FEATURE_MISSING_SHMEM);
    out->minor_shmem = !!(offered & UFFD_FEATURE_MINOR_SHMEM);
    out->wp_shmem = !!(offered & UFFD_FEATURE_WP_HUGETLBFS_SHMEM);
    out->wp_unpopulated = !!(offered & UFFD_FEATURE_WP_UNPOPULATED);
    out->wp_async = !!(offered & UFFD_FEATURE_WP_ASYNC);

    if (!out->missing_shmem)
        return mv__fail(-EOPNOTSUPP, "userfaultfd lacks MISSING faults on shmem "
                        "(UFFD_FEATURE_MISSING_SHMEM, Linux 4.11); kernel is %s",
                        out->release);
    if (!out->minor_shmem)
        return mv__fail(-EOPNOTSUPP, "userfaultfd lacks MINOR faults on shmem "
                        "(UFFD_FEATURE_MINOR_SHMEM, Linux 5.14), which the zero "
                        "sweep needs; kernel is %s", out->release);
    return 0;
}

int mv__uffd_adopt(int fd, uint64_t features)
{
    int rc = mv__os_uffd_api(fd, features | MV_UFFD_DOMAIN_FEATURES, NULL, NULL);

    if (rc < 0) {
        close(fd);
        return mv__fail(rc, "UFFDIO_API with features 0x%llx failed: %s",
                        (unsigned long long)(features | MV_UFFD_DOMAIN_FEATURES),
                        mv_strerror(rc));
    }
    return fd;
}

int mv__uffd_create(uint64_t features)
{
    int fd, how;

    fd = mv__os_uffd_open(&how);
    if (fd < 0)
        return mv__fail(fd, "cannot open a userfaultfd: %s", mv_strerror(fd));
    return mv__uffd_adopt(fd, features);
}

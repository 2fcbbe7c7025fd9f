/*
 * logdirty_floor.c - the floor of memvisor's wp-async dirty-log fetch: the
 * kernel's own PAGEMAP_SCAN loop with no memvisor code around it.
 *
 * A memfd of the domain's size stands for its RAM (shmem, MAP_SHARED, as a
 * domain's RAM is), every page written once, then registered with a
 * userfaultfd in WP_ASYNC mode and write-protected as a whole.  A fetch is
 * the protecting scan and nothing else:
 *
 *   ioctl(PAGEMAP_SCAN, PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
 *         category_mask = return_mask = PAGE_IS_WRITTEN)
 *
 * over the whole range, into a vector of as many regions as the library's
 * harvest uses, again from walk_end until the walk reaches the end.  The
 * returned regions are counted, not turned into a bitmap: what memvisor
 * does beyond this loop is what the comparison measures.
 *
 * Owns: the memfd, its mapping and the userfaultfd (ld_floor_close frees
 * them).  Used by one thread at a time; no locking.
 */
#include "logdirty_floor.h"

#include "compat.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

/* The library's harvest_written uses a vector of this many regions. */
#define LD_FLOOR_REGIONS 256u

static int floor_uffd(void)
{
    struct uffdio_api api = {
        .api = UFFD_API,
        .features = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_HUGETLBFS_SHMEM,
    };
    int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);

    if (fd < 0 && errno == EPERM)
        fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
    if (fd < 0)
        return -errno;
    if (ioctl(fd, UFFDIO_API, &api) < 0) {
        int rc = -errno;

        close(fd);
        return rc;
    }
    return fd;
}

void ld_floor_init(struct ld_floor *f)
{
    *f = (struct ld_floor){ .memfd = -1, .uffd = -1, .pagemap = -1 };
}

int ld_floor_open(struct ld_floor *f, uint64_t bytes, const char **failed)
{
    struct uffdio_register reg = { .mode = UFFDIO_REGISTER_MODE_WP };
    struct uffdio_writeprotect wp = { .mode = UFFDIO_WRITEPROTECT_MODE_WP };
    void *mem;

    ld_floor_init(f);
    f->bytes = bytes;
    *failed = "memfd_create";
    f->memfd = memfd_create("memvisor-bench-logdirty-floor", MFD_CLOEXEC);
    if (f->memfd < 0)
        return -errno;
    *failed = "ftruncate";
    if (ftruncate(f->memfd, (off_t)bytes) < 0)
        return -errno;
    *failed = "mmap";
    mem = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, f->memfd, 0);
    if (mem == MAP_FAILED)
        return -errno;
    f->mem = mem;
    /* Every page present, as in the library's fully populated domain. */
    for (uint64_t off = 0; off < bytes; off += MV_PAGE_SIZE)
        ((volatile uint64_t *)(f->mem + off))[0] = 1;
    *failed = "open /proc/self/pagemap";
    f->pagemap = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (f->pagemap < 0)
        return -errno;
    *failed = "userfaultfd (WP_ASYNC)";
    f->uffd = floor_uffd();
    if (f->uffd < 0)
        return f->uffd;
    reg.range = (struct uffdio_range){ (uintptr_t)f->mem, bytes };
    *failed = "UFFDIO_REGISTER";
    if (ioctl(f->uffd, UFFDIO_REGISTER, &reg) < 0)
        return -errno;
    wp.range = reg.range;
    *failed = "UFFDIO_WRITEPROTECT";
    if (ioctl(f->uffd, UFFDIO_WRITEPROTECT, &wp) < 0)
        return -errno;
    /* A first scan is the baseline, as the library's enable is. */
    *failed = "PAGEMAP_SCAN";
    return ld_floor_fetch(f) < 0 ? -errno : 0;
}

int64_t ld_floor_fetch(struct ld_floor *f)
{
    struct page_region regions[LD_FLOOR_REGIONS];
    uintptr_t base = (uintptr_t)f->mem, end = base + f->bytes;
    struct pm_scan_arg arg = {
        .size = sizeof(arg),
        .flags = PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
        .start = base,
        .end = end,
        .vec = (uintptr_t)regions,
        .vec_len = LD_FLOOR_REGIONS,
        .category_mask = PAGE_IS_WRITTEN,
        .return_mask = PAGE_IS_WRITTEN,
    };
    int64_t pages = 0;

    for (;;) {
        long n = ioctl(f->pagemap, PAGEMAP_SCAN, &arg);

        if (n < 0)
            return -errno;
        for (long i = 0; i < n; i++)
            pages += (int64_t)((regions[i].end - regions[i].start) >> MV_PAGE_SHIFT);
        if (arg.walk_end == 0 || arg.walk_end >= end)
            return pages;
        arg.start = arg.walk_end;
    }
}

void ld_floor_close(struct ld_floor *f)
{
    if (f->uffd >= 0)
        close(f->uffd);
    if (f->pagemap >= 0)
        close(f->pagemap);
    if (f->mem)
        munmap(f->mem, f->bytes);
    if (f->memfd >= 0)
        close(f->memfd);
    ld_floor_init(f);
}

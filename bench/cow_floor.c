/*
 * cow_floor.c - the floor of memvisor's copy-on-write break: the system
 * calls a break into the writer's own slot cannot do without, with none of
 * the library's bookkeeping, timed on a vCPU thread like the library's.
 *
 * A memfd stands for machine memory: its first half holds the "shared"
 * frames, mapped and write-protected through a synchronous userfaultfd; its
 * second half holds each page's own slot.  The writer stores to every other
 * page, so that each break splits a mapping as a clone's does.  A server
 * thread, waiting in poll() as a fault thread does, serves each write fault
 * with what the library's break does for one page:
 *
 *   read the message; copy_file_range the frame into the own slot;
 *   mmap(MAP_FIXED) the own slot over the page; register it with a second
 *   userfaultfd (MISSING | MINOR, as a domain's RAM is); UFFDIO_CONTINUE to
 *   map it; UFFDIO_WAKE the writer.
 *
 * The server runs wherever the scheduler puts it, as a default fault thread
 * does.  The figure tells how much of a break is the kernel's, whatever the
 * library does around it.
 */
#include "bench_util.h"
#include "compat.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

struct floor {
    int memfd;
    int cow_uffd;       /* synchronous write-protect: the shared frames */
    int own_uffd;       /* MISSING | MINOR: a domain's own slots */
    int stop_fd;
    uint8_t *mem;       /* 2 * count pages mapping the frames */
    uint64_t count;     /* pages written */
    uint64_t span;      /* bytes of mem */
    int error;          /* the server's first failure, -errno */
    const char *failed; /* and the call that failed */
    uint64_t *latency;
    uint64_t total_ns;
};

static int floor_uffd(uint64_t features)
{
    struct uffdio_api api = { .api = UFFD_API, .features = features };
    int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);

    if (fd < 0)
        return -errno;
    if (ioctl(fd, UFFDIO_API, &api) < 0) {
        int rc = -errno;

        close(fd);
        return rc;
    }
    return fd;
}

/* Serve one write fault at `page` (its offset in mem). */
static int floor_break(struct floor *f, uint64_t page, const char **failed)
{
    uint8_t *at = f->mem + page;
    off_t from = (off_t)page, to = (off_t)(f->span + page);
    struct uffdio_register reg = {
        .range = { (uintptr_t)at, MV_PAGE_SIZE },
        .mode = UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_MINOR,
    };
    struct uffdio_continue cont = { .range = { (uintptr_t)at, MV_PAGE_SIZE } };
    struct uffdio_range wake = { (uintptr_t)at, MV_PAGE_SIZE };

    *failed = "copy_file_range";
    if (copy_file_range(f->memfd, &from, f->memfd, &to, MV_PAGE_SIZE, 0) != MV_PAGE_SIZE)
        return errno ? -errno : -EIO;
    *failed = "mmap";
    if (mmap(at, MV_PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, f->memfd,
             (off_t)(f->span + page)) == MAP_FAILED)
        return -errno;
    *failed = "UFFDIO_REGISTER";
    if (ioctl(f->own_uffd, UFFDIO_REGISTER, &reg) < 0)
        return -errno;
    *failed = "UFFDIO_CONTINUE";
    if (ioctl(f->own_uffd, UFFDIO_CONTINUE, &cont) < 0 && errno != EEXIST)
        return -errno;
    *failed = "UFFDIO_WAKE";
    if (ioctl(f->cow_uffd, UFFDIO_WAKE, &wake) < 0)
        return -errno;
    return 0;
}

static void *floor_server(void *arg)
{
    struct floor *f = arg;

    for (;;) {
        struct pollfd fds[2] = { { f->cow_uffd, POLLIN, 0 }, { f->stop_fd, POLLIN, 0 } };
        struct uffd_msg msg;
        const char *failed;
        uint64_t page;
        int rc;

        if (poll(fds, 2, -1) < 0 && errno != EINTR)
            break;
        if (fds[1].revents)
            break;
        if (read(f->cow_uffd, &msg, sizeof(msg)) != sizeof(msg) ||
            msg.event != UFFD_EVENT_PAGEFAULT)
            continue;
        page = (msg.arg.pagefault.address - (uintptr_t)f->mem) & ~(uint64_t)(MV_PAGE_SIZE - 1);
        rc = floor_break(f, page, &failed);
        if (rc < 0 && !f->error) {
            f->error = rc;
            f->failed = failed;
        }
        if (rc < 0) {
            /* Let the writer go on: unprotect in place. */
            struct uffdio_writeprotect wp = {
                .range = { (uintptr_t)f->mem + page, MV_PAGE_SIZE }, .mode = 0,
            };

            (void)ioctl(f->cow_uffd, UFFDIO_WRITEPROTECT, &wp);
        }
    }
    return NULL;
}

static void *floor_writer(void *arg)
{
    struct floor *f = arg;
    uint64_t t0 = mv_bench_now_ns();

    for (uint64_t i = 0; i < f->count; i++) {
        volatile uint8_t *p = f->mem + 2 * i * MV_PAGE_SIZE;
        uint64_t start = mv_bench_now_ns();

        *p = 0xa5;
        f->latency[i] = mv_bench_now_ns() - start;
    }
    f->total_ns = mv_bench_now_ns() - t0;
    return NULL;
}

/* The frames and both userfaultfds, every page written and protected. */
static int floor_setup(struct floor *f)
{
    struct uffdio_register reg = {
        .range = { (uintptr_t)f->mem, f->span }, .mode = UFFDIO_REGISTER_MODE_WP,
    };
    struct uffdio_writeprotect wp = {
        .range = { (uintptr_t)f->mem, f->span }, .mode = UFFDIO_WRITEPROTECT_MODE_WP,
    };

    for (uint64_t off = 0; off < f->span; off += MV_PAGE_SIZE)
        f->mem[off] = (uint8_t)(off >> MV_PAGE_SHIFT | 1);
    f->cow_uffd = floor_uffd(0);
    if (f->cow_uffd < 0)
        return f->cow_uffd;
    f->own_uffd = floor_uffd(UFFD_FEATURE_MINOR_SHMEM);
    if (f->own_uffd < 0)
        return f->own_uffd;
    if (ioctl(f->cow_uffd, UFFDIO_REGISTER, &reg) < 0 ||
        ioctl(f->cow_uffd, UFFDIO_WRITEPROTECT, &wp) < 0)
        return -errno;
    f->stop_fd = eventfd(0, EFD_CLOEXEC);
    return f->stop_fd < 0 ? -errno : 0;
}

/* Check what the breaks left: every written page holds the store, every
 * other page its frame's byte, the frames are untouched. */
static int floor_check(const struct floor *f)
{
    uint8_t frame;

    for (uint64_t i = 0; i < 2 * f->count; i++) {
        uint64_t off = i * MV_PAGE_SIZE;
        uint8_t want = i % 2 ? (uint8_t)(i | 1) : 0xa5;

        if (f->mem[off] != want ||
            pread(f->memfd, &frame, 1, (off_t)off) != 1 || frame != (uint8_t)(i | 1)) {
            mv_bench_error("cow floor: page %" PRIu64 " reads %#x, want %#x", i,
                           f->mem[off], want);
            return MV_BENCH_FAILED;
        }
    }
    return MV_BENCH_OK;
}

int mv_bench_cow_floor(uint64_t count, uint64_t *latency, uint64_t *total_ns)
{
    struct floor f = {
        .memfd = -1, .cow_uffd = -1, .own_uffd = -1, .stop_fd = -1, .count = count,
        .span = 2 * count * MV_PAGE_SIZE, .latency = latency,
    };
    pthread_t server;
    uint64_t one = 1;
    int rc;

    f.memfd = memfd_create("memvisor-bench-cow-floor", MFD_CLOEXEC);
    if (f.memfd < 0 || ftruncate(f.memfd, (off_t)(2 * f.span)) < 0) {
        mv_bench_error("cow floor: memfd: %s", strerror(errno));
        rc = MV_BENCH_FAILED;
        goto out;
    }
    f.mem = mmap(NULL, f.span, PROT_READ | PROT_WRITE, MAP_SHARED, f.memfd, 0);
    if (f.mem == MAP_FAILED) {
        f.mem = NULL;
        mv_bench_error("cow floor: mmap: %s", strerror(errno));
        rc = MV_BENCH_FAILED;
        goto out;
    }
    rc = floor_setup(&f);
    if (rc < 0) {
        mv_bench_error("cow floor: setting up the userfaultfds: %s", strerror(-rc));
        rc = MV_BENCH_FAILED;
        goto out;
    }
    rc = pthread_create(&server, NULL, floor_server, &f);
    if (rc) {
        mv_bench_error("cow floor: pthread_create: %s", strerror(rc));
        rc = MV_BENCH_FAILED;
        goto out;
    }
    rc = mv_bench_run_thread(floor_writer, &f);
    (void)!write(f.stop_fd, &one, sizeof(one));
    pthread_join(server, NULL);
    if (rc == MV_BENCH_OK && f.error) {
        mv_bench_error("cow floor: %s failed: %s", f.failed, strerror(-f.error));
        rc = MV_BENCH_FAILED;
    }
    if (rc == MV_BENCH_OK)
        rc = floor_check(&f);
    *total_ns = f.total_ns;
out:
    if (f.mem)
        munmap(f.mem, f.span);
    if (f.stop_fd >= 0)
        close(f.stop_fd);
    if (f.own_uffd >= 0)
        close(f.own_uffd);
    if (f.cow_uffd >= 0)
        close(f.cow_uffd);
    if (f.memfd >= 0)
        close(f.memfd);
    return rc;
}

/*
 * os.c - the one place that makes system calls on memory and userfaultfds.
 *
 * Every mmap, hole punch, page-table zap and userfaultfd ioctl the library
 * issues goes through a function here, and so does every heap allocation
 * (mv__malloc and its kin), so that tests can make any of them fail on
 * demand (mv__os_inject) and see that the caller recovers or reports the
 * error, never corrupts a page.  Functions return 0 or a negative errno,
 * except the mapping call, which returns NULL and sets errno.
 *
 * Injection state is a small table of atomics: arming it is for tests and is
 * not meant to race with itself.  Signal handlers are installed here too:
 * the action each replaced is kept in a record written once and published
 * through an atomic pointer, so a handler reads it without a lock while
 * another thread installs again.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

struct injection {
    atomic_int err;
    atomic_uint skip;
    atomic_uint count;
};

static struct injection injections[MV_OS_OP_COUNT];

void mv__os_inject(enum mv__os_op op, int err, unsigned skip, unsigned count)
{
    struct injection *inj = &injections[op];

    atomic_store(&inj->count, 0);
    atomic_store(&inj->err, err);
    atomic_store(&inj->skip, skip);
    atomic_store(&inj->count, count);
}

/* Returns the negative errno to fail this call with, or 0. */
static int injected(enum mv__os_op op)
{
    struct injection *inj = &injections[op];
    unsigned n;

    if (mv_likely(atomic_load_explicit(&inj->count, memory_order_relaxed) == 0))
        return 0;
    n = atomic_load(&inj->skip);
    while (n > 0) {
        if (atomic_compare_exchange_weak(&inj->skip, &n, n - 1))
            return 0;
    }
    n = atomic_load(&inj->count);
    while (n > 0) {
        if (atomic_compare_exchange_weak(&inj->count, &n, n - 1))
            return -atomic_load(&inj->err);
    }
    return 0;
}

int mv__os_injected(enum mv__os_op op)
{
    return injected(op);
}

int mv__os_memfd(const char *name, uint64_t size)
{
    int fd, err = injected(MV_OS_MEMFD);

    if (err)
        return err;
    fd = memfd_create(name, MFD_CLOEXEC);
    if (fd < 0)
        return -errno;
    if (ftruncate(fd, (off_t)size) < 0) {
        err = -errno;
        close(fd);
        return err;
    }
    return fd;
}

void *mv__os_map_shared(void *fixed, size_t length, int fd, uint64_t offset,
                        int prot)
{
    int err = injected(MV_OS_MMAP);
    void *p;

    if (err) {
        errno = -err;
        return NULL;
    }
    p = mmap(fixed, length, prot,
             MAP_SHARED | MAP_NORESERVE | (fixed ? MAP_FIXED : 0), fd,
             (off_t)offset);
    return p == MAP_FAILED ? NULL : p;
}

void *mv__os_map_private(void *fixed, size_t length, int fd, uint64_t offset)
{
    int err = injected(MV_OS_MMAP);
    void *p;

    if (err) {
        errno = -err;
        return NULL;
    }
    p = mmap(fixed, length, PROT_READ | PROT_WRITE,
             MAP_PRIVATE | MAP_NORESERVE | MAP_FIXED, fd, (off_t)offset);
    return p == MAP_FAILED ? NULL : p;
}

void *mv__os_reserve_aligned(size_t length, size_t align)
{
    int err = injected(MV_OS_MMAP);
    uint8_t *reserve, *aligned;

    if (err) {
        errno = -err;
        return NULL;
    }
    reserve = mmap(NULL, length + align, PROT_NONE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (reserve == MAP_FAILED)
        return NULL;
    aligned = (uint8_t *)(((uintptr_t)reserve + align - 1) & ~(uintptr_t)(align - 1));
    if (aligned > reserve)
        munmap(reserve, (size_t)(aligned - reserve));
    munmap(aligned + length, (size_t)(reserve + align - aligned));
    return aligned;
}

int mv__os_unmap(void *addr, size_t length)
{
    return munmap(addr, length) < 0 ? -errno : 0;
}

int mv__os_punch(int fd, uint64_t offset, uint64_t length)
{
    int err = injected(MV_OS_PUNCH);

    if (err)
        return err;
    if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                  (off_t)offset, (off_t)length) < 0)
        return -errno;
    return 0;
}

enum transfer { TRANSFER_READ, TRANSFER_WRITE, TRANSFER_COPY };

/* pread into p from `from`, pwrite p at `to`, or copy_file_range from `from`
 * to `to` within fd: exactly `length` bytes, across short transfers. */
static int transfer(int fd, enum transfer how, uint8_t *p, uint64_t from, uint64_t to,
                    uint64_t length)
{
    while (length) {
        off_t in = (off_t)from, out = (off_t)to;
        ssize_t n = how == TRANSFER_READ  ? pread(fd, p, length, in)
                  : how == TRANSFER_WRITE ? pwrite(fd, p, length, out)
                  : copy_file_range(fd, &in, fd, &out, length, 0);

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        if (n == 0)
            return -EIO;
        p += how == TRANSFER_COPY ? 0 : n;
        from += (uint64_t)n;
        to += (uint64_t)n;
        length -= (uint64_t)n;
    }
    return 0;
}

int mv__os_read(int fd, void *buf, uint64_t offset, uint64_t length)
{
    int err = injected(MV_OS_READ);

    return err ? err : transfer(fd, TRANSFER_READ, buf, offset, 0, length);
}

int mv__os_write(int fd, const void *buf, uint64_t offset, uint64_t length)
{
    int err = injected(MV_OS_WRITE);

    return err ? err : transfer(fd, TRANSFER_WRITE, (uint8_t *)buf, 0, offset, length);
}

int mv__os_copy(int fd, uint64_t from, uint64_t to, uint64_t length)
{
    int err = injected(MV_OS_COPY);

    return err ? err : transfer(fd, TRANSFER_COPY, NULL, from, to, length);
}

int mv__os_count_mappings(uint64_t *count)
{
    /* Counted a block at a time: 13,280 mappings took 4.8-5.2 ms so, and
     * 7.5-8.1 ms a character at a time through stdio.  What is left is the
     * kernel formatting the lines; the buffer's size does not matter. */
    char buf[16384];
    uint64_t n = 0;
    ssize_t got;
    int fd, err = injected(MV_OS_COUNT_MAPPINGS);

    if (err)
        return err;
    fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    for (;;) {
        got = read(fd, buf, sizeof(buf));
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            break;
        for (const char *p = buf, *end = buf + got; (p = memchr(p, '\n', (size_t)(end - p)));
             p++)
            n++;
    }
    err = got < 0 ? -errno : 0;
    close(fd);
    if (err == 0)
        *count = n;
    return err;
}

int mv__os_zap(void *addr, size_t length)
{
    int err = injected(MV_OS_ZAP);

    if (err)
        return err;
    return madvise(addr, length, MADV_DONTNEED) < 0 ? -errno : 0;
}

void mv__os_prefault_write(void *addr, size_t length)
{
    (void)madvise(addr, length, MADV_POPULATE_WRITE);
}

static _Thread_local unsigned signal_depth;
static atomic_uint_fast64_t allocations_in_signal;

void mv__os_signal_context(bool enter)
{
    signal_depth += enter ? 1 : -1u;
}

uint64_t mv__os_allocations_in_signal(void)
{
    return atomic_load(&allocations_in_signal);
}

/* An allocation that must fail: injected, or in a signal handler.  errno
 * ENOMEM, as malloc's own. */
bool mv__alloc_fails(void)
{
    if (mv_unlikely(signal_depth)) {
        atomic_fetch_add(&allocations_in_signal, 1);
        errno = ENOMEM;
        return true;
    }
    if (mv_likely(injected(MV_OS_ALLOC) == 0))
        return false;
    errno = ENOMEM;
    return true;
}

void *mv__malloc(size_t size)
{
    return mv__alloc_fails() ? NULL : malloc(size);
}

void *mv__calloc(size_t count, size_t size)
{
    return mv__alloc_fails() ? NULL : calloc(count, size);
}

void *mv__realloc(void *old, size_t size)
{
    return mv__alloc_fails() ? NULL : realloc(old, size);
}

void *mv__aligned_alloc(size_t align, size_t size)
{
    return mv__alloc_fails() ? NULL : aligned_alloc(align, size);
}

void *mv__os_table_reserve(size_t length)
{
    void *p;
    int fd;

    if (mv__alloc_fails())
        return NULL;
    fd = mv__os_memfd("memvisor-table", length);
    if (fd < 0) {
        errno = -fd;
        return NULL;
    }
    p = mv__os_map_shared(NULL, length, fd, 0, PROT_READ | PROT_WRITE);
    close(fd);
    if (p)
        (void)madvise(p, length, MADV_DONTFORK);
    return p;
}

int mv__os_thread_start(pthread_t *thread, const pthread_attr_t *attr,
                        void *(*main)(void *), void *arg)
{
    int err = injected(MV_OS_THREAD);

    if (err)
        return err;
    return -pthread_create(thread, attr, main, arg);
}

void *mv__os_table_alloc(size_t length)
{
    void *p;

    if (mv__alloc_fails())
        return NULL;
    p = mmap(NULL, length, PROT_READ | PROT_WRITE,
             MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

int mv__os_uffd_open(int *how)
{
    int fd, dev, err = injected(MV_OS_UFFD_OPEN);

    if (err)
        return err;
    dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
    if (dev >= 0) {
        fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
        close(dev);
        if (fd >= 0) {
            *how = 0;
            return fd;
        }
    }
    fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (fd >= 0) {
        *how = 1;
        return fd;
    }
    if (errno != EPERM)
        return -errno;
    fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
    if (fd < 0)
        return -errno;
    *how = 2;
    return fd;
}

int mv__os_uffd_api(int uffd, uint64_t features, uint64_t *offered,
                    uint64_t *ioctls)
{
    struct uffdio_api api = { .api = UFFD_API, .features = features };

    if (ioctl(uffd, UFFDIO_API, &api) < 0)
        return -errno;
    if (offered)
        *offered = api.features;
    if (ioctls)
        *ioctls = api.ioctls;
    return 0;
}

int mv__os_uffd_register(int uffd, void *addr, size_t length, uint64_t mode,
                         uint64_t *ioctls)
{
    struct uffdio_register reg = {
        .range = { .start = (uintptr_t)addr, .len = length },
        .mode = mode,
    };
    int err = injected(MV_OS_UFFD_REGISTER);

    if (err)
        return err;
    if (ioctl(uffd, UFFDIO_REGISTER, &reg) < 0)
        return -errno;
    if (ioctls)
        *ioctls = reg.ioctls;
    return 0;
}

int mv__os_uffd_unregister(int uffd, void *addr, size_t length)
{
    struct uffdio_range range = { .start = (uintptr_t)addr, .len = length };
    int err = injected(MV_OS_UFFD_UNREGISTER);

    if (err)
        return err;
    return ioctl(uffd, UFFDIO_UNREGISTER, &range) < 0 ? -errno : 0;
}

/*
 * The fill ioctls return EAGAIN when the address space changed under them
 * (a concurrent mmap/munmap): retry from where they stopped.
 */
int mv__os_uffd_zeropage_some(int uffd, void *addr, size_t length, size_t *done)
{
    uintptr_t start = (uintptr_t)addr, end = start + length;
    int err = injected(MV_OS_UFFD_ZEROPAGE), midway = 0;

    *done = 0;
    if (err)
        return err;
    /* As the kernel may: the first half populated, then an error. */
    if (length > MV_PAGE_SIZE && (midway = injected(MV_OS_UFFD_ZEROPAGE_MIDWAY)))
        end = start + (length / 2 & ~(size_t)(MV_PAGE_SIZE - 1));
    while (start < end) {
        struct uffdio_zeropage zp = { .range = { .start = start, .len = end - start } };

        if (ioctl(uffd, UFFDIO_ZEROPAGE, &zp) == 0) {
            start = end;
            break;
        }
        if (errno != EAGAIN) {
            err = -errno;
            break;
        }
        if (zp.zeropage > 0)
            start += (uintptr_t)zp.zeropage;
    }
    *done = start - (uintptr_t)addr;
    return err ? err : midway;
}

int mv__os_uffd_zeropage(int uffd, void *addr, size_t length)
{
    size_t done;

    return mv__os_uffd_zeropage_some(uffd, addr, length, &done);
}

int mv__os_uffd_continue(int uffd, void *addr, size_t length)
{
    uintptr_t start = (uintptr_t)addr, end = start + length;
    int err = injected(MV_OS_UFFD_CONTINUE);

    if (err)
        return err;
    while (start < end) {
        struct uffdio_continue c = { .range = { .start = start, .len = end - start } };

        if (ioctl(uffd, UFFDIO_CONTINUE, &c) == 0)
            return 0;
        if (errno != EAGAIN)
            return -errno;
        if (c.mapped > 0)
            start += (uintptr_t)c.mapped;
    }
    return 0;
}

int mv__os_epoll_wait(int epoll_fd, struct epoll_event *events, int max, int timeout_ms)
{
    int err = injected(MV_OS_EPOLL_WAIT), n;

    if (err)
        return err;
    n = epoll_wait(epoll_fd, events, max, timeout_ms);
    return n < 0 ? -errno : n;
}

int mv__os_uffd_wake(int uffd, void *addr, size_t length)
{
    struct uffdio_range range = { .start = (uintptr_t)addr, .len = length };
    int err = injected(MV_OS_UFFD_WAKE);

    if (err)
        return err;
    return ioctl(uffd, UFFDIO_WAKE, &range) < 0 ? -errno : 0;
}

int mv__os_uffd_writeprotect(int uffd, void *addr, size_t length, bool protect)
{
    struct uffdio_writeprotect wp = {
        .range = { .start = (uintptr_t)addr, .len = length },
        .mode = protect ? UFFDIO_WRITEPROTECT_MODE_WP : 0,
    };
    int err = injected(MV_OS_UFFD_WRITEPROTECT);

    if (err)
        return err;
    while (ioctl(uffd, UFFDIO_WRITEPROTECT, &wp) < 0) {
        if (errno != EAGAIN)
            return -errno;
    }
    return 0;
}

int mv__os_uffd_copy(int uffd, void *addr, const void *src, bool wp)
{
    struct uffdio_copy copy = {
        .dst = (uintptr_t)addr, .src = (uintptr_t)src, .len = MV_PAGE_SIZE,
        .mode = wp ? UFFDIO_COPY_MODE_WP : 0,
    };
    int err = injected(MV_OS_UFFD_COPY);

    if (err)
        return err;
    if (ioctl(uffd, UFFDIO_COPY, &copy) == 0)
        return 0;
    return -errno;
}

long mv__os_pagemap_scan(int fd, struct pm_scan_arg *arg)
{
    long n;
    int err = injected(MV_OS_PAGEMAP_SCAN);

    if (err)
        return err;
    n = ioctl(fd, PAGEMAP_SCAN, arg);
    return n < 0 ? -errno : n;
}

int mv__os_mprotect(void *addr, size_t length, int prot)
{
    int err = injected(MV_OS_MPROTECT);

    if (err) {
        errno = -err;
        return err;
    }
    return mprotect(addr, length, prot) < 0 ? -errno : 0;
}

/* ------------------------------------------------------------------------ */
/* signal handlers                                                          */

/*
 * The action a library handler replaced, as its handler reads it: written
 * whole, then published with a release store, never changed again and
 * never freed (a handler on another thread may be reading an older one;
 * there is one per time the application replaced ours, a handful).
 */
struct saved_action {
    struct sigaction action;
    struct saved_action *next; /* every record of this signal (signal_lock) */
};

static _Atomic(struct saved_action *) saved_actions[NSIG];
static struct saved_action *all_saved[NSIG];
static pthread_mutex_t signal_lock = PTHREAD_MUTEX_INITIALIZER;

int mv__os_signal_install(int sig, void (*handler)(int, siginfo_t *, void *), int flags)
{
    struct sigaction sa, current;
    struct saved_action *saved, *older;
    int err = 0;

    if (sig <= 0 || sig >= NSIG)
        return -EINVAL;
    pthread_mutex_lock(&signal_lock);
    if (sigaction(sig, NULL, &current) < 0) {
        err = -errno;
        goto out;
    }
    if ((current.sa_flags & SA_SIGINFO) && current.sa_sigaction == handler)
        goto out;
    saved = mv__malloc(sizeof(*saved));
    if (!saved) {
        err = -ENOMEM;
        goto out;
    }
    saved->action = current;
    saved->next = all_saved[sig];
    all_saved[sig] = saved;
    /* Published before the handler goes in: it never chains to an action
     * older than the one it replaced. */
    older = atomic_exchange_explicit(&saved_actions[sig], saved, memory_order_acq_rel);
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = handler;
    sa.sa_flags = SA_SIGINFO | flags;
    sigemptyset(&sa.sa_mask);
    err = injected(MV_OS_SIGACTION);
    if (err == 0 && sigaction(sig, &sa, NULL) < 0)
        err = -errno;
    if (err) /* nothing changed: chain on as before */
        atomic_store_explicit(&saved_actions[sig], older, memory_order_release);
out:
    pthread_mutex_unlock(&signal_lock);
    return err;
}

void mv__os_signal_chain(int sig, siginfo_t *info, void *context)
{
    /* A handler installed after ours may chain back to it: the second time
     * round in one thread, take the default action instead of looping. */
    static _Thread_local bool chaining;
    const struct saved_action *saved =
        atomic_load_explicit(&saved_actions[sig], memory_order_acquire);
    const struct sigaction *previous = saved ? &saved->action : NULL;
    struct sigaction fallback;
    int saved_errno = errno;

    if (!chaining && previous && (previous->sa_flags & SA_SIGINFO) &&
        previous->sa_sigaction) {
        chaining = true;
        previous->sa_sigaction(sig, info, context);
        chaining = false;
        errno = saved_errno;
        return;
    }
    if (!chaining && previous && !(previous->sa_flags & SA_SIGINFO) &&
        previous->sa_handler != SIG_DFL && previous->sa_handler != SIG_IGN) {
        chaining = true;
        previous->sa_handler(sig);
        chaining = false;
        errno = saved_errno;
        return;
    }
    /* The default action (also for SIG_IGN: the kernel does not let a
     * synchronous fault be ignored either): the faulting access runs
     * again and takes it. */
    memset(&fallback, 0, sizeof(fallback));
    fallback.sa_handler = SIG_DFL;
    sigaction(sig, &fallback, NULL);
    errno = saved_errno;
}

unsigned mv__os_injection_left(enum mv__os_op op)
{
    return atomic_load(&injections[op].count);
}

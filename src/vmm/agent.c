/*
 * vmm/agent.c - libmemvisor-agent.so, the agent loaded into an unmodified
 * VMM (LD_PRELOAD) so that memvisor serves its guest RAM.
 *
 * It watches the VMM map the machine memory file (inherited as
 * MEMVISOR_RAM_FD; the VMM opens it by path, e.g. /proc/self/fd/N): that
 * mapping is the guest RAM.  Instead of mapping it, the agent opens two
 * userfaultfds and /proc/self/pagemap, hands them to memvisor over the
 * control socket (MEMVISOR_VMM_FD) with a HELLO, and carries out
 * memvisor's MAP requests until memvisor says READY; only then does the
 * VMM's mmap return, so no guest access precedes the registration.  From
 * then on a thread of the agent carries out memvisor's requests (MAP, ZAP,
 * STOP), and the VMM's hole punches in the file (balloon, free page
 * reporting) become DISCARD requests: the agent never lets the VMM touch
 * the file at its own idea of an offset, which would be another domain's.
 * If memvisor goes away the agent kills the VMM: without memvisor its RAM
 * would run on unmanaged.
 *
 * The VMM's other RAM blocks (firmware, option ROMs, ACPI tables) stay in
 * its own anonymous memory, which QEMU marks mergeable for KSM.  QEMU fills
 * them whole at reset (a 2 MiB ACPI table area holds about 128 KiB of
 * tables and zeros after them).  The agent keeps them on small pages and,
 * when memvisor asks (TRIM), gives back their zero pages as KSM would merge
 * them: each block is write-protected with a userfaultfd of its own
 * (a VMM thread writing to it waits meanwhile), its zero pages are
 * dropped, and the protection is lifted, so no write can fall between the
 * check and the drop.
 *
 * Protocol: vmm/handover.h.  Locking: `request_lock` serializes the VMM
 * threads' DISCARD requests; the control socket has one reader at a time
 * (the mmap hook before READY, the agent thread after); `merge_lock` guards
 * the list of the VMM's own blocks, held by a TRIM throughout and by the
 * VMM's munmap.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "vmm/handover.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define AGENT_EXPORT __attribute__((visibility("default")))
#define AGENT_STACK_BYTES (64 * 1024)

static int control_fd = -1;   /* MEMVISOR_VMM_FD */
static int ram_fd = -1;       /* MEMVISOR_RAM_FD: the machine memory file */
static int request_fd = -1;   /* our end of the requests socket */
static dev_t ram_dev;
static ino_t ram_ino;
static bool handed_over;
static uintptr_t ram_base;
static uint64_t ram_length;
static pthread_mutex_t request_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t handover_lock = PTHREAD_MUTEX_INITIALIZER;
static uint32_t request_seq;

static void say(const char *fmt, ...)
{
    char line[256];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(line, sizeof(line) - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if (n > (int)sizeof(line) - 2)
        n = (int)sizeof(line) - 2;
    line[n++] = '\n';
    (void)!write(STDERR_FILENO, "memvisor-agent: ", 16);
    (void)!write(STDERR_FILENO, line, (size_t)n);
}

static int env_fd(const char *name)
{
    const char *v = getenv(name);
    char *end;
    long fd;

    if (!v)
        return -1;
    fd = strtol(v, &end, 10);
    return *v && !*end && fd >= 0 && fd < 65536 ? (int)fd : -1;
}

__attribute__((constructor)) static void agent_init(void)
{
    struct stat st;

    control_fd = env_fd("MEMVISOR_VMM_FD");
    ram_fd = env_fd("MEMVISOR_RAM_FD");
    if (control_fd < 0 || ram_fd < 0)
        return; /* not under memvisor: the agent stays out of the way */
    if (fstat(ram_fd, &st) < 0) {
        say("MEMVISOR_RAM_FD %d: %s; not serving this VMM", ram_fd, strerror(errno));
        control_fd = ram_fd = -1;
        return;
    }
    ram_dev = st.st_dev;
    ram_ino = st.st_ino;
    fcntl(control_fd, F_SETFD, FD_CLOEXEC);
    fcntl(ram_fd, F_SETFD, FD_CLOEXEC);
    /* A child the VMM starts (a helper script) must not take the agent. */
    unsetenv("LD_PRELOAD");
    unsetenv("MEMVISOR_VMM_FD");
    unsetenv("MEMVISOR_RAM_FD");
}

static bool is_ram_file(int fd)
{
    struct stat st;

    return fd >= 0 && ram_fd >= 0 && fstat(fd, &st) == 0 && st.st_dev == ram_dev &&
           st.st_ino == ram_ino;
}

static void msg_init(struct mv_handover_msg *m, uint16_t type)
{
    memset(m, 0, sizeof(*m));
    m->magic = MV_HANDOVER_MAGIC;
    m->version = MV_HANDOVER_VERSION;
    m->type = type;
}

static int recv_msg(int fd, struct mv_handover_msg *m)
{
    ssize_t n;

    do
        n = recv(fd, m, sizeof(*m), 0);
    while (n < 0 && errno == EINTR);
    if (n != (ssize_t)sizeof(*m) || m->magic != MV_HANDOVER_MAGIC ||
        m->version != MV_HANDOVER_VERSION)
        return -1;
    m->text[sizeof(m->text) - 1] = '\0';
    return 0;
}

static void *raw_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    return (void *)syscall(SYS_mmap, addr, len, prot, flags, fd, off);
}

static int64_t trim_own_blocks(void);

/* Carry out one request of memvisor's; false for READY (not a request). */
static int carry_out(struct mv_handover_msg *m)
{
    void *at = (void *)(uintptr_t)m->addr;
    int rc = 0;

    switch (m->type) {
    case MV_HO_MAP: {
        int flags = MAP_FIXED | (m->flags & MV_HO_MAP_PRIVATE ? MAP_PRIVATE : MAP_SHARED);
        void *p = raw_mmap(at, m->length, PROT_READ | PROT_WRITE, flags, ram_fd,
                           (off_t)m->offset);

        rc = p == MAP_FAILED ? -errno : 0;
        break;
    }
    case MV_HO_ZAP:
        rc = madvise(at, m->length, MADV_DONTNEED) < 0 ? -errno : 0;
        break;
    case MV_HO_TRIM: {
        int64_t freed = trim_own_blocks();

        rc = freed < 0 ? (int)freed : 0;
        m->length = freed < 0 ? 0 : (uint64_t)freed;
        break;
    }
    case MV_HO_STOP:
        say("memvisor stops this VMM: %s", m->text);
        kill(getpid(), SIGKILL);
        break;
    default:
        rc = -EOPNOTSUPP;
    }
    m->type |= MV_HO_REPLY;
    m->result = rc;
    return mv_handover_send(control_fd, m, NULL, 0);
}

static void *serve_memvisor(void *arg)
{
    struct mv_handover_msg m;

    (void)arg;
    while (recv_msg(control_fd, &m) == 0)
        if (carry_out(&m) < 0)
            break;
    say("memvisor went away: stopping the VMM, whose RAM nobody serves now");
    kill(getpid(), SIGKILL);
    return NULL;
}

static int open_uffd(void)
{
    int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);

    if (fd < 0 && (errno == EPERM || errno == ENOSYS)) {
        int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);

        if (dev >= 0) {
            fd = ioctl(dev, _IO(0xAA, 0x00), O_CLOEXEC | O_NONBLOCK); /* USERFAULTFD_IOC_NEW */
            close(dev);
        }
    }
    return fd;
}

/* Hand the RAM at [addr, addr + len) over; true when memvisor serves it. */
static bool hand_over(void *addr, size_t len)
{
    int fds[MV_HANDOVER_FDS] = { -1, -1, -1, -1 }, pair[2] = { -1, -1 };
    struct mv_handover_msg m;
    pthread_attr_t attr;
    pthread_t thread;
    bool ok = false, started;

    fds[0] = open_uffd();
    fds[1] = open_uffd();
    fds[2] = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (fds[0] < 0 || fds[1] < 0 || fds[2] < 0 ||
        socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) < 0) {
        say("cannot open userfaultfds or pagemap: %s", strerror(errno));
        goto out;
    }
    fds[3] = pair[1];
    msg_init(&m, MV_HO_HELLO);
    m.addr = (uintptr_t)addr;
    m.length = len;
    m.pid = getpid();
    snprintf(m.text, sizeof(m.text), "%s", program_invocation_short_name);
    if (mv_handover_send(control_fd, &m, fds, MV_HANDOVER_FDS) < 0) {
        say("cannot reach memvisor: %s", strerror(errno));
        goto out;
    }
    for (;;) {
        if (recv_msg(control_fd, &m) < 0) {
            say("memvisor closed the hand-over");
            goto out;
        }
        if (m.type == MV_HO_READY)
            break;
        if (carry_out(&m) < 0)
            goto out;
    }
    if (m.result < 0) {
        say("memvisor refused this VMM's RAM: %s", m.text);
        errno = -m.result;
        goto out;
    }
    request_fd = pair[0];
    pair[0] = -1;
    /* A small stack: the default 8 MiB one can be backed by a 2 MiB huge
     * page at its first touch, memory the VMM would hold for nothing. */
    started = pthread_attr_init(&attr) == 0;
    if (started) {
        started = pthread_attr_setstacksize(&attr, AGENT_STACK_BYTES) == 0 &&
                  pthread_create(&thread, &attr, serve_memvisor, NULL) == 0;
        pthread_attr_destroy(&attr);
    }
    if (!started) {
        say("cannot start the agent thread; stopping the VMM");
        kill(getpid(), SIGKILL);
    } else {
        pthread_detach(thread);
    }
    ok = true;
out:
    /* memvisor holds its own copies now: if it dies, they go with it. */
    for (int i = 0; i < MV_HANDOVER_FDS; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    if (pair[0] >= 0)
        close(pair[0]);
    return ok;
}

static void *map_ram(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    bool fixed = flags & MAP_FIXED;
    void *at = addr;

    if (off != 0 || !(flags & MAP_SHARED) || prot != (PROT_READ | PROT_WRITE)) {
        say("the VMM maps the RAM file at offset %lld, flags %#x, prot %#x: only a "
            "whole shared read-write mapping can be served", (long long)off, flags, prot);
        errno = EINVAL;
        return MAP_FAILED;
    }
    (void)fd;
    pthread_mutex_lock(&handover_lock);
    if (handed_over) {
        pthread_mutex_unlock(&handover_lock);
        say("the VMM maps its RAM a second time; memvisor serves one mapping");
        errno = EBUSY;
        return MAP_FAILED;
    }
    if (!fixed) {
        at = raw_mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (at == MAP_FAILED) {
            pthread_mutex_unlock(&handover_lock);
            return MAP_FAILED;
        }
    }
    if (!hand_over(at, len)) {
        int err = errno ? errno : EIO;

        if (!fixed)
            munmap(at, len);
        pthread_mutex_unlock(&handover_lock);
        errno = err;
        return MAP_FAILED;
    }
    handed_over = true;
    ram_base = (uintptr_t)at;
    ram_length = len;
    pthread_mutex_unlock(&handover_lock);
    return at;
}

AGENT_EXPORT void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    if (control_fd >= 0 && is_ram_file(fd))
        return map_ram(addr, len, prot, flags, fd, off);
    return raw_mmap(addr, len, prot, flags, fd, off);
}

AGENT_EXPORT void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    return mmap64(addr, len, prot, flags, fd, off);
}

/* The VMM gives [off, off + len) of its RAM back: memvisor frees it. */
static int discard(off_t off, off_t len)
{
    struct mv_handover_msg m;
    int rc = -EIO;

    if (!handed_over || off < 0 || len < 0 || (uint64_t)off + (uint64_t)len > ram_length)
        return -EINVAL;
    pthread_mutex_lock(&request_lock);
    msg_init(&m, MV_HO_DISCARD);
    m.seq = ++request_seq;
    m.offset = (uint64_t)off;
    m.length = (uint64_t)len;
    if (mv_handover_send(request_fd, &m, NULL, 0) == 0 && recv_msg(request_fd, &m) == 0 &&
        m.type == (MV_HO_DISCARD | MV_HO_REPLY))
        rc = m.result;
    pthread_mutex_unlock(&request_lock);
    if (rc < 0 && rc != -EIO)
        say("memvisor did not discard %#llx+%#llx: %s", (long long)off, (long long)len, m.text);
    return rc;
}

AGENT_EXPORT int fallocate64(int fd, int mode, off_t off, off_t len)
{
    if (control_fd >= 0 && is_ram_file(fd)) {
        int rc;

        if (!(mode & FALLOC_FL_PUNCH_HOLE)) {
            errno = EOPNOTSUPP; /* the file is memvisor's: nothing to allocate */
            return -1;
        }
        rc = discard(off, len);
        if (rc < 0) {
            errno = -rc;
            return -1;
        }
        return 0;
    }
    return (int)syscall(SYS_fallocate, fd, mode, off, len);
}

AGENT_EXPORT int fallocate(int fd, int mode, off_t off, off_t len)
{
    return fallocate64(fd, mode, off, len);
}

/* The machine file is sized by memvisor; the VMM must never change it. */
AGENT_EXPORT int ftruncate64(int fd, off_t len)
{
    if (control_fd >= 0 && is_ram_file(fd)) {
        errno = EPERM;
        return -1;
    }
    return (int)syscall(SYS_ftruncate, fd, len);
}

AGENT_EXPORT int ftruncate(int fd, off_t len)
{
    return ftruncate64(fd, len);
}

/* Memory the VMM would have KSM merge, outside the guest RAM memvisor
 * serves, stays on small pages (see the top of this file).  QEMU marks a
 * RAM block mergeable before it asks huge pages for it, so the ranges marked
 * mergeable are remembered until unmapped, and a later MADV_HUGEPAGE inside
 * one of them is not passed on.  Locking: `merge_lock`. */
#define AGENT_MERGE_RANGES 64

static struct { uintptr_t start, end; } merge_ranges[AGENT_MERGE_RANGES];
static pthread_mutex_t merge_lock = PTHREAD_MUTEX_INITIALIZER;

static bool in_guest_ram(uintptr_t start, size_t len)
{
    return handed_over && start < ram_base + ram_length && start + len > ram_base;
}

static void remember_mergeable(uintptr_t start, size_t len)
{
    pthread_mutex_lock(&merge_lock);
    for (int i = 0; i < AGENT_MERGE_RANGES; i++)
        if (merge_ranges[i].end == 0) {
            merge_ranges[i].start = start;
            merge_ranges[i].end = start + len;
            break;
        }
    pthread_mutex_unlock(&merge_lock);
}

static bool within_mergeable(uintptr_t start, size_t len)
{
    bool found = false;

    pthread_mutex_lock(&merge_lock);
    for (int i = 0; i < AGENT_MERGE_RANGES && !found; i++)
        found = merge_ranges[i].end != 0 && start >= merge_ranges[i].start &&
                start + len <= merge_ranges[i].end;
    pthread_mutex_unlock(&merge_lock);
    return found;
}

static void forget_mergeable_locked(uintptr_t start, size_t len)
{
    for (int i = 0; i < AGENT_MERGE_RANGES; i++)
        if (merge_ranges[i].end != 0 && start < merge_ranges[i].end &&
            start + len > merge_ranges[i].start)
            merge_ranges[i].start = merge_ranges[i].end = 0;
}

AGENT_EXPORT int madvise(void *addr, size_t len, int advice)
{
    uintptr_t start = (uintptr_t)addr;
    bool own_block = control_fd >= 0 && !in_guest_ram(start, len);
    int rc;

    if (own_block && advice == MADV_HUGEPAGE && within_mergeable(start, len))
        advice = MADV_NOHUGEPAGE;
    rc = (int)syscall(SYS_madvise, addr, len, advice);
    if (rc == 0 && own_block && advice == MADV_MERGEABLE) {
        int saved = errno;

        remember_mergeable(start, len);
        (void)syscall(SYS_madvise, addr, len, MADV_NOHUGEPAGE);
        errno = saved;
    }
    return rc;
}

AGENT_EXPORT int munmap(void *addr, size_t len)
{
    int rc;

    if (control_fd < 0)
        return (int)syscall(SYS_munmap, addr, len);
    /* Under the lock, so that a TRIM never acts on an address reused. */
    pthread_mutex_lock(&merge_lock);
    forget_mergeable_locked((uintptr_t)addr, len);
    rc = (int)syscall(SYS_munmap, addr, len);
    pthread_mutex_unlock(&merge_lock);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* TRIM: the zero pages of the VMM's own blocks                             */

static int trim_uffd = -1;     /* registered over the blocks, write-protect */
/* MEMVISOR_AGENT_TRIM_PAUSE_US: a pause between a zero page's check and its
 * drop, so that tests can show a store in between is not lost. */
static unsigned trim_pause_us;

static bool page_is_zero(const uint8_t *page)
{
    const uint64_t *w = (const uint64_t *)page;

    for (size_t i = 0; i < 4096 / 8; i++)
        if (w[i])
            return false;
    return true;
}

static int write_protect(uintptr_t start, uintptr_t end, bool on)
{
    struct uffdio_writeprotect wp = {
        .range = { .start = start, .len = end - start },
        .mode = on ? UFFDIO_WRITEPROTECT_MODE_WP : 0,
    };

    return ioctl(trim_uffd, UFFDIO_WRITEPROTECT, &wp) < 0 ? -errno : 0;
}

/* One block: protect, drop the zero pages the VMM wrote (present and its
 * own, pagemap bits 63 and 56), unprotect.  Returns pages dropped. */
static int64_t trim_block(int pagemap, uintptr_t start, uintptr_t end)
{
    struct uffdio_register reg = {
        .range = { .start = start, .len = end - start },
        .mode = UFFDIO_REGISTER_MODE_WP,
    };
    int64_t freed = 0;
    int rc;

    if (ioctl(trim_uffd, UFFDIO_REGISTER, &reg) < 0 && errno != EBUSY)
        return -errno;
    if ((rc = write_protect(start, end, true)) < 0)
        return rc;
    for (uintptr_t at = start; at < end; at += 4096) {
        uint64_t entry = 0;

        if (pread(pagemap, &entry, sizeof(entry), (off_t)(at / 4096 * 8)) != sizeof(entry))
            break;
        if (!(entry >> 63 & 1) || !(entry >> 56 & 1) || !page_is_zero((const uint8_t *)at))
            continue;
        if (trim_pause_us)
            usleep(trim_pause_us); /* tests: a store racing the drop waits */
        if (syscall(SYS_madvise, at, 4096, MADV_DONTNEED) == 0)
            freed++;
    }
    rc = write_protect(start, end, false);
    return rc < 0 ? rc : freed;
}

static int64_t trim_own_blocks(void)
{
    int64_t freed = 0;
    int pagemap;

    if (trim_uffd < 0) {
        struct uffdio_api api = { .api = UFFD_API };
        int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);

        if (fd < 0)
            return -errno;
        if (ioctl(fd, UFFDIO_API, &api) < 0) {
            int err = errno;

            close(fd);
            return -err;
        }
        trim_uffd = fd;
    }
    if (getenv("MEMVISOR_AGENT_TRIM_PAUSE_US"))
        trim_pause_us = (unsigned)strtoul(getenv("MEMVISOR_AGENT_TRIM_PAUSE_US"), NULL, 10);
    pagemap = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (pagemap < 0)
        return -errno;
    /* Held throughout: the VMM cannot unmap a block (munmap waits for the
     * lock) and map something else there while its pages are dropped. */
    pthread_mutex_lock(&merge_lock);
    for (int i = 0; i < AGENT_MERGE_RANGES && freed >= 0; i++) {
        int64_t got;

        if (!merge_ranges[i].end)
            continue;
        got = trim_block(pagemap, merge_ranges[i].start, merge_ranges[i].end);
        freed = got < 0 ? got : freed + got;
    }
    pthread_mutex_unlock(&merge_lock);
    close(pagemap);
    return freed;
}

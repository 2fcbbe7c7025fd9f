/*
 * vmm/firecracker.c - serving a VMM's snapshot memory through the
 * userfaultfd it hands over: Firecracker's page-fault-handler hand-over
 * (a JSON list of regions and the userfaultfd, over a Unix socket, on
 * snapshot restore).  The daemon receives the hand-over; this file serves
 * it (mv_fc_serve).
 *
 * Here the guest's memory is the VMM's own anonymous memory, not machine
 * frames: memvisor cannot map or zap in it, only fill its missing pages
 * (UFFDIO_COPY), write-protect them (if the VMM registered them for it)
 * and hear what the VMM removes (UFFD_EVENT_REMOVE, its balloon).  So a
 * VM served here is not a domain of the p2m: it has its own record, with
 *   - populate-on-demand: a missing page is filled on first touch, from the
 *     snapshot's memory file (lazy loading) or with zeros, within a target,
 *     with the domains' policies when the target or the host budget is
 *     full (wait for room, or crash: the VMM is killed);
 *   - balloon removals: removed pages are uncharged and read zero when
 *     touched again (never the snapshot's bytes, which the guest gave up);
 *   - dirty logging, synchronous only (the VMM chose the userfaultfd's
 *     features): every page is write-protected, the first write to it
 *     traps here, is logged and let through.
 * Every filled page is charged to the host budget; the mechanism's
 * host_frames hook reports them, so the host audit counts them.
 *
 * Invariants (under vm->lock): populated == #pages with state FILLED;
 * populated <= target unless the target was lowered since; the pages
 * charged for this VM == populated.
 * Locking: vm->lock guards a VM's state; the host's VM list has its own
 * lock (list_lock), never held while taking a VM's.  A VM's thread is the
 * only reader of its userfaultfd.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <unistd.h>

enum page_state { PAGE_MISSING = 0, PAGE_FILLED = 1, PAGE_REMOVED = 2 };

struct fc_region {
    uint64_t base;       /* base_host_virt_addr */
    uint64_t size;
    uint64_t offset;     /* into the snapshot's memory file */
    uint64_t first_page; /* index of its first page in vm->state */
};

struct mv_fc {
    mv_host *host;
    struct mv_fc_config config;
    int uffd, pidfd, mem_fd, kick_fd;
    int pid;
    struct fc_region *regions;
    size_t region_count;
    uint64_t pages;            /* all regions' pages */

    pthread_mutex_t lock;      /* everything below */
    pthread_cond_t room;       /* the target grew, or stopping */
    uint8_t *state;            /* enum page_state per page */
    uint64_t *dirty;           /* the dirty log's bitmap, NULL when off */
    bool logging;
    enum mv_fc_state vm_state;
    char why[128];
    struct mv_fc_info info;    /* counters */
    bool stopping;
    pthread_t thread;
    bool thread_started;
    struct mv_fc *next;
};

struct fc_host {
    pthread_mutex_t list_lock;
    struct mv_fc *vms;
    _Atomic uint64_t populated; /* all VMs' charged pages */
};

extern const struct mv__mechanism mv__fc_mechanism;

static struct fc_host *fc_host_of(mv_host *h)
{
    for (size_t i = 0; i < mv__mechanism_count; i++)
        if (mv__mechanisms[i] == &mv__fc_mechanism)
            return h->ext[i];
    return NULL;
}

/* The page index of a VMM address, or UINT64_MAX outside every region. */
static uint64_t page_of(const struct mv_fc *vm, uint64_t addr, const struct fc_region **in)
{
    for (size_t i = 0; i < vm->region_count; i++) {
        const struct fc_region *r = &vm->regions[i];

        if (addr >= r->base && addr - r->base < r->size) {
            *in = r;
            return r->first_page + ((addr - r->base) >> MV_PAGE_SHIFT);
        }
    }
    return UINT64_MAX;
}

static void kill_vmm(struct mv_fc *vm, const char *fmt, ...) MV_PRINTF(2, 3);

/* Crash (lock held): the VMM is killed; its faults would wait forever. */
static void kill_vmm(struct mv_fc *vm, const char *fmt, ...)
{
    va_list ap;

    if (vm->vm_state != MV_FC_RUNNING)
        return;
    va_start(ap, fmt);
    vsnprintf(vm->why, sizeof(vm->why), fmt, ap);
    va_end(ap);
    vm->vm_state = MV_FC_CRASHED;
    mv__log(vm->host, MV_LOG_ERROR, "%s crashed: %s", vm->config.name, vm->why);
    if (vm->pidfd >= 0)
        syscall(SYS_pidfd_send_signal, vm->pidfd, SIGKILL, NULL, 0);
}

/* Room for one more page (lock held): within the target and charged to
 * the host budget, waiting under MV_POD_WAIT.  false: the VM crashed or
 * is stopping. */
static bool claim_page(struct mv_fc *vm)
{
    struct fc_host *fh = fc_host_of(vm->host);
    uint64_t deadline = mv__now_ns() + (uint64_t)vm->config.wait_timeout_ms * 1000000ull;
    bool waited = false;

    for (;;) {
        if (vm->stopping || vm->vm_state != MV_FC_RUNNING)
            return false;
        if ((!vm->info.target_pages || vm->info.populated_pages < vm->info.target_pages) &&
            (mv__machine_charge(&vm->host->machine, 1) ||
             /* memory a destroyed domain gave back, once scrubbed */
             (mv__scrub_wait(&vm->host->machine, MV__RELEASE_SCRUB) &&
              mv__machine_charge(&vm->host->machine, 1)))) {
            atomic_fetch_add(&fh->populated, 1);
            return true;
        }
        if (vm->config.pod_policy == MV_POD_CRASH) {
            kill_vmm(vm, "no memory for a page (target %llu pages, %s)",
                     (unsigned long long)vm->info.target_pages,
                     vm->info.populated_pages < vm->info.target_pages ? "host budget full"
                                                                      : "target reached");
            return false;
        }
        if (!waited)
            vm->info.pod_waits++;
        waited = true;
        if (mv__now_ns() >= deadline) {
            kill_vmm(vm, "waited %u ms for memory", vm->config.wait_timeout_ms);
            return false;
        }
        /* Woken by a larger target, by destroy, or for a periodic retry of
         * the host budget (freed elsewhere without telling this VM).  Not
         * by this VM's removals: this thread reads them, after this fault. */
        struct timespec ts;

        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 10 * 1000000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&vm->room, &vm->lock, &ts);
    }
}

static void unclaim_page(struct mv_fc *vm)
{
    mv__machine_uncharge(&vm->host->machine, 1);
    atomic_fetch_sub(&fc_host_of(vm->host)->populated, 1);
}

/* A missing page at addr (lock held): fill it. */
static void serve_missing(struct mv_fc *vm, uint64_t addr)
{
    static __thread uint8_t page[MV_PAGE_SIZE] __attribute__((aligned(MV_PAGE_SIZE)));
    const struct fc_region *r = NULL;
    uint64_t p = page_of(vm, addr, &r), at = addr & ~(uint64_t)(MV_PAGE_SIZE - 1);
    bool from_file;
    int rc;

    if (p == UINT64_MAX) {
        kill_vmm(vm, "fault at %#llx outside the regions it handed over",
                 (unsigned long long)addr);
        return;
    }
    if (vm->state[p] == PAGE_FILLED) {
        (void)mv__os_uffd_wake(vm->uffd, (void *)(uintptr_t)at, MV_PAGE_SIZE);
        return; /* raced: filled meanwhile */
    }
    if (!claim_page(vm))
        return;
    from_file = vm->mem_fd >= 0 && vm->state[p] != PAGE_REMOVED;
    if (from_file) {
        rc = mv__os_read(vm->mem_fd, page, r->offset + (at - r->base), MV_PAGE_SIZE);
        if (rc < 0) {
            unclaim_page(vm);
            kill_vmm(vm, "cannot read the snapshot's memory file at %#llx: %s",
                     (unsigned long long)(r->offset + (at - r->base)), mv_strerror(rc));
            return;
        }
    } else {
        memset(page, 0, sizeof(page));
    }
    do
        rc = mv__os_uffd_copy(vm->uffd, (void *)(uintptr_t)at, page, vm->logging);
    while (rc == -EAGAIN && !vm->stopping);
    if (rc == -EEXIST) {
        /* The VMM mapped it itself meanwhile: it holds memory all the same. */
        vm->state[p] = PAGE_FILLED;
        vm->info.populated_pages++;
        return;
    }
    if (rc < 0) {
        unclaim_page(vm);
        kill_vmm(vm, "cannot fill the page at %#llx: %s", (unsigned long long)at,
                 mv_strerror(rc));
        return;
    }
    vm->state[p] = PAGE_FILLED;
    vm->info.populated_pages++;
    if (from_file)
        vm->info.loaded_pages++;
    else
        vm->info.zero_filled_pages++;
    if (vm->dirty)
        vm->dirty[p / 64] |= 1ull << (p % 64);
}

/* A write to a write-protected page (lock held): log it, let it through. */
static void serve_write(struct mv_fc *vm, uint64_t addr)
{
    const struct fc_region *r = NULL;
    uint64_t p = page_of(vm, addr, &r), at = addr & ~(uint64_t)(MV_PAGE_SIZE - 1);
    int rc;

    if (p == UINT64_MAX) {
        kill_vmm(vm, "write fault at %#llx outside its regions", (unsigned long long)addr);
        return;
    }
    vm->info.write_faults++;
    if (vm->dirty)
        vm->dirty[p / 64] |= 1ull << (p % 64);
    rc = mv__os_uffd_writeprotect(vm->uffd, (void *)(uintptr_t)at, MV_PAGE_SIZE, false);
    if (rc < 0)
        kill_vmm(vm, "cannot let a write through at %#llx: %s", (unsigned long long)at,
                 mv_strerror(rc));
}

/* The VMM removed [start, end) (its balloon): uncharge what was filled. */
static void serve_remove(struct mv_fc *vm, uint64_t start, uint64_t end)
{
    for (uint64_t a = start & ~(uint64_t)(MV_PAGE_SIZE - 1); a < end; a += MV_PAGE_SIZE) {
        const struct fc_region *r = NULL;
        uint64_t p = page_of(vm, a, &r);

        if (p == UINT64_MAX)
            continue;
        if (vm->state[p] == PAGE_FILLED) {
            vm->info.populated_pages--;
            unclaim_page(vm);
        }
        if (vm->state[p] != PAGE_REMOVED)
            vm->info.removed_pages++;
        vm->state[p] = PAGE_REMOVED;
        if (vm->dirty)
            vm->dirty[p / 64] |= 1ull << (p % 64); /* its bytes changed: now zero */
    }
    pthread_cond_broadcast(&vm->room);
}

static void *serve_vm(void *arg)
{
    struct mv_fc *vm = arg;

    for (;;) {
        /* The pidfd polls readable once the VMM has exited. */
        struct pollfd fds[3] = { { .fd = vm->uffd, .events = POLLIN },
                                 { .fd = vm->kick_fd, .events = POLLIN },
                                 { .fd = vm->pidfd, .events = POLLIN } };
        struct uffd_msg msgs[16];
        ssize_t n;

        if (poll(fds, vm->pidfd >= 0 ? 3 : 2, -1) < 0 && errno != EINTR)
            break;
        pthread_mutex_lock(&vm->lock);
        if (vm->stopping) {
            pthread_mutex_unlock(&vm->lock);
            break;
        }
        pthread_mutex_unlock(&vm->lock);
        if (fds[1].revents & POLLIN) {
            uint64_t v;

            (void)!read(vm->kick_fd, &v, sizeof(v));
        }
        if ((fds[0].revents & (POLLHUP | POLLERR)) ||
            (vm->pidfd >= 0 && (fds[2].revents & POLLIN))) {
            pthread_mutex_lock(&vm->lock);
            if (vm->vm_state == MV_FC_RUNNING) {
                vm->vm_state = MV_FC_EXITED;
                snprintf(vm->why, sizeof(vm->why), "VMM process %d exited", vm->pid);
            }
            pthread_mutex_unlock(&vm->lock);
            break;
        }
        n = read(vm->uffd, msgs, sizeof(msgs));
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR)
                continue;
            break;
        }
        pthread_mutex_lock(&vm->lock);
        for (ssize_t i = 0; i < n / (ssize_t)sizeof(msgs[0]); i++) {
            struct uffd_msg *m = &msgs[i];

            if (m->event == UFFD_EVENT_PAGEFAULT) {
                vm->info.faults++;
                if (m->arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WP)
                    serve_write(vm, m->arg.pagefault.address);
                else
                    serve_missing(vm, m->arg.pagefault.address);
            } else if (m->event == UFFD_EVENT_REMOVE) {
                serve_remove(vm, m->arg.remove.start, m->arg.remove.end);
            }
        }
        pthread_mutex_unlock(&vm->lock);
    }
    /* The VMM is gone (or this VM is stopped): its memory went with it. */
    pthread_mutex_lock(&vm->lock);
    for (uint64_t p = 0; p < vm->pages; p++) {
        if (vm->state[p] == PAGE_FILLED) {
            unclaim_page(vm);
            vm->state[p] = PAGE_MISSING;
        }
    }
    vm->info.populated_pages = 0;
    pthread_mutex_unlock(&vm->lock);
    mv__fault_kick(vm->host);
    return NULL;
}

static void fc_free(struct mv_fc *vm)
{
    if (vm->uffd >= 0)
        close(vm->uffd);
    if (vm->pidfd >= 0)
        close(vm->pidfd);
    if (vm->mem_fd >= 0)
        close(vm->mem_fd);
    if (vm->kick_fd >= 0)
        close(vm->kick_fd);
    free(vm->regions);
    free(vm->state);
    free(vm->dirty);
    pthread_cond_destroy(&vm->room);
    pthread_mutex_destroy(&vm->lock);
    free(vm);
}

static int check_regions(const struct mv_fc_region *regions, size_t count, uint64_t *pages)
{
    *pages = 0;
    if (!regions || count == 0)
        return mv__fail(-EINVAL, "the hand-over names no memory region");
    for (size_t i = 0; i < count; i++) {
        const struct mv_fc_region *r = &regions[i];

        if (r->page_size != MV_PAGE_SIZE)
            return mv__fail(-EINVAL, "region %zu has %llu-byte pages: only %u-byte "
                            "pages are served", i, (unsigned long long)r->page_size,
                            MV_PAGE_SIZE);
        if (!r->size || r->size % MV_PAGE_SIZE || r->base % MV_PAGE_SIZE ||
            r->offset % MV_PAGE_SIZE || r->base + r->size < r->base)
            return mv__fail(-EINVAL, "region %zu (%#llx+%#llx at offset %#llx) is not "
                            "page-aligned or is empty", i, (unsigned long long)r->base,
                            (unsigned long long)r->size, (unsigned long long)r->offset);
        for (size_t j = 0; j < i; j++)
            if (r->base < regions[j].base + regions[j].size &&
                regions[j].base < r->base + r->size)
                return mv__fail(-EINVAL, "regions %zu and %zu overlap", j, i);
        *pages += r->size >> MV_PAGE_SHIFT;
    }
    return 0;
}

int mv_fc_serve(mv_host *host, const struct mv_fc_config *config, int uffd, int pid,
                const struct mv_fc_region *regions, size_t count, mv_fc **out)
{
    struct fc_host *fh = host ? fc_host_of(host) : NULL;
    struct mv_fc *vm = NULL;
    uint64_t pages = 0;
    int rc;

    mv__clear_error();
    rc = !host || !config || !out || uffd < 0
             ? mv__fail(-EINVAL, "host, config, out and the userfaultfd are needed")
         : !fh ? mv__fail(-ENOSYS, "this host serves no hand-over")
         : strnlen(config->name, MV_NAME_MAX) == 0 ||
                   strnlen(config->name, MV_NAME_MAX) == MV_NAME_MAX
             ? mv__fail(-EINVAL, "the VM's name is empty or too long")
         : config->pod_policy != MV_POD_WAIT && config->pod_policy != MV_POD_CRASH
             ? mv__fail(-EINVAL, "unknown PoD policy %d", (int)config->pod_policy)
         : check_regions(regions, count, &pages);
    if (rc == 0 && !(vm = mv__calloc(1, sizeof(*vm))))
        rc = mv__fail(-ENOMEM, "no memory for a VM");
    if (rc < 0) {
        if (uffd >= 0)
            close(uffd);
        return rc;
    }
    vm->host = host;
    vm->config = *config;
    vm->uffd = uffd;
    vm->pid = pid;
    vm->mem_fd = vm->kick_fd = -1;
    vm->pidfd = pid > 0 ? (int)syscall(SYS_pidfd_open, pid, 0) : -1;
    vm->pages = pages;
    vm->info.target_pages = config->target_bytes >> MV_PAGE_SHIFT;
    vm->info.pages = pages;
    vm->info.pid = pid;
    if (!vm->config.wait_timeout_ms)
        vm->config.wait_timeout_ms = MV_WAIT_TIMEOUT_DEFAULT_MS;
    pthread_mutex_init(&vm->lock, NULL);
    pthread_cond_init(&vm->room, NULL); /* CLOCK_REALTIME, as claim_page waits */
    vm->regions = mv__calloc(count, sizeof(*vm->regions));
    vm->state = mv__calloc(pages, 1);
    vm->kick_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (!vm->regions || !vm->state)
        rc = mv__fail(-ENOMEM, "no memory for %llu pages' state", (unsigned long long)pages);
    else if (vm->kick_fd < 0)
        rc = mv__fail(-errno, "eventfd: %s", mv_strerror(-errno));
    else if (pid > 0 && vm->pidfd < 0)
        rc = mv__fail(-errno, "VMM process %d: %s", pid, mv_strerror(-errno));
    if (rc == 0 && config->mem_file) {
        vm->mem_fd = open(config->mem_file, O_RDONLY | O_CLOEXEC);
        if (vm->mem_fd < 0)
            rc = mv__fail(-errno, "cannot open the snapshot's memory file %s: %s",
                          config->mem_file, mv_strerror(-errno));
    }
    for (size_t i = 0, first = 0; rc == 0 && i < count; i++) {
        vm->regions[i] = (struct fc_region){ regions[i].base, regions[i].size,
                                             regions[i].offset, first };
        first += regions[i].size >> MV_PAGE_SHIFT;
    }
    vm->region_count = count;
    if (rc == 0) {
        rc = mv__os_thread_start(&vm->thread, NULL, serve_vm, vm);
        if (rc < 0)
            mv__fail(rc, "cannot start the VM's fault thread");
        vm->thread_started = rc == 0;
    }
    if (rc < 0) {
        fc_free(vm);
        return rc;
    }
    pthread_mutex_lock(&fh->list_lock);
    vm->next = fh->vms;
    fh->vms = vm;
    pthread_mutex_unlock(&fh->list_lock);
    mv__log(host, MV_LOG_INFO, "%s: serving VMM %d's %llu pages in %zu regions%s%s",
            config->name, pid, (unsigned long long)pages, count,
            config->mem_file ? " from " : "", config->mem_file ? config->mem_file : "");
    *out = vm;
    return 0;
}

int mv_fc_info(mv_fc *vm, struct mv_fc_info *out)
{
    mv__clear_error();
    if (!vm || !out)
        return mv__fail(-EINVAL, "vm and out must not be NULL");
    pthread_mutex_lock(&vm->lock);
    *out = vm->info;
    out->state = vm->vm_state;
    out->logging = vm->logging;
    snprintf(out->reason, sizeof(out->reason), "%s", vm->why);
    pthread_mutex_unlock(&vm->lock);
    return 0;
}

int mv_fc_set_target(mv_fc *vm, uint64_t target_bytes)
{
    mv__clear_error();
    if (!vm)
        return mv__fail(-EINVAL, "vm must not be NULL");
    if (target_bytes % MV_PAGE_SIZE)
        return mv__fail(-EINVAL, "target %llu is not a multiple of %u",
                        (unsigned long long)target_bytes, MV_PAGE_SIZE);
    pthread_mutex_lock(&vm->lock);
    vm->info.target_pages = target_bytes >> MV_PAGE_SHIFT;
    pthread_cond_broadcast(&vm->room);
    pthread_mutex_unlock(&vm->lock);
    return 0;
}

/* Write-protect every filled page, or let them all be written again. */
static int protect_filled(struct mv_fc *vm, bool protect)
{
    for (size_t i = 0; i < vm->region_count; i++) {
        const struct fc_region *r = &vm->regions[i];

        for (uint64_t p = 0; p < r->size >> MV_PAGE_SHIFT;) {
            uint64_t run = p;
            int rc;

            if (vm->state[r->first_page + p] != PAGE_FILLED) {
                p++;
                continue;
            }
            while (run < r->size >> MV_PAGE_SHIFT && vm->state[r->first_page + run] == PAGE_FILLED)
                run++;
            rc = mv__os_uffd_writeprotect(vm->uffd, (void *)(uintptr_t)(r->base + (p << MV_PAGE_SHIFT)),
                                          (run - p) << MV_PAGE_SHIFT, protect);
            if (rc < 0)
                return mv__fail(rc, "%s: cannot %s its pages (did the VMM register "
                                "them for write protection?): %s", vm->config.name,
                                protect ? "write-protect" : "unprotect", mv_strerror(rc));
            p = run;
        }
    }
    return 0;
}

int mv_fc_logdirty_enable(mv_fc *vm)
{
    int rc = 0;

    mv__clear_error();
    if (!vm)
        return mv__fail(-EINVAL, "vm must not be NULL");
    pthread_mutex_lock(&vm->lock);
    if (vm->logging) {
        rc = mv__fail(-EALREADY, "%s logs dirty pages already", vm->config.name);
    } else if (vm->vm_state != MV_FC_RUNNING) {
        rc = mv__fail(-EPERM, "%s is not running: %s", vm->config.name, vm->why);
    } else if (!(vm->dirty = mv__calloc((vm->pages + 63) / 64, 8))) {
        rc = mv__fail(-ENOMEM, "no memory for the dirty log");
    } else {
        /* From here on pages are filled write-protected, and the filled
         * ones are protected now. */
        vm->logging = true;
        rc = protect_filled(vm, true);
        if (rc < 0) {
            (void)protect_filled(vm, false);
            vm->logging = false;
            free(vm->dirty);
            vm->dirty = NULL;
        }
    }
    pthread_mutex_unlock(&vm->lock);
    return rc;
}

int64_t mv_fc_logdirty_clean(mv_fc *vm, uint64_t *bitmap, size_t words)
{
    int64_t dirty = 0;
    int rc = 0;

    mv__clear_error();
    if (!vm || (!bitmap && words))
        return mv__fail(-EINVAL, "vm must not be NULL, nor bitmap when words > 0");
    pthread_mutex_lock(&vm->lock);
    if (!vm->logging) {
        pthread_mutex_unlock(&vm->lock);
        return mv__fail(-EINVAL, "%s does not log dirty pages", vm->config.name);
    }
    if (words < (vm->pages + 63) / 64) {
        pthread_mutex_unlock(&vm->lock);
        return mv__fail(-ENOBUFS, "%s has %llu pages: the bitmap needs %llu words",
                        vm->config.name, (unsigned long long)vm->pages,
                        (unsigned long long)((vm->pages + 63) / 64));
    }
    /* Protect what was written again before handing it out: a write after
     * this call is in the next one. */
    for (uint64_t w = 0; rc == 0 && w < (vm->pages + 63) / 64; w++) {
        bitmap[w] = vm->dirty[w];
        vm->dirty[w] = 0;
        dirty += __builtin_popcountll(bitmap[w]);
    }
    for (size_t i = 0; rc == 0 && i < vm->region_count; i++) {
        const struct fc_region *r = &vm->regions[i];

        for (uint64_t p = 0; rc == 0 && p < r->size >> MV_PAGE_SHIFT; p++) {
            uint64_t g = r->first_page + p;

            if ((bitmap[g / 64] >> (g % 64) & 1) && vm->state[g] == PAGE_FILLED)
                rc = mv__os_uffd_writeprotect(vm->uffd,
                                              (void *)(uintptr_t)(r->base + (p << MV_PAGE_SHIFT)),
                                              MV_PAGE_SIZE, true);
        }
    }
    if (rc < 0) {
        /* Nothing is lost: the pages stay in the log for the next call. */
        for (uint64_t w = 0; w < (vm->pages + 63) / 64; w++)
            vm->dirty[w] |= bitmap[w];
        pthread_mutex_unlock(&vm->lock);
        return mv__fail(rc, "%s: cannot write-protect its written pages again: %s",
                        vm->config.name, mv_strerror(rc));
    }
    vm->info.logdirty_rounds++;
    pthread_mutex_unlock(&vm->lock);
    return dirty;
}

int mv_fc_logdirty_disable(mv_fc *vm)
{
    int rc;

    mv__clear_error();
    if (!vm)
        return mv__fail(-EINVAL, "vm must not be NULL");
    pthread_mutex_lock(&vm->lock);
    if (!vm->logging) {
        pthread_mutex_unlock(&vm->lock);
        return mv__fail(-EINVAL, "%s does not log dirty pages", vm->config.name);
    }
    rc = protect_filled(vm, false);
    if (rc == 0) {
        vm->logging = false;
        free(vm->dirty);
        vm->dirty = NULL;
    }
    pthread_mutex_unlock(&vm->lock);
    return rc;
}

int mv_fc_audit(mv_fc *vm)
{
    uint64_t filled = 0;
    int rc = 0;

    mv__clear_error();
    if (!vm)
        return mv__fail(-EINVAL, "vm must not be NULL");
    pthread_mutex_lock(&vm->lock);
    for (uint64_t p = 0; p < vm->pages; p++)
        filled += vm->state[p] == PAGE_FILLED;
    if (filled != vm->info.populated_pages)
        rc = mv__fail(-EUCLEAN, "%s: %llu pages filled, %llu counted", vm->config.name,
                      (unsigned long long)filled,
                      (unsigned long long)vm->info.populated_pages);
    else if (vm->info.loaded_pages + vm->info.zero_filled_pages < filled)
        rc = mv__fail(-EUCLEAN, "%s: %llu pages filled, only %llu fills counted",
                      vm->config.name, (unsigned long long)filled,
                      (unsigned long long)(vm->info.loaded_pages + vm->info.zero_filled_pages));
    pthread_mutex_unlock(&vm->lock);
    return rc;
}

void mv_fc_destroy(mv_fc *vm)
{
    struct fc_host *fh;
    uint64_t one = 1;

    if (!vm)
        return;
    fh = fc_host_of(vm->host);
    pthread_mutex_lock(&fh->list_lock);
    for (struct mv_fc **at = &fh->vms; *at; at = &(*at)->next)
        if (*at == vm) {
            *at = vm->next;
            break;
        }
    pthread_mutex_unlock(&fh->list_lock);
    pthread_mutex_lock(&vm->lock);
    /* Without its server the VMM's next fault would wait forever. */
    if (vm->vm_state == MV_FC_RUNNING && vm->pidfd >= 0)
        syscall(SYS_pidfd_send_signal, vm->pidfd, SIGKILL, NULL, 0);
    vm->stopping = true;
    pthread_cond_broadcast(&vm->room);
    pthread_mutex_unlock(&vm->lock);
    (void)!write(vm->kick_fd, &one, sizeof(one));
    if (vm->thread_started)
        pthread_join(vm->thread, NULL);
    fc_free(vm);
}

/* ---- what it plugs into the core ---- */

static int fc_host_init(struct mv_host *h)
{
    struct fc_host *fh = mv__calloc(1, sizeof(*fh));

    if (!fh)
        return mv__fail(-ENOMEM, "no memory for the hand-over's state");
    pthread_mutex_init(&fh->list_lock, NULL);
    for (size_t i = 0; i < mv__mechanism_count; i++)
        if (mv__mechanisms[i] == &mv__fc_mechanism)
            h->ext[i] = fh;
    return 0;
}

static void fc_host_stop(struct mv_host *h)
{
    struct fc_host *fh = fc_host_of(h);

    while (fh && fh->vms)
        mv_fc_destroy(fh->vms);
}

static void fc_host_fini(struct mv_host *h)
{
    struct fc_host *fh = fc_host_of(h);

    if (!fh)
        return;
    fc_host_stop(h);
    pthread_mutex_destroy(&fh->list_lock);
    free(fh);
    for (size_t i = 0; i < mv__mechanism_count; i++)
        if (mv__mechanisms[i] == &mv__fc_mechanism)
            h->ext[i] = NULL;
}

static uint64_t fc_host_frames(struct mv_host *h)
{
    struct fc_host *fh = fc_host_of(h);

    return fh ? atomic_load(&fh->populated) : 0;
}

static int fc_host_audit(struct mv_host *h)
{
    struct fc_host *fh = fc_host_of(h);
    int rc = 0;

    if (!fh)
        return 0;
    pthread_mutex_lock(&fh->list_lock);
    for (struct mv_fc *vm = fh->vms; vm && rc == 0; vm = vm->next)
        rc = mv_fc_audit(vm);
    pthread_mutex_unlock(&fh->list_lock);
    return rc;
}

const struct mv__mechanism mv__fc_mechanism = {
    .name = "snapshot hand-over",
    .host_init = fc_host_init,
    .host_stop = fc_host_stop,
    .host_fini = fc_host_fini,
    .host_frames = fc_host_frames,
    .host_audit = fc_host_audit,
};

/* For the daemon: the host's VMs in turn (NULL: from the first); not
 * safe against a concurrent mv_fc_destroy of `after`. */
mv_fc *mv_fc_next(mv_host *host, mv_fc *after)
{
    struct fc_host *fh = host ? fc_host_of(host) : NULL;
    struct mv_fc *vm = NULL;

    if (!fh)
        return NULL;
    pthread_mutex_lock(&fh->list_lock);
    vm = after ? after->next : fh->vms;
    pthread_mutex_unlock(&fh->list_lock);
    return vm;
}

const char *mv_fc_name(const mv_fc *vm)
{
    return vm ? vm->config.name : "";
}

/*
 * ram.c - the second-stage page table: the mappings through which a
 * domain's vCPUs reach its RAM.
 *
 * A domain's RAM is mapped either in this process (the built-in guests, an
 * embedding VMM) or in another one, a VMM that handed its userfaultfds and
 * pagemap over (mv_domain_create_vmm).  Everything that changes or reads
 * those mappings goes through here, so no other file needs to know where
 * they are:
 *   - userfaultfd ioctls act on the address space of the process that
 *     opened the userfaultfd, so they work unchanged on d->ram either way;
 *   - mmap and madvise act only on the caller's own address space: for a
 *     VMM they are the VMM's ops, run by code inside it, several at once
 *     where the VMM takes them so (mv__ram_map_runs, mv__ram_zap_runs);
 *   - page contents are read from the machine memory file (machine.c),
 *     never through the mapping, except private copies, which exist only
 *     in the mapping and are always present (read_mapped).
 * Invariant: d->vmm is set once at creation and never changes; for a VMM
 * domain d->ram is an address in the VMM and is never dereferenced here.
 * Locking: callers hold the domain lock, or the domain is unreachable.
 */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

int mv__ram_map(struct mv_domain *d, uint64_t gfn, uint64_t n, uint64_t offset,
                bool private)
{
    uint8_t *at = mv__gfn_addr(d, gfn);
    size_t len = n << MV_PAGE_SHIFT;
    void *mapped;
    int rc;

    if (d->vmm) {
        /* Injected failures stand for the VMM's own, as for a local mmap. */
        rc = mv__os_injected(MV_OS_MMAP);
        if (rc == 0)
            rc = d->vmm->ops.map(d->vmm->ctx, (uintptr_t)at, len, offset,
                                 private ? MV_VMM_MAP_PRIVATE : 0);
        if (rc > 0 || rc < -4095)
            rc = -EIO; /* an op that broke its contract */
        return rc < 0 ? mv__fail(rc, "VMM %d cannot map %zu bytes at %p: %s",
                                 d->vmm->pid, len, (void *)at, mv_strerror(rc))
                      : 0;
    }
    mapped = private ? mv__os_map_private(at, len, d->host->machine.memfd, offset)
                     : mv__os_map_shared(at, len, d->host->machine.memfd, offset,
                                         PROT_READ | PROT_WRITE);
    return mapped ? 0 : -errno;
}

int mv__ram_zap(struct mv_domain *d, uint64_t gfn, uint64_t n)
{
    uint8_t *at = mv__gfn_addr(d, gfn);
    int rc;

    if (!d->vmm)
        return mv__os_zap(at, n << MV_PAGE_SHIFT);
    rc = mv__os_injected(MV_OS_ZAP);
    if (rc == 0)
        rc = d->vmm->ops.zap(d->vmm->ctx, (uintptr_t)at, n << MV_PAGE_SHIFT);
    return rc > 0 || rc < -4095 ? -EIO : rc;
}

/* mv__ram_map_runs and mv__ram_zap_runs: one run at a time, or through the
 * VMM's batch (MV__VMM_BATCH_MAX runs a call), where an injected failure
 * stands for the VMM's own for its run alone (as for a single call) and the
 * others go on. */
static int change_runs(struct mv_domain *d, enum mv__vmm_change what,
                       const struct mv__ram_run *runs, size_t n, int *results)
{
    int first = 0;

    if (!d->vmm || !d->vmm->batch) {
        for (size_t i = 0; i < n; i++) {
            results[i] = what == MV__VMM_ZAP
                ? mv__ram_zap(d, runs[i].gfn, runs[i].n)
                : mv__ram_map(d, runs[i].gfn, runs[i].n, runs[i].offset,
                              what == MV__VMM_MAP_PRIVATE);
            if (first == 0)
                first = results[i];
        }
        return first;
    }
    for (size_t i = 0; i < n;) {
        struct mv__vmm_run ask[MV__VMM_BATCH_MAX];
        size_t which[MV__VMM_BATCH_MAX], k = 0;
        int got[MV__VMM_BATCH_MAX];

        for (; i < n && k < MV__VMM_BATCH_MAX; i++) {
            results[i] = mv__os_injected(what == MV__VMM_ZAP ? MV_OS_ZAP : MV_OS_MMAP);
            if (results[i] < 0)
                continue;
            ask[k] = (struct mv__vmm_run){ .addr = (uintptr_t)mv__gfn_addr(d, runs[i].gfn),
                                           .length = runs[i].n << MV_PAGE_SHIFT,
                                           .offset = runs[i].offset };
            which[k++] = i;
        }
        if (k)
            d->vmm->batch(d->vmm->ctx, what, ask, k, got);
        for (size_t j = 0; j < k; j++)
            results[which[j]] = got[j];
    }
    for (size_t i = 0; i < n && first == 0; i++)
        first = results[i];
    return first;
}

int mv__ram_map_runs(struct mv_domain *d, const struct mv__ram_run *runs, size_t n,
                     bool private, int *results)
{
    return change_runs(d, private ? MV__VMM_MAP_PRIVATE : MV__VMM_MAP, runs, n, results);
}

int mv__ram_zap_runs(struct mv_domain *d, const struct mv__ram_run *runs, size_t n,
                     int *results)
{
    return change_runs(d, MV__VMM_ZAP, runs, n, results);
}

int mv__ram_read_mapped(struct mv_domain *d, uint64_t gfn, uint64_t n, void *buf)
{
    size_t len = n << MV_PAGE_SHIFT;
    struct iovec local = { buf, len }, remote = { mv__gfn_addr(d, gfn), len };
    ssize_t got;

    if (!d->vmm) {
        memcpy(buf, mv__gfn_addr(d, gfn), len);
        return 0;
    }
    /* Only present pages are read this way: a missing one would wait on a
     * fault that this thread may be the one to serve. */
    got = process_vm_readv(d->vmm->pid, &local, 1, &remote, 1, 0);
    if (got == (ssize_t)len)
        return 0;
    return mv__fail(got < 0 ? -errno : -EIO, "cannot read gfn %#llx+%llu from VMM %d: %s",
                    (unsigned long long)gfn, (unsigned long long)n, d->vmm->pid,
                    got < 0 ? mv_strerror(-errno) : "short read");
}

int mv__ram_save_mapped(struct mv_domain *d, uint64_t gfn, uint64_t n, uint64_t offset)
{
    uint8_t page[MV_PAGE_SIZE];
    int rc = 0;

    if (!d->vmm)
        return mv__os_write(d->host->machine.memfd, mv__gfn_addr(d, gfn), offset,
                            n << MV_PAGE_SHIFT);
    for (uint64_t i = 0; rc == 0 && i < n; i++) {
        rc = mv__ram_read_mapped(d, gfn + i, 1, page);
        if (rc == 0)
            rc = mv__os_write(d->host->machine.memfd, page,
                              offset + (i << MV_PAGE_SHIFT), MV_PAGE_SIZE);
    }
    return rc;
}

int mv__ram_pagemap_fd(struct mv_domain *d)
{
    return d->vmm ? d->vmm->pagemap_fd : d->host->pagemap_fd;
}

int mv__ram_scan_pages(struct mv_domain *d, uint64_t gfn, uint64_t n, uint64_t categories,
                       uint8_t *found)
{
    struct page_region regions[256];
    uintptr_t base = (uintptr_t)mv__gfn_addr(d, gfn), start = base;
    uintptr_t end = base + (n << MV_PAGE_SHIFT);

    memset(found, 0, n);
    while (start < end) {
        struct pm_scan_arg arg = {
            .size = sizeof(arg), .start = start, .end = end,
            .vec = (uintptr_t)regions, .vec_len = MV_ARRAY_SIZE(regions),
            .category_mask = categories, .return_mask = categories,
        };
        long r = mv__os_pagemap_scan(mv__ram_pagemap_fd(d), &arg);

        if (r < 0)
            return (int)r;
        for (long i = 0; i < r; i++)
            memset(found + ((regions[i].start - base) >> MV_PAGE_SHIFT), 1,
                   (regions[i].end - regions[i].start) >> MV_PAGE_SHIFT);
        /* Short of `end` only when the regions ran out. */
        if (arg.walk_end <= start || arg.walk_end >= end)
            break;
        start = arg.walk_end;
    }
    return 0;
}

int mv__ram_protect_scan(struct mv_domain *d, uint64_t gfn, uint64_t n, uint8_t *state)
{
    struct page_region regions[MV_BLOCK_PAGES];
    uintptr_t base = (uintptr_t)mv__gfn_addr(d, gfn);
    struct pm_scan_arg arg = {
        .size = sizeof(arg),
        .flags = PM_SCAN_WP_MATCHING,
        .start = base, .end = base + (n << MV_PAGE_SHIFT),
        .vec = (uintptr_t)regions, .vec_len = MV_ARRAY_SIZE(regions),
        /* Mappings of shared frames (the copy-on-write userfaultfd, whose
         * protection is synchronous) are passed over, not protected. */
        .category_mask = PAGE_IS_WPALLOWED,
        .category_anyof_mask = PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
        .return_mask = PAGE_IS_PRESENT | PAGE_IS_SWAPPED | PAGE_IS_WRITTEN,
    };
    /* n regions at most: the walk never stops short for want of room. */
    long r = mv__os_pagemap_scan(mv__ram_pagemap_fd(d), &arg);

    if (r < 0)
        return (int)r;
    memset(state, 0, n);
    for (long i = 0; i < r; i++) {
        uint8_t what = (uint8_t)((regions[i].categories & PAGE_IS_PRESENT ? MV_RAM_MAPPED
                                                                          : MV_RAM_MARKED) |
                                 (regions[i].categories & PAGE_IS_WRITTEN ? MV_RAM_WRITTEN : 0));

        memset(state + ((regions[i].start - base) >> MV_PAGE_SHIFT), what,
               (regions[i].end - regions[i].start) >> MV_PAGE_SHIFT);
    }
    return 0;
}

int mv__ram_uffd(struct mv_domain *d, uint64_t features)
{
    if (!d->vmm)
        return mv__uffd_create(features);
    for (size_t i = 0; i < MV_ARRAY_SIZE(d->vmm->uffds); i++) {
        int fd = d->vmm->uffds[i];

        if (fd < 0)
            continue;
        d->vmm->uffds[i] = -1;
        return mv__uffd_adopt(fd, features);
    }
    return mv__fail(-EMFILE, "VMM %d handed over no userfaultfd for this use",
                    d->vmm->pid);
}

/* Wake every thread blocked on a fault of `uffd` in d's RAM.  The last
 * resort of a crash: it is tried again, and only logged when it keeps
 * failing (nothing else could wake them). */
static void wake_all(struct mv_domain *d, int uffd, size_t length)
{
    int rc = 0;

    for (unsigned i = 0; i < MV_WAKE_TRIES; i++)
        if ((rc = mv__os_uffd_wake(uffd, d->ram, length)) == 0)
            return;
    mv__log(d->host, MV_LOG_ERROR, "domain %u: cannot wake its vCPUs after the "
            "crash: %s", d->domid, mv_strerror(rc));
}

/* Replace the RAM mapping with one that raises SIGBUS on every access. */
static void poison_here(struct mv_domain *d, size_t length)
{
    if (mv__os_map_shared(d->ram, length, d->host->sigbus_fd, 0,
                          PROT_READ | PROT_WRITE))
        return;
    /* At vm.max_map_count the replacing mmap can fail: unmapping the whole
     * range first frees its mappings (a stray access in between takes
     * SIGSEGV rather than writing anywhere). */
    mv__log(d->host, MV_LOG_WARN, "domain %u: cannot poison its RAM (%s); "
            "unmapping it first", d->domid, mv_strerror(-errno));
    mv__os_unmap(d->ram, length);
    if (!mv__os_map_shared(d->ram, length, d->host->sigbus_fd, 0,
                           PROT_READ | PROT_WRITE))
        mv__log(d->host, MV_LOG_ERROR, "domain %u: cannot poison its RAM: %s",
                d->domid, mv_strerror(-errno));
}

void mv__ram_poison(struct mv_domain *d)
{
    size_t length = d->maxmem_pages << MV_PAGE_SHIFT;

    if (d->vmm)
        d->vmm->ops.crash(d->vmm->ctx, d->crash_reason);
    else
        poison_here(d, length);
    if (d->uffd >= 0)
        wake_all(d, d->uffd, length);
    if (d->cow_uffd >= 0)
        wake_all(d, d->cow_uffd, length);
    mv__fault_release_all(d);
}

void mv__ram_fini(struct mv_domain *d)
{
    if (!d->vmm) {
        if (d->ram)
            mv__os_unmap(d->ram, d->maxmem_pages << MV_PAGE_SHIFT);
        return;
    }
    mv__ram_vmm_free(d->vmm);
    d->vmm = NULL;
}

void mv__ram_vmm_free(struct mv__vmm *v)
{
    if (!v)
        return;
    for (size_t i = 0; i < MV_ARRAY_SIZE(v->uffds); i++)
        if (v->uffds[i] >= 0)
            close(v->uffds[i]);
    if (v->pagemap_fd >= 0)
        close(v->pagemap_fd);
    if (v->ops.release)
        v->ops.release(v->ctx);
    free(v);
}

/*
 * host.c - the host: configuration, creation and teardown, host-wide
 * statistics, the budget and the host audit.
 *
 * A host is the unit an embedder creates once: it probes the kernel, builds
 * the machine memory (machine.c) and starts the fault service (fault.c).
 * Domain ids start at 1 and are never reused by one host.
 */
#include "internal.h"

#include <sched.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MV_DEFAULT_MACHINE_BYTES (1024ull * MV_GIB)

void mv_host_config_init(struct mv_host_config *config)
{
    memset(config, 0, sizeof(*config));
    config->fault_threads = 1;
    config->fault_spin_us = MV_FAULT_SPIN_DEFAULT;
    config->cow_settle_ms = MV_COW_SETTLE_DEFAULT_MS;
    config->log_level = MV_LOG_INFO;
}

/* Parse a CPU list in taskset's syntax ("0-3,8") into `set`. */
static int parse_cpu_list(const char *list, cpu_set_t *set)
{
    const char *p = list;

    CPU_ZERO(set);
    do {
        char *end;
        unsigned long first, last;

        if (*p < '0' || *p > '9')
            return mv__fail(-EINVAL, "fault_cpus '%s': expected a CPU number at '%s'",
                            list, p);
        first = last = strtoul(p, &end, 10);
        if (*end == '-') {
            p = end + 1;
            if (*p < '0' || *p > '9')
                return mv__fail(-EINVAL, "fault_cpus '%s': expected a CPU number "
                                "at '%s'", list, p);
            last = strtoul(p, &end, 10);
        }
        if (last < first)
            return mv__fail(-EINVAL, "fault_cpus '%s': range %lu-%lu runs backwards",
                            list, first, last);
        if (last >= CPU_SETSIZE)
            return mv__fail(-EINVAL, "fault_cpus '%s': CPU %lu is beyond the %d "
                            "this library can name", list, last, CPU_SETSIZE);
        for (unsigned long cpu = first; cpu <= last; cpu++)
            CPU_SET(cpu, set);
        p = end;
    } while (*p == ',' && ++p);
    if (*p)
        return mv__fail(-EINVAL, "fault_cpus '%s': unexpected '%s'", list, p);
    return 0;
}

const char *mv_fault_mode_name(enum mv_fault_mode mode)
{
    switch (mode) {
    case MV_FAULT_AUTO:
        return "auto";
    case MV_FAULT_SHARED:
        return "shared";
    case MV_FAULT_PER_CPU:
        return "per-cpu";
    }
    return "unknown";
}

const char *mv_fault_path_name(enum mv_fault_path path)
{
    switch (path) {
    case MV_FAULT_PATH_AUTO:
        return "auto";
    case MV_FAULT_PATH_THREAD:
        return "thread";
    }
    return "unknown";
}

const char *mv_tmem_store_name(enum mv_tmem_store store)
{
    switch (store) {
    case MV_TMEM_STORE_AUTO:
        return "auto";
    case MV_TMEM_STORE_MAPPED:
        return "mapped";
    case MV_TMEM_STORE_COPIED:
        return "copied";
    }
    return "unknown";
}

const char *mv_share_read_name(enum mv_share_read read)
{
    switch (read) {
    case MV_SHARE_READ_AUTO:
        return "auto";
    case MV_SHARE_READ_COPY:
        return "copy";
    case MV_SHARE_READ_IN_PLACE:
        return "in-place";
    }
    return "unknown";
}

const char *mv_scrub_mode_name(enum mv_scrub_mode mode)
{
    switch (mode) {
    case MV_SCRUB_SYNC:
        return "sync";
    case MV_SCRUB_BACKGROUND:
        return "background";
    }
    return "unknown";
}

/*
 * Settle where the fault threads run: the CPUs of `list` (taskset syntax;
 * NULL or "" = no restriction) this process may run on, of which there must
 * be at least one; and the fault mode (MV_FAULT_AUTO chooses).  Per CPU,
 * there is one thread for each of those CPUs.
 */
static int settle_fault_threads(struct mv_host *h, const char *list)
{
    cpu_set_t cpus;
    int count, rc;

    if (sched_getaffinity(0, sizeof(cpus), &cpus) < 0)
        return mv__fail(-errno, "cannot read the CPUs this process may run on");
    if (list && list[0]) {
        rc = parse_cpu_list(list, &h->fault_cpus);
        if (rc < 0)
            return rc;
        CPU_AND(&cpus, &cpus, &h->fault_cpus);
        if (CPU_COUNT(&cpus) == 0)
            return mv__fail(-EINVAL, "fault_cpus '%s': none of these CPUs is one "
                            "this process may run on", list);
    }
    count = CPU_COUNT(&cpus);
    if (h->config.fault_mode == MV_FAULT_AUTO)
        h->config.fault_mode = h->config.fault_threads <= 1 &&
                               count <= (int)MV_FAULT_PER_CPU_AUTO_MAX
                             ? MV_FAULT_PER_CPU : MV_FAULT_SHARED;
    if (h->config.fault_mode == MV_FAULT_SHARED)
        return 0;
    if (count > 64)
        return mv__fail(-EINVAL, "fault_mode per-CPU: %d CPUs, more than 64 fault "
                        "threads; name fewer in fault_cpus", count);
    h->fault_cpus = cpus;
    h->config.fault_threads = (unsigned)count;
    return 0;
}

int mv_host_create(const struct mv_host_config *config, mv_host **out)
{
    struct mv_host *h;
    uint64_t budget;
    int rc;

    mv__clear_error();
    if (!config || !out)
        return mv__fail(-EINVAL, "config and out must not be NULL");
    /* Every host sees the same mechanisms: none may register from now on. */
    rc = mv__mechanisms_seal();
    if (rc < 0)
        return rc;
    if ((unsigned)config->fault_mode > MV_FAULT_PER_CPU)
        return mv__fail(-EINVAL, "fault_mode %d is not MV_FAULT_AUTO, _SHARED or "
                        "_PER_CPU", (int)config->fault_mode);
    if ((unsigned)config->fault_path > MV_FAULT_PATH_THREAD)
        return mv__fail(-EINVAL, "fault_path %d is not MV_FAULT_PATH_AUTO or "
                        "_THREAD", (int)config->fault_path);
    if ((unsigned)config->scrub_mode > MV_SCRUB_BACKGROUND)
        return mv__fail(-EINVAL, "scrub_mode %d is not MV_SCRUB_SYNC or _BACKGROUND",
                        (int)config->scrub_mode);
    if ((unsigned)config->tmem_store > MV_TMEM_STORE_COPIED)
        return mv__fail(-EINVAL, "tmem_store %d is not MV_TMEM_STORE_AUTO, _MAPPED or "
                        "_COPIED", (int)config->tmem_store);
    if ((unsigned)config->share_read > MV_SHARE_READ_IN_PLACE)
        return mv__fail(-EINVAL, "share_read %d is not MV_SHARE_READ_AUTO, _COPY or "
                        "_IN_PLACE", (int)config->share_read);
    if (config->fault_threads > 64)
        return mv__fail(-EINVAL, "fault_threads %u is above 64", config->fault_threads);
    if (config->cow_settle_ms > 60000)
        return mv__fail(-EINVAL, "cow_settle_ms %u is above 60000", config->cow_settle_ms);
    if (config->budget_bytes % MV_PAGE_SIZE || config->machine_bytes % (2 * MV_MIB))
        return mv__fail(-EINVAL, "budget must be a multiple of 4 KiB and the "
                        "machine size a multiple of 2 MiB");
    h = mv__calloc(1, sizeof(*h));
    if (!h)
        return mv__fail(-ENOMEM, "no memory for a host");
    h->config = *config;
    pthread_mutex_init(&h->forward_lock, NULL);
    pthread_mutex_init(&h->retry_lock, NULL);
    h->config.fault_cpus = NULL;    /* the caller's string: read here only */
    if (!h->config.fault_threads)
        h->config.fault_threads = 1;
    if (!h->config.cow_settle_ms)
        h->config.cow_settle_ms = MV_COW_SETTLE_DEFAULT_MS;
    rc = settle_fault_threads(h, config->fault_cpus);
    if (rc < 0) {
        pthread_mutex_destroy(&h->forward_lock);
        pthread_mutex_destroy(&h->retry_lock);
        free(h);
        return rc;
    }
    if (!h->config.machine_bytes)
        h->config.machine_bytes = MV_DEFAULT_MACHINE_BYTES;
    h->kick_fd = h->sigbus_fd = h->pagemap_fd = -1;
    h->next_domid = 1;
    h->machine.memfd = -1;
    pthread_rwlock_init(&h->domains_lock, NULL);

    rc = mv_probe_kernel(&h->features);
    if (rc < 0)
        goto fail;
    budget = h->config.budget_bytes ? h->config.budget_bytes
                                    : h->features.mem_available / 10 * 8;
    if (budget < MV_PAGE_SIZE) {
        rc = mv__fail(-EINVAL, "host budget of %llu bytes is below one page",
                      (unsigned long long)budget);
        goto fail;
    }
    rc = mv__machine_init(&h->machine, h->config.machine_bytes,
                          budget >> MV_PAGE_SHIFT);
    if (rc < 0)
        goto fail;
    if (h->config.scrub_mode == MV_SCRUB_BACKGROUND &&
        (rc = mv__scrub_start(&h->machine, h)) < 0)
        goto fail;
    h->sigbus_fd = mv__os_memfd("memvisor-crashed", 0);
    if (h->sigbus_fd < 0) {
        rc = mv__fail(h->sigbus_fd, "cannot create the SIGBUS memfd");
        goto fail;
    }
    h->pagemap_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (h->pagemap_fd < 0) {
        rc = mv__fail(-errno, "cannot open /proc/self/pagemap: %s", mv_strerror(-errno));
        goto fail;
    }
    mv__each_mechanism(m)
        if (m->host_init && (rc = m->host_init(h)) < 0)
            goto fail;
    rc = mv__fault_service_start(h);
    if (rc < 0)
        goto fail;
    mv__log(h, MV_LOG_INFO, "host up: budget %llu MiB, machine %llu GiB, "
            "%u fault threads%s, kernel %s", (unsigned long long)(budget / MV_MIB),
            (unsigned long long)(h->config.machine_bytes / MV_GIB),
            h->config.fault_threads,
            h->config.fault_mode == MV_FAULT_PER_CPU ? " (one per CPU)" : "",
            h->features.release);
    *out = h;
    return 0;
fail:
    {
        char why[256];

        snprintf(why, sizeof(why), "%s", mv_last_error());
        mv_host_destroy(h);
        return mv__fail(rc, "%s", why);
    }
}

void mv_host_destroy(mv_host *h)
{
    uint32_t ids[64];
    int n;

    if (!h)
        return;
    mv__each_mechanism(m)
        if (m->host_stop)
            m->host_stop(h);
    while ((n = mv_domain_list(h, ids, MV_ARRAY_SIZE(ids))) > 0)
        for (int i = 0; i < MV_MIN(n, (int)MV_ARRAY_SIZE(ids)); i++)
            mv_domain_destroy(h, ids[i]);
    /* Before the fault service: the scrubber kicks it. */
    if (h->machine.pages)
        mv__scrub_stop(&h->machine);
    mv__fault_service_stop(h);
    for (size_t i = mv__mechanism_count; i-- > 0;)
        if (mv__mechanisms[i]->host_fini)
            mv__mechanisms[i]->host_fini(h);
    if (h->sigbus_fd >= 0)
        close(h->sigbus_fd);
    if (h->pagemap_fd >= 0)
        close(h->pagemap_fd);
    if (h->machine.pages)
        mv__machine_fini(&h->machine);
    pthread_rwlock_destroy(&h->domains_lock);
    pthread_mutex_destroy(&h->forward_lock);
    pthread_mutex_destroy(&h->retry_lock);
    free(h->domains);
    free(h);
}

/* The domains' metadata, in *bytes: 0 or -ENOMEM. */
static int domains_metadata(mv_host *h, uint64_t *bytes)
{
    struct mv_domain **all;
    size_t n;
    int rc = mv__domain_get_all(h, &all, &n);

    *bytes = 0;
    for (size_t i = 0; i < n; i++) {
        struct mv_domain_info info;

        if (mv_domain_info(h, all[i]->domid, &info) == 0)
            *bytes += info.metadata_bytes;
        mv__domain_put(all[i]);
    }
    free(all);
    return rc;
}

int mv_host_stats(mv_host *h, struct mv_host_stats *out)
{
    struct mv__scrub_counts scrub;
    int rc;

    mv__clear_error();
    memset(out, 0, sizeof(*out));
    out->budget_pages = atomic_load(&h->machine.budget_pages);
    out->populated_pages = atomic_load(&h->machine.populated_pages);
    out->peak_populated_pages = atomic_load(&h->machine.peak_populated_pages);
    out->machine_pages = h->machine.pages;
    mv__mutex_lock(&h->machine.lock);
    out->free_frame_pages = h->machine.free_pages;
    mv__mutex_unlock(&h->machine.lock);
    pthread_rwlock_rdlock(&h->domains_lock);
    out->domains = h->domain_count;
    pthread_rwlock_unlock(&h->domains_lock);
    out->faults = atomic_load(&h->faults);
    out->fault_wakeups = atomic_load(&h->fault_wakeups);
    out->fault_wait_errors = atomic_load(&h->fault_wait_errors);
    rc = domains_metadata(h, &out->metadata_bytes);
    mv__each_mechanism(m)
        if (m->host_metadata)
            out->metadata_bytes += m->host_metadata(h);
    out->fault_threads = h->fault_thread_count;
    out->fault_mode = h->config.fault_mode;
    out->scrub_mode = h->config.scrub_mode;
    out->fault_path = h->config.fault_path;
    mv__scrub_counts(&h->machine, &scrub);
    out->scrub_pending_pages = scrub.pending_pages;
    out->scrub_pending_charged_pages = scrub.pending_charged;
    out->scrubbed_background_pages = scrub.scrubbed_pages;
    out->scrub_failures = scrub.failures;
    return rc;
}

int mv_host_set_budget(mv_host *h, uint64_t budget_bytes)
{
    uint64_t pages = budget_bytes >> MV_PAGE_SHIFT, populated, old;

    mv__clear_error();
    if (budget_bytes % MV_PAGE_SIZE || pages == 0)
        return mv__fail(-EINVAL, "budget %llu is not a positive multiple of 4 KiB",
                        (unsigned long long)budget_bytes);
    /* Lowering races with charges: lower the bar first, then check, so no
     * charge can slip past the new value unseen. */
    old = atomic_exchange(&h->machine.budget_pages, pages);
    populated = atomic_load(&h->machine.populated_pages);
    /* Frames destroyed domains gave back count until scrubbed. */
    if (populated > pages && mv__scrub_wait(&h->machine, MV__RELEASE_SCRUB))
        populated = atomic_load(&h->machine.populated_pages);
    if (populated > pages) {
        atomic_store(&h->machine.budget_pages, old);
        return mv__fail(-EBUSY, "%llu pages are populated, more than a budget of "
                        "%llu; reclaim or balloon first", (unsigned long long)populated,
                        (unsigned long long)pages);
    }
    mv__fault_kick(h);
    return 0;
}

/* Sum every domain's populated pages and the sharing frames against the
 * budget's count.  Faults, sharing and destroys may move pages meanwhile:
 * the sum is taken again until no charge or uncharge was under way as it
 * began, none began until it ended, and no domain was being destroyed
 * meanwhile (each domain's own count is
 * read under its lock, and every charge happens under that domain's lock,
 * so a view that held still is exact).  -EAGAIN when none held still. */
#define MV_AUDIT_SUM_TRIES 64

static int audit_budget_sum(mv_host *h)
{
    for (unsigned attempt = 0; attempt < MV_AUDIT_SUM_TRIES; attempt++) {
        /* charge_done first: a change that ends between the two loads
         * shows as under way, never as finished before it began. */
        uint64_t done = atomic_load(&h->machine.charge_done);
        uint64_t before = atomic_load(&h->machine.charge_changes);
        uint64_t populated = 0, frames, charged;
        struct mv__scrub_counts scrub;
        struct mv_domain **all;
        bool quiet = atomic_load(&h->domains_dying) == 0 && done == before;
        size_t n;
        int rc = mv__domain_get_all(h, &all, &n);

        if (rc < 0)
            return rc;
        for (size_t i = 0; i < n; i++) {
            mv__mutex_lock(&all[i]->lock);
            populated += all[i]->populated;
            mv__mutex_unlock(&all[i]->lock);
            mv__domain_put(all[i]);
        }
        free(all);
        /* Frames given back and not scrubbed yet are still charged. */
        mv__scrub_counts(&h->machine, &scrub);
        frames = scrub.pending_charged;
        mv__each_mechanism(m)
            if (m->host_frames)
                frames += m->host_frames(h);
        charged = atomic_load(&h->machine.populated_pages);
        quiet = quiet && atomic_load(&h->domains_dying) == 0 &&
                atomic_load(&h->machine.charge_changes) == before;
        if (!quiet) {
            sched_yield();
            continue;
        }
        if (populated + frames != charged)
            return mv__fail(-EUCLEAN, "host: domains hold %llu populated pages and "
                            "%llu frames are held outside them (shared, tmem, "
                            "waiting to be scrubbed), the budget "
                            "counts %llu",
                            (unsigned long long)populated, (unsigned long long)frames,
                            (unsigned long long)charged);
        return 0;
    }
    return mv__fail(-EAGAIN, "host: memory was populated or freed during each of %u "
                    "attempts to sum it against the budget: no consistent view "
                    "(audit again, or with the guests paused)", MV_AUDIT_SUM_TRIES);
}

int mv_host_audit(mv_host *h)
{
    struct mv_domain **all;
    size_t n;
    int rc;

    mv__clear_error();
    /* Records that lag behind (kernel copies not settled yet) are brought
     * up to date first, so that the counts below do not move under it. */
    rc = 0;
    mv__each_mechanism(m)
        if (rc == 0 && m->host_settle)
            rc = m->host_settle(h);
    if (rc == 0)
        rc = mv__machine_audit(&h->machine);
    if (rc == 0)
        rc = mv__domain_table_audit(h);
    if (rc == 0)
        rc = mv__domain_get_all(h, &all, &n);
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < n; i++) {
        if (rc == 0) {
            rc = mv_domain_audit(h, all[i]->domid);
            if (rc == -ESRCH)
                rc = 0; /* destroyed meanwhile */
        }
        mv__domain_put(all[i]);
    }
    free(all);
    if (rc == 0)
        mv__each_mechanism(m)
            if (rc == 0 && m->host_audit)
                rc = m->host_audit(h);
    if (rc == 0)
        rc = audit_budget_sum(h);
    return rc;
}

int mv_host_machine_fd(mv_host *host)
{
    mv__clear_error();
    if (!host)
        return mv__fail(-EINVAL, "host must not be NULL");
    return host->machine.memfd;
}

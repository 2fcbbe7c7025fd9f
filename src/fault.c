/*
 * fault.c - the fault service: threads that read every domain's userfaultfd
 * and resolve its faults, and the list of faults that must wait.
 *
 *   vCPU thread            fault thread
 *   store to guest RAM --> uffd message --> epoll --> read --> domain lock
 *     (blocked in the                          the owner of the gfn's p2m type:
 *      kernel)                                 map; the ioctl wakes the vCPU
 *
 * An epoll set holds the userfaultfd of every domain (keyed by domid) and an
 * eventfd used to kick the threads: memory was freed or a domain unpaused,
 * so held faults should be tried again (the sharing scanner kicks only
 * while one waits), a request was handed over, or the service is
 * stopping.  Faults of
 * many domains are served concurrently by the configured number of threads;
 * a domain's faults serialize on its lock.
 *
 * Held faults: a paused domain's faults wait for unpause (no deadline); a
 * fault that found no memory under MV_POD_WAIT waits until memory frees up
 * or its deadline passes, then the domain crashes.  While any fault is held
 * the threads wake every MV_HELD_TICK_MS to check deadlines.  Held faults
 * are tried again in the order they came, whichever their domains (one
 * pass at a time, under host->retry_lock), and none of a domain below its
 * target once a fault found the host without memory: memory that frees up
 * a page at a time goes to the faults in the order they began to wait for
 * it.  For the same reason a new fault that
 * would take the host's memory while an older one waits for it
 * (host->memory_wanted, set when a fault is held for want of the host's
 * memory and by each retry pass) is held behind it, not served: in a
 * fault thread, and in the faulting thread, which hands it over.  The
 * flag is a hint that a pass corrects: a fault held by a stale one is
 * served at the next tick.
 *
 * After serving a burst of populate-on-demand faults, a thread keeps
 * polling (without sleeping) for fault_spin_us: the next fault of a guest
 * touching fresh memory usually comes within microseconds, and a sleeping
 * thread costs a scheduler wakeup.  Copy-on-write faults do not start the
 * polling: a polling thread made the woken writer wait (bench cow; the
 * figures are in docs/performance.md, "CoW fault").
 *
 * The threads run on the host's fault_cpus when given.  Where a fault is
 * served matters on a virtual machine: a fault thread woken on another vCPU
 * than the faulting one, and the faulting thread woken back, can cost more
 * than the rest of the fault.  In MV_FAULT_PER_CPU mode there is one thread
 * pinned to each of those CPUs, each waiting on an epoll set of its own that
 * holds every userfaultfd: a fault wakes them all, and the one on the CPU
 * the faulting thread has just left serves it there while the others find
 * nothing to read.  Those threads never spin.
 *
 * Faults handed over: a domain whose faults raise SIGBUS (vcpu.c) has no
 * userfaultfd messages; its faults that cannot be resolved in the faulting
 * thread come here as requests on host->forward_new, each on the stack of
 * a thread waiting in its handler on the request's verdict (a futex).  A
 * fault thread serves a request as it serves a message (serve_fault), then
 * gives the verdict -- RETRY once the page is there, CRASHED once the
 * domain crashed or is going -- or, while the fault is held (paused, short
 * of memory), moves it to host->forward_waiting and looks again after every
 * retry of the held faults.  While requests wait the threads wake every
 * MV_HELD_TICK_MS, as for held faults.  Stopping the service answers RETRY
 * to every request left: the access then meets what became of the RAM.
 *
 * Locking: a thread takes one domain lock at a time; host->held_total is an
 * atomic sum of every domain's held_count; host->forward_lock guards the
 * two request lists and is taken with no other lock or under a domain lock
 * (a leaf); a request is unlinked before its verdict is given, as the
 * waiting thread's stack may be gone the instant after.  host->retry_lock
 * is only tried, with no other lock held, never waited for; the pass that
 * holds it takes domain locks one at a time and owns the domains'
 * retry_tried_ns and retry_next_ns.
 */
#include "internal.h"

#include <errno.h>
#include <linux/futex.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define MV_KICK_KEY UINT64_MAX
#define MV_COW_KEY (1ull << 32) /* with the domid: its copy-on-write uffd */
#define MV_HELD_TICK_MS 20
#define MV_MSGS_PER_READ 32

void mv__fault_kick(struct mv_host *host)
{
    uint64_t one = 1;

    if (host->kick_fd >= 0) {
        atomic_fetch_add_explicit(&host->kicks, 1, memory_order_relaxed);
        (void)!write(host->kick_fd, &one, sizeof(one));
    }
}

void mv__fault_kick_waiters(struct mv_host *host)
{
    /* A fault held just after this load, for memory freed just before it,
     * is tried again at the next tick (MV_HELD_TICK_MS), as every held
     * fault is. */
    if (atomic_load(&host->held_total) > 0 || atomic_load(&host->forward_pending) > 0)
        mv__fault_kick(host);
}

int mv__fault_hold(struct mv_domain *d, uint64_t gfn, uint64_t deadline_ns,
                   bool cow)
{
    mv__assert_held(&d->lock);
    for (size_t i = 0; i < d->held_count; i++)
        if (d->held[i].gfn == gfn && d->held[i].cow == cow)
            return 0;
    if (d->held_count == d->held_capacity) {
        size_t cap = d->held_capacity ? d->held_capacity * 2 : 8;
        struct mv__held_fault *n = mv__realloc(d->held, cap * sizeof(*n));

        if (!n)
            return -ENOMEM;
        d->held = n;
        d->held_capacity = cap;
    }
    d->held[d->held_count++] = (struct mv__held_fault){
        .gfn = gfn, .since_ns = mv__now_ns(), .deadline_ns = deadline_ns,
        .cow = cow,
    };
    if (d->held_count == 1)
        atomic_store(&d->held_since_ns, d->held[0].since_ns);
    atomic_fetch_add(&d->host->held_total, 1);
    return 0;
}

void mv__fault_release_all(struct mv_domain *d)
{
    mv__assert_held(&d->lock);
    atomic_fetch_sub(&d->host->held_total, d->held_count);
    d->held_count = 0;
    atomic_store(&d->held_since_ns, 0);
    /* Requests handed over wait for a look at the domain's state. */
    if (atomic_load(&d->host->forward_pending))
        mv__fault_kick(d->host);
}

int mv__fault_wake(struct mv_domain *d, bool cow, uint64_t gfn, uint64_t n)
{
    int rc = 0;

    mv__assert_held(&d->lock);
    for (unsigned i = 0; i < MV_WAKE_TRIES; i++) {
        rc = mv__os_uffd_wake(cow ? d->cow_uffd : d->uffd, mv__gfn_addr(d, gfn),
                              n << MV_PAGE_SHIFT);
        if (rc == 0)
            return 0;
    }
    mv__domain_crash(d, "cannot wake the vCPUs faulting on gfn %#llx+%llu: %s",
                     (unsigned long long)gfn, (unsigned long long)n, mv_strerror(rc));
    return -EFAULT;
}

/* Keeps the others in the order they were held. */
static void remove_held(struct mv_domain *d, size_t i)
{
    memmove(&d->held[i], &d->held[i + 1], (d->held_count - i - 1) * sizeof(d->held[0]));
    d->held_count--;
    atomic_store(&d->held_since_ns, d->held_count ? d->held[0].since_ns : 0);
    atomic_fetch_sub(&d->host->held_total, 1);
}

MV_COLD static void out_of_memory(struct mv_domain *d, uint64_t gfn, bool cow)
{
    if (d->config.pod_policy == MV_POD_CRASH) {
        mv__domain_crash(d, "out of memory %s gfn %#llx: %llu of %llu "
                         "target pages hold data and no zero page was found",
                         cow ? "copying shared" : "populating",
                         (unsigned long long)gfn, (unsigned long long)d->populated,
                         (unsigned long long)d->target_pages);
        return;
    }
    if (mv__fault_hold(d, gfn, mv__now_ns() +
                       (uint64_t)d->config.wait_timeout_ms * 1000000ull, cow) < 0) {
        mv__domain_crash(d, "out of memory populating gfn %#llx and no memory "
                         "to queue the fault", (unsigned long long)gfn);
        return;
    }
    d->pod_waits++;
    if (d->populated < d->target_pages && mv__machine_room(&d->host->machine) == 0)
        atomic_store(&d->host->memory_wanted, true);
}

/*
 * Whether a new fault of d must wait behind older ones for the host's
 * memory (lock held): d is below its target, so the fault would take a
 * page of the host's, and a fault that came earlier waits for one.  Served
 * at once, it would take the page that memory freed for the older fault.
 * Under MV_POD_CRASH no fault waits.
 */
static bool waits_its_turn(struct mv_domain *d)
{
    return atomic_load(&d->host->memory_wanted) && d->config.pod_policy == MV_POD_WAIT &&
           d->populated < d->target_pages;
}

/*
 * Resolve a fault now if possible (lock held, domain running): a write to a
 * shared page breaks it; anything else is PoD's.  0, -EFAULT (the domain
 * crashed), or another negative errno when it could not be resolved now and
 * nothing changed (-ENOMEM: no memory).
 */
static int resolve(struct mv_domain *d, uint64_t gfn, bool cow)
{
    const struct mv__p2m_ops *ops = mv__p2m_ops_of((enum mv__p2m_type)d->p2m[gfn]);

    if (cow) {
        if (ops->remapped)
            return ops->remap_fault(d, gfn);
        /* Mapped back already (another vCPU, unshare): let it retry. */
        return mv__fault_wake(d, true, gfn, 1);
    }
    return ops->fault(d, gfn);
}

/* Whether the fault needs no memory and changes nothing: the page is there
 * (a missing fault), or no longer remapped (a write through the second
 * userfaultfd). */
static bool needs_nothing(struct mv_domain *d, uint64_t gfn, uint64_t flags, bool cow)
{
    const struct mv__p2m_ops *ops = mv__p2m_ops_of((enum mv__p2m_type)d->p2m[gfn]);

    return cow ? !ops->remapped : !(flags & UFFD_PAGEFAULT_FLAG_WP) && ops->present;
}

/* Serve one fault (domain lock held). */
static void serve_fault(struct mv_domain *d, uint64_t address, uint64_t flags,
                        bool cow)
{
    uint64_t gfn;
    int rc;

    if (address < (uintptr_t)d->ram ||
        address >= (uintptr_t)d->ram + (d->maxmem_pages << MV_PAGE_SHIFT))
        return;
    gfn = (address - (uintptr_t)d->ram) >> MV_PAGE_SHIFT;
    d->faults++;
    if (atomic_load(&d->dying) || d->state == MV_DOMAIN_CRASHED) {
        /* Its RAM raises SIGBUS now: let the thread run into it. */
        mv__fault_wake(d, cow, gfn, 1);
        return;
    }
    if (d->state == MV_DOMAIN_PAUSED) {
        /* A fault that needs no memory and changes nothing (the page is
         * there, or no longer shared) lets its vCPU go on to its pause
         * point.  Held, it would count as a stopped vCPU, and a stale
         * message (its vCPU woken already) would let pause return while
         * that vCPU still runs. */
        if (needs_nothing(d, gfn, flags, cow)) {
            resolve(d, gfn, cow);
            return;
        }
        if (mv__fault_hold(d, gfn, 0, cow) < 0)
            mv__domain_crash(d, "no memory to hold a fault while paused");
        return;
    }
    if (!cow && (flags & UFFD_PAGEFAULT_FLAG_WP)) {
        mv__each_mechanism(m)
            if (m->write_fault)
                m->write_fault(d, gfn);
        return;
    }
    if (waits_its_turn(d) && !needs_nothing(d, gfn, flags, cow)) {
        out_of_memory(d, gfn, cow);
        return;
    }
    /* Out of memory, or a system call that failed and left the page as it
     * was: the fault waits and is tried again, like one short of memory,
     * up to the domain's wait_timeout_ms (MV_POD_CRASH: crash now). */
    rc = resolve(d, gfn, cow);
    if (rc < 0 && rc != -EFAULT)
        out_of_memory(d, gfn, cow);
}

/* Drain a domain's userfaultfd (its copy-on-write one when `cow`).
 * Returns the number of faults served. */
static unsigned serve_domain(struct mv_host *h, uint32_t domid, bool cow)
{
    struct uffd_msg msgs[MV_MSGS_PER_READ];
    struct mv_domain *d = mv__domain_get_any(h, domid);
    unsigned served = 0;

    if (!d)
        return 0;
    for (;;) {
        ssize_t r = read(cow ? d->cow_uffd : d->uffd, msgs, sizeof(msgs));
        size_t n;

        if (r <= 0)
            break;
        n = (size_t)r / sizeof(msgs[0]);
        atomic_fetch_add(&h->faults, n); /* before any vCPU is woken */
        mv__mutex_lock(&d->lock);
        for (size_t i = 0; i < n; i++)
            if (msgs[i].event == UFFD_EVENT_PAGEFAULT)
                serve_fault(d, msgs[i].arg.pagefault.address,
                            msgs[i].arg.pagefault.flags, cow);
        mv__mutex_unlock(&d->lock);
        served += (unsigned)n;
    }
    mv__domain_put(d);
    return served;
}

/* ------------------------------------------------------------------------ */
/* faults that raised SIGBUS                                                 */

enum mv__fault_verdict mv__fault_in_thread(struct mv_domain *d, uint64_t gfn)
{
    enum mv__fault_verdict verdict = MV__FAULT_FORWARD;
    const struct mv__p2m_ops *ops;

    mv__mutex_lock(&d->lock);
    if (atomic_load(&d->dying) || d->state == MV_DOMAIN_CRASHED) {
        verdict = MV__FAULT_CRASHED;
    } else if (d->state == MV_DOMAIN_RUNNING && gfn < d->maxmem_pages &&
               !waits_its_turn(d)) {
        ops = mv__p2m_ops_of((enum mv__p2m_type)d->p2m[gfn]);
        if (ops->fault_fast && ops->fault_fast(d, gfn) == 0) {
            d->faults++;
            d->faults_in_thread++;
            atomic_fetch_add(&d->host->faults, 1);
            verdict = MV__FAULT_RETRY;
        }
    }
    mv__mutex_unlock(&d->lock);
    return verdict;
}

static void futex_wait(_Atomic uint32_t *word, uint32_t value)
{
    syscall(SYS_futex, word, FUTEX_WAIT_PRIVATE, value, NULL, NULL, 0);
}

static void futex_wake_all(_Atomic uint32_t *word)
{
    syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, INT32_MAX, NULL, NULL, 0);
}

enum mv__fault_verdict mv__fault_forward(struct mv_host *h, uint32_t domid,
                                         uint64_t address)
{
    struct mv__fault_request req = { .domid = domid, .address = address };
    uint32_t verdict;

    atomic_init(&req.verdict, MV__FAULT_WAITING);
    pthread_mutex_lock(&h->forward_lock);
    req.next = h->forward_new;
    h->forward_new = &req;
    atomic_fetch_add(&h->forward_pending, 1);
    pthread_mutex_unlock(&h->forward_lock);
    mv__fault_kick(h);
    while ((verdict = atomic_load(&req.verdict)) == MV__FAULT_WAITING)
        futex_wait(&req.verdict, MV__FAULT_WAITING);
    return (enum mv__fault_verdict)verdict;
}

/* The request is unlinked: give its verdict.  Its memory may be gone the
 * instant after the store; the wake only names the address. */
static void answer(struct mv_host *h, struct mv__fault_request *req,
                   enum mv__fault_verdict verdict)
{
    atomic_fetch_sub(&h->forward_pending, 1);
    atomic_store(&req->verdict, verdict);
    futex_wake_all(&req->verdict);
}

/* Whether a fault at gfn is held (domain lock held). */
static bool is_held(struct mv_domain *d, uint64_t gfn)
{
    for (size_t i = 0; i < d->held_count; i++)
        if (d->held[i].gfn == gfn && !d->held[i].cow)
            return true;
    return false;
}

/* Where a served request stands (domain lock held): WAITING while its fault
 * is held.  A page served and then reclaimed before the waiting thread ran
 * again (a sweep takes a page still zero) is served again. */
static enum mv__fault_verdict request_verdict(struct mv_domain *d, uint64_t address)
{
    uint64_t gfn;
    const struct mv__p2m_ops *ops;

    if (atomic_load(&d->dying) || d->state == MV_DOMAIN_CRASHED)
        return MV__FAULT_CRASHED;
    if (address < (uintptr_t)d->ram ||
        address >= (uintptr_t)d->ram + (d->maxmem_pages << MV_PAGE_SHIFT))
        return MV__FAULT_RETRY;
    gfn = (address - (uintptr_t)d->ram) >> MV_PAGE_SHIFT;
    ops = mv__p2m_ops_of((enum mv__p2m_type)d->p2m[gfn]);
    if (ops->present || ops->remapped)
        return MV__FAULT_RETRY;
    if (is_held(d, gfn))
        return MV__FAULT_WAITING;
    serve_fault(d, address, 0, false);
    if (atomic_load(&d->dying) || d->state == MV_DOMAIN_CRASHED)
        return MV__FAULT_CRASHED;
    ops = mv__p2m_ops_of((enum mv__p2m_type)d->p2m[gfn]);
    return ops->present || ops->remapped ? MV__FAULT_RETRY : MV__FAULT_WAITING;
}

/* Serve (`serve`) or look again at a list of requests taken off the host;
 * those still waiting go (back) onto forward_waiting. */
static void serve_requests(struct mv_host *h, struct mv__fault_request *list, bool serve)
{
    while (list) {
        struct mv__fault_request *req = list;
        struct mv_domain *d = mv__domain_get_any(h, req->domid);
        enum mv__fault_verdict verdict = MV__FAULT_RETRY;

        list = req->next;
        if (d) {
            mv__mutex_lock(&d->lock);
            if (serve) {
                atomic_fetch_add(&h->faults, 1);
                serve_fault(d, req->address, 0, false);
            }
            verdict = request_verdict(d, req->address);
            mv__mutex_unlock(&d->lock);
            mv__domain_put(d);
        }
        if (verdict != MV__FAULT_WAITING) {
            answer(h, req, verdict);
            continue;
        }
        pthread_mutex_lock(&h->forward_lock);
        req->next = h->forward_waiting;
        h->forward_waiting = req;
        pthread_mutex_unlock(&h->forward_lock);
    }
}

/* Take one of the host's request lists. */
static struct mv__fault_request *take_requests(struct mv_host *h,
                                               struct mv__fault_request **from)
{
    struct mv__fault_request *list;

    if (!atomic_load(&h->forward_pending))
        return NULL;
    pthread_mutex_lock(&h->forward_lock);
    list = *from;
    *from = NULL;
    pthread_mutex_unlock(&h->forward_lock);
    return list;
}

size_t mv__fault_held_blocking(struct mv_domain *d)
{
    mv__assert_held(&d->lock);
    for (size_t i = 0; i < d->held_count;) {
        struct mv__held_fault *f = &d->held[i];

        /* Resolved meanwhile (a neighbour's 2 MiB populate woke its vCPU):
         * drop it.  The wake is in case it was not: a vCPU woken for
         * nothing only faults again. */
        if (needs_nothing(d, f->gfn, 0, f->cow)) {
            resolve(d, f->gfn, f->cow);
            remove_held(d, i);
            continue;
        }
        i++;
    }
    return d->held_count;
}

/* gfn's page was just given to a held fault (lock held). */
static void note_woken(struct mv_domain *d, uint64_t gfn)
{
    /* gfn + 1: zero is an empty slot. */
    d->woken[d->woken_next++ % MV_WOKEN_KEEP] = gfn + 1;
}

bool mv__fault_just_woken(const struct mv_domain *d, uint64_t gfn)
{
    for (unsigned i = 0; i < MV_WOKEN_KEEP; i++)
        if (d->woken[i] == gfn + 1)
            return true;
    return false;
}

/*
 * Try a domain's held faults again (lock held): those held after `after_ns`
 * and no later than `upto_ns`, in the order they came.  The older ones
 * were tried earlier in this pass; the younger ones wait for the faults of
 * other domains held before them.  Without `may_take`, only look for one
 * past its deadline: an older fault of another domain waits for the host's
 * memory first.  Returns when the next fault, the first held after
 * `upto_ns`, was held (0: none, or the domain no longer runs).
 */
static uint64_t retry_held_locked(struct mv_domain *d, uint64_t now, bool may_take,
                                  uint64_t after_ns, uint64_t upto_ns)
{
    size_t i = 0;

    while (i < d->held_count && d->state == MV_DOMAIN_RUNNING) {
        struct mv__held_fault *f = &d->held[i];
        uint64_t gfn = f->gfn;
        bool cow = f->cow;
        int rc;

        if (f->since_ns <= after_ns) {
            i++;
            continue;
        }
        if (f->since_ns > upto_ns)
            return f->since_ns;
        rc = may_take ? resolve(d, gfn, cow) : -ENOMEM;
        if (rc == -EFAULT)
            return 0; /* crashed: every held fault was released */
        if (rc == 0) {
            if (f->deadline_ns)
                d->pod_wait_ns += now - f->since_ns;
            if (!cow)
                note_woken(d, gfn);
            remove_held(d, i);
            continue;
        }
        if (f->deadline_ns == 0) {
            /* Held for a pause (left as it is by a look that may not
             * take); now it waits for memory, as a fault held now. */
            if (!may_take) {
                i++;
                continue;
            }
            remove_held(d, i);
            out_of_memory(d, gfn, cow);
            continue;
        }
        if (now >= f->deadline_ns) {
            mv__domain_crash(d, "out of memory: gfn %#llx waited %u ms for a "
                             "page; %llu of %llu target pages hold data",
                             (unsigned long long)gfn, d->config.wait_timeout_ms,
                             (unsigned long long)d->populated,
                             (unsigned long long)d->target_pages);
            return 0;
        }
        i++;
    }
    return 0;
}

static bool waits_for_memory(const struct mv_domain *d)
{
    for (size_t i = 0; i < d->held_count; i++)
        if (d->held[i].deadline_ns)
            return true;
    return false;
}

/*
 * Try d's held faults of (after_ns, upto_ns] again (see retry_held_pass).
 * Below its target a fault takes the host's memory: not while an older
 * fault of another domain waits for it (`older_waits`).  Returns whether
 * one of d's faults still waits for the host's memory, which had no room
 * before or after they were tried; *next_ns: see retry_held_locked.
 */
static bool retry_domain(struct mv_domain *d, uint64_t now, bool older_waits,
                         uint64_t after_ns, uint64_t upto_ns, uint64_t *next_ns)
{
    bool waits = false;

    *next_ns = 0;
    mv__mutex_lock(&d->lock);
    if (d->held_count) {
        bool below_target = d->populated < d->target_pages;
        bool no_room = mv__machine_room(&d->host->machine) == 0;

        *next_ns = retry_held_locked(d, now, !(older_waits && below_target), after_ns,
                                     upto_ns);
        /* The host without room before or after: memory that came during
         * the retry is for these faults first (the kick that came with it
         * brings another pass). */
        no_room = no_room || mv__machine_room(&d->host->machine) == 0;
        waits = no_room && d->populated < d->target_pages &&
                d->state == MV_DOMAIN_RUNNING && waits_for_memory(d);
    }
    mv__mutex_unlock(&d->lock);
    return waits;
}

/*
 * Try every held fault again, fault by fault in the order they came,
 * whichever their domains, and none below its target after one that found
 * the host without memory: memory that frees up a little at a time goes to
 * the faults in the order they came to wait for it (the kick of whoever
 * frees it brings a pass), not to the domain created first, nor to the
 * younger faults of the domain whose fault waited longest, nor to a fault
 * that a pass reaches just after the memory came.  A domain's faults are
 * tried in runs: those held before the next domain's next fault.  Faults
 * held after the pass began wait for the next one (they were just found
 * waiting).
 */
static void retry_held_pass(struct mv_host *h)
{
    struct mv_domain **all;
    size_t n, waiting = 0;
    uint64_t now = mv__now_ns();
    bool older_waits = false;

    /* Nothing held: nothing to list.  Most kicks come so, from memory
     * freed while no fault waits for it; a fault held after this look is
     * tried at the next tick. */
    if (atomic_load(&h->held_total) == 0) {
        atomic_store(&h->memory_wanted, false);
        return;
    }
    if (mv__domain_get_all(h, &all, &n) < 0) {
        /* The held faults bring the next tick, and this pass with it. */
        mv__log(h, MV_LOG_WARN, "fault service: %s; held faults are tried again in "
                "%u ms", mv_last_error(), MV_HELD_TICK_MS);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        struct mv_domain *d = all[i];

        d->retry_tried_ns = 0;
        d->retry_next_ns = atomic_load(&d->held_since_ns);
        if (d->retry_next_ns)
            all[waiting++] = d;
        else
            mv__domain_put(d);
    }
    for (;;) {
        uint64_t oldest = UINT64_MAX, second = UINT64_MAX, upto;
        struct mv_domain *d = NULL;

        /* The domain of the oldest fault not tried yet; the next fault of
         * the others bounds its run. */
        for (size_t i = 0; i < waiting; i++) {
            uint64_t next = all[i]->retry_next_ns;

            if (!next || next > now)
                continue;
            if (next < oldest) {
                second = oldest;
                oldest = next;
                d = all[i];
            } else {
                second = MV_MIN(second, next);
            }
        }
        if (!d)
            break;
        upto = MV_MIN(second, now);
        older_waits |= retry_domain(d, now, older_waits, d->retry_tried_ns, upto,
                                    &d->retry_next_ns);
        d->retry_tried_ns = upto;
    }
    for (size_t i = 0; i < waiting; i++)
        mv__domain_put(all[i]);
    free(all);
    /* New faults wait their turn while one of these still waits. */
    atomic_store(&h->memory_wanted, older_waits);
}

/* One pass at a time: a thread that finds one under way leaves it the
 * work, and the pass runs again for it (so no request is lost between
 * the holder's last look and its unlock). */
static void retry_held(struct mv_host *h)
{
    atomic_store(&h->retry_wanted, true);
    while (atomic_load(&h->retry_wanted) && pthread_mutex_trylock(&h->retry_lock) == 0) {
        while (atomic_exchange(&h->retry_wanted, false))
            retry_held_pass(h);
        pthread_mutex_unlock(&h->retry_lock);
    }
}

/*
 * The wait for faults failed (it cannot, short of a bug or a kernel out of
 * memory).  A fault thread never gives up: vCPUs would wait forever.  Serve
 * every domain's userfaultfds without waiting, and, when none had a fault,
 * back off a tick before trying the wait again.  Returns faults served.
 */
MV_COLD static unsigned wait_failed(struct mv_host *h, int err)
{
    struct mv_domain **all;
    size_t n;
    unsigned served = 0;

    if (atomic_fetch_add(&h->fault_wait_errors, 1) % 1000 == 0)
        mv__log(h, MV_LOG_ERROR, "fault service: waiting for faults failed (%s); "
                "reading every userfaultfd in turn meanwhile", mv_strerror(err));
    /* No memory to list the domains: nothing is served, and the tick below
     * comes before the next try. */
    if (mv__domain_get_all(h, &all, &n) < 0)
        n = 0, all = NULL;
    for (size_t i = 0; i < n; i++) {
        served += serve_domain(h, all[i]->domid, false);
        served += serve_domain(h, all[i]->domid, true);
        mv__domain_put(all[i]);
    }
    free(all);
    if (!served) {
        struct timespec tick = { .tv_nsec = 1000000 };

        nanosleep(&tick, NULL);
    }
    return served;
}

static void *fault_thread(void *arg)
{
    struct mv__fault_thread *self = arg;
    struct mv_host *h = self->host;
    struct epoll_event events[16];
    /* A thread pinned to one CPU never spins: it would keep that CPU from
     * the vCPU it has just woken there. */
    uint64_t spin_ns = self->cpu >= 0 ? 0 : (uint64_t)h->config.fault_spin_us * 1000ull;
    uint64_t spin_until = 0, last_retry = 0;

    while (!atomic_load(&h->stopping)) {
        bool held = atomic_load(&h->held_total) > 0 ||
                    atomic_load(&h->forward_pending) > 0, kicked = false;
        int timeout = spin_until ? 0 : held ? MV_HELD_TICK_MS : -1;
        int n = mv__os_epoll_wait(self->epoll_fd, events, MV_ARRAY_SIZE(events), timeout);
        unsigned served = 0;
        uint64_t now;

        if (n < 0) {
            if (n != -EINTR)
                served = wait_failed(h, n);
            n = 0;
        }
        if (n > 0 && timeout != 0)
            atomic_fetch_add(&h->fault_wakeups, 1);
        for (int i = 0; i < n; i++) {
            if (events[i].data.u64 == MV_KICK_KEY) {
                uint64_t count;

                /* When stopping, leave the eventfd readable for the others. */
                if (atomic_load(&h->stopping))
                    break;
                (void)!read(h->kick_fd, &count, sizeof(count));
                kicked = true;
            } else if (events[i].data.u64 & MV_COW_KEY) {
                serve_domain(h, (uint32_t)events[i].data.u64, true);
            } else {
                served += serve_domain(h, (uint32_t)events[i].data.u64, false);
            }
        }
        /* Not only when kicked: a wait that failed sees no kick. */
        serve_requests(h, take_requests(h, &h->forward_new), true);
        now = mv__now_ns();
        if (served && spin_ns)
            spin_until = now + spin_ns;
        else if (spin_until && now >= spin_until)
            spin_until = 0;
        if (kicked || (held && now - last_retry >= MV_HELD_TICK_MS * 1000000ull)) {
            retry_held(h);
            serve_requests(h, take_requests(h, &h->forward_waiting), false);
            last_retry = now;
        }
    }
    /* A kick read just before the service stopped took the stop's kicks
     * with it (an eventfd read empties its count): leave one for the
     * threads still waiting, or one of them waits forever and stopping
     * the service with it. */
    mv__fault_kick(h);
    return NULL;
}

/* The n-th CPU of `set`. */
static int nth_cpu(const cpu_set_t *set, unsigned n)
{
    for (int cpu = 0; cpu < CPU_SETSIZE; cpu++)
        if (CPU_ISSET(cpu, set) && n-- == 0)
            return cpu;
    return -1;
}

static int start_thread(struct mv_host *h, struct mv__fault_thread *t)
{
    pthread_attr_t attr;
    cpu_set_t one;
    int rc = pthread_attr_init(&attr);

    if (rc)
        return -rc;
    if (t->cpu >= 0) {
        CPU_ZERO(&one);
        CPU_SET(t->cpu, &one);
        rc = pthread_attr_setaffinity_np(&attr, sizeof(one), &one);
    } else if (CPU_COUNT(&h->fault_cpus)) {
        rc = pthread_attr_setaffinity_np(&attr, sizeof(h->fault_cpus), &h->fault_cpus);
    }
    if (rc == 0)
        rc = -mv__os_thread_start(&t->thread, &attr, fault_thread, t);
    pthread_attr_destroy(&attr);
    return -rc;
}

int mv__fault_service_start(struct mv_host *h)
{
    bool per_cpu = h->config.fault_mode == MV_FAULT_PER_CPU;
    unsigned threads = h->config.fault_threads;
    int rc;

    h->kick_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (h->kick_fd < 0)
        return mv__fail(-errno, "eventfd failed");
    h->epoll_count = per_cpu ? threads : 1;
    h->epoll_fds = mv__malloc(h->epoll_count * sizeof(int));
    h->fault_threads = mv__calloc(threads, sizeof(*h->fault_threads));
    if (!h->epoll_fds || !h->fault_threads) {
        h->epoll_count = 0;
        return mv__fail(-ENOMEM, "no memory for fault threads");
    }
    for (unsigned i = 0; i < h->epoll_count; i++)
        h->epoll_fds[i] = -1;
    for (unsigned i = 0; i < h->epoll_count; i++) {
        struct epoll_event ev = { .events = EPOLLIN, .data.u64 = MV_KICK_KEY };

        h->epoll_fds[i] = epoll_create1(EPOLL_CLOEXEC);
        if (h->epoll_fds[i] < 0)
            return mv__fail(-errno, "epoll_create1 failed");
        if (epoll_ctl(h->epoll_fds[i], EPOLL_CTL_ADD, h->kick_fd, &ev) < 0)
            return mv__fail(-errno, "epoll_ctl failed");
    }
    for (unsigned i = 0; i < threads; i++) {
        struct mv__fault_thread *t = &h->fault_threads[i];

        t->host = h;
        t->epoll_fd = h->epoll_fds[per_cpu ? i : 0];
        t->cpu = per_cpu ? nth_cpu(&h->fault_cpus, i) : -1;
        rc = start_thread(h, t);
        if (rc < 0) {
            mv__fault_service_stop(h);
            return mv__fail(rc, "cannot start fault thread %u", i);
        }
        h->fault_thread_count++;
    }
    return 0;
}

void mv__fault_service_stop(struct mv_host *h)
{
    atomic_store(&h->stopping, true);
    for (unsigned i = 0; i < h->fault_thread_count; i++)
        mv__fault_kick(h);
    for (unsigned i = 0; i < h->fault_thread_count; i++)
        pthread_join(h->fault_threads[i].thread, NULL);
    h->fault_thread_count = 0;
    /* No thread serves them any more: let their accesses run again. */
    for (struct mv__fault_request **list = &h->forward_new;;
         list = &h->forward_waiting) {
        struct mv__fault_request *req = take_requests(h, list), *next;

        for (; req; req = next) {
            next = req->next;
            answer(h, req, MV__FAULT_RETRY);
        }
        if (list == &h->forward_waiting)
            break;
    }
    free(h->fault_threads);
    h->fault_threads = NULL;
    for (unsigned i = 0; i < h->epoll_count; i++)
        if (h->epoll_fds[i] >= 0)
            close(h->epoll_fds[i]);
    free(h->epoll_fds);
    h->epoll_fds = NULL;
    h->epoll_count = 0;
    if (h->kick_fd >= 0)
        close(h->kick_fd);
    h->kick_fd = -1;
}

int mv__fault_add_domain(struct mv_host *h, struct mv_domain *d)
{
    for (unsigned i = 0; i < h->epoll_count; i++) {
        struct epoll_event ev = { .events = EPOLLIN, .data.u64 = d->domid };
        struct epoll_event cow = { .events = EPOLLIN,
                                   .data.u64 = d->domid | MV_COW_KEY };

        if (epoll_ctl(h->epoll_fds[i], EPOLL_CTL_ADD, d->uffd, &ev) < 0 ||
            epoll_ctl(h->epoll_fds[i], EPOLL_CTL_ADD, d->cow_uffd, &cow) < 0) {
            int rc = -errno;

            mv__fault_remove_domain(h, d);
            return mv__fail(rc, "cannot add domain %u to the fault service", d->domid);
        }
    }
    return 0;
}

/* Also undoes a partial mv__fault_add_domain: a descriptor not in a set is
 * refused with ENOENT, harmlessly. */
void mv__fault_remove_domain(struct mv_host *h, struct mv_domain *d)
{
    for (unsigned i = 0; i < h->epoll_count; i++) {
        epoll_ctl(h->epoll_fds[i], EPOLL_CTL_DEL, d->uffd, NULL);
        epoll_ctl(h->epoll_fds[i], EPOLL_CTL_DEL, d->cow_uffd, NULL);
    }
}

/*
 * vcpu.c - faults resolved in the faulting vCPU's own thread: the SIGBUS
 * handler, vCPU registration, and the table in which the handler finds the
 * domain a faulting address belongs to.
 *
 *   vCPU thread (a registered vCPU of d)
 *   store to guest RAM --> kernel: UFFD_FEATURE_SIGBUS --> SIGBUS here
 *     --> domain lock --> the gfn's p2m owner's fault_fast: a free page (or
 *     a paged page's bytes) mapped with one ioctl --> return from the
 *     handler: the store runs again
 *
 * Today's other path costs two thread switches per fault (the vCPU blocks in
 * the kernel, a fault thread wakes, serves, wakes the vCPU); this one costs
 * a signal delivery and a return, which is KVM's memory-fault exit resolved
 * by the vCPU's own thread.  A domain takes it (d->in_thread) when its RAM is
 * in this process, the host's fault_path is MV_FAULT_PATH_AUTO, the kernel
 * offers UFFD_FEATURE_SIGBUS, its userfaultfd has no synchronous
 * write-protect faults (which would raise SIGBUS too, with no way to tell
 * them from missing ones), and a slot of this table is free.  The feature
 * is per userfaultfd, so every thread's fault on that RAM raises SIGBUS; the
 * handler resolves it in the thread only when
 *   - the thread is a registered vCPU of that domain (mv_vcpu_enter), and
 *   - it holds no library lock (mv__locks_held() == 0: a library call that
 *     touches guest RAM must not take the domain lock again), and
 *   - the domain is running and the owner's fault_fast can serve it.
 * Every other fault is handed to the fault threads (mv__fault_forward),
 * which serve it as they serve a userfaultfd message -- pause, PoD wait and
 * crash policies, sweeps, failures and their messages all stay there -- and
 * the thread waits in the handler until it is served: today's path, with a
 * futex instead of the kernel's wait queue.  A domain that crashed or is
 * being destroyed makes the signal the embedder's (its RAM raises SIGBUS
 * for good), and the handler passes it on to the action it replaced.
 *
 * The handler runs at a synchronous fault on guest RAM, so it interrupts
 * only code that was touching guest RAM; it takes the domain lock (never
 * held there, see above) and at most the p2m owner's own lock under it,
 * makes system calls and atomics, preserves errno and the thread's error
 * message (mv_last_error), and allocates nothing
 * on the in-thread path (a paged page's copy in tmem is freed there: the
 * interrupted code was touching guest RAM, never inside the allocator).
 *
 * Table: MV_VCPU_SLOTS slots {start, end, domain, generation, users}.  A
 * domain claims one before its userfaultfd exists (no slot: the other
 * path), publishes its RAM's range once mapped and releases the slot when
 * it is freed.  A handler counts itself a user of the slot before it looks
 * at the domain, for as long as it needs the domain or its host (a fault
 * handed over included); release clears the range, then waits until the
 * slot has no user, so a handler never sees a freed domain or host.  The
 * wait ends: a fault handed over for a domain no longer in the host's
 * table is answered at once by a fault thread (the service stops only
 * after every domain is freed).  A vCPU remembers (slot, generation), so a
 * slot reused by another domain is not taken for its own.
 *
 * Guarded reads (mv__ram_guard): the library reads a domain's RAM through
 * its own mapping holding the domain lock (the sharing scanner).  A page the
 * kernel took out of the page table meanwhile raises SIGBUS in that thread,
 * which no fault thread could serve while the lock is held; the handler
 * jumps back to the read's guard instead, with the signal mask the read ran
 * with, before it looks at anything else.  The guard is the thread's own
 * (thread-local), so only the faulting thread's reads are affected.
 *
 * One SIGBUS handler: the built-in guests' (a crashed domain's vCPU leaves
 * its workload) is a hook this one calls for a SIGBUS it did not resolve,
 * before passing it on; os.c remembers one replaced action per signal, so
 * two library handlers chaining to each other would end in the default
 * action.
 *
 * Locking: slots_lock serializes claims and releases (taken before os.c's
 * signal lock); the handler reads the slots with atomics only.
 */
#include "internal.h"

#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <ucontext.h>

#define MV_VCPU_SLOTS 256

struct vcpu_slot {
    _Atomic uintptr_t start;
    _Atomic uintptr_t end;                 /* 0: free or not published */
    _Atomic(struct mv_domain *) domain;    /* NULL: free */
    _Atomic uint64_t generation;
    atomic_uint users;                     /* handlers using the domain */
};

static struct vcpu_slot slots[MV_VCPU_SLOTS];
static _Atomic uint64_t next_generation = 1;
static pthread_mutex_t slots_lock = PTHREAD_MUTEX_INITIALIZER;

/* The calling thread's registration: the slot of the domain it is a vCPU
 * of and that slot's generation then, or slot -1. */
static _Thread_local int vcpu_slot = -1;
static _Thread_local uint64_t vcpu_generation;

/* The calling thread's read of guest RAM under a guard, or NULL. */
static _Thread_local struct mv__ram_guard *ram_guard;

/* The built-in guests' word on a SIGBUS the library did not resolve. */
static _Atomic(void (*)(int, siginfo_t *, void *)) crash_hook;

static void on_sigbus(int sig, siginfo_t *info, void *context)
{
    void (*hook)(int, siginfo_t *, void *);

    if (mv_sigbus_handled(sig, info, context))
        return;
    hook = atomic_load(&crash_hook);
    if (hook)
        hook(sig, info, context);
    mv__os_signal_chain(sig, info, context);
}

int mv__vcpu_sigbus_install(void (*hook)(int, siginfo_t *, void *))
{
    if (hook)
        atomic_store(&crash_hook, hook);
    return mv__os_signal_install(SIGBUS, on_sigbus, 0);
}

bool mv__vcpu_domain_claim(struct mv_domain *d)
{
    struct mv_host *h = d->host;
    int found = -1, rc;

    d->sigbus_slot = -1;
    if (d->vmm || h->config.fault_path != MV_FAULT_PATH_AUTO ||
        !(h->features.uffd_features & UFFD_FEATURE_SIGBUS))
        return false;
    pthread_mutex_lock(&slots_lock);
    /* Again at every claim: the application may have replaced it since. */
    rc = mv__vcpu_sigbus_install(NULL);
    for (int i = 0; rc == 0 && i < MV_VCPU_SLOTS && found < 0; i++) {
        if (atomic_load(&slots[i].domain) == NULL) {
            atomic_store(&slots[i].start, 0);
            atomic_store(&slots[i].end, 0);
            atomic_store(&slots[i].generation, atomic_fetch_add(&next_generation, 1));
            atomic_store(&slots[i].domain, d);
            found = i;
        }
    }
    pthread_mutex_unlock(&slots_lock);
    if (rc < 0)
        mv__log(h, MV_LOG_WARN, "cannot install the SIGBUS handler (%s): "
                "faults go to the fault threads", mv_strerror(rc));
    else if (found < 0)
        mv__log(h, MV_LOG_INFO, "more than %d domains resolve faults in their "
                "vCPUs' threads: the next go to the fault threads", MV_VCPU_SLOTS);
    d->sigbus_slot = found;
    return found >= 0;
}

void mv__vcpu_domain_publish(struct mv_domain *d)
{
    struct vcpu_slot *s;

    if (d->sigbus_slot < 0)
        return;
    s = &slots[d->sigbus_slot];
    atomic_store(&s->start, (uintptr_t)d->ram);
    atomic_store(&s->end, (uintptr_t)d->ram + (d->maxmem_pages << MV_PAGE_SHIFT));
}

void mv__vcpu_domain_release(struct mv_domain *d)
{
    struct vcpu_slot *s;

    if (d->sigbus_slot < 0)
        return;
    s = &slots[d->sigbus_slot];
    pthread_mutex_lock(&slots_lock);
    atomic_store(&s->end, 0);
    atomic_store(&s->start, 0);
    /* A handler that found the slot before may still use the domain. */
    while (atomic_load(&s->users))
        sched_yield();
    atomic_store(&s->domain, NULL);
    pthread_mutex_unlock(&slots_lock);
    d->sigbus_slot = -1;
}

static bool slot_covers(int i, uintptr_t addr)
{
    return addr >= atomic_load(&slots[i].start) && addr < atomic_load(&slots[i].end);
}

/* The slot whose RAM holds addr, the caller's own first, with the caller
 * counted as its user (slot_leave); -1: none. */
static int slot_enter(uintptr_t addr)
{
    int i = vcpu_slot >= 0 && slot_covers(vcpu_slot, addr) ? vcpu_slot : -1;

    for (int k = 0; i < 0 && k < MV_VCPU_SLOTS; k++)
        if (slot_covers(k, addr))
            i = k;
    if (i < 0)
        return -1;
    atomic_fetch_add(&slots[i].users, 1);
    /* Released meanwhile: its domain may be gone. */
    if (!slot_covers(i, addr) || !atomic_load(&slots[i].domain)) {
        atomic_fetch_sub(&slots[i].users, 1);
        return -1;
    }
    return i;
}

static void slot_leave(int i)
{
    atomic_fetch_sub(&slots[i].users, 1);
}

bool mv_sigbus_handled(int sig, siginfo_t *info, void *context)
{
    enum mv__fault_verdict verdict = MV__FAULT_FORWARD;
    struct mv__error_kept saved_error;
    struct mv_domain *d;
    uintptr_t addr;
    int saved_errno = errno, i;

    if (sig != SIGBUS || !info || info->si_code != BUS_ADRERR)
        return false;
    addr = (uintptr_t)info->si_addr;
    /* The library's own guarded read: back to its guard, with the signal
     * mask the read ran with (the guard did not save it: that costs a
     * system call at every read). */
    if (ram_guard && addr >= ram_guard->start && addr < ram_guard->end) {
        struct mv__ram_guard *guard = ram_guard;
        sigset_t unblock;

        ram_guard = NULL;
        if (context) {
            pthread_sigmask(SIG_SETMASK, &((ucontext_t *)context)->uc_sigmask, NULL);
        } else {
            sigemptyset(&unblock);
            sigaddset(&unblock, SIGBUS);
            pthread_sigmask(SIG_UNBLOCK, &unblock, NULL);
        }
        siglongjmp(guard->env, 1);
    }
    i = slot_enter(addr);
    if (i < 0)
        return false;
    d = atomic_load(&slots[i].domain);
    mv__error_keep(&saved_error);
    mv__os_signal_context(true);
    if (i == vcpu_slot && atomic_load(&slots[i].generation) == vcpu_generation &&
        mv__locks_held() == 0)
        verdict = mv__fault_in_thread(d, (addr - (uintptr_t)d->ram) >> MV_PAGE_SHIFT);
    if (verdict == MV__FAULT_FORWARD)
        verdict = mv__fault_forward(d->host, d->domid, addr);
    mv__os_signal_context(false);
    slot_leave(i);
    mv__error_restore(&saved_error);
    errno = saved_errno;
    return verdict == MV__FAULT_RETRY;
}

void mv__ram_guard_arm(struct mv__ram_guard *guard, const void *start, size_t length)
{
    guard->start = (uintptr_t)start;
    guard->end = (uintptr_t)start + length;
    /* The handler must see the range before the reads: only this thread's
     * own faults look at it, so a compiler barrier is enough. */
    atomic_signal_fence(memory_order_seq_cst);
    ram_guard = guard;
    atomic_signal_fence(memory_order_seq_cst);
}

void mv__ram_guard_disarm(void)
{
    atomic_signal_fence(memory_order_seq_cst);
    ram_guard = NULL;
}

int mv_vcpu_enter(mv_host *host, uint32_t domid)
{
    struct mv_domain *d = mv__domain_get(host, domid);
    int rc;

    mv__clear_error();
    if (!d)
        return -ESRCH;
    vcpu_slot = -1;
    if (d->sigbus_slot >= 0) {
        vcpu_generation = atomic_load(&slots[d->sigbus_slot].generation);
        vcpu_slot = d->sigbus_slot;
    }
    rc = d->in_thread;
    mv__domain_put(d);
    return rc;
}

void mv_vcpu_exit(void)
{
    vcpu_slot = -1;
}

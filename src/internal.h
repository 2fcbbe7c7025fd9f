/*
 * internal.h - types and functions shared by the library's subsystems.
 *
 * Layout of the library (one subsystem per file):
 *   error.c    error words, per-thread error messages, logging
 *   lock.c     mutexes with a lock order checked in debug builds
 *   os.c       every system call on memory and userfaultfds, fault injection
 *   probe.c    kernel feature probing, opening userfaultfds
 *   machine.c  machine memory: the memfd, the frame allocator (buddy)
 *              and the host budget
 *   scrub.c    frames given back: scrubbed at once, or queued for the
 *              background scrubber (MV_SCRUB_BACKGROUND)
 *   host.c     host life cycle, host statistics and audit
 *   domain.c   domains: table, life cycle, pause, p2m queries, reservations,
 *              crash, audit
 *   ram.c      where a domain's RAM is mapped (the second-stage page
 *              table): in this process, or in a VMM's through its ops
 *   fault.c    the fault service: threads, held faults, faults handed
 *              over by the SIGBUS handler
 *   vcpu.c     faults resolved in the faulting vCPU's own thread: the
 *              SIGBUS handler, vCPU registration, the table of domains
 *              whose faults raise SIGBUS
 *   pod.c      populate-on-demand: populate, zero sweep, target
 *   logdirty.c dirty logging: WP_ASYNC + PAGEMAP_SCAN, synchronous
 *              write-protect, mprotect + SIGSEGV; the shared dirty bitmap
 *   (the built-in guests -- vCPU threads, workloads, content oracle,
 *   balloon driver -- are not part of the library: guest/, libmemvisor-guest,
 *   a mechanism registered with mv__mechanism_register)
 *   share/     copy-on-write sharing, one idea per file (share/share.h
 *              has the map): shared frames, reverse maps, the content
 *              index, CoW breaks, kernel copies, clones, the sharing audit
 *   share/scan.c  the sharing scanner: hints, candidates, volatile pages,
 *              budget
 *   tmem/      transcendent memory, one idea per file (tmem/tmem.h has the
 *              map): pools and the guest interface, the compressed page
 *              store, giving memory back, host paging
 *   vmm/       VMMs in other processes: the hand-over's messages
 *              (handover.h), memvisor's side of it (server.c), Firecracker's
 *              snapshot hand-over (firecracker.c); agent.c is not part of
 *              the library but libmemvisor-agent.so, loaded into a VMM
 *
 * Lock order (a thread may take a lock only if it holds none of a higher or
 * equal level; checked at run time when MV_DEBUG_LOCKS is defined):
 *
 *   MV_LOCK_HOST (host->domains_lock, a rwlock: not level-checked, taken
 *                 briefly to look domains up, never held across a fault)
 *     < MV_LOCK_SETTLE  (share->settler_lock: only the settler's sleep)
 *     < MV_LOCK_SCAN    (scanner->scan_lock: one scan step at a time)
 *     < MV_LOCK_HINTS   (scanner->lock: hints, scanner config and stats)
 *     < MV_LOCK_GUEST   (guest->lock)
 *     < MV_LOCK_DOMAIN  (domain->lock: p2m, counters, state, held faults)
 *     < MV_LOCK_SHARE   (share->lock: shared frames, reverse maps, index)
 *     < MV_LOCK_TMEM    (tmem->lock: every tmem record; the budget-short
 *                        hook takes it from charge paths holding a domain
 *                        or the share lock; it allocates frames under it)
 *     < MV_LOCK_MACHINE (machine->lock: the frame allocator)
 *     < MV_LOCK_SCRUB   (machine->scrub.lock: frames waiting to be scrubbed;
 *                        waited on from charge and allocation paths)
 *
 * No thread holds two domain locks: sharing between two domains locks the
 * one whose mappings change and reads the other's shared entries under the
 * share lock, which guards them.
 *
 * The host budget is lock-free (atomics).  A thread touching guest RAM (a
 * vCPU) must hold no lock: its fault is served by a fault thread that takes
 * the domain lock, or by the SIGBUS handler in the thread itself, which
 * takes the domain lock only when the thread holds no library lock
 * (mv__locks_held) and otherwise hands the fault to a fault thread.
 * host->forward_lock (a plain mutex, a leaf) guards the faults handed over.
 */
#ifndef MV_INTERNAL_H
#define MV_INTERNAL_H

#include "compat.h"
#include "memvisor.h"

#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/types.h>

#define MV_UNUSED __attribute__((unused))
#define MV_COLD __attribute__((cold, noinline))
#define MV_PRINTF(f, a) __attribute__((format(printf, f, a)))
#define mv_likely(x) __builtin_expect(!!(x), 1)
#define mv_unlikely(x) __builtin_expect(!!(x), 0)
#define MV_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define MV_MIN(a, b) ((a) < (b) ? (a) : (b))
#define MV_MAX(a, b) ((a) > (b) ? (a) : (b))

#define MV_MIB (1024ull * 1024ull)
#define MV_GIB (1024ull * MV_MIB)

/* ------------------------------------------------------------------------ */
/* error.c                                                                   */

/* Record a message for mv_last_error() and return `err` (negative errno). */
int mv__fail(int err, const char *fmt, ...) MV_PRINTF(2, 3);
/* Clear the calling thread's last error message. */
void mv__clear_error(void);
/* The calling thread's message, kept across code that must leave it as it
 * was: a fault resolved in a SIGBUS handler interrupts a thread that may not
 * have read the message of its last call yet. */
#define MV__ERROR_MAX 256
struct mv__error_kept {
    char message[MV__ERROR_MAX];
};
void mv__error_keep(struct mv__error_kept *kept);
void mv__error_restore(const struct mv__error_kept *kept);
void mv__log(struct mv_host *host, enum mv_log_level level, const char *fmt, ...)
    MV_PRINTF(3, 4);
uint64_t mv__now_ns(void);

/* ------------------------------------------------------------------------ */
/* lock.c                                                                    */

enum mv__lock_level {
    MV_LOCK_SETTLE = 0,     /* share->settler_lock: the settler's sleep */
    MV_LOCK_SCAN = 1,
    MV_LOCK_HINTS = 2,
    MV_LOCK_GUEST = 3,
    MV_LOCK_DOMAIN = 4,
    MV_LOCK_SHARE = 5,
    MV_LOCK_TMEM = 6,
    MV_LOCK_MACHINE = 7,
    MV_LOCK_SCRUB = 8,      /* machine->scrub.lock: the scrub queue */
};

struct mv__mutex {
    pthread_mutex_t mutex;
    enum mv__lock_level level;
};

void mv__mutex_init(struct mv__mutex *m, enum mv__lock_level level);
/* The same, for a lock taken often and held briefly by threads on other
 * CPUs: a taker spins a little before it sleeps, since on a virtual
 * machine the wakeup of a sleeping taker costs more than the holder's
 * whole critical section. */
void mv__mutex_init_spinning(struct mv__mutex *m, enum mv__lock_level level);
void mv__mutex_destroy(struct mv__mutex *m);
void mv__mutex_lock(struct mv__mutex *m);
void mv__mutex_unlock(struct mv__mutex *m);
/* Wait on `cond`, releasing `m` meanwhile; `deadline_ns` 0 = forever.
 * Returns false on timeout. */
bool mv__cond_wait(pthread_cond_t *cond, struct mv__mutex *m,
                   uint64_t deadline_ns);
void mv__cond_init(pthread_cond_t *cond);
/* Debug builds: abort unless the calling thread holds `m`. */
void mv__assert_held(struct mv__mutex *m);
/* How many mv__mutex locks the calling thread holds (every build): the
 * SIGBUS handler resolves a fault in the thread only when it holds none. */
unsigned mv__locks_held(void);

/* ------------------------------------------------------------------------ */
/* os.c: every system call on memory and userfaultfds                        */

enum mv__os_op {
    MV_OS_MEMFD,
    MV_OS_MMAP,
    MV_OS_PUNCH,
    MV_OS_ZAP,
    MV_OS_UFFD_OPEN,
    MV_OS_UFFD_REGISTER,
    MV_OS_UFFD_ZEROPAGE,
    MV_OS_UFFD_ZEROPAGE_MIDWAY, /* a multi-page zeropage fails half-way */
    MV_OS_UFFD_CONTINUE,
    MV_OS_UFFD_WAKE,
    MV_OS_UFFD_WRITEPROTECT,
    MV_OS_PAGEMAP_SCAN,
    MV_OS_READ,
    MV_OS_WRITE,
    MV_OS_COPY,
    MV_OS_EPOLL_WAIT,
    MV_OS_MPROTECT,
    MV_OS_SIGACTION,            /* installing a signal handler */
    MV_OS_UFFD_COPY,            /* UFFDIO_COPY: filling a page with bytes */
    MV_OS_UFFD_UNREGISTER,
    MV_OS_DOMAIN_LIST,          /* the memory for a list of the host's domains */
    MV_OS_ALLOC,                /* any heap or table allocation of the library */
    MV_OS_THREAD,               /* starting a thread of the library's */
    MV_OS_COUNT_MAPPINGS,       /* reading /proc/self/maps to count mappings */
    MV_OS_OP_COUNT,
};

/*
 * Fault injection for tests: the next `count` calls of `op`, after `skip`
 * successful ones, fail with -`err`.  count 0 disarms.
 */
void mv__os_inject(enum mv__os_op op, int err, unsigned skip, unsigned count);
/* For an operation carried out elsewhere (a VMM's mmap or madvise): the
 * injected failure of `op` to report instead of doing it, or 0. */
int mv__os_injected(enum mv__os_op op);
/* Failures of `op` still armed: 0 once the injected ones have happened. */
unsigned mv__os_injection_left(enum mv__os_op op);

int mv__os_memfd(const char *name, uint64_t size);
/* mmap(MAP_SHARED) of `fd` at `offset`; at `fixed` when non-NULL.  Returns
 * the address or NULL with errno set. */
void *mv__os_map_shared(void *fixed, size_t length, int fd, uint64_t offset,
                        int prot);
/* mmap(MAP_PRIVATE | MAP_FIXED) of `fd` at `offset`: writes through it
 * never reach the file.  Returns the address or NULL with errno set. */
void *mv__os_map_private(void *fixed, size_t length, int fd, uint64_t offset);
/* Reserve `length` bytes of address space aligned to `align` (a power of
 * two), inaccessible until mapped over.  NULL with errno set on failure. */
void *mv__os_reserve_aligned(size_t length, size_t align);
int mv__os_unmap(void *addr, size_t length);
/* Return the pages [offset, offset+length) of `fd` to the host, zeroed. */
int mv__os_punch(int fd, uint64_t offset, uint64_t length);
/* Read exactly `length` bytes of `fd` at `offset`. */
int mv__os_read(int fd, void *buf, uint64_t offset, uint64_t length);
/* Write exactly `length` bytes to `fd` at `offset`. */
int mv__os_write(int fd, const void *buf, uint64_t offset, uint64_t length);
/* Copy `length` bytes of `fd` from `from` to `to` inside the kernel. */
int mv__os_copy(int fd, uint64_t from, uint64_t to, uint64_t length);
/* The mappings of this process (lines of /proc/self/maps) into *count: 0,
 * or a negative errno and *count untouched. */
int mv__os_count_mappings(uint64_t *count);
/* Drop the page table entries of a shared mapping (pages stay in memory). */
int mv__os_zap(void *addr, size_t length);
/* Reserve `length` bytes of zero-filled anonymous memory for the library's
 * own tables; pages take memory only when first written.  NULL with errno
 * set on failure (injected as MV_OS_ALLOC).  Released with mv__os_unmap. */
void *mv__os_table_alloc(size_t length);
/* Give [addr, addr + length) of such a table its memory now, in one call
 * (MADV_POPULATE_WRITE, Linux 5.14), for a table about to be written all
 * over.  Only a speed-up: where it fails (an older kernel, no memory), the
 * writes take the pages as they come, and report nothing either. */
void mv__os_prefault_write(void *addr, size_t length);
/* The same for a table reserved far beyond what it will likely use: backed
 * by a memfd, so that no overcommit mode charges the reservation, only the
 * pages touched (as guest RAM is).  Not inherited by a child process. */
void *mv__os_table_reserve(size_t length);

/* The library's heap: malloc, calloc, realloc and aligned_alloc, each of
 * which fails on demand as MV_OS_ALLOC (NULL, errno ENOMEM), so that the
 * tests reach every allocation's failure path.  A failed mv__realloc
 * leaves the old block as it was.  Freed with free(). */
void *mv__malloc(size_t size);
void *mv__calloc(size_t count, size_t size);
void *mv__realloc(void *old, size_t size);
void *mv__aligned_alloc(size_t align, size_t size);
/* pthread_create, failing on demand as MV_OS_THREAD: 0 or a negative
 * errno (-EAGAIN when injected, as when the process has too many). */
int mv__os_thread_start(pthread_t *thread, const pthread_attr_t *attr,
                        void *(*main)(void *), void *arg);
/* For an allocation made by another library (a compression context): true
 * when the allocation is to fail as if that library had run out. */
bool mv__alloc_fails(void);
/* The calling thread enters (true) or leaves (false) a signal handler of
 * the library's.  There every allocation fails (ENOMEM), and is counted:
 * malloc is not async-signal-safe, and a handler that interrupted it would
 * deadlock.  The fault resolved there must never allocate; one that tried
 * is handed to a fault thread like any other that cannot be resolved. */
void mv__os_signal_context(bool enter);
/* Allocations refused in a signal handler since the process started. */
uint64_t mv__os_allocations_in_signal(void);

/* Open a non-blocking userfaultfd: /dev/userfaultfd, else the syscall, else
 * the syscall restricted to user-mode faults.  `how` receives 0, 1 or 2. */
int mv__os_uffd_open(int *how);
int mv__os_uffd_api(int uffd, uint64_t features, uint64_t *offered,
                    uint64_t *ioctls);
int mv__os_uffd_register(int uffd, void *addr, size_t length, uint64_t mode,
                         uint64_t *ioctls);
int mv__os_uffd_unregister(int uffd, void *addr, size_t length);
/* Populate [addr, addr+length) with zeroed pages and wake the faulters.
 * -EEXIST when a page is already mapped there (nothing after it is done). */
int mv__os_uffd_zeropage(int uffd, void *addr, size_t length);
/* The same, telling in *done how many bytes from addr were populated (and
 * their faulters woken: guests may have written them) when it fails. */
int mv__os_uffd_zeropage_some(int uffd, void *addr, size_t length, size_t *done);
/* Fill the missing page at addr (page-aligned, one page) with the bytes at
 * src and wake its faulters; write-protected when `wp`.  -EEXIST when a
 * page is there already, -EAGAIN when the range is changing (retry). */
int mv__os_uffd_copy(int uffd, void *addr, const void *src, bool wp);
/* Map the existing page-cache pages of [addr, addr+length) and wake. */
int mv__os_uffd_continue(int uffd, void *addr, size_t length);
int mv__os_uffd_wake(int uffd, void *addr, size_t length);
/* Write-protect (or unprotect, which also wakes) [addr, addr+length). */
int mv__os_uffd_writeprotect(int uffd, void *addr, size_t length, bool protect);
/* PAGEMAP_SCAN over `arg` on /proc/self/pagemap `fd`: regions found or
 * a negative errno. */
long mv__os_pagemap_scan(int fd, struct pm_scan_arg *arg);
/* epoll_wait on the fault service's set: events, or a negative errno. */
int mv__os_epoll_wait(int epoll_fd, struct epoll_event *events, int max, int timeout_ms);

/* mprotect [addr, addr+length) to `prot`: 0 or a negative errno (errno set
 * too).  Async-signal-safe, injection included. */
int mv__os_mprotect(void *addr, size_t length, int prot);

/*
 * Signal handlers the library needs (SIGBUS for crashed vCPUs, SIGSEGV for
 * mprotect dirty logging), one per signal.  mv__os_signal_install puts
 * `handler` in place unless it is there already (the application may have
 * replaced it since), remembering the action it replaces; 0 or a negative
 * errno, and then the handler is not installed.  Callers need not
 * serialize.  mv__os_signal_chain, called from the handler for a signal
 * that is not the library's, passes it on to that remembered action, or to
 * the default action, never loops between the two and preserves errno.  The
 * remembered action is published whole before the handler goes in and is
 * never rewritten in place, so a handler reads it safely at any time.
 */
int mv__os_signal_install(int sig, void (*handler)(int, siginfo_t *, void *), int flags);
void mv__os_signal_chain(int sig, siginfo_t *info, void *context);

/* ------------------------------------------------------------------------ */
/* probe.c                                                                   */


/* Open a userfaultfd for a domain: MISSING and MINOR shmem faults plus
 * `features`.  The range ioctls are checked
 * at register time.  Returns the fd or a negative errno. */
int mv__uffd_create(uint64_t features);
/* The same for a userfaultfd opened elsewhere (handed over by a VMM): the
 * handshake, closing `fd` when it fails.  fd or a negative errno. */
int mv__uffd_adopt(int fd, uint64_t features);

/* ------------------------------------------------------------------------ */
/* machine.c                                                                 */

/*
 * Frames are handed out by a binary buddy allocator over the frame space
 * [0, machine_pages).  A domain takes one naturally aligned block big enough
 * for its maxmem (the unused tail goes straight back), so that gfn -> mfn is
 * base + gfn.  Allocating frames does not use memory; populating them does,
 * and that is what the budget counts.
 */
#define MV_BUDDY_MAX_ORDER 30

struct mv__free_list {
    uint64_t *starts; /* first frame of each free block of this order */
    size_t count;
    size_t capacity;
};

/* A run of frames given back (scrub.c). */
struct mv__release {
    uint64_t first, pages;
    uint64_t uncharge;       /* pages of the budget they hold until scrubbed */
    unsigned flags;          /* MV__RELEASE_* */
};
#define MV__RELEASE_SCRUB 1u     /* punch them first */
#define MV__RELEASE_GIVE_BACK 2u /* then back to the frame allocator */

/* The background scrubber (scrub.c); zero and idle under MV_SCRUB_SYNC. */
struct mv__scrubber {
    struct mv__mutex lock;            /* MV_LOCK_SCRUB: everything below */
    pthread_cond_t work;              /* the scrubber waits for releases */
    pthread_cond_t done;              /* waiters for an entry to finish */
    pthread_t thread;
    bool running, stop;
    bool held;                        /* tests: the scrubber takes nothing */
    bool in_flight;                   /* queue[head] is being released */
    struct mv__release *queue;        /* FIFO ring: queue[head..head+count) */
    size_t head, count, capacity;
    uint64_t pending_pages;           /* queued or in flight */
    uint64_t pending_charged;         /* their charge, still counted */
    uint64_t pending_give_back;       /* frames the allocator waits for */
    uint64_t scrubbed_pages;          /* scrubbed by the scrubber */
    uint64_t failures;                /* scrubs that fell back to zeros */
    unsigned waiters;                 /* threads in mv__scrub_wait */
    struct mv_host *host;             /* for the log and the fault kick */
};

struct mv__machine {
    int memfd;
    const uint8_t *view;     /* the memfd mapped read-only: see machine.c */
    uint64_t pages;          /* frame space */
    struct mv__mutex lock;   /* protects free lists and free_pages */
    struct mv__free_list free[MV_BUDDY_MAX_ORDER + 1];
    uint64_t *free_lists;     /* the lists' entries: one table for all */
    size_t free_lists_bytes;
    uint64_t free_pages;
    _Atomic uint64_t budget_pages;
    _Atomic uint64_t populated_pages;
    _Atomic uint64_t peak_populated_pages;
    /* Around every change of populated_pages, and every move of charged
     * pages between holders: charge_changes is bumped before it,
     * charge_done after.  An audit that sums the budget against
     * the domains knows its view held still when none was under way as it
     * began (the two equal) and none began until it ended (charge_changes
     * unchanged).  One bump after the change was not enough: a sum could
     * read the new count before the bump and pass as quiet. */
    _Atomic uint64_t charge_changes;
    _Atomic uint64_t charge_done;
    struct mv__scrubber scrub;
};

int mv__machine_init(struct mv__machine *m, uint64_t machine_bytes,
                     uint64_t budget_pages);
void mv__machine_fini(struct mv__machine *m);
/* Allocate a block of at least `pages` frames, aligned to its order. */
/* 0 when a run of `pages` frames could ever be allocated, else -E2BIG with
 * a message (larger than the machine or its allocator's largest order). */
int mv__machine_fits(const struct mv__machine *m, uint64_t pages);
int mv__machine_alloc(struct mv__machine *m, uint64_t pages, uint64_t *first);
void mv__machine_free(struct mv__machine *m, uint64_t first, uint64_t pages);
/* Charge `pages` populated frames to the budget; false when over it. */
bool mv__machine_charge(struct mv__machine *m, uint64_t pages);
void mv__machine_uncharge(struct mv__machine *m, uint64_t pages);
/* Charge without the budget check, for pages given back at once (a move). */
void mv__machine_charge_anyway(struct mv__machine *m, uint64_t pages);
/* Around a change of who holds charged pages that may leave the count as
 * it was (a domain's pages handed to a mechanism): bracketed like a
 * change of the count, so that an audit's sum across it is not taken for
 * a quiet one. */
void mv__machine_move_begin(struct mv__machine *m);
void mv__machine_move_end(struct mv__machine *m);
/* Pages the budget has room for now (0 when over it). */
uint64_t mv__machine_room(struct mv__machine *m);
/* Frame mfn in place, read-only.  Only for a frame known to hold memory
 * (populated, under the lock that keeps it so): a hole read there would be
 * allocated. */
static inline const uint8_t *mv__machine_frame(const struct mv__machine *m, uint64_t mfn)
{
    return m->view + (mfn << MV_PAGE_SHIFT);
}
/* Copy frames [mfn, mfn + pages) into buf; holes read as zeros. */
int mv__machine_read(struct mv__machine *m, uint64_t mfn, uint64_t pages, void *buf);
/*
 * What reading a populated frame and checking it for zeros costs on this
 * host, ns a page: in place through a fresh read-only mapping (the first
 * read of a frame, which builds its entry, as the view's first read does)
 * and copied out with pread.  Measured once per process, on a throw-away
 * memfd, the best of three rounds; 0, or a negative errno when it cannot be
 * measured (then the same for every later call).
 */
int mv__machine_read_costs(uint64_t *in_place_ns, uint64_t *copy_ns);
/* Return frames [first, first + pages) to the host, zeroed, before anyone
 * may be given them again: a hole punch, tried MV_SCRUB_TRIES times; failing
 * that, the frames are overwritten with zeros (their memory stays held) and
 * the punch's error is returned.  Never leaves their old bytes behind. */
int mv__machine_scrub(struct mv__machine *m, uint64_t first, uint64_t pages);
#define MV_SCRUB_TRIES 3
/* resident[i] = 1 when frame first + i holds memory. */
int mv__machine_resident(struct mv__machine *m, uint64_t first, uint64_t pages,
                         uint8_t *resident);
int mv__machine_audit(struct mv__machine *m);

/* scrub.c.  Frames [first, first + pages), owned by nobody from now on,
 * holding `uncharge` pages of the budget: scrubbed (MV__RELEASE_SCRUB),
 * uncharged and given back to the allocator (MV__RELEASE_GIVE_BACK), in
 * that order.  Under MV_SCRUB_SYNC (or with no scrubber) at once, returning
 * the scrub's error (message set; the rest is done all the same); under
 * MV_SCRUB_BACKGROUND queued, in order, for the scrubber: the budget stays
 * charged and the frames stay out of the allocator until it is done, and a
 * charge or allocation that finds no room waits for it (mv__scrub_wait).
 * No lock of level MV_LOCK_SCRUB or above may be held. */
int mv__machine_release(struct mv__machine *m, uint64_t first, uint64_t pages,
                        uint64_t uncharge, unsigned flags);
int mv__scrub_start(struct mv__machine *m, struct mv_host *host);
/* Finish what is queued, then stop the scrubber. */
void mv__scrub_stop(struct mv__machine *m);
/* The machine audit (machine lock held): append the queued give-backs to
 * blocks (pairs first, pages; *n pairs), which must not meet a free block. */
int mv__scrub_audit(struct mv__machine *m, uint64_t **blocks, uint64_t *n);
/* Wait until no queued release holds budget (MV__RELEASE_SCRUB: charge) or
 * frames for the allocator (MV__RELEASE_GIVE_BACK); `what` 0: until nothing
 * is queued.  False at once when there was nothing to wait for. */
bool mv__scrub_wait(struct mv__machine *m, unsigned what);
/* The scrubber's counters at one instant (all zero under MV_SCRUB_SYNC):
 * the stats, the audit's sum (pending_charged) and the tests (waiters). */
struct mv__scrub_counts {
    uint64_t pending_pages, pending_charged, scrubbed_pages, failures;
    unsigned waiters;
};
void mv__scrub_counts(struct mv__machine *m, struct mv__scrub_counts *out);
/* Tests: hold the scrubber (it takes no entry) or let it go. */
void mv__scrub_hold(struct mv__machine *m, bool hold);

/* ------------------------------------------------------------------------ */
/* domains and the p2m                                                       */

/* p2m entry types; values match enum mv_page_type. */
enum mv__p2m_type {
    MV_P2M_RAM = MV_PAGE_RAM,
    MV_P2M_POD = MV_PAGE_POD,
    MV_P2M_BALLOONED = MV_PAGE_BALLOONED,
    MV_P2M_SHARED = MV_PAGE_SHARED,
    MV_P2M_PAGED = MV_PAGE_PAGED,
};

/* A fault that could not be served yet: the domain is paused, or it waits
 * for memory under MV_POD_WAIT. */
struct mv__held_fault {
    uint64_t gfn;
    uint64_t since_ns;
    uint64_t deadline_ns; /* 0: held for a pause, no deadline */
    bool cow;             /* a write to a shared page (a CoW break) */
};

/* Mechanisms in all: the built-in ones and those registered (mechanism.c). */
#define MV_MECHANISMS_MAX 8
struct mv__logdirty;
struct mv__share_dom;

/* One change of a VMM's mapping among several asked at once: a run of
 * [addr, addr + length) in the VMM, at byte `offset` of the machine memory
 * for a map. */
enum mv__vmm_change { MV__VMM_MAP, MV__VMM_MAP_PRIVATE, MV__VMM_ZAP };
struct mv__vmm_run {
    uint64_t addr, length, offset;
};
/* Carry out `what` for each of runs[0..n), n <= MV__VMM_BATCH_MAX, as
 * ops.map or ops.zap would one at a time, and set results[i] to run i's 0
 * or -errno.  Every run is tried, whatever became of the others.  Locks as
 * ops.map. */
#define MV__VMM_BATCH_MAX 64
typedef void (*mv__vmm_batch_fn)(void *ctx, enum mv__vmm_change what,
                                 const struct mv__vmm_run *runs, size_t n, int *results);

/* A domain whose RAM lives in another process, a VMM (ram.c): the handed-
 * over userfaultfds and pagemap, and the VMM's operations that change its
 * mappings (`batch`, when set, several at once: the hand-over's server
 * pipelines them, vmm/server.c).  Set once at creation, never changed. */
struct mv__vmm {
    pid_t pid;
    struct mv_vmm_ops ops;
    mv__vmm_batch_fn batch;
    void *ctx;
    int pagemap_fd;        /* the VMM's /proc/PID/pagemap */
    int uffds[2];          /* handed over, not yet given to a user; -1 after */
};

struct mv_domain {
    uint32_t domid;
    struct mv_domain_config config;
    struct mv_host *host;
    atomic_int refs;           /* table's reference + lookups in flight */

    struct mv__mutex lock;     /* protects everything below */
    pthread_cond_t refs_cond;  /* destroy waits for lookups to finish */
    enum mv_domain_state state;
    atomic_bool dying;         /* being destroyed: lookups fail */
    char crash_reason[128];

    uint64_t maxmem_pages;
    uint64_t target_pages;
    uint64_t base_mfn;         /* gfn -> mfn is base_mfn + gfn for RAM */
    uint64_t frame_pages;      /* size of the frame block allocated */
    uint8_t *p2m;              /* enum mv__p2m_type per gfn */
    uint16_t *block_pod;       /* PoD entries in each 2 MiB block */

    /* 0 <= populated <= target <= maxmem;
     * populated + pod + ballooned + shared + paged == maxmem */
    uint64_t populated;
    uint64_t pod;
    uint64_t ballooned;
    uint64_t shared;
    uint64_t paged;

    uint8_t *ram;              /* guest RAM: gfn 0 at ram, in this process,
                                  or in the VMM's when vmm is set (then it
                                  is an address there, never dereferenced
                                  here) */
    struct mv__vmm *vmm;       /* NULL: the RAM is in this process */
    int uffd;
    uint64_t uffd_features;    /* features asked of uffd besides the domain
                                  ones (UFFD_FEATURE_SIGBUS, WP_ASYNC...) */
    uint64_t register_modes;   /* modes the RAM is registered with on uffd */
    /* A mechanism watches the domain's writes (the dirty log is on): no
     * other may change the write protection of its RAM (lock). */
    bool writes_watched;
    int cow_uffd;              /* synchronous write-protect faults of the
                                  shared frames it maps (share.c) */

    /* Faults raise SIGBUS in the faulting thread (UFFD_FEATURE_SIGBUS) and
     * are resolved there or handed over (vcpu.c); set at creation. */
    bool in_thread;
    int sigbus_slot;           /* its slot in vcpu.c's table, or -1 */

    uint64_t sweep_cursor;     /* next gfn the zero sweep examines */
    unsigned sweep_backoff;    /* faults to skip optional sweeps for */
    /* The last gfns populated for held faults (mv__fault_just_woken). */
#define MV_WOKEN_KEEP 8
    uint64_t woken[MV_WOKEN_KEEP];
    unsigned woken_next;

    struct mv__held_fault *held;   /* in the order they were held */
    size_t held_count;
    size_t held_capacity;
    /* When the oldest of them was held (0: none): the fault threads retry
     * the domains in this order, read without the lock. */
    _Atomic uint64_t held_since_ns;
    /* A pass over the held faults (fault.c, under host->retry_lock): its
     * faults held up to retry_tried_ns were tried; the next to try was
     * held at retry_next_ns (0: none left for the pass). */
    uint64_t retry_tried_ns;
    uint64_t retry_next_ns;

    /* counters (under lock) */
    uint64_t faults;
    uint64_t faults_in_thread;
    uint64_t populated_4k;
    uint64_t populated_2m;
    uint64_t sweeps;
    uint64_t sweep_scanned;
    uint64_t reclaimed_zero;
    uint64_t pod_waits;
    uint64_t pod_wait_ns;

    /* Per-domain state of the registered mechanisms (libmemvisor-guest's
     * vCPUs), each at its index in mv__mechanisms and owned by it: set by
     * its domain_init, freed by its domain_destroy.  NULL otherwise. */
    void *ext[MV_MECHANISMS_MAX];
    struct mv__logdirty *logdirty; /* owned by logdirty.c */
    struct mv__share_dom *share;   /* owned by share.c */
};

static inline uint8_t *mv__gfn_addr(struct mv_domain *d, uint64_t gfn)
{
    return d->ram + (gfn << MV_PAGE_SHIFT);
}

/* Look a domain up and take a reference; NULL (with an error recorded) when
 * it does not exist or is being destroyed. */
struct mv_domain *mv__domain_get(struct mv_host *host, uint32_t domid);
/* The same, but also finds a domain being destroyed (for the fault service,
 * which must still drain its userfaultfd). */
struct mv_domain *mv__domain_get_any(struct mv_host *host, uint32_t domid);
/* The live domain with the lowest id >= domid, referenced; NULL if none. */
struct mv_domain *mv__domain_get_from(struct mv_host *host, uint32_t domid);
void mv__domain_put(struct mv_domain *d);
/* Look a domain up, take a reference and lock it; -EPERM (with the reason)
 * when it has crashed.  Undone by mv__domain_unlock_put. */
int mv__domain_lock_live(struct mv_host *host, uint32_t domid, struct mv_domain **out);
void mv__domain_unlock_put(struct mv_domain *d);
/* Every live domain, referenced, in *out (*count of them); the caller puts
 * each and frees the array.  0, or -ENOMEM (with the message) and nothing
 * taken: a caller in the background tries again later, one that answers a
 * call fails it. */
int mv__domain_get_all(struct mv_host *host, struct mv_domain ***out, size_t *count);
/* The host's domain table: sorted by domid, ids of domains only.  0 or
 * -EUCLEAN. */
int mv__domain_table_audit(struct mv_host *host);

/*
 * Crash the domain (lock held): record why, replace its RAM with a mapping
 * that raises SIGBUS on every access, and wake every thread waiting on a
 * fault of it.  The host and other domains are untouched.
 */
void mv__domain_crash(struct mv_domain *d, const char *fmt, ...) MV_PRINTF(2, 3);

/* 0, or -EINVAL with a message when gfn is past maxmem. */
int mv__domain_check_gfn(struct mv_domain *d, uint64_t gfn);
/* Set a p2m entry, keeping the type counters in step (lock held). */
void mv__p2m_set(struct mv_domain *d, uint64_t gfn, enum mv__p2m_type type);
/* The same for [gfn, gfn + n). */
void mv__p2m_set_range(struct mv_domain *d, uint64_t gfn, uint64_t n, enum mv__p2m_type type);

/* Build a domain that no one can reach yet (for clones), make it reachable,
 * or throw it away. */
int mv__domain_new(struct mv_host *host, const struct mv_domain_config *config,
                   struct mv_domain **out);
int mv__domain_publish(struct mv_host *host, struct mv_domain *d);
void mv__domain_discard(struct mv_domain *d);
/* How long the hand-over's server waits for an agent's reply (vmm/server.c;
 * 0: the default, 10 s).  For tests of an agent that never answers. */
void mv__vmm_set_reply_timeout(unsigned ms);
/* mv_domain_create_vmm for the hand-over's server, whose VMMs also take
 * several mapping changes at once (`batch`, NULL: one at a time). */
int mv__domain_create_vmm(mv_host *host, const struct mv_domain_config *config,
                          const struct mv_vmm_ram *vmm, mv__vmm_batch_fn batch,
                          uint32_t *domid);
/* Map [gfn, gfn + n) to the domain's own frames and register it with the
 * domain's userfaultfd (lock held or domain unreachable). */
int mv__domain_map_own(struct mv_domain *d, uint64_t gfn, uint64_t n);
/* Add `modes` (UFFDIO_REGISTER_MODE_*) to those the RAM is registered with:
 * every run of own mappings is registered again (remapped gfns belong to
 * the second userfaultfd and are skipped), and later mappings take
 * d->register_modes.  Lock held.  0 or a negative errno (said). */
int mv__domain_register_modes(struct mv_domain *d, uint64_t modes);

/* ------------------------------------------------------------------------ */
/* ram.c: the mappings through which the vCPUs reach a domain's RAM          */

/* Map [gfn, gfn + n) to the machine memory at byte `offset`: shared (the
 * frames themselves) or a private copy-on-write view of them (`private`).
 * The new mapping is not registered with any userfaultfd. */
int mv__ram_map(struct mv_domain *d, uint64_t gfn, uint64_t n, uint64_t offset,
                bool private);
/* Drop the page table entries of [gfn, gfn + n) (the pages stay). */
int mv__ram_zap(struct mv_domain *d, uint64_t gfn, uint64_t n);
/* A run of gfns for mv__ram_map_runs (to the machine memory at byte
 * `offset`) or mv__ram_zap_runs (offset unused). */
struct mv__ram_run {
    uint64_t gfn, n, offset;
};
/* mv__ram_map or mv__ram_zap of each run, all of them tried whatever became
 * of the others (a VMM is asked for them at once: one wait for its agent,
 * not one a run).  results[i] is run i's 0 or -errno; returns the first
 * error or 0 (the caller says which run failed). */
int mv__ram_map_runs(struct mv_domain *d, const struct mv__ram_run *runs, size_t n,
                     bool private, int *results);
int mv__ram_zap_runs(struct mv_domain *d, const struct mv__ram_run *runs, size_t n,
                     int *results);
/* Read what the vCPUs see at [gfn, gfn + n): only for pages mapped now
 * (private copies), never for missing ones. */
int mv__ram_read_mapped(struct mv_domain *d, uint64_t gfn, uint64_t n, void *buf);
/* Write what the vCPUs see at [gfn, gfn + n) (present pages only, as
 * mv__ram_read_mapped) to the machine memory at byte `offset`. */
int mv__ram_save_mapped(struct mv_domain *d, uint64_t gfn, uint64_t n, uint64_t offset);
/* /proc/PID/pagemap of the process the RAM is mapped in. */
int mv__ram_pagemap_fd(struct mv_domain *d);
/* found[i] = 1 for the gfns of [gfn, gfn + n) whose page-table entries in
 * the RAM's mapping have every category of `categories` (PAGE_IS_PRESENT,
 * PAGE_IS_WRITTEN...; PAGEMAP_SCAN, Linux 6.7), else 0.  0 or a negative
 * errno (found[] then partial). */
int mv__ram_scan_pages(struct mv_domain *d, uint64_t gfn, uint64_t n, uint64_t categories,
                       uint8_t *found);
/* What mv__ram_protect_scan found of each page. */
enum {
    MV_RAM_MAPPED = 1,    /* a page is mapped */
    MV_RAM_MARKED = 2,    /* none is, but the entry keeps its protection */
    MV_RAM_WRITTEN = 4,   /* written since its last protection (or never
                             protected); protected again now */
};
/*
 * One PAGEMAP_SCAN over [gfn, gfn + n) (n <= MV_BLOCK_PAGES) of RAM
 * registered for asynchronous write protection: state[i] says what page i's
 * entry holds (0: nothing, neither a page nor a protection, or a mapping
 * not registered so, a shared frame's), and every entry is write-protected,
 * atomically with the question for each page.  A page mapped or marked and
 * not written has not been written since the previous such scan.  0 or a
 * negative errno (state[] then unset, nothing protected or part of the
 * range).
 */
int mv__ram_protect_scan(struct mv_domain *d, uint64_t gfn, uint64_t n, uint8_t *state);
/* A userfaultfd for d's RAM with `features` (besides the domain ones):
 * opened here, or the next one the VMM handed over.  fd or -errno. */
int mv__ram_uffd(struct mv_domain *d, uint64_t features);
/* Make every access to the RAM fail for good (a crash): SIGBUS here, the
 * VMM stopped there; then wake every thread waiting on a fault of it. */
void mv__ram_poison(struct mv_domain *d);
/* Release what ram.c holds for d (its destroy). */
void mv__ram_fini(struct mv_domain *d);
/* Close a VMM's handed-over fds and release its ctx (NULL: nothing). */
void mv__ram_vmm_free(struct mv__vmm *v);

/* Whether a page is one 8-byte word repeated (tmem's same-filled pages). */
bool mv__page_repeats_word(const uint8_t *page);
/* Whether a page's bytes are all zero (any page: guest or frame, at any
 * address). */
bool mv__page_is_zero(const uint8_t *page);
/* The repeated-word check's paths, which mv__page_repeats_word picks from
 * (page.c; the tests call each): 16-byte vectors everywhere, AVX2 on x86-64
 * CPUs that have it. */
bool mv__page_repeats_word_vec16(const uint8_t *page);
#if defined(__x86_64__)
bool mv__page_repeats_word_avx2(const uint8_t *page);
#endif
/* A page's XXH3-64 hash: a hint for finding equal pages, never proof. */
uint64_t mv__page_hash(const uint8_t *page);

/* ------------------------------------------------------------------------ */
/* fault.c                                                                   */

int mv__fault_service_start(struct mv_host *host);
void mv__fault_service_stop(struct mv_host *host);
int mv__fault_add_domain(struct mv_host *host, struct mv_domain *d);
void mv__fault_remove_domain(struct mv_host *host, struct mv_domain *d);
/* Wake the fault threads to retry held faults (memory was freed, a domain
 * was unpaused), serve a request handed over, or stop.  Callable with any
 * lock held. */
void mv__fault_kick(struct mv_host *host);
/* The sharing scanner freed memory: wake the fault threads only if a fault
 * or request waits.  A pass frees memory every 64 pages, and each kick
 * woke a thread, and with it a second CPU.  Call after the change is made;
 * callable with any lock held.  The other paths that free memory kick
 * unconditionally: made conditional too, they let a domain of test_tmem's
 * pressure case wait out its deadline in 3 of 96 runs under
 * ThreadSanitizer (none of 80 as they are), which is not understood yet. */
void mv__fault_kick_waiters(struct mv_host *host);
/* Hold a fault (domain lock held).  `deadline_ns` 0 = until unpaused. */
int mv__fault_hold(struct mv_domain *d, uint64_t gfn, uint64_t deadline_ns,
                   bool cow);
/* Held faults whose vCPU still waits (lock held): those whose page was
 * made present meanwhile are dropped first.  What pause counts as stopped
 * vCPUs. */
size_t mv__fault_held_blocking(struct mv_domain *d);
/* Whether gfn is one of the last pages given to a held fault (lock held):
 * its vCPU may not have written it yet, so a sweep for zero pages leaves
 * it (a younger fault would take the page an older one was just given). */
bool mv__fault_just_woken(const struct mv_domain *d, uint64_t gfn);
/* Wake every held fault of a crashed or dying domain (lock held). */
void mv__fault_release_all(struct mv_domain *d);
/* Wake the threads blocked on faults in [gfn, gfn + n) of d's userfaultfd
 * (its copy-on-write one when `cow`).  A vCPU must never wait forever: a
 * wake that fails MV_WAKE_TRIES times crashes the domain, whose poisoning
 * wakes its whole RAM.  Domain lock held.  0, or -EFAULT when it crashed. */
int mv__fault_wake(struct mv_domain *d, bool cow, uint64_t gfn, uint64_t n);
#define MV_WAKE_TRIES 3

/* What became of a fault that raised SIGBUS. */
enum mv__fault_verdict {
    MV__FAULT_WAITING = 0,  /* handed over, not served yet */
    MV__FAULT_RETRY,        /* served: run the access again */
    MV__FAULT_CRASHED,      /* the domain crashed or is going: the SIGBUS
                               is the embedder's (a crashed vCPU) */
    MV__FAULT_FORWARD,      /* cannot be served in the thread: hand over */
};

/* A fault handed to the fault threads by a thread that waits for it in its
 * SIGBUS handler; lives on that thread's stack. */
struct mv__fault_request {
    struct mv__fault_request *next; /* host->forward_lock */
    uint32_t domid;
    uint64_t address;
    _Atomic uint32_t verdict;       /* WAITING until a fault thread decides */
};

/* Resolve the fault at gfn of d in the calling thread (a vCPU of d,
 * holding no library lock, from its SIGBUS handler).  RETRY, CRASHED or
 * FORWARD. */
enum mv__fault_verdict mv__fault_in_thread(struct mv_domain *d, uint64_t gfn);
/* Hand the fault at `address` of domain `domid` to the fault threads and
 * wait until it is served: RETRY or CRASHED.  Async-signal-safe. */
enum mv__fault_verdict mv__fault_forward(struct mv_host *h, uint32_t domid,
                                         uint64_t address);

/* ------------------------------------------------------------------------ */
/* vcpu.c                                                                    */

/* Whether d's faults can raise SIGBUS and be resolved in the faulting
 * thread (decided before its userfaultfd exists): claims a slot in the
 * handler's table and installs the handler.  False when the host or the
 * kernel rules it out, or no slot or handler could be had. */
bool mv__vcpu_domain_claim(struct mv_domain *d);
/* Install the library's SIGBUS handler (again: the application may have
 * replaced it) and, when `hook` is not NULL, make it the function called
 * for a SIGBUS the library does not resolve, before the signal is passed
 * on (the built-in guests' vCPUs leave a crashed domain there; the hook
 * returns for other threads).  0 or a negative errno. */
int mv__vcpu_sigbus_install(void (*hook)(int, siginfo_t *, void *));
/* d's RAM is mapped: the handler may find it from now on. */
void mv__vcpu_domain_publish(struct mv_domain *d);

/*
 * A read of a domain's RAM through its own mapping by the library itself,
 * the domain lock held (the sharing scanner): a page the kernel took out of
 * the page table meanwhile (reclaim) would raise a fault that nobody can
 * serve while the lock is held.  On a domain whose faults raise SIGBUS
 * (in_thread) the handler instead jumps back to the guard, which then
 * reports the read as failed:
 *
 *     struct mv__ram_guard guard;
 *     if (mv__ram_guard_faulted(&guard))
 *         ...the read failed: nothing read is to be trusted...
 *     mv__ram_guard_arm(&guard, start, length);
 *     ...read [start, start + length)...
 *     mv__ram_guard_disarm();
 *
 * Only for in_thread domains (elsewhere such a fault waits for a fault
 * thread, which waits for the lock), and only for reads: nothing between
 * arm and disarm may take a lock, allocate or write guest RAM.  Locals the
 * read changes are not to be used after a jump.  One guard per thread.
 */
struct mv__ram_guard {
    sigjmp_buf env;
    uintptr_t start, end;
};
/* No system call: the handler puts back the signal mask of the read. */
#define mv__ram_guard_faulted(guard) (sigsetjmp((guard)->env, 0) != 0)
void mv__ram_guard_arm(struct mv__ram_guard *guard, const void *start, size_t length);
void mv__ram_guard_disarm(void);
/* Give d's slot back, waiting until no handler still uses it. */
void mv__vcpu_domain_release(struct mv_domain *d);

/* ------------------------------------------------------------------------ */
/* mechanism.c: what a mechanism plugs into the core (builtin.c lists them)  */

/*
 * The core (machine, host, domains and the p2m, the fault service) names no
 * mechanism.  A mechanism (populate-on-demand, dirty logging, sharing, the
 * built-in guests) fills in a struct mv__mechanism; the core calls each
 * hook that is set, in the order of mv__mechanisms[] (builtin.c lists the
 * built-in ones, mv__mechanism_register appends the others), and a
 * mechanism reaches another only through the
 * core's calls below (mv__domain_pages_changed, mv__domain_claim, ...),
 * never by name.
 *
 * Faults are dispatched by p2m type: each type has one owner, whose
 * p2m_ops serve a fault on its gfns, release them (balloon) and read them.
 * Hooks noted "lock held" run with the domain lock; the others with none.
 */
struct mv__p2m_ops {
    /* Gfns of this type map a page: a missing fault on one needs no memory
     * (its vCPU is woken, or the page mapped again). */
    bool present;
    /* Gfns of this type map a frame elsewhere, write-protected through the
     * domain's second (copy-on-write) userfaultfd. */
    bool remapped;
    /* A missing or minor fault at gfn (lock held, domain running): 0,
     * -EFAULT (crashed), or another negative errno when it cannot be served
     * now and nothing changed (-ENOMEM: no memory): the fault then waits. */
    int (*fault)(struct mv_domain *d, uint64_t gfn);
    /* The same fault resolved in the faulting vCPU's own thread, from its
     * SIGBUS handler (lock held, domain running): only what needs no
     * allocation, no sleep, no message and no lock but the owner's own,
     * ordered above the domain lock and never held while guest RAM is
     * touched (a free page within the target and the budget, a page mapped
     * again, a paged page copied back).  0, or -EAGAIN when
     * the fault needs more (reclaim, a wait, a crash, a failed system call):
     * nothing changed, and `fault` then serves it in a fault thread.  NULL:
     * always -EAGAIN. */
    int (*fault_fast)(struct mv_domain *d, uint64_t gfn);
    /* remapped types: a write fault through the second userfaultfd; same
     * answers as fault. */
    int (*remap_fault)(struct mv_domain *d, uint64_t gfn);
    /* Give gfn's memory back and make it `type` (lock held). */
    int (*release)(struct mv_domain *d, uint64_t gfn, enum mv__p2m_type type);
    /* The frame whose bytes gfn has now (lock held): 0 with *mfn
     * (MV_NO_FRAME: the page reads as zero), -ENODATA (no page: ballooned)
     * or -EFAULT (crashed).  May change the gfn's type (a remapped gfn
     * written meanwhile becomes the domain's own). */
    int (*frame)(struct mv_domain *d, uint64_t gfn, uint64_t *mfn);
    /* Types whose bytes are in no frame (paged out to tmem): copy gfn's
     * bytes into `buf` (lock held), changing nothing; their frame answers
     * -ENODATA.  NULL for the others. */
    int (*read)(struct mv_domain *d, uint64_t gfn, void *buf);
};
#define MV_NO_FRAME UINT64_MAX
#define MV_P2M_TYPES 5

struct mv__mechanism {
    const char *name;
    /* p2m types this mechanism owns (NULL: none). */
    const struct mv__p2m_ops *p2m_ops[MV_P2M_TYPES];

    /* host */
    int (*host_init)(struct mv_host *h);
    /* Before the host's domains are destroyed: stop background work. */
    void (*host_stop)(struct mv_host *h);
    /* After they are (also after a host_init that failed half-way). */
    void (*host_fini)(struct mv_host *h);
    /* Bring lagging records up to date before an audit (no lock): 0 or a
     * negative errno, with the message. */
    int (*host_settle)(struct mv_host *h);
    /* Pages charged to the budget that no domain's populated count holds. */
    uint64_t (*host_frames)(struct mv_host *h);
    uint64_t (*host_metadata)(struct mv_host *h);
    int (*host_audit)(struct mv_host *h);

    /* domains */
    /* Before the domain's userfaultfd exists: the features and register
     * modes its mechanism needs (may add to both). */
    int (*domain_traps)(struct mv_domain *d, uint64_t *uffd_features,
                        uint64_t *register_modes);
    /* After its RAM is mapped, before it is reachable. */
    int (*domain_init)(struct mv_domain *d);
    /* Being destroyed: stop the vCPUs it runs (no lock; may be called
     * again from domain_destroy's time). */
    void (*domain_stop)(struct mv_domain *d);
    /* Unreachable, vCPUs gone or going; in reverse registration order. */
    void (*domain_destroy)(struct mv_domain *d);
    /* Figures for mv_domain_info; add to out->metadata_bytes (lock held). */
    void (*domain_info)(struct mv_domain *d, struct mv_domain_info *out);
    /* Paused / unpaused (lock held, state already changed). */
    int (*domain_pause)(struct mv_domain *d);
    void (*domain_unpause)(struct mv_domain *d);
    /* Wait until the domain's own vCPUs stopped or let them go (no lock). */
    int (*domain_park)(struct mv_domain *d, unsigned timeout_ms);
    void (*domain_unpark)(struct mv_domain *d);
    /* A clone of the paused src was made (src's lock held). */
    void (*domain_cloned)(struct mv_domain *src, struct mv_domain *clone);

    /* events other mechanisms raise through the core (lock held) */
    /* The hypervisor changed [gfn, gfn + n): bytes, mapping or type. */
    void (*pages_changed)(struct mv_domain *d, uint64_t gfn, uint64_t n);
    /* Whether the RAM must be populated page by page now (split mappings). */
    bool (*needs_small_pages)(struct mv_domain *d);
    /* Populated pages or the target changed. */
    void (*room_changed)(struct mv_domain *d);
    /* Every guest write must be seen (dirty tracking on) or no longer. */
    int (*writes_watched)(struct mv_domain *d, bool on);
    /* The domain is short of `pages` within its target: free what can be. */
    void (*reclaim)(struct mv_domain *d, uint64_t pages);
    /* A write the kernel cannot resolve alone (synchronous write protection
     * on the domain's own userfaultfd) at gfn (lock held, running). */
    void (*write_fault)(struct mv_domain *d, uint64_t gfn);
    /* The host budget is `pages` short of a charge for `d` (NULL: not for
     * one domain): give back what can be, return how many pages.  Called
     * with d's lock or the share lock held, or none; must take no domain
     * lock. */
    uint64_t (*budget_short)(struct mv_host *h, struct mv_domain *d, uint64_t pages);
};

/* The built-in mechanisms (builtin.c), then the registered ones. */
extern const struct mv__mechanism *mv__mechanisms[MV_MECHANISMS_MAX];
extern size_t mv__mechanism_count;

/* Add a mechanism from outside the library (libmemvisor-guest) after the
 * built-in ones; its hooks are called like theirs.  Only before the first
 * host is created (-EBUSY after), at most MV_MECHANISMS_MAX in all
 * (-ENOSPC).  Returns the mechanism's index in mv__mechanisms (its slot in
 * mv_domain.ext), the same index again when it is registered already.
 * Thread-safe. */
int mv__mechanism_register(const struct mv__mechanism *m);
/* A host is being created: registration is closed from now on, and each
 * p2m type's owner is found.  -EINVAL (with a message) when a type has no
 * owner or two. */
int mv__mechanisms_seal(void);

#define mv__each_mechanism(m)                                                  \
    for (const struct mv__mechanism *const *m##_it = mv__mechanisms, *m;       \
         m##_it < mv__mechanisms + mv__mechanism_count && (m = *m##_it, 1);    \
         m##_it++)

/* The owner's operations for a p2m type (never NULL once a host exists). */
const struct mv__p2m_ops *mv__p2m_ops_of(enum mv__p2m_type type);

/* Events (domain lock held): each calls the hook of every mechanism. */
void mv__domain_pages_changed(struct mv_domain *d, uint64_t gfn, uint64_t n);
bool mv__domain_needs_small_pages(struct mv_domain *d);
void mv__domain_room_changed(struct mv_domain *d);
/* A mechanism starts or stops watching d's writes (d->writes_watched):
 * 0, or the first error (the others still told). */
int mv__domain_writes_watched(struct mv_domain *d, bool on);
/* src (paused, its lock held) was cloned into clone, not reachable yet. */
void mv__domain_cloned(struct mv_domain *src, struct mv_domain *clone);
/* Room for `pages` more populated pages within the target, reclaiming when
 * it is full, and, when `machine`, charged to the host budget. */
bool mv__domain_claim(struct mv_domain *d, uint64_t pages, bool machine);
/* Charge `pages` to the host budget for `d` (NULL: for no one domain);
 * when the budget is short, every mechanism's budget_short hook is asked
 * to give memory back first, then the charge is tried again.  Any lock up
 * to the share lock may be held. */
bool mv__host_charge(struct mv_host *h, struct mv_domain *d, uint64_t pages);

/* ------------------------------------------------------------------------ */
/* the host                                                                  */

/* A fault service thread: the epoll set it waits on, the CPU it is pinned
 * to (-1: the host's fault_cpus, or anywhere). */
struct mv__fault_thread {
    struct mv_host *host;
    pthread_t thread;
    int epoll_fd;
    int cpu;
};

struct mv_host {
    struct mv_host_config config;
    struct mv_kernel_features features;
    struct mv__machine machine;
    int sigbus_fd;               /* empty memfd: mapping it raises SIGBUS */
    int pagemap_fd;              /* /proc/self/pagemap */

    pthread_rwlock_t domains_lock;
    struct mv_domain **domains;
    size_t domain_count;
    size_t domain_capacity;
    uint32_t next_domid;

    /* fault service */
    int *epoll_fds;              /* one set, or one per fault thread */
    unsigned epoll_count;
    int kick_fd;                 /* eventfd: retry held faults / stop */
    _Atomic uint64_t kicks;      /* writes to kick_fd so far */
    struct mv__fault_thread *fault_threads;
    unsigned fault_thread_count;
    cpu_set_t fault_cpus;        /* empty: no restriction */
    atomic_bool stopping;
    atomic_uint_fast64_t held_total;
    /* A fault of a domain below its target waits for the host's memory:
     * new faults that would take some wait behind it (fault.c). */
    atomic_bool memory_wanted;
    /* One pass over the held faults at a time: a thread that finds one
     * under way asks it for another (retry_wanted) instead of running its
     * own beside it. */
    pthread_mutex_t retry_lock;
    atomic_bool retry_wanted;

    /* Faults handed over by SIGBUS handlers (fault.c), new and waiting
     * for their domain (paused, short of memory); forward_lock. */
    pthread_mutex_t forward_lock;
    struct mv__fault_request *forward_new;
    struct mv__fault_request *forward_waiting;
    atomic_uint forward_pending;  /* requests in either list */

    _Atomic uint64_t faults;
    _Atomic uint64_t fault_wakeups;
    _Atomic uint64_t fault_wait_errors; /* epoll_wait failures survived */
    atomic_uint domains_dying;   /* out of the table, memory not freed yet */

    /* Host-wide state of the mechanisms, each at its index in
     * mv__mechanisms, owned by it (set by its host_init). */
    void *ext[MV_MECHANISMS_MAX];
    struct mv__share *share;      /* share.c */
    struct mv__scanner *scanner;  /* scan.c */
    struct mv__tmem *tmem;        /* tmem/ */
};

#endif /* MV_INTERNAL_H */

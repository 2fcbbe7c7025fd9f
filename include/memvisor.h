/*
 * memvisor.h - public interface of libmemvisor, a userspace memory hypervisor.
 *
 * A host owns the machine memory (one sparse memfd) and a fault service.
 * Domains are guests: each has a guest-physical address space of `maxmem`
 * bytes backed by machine frames on demand, exposed to the embedder as one
 * host virtual range (mv_domain_ram) that a VMM hands to its vCPUs, exactly
 * as it would hand a memory slot to KVM.
 *
 * Conventions
 *   - Every function that can fail returns 0 (or a count) on success and a
 *     negative errno value on failure.  mv_strerror() turns the value into
 *     words; mv_last_error() returns a sentence describing the most recent
 *     failure of the calling thread (which argument, which limit).
 *   - The library never exits and never prints; give the host a log
 *     callback to see what it does.
 *   - Domains are named by a domain id (domid).  A destroyed domain's id is
 *     never reused by the same host, so a stale id fails with -ESRCH rather
 *     than reaching another guest.
 *   - Sizes are in bytes and must be multiples of MV_PAGE_SIZE unless said
 *     otherwise; guest frame numbers (gfn) are page indices.
 *   - Thread safety: every function taking an mv_host may be called from any
 *     thread concurrently, except mv_host_destroy.
 */
#ifndef MEMVISOR_H
#define MEMVISOR_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * The version of this header.  CMakeLists.txt reads these three lines for
 * the project's version (the shared library's VERSION, the pkg-config and
 * CMake package versions): bump them here, nowhere else.  mv_version() and
 * mv_version_number() tell the version of the library actually loaded.
 */
#define MV_VERSION_MAJOR 0
#define MV_VERSION_MINOR 1
#define MV_VERSION_PATCH 0
#define MV_VERSION_NUMBER \
    (MV_VERSION_MAJOR * 10000 + MV_VERSION_MINOR * 100 + MV_VERSION_PATCH)

/*
 * Marks the library's public functions.  libmemvisor.so is built with
 * -fvisibility=hidden: only the functions declared here with MV_API are
 * exported from it, never the library's internals.
 */
#if defined(__GNUC__) || defined(__clang__)
#define MV_API __attribute__((visibility("default")))
#else
#define MV_API
#endif

#define MV_PAGE_SHIFT 12
#define MV_PAGE_SIZE (1u << MV_PAGE_SHIFT)
/* Pages in one populate-on-demand superpage block (2 MiB). */
#define MV_BLOCK_PAGES 512u
#define MV_NAME_MAX 64

typedef struct mv_host mv_host;

/* ------------------------------------------------------------------------ */
/* Version                                                                   */

/* The loaded library's version, "MAJOR.MINOR.PATCH".  Thread-safe. */
MV_API const char *mv_version(void);

/* The same as MAJOR * 10000 + MINOR * 100 + PATCH: compare it with
 * MV_VERSION_NUMBER, the version of the header a program was built with. */
MV_API int mv_version_number(void);

/* ------------------------------------------------------------------------ */
/* Errors                                                                    */

/* Words for a negative errno value returned by this library.  Thread-safe. */
MV_API const char *mv_strerror(int err);

/*
 * The message describing the last failure of a call made by this thread,
 * e.g. "target 2048 MiB exceeds maxmem 1024 MiB".  Empty when the last call
 * succeeded without setting one.  The pointer stays valid until the thread's
 * next call into the library.
 */
MV_API const char *mv_last_error(void);

/* ------------------------------------------------------------------------ */
/* Kernel features                                                          */

/* What the running kernel offers; filled by mv_probe_kernel(). */
struct mv_kernel_features {
    char release[65];              /* uname -r */
    int uffd_available;            /* a userfaultfd can be opened at all */
    int uffd_dev;                  /* opened through /dev/userfaultfd */
    int uffd_user_mode_only;       /* only user-mode faults are trapped */
    uint64_t uffd_features;        /* UFFD_FEATURE_* bits the kernel offers */
    int missing_shmem;             /* MISSING faults on shmem (4.11) */
    int minor_shmem;               /* MINOR faults on shmem (5.14) */
    int wp_shmem;                  /* write-protect on shmem (5.19) */
    int wp_unpopulated;            /* WP of unpopulated ptes (6.4) */
    int wp_async;                  /* kernel-resolved WP faults (6.7) */
    int pagemap_scan;              /* PAGEMAP_SCAN ioctl (6.7) */
    uint64_t max_map_count;        /* vm.max_map_count */
    char shmem_thp[32];            /* shmem_enabled policy in force */
    uint64_t mem_available;        /* MemAvailable, bytes */
    uint64_t reserved[8];     /* zero; room to grow without breaking the ABI */
};

/*
 * Probe the kernel for the features memvisor uses.  Returns 0 when every
 * feature the foundation needs (userfaultfd with MISSING and MINOR faults on
 * shmem) is present; otherwise a negative errno, with mv_last_error() naming
 * the missing feature and the kernel version that introduced it.  `out` is
 * filled in either case.  Thread-safe.
 */
MV_API int mv_probe_kernel(struct mv_kernel_features *out);

/* ------------------------------------------------------------------------ */
/* Host                                                                      */

enum mv_log_level { MV_LOG_ERROR, MV_LOG_WARN, MV_LOG_INFO, MV_LOG_DEBUG };

typedef void (*mv_log_fn)(void *opaque, enum mv_log_level level,
                          const char *message);

/*
 * MV_FAULT_SHARED: fault_threads threads wait on one epoll set, run on any
 * of fault_cpus, and spin fault_spin_us after a populate-on-demand fault.
 *
 * MV_FAULT_PER_CPU: one thread pinned to each of fault_cpus (each CPU the
 * process may run on when fault_cpus is empty), each waiting on its own
 * epoll set; none spins and fault_threads is not used.  A fault wakes every
 * thread, and the one on the CPU the faulting thread has just left serves
 * it there, without waking another CPU: on a 2-vCPU virtual machine that
 * made a 4 KiB populate-on-demand fault 4x cheaper in all and a
 * copy-on-write break 2.6x faster (docs/performance.md).  The wakeups
 * grow with the CPUs: meant for a few; at most 64.
 *
 * MV_FAULT_AUTO (default): PER_CPU when fault_threads is at most 1 and the
 * threads would have at most MV_FAULT_PER_CPU_AUTO_MAX CPUs, else SHARED.
 * mv_host_stats() tells which was chosen.
 */
enum mv_fault_mode {
    MV_FAULT_AUTO = 0,
    MV_FAULT_SHARED,
    MV_FAULT_PER_CPU,
};
#define MV_FAULT_PER_CPU_AUTO_MAX 4

/*
 * Where a vCPU's fault on a page not yet in its frame (populate-on-demand,
 * or a page host paging compressed out) is resolved
 * (mv_host_config.fault_path).
 *
 * MV_FAULT_PATH_AUTO (default): in the faulting thread itself when that
 * thread is a vCPU of the domain (mv_vcpu_enter; the built-in guests'
 * vCPUs are) and the domain's RAM is in this process: the kernel raises
 * SIGBUS in that thread instead of queueing the fault
 * (UFFD_FEATURE_SIGBUS), and the library's handler populates the page
 * (or decompresses a paged-out one into it) there and lets the access run
 * again -- the counterpart of KVM's memory-fault exits, resolved by the
 * vCPU's own thread.  No thread switch at all: a PoD fault costs about
 * twice the kernel's own first touch, a paged-out page about a zram
 * swap-in (docs/performance.md).  Faults that need more than a free page
 * (the target or the budget is full, the domain is paused, a page
 * ballooned, a failed system call), and faults of any thread that is not a
 * vCPU of the domain, are handed to the fault threads and served as they
 * are on the other path, the thread waiting meanwhile.  Not used (the
 * domain takes MV_FAULT_PATH_THREAD) when the domain's RAM is a VMM's,
 * with MV_LOGDIRTY_WP_SYNC dirty logging (its write faults need a fault
 * thread), or when the kernel lacks UFFD_FEATURE_SIGBUS (Linux 4.14).
 * One caveat: a system call that reads or writes a page of guest RAM not
 * populated yet fails with EFAULT instead of waiting for it (touch the page
 * from user space first, or use MV_FAULT_PATH_THREAD).
 *
 * MV_FAULT_PATH_THREAD: every fault goes to a fault thread through the
 * userfaultfd (two thread switches per fault).
 */
enum mv_fault_path {
    MV_FAULT_PATH_AUTO = 0,
    MV_FAULT_PATH_THREAD,
};

/*
 * How frames a destroyed domain gives back are scrubbed (mv_host_config).
 * Freed memory is always scrubbed (punched out of the machine memfd, so it
 * reads as zeros) before any domain can be given it again.
 *   MV_SCRUB_SYNC        mv_domain_destroy scrubs them before it returns.
 *   MV_SCRUB_BACKGROUND  mv_domain_destroy queues them for a host thread
 *                        and returns, as Xen gives a dead domain's pages
 *                        back to be scrubbed later.  Until they are
 *                        scrubbed their memory stays counted in the budget
 *                        (mv_host_stats.scrub_pending_*) and their frames
 *                        stay out of the allocator; a populate, copy-on-
 *                        write break or domain creation that finds no room
 *                        waits for the scrubber first.  mv_host_wait_freed
 *                        waits for all of it.
 * Covered: a domain's own frames, and the frames a clone and its source
 * shared in place (mv_domain_clone) once both are gone and no other domain
 * shares any of them.  Shared frames freed one by one are always scrubbed
 * at once.
 */
enum mv_scrub_mode {
    MV_SCRUB_SYNC = 0,
    MV_SCRUB_BACKGROUND,
};

/*
 * How tmem writes and reads the machine frames it packs compressed pages
 * into (mv_host_config.tmem_store).
 *   MV_TMEM_STORE_MAPPED  through a mapping of the frames: a put copies
 *                         into its slot, a get decompresses from it.  A
 *                         new frame costs one mapping, then nothing.
 *   MV_TMEM_STORE_COPIED  with system calls, the frames never mapped: the
 *                         zspage being filled in each size class is
 *                         gathered in a buffer of the class and written to
 *                         the machine memfd by one write when the class
 *                         needs a new zspage (charged to the budget only
 *                         for the frames its pages reach until then); a
 *                         get reads its slot, or its whole zspage when
 *                         gets come in order, with one read.  Pays where
 *                         mapping a page costs far more than a system
 *                         call (shadow page tables: a paravirtualised
 *                         guest), docs/performance.md.
 *   MV_TMEM_STORE_AUTO    (default) the first such mv_host_create of the
 *                         process measures what a frame costs each (on a
 *                         throw-away memfd: a frame of two 2 KiB slots
 *                         written and read once; later hosts reuse it) and
 *                         chooses COPIED when MAPPED costs more than
 *                         MV_TMEM_STORE_COPY_PCT percent of it.
 * mv_tmem_stats tells which was chosen and what was measured.
 */
enum mv_tmem_store {
    MV_TMEM_STORE_AUTO = 0,
    MV_TMEM_STORE_MAPPED,
    MV_TMEM_STORE_COPIED,
};
#define MV_TMEM_STORE_COPY_PCT 150u

/* "auto", "mapped" or "copied". */
MV_API const char *mv_tmem_store_name(enum mv_tmem_store store);

/*
 * How the sharing scanner and its one-call sharing read a domain's pages
 * (mv_host_config.share_read).  Both read every byte of a page they act on
 * after unmapping it from the guest, whichever way.
 *   MV_SHARE_READ_COPY      copied out of the machine memfd with a system
 *                           call per run of pages, into a buffer of the
 *                           thread: nothing is mapped.  Pays where mapping
 *                           a page costs more than copying it (shadow page
 *                           tables: a paravirtualised guest).
 *   MV_SHARE_READ_IN_PLACE  where they are, through the machine's read-only
 *                           mapping of the memfd: no copy, and a page read
 *                           once is read again for nothing until it is
 *                           freed.  Pays where mapping is cheap (hardware
 *                           nested paging).
 *   MV_SHARE_READ_AUTO      (default) the first mv_host_create of the
 *                           process measures both on a throw-away memfd
 *                           (pages read and checked for zeros, 2 MiB each
 *                           way, the best of three rounds; later hosts reuse
 *                           it) and takes IN_PLACE unless it costs more than
 *                           COPY.  In a domain whose RAM is mapped in this
 *                           process (not a VMM's), with no dirty log on, on
 *                           Linux 6.7 or later (write protection that lets
 *                           writes through and marks them), the scanner
 *                           then write-protects each block as it asks which
 *                           pages were written since its last pass, and
 *                           does not read again a page the guest has not
 *                           written since; where the domain's faults are
 *                           resolved in the faulting thread it also reads
 *                           the others where the guest maps them, and frees
 *                           the zero ones from there: no page is mapped
 *                           anywhere else.  The pages stay write-protected
 *                           between passes: the guest's first write to each
 *                           after a pass takes a fault the kernel resolves
 *                           alone (about 0.7 us measured).  Such a domain
 *                           is registered for write protection for good,
 *                           which costs its first clone the kernel's walk
 *                           of its populated pages (8-16 ms a GiB
 *                           measured).  A host whose guests rewrite most of
 *                           their memory between passes, or that clones the
 *                           domains it scans, may choose IN_PLACE.
 * mv_share_stats tells which was chosen and what was measured.
 */
enum mv_share_read {
    MV_SHARE_READ_AUTO = 0,
    MV_SHARE_READ_COPY,
    MV_SHARE_READ_IN_PLACE,
};

/* "auto", "copy" or "in-place". */
MV_API const char *mv_share_read_name(enum mv_share_read read);

/*
 * Who copies a shared page when a domain writes it (mv_domain_config).
 *
 * MV_COW_TRAP (default): the write traps to a fault thread, which copies the
 * frame into the writer's own frame before the write goes on.  Every break
 * is charged when it happens; the last mapping of a frame takes it over; a
 * zero frame is not copied; when memory is short the PoD policy holds the
 * writer or crashes the domain.  A break costs tens of microseconds
 * (docs/performance.md).
 *
 * MV_COW_KERNEL: the kernel copies the page at the write, as it does for a
 * fork's private memory, with no trap: a break costs about what a first
 * touch of fresh memory costs.  The copy is anonymous memory until memvisor
 * *settles* it: moves its bytes into the writer's own frame, charges it and
 * updates the sharing records (takeovers included), as a trapped break
 * would have.  Settling happens on every call that reads, shares or remaps
 * the page, on mv_share_settle and the audits, on pause, and in the
 * background every cow_settle_ms; reads through the library see the copy's
 * bytes at any time.  Statistics (mv_share_stats, mv_domain_info) change
 * nothing: they count a copy once it is settled.  The kernel copies only
 * while the domain's target has room for a copy of every shared page (a
 * clone whose target is its source's always has), so a domain never holds
 * more than its target; the host budget is charged at the settle, and may
 * be exceeded until then by the copies made since the last one.  Writes to
 * shared pages trap instead (the MV_COW_TRAP path, the PoD policy deciding
 * when memory is short) while the target has no such room, after a settle
 * found the budget spent (until 256 pages of it are free again), while
 * the domain is paused, and while its dirty log is on.  Every break is a
 * copy: a zero frame is copied too.
 */
enum mv_cow_mode {
    MV_COW_TRAP = 0,
    MV_COW_KERNEL,
};
#define MV_COW_SETTLE_DEFAULT_MS 100u

/* "trap" or "kernel". */
MV_API const char *mv_cow_mode_name(enum mv_cow_mode mode);

struct mv_host_config {
    /* Machine memory the host may populate; 0 = 80% of MemAvailable. */
    uint64_t budget_bytes;
    /* Size of the machine frame space (sparse); 0 = 1 TiB. */
    uint64_t machine_bytes;
    /* Fault service threads; 0 = 1. */
    unsigned fault_threads;
    /*
     * How long a fault thread keeps polling its userfaultfd after serving a
     * populate-on-demand fault before it sleeps, in microseconds (0 = never
     * spin).  Spinning trades CPU for fault latency while a guest is
     * faulting in a burst.  Copy-on-write faults never start it.
     * Default (MV_FAULT_SPIN_DEFAULT) set by mv_host_config_init.
     */
    unsigned fault_spin_us;
    /*
     * CPUs the fault threads may run on, a list in taskset's syntax
     * ("2", "0-3,8"); NULL or "" = wherever the process may.  Read only by
     * mv_host_create.  On a virtual machine, waking another vCPU can cost
     * more than the fault itself: a VMM that pins its vCPUs does best to
     * put the fault threads on the same CPUs (docs/performance.md).
     */
    const char *fault_cpus;
    /* How the fault threads wait and where they run (enum mv_fault_mode). */
    enum mv_fault_mode fault_mode;
    /*
     * MV_COW_KERNEL domains: how often, in milliseconds, the kernel's copies
     * of shared pages are settled in the background (1..60000; default
     * MV_COW_SETTLE_DEFAULT_MS set by mv_host_config_init).
     */
    unsigned cow_settle_ms;
    mv_log_fn log;
    void *log_opaque;
    enum mv_log_level log_level;
    /* Where vCPUs' faults are resolved (enum mv_fault_path). */
    enum mv_fault_path fault_path;
    /* When a destroyed domain's frames are scrubbed (enum mv_scrub_mode). */
    enum mv_scrub_mode scrub_mode;
    /* How tmem keeps its frames (enum mv_tmem_store). */
    enum mv_tmem_store tmem_store;
    /* How sharing reads guest pages (enum mv_share_read). */
    enum mv_share_read share_read;
    uint64_t reserved[5];     /* zero; room to grow without breaking the ABI */
};
#define MV_FAULT_SPIN_DEFAULT 50u

/* Fill `config` with defaults. */
MV_API void mv_host_config_init(struct mv_host_config *config);

/* "auto", "shared" or "per-cpu". */
MV_API const char *mv_fault_mode_name(enum mv_fault_mode mode);
/* "auto" or "thread". */
MV_API const char *mv_fault_path_name(enum mv_fault_path path);
/* "sync" or "background". */
MV_API const char *mv_scrub_mode_name(enum mv_scrub_mode mode);

/*
 * Create a host: machine memory, budget and fault service.  Fails with
 * -EINVAL (bad config), -ENOSYS/-EOPNOTSUPP (kernel lacks a needed feature;
 * mv_last_error names it), -ENOMEM, or the errno of a failed system call.
 */
MV_API int mv_host_create(const struct mv_host_config *config, mv_host **out);

/*
 * Destroy every domain and the host.  Guest threads still touching guest RAM
 * get SIGBUS.  Not thread-safe with respect to other calls on this host.
 */
MV_API void mv_host_destroy(mv_host *host);

struct mv_host_stats {
    uint64_t budget_pages;        /* populated frames allowed */
    uint64_t populated_pages;     /* frames holding memory now */
    uint64_t peak_populated_pages;
    uint64_t machine_pages;       /* size of the frame space */
    uint64_t free_frame_pages;    /* frame space not given to a domain */
    uint64_t domains;
    uint64_t faults;              /* userfaultfd messages served */
    uint64_t fault_wakeups;       /* times a fault thread woke from sleep */
    uint64_t fault_wait_errors;   /* failed waits for faults, survived (logged) */
    uint64_t metadata_bytes;      /* memvisor's own tables: every domain's
                                     (mv_domain_info) and sharing's frame
                                     records and content index */
    unsigned fault_threads;       /* running */
    enum mv_fault_mode fault_mode; /* SHARED or PER_CPU: what AUTO chose */
    enum mv_scrub_mode scrub_mode;
    enum mv_fault_path fault_path;
    /* MV_SCRUB_BACKGROUND: frames given back and not scrubbed yet, the
     * budget they still hold, and frames scrubbed in the background so far
     * (with how many of those scrubs fell back to overwriting with zeros,
     * logged). */
    uint64_t scrub_pending_pages;
    uint64_t scrub_pending_charged_pages;
    uint64_t scrubbed_background_pages;
    uint64_t scrub_failures;
    uint64_t reserved[3];     /* zero; room to grow without breaking the ABI */
};

/* Host-wide counters.  Thread-safe. */
MV_API int mv_host_stats(mv_host *host, struct mv_host_stats *out);

/*
 * Wait until every frame given back so far is scrubbed, uncharged and back
 * in the frame allocator (MV_SCRUB_BACKGROUND; returns at once under
 * MV_SCRUB_SYNC).  Thread-safe.  Returns 0, or -EINVAL for a NULL host.
 */
MV_API int mv_host_wait_freed(mv_host *host);

/*
 * Change the host budget.  Fails with -EBUSY when more pages than
 * `budget_bytes` are populated now (nothing changes).
 */
MV_API int mv_host_set_budget(mv_host *host, uint64_t budget_bytes);

/*
 * Check every host invariant (frame allocator, budget, every domain's p2m
 * against the machine memory).  Returns 0, or -EUCLEAN with mv_last_error()
 * naming the first violation.  Thread-safe, and exact while guests fault and
 * the scanner shares: each domain is checked under its lock, and the sum of
 * every domain's pages against the budget is taken again until a view held
 * still.  -EAGAIN (no violation found) when memory kept moving through every
 * attempt: audit again, or with the guests paused.
 */
MV_API int mv_host_audit(mv_host *host);

/* ------------------------------------------------------------------------ */
/* Domains                                                                   */

/*
 * What happens when a domain touches a populate-on-demand page and neither
 * its target nor the host budget has a page left, after an emergency sweep
 * for zero pages found nothing.
 */
enum mv_pod_policy {
    MV_POD_WAIT = 0,   /* block the vCPU until memory frees up, then crash */
    MV_POD_CRASH = 1,  /* crash the domain at once (Xen's behaviour) */
};

enum mv_domain_state {
    MV_DOMAIN_RUNNING,
    MV_DOMAIN_PAUSED,
    MV_DOMAIN_CRASHED,
};

/*
 * Mechanisms that keep a dirty log.  The write-protect flavour of a
 * userfaultfd is fixed when it is opened, so a domain picks its mechanism
 * at creation.  Only MV_LOGDIRTY_MPROTECT uses a signal: the first
 * mv_logdirty_enable of a domain in that mode installs the library's SIGSEGV
 * handler (again at each enable if the application replaced it since), and
 * no other mode or call installs one.  See mv_domain_ram for how it and the
 * application's own handlers coexist.
 */
enum mv_logdirty_mode {
    MV_LOGDIRTY_AUTO = 0,     /* the fastest the kernel offers */
    MV_LOGDIRTY_WP_ASYNC,     /* UFFD_FEATURE_WP_ASYNC + PAGEMAP_SCAN (6.7) */
    MV_LOGDIRTY_WP_SYNC,      /* every first write trapped by a handler (5.19) */
    MV_LOGDIRTY_MPROTECT,     /* mprotect + SIGSEGV: any kernel */
};

struct mv_domain_config {
    char name[MV_NAME_MAX];   /* unique among the host's domains, non-empty */
    uint64_t maxmem_bytes;    /* guest-physical address space */
    uint64_t target_bytes;    /* PoD budget: pages it may have populated */
    unsigned vcpus;           /* 1..MV_MAX_VCPUS */
    enum mv_pod_policy pod_policy;
    unsigned wait_timeout_ms; /* MV_POD_WAIT: how long before crashing */
    /*
     * Populate a whole 2 MiB block on first touch when every page of the
     * block is a PoD entry and the target and host budget allow it (default
     * 1).  0 populates one page per fault.
     */
    int pod_block_populate;
    /* How this domain's dirty log is kept (see mv_logdirty_enable). */
    enum mv_logdirty_mode logdirty_mode;
    /* Who copies a shared page this domain writes (enum mv_cow_mode). */
    enum mv_cow_mode cow_mode;
    /*
     * Fault-around for sequential touchers, in pages (1..MV_POD_FAULT_AROUND_MAX;
     * 0 = MV_POD_FAULT_AROUND_DEFAULT; 1 = off).  When a vCPU resolving its
     * own faults (MV_FAULT_PATH_AUTO) faults on the page right after the
     * last one it populated, that fault populates up to this many PoD pages
     * from there in one go, as far as the target and the host budget have
     * room now: a guest writing memory in order takes one fault for
     * several pages, the way the kernel maps pages around a read fault.
     * A random toucher is never given pages it did not touch.
     */
    unsigned pod_fault_around;
    uint32_t reserved32;      /* zero */
    uint64_t reserved[7];     /* zero; room to grow without breaking the ABI */
};
#define MV_POD_FAULT_AROUND_DEFAULT 3u
#define MV_POD_FAULT_AROUND_MAX 64u
#define MV_MAX_VCPUS 64u
#define MV_WAIT_TIMEOUT_DEFAULT_MS 10000u

/* Fill `config` with defaults (1 vCPU, MV_POD_WAIT, default timeout). */
MV_API void mv_domain_config_init(struct mv_domain_config *config);

/*
 * Create a domain, booted ballooned: every gfn is a populate-on-demand entry
 * and nothing is populated.  Errors: -EINVAL (empty or too long name, size
 * zero or not page-aligned, target > maxmem, vcpus out of range), -EEXIST
 * (name taken), -ENOSPC (frame space exhausted), -E2BIG (maxmem larger than
 * the machine), system call errors.  Thread-safe.
 */
MV_API int mv_domain_create(mv_host *host, const struct mv_domain_config *config,
                            uint32_t *domid);

/*
 * Destroy a domain: stop the vCPUs a registered mechanism runs on it (the
 * built-in guests of libmemvisor-guest), wake every thread blocked on a
 * fault of it, and return all of its memory to the host, scrubbed.  Stop
 * your own vCPUs first: a thread that touches the RAM during the call takes
 * SIGBUS, and after it the range is unmapped (SIGSEGV).  Never hangs on a
 * pending fault.  -ESRCH for an unknown domain.  Thread-safe.
 */
MV_API int mv_domain_destroy(mv_host *host, uint32_t domid);

/* Find a domain by name.  -ESRCH when no such domain exists. */
MV_API int mv_domain_lookup(mv_host *host, const char *name, uint32_t *domid);

/*
 * List domain ids into `ids` (up to `capacity`).  Returns the number of
 * domains (which may exceed `capacity`), or a negative errno.
 */
MV_API int mv_domain_list(mv_host *host, uint32_t *ids, size_t capacity);

/*
 * Pause: built-in vCPUs (libmemvisor-guest) stop at their next page
 * boundary (the call waits for
 * them, up to 5 s: -ETIMEDOUT), and faults from any other thread are held
 * until mv_domain_unpause.  -EALREADY when already paused, -ESRCH, -EPERM
 * on a crashed domain.
 */
MV_API int mv_domain_pause(mv_host *host, uint32_t domid);
MV_API int mv_domain_unpause(mv_host *host, uint32_t domid);

/*
 * The host address of gfn 0 of the domain's RAM and its size.  The range
 * stays valid until the domain is destroyed.  Touching it from any thread is
 * how a guest uses memory; memvisor populates pages on first touch.
 *
 * Signals: libmemvisor installs no signal handler the embedder did not ask
 * for; the vCPUs and their signals are the embedder's.
 *   - SIGBUS, faults (MV_FAULT_PATH_AUTO): a domain whose faults are
 *     resolved in the faulting thread has the library's SIGBUS handler
 *     installed (by mv_domain_create): the kernel raises SIGBUS for every
 *     fault on its RAM not populated yet, and the handler resolves it and
 *     returns, so that the access runs again; every other SIGBUS is passed
 *     on to the action it replaced.  An embedder installing its own SIGBUS
 *     handler afterwards must call mv_sigbus_handled() first and return
 *     when it answers true, or pass SIGBUS in guest RAM on to the action it
 *     replaced (the library's).
 *   - SIGBUS, crashes: when a domain crashes (its PoD policy gave up, a page could not
 *     be served, a ballooned page was touched) or is destroyed, its RAM is
 *     replaced by a mapping on which every access raises SIGBUS, so a thread
 *     of the embedder touching it takes SIGBUS in that thread rather than
 *     hanging.  The library does not catch it: the embedder handles it, as
 *     it would a KVM exit that ends a vCPU -- e.g. a SIGBUS handler that
 *     leaves the vCPU (siglongjmp) when si_addr lies in a range it got from
 *     mv_domain_ram, and passes any other SIGBUS on to the action it
 *     replaced.  Without a handler the process dies, as for any SIGBUS.
 *   - SIGSEGV: only a domain with MV_LOGDIRTY_MPROTECT logging dirty pages
 *     has the library's handler installed (by mv_logdirty_enable); it takes
 *     write faults inside the RAM of such a domain and passes every other
 *     SIGSEGV on to the action it replaced (the embedder's handler, or the
 *     default action).  An embedder installing its own SIGSEGV handler
 *     afterwards must do the same the other way round: pass faults it does
 *     not recognise on to the action it replaced (the library's), or a
 *     guest write to a write-protected page is never resumed.
 * The built-in guests of libmemvisor-guest (memvisor's test scaffolding)
 * install a SIGBUS handler for their own vCPUs when a workload starts;
 * that is that library's, not this one's.
 */
MV_API int mv_domain_ram(mv_host *host, uint32_t domid, void **ram, uint64_t *size);

/*
 * Declare the calling thread a vCPU of domain `domid` until mv_vcpu_exit()
 * (or another mv_vcpu_enter): its faults on that domain's RAM are resolved
 * in the thread itself when the domain allows it (MV_FAULT_PATH_AUTO).
 * Returns 1 when they will be, 0 when they still go to the fault threads
 * (MV_FAULT_PATH_THREAD, a VMM's RAM, wp-sync dirty logging), -ESRCH.
 * The thread must not hold a lock its fault could need: the handler takes
 * only the library's own locks, and hands the fault to a fault thread when
 * the thread is inside a library call that holds one.  Thread-local; a
 * destroyed domain's vCPUs need not exit (their registration lapses).
 */
MV_API int mv_vcpu_enter(mv_host *host, uint32_t domid);
MV_API void mv_vcpu_exit(void);

/*
 * For an embedder's own SIGBUS handler (see mv_domain_ram, Signals): call it
 * first with the handler's arguments.  True: the signal was a fault on the
 * RAM of a domain of this process and has been resolved (or is being, by a
 * fault thread, which it waited for): return from the handler and the access
 * runs again.  False: not the library's (e.g. a crashed domain's RAM):
 * handle it as before.  Async-signal-safe for the SIGBUS it is given.  A
 * fault of the library's own read of guest RAM (the sharing scanner reads
 * pages where the guest maps them) does not return: the call jumps back to
 * that read, which then reads elsewhere.
 */
MV_API bool mv_sigbus_handled(int sig, siginfo_t *info, void *context);

/*
 * Guest RAM in another process (a VMM such as QEMU).
 *
 * The VMM maps the domain's frames -- the host's machine memory file
 * (mv_host_machine_fd) at the offset mv_domain_create_vmm asks for -- and
 * its vCPUs touch them there; the library serves their faults through
 * userfaultfds the VMM created and handed over, reads its page tables
 * through its /proc/PID/pagemap, and changes its mappings (sharing, the
 * zero sweep) through `ops`, which the VMM carries out in its own address
 * space.  libmemvisor's VMM hand-over (mv_vmm_serve, and the agent library
 * loaded into the VMM) implements the ops; an embedder may implement its
 * own.  What works on such a domain: populate-on-demand and the zero
 * sweep, ballooning (mv_domain_discard), dirty logging in the
 * MV_LOGDIRTY_WP_ASYNC and MV_LOGDIRTY_WP_SYNC modes, and copy-on-write
 * sharing in MV_COW_TRAP mode.  Not: MV_LOGDIRTY_MPROTECT, MV_COW_KERNEL,
 * clones, the built-in guests (-EOPNOTSUPP, saying so).
 */
#define MV_VMM_MAP_PRIVATE 1u /* a private copy-on-write view, not the frames */
struct mv_vmm_ops {
    /* Map `length` bytes of the machine memory file at `offset` over
     * [addr, addr + length) in the VMM: MAP_SHARED | MAP_FIXED (MAP_PRIVATE
     * with MV_VMM_MAP_PRIVATE), readable and writable.  0 or -errno.
     * Called with library locks held: it must not call the library. */
    int (*map)(void *ctx, uint64_t addr, uint64_t length, uint64_t offset,
               unsigned flags);
    /* madvise(MADV_DONTNEED) [addr, addr + length) in the VMM.  0 or -errno. */
    int (*zap)(void *ctx, uint64_t addr, uint64_t length);
    /* The domain crashed (reason given): no vCPU of the VMM may touch its
     * RAM again -- stop or kill the VMM.  Must not call the library. */
    void (*crash)(void *ctx, const char *reason);
    /* The domain is being destroyed and the library holds nothing of the
     * VMM any more: release ctx.  May be NULL. */
    void (*release)(void *ctx);
};

struct mv_vmm_ram {
    int pid;             /* the VMM's process */
    uint64_t addr;       /* where gfn 0 is in the VMM (page-aligned): maxmem
                            bytes of address space it reserved */
    int uffd;            /* two userfaultfds the VMM opened (non-blocking,  */
    int wp_uffd;         /* UFFDIO_API not done yet); the library owns them */
    int pagemap_fd;      /* the VMM's /proc/PID/pagemap; the library owns it */
    struct mv_vmm_ops ops;
    void *ctx;
    uint64_t reserved[4];
};

/* The machine memory file VMMs map guest RAM from (a memfd; do not close). */
MV_API int mv_host_machine_fd(mv_host *host);

/*
 * Create a domain whose RAM the VMM described by `vmm` maps: booted
 * ballooned like mv_domain_create, its frames mapped in the VMM through
 * vmm->ops->map and registered with its userfaultfds before this returns.
 * The library owns the three fds and ctx from the call on, whether it
 * succeeds or not: it closes them and calls vmm->ops->release (when set)
 * once it no longer needs them.  Errors: those of mv_domain_create; -EINVAL (bad fds, ops
 * missing, address not page-aligned, a built-in workload or an unsupported
 * mode asked for); the errors of vmm->ops->map.  Thread-safe.
 */
MV_API int mv_domain_create_vmm(mv_host *host, const struct mv_domain_config *config,
                                const struct mv_vmm_ram *vmm, uint32_t *domid);

/*
 * The guest gave [gfn, gfn + count) up (a VMM's balloon inflating, or free
 * page reporting): their memory returns to the host, scrubbed, and they
 * become populate-on-demand entries again, read as zero and populated at
 * the next touch.  Ballooned and PoD gfns are left as they are.  Returns
 * the number of pages whose memory was returned, or -errno.
 */
MV_API int64_t mv_domain_discard(mv_host *host, uint32_t domid, uint64_t gfn,
                                 uint64_t count);

/*
 * Serve a VMM that speaks memvisor's hand-over (docs/vmm-handover.md; the
 * agent library libmemvisor-agent.so speaks it for an unmodified VMM) on
 * `control`, a connected SOCK_SEQPACKET Unix socket the library owns from
 * the call on.  Waits up to timeout_ms (0: forever) for the VMM's HELLO,
 * creates the domain from `config` (its maxmem must be the size of the RAM
 * the VMM maps) with mv_domain_create_vmm, tells the VMM, and serves its
 * requests (discards) on a thread of the library.  When the VMM exits the
 * domain crashes ("VMM process N exited") and its own frames return to
 * the host; destroying the domain kills the VMM.  Errors: -ETIMEDOUT (no
 * HELLO), -EPROTO (not this protocol), -EINVAL (sizes differ), and those
 * of mv_domain_create_vmm; the VMM is told why.
 */
MV_API int mv_vmm_accept(mv_host *host, int control, const struct mv_domain_config *config,
                         unsigned timeout_ms, uint32_t *domid);

/*
 * Give back the zero pages of the VMM's own RAM blocks (firmware, option
 * ROMs, ACPI tables: memory the VMM allocates itself and marks mergeable,
 * outside the guest RAM the library serves), as KSM would merge them.  The
 * agent write-protects each block while it drops its zero pages, so a write
 * of the VMM waits rather than being lost.  For domains served through
 * mv_vmm_accept.  *pages_freed (may be NULL): pages of the VMM's memory
 * given back.  Errors: -ESRCH, -EOPNOTSUPP (not a domain of mv_vmm_accept,
 * or the VMM's kernel cannot write-protect anonymous memory), -EPERM
 * (crashed), and the agent's errors.  Thread-safe.
 */
MV_API int mv_vmm_trim(mv_host *host, uint32_t domid, uint64_t *pages_freed);

/*
 * Snapshot memory served through a VMM's own userfaultfd: Firecracker's
 * page-fault-handler hand-over (on snapshot restore, the VMM sends a JSON
 * list of its memory regions and its userfaultfd over a Unix socket; the
 * daemon reads them, docs/vmm-handover.md).  The memory is the VMM's own
 * anonymous memory, not machine frames, so such a VM is not a domain: it
 * has a record of its own (mv_fc).  Served: populate-on-demand (a missing
 * page is filled on first touch from the snapshot's memory file, or with
 * zeros, within target_bytes and the host budget, with the PoD policies),
 * the VMM's balloon removals (UFFD_EVENT_REMOVE: uncharged, zero when
 * touched again), and synchronous dirty logging when the VMM registered
 * its regions for write protection.  Not: remapping, sharing, zero sweeps
 * (only code in the VMM could map there).
 */
typedef struct mv_fc mv_fc;

struct mv_fc_region {          /* as the hand-over names them */
    uint64_t base;             /* base_host_virt_addr */
    uint64_t size;
    uint64_t offset;           /* into the snapshot's memory file */
    uint64_t page_size;        /* bytes; only 4096 is served */
};

struct mv_fc_config {
    char name[MV_NAME_MAX];
    const char *mem_file;      /* the snapshot's memory file; NULL: all zero */
    uint64_t target_bytes;     /* 0: no limit but the host budget */
    enum mv_pod_policy pod_policy;
    unsigned wait_timeout_ms;  /* MV_POD_WAIT; 0: MV_WAIT_TIMEOUT_DEFAULT_MS */
    uint64_t reserved[4];
};

enum mv_fc_state { MV_FC_RUNNING, MV_FC_CRASHED, MV_FC_EXITED };

struct mv_fc_info {
    int pid;
    enum mv_fc_state state;
    char reason[128];          /* why it crashed or exited */
    uint64_t pages;            /* all regions */
    uint64_t target_pages;
    uint64_t populated_pages;  /* filled and not removed: charged */
    uint64_t loaded_pages;     /* filled from the memory file */
    uint64_t zero_filled_pages;
    uint64_t removed_pages;    /* removed by the VMM (its balloon) */
    uint64_t faults;
    uint64_t write_faults;     /* dirty logging's traps */
    uint64_t pod_waits;
    uint64_t logdirty_rounds;
    int logging;
    uint64_t reserved[4];
};

/* Serve the VMM `pid` whose `count` regions are registered with `uffd`
 * (UFFDIO_API done by the VMM; the library owns the fd from the call on,
 * failing or not).  Errors: -EINVAL (bad regions: not 4 KiB pages,
 * misaligned, overlapping; bad config), -ENOENT and the like (the memory
 * file), -ESRCH (no such process).  The VMM is killed when the VM crashes
 * (no memory under MV_POD_CRASH, a page that cannot be filled) or is
 * destroyed: its faults would otherwise wait forever. */
MV_API int mv_fc_serve(mv_host *host, const struct mv_fc_config *config, int uffd, int pid,
                       const struct mv_fc_region *regions, size_t count, mv_fc **out);
MV_API int mv_fc_info(mv_fc *vm, struct mv_fc_info *out);
MV_API int mv_fc_set_target(mv_fc *vm, uint64_t target_bytes);
/* Dirty logging: write-protect every filled page (-EINVAL from the kernel
 * when the VMM did not register its regions for write protection), then
 * clean (read and clear into `bitmap`, one bit per page of all regions in
 * order; the pages are protected again first) and disable. */
MV_API int mv_fc_logdirty_enable(mv_fc *vm);
MV_API int64_t mv_fc_logdirty_clean(mv_fc *vm, uint64_t *bitmap, size_t words);
MV_API int mv_fc_logdirty_disable(mv_fc *vm);
/* Every filled page counted; the host audit runs it for every VM too. */
MV_API int mv_fc_audit(mv_fc *vm);
/* Stop serving: kills a VMM still running, uncharges its pages. */
MV_API void mv_fc_destroy(mv_fc *vm);
MV_API mv_fc *mv_fc_next(mv_host *host, mv_fc *after);
MV_API const char *mv_fc_name(const mv_fc *vm);

struct mv_domain_info {
    uint32_t domid;
    char name[MV_NAME_MAX];
    enum mv_domain_state state;
    enum mv_pod_policy pod_policy;
    unsigned vcpus;
    uint64_t maxmem_pages;
    uint64_t target_pages;
    uint64_t populated_pages;   /* 0 <= populated <= target <= maxmem */
    uint64_t pod_pages;         /* entries that populate on first touch */
    uint64_t ballooned_pages;   /* given back by decrease_reservation */
    uint64_t faults;            /* faults served */
    uint64_t populated_4k;      /* single pages populated */
    uint64_t populated_2m;      /* whole 2 MiB blocks populated */
    uint64_t sweeps;            /* emergency sweeps run */
    uint64_t sweep_scanned;     /* pages examined by sweeps */
    uint64_t reclaimed_zero;    /* zero pages turned back into PoD entries */
    uint64_t pod_waits;         /* faults that had to wait for memory */
    uint64_t pod_wait_ns;       /* total time faults waited */
    uint64_t held_faults;       /* faults held now (paused or waiting) */
    uint64_t shared_pages;      /* gfns mapping a shared frame */
    uint64_t cow_breaks;        /* writes that got a private copy */
    uint64_t cow_takeovers;     /* breaks of the last mapping (frame freed) */
    uint64_t cow_nocopy;        /* breaks of a known-zero frame: no copy */
    enum mv_cow_mode cow_mode;
    uint64_t cow_kernel_copies; /* breaks the kernel copied, settled since
                                   (part of cow_breaks) */
    int cow_trapping;           /* MV_COW_KERNEL: 1 while its shared pages
                                   trap (paused, dirty log on, memory short) */
    uint64_t cow_claimable;     /* breaks its target still covers now:
                                   min(shared, target - populated) */
    uint64_t cow_shortfall;     /* shared pages beyond that: writing them
                                   all would wait or crash (PoD policy) */
    uint64_t excluded_pages;    /* never shared nor scanned */
    /* Host memory memvisor's own tables take for this domain: the p2m, the
     * sharing entries written so far, the dirty bitmaps, the built-in
     * guest's oracle, the sharing scanner's hash of each page.  Grows with
     * maxmem (about 5 bytes a page with the built-in guest, and 8 more once
     * the scanner has looked at the domain), not with the memory the guest
     * uses. */
    uint64_t metadata_bytes;
    char crash_reason[128];     /* why, when state == MV_DOMAIN_CRASHED */
    uint64_t paged_pages;       /* paged out by the host into tmem */
    /* Faults resolved in the faulting vCPU's own thread (part of faults;
     * MV_FAULT_PATH_AUTO), and whether the domain's faults can be
     * (1) or all go to the fault threads (0). */
    uint64_t faults_in_thread;
    int fault_in_thread;
    uint64_t reserved[5];     /* zero; room to grow without breaking the ABI */
};

/* Snapshot of a domain's state and counters.  -ESRCH for unknown domains. */
MV_API int mv_domain_info(mv_host *host, uint32_t domid, struct mv_domain_info *out);

/*
 * Set the PoD target.  Raising it lets held faults proceed.  Lowering it
 * below the populated count first reclaims zero pages; when more populated
 * pages hold data than the new target allows, fails with -EBUSY and changes
 * nothing the guest can see (balloon first).  -EINVAL when target > maxmem
 * or not page-aligned.
 */
MV_API int mv_domain_set_target(mv_host *host, uint32_t domid, uint64_t target_bytes);

/*
 * Balloon hypercalls (Xen's XENMEM_decrease/increase_reservation).
 * decrease: each gfn's memory goes back to the host, scrubbed, and the gfn is
 * marked ballooned; a later touch of it crashes the domain.  increase: each
 * ballooned gfn becomes a PoD entry again (zero, populated on touch).  Both
 * validate every gfn before changing anything: -EINVAL with the offending
 * gfn named when one is past maxmem or (decrease) already ballooned or
 * (increase) not ballooned.  Returns the number of gfns processed: when
 * releasing one fails part-way (its memory could not be given back), the
 * gfns before it stay released and their number is returned, fewer than
 * `count`, with mv_last_error() saying why, as Xen's hypercall does; a
 * failure at the first gfn returns the error.
 */
MV_API int mv_domain_decrease_reservation(mv_host *host, uint32_t domid,
                                          const uint64_t *gfns, size_t count);
MV_API int mv_domain_increase_reservation(mv_host *host, uint32_t domid,
                                          const uint64_t *gfns, size_t count);

struct mv_sweep_result {
    uint64_t scanned;     /* populated pages examined */
    uint64_t reclaimed;   /* all-zero pages turned back into PoD entries */
    uint64_t elapsed_ns;
    uint64_t reserved[8];     /* zero; room to grow without breaking the ABI */
};

/*
 * Run a zero-page sweep now: examine up to `max_pages` populated pages (0 =
 * the whole domain), cheapest test first, and turn every all-zero page back
 * into a PoD entry, returning its memory to the host.  The guest keeps
 * running; a vCPU touching a page while it is examined waits for the verdict.
 * This is the same sweep the fault path runs when the target is exhausted.
 */
MV_API int mv_domain_reclaim_zero(mv_host *host, uint32_t domid, uint64_t max_pages,
                                  struct mv_sweep_result *result);

enum mv_page_type {
    MV_PAGE_RAM = 0,        /* populated, in the domain's own frame */
    MV_PAGE_POD = 1,        /* not populated; reads as zero; PoD on touch */
    MV_PAGE_BALLOONED = 2,  /* returned by decrease_reservation */
    MV_PAGE_SHARED = 3,     /* maps a shared frame read-only (copy on write) */
    MV_PAGE_PAGED = 4,      /* paged out by the host into tmem; paged back
                               in transparently on touch */
};

/* The p2m type of one gfn.  -EINVAL past maxmem. */
MV_API int mv_domain_page_type(mv_host *host, uint32_t domid, uint64_t gfn,
                               enum mv_page_type *type);

/*
 * Copy one guest page into `buf` (MV_PAGE_SIZE bytes) the way a debugger or
 * migration would see it, without populating it: PoD pages read as zero.
 * -ENODATA for a ballooned gfn.  Does not fault, allocate or count as a
 * guest access.
 */
MV_API int mv_domain_read_page(mv_host *host, uint32_t domid, uint64_t gfn, void *buf);

/*
 * Check the domain's invariants: 0 <= populated <= target <= maxmem, the
 * counts of each type match the p2m, and every RAM gfn has a machine frame
 * while every PoD/ballooned gfn has none.  0 or -EUCLEAN (mv_last_error()
 * names the gfn and the rule).
 */
MV_API int mv_domain_audit(mv_host *host, uint32_t domid);

/* ------------------------------------------------------------------------ */
/* Dirty logging                                                             */

/*
 * A dirty bitmap has one bit per gfn: bit (gfn % 64) of word (gfn / 64).
 * Its size in words is mv_logdirty_words(maxmem pages); calls taking a
 * bitmap fail with -EINVAL when `words` is not exactly that.
 */
static inline size_t mv_logdirty_words(uint64_t maxmem_pages)
{
    return (size_t)((maxmem_pages + 63) / 64);
}

/*
 * Start logging: write-protect all of the domain's memory (one
 * UFFDIO_WRITEPROTECT or mprotect over the whole RAM; the kernel rewrites
 * every present page-table entry, so this costs O(populated pages) once)
 * and report, from now on,
 * every page written by the guest or changed by memvisor itself (populate,
 * zero reclaim, balloon).  -EALREADY when already logging, -EPERM on a
 * crashed domain, -EOPNOTSUPP when the domain's mechanism is unavailable.
 */
MV_API int mv_logdirty_enable(mv_host *host, uint32_t domid);

/* Stop logging and make all memory writable again.  -EINVAL when not
 * logging. */
MV_API int mv_logdirty_disable(mv_host *host, uint32_t domid);

/*
 * Read the pages dirtied since the last mv_logdirty_clean (or enable)
 * without clearing them.  `zero` (may be NULL) gets a bit for every dirty
 * page that now holds no data (a PoD entry after zero reclaim, a ballooned
 * page): send a zero marker for those, not bytes.  Returns the number of
 * dirty pages.
 */
MV_API int64_t mv_logdirty_peek(mv_host *host, uint32_t domid, uint64_t *dirty,
                                uint64_t *zero, size_t words);

/*
 * Read and clear: the pages returned are write-protected again before the
 * call returns, so a write that lands after it is reported by the next call
 * and no write is ever lost between the two.  Reading the returned pages
 * after this call sees every write reported.  Returns the number of dirty
 * pages.  Over-reporting, documented: a 2 MiB PoD populate reports its 512
 * pages; a page the zero sweep examined and found to hold data is reported.
 */
MV_API int64_t mv_logdirty_clean(mv_host *host, uint32_t domid, uint64_t *dirty,
                                 uint64_t *zero, size_t words);

struct mv_logdirty_stats {
    int enabled;
    enum mv_logdirty_mode mode;     /* the mechanism in use */
    uint64_t rounds;                /* clean calls */
    uint64_t last_dirty;            /* pages in the last round */
    uint64_t total_dirty;
    uint64_t last_fetch_ns;         /* time of the last clean call */
    uint64_t total_fetch_ns;
    uint64_t faults;                /* write traps taken (sync WP, mprotect) */
    uint64_t protect_ns;            /* time enable took to protect memory */
    uint64_t reserved[8];     /* zero; room to grow without breaking the ABI */
};

MV_API int mv_logdirty_stats(mv_host *host, uint32_t domid, struct mv_logdirty_stats *out);

/* The words of the domain's live dirty bitmap, for consumers in other
 * threads: producers set bits atomically; a consumer takes word i with an
 * atomic exchange (`x = atomic_exchange(&words[i], 0)`), which never stops a
 * producer.  A round is mv_logdirty_harvest, then the exchanges: in every
 * mode the harvest is what protects again the pages whose bits were taken,
 * so that their next writes are reported (peek and clean harvest first; a
 * page whose bit was taken is reported again by the next harvest, peek or
 * clean).  Also available to other processes through
 * mv_logdirty_bitmap_fd.  Valid until the domain is destroyed. */
MV_API int mv_logdirty_bitmap(mv_host *host, uint32_t domid, uint64_t **words,
                              size_t *count);

/* A memfd holding that bitmap, to map MAP_SHARED in another process.  The
 * caller owns the returned descriptor. */
MV_API int mv_logdirty_bitmap_fd(mv_host *host, uint32_t domid, int *fd);

/* Move the record of pages the guest may write without a trap (wp-async:
 * the kernel's record of written pages; wp-sync, mprotect: the pages
 * unprotected since the last harvest) into the live bitmap, protecting
 * them again.  Returns the pages moved. */
MV_API int64_t mv_logdirty_harvest(mv_host *host, uint32_t domid);

/* Name of a mechanism ("wp-async", ...). */
MV_API const char *mv_logdirty_mode_name(enum mv_logdirty_mode mode);

/* ------------------------------------------------------------------------ */
/* Copy-on-write page sharing                                                */

/*
 * Two pages with the same bytes are kept once, in a shared frame owned by the
 * host (Xen's dom_cow), and mapped read-only into every (domain, gfn) that
 * shares it.  A write gets a private copy in the writer's own frame (a CoW
 * break): other domains never see it.  Shared frames keep a reference count
 * and a reverse map of every mapping.  The memory a CoW break needs comes
 * from the domain's target and the host budget; when short, the domain's PoD
 * policy decides (wait or crash).  Who makes the copy, and when it reaches
 * the writer's own frame, is the domain's cow_mode (enum mv_cow_mode).
 *
 * Every sharing call fails with a clear error and changes nothing when: a
 * domain does not exist (-ESRCH), has crashed (-EPERM) or is paused (-EBUSY:
 * a paused domain's pages are a snapshot in the making; unpause it, or use
 * mv_domain_clone, which wants it paused); a gfn is past maxmem (-EINVAL) or
 * excluded (-EPERM); a handle is stale (-ESTALE: the page was written,
 * unshared or shared into another frame) or was never issued (-EINVAL).
 */
typedef uint64_t mv_share_handle;

/*
 * Nominate a populated page for sharing (Xen's nominate_gfn): it moves into
 * a shared frame of its own and becomes read-only; a write breaks it back
 * into a private page and the handle goes stale.  A page already shared
 * returns its frame's handle.  An all-zero page is nominated too; its frame
 * is known to be zero, so the write that breaks it copies nothing.  -EINVAL
 * for a PoD or ballooned gfn.
 */
MV_API int mv_share_nominate(mv_host *host, uint32_t domid, uint64_t gfn,
                             mv_share_handle *handle);

/*
 * Share (Xen's share_pages): both pages must be nominated and both handles
 * current; their bytes are compared (-EINVAL when they differ, nothing
 * changed); the client gfn is remapped to the source's frame and the client
 * frame loses that mapping (freed, its handle retired, when it was the last).
 * Sharing a page with itself is -EINVAL; two gfns already in one frame is 0.
 */
MV_API int mv_share_pages(mv_host *host, uint32_t src_domid, uint64_t src_gfn,
                          mv_share_handle src_handle, uint32_t client_domid,
                          uint64_t client_gfn, mv_share_handle client_handle);

/*
 * Map the source's shared frame at a client gfn that holds no data (a PoD
 * entry): -EEXIST when the client gfn is populated or shared, -EINVAL when
 * ballooned.
 */
MV_API int mv_share_add_to_physmap(mv_host *host, uint32_t src_domid, uint64_t src_gfn,
                                   mv_share_handle src_handle, uint32_t client_domid,
                                   uint64_t client_gfn);

/*
 * Give a shared gfn its private copy now, as a write would (-EINVAL when the
 * gfn is not shared, -ENOMEM when neither the domain's target nor the host
 * budget has a page; nothing changed).
 */
MV_API int mv_share_unshare(mv_host *host, uint32_t domid, uint64_t gfn);

enum mv_share_outcome {
    MV_SHARE_MATCHED = 0,  /* equal bytes found in the index: now shared */
    MV_SHARE_INSERTED = 1, /* no match: the page is now in the index */
    MV_SHARE_ZERO = 2,     /* all zero: back to PoD, no frame, no memory */
    MV_SHARE_ALREADY = 3,  /* the gfn was already shared */
    MV_SHARE_SKIPPED = 4,  /* not populated, or changed while examined */
};

/*
 * One-call sharing (make_ro_and_share): look the page up in the host-wide
 * content index (64-bit hash; bytes are always compared before sharing) and
 * share it on a match, insert it on a miss.  All-zero pages go back to PoD.
 * `count` consecutive gfns are done in one call, batching runs of gfns that
 * land in consecutive frames into one remap; `outcomes` (may be NULL) gets
 * one entry per gfn.  Returns the number of gfns shared (matched).
 */
MV_API int64_t mv_share_make_ro_and_share(mv_host *host, uint32_t domid, uint64_t gfn,
                                          uint64_t count, enum mv_share_outcome *outcomes);

/*
 * Hint: [gfn, gfn + count) holds content that other ranges hinted with the
 * same key also hold (a block of a shared base disk image, a file several
 * guests loaded).  Hinted ranges are verified and shared first, by the next
 * scan step, before any blind scanning.  `key` 0 is reserved (-EINVAL).
 */
MV_API int mv_share_hint(mv_host *host, uint32_t domid, uint64_t gfn, uint64_t count,
                         uint64_t key);

/*
 * Keep [gfn, gfn + count) out of sharing for good: never shared, never
 * scanned (keys, and the timing side channel of CoW faults).  Pages of the
 * range that are shared now are unshared first (-ENOMEM when that needs
 * memory the domain cannot have; then nothing is excluded).
 */
MV_API int mv_share_exclude(mv_host *host, uint32_t domid, uint64_t gfn, uint64_t count);

/*
 * Clone a paused domain (-EBUSY when running): the new domain, named
 * `name`, has the source's configuration and shares every populated page
 * with it read-only from the first instant; PoD and ballooned entries are
 * copied as such.  The work is one remap per run of the source's p2m, not
 * per page; no guest byte is copied until one side writes, and the sharing
 * records of a frame are written only when it is first touched
 * (mv_share_stats().clone_pending_frames counts those not yet).  The source
 * stays paused; the clone starts running (its built-in vCPUs idle).  A
 * clone that fails returns the error and leaves the source as it was
 * (paused, the same pages, sharing and accounting); only if putting it back
 * fails too does the source crash, and the message says so.
 */
MV_API int mv_domain_clone(mv_host *host, uint32_t src_domid, const char *name,
                           uint32_t *clone_domid);

/*
 * Settle an MV_COW_KERNEL domain now (see enum mv_cow_mode): every page the
 * kernel copied on a write moves into the domain's own frame and the sharing
 * records catch up.  Returns the copies settled (0 for an MV_COW_TRAP
 * domain), -ESRCH, -EPERM (crashed).  Copies with no memory to settle stay
 * as they are (mv_share_stats().cow_settle_waiting) and are not counted.
 */
MV_API int64_t mv_share_settle(mv_host *host, uint32_t domid);

struct mv_scanner_config {
    uint64_t pages_per_second; /* budget; 0 = no limit */
    unsigned cpu_percent;      /* share of one CPU, 1..100; 0 = 100 */
    unsigned max_vmas;         /* stop sharing near this many mappings;
                                  0 = vm.max_map_count less a reserve */
    uint64_t reserved[8];     /* zero; room to grow without breaking the ABI */
};

MV_API void mv_scanner_config_init(struct mv_scanner_config *config);

/*
 * The background scanner: walks every running domain's populated pages, 2 MiB
 * at a time, hinted ranges first.  A page whose hash changed since the last
 * pass is volatile and skipped; an all-zero page goes back to PoD; a page
 * whose bytes match an indexed frame is shared; a page seen twice (in any two
 * places) is inserted.  -EALREADY when running.
 */
MV_API int mv_scanner_start(mv_host *host, const struct mv_scanner_config *config);
MV_API int mv_scanner_stop(mv_host *host);

struct mv_scan_result {
    uint64_t pages_scanned;   /* populated pages hashed */
    uint64_t pages_shared;    /* gfns newly mapping a shared frame */
    uint64_t pages_zero;      /* zero pages returned to PoD */
    uint64_t volatile_skips;  /* pages whose hash changed since last pass */
    uint64_t hinted_pages;    /* pages of hinted ranges processed */
    uint64_t elapsed_ns;
    /* Of pages_scanned, those not read at all: not written since their
     * last read (see mv_share_stats().scan_unchanged). */
    uint64_t pages_unchanged;
    /* Where elapsed_ns went, in the calling thread (wall time, so CPU on a
     * host with a CPU to spare); the rest is walking the domains.
     *   read_ns:  write-protecting blocks and reading pages (the zero
     *             check, the hash);
     *   zero_ns:  freeing the zero pages read where the guest maps them;
     *   index_ns: looking hashes up in the content index and the
     *             scanner's candidate table;
     *   share_ns: sharing: pages read again and compared byte for byte,
     *             remapped, their own frames freed (and zero pages read
     *             elsewhere freed), hinted ranges included. */
    uint64_t read_ns, zero_ns, index_ns, share_ns;
    uint64_t reserved[3];     /* zero; room to grow without breaking the ABI */
};

/*
 * Run the scanner's work synchronously on the calling thread: pending hints,
 * then up to `max_pages` populated pages (0 = one whole pass over every
 * domain).  Works whether or not the background scanner runs.
 */
MV_API int mv_share_scan(mv_host *host, uint64_t max_pages, struct mv_scan_result *result);

struct mv_share_stats {
    uint64_t shared_frames;   /* frames owned by the host for sharing */
    uint64_t shared_refs;     /* (domain, gfn) mappings of them */
    uint64_t saved_pages;     /* shared_refs - shared_frames */
    uint64_t indexed_frames;  /* frames in the content index */
    uint64_t cow_breaks;      /* all domains, including takeovers, no-copy */
    uint64_t cow_takeovers;
    uint64_t cow_nocopy;
    uint64_t zero_reclaimed;  /* zero pages the sharing code sent to PoD */
    uint64_t hash_collisions; /* equal hashes, different bytes */
    uint64_t hints_pending;   /* hinted ranges not processed yet */
    uint64_t hinted_pages;    /* pages of hinted ranges processed */
    /* scanner */
    int scanner_running;
    uint64_t scan_passes;
    uint64_t scan_pages;
    uint64_t scan_volatile;
    uint64_t scan_cpu_ns;     /* CPU time the scanning took */
    double scan_rate;         /* pages/s over the last pass */
    /* mappings */
    uint64_t vma_count;       /* mappings in this process now */
    uint64_t max_map_count;   /* vm.max_map_count */
    int sharing_stopped;      /* 1: near the limit, sharing paused */
    char stop_reason[160];
    uint64_t cow_run_unshares; /* pages unshared along with a CoW break so
                                  that it did not split a mapping: breaks
                                  do that once mappings near the limit */
    uint64_t clone_pending_frames; /* frames adopted by clones that nothing
                                      has touched since: their records are
                                      not written yet (part of shared_frames) */
    /* MV_COW_KERNEL (see enum mv_cow_mode) */
    uint64_t cow_kernel_copies;    /* kernel copies settled (part of cow_breaks) */
    uint64_t cow_settles;          /* settle passes over a domain */
    uint64_t cow_settle_ns;        /* time they took */
    uint64_t cow_settle_waiting;   /* copies found with no memory to settle
                                      them by the last settle pass: their
                                      writers trap now */
    uint64_t read_fallbacks;       /* blocks the scanner or a share read in
                                      place through the machine's mapping
                                      because copying them out failed (each
                                      also sets mv_last_error) */
    /* MV_SHARE_READ_COPY or _IN_PLACE: how this host reads pages (AUTO
     * chose it from the two costs it measured, ns a page, both 0 when it
     * did not measure). */
    enum mv_share_read read_mode;
    uint32_t reserved32;
    uint64_t read_in_place_ns;     /* a page read in place and checked */
    uint64_t read_copy_ns;         /* ... copied out and checked */
    uint64_t scan_candidate_slots; /* the scanner's table of pages seen once
                                      (16 bytes each): doubled during a pass
                                      to keep eight per live candidate,
                                      4096 to 2^21, never shrunk */
    /* Zero pages freed after reading them where the guest has them mapped
     * (its own mapping, write-protected first) rather than through the
     * machine's view: a domain whose faults are resolved in the faulting
     * thread, with no dirty log on, on Linux 6.7 or later.  Part of
     * zero_reclaimed. */
    uint64_t zero_in_guest;
    uint64_t guest_read_fallbacks; /* such reads that could not be done (a
                                      page left the guest's page table under
                                      the read, or a system call failed):
                                      read through the machine's view */
    /* Pages the scanner did not read again because the guest had not
     * written them since it last did (part of scan_pages): domains with no
     * dirty log on, on Linux 6.7 or later (MV_SHARE_READ_AUTO).  Each block
     * is write-protected by the PAGEMAP_SCAN that asks which of its pages
     * were written, so a page stays protected between passes, and the
     * guest's first write to it after a pass takes a fault the kernel
     * resolves alone. */
    uint64_t scan_unchanged;
};

/* Sharing counters.  Changes nothing and takes the share lock only to copy
 * them (the mappings are counted before), so a monitoring loop does not
 * delay copy-on-write breaks.  Thread-safe. */
MV_API int mv_share_stats(mv_host *host, struct mv_share_stats *out);

/*
 * Check sharing: every frame's reference count equals its reverse-map size;
 * every reverse-map entry is a shared gfn of a live domain mapping that frame,
 * and every shared gfn is in its frame's reverse map; the sum over domains of
 * shared gfns equals saved + frames; every indexed frame's bytes still hash
 * to its index entry; live frames hold memory; no guest write slipped into
 * a private anonymous copy (MV_COW_KERNEL domains are settled first; a copy
 * made since must be of a shared gfn).  0 or -EUCLEAN with the broken rule
 * named.  Exact also while guests write and the scanner runs.
 */
MV_API int mv_share_audit(mv_host *host);

/* ------------------------------------------------------------------------ */
/* Transcendent memory (tmem)                                                */

/*
 * A host-wide store of pages that domains put to and get from by key, as
 * Xen's tmem hypercalls do: (pool, 192-bit object id, 32-bit index).  Pages
 * are kept compressed in machine frames counted in the host budget.
 *
 * Ephemeral pools (a clean page cache): a put may be dropped at any time
 * and a later get may miss; a get from a private ephemeral pool removes the
 * page.  Persistent pools (swap): a put succeeds or fails at once, within
 * the domain's quota, and the page is never dropped.  A put to a key that
 * holds a page replaces it (and a failed one leaves the key empty).
 * Shared pools are joined by a 128-bit UUID, only by domains the host
 * authorised for it (mv_tmem_authorize); pages of a shared pool are seen by
 * every member.  A domain reaches only its own pools and the shared ones it
 * joined (-EPERM otherwise); its pools and pages go when it is destroyed.
 *
 * When the host budget runs out (a populate, a copy-on-write break), tmem
 * gives memory back first: spare frames, then ephemeral pages, least
 * recently used first within per-domain weights (a domain over its share
 * loses first), then compaction.
 */
#define MV_TMEM_PERSISTENT 0x1u  /* else ephemeral */
#define MV_TMEM_SHARED 0x2u      /* joined by UUID; else private */
#define MV_TMEM_ZSTD 0x4u        /* compress with zstd; else lz4 */
#define MV_TMEM_DEDUP 0x8u       /* keep identical pages once (bytes compared) */
#define MV_TMEM_FLAGS_ALL 0xfu
#define MV_TMEM_UUID_SIZE 16

/* Let `domid` join the shared pool named `uuid` (create it or join it). */
MV_API int mv_tmem_authorize(mv_host *host, uint32_t domid,
                             const uint8_t uuid[MV_TMEM_UUID_SIZE]);

/*
 * Create a pool for `domid` with MV_TMEM_* `flags` (`uuid` is used only
 * with MV_TMEM_SHARED, and may be NULL otherwise): a shared pool of that
 * UUID that exists already is joined (its flags must match).  Returns the
 * pool id (>= 0), -EPERM when the domain is not authorised for the UUID,
 * -EINVAL for unknown flags, -ENOSPC when the host has no pool id left.
 */
MV_API int mv_tmem_new_pool(mv_host *host, uint32_t domid, unsigned flags,
                            const uint8_t *uuid);

/*
 * Leave the pool: a private pool and its pages are freed; a shared pool is
 * freed when its last member leaves.  -ENOENT unknown, -EPERM not the
 * domain's.
 */
MV_API int mv_tmem_destroy_pool(mv_host *host, uint32_t domid, uint32_t pool);

/*
 * Put `size` (must be MV_PAGE_SIZE) bytes at `page` under the key.  `page`
 * (and a get's buffer) must not be a domain's RAM of this host: copy the
 * guest page to a buffer first, as a hypercall copies from the guest (tmem
 * copies under its lock, and a page of guest RAM may need that lock to be
 * paged back in).
 * Returns 1 when stored, 0 when an ephemeral put was dropped (no room),
 * -EDQUOT when a persistent put is over the domain's quota, -ENOMEM when
 * it finds no memory, -EINVAL for a bad size or NULL page.
 */
MV_API int mv_tmem_put_page(mv_host *host, uint32_t domid, uint32_t pool,
                            const uint64_t oid[3], uint32_t index,
                            const void *page, size_t size);

/* Copy the page under the key into `page` (`size` = MV_PAGE_SIZE): 1 when
 * found, 0 when not (ephemeral pages may be gone). */
MV_API int mv_tmem_get_page(mv_host *host, uint32_t domid, uint32_t pool,
                            const uint64_t oid[3], uint32_t index, void *page,
                            size_t size);

/* Remove one page: 1 when it was there, 0 when not. */
MV_API int mv_tmem_flush_page(mv_host *host, uint32_t domid, uint32_t pool,
                              const uint64_t oid[3], uint32_t index);

/* Remove every page of an object: how many were removed. */
MV_API int64_t mv_tmem_flush_object(mv_host *host, uint32_t domid, uint32_t pool,
                                    const uint64_t oid[3]);

/*
 * A domain's share of tmem: `weight` (1..10000, default 100) orders
 * eviction (the domain furthest over weight-proportional share of ephemeral
 * pages loses first); `quota_pages` bounds its persistent pages (default:
 * its maxmem).
 */
MV_API int mv_tmem_set_client(mv_host *host, uint32_t domid, unsigned weight,
                              uint64_t quota_pages);

/*
 * Repayment reserve (the "repayment FIFO" of the Xen CoW talk): pledge up
 * to `pages` of the domain's ephemeral tmem pages as collateral.  When a
 * copy-on-write break or a populate of that domain finds the host budget
 * exhausted, the domain's own collateral pages are evicted first.  0 ends
 * the pledge.
 */
MV_API int mv_tmem_set_collateral(mv_host *host, uint32_t domid, uint64_t pages);

/*
 * Giving memory back to the host (Xen's tmem_relinquish_* API).
 *   relinquish_page: free one frame to the host, evicting ephemeral pages
 *     as needed: 1 when done, 0 when tmem has nothing to give.
 *   relinquish_pageblock: make room for a naturally aligned block of
 *     2^order frames: a free run in the machine allocator and as many
 *     frames of the host budget (spare frames given back, then ephemeral
 *     pages evicted and compacted, whole chunks returned): 0, or -ENOMEM
 *     when what is left is persistent pages or others' memory (refused
 *     before any page is evicted when even evicting every ephemeral page
 *     and compacting could not make the room).
 *   evict_npages: evict ephemeral pages until `n` frames are empty (kept by
 *     tmem as spare): how many.
 *   relinquish_pages: scrub up to `n` spare frames and give them back to
 *     the host budget: how many.  The buffers a size class left with no
 *     stored page keeps (host memory, counted in metadata_bytes) are freed
 *     too.
 */
MV_API int mv_tmem_relinquish_page(mv_host *host);
MV_API int mv_tmem_relinquish_pageblock(mv_host *host, unsigned order);
MV_API int64_t mv_tmem_evict_npages(mv_host *host, uint64_t n);
MV_API int64_t mv_tmem_relinquish_pages(mv_host *host, uint64_t n);
/* Move compressed pages out of sparse frames: frames freed. */
MV_API int64_t mv_tmem_compact(mv_host *host);

/* Counters of one pool, one domain (over its pools) or the host (over
 * all), like Xen's `xl tmem-list`. */
struct mv_tmem_counts {
    uint64_t puts;              /* put calls */
    uint64_t puts_stored;       /* ... that stored the page */
    uint64_t gets;
    uint64_t found_gets;        /* gets that found the page */
    uint64_t flushes;           /* pages removed by flush_page/object */
    uint64_t flush_objects;
    uint64_t evictions;         /* ephemeral pages dropped by the host */
    uint64_t poor_compressions; /* pages stored raw */
    uint64_t dedup_hits;
    uint64_t same_filled;       /* zero- or same-filled pages (no bytes kept) */
    uint64_t pages;             /* pages stored now */
    uint64_t marker_pages;      /* ... of which same-filled, kept as a word */
    uint64_t stored_bytes;      /* bytes of frames they take */
    uint64_t lz4_pages;         /* pages stored now as lz4 bytes */
    uint64_t zstd_pages;        /* ... as zstd bytes (the other pages that
                                 * are not markers are kept raw) */
    uint64_t reserved[2];
};

struct mv_tmem_pool_info {
    uint32_t pool;
    uint32_t owner;             /* domain that created it (UINT32_MAX: host) */
    unsigned flags;
    uint32_t members;           /* domains in it */
    uint8_t uuid[MV_TMEM_UUID_SIZE];
    struct mv_tmem_counts counts;
};

struct mv_tmem_client_info {
    uint32_t domid;             /* UINT32_MAX: the host (paging) */
    unsigned weight;
    uint64_t quota_pages;
    uint64_t persistent_pages;
    uint64_t ephemeral_pages;
    uint64_t collateral_pages;  /* pledged for repayment */
    uint64_t repaid_pages;      /* frames repaid from its collateral */
    struct mv_tmem_counts counts;
};

struct mv_tmem_stats {
    uint64_t frames;            /* frames charged to the budget */
    uint64_t used_frames;       /* holding pages */
    uint64_t spare_frames;      /* empty, kept for the next put */
    uint64_t chunks;            /* runs of frames taken from the machine */
    uint64_t pools;
    uint64_t evictions;
    uint64_t relinquished;      /* frames given back to the host */
    uint64_t compactions, compact_moves;
    uint64_t budget_short_calls; /* times the host ran short and asked */
    uint64_t budget_short_freed; /* frames tmem gave back then */
    uint64_t repaid;            /* frames repaid from collateral */
    uint64_t paged_out;         /* guest pages held by host paging now */
    uint64_t page_outs;         /* pages paged out, in all */
    uint64_t page_ins;          /* paged pages faulted back in */
    uint64_t page_in_ns;        /* time page-ins took (claim, decompress, map) */
    uint64_t auto_paged;        /* pages the automatic mode paged out */
    uint64_t metadata_bytes;
    struct mv_tmem_counts counts;
    /* Frames evicting every ephemeral page would give back (spare ones and
     * those holding no persistent page; compaction may free more): Xen's
     * tmem-freeable. */
    uint64_t freeable_frames;
    /* MV_TMEM_STORE_MAPPED or _COPIED: what the host uses (AUTO chose it
     * from the two costs it measured, ns, both 0 when it did not). */
    enum mv_tmem_store store;
    uint32_t reserved32;
    uint64_t store_mapped_ns;   /* a frame written and read, mapped */
    uint64_t store_copied_ns;   /* ... and with system calls */
    /* MV_TMEM_STORE_COPIED: zspages read whole because two gets or
     * page-ins in a row came from the same one (pages put in order come
     * back in order), and the gets and page-ins served from those reads
     * with no system call of their own. */
    uint64_t store_read_aheads;
    uint64_t store_read_ahead_hits;
    uint64_t reserved[2];
};

/*
 * Host paging: overcommit with no guest cooperation.  Page out up to
 * `pages` of the domain's populated pages, cold ones first (not touched
 * since the last paging pass, judged from the page tables), into a
 * compressed persistent pool the host owns: their frames go back to the
 * budget and their gfns read MV_PAGE_PAGED until touched, when they are
 * paged back in transparently.  Returns the pages paged out.
 */
MV_API int64_t mv_tmem_page_out(mv_host *host, uint32_t domid, uint64_t pages);

/*
 * The automatic mode: a host thread pages cold pages out of every domain
 * whenever populated pages exceed `high_pct` percent of the host budget,
 * down to `low_pct`, and at once when a charge finds the budget exhausted.
 * high_pct 0 stops it.
 */
MV_API int mv_tmem_auto_paging(mv_host *host, unsigned high_pct, unsigned low_pct);

/* Host-wide figures.  Thread-safe. */
MV_API int mv_tmem_stats(mv_host *host, struct mv_tmem_stats *out);
/* Up to `capacity` pools / clients into `out`: how many there are (more
 * than capacity: call again with room). */
MV_API int mv_tmem_pool_list(mv_host *host, struct mv_tmem_pool_info *out,
                             size_t capacity);
MV_API int mv_tmem_client_list(mv_host *host, struct mv_tmem_client_info *out,
                               size_t capacity);
/* Compression ratio of counts: bytes of the pages stored over the bytes
 * they take (slot bytes, and one 8-byte word for each marker page); 0 when
 * nothing is stored. */
MV_API double mv_tmem_ratio(const struct mv_tmem_counts *counts);

/*
 * Account for every tmem frame: chunk states against counters, every
 * zspage slot against its page record, every page against its pool, every
 * client's counts, frames charged against frames held.  0 or -EUCLEAN
 * naming the broken rule.  Also called by mv_host_audit.
 */
MV_API int mv_tmem_audit(mv_host *host);

#ifdef __cplusplus
}
#endif
#endif /* MEMVISOR_H */

/*
 * test_races.c - races between a domain's users and its end, made certain
 * rather than rare.  This program is linked with pthread_mutex_lock and
 * epoll_ctl wrapped (-Wl,--wrap): a thread that asks for it is held just
 * before its next mutex lock, as if preempted there, until the test lets it
 * go; and the fault service's registration of a new domain can be made to
 * fail once such a thread is held.  Every step waits for the one before it
 * to be seen to have happened: nothing is ordered by sleeping.  read and
 * epoll_wait are wrapped too, to stop a fault thread just before it reads
 * the fault service's kick and another just before it waits again.
 */
#include "testutil.h"
#include "internal.h"

#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <sys/epoll.h>
#include <sys/syscall.h>
#include <unistd.h>

int __real_pthread_mutex_lock(pthread_mutex_t *m);
int __wrap_pthread_mutex_lock(pthread_mutex_t *m);
int __real_epoll_ctl(int epfd, int op, int fd, struct epoll_event *event);
int __wrap_epoll_ctl(int epfd, int op, int fd, struct epoll_event *event);
ssize_t __real_read(int fd, void *buf, size_t count);
ssize_t __wrap_read(int fd, void *buf, size_t count);
int __real_epoll_wait(int epfd, struct epoll_event *events, int max, int timeout);
int __wrap_epoll_wait(int epfd, struct epoll_event *events, int max, int timeout);

static _Thread_local bool hold_next_lock;
static sem_t held;          /* posted by a thread reaching its hold point */
static sem_t let_go;        /* posted by the test to release it */
static atomic_bool hold_timed_out;
static atomic_bool fail_next_domain_add;
static atomic_bool domain_add_failed;
/* Orders the events the cases compare: each takes the next number. */
static atomic_uint event_seq = 1;

static void holds_init(void)
{
    assert_int_equal(sem_init(&held, 0, 0), 0);
    assert_int_equal(sem_init(&let_go, 0, 0), 0);
    atomic_store(&hold_timed_out, false);
    atomic_store(&domain_add_failed, false);
}

/* The thread's next mutex lock waits, once, until the test posts let_go. */
int __wrap_pthread_mutex_lock(pthread_mutex_t *m)
{
    if (hold_next_lock) {
        hold_next_lock = false;
        sem_post(&held);
        if (!tu_sem_wait_ms(&let_go, TU_DEADLINE_MS))
            atomic_store(&hold_timed_out, true);
    }
    return __real_pthread_mutex_lock(m);
}

/* Adding a domain's userfaultfd to the fault service fails with ENOSPC
 * (fs.epoll.max_user_watches reached), once a thread that found the domain
 * in the host's table is held: the domain is there until this returns. */
int __wrap_epoll_ctl(int epfd, int op, int fd, struct epoll_event *event)
{
    if (op == EPOLL_CTL_ADD && atomic_exchange(&fail_next_domain_add, false)) {
        if (!tu_sem_wait_ms(&held, TU_DEADLINE_MS))
            atomic_store(&hold_timed_out, true);
        atomic_store(&domain_add_failed, true);
        errno = ENOSPC;
        return -1;
    }
    return __real_epoll_ctl(epfd, op, fd, event);
}

/* The kick race: the first fault thread to read the kick eventfd after
 * `kick_fd` is armed waits, before reading, until the service is stopping
 * (so its read takes the stop's kicks); any other fault thread that comes
 * back to wait for events meanwhile waits until that read is done. */
static atomic_int kick_fd = -1;
static atomic_bool kick_reader_taken, kick_read_done;
static mv_host *kick_host;
static sem_t reader_held, waiter_held;

ssize_t __wrap_read(int fd, void *buf, size_t count)
{
    if (fd >= 0 && fd == atomic_load(&kick_fd) && !atomic_exchange(&kick_reader_taken, true)) {
        ssize_t r;

        sem_post(&reader_held);
        tu_wait_until(atomic_load(&kick_host->stopping));
        r = __real_read(fd, buf, count);
        atomic_store(&kick_read_done, true);
        return r;
    }
    return __real_read(fd, buf, count);
}

int __wrap_epoll_wait(int epfd, struct epoll_event *events, int max, int timeout)
{
    if (atomic_load(&kick_fd) >= 0 && atomic_load(&kick_reader_taken) &&
        !atomic_load(&kick_read_done)) {
        sem_post(&waiter_held);
        tu_wait_until(atomic_load(&kick_read_done));
    }
    return __real_epoll_wait(epfd, events, max, timeout);
}

static pid_t my_tid(void)
{
    return (pid_t)syscall(SYS_gettid);
}

/* The thread `tid` of this process sleeps in the kernel (waits on a futex,
 * say), or has exited. */
static bool blocked_or_gone(pid_t tid)
{
    char path[64], buf[512], *paren;
    FILE *f;
    size_t n;

    snprintf(path, sizeof(path), "/proc/self/task/%d/stat", (int)tid);
    f = fopen(path, "r");
    if (!f)
        return true;
    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    paren = strrchr(buf, ')');
    if (!paren || paren[1] == '\0' || paren[2] == '\0')
        return true;
    return paren[2] != 'R';
}

struct actor {
    mv_host *host;
    uint32_t domid;
    int rc;
    atomic_int tid;
    atomic_uint done_seq; /* event_seq when its call returned */
};

/* mv_domain_ram takes no mutex but the one its reference's release may:
 * held there, the thread still holds its reference. */
static void *use_ram(void *arg)
{
    struct actor *u = arg;
    void *ram;
    uint64_t size;

    /* A release while another thread (a background pass of the library)
     * also holds a reference takes no lock: then try again. */
    do {
        hold_next_lock = true;
        u->rc = mv_domain_ram(u->host, u->domid, &ram, &size);
    } while (hold_next_lock && u->rc == 0);
    hold_next_lock = false;
    atomic_store(&u->done_seq, atomic_fetch_add(&event_seq, 1));
    return NULL;
}

static void *destroy_domain(void *arg)
{
    struct actor *a = arg;

    atomic_store(&a->tid, my_tid());
    a->rc = mv_domain_destroy(a->host, a->domid);
    atomic_store(&a->done_seq, atomic_fetch_add(&event_seq, 1));
    return NULL;
}

/* `waiter` got as far as it can while another thread holds a reference:
 * it sleeps (waiting for the reference, if it is right to), or it returned
 * (if it is wrong). */
static void wait_for_blocked(struct actor *waiter)
{
    tu_wait_until(atomic_load(&waiter->tid) != 0);
    tu_wait_until(atomic_load(&waiter->done_seq) != 0 ||
                  blocked_or_gone(atomic_load(&waiter->tid)));
}

/* Let the held thread go, and return the event number of its release. */
static unsigned release_held(void)
{
    unsigned seq = atomic_fetch_add(&event_seq, 1);

    sem_post(&let_go);
    return seq;
}

/* A user releasing its reference is held just before the lock it takes to
 * wake a destroyer: destroy must wait for it, not free the domain under
 * it. */
static void reference_released_during_destroy(void **state)
{
    mv_host *h = tu_host();
    struct actor u = {.host = h, .domid = tu_domain(h, "d", 16 * MiB, 16 * MiB)};
    struct actor d = {.host = h, .domid = u.domid};
    pthread_t tu, td;
    unsigned released;

    (void)state;
    holds_init();
    assert_int_equal(pthread_create(&tu, NULL, use_ram, &u), 0);
    /* The user holds its reference, stopped just before giving it back. */
    assert_true(tu_sem_wait_ms(&held, TU_DEADLINE_MS));
    assert_int_equal(pthread_create(&td, NULL, destroy_domain, &d), 0);
    /* The destroyer took the domain out of the table ... */
    tu_wait_until(mv_domain_list(h, NULL, 0) == 0);
    /* ... and went as far as it could. */
    wait_for_blocked(&d);
    released = release_held();
    pthread_join(tu, NULL);
    pthread_join(td, NULL);
    assert_false(atomic_load(&hold_timed_out));
    assert_ok(u.rc);
    assert_ok(d.rc);
    /* Destroy returned only after the user had let go. */
    if (atomic_load(&d.done_seq) < released)
        fail_msg("destroy returned while a user still held a reference");
    assert_ok(mv_host_audit(h));
    mv_host_destroy(h);
}

/* Finds the first domain listed and asks for its info, held just before the
 * domain lock that takes (holding a reference). */
static void *find_and_inspect(void *arg)
{
    struct actor *u = arg;
    struct mv_domain_info info;
    uint32_t ids[4];

    while (mv_domain_list(u->host, ids, 4) < 1)
        sched_yield();
    hold_next_lock = true;
    u->rc = mv_domain_info(u->host, ids[0], &info);
    hold_next_lock = false;
    atomic_store(&u->done_seq, atomic_fetch_add(&event_seq, 1));
    return NULL;
}

static void *create_doomed(void *arg)
{
    struct actor *a = arg;
    struct mv_domain_config c;

    atomic_store(&a->tid, my_tid());
    tu_domain_config(&c, "doomed", 16 * MiB, 16 * MiB);
    a->rc = mv_domain_create(a->host, &c, &a->domid);
    atomic_store(&a->done_seq, atomic_fetch_add(&event_seq, 1));
    return NULL;
}

/* A domain whose registration with the fault service fails was in the
 * table for a moment: a thread that found it there keeps it alive until it
 * is done, and the create reports the failure. */
static void failed_create_waits_for_its_finders(void **state)
{
    mv_host *h = tu_host();
    struct actor u = {.host = h}, c = {.host = h};
    pthread_t tu, tc;
    unsigned released;

    (void)state;
    holds_init();
    assert_int_equal(pthread_create(&tu, NULL, find_and_inspect, &u), 0);
    atomic_store(&fail_next_domain_add, true);
    assert_int_equal(pthread_create(&tc, NULL, create_doomed, &c), 0);
    /* The registration failed once the finder held the domain (the wrapper
     * waits for that); the create then took the domain out of the table
     * and went as far as it could. */
    tu_wait_until(atomic_load(&domain_add_failed));
    tu_wait_until(mv_domain_list(h, NULL, 0) == 0);
    wait_for_blocked(&c);
    released = release_held();
    pthread_join(tu, NULL);
    pthread_join(tc, NULL);
    assert_false(atomic_load(&hold_timed_out));
    assert_int_equal(c.rc, -ENOSPC);
    /* It found the domain in the table and read it whole. */
    assert_ok(u.rc);
    if (atomic_load(&c.done_seq) < released)
        fail_msg("the failed create returned while a finder still held the domain");
    assert_int_equal(mv_domain_list(h, NULL, 0), 0);
    assert_ok(mv_host_audit(h));
    mv_host_destroy(h);
}

static void *destroy_host(void *arg)
{
    mv_host_destroy(arg);
    return NULL;
}

/* A fault thread that read a kick just as the service stopped emptied the
 * eventfd of the stop's kicks too; another, waiting for events again, must
 * still be woken, or stopping the service (destroying the host) waits for
 * it forever. */
static void stopping_wakes_every_fault_thread(void **state)
{
    struct mv_host_config c;
    struct timespec deadline;
    pthread_t destroyer;
    mv_host *h;

    (void)state;
    tu_host_config(&c, 1 * GiB);
    c.fault_mode = MV_FAULT_SHARED;
    c.fault_threads = 2;
    assert_ok(mv_host_create(&c, &h));
    assert_int_equal(sem_init(&reader_held, 0, 0), 0);
    assert_int_equal(sem_init(&waiter_held, 0, 0), 0);
    kick_host = h;
    atomic_store(&kick_fd, h->kick_fd);
    /* Both threads wake; one is held before its read, the other before it
     * waits again. */
    mv__fault_kick(h);
    assert_true(tu_sem_wait_ms(&reader_held, TU_DEADLINE_MS));
    assert_true(tu_sem_wait_ms(&waiter_held, TU_DEADLINE_MS));
    assert_int_equal(pthread_create(&destroyer, NULL, destroy_host, h), 0);
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 30;
    if (pthread_timedjoin_np(destroyer, NULL, &deadline) != 0)
        fail_msg("destroying the host still waits for a fault thread after 30 s");
    atomic_store(&kick_fd, -1);
}

static const struct CMUnitTest cases[] = {
    cmocka_unit_test(reference_released_during_destroy),
    cmocka_unit_test(failed_create_waits_for_its_finders),
    cmocka_unit_test(stopping_wakes_every_fault_thread),
};

TU_MAIN(cases)

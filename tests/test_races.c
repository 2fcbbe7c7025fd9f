/*
 * test_races.c - races between a domain's users and its end, made certain
 * rather than rare.  This program is linked with pthread_mutex_lock and
 * epoll_ctl wrapped (-Wl,--wrap): a thread that asks for it is held just
 * before its next mutex lock, as if preempted there, until the test lets it
 * go; and the fault service's registration of a new domain can be made to
 * fail once such a thread is held.  Every step waits for the one before it
 * to be seen to have happened: nothing is ordered by sleeping.
 */
#include "testutil.h"

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

static const struct CMUnitTest cases[] = {
    cmocka_unit_test(reference_released_during_destroy),
    cmocka_unit_test(failed_create_waits_for_its_finders),
};

TU_MAIN(cases)

/*
 * test_races.c - races between a domain's users and its end, made certain
 * rather than rare.  This program is linked with pthread_mutex_lock and
 * epoll_ctl wrapped (-Wl,--wrap): a thread that asks for it is held just
 * before its next mutex lock, as if preempted there, and the fault
 * service's registration of a new domain can be made to fail.
 */
#include "testutil.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#define HOLD_MS 300

int __real_pthread_mutex_lock(pthread_mutex_t *m);
int __wrap_pthread_mutex_lock(pthread_mutex_t *m);
int __real_epoll_ctl(int epfd, int op, int fd, struct epoll_event *event);
int __wrap_epoll_ctl(int epfd, int op, int fd, struct epoll_event *event);

static _Thread_local bool hold_next_lock;
static atomic_bool fail_next_domain_add;

/* The thread's next mutex lock waits HOLD_MS first, once. */
int __wrap_pthread_mutex_lock(pthread_mutex_t *m)
{
    if (hold_next_lock) {
        hold_next_lock = false;
        usleep(HOLD_MS * 1000);
    }
    return __real_pthread_mutex_lock(m);
}

/* Adding a domain's userfaultfd to the fault service fails with ENOSPC
 * (fs.epoll.max_user_watches reached), after a pause in which the domain
 * is already in the host's table. */
int __wrap_epoll_ctl(int epfd, int op, int fd, struct epoll_event *event)
{
    if (op == EPOLL_CTL_ADD && atomic_exchange(&fail_next_domain_add, false)) {
        usleep(HOLD_MS * 1000 / 3);
        errno = ENOSPC;
        return -1;
    }
    return __real_epoll_ctl(epfd, op, fd, event);
}

static uint64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

struct user {
    mv_host *host;
    uint32_t domid;
    int rc;
    atomic_uint_fast64_t started_ms;
};

/* mv_domain_ram takes no mutex but the one its reference's release may. */
static void *use_ram(void *arg)
{
    struct user *u = arg;
    void *ram;
    uint64_t size;

    atomic_store(&u->started_ms, now_ms());
    hold_next_lock = true;
    u->rc = mv_domain_ram(u->host, u->domid, &ram, &size);
    hold_next_lock = false;
    return NULL;
}

/* A user releasing its reference is held just before the lock it takes to
 * wake a destroyer: destroy must wait for it, not free the domain under
 * it. */
static void reference_released_during_destroy(void **state)
{
    mv_host *h = tu_host();
    struct user u = {.host = h, .domid = tu_domain(h, "d", 16 * MiB, 16 * MiB)};
    pthread_t t;
    uint64_t done_ms;

    (void)state;
    assert_int_equal(pthread_create(&t, NULL, use_ram, &u), 0);
    while (atomic_load(&u.started_ms) == 0)
        usleep(1000);
    usleep(HOLD_MS * 1000 / 6);
    assert_ok(mv_domain_destroy(h, u.domid));
    done_ms = now_ms();
    pthread_join(t, NULL);
    assert_ok(u.rc);
    /* Destroy returned only after the user had let go. */
    assert_true(done_ms >= atomic_load(&u.started_ms) + HOLD_MS);
    assert_ok(mv_host_audit(h));
    mv_host_destroy(h);
}

/* Finds the first domain listed and asks for its info, held just before the
 * domain lock that takes. */
static void *find_and_inspect(void *arg)
{
    struct user *u = arg;
    struct mv_domain_info info;
    uint32_t ids[4];

    while (mv_domain_list(u->host, ids, 4) < 1)
        ;
    atomic_store(&u->started_ms, now_ms());
    hold_next_lock = true;
    u->rc = mv_domain_info(u->host, ids[0], &info);
    hold_next_lock = false;
    return NULL;
}

/* A domain whose registration with the fault service fails was in the
 * table for a moment: a thread that found it there keeps it alive until it
 * is done, and the create reports the failure. */
static void failed_create_waits_for_its_finders(void **state)
{
    mv_host *h = tu_host();
    struct user u = {.host = h};
    struct mv_domain_config c;
    pthread_t t;
    uint32_t id = 0;
    uint64_t done_ms;

    (void)state;
    assert_int_equal(pthread_create(&t, NULL, find_and_inspect, &u), 0);
    mv_domain_config_init(&c);
    snprintf(c.name, sizeof(c.name), "doomed");
    c.maxmem_bytes = c.target_bytes = 16 * MiB;
    atomic_store(&fail_next_domain_add, true);
    assert_err(mv_domain_create(h, &c, &id), -ENOSPC);
    done_ms = now_ms();
    pthread_join(t, NULL);
    /* It found the domain in the table and read it whole. */
    assert_ok(u.rc);
    assert_true(done_ms >= atomic_load(&u.started_ms) + HOLD_MS);
    assert_int_equal(mv_domain_list(h, NULL, 0), 0);
    assert_ok(mv_host_audit(h));
    mv_host_destroy(h);
}

static const struct CMUnitTest cases[] = {
    cmocka_unit_test(reference_released_during_destroy),
    cmocka_unit_test(failed_create_waits_for_its_finders),
};

TU_MAIN(cases)

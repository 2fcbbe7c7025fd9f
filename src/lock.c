/*
 * lock.c - mutexes that know their place in the lock order.
 *
 * Each mv__mutex carries a level (internal.h lists them).  In builds with
 * MV_DEBUG_LOCKS a thread-local record of the levels held makes taking a
 * lock out of order abort at once, naming both levels, instead of
 * deadlocking one run in a thousand.  Release builds pay nothing.
 */
#include "internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#ifdef MV_DEBUG_LOCKS
/* Bit n set: the thread holds a lock of level n. */
static _Thread_local unsigned held_levels;

static void check_order(struct mv__mutex *m)
{
    if (held_levels >> m->level) {
        fprintf(stderr, "memvisor: lock order violation: taking level %d "
                "while holding levels 0x%x\n", (int)m->level, held_levels);
        abort();
    }
}

void mv__assert_held(struct mv__mutex *m)
{
    if (!(held_levels & (1u << m->level))) {
        fprintf(stderr, "memvisor: lock of level %d not held\n", (int)m->level);
        abort();
    }
}
#define NOTE_TAKEN(m) (held_levels |= 1u << (m)->level)
#define NOTE_RELEASED(m) (held_levels &= ~(1u << (m)->level))
#else
static inline void check_order(struct mv__mutex *m)
{
    (void)m;
}

void mv__assert_held(struct mv__mutex *m)
{
    (void)m;
}
#define NOTE_TAKEN(m) ((void)0)
#define NOTE_RELEASED(m) ((void)0)
#endif

/* Every build: the SIGBUS handler resolves a fault in the faulting thread
 * only when that thread holds no library lock (vcpu.c). */
static _Thread_local unsigned locks_held;

unsigned mv__locks_held(void)
{
    return locks_held;
}

void mv__mutex_init(struct mv__mutex *m, enum mv__lock_level level)
{
    pthread_mutex_init(&m->mutex, NULL);
    m->level = level;
}

void mv__mutex_init_spinning(struct mv__mutex *m, enum mv__lock_level level)
{
    pthread_mutexattr_t attr;

    pthread_mutexattr_init(&attr);
    pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_ADAPTIVE_NP);
    pthread_mutex_init(&m->mutex, &attr);
    pthread_mutexattr_destroy(&attr);
    m->level = level;
}

void mv__mutex_destroy(struct mv__mutex *m)
{
    pthread_mutex_destroy(&m->mutex);
}

void mv__mutex_lock(struct mv__mutex *m)
{
    check_order(m);
    pthread_mutex_lock(&m->mutex);
    NOTE_TAKEN(m);
    locks_held++;
}

void mv__mutex_unlock(struct mv__mutex *m)
{
    locks_held--;
    NOTE_RELEASED(m);
    pthread_mutex_unlock(&m->mutex);
}

void mv__cond_init(pthread_cond_t *cond)
{
    pthread_condattr_t attr;

    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(cond, &attr);
    pthread_condattr_destroy(&attr);
}

bool mv__cond_wait(pthread_cond_t *cond, struct mv__mutex *m,
                   uint64_t deadline_ns)
{
    struct timespec ts;
    int rc;

    if (!deadline_ns) {
        pthread_cond_wait(cond, &m->mutex);
        return true;
    }
    ts.tv_sec = (time_t)(deadline_ns / 1000000000ull);
    ts.tv_nsec = (long)(deadline_ns % 1000000000ull);
    rc = pthread_cond_timedwait(cond, &m->mutex, &ts);
    return rc != ETIMEDOUT;
}

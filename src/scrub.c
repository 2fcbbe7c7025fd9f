/*
 * scrub.c - frames given back: scrubbed (a hole punch, so they read as
 * zeros), uncharged from the budget and returned to the frame allocator, in
 * that order, either at once or by the host's background scrubber.
 *
 * Under MV_SCRUB_BACKGROUND a release is queued and the caller goes on: a
 * domain's destroy then costs what unmapping it costs, and freeing its
 * memory (the kernel's work, about twice an anonymous munmap for memfd
 * pages) happens on the scrubber's thread, as Xen scrubs a dead domain's
 * pages after the domain is gone.  The queue is a FIFO served by one
 * thread, so a release that gives a block back after releases that scrub
 * frames inside it (a shared region freed after its frames) runs after them.
 *
 * Invariants:
 *   a queued frame belongs to no one: it is in no domain, no region that
 *   hands frames out, and no free list of the allocator until its release
 *   is done, so no one can be given a frame that still holds old bytes;
 *   pending_pages, pending_charged and pending_give_back sum the queued
 *   entries and the one in flight; the budget counts pending_charged pages
 *   (the audit adds them to what domains and mechanisms hold);
 *   every entry the scrubber takes is finished: a failed punch falls back to
 *   zeros (mv__machine_scrub) and is logged and counted.
 *
 * Locking: scrub.lock (MV_LOCK_SCRUB, innermost) guards the queue and the
 * counters; the scrubber never holds it across a system call, and takes the
 * machine lock (to give a block back) without it.  Waiters (mv__scrub_wait)
 * may hold any other library lock: the scrubber takes none of them.
 */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static void do_release(struct mv__machine *m, const struct mv__release *r, int *rc)
{
    if (r->flags & MV__RELEASE_SCRUB)
        *rc = mv__machine_scrub(m, r->first, r->pages);
    mv__machine_uncharge(m, r->uncharge);
    if (r->flags & MV__RELEASE_GIVE_BACK)
        mv__machine_free(m, r->first, r->pages);
}

static void *scrubber_main(void *arg)
{
    struct mv__machine *m = arg;
    struct mv__scrubber *s = &m->scrub;

    mv__mutex_lock(&s->lock);
    for (;;) {
        struct mv__release r;
        int rc = 0;

        if (s->stop)
            break;
        if (s->count == 0 || s->held) {
            mv__cond_wait(&s->work, &s->lock, 0);
            continue;
        }
        r = s->queue[s->head];
        s->in_flight = true;
        mv__mutex_unlock(&s->lock);
        if (r.flags & MV__RELEASE_SCRUB)
            rc = mv__machine_scrub(m, r.first, r.pages);
        if (r.flags & MV__RELEASE_GIVE_BACK)
            mv__machine_free(m, r.first, r.pages);
        /* Said before the run counts as done: whoever waits for it (host
         * destroy, mv_host_wait_freed) finds the failure already logged. */
        if (rc < 0)
            mv__log(s->host, MV_LOG_ERROR, "background scrub: %s", mv_last_error());
        mv__mutex_lock(&s->lock);
        /* Uncharged with the counters it leaves: the audit sees both move
         * together (charge_changes tells it to look again). */
        mv__machine_uncharge(m, r.uncharge);
        s->head = (s->head + 1) % s->capacity;
        s->count--;
        s->in_flight = false;
        s->pending_pages -= r.pages;
        s->pending_charged -= r.uncharge;
        if (r.flags & MV__RELEASE_GIVE_BACK)
            s->pending_give_back -= r.pages;
        if (r.flags & MV__RELEASE_SCRUB)
            s->scrubbed_pages += r.pages;
        s->failures += rc < 0;
        pthread_cond_broadcast(&s->done);
        mv__mutex_unlock(&s->lock);
        mv__fault_kick(s->host); /* faults held for memory may go on */
        mv__mutex_lock(&s->lock);
    }
    mv__mutex_unlock(&s->lock);
    return NULL;
}

int mv__scrub_start(struct mv__machine *m, struct mv_host *host)
{
    struct mv__scrubber *s = &m->scrub;
    int rc;

    s->host = host;
    s->capacity = 64;
    s->queue = mv__calloc(s->capacity, sizeof(*s->queue));
    if (!s->queue)
        return mv__fail(-ENOMEM, "no memory for the scrub queue");
    mv__mutex_init(&s->lock, MV_LOCK_SCRUB);
    mv__cond_init(&s->work);
    mv__cond_init(&s->done);
    rc = mv__os_thread_start(&s->thread, NULL, scrubber_main, m);
    if (rc < 0) {
        pthread_cond_destroy(&s->work);
        pthread_cond_destroy(&s->done);
        mv__mutex_destroy(&s->lock);
        free(s->queue);
        memset(s, 0, sizeof(*s));
        return mv__fail(rc, "cannot start the background scrubber: %s", mv_strerror(rc));
    }
    s->running = true;
    return 0;
}

/* Wait (lock held) while queued entries hold budget (MV__RELEASE_SCRUB:
 * charge) or frames for the allocator (MV__RELEASE_GIVE_BACK), or, with
 * `what` 0, while anything is queued.  True when it waited. */
static bool wait_locked(struct mv__scrubber *s, unsigned what)
{
    bool waited = false;

    while (s->count && !s->stop &&
           (!what || (what & MV__RELEASE_SCRUB && s->pending_charged) ||
            (what & MV__RELEASE_GIVE_BACK && s->pending_give_back))) {
        waited = true;
        s->waiters++;
        mv__cond_wait(&s->done, &s->lock, 0);
        s->waiters--;
    }
    return waited;
}

void mv__scrub_stop(struct mv__machine *m)
{
    struct mv__scrubber *s = &m->scrub;

    if (!s->running)
        return;
    mv__mutex_lock(&s->lock);
    /* What is queued is finished first: the frames go back scrubbed and
     * uncharged, as under MV_SCRUB_SYNC. */
    s->held = false;
    pthread_cond_signal(&s->work);
    wait_locked(s, 0);
    s->stop = true;
    pthread_cond_broadcast(&s->work);
    mv__mutex_unlock(&s->lock);
    pthread_join(s->thread, NULL);
    pthread_cond_destroy(&s->work);
    pthread_cond_destroy(&s->done);
    mv__mutex_destroy(&s->lock);
    free(s->queue);
    memset(s, 0, sizeof(*s));
}

/* Make room for one more entry (lock held). */
static bool queue_grow(struct mv__scrubber *s)
{
    size_t cap = s->capacity * 2;
    struct mv__release *q;

    if (s->count < s->capacity)
        return true;
    q = mv__malloc(cap * sizeof(*q));
    if (!q)
        return false;
    for (size_t i = 0; i < s->count; i++)
        q[i] = s->queue[(s->head + i) % s->capacity];
    free(s->queue);
    s->queue = q;
    s->capacity = cap;
    s->head = 0;
    return true;
}

int mv__machine_release(struct mv__machine *m, uint64_t first, uint64_t pages,
                        uint64_t uncharge, unsigned flags)
{
    struct mv__scrubber *s = &m->scrub;
    struct mv__release r = { .first = first, .pages = pages, .uncharge = uncharge,
                             .flags = flags };
    int rc = 0;

    if (s->running) {
        mv__mutex_lock(&s->lock);
        /* A give-back with nothing queued ahead of it and nothing to scrub
         * needs no thread; a queue that cannot grow is served here. */
        if ((flags & MV__RELEASE_SCRUB || s->count) && queue_grow(s)) {
            s->queue[(s->head + s->count) % s->capacity] = r;
            s->count++;
            s->pending_pages += pages;
            s->pending_charged += uncharge;
            if (flags & MV__RELEASE_GIVE_BACK)
                s->pending_give_back += pages;
            pthread_cond_signal(&s->work);
            mv__mutex_unlock(&s->lock);
            return 0;
        }
        mv__mutex_unlock(&s->lock);
    }
    do_release(m, &r, &rc);
    return rc;
}

bool mv__scrub_wait(struct mv__machine *m, unsigned what)
{
    struct mv__scrubber *s = &m->scrub;
    bool waited;

    if (!s->running)
        return false;
    mv__mutex_lock(&s->lock);
    waited = wait_locked(s, what);
    mv__mutex_unlock(&s->lock);
    return waited;
}

void mv__scrub_counts(struct mv__machine *m, struct mv__scrub_counts *out)
{
    struct mv__scrubber *s = &m->scrub;

    memset(out, 0, sizeof(*out));
    if (!s->running)
        return;
    mv__mutex_lock(&s->lock);
    out->pending_pages = s->pending_pages;
    out->pending_charged = s->pending_charged;
    out->scrubbed_pages = s->scrubbed_pages;
    out->failures = s->failures;
    out->waiters = s->waiters;
    mv__mutex_unlock(&s->lock);
}

void mv__scrub_hold(struct mv__machine *m, bool hold)
{
    struct mv__scrubber *s = &m->scrub;

    if (!s->running)
        return;
    mv__mutex_lock(&s->lock);
    s->held = hold;
    pthread_cond_signal(&s->work);
    mv__mutex_unlock(&s->lock);
}

int mv_host_wait_freed(mv_host *h)
{
    mv__clear_error();
    if (!h)
        return mv__fail(-EINVAL, "host must not be NULL");
    (void)mv__scrub_wait(&h->machine, 0);
    return 0;
}

int mv__scrub_audit(struct mv__machine *m, uint64_t **blocks, uint64_t *n)
{
    struct mv__scrubber *s = &m->scrub;
    uint64_t *b;
    int rc = 0;

    if (!s->running)
        return 0;
    mv__mutex_lock(&s->lock);
    b = mv__realloc(*blocks, (*n + s->count + 1) * 2 * sizeof(*b));
    if (!b) {
        mv__mutex_unlock(&s->lock);
        return mv__fail(-ENOMEM, "machine audit: out of memory");
    }
    *blocks = b;
    for (size_t i = 0; i < s->count && rc == 0; i++) {
        const struct mv__release *r = &s->queue[(s->head + i) % s->capacity];

        if (r->first + r->pages > m->pages || r->pages == 0)
            rc = mv__fail(-EUCLEAN, "scrub queue: frames %llu+%llu outside the "
                          "frame space", (unsigned long long)r->first,
                          (unsigned long long)r->pages);
        /* The entry in flight may be in the free lists already. */
        if (!(r->flags & MV__RELEASE_GIVE_BACK) || (i == 0 && s->in_flight))
            continue;
        b[2 * *n] = r->first;
        b[2 * *n + 1] = r->pages;
        (*n)++;
    }
    mv__mutex_unlock(&s->lock);
    return rc;
}

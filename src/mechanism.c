/*
 * mechanism.c - how the core reaches the mechanisms, and how they reach each
 * other: hooks called in the order of mv__mechanisms[] (builtin.c, then the
 * registered ones), and faults dispatched by p2m type to the type's owner.
 *
 * Invariants: every p2m type has exactly one owner (checked when the table
 * is sealed, by the first mv_host_create);
 * the core calls a hook only through the functions here or an
 * mv__each_mechanism loop, so that no core file names a mechanism.
 *
 * Registration: mechanisms from outside the library (libmemvisor-guest's
 * built-in guests) are appended to the table by mv__mechanism_register,
 * before the first host is created; mv_host_create seals the table, so
 * every host sees the same mechanisms for its whole life, and the hooks'
 * loops read the table without a lock.
 *
 * Locking: the event functions run with the caller's domain lock held and
 * take no lock of their own; the table changes only under register_lock
 * and only while it is not sealed (no host exists yet, so no reader).
 */
#include "internal.h"

#include <errno.h>

static pthread_mutex_t register_lock = PTHREAD_MUTEX_INITIALIZER;
static bool sealed;

int mv__mechanism_register(const struct mv__mechanism *m)
{
    int rc = -EBUSY;

    if (!m)
        return -EINVAL;
    pthread_mutex_lock(&register_lock);
    for (size_t i = 0; i < mv__mechanism_count; i++) {
        if (mv__mechanisms[i] == m) {
            rc = (int)i;
            goto out;
        }
    }
    if (sealed)
        goto out;
    if (mv__mechanism_count == MV_MECHANISMS_MAX) {
        rc = -ENOSPC;
        goto out;
    }
    rc = (int)mv__mechanism_count;
    mv__mechanisms[mv__mechanism_count++] = m;
out:
    pthread_mutex_unlock(&register_lock);
    return rc;
}

/* The owner of each p2m type, found when the table is sealed. */
static const struct mv__p2m_ops *owners[MV_P2M_TYPES];

int mv__mechanisms_seal(void)
{
    int rc = 0;

    pthread_mutex_lock(&register_lock);
    if (!sealed) {
        for (unsigned t = 0; t < MV_P2M_TYPES && rc == 0; t++) {
            const struct mv__mechanism *owner = NULL;

            mv__each_mechanism(m) {
                if (!m->p2m_ops[t])
                    continue;
                if (owner)
                    rc = mv__fail(-EINVAL, "p2m type %u has two owners: %s and %s", t,
                                  owner->name, m->name);
                owner = m;
            }
            if (rc == 0 && !owner)
                rc = mv__fail(-EINVAL, "p2m type %u has no owner", t);
            if (rc == 0)
                owners[t] = owner->p2m_ops[t];
        }
        sealed = rc == 0;
    }
    pthread_mutex_unlock(&register_lock);
    return rc;
}

const struct mv__p2m_ops *mv__p2m_ops_of(enum mv__p2m_type type)
{
    return owners[type];
}

void mv__domain_pages_changed(struct mv_domain *d, uint64_t gfn, uint64_t n)
{
    mv__each_mechanism(m)
        if (m->pages_changed)
            m->pages_changed(d, gfn, n);
}

bool mv__domain_needs_small_pages(struct mv_domain *d)
{
    mv__each_mechanism(m)
        if (m->needs_small_pages && m->needs_small_pages(d))
            return true;
    return false;
}

void mv__domain_room_changed(struct mv_domain *d)
{
    mv__each_mechanism(m)
        if (m->room_changed)
            m->room_changed(d);
}

int mv__domain_writes_watched(struct mv_domain *d, bool on)
{
    int rc = 0;

    mv__assert_held(&d->lock);
    d->writes_watched = on;

    mv__each_mechanism(m) {
        if (m->writes_watched) {
            int r = m->writes_watched(d, on);

            if (r < 0 && rc == 0)
                rc = r;
        }
    }
    return rc;
}

bool mv__domain_claim(struct mv_domain *d, uint64_t pages, bool machine)
{
    mv__assert_held(&d->lock);
    if (d->populated + pages > d->target_pages) {
        mv__each_mechanism(m)
            if (m->reclaim && d->populated + pages > d->target_pages)
                m->reclaim(d, pages);
        if (d->populated + pages > d->target_pages)
            return false;
    }
    return !machine || mv__host_charge(d->host, d, pages);
}

bool mv__host_charge(struct mv_host *h, struct mv_domain *d, uint64_t pages)
{
    struct mv__machine *mach = &h->machine;
    uint64_t budget, populated;

    if (mv__machine_charge(mach, pages))
        return true;
    budget = atomic_load(&mach->budget_pages);
    populated = atomic_load(&mach->populated_pages);
    if (populated + pages <= budget)
        return mv__machine_charge(mach, pages);
    /* Memory a destroyed domain gave back comes first, once scrubbed. */
    if (mv__scrub_wait(mach, MV__RELEASE_SCRUB) && mv__machine_charge(mach, pages))
        return true;
    mv__each_mechanism(m)
        if (m->budget_short)
            m->budget_short(h, d, populated + pages - budget);
    return mv__machine_charge(mach, pages);
}

void mv__domain_cloned(struct mv_domain *src, struct mv_domain *clone)
{
    mv__each_mechanism(m)
        if (m->domain_cloned)
            m->domain_cloned(src, clone);
}

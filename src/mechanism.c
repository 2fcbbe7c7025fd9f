/*
 * mechanism.c - how the core reaches the mechanisms, and how they reach each
 * other: hooks called in the order of mv__mechanisms[] (builtin.c), and
 * faults dispatched by p2m type to the type's owner.
 *
 * Invariants: every p2m type has exactly one owner (checked on first use);
 * the core calls a hook only through the functions here or an
 * mv__each_mechanism loop, so that no core file names a mechanism.
 *
 * Locking: the event functions run with the caller's domain lock held and
 * take no lock of their own; the table is constant.
 */
#include "internal.h"

#include <stdlib.h>

const struct mv__p2m_ops *mv__p2m_ops_of(enum mv__p2m_type type)
{
    static const struct mv__p2m_ops *owners[MV_P2M_TYPES];
    const struct mv__p2m_ops *ops = __atomic_load_n(&owners[type], __ATOMIC_ACQUIRE);

    if (mv_likely(ops != NULL))
        return ops;
    mv__each_mechanism(m) {
        if (m->p2m_ops[type]) {
            if (ops)
                abort(); /* two owners: a build error, not a run-time one */
            ops = m->p2m_ops[type];
        }
    }
    if (!ops)
        abort();
    __atomic_store_n(&owners[type], ops, __ATOMIC_RELEASE);
    return ops;
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
    return !machine || mv__machine_charge(&d->host->machine, pages);
}

void mv__domain_cloned(struct mv_domain *src, struct mv_domain *clone)
{
    mv__each_mechanism(m)
        if (m->domain_cloned)
            m->domain_cloned(src, clone);
}

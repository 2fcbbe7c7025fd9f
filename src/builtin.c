/*
 * builtin.c - the mechanisms this library is built with, in the order the
 * core calls their hooks (and the reverse order when tearing down): sharing
 * first (its second userfaultfd exists before anything maps a frame
 * elsewhere), dirty logging (it decides the domain's userfaultfd features),
 * populate-on-demand (owner of the RAM, PoD and ballooned p2m types), and
 * the built-in guests last (their vCPUs start once everything else is set
 * up, and stop first).
 *
 * The one file of the library that names every mechanism.
 */
#include "internal.h"

extern const struct mv__mechanism mv__share_mechanism;
extern const struct mv__mechanism mv__logdirty_mechanism;
extern const struct mv__mechanism mv__pod_mechanism;
extern const struct mv__mechanism mv__guest_mechanism;

const struct mv__mechanism *const mv__mechanisms[] = {
    &mv__share_mechanism,
    &mv__logdirty_mechanism,
    &mv__pod_mechanism,
    &mv__guest_mechanism,
};

const size_t mv__mechanism_count = MV_ARRAY_SIZE(mv__mechanisms);

/*
 * builtin.c - the mechanisms this library is built with, in the order the
 * core calls their hooks (and the reverse order when tearing down): sharing
 * first (its second userfaultfd exists before anything maps a frame
 * elsewhere), dirty logging (it decides the domain's userfaultfd features),
 * then populate-on-demand (owner of the RAM, PoD and ballooned p2m types),
 * then transcendent memory (owner of the paged type; it gives memory back
 * first when the host budget runs short), then the snapshot hand-over
 * (VMs whose memory is the VMM's own, served outside the p2m).
 * Mechanisms from outside the library (the built-in guests of
 * libmemvisor-guest) follow them in mv__mechanisms[], appended by
 * mv__mechanism_register (mechanism.c) before the first host exists: their
 * vCPUs start once everything else is set up, and stop first.
 *
 * The one file of the library that names every built-in mechanism.
 */
#include "internal.h"

extern const struct mv__mechanism mv__share_mechanism;
extern const struct mv__mechanism mv__logdirty_mechanism;
extern const struct mv__mechanism mv__pod_mechanism;
extern const struct mv__mechanism mv__tmem_mechanism;
extern const struct mv__mechanism mv__fc_mechanism;

#define MV_BUILTIN_MECHANISMS \
    &mv__share_mechanism, &mv__logdirty_mechanism, &mv__pod_mechanism, \
    &mv__tmem_mechanism, &mv__fc_mechanism

/* Written only by mv__mechanism_register, under its lock, before any host
 * exists; read-only from then on. */
const struct mv__mechanism *mv__mechanisms[MV_MECHANISMS_MAX] = {
    MV_BUILTIN_MECHANISMS
};

size_t mv__mechanism_count =
    MV_ARRAY_SIZE(((const struct mv__mechanism *const[]){ MV_BUILTIN_MECHANISMS }));

_Static_assert(MV_ARRAY_SIZE(((const struct mv__mechanism *const[]){
                   MV_BUILTIN_MECHANISMS })) < MV_MECHANISMS_MAX,
               "MV_MECHANISMS_MAX leaves no room to register a mechanism");

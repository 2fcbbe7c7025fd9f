/*
 * fc.h - receiving Firecracker's page-fault-handler hand-over: the VMM
 * connects to a Unix socket and sends, in one message, a JSON array of its
 * memory regions ({"base_host_virt_addr", "size", "offset", "page_size" or
 * "page_size_kib"}) with its userfaultfd (SCM_RIGHTS).  What is received
 * goes to mv_fc_serve.
 */
#ifndef MV_TOOLS_FC_H
#define MV_TOOLS_FC_H

#include "memvisor.h"

#include <stddef.h>

struct mv_fc_handover {
    struct mv_fc_region *regions; /* malloc'd */
    size_t count;
    int uffd;
    int pid;                      /* the peer's, from SO_PEERCRED */
};

/* Accept one connection on listen_fd within timeout_ms and read the
 * hand-over.  0, or a negative errno with why filled (nothing is left
 * open). */
int mv_fc_receive(int listen_fd, unsigned timeout_ms, struct mv_fc_handover *out,
                  char *why, size_t why_len);

/* Parse the JSON text of the regions.  0 or -EINVAL with why filled. */
int mv_fc_parse_regions(const char *json, struct mv_fc_region **regions, size_t *count,
                        char *why, size_t why_len);

#endif /* MV_TOOLS_FC_H */

/*
 * logdirty_floor.h - the kernel's floor for `bench logdirty`'s fetch: a raw
 * protecting PAGEMAP_SCAN loop over a WP_ASYNC-registered memfd mapping
 * (logdirty_floor.c).
 */
#ifndef MV_BENCH_LOGDIRTY_FLOOR_H
#define MV_BENCH_LOGDIRTY_FLOOR_H

#include "memvisor.h"

#include <stdint.h>

struct ld_floor {
    int memfd;
    int uffd;           /* WP_ASYNC, the whole mapping registered */
    int pagemap;        /* /proc/self/pagemap */
    uint8_t *mem;       /* `bytes` of the memfd, MAP_SHARED */
    uint64_t bytes;
};

/* An ld_floor that owns nothing (safe to close). */
void ld_floor_init(struct ld_floor *f);
/* `bytes` of shmem, every page written, registered, protected and scanned
 * once.  Returns 0 or -errno with *failed naming the call; close it either
 * way. */
int ld_floor_open(struct ld_floor *f, uint64_t bytes, const char **failed);
/* One protecting scan of the whole range: pages found written, or -errno. */
int64_t ld_floor_fetch(struct ld_floor *f);
void ld_floor_close(struct ld_floor *f);

#endif /* MV_BENCH_LOGDIRTY_FLOOR_H */

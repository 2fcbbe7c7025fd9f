/*
 * guest_image.h - guest memory for the page-sharing benchmarks: synthetic
 * guests that look like real ones, raw RAM dumps of real guests, and the
 * ideal savings of a set of them.
 *
 * A synthetic guest of S MiB holds, page by page:
 *   kernel        the same "kernel image" in every guest: kernel_mib of
 *                 pseudo-random, non-zero pages at the same guest-physical
 *                 offset (kernel_offset_mib), as a distribution kernel is
 *                 loaded at the same address by every guest that boots it
 *   shared cache  page-cache pages of "files" from a common pool; each file
 *                 is loaded by two or more guests, each at its own offsets
 *   unique cache  page-cache pages of files only this guest loaded
 *   anonymous     heap and stack pages no other guest has
 *   zero          free memory, scrubbed at boot
 * File and anonymous pages sit in runs of random length shuffled across
 * guest-physical memory, so no two guests hold a shared file at the same
 * place.  Everything follows from the seed: the same parameters give the
 * same bytes.
 *
 * With the defaults (256 MiB guests, a 32 MiB kernel, 22% shared cache, 18%
 * unique cache, 25% anonymous) about 45% of the non-zero pages of a set of
 * guests have a copy in another guest and 22.5% of all pages are zero.
 *
 * A raw RAM dump is a file whose byte i is guest-physical byte i, as QEMU's
 * memory-backend-file leaves it; it is mapped read-only.
 */
#ifndef MV_BENCH_GUEST_IMAGE_H
#define MV_BENCH_GUEST_IMAGE_H

#include "memvisor.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define GUEST_IMAGE_MAX 64u

enum guest_page_kind {
    GUEST_PAGE_KERNEL,
    GUEST_PAGE_SHARED_CACHE,
    GUEST_PAGE_UNIQUE_CACHE,
    GUEST_PAGE_ANON,
    GUEST_PAGE_ZERO,
    GUEST_PAGE_KINDS
};

/* "kernel", "shared_cache", ... */
const char *guest_page_kind_name(enum guest_page_kind kind);

struct guest_image_params {
    unsigned guests;            /* 1..GUEST_IMAGE_MAX */
    uint64_t guest_mib;         /* a multiple of 2 */
    uint64_t seed;
    uint64_t kernel_mib;        /* the identical kernel image */
    uint64_t kernel_offset_mib; /* its guest-physical address */
    unsigned shared_cache_pct;  /* of every guest's pages */
    unsigned unique_cache_pct;
    unsigned anon_pct;          /* the rest, less the kernel, is zero */
    unsigned run_min_pages;     /* file and anonymous pages come in runs */
    unsigned run_max_pages;     /* of this many consecutive pages */
    /* Page contents: false (the default) fills every non-zero page with
     * random bytes, which no compressor shrinks (the sharing benchmarks);
     * true gives each kind its texture: machine code for the kernel, text
     * for the page cache, heap words (zeros, pointers, small integers) for
     * anonymous memory (the compression benchmarks). */
    bool compressible;
};

#define GUEST_IMAGE_DEFAULT_GUESTS 6u
#define GUEST_IMAGE_DEFAULT_MIB 256u
#define GUEST_IMAGE_DEFAULT_SEED 20261123u

/* Fill `params` with the defaults above. */
void guest_image_params_init(struct guest_image_params *params);

struct guest_image {
    char name[64];              /* "guest-3", or the dump's file name */
    const uint8_t *data;        /* guest-physical byte i is data[i] */
    uint64_t bytes;             /* whole pages (a dump's last one padded) */
    uint64_t pages;
    /* Synthetic guests: where the kernel image is (for hints) and how many
     * pages of each kind the guest holds.  Zero for a dump. */
    uint64_t kernel_gfn;
    uint64_t kernel_pages;
    uint64_t kind_pages[GUEST_PAGE_KINDS];
    /* Filled by guest_image_ideal: one byte per page, 1 when the page is
     * not all zero and its bytes appear on another page of the set. */
    uint8_t *duplicated;
    /* private */
    void *map;
    size_t map_bytes;
};

struct guest_image_set {
    struct guest_image images[GUEST_IMAGE_MAX];
    size_t count;
    bool synthetic;
    struct guest_image_params params;   /* when synthetic */
    uint64_t files_shared;              /* files of the common pool */
    uint64_t files_unique;
    uint64_t generate_ns;
};

/*
 * Generate params->guests synthetic guests into `set` (which must be empty).
 * Returns MV_BENCH_OK, or says why not and returns MV_BENCH_FAILED (bad
 * parameters, no memory).
 */
int guest_image_generate(const struct guest_image_params *params,
                         struct guest_image_set *set);

/*
 * Add the raw RAM dump at `path` to `set`, mapped read-only.  Returns
 * MV_BENCH_OK, or says why not and returns MV_BENCH_FAILED.
 */
int guest_image_add_file(struct guest_image_set *set, const char *path);

/* Release every image of the set (and its duplicated map); the set is empty
 * afterwards. */
void guest_image_set_free(struct guest_image_set *set);

/* Page `gfn` of `image` (a pointer into the image). */
static inline const uint8_t *guest_image_page(const struct guest_image *image,
                                              uint64_t gfn)
{
    return image->data + gfn * MV_PAGE_SIZE;
}

/*
 * What sharing identical pages could save at best, over all the images.  A
 * non-zero page is a duplicate when its exact bytes appear on another page
 * (of any image); sharing keeps one copy of each distinct content, so
 *   saved_pages = nonzero_pages - distinct_nonzero.
 * Zero pages are counted apart: they need no frame at all.  Contents are
 * grouped by XXH3_64bits and confirmed by comparing the bytes, so a 64-bit
 * collision is counted (hash_collisions), never taken for a match.
 */
struct guest_image_ideal {
    uint64_t total_pages;
    uint64_t zero_pages;
    uint64_t nonzero_pages;
    uint64_t distinct_nonzero;   /* distinct contents of non-zero pages */
    uint64_t duplicated_pages;   /* non-zero pages whose bytes appear twice+ */
    uint64_t cross_image_pages;  /* ... of which appear in another image */
    uint64_t saved_pages;        /* nonzero_pages - distinct_nonzero */
    uint64_t hash_collisions;    /* equal hashes, different bytes */
    uint64_t elapsed_ns;
};

int guest_image_ideal(struct guest_image_set *set, struct guest_image_ideal *out);

#endif /* MV_BENCH_GUEST_IMAGE_H */

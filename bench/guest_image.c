/*
 * guest_image.c - synthetic guests that look like real ones, raw RAM dumps,
 * and the ideal savings of a set of images (see guest_image.h).
 *
 * Generation, from one seed:
 *   1. Every guest gets page budgets: the kernel image, shared cache, unique
 *      cache, anonymous, and zero for the rest.
 *   2. The common pool: files of 16..2048 pages are made one at a time, each
 *      loaded by a random subset of two or more of the guests whose shared
 *      budget is not spent (every guest, one time in three), until fewer
 *      than two such guests remain; what a lone guest has left becomes
 *      unique cache.  Unique files fill each guest's unique budget.
 *   3. Each guest's files are cut into runs of run_min..run_max pages, its
 *      anonymous memory into runs of 1..512 pages and its free memory into
 *      runs of 1..4096 pages; the runs are shuffled and laid out from gfn 0
 *      up, around the kernel image.
 * A page's bytes are a splitmix64 stream seeded by (seed, kind, file or
 * guest, page index), so a file's page 7 has the same bytes in every guest
 * that loaded it and in no other place.  The first word always has its low
 * bit set: no generated page is all zero except the free ones.
 */
#include "guest_image.h"
#include "bench_util.h"

/* Header-only xxHash (libxxhash-dev): XXH3_64bits without a link flag. */
#define XXH_INLINE_ALL
#include <xxhash.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define GI_PAGE_WORDS (MV_PAGE_SIZE / sizeof(uint64_t))
#define GI_FILE_MIN_PAGES 16u
#define GI_FILE_MAX_PAGES 2048u
#define GI_ANON_RUN_MAX 512u
#define GI_ZERO_RUN_MAX 4096u

static const char *const kind_names[GUEST_PAGE_KINDS] = {
    [GUEST_PAGE_KERNEL] = "kernel",
    [GUEST_PAGE_SHARED_CACHE] = "shared_cache",
    [GUEST_PAGE_UNIQUE_CACHE] = "unique_cache",
    [GUEST_PAGE_ANON] = "anonymous",
    [GUEST_PAGE_ZERO] = "zero",
};

const char *guest_page_kind_name(enum guest_page_kind kind)
{
    return (unsigned)kind < GUEST_PAGE_KINDS ? kind_names[kind] : "unknown";
}

void guest_image_params_init(struct guest_image_params *p)
{
    *p = (struct guest_image_params){
        .guests = GUEST_IMAGE_DEFAULT_GUESTS,
        .guest_mib = GUEST_IMAGE_DEFAULT_MIB,
        .seed = GUEST_IMAGE_DEFAULT_SEED,
        .kernel_mib = 32,
        .kernel_offset_mib = 16,
        .shared_cache_pct = 22,
        .unique_cache_pct = 18,
        .anon_pct = 25,
        .run_min_pages = 8,
        .run_max_pages = 256,
    };
}

/* ------------------------------------------------------------------------ */
/* Pseudo-random numbers and page contents                                   */

static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += UINT64_C(0x9e3779b97f4a7c15));

    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

static uint64_t mix64(uint64_t x)
{
    return splitmix64(&x);
}

/* A number in [lo, hi]. */
static uint64_t rng_range(uint64_t *state, uint64_t lo, uint64_t hi)
{
    return lo + splitmix64(state) % (hi - lo + 1);
}

static uint64_t page_seed(uint64_t seed, enum guest_page_kind kind, uint64_t id,
                          uint64_t index)
{
    return mix64(mix64(mix64(seed ^ ((uint64_t)(kind + 1) << 56)) ^ id) ^ index);
}

static void fill_random(uint8_t *page, uint64_t seed)
{
    uint64_t *w = (uint64_t *)page, s = seed;

    for (size_t i = 0; i < GI_PAGE_WORDS; i++)
        w[i] = splitmix64(&s);
    w[0] |= 1;
}

/* Page-cache text: words of a small vocabulary, as source, logs and
 * configuration files hold. */
static void fill_text(uint8_t *page, uint64_t s)
{
    static const char *const words[] = {
        "the ", "of ", "and ", "to ", "in ", "is ", "for ", "that ", "with ", "on ",
        "static ", "int ", "return ", "if (", "else ", "struct ", "void ", "char *",
        "unsigned ", "long ", "const ", "#include <", ".h>\n", "{\n", "}\n", ";\n",
        "    ", "\t", "= ", "== ", "!= ", "0", "1", "NULL", "error", "memory", "page",
        "file", "size", "buffer", "kernel", "user", "data", "value", "count", "index",
        "next", "prev", "list", "lock", "init", "free", "alloc", "read", "write", "open",
        "close", "[INFO] ", "[WARN] ", "2026-12-04 ", "GET /", " HTTP/1.1\n", "=", "\n",
    };
    size_t i = 0;

    while (i < MV_PAGE_SIZE) {
        const char *w = words[splitmix64(&s) % (sizeof(words) / sizeof(words[0]))];

        while (*w && i < MV_PAGE_SIZE)
            page[i++] = (uint8_t)*w++;
    }
    memcpy(page, &s, sizeof(s)); /* distinct pages stay distinct */
}

/* Machine code: a few common opcodes, ModRM bytes, small displacements and
 * immediates, the odd 32-bit address. */
static void fill_code(uint8_t *page, uint64_t s)
{
    static const uint8_t ops[] = { 0x48, 0x89, 0x8b, 0xe8, 0x83, 0xc3, 0x0f, 0x85,
                                   0x74, 0x75, 0x31, 0x41, 0x4c, 0x55, 0x5d, 0xff };
    size_t i = 0;

    while (i < MV_PAGE_SIZE) {
        uint64_t r = splitmix64(&s);

        page[i++] = ops[r & 15];
        if (i < MV_PAGE_SIZE && (r & 0x30))
            page[i++] = (uint8_t)(0xc0 | ((r >> 8) & 0x3f));
        if (i < MV_PAGE_SIZE && (r & 0xc0) == 0xc0)
            page[i++] = (uint8_t)((r >> 16) & 0x7f);
        if ((r & 0x700) == 0x700)
            for (int k = 0; k < 4 && i < MV_PAGE_SIZE; k++)
                page[i++] = (uint8_t)(k < 2 ? r >> (24 + 8 * k) : 0);
    }
    memcpy(page, &s, sizeof(s));
}

/* Heap: zero words, pointers into one arena, small integers, some random
 * payload. */
static void fill_heap(uint8_t *page, uint64_t s)
{
    uint64_t *w = (uint64_t *)page;

    for (size_t i = 0; i < GI_PAGE_WORDS; i++) {
        uint64_t r = splitmix64(&s);

        switch (r & 7) {
        case 0: case 1: case 2:
            w[i] = 0;
            break;
        case 3: case 4:
            w[i] = 0x00007f3a20000000ull + ((r >> 8) & 0xffff0);
            break;
        case 5: case 6:
            w[i] = (r >> 8) & 0x3ff;
            break;
        default:
            w[i] = r;
        }
    }
    w[0] = s | 1;
}

/* The bytes of a page of `kind` made from `seed`: random (what the sharing
 * benchmarks need: no two distinct pages compress alike), or, for the
 * compression benchmarks, the texture of the kind. */
static void fill_page(const struct guest_image_params *p, uint8_t *page,
                      enum guest_page_kind kind, uint64_t seed)
{
    if (!p->compressible) {
        fill_random(page, seed);
        return;
    }
    switch (kind) {
    case GUEST_PAGE_KERNEL:
        fill_code(page, seed);
        break;
    case GUEST_PAGE_SHARED_CACHE:
    case GUEST_PAGE_UNIQUE_CACHE:
        fill_text(page, seed);
        break;
    default:
        fill_heap(page, seed);
    }
}

/* ------------------------------------------------------------------------ */
/* Runs of pages                                                             */

struct gi_run {
    enum guest_page_kind kind;
    uint64_t id;        /* file id, or the guest for anonymous pages */
    uint64_t first;     /* page index within the file or guest */
    uint64_t len;
};

struct gi_runs {
    struct gi_run *v;
    size_t n, cap;
};

static int runs_push(struct gi_runs *r, enum guest_page_kind kind, uint64_t id,
                     uint64_t first, uint64_t len)
{
    if (r->n == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 256;
        struct gi_run *v = realloc(r->v, cap * sizeof(*v));

        if (!v)
            return -1;
        r->v = v;
        r->cap = cap;
    }
    r->v[r->n++] = (struct gi_run){ .kind = kind, .id = id, .first = first, .len = len };
    return 0;
}

/* Cut `len` pages of (kind, id) into runs of min..max pages. */
static int runs_push_cut(struct gi_runs *r, uint64_t *rng, enum guest_page_kind kind,
                         uint64_t id, uint64_t first, uint64_t len, uint64_t min,
                         uint64_t max)
{
    while (len) {
        uint64_t n = rng_range(rng, min, max);

        n = MV_BENCH_MIN(n, len);

        if (runs_push(r, kind, id, first, n) < 0)
            return -1;
        first += n;
        len -= n;
    }
    return 0;
}

static void runs_shuffle(struct gi_runs *r, uint64_t *rng)
{
    for (size_t i = r->n; i > 1; i--) {
        size_t j = (size_t)(splitmix64(rng) % i);
        struct gi_run t = r->v[i - 1];

        r->v[i - 1] = r->v[j];
        r->v[j] = t;
    }
}

/* Write the run's pages at gfn `at` of `image`. */
static void write_run(struct guest_image *image, const struct guest_image_params *p,
                      const struct gi_run *run, uint64_t offset, uint64_t at, uint64_t n)
{
    image->kind_pages[run->kind] += n;
    if (run->kind == GUEST_PAGE_ZERO)
        return; /* fresh anonymous memory reads as zero */
    for (uint64_t i = 0; i < n; i++)
        fill_page(p, (uint8_t *)image->map + (at + i) * MV_PAGE_SIZE, run->kind,
                  page_seed(p->seed, run->kind, run->id, run->first + offset + i));
}

/* Lay the shuffled runs out from gfn 0 up, around the kernel image. */
static void lay_out(struct guest_image *image, const struct guest_image_params *p,
                    const struct gi_runs *r)
{
    uint64_t pos = 0, kend = image->kernel_gfn + image->kernel_pages;

    for (size_t i = 0; i < r->n; i++) {
        uint64_t done = 0;

        while (done < r->v[i].len) {
            uint64_t n = r->v[i].len - done;

            if (pos == image->kernel_gfn)
                pos = kend;
            if (pos < image->kernel_gfn)
                n = MV_BENCH_MIN(n, image->kernel_gfn - pos);
            write_run(image, p, &r->v[i], done, pos, n);
            pos += n;
            done += n;
        }
    }
}

/* ------------------------------------------------------------------------ */
/* Generation                                                                */

static int check_params(const struct guest_image_params *p)
{
    uint64_t pages = p->guest_mib * (MV_BENCH_MIB / MV_PAGE_SIZE);
    uint64_t kernel = p->kernel_mib * (MV_BENCH_MIB / MV_PAGE_SIZE);
    uint64_t pct = (uint64_t)p->shared_cache_pct + p->unique_cache_pct + p->anon_pct;

    if (p->guests < 1 || p->guests > GUEST_IMAGE_MAX) {
        mv_bench_error("guest images: %u guests; 1 to %u can be generated", p->guests,
                       GUEST_IMAGE_MAX);
        return MV_BENCH_FAILED;
    }
    if (p->guest_mib < 2 || p->guest_mib % 2 || p->guest_mib > (UINT64_C(1) << 20)) {
        mv_bench_error("guest images: %" PRIu64 " MiB is not a whole number of "
                       "2 MiB blocks from 2 MiB to 1 TiB", p->guest_mib);
        return MV_BENCH_FAILED;
    }
    if (p->kernel_offset_mib + p->kernel_mib > p->guest_mib) {
        mv_bench_error("guest images: a %" PRIu64 " MiB kernel at %" PRIu64
                       " MiB does not fit in a %" PRIu64 " MiB guest", p->kernel_mib,
                       p->kernel_offset_mib, p->guest_mib);
        return MV_BENCH_FAILED;
    }
    if (pct > 100 || pages * pct / 100 > pages - kernel) {
        mv_bench_error("guest images: %u%% shared cache + %u%% unique cache + %u%% "
                       "anonymous do not fit beside a %" PRIu64 " MiB kernel in %"
                       PRIu64 " MiB", p->shared_cache_pct, p->unique_cache_pct,
                       p->anon_pct, p->kernel_mib, p->guest_mib);
        return MV_BENCH_FAILED;
    }
    if (p->run_min_pages < 1 || p->run_max_pages < p->run_min_pages) {
        mv_bench_error("guest images: runs of %u..%u pages", p->run_min_pages,
                       p->run_max_pages);
        return MV_BENCH_FAILED;
    }
    return MV_BENCH_OK;
}

static int map_image(struct guest_image *image, uint64_t pages)
{
    void *map = mmap(NULL, pages * MV_PAGE_SIZE, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);

    if (map == MAP_FAILED) {
        mv_bench_error("guest images: cannot map %" PRIu64 " MiB: %s",
                       pages * MV_PAGE_SIZE / MV_BENCH_MIB, strerror(errno));
        return MV_BENCH_FAILED;
    }
    /* Huge pages where the kernel offers them: a 4 KiB first touch costs
     * 10-13 us on a paravirtualized machine. */
    (void)madvise(map, pages * MV_PAGE_SIZE, MADV_HUGEPAGE);
    image->map = map;
    image->map_bytes = pages * MV_PAGE_SIZE;
    image->data = map;
    image->pages = pages;
    image->bytes = pages * MV_PAGE_SIZE;
    return MV_BENCH_OK;
}

/* Steps 2 and 3 of the generation: every guest's runs, shuffled. */
static int plan_runs(const struct guest_image_params *p, struct guest_image_set *set,
                     struct gi_runs *runs)
{
    uint64_t pages = p->guest_mib * (MV_BENCH_MIB / MV_PAGE_SIZE);
    uint64_t kernel = p->kernel_mib * (MV_BENCH_MIB / MV_PAGE_SIZE);
    uint64_t shared[GUEST_IMAGE_MAX], unique[GUEST_IMAGE_MAX], rng = mix64(p->seed);
    uint64_t next_file = 1;
    unsigned n = p->guests;

    for (unsigned g = 0; g < n; g++) {
        shared[g] = pages * p->shared_cache_pct / 100;
        unique[g] = pages * p->unique_cache_pct / 100;
    }
    /* The common pool: each file goes to two or more guests. */
    for (;;) {
        unsigned cand[GUEST_IMAGE_MAX], ncand = 0, k;
        uint64_t len = rng_range(&rng, GI_FILE_MIN_PAGES, GI_FILE_MAX_PAGES);
        uint64_t file = next_file++;

        for (unsigned g = 0; g < n; g++)
            if (shared[g])
                cand[ncand++] = g;
        if (ncand < 2)
            break;
        k = splitmix64(&rng) % 3 == 0 ? ncand
                                      : (unsigned)rng_range(&rng, 2, ncand);
        /* The guest with the most budget left always takes part, so the
         * budgets run out together and no guest is left alone with one. */
        for (unsigned i = 1; i < ncand; i++)
            if (shared[cand[i]] > shared[cand[0]]) {
                unsigned t = cand[0];

                cand[0] = cand[i];
                cand[i] = t;
            }
        for (unsigned i = 0; i < k; i++) {
            unsigned j = i + (unsigned)(splitmix64(&rng) % (ncand - i)), t;

            if (i == 0)
                j = 0;
            t = cand[i];

            cand[i] = cand[j];
            cand[j] = t;
            len = MV_BENCH_MIN(len, shared[cand[i]]);
        }
        for (unsigned i = 0; i < k; i++) {
            unsigned g = cand[i];

            shared[g] -= len;
            if (runs_push_cut(&runs[g], &rng, GUEST_PAGE_SHARED_CACHE, file, 0, len,
                              p->run_min_pages, p->run_max_pages) < 0)
                return MV_BENCH_FAILED;
        }
        set->files_shared++;
    }
    for (unsigned g = 0; g < n; g++) {
        uint64_t left = unique[g] + shared[g], anon = pages * p->anon_pct / 100;
        uint64_t zero = pages - kernel - pages * p->shared_cache_pct / 100 -
                        pages * p->unique_cache_pct / 100 - anon;

        while (left) {
            uint64_t len = rng_range(&rng, GI_FILE_MIN_PAGES, GI_FILE_MAX_PAGES);

            len = MV_BENCH_MIN(len, left);

            if (runs_push_cut(&runs[g], &rng, GUEST_PAGE_UNIQUE_CACHE, next_file++, 0,
                              len, p->run_min_pages, p->run_max_pages) < 0)
                return MV_BENCH_FAILED;
            set->files_unique++;
            left -= len;
        }
        if (runs_push_cut(&runs[g], &rng, GUEST_PAGE_ANON, g, 0, anon, 1,
                          GI_ANON_RUN_MAX) < 0 ||
            runs_push_cut(&runs[g], &rng, GUEST_PAGE_ZERO, g, 0, zero, 1,
                          GI_ZERO_RUN_MAX) < 0)
            return MV_BENCH_FAILED;
        runs_shuffle(&runs[g], &rng);
    }
    return MV_BENCH_OK;
}

int guest_image_generate(const struct guest_image_params *p, struct guest_image_set *set)
{
    struct gi_runs runs[GUEST_IMAGE_MAX];
    uint64_t pages = p->guest_mib * (MV_BENCH_MIB / MV_PAGE_SIZE);
    uint64_t kernel = p->kernel_mib * (MV_BENCH_MIB / MV_PAGE_SIZE);
    uint64_t t0 = mv_bench_now_ns();
    int rc = check_params(p);

    if (rc != MV_BENCH_OK)
        return rc;
    if (set->count) {
        mv_bench_error("guest images: generated guests replace no others");
        return MV_BENCH_FAILED;
    }
    memset(runs, 0, sizeof(runs));
    set->synthetic = true;
    set->params = *p;
    set->files_shared = set->files_unique = 0;
    rc = plan_runs(p, set, runs);
    if (rc != MV_BENCH_OK)
        mv_bench_error("guest images: out of memory planning %u guests", p->guests);
    for (unsigned g = 0; g < p->guests && rc == MV_BENCH_OK; g++) {
        struct guest_image *image = &set->images[g];

        memset(image, 0, sizeof(*image));
        rc = map_image(image, pages);
        if (rc != MV_BENCH_OK)
            break;
        set->count = g + 1;
        snprintf(image->name, sizeof(image->name), "guest-%u", g);
        image->kernel_gfn = p->kernel_offset_mib * (MV_BENCH_MIB / MV_PAGE_SIZE);
        image->kernel_pages = kernel;
        for (uint64_t i = 0; i < kernel; i++)
            fill_page(p, (uint8_t *)image->map + (image->kernel_gfn + i) * MV_PAGE_SIZE,
                      GUEST_PAGE_KERNEL, page_seed(p->seed, GUEST_PAGE_KERNEL, 0, i));
        image->kind_pages[GUEST_PAGE_KERNEL] = kernel;
        lay_out(image, p, &runs[g]);
        if (mprotect(image->map, image->map_bytes, PROT_READ) < 0) {
            mv_bench_error("guest images: mprotect: %s", strerror(errno));
            rc = MV_BENCH_FAILED;
        }
    }
    for (unsigned g = 0; g < p->guests; g++)
        free(runs[g].v);
    if (rc != MV_BENCH_OK)
        guest_image_set_free(set);
    set->generate_ns = mv_bench_now_ns() - t0;
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Raw RAM dumps                                                             */

int guest_image_add_file(struct guest_image_set *set, const char *path)
{
    struct guest_image *image;
    const char *base = strrchr(path, '/');
    struct stat st;
    uint64_t pages;
    void *map;
    int fd;

    if (set->count >= GUEST_IMAGE_MAX) {
        mv_bench_error("guest images: more than %u images", GUEST_IMAGE_MAX);
        return MV_BENCH_FAILED;
    }
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        mv_bench_error("guest images: %s: %s", path, strerror(errno));
        return MV_BENCH_FAILED;
    }
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size <= 0) {
        mv_bench_error("guest images: %s: not a non-empty regular file", path);
        close(fd);
        return MV_BENCH_FAILED;
    }
    /* The bytes of the last page past the end of the file read as zero. */
    pages = ((uint64_t)st.st_size + MV_PAGE_SIZE - 1) / MV_PAGE_SIZE;
    map = mmap(NULL, pages * MV_PAGE_SIZE, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) {
        mv_bench_error("guest images: cannot map %s: %s", path, strerror(errno));
        return MV_BENCH_FAILED;
    }
    image = &set->images[set->count++];
    memset(image, 0, sizeof(*image));
    snprintf(image->name, sizeof(image->name), "%s", base ? base + 1 : path);
    image->map = map;
    image->map_bytes = pages * MV_PAGE_SIZE;
    image->data = map;
    image->pages = pages;
    image->bytes = pages * MV_PAGE_SIZE;
    set->synthetic = false;
    return MV_BENCH_OK;
}

void guest_image_set_free(struct guest_image_set *set)
{
    for (size_t i = 0; i < set->count; i++) {
        if (set->images[i].map)
            munmap(set->images[i].map, set->images[i].map_bytes);
        free(set->images[i].duplicated);
    }
    set->count = 0;
}

/* ------------------------------------------------------------------------ */
/* Ideal savings                                                             */

struct gi_entry {
    uint64_t hash;
    uint64_t loc;       /* image << 48 | gfn */
};

#define GI_LOC_SHIFT 48

static int compare_entries(const void *a, const void *b)
{
    const struct gi_entry *x = a, *y = b;

    if (x->hash != y->hash)
        return x->hash < y->hash ? -1 : 1;
    return (x->loc > y->loc) - (x->loc < y->loc);
}

static const uint8_t *entry_page(const struct guest_image_set *set, uint64_t loc)
{
    return guest_image_page(&set->images[loc >> GI_LOC_SHIFT],
                            loc & ((UINT64_C(1) << GI_LOC_SHIFT) - 1));
}

static bool page_is_zero(const uint8_t *page)
{
    const uint64_t *w = (const uint64_t *)page;
    uint64_t acc = 0;

    for (size_t i = 0; i < GI_PAGE_WORDS; i++)
        acc |= w[i];
    return acc == 0;
}

/* One class of identical pages within a run of equal hashes. */
struct gi_class {
    uint64_t rep;       /* loc of its first page */
    uint64_t size;
    bool cross;         /* holds pages of two images or more */
};

static void mark_duplicated(struct guest_image_set *set, uint64_t loc)
{
    set->images[loc >> GI_LOC_SHIFT].duplicated[loc & ((UINT64_C(1) << GI_LOC_SHIFT) - 1)] = 1;
}

int guest_image_ideal(struct guest_image_set *set, struct guest_image_ideal *out)
{
    static const uint8_t zero_page[MV_PAGE_SIZE];
    struct gi_class *classes = NULL;
    size_t class_cap = 0, n = 0;
    uint64_t total = 0, t0 = mv_bench_now_ns();
    uint64_t zero_hash = XXH3_64bits(zero_page, MV_PAGE_SIZE);
    struct gi_entry *e;

    memset(out, 0, sizeof(*out));
    for (size_t i = 0; i < set->count; i++) {
        total += set->images[i].pages;
        free(set->images[i].duplicated);
        set->images[i].duplicated = calloc(set->images[i].pages, 1);
        if (!set->images[i].duplicated) {
            mv_bench_error("guest images: out of memory");
            return MV_BENCH_FAILED;
        }
    }
    e = malloc((total ? total : 1) * sizeof(*e));
    if (!e) {
        mv_bench_error("guest images: no memory to index %" PRIu64 " pages", total);
        return MV_BENCH_FAILED;
    }
    for (size_t i = 0; i < set->count; i++) {
        const struct guest_image *image = &set->images[i];

        for (uint64_t gfn = 0; gfn < image->pages; gfn++) {
            const uint8_t *page = guest_image_page(image, gfn);
            uint64_t h = XXH3_64bits(page, MV_PAGE_SIZE);

            if (h == zero_hash && page_is_zero(page)) {
                out->zero_pages++;
                continue;
            }
            e[n++] = (struct gi_entry){ .hash = h,
                                        .loc = (uint64_t)i << GI_LOC_SHIFT | gfn };
        }
    }
    qsort(e, n, sizeof(*e), compare_entries);
    for (size_t i = 0; i < n;) {
        size_t j = i + 1, nclass = 0;

        while (j < n && e[j].hash == e[i].hash)
            j++;
        /* Pages [i, j) have one hash: group them by their bytes. */
        for (size_t k = i; k < j; k++) {
            const uint8_t *page = entry_page(set, e[k].loc);
            size_t c;

            for (c = 0; c < nclass; c++)
                if (memcmp(page, entry_page(set, classes[c].rep), MV_PAGE_SIZE) == 0)
                    break;
            if (c == nclass) {
                if (nclass == class_cap) {
                    size_t cap = class_cap ? class_cap * 2 : 16;
                    struct gi_class *v = realloc(classes, cap * sizeof(*v));

                    if (!v) {
                        mv_bench_error("guest images: out of memory");
                        free(classes);
                        free(e);
                        return MV_BENCH_FAILED;
                    }
                    classes = v;
                    class_cap = cap;
                }
                classes[nclass++] = (struct gi_class){ .rep = e[k].loc };
            }
            classes[c].size++;
            if (e[k].loc >> GI_LOC_SHIFT != classes[c].rep >> GI_LOC_SHIFT)
                classes[c].cross = true;
        }
        for (size_t c = 0; c < nclass; c++) {
            out->distinct_nonzero++;
            if (classes[c].size > 1)
                out->duplicated_pages += classes[c].size;
            if (classes[c].cross)
                out->cross_image_pages += classes[c].size;
        }
        /* Mark the pages of classes with two pages or more; with one class
         * (the rule) that is every page of the run. */
        for (size_t k = i; k < j && j - i > 1; k++) {
            size_t c = 0;

            if (nclass > 1)
                for (c = 0; c < nclass; c++)
                    if (memcmp(entry_page(set, e[k].loc), entry_page(set, classes[c].rep),
                               MV_PAGE_SIZE) == 0)
                        break;
            if (classes[c].size > 1)
                mark_duplicated(set, e[k].loc);
        }
        out->hash_collisions += nclass - 1;
        i = j;
    }
    out->total_pages = total;
    out->nonzero_pages = n;
    out->saved_pages = n - out->distinct_nonzero;
    out->elapsed_ns = mv_bench_now_ns() - t0;
    free(classes);
    free(e);
    return MV_BENCH_OK;
}

/*
 * embed.c - the smallest VMM-shaped use of libmemvisor: a host, one domain
 * booted ballooned, a "vCPU" (this thread) touching guest RAM, dirty logging
 * around a few writes, a clone sharing every page until written, and the
 * numbers.  Shown in the README.
 */
#include <memvisor.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(call)                                                          \
    do {                                                                     \
        int rc_ = (int)(call);                                               \
        if (rc_ < 0) {                                                       \
            fprintf(stderr, "%s: %s: %s\n", #call, mv_strerror(rc_),         \
                    mv_last_error());                                        \
            exit(1);                                                         \
        }                                                                    \
    } while (0)

int main(void)
{
    struct mv_host_config hc;
    struct mv_domain_config dc;
    struct mv_domain_info info;
    mv_host *host;
    uint32_t dom;
    uint8_t *ram;
    uint64_t size, *dirty;
    size_t words;
    int64_t n;

    /* The library the dynamic linker found must have this header's ABI:
     * the same major version (the number in libmemvisor.so.N). */
    if (mv_version_number() / 10000 != MV_VERSION_MAJOR) {
        fprintf(stderr, "libmemvisor %s, built for %d.x\n", mv_version(),
                MV_VERSION_MAJOR);
        return 1;
    }
    printf("libmemvisor %s\n", mv_version());

    mv_host_config_init(&hc);                  /* budget: 80% of MemAvailable */
    CHECK(mv_host_create(&hc, &host));

    mv_domain_config_init(&dc);
    snprintf(dc.name, sizeof(dc.name), "guest0");
    dc.maxmem_bytes = 1ull << 30;              /* 1 GiB of address space */
    dc.target_bytes = 256ull << 20;            /* at most 256 MiB populated */
    CHECK(mv_domain_create(host, &dc, &dom));
    CHECK(mv_domain_ram(host, dom, (void **)&ram, &size));

    /* A vCPU is any thread that loads and stores to guest RAM.  Declared
     * one, it resolves its own faults (fault_path auto). */
    CHECK(mv_vcpu_enter(host, dom));
    memset(ram, 0, size);                      /* scrub all 1 GiB, as OSes do */
    strcpy((char *)ram + 4096, "hello from gfn 1");

    words = mv_logdirty_words(size / MV_PAGE_SIZE);
    dirty = calloc(words, sizeof(*dirty));
    CHECK(mv_logdirty_enable(host, dom));
    ram[5 * 4096] = 1;
    ram[9 * 4096] = 1;
    n = mv_logdirty_clean(host, dom, dirty, NULL, words);
    CHECK(n);

    CHECK(mv_domain_info(host, dom, &info));
    printf("populated %llu of %llu pages (target %llu); %llu sweeps reclaimed "
           "%llu zero pages; %lld pages dirty\n",
           (unsigned long long)info.populated_pages,
           (unsigned long long)info.maxmem_pages,
           (unsigned long long)info.target_pages,
           (unsigned long long)info.sweeps,
           (unsigned long long)info.reclaimed_zero, (long long)n);
    CHECK(mv_domain_audit(host, dom));

    /* Clone it: the clone shares every populated page until one side
     * writes; a write gets a private copy, the other side never sees it. */
    {
        struct mv_share_stats ss;
        uint32_t clone;
        uint8_t *cram;

        CHECK(mv_domain_pause(host, dom));
        CHECK(mv_domain_clone(host, dom, "guest0-clone", &clone));
        CHECK(mv_domain_unpause(host, dom));
        CHECK(mv_domain_ram(host, clone, (void **)&cram, &size));
        strcpy((char *)cram + 4096, "hello from the clone");
        CHECK(mv_share_stats(host, &ss));
        printf("clone: %llu pages saved, %llu copy-on-write breaks; guest0 still "
               "says \"%s\"\n", (unsigned long long)ss.saved_pages,
               (unsigned long long)ss.cow_breaks, (char *)ram + 4096);
        if (strcmp((char *)ram + 4096, "hello from gfn 1") != 0)
            return 1;
        CHECK(mv_host_audit(host));
    }
    free(dirty);
    mv_host_destroy(host);
    return 0;
}

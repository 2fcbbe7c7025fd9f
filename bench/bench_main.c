/*
 * bench_main.c - memvisor-bench, which `memvisor bench` runs: the table of
 * suites and the dispatcher.
 */
#include "bench.h"
#include "bench_util.h"

#include <stdio.h>
#include <string.h>

struct bench_suite {
    const char *name;
    const char *summary;
    int (*run)(int argc, char **argv);
};

static const struct bench_suite bench_suites[] = {
    { "pod", "populate-on-demand faults and zero sweeps vs the kernel's "
             "first touch and one core's read bandwidth", mv_bench_pod },
    { "logdirty", "dirty logging: the wp-async fast path vs the wp-sync "
                  "baseline, protect-all and mprotect", mv_bench_logdirty },
    { "share", "page sharing of realistic guests: memvisor's scanner vs KSM "
               "and the ideal", mv_bench_share },
    { "cow", "cloning a domain and breaking shared pages vs fork and the "
             "kernel's own faults", mv_bench_cow },
    { "tmem", "transcendent memory: put/get and compression vs zram and a "
              "plain lz4 loop; paged faults vs first touch and zram swap-in", mv_bench_tmem },
    { "vm", "real QEMU guests on memvisor vs plain QEMU and KSM: boot, "
            "host memory, convergence, guest touch", mv_bench_vm },
};

static void print_usage(FILE *out)
{
    fprintf(out, "usage: memvisor bench <suite> [--json] [options]\n"
                 "       memvisor bench <suite> --help\n\nsuites:\n");
    for (size_t i = 0; i < sizeof(bench_suites) / sizeof(bench_suites[0]); i++)
        fprintf(out, "  %-10s %s\n", bench_suites[i].name, bench_suites[i].summary);
}

int mv_bench_main(int argc, char **argv)
{
    if (argc < 2) {
        print_usage(stderr);
        return MV_BENCH_USAGE;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        print_usage(stdout);
        return MV_BENCH_OK;
    }
    for (size_t i = 0; i < sizeof(bench_suites) / sizeof(bench_suites[0]); i++)
        if (strcmp(argv[1], bench_suites[i].name) == 0)
            return bench_suites[i].run(argc - 1, argv + 1);
    mv_bench_error("unknown suite '%s'", argv[1]);
    print_usage(stderr);
    return MV_BENCH_USAGE;
}

/* memvisor-bench: `memvisor bench SUITE ...` runs this program with the
 * same arguments, SUITE first. */
int main(int argc, char **argv)
{
    return mv_bench_main(argc, argv);
}

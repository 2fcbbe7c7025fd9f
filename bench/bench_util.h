/*
 * bench_util.h - what every benchmark suite shares: clocks, order
 * statistics, error reporting, option parsing, the machine description,
 * hosts and domains, a vCPU thread, the comparison of a figure with its peer
 * (as a table row or JSON), and the entry point's shape.
 */
#ifndef MV_BENCH_UTIL_H
#define MV_BENCH_UTIL_H

#include "memvisor.h"

#include <stdbool.h>
#include <stddef.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>

struct json_object;
struct option;

/* Return values of mv_bench_main and the suites. */
enum {
    MV_BENCH_OK = 0,
    MV_BENCH_FAILED = 1,
    MV_BENCH_USAGE = 2,
};

#define MV_BENCH_MIN(a, b) ((a) < (b) ? (a) : (b))
#define MV_BENCH_MAX(a, b) ((a) > (b) ? (a) : (b))
#define MV_BENCH_MIB ((uint64_t)1 << 20)
#define MV_BENCH_GIB ((uint64_t)1 << 30)

/* ------------------------------------------------------------------------ */
/* Clocks                                                                    */

/* CLOCK_MONOTONIC, in nanoseconds. */
uint64_t mv_bench_now_ns(void);
/* CPU time of every thread of the process / of the calling thread. */
uint64_t mv_bench_process_cpu_ns(void);
uint64_t mv_bench_thread_cpu_ns(void);
/* Median cost of two back-to-back mv_bench_now_ns() calls: what timing one
 * operation adds to its figure. */
uint64_t mv_bench_timer_overhead_ns(void);
/* Sleep `ms` milliseconds, through signals. */
void mv_bench_sleep_ms(uint64_t ms);

/* ------------------------------------------------------------------------ */
/* Order statistics                                                          */

void mv_bench_sort(uint64_t *values, size_t count);
/* Nearest-rank percentile (0 < p <= 100) of `count` sorted values. */
uint64_t mv_bench_percentile(const uint64_t *sorted, size_t count, double p);
/* Rounds a suite may repeat its measurements for. */
#define MV_BENCH_MAX_ROUNDS 31
/* Median of `count` (1..MV_BENCH_MAX_ROUNDS) unsorted values; the input is
 * untouched. */
uint64_t mv_bench_median(const uint64_t *values, size_t count);

/* ------------------------------------------------------------------------ */
/* Errors and options                                                        */

/* Print "memvisor bench: <message>" to stderr. */
void mv_bench_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Report a failed library call `call` that returned `rc`, with
 * mv_strerror() and mv_last_error().  Returns MV_BENCH_FAILED. */
int mv_bench_lib_error(const char *call, int rc);
/* Probe the kernel; when it lacks what memvisor needs, say so and return
 * MV_BENCH_FAILED.  `features` is filled either way. */
int mv_bench_probe_kernel(struct mv_kernel_features *features);
/* Parse the decimal value of option `name` within [min, max].  Returns 0,
 * or prints why not and returns MV_BENCH_USAGE. */
int mv_bench_parse_u64(const char *name, const char *arg, uint64_t min,
                       uint64_t max, uint64_t *out);
/* Parse option `name`, a size in MiB within [2, max] and a whole number of
 * 2 MiB blocks.  Returns 0, or prints why not and returns MV_BENCH_USAGE. */
int mv_bench_parse_mib(const char *name, const char *arg, uint64_t max, uint64_t *out);
/* A host log callback that prints the library's messages to stderr. */
void mv_bench_log(void *opaque, enum mv_log_level level, const char *message);

/* ------------------------------------------------------------------------ */
/* The machine and the run                                                   */

struct mv_bench_machine {
    char release[65];       /* uname -r */
    long nproc;             /* online CPUs */
    long cpus_allowed;      /* of them, those the process may run on (taskset) */
    char cpu_model[128];    /* first "model name" of /proc/cpuinfo */
    char clocksource[32];   /* the clock behind CLOCK_MONOTONIC */
    char shmem_thp[32];     /* shmem transparent huge page policy */
    uint64_t mem_available; /* bytes */
    char date[32];          /* start of the run, UTC, ISO 8601 */
};

void mv_bench_machine_probe(struct mv_bench_machine *machine,
                            const struct mv_kernel_features *features);
struct json_object *mv_bench_machine_json(const struct mv_bench_machine *machine);
void mv_bench_machine_print(FILE *out, const struct mv_bench_machine *machine);
/* mv_bench_probe_kernel, then, when the kernel will do, describe the
 * machine.  Returns 0 or MV_BENCH_FAILED. */
int mv_bench_probe(struct mv_kernel_features *features, struct mv_bench_machine *machine);

/* The test guest's image directory (scripts/guest-image.sh): $MV_GUEST_IMAGE,
 * else build/vm of the tree this program was built in. */
void mv_bench_guest_image_dir(char *out, size_t len);

/* The library's host defaults, its warnings and errors printed by
 * mv_bench_log. */
void mv_bench_host_config_init(struct mv_host_config *hc);
/* mv_host_create with `hc`, or with mv_bench_host_config_init's when NULL;
 * a failure is reported.  Returns 0 or MV_BENCH_FAILED. */
int mv_bench_host_create(const struct mv_host_config *hc, mv_host **host);
/* Guest RAM of domain `dom` and its size (may be NULL); a failure is
 * reported.  Returns 0 or MV_BENCH_FAILED. */
int mv_bench_domain_ram(mv_host *host, uint32_t dom, uint8_t **ram, uint64_t *size);

/* Run fn(arg) on a new thread, as a guest's vCPU, and wait for it.  Returns
 * 0, or prints why the thread could not start and returns MV_BENCH_FAILED. */
int mv_bench_run_thread(void *(*fn)(void *), void *arg);

/* The floor of a copy-on-write break (cow_floor.c): `count` breaks of every
 * other page, each store's latency into latency[], the writer's whole time
 * into *total_ns. */
int mv_bench_cow_floor(uint64_t count, uint64_t *latency, uint64_t *total_ns);

/* Threads running at once, as a guest's vCPUs. */
#define MV_BENCH_MAX_THREADS 16
struct mv_bench_threads {
    pthread_t thread[MV_BENCH_MAX_THREADS];
    unsigned count;             /* started */
};

/*
 * Start `count` (1..MV_BENCH_MAX_THREADS) threads, thread i running
 * fn((char *)args + i * arg_size).  Returns 0, or prints why a thread could
 * not start and returns MV_BENCH_FAILED; threads->count says how many run
 * either way, and mv_bench_threads_join must be called for them.
 */
int mv_bench_threads_start(struct mv_bench_threads *threads, void *(*fn)(void *),
                           void *args, size_t arg_size, unsigned count);
/* Wait for every thread started. */
void mv_bench_threads_join(struct mv_bench_threads *threads);

/* ------------------------------------------------------------------------ */
/* Figures against their peers                                               */

/*
 * One figure measured against its peer in the same run.  The ratio is
 * value / peer_value; a goal, when there is one, is met when the ratio is at
 * most goal_max_ratio (times: lower is better) or at least goal_min_ratio
 * (rates: higher is better).
 */
struct mv_bench_comparison {
    const char *figure;
    const char *unit;       /* "ns", "GiB/s" or "pages/s" */
    double value;
    const char *peer;
    double peer_value;
    double goal_max_ratio;  /* 0: no such goal */
    double goal_min_ratio;  /* 0: no such goal */
};

double mv_bench_ratio(const struct mv_bench_comparison *c);
/* True when the comparison has a goal / has one and meets it. */
bool mv_bench_has_goal(const struct mv_bench_comparison *c);
bool mv_bench_goal_met(const struct mv_bench_comparison *c);
struct json_object *mv_bench_comparison_json(const struct mv_bench_comparison *c);
/* One table row; mv_bench_comparison_header prints the column titles. */
void mv_bench_comparison_header(FILE *out);
void mv_bench_comparison_print(FILE *out, const struct mv_bench_comparison *c);
/* The header and a row for each of `n` comparisons; nothing when n is 0. */
void mv_bench_comparisons_print(FILE *out, const struct mv_bench_comparison *c, size_t n);
/* A value in `unit` for humans ("12.3 us", "1.85 GiB/s", "41.2 k/s") into
 * buf. */
const char *mv_bench_format(char *buf, size_t size, double value, const char *unit);

/* ------------------------------------------------------------------------ */
/* JSON                                                                      */

/* A JSON number printed with `decimals` digits after the point. */
struct json_object *mv_bench_json_real(double value, int decimals);
/* A report's root object: the suite's name, the date and the machine. */
struct json_object *mv_bench_json_root(const char *suite, const struct mv_bench_machine *machine);
/* Print `root` to stdout (pretty) and release it.  Returns 0 or
 * MV_BENCH_FAILED. */
int mv_bench_json_emit(struct json_object *root);
/* Add `n` comparisons to `o` as its "comparisons" array.  Returns whether
 * every goal among them is met; *goals (may be NULL) counts the goals. */
bool mv_bench_comparisons_json(struct json_object *o, const struct mv_bench_comparison *c,
                               size_t n, unsigned *goals);

/* ------------------------------------------------------------------------ */
/* Options and entry points                                                  */

/* getopt's ':' (missing value) or '?' (unknown option) for `suite`:
 * reports it and returns MV_BENCH_USAGE. */
int mv_bench_option_problem(const char *suite, int opt, char **argv);
/*
 * A suite's getopt_long loop over `options`: --json ('j') and --help ('h')
 * set *json and *help, a missing value or an unknown option is reported,
 * and any other option goes to handle(opt, optarg, ctx), which returns 0 or
 * MV_BENCH_USAGE.  Stops at the first error; returns 0 or MV_BENCH_USAGE.
 */
int mv_bench_parse_options(const char *suite, int argc, char **argv,
                           const struct option *options,
                           int (*handle)(int opt, const char *arg, void *ctx), void *ctx,
                           bool *json, bool *help);
/* After the getopt loop: a stray operand is a usage error; on any error,
 * point at --help.  Returns rc or MV_BENCH_USAGE. */
int mv_bench_options_done(const char *suite, int rc, int argc, char **argv);

/* What tells one suite's entry point from another's. */
struct mv_bench_suite {
    const char *name;
    size_t run_size;                /* its run, allocated zeroed */
    int (*parse)(int argc, char **argv, void *run, bool *help);
    void (*usage)(FILE *out);
    int (*run)(void *run);
    void (*release)(void *run);     /* frees what the run holds; may be NULL */
};

/* A suite's entry point: parse the options into a new run, then print the
 * usage (--help) or run the suite; free the run.  Returns what
 * mv_bench_main returns. */
int mv_bench_suite_main(const struct mv_bench_suite *suite, int argc, char **argv);

#endif /* MV_BENCH_UTIL_H */

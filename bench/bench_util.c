/*
 * bench_util.c - helpers every benchmark suite shares: clocks, order
 * statistics, error reporting, option parsing, the machine description,
 * hosts and domains, the vCPU thread, figures compared with their peers,
 * and the entry point's shape.
 */
#include "bench_util.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <limits.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------------ */
/* Clocks                                                                    */

static uint64_t clock_ns(clockid_t clock)
{
    struct timespec ts;

    clock_gettime(clock, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t mv_bench_now_ns(void)
{
    return clock_ns(CLOCK_MONOTONIC);
}

uint64_t mv_bench_process_cpu_ns(void)
{
    return clock_ns(CLOCK_PROCESS_CPUTIME_ID);
}

uint64_t mv_bench_thread_cpu_ns(void)
{
    return clock_ns(CLOCK_THREAD_CPUTIME_ID);
}

uint64_t mv_bench_timer_overhead_ns(void)
{
    enum { SAMPLES = 4096 };
    uint64_t samples[SAMPLES];

    for (size_t i = 0; i < SAMPLES; i++) {
        uint64_t t0 = mv_bench_now_ns();

        samples[i] = mv_bench_now_ns() - t0;
    }
    mv_bench_sort(samples, SAMPLES);
    return mv_bench_percentile(samples, SAMPLES, 50);
}

void mv_bench_sleep_ms(uint64_t ms)
{
    struct timespec ts = { .tv_sec = (time_t)(ms / 1000),
                           .tv_nsec = (long)(ms % 1000) * 1000000L };

    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* ------------------------------------------------------------------------ */
/* Order statistics                                                          */

static int compare_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return (x > y) - (x < y);
}

void mv_bench_sort(uint64_t *values, size_t count)
{
    qsort(values, count, sizeof(*values), compare_u64);
}

uint64_t mv_bench_percentile(const uint64_t *sorted, size_t count, double p)
{
    double exact = p / 100.0 * (double)count;
    size_t rank = (size_t)exact;

    if (count == 0)
        return 0;
    if ((double)rank < exact)
        rank++;
    if (rank < 1)
        rank = 1;
    if (rank > count)
        rank = count;
    return sorted[rank - 1];
}

uint64_t mv_bench_median(const uint64_t *values, size_t count)
{
    uint64_t copy[MV_BENCH_MAX_ROUNDS];

    if (count == 0 || count > MV_BENCH_MAX_ROUNDS)
        return 0;
    memcpy(copy, values, count * sizeof(*values));
    mv_bench_sort(copy, count);
    if (count % 2)
        return copy[count / 2];
    return (copy[count / 2 - 1] + copy[count / 2]) / 2;
}

/* ------------------------------------------------------------------------ */
/* Errors and options                                                        */

void mv_bench_error(const char *fmt, ...)
{
    va_list ap;

    fputs("memvisor bench: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

int mv_bench_lib_error(const char *call, int rc)
{
    const char *detail = mv_last_error();

    if (detail[0])
        mv_bench_error("%s: %s: %s", call, mv_strerror(rc), detail);
    else
        mv_bench_error("%s: %s", call, mv_strerror(rc));
    return MV_BENCH_FAILED;
}

int mv_bench_probe_kernel(struct mv_kernel_features *features)
{
    int rc = mv_probe_kernel(features);

    if (rc < 0) {
        mv_bench_error("cannot use this kernel (Linux %s): %s",
                       features->release, mv_last_error());
        return MV_BENCH_FAILED;
    }
    return MV_BENCH_OK;
}

int mv_bench_parse_u64(const char *name, const char *arg, uint64_t min,
                       uint64_t max, uint64_t *out)
{
    unsigned long long v;
    char *end;

    errno = 0;
    v = strtoull(arg, &end, 10);
    if (errno || end == arg || *end || arg[0] == '-' || v < min || v > max) {
        mv_bench_error("%s: '%s' is not a whole number from %" PRIu64
                       " to %" PRIu64, name, arg, min, max);
        return MV_BENCH_USAGE;
    }
    *out = v;
    return MV_BENCH_OK;
}

int mv_bench_parse_mib(const char *name, const char *arg, uint64_t max, uint64_t *out)
{
    int rc = mv_bench_parse_u64(name, arg, 2, max, out);

    if (rc == MV_BENCH_OK && *out % 2) {
        mv_bench_error("%s: %" PRIu64 " MiB is not a whole number of 2 MiB blocks",
                       name, *out);
        rc = MV_BENCH_USAGE;
    }
    return rc;
}

void mv_bench_log(void *opaque, enum mv_log_level level, const char *message)
{
    static const char *const names[] = {
        [MV_LOG_ERROR] = "error", [MV_LOG_WARN] = "warning",
        [MV_LOG_INFO] = "info", [MV_LOG_DEBUG] = "debug",
    };

    (void)opaque;
    fprintf(stderr, "memvisor: %s: %s\n", names[level], message);
}

/* ------------------------------------------------------------------------ */
/* The machine and the run                                                   */

/* The value of the first "key : value" line of `path` whose key is `key`. */
static void read_keyed_line(const char *path, const char *key, char *out, size_t size)
{
    char line[512];
    size_t key_len = strlen(key);
    FILE *f = fopen(path, "r");

    snprintf(out, size, "unknown");
    if (!f)
        return;
    while (fgets(line, sizeof(line), f)) {
        char *colon = strchr(line, ':');

        if (strncmp(line, key, key_len) != 0 || !colon)
            continue;
        colon += 1 + strspn(colon + 1, " \t");
        colon[strcspn(colon, "\n")] = '\0';
        snprintf(out, size, "%s", colon);
        break;
    }
    fclose(f);
}

static void read_first_line(const char *path, char *out, size_t size)
{
    FILE *f = fopen(path, "r");

    snprintf(out, size, "unknown");
    if (!f)
        return;
    if (fgets(out, (int)size, f))
        out[strcspn(out, "\n")] = '\0';
    fclose(f);
}

void mv_bench_machine_probe(struct mv_bench_machine *m,
                            const struct mv_kernel_features *features)
{
    struct utsname uts;
    time_t now = time(NULL);
    cpu_set_t allowed;
    struct tm tm;

    memset(m, 0, sizeof(*m));
    if (uname(&uts) == 0)
        snprintf(m->release, sizeof(m->release), "%s", uts.release);
    m->nproc = sysconf(_SC_NPROCESSORS_ONLN);
    m->cpus_allowed = sched_getaffinity(0, sizeof(allowed), &allowed) == 0
                      ? CPU_COUNT(&allowed) : m->nproc;
    read_keyed_line("/proc/cpuinfo", "model name", m->cpu_model, sizeof(m->cpu_model));
    read_first_line("/sys/devices/system/clocksource/clocksource0/current_clocksource",
                    m->clocksource, sizeof(m->clocksource));
    snprintf(m->shmem_thp, sizeof(m->shmem_thp), "%s", features->shmem_thp);
    m->mem_available = features->mem_available;
    gmtime_r(&now, &tm);
    strftime(m->date, sizeof(m->date), "%Y-%m-%dT%H:%M:%SZ", &tm);
}

struct json_object *mv_bench_machine_json(const struct mv_bench_machine *m)
{
    struct json_object *o = json_object_new_object();

    json_object_object_add(o, "release", json_object_new_string(m->release));
    json_object_object_add(o, "nproc", json_object_new_int64(m->nproc));
    json_object_object_add(o, "cpus_allowed", json_object_new_int64(m->cpus_allowed));
    json_object_object_add(o, "cpu_model", json_object_new_string(m->cpu_model));
    json_object_object_add(o, "clocksource", json_object_new_string(m->clocksource));
    json_object_object_add(o, "shmem_thp", json_object_new_string(m->shmem_thp));
    json_object_object_add(o, "mem_available_mib",
                           json_object_new_int64((int64_t)(m->mem_available / MV_BENCH_MIB)));
    return o;
}

void mv_bench_machine_print(FILE *out, const struct mv_bench_machine *m)
{
    fprintf(out, "date:    %s\n", m->date);
    fprintf(out, "machine: Linux %s, %ld CPUs, %s, clocksource %s, shmem THP %s, "
            "%" PRIu64 " MiB available\n", m->release, m->nproc, m->cpu_model,
            m->clocksource, m->shmem_thp, m->mem_available / MV_BENCH_MIB);
    if (m->cpus_allowed < m->nproc)
        fprintf(out, "pinned:  this run may use %ld of the %ld CPUs, and so may its "
                "fault threads\n", m->cpus_allowed, m->nproc);
}

int mv_bench_probe(struct mv_kernel_features *features, struct mv_bench_machine *machine)
{
    int rc = mv_bench_probe_kernel(features);

    if (rc == MV_BENCH_OK)
        mv_bench_machine_probe(machine, features);
    return rc;
}

void mv_bench_host_config_init(struct mv_host_config *hc)
{
    mv_host_config_init(hc);
    hc->log = mv_bench_log;
    hc->log_level = MV_LOG_WARN;
}

int mv_bench_host_create(const struct mv_host_config *hc, mv_host **host)
{
    struct mv_host_config defaults;
    int rc;

    if (!hc) {
        mv_bench_host_config_init(&defaults);
        hc = &defaults;
    }
    rc = mv_host_create(hc, host);
    return rc < 0 ? mv_bench_lib_error("mv_host_create", rc) : MV_BENCH_OK;
}

int mv_bench_domain_ram(mv_host *host, uint32_t dom, uint8_t **ram, uint64_t *size)
{
    uint64_t bytes;
    void *r;
    int rc = mv_domain_ram(host, dom, &r, &bytes);

    if (rc < 0)
        return mv_bench_lib_error("mv_domain_ram", rc);
    *ram = r;
    if (size)
        *size = bytes;
    return MV_BENCH_OK;
}

int mv_bench_run_thread(void *(*fn)(void *), void *arg)
{
    pthread_t thread;
    int rc = pthread_create(&thread, NULL, fn, arg);

    if (rc) {
        mv_bench_error("cannot start a vCPU thread: %s", strerror(rc));
        return MV_BENCH_FAILED;
    }
    pthread_join(thread, NULL);
    return MV_BENCH_OK;
}

int mv_bench_threads_start(struct mv_bench_threads *t, void *(*fn)(void *),
                           void *args, size_t arg_size, unsigned count)
{
    t->count = 0;
    if (count == 0 || count > MV_BENCH_MAX_THREADS) {
        mv_bench_error("cannot run %u vCPU threads (1 to %d)", count,
                       MV_BENCH_MAX_THREADS);
        return MV_BENCH_FAILED;
    }
    for (unsigned i = 0; i < count; i++) {
        int rc = pthread_create(&t->thread[i], NULL, fn, (char *)args + i * arg_size);

        if (rc) {
            mv_bench_error("cannot start vCPU thread %u of %u: %s", i + 1, count,
                           strerror(rc));
            return MV_BENCH_FAILED;
        }
        t->count = i + 1;
    }
    return MV_BENCH_OK;
}

void mv_bench_threads_join(struct mv_bench_threads *t)
{
    for (unsigned i = 0; i < t->count; i++)
        pthread_join(t->thread[i], NULL);
    t->count = 0;
}

/* ------------------------------------------------------------------------ */
/* Figures against their peers                                               */

double mv_bench_ratio(const struct mv_bench_comparison *c)
{
    return c->peer_value > 0 ? c->value / c->peer_value : 0;
}

bool mv_bench_has_goal(const struct mv_bench_comparison *c)
{
    return c->goal_max_ratio > 0 || c->goal_min_ratio > 0;
}

bool mv_bench_goal_met(const struct mv_bench_comparison *c)
{
    double ratio = mv_bench_ratio(c);

    return mv_bench_has_goal(c) && (c->goal_max_ratio <= 0 || ratio <= c->goal_max_ratio) &&
           (c->goal_min_ratio <= 0 || ratio >= c->goal_min_ratio);
}

static int unit_decimals(const char *unit)
{
    return strcmp(unit, "ns") == 0 ? 1 : 3;
}

struct json_object *mv_bench_comparison_json(const struct mv_bench_comparison *c)
{
    struct json_object *o = json_object_new_object();
    double ratio = mv_bench_ratio(c);

    json_object_object_add(o, "figure", json_object_new_string(c->figure));
    json_object_object_add(o, "unit", json_object_new_string(c->unit));
    json_object_object_add(o, "value", mv_bench_json_real(c->value, unit_decimals(c->unit)));
    json_object_object_add(o, "peer", json_object_new_string(c->peer));
    json_object_object_add(o, "peer_value",
                           mv_bench_json_real(c->peer_value, unit_decimals(c->unit)));
    /* Three decimals, or six below 0.01, where three would round most away. */
    json_object_object_add(o, "ratio", mv_bench_json_real(ratio, ratio < 0.01 ? 6 : 3));
    json_object_object_add(o, "goal_max_ratio", c->goal_max_ratio > 0 ?
                           mv_bench_json_real(c->goal_max_ratio, 2) : NULL);
    if (c->goal_min_ratio > 0)
        json_object_object_add(o, "goal_min_ratio",
                               mv_bench_json_real(c->goal_min_ratio, 2));
    json_object_object_add(o, "met", mv_bench_has_goal(c) ?
                           json_object_new_boolean(mv_bench_goal_met(c)) : NULL);
    return o;
}

const char *mv_bench_format(char *buf, size_t size, double value, const char *unit)
{
    if (strcmp(unit, "pages/s") == 0 && value >= 10e6)
        snprintf(buf, size, "%.1f M/s", value / 1e6);
    else if (strcmp(unit, "pages/s") == 0 && value >= 10e3)
        snprintf(buf, size, "%.1f k/s", value / 1e3);
    else if (strcmp(unit, "pages/s") == 0)
        snprintf(buf, size, "%.0f /s", value);
    else if (strcmp(unit, "ns") != 0)
        snprintf(buf, size, "%.2f %s", value, unit);
    else if (value < 10e3)
        snprintf(buf, size, "%.0f ns", value);
    else if (value < 10e6)
        snprintf(buf, size, "%.1f us", value / 1e3);
    else
        snprintf(buf, size, "%.1f ms", value / 1e6);
    return buf;
}

void mv_bench_comparison_header(FILE *out)
{
    fprintf(out, "    %-30s %12s  %-30s %12s %7s %6s %4s\n", "figure", "value",
            "peer", "peer value", "ratio", "goal", "met");
}

void mv_bench_comparison_print(FILE *out, const struct mv_bench_comparison *c)
{
    char value[32], peer[32], goal[16];

    if (c->goal_max_ratio > 0)
        snprintf(goal, sizeof(goal), "<=%g", c->goal_max_ratio);
    else if (c->goal_min_ratio > 0)
        snprintf(goal, sizeof(goal), ">=%g", c->goal_min_ratio);
    else
        snprintf(goal, sizeof(goal), "-");
    fprintf(out, "    %-30s %12s  %-30s %12s %7.3g %6s %4s\n", c->figure,
            mv_bench_format(value, sizeof(value), c->value, c->unit), c->peer,
            mv_bench_format(peer, sizeof(peer), c->peer_value, c->unit),
            mv_bench_ratio(c), goal,
            !mv_bench_has_goal(c) ? "-" : mv_bench_goal_met(c) ? "yes" : "NO");
}

void mv_bench_comparisons_print(FILE *out, const struct mv_bench_comparison *c, size_t n)
{
    if (n == 0)
        return;
    mv_bench_comparison_header(out);
    for (size_t i = 0; i < n; i++)
        mv_bench_comparison_print(out, &c[i]);
}

/* ------------------------------------------------------------------------ */
/* JSON                                                                      */

struct json_object *mv_bench_json_real(double value, int decimals)
{
    char text[64];

    snprintf(text, sizeof(text), "%.*f", decimals, value);
    return json_object_new_double_s(value, text);
}

struct json_object *mv_bench_json_root(const char *suite, const struct mv_bench_machine *machine)
{
    struct json_object *root = json_object_new_object();

    json_object_object_add(root, "suite", json_object_new_string(suite));
    json_object_object_add(root, "date", json_object_new_string(machine->date));
    json_object_object_add(root, "machine", mv_bench_machine_json(machine));
    return root;
}

int mv_bench_json_emit(struct json_object *root)
{
    const char *text = json_object_to_json_string_ext(
        root, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE);
    int rc = MV_BENCH_OK;

    if (!text || puts(text) == EOF || fflush(stdout) == EOF) {
        mv_bench_error("cannot write the JSON report: %s", strerror(errno));
        rc = MV_BENCH_FAILED;
    }
    json_object_put(root);
    return rc;
}

bool mv_bench_comparisons_json(struct json_object *o, const struct mv_bench_comparison *c,
                               size_t n, unsigned *goals)
{
    struct json_object *list = json_object_new_array();
    bool met = true;

    for (size_t i = 0; i < n; i++) {
        json_object_array_add(list, mv_bench_comparison_json(&c[i]));
        if (!mv_bench_has_goal(&c[i]))
            continue;
        if (goals)
            (*goals)++;
        met = met && mv_bench_goal_met(&c[i]);
    }
    json_object_object_add(o, "comparisons", list);
    return met;
}

/* ------------------------------------------------------------------------ */
/* Options and entry points                                                  */

int mv_bench_option_problem(const char *suite, int opt, char **argv)
{
    if (opt == ':')
        mv_bench_error("%s: %s needs a value", suite, argv[optind - 1]);
    else
        mv_bench_error("%s: unknown option '%s'", suite, argv[optind - 1]);
    return MV_BENCH_USAGE;
}

int mv_bench_parse_options(const char *suite, int argc, char **argv,
                           const struct option *options,
                           int (*handle)(int opt, const char *arg, void *ctx), void *ctx,
                           bool *json, bool *help)
{
    int opt, rc = MV_BENCH_OK;

    *help = false;
    optind = 0; /* the caller may have run getopt on its own arguments */
    opterr = 0;
    while (rc == MV_BENCH_OK && (opt = getopt_long(argc, argv, ":h", options, NULL)) != -1) {
        if (opt == 'j')
            *json = true;
        else if (opt == 'h')
            *help = true;
        else if (opt == ':' || opt == '?')
            rc = mv_bench_option_problem(suite, opt, argv);
        else
            rc = handle(opt, optarg, ctx);
    }
    return rc;
}

int mv_bench_options_done(const char *suite, int rc, int argc, char **argv)
{
    if (rc == MV_BENCH_OK && optind < argc) {
        mv_bench_error("%s: unexpected argument '%s'", suite, argv[optind]);
        rc = MV_BENCH_USAGE;
    }
    if (rc != MV_BENCH_OK)
        fprintf(stderr, "try 'memvisor bench %s --help'\n", suite);
    return rc;
}

int mv_bench_suite_main(const struct mv_bench_suite *suite, int argc, char **argv)
{
    void *run = calloc(1, suite->run_size);
    bool help;
    int rc;

    if (!run) {
        mv_bench_error("%s: out of memory", suite->name);
        return MV_BENCH_FAILED;
    }
    rc = suite->parse(argc, argv, run, &help);
    if (rc == MV_BENCH_OK && help)
        suite->usage(stdout);
    else if (rc == MV_BENCH_OK)
        rc = suite->run(run);
    if (suite->release)
        suite->release(run);
    free(run);
    return rc;
}

/* The default image: $MV_GUEST_IMAGE, else build/vm of the tree this
 * program was built in (next to it, or beside its build directory). */
void mv_bench_guest_image_dir(char *out, size_t len)
{
    char self[PATH_MAX - 128], try[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    char *slash;

    if (getenv("MV_GUEST_IMAGE")) {
        snprintf(out, len, "%s", getenv("MV_GUEST_IMAGE"));
        return;
    }
    if (n > 0) {
        self[n] = '\0';
        slash = strrchr(self, '/');
        if (slash) {
            *slash = '\0';
            snprintf(try, sizeof(try), "%s/vm/vmlinuz", self);
            if (access(try, R_OK) == 0) {
                snprintf(out, len, "%s/vm", self);
                return;
            }
            snprintf(try, sizeof(try), "%s/../build/vm/vmlinuz", self);
            if (access(try, R_OK) == 0) {
                snprintf(out, len, "%s/../build/vm", self);
                return;
            }
        }
    }
    snprintf(out, len, "%s", MV_GUEST_IMAGE_DEFAULT);
}

/*
 * bench.h - the benchmark suites behind `memvisor bench <suite> [options]`.
 *
 * A benchmark is not a test: it measures memvisor against a named peer (the
 * kernel doing the same job, one core's memory bandwidth) in the same run on
 * the same machine and reports ratios, because absolute times drift on a
 * shared virtual machine.  Each suite prints a table, or with --json one
 * JSON object on stdout.
 *
 * The suites build into their own program, memvisor-bench; the memvisor CLI
 * links none of them and runs memvisor-bench from its own directory.
 *
 * Adding a suite: write bench_<name>.c with an entry point of the shape of
 * mv_bench_pod, declare it below and list it in the table in bench_main.c.
 */
#ifndef MV_BENCH_H
#define MV_BENCH_H

/*
 * Run memvisor-bench (what `memvisor bench` executes, with its arguments):
 * argv[0] is the program, argv[1] the suite name, options follow.  Returns 0 on success (whether or not the goals were met), 2 on a
 * usage error, 1 when the benchmark could not run; errors go to stderr.
 */
int mv_bench_main(int argc, char **argv);

/*
 * Suites: argv[0] is the suite name, options follow; same return values as
 * mv_bench_main.
 */
int mv_bench_pod(int argc, char **argv);
int mv_bench_logdirty(int argc, char **argv);
int mv_bench_share(int argc, char **argv);
int mv_bench_cow(int argc, char **argv);
int mv_bench_tmem(int argc, char **argv);
int mv_bench_vm(int argc, char **argv);

#endif /* MV_BENCH_H */

/*
 * schema.c - the table of memvisord's commands (schema.h) and what is
 * derived from it here: request checking and the schema as JSON.
 *
 * Adding a command: an entry below, a handler in memvisord.c's handler
 * table, a CLI command that sends it in memvisor.c (its `wire` list); the
 * fuzzer picks it up by itself.  tests/cli_schema.sh fails until all three
 * are there.
 */
#include "schema.h"
#include "protocol.h"

#include <errno.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define WORDS(...) ((const char *const[]){ __VA_ARGS__, NULL })
#define EXAMPLES(...) ((const char *const[]){ __VA_ARGS__, NULL })
#define END { .name = NULL }

/* The largest value of an argument the library takes as an unsigned int. */
#define UINT_ARG_MAX ((uint64_t)UINT_MAX)

/* ------------------------------------------------------------------------ */
/* Arguments used by several commands                                        */

#define DOMAIN_ARG(key, needed, text)                                                  \
    { .name = (key), .type = MV_SCHEMA_DOMAIN, .required = (needed), .metavar = "DOMAIN", \
      .help = (text) }
#define GFN_ARG(key, text)                                                             \
    { .name = (key), .type = MV_SCHEMA_GFN, .required = true, .metavar = "GFN",         \
      .help = (text), .examples = EXAMPLES("0", "1", "511", "512", "4095", "4096") }
#define HANDLE_ARG(key, text)                                                          \
    { .name = (key), .type = MV_SCHEMA_HANDLE, .required = true, .metavar = "HANDLE",   \
      .help = (text) }

#define WORKLOAD_ARGS                                                                  \
    { .name = "kind", .type = MV_SCHEMA_ENUM, .required = true,                         \
      .values = WORDS("scrub", "random", "verify", "cleancache", "frontswap"),          \
      .noun = "workload kind", .metavar = "KIND",                                       \
      .help = "the workload: scrub, random, verify, or the tmem clients cleancache "    \
              "(page cache) and frontswap (swap)" },                                    \
    { .name = "rate", .type = MV_SCHEMA_U64, .metavar = "N",                            \
      .default_text = "as fast as possible",                                            \
      .help = "random: pages written per second, all vCPUs together (default: as fast " \
              "as possible)",                                                           \
      .examples = EXAMPLES("0", "2000", "100000") },                                    \
    { .name = "duration_ms", .type = MV_SCHEMA_U64, .metavar = "MS",                    \
      .default_text = "until workload-stop",                                            \
      .help = "random: stop after this long (default: at workload-stop)",              \
      .examples = EXAMPLES("10", "50", "200") },                                        \
    { .name = "max_pages", .type = MV_SCHEMA_U64, .metavar = "N",                       \
      .default_text = "no limit", .help = "random: stop after N page writes",           \
      .examples = EXAMPLES("1", "100", "1000") },                                       \
    { .name = "working_set", .type = MV_SCHEMA_SIZE, .metavar = "SIZE",                 \
      .default_text = "all of maxmem",                                                  \
      .help = "random: write only the first SIZE of memory (default: all)",             \
      .examples = EXAMPLES("\"1M\"", "\"4M\"", "8388608", "0") },                       \
    { .name = "seed", .type = MV_SCHEMA_U64, .metavar = "N",                            \
      .help = "pattern seed; a domain's workloads must all use the same one",           \
      .examples = EXAMPLES("6061", "1") }

static const struct mv_schema_arg no_args[] = { END };

static const struct mv_schema_arg domain_args[] = {
    DOMAIN_ARG("domain", true, "the domain: a name or an id"), END,
};

static const struct mv_schema_arg optional_domain_args[] = {
    DOMAIN_ARG("domain", false, "only this domain (default: every domain)"), END,
};

static const struct mv_schema_arg workload_members[] = { WORKLOAD_ARGS, END };

/* ------------------------------------------------------------------------ */
/* Each command's arguments                                                  */

static const struct mv_schema_arg hello_args[] = {
    { .name = "protocol", .type = MV_SCHEMA_STRING, .required = true, .metavar = "M.N",
      .help = "the protocol version the client speaks, MAJOR.MINOR",
      .examples = EXAMPLES("\"" MV_PROTO_VERSION "\"", "\"1.7\"", "\"2.0\"") },
    { .name = "client", .type = MV_SCHEMA_STRING, .metavar = "NAME",
      .help = "the client's name and version, for the daemon's log",
      .examples = EXAMPLES("\"memvisor 0.1.0\"", "\"daemon_fuzz\"") },
    END,
};

static const struct mv_schema_arg create_args[] = {
    { .name = "name", .type = MV_SCHEMA_NAME, .required = true, .metavar = "NAME",
      .help = "the new domain's name (not all digits)" },
    { .name = "maxmem", .type = MV_SCHEMA_SIZE, .required = true, .metavar = "SIZE",
      .help = "guest-physical memory, e.g. 1G (required)",
      .examples = EXAMPLES("\"16M\"", "\"4M\"", "4194304", "\"64MiB\"", "\"1m\"") },
    { .name = "target", .type = MV_SCHEMA_SIZE, .metavar = "SIZE", .default_text = "maxmem",
      .help = "memory it may have populated (default: maxmem)",
      .examples = EXAMPLES("\"1M\"", "\"4M\"", "2097152") },
    { .name = "vcpus", .type = MV_SCHEMA_U64, .max = UINT_ARG_MAX, .metavar = "N",
      .default_text = "1", .help = "vCPUs of its built-in workloads, 1..64 (default 1)",
      .examples = EXAMPLES("1", "2", "4") },
    { .name = "policy", .type = MV_SCHEMA_ENUM, .values = WORDS("wait", "crash"),
      .noun = "policy", .metavar = "wait|crash", .default_text = "wait",
      .help = "when no memory is left: hold the vCPU up to --wait-timeout-ms, then crash "
              "(wait, default), or crash at once as Xen does (crash)" },
    { .name = "wait_timeout_ms", .type = MV_SCHEMA_U64, .max = UINT_ARG_MAX, .metavar = "MS",
      .default_text = "10000", .help = "how long a vCPU may wait for memory (default 10000)",
      .examples = EXAMPLES("0", "100", "1000") },
    { .name = "logdirty", .type = MV_SCHEMA_ENUM,
      .values = WORDS("auto", "wp-async", "wp-sync", "mprotect"), .noun = "dirty-log mode",
      .metavar = "MODE", .default_text = "auto",
      .help = "how its dirty log is kept: auto (default: the fastest the kernel has), "
              "wp-async, wp-sync or mprotect" },
    { .name = "cow_mode", .type = MV_SCHEMA_ENUM, .values = WORDS("trap", "kernel"),
      .noun = "copy-on-write mode", .metavar = "MODE", .default_text = "trap",
      .help = "who copies a shared page it writes: memvisor, on a trap (trap, default), or "
              "the kernel, with no trap, settled into the domain's own memory soon after "
              "(kernel)" },
    { .name = "workload", .type = MV_SCHEMA_OBJECT, .members = workload_members,
      .default_text = "none",
      .help = "a workload to start at once: the arguments of workload-start but domain" },
    { .name = "vmm", .type = MV_SCHEMA_ENUM, .values = WORDS("qemu"), .noun = "VMM",
      .metavar = "qemu", .default_text = "none: built-in guests",
      .help = "run a real guest: start this VMM (qemu) with the domain as its RAM" },
    { .name = "kernel", .type = MV_SCHEMA_STRING, .metavar = "FILE",
      .help = "--vmm: the guest kernel (required with --vmm)",
      .examples = EXAMPLES("\"/nonexistent/vmlinuz\"") },
    { .name = "initrd", .type = MV_SCHEMA_STRING, .metavar = "FILE", .default_text = "none",
      .help = "--vmm: the guest's initramfs", .examples = EXAMPLES("\"/nonexistent\"") },
    { .name = "append", .type = MV_SCHEMA_STRING, .metavar = "CMDLINE",
      .default_text = "console=ttyS0", .help = "--vmm: the guest kernel's command line",
      .examples = EXAMPLES("\"console=ttyS0\"") },
    { .name = "accel", .type = MV_SCHEMA_ENUM, .values = WORDS("tcg", "kvm"),
      .noun = "accelerator", .metavar = "tcg|kvm", .default_text = "tcg",
      .help = "--vmm: QEMU's accelerator (kvm needs /dev/kvm)" },
    END,
};

static const struct mv_schema_arg console_args[] = {
    DOMAIN_ARG("domain", true, "the domain: a name or an id"),
    { .name = "bytes", .type = MV_SCHEMA_U64, .metavar = "N", .default_text = "65536",
      .help = "at most the last N bytes (default 65536)",
      .examples = EXAMPLES("0", "100", "65536") },
    END,
};

static const struct mv_schema_arg qmp_args[] = {
    DOMAIN_ARG("domain", true, "the domain: a name or an id"),
    { .name = "command", .type = MV_SCHEMA_STRING, .required = true, .metavar = "JSON",
      .help = "a QMP command object, e.g. {\"execute\":\"query-status\"}",
      .examples = EXAMPLES("\"{\\\"execute\\\":\\\"query-status\\\"}\"") },
    END,
};

static const struct mv_schema_arg set_target_args[] = {
    DOMAIN_ARG("domain", true, "the domain: a name or an id"),
    { .name = "target", .type = MV_SCHEMA_SIZE, .required = true, .metavar = "SIZE",
      .help = "the most it may have populated",
      .examples = EXAMPLES("\"8M\"", "\"12M\"", "\"16M\"", "16777216") },
    END,
};

static const struct mv_schema_arg balloon_args[] = {
    DOMAIN_ARG("domain", true, "the domain: a name or an id"),
    { .name = "size", .type = MV_SCHEMA_SIZE, .required = true, .metavar = "SIZE",
      .help = "the usable memory its balloon driver leaves the guest",
      .examples = EXAMPLES("\"8M\"", "\"12M\"", "\"16M\"", "16777216") },
    END,
};

static const struct mv_schema_arg reclaim_args[] = {
    DOMAIN_ARG("domain", true, "the domain: a name or an id"),
    { .name = "max_pages", .type = MV_SCHEMA_U64, .metavar = "N", .default_text = "all",
      .help = "examine at most N populated pages (default: all)",
      .examples = EXAMPLES("0", "16", "4096") },
    END,
};

static const struct mv_schema_arg workload_start_args[] = {
    DOMAIN_ARG("domain", true, "the domain: a name or an id"), WORKLOAD_ARGS, END,
};

static const struct mv_schema_arg workload_status_args[] = {
    DOMAIN_ARG("domain", true, "the domain: a name or an id"),
    { .name = "wait_ms", .type = MV_SCHEMA_U64, .max = MV_PROTO_MAX_WAIT_MS,
      .max_hint = "poll instead", .metavar = "MS", .default_text = "0",
      .help = "wait up to this long for the workload to finish",
      .examples = EXAMPLES("0", "1", "10", "20") },
    END,
};

static const struct mv_schema_arg logdirty_args[] = {
    DOMAIN_ARG("domain", true, "the domain: a name or an id"),
    { .name = "action", .type = MV_SCHEMA_ENUM, .required = true,
      .values = WORDS("enable", "disable", "clean", "peek", "stats"),
      .noun = "dirty-log action", .metavar = "ACTION",
      .help = "enable or disable logging, fetch the pages written (clean clears the log, "
              "peek does not) or only its counters (stats)" },
    END,
};

#define FC_VM_ARG \
    { .name = "vm", .type = MV_SCHEMA_STRING, .required = true, .metavar = "NAME", \
      .help = "the snapshot VM, as named by fc-listen", \
      .examples = EXAMPLES("\"fc1\"", "\"none\"") }

static const struct mv_schema_arg fc_listen_args[] = {
    { .name = "vm", .type = MV_SCHEMA_STRING, .required = true, .metavar = "NAME",
      .help = "a name for the VM to serve", .examples = EXAMPLES("\"fc1\"", "\"\"") },
    { .name = "socket", .type = MV_SCHEMA_STRING, .required = true, .metavar = "PATH",
      .help = "the Unix socket the VMM connects to (Firecracker's backend_path): an "
              "absolute path that does not exist yet",
      .examples = EXAMPLES("\"/nonexistent/fc.sock\"", "\"relative.sock\"") },
    { .name = "mem_file", .type = MV_SCHEMA_STRING, .metavar = "FILE",
      .default_text = "none: pages read zero",
      .help = "the snapshot's memory file, loaded lazily",
      .examples = EXAMPLES("\"/nonexistent/mem\"") },
    { .name = "target", .type = MV_SCHEMA_SIZE, .metavar = "SIZE",
      .default_text = "no limit but the host budget",
      .help = "memory it may have filled", .examples = EXAMPLES("\"4M\"", "0") },
    { .name = "policy", .type = MV_SCHEMA_ENUM, .values = WORDS("wait", "crash"),
      .noun = "policy", .metavar = "wait|crash", .default_text = "wait",
      .help = "when no memory is left: wait for it, or crash (the VMM is killed)" },
    END,
};

static const struct mv_schema_arg fc_vm_args[] = { FC_VM_ARG, END };

static const struct mv_schema_arg fc_logdirty_args[] = {
    FC_VM_ARG,
    { .name = "action", .type = MV_SCHEMA_ENUM, .required = true,
      .values = WORDS("enable", "clean", "disable"), .noun = "action",
      .metavar = "enable|clean|disable",
      .help = "write-protect and start the log, fetch and clear it, or stop" },
    END,
};

static const struct mv_schema_arg clone_args[] = {
    DOMAIN_ARG("domain", true, "the paused domain to clone"),
    { .name = "name", .type = MV_SCHEMA_NAME, .required = true, .metavar = "NEW_NAME",
      .help = "the clone's name (not all digits)" },
    END,
};

static const struct mv_schema_arg page_args[] = {
    DOMAIN_ARG("domain", true, "the domain: a name or an id"),
    GFN_ARG("gfn", "the guest frame number"), END,
};

static const struct mv_schema_arg share_pages_args[] = {
    DOMAIN_ARG("source_domain", true, "the source page's domain"),
    GFN_ARG("source_gfn", "the source page's gfn"),
    HANDLE_ARG("source_handle", "the source page's handle, from share-nominate"),
    DOMAIN_ARG("client_domain", true, "the client page's domain"),
    GFN_ARG("client_gfn", "the client page's gfn"),
    HANDLE_ARG("client_handle", "the client page's handle, from share-nominate"),
    END,
};

static const struct mv_schema_arg share_add_to_physmap_args[] = {
    DOMAIN_ARG("source_domain", true, "the shared frame's domain"),
    GFN_ARG("source_gfn", "the shared frame's gfn"),
    HANDLE_ARG("source_handle", "the shared frame's handle, from share-nominate"),
    DOMAIN_ARG("client_domain", true, "the domain to map it in"),
    GFN_ARG("client_gfn", "the gfn to map it at, a populate-on-demand entry"),
    END,
};

static const struct mv_schema_arg share_make_args[] = {
    DOMAIN_ARG("domain", true, "the domain: a name or an id"),
    GFN_ARG("gfn", "the first gfn"),
    { .name = "count", .type = MV_SCHEMA_U64, .metavar = "COUNT", .default_text = "1",
      .help = "how many gfns from gfn", .examples = EXAMPLES("1", "16", "512") },
    END,
};

static const struct mv_schema_arg share_hint_args[] = {
    DOMAIN_ARG("domain", true, "the domain: a name or an id"),
    GFN_ARG("gfn", "the first gfn of the range"),
    { .name = "count", .type = MV_SCHEMA_U64, .required = true, .metavar = "COUNT",
      .help = "the pages of the range", .examples = EXAMPLES("1", "64", "512") },
    { .name = "key", .type = MV_SCHEMA_U64, .required = true, .metavar = "KEY",
      .help = "ranges hinted with the same non-zero key hold the same content",
      .examples = EXAMPLES("1", "42", "0") },
    END,
};

static const struct mv_schema_arg share_exclude_args[] = {
    DOMAIN_ARG("domain", true, "the domain: a name or an id"),
    GFN_ARG("gfn", "the first gfn of the range"),
    { .name = "count", .type = MV_SCHEMA_U64, .required = true, .metavar = "COUNT",
      .help = "the pages of the range", .examples = EXAMPLES("1", "8") },
    END,
};

static const struct mv_schema_arg share_scan_args[] = {
    { .name = "max_pages", .type = MV_SCHEMA_U64, .option = "pages", .metavar = "N",
      .default_text = "one whole pass",
      .help = "hash at most N populated pages (default: one whole pass over every domain)",
      .examples = EXAMPLES("0", "100", "4096") },
    END,
};

static const struct mv_schema_arg scanner_start_args[] = {
    { .name = "rate", .type = MV_SCHEMA_U64, .metavar = "PAGES_PER_S",
      .default_text = "no limit", .help = "pages hashed per second (default: no limit)",
      .examples = EXAMPLES("0", "1000", "100000") },
    { .name = "cpu_percent", .type = MV_SCHEMA_U64, .max = UINT_ARG_MAX, .option = "cpu",
      .metavar = "PERCENT", .default_text = "100",
      .help = "share of one CPU it may use, 1..100; 0 or absent: 100",
      .examples = EXAMPLES("1", "10", "50") },
    { .name = "max_vmas", .type = MV_SCHEMA_U64, .max = UINT_ARG_MAX, .metavar = "N",
      .default_text = "vm.max_map_count less a reserve",
      .help = "stop sharing near N mappings (default: vm.max_map_count less a reserve)",
      .examples = EXAMPLES("0", "1000", "60000") },
    END,
};

static const struct mv_schema_arg test_hold_args[] = {
    { .name = "stubborn", .type = MV_SCHEMA_U64, .metavar = "0|1", .default_text = "0",
      .help = "non-zero: do not give up when the daemon stops", .examples = EXAMPLES("0") },
    END,
};

/* Transcendent memory (the guest interface is here for tests and tools;
 * a guest makes these calls through the library). */
#define TMEM_POOL_ARG                                                                  \
    { .name = "pool", .type = MV_SCHEMA_U64, .required = true, .max = UINT32_MAX,      \
      .metavar = "POOL", .help = "the pool id, from tmem-new-pool",                     \
      .examples = EXAMPLES("0", "1", "2") }
#define TMEM_OBJECT_ARG                                                                \
    { .name = "object", .type = MV_SCHEMA_STRING, .required = true, .metavar = "OID",   \
      .help = "the 192-bit object id: N, or N:N:N (decimal or 0x hex)",                 \
      .examples = EXAMPLES("\"1\"", "\"7:0:0\"", "\"0x10:2:3\"") }
#define TMEM_INDEX_ARG(needed, text)                                                   \
    { .name = "index", .type = MV_SCHEMA_U64, .required = (needed), .max = UINT32_MAX,  \
      .metavar = "INDEX", .help = (text), .examples = EXAMPLES("0", "1", "4095") }
#define TMEM_UUID_ARG(needed, text)                                                    \
    { .name = "uuid", .type = MV_SCHEMA_STRING, .required = (needed), .metavar = "UUID", \
      .help = (text),                                                                   \
      .examples = EXAMPLES("\"00112233-4455-6677-8899-aabbccddeeff\"",                  \
                           "\"0123456789abcdef0123456789abcdef\"") }

static const struct mv_schema_arg tmem_authorize_args[] = {
    DOMAIN_ARG("domain", true, "the domain: a name or an id"),
    TMEM_UUID_ARG(true, "the shared pool's UUID: 32 hex digits, dashes allowed"),
    END,
};

static const struct mv_schema_arg tmem_new_pool_args[] = {
    DOMAIN_ARG("domain", true, "the domain: a name or an id"),
    { .name = "kind", .type = MV_SCHEMA_ENUM, .required = true,
      .values = WORDS("ephemeral", "persistent"), .noun = "pool kind", .metavar = "KIND",
      .help = "ephemeral (pages may be dropped: a page cache) or persistent (kept: swap)" },
    { .name = "sharing", .type = MV_SCHEMA_ENUM, .values = WORDS("private", "shared"),
      .noun = "pool sharing", .metavar = "HOW", .default_text = "private",
      .help = "private, or shared: joined by UUID by the domains authorised for it" },
    TMEM_UUID_ARG(false, "shared pools: the pool's UUID"),
    { .name = "codec", .type = MV_SCHEMA_ENUM, .values = WORDS("lz4", "zstd"),
      .noun = "codec", .metavar = "CODEC", .default_text = "lz4",
      .help = "how its pages are compressed: lz4 or zstd" },
    { .name = "dedup", .type = MV_SCHEMA_ENUM, .values = WORDS("off", "on"),
      .noun = "dedup setting", .metavar = "off|on", .default_text = "off",
      .help = "keep identical pages of the pool once (bytes compared)" },
    END,
};

static const struct mv_schema_arg tmem_pool_args[] = {
    DOMAIN_ARG("domain", true, "the domain: a name or an id"), TMEM_POOL_ARG, END,
};

static const struct mv_schema_arg tmem_put_args[] = {
    DOMAIN_ARG("domain", true, "the domain: a name or an id"),
    TMEM_POOL_ARG,
    TMEM_OBJECT_ARG,
    TMEM_INDEX_ARG(true, "the page's index in the object"),
    { .name = "seed", .type = MV_SCHEMA_U64, .required = true, .metavar = "N",
      .help = "the page put: text-like bytes made from N (0: a zero page)",
      .examples = EXAMPLES("0", "1", "42") },
    { .name = "size", .type = MV_SCHEMA_U64, .metavar = "BYTES", .default_text = "4096",
      .max = 65536, .help = "bytes handed to the put (only one page is accepted)",
      .examples = EXAMPLES("4096") },
    END,
};

static const struct mv_schema_arg tmem_get_args[] = {
    DOMAIN_ARG("domain", true, "the domain: a name or an id"),
    TMEM_POOL_ARG,
    TMEM_OBJECT_ARG,
    TMEM_INDEX_ARG(true, "the page's index in the object"),
    { .name = "seed", .type = MV_SCHEMA_U64, .metavar = "N", .default_text = "none",
      .help = "compare the page found with the one tmem-put makes from N",
      .examples = EXAMPLES("0", "1", "42") },
    END,
};

static const struct mv_schema_arg tmem_flush_args[] = {
    DOMAIN_ARG("domain", true, "the domain: a name or an id"),
    TMEM_POOL_ARG,
    TMEM_OBJECT_ARG,
    TMEM_INDEX_ARG(false, "flush this page only (default: the whole object)"),
    END,
};

static const struct mv_schema_arg page_out_args[] = {
    DOMAIN_ARG("domain", true, "the domain: a name or an id"),
    { .name = "pages", .type = MV_SCHEMA_U64, .required = true, .metavar = "N",
      .help = "page out up to N populated pages, cold ones first",
      .examples = EXAMPLES("0", "1", "256") },
    END,
};

static const struct mv_schema_arg tmem_relinquish_args[] = {
    { .name = "pages", .type = MV_SCHEMA_U64, .required = true, .metavar = "N",
      .help = "frames to give back to the host, evicting ephemeral pages as needed",
      .examples = EXAMPLES("0", "1", "64") },
    END,
};

static const struct mv_schema_arg tmem_relinquish_block_args[] = {
    { .name = "order", .type = MV_SCHEMA_U64, .required = true, .max = UINT_ARG_MAX,
      .metavar = "K",
      .help = "make room for a block of 2^K frames: as many free in the host budget "
              "and a free run of them",
      .examples = EXAMPLES("0", "4", "9") },
    END,
};

/* ------------------------------------------------------------------------ */
/* The commands                                                              */

#define LONG MV_SCHEMA_LONG_RUNNING

const struct mv_schema_command mv_schema_commands[] = {
    { "hello", "exchange protocol versions; lists the daemon's commands", hello_args, 0,
      NULL, "protocol, library, daemon, commands" },
    { "create", "create a domain, booted ballooned", create_args, 0, NULL, "domid, name" },
    { "destroy", "destroy a domain", domain_args, LONG, NULL, NULL },
    { "console", "a real guest's serial console (its last bytes)", console_args, 0, NULL,
      "text" },
    { "qmp", "send a QMP command to a real guest's QEMU", qmp_args, LONG, NULL, "reply" },
    { "list", "list the domains", optional_domain_args, 0, NULL, "domains" },
    { "stats", "host and domain counters", optional_domain_args, 0, NULL,
      "host, domains (with workload and logdirty)" },
    { "info", "another name of stats", optional_domain_args, 0, "stats",
      "host, domains (with workload and logdirty)" },
    { "pause", "pause a domain", domain_args, LONG, NULL, NULL },
    { "unpause", "let a paused domain run again", domain_args, 0, NULL, NULL },
    { "set-target", "change a domain's PoD target", set_target_args, LONG, NULL, NULL },
    { "balloon", "resize a guest with its balloon driver", balloon_args, LONG, NULL,
      "pages_moved" },
    { "reclaim", "return a domain's zero pages to the host now (a real guest's: "
      "QEMU's own blocks' too)", reclaim_args, LONG, NULL,
      "scanned, reclaimed, elapsed_ns, vmm_pages_freed (real guests)" },
    { "workload-start", "start a built-in guest workload", workload_start_args, 0, NULL,
      NULL },
    { "workload-status", "a domain's workload", workload_status_args, 0, NULL, "workload" },
    { "workload-stop", "stop a domain's workload", domain_args, LONG, NULL, NULL },
    { "verify", "check a domain against the content oracle", domain_args, LONG, NULL,
      "mismatches, first_bad_gfn" },
    { "audit", "check every invariant (of the host, or of one domain)",
      optional_domain_args, LONG, NULL, NULL },
    { "logdirty", "dirty logging of a domain", logdirty_args, LONG, NULL,
      "dirty_pages, zero_pages (clean, peek), logdirty" },
    { "clone", "clone a paused domain, sharing all of its memory", clone_args, LONG, NULL,
      "domid, name" },
    { "share-nominate", "make a page shareable", page_args, 0, NULL, "handle" },
    { "share-pages", "share two nominated pages with equal bytes", share_pages_args, 0,
      NULL, NULL },
    { "share-add-to-physmap", "map a shared frame at a gfn that holds no data",
      share_add_to_physmap_args, 0, NULL, NULL },
    { "share-unshare", "give a shared gfn its private copy now", page_args, 0, NULL, NULL },
    { "share-make", "share pages through the content index", share_make_args, LONG, NULL,
      "shared, matched, inserted, zero, already, skipped" },
    { "share-hint", "say that a range holds content others hold too", share_hint_args, 0,
      NULL, NULL },
    { "share-exclude", "keep a range out of sharing for good", share_exclude_args, LONG,
      NULL, NULL },
    { "share-settle", "settle the copies the kernel made for a domain now", domain_args,
      LONG, NULL, "settled" },
    { "share-scan", "run one scan now", share_scan_args, LONG, NULL, "scan" },
    { "scanner-start", "start the background scanner", scanner_start_args, 0, NULL, NULL },
    { "scanner-stop", "stop the background scanner", no_args, LONG, NULL, NULL },
    { "share-stats", "what sharing saves and costs", optional_domain_args, 0, NULL,
      "share, domains" },
    { "share-audit", "check every sharing invariant", no_args, LONG, NULL, NULL },
    { "fc-listen", "serve a VMM's snapshot memory through its userfaultfd "
      "(Firecracker's page-fault-handler hand-over)", fc_listen_args, 0, NULL,
      "vm, socket" },
    { "fc-list", "the snapshot VMs served and their counters", no_args, 0, NULL, "vms" },
    { "fc-logdirty", "dirty logging of a snapshot VM", fc_logdirty_args, LONG, NULL,
      "dirty_pages (clean)" },
    { "fc-stop", "stop serving a snapshot VM (its VMM is killed)", fc_vm_args, LONG, NULL,
      NULL },
    { "tmem-list", "transcendent memory: pools, domains and host figures",
      optional_domain_args, 0, NULL, "tmem, pools, clients" },
    { "tmem-authorize", "let a domain join the shared tmem pool of a UUID",
      tmem_authorize_args, 0, NULL, NULL },
    { "tmem-new-pool", "create a tmem pool for a domain (or join a shared one)",
      tmem_new_pool_args, 0, NULL, "pool" },
    { "tmem-destroy-pool", "leave a tmem pool; a private one is freed", tmem_pool_args, 0,
      NULL, NULL },
    { "tmem-put", "put a page into a tmem pool, as the guest would", tmem_put_args, 0, NULL,
      "stored" },
    { "tmem-get", "get a page from a tmem pool, as the guest would", tmem_get_args, 0, NULL,
      "found, matches" },
    { "tmem-flush", "flush a page or an object of a tmem pool", tmem_flush_args, 0, NULL,
      "flushed" },
    { "tmem-relinquish", "give tmem frames back to the host", tmem_relinquish_args, LONG,
      NULL, "relinquished" },
    { "tmem-relinquish-block", "make room for a block of 2^order frames, tmem giving back",
      tmem_relinquish_block_args, LONG, NULL, "relinquished, evictions" },
    { "page-out", "page cold pages of a domain out into compressed host memory",
      page_out_args, LONG, NULL, "paged" },
    { "doctor", "what this kernel offers memvisor", no_args, 0, NULL, "doctor" },
    { "shutdown", "destroy every domain and stop the daemon", no_args,
      MV_SCHEMA_STOPS_DAEMON, NULL, NULL },
    { "test-hold", "hold a daemon worker until test-release", test_hold_args,
      LONG | MV_SCHEMA_TEST_ONLY, NULL, NULL },
    { "test-release", "release every test-hold", no_args, MV_SCHEMA_TEST_ONLY, NULL,
      "released" },
};

const size_t mv_schema_command_count = sizeof(mv_schema_commands) / sizeof(mv_schema_commands[0]);

/* ------------------------------------------------------------------------ */
/* Lookups                                                                   */

const struct mv_schema_command *mv_schema_find(const char *name)
{
    for (size_t i = 0; name && i < mv_schema_command_count; i++)
        if (strcmp(mv_schema_commands[i].name, name) == 0)
            return &mv_schema_commands[i];
    return NULL;
}

const struct mv_schema_command *mv_schema_target(const struct mv_schema_command *command)
{
    const struct mv_schema_command *target =
        command && command->alias_of ? mv_schema_find(command->alias_of) : NULL;

    return target ? target : command;
}

const struct mv_schema_arg *mv_schema_arg(const struct mv_schema_command *command,
                                          const char *path)
{
    const struct mv_schema_arg *args = mv_schema_target(command)->args;
    size_t length = strcspn(path, ".");

    for (const struct mv_schema_arg *a = args; a && a->name; a++) {
        if (strlen(a->name) != length || strncmp(a->name, path, length) != 0)
            continue;
        if (!path[length])
            return a;
        for (const struct mv_schema_arg *m = a->members; m && m->name; m++)
            if (strcmp(m->name, path + length + 1) == 0)
                return m;
        return NULL;
    }
    return NULL;
}

const char *mv_schema_type_name(enum mv_schema_type type)
{
    static const char *const names[MV_SCHEMA_TYPES] = {
        [MV_SCHEMA_STRING] = "string", [MV_SCHEMA_NAME] = "name",
        [MV_SCHEMA_DOMAIN] = "domain", [MV_SCHEMA_U64] = "u64",
        [MV_SCHEMA_GFN] = "gfn",       [MV_SCHEMA_HANDLE] = "handle",
        [MV_SCHEMA_SIZE] = "size",     [MV_SCHEMA_BOOL] = "bool",
        [MV_SCHEMA_ENUM] = "enum",     [MV_SCHEMA_OBJECT] = "object",
    };

    return (unsigned)type < MV_SCHEMA_TYPES ? names[type] : "unknown";
}

const char *mv_schema_words(const struct mv_schema_arg *arg, char *buf, size_t size)
{
    size_t used = 0, count = 0;

    buf[0] = '\0';
    while (arg->values && arg->values[count])
        count++;
    for (size_t i = 0; i < count && used < size; i++) {
        int n = snprintf(buf + used, size - used, "%s%s",
                         i == 0 ? "" : i + 1 == count ? " or " : ", ", arg->values[i]);

        if (n < 0)
            break;
        used += (size_t)n;
    }
    return buf;
}

/* ------------------------------------------------------------------------ */
/* Checking a request                                                        */

static int check_failed(char *why, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int check_failed(char *why, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(why, MV_PROTO_DETAIL_MAX, fmt, ap);
    va_end(ap);
    return -EINVAL;
}

static int check_args(const struct mv_schema_arg *args, struct json_object *message,
                      char *why);

static int check_members(const struct mv_schema_arg *args, struct json_object *message,
                         char *why)
{
    json_object_object_foreach(message, key, value) {
        const struct mv_schema_arg *a = args;

        (void)value;
        if (strcmp(key, "cmd") == 0)
            continue;
        while (a->name && strcmp(a->name, key) != 0)
            a++;
        if (!a->name)
            return check_failed(why, "unknown argument '%s'", key);
    }
    return 0;
}

static int check_arg(const struct mv_schema_arg *a, struct json_object *message, char *why)
{
    struct json_object *value, *object;
    const char *text;
    uint64_t number = 0;
    char words[128];
    int rc;

    if (!json_object_object_get_ex(message, a->name, &value))
        return a->required ? check_failed(why, "missing argument '%s'", a->name) : 0;
    switch (a->type) {
    case MV_SCHEMA_STRING:
    case MV_SCHEMA_NAME:
        return mv_proto_arg_string(message, a->name, true, &text, why);
    case MV_SCHEMA_ENUM:
        if ((rc = mv_proto_arg_string(message, a->name, true, &text, why)) < 0)
            return rc;
        for (const char *const *w = a->values; w && *w; w++)
            if (strcmp(*w, text) == 0)
                return 0;
        return check_failed(why, "unknown %s '%s' (%s)", a->noun ? a->noun : a->name, text,
                            mv_schema_words(a, words, sizeof(words)));
    case MV_SCHEMA_DOMAIN:
        if (json_object_is_type(value, json_type_string))
            return mv_proto_arg_string(message, a->name, true, &text, why);
        if (mv_proto_arg_u64(message, a->name, true, &number, why) < 0)
            return check_failed(why, "argument '%s' must be a name or an id", a->name);
        if (number > UINT32_MAX)
            return check_failed(why, "domain id %" PRIu64 " is out of range", number);
        return 0;
    case MV_SCHEMA_U64:
    case MV_SCHEMA_GFN:
    case MV_SCHEMA_HANDLE:
        if ((rc = mv_proto_arg_u64(message, a->name, true, &number, why)) < 0)
            return rc;
        break;
    case MV_SCHEMA_SIZE:
        if ((rc = mv_proto_arg_size(message, a->name, true, &number, why)) < 0)
            return rc;
        break;
    case MV_SCHEMA_BOOL:
        if (!json_object_is_type(value, json_type_boolean))
            return check_failed(why, "argument '%s' must be true or false", a->name);
        return 0;
    case MV_SCHEMA_OBJECT:
        if ((rc = mv_proto_arg_object(message, a->name, true, &object, why)) < 0)
            return rc;
        return check_args(a->members, object, why);
    default:
        return check_failed(why, "argument '%s' has a type memvisord does not know", a->name);
    }
    if (a->max && number > a->max) {
        if (a->max == UINT_ARG_MAX)
            return check_failed(why, "argument '%s' is larger than %u", a->name, UINT_MAX);
        return check_failed(why, "%s %" PRIu64 " is above %" PRIu64 "%s%s", a->name, number,
                            a->max, a->max_hint ? ": " : "", a->max_hint ? a->max_hint : "");
    }
    return 0;
}

/* The members first (a misspelt name is the likeliest mistake), then each
 * argument in the table's order. */
static int check_args(const struct mv_schema_arg *args, struct json_object *message,
                      char *why)
{
    int rc = check_members(args, message, why);

    for (const struct mv_schema_arg *a = args; rc == 0 && a->name; a++)
        rc = check_arg(a, message, why);
    return rc;
}

int mv_schema_check(const struct mv_schema_command *command, struct json_object *request,
                    char *why)
{
    return check_args(mv_schema_target(command)->args, request, why);
}

/* ------------------------------------------------------------------------ */
/* The schema as JSON                                                        */

static struct json_object *words_json(const char *const *words)
{
    struct json_object *list = json_object_new_array();

    for (; words && *words; words++)
        json_object_array_add(list, json_object_new_string(*words));
    return list;
}

static struct json_object *args_json(const struct mv_schema_arg *args)
{
    struct json_object *list = json_object_new_array();

    for (const struct mv_schema_arg *a = args; a && a->name; a++) {
        struct json_object *arg = json_object_new_object();

        json_object_object_add(arg, "name", json_object_new_string(a->name));
        json_object_object_add(arg, "type",
                               json_object_new_string(mv_schema_type_name(a->type)));
        json_object_object_add(arg, "required", json_object_new_boolean(a->required));
        if (a->default_text)
            json_object_object_add(arg, "default", json_object_new_string(a->default_text));
        if (a->max)
            json_object_object_add(arg, "max", json_object_new_uint64(a->max));
        if (a->values)
            json_object_object_add(arg, "values", words_json(a->values));
        if (a->members)
            json_object_object_add(arg, "members", args_json(a->members));
        json_object_object_add(arg, "help", json_object_new_string(a->help ? a->help : ""));
        json_object_array_add(list, arg);
    }
    return list;
}

struct json_object *mv_schema_json(void)
{
    struct json_object *schema = json_object_new_object(), *list = json_object_new_array();

    json_object_object_add(schema, "protocol", json_object_new_string(MV_PROTO_VERSION));
    for (size_t i = 0; i < mv_schema_command_count; i++) {
        const struct mv_schema_command *c = &mv_schema_commands[i];
        struct json_object *command = json_object_new_object();

        json_object_object_add(command, "name", json_object_new_string(c->name));
        json_object_object_add(command, "summary", json_object_new_string(c->summary));
        if (c->alias_of)
            json_object_object_add(command, "alias_of", json_object_new_string(c->alias_of));
        json_object_object_add(command, "long_running",
                               json_object_new_boolean(c->flags & MV_SCHEMA_LONG_RUNNING));
        json_object_object_add(command, "test_only",
                               json_object_new_boolean(c->flags & MV_SCHEMA_TEST_ONLY));
        json_object_object_add(command, "stops_daemon",
                               json_object_new_boolean(c->flags & MV_SCHEMA_STOPS_DAEMON));
        json_object_object_add(command, "args", args_json(mv_schema_target(c)->args));
        if (c->replies)
            json_object_object_add(command, "replies", json_object_new_string(c->replies));
        json_object_array_add(list, command);
    }
    json_object_object_add(schema, "commands", list);
    return schema;
}

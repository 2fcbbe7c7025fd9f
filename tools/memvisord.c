/*
 * memvisord.c - the memvisor host daemon: one mv_host holding every domain
 * in this process, driven by JSON requests on a Unix socket (protocol.h).
 *
 * Organisation: options and logging; the socket, its lock file and the
 * pidfile; the command handlers and their table, keyed by the wire names of
 * the protocol's schema (schema.h), which checks each request before its
 * handler runs, and hello; the workers; clients (a line reader in, a reply
 * queue out); the event loop; start-up and teardown.
 *
 * One thread runs the loop: epoll over the listening socket, a signalfd
 * (SIGINT, SIGTERM, SIGHUP, SIGUSR1 and SIGUSR2 are blocked before the
 * library starts its threads, so only the signalfd sees them), an eventfd
 * the workers raise, and the clients.  No library call runs on the loop:
 * any may wait on a lock a long call holds (a stats waits for a verify of
 * the same domain; a pause for the vCPUs up to 5 s), so every command but
 * `shutdown` and `hello` runs on a worker thread (up to MAX_WORKERS, started on demand;
 * the library is thread-safe but for mv_host_destroy) and its reply is
 * queued when the worker is done, while the loop serves everyone else.  A
 * client whose request runs on a worker is not read nor watched until its
 * reply is queued, so its replies keep the order of its requests.  The loop
 * never blocks on a client: sockets are non-blocking and a reply that does
 * not fit in the socket buffer waits in the client's queue for EPOLLOUT.  A
 * client is not read while a reply of its waits, so each one holds at most
 * one reply and MV_PROTO_MAX_REQUEST + 1 bytes of requests, and a client
 * that never reads costs only its own progress.  A turn answers one request
 * of a client (reading it at most CLIENT_READS_PER_TURN times); clients
 * with more requests complete are served again, in turn with the others,
 * before the loop sleeps, so one busy client cannot starve the others.  A
 * request begun must be complete within --request-timeout-ms, or the client
 * is told and closed.  When file descriptors run out, a spare one is given
 * up to accept the waiting client and tell it why, rather than leave the
 * listening socket spinning the loop.  With all MAX_CLIENTS slots taken, a
 * client idle for --idle-evict-ms is closed to make room, so silent
 * connections cannot shut everyone out.
 *
 * Access: whoever connects controls every domain.  The socket is made 0600
 * whatever the umask (0660 of --socket-group), and each peer's credentials
 * (SO_PEERCRED, SO_PEERGROUPS) must be root's, the daemon's user's or, with
 * --socket-group, include that group.
 *
 * Exclusivity: PATH.lock next to the socket is flock()ed for the daemon's
 * lifetime and holds its pid, so a second daemon on the same socket refuses
 * to start and names the first; a socket file is replaced only when no
 * daemon answers on it.  The lock file and the pidfile are never opened
 * through a symbolic link, and at exit the daemon removes only the files it
 * created, while their paths still name them.
 *
 * Stopping: SIGINT, SIGTERM or `shutdown` close the socket at once, wait for
 * the calls running on workers (the library cannot interrupt them; a second
 * signal exits without waiting), then destroy the host.  SIGHUP and SIGUSR2
 * are ignored and SIGUSR1 logs the host's counters: by default each would
 * kill the daemon and every guest with it.
 */
#include "qemu.h"
#include "fc.h"
#include "memvisor-guest.h"
#include "protocol.h"
#include "schema.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <grp.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <libgen.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_CLIENTS 128u
#define CLIENT_IDLE_EVICT_MS 5000u   /* a full table makes room by closing
                                        a client idle this long, or refuses */
#define REQUEST_TIMEOUT_MS 30000u    /* a request begun must end within this */
#define TIMEOUT_MAX_MS 3600000u      /* the most either option takes */
#define MAX_WORKERS 16u              /* threads running commands */
#define CLIENT_READS_PER_TURN 16u
#define EPOLL_BATCH 64
#define LISTEN_BACKLOG 64
#define COW_SETTLE_MAX_MS 60000u  /* the most mv_host_config.cow_settle_ms takes */

enum exit_status { STATUS_OK = 0, STATUS_FAILED = 1, STATUS_USAGE = 2 };

struct options {
    const char *socket_path;
    const char *pidfile;
    uint64_t budget_bytes;
    unsigned fault_threads;
    const char *fault_cpus;
    enum mv_fault_mode fault_mode;
    enum mv_fault_path fault_path;
    enum mv_scrub_mode scrub_mode;
    enum mv_tmem_store tmem_store;
    enum mv_share_read share_read;
    unsigned cow_settle_ms;
    enum mv_log_level log_level;
    const char *socket_group;      /* --socket-group: its members may connect */
    unsigned idle_evict_ms;
    unsigned request_timeout_ms;
    bool overcommit;               /* a --budget above the machine's memory */
    bool test_commands;            /* test-hold and test-release */
    unsigned auto_paging_high;     /* --auto-paging HIGH:LOW (percent), 0: off */
    unsigned auto_paging_low;
};

struct client {
    int fd;
    unsigned id;                   /* for log lines */
    struct mv_proto_reader input;
    char *output;                  /* queued reply bytes */
    size_t output_length;
    size_t output_sent;
    size_t output_capacity;
    bool peer_closed;              /* recv returned 0 */
    bool more;                     /* a request may be complete: served
                                      again before the loop sleeps */
    uint32_t events;               /* epoll interest registered */
    uint64_t last_active;          /* CLOCK_MONOTONIC ms of its last turn */
    uint64_t partial_since;        /* ms since a request was begun and not
                                      finished; 0 when none is */
    bool busy;                     /* a request of its runs on a worker: not
                                      read, not watched, not closed */
    struct client *prev, *next;
};

/* A file the daemon created, removed at exit only while the path still
 * names it. */
struct owned_file {
    const char *path;
    dev_t dev;
    ino_t ino;
    bool owned;
};

struct daemon {
    mv_host *host;
    int epoll_fd;
    int listen_fd;
    int signal_fd;
    int lock_fd;
    const char *socket_path;
    char lock_path[PATH_MAX];
    struct owned_file socket_file, lock_file, pid_file;
    bool group_access;             /* members of socket_gid may connect */
    gid_t socket_gid;
    uid_t uid;                     /* the daemon's own (effective) user */
    struct client *clients;
    unsigned client_count;
    unsigned next_client_id;
    int spare_fd;                  /* given up to accept and refuse a client
                                      when file descriptors run out */
    bool fd_shortage;              /* said so in the log already */
    bool accept_paused;            /* listening socket not watched: out of
                                      descriptors, spare included */
    bool stopping;
    unsigned idle_evict_ms;
    unsigned request_timeout_ms;
    bool test_commands;

    /* Workers.  jobs_lock guards the queue, the done list, the counts and
     * the test-hold state; done_fd (an eventfd) tells the loop that the
     * done list has jobs.  jobs_in_flight is the loop's own. */
    pthread_mutex_t jobs_lock;
    pthread_cond_t jobs_cond;      /* a job was queued, or workers_stop */
    pthread_cond_t hold_cond;      /* test-release, or workers_stop */
    struct job *queue_head, *queue_tail, *done;
    pthread_t workers[MAX_WORKERS];
    unsigned worker_count, idle_workers;
    bool workers_stop;
    unsigned hold_generation, holders;
    int done_fd;
    unsigned jobs_in_flight;

    /* Real guests: the QEMU of each domain that has one.  guests_lock
     * guards the table; a guest's QEMU is stopped only by the destroy of
     * its domain. */
    pthread_mutex_t guests_lock;
    struct mv_qemu *guests;
    size_t guest_count;
    char run_dir[PATH_MAX];        /* consoles, QMP and control sockets */

    /* Snapshot VMs (Firecracker's hand-over): fc_lock guards the list. */
    pthread_mutex_t fc_lock;
    struct fc_entry *fcs;
};

/* A snapshot VM: its socket, the thread waiting for its VMM, then what
 * serves it. */
struct fc_entry {
    char name[MV_NAME_MAX];
    char socket_path[PATH_MAX];
    char mem_file[PATH_MAX];
    struct mv_fc_config config;
    struct daemon *daemon;
    int listen_fd;
    pthread_t thread;
    atomic_bool stop;
    mv_fc *vm;                     /* once the VMM handed over */
    char why[256];                 /* why the hand-over failed */
    struct fc_entry *next;
};

/* One request being answered. */
struct request {
    struct json_object *args;      /* the request object */
    struct json_object *reply;     /* {"ok": true, ...}: results go here */
    char why[MV_PROTO_DETAIL_MAX]; /* the detail of an error reply */
};

struct command;

/* A request handed to a worker; the client waits for it (c->busy). */
struct job {
    struct client *client;
    const struct command *command;
    const char *name;              /* the command's name, in r.args */
    struct request r;
    int rc;
    struct job *next;
};

/* ------------------------------------------------------------------------ */
/* Options and logging                                                       */

static enum mv_log_level log_threshold = MV_LOG_INFO;

static const char *const log_level_names[] = {
    [MV_LOG_ERROR] = "error",
    [MV_LOG_WARN] = "warn",
    [MV_LOG_INFO] = "info",
    [MV_LOG_DEBUG] = "debug",
};

static void daemon_log(enum mv_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void daemon_log(enum mv_log_level level, const char *fmt, ...)
{
    char message[1024];
    va_list ap;

    if (level > log_threshold)
        return;
    va_start(ap, fmt);
    vsnprintf(message, sizeof(message), fmt, ap);
    va_end(ap);
    fprintf(stderr, "memvisord: %s: %s\n", log_level_names[level], message);
}

static void log_library_message(void *opaque, enum mv_log_level level, const char *message)
{
    (void)opaque;
    daemon_log(level, "%s", message);
}

static void print_usage(FILE *out)
{
    fprintf(out,
        "usage: memvisord [options]\n"
        "\n"
        "The memvisor host daemon: hosts every domain in this process and serves\n"
        "the memvisor tool over a Unix socket.  Stops on SIGINT, SIGTERM or the\n"
        "'shutdown' command, destroying every domain, once the calls running\n"
        "finish (a second SIGINT or SIGTERM exits without waiting).  SIGHUP and\n"
        "SIGUSR2 are ignored; SIGUSR1 logs the host's counters.\n"
        "\n"
        "options:\n"
        "  --socket PATH        socket to listen on (default $%s, else\n"
        "                       %s);\n"
        "                       PATH.lock keeps a second daemon away\n"
        "  --socket-group NAME  let members of group NAME connect too (socket\n"
        "                       0660); otherwise only root and this daemon's\n"
        "                       user may (socket 0600).  A client that connects\n"
        "                       controls every domain\n"
        "  --budget SIZE        machine memory domains may populate, e.g. 8G\n"
        "                       (default: 80%% of MemAvailable); more than the\n"
        "                       machine's memory is refused without --overcommit\n"
        "  --overcommit         accept a --budget above the machine's memory\n"
        "  --fault-threads N    userfaultfd service threads (default 1)\n"
        "  --fault-cpus LIST    CPUs they run on, e.g. 0-3,8 (default: any);\n"
        "                       best the CPUs of the vCPUs they serve\n"
        "  --fault-mode MODE    shared: those threads, on any of those CPUs;\n"
        "                       per-cpu: one pinned to each of the CPUs;\n"
        "                       auto (default): per-cpu on up to %u CPUs\n"
        "  --fault-path PATH    where a vCPU's populate-on-demand faults are\n"
        "                       resolved: auto (default): in the vCPU's own\n"
        "                       thread where it can, else by the fault\n"
        "                       threads; thread: always by the fault threads\n"
        "  --scrub-mode MODE    when a destroyed domain's memory is scrubbed:\n"
        "                       sync (default): before destroy replies;\n"
        "                       background: by a host thread afterwards, the\n"
        "                       memory counted in the budget until then\n"
        "  --tmem-store STORE   how tmem keeps its frames: auto (default):\n"
        "                       measured at start; mapped; copied (system\n"
        "                       calls, never mapped: for shadow page tables)\n"
        "  --share-read HOW     how sharing reads guest pages: auto (default):\n"
        "                       where the guest maps them when it can, else\n"
        "                       as measured at start; copy (system calls, for\n"
        "                       shadow page tables); in-place (mapped)\n"
        "  --cow-settle-ms MS   how often the copies the kernel made for\n"
        "                       --cow-mode kernel domains are settled, 1..%u\n"
        "                       (default %u)\n"
        "  --foreground         stay in the foreground (the only mode; for\n"
        "                       service managers that pass it)\n"
        "  --pidfile PATH       write the daemon's pid to PATH while it runs\n"
        "  --log-level LEVEL    error, warn, info (default) or debug\n"
        "  --request-timeout-ms MS  a client that began a request must finish\n"
        "                       sending it within MS (default %u); else it is\n"
        "                       told so and closed\n"
        "  --idle-evict-ms MS   with every one of the %u client slots taken, a\n"
        "                       client idle this long makes room (default %u)\n"
        "  --test-commands      accept test-hold and test-release, which hold a\n"
        "                       worker until released (for tests only)\n"
        "  --auto-paging HIGH:LOW  host paging: above HIGH%% of the budget\n"
        "                       populated, page cold guest pages out into\n"
        "                       compressed memory down to LOW%% (default: off)\n"
        "  --help               show this help\n"
        "  --version            show the version\n",
        MV_PROTO_SOCKET_ENV, MV_PROTO_SOCKET_DEFAULT, MV_FAULT_PER_CPU_AUTO_MAX,
        COW_SETTLE_MAX_MS, MV_COW_SETTLE_DEFAULT_MS, REQUEST_TIMEOUT_MS, MAX_CLIENTS,
        CLIENT_IDLE_EVICT_MS);
}

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int usage_error(const char *fmt, ...)
{
    va_list ap;

    fputs("memvisord: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs(" (see memvisord --help)\n", stderr);
    return STATUS_USAGE;
}

/* The names an option takes, in the order of its enum's values (0 first),
 * NULL-terminated. */
static const char *const fault_modes[] = { "auto", "shared", "per-cpu", NULL };
static const char *const fault_paths[] = { "auto", "thread", NULL };
static const char *const scrub_modes[] = { "sync", "background", NULL };
static const char *const tmem_stores[] = { "auto", "mapped", "copied", NULL };
static const char *const share_reads[] = { "auto", "copy", "in-place", NULL };

/* *value = the index of arg among names; else a usage error listing them
 * ("--x: 'y' is not a, b or c") and -1. */
static int parse_choice(const char *option, const char *arg, const char *const *names,
                        int *value)
{
    char list[128] = "";
    size_t n = 0;

    for (; names[n]; n++) {
        if (strcmp(arg, names[n]) == 0) {
            *value = (int)n;
            return 0;
        }
    }
    for (size_t i = 0; i < n; i++)
        snprintf(list + strlen(list), sizeof(list) - strlen(list), "%s%s",
                 i == 0 ? "" : i + 1 == n ? " or " : ", ", names[i]);
    usage_error("%s: '%s' is not %s", option, arg, list);
    return -1;
}

/* Returns -1 to go on, or the exit status. */
static int parse_options(int argc, char **argv, struct options *o)
{
    enum { OPT_SOCKET = 256, OPT_BUDGET, OPT_FAULT_THREADS, OPT_FAULT_CPUS, OPT_FAULT_MODE,
           OPT_FAULT_PATH, OPT_SCRUB_MODE, OPT_TMEM_STORE, OPT_SHARE_READ, OPT_COW_SETTLE_MS, OPT_FOREGROUND,
           OPT_PIDFILE, OPT_LOG_LEVEL, OPT_VERSION, OPT_SOCKET_GROUP, OPT_IDLE_EVICT_MS,
           OPT_REQUEST_TIMEOUT_MS, OPT_OVERCOMMIT, OPT_TEST_COMMANDS, OPT_AUTO_PAGING };
    static const struct option long_options[] = {
        { "socket", required_argument, NULL, OPT_SOCKET },
        { "socket-group", required_argument, NULL, OPT_SOCKET_GROUP },
        { "idle-evict-ms", required_argument, NULL, OPT_IDLE_EVICT_MS },
        { "request-timeout-ms", required_argument, NULL, OPT_REQUEST_TIMEOUT_MS },
        { "overcommit", no_argument, NULL, OPT_OVERCOMMIT },
        { "test-commands", no_argument, NULL, OPT_TEST_COMMANDS },
        { "auto-paging", required_argument, NULL, OPT_AUTO_PAGING },
        { "budget", required_argument, NULL, OPT_BUDGET },
        { "fault-threads", required_argument, NULL, OPT_FAULT_THREADS },
        { "fault-cpus", required_argument, NULL, OPT_FAULT_CPUS },
        { "fault-mode", required_argument, NULL, OPT_FAULT_MODE },
        { "fault-path", required_argument, NULL, OPT_FAULT_PATH },
        { "scrub-mode", required_argument, NULL, OPT_SCRUB_MODE },
        { "tmem-store", required_argument, NULL, OPT_TMEM_STORE },
        { "share-read", required_argument, NULL, OPT_SHARE_READ },
        { "cow-settle-ms", required_argument, NULL, OPT_COW_SETTLE_MS },
        { "foreground", no_argument, NULL, OPT_FOREGROUND },
        { "pidfile", required_argument, NULL, OPT_PIDFILE },
        { "log-level", required_argument, NULL, OPT_LOG_LEVEL },
        { "help", no_argument, NULL, 'h' },
        { "version", no_argument, NULL, OPT_VERSION },
        { NULL, 0, NULL, 0 },
    };
    const char *socket_option = NULL;
    uint64_t value;
    int choice;
    int opt, rc;

    memset(o, 0, sizeof(*o));
    o->log_level = MV_LOG_INFO;
    o->idle_evict_ms = CLIENT_IDLE_EVICT_MS;
    o->request_timeout_ms = REQUEST_TIMEOUT_MS;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, ":h", long_options, NULL)) != -1) {
        switch (opt) {
        case OPT_SOCKET:
            socket_option = optarg;
            break;
        case OPT_SOCKET_GROUP:
            o->socket_group = optarg;   /* resolved by daemon_start */
            break;
        case OPT_IDLE_EVICT_MS:
        case OPT_REQUEST_TIMEOUT_MS:
            if (mv_proto_parse_u64(optarg, &value) < 0 || value == 0 ||
                value > TIMEOUT_MAX_MS)
                return usage_error("--%s: '%s' is not a number in 1..%u",
                                   opt == OPT_IDLE_EVICT_MS ? "idle-evict-ms"
                                                            : "request-timeout-ms",
                                   optarg, TIMEOUT_MAX_MS);
            if (opt == OPT_IDLE_EVICT_MS)
                o->idle_evict_ms = (unsigned)value;
            else
                o->request_timeout_ms = (unsigned)value;
            break;
        case OPT_OVERCOMMIT:
            o->overcommit = true;
            break;
        case OPT_TEST_COMMANDS:
            o->test_commands = true;
            break;
        case OPT_AUTO_PAGING:
            if (sscanf(optarg, "%u:%u", &o->auto_paging_high, &o->auto_paging_low) != 2 ||
                o->auto_paging_high > 100 || o->auto_paging_high == 0 ||
                o->auto_paging_low >= o->auto_paging_high)
                return usage_error("--auto-paging: '%s' is not HIGH:LOW percentages with "
                                   "0 <= LOW < HIGH <= 100", optarg);
            break;
        case OPT_BUDGET:
            rc = mv_proto_parse_size(optarg, &o->budget_bytes);
            if (rc < 0)
                return usage_error("--budget: '%s' is %s", optarg, mv_proto_size_error(rc));
            break;
        case OPT_FAULT_THREADS:
            if (mv_proto_parse_u64(optarg, &value) < 0 || value == 0 || value > 64)
                return usage_error("--fault-threads: '%s' is not a number in 1..64",
                                   optarg);
            o->fault_threads = (unsigned)value;
            break;
        case OPT_FAULT_CPUS:
            o->fault_cpus = optarg;     /* checked by mv_host_create */
            break;
        case OPT_FAULT_MODE:
            if (parse_choice("--fault-mode", optarg, fault_modes, &choice) < 0)
                return STATUS_USAGE;
            o->fault_mode = (enum mv_fault_mode)choice;
            break;
        case OPT_FAULT_PATH:
            if (parse_choice("--fault-path", optarg, fault_paths, &choice) < 0)
                return STATUS_USAGE;
            o->fault_path = (enum mv_fault_path)choice;
            break;
        case OPT_SCRUB_MODE:
            if (parse_choice("--scrub-mode", optarg, scrub_modes, &choice) < 0)
                return STATUS_USAGE;
            o->scrub_mode = (enum mv_scrub_mode)choice;
            break;
        case OPT_TMEM_STORE:
            if (parse_choice("--tmem-store", optarg, tmem_stores, &choice) < 0)
                return STATUS_USAGE;
            o->tmem_store = (enum mv_tmem_store)choice;
            break;
        case OPT_SHARE_READ:
            if (parse_choice("--share-read", optarg, share_reads, &choice) < 0)
                return STATUS_USAGE;
            o->share_read = (enum mv_share_read)choice;
            break;
        case OPT_COW_SETTLE_MS:
            if (mv_proto_parse_u64(optarg, &value) < 0 || value == 0 ||
                value > COW_SETTLE_MAX_MS)
                return usage_error("--cow-settle-ms: '%s' is not a number in 1..%u",
                                   optarg, COW_SETTLE_MAX_MS);
            o->cow_settle_ms = (unsigned)value;
            break;
        case OPT_FOREGROUND:
            break;
        case OPT_PIDFILE:
            o->pidfile = optarg;
            break;
        case OPT_LOG_LEVEL: {
            size_t i = 0;

            while (i < sizeof(log_level_names) / sizeof(log_level_names[0]) &&
                   strcmp(log_level_names[i], optarg) != 0)
                i++;
            if (i == sizeof(log_level_names) / sizeof(log_level_names[0]))
                return usage_error("--log-level: '%s' is not error, warn, info or "
                                   "debug", optarg);
            o->log_level = (enum mv_log_level)i;
            break;
        }
        case 'h':
            print_usage(stdout);
            return STATUS_OK;
        case OPT_VERSION:
            printf("memvisord %d.%d.%d\n", MV_VERSION_MAJOR, MV_VERSION_MINOR,
                   MV_VERSION_PATCH);
            return STATUS_OK;
        default: {
            char why[160];

            mv_tool_bad_option(argv, long_options, opt, why, sizeof(why));
            return usage_error("%s", why);
        }
        }
    }
    if (optind < argc)
        return usage_error("unexpected argument '%s'", argv[optind]);
    o->socket_path = mv_proto_socket_path(socket_option);
    return -1;
}

/* ------------------------------------------------------------------------ */
/* Socket, lock file and pidfile                                             */

/* Create the directory that will hold `path`, when it is missing. */
static int make_parent_directory(const char *path)
{
    char copy[PATH_MAX];
    const char *dir;

    if (snprintf(copy, sizeof(copy), "%s", path) >= (int)sizeof(copy)) {
        daemon_log(MV_LOG_ERROR, "socket path '%s' is too long", path);
        return -ENAMETOOLONG;
    }
    dir = dirname(copy);
    if (mkdir(dir, 0755) < 0 && errno != EEXIST) {
        daemon_log(MV_LOG_ERROR, "cannot create directory %s: %s", dir, strerror(errno));
        return -errno;
    }
    return 0;
}

/* Tell who holds the lock, from the pid it wrote there. */
static void report_lock_holder(struct daemon *d, int fd)
{
    char text[32] = "";
    ssize_t n = pread(fd, text, sizeof(text) - 1, 0);
    long pid = n > 0 ? strtol(text, NULL, 10) : 0;

    if (pid > 0)
        daemon_log(MV_LOG_ERROR, "another memvisord (pid %ld) is serving %s; stop it "
                   "first or pick another --socket", pid, d->socket_path);
    else
        daemon_log(MV_LOG_ERROR, "another memvisord is serving %s (it holds %s); stop "
                   "it first or pick another --socket", d->socket_path, d->lock_path);
}

/* Remember that `fd`, open on `path`, is a file this daemon made. */
static void file_own(struct owned_file *f, const char *path, int fd)
{
    struct stat st;

    f->path = path;
    if (fstat(fd, &st) == 0) {
        f->dev = st.st_dev;
        f->ino = st.st_ino;
        f->owned = true;
    }
}

/* Unlink a file this daemon made, unless its path now names another file
 * (a second daemon's, or anyone's): only what it created goes. */
static void file_remove(struct owned_file *f)
{
    struct stat st;

    if (!f->owned)
        return;
    f->owned = false;
    if (lstat(f->path, &st) < 0)
        return;
    if (st.st_dev != f->dev || st.st_ino != f->ino) {
        daemon_log(MV_LOG_WARN, "%s is no longer the file this daemon created; left "
                   "in place", f->path);
        return;
    }
    unlink(f->path);
}

/* Open a file the daemon writes for others to read (lock file, pidfile)
 * without following a symbolic link and only when it is a plain file:
 * a link planted at the path would otherwise have its target truncated. */
static int open_private_file(const char *path, const char *what, int flags, mode_t mode)
{
    struct stat st;
    int fd = open(path, flags | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY | O_NONBLOCK, mode);

    if (fd < 0) {
        int err = errno;

        if (err == ELOOP)
            daemon_log(MV_LOG_ERROR, "%s %s is a symbolic link; refusing to follow it "
                       "(remove it if it is not a leftover of an attack)", what, path);
        else if (err != EEXIST)
            daemon_log(MV_LOG_ERROR, "cannot open %s %s: %s", what, path, strerror(err));
        return -err;
    }
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_nlink > 1) {
        daemon_log(MV_LOG_ERROR, "%s %s is not a plain file of its own (a device, fifo "
                   "or hard link); refusing to write to it", what, path);
        close(fd);
        return -EPERM;
    }
    return fd;
}

/*
 * Take PATH.lock.  A daemon that stops unlinks the file while still holding
 * it, so a lock taken on a file that has since left the path is worthless:
 * check that the path still names the locked file, and try again if not.
 */
static int lock_acquire(struct daemon *d)
{
    struct stat held, named;
    char pid[32];
    int fd, n;

    if (snprintf(d->lock_path, sizeof(d->lock_path), "%s.lock", d->socket_path) >=
        (int)sizeof(d->lock_path)) {
        daemon_log(MV_LOG_ERROR, "socket path '%s' is too long", d->socket_path);
        return -ENAMETOOLONG;
    }
    for (;;) {
        fd = open_private_file(d->lock_path, "lock file", O_RDWR | O_CREAT, 0600);
        if (fd < 0)
            return fd;
        if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
            int err = errno;

            if (err == EWOULDBLOCK)
                report_lock_holder(d, fd);
            else
                daemon_log(MV_LOG_ERROR, "cannot lock %s: %s", d->lock_path, strerror(err));
            close(fd);
            return -err;
        }
        if (fstat(fd, &held) == 0 && lstat(d->lock_path, &named) == 0 &&
            held.st_dev == named.st_dev && held.st_ino == named.st_ino)
            break;
        close(fd);
    }
    n = snprintf(pid, sizeof(pid), "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) < 0 || pwrite(fd, pid, (size_t)n, 0) != n)
        daemon_log(MV_LOG_WARN, "cannot write the pid to %s: %s", d->lock_path,
                   strerror(errno));
    d->lock_fd = fd;
    file_own(&d->lock_file, d->lock_path, fd);
    return 0;
}

/*
 * Whether a daemon answers on the socket file at `address`: the lock file
 * says so only while nobody removed it, so before a socket file is taken
 * for a dead daemon's, a connection is tried.  0 when nothing listens
 * there, -EADDRINUSE when something does.
 */
static int socket_check_stale(struct daemon *d, const struct sockaddr_un *address,
                              socklen_t length)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    int rc;

    if (fd < 0)
        return -errno;
    rc = connect(fd, (const struct sockaddr *)address, length);
    if (rc == 0 || errno == EAGAIN || errno == EINPROGRESS) {
        close(fd);
        daemon_log(MV_LOG_ERROR, "a daemon answers on %s although %s did not say so "
                   "(was the lock file removed?); stop it first or pick another --socket",
                   d->socket_path, d->lock_path);
        return -EADDRINUSE;
    }
    close(fd);
    return 0;
}

static int socket_listen(struct daemon *d)
{
    char why[MV_PROTO_DETAIL_MAX];
    struct sockaddr_un address;
    socklen_t length;
    struct stat st;
    mode_t umask_before;
    int rc = mv_proto_socket_address(d->socket_path, &address, &length, why);

    if (rc < 0) {
        daemon_log(MV_LOG_ERROR, "%s", why);
        return rc;
    }
    /* We hold the lock, so a socket file here should be a dead daemon's:
     * make sure nothing answers on it before replacing it. */
    if (lstat(d->socket_path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            daemon_log(MV_LOG_ERROR, "%s exists and is not a socket; not replacing it",
                       d->socket_path);
            return -EEXIST;
        }
        if ((rc = socket_check_stale(d, &address, length)) < 0)
            return rc;
        daemon_log(MV_LOG_INFO, "replacing stale socket %s", d->socket_path);
        unlink(d->socket_path);
    }
    d->listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (d->listen_fd < 0) {
        daemon_log(MV_LOG_ERROR, "cannot create a socket: %s", strerror(errno));
        return -errno;
    }
    /* Whoever connects controls every domain: the socket is created 0600
     * whatever the umask, and opened to the --socket-group only after it
     * belongs to that group. */
    umask_before = umask(0177);
    rc = bind(d->listen_fd, (struct sockaddr *)&address, length);
    umask(umask_before);
    if (rc < 0) {
        daemon_log(MV_LOG_ERROR, "cannot bind %s: %s", d->socket_path, strerror(errno));
        return -errno;
    }
    if (lstat(d->socket_path, &st) == 0) {
        d->socket_file = (struct owned_file){ .path = d->socket_path, .dev = st.st_dev,
                                              .ino = st.st_ino, .owned = true };
    }
    if (d->group_access &&
        (chown(d->socket_path, (uid_t)-1, d->socket_gid) < 0 ||
         chmod(d->socket_path, 0660) < 0)) {
        daemon_log(MV_LOG_ERROR, "cannot give %s to group %u: %s", d->socket_path,
                   (unsigned)d->socket_gid, strerror(errno));
        return -errno;
    }
    if (listen(d->listen_fd, LISTEN_BACKLOG) < 0) {
        daemon_log(MV_LOG_ERROR, "cannot listen on %s: %s", d->socket_path, strerror(errno));
        return -errno;
    }
    return 0;
}

/* Write the pid to a new file at `path`: a plain file left there (by a
 * daemon that was killed) is replaced, never written through; a symbolic
 * link is refused. */
static int pidfile_write(struct daemon *d, const char *path)
{
    char pid[32];
    int n = snprintf(pid, sizeof(pid), "%ld\n", (long)getpid());
    int fd;

    fd = open_private_file(path, "pidfile", O_WRONLY | O_CREAT | O_EXCL, 0644);
    if (fd == -EEXIST) {
        struct stat st;

        if (lstat(path, &st) == 0 && S_ISLNK(st.st_mode)) {
            daemon_log(MV_LOG_ERROR, "pidfile %s is a symbolic link; refusing to follow "
                       "it", path);
            return -ELOOP;
        }
        if (lstat(path, &st) == 0 && !S_ISREG(st.st_mode)) {
            daemon_log(MV_LOG_ERROR, "pidfile %s exists and is not a plain file", path);
            return -EEXIST;
        }
        daemon_log(MV_LOG_INFO, "replacing the pidfile %s left behind", path);
        if (unlink(path) < 0 && errno != ENOENT) {
            daemon_log(MV_LOG_ERROR, "cannot remove %s: %s", path, strerror(errno));
            return -errno;
        }
        fd = open_private_file(path, "pidfile", O_WRONLY | O_CREAT | O_EXCL, 0644);
    }
    if (fd == -EEXIST)
        daemon_log(MV_LOG_ERROR, "pidfile %s appeared again while being replaced", path);
    if (fd < 0)
        return fd;
    file_own(&d->pid_file, path, fd);
    if (write(fd, pid, (size_t)n) != n) {
        int err = errno ? errno : EIO;

        daemon_log(MV_LOG_ERROR, "cannot write pidfile %s: %s", path, strerror(err));
        close(fd);
        return -err;
    }
    close(fd);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Commands                                                                  */

static int request_fail(struct request *r, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int request_fail(struct request *r, int err, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(r->why, sizeof(r->why), fmt, ap);
    va_end(ap);
    return err;
}

/* The outcome of a library call: its explanation is kept for the reply
 * before any other call can overwrite it. */
static int library_status(struct request *r, int64_t rc)
{
    if (rc >= 0)
        return 0;
    snprintf(r->why, sizeof(r->why), "%s", mv_last_error());
    return (int)rc;
}

static void reply_u64(struct request *r, const char *key, uint64_t value)
{
    json_object_object_add(r->reply, key, json_object_new_uint64(value));
}

static bool has_arg(struct request *r, const char *key)
{
    return json_object_object_get_ex(r->args, key, NULL);
}

static int arg_unsigned(struct request *r, struct json_object *args, const char *key,
                        unsigned *out)
{
    uint64_t value = *out;
    int rc = mv_proto_arg_u64(args, key, false, &value, r->why);

    if (rc < 0)
        return rc;
    if (value > UINT_MAX)
        return request_fail(r, -EINVAL, "argument '%s' is larger than %u", key, UINT_MAX);
    *out = (unsigned)value;
    return 0;
}

/* A domain argument `key`: a name, or an id as a number or a string of
 * digits. */
static int arg_domain_key(mv_host *host, struct request *r, const char *key,
                          uint32_t *domid)
{
    struct json_object *value;
    uint64_t id;
    int rc;

    if (!json_object_object_get_ex(r->args, key, &value))
        return request_fail(r, -EINVAL, "missing argument '%s'", key);
    if (json_object_is_type(value, json_type_string)) {
        const char *name = json_object_get_string(value);

        rc = mv_domain_lookup(host, name, domid);
        if (rc == -ESRCH && mv_proto_parse_u64(name, &id) == 0 && id <= UINT32_MAX) {
            *domid = (uint32_t)id;
            return 0;
        }
        return library_status(r, rc);
    }
    rc = mv_proto_arg_u64(r->args, key, true, &id, r->why);
    if (rc < 0)
        return request_fail(r, rc, "argument '%s' must be a name or an id", key);
    if (id > UINT32_MAX)
        return request_fail(r, -EINVAL, "domain id %" PRIu64 " is out of range", id);
    *domid = (uint32_t)id;
    return 0;
}

/* "domain": a name, or an id as a number or a string of digits. */
static int arg_domain(mv_host *host, struct request *r, uint32_t *domid)
{
    return arg_domain_key(host, r, "domain", domid);
}

/* A workload described by `args` (the request itself or a nested object). */
static int parse_workload(struct request *r, struct json_object *args,
                          struct mv_workload_config *config)
{
    const char *kind;
    uint64_t working_set = 0;
    enum mv_workload_kind parsed;
    int rc = mv_proto_arg_string(args, "kind", true, &kind, r->why);

    if (rc < 0)
        return rc;
    if (mv_proto_workload_parse(kind, &parsed) < 0)
        return request_fail(r, -EINVAL, "unknown workload kind '%s' (scrub, random, "
                            "verify, cleancache or frontswap)", kind);
    mv_workload_config_init(config, parsed);
    if ((rc = mv_proto_arg_u64(args, "rate", false, &config->pages_per_second, r->why)) < 0 ||
        (rc = mv_proto_arg_u64(args, "duration_ms", false, &config->duration_ms, r->why)) < 0 ||
        (rc = mv_proto_arg_u64(args, "max_pages", false, &config->max_pages, r->why)) < 0 ||
        (rc = mv_proto_arg_size(args, "working_set", false, &working_set, r->why)) < 0 ||
        (rc = mv_proto_arg_u64(args, "seed", false, &config->seed, r->why)) < 0)
        return rc;
    if (working_set % MV_PAGE_SIZE)
        return request_fail(r, -EINVAL, "working_set %" PRIu64 " is not a multiple of "
                            "%u", working_set, MV_PAGE_SIZE);
    config->working_set_pages = working_set / MV_PAGE_SIZE;
    return 0;
}

static int domain_ids(mv_host *host, struct request *r, uint32_t **ids, size_t *count)
{
    int n = mv_domain_list(host, NULL, 0);

    if (n < 0)
        return library_status(r, n);
    *ids = calloc((size_t)n + 1, sizeof(**ids));
    if (!*ids)
        return request_fail(r, -ENOMEM, "no memory to list %d domains", n);
    n = mv_domain_list(host, *ids, (size_t)n);
    if (n < 0) {
        free(*ids);
        return library_status(r, n);
    }
    *count = (size_t)n;
    return 0;
}

/* A domain's info, with its workload's status when `with_workload`. */
static bool guest_of(struct daemon *d, uint32_t domid, struct mv_qemu *out);

/* How a real guest's QEMU ended, when it has (the library only sees its
 * socket close): false while it runs.  The child is left to be reaped. */
static bool vmm_exit_text(pid_t pid, char *text, size_t size)
{
    siginfo_t si;

    memset(&si, 0, sizeof(si));
    if (pid <= 0 || waitid(P_PID, (id_t)pid, &si, WEXITED | WNOHANG | WNOWAIT) < 0 ||
        si.si_pid != pid)
        return false;
    if (si.si_code == CLD_EXITED && si.si_status == 0)
        snprintf(text, size, "QEMU exited with status 0: the guest powered off, or "
                 "QEMU was told to quit");
    else if (si.si_code == CLD_EXITED)
        snprintf(text, size, "QEMU exited with status %d", si.si_status);
    else
        snprintf(text, size, "QEMU was killed by signal %d (%s)", si.si_status,
                 strsignal(si.si_status));
    return true;
}

static int domain_json(struct daemon *d, struct request *r, uint32_t domid,
                       bool with_workload, struct json_object **out)
{
    mv_host *host = d->host;
    struct mv_domain_info info;
    struct mv_workload_status status;
    struct mv_qemu q;
    char text[160];
    int rc = library_status(r, mv_domain_info(host, domid, &info));

    if (rc < 0)
        return rc;
    if (with_workload) {
        rc = mv_workload_wait(host, domid, 0, &status);
        if (rc < 0 && rc != -ETIMEDOUT)
            return library_status(r, rc);
    }
    *out = mv_proto_domain_info_json(&info);
    /* A real guest whose QEMU is gone: say how it went. */
    if (info.state == MV_DOMAIN_CRASHED && guest_of(d, domid, &q) &&
        vmm_exit_text(q.pid, text, sizeof(text)))
        json_object_object_add(*out, "vmm_exit", json_object_new_string(text));
    if (with_workload) {
        struct mv_logdirty_stats logdirty;

        json_object_object_add(*out, "workload",
                               mv_proto_workload_status_json(&status, rc == 0));
        if (mv_logdirty_stats(host, domid, &logdirty) == 0)
            json_object_object_add(*out, "logdirty", mv_proto_logdirty_stats_json(&logdirty));
    }
    return 0;
}

/* "domains": the one domain the request names, or all of them. */
static int reply_domains(struct daemon *d, struct request *r, bool with_workload)
{
    mv_host *host = d->host;
    struct json_object *list = json_object_new_array(), *entry;
    uint32_t named, *ids = &named, *all = NULL;
    size_t count = 1;
    int rc;

    json_object_object_add(r->reply, "domains", list);
    if (has_arg(r, "domain")) {
        rc = arg_domain(host, r, &named);
    } else {
        rc = domain_ids(host, r, &all, &count);
        ids = all;
    }
    for (size_t i = 0; rc == 0 && i < count; i++) {
        rc = domain_json(d, r, ids[i], with_workload, &entry);
        if (rc == 0)
            json_object_array_add(list, entry);
    }
    free(all);
    return rc;
}

/*
 * A new domain's name: an all-digit one would read as the id of another
 * domain wherever a domain is named ("destroy 7" destroyed the domain
 * named "7", not domain 7), so it is refused.
 */
static int check_new_name(struct request *r, const char *name)
{
    uint64_t ignored;

    if (mv_proto_parse_u64(name, &ignored) != -EINVAL)
        return request_fail(r, -EINVAL, "domain name '%s' is all digits: it would read "
                            "as a domain id; use a name with a letter in it", name);
    return 0;
}

/* The QEMU of a domain, copied out (false: it has none). */
static bool guest_of(struct daemon *d, uint32_t domid, struct mv_qemu *out)
{
    bool found = false;

    pthread_mutex_lock(&d->guests_lock);
    for (size_t i = 0; i < d->guest_count && !found; i++)
        if (d->guests[i].domid == domid) {
            *out = d->guests[i];
            found = true;
        }
    pthread_mutex_unlock(&d->guests_lock);
    return found;
}

/* Forget a domain's QEMU (false: it had none). */
static bool guest_take(struct daemon *d, uint32_t domid, struct mv_qemu *out)
{
    bool found = false;

    pthread_mutex_lock(&d->guests_lock);
    for (size_t i = 0; i < d->guest_count && !found; i++)
        if (d->guests[i].domid == domid) {
            *out = d->guests[i];
            d->guests[i] = d->guests[--d->guest_count];
            found = true;
        }
    pthread_mutex_unlock(&d->guests_lock);
    return found;
}

static int create_real_guest(struct daemon *d, struct request *r,
                             const struct mv_domain_config *config)
{
    struct mv_qemu_options o = { .run_dir = d->run_dir };
    struct mv_qemu q, *grown;
    int rc;

    if ((rc = mv_proto_arg_string(r->args, "kernel", false, &o.kernel, r->why)) < 0 ||
        (rc = mv_proto_arg_string(r->args, "initrd", false, &o.initrd, r->why)) < 0 ||
        (rc = mv_proto_arg_string(r->args, "append", false, &o.append, r->why)) < 0 ||
        (rc = mv_proto_arg_string(r->args, "accel", false, &o.accel, r->why)) < 0)
        return rc;
    if (!o.kernel)
        return request_fail(r, -EINVAL, "--vmm qemu needs --kernel (scripts/guest-image.sh "
                            "builds one)");
    pthread_mutex_lock(&d->guests_lock);
    grown = realloc(d->guests, (d->guest_count + 1) * sizeof(*grown));
    if (grown)
        d->guests = grown;
    pthread_mutex_unlock(&d->guests_lock);
    if (!grown)
        return request_fail(r, -ENOMEM, "no memory for a guest's record");
    rc = mv_qemu_launch(d->host, config, &o, &q, r->why, sizeof(r->why));
    if (rc < 0)
        return rc;
    pthread_mutex_lock(&d->guests_lock);
    d->guests[d->guest_count++] = q;
    pthread_mutex_unlock(&d->guests_lock);
    daemon_log(MV_LOG_INFO, "domain %u (%s): QEMU %d started; console %s", q.domid,
               config->name, (int)q.pid, q.console_path);
    reply_u64(r, "domid", q.domid);
    reply_u64(r, "pid", (uint64_t)q.pid);
    json_object_object_add(r->reply, "name", json_object_new_string(config->name));
    json_object_object_add(r->reply, "console", json_object_new_string(q.console_path));
    json_object_object_add(r->reply, "control", json_object_new_string(q.ctl_path));
    json_object_object_add(r->reply, "qmp", json_object_new_string(q.qmp_path));
    return 0;
}

static int run_create(struct daemon *d, struct request *r)
{
    struct mv_domain_config config;
    struct mv_workload_config workload;
    struct json_object *workload_args = NULL;
    const char *name, *policy = NULL, *logdirty = NULL, *cow_mode = NULL, *vmm = NULL;
    uint32_t domid;
    int rc;

    mv_domain_config_init(&config);
    if ((rc = mv_proto_arg_string(r->args, "name", true, &name, r->why)) < 0 ||
        (rc = mv_proto_arg_size(r->args, "maxmem", true, &config.maxmem_bytes, r->why)) < 0)
        return rc;
    config.target_bytes = config.maxmem_bytes;
    if ((rc = mv_proto_arg_size(r->args, "target", false, &config.target_bytes, r->why)) < 0 ||
        (rc = arg_unsigned(r, r->args, "vcpus", &config.vcpus)) < 0 ||
        (rc = arg_unsigned(r, r->args, "wait_timeout_ms", &config.wait_timeout_ms)) < 0 ||
        (rc = mv_proto_arg_string(r->args, "policy", false, &policy, r->why)) < 0 ||
        (rc = mv_proto_arg_string(r->args, "logdirty", false, &logdirty, r->why)) < 0 ||
        (rc = mv_proto_arg_string(r->args, "cow_mode", false, &cow_mode, r->why)) < 0 ||
        (rc = mv_proto_arg_object(r->args, "workload", false, &workload_args, r->why)) < 0 ||
        (rc = mv_proto_arg_string(r->args, "vmm", false, &vmm, r->why)) < 0)
        return rc;
    if (strlen(name) >= sizeof(config.name))
        return request_fail(r, -EINVAL, "domain name is longer than %zu bytes",
                            sizeof(config.name) - 1);
    if ((rc = check_new_name(r, name)) < 0)
        return rc;
    snprintf(config.name, sizeof(config.name), "%s", name);
    if (policy && mv_proto_policy_parse(policy, &config.pod_policy) < 0)
        return request_fail(r, -EINVAL, "unknown policy '%s' (wait or crash)", policy);
    if (logdirty && mv_proto_logdirty_mode_parse(logdirty, &config.logdirty_mode) < 0)
        return request_fail(r, -EINVAL, "unknown dirty-log mode '%s' (auto, wp-async, "
                            "wp-sync or mprotect)", logdirty);
    if (cow_mode && mv_proto_cow_mode_parse(cow_mode, &config.cow_mode) < 0)
        return request_fail(r, -EINVAL, "unknown copy-on-write mode '%s' (trap or kernel)",
                            cow_mode);
    if (workload_args && (rc = parse_workload(r, workload_args, &workload)) < 0)
        return rc;
    if (vmm && workload_args)
        return request_fail(r, -EINVAL, "a real guest runs its own workloads: --workload "
                            "is for built-in guests");
    if (vmm)
        return create_real_guest(d, r, &config);
    if (has_arg(r, "kernel") || has_arg(r, "initrd") || has_arg(r, "append") ||
        has_arg(r, "accel"))
        return request_fail(r, -EINVAL, "kernel, initrd, append and accel go with "
                            "--vmm qemu");

    rc = library_status(r, mv_domain_create(d->host, &config, &domid));
    if (rc < 0)
        return rc;
    if (workload_args) {
        rc = library_status(r, mv_workload_start(d->host, domid, &workload));
        if (rc < 0) {
            /* All or nothing: a domain without its workload was not asked for. */
            mv_domain_destroy(d->host, domid);
            return rc;
        }
    }
    reply_u64(r, "domid", domid);
    json_object_object_add(r->reply, "name", json_object_new_string(config.name));
    return 0;
}

static int run_destroy(struct daemon *d, struct request *r)
{
    struct mv_qemu q;
    bool has_guest;
    uint32_t domid;
    int rc = arg_domain(d->host, r, &domid);

    if (rc < 0)
        return rc;
    has_guest = guest_take(d, domid, &q);
    /* The destroy stops a real guest's QEMU (its vCPUs must not touch the
     * RAM again); then it is reaped. */
    rc = library_status(r, mv_domain_destroy(d->host, domid));
    if (has_guest) {
        mv_qemu_stop(&q, 3000);
        mv_qemu_cleanup(&q);
    }
    return rc;
}

/* The domain's QEMU, or a failed request saying it has none. */
static int arg_real_guest(struct daemon *d, struct request *r, struct mv_qemu *q)
{
    uint32_t domid;
    int rc = arg_domain(d->host, r, &domid);

    if (rc < 0)
        return rc;
    if (!guest_of(d, domid, q))
        return request_fail(r, -EINVAL, "domain %u is not a real guest (created without "
                            "--vmm)", domid);
    return 0;
}

static int run_console(struct daemon *d, struct request *r)
{
    uint64_t bytes = 65536;
    struct mv_qemu q;
    struct stat st;
    char *text;
    ssize_t got;
    int rc, fd;

    if ((rc = arg_real_guest(d, r, &q)) < 0 ||
        (rc = mv_proto_arg_u64(r->args, "bytes", false, &bytes, r->why)) < 0)
        return rc;
    fd = open(q.console_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &st) < 0) {
        rc = request_fail(r, -errno, "cannot read the console %s: %s", q.console_path,
                          strerror(errno));
        if (fd >= 0)
            close(fd);
        return rc;
    }
    if (bytes > (uint64_t)st.st_size)
        bytes = (uint64_t)st.st_size;
    if (bytes > 1u << 20)
        bytes = 1u << 20;
    text = malloc(bytes + 1);
    if (!text) {
        close(fd);
        return request_fail(r, -ENOMEM, "no memory for the console");
    }
    got = pread(fd, text, bytes, st.st_size - (off_t)bytes);
    close(fd);
    text[got > 0 ? got : 0] = '\0';
    /* JSON strings are text: carriage returns go, anything else not
     * printable becomes '?'. */
    {
        ssize_t kept = 0;

        for (ssize_t i = 0; i < got; i++) {
            unsigned char c = (unsigned char)text[i];

            if (c == '\r')
                continue;
            text[kept++] = (c < 0x20 && c != '\n' && c != '\t') || c >= 0x7f ? '?' : (char)c;
        }
        text[kept] = '\0';
    }
    json_object_object_add(r->reply, "text", json_object_new_string(text));
    free(text);
    return 0;
}

static int run_qmp(struct daemon *d, struct request *r)
{
    const char *command;
    char reply[8192];
    struct mv_qemu q;
    int rc;

    if ((rc = arg_real_guest(d, r, &q)) < 0 ||
        (rc = mv_proto_arg_string(r->args, "command", true, &command, r->why)) < 0)
        return rc;
    if (strchr(command, '\n'))
        return request_fail(r, -EINVAL, "a QMP command is one line of JSON");
    rc = mv_qemu_qmp(&q, command, reply, sizeof(reply), 10000, r->why, sizeof(r->why));
    if (rc < 0)
        return rc;
    json_object_object_add(r->reply, "reply", json_object_new_string(reply));
    return 0;
}

static int run_list(struct daemon *d, struct request *r)
{
    return reply_domains(d, r, false);
}

static int run_stats(struct daemon *d, struct request *r)
{
    struct json_object *host;
    struct mv_host_stats stats;
    int rc = library_status(r, mv_host_stats(d->host, &stats));

    if (rc < 0)
        return rc;
    host = mv_proto_host_stats_json(&stats);
    json_object_object_add(r->reply, "host", host);
    return reply_domains(d, r, true);
}

/* A QMP command without arguments for a real guest's QEMU. */
static int guest_qmp(struct request *r, const struct mv_qemu *q, const char *execute)
{
    char command[128], reply[1024];

    snprintf(command, sizeof(command), "{\"execute\":\"%s\"}", execute);
    return mv_qemu_qmp(q, command, reply, sizeof(reply), 10000, r->why, sizeof(r->why));
}

/* A real guest's vCPUs are QEMU's: QEMU stops them (QMP stop), then the
 * library holds whatever fault comes later. */
static int run_pause(struct daemon *d, struct request *r)
{
    struct mv_qemu q;
    uint32_t domid;
    int rc = arg_domain(d->host, r, &domid);

    if (rc < 0)
        return rc;
    if (guest_of(d, domid, &q) && (rc = guest_qmp(r, &q, "stop")) < 0)
        return rc;
    return library_status(r, mv_domain_pause(d->host, domid));
}

static int run_unpause(struct daemon *d, struct request *r)
{
    struct mv_qemu q;
    uint32_t domid;
    int rc = arg_domain(d->host, r, &domid);

    if (rc < 0)
        return rc;
    rc = library_status(r, mv_domain_unpause(d->host, domid));
    if (rc == 0 && guest_of(d, domid, &q))
        rc = guest_qmp(r, &q, "cont");
    return rc;
}

static int run_set_target(struct daemon *d, struct request *r)
{
    uint64_t target;
    uint32_t domid;
    int rc;

    if ((rc = arg_domain(d->host, r, &domid)) < 0 ||
        (rc = mv_proto_arg_size(r->args, "target", true, &target, r->why)) < 0)
        return rc;
    return library_status(r, mv_domain_set_target(d->host, domid, target));
}

static int run_balloon(struct daemon *d, struct request *r)
{
    uint64_t size;
    uint32_t domid;
    int64_t moved;
    int rc;

    struct mv_qemu q;

    if ((rc = arg_domain(d->host, r, &domid)) < 0 ||
        (rc = mv_proto_arg_size(r->args, "size", true, &size, r->why)) < 0)
        return rc;
    if (guest_of(d, domid, &q)) {
        /* QEMU's virtio-balloon: the guest inflates to `size`, and what it
         * gives up comes back to the host as QEMU discards it. */
        char command[160], reply[1024];

        snprintf(command, sizeof(command),
                 "{\"execute\":\"balloon\",\"arguments\":{\"value\":%llu}}",
                 (unsigned long long)size);
        rc = mv_qemu_qmp(&q, command, reply, sizeof(reply), 10000, r->why, sizeof(r->why));
        if (rc < 0)
            return rc;
        reply_u64(r, "pages_moved", 0);
        return 0;
    }
    moved = mv_guest_balloon(d->host, domid, size);
    if (moved < 0)
        return library_status(r, moved);
    reply_u64(r, "pages_moved", (uint64_t)moved);
    return 0;
}

static int run_reclaim(struct daemon *d, struct request *r)
{
    struct mv_sweep_result result;
    struct mv_qemu q;
    uint64_t max_pages = 0;
    uint32_t domid;
    int rc;

    if ((rc = arg_domain(d->host, r, &domid)) < 0 ||
        (rc = mv_proto_arg_u64(r->args, "max_pages", false, &max_pages, r->why)) < 0 ||
        (rc = library_status(r, mv_domain_reclaim_zero(d->host, domid, max_pages,
                                                       &result))) < 0)
        return rc;
    reply_u64(r, "scanned", result.scanned);
    reply_u64(r, "reclaimed", result.reclaimed);
    reply_u64(r, "elapsed_ns", result.elapsed_ns);
    /* A real guest: QEMU's own blocks (ROMs, ACPI tables) too. */
    if (guest_of(d, domid, &q)) {
        uint64_t freed = 0;

        if ((rc = library_status(r, mv_vmm_trim(d->host, domid, &freed))) < 0)
            return rc;
        reply_u64(r, "vmm_pages_freed", freed);
    }
    return 0;
}

static int run_workload_start(struct daemon *d, struct request *r)
{
    struct mv_workload_config config;
    uint32_t domid;
    int rc;

    if ((rc = arg_domain(d->host, r, &domid)) < 0 ||
        (rc = parse_workload(r, r->args, &config)) < 0)
        return rc;
    return library_status(r, mv_workload_start(d->host, domid, &config));
}

static int run_workload_status(struct daemon *d, struct request *r)
{
    struct mv_workload_status status;
    unsigned wait_ms = 0;
    uint32_t domid;
    int rc;

    if ((rc = arg_domain(d->host, r, &domid)) < 0 ||
        (rc = arg_unsigned(r, r->args, "wait_ms", &wait_ms)) < 0)
        return rc;
    if (wait_ms > MV_PROTO_MAX_WAIT_MS)
        return request_fail(r, -EINVAL, "wait_ms %u is above %u: poll instead",
                            wait_ms, MV_PROTO_MAX_WAIT_MS);
    rc = mv_workload_wait(d->host, domid, wait_ms, &status);
    if (rc < 0 && rc != -ETIMEDOUT)
        return library_status(r, rc);
    json_object_object_add(r->reply, "workload",
                           mv_proto_workload_status_json(&status, rc == 0));
    return 0;
}

static int run_workload_stop(struct daemon *d, struct request *r)
{
    uint32_t domid;
    int rc = arg_domain(d->host, r, &domid);

    return rc < 0 ? rc : library_status(r, mv_workload_stop(d->host, domid));
}

static int run_verify(struct daemon *d, struct request *r)
{
    uint64_t first_bad_gfn;
    uint32_t domid;
    int64_t mismatches;
    int rc = arg_domain(d->host, r, &domid);

    if (rc < 0)
        return rc;
    mismatches = mv_oracle_verify(d->host, domid, &first_bad_gfn);
    if (mismatches < 0)
        return library_status(r, mismatches);
    reply_u64(r, "mismatches", (uint64_t)mismatches);
    json_object_object_add(r->reply, "first_bad_gfn",
                           mismatches ? json_object_new_uint64(first_bad_gfn) : NULL);
    return 0;
}

static int run_audit(struct daemon *d, struct request *r)
{
    uint32_t domid;
    int rc;

    if (!has_arg(r, "domain"))
        return library_status(r, mv_host_audit(d->host));
    rc = arg_domain(d->host, r, &domid);
    return rc < 0 ? rc : library_status(r, mv_domain_audit(d->host, domid));
}

static int run_doctor(struct daemon *d, struct request *r)
{
    struct mv_kernel_features features;
    int rc = mv_probe_kernel(&features);

    (void)d;
    json_object_object_add(r->reply, "doctor",
                           mv_proto_doctor_json(&features, rc, mv_last_error()));
    return 0;
}

/*
 * Dirty logging: enable, disable, stats, and fetches that report counts
 * (the bitmap itself stays in the daemon: a wire client wants the working
 * set, not 32 KiB of bits per GiB).
 */
static int run_logdirty(struct daemon *d, struct request *r)
{
    struct mv_logdirty_stats stats;
    struct mv_domain_info info;
    uint64_t *dirty = NULL, *zero = NULL, zero_pages = 0;
    const char *action;
    uint32_t domid;
    size_t words;
    int64_t n = 0;
    int rc;

    if ((rc = arg_domain(d->host, r, &domid)) < 0 ||
        (rc = mv_proto_arg_string(r->args, "action", true, &action, r->why)) < 0)
        return rc;
    if (strcmp(action, "enable") == 0) {
        rc = library_status(r, mv_logdirty_enable(d->host, domid));
    } else if (strcmp(action, "disable") == 0) {
        rc = library_status(r, mv_logdirty_disable(d->host, domid));
    } else if (strcmp(action, "clean") == 0 || strcmp(action, "peek") == 0) {
        if ((rc = library_status(r, mv_domain_info(d->host, domid, &info))) < 0)
            return rc;
        words = mv_logdirty_words(info.maxmem_pages);
        dirty = calloc(words, sizeof(*dirty));
        zero = calloc(words, sizeof(*zero));
        if (!dirty || !zero) {
            rc = request_fail(r, -ENOMEM, "no memory for a bitmap of %zu words", words);
        } else {
            n = action[0] == 'c' ? mv_logdirty_clean(d->host, domid, dirty, zero, words)
                                 : mv_logdirty_peek(d->host, domid, dirty, zero, words);
            rc = library_status(r, n < 0 ? (int)n : 0);
            for (size_t i = 0; rc == 0 && i < words; i++)
                zero_pages += (uint64_t)__builtin_popcountll(zero[i]);
        }
        free(dirty);
        free(zero);
        if (rc == 0) {
            reply_u64(r, "dirty_pages", (uint64_t)n);
            reply_u64(r, "zero_pages", zero_pages);
        }
    } else if (strcmp(action, "stats") != 0) {
        rc = request_fail(r, -EINVAL, "unknown dirty-log action '%s' (enable, disable, "
                          "clean, peek or stats)", action);
    }
    if (rc < 0 || (rc = library_status(r, mv_logdirty_stats(d->host, domid, &stats))) < 0)
        return rc;
    json_object_object_add(r->reply, "logdirty", mv_proto_logdirty_stats_json(&stats));
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Copy-on-write sharing                                                     */

/*
 * A clone refused at the mapping limit: the library says how many mappings
 * are in use of what limit, not how many the clone needed.  It reserves 4
 * for each run of populated or shared gfns of the source, plus 4: count
 * them (the source is paused, so they hold still) and say so.
 */
static void explain_clone_mappings(struct daemon *d, struct request *r, uint32_t source)
{
    struct mv_domain_info info;
    struct mv_share_stats stats;
    enum mv_page_type type, previous = MV_PAGE_POD;
    uint64_t runs = 0;
    size_t used = strlen(r->why);

    if (mv_domain_info(d->host, source, &info) < 0 || mv_share_stats(d->host, &stats) < 0)
        return;
    for (uint64_t gfn = 0; gfn < info.maxmem_pages; gfn++) {
        if (mv_domain_page_type(d->host, source, gfn, &type) < 0)
            return;
        if ((type == MV_PAGE_RAM || type == MV_PAGE_SHARED) && (gfn == 0 || type != previous))
            runs++;
        previous = type;
    }
    /* Short: the library's sentence takes most of the detail already. */
    snprintf(r->why + used, sizeof(r->why) - used, "; the clone needed up to %" PRIu64
             " new mappings (%" PRIu64 " runs of pages), %" PRIu64 " are in use",
             4 * runs + 4, runs, stats.vma_count);
}

static int run_clone(struct daemon *d, struct request *r)
{
    const char *name;
    uint32_t source, clone;
    int rc;

    if ((rc = arg_domain(d->host, r, &source)) < 0 ||
        (rc = mv_proto_arg_string(r->args, "name", true, &name, r->why)) < 0 ||
        (rc = check_new_name(r, name)) < 0)
        return rc;
    rc = library_status(r, mv_domain_clone(d->host, source, name, &clone));
    if (rc == -ENOSPC)
        explain_clone_mappings(d, r, source);
    if (rc < 0)
        return rc;
    reply_u64(r, "domid", clone);
    json_object_object_add(r->reply, "name", json_object_new_string(name));
    return 0;
}

/* The domain and gfn of a request whose keys start with `prefix`
 * ("" or "source_" or "client_"). */
static int arg_page(struct daemon *d, struct request *r, const char *prefix,
                    uint32_t *domid, uint64_t *gfn)
{
    char domain_key[32], gfn_key[32];
    int rc;

    snprintf(domain_key, sizeof(domain_key), "%sdomain", prefix);
    snprintf(gfn_key, sizeof(gfn_key), "%sgfn", prefix);
    if ((rc = arg_domain_key(d->host, r, domain_key, domid)) < 0)
        return rc;
    return mv_proto_arg_u64(r->args, gfn_key, true, gfn, r->why);
}

static int run_share_nominate(struct daemon *d, struct request *r)
{
    mv_share_handle handle;
    uint32_t domid;
    uint64_t gfn;
    int rc;

    if ((rc = arg_page(d, r, "", &domid, &gfn)) < 0 ||
        (rc = library_status(r, mv_share_nominate(d->host, domid, gfn, &handle))) < 0)
        return rc;
    reply_u64(r, "handle", handle);
    return 0;
}

static int run_share_pages(struct daemon *d, struct request *r)
{
    mv_share_handle source_handle, client_handle;
    uint64_t source_gfn, client_gfn;
    uint32_t source, client;
    int rc;

    if ((rc = arg_page(d, r, "source_", &source, &source_gfn)) < 0 ||
        (rc = mv_proto_arg_u64(r->args, "source_handle", true, &source_handle, r->why)) < 0 ||
        (rc = arg_page(d, r, "client_", &client, &client_gfn)) < 0 ||
        (rc = mv_proto_arg_u64(r->args, "client_handle", true, &client_handle, r->why)) < 0)
        return rc;
    return library_status(r, mv_share_pages(d->host, source, source_gfn, source_handle,
                                            client, client_gfn, client_handle));
}

static int run_share_add_to_physmap(struct daemon *d, struct request *r)
{
    mv_share_handle source_handle;
    uint64_t source_gfn, client_gfn;
    uint32_t source, client;
    int rc;

    if ((rc = arg_page(d, r, "source_", &source, &source_gfn)) < 0 ||
        (rc = mv_proto_arg_u64(r->args, "source_handle", true, &source_handle, r->why)) < 0 ||
        (rc = arg_page(d, r, "client_", &client, &client_gfn)) < 0)
        return rc;
    return library_status(r, mv_share_add_to_physmap(d->host, source, source_gfn,
                                                     source_handle, client, client_gfn));
}

static int run_share_unshare(struct daemon *d, struct request *r)
{
    uint32_t domid;
    uint64_t gfn;
    int rc = arg_page(d, r, "", &domid, &gfn);

    return rc < 0 ? rc : library_status(r, mv_share_unshare(d->host, domid, gfn));
}

/*
 * make_ro_and_share over [gfn, gfn + count), replying how many gfns had
 * each outcome.  The outcomes array is bounded by the domain's size: a
 * longer range cannot be valid, and the library says why without one.  An
 * outcome the library left unset is reported, not guessed.
 */
static int run_share_make(struct daemon *d, struct request *r)
{
    enum mv_share_outcome *outcomes = NULL;
    struct mv_domain_info info;
    uint64_t gfn, count = 1, tallied = 0, tally[MV_SHARE_SKIPPED + 1] = { 0 };
    bool tallying;
    uint32_t domid;
    int64_t shared;
    int rc;

    if ((rc = arg_page(d, r, "", &domid, &gfn)) < 0 ||
        (rc = mv_proto_arg_u64(r->args, "count", false, &count, r->why)) < 0 ||
        (rc = library_status(r, mv_domain_info(d->host, domid, &info))) < 0)
        return rc;
    if (count && count <= info.maxmem_pages) {
        outcomes = malloc(count * sizeof(*outcomes));
        if (!outcomes)
            return request_fail(r, -ENOMEM, "no memory for %" PRIu64 " outcomes", count);
        memset(outcomes, 0xff, count * sizeof(*outcomes));
    }
    tallying = outcomes != NULL;
    shared = mv_share_make_ro_and_share(d->host, domid, gfn, count, outcomes);
    rc = library_status(r, shared);
    for (uint64_t i = 0; rc == 0 && tallying && i < count; i++) {
        if ((unsigned)outcomes[i] <= MV_SHARE_SKIPPED) {
            tally[outcomes[i]]++;
            tallied++;
        }
    }
    free(outcomes);
    if (rc < 0)
        return rc;
    if (tallying && tallied != count)
        return request_fail(r, -EPROTO, "the library gave an outcome for %" PRIu64
                            " of %" PRIu64 " gfns (%" PRId64 " shared)", tallied, count,
                            shared);
    reply_u64(r, "shared", (uint64_t)shared);
    for (unsigned o = 0; tallying && o <= MV_SHARE_SKIPPED; o++)
        reply_u64(r, mv_proto_share_outcome_name((enum mv_share_outcome)o), tally[o]);
    return 0;
}

static int run_share_hint(struct daemon *d, struct request *r)
{
    uint64_t gfn, count, key;
    uint32_t domid;
    int rc;

    if ((rc = arg_page(d, r, "", &domid, &gfn)) < 0 ||
        (rc = mv_proto_arg_u64(r->args, "count", true, &count, r->why)) < 0 ||
        (rc = mv_proto_arg_u64(r->args, "key", true, &key, r->why)) < 0)
        return rc;
    return library_status(r, mv_share_hint(d->host, domid, gfn, count, key));
}

static int run_share_exclude(struct daemon *d, struct request *r)
{
    uint64_t gfn, count;
    uint32_t domid;
    int rc;

    if ((rc = arg_page(d, r, "", &domid, &gfn)) < 0 ||
        (rc = mv_proto_arg_u64(r->args, "count", true, &count, r->why)) < 0)
        return rc;
    return library_status(r, mv_share_exclude(d->host, domid, gfn, count));
}

static int run_share_settle(struct daemon *d, struct request *r)
{
    uint32_t domid;
    int64_t settled;
    int rc = arg_domain(d->host, r, &domid);

    if (rc < 0)
        return rc;
    settled = mv_share_settle(d->host, domid);
    if (settled < 0)
        return library_status(r, settled);
    reply_u64(r, "settled", (uint64_t)settled);
    return 0;
}

static int run_share_scan(struct daemon *d, struct request *r)
{
    struct mv_scan_result result;
    uint64_t max_pages = 0;
    int rc;

    if ((rc = mv_proto_arg_u64(r->args, "max_pages", false, &max_pages, r->why)) < 0 ||
        (rc = library_status(r, mv_share_scan(d->host, max_pages, &result))) < 0)
        return rc;
    json_object_object_add(r->reply, "scan", mv_proto_scan_result_json(&result));
    return 0;
}

static int run_scanner_start(struct daemon *d, struct request *r)
{
    struct mv_scanner_config config;
    int rc;

    mv_scanner_config_init(&config);
    if ((rc = mv_proto_arg_u64(r->args, "rate", false, &config.pages_per_second,
                               r->why)) < 0 ||
        (rc = arg_unsigned(r, r->args, "cpu_percent", &config.cpu_percent)) < 0 ||
        (rc = arg_unsigned(r, r->args, "max_vmas", &config.max_vmas)) < 0)
        return rc;
    return library_status(r, mv_scanner_start(d->host, &config));
}

static int run_scanner_stop(struct daemon *d, struct request *r)
{
    return library_status(r, mv_scanner_stop(d->host));
}

static int run_share_stats(struct daemon *d, struct request *r)
{
    struct mv_share_stats stats;
    int rc = library_status(r, mv_share_stats(d->host, &stats));

    if (rc < 0)
        return rc;
    /* The library keeps "sharing stopped" from its last attempt to map until
     * the next one: with every domain gone there is nothing to share and
     * nothing is stopped, though no attempt came to say so. */
    if (stats.sharing_stopped && mv_domain_list(d->host, NULL, 0) == 0) {
        stats.sharing_stopped = 0;
        stats.stop_reason[0] = 0;
    }
    json_object_object_add(r->reply, "share", mv_proto_share_stats_json(&stats));
    return reply_domains(d, r, false);
}

static int run_share_audit(struct daemon *d, struct request *r)
{
    return library_status(r, mv_share_audit(d->host));
}

/* ------------------------------------------------------------------------ */
/* Transcendent memory: the guest interface for tests and tools, tmem-list,  */
/* host paging.  Self-contained: only these functions and their table        */
/* entries know tmem.                                                        */

/* The page tmem-put puts for `seed`: text-like bytes, as a page cache holds
 * (0: a zero page).  tmem-get compares against the same. */
static void tmem_seed_page(uint64_t seed, uint8_t *page)
{
    static const char *const words[] = { "memory ", "page ", "domain ", "the ", "tmem ",
                                         "kernel ", "0x7f3a ", "ret\n", "mov ", "\t" };
    uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;

    memset(page, 0, MV_PAGE_SIZE);
    for (unsigned i = 0; seed && i < MV_PAGE_SIZE;) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        for (const char *w = words[x % 10]; *w && i < MV_PAGE_SIZE; w++)
            page[i++] = (uint8_t)*w;
    }
    if (seed)
        memcpy(page, &seed, sizeof(seed));
}

/* "uuid": 32 hex digits, dashes anywhere. */
static int tmem_arg_uuid(struct request *r, bool required, uint8_t uuid[16], bool *given)
{
    const char *text = NULL;
    unsigned n = 0;
    int rc = mv_proto_arg_string(r->args, "uuid", required, &text, r->why);

    *given = false;
    if (rc < 0 || !text)
        return rc;
    memset(uuid, 0, 16);
    for (const char *c = text; *c; c++) {
        int v = *c >= '0' && *c <= '9' ? *c - '0'
              : *c >= 'a' && *c <= 'f' ? *c - 'a' + 10
              : *c >= 'A' && *c <= 'F' ? *c - 'A' + 10 : -1;

        if (*c == '-')
            continue;
        if (v < 0 || n == 32)
            return request_fail(r, -EINVAL, "uuid '%s' is not 32 hex digits", text);
        uuid[n / 2] |= (uint8_t)(n % 2 ? v : v << 4);
        n++;
    }
    if (n != 32)
        return request_fail(r, -EINVAL, "uuid '%s' is not 32 hex digits", text);
    *given = true;
    return 0;
}

/* "object": N or N:N:N. */
static int tmem_arg_object(struct request *r, uint64_t oid[3])
{
    const char *text;
    char part[32];
    int rc = mv_proto_arg_string(r->args, "object", true, &text, r->why);

    if (rc < 0)
        return rc;
    oid[0] = oid[1] = oid[2] = 0;
    for (int i = 0; i < 3; i++) {
        size_t len = strcspn(text, ":");

        if (len == 0 || len >= sizeof(part))
            return request_fail(r, -EINVAL, "object '%s' is not N or N:N:N", text);
        memcpy(part, text, len);
        part[len] = 0;
        if (mv_proto_parse_u64(part, &oid[i]) < 0)
            return request_fail(r, -EINVAL, "object part '%s' is not a number", part);
        text += len;
        if (!*text)
            return 0;
        text++;
    }
    return request_fail(r, -EINVAL, "object has more than three parts");
}

/* domain, pool, object and (when `index_needed`) index. */
static int tmem_arg_key(struct daemon *d, struct request *r, bool index_needed,
                        uint32_t *domid, uint32_t *pool, uint64_t oid[3], uint64_t *index)
{
    uint64_t p;
    int rc;

    if ((rc = arg_domain(d->host, r, domid)) < 0 ||
        (rc = mv_proto_arg_u64(r->args, "pool", true, &p, r->why)) < 0)
        return rc;
    if (p > UINT32_MAX)
        return request_fail(r, -EINVAL, "pool %" PRIu64 " is out of range", p);
    *pool = (uint32_t)p;
    if (!oid)
        return 0;
    if ((rc = tmem_arg_object(r, oid)) < 0 ||
        (rc = mv_proto_arg_u64(r->args, "index", index_needed, index, r->why)) < 0)
        return rc;
    if (*index > UINT32_MAX)
        return request_fail(r, -EINVAL, "index %" PRIu64 " is out of range", *index);
    return 0;
}

static struct json_object *tmem_counts_json(const struct mv_tmem_counts *c)
{
    struct json_object *o = json_object_new_object();

    json_object_object_add(o, "puts", json_object_new_uint64(c->puts));
    json_object_object_add(o, "puts_stored", json_object_new_uint64(c->puts_stored));
    json_object_object_add(o, "gets", json_object_new_uint64(c->gets));
    json_object_object_add(o, "found_gets", json_object_new_uint64(c->found_gets));
    json_object_object_add(o, "flushes", json_object_new_uint64(c->flushes));
    json_object_object_add(o, "flush_objects", json_object_new_uint64(c->flush_objects));
    json_object_object_add(o, "evictions", json_object_new_uint64(c->evictions));
    json_object_object_add(o, "poor_compressions",
                           json_object_new_uint64(c->poor_compressions));
    json_object_object_add(o, "dedup_hits", json_object_new_uint64(c->dedup_hits));
    json_object_object_add(o, "same_filled", json_object_new_uint64(c->same_filled));
    json_object_object_add(o, "pages", json_object_new_uint64(c->pages));
    json_object_object_add(o, "marker_pages", json_object_new_uint64(c->marker_pages));
    json_object_object_add(o, "lz4_pages", json_object_new_uint64(c->lz4_pages));
    json_object_object_add(o, "zstd_pages", json_object_new_uint64(c->zstd_pages));
    json_object_object_add(o, "stored_bytes", json_object_new_uint64(c->stored_bytes));
    json_object_object_add(o, "ratio", json_object_new_double(mv_tmem_ratio(c)));
    return o;
}

static int run_tmem_list(struct daemon *d, struct request *r)
{
    struct json_object *host = json_object_new_object(), *pools = json_object_new_array(),
                       *clients = json_object_new_array();
    struct mv_tmem_pool_info *pi = NULL;
    struct mv_tmem_client_info *ci = NULL;
    struct mv_tmem_stats s;
    uint32_t only = UINT32_MAX;
    bool one = has_arg(r, "domain");
    int np = 0, nc = 0, rc;

    json_object_object_add(r->reply, "tmem", host);
    json_object_object_add(r->reply, "pools", pools);
    json_object_object_add(r->reply, "clients", clients);
    if ((one && (rc = arg_domain(d->host, r, &only)) < 0) ||
        (rc = library_status(r, mv_tmem_stats(d->host, &s))) < 0)
        return rc;
    /* Lists grow between the count and the copy: ask again until they fit. */
    for (int room = 16;; room *= 2) {
        free(pi);
        free(ci);
        pi = calloc((size_t)room, sizeof(*pi));
        ci = calloc((size_t)room, sizeof(*ci));
        if (!pi || !ci) {
            free(pi);
            free(ci);
            return request_fail(r, -ENOMEM, "out of memory");
        }
        np = mv_tmem_pool_list(d->host, pi, (size_t)room);
        nc = mv_tmem_client_list(d->host, ci, (size_t)room);
        if (np < 0 || nc < 0) {
            free(pi);
            free(ci);
            return library_status(r, np < 0 ? np : nc);
        }
        if (np <= room && nc <= room)
            break;
    }
    json_object_object_add(host, "frames", json_object_new_uint64(s.frames));
    json_object_object_add(host, "used_frames", json_object_new_uint64(s.used_frames));
    json_object_object_add(host, "spare_frames", json_object_new_uint64(s.spare_frames));
    json_object_object_add(host, "freeable_frames", json_object_new_uint64(s.freeable_frames));
    json_object_object_add(host, "store", json_object_new_string(mv_tmem_store_name(s.store)));
    json_object_object_add(host, "store_mapped_ns", json_object_new_uint64(s.store_mapped_ns));
    json_object_object_add(host, "store_copied_ns", json_object_new_uint64(s.store_copied_ns));
    json_object_object_add(host, "store_read_aheads", json_object_new_uint64(s.store_read_aheads));
    json_object_object_add(host, "store_read_ahead_hits",
                           json_object_new_uint64(s.store_read_ahead_hits));
    json_object_object_add(host, "pools", json_object_new_uint64(s.pools));
    json_object_object_add(host, "evictions", json_object_new_uint64(s.evictions));
    json_object_object_add(host, "relinquished", json_object_new_uint64(s.relinquished));
    json_object_object_add(host, "compactions", json_object_new_uint64(s.compactions));
    json_object_object_add(host, "budget_short_calls",
                           json_object_new_uint64(s.budget_short_calls));
    json_object_object_add(host, "budget_short_freed",
                           json_object_new_uint64(s.budget_short_freed));
    json_object_object_add(host, "repaid", json_object_new_uint64(s.repaid));
    json_object_object_add(host, "paged_out", json_object_new_uint64(s.paged_out));
    json_object_object_add(host, "page_outs", json_object_new_uint64(s.page_outs));
    json_object_object_add(host, "page_ins", json_object_new_uint64(s.page_ins));
    json_object_object_add(host, "metadata_bytes", json_object_new_uint64(s.metadata_bytes));
    json_object_object_add(host, "counts", tmem_counts_json(&s.counts));
    for (int i = 0; i < np; i++) {
        struct json_object *o;
        char uuid[33];

        if (one && pi[i].owner != only)
            continue;
        o = json_object_new_object();
        for (int k = 0; k < 16; k++)
            snprintf(uuid + 2 * k, 3, "%02x", pi[i].uuid[k]);
        json_object_object_add(o, "pool", json_object_new_uint64(pi[i].pool));
        json_object_object_add(o, "owner", pi[i].owner == UINT32_MAX
                                   ? json_object_new_string("host")
                                   : json_object_new_uint64(pi[i].owner));
        json_object_object_add(o, "kind", json_object_new_string(
            pi[i].flags & MV_TMEM_PERSISTENT ? "persistent" : "ephemeral"));
        json_object_object_add(o, "sharing", json_object_new_string(
            pi[i].flags & MV_TMEM_SHARED ? "shared" : "private"));
        json_object_object_add(o, "codec", json_object_new_string(
            pi[i].flags & MV_TMEM_ZSTD ? "zstd" : "lz4"));
        json_object_object_add(o, "dedup", json_object_new_boolean(
            (pi[i].flags & MV_TMEM_DEDUP) != 0));
        json_object_object_add(o, "members", json_object_new_uint64(pi[i].members));
        if (pi[i].flags & MV_TMEM_SHARED)
            json_object_object_add(o, "uuid", json_object_new_string(uuid));
        json_object_object_add(o, "counts", tmem_counts_json(&pi[i].counts));
        json_object_array_add(pools, o);
    }
    for (int i = 0; i < nc; i++) {
        struct json_object *o;

        if (one && ci[i].domid != only)
            continue;
        o = json_object_new_object();
        json_object_object_add(o, "domid", ci[i].domid == UINT32_MAX
                                   ? json_object_new_string("host")
                                   : json_object_new_uint64(ci[i].domid));
        json_object_object_add(o, "weight", json_object_new_uint64(ci[i].weight));
        json_object_object_add(o, "quota_pages", json_object_new_uint64(ci[i].quota_pages));
        json_object_object_add(o, "persistent_pages",
                               json_object_new_uint64(ci[i].persistent_pages));
        json_object_object_add(o, "ephemeral_pages",
                               json_object_new_uint64(ci[i].ephemeral_pages));
        json_object_object_add(o, "collateral_pages",
                               json_object_new_uint64(ci[i].collateral_pages));
        json_object_object_add(o, "repaid_pages", json_object_new_uint64(ci[i].repaid_pages));
        json_object_object_add(o, "counts", tmem_counts_json(&ci[i].counts));
        json_object_array_add(clients, o);
    }
    free(pi);
    free(ci);
    return 0;
}

static int run_tmem_authorize(struct daemon *d, struct request *r)
{
    uint8_t uuid[16];
    uint32_t domid;
    bool given;
    int rc;

    if ((rc = arg_domain(d->host, r, &domid)) < 0 ||
        (rc = tmem_arg_uuid(r, true, uuid, &given)) < 0)
        return rc;
    return library_status(r, mv_tmem_authorize(d->host, domid, uuid));
}

static int run_tmem_new_pool(struct daemon *d, struct request *r)
{
    const char *kind = NULL, *sharing = "private", *codec = "lz4", *dedup = "off";
    unsigned flags = 0;
    uint8_t uuid[16];
    uint32_t domid;
    bool given;
    int rc;

    if ((rc = arg_domain(d->host, r, &domid)) < 0 ||
        (rc = mv_proto_arg_string(r->args, "kind", true, &kind, r->why)) < 0 ||
        (rc = mv_proto_arg_string(r->args, "sharing", false, &sharing, r->why)) < 0 ||
        (rc = mv_proto_arg_string(r->args, "codec", false, &codec, r->why)) < 0 ||
        (rc = mv_proto_arg_string(r->args, "dedup", false, &dedup, r->why)) < 0 ||
        (rc = tmem_arg_uuid(r, false, uuid, &given)) < 0)
        return rc;
    flags |= strcmp(kind, "persistent") == 0 ? MV_TMEM_PERSISTENT : 0;
    flags |= strcmp(sharing, "shared") == 0 ? MV_TMEM_SHARED : 0;
    flags |= strcmp(codec, "zstd") == 0 ? MV_TMEM_ZSTD : 0;
    flags |= strcmp(dedup, "on") == 0 ? MV_TMEM_DEDUP : 0;
    rc = mv_tmem_new_pool(d->host, domid, flags, given ? uuid : NULL);
    if (rc < 0)
        return library_status(r, rc);
    reply_u64(r, "pool", (uint64_t)rc);
    return 0;
}

static int run_tmem_destroy_pool(struct daemon *d, struct request *r)
{
    uint32_t domid = 0, pool = 0;
    int rc = tmem_arg_key(d, r, false, &domid, &pool, NULL, NULL);

    return rc < 0 ? rc : library_status(r, mv_tmem_destroy_pool(d->host, domid, pool));
}

static int run_tmem_put(struct daemon *d, struct request *r)
{
    uint64_t oid[3], index = 0, seed = 0, size = MV_PAGE_SIZE;
    uint8_t page[2 * MV_PAGE_SIZE];
    uint32_t domid = 0, pool = 0;
    int rc;

    if ((rc = tmem_arg_key(d, r, true, &domid, &pool, oid, &index)) < 0 ||
        (rc = mv_proto_arg_u64(r->args, "seed", true, &seed, r->why)) < 0 ||
        (rc = mv_proto_arg_u64(r->args, "size", false, &size, r->why)) < 0)
        return rc;
    tmem_seed_page(seed, page);
    /* A size above two pages is refused by the library all the same. */
    rc = mv_tmem_put_page(d->host, domid, pool, oid, (uint32_t)index, page,
                          size > sizeof(page) ? sizeof(page) + 1 : (size_t)size);
    if (rc < 0)
        return library_status(r, rc);
    json_object_object_add(r->reply, "stored", json_object_new_boolean(rc == 1));
    return 0;
}

static int run_tmem_get(struct daemon *d, struct request *r)
{
    uint64_t oid[3], index = 0, seed = 0;
    uint8_t page[MV_PAGE_SIZE], want[MV_PAGE_SIZE];
    uint32_t domid = 0, pool = 0;
    int rc;

    if ((rc = tmem_arg_key(d, r, true, &domid, &pool, oid, &index)) < 0 ||
        (rc = mv_proto_arg_u64(r->args, "seed", false, &seed, r->why)) < 0)
        return rc;
    rc = mv_tmem_get_page(d->host, domid, pool, oid, (uint32_t)index, page, sizeof(page));
    if (rc < 0)
        return library_status(r, rc);
    json_object_object_add(r->reply, "found", json_object_new_boolean(rc == 1));
    if (rc == 1 && has_arg(r, "seed")) {
        tmem_seed_page(seed, want);
        json_object_object_add(r->reply, "matches",
                               json_object_new_boolean(memcmp(page, want, sizeof(page)) == 0));
    }
    return 0;
}

static int run_tmem_flush(struct daemon *d, struct request *r)
{
    uint64_t oid[3], index = 0;
    uint32_t domid = 0, pool = 0;
    int64_t n;
    int rc;

    if ((rc = tmem_arg_key(d, r, false, &domid, &pool, oid, &index)) < 0)
        return rc;
    n = has_arg(r, "index") ? mv_tmem_flush_page(d->host, domid, pool, oid, (uint32_t)index)
                            : mv_tmem_flush_object(d->host, domid, pool, oid);
    if (n < 0)
        return library_status(r, n);
    reply_u64(r, "flushed", (uint64_t)n);
    return 0;
}

static int run_tmem_relinquish(struct daemon *d, struct request *r)
{
    uint64_t pages, done = 0;
    int rc = mv_proto_arg_u64(r->args, "pages", true, &pages, r->why);

    if (rc < 0)
        return rc;
    /* Spare frames first, then one frame at a time, evicting. */
    done = (uint64_t)mv_tmem_relinquish_pages(d->host, pages);
    while (done < pages && mv_tmem_relinquish_page(d->host) == 1)
        done++;
    reply_u64(r, "relinquished", done);
    return 0;
}

static int run_tmem_relinquish_block(struct daemon *d, struct request *r)
{
    struct mv_tmem_stats before, after;
    uint64_t order;
    int rc = mv_proto_arg_u64(r->args, "order", true, &order, r->why);

    if (rc < 0)
        return rc;
    if ((rc = mv_tmem_stats(d->host, &before)) < 0 ||
        (rc = mv_tmem_relinquish_pageblock(d->host, (unsigned)order)) < 0 ||
        (rc = mv_tmem_stats(d->host, &after)) < 0)
        return library_status(r, rc);
    reply_u64(r, "relinquished", after.relinquished - before.relinquished);
    reply_u64(r, "evictions", after.evictions - before.evictions);
    return 0;
}

static int run_page_out(struct daemon *d, struct request *r)
{
    uint64_t pages;
    uint32_t domid;
    int64_t n;
    int rc;

    if ((rc = arg_domain(d->host, r, &domid)) < 0 ||
        (rc = mv_proto_arg_u64(r->args, "pages", true, &pages, r->why)) < 0)
        return rc;
    n = mv_tmem_page_out(d->host, domid, pages);
    if (n < 0)
        return library_status(r, n);
    reply_u64(r, "paged", (uint64_t)n);
    return 0;
}

static int run_shutdown(struct daemon *d, struct request *r)
{
    (void)r;
    daemon_log(MV_LOG_INFO, "shutdown requested");
    d->stopping = true;
    return 0;
}

/*
 * Test commands (--test-commands): test-hold holds a worker until a
 * test-release, or until the daemon stops, so a test can keep a long call
 * running for exactly as long as it needs; it logs "test-hold: holding"
 * once it holds.  With "stubborn": 1 it does not give up when the daemon
 * stops, like a library call that cannot be interrupted.  test-release
 * releases every hold and replies how many.
 */
static int run_test_hold(struct daemon *d, struct request *r)
{
    bool released;
    unsigned generation;
    uint64_t stubborn = 0;
    int rc = mv_proto_arg_u64(r->args, "stubborn", false, &stubborn, r->why);

    if (rc < 0)
        return rc;
    pthread_mutex_lock(&d->jobs_lock);
    generation = d->hold_generation;
    d->holders++;
    daemon_log(MV_LOG_INFO, "test-hold: holding a worker until test-release");
    while (generation == d->hold_generation && (stubborn || !d->workers_stop))
        pthread_cond_wait(&d->hold_cond, &d->jobs_lock);
    d->holders--;
    released = generation != d->hold_generation;
    pthread_mutex_unlock(&d->jobs_lock);
    if (!released)
        return request_fail(r, -ECANCELED, "memvisord is stopping");
    return 0;
}

static int run_test_release(struct daemon *d, struct request *r)
{
    unsigned holders;

    pthread_mutex_lock(&d->jobs_lock);
    holders = d->holders;
    d->hold_generation++;
    pthread_cond_broadcast(&d->hold_cond);
    pthread_mutex_unlock(&d->jobs_lock);
    reply_u64(r, "released", holders);
    return 0;
}

static int run_hello(struct daemon *d, struct request *r);

enum command_flags {
    ON_LOOP = 1,                   /* runs on the event loop (touches its state) */
};

/*
 * The handler of each command of the schema (schema.c), by its wire name:
 * the schema says what a request may hold and checks it before the handler
 * runs.  Every command but ON_LOOP ones runs on a worker thread: any
 * library call may wait on a domain lock a long call holds (stats waits for
 * a verify of the same domain), so none runs on the loop.  An alias of the
 * schema (info) runs the handler of the command it names.
 */
/* ------------------------------------------------------------------------ */
/* Snapshot VMs: Firecracker's page-fault-handler hand-over                  */

/* Wait for the VMM on the entry's socket, then serve it. */
static void *fc_wait(void *arg)
{
    struct fc_entry *e = arg;
    struct mv_fc_handover ho;
    char why[256] = "";
    int rc = -ETIMEDOUT;

    while (rc == -ETIMEDOUT && !atomic_load(&e->stop))
        rc = mv_fc_receive(e->listen_fd, 200, &ho, why, sizeof(why));
    if (rc == 0) {
        mv_fc *vm;

        rc = mv_fc_serve(e->daemon->host, &e->config, ho.uffd, ho.pid, ho.regions,
                         ho.count, &vm);
        free(ho.regions);
        pthread_mutex_lock(&e->daemon->fc_lock);
        if (rc == 0)
            e->vm = vm;
        else
            snprintf(e->why, sizeof(e->why), "%s", mv_last_error());
        pthread_mutex_unlock(&e->daemon->fc_lock);
    } else if (!atomic_load(&e->stop)) {
        pthread_mutex_lock(&e->daemon->fc_lock);
        snprintf(e->why, sizeof(e->why), "%s", why);
        pthread_mutex_unlock(&e->daemon->fc_lock);
    }
    if (rc < 0 && !atomic_load(&e->stop))
        daemon_log(MV_LOG_WARN, "%s: no hand-over: %s", e->name, e->why);
    else if (rc == 0)
        daemon_log(MV_LOG_INFO, "%s: serving VMM %d", e->name, ho.pid);
    return NULL;
}

static struct fc_entry *fc_find(struct daemon *d, const char *name)
{
    for (struct fc_entry *e = d->fcs; e; e = e->next)
        if (strcmp(e->name, name) == 0)
            return e;
    return NULL;
}

/* Stop an entry that is out of the list: its thread, its VM, its socket. */
static void fc_entry_free(struct fc_entry *e)
{
    atomic_store(&e->stop, true);
    pthread_join(e->thread, NULL);
    if (e->vm)
        mv_fc_destroy(e->vm);
    close(e->listen_fd);
    unlink(e->socket_path);
    free(e);
}

static int run_fc_listen(struct daemon *d, struct request *r)
{
    const char *name, *path, *mem_file = NULL, *policy = NULL;
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    struct fc_entry *e;
    int rc;

    if ((rc = mv_proto_arg_string(r->args, "vm", true, &name, r->why)) < 0 ||
        (rc = mv_proto_arg_string(r->args, "socket", true, &path, r->why)) < 0 ||
        (rc = mv_proto_arg_string(r->args, "mem_file", false, &mem_file, r->why)) < 0 ||
        (rc = mv_proto_arg_string(r->args, "policy", false, &policy, r->why)) < 0)
        return rc;
    if (!name[0] || strlen(name) >= MV_NAME_MAX)
        return request_fail(r, -EINVAL, "a VM name of 1 to %d bytes", MV_NAME_MAX - 1);
    if (path[0] != '/' || strlen(path) >= sizeof(sa.sun_path))
        return request_fail(r, -EINVAL, "the socket must be an absolute path shorter than "
                            "%zu bytes", sizeof(sa.sun_path));
    if (mem_file && (mem_file[0] != '/' || strlen(mem_file) >= PATH_MAX))
        return request_fail(r, -EINVAL, "the memory file must be an absolute path");
    if (mem_file && access(mem_file, R_OK) != 0)
        return request_fail(r, -errno, "cannot read the memory file %s: %s", mem_file,
                            strerror(errno));
    e = calloc(1, sizeof(*e));
    if (!e)
        return request_fail(r, -ENOMEM, "no memory");
    snprintf(e->name, sizeof(e->name), "%s", name);
    snprintf(e->config.name, sizeof(e->config.name), "%s", name);
    snprintf(e->socket_path, sizeof(e->socket_path), "%s", path);
    if (mem_file) {
        snprintf(e->mem_file, sizeof(e->mem_file), "%s", mem_file);
        e->config.mem_file = e->mem_file;
    }
    e->config.pod_policy = MV_POD_WAIT;
    if (policy && mv_proto_policy_parse(policy, &e->config.pod_policy) < 0) {
        free(e);
        return request_fail(r, -EINVAL, "unknown policy '%s' (wait or crash)", policy);
    }
    if ((rc = mv_proto_arg_size(r->args, "target", false, &e->config.target_bytes,
                                r->why)) < 0) {
        free(e);
        return rc;
    }
    e->daemon = d;
    memcpy(sa.sun_path, path, strlen(path) + 1);
    e->listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    pthread_mutex_lock(&d->fc_lock);
    if (fc_find(d, name))
        rc = request_fail(r, -EEXIST, "a snapshot VM named '%s' exists", name);
    else if (e->listen_fd < 0 || bind(e->listen_fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
        rc = request_fail(r, -errno, "cannot create the socket %s: %s", path,
                          strerror(errno));
    else if (chmod(path, 0600) < 0 || listen(e->listen_fd, 1) < 0 ||
             (rc = -pthread_create(&e->thread, NULL, fc_wait, e)) < 0) {
        rc = request_fail(r, rc < 0 ? rc : -errno, "cannot listen on %s: %s", path,
                          strerror(rc < 0 ? -rc : errno));
        unlink(path);
    }
    if (rc == 0) {
        e->next = d->fcs;
        d->fcs = e;
    }
    pthread_mutex_unlock(&d->fc_lock);
    if (rc < 0) {
        if (e->listen_fd >= 0)
            close(e->listen_fd);
        free(e);
        return rc;
    }
    json_object_object_add(r->reply, "vm", json_object_new_string(name));
    json_object_object_add(r->reply, "socket", json_object_new_string(path));
    return 0;
}

static const char *const fc_state_names[] = { "running", "crashed", "exited" };

static int run_fc_list(struct daemon *d, struct request *r)
{
    struct json_object *list = json_object_new_array();

    pthread_mutex_lock(&d->fc_lock);
    for (struct fc_entry *e = d->fcs; e; e = e->next) {
        struct json_object *o = json_object_new_object();
        struct mv_fc_info info;

        json_object_object_add(o, "vm", json_object_new_string(e->name));
        json_object_object_add(o, "socket", json_object_new_string(e->socket_path));
        if (e->vm && mv_fc_info(e->vm, &info) == 0) {
            json_object_object_add(o, "state",
                                   json_object_new_string(fc_state_names[info.state]));
            json_object_object_add(o, "reason", json_object_new_string(info.reason));
            json_object_object_add(o, "pid", json_object_new_int(info.pid));
#define FC_FIELD(f) json_object_object_add(o, #f, json_object_new_uint64(info.f))
            FC_FIELD(pages);
            FC_FIELD(target_pages);
            FC_FIELD(populated_pages);
            FC_FIELD(loaded_pages);
            FC_FIELD(zero_filled_pages);
            FC_FIELD(removed_pages);
            FC_FIELD(faults);
            FC_FIELD(write_faults);
            FC_FIELD(pod_waits);
            FC_FIELD(logdirty_rounds);
#undef FC_FIELD
            json_object_object_add(o, "logging", json_object_new_boolean(info.logging));
        } else {
            json_object_object_add(o, "state", json_object_new_string(
                                                   e->why[0] ? "failed" : "listening"));
            json_object_object_add(o, "reason", json_object_new_string(e->why));
        }
        json_object_array_add(list, o);
    }
    pthread_mutex_unlock(&d->fc_lock);
    json_object_object_add(r->reply, "vms", list);
    return 0;
}

/* The VM being served under `vm`, or a failed request. */
static int arg_fc(struct daemon *d, struct request *r, mv_fc **vm)
{
    const char *name;
    struct fc_entry *e;
    int rc = mv_proto_arg_string(r->args, "vm", true, &name, r->why);

    if (rc < 0)
        return rc;
    pthread_mutex_lock(&d->fc_lock);
    e = fc_find(d, name);
    *vm = e ? e->vm : NULL;
    pthread_mutex_unlock(&d->fc_lock);
    if (!e)
        return request_fail(r, -ESRCH, "no snapshot VM named '%s'", name);
    if (!*vm)
        return request_fail(r, -EAGAIN, "'%s' has no VMM yet: %s", name,
                            "it is waiting for the hand-over");
    return 0;
}

static int run_fc_logdirty(struct daemon *d, struct request *r)
{
    const char *action;
    struct mv_fc_info info;
    uint64_t *bits;
    int64_t n;
    mv_fc *vm;
    int rc;

    if ((rc = arg_fc(d, r, &vm)) < 0 ||
        (rc = mv_proto_arg_string(r->args, "action", true, &action, r->why)) < 0)
        return rc;
    if (strcmp(action, "enable") == 0)
        return library_status(r, mv_fc_logdirty_enable(vm));
    if (strcmp(action, "disable") == 0)
        return library_status(r, mv_fc_logdirty_disable(vm));
    if ((rc = library_status(r, mv_fc_info(vm, &info))) < 0)
        return rc;
    bits = calloc((info.pages + 63) / 64, sizeof(*bits));
    if (!bits)
        return request_fail(r, -ENOMEM, "no memory for the dirty bitmap");
    n = mv_fc_logdirty_clean(vm, bits, (info.pages + 63) / 64);
    free(bits);
    if (n < 0)
        return library_status(r, n);
    reply_u64(r, "dirty_pages", (uint64_t)n);
    return 0;
}

static int run_fc_stop(struct daemon *d, struct request *r)
{
    const char *name;
    struct fc_entry *e = NULL;
    int rc = mv_proto_arg_string(r->args, "vm", true, &name, r->why);

    if (rc < 0)
        return rc;
    pthread_mutex_lock(&d->fc_lock);
    for (struct fc_entry **at = &d->fcs; *at; at = &(*at)->next)
        if (strcmp((*at)->name, name) == 0) {
            e = *at;
            *at = e->next;
            break;
        }
    pthread_mutex_unlock(&d->fc_lock);
    if (!e)
        return request_fail(r, -ESRCH, "no snapshot VM named '%s'", name);
    fc_entry_free(e);
    return 0;
}

struct command {
    const char *name;
    int (*run)(struct daemon *d, struct request *r);
    unsigned flags;
};

static const struct command commands[] = {
    { "hello", run_hello, ON_LOOP },
    { "create", run_create, 0 },
    { "destroy", run_destroy, 0 },
    { "console", run_console, 0 },
    { "fc-listen", run_fc_listen, 0 },
    { "fc-list", run_fc_list, 0 },
    { "fc-logdirty", run_fc_logdirty, 0 },
    { "fc-stop", run_fc_stop, 0 },
    { "qmp", run_qmp, 0 },
    { "list", run_list, 0 },
    { "stats", run_stats, 0 },
    { "pause", run_pause, 0 },
    { "unpause", run_unpause, 0 },
    { "set-target", run_set_target, 0 },
    { "balloon", run_balloon, 0 },
    { "reclaim", run_reclaim, 0 },
    { "workload-start", run_workload_start, 0 },
    { "workload-status", run_workload_status, 0 },
    { "workload-stop", run_workload_stop, 0 },
    { "verify", run_verify, 0 },
    { "audit", run_audit, 0 },
    { "logdirty", run_logdirty, 0 },
    { "clone", run_clone, 0 },
    { "share-nominate", run_share_nominate, 0 },
    { "share-pages", run_share_pages, 0 },
    { "share-add-to-physmap", run_share_add_to_physmap, 0 },
    { "share-unshare", run_share_unshare, 0 },
    { "share-make", run_share_make, 0 },
    { "share-hint", run_share_hint, 0 },
    { "share-exclude", run_share_exclude, 0 },
    { "share-settle", run_share_settle, 0 },
    { "share-scan", run_share_scan, 0 },
    { "scanner-start", run_scanner_start, 0 },
    { "scanner-stop", run_scanner_stop, 0 },
    { "share-stats", run_share_stats, 0 },
    { "share-audit", run_share_audit, 0 },
    { "tmem-list", run_tmem_list, 0 },
    { "tmem-authorize", run_tmem_authorize, 0 },
    { "tmem-new-pool", run_tmem_new_pool, 0 },
    { "tmem-destroy-pool", run_tmem_destroy_pool, 0 },
    { "tmem-put", run_tmem_put, 0 },
    { "tmem-get", run_tmem_get, 0 },
    { "tmem-flush", run_tmem_flush, 0 },
    { "tmem-relinquish", run_tmem_relinquish, 0 },
    { "tmem-relinquish-block", run_tmem_relinquish_block, 0 },
    { "page-out", run_page_out, 0 },
    { "doctor", run_doctor, 0 },
    { "shutdown", run_shutdown, ON_LOOP },
    { "test-hold", run_test_hold, 0 },
    { "test-release", run_test_release, 0 },
};

/* The handler of a schema command (of the command an alias names), or
 * NULL when this daemon has none. */
static const struct command *command_handler(const struct mv_schema_command *entry)
{
    const char *name = mv_schema_target(entry)->name;

    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        if (strcmp(commands[i].name, name) == 0)
            return &commands[i];
    return NULL;
}

/* Whether this daemon serves `entry`: it has a handler, and a test command
 * only with --test-commands. */
static bool command_served(const struct daemon *d, const struct mv_schema_command *entry)
{
    if ((entry->flags & MV_SCHEMA_TEST_ONLY) && !d->test_commands)
        return false;
    return command_handler(entry) != NULL;
}

/*
 * hello: the versions of both ends.  Any client is answered (a client of
 * another major version is told ours and decides); the commands listed are
 * those this daemon serves, in the schema's order.
 */
static int run_hello(struct daemon *d, struct request *r)
{
    struct json_object *list = json_object_new_array();
    const char *protocol, *client = "a client";
    unsigned major, minor;
    char library[32];
    int rc;

    if ((rc = mv_proto_arg_string(r->args, "protocol", true, &protocol, r->why)) < 0 ||
        (rc = mv_proto_arg_string(r->args, "client", false, &client, r->why)) < 0) {
        json_object_put(list);
        return rc;
    }
    if (mv_proto_parse_version(protocol, &major, &minor) < 0) {
        json_object_put(list);
        return request_fail(r, -EINVAL, "protocol '%s' is not a version MAJOR.MINOR",
                            protocol);
    }
    daemon_log(major == MV_PROTO_VERSION_MAJOR ? MV_LOG_DEBUG : MV_LOG_WARN,
               "hello from %.64s, protocol %u.%u (memvisord speaks %s)", client, major,
               minor, MV_PROTO_VERSION);
    snprintf(library, sizeof(library), "%d.%d.%d", MV_VERSION_MAJOR, MV_VERSION_MINOR,
             MV_VERSION_PATCH);
    json_object_object_add(r->reply, "protocol", json_object_new_string(MV_PROTO_VERSION));
    json_object_object_add(r->reply, "library", json_object_new_string(library));
    json_object_object_add(r->reply, "daemon", json_object_new_string("memvisord"));
    for (size_t i = 0; i < mv_schema_command_count; i++)
        if (command_served(d, &mv_schema_commands[i]))
            json_object_array_add(list, json_object_new_string(mv_schema_commands[i].name));
    json_object_object_add(r->reply, "commands", list);
    return 0;
}

/* The command a request names, with its arguments checked against the
 * schema; r->reply is ready for its results. */
static int dispatch(struct daemon *d, struct request *r, const char **name,
                    const struct command **found)
{
    const struct mv_schema_command *entry;
    int rc = mv_proto_arg_string(r->args, "cmd", true, name, r->why);

    if (rc < 0)
        return rc;
    entry = mv_schema_find(*name);
    if (!entry || !command_served(d, entry))
        return request_fail(r, -EINVAL, "unknown command '%s'", *name);
    rc = mv_schema_check(entry, r->args, r->why);
    if (rc < 0)
        return rc;
    r->reply = mv_proto_reply_ok();
    *found = command_handler(entry);
    return 0;
}

/* The reply to a request that ran with outcome `rc`; frees the request. */
static struct json_object *request_reply(struct client *c, struct request *r,
                                         const char *name, int rc)
{
    struct json_object *reply;

    if (rc < 0) {
        json_object_put(r->reply);
        reply = mv_proto_reply_error(rc, r->why);
        daemon_log(MV_LOG_DEBUG, "client %u: %s: %s: %s", c->id, name, mv_strerror(rc),
                   r->why);
    } else {
        reply = r->reply;
        daemon_log(MV_LOG_DEBUG, "client %u: %s: ok", c->id, name);
    }
    r->reply = NULL;
    json_object_put(r->args);
    r->args = NULL;
    return reply;
}

/* ------------------------------------------------------------------------ */
/* Workers                                                                   */

static void *worker_main(void *opaque)
{
    struct daemon *d = opaque;

    pthread_mutex_lock(&d->jobs_lock);
    for (;;) {
        struct job *job;
        uint64_t one = 1;

        while (!d->queue_head && !d->workers_stop)
            pthread_cond_wait(&d->jobs_cond, &d->jobs_lock);
        job = d->queue_head;
        if (!job)
            break;
        d->queue_head = job->next;
        if (!d->queue_head)
            d->queue_tail = NULL;
        d->idle_workers--;
        pthread_mutex_unlock(&d->jobs_lock);

        job->rc = job->command->run(d, &job->r);

        pthread_mutex_lock(&d->jobs_lock);
        job->next = d->done;
        d->done = job;
        d->idle_workers++;
        if (write(d->done_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
            daemon_log(MV_LOG_ERROR, "cannot wake the event loop: %s", strerror(errno));
    }
    pthread_mutex_unlock(&d->jobs_lock);
    return NULL;
}

/* Queue a job, starting a worker when none is idle and fewer than
 * MAX_WORKERS run.  0, or -errno when no worker can run it. */
static int job_queue(struct daemon *d, struct job *job)
{
    int rc = 0;

    pthread_mutex_lock(&d->jobs_lock);
    if (d->idle_workers == 0 && d->worker_count < MAX_WORKERS) {
        rc = -pthread_create(&d->workers[d->worker_count], NULL, worker_main, d);
        if (rc == 0) {
            d->worker_count++;
            d->idle_workers++;
        } else if (d->worker_count > 0) {
            rc = 0;                /* the running ones will get to it */
        }
    }
    if (rc == 0) {
        job->next = NULL;
        if (d->queue_tail)
            d->queue_tail->next = job;
        else
            d->queue_head = job;
        d->queue_tail = job;
        pthread_cond_signal(&d->jobs_cond);
        d->jobs_in_flight++;
    }
    pthread_mutex_unlock(&d->jobs_lock);
    return rc;
}

/* The jobs the workers finished, oldest first. */
static struct job *jobs_take_done(struct daemon *d)
{
    struct job *done, *ordered = NULL;
    uint64_t count;

    if (read(d->done_fd, &count, sizeof(count)) < 0 && errno != EAGAIN)
        daemon_log(MV_LOG_WARN, "cannot read the workers' eventfd: %s", strerror(errno));
    pthread_mutex_lock(&d->jobs_lock);
    done = d->done;
    d->done = NULL;
    pthread_mutex_unlock(&d->jobs_lock);
    while (done) {
        struct job *next = done->next;

        done->next = ordered;
        ordered = done;
        done = next;
    }
    return ordered;
}

/* Stop the workers once the queue is empty, releasing test holds. */
static void workers_stop(struct daemon *d)
{
    pthread_mutex_lock(&d->jobs_lock);
    d->workers_stop = true;
    pthread_cond_broadcast(&d->jobs_cond);
    pthread_cond_broadcast(&d->hold_cond);
    pthread_mutex_unlock(&d->jobs_lock);
}

static void workers_join(struct daemon *d)
{
    workers_stop(d);
    for (unsigned i = 0; i < d->worker_count; i++)
        pthread_join(d->workers[i], NULL);
    d->worker_count = 0;
}

/* ------------------------------------------------------------------------ */
/* Clients                                                                   */

static bool client_pending(const struct client *c)
{
    return c->output_sent < c->output_length;
}

static int client_queue(struct client *c, struct json_object *reply)
{
    size_t length;
    char *line = mv_proto_encode_line(reply, &length);

    json_object_put(reply);
    if (!line)
        return -ENOMEM;
    if (c->output_length + length > c->output_capacity) {
        char *grown = realloc(c->output, c->output_length + length);

        if (!grown) {
            free(line);
            return -ENOMEM;
        }
        c->output = grown;
        c->output_capacity = c->output_length + length;
    }
    memcpy(c->output + c->output_length, line, length);
    c->output_length += length;
    free(line);
    return 0;
}

/* Send what the socket takes now.  0, or -errno when the client is gone. */
static int client_flush(struct client *c)
{
    while (client_pending(c)) {
        ssize_t n = send(c->fd, c->output + c->output_sent,
                         c->output_length - c->output_sent, MSG_NOSIGNAL);

        if (n < 0) {
            if (errno == EINTR)
                continue;
            return errno == EAGAIN ? 0 : -errno;
        }
        c->output_sent += (size_t)n;
    }
    c->output_length = c->output_sent = 0;
    return 0;
}

/*
 * Start answering one request line: a malformed one, or one of an ON_LOOP
 * command, is answered here; any other goes to a worker, and the client
 * waits (c->busy) until job_finish queues the reply.  Returns the reply to
 * queue now, or NULL when a worker has it.
 */
static struct json_object *request_start(struct daemon *d, struct client *c,
                                         const char *line, size_t length)
{
    const struct command *command = NULL;
    const char *name = "?";
    struct job *job = calloc(1, sizeof(*job));
    struct json_object *reply;
    struct request *r;
    int rc;

    if (!job) {
        struct request none = { 0 };

        snprintf(none.why, sizeof(none.why), "no memory for a request");
        return request_reply(c, &none, name, -ENOMEM);
    }
    r = &job->r;
    rc = mv_proto_parse_message(line, length, &r->args, r->why);
    if (rc == 0)
        rc = dispatch(d, r, &name, &command);
    if (rc == 0 && (command->flags & ON_LOOP)) {
        rc = command->run(d, r);
    } else if (rc == 0) {
        job->client = c;
        job->command = command;
        job->name = name;
        rc = job_queue(d, job);
        if (rc == 0) {
            c->busy = true;
            return NULL;
        }
        snprintf(r->why, sizeof(r->why), "cannot start a worker: %s", strerror(-rc));
    }
    reply = request_reply(c, r, name, rc);
    free(job);
    return reply;
}

/* Answer one complete line held: 1 when one was answered (or handed to a
 * worker), 0 when none is complete, -errno when the client is gone. */
static int client_answer_one(struct daemon *d, struct client *c)
{
    struct json_object *reply;
    char *line;
    size_t length;
    int rc;

    switch (mv_proto_reader_next(&c->input, &line, &length)) {
    case MV_PROTO_LINE:
        reply = request_start(d, c, line, length);
        if (!reply)
            return 1;
        rc = client_queue(c, reply);
        break;
    case MV_PROTO_OVERSIZED: {
        char why[MV_PROTO_DETAIL_MAX];

        snprintf(why, sizeof(why), "request line longer than %d bytes; skipped up "
                 "to its newline", MV_PROTO_MAX_REQUEST);
        daemon_log(MV_LOG_DEBUG, "client %u: %s", c->id, why);
        rc = client_queue(c, mv_proto_reply_error(-EMSGSIZE, why));
        break;
    }
    default:
        return 0;
    }
    if (rc == 0)
        rc = client_flush(c);
    return rc < 0 ? rc : 1;
}

/* One recv: 1 when something happened, 0 when the socket is empty, -errno
 * when the client is gone. */
static int client_receive(struct client *c)
{
    size_t room;
    char *space = mv_proto_reader_space(&c->input, &room);
    ssize_t n;

    if (!space)
        return -ENOMEM;
    n = recv(c->fd, space, room, 0);
    if (n < 0)
        return errno == EAGAIN ? 0 : errno == EINTR ? 1 : -errno;
    if (n == 0) {
        c->peer_closed = true;
        if (mv_proto_reader_partial(&c->input))
            daemon_log(MV_LOG_DEBUG, "client %u hung up in the middle of a request; "
                       "dropped it", c->id);
        return 1;
    }
    mv_proto_reader_commit(&c->input, (size_t)n);
    return 1;
}

static void client_close(struct daemon *d, struct client *c)
{
    daemon_log(MV_LOG_DEBUG, "client %u: disconnected", c->id);
    epoll_ctl(d->epoll_fd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    if (c->prev)
        c->prev->next = c->next;
    else
        d->clients = c->next;
    if (c->next)
        c->next->prev = c->prev;
    d->client_count--;
    mv_proto_reader_free(&c->input);
    free(c->output);
    free(c);
}

static int client_watch(struct daemon *d, struct client *c, uint32_t events)
{
    struct epoll_event ev = { .events = events, .data.ptr = c };

    if (c->events == events)
        return 0;
    if (epoll_ctl(d->epoll_fd, EPOLL_CTL_MOD, c->fd, &ev) < 0)
        return -errno;
    c->events = events;
    return 0;
}

static uint64_t monotonic_ms(void)
{
    struct timespec now;

    clock_gettime(CLOCK_MONOTONIC, &now);
    return (uint64_t)now.tv_sec * 1000u + (uint64_t)now.tv_nsec / 1000000u;
}

/*
 * With every slot taken, a connection that has sent nothing, or half a
 * request, for idle_evict_ms makes room for a new one: otherwise 128
 * silent connections would shut everyone out.  The one idle longest goes.
 * Returns whether one was closed.
 */
static bool evict_idle_client(struct daemon *d)
{
    uint64_t now = monotonic_ms();
    struct client *oldest = NULL;

    for (struct client *c = d->clients; c; c = c->next)
        if (!c->busy && !client_pending(c) && !c->more &&
            now - c->last_active >= d->idle_evict_ms &&
            (!oldest || c->last_active < oldest->last_active))
            oldest = c;
    if (!oldest)
        return false;
    daemon_log(MV_LOG_INFO, "client %u: idle for %llu ms with every slot taken; closed "
               "to make room", oldest->id, (unsigned long long)(now - oldest->last_active));
    client_close(d, oldest);
    return true;
}

/* A client with nothing left to do: it hung up, and every reply is out. */
static bool client_done(const struct client *c)
{
    return c->peer_closed && !c->busy && !client_pending(c) && !c->more;
}

/* A client waits for a worker: not watched, so that neither its requests
 * nor its hangup are seen until the reply is queued. */
static int client_unwatch(struct daemon *d, struct client *c)
{
    if (epoll_ctl(d->epoll_fd, EPOLL_CTL_DEL, c->fd, NULL) < 0)
        return -errno;
    c->events = 0;
    return 0;
}

/* A client's turn: flush, then read until one request is complete and
 * answer it (or hand it to a worker).  One request a turn, so that a
 * client that sent thousands at once waits its turn like everyone else
 * (c->more brings it back).  Returns whether it still has a request
 * waiting (false once closed or busy). */
static bool client_serve(struct daemon *d, struct client *c)
{
    unsigned reads = CLIENT_READS_PER_TURN;
    int rc;

    if (c->busy)
        return false;
    rc = client_flush(c);
    c->last_active = monotonic_ms();
    c->more = false;
    while (rc >= 0 && !client_pending(c)) {
        rc = client_answer_one(d, c);
        if (rc != 0) {
            c->more = rc > 0 && !client_pending(c) && !c->busy;
            break;
        }
        if (c->peer_closed || reads-- == 0)
            break;
        rc = client_receive(c);
        if (rc == 0)
            break;
    }
    if (rc > 0)
        rc = 0;
    /* A request begun and not finished has request_timeout_ms to end. */
    if (c->busy || !mv_proto_reader_partial(&c->input) || c->more)
        c->partial_since = 0;
    else if (!c->partial_since)
        c->partial_since = c->last_active;
    if (rc == 0 && c->busy)
        rc = client_unwatch(d, c);
    else if (rc == 0 && !client_done(c))
        rc = client_watch(d, c, client_pending(c) ? EPOLLOUT : EPOLLIN);
    if (rc < 0 && rc != -EPIPE && rc != -ECONNRESET)
        daemon_log(MV_LOG_WARN, "client %u: %s; closing it", c->id, strerror(-rc));
    if (!c->busy && (rc < 0 || client_done(c))) {
        client_close(d, c);
        return false;
    }
    return c->more;
}

/* A worker finished a client's request: queue the reply, watch the client
 * again and give it a turn (it may have more requests held). */
static void job_finish(struct daemon *d, struct job *job)
{
    struct client *c = job->client;
    struct epoll_event ev = { .events = EPOLLIN, .data.ptr = c };
    int rc;

    d->jobs_in_flight--;
    rc = client_queue(c, request_reply(c, &job->r, job->name, job->rc));
    free(job);
    c->busy = false;
    /* Stopping: the reply is the last thing the client gets; a request it
     * sent meanwhile would start a job no worker may be left to run. */
    if (d->stopping) {
        if (rc == 0)
            (void)client_flush(c);
        client_close(d, c);
        return;
    }
    if (rc == 0 && epoll_ctl(d->epoll_fd, EPOLL_CTL_ADD, c->fd, &ev) < 0)
        rc = -errno;
    c->events = EPOLLIN;
    if (rc < 0) {
        daemon_log(MV_LOG_WARN, "client %u: %s; closing it", c->id, strerror(-rc));
        client_close(d, c);
        return;
    }
    c->more = true;
    client_serve(d, c);
}

/*
 * Close the clients whose request began more than request_timeout_ms ago
 * and is still not complete, telling them why: a client that keeps half a
 * request open must not hold a slot forever.  Returns the milliseconds
 * until the next such deadline, or -1 when there is none.
 */
static int expire_requests(struct daemon *d)
{
    uint64_t now = monotonic_ms();
    int64_t next = -1;

    for (struct client *c = d->clients, *following; c; c = following) {
        uint64_t deadline = c->partial_since + d->request_timeout_ms;

        following = c->next;
        if (!c->partial_since || c->busy)
            continue;
        if (deadline > now) {
            if (next < 0 || (int64_t)(deadline - now) < next)
                next = (int64_t)(deadline - now);
            continue;
        }
        daemon_log(MV_LOG_INFO, "client %u: request not complete after %u ms; dropped",
                   c->id, d->request_timeout_ms);
        {
            char why[MV_PROTO_DETAIL_MAX];

            snprintf(why, sizeof(why), "the request was not complete after %u ms "
                     "(--request-timeout-ms); closing the connection",
                     d->request_timeout_ms);
            if (client_queue(c, mv_proto_reply_error(-ETIMEDOUT, why)) == 0)
                (void)client_flush(c);
        }
        client_close(d, c);
    }
    return next < 0 ? -1 : next > INT_MAX ? INT_MAX : (int)next;
}

/* Give every client with a request waiting its next turn; true when some
 * may still have more. */
static bool serve_waiting_clients(struct daemon *d)
{
    bool more = false;

    for (struct client *c = d->clients, *next; c; c = next) {
        next = c->next;
        if (c->more && !c->busy && client_serve(d, c))
            more = true;
    }
    return more;
}

static void client_refuse(int fd, int err, const char *why)
{
    struct json_object *reply = mv_proto_reply_error(err, why);
    size_t length;
    char *line = mv_proto_encode_line(reply, &length);

    if (line && send(fd, line, length, MSG_NOSIGNAL | MSG_DONTWAIT) < 0)
        daemon_log(MV_LOG_DEBUG, "cannot tell a refused client why: %s", strerror(errno));
    free(line);
    json_object_put(reply);
    close(fd);
}

/*
 * accept4 failed for want of file descriptors (each domain holds four).
 * The connection would wait forever and the listening socket would stay
 * readable, spinning the loop: give up the spare descriptor to accept it,
 * tell it why, and take the spare back.  Without a spare, stop watching
 * the socket until one can be had again (run_loop retries).  Returns true
 * when a connection was taken off the queue.
 */
static bool accept_without_descriptors(struct daemon *d)
{
    int fd;

    if (!d->fd_shortage)
        daemon_log(MV_LOG_WARN, "out of file descriptors (%s): refusing clients until "
                   "some are free (destroy domains or raise the limit)", strerror(errno));
    d->fd_shortage = true;
    if (d->spare_fd >= 0) {
        close(d->spare_fd);
        fd = accept4(d->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0)
            client_refuse(fd, -EMFILE, "memvisord has no file descriptor left for a "
                          "client; destroy domains or raise its limit (ulimit -n)");
        d->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (fd >= 0)
            return true;
    }
    if (!d->accept_paused && epoll_ctl(d->epoll_fd, EPOLL_CTL_DEL, d->listen_fd, NULL) == 0)
        d->accept_paused = true;
    return false;
}

/*
 * Whether the peer of a new connection may talk to the daemon: root, the
 * daemon's own user, and (with --socket-group) the members of that group,
 * as the kernel recorded them when it connected (SO_PEERCRED, and
 * SO_PEERGROUPS for its supplementary groups).  The socket's mode keeps
 * others out already; this holds even when it was changed, or reached by a
 * process allowed past the file's mode.  A refused peer is told why and
 * closed.
 */
static bool peer_allowed(struct daemon *d, int fd)
{
    struct ucred cred;
    socklen_t length = sizeof(cred);
    char why[MV_PROTO_DETAIL_MAX];

    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &length) < 0) {
        daemon_log(MV_LOG_WARN, "refusing a client whose credentials cannot be read: %s",
                   strerror(errno));
        close(fd);
        return false;
    }
    if (cred.uid == 0 || cred.uid == d->uid)
        return true;
    if (d->group_access) {
        gid_t groups[256];

        if (cred.gid == d->socket_gid)
            return true;
        length = sizeof(groups);
        if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &length) == 0) {
            for (size_t i = 0; i < length / sizeof(groups[0]); i++)
                if (groups[i] == d->socket_gid)
                    return true;
        }
    }
    snprintf(why, sizeof(why), "uid %u may not use memvisord: it serves root, uid %u%s",
             (unsigned)cred.uid, (unsigned)d->uid,
             d->group_access ? " and the members of its --socket-group" : "");
    daemon_log(MV_LOG_WARN, "refused a client: pid %ld, uid %u, gid %u: not root, not "
               "uid %u%s", (long)cred.pid, (unsigned)cred.uid, (unsigned)cred.gid,
               (unsigned)d->uid, d->group_access ? ", not in the socket group" : "");
    client_refuse(fd, -EACCES, why);
    return false;
}

static void accept_clients(struct daemon *d)
{
    for (;;) {
        int fd = accept4(d->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        struct epoll_event ev = { .events = EPOLLIN };
        struct client *c;

        if (fd < 0 && (errno == EMFILE || errno == ENFILE)) {
            if (!accept_without_descriptors(d))
                return;
            continue;
        }
        if (fd < 0) {
            if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
                daemon_log(MV_LOG_WARN, "cannot accept a client: %s", strerror(errno));
            return;
        }
        d->fd_shortage = false;
        if (!peer_allowed(d, fd))
            continue;
        if (d->client_count >= MAX_CLIENTS && !evict_idle_client(d)) {
            daemon_log(MV_LOG_WARN, "refusing a client: %u are connected", d->client_count);
            client_refuse(fd, -EUSERS, "memvisord already serves its maximum of clients; "
                          "try again later");
            continue;
        }
        c = calloc(1, sizeof(*c));
        if (!c) {
            daemon_log(MV_LOG_WARN, "no memory for a client");
            close(fd);
            continue;
        }
        c->fd = fd;
        c->id = ++d->next_client_id;
        c->events = EPOLLIN;
        c->last_active = monotonic_ms();
        mv_proto_reader_init(&c->input, MV_PROTO_MAX_REQUEST);
        ev.data.ptr = c;
        if (epoll_ctl(d->epoll_fd, EPOLL_CTL_ADD, fd, &ev) < 0) {
            daemon_log(MV_LOG_WARN, "cannot watch a client: %s", strerror(errno));
            close(fd);
            free(c);
            continue;
        }
        c->next = d->clients;
        if (d->clients)
            d->clients->prev = c;
        d->clients = c;
        d->client_count++;
        daemon_log(MV_LOG_DEBUG, "client %u: connected", c->id);
    }
}

/* ------------------------------------------------------------------------ */
/* Event loop                                                                */

/* SIGUSR1: the host's counters, in the log. */
static void log_counters(struct daemon *d)
{
    struct mv_host_stats stats;

    if (mv_host_stats(d->host, &stats) < 0) {
        daemon_log(MV_LOG_WARN, "SIGUSR1: cannot read the host's counters: %s",
                   mv_last_error());
        return;
    }
    daemon_log(MV_LOG_INFO, "SIGUSR1: %" PRIu64 " domains, %" PRIu64 " of %" PRIu64
               " budget pages populated, %" PRIu64 " faults served; %u clients, %u "
               "calls running on %u workers", stats.domains, stats.populated_pages,
               stats.budget_pages, stats.faults, d->client_count, d->jobs_in_flight,
               d->worker_count);
}

/*
 * Signals arrive here, through the signalfd, whatever the loop is doing:
 * no library call runs on the loop.  SIGINT and SIGTERM stop the daemon; a
 * second one while calls are still running exits at once.  SIGHUP (the
 * terminal closed) and SIGUSR2 are ignored, SIGUSR1 logs the counters: by
 * default each would have killed every guest.
 */
static void receive_signal(struct daemon *d)
{
    struct signalfd_siginfo info;

    while (read(d->signal_fd, &info, sizeof(info)) == (ssize_t)sizeof(info)) {
        int sig = (int)info.ssi_signo;

        switch (sig) {
        case SIGINT:
        case SIGTERM:
            if (d->stopping && d->jobs_in_flight) {
                daemon_log(MV_LOG_WARN, "%s again: exiting without waiting for %u calls "
                           "in progress", strsignal(sig), d->jobs_in_flight);
                file_remove(&d->socket_file);
                file_remove(&d->pid_file);
                file_remove(&d->lock_file);
                _exit(STATUS_FAILED);
            }
            daemon_log(MV_LOG_INFO, "%s: shutting down", strsignal(sig));
            d->stopping = true;
            break;
        case SIGUSR1:
            log_counters(d);
            break;
        default:
            daemon_log(MV_LOG_INFO, "%s: ignored (memvisord stops on SIGINT, SIGTERM or "
                       "'shutdown')", strsignal(sig));
            break;
        }
    }
}

static int watch_fd(struct daemon *d, int *fd)
{
    struct epoll_event ev = { .events = EPOLLIN, .data.ptr = fd };

    if (epoll_ctl(d->epoll_fd, EPOLL_CTL_ADD, *fd, &ev) < 0) {
        daemon_log(MV_LOG_ERROR, "epoll_ctl: %s", strerror(errno));
        return -errno;
    }
    return 0;
}

static void finish_jobs(struct daemon *d)
{
    for (struct job *job = jobs_take_done(d), *next; job; job = next) {
        next = job->next;
        job_finish(d, job);
    }
}

static int run_loop(struct daemon *d)
{
    struct epoll_event events[EPOLL_BATCH];
    bool more = false;

    while (!d->stopping) {
        bool accepting = false, finished = false;
        int n, timeout = expire_requests(d);

        if (d->accept_paused && d->spare_fd < 0)
            d->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (d->accept_paused && d->spare_fd >= 0 && watch_fd(d, &d->listen_fd) == 0)
            d->accept_paused = false;
        if (d->accept_paused && (timeout < 0 || timeout > 1000))
            timeout = 1000;
        /* Clients with requests waiting: look for events without sleeping. */
        n = epoll_wait(d->epoll_fd, events, EPOLL_BATCH, more ? 0 : timeout);

        if (n < 0) {
            if (errno == EINTR)
                continue;
            daemon_log(MV_LOG_ERROR, "epoll_wait: %s", strerror(errno));
            return -errno;
        }
        for (int i = 0; i < n; i++) {
            void *source = events[i].data.ptr;

            if (source == &d->listen_fd)
                accepting = true;
            else if (source == &d->signal_fd)
                receive_signal(d);
            else if (source == &d->done_fd)
                finished = true;
            else
                client_serve(d, source);
        }
        /* After the batch: replying and making room may close a client it
         * names. */
        if (finished)
            finish_jobs(d);
        if (accepting && !d->stopping)
            accept_clients(d);
        more = serve_waiting_clients(d);
    }
    return 0;
}

/*
 * Stopping: the socket goes at once, so nobody new waits on a daemon that
 * is leaving, and the idle clients are closed; the calls still running on
 * workers cannot be interrupted (the library has no way to), so they are
 * waited for, their replies sent, before the host is destroyed.  The
 * signalfd is still watched: a second SIGINT or SIGTERM exits at once.
 */
static void drain(struct daemon *d)
{
    struct epoll_event events[EPOLL_BATCH];

    if (d->listen_fd >= 0) {
        epoll_ctl(d->epoll_fd, EPOLL_CTL_DEL, d->listen_fd, NULL);
        close(d->listen_fd);
        d->listen_fd = -1;
    }
    file_remove(&d->socket_file);
    workers_stop(d);               /* test-hold gives up */
    if (d->jobs_in_flight)
        daemon_log(MV_LOG_INFO, "waiting for %u calls in progress to finish (signal "
                   "again to exit without waiting)", d->jobs_in_flight);
    while (d->jobs_in_flight) {
        int n;

        for (struct client *c = d->clients, *next; c; c = next) {
            next = c->next;
            if (!c->busy)
                client_close(d, c);
        }
        n = epoll_wait(d->epoll_fd, events, EPOLL_BATCH, -1);
        if (n < 0 && errno != EINTR) {
            daemon_log(MV_LOG_ERROR, "epoll_wait: %s", strerror(errno));
            break;
        }
        for (int i = 0; i < n; i++) {
            if (events[i].data.ptr == &d->signal_fd)
                receive_signal(d);
            else if (events[i].data.ptr == &d->done_fd)
                finish_jobs(d);
        }
    }
}

/* ------------------------------------------------------------------------ */
/* Start-up and teardown                                                     */

/* --socket-group: a group name, or a numeric gid. */
static int resolve_group(const char *name, gid_t *gid)
{
    struct group entry, *found = NULL;
    char buffer[4096];
    uint64_t number;
    int rc = getgrnam_r(name, &entry, buffer, sizeof(buffer), &found);

    if (rc == 0 && found) {
        *gid = found->gr_gid;
        return 0;
    }
    if (mv_proto_parse_u64(name, &number) == 0 && number < (gid_t)-1) {
        *gid = (gid_t)number;
        return 0;
    }
    daemon_log(MV_LOG_ERROR, "--socket-group: no group named '%s'%s%s", name,
               rc ? ": " : "", rc ? strerror(rc) : "");
    return rc ? -rc : -ENOENT;
}

/*
 * A budget above the machine's memory would let domains populate more than
 * there is, and the kernel's OOM killer, not the PoD policy, would decide
 * who pays: refused unless --overcommit says it is meant.
 */
static int check_budget(const struct options *o)
{
    long pages = sysconf(_SC_PHYS_PAGES), page_size = sysconf(_SC_PAGESIZE);
    uint64_t machine = pages > 0 && page_size > 0 ? (uint64_t)pages * (uint64_t)page_size : 0;
    char budget[32], total[32];

    if (!machine || o->budget_bytes <= machine)
        return 0;
    mv_proto_format_size(budget, sizeof(budget), o->budget_bytes);
    mv_proto_format_size(total, sizeof(total), machine);
    if (!o->overcommit) {
        daemon_log(MV_LOG_ERROR, "--budget %s is more than the machine's memory (%s); "
                   "pass --overcommit if that is meant", budget, total);
        return -E2BIG;
    }
    daemon_log(MV_LOG_WARN, "--budget %s is more than the machine's memory (%s): domains "
               "may populate more than there is (--overcommit)", budget, total);
    return 0;
}

static int daemon_start(struct daemon *d, const struct options *o, const sigset_t *signals)
{
    struct mv_host_config config;
    int rc;

    d->socket_path = o->socket_path;
    d->uid = geteuid();
    pthread_mutex_init(&d->guests_lock, NULL);
    pthread_mutex_init(&d->fc_lock, NULL);
    /* Real guests' consoles and sockets go beside the daemon's socket. */
    snprintf(d->run_dir, sizeof(d->run_dir), "%s", o->socket_path);
    if (strrchr(d->run_dir, '/'))
        *strrchr(d->run_dir, '/') = '\0';
    else
        snprintf(d->run_dir, sizeof(d->run_dir), ".");
    if (o->socket_group && (rc = resolve_group(o->socket_group, &d->socket_gid)) < 0)
        return rc;
    d->group_access = o->socket_group != NULL;
    d->idle_evict_ms = o->idle_evict_ms;
    d->request_timeout_ms = o->request_timeout_ms;
    d->test_commands = o->test_commands;
    if ((rc = check_budget(o)) < 0)
        return rc;
    if ((rc = make_parent_directory(d->socket_path)) < 0 || (rc = lock_acquire(d)) < 0)
        return rc;

    mv_host_config_init(&config);
    config.budget_bytes = o->budget_bytes;
    if (o->fault_threads)
        config.fault_threads = o->fault_threads;
    config.fault_cpus = o->fault_cpus;
    config.fault_mode = o->fault_mode;
    config.fault_path = o->fault_path;
    config.scrub_mode = o->scrub_mode;
    config.tmem_store = o->tmem_store;
    config.share_read = o->share_read;
    if (o->cow_settle_ms)
        config.cow_settle_ms = o->cow_settle_ms;
    config.log = log_library_message;
    config.log_level = o->log_level;
    rc = mv_host_create(&config, &d->host);
    if (rc < 0) {
        daemon_log(MV_LOG_ERROR, "cannot create the host: %s: %s (run 'memvisor doctor')",
                   mv_strerror(rc), mv_last_error());
        return rc;
    }
    if (o->auto_paging_high &&
        (rc = mv_tmem_auto_paging(d->host, o->auto_paging_high, o->auto_paging_low)) < 0) {
        daemon_log(MV_LOG_ERROR, "cannot start host paging: %s", mv_last_error());
        return rc;
    }

    d->signal_fd = signalfd(-1, signals, SFD_NONBLOCK | SFD_CLOEXEC);
    d->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    if (d->signal_fd < 0 || d->epoll_fd < 0) {
        daemon_log(MV_LOG_ERROR, "cannot create the event loop: %s", strerror(errno));
        return -errno;
    }
    d->done_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (d->done_fd < 0) {
        daemon_log(MV_LOG_ERROR, "cannot create the workers' eventfd: %s", strerror(errno));
        return -errno;
    }
    d->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if ((rc = socket_listen(d)) < 0 || (rc = watch_fd(d, &d->listen_fd)) < 0 ||
        (rc = watch_fd(d, &d->signal_fd)) < 0 || (rc = watch_fd(d, &d->done_fd)) < 0)
        return rc;
    if (o->pidfile && (rc = pidfile_write(d, o->pidfile)) < 0)
        return rc;
    daemon_log(MV_LOG_INFO, "serving %s", d->socket_path);
    return 0;
}

static void daemon_stop(struct daemon *d)
{
    if (d->epoll_fd >= 0)
        drain(d);
    workers_join(d);
    while (d->clients)
        client_close(d, d->clients);
    if (d->listen_fd >= 0)
        close(d->listen_fd);
    file_remove(&d->socket_file);
    if (d->done_fd >= 0)
        close(d->done_fd);
    while (d->fcs) {
        struct fc_entry *e = d->fcs;

        d->fcs = e->next;
        fc_entry_free(e);
    }
    /* Destroying the host stops real guests' QEMUs; then they are reaped. */
    if (d->host)
        mv_host_destroy(d->host);
    for (size_t i = 0; i < d->guest_count; i++) {
        mv_qemu_stop(&d->guests[i], 2000);
        mv_qemu_cleanup(&d->guests[i]);
    }
    free(d->guests);
    d->guests = NULL;
    d->guest_count = 0;
    if (d->signal_fd >= 0)
        close(d->signal_fd);
    if (d->spare_fd >= 0)
        close(d->spare_fd);
    if (d->epoll_fd >= 0)
        close(d->epoll_fd);
    file_remove(&d->pid_file);
    if (d->lock_fd >= 0) {
        file_remove(&d->lock_file);
        close(d->lock_fd);
    }
}

int main(int argc, char **argv)
{
    struct daemon d = { .epoll_fd = -1, .listen_fd = -1, .signal_fd = -1, .lock_fd = -1,
                        .spare_fd = -1, .done_fd = -1,
                        .jobs_lock = PTHREAD_MUTEX_INITIALIZER,
                        .jobs_cond = PTHREAD_COND_INITIALIZER,
                        .hold_cond = PTHREAD_COND_INITIALIZER };
    struct options options;
    sigset_t signals;
    int status = parse_options(argc, argv, &options);

    if (status >= 0)
        return status;
    log_threshold = options.log_level;
    /* Before any library thread or worker exists, so that every thread
     * blocks them and only the signalfd sees them. */
    sigemptyset(&signals);
    sigaddset(&signals, SIGINT);
    sigaddset(&signals, SIGTERM);
    sigaddset(&signals, SIGHUP);
    sigaddset(&signals, SIGUSR1);
    sigaddset(&signals, SIGUSR2);
    sigprocmask(SIG_BLOCK, &signals, NULL);
    signal(SIGPIPE, SIG_IGN);

    status = STATUS_FAILED;
    if (daemon_start(&d, &options, &signals) == 0 && run_loop(&d) == 0)
        status = STATUS_OK;
    daemon_stop(&d);
    return status;
}

/*
 * mvguest.c - the guest agent: reads command lines from the control serial
 * port (/dev/ttyS1, raw, no echo), answers each with exactly one JSON line,
 * and runs the workloads as child processes (one per name, each in its own
 * process group, counters in shared memory).  Started by /init; never dies
 * on bad input.  Also the agent's small utilities (time, logging, numbers).
 *
 * Line format: [#TAG ]COMMAND [ARGS...]\n.  A tag, when given, is echoed in
 * the reply as "id" so that a client can tell its reply from a stale one.
 */
#include "mvguest.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/reboot.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

static struct mvg_slot *slots;
static int ctl_fd = -1;
static const char *ctl_path = "/dev/ttyS1";

uint64_t mvg_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_BOOTTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

uint64_t mvg_mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

void mvg_sleep_ms(unsigned ms)
{
    struct timespec ts = { ms / 1000u, (long)(ms % 1000u) * 1000000L };
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

void mvg_log(const char *fmt, ...)
{
    char buf[512];
    int n = snprintf(buf, sizeof buf, "MV-GUEST ");
    va_list ap;
    va_start(ap, fmt);
    n += vsnprintf(buf + n, sizeof buf - (size_t)n - 1, fmt, ap);
    va_end(ap);
    if (n > (int)sizeof buf - 2)
        n = (int)sizeof buf - 2;
    buf[n++] = '\n';
    if (write(STDOUT_FILENO, buf, (size_t)n) < 0) {
        /* nowhere else to say it */
    }
}

int mvg_parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
    if (!s || !*s || *s == '-' || *s == '+')
        return -1;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

static struct mvg_slot *find_slot(const char *name)
{
    for (int i = 0; i < MVG_MAX_WORKLOADS; i++)
        if (slots[i].pid > 0 && strcmp(slots[i].name, name) == 0)
            return &slots[i];
    return NULL;
}

static void reap(void)
{
    int st;
    pid_t pid;
    while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
        for (int i = 0; i < MVG_MAX_WORKLOADS; i++) {
            if (slots[i].pid != pid)
                continue;
            if (WIFSIGNALED(st))
                mvg_log("%s: ended by signal %d", slots[i].name, WTERMSIG(st));
            else
                mvg_log("%s: exited %d", slots[i].name, WEXITSTATUS(st));
            kill(-pid, SIGKILL); /* what it left behind */
            slots[i].pid = 0;
        }
    }
}

static int start_workload(const char *name, const char *arg, char *err, size_t errlen)
{
    if (mvg_workload_check(name, arg, err, errlen) != 0)
        return -1;
    if (find_slot(name)) {
        snprintf(err, errlen, "workload %s already running", name);
        return -1;
    }
    struct mvg_slot *s = NULL;
    for (int i = 0; i < MVG_MAX_WORKLOADS && !s; i++)
        if (slots[i].pid == 0)
            s = &slots[i];
    if (!s) {
        snprintf(err, errlen, "too many workloads");
        return -1;
    }
    memset(s, 0, sizeof *s);
    snprintf(s->name, sizeof s->name, "%s", name);
    snprintf(s->arg, sizeof s->arg, "%s", arg ? arg : "");
    s->started_ms = mvg_now_ms();
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(err, errlen, "fork: %s", strerror(errno));
        return -1;
    }
    if (pid == 0) {
        setpgid(0, 0);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (ctl_fd >= 0)
            close(ctl_fd);
        signal(SIGCHLD, SIG_DFL);
        signal(SIGPIPE, SIG_DFL);
        int ofd = open("/proc/self/oom_score_adj", O_WRONLY);
        if (ofd >= 0) {
            if (write(ofd, "0\n", 2) != 2) {
                /* stays at the agent's value */
            }
            close(ofd);
        }
        mvg_log("%s: start%s%s", name, arg ? " " : "", arg ? arg : "");
        mvg_workload_main(name, arg, &s->c);
    }
    setpgid(pid, pid);
    s->pid = pid;
    return 0;
}

static void stop_slot(struct mvg_slot *s)
{
    pid_t pid = s->pid;
    kill(-pid, SIGKILL);
    kill(pid, SIGKILL);
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    mvg_log("%s: stopped", s->name);
    s->pid = 0;
}

static void slot_json(struct mvg_reply *r, const struct mvg_slot *s)
{
    const struct mvg_counters *c = &s->c;
    mvg_reply_printf(r, "{\"name\":\"%s\",\"arg\":\"%s\",\"pid\":%d,\"running_ms\":%" PRIu64
                     ",\"ops\":%" PRIu64 ",\"bytes\":%" PRIu64 ",\"errors\":%" PRIu64,
                     s->name, s->arg, (int)s->pid, mvg_now_ms() - s->started_ms,
                     MVG_GET(c->ops), MVG_GET(c->bytes), MVG_GET(c->errors));
    if (strcmp(s->name, "verify") == 0)
        mvg_reply_printf(r, ",\"pages\":%" PRIu64 ",\"checks\":%" PRIu64 ",\"rewrites\":%" PRIu64
                         ",\"mismatches\":%" PRIu64,
                         MVG_GET(c->pages), MVG_GET(c->checks), MVG_GET(c->rewrites),
                         MVG_GET(c->mismatches));
    mvg_reply_raw(r, "}");
}

static void write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN) {
                struct pollfd pfd = { fd, POLLOUT, 0 };
                poll(&pfd, 1, 100);
                continue;
            }
            return;
        }
        p += w;
        n -= (size_t)w;
    }
}

static void do_poweroff(void)
{
    for (int i = 0; i < MVG_MAX_WORKLOADS; i++)
        if (slots[i].pid > 0)
            stop_slot(&slots[i]);
    sync();
    mvg_log("poweroff");
    execl("/bin/busybox", "poweroff", "-f", (char *)NULL);
    reboot(RB_POWER_OFF);
    _exit(1);
}

/* Runs one command line; fills r with the reply.  Returns 1 for poweroff. */
static int dispatch(char *line, struct mvg_reply *r)
{
    char *tok[6];
    int n = 0;
    const char *id = NULL;
    for (char *save = NULL, *t = strtok_r(line, " \t", &save); t;
         t = strtok_r(NULL, " \t", &save)) {
        if (n == 0 && !id && t[0] == '#' && t[1]) {
            id = t + 1;
            if (strlen(id) > 64) {
                mvg_reply_error(r, NULL, "tag too long");
                return 0;
            }
            continue;
        }
        if (n == 6) {
            mvg_reply_error(r, id, "too many arguments");
            return 0;
        }
        tok[n++] = t;
    }
    if (n == 0) {
        mvg_reply_error(r, id, "empty command");
        return 0;
    }
    const char *cmd = tok[0];
#define NARGS(lo, hi)                                                         \
    do {                                                                      \
        if (n - 1 < (lo) || n - 1 > (hi)) {                                   \
            mvg_reply_error(r, id, "%s: wrong number of arguments", cmd);     \
            return 0;                                                         \
        }                                                                     \
    } while (0)

    if (strcmp(cmd, "ping") == 0) {
        NARGS(0, 0);
        mvg_reply_begin(r, id, 1);
        mvg_reply_u64(r, "uptime_ms", mvg_now_ms());
        mvg_reply_end(r);
    } else if (strcmp(cmd, "run") == 0) {
        NARGS(1, 2);
        char err[200];
        if (start_workload(tok[1], n > 2 ? tok[2] : NULL, err, sizeof err) != 0) {
            mvg_reply_error(r, id, "%s", err);
        } else {
            mvg_reply_begin(r, id, 1);
            mvg_reply_str(r, "name", tok[1]);
            mvg_reply_u64(r, "pid", (uint64_t)find_slot(tok[1])->pid);
            mvg_reply_end(r);
        }
    } else if (strcmp(cmd, "stop") == 0) {
        NARGS(1, 1);
        struct mvg_slot *s = find_slot(tok[1]);
        if (!s) {
            mvg_reply_error(r, id, "workload %s not running", tok[1]);
        } else {
            struct mvg_slot copy = *s;
            stop_slot(s);
            mvg_reply_begin(r, id, 1);
            mvg_reply_key(r, "workload");
            slot_json(r, &copy);
            mvg_reply_end(r);
        }
    } else if (strcmp(cmd, "status") == 0) {
        NARGS(0, 0);
        mvg_reply_begin(r, id, 1);
        mvg_reply_u64(r, "uptime_ms", mvg_now_ms());
        mvg_reply_key(r, "workloads");
        mvg_reply_raw(r, "[");
        int k = 0;
        for (int i = 0; i < MVG_MAX_WORKLOADS; i++) {
            if (slots[i].pid <= 0)
                continue;
            if (k++)
                mvg_reply_raw(r, ",");
            slot_json(r, &slots[i]);
        }
        mvg_reply_raw(r, "]");
        mvg_reply_end(r);
    } else if (strcmp(cmd, "verify-check") == 0) {
        NARGS(0, 0);
        struct mvg_slot *s = find_slot("verify");
        if (!s)
            mvg_reply_error(r, id, "verify not running");
        else
            mvg_verify_report(r, id, s);
    } else if (strcmp(cmd, "dirty") == 0) {
        NARGS(1, 1);
        mvg_cmd_dirty(r, id, tok[1]);
    } else if (strcmp(cmd, "touch") == 0) {
        NARGS(1, 1);
        mvg_cmd_touch(r, id, tok[1]);
    } else if (strcmp(cmd, "meminfo") == 0) {
        NARGS(0, 0);
        mvg_cmd_meminfo(r, id);
    } else if (strcmp(cmd, "drop-caches") == 0) {
        NARGS(0, 0);
        sync();
        int fd = open("/proc/sys/vm/drop_caches", O_WRONLY);
        if (fd < 0 || write(fd, "3\n", 2) != 2) {
            mvg_reply_error(r, id, "drop_caches: %s", strerror(errno));
        } else {
            mvg_reply_begin(r, id, 1);
            mvg_reply_end(r);
        }
        if (fd >= 0)
            close(fd);
    } else if (strcmp(cmd, "sync") == 0) {
        NARGS(0, 0);
        sync();
        mvg_reply_begin(r, id, 1);
        mvg_reply_end(r);
    } else if (strcmp(cmd, "poweroff") == 0) {
        NARGS(0, 0);
        mvg_reply_begin(r, id, 1);
        mvg_reply_end(r);
        return 1;
    } else {
        mvg_reply_error(r, id, "unknown command: %.40s", cmd);
    }
    return 0;
#undef NARGS
}

static int open_ctl(void)
{
    int fd = open(ctl_path, O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    struct termios t;
    if (tcgetattr(fd, &t) == 0) {
        cfmakeraw(&t);
        t.c_cflag |= CLOCAL | CREAD;
        t.c_cc[VMIN] = 1;
        t.c_cc[VTIME] = 0;
        cfsetispeed(&t, B115200);
        cfsetospeed(&t, B115200);
        tcsetattr(fd, TCSANOW, &t);
    }
    tcflush(fd, TCIOFLUSH);
    return fd;
}

/* mv.run=NAME[:ARG],... on the kernel command line */
static void start_boot_workloads(void)
{
    char cmdline[4096];
    int fd = open("/proc/cmdline", O_RDONLY);
    if (fd < 0)
        return;
    ssize_t n = read(fd, cmdline, sizeof cmdline - 1);
    close(fd);
    if (n <= 0)
        return;
    cmdline[n] = '\0';
    for (char *save = NULL, *w = strtok_r(cmdline, " \n", &save); w;
         w = strtok_r(NULL, " \n", &save)) {
        if (strncmp(w, "mv.run=", 7) != 0)
            continue;
        for (char *s2 = NULL, *item = strtok_r(w + 7, ",", &s2); item;
             item = strtok_r(NULL, ",", &s2)) {
            char *arg = strchr(item, ':');
            if (arg)
                *arg++ = '\0';
            char err[200];
            if (start_workload(item, arg, err, sizeof err) != 0)
                mvg_log("mv.run %s: %s", item, err);
        }
    }
}

int main(int argc, char **argv)
{
    if (argc > 1)
        ctl_path = argv[1];
    signal(SIGPIPE, SIG_IGN);
    setvbuf(stdout, NULL, _IONBF, 0);
    prctl(PR_SET_CHILD_SUBREAPER, 1);
    /* under memory pressure the OOM killer takes a workload, not the agent
     * (not -1000: with nothing else to kill the kernel would panic) */
    int ofd = open("/proc/self/oom_score_adj", O_WRONLY);
    if (ofd >= 0) {
        if (write(ofd, "-900\n", 5) != 5)
            mvg_log("agent: oom_score_adj: %s", strerror(errno));
        close(ofd);
    }
    slots = mmap(NULL, sizeof(struct mvg_slot) * MVG_MAX_WORKLOADS, PROT_READ | PROT_WRITE,
                 MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (slots == MAP_FAILED) {
        mvg_log("agent: mmap: %s", strerror(errno));
        return 1;
    }
    memset(slots, 0, sizeof(struct mvg_slot) * MVG_MAX_WORKLOADS);

    start_boot_workloads();
    for (int tries = 0; (ctl_fd = open_ctl()) < 0; tries++) {
        if (tries == 0)
            mvg_log("agent: %s: %s (retrying)", ctl_path, strerror(errno));
        reap();
        mvg_sleep_ms(200);
    }
    mvg_log("agent ready on %s", ctl_path);

    static char line[4096];
    size_t len = 0;
    int overflow = 0;
    struct mvg_reply r = { 0 };
    for (;;) {
        reap();
        struct pollfd pfd = { ctl_fd, POLLIN, 0 };
        int pr = poll(&pfd, 1, 500);
        if (pr <= 0)
            continue;
        char in[512];
        ssize_t got = read(ctl_fd, in, sizeof in);
        if (got <= 0) {
            if (got < 0 && (errno == EINTR || errno == EAGAIN))
                continue;
            mvg_sleep_ms(100); /* hangup: keep the port, try again */
            continue;
        }
        for (ssize_t i = 0; i < got; i++) {
            char ch = in[i];
            if (ch != '\n' && ch != '\r') {
                if (len < sizeof line - 1)
                    line[len++] = ch;
                else
                    overflow = 1;
                continue;
            }
            line[len] = '\0';
            int off = 0;
            if (overflow) {
                mvg_reply_error(&r, NULL, "line too long");
            } else {
                size_t k = 0;
                while (k < len && (line[k] == ' ' || line[k] == '\t'))
                    k++;
                if (k == len) { /* blank: no command, no reply */
                    len = 0;
                    continue;
                }
                for (size_t j = 0; j < len; j++)
                    if ((unsigned char)line[j] < 0x20 && line[j] != '\t')
                        line[j] = ' ';
                off = dispatch(line, &r);
            }
            len = 0;
            overflow = 0;
            write_all(ctl_fd, r.buf, r.len);
            if (off) {
                tcdrain(ctl_fd);
                mvg_sleep_ms(100);
                do_poweroff();
            }
        }
    }
}

/*
 * qemu.c - memvisord's QEMU guests (qemu.h).
 *
 * QEMU maps its guest RAM from the machine memory file, inherited as fd
 * MV_QEMU_RAM_FD and opened by path (/proc/self/fd/N: QEMU 7.2 has no file
 * offset option, and the agent places the mapping at the domain's frames
 * anyway); the agent (LD_PRELOAD) hands it over on the control socket,
 * inherited as MV_QEMU_CONTROL_FD, which mv_vmm_accept serves.  The
 * console is a log file, QMP and the guest's control channel (a second
 * serial port) are Unix sockets, all in the run directory.
 *
 * The caller reaps QEMU (mv_qemu_stop); nothing here keeps state between
 * calls.
 */
#include "qemu.h"
#include "protocol.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MV_QEMU_CONTROL_FD 10
#define MV_QEMU_RAM_FD 11

/* `name` found in PATH (or as a path), into out. */
static bool find_program(const char *name, char *out, size_t len)
{
    const char *path = getenv("PATH");

    if (strchr(name, '/')) {
        snprintf(out, len, "%s", name);
        return access(out, X_OK) == 0;
    }
    for (const char *p = path ? path : "/usr/bin:/bin"; *p;) {
        const char *end = strchr(p, ':');
        size_t n = end ? (size_t)(end - p) : strlen(p);

        snprintf(out, len, "%.*s/%s", (int)n, p, name);
        if (access(out, X_OK) == 0)
            return true;
        p += n + (end ? 1 : 0);
    }
    return false;
}

/* The agent library: next to this executable (the build tree), else where
 * it is installed. */
static bool find_agent(char *out, size_t len)
{
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);

    if (n > 0) {
        char *slash;

        self[n] = '\0';
        slash = strrchr(self, '/');
        if (slash) {
            *slash = '\0';
            if (snprintf(out, len, "%s/libmemvisor-agent.so", self) < (int)len &&
                access(out, R_OK) == 0)
                return true;
        }
    }
#ifdef MV_AGENT_INSTALL_PATH
    snprintf(out, len, "%s", MV_AGENT_INSTALL_PATH);
    return access(out, R_OK) == 0;
#else
    return false;
#endif
}

/* The last line QEMU wrote to its log, for an error message. */
static void last_log_line(const char *path, char *out, size_t len)
{
    char buf[4096];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    ssize_t n;

    out[0] = '\0';
    if (fd < 0)
        return;
    n = pread(fd, buf, sizeof(buf) - 1, 0);
    close(fd);
    if (n <= 0)
        return;
    buf[n] = '\0';
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        buf[--n] = '\0';
    {
        const char *line = strrchr(buf, '\n') ? strrchr(buf, '\n') + 1 : buf;
        size_t keep = strnlen(line, len - 1);

        memcpy(out, line, keep);
        out[keep] = '\0';
    }
}

void mv_qemu_name_files(struct mv_qemu *q, const char *run_dir, const char *name)
{
    snprintf(q->name, sizeof(q->name), "%s", name);
    snprintf(q->console_path, sizeof(q->console_path), "%s/%s.console", run_dir, name);
    snprintf(q->qmp_path, sizeof(q->qmp_path), "%s/%s.qmp", run_dir, name);
    snprintf(q->ctl_path, sizeof(q->ctl_path), "%s/%s.ctl", run_dir, name);
    snprintf(q->log_path, sizeof(q->log_path), "%s/%s.log", run_dir, name);
    mv_qemu_cleanup(q);
}

void mv_qemu_add_guest_args(struct mv_qemu_argv *a, const struct mv_qemu *q,
                            uint64_t maxmem_bytes, const char *kernel, const char *initrd,
                            const char *append)
{
    snprintf(a->mem, sizeof(a->mem), "%lluM", (unsigned long long)(maxmem_bytes >> 20));
    snprintf(a->console, sizeof(a->console), "file,id=con,path=%s", q->console_path);
    snprintf(a->ctl, sizeof(a->ctl), "socket,id=ctl,path=%s,server=on,wait=off",
             q->ctl_path);
    snprintf(a->qmp, sizeof(a->qmp), "unix:%s,server=on,wait=off", q->qmp_path);
    a->argv[a->argc++] = "-m";
    a->argv[a->argc++] = a->mem;
    a->argv[a->argc++] = "-smp";
    a->argv[a->argc++] = "1";
    a->argv[a->argc++] = "-display";
    a->argv[a->argc++] = "none";
    a->argv[a->argc++] = "-no-reboot";
    a->argv[a->argc++] = "-nodefaults";
    a->argv[a->argc++] = "-chardev";
    a->argv[a->argc++] = a->console;
    a->argv[a->argc++] = "-serial";
    a->argv[a->argc++] = "chardev:con";
    a->argv[a->argc++] = "-chardev";
    a->argv[a->argc++] = a->ctl;
    a->argv[a->argc++] = "-serial";
    a->argv[a->argc++] = "chardev:ctl";
    a->argv[a->argc++] = "-qmp";
    a->argv[a->argc++] = a->qmp;
    a->argv[a->argc++] = "-device";
    a->argv[a->argc++] = "virtio-balloon-pci,id=balloon0,free-page-reporting=on";
    a->argv[a->argc++] = "-kernel";
    a->argv[a->argc++] = kernel;
    if (initrd) {
        a->argv[a->argc++] = "-initrd";
        a->argv[a->argc++] = initrd;
    }
    a->argv[a->argc++] = "-append";
    a->argv[a->argc++] = append;
    a->argv[a->argc] = NULL;
}

int mv_qemu_launch(mv_host *host, const struct mv_domain_config *config,
                   const struct mv_qemu_options *o, struct mv_qemu *out,
                   char *why, size_t why_len)
{
    char qemu[PATH_MAX], agent[PATH_MAX], ram_arg[256], ram_path[64];
    char env_fd[16], env_ram[16], env_preload[PATH_MAX + 16], last[200];
    const char *accel = o->accel ? o->accel : "tcg";
    struct mv_qemu_argv a;
    int sv[2], rc, log_fd, status;
    uint32_t domid;
    pid_t pid;

    memset(out, 0, sizeof(*out));
    if (!find_program(o->qemu ? o->qemu : "qemu-system-x86_64", qemu, sizeof(qemu)))
        return mv_proto_fail(why, why_len, -ENOENT, "%s not found: install Debian's qemu-system-x86 "
                    "(apt-get install qemu-system-x86)",
                    o->qemu ? o->qemu : "qemu-system-x86_64");
    if (!o->kernel || access(o->kernel, R_OK) != 0)
        return mv_proto_fail(why, why_len, -ENOENT, "kernel %s cannot be read: build the guest "
                    "image with scripts/guest-image.sh, or give --kernel",
                    o->kernel ? o->kernel : "(none given)");
    if (o->initrd && access(o->initrd, R_OK) != 0)
        return mv_proto_fail(why, why_len, -ENOENT, "initrd %s cannot be read", o->initrd);
    if (strcmp(accel, "tcg") != 0 && strcmp(accel, "kvm") != 0)
        return mv_proto_fail(why, why_len, -EINVAL, "accelerator '%s' is not tcg or kvm", accel);
    if (strcmp(accel, "kvm") == 0 && access("/dev/kvm", R_OK | W_OK) != 0)
        return mv_proto_fail(why, why_len, -ENODEV, "-accel kvm needs /dev/kvm, which this host "
                    "lacks: use tcg");
    if (o->agent)
        snprintf(agent, sizeof(agent), "%s", o->agent);
    else if (!find_agent(agent, sizeof(agent)))
        return mv_proto_fail(why, why_len, -ENOENT, "libmemvisor-agent.so not found next to "
                    "memvisord nor where it is installed");
    mv_qemu_name_files(out, o->run_dir, config->name);
    snprintf(ram_path, sizeof(ram_path), "/proc/self/fd/%d", MV_QEMU_RAM_FD);
    snprintf(ram_arg, sizeof(ram_arg), "memory-backend-file,id=ram,size=%llu,mem-path=%s,"
             "share=on,align=2M", (unsigned long long)config->maxmem_bytes, ram_path);
    a.argc = 0;
    a.argv[a.argc++] = qemu;
    a.argv[a.argc++] = "-accel";
    a.argv[a.argc++] = accel;
    a.argv[a.argc++] = "-machine";
    a.argv[a.argc++] = "pc,memory-backend=ram";
    a.argv[a.argc++] = "-object";
    a.argv[a.argc++] = ram_arg;
    mv_qemu_add_guest_args(&a, out, config->maxmem_bytes, o->kernel, o->initrd,
                           o->append ? o->append : "console=ttyS0");

    log_fd = open(out->log_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (log_fd < 0)
        return mv_proto_fail(why, why_len, -errno, "cannot create %s: %s", out->log_path,
                    strerror(errno));
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
        rc = -errno;
        close(log_fd);
        return mv_proto_fail(why, why_len, rc, "socketpair: %s", strerror(-rc));
    }
    snprintf(env_fd, sizeof(env_fd), "%d", MV_QEMU_CONTROL_FD);
    snprintf(env_ram, sizeof(env_ram), "%d", MV_QEMU_RAM_FD);
    snprintf(env_preload, sizeof(env_preload), "%s", agent);
    pid = fork();
    if (pid < 0) {
        rc = -errno;
        close(sv[0]);
        close(sv[1]);
        close(log_fd);
        return mv_proto_fail(why, why_len, rc, "fork: %s", strerror(-rc));
    }
    if (pid == 0) {
        int devnull = open("/dev/null", O_RDWR);
        sigset_t none;

        /* The daemon blocks the signals it takes through a signalfd. */
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        setsid();
        if (devnull >= 0)
            dup2(devnull, 0);
        dup2(log_fd, 1);
        dup2(log_fd, 2);
        if (dup2(sv[1], MV_QEMU_CONTROL_FD) < 0 ||
            dup2(mv_host_machine_fd(host), MV_QEMU_RAM_FD) < 0)
            _exit(127);
        setenv("LD_PRELOAD", env_preload, 1);
        setenv("MEMVISOR_VMM_FD", env_fd, 1);
        setenv("MEMVISOR_RAM_FD", env_ram, 1);
        execv(qemu, (char *const *)a.argv);
        dprintf(2, "exec %s: %s\n", qemu, strerror(errno));
        _exit(127);
    }
    close(sv[1]);
    close(log_fd);
    rc = mv_vmm_accept(host, sv[0], config,
                       o->handover_timeout_ms ? o->handover_timeout_ms : 30000, &domid);
    if (rc < 0) {
        char lib[200];

        snprintf(lib, sizeof(lib), "%s", mv_last_error());
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        last_log_line(out->log_path, last, sizeof(last));
        mv_qemu_cleanup(out);
        return mv_proto_fail(why, why_len, rc, "QEMU did not hand its RAM over: %s%s%s", lib,
                    last[0] ? "; QEMU said: " : "", last);
    }
    out->pid = pid;
    out->domid = domid;
    return 0;
}

/* Read from fd until a line holding "return" or "error" (QMP events and
 * the greeting are skipped), within the deadline. */
static int qmp_read_answer(int fd, char *buf, size_t len, uint64_t deadline_ms,
                           char *why, size_t why_len)
{
    size_t used = 0;

    for (;;) {
        struct pollfd p = { .fd = fd, .events = POLLIN };
        char *nl;
        uint64_t now;
        ssize_t n;

        while ((nl = memchr(buf, '\n', used))) {
            *nl = '\0';
            if (strstr(buf, "\"return\"") || strstr(buf, "\"error\"") ||
                strstr(buf, "\"QMP\""))
                return 0;
            used -= (size_t)(nl + 1 - buf);
            memmove(buf, nl + 1, used);
        }
        now = mv_proto_now_ms();
        if (now >= deadline_ms)
            return mv_proto_fail(why, why_len, -ETIMEDOUT, "QMP did not answer in time");
        if (poll(&p, 1, (int)(deadline_ms - now)) <= 0)
            continue;
        if (used + 1 >= len)
            return mv_proto_fail(why, why_len, -EMSGSIZE, "QMP answer too long");
        n = read(fd, buf + used, len - used - 1);
        if (n <= 0)
            return mv_proto_fail(why, why_len, -EPIPE, "QMP closed the connection");
        used += (size_t)n;
        buf[used] = '\0';
    }
}

/* A stream connection to the Unix socket at path (`what` names it in the
 * error): the fd, or a negative errno with why filled. */
static int connect_to(const char *path, const char *what, char *why, size_t why_len)
{
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    int fd, rc;

    if (strlen(path) >= sizeof(a.sun_path))
        return mv_proto_fail(why, why_len, -ENAMETOOLONG, "%s path %s is too long", what,
                             path);
    memcpy(a.sun_path, path, strlen(path) + 1);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return mv_proto_fail(why, why_len, -errno, "socket: %s", strerror(errno));
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
        rc = -errno;
        close(fd);
        return mv_proto_fail(why, why_len, rc, "cannot reach %s %s: %s", what, path,
                             strerror(-rc));
    }
    return fd;
}

int mv_qemu_qmp(const struct mv_qemu *q, const char *command, char *reply,
                size_t reply_len, unsigned timeout_ms, char *why, size_t why_len)
{
    const char *caps = "{\"execute\":\"qmp_capabilities\"}\n";
    uint64_t deadline = mv_proto_now_ms() + timeout_ms;
    char buf[16384];
    int fd = connect_to(q->qmp_path, "QEMU's QMP socket", why, why_len), rc;

    if (fd < 0)
        return fd;
    rc = qmp_read_answer(fd, buf, sizeof(buf), deadline, why, why_len); /* greeting */
    if (rc == 0 && send(fd, caps, strlen(caps), MSG_NOSIGNAL) != (ssize_t)strlen(caps))
        rc = mv_proto_fail(why, why_len, -EPIPE, "QMP write failed");
    if (rc == 0)
        rc = qmp_read_answer(fd, buf, sizeof(buf), deadline, why, why_len);
    if (rc == 0 && (send(fd, command, strlen(command), MSG_NOSIGNAL) != (ssize_t)strlen(command) ||
                    send(fd, "\n", 1, MSG_NOSIGNAL) != 1))
        rc = mv_proto_fail(why, why_len, -EPIPE, "QMP write failed");
    if (rc == 0)
        rc = qmp_read_answer(fd, buf, sizeof(buf), deadline, why, why_len);
    close(fd);
    if (rc < 0)
        return rc;
    snprintf(reply, reply_len, "%s", buf);
    if (strstr(buf, "\"error\""))
        return mv_proto_fail(why, why_len, -EINVAL, "QEMU refused %s: %s", command, buf);
    return 0;
}

int mv_qemu_guest_command(const struct mv_qemu *q, const char *line, char *reply,
                          size_t reply_len, unsigned timeout_ms, char *why, size_t why_len)
{
    static unsigned tag;
    char buf[65536], want[32], *nl, *start;
    uint64_t deadline = mv_proto_now_ms() + timeout_ms, now;
    size_t used = 0;
    unsigned t;
    int fd = connect_to(q->ctl_path, "the guest's control socket", why, why_len), rc = 0;

    if (fd < 0)
        return fd;
    /* A tag tells this command's answer from one left over from another. */
    t = __atomic_add_fetch(&tag, 1, __ATOMIC_RELAXED);
    snprintf(want, sizeof(want), "\"id\":\"t%u\"", t);
    {
        char out[512];
        int len = snprintf(out, sizeof(out), "#t%u %s\n", t, line);

        if (len >= (int)sizeof(out) ||
            send(fd, out, (size_t)len, MSG_NOSIGNAL) != (ssize_t)len) {
            rc = len >= (int)sizeof(out) ? -E2BIG : -errno;
            close(fd);
            return mv_proto_fail(why, why_len, rc, "cannot send '%s' to the guest", line);
        }
    }
    for (;;) {
        struct pollfd p = { .fd = fd, .events = POLLIN };
        ssize_t n;

        buf[used] = '\0';
        for (start = buf; (nl = strchr(start, '\n')); start = nl + 1) {
            *nl = '\0';
            if (strstr(start, want)) {
                snprintf(reply, reply_len, "%s", start);
                close(fd);
                return 0;
            }
        }
        used -= (size_t)(start - buf);
        memmove(buf, start, used);
        now = mv_proto_now_ms();
        if (now >= deadline) {
            rc = mv_proto_fail(why, why_len, -ETIMEDOUT,
                               "the guest did not answer '%s' in time", line);
            break;
        }
        if (poll(&p, 1, (int)(deadline - now)) <= 0)
            continue;
        if (used + 1 >= sizeof(buf))
            used = 0; /* an endless line: drop it */
        n = read(fd, buf + used, sizeof(buf) - used - 1);
        if (n <= 0) {
            rc = mv_proto_fail(why, why_len, -EPIPE, "the guest's control channel closed");
            break;
        }
        used += (size_t)n;
    }
    close(fd);
    return rc;
}

void mv_qemu_stop(struct mv_qemu *q, unsigned timeout_ms)
{
    char reply[256], why[256];
    int status;

    if (q->pid <= 0)
        return;
    if (waitpid(q->pid, &status, WNOHANG) == 0) {
        (void)mv_qemu_qmp(q, "{\"execute\":\"quit\"}", reply, sizeof(reply), timeout_ms,
                          why, sizeof(why));
        for (unsigned waited = 0; waited < timeout_ms; waited += 10) {
            if (waitpid(q->pid, &status, WNOHANG) != 0)
                goto reaped;
            usleep(10000);
        }
        kill(q->pid, SIGKILL);
        waitpid(q->pid, &status, 0);
    }
reaped:
    q->pid = 0;
}

void mv_qemu_cleanup(struct mv_qemu *q)
{
    unlink(q->qmp_path);
    unlink(q->ctl_path);
}

/*
 * vmctl.c - memvisor-vmctl, the host side of the test guest's control
 * channel: connects to the unix socket QEMU listens on for the guest's
 * second serial port (-chardev socket,...,server=on,wait=off -serial
 * chardev:ID), sends one command line, prints the agent's reply line.
 *
 *   memvisor-vmctl [--timeout-ms N] SOCKET COMMAND [ARGS...]
 *
 * Exit status: 0 when the reply says "ok":true, 1 when it does not, 2 on a
 * timeout or a connection failure.  Each command carries a fresh tag
 * (#TAG, echoed by the agent as "id") so that a stale reply -- one a
 * previous, impatient client left in the channel -- is skipped, not taken;
 * the tag is taken out of the reply it prints.
 *
 * Before the command, it pings until the agent answers: QEMU accepts the
 * connection as soon as it starts, but what is sent before the agent has
 * opened its port is lost (the UART's FIFO is cleared when the port is
 * opened).  ping is harmless to repeat; the command itself is sent once.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int usage(void)
{
    fprintf(stderr, "usage: memvisor-vmctl [--timeout-ms N] SOCKET COMMAND [ARGS...]\n");
    return 2;
}

/* Reads lines until one carries ,"id":"TAG" (right after "ok"), which it
 * returns with the tag taken out (malloc'd), or NULL at the deadline or on
 * an error (*why says which).  Every resend_ms, when resend is not NULL, it
 * is written again. */
static char *await_reply(int fd, const char *tag, long long deadline, const char *resend,
                         long long resend_ms, const char **why)
{
    char idm[80];
    snprintf(idm, sizeof idm, ",\"id\":\"%s\"", tag);
    size_t lcap = 4096, llen = 0;
    char *line = malloc(lcap);
    long long next_send = now_ms(); /* the first send is now */
    *why = "no reply";
    if (!line) {
        *why = "out of memory";
        return NULL;
    }
    for (;;) {
        long long now = now_ms(), left = deadline - now;
        if (left <= 0)
            break;
        if (resend && now >= next_send) {
            size_t n = strlen(resend);
            if (write(fd, resend, n) != (ssize_t)n) {
                *why = "write failed";
                break;
            }
            next_send = now + resend_ms;
        }
        long long wait = resend ? next_send - now : left;
        if (wait > left)
            wait = left;
        if (wait > 1000)
            wait = 1000;
        struct pollfd pfd = { fd, POLLIN, 0 };
        int pr = poll(&pfd, 1, (int)(wait < 1 ? 1 : wait));
        if (pr < 0 && errno != EINTR) {
            *why = "poll failed";
            break;
        }
        if (pr <= 0)
            continue;
        char buf[4096];
        ssize_t n = read(fd, buf, sizeof buf);
        if (n == 0) {
            *why = "connection closed";
            break;
        }
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            *why = "read failed";
            break;
        }
        for (ssize_t k = 0; k < n; k++) {
            if (buf[k] == '\r')
                continue;
            if (buf[k] != '\n') {
                if (llen + 2 > lcap) {
                    char *nl = realloc(line, lcap * 2);
                    if (!nl) {
                        *why = "out of memory";
                        free(line);
                        return NULL;
                    }
                    line = nl;
                    lcap *= 2;
                }
                line[llen++] = buf[k];
                continue;
            }
            line[llen] = '\0';
            char *at = line[0] == '{' ? strstr(line, idm) : NULL;
            if (at) {
                memmove(at, at + strlen(idm), strlen(at + strlen(idm)) + 1);
                return line;
            }
            llen = 0; /* stale or foreign: skip */
        }
    }
    free(line);
    return NULL;
}

int main(int argc, char **argv)
{
    long timeout_ms = 10000;
    int i = 1;
    if (i < argc && strcmp(argv[i], "--timeout-ms") == 0) {
        char *end;
        if (i + 1 >= argc)
            return usage();
        timeout_ms = strtol(argv[i + 1], &end, 10);
        if (*end || timeout_ms <= 0)
            return usage();
        i += 2;
    }
    if (argc - i < 2)
        return usage();
    const char *path = argv[i++];

    char tag[32];
    snprintf(tag, sizeof tag, "v%ld-%lld", (long)getpid(), now_ms() % 1000000);
    char tag_p[40];
    snprintf(tag_p, sizeof tag_p, "%sp", tag);
    size_t cap = strlen(tag) + 5;
    for (int k = i; k < argc; k++)
        cap += strlen(argv[k]) + 1;
    char *cmd = malloc(cap);
    if (!cmd)
        return 2;
    size_t len = (size_t)snprintf(cmd, cap, "\n#%s", tag);
    for (int k = i; k < argc; k++) {
        if (strchr(argv[k], '\n') || strchr(argv[k], '\r')) {
            fprintf(stderr, "memvisor-vmctl: no line breaks in a command\n");
            free(cmd);
            return 2;
        }
        len += (size_t)snprintf(cmd + len, cap - len, " %s", argv[k]);
    }
    cmd[len++] = '\n';

    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof sa.sun_path) {
        fprintf(stderr, "memvisor-vmctl: socket path too long: %s\n", path);
        free(cmd);
        return 2;
    }
    memcpy(sa.sun_path, path, strlen(path) + 1);
    long long deadline = now_ms() + timeout_ms;
    int fd = -1;
    /* QEMU may not listen yet right after it started: retry until the
     * deadline */
    for (;;) {
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            fprintf(stderr, "memvisor-vmctl: socket: %s\n", strerror(errno));
            free(cmd);
            return 2;
        }
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0)
            break;
        int e = errno;
        close(fd);
        if ((e != ENOENT && e != ECONNREFUSED) || now_ms() >= deadline) {
            fprintf(stderr, "memvisor-vmctl: connect %s: %s\n", path, strerror(e));
            free(cmd);
            return 2;
        }
        usleep(50000);
    }
    /* Each line starts with a line break: it ends whatever partial line an
     * earlier client left in the agent's buffer (blank lines get no
     * reply). */
    char ping[64];
    snprintf(ping, sizeof ping, "\n#%sp ping\n", tag);
    const char *why;
    char *reply = await_reply(fd, tag_p, deadline, ping, 500, &why);
    if (!reply) {
        fprintf(stderr, "memvisor-vmctl: %s: the agent does not answer within %ld ms (%s)\n",
                path, timeout_ms, why);
        free(cmd);
        close(fd);
        return 2;
    }
    free(reply);
    if (write(fd, cmd, len) != (ssize_t)len) {
        fprintf(stderr, "memvisor-vmctl: write: %s\n", strerror(errno));
        free(cmd);
        close(fd);
        return 2;
    }
    free(cmd);
    reply = await_reply(fd, tag, deadline, NULL, 0, &why);
    close(fd);
    if (!reply) {
        fprintf(stderr, "memvisor-vmctl: %s: %s within %ld ms\n", path, why, timeout_ms);
        return 2;
    }
    puts(reply);
    int ok = strncmp(reply, "{\"ok\":true", 10) == 0;
    free(reply);
    return ok ? 0 : 1;
}

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

/* The reply's tag: ,"id":"TAG" right after "ok". */
static int has_tag(const char *line, const char *tag)
{
    char want[80];
    snprintf(want, sizeof want, "\"id\":\"%s\"", tag);
    return strstr(line, want) != NULL;
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
    size_t cap = strlen(tag) + 4;
    for (int k = i; k < argc; k++)
        cap += strlen(argv[k]) + 1;
    char *cmd = malloc(cap);
    if (!cmd)
        return 2;
    size_t len = (size_t)snprintf(cmd, cap, "#%s", tag);
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
    /* A blank line first ends whatever partial line an earlier client left
     * in the agent's buffer (the agent ignores blank lines). */
    if (write(fd, "\n", 1) != 1 || write(fd, cmd, len) != (ssize_t)len) {
        fprintf(stderr, "memvisor-vmctl: write: %s\n", strerror(errno));
        free(cmd);
        close(fd);
        return 2;
    }
    free(cmd);

    size_t lcap = 4096, llen = 0;
    char *line = malloc(lcap);
    if (!line) {
        close(fd);
        return 2;
    }
    for (;;) {
        long long left = deadline - now_ms();
        if (left <= 0) {
            fprintf(stderr, "memvisor-vmctl: no reply within %ld ms\n", timeout_ms);
            break;
        }
        struct pollfd pfd = { fd, POLLIN, 0 };
        int pr = poll(&pfd, 1, (int)(left > 1000 ? 1000 : left));
        if (pr < 0 && errno != EINTR) {
            fprintf(stderr, "memvisor-vmctl: poll: %s\n", strerror(errno));
            break;
        }
        if (pr <= 0)
            continue;
        char buf[4096];
        ssize_t n = read(fd, buf, sizeof buf);
        if (n == 0) {
            fprintf(stderr, "memvisor-vmctl: connection closed before the reply\n");
            break;
        }
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            fprintf(stderr, "memvisor-vmctl: read: %s\n", strerror(errno));
            break;
        }
        for (ssize_t k = 0; k < n; k++) {
            if (buf[k] != '\n') {
                if (buf[k] == '\r')
                    continue;
                if (llen + 2 > lcap) {
                    char *nl = realloc(line, lcap * 2);
                    if (!nl) {
                        free(line);
                        close(fd);
                        return 2;
                    }
                    line = nl;
                    lcap *= 2;
                }
                line[llen++] = buf[k];
                continue;
            }
            line[llen] = '\0';
            if (line[0] == '{' && has_tag(line, tag)) {
                /* print the reply as the agent would without a tag */
                char idm[80];
                snprintf(idm, sizeof idm, ",\"id\":\"%s\"", tag);
                char *at = strstr(line, idm);
                if (at)
                    memmove(at, at + strlen(idm), strlen(at + strlen(idm)) + 1);
                puts(line);
                int ok = strncmp(line, "{\"ok\":true", 10) == 0;
                free(line);
                close(fd);
                return ok ? 0 : 1;
            }
            llen = 0; /* stale or foreign: skip */
        }
    }
    free(line);
    close(fd);
    return 2;
}

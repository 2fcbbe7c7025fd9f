/*
 * qemu.h - memvisord's QEMU guests: launching an unmodified QEMU whose
 * guest RAM a domain serves (through the VMM hand-over and its agent),
 * its console log and its QMP socket.
 */
#ifndef MV_TOOLS_QEMU_H
#define MV_TOOLS_QEMU_H

#include "memvisor.h"

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct mv_qemu_options {
    const char *kernel;     /* required */
    const char *initrd;     /* NULL: none */
    const char *append;     /* kernel command line; NULL: "console=ttyS0" */
    const char *accel;      /* "tcg" (default) or "kvm" */
    const char *qemu;       /* the binary; NULL: qemu-system-x86_64 from PATH */
    const char *agent;      /* libmemvisor-agent.so; NULL: found next to memvisord */
    const char *run_dir;    /* where the console, QMP and control sockets go */
    unsigned handover_timeout_ms;
};

/* A running QEMU guest. */
struct mv_qemu {
    uint32_t domid;
    pid_t pid;
    char name[64];
    char console_path[PATH_MAX]; /* the serial console, as a log file */
    char qmp_path[PATH_MAX];     /* QMP, a Unix socket */
    char ctl_path[PATH_MAX];     /* the second serial port, a Unix socket
                                    (the guest's control channel) */
    char log_path[PATH_MAX];     /* QEMU's own stderr */
};

/* A QEMU command line being built: the arguments and the text they
 * point into. */
struct mv_qemu_argv {
    const char *argv[48];
    int argc;
    char mem[32], console[PATH_MAX + 64], ctl[PATH_MAX + 64], qmp[PATH_MAX + 64];
};

/* Name the guest's files in run_dir (console, QMP, control, log) and
 * remove stale sockets. */
void mv_qemu_name_files(struct mv_qemu *q, const char *run_dir, const char *name);

/* Append what every guest gets, after the caller's memory arguments: its
 * size, one vCPU, no display nor default devices, the console file, the
 * control and QMP sockets, a virtio-balloon with free page reporting, and
 * the kernel, initrd (NULL: none) and command line; then the final NULL. */
void mv_qemu_add_guest_args(struct mv_qemu_argv *a, const struct mv_qemu *q,
                            uint64_t maxmem_bytes, const char *kernel, const char *initrd,
                            const char *append);

/* Start QEMU for a new domain of `config` (maxmem = the guest's RAM) and
 * hand its RAM over.  0 with *out filled, or a negative errno with the
 * reason in why (QEMU is stopped again). */
int mv_qemu_launch(mv_host *host, const struct mv_domain_config *config,
                   const struct mv_qemu_options *o, struct mv_qemu *out,
                   char *why, size_t why_len);

/* Run one QMP command (a JSON object as text) and put the reply's
 * "return" or "error" object as text in reply.  0 or a negative errno
 * (why says what went wrong). */
int mv_qemu_qmp(const struct mv_qemu *q, const char *command, char *reply,
                size_t reply_len, unsigned timeout_ms, char *why, size_t why_len);

/* Send one command line to the guest's agent on its control channel (the
 * test guest's mvguest, guest/vm) and put its one-line answer in reply.
 * 0, or a negative errno (-ETIMEDOUT, -ECONNREFUSED while the guest boots)
 * with why filled. */
int mv_qemu_guest_command(const struct mv_qemu *q, const char *line, char *reply,
                          size_t reply_len, unsigned timeout_ms, char *why, size_t why_len);

/* Ask QEMU to quit (QMP "quit"), then SIGKILL if it has not exited within
 * timeout_ms.  Reaps it. */
void mv_qemu_stop(struct mv_qemu *q, unsigned timeout_ms);

/* Remove the files of a guest that is gone. */
void mv_qemu_cleanup(struct mv_qemu *q);

#endif /* MV_TOOLS_QEMU_H */

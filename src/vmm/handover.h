/*
 * handover.h - the VMM hand-over protocol: the messages between memvisor
 * (the server, vmm/server.c) and the agent inside a VMM (vmm/agent.c, or
 * any VMM that speaks it; docs/vmm-handover.md describes it for them).
 *
 * Transport: two connected SOCK_SEQPACKET Unix sockets, one message per
 * packet, all fields in the host's byte order (both ends run on one host).
 *   control  server -> agent requests (MAP, ZAP, STOP), agent replies;
 *            also carries the HELLO (agent -> server) and, while the VMM's
 *            RAM mapping is being set up, the server's MAP requests and its
 *            final READY.
 *   requests agent -> server requests (DISCARD), server replies.  The
 *            agent makes the pair and hands one end over with HELLO.
 * A reply carries the request's type and seq and the result (0 or -errno).
 *
 * The HELLO carries four file descriptors (SCM_RIGHTS), in this order: two
 * userfaultfds the VMM opened (O_NONBLOCK | O_CLOEXEC, no UFFDIO_API yet),
 * its /proc/self/pagemap, and the server's end of the requests socket.
 * The VMM closes its own copies of all four once the HELLO is sent: if
 * the server dies, the userfaultfds go with it, and the agent, seeing the
 * control socket close, stops the VMM rather than let it run unmanaged.
 */
#ifndef MV_VMM_HANDOVER_H
#define MV_VMM_HANDOVER_H

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

#define MV_HANDOVER_MAGIC 0x4d564d48u /* "MVMH" */
#define MV_HANDOVER_VERSION 1u
#define MV_HANDOVER_FDS 4

enum mv_handover_type {
    MV_HO_HELLO = 1,   /* agent: its RAM mapping (addr, length), pid; 4 fds */
    MV_HO_READY = 2,   /* server: the domain exists (result, domid) or not */
    MV_HO_MAP = 3,     /* server: mmap the machine file at offset over
                          [addr, addr + length), flags MV_HO_MAP_PRIVATE */
    MV_HO_ZAP = 4,     /* server: madvise(MADV_DONTNEED) [addr, addr + length) */
    MV_HO_STOP = 5,    /* server: the domain crashed or was destroyed: the VMM
                          must stop at once (the agent kills it) */
    MV_HO_DISCARD = 6, /* agent: the VMM discarded [offset, offset + length)
                          of its RAM (a balloon, free page reporting) */
    MV_HO_TRIM = 7,    /* server: give back the zero pages of the VMM's own
                          RAM blocks; the reply's length is the pages freed */
    MV_HO_REPLY = 0x80 /* or-ed into the type of a reply */
};

#define MV_HO_MAP_PRIVATE 1u

struct mv_handover_msg {
    uint32_t magic;     /* MV_HANDOVER_MAGIC */
    uint16_t version;   /* MV_HANDOVER_VERSION */
    uint16_t type;      /* enum mv_handover_type, | MV_HO_REPLY in replies */
    uint32_t seq;       /* chosen by the requester, echoed in the reply */
    int32_t result;     /* replies: 0 or -errno */
    uint64_t addr;      /* an address in the VMM */
    uint64_t length;    /* bytes */
    uint64_t offset;    /* bytes into the machine file, or into the RAM */
    uint32_t flags;
    int32_t pid;        /* HELLO: the VMM's pid */
    uint32_t domid;     /* READY: the domain created */
    uint32_t reserved;
    char text[96];      /* HELLO: the VMM's name for itself; replies and
                           READY, STOP: a reason, NUL-terminated */
};

/* The size is part of the protocol (docs/vmm-handover.md). */
_Static_assert(sizeof(struct mv_handover_msg) == 152, "hand-over message is 152 bytes");

/* Send one message with `nfds` descriptors (SCM_RIGHTS, at most
 * MV_HANDOVER_FDS): 0, or -1 with errno set (a short send: EIO). */
static inline int mv_handover_send(int fd, const struct mv_handover_msg *m, const int *fds,
                                   int nfds)
{
    char cbuf[CMSG_SPACE(sizeof(int) * MV_HANDOVER_FDS)];
    struct iovec iov = { (void *)m, sizeof(*m) };
    struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
    ssize_t n;

    if (nfds) {
        struct cmsghdr *c;

        memset(cbuf, 0, sizeof(cbuf));
        mh.msg_control = cbuf;
        mh.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
        c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)nfds);
    }
    do
        n = sendmsg(fd, &mh, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    if (n == (ssize_t)sizeof(*m))
        return 0;
    if (n >= 0)
        errno = EIO;
    return -1;
}

#endif /* MV_VMM_HANDOVER_H */

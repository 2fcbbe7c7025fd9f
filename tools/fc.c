/*
 * fc.c - receiving Firecracker's page-fault-handler hand-over (fc.h).
 * The message is read whole (Firecracker sends it with one sendmsg on a
 * stream socket); the JSON is checked strictly: every region needs its
 * address, size and offset as unsigned integers and a page size.
 */
#include "fc.h"
#include "protocol.h"

#include <errno.h>
#include <json-c/json.h>
#include <poll.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MV_FC_MESSAGE_MAX 65536

static bool member_u64(struct json_object *o, const char *key, uint64_t *out)
{
    struct json_object *v;

    if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_int))
        return false;
    errno = 0;
    *out = json_object_get_uint64(v);
    return errno == 0 && json_object_get_int64(v) >= 0;
}

int mv_fc_parse_regions(const char *json, struct mv_fc_region **regions, size_t *count,
                        char *why, size_t why_len)
{
    struct json_tokener *tok = json_tokener_new();
    struct json_object *root = NULL;
    struct mv_fc_region *r = NULL;
    size_t n = 0;
    int rc = 0;

    *regions = NULL;
    *count = 0;
    if (!tok)
        return mv_proto_fail(why, why_len, -ENOMEM, "no memory to parse the hand-over");
    root = json_tokener_parse_ex(tok, json, (int)strlen(json));
    if (!root || json_tokener_get_error(tok) != json_tokener_success ||
        tok->char_offset != (int)strlen(json))
        rc = mv_proto_fail(why, why_len, -EINVAL, "the hand-over is not one JSON value: %s",
                  json_tokener_error_desc(json_tokener_get_error(tok)));
    else if (!json_object_is_type(root, json_type_array) ||
             (n = json_object_array_length(root)) == 0 || n > 1024)
        rc = mv_proto_fail(why, why_len, -EINVAL, "the hand-over is not an array of 1 to 1024 "
                  "regions");
    else if (!(r = calloc(n, sizeof(*r))))
        rc = mv_proto_fail(why, why_len, -ENOMEM, "no memory for %zu regions", n);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        struct json_object *o = json_object_array_get_idx(root, i);
        uint64_t kib;

        if (!json_object_is_type(o, json_type_object) ||
            !member_u64(o, "base_host_virt_addr", &r[i].base) ||
            !member_u64(o, "size", &r[i].size) || !member_u64(o, "offset", &r[i].offset))
            rc = mv_proto_fail(why, why_len, -EINVAL, "region %zu lacks base_host_virt_addr, size "
                      "or offset as unsigned integers", i);
        else if (member_u64(o, "page_size", &r[i].page_size))
            ;
        else if (member_u64(o, "page_size_kib", &kib) && kib < (UINT64_MAX >> 10))
            r[i].page_size = kib << 10;
        else
            rc = mv_proto_fail(why, why_len, -EINVAL, "region %zu has no page_size", i);
    }
    if (root)
        json_object_put(root);
    json_tokener_free(tok);
    if (rc < 0) {
        free(r);
        return rc;
    }
    *regions = r;
    *count = n;
    return 0;
}

int mv_fc_receive(int listen_fd, unsigned timeout_ms, struct mv_fc_handover *out,
                  char *why, size_t why_len)
{
    char *buf = malloc(MV_FC_MESSAGE_MAX + 1);
    char cbuf[CMSG_SPACE(sizeof(int) * 4)];
    struct iovec iov = { buf, MV_FC_MESSAGE_MAX };
    struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1,
                         .msg_control = cbuf, .msg_controllen = sizeof(cbuf) };
    struct pollfd p = { .fd = listen_fd, .events = POLLIN };
    struct ucred cred;
    socklen_t cred_len = sizeof(cred);
    int conn = -1, rc = 0;
    ssize_t n;

    memset(out, 0, sizeof(*out));
    out->uffd = -1;
    if (!buf)
        return mv_proto_fail(why, why_len, -ENOMEM, "no memory for the hand-over");
    rc = poll(&p, 1, timeout_ms ? (int)timeout_ms : -1);
    if (rc <= 0) {
        free(buf);
        return rc == 0 ? mv_proto_fail(why, why_len, -ETIMEDOUT, "no VMM connected within %u ms",
                              timeout_ms)
                       : mv_proto_fail(why, why_len, -errno, "poll: %s", strerror(errno));
    }
    conn = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
    if (conn < 0) {
        free(buf);
        return mv_proto_fail(why, why_len, -errno, "accept: %s", strerror(errno));
    }
    if (getsockopt(conn, SOL_SOCKET, SO_PEERCRED, &cred, &cred_len) < 0)
        cred.pid = 0;
    p.fd = conn;
    rc = poll(&p, 1, timeout_ms ? (int)timeout_ms : -1) <= 0
             ? mv_proto_fail(why, why_len, -ETIMEDOUT, "the VMM connected but sent nothing")
             : 0;
    n = rc == 0 ? recvmsg(conn, &mh, MSG_CMSG_CLOEXEC) : -1;
    if (rc == 0 && n < 0)
        rc = mv_proto_fail(why, why_len, -errno, "recvmsg: %s", strerror(errno));
    for (struct cmsghdr *c = n >= 0 ? CMSG_FIRSTHDR(&mh) : NULL; c; c = CMSG_NXTHDR(&mh, c)) {
        int *fds = (int *)CMSG_DATA(c);
        size_t nfds = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);

        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        for (size_t i = 0; i < nfds; i++) {
            if (out->uffd < 0)
                out->uffd = fds[i];
            else
                close(fds[i]);
        }
    }
    close(conn);
    if (rc == 0 && (n == 0 || out->uffd < 0))
        rc = mv_proto_fail(why, why_len, -EPROTO, "the VMM's message carried no userfaultfd");
    if (rc == 0 && (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)))
        rc = mv_proto_fail(why, why_len, -EPROTO, "the VMM's message was longer than %d bytes",
                  MV_FC_MESSAGE_MAX);
    if (rc == 0) {
        buf[n] = '\0';
        rc = mv_fc_parse_regions(buf, &out->regions, &out->count, why, why_len);
    }
    free(buf);
    if (rc < 0) {
        if (out->uffd >= 0)
            close(out->uffd);
        out->uffd = -1;
        return rc;
    }
    out->pid = cred.pid;
    return 0;
}

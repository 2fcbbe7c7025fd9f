/*
 * vmm/server.c - the server side of the VMM hand-over (vmm/handover.h):
 * accepts a VMM's HELLO, creates its domain with mv_domain_create_vmm, and
 * carries out the library's mapping changes in the VMM by asking its agent:
 * one at a time (the VMM ops), or several sent back to back before their
 * replies are read (vmm_batch, for mv__ram_map_runs and mv__ram_zap_runs),
 * so that a stretch of them waits once for the agent's thread, which on a
 * busy host is most of a request's cost.
 *
 * One struct vmm_conn per VMM, with two references: the domain's (its vmm
 * ops release it, when the domain goes or its creation fails) and
 * mv_vmm_accept's own until it returns, because the domain may be
 * destroyed by another thread as soon as it exists.  Its thread, started
 * before the domain and let go once the domain exists, serves the VMM's
 * own requests (DISCARD) and notices the VMM's exit (its end of the
 * requests socket closes): the domain then crashes and its frames return
 * to the host.
 *
 * Locking: `call_lock` serializes exchanges on the control socket, a
 * batch's requests and replies being one exchange (the
 * library calls map and zap with the domain lock held, so they never wait
 * on the library).  `start_lock` guards go and released.  The thread
 * takes no lock of its own while serving; it calls the public API, like
 * any user.
 */
#include "internal.h"
#include "vmm/handover.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

/* How long the agent may take to carry out one request (tests shorten it:
 * mv__vmm_set_reply_timeout). */
#define MV_VMM_CALL_TIMEOUT_MS 10000u

static unsigned reply_timeout_ms = MV_VMM_CALL_TIMEOUT_MS;

void mv__vmm_set_reply_timeout(unsigned ms)
{
    __atomic_store_n(&reply_timeout_ms, ms ? ms : MV_VMM_CALL_TIMEOUT_MS, __ATOMIC_RELAXED);
}

/* When a reply must have come by, from now. */
static uint64_t reply_deadline(void)
{
    return mv__now_ns() + __atomic_load_n(&reply_timeout_ms, __ATOMIC_RELAXED) * 1000000ull;
}

struct vmm_conn {
    mv_host *host;
    uint32_t domid;
    int pid;
    int pidfd;                 /* the VMM, for a kill that cannot hit a reused pid */
    int control;               /* server -> agent requests */
    int requests;              /* agent -> server requests */
    pthread_mutex_t call_lock;
    uint32_t seq;
    pthread_t thread;
    bool thread_started;
    atomic_bool stopping;
    atomic_int refs;
    pthread_mutex_t start_lock;
    pthread_cond_t start_cond;
    bool go;                   /* the domain exists: serve */
    bool released;             /* the domain let go of it */
};

static void conn_put(struct vmm_conn *c)
{
    if (atomic_fetch_sub(&c->refs, 1) != 1)
        return;
    pthread_mutex_destroy(&c->call_lock);
    pthread_mutex_destroy(&c->start_lock);
    pthread_cond_destroy(&c->start_cond);
    free(c);
}

static void msg_init(struct mv_handover_msg *m, uint16_t type)
{
    memset(m, 0, sizeof(*m));
    m->magic = MV_HANDOVER_MAGIC;
    m->version = MV_HANDOVER_VERSION;
    m->type = type;
}

static int send_msg(int fd, const struct mv_handover_msg *m)
{
    return mv_handover_send(fd, m, NULL, 0) == 0 ? 0 : -errno;
}

/* Receive one message within timeout_ms (-1: forever), with up to `max_fds`
 * descriptors into fds (the rest -1).  0, -ETIMEDOUT, -EPIPE (peer gone),
 * -EPROTO (not a message of this protocol) or -errno. */
static int recv_msg(int fd, struct mv_handover_msg *m, int timeout_ms, int *fds,
                    int max_fds)
{
    char cbuf[CMSG_SPACE(sizeof(int) * MV_HANDOVER_FDS)];
    struct iovec iov = { m, sizeof(*m) };
    struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1,
                         .msg_control = cbuf, .msg_controllen = sizeof(cbuf) };
    struct pollfd pfd = { .fd = fd, .events = POLLIN };
    ssize_t n;
    int rc;

    for (int i = 0; i < max_fds; i++)
        fds[i] = -1;
    do
        rc = poll(&pfd, 1, timeout_ms);
    while (rc < 0 && errno == EINTR);
    if (rc < 0)
        return -errno;
    if (rc == 0)
        return -ETIMEDOUT;
    do
        n = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return -errno;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
        int *got = (int *)CMSG_DATA(c);
        size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);

        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        for (size_t i = 0; i < count; i++) {
            if ((int)i < max_fds)
                fds[i] = got[i];
            else
                close(got[i]);
        }
    }
    if (n == 0)
        return -EPIPE;
    if (n != (ssize_t)sizeof(*m) || m->magic != MV_HANDOVER_MAGIC ||
        m->version != MV_HANDOVER_VERSION || (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC))) {
        for (int i = 0; i < max_fds; i++)
            if (fds[i] >= 0)
                close(fds[i]);
        return -EPROTO;
    }
    m->text[sizeof(m->text) - 1] = '\0';
    return 0;
}

/* Requests the agent is given before their replies are read, at most:
 * the replies queue up meanwhile, far below the socket's buffer. */
#define MV_VMM_WINDOW 16
/* A result not known yet (results are 0 or -errno). */
#define MV_VMM_PENDING 1

/*
 * Send reqs[0..n) (their seq set here) back to back, at most MV_VMM_WINDOW
 * unanswered, and read the replies: the agent carries out the next request
 * while this thread reads the last reply, and a stretch of requests costs
 * one wait for the agent's thread rather than one each.  results[i] is
 * request i's 0 or -errno; one not sent or not answered in time takes the
 * error of its send or of the wait (reply_timeout_ms since the last
 * reply).  *reply (when set) takes the last reply read.
 */
static void exchange(struct vmm_conn *c, struct mv_handover_msg *reqs, size_t n,
                     int *results, struct mv_handover_msg *reply)
{
    uint64_t deadline = reply_deadline();
    size_t sent = 0, answered = 0;
    uint32_t first;
    int rc = 0;

    pthread_mutex_lock(&c->call_lock);
    first = c->seq + 1;
    for (size_t i = 0; i < n; i++)
        results[i] = MV_VMM_PENDING;
    for (;;) {
        struct mv_handover_msg r;
        uint64_t now;
        size_t i;
        int got;

        while (rc == 0 && sent < n && sent - answered < MV_VMM_WINDOW) {
            reqs[sent].seq = ++c->seq;
            rc = send_msg(c->control, &reqs[sent]);
            sent += rc == 0;
        }
        if (answered == sent)
            break;
        now = mv__now_ns();
        got = now >= deadline ? -ETIMEDOUT
                              : recv_msg(c->control, &r, (int)((deadline - now) / 1000000) + 1,
                                         NULL, 0);
        if (got < 0) {
            rc = got;
            break;
        }
        /* Anything else is a stale reply (a request that timed out before). */
        i = (uint32_t)(r.seq - first);
        if (i >= sent || r.type != (reqs[i].type | MV_HO_REPLY) ||
            results[i] != MV_VMM_PENDING)
            continue;
        results[i] = r.result > 0 || r.result < -4095 ? -EPROTO : r.result;
        answered++;
        deadline = reply_deadline();
        if (reply)
            *reply = r;
    }
    for (size_t i = 0; i < n; i++)
        if (results[i] == MV_VMM_PENDING)
            results[i] = rc;
    pthread_mutex_unlock(&c->call_lock);
}

/* One request to the agent and its reply: 0 or -errno. */
static int call_agent_reply(struct vmm_conn *c, uint16_t type, uint64_t addr,
                            uint64_t length, uint64_t offset, uint32_t flags,
                            struct mv_handover_msg *reply)
{
    struct mv_handover_msg m;
    int rc;

    msg_init(&m, type);
    m.addr = addr;
    m.length = length;
    m.offset = offset;
    m.flags = flags;
    exchange(c, &m, 1, &rc, reply);
    return rc;
}

static int call_agent(struct vmm_conn *c, uint16_t type, uint64_t addr, uint64_t length,
                      uint64_t offset, uint32_t flags)
{
    return call_agent_reply(c, type, addr, length, offset, flags, NULL);
}

static int vmm_map(void *ctx, uint64_t addr, uint64_t length, uint64_t offset, unsigned flags)
{
    return call_agent(ctx, MV_HO_MAP, addr, length, offset,
                      flags & MV_VMM_MAP_PRIVATE ? MV_HO_MAP_PRIVATE : 0);
}

static int vmm_zap(void *ctx, uint64_t addr, uint64_t length)
{
    return call_agent(ctx, MV_HO_ZAP, addr, length, 0, 0);
}

/* Several maps or zaps, exchanged at once (mv__vmm_batch_fn). */
static void vmm_batch(void *ctx, enum mv__vmm_change what, const struct mv__vmm_run *runs,
                      size_t n, int *results)
{
    struct mv_handover_msg reqs[MV__VMM_BATCH_MAX];

    /* Beyond the contract (n <= MV__VMM_BATCH_MAX): not asked. */
    for (size_t i = MV__VMM_BATCH_MAX; i < n; i++)
        results[i] = -E2BIG;
    n = MV_MIN(n, (size_t)MV__VMM_BATCH_MAX);
    for (size_t i = 0; i < n; i++) {
        msg_init(&reqs[i], what == MV__VMM_ZAP ? MV_HO_ZAP : MV_HO_MAP);
        reqs[i].addr = runs[i].addr;
        reqs[i].length = runs[i].length;
        if (what != MV__VMM_ZAP)
            reqs[i].offset = runs[i].offset;
        if (what == MV__VMM_MAP_PRIVATE)
            reqs[i].flags = MV_HO_MAP_PRIVATE;
    }
    exchange(ctx, reqs, n, results, NULL);
}

/* Stop the VMM at once: its vCPUs must not touch the RAM again. */
static void vmm_crash(void *ctx, const char *reason)
{
    struct vmm_conn *c = ctx;

    (void)reason;
    if (c->pidfd >= 0)
        syscall(SYS_pidfd_send_signal, c->pidfd, SIGKILL, NULL, 0);
}

/* The domain lets go: stop the thread, close what it held. */
static void vmm_release(void *ctx)
{
    struct vmm_conn *c = ctx;

    pthread_mutex_lock(&c->start_lock);
    c->released = true;
    atomic_store(&c->stopping, true);
    pthread_cond_broadcast(&c->start_cond);
    pthread_mutex_unlock(&c->start_lock);
    if (c->requests >= 0)
        shutdown(c->requests, SHUT_RDWR);
    if (c->thread_started)
        pthread_join(c->thread, NULL);
    if (c->requests >= 0)
        close(c->requests);
    pthread_mutex_lock(&c->start_lock);
    if (c->control >= 0)
        close(c->control);
    c->control = -1;
    pthread_mutex_unlock(&c->start_lock);
    if (c->pidfd >= 0)
        close(c->pidfd);
    conn_put(c);
}

/* The VMM is gone: crash its domain and give its own frames back. */
static void vmm_gone(struct vmm_conn *c)
{
    struct mv_domain *d = mv__domain_get(c->host, c->domid);

    if (!d)
        return; /* being destroyed */
    mv__mutex_lock(&d->lock);
    mv__domain_crash(d, "VMM process %d exited", c->pid);
    for (uint64_t g = 0; g < d->maxmem_pages; g++)
        if (d->p2m[g] == MV_P2M_RAM &&
            mv__p2m_ops_of(MV_P2M_RAM)->release(d, g, MV_P2M_POD) < 0)
            mv__log(c->host, MV_LOG_WARN, "domain %u: cannot free gfn %#llx of the "
                    "exited VMM: %s", c->domid, (unsigned long long)g, mv_last_error());
    mv__mutex_unlock(&d->lock);
    mv__domain_put(d);
    mv__fault_kick(c->host);
}

static void serve_discard(struct vmm_conn *c, struct mv_handover_msg *m)
{
    int64_t rc;

    if (m->offset % MV_PAGE_SIZE || m->length % MV_PAGE_SIZE)
        rc = mv__fail(-EINVAL, "discard of %#llx+%#llx is not page-aligned",
                      (unsigned long long)m->offset, (unsigned long long)m->length);
    else
        rc = mv_domain_discard(c->host, c->domid, m->offset >> MV_PAGE_SHIFT,
                               m->length >> MV_PAGE_SHIFT);
    m->type |= MV_HO_REPLY;
    m->result = rc < 0 ? (int32_t)rc : 0;
    if (rc < 0)
        snprintf(m->text, sizeof(m->text), "%s", mv_last_error());
    if (send_msg(c->requests, m) < 0)
        mv__log(c->host, MV_LOG_WARN, "domain %u: cannot answer its VMM's discard",
                c->domid);
}

static void *serve_vmm(void *arg)
{
    struct vmm_conn *c = arg;

    /* Only once the domain exists (or is not to be). */
    pthread_mutex_lock(&c->start_lock);
    while (!c->go && !atomic_load(&c->stopping))
        pthread_cond_wait(&c->start_cond, &c->start_lock);
    pthread_mutex_unlock(&c->start_lock);
    while (!atomic_load(&c->stopping)) {
        struct mv_handover_msg m;
        int rc = recv_msg(c->requests, &m, -1, NULL, 0);

        if (atomic_load(&c->stopping))
            break;
        if (rc == -EPIPE || rc == -ECONNRESET) {
            mv__log(c->host, MV_LOG_INFO, "domain %u: VMM process %d exited",
                    c->domid, c->pid);
            vmm_gone(c);
            break;
        }
        if (rc < 0) {
            mv__log(c->host, MV_LOG_WARN, "domain %u: bad request from VMM %d (%s): "
                    "stopping it", c->domid, c->pid, mv_strerror(rc));
            vmm_crash(c, "protocol error");
            vmm_gone(c);
            break;
        }
        if (m.type == MV_HO_DISCARD) {
            serve_discard(c, &m);
        } else {
            m.type |= MV_HO_REPLY;
            m.result = -EOPNOTSUPP;
            snprintf(m.text, sizeof(m.text), "unknown request type %u", m.type & 0x7f);
            (void)send_msg(c->requests, &m);
        }
    }
    return NULL;
}

static void send_ready(int control, int result, uint32_t domid, const char *why)
{
    struct mv_handover_msg m;

    msg_init(&m, MV_HO_READY);
    m.result = result;
    m.domid = domid;
    if (why)
        snprintf(m.text, sizeof(m.text), "%s", why);
    (void)send_msg(control, &m);
}

int mv_vmm_accept(mv_host *host, int control, const struct mv_domain_config *config,
                  unsigned timeout_ms, uint32_t *domid)
{
    struct mv_handover_msg hello;
    struct mv_vmm_ram vmm = { .uffd = -1, .wp_uffd = -1, .pagemap_fd = -1 };
    struct vmm_conn *c;
    int fds[MV_HANDOVER_FDS], spare = -1, rc;
    uint32_t id = 0;

    mv__clear_error();
    if (!host || !config || !domid || control < 0) {
        if (control >= 0)
            close(control);
        return mv__fail(-EINVAL, "host, config, domid and the control socket are needed");
    }
    rc = recv_msg(control, &hello, timeout_ms ? (int)timeout_ms : -1, fds, MV_HANDOVER_FDS);
    if (rc < 0) {
        close(control);
        return mv__fail(rc, "no hand-over from the VMM: %s",
                        rc == -ETIMEDOUT ? "it did not say hello in time (is the agent "
                                           "loaded, and does the VMM map its RAM from "
                                           "the machine file?)"
                                         : mv_strerror(rc));
    }
    c = mv__calloc(1, sizeof(*c));
    if (!c) {
        rc = mv__fail(-ENOMEM, "no memory for a VMM connection");
    } else {
        c->host = host;
        c->pid = hello.pid;
        c->control = control;
        c->requests = fds[3];
        c->pidfd = (int)syscall(SYS_pidfd_open, hello.pid, 0);
        atomic_init(&c->refs, 2); /* the domain's, and this call's */
        pthread_mutex_init(&c->call_lock, NULL);
        pthread_mutex_init(&c->start_lock, NULL);
        pthread_cond_init(&c->start_cond, NULL);
        if (hello.type != MV_HO_HELLO)
            rc = mv__fail(-EPROTO, "the VMM's first message is type %u, not HELLO",
                          hello.type);
        else if (fds[0] < 0 || fds[1] < 0 || fds[2] < 0 || fds[3] < 0)
            rc = mv__fail(-EPROTO, "the VMM's HELLO carries fewer than %d descriptors",
                          MV_HANDOVER_FDS);
        else if (c->pidfd < 0)
            rc = mv__fail(-errno, "VMM process %d: %s", hello.pid, mv_strerror(-errno));
        else if (hello.length != config->maxmem_bytes)
            rc = mv__fail(-EINVAL, "the VMM maps %llu bytes of RAM, the domain's maxmem "
                          "is %llu", (unsigned long long)hello.length,
                          (unsigned long long)config->maxmem_bytes);
        else if ((rc = mv__os_thread_start(&c->thread, NULL, serve_vmm, c)) < 0)
            mv__fail(rc, "cannot start the VMM's request thread");
        c->thread_started = rc == 0;
    }
    if (rc < 0) {
        char why[sizeof(hello.text)];

        snprintf(why, sizeof(why), "%s", mv_last_error());
        for (int i = 0; i < 3; i++)
            if (fds[i] >= 0)
                close(fds[i]);
        send_ready(control, rc, 0, why);
        if (c) {
            vmm_release(c); /* the domain's reference, which it never took */
            conn_put(c);
        } else {
            if (fds[3] >= 0)
                close(fds[3]);
            close(control);
        }
        return mv__fail(rc, "%s", why);
    }
    vmm.pid = hello.pid;
    vmm.addr = hello.addr;
    vmm.uffd = fds[0];
    vmm.wp_uffd = fds[1];
    vmm.pagemap_fd = fds[2];
    vmm.ops = (struct mv_vmm_ops){ .map = vmm_map, .zap = vmm_zap, .crash = vmm_crash,
                                   .release = vmm_release };
    vmm.ctx = c;
    /* From here the domain holds a reference to c, failing or not; ours
     * keeps c alive until the end of this call whatever the domain does. */
    spare = dup(control);
    rc = mv__domain_create_vmm(host, config, &vmm, vmm_batch, &id);
    pthread_mutex_lock(&c->start_lock);
    if (rc < 0) {
        char why[sizeof(hello.text)];

        snprintf(why, sizeof(why), "%s", mv_last_error());
        /* Released by the failed creation, its control socket closed:
         * tell the agent on a copy made before (none: it sees the close). */
        pthread_mutex_unlock(&c->start_lock);
        if (spare >= 0) {
            send_ready(spare, rc, 0, why);
            close(spare);
        }
        conn_put(c);
        return mv__fail(rc, "%s", why);
    }
    if (!c->released) {
        c->domid = id;
        c->go = true;
        pthread_cond_broadcast(&c->start_cond);
        send_ready(c->control, 0, id, NULL);
    }
    pthread_mutex_unlock(&c->start_lock);
    if (spare >= 0)
        close(spare);
    conn_put(c);
    *domid = id;
    return 0;
}

int mv_vmm_trim(mv_host *host, uint32_t domid, uint64_t *pages_freed)
{
    struct mv_handover_msg reply;
    struct mv_domain *d;
    int rc = 0;

    mv__clear_error();
    if (pages_freed)
        *pages_freed = 0;
    if (!host)
        return mv__fail(-EINVAL, "host is NULL");
    d = mv__domain_get(host, domid);
    if (!d)
        return -ESRCH;
    /* Under the domain lock, as map and zap: the connection stays. */
    mv__mutex_lock(&d->lock);
    if (!d->vmm || d->vmm->ops.map != vmm_map)
        rc = mv__fail(-EOPNOTSUPP, "domain %u's RAM is not served through the VMM "
                      "hand-over (mv_vmm_accept)", domid);
    else if (d->state == MV_DOMAIN_CRASHED)
        rc = mv__fail(-EPERM, "domain %u has crashed", domid);
    else if ((rc = call_agent_reply(d->vmm->ctx, MV_HO_TRIM, 0, 0, 0, 0, &reply)) < 0)
        rc = mv__fail(rc, "domain %u: the VMM's agent could not trim its own memory: %s%s",
                      domid, mv_strerror(rc), rc == -EINVAL || rc == -EOPNOTSUPP ?
                      " (its kernel may not write-protect anonymous memory)" : "");
    else if (pages_freed)
        *pages_freed = reply.length;
    mv__mutex_unlock(&d->lock);
    mv__domain_put(d);
    return rc;
}

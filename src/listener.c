/*
 * Listening sockets and their accept threads; see listener.h for what
 * happens when descriptors run out and why.
 *
 * Each listener's thread waits in poll() on its socket and an eventfd that
 * ts_listener_close() writes. The reserve is a handful of open descriptors
 * of /dev/null behind a mutex: closing one frees exactly one slot in the
 * process's descriptor table for the accept4() that follows.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "clock.h"
#include "config.h"
#include "listener.h"
#include "util.h"

/* Connections the kernel queues before we accept them (bursts of reconnects). */
#define LISTEN_BACKLOG 4096
#define RESERVE_MAX 64
/* With no descriptor to spend, look at the socket again after this long. */
#define BACKOFF_MS 100
/* At most one "out of file descriptors" line per listener this often. */
#define EXHAUSTED_LOG_EVERY_NS (10 * TS_NS_PER_S)

struct ts_fd_reserve {
    pthread_mutex_t mu;
    int fds[RESERVE_MAX]; /* guarded by mu: the first `held` are open */
    unsigned held, want;
};

struct ts_listener {
    struct ts_listener_config cfg;
    char *name;
    pthread_t thread;
    int wake_fd;       /* eventfd: close requested, or room again */
    atomic_bool close; /* ts_listener_close() was called */
    /* The thread's own: */
    bool exhausted;      /* refusing or serving from the reserve since the last log */
    uint64_t refused;    /* connections refused since the last log line */
    int64_t next_log_ns; /* when the next "out of file descriptors" line may go */
};

/* ---- the reserve ---- */

int
ts_fd_reserve_new(struct ts_fd_reserve **out, unsigned count)
{
    struct ts_fd_reserve *r;

    if (count > RESERVE_MAX)
        return -EINVAL;
    r = calloc(1, sizeof(*r));
    if (r == NULL)
        return -ENOMEM;
    pthread_mutex_init(&r->mu, NULL);
    r->want = count;
    for (; r->held < count; r->held++) {
        r->fds[r->held] = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (r->fds[r->held] < 0) {
            int err = -errno;

            ts_fd_reserve_free(r);
            return err;
        }
    }
    *out = r;
    return 0;
}

void
ts_fd_reserve_free(struct ts_fd_reserve *r)
{
    if (r == NULL)
        return;
    for (unsigned i = 0; i < r->held; i++)
        close(r->fds[i]);
    pthread_mutex_destroy(&r->mu);
    free(r);
}

/* Open what is missing, as far as descriptors allow. True when whole.
 * r->mu held. */
static bool
reserve_refill_locked(struct ts_fd_reserve *r)
{
    while (r->held < r->want) {
        int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);

        if (fd < 0)
            break;
        r->fds[r->held++] = fd;
    }
    return r->held == r->want;
}

/* Free one slot of the descriptor table. False when nothing is held.
 * r->mu held. */
static bool
reserve_spend_locked(struct ts_fd_reserve *r)
{
    if (r->held == 0)
        return false;
    close(r->fds[--r->held]);
    return true;
}

/* ---- sockets ---- */

int
ts_listen_socket(const char *addr, const char *setting, int *port, char *err, size_t errlen)
{
    struct sockaddr_storage ss = {0};
    socklen_t sslen;
    char host[INET6_ADDRSTRLEN];
    const char *what = "socket";
    uint16_t portnum;
    int one = 1, fd, rc;

    if (ts_config_address_split(addr, host, sizeof(host), &portnum) != 0) {
        snprintf(err, errlen, "%s %s: not an address", setting, addr);
        return -EINVAL;
    }
    if (strchr(host, ':') != NULL) {
        struct sockaddr_in6 *sa = (struct sockaddr_in6 *)&ss;

        sa->sin6_family = AF_INET6;
        sa->sin6_port = htons(portnum);
        inet_pton(AF_INET6, host, &sa->sin6_addr);
        sslen = sizeof(*sa);
    } else {
        struct sockaddr_in *sa = (struct sockaddr_in *)&ss;

        sa->sin_family = AF_INET;
        sa->sin_port = htons(portnum);
        inet_pton(AF_INET, strcmp(host, "localhost") == 0 ? "127.0.0.1" : host, &sa->sin_addr);
        sslen = sizeof(*sa);
    }
    fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        goto fail;
    what = "setsockopt";
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0)
        goto fail;
    what = "bind";
    if (bind(fd, (struct sockaddr *)&ss, sslen) != 0)
        goto fail;
    what = "listen";
    if (listen(fd, LISTEN_BACKLOG) != 0)
        goto fail;
    sslen = sizeof(ss);
    what = "getsockname";
    if (getsockname(fd, (struct sockaddr *)&ss, &sslen) != 0)
        goto fail;
    *port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                           : ((struct sockaddr_in *)&ss)->sin_port);
    return fd;

fail:
    rc = -errno;
    if (fd >= 0)
        close(fd);
    /* "Address already in use" reads as part of a sentence in lower case. */
    snprintf(err, errlen, "%s %s: %c%s", setting, addr,
             (char)tolower((unsigned char)ts_strerror(rc)[0]), ts_strerror(rc) + 1);
    if (rc != -EADDRINUSE && rc != -EADDRNOTAVAIL && rc != -EACCES)
        snprintf(err + strlen(err), errlen - strlen(err), " (%s)", what);
    return rc;
}

/* ---- accepting ---- */

static bool
out_of_fds(int err)
{
    return err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM;
}

static void
note_exhausted(struct ts_listener *l, bool refused)
{
    int64_t now = ts_monotonic_ns();

    l->refused += refused;
    if (l->exhausted && now < l->next_log_ns)
        return;
    ts_log(l->cfg.log, TS_LOG_WARN, "out of file descriptors", TS_F_STR("listener", l->name),
           TS_F_UINT("refused", l->refused),
           TS_F_STR("effect", l->cfg.serve_from_reserve
                                  ? "connections are served from the descriptor reserve"
                                  : "new connections are refused until descriptors are free"),
           TS_F_END);
    l->exhausted = true;
    l->refused = 0;
    l->next_log_ns = now + EXHAUSTED_LOG_EVERY_NS;
}

static void
note_recovered(struct ts_listener *l)
{
    if (!l->exhausted)
        return;
    l->exhausted = false;
    ts_log(l->cfg.log, TS_LOG_INFO, "file descriptors available again",
           TS_F_STR("listener", l->name), TS_F_UINT("refused", l->refused), TS_F_END);
    l->refused = 0;
}

static int
take(struct ts_listener *l, struct sockaddr_storage *ss, socklen_t *len)
{
    *len = sizeof(*ss);
    return accept4(l->cfg.fd, (struct sockaddr *)ss, len, SOCK_NONBLOCK | SOCK_CLOEXEC);
}

enum accept_result { ACCEPTED_ALL, NO_DESCRIPTOR, AT_CAP };

/*
 * Accept everything queued, until the owner is at its cap or there is no
 * descriptor to spend (then the caller backs off).
 *
 * Each step (refill, accept, or spend a slot and accept into it) holds the
 * reserve's lock, which every listener of the server takes for the same: a
 * slot one listener frees is never taken by another's refill or accept
 * before its own accept4() (other threads opening files still can; then the
 * next slot is tried, as long as the reserve has one).
 */
static enum accept_result
accept_all(struct ts_listener *l)
{
    struct ts_fd_reserve *r = l->cfg.reserve;
    bool serve = l->cfg.serve_from_reserve;
    struct sockaddr_storage ss;
    socklen_t len;

    for (;;) {
        bool whole, spent = false, none = false;
        int fd = -1, err = 0;

        if (l->cfg.admit != NULL && !l->cfg.admit(l->cfg.arg))
            return AT_CAP;
        pthread_mutex_lock(&r->mu);
        whole = reserve_refill_locked(r);
        /* Only a listener that may serve from the reserve accepts while it
         * is not whole: the others would take what the probes need. */
        if (whole || serve) {
            fd = take(l, &ss, &len);
            err = fd < 0 ? errno : 0;
        }
        /* Out of descriptors, or keeping the reserve whole: one slot. */
        if ((!whole && !serve) || (fd < 0 && out_of_fds(err))) {
            none = !reserve_spend_locked(r);
            if (!none) {
                spent = true;
                fd = take(l, &ss, &len);
                err = fd < 0 ? errno : 0;
                if (fd < 0)
                    reserve_refill_locked(r); /* the slot spent for nothing */
            }
        }
        pthread_mutex_unlock(&r->mu);

        if (none) {
            note_exhausted(l, false);
            return NO_DESCRIPTOR;
        }
        if (fd >= 0) {
            if (!spent) {
                if (whole)
                    note_recovered(l);
                l->cfg.on_accept(l->cfg.arg, fd, (struct sockaddr *)&ss, len);
            } else if (serve) {
                note_exhausted(l, false);
                l->cfg.on_accept(l->cfg.arg, fd, (struct sockaddr *)&ss, len);
            } else {
                close(fd);
                note_exhausted(l, true);
            }
            continue;
        }
        if (err == EAGAIN || err == EWOULDBLOCK)
            return ACCEPTED_ALL;
        if (err == EINTR || err == ECONNABORTED || err == EPROTO || err == EPERM)
            continue;
        if (out_of_fds(err))
            continue; /* the slot went to another thread: the next one */
        ts_log(l->cfg.log, TS_LOG_ERROR, "accept failed", TS_F_STR("listener", l->name),
               TS_F_STR("error", ts_strerror(-err)), TS_F_END);
        return NO_DESCRIPTOR;
    }
}

static void *
accept_main(void *arg)
{
    struct ts_listener *l = arg;
    enum accept_result last = ACCEPTED_ALL;

    while (!atomic_load(&l->close)) {
        struct pollfd fds[2] = {
            {.fd = l->wake_fd, .events = POLLIN},
            {.fd = l->cfg.fd, .events = POLLIN},
        };
        /* At the cap only the wake-up (room again) is awaited; without a
         * descriptor, a short back-off; else the socket. */
        int n = poll(fds, last == ACCEPTED_ALL ? 2 : 1, last == NO_DESCRIPTOR ? BACKOFF_MS : -1);
        eventfd_t ignored;

        if (n < 0 && errno != EINTR)
            break;
        if (atomic_load(&l->close))
            break;
        if (fds[0].revents & POLLIN)
            eventfd_read(l->wake_fd, &ignored);
        if (last != ACCEPTED_ALL || (fds[1].revents & (POLLIN | POLLERR | POLLHUP)))
            last = accept_all(l);
    }
    close(l->cfg.fd);
    return NULL;
}

int
ts_listener_start(struct ts_listener **out, const struct ts_listener_config *cfg)
{
    struct ts_listener *l;
    int err;

    l = calloc(1, sizeof(*l));
    if (l == NULL) {
        err = -ENOMEM;
        goto out_close;
    }
    l->cfg = *cfg;
    atomic_init(&l->close, false);
    l->name = strdup(cfg->name);
    l->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (l->name == NULL || l->wake_fd < 0) {
        err = l->name == NULL ? -ENOMEM : -errno;
        goto out_free;
    }
    /* Published before the thread starts: the owner's threads, which get
     * connections from it, may use *out (ts_listener_resume()) at once. */
    *out = l;
    err = -pthread_create(&l->thread, NULL, accept_main, l);
    if (err != 0) {
        *out = NULL;
        goto out_free;
    }
    return 0;

out_free:
    if (l->wake_fd >= 0)
        close(l->wake_fd);
    free(l->name);
    free(l);
out_close:
    close(cfg->fd);
    return err;
}

void
ts_listener_close(struct ts_listener *l)
{
    if (l == NULL || atomic_exchange(&l->close, true))
        return;
    eventfd_write(l->wake_fd, 1);
    /* The socket is closed when this returns: nothing is accepted after. */
    pthread_join(l->thread, NULL);
}

void
ts_listener_resume(struct ts_listener *l)
{
    eventfd_write(l->wake_fd, 1);
}

void
ts_listener_free(struct ts_listener *l)
{
    if (l == NULL)
        return;
    ts_listener_close(l);
    close(l->wake_fd);
    free(l->name);
    free(l);
}

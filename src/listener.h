/*
 * Listening sockets of our own, and the thread that accepts on each.
 *
 * A listener binds with SO_REUSEADDR and never SO_REUSEPORT (a second
 * process on the same port fails instead of sharing it), accepts with
 * accept4() on a thread of its own and hands every connection to its owner's
 * callback. Running out of descriptors (EMFILE, ENFILE) never becomes a busy
 * loop: the process keeps a small reserve of descriptors (struct
 * ts_fd_reserve, one per server, shared by its listeners). A listener marked
 * `serve_from_reserve` (the admin listener: probes must be answered while
 * the public side is exhausted) spends a reserve descriptor to accept and
 * serve; any other refuses (accepts and closes at once, the libuv technique)
 * whenever the reserve is not whole, so it can never eat the descriptors the
 * probes need. With no descriptor at all to spend, a listener stops
 * watching its socket for a short back-off. Each listener logs "out of file
 * descriptors" at most once per interval, with the count refused.
 */
#ifndef TS_LISTENER_H
#define TS_LISTENER_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "log.h"

struct ts_fd_reserve;
struct ts_listener;

/* `count` descriptors (of /dev/null) held back for the listeners. */
int ts_fd_reserve_new(struct ts_fd_reserve **out, unsigned count);
void ts_fd_reserve_free(struct ts_fd_reserve *r);

/*
 * Bind `addr` ("host:port" as ts_config_address_split() takes it; "localhost"
 * is 127.0.0.1) and listen. Returns the descriptor, and the bound port in
 * *port, or a negative errno with "<setting> <addr>: address already in use"
 * in `err`.
 */
int ts_listen_socket(const char *addr, const char *setting, int *port, char *err, size_t errlen);

/* Called on the listener's thread with each accepted connection (non-blocking,
 * close-on-exec); the callee owns `fd`. It must not block. */
typedef void ts_accept_cb(void *arg, int fd, const struct sockaddr *sa, socklen_t salen);

/* Asked before each accept: false (the owner is at its connection cap)
 * pauses the listener, connections wait in the kernel's queue, until
 * ts_listener_resume(). */
typedef bool ts_admit_cb(void *arg);

struct ts_listener_config {
    const char *name;              /* "public" or "admin", for logs */
    int fd;                        /* from ts_listen_socket(); the listener owns it */
    bool serve_from_reserve;       /* accept with a reserve descriptor when out of them */
    struct ts_fd_reserve *reserve; /* shared, borrowed */
    ts_accept_cb *on_accept;
    ts_admit_cb *admit; /* NULL: always */
    void *arg;
    struct ts_log *log;
};

/* Start accepting. *out is set before the first connection is handed over
 * (NULL again on error). On error the descriptor is closed. */
int ts_listener_start(struct ts_listener **out, const struct ts_listener_config *cfg);

/* Stop accepting and close the socket: once it returns, nothing more is
 * accepted and new connection attempts are refused by the kernel.
 * Idempotent; the owner's thread (not the accept callback). */
void ts_listener_close(struct ts_listener *l);

/* The owner has room again: accept what waits. Any thread, never blocks. */
void ts_listener_resume(struct ts_listener *l);

/* Close (if not yet) and free. NULL is fine. */
void ts_listener_free(struct ts_listener *l);

#endif

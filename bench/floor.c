/*
 * floor: the lowest CPU cost of writing the fan-out frames to the fan-out
 * sockets on this kernel, the denominator of "CPU per delivery vs floor" in
 * docs/performance.md (bench/run.py runs it as the fan-out server "floor").
 *
 *     floor PORT SUBS RATE SECONDS [--threads N]
 *
 * It is taskstreamd as far as bench/sseload (sub --seq id) can tell, and does
 * nothing else. A client's request head (up to CRLFCRLF, the path ignored) gets
 * taskstreamd's response head and its `retry: 2000` chunk. When SUBS have been
 * answered (0: never) or at SIGUSR1, RATE ticks a second go out, RATE * SECONDS
 * of them (at most 1,000,000, the ticker's count), each the ticker's frame
 * `id: n\nevent: tick\ndata: {"n":n,"count":N,"sent_us":t}\n\n` encoded once
 * as one HTTP chunk. A caught-up stream gets each chunk with one write(); a full
 * socket waits for EPOLLOUT, then gets all it missed in one writev(). A stream
 * is only a cursor into the ring of the last chunks, as all send the same
 * bytes. --threads N splits the streams over N threads, each woken once per
 * tick by its eventfd.
 *
 * It stops after the last tick, once every stream has gone after the start, or
 * at SIGTERM/SIGINT, and prints a JSON line: ticks, deliveries (chunks written
 * whole), CPU (getrusage RUSAGE_SELF, all threads) and wall seconds from the
 * first tick on, and CPU us per delivery. Started by SIGUSR1 it then waits for
 * SIGTERM/SIGINT before it exits.
 */
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define RING 16384 /* a stream RING/2 chunks behind is dropped before it is lapped */
#define SLOT_BYTES 128
#define IOV_BATCH 64
#define HEAD_MAX 1024
#define MAX_THREADS 64

static const char response[] = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                               "Cache-Control: no-cache\r\nX-Accel-Buffering: no\r\n"
                               "Transfer-Encoding: chunked\r\n\r\nd\r\nretry: 2000\n\n\r\n";

enum kind { K_LISTEN, K_TIMER, K_SIGNAL, K_WAKE, K_HEAD, K_STREAM };

/* A connection. Never freed: a closed one may still be named by events of
 * the current epoll batch, and a run holds some thousands at most. */
struct sub {
    enum kind kind;
    int fd;
    bool blocked;  /* waiting for EPOLLOUT */
    uint64_t next; /* the next chunk to write */
    size_t off;    /* bytes of it written already */
    size_t idx;    /* in its writer's subs[] */
    size_t hlen;
    char head[HEAD_MAX]; /* the request head so far */
};

struct writer {
    int ep, wake; /* wake: eventfd (--threads) */
    pthread_t tid;
    pthread_mutex_t mu; /* subs[] against the accepting thread */
    struct sub **subs, tag;
    size_t n, cap;
    uint64_t deliveries, closed, dropped;
};

static struct slot {
    uint32_t len;
    char b[SLOT_BYTES];
} ring[RING];
static _Atomic uint64_t published; /* the last tick in ring[] */
static atomic_int live;            /* streams being written */
static atomic_bool stopping;
static uint64_t count, answered;
static struct writer *ws;
static int nthreads = 1, ep;

static int64_t
now_ns(clockid_t clk)
{
    struct timespec ts;

    clock_gettime(clk, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static double
cpu_s(void)
{
    struct rusage ru;

    getrusage(RUSAGE_SELF, &ru);
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static void
drop(struct writer *w, struct sub *s, uint64_t *counter)
{
    close(s->fd); /* which takes it out of the epoll */
    s->fd = -1;
    w->subs[s->idx] = w->subs[--w->n];
    w->subs[s->idx]->idx = s->idx;
    (*counter)++;
    atomic_fetch_sub(&live, 1);
}

/* Write the chunks `s` has not had, up to `pub`: one write() when it is
 * caught up (the usual case), one writev() of all it missed otherwise. */
static void
flush(struct writer *w, struct sub *s, uint64_t pub)
{
    struct iovec iov[IOV_BATCH];
    int cnt = 0;
    ssize_t n;

    if (s->next > pub)
        return;
    if (pub - s->next >= RING / 2) {
        drop(w, s, &w->dropped);
        return;
    }
    for (uint64_t q = s->next; q <= pub && cnt < IOV_BATCH; q++, cnt++)
        iov[cnt] = (struct iovec){ring[q % RING].b, ring[q % RING].len};
    iov[0].iov_base = (char *)iov[0].iov_base + s->off;
    iov[0].iov_len -= s->off;
    n = cnt == 1 ? write(s->fd, iov[0].iov_base, iov[0].iov_len) : writev(s->fd, iov, cnt);
    if (n < 0 && errno != EAGAIN && errno != EINTR) {
        drop(w, s, &w->closed);
        return;
    }
    for (int i = 0; n >= 0 && i < cnt && (size_t)n >= iov[i].iov_len; i++) {
        n -= (ssize_t)iov[i].iov_len;
        s->next++;
        s->off = 0;
        w->deliveries++;
    }
    s->off += n > 0 ? (size_t)n : 0;
    if ((s->next <= pub) != s->blocked) {
        struct epoll_event e = {.events = EPOLLIN | (s->blocked ? 0 : EPOLLOUT), .data.ptr = s};

        s->blocked = !s->blocked;
        epoll_ctl(w->ep, EPOLL_CTL_MOD, s->fd, &e);
    }
}

static void
publish_to(struct writer *w)
{
    uint64_t pub = atomic_load_explicit(&published, memory_order_acquire);

    for (size_t i = w->n; i-- > 0;) /* backwards: drop() moves the last one here */
        if (!w->subs[i]->blocked)
            flush(w, w->subs[i], pub);
}

static void
handle(struct writer *w, struct sub *s, uint32_t ev)
{
    char buf[256];
    uint64_t v;

    if (s->kind == K_WAKE) {
        if (read(w->wake, &v, sizeof(v)) < 0 && errno != EAGAIN)
            perror("floor: eventfd");
        publish_to(w);
        return;
    }
    if (s->fd < 0)
        return;
    if (ev & (EPOLLIN | EPOLLERR | EPOLLHUP)) { /* the client only ever goes away */
        ssize_t r = recv(s->fd, buf, sizeof(buf), 0);

        if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {
            drop(w, s, &w->closed);
            return;
        }
    }
    if (ev & EPOLLOUT)
        flush(w, s, atomic_load_explicit(&published, memory_order_acquire));
}

static void *
writer_main(void *arg)
{
    struct writer *w = arg;
    struct epoll_event evs[256];

    while (!atomic_load(&stopping)) {
        int n = epoll_wait(w->ep, evs, 256, -1);

        pthread_mutex_lock(&w->mu);
        for (int i = 0; i < n; i++)
            handle(w, evs[i].data.ptr, evs[i].events);
        pthread_mutex_unlock(&w->mu);
    }
    return NULL;
}

static void
encode(uint64_t seq)
{
    char frame[SLOT_BYTES];
    int f = snprintf(frame, sizeof(frame),
                     "id: %" PRIu64 "\nevent: tick\ndata: {\"n\":%" PRIu64 ",\"count\":%" PRIu64
                     ",\"sent_us\":%" PRId64 "}\n\n",
                     seq, seq, count, now_ns(CLOCK_REALTIME) / 1000);
    struct slot *sl = &ring[seq % RING];

    sl->len = (uint32_t)snprintf(sl->b, sizeof(sl->b), "%x\r\n%s\r\n", (unsigned)f, frame);
    atomic_store_explicit(&published, seq, memory_order_release);
}

/* More of a request head. Once it is whole: the response head, and the socket
 * goes to a writer (round robin). True if it was answered. */
static bool
read_head(struct sub *s)
{
    struct writer *w = &ws[answered % (uint64_t)nthreads];
    struct epoll_event e = {.events = EPOLLIN, .data.ptr = s};
    ssize_t r = recv(s->fd, s->head + s->hlen, HEAD_MAX - s->hlen, 0);
    bool whole;

    if (r < 0 && (errno == EAGAIN || errno == EINTR))
        return false;
    s->hlen += r > 0 ? (size_t)r : 0;
    whole = memmem(s->head, s->hlen, "\r\n\r\n", 4) != NULL;
    if (r > 0 && !whole && s->hlen < HEAD_MAX)
        return false;
    if (!whole || write(s->fd, response, sizeof(response) - 1) != sizeof(response) - 1) {
        close(s->fd);
        s->fd = -1;
        return false;
    }
    if (nthreads > 1)
        epoll_ctl(ep, EPOLL_CTL_DEL, s->fd, NULL);
    pthread_mutex_lock(&w->mu);
    if (w->n == w->cap) {
        w->cap = w->cap ? 2 * w->cap : 1024;
        w->subs = realloc(w->subs, w->cap * sizeof(*w->subs));
    }
    s->kind = K_STREAM;
    s->next = atomic_load(&published) + 1;
    s->idx = w->n;
    w->subs[w->n++] = s;
    epoll_ctl(w->ep, nthreads > 1 ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, s->fd, &e);
    pthread_mutex_unlock(&w->mu);
    atomic_fetch_add(&live, 1);
    return ++answered;
}

static int
watch(int efd, int fd, void *ptr)
{
    struct epoll_event e = {.events = EPOLLIN, .data.ptr = ptr};

    return fd < 0 ? -1 : epoll_ctl(efd, EPOLL_CTL_ADD, fd, &e);
}

int
main(int argc, char **argv)
{
    static struct sub l_tag = {.kind = K_LISTEN}, t_tag = {.kind = K_TIMER},
                      s_tag = {.kind = K_SIGNAL};
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    struct epoll_event evs[256];
    struct rlimit rl;
    sigset_t set;
    int lfd, tfd, sfd, one = 1, port = argc > 1 ? (int)strtol(argv[1], NULL, 10) : 0, subs = 0;
    double rate = 0, seconds = 0, cpu0 = 0, cpu1, wall = 0;
    int64_t t0 = 0;
    uint64_t deliveries = 0, closed = 0, dropped = 0;
    bool started = false, done = false, driven = false, termed = false;

    if (argc == 7 && strcmp(argv[5], "--threads") == 0)
        nthreads = (int)strtol(argv[6], NULL, 10);
    if (argc == 5 || argc == 7) {
        subs = (int)strtol(argv[2], NULL, 10);
        rate = strtod(argv[3], NULL);
        seconds = strtod(argv[4], NULL);
    }
    if ((argc != 5 && argc != 7) || port <= 0 || port > 65535 || subs < 0 || !(rate > 0) ||
        !(seconds > 0) || nthreads < 1 || nthreads > MAX_THREADS) {
        fprintf(stderr, "usage: floor PORT SUBS RATE SECONDS [--threads N]\n");
        return 2;
    }
    count = rate * seconds < 1e6 ? (uint64_t)(rate * seconds) : 1000000;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    sigaction(SIGPIPE, &(struct sigaction){.sa_handler = SIG_IGN}, NULL);
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigprocmask(SIG_BLOCK, &set, NULL); /* before any thread, which inherits it */

    sa.sin_port = htons((uint16_t)port);
    lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    ep = epoll_create1(EPOLL_CLOEXEC);
    tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    sfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    ws = calloc((size_t)nthreads, sizeof(*ws));
    if (bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(lfd, 4096) != 0 ||
        watch(ep, lfd, &l_tag) || watch(ep, tfd, &t_tag) || watch(ep, sfd, &s_tag) || !ws) {
        perror("floor");
        return 1;
    }
    for (int k = 0; k < nthreads; k++) {
        struct writer *w = &ws[k];

        pthread_mutex_init(&w->mu, NULL);
        w->ep = ep;
        w->tag.kind = K_WAKE;
        if (nthreads > 1 && ((w->ep = epoll_create1(EPOLL_CLOEXEC)) < 0 ||
                             watch(w->ep, w->wake = eventfd(0, EFD_NONBLOCK), &w->tag) ||
                             pthread_create(&w->tid, NULL, writer_main, w) != 0)) {
            perror("floor: thread");
            return 1;
        }
    }
    fprintf(stderr, "floor: 127.0.0.1:%d, %d thread(s), %" PRIu64 " ticks at %g/s\n", port,
            nthreads, count, rate);

    while (!done) {
        int n = epoll_wait(ep, evs, 256, -1);

        for (int i = 0; i < n; i++) {
            struct sub *s = evs[i].data.ptr;
            struct signalfd_siginfo si;
            uint64_t ticks;
            bool start = false;
            int fd;

            switch (s->kind) {
            case K_LISTEN:
                while ((fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                    if ((s = calloc(1, sizeof(*s))) != NULL) {
                        s->kind = K_HEAD;
                        s->fd = fd;
                    }
                    if (s == NULL || watch(ep, fd, s) != 0)
                        close(fd);
                }
                break;
            case K_HEAD:
                start = s->fd >= 0 && read_head(s) && answered == (uint64_t)subs;
                break;
            case K_TIMER: /* ticks are due (several if this thread was late) */
                if (read(tfd, &ticks, sizeof(ticks)) != sizeof(ticks))
                    break;
                for (; ticks > 0 && !done; ticks--) {
                    encode(atomic_load(&published) + 1);
                    done = atomic_load(&published) == count;
                }
                for (int k = 0; k < nthreads; k++)
                    if (nthreads == 1)
                        publish_to(&ws[k]);
                    else if (write(ws[k].wake, &(uint64_t){1}, 8) != 8)
                        perror("floor: eventfd");
                break;
            case K_SIGNAL:
                while (read(sfd, &si, sizeof(si)) == sizeof(si)) {
                    if (si.ssi_signo == SIGUSR1 && !started)
                        start = driven = true;
                    else if (si.ssi_signo != SIGUSR1)
                        done = termed = true;
                }
                break;
            default:
                handle(&ws[0], s, evs[i].events);
            }
            if (start && !started) { /* the first tick now, then one every 1/RATE s */
                int64_t iv = (int64_t)(1e9 / rate);
                struct itimerspec its = {{iv / 1000000000, iv % 1000000000}, {0, 1}};

                started = true;
                t0 = now_ns(CLOCK_MONOTONIC);
                cpu0 = cpu_s();
                timerfd_settime(tfd, 0, &its, NULL);
            }
        }
        done |= started && atomic_load(&live) == 0;
    }

    cpu1 = cpu_s();
    wall = started ? (double)(now_ns(CLOCK_MONOTONIC) - t0) / 1e9 : 0;
    atomic_store(&stopping, true);
    for (int k = 0; k < nthreads; k++) {
        if (nthreads > 1) {
            if (write(ws[k].wake, &(uint64_t){1}, 8) != 8)
                perror("floor: eventfd");
            pthread_join(ws[k].tid, NULL);
        }
        publish_to(&ws[k]);                    /* if its thread stopped before the last tick */
        for (size_t i = 0; i < ws[k].n; i++) { /* the last chunk to those caught up */
            if (ws[k].subs[i]->next > atomic_load(&published))
                closed += write(ws[k].subs[i]->fd, "0\r\n\r\n", 5) != 5;
            close(ws[k].subs[i]->fd);
        }
        deliveries += ws[k].deliveries;
        closed += ws[k].closed;
        dropped += ws[k].dropped;
    }
    printf("{\"server\":\"floor\",\"threads\":%d,\"rate\":%g,\"subscribers\":%" PRIu64
           ",\"events\":%" PRIu64 ",\"deliveries\":%" PRIu64 ",\"closed\":%" PRIu64
           ",\"dropped\":%" PRIu64 ",\"cpu_s\":%.6f,\"cpu_total_s\":%.6f,\"wall_s\":%.6f"
           ",\"cpu_us_per_delivery\":%.4f}\n",
           nthreads, rate, answered, atomic_load(&published), deliveries, closed, dropped,
           cpu1 - cpu0, cpu1, wall, deliveries ? 1e6 * (cpu1 - cpu0) / (double)deliveries : 0.0);
    fflush(stdout);
    /* Started by a signal, it is driven (bench/run.py): it stays until told to
     * go, so that its CPU time can still be read from /proc. */
    for (int sig = 0; driven && !termed && (sig == 0 || sig == SIGUSR1);)
        sig = sigwaitinfo(&set, NULL);
    return 0;
}

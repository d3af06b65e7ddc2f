/* Lean live WebSocket clients for bench_fanout.py: many connections in one process.
 *
 * Built by bench_fanout.py with the system C compiler into its temporary directory
 * (`cc -O2 -o fanout_client fanout_client.c`); nothing else is needed.
 *
 *   fanout_client HOST PORT TOKEN INIT_TEXT [spin]
 *
 * spin: poll (epoll_wait with no timeout) instead of sleeping when nothing is ready, so
 * the server's writes never have to wake this process (on loopback the sender pays the
 * wake-up, on a VM an inter-processor interrupt); costs a whole core.
 *
 * stdin, one command a line:
 *   path P         a client of P (e.g. /api/resources/demo/_common/datasets/WL-0001/live?…)
 *   go             open every client: a non-blocking connect, the RFC 6455 client handshake
 *                  (Authorization: Bearer TOKEN; the Sec-WebSocket-Accept is checked), then
 *                  INIT_TEXT as one masked text frame; at most 100 handshakes in flight.
 *                  Prints "connected N failed M FIRST-FAILURE" once every client is done.
 *   clock T        T: the sender's CLOCK_REALTIME in seconds (Python's time.time());
 *                  prints "clock D": this process's CLOCK_REALTIME minus T, in seconds
 *   window W0 W1   count from now on: forget what was counted, then count each LIVE_DATA
 *                  whose "ts" (the publisher's time.time(), seconds) is in [W0, W1)
 *   report PATH    writes the latency histogram to PATH (uint32 counts, see below) and prints
 *                  "report received=… missed=… frames=… bytes=… disconnected=… max_us=…
 *                   max_read_us=… no_stamp=… reads=… drift_us=… [other:TYPE=N …]"
 *                  (no_stamp: reads without a kernel timestamp, timed at read instead)
 *   stop (or EOF)  exit
 *
 * Each LIVE_DATA frame is parsed in full (header, 7/16/64-bit length) and timed twice,
 * against its "ts":
 *  - "kernel": the socket's receive timestamp (SO_TIMESTAMPNS, CLOCK_REALTIME: when the
 *    data reached this socket, i.e. when the server's write got through loopback), of
 *    the newest data in the read; independent of when this process got to read it, so
 *    the clients' own CPU and scheduling stay out of it (for a read holding several
 *    writes, the older frames get the newest one's time: an upper bound);
 *  - "read": clock_gettime(CLOCK_REALTIME) (the clock of time.time()) once after each
 *    recvmsg() returns: what an application would see.
 * Pings are answered.  The report file holds two histograms of NBINS uint32 each,
 * "kernel" then "read": bin i < 100000 holds latencies of i µs (1 µs bins up to 100 ms);
 * bin 100000 + k holds 100 ms + k × 100 µs (100 µs bins up to 10 s); the last bin, more.
 * drift_us: how much CLOCK_REALTIME moved against CLOCK_MONOTONIC between window and
 * report (a clock step or NTP slew during the window would bias every latency by it).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define FINE_BINS 100000u           /* 1 µs each: 0 .. 100 ms */
#define COARSE_BINS 99000u          /* 100 µs each: 100 ms .. 10 s */
#define NBINS (FINE_BINS + COARSE_BINS + 1)
#define MAX_PENDING 100
#define READ_CAP (1u << 20)
#define STDIN_ID UINT32_MAX
#define ACCEPT "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" /* of the key dGhlIHNhbXBsZSBub25jZQ== */

enum { IDLE, CONNECTING, HANDSHAKE, OPEN, CLOSED };

typedef struct {
    int fd;
    int state;
    char *path;
    unsigned char *left; /* bytes of an incomplete frame (or response head) */
    uint32_t nleft, capleft;
} conn_t;

static conn_t *conns;
static uint32_t nconns, next_start, pending, connected, failed, disconnected;
static int epfd;
static const char *host, *token, *init_text;
static int port;
static char first_failure[160];
static int announced;

static double w0, w1;
static uint64_t received, missed, frames, nbytes, max_us, max_read_us, no_stamp, reads;
static uint32_t *hist, *hist_read; /* kernel receive time, read time */
static double mono_off_at_window; /* realtime - monotonic when the window was set */

#define MAX_OTHER 32
static char other_name[MAX_OTHER][40];
static uint64_t other_count[MAX_OTHER];

static uint64_t rng = 0x9E3779B97F4A7C15ull;

static double clock_s(clockid_t id) {
    struct timespec t;
    clock_gettime(id, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void count_other(const char *name, size_t n) {
    if (n > 39) n = 39;
    for (int i = 0; i < MAX_OTHER; i++) {
        if (other_name[i][0] == 0) {
            memcpy(other_name[i], name, n);
            other_name[i][n] = 0;
        }
        if (strlen(other_name[i]) == n && memcmp(other_name[i], name, n) == 0) {
            other_count[i]++;
            return;
        }
    }
}

static void send_frame(conn_t *c, int opcode, const unsigned char *payload, size_t n) {
    /* client frames are masked (RFC 6455 5.3); only short ones are sent here */
    unsigned char out[256 + 14];
    size_t h = 0;
    if (n > 256) n = 256;
    out[h++] = (unsigned char)(0x80 | opcode);
    if (n < 126) {
        out[h++] = (unsigned char)(0x80 | n);
    } else {
        out[h++] = 0x80 | 126;
        out[h++] = (unsigned char)(n >> 8);
        out[h++] = (unsigned char)n;
    }
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    unsigned char mask[4] = {(unsigned char)rng, (unsigned char)(rng >> 8),
                             (unsigned char)(rng >> 16), (unsigned char)(rng >> 24)};
    memcpy(out + h, mask, 4);
    h += 4;
    for (size_t i = 0; i < n; i++) out[h + i] = payload[i] ^ mask[i & 3];
    if (send(c->fd, out, h + n, MSG_NOSIGNAL) < 0) count_other("send-error", 10);
}

static void close_conn(conn_t *c) {
    if (c->state == CLOSED) return;
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    if (c->state == OPEN) disconnected++;
    c->state = CLOSED;
}

static void keep_left(conn_t *c, const unsigned char *p, size_t n) {
    if (n > c->capleft) {
        c->capleft = (uint32_t)(n < 4096 ? 4096 : n);
        c->left = realloc(c->left, c->capleft);
        if (!c->left) { perror("realloc"); exit(2); }
    }
    memmove(c->left, p, n);
    c->nleft = (uint32_t)n;
}

static void note(uint32_t *h, uint64_t *maximum, double lat) {
    uint64_t us = lat > 0 ? (uint64_t)(lat * 1e6) : 0;
    if (us > *maximum) *maximum = us;
    uint32_t bin = us < FINE_BINS ? (uint32_t)us
                  : us < FINE_BINS + (uint64_t)COARSE_BINS * 100
                      ? FINE_BINS + (uint32_t)((us - FINE_BINS) / 100)
                      : NBINS - 1;
    h[bin]++;
}

static void on_text(const unsigned char *p, size_t n, double stamp, double now) {
    static const char live[] = "{\"type\":\"LIVE_DATA\"";
    frames++;
    if (n >= sizeof live - 1 && memcmp(p, live, sizeof live - 1) == 0) {
        const unsigned char *t = memmem(p, n, ",\"ts\":", 6);
        if (!t) { count_other("LIVE_DATA-without-ts", 20); return; }
        char num[40];
        size_t k = (size_t)(p + n - (t + 6));
        if (k > 39) k = 39;
        memcpy(num, t + 6, k);
        num[k] = 0;
        double ts = strtod(num, NULL);
        const unsigned char *m = memmem(p, n, "\"missed\":", 9);
        if (m) missed += strtoull((const char *)m + 9, NULL, 10);
        if (ts >= w0 && ts < w1) {
            received++;
            note(hist, &max_us, stamp - ts);
            note(hist_read, &max_read_us, now - ts);
        }
        return;
    }
    /* {"type":"X"…: count X */
    const unsigned char *t = memmem(p, n < 64 ? n : 64, "\"type\":\"", 8);
    if (t) {
        const unsigned char *s = t + 8, *e = memchr(s, '"', (size_t)(p + n - s));
        if (e) { count_other((const char *)s, (size_t)(e - s)); return; }
    }
    count_other("non-json", 8);
}

/* parse the frames in p[0..n); keep an incomplete one for the next read */
static void on_frames(conn_t *c, const unsigned char *p, size_t n, double stamp, double now) {
    size_t pos = 0;
    while (n - pos >= 2) {
        unsigned b0 = p[pos], b1 = p[pos + 1];
        uint64_t len = b1 & 0x7f;
        size_t h = 2;
        if (len == 126) {
            if (n - pos < 4) break;
            len = ((uint64_t)p[pos + 2] << 8) | p[pos + 3];
            h = 4;
        } else if (len == 127) {
            if (n - pos < 10) break;
            len = 0;
            for (int i = 0; i < 8; i++) len = (len << 8) | p[pos + 2 + i];
            h = 10;
        }
        if (b1 & 0x80) h += 4; /* a masked server frame is a protocol error: skip the key */
        if (n - pos < h + len) break;
        const unsigned char *payload = p + pos + h;
        int opcode = (int)(b0 & 0x0f);
        if (b1 & 0x80) count_other("masked-server-frame", 19);
        if (!(b0 & 0x80)) count_other("fragment", 8);
        if (opcode == 1) {
            on_text(payload, (size_t)len, stamp, now);
        } else if (opcode == 9) {
            send_frame(c, 0xA, payload, (size_t)len);
        } else if (opcode == 8) {
            char name[24];
            int code = len >= 2 ? (payload[0] << 8) | payload[1] : 0;
            int k = snprintf(name, sizeof name, "close:%d", code);
            count_other(name, (size_t)k);
            close_conn(c);
            return;
        } else if (opcode != 0xA) {
            count_other("opcode", 6);
        }
        pos += h + (size_t)len;
    }
    keep_left(c, p + pos, n - pos);
}

static void start_more(void) {
    while (pending < MAX_PENDING && next_start < nconns) {
        conn_t *c = &conns[next_start];
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
        inet_pton(AF_INET, host, &a.sin_addr);
        c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (c->fd < 0) { perror("socket"); exit(2); }
        int one = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (setsockopt(c->fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one) < 0) {
            perror("SO_TIMESTAMPNS");
            exit(2);
        }
        if (connect(c->fd, (struct sockaddr *)&a, sizeof a) < 0 && errno != EINPROGRESS) {
            perror("connect");
            exit(2);
        }
        struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN, .data.u32 = next_start};
        epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
        c->state = CONNECTING;
        pending++;
        next_start++;
    }
}

static void handshake_done(conn_t *c, int ok, const char *why, size_t whylen) {
    pending--;
    if (ok) {
        connected++;
    } else {
        if (!first_failure[0]) {
            if (whylen > sizeof first_failure - 1) whylen = sizeof first_failure - 1;
            memcpy(first_failure, why, whylen);
            for (size_t i = 0; i < whylen; i++)
                if (first_failure[i] == '\r' || first_failure[i] == '\n') first_failure[i] = ' ';
        }
        failed++;
        close_conn(c);
    }
    start_more();
    if (!announced && connected + failed == nconns) {
        announced = 1;
        printf("connected %u failed %u %s\n", connected, failed, first_failure);
        fflush(stdout);
    }
}

static void on_writable(conn_t *c) {
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) {
        handshake_done(c, 0, strerror(err), strlen(strerror(err)));
        return;
    }
    char req[2048];
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     "Sec-WebSocket-Version: 13\r\nAuthorization: Bearer %s\r\n\r\n",
                     c->path, host, port, token);
    if (send(c->fd, req, (size_t)n, MSG_NOSIGNAL) != n) {
        handshake_done(c, 0, "send", 4);
        return;
    }
    c->state = HANDSHAKE;
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)(c - conns)};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

static unsigned char *rbuf;

static void on_readable(conn_t *c) {
    if (c->nleft >= READ_CAP) { /* one frame larger than the read buffer */
        count_other("frame-too-large", 15);
        close_conn(c);
        return;
    }
    memcpy(rbuf, c->left, c->nleft);
    struct iovec iov = {.iov_base = rbuf + c->nleft, .iov_len = READ_CAP - c->nleft};
    union { char buf[CMSG_SPACE(sizeof(struct timespec))]; struct cmsghdr align; } ctl;
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1,
                         .msg_control = ctl.buf, .msg_controllen = sizeof ctl.buf};
    ssize_t r = recvmsg(c->fd, &msg, 0);
    double now = clock_s(CLOCK_REALTIME), stamp = 0;
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
        if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_TIMESTAMPNS) {
            struct timespec t;
            memcpy(&t, CMSG_DATA(cm), sizeof t);
            stamp = (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
        }
    }
    if (stamp == 0 && r > 0) {
        no_stamp++;
        stamp = now;
    }
    if (r <= 0) {
        if (r < 0 && (errno == EAGAIN || errno == EINTR)) return;
        if (c->state == HANDSHAKE) handshake_done(c, 0, "closed in handshake", 19);
        else close_conn(c);
        return;
    }
    size_t n = c->nleft + (size_t)r;
    nbytes += (uint64_t)r;
    reads++;
    if (c->state == HANDSHAKE) {
        unsigned char *end = memmem(rbuf, n, "\r\n\r\n", 4);
        if (!end) { keep_left(c, rbuf, n); return; }
        size_t head = (size_t)(end - rbuf) + 4;
        if (n < 12 || memcmp(rbuf, "HTTP/1.1 101", 12) != 0 || !memmem(rbuf, head, ACCEPT, 28)) {
            unsigned char *eol = memmem(rbuf, n, "\r\n", 2);
            handshake_done(c, 0, (const char *)rbuf, (size_t)(eol - rbuf));
            return;
        }
        c->state = OPEN;
        c->nleft = 0;
        send_frame(c, 1, (const unsigned char *)init_text, strlen(init_text));
        handshake_done(c, 1, NULL, 0);
        on_frames(c, rbuf + head, n - head, stamp, now);
        return;
    }
    on_frames(c, rbuf, n, stamp, now);
}

static void command(char *line) {
    if (strncmp(line, "path ", 5) == 0) {
        conns = realloc(conns, sizeof *conns * (nconns + 1));
        memset(&conns[nconns], 0, sizeof *conns);
        conns[nconns].path = strdup(line + 5);
        nconns++;
    } else if (strcmp(line, "go") == 0) {
        if (nconns == 0) { printf("connected 0 failed 0\n"); fflush(stdout); announced = 1; }
        start_more();
    } else if (strncmp(line, "clock ", 6) == 0) {
        double now = clock_s(CLOCK_REALTIME);
        printf("clock %.9f\n", now - strtod(line + 6, NULL));
        fflush(stdout);
    } else if (strncmp(line, "window ", 7) == 0) {
        sscanf(line + 7, "%lf %lf", &w0, &w1);
        received = missed = frames = nbytes = max_us = max_read_us = no_stamp = reads = 0;
        memset(hist, 0, sizeof *hist * NBINS);
        memset(hist_read, 0, sizeof *hist_read * NBINS);
        memset(other_name, 0, sizeof other_name);
        memset(other_count, 0, sizeof other_count);
        disconnected = 0;
        mono_off_at_window = clock_s(CLOCK_REALTIME) - clock_s(CLOCK_MONOTONIC);
    } else if (strncmp(line, "report ", 7) == 0) {
        FILE *f = fopen(line + 7, "wb");
        if (!f || fwrite(hist, sizeof *hist, NBINS, f) != NBINS ||
            fwrite(hist_read, sizeof *hist_read, NBINS, f) != NBINS || fclose(f) != 0) {
            perror("report");
            exit(2);
        }
        double drift = clock_s(CLOCK_REALTIME) - clock_s(CLOCK_MONOTONIC) - mono_off_at_window;
        printf("report received=%llu missed=%llu frames=%llu bytes=%llu disconnected=%u "
               "max_us=%llu max_read_us=%llu no_stamp=%llu reads=%llu drift_us=%.1f",
               (unsigned long long)received, (unsigned long long)missed,
               (unsigned long long)frames, (unsigned long long)nbytes, disconnected,
               (unsigned long long)max_us, (unsigned long long)max_read_us,
               (unsigned long long)no_stamp, (unsigned long long)reads, drift * 1e6);
        for (int i = 0; i < MAX_OTHER && other_name[i][0]; i++)
            printf(" other:%s=%llu", other_name[i], (unsigned long long)other_count[i]);
        printf("\n");
        fflush(stdout);
    } else if (strcmp(line, "stop") == 0) {
        exit(0);
    }
}

int main(int argc, char **argv) {
    if (argc != 5 && !(argc == 6 && strcmp(argv[5], "spin") == 0)) {
        fprintf(stderr, "usage: %s HOST PORT TOKEN INIT_TEXT [spin] < commands\n", argv[0]);
        return 2;
    }
    host = argv[1];
    port = atoi(argv[2]);
    token = argv[3];
    init_text = argv[4];
    int timeout = argc == 6 ? 0 : -1;
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    hist = calloc(NBINS, sizeof *hist);
    hist_read = calloc(NBINS, sizeof *hist_read);
    rbuf = malloc(READ_CAP + 65536);
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (!hist || !hist_read || !rbuf || epfd < 0) { perror("init"); return 2; }
    fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = STDIN_ID};
    epoll_ctl(epfd, EPOLL_CTL_ADD, 0, &ev);
    char cmd[8192];
    size_t ncmd = 0;
    struct epoll_event evs[512];
    for (;;) {
        int k = epoll_wait(epfd, evs, 512, announced ? timeout : -1);
        if (k < 0) {
            if (errno == EINTR) continue;
            perror("epoll_wait");
            return 2;
        }
        for (int i = 0; i < k; i++) {
            uint32_t id = evs[i].data.u32;
            if (id == STDIN_ID) {
                ssize_t r = read(0, cmd + ncmd, sizeof cmd - 1 - ncmd);
                if (r == 0) return 0;
                if (r < 0) continue;
                ncmd += (size_t)r;
                char *nl;
                while ((nl = memchr(cmd, '\n', ncmd))) {
                    *nl = 0;
                    command(cmd);
                    size_t used = (size_t)(nl - cmd) + 1;
                    memmove(cmd, nl + 1, ncmd - used);
                    ncmd -= used;
                }
                continue;
            }
            conn_t *c = &conns[id];
            if (c->state == CONNECTING && (evs[i].events & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
                on_writable(c);
            else if (c->state == HANDSHAKE || c->state == OPEN)
                on_readable(c);
        }
    }
}

// pacer: a paced load generator for bench/cost.sh (cost per unit of work).
//
//   pacer udp  --target IP:PORT[,IP:PORT...] --rate R --duration S [--warmup W] [--flows N] [--size B]
//   pacer http --target ... --rate R --duration S [--warmup W] [--conns K] [--path P]
//   pacer conn --target ... --rate R --duration S [--warmup W] [--no-request] [--path P]
//   pacer echo --port P [--address A]        UDP echo server (runs until killed)
//
// Work is issued at a fixed rate R (units per second, all flows/connections together) from a
// timerfd tick (--tick-us, 250 us by default): at every tick the units due since the start are
// issued, so the generator sleeps in epoll_wait between ticks instead of spinning. Targets are
// used round robin (per flow, per keep-alive connection, per new connection).
//
// Phases: warm-up (W s, issued at the same rate, not counted), the measurement window (S s), then
// a drain (--drain s, 1 by default) in which nothing is issued and answers to the window's units
// are still counted. Units are attributed to the window by their issue time:
//   udp   a datagram of --size bytes carrying a sequence number and its send time; a unit is a
//         datagram sent in the window; answered = its echo came back (each counted once)
//   http  K keep-alive connections, at most one request outstanding on each; a due request waits
//         (queued) for a free connection; answered = a complete 200 response
//   conn  a new TCP connection per unit; connect, then (unless --no-request) one request with
//         Connection: close read to the end, then close; answered = completed (200 if requested)
// The whole machine's CPU counters (/proc/stat "cpu" line) are read at the window's start and end,
// and the generator's own CPU time over the window, so the caller can compute CPU per unit; with
// --cgroup-fd FD also the CPU time of a cgroup (an open v1 cpuacct.usage or v2 cpu.stat; the test bed's processes)
// and the ksoftirqd threads' CPU time (softirq work the kernel deferred from those processes); with
// --watch-pid PID the CPU time of that process (a userspace load balancer).
//
// Output: one JSON line on stdout. Bad arguments: a message on stderr, exit 2. Runtime failure
// (socket, epoll): exit 1.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define MAX_TARGETS 16
#define NSEC 1000000000LL

static void usage_exit(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("pacer: ", stderr);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs("\nusage: pacer udp|http|conn --target IP:PORT[,IP:PORT...] --rate R --duration S"
          " [--warmup W] [--drain D] [--flows N] [--size B] [--conns K] [--path P] [--no-request]"
          " [--timeout S] [--max-inflight N] [--tick-us U] [--cgroup-fd FD] [--watch-pid PID]\n"
          "       pacer echo --port P [--address A]\n",
          stderr);
    exit(2);
}

static void die(const char *what) {
    fprintf(stderr, "pacer: %s: %s\n", what, strerror(errno));
    exit(1);
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * NSEC + ts.tv_nsec;
}

static int64_t self_cpu_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (int64_t)ts.tv_sec * NSEC + ts.tv_nsec;
}

// ------------------------------------------------------------------------------------------
// Options.

enum mode { M_UDP, M_HTTP, M_CONN, M_ECHO };

static struct {
    enum mode mode;
    struct sockaddr_in targets[MAX_TARGETS];
    int ntargets;
    double rate, duration, warmup, drain, timeout;
    int flows, size, conns, max_inflight, tick_us, port;
    bool request;
    const char *path, *address;
    int cgroup_fd, watch_pid;
} opt = {
    .cgroup_fd = -1,
    .warmup = 1, .drain = 1, .timeout = 2, .flows = 8, .size = 64, .conns = 16,
    .max_inflight = 8192, .tick_us = 250, .request = true, .path = "/", .address = "0.0.0.0",
};

static double parse_num(const char *name, const char *s, double lo, double hi) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v) || v < lo || v > hi)
        usage_exit("%s: '%s' is not a number in [%g, %g]", name, s, lo, hi);
    return v;
}

static int parse_int(const char *name, const char *s, int lo, int hi) {
    double v = parse_num(name, s, lo, hi);
    if (v != (int)v) usage_exit("%s: '%s' is not an integer", name, s);
    return (int)v;
}

static void parse_targets(const char *s) {
    char *copy = strdup(s), *save = NULL, *tok;
    for (tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (opt.ntargets == MAX_TARGETS) usage_exit("--target: at most %d targets", MAX_TARGETS);
        char *colon = strrchr(tok, ':');
        if (!colon) usage_exit("--target: '%s' is not IP:PORT", tok);
        *colon = 0;
        struct sockaddr_in *a = &opt.targets[opt.ntargets++];
        memset(a, 0, sizeof *a);
        a->sin_family = AF_INET;
        if (inet_pton(AF_INET, tok, &a->sin_addr) != 1) usage_exit("--target: '%s' is not an IPv4 address", tok);
        a->sin_port = htons((uint16_t)parse_int("--target port", colon + 1, 1, 65535));
    }
    free(copy);
    if (opt.ntargets == 0) usage_exit("--target: empty");
}

static void parse_args(int argc, char **argv) {
    if (argc < 2) usage_exit("missing mode");
    if (!strcmp(argv[1], "udp")) opt.mode = M_UDP;
    else if (!strcmp(argv[1], "http")) opt.mode = M_HTTP;
    else if (!strcmp(argv[1], "conn")) opt.mode = M_CONN;
    else if (!strcmp(argv[1], "echo")) opt.mode = M_ECHO;
    else usage_exit("unknown mode '%s' (udp, http, conn, echo)", argv[1]);
    bool have_rate = false, have_duration = false;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--no-request")) { opt.request = false; continue; }
        if (i + 1 >= argc) usage_exit("%s needs a value", a);
        const char *v = argv[++i];
        if (!strcmp(a, "--target")) parse_targets(v);
        else if (!strcmp(a, "--rate")) { opt.rate = parse_num(a, v, 1, 10e6); have_rate = true; }
        else if (!strcmp(a, "--duration")) { opt.duration = parse_num(a, v, 0.1, 3600); have_duration = true; }
        else if (!strcmp(a, "--warmup")) opt.warmup = parse_num(a, v, 0, 600);
        else if (!strcmp(a, "--drain")) opt.drain = parse_num(a, v, 0, 60);
        else if (!strcmp(a, "--timeout")) opt.timeout = parse_num(a, v, 0.01, 60);
        else if (!strcmp(a, "--flows")) opt.flows = parse_int(a, v, 1, 4096);
        else if (!strcmp(a, "--size")) opt.size = parse_int(a, v, 16, 65000);
        else if (!strcmp(a, "--conns")) opt.conns = parse_int(a, v, 1, 4096);
        else if (!strcmp(a, "--max-inflight")) opt.max_inflight = parse_int(a, v, 1, 60000);
        else if (!strcmp(a, "--tick-us")) opt.tick_us = parse_int(a, v, 10, 100000);
        else if (!strcmp(a, "--port")) opt.port = parse_int(a, v, 1, 65535);
        else if (!strcmp(a, "--address")) opt.address = v;
        else if (!strcmp(a, "--cgroup-fd")) opt.cgroup_fd = parse_int(a, v, 0, 1023);
        else if (!strcmp(a, "--watch-pid")) opt.watch_pid = parse_int(a, v, 1, 1 << 22);
        else if (!strcmp(a, "--path")) {
            if (v[0] != '/' || strpbrk(v, " \r\n")) usage_exit("--path must start with / and hold no spaces");
            opt.path = v;
        } else usage_exit("unknown option '%s'", a);
    }
    if (opt.mode == M_ECHO) {
        if (!opt.port) usage_exit("echo needs --port");
        return;
    }
    if (!opt.ntargets) usage_exit("--target is required");
    if (!have_rate) usage_exit("--rate is required");
    if (!have_duration) usage_exit("--duration is required");
}

// ------------------------------------------------------------------------------------------
// Whole-machine CPU counters (USER_HZ ticks) from /proc/stat.

struct cpustat { unsigned long long user, nice, system, idle, iowait, irq, softirq, steal; };

static void read_cpustat(struct cpustat *c) {
    memset(c, 0, sizeof *c);
    FILE *f = fopen("/proc/stat", "r");
    if (!f) die("/proc/stat");
    if (fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &c->user, &c->nice, &c->system,
               &c->idle, &c->iowait, &c->irq, &c->softirq, &c->steal) != 8) {
        fprintf(stderr, "pacer: cannot parse /proc/stat\n");
        exit(1);
    }
    fclose(f);
}

// The cgroup's CPU time (ns) and the ksoftirqd threads' (USER_HZ ticks).

static int ksoft_pid[256];
static int nksoft;

static void find_ksoftirqd(void) {
    char path[64], comm[64];
    for (int pid = 2; pid < 4096 && nksoft < 256; pid++) {  // kernel threads start early
        snprintf(path, sizeof path, "/proc/%d/comm", pid);
        FILE *f = fopen(path, "r");
        if (!f) continue;
        if (fgets(comm, sizeof comm, f) && !strncmp(comm, "ksoftirqd/", 10)) ksoft_pid[nksoft++] = pid;
        fclose(f);
    }
}

// utime + stime of a process (all its threads), USER_HZ ticks; 0 if it is gone.
static unsigned long long pid_ticks(int pid) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');  // fields after the command: state is field 3, utime 14, stime 15
    unsigned long long ut = 0, st = 0;
    if (p && sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) == 2) return ut + st;
    return 0;
}

static unsigned long long ksoft_ticks(void) {
    unsigned long long sum = 0;
    for (int i = 0; i < nksoft; i++) sum += pid_ticks(ksoft_pid[i]);
    return sum;
}

// The cgroup's CPU time from an open descriptor of its v1 cpuacct.usage (ns) or v2 cpu.stat
// (usage_usec): `ip netns exec` remounts /sys, so the caller opens the file before it and passes
// the descriptor; reading from offset 0 makes the kernel produce the current value.
static unsigned long long cgroup_ns(void) {
    if (opt.cgroup_fd < 0) return 0;
    char buf[2048];
    ssize_t n = pread(opt.cgroup_fd, buf, sizeof buf - 1, 0);
    if (n <= 0) die("read --cgroup-fd");
    buf[n] = 0;
    if (buf[0] >= '0' && buf[0] <= '9') return strtoull(buf, NULL, 10);
    char *u = strstr(buf, "usage_usec ");
    if (!u) { fprintf(stderr, "pacer: --cgroup-fd: neither cpuacct.usage nor cpu.stat\n"); exit(1); }
    return strtoull(u + 11, NULL, 10) * 1000;
}

// ------------------------------------------------------------------------------------------
// Shared state of a run.

static int ep;                       // epoll
static int tfd;                      // timerfd (pacing tick)
static int64_t t_start, t_win0, t_win1, t_end;
static struct cpustat cs0, cs1;
static unsigned long long cg0, cg1, ks0, ks1, wp0, wp1;
static int64_t self0, self1;
static bool window_open, window_closed;
static uint64_t issued;              // units issued (all phases)
static uint64_t win_issued;          // units issued in the window
static uint64_t win_answered;        // of those, answered (by the end of the drain)
static uint64_t win_failed;          // of those, failed (error, timeout, non-200, not issued)
static uint64_t win_answered_in;     // answers that arrived inside the window (any issue time)
static uint64_t win_non200, win_errors, win_timeouts, win_send_fail, win_queued_max;
static uint64_t *lat;                // latencies (ns) of the window's answered units
static size_t nlat, caplat;
static int next_target;

static unsigned long long watch_ticks(void) { return opt.watch_pid ? pid_ticks(opt.watch_pid) : 0; }
static void snap_start(void) { read_cpustat(&cs0); self0 = self_cpu_ns(); cg0 = cgroup_ns(); ks0 = ksoft_ticks(); wp0 = watch_ticks(); }
static void snap_end(void) { read_cpustat(&cs1); self1 = self_cpu_ns(); cg1 = cgroup_ns(); ks1 = ksoft_ticks(); wp1 = watch_ticks(); }

static const char *mode_name(void) {
    return opt.mode == M_UDP ? "udp" : opt.mode == M_HTTP ? "http" : "conn";
}

static void add_latency(int64_t ns) {
    if (nlat == caplat) {
        caplat = caplat ? caplat * 2 : 65536;
        lat = realloc(lat, caplat * sizeof *lat);
        if (!lat) die("realloc");
    }
    lat[nlat++] = (uint64_t)(ns < 0 ? 0 : ns);
}

static bool in_window(int64_t t) { return t >= t_win0 && t < t_win1; }

// Called for every answered unit (issue time t_issue, answer time t_ans).
static void answered(int64_t t_issue, int64_t t_ans) {
    if (in_window(t_ans)) win_answered_in++;
    if (in_window(t_issue)) {
        win_answered++;
        add_latency(t_ans - t_issue);
    }
}

static void failed(int64_t t_issue, uint64_t *why) {
    if (in_window(t_issue)) {
        win_failed++;
        (*why)++;
    }
}

// Epoll tags: the low 2 bits say what the pointer/index is.
#define TAG_TIMER 0u
#define TAG_UDP 1u
#define TAG_TCP 2u
static uint64_t tag(uint64_t v, unsigned t) { return (v << 2) | t; }

static void ep_add(int fd, uint32_t events, uint64_t data) {
    struct epoll_event e = {.events = events, .data.u64 = data};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e) < 0) die("epoll_ctl add");
}
static void ep_mod(int fd, uint32_t events, uint64_t data) {
    struct epoll_event e = {.events = events, .data.u64 = data};
    if (epoll_ctl(ep, EPOLL_CTL_MOD, fd, &e) < 0) die("epoll_ctl mod");
}

// ------------------------------------------------------------------------------------------
// UDP: N connected sockets, datagrams carry (magic, seq, send time).

struct udp_hdr { uint32_t magic; uint32_t flow; uint64_t seq; int64_t sent_ns; };
#define UDP_MAGIC 0x54504352u  // "RCPT"

static int *udp_fd;
static uint8_t *udp_seen;      // per seq: 1 = answered (bitmap would be smaller; bytes are simple)
static int64_t *udp_sent_at;   // per seq: send time (0 = not sent)
static uint64_t udp_cap;
static char *udp_buf;

static void udp_setup(void) {
    udp_fd = calloc((size_t)opt.flows, sizeof *udp_fd);
    udp_cap = (uint64_t)(opt.rate * (opt.warmup + opt.duration) * 1.05) + 1024;
    udp_seen = calloc(udp_cap, 1);
    udp_sent_at = calloc(udp_cap, sizeof *udp_sent_at);
    udp_buf = calloc(1, (size_t)(opt.size > 2048 ? opt.size : 2048));
    if (!udp_fd || !udp_seen || !udp_sent_at || !udp_buf) die("calloc");
    for (int i = 0; i < opt.flows; i++) {
        int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
        if (fd < 0) die("socket");
        int sz = 1 << 20;
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof sz);
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz);
        struct sockaddr_in *t = &opt.targets[i % opt.ntargets];
        if (connect(fd, (struct sockaddr *)t, sizeof *t) < 0) die("connect udp");
        udp_fd[i] = fd;
        ep_add(fd, EPOLLIN, tag((uint64_t)i, TAG_UDP));
    }
}

static void udp_issue(int64_t t) {
    uint64_t seq = issued++;
    if (seq >= udp_cap) return;  // cannot happen at the paced rate; not sent, counted below
    int flow = (int)(seq % (uint64_t)opt.flows);
    struct udp_hdr *h = (struct udp_hdr *)udp_buf;
    h->magic = UDP_MAGIC; h->flow = (uint32_t)flow; h->seq = seq; h->sent_ns = t;
    if (in_window(t)) win_issued++;
    if (send(udp_fd[flow], udp_buf, (size_t)opt.size, 0) != opt.size) {
        failed(t, &win_send_fail);
        return;
    }
    udp_sent_at[seq] = t;
}

static void udp_readable(int flow) {
    char buf[2048];
    for (;;) {
        ssize_t n = recv(udp_fd[flow], buf, sizeof buf, 0);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) return;
            if (errno == ECONNREFUSED) continue;  // ICMP port unreachable: counted as lost
            die("recv udp");
        }
        if (n < (ssize_t)sizeof(struct udp_hdr)) continue;
        struct udp_hdr h;
        memcpy(&h, buf, sizeof h);
        if (h.magic != UDP_MAGIC || h.seq >= udp_cap || udp_seen[h.seq] || udp_sent_at[h.seq] != h.sent_ns) continue;
        udp_seen[h.seq] = 1;
        answered(h.sent_ns, now_ns());
    }
}

static void udp_finish(void) {
    // Sent in the window and never answered: lost.
    for (uint64_t s = 0; s < udp_cap && s < issued; s++)
        if (udp_sent_at[s] && !udp_seen[s] && in_window(udp_sent_at[s])) win_failed++;
}

// ------------------------------------------------------------------------------------------
// TCP connections (http: keep-alive pool; conn: one per unit).

enum cstate { C_FREE, C_CONNECTING, C_IDLE, C_WAITING };

struct conn {
    int fd;
    enum cstate st;
    int64_t t_issue;     // issue time of the unit in progress
    int64_t t_deadline;  // timeout of the unit in progress
    size_t hlen;         // bytes in hdr
    long body_left;      // -1: until EOF, else bytes of body still to come
    int status;
    bool in_body;
    char hdr[4096];
    int next_free;
};

static struct conn *conns;
static int nconns, free_head = -1, active;
static uint64_t queued;   // http: due requests waiting for a free connection
static int64_t *queue_t;  // their issue times (ring)
static uint64_t queue_head, queue_cap;
static char request[512];
static size_t request_len;

static void build_request(bool keepalive) {
    char host[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &opt.targets[0].sin_addr, host, sizeof host);
    int n = snprintf(request, sizeof request, "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: tandem-pacer\r\n%s\r\n",
                     opt.path, host, keepalive ? "" : "Connection: close\r\n");
    request_len = (size_t)n;
}

static void conn_pool(int n) {
    nconns = n;
    conns = calloc((size_t)n, sizeof *conns);
    if (!conns) die("calloc");
    for (int i = n - 1; i >= 0; i--) { conns[i].st = C_FREE; conns[i].fd = -1; conns[i].next_free = free_head; free_head = i; }
}

// Starts a non-blocking connect on slot i. Returns false on immediate failure.
static bool conn_open(int i, int64_t t) {
    struct conn *c = &conns[i];
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0) return false;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in *a = &opt.targets[next_target++ % opt.ntargets];
    if (connect(fd, (struct sockaddr *)a, sizeof *a) < 0 && errno != EINPROGRESS) { close(fd); return false; }
    c->fd = fd; c->st = C_CONNECTING; c->t_issue = t; c->t_deadline = t + (int64_t)(opt.timeout * NSEC);
    c->hlen = 0; c->in_body = false; c->status = 0; c->body_left = 0;
    ep_add(fd, EPOLLOUT, tag((uint64_t)i, TAG_TCP));
    return true;
}

static void conn_close(int i) {
    struct conn *c = &conns[i];
    if (c->fd >= 0) { epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL); close(c->fd); }
    c->fd = -1;
    if (opt.mode == M_CONN) { c->st = C_FREE; c->next_free = free_head; free_head = i; active--; }
    else c->st = C_FREE;  // http: a dead keep-alive connection is reopened by http_dispatch
}

static bool conn_send_request(int i, int64_t t) {
    struct conn *c = &conns[i];
    c->t_issue = t; c->t_deadline = now_ns() + (int64_t)(opt.timeout * NSEC);
    c->hlen = 0; c->in_body = false; c->status = 0; c->body_left = 0;
    ssize_t n = send(c->fd, request, request_len, MSG_NOSIGNAL);
    if (n != (ssize_t)request_len) return false;  // a tiny request on an idle socket fits
    c->st = C_WAITING;
    ep_mod(c->fd, EPOLLIN | EPOLLRDHUP, tag((uint64_t)i, TAG_TCP));
    return true;
}

// Parses response bytes. Returns 1 when the response is complete, 0 for more, -1 on error.
static int conn_parse(struct conn *c, const char *buf, size_t n) {
    if (c->in_body) {
        if (c->body_left >= 0) { c->body_left -= (long)n; return c->body_left <= 0 ? 1 : 0; }
        return 0;  // until EOF
    }
    size_t room = sizeof c->hdr - 1 - c->hlen;
    if (n > room) return -1;  // headers larger than 4 KiB: not nginx's
    memcpy(c->hdr + c->hlen, buf, n);
    c->hlen += n;
    c->hdr[c->hlen] = 0;
    char *end = strstr(c->hdr, "\r\n\r\n");
    if (!end) return 0;
    if (strncmp(c->hdr, "HTTP/1.", 7) || c->hlen < 12) return -1;
    c->status = atoi(c->hdr + 9);
    size_t hdr_bytes = (size_t)(end + 4 - c->hdr);
    long cl = -1;
    for (char *line = strstr(c->hdr, "\r\n"); line && line < end; line = strstr(line + 2, "\r\n")) {
        if (!strncasecmp(line + 2, "Content-Length:", 15)) cl = atol(line + 17);
        else if (!strncasecmp(line + 2, "Transfer-Encoding:", 18)) return -1;  // chunked: not supported
    }
    c->in_body = true;
    if (cl < 0) { c->body_left = -1; return 0; }
    c->body_left = cl - (long)(c->hlen - hdr_bytes);
    return c->body_left <= 0 ? 1 : 0;
}

// ---- http: a pool of keep-alive connections.

static void http_start_one(int64_t t);

static void http_setup(void) {
    build_request(true);
    conn_pool(opt.conns);
    queue_cap = (uint64_t)(opt.rate * (opt.warmup + opt.duration + 1)) + 1024;
    queue_t = calloc(queue_cap, sizeof *queue_t);
    if (!queue_t) die("calloc");
    for (int i = 0; i < nconns; i++)
        if (!conn_open(i, now_ns())) die("connect http");
    // Wait (bounded) for every connection to be established before pacing starts.
    int64_t deadline = now_ns() + (int64_t)(opt.timeout * NSEC);
    int up = 0;
    while (up < nconns && now_ns() < deadline) {
        struct epoll_event ev[64];
        int n = epoll_wait(ep, ev, 64, 50);
        for (int k = 0; k < n; k++) {
            int i = (int)(ev[k].data.u64 >> 2);
            struct conn *c = &conns[i];
            int err = 0; socklen_t len = sizeof err;
            getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
            if (err || (ev[k].events & (EPOLLERR | EPOLLHUP))) {
                fprintf(stderr, "pacer: http connection %d failed: %s\n", i, strerror(err ? err : ECONNRESET));
                exit(1);
            }
            c->st = C_IDLE; up++;
            ep_mod(c->fd, EPOLLRDHUP, tag((uint64_t)i, TAG_TCP));
        }
    }
    if (up < nconns) { fprintf(stderr, "pacer: only %d of %d http connections came up\n", up, nconns); exit(1); }
}

// Hands queued requests to idle connections; reopens dead ones.
static void http_dispatch(void) {
    for (int i = 0; i < nconns && queued; i++) {
        struct conn *c = &conns[i];
        if (c->st == C_FREE) { conn_open(i, now_ns()); continue; }  // comes back as C_IDLE
        if (c->st != C_IDLE) continue;
        int64_t t = queue_t[queue_head++ % queue_cap];
        queued--;
        if (in_window(t)) win_issued++;
        if (!conn_send_request(i, t)) { failed(t, &win_errors); conn_close(i); }
    }
}

static void http_start_one(int64_t t) {
    issued++;
    if (queued == queue_cap) { failed(t, &win_send_fail); return; }
    queue_t[(queue_head + queued) % queue_cap] = t;
    queued++;
    if (in_window(t) && queued > win_queued_max) win_queued_max = queued;
}

static void http_event(int i, uint32_t events) {
    struct conn *c = &conns[i];
    if (c->st == C_CONNECTING) {
        int err = 0; socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err || (events & (EPOLLERR | EPOLLHUP))) { conn_close(i); return; }
        c->st = C_IDLE;
        ep_mod(c->fd, EPOLLRDHUP, tag((uint64_t)i, TAG_TCP));
        return;
    }
    if (c->st == C_IDLE) { conn_close(i); return; }  // the server closed an idle connection
    char buf[16384];
    for (;;) {
        ssize_t n = recv(c->fd, buf, sizeof buf, 0);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
        if (n <= 0) { failed(c->t_issue, &win_errors); conn_close(i); return; }
        int r = conn_parse(c, buf, (size_t)n);
        if (r < 0) { failed(c->t_issue, &win_errors); conn_close(i); return; }
        if (r == 1) {
            if (c->status == 200) answered(c->t_issue, now_ns());
            else failed(c->t_issue, &win_non200);
            c->st = C_IDLE;
            ep_mod(c->fd, EPOLLRDHUP, tag((uint64_t)i, TAG_TCP));
            return;
        }
    }
}

// ---- conn: a new connection per unit.

static void conn_setup(void) {
    build_request(false);
    conn_pool(opt.max_inflight);
}

static void conn_start_one(int64_t t) {
    issued++;
    if (in_window(t)) win_issued++;
    if (free_head < 0) { failed(t, &win_send_fail); return; }  // --max-inflight reached
    int i = free_head;
    free_head = conns[i].next_free;
    active++;
    if (!conn_open(i, t)) { failed(t, &win_errors); conns[i].st = C_FREE; conns[i].next_free = free_head; free_head = i; active--; }
}

static void conn_event(int i, uint32_t events) {
    struct conn *c = &conns[i];
    if (c->st == C_CONNECTING) {
        int err = 0; socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err || (events & (EPOLLERR | EPOLLHUP))) { failed(c->t_issue, &win_errors); conn_close(i); return; }
        if (!opt.request) { answered(c->t_issue, now_ns()); conn_close(i); return; }
        int64_t t = c->t_issue, dl = c->t_deadline;
        if (!conn_send_request(i, t)) { failed(t, &win_errors); conn_close(i); return; }
        c->t_deadline = dl;  // the timeout covers the whole unit
        return;
    }
    char buf[16384];
    for (;;) {
        ssize_t n = recv(c->fd, buf, sizeof buf, 0);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
        if (n < 0) { failed(c->t_issue, &win_errors); conn_close(i); return; }
        int r = n == 0 ? (c->in_body && c->body_left < 0 ? 1 : -1) : conn_parse(c, buf, (size_t)n);
        if (r < 0) { failed(c->t_issue, &win_errors); conn_close(i); return; }
        if (r == 1) {
            if (c->status == 200) answered(c->t_issue, now_ns());
            else failed(c->t_issue, &win_non200);
            conn_close(i);
            return;
        }
    }
}

// Units past their deadline fail (both TCP modes).
static void tcp_timeouts(int64_t t) {
    for (int i = 0; i < nconns; i++) {
        struct conn *c = &conns[i];
        if ((c->st == C_CONNECTING || c->st == C_WAITING) && t > c->t_deadline) {
            if (opt.mode == M_CONN || c->st == C_WAITING) failed(c->t_issue, &win_timeouts);
            conn_close(i);
        }
    }
}

// ------------------------------------------------------------------------------------------
// Echo server (UDP), for the endpoints: echoes every datagram to its sender.

__attribute__((noreturn)) static void run_echo(void) {
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) die("socket");
    int one = 1, sz = 4 << 20;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof sz);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)opt.port)};
    if (inet_pton(AF_INET, opt.address, &a.sin_addr) != 1) usage_exit("--address: '%s' is not an IPv4 address", opt.address);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) die("bind");
    fprintf(stderr, "pacer: echo ready udp=%s:%d\n", opt.address, opt.port);
    enum { B = 64 };
    static char bufs[B][2048];
    struct mmsghdr msgs[B];
    struct iovec iov[B];
    struct sockaddr_in from[B];
    for (;;) {
        for (int i = 0; i < B; i++) {
            iov[i] = (struct iovec){bufs[i], sizeof bufs[i]};
            msgs[i].msg_hdr = (struct msghdr){.msg_name = &from[i], .msg_namelen = sizeof from[i], .msg_iov = &iov[i], .msg_iovlen = 1};
        }
        int n = recvmmsg(fd, msgs, B, MSG_WAITFORONE, NULL);
        if (n < 0) { if (errno == EINTR) continue; die("recvmmsg"); }
        for (int i = 0; i < n; i++) iov[i].iov_len = msgs[i].msg_len;
        int off = 0;
        while (off < n) {
            int m = sendmmsg(fd, msgs + off, (unsigned)(n - off), 0);
            if (m <= 0) break;  // drop the rest of the batch
            off += m;
        }
    }
}

// ------------------------------------------------------------------------------------------

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static double pct_us(double p) {
    if (!nlat) return -1;
    size_t k = (size_t)(p * (double)(nlat - 1) + 0.5);
    return (double)lat[k] / 1e3;
}

int main(int argc, char **argv) {
    parse_args(argc, argv);
    signal(SIGPIPE, SIG_IGN);
    if (opt.mode == M_ECHO) run_echo();

    struct rlimit rl = {65536, 65536};
    setrlimit(RLIMIT_NOFILE, &rl);
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1");
    tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (tfd < 0) die("timerfd_create");
    ep_add(tfd, EPOLLIN, tag(0, TAG_TIMER));

    find_ksoftirqd();
    cgroup_ns();  // fails early on a bad --cgroup-fd
    if (opt.mode == M_UDP) udp_setup();
    else if (opt.mode == M_HTTP) http_setup();
    else conn_setup();

    t_start = now_ns();
    t_win0 = t_start + (int64_t)(opt.warmup * NSEC);
    t_win1 = t_win0 + (int64_t)(opt.duration * NSEC);
    t_end = t_win1 + (int64_t)(opt.drain * NSEC);
    struct itimerspec its = {.it_interval = {0, opt.tick_us * 1000L}, .it_value = {0, opt.tick_us * 1000L}};
    if (timerfd_settime(tfd, 0, &its, NULL) < 0) die("timerfd_settime");
    if (opt.warmup == 0) { snap_start(); window_open = true; }

    int64_t last_timeout_scan = t_start;
    for (;;) {
        int64_t t = now_ns();
        if (!window_open && t >= t_win0) { snap_start(); window_open = true; }
        if (!window_closed && t >= t_win1) { snap_end(); window_closed = true; }
        if (t >= t_end) break;
        if (opt.mode != M_UDP && t - last_timeout_scan > NSEC / 10) { tcp_timeouts(t); last_timeout_scan = t; }
        if (opt.mode == M_CONN && window_closed && active == 0 && t >= t_win1) break;  // all answered
        if (opt.mode == M_HTTP && window_closed && !queued) {
            bool busy = false;
            for (int i = 0; i < nconns; i++) busy |= conns[i].st == C_WAITING;
            if (!busy) break;
        }
        struct epoll_event ev[256];
        int n = epoll_wait(ep, ev, 256, 100);
        if (n < 0) { if (errno == EINTR) continue; die("epoll_wait"); }
        for (int k = 0; k < n; k++) {
            uint64_t d = ev[k].data.u64;
            unsigned tg = (unsigned)(d & 3);
            if (tg == TAG_TIMER) {
                uint64_t exp;
                if (read(tfd, &exp, sizeof exp) < 0 && errno != EAGAIN) die("read timerfd");
                int64_t now = now_ns();
                if (now >= t_win1) continue;  // issuing ends with the window
                // Units due since the start; each gets its own scheduled issue time.
                uint64_t due = (uint64_t)((double)(now - t_start) * opt.rate / 1e9);
                while (issued < due) {
                    int64_t ts = t_start + (int64_t)((double)issued * 1e9 / opt.rate);
                    if (opt.mode == M_UDP) udp_issue(ts);
                    else if (opt.mode == M_HTTP) http_start_one(ts);
                    else conn_start_one(ts);
                }
                if (opt.mode == M_HTTP) http_dispatch();
            } else if (tg == TAG_UDP) {
                udp_readable((int)(d >> 2));
            } else if (opt.mode == M_HTTP) {
                http_event((int)(d >> 2), ev[k].events);
                http_dispatch();
            } else {
                conn_event((int)(d >> 2), ev[k].events);
            }
        }
    }
    if (!window_closed) snap_end();
    int64_t t_done = now_ns();

    // What is still outstanding now failed.
    if (opt.mode == M_UDP) udp_finish();
    else {
        for (int i = 0; i < nconns; i++)
            if (conns[i].st == C_CONNECTING || conns[i].st == C_WAITING) {
                if (opt.mode == M_CONN || conns[i].st == C_WAITING) failed(conns[i].t_issue, &win_timeouts);
            }
        // http: requests due in the window that never got a connection
        for (uint64_t q = 0; q < queued; q++) {
            int64_t ts = queue_t[(queue_head + q) % queue_cap];
            if (in_window(ts)) { win_issued++; win_failed++; win_send_fail++; }
        }
    }
    qsort(lat, nlat, sizeof *lat, cmp_u64);

    double win = (double)(t_win1 - t_win0) / 1e9;
    long hz = sysconf(_SC_CLK_TCK);
    unsigned long long busy0 = cs0.user + cs0.nice + cs0.system + cs0.irq + cs0.softirq;
    unsigned long long busy1 = cs1.user + cs1.nice + cs1.system + cs1.irq + cs1.softirq;
    unsigned long long tot0 = busy0 + cs0.idle + cs0.iowait + cs0.steal, tot1 = busy1 + cs1.idle + cs1.iowait + cs1.steal;
    // Offered = units due in the window at the nominal rate; http's win_issued counts requests
    // written (queued ones wait for a connection).
    printf("{\"mode\":\"%s\",\"rate\":%.0f,\"window_s\":%.3f,\"warmup_s\":%.3f,\"drain_s\":%.3f,"
           "\"targets\":%d,\"flows\":%d,\"size\":%d,\"conns\":%d,\"request\":%s,"
           "\"issued\":%" PRIu64 ",\"answered\":%" PRIu64 ",\"failed\":%" PRIu64 ",\"answered_in_window\":%" PRIu64 ","
           "\"achieved_rate\":%.1f,\"answered_rate\":%.1f,\"lost\":%" PRIu64 ","
           "\"errors\":%" PRIu64 ",\"timeouts\":%" PRIu64 ",\"non200\":%" PRIu64 ",\"send_fail\":%" PRIu64 ",\"queued_max\":%" PRIu64 ","
           "\"p50_us\":%.1f,\"p99_us\":%.1f,"
           "\"cpu_hz\":%ld,\"ncpu\":%ld,\"cpu_busy_ticks\":%llu,\"cpu_steal_ticks\":%llu,\"cpu_total_ticks\":%llu,"
           "\"cpu_user\":%llu,\"cpu_system\":%llu,\"cpu_softirq\":%llu,\"cpu_irq\":%llu,"
           "\"cgroup_cpu_ns\":%llu,\"ksoftirqd_ticks\":%llu,\"ksoftirqd_threads\":%d,\"watch_pid\":%d,\"watch_ticks\":%llu,"
           "\"self_cpu_s\":%.4f,\"run_s\":%.3f}\n",
           mode_name(), opt.rate, win, opt.warmup, (double)(t_done - t_win1) / 1e9,
           opt.ntargets, opt.mode == M_UDP ? opt.flows : 0, opt.mode == M_UDP ? opt.size : 0,
           opt.mode == M_HTTP ? opt.conns : 0, opt.mode == M_CONN && !opt.request ? "false" : "true",
           win_issued, win_answered, win_failed, win_answered_in,
           (double)win_issued / win, (double)win_answered / win, win_issued - win_answered,
           win_errors, win_timeouts, win_non200, win_send_fail, win_queued_max,
           pct_us(0.50), pct_us(0.99),
           hz, sysconf(_SC_NPROCESSORS_ONLN), busy1 - busy0, cs1.steal - cs0.steal, tot1 - tot0,
           (cs1.user + cs1.nice) - (cs0.user + cs0.nice), cs1.system - cs0.system, cs1.softirq - cs0.softirq, cs1.irq - cs0.irq,
           cg1 - cg0, ks1 - ks0, nksoft, opt.watch_pid, wp1 - wp0,
           (double)(self1 - self0) / 1e9, (double)(t_done - t_start) / 1e9);
    return 0;
}

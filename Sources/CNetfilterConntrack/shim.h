#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <linux/sched.h>
#include <netinet/in.h>
#include <linux/netfilter/nfnetlink_conntrack.h>
#include <libnfnetlink/libnfnetlink.h>
#include <libnetfilter_conntrack/libnetfilter_conntrack.h>
#include <libnetfilter_conntrack/libnetfilter_conntrack_tcp.h>

// Small helpers for tandem-ctbench (Swift cannot use the macro constants and enum-typed
// attribute setters as comfortably as C).

/// An ESTABLISHED, assured TCP entry with both tuples, the way `conntrack -I -u SEEN_REPLY,ASSURED`
/// builds one. Addresses and ports in network byte order. NULL on allocation failure.
static inline struct nf_conntrack *ctb_new_tcp(uint32_t src, uint32_t dst, uint16_t sport, uint16_t dport,
                                               uint32_t timeout) {
    struct nf_conntrack *ct = nfct_new();
    if (ct == NULL) return NULL;
    nfct_set_attr_u8(ct, ATTR_L3PROTO, AF_INET);
    nfct_set_attr_u32(ct, ATTR_IPV4_SRC, src);
    nfct_set_attr_u32(ct, ATTR_IPV4_DST, dst);
    nfct_set_attr_u8(ct, ATTR_L4PROTO, IPPROTO_TCP);
    nfct_set_attr_u16(ct, ATTR_PORT_SRC, sport);
    nfct_set_attr_u16(ct, ATTR_PORT_DST, dport);
    nfct_set_attr_u8(ct, ATTR_REPL_L3PROTO, AF_INET);
    nfct_set_attr_u32(ct, ATTR_REPL_IPV4_SRC, dst);
    nfct_set_attr_u32(ct, ATTR_REPL_IPV4_DST, src);
    nfct_set_attr_u8(ct, ATTR_REPL_L4PROTO, IPPROTO_TCP);
    nfct_set_attr_u16(ct, ATTR_REPL_PORT_SRC, dport);
    nfct_set_attr_u16(ct, ATTR_REPL_PORT_DST, sport);
    nfct_set_attr_u8(ct, ATTR_TCP_STATE, TCP_CONNTRACK_ESTABLISHED);
    nfct_set_attr_u32(ct, ATTR_TIMEOUT, timeout);
    nfct_set_attr_u32(ct, ATTR_STATUS, IPS_SEEN_REPLY | IPS_ASSURED | IPS_CONFIRMED);
    return ct;
}

/// Changes the client side (original source, reply destination) of an entry made by ctb_new_tcp.
static inline void ctb_set_client(struct nf_conntrack *ct, uint32_t src, uint16_t sport) {
    nfct_set_attr_u32(ct, ATTR_IPV4_SRC, src);
    nfct_set_attr_u16(ct, ATTR_PORT_SRC, sport);
    nfct_set_attr_u32(ct, ATTR_REPL_IPV4_DST, src);
    nfct_set_attr_u16(ct, ATTR_REPL_PORT_DST, sport);
}

/// Original-direction IPv4 tuple of a TCP entry, network byte order. 0 when the entry is IPv4
/// TCP, -1 otherwise.
static inline int ctb_orig_tuple(const struct nf_conntrack *ct, uint32_t *src, uint32_t *dst,
                                 uint16_t *sport, uint16_t *dport) {
    if (nfct_get_attr_u8(ct, ATTR_L3PROTO) != AF_INET) return -1;
    if (nfct_get_attr_u8(ct, ATTR_L4PROTO) != IPPROTO_TCP) return -1;
    *src = nfct_get_attr_u32(ct, ATTR_IPV4_SRC);
    *dst = nfct_get_attr_u32(ct, ATTR_IPV4_DST);
    *sport = nfct_get_attr_u16(ct, ATTR_PORT_SRC);
    *dport = nfct_get_attr_u16(ct, ATTR_PORT_DST);
    return 0;
}

/// setns(fd, CLONE_NEWNET) for the calling thread only (glibc's wrapper needs _GNU_SOURCE).
static inline int ctb_setns_net(int fd) {
    return (int)syscall(SYS_setns, fd, CLONE_NEWNET);
}

/// Opens a ctnetlink handle subscribed to NEW events.
static inline struct nfct_handle *ctb_open_new_events(void) {
    return nfct_open(CONNTRACK, NF_NETLINK_CONNTRACK_NEW);
}

/// Opens a ctnetlink handle for queries (no event groups).
static inline struct nfct_handle *ctb_open_query(void) {
    return nfct_open(CONNTRACK, 0);
}

/// Socket receive buffer (SO_RCVBUFFORCE when root); returns the size the kernel reports.
static inline unsigned int ctb_set_rcvbuf(struct nfct_handle *h, unsigned int size) {
    return nfnl_rcvbufsiz(nfct_nfnlh(h), size);
}

/// Receive timeout, so nfct_catch() returns now and then (-1, EAGAIN) when nothing arrives.
static inline int ctb_set_rcvtimeo(struct nfct_handle *h, long usec) {
    struct timeval tv = { .tv_sec = usec / 1000000, .tv_usec = usec % 1000000 };
    return setsockopt(nfct_fd(h), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
}

static inline int ctb_dump_ipv4(struct nfct_handle *h) {
    uint32_t family = AF_INET;
    return nfct_query(h, NFCT_Q_DUMP, &family);
}

/* ---- TandemConntrack's event source (tct_*): the socket set-up Swift cannot express well
 * (SOL_NETLINK options, poll, the dump request's nfgenmsg). Message walking and attribute
 * mapping are in Swift. Functions return 0 or a length on success and -errno on failure. */
#include <errno.h>
#include <poll.h>
#include <libmnl/libmnl.h>
#include <linux/netlink.h>
#include <linux/netfilter/nfnetlink.h>

/* A NETLINK_NETFILTER socket (libmnl) in the calling thread's network namespace, joined to the
 * conntrack event groups set in `groups` (bit 0 NEW, bit 1 UPDATE, bit 2 DESTROY; 0 for a
 * request/dump socket). With `broadcast_error`, NETLINK_BROADCAST_ERROR is on: a delivery that
 * fails on this socket is reported back to ctnetlink, which then keeps the event and delivers it
 * again (with the entry's next event; destroys are retried until delivered). NETLINK_NO_ENOBUFS
 * stays off, so an overrun still reaches us as ENOBUFS and the source resynchronises. */
static inline struct mnl_socket *tct_open(unsigned groups, int broadcast_error, int *err) {
    struct mnl_socket *nl = mnl_socket_open2(NETLINK_NETFILTER, SOCK_CLOEXEC);
    if (nl == NULL) { *err = -errno; return NULL; }
    if (mnl_socket_bind(nl, 0, MNL_SOCKET_AUTOPID) < 0) goto fail;
    static const int grp[3] = { NFNLGRP_CONNTRACK_NEW, NFNLGRP_CONNTRACK_UPDATE, NFNLGRP_CONNTRACK_DESTROY };
    for (int i = 0; i < 3; i++) {
        if (!(groups & (1u << i))) continue;
        int g = grp[i];
        if (mnl_socket_setsockopt(nl, NETLINK_ADD_MEMBERSHIP, &g, sizeof(g)) < 0) goto fail;
    }
    if (groups != 0) {
        int on = broadcast_error ? 1 : 0, off = 0;
        if (mnl_socket_setsockopt(nl, NETLINK_BROADCAST_ERROR, &on, sizeof(on)) < 0) goto fail;
        if (mnl_socket_setsockopt(nl, NETLINK_NO_ENOBUFS, &off, sizeof(off)) < 0) goto fail;
    }
    *err = 0;
    return nl;
fail:
    *err = -errno;
    mnl_socket_close(nl);
    return NULL;
}

static inline int tct_fd(struct mnl_socket *nl) { return mnl_socket_get_fd(nl); }
static inline void tct_close(struct mnl_socket *nl) { mnl_socket_close(nl); }

/* Receive buffer: SO_RCVBUFFORCE (root; past rmem_max), else SO_RCVBUF. The kernel doubles the
 * value it is given for bookkeeping overhead, so half of `bytes` is passed. Returns the size the
 * kernel reports (SO_RCVBUF), or -errno. */
static inline int tct_set_rcvbuf(int fd, int bytes) {
    int half = bytes / 2;
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &half, sizeof(half)) < 0 &&
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &half, sizeof(half)) < 0) return -errno;
    int got = 0;
    socklen_t len = sizeof(got);
    if (getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &got, &len) < 0) return -errno;
    return got;
}

/* Waits up to timeout_ms for a datagram and reads it. Returns its length, -EAGAIN on timeout,
 * -EMSGSIZE when it did not fit (truncated), -ENOBUFS after an overrun, or another -errno. */
static inline int tct_recv(int fd, void *buf, size_t len, int timeout_ms) {
    if (timeout_ms >= 0) {
        struct pollfd p = { .fd = fd, .events = POLLIN };
        int r = poll(&p, 1, timeout_ms);
        if (r < 0) return -errno;
        if (r == 0) return -EAGAIN;
    }
    struct iovec iov = { .iov_base = buf, .iov_len = len };
    struct sockaddr_nl addr;
    struct msghdr msg = { .msg_name = &addr, .msg_namelen = sizeof(addr), .msg_iov = &iov, .msg_iovlen = 1 };
    ssize_t n = recvmsg(fd, &msg, MSG_DONTWAIT);
    if (n < 0) return -errno;
    if (msg.msg_flags & MSG_TRUNC) return -EMSGSIZE;
    if (msg.msg_namelen != sizeof(addr) || addr.nl_pid != 0) return -EPROTO;   /* not from the kernel */
    return (int)n;
}

/* Sends a ctnetlink dump request (IPCTNL_MSG_CT_GET, NLM_F_DUMP) for IPv4 entries. */
static inline int tct_send_dump(struct mnl_socket *nl, uint32_t seq) {
    char buf[MNL_SOCKET_BUFFER_SIZE];
    struct nlmsghdr *nlh = mnl_nlmsg_put_header(buf);
    nlh->nlmsg_type = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET;
    nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
    nlh->nlmsg_seq = seq;
    struct nfgenmsg *nfh = mnl_nlmsg_put_extra_header(nlh, sizeof(struct nfgenmsg));
    nfh->nfgen_family = AF_INET;
    nfh->version = NFNETLINK_V0;
    nfh->res_id = 0;
    if (mnl_socket_sendto(nl, nlh, nlh->nlmsg_len) < 0) return -errno;
    return 0;
}

/* nfct_nlmsg_parse on a message the caller has bounds-checked (nlmsg_len within the datagram). */
static inline int tct_parse(const void *nlh, struct nf_conntrack *ct) {
    return nfct_nlmsg_parse((const struct nlmsghdr *)nlh, ct);
}

/* Builds the ctnetlink message for an entry (for tests of the mapping: parse(build(x)) == x). */
static inline int tct_build(void *buf, size_t len, const struct nf_conntrack *ct, int destroy) {
    if (len < MNL_SOCKET_BUFFER_SIZE) return -ENOSPC;
    struct nlmsghdr *nlh = mnl_nlmsg_put_header(buf);
    nlh->nlmsg_type = (NFNL_SUBSYS_CTNETLINK << 8) | (destroy ? IPCTNL_MSG_CT_DELETE : IPCTNL_MSG_CT_NEW);
    nlh->nlmsg_flags = destroy ? 0 : (NLM_F_CREATE | NLM_F_EXCL);
    struct nfgenmsg *nfh = mnl_nlmsg_put_extra_header(nlh, sizeof(struct nfgenmsg));
    nfh->nfgen_family = AF_INET;
    nfh->version = NFNETLINK_V0;
    nfh->res_id = 0;
    if (nfct_nlmsg_build(nlh, ct) < 0) return -errno;
    return (int)nlh->nlmsg_len;
}

/* ---- TandemConntrack's sink (tct_sink_*): batched ctnetlink create/update/delete requests, each
 * with NLM_F_ACK and its own sequence number, so every message's result comes back as one
 * NLMSG_ERROR (0 = done). Which attributes each request carries is decided in Swift
 * (ConntrackSinkCore); here only the framing and the socket. */

/* A request socket for the sink: NETLINK_CAP_ACK on (an error ack then carries the request's
 * header only, not its whole payload, so many acks fit the receive buffer), extended acks off,
 * and large forced send/receive buffers (a batch is one datagram; its acks queue up until read). */
static inline struct mnl_socket *tct_sink_open(int bufbytes, int *err) {
    struct mnl_socket *nl = mnl_socket_open2(NETLINK_NETFILTER, SOCK_CLOEXEC);
    if (nl == NULL) { *err = -errno; return NULL; }
    if (mnl_socket_bind(nl, 0, MNL_SOCKET_AUTOPID) < 0) goto fail;
    int on = 1, off = 0;
    if (mnl_socket_setsockopt(nl, NETLINK_CAP_ACK, &on, sizeof(on)) < 0) goto fail;
    (void)mnl_socket_setsockopt(nl, NETLINK_EXT_ACK, &off, sizeof(off));
    int fd = mnl_socket_get_fd(nl);
    int half = bufbytes / 2;   /* the kernel doubles what it is given */
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &half, sizeof(half)) < 0)
        (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &half, sizeof(half));
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &half, sizeof(half)) < 0)
        (void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &half, sizeof(half));
    *err = 0;
    return nl;
fail:
    *err = -errno;
    mnl_socket_close(nl);
    return NULL;
}

/* Room a single request may need at most (tuples, NAT, protoinfo, status, timeout, mark, zone
 * are a few hundred bytes; nfct_nlmsg_build does not bounds-check, so we insist on this much). */
#define TCT_SINK_MSG_MAX 1024

/* Appends one request for `ct` at buf+off: op 0 create (NLM_F_CREATE|NLM_F_EXCL, so an existing
 * entry answers EEXIST instead of being changed silently), 1 update (no create flag: a missing
 * entry answers ENOENT), 2 delete. Returns the new end offset (4-byte aligned) or -ENOSPC. */
static inline int tct_sink_put(void *buf, size_t cap, size_t off, const struct nf_conntrack *ct,
                               int op, uint32_t seq) {
    if (off > cap || cap - off < TCT_SINK_MSG_MAX) return -ENOSPC;
    struct nlmsghdr *nlh = mnl_nlmsg_put_header((char *)buf + off);
    nlh->nlmsg_type = (NFNL_SUBSYS_CTNETLINK << 8) | (op == 2 ? IPCTNL_MSG_CT_DELETE : IPCTNL_MSG_CT_NEW);
    nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK | (op == 0 ? (NLM_F_CREATE | NLM_F_EXCL) : 0);
    nlh->nlmsg_seq = seq;
    struct nfgenmsg *nfh = mnl_nlmsg_put_extra_header(nlh, sizeof(struct nfgenmsg));
    nfh->nfgen_family = AF_INET;
    nfh->version = NFNETLINK_V0;
    nfh->res_id = 0;
    if (nfct_nlmsg_build(nlh, ct) < 0) return -EINVAL;
    if (nlh->nlmsg_len > TCT_SINK_MSG_MAX) return -EMSGSIZE;
    return (int)(off + MNL_ALIGN(nlh->nlmsg_len));
}

/* Sends a batch (one datagram of several requests) to the kernel. 0 or -errno. */
static inline int tct_sink_send(struct mnl_socket *nl, const void *buf, size_t len) {
    ssize_t n = mnl_socket_sendto(nl, buf, len);
    if (n < 0) return -errno;
    return 0;
}

/* NAT targets for a create request (libnetfilter_conntrack turns them into CTA_NAT_SRC /
 * CTA_NAT_DST with min == max). Address and port in network byte order; port < 0 for none. */
static inline void tct_sink_set_snat(struct nf_conntrack *ct, uint32_t addr, int port) {
    nfct_set_attr_u32(ct, ATTR_SNAT_IPV4, addr);
    if (port >= 0) nfct_set_attr_u16(ct, ATTR_SNAT_PORT, (uint16_t)port);
}
static inline void tct_sink_set_dnat(struct nf_conntrack *ct, uint32_t addr, int port) {
    nfct_set_attr_u32(ct, ATTR_DNAT_IPV4, addr);
    if (port >= 0) nfct_set_attr_u16(ct, ATTR_DNAT_PORT, (uint16_t)port);
}

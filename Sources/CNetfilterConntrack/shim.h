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

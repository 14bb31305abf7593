// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Tandem's load-balancing datapath: a TC ingress program on the node's interface(s).
 *
 * For a packet to a service (VIP, port, protocol) it finds or creates a connection entry in both
 * directions, picks an endpoint for a new flow, rewrites addresses and ports for the NAT mode,
 * fixes checksums through the skb helpers (which understand CHECKSUM_PARTIAL on veth), and sends
 * the packet out again through a FIB lookup. Anything that is not ours goes to the kernel stack.
 *
 * TC rather than XDP: the skb checksum helpers handle the partial checksums veth and virtio hand
 * us, bpf_redirect_neigh resolves next hops, and GRO/GSO packets are handled whole.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "tandem_maps.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#ifndef AF_INET
#define AF_INET 2
#endif

/* barrier_var (bpf_helpers.h) hides a value from the optimiser so a bounds mask the verifier
 * needs is not folded away. */
/* linux/icmp.h drags in libc socket headers that do not build for the BPF target. */
#define ICMP_ECHOREPLY 0
#define ICMP_ECHO      8
struct icmphdr {
    __u8  type;
    __u8  code;
    __sum16 checksum;
    union {
        struct { __be16 id; __be16 sequence; } echo;
        __be32 gateway;
    } un;
};

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, TDM_CT_DEFAULT_MAX);
    __type(key, struct tdm_flow_key);
    __type(value, struct tdm_ct_entry);
} tdm_ct SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, TDM_MAX_SERVICES);
    __type(key, struct tdm_service_key);
    __type(value, struct tdm_service);
} tdm_services SEC(".maps");

/* VIPs with at least one service, for answering ICMP echo. Value: number of services. */
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, TDM_MAX_SERVICES);
    __type(key, __be32);
    __type(value, __u32);
} tdm_vips SEC(".maps");

/* VIPs this node owns (MASTER of their HA instance). Consulted only when cfg->gate_vips is set:
 * a BACKUP must not answer for a VIP, even if a stale route or ARP entry still sends it traffic.
 * Value unused (1). */
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, TDM_MAX_SERVICES);
    __type(key, __be32);
    __type(value, __u8);
} tdm_active_vips SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, TDM_MAX_SERVICES * TDM_MAX_ENDPOINTS);
    __type(key, __u32);
    __type(value, struct tdm_endpoint);
} tdm_endpoints SEC(".maps");

/* Endpoint health by tdm_endpoints index (struct tdm_ep_state), written by user space on each
 * verdict. Zero = up. */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, TDM_MAX_SERVICES * TDM_MAX_ENDPOINTS);
    __type(key, __u32);
    __type(value, struct tdm_ep_state);
} tdm_ep_state SEC(".maps");

/* allowedSources of services with TDM_SVC_F_SOURCES (struct tdm_source_key). Value unused (1). */
struct {
    __uint(type, BPF_MAP_TYPE_LPM_TRIE);
    __uint(max_entries, TDM_MAX_SERVICES * TDM_MAX_SOURCES);
    __uint(map_flags, BPF_F_NO_PREALLOC); /* the kernel requires it of tries */
    __type(key, struct tdm_source_key);
    __type(value, __u8);
} tdm_sources SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, TDM_MAX_SERVICES);
    __type(key, __u32);
    __type(value, struct tdm_schedule);
} tdm_schedules SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, TDM_MAX_SERVICES);
    __type(key, __u32);
    __type(value, struct tdm_maglev);
} tdm_maglev SEC(".maps");

/* Per-service idle timeout (inactiveTimeOut) of the established states, in ns by service slot;
 * 0 = the node's. An array so programs that have only an entry's service_id can look it up. */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, TDM_MAX_SERVICES);
    __type(key, __u32);
    __type(value, __u64);
} tdm_svc_timeout SEC(".maps");

/* Active connections per endpoint (index service_id * TDM_MAX_ENDPOINTS + endpoint_index), for
 * least-connections selection. Shared and updated atomically; mmapped by user space, which
 * gives back counts of connections it deletes itself. */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, TDM_MAX_SERVICES * TDM_MAX_ENDPOINTS);
    __uint(map_flags, BPF_F_MMAPABLE);
    __type(key, __u32);
    __type(value, __u64);
} tdm_lc_active SEC(".maps");

/* Shared (not per-CPU) so consecutive new flows alternate whichever CPU they land on. */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, TDM_MAX_SERVICES);
    __type(key, __u32);
    __type(value, __u32);
} tdm_rr SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, TDM_PERSIST_MAX);
    __type(key, struct tdm_persist_key);
    __type(value, struct tdm_persist_value);
} tdm_persist SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, TDM_MAX_SERVICES);
    __type(key, __u32);
    __type(value, struct tdm_counters);
} tdm_service_stats SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, TDM_MAX_SERVICES * TDM_MAX_ENDPOINTS);
    __type(key, __u32);
    __type(value, struct tdm_counters);
} tdm_endpoint_stats SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, TDM_STAT_COUNT);
    __type(key, __u32);
    __type(value, __u64);
} tdm_stats SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct tdm_config);
} tdm_config SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, TDM_RINGBUF_BYTES);
} tdm_events SEC(".maps");

/* Reader/datapath handshake for ring-buffer wakeups (struct tdm_event_ctl), mmapped by the reader. */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __uint(map_flags, BPF_F_MMAPABLE);
    __type(key, __u32);
    __type(value, struct tdm_event_ctl);
} tdm_event_ctl SEC(".maps");

/* Staging buffer for tandem_install, written by user space through mmap. */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __uint(map_flags, BPF_F_MMAPABLE);
    __type(key, __u32);
    __type(value, struct tdm_install_buf);
} tdm_install SEC(".maps");

#define IP_CSUM_OFF  (ETH_HLEN + offsetof(struct iphdr, check))
#define IP_SRC_OFF   (ETH_HLEN + offsetof(struct iphdr, saddr))
#define IP_DST_OFF   (ETH_HLEN + offsetof(struct iphdr, daddr))
#define IP_FRAG_MASK 0x3fff /* MF flag + fragment offset */

static __always_inline void stat_inc(__u32 which)
{
    __u64 *v = bpf_map_lookup_elem(&tdm_stats, &which);
    if (v)
        *v += 1;
}

/* murmur3's finalizer; tdm_flow_hash must match TandemCore's FlowHash bit for bit. */
static __always_inline __u32 fmix32(__u32 h)
{
    h ^= h >> 16;
    h *= 0x85ebca6b;
    h ^= h >> 13;
    h *= 0xc2b2ae35;
    h ^= h >> 16;
    return h;
}

static __always_inline __u32 tdm_flow_hash(const struct tdm_flow_key *k, __u32 seed)
{
    __u32 h = seed ^ 0x9e3779b9;
    h = fmix32(h ^ bpf_ntohl(k->saddr));
    h = fmix32(h ^ bpf_ntohl(k->daddr));
    h = fmix32(h ^ (((__u32)bpf_ntohs(k->sport) << 16) | bpf_ntohs(k->dport)));
    h = fmix32(h ^ k->proto);
    return h;
}

static __always_inline int same_key(const struct tdm_flow_key *a, const struct tdm_flow_key *b)
{
    return a->saddr == b->saddr && a->daddr == b->daddr && a->sport == b->sport && a->dport == b->dport &&
           a->proto == b->proto;
}

static __always_inline __u64 *lc_counter(__u32 sid, __u8 ei)
{
    if (sid >= TDM_MAX_SERVICES)
        return NULL; /* a peer's flow of a service this node does not have */
    __u32 idx = sid * TDM_MAX_ENDPOINTS + (ei & (TDM_MAX_ENDPOINTS - 1));
    return bpf_map_lookup_elem(&tdm_lc_active, &idx);
}

static __always_inline void lc_take(__u32 sid, __u8 ei)
{
    __u64 *c = lc_counter(sid, ei);
    if (c)
        __sync_fetch_and_add(c, 1);
}

/* Gives back one count, never below zero (a counter reset under live connections, or a lost
 * race, must not wrap to 2^64 and starve the endpoint). */
static __always_inline void lc_give(__u32 sid, __u8 ei)
{
    __u64 *c = lc_counter(sid, ei);
    if (!c)
        return;
    for (int i = 0; i < 8; i++) {
        __u64 v = *(volatile __u64 *)c;
        if (v == 0 || __sync_val_compare_and_swap(c, v, v - 1) == v)
            return;
    }
}

/* Health verdict of an endpoint (see struct tdm_ep_state); a peer's flow of an unknown service
 * (sid out of range) is never down. */
static __always_inline int ep_down(__u32 sid, __u8 ei)
{
    if (sid >= TDM_MAX_SERVICES)
        return 0;
    __u32 idx = sid * TDM_MAX_ENDPOINTS + (ei & (TDM_MAX_ENDPOINTS - 1));
    struct tdm_ep_state *st = bpf_map_lookup_elem(&tdm_ep_state, &idx);
    return st && st->down;
}

/* The endpoint `ei` of service `id` if it may take a new connection: one of the service's `n`,
 * active (not drained) and not down. NULL otherwise. */
static __always_inline struct tdm_endpoint *eligible(__u32 id, __u32 ei, __u32 n)
{
    if (ei >= n || ei >= TDM_MAX_ENDPOINTS)
        return NULL;
    __u32 idx = id * TDM_MAX_ENDPOINTS + ei;
    struct tdm_endpoint *ep = bpf_map_lookup_elem(&tdm_endpoints, &idx);
    if (!ep || !ep->active)
        return NULL;
    struct tdm_ep_state *st = bpf_map_lookup_elem(&tdm_ep_state, &idx);
    if (st && st->down)
        return NULL;
    return ep;
}

/* A connection stops counting once it is closing: RST, or FIN from both sides. */
static __always_inline int lc_live_state(__u8 state)
{
    return state != TDM_CT_CLOSED && state != TDM_CT_TIME_WAIT;
}

/* Gives back the count of the connection `e` (at `key`) belongs to when that connection goes
 * away with it: an original, a reply half whose original points back at it (same flags), or an
 * orphaned reply half (its original went without giving back: LRU eviction). A stale reply half
 * (its original now belongs to another connection) holds nothing. */
static __always_inline void lc_release(const struct tdm_ct_entry *e, const struct tdm_flow_key *key)
{
    if (!(e->flags & TDM_CT_F_COUNTED))
        return;
    if (e->dir == TDM_DIR_REPLY) {
        struct tdm_ct_entry *oe = bpf_map_lookup_elem(&tdm_ct, &e->peer);
        if (oe && !same_key(&oe->peer, key))
            return;
    }
    lc_give(e->service_id, e->endpoint_index);
}

static __always_inline __u64 state_timeout(const struct tdm_config *cfg, __u8 state)
{
    if (state >= TDM_CT_STATE_COUNT)
        return 0;
    return cfg->timeout_ns[state];
}

/* The idle timeout of an entry: its service's inactiveTimeOut for the established states (TCP
 * ESTABLISHED, UDP new and established), else the node's for its state. */
static __always_inline __u64 entry_timeout(const struct tdm_config *cfg, const struct tdm_ct_entry *e)
{
    __u8 state = e->state;
    if (state == TDM_CT_ESTABLISHED || state == TDM_CT_UDP_EST || state == TDM_CT_UDP_NEW) {
        __u32 sid = e->service_id;
        __u64 *t = bpf_map_lookup_elem(&tdm_svc_timeout, &sid); /* NULL for a slot out of range */
        if (t && *t)
            return *t;
    }
    return state_timeout(cfg, state);
}

/* A packet on a flow whose peers were last told about it a quarter of its timeout ago: time to
 * re-announce it. Packets change nothing peers are told otherwise, so without this a flow that
 * lives long in one state (a UDP stream, an established TCP connection) would run out on its
 * peers while it is still busy here. A shift, not a division: timeout >> 32 in 2^30 ns units is a
 * quarter of it (~0.23 s short per second of timeout). */
static __always_inline int refresh_due(const struct tdm_config *cfg, const struct tdm_ct_entry *e, __u64 now)
{
    __u32 every = (__u32)(entry_timeout(cfg, e) >> 32);
    return (__u32)(now >> 30) - e->refreshed >= (every ? every : 1);
}

static __always_inline int entry_expired(const struct tdm_config *cfg, const struct tdm_ct_entry *e, __u64 now)
{
    __u64 t = entry_timeout(cfg, e);
    return now > e->last_seen_ns && now - e->last_seen_ns > t;
}

/*
 * A connection is over only when both halves are idle past the timeout: one-way traffic (a UDP
 * stream the endpoint seldom answers, a bulk upload whose ACKs are not ours to see) keeps only one
 * half fresh, and the user-space reaper also takes the fresher of the two. The peer counts only
 * while it still points back at `key`; a half whose peer is gone or reused is judged alone.
 */
static __always_inline int conn_expired(const struct tdm_config *cfg, const struct tdm_ct_entry *e,
                                        const struct tdm_flow_key *key, __u64 now)
{
    if (!entry_expired(cfg, e, now))
        return 0;
    struct tdm_ct_entry *pe = bpf_map_lookup_elem(&tdm_ct, &e->peer);
    return !pe || !same_key(&pe->peer, key) || entry_expired(cfg, pe, now);
}

/* Forgets a connection: the entry `e` at `key`, and its other half at `peer` only while that half
 * still points back at `key` (its key may already belong to a newer connection), giving back its
 * active count. key and peer are copies on the stack, not pointers into entries being deleted. */
static __always_inline void forget(const struct tdm_ct_entry *e, const struct tdm_flow_key *key,
                                   const struct tdm_flow_key *peer)
{
    lc_release(e, key);
    struct tdm_ct_entry *pe = bpf_map_lookup_elem(&tdm_ct, peer);
    if (pe && same_key(&pe->peer, key))
        bpf_map_delete_elem(&tdm_ct, peer);
    bpf_map_delete_elem(&tdm_ct, key);
}

/* See struct tdm_event_ctl: wake the reader only when it sleeps or the ring fills up. */
static __always_inline __u64 event_wakeup_flags(void)
{
    __u32 zero = 0;
    struct tdm_event_ctl *ctl = bpf_map_lookup_elem(&tdm_event_ctl, &zero);
    if (!ctl)
        return 0; /* the kernel's own policy */
    if (ctl->consumer_waiting) {
        ctl->consumer_waiting = 0;
        return BPF_RB_FORCE_WAKEUP;
    }
    if (bpf_ringbuf_query(&tdm_events, BPF_RB_AVAIL_DATA) > bpf_ringbuf_query(&tdm_events, BPF_RB_RING_SIZE) / 2)
        return BPF_RB_FORCE_WAKEUP;
    return BPF_RB_NO_WAKEUP;
}

static __always_inline void emit_event(const struct tdm_config *cfg, __u8 type, const struct tdm_ct_entry *orig,
                                       const struct tdm_flow_key *key, __u64 now)
{
    if (!cfg->emit_events)
        return;
    struct tdm_ct_event *ev = bpf_ringbuf_reserve(&tdm_events, sizeof(*ev), 0);
    if (!ev) {
        stat_inc(TDM_STAT_EVENT_LOST);
        return;
    }
    ev->type = type;
    ev->state = orig->state;
    ev->nat_mode = orig->nat_mode;
    ev->flags = orig->flags;
    ev->service_id = orig->service_id;
    ev->key = *key;
    ev->xlate = orig->xlate;
    ev->ts_ns = now;
    ev->version = orig->version;
    ev->endpoint_index = orig->endpoint_index;
    ev->pad[0] = ev->pad[1] = ev->pad[2] = 0;
    ev->created_ns = orig->created_ns;
    bpf_ringbuf_submit(ev, event_wakeup_flags());
}

/*
 * TCP state machine, applied to both entries of a connection. Mirrors TandemCore's
 * TCPStateMachine; the privileged tests drive both with the same sequences.
 */
static __always_inline __u8 tcp_next_state(__u8 state, __u8 *flags, __u8 dir, __u8 tcp_flags)
{
    const __u8 FIN = 0x01, SYN = 0x02, RST = 0x04, ACK = 0x10;
    if (tcp_flags & RST)
        return TDM_CT_CLOSED;
    if (tcp_flags & FIN) {
        *flags |= dir == TDM_DIR_ORIGINAL ? TDM_CT_F_FIN_ORIG : TDM_CT_F_FIN_REPLY;
        if ((*flags & (TDM_CT_F_FIN_ORIG | TDM_CT_F_FIN_REPLY)) == (TDM_CT_F_FIN_ORIG | TDM_CT_F_FIN_REPLY))
            return TDM_CT_TIME_WAIT;
        return TDM_CT_FIN_WAIT;
    }
    switch (state) {
    case TDM_CT_SYN_SENT:
        if (dir == TDM_DIR_REPLY && (tcp_flags & (SYN | ACK)) == (SYN | ACK))
            return TDM_CT_SYN_RECV;
        return state;
    case TDM_CT_SYN_RECV:
        if (dir == TDM_DIR_ORIGINAL && (tcp_flags & (SYN | ACK)) == ACK)
            return TDM_CT_ESTABLISHED;
        return state;
    case TDM_CT_CLOSED:
    case TDM_CT_TIME_WAIT:
        /* A new SYN on a closed tuple is handled as a new flow by the caller. */
        return state;
    default:
        return state;
    }
}

struct pkt {
    struct tdm_flow_key key;
    __u32 l4_off;
    __u32 l4_csum_off;
    __u32 csum_flags;     /* extra flags for bpf_l4_csum_replace (UDP's zero checksum) */
    __u32 len;
    __u8  tcp_flags;
    __u8  icmp_type;
    __u8  has_ports;      /* TCP/UDP: ports are rewritten; ICMP echo: the id is */
};

static __always_inline int parse(struct __sk_buff *skb, struct pkt *p)
{
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
        return -1;
    struct iphdr *ip = (void *)(eth + 1);
    if ((void *)(ip + 1) > end || ip->version != 4 || ip->ihl < 5)
        return -1;
    if (ip->frag_off & bpf_htons(IP_FRAG_MASK))
        return -1; /* fragments go to the stack */
    __u32 ihl = ip->ihl * 4;
    p->l4_off = ETH_HLEN + ihl;
    p->key.saddr = ip->saddr;
    p->key.daddr = ip->daddr;
    p->key.proto = ip->protocol;
    p->key.pad[0] = p->key.pad[1] = p->key.pad[2] = 0;
    p->len = skb->len;
    p->tcp_flags = 0;
    p->csum_flags = 0;
    void *l4 = data + p->l4_off;
    if (ip->protocol == IPPROTO_TCP) {
        struct tcphdr *th = l4;
        if ((void *)(th + 1) > end)
            return -1;
        p->key.sport = th->source;
        p->key.dport = th->dest;
        p->tcp_flags = ((__u8 *)th)[13];
        p->l4_csum_off = p->l4_off + offsetof(struct tcphdr, check);
        return 0;
    }
    if (ip->protocol == IPPROTO_UDP) {
        struct udphdr *uh = l4;
        if ((void *)(uh + 1) > end)
            return -1;
        p->key.sport = uh->source;
        p->key.dport = uh->dest;
        p->l4_csum_off = p->l4_off + offsetof(struct udphdr, check);
        p->csum_flags = BPF_F_MARK_MANGLED_0;
        return 0;
    }
    if (ip->protocol == IPPROTO_ICMP) {
        struct icmphdr *ih = l4;
        if ((void *)(ih + 1) > end)
            return -1;
        p->icmp_type = ih->type;
        if (ih->type != ICMP_ECHO && ih->type != ICMP_ECHOREPLY)
            return -1;
        p->key.sport = ih->un.echo.id;
        p->key.dport = ih->un.echo.id;
        p->l4_csum_off = p->l4_off + offsetof(struct icmphdr, checksum);
        return 0;
    }
    return -1;
}

/* Ones' complement sum of 32-bit words, as csum_partial folds them: cheaper inline than a
 * bpf_csum_diff call for the two or four words a rewrite changes. */
static __always_inline __u32 csum_add32(__u32 a, __u32 b)
{
    a += b;
    return a + (a < b);
}

/* The checksum difference of replacing words a0,a1 by b0,b1 (bpf_csum_diff's result). */
static __always_inline __u32 csum_diff2(__u32 a0, __u32 a1, __u32 b0, __u32 b1)
{
    return csum_add32(csum_add32(~a0, ~a1), csum_add32(b0, b1));
}

/*
 * Rewrites the packet's tuple from `from` to `to`, fixing the IP and L4 checksums. The address
 * pair and the port pair are each one checksum difference (computed inline) and one store (tdm_flow_key keeps
 * saddr/daddr and sport/dport adjacent, as the headers do): two to five helper calls instead of
 * ten. The L4 update goes through bpf_l4_csum_replace, which knows CHECKSUM_PARTIAL (veth, virtio):
 * there only the pseudo-header part (the addresses) may change the checksum field.
 */
static __always_inline int rewrite(struct __sk_buff *skb, const struct pkt *p, const struct tdm_flow_key *to)
{
    const struct tdm_flow_key *from = &p->key;
    __u32 l4flags = p->csum_flags;
    int pseudo = p->key.proto != IPPROTO_ICMP; /* ICMP's checksum has no pseudo header */
    if (from->saddr != to->saddr || from->daddr != to->daddr) {
        __u32 diff = csum_diff2(from->saddr, from->daddr, to->saddr, to->daddr);
        if (pseudo && bpf_l4_csum_replace(skb, p->l4_csum_off, 0, diff, BPF_F_PSEUDO_HDR | l4flags))
            return -1;
        if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, 0, diff, 0))
            return -1;
        if (bpf_skb_store_bytes(skb, IP_SRC_OFF, &to->saddr, 8, 0))
            return -1;
    }
    if (p->key.proto == IPPROTO_ICMP)
        return 0; /* echo id is kept: only addresses change */
    if (from->sport != to->sport || from->dport != to->dport) {
        /* One word: the two ports as they lie in the header. */
        __u32 diff = csum_diff2(((__u32)from->dport << 16) | from->sport, 0, ((__u32)to->dport << 16) | to->sport, 0);
        if (bpf_l4_csum_replace(skb, p->l4_csum_off, 0, diff, l4flags))
            return -1;
        if (bpf_skb_store_bytes(skb, p->l4_off, &to->sport, 4, 0))
            return -1;
    }
    return 0;
}

/* Sends the rewritten packet towards its new destination. */
static __always_inline int forward(struct __sk_buff *skb, const struct tdm_config *cfg, const struct tdm_flow_key *to,
                                   __u32 in_ifindex)
{
    if (cfg->skip_fib) {
        /* The kernel refuses FIB lookups on an interface that does not forward: go straight to
         * the neighbour-resolving redirect out of the interface the packet came in on. */
        long r = bpf_redirect_neigh(in_ifindex, NULL, 0, 0);
        if (r != TC_ACT_REDIRECT)
            stat_inc(TDM_STAT_REDIRECT_FAILED);
        return r;
    }
    struct bpf_fib_lookup fib = {};
    fib.family = AF_INET;
    fib.l4_protocol = to->proto;
    fib.sport = to->sport;
    fib.dport = to->dport;
    fib.tot_len = skb->len - ETH_HLEN;
    fib.ipv4_src = to->saddr;
    fib.ipv4_dst = to->daddr;
    fib.ifindex = in_ifindex;

    long rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
    if (rc == BPF_FIB_LKUP_RET_SUCCESS) {
        if (bpf_skb_store_bytes(skb, 0, fib.dmac, ETH_ALEN, 0) ||
            bpf_skb_store_bytes(skb, ETH_ALEN, fib.smac, ETH_ALEN, 0))
            return TC_ACT_SHOT;
        return bpf_redirect(fib.ifindex, 0);
    }
    /* No neighbour yet, or forwarding disabled on this interface (a one-armed node does not
     * need it): let the kernel resolve the next hop out of the matching interface. */
    __u32 oif = rc == BPF_FIB_LKUP_RET_NO_NEIGH ? fib.ifindex : in_ifindex;
    long r = bpf_redirect_neigh(oif, NULL, 0, 0);
    if (r != TC_ACT_REDIRECT)
        stat_inc(TDM_STAT_REDIRECT_FAILED);
    return r;
}

static __always_inline void count(void *map, __u32 idx, __u32 len, int new_flow)
{
    struct tdm_counters *c = bpf_map_lookup_elem(map, &idx);
    if (c) {
        c->packets += 1;
        c->bytes += len;
        if (new_flow)
            c->new_flows += 1;
    }
}

/* allowedSources: may `saddr` open a connection to `svc`? Only services with a list pay the
 * trie lookup, and only for packets that would create a connection. */
static __always_inline int source_allowed(const struct tdm_service *svc, __be32 saddr)
{
    if (!(svc->flags & TDM_SVC_F_SOURCES))
        return 1;
    struct tdm_source_key k = { .prefixlen = 64, .service_id = svc->id, .addr = saddr };
    if (bpf_map_lookup_elem(&tdm_sources, &k))
        return 1;
    __u32 id = svc->id;
    struct tdm_counters *c = bpf_map_lookup_elem(&tdm_service_stats, &id);
    if (c)
        c->denied += 1;
    stat_inc(TDM_STAT_SOURCE_DENIED);
    return 0;
}

/* One step of the schedule walk (bpf_loop callback: the verifier checks it once, not per lap). */
struct sched_walk {
    __u32 id;
    __u32 count;  /* the service's endpoints */
    __u32 len;    /* schedule slots in use, 1..TDM_SCHED_LEN */
    int   chosen;
};

static long sched_step(__u32 i, void *data)
{
    struct sched_walk *w = data;
    __u32 id = w->id;
    struct tdm_schedule *s = bpf_map_lookup_elem(&tdm_schedules, &id);
    __u32 *ctr = bpf_map_lookup_elem(&tdm_rr, &id);
    if (!s || !ctr || w->len == 0)
        return 1;
    __u32 n = __sync_fetch_and_add(ctr, 1);
    __u32 slot = n % w->len;
    barrier_var(slot);
    slot &= TDM_SCHED_LEN - 1;
    __u32 ei = s->slot[slot];
    if (!eligible(id, ei, w->count))
        return 0;
    w->chosen = (int)(ei & (TDM_MAX_ENDPOINTS - 1));
    return 1;
}

/* One step of the least-connections scan (bpf_loop callback, like sched_step): unrolled by the
 * verifier, the 64-step scan with two health lookups per step took it past its 1M-instruction
 * budget; as a callback the whole program verifies in a third of what it took before. */
struct lc_scan {
    __u32 id;
    __u32 n;      /* endpoints, <= TDM_MAX_ENDPOINTS */
    __u32 start;  /* < n */
    int   best;
    __u64 best_count;
};

static long lc_step(__u32 i, void *data)
{
    struct lc_scan *l = data;
    __u32 n = l->n;
    if (i >= n || n > TDM_MAX_ENDPOINTS)
        return 1;
    __u32 ei = l->start + i;
    if (ei >= n)
        ei -= n;
    if (!eligible(l->id, ei, n))
        return 0;
    __u32 idx = l->id * TDM_MAX_ENDPOINTS + (ei & (TDM_MAX_ENDPOINTS - 1));
    __u64 *c = bpf_map_lookup_elem(&tdm_lc_active, &idx);
    __u64 v = c ? *c : 0;
    if (v < l->best_count) {
        l->best_count = v;
        l->best = (int)(ei & (TDM_MAX_ENDPOINTS - 1));
    }
    return 0;
}

/* Picks an eligible endpoint index for a new flow, or -1 when there is none. */
static __always_inline int select_endpoint(const struct tdm_config *cfg, const struct tdm_service *svc,
                                           const struct tdm_flow_key *key, __u64 now)
{
    __u32 id = svc->id;
    if (svc->endpoint_count == 0)
        return -1;
    if (svc->sel == TDM_SEL_MAGLEV) {
        struct tdm_maglev *m = bpf_map_lookup_elem(&tdm_maglev, &id);
        if (!m)
            return -1;
        /* slot < M < SLOTS already; the mask is for the verifier, which cannot see that. */
        __u32 slot = tdm_flow_hash(key, cfg->hash_seed) % TDM_MAGLEV_M;
        barrier_var(slot);
        slot &= TDM_MAGLEV_SLOTS - 1;
        __u32 ei = m->slot[slot];
        if (eligible(id, ei, svc->endpoint_count))
            return ei;
        /* User space rebuilds the table without down endpoints (the same on every node); until
         * it has, or for a drained endpoint, the schedule below picks a live one. */
    }
    if (svc->sel == TDM_SEL_LC) {
        /* Scan from the round-robin cursor, so equal counts take turns instead of all going to
         * endpoint 0. Down and drained endpoints are skipped. */
        __u32 *ctr = bpf_map_lookup_elem(&tdm_rr, &id);
        if (!ctr)
            return -1;
        __u32 n = svc->endpoint_count;
        if (n > TDM_MAX_ENDPOINTS)
            n = TDM_MAX_ENDPOINTS;
        __u32 start = __sync_fetch_and_add(ctr, 1) % n;
        struct lc_scan l = { .id = id, .n = n, .start = start, .best = -1, .best_count = ~0ULL };
        bpf_loop(n, lc_step, &l, 0);
        return l.best;
    }
    struct tdm_persist_key pk = { .service_id = id, .client_ip = key->saddr };
    if (svc->sel == TDM_SEL_PERSIST) {
        struct tdm_persist_value *pv = bpf_map_lookup_elem(&tdm_persist, &pk);
        if (pv && now - pv->last_used_ns <= (__u64)svc->persist_timeout_s * 1000000000ULL) {
            __u32 ei = pv->endpoint_index;
            if (eligible(id, ei, svc->endpoint_count)) {
                pv->last_used_ns = now;
                return ei;
            }
            /* Remembered endpoint down or drained: re-picked below, and the new one recorded. */
        }
    }
    if (svc->sched_len == 0)
        return -1;
    /* Walk the schedule to the next eligible slot. Each step takes the cursor, so a skipped slot
     * is consumed for everyone and the live endpoints keep their shares (walking on from one
     * position would hand a down endpoint's share to whichever endpoint follows it). At most one
     * lap: with nothing eligible, no endpoint (after len cursor steps: only then). */
    struct sched_walk w = { .id = id, .count = svc->endpoint_count, .len = svc->sched_len, .chosen = -1 };
    if (w.len > TDM_SCHED_LEN)
        w.len = TDM_SCHED_LEN;
    bpf_loop(w.len, sched_step, &w, 0);
    int chosen = w.chosen;
    if (chosen < 0)
        return -1;
    if (svc->sel == TDM_SEL_PERSIST) {
        struct tdm_persist_value nv = { .last_used_ns = now, .endpoint_index = chosen };
        bpf_map_update_elem(&tdm_persist, &pk, &nv, BPF_ANY);
    }
    return chosen;
}

/* True when `reply` is unused or holds only an expired connection. */
static __always_inline int reply_key_free(const struct tdm_config *cfg, const struct tdm_flow_key *reply, __u64 now)
{
    struct tdm_ct_entry *e = bpf_map_lookup_elem(&tdm_ct, reply);
    return !e || conn_expired(cfg, e, reply, now);
}

static __always_inline __u8 initial_state(const struct pkt *p)
{
    if (p->key.proto == IPPROTO_TCP) {
        const __u8 SYN = 0x02, ACK = 0x10;
        if ((p->tcp_flags & (SYN | ACK)) == SYN)
            return TDM_CT_SYN_SENT;
        return TDM_CT_ESTABLISHED; /* picked up mid-flow */
    }
    if (p->key.proto == IPPROTO_UDP)
        return TDM_CT_UDP_NEW;
    return TDM_CT_ICMP;
}

#define TDM_NEW_NO_ENDPOINT (-2) /* new_flow: no eligible endpoint (the client is told so) */

/* Creates both entries of a new connection; returns the original-direction entry's translation.
 * -1 when the packet is to be dropped, TDM_NEW_NO_ENDPOINT when the service has no eligible
 * endpoint (counted here). */
static __always_inline int new_flow(struct __sk_buff *skb, const struct tdm_config *cfg, const struct pkt *p,
                                    const struct tdm_service *svc, __u64 now, struct tdm_flow_key *out)
{
    int ei = select_endpoint(cfg, svc, &p->key, now);
    struct tdm_endpoint *ep = ei < 0 ? NULL : eligible(svc->id, (__u32)ei, svc->endpoint_count);
    if (!ep || ei >= TDM_MAX_ENDPOINTS) {
        stat_inc(TDM_STAT_NO_ENDPOINT);
        __u32 id = svc->id;
        struct tdm_counters *c = bpf_map_lookup_elem(&tdm_service_stats, &id);
        if (c)
            c->no_endpoint += 1;
        return TDM_NEW_NO_ENDPOINT;
    }
    __u32 eidx = svc->id * TDM_MAX_ENDPOINTS + (__u32)ei;

    struct tdm_flow_key fwd = p->key; /* what the original direction becomes */
    fwd.daddr = ep->ip;
    if (p->key.proto != IPPROTO_ICMP)
        fwd.dport = ep->port;
    if (svc->nat_mode == TDM_NAT_FULLNAT)
        fwd.saddr = svc->snat_ip ? svc->snat_ip : p->key.daddr;
    else if (svc->nat_mode == TDM_NAT_ONEARM)
        fwd.saddr = cfg->node_ip;

    /* The reply direction's key is the forward translation reversed. */
    struct tdm_flow_key rev = {
        .saddr = fwd.daddr, .daddr = fwd.saddr, .sport = fwd.dport, .dport = fwd.sport, .proto = fwd.proto,
    };
    if (p->key.proto == IPPROTO_ICMP) {
        rev.sport = fwd.sport;
        rev.dport = fwd.sport;
    }

    struct tdm_ct_entry orig = {
        .created_ns = now, .last_seen_ns = now, .service_id = svc->id, .version = 1,
        .endpoint_ip = ep->ip, .endpoint_port = ep->port, .endpoint_index = (__u8)ei,
        .nat_mode = svc->nat_mode, .dir = TDM_DIR_ORIGINAL, .state = initial_state(p),
        .packets = 1, .bytes = p->len, .refreshed = (__u32)(now >> 30),
    };
    if (p->key.proto == IPPROTO_TCP && orig.state == TDM_CT_ESTABLISHED) {
        orig.flags |= TDM_CT_F_PICKED_UP;
        stat_inc(TDM_STAT_PICKED_UP);
    }
    orig.flags |= TDM_CT_F_COUNTED;

    /* Keep the client's source port where free; else probe this node's slice of the port
     * space, so two nodes sharing a SNAT address never hand out the same port. */
    int snat = svc->nat_mode != TDM_NAT_DEFAULT && p->key.proto != IPPROTO_ICMP;
    if (snat && !reply_key_free(cfg, &rev, now)) {
        int found = 0;
        __u32 span = (__u32)cfg->port_hi - cfg->port_lo + 1;
        for (int i = 0; i < TDM_PORT_TRIES; i++) {
            __u16 port = cfg->port_lo + (__u16)(bpf_get_prandom_u32() % (span ? span : 1));
            rev.dport = bpf_htons(port);
            if (reply_key_free(cfg, &rev, now)) {
                found = 1;
                break;
            }
        }
        if (!found) {
            stat_inc(TDM_STAT_NO_PORT);
            return -1;
        }
        fwd.sport = rev.dport;
    }

    struct tdm_ct_entry reply = orig;
    reply.packets = 0;
    reply.bytes = 0;
    reply.dir = TDM_DIR_REPLY;
    reply.flags = orig.flags;
    reply.xlate.saddr = p->key.daddr;
    reply.xlate.daddr = p->key.saddr;
    reply.xlate.sport = p->key.dport;
    reply.xlate.dport = p->key.sport;
    reply.xlate.proto = p->key.proto;
    reply.peer = p->key;
    orig.xlate = fwd;
    orig.peer = rev;

    /* An expired connection's half at the reply key is overwritten: if it was an orphan holding
     * a count (its original evicted), nobody else will give that count back. Decided before the
     * update recycles its memory. */
    __u32 gone_sid = TDM_MAX_SERVICES;
    __u8 gone_ei = 0;
    struct tdm_ct_entry *old = bpf_map_lookup_elem(&tdm_ct, &rev);
    if (old && (old->flags & TDM_CT_F_COUNTED)) {
        struct tdm_ct_entry *owner = bpf_map_lookup_elem(&tdm_ct, &old->peer);
        if (old->dir == TDM_DIR_ORIGINAL || !owner || !same_key(&owner->peer, &rev)) {
            gone_sid = old->service_id;
            gone_ei = old->endpoint_index;
        }
    }

    if (bpf_map_update_elem(&tdm_ct, &rev, &reply, BPF_ANY) ||
        bpf_map_update_elem(&tdm_ct, &p->key, &orig, BPF_ANY)) {
        bpf_map_delete_elem(&tdm_ct, &rev);
        stat_inc(TDM_STAT_CT_FULL);
        return -1;
    }
    if (gone_sid < TDM_MAX_SERVICES)
        lc_give(gone_sid, gone_ei);
    lc_take(svc->id, (__u8)ei);
    count(&tdm_endpoint_stats, eidx, p->len, 1);
    count(&tdm_service_stats, svc->id, p->len, 1);
    emit_event(cfg, TDM_EV_NEW, &orig, &p->key, now);
    *out = fwd;
    return 0;
}

/* Answers an ICMP echo request to a VIP in place and bounces it back out. */
static __always_inline int answer_echo(struct __sk_buff *skb, const struct pkt *p, __u32 in_ifindex)
{
    __u8 req = ICMP_ECHO, rep = ICMP_ECHOREPLY;
    __u32 type_off = p->l4_off + offsetof(struct icmphdr, type);
    /* type sits in the high byte of the first 16-bit word */
    if (bpf_l4_csum_replace(skb, p->l4_csum_off, bpf_htons((__u16)req << 8), bpf_htons((__u16)rep << 8), 2))
        return TC_ACT_SHOT;
    if (bpf_skb_store_bytes(skb, type_off, &rep, 1, 0))
        return TC_ACT_SHOT;
    /* Swapping source and destination leaves the IP checksum unchanged. */
    if (bpf_skb_store_bytes(skb, IP_SRC_OFF, &p->key.daddr, 4, 0) ||
        bpf_skb_store_bytes(skb, IP_DST_OFF, &p->key.saddr, 4, 0))
        return TC_ACT_SHOT;
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end)
        return TC_ACT_SHOT;
    __u8 tmp[ETH_ALEN];
    __builtin_memcpy(tmp, eth->h_source, ETH_ALEN);
    __builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
    __builtin_memcpy(eth->h_dest, tmp, ETH_ALEN);
    stat_inc(TDM_STAT_ICMP_REPLIED);
    return bpf_redirect(in_ifindex, 0);
}

/* Ones' complement sum of `n` 32-bit words (csum_partial's convention), folded to 16 bits but
 * not inverted. */
static __always_inline __u16 csum_fold_words(const __u32 *w, int n, __u32 seed)
{
    __u32 s = seed;
    for (int i = 0; i < n; i++)
        s = csum_add32(s, w[i]);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    return (__u16)s;
}

/* A 20-byte IPv4 header from the VIP side back to the client, checksummed. */
static __always_inline void reply_ip(struct iphdr *ip, __be32 saddr, __be32 daddr, __u8 proto, __u16 tot_len)
{
    __builtin_memset(ip, 0, sizeof(*ip));
    ip->version = 4;
    ip->ihl = 5;
    ip->tot_len = bpf_htons(tot_len);
    ip->frag_off = bpf_htons(0x4000); /* DF */
    ip->ttl = 64;
    ip->protocol = proto;
    ip->saddr = saddr;
    ip->daddr = daddr;
    ip->check = ~csum_fold_words((const __u32 *)ip, 5, 0);
}

/* Swaps the Ethernet addresses, so the packet goes back to the hop it came from. */
static __always_inline int bounce_eth(struct __sk_buff *skb)
{
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end)
        return -1;
    __u8 tmp[ETH_ALEN];
    __builtin_memcpy(tmp, eth->h_source, ETH_ALEN);
    __builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
    __builtin_memcpy(eth->h_dest, tmp, ETH_ALEN);
    return 0;
}

struct rst_pkt {
    struct iphdr ip;
    __be16 sport, dport;
    __be32 seq, ack_seq;
    __u8   doff, flags;
    __be16 window, check, urg;
};

/*
 * Turns the TCP packet in `skb` (from the client, tuple p->key) into a RST from the service back
 * to the client and bounces it out of the interface it came in on. RFC 793's reply to a segment:
 * with ACK, seq = its ack (what the client expects next, so RFC 5961's exact check accepts it);
 * without (a SYN), seq 0 and ack = its seq + length, which a client in SYN-SENT takes as refusal.
 * IP options are not echoed: such packets (ihl > 5, never seen from real stacks) are dropped.
 *
 * The TCP checksum depends on how the skb carries it: a packet a local stack sent through veth
 * (CHECKSUM_PARTIAL) must hold only the pseudo-header sum, which the device or the kernel completes
 * over csum_start (still this TCP header: same offsets); any other needs the full sum. BPF cannot
 * read ip_summed, so bpf_l4_csum_replace tells: it leaves the field alone on a partial packet.
 */
static __noinline int send_reset(struct __sk_buff *skb, const struct pkt *p, __u32 in_ifindex)
{
    const __u8 SYN = 0x02, FIN = 0x01, RST = 0x04, ACK = 0x10;
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    struct iphdr *ip = data + ETH_HLEN;
    if ((void *)(ip + 1) > end || ip->ihl != 5)
        return TC_ACT_SHOT;
    struct tcphdr *th = (void *)(ip + 1);
    if ((void *)(th + 1) > end)
        return TC_ACT_SHOT;
    __u32 hdrs = 20 + th->doff * 4;
    __u32 tot = bpf_ntohs(ip->tot_len);
    __u32 seglen = tot > hdrs ? tot - hdrs : 0;
    if (p->tcp_flags & SYN)
        seglen++;
    if (p->tcp_flags & FIN)
        seglen++;
    struct rst_pkt r = {};
    r.sport = p->key.dport;
    r.dport = p->key.sport;
    r.doff = 5 << 4;
    if (p->tcp_flags & ACK) {
        r.seq = th->ack_seq;
        r.flags = RST;
    } else {
        r.ack_seq = bpf_htonl(bpf_ntohl(th->seq) + seglen);
        r.flags = RST | ACK;
    }
    reply_ip(&r.ip, p->key.daddr, p->key.saddr, IPPROTO_TCP, sizeof(r));
    /* Pseudo header (addresses, protocol, TCP length) and the TCP header, in csum_partial words. */
    __u32 pseudo = csum_add32(csum_add32(p->key.saddr, p->key.daddr), bpf_htons(IPPROTO_TCP) + bpf_htons(20));
    __u16 full = ~csum_fold_words((const __u32 *)&r.sport, 5, pseudo);
    __u16 partial = csum_fold_words(&pseudo, 1, 0);

    if (bpf_skb_change_tail(skb, ETH_HLEN + sizeof(r), 0))
        return TC_ACT_SHOT;
    if (bounce_eth(skb))
        return TC_ACT_SHOT;
    /* Written with check = 0; BPF_F_RECOMPUTE_CSUM keeps a CHECKSUM_COMPLETE skb's sum right. */
    if (bpf_skb_store_bytes(skb, ETH_HLEN, &r, sizeof(r), BPF_F_RECOMPUTE_CSUM))
        return TC_ACT_SHOT;
    __u32 csum_off = ETH_HLEN + offsetof(struct rst_pkt, check);
    __u16 probe = 0, zero = 0;
    if (bpf_l4_csum_replace(skb, csum_off, 0, 1, 0) || bpf_skb_load_bytes(skb, csum_off, &probe, 2) ||
        bpf_skb_store_bytes(skb, csum_off, &zero, 2, 0))
        return TC_ACT_SHOT;
    __u16 check = probe ? full : partial; /* probe stayed 0: a partial checksum */
    if (bpf_skb_store_bytes(skb, csum_off, &check, 2, BPF_F_RECOMPUTE_CSUM))
        return TC_ACT_SHOT;
    stat_inc(TDM_STAT_RESET_SENT);
    return bpf_redirect(in_ifindex, 0);
}

#define ICMP_DEST_UNREACH 3
#define ICMP_PORT_UNREACH 3

struct unreach_pkt {
    struct iphdr  ip;
    __u8   type, code;
    __be16 check;
    __be32 unused;
    struct iphdr  orig_ip;   /* the datagram's header and first 8 bytes, as RFC 792 asks */
    __u8   orig_l4[8];
};

/*
 * Turns the UDP datagram in `skb` into an ICMP port unreachable from the service address back to
 * the client (a connected UDP socket then gets ECONNREFUSED), bounced out of the ingress interface.
 * The whole ICMP message is rebuilt from a copy on the stack, so the skb only changes length. On a
 * CHECKSUM_PARTIAL skb (csum_start at the UDP header, now the ICMP header; csum_offset 6, now the
 * zero `unused` field) completing the checksum sums a valid message and writes 0 there: no change.
 */
static __always_inline int send_unreach(struct __sk_buff *skb, const struct pkt *p, __u32 in_ifindex)
{
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    struct iphdr *ip = data + ETH_HLEN;
    if ((void *)(ip + 1) > end || ip->ihl != 5)
        return TC_ACT_SHOT;
    __u8 *l4 = (void *)(ip + 1);
    if ((void *)(l4 + 8) > end)
        return TC_ACT_SHOT;
    struct unreach_pkt u = {};
    __builtin_memcpy(&u.orig_ip, ip, sizeof(u.orig_ip));
    __builtin_memcpy(u.orig_l4, l4, sizeof(u.orig_l4));
    u.type = ICMP_DEST_UNREACH;
    u.code = ICMP_PORT_UNREACH;
    u.check = ~csum_fold_words((const __u32 *)&u.type, (sizeof(u) - sizeof(u.ip)) / 4, 0);
    reply_ip(&u.ip, p->key.daddr, p->key.saddr, IPPROTO_ICMP, sizeof(u));
    if (bpf_skb_change_tail(skb, ETH_HLEN + sizeof(u), 0))
        return TC_ACT_SHOT;
    if (bounce_eth(skb))
        return TC_ACT_SHOT;
    if (bpf_skb_store_bytes(skb, ETH_HLEN, &u, sizeof(u), BPF_F_RECOMPUTE_CSUM))
        return TC_ACT_SHOT;
    stat_inc(TDM_STAT_UNREACH_SENT);
    return bpf_redirect(in_ifindex, 0);
}

/* A new connection with no eligible endpoint: refused at once, so clients fail fast instead of
 * retrying into a black hole. */
static __always_inline int refuse(struct __sk_buff *skb, const struct pkt *p, __u32 in_ifindex)
{
    if (p->key.proto == IPPROTO_TCP)
        return send_reset(skb, p, in_ifindex);
    if (p->key.proto == IPPROTO_UDP)
        return send_unreach(skb, p, in_ifindex);
    return TC_ACT_SHOT;
}

#define TDM_DOWN_KEEP   (-2) /* endpoint_down: carry on as usual */
#define TDM_DOWN_REPICK (-1) /* endpoint_down: forgotten; the packet opens a new connection */

/*
 * A client packet on a connection whose endpoint is down. An unanswered handshake (a retransmitted
 * SYN in SYN_SENT) has nothing to keep: it is forgotten and re-picked, so the retry reaches a live
 * endpoint. Otherwise the connection is kept unless its service has TDM_SVC_F_RESET_DOWN; then it
 * is forgotten (peers told by a DELETE event): TCP gets a RST back, UDP is re-picked. Returns a TC
 * verdict, or TDM_DOWN_KEEP / TDM_DOWN_REPICK. `e` must not be used after a forget.
 */
static __always_inline int endpoint_down(struct __sk_buff *skb, const struct tdm_config *cfg, const struct pkt *p,
                                         struct tdm_ct_entry *e, __u64 now, __u32 in_ifindex)
{
    const __u8 SYN = 0x02, RST = 0x04, ACK = 0x10;
    int tcp = p->key.proto == IPPROTO_TCP;
    if (!tcp && p->key.proto != IPPROTO_UDP)
        return TDM_DOWN_KEEP;
    int handshake = tcp && e->state == TDM_CT_SYN_SENT && (p->tcp_flags & (SYN | ACK)) == SYN;
    if (!handshake) {
        struct tdm_service_key sk = { .vip = p->key.daddr, .port = p->key.dport, .proto = p->key.proto };
        struct tdm_service *svc = bpf_map_lookup_elem(&tdm_services, &sk);
        if (!svc || svc->id != e->service_id || !(svc->flags & TDM_SVC_F_RESET_DOWN))
            return TDM_DOWN_KEEP;
        __u32 id = svc->id;
        struct tdm_counters *c = bpf_map_lookup_elem(&tdm_service_stats, &id);
        if (c)
            c->reset_down += 1;
    }
    struct tdm_flow_key peer = e->peer;
    emit_event(cfg, TDM_EV_DELETE, e, &p->key, now);
    forget(e, &p->key, &peer);
    if (!tcp || handshake)
        return TDM_DOWN_REPICK;
    if (p->tcp_flags & RST)
        return TC_ACT_SHOT; /* the client is closing it itself */
    return send_reset(skb, p, in_ifindex);
}

SEC("tc")
int tandem_ingress(struct __sk_buff *skb)
{
    /* Read context fields up front: the verifier rejects a ctx pointer the compiler kept with
     * an offset across helper calls. */
    __u32 in_ifindex = skb->ingress_ifindex;
    struct pkt p = {};
    if (parse(skb, &p) < 0)
        return TC_ACT_OK;
    __u32 zero = 0;
    struct tdm_config *cfg = bpf_map_lookup_elem(&tdm_config, &zero);
    if (!cfg)
        return TC_ACT_OK;
    __u64 now = bpf_ktime_get_ns();

    /* Standby: traffic to a VIP this node does not own goes to the stack untouched (which drops
     * it: the VIP is not a local address on a BACKUP). Both directions of fullnat flows carry the
     * VIP as destination, so a BACKUP neither starts nor continues them. */
    if (cfg->gate_vips && bpf_map_lookup_elem(&tdm_vips, &p.key.daddr) &&
        !bpf_map_lookup_elem(&tdm_active_vips, &p.key.daddr)) {
        stat_inc(TDM_STAT_STANDBY_PASSED);
        return TC_ACT_OK;
    }

    if (p.key.proto == IPPROTO_ICMP && p.icmp_type == ICMP_ECHO && cfg->answer_icmp &&
        bpf_map_lookup_elem(&tdm_vips, &p.key.daddr))
        return answer_echo(skb, &p, in_ifindex);

    struct tdm_flow_key to;
    struct tdm_ct_entry *e = bpf_map_lookup_elem(&tdm_ct, &p.key);
    int fresh_syn = p.key.proto == IPPROTO_TCP && (p.tcp_flags & 0x12) == 0x02;
    if (e && conn_expired(cfg, e, &p.key, now)) {
        /* Idle past its timeout: forget both halves and treat this as a new flow. The event
         * describes the original half (its xlate) when this is the reply half. */
        struct tdm_flow_key peer = e->peer;
        const struct tdm_ct_entry *desc = e;
        if (e->dir == TDM_DIR_REPLY) {
            struct tdm_ct_entry *oe = bpf_map_lookup_elem(&tdm_ct, &peer);
            if (oe && same_key(&oe->peer, &p.key))
                desc = oe;
        }
        emit_event(cfg, TDM_EV_DELETE, desc, e->dir == TDM_DIR_ORIGINAL ? &p.key : &peer, now);
        forget(e, &p.key, &peer);
        stat_inc(TDM_STAT_EXPIRED_REUSED);
        e = NULL;
    } else if (e && fresh_syn && e->dir == TDM_DIR_ORIGINAL &&
               e->state != TDM_CT_SYN_SENT && e->state != TDM_CT_SYN_RECV) {
        /* A client sends a bare SYN on a tuple only for a new connection (a retransmitted SYN
         * finds the handshake states), so the old one is over even if a FIN raced past our
         * tracking on another CPU. Reopen as conntrack does: forget both halves, so the same
         * translated tuple is free again; the endpoint's TIME_WAIT socket accepts the new SYN
         * (higher sequence or timestamp), and keeping the old half instead would exhaust this
         * node's port slice at high connection rates. */
        struct tdm_flow_key peer = e->peer;
        emit_event(cfg, TDM_EV_DELETE, e, &p.key, now);
        forget(e, &p.key, &peer);
        stat_inc(TDM_STAT_EXPIRED_REUSED);
        e = NULL;
    }
    /* The hot path pays one array lookup here; only a down endpoint's flows look further. */
    if (e && e->dir == TDM_DIR_ORIGINAL && ep_down(e->service_id, e->endpoint_index)) {
        int r = endpoint_down(skb, cfg, &p, e, now, in_ifindex);
        if (r >= 0)
            return r;
        if (r == TDM_DOWN_REPICK)
            e = NULL;
    }
    if (e) {
        to = e->xlate;
        e->last_seen_ns = now;
        __sync_fetch_and_add(&e->packets, 1);
        __sync_fetch_and_add(&e->bytes, p.len);
        __u8 state = e->state, flags = e->flags;
        if (p.key.proto == IPPROTO_TCP)
            state = tcp_next_state(state, &flags, e->dir, p.tcp_flags);
        else if (p.key.proto == IPPROTO_UDP && e->dir == TDM_DIR_REPLY && state == TDM_CT_UDP_NEW)
            state = TDM_CT_UDP_EST;
        int changed = state != e->state || flags != e->flags;
        /* A state change, or a busy flow due for a refresh (see refresh_due): both halves take it
         * and are marked as announced, so a two-way flow is announced once per period; the
         * event describes the original half. */
        if (changed || (cfg->emit_events && refresh_due(cfg, e, now))) {
            if (changed) {
                if (!lc_live_state(state) && (flags & TDM_CT_F_COUNTED)) {
                    flags &= ~TDM_CT_F_COUNTED; /* both halves take the cleared flags below */
                    lc_give(e->service_id, e->endpoint_index);
                }
                e->state = state;
                e->flags = flags;
                e->version += 1;
            }
            e->refreshed = (__u32)(now >> 30);
            struct tdm_ct_entry *pe = bpf_map_lookup_elem(&tdm_ct, &e->peer);
            /* The peer may already belong to a newer connection that reused its key. */
            if (pe && !same_key(&pe->peer, &p.key))
                pe = NULL;
            if (pe) {
                if (changed) {
                    pe->state = state;
                    pe->flags = flags;
                    pe->version = e->version;
                    pe->last_seen_ns = now;
                }
                pe->refreshed = e->refreshed;
            }
            __u8 type = changed ? TDM_EV_STATE : TDM_EV_REFRESH;
            if (e->dir == TDM_DIR_ORIGINAL)
                emit_event(cfg, type, e, &p.key, now);
            else if (pe)
                emit_event(cfg, type, pe, &e->peer, now);
        }
        /* A peer's flow of a service this node does not have carries an out-of-range slot: it is
         * forwarded but counted nowhere (the multiplication below must not wrap into a real slot). */
        __u32 sid = e->service_id;
        if (sid < TDM_MAX_SERVICES) {
            __u32 eidx = sid * TDM_MAX_ENDPOINTS + (e->endpoint_index & (TDM_MAX_ENDPOINTS - 1));
            count(&tdm_endpoint_stats, eidx, p.len, 0);
            count(&tdm_service_stats, sid, p.len, 0);
        }
    } else {
        if (p.key.proto == IPPROTO_ICMP)
            return TC_ACT_OK; /* echo is answered above or left to the stack */
        struct tdm_service_key sk = { .vip = p.key.daddr, .port = p.key.dport, .proto = p.key.proto };
        struct tdm_service *svc = bpf_map_lookup_elem(&tdm_services, &sk);
        if (!svc)
            return TC_ACT_OK;
        /* A stray RST for a flow we do not know has nowhere consistent to go. */
        if (p.key.proto == IPPROTO_TCP && (p.tcp_flags & 0x04))
            return TC_ACT_SHOT;
        if (!source_allowed(svc, p.key.saddr))
            return TC_ACT_SHOT;
        int rc = new_flow(skb, cfg, &p, svc, now, &to);
        if (rc == TDM_NEW_NO_ENDPOINT)
            return refuse(skb, &p, in_ifindex);
        if (rc < 0)
            return TC_ACT_SHOT;
    }

    if (rewrite(skb, &p, &to) < 0)
        return TC_ACT_SHOT;
    return forward(skb, cfg, &to, in_ifindex);
}

/* Records user space staged in tdm_install (for tandem_install or tandem_reap), capped at the
 * buffer's size; -1 without the buffer. */
static __always_inline long staged_count(void)
{
    __u32 zero = 0;
    struct tdm_install_buf *b = bpf_map_lookup_elem(&tdm_install, &zero);
    if (!b)
        return -1;
    __u32 n = b->count;
    return n > TDM_INSTALL_BATCH ? TDM_INSTALL_BATCH : n;
}

/*
 * The periodic reap. User space walks the table in chunks (batched map reads, preemptible between
 * them) and hands this program the keys that look idle by their own half; the decision and the
 * removal happen here, with the same rules as the Swift fallback (TandemCore's ConnectionReaper):
 *  - a connection both of whose halves are idle past the timeout of their state: both halves go,
 *    and an EXPIRE event tells replication;
 *  - a reply half whose original is gone (LRU eviction), once idle 2 s (the datapath writes the
 *    reply half first, so a fresh one may be mid-creation); user space stages idle reply halves
 *    for this check on some passes only, as one-way flows leave every reply half idle;
 *  - a reply half whose original now belongs to a newer connection, once idle past its timeout.
 * One pass over the whole table in the kernel (bpf_for_each_map_elem) was tried first: it cannot
 * be preempted here, and on a 3M-entry table it showed as replication lag stalls of 25-40 ms every
 * 2 s (README, "Reap").
 */
struct reap_ctx {
    __u64 now;
    __u32 connections; /* expired connections removed (reply halves are only counted in tdm_stats) */
};

#define TDM_REAP_ORPHAN_IDLE_NS 2000000000ULL

static __always_inline void reap_one(const struct tdm_config *cfg, const struct tdm_flow_key *key,
                                     struct tdm_ct_entry *e, struct reap_ctx *c)
{
    struct tdm_flow_key k = *key, peer = e->peer;
    if (e->dir == TDM_DIR_ORIGINAL) {
        if (!conn_expired(cfg, e, &k, c->now))
            return;
        emit_event(cfg, TDM_EV_EXPIRE, e, &k, c->now);
        forget(e, &k, &peer);
        c->connections += 1;
        stat_inc(TDM_STAT_REAPED);
        return;
    }
    struct tdm_ct_entry *oe = bpf_map_lookup_elem(&tdm_ct, &peer);
    if (!oe) {
        if (c->now > e->last_seen_ns && c->now - e->last_seen_ns > TDM_REAP_ORPHAN_IDLE_NS) {
            if (e->flags & TDM_CT_F_COUNTED) /* its original went without giving back (LRU) */
                lc_give(e->service_id, e->endpoint_index);
            bpf_map_delete_elem(&tdm_ct, &k);
            stat_inc(TDM_STAT_REAPED_HALVES);
        }
    } else if (!same_key(&oe->peer, &k) && entry_expired(cfg, e, c->now)) {
        bpf_map_delete_elem(&tdm_ct, &k);
        stat_inc(TDM_STAT_REAPED_HALVES);
    }
}

static long reap_key(__u32 i, void *data)
{
    struct reap_ctx *c = data;
    __u32 zero = 0;
    struct tdm_install_buf *b = bpf_map_lookup_elem(&tdm_install, &zero);
    struct tdm_config *cfg = bpf_map_lookup_elem(&tdm_config, &zero);
    if (!b || !cfg || i >= TDM_INSTALL_BATCH)
        return 1;
    struct tdm_install_req *r = &b->req[i];
    struct tdm_flow_key k = {
        .saddr = r->key.saddr, .daddr = r->key.daddr, .sport = r->key.sport, .dport = r->key.dport, .proto = r->key.proto,
    };
    struct tdm_ct_entry *e = bpf_map_lookup_elem(&tdm_ct, &k);
    if (e)
        reap_one(cfg, &k, e, c);
    return 0;
}

/* Candidates are staged in tdm_install (req[i].key), under the same lock as installs. */
SEC("syscall")
int tandem_reap(void *ctx)
{
    long n = staged_count();
    if (n < 0)
        return -1;
    struct reap_ctx c = { .now = bpf_ktime_get_ns() };
    bpf_loop(n, reap_key, &c, 0);
    return c.connections;
}

/*
 * The XDP fast path (optional, attached in front of the TC program): packets of connections the
 * TC program already tracks, in a steady state (TCP established without SYN, FIN or RST; UDP with
 * replies seen), are rewritten and sent back out before the kernel allocates an skb. Everything
 * else (new flows, state changes, expiry, ICMP, a next hop not yet resolved) is passed unchanged
 * to the TC program, which stays the one place connections are created and events emitted.
 *
 * XDP sees no checksum metadata, so the L4 checksum is updated incrementally and must be a full
 * one: packets a local stack sends with CHECKSUM_PARTIAL through veth (the test bed with TX
 * offload on) would leave with a wrong checksum. Real NICs deliver full checksums.
 */
static __always_inline __u16 csum_fold32(__u32 s)
{
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    return (__u16)~s;
}

SEC("xdp")
int tandem_xdp(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    __u32 in_ifindex = ctx->ingress_ifindex;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
        return XDP_PASS;
    struct iphdr *ip = (void *)(eth + 1);
    if ((void *)(ip + 1) > end || ip->version != 4 || ip->ihl != 5 || (ip->frag_off & bpf_htons(IP_FRAG_MASK)))
        return XDP_PASS;
    struct tdm_flow_key key = { .saddr = ip->saddr, .daddr = ip->daddr, .proto = ip->protocol };
    __sum16 *l4csum;
    __be16 *ports;
    if (ip->protocol == IPPROTO_TCP) {
        struct tcphdr *th = (void *)(ip + 1);
        if ((void *)(th + 1) > end)
            return XDP_PASS;
        if (((__u8 *)th)[13] & 0x07) /* FIN, SYN, RST change state: TC's job */
            return XDP_PASS;
        ports = &th->source;
        l4csum = &th->check;
    } else if (ip->protocol == IPPROTO_UDP) {
        struct udphdr *uh = (void *)(ip + 1);
        if ((void *)(uh + 1) > end)
            return XDP_PASS;
        ports = &uh->source;
        l4csum = &uh->check;
    } else {
        return XDP_PASS;
    }
    key.sport = ports[0];
    key.dport = ports[1];

    __u32 zero = 0;
    struct tdm_config *cfg = bpf_map_lookup_elem(&tdm_config, &zero);
    if (!cfg)
        return XDP_PASS;
    /* A VIP this node does not own (BACKUP): TC applies the standby gate and counts it. */
    if (cfg->gate_vips && bpf_map_lookup_elem(&tdm_vips, &key.daddr) && !bpf_map_lookup_elem(&tdm_active_vips, &key.daddr))
        return XDP_PASS;
    struct tdm_ct_entry *e = bpf_map_lookup_elem(&tdm_ct, &key);
    if (!e)
        return XDP_PASS;
    __u8 steady = key.proto == IPPROTO_TCP ? TDM_CT_ESTABLISHED : TDM_CT_UDP_EST;
    __u64 now = bpf_ktime_get_ns();
    /* A flow due for a refresh goes through TC once, which announces it. */
    if (e->state != steady || entry_expired(cfg, e, now) || (cfg->emit_events && refresh_due(cfg, e, now)))
        return XDP_PASS;
    /* A flow to a down endpoint goes through TC, which resets it when its service asks for that
     * (TDM_SVC_F_RESET_DOWN) and forwards it as before otherwise. */
    if (ep_down(e->service_id, e->endpoint_index))
        return XDP_PASS;
    struct tdm_flow_key to = e->xlate;

    struct bpf_fib_lookup fib = {};
    fib.family = AF_INET;
    fib.l4_protocol = to.proto;
    fib.sport = to.sport;
    fib.dport = to.dport;
    fib.tot_len = bpf_ntohs(ip->tot_len);
    fib.ipv4_src = to.saddr;
    fib.ipv4_dst = to.daddr;
    fib.ifindex = in_ifindex;
    /* The daemon attaches this only where the interface forwards (the kernel refuses the lookup
     * otherwise). No neighbour yet, or any other answer: TC resolves it. */
    if (bpf_fib_lookup(ctx, &fib, sizeof(fib), 0) != BPF_FIB_LKUP_RET_SUCCESS)
        return XDP_PASS;

    /* The same checksum differences as rewrite(), applied by hand: XDP has no csum helpers. */
    __u32 addr_diff = csum_diff2(key.saddr, key.daddr, to.saddr, to.daddr);
    __u32 port_diff = csum_diff2(((__u32)key.dport << 16) | key.sport, 0, ((__u32)to.dport << 16) | to.sport, 0);
    ip->check = csum_fold32(csum_add32(addr_diff, (__u16)~ip->check));
    if (key.proto == IPPROTO_TCP || *l4csum != 0) { /* UDP may carry no checksum */
        __u16 c = csum_fold32(csum_add32(csum_add32(addr_diff, port_diff), (__u16)~*l4csum));
        if (key.proto == IPPROTO_UDP && c == 0)
            c = 0xffff;
        *l4csum = c;
    }
    ip->saddr = to.saddr;
    ip->daddr = to.daddr;
    ports[0] = to.sport;
    ports[1] = to.dport;
    __builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
    __builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);

    e->last_seen_ns = now;
    __u32 len = (__u32)(end - data);
    __sync_fetch_and_add(&e->packets, 1);
    __sync_fetch_and_add(&e->bytes, len);
    __u32 sid = e->service_id;
    if (sid < TDM_MAX_SERVICES) {
        __u32 eidx = sid * TDM_MAX_ENDPOINTS + (e->endpoint_index & (TDM_MAX_ENDPOINTS - 1));
        count(&tdm_endpoint_stats, eidx, len, 0);
        count(&tdm_service_stats, sid, len, 0);
    }
    stat_inc(TDM_STAT_XDP_FORWARDED);
    if (fib.ifindex == in_ifindex)
        return XDP_TX;
    return bpf_redirect(fib.ifindex, 0);
}

/*
 * Installing connections a peer replicated. User space stages up to TDM_INSTALL_BATCH records in
 * tdm_install and runs this once (BPF_PROG_TEST_RUN), so a batch costs one syscall instead of four
 * per record. Same rules as the user-space fallback in Sources/TandemDatapath/Replication.swift:
 *  - both halves written, the reply half first, so a packet never finds an original whose reply
 *    half is missing;
 *  - the same connection already here (each half's peer points at the other) keeps its packet and
 *    byte counters and the later of the two last-seen times; the version moves past both halves';
 *  - an original that pointed at another reply key (an older connection on the client's tuple),
 *    or a reply key that belonged to another connection, has that other half deleted when it
 *    still points back: it is stale, and the owner's table is authoritative.
 */
#define TDM_EINVAL 22

static __always_inline int install_req(struct tdm_install_req *r, __u64 now)
{
    struct tdm_flow_key ok = {
        .saddr = r->key.saddr, .daddr = r->key.daddr, .sport = r->key.sport, .dport = r->key.dport, .proto = r->key.proto,
    };
    struct tdm_flow_key xl = {
        .saddr = r->xlate.saddr, .daddr = r->xlate.daddr, .sport = r->xlate.sport, .dport = r->xlate.dport,
        .proto = r->xlate.proto,
    };
    struct tdm_flow_key rk = { .saddr = xl.daddr, .daddr = xl.saddr, .sport = xl.dport, .dport = xl.sport, .proto = xl.proto };
    if (ok.proto != xl.proto || r->state >= TDM_CT_STATE_COUNT || r->nat_mode > TDM_NAT_FULLNAT)
        return -TDM_EINVAL;

    __u64 age = r->age_ns < now ? r->age_ns : now;
    __u64 idle = r->idle_ns < now ? r->idle_ns : now;
    /* A peer's flow counts here too, so a node that takes over picks least-connections
     * endpoints from the same view. The owner's COUNTED bit is its own bookkeeping. */
    int live = lc_live_state(r->state) && r->service_id < TDM_MAX_SERVICES;
    struct tdm_ct_entry o = {
        .xlate = xl, .peer = rk, .created_ns = now - age, .last_seen_ns = now - idle,
        .service_id = r->service_id, .version = 1, .endpoint_ip = xl.daddr, .endpoint_port = xl.dport,
        .endpoint_index = r->endpoint_index, .nat_mode = r->nat_mode, .dir = TDM_DIR_ORIGINAL, .state = r->state,
        .flags = (r->flags & ~TDM_CT_F_COUNTED) | TDM_CT_F_FROM_PEER | (live ? TDM_CT_F_COUNTED : 0),
        .refreshed = (__u32)(now >> 30), /* the owner has just told every peer about it */
    };
    struct tdm_ct_entry p = o;
    p.dir = TDM_DIR_REPLY;
    p.xlate.saddr = ok.daddr;
    p.xlate.daddr = ok.saddr;
    p.xlate.sport = ok.dport;
    p.xlate.dport = ok.sport;
    p.peer = ok;

    /* Copy what is needed out of the old entries: updates may recycle their memory. */
    struct tdm_flow_key old_o_peer = {}, old_r_peer = {};
    int had_o = 0, had_r = 0;
    __u32 version = 0;
    /* Counts: this connection's own (held already, on which endpoint), and those of other
     * connections whose halves this install overwrites. */
    int held = 0, o_counted = 0;
    __u32 held_sid = 0, o_sid = 0;
    __u8 held_ei = 0, o_ei = 0;
    struct tdm_ct_entry *e = bpf_map_lookup_elem(&tdm_ct, &ok);
    if (e) {
        had_o = 1;
        old_o_peer = e->peer;
        version = e->version;
        if (e->dir == TDM_DIR_ORIGINAL && same_key(&e->peer, &rk)) {
            o.packets = e->packets;
            o.bytes = e->bytes;
            if (e->last_seen_ns > o.last_seen_ns)
                o.last_seen_ns = e->last_seen_ns;
            if (e->flags & TDM_CT_F_COUNTED) {
                held = 1;
                held_sid = e->service_id;
                held_ei = e->endpoint_index;
            }
        } else if (e->flags & TDM_CT_F_COUNTED) {
            o_counted = 1;
            o_sid = e->service_id;
            o_ei = e->endpoint_index;
        }
    }
    struct tdm_ct_entry old_r = {};
    e = bpf_map_lookup_elem(&tdm_ct, &rk);
    if (e) {
        had_r = 1;
        old_r = *e;
        old_r_peer = e->peer;
        if (e->version > version)
            version = e->version;
        if (e->dir == TDM_DIR_REPLY && same_key(&e->peer, &ok)) {
            p.packets = e->packets;
            p.bytes = e->bytes;
            if (e->last_seen_ns > p.last_seen_ns)
                p.last_seen_ns = e->last_seen_ns;
            if (!held && (e->flags & TDM_CT_F_COUNTED)) { /* its original was evicted */
                held = 1;
                held_sid = e->service_id;
                held_ei = e->endpoint_index;
            }
        }
    }
    version += 1;
    if (version == 0)
        version = 1;
    o.version = version;
    p.version = version;

    long err = bpf_map_update_elem(&tdm_ct, &rk, &p, BPF_ANY);
    if (err)
        return err;
    err = bpf_map_update_elem(&tdm_ct, &ok, &o, BPF_ANY);
    if (err) {
        /* Never leave our reply half without its original: put back what was there. */
        if (had_r)
            bpf_map_update_elem(&tdm_ct, &rk, &old_r, BPF_ANY);
        else
            bpf_map_delete_elem(&tdm_ct, &rk);
        return err;
    }
    /* The other halves of overwritten connections go too (when they still point back), and so
     * do their counts; a stale half pointing elsewhere held none. */
    if (had_o && !same_key(&old_o_peer, &rk)) {
        e = bpf_map_lookup_elem(&tdm_ct, &old_o_peer);
        int ends = !e || same_key(&e->peer, &ok);
        if (e && ends)
            bpf_map_delete_elem(&tdm_ct, &old_o_peer);
        if (ends && o_counted)
            lc_give(o_sid, o_ei);
    }
    if (had_r && !same_key(&old_r_peer, &ok)) {
        e = bpf_map_lookup_elem(&tdm_ct, &old_r_peer);
        int ends = !e || same_key(&e->peer, &rk);
        if (e && ends)
            bpf_map_delete_elem(&tdm_ct, &old_r_peer);
        if (ends && (old_r.flags & TDM_CT_F_COUNTED))
            lc_give(old_r.service_id, old_r.endpoint_index);
    }
    if (held && !(live && held_sid == r->service_id && held_ei == r->endpoint_index))
        lc_give(held_sid, held_ei);
    if (live && !(held && held_sid == r->service_id && held_ei == r->endpoint_index))
        lc_take(r->service_id, r->endpoint_index);
    return 0;
}

struct install_loop {
    __u64 now;
    __u32 installed;
};

static long install_one(__u32 i, void *data)
{
    struct install_loop *l = data;
    __u32 zero = 0;
    struct tdm_install_buf *b = bpf_map_lookup_elem(&tdm_install, &zero);
    if (!b || i >= TDM_INSTALL_BATCH)
        return 1;
    struct tdm_install_req *r = &b->req[i];
    int rc = install_req(r, l->now);
    r->result = rc;
    if (rc == 0)
        l->installed += 1;
    return 0;
}

SEC("syscall")
int tandem_install(void *ctx)
{
    __u32 zero = 0;
    struct tdm_install_buf *b = bpf_map_lookup_elem(&tdm_install, &zero);
    long n = staged_count();
    if (!b || n < 0)
        return -1;
    struct install_loop l = { .now = bpf_ktime_get_ns(), .installed = 0 };
    bpf_loop(n, install_one, &l, 0);
    b->installed = l.installed;
    return l.installed;
}

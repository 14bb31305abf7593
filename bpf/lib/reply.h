/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Answers the datapath sends itself: ICMP echo, TCP RST, ICMP port unreachable, and what to do
 * with packets of a connection whose endpoint went down.
 * Part of the one compilation unit bpf/tandem_lb.c; include it from there only, in its order.
 */
#ifndef TANDEM_REPLY_H
#define TANDEM_REPLY_H

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

#endif /* TANDEM_REPLY_H */

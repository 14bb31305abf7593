/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Parsing a packet into struct pkt: Ethernet, IPv4, TCP/UDP/ICMP.
 * Part of the one compilation unit bpf/tandem_lb.c; include it from there only, in its order.
 */
#ifndef TANDEM_PARSE_H
#define TANDEM_PARSE_H

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

#endif /* TANDEM_PARSE_H */

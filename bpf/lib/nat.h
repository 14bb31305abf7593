/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Rewriting a packet to a new tuple and forwarding it (FIB or neighbour redirect).
 * Part of the one compilation unit bpf/tandem_lb.c; include it from there only, in its order.
 */
#ifndef TANDEM_NAT_H
#define TANDEM_NAT_H

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

#endif /* TANDEM_NAT_H */

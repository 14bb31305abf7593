/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Datapath-wide counters and the flow hash (which TandemCore.FlowHash mirrors bit for bit).
 * Part of the one compilation unit bpf/tandem_lb.c; include it from there only, in its order.
 */
#ifndef TANDEM_COMMON_H
#define TANDEM_COMMON_H

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

#endif /* TANDEM_COMMON_H */

/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Opening a connection: both entries, SNAT port, the chosen endpoint.
 * Part of the one compilation unit bpf/tandem_lb.c; include it from there only, in its order.
 */
#ifndef TANDEM_CONN_H
#define TANDEM_CONN_H

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

#endif /* TANDEM_CONN_H */

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

#include "lib/proto.h"
#include "tandem_map_defs.h"
#include "lib/common.h"
#include "lib/endpoints.h"
#include "lib/ct.h"
#include "lib/events.h"
#include "lib/parse.h"
#include "lib/csum.h"
#include "lib/nat.h"
#include "lib/select.h"
#include "lib/conn.h"
#include "lib/reply.h"
#include "lib/reap.h"
#include "lib/install.h"

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

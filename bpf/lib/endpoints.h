/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Endpoint bookkeeping: least-connections counters and health (down endpoints are not eligible).
 * Part of the one compilation unit bpf/tandem_lb.c; include it from there only, in its order.
 */
#ifndef TANDEM_ENDPOINTS_H
#define TANDEM_ENDPOINTS_H

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

#endif /* TANDEM_ENDPOINTS_H */

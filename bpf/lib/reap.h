/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The in-kernel reap's helpers (tandem_reap): idle connections and orphaned halves.
 * Part of the one compilation unit bpf/tandem_lb.c; include it from there only, in its order.
 */
#ifndef TANDEM_REAP_H
#define TANDEM_REAP_H

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

#endif /* TANDEM_REAP_H */

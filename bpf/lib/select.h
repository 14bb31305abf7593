/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Per-service counters, allowed sources, and endpoint selection (rr, weighted, persist, Maglev, lc).
 * Part of the one compilation unit bpf/tandem_lb.c; include it from there only, in its order.
 */
#ifndef TANDEM_SELECT_H
#define TANDEM_SELECT_H

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
    /* barrier_var (bpf_helpers.h) hides the value from the optimiser, so the bounds mask the
     * verifier needs is not folded away. */
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

#endif /* TANDEM_SELECT_H */

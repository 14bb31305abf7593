/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Installing replicated connections (tandem_install): one peer record at a time.
 * Part of the one compilation unit bpf/tandem_lb.c; include it from there only, in its order.
 */
#ifndef TANDEM_INSTALL_H
#define TANDEM_INSTALL_H

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

#endif /* TANDEM_INSTALL_H */

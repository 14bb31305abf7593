/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Connection entries: timeouts, expiry, removal, and the TCP state machine.
 * Part of the one compilation unit bpf/tandem_lb.c; include it from there only, in its order.
 */
#ifndef TANDEM_CT_H
#define TANDEM_CT_H

static __always_inline __u64 state_timeout(const struct tdm_config *cfg, __u8 state)
{
    if (state >= TDM_CT_STATE_COUNT)
        return 0;
    return cfg->timeout_ns[state];
}

/* The idle timeout of an entry: its service's inactiveTimeOut for the established states (TCP
 * ESTABLISHED, UDP new and established), else the node's for its state. */
static __always_inline __u64 entry_timeout(const struct tdm_config *cfg, const struct tdm_ct_entry *e)
{
    __u8 state = e->state;
    if (state == TDM_CT_ESTABLISHED || state == TDM_CT_UDP_EST || state == TDM_CT_UDP_NEW) {
        __u32 sid = e->service_id;
        __u64 *t = bpf_map_lookup_elem(&tdm_svc_timeout, &sid); /* NULL for a slot out of range */
        if (t && *t)
            return *t;
    }
    return state_timeout(cfg, state);
}

/* A packet on a flow whose peers were last told about it a quarter of its timeout ago: time to
 * re-announce it. Packets change nothing peers are told otherwise, so without this a flow that
 * lives long in one state (a UDP stream, an established TCP connection) would run out on its
 * peers while it is still busy here. A shift, not a division: timeout >> 32 in 2^30 ns units is a
 * quarter of it (~0.23 s short per second of timeout). */
static __always_inline int refresh_due(const struct tdm_config *cfg, const struct tdm_ct_entry *e, __u64 now)
{
    __u32 every = (__u32)(entry_timeout(cfg, e) >> 32);
    return (__u32)(now >> 30) - e->refreshed >= (every ? every : 1);
}

static __always_inline int entry_expired(const struct tdm_config *cfg, const struct tdm_ct_entry *e, __u64 now)
{
    __u64 t = entry_timeout(cfg, e);
    return now > e->last_seen_ns && now - e->last_seen_ns > t;
}

/*
 * A connection is over only when both halves are idle past the timeout: one-way traffic (a UDP
 * stream the endpoint seldom answers, a bulk upload whose ACKs are not ours to see) keeps only one
 * half fresh, and the user-space reaper also takes the fresher of the two. The peer counts only
 * while it still points back at `key`; a half whose peer is gone or reused is judged alone.
 */
static __always_inline int conn_expired(const struct tdm_config *cfg, const struct tdm_ct_entry *e,
                                        const struct tdm_flow_key *key, __u64 now)
{
    if (!entry_expired(cfg, e, now))
        return 0;
    struct tdm_ct_entry *pe = bpf_map_lookup_elem(&tdm_ct, &e->peer);
    return !pe || !same_key(&pe->peer, key) || entry_expired(cfg, pe, now);
}

/* Forgets a connection: the entry `e` at `key`, and its other half at `peer` only while that half
 * still points back at `key` (its key may already belong to a newer connection), giving back its
 * active count. key and peer are copies on the stack, not pointers into entries being deleted. */
static __always_inline void forget(const struct tdm_ct_entry *e, const struct tdm_flow_key *key,
                                   const struct tdm_flow_key *peer)
{
    lc_release(e, key);
    struct tdm_ct_entry *pe = bpf_map_lookup_elem(&tdm_ct, peer);
    if (pe && same_key(&pe->peer, key))
        bpf_map_delete_elem(&tdm_ct, peer);
    bpf_map_delete_elem(&tdm_ct, key);
}

/*
 * TCP state machine, applied to both entries of a connection. Mirrors TandemCore's
 * TCPStateMachine; the privileged tests drive both with the same sequences.
 */
static __always_inline __u8 tcp_next_state(__u8 state, __u8 *flags, __u8 dir, __u8 tcp_flags)
{
    const __u8 FIN = 0x01, SYN = 0x02, RST = 0x04, ACK = 0x10;
    if (tcp_flags & RST)
        return TDM_CT_CLOSED;
    if (tcp_flags & FIN) {
        *flags |= dir == TDM_DIR_ORIGINAL ? TDM_CT_F_FIN_ORIG : TDM_CT_F_FIN_REPLY;
        if ((*flags & (TDM_CT_F_FIN_ORIG | TDM_CT_F_FIN_REPLY)) == (TDM_CT_F_FIN_ORIG | TDM_CT_F_FIN_REPLY))
            return TDM_CT_TIME_WAIT;
        return TDM_CT_FIN_WAIT;
    }
    switch (state) {
    case TDM_CT_SYN_SENT:
        if (dir == TDM_DIR_REPLY && (tcp_flags & (SYN | ACK)) == (SYN | ACK))
            return TDM_CT_SYN_RECV;
        return state;
    case TDM_CT_SYN_RECV:
        if (dir == TDM_DIR_ORIGINAL && (tcp_flags & (SYN | ACK)) == ACK)
            return TDM_CT_ESTABLISHED;
        return state;
    case TDM_CT_CLOSED:
    case TDM_CT_TIME_WAIT:
        /* A new SYN on a closed tuple is handled as a new flow by the caller. */
        return state;
    default:
        return state;
    }
}

#endif /* TANDEM_CT_H */

/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Connection events to user space through the ring buffer (replication reads them).
 * Part of the one compilation unit bpf/tandem_lb.c; include it from there only, in its order.
 */
#ifndef TANDEM_EVENTS_H
#define TANDEM_EVENTS_H

/* See struct tdm_event_ctl: wake the reader only when it sleeps or the ring fills up. */
static __always_inline __u64 event_wakeup_flags(void)
{
    __u32 zero = 0;
    struct tdm_event_ctl *ctl = bpf_map_lookup_elem(&tdm_event_ctl, &zero);
    if (!ctl)
        return 0; /* the kernel's own policy */
    if (ctl->consumer_waiting) {
        ctl->consumer_waiting = 0;
        return BPF_RB_FORCE_WAKEUP;
    }
    if (bpf_ringbuf_query(&tdm_events, BPF_RB_AVAIL_DATA) > bpf_ringbuf_query(&tdm_events, BPF_RB_RING_SIZE) / 2)
        return BPF_RB_FORCE_WAKEUP;
    return BPF_RB_NO_WAKEUP;
}

static __always_inline void emit_event(const struct tdm_config *cfg, __u8 type, const struct tdm_ct_entry *orig,
                                       const struct tdm_flow_key *key, __u64 now)
{
    if (!cfg->emit_events)
        return;
    struct tdm_ct_event *ev = bpf_ringbuf_reserve(&tdm_events, sizeof(*ev), 0);
    if (!ev) {
        stat_inc(TDM_STAT_EVENT_LOST);
        return;
    }
    ev->type = type;
    ev->state = orig->state;
    ev->nat_mode = orig->nat_mode;
    ev->flags = orig->flags;
    ev->service_id = orig->service_id;
    ev->key = *key;
    ev->xlate = orig->xlate;
    ev->ts_ns = now;
    ev->version = orig->version;
    ev->endpoint_index = orig->endpoint_index;
    ev->pad[0] = ev->pad[1] = ev->pad[2] = 0;
    ev->created_ns = orig->created_ns;
    bpf_ringbuf_submit(ev, event_wakeup_flags());
}

#endif /* TANDEM_EVENTS_H */

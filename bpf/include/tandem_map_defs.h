/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Every map of the datapath (BPF side). Keys and values are in tandem_maps.h, shared with Swift;
 * user space finds these maps by name (Sources/TandemDatapath/Datapath.swift).
 * Part of the one compilation unit bpf/tandem_lb.c; include it from there only, in its order.
 */
#ifndef TANDEM_MAP_DEFS_H
#define TANDEM_MAP_DEFS_H

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, TDM_CT_DEFAULT_MAX);
    __type(key, struct tdm_flow_key);
    __type(value, struct tdm_ct_entry);
} tdm_ct SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, TDM_MAX_SERVICES);
    __type(key, struct tdm_service_key);
    __type(value, struct tdm_service);
} tdm_services SEC(".maps");

/* VIPs with at least one service, for answering ICMP echo. Value: number of services. */
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, TDM_MAX_SERVICES);
    __type(key, __be32);
    __type(value, __u32);
} tdm_vips SEC(".maps");

/* VIPs this node owns (MASTER of their HA instance). Consulted only when cfg->gate_vips is set:
 * a BACKUP must not answer for a VIP, even if a stale route or ARP entry still sends it traffic.
 * Value unused (1). */
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, TDM_MAX_SERVICES);
    __type(key, __be32);
    __type(value, __u8);
} tdm_active_vips SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, TDM_MAX_SERVICES * TDM_MAX_ENDPOINTS);
    __type(key, __u32);
    __type(value, struct tdm_endpoint);
} tdm_endpoints SEC(".maps");

/* Endpoint health by tdm_endpoints index (struct tdm_ep_state), written by user space on each
 * verdict. Zero = up. */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, TDM_MAX_SERVICES * TDM_MAX_ENDPOINTS);
    __type(key, __u32);
    __type(value, struct tdm_ep_state);
} tdm_ep_state SEC(".maps");

/* allowedSources of services with TDM_SVC_F_SOURCES (struct tdm_source_key). Value unused (1). */
struct {
    __uint(type, BPF_MAP_TYPE_LPM_TRIE);
    __uint(max_entries, TDM_MAX_SERVICES * TDM_MAX_SOURCES);
    __uint(map_flags, BPF_F_NO_PREALLOC); /* the kernel requires it of tries */
    __type(key, struct tdm_source_key);
    __type(value, __u8);
} tdm_sources SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, TDM_MAX_SERVICES);
    __type(key, __u32);
    __type(value, struct tdm_schedule);
} tdm_schedules SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, TDM_MAX_SERVICES);
    __type(key, __u32);
    __type(value, struct tdm_maglev);
} tdm_maglev SEC(".maps");

/* Per-service idle timeout (inactiveTimeOut) of the established states, in ns by service slot;
 * 0 = the node's. An array so programs that have only an entry's service_id can look it up. */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, TDM_MAX_SERVICES);
    __type(key, __u32);
    __type(value, __u64);
} tdm_svc_timeout SEC(".maps");

/* Active connections per endpoint (index service_id * TDM_MAX_ENDPOINTS + endpoint_index), for
 * least-connections selection. Shared and updated atomically; mmapped by user space, which
 * gives back counts of connections it deletes itself. */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, TDM_MAX_SERVICES * TDM_MAX_ENDPOINTS);
    __uint(map_flags, BPF_F_MMAPABLE);
    __type(key, __u32);
    __type(value, __u64);
} tdm_lc_active SEC(".maps");

/* Shared (not per-CPU) so consecutive new flows alternate whichever CPU they land on. */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, TDM_MAX_SERVICES);
    __type(key, __u32);
    __type(value, __u32);
} tdm_rr SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, TDM_PERSIST_MAX);
    __type(key, struct tdm_persist_key);
    __type(value, struct tdm_persist_value);
} tdm_persist SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, TDM_MAX_SERVICES);
    __type(key, __u32);
    __type(value, struct tdm_counters);
} tdm_service_stats SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, TDM_MAX_SERVICES * TDM_MAX_ENDPOINTS);
    __type(key, __u32);
    __type(value, struct tdm_counters);
} tdm_endpoint_stats SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, TDM_STAT_COUNT);
    __type(key, __u32);
    __type(value, __u64);
} tdm_stats SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct tdm_config);
} tdm_config SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, TDM_RINGBUF_BYTES);
} tdm_events SEC(".maps");

/* Reader/datapath handshake for ring-buffer wakeups (struct tdm_event_ctl), mmapped by the reader. */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __uint(map_flags, BPF_F_MMAPABLE);
    __type(key, __u32);
    __type(value, struct tdm_event_ctl);
} tdm_event_ctl SEC(".maps");

/* Staging buffer for tandem_install, written by user space through mmap. */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __uint(map_flags, BPF_F_MMAPABLE);
    __type(key, __u32);
    __type(value, struct tdm_install_buf);
} tdm_install SEC(".maps");

#endif /* TANDEM_MAP_DEFS_H */

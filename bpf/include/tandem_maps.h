/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Every BPF map key and value Tandem uses, shared by the BPF programs in bpf/ and by the Swift
 * side (through the CTandemShim C module), so the two layouts cannot drift. Katran's
 * balancer_structs.h is the model. Multi-byte address and port fields are in network byte order
 * (as they appear in packets); everything else is in host order.
 *
 * Only fixed-width types, explicit padding, no pointers: the same bytes are read by clang -target
 * bpf and by the host compiler, and the static asserts at the bottom check the sizes.
 */
#ifndef TANDEM_MAPS_H
#define TANDEM_MAPS_H

#include <linux/types.h>

#define TDM_MAX_SERVICES      256
#define TDM_MAX_ENDPOINTS     64     /* per service; endpoint indices fit in a byte */
#define TDM_SCHED_LEN         256    /* weighted round-robin schedule slots per service */
#define TDM_MAGLEV_M          16381  /* prime; > 100 x TDM_MAX_ENDPOINTS keeps disruption ~1% */
#define TDM_MAGLEV_SLOTS      16384  /* TDM_MAGLEV_M rounded up for alignment */
#define TDM_CT_DEFAULT_MAX    262144 /* connection-table entries (two per connection) */
#define TDM_PERSIST_MAX       65536
#define TDM_RINGBUF_BYTES     (1 << 22)
#define TDM_PORT_TRIES        32     /* random probes for a free SNAT port in this node's slice */
#define TDM_MAX_SOURCES       64     /* allowed source prefixes per service */

/* NAT modes (LoxiLB's names). */
enum tdm_nat_mode {
    TDM_NAT_DEFAULT = 0, /* DNAT only: the endpoint sees the client's address */
    TDM_NAT_ONEARM  = 1, /* DNAT + SNAT to the node's own address */
    TDM_NAT_FULLNAT = 2, /* DNAT + SNAT to the service's source IP (the floating IP by default) */
};

/* Endpoint selection. Round-robin and weighted share the schedule table. */
enum tdm_sel {
    TDM_SEL_RR       = 0,
    TDM_SEL_WEIGHTED = 1,
    TDM_SEL_PERSIST  = 2, /* source-IP persistence, falls back to the schedule */
    TDM_SEL_MAGLEV   = 3, /* consistent hashing, seeded per cluster */
    TDM_SEL_LC       = 4, /* fewest active connections (tdm_lc_active); ties from the rr cursor */
};

/* Connection states. TCP follows the handshake and teardown; UDP and ICMP only track replies. */
enum tdm_ct_state {
    TDM_CT_NONE        = 0,
    TDM_CT_SYN_SENT    = 1,
    TDM_CT_SYN_RECV    = 2,
    TDM_CT_ESTABLISHED = 3,
    TDM_CT_FIN_WAIT    = 4, /* one side sent FIN */
    TDM_CT_TIME_WAIT   = 5, /* both sides sent FIN */
    TDM_CT_CLOSED      = 6, /* RST seen */
    TDM_CT_UDP_NEW     = 7, /* only the client has sent */
    TDM_CT_UDP_EST     = 8, /* the endpoint has replied */
    TDM_CT_ICMP        = 9,
    TDM_CT_STATE_COUNT = 10,
};

/* tdm_ct_entry.flags */
#define TDM_CT_F_FIN_ORIG   0x01 /* FIN seen from the client side */
#define TDM_CT_F_FIN_REPLY  0x02 /* FIN seen from the endpoint side */
#define TDM_CT_F_PICKED_UP  0x04 /* created from a mid-flow TCP packet, not a SYN */
#define TDM_CT_F_FROM_PEER  0x08 /* installed from a peer's sync stream */
#define TDM_CT_F_COUNTED    0x10 /* holds one count in tdm_lc_active (set on both halves), cleared
                                  * when given back so a connection gives it back once. Local
                                  * bookkeeping: never taken from a peer's record nor shown */

enum tdm_ct_dir {
    TDM_DIR_ORIGINAL = 0, /* client -> VIP */
    TDM_DIR_REPLY    = 1, /* endpoint -> SNAT address (or client) */
};

/* A 5-tuple as it appears on the wire. For ICMP echo both ports hold the echo identifier. */
struct tdm_flow_key {
    __be32 saddr;
    __be32 daddr;
    __be16 sport;
    __be16 dport;
    __u8   proto;
    __u8   pad[3];
};

/*
 * One direction of a connection. Each connection has two entries: the original direction, keyed
 * by what the client sends, and the reply direction, keyed by what the endpoint sends back.
 * `xlate` is the tuple a matching packet is rewritten to; `peer` is the key of the other entry.
 */
struct tdm_ct_entry {
    struct tdm_flow_key xlate;
    struct tdm_flow_key peer;
    __u64  created_ns;    /* bpf_ktime_get_ns() of this node; never sent to peers raw */
    __u64  last_seen_ns;
    __u64  packets;       /* this direction */
    __u64  bytes;
    __u32  service_id;    /* slot in the per-service arrays; >= TDM_MAX_SERVICES for a flow a peer
                           * replicated whose service this node does not have (not counted) */
    __u32  version;       /* bumped on every state change, orders replicated updates */
    __be32 endpoint_ip;
    __be16 endpoint_port;
    __u8   endpoint_index;
    __u8   nat_mode;
    __u8   dir;           /* enum tdm_ct_dir */
    __u8   state;         /* enum tdm_ct_state */
    __u8   flags;         /* TDM_CT_F_* */
    __u8   pad;
    __u32  refreshed;     /* when peers were last told about this flow, in 2^30 ns (~1.07 s) units of
                           * bpf_ktime_get_ns(): a busy flow is re-announced every quarter timeout
                           * (TDM_EV_REFRESH) so its peers' copies never run out while it lives */
};

struct tdm_service_key {
    __be32 vip;
    __be16 port;
    __u8   proto;
    __u8   pad;
};

struct tdm_service {
    __u32  id;               /* index into the per-service arrays, < TDM_MAX_SERVICES */
    __be32 snat_ip;          /* fullnat source address; 0 = the VIP itself */
    __u32  persist_timeout_s;
    __u16  endpoint_count;
    __u16  sched_len;        /* used slots of the schedule, <= TDM_SCHED_LEN */
    __u8   nat_mode;
    __u8   sel;
    __u8   flags;            /* TDM_SVC_F_* */
    __u8   pad;
};

/* tdm_service.flags */
#define TDM_SVC_F_SOURCES    0x01 /* only sources in tdm_sources (for this id) may open connections */
#define TDM_SVC_F_RESET_DOWN 0x02 /* established TCP connections to a down endpoint are reset (RST to
                                    * the client) and forgotten; UDP ones are forgotten and re-picked.
                                    * Without it they run on until their own timeout */

/*
 * Allowed source prefixes (LPM trie). prefixlen counts bits of {service_id, addr}: 32 + the
 * prefix's length, so a lookup with prefixlen 64 matches only prefixes of its own service.
 */
struct tdm_source_key {
    __u32  prefixlen;
    __u32  service_id;       /* host order: matched whole, byte order does not matter */
    __be32 addr;
};

struct tdm_endpoint {
    __be32 ip;
    __be16 port;
    __u8   weight;
    __u8   active;           /* 0 = drained: not chosen for new flows */
};

/*
 * Endpoint health (tdm_ep_state), indexed like tdm_endpoints: service_id * TDM_MAX_ENDPOINTS +
 * endpoint index. Written by user space on a health verdict, apart from the service install, so a
 * flip rewrites one 4-byte value and leaves the service, its counters and cursors alone.
 *
 * An endpoint is eligible for new connections only if it is `active` (tdm_endpoint, the drain
 * mark, part of the service definition) AND not `down` here (the health verdict). The two differ
 * for established connections: a drained endpoint keeps them; a down one keeps them too unless the
 * service has TDM_SVC_F_RESET_DOWN. Zero (the array's initial value) means up, so an endpoint
 * nobody monitors is never taken out of rotation.
 */
struct tdm_ep_state {
    __u8   down;             /* 1: failed its health checks (or an external verdict said so) */
    __u8   flags;            /* TDM_EPS_F_*: why, for user space; the datapath reads only `down` */
    __u8   pad[2];
};

/* tdm_ep_state.flags */
#define TDM_EPS_F_EXTERNAL 0x01 /* the verdict came from outside (endpointhoststate), not a probe */

/* Swift's importer turns C arrays into tuples, which for 16k elements costs minutes of compile
 * time; the Swift side writes these two values as raw byte buffers of the sizes above. */
#ifndef __swift__
struct tdm_schedule {
    __u8 slot[TDM_SCHED_LEN];
};

struct tdm_maglev {
    __u8 slot[TDM_MAGLEV_SLOTS];
};
#endif

struct tdm_persist_key {
    __u32  service_id;
    __be32 client_ip;
};

struct tdm_persist_value {
    __u64 last_used_ns;
    __u32 endpoint_index;
    __u32 pad;
};

/* Per-service and per-endpoint counters, per CPU; user space sums them. */
struct tdm_counters {
    __u64 packets;
    __u64 bytes;
    __u64 new_flows;
    __u64 denied;            /* new connections refused by allowedSources (service counters only) */
    __u64 no_endpoint;       /* new connections with no eligible endpoint, answered with a TCP RST
                              * or ICMP port unreachable (service counters only) */
    __u64 reset_down;        /* established connections forgotten because their endpoint went
                              * down, with TDM_SVC_F_RESET_DOWN (TCP ones also got a RST) */
};

/* Datapath-wide drop and event counters, indexed by enum tdm_stat (per CPU). */
enum tdm_stat {
    TDM_STAT_NO_ENDPOINT     = 0, /* service matched but no eligible (active and up) endpoint */
    TDM_STAT_NO_PORT         = 1, /* no free SNAT port in this node's slice */
    TDM_STAT_CT_FULL         = 2, /* connection table insert failed */
    TDM_STAT_EVENT_LOST      = 3, /* ring buffer full */
    TDM_STAT_ICMP_REPLIED    = 4,
    TDM_STAT_REDIRECT_FAILED = 5,
    TDM_STAT_EXPIRED_REUSED  = 6, /* an expired entry was replaced by a new flow */
    TDM_STAT_PICKED_UP       = 7, /* a mid-flow TCP packet created an entry */
    TDM_STAT_NOT_SYN_DROPPED = 8, /* reserved */
    TDM_STAT_STANDBY_PASSED  = 9, /* packet to a VIP this node does not own (BACKUP): left to the stack */
    TDM_STAT_XDP_FORWARDED   = 10, /* packet of an established flow forwarded by the XDP fast path */
    TDM_STAT_REAPED          = 11, /* idle connections removed by the periodic reap */
    TDM_STAT_REAPED_HALVES   = 12, /* orphaned or stale reply halves removed by the reap */
    TDM_STAT_SOURCE_DENIED   = 13, /* new connection from a source outside the service's allowedSources */
    TDM_STAT_RESET_SENT      = 14, /* TCP RSTs sent to clients (no endpoint, or endpoint down) */
    TDM_STAT_UNREACH_SENT    = 15, /* ICMP port unreachable sent for UDP with no endpoint */
    TDM_STAT_COUNT           = 16,
};

/* Node-wide settings, array map with one element. */
struct tdm_config {
    __u64  timeout_ns[TDM_CT_STATE_COUNT]; /* idle timeout per enum tdm_ct_state */
    __u64  pad_timeouts[16 - TDM_CT_STATE_COUNT];
    __be32 node_ip;          /* onearm source address */
    __u32  hash_seed;        /* cluster-wide Maglev / flow-hash seed */
    __u16  port_lo;          /* this node's SNAT port slice, host order, inclusive */
    __u16  port_hi;
    __u8   answer_icmp;      /* answer ICMP echo to a VIP in the datapath */
    __u8   emit_events;
    __u8   gate_vips;        /* 1 in a cluster: serve a VIP only while it is in tdm_active_vips */
    __u8   skip_fib;         /* 1 when the interfaces do not forward: FIB lookups would only fail */
};

enum tdm_event_type {
    TDM_EV_NEW    = 1,
    TDM_EV_STATE  = 2,
    TDM_EV_DELETE = 3, /* replaced after expiry or removed by the datapath */
    TDM_EV_EXPIRE = 4, /* idle past its timeout, removed by the periodic reap (tandem_reap) */
    TDM_EV_REFRESH = 5, /* unchanged but still busy: peers' copies get a new lifetime */
};

/*
 * Ring-buffer wakeups. Waking the reader on every event costs an inter-processor interrupt per
 * event (an exit to the hypervisor on a VM: measured at ~7% of all CPU at 5k connections/s), so
 * the datapath submits without a wakeup while the reader polls on a short timer, and wakes it
 * only when it is asleep waiting (it sets consumer_waiting, mmapped, before blocking; the first
 * event clears it) or the ring is more than half full.
 */
struct tdm_event_ctl {
    __u32 consumer_waiting;
    __u32 pad;
};

/* Ring-buffer record: one per connection event, carrying the original-direction key. The first
 * 56 bytes are the original layout (endpoint_index took 1 of its 4 pad bytes); created_ns was
 * appended, so a reader built against the older 56-byte record still decodes these. */
struct tdm_ct_event {
    __u8   type;     /* enum tdm_event_type */
    __u8   state;
    __u8   nat_mode;
    __u8   flags;    /* TDM_CT_F_*, including FROM_PEER for entries installed from a peer */
    __u32  service_id; /* TDM_MAX_SERVICES (or more) for a peer's flow of an unknown service */
    struct tdm_flow_key key;    /* original direction */
    struct tdm_flow_key xlate;  /* what the original direction is rewritten to */
    __u64  ts_ns;
    __u32  version;
    __u8   endpoint_index;      /* index in this node's service */
    __u8   pad[3];
    __u64  created_ns;          /* the entry's bpf_ktime_get_ns() creation time: ts_ns - created_ns is its age */
};

/*
 * Installing connections a peer replicated (user space -> the tandem_install syscall program).
 * User space fills the mmapped tdm_install array map's one value, a struct tdm_install_buf, and
 * runs the program once per batch (BPF_PROG_TEST_RUN): lookups, merges and both updates of every
 * record then cost no syscall each. Times are relative, turned into this node's clock in-kernel.
 */
#define TDM_INSTALL_BATCH 1024
#define TDM_INSTALL_HDR   16   /* offset of req[0] in struct tdm_install_buf */

struct tdm_install_req {
    struct tdm_flow_key key;   /* original direction; the reply key is xlate reversed */
    struct tdm_flow_key xlate; /* what the original direction is rewritten to */
    __u64  age_ns;             /* since the connection was created, as the owner reports */
    __u64  idle_ns;            /* since its last packet, as the owner's remaining time implies */
    __u32  service_id;         /* local slot, or >= TDM_MAX_SERVICES for an unknown service */
    __u8   endpoint_index;     /* local index */
    __u8   nat_mode;
    __u8   state;
    __u8   flags;              /* the owner's; TDM_CT_F_FROM_PEER is added on install */
    __s32  result;             /* out: 0, or a negative errno */
    __u32  pad;
};

#ifndef __swift__
struct tdm_install_buf {
    __u32 count;               /* in: records in req[] */
    __u32 installed;           /* out */
    __u64 pad;
    struct tdm_install_req req[TDM_INSTALL_BATCH];
};
#endif

/*
 * Pinned datapath (hitless restart). A daemon run with --persist-datapath pins every map under
 * its pin directory and leaves the programs attached when it exits; the next start adopts them
 * when the layout matches. tdm_meta (an array map of one struct tdm_pin_meta, created and pinned by
 * user space, never read by the BPF programs) says which layout the pins have, and what a graceful
 * exit left for the next start: the roles it held (so it resumes them with no election), its
 * incarnation, and where the programs are attached (and which clsact qdiscs are Tandem's).
 */
#define TDM_LAYOUT_VERSION    1  /* bump when a map's meaning changes without its BTF changing */
#define TDM_META_INSTANCES    16
#define TDM_META_IFACES       16
#define TDM_META_F_RESUME     0x01 /* a graceful exit wrote the resume record below */

struct tdm_meta_instance {
    __u32 id;       /* FNV-1a 32 of the HA instance name */
    __u8  role;     /* 1 BACKUP, 2 MASTER (the sync protocol's HARole) */
    __u8  pad[3];
    __u64 term;
};

struct tdm_pin_meta {
    __u64 fingerprint;      /* of every pinned map's type, sizes, flags and BTF key/value layout */
    __u32 layout_version;   /* TDM_LAYOUT_VERSION of the build that pinned */
    __u32 flags;            /* TDM_META_F_* */
    __u64 exited_at_us;     /* wall clock of the graceful exit */
    __u32 incarnation;      /* the membership incarnation the exiting daemon had */
    __u32 instance_count;
    struct tdm_meta_instance instances[TDM_META_INSTANCES];
    __u32 ifindex[TDM_META_IFACES];  /* interfaces the programs are attached to, 0 = unused */
    __u8  if_flags[TDM_META_IFACES]; /* TDM_META_IF_* of each */
};

#define TDM_META_IF_QDISC 0x01 /* Tandem created the clsact qdisc: removed on release */
#define TDM_META_IF_XDP   0x02 /* the XDP fast path is attached too */

#define TDM_STATIC_ASSERT(c, m) _Static_assert(c, m)
TDM_STATIC_ASSERT(sizeof(struct tdm_flow_key) == 16, "flow key layout");
TDM_STATIC_ASSERT(sizeof(struct tdm_ct_entry) == 88, "ct entry layout");
TDM_STATIC_ASSERT(sizeof(struct tdm_service_key) == 8, "service key layout");
TDM_STATIC_ASSERT(sizeof(struct tdm_service) == 20, "service layout");
TDM_STATIC_ASSERT(sizeof(struct tdm_endpoint) == 8, "endpoint layout");
TDM_STATIC_ASSERT(sizeof(struct tdm_source_key) == 12, "source key layout");
TDM_STATIC_ASSERT(sizeof(struct tdm_ep_state) == 4, "endpoint state layout");
TDM_STATIC_ASSERT(sizeof(struct tdm_counters) == 48, "counters layout");
TDM_STATIC_ASSERT(sizeof(struct tdm_ct_event) == 64, "event layout");
TDM_STATIC_ASSERT(sizeof(struct tdm_config) == 144, "config layout");
TDM_STATIC_ASSERT(sizeof(struct tdm_event_ctl) == 8, "event control layout");
TDM_STATIC_ASSERT(sizeof(struct tdm_install_req) == 64, "install request layout");
TDM_STATIC_ASSERT(sizeof(struct tdm_meta_instance) == 16, "meta instance layout");
TDM_STATIC_ASSERT(sizeof(struct tdm_pin_meta) == 32 + 16 * TDM_META_INSTANCES + 5 * TDM_META_IFACES, "pin meta layout");
#ifndef __swift__
TDM_STATIC_ASSERT(sizeof(struct tdm_install_buf) == TDM_INSTALL_HDR + 64 * TDM_INSTALL_BATCH, "install buffer layout");
#endif

#endif /* TANDEM_MAPS_H */

/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Protocol constants and headers the BPF include set lacks, and packet offsets.
 * Part of the one compilation unit bpf/tandem_lb.c; include it from there only, in its order.
 */
#ifndef TANDEM_PROTO_H
#define TANDEM_PROTO_H

#ifndef AF_INET
#define AF_INET 2
#endif

/* linux/icmp.h drags in libc socket headers that do not build for the BPF target. */
#define ICMP_ECHOREPLY 0
#define ICMP_ECHO      8
struct icmphdr {
    __u8  type;
    __u8  code;
    __sum16 checksum;
    union {
        struct { __be16 id; __be16 sequence; } echo;
        __be32 gateway;
    } un;
};

#define IP_CSUM_OFF  (ETH_HLEN + offsetof(struct iphdr, check))
#define IP_SRC_OFF   (ETH_HLEN + offsetof(struct iphdr, saddr))
#define IP_DST_OFF   (ETH_HLEN + offsetof(struct iphdr, daddr))
#define IP_FRAG_MASK 0x3fff /* MF flag + fragment offset */

#endif /* TANDEM_PROTO_H */

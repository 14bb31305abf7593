// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Test bed only: an XDP program that passes everything. veth delivers XDP frames (another
 * interface's XDP_TX or redirect) only to a peer running in NAPI mode, which an attached XDP
 * program turns on; the vcn side of a node's link gets this one when the node runs Tandem's XDP
 * fast path (testbed/lib.sh tb_xdp_ready).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

SEC("xdp")
int testbed_xdp_pass(struct xdp_md *ctx)
{
    return XDP_PASS;
}

/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Checksum arithmetic for incremental rewrites.
 * Part of the one compilation unit bpf/tandem_lb.c; include it from there only, in its order.
 */
#ifndef TANDEM_CSUM_H
#define TANDEM_CSUM_H

/* Ones' complement sum of 32-bit words, as csum_partial folds them: cheaper inline than a
 * bpf_csum_diff call for the two or four words a rewrite changes. */
static __always_inline __u32 csum_add32(__u32 a, __u32 b)
{
    a += b;
    return a + (a < b);
}

/* The checksum difference of replacing words a0,a1 by b0,b1 (bpf_csum_diff's result). */
static __always_inline __u32 csum_diff2(__u32 a0, __u32 a1, __u32 b0, __u32 b1)
{
    return csum_add32(csum_add32(~a0, ~a1), csum_add32(b0, b1));
}

#endif /* TANDEM_CSUM_H */

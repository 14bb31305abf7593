// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Benchmark only (tandem-syncbench): wakes the benchmark each time node 2's daemon finishes a
 * bpf() call that writes its tables (the install program's run, a map update), so the driver
 * looks for newly arrived flows the moment they can have arrived, as tandem-ctbench hears of
 * kernel entries from ctnetlink NEW events, instead of polling node 2's map on an interval
 * (which added half the interval to every lag). Syscall tracepoints, since this kernel has no
 * fentry or kprobes.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* The watched daemon's process id (tgid), set by user space after load (key 0). */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u32);
} arrivals_target SEC(".maps");

/* Threads of the daemon inside a writing bpf() call. */
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 1024);
    __type(key, __u32);
    __type(value, __u32);
} arrivals_inflight SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 1 << 20);
} arrivals SEC(".maps");

/* Layouts from /sys/kernel/tracing/events/syscalls/sys_{enter,exit}_bpf/format. */
struct sys_enter_bpf_args {
    __u64 common;
    __s32 nr;
    __u32 pad;
    __u64 cmd;
    __u64 uattr;
    __u64 size;
};

struct sys_exit_bpf_args {
    __u64 common;
    __s32 nr;
    __u32 pad;
    __s64 ret;
};

static __always_inline int watched(__u64 pid_tgid)
{
    __u32 zero = 0;
    __u32 *target = bpf_map_lookup_elem(&arrivals_target, &zero);
    return target && *target != 0 && (__u32)(pid_tgid >> 32) == *target;
}

SEC("tracepoint/syscalls/sys_enter_bpf")
int bench_arrivals_enter(struct sys_enter_bpf_args *ctx)
{
    __u64 id = bpf_get_current_pid_tgid();
    if (!watched(id))
        return 0;
    if (ctx->cmd != BPF_PROG_TEST_RUN && ctx->cmd != BPF_MAP_UPDATE_ELEM && ctx->cmd != BPF_MAP_UPDATE_BATCH)
        return 0;
    __u32 tid = (__u32)id, one = 1;
    bpf_map_update_elem(&arrivals_inflight, &tid, &one, BPF_ANY);
    return 0;
}

SEC("tracepoint/syscalls/sys_exit_bpf")
int bench_arrivals_exit(struct sys_exit_bpf_args *ctx)
{
    __u64 id = bpf_get_current_pid_tgid();
    if (!watched(id))
        return 0;
    __u32 tid = (__u32)id;
    if (!bpf_map_lookup_elem(&arrivals_inflight, &tid))
        return 0;
    bpf_map_delete_elem(&arrivals_inflight, &tid);
    __u64 *at = bpf_ringbuf_reserve(&arrivals, sizeof(*at), 0);
    if (!at)
        return 0;
    *at = bpf_ktime_get_ns();
    /* Default wakeup: the reader is woken unless it is already draining, as a netlink socket's. */
    bpf_ringbuf_submit(at, 0);
    return 0;
}

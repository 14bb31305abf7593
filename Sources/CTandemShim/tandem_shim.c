#include "tandem_shim.h"
#include <bpf/libbpf.h>
#include <bpf/bpf.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* Our filter's identity on the clsact ingress hook, so we never touch other users' filters. */
#define TDM_TC_HANDLE   0x7464
#define TDM_TC_PRIORITY 0x7464

int tdm_tc_attach_ingress(int ifindex, int prog_fd, int *created_qdisc)
{
    LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = ifindex, .attach_point = BPF_TC_INGRESS);
    int err = bpf_tc_hook_create(&hook);
    if (created_qdisc)
        *created_qdisc = err == 0;
    if (err && err != -EEXIST)
        return err;
    LIBBPF_OPTS(bpf_tc_opts, opts, .handle = TDM_TC_HANDLE, .priority = TDM_TC_PRIORITY,
                .prog_fd = prog_fd, .flags = BPF_TC_F_REPLACE);
    return bpf_tc_attach(&hook, &opts);
}

int tdm_tc_detach_ingress(int ifindex, int destroy_qdisc)
{
    LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = ifindex, .attach_point = BPF_TC_INGRESS);
    LIBBPF_OPTS(bpf_tc_opts, opts, .handle = TDM_TC_HANDLE, .priority = TDM_TC_PRIORITY);
    int err = bpf_tc_detach(&hook, &opts);
    if (destroy_qdisc) {
        hook.attach_point = BPF_TC_INGRESS | BPF_TC_EGRESS;
        int e2 = bpf_tc_hook_destroy(&hook);
        if (!err && e2 && e2 != -ENOENT)
            err = e2;
    }
    return err == -ENOENT ? 0 : err;
}

int tdm_tc_query_ingress(int ifindex)
{
    LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = ifindex, .attach_point = BPF_TC_INGRESS);
    LIBBPF_OPTS(bpf_tc_opts, opts, .handle = TDM_TC_HANDLE, .priority = TDM_TC_PRIORITY);
    int err = bpf_tc_query(&hook, &opts);
    if (err == -ENOENT || err == -EINVAL)
        return 0;
    return err ? err : 1;
}

int tdm_prog_test_run(int prog_fd, const void *packet, uint32_t packet_len, void *out, uint32_t *out_len,
                      uint32_t *retval)
{
    LIBBPF_OPTS(bpf_test_run_opts, opts, .data_in = packet, .data_size_in = packet_len,
                .data_out = out, .data_size_out = out_len ? *out_len : 0, .repeat = 1);
    int err = bpf_prog_test_run_opts(prog_fd, &opts);
    if (err)
        return -errno;
    if (out_len)
        *out_len = opts.data_size_out;
    if (retval)
        *retval = opts.retval;
    return 0;
}

static int tdm_verbosity = 1;

static int tdm_print(enum libbpf_print_level level, const char *fmt, va_list args)
{
    if ((level == LIBBPF_DEBUG && tdm_verbosity < 2) || tdm_verbosity == 0)
        return 0;
    return vfprintf(stderr, fmt, args);
}

void tdm_set_libbpf_verbosity(int level)
{
    tdm_verbosity = level;
    libbpf_set_print(tdm_print);
}

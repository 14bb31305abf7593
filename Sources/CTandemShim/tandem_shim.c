#include <sys/prctl.h>
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
    LIBBPF_OPTS(bpf_tc_opts, query, .handle = TDM_TC_HANDLE, .priority = TDM_TC_PRIORITY);
    int err = 0;
    if (created_qdisc)
        *created_qdisc = 0;
    /* Our filter already there (a restart adopting the pinned datapath): the qdisc exists, and
     * creating it again would only log the kernel's EEXIST. */
    if (bpf_tc_query(&hook, &query) != 0) {
        err = bpf_tc_hook_create(&hook);
        if (created_qdisc)
            *created_qdisc = err == 0;
        if (err && err != -EEXIST)
            return err;
    }
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

/*
 * Layout fingerprint: FNV-1a 64 over a canonical description of every non-internal map (name,
 * type, key and value sizes, max entries, flags) and the BTF layout of its key and value (kinds,
 * names, sizes, member offsets, array lengths, recursively). Two builds whose maps would read the
 * same bytes differently get different fingerprints even when the sizes agree, so a restart never
 * adopts maps it would misread.
 */
#include <bpf/btf.h>

static uint64_t fnv_bytes(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

static uint64_t fnv_u64(uint64_t h, uint64_t v) { return fnv_bytes(h, &v, sizeof v); }

static uint64_t fnv_str(uint64_t h, const char *s) { return s ? fnv_bytes(h, s, strlen(s) + 1) : fnv_u64(h, 0); }

static uint64_t fnv_btf_type(uint64_t h, const struct btf *btf, uint32_t id, int depth)
{
    if (depth > 16)
        return fnv_u64(h, 0xdeadULL);
    const struct btf_type *t = btf__type_by_id(btf, id);
    if (!t)
        return fnv_u64(h, 0);
    /* Typedefs and qualifiers do not change the bytes: follow them. */
    while (btf_is_typedef(t) || btf_is_mod(t)) {
        t = btf__type_by_id(btf, t->type);
        if (!t)
            return fnv_u64(h, 0);
    }
    h = fnv_u64(h, btf_kind(t));
    h = fnv_str(h, btf__name_by_offset(btf, t->name_off));
    switch (btf_kind(t)) {
    case BTF_KIND_INT:
        h = fnv_u64(h, t->size);
        h = fnv_u64(h, btf_int_encoding(t));
        break;
    case BTF_KIND_ENUM:
    case BTF_KIND_ENUM64:
        h = fnv_u64(h, t->size);
        break;
    case BTF_KIND_ARRAY: {
        const struct btf_array *a = btf_array(t);
        h = fnv_u64(h, a->nelems);
        h = fnv_btf_type(h, btf, a->type, depth + 1);
        break;
    }
    case BTF_KIND_STRUCT:
    case BTF_KIND_UNION: {
        h = fnv_u64(h, t->size);
        const struct btf_member *m = btf_members(t);
        for (int i = 0; i < btf_vlen(t); i++) {
            h = fnv_str(h, btf__name_by_offset(btf, m[i].name_off));
            h = fnv_u64(h, btf_member_bit_offset(t, i));
            h = fnv_u64(h, btf_member_bitfield_size(t, i));
            h = fnv_btf_type(h, btf, m[i].type, depth + 1);
        }
        break;
    }
    case BTF_KIND_PTR:
        h = fnv_u64(h, 8);
        break;
    default:
        break;
    }
    return h;
}

uint64_t tdm_layout_fingerprint(struct bpf_object *obj)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    h = fnv_u64(h, TDM_LAYOUT_VERSION);
    const struct btf *btf = bpf_object__btf(obj);
    struct bpf_map *map;
    bpf_object__for_each_map(map, obj) {
        if (bpf_map__is_internal(map))
            continue;
        h = fnv_str(h, bpf_map__name(map));
        h = fnv_u64(h, bpf_map__type(map));
        h = fnv_u64(h, bpf_map__key_size(map));
        h = fnv_u64(h, bpf_map__value_size(map));
        h = fnv_u64(h, bpf_map__max_entries(map));
        h = fnv_u64(h, bpf_map__map_flags(map));
        if (btf) {
            uint32_t k = bpf_map__btf_key_type_id(map), v = bpf_map__btf_value_type_id(map);
            if (k)
                h = fnv_btf_type(h, btf, k, 0);
            if (v)
                h = fnv_btf_type(h, btf, v, 0);
        }
    }
    return h;
}

#include <sys/vfs.h>
#define TDM_BPF_FS_MAGIC 0xcafe4a11

int tdm_is_bpffs(const char *path)
{
    struct statfs st;
    if (statfs(path, &st) != 0)
        return -errno;
    return st.f_type == TDM_BPF_FS_MAGIC;
}

int tdm_set_thread_timer_slack(unsigned long nanoseconds)
{
    return prctl(PR_SET_TIMERSLACK, nanoseconds, 0, 0, 0);
}

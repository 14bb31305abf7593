#ifndef TANDEM_SHIM_H
#define TANDEM_SHIM_H
#include <stddef.h>
#include <stdint.h>
#include "tandem_maps.h"

/* Wrappers for libbpf calls that take LIBBPF_OPTS structs, a macro Swift cannot import.
 * All return 0 or a negative errno. */

/* Adds a clsact qdisc if needed (reports whether it created one) and attaches prog_fd to the
 * ingress hook of ifindex under Tandem's own handle and priority. */
int tdm_tc_attach_ingress(int ifindex, int prog_fd, int *created_qdisc);

/* Detaches Tandem's ingress filter; removes the clsact qdisc too when destroy_qdisc is set. */
int tdm_tc_detach_ingress(int ifindex, int destroy_qdisc);

/* Returns 1 when Tandem's filter is attached on ifindex, 0 when not, negative errno on error. */
int tdm_tc_query_ingress(int ifindex);

/* Runs prog_fd once over packet (BPF_PROG_TEST_RUN) and copies the resulting packet out. */
int tdm_prog_test_run(int prog_fd, const void *packet, uint32_t packet_len, void *out, uint32_t *out_len,
                      uint32_t *retval);

/* Routes libbpf's messages: 0 silences them, 1 prints warnings, 2 prints debug too. */
/* 1 if path is on a BPF filesystem, 0 if not, -errno if it cannot be checked. */
int tdm_is_bpffs(const char *path);

struct bpf_object;
/* A hash of every non-internal map's definition and BTF key/value layout, after
 * bpf_object__open and any max_entries changes (see tandem_shim.c). */
uint64_t tdm_layout_fingerprint(struct bpf_object *obj);

void tdm_set_libbpf_verbosity(int level);

/* Timer slack of the calling thread in nanoseconds (prctl PR_SET_TIMERSLACK; prctl is variadic,
 * which Swift cannot call). The default 50 us is added to every short sleep. */
int tdm_set_thread_timer_slack(unsigned long nanoseconds);

/* A sequentially consistent store into memory shared with BPF programs (an mmapped map value). */
static inline void tdm_atomic_store_u32(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_SEQ_CST); }

/* Counters shared with BPF programs (an mmapped tdm_lc_active): the same atomics they use. */
static inline uint64_t tdm_atomic_load_u64(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
static inline void tdm_atomic_add_u64(uint64_t *p, uint64_t v) { __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
static inline void tdm_atomic_store_u64(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_SEQ_CST); }
/* Subtracts one unless the value is already zero (as lc_give in bpf/lib/endpoints.h). */
static inline void tdm_atomic_give_u64(uint64_t *p) {
    uint64_t v = __atomic_load_n(p, __ATOMIC_SEQ_CST);
    while (v != 0 && !__atomic_compare_exchange_n(p, &v, v - 1, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
    }
}

#endif

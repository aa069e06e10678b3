// The next token of GPU-resident sampled decoding (engine.h, decode_resident): seeded top-k /
// top-p / min-p / temperature sampling by the rule of cpp/engine/top_k_pick.h, which the host's
// sampler runs too, so both pick the same token from the same logits. Statuses as argmax.metal
// (1 NaN, 2 largest +inf, 3 all -inf; token 0 then, a valid id for the passes queued behind).
//
// One threadgroup:
//   1. one pass over the logits for NaN and the largest key (the status);
//   2. radix select of the k-th largest key, 8 bits a pass (4 passes, threadgroup histograms);
//      if more logits equal that key than the k still needed, a radix select over their
//      indices finds where the smallest ones end (ties go to the smaller index);
//   3. the k candidates are gathered (in any order), ranked by (key, index) so each lands at its
//      place, and one thread runs the shared pick over them.
// Compiled without fast math (the marker below; CMakeLists.txt and flatten_msl.py read it): the
// pick must round as the host's does, and the NaN and infinity tests must stay.
// metallic: exact math
#include <metal_stdlib>
#include "args.h"

using namespace metal;
using namespace metallic;

// The digit histogram of one radix-select pass: over the indices j < n whose selected part
// matches (key & mask) == prefix (by_index: key == T and the index's bits under mask == prefix),
// count digit (value >> shift) & 255 of the key (by_index: of j).
inline void pick_histogram(device const float* x, int n, bool by_index, uint32_t key_t, uint32_t prefix,
                           uint32_t mask, int shift, threadgroup metal::atomic_uint* hist, uint tid, uint ntg) {
    for (int j = int(tid); j < n; j += int(ntg)) {
        const uint32_t key = pick_key(x[j]);
        const uint32_t v = by_index ? uint32_t(j) : key;
        if (by_index && key != key_t) continue;
        if ((v & mask) == prefix) atomic_fetch_add_explicit(&hist[(v >> shift) & 255u], 1u, memory_order_relaxed);
    }
}

kernel void sample_top_k_f32(constant SampleArgs& args [[buffer(0)]],
                             device const float* x [[buffer(1)]],
                             device int32_t* token [[buffer(2)]],
                             device int32_t* status [[buffer(3)]],
                             uint tid [[thread_index_in_threadgroup]],
                             uint ntg [[threads_per_threadgroup]],
                             uint lane [[thread_index_in_simdgroup]],
                             uint sg [[simdgroup_index_in_threadgroup]],
                             uint nsg [[simdgroups_per_threadgroup]]) {
    threadgroup metal::atomic_uint hist[256];  // metal::, not OpenCL's type in the address-space check
    threadgroup uint32_t sg_max[32];
    threadgroup int sg_nan[32];
    threadgroup uint32_t sel[4];  // prefix, mask, still needed, count at the selected digit
    threadgroup metal::atomic_uint n_cand[1];
    threadgroup float cand_v[PICK_TOP_K_MAX];
    threadgroup uint32_t cand_i[PICK_TOP_K_MAX];
    threadgroup float sorted_v[PICK_TOP_K_MAX];
    threadgroup int32_t sorted_i[PICK_TOP_K_MAX];

    const int n = args.n;
    const int k = min(min(args.pick.top_k, n), int(PICK_TOP_K_MAX));  // the host refuses more

    // 1. Status.
    uint32_t kmax = 0;
    int nan_seen = 0;
    for (int j = int(tid); j < n; j += int(ntg)) {
        const float v = x[j];
        nan_seen |= isnan(v) ? 1 : 0;
        kmax = max(kmax, pick_key(v));
    }
    kmax = simd_max(kmax);
    nan_seen = simd_max(nan_seen);
    if (lane == 0) {
        sg_max[sg] = kmax;
        sg_nan[sg] = nan_seen;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    kmax = 0;
    nan_seen = 0;
    for (uint s = 0; s < nsg; ++s) {
        kmax = max(kmax, sg_max[s]);
        nan_seen |= sg_nan[s];
    }
    const int bad = nan_seen ? 1 : (kmax == pick_key(INFINITY) ? 2 : (kmax == pick_key(-INFINITY) ? 3 : 0));
    if (bad != 0) {
        if (tid == 0) {
            status[0] = bad;
            token[0] = 0;
        }
        return;  // every thread: the status is the same for all
    }

    // 2. The k-th largest key, then (on too many ties) the largest index among the equal ones
    // to take. sel[2] counts what is still needed below the digits chosen so far.
    if (tid == 0) {
        sel[0] = 0;
        sel[1] = 0;
        sel[2] = uint32_t(k);
    }
    uint32_t key_t = 0, index_t = 0xffffffffu;
    for (int phase = 0; phase < 2; ++phase) {
        const bool by_index = phase == 1;
        // Index digits only as far as n reaches; ascending (smaller index first) for indices.
        const int top_shift = !by_index ? 24 : (n > (1 << 24) ? 24 : n > (1 << 16) ? 16 : n > (1 << 8) ? 8 : 0);
        for (int shift = top_shift; shift >= 0; shift -= 8) {
            for (uint d = tid; d < 256; d += ntg) atomic_store_explicit(&hist[d], 0u, memory_order_relaxed);
            threadgroup_barrier(mem_flags::mem_threadgroup);
            pick_histogram(x, n, by_index, key_t, sel[0], sel[1], shift, hist, tid, ntg);
            threadgroup_barrier(mem_flags::mem_threadgroup);
            if (tid == 0) {
                uint32_t cum = 0;
                for (int i = 0; i < 256; ++i) {
                    const uint32_t d = by_index ? uint32_t(i) : uint32_t(255 - i);
                    const uint32_t h = atomic_load_explicit(&hist[d], memory_order_relaxed);
                    if (cum + h >= sel[2]) {
                        sel[0] |= d << shift;
                        sel[1] |= 255u << shift;
                        sel[2] -= cum;
                        sel[3] = h;
                        break;
                    }
                    cum += h;
                }
            }
            threadgroup_barrier(mem_flags::mem_threadgroup);
        }
        if (!by_index) {
            key_t = sel[0];
            const bool all_equal_taken = sel[2] == sel[3];
            threadgroup_barrier(mem_flags::mem_threadgroup);  // everyone has read sel
            if (all_equal_taken) break;
            if (tid == 0) {
                sel[0] = 0;
                sel[1] = 0;  // sel[2] stays: that many of the equal keys, smallest indices first
            }
            threadgroup_barrier(mem_flags::mem_threadgroup);
        } else {
            index_t = sel[0];
        }
    }

    // 3. Gather, rank, pick.
    if (tid == 0) atomic_store_explicit(&n_cand[0], 0u, memory_order_relaxed);
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (int j = int(tid); j < n; j += int(ntg)) {
        const float v = x[j];
        const uint32_t key = pick_key(v);
        if (key > key_t || (key == key_t && uint32_t(j) <= index_t)) {
            const uint slot = atomic_fetch_add_explicit(&n_cand[0], 1u, memory_order_relaxed);
            cand_v[slot] = v;
            cand_i[slot] = uint32_t(j);
        }
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (int t = int(tid); t < k; t += int(ntg)) {
        const uint32_t key = pick_key(cand_v[t]);
        int rank = 0;
        for (int c = 0; c < k; ++c) {
            const uint32_t kc = pick_key(cand_v[c]);
            rank += (kc > key || (kc == key && cand_i[c] < cand_i[t])) ? 1 : 0;
        }
        sorted_v[rank] = cand_v[t];
        sorted_i[rank] = int32_t(cand_i[t]);
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    if (tid == 0) {
        status[0] = 0;
        const constant PickSettings& p = args.pick;  // into thread memory, field by field
        const PickSettings pick = {p.top_k, p.top_p, p.min_p, p.inv_temp, p.seed_lo, p.seed_hi, p.counter};
        token[0] = sorted_i[pick_sorted(&sorted_v[0], k, pick)];
    }
}

// Causal attention over one layer's KV cache:
//     out[t][h] = softmax(q[t][h] . K[kv(h)][start .. pos] * scale) V[kv(h)][start .. pos]
// with pos = pos0 + t, start = max(0, pos - window + 1) for sliding-window layers, else 0, and
// kv(h) = h / (n_heads / n_kv_heads): query heads of a GQA group read the same cache rows in
// place (cache layout [kv_head][position][head_dim], bound at the layer's offset).
//
// Query rows. The rows of kv head g are (t, h) for the n_tokens tokens and the group's heads
// h = g * group .. g * group + group - 1, numbered r = t * group + (h - g * group); a threadgroup
// takes ATTN_ROWS (args.h) consecutive ones: all heads of a GQA group at once in decode, and in
// prefill a block of tokens x heads. Every K and V row it loads from device memory is used by all
// of its query rows (held in registers), so the cache is read once per ATTN_ROWS rows instead of
// once per row and query head.
//
// Lanes. A cache row is split over nl lanes (the smallest power of two with 8 * nl >= head_dim,
// at most 32), each holding 8 consecutive dimensions: lane = position-in-step * nl + j holds
// dimensions 8j .. 8j + 7 of position p = step * (32 / nl) + position-in-step. So a simdgroup
// takes 32 / nl consecutive positions per step (4 for head_dim 64), whose rows are contiguous in
// the cache: one load instruction reads 32 * 8 contiguous elements. A score is a dot product over
// the nl lanes of its position (log2(nl) shuffle levels, 3 for head_dim 64).
//
// Online softmax: every (row, position-in-step) keeps its running max m, sum l and accumulator
// (the lane's 8 dimensions), rescaled when m grows; one pass over K and V. After the loop the
// positions-in-step are merged by shuffles and the simdgroups through threadgroup memory
// ((nsg - 1) * ATTN_ROWS * (8 * nl + 2) floats, [[threadgroup(0)]], sized by the host).
//
// Independence of rows: simdgroup s takes the steps k (positions k * (32 / nl) ..) with k % nsg
// == s, counted from position 0 (and splits start at multiples of split_len), so which lane and
// simdgroup a position lands in depends on the position only. A position outside a row's window
// is an exact no-op for that row (score "minus infinity", weight exactly 0, max unchanged), and
// the merge order is fixed, so a row's result does not depend on the other rows of its
// threadgroup (batched prompt chunks rely on it). Only positions inside some row's window are
// loaded (the cache past the last query position may hold anything).
//
// Kernels:
//   attention          grid (n_kv_heads * blocks, 1), blocks = ceil(rows per kv head / ATTN_ROWS):
//                      decode with short contexts, and prompt chunks of head sizes that are
//                      not a multiple of 8
//   attention_tile     prompt chunks (n_tokens >= 2): 8 * nsg rows per threadgroup, K/V tiles
//                      through threadgroup memory, simdgroup matrices (below). The backend
//                      picks the kernel by n_tokens and head size only, so a row's result
//                      depends on its chunk being one token or more, never on the other rows.
//   attention_split    decode with long contexts: grid (n_kv_heads * blocks, splits); split s
//                      takes the positions [(s0 + s) * split_len, (s0 + s + 1) * split_len) with
//                      s0 = start / split_len, and writes its unnormalized partial (M, L, acc)
//                      per row to partial[row][s]
//   attention_merge    grid (heads): merges the splits' partials into out (attention.metal)
//   attention_rope, attention_rope_split
//                      attention and attention_split for up to MATVEC_TOKENS tokens with
//                      rope_store_kv's work fused in (below): decode and short chunks skip a
//                      dispatch per layer
//
// The fused variants. q and k arrive as the projections wrote them; every threadgroup computes
// (qk-norm and) RoPE of its own query rows and of the chunk's new K rows of its kv head, and the
// new V rows, into threadgroup memory with rope_element (rope.h, the arithmetic rope_store_kv
// runs), and reads positions pos0 .. pos0 + n_tokens - 1 from there instead of the cache. One
// threadgroup per kv head (the last block, the last split) also writes those rows to the cache
// for later tokens; no threadgroup reads them from the cache in this dispatch, so there is no
// race. The new rows are rounded to the cache's type before use, as the cache would round them:
// the results are bit for bit those of rope_store_kv followed by attention (tested).
//
// "Minus infinity" is a large finite value: Metal compiles with fast math, which may assume
// no infinities.
#pragma once

#include <metal_stdlib>
#include "args.h"
#include "rope.h"

using namespace metal;

constant constexpr float ATTN_NEG_BIG = -1.0e30f;

// The window of query token t: positions [start, pos].
inline int2 attn_window(constant AttentionArgs& args, int t) {
    const int pos = args.pos0 + t;
    return int2(args.window > 0 ? max(0, pos - args.window + 1) : 0, pos);
}

// Query row r of kv head kvh (r = t * group + head in group): its index t * n_heads + h in q and out.
inline uint64_t attn_row(constant AttentionArgs& args, int kvh, int r) {
    const int group = args.n_heads / args.n_kv_heads;
    return uint64_t(r / group) * uint64_t(args.n_heads) + uint64_t(kvh * group + r % group);
}

// Lanes per cache row: the smallest power of two with 8 dimensions per lane, at most 32.
inline int attn_lanes_per_row(int hd) {
    int nl = 1;
    while (nl < 32 && 8 * nl < hd) nl *= 2;
    return nl;
}

// Elements d .. d + 3 of a row of hd elements, zero past hd. Rows of a multiple of 4 elements
// are read as one vector (8 or 16 bytes; row starts are then aligned to it).
template <typename T>
inline float4 attn_load4(device const T* row, int d, int hd) {
    if ((hd & 3) == 0) return d < hd ? float4(*(device const vec<T, 4>*)(row + d)) : float4(0.0f);
    return float4(d < hd ? float(row[d]) : 0.0f, d + 1 < hd ? float(row[d + 1]) : 0.0f,
                  d + 2 < hd ? float(row[d + 2]) : 0.0f, d + 3 < hd ? float(row[d + 3]) : 0.0f);
}

template <typename T>
inline float4 attn_load4_tg(threadgroup const T* row, int d, int hd) {
    if ((hd & 3) == 0) return d < hd ? float4(*(threadgroup const vec<T, 4>*)(row + d)) : float4(0.0f);
    return float4(d < hd ? float(row[d]) : 0.0f, d + 1 < hd ? float(row[d + 1]) : 0.0f,
                  d + 2 < hd ? float(row[d + 2]) : 0.0f, d + 3 < hd ? float(row[d + 3]) : 0.0f);
}

// attention_rope's threadgroup memory before the main loop, in floats from the start of the
// shared buffer (after the loop the buffer holds the simdgroups' merge instead): the qk-norm's
// sums of squares per 32 dimensions of each head it normalizes (ATTN_ROWS query rows, then
// n_tokens K rows), the rotated query rows (float), then the new K and V rows (the cache's
// type). Each region starts 16-byte aligned. The host sizes the buffer as the larger of this
// and the merge (MetalBackend::attention).
inline int attn_rope_chunks(int hd) { return (hd + 31) / 32; }
inline int attn_align4(int n) { return (n + 3) & ~3; }
inline int attn_rope_q_offset(int hd, int n) { return attn_align4((ATTN_ROWS + n) * attn_rope_chunks(hd)); }
inline int attn_rope_k_offset(int hd, int n) { return attn_rope_q_offset(hd, n) + attn_align4(ATTN_ROWS * hd); }

// The raw head a fused threadgroup rotates: query row r < nr (its row index in q), else new K row
// t = r - nr of kv head kvh.
inline device const float* attn_rope_src(constant AttentionArgs& args, device const float* q,
                                         device const float* k, int kvh, int nr, int r, uint64_t q_row) {
    if (r < nr) return q + q_row * uint64_t(args.head_dim);
    const int t = r - nr;
    return k + (uint64_t(t) * uint64_t(args.n_kv_heads) + uint64_t(kvh)) * uint64_t(args.head_dim);
}

inline void attn_store4(device float* row, int d, int hd, float4 x) {
    if ((hd & 3) == 0) {
        if (d < hd) *(device float4*)(row + d) = x;
        return;
    }
    if (d < hd) row[d] = x.x;
    if (d + 1 < hd) row[d + 1] = x.y;
    if (d + 2 < hd) row[d + 2] = x.z;
    if (d + 3 < hd) row[d + 3] = x.w;
}

// SPLIT false: out[t][h] (normalized). SPLIT true: out is the partial buffer, row (t, h) split s
// at ((t * n_heads + h) * splits + s) * (head_dim + 2): {M, L, acc[head_dim]}.
// ROPE: the fused variant; rope, k, v, inv_freq, q_norm and k_norm are read only then.
template <typename KV, bool SPLIT, bool ROPE>
inline void attention_impl(constant AttentionArgs& args, device const float* q, device KV* k_cache,
                           device KV* v_cache, device float* out, threadgroup float* shared,
                           constant RopeKvArgs* rope, device const float* k, device const float* v,
                           device const float* inv_freq, device const float* q_norm, device const float* k_norm,
                           uint2 tgpig, uint2 ntgs, uint lane, uint sg, uint nsg) {
    const int hd = args.head_dim;
    const int group = args.n_heads / args.n_kv_heads;
    const int rows_per_kv = args.n_tokens * group;
    const int blocks = (rows_per_kv + ATTN_ROWS - 1) / ATTN_ROWS;
    const int kvh = int(tgpig.x) / blocks;
    const int r0 = (int(tgpig.x) % blocks) * ATTN_ROWS;  // first row of this threadgroup
    const int nr = min(int(ATTN_ROWS), rows_per_kv - r0);

    const int nl = attn_lanes_per_row(hd);
    const int ps = 32 / nl;              // positions per simdgroup step
    const int pg = int(lane) / nl;       // this lane's position in a step
    const int d0 = 8 * (int(lane) % nl);  // and its dimensions d0 .. d0 + 7

    threadgroup KV* k_new = (threadgroup KV*)(shared + attn_rope_k_offset(hd, args.n_tokens));
    threadgroup KV* v_new = k_new + args.n_tokens * hd;
    if (ROPE) {
        // Fused: this threadgroup's query rows (r < nr) and the chunk's new K rows (nr + t) in
        // threadgroup memory, rotated (qk-normed first if the model has it).
        threadgroup float* sums = shared;
        threadgroup float* q_rot = shared + attn_rope_q_offset(hd, args.n_tokens);
        const int nch = attn_rope_chunks(hd), heads = nr + args.n_tokens;
        const bool qk_norm = rope->qk_norm != 0;
        if (qk_norm) {  // uniform
            for (int job = int(sg); job < heads * nch; job += int(nsg)) {
                const int r = job / nch, i = (job % nch) * 32 + int(lane);
                const uint64_t q_row = r < nr ? attn_row(args, kvh, r0 + r) : 0;
                device const float* x = attn_rope_src(args, q, k, kvh, nr, r, q_row);
                const float xi = i < hd ? x[i] : 0.0f;
                const float ss = simd_sum(xi * xi);
                if (lane == 0) sums[job] = ss;
            }
            threadgroup_barrier(mem_flags::mem_threadgroup);
        }
        for (int idx = int(sg) * 32 + int(lane); idx < heads * hd; idx += 32 * int(nsg)) {
            const int r = idx / hd, i = idx % hd;
            const bool is_q = r < nr;
            const uint64_t q_row = is_q ? attn_row(args, kvh, r0 + r) : 0;
            const int t = is_q ? int(q_row / uint64_t(args.n_heads)) : r - nr;
            const float scale = qk_norm ? rope_norm_scale(sums + r * nch, nch, hd, rope->eps) : 1.0f;
            const float val = rope_element(attn_rope_src(args, q, k, kvh, nr, r, q_row), i, rope->rope_dims,
                                           args.pos0 + t, inv_freq, qk_norm, scale, is_q ? q_norm : k_norm);
            if (is_q) {
                q_rot[r * hd + i] = val;
            } else {
                const KV kr = KV(val);
                const uint64_t v_at = (uint64_t(t) * uint64_t(args.n_kv_heads) + uint64_t(kvh)) * uint64_t(hd);
                const KV vr = KV(v[v_at + uint64_t(i)]);
                k_new[t * hd + i] = kr;
                v_new[t * hd + i] = vr;
            }
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
    }

    // The rows' queries (scaled), windows and softmax state. Rows past nr have empty windows.
    float4 qa[ATTN_ROWS], qb[ATTN_ROWS], acc_a[ATTN_ROWS], acc_b[ATTN_ROWS];
    float m[ATTN_ROWS], l[ATTN_ROWS];
    int lo[ATTN_ROWS], hi[ATTN_ROWS];
    uint64_t out_row[ATTN_ROWS];  // (t * n_heads + h), the row's index in q and out
    int p_lo = 0x7fffffff, p_hi = -1;  // the union of the windows
    for (int r = 0; r < ATTN_ROWS; ++r) {
        lo[r] = 1;
        hi[r] = 0;
        out_row[r] = 0;
        qa[r] = qb[r] = acc_a[r] = acc_b[r] = float4(0.0f);
        m[r] = ATTN_NEG_BIG;
        l[r] = 0.0f;
        if (r < nr) {
            const int t = (r0 + r) / group, h = kvh * group + (r0 + r) % group;
            const int2 win = attn_window(args, t);
            lo[r] = win.x;
            hi[r] = win.y;
            p_lo = min(p_lo, win.x);
            p_hi = max(p_hi, win.y);
            out_row[r] = uint64_t(t) * uint64_t(args.n_heads) + uint64_t(h);
            if (ROPE) {
                threadgroup const float* qr = shared + attn_rope_q_offset(hd, args.n_tokens) + r * hd;
                qa[r] = attn_load4_tg(qr, d0, hd) * args.scale;
                qb[r] = attn_load4_tg(qr, d0 + 4, hd) * args.scale;
            } else {
                device const float* qr = q + out_row[r] * uint64_t(hd);
                qa[r] = attn_load4(qr, d0, hd) * args.scale;
                qb[r] = attn_load4(qr, d0 + 4, hd) * args.scale;
            }
        }
    }
    // Fused: the rotated queries are in registers; the loop below reads only the new K and V
    // rows of the prologue's threadgroup memory.
    if (SPLIT) {
        const int s = p_lo / args.split_len + int(tgpig.y);
        p_lo = max(p_lo, s * args.split_len);
        p_hi = min(p_hi, s * args.split_len + args.split_len - 1);
    }

    const uint64_t head = uint64_t(kvh) * uint64_t(args.n_ctx) * uint64_t(hd);
    device const KV* k_head = k_cache + head;
    device const KV* v_head = v_cache + head;
    if (p_lo <= p_hi) {  // the same in the whole threadgroup
        const int k_first = p_lo / ps, k_last = p_hi / ps;
        for (int k = k_first + (int(sg) + int(nsg) - k_first % int(nsg)) % int(nsg); k <= k_last; k += int(nsg)) {
            const int p = k * ps + pg;
            const bool in = p >= p_lo && p <= p_hi;
            float4 ka = float4(0.0f), kb = float4(0.0f), va = float4(0.0f), vb = float4(0.0f);
            if (in && ROPE && p >= args.pos0) {  // a new row: from threadgroup memory
                threadgroup const KV* kp = k_new + (p - args.pos0) * hd;
                threadgroup const KV* vp = v_new + (p - args.pos0) * hd;
                ka = attn_load4_tg(kp, d0, hd);
                kb = attn_load4_tg(kp, d0 + 4, hd);
                va = attn_load4_tg(vp, d0, hd);
                vb = attn_load4_tg(vp, d0 + 4, hd);
            } else if (in) {
                device const KV* kp = k_head + uint64_t(p) * uint64_t(hd);
                device const KV* vp = v_head + uint64_t(p) * uint64_t(hd);
                ka = attn_load4(kp, d0, hd);
                kb = attn_load4(kp, d0 + 4, hd);
                va = attn_load4(vp, d0, hd);
                vb = attn_load4(vp, d0 + 4, hd);
            }
            for (int r = 0; r < ATTN_ROWS; ++r) {
                if (r >= nr) break;  // uniform
                float s = dot(qa[r], ka) + dot(qb[r], kb);
                for (int o = nl / 2; o > 0; o /= 2) s += simd_shuffle_xor(s, ushort(o));
                const bool valid = in && p >= lo[r] && p <= hi[r];
                s = valid ? s : ATTN_NEG_BIG;
                const float m_new = max(m[r], s);
                const float c = exp(m[r] - m_new);
                const float e = valid ? exp(s - m_new) : 0.0f;
                l[r] = l[r] * c + e;
                acc_a[r] = acc_a[r] * c + e * va;
                acc_b[r] = acc_b[r] * c + e * vb;
                m[r] = m_new;
            }
        }
    }

    // Merge the positions-in-step: lanes j, j + nl, ... hold the same dimensions.
    for (int r = 0; r < ATTN_ROWS; ++r) {
        if (r >= nr) break;
        for (int o = nl; o < 32; o *= 2) {
            const float m_o = simd_shuffle_xor(m[r], ushort(o)), l_o = simd_shuffle_xor(l[r], ushort(o));
            const float4 a_o = simd_shuffle_xor(acc_a[r], ushort(o)), b_o = simd_shuffle_xor(acc_b[r], ushort(o));
            const float M = max(m[r], m_o);
            const float c = exp(m[r] - M), c_o = exp(m_o - M);
            l[r] = l[r] * c + l_o * c_o;
            acc_a[r] = acc_a[r] * c + a_o * c_o;
            acc_b[r] = acc_b[r] * c + b_o * c_o;
            m[r] = M;
        }
    }

    if (ROPE) {
        // One threadgroup per kv head, its last block and split, writes the new rows to the cache,
        // after its loop: a kernel that read them from the cache would see the old contents (the
        // tests put NaN there), whichever threadgroup the simulator runs first.
        if (int(tgpig.x) % blocks == blocks - 1 && tgpig.y == ntgs.y - 1) {
            device KV* k_rows = k_cache + head + uint64_t(args.pos0) * uint64_t(hd);
            device KV* v_rows = v_cache + head + uint64_t(args.pos0) * uint64_t(hd);
            for (int idx = int(sg) * 32 + int(lane); idx < args.n_tokens * hd; idx += 32 * int(nsg)) {
                k_rows[idx] = k_new[idx];
                v_rows[idx] = v_new[idx];
            }
        }
        // The merge below reuses the new rows' threadgroup memory, which other simdgroups may
        // still be reading.
        threadgroup_barrier(mem_flags::mem_threadgroup);
    }

    // Merge the simdgroups: 1 .. nsg - 1 hand their state to simdgroup 0 (lanes of position 0
    // write it: all positions-in-step hold it now). Layout: per (simdgroup, row) slot 8 * nl
    // floats of accumulators, by lane: acc_a of lane j at 4j, acc_b at 4 nl + 4j (one vector
    // access of a simdgroup covers consecutive words: no bank conflicts; the reader is the same
    // lane of simdgroup 0), then the maxima and the sums, [nsg - 1][ATTN_ROWS] each.
    const int slot_len = 8 * nl;
    const int jl = 4 * (int(lane) % nl);
    threadgroup float* s_m = shared + (int(nsg) - 1) * ATTN_ROWS * slot_len;
    threadgroup float* s_l = s_m + (int(nsg) - 1) * ATTN_ROWS;
    if (sg > 0 && pg == 0) {
        for (int r = 0; r < ATTN_ROWS; ++r) {
            if (r >= nr) break;
            const int slot = (int(sg) - 1) * ATTN_ROWS + r;
            if (d0 == 0) {
                s_m[slot] = m[r];
                s_l[slot] = l[r];
            }
            *(threadgroup float4*)(shared + slot * slot_len + jl) = acc_a[r];
            *(threadgroup float4*)(shared + slot * slot_len + 4 * nl + jl) = acc_b[r];
        }
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    if (sg > 0) return;

    // Simdgroup 0: positions-in-step pg writes rows pg, pg + ps, ... (a fixed order per row).
    const int stride = 2 + hd;
    for (int r = 0; r < ATTN_ROWS; ++r) {
        if (r >= nr || r % ps != pg) continue;
        float M = m[r];
        for (int s = 1; s < int(nsg); ++s) M = max(M, s_m[(s - 1) * ATTN_ROWS + r]);
        const float c = exp(m[r] - M);
        float L = l[r] * c;
        float4 a = acc_a[r] * c, b = acc_b[r] * c;
        for (int s = 1; s < int(nsg); ++s) {
            const int slot = (s - 1) * ATTN_ROWS + r;
            const float cs = exp(s_m[slot] - M);
            L += s_l[slot] * cs;
            a += *(threadgroup const float4*)(shared + slot * slot_len + jl) * cs;
            b += *(threadgroup const float4*)(shared + slot * slot_len + 4 * nl + jl) * cs;
        }
        if (SPLIT) {
            device float* part = out + (out_row[r] * uint64_t(ntgs.y) + uint64_t(tgpig.y)) * uint64_t(stride);
            if (d0 == 0) {
                part[0] = M;
                part[1] = L;
            }
            // part + 2 is not 16-byte aligned: element stores
            for (int i = 0; i < 4; ++i) {
                if (d0 + i < hd) part[2 + d0 + i] = a[i];
                if (d0 + 4 + i < hd) part[2 + d0 + 4 + i] = b[i];
            }
        } else {
            device float* o = out + out_row[r] * uint64_t(hd);
            attn_store4(o, d0, hd, a / L);
            attn_store4(o, d0 + 4, hd, b / L);
        }
    }
}

template <typename KV, bool SPLIT>
kernel void attention(constant AttentionArgs& args [[buffer(0)]],
                      device const float* q [[buffer(1)]],
                      device KV* k_cache [[buffer(2)]],
                      device KV* v_cache [[buffer(3)]],
                      device float* out [[buffer(4)]],
                      threadgroup float* shared [[threadgroup(0)]],
                      uint2 tgpig [[threadgroup_position_in_grid]],
                      uint2 ntgs [[threadgroups_per_grid]],
                      uint lane [[thread_index_in_simdgroup]],
                      uint sg [[simdgroup_index_in_threadgroup]],
                      uint nsg [[simdgroups_per_threadgroup]]) {
    attention_impl<KV, SPLIT, false>(args, q, k_cache, v_cache, out, shared, nullptr, nullptr, nullptr, nullptr,
                                     nullptr, nullptr, tgpig, ntgs, lane, sg, nsg);
}

// Fused: q and k as projected (not yet rotated), v, and rope_store_kv's arguments and tables.
template <typename KV, bool SPLIT>
kernel void attention_rope(constant AttentionArgs& args [[buffer(0)]],
                           device const float* q [[buffer(1)]],
                           device KV* k_cache [[buffer(2)]],
                           device KV* v_cache [[buffer(3)]],
                           device float* out [[buffer(4)]],
                           constant RopeKvArgs& rope [[buffer(5)]],
                           device const float* k [[buffer(6)]],
                           device const float* v [[buffer(7)]],
                           device const float* inv_freq [[buffer(8)]],
                           device const float* q_norm [[buffer(9)]],
                           device const float* k_norm [[buffer(10)]],
                           threadgroup float* shared [[threadgroup(0)]],
                           uint2 tgpig [[threadgroup_position_in_grid]],
                           uint2 ntgs [[threadgroups_per_grid]],
                           uint lane [[thread_index_in_simdgroup]],
                           uint sg [[simdgroup_index_in_threadgroup]],
                           uint nsg [[simdgroups_per_threadgroup]]) {
    attention_impl<KV, SPLIT, true>(args, q, k_cache, v_cache, out, shared, &rope, k, v, inv_freq, q_norm, k_norm,
                                    tgpig, ntgs, lane, sg, nsg);
}

// ---- attention_tile: prompt chunks (n_tokens >= 2) with simdgroup matrices ----
//
// A threadgroup takes 8 * nsg consecutive query rows of one kv head (the same numbering as
// above), simdgroup s the 8 rows from 8 s, and streams the cache through threadgroup memory in
// tiles of 8 positions (starting at multiples of 8): the threads load a tile of K and of V once
// (contiguous rows: coalesced), then each simdgroup computes S = Q K^T (8 rows x 8 positions,
// head_dim / 8 multiply-accumulates of 8x8 matrices), the online softmax on S (a lane takes
// two entries of one row: row = lane / 4), and O = diag(c) O + P V. Q and O stay in registers
// as head_dim / 8 matrices each; the head size is function constant 0 (ATTN_TILE_HD8 =
// head_dim / 8, head_dim a multiple of 8), so those loops unroll.
//
// Independence of rows holds as in attention: an element of S, diag(c) O or P V depends only
// on its own row of Q, P and diag(c); a position outside a row's window gets weight exactly 0
// and leaves its max unchanged (c = 1: diag(c) O = O exactly); positions outside every row's
// window are loaded as zeros (never read from the cache).
//
// Threadgroup memory ([[threadgroup(0)]], host-sized): K tile [8][ts], V tile [8][ts] with the
// row stride ts = attn_tile_stride(head_dim) (head_dim padded to 8 mod 32: the 8 rows of an 8x8
// block then fall in distinct banks, 2 cycles for its 64 words; before and after the loop the
// tiles stage Q and O), then per simdgroup an 8x8 scratch (S, then P) and an 8x8 diagonal:
// 16 * ts + 128 * nsg floats.
inline int attn_tile_stride(int hd) { return hd + ((8 - hd % 32) + 32) % 32; }

constant int ATTN_TILE_HD8 [[function_constant(0)]];

template <typename KV>
kernel void attention_tile(constant AttentionArgs& args [[buffer(0)]],
                           device const float* q [[buffer(1)]],
                           device const KV* k_cache [[buffer(2)]],
                           device const KV* v_cache [[buffer(3)]],
                           device float* out [[buffer(4)]],
                           threadgroup float* shared [[threadgroup(0)]],
                           uint2 tgpig [[threadgroup_position_in_grid]],
                           uint tid [[thread_index_in_threadgroup]],
                           uint lane [[thread_index_in_simdgroup]],
                           uint sg [[simdgroup_index_in_threadgroup]],
                           uint nsg [[simdgroups_per_threadgroup]]) {
    const int hd8 = max(int(ATTN_TILE_HD8), 1);  // (max: a constant 0 would divide by zero below)
    const int hd = 8 * hd8;
    const int group = args.n_heads / args.n_kv_heads;
    const int rows_per_kv = args.n_tokens * group;
    const int tile_rows = 8 * int(nsg);
    const int blocks = (rows_per_kv + tile_rows - 1) / tile_rows;
    const int kvh = int(tgpig.x) / blocks;
    const int r_first = (int(tgpig.x) % blocks) * tile_rows;
    const int r_last = min(r_first + tile_rows, rows_per_kv) - 1;
    // The union of the rows' windows: rows are ordered by token, windows by position.
    const int u_lo = attn_window(args, r_first / group).x, u_hi = attn_window(args, r_last / group).y;

    const int ts = attn_tile_stride(hd);
    threadgroup float* kt = shared;
    threadgroup float* vt = shared + 8 * ts;
    threadgroup float* ss = shared + 16 * ts + int(sg) * 128;
    threadgroup float* ds = ss + 64;

    // This lane's row of the simdgroup's 8 (i) and its two columns (jc, jc + 1).
    const int i = int(lane) / 4, jc = 2 * (int(lane) % 4);
    const int row = r_first + 8 * int(sg) + i;
    const bool has_row = row < rows_per_kv;
    int lo = 1, hi = 0;  // empty for rows past the last
    if (has_row) {
        const int2 win = attn_window(args, row / group);
        lo = win.x;
        hi = win.y;
    }

    // Q (scaled) as hd8 matrices of 8 rows x 8 dimensions, O = 0, D = 0. Q is staged through
    // the tile area (8 rows x ts per simdgroup, two simdgroups at a time), copied as whole rows
    // (a simdgroup's rows are mostly consecutive heads of a token, contiguous in q).
    simdgroup_float8x8 qm[MAX_HEAD_DIM / 8], om[MAX_HEAD_DIM / 8];
    ds[2 * lane] = 0.0f;
    ds[2 * lane + 1] = 0.0f;
    const int r_sg = r_first + 8 * int(sg);  // the simdgroup's first row
    threadgroup float* stage = shared + (int(sg) % 2) * 8 * ts;
    for (int round = 0; round < (int(nsg) + 1) / 2; ++round) {
        if (int(sg) / 2 == round) {
            for (int f = int(lane); f < 2 * hd; f += 32) {  // 8 rows x hd / 4 float4s
                const int rr = f / (hd / 4), d = 4 * (f % (hd / 4)), rw = r_sg + rr;
                float4 x = float4(0.0f);
                if (rw < rows_per_kv)
                    x = *(device const float4*)(q + attn_row(args, kvh, rw) * uint64_t(hd) + uint64_t(d)) * args.scale;
                *(threadgroup float4*)(stage + rr * ts + d) = x;
            }
            simdgroup_barrier(mem_flags::mem_threadgroup);
            for (int c = 0; c < hd8; ++c) {
                simdgroup_load(qm[c], stage + 8 * c, ulong(ts));
                om[c] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
            }
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
    }

    const uint64_t head = uint64_t(kvh) * uint64_t(args.n_ctx) * uint64_t(hd);
    device const KV* k_head = k_cache + head;
    device const KV* v_head = v_cache + head;
    float m = ATTN_NEG_BIG, l = 0.0f;  // of row i (the 4 lanes of a row hold the same)
    for (int p_tile = (u_lo / 8) * 8; p_tile <= u_hi; p_tile += 8) {
        // The tiles: 2 * 8 * hd elements as float4s, consecutive threads on consecutive ones.
        threadgroup_barrier(mem_flags::mem_threadgroup);  // the previous tile is consumed
        for (int x = int(tid); x < 4 * hd; x += 32 * int(nsg)) {
            const bool is_v = x >= 2 * hd;
            const int e = 4 * (is_v ? x - 2 * hd : x);  // element in the tile
            const int p = p_tile + e / hd;
            float4 val = float4(0.0f);
            if (p >= u_lo && p <= u_hi)
                val = float4(*(device const vec<KV, 4>*)((is_v ? v_head : k_head) + uint64_t(p) * uint64_t(hd) +
                                                          uint64_t(e % hd)));
            *(threadgroup float4*)((is_v ? vt : kt) + (e / hd) * ts + e % hd) = val;
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);

        // S = Q K^T: K^T's 8x8 blocks are the tile's rows read transposed.
        simdgroup_float8x8 sm = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
        for (int c = 0; c < hd8; ++c) {
            simdgroup_float8x8 km;
            simdgroup_load(km, kt + 8 * c, ulong(ts), ulong2(0, 0), true);
            simdgroup_multiply_accumulate(sm, qm[c], km, sm);
        }
        simdgroup_store(sm, ss, 8);
        simdgroup_barrier(mem_flags::mem_threadgroup);

        // Online softmax of row i over positions p_tile + jc, + 1.
        const int p0 = p_tile + jc;
        const bool v0 = p0 >= lo && p0 <= hi, v1 = p0 + 1 >= lo && p0 + 1 <= hi;
        const float2 s = *(threadgroup const float2*)(ss + 8 * i + jc);
        const float s0 = v0 ? s.x : ATTN_NEG_BIG, s1 = v1 ? s.y : ATTN_NEG_BIG;
        float mx = max(s0, s1);
        mx = max(mx, simd_shuffle_xor(mx, ushort(1)));
        mx = max(mx, simd_shuffle_xor(mx, ushort(2)));
        const float m_new = max(m, mx);
        const float c = exp(m - m_new);
        const float e0 = v0 ? exp(s0 - m_new) : 0.0f, e1 = v1 ? exp(s1 - m_new) : 0.0f;
        float rs = e0 + e1;
        rs += simd_shuffle_xor(rs, ushort(1));
        rs += simd_shuffle_xor(rs, ushort(2));
        l = l * c + rs;
        m = m_new;
        *(threadgroup float2*)(ss + 8 * i + jc) = float2(e0, e1);
        if (jc == 0) ds[9 * i] = c;
        simdgroup_barrier(mem_flags::mem_threadgroup);

        // O = diag(c) O + P V.
        simdgroup_float8x8 pm, dm;
        const simdgroup_float8x8 zm = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
        simdgroup_load(pm, ss, 8);
        simdgroup_load(dm, ds, 8);
        for (int cc = 0; cc < hd8; ++cc) {
            simdgroup_float8x8 vm;
            simdgroup_load(vm, vt + 8 * cc, ulong(ts));
            simdgroup_multiply_accumulate(om[cc], dm, om[cc], zm);
            simdgroup_multiply_accumulate(om[cc], pm, vm, om[cc]);
        }
        simdgroup_barrier(mem_flags::mem_threadgroup);  // ss and ds are rewritten next tile
    }

    // out = O / l, staged through the tile area like Q (1 / l of row i in ds[i]) and written as
    // whole rows.
    if (jc == 0) ds[i] = has_row ? 1.0f / l : 0.0f;
    for (int round = 0; round < (int(nsg) + 1) / 2; ++round) {
        threadgroup_barrier(mem_flags::mem_threadgroup);  // the tiles are consumed / copied out
        if (int(sg) / 2 == round) {
            for (int c = 0; c < hd8; ++c) simdgroup_store(om[c], stage + 8 * c, ulong(ts));
            simdgroup_barrier(mem_flags::mem_threadgroup);
            for (int f = int(lane); f < 2 * hd; f += 32) {
                const int rr = f / (hd / 4), d = 4 * (f % (hd / 4)), rw = r_sg + rr;
                if (rw < rows_per_kv)
                    *(device float4*)(out + attn_row(args, kvh, rw) * uint64_t(hd) + uint64_t(d)) =
                        *(threadgroup const float4*)(stage + rr * ts + d) * ds[rr];
            }
        }
    }
}

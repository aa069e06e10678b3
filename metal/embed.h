// Embedding lookup: x[t][i] = table[ids[t]][i] * scale, dequantizing row ids[t] of the table.
// One threadgroup per token; its threads stride over the row.
#pragma once

#include <metal_stdlib>
#include "args.h"
#include "formats.h"

using namespace metal;

template <typename F>
kernel void embed(constant EmbedArgs& args [[buffer(0)]],
                  device const uchar* table [[buffer(1)]],
                  device const int32_t* ids [[buffer(2)]],
                  device float* x [[buffer(3)]],
                  uint t [[threadgroup_position_in_grid]],
                  uint tid [[thread_position_in_threadgroup]],
                  uint ntg [[threads_per_threadgroup]]) {
    const typename layout<F>::Row row = layout<F>::row(table, args.row_bytes, args.rows, ids[t]);
    device float* out = x + uint64_t(t) * uint64_t(args.cols);
    for (int i = int(tid); i < args.cols; i += int(ntg)) out[i] = layout<F>::get(row, i) * args.scale;
}

// The per-format kernel table. Each GGML weight format supplies one FormatKernels in its own
// file under cpp/cpu/formats/, made by format_kernels() below from the type's entry in the GGML
// type table (engine/ggml_types.h); adding a format means adding one file, listing it in
// METALLIC_FORMAT_SOURCES (CMakeLists.txt) and declaring it in table.cpp's kAll.
//
// A format declares which activation encoding its one-token kernel consumes (ActKind): float
// formats read the float activations directly; block-quantized formats read activations
// quantized once per matmul (shared by every weight that reads the same input) so their inner
// loop is an integer dot product, as llama.cpp does on CPUs. Q8_0 takes int16 activations: on AVX2 that costs the
// same instructions as int8 (sign-extend instead of the sign trick) and removes the activation
// rounding error, which otherwise adds ~3e-5 NMSE per matmul.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>

#include "engine/ggml_types.h"

namespace metallic::cpu {

enum class ActKind : uint8_t { F32, Q8, I16, Q8K };
constexpr int kActKinds = 4;

// An activation row of k values quantized to int8 in blocks of 32 (x ~= d * q), stored as three
// arrays rather than as an array of blocks so a kernel loads the scales of 8 blocks with one
// vector load: k codes, then k / 32 scales d, then k / 32 block sums d * sum(q), which formats
// with a per-block offset (Q4_0, Q4_1, ...) need.
template <class Byte>
struct Q8RowOf {
    using I8 = std::conditional_t<std::is_const_v<Byte>, const int8_t, int8_t>;
    using F = std::conditional_t<std::is_const_v<Byte>, const float, float>;
    I8* q;
    F* d;
    F* sum;

    Q8RowOf(Byte* row, int64_t k)
        : q(reinterpret_cast<I8*>(row)),
          d(reinterpret_cast<F*>(row + k)),
          sum(reinterpret_cast<F*>(row + k + k / 32 * 4)) {}
};
using Q8Row = Q8RowOf<const uint8_t>;
constexpr size_t kQ8BlockBytes = 32 + 2 * sizeof(float);  // codes, scale and sum of one block

// An activation row of k values quantized to int16 in blocks of 32 (x ~= d * q): k codes, then
// k / 32 scales, apart for the same reason as Q8RowOf's.
template <class Byte>
struct I16RowOf {
    using I16 = std::conditional_t<std::is_const_v<Byte>, const int16_t, int16_t>;
    using F = std::conditional_t<std::is_const_v<Byte>, const float, float>;
    I16* q;
    F* d;

    I16RowOf(Byte* row, int64_t k) : q(reinterpret_cast<I16*>(row)), d(reinterpret_cast<F*>(row + 2 * k)) {}
};
using I16Row = I16RowOf<const uint8_t>;
constexpr size_t kI16BlockBytes = 32 * sizeof(int16_t) + sizeof(float);

// One 256-element block of an activation row quantized to int8, for the K-quants: one scale
// per super-block lets their kernels apply the weights' small integer sub-block scales in
// integer arithmetic and convert to float once per 256 elements. bsums[i] = sum(q[16i..16i+15])
// turns the weights' per-sub-block offsets (mins, the -32 of Q6_K, ...) into one small dot
// product per super-block.
struct BlockQ8K {
    float d;
    int8_t q[256];
    int16_t bsums[16];
};
static_assert(sizeof(BlockQ8K) == 292, "BlockQ8K layout");

// What happens to each computed dot product before it is stored.
struct Epilogue {
    const float* bias = nullptr;  // per output row, may be null
    bool accumulate = false;      // out += result (the residual add folded into the matmul)
};

// Decodes n elements (a multiple of the block) starting at a block boundary.
using DequantRowFn = void (*)(const uint8_t* src, float* dst, int64_t n);

// The activation rows of the decode tokens of one step, each in the format's ActKind, and where
// each token's outputs go: token t reads act + t * act_stride and writes out + t * out_stride.
struct DecodeTokens {
    const uint8_t* act;
    size_t act_stride;
    float* out;
    int64_t out_stride;
    int n;

    const void* act_row(int t) const { return act + size_t(t) * act_stride; }
    float* out_row(int t) const { return out + int64_t(t) * out_stride; }
};

// Decode: for every token t of x and r < nrows, x.out_row(t)[r] = epilogue(dot(w row r, token
// t)). Rows of w are `row_bytes` apart. The kernels decode each weight block once for all the
// tokens, and a token's arithmetic is the same whatever the other tokens are (how many, which):
// a sequence's decode result does not depend on what it was batched with. Batches of prompt
// tokens run through cpu/panel_gemm.h instead, on dequant_row's floats.
using GemvFn = void (*)(const uint8_t* w, size_t row_bytes, int64_t nrows, int64_t k, const DecodeTokens& x,
                        const Epilogue& ep);

struct FormatKernels {
    uint32_t type;
    const char* name;     // type, name, block and block_bytes: from the GGML type table
    int64_t block;
    int64_t block_bytes;
    ActKind act;
    DequantRowFn dequant_row;
    GemvFn gemv;
};

// A format's kernels, its id, name and block geometry taken from the GGML type table, so that
// a format file cannot restate them differently.
constexpr FormatKernels format_kernels(GgmlType type, ActKind act, DequantRowFn dequant_row, GemvFn gemv) {
    const GgmlTypeInfo& t = ggml_type(type);
    return {uint32_t(type), t.name, t.block, t.block_bytes, act, dequant_row, gemv};
}

// The kernels for a GGML type id on this CPU (best instruction set it supports), or null.
const FormatKernels* find_format(uint32_t type);
// "F32, F16, ..." for error messages.
std::string supported_format_names();
// The instruction set the kernels were chosen for ("avx2", "neon", "generic").
const char* kernel_isa();

// Encodes one activation row of n floats in `kind` (n a multiple of its block).
void quantize_row(ActKind kind, const float* x, void* out, int64_t n);

// The batch product of cpu/panel_gemm.h with this CPU's kernel build, for the kernel tests:
// out[t * nrows + r] = dot(W row r, a row t) for n tokens of k floats.
void batch_gemm(const FormatKernels& f, const uint8_t* w, size_t row_bytes, int64_t nrows,
                const float* a, int64_t n, int64_t k, float* out);

// Bytes one activation row of k values takes in the given kind.
inline size_t act_row_bytes(ActKind kind, int64_t k) {
    switch (kind) {
        case ActKind::F32: return static_cast<size_t>(k) * sizeof(float);
        case ActKind::Q8: return static_cast<size_t>(k / 32) * kQ8BlockBytes;
        case ActKind::I16: return static_cast<size_t>(k / 32) * kI16BlockBytes;
        case ActKind::Q8K: return static_cast<size_t>(k / 256) * sizeof(BlockQ8K);
    }
    return 0;
}

}  // namespace metallic::cpu

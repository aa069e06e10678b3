// Weight layouts of the Metal backend where they differ from the file's (metal/formats.h,
// layout<F>, is the kernels' side). Every quantized format (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 and
// Q2_K to Q6_K) is stored planar: GGUF's blocks are only 2-byte aligned (Q3_K's 110 bytes, Q6_K's
// 210, the 32-element ones' 18 to 34) or interleave scales with quants, so the decode matvecs
// read them in pieces that split cache lines; the planar copy (the whole matrix's quants, then
// its high bits, scales and factors, each a plane) gives each lane aligned 4-byte loads and each
// simdgroup contiguous bytes. The copy has the file's size and replaces the file's bytes on the
// GPU (the CPU backend reads the file as is). The float formats stay in the file.
#pragma once

#include <cstdint>

#include "engine/weights.h"

namespace metallic::metal {

// Whether matrices of this GGML type are repacked for the GPU.
bool repacked_for_gpu(uint32_t type);

// m's data in the GPU layout into dst (m.nbytes bytes): for each field of a block, in the order
// quants, high bits, scale, min, the field of every block in row order (a plane).
void repack_for_gpu(const Matrix& m, uint8_t* dst);

// The float formats stay in the file's layout, wherever the file put them (32-byte alignment is
// GGUF's default), and their matvecs start each row's blocks at its first 128-byte line: the
// head is the elements before it, when every row has the same alignment (rows a multiple of
// 128 bytes) and the head keeps x's float4 alignment (a multiple of 8 elements); else 0.
// offset: the matrix's first byte from its page-aligned buffer start.
int32_t matvec_head(const Matrix& m, size_t offset);

}  // namespace metallic::metal

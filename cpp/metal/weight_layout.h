// Weight layouts of the Metal backend where they differ from the file's (metal/formats.h,
// layout<F>, is the kernels' side). Every quantized format (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 and
// Q2_K to Q6_K) is stored planar: GGUF's blocks are only 2-byte aligned (Q3_K's 110 bytes, Q6_K's
// 210, the 32-element ones' 18 to 34) or interleave scales with quants, so the decode matvecs
// read them in pieces that split cache lines; the planar copy (the whole matrix's quants, then
// its high bits, scales and factors, each a plane) gives each lane aligned 4-byte loads and each
// simdgroup contiguous bytes. The 32-element formats' quants plane also groups rows so that no
// matvec step splits a line when rows are not whole steps (quant_plane_offset in the .cpp).
// The copy has the file's size and replaces the file's bytes on the GPU (the CPU backend reads
// the file as is). The float formats stay in the file when they start on a 128-byte line.
#pragma once

#include <cstddef>
#include <cstdint>

#include "engine/weights.h"

namespace metallic::metal {

// Whether matrices of this GGML type are stored planar for the GPU.
bool repacked_for_gpu(uint32_t type);

// The byte alignment the kernels' steps assume of a matrix: Apple GPUs' 128-byte cache line.
constexpr size_t kGpuLine = 128;

// Whether the GPU reads m from a copy of its own rather than from the file: the planar formats,
// and a float matrix that does not start on a 128-byte line. GGUF aligns tensors to 32 bytes
// (general.alignment may say less), and a matvec step reads whole lines of a row only if the
// row starts on one: a misaligned float matrix is copied to a fresh (page-aligned) buffer as it
// is, so its steps keep whole lines (rows a multiple of 128 bytes; any others are read in
// pieces wherever they are).
bool copied_for_gpu(const Matrix& m);

// m's data as the GPU reads it into dst (m.nbytes bytes): the planar formats, for each field of
// a block, in the order quants, high bits, scale, min, the field of every block in row order (a
// plane); a float matrix as it is.
void copy_for_gpu(const Matrix& m, uint8_t* dst);

}  // namespace metallic::metal

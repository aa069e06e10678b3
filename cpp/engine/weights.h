// The model's weights as views into the mapped file (matrices) plus small float copies of the
// 1-D tensors (norms, biases), which are a few KB per layer and converted once at load.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "engine/config.h"
#include "engine/mapped_file.h"

namespace metallic {

// A tensor record handed over by the GGUF reader in Python; its type and bounds are checked
// again here because the core trusts nothing it is given.
struct TensorDesc {
    std::string name;
    uint32_t type = 0;
    std::vector<int64_t> shape;  // GGML order: shape[0] is the contiguous dimension
    uint64_t offset = 0;         // absolute byte offset in the file
};

struct Matrix {
    std::string name;
    uint32_t type = 0;
    int64_t cols = 0;  // inner (contiguous) dimension
    int64_t rows = 0;
    const uint8_t* data = nullptr;
    size_t row_bytes = 0;
    size_t nbytes = 0;
};

struct LayerWeights {
    Matrix wq, wk, wv, wo, w_gate, w_up, w_down;
    std::vector<float> attn_norm, ffn_norm;
    std::vector<float> q_bias, k_bias, v_bias;                  // qkv_bias
    std::vector<float> q_norm, k_norm;                          // qk_norm
    std::vector<float> post_attn_norm, post_ffn_norm;           // post_norms
};

struct Weights {
    Matrix token_embd;
    Matrix output;  // the embedding matrix again when the output is tied
    std::vector<float> output_norm;
    std::vector<float> rope_freq_factors;  // optional per-dimension divisors (llama 3 scaling)
    std::vector<LayerWeights> layers;
    size_t matrix_bytes = 0;  // weight bytes read per decoded token
};

// Builds the weight table, checking every tensor's type, bounds and shape against the config:
// the one list of the tensors the forward pass reads, and the one check of them. Throws BadFile
// or Unsupported naming the file, the tensor and the metadata keys its shape comes from.
Weights bind_weights(const MappedFile& file, const ModelConfig& cfg,
                     const std::vector<TensorDesc>& tensors);

}  // namespace metallic

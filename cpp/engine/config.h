// The model hyper-parameters and architecture flags, filled in by Python from GGUF metadata.
// Architectures differ only through these flags; the forward pass reads them, nothing else.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace metallic {

enum class RopeStyle : int {
    Interleaved = 0,  // rotate pairs (2i, 2i+1): llama.cpp's "normal" style, used for llama
    Neox = 1,         // rotate pairs (i, i + dims/2): qwen2, qwen3, gemma3
};

enum class Activation : int {
    SiLU = 0,      // SwiGLU feed-forward
    GeluTanh = 1,  // GeGLU with the tanh approximation (gemma)
};

struct ModelConfig {
    std::string arch;
    int n_layer = 0;
    int n_embd = 0;
    int n_head = 0;
    int n_head_kv = 0;
    int head_dim = 0;
    int n_ff = 0;
    int n_vocab = 0;
    int n_ctx_train = 0;

    float rms_eps = 1e-5f;
    float rope_base = 10000.0f;        // global layers
    float rope_base_local = 10000.0f;  // sliding-window layers (gemma3)
    float rope_freq_scale = 1.0f;        // linear scaling of global layers: position * scale
    float rope_freq_scale_local = 1.0f;  // the same for sliding-window layers
    int rope_dims = 0;                 // rotated dimensions per head (<= head_dim)
    RopeStyle rope_style = RopeStyle::Neox;

    bool qkv_bias = false;    // qwen2
    bool qk_norm = false;     // qwen3, gemma3: RMSNorm over each head of q and k
    bool post_norms = false;  // gemma3: norms after attention and feed-forward outputs
    Activation activation = Activation::SiLU;
    float embed_scale = 1.0f;          // gemma: sqrt(n_embd)
    float attn_scale = 0.0f;           // 0 means 1/sqrt(head_dim)
    float final_logit_softcap = 0.0f;  // 0 means off
    // Per layer: 0 for full attention, else the sliding window length (gemma3 local layers).
    std::vector<int> sliding_window;
};

}  // namespace metallic

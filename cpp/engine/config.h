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

// The fields, one line each: X(type, name, default) and what the field means. This list is the
// one statement of the model description: ModelConfig declares its members from it,
// cpp/bindings.cpp binds each to Python from it (and lists them as _core.ModelConfig.fields),
// and python/metallic/config.py fills them by that list and refuses to import if its dataclass
// and the list disagree.
#define METALLIC_MODEL_CONFIG_FIELDS(X)                                                                             \
    X(std::string, arch, {})                     /* general.architecture: "qwen2", "llama", "qwen3", "gemma3" */    \
    X(int, n_layer, 0)                           /* transformer blocks */                                           \
    X(int, n_embd, 0)                            /* width of the residual stream */                                 \
    X(int, n_head, 0)                            /* query heads */                                                  \
    X(int, n_head_kv, 0)                         /* key/value heads (n_head is a multiple: grouped queries) */      \
    X(int, head_dim, 0)                          /* dimensions per head */                                          \
    X(int, n_ff, 0)                              /* width of the feed-forward's hidden layer */                     \
    X(int, n_vocab, 0)                           /* vocabulary size: rows of the embedding matrix */                \
    X(int, n_ctx_train, 0)                       /* context length the model was trained for */                     \
    X(float, rms_eps, 1e-5f)                     /* RMSNorm epsilon */                                              \
    X(float, rope_base, 10000.0f)                /* RoPE base of global layers */                                   \
    X(float, rope_base_local, 10000.0f)          /* RoPE base of sliding-window layers (gemma3) */                  \
    X(float, rope_freq_scale, 1.0f)              /* linear RoPE scaling of global layers: position * scale */       \
    X(float, rope_freq_scale_local, 1.0f)        /* the same for sliding-window layers */                           \
    X(int, rope_dims, 0)                         /* rotated dimensions per head (<= head_dim) */                    \
    X(RopeStyle, rope_style, RopeStyle::Neox)    /* which dimensions RoPE pairs */                                  \
    X(bool, qkv_bias, false)                     /* biases on q, k and v (qwen2) */                                 \
    X(bool, qk_norm, false)                      /* RMSNorm over each head of q and k (qwen3, gemma3) */            \
    X(bool, post_norms, false)                   /* norms after the attention and feed-forward outputs (gemma3) */  \
    X(Activation, activation, Activation::SiLU)  /* the feed-forward's gate activation */                           \
    X(float, embed_scale, 1.0f)                  /* embeddings times this (gemma: sqrt(n_embd)) */                  \
    X(float, attn_scale, 0.0f)                   /* attention score scale; 0 means 1/sqrt(head_dim) */              \
    X(float, final_logit_softcap, 0.0f)          /* logits = cap * tanh(logits / cap); 0 means off */               \
    /* Per layer: 0 for full attention, else the sliding window length (gemma3 local layers). */                    \
    X(std::vector<int>, sliding_window, {})

struct ModelConfig {
#define METALLIC_CONFIG_MEMBER(type, name, default_value) type name = default_value;
    METALLIC_MODEL_CONFIG_FIELDS(METALLIC_CONFIG_MEMBER)
#undef METALLIC_CONFIG_MEMBER
};

}  // namespace metallic

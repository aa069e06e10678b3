// Observation points of the forward pass: what `python -m metallic trace` shows and `--compare`
// checks against transformers, op by op.
//
// With an observer set (Engine::set_observer), prefill and decode run the forward pass unfused,
// one op at a time, and wait for each (Backend::sync) so that its output is readable on the
// host; the observer then sees every op's output rows, the weight it read and how long it took.
// That is slower than the fused pass and meant to be: a traced pass is for looking. Without an
// observer the pass is the fused one, untouched (forward.cpp tests one pointer per step).
//
// The ops, in order, with the transformers module each corresponds to (Llama-style names):
//   embed            model.embed_tokens                       (layer -1)
//   attn_norm        layers[l].input_layernorm
//   q, k, v          self_attn.q_proj, k_proj, v_proj         (bias included)
//   q_norm, k_norm   self_attn.q_norm, k_norm                 (qk_norm models)
//   rope_q, rope_k   q and k after RoPE: the query and key the attention function receives
//   attention        self_attn.o_proj's input
//   attn_output      self_attn.o_proj
//   post_attn_norm   post_attention_layernorm                 (post_norms models: Gemma)
//   residual_attn    the residual stream after attention: the feed-forward norm's input
//   ffn_norm         post_attention_layernorm (Gemma: pre_feedforward_layernorm)
//   ffn_gate, ffn_up mlp.gate_proj, up_proj
//   glu              act(gate) * up: mlp.down_proj's input
//   ffn_down         mlp.down_proj
//   post_ffn_norm    post_feedforward_layernorm               (post_norms models)
//   residual_ffn     the decoder layer's output
//   output_norm      model.norm                               (layer -1; the rows that get logits)
//   logits           lm_head
//   logit_softcap    the final logits after the soft cap       (final_logit_softcap models)
// Models whose converter permuted the rows of Q and K (llama: interleaved RoPE) have q, k,
// q_norm, rope_q and rope_k in that order within each head (python/metallic/trace.py undoes it
// to compare).
#pragma once

#include <cstdint>
#include <string>

#include "engine/weights.h"

namespace metallic {

struct OpEvent {
    int layer = -1;                 // the transformer block, -1 outside them
    const char* op = "";            // one of the names above
    const char* routine = "";       // the Backend call that ran ("matmul", "rope_store_kv", ...)
    std::string kernels;            // the GPU kernels it dispatched, comma-separated ("" on the CPU)
    const float* data = nullptr;    // the output: rows x cols floats, valid during on_op only
    int rows = 0;
    int64_t cols = 0;
    int64_t in_cols = 0;            // width of the input rows (rows of them)
    const Matrix* weight = nullptr; // the matrix it read (name, GGML type, bytes), if any
    int pos = 0;                    // position of the first row
    double seconds = 0.0;           // wall time of the op until its results were ready
};

class Observer {
public:
    virtual ~Observer() = default;
    // Called on the engine's thread, inside prefill/decode, with the engine's lock held: a
    // call back into the engine from here is refused (BadRequest), as it would wait for
    // itself. An exception thrown here ends the pass; its tokens are then not added to the
    // cache.
    virtual void on_op(const OpEvent& e) = 0;
};

}  // namespace metallic

// The host's side of the shared top-k pick (top_k_pick.h): the candidates a CPU finds, then the
// same rule the GPU runs. The CPU backend's Backend::sample and Python's Sampler (through
// _core.pick_token) both call pick_on_host, so a seeded run picks the same tokens whether the
// host samples each token or the GPU samples a whole burst.
#pragma once

#include <cstdint>

#include "engine/top_k_pick.h"

namespace metallic {

// Throws BadRequest naming the first setting out of range (top_k in 1..PICK_TOP_K_MAX, top_p in
// (0, 1], min_p in [0, 1], inv_temp finite and >= 0).
void check_pick(const PickSettings& s);

// The token picked from n logits and the status of argmax.metal (0 ok; 1 a NaN, 2 the largest
// is +inf, 3 all are -inf, with *token = 0). Settings must pass check_pick.
int32_t pick_on_host(const float* x, int64_t n, const PickSettings& s, int32_t* token);

}  // namespace metallic

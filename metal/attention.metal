// Attention instantiations by KV-cache type; the kernel is in attention.h.
// Host: grid = (heads, tokens), threadgroup = 32 * nsg threads,
// [[threadgroup(0)]] = (2 + head_dim) * nsg floats.
#include "attention.h"

template [[host_name("attention_f16")]] [[kernel]] decltype(attention<half>) attention<half>;
template [[host_name("attention_f32")]] [[kernel]] decltype(attention<float>) attention<float>;

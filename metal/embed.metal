// Embedding lookup instantiations; the kernel is in embed.h. Host: grid = tokens.
#include "embed.h"

template [[host_name("embed_f32")]] [[kernel]] decltype(embed<fmt_f32>) embed<fmt_f32>;
template [[host_name("embed_f16")]] [[kernel]] decltype(embed<fmt_f16>) embed<fmt_f16>;
template [[host_name("embed_bf16")]] [[kernel]] decltype(embed<fmt_bf16>) embed<fmt_bf16>;
template [[host_name("embed_q8_0")]] [[kernel]] decltype(embed<fmt_q8_0>) embed<fmt_q8_0>;
template [[host_name("embed_q4_0")]] [[kernel]] decltype(embed<fmt_q4_0>) embed<fmt_q4_0>;
template [[host_name("embed_q4_1")]] [[kernel]] decltype(embed<fmt_q4_1>) embed<fmt_q4_1>;
template [[host_name("embed_q5_0")]] [[kernel]] decltype(embed<fmt_q5_0>) embed<fmt_q5_0>;
template [[host_name("embed_q5_1")]] [[kernel]] decltype(embed<fmt_q5_1>) embed<fmt_q5_1>;
template [[host_name("embed_q4_k")]] [[kernel]] decltype(embed<fmt_q4_k>) embed<fmt_q4_k>;
template [[host_name("embed_q5_k")]] [[kernel]] decltype(embed<fmt_q5_k>) embed<fmt_q5_k>;
template [[host_name("embed_q6_k")]] [[kernel]] decltype(embed<fmt_q6_k>) embed<fmt_q6_k>;
template [[host_name("embed_q2_k")]] [[kernel]] decltype(embed<fmt_q2_k>) embed<fmt_q2_k>;
template [[host_name("embed_q3_k")]] [[kernel]] decltype(embed<fmt_q3_k>) embed<fmt_q3_k>;

// Matrix-matrix (prefill) instantiations, one per weight format; the kernel is in gemm.h.
// Host: GEMM_THREADS threads per threadgroup, grid = (ceil(rows / GEMM_ROWS), ceil(tokens / GEMM_TOKENS))
// (args.h).
#include "gemm.h"

template [[host_name("gemm_f32")]] [[kernel]] decltype(gemm<fmt_f32>) gemm<fmt_f32>;
template [[host_name("gemm_f16")]] [[kernel]] decltype(gemm<fmt_f16>) gemm<fmt_f16>;
template [[host_name("gemm_bf16")]] [[kernel]] decltype(gemm<fmt_bf16>) gemm<fmt_bf16>;
template [[host_name("gemm_q8_0")]] [[kernel]] decltype(gemm<fmt_q8_0>) gemm<fmt_q8_0>;
template [[host_name("gemm_q4_0")]] [[kernel]] decltype(gemm<fmt_q4_0>) gemm<fmt_q4_0>;
template [[host_name("gemm_q4_1")]] [[kernel]] decltype(gemm<fmt_q4_1>) gemm<fmt_q4_1>;
template [[host_name("gemm_q5_0")]] [[kernel]] decltype(gemm<fmt_q5_0>) gemm<fmt_q5_0>;
template [[host_name("gemm_q5_1")]] [[kernel]] decltype(gemm<fmt_q5_1>) gemm<fmt_q5_1>;
template [[host_name("gemm_q4_k")]] [[kernel]] decltype(gemm<fmt_q4_k>) gemm<fmt_q4_k>;
template [[host_name("gemm_q5_k")]] [[kernel]] decltype(gemm<fmt_q5_k>) gemm<fmt_q5_k>;
template [[host_name("gemm_q6_k")]] [[kernel]] decltype(gemm<fmt_q6_k>) gemm<fmt_q6_k>;
template [[host_name("gemm_q2_k")]] [[kernel]] decltype(gemm<fmt_q2_k>) gemm<fmt_q2_k>;
template [[host_name("gemm_q3_k")]] [[kernel]] decltype(gemm<fmt_q3_k>) gemm<fmt_q3_k>;

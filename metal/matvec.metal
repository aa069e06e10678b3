// Matrix-vector instantiations, one per weight format; the kernel is in matvec.h.
// Host: threadgroup = 32 * MATVEC_SIMDGROUPS threads, grid = (ceil(rows / (MATVEC_SIMDGROUPS *
// MATVEC_NR)) (matvec_glu_*: MATVEC_GLU_NR), ceil(tokens / MATVEC_TOKENS)); matvec_jobs_* take
// grid.x = the total threadgroups of up to three jobs. All need the function constants 2
// (MATVEC_NORM) and 3 (MATVEC_EPS), matvec_glu_* also 1 (GELU or SiLU).
#include "matvec.h"

template [[host_name("matvec_f32")]] [[kernel]] decltype(matvec<fmt_f32, MATVEC_NR>) matvec<fmt_f32, MATVEC_NR>;
template [[host_name("matvec_f16")]] [[kernel]] decltype(matvec<fmt_f16, MATVEC_NR>) matvec<fmt_f16, MATVEC_NR>;
template [[host_name("matvec_bf16")]] [[kernel]] decltype(matvec<fmt_bf16, MATVEC_NR>) matvec<fmt_bf16, MATVEC_NR>;
template [[host_name("matvec_q8_0")]] [[kernel]] decltype(matvec<fmt_q8_0, MATVEC_NR>) matvec<fmt_q8_0, MATVEC_NR>;
template [[host_name("matvec_q4_0")]] [[kernel]] decltype(matvec<fmt_q4_0, MATVEC_NR>) matvec<fmt_q4_0, MATVEC_NR>;
template [[host_name("matvec_q4_1")]] [[kernel]] decltype(matvec<fmt_q4_1, MATVEC_NR>) matvec<fmt_q4_1, MATVEC_NR>;
template [[host_name("matvec_q5_0")]] [[kernel]] decltype(matvec<fmt_q5_0, MATVEC_NR>) matvec<fmt_q5_0, MATVEC_NR>;
template [[host_name("matvec_q5_1")]] [[kernel]] decltype(matvec<fmt_q5_1, MATVEC_NR>) matvec<fmt_q5_1, MATVEC_NR>;
template [[host_name("matvec_q4_k")]] [[kernel]] decltype(matvec<fmt_q4_k, MATVEC_NR>) matvec<fmt_q4_k, MATVEC_NR>;
template [[host_name("matvec_q5_k")]] [[kernel]] decltype(matvec<fmt_q5_k, MATVEC_NR>) matvec<fmt_q5_k, MATVEC_NR>;
template [[host_name("matvec_q6_k")]] [[kernel]] decltype(matvec<fmt_q6_k, MATVEC_NR>) matvec<fmt_q6_k, MATVEC_NR>;
template [[host_name("matvec_glu_f32")]] [[kernel]] decltype(matvec_glu<fmt_f32, MATVEC_GLU_NR>) matvec_glu<fmt_f32, MATVEC_GLU_NR>;
template [[host_name("matvec_glu_f16")]] [[kernel]] decltype(matvec_glu<fmt_f16, MATVEC_GLU_NR>) matvec_glu<fmt_f16, MATVEC_GLU_NR>;
template [[host_name("matvec_glu_bf16")]] [[kernel]] decltype(matvec_glu<fmt_bf16, MATVEC_GLU_NR>) matvec_glu<fmt_bf16, MATVEC_GLU_NR>;
template [[host_name("matvec_glu_q8_0")]] [[kernel]] decltype(matvec_glu<fmt_q8_0, MATVEC_GLU_NR>) matvec_glu<fmt_q8_0, MATVEC_GLU_NR>;
template [[host_name("matvec_glu_q4_0")]] [[kernel]] decltype(matvec_glu<fmt_q4_0, MATVEC_GLU_NR>) matvec_glu<fmt_q4_0, MATVEC_GLU_NR>;
template [[host_name("matvec_glu_q4_1")]] [[kernel]] decltype(matvec_glu<fmt_q4_1, MATVEC_GLU_NR>) matvec_glu<fmt_q4_1, MATVEC_GLU_NR>;
template [[host_name("matvec_glu_q5_0")]] [[kernel]] decltype(matvec_glu<fmt_q5_0, MATVEC_GLU_NR>) matvec_glu<fmt_q5_0, MATVEC_GLU_NR>;
template [[host_name("matvec_glu_q5_1")]] [[kernel]] decltype(matvec_glu<fmt_q5_1, MATVEC_GLU_NR>) matvec_glu<fmt_q5_1, MATVEC_GLU_NR>;
template [[host_name("matvec_glu_q4_k")]] [[kernel]] decltype(matvec_glu<fmt_q4_k, MATVEC_GLU_NR>) matvec_glu<fmt_q4_k, MATVEC_GLU_NR>;
template [[host_name("matvec_glu_q5_k")]] [[kernel]] decltype(matvec_glu<fmt_q5_k, MATVEC_GLU_NR>) matvec_glu<fmt_q5_k, MATVEC_GLU_NR>;
template [[host_name("matvec_glu_q6_k")]] [[kernel]] decltype(matvec_glu<fmt_q6_k, MATVEC_GLU_NR>) matvec_glu<fmt_q6_k, MATVEC_GLU_NR>;
template [[host_name("matvec_jobs_f32")]] [[kernel]] decltype(matvec_jobs<fmt_f32, MATVEC_NR>) matvec_jobs<fmt_f32, MATVEC_NR>;
template [[host_name("matvec_jobs_f16")]] [[kernel]] decltype(matvec_jobs<fmt_f16, MATVEC_NR>) matvec_jobs<fmt_f16, MATVEC_NR>;
template [[host_name("matvec_jobs_bf16")]] [[kernel]] decltype(matvec_jobs<fmt_bf16, MATVEC_NR>) matvec_jobs<fmt_bf16, MATVEC_NR>;
template [[host_name("matvec_jobs_q8_0")]] [[kernel]] decltype(matvec_jobs<fmt_q8_0, MATVEC_NR>) matvec_jobs<fmt_q8_0, MATVEC_NR>;
template [[host_name("matvec_jobs_q4_0")]] [[kernel]] decltype(matvec_jobs<fmt_q4_0, MATVEC_NR>) matvec_jobs<fmt_q4_0, MATVEC_NR>;
template [[host_name("matvec_jobs_q4_1")]] [[kernel]] decltype(matvec_jobs<fmt_q4_1, MATVEC_NR>) matvec_jobs<fmt_q4_1, MATVEC_NR>;
template [[host_name("matvec_jobs_q5_0")]] [[kernel]] decltype(matvec_jobs<fmt_q5_0, MATVEC_NR>) matvec_jobs<fmt_q5_0, MATVEC_NR>;
template [[host_name("matvec_jobs_q5_1")]] [[kernel]] decltype(matvec_jobs<fmt_q5_1, MATVEC_NR>) matvec_jobs<fmt_q5_1, MATVEC_NR>;
template [[host_name("matvec_jobs_q4_k")]] [[kernel]] decltype(matvec_jobs<fmt_q4_k, MATVEC_NR>) matvec_jobs<fmt_q4_k, MATVEC_NR>;
template [[host_name("matvec_jobs_q5_k")]] [[kernel]] decltype(matvec_jobs<fmt_q5_k, MATVEC_NR>) matvec_jobs<fmt_q5_k, MATVEC_NR>;
template [[host_name("matvec_jobs_q6_k")]] [[kernel]] decltype(matvec_jobs<fmt_q6_k, MATVEC_NR>) matvec_jobs<fmt_q6_k, MATVEC_NR>;
template [[host_name("matvec_q2_k")]] [[kernel]] decltype(matvec<fmt_q2_k, MATVEC_NR>) matvec<fmt_q2_k, MATVEC_NR>;
template [[host_name("matvec_q3_k")]] [[kernel]] decltype(matvec<fmt_q3_k, MATVEC_NR>) matvec<fmt_q3_k, MATVEC_NR>;
template [[host_name("matvec_jobs_q2_k")]] [[kernel]] decltype(matvec_jobs<fmt_q2_k, MATVEC_NR>) matvec_jobs<fmt_q2_k, MATVEC_NR>;
template [[host_name("matvec_jobs_q3_k")]] [[kernel]] decltype(matvec_jobs<fmt_q3_k, MATVEC_NR>) matvec_jobs<fmt_q3_k, MATVEC_NR>;
template [[host_name("matvec_glu_q2_k")]] [[kernel]] decltype(matvec_glu<fmt_q2_k, MATVEC_GLU_NR>) matvec_glu<fmt_q2_k, MATVEC_GLU_NR>;
template [[host_name("matvec_glu_q3_k")]] [[kernel]] decltype(matvec_glu<fmt_q3_k, MATVEC_GLU_NR>) matvec_glu<fmt_q3_k, MATVEC_GLU_NR>;

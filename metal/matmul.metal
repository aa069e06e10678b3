// simdgroup_matrix matmul instantiations; the kernel is in matmul.h. Host: 128 threads per
// threadgroup, grid = (ceil(N / 32), ceil(M / 32)).
#include "matmul.h"

template [[host_name("matmul_f32")]] [[kernel]] decltype(matmul<float>) matmul<float>;
template [[host_name("matmul_f16")]] [[kernel]] decltype(matmul<half>) matmul<half>;

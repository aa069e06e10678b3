// Matrix-vector instantiations; the kernel is in gemv.h. Host: threadgroup = 32 * nsg threads,
// grid = (ceil(rows / (nsg * NR)), tokens).
#include "gemv.h"

template [[host_name("gemv_f32")]] [[kernel]] decltype(gemv<float, 2>) gemv<float, 2>;
template [[host_name("gemv_f16")]] [[kernel]] decltype(gemv<half, 2>) gemv<half, 2>;

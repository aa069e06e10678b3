// RMSNorm instantiations; the kernel is in rmsnorm.h.
#include "rmsnorm.h"

template [[host_name("rmsnorm_f32")]] [[kernel]] decltype(rmsnorm<float, false>) rmsnorm<float, false>;
template [[host_name("rmsnorm_f16")]] [[kernel]] decltype(rmsnorm<half, false>) rmsnorm<half, false>;
template [[host_name("rmsnorm_add_f32")]] [[kernel]] decltype(rmsnorm<float, true>) rmsnorm<float, true>;

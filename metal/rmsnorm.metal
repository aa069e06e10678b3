// RMSNorm instantiations; the kernel is in rmsnorm.h.
#include "rmsnorm.h"

template [[host_name("rmsnorm_f32")]] [[kernel]] decltype(rmsnorm<float>) rmsnorm<float>;
template [[host_name("rmsnorm_f16")]] [[kernel]] decltype(rmsnorm<half>) rmsnorm<half>;

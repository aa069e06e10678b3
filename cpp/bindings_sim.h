// metallic._core's Metal simulator hooks, in METALLIC_METAL_SIM builds: sim_dispatch (one kernel
// of metal/*.metal over NumPy arrays), the simulator's workers and counters, and its measured
// memory traffic as dicts (also what Model.gpu_stats() adds on metal-sim).
#pragma once

#ifdef METALLIC_METAL_SIM
#include <nanobind/nanobind.h>

#include "metal/sim/sim_device.h"

namespace metallic::py {

// Measured memory traffic (msim::Traffic, cpp/metal/sim/README.md "Memory traffic") as a dict.
nanobind::dict traffic_dict(const msim::Traffic& t);
// The same per kernel host name.
nanobind::dict traffic_by_kernel_dict();
// The sim_* functions of the module.
void bind_sim(nanobind::module_& m);

}  // namespace metallic::py
#endif

// metallic._core's Metal simulator hooks (METALLIC_METAL_SIM builds; see bindings_sim.h).
#include "bindings_sim.h"

#ifdef METALLIC_METAL_SIM
#include <nanobind/ndarray.h>
#include <nanobind/stl/map.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/error.h"

namespace nb = nanobind;

namespace metallic::py {

namespace {

// ---- Metal simulator test hooks ---------------------------------------------------------------
// Run one kernel of metal/*.metal (or tests/metal_kernels/*.metal) over NumPy arrays in place:
// buffers[i] is bound at [[buffer(i)]]; tg_mem[i] is the length of [[threadgroup(i)]].
using SimBuffer = nb::ndarray<nb::device::cpu, nb::c_contig>;

std::vector<uint32_t> dims3(const std::vector<uint32_t>& v, const char* what) {
    if (v.empty() || v.size() > 3) throw BadRequest(std::string(what) + " needs 1 to 3 dimensions");
    std::vector<uint32_t> r = v;
    r.resize(3, 1);
    return r;
}

void sim_dispatch(const std::string& name, std::vector<SimBuffer> buffers, const std::vector<uint32_t>& grid,
                  const std::vector<uint32_t>& threadgroup, const std::vector<size_t>& tg_mem,
                  const nb::dict& constants) {
    std::map<int, msim::ConstantValue> values;
    for (auto [k, v] : constants) {
        msim::ConstantValue c;
        if (nb::isinstance<nb::bool_>(v) || nb::isinstance<nb::int_>(v)) {
            c.i = nb::cast<int64_t>(v);
        } else if (nb::isinstance<nb::float_>(v)) {
            c.is_float = true;
            c.f = nb::cast<double>(v);
        } else {
            throw BadRequest("function constant values must be bool, int or float");
        }
        values[nb::cast<int>(k)] = c;
    }
    msim::Device& dev = msim::Device::shared();
    msim::Pipeline p;
    try {
        p = dev.pipeline(name, std::move(values));
    } catch (const std::invalid_argument& e) {
        throw BadRequest(e.what());
    }
    msim::DispatchDesc d;
    d.pipeline = &p;
    for (auto& b : buffers) {
        d.buffers.push_back(b.data());
        d.buffer_lengths.push_back(b.nbytes());
    }
    const auto g = dims3(grid, "grid"), t = dims3(threadgroup, "threadgroup");
    for (int i = 0; i < 3; ++i) {
        d.groups[i] = g[size_t(i)];
        d.threads[i] = t[size_t(i)];
    }
    d.tg_mem = tg_mem;
    try {
        nb::gil_scoped_release release;
        dev.dispatch(d);
    } catch (const std::invalid_argument& e) {
        throw BadRequest(e.what());
    }
}

}  // namespace

// Measured memory traffic (msim::Traffic, cpp/metal/sim/README.md "Memory traffic") as a dict.
nb::dict traffic_dict(const msim::Traffic& t) {
    nb::dict d;
    d["dispatches"] = t.dispatches;
    d["threadgroups"] = t.threadgroups;
    d["threads"] = t.threads;
    d["loaded_bytes"] = t.loaded_bytes;
    d["stored_bytes"] = t.stored_bytes;
    d["unique_bytes"] = t.unique_bytes;
    d["constant_bytes"] = t.constant_bytes;
    d["lane_loads"] = t.lane_loads;
    d["lane_stores"] = t.lane_stores;
    d["load_instructions"] = t.load_instructions;
    d["store_instructions"] = t.store_instructions;
    nb::dict lw, sw;
    for (int i = 0; i < msim::Traffic::kWidths; ++i) {
        lw[nb::int_(1 << i)] = t.load_width[i];
        sw[nb::int_(1 << i)] = t.store_width[i];
    }
    d["load_widths"] = lw;
    d["store_widths"] = sw;
    d["lines_touched"] = t.lines_touched;
    d["lines_min"] = t.lines_min;
    d["lane_slots"] = t.lane_slots;
    d["active_lanes"] = t.active_lanes;
    d["active_lane_fraction"] = t.lane_slots ? double(t.active_lanes) / double(t.lane_slots) : 0.0;
    d["tg_loaded_bytes"] = t.tg_loaded_bytes;
    d["tg_stored_bytes"] = t.tg_stored_bytes;
    d["tg_instructions"] = t.tg_instructions;
    d["bank_conflicts"] = t.bank_conflicts;
    d["barriers"] = t.barriers;
    d["simd_collectives"] = t.simd_collectives;
    return d;
}

nb::dict traffic_by_kernel_dict() {
    nb::dict d;
    for (const auto& [name, t] : msim::Device::shared().traffic_by_kernel()) d[name.c_str()] = traffic_dict(t);
    return d;
}

void bind_sim(nb::module_& m) {
    m.def("sim_dispatch", &sim_dispatch, nb::arg("kernel_name"), nb::arg("buffers"), nb::arg("grid"),
          nb::arg("threadgroup"), nb::arg("tg_mem") = std::vector<size_t>{}, nb::arg("constants") = nb::dict(),
          "Test hook: runs a Metal kernel in the CPU simulator over NumPy arrays in place.");
    m.def("sim_kernels", &msim::Device::kernel_names, "Host names of the kernels the simulator knows.");
    m.def("sim_set_workers", [](int n) { msim::Device::shared().set_workers(n); }, nb::arg("n"));
    m.def("sim_workers", [] { return msim::Device::shared().workers(); });
    m.def("sim_counters", [] {
        const msim::Counters c = msim::Device::shared().counters();
        nb::dict d;
        d["dispatches"] = c.dispatches;
        d["threadgroups"] = c.threadgroups;
        d["threads"] = c.threads;
        return d;
    });
    m.def("sim_reset_counters", [] { msim::Device::shared().reset_counters(); });
    m.def("sim_counting_available", &msim::Device::counting_available,
          "Whether this build can count the simulator's memory traffic (GCC builds without ASan).");
    m.def(
        "sim_set_counting",
        [](bool on) {
            try {
                msim::Device::shared().set_counting(on);
            } catch (const std::invalid_argument& e) {
                throw Unsupported(e.what());
            }
        },
        nb::arg("on"), "Turns the measurement of the kernels' memory traffic on or off (off by default).");
    m.def("sim_counting", [] { return msim::Device::shared().counting(); });
    m.def(
        "sim_traffic",
        [](bool per_dispatch) {
            nb::dict d = traffic_dict(msim::Device::shared().traffic());
            d["kernels"] = traffic_by_kernel_dict();
            if (per_dispatch) {
                nb::list l;
                for (const auto& x : msim::Device::shared().dispatch_traffic()) {
                    nb::dict r = traffic_dict(x.traffic);
                    r["kernel"] = x.kernel;
                    l.append(r);
                }
                d["per_dispatch"] = l;
            }
            return d;
        },
        nb::arg("per_dispatch") = false,
        "Memory traffic measured since sim_reset_traffic(), while counting was on: totals, per kernel host "
        "name under 'kernels', and with per_dispatch=True one entry per dispatch (the first 100000).");
    m.def("sim_reset_traffic", [] { msim::Device::shared().reset_traffic(); });
}

}  // namespace metallic::py

#endif

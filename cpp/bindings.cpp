// metallic._core: the nanobind surface of the C++ engine. Thin on purpose: no logic lives here
// beyond converting arguments and releasing the GIL around compute.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>
#include <nanobind/stl/map.h>
#include <nanobind/stl/pair.h>
#ifdef METALLIC_METAL_SIM
#include <nanobind/stl/map.h>

#include "metal/sim/sim_device.h"
#endif

#include <cstring>

#include "cpu/formats/format.h"
#include "cpu/machine_limits.h"
#include "cpu/thread_pool.h"
#include "engine/engine.h"
#include "engine/error.h"
#include "engine/ggml_types.h"
#include "metal/gpu.h"

namespace nb = nanobind;
using namespace metallic;

using LogitsView = nb::ndarray<nb::numpy, const float, nb::ndim<1>>;
using FloatMatrix = nb::ndarray<nb::numpy, float, nb::ndim<2>>;
using Ids = nb::ndarray<const int32_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using Bytes = nb::ndarray<const uint8_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using Floats2D = nb::ndarray<const float, nb::ndim<2>, nb::c_contig, nb::device::cpu>;

namespace {

// The one place where C++ errors become Python exceptions (see engine/error.h and
// python/metallic/errors.py for the four kinds).
void raise_as(const char* cls, const char* message) {
    nb::object errors = nb::module_::import_("metallic.errors");
    PyErr_SetString(errors.attr(cls).ptr(), message);
}

void translate_exception(const std::exception_ptr& p, void*) {
    try {
        std::rethrow_exception(p);
    } catch (const nb::python_error&) {
        throw;  // a Python exception on its way through C++: nanobind restores it
    } catch (const nb::builtin_exception&) {
        throw;  // nanobind's own argument errors
    } catch (const ContextFull& e) {
        raise_as("ContextError", e.what());
    } catch (const BadRequest& e) {
        raise_as("RequestError", e.what());
    } catch (const BadFile& e) {
        raise_as("GGUFError", e.what());
    } catch (const Unsupported& e) {
        raise_as("ModelError", e.what());
    } catch (const std::bad_alloc&) {
        PyErr_SetString(PyExc_MemoryError, "metallic: out of memory");
    } catch (const std::exception& e) {
        raise_as("InternalError", e.what());
    }
}

const cpu::FormatKernels& format_or_throw(uint32_t type) {
    const cpu::FormatKernels* f = cpu::find_format(type);
    if (!f)
        throw Unsupported(std::string("unsupported tensor type ") + type_name(type) + " (supported: " +
                       cpu::supported_format_names() + ")");
    return *f;
}

// Reference hooks for the kernel tests: one format's matrix kernels and dequantization on raw
// bytes. Without `batch`, every token row runs the format's own one-token kernel (decode); with
// it, all rows run through the batch product (prefill).
FloatMatrix kernel_gemm(uint32_t type, Bytes w, int64_t rows, int64_t cols, Floats2D act, bool batch) {
    const cpu::FormatKernels& f = format_or_throw(type);
    if (cols % f.block || rows <= 0) throw BadRequest("bad gemm shape");
    const size_t row_bytes = size_t(cols / f.block * f.block_bytes);
    if (w.size() != row_bytes * size_t(rows)) throw BadRequest("weight bytes do not match the shape");
    if (act.shape(1) != size_t(cols)) throw BadRequest("activation width does not match cols");
    const int64_t n = int64_t(act.shape(0));
    float* out = new float[size_t(n) * size_t(rows)];
    nb::capsule owner(out, [](void* p) noexcept { delete[] static_cast<float*>(p); });
    if (batch) {
        cpu::batch_gemm(f, w.data(), row_bytes, rows, act.data(), n, cols, out);
        return FloatMatrix(out, {size_t(n), size_t(rows)}, owner);
    }
    std::vector<uint8_t> quantized(cpu::act_row_bytes(f.act, cols));
    for (int64_t t = 0; t < n; ++t) {
        const float* x = act.data() + t * cols;
        const void* a = x;
        if (f.act != cpu::ActKind::F32) {
            cpu::quantize_row(f.act, x, quantized.data(), cols);
            a = quantized.data();
        }
        f.gemv(w.data(), row_bytes, rows, a, cols, out + t * rows, cpu::Epilogue{});
    }
    return FloatMatrix(out, {size_t(n), size_t(rows)}, owner);
}

nb::ndarray<nb::numpy, float, nb::ndim<1>> kernel_dequant(uint32_t type, Bytes w, int64_t n) {
    const cpu::FormatKernels& f = format_or_throw(type);
    if (n % f.block || w.size() != size_t(n / f.block * f.block_bytes)) throw BadRequest("bad dequant size");
    float* out = new float[size_t(n)];
    nb::capsule owner(out, [](void* p) noexcept { delete[] static_cast<float*>(p); });
    f.dequant_row(w.data(), out, n);
    return nb::ndarray<nb::numpy, float, nb::ndim<1>>(out, {size_t(n)}, owner);
}

#ifdef METALLIC_METAL_SIM
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
    for (auto& b : buffers) d.buffers.push_back(b.data());
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
#endif

}  // namespace

NB_MODULE(_core, m) {
    m.doc() = "Metallic's C++ engine";
    nb::register_exception_translator(translate_exception);

    nb::enum_<RopeStyle>(m, "RopeStyle")
        .value("interleaved", RopeStyle::Interleaved)
        .value("neox", RopeStyle::Neox);
    nb::enum_<Activation>(m, "Activation").value("silu", Activation::SiLU).value("gelu_tanh", Activation::GeluTanh);

    nb::class_<ModelConfig>(m, "ModelConfig")
        .def(nb::init<>())
        .def_rw("arch", &ModelConfig::arch)
        .def_rw("n_layer", &ModelConfig::n_layer)
        .def_rw("n_embd", &ModelConfig::n_embd)
        .def_rw("n_head", &ModelConfig::n_head)
        .def_rw("n_head_kv", &ModelConfig::n_head_kv)
        .def_rw("head_dim", &ModelConfig::head_dim)
        .def_rw("n_ff", &ModelConfig::n_ff)
        .def_rw("n_vocab", &ModelConfig::n_vocab)
        .def_rw("n_ctx_train", &ModelConfig::n_ctx_train)
        .def_rw("rms_eps", &ModelConfig::rms_eps)
        .def_rw("rope_base", &ModelConfig::rope_base)
        .def_rw("rope_base_local", &ModelConfig::rope_base_local)
        .def_rw("rope_freq_scale", &ModelConfig::rope_freq_scale)
        .def_rw("rope_freq_scale_local", &ModelConfig::rope_freq_scale_local)
        .def_rw("rope_dims", &ModelConfig::rope_dims)
        .def_rw("rope_style", &ModelConfig::rope_style)
        .def_rw("qkv_bias", &ModelConfig::qkv_bias)
        .def_rw("qk_norm", &ModelConfig::qk_norm)
        .def_rw("post_norms", &ModelConfig::post_norms)
        .def_rw("activation", &ModelConfig::activation)
        .def_rw("embed_scale", &ModelConfig::embed_scale)
        .def_rw("attn_scale", &ModelConfig::attn_scale)
        .def_rw("final_logit_softcap", &ModelConfig::final_logit_softcap)
        .def_rw("sliding_window", &ModelConfig::sliding_window);

    nb::class_<TensorDesc>(m, "TensorDesc")
        .def(nb::init<>())
        .def("__init__",
             [](TensorDesc* t, std::string name, uint32_t type, std::vector<int64_t> shape, uint64_t offset) {
                 new (t) TensorDesc{std::move(name), type, std::move(shape), offset};
             },
             nb::arg("name"), nb::arg("type"), nb::arg("shape"), nb::arg("offset"))
        .def_rw("name", &TensorDesc::name)
        .def_rw("type", &TensorDesc::type)
        .def_rw("shape", &TensorDesc::shape)
        .def_rw("offset", &TensorDesc::offset);

    nb::class_<Engine>(m, "Engine")
        .def("__init__",
             [](Engine* e, const std::string& path, const ModelConfig& cfg, const std::vector<TensorDesc>& tensors,
                const std::string& backend, int n_ctx, int threads, bool kv_f32, int max_batch,
                bool profile, bool mmap) {
                 EngineOptions o;
                 o.profile = profile;
                 o.mmap = mmap;
                 o.backend = backend;
                 o.n_ctx = n_ctx;
                 o.threads = threads;
                 o.kv_f32 = kv_f32;
                 o.max_batch = max_batch;
                 nb::gil_scoped_release release;
                 new (e) Engine(path, cfg, tensors, o);
             },
             nb::arg("path"), nb::arg("config"), nb::arg("tensors"), nb::arg("backend") = "cpu",
             nb::arg("n_ctx") = 4096, nb::arg("threads") = 0, nb::arg("kv_f32") = false,
             nb::arg("max_batch") = 512, nb::arg("profile") = false, nb::arg("mmap") = true)
        .def("prefill",
             [](Engine& e, Ids ids) {
                 const float* p;
                 {
                     nb::gil_scoped_release release;
                     p = e.prefill(ids.data(), int(ids.shape(0)));
                 }
                 return LogitsView(p, {size_t(e.config().n_vocab)}, nb::handle());
             },
             nb::arg("ids"), nb::rv_policy::reference_internal,
             "Runs the tokens; returns a read-only view of the last token's logits, valid until the "
             "next call.")
        .def("prefill_all",
             [](Engine& e, Ids ids) {
                 const size_t n = ids.shape(0), V = size_t(e.config().n_vocab);
                 float* out = new float[n * V];
                 nb::capsule owner(out, [](void* p) noexcept { delete[] static_cast<float*>(p); });
                 {
                     nb::gil_scoped_release release;
                     e.prefill(ids.data(), int(n), out);
                 }
                 return FloatMatrix(out, {n, V}, owner);
             },
             nb::arg("ids"), "Runs the tokens; returns the logits of every one as a new [n, vocab] array.")
        .def("decode",
             [](Engine& e, int32_t id) {
                 const float* p;
                 {
                     nb::gil_scoped_release release;
                     p = e.decode(id);
                 }
                 return LogitsView(p, {size_t(e.config().n_vocab)}, nb::handle());
             },
             nb::arg("id"), nb::rv_policy::reference_internal)
        // Every call that takes the engine's lock releases the GIL first: another thread may
        // hold the lock for a whole prefill and needs the GIL to finish.
        .def("truncate", &Engine::truncate, nb::arg("n_keep"), nb::call_guard<nb::gil_scoped_release>())
        .def("profile", &Engine::profile, nb::call_guard<nb::gil_scoped_release>(),
             "Per-op (calls, seconds) since load or reset_profile().")
        .def("reset_profile", &Engine::reset_profile, nb::call_guard<nb::gil_scoped_release>())
        .def_prop_ro("n_past", &Engine::n_past)
        .def_prop_ro("n_ctx", &Engine::n_ctx)
        .def_prop_ro("threads", &Engine::threads)
        .def_prop_ro("backend", &Engine::backend_name)
        .def_prop_ro("max_batch", [](const Engine& e) { return e.options().max_batch; })
        .def_prop_ro("weight_bytes_per_token", [](const Engine& e) { return e.weights().matrix_bytes; })
        .def("gpu_stats",
             [](Engine& e) {
                 std::map<std::string, uint64_t> stats;
                 {
                     nb::gil_scoped_release release;
                     stats = e.backend_stats();
                 }
                 nb::dict d;
                 for (const auto& [k, v] : stats) d[k.c_str()] = v;
                 return d;
             },
             "GPU-interface counters since the last reset (command_buffers, waits, dispatches, "
             "buffer_allocations, weight_binds, weight_bytes, ...); empty on the CPU backend.")
        .def("reset_gpu_stats", &Engine::reset_backend_stats, nb::call_guard<nb::gil_scoped_release>());

#ifdef METALLIC_SANITIZE
    m.attr("sanitizers") = "address,undefined";
#else
    m.attr("sanitizers") = "";
#endif
    m.def("kernel_isa", &cpu::kernel_isa);
    m.def("read_bandwidth",
          [](size_t bytes, int threads, int passes) {
              nb::gil_scoped_release release;
              return cpu::read_bandwidth(bytes, threads, passes);
          },
          nb::arg("bytes") = size_t(1) << 30, nb::arg("threads") = 1, nb::arg("passes") = 5,
          "Bytes per second of a streaming read over a buffer of `bytes`, on `threads` threads.");
    m.def("fma_peak",
          [](int threads, int passes) {
              nb::gil_scoped_release release;
              return cpu::fma_peak(threads, passes);
          },
          nb::arg("threads") = 1, nb::arg("passes") = 3,
          "Float operations per second of the kernels' vector multiply-adds on `threads` threads.");
    m.def("physical_cores", &cpu::physical_core_count);
    m.def("supported_formats", &cpu::supported_format_names);
    m.def("metal_available", &gpu::metal_device_available, "Whether this machine has a Metal GPU for backend 'metal'.");
    m.def("metal_sim_available", &gpu::sim_available, "Whether this build has the Metal simulator (backend 'metal-sim').");
    m.def(
        "raise_for_test",
        [](const std::string& kind) {
            if (kind == "BadFile") throw BadFile("bad file");
            if (kind == "Unsupported") throw Unsupported("unsupported");
            if (kind == "BadRequest") throw BadRequest("bad request");
            if (kind == "ContextFull") throw ContextFull("context full");
            if (kind == "bad_alloc") throw std::bad_alloc();
            throw std::logic_error("logic error");
        },
        nb::arg("kind"), "Test hook: throws one kind of C++ error through the exception translator.");
    m.def("kernel_gemm", &kernel_gemm, nb::arg("type"), nb::arg("weights"), nb::arg("rows"), nb::arg("cols"),
          nb::arg("act"), nb::arg("batch"),
          "Test hook: one format's one-token kernel (or, with batch, the batch product) over raw weight bytes.");
    m.def("kernel_dequant", &kernel_dequant, nb::arg("type"), nb::arg("data"), nb::arg("n"),
          "Test hook: one format's dequantization of raw bytes.");

#ifdef METALLIC_METAL_SIM
    // ---- Metal simulator test hooks (see the section above) ----
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
#endif
}

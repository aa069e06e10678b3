// metallic._core: the nanobind surface of the C++ engine. Thin on purpose: no logic lives here
// beyond converting arguments and releasing the GIL around compute.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>
#include <nanobind/stl/map.h>
#include <nanobind/stl/pair.h>
#include "bindings_sim.h"

#include <cstring>

#include "cpu/cpu_backend.h"
#include "cpu/formats/format.h"
#include "cpu/machine_limits.h"
#include "cpu/thread_pool.h"
#include "engine/engine.h"
#include "engine/error.h"
#include "engine/host_pick.h"
#include "metal/weight_layout.h"
#include "engine/ggml_types.h"
#include "metal/gpu.h"

namespace nb = nanobind;
using namespace metallic;

using LogitsView = nb::ndarray<nb::numpy, const float, nb::ndim<1>>;
using FloatMatrix = nb::ndarray<nb::numpy, float, nb::ndim<2>>;
using Ids = nb::ndarray<const int32_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using LogitsIn = nb::ndarray<const float, nb::ndim<1>, nb::c_contig, nb::device::cpu>;

using Bytes = nb::ndarray<const uint8_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using Floats2D = nb::ndarray<const float, nb::ndim<2>, nb::c_contig, nb::device::cpu>;

namespace {

// The shared pick's settings from Python's values (the seed's 64 bits in two halves).
PickSettings pick_settings(int top_k, float top_p, float min_p, float inv_temp, uint64_t seed, uint32_t counter) {
    return {top_k, top_p, min_p, inv_temp, uint32_t(seed), uint32_t(seed >> 32), counter};
}

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
    // All the tokens in one call, as a server step decodes them: each token's result must not
    // depend on the others (tests/test_formats.py checks it against one call per token).
    const size_t stride = f.act == cpu::ActKind::F32 ? size_t(cols) * sizeof(float) : cpu::act_row_bytes(f.act, cols);
    std::vector<uint8_t> quantized(f.act == cpu::ActKind::F32 ? 0 : size_t(n) * stride);
    const uint8_t* acts = reinterpret_cast<const uint8_t*>(act.data());
    if (f.act != cpu::ActKind::F32) {
        for (int64_t t = 0; t < n; ++t)
            cpu::quantize_row(f.act, act.data() + t * cols, quantized.data() + size_t(t) * stride, cols);
        acts = quantized.data();
    }
    f.gemv(w.data(), row_bytes, rows, cols, cpu::DecodeTokens{acts, stride, out, rows, int(n)}, cpu::Epilogue{});
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

// The Metal backend's layout of a weight matrix (metal/weight_layout.h), from its file bytes.
nb::ndarray<nb::numpy, uint8_t, nb::ndim<1>> gpu_weight_layout(uint32_t type, Bytes w, int64_t rows, int64_t cols) {
    const GgmlTypeInfo* t = ggml_type(type);
    if (!t || !metal::repacked_for_gpu(type)) throw BadRequest("no GPU layout for type " + std::to_string(type));
    if (rows <= 0 || cols <= 0 || cols % t->block || w.size() != size_t(rows) * size_t(cols / t->block) * t->block_bytes)
        throw BadRequest("weight bytes do not match the shape");
    Matrix m;
    m.name = "test";
    m.type = type;
    m.rows = rows;
    m.cols = cols;
    m.data = w.data();
    m.row_bytes = size_t(cols / t->block) * t->block_bytes;
    m.nbytes = w.size();
    uint8_t* out = new uint8_t[w.size()];
    nb::capsule owner(out, [](void* p) noexcept { delete[] static_cast<uint8_t*>(p); });
    metal::copy_for_gpu(m, out);
    return nb::ndarray<nb::numpy, uint8_t, nb::ndim<1>>(out, {w.size()}, owner);
}

// Tracing (engine/trace.h): a Python callable called with a dict per op of the forward pass.
// It runs on the engine's thread inside prefill, which runs without the GIL: the GIL is taken
// for the call, and the op's output is copied into a new NumPy array (the engine's memory is
// reused by the next op). An exception in the callable ends the pass and reaches the caller.
class PyObserver final : public Observer {
public:
    explicit PyObserver(nb::callable fn) : fn_(std::move(fn)) {}

    void on_op(const OpEvent& e) override {
        nb::gil_scoped_acquire gil;
        const size_t rows = size_t(e.rows), cols = size_t(e.cols);
        float* copy = new float[rows * cols];
        nb::capsule owner(copy, [](void* p) noexcept { delete[] static_cast<float*>(p); });
        std::memcpy(copy, e.data, rows * cols * sizeof(float));
        nb::dict d;
        d["layer"] = e.layer;
        d["op"] = e.op;
        d["routine"] = e.routine;
        d["kernels"] = e.kernels;
        d["pos"] = e.pos;
        d["input_shape"] = nb::make_tuple(e.rows, e.in_cols);
        d["seconds"] = e.seconds;
        if (e.weight) {
            d["weight"] = e.weight->name;
            d["weight_type"] = type_name(e.weight->type);
            d["weight_bytes"] = e.weight->nbytes;
        } else {
            d["weight"] = nb::none();
            d["weight_type"] = nb::none();
            d["weight_bytes"] = 0;
        }
        d["data"] = FloatMatrix(copy, {rows, cols}, owner);
        fn_(d);
    }

private:
    nb::callable fn_;
};


}  // namespace

NB_MODULE(_core, m) {
    m.doc() = "Metallic's C++ engine";
    nb::register_exception_translator(translate_exception);

    nb::enum_<RopeStyle>(m, "RopeStyle")
        .value("interleaved", RopeStyle::Interleaved)
        .value("neox", RopeStyle::Neox);
    nb::enum_<Activation>(m, "Activation").value("silu", Activation::SiLU).value("gelu_tanh", Activation::GeluTanh);

    // Every field of config.h's list, read-write, and the list itself as ModelConfig.fields (in
    // declaration order): python/metallic/config.py fills and checks its dataclass by it.
    nb::class_<ModelConfig> model_config(m, "ModelConfig");
    model_config.def(nb::init<>());
    nb::list config_fields;
#define METALLIC_BIND_CONFIG_FIELD(type, name, default_value) \
    model_config.def_rw(#name, &ModelConfig::name);            \
    config_fields.append(#name);
    METALLIC_MODEL_CONFIG_FIELDS(METALLIC_BIND_CONFIG_FIELD)
#undef METALLIC_BIND_CONFIG_FIELD
    model_config.attr("fields") = nb::steal<nb::tuple>(PyList_AsTuple(config_fields.ptr()));

    // The GGML type table (engine/ggml_types.h) as (name, id, block, block_bytes) rows, for the
    // test that python/metallic/ggml_types.py agrees with it.
    m.def("ggml_types", [] {
        nb::list rows;
        for (const GgmlTypeInfo& t : kGgmlTypes)
            rows.append(nb::make_tuple(t.name, uint32_t(t.type), t.block, t.block_bytes));
        return rows;
    });

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
                bool profile, bool mmap, int n_seq) {
                 EngineOptions o;
                 o.n_seq = n_seq;
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
             nb::arg("max_batch") = 512, nb::arg("profile") = false, nb::arg("mmap") = true, nb::arg("n_seq") = 1)
        .def("prefill",
             [](Engine& e, Ids ids, int seq) {
                 const float* p;
                 {
                     nb::gil_scoped_release release;
                     p = e.prefill(ids.data(), int(ids.shape(0)), nullptr, seq);
                 }
                 return LogitsView(p, {size_t(e.config().n_vocab)}, nb::handle());
             },
             nb::arg("ids"), nb::arg("seq") = 0, nb::rv_policy::reference_internal,
             "Runs the tokens; returns a read-only view of the last token's logits, valid until the "
             "next call.")
        .def("prefill_all",
             [](Engine& e, Ids ids, int seq) {
                 const size_t n = ids.shape(0), V = size_t(e.config().n_vocab);
                 float* out = new float[n * V];
                 nb::capsule owner(out, [](void* p) noexcept { delete[] static_cast<float*>(p); });
                 {
                     nb::gil_scoped_release release;
                     e.prefill(ids.data(), int(n), out, seq);
                 }
                 return FloatMatrix(out, {n, V}, owner);
             },
             nb::arg("ids"), nb::arg("seq") = 0,
             "Runs the tokens; returns the logits of every one as a new [n, vocab] array.")
        .def("step",
             [](Engine& e, const std::vector<int>& seqs, const std::vector<Ids>& ids) {
                 if (seqs.size() != ids.size()) throw BadRequest("step: one id array per sequence");
                 std::vector<Segment> segs(seqs.size());
                 for (size_t i = 0; i < seqs.size(); ++i) segs[i] = {seqs[i], ids[i].data(), int(ids[i].shape(0))};
                 const size_t n = segs.size(), V = size_t(e.config().n_vocab);
                 float* out = new float[n * V];
                 nb::capsule owner(out, [](void* p) noexcept { delete[] static_cast<float*>(p); });
                 {
                     nb::gil_scoped_release release;
                     e.step(segs, out);
                 }
                 return FloatMatrix(out, {n, V}, owner);
             },
             nb::arg("seqs"), nb::arg("ids"),
             "Several sequences' tokens in one forward pass; returns a new [len(seqs), vocab] array: "
             "each sequence's logits after its last token.")
        .def("decode",
             [](Engine& e, int32_t id, int seq) {
                 const float* p;
                 {
                     nb::gil_scoped_release release;
                     p = e.decode(id, seq);
                 }
                 return LogitsView(p, {size_t(e.config().n_vocab)}, nb::handle());
             },
             nb::arg("id"), nb::arg("seq") = 0, nb::rv_policy::reference_internal)
        .def("decode_resident",
             [](Engine& e, int32_t first, int n, int seq, int n_next, int top_k, float top_p, float min_p,
                float inv_temp, uint64_t seed, uint32_t counter) {
                 std::vector<int32_t> tokens(size_t(std::max(n, 0))), status(tokens.size());
                 const PickSettings pick = pick_settings(top_k, top_p, min_p, inv_temp, seed, counter);
                 {
                     nb::gil_scoped_release release;
                     e.decode_resident(first, n, tokens.data(), status.data(), seq, n_next, top_k > 0 ? &pick : nullptr);
                 }
                 return std::make_pair(tokens, status);
             },
             nb::arg("first"), nb::arg("n"), nb::arg("seq") = 0, nb::arg("n_next") = 0, nb::arg("top_k") = 0,
             nb::arg("top_p") = 1.0f, nb::arg("min_p") = 0.0f, nb::arg("inv_temp") = 1.0f, nb::arg("seed") = 0,
             nb::arg("counter") = 0,
             "GPU-resident decoding (engine.h): n passes from token `first`, each next token picked by "
             "the backend; returns (tokens, statuses) as two lists. top_k = 0 picks greedily, top_k > 0 "
             "by the shared seeded rule (pick_token), pass i making draw counter + i. n_next > 0 queues "
             "the next burst of n_next passes before waiting, for a call that continues from tokens[-1].")
        .def("trace",
             [](Engine& e, Ids ids, nb::callable fn, int seq) {
                 PyObserver observer(std::move(fn));  // released with the GIL held, after the pass
                 const float* p;
                 {
                     nb::gil_scoped_release release;
                     e.set_observer(&observer);
                     struct Off {  // also when the callable raised
                         Engine& e;
                         ~Off() { e.set_observer(nullptr); }
                     } off{e};
                     p = e.prefill(ids.data(), int(ids.shape(0)), nullptr, seq);
                 }
                 return LogitsView(p, {size_t(e.config().n_vocab)}, nb::handle());
             },
             nb::arg("ids"), nb::arg("callback"), nb::arg("seq") = 0, nb::rv_policy::reference_internal,
             "prefill, traced (engine/trace.h): the forward pass runs unfused and callback(event) is called "
             "after every op with a dict: layer, op, routine, kernels, pos, input_shape, seconds, weight, "
             "weight_type, weight_bytes and data (the output, a new float32 [rows, cols] array). The "
             "callback cannot use the engine (RequestError). Returns the logits as prefill does.")
        // Every call that takes the engine's lock releases the GIL first: another thread may
        // hold the lock for a whole prefill and needs the GIL to finish.
        .def("truncate", &Engine::truncate, nb::arg("n_keep"), nb::arg("seq") = 0,
             nb::call_guard<nb::gil_scoped_release>())
        .def("profile", &Engine::profile, nb::call_guard<nb::gil_scoped_release>(),
             "Per-op (calls, seconds) since load or reset_profile().")
        .def("reset_profile", &Engine::reset_profile, nb::call_guard<nb::gil_scoped_release>())
        .def_prop_ro("n_past", [](const Engine& e) { return e.n_past(0); })
        .def("past", &Engine::n_past, nb::arg("seq"), "Positions the sequence's cache holds.")
        .def_prop_ro("n_seq", &Engine::n_seq)
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
#ifdef METALLIC_METAL_SIM
                 // The simulator's measured traffic (process-wide, like the simulator), while
                 // counting is on: totals at the top level, per kernel host name under "kernels".
                 if (std::string(e.backend_name()) == "metal-sim" && msim::Device::shared().counting()) {
                     const nb::dict t = py::traffic_dict(msim::Device::shared().traffic());
                     for (auto [k, v] : t)
                         if (!d.contains(k)) d[k] = v;
                     d["kernels"] = py::traffic_by_kernel_dict();
                 }
#endif
                 return d;
             },
             "GPU-interface counters since the last reset (command_buffers, waits, dispatches, "
             "buffer_allocations, weight_binds, declared_weight_bytes, ...); empty on the CPU backend. "
             "On metal-sim with counting on (_core.sim_set_counting, METALLIC_SIM_COUNT=1) also the "
             "measured memory traffic (loaded_bytes, stored_bytes, unique_bytes, load_instructions, "
             "lines_touched, lines_min, active_lane_fraction, bank_conflicts, barriers, ...) and, "
             "under 'kernels', the same per kernel.")
        .def("reset_gpu_stats",
             [](Engine& e) {
                 nb::gil_scoped_release release;
                 e.reset_backend_stats();
#ifdef METALLIC_METAL_SIM
                 if (std::string(e.backend_name()) == "metal-sim") msim::Device::shared().reset_traffic();
#endif
             });

#ifdef METALLIC_SANITIZE
    m.attr("sanitizers") = "address,undefined";
#else
    m.attr("sanitizers") = "";
#endif
    m.attr("pick_top_k_max") = int(PICK_TOP_K_MAX);  // the largest top_k pick_token takes
    m.def(
        "pick_token",
        [](LogitsIn logits, int top_k, float top_p, float min_p, float inv_temp, uint64_t seed, uint32_t counter) {
            const PickSettings pick = pick_settings(top_k, top_p, min_p, inv_temp, seed, counter);
            check_pick(pick);
            int32_t token = 0, status = 0;
            {
                nb::gil_scoped_release release;
                status = pick_on_host(logits.data(), int64_t(logits.shape(0)), pick, &token);
            }
            return std::make_pair(token, status);
        },
        nb::arg("logits"), nb::arg("top_k"), nb::arg("top_p"), nb::arg("min_p"), nb::arg("inv_temp"), nb::arg("seed"),
        nb::arg("counter"),
        "The shared seeded top-k pick (cpp/engine/top_k_pick.h) from float32 logits: returns (token, "
        "status), status 0 or 1 (a NaN), 2 (largest +inf), 3 (all -inf). Draw `counter` of stream "
        "`seed`; the GPU-resident sampler makes the same picks.");
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
    m.def("metal_available", &gpu::metal_device_available,
          "Whether this machine has a Metal GPU that can run the kernels (backend 'metal').");
    m.def("metal_problem", &gpu::metal_device_problem,
          "Why backend 'metal' cannot run here (no device, GPU older than Apple7), or '' if it can.");
    m.def("metal_library", &gpu::metal_library_kind,
          "Where this build's Metal kernels come from: a precompiled metallib or embedded source.");
    m.def("metal_device_info", &gpu::metal_device_info,
          "The system's Metal device: name, family, max_buffer_length, recommended_max_working_set_size, "
          "has_unified_memory ({} when there is none).");
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
    m.def("gpu_weight_layout", &gpu_weight_layout, nb::arg("type"), nb::arg("data"), nb::arg("rows"), nb::arg("cols"),
          "Test hook: a matrix's bytes as the Metal backend stores them (cpp/metal/weight_layout.h).");

#ifdef METALLIC_METAL_SIM
    py::bind_sim(m);  // bindings_sim.cpp
#endif

    // ---- CPU op test hooks (tests/test_cpu_ops.py) ----------------------------------------------
    // Each runs one op of the CPU backend (engine/backend.h) over NumPy arrays, in a fresh backend
    // of one layer built for the arrays' shapes, in the kernel build `isa` ("native", "generic",
    // "avx2"; cpu_op_isas() lists the ones this CPU runs), on `threads` threads. Outputs are
    // written in place; arrays are float32 and C-contiguous (outputs are never converted).
    using OpOut = nb::ndarray<float, nb::c_contig, nb::device::cpu>;
    using OpIn = nb::ndarray<const float, nb::c_contig, nb::device::cpu>;
    struct OpShape {
        int heads = 1, kv_heads = 1, head_dim = 8, rope_dims = 8, n_ctx = 1, max_batch = 1, threads = 1;
        bool neox = false, kv_f32 = true;
        float attn_scale = 0.0f;  // 0: 1/sqrt(head_dim)
        int64_t width = 8;        // n_embd, n_ff and n_vocab: the widest row a matmul reads or writes
    };
    static const auto need = [](bool ok, const char* what) {
        if (!ok) throw BadRequest(std::string("cpu op test: ") + what);
    };
    static const auto op_backend = [](const std::string& isa, const OpShape& s) {
        need(s.threads >= 1, "threads must be at least 1");
        ModelConfig c;
        c.arch = "op-test";
        c.n_layer = 1;
        c.n_head = s.heads;
        c.n_head_kv = s.kv_heads;
        c.head_dim = s.head_dim;
        c.rope_dims = s.rope_dims;
        c.rope_style = s.neox ? RopeStyle::Neox : RopeStyle::Interleaved;
        c.attn_scale = s.attn_scale;
        c.n_embd = c.n_ff = c.n_vocab = int(s.width);
        c.sliding_window = {0};
        cpu::CpuOptions o;
        o.n_ctx = s.n_ctx;
        o.threads = s.threads;
        o.kv_f32 = s.kv_f32;
        o.max_batch = s.max_batch;
        return cpu::make_cpu_backend_for(isa, c, o);
    };
    m.def("cpu_op_isas", &cpu::usable_isas, "Test hook: the CPU kernel builds this machine runs.");
    m.def(
        "cpu_op_rmsnorm",
        [](OpIn x, OpIn w, OpOut out, float eps, const std::string& isa, int threads) {
            need(x.ndim() == 2 && w.size() == x.shape(1) && out.size() == x.size(), "rmsnorm shapes");
            const int n = int(x.shape(0)), d = int(x.shape(1));
            OpShape s;
            s.threads = threads;
            auto b = op_backend(isa, s);
            nb::gil_scoped_release release;
            b->rmsnorm(x.data(), w.data(), out.data(), n, d, eps);
        },
        nb::arg("x"), nb::arg("w"), nb::arg("out").noconvert(), nb::arg("eps"), nb::arg("isa") = "native",
        nb::arg("threads") = 1, "Test hook: out[t] = rmsnorm(x[t]) * w (out may be x).");
    m.def(
        "cpu_op_rope",
        [](OpOut x, int head_dim, int rope_dims, bool neox, int pos0, OpIn inv_freq, const std::string& isa,
           int threads) {
            need(x.ndim() == 2 && head_dim > 0 && x.shape(1) % size_t(head_dim) == 0, "rope row width");
            need(rope_dims > 0 && rope_dims % 2 == 0 && rope_dims <= head_dim, "rope_dims");
            need(inv_freq.size() == size_t(rope_dims / 2), "rope inv_freq length");
            OpShape s;
            s.heads = int(x.shape(1)) / head_dim;
            s.head_dim = head_dim;
            s.rope_dims = rope_dims;
            s.neox = neox;
            s.max_batch = std::max(1, int(x.shape(0)));
            s.threads = threads;
            auto b = op_backend(isa, s);
            nb::gil_scoped_release release;
            b->rope(x.data(), int(x.shape(0)), s.heads, pos0, inv_freq.data());
        },
        nb::arg("x").noconvert(), nb::arg("head_dim"), nb::arg("rope_dims"), nb::arg("neox"), nb::arg("pos0"),
        nb::arg("inv_freq"), nb::arg("isa") = "native", nb::arg("threads") = 1,
        "Test hook: RoPE in place on rows of heads at positions pos0, pos0 + 1, ...");
    m.def(
        "cpu_op_attention",
        [](OpIn q, OpIn k, OpIn v, OpOut out, int pos0, int window, float scale, bool kv_f32,
           const std::string& isa, int threads) {
            need(k.ndim() == 3 && v.ndim() == 3 && q.ndim() == 2, "attention: q [n, heads * head_dim], "
                                                                  "k and v [kv_heads, n_ctx, head_dim]");
            for (size_t i = 0; i < 3; ++i) need(k.shape(i) == v.shape(i), "attention: k and v shapes differ");
            const int n = int(q.shape(0)), kv_heads = int(k.shape(0)), n_ctx = int(k.shape(1));
            const int hd = int(k.shape(2));
            need(kv_heads > 0 && hd > 0 && q.shape(1) % size_t(hd) == 0 && out.size() == q.size(),
                 "attention: q or out width");
            const int heads = int(q.shape(1)) / hd;
            need(heads % kv_heads == 0, "attention: heads not a multiple of kv_heads");
            need(n > 0 && pos0 >= 0 && pos0 + n <= n_ctx, "attention: positions outside the cache");
            OpShape s;
            s.heads = heads;
            s.kv_heads = kv_heads;
            s.head_dim = s.rope_dims = hd;
            s.n_ctx = n_ctx;
            s.kv_f32 = kv_f32;
            s.attn_scale = scale;
            s.max_batch = n;
            s.threads = threads;
            s.width = int64_t(heads) * hd;
            auto b = op_backend(isa, s);
            nb::gil_scoped_release release;
            // The cache through store_kv, which takes position-major rows [position][kv_head][dim].
            std::vector<float> kr(k.size()), vr(v.size());
            for (int g = 0; g < kv_heads; ++g)
                for (int p = 0; p < n_ctx; ++p)
                    for (int i = 0; i < hd; ++i) {
                        const size_t from = (size_t(g) * n_ctx + p) * hd + i;
                        const size_t to = (size_t(p) * kv_heads + g) * hd + i;
                        kr[to] = k.data()[from];
                        vr[to] = v.data()[from];
                    }
            b->store_kv(0, kr.data(), vr.data(), n_ctx, 0);
            b->attention(0, q.data(), n, pos0, window, out.data());
        },
        nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("out").noconvert(), nb::arg("pos0"), nb::arg("window"),
        nb::arg("scale"), nb::arg("kv_f32"), nb::arg("isa") = "native", nb::arg("threads") = 1,
        "Test hook: the whole cache stored (float16 unless kv_f32), then causal attention of q's rows at "
        "positions pos0.. (window > 0: the last `window` keys; scale 0: 1/sqrt(head_dim)).");
    m.def(
        "cpu_op_glu",
        [](OpOut g, OpIn u, bool gelu, const std::string& isa, int threads) {
            need(g.size() == u.size(), "glu sizes");
            OpShape s;
            s.threads = threads;
            auto b = op_backend(isa, s);
            nb::gil_scoped_release release;
            b->glu(g.data(), u.data(), int64_t(g.size()), gelu ? Activation::GeluTanh : Activation::SiLU);
        },
        nb::arg("g").noconvert(), nb::arg("u"), nb::arg("gelu"), nb::arg("isa") = "native", nb::arg("threads") = 1,
        "Test hook: g = act(g) * u.");
    m.def(
        "cpu_op_add",
        [](OpOut x, OpIn y, const std::string& isa) {
            need(x.size() == y.size(), "add sizes");
            auto b = op_backend(isa, OpShape{});
            b->add(x.data(), y.data(), int64_t(x.size()));
        },
        nb::arg("x").noconvert(), nb::arg("y"), nb::arg("isa") = "native", "Test hook: x += y.");
    m.def(
        "cpu_op_softcap",
        [](OpOut x, float cap, const std::string& isa) {
            auto b = op_backend(isa, OpShape{});
            b->softcap(x.data(), int64_t(x.size()), cap);
        },
        nb::arg("x").noconvert(), nb::arg("cap"), nb::arg("isa") = "native", "Test hook: x = cap * tanh(x / cap).");
    m.def(
        "cpu_op_to_f16",
        [](OpIn x, nb::ndarray<uint16_t, nb::c_contig, nb::device::cpu> out, const std::string& isa) {
            need(out.size() == x.size(), "to_f16 sizes");
            cpu::to_f16_for(isa, x.data(), out.data(), int64_t(x.size()));
        },
        nb::arg("x"), nb::arg("out").noconvert(), nb::arg("isa") = "native",
        "Test hook: float -> half bits, as the float16 KV cache stores keys and values.");
    m.def(
        "cpu_op_embed",
        [](uint32_t type, Bytes table, int64_t cols, Ids ids, float scale, OpOut out, const std::string& isa) {
            const cpu::FormatKernels& f = format_or_throw(type);
            need(cols > 0 && cols % f.block == 0, "embed: cols not a multiple of the format's block");
            const size_t row_bytes = size_t(cols / f.block * f.block_bytes);
            need(table.size() % row_bytes == 0 && out.size() == ids.size() * size_t(cols), "embed shapes");
            const int64_t rows = int64_t(table.size() / row_bytes);
            for (size_t i = 0; i < ids.size(); ++i) need(ids.data()[i] >= 0 && ids.data()[i] < rows, "embed: id");
            const Matrix w{"token_embd.weight", type, cols, rows, table.data(), row_bytes, table.size()};
            OpShape s;
            s.width = cols;
            auto b = op_backend(isa, s);
            b->embed(w, ids.data(), int(ids.size()), scale, out.data());
        },
        nb::arg("type"), nb::arg("table"), nb::arg("cols"), nb::arg("ids"), nb::arg("scale"),
        nb::arg("out").noconvert(), nb::arg("isa") = "native", "Test hook: out[t] = table row ids[t] * scale.");
    m.def(
        "cpu_op_matmul",
        [](std::vector<uint32_t> types, OpIn x, std::vector<Bytes> weights, std::vector<OpOut> outs,
           std::vector<OpIn> biases, std::vector<bool> accumulate, const std::string& isa, int threads) {
            const size_t jobs = weights.size();
            need(jobs >= 1 && jobs <= 3 && types.size() == jobs && outs.size() == jobs && biases.size() == jobs &&
                     accumulate.size() == jobs,
                 "matmul: 1 to 3 jobs, each with a type, weights, out, bias (empty: none) and accumulate");
            need(x.ndim() == 2 && x.shape(0) > 0 && x.shape(1) > 0, "matmul: x [n, cols]");
            const int n = int(x.shape(0));
            const int64_t cols = int64_t(x.shape(1));
            std::vector<Matrix> w(jobs);
            std::vector<MatmulJob> job(jobs);
            int64_t width = cols;
            for (size_t j = 0; j < jobs; ++j) {
                const cpu::FormatKernels& f = format_or_throw(types[j]);
                need(cols % f.block == 0, "matmul: cols not a multiple of the format's block");
                const size_t row_bytes = size_t(cols / f.block * f.block_bytes);
                need(weights[j].size() % row_bytes == 0, "matmul: weight bytes");
                const int64_t rows = int64_t(weights[j].size() / row_bytes);
                need(outs[j].size() == size_t(n) * size_t(rows), "matmul: out shape [n, rows]");
                need(biases[j].size() == 0 || biases[j].size() == size_t(rows), "matmul: bias length");
                w[j] = Matrix{"w" + std::to_string(j), types[j], cols, rows, weights[j].data(), row_bytes,
                              weights[j].size()};
                job[j] = MatmulJob{&w[j], outs[j].data(), biases[j].size() ? biases[j].data() : nullptr,
                                   bool(accumulate[j])};
                width = std::max(width, rows);
            }
            OpShape s;
            s.width = width;
            s.max_batch = n;
            s.threads = threads;
            auto b = op_backend(isa, s);
            nb::gil_scoped_release release;
            if (jobs == 1) b->matmul(x.data(), n, {job[0]});
            if (jobs == 2) b->matmul(x.data(), n, {job[0], job[1]});
            if (jobs == 3) b->matmul(x.data(), n, {job[0], job[1], job[2]});
        },
        nb::arg("types"), nb::arg("x"), nb::arg("weights"), nb::arg("outs").noconvert(), nb::arg("biases"),
        nb::arg("accumulate"), nb::arg("isa") = "native", nb::arg("threads") = 1,
        "Test hook: one matmul call of 1 to 3 jobs reading x (n rows: 1 is the decode path, more the batch "
        "path): outs[j] (+)= x @ W_j.T (+ biases[j]), W_j of GGML type types[j].");
}

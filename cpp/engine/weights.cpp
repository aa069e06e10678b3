#include "engine/weights.h"

#include <cstring>
#include <sstream>

#include "cpu/formats/format.h"
#include "engine/error.h"
#include "engine/ggml_types.h"

namespace metallic {
namespace {

std::string shape_str(const std::vector<int64_t>& s) {
    std::ostringstream o;
    o << "[";
    for (size_t i = 0; i < s.size(); ++i) o << (i ? ", " : "") << s[i];
    o << "]";
    return o.str();
}

class Binder {
public:
    Binder(const MappedFile& file, const std::vector<TensorDesc>& tensors) : file_(file) {
        for (const TensorDesc& t : tensors) {
            if (!by_name_.emplace(t.name, &t).second)
                throw BadFile(file_.path() + ": duplicate tensor '" + t.name + "'");
        }
    }

    bool has(const std::string& name) const { return by_name_.count(name) != 0; }

    // A 2-D weight of `rows` rows of `cols` values, used in place.
    Matrix matrix(const std::string& name, int64_t cols, int64_t rows) {
        const TensorDesc& t = find(name);
        const size_t nbytes = checked_bytes(t);
        std::vector<int64_t> want = {cols, rows};
        std::vector<int64_t> got = t.shape;
        while (got.size() > 2 && got.back() == 1) got.pop_back();
        if (got != want)
            throw Unsupported(file_.path() + ": tensor '" + name + "' has shape " + shape_str(t.shape) +
                              ", expected " + shape_str(want));
        if (!cpu::find_format(t.type))
            throw Unsupported(file_.path() + ": tensor '" + name + "' has type " + type_name(t.type) +
                           ", which this build cannot compute with (supported: " +
                           cpu::supported_format_names() + ")");
        Matrix m;
        m.name = name;
        m.type = t.type;
        m.cols = cols;
        m.rows = rows;
        m.data = file_.data() + t.offset;
        m.nbytes = nbytes;
        m.row_bytes = nbytes / static_cast<size_t>(rows);
        return m;
    }

    // A 1-D tensor of n values, converted to float.
    std::vector<float> vector(const std::string& name, int64_t n) {
        const TensorDesc& t = find(name);
        checked_bytes(t);
        std::vector<int64_t> got = t.shape;
        while (got.size() > 1 && got.back() == 1) got.pop_back();
        if (got != std::vector<int64_t>{n})
            throw Unsupported(file_.path() + ": tensor '" + name + "' has shape " + shape_str(t.shape) +
                              ", expected [" + std::to_string(n) + "]");
        const cpu::FormatKernels* f = cpu::find_format(t.type);
        if (!f || n % f->block)
            throw Unsupported(file_.path() + ": tensor '" + name + "' has unsupported type " +
                           type_name(t.type) + " for a 1-D tensor");
        std::vector<float> out(static_cast<size_t>(n));
        f->dequant_row(file_.data() + t.offset, out.data(), n);
        return out;
    }

private:
    const TensorDesc& find(const std::string& name) const {
        auto it = by_name_.find(name);
        if (it == by_name_.end()) throw Unsupported(file_.path() + ": missing tensor '" + name + "'");
        return *it->second;
    }

    // Byte size from type and shape, with every multiplication and the file bounds checked.
    size_t checked_bytes(const TensorDesc& t) const {
        BlockGeometry g{};
        if (!type_geometry(t.type, &g))
            throw BadFile(file_.path() + ": tensor '" + t.name + "' has unknown type id " +
                           std::to_string(t.type));
        if (t.shape.empty() || t.shape.size() > 4)
            throw BadFile(file_.path() + ": tensor '" + t.name + "' has " +
                           std::to_string(t.shape.size()) + " dimensions");
        uint64_t n = 1;
        for (int64_t d : t.shape) {
            if (d <= 0 || static_cast<uint64_t>(d) > (uint64_t(1) << 40) / n)
                throw BadFile(file_.path() + ": tensor '" + t.name + "' has absurd shape " +
                               shape_str(t.shape));
            n *= static_cast<uint64_t>(d);
        }
        if (t.shape[0] % g.block)
            throw BadFile(file_.path() + ": tensor '" + t.name + "' row length " +
                           std::to_string(t.shape[0]) + " is not a multiple of its block size " +
                           std::to_string(g.block));
        const uint64_t nbytes = n / g.block * g.block_bytes;
        if (t.offset > file_.size() || nbytes > file_.size() - t.offset)
            throw BadFile(file_.path() + ": tensor '" + t.name + "' data lies past the end of the file");
        return static_cast<size_t>(nbytes);
    }

    const MappedFile& file_;
    std::map<std::string, const TensorDesc*> by_name_;
};

}  // namespace

Weights bind_weights(const MappedFile& file, const ModelConfig& c,
                     const std::vector<TensorDesc>& tensors) {
    Binder b(file, tensors);
    Weights w;
    const int64_t d = c.n_embd, hd = c.head_dim;
    const int64_t q_dim = int64_t(c.n_head) * hd, kv_dim = int64_t(c.n_head_kv) * hd;

    w.token_embd = b.matrix("token_embd.weight", d, c.n_vocab);
    w.output_norm = b.vector("output_norm.weight", d);
    w.output = b.has("output.weight") ? b.matrix("output.weight", d, c.n_vocab) : w.token_embd;
    if (b.has("rope_freqs.weight")) w.rope_freq_factors = b.vector("rope_freqs.weight", c.rope_dims / 2);

    w.layers.resize(static_cast<size_t>(c.n_layer));
    for (int i = 0; i < c.n_layer; ++i) {
        const std::string p = "blk." + std::to_string(i) + ".";
        LayerWeights& L = w.layers[static_cast<size_t>(i)];
        L.attn_norm = b.vector(p + "attn_norm.weight", d);
        L.wq = b.matrix(p + "attn_q.weight", d, q_dim);
        L.wk = b.matrix(p + "attn_k.weight", d, kv_dim);
        L.wv = b.matrix(p + "attn_v.weight", d, kv_dim);
        L.wo = b.matrix(p + "attn_output.weight", q_dim, d);
        if (c.qkv_bias) {
            L.q_bias = b.vector(p + "attn_q.bias", q_dim);
            L.k_bias = b.vector(p + "attn_k.bias", kv_dim);
            L.v_bias = b.vector(p + "attn_v.bias", kv_dim);
        }
        if (c.qk_norm) {
            L.q_norm = b.vector(p + "attn_q_norm.weight", hd);
            L.k_norm = b.vector(p + "attn_k_norm.weight", hd);
        }
        if (c.post_norms) {
            L.post_attn_norm = b.vector(p + "post_attention_norm.weight", d);
            L.post_ffn_norm = b.vector(p + "post_ffw_norm.weight", d);
        }
        L.ffn_norm = b.vector(p + "ffn_norm.weight", d);
        L.w_gate = b.matrix(p + "ffn_gate.weight", d, c.n_ff);
        L.w_up = b.matrix(p + "ffn_up.weight", d, c.n_ff);
        L.w_down = b.matrix(p + "ffn_down.weight", c.n_ff, d);
        for (const Matrix* m : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down})
            w.matrix_bytes += m->nbytes;
    }
    w.matrix_bytes += w.output.nbytes;
    return w;
}

}  // namespace metallic

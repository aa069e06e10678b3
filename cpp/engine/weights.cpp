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

// The one check of the tensors against the model: presence, shape and type of every tensor the
// forward pass reads (the list is bind_weights below), and each one's bytes within the file.
// Python hands over the file's tensors without checking them itself, so these messages are the
// ones users see: they name the file, the tensor and the metadata keys its shape comes from.
class Binder {
public:
    Binder(const MappedFile& file, const ModelConfig& cfg, const std::vector<TensorDesc>& tensors)
        : file_(file), arch_(cfg.arch) {
        for (const TensorDesc& t : tensors) {
            if (!by_name_.emplace(t.name, &t).second)
                throw BadFile(file_.path() + ": duplicate tensor '" + t.name + "'");
        }
    }

    bool has(const std::string& name) const { return by_name_.count(name) != 0; }

    // A 2-D weight of `rows` rows of `cols` values, used in place; `from` names the metadata
    // keys of the expected shape.
    Matrix matrix(const std::string& name, int64_t cols, int64_t rows, const std::string& from) {
        const TensorDesc& t = find(name);
        const size_t nbytes = checked_bytes(t);
        std::vector<int64_t> want = {cols, rows};
        std::vector<int64_t> got = t.shape;
        while (got.size() > 2 && got.back() == 1) got.pop_back();
        if (got != want) throw wrong_shape(t, want, from);
        if (!cpu::find_format(t.type)) throw unsupported_type(t);
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
    std::vector<float> vector(const std::string& name, int64_t n, const std::string& from) {
        const TensorDesc& t = find(name);
        checked_bytes(t);
        std::vector<int64_t> got = t.shape;
        while (got.size() > 1 && got.back() == 1) got.pop_back();
        if (got != std::vector<int64_t>{n}) throw wrong_shape(t, {n}, from);
        const cpu::FormatKernels* f = cpu::find_format(t.type);
        if (!f) throw unsupported_type(t);
        // dequant_row needs whole blocks: checked_bytes checked that t.shape[0], now known to be
        // n, is a multiple of the block.
        std::vector<float> out(static_cast<size_t>(n));
        f->dequant_row(file_.data() + t.offset, out.data(), n);
        return out;
    }

    // "'<arch>.<key>'", for the `from` of matrix() and vector().
    std::string key(const char* k) const { return "'" + arch_ + "." + k + "'"; }

private:
    const TensorDesc& find(const std::string& name) const {
        auto it = by_name_.find(name);
        if (it == by_name_.end())
            throw Unsupported(file_.path() + ": missing tensor '" + name + "' (architecture " + arch_ +
                              ", from metadata 'general.architecture')");
        return *it->second;
    }

    Unsupported wrong_shape(const TensorDesc& t, const std::vector<int64_t>& want, const std::string& from) const {
        return Unsupported(file_.path() + ": tensor '" + t.name + "' has shape " + shape_str(t.shape) + ", expected " +
                           shape_str(want) + " (from metadata " + from + ")");
    }

    Unsupported unsupported_type(const TensorDesc& t) const {
        return Unsupported(file_.path() + ": tensor '" + t.name + "' has type " + type_name(t.type) +
                           ", which is not supported (supported: " + cpu::supported_format_names() + ")");
    }

    // Byte size from type and shape, with every multiplication and the file bounds checked.
    size_t checked_bytes(const TensorDesc& t) const {
        const GgmlTypeInfo* g = ggml_type(t.type);
        if (!g)
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
        if (t.shape[0] % g->block)
            throw BadFile(file_.path() + ": tensor '" + t.name + "' row length " +
                           std::to_string(t.shape[0]) + " is not a multiple of its block size " +
                           std::to_string(g->block));
        const uint64_t nbytes = n / g->block * g->block_bytes;
        if (t.offset > file_.size() || nbytes > file_.size() - t.offset)
            throw BadFile(file_.path() + ": tensor '" + t.name + "' data lies past the end of the file");
        return static_cast<size_t>(nbytes);
    }

    const MappedFile& file_;
    std::string arch_;
    std::map<std::string, const TensorDesc*> by_name_;
};

}  // namespace

Weights bind_weights(const MappedFile& file, const ModelConfig& c,
                     const std::vector<TensorDesc>& tensors) {
    Binder b(file, c, tensors);
    Weights w;
    const int64_t d = c.n_embd, hd = c.head_dim;
    const int64_t q_dim = int64_t(c.n_head) * hd, kv_dim = int64_t(c.n_head_kv) * hd;

    // The metadata keys each dimension comes from (python/metallic/config.py reads them). The
    // head size is attention.key_length, or embedding_length / head_count in files without it.
    const std::string embd = b.key("embedding_length"), heads = b.key("attention.head_count");
    const std::string head = b.key("attention.key_length") + " (or " + embd + " / " + heads + ")";
    const std::string q_from = embd + ", " + heads + ", " + head;
    const std::string kv_from = embd + ", " + b.key("attention.head_count_kv") + ", " + head;
    const std::string ff_from = embd + ", " + b.key("feed_forward_length");

    w.token_embd = b.matrix("token_embd.weight", d, c.n_vocab, embd);
    w.output_norm = b.vector("output_norm.weight", d, embd);
    w.output = b.has("output.weight")
                   ? b.matrix("output.weight", d, c.n_vocab, embd + " and the rows of 'token_embd.weight'")
                   : w.token_embd;
    if (b.has("rope_freqs.weight"))
        w.rope_freq_factors = b.vector("rope_freqs.weight", c.rope_dims / 2, b.key("rope.dimension_count") + " / 2");

    w.layers.resize(static_cast<size_t>(c.n_layer));
    for (int i = 0; i < c.n_layer; ++i) {
        const std::string p = "blk." + std::to_string(i) + ".";
        LayerWeights& L = w.layers[static_cast<size_t>(i)];
        L.attn_norm = b.vector(p + "attn_norm.weight", d, embd);
        L.wq = b.matrix(p + "attn_q.weight", d, q_dim, q_from);
        L.wk = b.matrix(p + "attn_k.weight", d, kv_dim, kv_from);
        L.wv = b.matrix(p + "attn_v.weight", d, kv_dim, kv_from);
        L.wo = b.matrix(p + "attn_output.weight", q_dim, d, q_from);
        if (c.qkv_bias) {
            L.q_bias = b.vector(p + "attn_q.bias", q_dim, q_from);
            L.k_bias = b.vector(p + "attn_k.bias", kv_dim, kv_from);
            L.v_bias = b.vector(p + "attn_v.bias", kv_dim, kv_from);
        }
        if (c.qk_norm) {
            L.q_norm = b.vector(p + "attn_q_norm.weight", hd, head);
            L.k_norm = b.vector(p + "attn_k_norm.weight", hd, head);
        }
        if (c.post_norms) {
            L.post_attn_norm = b.vector(p + "post_attention_norm.weight", d, embd);
            L.post_ffn_norm = b.vector(p + "post_ffw_norm.weight", d, embd);
        }
        L.ffn_norm = b.vector(p + "ffn_norm.weight", d, embd);
        L.w_gate = b.matrix(p + "ffn_gate.weight", d, c.n_ff, ff_from);
        L.w_up = b.matrix(p + "ffn_up.weight", d, c.n_ff, ff_from);
        L.w_down = b.matrix(p + "ffn_down.weight", c.n_ff, d, ff_from);
        for (const Matrix* m : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down})
            w.matrix_bytes += m->nbytes;
    }
    w.matrix_bytes += w.output.nbytes;
    return w;
}

}  // namespace metallic

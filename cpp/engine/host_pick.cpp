// Compiled with -ffp-contract=off (CMakeLists.txt): the pick's float operations must stay the
// separate roundings the GPU makes.
#include "engine/host_pick.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "engine/error.h"

namespace metallic {

void check_pick(const PickSettings& s) {
    auto bad = [](const std::string& what) { throw BadRequest("sampling setting " + what); };
    if (s.top_k < 1 || s.top_k > PICK_TOP_K_MAX)
        bad("top_k must be 1.." + std::to_string(int(PICK_TOP_K_MAX)) + " on this path, not " + std::to_string(s.top_k));
    if (!(s.top_p > 0.0f && s.top_p <= 1.0f)) bad("top_p must be in (0, 1], not " + std::to_string(s.top_p));
    if (!(s.min_p >= 0.0f && s.min_p <= 1.0f)) bad("min_p must be in [0, 1], not " + std::to_string(s.min_p));
    if (!(s.inv_temp >= 0.0f && std::isfinite(s.inv_temp)))
        bad("inv_temp must be finite and >= 0, not " + std::to_string(s.inv_temp));
}

int32_t pick_on_host(const float* x, int64_t n, const PickSettings& s, int32_t* token) {
    *token = 0;
    bool nan = false;
    uint32_t kmax = 0;
    for (int64_t j = 0; j < n; ++j) {
        nan |= std::isnan(x[j]);
        kmax = std::max(kmax, pick_key(x[j]));
    }
    if (nan) return 1;
    if (kmax == pick_key(INFINITY)) return 2;
    if (kmax == pick_key(-INFINITY)) return 3;

    // The k best in candidate order, kept in a heap whose top is the worst of them: one pass,
    // and an element only enters when it beats that worst one (rarely, past the first few).
    struct Cand {
        uint32_t key;
        int32_t id;
    };
    auto better = [](const Cand& a, const Cand& b) { return a.key > b.key || (a.key == b.key && a.id < b.id); };
    const int k = int(std::min<int64_t>(s.top_k, n));
    std::vector<Cand> heap;
    heap.reserve(size_t(k));
    for (int64_t j = 0; j < n; ++j) {
        const Cand c{pick_key(x[j]), int32_t(j)};
        if (int(heap.size()) < k) {
            heap.push_back(c);
            std::push_heap(heap.begin(), heap.end(), better);
        } else if (better(c, heap.front())) {
            std::pop_heap(heap.begin(), heap.end(), better);
            heap.back() = c;
            std::push_heap(heap.begin(), heap.end(), better);
        }
    }
    std::sort_heap(heap.begin(), heap.end(), better);  // best first
    std::vector<float> v(heap.size());
    for (size_t i = 0; i < heap.size(); ++i) v[i] = x[heap[i].id];
    *token = heap[size_t(pick_sorted(v.data(), k, s))].id;
    return 0;
}

}  // namespace metallic

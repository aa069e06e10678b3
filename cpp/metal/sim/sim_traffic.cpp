// The simulator's memory-traffic counting (cpp/metal/sim/README.md, "Memory traffic"): each
// lane's accesses combined, each threadgroup's rebuilt into simdgroup instructions, the figures
// of every dispatch and kernel, and the __tsan_* hooks the counting build of the kernels calls.
// The runtime it hooks into is sim_device.cpp; the types both share are in sim_worker.h.

#include "metal/sim/sim_worker.h"  // first: it defines feature macros for the system headers

#include <algorithm>
#include <cstdint>
#include <mutex>
#include <vector>

namespace msim {

// ---------------------------------------------------------------------------------------------
// Memory-traffic counting. Every load and store of the kernels calls one of the __tsan_* hooks
// below (the kernels are compiled with GCC's ThreadSanitizer instrumentation, and these
// definitions take the place of libtsan). A hook returns at once unless this thread runs a
// dispatch that counts; then the address is classified (threadgroup arena, a bound buffer, or
// anything else: fiber stacks, the launcher's arguments, which are not counted).
//
// The CPU compiler splits vector copies into scalar accesses (a float4 read may reach us as four
// 4-byte reads) and the GPU compiler combines adjacent scalar accesses of a thread into vector
// ones, so a lane's accesses of one kind and width inside one 16-byte window are combined (up to
// four windows open at once per lane, the oldest closed first), and
// emitted as the naturally aligned power-of-two pieces (at most 16 bytes) that cover them: what
// a GPU load or store of one thread can move. Each piece is one lane access, tagged with the
// site of its first access.
//
// The lanes of a simdgroup run one after another here, not in lockstep, so instructions are
// rebuilt after each threadgroup: the k-th execution of a site by each lane of a simdgroup is one
// simdgroup-wide instruction. Device instructions count the 128-byte lines they touch against
// the fewest their bytes would fit in; threadgroup instructions count bank conflicts (32 banks
// of 4 bytes: an instruction takes as many cycles as the most distinct words it reads in one
// bank, against ceil(words / 32)).

void Worker::count(uintptr_t a, size_t n, bool store, uintptr_t site) {
    Fiber& f = *cur;
    if (f.count_paused || !n) return;
    int space;
    if (a - reinterpret_cast<uintptr_t>(arena) < arena_cap) {
        space = 1;
    } else {
        space = -1;
        for (const Range& r : disp->ranges)
            if (a - r.lo < r.len) {
                space = r.constant ? 2 : 0;
                break;
            }
        if (space < 0) return;  // the stack, the launcher's arguments, ...
        if (space == 2) {
            if (!store) t.constant_bytes += n;
            return;
        }
    }
    // Split at 16-byte windows; each part is combined with the lane's pending accesses.
    const size_t width = n;
    while (n) {
        const uintptr_t base = a & ~uintptr_t(15);
        const size_t take = std::min<size_t>(n, base + 16 - a);
        count_piece(f, space, a, take, width, store, site);
        a += take;
        n -= take;
    }
}

void Worker::count_piece(Fiber& f, int space, uintptr_t a, size_t n, size_t width, bool store, uintptr_t site) {
    Fiber::Pending* slots = f.pend[space];
    const uintptr_t base = a & ~uintptr_t(15);
    const uint32_t bits = ((n >= 32 ? 0u : (1u << n)) - 1u) << (a - base);
    Fiber::Pending* use = nullptr;
    for (int i = 0; i < Fiber::kPending; ++i) {
        Fiber::Pending& p = slots[i];
        if (!p.mask || p.base != base) continue;
        if (p.store == store && p.width == width && !(p.mask & bits)) {
            p.mask |= bits;
            return;
        }
        // The same bytes again, or another kind or width: a new access. Older windows go
        // first, so each site's executions keep their order.
        flush_through(f, space, p.age);
        use = &p;
        break;
    }
    if (!use) {
        for (int i = 0; i < Fiber::kPending && !use; ++i)
            if (!slots[i].mask) use = &slots[i];
    }
    if (!use) {
        use = &slots[0];
        for (int i = 1; i < Fiber::kPending; ++i)
            if (slots[i].age < use->age) use = &slots[i];
        flush(f, *use, space);
    }
    use->base = base;
    use->site = site;
    use->mask = bits;
    use->age = f.pend_clock++;
    use->width = uint8_t(std::min<size_t>(width, 255));
    use->store = store;
}

// Flushes the windows opened up to `age`, oldest first, so each lane's accesses keep their order.
void Worker::flush_through(Fiber& f, int space, uint32_t age) {
    for (;;) {
        Fiber::Pending* oldest = nullptr;
        for (Fiber::Pending& p : f.pend[space])
            if (p.mask && p.age <= age && (!oldest || p.age < oldest->age)) oldest = &p;
        if (!oldest) return;
        flush(f, *oldest, space);
    }
}

void Worker::flush_all(Fiber& f) {
    flush_through(f, 0, ~0u);
    flush_through(f, 1, ~0u);
}

void Worker::flush(Fiber& f, Fiber::Pending& p, int space) {
    uint32_t m = p.mask;
    p.mask = 0;
    int off = 0;
    while (m) {
        while (!(m & 1u)) {
            m >>= 1;
            ++off;
        }
        int run = 0;
        while (m & 1u) {
            m >>= 1;
            ++run;
        }
        // The run [off, off + run) as naturally aligned pieces of 1, 2, 4, 8 or 16 bytes.
        while (run) {
            int size = 16;
            while (size > run || (off % size) != 0) size >>= 1;
            emit(f, space, p.base + uintptr_t(off), size_t(size), p.store, p.site);
            off += size;
            run -= size;
        }
    }
}

void Worker::emit(Fiber& f, int space, uintptr_t a, size_t n, bool store, uintptr_t site) {
    if (space == 0) {
        (store ? t.stored_bytes : t.loaded_bytes) += n;
        ++(store ? t.lane_stores : t.lane_loads);
    } else {
        (store ? t.tg_stored_bytes : t.tg_loaded_bytes) += n;
    }
    Access e;
    e.site = site;
    e.addr = a;
    e.seq = uint32_t(accesses.size());
    e.k = 0;
    e.sg = uint16_t(f.index / kSimdWidth);
    e.lane = uint8_t(f.index % kSimdWidth);
    e.size = uint8_t(n);
    e.space = uint8_t(space);
    e.store = store;
    accesses.push_back(e);
}

void Worker::analyze_group() {
    std::vector<Access>& ev = accesses;
    // Number each lane's executions of each site in program order ...
    std::sort(ev.begin(), ev.end(), [](const Access& x, const Access& y) {
        if (x.space != y.space) return x.space < y.space;
        if (x.site != y.site) return x.site < y.site;
        if (x.sg != y.sg) return x.sg < y.sg;
        if (x.lane != y.lane) return x.lane < y.lane;
        return x.seq < y.seq;
    });
    for (size_t i = 0; i < ev.size(); ++i) {
        const bool same = i && ev[i].space == ev[i - 1].space && ev[i].site == ev[i - 1].site &&
                          ev[i].sg == ev[i - 1].sg && ev[i].lane == ev[i - 1].lane;
        ev[i].k = same ? ev[i - 1].k + 1 : 0;
    }
    // ... then the same execution of a site by the lanes of a simdgroup is one instruction.
    std::sort(ev.begin(), ev.end(), [](const Access& x, const Access& y) {
        if (x.space != y.space) return x.space < y.space;
        if (x.site != y.site) return x.site < y.site;
        if (x.sg != y.sg) return x.sg < y.sg;
        if (x.k != y.k) return x.k < y.k;
        return x.addr < y.addr;
    });
    const size_t lines_before = lines.size();
    for (size_t i = 0; i < ev.size();) {
        size_t j = i + 1;
        while (j < ev.size() && ev[j].space == ev[i].space && ev[j].site == ev[i].site && ev[j].sg == ev[i].sg &&
               ev[j].k == ev[i].k)
            ++j;
        uint32_t lanes = 0;
        for (size_t q = i; q < j; ++q) lanes |= 1u << ev[q].lane;
        t.lane_slots += kSimdWidth;
        t.active_lanes += uint64_t(__builtin_popcount(lanes));
        if (ev[i].space == 0) {
            // Widest piece: lanes at different alignments may have split the same access.
            int wmax = 0;
            for (size_t q = i; q < j; ++q) wmax = std::max<int>(wmax, ev[q].size);
            const int wi = std::min(Traffic::kWidths - 1, __builtin_ctz(unsigned(wmax)));
            if (ev[i].store) {
                ++t.store_instructions;
                ++t.store_width[wi];
            } else {
                ++t.load_instructions;
                ++t.load_width[wi];
            }
            // Sorted by address: distinct lines and the union of the bytes in one pass.
            uint64_t touched = 0, bytes = 0;
            uintptr_t last_line = ~uintptr_t(0), covered = 0;
            for (size_t q = i; q < j; ++q) {
                const uintptr_t lo = ev[q].addr, hi = lo + ev[q].size;
                for (uintptr_t l = lo >> 7; l <= (hi - 1) >> 7; ++l)
                    if (l != last_line && (last_line == ~uintptr_t(0) || l > last_line)) {
                        ++touched;
                        last_line = l;
                        lines.push_back(l);
                    }
                if (hi > covered) {
                    bytes += hi - std::max(lo, covered);
                    covered = hi;
                }
            }
            t.lines_touched += touched;
            t.lines_min += (bytes + 127) / 128;
        } else {
            ++t.tg_instructions;
            scratch.clear();
            for (size_t q = i; q < j; ++q)
                for (uintptr_t wd = ev[q].addr >> 2; wd <= (ev[q].addr + ev[q].size - 1) >> 2; ++wd)
                    scratch.push_back(wd);
            std::sort(scratch.begin(), scratch.end());
            scratch.erase(std::unique(scratch.begin(), scratch.end()), scratch.end());
            int per_bank[32] = {};
            int cycles = 0;
            for (uintptr_t wd : scratch) cycles = std::max(cycles, ++per_bank[wd & 31]);
            const int fewest = int((scratch.size() + 31) / 32);
            t.bank_conflicts += uint64_t(cycles - fewest);
        }
        i = j;
    }
    ev.clear();
    // Keep the dispatch's line list short: this threadgroup's lines once each.
    std::sort(lines.begin() + long(lines_before), lines.end());
    lines.erase(std::unique(lines.begin() + long(lines_before), lines.end()), lines.end());
}

bool count_pause(bool pause) {
    if (!t_count) return false;
    Fiber& f = *t_worker->cur;
    const bool was = f.count_paused;
    f.count_paused = pause;
    return was;
}

int count_lane() { return t_count ? int(t_worker->cur->index % kSimdWidth) : -1; }

void count_access(const void* addr, size_t size, bool store, uintptr_t site) {
    if (t_count) t_worker->count(reinterpret_cast<uintptr_t>(addr), size, store, site);
}

void Traffic::add(const Traffic& o) {
    dispatches += o.dispatches;
    threadgroups += o.threadgroups;
    threads += o.threads;
    loaded_bytes += o.loaded_bytes;
    stored_bytes += o.stored_bytes;
    lane_loads += o.lane_loads;
    lane_stores += o.lane_stores;
    load_instructions += o.load_instructions;
    store_instructions += o.store_instructions;
    for (int i = 0; i < kWidths; ++i) {
        load_width[i] += o.load_width[i];
        store_width[i] += o.store_width[i];
    }
    lines_touched += o.lines_touched;
    lines_min += o.lines_min;
    unique_bytes += o.unique_bytes;
    constant_bytes += o.constant_bytes;
    lane_slots += o.lane_slots;
    active_lanes += o.active_lanes;
    tg_loaded_bytes += o.tg_loaded_bytes;
    tg_stored_bytes += o.tg_stored_bytes;
    tg_instructions += o.tg_instructions;
    bank_conflicts += o.bank_conflicts;
    barriers += o.barriers;
    simd_collectives += o.simd_collectives;
}

// After a counted dispatch: the workers' figures into the totals.
void Device::Impl::gather(const Dispatch& job_) {
    Traffic d;
    std::vector<uintptr_t> lines;
    for (Worker* w : workers) {
        d.add(w->t);
        lines.insert(lines.end(), w->lines.begin(), w->lines.end());
        w->t = Traffic{};
        w->lines.clear();
    }
    std::sort(lines.begin(), lines.end());
    d.unique_bytes = uint64_t(std::unique(lines.begin(), lines.end()) - lines.begin()) * 128;
    d.dispatches = 1;
    d.threadgroups = job_.n_groups;
    d.threads = job_.n_groups * job_.n_threads;
    std::lock_guard<std::mutex> lk(traffic_mu);
    total.add(d);
    by_kernel[job_.k->name].add(d);
    if (log.size() < kMaxDispatchLog) log.push_back({job_.k->name, d});
}

bool Device::counting_available() {
#if defined(METALLIC_SIM_COUNTING)
    return true;
#else
    return false;
#endif
}

void Device::set_counting(bool on) {
    if (on && !counting_available())
        throw std::invalid_argument(
            "metal-sim: this build cannot count memory traffic (it needs GCC's -fsanitize=thread instrumentation, "
            "which the ASan build and other compilers do not get)");
    impl_->counting = on;
}

bool Device::counting() const { return impl_->counting.load(); }

Traffic Device::traffic() const {
    std::lock_guard<std::mutex> lk(impl_->traffic_mu);
    return impl_->total;
}

std::map<std::string, Traffic> Device::traffic_by_kernel() const {
    std::lock_guard<std::mutex> lk(impl_->traffic_mu);
    return impl_->by_kernel;
}

std::vector<DispatchTraffic> Device::dispatch_traffic() const {
    std::lock_guard<std::mutex> lk(impl_->traffic_mu);
    return impl_->log;
}

void Device::reset_traffic() {
    std::lock_guard<std::mutex> lk(impl_->traffic_mu);
    impl_->total = Traffic{};
    impl_->by_kernel.clear();
    impl_->log.clear();
}

}  // namespace msim

// The instrumentation's entry points (the subset GCC emits for these kernels; see the
// METALLIC_SIM_COUNTING part of CMakeLists.txt). Hidden: they must not take the place of a real
// libtsan's in a process that has one.
#if defined(METALLIC_SIM_COUNTING)
#define MSIM_HOOK extern "C" __attribute__((visibility("hidden"), noinline))
namespace {
inline void hook(const void* a, size_t n, bool store, void* ret) {
    if (__builtin_expect(!msim::t_count, 1)) return;
    msim::t_worker->count(reinterpret_cast<uintptr_t>(a), n, store, reinterpret_cast<uintptr_t>(ret));
}
}  // namespace
MSIM_HOOK void __tsan_init() {}
#define MSIM_RW(N)                                                                                    \
    MSIM_HOOK void __tsan_read##N(void* a) { hook(a, N, false, __builtin_return_address(0)); }         \
    MSIM_HOOK void __tsan_write##N(void* a) { hook(a, N, true, __builtin_return_address(0)); }         \
    MSIM_HOOK void __tsan_unaligned_read##N(void* a) { hook(a, N, false, __builtin_return_address(0)); } \
    MSIM_HOOK void __tsan_unaligned_write##N(void* a) { hook(a, N, true, __builtin_return_address(0)); } \
    MSIM_HOOK void __tsan_volatile_read##N(void* a) { hook(a, N, false, __builtin_return_address(0)); } \
    MSIM_HOOK void __tsan_volatile_write##N(void* a) { hook(a, N, true, __builtin_return_address(0)); }
MSIM_RW(1)
MSIM_RW(2)
MSIM_RW(4)
MSIM_RW(8)
MSIM_RW(16)
#undef MSIM_RW
MSIM_HOOK void __tsan_read_range(void* a, unsigned long n) { hook(a, n, false, __builtin_return_address(0)); }
MSIM_HOOK void __tsan_write_range(void* a, unsigned long n) { hook(a, n, true, __builtin_return_address(0)); }
// Atomics (metal_compat.h's atomic_* use the __atomic builtins, which the instrumentation
// replaces with these): the operation itself, counted as a load and a store.
#define MSIM_ATOMIC(N, T)                                                                                   \
    MSIM_HOOK T __tsan_atomic##N##_load(const volatile T* a, int) {                                          \
        hook(const_cast<const T*>(a), sizeof(T), false, __builtin_return_address(0));                       \
        return __atomic_load_n(a, __ATOMIC_SEQ_CST);                                                         \
    }                                                                                                        \
    MSIM_HOOK void __tsan_atomic##N##_store(volatile T* a, T v, int) {                                       \
        hook(const_cast<const T*>(a), sizeof(T), true, __builtin_return_address(0));                        \
        __atomic_store_n(a, v, __ATOMIC_SEQ_CST);                                                            \
    }                                                                                                        \
    MSIM_HOOK T __tsan_atomic##N##_exchange(volatile T* a, T v, int) {                                       \
        hook(const_cast<const T*>(a), sizeof(T), false, __builtin_return_address(0));                       \
        hook(const_cast<const T*>(a), sizeof(T), true, __builtin_return_address(0));                        \
        return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST);                                                  \
    }                                                                                                        \
    MSIM_HOOK T __tsan_atomic##N##_fetch_add(volatile T* a, T v, int) {                                      \
        hook(const_cast<const T*>(a), sizeof(T), false, __builtin_return_address(0));                       \
        hook(const_cast<const T*>(a), sizeof(T), true, __builtin_return_address(0));                        \
        return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST);                                                   \
    }                                                                                                        \
    MSIM_HOOK int __tsan_atomic##N##_compare_exchange_strong(volatile T* a, T* c, T v, int, int) {          \
        hook(const_cast<const T*>(a), sizeof(T), false, __builtin_return_address(0));                       \
        hook(const_cast<const T*>(a), sizeof(T), true, __builtin_return_address(0));                        \
        return __atomic_compare_exchange_n(a, c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);              \
    }                                                                                                        \
    MSIM_HOOK int __tsan_atomic##N##_compare_exchange_weak(volatile T* a, T* c, T v, int, int) {            \
        hook(const_cast<const T*>(a), sizeof(T), false, __builtin_return_address(0));                       \
        hook(const_cast<const T*>(a), sizeof(T), true, __builtin_return_address(0));                        \
        return __atomic_compare_exchange_n(a, c, v, true, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);               \
    }                                                                                                        \
    MSIM_HOOK T __tsan_atomic##N##_compare_exchange_val(volatile T* a, T c, T v, int, int) {                \
        hook(const_cast<const T*>(a), sizeof(T), false, __builtin_return_address(0));                       \
        hook(const_cast<const T*>(a), sizeof(T), true, __builtin_return_address(0));                        \
        __atomic_compare_exchange_n(a, &c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                    \
        return c;                                                                                            \
    }
MSIM_ATOMIC(8, char)
MSIM_ATOMIC(16, short)
MSIM_ATOMIC(32, int)
MSIM_ATOMIC(64, long long)
#undef MSIM_ATOMIC
MSIM_HOOK void __tsan_atomic_thread_fence(int) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
MSIM_HOOK void __tsan_atomic_signal_fence(int) { __atomic_signal_fence(__ATOMIC_SEQ_CST); }
#undef MSIM_HOOK
#endif

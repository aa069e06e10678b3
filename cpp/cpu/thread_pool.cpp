#include "cpu/thread_pool.h"

#include <chrono>
#include <fstream>
#include <set>
#include <string>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define METALLIC_PAUSE() _mm_pause()
#elif defined(__aarch64__)
#define METALLIC_PAUSE() asm volatile("yield")
#else
#define METALLIC_PAUSE() ((void)0)
#endif

#if defined(__APPLE__)
#include <sys/sysctl.h>
#endif
#if defined(__linux__)
#include <sched.h>
#endif

namespace metallic::cpu {

// How long an idle worker spins before it sleeps. Long enough to bridge the gap between two
// regions of one token (and the Python sampling step between tokens), short enough not to
// burn a core while the model sits idle.
static constexpr auto kSpinTime = std::chrono::milliseconds(3);

ThreadPool::ThreadPool(int n_threads) : n_threads_(n_threads < 1 ? 1 : n_threads) {
    for (int t = 1; t < n_threads_; ++t) workers_.emplace_back([this, t] { worker_main(t); });
}

ThreadPool::~ThreadPool() {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        stop_.store(true);
        generation_.fetch_add(1, std::memory_order_release);
    }
    wake_.notify_all();
    for (auto& w : workers_) w.join();
}

void ThreadPool::work(int thread) {
    for (;;) {
        const uint64_t c = claim_.fetch_add(1, std::memory_order_acq_rel);
        const int64_t task = int64_t(c & 0xffffffffu), n = int64_t(c >> 32);
        if (task >= n) break;
        fn_(ctx_, task, thread);
        done_.fetch_add(1, std::memory_order_release);
    }
}

void ThreadPool::run(int64_t n_tasks, TaskFn fn, void* ctx) {
    if (n_tasks <= 0) return;
    if (n_threads_ == 1 || n_tasks == 1) {
        for (int64_t i = 0; i < n_tasks; ++i) fn(ctx, i, 0);
        return;
    }
    fn_ = fn;
    ctx_ = ctx;
    done_.store(0, std::memory_order_relaxed);
    claim_.store(uint64_t(n_tasks) << 32, std::memory_order_release);
    {
        // Publishing under the lock pairs with the sleepers' check in worker_main.
        std::lock_guard<std::mutex> lock(mutex_);
        generation_.fetch_add(1, std::memory_order_release);
    }
    wake_.notify_all();
    work(0);
    // Wait for tasks other threads claimed, then for any worker still between its last
    // claim attempt and leaving work(), so the next region may reuse fn_ and ctx_.
    int spins = 0;
    while (done_.load(std::memory_order_acquire) < n_tasks ||
           inflight_.load(std::memory_order_acquire) > 0) {
        METALLIC_PAUSE();
        if (++spins > 4096) std::this_thread::yield();  // the worker may need this core
    }
}

void ThreadPool::worker_main(int thread) {
    uint64_t seen = 0;
    for (;;) {
        auto spin_start = std::chrono::steady_clock::now();
        uint64_t gen;
        int spins = 0;
        while ((gen = generation_.load(std::memory_order_acquire)) == seen) {
            METALLIC_PAUSE();
            if (++spins % 1024 == 0 && std::chrono::steady_clock::now() - spin_start > kSpinTime) {
                std::unique_lock<std::mutex> lock(mutex_);
                wake_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
                spin_start = std::chrono::steady_clock::now();
            }
        }
        seen = gen;
        if (stop_.load()) return;
        inflight_.fetch_add(1, std::memory_order_acq_rel);
        work(thread);
        inflight_.fetch_sub(1, std::memory_order_release);
    }
}

int physical_core_count() {
#if defined(__APPLE__)
    int n = 0;
    size_t len = sizeof(n);
    if (sysctlbyname("hw.perflevel0.physicalcpu", &n, &len, nullptr, 0) == 0 && n > 0) return n;
    if (sysctlbyname("hw.physicalcpu", &n, &len, nullptr, 0) == 0 && n > 0) return n;
#elif defined(__linux__)
    // Count distinct cores among the CPUs we may run on: SMT siblings share a core and a
    // memory-bound kernel gains nothing from the second hyper-thread.
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) {
        std::set<std::string> cores;
        int cpus = 0;
        for (int c = 0; c < CPU_SETSIZE; ++c) {
            if (!CPU_ISSET(c, &set)) continue;
            ++cpus;
            std::ifstream f("/sys/devices/system/cpu/cpu" + std::to_string(c) +
                            "/topology/thread_siblings_list");
            std::string siblings;
            if (f >> siblings) cores.insert(siblings);
            else cores.insert("cpu" + std::to_string(c));
        }
        if (!cores.empty()) return static_cast<int>(cores.size());
        if (cpus > 0) return cpus;
    }
#endif
    unsigned n = std::thread::hardware_concurrency();
    return n > 0 ? static_cast<int>(n) : 1;
}

}  // namespace metallic::cpu

// A persistent pool of worker threads for the CPU backend.
//
// Decode runs 5 parallel regions per layer and token (q/k/v, attention, attn_output, gate/up,
// ffn_down; a 6th, the GLU, when n_ff > 4096; qk-norm models add one for q and one for k when
// they have 8 or more heads) plus 1 for the output head: 151 for SmolLM2-135M (30 layers), 145
// for the Qwen2.5-0.5B shape (24 layers, n_ff 4864), 91 for Gemma 3 270M (18 layers). Each is
// a few tens of microseconds long, so the hand-off must cost well under a microsecond: workers
// spin on a generation counter for a while after each region and only then sleep on a
// condition variable. The calling thread takes part in every region, so a pool of N threads
// starts N-1 workers.
//
// Tasks are claimed dynamically and the caller waits only for claimed tasks, never for a
// worker to show up: on a loaded machine a descheduled worker must not stall the region (it
// cost 100x in decode time when the caller waited for every worker to check in).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

namespace metallic::cpu {

class ThreadPool {
public:
    explicit ThreadPool(int n_threads);
    ~ThreadPool();
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    int size() const { return n_threads_; }

    // Calls fn(task, thread) for every task in [0, n_tasks), spread dynamically over the
    // threads; returns when all tasks are done. `thread` is in [0, size()) and lets a task use
    // per-thread scratch memory.
    template <class F>
    void parallel_for(int64_t n_tasks, F&& fn) {
        using Fn = std::remove_reference_t<F>;
        auto call = [](void* ctx, int64_t task, int thread) { (*static_cast<Fn*>(ctx))(task, thread); };
        run(n_tasks, call, const_cast<void*>(static_cast<const void*>(&fn)));
    }

private:
    using TaskFn = void (*)(void*, int64_t, int);
    void run(int64_t n_tasks, TaskFn fn, void* ctx);
    void work(int thread);
    void worker_main(int thread);

    int n_threads_;
    std::vector<std::thread> workers_;

    // The current region. fn_ and ctx_ are written before the claim word is published.
    TaskFn fn_ = nullptr;
    void* ctx_ = nullptr;
    // Claim word: task count in the high 32 bits, next unclaimed index in the low 32, so a
    // claim can never pair an index with another region's count.
    alignas(64) std::atomic<uint64_t> claim_{0};
    alignas(64) std::atomic<int64_t> done_{0};     // tasks finished in this region
    alignas(64) std::atomic<int> inflight_{0};     // workers that may be inside work()
    alignas(64) std::atomic<uint64_t> generation_{0};
    std::atomic<bool> stop_{false};

    std::mutex mutex_;
    std::condition_variable wake_;
};

// Physical cores available to this process (performance cores on Apple Silicon).
int physical_core_count();

}  // namespace metallic::cpu

// The simulator's internals shared by sim_device.cpp (the runtime: fibers, workers, rendezvous
// for barriers and simd collectives, threadgroup memory, the dispatch loop) and sim_traffic.cpp
// (memory-traffic counting). Private to those two files: not installed, never seen by kernels.
// Include it first: the feature macros below must come before any other header.
#pragma once

// macOS: fibers switch with ucontext there, and <ucontext.h> #errors unless _XOPEN_SOURCE is
// defined; without it ucontext_t also lacks the machine-context storage getcontext writes
// (__mcontext_data). It changes that struct, so it comes before any header, system or not.
// _XOPEN_SOURCE implies _POSIX_C_SOURCE, which hides the Darwin extensions used below
// (MAP_ANONYMOUS, MAP_NORESERVE, getpagesize); _DARWIN_C_SOURCE brings them back.
#if defined(__APPLE__)
#ifndef _XOPEN_SOURCE
#define _XOPEN_SOURCE 700
#endif
#ifndef _DARWIN_C_SOURCE
#define _DARWIN_C_SOURCE 1
#endif
#endif

#include "metal/sim/sim_device.h"

#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#if defined(METALLIC_SIM_ASAN)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#if !(defined(__x86_64__) && defined(__linux__)) || defined(METALLIC_SIM_UCONTEXT)
#define MSIM_UCONTEXT 1
#include <ucontext.h>
#endif

// With the assembly switch, a fiber that blocks switches straight to the next ready fiber
// instead of through the scheduler: half the switches. (ASan's fiber annotations and ucontext
// keep the simpler path through the scheduler.)
#if !defined(MSIM_UCONTEXT) && !defined(METALLIC_SIM_ASAN)
#define MSIM_DIRECT_SWITCH 1
#endif

namespace msim {

// These types are shared by two translation units, so they cannot be in an anonymous namespace
// as they were in one. Hidden instead: their member functions stay out of reach of symbol
// interposition, so the compiler can still inline them (-fPIC code cannot inline a function another
// library might replace).
#pragma GCC visibility push(hidden)

// Fibers' stacks: kernels keep small local arrays and simdgroup matrices (256 B each) there.
// Pages are committed only when touched, so the size is cheap; a guard page catches overflow.
#if defined(METALLIC_SIM_ASAN)
constexpr size_t kStackSize = 1024 * 1024;
#else
constexpr size_t kStackSize = 256 * 1024;
#endif
// Red zone around every threadgroup allocation: filled with the poison, checked afterwards.
constexpr size_t kRedZone = 64;
constexpr unsigned char kPoison = 0xFF;  // NaN as float and half, -1 as integers

enum class State : uint8_t { Ready, Blocked, Done };
enum class Wait : uint8_t { None, Barrier, Simd };

struct Fiber {
    void* sp = nullptr;
    char* stack = nullptr;  // lowest usable address
#ifdef MSIM_UCONTEXT
    ucontext_t ctx;
#endif
#if defined(METALLIC_SIM_ASAN)
    void* fake_stack = nullptr;
#endif
    State state = State::Ready;
    Wait wait = Wait::None;
    uint32_t index = 0;
    int next_decl = 0;  // which `threadgroup T x;` declaration this thread reaches next
    ThreadArgs args{};
    // Memory-traffic counting (touched only while it is on).
    bool count_paused = false;
    struct Pending {  // accesses being combined: one 16-byte window, one kind, one width
        uintptr_t base = 0;
        uintptr_t site = 0;
        uint32_t mask = 0;  // bytes of the window accessed; 0: slot free
        uint32_t age = 0;   // when the slot was opened (the oldest is flushed first)
        uint8_t width = 0;
        bool store = false;
    };
    // A few windows at once per address space: the CPU compiler interleaves a lane's accesses
    // to different arrays (a block of weights, the input vector) that each combine.
    static constexpr int kPending = 4;
    Pending pend[2][kPending];  // device, threadgroup
    uint32_t pend_clock = 0;
};

// One lane access after combining, for the per-threadgroup analysis.
struct Access {
    uintptr_t site;  // return address of the instrumentation call: one static instruction
    uintptr_t addr;
    uint32_t seq;    // emission order
    uint32_t k;      // this lane's k-th execution of the site
    uint16_t sg;
    uint8_t lane;
    uint8_t size;
    uint8_t space;   // 0 device, 1 threadgroup
    bool store;
};

// A bound buffer as the counting classifies addresses.
struct Range {
    uintptr_t lo;
    size_t len;
    bool constant;
};

struct SimdGroup {
    int n_lanes = 0;
    int arrived = 0;
    const char* what = nullptr;
    const char* file = nullptr;
    int line = 0;
    CollectiveFn fn = nullptr;
    Slot in[kSimdWidth];
    Slot out[kSimdWidth];
};

struct TgBlock {
    size_t offset, size;
    const char* file;  // declaration site, or null for a [[threadgroup(n)]] argument
    int line;
    int index;
};

struct Dispatch {
    const DispatchDesc* d;
    const KernelInfo* k;
    uint64_t n_groups;
    uint32_t n_threads;
    LaunchFn launch;  // the kernel's plain launcher, or its counting build's
    std::atomic<uint64_t> next{0};
    bool count = false;  // measure memory traffic
    std::vector<Range> ranges;
};

// One OS thread's simulation state; a threadgroup runs entirely inside one Worker.
struct Worker {
    std::vector<Fiber> fibers;  // reused across threadgroups and dispatches
    void* sched_sp = nullptr;
#ifdef MSIM_UCONTEXT
    ucontext_t sched_ctx;
#endif
#if defined(METALLIC_SIM_ASAN)
    void* sched_fake_stack = nullptr;
    const void* sched_bottom = nullptr;
    size_t sched_size = 0;
#endif
    Fiber* cur = nullptr;

    // The running threadgroup.
    const Dispatch* disp = nullptr;
    uint32_t group[3] = {0, 0, 0};
    uint32_t n_threads = 0;
    uint32_t live = 0;      // fibers not done
    bool reverse = false;   // run order of this threadgroup
    int bar_arrived = 0;
    const char* bar_file = nullptr;
    int bar_line = 0;
    SimdGroup sg[kMaxThreadsPerThreadgroup / kSimdWidth];

    // Threadgroup memory: one arena, reused; blocks separated by poisoned red zones.
    unsigned char* arena = nullptr;
    size_t arena_cap = 0, arena_used = 0, tg_bytes = 0;
    std::vector<TgBlock> blocks;  // [[threadgroup(n)]] arguments first, then declarations
    size_t n_arg_blocks = 0;
    std::vector<void*> tg_ptrs;

    uint64_t threadgroups_run = 0;

    // Memory-traffic counting: this dispatch's figures, the combined accesses of the running
    // threadgroup, the device lines of the dispatch (for its distinct-line count).
    Traffic t;
    std::vector<Access> accesses;
    std::vector<uintptr_t> lines;
    std::vector<uintptr_t> scratch;

    Worker() {
        arena_cap = kMaxThreadgroupMemory + 64 * kRedZone + 4096;
        arena = static_cast<unsigned char*>(std::aligned_alloc(64, arena_cap));
    }
    ~Worker() {
        for (Fiber& f : fibers)
            if (f.stack) munmap(f.stack - getpagesize(), kStackSize + getpagesize());
        std::free(arena);
    }

    void ensure_fibers(uint32_t n) {
        while (fibers.size() < n) fibers.emplace_back();
        for (uint32_t i = 0; i < n; ++i) {
            Fiber& f = fibers[i];
            if (f.stack) continue;
            const size_t page = size_t(getpagesize());
            int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE;
#ifdef MAP_STACK
            flags |= MAP_STACK;  // Linux and the BSDs; macOS has no such flag
#endif
            void* m = mmap(nullptr, kStackSize + page, PROT_READ | PROT_WRITE, flags, -1, 0);
            if (m == MAP_FAILED) throw std::runtime_error("metal-sim: cannot map a fiber stack");
            mprotect(m, page, PROT_NONE);  // guard page below the stack
            f.stack = static_cast<char*>(m) + page;
        }
    }

    void* alloc_block(size_t size, size_t align, const char* file, int line, int index) {
        size_t off = (arena_used + kRedZone + align - 1) / align * align;
        off = (off + 15) / 16 * 16;
        tg_bytes += (size + 15) / 16 * 16;
        if (tg_bytes > kMaxThreadgroupMemory)
            fail(file ? file : disp->k->file, file ? line : disp->k->line,
                 "threadgroup memory of %zu bytes exceeds the %zu-byte limit of Apple GPUs", tg_bytes,
                 kMaxThreadgroupMemory);
        if (off + size + kRedZone > arena_cap) fail(file, line, "threadgroup arena exhausted");
        // Poison the block and the red zones on both sides.
#if defined(METALLIC_SIM_ASAN)
        ASAN_UNPOISON_MEMORY_REGION(arena + arena_used, off + size + kRedZone - arena_used);
#endif
        std::memset(arena + arena_used, kPoison, off + size + kRedZone - arena_used);
#if defined(METALLIC_SIM_ASAN)
        ASAN_POISON_MEMORY_REGION(arena + arena_used, off - arena_used);
        ASAN_POISON_MEMORY_REGION(arena + off + size, kRedZone);
#endif
        blocks.push_back({off, size, file, line, index});
        arena_used = off + size;
        return arena + off;
    }

    // A red zone that no longer holds the poison was written out of bounds.
    void check_red_zones() {
#if defined(METALLIC_SIM_ASAN)
        ASAN_UNPOISON_MEMORY_REGION(arena, arena_cap);
#endif
        size_t prev_end = 0;
        for (size_t b = 0; b < blocks.size(); ++b) {
            const TgBlock& blk = blocks[b];
            const size_t lo = b == 0 ? 0 : prev_end;
            for (size_t i = lo; i < blk.offset; ++i)
                if (arena[i] != kPoison) report_oob(blk, long(i) - long(blk.offset));
            const size_t end = blk.offset + blk.size;
            for (size_t i = end; i < end + kRedZone; ++i)
                if (arena[i] != kPoison) report_oob(blk, long(i - blk.offset));
            prev_end = end + kRedZone;
        }
    }

    [[noreturn]] void report_oob(const TgBlock& blk, long byte) {
        if (blk.file)
            fail(blk.file, blk.line,
                 "threadgroup memory written out of bounds: byte %ld of the %zu-byte threadgroup variable declared "
                 "here (kernel %s)",
                 byte, blk.size, disp->k->name);
        fail(disp->k->file, disp->k->line,
             "threadgroup memory written out of bounds: byte %ld of the %zu-byte [[threadgroup(%d)]] argument "
             "(kernel %s)",
             byte, blk.size, blk.index, disp->k->name);
    }

    void run_group(uint64_t linear);
    void count(uintptr_t a, size_t n, bool store, uintptr_t site);
    void count_piece(Fiber& f, int space, uintptr_t a, size_t n, size_t width, bool store, uintptr_t site);
    void flush(Fiber& f, Fiber::Pending& p, int space);
    void flush_all(Fiber& f);
    void flush_through(Fiber& f, int space, uint32_t age);
    void emit(Fiber& f, int space, uintptr_t a, size_t n, bool store, uintptr_t site);
    void analyze_group();
#ifdef MSIM_DIRECT_SWITCH  // only direct fiber-to-fiber switches look for the next ready one
    Fiber* next_ready(const Fiber& f);
#endif
    void resume(Fiber& f);
    void yield(Fiber& f);
    [[noreturn]] void deadlock();
};

// This OS thread's worker and whether it counts (defined in sim_device.cpp). __thread rather
// than thread_local: outside its own translation unit a thread_local is reached through a
// wrapper that checks for a dynamic initializer, a cost on every hook and collective; a __thread
// variable cannot have one.
extern __attribute__((tls_model("initial-exec"))) __thread Worker* t_worker;
extern __attribute__((tls_model("initial-exec"))) __thread bool t_count;

// Worker pool. The calling thread works too; helpers wake per dispatch. (Hidden like the types it
// holds: a nested class otherwise takes Device's visibility.)
struct __attribute__((visibility("hidden"))) Device::Impl {
    std::mutex mu;
    std::condition_variable cv_start, cv_done;
    std::vector<std::thread> threads;
    std::vector<Worker*> workers;  // [0] belongs to the calling thread
    Dispatch* job = nullptr;
    uint64_t generation = 0;
    int busy = 0;
    bool stop = false;
    std::mutex dispatch_mu;  // one dispatch at a time
    std::atomic<uint64_t> dispatches{0}, threadgroups{0}, threads_run{0};

    // Memory traffic (under traffic_mu: read by other threads while dispatches run).
    std::atomic<bool> counting{false};
    mutable std::mutex traffic_mu;
    Traffic total;
    std::map<std::string, Traffic> by_kernel;
    std::vector<DispatchTraffic> log;

    void work(Worker& w, Dispatch& job_);
    // After a counted dispatch: the workers' figures into the totals (sim_traffic.cpp).
    void gather(const Dispatch& job_);
    void helper(Worker* w);
    void start(int n);
    void shutdown();
};

#pragma GCC visibility pop

}  // namespace msim

// The simulator's runtime: worker pool, fibers, rendezvous for barriers and simd collectives,
// threadgroup memory, kernel registry. See sim_device.h for the model.

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

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <unordered_map>

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

// ---------------------------------------------------------------------------------------------
// Context switch. On x86-64 Linux a hand-rolled switch saves only the callee-saved registers:
// about 20x cheaper than swapcontext, which also saves the signal mask with a system call.
// Elsewhere ucontext keeps the simulator portable.
#ifndef MSIM_UCONTEXT
extern "C" void msim_switch(void** save_sp, void* load_sp);
asm(R"(
.text
.globl msim_switch
.hidden msim_switch
.type msim_switch,@function
msim_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
.size msim_switch,.-msim_switch
.section .note.GNU-stack,"",@progbits
.text
)");
#endif

namespace {

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

bool same_site(const char* f1, int l1, const char* f2, int l2) {
    return l1 == l2 && (f1 == f2 || std::strcmp(f1, f2) == 0);
}

}  // namespace

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

// initial-exec: these are read on every collective; the general TLS model costs a call each time.
__attribute__((tls_model("initial-exec"))) thread_local Worker* t_worker = nullptr;
// Whether this OS thread runs a dispatch that counts memory traffic: the only thing the
// instrumented loads and stores look at when counting is off.
__attribute__((tls_model("initial-exec"))) thread_local bool t_count = false;

namespace {

void fiber_main() {
    Worker& w = *t_worker;
    Fiber& f = *w.cur;
#if defined(METALLIC_SIM_ASAN)
    __sanitizer_finish_switch_fiber(nullptr, &w.sched_bottom, &w.sched_size);
#endif
    w.disp->launch(f.args);
    f.state = State::Done;
    Worker& w2 = *t_worker;  // the same worker: a fiber never migrates
    if (t_count) w2.flush_all(f);
    --w2.live;
#ifdef MSIM_DIRECT_SWITCH
    if (Fiber* g = w2.next_ready(f)) {
        w2.cur = g;
        void* dummy;
        msim_switch(&dummy, g->sp);
    }
#endif
#if defined(METALLIC_SIM_ASAN)
    __sanitizer_start_switch_fiber(nullptr, w2.sched_bottom, w2.sched_size);
#endif
#ifdef MSIM_UCONTEXT
    setcontext(&w2.sched_ctx);
#else
    void* dummy;
    msim_switch(&dummy, w2.sched_sp);
#endif
    __builtin_unreachable();
}

#ifdef MSIM_UCONTEXT
void fiber_main_uc() { fiber_main(); }
#endif

}  // namespace

void Worker::resume(Fiber& f) {
    cur = &f;
#if defined(METALLIC_SIM_ASAN)
    __sanitizer_start_switch_fiber(&sched_fake_stack, f.stack, kStackSize);
#endif
#ifdef MSIM_UCONTEXT
    swapcontext(&sched_ctx, &f.ctx);
#else
    msim_switch(&sched_sp, f.sp);
#endif
#if defined(METALLIC_SIM_ASAN)
    __sanitizer_finish_switch_fiber(sched_fake_stack, nullptr, nullptr);
#endif
    cur = nullptr;
}

#ifdef MSIM_DIRECT_SWITCH
// The next ready fiber after f in this threadgroup's run order, or null.
Fiber* Worker::next_ready(const Fiber& f) {
    const uint32_t n = n_threads;
    uint32_t pos = reverse ? n - 1 - f.index : f.index;
    for (uint32_t step = 1; step < n; ++step) {
        if (++pos == n) pos = 0;
        Fiber& g = fibers[reverse ? n - 1 - pos : pos];
        if (g.state == State::Ready) return &g;
    }
    return nullptr;
}
#endif

void Worker::yield(Fiber& f) {
#ifdef MSIM_DIRECT_SWITCH
    if (Fiber* g = next_ready(f)) {
        cur = g;
        msim_switch(&f.sp, g->sp);
        return;  // whoever switched back to f has set cur = &f
    }
#endif
#if defined(METALLIC_SIM_ASAN)
    __sanitizer_start_switch_fiber(&f.fake_stack, sched_bottom, sched_size);
#endif
#ifdef MSIM_UCONTEXT
    swapcontext(&f.ctx, &sched_ctx);
#else
    msim_switch(&f.sp, sched_sp);
#endif
#if defined(METALLIC_SIM_ASAN)
    __sanitizer_finish_switch_fiber(f.fake_stack, &sched_bottom, &sched_size);
#endif
}

void Worker::run_group(uint64_t linear) {
    const DispatchDesc& d = *disp->d;
    group[0] = uint32_t(linear % d.groups[0]);
    group[1] = uint32_t(linear / d.groups[0] % d.groups[1]);
    group[2] = uint32_t(linear / (uint64_t(d.groups[0]) * d.groups[1]));
    n_threads = disp->n_threads;

    // Fresh, poisoned threadgroup memory: [[threadgroup(n)]] arguments now, declarations when
    // the first thread reaches them.
    arena_used = 0;
    tg_bytes = 0;
    blocks.clear();
    tg_ptrs.assign(d.tg_mem.size(), nullptr);
    for (size_t i = 0; i < d.tg_mem.size(); ++i)
        if (d.tg_mem[i]) tg_ptrs[i] = alloc_block(d.tg_mem[i], 16, nullptr, 0, int(i));
    n_arg_blocks = blocks.size();

    bar_arrived = 0;
    const uint32_t n_sg = (n_threads + kSimdWidth - 1) / kSimdWidth;
    for (uint32_t s = 0; s < n_sg; ++s) {
        sg[s].arrived = 0;
        sg[s].n_lanes = int(std::min<uint32_t>(kSimdWidth, n_threads - s * kSimdWidth));
    }

    const uint32_t tx = d.threads[0], ty = d.threads[1];
    for (uint32_t i = 0; i < n_threads; ++i) {
        Fiber& f = fibers[i];
        f.state = State::Ready;
        f.wait = Wait::None;
        f.index = i;
        f.next_decl = 0;
        f.count_paused = false;
        for (auto& space : f.pend)
            for (Fiber::Pending& p : space) p.mask = 0;
        f.pend_clock = 0;
        ThreadArgs& a = f.args;
        a.buffers = d.buffers.data();
        a.tg = tg_ptrs.data();
        a.tpitg[0] = i % tx;
        a.tpitg[1] = i / tx % ty;
        a.tpitg[2] = i / (tx * ty);
        for (int k = 0; k < 3; ++k) {
            a.tgpig[k] = group[k];
            a.ntg[k] = d.threads[k];
            a.ntgs[k] = d.groups[k];
            a.tpg[k] = d.threads[k] * d.groups[k];
            a.tpig[k] = group[k] * d.threads[k] + a.tpitg[k];
        }
        a.tiitg = i;
        a.lane = i % kSimdWidth;
        a.sgitg = i / kSimdWidth;
        a.nsg = n_sg;
#ifdef MSIM_UCONTEXT
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = f.stack;
        f.ctx.uc_stack.ss_size = kStackSize;
        f.ctx.uc_link = nullptr;
        makecontext(&f.ctx, fiber_main_uc, 0);
#else
#if defined(METALLIC_SIM_ASAN)
        // The previous run left its frames' red zones poisoned (fibers end by switching away,
        // not by returning): start from a clean shadow.
        ASAN_UNPOISON_MEMORY_REGION(f.stack, kStackSize);
#endif
        // A fresh stack whose first switch "returns" into fiber_main with the ABI's alignment
        // (rsp % 16 == 8 at function entry) and six zeroed callee-saved registers.
        uintptr_t top = (reinterpret_cast<uintptr_t>(f.stack) + kStackSize) & ~uintptr_t(15);
        void** sp = reinterpret_cast<void**>(top);
        *--sp = nullptr;                                     // fake return address of fiber_main
        *--sp = reinterpret_cast<void*>(&fiber_main);        // popped by `ret`
        for (int r = 0; r < 6; ++r) *--sp = nullptr;         // rbp rbx r12 r13 r14 r15
        f.sp = sp;
#endif
    }

    // Round-robin over the fibers until all are done. A pass that resumes nobody while some
    // are still waiting is a deadlock: a group that can never complete.
    // Odd threadgroups run their threads in reverse order: a thread that reads a neighbour's
    // threadgroup memory without a barrier then sees the poison in some threadgroups whichever
    // side the neighbour is on.
    reverse = linear % 2 == 1;
    live = n_threads;
    while (live) {
        bool progressed = false;
        for (uint32_t k = 0; k < n_threads; ++k) {
            Fiber& f = fibers[reverse ? n_threads - 1 - k : k];
            if (f.state != State::Ready) continue;
            resume(f);  // returns when no fiber is ready (direct switching) or f blocked/ended
            progressed = true;
        }
        if (!progressed && live) deadlock();
    }
    check_red_zones();
    if (t_count) analyze_group();
    ++threadgroups_run;
}

void Worker::deadlock() {
    // Name the first group that waits, with how many of its members arrived.
    const char* kname = disp->k->name;
    if (bar_arrived)
        fail(bar_file, bar_line,
             "threadgroup_barrier reached by only %d of %u threads of threadgroup (%u,%u,%u) of kernel %s: the others "
             "returned or wait at a simd collective (barrier in divergent control flow)",
             bar_arrived, n_threads, group[0], group[1], group[2], kname);
    const uint32_t n_sg = (n_threads + kSimdWidth - 1) / kSimdWidth;
    for (uint32_t s = 0; s < n_sg; ++s)
        if (sg[s].arrived)
            fail(sg[s].file, sg[s].line,
                 "%s reached by only %d of %d lanes of simdgroup %u in threadgroup (%u,%u,%u) of kernel %s: the others "
                 "returned or wait elsewhere (collective in divergent control flow)",
                 sg[s].what, sg[s].arrived, sg[s].n_lanes, s, group[0], group[1], group[2], kname);
    fail(disp->k->file, disp->k->line, "kernel %s: threads wait but no group is waiting (simulator bug)", kname);
}

// ---------------------------------------------------------------------------------------------
// Entry points called from kernels (sim_runtime.h).

void fail(const char* file, int line, const char* fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    std::fprintf(stderr, "%s:%d: metal-sim error: %s\n", file ? file : "?", line, msg);
    std::fflush(stderr);
    std::abort();
}

void simd_collective(const void* in, size_t size, int64_t param, void* out, CollectiveFn fn, const char* what,
                     const char* file, int line) {
    Worker& w = *t_worker;
    Fiber& f = *w.cur;
    const uint32_t lane = f.index % kSimdWidth;
    SimdGroup& g = w.sg[f.index / kSimdWidth];
    if (g.arrived == 0) {
        g.what = what;
        g.file = file;
        g.line = line;
        g.fn = fn;
    } else if (!same_site(g.file, g.line, file, line) || g.fn != fn) {
        fail(file, line,
             "%s here and %s at %s:%d reached by lanes of the same simdgroup %u (kernel %s): collective in divergent "
             "control flow",
             what, g.what, g.file, g.line, f.index / kSimdWidth, w.disp->k->name);
    }
    if (size) std::memcpy(g.in[lane].v, in, size);
    g.in[lane].param = param;
    if (++g.arrived == g.n_lanes) {
        // Last lane in: compute every lane's result, release the others, carry on.
        ++w.t.simd_collectives;
        if (fn) fn(g.in, g.out, g.n_lanes);
        g.arrived = 0;
        const uint32_t base = f.index - lane;
        for (int l = 0; l < g.n_lanes; ++l) {
            Fiber& o = w.fibers[base + l];
            if (o.wait == Wait::Simd) {
                o.wait = Wait::None;
                o.state = State::Ready;
            }
        }
    } else {
        f.state = State::Blocked;
        f.wait = Wait::Simd;
        w.yield(f);
    }
    // Results stay valid until every lane has arrived at the next collective.
    if (out && size) std::memcpy(out, g.out[lane].v, size);
}

void threadgroup_barrier(const char* file, int line) {
    Worker& w = *t_worker;
    Fiber& f = *w.cur;
    if (w.bar_arrived == 0) {
        w.bar_file = file;
        w.bar_line = line;
    } else if (!same_site(w.bar_file, w.bar_line, file, line)) {
        fail(file, line,
             "threadgroup_barrier here and at %s:%d reached by threads of the same threadgroup (kernel %s): barrier "
             "in divergent control flow",
             w.bar_file, w.bar_line, w.disp->k->name);
    }
    if (++w.bar_arrived == int(w.n_threads)) {
        w.bar_arrived = 0;
        ++w.t.barriers;
        for (uint32_t i = 0; i < w.n_threads; ++i) {
            Fiber& o = w.fibers[i];
            if (o.wait == Wait::Barrier) {
                o.wait = Wait::None;
                o.state = State::Ready;
            }
        }
    } else {
        f.state = State::Blocked;
        f.wait = Wait::Barrier;
        w.yield(f);
    }
}

void* tg_decl(size_t size, size_t align, const char* file, int line) {
    Worker& w = *t_worker;
    Fiber& f = *w.cur;
    const size_t k = w.n_arg_blocks + size_t(f.next_decl++);
    if (k < w.blocks.size()) {
        const TgBlock& b = w.blocks[k];
        if (b.size != size || !same_site(b.file, b.line, file, line))
            fail(file, line,
                 "threads of one threadgroup reached different threadgroup declarations (this one and %s:%d); declare "
                 "threadgroup variables unconditionally at kernel scope",
                 b.file ? b.file : "?", b.line);
        return w.arena + b.offset;
    }
    return w.alloc_block(size, align, file, line, -1);
}

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

namespace msim {

namespace {
__attribute__((tls_model("initial-exec"))) thread_local const Pipeline* t_pipeline = nullptr;

const ConstantValue& constant_or_fail(int index, const char* name, const char* file, int line) {
    auto it = t_pipeline->constants.find(index);
    if (it == t_pipeline->constants.end())
        fail(file, line, "function constant %s (index %d) read but not given to the pipeline of kernel %s", name,
             index, t_pipeline->kernel->name);
    return it->second;
}
}  // namespace

bool fc_defined(int index) { return t_pipeline->constants.count(index) != 0; }
double fc_float(int index, const char* name, const char* file, int line) {
    const ConstantValue& c = constant_or_fail(index, name, file, line);
    return c.is_float ? c.f : double(c.i);
}
int64_t fc_int(int index, const char* name, const char* file, int line) {
    const ConstantValue& c = constant_or_fail(index, name, file, line);
    return c.is_float ? int64_t(c.f) : c.i;
}

// ---------------------------------------------------------------------------------------------
// Registry.
namespace {
std::unordered_map<std::string, const KernelInfo*>& registry() {
    static std::unordered_map<std::string, const KernelInfo*> r;
    return r;
}
}  // namespace

bool register_kernel(const KernelInfo& k) {
    auto [it, inserted] = registry().emplace(k.name, &k);
    if (!inserted) {
        std::fprintf(stderr, "metal-sim: kernel host name %s defined in %s and %s\n", k.name, it->second->file, k.file);
        std::abort();
    }
    return true;
}

namespace {
std::unordered_map<std::string, LaunchFn>& counting_launchers() {
    static std::unordered_map<std::string, LaunchFn> r;
    return r;
}
}  // namespace

bool register_counting_launcher(const char* name, LaunchFn launch) {
    counting_launchers()[name] = launch;
    return true;
}

std::vector<std::string> Device::kernel_names() {
    std::vector<std::string> names;
    for (auto& kv : registry()) names.push_back(kv.first);
    std::sort(names.begin(), names.end());
    return names;
}

// ---------------------------------------------------------------------------------------------
// Worker pool. The calling thread works too; helpers wake per dispatch.
struct Device::Impl {
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

    void work(Worker& w, Dispatch& job_) {
        t_worker = &w;
        t_pipeline = job_.d->pipeline;
        t_count = job_.count;
        w.disp = &job_;
        w.ensure_fibers(job_.n_threads);
        uint64_t i;
        while ((i = job_.next.fetch_add(1, std::memory_order_relaxed)) < job_.n_groups) w.run_group(i);
        t_worker = nullptr;
        t_pipeline = nullptr;
        t_count = false;
    }

    // After a counted dispatch: the workers' figures into the totals.
    void gather(const Dispatch& job_) {
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

    void helper(Worker* w) {
        uint64_t seen = 0;
        for (;;) {
            Dispatch* j;
            {
                std::unique_lock<std::mutex> lk(mu);
                cv_start.wait(lk, [&] { return stop || generation != seen; });
                if (stop) return;
                seen = generation;
                j = job;
            }
            work(*w, *j);
            {
                std::lock_guard<std::mutex> lk(mu);
                if (--busy == 0) cv_done.notify_all();
            }
        }
    }

    void start(int n) {
        shutdown();
        stop = false;
        for (int i = 0; i < n; ++i) workers.push_back(new Worker());
        for (int i = 1; i < n; ++i) threads.emplace_back(&Impl::helper, this, workers[size_t(i)]);
    }
    void shutdown() {
        {
            std::lock_guard<std::mutex> lk(mu);
            stop = true;
        }
        cv_start.notify_all();
        for (auto& t : threads) t.join();
        threads.clear();
        for (Worker* w : workers) delete w;
        workers.clear();
    }
};

Device& Device::shared() {
    static Device d;
    return d;
}

Device::Device() : impl_(new Impl) {
    int n = int(std::thread::hardware_concurrency());
    if (const char* e = std::getenv("METALLIC_SIM_WORKERS")) n = std::atoi(e);
    set_workers(n);
    if (const char* e = std::getenv("METALLIC_SIM_COUNT"))
        if (counting_available() && std::strcmp(e, "") != 0 && std::strcmp(e, "0") != 0) impl_->counting = true;
}

Device::~Device() {
    impl_->shutdown();
    delete impl_;
}

void Device::set_workers(int n) {
    std::lock_guard<std::mutex> lk(impl_->dispatch_mu);
    n_workers_ = std::max(1, std::min(n, 64));
    impl_->start(n_workers_);
}

Pipeline Device::pipeline(const std::string& name, std::map<int, ConstantValue> constants) const {
    auto it = registry().find(name);
    if (it == registry().end()) throw std::invalid_argument("metal-sim: no kernel named " + name);
    Pipeline p;
    p.kernel = it->second;
    p.constants = std::move(constants);
    return p;
}

void Device::dispatch(const DispatchDesc& d) {
    if (!d.pipeline || !d.pipeline->kernel) throw std::invalid_argument("metal-sim: dispatch without a pipeline");
    const KernelInfo& k = *d.pipeline->kernel;
    const uint64_t n_threads = uint64_t(d.threads[0]) * d.threads[1] * d.threads[2];
    if (n_threads == 0 || n_threads > uint64_t(kMaxThreadsPerThreadgroup))
        throw std::invalid_argument("metal-sim: " + std::string(k.name) + ": threads per threadgroup must be 1..1024");
    if (int(d.buffers.size()) < k.n_buffers)
        throw std::invalid_argument("metal-sim: " + std::string(k.name) + " takes " + std::to_string(k.n_buffers) +
                                    " buffers");
    for (int i = 0; i < k.n_buffers; ++i)
        if (!d.buffers[size_t(i)])
            throw std::invalid_argument("metal-sim: " + std::string(k.name) + ": buffer " + std::to_string(i) +
                                        " not bound");
    if (int(d.tg_mem.size()) < k.n_tg)
        throw std::invalid_argument("metal-sim: " + std::string(k.name) + " needs threadgroup memory lengths");
    size_t tg_total = 0;
    for (size_t len : d.tg_mem) {
        if (len % 16) throw std::invalid_argument("metal-sim: threadgroup memory lengths must be multiples of 16");
        tg_total += len;
    }
    if (tg_total > kMaxThreadgroupMemory) throw std::invalid_argument("metal-sim: threadgroup memory over 32 KB");
    const uint64_t n_groups = uint64_t(d.groups[0]) * d.groups[1] * d.groups[2];
    if (n_groups == 0) return;

    std::lock_guard<std::mutex> serial(impl_->dispatch_mu);
    Dispatch job{&d, &k, n_groups, uint32_t(n_threads), k.launch, {0}, false, {}};
    job.count = impl_->counting.load();
    if (job.count) {
        const auto it = counting_launchers().find(k.name);
        if (it == counting_launchers().end())
            throw std::logic_error("metal-sim: kernel " + std::string(k.name) + " has no counting build");
        job.launch = it->second;
        for (size_t i = 0; i < d.buffers.size() && i < d.buffer_lengths.size(); ++i)
            if (d.buffers[i] && d.buffer_lengths[i])
                job.ranges.push_back({reinterpret_cast<uintptr_t>(d.buffers[i]), d.buffer_lengths[i],
                                      i < 64 && ((k.constant_buffers >> i) & 1)});
        for (Worker* w : impl_->workers) {
            w->t = Traffic{};
            w->lines.clear();
        }
    }
    const int helpers = int(std::min<uint64_t>(uint64_t(n_workers_) - 1, n_groups - 1));
    if (helpers > 0) {
        std::lock_guard<std::mutex> lk(impl_->mu);
        impl_->job = &job;
        impl_->busy = n_workers_ - 1;
        ++impl_->generation;
        impl_->cv_start.notify_all();
    }
    impl_->work(*impl_->workers[0], job);
    if (helpers > 0) {
        std::unique_lock<std::mutex> lk(impl_->mu);
        impl_->cv_done.wait(lk, [&] { return impl_->busy == 0; });
    }
    impl_->dispatches.fetch_add(1);
    impl_->threadgroups.fetch_add(n_groups);
    impl_->threads_run.fetch_add(n_groups * n_threads);
    if (job.count) impl_->gather(job);
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

Counters Device::counters() const {
    Counters c;
    c.dispatches = impl_->dispatches.load();
    c.threadgroups = impl_->threadgroups.load();
    c.threads = impl_->threads_run.load();
    return c;
}

void Device::reset_counters() {
    impl_->dispatches = 0;
    impl_->threadgroups = 0;
    impl_->threads_run = 0;
}

}  // namespace msim

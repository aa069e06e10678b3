// The simulator's runtime: worker pool, fibers, rendezvous for barriers and simd collectives,
// threadgroup memory, kernel registry. See sim_device.h for the model; the types shared with the
// memory-traffic counting (sim_traffic.cpp) are in sim_worker.h.

#include "metal/sim/sim_worker.h"  // first: it defines feature macros for the system headers

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

bool same_site(const char* f1, int l1, const char* f2, int l2) {
    return l1 == l2 && (f1 == f2 || std::strcmp(f1, f2) == 0);
}

}  // namespace

// initial-exec: these are read on every collective; the general TLS model costs a call each time.
__attribute__((tls_model("initial-exec"))) __thread Worker* t_worker = nullptr;
// Whether this OS thread runs a dispatch that counts memory traffic: the only thing the
// instrumented loads and stores look at when counting is off.
__attribute__((tls_model("initial-exec"))) __thread bool t_count = false;

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
    // Only the kernel's own [[threadgroup(n)]] arguments: lengths left on the encoder for other
    // indices by earlier dispatches are not this kernel's memory (as on Metal).
    const size_t n_tg = size_t(disp->k->n_tg);
    tg_ptrs.assign(n_tg, nullptr);
    for (size_t i = 0; i < n_tg; ++i)
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
// Worker pool (Device::Impl, sim_worker.h).
void Device::Impl::work(Worker& w, Dispatch& job_) {
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

void Device::Impl::helper(Worker* w) {
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

void Device::Impl::start(int n) {
    shutdown();
    stop = false;
    for (int i = 0; i < n; ++i) workers.push_back(new Worker());
    for (int i = 1; i < n; ++i) threads.emplace_back(&Impl::helper, this, workers[size_t(i)]);
}

void Device::Impl::shutdown() {
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
    for (size_t i = 0; i < size_t(k.n_tg); ++i) {  // the kernel's own arguments (run_group)
        const size_t len = d.tg_mem[i];
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

// The emulator's scheduler: runs a launch block by block, each CUDA thread a
// ucontext fiber on the calling OS thread. A fiber runs until it finishes or
// reaches a scheduling point (__syncthreads, a shuffle, __syncwarp); the
// scheduler resumes ready fibers in thread order and releases a barrier only
// when every thread of the block waits at the same one. Misuse — a barrier
// some threads never reach, a shuffle naming a lane that cannot arrive —
// ends the launch with a message instead of hanging or guessing.
#include <ucontext.h>

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "emu.h"

struct EmuKernel {
    const char* name;
    void (*invoke)(void**);
};
extern "C" const EmuKernel emu_kernels[];
extern "C" const size_t emu_kernel_count;

namespace emu {

thread_local Thread* current;
thread_local uint3 block_idx, block_dim, grid_dim;

namespace {

// Kernels keep small locals; host builds of them still want room for spills.
constexpr size_t kStackBytes = 64 * 1024;
constexpr unsigned kMaxThreads = 1024;

enum class State { Ready, AtBarrier, AtWarp, Done };

struct Fiber {
    ucontext_t ctx;
    Thread thread;
    State state;
    int line;  // the barrier or shuffle it waits at
};

struct Warp {
    unsigned arrived = 0;
    unsigned mask = 0;
    int line = 0;
    uint64_t values[32];
    int sources[32];
    uint64_t results[32];
};

struct Block {
    std::vector<Fiber> fibers;
    std::vector<Warp> warps;
    std::vector<unsigned char> shared;
    ucontext_t scheduler;
    Fiber* running = nullptr;
    std::string error;
    void (*invoke)(void**) = nullptr;
    void** args = nullptr;
};

thread_local Block* block;
thread_local std::vector<std::unique_ptr<char[]>> stacks;

// Records the first error and returns to the scheduler, which abandons the launch.
[[noreturn]] void fail(std::string message) {
    Block* b = block;
    if (b->error.empty()) b->error = std::move(message);
    b->running->state = State::Done;
    setcontext(&b->scheduler);
    __builtin_unreachable();
}

void suspend(State state, int line) {
    Fiber* f = block->running;
    f->state = state;
    f->line = line;
    swapcontext(&f->ctx, &block->scheduler);
}

void fiber_main() {
    block->invoke(block->args);
    block->running->state = State::Done;
    // uc_link returns to the scheduler.
}

std::string describe(const Fiber& f) {
    char buf[96];
    std::snprintf(buf, sizeof buf, "thread (%u,%u,%u) of block (%u,%u,%u)", f.thread.idx.x, f.thread.idx.y,
                  f.thread.idx.z, block_idx.x, block_idx.y, block_idx.z);
    return buf;
}

// Called when no fiber is ready: release a barrier, finish, or report misuse.
bool settle(Block& b) {
    size_t done = 0, at_barrier = 0;
    const Fiber* waiting_warp = nullptr;
    const Fiber* first_barrier = nullptr;
    for (const Fiber& f : b.fibers) {
        if (f.state == State::Done) done++;
        if (f.state == State::AtWarp && !waiting_warp) waiting_warp = &f;
        if (f.state == State::AtBarrier) {
            at_barrier++;
            if (!first_barrier) first_barrier = &f;
            if (f.line != first_barrier->line) {
                b.error = "threads wait at different __syncthreads (lines " + std::to_string(first_barrier->line) +
                          " and " + std::to_string(f.line) + ")";
                return false;
            }
        }
    }
    if (done == b.fibers.size()) return false;
    if (waiting_warp) {
        b.error = "warp operation at line " + std::to_string(waiting_warp->line) + " by " + describe(*waiting_warp) +
                  " waits for lanes of its mask that exited or wait at __syncthreads (inactive lanes)";
        return false;
    }
    if (done > 0) {
        b.error = "__syncthreads at line " + std::to_string(first_barrier->line) + " reached by " +
                  std::to_string(at_barrier) + " of " + std::to_string(b.fibers.size()) +
                  " threads of the block; the others exited";
        return false;
    }
    for (Fiber& f : b.fibers) f.state = State::Ready;
    return true;
}

void run_block(Block& b) {
    unsigned n = block_dim.x * block_dim.y * block_dim.z;
    while (stacks.size() < n) stacks.emplace_back(new char[kStackBytes]);
    b.fibers.assign(n, Fiber{});
    b.warps.assign((n + 31) / 32, Warp{});
    // Poison dynamic shared memory so reads before writes show up as NaN.
    std::fill(b.shared.begin(), b.shared.end(), 0xFF);
    for (unsigned i = 0; i < n; i++) {
        Fiber& f = b.fibers[i];
        f.thread.linear = i;
        f.thread.idx = uint3{i % block_dim.x, (i / block_dim.x) % block_dim.y, i / (block_dim.x * block_dim.y)};
        f.state = State::Ready;
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = stacks[i].get();
        f.ctx.uc_stack.ss_size = kStackBytes;
        f.ctx.uc_link = &b.scheduler;
        makecontext(&f.ctx, fiber_main, 0);
    }
    for (;;) {
        bool ran = false;
        for (Fiber& f : b.fibers) {
            if (f.state != State::Ready) continue;
            ran = true;
            b.running = &f;
            current = &f.thread;
            swapcontext(&b.scheduler, &f.ctx);
            if (!b.error.empty()) return;
        }
        if (!ran && !settle(b)) return;
    }
}

}  // namespace

void syncthreads(int line) { suspend(State::AtBarrier, line); }

uint64_t warp_exchange(unsigned mask, uint64_t bits, ExchangeKind kind, int arg, int width, int line) {
    Block& b = *block;
    Fiber& me = *b.running;
    unsigned lane = me.thread.linear % 32;
    unsigned first = me.thread.linear - lane;
    Warp& w = b.warps[me.thread.linear / 32];
    if (!((mask >> lane) & 1u)) fail("warp operation at line " + std::to_string(line) + ": " + describe(me) +
                                      " is not in its own mask");
    for (unsigned l = 0; l < 32; l++) {
        if (((mask >> l) & 1u) && first + l >= b.fibers.size())
            fail("warp operation at line " + std::to_string(line) + " names lane " + std::to_string(l) +
                 ", which does not exist in this block (inactive lane)");
    }
    if (width <= 0 || width > 32 || (width & (width - 1)))
        fail("shuffle width " + std::to_string(width) + " is not a power of two up to 32");
    if (w.arrived == 0) {
        w.mask = mask;
        w.line = line;
    } else if (w.mask != mask || w.line != line) {
        fail("lanes of one warp disagree on the warp operation (lines " + std::to_string(w.line) + " and " +
             std::to_string(line) + ")");
    }
    int segment = static_cast<int>(lane) / width * width, in_segment = static_cast<int>(lane) % width;
    int source = static_cast<int>(lane);
    switch (kind) {
        case kSync: break;
        case kIdx: source = segment + ((arg % width) + width) % width; break;
        case kUp: source = in_segment - arg >= 0 ? static_cast<int>(lane) - arg : static_cast<int>(lane); break;
        case kDown: source = in_segment + arg < width ? static_cast<int>(lane) + arg : static_cast<int>(lane); break;
        case kXor: {
            int x = static_cast<int>(lane) ^ arg;
            source = (x >= segment + width || x < segment) ? static_cast<int>(lane) : x;
            break;
        }
    }
    w.values[lane] = bits;
    w.sources[lane] = source;
    w.arrived |= 1u << lane;
    if (w.arrived != mask) {
        suspend(State::AtWarp, line);
        return w.results[lane];
    }
    for (unsigned l = 0; l < 32; l++) {
        if (!((mask >> l) & 1u)) continue;
        int s = w.sources[l];
        if (!((mask >> s) & 1u))
            fail("shuffle at line " + std::to_string(line) + ": lane " + std::to_string(l) + " reads lane " +
                 std::to_string(s) + ", which is not in the mask (inactive lane)");
        w.results[l] = w.values[s];
        if (l != lane) b.fibers[first + l].state = State::Ready;
    }
    w.arrived = 0;
    return w.results[lane];
}

void* dynamic_shared() { return block->shared.data(); }

}  // namespace emu

// Runs one launch of `name`; returns 0, or 1 with a message in `err`.
extern "C" int emu_launch(const char* name, const unsigned grid[3], const unsigned threads[3], size_t shared_bytes,
                          void** args, char* err, size_t err_len) {
    using namespace emu;
    auto report = [&](const std::string& message) {
        std::snprintf(err, err_len, "%s", message.c_str());
        return 1;
    };
    const EmuKernel* kernel = nullptr;
    for (size_t i = 0; i < emu_kernel_count; i++) {
        if (std::strcmp(emu_kernels[i].name, name) == 0) kernel = &emu_kernels[i];
    }
    if (!kernel) return report(std::string("no emulated kernel named ") + name);
    unsigned n = threads[0] * threads[1] * threads[2];
    if (n == 0 || n > kMaxThreads) return report("block of " + std::to_string(n) + " threads (1 to 1024 allowed)");
    if (grid[0] == 0 || grid[1] == 0 || grid[2] == 0) return report("empty grid");
    Block b;
    b.invoke = kernel->invoke;
    b.args = args;
    b.shared.resize(shared_bytes);
    block = &b;
    block_dim = uint3{threads[0], threads[1], threads[2]};
    grid_dim = uint3{grid[0], grid[1], grid[2]};
    // Blocks run one at a time, last first: a real GPU promises no order, and
    // code that counts on blocks finishing in index order shows here.
    for (unsigned z = grid[2]; z-- > 0;)
        for (unsigned y = grid[1]; y-- > 0;)
            for (unsigned x = grid[0]; x-- > 0;) {
                block_idx = uint3{x, y, z};
                run_block(b);
                if (!b.error.empty()) {
                    char where[64];
                    std::snprintf(where, sizeof where, " (block (%u,%u,%u))", x, y, z);
                    block = nullptr;
                    return report(b.error + where);
                }
            }
    block = nullptr;
    return 0;
}

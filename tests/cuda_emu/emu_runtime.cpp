// Fiber scheduler behind tests/cuda_emu/cuda/device_api.cuh: one ucontext fiber per CUDA thread of the
// running CTA, switched round-robin at every barrier, so warp and CTA barriers behave as on a GPU
// (a thread waits until every thread of its warp / CTA has arrived). Single OS thread, deterministic.
#include <ucontext.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <vector>

#include "cuda/device_api.cuh"

namespace emu {
namespace {

constexpr size_t kStackBytes = 256 * 1024;
constexpr long kMaxSpins = 10'000'000;  // yields without the barrier opening: a deadlock

struct PendingCopy {
  void* dst;
  const void* src;
  int src_bytes;
};

struct Fiber {
  ucontext_t context;
  std::unique_ptr<char[]> stack;
  uint3 thread_idx;
  bool done = false;
  std::vector<std::vector<PendingCopy>> committed_groups;
  std::vector<PendingCopy> open_group;
};

struct Barrier {
  int arrived = 0;
  long generation = 0;
};

struct State {
  ucontext_t scheduler;
  std::vector<Fiber> fibers;
  size_t current = 0;
  uint3 block_idx{0, 0, 0};
  const std::function<void()>* body = nullptr;
  Barrier cta_barrier;
  std::vector<Barrier> warp_barriers;
  std::vector<uint32_t> warp_slot_table;
  std::vector<unsigned char> smem;
  bool late_copies = true;
};

State& state() {
  static State s;
  return s;
}

Fiber& current_fiber() { return state().fibers[state().current]; }

void yield() {
  State& s = state();
  swapcontext(&s.fibers[s.current].context, &s.scheduler);
}

void wait_at(Barrier& barrier, int participants, const char* what) {
  const long generation = barrier.generation;
  if (++barrier.arrived == participants) {
    barrier.arrived = 0;
    ++barrier.generation;
    return;
  }
  for (long spins = 0; barrier.generation == generation; ++spins) {
    if (spins > kMaxSpins) {
      std::fprintf(stderr, "emu: deadlock at %s (thread %u of block %u)\n", what, thread_idx().x, block_idx().x);
      std::abort();
    }
    yield();
  }
}

void copy_now(const PendingCopy& c) {
  std::memcpy(c.dst, c.src, static_cast<size_t>(c.src_bytes));
  std::memset(static_cast<char*>(c.dst) + c.src_bytes, 0, static_cast<size_t>(16 - c.src_bytes));
}

void fiber_main() {
  State& s = state();
  (*s.body)();
  Fiber& f = current_fiber();
  for (const auto& group : f.committed_groups) {
    for (const auto& c : group) copy_now(c);
  }
  f.done = true;
}  // returns to the scheduler through uc_link

}  // namespace

const uint3& thread_idx() { return current_fiber().thread_idx; }
const uint3& block_idx() { return state().block_idx; }

void syncthreads() { wait_at(state().cta_barrier, static_cast<int>(state().fibers.size()), "__syncthreads"); }

void warp_barrier() { wait_at(state().warp_barriers[thread_idx().x / 32], 32, "a warp operation"); }

uint32_t* warp_slots() { return &state().warp_slot_table[(thread_idx().x / 32) * 32 * kSlotWords]; }

unsigned char* dynamic_smem() { return state().smem.data(); }

void cp_async(void* dst, const void* src, int src_bytes) {
  if (src_bytes < 0 || src_bytes > 16) {
    std::fprintf(stderr, "emu: cp.async src-size %d outside [0, 16]\n", src_bytes);
    std::abort();
  }
  const PendingCopy c{dst, src, src_bytes};
  if (state().late_copies) {
    current_fiber().open_group.push_back(c);
  } else {
    copy_now(c);
  }
}

void cp_async_commit() {
  Fiber& f = current_fiber();
  f.committed_groups.push_back(std::move(f.open_group));
  f.open_group.clear();
}

void cp_async_wait(int pending_groups) {
  Fiber& f = current_fiber();
  while (static_cast<int>(f.committed_groups.size()) > pending_groups) {
    for (const auto& c : f.committed_groups.front()) copy_now(c);
    f.committed_groups.erase(f.committed_groups.begin());
  }
}

void run_grid(int64_t grid_ctas, int threads, size_t smem_bytes, const std::function<void()>& body) {
  if (threads % 32 != 0) {
    std::fprintf(stderr, "emu: block of %d threads is not whole warps\n", threads);
    std::abort();
  }
  State& s = state();
  s.body = &body;
  s.smem.assign(smem_bytes + 16, 0);
  s.warp_slot_table.assign(static_cast<size_t>(threads) * kSlotWords, 0);
  for (int64_t block = 0; block < grid_ctas; ++block) {
    s.block_idx = uint3{static_cast<unsigned>(block), 0, 0};
    std::fill(s.smem.begin(), s.smem.end(), 0xFF);
    s.cta_barrier = Barrier{};
    s.warp_barriers.assign(static_cast<size_t>(threads / 32), Barrier{});
    s.fibers.clear();
    s.fibers.resize(static_cast<size_t>(threads));
    for (int t = 0; t < threads; ++t) {
      Fiber& f = s.fibers[static_cast<size_t>(t)];
      f.stack.reset(new char[kStackBytes]);
      f.thread_idx = uint3{static_cast<unsigned>(t), 0, 0};
      getcontext(&f.context);
      f.context.uc_stack.ss_sp = f.stack.get();
      f.context.uc_stack.ss_size = kStackBytes;
      f.context.uc_link = &s.scheduler;
      makecontext(&f.context, fiber_main, 0);
    }
    for (size_t running = s.fibers.size(); running > 0;) {
      for (size_t t = 0; t < s.fibers.size(); ++t) {
        if (s.fibers[t].done) continue;
        s.current = t;
        swapcontext(&s.scheduler, &s.fibers[t].context);
        if (s.fibers[t].done) --running;
      }
    }
  }
}

void set_late_copies(bool late) { state().late_copies = late; }

}  // namespace emu

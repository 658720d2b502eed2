// Fiber scheduler behind tests/cuda_emu/cuda/device_api.cuh: one ucontext fiber per CUDA thread of the
// running CTA, single OS thread, deterministic. A fiber runs until it waits at a barrier (warp or CTA)
// that is still closed; the scheduler then resumes another runnable fiber, chosen by the policy:
//   kRoundRobin: the next runnable fiber after the current one (warps advance about in step);
//   kLowFirst / kHighFirst: the lowest / highest-numbered runnable fiber, so one warp runs as far
//   ahead of the others as the barriers allow, which exposes a missing __syncthreads between a
//   warp's reads of shared memory and another warp's overwrite of it.
// No runnable fiber while some are unfinished is a deadlock (e.g. __syncthreads in divergent code).
#include <ucontext.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <vector>

#include "cuda/device_api.cuh"

namespace emu {
namespace {

constexpr size_t kStackBytes = 256 * 1024;

struct PendingCopy {
  void* dst;
  const void* src;
  int src_bytes;
};

struct Barrier {
  int arrived = 0;
  long generation = 0;
};

struct Fiber {
  ucontext_t context;
  std::unique_ptr<char[]> stack;
  uint3 thread_idx;
  bool done = false;
  const Barrier* waiting_on = nullptr;  // runnable again once its generation moves past waiting_generation
  long waiting_generation = 0;
  long warp_ops = 0;  // warp operations so far: selects the exchange table
  std::vector<std::vector<PendingCopy>> committed_groups;
  std::vector<PendingCopy> open_group;

  bool runnable() const { return !done && (waiting_on == nullptr || waiting_on->generation != waiting_generation); }
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
  SchedulePolicy policy = SchedulePolicy::kRoundRobin;
};

State& state() {
  static State s;
  return s;
}

Fiber& current_fiber() { return state().fibers[state().current]; }

void wait_at(Barrier& barrier, int participants) {
  if (++barrier.arrived == participants) {
    barrier.arrived = 0;
    ++barrier.generation;
    return;
  }
  State& s = state();
  Fiber& f = s.fibers[s.current];
  f.waiting_on = &barrier;
  f.waiting_generation = barrier.generation;
  swapcontext(&f.context, &s.scheduler);  // resumed only once the barrier has opened
  f.waiting_on = nullptr;
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

// Index of the fiber to resume after `previous`, or fibers.size() if none is runnable.
size_t pick_next(const State& s, size_t previous) {
  const size_t n = s.fibers.size();
  for (size_t step = 0; step < n; ++step) {
    size_t t = 0;
    switch (s.policy) {
      case SchedulePolicy::kRoundRobin: t = (previous + 1 + step) % n; break;
      case SchedulePolicy::kLowFirst: t = step; break;
      case SchedulePolicy::kHighFirst: t = n - 1 - step; break;
    }
    if (s.fibers[t].runnable()) return t;
  }
  return n;
}

void run_cta(State& s) {
  size_t remaining = s.fibers.size();
  for (size_t next = pick_next(s, s.fibers.size() - 1); remaining > 0; next = pick_next(s, s.current)) {
    if (next == s.fibers.size()) {
      std::fprintf(stderr, "emu: deadlock in block %u: %zu threads wait at barriers that cannot open\n",
                   s.block_idx.x, remaining);
      std::abort();
    }
    s.current = next;
    swapcontext(&s.scheduler, &s.fibers[next].context);
    if (s.fibers[next].done) --remaining;
  }
}

}  // namespace

const uint3& thread_idx() { return current_fiber().thread_idx; }
const uint3& block_idx() { return state().block_idx; }

void syncthreads() { wait_at(state().cta_barrier, static_cast<int>(state().fibers.size())); }

const uint32_t* warp_exchange(const uint32_t* words, int count) {
  State& s = state();
  Fiber& f = current_fiber();
  const unsigned warp = f.thread_idx.x / 32, lane = f.thread_idx.x % 32;
  uint32_t* table = &s.warp_slot_table[(warp * 2 + static_cast<unsigned>(f.warp_ops++ % 2)) * 32 * kSlotWords];
  std::memcpy(&table[lane * kSlotWords], words, static_cast<size_t>(count) * 4);
  wait_at(s.warp_barriers[warp], 32);
  return table;
}

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

void configure(bool late_copies, SchedulePolicy policy) {
  state().late_copies = late_copies;
  state().policy = policy;
}

void run_grid(int64_t grid_ctas, int threads, size_t smem_bytes, const std::function<void()>& body) {
  if (threads % 32 != 0) {
    std::fprintf(stderr, "emu: block of %d threads is not whole warps\n", threads);
    std::abort();
  }
  State& s = state();
  s.body = &body;
  s.smem.assign(smem_bytes + 16, 0);
  s.warp_slot_table.assign(static_cast<size_t>(threads) * 2 * kSlotWords, 0);
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
    run_cta(s);
  }
}

}  // namespace emu

// The emulator links no CUDA runtime; the bindings' error path (check_launch) only needs this one call.
extern "C" const char* cudaGetErrorString(cudaError_t error) {
  static thread_local char message[48];
  std::snprintf(message, sizeof(message), "cudaError %d (emulated)", static_cast<int>(error));
  return message;
}

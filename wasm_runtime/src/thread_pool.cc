// Parallel loops for the CPU model library in the browser and Node (AAE's own code).
//
// TVM compiles a `parallel` loop into a closure and a call to TVMBackendParallelLaunch. TVM's web
// runtime defines that as "run task 0 of 1", so every loop ran on one thread. Here the launch
// splits the loop across the calling thread and `num_workers` compute threads: Web Workers (or
// Node worker_threads) that instantiate the same module on the same shared WebAssembly.Memory and
// sit in AAEThreadPoolWorkerLoop (web/src/wasm_threads.ts starts them).
//
// Only the kernels' closures run on the compute threads. They touch their arguments, their own
// stack and, for a buffer allocated inside a parallel loop, TVM's workspace: nothing else of the
// C++ runtime. That is what makes it safe to link the runtime's single-threaded libc into a
// shared-memory module, once the workspace calls hold a lock (below): TVM's workspace pool is a
// thread-local that single-threaded code compiles to one global, and it calls malloc. With no workers (a page
// that is not cross-origin isolated, or an unshared memory) every launch runs on the caller, as
// before.
//
// The launching thread never blocks in memory.atomic.wait (a browser's main thread may not); it
// runs task 0 itself and then spins until the others are done. Compute threads spin for a short
// while after each task, then sleep on the launch counter.

#include <emscripten/emscripten.h>
#include <stdint.h>

#include <atomic>

extern "C" {

typedef struct {
  void* sync_handle;
  int32_t num_task;
} TVMParallelGroupEnv;

typedef int (*FTVMParallelLambda)(int task_id, TVMParallelGroupEnv* penv, void* cdata);

int TVMBackendParallelLaunch(FTVMParallelLambda flambda, void* cdata, int num_task);
void* TVMBackendAllocWorkspace(int device_type, int device_id, uint64_t size, int dtype_code_hint, int dtype_bits_hint);
int TVMBackendFreeWorkspace(int device_type, int device_id, void* ptr);
// TVM's own definitions, renamed by compiler/wasm_runtime_patches.py.
void* TVMBackendAllocWorkspaceUnlocked(int device_type, int device_id, uint64_t size, int dtype_code_hint,
                                       int dtype_bits_hint);
int TVMBackendFreeWorkspaceUnlocked(int device_type, int device_id, void* ptr);
int TVMBackendParallelBarrier(int task_id, TVMParallelGroupEnv* penv);
int AAEThreadPoolSetWorkers(int num_workers);
int AAEThreadPoolReadyCount(void);
void AAEThreadPoolWorkerLoop(int worker_index);
void AAEThreadPoolStop(void);
void AAEThreadPoolWorkerFailed(void);
void TVMFFIErrorSetRaisedFromCStr(const char* kind, const char* message);
}

namespace {

// About 20-50 us of polling on a 2020s core: long enough to catch the next kernel of a decode
// step (they follow each other within microseconds), short enough not to burn a core when idle.
constexpr int kSpinsBeforeSleep = 1 << 14;

struct ThreadPool {
  // Bumped once per launch; compute threads wait on it (it is the futex word).
  std::atomic<int32_t> launch{0};
  // Compute threads that have not yet finished the current launch.
  std::atomic<int32_t> pending{0};
  std::atomic<int32_t> stop{0};
  // Compute threads that have entered their loop. The JS side waits for all of them before it
  // calls AAEThreadPoolSetWorkers, so each has read `launch` before the first launch bumps it.
  std::atomic<int32_t> ready{0};
  // Set while a launch is running: a parallel loop inside a task runs serially.
  std::atomic<int32_t> busy{0};
  // Barrier: arrivals in this round, and the round number (sense reversal).
  std::atomic<int32_t> barrier_arrived{0};
  std::atomic<int32_t> barrier_round{0};
  std::atomic<int32_t> first_error{0};
  // Set when a compute thread died (a trap in a kernel): launches stop waiting for it.
  std::atomic<int32_t> failed{0};

  // Written by the launcher before `launch` is bumped (release), read after it (acquire).
  FTVMParallelLambda fn = nullptr;
  void* cdata = nullptr;
  TVMParallelGroupEnv env{nullptr, 1};
  int32_t num_workers = 0;
};

ThreadPool pool;

// Serialises TVM's workspace pool (and the malloc under it) between the threads of a launch.
std::atomic<int32_t> workspace_lock{0};

struct WorkspaceGuard {
  WorkspaceGuard() {
    int32_t free = 0;
    while (!workspace_lock.compare_exchange_weak(free, 1, std::memory_order_acquire)) free = 0;
  }
  ~WorkspaceGuard() { workspace_lock.store(0, std::memory_order_release); }
};

void RunTask(int task_id) {
  int rc = pool.fn(task_id, &pool.env, pool.cdata);
  if (rc != 0) {
    int32_t none = 0;
    pool.first_error.compare_exchange_strong(none, rc);
  }
}

}  // namespace

extern "C" {

EMSCRIPTEN_KEEPALIVE void* TVMBackendAllocWorkspace(int device_type, int device_id, uint64_t size, int dtype_code_hint,
                                                     int dtype_bits_hint) {
  WorkspaceGuard guard;
  return TVMBackendAllocWorkspaceUnlocked(device_type, device_id, size, dtype_code_hint, dtype_bits_hint);
}

EMSCRIPTEN_KEEPALIVE int TVMBackendFreeWorkspace(int device_type, int device_id, void* ptr) {
  WorkspaceGuard guard;
  return TVMBackendFreeWorkspaceUnlocked(device_type, device_id, ptr);
}

// How many compute threads have entered AAEThreadPoolWorkerLoop.
EMSCRIPTEN_KEEPALIVE int AAEThreadPoolReadyCount(void) { return pool.ready.load(std::memory_order_acquire); }

// How many compute threads launches use (0: every loop runs on the caller). Call it only once
// that many are ready.
EMSCRIPTEN_KEEPALIVE int AAEThreadPoolSetWorkers(int num_workers) {
  pool.num_workers = num_workers < 0 ? 0 : num_workers;
  return pool.num_workers;
}

EMSCRIPTEN_KEEPALIVE int TVMBackendParallelLaunch(FTVMParallelLambda flambda, void* cdata, int num_task) {
  int32_t workers = pool.num_workers;
  int32_t not_busy = 0;
  if (workers == 0 || !pool.busy.compare_exchange_strong(not_busy, 1)) {
    // No compute threads, or a parallel loop inside a task: run it here, as one task.
    TVMParallelGroupEnv env{nullptr, 1};
    return flambda(0, &env, cdata);
  }
  int32_t tasks = workers + 1;
  if (num_task > 0 && num_task < tasks) tasks = num_task;
  pool.fn = flambda;
  pool.cdata = cdata;
  pool.env.num_task = tasks;
  pool.first_error.store(0, std::memory_order_relaxed);
  pool.pending.store(workers, std::memory_order_relaxed);
  pool.launch.fetch_add(1, std::memory_order_release);
  __builtin_wasm_memory_atomic_notify(reinterpret_cast<int32_t*>(&pool.launch), workers);
  RunTask(0);
  while (pool.pending.load(std::memory_order_acquire) > 0 && !pool.failed.load(std::memory_order_acquire)) {
  }
  pool.busy.store(0, std::memory_order_release);
  if (pool.failed.load(std::memory_order_acquire)) {
    pool.num_workers = 0;  // from now on every loop runs here
    TVMFFIErrorSetRaisedFromCStr("RuntimeError",
                                 "a compute thread of the CPU library failed (its error is in the console); reload the model");
    return -1;
  }
  return pool.first_error.load(std::memory_order_relaxed);
}

EMSCRIPTEN_KEEPALIVE int TVMBackendParallelBarrier(int task_id, TVMParallelGroupEnv* penv) {
  int32_t round = pool.barrier_round.load(std::memory_order_acquire);
  if (pool.barrier_arrived.fetch_add(1, std::memory_order_acq_rel) + 1 == penv->num_task) {
    pool.barrier_arrived.store(0, std::memory_order_relaxed);
    pool.barrier_round.fetch_add(1, std::memory_order_release);
  } else {
    while (pool.barrier_round.load(std::memory_order_acquire) == round) {
    }
  }
  return 0;
}

// A compute thread's life: wait for a launch, run its task (index + 1; task 0 is the
// launcher's) if the launch has that many, report, repeat until AAEThreadPoolStop.
EMSCRIPTEN_KEEPALIVE void AAEThreadPoolWorkerLoop(int worker_index) {
  int32_t seen = pool.launch.load(std::memory_order_acquire);
  pool.ready.fetch_add(1, std::memory_order_acq_rel);
  while (true) {
    int32_t now = seen;
    for (int spin = 0; now == seen; ++spin) {
      if (pool.stop.load(std::memory_order_relaxed)) return;
      if (spin >= kSpinsBeforeSleep) {
        // Returns at once if `launch` moved on since it was read; wakes on the launcher's notify.
        __builtin_wasm_memory_atomic_wait32(reinterpret_cast<int32_t*>(&pool.launch), seen, -1);
        spin = 0;
      }
      now = pool.launch.load(std::memory_order_acquire);
    }
    seen = now;
    int task_id = worker_index + 1;
    if (task_id < pool.env.num_task) RunTask(task_id);
    pool.pending.fetch_sub(1, std::memory_order_acq_rel);
  }
}

// Called by a compute thread's JS when its loop ended in a trap: the launch waiting on it fails
// with an error instead of spinning forever.
EMSCRIPTEN_KEEPALIVE void AAEThreadPoolWorkerFailed(void) { pool.failed.store(1, std::memory_order_release); }

// Ends every AAEThreadPoolWorkerLoop (when the model is unloaded).
EMSCRIPTEN_KEEPALIVE void AAEThreadPoolStop(void) {
  pool.stop.store(1, std::memory_order_release);
  __builtin_wasm_memory_atomic_notify(reinterpret_cast<int32_t*>(&pool.launch), -1);
}

}  // extern "C"

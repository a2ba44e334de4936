// webrt's thread pool for TVM's parallel loops in a CPU model library (`webrt compile --device wasm`).
//
// TVM's web runtime runs `TVMBackendParallelLaunch` as one task. The library is linked with
// `--wrap=TVMBackendParallelLaunch` (and the workspace pair), so the kernels call the functions
// below instead. Until the host starts a pool they call TVM's own (one thread). With a pool, the
// calling thread publishes the job in shared memory, wakes the workers, runs task 0 itself and
// waits until every worker has run its task. A worker is another instance of the same module on
// the same shared memory (the same function table, so `flambda` means the same code there) that
// calls `webrt_worker_loop(index)` on its own stack (`webrt_pool_stack_top`).
//
// Only the thread that started the pool may allocate from dlmalloc or TVM's workspace pool
// (neither is thread-safe here): a worker's `TVMBackendAllocWorkspace` takes from its own arena.
// Waits are bounded: a worker that does not finish its task within the timeout turns the pool off
// and fails the call with a TVM error, which the host raises as an exception.
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

typedef struct {
  void* sync_handle;
  int32_t num_task;
} TVMParallelGroupEnv;
typedef int (*FTVMParallelLambda)(int task_id, TVMParallelGroupEnv* penv, void* cdata);

int __real_TVMBackendParallelLaunch(FTVMParallelLambda flambda, void* cdata, int num_task);
void* __real_TVMBackendAllocWorkspace(int device_type, int device_id, uint64_t nbytes, int dtype_code_hint,
                                      int dtype_bits_hint);
int __real_TVMBackendFreeWorkspace(int device_type, int device_id, void* ptr);
void TVMFFIErrorSetRaisedFromCStr(const char* kind, const char* message);

#define WEBRT_MAX_THREADS 16
#define WEBRT_ARENA_ALIGN 64
#define EXPORT(name) __attribute__((export_name(name), used))

typedef struct {
  int32_t num_threads;      // threads in the pool, the caller included (1: no pool)
  int32_t active;           // 1 once every worker is in its loop
  int32_t caller_may_block; // 0 where the caller must not block (a window's main thread): spin only
  int32_t spin;             // polls before a thread blocks
  int32_t timeout_ms;       // longest wait for the workers' share of one parallel loop
  int32_t generation;       // bumped for each job (and to stop); workers wait on it
  int32_t remaining;        // workers still running the current job; the caller waits on it
  int32_t stop;
  int32_t failed;           // a worker's task returned non-zero
  int32_t launches;         // parallel loops run on the pool
  FTVMParallelLambda flambda;
  void* cdata;
  TVMParallelGroupEnv env;
  int32_t in_loop[WEBRT_MAX_THREADS];
  int32_t tasks_run[WEBRT_MAX_THREADS];
  uintptr_t stack_lo[WEBRT_MAX_THREADS], stack_hi[WEBRT_MAX_THREADS];
  uintptr_t arena_base[WEBRT_MAX_THREADS];
  uint32_t arena_size[WEBRT_MAX_THREADS], arena_top[WEBRT_MAX_THREADS];
} Pool;

static Pool pool = {.num_threads = 1};

static int32_t load(int32_t* p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
static void store(int32_t* p, int32_t v) { __atomic_store_n(p, v, __ATOMIC_SEQ_CST); }

// The pool index of the running thread: 0 for the thread that started the pool, else the worker
// whose stack holds this frame (each instance has its own __stack_pointer).
static int current_thread(void) {
  volatile int marker = 0;
  uintptr_t sp = (uintptr_t)&marker;
  for (int i = 1; i < pool.num_threads; i++) {
    if (sp >= pool.stack_lo[i] && sp < pool.stack_hi[i]) return i;
  }
  return 0;
}

// Wait until *addr != value: poll `spin` times, then block (or keep polling where blocking is not
// allowed). Returns 0, or -1 when `timeout_ms` passed (0: no limit).
static int wait_while(int32_t* addr, int32_t value, int may_block, int32_t timeout_ms) {
  for (int32_t i = 0; i < pool.spin; i++) {
    if (load(addr) != value) return 0;
  }
  const int64_t slice_ns = 1000000;  // 1 ms per blocking wait, so the timeout is counted
  int64_t waited_ns = 0, polls = 0;
  while (load(addr) == value) {
    if (may_block) {
      __builtin_wasm_memory_atomic_wait32(addr, value, timeout_ms ? slice_ns : -1);
      waited_ns += slice_ns;
    } else if (++polls % 1024 == 0) {
      waited_ns += 10000;  // ~10 us per 1024 polls: a rough clock for the timeout
    }
    if (timeout_ms && waited_ns >= (int64_t)timeout_ms * 1000000) return load(addr) != value ? 0 : -1;
  }
  return 0;
}

// Run task `index` of the current job. The job's fields are read with atomic loads: plain loads
// here were seen to miss the job on a worker in node 20 (its task skipped, its count not kept).
static void run_task(int index) {
  int32_t num_task = load(&pool.env.num_task);
  FTVMParallelLambda flambda = (FTVMParallelLambda)(uintptr_t)load((int32_t*)&pool.flambda);
  void* cdata = (void*)(uintptr_t)load((int32_t*)&pool.cdata);
  if (index < num_task) {
    if (flambda(index, &pool.env, cdata) != 0) store(&pool.failed, 1);
    __atomic_add_fetch(&pool.tasks_run[index], 1, __ATOMIC_SEQ_CST);
  }
}

int __wrap_TVMBackendParallelLaunch(FTVMParallelLambda flambda, void* cdata, int num_task) {
  if (!load(&pool.active) || current_thread() != 0) return __real_TVMBackendParallelLaunch(flambda, cdata, num_task);
  int32_t workers = pool.num_threads - 1;
  store((int32_t*)&pool.flambda, (int32_t)(uintptr_t)flambda);
  store((int32_t*)&pool.cdata, (int32_t)(uintptr_t)cdata);
  pool.env.sync_handle = NULL;
  store(&pool.env.num_task, pool.num_threads);
  store(&pool.failed, 0);
  store(&pool.remaining, workers);
  __atomic_add_fetch(&pool.generation, 1, __ATOMIC_SEQ_CST);
  __builtin_wasm_memory_atomic_notify(&pool.generation, workers);
  run_task(0);
  pool.launches++;
  int32_t left;
  while ((left = load(&pool.remaining)) != 0) {
    if (wait_while(&pool.remaining, left, pool.caller_may_block, pool.timeout_ms) != 0) {
      store(&pool.active, 0);
      TVMFFIErrorSetRaisedFromCStr("RuntimeError",
                                   "webrt thread pool: a worker thread did not finish its part of a parallel loop "
                                   "in time (it stopped or never started); threads are now off and this call's "
                                   "state is lost: reload the model (with one thread if it happens again)");
      return -1;
    }
  }
  if (load(&pool.failed)) {
    TVMFFIErrorSetRaisedFromCStr("RuntimeError", "webrt thread pool: a kernel task failed on a worker thread "
                                                 "(out of its workspace arena?)");
    return -1;
  }
  return 0;
}

void* __wrap_TVMBackendAllocWorkspace(int device_type, int device_id, uint64_t nbytes, int dtype_code_hint,
                                      int dtype_bits_hint) {
  int t = current_thread();
  if (t == 0) return __real_TVMBackendAllocWorkspace(device_type, device_id, nbytes, dtype_code_hint, dtype_bits_hint);
  uint64_t top = pool.arena_top[t], size = (nbytes + WEBRT_ARENA_ALIGN - 1) & ~(uint64_t)(WEBRT_ARENA_ALIGN - 1);
  if (top + size > pool.arena_size[t]) return NULL;
  pool.arena_top[t] = (uint32_t)(top + size);
  return (void*)(pool.arena_base[t] + top);
}

int __wrap_TVMBackendFreeWorkspace(int device_type, int device_id, void* ptr) {
  int t = current_thread();
  if (t == 0) return __real_TVMBackendFreeWorkspace(device_type, device_id, ptr);
  uintptr_t p = (uintptr_t)ptr;
  if (p >= pool.arena_base[t] && p < pool.arena_base[t] + pool.arena_size[t]) {
    pool.arena_top[t] = (uint32_t)(p - pool.arena_base[t]);  // workspaces are freed in reverse order
  }
  return 0;
}

// --- the host's side ---------------------------------------------------------------------------

// Allocate the stacks and arenas of `num_threads - 1` workers (from the calling thread's heap).
// Returns 0, or -1 for a bad count or when memory runs out.
EXPORT("webrt_pool_init")
int webrt_pool_init(int num_threads, int caller_may_block, uint32_t stack_bytes, uint32_t arena_bytes,
                    int spin, int timeout_ms) {
  if (num_threads < 1 || num_threads > WEBRT_MAX_THREADS || load(&pool.active)) return -1;
  for (int i = 1; i < num_threads; i++) {
    void* stack = malloc(stack_bytes);
    void* arena = malloc(arena_bytes + WEBRT_ARENA_ALIGN);
    if (stack == NULL || arena == NULL) return -1;
    pool.stack_lo[i] = (uintptr_t)stack;
    pool.stack_hi[i] = ((uintptr_t)stack + stack_bytes) & ~(uintptr_t)15;
    pool.arena_base[i] = ((uintptr_t)arena + WEBRT_ARENA_ALIGN - 1) & ~(uintptr_t)(WEBRT_ARENA_ALIGN - 1);
    pool.arena_size[i] = arena_bytes;
    pool.arena_top[i] = 0;
    pool.in_loop[i] = 0;
    pool.tasks_run[i] = 0;
  }
  pool.tasks_run[0] = 0;
  pool.caller_may_block = caller_may_block;
  pool.spin = spin;
  pool.timeout_ms = timeout_ms;
  store(&pool.stop, 0);
  store(&pool.num_threads, num_threads);
  return 0;
}

// The stack pointer worker `index` starts with (pass it to the worker instance's stackRestore).
EXPORT("webrt_pool_stack_top")
uintptr_t webrt_pool_stack_top(int index) { return pool.stack_hi[index]; }

// A worker's life: run each job's task `index` until the pool stops.
EXPORT("webrt_worker_loop")
void webrt_worker_loop(int index) {
  if (index < 1 || index >= pool.num_threads) return;
  int32_t seen = load(&pool.generation);
  store(&pool.in_loop[index], 1);
  __builtin_wasm_memory_atomic_notify(&pool.in_loop[index], 1);
  for (;;) {
    wait_while(&pool.generation, seen, 1, 0);
    seen = load(&pool.generation);
    if (load(&pool.stop)) break;
    run_task(index);
    if (__atomic_sub_fetch(&pool.remaining, 1, __ATOMIC_SEQ_CST) == 0) {
      __builtin_wasm_memory_atomic_notify(&pool.remaining, 1);
    }
  }
  store(&pool.in_loop[index], 0);
}

// How many workers are in their loop now.
EXPORT("webrt_pool_ready")
int webrt_pool_ready(void) {
  int n = 0;
  for (int i = 1; i < pool.num_threads; i++) n += load(&pool.in_loop[i]);
  return n;
}

// Turn the pool on (every worker must be in its loop): parallel loops run on all threads from now.
EXPORT("webrt_pool_start")
int webrt_pool_start(void) {
  if (pool.num_threads < 2 || webrt_pool_ready() != pool.num_threads - 1) return -1;
  store(&pool.active, 1);
  return 0;
}

// Stop the workers (their loops return) and go back to one thread.
EXPORT("webrt_pool_stop")
void webrt_pool_stop(void) {
  store(&pool.active, 0);
  store(&pool.stop, 1);
  __atomic_add_fetch(&pool.generation, 1, __ATOMIC_SEQ_CST);
  __builtin_wasm_memory_atomic_notify(&pool.generation, WEBRT_MAX_THREADS);
}

// Threads the parallel loops run on now (1 without an active pool).
EXPORT("webrt_pool_threads")
int webrt_pool_threads(void) { return load(&pool.active) ? pool.num_threads : 1; }

// Tasks thread `index` has run since the pool was initialised, and parallel loops run on the pool.
EXPORT("webrt_pool_tasks_run")
int webrt_pool_tasks_run(int index) {
  return index >= 0 && index < WEBRT_MAX_THREADS ? __atomic_load_n(&pool.tasks_run[index], __ATOMIC_SEQ_CST) : -1;
}

EXPORT("webrt_pool_launches")
int webrt_pool_launches(void) { return pool.launches; }

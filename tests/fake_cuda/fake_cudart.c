// SPDX-License-Identifier: Apache-2.0
// A stand-in for libcudart on machines without a GPU: a small emulation of the CUDA runtime in which device memory
// is host memory the CPU cannot touch through a device pointer, and every stream is an in-order queue run by a worker thread of its own, each operation lagging
// TM_FAKE_CUDA_OP_US microseconds (default 300) behind the host, so that a program's stream-ordering mistakes
// (a copy read before it has run, a region snapshot taken while a write is in flight) show as wrong bytes.
// Loaded with LD_PRELOAD by the tests (soname libcudart.so.12, so the shim's dlopen(RTLD_NOLOAD) finds it).
// Never installed, never linked against.
//
// What it emulates:
//   cudaMalloc/cudaFree            memory the CPU cannot touch, as a GPU's: the pointer returned is a PROT_NONE
//                                  mapping of a memfd, which the stream operations reach through a second, writable
//                                  mapping of the same pages (filled with 0xA5 at allocation). A load or store through
//                                  a device pointer faults (SIGSEGV), process_vm_readv of it fails (EFAULT), as with
//                                  real device memory; a registry maps one to the other and answers
//                                  cudaPointerGetAttributes (cudaMemoryTypeDevice inside an allocation, Unregistered
//                                  outside).
//   streams                        in-order queues of copies, event records and event waits. NULL,
//                                  cudaStreamLegacy and cudaStreamPerThread are one built-in default stream;
//                                  simplification: it has no implicit synchronisation with the other streams.
//   events                         a generation counter each: a record bumps `recorded` when enqueued and sets
//                                  `done` when its stream executes it; a wait captures `recorded` at call time.
//   cudaMemcpy                     enqueued on the default stream, returns once executed.
//   cudaStreamIsCapturing          every stream reports an active capture when TM_FAKE_CAPTURE=1.
//   devices                        TM_FAKE_CUDA_DEVICES of them (default 1); cudaSetDevice/cudaGetDevice keep the
//                                  calling thread's current one, memory remembers its device, and
//                                  tmFakeCudaSynchronizes(d) counts the cudaDeviceSynchronize calls made with d
//                                  current. Streams and copies are the same whatever the device.
// Every host wait (synchronize calls) and every wait of a stream on an event aborts the process after 60 s
// rather than hang a test silently.
#include <cuda_runtime_api.h>
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define FAKE_EXPORT __attribute__((visibility("default")))

enum { kWaitDeadlineSeconds = 60 };
// How often an idle worker wakes up on its own: an idle queue is not a hang, the wake-up only bounds the wait.
enum { kIdleWakeSeconds = 5 };
enum { kAllocationAlignment = 256 };  // what cudaMalloc guarantees
enum { kUninitialisedByte = 0xA5 };

// ---- Deadlines ---------------------------------------------------------------------------------------------------

static struct timespec DeadlineIn(int seconds) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  t.tv_sec += seconds;
  return t;
}

// Condition variables on CLOCK_MONOTONIC, so a wall-clock step neither shortens nor stretches a deadline.
static void InitMonotonicCond(pthread_cond_t* cond) {
  pthread_condattr_t attr;
  pthread_condattr_init(&attr);
  pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
  pthread_cond_init(cond, &attr);
  pthread_condattr_destroy(&attr);
}

// Waits on cond (mu held); aborts the process naming `what` once the deadline has passed.
static void WaitOrAbort(pthread_cond_t* cond, pthread_mutex_t* mu, const struct timespec* deadline, const char* what) {
  if (pthread_cond_timedwait(cond, mu, deadline) == ETIMEDOUT) {
    fprintf(stderr, "fake libcudart: %s did not finish within %d s; aborting (a stream-ordering deadlock?)\n", what,
            kWaitDeadlineSeconds);
    abort();
  }
}

// ---- Configuration -----------------------------------------------------------------------------------------------

static pthread_once_t g_config_once = PTHREAD_ONCE_INIT;
static useconds_t g_op_delay_us = 300;
enum { kMaxDevices = 8 };
static int g_devices = 1;  // TM_FAKE_CUDA_DEVICES

// The value of `name` in lo..hi, or `fallback` when unset; aborts on anything else.
static long long ReadBounded(const char* name, long long lo, long long hi, long long fallback) {
  const char* v = getenv(name);
  if (v == NULL || *v == '\0') return fallback;
  char* end = NULL;
  errno = 0;
  long long x = strtoll(v, &end, 10);
  if (*end != '\0' || errno != 0 || x < lo || x > hi) {
    fprintf(stderr, "fake libcudart: %s: expected %lld..%lld, got '%s'\n", name, lo, hi, v);
    abort();
  }
  return x;
}

static void ReadConfig(void) {
  g_op_delay_us = (useconds_t)ReadBounded("TM_FAKE_CUDA_OP_US", 0, 10 * 1000 * 1000, 300);
  g_devices = (int)ReadBounded("TM_FAKE_CUDA_DEVICES", 1, kMaxDevices, 1);
}

static useconds_t OpDelayUs(void) {
  pthread_once(&g_config_once, ReadConfig);
  return g_op_delay_us;
}

static int Devices(void) {
  pthread_once(&g_config_once, ReadConfig);
  return g_devices;
}

// The calling thread's current device (cudaSetDevice), as CUDA's: per thread, 0 in a new thread. Memory remembers the
// device it was allocated on, and cudaDeviceSynchronize counts per device (tmFakeCudaSynchronizes); the streams and
// the copies themselves do not depend on it.
static __thread int t_device = 0;
static long g_synchronizes[kMaxDevices];  // under g_streams_mu

// ---- Device memory -----------------------------------------------------------------------------------------------

typedef struct {
  uintptr_t base;   // the device pointer: PROT_NONE
  char* shadow;     // the same pages, readable and writable: where the stream operations copy
  size_t size;      // as asked
  size_t mapped;    // size rounded up to pages
  int device;       // the allocating thread's current device
} Allocation;

static pthread_mutex_t g_alloc_mu = PTHREAD_MUTEX_INITIALIZER;
static Allocation* g_allocs;
static size_t g_alloc_count, g_alloc_capacity;

FAKE_EXPORT cudaError_t cudaMalloc(void** dev_ptr, size_t size) {
  if (dev_ptr == NULL) return cudaErrorInvalidValue;
  *dev_ptr = NULL;
  if (size == 0) return cudaSuccess;  // as the real one: success, and a null pointer
  const size_t page = (size_t)sysconf(_SC_PAGESIZE);  // a multiple of what cudaMalloc guarantees (256)
  if (size > SIZE_MAX - page) return cudaErrorMemoryAllocation;  // the rounding would wrap
  const size_t mapped = (size + page - 1) / page * page;
  const int fd = memfd_create("fake-cuda-device-memory", MFD_CLOEXEC);
  if (fd < 0) return cudaErrorMemoryAllocation;
  void* shadow = MAP_FAILED;
  void* device = MAP_FAILED;
  if (ftruncate(fd, (off_t)mapped) == 0) {
    shadow = mmap(NULL, mapped, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    device = mmap(NULL, mapped, PROT_NONE, MAP_SHARED, fd, 0);
  }
  close(fd);
  if (shadow == MAP_FAILED || device == MAP_FAILED) {
    if (shadow != MAP_FAILED) munmap(shadow, mapped);
    if (device != MAP_FAILED) munmap(device, mapped);
    return cudaErrorMemoryAllocation;
  }
  memset(shadow, kUninitialisedByte, mapped);
  pthread_mutex_lock(&g_alloc_mu);
  if (g_alloc_count == g_alloc_capacity) {
    size_t capacity = g_alloc_capacity ? 2 * g_alloc_capacity : 16;
    Allocation* grown = realloc(g_allocs, capacity * sizeof(Allocation));
    if (grown == NULL) {
      pthread_mutex_unlock(&g_alloc_mu);
      munmap(shadow, mapped);
      munmap(device, mapped);
      return cudaErrorMemoryAllocation;
    }
    g_allocs = grown;
    g_alloc_capacity = capacity;
  }
  g_allocs[g_alloc_count++] = (Allocation){(uintptr_t)device, shadow, size, mapped, t_device};
  pthread_mutex_unlock(&g_alloc_mu);
  *dev_ptr = device;
  return cudaSuccess;
}

// The allocation holding p, or false (g_alloc_mu held).
static bool FindAllocationLocked(const void* p, size_t* index) {
  uintptr_t a = (uintptr_t)p;
  for (size_t i = 0; i < g_alloc_count; ++i) {
    if (a >= g_allocs[i].base && a < g_allocs[i].base + g_allocs[i].size) {
      *index = i;
      return true;
    }
  }
  return false;
}

// Where a stream operation reaches `p`: the writable mapping of a device pointer's pages, a host pointer as it is.
static void* Reach(const void* p) {
  pthread_mutex_lock(&g_alloc_mu);
  size_t i;
  void* out = (void*)p;
  if (p != NULL && FindAllocationLocked(p, &i)) out = g_allocs[i].shadow + ((uintptr_t)p - g_allocs[i].base);
  pthread_mutex_unlock(&g_alloc_mu);
  return out;
}

FAKE_EXPORT cudaError_t cudaDeviceSynchronize(void);

FAKE_EXPORT cudaError_t cudaFree(void* dev_ptr) {
  if (dev_ptr == NULL) return cudaSuccess;
  // The real cudaFree synchronises the device; here it also keeps a queued copy from touching freed memory.
  cudaDeviceSynchronize();
  pthread_mutex_lock(&g_alloc_mu);
  size_t i;
  bool found = FindAllocationLocked(dev_ptr, &i) && g_allocs[i].base == (uintptr_t)dev_ptr;
  Allocation gone = {0, NULL, 0, 0, 0};
  if (found) {
    gone = g_allocs[i];
    g_allocs[i] = g_allocs[--g_alloc_count];
  }
  pthread_mutex_unlock(&g_alloc_mu);
  if (!found) return cudaErrorInvalidValue;
  munmap(gone.shadow, gone.mapped);
  munmap(dev_ptr, gone.mapped);
  return cudaSuccess;
}

FAKE_EXPORT cudaError_t cudaPointerGetAttributes(struct cudaPointerAttributes* attributes, const void* ptr) {
  if (attributes == NULL) return cudaErrorInvalidValue;
  memset(attributes, 0, sizeof(*attributes));
  pthread_mutex_lock(&g_alloc_mu);
  size_t i;
  bool on_device = ptr != NULL && FindAllocationLocked(ptr, &i);
  const int device = on_device ? g_allocs[i].device : 0;
  pthread_mutex_unlock(&g_alloc_mu);
  if (on_device) {
    attributes->type = cudaMemoryTypeDevice;
    attributes->device = device;
    attributes->devicePointer = (void*)ptr;
    attributes->hostPointer = NULL;
  } else {
    attributes->type = cudaMemoryTypeUnregistered;  // CUDA 11+ on plain host memory: success, not an error
  }
  return cudaSuccess;
}

// ---- Events ------------------------------------------------------------------------------------------------------

// One mutex and condition variable for every event: event waits are rare and short, contention does not matter.
static pthread_mutex_t g_event_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_event_cond;
static pthread_once_t g_event_cond_once = PTHREAD_ONCE_INIT;

static void InitEventCond(void) { InitMonotonicCond(&g_event_cond); }

struct CUevent_st {
  uint64_t recorded;  // generation of the latest record enqueued
  uint64_t done;      // highest generation executed
  // The handle holds one reference and every queued record or wait another, so cudaEventDestroy with work still
  // queued (allowed by CUDA: the destruction is deferred) frees the event only when that work has run.
  int references;
};

static void ReleaseEventLocked(cudaEvent_t event) {
  if (--event->references == 0) free(event);
}

FAKE_EXPORT cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned int flags) {
  (void)flags;  // timing, blocking sync and interprocess flags change nothing here
  if (event == NULL) return cudaErrorInvalidValue;
  pthread_once(&g_event_cond_once, InitEventCond);
  cudaEvent_t e = calloc(1, sizeof(*e));
  if (e == NULL) return cudaErrorMemoryAllocation;
  e->references = 1;
  *event = e;
  return cudaSuccess;
}

FAKE_EXPORT cudaError_t cudaEventCreate(cudaEvent_t* event) { return cudaEventCreateWithFlags(event, 0); }

FAKE_EXPORT cudaError_t cudaEventDestroy(cudaEvent_t event) {
  if (event == NULL) return cudaErrorInvalidResourceHandle;
  pthread_mutex_lock(&g_event_mu);
  ReleaseEventLocked(event);
  pthread_mutex_unlock(&g_event_mu);
  return cudaSuccess;
}

FAKE_EXPORT cudaError_t cudaEventQuery(cudaEvent_t event) {
  if (event == NULL) return cudaErrorInvalidResourceHandle;
  pthread_mutex_lock(&g_event_mu);
  bool complete = event->done >= event->recorded;  // a never-recorded event counts as complete, as in CUDA
  pthread_mutex_unlock(&g_event_mu);
  return complete ? cudaSuccess : cudaErrorNotReady;
}

// Waits until `generation` of the event has executed (g_event_mu held).
static void WaitEventGenerationLocked(cudaEvent_t event, uint64_t generation, const char* what) {
  struct timespec deadline = DeadlineIn(kWaitDeadlineSeconds);
  while (event->done < generation) WaitOrAbort(&g_event_cond, &g_event_mu, &deadline, what);
}

FAKE_EXPORT cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  if (event == NULL) return cudaErrorInvalidResourceHandle;
  pthread_mutex_lock(&g_event_mu);
  WaitEventGenerationLocked(event, event->recorded, "cudaEventSynchronize");
  pthread_mutex_unlock(&g_event_mu);
  return cudaSuccess;
}

// ---- Streams -----------------------------------------------------------------------------------------------------

typedef enum { kOpCopy, kOpRecordEvent, kOpWaitEvent } OpKind;

typedef struct Op {
  OpKind kind;
  void* dst;  // kOpCopy
  const void* src;
  size_t bytes;
  cudaEvent_t event;    // kOpRecordEvent, kOpWaitEvent (holding a reference)
  uint64_t generation;  // the record's own generation, or the one a wait waits for
  struct Op* next;
} Op;

struct CUstream_st {
  pthread_mutex_t mu;
  pthread_cond_t cond;  // signalled on enqueue (wakes the worker), on execution (wakes synchronizers), on destroy
  Op* head;             // stays queued while it executes, so synchronizers see it as pending
  Op* tail;
  uint64_t enqueued;  // operations ever enqueued; an operation's ticket is the count after its enqueue
  uint64_t executed;  // operations ever executed
  bool worker_running;
  bool destroying;                  // set by cudaStreamDestroy once drained: the worker frees the stream and exits
  struct CUstream_st* next_stream;  // in g_streams
};

// Every live stream, the default one first; g_streams_mu is taken before any stream's mu, never after.
static pthread_mutex_t g_streams_mu = PTHREAD_MUTEX_INITIALIZER;
static struct CUstream_st g_default_stream = {.mu = PTHREAD_MUTEX_INITIALIZER};
static struct CUstream_st* g_streams = &g_default_stream;
static pthread_once_t g_default_once = PTHREAD_ONCE_INIT;

static void InitDefaultStream(void) { InitMonotonicCond(&g_default_stream.cond); }

// The stream a handle names: the special handles (NULL, cudaStreamLegacy, cudaStreamPerThread) are the default
// stream; anything else must be a live stream of ours (NULL otherwise).
static cudaStream_t Resolve(cudaStream_t handle) {
  pthread_once(&g_default_once, InitDefaultStream);
  if (handle == NULL || handle == cudaStreamLegacy || handle == cudaStreamPerThread) return &g_default_stream;
  pthread_mutex_lock(&g_streams_mu);
  cudaStream_t found = NULL;
  for (cudaStream_t s = g_streams; s != NULL; s = s->next_stream) {
    if (s == handle) found = s;
  }
  pthread_mutex_unlock(&g_streams_mu);
  return found;
}

static void ExecuteOp(const Op* op) {
  switch (op->kind) {
    case kOpCopy:
      memmove(Reach(op->dst), Reach(op->src), op->bytes);  // memmove: CUDA allows overlapping device-to-device copies
      break;
    case kOpRecordEvent:
      pthread_mutex_lock(&g_event_mu);
      if (op->event->done < op->generation) op->event->done = op->generation;
      pthread_cond_broadcast(&g_event_cond);
      pthread_mutex_unlock(&g_event_mu);
      break;
    case kOpWaitEvent:
      pthread_mutex_lock(&g_event_mu);
      WaitEventGenerationLocked(op->event, op->generation, "a stream's wait on an event (cudaStreamWaitEvent)");
      pthread_mutex_unlock(&g_event_mu);
      break;
  }
  if (op->kind != kOpCopy) {
    pthread_mutex_lock(&g_event_mu);
    ReleaseEventLocked(op->event);
    pthread_mutex_unlock(&g_event_mu);
  }
}

// One per stream, started with its first operation. Runs the queue in order; exits (freeing the stream) once
// cudaStreamDestroy has drained it.
static void* StreamWorker(void* arg) {
  cudaStream_t s = arg;
  const useconds_t delay_us = OpDelayUs();
  pthread_mutex_lock(&s->mu);
  for (;;) {
    if (s->head == NULL) {
      if (s->destroying) break;
      struct timespec wake = DeadlineIn(kIdleWakeSeconds);
      pthread_cond_timedwait(&s->cond, &s->mu, &wake);
      continue;
    }
    Op* op = s->head;
    pthread_mutex_unlock(&s->mu);
    if (delay_us > 0) usleep(delay_us);  // the lag that makes asynchronous work really asynchronous
    ExecuteOp(op);
    pthread_mutex_lock(&s->mu);
    s->head = op->next;
    if (s->head == NULL) s->tail = NULL;
    ++s->executed;
    free(op);
    pthread_cond_broadcast(&s->cond);
  }
  pthread_mutex_unlock(&s->mu);
  pthread_cond_destroy(&s->cond);
  pthread_mutex_destroy(&s->mu);
  free(s);
  return NULL;
}

// Starts the stream's worker if it has none (s->mu held). Aborts when no thread can be made: nothing queued
// would ever run.
static void EnsureWorkerLocked(cudaStream_t s) {
  if (s->worker_running) return;
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);  // process exit does not wait for workers
  pthread_t thread;
  int rc = pthread_create(&thread, &attr, StreamWorker, s);
  pthread_attr_destroy(&attr);
  if (rc != 0) {
    fprintf(stderr, "fake libcudart: cannot start a stream worker: %s\n", strerror(rc));
    abort();
  }
  s->worker_running = true;
}

// Appends op to the stream's queue and returns its ticket (the stream's `executed` count once it has run).
static uint64_t Enqueue(cudaStream_t s, Op* op) {
  op->next = NULL;
  pthread_mutex_lock(&s->mu);
  EnsureWorkerLocked(s);
  if (s->tail != NULL) {
    s->tail->next = op;
  } else {
    s->head = op;
  }
  s->tail = op;
  uint64_t ticket = ++s->enqueued;
  pthread_cond_broadcast(&s->cond);
  pthread_mutex_unlock(&s->mu);
  return ticket;
}

static void WaitForTicket(cudaStream_t s, uint64_t ticket, const char* what) {
  struct timespec deadline = DeadlineIn(kWaitDeadlineSeconds);
  pthread_mutex_lock(&s->mu);
  if (s->executed < ticket) EnsureWorkerLocked(s);  // a forked child's queue has no worker until now
  while (s->executed < ticket) WaitOrAbort(&s->cond, &s->mu, &deadline, what);
  pthread_mutex_unlock(&s->mu);
}

static void DrainStream(cudaStream_t s, const char* what) {
  pthread_mutex_lock(&s->mu);
  uint64_t ticket = s->enqueued;
  pthread_mutex_unlock(&s->mu);
  WaitForTicket(s, ticket, what);
}

FAKE_EXPORT cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int flags) {
  (void)flags;  // cudaStreamNonBlocking: the default stream never synchronises with others here anyway
  if (stream == NULL) return cudaErrorInvalidValue;
  pthread_once(&g_default_once, InitDefaultStream);
  cudaStream_t s = calloc(1, sizeof(*s));
  if (s == NULL) return cudaErrorMemoryAllocation;
  pthread_mutex_init(&s->mu, NULL);
  InitMonotonicCond(&s->cond);
  pthread_mutex_lock(&g_streams_mu);
  s->next_stream = g_default_stream.next_stream;
  g_default_stream.next_stream = s;
  pthread_mutex_unlock(&g_streams_mu);
  *stream = s;
  return cudaSuccess;
}

FAKE_EXPORT cudaError_t cudaStreamCreate(cudaStream_t* stream) { return cudaStreamCreateWithFlags(stream, 0); }

FAKE_EXPORT cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  cudaStream_t s = Resolve(stream);
  if (s == NULL || s == &g_default_stream) return cudaErrorInvalidResourceHandle;
  DrainStream(s, "cudaStreamDestroy's drain");
  pthread_mutex_lock(&g_streams_mu);
  for (cudaStream_t* link = &g_streams; *link != NULL; link = &(*link)->next_stream) {
    if (*link == s) {
      *link = s->next_stream;
      break;
    }
  }
  pthread_mutex_unlock(&g_streams_mu);
  pthread_mutex_lock(&s->mu);
  if (!s->worker_running) {
    pthread_mutex_unlock(&s->mu);
    pthread_cond_destroy(&s->cond);
    pthread_mutex_destroy(&s->mu);
    free(s);
    return cudaSuccess;
  }
  s->destroying = true;  // from here the worker owns the stream and frees it
  pthread_cond_broadcast(&s->cond);
  pthread_mutex_unlock(&s->mu);
  return cudaSuccess;
}

FAKE_EXPORT cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  cudaStream_t s = Resolve(stream);
  if (s == NULL) return cudaErrorInvalidResourceHandle;
  DrainStream(s, "cudaStreamSynchronize");
  return cudaSuccess;
}

FAKE_EXPORT cudaError_t cudaStreamQuery(cudaStream_t stream) {
  cudaStream_t s = Resolve(stream);
  if (s == NULL) return cudaErrorInvalidResourceHandle;
  pthread_mutex_lock(&s->mu);
  bool idle = s->executed == s->enqueued;
  if (!idle) EnsureWorkerLocked(s);  // a forked child's queue has no worker until now
  pthread_mutex_unlock(&s->mu);
  return idle ? cudaSuccess : cudaErrorNotReady;
}

FAKE_EXPORT cudaError_t cudaDeviceSynchronize(void) {
  pthread_once(&g_default_once, InitDefaultStream);
  // The list lock is held across the drains so that cudaStreamDestroy cannot unlink (and so cannot free) a stream
  // being waited on; workers never take it, so they keep running. Host threads that resolve a stream of their own
  // meanwhile wait for the device to drain, which the real cudaDeviceSynchronize does not impose: acceptable here.
  pthread_mutex_lock(&g_streams_mu);
  for (cudaStream_t s = g_streams; s != NULL; s = s->next_stream) DrainStream(s, "cudaDeviceSynchronize");
  ++g_synchronizes[t_device];
  pthread_mutex_unlock(&g_streams_mu);
  return cudaSuccess;
}

// Not part of CUDA: how many cudaDeviceSynchronize calls ran with `device` current (find it with dlsym).
FAKE_EXPORT long tmFakeCudaSynchronizes(int device) {
  if (device < 0 || device >= kMaxDevices) return -1;
  pthread_mutex_lock(&g_streams_mu);
  long n = g_synchronizes[device];
  pthread_mutex_unlock(&g_streams_mu);
  return n;
}

// A copy's arguments checked, and its operation made (*op stays NULL for an empty copy, which is done at once).
static cudaError_t NewCopy(void* dst, const void* src, size_t count, enum cudaMemcpyKind kind, Op** op) {
  *op = NULL;
  if ((int)kind < (int)cudaMemcpyHostToHost || (int)kind > (int)cudaMemcpyDefault)
    return cudaErrorInvalidMemcpyDirection;
  if (count > 0 && (dst == NULL || src == NULL)) return cudaErrorInvalidValue;
  if (count == 0) return cudaSuccess;
  if ((*op = calloc(1, sizeof(**op))) == NULL) return cudaErrorMemoryAllocation;
  (*op)->kind = kOpCopy;
  (*op)->dst = dst;
  (*op)->src = src;
  (*op)->bytes = count;
  return cudaSuccess;
}

FAKE_EXPORT cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, enum cudaMemcpyKind kind,
                                        cudaStream_t stream) {
  cudaStream_t s = Resolve(stream);
  if (s == NULL) return cudaErrorInvalidResourceHandle;
  Op* op = NULL;
  const cudaError_t e = NewCopy(dst, src, count, kind, &op);
  if (op != NULL) Enqueue(s, op);
  return e;
}

FAKE_EXPORT cudaError_t cudaMemcpy(void* dst, const void* src, size_t count, enum cudaMemcpyKind kind) {
  Op* op = NULL;
  const cudaError_t e = NewCopy(dst, src, count, kind, &op);
  // Synchronous as on the legacy stream: returns once the copy (and everything queued before it) has run.
  if (op != NULL) {
    cudaStream_t s = Resolve(NULL);
    WaitForTicket(s, Enqueue(s, op), "cudaMemcpy");
  }
  return e;
}

FAKE_EXPORT cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  if (event == NULL) return cudaErrorInvalidResourceHandle;
  cudaStream_t s = Resolve(stream);
  if (s == NULL) return cudaErrorInvalidResourceHandle;
  Op* op = calloc(1, sizeof(*op));
  if (op == NULL) return cudaErrorMemoryAllocation;
  op->kind = kOpRecordEvent;
  op->event = event;
  pthread_mutex_lock(&g_event_mu);
  op->generation = ++event->recorded;
  ++event->references;
  pthread_mutex_unlock(&g_event_mu);
  Enqueue(s, op);
  return cudaSuccess;
}

FAKE_EXPORT cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int flags) {
  (void)flags;
  if (event == NULL) return cudaErrorInvalidResourceHandle;
  cudaStream_t s = Resolve(stream);
  if (s == NULL) return cudaErrorInvalidResourceHandle;
  pthread_mutex_lock(&g_event_mu);
  const uint64_t generation = event->recorded;  // CUDA waits for the record that is the latest now
  if (generation > 0) ++event->references;
  pthread_mutex_unlock(&g_event_mu);
  if (generation == 0) return cudaSuccess;  // never recorded: nothing to wait for
  Op* op = calloc(1, sizeof(*op));
  if (op == NULL) {
    pthread_mutex_lock(&g_event_mu);
    ReleaseEventLocked(event);
    pthread_mutex_unlock(&g_event_mu);
    return cudaErrorMemoryAllocation;
  }
  op->kind = kOpWaitEvent;
  op->event = event;
  op->generation = generation;
  Enqueue(s, op);
  return cudaSuccess;
}

FAKE_EXPORT cudaError_t cudaStreamIsCapturing(cudaStream_t stream, enum cudaStreamCaptureStatus* status) {
  (void)stream;
  const char* v = getenv("TM_FAKE_CAPTURE");
  *status = (v && v[0] == '1') ? cudaStreamCaptureStatusActive : cudaStreamCaptureStatusNone;
  return cudaSuccess;
}

// ---- Fork --------------------------------------------------------------------------------------------------------

// A forked child has none of the parent's workers. Prepare takes every lock (list first, then each stream, then
// the registries: the order every other path takes them in) so the child copies consistent state; the child then
// marks every stream worker-less, and the next operation, query or synchronize on a stream with work queued starts
// a worker for it (not the fork handler itself: a child that only execs should not start threads). An operation a
// parent's worker was executing at the fork is still at the head of its queue and runs again in the child: copies and
// records are idempotent. The tests fork only to exec; this keeps a child that does not exec from hanging. Unlike
// CUDA, device memory allocated before the fork is shared with the child (the memfd mappings are MAP_SHARED): a child
// that writes it, or re-runs a copy into it, writes the parent's too; a test must not rely on either side's
// allocations after a fork (test_cuda_staged's leavers allocate their own, after it).
static void PrepareFork(void) {
  pthread_once(&g_default_once, InitDefaultStream);
  pthread_once(&g_event_cond_once, InitEventCond);
  pthread_mutex_lock(&g_streams_mu);
  for (cudaStream_t s = g_streams; s != NULL; s = s->next_stream) pthread_mutex_lock(&s->mu);
  pthread_mutex_lock(&g_event_mu);
  pthread_mutex_lock(&g_alloc_mu);
}

static void ParentAfterFork(void) {
  pthread_mutex_unlock(&g_alloc_mu);
  pthread_mutex_unlock(&g_event_mu);
  for (cudaStream_t s = g_streams; s != NULL; s = s->next_stream) pthread_mutex_unlock(&s->mu);
  pthread_mutex_unlock(&g_streams_mu);
}

static void ChildAfterFork(void) {
  // Condition variables are rebuilt too: the parent's workers were waiting on them at the fork, and glibc's
  // broadcast would wait forever for those waiters, which do not exist here.
  for (cudaStream_t s = g_streams; s != NULL; s = s->next_stream) {
    s->worker_running = false;
    InitMonotonicCond(&s->cond);
  }
  InitMonotonicCond(&g_event_cond);
  ParentAfterFork();
}

__attribute__((constructor)) static void RegisterForkHandlers(void) {
  pthread_atfork(PrepareFork, ParentAfterFork, ChildAfterFork);
}

// ---- Devices and the rest ----------------------------------------------------------------------------------------

FAKE_EXPORT cudaError_t cudaGetDeviceCount(int* count) {
  if (count == NULL) return cudaErrorInvalidValue;
  *count = Devices();
  return cudaSuccess;
}

FAKE_EXPORT cudaError_t cudaGetDevice(int* device) {
  if (device == NULL) return cudaErrorInvalidValue;
  *device = t_device;
  return cudaSuccess;
}

FAKE_EXPORT cudaError_t cudaSetDevice(int device) {
  if (device < 0 || device >= Devices()) return cudaErrorInvalidDevice;
  t_device = device;
  return cudaSuccess;
}

// Pinning changes nothing in host memory; the count lets a test see that registration happened.
static pthread_mutex_t g_host_register_mu = PTHREAD_MUTEX_INITIALIZER;
static long g_host_registrations;

FAKE_EXPORT cudaError_t cudaHostRegister(void* ptr, size_t size, unsigned int flags) {
  (void)flags;
  if (ptr == NULL || size == 0) return cudaErrorInvalidValue;
  pthread_mutex_lock(&g_host_register_mu);
  ++g_host_registrations;
  pthread_mutex_unlock(&g_host_register_mu);
  return cudaSuccess;
}

FAKE_EXPORT cudaError_t cudaHostUnregister(void* ptr) {
  if (ptr == NULL) return cudaErrorInvalidValue;
  pthread_mutex_lock(&g_host_register_mu);
  --g_host_registrations;
  pthread_mutex_unlock(&g_host_register_mu);
  return cudaSuccess;
}

// Not part of CUDA: the number of host ranges registered and not yet unregistered (find it with dlsym).
FAKE_EXPORT long tmFakeCudaHostRegistrations(void) {
  pthread_mutex_lock(&g_host_register_mu);
  long n = g_host_registrations;
  pthread_mutex_unlock(&g_host_register_mu);
  return n;
}

FAKE_EXPORT const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidValue:
      return "invalid argument";
    case cudaErrorMemoryAllocation:
      return "out of memory";
    case cudaErrorInvalidDevice:
      return "invalid device ordinal";
    case cudaErrorInvalidMemcpyDirection:
      return "invalid copy direction for memcpy";
    case cudaErrorInvalidResourceHandle:
      return "invalid resource handle";
    case cudaErrorNotReady:
      return "device not ready";
    default:
      return "unrecognized error code (fake libcudart)";
  }
}

// Errors are returned by each call and never left sticky.
FAKE_EXPORT cudaError_t cudaGetLastError(void) { return cudaSuccess; }
FAKE_EXPORT cudaError_t cudaPeekAtLastError(void) { return cudaSuccess; }

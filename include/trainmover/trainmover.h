/* SPDX-License-Identifier: Apache-2.0 */
/*
 * trainmover.h: the optional state contract between a training program and libtrainmover.
 *
 * NCCL sees communication, not training state. These calls tell the shim the two things it cannot see:
 * where an iteration ends (a safe point), and which memory holds the state a replacement process needs
 * (registered regions). Both are optional: a program that never calls them still gets every
 * communication feature of the shim, but a request to migrate one of its ranks is refused.
 *
 * Everything here is inline. The functions look up the shim's entry points (tmShim*) at run time with
 * dlsym(RTLD_DEFAULT), so a program never links against libtrainmover and runs unchanged without it:
 * when the shim is not loaded, tmSafePoint returns its argument and the other calls succeed doing
 * nothing. Link with -ldl on C libraries older than glibc 2.34.
 *
 * Thread safety: call these from the thread that drives training. tmRegister/tmUnregister may be called
 * at any time before or between safe points, never concurrently with tmSafePoint.
 */
#ifndef TRAINMOVER_TRAINMOVER_H_
#define TRAINMOVER_TRAINMOVER_H_

#include <dlfcn.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
  tmSuccess = 0,
  tmInvalidArgument = 1, /* null name or pointer, empty name, zero size */
  tmAlreadyRegistered = 2, /* tmRegister with a name that is registered already */
  tmNotRegistered = 3,   /* tmUnregister of a name that is not registered */
  tmInternalError = 4,
} tmResult_t;

/* The shim's entry points, as exported by libtrainmover.so. Not to be called directly. */
typedef int64_t (*tmShimSafePoint_t)(int64_t step);
typedef int (*tmShimRegister_t)(const char* name, void* ptr, size_t bytes);
typedef int (*tmShimUnregister_t)(const char* name);

static inline void* tmShimSymbol_(const char* name) { return dlsym(RTLD_DEFAULT, name); }

/*
 * tmSafePoint: call once per iteration, at a point where no collective is in flight and the registered
 * state is consistent (typically right after the optimizer step). `step` is the number of the
 * iteration about to start (the count of completed iterations).
 *
 * Returns the step to continue from. In a worker this is `step`. In a joiner that has just been
 * switched in, it is the leaver's step S, and the registered regions already hold the leaver's state
 * at S: the program continues its loop from S. In a leaver, the call does not return: once its state
 * has been handed off, the process exits with status 0.
 *
 * Blocking: returns at once except at the one step where a migration switches, where it waits for the
 * hand-off (the downtime). Without the shim: returns `step`.
 */
static inline int64_t tmSafePoint(int64_t step) {
  tmShimSafePoint_t fn = (tmShimSafePoint_t)tmShimSymbol_("tmShimSafePoint");
  return fn ? fn(step) : step;
}

/*
 * tmRegister: declare `bytes` bytes at `ptr` (host or CUDA device memory) as training state named `name`
 * (at most 63 bytes). The memory stays owned by the caller and must stay valid until tmUnregister. At a
 * migration the joiner's region of the same name and size receives the leaver's bytes; a joiner whose
 * state table (names and sizes) differs from the leaver's is refused. Without the shim: tmSuccess.
 */
static inline tmResult_t tmRegister(const char* name, void* ptr, size_t bytes) {
  tmShimRegister_t fn = (tmShimRegister_t)tmShimSymbol_("tmShimRegister");
  if (!fn) return (name && name[0] && ptr && bytes) ? tmSuccess : tmInvalidArgument;
  return (tmResult_t)fn(name, ptr, bytes);
}

/* tmUnregister: forget the region named `name`. Without the shim: tmSuccess. */
static inline tmResult_t tmUnregister(const char* name) {
  tmShimUnregister_t fn = (tmShimUnregister_t)tmShimSymbol_("tmShimUnregister");
  return fn ? (tmResult_t)fn(name) : tmSuccess;
}

/* tmShimLoaded: 1 when libtrainmover is in the process, else 0. */
static inline int tmShimLoaded(void) { return tmShimSymbol_("tmShimSafePoint") != NULL; }

#ifdef __cplusplus
}
#endif

#endif /* TRAINMOVER_TRAINMOVER_H_ */

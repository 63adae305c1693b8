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
typedef int (*tmShimRank_t)(int rank);

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

/*
 * tmRank: the rank this process holds, given the rank its launcher assigned (RANK, the rank the program
 * would use without TrainMover). Returns `rank` in a worker and in a joiner (whose launcher already gave it
 * the rank it takes over), and without the shim. In a standby (TRAINMOVER_ROLE=standby: a spare process
 * started with the job's command line, warmed up in the sandbox as the rank its launcher gave it) it
 * returns `rank` until the coordinator assigns it the place of a failed rank R; from the tmSafePoint that
 * switches it in on, it returns R.
 *
 * Contract: a program that reads its rank through tmRank after every tmSafePoint (and derives from it
 * whatever depends on the rank: its data shard, its position in a parallel layout) tells the shim that a
 * standby can serve any rank: the standby's communicators are rebuilt at the failed rank's place and its
 * registered state becomes the failed rank's. A standby of a program that never calls tmRank serves only
 * the rank it warmed up as. Everything that depends on the rank and is not registered state must be
 * recomputed from the returned value; sizes of registered regions must not depend on the rank.
 *
 * Thread safety and blocking: any thread; returns at once. The value changes only inside the tmSafePoint
 * call that switches a standby in.
 */
static inline int tmRank(int rank) {
  tmShimRank_t fn = (tmShimRank_t)tmShimSymbol_("tmShimRank");
  return fn ? fn(rank) : rank;
}

/* tmShimLoaded: 1 when libtrainmover is in the process, else 0. */
static inline int tmShimLoaded(void) { return tmShimSymbol_("tmShimSafePoint") != NULL; }

#ifdef __cplusplus
}
#endif

#endif /* TRAINMOVER_TRAINMOVER_H_ */

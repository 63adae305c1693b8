// SPDX-License-Identifier: Apache-2.0
// model.h: tm-train's deterministic pieces, kept free of NCCL so they can be unit tested.
//
// Determinism: every value is a pure function of (seed, rank, step) and of the state buffers. Random numbers
// come from splitmix64 over a counter (no std:: distributions, whose output is implementation-defined), and
// every loop runs in a fixed order, so one binary gives bit-identical results run after run.
#ifndef TOOLS_TM_TRAIN_MODEL_H_
#define TOOLS_TM_TRAIN_MODEL_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace tm_train {

// splitmix64 finaliser: a bijective 64-bit mix.
uint64_t Mix64(uint64_t x);
// A counter-based random stream: value i of stream (a, b, c, d) is Mix64 over all five.
uint64_t Hash(uint64_t a, uint64_t b, uint64_t c, uint64_t d, uint64_t i);
// A float in [-1, 1) from 24 high bits of h (exact in float).
float UnitFloat(uint64_t h);

// The MLP: in -> hidden (tanh) -> out, weights in one flat buffer: W1[in][hidden], b1[hidden], W2[hidden][out],
// b2[out].
struct Dims {
  int64_t in = 0, hidden = 0, out = 0, batch = 0;
  int64_t NumParams() const { return in * hidden + hidden + hidden * out + out; }
};
// Picks dims with NumParams() close to (and at most max(params, minimum)) the requested count.
Dims DimsForParams(int64_t params);

// The synthetic task: a fixed random teacher network (a pure function of the seed) labels random inputs.
class Task {
 public:
  Task(const Dims& dims, uint64_t seed);
  // Fills x[batch][in] and y[batch][out] for (rank, step).
  void Batch(int rank, int64_t step, float* x, float* y) const;

 private:
  Dims dims_;
  uint64_t seed_;
  int64_t teacher_hidden_ = 16;
  std::vector<float> teacher_;  // W1[th][in], W2[out][th]
};

// Initial parameters (a pure function of the seed), scaled by 1/sqrt(fan_in).
void InitParams(const Dims& dims, uint64_t seed, float* params);

// Forward + backward on one batch: writes the gradient of the mean squared error into grad (overwritten) and
// returns the loss (mean over batch and outputs). scratch must hold at least ScratchFloats(dims) floats.
size_t ScratchFloats(const Dims& dims);
float ForwardBackward(const Dims& dims, const float* params, const float* x, const float* y, float* grad,
                      float* scratch);

// Adam hyper-parameters and the learning-rate schedule (a pure function of the step).
struct AdamConfig {
  float lr = 1e-2f, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f;
  int64_t warmup = 10;
};
float LearningRate(const AdamConfig& cfg, int64_t step);
// One Adam update for the iteration numbered `step` (0-based; Adam's t is step + 1).
void AdamStep(const AdamConfig& cfg, int64_t step, size_t n, const float* grad, float* params, float* m, float* v);

// The extra state (--extra-state-mb): initial contents from the seed, and the per-step update (one 64-bit
// word per 4 KiB page, chained on its previous value). Identical on every rank.
void InitExtraState(uint64_t seed, uint64_t* words, size_t nwords);
void UpdateExtraState(uint64_t seed, int64_t step, uint64_t* words, size_t nwords);
inline constexpr size_t kExtraWordsPerPage = 4096 / sizeof(uint64_t);

}  // namespace tm_train

#endif  // TOOLS_TM_TRAIN_MODEL_H_

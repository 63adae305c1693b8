// SPDX-License-Identifier: Apache-2.0
#include "model.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace tm_train {

uint64_t Mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

uint64_t Hash(uint64_t a, uint64_t b, uint64_t c, uint64_t d, uint64_t i) {
  uint64_t h = Mix64(a);
  h = Mix64(h ^ b);
  h = Mix64(h ^ c);
  h = Mix64(h ^ d);
  return Mix64(h ^ i);
}

float UnitFloat(uint64_t h) {
  // 24 bits -> [0, 2^24) -> [-1, 1): exact in float.
  return static_cast<float>(static_cast<int64_t>(h >> 40) - (1 << 23)) * (1.0f / (1 << 23));
}

Dims DimsForParams(int64_t params) {
  Dims d;
  d.in = 32;
  d.out = 8;
  d.batch = 32;
  // params = hidden * (in + 1 + out) + out
  d.hidden = std::max<int64_t>(1, (params - d.out) / (d.in + 1 + d.out));
  return d;
}

namespace {
enum Stream : uint64_t { kTeacher = 1, kInit = 2, kInput = 3, kExtra = 4 };
}

Task::Task(const Dims& dims, uint64_t seed) : dims_(dims), seed_(seed) {
  size_t n = static_cast<size_t>(teacher_hidden_ * dims.in + dims.out * teacher_hidden_);
  teacher_.resize(n);
  for (size_t i = 0; i < n; ++i) teacher_[i] = UnitFloat(Hash(seed, kTeacher, 0, 0, i));
}

void Task::Batch(int rank, int64_t step, float* x, float* y) const {
  const int64_t th = teacher_hidden_;
  std::vector<float> h(static_cast<size_t>(th));
  const float* w1 = teacher_.data();
  const float* w2 = w1 + th * dims_.in;
  for (int64_t b = 0; b < dims_.batch; ++b) {
    float* xb = x + b * dims_.in;
    for (int64_t i = 0; i < dims_.in; ++i) {
      xb[i] = UnitFloat(Hash(seed_, kInput, static_cast<uint64_t>(rank), static_cast<uint64_t>(step),
                             static_cast<uint64_t>(b * dims_.in + i)));
    }
    for (int64_t j = 0; j < th; ++j) {
      float s = 0;
      for (int64_t i = 0; i < dims_.in; ++i) s += w1[j * dims_.in + i] * xb[i];
      h[j] = std::tanh(s * 0.25f);
    }
    for (int64_t k = 0; k < dims_.out; ++k) {
      float s = 0;
      for (int64_t j = 0; j < th; ++j) s += w2[k * th + j] * h[j];
      y[b * dims_.out + k] = s * 0.25f;
    }
  }
}

void InitParams(const Dims& d, uint64_t seed, float* p) {
  const float s1 = 1.0f / std::sqrt(static_cast<float>(d.in));
  const float s2 = 1.0f / std::sqrt(static_cast<float>(d.hidden));
  const size_t n1 = static_cast<size_t>(d.in * d.hidden), nb1 = static_cast<size_t>(d.hidden);
  const size_t n2 = static_cast<size_t>(d.hidden * d.out), nb2 = static_cast<size_t>(d.out);
  size_t o = 0;
  for (size_t i = 0; i < n1; ++i, ++o) p[o] = UnitFloat(Hash(seed, kInit, 0, 0, o)) * s1;
  for (size_t i = 0; i < nb1; ++i, ++o) p[o] = 0.0f;
  for (size_t i = 0; i < n2; ++i, ++o) p[o] = UnitFloat(Hash(seed, kInit, 0, 0, o)) * s2;
  for (size_t i = 0; i < nb2; ++i, ++o) p[o] = 0.0f;
}

size_t ScratchFloats(const Dims& d) { return static_cast<size_t>(d.batch * (d.hidden * 2 + d.out)); }

float ForwardBackward(const Dims& d, const float* p, const float* x, const float* y, float* g, float* scratch) {
  // Layouts are [in][hidden] and [hidden][out] so that the inner loops run over contiguous memory with one
  // independent accumulator per element: they vectorise without reassociating any sum (bit-exact).
  const int64_t I = d.in, H = d.hidden, O = d.out, B = d.batch;
  const float* w1 = p;
  const float* b1 = w1 + I * H;
  const float* w2 = b1 + H;
  const float* b2 = w2 + H * O;
  float* gw1 = g;
  float* gb1 = gw1 + I * H;
  float* gw2 = gb1 + H;
  float* gb2 = gw2 + H * O;
  std::memset(g, 0, sizeof(float) * static_cast<size_t>(d.NumParams()));
  float* h = scratch;      // [B][H] activations
  float* dh = h + B * H;   // [B][H] gradient wrt pre-activation
  float* dy = dh + B * H;  // [B][O]
  const float inv = 1.0f / static_cast<float>(B * O);
  float loss = 0;
  for (int64_t b = 0; b < B; ++b) {
    const float* xb = x + b * I;
    float* hb = h + b * H;
    for (int64_t j = 0; j < H; ++j) hb[j] = b1[j];
    for (int64_t i = 0; i < I; ++i) {
      const float xi = xb[i];
      const float* row = w1 + i * H;
      for (int64_t j = 0; j < H; ++j) hb[j] += row[j] * xi;
    }
    for (int64_t j = 0; j < H; ++j) hb[j] = std::tanh(hb[j]);
    float* dyb = dy + b * O;
    for (int64_t k = 0; k < O; ++k) dyb[k] = b2[k];
    for (int64_t j = 0; j < H; ++j) {
      const float hj = hb[j];
      const float* row = w2 + j * O;
      for (int64_t k = 0; k < O; ++k) dyb[k] += row[k] * hj;
    }
    for (int64_t k = 0; k < O; ++k) {
      const float e = dyb[k] - y[b * O + k];
      loss += e * e;
      dyb[k] = 2.0f * e * inv;
    }
  }
  for (int64_t b = 0; b < B; ++b) {
    const float* xb = x + b * I;
    const float* hb = h + b * H;
    float* dhb = dh + b * H;
    const float* dyb = dy + b * O;
    for (int64_t k = 0; k < O; ++k) gb2[k] += dyb[k];
    for (int64_t j = 0; j < H; ++j) {
      const float* row = w2 + j * O;
      float* grow = gw2 + j * O;
      float s = 0;
      for (int64_t k = 0; k < O; ++k) {
        grow[k] += dyb[k] * hb[j];
        s += row[k] * dyb[k];
      }
      dhb[j] = s * (1.0f - hb[j] * hb[j]);
    }
    for (int64_t j = 0; j < H; ++j) gb1[j] += dhb[j];
    for (int64_t i = 0; i < I; ++i) {
      const float xi = xb[i];
      float* grow = gw1 + i * H;
      for (int64_t j = 0; j < H; ++j) grow[j] += dhb[j] * xi;
    }
  }
  return loss * inv;
}

float LearningRate(const AdamConfig& cfg, int64_t step) {
  if (cfg.warmup > 0 && step < cfg.warmup)
    return cfg.lr * static_cast<float>(step + 1) / static_cast<float>(cfg.warmup);
  return cfg.lr;
}

void AdamStep(const AdamConfig& cfg, int64_t step, size_t n, const float* g, float* p, float* m, float* v) {
  const double t = static_cast<double>(step + 1);
  const float c1 = static_cast<float>(1.0 - std::pow(static_cast<double>(cfg.beta1), t));
  const float c2 = static_cast<float>(1.0 - std::pow(static_cast<double>(cfg.beta2), t));
  const float lr = LearningRate(cfg, step);
  for (size_t i = 0; i < n; ++i) {
    m[i] = cfg.beta1 * m[i] + (1.0f - cfg.beta1) * g[i];
    v[i] = cfg.beta2 * v[i] + (1.0f - cfg.beta2) * g[i] * g[i];
    const float mh = m[i] / c1, vh = v[i] / c2;
    p[i] -= lr * mh / (std::sqrt(vh) + cfg.eps);
  }
}

void InitExtraState(uint64_t seed, uint64_t* w, size_t n) {
  for (size_t i = 0; i < n; ++i) w[i] = Mix64(seed ^ Mix64(kExtra + i));
}

void UpdateExtraState(uint64_t seed, int64_t step, uint64_t* w, size_t n) {
  for (size_t i = 0; i < n; i += kExtraWordsPerPage) w[i] = Hash(seed, kExtra, static_cast<uint64_t>(step), w[i], i);
}

}  // namespace tm_train

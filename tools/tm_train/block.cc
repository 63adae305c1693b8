// SPDX-License-Identifier: Apache-2.0
#include "block.h"

#include <algorithm>
#include <cmath>

#include "model.h"

namespace tm_train {
namespace {
constexpr uint64_t kBlockInit = 5;  // a stream of its own (model.cc uses 1-4)
}

BlockDims BlockDimsForParams(int64_t params, int64_t stages, int64_t tp) {
  BlockDims d;
  // per block: hidden * (2 * width + 1) + width
  const int64_t per_block = params / stages;
  const int64_t hidden = (per_block - d.width) / (2 * d.width + 1);
  d.tp = tp;
  d.hidden = std::max<int64_t>(1, hidden / tp) * tp;
  return d;
}

void InitBlockShard(const BlockDims& d, uint64_t seed, int64_t stage, int64_t tp_rank, float* p) {
  const int64_t W = d.width, H = d.hidden, S = d.Shard(), j0 = tp_rank * S;
  const float sa = 1.0f / std::sqrt(static_cast<float>(W)), sb = 1.0f / std::sqrt(static_cast<float>(H));
  const auto st = static_cast<uint64_t>(stage);
  float* A = p;
  float* a = A + W * S;
  float* B = a + S;
  float* b = B + S * W;
  for (int64_t i = 0; i < W; ++i) {
    for (int64_t j = 0; j < S; ++j) A[i * S + j] = UnitFloat(Hash(seed, kBlockInit, st, 0, i * H + j0 + j)) * sa;
  }
  for (int64_t j = 0; j < S; ++j) a[j] = 0.0f;
  for (int64_t j = 0; j < S; ++j) {
    for (int64_t k = 0; k < W; ++k) B[j * W + k] = UnitFloat(Hash(seed, kBlockInit, st, 1, (j0 + j) * W + k)) * sb;
  }
  for (int64_t k = 0; k < W; ++k) b[k] = 0.0f;
}

void BlockForward(const BlockDims& d, const float* p, const float* x, float* hidden, float* partial) {
  const int64_t W = d.width, S = d.Shard();
  const float* A = p;
  const float* a = A + W * S;
  const float* B = a + S;
  for (int64_t r = 0; r < d.rows; ++r) {
    const float* xr = x + r * W;
    float* hr = hidden + r * S;
    for (int64_t j = 0; j < S; ++j) hr[j] = a[j];
    for (int64_t i = 0; i < W; ++i) {
      const float xi = xr[i];
      const float* row = A + i * S;
      for (int64_t j = 0; j < S; ++j) hr[j] += row[j] * xi;
    }
    for (int64_t j = 0; j < S; ++j) hr[j] = std::tanh(hr[j]);
    float* pr = partial + r * W;
    for (int64_t k = 0; k < W; ++k) pr[k] = 0.0f;
    for (int64_t j = 0; j < S; ++j) {
      const float hj = hr[j];
      const float* row = B + j * W;
      for (int64_t k = 0; k < W; ++k) pr[k] += row[k] * hj;
    }
  }
}

void FinishForward(const BlockDims& d, const float* p, const float* x, float* y) {
  const int64_t W = d.width, S = d.Shard();
  const float* b = p + W * S + S + S * W;
  for (int64_t r = 0; r < d.rows; ++r) {
    for (int64_t k = 0; k < W; ++k) y[r * W + k] += x[r * W + k] + b[k];
  }
}

void BlockBackward(const BlockDims& d, const float* p, const float* x, const float* hidden, const float* dy,
                   float* g, float* dx, float* scratch) {
  const int64_t W = d.width, S = d.Shard();
  const float* A = p;
  const float* B = A + W * S + S;
  float* gA = g;
  float* ga = gA + W * S;
  float* gB = ga + S;
  float* gb = gB + S * W;
  for (int64_t r = 0; r < d.rows; ++r) {
    const float* xr = x + r * W;
    const float* hr = hidden + r * S;
    const float* dyr = dy + r * W;
    float* dh = scratch + r * S;
    for (int64_t k = 0; k < W; ++k) gb[k] += dyr[k];
    for (int64_t j = 0; j < S; ++j) {
      const float* row = B + j * W;
      float* grow = gB + j * W;
      float s = 0;
      for (int64_t k = 0; k < W; ++k) {
        grow[k] += dyr[k] * hr[j];
        s += row[k] * dyr[k];
      }
      dh[j] = s * (1.0f - hr[j] * hr[j]);
    }
    for (int64_t j = 0; j < S; ++j) ga[j] += dh[j];
    float* dxr = dx + r * W;
    for (int64_t i = 0; i < W; ++i) {
      const float xi = xr[i];
      const float* row = A + i * S;
      float* grow = gA + i * S;
      float s = 0;
      for (int64_t j = 0; j < S; ++j) {
        grow[j] += dh[j] * xi;
        s += row[j] * dh[j];
      }
      dxr[i] = s;
    }
  }
}

void FinishBackward(const BlockDims& d, const float* dy, float* dx) {
  for (int64_t i = 0; i < d.rows * d.width; ++i) dx[i] += dy[i];
}

float MseLoss(const BlockDims& d, const float* y, const float* t, float* dy) {
  const int64_t n = d.rows * d.width;
  const float inv = 1.0f / static_cast<float>(n);
  float loss = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float e = y[i] - t[i];
    loss += e * e;
    dy[i] = 2.0f * e * inv;
  }
  return loss * inv;
}

}  // namespace tm_train

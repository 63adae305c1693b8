// SPDX-License-Identifier: Apache-2.0
// block.h: the 3D workload's model, NCCL-free (parallel.cc does the communication between these pieces).
//
// The model is P residual MLP blocks, one per pipeline stage, each y = x + B·tanh(A·x + a) + b over rows of
// width `width`, with the hidden layer (`hidden` units) split over T tensor-parallel ranks as Megatron does:
// A by columns (column-parallel), B by rows (row-parallel), so each rank holds `hidden / T` units and the
// block's output is the sum over the TP group of each rank's partial product (an all-reduce), plus b,
// which every TP rank holds whole. The input gradient is likewise a sum over the TP group.
//
// One rank's shard is a flat buffer: A[width][hs], a[hs], B[hs][width], b[width] (hs = hidden / T). Every
// loop runs in a fixed order over contiguous memory (vectorised without reassociating a sum): bit-exact.
#ifndef TOOLS_TM_TRAIN_BLOCK_H_
#define TOOLS_TM_TRAIN_BLOCK_H_

#include <cstddef>
#include <cstdint>

namespace tm_train {

struct BlockDims {
  int64_t width = 32;   // activation width (input, output and residual)
  int64_t hidden = 0;   // hidden units of the whole block (a multiple of tp)
  int64_t tp = 1;       // tensor-parallel degree
  int64_t rows = 8;     // rows per micro-batch
  int64_t Shard() const { return hidden / tp; }
  // Floats of one rank's shard of the parameters.
  int64_t ShardParams() const { return width * Shard() + Shard() + Shard() * width + width; }
};
// Dims for --params N over `stages` blocks split `tp` ways: the whole model has at most max(N, minimum)
// parameters; hidden is a multiple of tp.
BlockDims BlockDimsForParams(int64_t params, int64_t stages, int64_t tp);

// Initial shard `tp_rank` of stage `stage`'s block: a pure function of (seed, stage) and each weight's
// position in the whole block, so the model is the same whatever T is.
void InitBlockShard(const BlockDims& d, uint64_t seed, int64_t stage, int64_t tp_rank, float* shard);

// Forward, the rank's part: hidden[rows][hs] = tanh(x·A + a) (kept for the backward pass) and
// partial[rows][width] = hidden·B. After the TP all-reduce of `partial`, FinishForward adds x and b.
void BlockForward(const BlockDims& d, const float* shard, const float* x, float* hidden, float* partial);
void FinishForward(const BlockDims& d, const float* shard, const float* x, float* y_inout);

// Backward, the rank's part, accumulating into grad (same layout as the shard): from dy[rows][width],
// dx_partial[rows][width] = (dy·Bᵀ ⊙ (1 - hidden²))·Aᵀ. After the TP all-reduce of dx_partial,
// FinishBackward adds dy (the residual path). `scratch` holds rows × hs floats.
void BlockBackward(const BlockDims& d, const float* shard, const float* x, const float* hidden, const float* dy,
                   float* grad, float* dx_partial, float* scratch);
void FinishBackward(const BlockDims& d, const float* dy, float* dx_inout);

// Mean squared error of y against target over rows × width, and its gradient dy = 2 (y - target) / n.
float MseLoss(const BlockDims& d, const float* y, const float* target, float* dy);

}  // namespace tm_train

#endif  // TOOLS_TM_TRAIN_BLOCK_H_

/* Plain-pointer interface between the ATen binding (scaled_adam_cuda.cpp) and the CUDA kernels
 * (scaled_adam_kernels.cu). No torch types here, so the .cu compiles with nvcc alone (the CI
 * compile check) and the binding owns all tensor bookkeeping. */
#pragma once
#include <cuda_runtime.h>

#include "scaled_adam_math.h"

namespace zf_optim {

enum DType : int { kF32 = 0, kF16 = 1, kBF16 = 2 };

/* One parameter tensor and its state, all device pointers. Small-state pointers are unused for
 * scalars (numel == 1). */
struct TensorMeta {
  void* p;
  const void* g;
  float* exp_avg_sq;
  float* delta;
  float* param_rms;
  float* scale_grads;
  float* scale_exp_avg_sq;
  long long numel;
  int first_chunk;  /* this tensor's chunks are [first_chunk, first_chunk + num_chunks) */
  int num_chunks;
  int is_scalar;
  int dtype;
};

/* A slice [start, min(start + kChunkElems, numel)) of one tensor; one CUDA block each. */
struct ChunkMeta {
  int tensor;
  int pad;
  long long start;
};

constexpr long long kChunkElems = 1 << 16;

/* Per-chunk sums of g^2, p*g, p^2 into partial[3 * chunk] for chunks [chunk_begin, +num). */
void launch_reduce(int dtype, const TensorMeta* meta, const ChunkMeta* chunks, int chunk_begin,
                   int num_chunks, float* partial, cudaStream_t stream);
/* Per-tensor sums (fp64, chunk order) and the clipping norm^2 into tot[0]; one block. */
void launch_finalize(const TensorMeta* meta, int num_tensors, const float* partial, double* sums,
                     double* tot, double scalar_lr_scale, cudaStream_t stream);
/* One thread per tensor: learned-scale state and the per-tensor coefficients. */
void launch_prologue(const TensorMeta* meta, int num_tensors, const double* sums,
                     const float* gamma, const StepConsts& c, TensorCoef* coef,
                     cudaStream_t stream);
/* The fused element update for chunks [chunk_begin, +num) of one dtype. */
void launch_apply(int dtype, const TensorMeta* meta, const ChunkMeta* chunks, int chunk_begin,
                  int num_chunks, const TensorCoef* coef, const float* gamma, const StepConsts& c,
                  cudaStream_t stream);

}  // namespace zf_optim

/* CUDA kernels for the multi-tensor ScaledAdam step (multi-tensor-apply style: a table of
 * (tensor, offset) chunks, one block per chunk, so ~750 tensors cost one launch per pass and
 * dtype). Includes only CUDA headers and scaled_adam_math.h: compiles with plain nvcc.
 * Moments are fp32 for every parameter dtype; p is loaded/stored in its own dtype. */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "scaled_adam_kernels.h"

namespace zf_optim {
namespace {

constexpr int kBlock = 512;

template <typename T> __device__ __forceinline__ float to_f(T x);
template <> __device__ __forceinline__ float to_f<float>(float x) { return x; }
template <> __device__ __forceinline__ float to_f<__half>(__half x) { return __half2float(x); }
template <> __device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 x) {
  return __bfloat162float(x);
}
template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

/* Sum of `vals` over the block (kBlock threads); result valid in thread 0. */
template <typename A>
__device__ __forceinline__ A block_sum(A v, A* shared) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  A r = 0;
  if (warp == 0) {
    r = lane < (int)(blockDim.x >> 5) ? shared[lane] : A(0);
    for (int off = 16; off > 0; off >>= 1) r += __shfl_down_sync(0xffffffffu, r, off);
  }
  __syncthreads();
  return r;
}

template <typename T>
__global__ void __launch_bounds__(kBlock) reduce_kernel(const TensorMeta* meta,
                                                        const ChunkMeta* chunks, int chunk_begin,
                                                        float* partial) {
  __shared__ float sh[32];
  const int ci = chunk_begin + blockIdx.x;
  const ChunkMeta ch = chunks[ci];
  const TensorMeta m = meta[ch.tensor];
  const T* p = static_cast<const T*>(m.p);
  const T* g = static_cast<const T*>(m.g);
  const long long end = min(m.numel, ch.start + kChunkElems);
  float gg = 0.f, pg = 0.f, pp = 0.f;
  for (long long i = ch.start + threadIdx.x; i < end; i += kBlock) {
    const float pf = to_f<T>(p[i]);
    const float gf = to_f<T>(g[i]);
    gg += gf * gf;
    pg += pf * gf;
    pp += pf * pf;
  }
  gg = block_sum(gg, sh);
  pg = block_sum(pg, sh);
  pp = block_sum(pp, sh);
  if (threadIdx.x == 0) {
    partial[3 * ci + 0] = gg;
    partial[3 * ci + 1] = pg;
    partial[3 * ci + 2] = pp;
  }
}

__global__ void __launch_bounds__(kBlock) finalize_kernel(const TensorMeta* meta, int n,
                                                          const float* partial, double* sums,
                                                          double* tot, double slr) {
  __shared__ double sh[32];
  double acc = 0.0;
  for (int i = threadIdx.x; i < n; i += kBlock) {
    const TensorMeta m = meta[i];
    double s[3] = {0.0, 0.0, 0.0};
    for (int c = m.first_chunk; c < m.first_chunk + m.num_chunks; ++c)  // chunk order
      for (int j = 0; j < 3; ++j) s[j] += (double)partial[3 * c + j];
    for (int j = 0; j < 3; ++j) sums[3 * i + j] = s[j];
    const float rms = m.is_scalar ? 0.f : *m.param_rms;  // the OLD rms, as icefall clips
    acc += clip_weight(m.is_scalar, rms, slr) * s[0];
  }
  acc = block_sum(acc, sh);
  if (threadIdx.x == 0) tot[0] = acc;
}

__global__ void prologue_kernel(const TensorMeta* meta, int n, const double* sums,
                                const float* gamma, StepConsts c, TensorCoef* coef) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const TensorMeta m = meta[i];
  if (m.is_scalar) return;
  coef[i] = tensor_prologue((float)sums[3 * i + 1], sums[3 * i + 2], m.numel, *gamma,
                            m.param_rms, m.scale_grads, m.scale_exp_avg_sq, c);
}

template <typename T>
__global__ void __launch_bounds__(kBlock) apply_kernel(const TensorMeta* meta,
                                                       const ChunkMeta* chunks, int chunk_begin,
                                                       const TensorCoef* coef,
                                                       const float* gamma, StepConsts c) {
  const ChunkMeta ch = chunks[chunk_begin + blockIdx.x];
  const TensorMeta m = meta[ch.tensor];
  T* p = static_cast<T*>(m.p);
  const T* g = static_cast<const T*>(m.g);
  const float gm = *gamma;
  if (m.is_scalar) {
    if (threadIdx.x == 0)
      p[0] = from_f<T>(update_scalar(to_f<T>(p[0]), to_f<T>(g[0]), m.exp_avg_sq[0], m.delta[0],
                                     c, gm));
    return;
  }
  const TensorCoef k = coef[ch.tensor];
  const long long end = min(m.numel, ch.start + kChunkElems);
  for (long long i = ch.start + threadIdx.x; i < end; i += kBlock) {
    float v = m.exp_avg_sq[i], d = m.delta[i];
    const float np = update_element(to_f<T>(p[i]), to_f<T>(g[i]), v, d, c, k, gm);
    m.exp_avg_sq[i] = v;
    m.delta[i] = d;
    p[i] = from_f<T>(np);
  }
}

}  // namespace

void launch_reduce(int dtype, const TensorMeta* meta, const ChunkMeta* chunks, int chunk_begin,
                   int num_chunks, float* partial, cudaStream_t stream) {
  if (num_chunks <= 0) return;
  if (dtype == kF32)
    reduce_kernel<float><<<num_chunks, kBlock, 0, stream>>>(meta, chunks, chunk_begin, partial);
  else if (dtype == kF16)
    reduce_kernel<__half><<<num_chunks, kBlock, 0, stream>>>(meta, chunks, chunk_begin, partial);
  else
    reduce_kernel<__nv_bfloat16><<<num_chunks, kBlock, 0, stream>>>(meta, chunks, chunk_begin,
                                                                     partial);
}

void launch_finalize(const TensorMeta* meta, int num_tensors, const float* partial, double* sums,
                     double* tot, double scalar_lr_scale, cudaStream_t stream) {
  finalize_kernel<<<1, kBlock, 0, stream>>>(meta, num_tensors, partial, sums, tot,
                                            scalar_lr_scale);
}

void launch_prologue(const TensorMeta* meta, int num_tensors, const double* sums,
                     const float* gamma, const StepConsts& c, TensorCoef* coef,
                     cudaStream_t stream) {
  const int threads = 128;
  const int blocks = (num_tensors + threads - 1) / threads;
  if (blocks > 0) prologue_kernel<<<blocks, threads, 0, stream>>>(meta, num_tensors, sums, gamma, c, coef);
}

void launch_apply(int dtype, const TensorMeta* meta, const ChunkMeta* chunks, int chunk_begin,
                  int num_chunks, const TensorCoef* coef, const float* gamma, const StepConsts& c,
                  cudaStream_t stream) {
  if (num_chunks <= 0) return;
  if (dtype == kF32)
    apply_kernel<float><<<num_chunks, kBlock, 0, stream>>>(meta, chunks, chunk_begin, coef, gamma, c);
  else if (dtype == kF16)
    apply_kernel<__half><<<num_chunks, kBlock, 0, stream>>>(meta, chunks, chunk_begin, coef, gamma, c);
  else
    apply_kernel<__nv_bfloat16><<<num_chunks, kBlock, 0, stream>>>(meta, chunks, chunk_begin, coef,
                                                                    gamma, c);
}

}  // namespace zf_optim

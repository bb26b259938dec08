/* ATen binding of the CUDA multi-tensor ScaledAdam step (torch ops library zf_sa_cuda:
 * torch.ops.zf_sa_cuda.reduce/apply). Builds the tensor/chunk tables on the host, ships them to
 * the device in one non-blocking copy from pinned memory, and launches the plain-pointer kernels
 * of scaled_adam_kernels.cu on the current stream. No host sync: gamma (the clipping factor)
 * stays a device scalar. Same Python signature as the CPU module (scaled_adam_cpu.cpp). */
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include <torch/library.h>

#include "scaled_adam_kernels.h"

namespace {

using zf_optim::ChunkMeta;
using zf_optim::TensorMeta;

int dtype_code(at::ScalarType t) {
  if (t == at::kFloat) return zf_optim::kF32;
  if (t == at::kHalf) return zf_optim::kF16;
  if (t == at::kBFloat16) return zf_optim::kBF16;
  TORCH_CHECK(false, "ScaledAdam CUDA extension supports float32/float16/bfloat16 params, got ", t);
  return -1;
}

struct Tables {
  at::Tensor meta_dev;   // uint8 bytes: TensorMeta[n] then ChunkMeta[nc]
  const TensorMeta* meta;
  const ChunkMeta* chunks;
  int n_chunks;
  int range[3][2];       // per dtype: [chunk_begin, num_chunks)
};

// Tensors are laid out by dtype so each dtype's chunks are contiguous (one launch per dtype).
Tables build_tables(at::TensorList params, at::TensorList grads,
                    const at::TensorList* exp_avg_sq, const at::TensorList* delta,
                    at::TensorList param_rms,
                    const at::TensorList* scale_grads,
                    const at::TensorList* scale_exp_avg_sq) {
  const int n = (int)params.size();
  TORCH_CHECK(n > 0 && grads.size() == params.size() && param_rms.size() == params.size(),
              "list lengths differ");
  const auto device = params[0].device();
  std::vector<TensorMeta> meta(n);
  std::vector<ChunkMeta> chunks;
  Tables t;
  for (int d = 0; d < 3; ++d) {
    t.range[d][0] = (int)chunks.size();
    for (int i = 0; i < n; ++i) {
      const auto& p = params[i];
      if (dtype_code(p.scalar_type()) != d) continue;
      const auto& g = grads[i];
      TORCH_CHECK(p.is_cuda() && p.device() == device && g.device() == device,
                  "all params/grads of a group must be on one CUDA device");
      TORCH_CHECK(p.is_contiguous() && g.is_contiguous(), "param/grad ", i, " not contiguous");
      TORCH_CHECK(g.scalar_type() == p.scalar_type() && g.numel() == p.numel(),
                  "grad ", i, " must match its param in dtype and size");
      TensorMeta& m = meta[i];
      std::memset(&m, 0, sizeof(m));
      m.p = p.data_ptr();
      m.g = g.data_ptr();
      m.numel = p.numel();
      m.is_scalar = p.numel() == 1;
      m.dtype = d;
      if (!m.is_scalar) m.param_rms = param_rms[i].data_ptr<float>();
      if (exp_avg_sq) {
        const auto& v = (*exp_avg_sq)[i];
        const auto& dl = (*delta)[i];
        TORCH_CHECK(v.scalar_type() == at::kFloat && dl.scalar_type() == at::kFloat &&
                        v.is_contiguous() && dl.is_contiguous() && v.numel() == p.numel() &&
                        dl.numel() == p.numel() && v.device() == device && dl.device() == device,
                    "state ", i, " must be contiguous float32 like its param");
        m.exp_avg_sq = v.data_ptr<float>();
        m.delta = dl.data_ptr<float>();
        if (!m.is_scalar) {
          m.scale_grads = (*scale_grads)[i].data_ptr<float>();
          m.scale_exp_avg_sq = (*scale_exp_avg_sq)[i].data_ptr<float>();
        }
      }
      m.first_chunk = (int)chunks.size();
      for (long long s = 0; s < m.numel; s += zf_optim::kChunkElems) chunks.push_back({i, 0, s});
      m.num_chunks = (int)chunks.size() - m.first_chunk;
    }
    t.range[d][1] = (int)chunks.size() - t.range[d][0];
  }
  t.n_chunks = (int)chunks.size();
  const size_t mb = sizeof(TensorMeta) * n, cb = sizeof(ChunkMeta) * chunks.size();
  auto host = at::empty({(int64_t)(mb + cb)}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  std::memcpy(host.data_ptr<uint8_t>(), meta.data(), mb);
  std::memcpy(host.data_ptr<uint8_t>() + mb, chunks.data(), cb);
  // non_blocking from pinned memory: the caching host allocator keeps `host` alive until the copy ran
  t.meta_dev = host.to(device, /*non_blocking=*/true);
  t.meta = reinterpret_cast<const TensorMeta*>(t.meta_dev.data_ptr<uint8_t>());
  t.chunks = reinterpret_cast<const ChunkMeta*>(t.meta_dev.data_ptr<uint8_t>() + mb);
  return t;
}

std::tuple<at::Tensor, at::Tensor> reduce(at::TensorList params,
                                          at::TensorList grads,
                                          at::TensorList param_rms,
                                          double scalar_lr_scale) {
  c10::cuda::CUDAGuard guard(params.at(0).device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  Tables t = build_tables(params, grads, nullptr, nullptr, param_rms, nullptr, nullptr);
  auto fopt = params[0].options().dtype(at::kFloat);
  auto partial = at::empty({(int64_t)t.n_chunks * 3}, fopt);
  for (int d = 0; d < 3; ++d)
    zf_optim::launch_reduce(d, t.meta, t.chunks, t.range[d][0], t.range[d][1],
                            partial.data_ptr<float>(), stream);
  auto sums = at::empty({(int64_t)params.size(), 3}, fopt.dtype(at::kDouble));
  auto tot = at::empty({}, fopt.dtype(at::kDouble));
  zf_optim::launch_finalize(t.meta, (int)params.size(), partial.data_ptr<float>(),
                            sums.data_ptr<double>(), tot.data_ptr<double>(), scalar_lr_scale, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {sums, tot};
}

void apply(at::TensorList params, at::TensorList grads,
           at::TensorList exp_avg_sq, at::TensorList delta,
           at::TensorList param_rms, at::TensorList scale_grads,
           at::TensorList scale_exp_avg_sq, const at::Tensor& sums,
           const at::Tensor& gamma, double lr, double beta1, double beta2, double eps,
           double scalar_lr_scale, double param_min_rms, double param_max_rms, double scalar_max,
           int64_t step, int64_t period) {
  c10::cuda::CUDAGuard guard(params.at(0).device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  const size_t n = params.size();
  TORCH_CHECK(exp_avg_sq.size() == n && delta.size() == n && scale_grads.size() == n &&
                  scale_exp_avg_sq.size() == n, "state lists have the wrong length");
  TORCH_CHECK(sums.is_cuda() && sums.scalar_type() == at::kDouble && sums.size(0) == (int64_t)n,
              "bad sums");
  TORCH_CHECK(gamma.is_cuda() && gamma.scalar_type() == at::kFloat && gamma.numel() == 1,
              "gamma must be a float32 CUDA scalar");
  Tables t = build_tables(params, grads, &exp_avg_sq, &delta, param_rms, &scale_grads,
                          &scale_exp_avg_sq);
  const auto c = zf_optim::make_step_consts(lr, beta1, beta2, eps, scalar_lr_scale, param_min_rms,
                                            param_max_rms, scalar_max, step, (int)period);
  auto coef = at::empty({(int64_t)n * 2}, params[0].options().dtype(at::kFloat));
  auto* cp = reinterpret_cast<zf_optim::TensorCoef*>(coef.data_ptr<float>());
  zf_optim::launch_prologue(t.meta, (int)n, sums.data_ptr<double>(), gamma.data_ptr<float>(), c,
                            cp, stream);
  for (int d = 0; d < 3; ++d)
    zf_optim::launch_apply(d, t.meta, t.chunks, t.range[d][0], t.range[d][1], cp,
                           gamma.data_ptr<float>(), c, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

TORCH_LIBRARY(zf_sa_cuda, m) {
  m.def("reduce(Tensor[] params, Tensor[] grads, Tensor[] param_rms, float scalar_lr_scale)"
        " -> (Tensor, Tensor)", &reduce);
  m.def("apply(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avg_sq, Tensor(c!)[] delta,"
        " Tensor(d!)[] param_rms, Tensor(e!)[] scale_grads, Tensor(f!)[] scale_exp_avg_sq,"
        " Tensor sums, Tensor gamma, float lr, float beta1, float beta2, float eps,"
        " float scalar_lr_scale, float param_min_rms, float param_max_rms, float scalar_max,"
        " int step, int period) -> ()", &apply);
}

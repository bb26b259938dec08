/* CPU multi-tensor ScaledAdam step (torch ops library zf_sa_cpu: torch.ops.zf_sa_cpu.reduce/apply).
 *
 * Two entry points per parameter group and step, mirroring the CUDA path:
 *   reduce(params, grads, param_rms, scalar_lr_scale) -> (sums[n,3] fp64, tot_sumsq fp64 0-dim)
 *       one parallel pass over (p, g): per tensor sum g^2, sum p*g, sum p^2, plus the clipping
 *       norm sum_i w_i * sum g_i^2 (w = param_rms^2 or scalar_lr_scale^2) from the OLD param_rms.
 *   apply(params, grads, exp_avg_sq, delta, param_rms, scale_grads, scale_exp_avg_sq, sums,
 *         gamma (0-dim tensor), hyper..., step, period)
 *       serial per-tensor prologue (learned scale, param_rms), then one parallel fused pass.
 * Work is split into fixed chunks across all tensors (at::parallel_for), so 750 small tensors
 * and one 2M-element tensor balance alike. Per-element math: scaled_adam_math.h.
 * Partial sums are per chunk and added in chunk order: results do not depend on thread count.
 */
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/ops/zeros.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <vector>

#include "scaled_adam_math.h"

namespace {

constexpr int64_t kChunk = 1 << 15;  // elements per work item: big enough to amortise dispatch

struct Chunk {
  int64_t tensor, begin, end;
};

// Below this many elements in all, a parallel region costs more than it saves (waking threads
// takes a scheduler quantum on a busy machine): run inline.
constexpr int64_t kParallelMinElems = 1 << 18;

int64_t grain_for(const std::vector<Chunk>& chunks) {
  int64_t total = 0;
  for (const auto& c : chunks) total += c.end - c.begin;
  return total < kParallelMinElems ? std::max<int64_t>(1, (int64_t)chunks.size()) : 1;
}

std::vector<Chunk> make_chunks(at::TensorList params) {
  std::vector<Chunk> chunks;
  for (int64_t i = 0; i < (int64_t)params.size(); ++i) {
    const int64_t n = params[i].numel();
    for (int64_t b = 0; b < n; b += kChunk) chunks.push_back({i, b, std::min(n, b + kChunk)});
  }
  return chunks;
}

void check_inputs(at::TensorList params, at::TensorList grads) {
  TORCH_CHECK(params.size() == grads.size(), "params and grads differ in length");
  for (size_t i = 0; i < params.size(); ++i) {
    const auto& p = params[i];
    const auto& g = grads[i];
    TORCH_CHECK(p.device().is_cpu() && g.device().is_cpu(), "CPU extension got a non-CPU tensor");
    TORCH_CHECK(p.is_contiguous() && g.is_contiguous(), "param/grad ", i, " is not contiguous");
    TORCH_CHECK(p.scalar_type() == g.scalar_type(), "param/grad ", i, " dtypes differ");
    TORCH_CHECK(p.numel() == g.numel(), "param/grad ", i, " sizes differ");
    const auto t = p.scalar_type();
    TORCH_CHECK(t == at::kFloat || t == at::kHalf || t == at::kBFloat16,
                "ScaledAdam extension supports float32/float16/bfloat16 params, got ", t);
  }
}

// Calls f(T{}) with T the C++ type of a float32/float16/bfloat16 tensor (checked before).
template <typename F>
void dispatch_float_types(at::ScalarType t, F&& f) {
  if (t == at::kFloat) f(float{});
  else if (t == at::kHalf) f(c10::Half{});
  else f(c10::BFloat16{});
}

// Sums over [0, n): float lanes per 1024-element block (vectorisable), blocks added in double.
template <typename T>
void reduce_span(const T* p, const T* g, int64_t n, double* out) {
  double gg = 0.0, pg = 0.0, pp = 0.0;
  for (int64_t b = 0; b < n; b += 1024) {
    const int64_t e = std::min(n, b + 1024);
    float bgg = 0.f, bpg = 0.f, bpp = 0.f;
#pragma omp simd reduction(+ : bgg, bpg, bpp)
    for (int64_t i = b; i < e; ++i) {
      const float pf = static_cast<float>(p[i]);
      const float gf = static_cast<float>(g[i]);
      bgg += gf * gf;
      bpg += pf * gf;
      bpp += pf * pf;
    }
    gg += bgg;
    pg += bpg;
    pp += bpp;
  }
  out[0] = gg;
  out[1] = pg;
  out[2] = pp;
}

template <typename T>
void apply_span(T* p, const T* g, float* v, float* m, int64_t n, const zf_optim::StepConsts& c,
                const zf_optim::TensorCoef& k, float gamma) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float np = zf_optim::update_element(static_cast<float>(p[i]), static_cast<float>(g[i]),
                                              v[i], m[i], c, k, gamma);
    p[i] = static_cast<T>(np);
  }
}

std::tuple<at::Tensor, at::Tensor> reduce(at::TensorList params,
                                          at::TensorList grads,
                                          at::TensorList param_rms,
                                          double scalar_lr_scale) {
  check_inputs(params, grads);
  TORCH_CHECK(param_rms.size() == params.size(), "param_rms list has the wrong length");
  const auto chunks = make_chunks(params);
  const int64_t nc = (int64_t)chunks.size();
  std::vector<double> partial((size_t)nc * 3);
  at::parallel_for(0, nc, grain_for(chunks), [&](int64_t cb, int64_t ce) {
    for (int64_t ci = cb; ci < ce; ++ci) {
      const Chunk& ch = chunks[ci];
      const auto& p = params[ch.tensor];
      const auto& g = grads[ch.tensor];
      dispatch_float_types(p.scalar_type(), [&](auto tag) {
        using scalar_t = decltype(tag);
        reduce_span<scalar_t>(static_cast<const scalar_t*>(p.const_data_ptr()) + ch.begin,
                              static_cast<const scalar_t*>(g.const_data_ptr()) + ch.begin,
                              ch.end - ch.begin, &partial[(size_t)ci * 3]);
      });
    }
  });
  const int64_t nt = (int64_t)params.size();
  auto sums = at::zeros({nt, 3}, at::kDouble);
  double* s = sums.data_ptr<double>();
  for (int64_t ci = 0; ci < nc; ++ci)  // chunk order: deterministic for any thread count
    for (int j = 0; j < 3; ++j) s[chunks[ci].tensor * 3 + j] += partial[(size_t)ci * 3 + j];
  double tot = 0.0;
  for (int64_t i = 0; i < nt; ++i) {
    const int is_scalar = params[i].numel() == 1;
    const float rms = is_scalar ? 0.f : param_rms[i].item<float>();
    tot += zf_optim::clip_weight(is_scalar, rms, scalar_lr_scale) * s[i * 3];
  }
  return {sums, at::scalar_tensor(tot, at::kDouble)};
}

void apply(at::TensorList params, at::TensorList grads,
           at::TensorList exp_avg_sq, at::TensorList delta,
           at::TensorList param_rms, at::TensorList scale_grads,
           at::TensorList scale_exp_avg_sq, const at::Tensor& sums, const at::Tensor& gamma,
           double lr, double beta1, double beta2, double eps, double scalar_lr_scale,
           double param_min_rms, double param_max_rms, double scalar_max, int64_t step,
           int64_t period) {
  check_inputs(params, grads);
  const size_t nt = params.size();
  TORCH_CHECK(exp_avg_sq.size() == nt && delta.size() == nt && param_rms.size() == nt &&
                  scale_grads.size() == nt && scale_exp_avg_sq.size() == nt,
              "state lists have the wrong length");
  TORCH_CHECK(sums.scalar_type() == at::kDouble && sums.size(0) == (int64_t)nt, "bad sums");
  for (size_t i = 0; i < nt; ++i) {
    TORCH_CHECK(exp_avg_sq[i].scalar_type() == at::kFloat && delta[i].scalar_type() == at::kFloat &&
                    exp_avg_sq[i].is_contiguous() && delta[i].is_contiguous() &&
                    exp_avg_sq[i].numel() == params[i].numel() &&
                    delta[i].numel() == params[i].numel(),
                "state ", i, " must be contiguous float32 like its param");
    if (params[i].numel() > 1)
      TORCH_CHECK(scale_grads[i].numel() == period && scale_grads[i].scalar_type() == at::kFloat &&
                      param_rms[i].scalar_type() == at::kFloat &&
                      scale_exp_avg_sq[i].scalar_type() == at::kFloat,
                  "small state ", i, " must be float32 (scale_grads of length period)");
  }
  const auto c = zf_optim::make_step_consts(lr, beta1, beta2, eps, scalar_lr_scale, param_min_rms,
                                            param_max_rms, scalar_max, step, (int)period);
  TORCH_CHECK(gamma.numel() == 1 && gamma.device().is_cpu(), "gamma must be a CPU scalar tensor");
  const float gm = gamma.to(at::kFloat).item<float>();
  const double* s = sums.const_data_ptr<double>();
  std::vector<zf_optim::TensorCoef> coef(nt);
  for (size_t i = 0; i < nt; ++i) {  // per-tensor prologue: a few flops each, serial
    if (params[i].numel() == 1) continue;
    coef[i] = zf_optim::tensor_prologue((float)s[i * 3 + 1], s[i * 3 + 2], params[i].numel(), gm,
                                        param_rms[i].data_ptr<float>(),
                                        scale_grads[i].data_ptr<float>(),
                                        scale_exp_avg_sq[i].data_ptr<float>(), c);
  }
  const auto chunks = make_chunks(params);
  at::parallel_for(0, (int64_t)chunks.size(), grain_for(chunks), [&](int64_t cb, int64_t ce) {
    for (int64_t ci = cb; ci < ce; ++ci) {
      const Chunk& ch = chunks[ci];
      const auto& p = params[ch.tensor];
      const auto& g = grads[ch.tensor];
      float* v = exp_avg_sq[ch.tensor].data_ptr<float>() + ch.begin;
      float* m = delta[ch.tensor].data_ptr<float>() + ch.begin;
      dispatch_float_types(p.scalar_type(), [&](auto tag) {
        using scalar_t = decltype(tag);
        scalar_t* pp = static_cast<scalar_t*>(p.data_ptr()) + ch.begin;
        const scalar_t* gp = static_cast<const scalar_t*>(g.const_data_ptr()) + ch.begin;
        if (p.numel() == 1) {
          pp[0] = static_cast<scalar_t>(zf_optim::update_scalar(
              static_cast<float>(pp[0]), static_cast<float>(gp[0]), v[0], m[0], c, gm));
        } else {
          apply_span<scalar_t>(pp, gp, v, m, ch.end - ch.begin, c, coef[ch.tensor], gm);
        }
      });
    }
  });
}

}  // namespace

TORCH_LIBRARY(zf_sa_cpu, m) {
  m.def("reduce(Tensor[] params, Tensor[] grads, Tensor[] param_rms, float scalar_lr_scale)"
        " -> (Tensor, Tensor)", &reduce);
  m.def("apply(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avg_sq, Tensor(c!)[] delta,"
        " Tensor(d!)[] param_rms, Tensor(e!)[] scale_grads, Tensor(f!)[] scale_exp_avg_sq,"
        " Tensor sums, Tensor gamma, float lr, float beta1, float beta2, float eps,"
        " float scalar_lr_scale, float param_min_rms, float param_max_rms, float scalar_max,"
        " int step, int period) -> ()", &apply);
}

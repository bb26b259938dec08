/* ScaledAdam per-element and per-tensor math, shared by the CPU loop (scaled_adam_cpu.cpp, g++)
 * and the CUDA kernels (scaled_adam_kernels.cu, nvcc). One header so the CPU build, which CI
 * runs, tests the very formulas the GPU runs. Plain C++: no ATen, no CUDA headers needed.
 *
 * Semantics are icefall's egs/librispeech/ASR/zipformer/optim.py ScaledAdam, per parameter:
 *   g  <- gamma * g                    (gamma == 0 means "zero the gradient", NaN-safe)
 *   v  <- beta2 v + (1 - beta2) g^2    (fp32, for every dtype of p)
 *   u  <- -lr' g / (sqrt(v / bc) + eps),  bc applied only while bc < 0.99
 *   d  <- u * max(param_rms, min_rms) + p * scale_step      (non-scalars)
 *   d  <- u                                                  (scalars: numel == 1, lr' = lr*0.1)
 *   m  <- beta1 m + (1 - beta1) d ;  p <- p + m ;  scalars clamped to [-scalar_max, scalar_max]
 * Every float constant is rounded from the double the Python code would pass to torch, so the
 * kernels round the way `tensor.mul_(python_float)` does.
 */
#pragma once
#include <math.h>

#if defined(__CUDACC__)
#define ZF_HD __host__ __device__ __forceinline__
#else
#define ZF_HD inline
#endif

namespace zf_optim {

/* Constants shared by every tensor of one parameter group at one step (the step is host-known
 * because every parameter of a group steps together). Built on the host by make_step_consts. */
struct StepConsts {
  float neg_lr;          /* -lr, for non-scalars */
  float neg_lr_scalar;   /* -lr * scalar_lr_scale, for numel-1 parameters */
  float beta1, one_minus_beta1;
  float beta2, one_minus_beta2;
  float inv_bc;          /* 1 / (1 - beta2^(t+1)), used only when apply_bc */
  float eps;
  float scalar_max;
  float param_min_rms, param_max_rms;
  float beta2_corr, one_minus_beta2_corr;  /* beta2^period: the size update runs every period */
  float neg_size_lr_sqrt_bc;               /* -lr*scalar_lr_scale*sqrt(1 - beta2_corr^k) */
  float inv_period;
  int apply_bc;     /* bias correction only while bc < 0.99 (icefall) */
  int slot;         /* t % period: the scale_grads slot written this step */
  int period;
  int rms_step;     /* t % period == period - 1: recompute param_rms from p */
  int scale_step;   /* rms_step && t > 0: update the learned scale */
};

/* Host-only: derive the step constants exactly as the Python code derives its scalars. */
inline StepConsts make_step_consts(double lr, double beta1, double beta2, double eps,
                                   double scalar_lr_scale, double param_min_rms,
                                   double param_max_rms, double scalar_max, long long step,
                                   int period) {
  StepConsts c;
  c.neg_lr = (float)(-lr);
  c.neg_lr_scalar = (float)(-(lr * scalar_lr_scale));
  c.beta1 = (float)beta1;
  c.one_minus_beta1 = (float)(1.0 - beta1);
  c.beta2 = (float)beta2;
  c.one_minus_beta2 = (float)(1.0 - beta2);
  const double bc = 1.0 - pow(beta2, (double)(step + 1));
  c.apply_bc = bc < 0.99 ? 1 : 0;
  c.inv_bc = (float)(1.0 / bc);
  c.eps = (float)eps;
  c.scalar_max = (float)scalar_max;
  c.param_min_rms = (float)param_min_rms;
  c.param_max_rms = (float)param_max_rms;
  const double b2c = pow(beta2, (double)period);
  c.beta2_corr = (float)b2c;
  c.one_minus_beta2_corr = (float)(1.0 - b2c);
  const long long k = (step + 1) / period;  /* number of size updates so far, 1 at the first */
  const double sbc = 1.0 - pow(b2c, (double)k);
  c.neg_size_lr_sqrt_bc = (float)(-(lr * scalar_lr_scale) * sqrt(sbc));
  c.inv_period = (float)(1.0 / period);
  c.period = period;
  c.slot = (int)(step % period);
  c.rms_step = c.slot == period - 1 ? 1 : 0;
  c.scale_step = (c.rms_step && step > 0) ? 1 : 0;
  return c;
}

/* The clipped gradient. gamma == 0 is icefall's "zero the grads" (the norm was not finite), so
 * it must give 0 even where g is inf/NaN; gamma == 1 leaves g bit-identical. */
ZF_HD float clip_grad(float g, float gamma) { return gamma == 0.0f ? 0.0f : g * gamma; }

/* Per-tensor result of the prologue, consumed by every element of that tensor. */
struct TensorCoef {
  float rms_factor;  /* max(param_rms, param_min_rms) */
  float scale_step;  /* learned-scale step, 0 unless c.scale_step */
};

/* Per-tensor prologue for a non-scalar. s_pg = sum(p * g) and s_pp = sum(p^2) over the tensor
 * with the UNclipped g and the pre-update p; n = numel. Updates the tensor's small state in place:
 * scale_grads[slot], param_rms (every period), scale_exp_avg_sq (every period after step 0). */
ZF_HD TensorCoef tensor_prologue(float s_pg, double s_pp, long long n, float gamma,
                                 float* param_rms, float* scale_grads, float* scale_exp_avg_sq,
                                 const StepConsts& c) {
  /* sum(p * (gamma g)) == gamma * sum(p g); gamma == 0 zeroes it even if the sum is not finite */
  scale_grads[c.slot] = gamma == 0.0f ? 0.0f : gamma * s_pg;
  if (c.rms_step) *param_rms = (float)sqrt(s_pp / (double)n);
  const float rms = *param_rms;
  TensorCoef out;
  out.rms_factor = rms < c.param_min_rms ? c.param_min_rms : rms;
  out.scale_step = 0.0f;
  if (c.scale_step) {
    float sum = 0.0f, sumsq = 0.0f;
    for (int i = 0; i < c.period; ++i) {
      sum += scale_grads[i];
      sumsq += scale_grads[i] * scale_grads[i];
    }
    const float sea = *scale_exp_avg_sq * c.beta2_corr + c.one_minus_beta2_corr * (sumsq * c.inv_period);
    *scale_exp_avg_sq = sea;
    float s = c.neg_size_lr_sqrt_bc * sum / (sqrtf(sea) + c.eps);
    if (rms < c.param_min_rms) s = 0.0f;          /* too small: never shrink further */
    s = s < -0.1f ? -0.1f : (s > 0.1f ? 0.1f : s); /* at most 10% per size update */
    const float cap = (c.param_max_rms - rms) / rms; /* rms after the step stays <= max */
    out.scale_step = s < cap ? s : cap;
  }
  return out;
}

/* One element of a non-scalar tensor. p is returned; v (exp_avg_sq) and m (delta) are fp32 state.
 * has_scale is c.scale_step, hoisted by the caller so the loop stays branch-free. */
ZF_HD float update_element(float p, float g, float& v, float& m, const StepConsts& c,
                           const TensorCoef& k, float gamma) {
  g = clip_grad(g, gamma);
  v = v * c.beta2 + (c.one_minus_beta2 * g) * g;
  const float vh = c.apply_bc ? v * c.inv_bc : v;
  float d = (c.neg_lr * g) / (sqrtf(vh) + c.eps);
  d = d * k.rms_factor;
  if (c.scale_step) d = d + p * k.scale_step;
  m = m * c.beta1 + c.one_minus_beta1 * d;
  return p + m;
}

/* A numel-1 parameter: plain Adam-like step at lr*scalar_lr_scale, then the clamp. NaN stays NaN
 * (as torch.clamp), so the comparisons are written to be false for NaN. */
ZF_HD float update_scalar(float p, float g, float& v, float& m, const StepConsts& c, float gamma) {
  g = clip_grad(g, gamma);
  v = v * c.beta2 + (c.one_minus_beta2 * g) * g;
  const float vh = c.apply_bc ? v * c.inv_bc : v;
  const float d = (c.neg_lr_scalar * g) / (sqrtf(vh) + c.eps);
  m = m * c.beta1 + c.one_minus_beta1 * d;
  p = p + m;
  if (p > c.scalar_max) p = c.scalar_max;
  if (p < -c.scalar_max) p = -c.scalar_max;
  return p;
}

/* Squared-norm weight of a tensor in the clipping norm: scalar_lr_scale^2 for scalars,
 * param_rms^2 otherwise (icefall's "normalised" gradient norm). */
ZF_HD double clip_weight(int is_scalar, float param_rms, double scalar_lr_scale) {
  return is_scalar ? scalar_lr_scale * scalar_lr_scale : (double)param_rms * (double)param_rms;
}

}  // namespace zf_optim

// Group Normalization: the contract between the operator front end and the device kernels.
//
// The front end (group_norm.cpp) validates arguments, brings the input into one of the two
// layouts below, converts gamma/beta to the accumulation type, allocates every output and
// handles empty tensors. A device kernel then only sees a non-empty problem:
//
//   layout NCHW          x is contiguous (N, C, HxW)
//   layout channels_last x is contiguous (N, HxW, C)   (any number of spatial dims, flattened)
//
//   x, y, dy, dx : scalar_t in {float, double, at::Half, at::BFloat16}, all in the same layout
//   gamma, beta  : (C,) acc_t, contiguous, or undefined (meaning gamma = 1, beta = 0)
//   mean, rstd   : (N, G) acc_t, contiguous
//   dgamma, dbeta: (C,) acc_t, or undefined when not requested
//   acc_t        : double for double input, float otherwise
//
// Math (DESIGN.md section 1), per sample n and group g over the m = (C/G)*HxW elements S:
//   mean = sum(x)/m, var = sum((x-mean)^2)/m (biased), rstd = 1/sqrt(var+eps)
//   z = (x-mean)*rstd*gamma[c] + beta[c];   y = relu ? max(z, 0) : z
//   backward: g = relu ? dy*(z > 0) : dy;  xhat = (x-mean)*rstd;  dxhat = g*gamma[c]
//   dx = rstd * (dxhat - mean_S(dxhat) - xhat * mean_S(dxhat*xhat))
//   dgamma[c] = sum_{n, hw} g*xhat;  dbeta[c] = sum_{n, hw} g
// Kernels are deterministic: the same inputs give bitwise the same outputs on every run.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <string>
#include <tuple>

namespace gn_detectron {

struct GroupNormProblem {
  int64_t N = 0;        // samples
  int64_t C = 0;        // channels
  int64_t HxW = 0;      // product of the spatial sizes (1 for (N, C) input)
  int64_t G = 0;        // groups; C % G == 0
  bool channels_last = false;  // memory is (N, HxW, C) instead of (N, C, HxW)
  double eps = 1e-5;
  bool relu = false;    // y = max(GN(x), 0); backward masks dy where GN(x) <= 0

  int64_t channels_per_group() const { return C / G; }
  int64_t group_size() const { return (C / G) * HxW; }  // m
};

// y, mean and rstd are allocated by the caller; the kernel fills all of them.
using GroupNormForwardKernel = void (*)(
    const GroupNormProblem& p, const at::Tensor& x, const at::Tensor& gamma,
    const at::Tensor& beta, at::Tensor& y, at::Tensor& mean, at::Tensor& rstd);

// dx, dgamma, dbeta are allocated by the caller, each possibly undefined (not requested).
using GroupNormBackwardKernel = void (*)(
    const GroupNormProblem& p, const at::Tensor& dy, const at::Tensor& x,
    const at::Tensor& mean, const at::Tensor& rstd, const at::Tensor& gamma,
    const at::Tensor& beta, at::Tensor& dx, at::Tensor& dgamma, at::Tensor& dbeta);

// Front end shared by every device (group_norm.cpp). Returns (y, mean, rstd).
std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_forward(
    const at::Tensor& input, int64_t num_groups, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& bias, double eps, bool relu,
    GroupNormForwardKernel kernel);

// Returns (grad_input, grad_weight, grad_bias); an output not asked for by output_mask is an
// empty tensor of shape (0,).
std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& mean,
    const at::Tensor& rstd, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& bias, int64_t num_groups, bool relu,
    std::array<bool, 3> output_mask, GroupNormBackwardKernel kernel);

// Device kernels.
void group_norm_forward_cpu(
    const GroupNormProblem& p, const at::Tensor& x, const at::Tensor& gamma,
    const at::Tensor& beta, at::Tensor& y, at::Tensor& mean, at::Tensor& rstd);
void group_norm_backward_cpu(
    const GroupNormProblem& p, const at::Tensor& dy, const at::Tensor& x,
    const at::Tensor& mean, const at::Tensor& rstd, const at::Tensor& gamma,
    const at::Tensor& beta, at::Tensor& dx, at::Tensor& dgamma, at::Tensor& dbeta);
void group_norm_forward_cuda(
    const GroupNormProblem& p, const at::Tensor& x, const at::Tensor& gamma,
    const at::Tensor& beta, at::Tensor& y, at::Tensor& mean, at::Tensor& rstd);
void group_norm_backward_cuda(
    const GroupNormProblem& p, const at::Tensor& dy, const at::Tensor& x,
    const at::Tensor& mean, const at::Tensor& rstd, const at::Tensor& gamma,
    const at::Tensor& beta, at::Tensor& dx, at::Tensor& dgamma, at::Tensor& dbeta);

}  // namespace gn_detectron

// The gn_detectron operator library: schemas, the autocast rule, and the Python module that
// loads it. Device kernels register themselves (cpu/, cuda/) through register.h.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/autograd.h>
#include <torch/extension.h>
#include <torch/library.h>

namespace gn_detectron {
namespace {

using Triple = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

// Autocast rule: no casts. fp16/bf16 input gives fp16/bf16 output with fp32 statistics and
// math inside the kernel, also when weight and bias stay fp32 as AMP leaves parameters. (ATen's
// group_norm is on autocast's fp32 list and would return fp32, doubling the output's bytes.)
Triple forward_autocast(const at::Tensor& input, int64_t num_groups,
                        const c10::optional<at::Tensor>& weight,
                        const c10::optional<at::Tensor>& bias, double eps, bool relu) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("gn_detectron::group_norm_fwd", "")
                       .typed<Triple(const at::Tensor&, int64_t, const c10::optional<at::Tensor>&,
                                     const c10::optional<at::Tensor>&, double, bool)>();
  return op.call(input, num_groups, weight, bias, eps, relu);
}

// The backward of group_norm_fwd written with differentiable ATen ops, for second-order
// gradients (gradient penalties, gradgradcheck). Statistics are recomputed from x so that their
// dependence on x is part of the graph. Math as in group_norm.h, in acc_t (float32 for 16-bit
// input); the ReLU mask is taken where the output stored in the input's dtype is positive, as the
// kernels do. Returns the 6 gradients of GroupNormFunction::forward's arguments.
torch::autograd::variable_list differentiable_backward(const at::Tensor& grad_out,
                                                       const at::Tensor& input, const at::Tensor& w,
                                                       const at::Tensor& b, int64_t num_groups,
                                                       double eps, bool relu,
                                                       const std::array<bool, 3>& mask) {
  const auto acc = input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const int64_t N = input.size(0), C = input.size(1);
  const at::Tensor x = input.to(acc);
  std::vector<int64_t> channel_shape(input.dim(), 1);  // (1, C, 1, ...) to broadcast gamma/beta
  channel_shape[1] = C;
  int64_t spatial = 1;
  for (int64_t d = 2; d < input.dim(); ++d) spatial *= input.size(d);
  const int64_t group_size = (C / num_groups) * spatial;  // explicit: N may be 0
  const at::Tensor xg = x.reshape({N, num_groups, group_size});
  const at::Tensor mean = xg.mean({-1}, /*keepdim=*/true);
  const at::Tensor centered = xg - mean;
  const at::Tensor rstd = (centered.pow(2).mean({-1}, true) + eps).rsqrt();
  const at::Tensor xhat = (centered * rstd).reshape(x.sizes());
  const at::Tensor gamma = w.defined() ? w.to(acc).reshape(channel_shape) : at::Tensor();
  at::Tensor g = grad_out.to(acc);
  if (relu) {
    at::Tensor z = gamma.defined() ? xhat * gamma : xhat;
    if (b.defined()) z = z + b.to(acc).reshape(channel_shape);
    g = g * (z.detach().to(input.scalar_type()) > 0).to(acc);
  }
  std::vector<int64_t> reduce_dims;  // every dim but the channels
  for (int64_t d = 0; d < input.dim(); ++d) {
    if (d != 1) reduce_dims.push_back(d);
  }
  at::Tensor dx, dw, db;
  if (mask[0]) {
    const at::Tensor dxhat = (gamma.defined() ? g * gamma : g).reshape({N, num_groups, group_size});
    const at::Tensor xhat_g = xhat.reshape({N, num_groups, group_size});
    dx = (rstd * (dxhat - dxhat.mean({-1}, true) - xhat_g * (dxhat * xhat_g).mean({-1}, true)))
             .reshape(input.sizes())
             .to(input.scalar_type());
  }
  if (mask[1]) dw = (g * xhat).sum(reduce_dims).to(w.scalar_type());
  if (mask[2]) db = g.sum(reduce_dims).to(b.scalar_type());
  return {dx, at::Tensor(), dw, db, at::Tensor(), at::Tensor()};
}

// Autograd of group_norm_fwd, in C++ so that a training step pays no Python per GN layer.
// Saves x, mean and rstd (and the affine parameters); the backward calls group_norm_bwd, which
// recomputes the normalized values (and the ReLU mask) from them.
class GroupNormFunction : public torch::autograd::Function<GroupNormFunction> {
 public:
  static torch::autograd::variable_list forward(
      torch::autograd::AutogradContext* ctx, const at::Tensor& input, int64_t num_groups,
      const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias, double eps,
      bool relu) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("gn_detectron::group_norm_fwd", "")
                         .typed<Triple(const at::Tensor&, int64_t, const c10::optional<at::Tensor>&,
                                       const c10::optional<at::Tensor>&, double, bool)>();
    auto [y, mean, rstd] = op.call(input, num_groups, weight, bias, eps, relu);
    const at::Tensor w = weight.has_value() ? *weight : at::Tensor();
    const at::Tensor b = bias.has_value() ? *bias : at::Tensor();
    ctx->save_for_backward({input, mean, rstd, w, b});
    ctx->saved_data["num_groups"] = num_groups;
    ctx->saved_data["relu"] = relu;
    ctx->saved_data["eps"] = eps;
    ctx->mark_non_differentiable({mean, rstd});
    return {y, mean, rstd};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& input = saved[0];
    const at::Tensor& w = saved[3];
    const at::Tensor& b = saved[4];
    const at::Tensor& grad_out = grads[0];
    // needs_input_grad counts the tensor arguments that were given: input, then weight and bias
    // where present
    const size_t bias_edge = w.defined() ? 2 : 1;
    std::array<bool, 3> mask = {ctx->needs_input_grad(0), w.defined() && ctx->needs_input_grad(1),
                                b.defined() && ctx->needs_input_grad(bias_edge)};
    if (!grad_out.defined() || !(mask[0] || mask[1] || mask[2])) {
      return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    }
    if (at::GradMode::is_enabled()) {
      // A graph of the gradient is being built (create_graph=True, double backward): the same
      // formula in differentiable ATen ops. The first-order path below is untouched.
      return differentiable_backward(grad_out, input, w, b, ctx->saved_data["num_groups"].toInt(),
                                     ctx->saved_data["eps"].toDouble(),
                                     ctx->saved_data["relu"].toBool(), mask);
    }
    static auto op =
        c10::Dispatcher::singleton()
            .findSchemaOrThrow("gn_detectron::group_norm_bwd", "")
            .typed<Triple(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                          const at::Tensor&, const c10::optional<at::Tensor>&,
                          const c10::optional<at::Tensor>&, int64_t, bool, std::array<bool, 3>)>();
    auto [dx, dw, db] = op.call(
        grad_out, input, saved[1], saved[2], w.defined() ? c10::optional<at::Tensor>(w) : c10::nullopt,
        b.defined() ? c10::optional<at::Tensor>(b) : c10::nullopt,
        ctx->saved_data["num_groups"].toInt(), ctx->saved_data["relu"].toBool(), mask);
    return {mask[0] ? dx : at::Tensor(), at::Tensor(), mask[1] ? dw : at::Tensor(),
            mask[2] ? db : at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

Triple forward_autograd(const at::Tensor& input, int64_t num_groups,
                        const c10::optional<at::Tensor>& weight,
                        const c10::optional<at::Tensor>& bias, double eps, bool relu) {
  auto out = GroupNormFunction::apply(input, num_groups, weight, bias, eps, relu);
  return {out[0], out[1], out[2]};
}

}  // namespace

TORCH_LIBRARY(gn_detectron, m) {
  // Returns (output, mean, rstd); mean and rstd are (N, num_groups) in float32 (float64 for
  // float64 input) and are saved for the backward.
  m.def("group_norm_fwd(Tensor input, int num_groups, Tensor? weight, Tensor? bias, float eps, "
        "bool relu) -> (Tensor, Tensor, Tensor)");
  // Returns (grad_input, grad_weight, grad_bias); outputs not asked for are empty, shape (0,).
  m.def("group_norm_bwd(Tensor grad_output, Tensor input, Tensor mean, Tensor rstd, "
        "Tensor? weight, Tensor? bias, int num_groups, bool relu, bool[3] output_mask) "
        "-> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(gn_detectron, Autograd, m) {
  m.impl("group_norm_fwd", forward_autograd);
}

TORCH_LIBRARY_IMPL(gn_detectron, AutocastCPU, m) {
  m.impl("group_norm_fwd", forward_autocast);
}
TORCH_LIBRARY_IMPL(gn_detectron, AutocastCUDA, m) {
  m.impl("group_norm_fwd", forward_autocast);
}

}  // namespace gn_detectron

#ifndef GN_CUDA_ARCHS
#define GN_CUDA_ARCHS ""
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "gn_detectron kernels; importing this module registers torch.ops.gn_detectron";
  m.def("build_info", [] {
    pybind11::dict info;
#ifdef GN_WITH_CUDA
    info["cuda"] = true;
#else
    info["cuda"] = false;
#endif
    info["cuda_archs"] = std::string(GN_CUDA_ARCHS);
#if AT_PARALLEL_OPENMP
    info["cpu_parallel"] = std::string("openmp");
#else
    info["cpu_parallel"] = std::string("native");
#endif
    info["torch_version"] = std::string(TORCH_VERSION);
    return info;
  });
}

// Front end of the group_norm operator, shared by every device: argument checks with messages
// that name the problem, layout canonicalisation (NCHW or channels_last, no copy when the input
// already is one of them), output allocation and empty tensors. See group_norm.h.
#include "group_norm.h"

#include <ATen/ATen.h>
#include <c10/util/irange.h>

#include <sstream>

namespace gn_detectron {
namespace {

std::string shape_str(const at::Tensor& t) {
  std::ostringstream os;
  os << t.sizes();
  return os.str();
}

at::ScalarType acc_type_for(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// True when memory holds (N, *spatial, C) densely: channels are the fastest dimension.
bool is_channels_last_dense(const at::Tensor& x) {
  if (x.dim() < 3 || x.size(1) <= 1) return false;
  return x.movedim(1, -1).is_contiguous();
}

void check_input(const at::Tensor& input, int64_t num_groups, const char* what) {
  TORCH_CHECK(input.defined(), "group_norm: ", what, " is undefined");
  TORCH_CHECK(input.dim() >= 2,
              "group_norm: expected ", what, " with at least 2 dimensions (N, C, *), got shape ",
              shape_str(input));
  TORCH_CHECK(at::isFloatingType(input.scalar_type()),
              "group_norm: expected a floating-point ", what,
              " (float32, float64, float16 or bfloat16), got dtype ", input.scalar_type());
  TORCH_CHECK(num_groups > 0, "group_norm: num_groups must be positive, got ", num_groups);
  const int64_t C = input.size(1);
  TORCH_CHECK(C % num_groups == 0,
              "group_norm: the number of channels must be divisible by num_groups, got C=", C,
              " channels and num_groups=", num_groups, " (input shape ", shape_str(input),
              "); choose num_groups among the divisors of ", C);
}

void check_affine(const c10::optional<at::Tensor>& t, const char* name, const at::Tensor& input) {
  if (!t.has_value() || !t->defined()) return;
  const int64_t C = input.size(1);
  TORCH_CHECK(t->dim() == 1 && t->numel() == C,
              "group_norm: expected ", name, " of shape (", C, ",) for an input with C=", C,
              " channels, got shape ", shape_str(*t));
  TORCH_CHECK(t->device() == input.device(),
              "group_norm: input is on ", input.device(), " but ", name, " is on ", t->device(),
              "; move both to the same device");
  TORCH_CHECK(at::isFloatingType(t->scalar_type()),
              "group_norm: expected a floating-point ", name, ", got dtype ", t->scalar_type());
}

at::Tensor affine_as_acc(const c10::optional<at::Tensor>& t, at::ScalarType acc) {
  if (!t.has_value() || !t->defined()) return at::Tensor();
  return t->to(acc).contiguous();
}

GroupNormProblem make_problem(const at::Tensor& input, int64_t num_groups, bool channels_last,
                              double eps, bool relu) {
  GroupNormProblem p;
  p.N = input.size(0);
  p.C = input.size(1);
  p.HxW = 1;
  for (const auto d : c10::irange(2, input.dim())) p.HxW *= input.size(d);
  p.G = num_groups;
  p.channels_last = channels_last;
  p.eps = eps;
  p.relu = relu;
  return p;
}

// Brings `t` into the chosen layout (a no-op when it already is in it).
at::Tensor to_layout(const at::Tensor& t, bool channels_last) {
  if (!channels_last) return t.contiguous();
  // movedim(1, -1) of the result is contiguous: memory (N, *spatial, C).
  return t.movedim(1, -1).contiguous().movedim(-1, 1);
}

at::Tensor empty_in_layout(const at::Tensor& like, bool channels_last) {
  if (!channels_last) return at::empty(like.sizes(), like.options().memory_format(at::MemoryFormat::Contiguous));
  std::vector<int64_t> sizes(like.sizes().begin(), like.sizes().end());
  std::vector<int64_t> last(sizes.begin(), sizes.end());
  last.erase(last.begin() + 1);
  last.push_back(sizes[1]);
  return at::empty(last, like.options().memory_format(at::MemoryFormat::Contiguous)).movedim(-1, 1);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_forward(
    const at::Tensor& input, int64_t num_groups, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& bias, double eps, bool relu,
    GroupNormForwardKernel kernel) {
  check_input(input, num_groups, "input");
  check_affine(weight, "weight", input);
  check_affine(bias, "bias", input);
  TORCH_CHECK(eps >= 0, "group_norm: eps must be non-negative, got ", eps);

  const bool cl = !input.is_contiguous() && is_channels_last_dense(input);
  const GroupNormProblem p = make_problem(input, num_groups, cl, eps, relu);
  const at::ScalarType acc = acc_type_for(input.scalar_type());
  const at::Tensor x = to_layout(input, cl);
  at::Tensor y = empty_in_layout(x, cl);
  at::Tensor mean = at::empty({p.N, p.G}, input.options().dtype(acc));
  at::Tensor rstd = at::empty({p.N, p.G}, input.options().dtype(acc));
  if (p.N == 0 || p.C == 0) return {y, mean, rstd};
  if (p.HxW == 0) {
    // No element in any group: the variance of the empty set is taken as 0.
    mean.zero_();
    rstd.fill_(1.0 / std::sqrt(eps));
    return {y, mean, rstd};
  }
  const at::Tensor gamma = affine_as_acc(weight, acc);
  const at::Tensor beta = affine_as_acc(bias, acc);
  kernel(p, x, gamma, beta, y, mean, rstd);
  return {y, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& mean,
    const at::Tensor& rstd, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& bias, int64_t num_groups, bool relu,
    std::array<bool, 3> output_mask, GroupNormBackwardKernel kernel) {
  check_input(input, num_groups, "input");
  check_affine(weight, "weight", input);
  check_affine(bias, "bias", input);
  TORCH_CHECK(grad_output.sizes() == input.sizes(),
              "group_norm backward: grad_output has shape ", shape_str(grad_output),
              " but input has shape ", shape_str(input));
  TORCH_CHECK(grad_output.device() == input.device(),
              "group_norm backward: grad_output is on ", grad_output.device(),
              " but input is on ", input.device());
  const at::ScalarType acc = acc_type_for(input.scalar_type());
  TORCH_CHECK(mean.numel() == input.size(0) * num_groups && rstd.numel() == mean.numel() &&
                  mean.scalar_type() == acc && rstd.scalar_type() == acc,
              "group_norm backward: expected mean and rstd of shape (", input.size(0), ", ",
              num_groups, ") and dtype ", acc, ", got ", shape_str(mean), " ", mean.scalar_type(),
              " and ", shape_str(rstd), " ", rstd.scalar_type());
  const bool has_weight = weight.has_value() && weight->defined();
  TORCH_CHECK(!output_mask[1] || has_weight,
              "group_norm backward: grad_weight was requested but weight is None");
  TORCH_CHECK(!output_mask[2] || (bias.has_value() && bias->defined()),
              "group_norm backward: grad_bias was requested but bias is None");

  const bool cl = !input.is_contiguous() && is_channels_last_dense(input);
  const GroupNormProblem p = make_problem(input, num_groups, cl, 0.0, relu);
  const at::Tensor x = to_layout(input, cl);
  const at::Tensor dy = to_layout(grad_output, cl);

  at::Tensor dx = output_mask[0] ? empty_in_layout(x, cl) : at::Tensor();
  at::Tensor dgamma = output_mask[1] ? at::empty({p.C}, input.options().dtype(acc)) : at::Tensor();
  at::Tensor dbeta = output_mask[2] ? at::empty({p.C}, input.options().dtype(acc)) : at::Tensor();

  if (p.N == 0 || p.C == 0 || p.HxW == 0) {
    if (dgamma.defined()) dgamma.zero_();
    if (dbeta.defined()) dbeta.zero_();
  } else if (dx.defined() || dgamma.defined() || dbeta.defined()) {
    const at::Tensor gamma = affine_as_acc(weight, acc);
    const at::Tensor beta = affine_as_acc(bias, acc);
    kernel(p, dy, x, mean.contiguous(), rstd.contiguous(), gamma, beta, dx, dgamma, dbeta);
  }

  auto none = [&] { return at::empty({0}, input.options()); };
  return {dx.defined() ? dx : none(),
          dgamma.defined() ? dgamma.to(weight->scalar_type()) : none(),
          dbeta.defined() ? dbeta.to(bias->scalar_type()) : none()};
}

}  // namespace gn_detectron

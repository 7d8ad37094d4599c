// Registration of one device's kernels for the gn_detectron operators. A device file calls
//   TORCH_LIBRARY_IMPL(gn_detectron, CUDA, m) {
//     register_group_norm_kernels<group_norm_forward_cuda, group_norm_backward_cuda>(m);
//   }
// and the shared front end (checks, layouts, allocation, empty tensors) serves it.
#pragma once

#include <torch/library.h>

#include "group_norm.h"

namespace gn_detectron {

template <GroupNormForwardKernel Forward, GroupNormBackwardKernel Backward>
void register_group_norm_kernels(torch::Library& m) {
  m.impl("group_norm_fwd",
         [](const at::Tensor& input, int64_t num_groups, const c10::optional<at::Tensor>& weight,
            const c10::optional<at::Tensor>& bias, double eps, bool relu) {
           return group_norm_forward(input, num_groups, weight, bias, eps, relu, Forward);
         });
  m.impl("group_norm_bwd",
         [](const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& mean,
            const at::Tensor& rstd, const c10::optional<at::Tensor>& weight,
            const c10::optional<at::Tensor>& bias, int64_t num_groups, bool relu,
            std::array<bool, 3> output_mask) {
           return group_norm_backward(grad_output, input, mean, rstd, weight, bias, num_groups,
                                      relu, output_mask, Backward);
         });
}

}  // namespace gn_detectron

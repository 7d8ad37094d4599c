// The gn_detectron operator library: schemas, the autocast rule, and the Python module that
// loads it. Device kernels register themselves (cpu/, cuda/) through register.h.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
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

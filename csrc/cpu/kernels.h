// The CPU kernels' entry points, declared in the namespace of one capability: CPU_CAPABILITY
// (cpu_default, cpu_avx2, cpu_avx512), which CMakeLists.txt defines for every copy of csrc/cpu it
// compiles. No include guard: csrc/cpu_dispatch.cpp includes this once per capability.
#include <ATen/ATen.h>

#include <optional>
#include <tuple>
#include <vector>

#ifndef LQK_CPU_KERNELS
// Every CPU kernel, as X(op): the dispatch table's slots and the registrations come from this list.
#define LQK_CPU_KERNELS(X)                                                                          \
  X(row_powsum) X(row_gini) X(row_topk_mask) X(global_topk_masks) X(bitmap_linear) X(csr16_linear) \
  X(bitmap_linear_grad_input) X(csr16_linear_grad_input) X(bitmap_linear_grad_values)              \
  X(csr16_linear_grad_values)
#endif

namespace lqk::CPU_CAPABILITY {

// csrc/cpu/measures.cpp: per-row (scale, sum (|x|/scale)^q, survivors); per-row Gini of the survivors.
std::tuple<at::Tensor, at::Tensor, at::Tensor> row_powsum(const at::Tensor& x, const std::optional<at::Tensor>& mask,
                                                          at::ArrayRef<double> qs);
at::Tensor row_gini(const at::Tensor& x, const std::optional<at::Tensor>& mask);

// csrc/cpu/selection.cpp: per-row top-k mask (k per row); exact top-k over many tensors.
std::tuple<at::Tensor, at::Tensor> row_topk_mask(const at::Tensor& x, const at::Tensor& k,
                                                 const std::optional<at::Tensor>& mask, bool magnitude, bool largest);
std::vector<at::Tensor> global_topk_masks(at::TensorList xs, const std::optional<at::TensorList>& masks, int64_t k,
                                          bool magnitude, bool largest);

// csrc/cpu/sparse_linear.cpp: y = x·Wᵀ + b with W as bitmap or 16-bit columns + packed values; the
// backward's dy · (W ∘ mask) and dyᵀ · x at the kept entries.
at::Tensor bitmap_linear(const at::Tensor& x, const at::Tensor& values, const at::Tensor& row_offsets,
                         const at::Tensor& bitmap, const std::optional<at::Tensor>& bias);
at::Tensor csr16_linear(const at::Tensor& x, const at::Tensor& values, const at::Tensor& row_offsets,
                        const at::Tensor& columns, const std::optional<at::Tensor>& bias);
at::Tensor bitmap_linear_grad_input(const at::Tensor& dy, const at::Tensor& values, const at::Tensor& row_offsets,
                                    const at::Tensor& bitmap, int64_t in_features);
at::Tensor csr16_linear_grad_input(const at::Tensor& dy, const at::Tensor& values, const at::Tensor& row_offsets,
                                   const at::Tensor& columns, int64_t in_features);
at::Tensor bitmap_linear_grad_values(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& values,
                                     const at::Tensor& row_offsets, const at::Tensor& bitmap);
at::Tensor csr16_linear_grad_values(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& values,
                                    const at::Tensor& row_offsets, const at::Tensor& columns);

}  // namespace lqk::CPU_CAPABILITY

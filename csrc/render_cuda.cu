// CUDA kernels: one thread per ray, gradients scattered with atomicAdd.
// Headers from c10 only: ATen/cuda/CUDAContext.h would pull in cuBLAS/cuSPARSE headers, which a
// minimal CUDA toolkit (nvcc + runtime) lacks.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "render_ops.h"

namespace radocc {
namespace {

constexpr int kThreads = 256;

int64_t blocks_for(int64_t n) { return (n + kThreads - 1) / kThreads; }

template <typename T>
__global__ void forward_kernel(const Buffers<T> io, const Grid<T> g, const MarchSpec<T> m,
                               int64_t n) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) render_ray_forward(io, g, m, i);
}

template <typename T>
__global__ void backward_kernel(const Buffers<T> io, const Buffers<T> grad, const Grid<T> g,
                                const MarchSpec<T> m, int64_t n, T* v_density, T* v_features) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const auto add = [](T* p, T v) { atomicAdd(p, v); };
  render_ray_backward(io, grad, g, m, i, v_density, v_features, add);
}

Outputs render_forward_cuda(const at::Tensor& density, const at::Tensor& features,
                            const at::Tensor& origins, const at::Tensor& directions,
                            const at::Tensor& edges, at::ArrayRef<double> lower,
                            at::ArrayRef<double> upper, double near, double far, double step) {
  check_render_inputs("render_forward", density, features, origins, directions, edges, lower,
                      upper);
  const c10::cuda::CUDAGuard guard(density.device());
  Outputs out = allocate_outputs(density, features, origins, edges);
  const int64_t n = origins.size(0) * origins.size(1);
  if (n == 0) return out;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(density.scalar_type(), "render_forward_cuda", [&] {
    forward_kernel<scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(
        make_buffers<scalar_t>(density, features, origins, directions, edges, out),
        make_grid<scalar_t>(density, lower, upper), make_spec<scalar_t>(near, far, step), n);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

std::tuple<at::Tensor, at::Tensor> render_backward_cuda(
    const at::Tensor& v_depth, const at::Tensor& v_opacity, const at::Tensor& v_features_out,
    const at::Tensor& v_termination, const at::Tensor& depth, const at::Tensor& opacity,
    const at::Tensor& features_out, const at::Tensor& termination, const at::Tensor& density,
    const at::Tensor& features, const at::Tensor& origins, const at::Tensor& directions,
    const at::Tensor& edges, at::ArrayRef<double> lower, at::ArrayRef<double> upper, double near,
    double far, double step) {
  const Outputs outputs{depth, opacity, features_out, termination};
  const Outputs grads{v_depth, v_opacity, v_features_out, v_termination};
  check_backward_inputs("render_backward", grads, outputs, density, features, origins, directions,
                        edges, lower, upper);
  const c10::cuda::CUDAGuard guard(density.device());
  auto v_density = at::zeros_like(density);
  auto v_features = at::zeros_like(features);
  const int64_t n = origins.size(0) * origins.size(1);
  if (n == 0) return {v_density, v_features};
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(density.scalar_type(), "render_backward_cuda", [&] {
    backward_kernel<scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(
        make_buffers<scalar_t>(density, features, origins, directions, edges, outputs),
        make_buffers<scalar_t>(density, features, origins, directions, edges, grads),
        make_grid<scalar_t>(density, lower, upper), make_spec<scalar_t>(near, far, step), n,
        v_density.data_ptr<scalar_t>(), v_features.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {v_density, v_features};
}

}  // namespace

TORCH_LIBRARY_IMPL(radocc, CUDA, m) {
  m.impl("render_forward", &render_forward_cuda);
  m.impl("render_backward", &render_backward_cuda);
}

}  // namespace radocc

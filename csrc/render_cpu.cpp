// CPU kernels: rays are split over at::parallel_for's threads (OpenMP in torch's builds).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "render_ops.h"

namespace radocc {
namespace {

constexpr int64_t kRayGrain = 64;
// Backward: a thread gets its own gradient grids only for this many rays or more; zeroing and
// summing a grid copy costs about as much as marching that many rays.
constexpr int64_t kRaysPerGradientCopy = 8192;

Outputs render_forward_cpu(const at::Tensor& density, const at::Tensor& features,
                           const at::Tensor& origins, const at::Tensor& directions,
                           const at::Tensor& edges, at::ArrayRef<double> lower,
                           at::ArrayRef<double> upper, double near, double far, double step) {
  check_render_inputs("render_forward", density, features, origins, directions, edges, lower,
                      upper);
  Outputs out = allocate_outputs(density, features, origins, edges);
  const int64_t n = origins.size(0) * origins.size(1);
  AT_DISPATCH_FLOATING_TYPES(density.scalar_type(), "render_forward_cpu", [&] {
    const auto io = make_buffers<scalar_t>(density, features, origins, directions, edges, out);
    const auto g = make_grid<scalar_t>(density, lower, upper);
    const auto m = make_spec<scalar_t>(near, far, step);
    at::parallel_for(0, n, kRayGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) render_ray_forward(io, g, m, i);
    });
  });
  return out;
}

// Each thread scatters into a private copy of the gradient grids (no atomics on the hot path);
// the copies are summed at the end. Memory: threads x grid, which is small next to the rays; few
// rays get one thread (kRaysPerGradientCopy), so the copies never cost more than the marching.
std::tuple<at::Tensor, at::Tensor> render_backward_cpu(
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

  const int64_t n = origins.size(0) * origins.size(1);
  const int64_t threads = std::max<int64_t>(
      1, std::min<int64_t>(at::get_num_threads(), n / kRaysPerGradientCopy));
  auto v_density = at::zeros({threads, density.numel()}, density.options());
  auto v_features = at::zeros({threads, features.numel()}, features.options());
  AT_DISPATCH_FLOATING_TYPES(density.scalar_type(), "render_backward_cpu", [&] {
    const auto io = make_buffers<scalar_t>(density, features, origins, directions, edges, outputs);
    const auto gr = make_buffers<scalar_t>(density, features, origins, directions, edges, grads);
    const auto g = make_grid<scalar_t>(density, lower, upper);
    const auto m = make_spec<scalar_t>(near, far, step);
    scalar_t* vd = v_density.data_ptr<scalar_t>();
    scalar_t* vf = v_features.data_ptr<scalar_t>();
    // Worker t takes ray blocks t, t + threads, ...: interleaving balances long and short rays.
    at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        scalar_t* my_vd = vd + t * density.numel();
        scalar_t* my_vf = vf + t * features.numel();
        const auto add = [](scalar_t* p, scalar_t v) { *p += v; };
        for (int64_t first = t * kRayGrain; first < n; first += threads * kRayGrain) {
          const int64_t last = std::min(n, first + kRayGrain);
          for (int64_t i = first; i < last; ++i)
            render_ray_backward(io, gr, g, m, i, my_vd, my_vf, add);
        }
      }
    });
  });
  if (threads == 1) return {v_density.view(density.sizes()), v_features.view(features.sizes())};
  return {v_density.sum(0).view(density.sizes()), v_features.sum(0).view(features.sizes())};
}

}  // namespace

TORCH_LIBRARY_IMPL(radocc, CPU, m) {
  m.impl("render_forward", &render_forward_cpu);
  m.impl("render_backward", &render_backward_cpu);
}

}  // namespace radocc

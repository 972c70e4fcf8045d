// Host-side glue shared by the CPU and CUDA translation units: argument checks, grid set-up and
// the declarations of the device entry points registered in ops.cpp.
#pragma once

#include <ATen/ATen.h>

#include <tuple>
#include <vector>

#include "render.h"

namespace radocc {

using Outputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// Checks every tensor a render op receives. The Python wrapper reports bad user input with
// ValueError/TypeError first; these guard direct callers of torch.ops.radocc.*.
inline void check_render_inputs(const char* op, const at::Tensor& density,  // [B, X, Y, Z]
                                const at::Tensor& features,                 // [B, X, Y, Z, C]
                                const at::Tensor& origins,                  // [B, R, 3]
                                const at::Tensor& directions,               // [B, R, 3]
                                const at::Tensor& edges,                    // [D + 1] or [0]
                                at::ArrayRef<double> lower, at::ArrayRef<double> upper) {
  TORCH_CHECK(density.dim() == 4, op, ": density must be [B, X, Y, Z], got ", density.sizes());
  TORCH_CHECK(features.dim() == 5 && features.sizes().slice(0, 4) == density.sizes(), op,
              ": features must be [B, X, Y, Z, C] matching density ", density.sizes(), ", got ",
              features.sizes());
  TORCH_CHECK(origins.dim() == 3 && origins.size(0) == density.size(0) && origins.size(2) == 3,
              op, ": origins must be [B, R, 3] with B = ", density.size(0), ", got ",
              origins.sizes());
  TORCH_CHECK(directions.sizes() == origins.sizes(), op, ": directions must match origins ",
              origins.sizes(), ", got ", directions.sizes());
  TORCH_CHECK(edges.dim() == 1 && edges.numel() != 1, op,
              ": depth bin edges must be 1-D with 0 or at least 2 entries, got ", edges.sizes());
  TORCH_CHECK(lower.size() == 3 && upper.size() == 3, op, ": lower and upper need 3 values");
  for (int a = 0; a < 3; ++a) {
    TORCH_CHECK(upper[a] > lower[a], op, ": upper must exceed lower on every axis");
    TORCH_CHECK(density.size(a + 1) > 0, op, ": the grid must have at least one voxel per axis");
  }
  const auto dtype = density.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, op,
              ": density must be float32 or float64, got ", dtype);
  for (const at::Tensor* t : {&features, &origins, &directions, &edges}) {
    TORCH_CHECK(t->scalar_type() == dtype, op, ": all tensors must have density's dtype ", dtype,
                ", got ", t->scalar_type());
    TORCH_CHECK(t->device() == density.device(), op, ": all tensors must be on density's device ",
                density.device(), ", got ", t->device());
  }
  for (const at::Tensor* t : {&density, &features, &origins, &directions, &edges}) {
    TORCH_CHECK(t->is_contiguous(), op, ": tensors must be contiguous");
  }
}

template <typename T>
Grid<T> make_grid(const at::Tensor& density, at::ArrayRef<double> lower,
                  at::ArrayRef<double> upper) {
  Grid<T> g;
  for (int a = 0; a < 3; ++a) {
    g.size[a] = density.size(a + 1);
    g.lower[a] = T(lower[a]);
    g.upper[a] = T(upper[a]);
    g.voxel[a] = T((upper[a] - lower[a]) / double(g.size[a]));
    g.inv_voxel[a] = T(double(g.size[a]) / (upper[a] - lower[a]));
  }
  return g;
}

template <typename T>
MarchSpec<T> make_spec(double near, double far, double step) {
  return MarchSpec<T>{T(near), T(far), T(step)};
}

inline Outputs allocate_outputs(const at::Tensor& density, const at::Tensor& features,
                                const at::Tensor& origins, const at::Tensor& edges) {
  const int64_t B = origins.size(0), R = origins.size(1);
  const int64_t bins = edges.numel();  // D + 1 termination entries when there are D + 1 edges
  return {density.new_empty({B, R}), density.new_empty({B, R}),
          density.new_empty({B, R, features.size(4)}), density.new_empty({B, R, bins})};
}

// Points the raw-pointer view at the tensors of one call. In a backward call the output slots
// carry the incoming gradients of the outputs instead.
template <typename T>
Buffers<T> make_buffers(const at::Tensor& density, const at::Tensor& features,
                        const at::Tensor& origins, const at::Tensor& directions,
                        const at::Tensor& edges, const Outputs& out) {
  Buffers<T> b;
  b.density = density.data_ptr<T>();
  b.features = features.data_ptr<T>();
  b.origins = origins.data_ptr<T>();
  b.directions = directions.data_ptr<T>();
  b.edges = edges.data_ptr<T>();
  b.depth = std::get<0>(out).data_ptr<T>();
  b.opacity = std::get<1>(out).data_ptr<T>();
  b.features_out = std::get<2>(out).data_ptr<T>();
  b.termination = std::get<3>(out).data_ptr<T>();
  b.rays = origins.size(1);
  b.channels = features.size(4);
  b.num_bins = edges.numel() > 0 ? edges.numel() - 1 : 0;
  b.cells = density.size(1) * density.size(2) * density.size(3);
  return b;
}

// Checks a backward call: the forward inputs, then the forward outputs and their incoming
// gradients against the shapes the forward pass produces.
inline void check_backward_inputs(const char* op, const Outputs& grads, const Outputs& outputs,
                                  const at::Tensor& density, const at::Tensor& features,
                                  const at::Tensor& origins, const at::Tensor& directions,
                                  const at::Tensor& edges, at::ArrayRef<double> lower,
                                  at::ArrayRef<double> upper) {
  check_render_inputs(op, density, features, origins, directions, edges, lower, upper);
  const int64_t B = origins.size(0), R = origins.size(1);
  const std::vector<std::vector<int64_t>> shapes = {
      {B, R}, {B, R}, {B, R, features.size(4)}, {B, R, edges.numel()}};
  const char* names[] = {"depth", "opacity", "features", "termination"};
  const at::Tensor* got[] = {&std::get<0>(grads),   &std::get<1>(grads),   &std::get<2>(grads),
                             &std::get<3>(grads),   &std::get<0>(outputs), &std::get<1>(outputs),
                             &std::get<2>(outputs), &std::get<3>(outputs)};
  for (int k = 0; k < 8; ++k) {
    const at::Tensor& t = *got[k];
    TORCH_CHECK(t.sizes() == at::IntArrayRef(shapes[k % 4]) &&
                    t.scalar_type() == density.scalar_type() &&
                    t.device() == density.device() && t.is_contiguous(),
                op, ": ", k < 4 ? "the gradient of " : "the forward output ", names[k % 4],
                " must be a contiguous ", density.scalar_type(), " tensor of shape ",
                at::IntArrayRef(shapes[k % 4]), " on ", density.device(), ", got ", t.sizes());
  }
}

}  // namespace radocc

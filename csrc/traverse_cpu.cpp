// First-hit voxel traversal on the CPU (radocc.raycast.traverse: RayIoU and the synthetic
// dataset's visibility masks). Each ray is walked by the renderer's exact march (render.h,
// march_exact) until its first occupied voxel; threads over blocks of rays. On CUDA tensors
// radocc.raycast runs its vectorised torch loop, which is also this kernel's reference in tests.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <tuple>

#include "render_ops.h"

namespace radocc {
namespace {

constexpr int64_t kRayGrain = 256;
// Metres: a piece of a ray shorter than this is an edge or corner crossing, not a visit of the
// voxel it lies in (the torch loop's tie tolerance, so both visit the same voxels).
constexpr double kTieEps = 1e-9;

using Traversal = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

Traversal traverse_cpu(const at::Tensor& occupied, const at::Tensor& origins,
                       const at::Tensor& directions, const at::Tensor& max_distance,
                       at::ArrayRef<double> lower, at::ArrayRef<double> upper,
                       bool return_visible) {
  TORCH_CHECK(occupied.dim() == 3 && occupied.scalar_type() == at::kBool,
              "traverse: occupied must be a bool tensor [X, Y, Z], got ", occupied.scalar_type(),
              " ", occupied.sizes());
  TORCH_CHECK(origins.dim() == 2 && origins.size(1) == 3 && origins.scalar_type() == at::kDouble,
              "traverse: origins must be float64 [R, 3], got ", origins.scalar_type(), " ",
              origins.sizes());
  TORCH_CHECK(directions.sizes() == origins.sizes() && directions.scalar_type() == at::kDouble,
              "traverse: directions must be float64 ", origins.sizes(), ", got ",
              directions.scalar_type(), " ", directions.sizes());
  const int64_t rays = origins.size(0);
  TORCH_CHECK(max_distance.dim() == 1 && max_distance.size(0) == rays &&
                  max_distance.scalar_type() == at::kDouble,
              "traverse: max_distance must be float64 [R] = [", rays, "], got ",
              max_distance.scalar_type(), " ", max_distance.sizes());
  TORCH_CHECK(lower.size() == 3 && upper.size() == 3, "traverse: lower and upper need 3 values");
  for (const at::Tensor* t : {&occupied, &origins, &directions, &max_distance}) {
    TORCH_CHECK(t->is_contiguous() && t->device().is_cpu(),
                "traverse: tensors must be contiguous CPU tensors");
  }
  for (int a = 0; a < 3; ++a) {
    TORCH_CHECK(upper[a] > lower[a] && occupied.size(a) > 0,
                "traverse: upper must exceed lower and the grid have voxels on every axis");
  }
  const auto g = make_grid<double>(occupied.unsqueeze(0), lower, upper);  // the renderer's grid

  const auto f64 = origins.options();
  const double inf = std::numeric_limits<double>::infinity();
  at::Tensor distance = at::full({rays}, inf, f64);
  at::Tensor exit_distance = at::full({rays}, inf, f64);
  at::Tensor index = at::full({rays, 3}, -1, f64.dtype(at::kLong));
  at::Tensor hit = at::zeros({rays}, f64.dtype(at::kBool));
  at::Tensor visible = return_visible ? at::zeros(occupied.sizes(), f64.dtype(at::kBool))
                                      : at::zeros({0}, f64.dtype(at::kBool));

  const bool* occ = occupied.data_ptr<bool>();
  const double* o_all = origins.data_ptr<double>();
  const double* d_all = directions.data_ptr<double>();
  const double* limit = max_distance.data_ptr<double>();
  double* dist = distance.data_ptr<double>();
  double* exit = exit_distance.data_ptr<double>();
  int64_t* idx = index.data_ptr<int64_t>();
  bool* hits = hit.data_ptr<bool>();
  // bool is one byte here; concurrent rays only ever store true into it
  uint8_t* vis = return_visible ? reinterpret_cast<uint8_t*>(visible.data_ptr<bool>()) : nullptr;

  at::parallel_for(0, rays, kRayGrain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const double* o = o_all + 3 * r;
      const double* d = d_all + 3 * r;
      double t0, t1;
      if (!clip_ray(o, d, g, 0.0, inf, t0, t1) || !(t0 < limit[r])) continue;
      dist[r] = exit[r] = min_(t1, limit[r]);  // where a ray that hits nothing stops
      int64_t last = -1;
      march_exact(o, d, g, t0, t1, [&](const Sample<double, 1>& s) {
        const double enter = s.t - 0.5 * s.len;
        if (!(enter < limit[r])) return false;
        if (s.len <= kTieEps) return true;
        last = s.cell[0];
        if (vis != nullptr) __atomic_store_n(vis + last, uint8_t(1), __ATOMIC_RELAXED);
        if (!occ[last]) return true;
        hits[r] = true;
        dist[r] = enter;
        exit[r] = s.t + 0.5 * s.len;
        return false;
      });
      if (last >= 0) {
        idx[3 * r] = last / (g.size[1] * g.size[2]);
        idx[3 * r + 1] = (last / g.size[2]) % g.size[1];
        idx[3 * r + 2] = last % g.size[2];
      }
    }
  });
  return {distance, index, hit, visible, exit_distance};
}

}  // namespace

TORCH_LIBRARY_IMPL(radocc, CPU, m) { m.impl("traverse", &traverse_cpu); }

}  // namespace radocc

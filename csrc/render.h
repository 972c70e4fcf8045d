// Per-ray volume rendering over a voxel grid, shared by the CPU kernel (threads over blocks of
// rays) and the CUDA kernel (one thread per ray). Nothing in here knows about tensors or devices:
// the callers pass raw pointers to contiguous memory, so the CPU tests cover the CUDA math.
//
// Conventions (see DESIGN.md, "The renderer contract"):
//   density  [X, Y, Z]     sigma >= 0 per metre, voxel (i, j, k) centred at lower + (idx + 0.5) * voxel
//   features [X, Y, Z, C]  channels-last
//   a ray is o + t d with |d| = 1, so t is metres along the ray.
// A ray is cut into samples (midpoint t, length len). Sample i has alpha_i = 1 - exp(-sigma_i len_i),
// transmittance T_i = prod_{j<i} (1 - alpha_j) and weight w_i = T_i alpha_i.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <math.h>
#include <type_traits>

#if defined(__CUDACC__)
#define RADOCC_HD __host__ __device__ __forceinline__
#else
#define RADOCC_HD inline
#endif

namespace radocc {

template <typename T>
RADOCC_HD T min_(T a, T b) { return a < b ? a : b; }
template <typename T>
RADOCC_HD T max_(T a, T b) { return a > b ? a : b; }
// Float and double overloads that resolve the same way in host and device code.

// exp(x) - 1 for x <= 0 in float, to about 1e-6 relative: libm's expm1f costs several times expf
// and the renderer calls it once per sample. Near 0 a Taylor polynomial avoids the cancellation
// of expf(x) - 1 (its error, x^8 / 8!, is below 1e-9 there); beyond, |result| > 0.22 keeps the
// cancellation under 3e-7 relative.
RADOCC_HD float expm1_(float x) {
  if (x > -0.25f) {
    return x * (1.f + x * (1.f / 2 + x * (1.f / 6 + x * (1.f / 24 + x * (1.f / 120 +
                x * (1.f / 720 + x * (1.f / 5040)))))));
  }
  return expf(x) - 1.f;
}
RADOCC_HD double expm1_(double x) { return expm1(x); }
RADOCC_HD float floor_(float x) { return floorf(x); }
RADOCC_HD double floor_(double x) { return floor(x); }
RADOCC_HD float ceil_(float x) { return ceilf(x); }
RADOCC_HD double ceil_(double x) { return ceil(x); }
RADOCC_HD float sqrt_(float x) { return sqrtf(x); }
RADOCC_HD double sqrt_(double x) { return sqrt(x); }

template <typename T>
struct Grid {
  T lower[3];
  T voxel[3];       // edge length of a voxel per axis, metres
  T upper[3];
  T inv_voxel[3];   // 1 / voxel
  int64_t size[3];  // X, Y, Z
};

// Index of the cell holding continuous coordinate u (in voxels), clamped to [0, n). The cast
// truncates, which equals floor for u >= 0 and is clamped to 0 below (no libm call per sample).
template <typename T>
RADOCC_HD int64_t cell_of(T u, int64_t n) {
  if (!(u > T(0))) return 0;
  const int64_t i = int64_t(u);
  return i < n ? i : n - 1;
}

// How a ray is cut into samples and what each sample reads from the grid.
template <typename T>
struct MarchSpec {
  T near;
  T far;   // +inf for "until the ray leaves the grid"
  T step;  // <= 0: exact voxel traversal; > 0: uniform samples of this length, trilinear reads
};

// One sample: K grid cells (1 for exact traversal, 8 trilinear corners) with their weights.
template <typename T, int K>
struct Sample {
  static constexpr int kCorners = K;
  T t;    // midpoint, metres along the ray
  T len;  // length, metres
  int64_t cell[K];  // linear index into [X, Y, Z]
  T weight[K];
};

// Clips the ray to the grid box and [near, far]. Returns false when nothing is left.
// Axis-parallel rays are handled explicitly (no 0 * inf).
template <typename T>
RADOCC_HD bool clip_ray(const T o[3], const T d[3], const Grid<T>& g, T near, T far, T& t0, T& t1) {
  t0 = near;
  t1 = far;
  for (int a = 0; a < 3; ++a) {
    if (d[a] == T(0)) {
      if (!(o[a] >= g.lower[a] && o[a] <= g.upper[a])) return false;
      continue;
    }
    T ta = (g.lower[a] - o[a]) / d[a];
    T tb = (g.upper[a] - o[a]) / d[a];
    if (ta > tb) { T s = ta; ta = tb; tb = s; }
    t0 = max_(t0, ta);
    t1 = min_(t1, tb);
  }
  return t1 > t0;  // false for NaN too
}

// t at which the ray crosses plane k (at lower + k * voxel) of axis a; inv_d = 1 / d[a].
template <typename T>
RADOCC_HD T plane_t(const T o[3], T inv_d, const Grid<T>& g, int a, int64_t k) {
  return (g.lower[a] + T(k) * g.voxel[a] - o[a]) * inv_d;
}

// Exact traversal (Amanatides & Woo): cut [t0, t1] at every voxel boundary. A segment lies
// between the last plane crossed and the next one on every axis, which names its voxel; on an
// axis the ray runs parallel to, the voxel of the origin. Zero-length pieces (corners) are skipped.
template <typename T, typename Visit>
RADOCC_HD void march_exact(const T o[3], const T d[3], const Grid<T>& g, T t0, T t1, Visit&& visit) {
  int64_t plane[3];
  int step[3];
  T t_next[3], inv_d[3];
  for (int a = 0; a < 3; ++a) {
    if (d[a] == T(0)) {
      step[a] = 0;
      plane[a] = cell_of((o[a] - g.lower[a]) * g.inv_voxel[a], g.size[a]);  // the fixed voxel
      inv_d[a] = T(0);
      t_next[a] = std::numeric_limits<T>::infinity();
      continue;
    }
    inv_d[a] = T(1) / d[a];
    const T u = (o[a] + t0 * d[a] - g.lower[a]) / g.voxel[a];
    step[a] = d[a] > 0 ? 1 : -1;
    plane[a] = d[a] > 0 ? int64_t(floor_(u)) + 1 : int64_t(ceil_(u)) - 1;
    t_next[a] = plane_t(o, inv_d[a], g, a, plane[a]);
    if (t_next[a] <= t0) {  // u sat on a plane up to rounding
      plane[a] += step[a];
      t_next[a] = plane_t(o, inv_d[a], g, a, plane[a]);
    }
  }
  Sample<T, 1> s;
  s.weight[0] = T(1);
  T t = t0;
  while (t < t1) {
    int a = 0;
    if (t_next[1] < t_next[a]) a = 1;
    if (t_next[2] < t_next[a]) a = 2;
    const T te = min_(t_next[a], t1);
    if (te > t) {
      s.t = T(0.5) * (t + te);
      s.len = te - t;
      int64_t idx[3];
      for (int b = 0; b < 3; ++b) {  // the voxel before plane[b] along the ray, kept in the grid
        const int64_t i = step[b] > 0 ? plane[b] - 1 : plane[b];
        idx[b] = i < 0 ? 0 : (i >= g.size[b] ? g.size[b] - 1 : i);
      }
      s.cell[0] = (idx[0] * g.size[1] + idx[1]) * g.size[2] + idx[2];
      if (!visit(s)) return;
    }
    if (te >= t1) break;
    t = te;
    plane[a] += step[a];
    t_next[a] = plane_t(o, inv_d[a], g, a, plane[a]);
  }
}

// Trilinear corners and weights of point p, voxel values sitting at voxel centres and the border
// value held outside (grid_sample's align_corners=False, padding_mode="border").
template <typename T>
RADOCC_HD void trilinear(const T p[3], const Grid<T>& g, Sample<T, 8>& s) {
  int64_t i0[3], i1[3];
  T f[3];
  for (int a = 0; a < 3; ++a) {
    const int64_t n = g.size[a];
    T u = (p[a] - g.lower[a]) * g.inv_voxel[a] - T(0.5);
    u = min_(max_(u, T(0)), T(n - 1));
    int64_t i = cell_of(u, n - 1);  // u >= 0, so the cast is floor; at most n - 2
    i0[a] = i;
    i1[a] = min_(i + 1, n - 1);
    f[a] = u - T(i);
  }
  int c = 0;
  for (int ix = 0; ix < 2; ++ix)
    for (int iy = 0; iy < 2; ++iy)
      for (int iz = 0; iz < 2; ++iz, ++c) {
        const int64_t x = ix ? i1[0] : i0[0], y = iy ? i1[1] : i0[1], z = iz ? i1[2] : i0[2];
        s.cell[c] = (x * g.size[1] + y) * g.size[2] + z;
        s.weight[c] = (ix ? f[0] : T(1) - f[0]) * (iy ? f[1] : T(1) - f[1]) * (iz ? f[2] : T(1) - f[2]);
      }
}

// Uniform samples of length `step` from t0, the last one cut at t1, read trilinearly at midpoints.
template <typename T, typename Visit>
RADOCC_HD void march_uniform(const T o[3], const T d[3], const Grid<T>& g, T t0, T t1, T step,
                             Visit&& visit) {
  Sample<T, 8> s;
  const int64_t n = int64_t(ceil_((t1 - t0) / step));
  for (int64_t k = 0; k < n; ++k) {
    const T ts = t0 + T(k) * step;
    const T te = min_(ts + step, t1);
    if (te <= ts) break;
    s.t = T(0.5) * (ts + te);
    s.len = te - ts;
    const T p[3] = {o[0] + s.t * d[0], o[1] + s.t * d[1], o[2] + s.t * d[2]};
    trilinear(p, g, s);
    if (!visit(s)) return;
  }
}

// Runs `visit(sample)` over the ray's samples in increasing t, in the mode the spec names, until
// it returns false.
template <typename T, typename Visit>
RADOCC_HD void march(const T* origin, const T* direction, const Grid<T>& g, const MarchSpec<T>& m,
                     Visit&& visit) {
  const T norm = sqrt_(direction[0] * direction[0] + direction[1] * direction[1] +
                      direction[2] * direction[2]);
  const T o[3] = {origin[0], origin[1], origin[2]};
  const T d[3] = {direction[0] / norm, direction[1] / norm, direction[2] / norm};
  T t0, t1;
  if (!(norm > T(0)) || !clip_ray(o, d, g, m.near, m.far, t0, t1)) return;
  if (m.step > T(0)) {
    march_uniform(o, d, g, t0, t1, m.step, visit);
  } else {
    march_exact(o, d, g, t0, t1, visit);
  }
}

template <typename T, int K>
RADOCC_HD T read_density(const T* density, const Sample<T, K>& s) {
  T v = T(0);
  for (int k = 0; k < K; ++k) v += s.weight[k] * density[s.cell[k]];
  return v;
}

// Advances the termination bin pointer to the bin holding t (edges increasing, D bins).
// t before the first edge stays in bin 0; t past the last edge stays in bin D-1.
template <typename T>
RADOCC_HD int64_t advance_bin(const T* edges, int64_t num_bins, int64_t bin, T t) {
  while (bin + 1 < num_bins && t >= edges[bin + 1]) ++bin;
  return bin;
}

// Raw pointers to the contiguous tensors of one render call. B batch items of R rays each; ray i
// of the flattened [B * R] belongs to batch item i / R. features has C == 0 and edges D == 0 when
// absent (the pointers are then never read).
template <typename T>
struct Buffers {
  const T* density;     // [B, X, Y, Z]
  const T* features;    // [B, X, Y, Z, C]
  const T* origins;     // [B, R, 3]
  const T* directions;  // [B, R, 3]
  const T* edges;       // [D + 1], metres, increasing
  T* depth;             // [B, R]
  T* opacity;           // [B, R]
  T* features_out;      // [B, R, C]
  T* termination;       // [B, R, D + 1]
  int64_t rays;         // R
  int64_t channels;     // C
  int64_t num_bins;     // D
  int64_t cells;        // X * Y * Z
};

// Forward pass of ray i: depth = sum w t, opacity = sum w, features = sum w f,
// termination[b] = sum of w over samples whose midpoint lies in bin b, termination[D] = T_final.
template <typename T>
RADOCC_HD void render_ray_forward(const Buffers<T>& io, const Grid<T>& g, const MarchSpec<T>& m,
                                  int64_t i) {
  const int64_t item = i / io.rays, C = io.channels, D = io.num_bins;
  const T* density = io.density + item * io.cells;
  const T* features = io.features + item * io.cells * C;
  T* feat_out = io.features_out + i * C;
  T* term = io.termination + i * (D > 0 ? D + 1 : 0);
  for (int64_t c = 0; c < C; ++c) feat_out[c] = T(0);
  if (D > 0) for (int64_t b = 0; b <= D; ++b) term[b] = T(0);

  T depth = T(0), opacity = T(0), trans = T(1);
  int64_t bin = 0;
  auto visit = [&](const auto& s) {
    constexpr int K = std::decay_t<decltype(s)>::kCorners;
    const T em1 = expm1_(-read_density(density, s) * s.len);  // -alpha
    const T w = trans * -em1;
    trans *= T(1) + em1;
    depth += w * s.t;
    opacity += w;
    for (int k = 0; k < K; ++k) {
      const T* f = features + s.cell[k] * C;
      const T wk = w * s.weight[k];
      for (int64_t c = 0; c < C; ++c) feat_out[c] += wk * f[c];
    }
    if (D > 0) {
      bin = advance_bin(io.edges, D, bin, s.t);
      term[bin] += w;
    }
    return trans > T(0);  // once T underflows to 0, every later weight is exactly 0
  };
  march(io.origins + 3 * i, io.directions + 3 * i, g, m, visit);
  io.depth[i] = depth;
  io.opacity[i] = opacity;
  if (D > 0) term[D] = trans;
}

// Backward pass of ray i, re-marching instead of storing samples. `grad` holds the incoming
// gradients in its output slots (depth, opacity, features_out, termination); `io` the forward
// inputs and outputs. The loss seen by the ray is L = sum_i w_i c_i + g_last with
//   c_i = g_depth t_i + g_opacity + g_features . f_i + g_term[bin_i] - g_last
// (termination[D] = 1 - sum_i w_i). Since dw_i/dsigma_k = len_k (T_{k+1} [i == k] - w_i [i > k]),
//   dL/dsigma_k = len_k (T_{k+1} c_k - sum_{i>k} w_i c_i),
// where the suffix sum is S - prefix, S = sum_i w_i c_i being recovered from the forward outputs.
// `add(pointer, value)` accumulates into v_density [B, X, Y, Z] / v_features [B, X, Y, Z, C].
template <typename T, typename Add>
RADOCC_HD void render_ray_backward(const Buffers<T>& io, const Buffers<T>& grad, const Grid<T>& g,
                                   const MarchSpec<T>& m, int64_t i, T* v_density, T* v_features,
                                   Add&& add) {
  const int64_t item = i / io.rays, C = io.channels, D = io.num_bins;
  const T* density = io.density + item * io.cells;
  const T* features = io.features + item * io.cells * C;
  v_density += item * io.cells;
  v_features += item * io.cells * C;
  const T* g_feat = grad.features_out + i * C;
  const T* g_term = grad.termination + i * (D > 0 ? D + 1 : 0);
  const T g_depth = grad.depth[i], g_opacity = grad.opacity[i];
  const T g_last = D > 0 ? g_term[D] : T(0);

  T total = g_depth * io.depth[i] + (g_opacity - g_last) * io.opacity[i];
  for (int64_t c = 0; c < C; ++c) total += g_feat[c] * io.features_out[i * C + c];
  for (int64_t b = 0; b < D; ++b) total += g_term[b] * io.termination[i * (D + 1) + b];

  T trans = T(1), prefix = T(0);
  int64_t bin = 0;
  auto visit = [&](const auto& s) {
    constexpr int K = std::decay_t<decltype(s)>::kCorners;
    const T em1 = expm1_(-read_density(density, s) * s.len);  // -alpha
    const T w = trans * -em1;
    const T trans_next = trans * (T(1) + em1);
    T c_i = g_depth * s.t + g_opacity - g_last;
    if (D > 0) {
      bin = advance_bin(io.edges, D, bin, s.t);
      c_i += g_term[bin];
    }
    for (int k = 0; k < K; ++k) {
      const T* f = features + s.cell[k] * C;
      T dot = T(0);
      for (int64_t c = 0; c < C; ++c) dot += g_feat[c] * f[c];
      c_i += s.weight[k] * dot;
    }
    prefix += w * c_i;
    const T v_sigma = s.len * (trans_next * c_i - (total - prefix));
    for (int k = 0; k < K; ++k) {
      if (s.weight[k] == T(0)) continue;
      add(v_density + s.cell[k], s.weight[k] * v_sigma);
      const T wk = w * s.weight[k];
      if (wk == T(0)) continue;  // empty space: no feature gradient, and no atomics on CUDA
      T* vf = v_features + s.cell[k] * C;
      for (int64_t c = 0; c < C; ++c) add(vf + c, wk * g_feat[c]);
    }
    trans = trans_next;
    return trans > T(0);  // later samples have w = 0 and an exactly zero gradient
  };
  march(io.origins + 3 * i, io.directions + 3 * i, g, m, visit);
}

}  // namespace radocc

// Operator schemas of the radocc library (implementations: render_cpu.cpp, render_cuda.cu,
// traverse_cpu.cpp).
// Absent features are passed as a [B, X, Y, Z, 0] tensor and absent depth bins as a [0] tensor;
// step <= 0 selects exact voxel traversal, far = inf means "until the ray leaves the grid".
#include <Python.h>
#include <torch/library.h>

extern "C" {
// `import radocc._C` loads this library, which registers the ops below as torch.ops.radocc.*.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(radocc, m) {
  m.def(
      "render_forward(Tensor density, Tensor features, Tensor origins, Tensor directions, "
      "Tensor edges, float[] lower, float[] upper, float near, float far, float step) "
      "-> (Tensor depth, Tensor opacity, Tensor features_out, Tensor termination)");
  m.def(
      "render_backward(Tensor v_depth, Tensor v_opacity, Tensor v_features_out, "
      "Tensor v_termination, Tensor depth, Tensor opacity, Tensor features_out, "
      "Tensor termination, Tensor density, Tensor features, Tensor origins, Tensor directions, "
      "Tensor edges, float[] lower, float[] upper, float near, float far, float step) "
      "-> (Tensor v_density, Tensor v_features)");
  // First-hit traversal (radocc.raycast.traverse): float64 rays, max_distance [R]; visible is
  // [X, Y, Z] with return_visible, else [0].
  m.def(
      "traverse(Tensor occupied, Tensor origins, Tensor directions, Tensor max_distance, "
      "float[] lower, float[] upper, bool return_visible) "
      "-> (Tensor distance, Tensor index, Tensor hit, Tensor visible, Tensor exit_distance)");
}

// The Python module lqkernels._C. Importing it loads this library, whose static initialisers
// register the C++ (and, in a CUDA build, CUDA) kernels with the dispatcher; the schemas live in
// lqkernels/_ops.py. The module itself only reports what was built.
#include <Python.h>

#ifndef LQK_CUDA_ARCHS
#define LQK_CUDA_ARCHS ""
#endif

extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "lqkernels native kernels", -1,
                                   nullptr};
  PyObject* module = PyModule_Create(&module_def);
  if (!module) return nullptr;
#ifdef LQK_WITH_CUDA
  const int with_cuda = 1;
#else
  const int with_cuda = 0;
#endif
  if (PyModule_AddIntConstant(module, "with_cuda", with_cuda) < 0 ||
      PyModule_AddStringConstant(module, "cuda_archs", LQK_CUDA_ARCHS) < 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}

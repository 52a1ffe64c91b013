// The Python module lqkernels._C. Importing it loads this library, whose static initialisers
// register the C++ (and, in a CUDA build, CUDA) kernels with the dispatcher; the schemas live in
// lqkernels/_ops.py. The module itself reports what was built and which CPU kernels run.
#include <Python.h>

#include <string>

#include "cpu_dispatch.h"

#ifndef LQK_CUDA_ARCHS
#define LQK_CUDA_ARCHS ""
#endif
#ifndef LQK_CPU_ARCH
#define LQK_CPU_ARCH ""
#endif

namespace {

PyObject* cpu_capability(PyObject*, PyObject*) { return PyUnicode_FromString(lqk::cpu_capability()); }

PyObject* cpu_capabilities(PyObject*, PyObject*) {
  return PyUnicode_FromString(lqk::cpu_capabilities().c_str());
}

PyObject* set_cpu_capability(PyObject*, PyObject* name) {
  const char* text = PyUnicode_AsUTF8(name);
  if (!text) return nullptr;
  std::string error;
  if (!lqk::set_cpu_capability(text, error)) {
    PyErr_SetString(PyExc_ValueError, error.c_str());
    return nullptr;
  }
  Py_RETURN_NONE;
}

PyMethodDef methods[] = {
    {"cpu_capability", cpu_capability, METH_NOARGS, "The CPU capability whose kernels run now."},
    {"cpu_capabilities", cpu_capabilities, METH_NOARGS,
     "The CPU capabilities built and supported here, lowest first, comma-separated."},
    {"set_cpu_capability", set_cpu_capability, METH_O,
     "Runs the kernels of the named CPU capability from now on; ValueError if it cannot run here."},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "lqkernels native kernels", -1, methods};
  PyObject* module = PyModule_Create(&module_def);
  if (!module) return nullptr;
#ifdef LQK_WITH_CUDA
  const int with_cuda = 1;
#else
  const int with_cuda = 0;
#endif
  if (PyModule_AddIntConstant(module, "with_cuda", with_cuda) < 0 ||
      PyModule_AddStringConstant(module, "cuda_archs", LQK_CUDA_ARCHS) < 0 ||
      PyModule_AddStringConstant(module, "cpu_arch", LQK_CPU_ARCH) < 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}

// Which copy of the CPU kernels runs (csrc/cpu_dispatch.cpp); lqkernels._C exposes these to Python.
#pragma once

#include <string>

namespace lqk {

// The capability whose kernels run now: "default", "avx2" or "avx512".
const char* cpu_capability();
// The capabilities this module was built with and this CPU can run, lowest first, comma-separated.
std::string cpu_capabilities();
// Makes `name` run from now on; false (and `error` says why) if unknown, not built or not supported.
bool set_cpu_capability(const std::string& name, std::string& error);

}  // namespace lqk

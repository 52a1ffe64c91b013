// CPU dispatch: the kernels of csrc/cpu are compiled once per capability (CMakeLists.txt), and
// this file, built for the baseline only, registers one entry per op that calls the copy chosen
// for this CPU. The choice is made when the module loads (the best copy the CPU runs) and can be
// lowered afterwards (lqkernels reads LQK_CPU_CAPABILITY at import), as ATen's DispatchStub does.
#include <torch/library.h>

#include <atomic>
#include <cstdint>
#include <string>

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#endif

#include "cpu_dispatch.h"

#define CPU_CAPABILITY cpu_default
#include "cpu/kernels.h"
#undef CPU_CAPABILITY
#if defined(LQK_HAVE_CPU_AVX2)
#define CPU_CAPABILITY cpu_avx2
#include "cpu/kernels.h"
#undef CPU_CAPABILITY
#endif
#if defined(LQK_HAVE_CPU_AVX512)
#define CPU_CAPABILITY cpu_avx512
#include "cpu/kernels.h"
#undef CPU_CAPABILITY
#endif

namespace lqk {
namespace {

// One copy of the kernels: a function pointer per op of LQK_CPU_KERNELS.
struct CpuKernels {
  const char* name;
  bool (*runs_here)();
#define LQK_SLOT(op) decltype(&cpu_default::op) op;
  LQK_CPU_KERNELS(LQK_SLOT)
#undef LQK_SLOT
};

#if defined(__x86_64__) || defined(_M_X64)
struct X86Levels {
  bool v3 = false, v4 = false;  // x86-64-v3 (AVX2 ...) and x86-64-v4 (AVX-512 ...), as compiled for
};

// What the CPU and the operating system support: the instruction bits of cpuid, and XCR0 for the
// register state the OS saves (a CPU with AVX-512 under an OS that does not save zmm registers
// must not run AVX-512 code).
X86Levels detect_x86_levels() {
  X86Levels levels;
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return levels;
  const bool fma = c & (1u << 12), movbe = c & (1u << 22), osxsave = c & (1u << 27), avx = c & (1u << 28),
             f16c = c & (1u << 29);
  if (!osxsave) return levels;
  uint32_t xcr0_lo, xcr0_hi;
  __asm__ volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
  const bool ymm_state = (xcr0_lo & 0x6) == 0x6, zmm_state = (xcr0_lo & 0xe6) == 0xe6;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return levels;
  const bool bmi1 = b & (1u << 3), avx2 = b & (1u << 5), bmi2 = b & (1u << 8), avx512f = b & (1u << 16),
             avx512dq = b & (1u << 17), avx512cd = b & (1u << 28), avx512bw = b & (1u << 30),
             avx512vl = b & (1u << 31);
  const bool lzcnt = __get_cpuid(0x80000001, &a, &b, &c, &d) && (c & (1u << 5));
  levels.v3 = ymm_state && avx && avx2 && fma && f16c && bmi1 && bmi2 && lzcnt && movbe;
  levels.v4 = levels.v3 && zmm_state && avx512f && avx512dq && avx512cd && avx512bw && avx512vl;
  return levels;
}

const X86Levels& x86_levels() {
  static const X86Levels levels = detect_x86_levels();
  return levels;
}
#endif

bool always() { return true; }

#define LQK_ENTRY(op) &CPU_CAPABILITY::op,
#define CPU_CAPABILITY cpu_default
constexpr CpuKernels kDefault{"default", always, LQK_CPU_KERNELS(LQK_ENTRY)};
#undef CPU_CAPABILITY
#if defined(LQK_HAVE_CPU_AVX2)
#define CPU_CAPABILITY cpu_avx2
constexpr CpuKernels kAvx2{"avx2", [] { return x86_levels().v3; }, LQK_CPU_KERNELS(LQK_ENTRY)};
#undef CPU_CAPABILITY
#endif
#if defined(LQK_HAVE_CPU_AVX512)
#define CPU_CAPABILITY cpu_avx512
constexpr CpuKernels kAvx512{"avx512", [] { return x86_levels().v4; }, LQK_CPU_KERNELS(LQK_ENTRY)};
#undef CPU_CAPABILITY
#endif
#undef LQK_ENTRY

// Lowest first.
constexpr const CpuKernels* kBuilt[] = {
    &kDefault,
#if defined(LQK_HAVE_CPU_AVX2)
    &kAvx2,
#endif
#if defined(LQK_HAVE_CPU_AVX512)
    &kAvx512,
#endif
};

const CpuKernels* best_supported() {
  const CpuKernels* best = &kDefault;
  for (const CpuKernels* k : kBuilt)
    if (k->runs_here()) best = k;
  return best;
}

std::atomic<const CpuKernels*> active{best_supported()};

// The registered kernel of op `Slot`: forwards to the active copy.
template <auto Slot>
struct Forward;
template <typename R, typename... Args, R (*CpuKernels::*Slot)(Args...)>
struct Forward<Slot> {
  static R call(Args... args) { return (active.load(std::memory_order_relaxed)->*Slot)(args...); }
};

}  // namespace

const char* cpu_capability() { return active.load()->name; }

std::string cpu_capabilities() {
  std::string names;
  for (const CpuKernels* k : kBuilt)
    if (k->runs_here()) names += (names.empty() ? "" : ",") + std::string(k->name);
  return names;
}

bool set_cpu_capability(const std::string& name, std::string& error) {
  for (const CpuKernels* k : kBuilt) {
    if (name != k->name) continue;
    if (!k->runs_here()) {
      error = "this CPU cannot run '" + name + "' (it runs: " + cpu_capabilities() + ")";
      return false;
    }
    active.store(k);
    return true;
  }
  std::string built;
  for (const CpuKernels* k : kBuilt) built += (built.empty() ? "" : ", ") + std::string(k->name);
  error = "unknown CPU capability '" + name + "' (this build has: " + built + ")";
  return false;
}

}  // namespace lqk

// CPU kernels of the schemas defined in lqkernels/_ops.py, each calling the active capability's copy.
TORCH_LIBRARY_IMPL(lqkernels, CPU, m) {
#define LQK_REGISTER(op) m.impl(#op, &lqk::Forward<&lqk::CpuKernels::op>::call);
  LQK_CPU_KERNELS(LQK_REGISTER)
#undef LQK_REGISTER
}

// AVX-512 VNNI kernels (vpdpbusd on 256-bit vectors, so AVX-512 VL + VNNI), compiled with function target
// attributes like kernels-avx2.cc and used only when the CPU has the features. So far Q4_0 only: there the
// one-instruction unsigned x signed byte dot replaces maddubs + madd (about 15% less work per block on
// Zen 4, which keeps the one-token kernel closer to the read bandwidth). Same bits as the AVX2 path.
#include "kernels.h"

#if defined(__x86_64__)
#define Q4P_FN __attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni,avx512vbmi")))
#define Q4P_NS q4_0_vnni
#define Q4P_VNNI 1
#define Q4P_VBMI 1
#include "kernels-q4_0-pairs.h"

namespace moe {

RowsKernel avx512Kernel(int type) { return type == T_Q4_0 ? q4_0_vnni::rows : nullptr; }

bool avx512Usable() {
  __builtin_cpu_init();
  return avx2Usable() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vnni") &&
         __builtin_cpu_supports("avx512vbmi");
}

}  // namespace moe

#else  // not x86-64

namespace moe {
RowsKernel avx512Kernel(int) { return nullptr; }
bool avx512Usable() { return false; }
}  // namespace moe

#endif

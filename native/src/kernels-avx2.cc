// AVX2 + FMA + F16C kernels, compiled with per-function target attributes so the addon still loads on
// any x86-64 CPU (addon.cc only calls them when the CPU has these features). Elsewhere: none.
#include "kernels.h"

#if defined(__x86_64__)
#include <immintrin.h>
#include <cstring>

#define AVX2_FN __attribute__((target("avx2,fma,f16c")))

namespace moe {
namespace {

AVX2_FN inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

}  // namespace

RowsKernel avx2Kernel(int type) {
  (void)type;
  return nullptr;
}

bool avx2Usable() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}

AVX2_FN double sumBytesAvx2(const uint8_t* p, size_t n) {
  const __m256i zero = _mm256_setzero_si256();
  __m256i acc0 = zero, acc1 = zero, acc2 = zero, acc3 = zero;
  size_t i = 0;
  for (; i + 128 <= n; i += 128) {
    acc0 = _mm256_add_epi64(acc0, _mm256_sad_epu8(_mm256_loadu_si256((const __m256i*)(p + i)), zero));
    acc1 = _mm256_add_epi64(acc1, _mm256_sad_epu8(_mm256_loadu_si256((const __m256i*)(p + i + 32)), zero));
    acc2 = _mm256_add_epi64(acc2, _mm256_sad_epu8(_mm256_loadu_si256((const __m256i*)(p + i + 64)), zero));
    acc3 = _mm256_add_epi64(acc3, _mm256_sad_epu8(_mm256_loadu_si256((const __m256i*)(p + i + 96)), zero));
  }
  const __m256i acc = _mm256_add_epi64(_mm256_add_epi64(acc0, acc1), _mm256_add_epi64(acc2, acc3));
  uint64_t lanes[4];
  _mm256_storeu_si256((__m256i*)lanes, acc);
  uint64_t sum = lanes[0] + lanes[1] + lanes[2] + lanes[3];
  for (; i < n; i++) sum += p[i];
  return (double)sum;
}

}  // namespace moe

#else  // not x86-64: portable path only

namespace moe {
RowsKernel avx2Kernel(int) { return nullptr; }
bool avx2Usable() { return false; }
double sumBytesAvx2(const uint8_t* p, size_t n) { return sumBytesPortable(p, n); }
}  // namespace moe

#endif

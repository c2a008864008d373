// Activation quantizers, following ggml's reference quantizers (quantize_row_q8_0_ref, _q8_1_ref,
// _q8_K_ref) so that the dot products see the numbers llama.cpp's CPU backend sees.
#include "quantize-act.h"

#include <cmath>
#include "fp16.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace moe {

bool typeGeometry(int type, TypeGeometry* g) {
  switch (type) {
    case T_F32: *g = {1, 4, ActKind::F32}; return true;
    case T_F16: *g = {1, 2, ActKind::F16}; return true;
    case T_BF16: *g = {1, 2, ActKind::BF16}; return true;
    case T_Q4_0: *g = {32, 18, ActKind::Q8_0}; return true;
    case T_Q4_1: *g = {32, 20, ActKind::Q8_1}; return true;
    case T_Q5_0: *g = {32, 22, ActKind::Q8_0}; return true;
    case T_Q5_1: *g = {32, 24, ActKind::Q8_1}; return true;
    case T_Q8_0: *g = {32, 34, ActKind::Q8_0}; return true;
    case T_Q2_K: *g = {256, 84, ActKind::Q8_K}; return true;
    case T_Q3_K: *g = {256, 110, ActKind::Q8_K}; return true;
    case T_Q4_K: *g = {256, 144, ActKind::Q8_K}; return true;
    case T_Q5_K: *g = {256, 176, ActKind::Q8_K}; return true;
    case T_Q6_K: *g = {256, 210, ActKind::Q8_K}; return true;
    default: return false;
  }
}

// roundf (half away from zero) for |v| <= 128, inline: v - trunc(v) is exact in float.
static inline int roundHalfAway(float v) {
  int i = (int)v;
  const float frac = v - (float)i;
  if (frac >= 0.5f) i++;
  else if (frac <= -0.5f) i--;
  return i;
}

// Q8_0 / Q8_1: d = amax / 127, q = round(x / d) half away from zero; d is stored as f16.
static void quantizeQ8Block32(const float* x, int8_t* q, float* d, float* s) {
  float amax = 0.0f;
  for (int i = 0; i < 32; i++) {
    const float ax = std::fabs(x[i]);
    amax = amax > ax ? amax : ax;  // ggml MAX(amax, ax)
  }
  const float dd = amax / 127.0f;
  const float id = dd != 0.0f ? 1.0f / dd : 0.0f;
  int sum = 0;
  for (int i = 0; i < 32; i++) {
    q[i] = (int8_t)roundHalfAway(x[i] * id);
    sum += q[i];
  }
  *d = fp16ToFloat(floatToFp16(dd));
  if (s) *s = fp16ToFloat(floatToFp16((float)sum * dd));
}

#if defined(__x86_64__)
// quantizeQ8Block32 on 8 lanes, the same operations in the same order so the same bits: max of |x|, the
// scalar scale, x * id, truncation and the half-away-from-zero fix-up on the exact fraction. No "fma" in
// the target, so x * id cannot be contracted into the fraction's subtraction. Also returns sum(q).
__attribute__((target("avx2"))) static int quantizeQ8Block32Avx2(const float* x, int8_t* q, float* d) {
  const __m256 absMask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  __m256 v[4];
  for (int k = 0; k < 4; k++) v[k] = _mm256_loadu_ps(x + 8 * k);
  __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_and_ps(v[0], absMask), _mm256_and_ps(v[1], absMask)),
                           _mm256_max_ps(_mm256_and_ps(v[2], absMask), _mm256_and_ps(v[3], absMask)));
  __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
  m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
  m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
  const float amax = _mm_cvtss_f32(m4);
  const float dd = amax / 127.0f;
  const __m256 id = _mm256_set1_ps(dd != 0.0f ? 1.0f / dd : 0.0f);
  const __m256 half = _mm256_set1_ps(0.5f), minusHalf = _mm256_set1_ps(-0.5f);
  __m256i qi[4];
  for (int k = 0; k < 4; k++) {
    const __m256 s = _mm256_mul_ps(v[k], id);
    const __m256i i = _mm256_cvttps_epi32(s);
    const __m256 frac = _mm256_sub_ps(s, _mm256_cvtepi32_ps(i));
    // Comparison masks are -1 where true: subtracting the >= 0.5 mask adds one, adding the <= -0.5 one subtracts.
    const __m256i up = _mm256_castps_si256(_mm256_cmp_ps(frac, half, _CMP_GE_OQ));
    const __m256i down = _mm256_castps_si256(_mm256_cmp_ps(frac, minusHalf, _CMP_LE_OQ));
    qi[k] = _mm256_add_epi32(_mm256_sub_epi32(i, up), down);
  }
  __m256i sum = _mm256_add_epi32(_mm256_add_epi32(qi[0], qi[1]), _mm256_add_epi32(qi[2], qi[3]));
  __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
  s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
  s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
  // packs work per 128-bit lane: the result holds 4-value runs in the order 0,2,4,6,1,3,5,7; undo that.
  const __m256i packed = _mm256_packs_epi16(_mm256_packs_epi32(qi[0], qi[1]), _mm256_packs_epi32(qi[2], qi[3]));
  _mm256_storeu_si256((__m256i*)q, _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
  *d = fp16ToFloat(floatToFp16(dd));
  return _mm_cvtsi128_si32(s4);
}

// quantizeQ8KBlock on 8 lanes, same bits: the first value of largest magnitude picks the scale, and
// nearestInt's float add (no "fma" in the target, so iscale * x stays a separate rounding).
__attribute__((target("avx2"))) static void quantizeQ8KBlockAvx2(const float* x, int8_t* q, float* d, int16_t* bsums) {
  const __m256 absMask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  __m256 m = _mm256_setzero_ps();
  for (int k = 0; k < 32; k++) m = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(x + 8 * k), absMask), m);  // NaN lanes keep m
  __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
  m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
  m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
  const float amax = _mm_cvtss_f32(m4);
  if (amax == 0.0f) {
    for (int i = 0; i < 256; i++) q[i] = 0;
    for (int j = 0; j < 16; j++) bsums[j] = 0;
    *d = 0.0f;
    return;
  }
  int first = 0;
  const __m256 target = _mm256_set1_ps(amax);
  for (int k = 0; k < 32; k++) {
    const int hits = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_and_ps(_mm256_loadu_ps(x + 8 * k), absMask), target, _CMP_EQ_OQ));
    if (hits) { first = 8 * k + __builtin_ctz((unsigned)hits); break; }
  }
  const float iscale = -127.0f / x[first];
  const __m256 vs = _mm256_set1_ps(iscale), magic = _mm256_set1_ps(12582912.0f);
  const __m256i mantissa = _mm256_set1_epi32(0x007fffff), bias = _mm256_set1_epi32(0x00400000), top = _mm256_set1_epi32(127);
  for (int k = 0; k < 32; k += 4) {
    __m256i qi[4];
    for (int j = 0; j < 4; j++) {
      const __m256 big = _mm256_add_ps(_mm256_mul_ps(vs, _mm256_loadu_ps(x + 8 * (k + j))), magic);
      const __m256i v = _mm256_sub_epi32(_mm256_and_si256(_mm256_castps_si256(big), mantissa), bias);
      qi[j] = _mm256_min_epi32(v, top);
    }
    const __m256i packed = _mm256_packs_epi16(_mm256_packs_epi32(qi[0], qi[1]), _mm256_packs_epi32(qi[2], qi[3]));
    _mm256_storeu_si256((__m256i*)(q + 8 * k), _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
  }
  for (int j = 0; j < 16; j++) {
    int sum = 0;
    for (int i = 0; i < 16; i++) sum += q[16 * j + i];
    bsums[j] = (int16_t)sum;
  }
  *d = 1.0f / iscale;
}

static bool quantizeAvx2Usable() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2");
}
#endif

// ggml's nearest_int: round half to even through the float mantissa (valid for |v| < 2^22).
static inline int nearestInt(float v) {
  const float big = v + 12582912.0f;
  int i;
  std::memcpy(&i, &big, 4);
  return (i & 0x007fffff) - 0x00400000;
}

// Q8_K: the signed value of largest magnitude maps to -127; d stays f32; bsums per 16 quants.
static void quantizeQ8KBlock(const float* x, int8_t* q, float* d, int16_t* bsums) {
  float amax = 0.0f, max = 0.0f;
  for (int i = 0; i < 256; i++) {
    const float ax = std::fabs(x[i]);
    if (ax > amax) { amax = ax; max = x[i]; }
  }
  if (amax == 0.0f) {
    for (int i = 0; i < 256; i++) q[i] = 0;
    for (int j = 0; j < 16; j++) bsums[j] = 0;
    *d = 0.0f;
    return;
  }
  const float iscale = -127.0f / max;
  for (int i = 0; i < 256; i++) {
    const int v = nearestInt(iscale * x[i]);
    q[i] = (int8_t)(v < 127 ? v : 127);
  }
  for (int j = 0; j < 16; j++) {
    int sum = 0;
    for (int i = 0; i < 16; i++) sum += q[16 * j + i];
    bsums[j] = (int16_t)sum;
  }
  *d = 1.0f / iscale;
}

ActBuffers::ActBuffers(ActKind kind, const float* x, int nTokens, int cols) {
  const size_t n = (size_t)nTokens * cols;
  act_ = Act{nTokens, cols, cols, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr};
  switch (kind) {
    case ActKind::F32:
      act_.f32 = x;
      break;
    case ActKind::F16:
    case ActKind::BF16:
      h_.resize(n);
      for (size_t i = 0; i < n; i++) h_[i] = kind == ActKind::F16 ? floatToFp16(x[i]) : floatToBf16(x[i]);
      act_.h = h_.data();
      break;
    case ActKind::Q8_0:
    case ActKind::Q8_1: {
      const size_t blocks = n / 32;
      qs_.resize(n);
      d_.resize(blocks);
      if (kind == ActKind::Q8_1) s_.resize(blocks);
      act_.blocks = cols / 32;
      act_.qs = qs_.data();
      act_.d = d_.data();
      act_.s = kind == ActKind::Q8_1 ? s_.data() : nullptr;
#if defined(__x86_64__)
      static const bool simd = quantizeAvx2Usable();
      if (simd && kind == ActKind::Q8_0) {
        q4Offset_.resize(blocks);
        for (size_t b = 0; b < blocks; b++) {
          q4Offset_[b] = -8 * quantizeQ8Block32Avx2(x + 32 * b, qs_.data() + 32 * b, &d_[b]);
        }
        act_.q4Offset = q4Offset_.data();
        break;
      }
#endif
      for (size_t b = 0; b < blocks; b++) {
        quantizeQ8Block32(x + 32 * b, qs_.data() + 32 * b, &d_[b], kind == ActKind::Q8_1 ? &s_[b] : nullptr);
      }
      if (kind == ActKind::Q8_0) {
        q4Offset_.resize(blocks);
        for (size_t b = 0; b < blocks; b++) {
          int sum = 0;
          for (int i = 0; i < 32; i++) sum += qs_[32 * b + i];
          q4Offset_[b] = -8 * sum;
        }
        act_.q4Offset = q4Offset_.data();
      }
      break;
    }
    case ActKind::Q8_K: {
      const size_t blocks = n / 256;
      qs_.resize(n);
      d_.resize(blocks);
      bsums_.resize(n / 16);
#if defined(__x86_64__)
      static const bool simd = quantizeAvx2Usable();
      if (simd) {
        for (size_t b = 0; b < blocks; b++) {
          quantizeQ8KBlockAvx2(x + 256 * b, qs_.data() + 256 * b, &d_[b], bsums_.data() + 16 * b);
        }
      } else
#endif
      for (size_t b = 0; b < blocks; b++) {
        quantizeQ8KBlock(x + 256 * b, qs_.data() + 256 * b, &d_[b], bsums_.data() + 16 * b);
      }
      act_.blocks = cols / 256;
      act_.qs = qs_.data();
      act_.d = d_.data();
      act_.bsums = bsums_.data();
      break;
    }
  }
}

}  // namespace moe
